"""``watchdog test-trap`` while ``watchdog run`` runs, against a real SNMPv3 receiver.

A receiver of SNMPv3 traps remembers the engine time it last accepted from an
engine and drops a message of the same boots more than 150 s behind it
("usm: Message too old", RFC 3414 section 3.2). A test trap beside a daemon
that has run for longer than that must therefore carry the daemon's boots
and engine time, and the daemon's own traps must still be accepted after it.
The daemon has to have run for over 150 s: this test waits that long.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from snmp_watchdog.notify.mib import Oids
from tests.helpers import Daemon, free_tcp_port
from tests.snmptrapd import Snmptrapd, User

pytestmark = [pytest.mark.snmp, pytest.mark.slow]

ENGINE_ID = bytes.fromhex("80001f8805aabbccddeeff0011")
AUTH_KEY = "auth-key-123"
PRIV_KEY = "priv-key-456"
OIDS = Oids()
#: Net-SNMP's time window (RFC 3414 USM): a test trap counting from 0 is this far behind.
TIME_WINDOW = 150


def dotted(oid: tuple[int, ...]) -> str:
    return ".".join(map(str, oid))


def test_a_v3_test_trap_beside_a_long_running_daemon_is_accepted(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd], daemons: list[Daemon]
) -> None:
    user = User("wd", "SHA-256", AUTH_KEY, "AES", PRIV_KEY, engine_id=ENGINE_ID)
    trapd = snmptrapd(communities=[], users=[user])
    cfg = tmp_path / "w.yaml"
    cfg.write_text(f"""
watchdog:
  state_dir: {tmp_path}/state
  engine_id: 0x{ENGINE_ID.hex()}
  heartbeat: 10s
receivers:
  - name: v3-trap
    host: 127.0.0.1
    port: {trapd.port}
    version: 3
    user: wd
    auth: {{protocol: SHA256, key: {AUTH_KEY}}}
    priv: {{protocol: AES128, key: {PRIV_KEY}}}
    mode: trap
services:
  - name: quiet
    host: 127.0.0.1
    port: {free_tcp_port()}
    check: tcp
    interval: 1h
""")
    d = Daemon(cfg)
    daemons.append(d)
    d.wait_for(r"\bready\b")
    heartbeat = dotted(OIDS.heartbeat)
    trapd.wait_for(1, timeout=15)  # the receiver knows the daemon's engine time now
    time.sleep(TIME_WINDOW + 10)  # the daemon's engine time is past the window

    proc = subprocess.run(
        [sys.executable, "-m", "snmp_watchdog", "-c", str(cfg), "test-trap"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # A trap is not acknowledged: the command says so rather than claiming delivery.
    assert proc.stdout.strip().endswith(
        f"v3-trap (127.0.0.1:{trapd.port} v3 trap): sent; traps are not acknowledged"
    ), proc.stdout
    test_oid = dotted(OIDS.test_notification)
    deadline = time.monotonic() + 10
    while not any(n.trap_oid == test_oid for n in trapd.notifications):
        assert time.monotonic() < deadline, [n.trap_oid for n in trapd.notifications]
        time.sleep(0.1)
    (test,) = [n for n in trapd.notifications if n.trap_oid == test_oid]
    assert test.version == "3"
    assert test.security_name == "wd"

    # The daemon's own traps are still accepted after the test trap.
    seen = len(trapd.notifications)
    trapd.wait_for(seen + 1, timeout=15)
    assert trapd.notifications[-1].trap_oid == heartbeat
    assert d.stop() == 0
