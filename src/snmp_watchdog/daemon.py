"""``watchdog run``: configuration, state store, scheduler, notifications and signals.

The daemon logs one line per event on stderr: start, configuration loaded,
each confirmed state change with its reason, each notification, reload, stop.

Durability: a check result that produces notifications is saved together with
them (the service's new state and one outbox row per receiver) in one
transaction before anything is sent; other results are saved in batches once
a second. A crash therefore never loses a notification and never repeats one
for a state that did not change; the worst case is a lost second of counters.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from snmp_watchdog import __version__, state
from snmp_watchdog.checks import run_check
from snmp_watchdog.config import load_config
from snmp_watchdog.exceptions import ConfigError
from snmp_watchdog.model import Config, Service
from snmp_watchdog.notify.notifier import Notifier
from snmp_watchdog.result import CheckResult
from snmp_watchdog.scheduler import Scheduler
from snmp_watchdog.sdnotify import SystemdNotifier, keep_alive, watchdog_interval
from snmp_watchdog.statusfiles import StatusFiles
from snmp_watchdog.store import Store, StoreError

log = logging.getLogger("snmp_watchdog")

#: Threads resolving host names at once (see ``run``).
RESOLVER_THREADS = 32

#: How often states that produced no notification are written to the database.
FLUSH_EVERY = 1.0

#: The longest pause between two passes of a healthy scheduler with nothing due
#: (``Scheduler.run`` sleeps at most a second at a time).
IDLE_PASS = 1.0


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
        self.store: Store | None = None
        self.notifier: Notifier | None = None
        self.status_files: StatusFiles | None = None
        self.indexes: dict[str, int] = {}
        self._dirty: dict[str, state.ServiceState] = {}
        self._store_failing = False
        self._stop = asyncio.Event()
        self._reloads: set[asyncio.Task[None]] = set()
        self.systemd = SystemdNotifier()

    # -- life cycle ------------------------------------------------------------

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
        if config.settings.store is not None:
            from snmp_watchdog.cluster_daemon import ClusterDaemon  # noqa: PLC0415 (psycopg)

            return await ClusterDaemon(config).run()
        self.store = store = Store.open(config.settings.state_dir)
        try:
            return await self._run(config, store)
        finally:
            store.close()

    async def _run(self, config: Config, store: Store) -> int:
        initial = self._restore(config, store)
        self.notifier = Notifier(config, store, started=self.started)
        await self.notifier.start()
        if config.settings.status_dir is not None:
            self.status_files = StatusFiles(config.settings.status_dir)
            for name, st in initial.items():
                self.status_files.update(name, st)
        self.scheduler = Scheduler(
            config.services,
            check=run_check,
            on_result=self._on_result,
            max_in_flight=config.settings.max_in_flight,
            initial=initial,
        )
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._request_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self._request_stop, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, self._start_reload)
        runner = asyncio.create_task(self.scheduler.run(), name="scheduler")
        background = [asyncio.create_task(self._flush_loop(), name="flush")]
        if config.settings.heartbeat > 0:
            background.append(asyncio.create_task(self._heartbeat_loop(), name="heartbeat"))
        interval = watchdog_interval()
        if interval is not None:
            sched = self.scheduler
            background.append(
                asyncio.create_task(
                    keep_alive(
                        self.systemd,
                        lambda: sched.progress,
                        interval,
                        self.status_line,
                        stale_after=lambda: self._stale_after(interval),
                    )
                )
            )
        log.info("ready")
        self.systemd.ready(self.status_line())
        stop = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait({runner, stop}, return_when=asyncio.FIRST_COMPLETED)
            if runner in done:
                runner.result()  # the scheduler never ends by itself: surface its bug
        finally:
            self._stop.set()  # also when the scheduler failed: later signals only log
            self.systemd.stopping()
            self.scheduler.stop()
            stop.cancel()
            for task in (*background, *self._reloads):
                task.cancel()
            await asyncio.gather(runner, *background, *self._reloads, return_exceptions=True)
            self._flush()
            pending = self.notifier.dispatcher.pending()
            await self.notifier.close()
            if pending:
                log.info("%d notification(s) not yet delivered stay queued", pending)
            self.systemd.close()
            # Only now: a second SIGTERM during the clean-up must not cut it short.
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        log.info("stopped after %d checks", self.scheduler.checks_done)
        return 0

    def _restore(self, config: Config, store: Store) -> dict[str, state.ServiceState]:
        saved = store.load_states(mono_now=time.monotonic(), wall_now=time.time())
        names = [svc.name for svc in config.services]
        gone = sorted(set(saved) - set(names))
        if gone:
            store.forget(gone)
            log.info("forgot %d service(s) no longer configured: %s", len(gone), ", ".join(gone))
        self.indexes = store.service_indexes(names)
        initial = {name: st for name, st in saved.items() if name in self.indexes}
        if initial:
            log.info("resumed the state of %d service(s) from %s", len(initial), store.path)
        return initial

    def _stale_after(self, interval: float) -> float:
        """How long without a scheduler pass means stuck (see ``sdnotify``).

        A healthy scheduler passes at least once a second when idle, and when
        every check slot is taken it waits at most the longest check timeout.
        Never less than systemd's ``WatchdogSec`` (twice the ping interval).
        """
        assert self.config is not None
        longest = max((svc.timeout for svc in self.config.services), default=0.0)
        return max(2 * interval, 2 * IDLE_PASS, longest + IDLE_PASS)

    def _request_stop(self, name: str) -> None:
        if self._stop.is_set():
            log.info("%s received: already stopping", name)
            return
        log.info("%s received: stopping", name)
        self._stop.set()

    # -- reload ------------------------------------------------------------------

    def _start_reload(self) -> None:
        if self._stop.is_set():
            log.info("SIGHUP received while stopping: not reloading")
            return
        task = asyncio.create_task(self.reload(), name="reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload(self) -> None:
        assert self.scheduler is not None
        assert self.store is not None
        assert self.notifier is not None
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
        old = self.config
        assert old is not None
        if config.settings.state_dir != old.settings.state_dir:
            log.warning("state_dir changes only with a restart; keeping %s", old.settings.state_dir)
        self._flush()
        try:  # the only step that can fail: before anything changes
            indexes = self.store.service_indexes(svc.name for svc in config.services)
        except StoreError as exc:
            log.error("reload rejected: %s", exc)
            log.error("reload rejected: keeping the running configuration")
            self.systemd.ready(self.status_line())
            return
        # Receivers first, so that a new service's first notification finds its receiver.
        if config.receivers != old.receivers or config.settings.oid_root != old.settings.oid_root:
            await self.notifier.reconfigure(config)
        # From here on nothing awaits: no check result comes in halfway.
        added, changed, removed = self.scheduler.update(config.services)
        self.indexes = indexes
        for name in removed:
            self._dirty.pop(name, None)
        if removed:
            try:
                self.store.forget(removed)
            except StoreError as exc:  # forgotten at the next start instead
                self._store_failed(exc)
        if self.status_files is not None:
            for name in removed:
                self.status_files.forget(name)
        sd = config.settings.status_dir
        if sd != (self.status_files.directory if self.status_files else None):
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

    # -- results -----------------------------------------------------------------

    def _on_result(
        self,
        svc: Service,
        st: state.ServiceState,
        result: CheckResult,
        notes: tuple[state.Notification, ...],
    ) -> None:
        assert self.scheduler is not None
        slot = self.scheduler.slots.get(svc.name)
        if slot is None or slot.service is not svc:
            # A check that was running when a reload removed or redefined its service:
            # the service is gone, or its new definition decides from its own checks.
            log.debug("check %s: result of the previous configuration ignored", svc.name)
            return
        log.debug(
            "check %s: %s %s (%.1f ms)",
            svc.name,
            result.reason.code,
            result.detail,
            result.elapsed * 1000.0,
        )
        if notes:
            for note in notes:
                level = logging.WARNING if note.state is state.State.DOWN else logging.INFO
                log.log(level, describe(svc, note))
            self._persist_and_notify(svc, st, notes)
        else:
            self._dirty[svc.name] = st
        if self.status_files is not None:
            self.status_files.update(svc.name, st)

    def _persist_and_notify(
        self, svc: Service, st: state.ServiceState, notes: tuple[state.Notification, ...]
    ) -> None:
        assert self.store is not None
        assert self.notifier is not None
        self._dirty.pop(svc.name, None)
        index = self.indexes[svc.name]
        before = self.notifier.last_sequence
        try:
            with self.store.transaction():
                self.store.save_state(svc.name, st, mono_now=time.monotonic(), wall_now=time.time())
                for note in notes:
                    self.notifier.service_event(svc, index, note)
        except StoreError as exc:
            # Rolled back: nothing was queued. Deliver from memory instead.
            self._store_failed(exc)
            self._dirty[svc.name] = st
            self.notifier.last_sequence = before
            for note in notes:
                self.notifier.service_event(svc, index, note, durable=False)
            return
        self._store_recovered()

    def _flush(self) -> None:
        """Save the states that changed without a notification, in one transaction."""
        if not self._dirty or self.store is None:
            return
        dirty, self._dirty = self._dirty, {}
        mono, wall = time.monotonic(), time.time()
        try:
            with self.store.transaction():
                for name, st in dirty.items():
                    self.store.save_state(name, st, mono_now=mono, wall_now=wall)
        except StoreError as exc:
            self._store_failed(exc)
            self._dirty = {**dirty, **self._dirty}
            return
        self._store_recovered()

    def _store_failed(self, exc: StoreError) -> None:
        if not self._store_failing:
            log.error(
                "cannot write the state database: %s; checks go on, states are kept in "
                "memory until it can be written again, notifications are delivered from "
                "memory (lost if the daemon stops before they leave)",
                exc,
            )
        self._store_failing = True

    def _store_recovered(self) -> None:
        if self._store_failing:
            log.info("the state database is writable again")
        self._store_failing = False

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            self._flush()

    async def _heartbeat_loop(self) -> None:
        assert self.config is not None
        while True:
            await asyncio.sleep(self.config.settings.heartbeat)
            counts = self._counts()
            assert self.store is not None
            assert self.notifier is not None
            message = self.notifier.heartbeat(**counts)
            log.info("heartbeat #%d", message.sequence)

    def _counts(self) -> dict[str, int]:
        counts = {"up": 0, "down": 0, "unknown": 0}
        if self.scheduler is not None:
            for st in self.scheduler.states().values():
                counts[st.state.value] += 1
        return counts

    def status_line(self) -> str:
        """A one-line summary for systemd's STATUS= (shown by ``systemctl status``)."""
        c = self._counts()
        done = self.scheduler.checks_done if self.scheduler is not None else 0
        return f"{c['up']} up, {c['down']} down, {c['unknown']} unknown; {done} checks"


def run(config_path: Path) -> int:
    """Run the daemon until SIGTERM/SIGINT. Uses uvloop when it is installed.

    Host names are resolved in threads (getaddrinfo blocks). Both loops default
    to a handful of them, so a few names whose DNS server hangs would make
    every other name-based check queue past its deadline: give them more.
    """
    os.environ.setdefault("UV_THREADPOOL_SIZE", str(RESOLVER_THREADS))  # uvloop's (libuv's)
    try:
        import uvloop  # noqa: PLC0415 (optional speed-up)
    except ImportError:
        return asyncio.run(_with_resolvers(Daemon(config_path)))
    return uvloop.run(_with_resolvers(Daemon(config_path)))


async def _with_resolvers(daemon: Daemon) -> int:
    executor = ThreadPoolExecutor(RESOLVER_THREADS, thread_name_prefix="resolve")
    asyncio.get_running_loop().set_default_executor(executor)  # asyncio's own loop
    return await daemon.run()
