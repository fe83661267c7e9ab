"""The systemd notify protocol, read from a real AF_UNIX datagram socket.

The test plays systemd's part: it binds the socket, hands its path to the
daemon in ``NOTIFY_SOCKET`` with ``WATCHDOG_USEC``, and reads what arrives:
``READY=1`` after start, ``RELOADING=1`` then ``READY=1`` around each SIGHUP
(also when the new file is rejected), ``STOPPING=1`` on SIGTERM, and
``WATCHDOG=1`` again and again. The keep-alive is then shown to stop when the
scheduler is stuck (every check slot taken by a check that does not end) and
to resume when it moves again, in-process with the real ``Scheduler`` and
``keep_alive``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from snmp_watchdog.model import CheckKind, Service
from snmp_watchdog.reasons import Reason
from snmp_watchdog.result import CheckResult
from snmp_watchdog.scheduler import Scheduler
from snmp_watchdog.sdnotify import SystemdNotifier, keep_alive, watchdog_interval
from tests.helpers import Daemon, SmtpServer, free_tcp_port


@dataclass
class NotifySocket:
    """systemd's end: a bound datagram socket and every message received on it."""

    path: Path
    sock: socket.socket
    messages: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _stop: bool = False

    def read(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            with self._cond:
                self.messages.append((time.monotonic(), fields))
                self._cond.notify_all()

    def wait_for(self, key: str, start: int = 0, timeout: float = 10.0) -> int:
        """Index of the first message from ``start`` on that sets ``key``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(start, len(self.messages)):
                    if key in self.messages[i][1]:
                        return i
                left = deadline - time.monotonic()
                assert left > 0, f"no {key}; got {[m for _, m in self.messages]}"
                self._cond.wait(left)

    def keys(self, start: int = 0, end: int | None = None) -> list[str]:
        """The first key of each message (READY, WATCHDOG, ...), in order."""
        with self._cond:
            return [next(iter(m)) for _, m in self.messages[start:end]]


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    # pytest's temporary paths can be longer than a socket address allows (108 bytes).
    directory = Path(tempfile.mkdtemp(prefix="notify-"))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(directory / "notify"))
    sock.settimeout(0.05)
    ns = NotifySocket(directory / "notify", sock)
    reader = threading.Thread(target=ns.read, daemon=True)
    reader.start()
    yield ns
    ns._stop = True
    reader.join(5)
    sock.close()
    shutil.rmtree(directory)


@pytest.mark.slow
def test_ready_reloading_stopping_and_keep_alives_reach_the_notify_socket(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    smtp = SmtpServer(free_tcp_port()).start()
    cfg = tmp_path / "watchdog.yaml"
    good = f"""
watchdog:
  state_dir: {tmp_path}/state
defaults: {{interval: 60s, retry_interval: 0.1s, timeout: 0.5s, fall: 2, rise: 2, jitter: 0}}
services:
  - {{name: mail, host: 127.0.0.1, port: {smtp.port}, check: smtp}}
"""
    cfg.write_text(good)
    env = {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "400000"}
    d = Daemon(cfg, env=env)
    try:
        ready = notify_socket.wait_for("READY")
        assert notify_socket.keys(0, ready) == []  # nothing before READY
        assert notify_socket.messages[ready][1]["STATUS"].endswith("; 0 checks")
        first = notify_socket.wait_for("WATCHDOG", ready)
        for _ in range(3):
            notify_socket.wait_for("WATCHDOG", first + 1)
            first += 1
        # The only service is checked once a minute: an idle scheduler is not a stuck one.
        watchdogs = [t for t, m in notify_socket.messages if "WATCHDOG" in m]
        assert watchdogs[-1] - watchdogs[0] < 3 * 0.4  # about every 0.2 s, as asked
        assert "1 up, 0 down, 0 unknown" in notify_socket.messages[-1][1]["STATUS"]

        mark = len(notify_socket.messages)
        d.signal(signal.SIGHUP)
        reloading = notify_socket.wait_for("RELOADING", mark)
        assert int(notify_socket.messages[reloading][1]["MONOTONIC_USEC"]) > 0
        notify_socket.wait_for("READY", reloading)
        d.wait_for("configuration reloaded")

        cfg.write_text("services: [")  # rejected: systemd must still hear READY
        mark = len(notify_socket.messages)
        d.signal(signal.SIGHUP)
        reloading = notify_socket.wait_for("RELOADING", mark)
        notify_socket.wait_for("READY", reloading)
        d.wait_for("reload rejected: keeping the running configuration")
        notify_socket.wait_for("WATCHDOG", len(notify_socket.messages))  # still alive

        d.signal(signal.SIGTERM)
        stopping = notify_socket.wait_for("STOPPING")
        assert d.proc.wait(10) == 0
    finally:
        d.kill()
        smtp.stop()
    time.sleep(0.1)
    assert notify_socket.keys(stopping) == ["STOPPING"]  # the last word
    assert not any("withholding" in line for line in d.lines), d.lines


def _service(name: str) -> Service:
    return Service(
        name=name, host="127.0.0.1", port=1, check=CheckKind.TCP,
        interval=0.01, retry_interval=0.01, jitter=0.0,
    )  # fmt: skip


def test_keep_alive_stops_while_the_scheduler_is_stuck_and_resumes_when_it_moves(
    notify_socket: NotifySocket,
) -> None:
    """One check slot, taken by a check that does not end: no progress, no WATCHDOG=1."""
    release = asyncio.Event()
    stuck = False
    warnings: list[str] = []  # and the line that says the pings resumed

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings.append(record.getMessage())

    async def check(svc: Service) -> CheckResult:
        if stuck and not release.is_set():
            await release.wait()
        await asyncio.sleep(0.001)
        return CheckResult(Reason.OK, "ok", 0.001)

    def count() -> int:
        return notify_socket.keys().count("WATCHDOG")

    async def scenario() -> tuple[int, int, int]:
        nonlocal stuck
        scheduler = Scheduler(
            [_service("a"), _service("b")],
            check=check,
            max_in_flight=1,
        )
        notifier = SystemdNotifier(str(notify_socket.path))
        runner = asyncio.create_task(scheduler.run())
        pinger = asyncio.create_task(
            keep_alive(
                notifier,
                lambda: scheduler.progress,
                0.05,
                lambda: "status",
                stale_after=lambda: 0.1,
            )
        )
        try:
            await asyncio.sleep(0.5)
            moving = count()
            stuck = True
            await asyncio.sleep(0.15)  # the check in flight ends; the next one hangs
            frozen_at = count()
            await asyncio.sleep(0.6)
            frozen = count() - frozen_at
            release.set()
            await asyncio.sleep(0.5)
            resumed = count() - frozen_at - frozen
        finally:
            scheduler.stop()
            pinger.cancel()
            await asyncio.wait_for(asyncio.gather(runner, pinger, return_exceptions=True), 5)
            notifier.close()
        return moving, frozen, resumed

    logger = logging.getLogger("snmp_watchdog")
    handler, level = Collect(logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        moving, frozen, resumed = asyncio.run(asyncio.wait_for(scenario(), 10))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert moving >= 5, moving  # 0.5 s at one per 0.05 s, allowing for a slow machine
    assert frozen == 0
    assert resumed >= 5, resumed
    assert any("made no progress" in w and "withholding the keep-alive" in w for w in warnings)
    assert "the scheduler makes progress again: keep-alive resumed" in warnings


def test_the_watchdog_interval_is_half_of_what_systemd_asked_for_this_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    monkeypatch.delenv("WATCHDOG_USEC")
    assert watchdog_interval() is None


def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = SystemdNotifier()
    assert not notifier.enabled
    notifier.ready("x")  # a no-op, not an error
    notifier.close()


def test_an_abstract_socket_address_is_understood() -> None:
    name = f"snmp-watchdog-test-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        notifier = SystemdNotifier("@" + name)
        notifier.ready("up")
        notifier.close()
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"
