"""End to end through a real Net-SNMP snmptrapd: the daemon and ``watchdog test-trap``.

A real SMTP server on loopback goes down and comes back; snmptrapd must then
have received exactly one wdServiceDown and one wdServiceUp per receiver, with
the right varbinds, and nothing else.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from snmp_watchdog.notify.mib import FLAG_VALUES, STATE_VALUES, Oids
from snmp_watchdog.reasons import Reason
from tests.helpers import Daemon, SmtpServer
from tests.snmptrapd import Received, Snmptrapd, User

pytestmark = [pytest.mark.snmp, pytest.mark.slow]

OIDS = Oids()
AUTH_KEY = "auth-key-123"
PRIV_KEY = "priv-key-456"


def dotted(oid: tuple[int, ...]) -> str:
    return ".".join(map(str, oid))


def config_text(tmp_path: Path, smtp_port: int, receivers: str, **defaults: Any) -> str:
    extra = "".join(f"  {k}: {v}\n" for k, v in defaults.items())
    return f"""
watchdog:
  state_dir: {tmp_path}/state
defaults:
  interval: 0.3s
  retry_interval: 0.1s
  timeout: 1s
  fall: 2
  rise: 2
  jitter: 0
{extra}
receivers:
{receivers}
services:
  - name: mail
    host: 127.0.0.1
    port: {smtp_port}
    check: smtp
    helo: test.example
"""


def receivers_yaml(trapd: Snmptrapd) -> str:
    return f"""
  - name: v2c-trap
    host: 127.0.0.1
    port: {trapd.port}
    version: 2c
    community: public
    mode: trap
  - name: v3-inform
    host: 127.0.0.1
    port: {trapd.port}
    version: 3
    user: informer
    auth: {{protocol: SHA256, key: {AUTH_KEY}}}
    priv: {{protocol: AES128, key: {PRIV_KEY}}}
    mode: inform
    timeout: 1s
"""


@pytest.fixture
def trapd(snmptrapd: Callable[..., Snmptrapd]) -> Snmptrapd:
    user = User("informer", "SHA-256", AUTH_KEY, "AES", PRIV_KEY)
    return snmptrapd(communities=["public"], users=[user])


def value(n: Received, oid: tuple[int, ...], index: int | None = 1) -> str:
    key = dotted((*oid, index if index is not None else 0))
    return n.varbinds[key].text


def assert_service_event(
    n: Received, *, kind: str, state: str, previous: str, reason: Reason, count: int, seq: int
) -> None:
    notification = {"down": OIDS.service_down, "up": OIDS.service_up}[kind]
    assert n.trap_oid == dotted(notification)
    assert value(n, OIDS.service_name) == "mail"
    assert value(n, OIDS.service_host) == "127.0.0.1"
    assert value(n, OIDS.service_check_kind) == "smtp"
    assert int(value(n, OIDS.service_state)) == STATE_VALUES[state]
    assert int(value(n, OIDS.service_previous_state)) == STATE_VALUES[previous]
    assert int(value(n, OIDS.service_reason_code)) == reason.value
    assert int(value(n, OIDS.service_consecutive)) == count
    assert int(value(n, OIDS.notification_sequence, None)) == seq
    assert int(value(n, OIDS.notification_flags, None)) == FLAG_VALUES["normal"]
    assert n.uptime > 0  # the daemon's real uptime, not a first-trap zero


def test_down_then_up_reaches_snmptrapd_once_each_per_receiver(
    tmp_path: Path, trapd: Snmptrapd, smtp: SmtpServer, daemons: list[Daemon]
) -> None:
    smtp.start()
    cfg = tmp_path / "w.yaml"
    cfg.write_text(config_text(tmp_path, smtp.port, receivers_yaml(trapd)))
    d = Daemon(cfg, "--log-level", "debug")
    daemons.append(d)
    first = d.wait_for(r"check mail: ok")
    d.wait_for(r"check mail: ok", start=first + 1)  # confirmed up: silently
    smtp.stop()
    d.wait_for(r"mail .* is DOWN \(was up\) after 2 checks: refused")
    received = trapd.wait_for(2)
    smtp.start()
    d.wait_for(r"mail .* is UP \(was down\) after 2 checks: ok")
    received = trapd.wait_for(4)
    d.wait_for(r"up #2 \(mail\) to v3-inform acknowledged")
    time.sleep(0.5)  # anything extra would arrive now
    assert d.stop() == 0
    received = trapd.notifications
    assert len(received) == 4, [n.trap_oid for n in received]
    by_receiver: dict[str, list[Received]] = {"2c": [], "3": []}
    for n in received:
        by_receiver[n.version].append(n)
    assert [n.pdu for n in by_receiver["2c"]] == ["TRAP2", "TRAP2"]
    assert [n.pdu for n in by_receiver["3"]] == ["INFORM", "INFORM"]
    assert by_receiver["3"][0].security_name == "informer"
    for notes in by_receiver.values():
        down, up = notes
        assert_service_event(
            down, kind="down", state="down", previous="up", reason=Reason.REFUSED, count=2, seq=1
        )
        assert_service_event(
            up, kind="up", state="up", previous="down", reason=Reason.OK, count=2, seq=2
        )


def run_cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "snmp_watchdog", "-c", str(cfg), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_test_trap_reports_each_receiver_and_exits_1_when_one_fails(
    tmp_path: Path, trapd: Snmptrapd
) -> None:
    cfg = tmp_path / "w.yaml"
    wrong = f"""
  - name: wrong-community
    host: 127.0.0.1
    port: {trapd.port}
    version: 2c
    community: not-public
    mode: inform
    timeout: 0.5s
"""
    cfg.write_text(config_text(tmp_path, 1, receivers_yaml(trapd) + wrong))
    proc = run_cli(cfg, "test-trap")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(
        ln.startswith("v2c-trap (") and ln.endswith(": sent; traps are not acknowledged")
        for ln in lines
    ), lines
    assert any(ln.startswith("v3-inform (") and ": acknowledged in " in ln for ln in lines), lines
    assert any(
        ln.startswith("wrong-community (") and ln.endswith("failed: timeout") for ln in lines
    )
    got = trapd.wait_for(2)
    assert {n.trap_oid for n in got} == {dotted(OIDS.test_notification)}
    assert all(int(value(n, OIDS.notification_sequence, None)) == 0 for n in got)

    proc = run_cli(cfg, "test-trap", "--receiver", "v2c-trap", "--receiver", "v3-inform")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run_cli(cfg, "test-trap", "--receiver", "nope")
    assert proc.returncode == 2
    assert "no receiver named 'nope'" in proc.stderr


def test_test_trap_for_a_service_sends_down_then_up_marked_as_test(
    tmp_path: Path, trapd: Snmptrapd
) -> None:
    cfg = tmp_path / "w.yaml"
    cfg.write_text(config_text(tmp_path, 25, receivers_yaml(trapd)))
    proc = run_cli(cfg, "test-trap", "--service", "mail", "--receiver", "v2c-trap", "--inform")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("acknowledged in") == 2
    down, up = trapd.wait_for(2)
    assert down.pdu == up.pdu == "INFORM"
    assert down.trap_oid == dotted(OIDS.service_down)
    assert up.trap_oid == dotted(OIDS.service_up)
    for n in (down, up):
        assert value(n, OIDS.service_name) == "mail"
        assert int(value(n, OIDS.notification_flags, None)) == FLAG_VALUES["test"]


def test_heartbeat_carries_the_counts_and_continues_the_sequence(
    tmp_path: Path, trapd: Snmptrapd, smtp: SmtpServer, daemons: list[Daemon]
) -> None:
    smtp.start()
    cfg = tmp_path / "w.yaml"
    text = config_text(tmp_path, smtp.port, receivers_yaml(trapd))
    text = text.replace("watchdog:\n", "watchdog:\n  heartbeat: 1s\n", 1)
    cfg.write_text(text)
    d = Daemon(cfg)
    daemons.append(d)
    d.wait_for(r"heartbeat #1\b", timeout=10)
    d.wait_for(r"heartbeat #2\b", timeout=10)
    assert d.stop() == 0
    beats = [n for n in trapd.wait_for(4) if n.trap_oid == dotted(OIDS.heartbeat)]
    assert len(beats) >= 4  # two heartbeats, each to both receivers
    last = beats[-1]
    # By the second heartbeat the service was confirmed up (rise 2 at 0.1 s).
    assert int(value(last, OIDS.services_up, None)) == 1
    assert int(value(last, OIDS.services_down, None)) == 0
    assert int(value(last, OIDS.services_unknown, None)) == 0
    assert sorted({int(value(n, OIDS.notification_sequence, None)) for n in beats}) == [1, 2]
    assert last.varbinds[dotted((*OIDS.watchdog_uptime, 0))].ticks >= 100  # over a second


def test_snmptrapd_with_the_bundled_mib_prints_notification_and_varbind_names(
    tmp_path: Path,
) -> None:
    """What an operator sees at a Net-SNMP receiver that loads mibs/."""
    import os  # noqa: PLC0415

    from tests.helpers import free_udp_port  # noqa: PLC0415

    ietf = Path(
        os.environ.get("WATCHDOG_IETF_MIBS", Path(__file__).parent.parent / ".cache/ietf-mibs")
    )
    assert (ietf / "SNMPv2-SMI.mib").exists(), f"run scripts/ietf-mibs.sh {ietf} first"
    mibs = Path(__file__).parent.parent / "mibs"
    port = free_udp_port()
    conf = tmp_path / "snmptrapd.conf"
    conf.write_text("authCommunity log public\n")
    (tmp_path / "persist").mkdir()
    (tmp_path / "persist" / "cert_indexes").mkdir()
    out = tmp_path / "trapd.out"
    with out.open("w") as sink:
        trapd = subprocess.Popen(
            [
                "snmptrapd",
                "-f",
                "-Lo",
                "-C",
                "-c",
                str(conf),
                "-M",
                f"{ietf}:{mibs}",
                "-m",
                "SNMPv2-MIB:SNMP-WATCHDOG-MIB",
                f"udp:127.0.0.1:{port}",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, SNMP_PERSISTENT_DIR=str(tmp_path / "persist")),
        )
    try:
        deadline = time.monotonic() + 5
        while "NET-SNMP version" not in out.read_text():
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.05)
        cfg = tmp_path / "w.yaml"
        receivers = (
            f"  - {{name: named, host: 127.0.0.1, port: {port}, community: public, mode: inform}}\n"
        )
        cfg.write_text(config_text(tmp_path, 25, receivers))
        proc = run_cli(cfg, "test-trap", "--service", "mail")
        assert proc.returncode == 0, proc.stdout + proc.stderr  # acknowledged: printed
    finally:
        trapd.terminate()
        trapd.wait(timeout=10)
    text = out.read_text()
    assert "SNMPv2-MIB::snmpTrapOID.0 = OID: SNMP-WATCHDOG-MIB::wdServiceDown" in text
    assert "SNMPv2-MIB::snmpTrapOID.0 = OID: SNMP-WATCHDOG-MIB::wdServiceUp" in text
    assert "SNMP-WATCHDOG-MIB::wdServiceName.1 = STRING: mail" in text
    assert "SNMP-WATCHDOG-MIB::wdServiceState.1 = INTEGER: down(2)" in text
    assert "SNMP-WATCHDOG-MIB::wdServiceReasonCode.1 = INTEGER: refused(1)" in text
    assert "SNMP-WATCHDOG-MIB::wdNotificationFlags.0 = INTEGER: test(3)" in text
