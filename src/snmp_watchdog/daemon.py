"""``watchdog run``: configuration, state store, scheduler, notifications and signals.

The daemon logs one line per event on stderr: start, configuration loaded,
each confirmed state change with its reason, each notification, reload, stop.

Durability: a check result that produces notifications is saved together with
them (the service's new state and one outbox row per receiver) in one
transaction before anything is sent; the results of one turn of the event
loop share that transaction (one fsync for a burst of changes, not one per
change), committed as soon as the turn's other callbacks have run. Other
results are saved in batches once a second. A crash therefore never loses a
notification and never repeats one for a state that did not change; the worst
case is a lost second of counters.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from snmp_watchdog import __version__, state
from snmp_watchdog.agent.runner import AgentRunner
from snmp_watchdog.checks import run_check
from snmp_watchdog.config import load_config
from snmp_watchdog.exceptions import ConfigError
from snmp_watchdog.model import Config, Service, Settings
from snmp_watchdog.notify.engine import format_engine_id
from snmp_watchdog.notify.notifier import Notifier
from snmp_watchdog.reasons import Reason
from snmp_watchdog.result import CheckResult
from snmp_watchdog.scheduler import Scheduler
from snmp_watchdog.sdnotify import SystemdNotifier, keep_alive, watchdog_interval
from snmp_watchdog.statusfiles import StatusFiles
from snmp_watchdog.store import ENGINE_ID_IN_USE, Store, StoreError

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


#: New objects between two collections of the youngest generation (Python's default: 700).
YOUNG_COLLECTION_EVERY = 5000


def settle_memory() -> None:
    """Collect what start-up or a reload left behind, and take what stays out of collections.

    The modules, the SNMP engine's MIB objects and the configuration live as
    long as the process (or until the next reload) and are most of its
    objects: every full collection would walk them all again, holding the
    event loop for tens of milliseconds (bench/notify.py measures it during
    bursts). What a reload makes garbage of is collected first, as
    ``unfreeze`` hands it back to the collector.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    # Each check makes dozens of objects that reference counting frees at once;
    # a young collection every 700 of them found little to free and cost about
    # 3% of the CPU at 2,000 checks/s (bench/steady.py).
    gc.set_threshold(YOUNG_COLLECTION_EVERY, *gc.get_threshold()[1:])


class _Event(NamedTuple):
    """A notification to queue: for the service's receivers, or for ``receivers``."""

    service: Service
    row: int  # the service's index in the MIB table
    note: state.Notification
    flags: str = "normal"
    receivers: tuple[str, ...] | None = None


class Daemon:
    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.started = time.monotonic()
        self.config: Config | None = None
        self.scheduler: Scheduler | None = None
        self.store: Store | None = None
        self.notifier: Notifier | None = None
        self.status_files: StatusFiles | None = None
        self.agent: AgentRunner | None = None
        self.indexes: dict[str, int] = {}
        self._dirty: dict[str, state.ServiceState] = {}
        # Results with notifications not yet committed (see ``_commit_changes``).
        self._changes: list[tuple[Service, state.ServiceState, list[_Event]]] = []
        self._commit_soon: asyncio.Handle | None = None
        self._store_failing = False
        self._stop = asyncio.Event()
        self._reloads: set[asyncio.Task[None]] = set()
        # Reloads run one at a time, in the order of their signals: the last
        # SIGHUP reads the file last, so what is on disk then is what runs.
        self._reload_lock = asyncio.Lock()
        self._heartbeat: asyncio.Task[None] | None = None
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
        self._discard_orphans(config, store)
        self.notifier = Notifier(config, store, started=self.started)
        await self.notifier.start()
        self._record_engine_id(store)
        try:
            await self._start_agent(config, initial)
        except BaseException:
            await self.notifier.close()
            raise
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
        self._set_heartbeat(config.settings.heartbeat)
        background += self._keep_alive()
        settle_memory()
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
            self._set_heartbeat(0)
            for task in (*background, *self._reloads):
                task.cancel()
            await asyncio.gather(runner, *background, *self._reloads, return_exceptions=True)
            if self.agent is not None:
                self.agent.close()
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

    def _keep_alive(self) -> list[asyncio.Task[None]]:
        """systemd's watchdog keep-alive, when the unit asks for one (``WatchdogSec``)."""
        interval = watchdog_interval()
        if interval is None:
            return []
        sched = self.scheduler
        assert sched is not None
        alive = keep_alive(
            self.systemd,
            lambda: sched.progress,
            interval,
            self.status_line,
            stale_after=lambda: self._stale_after(interval),
        )
        return [asyncio.create_task(alive, name="keep-alive")]

    def _restore(self, config: Config, store: Store) -> dict[str, state.ServiceState]:
        saved = store.load_states(mono_now=time.monotonic(), wall_now=time.time())
        names = [svc.name for svc in config.services]
        gone = sorted(set(saved) - set(names))
        if gone:
            store.forget(gone)
            log.info("forgot %d service(s) no longer configured: %s", len(gone), ", ".join(gone))
            down = [name for name in gone if saved[name].notified is state.State.DOWN]
            if down:
                # Their receivers are not known any more: nothing can close their Downs.
                log.warning(
                    "removed while the daemon was stopped, with a Down sent and no Up: %s; "
                    "close their problems at the receivers by hand (a reload would have "
                    "sent an Up flagged 'removed')",
                    ", ".join(down),
                )
        self.indexes = store.service_indexes(names)
        initial = {name: st for name, st in saved.items() if name in self.indexes}
        if initial:
            log.info("resumed the state of %d service(s) from %s", len(initial), store.path)
        return initial

    def _discard_orphans(self, config: Config, store: Store) -> None:
        """Drop the informs still queued for receivers the configuration no longer has."""
        configured = {r.name for r in config.receivers}
        for name, count in sorted(store.pending_counts().items()):
            if name in configured:
                continue
            try:
                store.discard(name)
            except StoreError as exc:
                log.error("cannot discard the informs of removed receiver %s: %s", name, exc)
                continue
            log.warning(
                "receiver %s is no longer configured: %d notification(s) waiting for it discarded",
                name,
                count,
            )

    def _record_engine_id(self, store: Store) -> None:
        """Save the engine ID in use: what ``watchdog status`` shows and prints createUser for."""
        assert self.notifier is not None
        try:
            store.meta_set(ENGINE_ID_IN_USE, format_engine_id(self.notifier.sender.engine_id))
        except StoreError as exc:
            self._store_failed(exc)

    def _set_heartbeat(self, every: float) -> None:
        """(Re)start the heartbeat loop at ``every`` seconds; 0 stops it."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        if every > 0:
            self._heartbeat = asyncio.create_task(self._heartbeat_loop(every), name="heartbeat")

    async def _start_agent(self, config: Config, initial: dict[str, state.ServiceState]) -> None:
        """The read-only agent's table, always kept (a reload may add ``agent:``), and
        its server when configured: it shares the notifications' engine ID and boots."""
        assert self.notifier is not None
        notifier = self.notifier
        self.agent = AgentRunner(
            engine_id=notifier.sender.engine_id,
            boots=notifier.sender.engine_boots,
            engine_started=notifier.sender.engine_started,
            started=self.started,
            sequence=lambda: notifier.last_sequence,
        )
        self.agent.load(config, initial, self.indexes)
        await self.agent.start(config)

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
        """Reload the configuration file; one reload at a time, systemd always told the end."""
        async with self._reload_lock:
            if self._stop.is_set():
                return
            try:
                await self._reload()
            except Exception:
                log.exception("reload failed with an internal error")
                self.systemd.ready(self.status_line())

    async def _reload(self) -> None:
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
        config = self._keep_restart_only_settings(config, old)
        self._flush()
        try:  # the only step that can fail: before anything changes
            indexes = self.store.service_indexes(svc.name for svc in config.services)
        except StoreError as exc:
            log.error("reload rejected: %s", exc)
            log.error("reload rejected: keeping the running configuration")
            self.systemd.ready(self.status_line())
            return
        if self.agent is not None:
            await self.agent.reload(config)
        # Receivers first, so that a new service's first notification finds its receiver.
        if config.receivers != old.receivers or config.settings.oid_root != old.settings.oid_root:
            await self.notifier.reconfigure(config)
        # From here on nothing awaits: no check result comes in halfway.
        self._commit_changes()  # under the configuration that produced them
        told = self._what_receivers_must_be_told(old, config)
        added, changed, removed = self.scheduler.update(config.services)
        self.indexes = indexes
        if self.agent is not None:
            self.agent.load(config, self.scheduler.states(), indexes)
        for name in removed:
            self._dirty.pop(name, None)
        store = self.store
        forget = (lambda: store.forget(removed)) if removed else None
        if not self._queue(told, save=forget) and removed:
            try:  # the notifications went from memory; forget in a transaction of its own
                store.forget(removed)
            except StoreError as exc:  # forgotten at the next start instead
                self._store_failed(exc)
        if self.status_files is not None:
            for name in removed:
                self.status_files.forget(name)
        self._apply_settings(config.settings, old.settings)
        self.config = config
        settle_memory()
        log.info(
            "configuration reloaded: %d services (%d added, %d changed, %d removed)",
            len(config.services),
            len(added),
            len(changed),
            len(removed),
        )
        self.systemd.ready(self.status_line())

    def _apply_settings(self, new: Settings, old: Settings) -> None:
        """Apply the reloaded settings that take effect at once (status files, cap, heartbeat)."""
        assert self.scheduler is not None
        sd = new.status_dir
        if sd != (self.status_files.directory if self.status_files else None):
            self.status_files = StatusFiles(sd) if sd is not None else None
        if new.max_in_flight != old.max_in_flight:
            self.scheduler.set_max_in_flight(new.max_in_flight)
            log.info("max_in_flight now %d (was %d)", new.max_in_flight, old.max_in_flight)
        if new.heartbeat != old.heartbeat:
            self._set_heartbeat(new.heartbeat)

    def _keep_restart_only_settings(self, config: Config, old: Config) -> Config:
        """The new configuration with what only a restart can change kept as it runs."""
        settings = config.settings
        if settings.state_dir != old.settings.state_dir:
            log.warning("state_dir changes only with a restart; keeping %s", old.settings.state_dir)
            settings = replace(settings, state_dir=old.settings.state_dir)
        if settings.engine_id != old.settings.engine_id:
            assert self.notifier is not None
            log.warning(
                "engine_id changes only with a restart; still using %s",
                format_engine_id(self.notifier.sender.engine_id),
            )
            settings = replace(settings, engine_id=old.settings.engine_id)
        return config if settings is config.settings else replace(config, settings=settings)

    def _what_receivers_must_be_told(self, old: Config, new: Config) -> list[_Event]:
        """Keep Down/Up pairs whole across a reload, for each receiver.

        A receiver that was told a service is Down and will hear no more of it
        (the service was removed or renamed, or no longer notifies this
        receiver) gets an Up flagged ``removed`` with state ``unknown``, which
        closes its open problem. A receiver newly given a service that is down
        gets that Down, flagged ``added``, so that the Up to come pairs with
        something. Receivers removed from the file are told nothing: they are
        no longer ours to talk to.
        """
        assert self.scheduler is not None
        now = time.monotonic()
        configured = {r.name for r in new.receivers}
        was = {svc.name: svc for svc in old.services}
        wanted = {svc.name: svc for svc in new.services}
        events = []
        for name, st in self.scheduler.states().items():
            if st.notified is not state.State.DOWN:
                continue
            before = was[name]
            after = wanted.get(name)
            kept = set(after.receivers) if after is not None else set()
            left = tuple(r for r in before.receivers if r not in kept and r in configured)
            if left:
                note = state.Notification(
                    kind=state.Kind.UP,
                    state=state.State.UNKNOWN,
                    previous=state.State.DOWN,
                    reason=Reason.OK,
                    detail="no longer watched for this receiver (configuration reloaded)",
                    count=0,
                    elapsed=0.0,
                    at=now,
                )
                events.append(_Event(before, self.indexes[name], note, "removed", left))
            if after is None or st.state is not state.State.DOWN:
                continue
            joined = tuple(r for r in after.receivers if r not in before.receivers)
            if joined:
                note = state.Notification(
                    kind=state.Kind.DOWN,
                    state=state.State.DOWN,
                    previous=st.previous,
                    reason=st.last_reason or Reason.NETWORK_ERROR,
                    detail=st.last_detail,
                    count=st.failures,
                    elapsed=st.last_elapsed,
                    at=st.since if st.since is not None else now,
                )
                events.append(_Event(after, self.indexes[name], note, "added", joined))
        for event in events:
            log.info(
                "%s: %s %s to %s (configuration reloaded)",
                event.service.name,
                event.note.kind.value,
                event.flags,
                ", ".join(event.receivers or ()),
            )
        return events

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
        if self.agent is not None:
            self.agent.result(svc, st, result)
        if log.isEnabledFor(logging.DEBUG):
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
        """Save ``st`` with ``notes`` and hand them to delivery, with this turn's others."""
        self._dirty.pop(svc.name, None)
        index = self.indexes[svc.name]
        self._changes.append((svc, st, [_Event(svc, index, note) for note in notes]))
        if self._commit_soon is None:
            self._commit_soon = asyncio.get_running_loop().call_soon(self._commit_changes)

    def _commit_changes(self) -> None:
        """Commit the pending results with notifications in one transaction, then queue them.

        Called once the loop turn that produced them has run its other
        callbacks, and before anything else writes or numbers notifications
        (a flush, a reload, a heartbeat, the stop), so the order is kept.
        When the transaction fails, the notifications go out from memory and
        the states wait for the next flush, as for a single result.
        """
        if self._commit_soon is not None:
            self._commit_soon.cancel()
            self._commit_soon = None
        if not self._changes:
            return
        assert self.store is not None
        changes, self._changes = self._changes, []
        store = self.store

        def save() -> None:
            store.save_states(
                ((svc.name, st) for svc, st, _ in changes),
                mono_now=time.monotonic(),
                wall_now=time.time(),
            )

        if not self._queue([e for _, _, events in changes for e in events], save=save):
            for svc, st, _ in changes:
                # Saved at the next flush, unless a later result of the turn is there already.
                self._dirty.setdefault(svc.name, st)

    def _queue(self, events: list[_Event], *, save: Callable[[], None] | None = None) -> bool:
        """Save (``save``) and queue ``events`` in one transaction; False: from memory instead.

        When the transaction fails nothing was queued: the events go out from
        memory under the same numbers they would have had.
        """
        assert self.store is not None
        assert self.notifier is not None
        if not events and save is None:
            return True
        before = self.notifier.last_sequence
        try:
            with self.store.transaction():
                if save is not None:
                    save()
                for e in events:
                    self.notifier.service_event(
                        e.service, e.row, e.note, flags=e.flags, receivers=e.receivers
                    )
        except StoreError as exc:
            self._store_failed(exc)
            self.notifier.last_sequence = before
            for e in events:
                self.notifier.service_event(
                    e.service, e.row, e.note, flags=e.flags, receivers=e.receivers, durable=False
                )
            return False
        self._store_recovered()
        return True

    def _flush(self) -> None:
        """Save the states that changed without a notification, in one transaction."""
        self._commit_changes()  # first: a state saved later must not be overwritten by it
        if not self._dirty or self.store is None:
            return
        dirty, self._dirty = self._dirty, {}
        try:
            self.store.save_states(dirty.items(), mono_now=time.monotonic(), wall_now=time.time())
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

    async def _heartbeat_loop(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            self._commit_changes()  # numbered before the heartbeat, as they happened
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
