"""End to end: ``watchdog run`` as a subprocess against a real SMTP server on loopback.

The test stops and restarts the server and reads the daemon's log lines: the
transitions, their reasons, and how many checks each took.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import Daemon, SmtpServer, free_tcp_port, wait_for_file

pytestmark = pytest.mark.slow


@pytest.fixture
def smtp_port() -> int:
    return free_tcp_port()


def start_smtp(port: int) -> SmtpServer:
    return SmtpServer(port).start()


def write_config(tmp_path: Path, port: int, **extra: str) -> Path:
    cfg = tmp_path / "watchdog.yaml"
    cfg.write_text(
        f"""
watchdog:
  state_dir: {tmp_path}/state
  status_dir: {tmp_path}/status
defaults:
  interval: 0.4s
  retry_interval: 0.2s
  timeout: 1s
  fall: 3
  rise: 2
  jitter: 0
services:
  - name: mail
    host: 127.0.0.1
    port: {port}
    check: smtp
    helo: test.example
"""
    )
    return cfg


def test_down_and_up_are_logged_once_each_with_the_checks_they_took(
    tmp_path: Path, smtp_port: int, daemons: list[Daemon]
) -> None:
    server = start_smtp(smtp_port)
    cfg = write_config(tmp_path, smtp_port)
    d = Daemon(cfg, "--log-level", "debug")
    daemons.append(d)
    try:
        d.wait_for(r"starting: 1 services")
        # First confirmation: rise=2 good checks, no notification for up from unknown.
        first_ok = d.wait_for(r"check mail: ok")
        d.wait_for(r"check mail: ok", start=first_ok + 1)
        wait_for_file(tmp_path / "status" / "mail", "0\n")
    finally:
        server.stop()
    down = d.wait_for(r"mail \(127\.0\.0\.1:\d+ smtp\) is DOWN \(was up\) after 3 checks: refused")
    failed = [ln for ln in d.lines[:down] if "check mail: refused" in ln]
    assert len(failed) == 3, d.lines
    wait_for_file(tmp_path / "status" / "mail", "1\n")  # Reason.REFUSED

    server = start_smtp(smtp_port)
    try:
        up = d.wait_for(r"mail \(127\.0\.0\.1:\d+ smtp\) is UP \(was down\) after 2 checks: ok")
        good = [ln for ln in d.lines[down:up] if "check mail: ok" in ln]
        assert len(good) == 2, d.lines[down:up]
        wait_for_file(tmp_path / "status" / "mail", "0\n")
    finally:
        server.stop()
    assert d.stop() == 0
    d.wait_for(r"stopped after \d+ checks")
    changes = [ln for ln in d.lines if " is DOWN " in ln or " is UP " in ln]
    assert len(changes) == 2, changes


def test_a_service_down_at_start_is_news(
    tmp_path: Path, smtp_port: int, daemons: list[Daemon]
) -> None:
    cfg = write_config(tmp_path, smtp_port)
    d = Daemon(cfg)
    daemons.append(d)
    d.wait_for(r"mail \(.*\) is DOWN \(was unknown\) after 3 checks: refused")
    assert d.stop() == 0


def test_sigterm_stops_quickly_while_checks_hang(tmp_path: Path, daemons: list[Daemon]) -> None:
    """Checks in flight against a server that never answers are cancelled at once."""
    import socket  # noqa: PLC0415

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(100)
    port = listener.getsockname()[1]
    try:
        cfg = tmp_path / "watchdog.yaml"
        services = "\n".join(
            f"  - {{name: hang{i}, host: 127.0.0.1, port: {port}, check: smtp, timeout: 30s}}"
            for i in range(20)
        )
        cfg.write_text(f"watchdog: {{state_dir: {tmp_path}/state}}\nservices:\n{services}\n")
        d = Daemon(cfg)
        daemons.append(d)
        d.wait_for("ready")
        time.sleep(0.5)  # the checks are now waiting for a greeting that never comes
        t0 = time.monotonic()
        assert d.stop() == 0
        assert time.monotonic() - t0 < 3.0
    finally:
        listener.close()


def test_invalid_config_exits_2_naming_file_and_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("services:\n  - name: a\n    host: h\n    port: 70000\n")
    proc = subprocess.run(
        [sys.executable, "-m", "snmp_watchdog", "-c", str(cfg), "run"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert f"{cfg}:4: services[0].port:" in proc.stderr
