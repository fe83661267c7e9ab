"""The systemd notify protocol (sd_notify(3)), without a dependency.

Messages are datagrams of ``KEY=VALUE`` lines sent to the socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). Without
that variable every call does nothing, so the daemon runs the same outside
systemd.

The keep-alive (``WATCHDOG=1``) is not sent by a timer that ticks whatever
happens: ``keep_alive`` sends it every ``interval`` only while the
scheduler's progress mark (the monotonic time of its last pass or finished
check) is younger than ``stale_after()``, so a stuck scheduler stops the pings
and systemd restarts the service. ``stale_after()`` must be longer than the
longest pause of a healthy scheduler: an idle one passes once a second, a busy
one whose check slots are all taken waits at most the longest check timeout.
Comparing each mark with the previous one instead would withhold pings from a
healthy, idle scheduler whenever the pings come faster than its passes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable

log = logging.getLogger("snmp_watchdog")


class SystemdNotifier:
    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._sock: socket.socket | None = None
        self._addr = ""
        if address:
            self._addr = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: str | int) -> None:
        """Send one message, e.g. ``send(READY=1, STATUS="checking 12 services")``."""
        if self._sock is None:
            return
        data = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            self._sock.sendto(data, self._addr)
        except OSError as exc:  # systemd gone or socket full: never fatal
            log.debug("sd_notify failed: %s", exc)

    def ready(self, status: str) -> None:
        self.send(READY=1, STATUS=status)

    def reloading(self) -> None:
        self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self) -> None:
        self.send(STOPPING=1)

    def status(self, text: str) -> None:
        self.send(STATUS=text)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Half the ``WatchdogSec=`` systemd asked for, or None when it asked for none."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1e6 / 2
    except ValueError:
        return None


async def keep_alive(
    notifier: SystemdNotifier,
    progress: Callable[[], float],
    interval: float,
    status: Callable[[], str],
    *,
    stale_after: Callable[[], float],
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Send ``WATCHDOG=1`` every ``interval`` while ``progress()`` is younger than
    ``stale_after()``.

    ``progress()`` is a time on ``clock``. One warning is logged when the pings
    stop, one line when they resume.
    """
    withheld = False
    while True:
        await asyncio.sleep(interval)
        age = clock() - progress()
        if age < stale_after():
            if withheld:
                log.info("the scheduler makes progress again: keep-alive resumed")
            notifier.send(WATCHDOG=1, STATUS=status())
            withheld = False
        elif not withheld:
            log.warning(
                "the scheduler made no progress for %.1f s: withholding the keep-alive", age
            )
            withheld = True
