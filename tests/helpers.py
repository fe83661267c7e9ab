"""Small helpers shared by the tests."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: Slack allowed past a deadline on a loaded machine.
SLACK = 0.25
#: How much shorter than its deadline a check's own clock may find it: the
#: deadline starts before the check notes its start time.
EARLY = 0.005


def run_bounded(coroutine: Awaitable[T], bound: float = 5.0) -> T:
    """Run a test's coroutine in a fresh event loop, bounded as a whole."""

    async def bounded() -> T:
        return await asyncio.wait_for(coroutine, bound)

    return asyncio.run(bounded())


def free_tcp_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_udp_port() -> int:
    """A loopback UDP port nothing is bound to right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def checks_after(d: Daemon, pattern: str, count: int, start: int = 0) -> int:
    """Wait for ``count`` lines matching ``pattern`` from ``start`` on; the index of the last."""
    index = start - 1
    for _ in range(count):
        index = d.wait_for(pattern, timeout=5, start=index + 1)
    return index


def count_lines(lines: list[str], pattern: str) -> int:
    """How many of ``lines`` match ``pattern`` (``re.search``)."""
    return sum(1 for line in lines if re.search(pattern, line))


class Daemon:
    """``watchdog run`` in a subprocess, its stderr collected line by line."""

    def __init__(
        self,
        config: Path | None,
        *extra: str,
        env: dict[str, str] | None = None,
        argv: list[str] | None = None,
    ) -> None:
        """``watchdog -c CONFIG EXTRA... run``, or ``argv``: any command line that
        ends by running the daemon (a sandbox, a full disk's namespace)."""
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        env.pop("JOURNAL_STREAM", None)
        if argv is None:
            assert config is not None
            argv = [sys.executable, "-m", "snmp_watchdog", "-c", str(config), *extra, "run"]
        self.proc = subprocess.Popen(
            argv,
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

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, as in a crash or an OOM kill."""
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._close()

    def _close(self) -> None:
        self._reader.join(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=10)
        self._close()
        return rc


class _Handler:
    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        return "250 OK"


def closing_controller(handler: Any, **kwargs: Any) -> Any:
    """An aiosmtpd ``Controller`` whose ``stop()`` also closes the connections still open.

    aiosmtpd's own ``stop()`` leaves them to the garbage collector, whose
    ResourceWarning then fails whichever later test happens to collect them;
    a connection accepted in the loop's last turn has no session to close, so
    what is left is collected here, quietly.
    """
    from aiosmtpd.controller import Controller  # noqa: PLC0415

    class Closing(Controller):
        def factory(self) -> Any:
            session = super().factory()  # type: ignore[no-untyped-call]
            self.sessions.append(session)  # type: ignore[attr-defined]
            return session

        def stop(self, no_assert: bool = False) -> None:
            def close_all() -> None:
                for session in self.sessions:  # type: ignore[attr-defined]
                    transport = getattr(session, "transport", None)
                    if transport is not None:
                        transport.abort()

            if self.loop.is_running():
                self.loop.call_soon_threadsafe(close_all)
            super().stop(no_assert)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                gc.collect()

    controller = Closing(handler, **kwargs)
    controller.sessions = []  # type: ignore[attr-defined]
    return controller


class SmtpServer:
    """A real SMTP server (aiosmtpd) on a fixed loopback port, stopped and started at will."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_tcp_port()
        self._controller: Any = None

    def start(self) -> SmtpServer:
        self._controller = closing_controller(_Handler(), hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        """Stop listening and end open connections, as a server process that exits does."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


def wait_for_file(path: Path, content: str, timeout: float = 5.0) -> None:
    """Wait until ``path`` holds exactly ``content`` (written by another process)."""
    deadline = time.monotonic() + timeout
    seen: str | None = None
    while time.monotonic() < deadline:
        try:
            seen = path.read_text()
        except FileNotFoundError:
            seen = None
        if seen == content:
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} holds {seen!r}, not {content!r}")


def pending_rows(state_dir: Path) -> dict[str, int] | None:
    """Notifications waiting in a state directory's outbox, per receiver.

    None while the daemon has not created its database yet.
    """
    from snmp_watchdog.exceptions import StoreNotReady  # noqa: PLC0415
    from snmp_watchdog.store import Store  # noqa: PLC0415

    if not (state_dir / "state.db").exists():
        return None
    try:
        with Store.open(state_dir, readonly=True) as store:
            return store.pending_counts()
    except StoreNotReady:
        return None


def stored_states(state_dir: Path) -> dict[str, Any]:
    """The service states a daemon saved (as ``watchdog status`` reads them).

    Empty while the daemon has not created its database yet.
    """
    from snmp_watchdog.exceptions import StoreNotReady  # noqa: PLC0415
    from snmp_watchdog.store import Store  # noqa: PLC0415

    if not (state_dir / "state.db").exists():
        return {}
    now = time.time()
    try:
        with Store.open(state_dir, readonly=True) as store:
            return store.load_states(mono_now=now, wall_now=now)
    except StoreNotReady:
        return {}


def wait_pending(state_dir: Path, expected: dict[str, int], timeout: float = 2.0) -> None:
    """Wait for the outbox to hold ``expected`` (a row goes just after its log line)."""
    deadline = time.monotonic() + timeout
    while (rows := pending_rows(state_dir)) != expected:
        assert time.monotonic() < deadline, rows
        time.sleep(0.02)
