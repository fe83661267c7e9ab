"""``watchdog run``: configuration, scheduler, notifications and signals, glued.

The daemon logs one line per event on stderr: start, configuration loaded,
each confirmed state change with its reason, each notification, reload, stop.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path

from snmp_watchdog import __version__, state
from snmp_watchdog.checks import run_check
from snmp_watchdog.config import load_config
from snmp_watchdog.exceptions import ConfigError
from snmp_watchdog.model import Config, Service
from snmp_watchdog.result import CheckResult
from snmp_watchdog.scheduler import Scheduler
from snmp_watchdog.sdnotify import Notifier, keep_alive, watchdog_interval
from snmp_watchdog.statusfiles import StatusFiles

log = logging.getLogger("snmp_watchdog")


def describe(svc: Service, note: state.Notification) -> str:
    """The log line of one notification-worthy event."""
    where = f"{svc.name} ({svc.host}:{svc.port} {svc.check.value})"
    why = f"{note.reason.code}: {note.detail}" if note.detail else note.reason.code
    if note.kind is state.Kind.FLAPPING:
        return f"{where} is FLAPPING, now {note.state.value}; up/down notifications held back"
    if note.kind is state.Kind.FLAPPING_ENDED:
        return f"{where} stopped flapping, now {note.state.value}"
    if note.reminder:
        return f"{where} is still DOWN (reminder): {why}"
    plural = "s" if note.count != 1 else ""
    return (
        f"{where} is {note.state.value.upper()} (was {note.previous.value}) "
        f"after {note.count} check{plural}: {why}"
    )


class Daemon:
    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.started = time.monotonic()
        self.config: Config | None = None
        self.scheduler: Scheduler | None = None
        self.status_files: StatusFiles | None = None
        self._stop = asyncio.Event()
        self.systemd = Notifier()

    async def run(self) -> int:
        config = load_config(self.config_path)  # ConfigError propagates: exit 2
        self.config = config
        log.info(
            "snmp-watchdog %s starting: %d services, %d receivers, config %s",
            __version__,
            len(config.services),
            len(config.receivers),
            self.config_path,
        )
        if config.settings.status_dir is not None:
            self.status_files = StatusFiles(config.settings.status_dir)
        self.scheduler = Scheduler(
            config.services,
            check=run_check,
            on_notification=self._on_notification,
            on_result=self._on_result,
            max_in_flight=config.settings.max_in_flight,
        )
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._request_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self._request_stop, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        runner = asyncio.create_task(self.scheduler.run(), name="scheduler")
        background: list[asyncio.Task[None]] = []
        interval = watchdog_interval()
        if interval is not None:
            sched = self.scheduler
            background.append(
                asyncio.create_task(
                    keep_alive(self.systemd, lambda: sched.progress, interval, self.status_line)
                )
            )
        log.info("ready")
        self.systemd.ready(self.status_line())
        try:
            stop = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait({runner, stop}, return_when=asyncio.FIRST_COMPLETED)
            if runner in done:
                runner.result()  # the scheduler never ends by itself: surface its bug
            self.scheduler.stop()
            await runner
            stop.cancel()
        finally:
            self.systemd.stopping()
            for task in background:
                task.cancel()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            self.systemd.close()
        log.info("stopped after %d checks", self.scheduler.checks_done)
        return 0

    def status_line(self) -> str:
        """A one-line summary for systemd's STATUS= (shown by ``systemctl status``)."""
        if self.scheduler is None:
            return "starting"
        counts = {"up": 0, "down": 0, "unknown": 0}
        for st in self.scheduler.states().values():
            counts[st.state.value] += 1
        return (
            f"{counts['up']} up, {counts['down']} down, {counts['unknown']} unknown; "
            f"{self.scheduler.checks_done} checks"
        )

    def _request_stop(self, name: str) -> None:
        log.info("%s received: stopping", name)
        self._stop.set()

    def reload(self) -> None:
        assert self.scheduler is not None
        log.info("SIGHUP received: reloading %s", self.config_path)
        self.systemd.reloading()
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload rejected: %s", problem)
            log.error("reload rejected: keeping the running configuration")
            self.systemd.ready(self.status_line())
            return
        added, changed, removed = self.scheduler.update(config.services)
        if self.status_files is not None:
            for name in removed:
                self.status_files.forget(name)
        if config.settings.status_dir != (self.status_files and self.status_files.directory):
            sd = config.settings.status_dir
            self.status_files = StatusFiles(sd) if sd is not None else None
        self.config = config
        log.info(
            "configuration reloaded: %d services (%d added, %d changed, %d removed)",
            len(config.services),
            len(added),
            len(changed),
            len(removed),
        )
        self.systemd.ready(self.status_line())

    def _on_result(self, svc: Service, st: state.ServiceState, result: CheckResult) -> None:
        log.debug(
            "check %s: %s %s (%.1f ms)",
            svc.name,
            result.reason.code,
            result.detail,
            result.elapsed * 1000.0,
        )
        if self.status_files is not None:
            self.status_files.update(svc.name, st)

    def _on_notification(
        self, svc: Service, st: state.ServiceState, note: state.Notification
    ) -> None:
        level = logging.WARNING if note.state is state.State.DOWN else logging.INFO
        log.log(level, describe(svc, note))


def run(config_path: Path) -> int:
    """Run the daemon until SIGTERM/SIGINT. Uses uvloop when it is installed."""
    try:
        import uvloop  # noqa: PLC0415 (optional speed-up)
    except ImportError:
        return asyncio.run(Daemon(config_path).run())
    return uvloop.run(Daemon(config_path).run())
