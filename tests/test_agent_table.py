"""The agent's table: rows from states, GET and GETNEXT in OID order, incremental changes."""

from __future__ import annotations

import pytest

from snmp_watchdog import model
from snmp_watchdog.agent.table import (
    NO_SUCH_INSTANCE,
    NO_SUCH_OBJECT,
    SYS_UPTIME,
    Confirmed,
    StatusTable,
    confirmed_from,
    service_row,
)
from snmp_watchdog.notify.mib import UNKNOWN_TIME, Oids, date_and_time
from snmp_watchdog.reasons import Reason
from snmp_watchdog.state import ServiceState, State

ROOT = model.DEFAULT_OID_ROOT
OIDS = Oids(ROOT)
ENTRY = (*ROOT, 1, 2, 1)
WALL = 1_764_000_000.0  # the wall clock when the monotonic clock reads MONO
MONO = 5000.0


def svc(name: str, port: int = 25) -> model.Service:
    return model.Service(name=name, host="mail.example.com", port=port, check=model.CheckKind.SMTP)


def row(name: str, st: ServiceState, confirmed: Confirmed | None = None) -> tuple:  # type: ignore[type-arg]
    return service_row(svc(name), st, confirmed or confirmed_from(st), mono_now=MONO, wall_now=WALL)


UP = ServiceState(
    state=State.UP,
    since=MONO - 60,
    successes=2,
    notified=State.UP,
    last_check=MONO - 1,
    last_reason=Reason.OK,
    last_elapsed=0.0123,
    checks=10,
    failed_checks=1,
)
DOWN = ServiceState(
    state=State.DOWN,
    previous=State.UP,
    since=MONO - 30,
    failures=3,
    notified=State.DOWN,
    last_check=MONO - 2,
    last_reason=Reason.REFUSED,
    last_detail="connection refused",
    last_elapsed=0.002,
    checks=20,
    failed_checks=5,
)


def table(sequence: int = 7) -> StatusTable:
    return StatusTable(OIDS, version="1.2.3", uptime=lambda: 4200, sequence=lambda: sequence)


def test_a_row_holds_every_column_the_mib_lists() -> None:
    values = row("mail", DOWN)
    assert values == (
        ("string", b"mail"),
        ("string", b"mail.example.com"),
        ("unsigned", 25),
        ("string", b"smtp"),
        ("integer", 2),  # down
        ("integer", 1),  # was up
        ("integer", Reason.REFUSED.value),
        ("string", b"connection refused"),
        ("unsigned", 3),
        ("gauge", 2),
        ("string", date_and_time(WALL - 30)),
        ("counter", 20),
        ("counter", 5),
        ("string", date_and_time(WALL - 2)),
    )


def test_an_unknown_service_has_zero_times_and_no_reason() -> None:
    values = row("new", ServiceState())
    assert values[4] == ("integer", 3)
    assert values[6] == ("integer", 0)
    assert values[10] == values[13] == ("string", UNKNOWN_TIME)


def test_a_blip_after_the_change_does_not_become_the_reason() -> None:
    """The saved state's last check failed while the service is still up: the row says ok."""
    blip = ServiceState(
        state=State.UP, since=MONO - 60, failures=1, notified=State.UP,
        last_check=MONO, last_reason=Reason.TIMEOUT, last_detail="no answer", last_elapsed=5.0,
    )  # fmt: skip
    assert confirmed_from(blip) == Confirmed(Reason.OK, "", 0.0, 0)
    recovering = ServiceState(
        state=State.DOWN, since=MONO - 60, successes=1, notified=State.DOWN,
        last_check=MONO, last_reason=Reason.OK, last_elapsed=0.01,
    )  # fmt: skip
    assert confirmed_from(recovering).reason is Reason.NETWORK_ERROR
    assert confirmed_from(DOWN) == Confirmed(Reason.REFUSED, "connection refused", 0.002, 3)


def test_scalars_answer_get_with_live_values() -> None:
    sequence = [7]
    t = StatusTable(OIDS, version="1.2.3", uptime=lambda: 4200, sequence=lambda: sequence[0])
    t.put(1, row("a", UP))
    t.put(2, row("b", DOWN))
    t.put(3, row("c", ServiceState()))
    assert t.get((*OIDS.watchdog_version, 0)) == ("string", b"1.2.3")
    assert t.get((*OIDS.watchdog_uptime, 0)) == ("timeticks", 4200)
    assert t.get((*SYS_UPTIME, 0)) == ("timeticks", 4200)
    assert t.get((*OIDS.services_up, 0)) == ("gauge", 1)
    assert t.get((*OIDS.services_down, 0)) == ("gauge", 1)
    assert t.get((*OIDS.services_unknown, 0)) == ("gauge", 1)
    assert t.get((*OIDS.notification_sequence, 0)) == ("unsigned", 7)
    sequence[0] = 8
    assert t.get((*OIDS.notification_sequence, 0)) == ("unsigned", 8)


@pytest.mark.parametrize(
    ("oid", "answer"),
    [
        ((*OIDS.watchdog_version,), NO_SUCH_INSTANCE),  # the scalar without .0
        ((*OIDS.watchdog_version, 1), NO_SUCH_INSTANCE),
        ((*OIDS.watchdog_version, 0, 0), NO_SUCH_INSTANCE),
        ((*OIDS.notification_flags, 0), NO_SUCH_OBJECT),  # accessible-for-notify only
        ((*ENTRY, 1, 5), NO_SUCH_OBJECT),  # wdServiceIndex is not-accessible
        ((*ENTRY, 2, 9), NO_SUCH_INSTANCE),  # no row 9
        ((*ENTRY, 2), NO_SUCH_INSTANCE),
        ((*ENTRY, 2, 5, 1), NO_SUCH_INSTANCE),
        ((*ENTRY, 16, 5), NO_SUCH_OBJECT),
        ((1, 3, 6, 1, 2, 1, 2, 1, 0), NO_SUCH_OBJECT),
        ((0, 0), NO_SUCH_OBJECT),
        ((), NO_SUCH_OBJECT),
    ],
)
def test_get_tells_a_missing_object_from_a_missing_instance(oid: tuple, answer: object) -> None:  # type: ignore[type-arg]
    t = table()
    t.put(5, row("a", UP))
    assert t.get(oid) is answer


def test_getnext_walks_scalars_then_the_table_column_by_column() -> None:
    t = table()
    t.put(10, row("b", DOWN))
    t.put(2, row("a", UP))
    oids = [oid for oid, _ in t.walk()]
    assert oids[:3] == [(1, 3, 6, 1, 2, 1, 1, c, 0) for c in (1, 2, 3)]
    general = [(*ROOT, 1, 1, n, 0) for n in range(1, 7)]
    assert oids[3:9] == general
    columns = [(*ENTRY, c, i) for c in range(2, 16) for i in (2, 10)]
    assert oids[9:] == columns
    assert t.get(oids[9]) == ("string", b"a")
    # a walk started anywhere continues from there
    assert [oid for oid, _ in t.walk((*ENTRY, 6))] == columns[8:]
    assert [oid for oid, _ in t.walk((*ENTRY, 6, 2))] == columns[9:]
    assert [oid for oid, _ in t.walk((*ENTRY, 6, 2, 99))] == columns[9:]
    assert [oid for oid, _ in t.walk((*ENTRY, 6, 10))] == columns[10:]
    assert t.next((*ENTRY, 1)) == ((*ENTRY, 2, 2), ("string", b"a"))
    assert t.next((*ROOT, 1, 1, 6)) == ((*ROOT, 1, 1, 6, 0), ("unsigned", 7))
    assert t.next((*ROOT, 1, 1, 6, 0))[0] == (*ENTRY, 2, 2)  # type: ignore[index]
    assert t.next((*ROOT, 1, 1, 7, 0))[0] == (*ENTRY, 2, 2)  # type: ignore[index]
    assert t.next((*ENTRY, 15, 10)) is None
    assert t.next((2,)) is None
    assert t.next((1, 3, 6, 1, 2, 1, 1, 1, 0))[0] == (1, 3, 6, 1, 2, 1, 1, 2, 0)  # type: ignore[index]


def test_an_empty_table_still_has_its_scalars() -> None:
    t = table()
    assert len(list(t.walk())) == 9
    assert t.next((*ENTRY,)) is None


def test_rows_change_in_place_and_counts_follow() -> None:
    t = table()
    t.put(1, row("a", UP))
    t.put(2, row("b", UP))
    assert t.get((*OIDS.services_up, 0)) == ("gauge", 2)
    t.put(2, row("b", DOWN))
    assert t.get((*OIDS.services_up, 0)) == ("gauge", 1)
    assert t.get((*OIDS.services_down, 0)) == ("gauge", 1)
    assert t.get((*ENTRY, 6, 2)) == ("integer", 2)
    t.remove(1)
    t.remove(1)  # twice: nothing happens
    assert t.indexes() == [2]
    assert t.get((*OIDS.services_up, 0)) == ("gauge", 0)
    assert t.get((*ENTRY, 2, 1)) is NO_SUCH_INSTANCE
    assert len(t) == 1


def test_a_row_must_fit_the_mib() -> None:
    t = table()
    with pytest.raises(ValueError, match="wdServiceIndex"):
        t.put(0, row("a", UP))
    with pytest.raises(ValueError, match="14 values"):
        t.put(1, row("a", UP)[:-1])
    bad = list(row("a", UP))
    bad[4] = ("integer", 9)
    with pytest.raises(ValueError, match="wdServiceState"):
        t.put(1, tuple(bad))


def test_text_is_printable_ascii_cut_to_its_size() -> None:
    values = service_row(
        model.Service(name="x", host="h" * 300, port=1, check=model.CheckKind.TCP),
        DOWN,
        Confirmed(Reason.UNEXPECTED_RESPONSE, "bad\r\nbanner\x00" + "y" * 300, 1.0, 3),
        mono_now=MONO,
        wall_now=WALL,
    )
    assert values[1][1] == b"h" * 252 + b"..."
    text = values[7][1]
    assert isinstance(text, bytes)
    assert len(text) == 255
    assert text.startswith(b"bad\\r\\nbanner\\x00y")
    assert values[9] == ("gauge", 1000)


def test_a_large_table_is_walked_in_order() -> None:
    t = table()
    for index in range(5000, 0, -1):
        t.put(index, row(f"s{index}", UP if index % 2 else DOWN))
    walked = list(t.walk((*ENTRY, 2)))
    assert len(walked) == 5000 * 14
    assert [oid for oid, _ in walked] == sorted(oid for oid, _ in walked)
    assert t.get((*OIDS.services_down, 0)) == ("gauge", 2500)


# --- the snapshot: rows in step with check results ---------------------------


def test_the_confirming_check_stays_in_the_row_until_the_next_change() -> None:
    from snmp_watchdog.agent.snapshot import Snapshot  # noqa: PLC0415
    from snmp_watchdog.result import CheckResult  # noqa: PLC0415

    t = table()
    snap = Snapshot(t, clock=lambda: MONO, wall=lambda: WALL)
    mail = svc("mail")
    snap.load([mail], {}, {"mail": 4})
    assert t.get((*ENTRY, 6, 4)) == ("integer", 3)  # unknown
    down = ServiceState(
        state=State.DOWN, since=MONO, failures=1, notified=State.DOWN, last_check=MONO,
        last_reason=Reason.REFUSED, last_detail="refused", checks=1, failed_checks=1,
    )  # fmt: skip
    snap.result(mail, down, CheckResult(Reason.REFUSED, "connection refused", 0.004))
    assert t.get((*ENTRY, 8, 4)) == ("integer", Reason.REFUSED.value)
    assert t.get((*ENTRY, 9, 4)) == ("string", b"connection refused")
    # a later check that does not change the state: the reason stays the confirming one
    later = ServiceState(
        state=State.DOWN, since=MONO, successes=1, notified=State.DOWN, last_check=MONO + 1,
        last_reason=Reason.OK, checks=2, failed_checks=1,
    )  # fmt: skip
    snap.result(mail, later, CheckResult(Reason.OK, "", 0.001))
    assert t.get((*ENTRY, 8, 4)) == ("integer", Reason.REFUSED.value)
    assert t.get((*ENTRY, 13, 4)) == ("counter", 2)
    assert t.get((*ENTRY, 15, 4)) == ("string", date_and_time(WALL + 1))
    # a reload keeps it, and drops the rows of services that are gone
    snap.load([mail, svc("web")], {"mail": later}, {"mail": 4, "web": 9})
    assert t.get((*ENTRY, 9, 4)) == ("string", b"connection refused")
    assert t.indexes() == [4, 9]
    snap.load([svc("web")], {}, {"web": 9})
    assert t.indexes() == [9]
    snap.result(mail, later, CheckResult(Reason.OK, "", 0.001))  # not loaded: no row
    assert t.indexes() == [9]
