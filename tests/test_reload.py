"""Reload on SIGHUP (SPEC section 9), against real servers and a real snmptrapd.

Rules tested: an invalid new file is rejected with a logged error naming the
file and line, and the old configuration keeps running; services whose
definition did not change keep their state and counters; changed ones keep
their state; removed ones are forgotten (database and status file); new ones
start unknown; a changed receiver takes effect for the informs already
waiting for it, none lost.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from snmp_watchdog.notify.mib import Oids
from snmp_watchdog.state import ServiceState, State
from snmp_watchdog.store import Store
from tests.dnsserver import DnsServer
from tests.helpers import (
    Daemon,
    SmtpServer,
    checks_after,
    count_lines,
    free_tcp_port,
    free_udp_port,
    stored_states,
    wait_for_file,
)
from tests.snmptrapd import Received, Snmptrapd, User

pytestmark = [pytest.mark.slow, pytest.mark.snmp]

OIDS = Oids()
SEQUENCE = ".".join(map(str, (*OIDS.notification_sequence, 0)))
NAME = ".".join(map(str, OIDS.service_name))
KINDS = {
    ".".join(map(str, OIDS.service_down)): "down",
    ".".join(map(str, OIDS.service_up)): "up",
}
HEARTBEAT = ".".join(map(str, OIDS.heartbeat))
FLAGS = ".".join(map(str, (*OIDS.notification_flags, 0)))
STATE = ".".join(map(str, OIDS.service_state))
DEFAULTS = """
defaults:
  interval: 0.2s
  retry_interval: 0.1s
  timeout: 0.5s
  fall: 2
  rise: 2
  jitter: 0
  flap_changes: 0
"""


def service(name: str, port: int, extra: str = "") -> str:
    return f"  - {{name: {name}, host: 127.0.0.1, port: {port}, check: smtp{extra}}}\n"


def receiver(port: int, mode: str = "trap") -> str:
    return (
        f"  - {{name: nms, host: 127.0.0.1, port: {port}, version: 2c, community: public, "
        f"mode: {mode}, timeout: 0.5s}}\n"
    )


def write(cfg: Path, tmp_path: Path, receivers: str, services: str, settings: str = "") -> None:
    cfg.write_text(
        f"watchdog:\n  state_dir: {tmp_path}/state\n  status_dir: {tmp_path}/status\n"
        f"{settings}{DEFAULTS}receivers:\n{receivers}services:\n{services}"
    )


def described(received: list[Received]) -> list[tuple[int, str, str]]:
    """(sequence, kind, service) of each distinct notification, in order of arrival."""
    seen: dict[int, tuple[int, str, str]] = {}
    for n in received:
        seq = int(n.varbinds[SEQUENCE].text)
        name = next(v.text for k, v in n.varbinds.items() if k.startswith(NAME + "."))
        seen.setdefault(seq, (seq, KINDS[n.trap_oid], name))
    return list(seen.values())


def stored(state_dir: Path) -> dict[str, ServiceState]:
    return stored_states(state_dir)


def wait_stored(
    state_dir: Path, test: Callable[[dict[str, ServiceState]], bool], timeout: float = 5.0
) -> dict[str, ServiceState]:
    deadline = time.monotonic() + timeout
    while not test(states := stored(state_dir)):
        assert time.monotonic() < deadline, states
        time.sleep(0.05)
    return states


def test_reload_keeps_unchanged_services_forgets_removed_ones_and_starts_new_ones_unknown(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd], smtp: SmtpServer, daemons: list[Daemon]
) -> None:
    trapd = snmptrapd()
    assert trapd.port is not None
    smtp.start()
    closed = free_tcp_port()
    cfg = tmp_path / "watchdog.yaml"
    state_dir, status_dir = tmp_path / "state", tmp_path / "status"
    write(
        cfg,
        tmp_path,
        receiver(trapd.port),
        service("keep", smtp.port) + service("change", smtp.port) + service("gone", smtp.port),
    )
    d = Daemon(cfg, "--log-level", "debug")
    daemons.append(d)
    before = wait_stored(
        state_dir, lambda s: len(s) == 3 and all(st.state is State.UP for st in s.values())
    )
    checks_after(d, r"check keep: ok", 8)
    wait_for_file(status_dir / "gone", "0\n")

    write(
        cfg,
        tmp_path,
        receiver(trapd.port),
        service("keep", smtp.port)
        + service("change", smtp.port, ", interval: 0.3s")
        + service("new", closed),
    )
    mark = len(d.lines)
    d.signal(signal.SIGHUP)
    d.wait_for(r"configuration reloaded: 3 services \(1 added, 1 changed, 1 removed\)", start=mark)
    assert not (status_dir / "gone").exists()
    d.wait_for(r"new \(.*\) is DOWN \(was unknown\) after 2 checks: refused", start=mark)
    checks_after(d, r"check keep: ok", 3, start=mark)

    d.wait_for(r"down #1 \(new\) sent to nms")
    assert d.stop() == 0  # which saves every state
    after = stored(state_dir)
    assert "gone" not in after
    for name in ("keep", "change"):
        assert after[name].state is State.UP
        assert after[name].since == pytest.approx(before[name].since, abs=0.01)
        # Every check of its life is counted: the counter went on across the reload.
        assert after[name].checks == count_lines(d.lines, rf"check {name}: ok"), name
    assert after["new"].state is State.DOWN
    assert after["new"].checks == after["new"].failed_checks >= 2
    time.sleep(0.2)
    assert described(trapd.notifications) == [(1, "down", "new")]


def test_an_invalid_file_is_rejected_and_the_old_configuration_keeps_running(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd], smtp: SmtpServer, daemons: list[Daemon]
) -> None:
    trapd = snmptrapd()
    assert trapd.port is not None
    smtp.start()
    cfg = tmp_path / "watchdog.yaml"
    write(cfg, tmp_path, receiver(trapd.port), service("mail", smtp.port))
    d = Daemon(cfg, "--log-level", "debug")
    daemons.append(d)
    first = d.wait_for(r"check mail: ok")
    d.wait_for(r"check mail: ok", start=first + 1)

    good = cfg.read_text()
    cfg.write_text(good.replace("check: smtp}", "check: smtp, colour: blue}"))
    mark = len(d.lines)
    d.signal(signal.SIGHUP)
    rejected = d.wait_for(r"reload rejected: keeping the running configuration", start=mark)
    problems = [ln for ln in d.lines[mark:rejected] if "reload rejected: " in ln]
    assert problems, d.lines[mark:]
    assert all(" ERROR " in ln for ln in [*problems, d.lines[rejected]])
    assert any(f"{cfg}:" in ln and "colour" in ln for ln in problems), problems
    assert not any("configuration reloaded" in ln for ln in d.lines[mark:])

    # Still checking, still notifying, under the old configuration.
    d.wait_for(r"check mail: ok", start=rejected)
    smtp.stop()
    d.wait_for(r"mail .* is DOWN \(was up\) after 2 checks: refused", start=rejected)
    d.wait_for(r"down #1 \(mail\) sent to nms")

    # Once the file is fixed, the next SIGHUP takes it.
    cfg.write_text(good)
    mark = len(d.lines)
    d.signal(signal.SIGHUP)
    d.wait_for(r"configuration reloaded: 1 services \(0 added, 0 changed, 0 removed\)", start=mark)
    assert d.proc.poll() is None
    assert d.stop() == 0
    assert described(trapd.wait_for(1)) == [(1, "down", "mail")]


def test_a_changed_receiver_takes_effect_for_the_informs_already_waiting(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd], daemons: list[Daemon]
) -> None:
    trapd = snmptrapd()
    assert trapd.port is not None
    nowhere = free_udp_port()
    cfg = tmp_path / "watchdog.yaml"
    closed = service("a", free_tcp_port()) + service("b", free_tcp_port())
    write(cfg, tmp_path, receiver(nowhere, "inform"), closed)
    d = Daemon(cfg)
    daemons.append(d)
    d.wait_for(r"down #\d \(\w\) to nms not acknowledged \(attempt 1\)")
    d.wait_for(r"b \(.*\) is DOWN \(was unknown\)")
    with Store.open(tmp_path / "state", readonly=True) as store:
        assert store.pending_counts() == {"nms": 2}

    write(cfg, tmp_path, receiver(trapd.port, "inform"), closed)
    mark = len(d.lines)
    d.signal(signal.SIGHUP)
    d.wait_for(r"configuration reloaded: 2 services \(0 added, 0 changed, 0 removed\)", start=mark)
    d.wait_for(r"down #1 \(\w\) to nms acknowledged", start=mark, timeout=8)
    d.wait_for(r"down #2 \(\w\) to nms acknowledged", start=mark, timeout=8)
    assert d.stop() == 0
    got = described(trapd.notifications)
    assert [(seq, kind) for seq, kind, _ in got] == [(1, "down"), (2, "down")]
    assert sorted(name for _, _, name in got) == ["a", "b"]
    with Store.open(tmp_path / "state", readonly=True) as store:
        assert store.pending_counts() == {}


def test_a_check_in_flight_when_its_service_is_removed_does_not_bring_it_back(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd], smtp: SmtpServer, daemons: list[Daemon]
) -> None:
    """Its late result must not write the forgotten state or status file again."""
    trapd = snmptrapd()
    assert trapd.port is not None
    smtp.start()
    with socket.socket() as silent:  # accepts, never greets: each check takes its timeout
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        slow = service("slow", silent.getsockname()[1], ", timeout: 1s, fall: 1")
        cfg = tmp_path / "watchdog.yaml"
        state_dir, status_dir = tmp_path / "state", tmp_path / "status"
        write(cfg, tmp_path, receiver(trapd.port), service("mail", smtp.port) + slow)
        d = Daemon(cfg, "--log-level", "debug")
        daemons.append(d)
        d.wait_for(r"slow \(.*\) is DOWN \(was unknown\) after 1 check: timeout")
        wait_for_file(status_dir / "slow", "2\n")  # Reason.TIMEOUT
        time.sleep(0.4)  # the next check of slow has started and waits for its greeting

        write(cfg, tmp_path, receiver(trapd.port), service("mail", smtp.port))
        mark = len(d.lines)
        d.signal(signal.SIGHUP)
        d.wait_for(
            r"configuration reloaded: 1 services \(0 added, 0 changed, 1 removed\)", start=mark
        )
        d.wait_for(r"check slow: result of the previous configuration ignored", start=mark)
        time.sleep(1.2)  # a flush of the states
        assert sorted(os.listdir(status_dir)) == ["mail"]
        assert set(stored(state_dir)) == {"mail"}
        assert d.stop() == 0
    # The removed service's receivers hear no more of it: its Down is closed.
    assert described(trapd.wait_for(2)) == [(1, "down", "slow"), (2, "up", "slow")]


def heartbeats(received: list[Received]) -> int:
    return len({n.varbinds[SEQUENCE].text for n in received if n.trap_oid == HEARTBEAT})


def test_heartbeat_follows_a_reload_both_ways(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd], smtp: SmtpServer, daemons: list[Daemon]
) -> None:
    trapd = snmptrapd()
    assert trapd.port is not None
    smtp.start()
    cfg = tmp_path / "watchdog.yaml"
    write(cfg, tmp_path, receiver(trapd.port), service("mail", smtp.port))
    d = Daemon(cfg, "--log-level", "debug")
    daemons.append(d)
    d.wait_for(r"check mail: ok")

    # Added by a reload: it starts.
    write(cfg, tmp_path, receiver(trapd.port), service("mail", smtp.port), "  heartbeat: 0.3s\n")
    mark = len(d.lines)
    d.signal(signal.SIGHUP)
    d.wait_for(r"configuration reloaded", start=mark)
    d.wait_for(r"heartbeat #\d+", start=mark)
    d.wait_for(r"heartbeat #\d+", start=d.wait_for(r"heartbeat #\d+", start=mark) + 1)

    deadline = time.monotonic() + 5
    while heartbeats(trapd.notifications) < 2:
        assert time.monotonic() < deadline, trapd.notifications
        time.sleep(0.05)

    # Removed by a reload: it stops (it used to spin, thousands a second).
    write(cfg, tmp_path, receiver(trapd.port), service("mail", smtp.port))
    mark = len(d.lines)
    d.signal(signal.SIGHUP)
    reloaded = d.wait_for(r"configuration reloaded", start=mark)
    time.sleep(0.3)  # one already on its way may still arrive
    before = heartbeats(trapd.notifications)
    time.sleep(1.0)
    assert heartbeats(trapd.notifications) == before
    assert not [ln for ln in d.lines[reloaded:] if "heartbeat #" in ln]
    assert d.stop() == 0


def test_engine_id_and_max_in_flight_on_reload(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd], smtp: SmtpServer, daemons: list[Daemon]
) -> None:
    """max_in_flight is applied; engine_id is not, says so, and status shows the one in use."""
    trapd = snmptrapd()
    assert trapd.port is not None
    smtp.start()
    cfg = tmp_path / "watchdog.yaml"
    first, second = "0x80001f8804736e6d702d7761746368", "0x80001f8804736e6d702d6f74686572"
    write(
        cfg,
        tmp_path,
        receiver(trapd.port),
        service("mail", smtp.port),
        f"  engine_id: '{first}'\n  max_in_flight: 10\n",
    )
    d = Daemon(cfg, "--log-level", "debug")
    daemons.append(d)
    d.wait_for(rf"SNMP engine ID {first} \(boots 1\)")
    d.wait_for(r"check mail: ok")

    write(
        cfg,
        tmp_path,
        receiver(trapd.port),
        service("mail", smtp.port),
        f"  engine_id: '{second}'\n  max_in_flight: 20\n",
    )
    mark = len(d.lines)
    d.signal(signal.SIGHUP)
    d.wait_for(rf"WARNING engine_id changes only with a restart; still using {first}", start=mark)
    d.wait_for(r"max_in_flight now 20 \(was 10\)", start=mark)
    d.wait_for(r"configuration reloaded", start=mark)

    shown = subprocess.run(
        [sys.executable, "-m", "snmp_watchdog", "-c", str(cfg), "status", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    data = json.loads(shown.stdout)
    assert data["engine_id"] == first
    assert data["engine_id_at_next_start"] == second
    assert d.stop() == 0

    d = Daemon(cfg)
    daemons.append(d)
    d.wait_for(rf"SNMP engine ID {second} \(boots 1\)")
    d.wait_for(r"ready")
    shown = subprocess.run(
        [sys.executable, "-m", "snmp_watchdog", "-c", str(cfg), "status", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    data = json.loads(shown.stdout)
    assert (data["engine_id"], data["engine_id_at_next_start"]) == (second, None)
    assert d.stop() == 0


def test_down_and_up_stay_paired_per_receiver_when_a_reload_moves_a_down_service(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd], smtp: SmtpServer, daemons: list[Daemon]
) -> None:
    """The receiver that loses the service gets an Up flagged removed (state unknown);
    the one that gains it gets the Down flagged added, then the real Up."""
    first, second = snmptrapd(), snmptrapd()
    assert first.port is not None
    assert second.port is not None

    def receivers() -> str:
        return receiver(first.port or 0).replace("name: nms", "name: first") + receiver(
            second.port or 0
        ).replace("name: nms", "name: second")

    cfg = tmp_path / "watchdog.yaml"
    write(cfg, tmp_path, receivers(), service("mail", smtp.port, ", receivers: [first]"))
    d = Daemon(cfg, "--log-level", "debug")
    daemons.append(d)
    d.wait_for(r"down #1 \(mail\) sent to first")

    write(cfg, tmp_path, receivers(), service("mail", smtp.port, ", receivers: [second]"))
    mark = len(d.lines)
    d.signal(signal.SIGHUP)
    d.wait_for(r"configuration reloaded", start=mark)
    d.wait_for(r"up #2 \(mail\) sent to first", start=mark)
    d.wait_for(r"down #3 \(mail\) sent to second", start=mark)
    smtp.start()
    d.wait_for(r"up #4 \(mail\) sent to second", start=mark)
    time.sleep(0.3)
    assert d.stop() == 0

    one, two = first.wait_for(2), second.wait_for(2)
    assert described(one) == [(1, "down", "mail"), (2, "up", "mail")]
    assert described(two) == [(3, "down", "mail"), (4, "up", "mail")]
    closing, added, real_up = one[-1], two[0], two[-1]
    assert closing.varbinds[FLAGS].text == "4"  # removed(4)
    assert next(v.text for k, v in closing.varbinds.items() if k.startswith(STATE)) == "3"
    assert added.varbinds[FLAGS].text == "5"  # added(5)
    assert real_up.varbinds[FLAGS].text == "1"
    assert len(first.notifications) == 2


def test_informs_of_a_receiver_removed_while_stopped_are_shown_then_discarded(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    nowhere = free_udp_port()
    cfg = tmp_path / "watchdog.yaml"
    gone = receiver(nowhere, "inform").replace("name: nms", "name: gone")
    stays = receiver(free_udp_port()).replace("name: nms", "name: stays")
    dead = service("dead", free_tcp_port(), ", receivers: [gone]")
    write(cfg, tmp_path, gone + stays, dead)
    d = Daemon(cfg)
    daemons.append(d)
    d.wait_for(r"down #1 \(dead\) to gone not acknowledged \(attempt 1\)")
    assert d.stop() == 0

    write(cfg, tmp_path, stays, service("dead", free_tcp_port()))

    def shown() -> tuple[dict[str, Any], str]:
        argv = [sys.executable, "-m", "snmp_watchdog", "-c", str(cfg), "status"]
        data = subprocess.run(
            [*argv, "--json"], check=True, capture_output=True, text=True, timeout=30
        )
        plain = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30)
        return json.loads(data.stdout), plain.stdout

    data, plain = shown()
    assert data["unconfigured_pending"] == {"gone": 1}
    assert "receiver gone (no longer configured): 1 notification(s)" in plain

    d = Daemon(cfg)
    daemons.append(d)
    d.wait_for(
        r"WARNING receiver gone is no longer configured: 1 notification\(s\) waiting for it "
        r"discarded"
    )
    d.wait_for("ready")
    data, plain = shown()
    assert data["unconfigured_pending"] == {}
    assert "no longer configured" not in plain
    assert d.stop() == 0


def test_the_file_of_the_last_sighup_wins_over_a_slower_earlier_reload(
    tmp_path: Path,
    snmptrapd: Callable[..., Snmptrapd],
    smtp: SmtpServer,
    dns: DnsServer,
    daemons: list[Daemon],
) -> None:
    """Reload A waits for a receiver's name server; reload B, signalled later, must win."""
    trapd = snmptrapd()
    assert trapd.port is not None
    smtp.start()
    dns.hang("slow.test")
    cfg = tmp_path / "watchdog.yaml"
    state_dir, status_dir = tmp_path / "state", tmp_path / "status"
    write(cfg, tmp_path, receiver(trapd.port), service("mail", smtp.port))
    argv = [sys.executable, "-m", "snmp_watchdog", "-c", str(cfg), "--log-level", "debug", "run"]
    d = Daemon(None, argv=dns.argv(argv))
    daemons.append(d)
    d.wait_for(r"check mail: ok")

    far = "  - {name: far, host: slow.test, port: 162, version: 2c, community: public}\n"
    write(
        cfg,
        tmp_path,
        receiver(trapd.port) + far,
        service("mail", smtp.port) + service("a", smtp.port),
    )
    mark = len(d.lines)
    d.signal(signal.SIGHUP)
    d.wait_for(r"SIGHUP received: reloading", start=mark)
    time.sleep(0.2)  # reload A is waiting for slow.test
    write(cfg, tmp_path, receiver(trapd.port), service("mail", smtp.port) + service("b", smtp.port))
    d.signal(signal.SIGHUP)
    second = d.wait_for(
        r"configuration reloaded",
        start=d.wait_for(r"configuration reloaded", start=mark, timeout=30) + 1,
        timeout=30,
    )
    wait_for_file(status_dir / "b", "0\n")
    time.sleep(1.2)  # a flush of the states
    assert not (status_dir / "a").exists()
    assert set(stored(state_dir)) == {"mail", "b"}
    assert "2 services" in d.lines[second]
    # A check of "a" still running at the reload may end after it: its result is dropped.
    late = "check a: result of the previous configuration ignored"
    assert not [ln for ln in d.lines[second:] if "check a:" in ln and late not in ln]
    assert d.stop() == 0


def test_allow_weak_crypto_and_a_weak_receiver_added_by_one_reload(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd], smtp: SmtpServer, daemons: list[Daemon]
) -> None:
    """The reload that allows MD5/DES may also add the receiver that needs them."""
    user = User("old", "MD5", "weak-auth-key", "DES", "weak-priv-key")
    trapd = snmptrapd(communities=[], users=[user])
    assert trapd.port is not None
    smtp.start()
    cfg = tmp_path / "watchdog.yaml"
    write(cfg, tmp_path, receiver(free_udp_port()), service("mail", smtp.port))
    d = Daemon(cfg)
    daemons.append(d)
    d.wait_for("ready")

    weak = (
        f"  - {{name: old, host: 127.0.0.1, port: {trapd.port}, version: 3, user: old, "
        "auth: {protocol: MD5, key: weak-auth-key}, priv: {protocol: DES, key: weak-priv-key}, "
        "mode: inform, timeout: 0.5s}\n"
    )
    dead = service("dead", free_tcp_port(), ", receivers: [old]")
    write(
        cfg,
        tmp_path,
        receiver(free_udp_port()) + weak,
        service("mail", smtp.port) + dead,
        "  allow_weak_crypto: true\n",
    )
    mark = len(d.lines)
    d.signal(signal.SIGHUP)
    d.wait_for(r"configuration reloaded: 2 services \(1 added", start=mark)
    d.wait_for(r"down #1 \(dead\) to old acknowledged", start=mark)
    assert d.stop() == 0


def value(notification: Received, column: tuple[int, ...]) -> str:
    """The text of the varbind of table column ``column`` (any service index)."""
    prefix = ".".join(map(str, column)) + "."
    return next(v.text for k, v in notification.varbinds.items() if k.startswith(prefix))


def test_a_service_removed_while_stopped_gets_its_down_closed_at_the_next_start(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd], daemons: list[Daemon]
) -> None:
    """As a reload would: an Up flagged removed (state unknown) to each receiver told
    the Down that is still configured; a receiver removed with it hears nothing; the
    next start sends nothing more."""
    stays, goes = snmptrapd(), snmptrapd()
    assert stays.port is not None
    assert goes.port is not None
    both = receiver(stays.port).replace("name: nms", "name: stays") + receiver(goes.port).replace(
        "name: nms", "name: goes"
    )
    dead_port = free_tcp_port()
    dead = service("dead", dead_port, ", receivers: [stays, goes]")
    kept = service("kept", free_tcp_port(), ", receivers: [stays]")
    cfg = tmp_path / "watchdog.yaml"
    write(cfg, tmp_path, both, dead + kept)
    d = Daemon(cfg, "--log-level", "debug")
    daemons.append(d)
    d.wait_for(r"down #\d \(dead\) sent to stays")
    d.wait_for(r"down #\d \(dead\) sent to goes")
    d.wait_for(r"down #\d \(kept\) sent to stays")
    assert d.stop() == 0

    write(cfg, tmp_path, receiver(stays.port).replace("name: nms", "name: stays"), kept)
    d = Daemon(cfg, "--log-level", "debug")
    daemons.append(d)
    d.wait_for(r"forgot 1 service\(s\) no longer configured: dead")
    d.wait_for(
        r"dead: up removed to stays \(removed from the configuration while the daemon was "
        r"stopped\)"
    )
    d.wait_for(r"up #3 \(dead\) sent to stays")
    assert not [line for line in d.lines if "by hand" in line]
    assert d.stop() == 0
    assert set(stored(tmp_path / "state")) == {"kept"}

    d = Daemon(cfg, "--log-level", "debug")  # a second start: nothing more to tell
    daemons.append(d)
    d.wait_for("ready")
    time.sleep(1.0)  # checks of kept, still down: notified already
    assert d.stop() == 0
    assert not [line for line in d.lines if "up removed" in line or " sent to " in line]
    assert not [line for line in d.lines if "forgot" in line]

    heard = stays.wait_for(3)
    time.sleep(0.3)
    assert len(stays.notifications) == 3
    downs, closing = heard[:2], heard[2]
    assert sorted((kind, name) for _, kind, name in described(downs)) == [
        ("down", "dead"),
        ("down", "kept"),
    ]
    assert described([closing]) == [(3, "up", "dead")]
    assert closing.varbinds[FLAGS].text == "4"  # removed(4)
    assert value(closing, OIDS.service_state) == "3"  # unknown(3)
    assert value(closing, OIDS.service_previous_state) == "2"  # down(2)
    down = next(n for n in downs if value(n, OIDS.service_name) == "dead")
    for column in (OIDS.service_host, OIDS.service_port, OIDS.service_check_kind):
        assert value(closing, column) == value(down, column)
    assert value(closing, OIDS.service_port) == str(dead_port)
    assert [kind for _, kind, _ in described(goes.notifications)] == ["down"]


def test_a_down_saved_by_an_older_version_without_its_receivers_is_left_with_a_warning(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd], daemons: list[Daemon]
) -> None:
    """Rows written before the receivers told were saved: nothing to close it with."""
    trapd = snmptrapd()
    assert trapd.port is not None
    cfg = tmp_path / "watchdog.yaml"
    write(cfg, tmp_path, receiver(trapd.port), service("dead", free_tcp_port()))
    d = Daemon(cfg, "--log-level", "debug")
    daemons.append(d)
    d.wait_for(r"down #1 \(dead\) sent to nms")
    assert d.stop() == 0
    db = sqlite3.connect(tmp_path / "state" / "state.db")
    with db:
        db.execute("UPDATE service SET told = NULL")  # as an older version left it
    db.close()

    write(cfg, tmp_path, receiver(trapd.port), service("other", free_tcp_port()))
    d = Daemon(cfg, "--log-level", "debug")
    daemons.append(d)
    d.wait_for(
        r"WARNING removed while the daemon was stopped, with a Down sent and no Up: dead; "
        r"close their problems at the receivers by hand"
    )
    d.wait_for(r"down #2 \(other\) sent to nms")
    assert d.stop() == 0
    assert not [line for line in d.lines if "up removed" in line]
    assert set(stored(tmp_path / "state")) == {"other"}
    assert [kind for _, kind, _ in described(trapd.wait_for(2))] == ["down", "down"]


def test_a_receiver_a_reload_already_closed_is_not_told_again_when_the_service_goes_while_stopped(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd], daemons: list[Daemon]
) -> None:
    """A reload takes one of its two receivers from a down service (an Up flagged
    removed to it); removed while stopped, only the other one still holds the Down:
    it alone gets the Up at the next start."""
    first, second = snmptrapd(), snmptrapd()
    assert first.port is not None
    assert second.port is not None
    receivers = receiver(first.port).replace("name: nms", "name: first") + receiver(
        second.port
    ).replace("name: nms", "name: second")
    cfg = tmp_path / "watchdog.yaml"
    port = free_tcp_port()
    write(cfg, tmp_path, receivers, service("mail", port, ", receivers: [first, second]"))
    d = Daemon(cfg, "--log-level", "debug")
    daemons.append(d)
    d.wait_for(r"down #1 \(mail\) sent to first")
    d.wait_for(r"down #1 \(mail\) sent to second")
    write(cfg, tmp_path, receivers, service("mail", port, ", receivers: [second]"))
    mark = len(d.lines)
    d.signal(signal.SIGHUP)
    d.wait_for(r"up #2 \(mail\) sent to first", start=mark)
    time.sleep(0.5)  # checks of mail, still down: nothing more to send
    assert d.stop() == 0

    write(cfg, tmp_path, receivers, "  []\n")
    d = Daemon(cfg, "--log-level", "debug")
    daemons.append(d)
    d.wait_for(r"mail: up removed to second \(removed from the configuration")
    d.wait_for(r"up #3 \(mail\) sent to second")
    assert d.stop() == 0

    second.wait_for(2)
    time.sleep(0.3)
    assert described(first.notifications) == [(1, "down", "mail"), (2, "up", "mail")]
    assert described(second.notifications) == [(1, "down", "mail"), (3, "up", "mail")]
    assert len(first.notifications) == len(second.notifications) == 2
    assert second.notifications[-1].varbinds[FLAGS].text == "4"  # removed(4)
