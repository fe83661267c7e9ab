"""Restarts (SPEC section 9): the daemon killed with SIGKILL at awkward moments.

A real SMTP server goes down and comes back, a real Net-SNMP snmptrapd
receives, and the daemon is killed (no clean-up at all) and started again.
What the receiver sees is read by the notifications' sequence numbers
(wdNotificationSequence.0): no number missing, no new number for a state that
did not change. A notification killed between leaving and being marked as
delivered is sent again after the restart (at least once): it then carries
the same sequence number and the same varbinds, so a receiver can tell a
repeat from news.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from snmp_watchdog.notify.mib import STATE_VALUES, Oids
from snmp_watchdog.state import ServiceState, State
from snmp_watchdog.store import Store
from tests.helpers import (
    Daemon,
    SmtpServer,
    checks_after,
    count_lines,
    free_tcp_port,
    free_udp_port,
    pending_rows,
    stored_states,
    wait_pending,
)
from tests.snmptrapd import Received, Snmptrapd

pytestmark = [pytest.mark.slow, pytest.mark.snmp]

OIDS = Oids()
SEQUENCE = ".".join(map(str, (*OIDS.notification_sequence, 0)))
#: Not the traps' community: see ``receivers_yaml``.
INFORM_COMMUNITY = "watchdog-informs"
DOWN = ServiceState(state=State.DOWN, notified=State.DOWN)
KINDS = {
    ".".join(map(str, OIDS.service_down)): "down",
    ".".join(map(str, OIDS.service_up)): "up",
    ".".join(map(str, OIDS.heartbeat)): "heartbeat",
}


def receivers_yaml(port: int, *, traps: bool = True, informs: bool = True) -> str:
    """A trap and an inform receiver on one snmptrapd, each with its own community.

    (With the same community on the same address the informs are never
    acknowledged: pysnmp maps the response's community to the first matching
    community row, the trap receiver's, and drops it as not matching the
    request. That is a fault of the sender, outside what these tests are about.)
    """
    text = ""
    if traps:
        text += f"""
  - name: traps
    host: 127.0.0.1
    port: {port}
    version: 2c
    community: public
    mode: trap"""
    if informs:
        text += f"""
  - name: informs
    host: 127.0.0.1
    port: {port}
    version: 2c
    community: {INFORM_COMMUNITY}
    mode: inform
    timeout: 0.5s"""
    return text


def write_config(
    tmp_path: Path, smtp_port: int, receivers: str, *, fall: int = 2, heartbeat: str = "0"
) -> Path:
    cfg = tmp_path / "watchdog.yaml"
    cfg.write_text(
        f"""
watchdog:
  state_dir: {tmp_path}/state
  heartbeat: {heartbeat}
defaults:
  interval: 0.2s
  retry_interval: 0.2s
  timeout: 0.5s
  fall: {fall}
  rise: 2
  jitter: 0
  flap_changes: 0
receivers:{receivers}
services:
  - name: mail
    host: 127.0.0.1
    port: {smtp_port}
    check: smtp
"""
    )
    return cfg


def sequence(n: Received) -> int:
    return int(n.varbinds[SEQUENCE].text)


def kind(n: Received) -> str:
    return KINDS[n.trap_oid]


def distinct(received: list[Received], pdu: str) -> list[tuple[int, str]]:
    """(sequence, kind) of each notification of type ``pdu`` in order of first arrival.

    A repeat must be the same notification: same sequence, same varbinds (only
    sysUpTime.0, the daemon's uptime when it left, may differ).
    """
    first: dict[int, Received] = {}
    for n in received:
        if n.pdu != pdu:
            continue
        seen = first.setdefault(sequence(n), n)
        assert (seen.trap_oid, seen.payload) == (n.trap_oid, n.payload), (seen, n)
    return [(seq, kind(n)) for seq, n in first.items()]


def stored_state(state_dir: Path, name: str) -> State | None:
    """What the state database holds for ``name`` (read as ``watchdog status`` reads it)."""
    st = stored_states(state_dir).get(name)
    return None if st is None else st.state


def wait_stored(state_dir: Path, name: str, state: State, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while stored_state(state_dir, name) is not state:
        assert time.monotonic() < deadline, f"{name} not stored as {state}"
        time.sleep(0.05)


def start(daemons: list[Daemon], cfg: Path) -> Daemon:
    d = Daemon(cfg, "--log-level", "debug")
    daemons.append(d)
    d.wait_for("ready")
    return d


def test_a_corrupt_database_stops_the_start_with_the_way_out_and_sends_nothing(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd]
) -> None:
    """A silent fresh start would announce the (closed) service as down: news it is not."""
    trapd = snmptrapd(communities=["public", INFORM_COMMUNITY])
    cfg = write_config(tmp_path, free_tcp_port(), receivers_yaml(trapd.port or 0))
    state_dir = tmp_path / "state"
    with Store.open(state_dir) as store, store.transaction():
        for n in range(300):  # a database of many pages, one of them damaged below
            store.save_state(f"old-{n}", DOWN, mono_now=1000.0, wall_now=1.7e9)
    db = state_dir / "state.db"
    with db.open("r+b") as f:
        f.seek(db.stat().st_size // 2 // 4096 * 4096)
        f.write(bytes(range(256)) * 16)
    damaged = db.read_bytes()

    proc = subprocess.run(
        [sys.executable, "-m", "snmp_watchdog", "-c", str(cfg), "run"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert f"{db}: the state database is corrupt" in proc.stderr
    assert f"mv {db} {db}.broken" in proc.stderr  # the way out, ready to paste
    assert "notified again" in proc.stderr  # ... and what it costs
    assert db.read_bytes() == damaged
    assert sorted(p.name for p in state_dir.iterdir()) == ["lock", "state.db"]
    time.sleep(0.3)
    assert trapd.notifications == []

    proc = subprocess.run(
        [sys.executable, "-m", "snmp_watchdog", "-c", str(cfg), "status"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 1
    assert "the state database is corrupt" in proc.stderr


def test_sigkill_mid_confirmation_and_right_after_a_change_loses_and_repeats_nothing(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd], smtp: SmtpServer, daemons: list[Daemon]
) -> None:
    trapd = snmptrapd(communities=["public", INFORM_COMMUNITY])
    cfg = write_config(tmp_path, smtp.port, receivers_yaml(trapd.port or 0), fall=3)
    state_dir = tmp_path / "state"
    smtp.start()

    # Up from unknown is silent; it reaches the database within a second.
    d = start(daemons, cfg)
    wait_stored(state_dir, "mail", State.UP)
    d.kill()

    # Restarted while nothing changed: nothing to say.
    d = start(daemons, cfg)
    d.wait_for(r"resumed the state of 1 service")
    checks_after(d, r"check mail: ok", 3)

    # Killed after one failed check of the three that confirm DOWN.
    smtp.stop()
    first = d.wait_for(r"check mail: refused")
    d.kill()
    assert not any(" is DOWN " in line for line in d.lines), d.lines[first:]

    # Confirmed after the restart, and killed the moment the first receiver has it.
    d = start(daemons, cfg)
    d.wait_for(r"mail .* is DOWN \(was up\) after 3 checks: refused")
    d.wait_for(r"down #1 \(mail\) sent to traps")
    d.kill()

    # Unchanged: no new notification, only what had not left or was not acknowledged yet.
    d = start(daemons, cfg)
    checks_after(d, r"check mail: refused", 4)
    trapd.wait_for(2)
    smtp.start()
    d.wait_for(r"mail .* is UP \(was down\) after 2 checks: ok")
    d.wait_for(r"up #2 \(mail\) to informs acknowledged")
    trapd.wait_for(4)
    time.sleep(0.3)  # anything extra would arrive now
    assert d.stop() == 0

    received = trapd.notifications
    assert distinct(received, "TRAP2") == [(1, "down"), (2, "up")]
    assert distinct(received, "INFORM") == [(1, "down"), (2, "up")]
    assert pending_rows(state_dir) == {}


def test_a_change_while_the_daemon_was_stopped_is_notified_once(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd], smtp: SmtpServer, daemons: list[Daemon]
) -> None:
    trapd = snmptrapd(communities=["public", INFORM_COMMUNITY])
    cfg = write_config(tmp_path, smtp.port, receivers_yaml(trapd.port or 0, informs=False))

    d = start(daemons, cfg)  # down at the first start: news
    d.wait_for(r"down #1 \(mail\) sent to traps")
    assert d.stop() == 0

    smtp.start()
    d = start(daemons, cfg)
    d.wait_for(r"mail .* is UP \(was down\) after 2 checks: ok")
    d.wait_for(r"up #2 \(mail\) sent to traps")
    assert d.stop() == 0

    smtp.stop()
    d = start(daemons, cfg)
    d.wait_for(r"mail .* is DOWN \(was up\) after 2 checks: refused")
    d.wait_for(r"down #3 \(mail\) sent to traps")
    checks_after(d, r"check mail: refused", 3, start=len(d.lines))
    assert d.stop() == 0

    received = trapd.wait_for(3)
    time.sleep(0.2)
    assert len(trapd.notifications) == 3
    assert [(sequence(n), kind(n)) for n in received] == [(1, "down"), (2, "up"), (3, "down")]
    previous = ".".join(map(str, (*OIDS.service_previous_state, 1)))
    assert [int(n.varbinds[previous].text) for n in received] == [
        STATE_VALUES["unknown"],
        STATE_VALUES["down"],
        STATE_VALUES["up"],
    ]


def test_informs_pending_while_the_receiver_is_down_survive_two_kills_in_order(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd], smtp: SmtpServer, daemons: list[Daemon]
) -> None:
    trapd = snmptrapd(communities=[INFORM_COMMUNITY], port=free_udp_port(), start=False)
    cfg = write_config(tmp_path, smtp.port, receivers_yaml(trapd.port or 0, traps=False))
    state_dir = tmp_path / "state"

    d = start(daemons, cfg)
    d.wait_for(r"down #1 \(mail\) to informs not acknowledged \(attempt 1\): timeout")
    smtp.start()
    d.wait_for(r"mail .* is UP \(was down\)")
    wait_pending(state_dir, {"informs": 2})  # the Up is committed just after its log line
    d.kill()

    d = start(daemons, cfg)
    d.wait_for(r"2 notification\(s\) from before the restart are being delivered")
    d.wait_for(r"down #1 \(mail\) to informs not acknowledged \(attempt 1\)")
    d.kill()

    trapd.start()
    d = start(daemons, cfg)
    d.wait_for(r"down #1 \(mail\) to informs acknowledged")
    d.wait_for(r"up #2 \(mail\) to informs acknowledged")
    assert d.stop() == 0
    assert distinct(trapd.notifications, "INFORM") == [(1, "down"), (2, "up")]
    assert pending_rows(state_dir) == {}


def test_sequence_numbers_never_repeat_across_a_restart_after_heartbeats(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd], smtp: SmtpServer, daemons: list[Daemon]
) -> None:
    """Heartbeats take numbers from the same sequence; a restart must not hand them out again."""
    trapd = snmptrapd(communities=["public", INFORM_COMMUNITY])
    cfg = write_config(
        tmp_path, smtp.port, receivers_yaml(trapd.port or 0, informs=False), heartbeat="0.3s"
    )
    smtp.start()
    d = start(daemons, cfg)
    d.wait_for(r"heartbeat #2")
    trapd.wait_for(2)
    d.kill()

    smtp.stop()
    d = start(daemons, cfg)
    d.wait_for(r"mail .* is DOWN")
    d.wait_for(r"down #\d+ \(mail\) sent to traps")
    assert d.stop() == 0
    numbers = [(sequence(n), kind(n)) for n in trapd.notifications]
    sequences = [seq for seq, _ in numbers]
    assert len(set(sequences)) == len(sequences), numbers
    assert sequences == sorted(sequences), numbers
    assert numbers[:2] == [(1, "heartbeat"), (2, "heartbeat")]
    assert [k for _, k in numbers].count("down") == 1, numbers


def test_a_check_towards_a_change_is_saved_at_once_and_repeats_of_the_state_by_the_stop(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd], smtp: SmtpServer, daemons: list[Daemon]
) -> None:
    """Checks that only repeat the confirmed state are saved less promptly (within 10 s).

    The stop writes what is left of them: every check is counted. A failed
    check of an up service counts towards Down: it is in the database within
    the second, so a restart after a crash goes on counting from it.
    """
    trapd = snmptrapd()
    cfg = write_config(tmp_path, smtp.port, receivers_yaml(trapd.port or 0), fall=30)
    state_dir = tmp_path / "state"
    smtp.start()
    d = start(daemons, cfg)
    wait_stored(state_dir, "mail", State.UP)  # a confirmation: saved within the second
    checks_after(d, r"check mail: ok", 10)
    assert d.stop() == 0
    st = stored_states(state_dir)["mail"]
    assert st.checks == count_lines(d.lines, r"check mail: ok") >= 10

    d = start(daemons, cfg)
    smtp.stop()
    d.wait_for(r"check mail: refused")
    deadline = time.monotonic() + 2.5
    while (st := stored_states(state_dir)["mail"]).failures == 0:
        assert time.monotonic() < deadline, "a failed check of an up service was not saved"
        time.sleep(0.05)
    d.kill()
    assert st.state is State.UP
    assert st.failures == st.failed_checks <= count_lines(d.lines, r"check mail: refused") < 30
