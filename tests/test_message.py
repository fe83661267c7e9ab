"""The message builder: the exact OIDs, SNMP types and values of each notification."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pysnmp.proto.rfc1902 import Gauge32, Integer32, OctetString, TimeTicks, Unsigned32

from snmp_watchdog import __version__, model
from snmp_watchdog.notify.message import Message, MessageBuilder
from snmp_watchdog.notify.mib import MAX32, Oids, date_and_time, display_text
from snmp_watchdog.reasons import Reason
from snmp_watchdog.state import Kind, State

ROOT = (1, 3, 6, 1, 4, 1, 99999)
MAIL = model.Service(name="mail", host="mx.example.net", port=25, check=model.CheckKind.SMTP)
CHANGED_AT = datetime(2026, 11, 25, 15, 20, 5, 730000, tzinfo=UTC).timestamp()


def event(builder: MessageBuilder, **changes: object) -> Message:
    """A Down of MAIL, with ``changes`` to the keyword arguments."""
    args: dict[str, object] = {
        "kind": Kind.DOWN,
        "service": MAIL,
        "index": 7,
        "state": State.DOWN,
        "previous": State.UP,
        "reason": Reason.REFUSED,
        "detail": "connection refused",
        "count": 3,
        "elapsed": 0.0126,
        "at_wall": CHANGED_AT,
        "sequence": 41,
        "flags": "normal",
    }
    args.update(changes)
    return builder.service_event(**args)  # type: ignore[arg-type]


def values(message: Message) -> dict[tuple[int, ...], tuple[type, object]]:
    """OID -> (exact SNMP type, Python value) of each varbind."""
    out: dict[tuple[int, ...], tuple[type, object]] = {}
    for oid, value in message.varbinds:
        plain = bytes(value) if isinstance(value, OctetString) else int(value)  # type: ignore[call-overload]
        out[oid] = (type(value), plain)
    return out


@pytest.fixture
def builder() -> MessageBuilder:
    return MessageBuilder(Oids(ROOT))


def test_down_carries_the_service_columns_then_sequence_and_flags(builder: MessageBuilder) -> None:
    msg = event(builder)
    column = (*ROOT, 1, 2, 1)
    general = (*ROOT, 1, 1)
    assert msg.notification == (*ROOT, 0, 1)
    assert (msg.kind, msg.sequence, msg.service) == ("down", 41, "mail")
    assert list(values(msg).items()) == [
        ((*column, 2, 7), (OctetString, b"mail")),
        ((*column, 3, 7), (OctetString, b"mx.example.net")),
        ((*column, 4, 7), (Unsigned32, 25)),
        ((*column, 5, 7), (OctetString, b"smtp")),
        ((*column, 6, 7), (Integer32, 2)),  # down
        ((*column, 7, 7), (Integer32, 1)),  # up
        ((*column, 8, 7), (Integer32, 1)),  # refused
        ((*column, 9, 7), (OctetString, b"connection refused")),
        ((*column, 10, 7), (Unsigned32, 3)),
        ((*column, 11, 7), (Gauge32, 13)),  # milliseconds, rounded
        ((*column, 12, 7), (OctetString, bytes.fromhex("07ea0b190f1405072b0000"))),
        ((*general, 6, 0), (Unsigned32, 41)),
        ((*general, 7, 0), (Integer32, 1)),  # normal
    ]


def test_up_pairs_with_down_variable_for_variable(builder: MessageBuilder) -> None:
    down = event(builder)
    up = event(
        builder, kind=Kind.UP, state=State.UP, previous=State.DOWN, reason=Reason.OK, detail=""
    )
    assert up.notification == (*ROOT, 0, 2)
    assert [oid for oid, _ in up.varbinds] == [oid for oid, _ in down.varbinds]
    assert values(up)[(*ROOT, 1, 2, 1, 8, 7)] == (Integer32, 0)  # ok


@pytest.mark.parametrize(
    ("kind", "arc"),
    [(Kind.DOWN, 1), (Kind.UP, 2), (Kind.FLAPPING, 3), (Kind.FLAPPING_ENDED, 4)],
)
def test_each_service_kind_has_its_notification(
    builder: MessageBuilder, kind: Kind, arc: int
) -> None:
    msg = event(builder, kind=kind)
    assert msg.notification == (*ROOT, 0, arc)
    assert msg.kind == kind.value


@pytest.mark.parametrize(
    ("flags", "number"), [("normal", 1), ("reminder", 2), ("test", 3), ("removed", 4), ("added", 5)]
)
def test_flags(builder: MessageBuilder, flags: str, number: int) -> None:
    assert values(event(builder, flags=flags))[(*ROOT, 1, 1, 7, 0)] == (Integer32, number)


@pytest.mark.parametrize(("state", "number"), [(State.UP, 1), (State.DOWN, 2), (State.UNKNOWN, 3)])
def test_states(builder: MessageBuilder, state: State, number: int) -> None:
    msg = values(event(builder, state=state, previous=state))
    assert msg[(*ROOT, 1, 2, 1, 6, 7)] == msg[(*ROOT, 1, 2, 1, 7, 7)] == (Integer32, number)


@pytest.mark.parametrize("reason", list(Reason))
def test_reason_codes_are_the_reason_numbers(builder: MessageBuilder, reason: Reason) -> None:
    assert values(event(builder, reason=reason))[(*ROOT, 1, 2, 1, 8, 7)] == (
        Integer32,
        reason.value,
    )


def test_the_index_instances_every_column(builder: MessageBuilder) -> None:
    msg = event(builder, index=MAX32)
    assert [oid[-1] for oid, _ in msg.varbinds] == [MAX32] * 11 + [0, 0]


@pytest.mark.parametrize(
    "changes",
    [
        {"flags": "late"},
        {"index": 0},
        {"index": MAX32 + 1},
    ],
)
def test_values_outside_the_mib_are_refused(
    builder: MessageBuilder, changes: dict[str, object]
) -> None:
    with pytest.raises(ValueError, match=r"not a|wdServiceIndex"):
        event(builder, **changes)


def test_numbers_are_clamped_or_wrapped_as_the_smi_says(builder: MessageBuilder) -> None:
    big = values(event(builder, count=2**40, elapsed=1e9, sequence=2**32 + 5))
    assert big[(*ROOT, 1, 2, 1, 10, 7)] == (Unsigned32, MAX32)  # count: clamped
    assert big[(*ROOT, 1, 2, 1, 11, 7)] == (Gauge32, MAX32)  # Gauge32 latches
    assert big[(*ROOT, 1, 1, 6, 0)] == (Unsigned32, 5)  # the sequence wraps
    small = values(event(builder, count=-1, elapsed=-0.5))
    assert small[(*ROOT, 1, 2, 1, 10, 7)] == (Unsigned32, 0)
    assert small[(*ROOT, 1, 2, 1, 11, 7)] == (Gauge32, 0)
    assert event(builder, sequence=2**32 + 5).sequence == 2**32 + 5


def test_date_and_time_is_eleven_octets_of_utc() -> None:
    """SNMPv2-TC DateAndTime: year (2 octets), month, day, hour, minutes, seconds,
    deci-seconds, '+', 0 hours and 0 minutes from UTC."""
    assert date_and_time(CHANGED_AT) == bytes([0x07, 0xEA, 11, 25, 15, 20, 5, 7, ord("+"), 0, 0])
    assert date_and_time(0.0) == bytes([0x07, 0xB2, 1, 1, 0, 0, 0, 0, ord("+"), 0, 0])


def test_text_becomes_printable_ascii() -> None:
    assert display_text("bad\r\nbanner\t\x00\x7f", 255) == "bad\\r\\nbanner\\t\\x00\\x7f"
    assert display_text("caf\u00e9 \u2603 \U0001f600", 255) == "caf\\xe9 \\u2603 \\U0001f600"


def test_long_text_is_cut_to_the_size_with_an_ellipsis() -> None:
    assert display_text("x" * 255, 255) == "x" * 255
    cut = display_text("x" * 256, 255)
    assert cut == "x" * 252 + "..."
    # An escape is never split: it goes whole or not at all.
    cut = display_text("x" * 250 + "\u2603" * 3, 255)
    assert cut == "x" * 250 + "..."
    assert len(display_text("\u2603" * 100, 32)) <= 32


def test_the_reason_text_is_cut_to_at_most_255_octets(builder: MessageBuilder) -> None:
    sent = values(event(builder, detail="expected ^250, got " + "\u00e9" * 300))
    kind, text = sent[(*ROOT, 1, 2, 1, 9, 7)]
    assert kind is OctetString
    assert isinstance(text, bytes)
    # 19 + 58 escapes of 4 + 3 = 254: a 59th escape would not fit with the ellipsis.
    assert text == b"expected ^250, got " + b"\\xe9" * 58 + b"..."


def test_heartbeat(builder: MessageBuilder) -> None:
    msg = builder.heartbeat(sequence=9, up=10, down=2, unknown=1, uptime=3600.257)
    general = (*ROOT, 1, 1)
    assert msg.notification == (*ROOT, 0, 5)
    assert (msg.kind, msg.sequence, msg.service) == ("heartbeat", 9, None)
    assert list(values(msg).items()) == [
        ((*general, 1, 0), (OctetString, __version__.encode())),
        ((*general, 2, 0), (TimeTicks, 360025)),  # hundredths of a second
        ((*general, 3, 0), (Gauge32, 10)),
        ((*general, 4, 0), (Gauge32, 2)),
        ((*general, 5, 0), (Gauge32, 1)),
        ((*general, 6, 0), (Unsigned32, 9)),
    ]


def test_heartbeat_uptime_wraps_like_timeticks(builder: MessageBuilder) -> None:
    msg = builder.heartbeat(sequence=1, up=0, down=0, unknown=0, uptime=(2**32 + 100) / 100)
    assert values(msg)[(*ROOT, 1, 1, 2, 0)] == (TimeTicks, 100)


def test_test_notification(builder: MessageBuilder) -> None:
    msg = builder.test(sequence=3, text="test from watchdog\n")
    general = (*ROOT, 1, 1)
    assert msg.notification == (*ROOT, 0, 6)
    assert (msg.kind, msg.sequence, msg.service) == ("test", 3, None)
    assert list(values(msg).items()) == [
        ((*general, 8, 0), (OctetString, b"test from watchdog\\n")),
        ((*general, 1, 0), (OctetString, __version__.encode())),
        ((*general, 6, 0), (Unsigned32, 3)),
    ]


def test_the_default_root_is_netsnmp_playpen() -> None:
    msg = MessageBuilder(Oids()).test(sequence=1, text="x")
    assert msg.notification == (1, 3, 6, 1, 4, 1, 8072, 9999, 9999, 0, 6)


def test_encode_decode_round_trip_keeps_every_oid_type_and_value() -> None:
    from snmp_watchdog.notify.message import decode, encode  # noqa: PLC0415

    builder = MessageBuilder(Oids())
    svc = model.Service(name="mail", host="mail.example", port=25, check=model.CheckKind.SMTP)
    msg = builder.service_event(
        kind=Kind.DOWN,
        service=svc,
        index=3,
        state=State.DOWN,
        previous=State.UP,
        reason=Reason.REFUSED,
        detail="connection refused \u00e9",
        count=3,
        elapsed=0.012,
        at_wall=1_790_000_000.5,
        sequence=42,
        flags="reminder",
    )
    back = decode(encode(msg))
    assert back == msg
    assert [type(v) for _, v in back.varbinds] == [type(v) for _, v in msg.varbinds]
    assert [repr(v) for _, v in back.varbinds] == [repr(v) for _, v in msg.varbinds]
    for extra in (
        builder.heartbeat(sequence=1, up=1, down=2, unknown=3, uptime=5.0),
        builder.test(sequence=2, text="hello"),
    ):
        assert decode(encode(extra)) == extra


def test_decode_refuses_what_encode_cannot_have_written() -> None:
    from snmp_watchdog.notify.message import decode  # noqa: PLC0415

    for bad in (b"", b"{}", b'{"n":"1.3","k":"up","q":1,"v":null,"b":[["1.3","z",1]]}'):
        with pytest.raises(ValueError, match="not a stored notification"):
            decode(bad)
