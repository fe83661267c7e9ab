"""End to end: ``watchdog run`` as a subprocess against a real SMTP server on loopback.

The test stops and restarts the server and reads the daemon's log lines: the
transitions, their reasons, and how many checks each took.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from tests.helpers import free_tcp_port

pytestmark = pytest.mark.slow


class _Handler:
    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:  # noqa: N802 (aiosmtpd's name)
        return "250 OK"


class Daemon:
    """``watchdog run`` in a subprocess, its stderr collected line by line."""

    def __init__(self, config: Path, *extra: str) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("JOURNAL_STREAM", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "snmp_watchdog", "-c", str(config), *extra, "run"],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 15.0, start: int = 0) -> int:
        """Index of the first line from ``start`` on matching ``pattern``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(start, len(self.lines)):
                    if rx.search(self.lines[i]):
                        return i
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(
                        f"no line matching {pattern!r}; got:\n" + "\n".join(self.lines)
                    )
                self._cond.wait(min(left, 0.2))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        return rc


@pytest.fixture
def smtp_port() -> int:
    return free_tcp_port()


def start_smtp(port: int) -> Controller:
    controller = Controller(_Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    return controller


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(timeout=5)


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
    tmp_path: Path, smtp_port: int, daemon_factory: list[Daemon]
) -> None:
    server = start_smtp(smtp_port)
    cfg = write_config(tmp_path, smtp_port)
    d = Daemon(cfg, "--log-level", "debug")
    daemon_factory.append(d)
    try:
        d.wait_for(r"starting: 1 services")
        # First confirmation: rise=2 good checks, no notification for up from unknown.
        first_ok = d.wait_for(r"check mail: ok")
        d.wait_for(r"check mail: ok", start=first_ok + 1)
        assert (tmp_path / "status" / "mail").read_text() == "0\n"
    finally:
        server.stop()
    down = d.wait_for(r"mail \(127\.0\.0\.1:\d+ smtp\) is DOWN \(was up\) after 3 checks: refused")
    failed = [ln for ln in d.lines[:down] if "check mail: refused" in ln]
    assert len(failed) == 3, d.lines
    assert (tmp_path / "status" / "mail").read_text() == "1\n"  # Reason.REFUSED

    server = start_smtp(smtp_port)
    try:
        up = d.wait_for(r"mail \(127\.0\.0\.1:\d+ smtp\) is UP \(was down\) after 2 checks: ok")
        good = [ln for ln in d.lines[down:up] if "check mail: ok" in ln]
        assert len(good) == 2, d.lines[down:up]
        assert (tmp_path / "status" / "mail").read_text() == "0\n"
    finally:
        server.stop()
    assert d.stop() == 0
    d.wait_for(r"stopped after \d+ checks")
    changes = [ln for ln in d.lines if " is DOWN " in ln or " is UP " in ln]
    assert len(changes) == 2, changes


def test_a_service_down_at_start_is_news(
    tmp_path: Path, smtp_port: int, daemon_factory: list[Daemon]
) -> None:
    cfg = write_config(tmp_path, smtp_port)
    d = Daemon(cfg)
    daemon_factory.append(d)
    d.wait_for(r"mail \(.*\) is DOWN \(was unknown\) after 3 checks: refused")
    assert d.stop() == 0


def test_sigterm_stops_quickly_while_checks_hang(
    tmp_path: Path, daemon_factory: list[Daemon]
) -> None:
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
        daemon_factory.append(d)
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
