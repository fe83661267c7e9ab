"""``watchdog run``: configuration, state store, scheduler, notifications and signals.

The daemon logs one line per event on stderr: start, configuration loaded,
each confirmed state change with its reason, each notification, reload, stop.

One daemon, two placements (``Placement``): alone (``Standalone``, the
SQLite store of ``state_dir``) it owns every service and receiver and may
always act; as a node of a cluster (``watchdog.store: postgresql://...``,
``cluster_daemon.ClusterNode``) it checks and delivers what the membership
gives it, and its writes are fenced on the service's epoch. Everything else
(results, logging, commits, notifications, flushes, heartbeat, reload,
signals, systemd, life cycle) is this module's, the same for both.

Durability: a check result that produces notifications is saved together with
them (the service's new state and one outbox row per receiver) in one
transaction before anything is sent; the results of one turn of the event
loop share that transaction (one fsync for a burst of changes, not one per
change; a cluster node commits each service's change in a transaction fenced
on its epoch), committed from a task as soon as the turn's other callbacks
have run. Other results are saved in batches once a second, except that a
settled state following a settled one (``state.settled``: the check only
repeated the confirmed state, and changed its last-check fields and counters)
waits up to ``SETTLED_FLUSH_EVERY``: at 2,000 checks a second the row writes
of such states were the daemon's largest cost beyond the checks themselves
(bench/README.md). Every write goes
through the async ``StateStore`` interface, one at a time in the order asked
(a turn's commit, a flush, a heartbeat, a reload's changes): with SQLite the
calls never suspend, with PostgreSQL they do, and the order holds either way.
A crash therefore never loses a notification and never repeats one for a
state that did not change; the worst case is a lost second of a change being
confirmed, and ten seconds of last checks and counters of confirmed states
(what follows goes on the same: see ``state.settled``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from snmp_watchdog import __version__, state
from snmp_watchdog.agent.runner import AgentRunner
from snmp_watchdog.checks import run_check
from snmp_watchdog.cluster import Fenced
from snmp_watchdog.config import load_config
from snmp_watchdog.exceptions import ConfigError, StoreError
from snmp_watchdog.model import Config, Service, Settings
from snmp_watchdog.notify.engine import format_engine_id
from snmp_watchdog.notify.message import Message, MessageBuilder, encode
from snmp_watchdog.notify.mib import Oids
from snmp_watchdog.notify.notifier import Notifier
from snmp_watchdog.notify.told import decode_told
from snmp_watchdog.reasons import Reason
from snmp_watchdog.result import CheckResult
from snmp_watchdog.scheduler import Scheduler
from snmp_watchdog.sdnotify import SystemdNotifier, keep_alive, watchdog_interval
from snmp_watchdog.statusfiles import StatusFiles
from snmp_watchdog.storage import SqliteStateStore, StateStore
from snmp_watchdog.store import ENGINE_ID_IN_USE, Store

log = logging.getLogger("snmp_watchdog")

#: Threads resolving host names at once (see ``run``).
RESOLVER_THREADS = 32

#: How often states that produced no notification are written to the database.
FLUSH_EVERY = 1.0

#: How often a settled state that follows a settled one is written (``state.settled``).
SETTLED_FLUSH_EVERY = 10.0

#: The longest pause between two passes of a healthy scheduler with nothing due
#: (``Scheduler.run`` sleeps at most a second at a time).
IDLE_PASS = 1.0

#: What only a restart changes, for every daemon.
RESTART_ONLY = ("state_dir", "engine_id")


def event_log_line(svc: Service, note: state.Notification) -> str:
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


class Standalone:
    """The placement of a daemon alone: every service and receiver is its own.

    It may always act, its writes are unfenced, its store is the SQLite one of
    ``state_dir``. When a write fails the daemon goes on from memory
    (``from_memory``): notifications are delivered from memory under the
    numbers they would have had, states are retried at the next flush.
    """

    #: True: each service's change commits alone, fenced, and is undone on failure.
    fenced = False
    #: Settings only a restart changes (beside ``RESTART_ONLY``).
    restart_only: tuple[str, ...] = ()

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.daemon: Daemon | None = None

    async def start(self, daemon: Daemon, config: Config) -> dict[str, state.ServiceState]:
        """Resume the saved states; the services' numbers in ``daemon.indexes``."""
        self.daemon = daemon
        initial = await daemon._restore(config, self.store)
        await daemon._discard_orphans(config, self.store)
        return initial

    def notifier(self, config: Config, started: float) -> Notifier:
        return Notifier(config, self.store, started=started)

    async def started(self, notifier: Notifier) -> list[Coroutine[Any, Any, None]]:
        """After the notifier started: what else runs beside the scheduler."""
        assert self.daemon is not None
        await self.daemon._record_engine_id(self.store)
        return []

    @property
    def agent(self) -> bool:
        """Whether this daemon answers the agent's requests (when configured)."""
        return True

    def scheduled(self, services: Iterable[Service]) -> list[Service]:
        """Of ``services``, those this daemon checks."""
        return list(services)

    def owns(self, name: str) -> bool:
        return True

    def transaction(self, name: str | None) -> AbstractAsyncContextManager[None]:
        """A transaction for writes made for service ``name`` (None: for several)."""
        return self.store.transaction()

    def saved(self, name: str, st: state.ServiceState) -> None:
        """The state ``st`` of ``name`` is committed."""

    def undo(self, name: str, why: str) -> None:
        """The change of ``name`` was not saved (``fenced`` placements only)."""

    async def save_states(self, states: dict[str, state.ServiceState]) -> None:
        """Save states that produced no notification (``StoreError``: keep them for later)."""
        await self.store.save_states(
            states.items(), mono_now=time.monotonic(), wall_now=time.time()
        )

    async def flushed(self) -> None:
        """After each flush."""

    async def heartbeat(self, notifier: Notifier, counts: dict[str, int]) -> Message | None:
        """Send a heartbeat: in memory, numbered in the stored sequence."""
        return await notifier.heartbeat(
            up=counts["up"], down=counts["down"], unknown=counts["unknown"]
        )

    async def reloaded(self, old: Config, new: Config) -> None:
        """After a reload was applied."""

    async def stop(self) -> None:
        """The daemon stops acting (before its notifier closes)."""

    async def close(self) -> None:
        await self.store.close()


class Daemon:
    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.started = time.monotonic()
        self.config: Config | None = None
        self.placement: Standalone | None = None
        self.scheduler: Scheduler | None = None
        self.store: StateStore | None = None
        self.notifier: Notifier | None = None
        self.status_files: StatusFiles | None = None
        self.agent: AgentRunner | None = None
        self.indexes: dict[str, int] = {}
        # States without a notification not saved yet; those named in ``_urgent``
        # go at the next flush, the others (settled) within SETTLED_FLUSH_EVERY.
        self._dirty: dict[str, state.ServiceState] = {}
        self._urgent: set[str] = set()
        self._settled_flush_at = 0.0  # monotonic
        # Results with notifications not yet committed (see ``_commit_changes``).
        self._changes: list[tuple[Service, state.ServiceState, list[_Event]]] = []
        self._turn: asyncio.Task[None] | None = None  # commits this turn's changes
        self._turns: set[asyncio.Task[None]] = set()  # and those not finished yet
        # One write at a time, in the order asked: a turn's commit, a flush, a
        # heartbeat, a reload's changes.
        self._writing = asyncio.Lock()
        self._store_failing = False
        # Removed by a reload while the database could not be written: their saved
        # states (and what their receivers were told) are forgotten once it can be.
        self._unforgotten: set[str] = set()
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
        placement: Standalone
        if config.settings.store is not None:
            from snmp_watchdog.cluster_daemon import ClusterNode  # noqa: PLC0415 (psycopg)

            node = ClusterNode.name_of(config.settings)
            log.info(
                "snmp-watchdog %s starting as node %s of a cluster: %d services, %d receivers, "
                "config %s",
                __version__,
                node,
                len(config.services),
                len(config.receivers),
                self.config_path,
            )
            placement = await ClusterNode.open(config.settings)
        else:
            log.info(
                "snmp-watchdog %s starting: %d services, %d receivers, config %s",
                __version__,
                len(config.services),
                len(config.receivers),
                self.config_path,
            )
            placement = Standalone(SqliteStateStore(Store.open(config.settings.state_dir)))
        try:
            return await self._run(config, placement)
        finally:
            await placement.close()

    async def _run(self, config: Config, placement: Standalone) -> int:
        self.placement = placement
        self.store = placement.store
        initial = await placement.start(self, config)
        self.notifier = placement.notifier(config, self.started)
        await self.notifier.start()
        beside = await placement.started(self.notifier)
        try:
            await self._start_agent(config, initial)
        except BaseException:
            for coro in beside:
                coro.close()
            await self.notifier.close()
            raise
        if config.settings.status_dir is not None:
            self.status_files = StatusFiles(config.settings.status_dir)
            for name, st in initial.items():
                self.status_files.update(name, st)
        self.scheduler = Scheduler(
            placement.scheduled(config.services),
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
        tasks = {runner} | {asyncio.create_task(coro) for coro in beside}
        background = [asyncio.create_task(self._flush_loop(), name="flush")]
        self._set_heartbeat(config.settings.heartbeat)
        background += self._keep_alive()
        settle_memory()
        log.info("ready")
        self.systemd.ready(self.status_line())
        stop = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait({*tasks, stop}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop:
                    task.result()  # none ends by itself: surface its bug
        finally:
            stop.cancel()
            await self._shutdown([*tasks, *background])
        log.info("stopped after %d checks", self.scheduler.checks_done)
        return 0

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        assert self.scheduler is not None
        assert self.notifier is not None
        assert self.placement is not None
        self._stop.set()  # also when the scheduler failed: later signals only log
        self.systemd.stopping()
        self.scheduler.stop()
        self._set_heartbeat(0)
        for task in (*tasks, *self._reloads):
            task.cancel()
        await asyncio.gather(*tasks, *self._reloads, return_exceptions=True)
        if self.agent is not None:
            self.agent.close()
        await self._flush(everything=True)
        await asyncio.gather(*self._turns, return_exceptions=True)
        await self.placement.stop()
        pending = self.notifier.dispatcher.pending()
        await self.notifier.close()
        if pending:
            log.info("%d notification(s) not yet delivered stay queued", pending)
        self.systemd.close()
        # Only now: a second SIGTERM during the clean-up must not cut it short.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)

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

    async def _restore(self, config: Config, store: StateStore) -> dict[str, state.ServiceState]:
        saved = await store.load_states(mono_now=time.monotonic(), wall_now=time.time())
        names = [svc.name for svc in config.services]
        await self._forget_removed(config, store, saved)
        self.indexes = await store.service_indexes(names)
        initial = {name: st for name, st in saved.items() if name in self.indexes}
        if initial:
            log.info("resumed the state of %d service(s) from %s", len(initial), store.where)
        return initial

    async def _forget_removed(
        self, config: Config, store: StateStore, saved: Iterable[str]
    ) -> None:
        """At start: forget the saved states of the services no longer configured.

        Those removed while the daemon was stopped with a Down sent and no Up
        get the Up a reload would have sent (``_what_receivers_must_be_told``):
        flagged ``removed``, state ``unknown``, to each receiver that was told
        the Down (``notify/told.py``) and is still configured, numbered in the
        sequence and written to the outbox in the transaction that forgets the
        state (delivered once the notifier starts; in a cluster, by the
        receiver's owner). Whoever forgets a state first tells: a node of a
        cluster starting at the same time finds it gone.
        """
        gone = sorted(set(saved) - {svc.name for svc in config.services})
        if not gone:
            return
        configured = {r.name for r in config.receivers}
        builder = MessageBuilder(Oids(config.settings.oid_root))
        detail = "no longer watched (removed from the configuration while the daemon was stopped)"
        closed: list[tuple[str, tuple[str, ...]]] = []
        unknown: list[str] = []
        async with store.transaction():
            down = await store.forget_told(gone)
            indexes = await store.known_indexes() if down else {}
            for name, text in down.items():
                try:
                    told = decode_told(name, text) if text is not None else None
                except ValueError as exc:
                    log.error("%s: %s", name, exc)
                    told = None
                if told is None or name not in indexes:
                    unknown.append(name)
                    continue
                receivers = tuple(r for r in told.receivers if r in configured)
                if not receivers:
                    continue  # removed from the file too: no longer ours to talk to
                sequence = await store.next_sequence()
                wall = time.time()
                payload = encode(
                    builder.service_event(
                        kind=state.Kind.UP,
                        service=told.service,
                        index=indexes[name],
                        state=state.State.UNKNOWN,
                        previous=state.State.DOWN,
                        reason=Reason.OK,
                        detail=detail,
                        count=0,
                        elapsed=0.0,
                        at_wall=wall,
                        sequence=sequence,
                        flags="removed",
                    )
                )
                for receiver in receivers:
                    await store.enqueue(receiver, payload, created=wall, sequence=sequence)
                closed.append((name, receivers))
        log.info("forgot %d service(s) no longer configured: %s", len(gone), ", ".join(gone))
        for name, receivers in closed:
            log.info(
                "%s: up removed to %s (removed from the configuration while the daemon was "
                "stopped)",
                name,
                ", ".join(receivers),
            )
        if unknown:
            # Saved by a version that did not keep their receivers: nothing can close their Downs.
            log.warning(
                "removed while the daemon was stopped, with a Down sent and no Up: %s; "
                "close their problems at the receivers by hand (their receivers were not "
                "saved by the version that sent the Down)",
                ", ".join(unknown),
            )

    async def _discard_orphans(self, config: Config, store: StateStore) -> None:
        """Drop the informs still queued for receivers the configuration no longer has."""
        configured = {r.name for r in config.receivers}
        for name in sorted(await store.pending_counts()):
            if name in configured:
                continue
            try:
                count = await store.discard(name)
            except StoreError as exc:
                log.error("cannot discard the informs of removed receiver %s: %s", name, exc)
                continue
            if count:  # another watchdog sharing the store may have discarded them first
                log.warning(
                    "receiver %s is no longer configured: %d notification(s) waiting for it "
                    "discarded",
                    name,
                    count,
                )

    async def _record_engine_id(self, store: StateStore) -> None:
        """Save the engine ID in use: what ``watchdog status`` shows and prints createUser for."""
        assert self.notifier is not None
        try:
            await store.meta_set(ENGINE_ID_IN_USE, format_engine_id(self.notifier.sender.engine_id))
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
        assert self.placement is not None
        if not self.placement.agent:
            return
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
        assert self.placement is not None
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
        await self._flush()
        try:  # the only step that can fail: before anything changes
            indexes = await self.store.service_indexes(svc.name for svc in config.services)
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
        gone = sorted({s.name for s in old.services} - {s.name for s in config.services})
        async with self._writing:
            # Under the configuration that produced them; then, with SQLite, nothing
            # suspends: no check result comes in halfway.
            await self._commit_pending()
            told = self._what_receivers_must_be_told(old, config)
            added, changed, removed = self.scheduler.update(
                self.placement.scheduled(config.services)
            )
            self.indexes = indexes
            if self.agent is not None:
                self.agent.load(config, self.scheduler.states(), indexes)
            for name in removed:
                self._dirty.pop(name, None)
            await self._tell_and_forget(told, gone)
        if self.status_files is not None:
            for name in gone:
                self.status_files.forget(name)
        self._apply_settings(config.settings, old.settings)
        self.config = config
        await self.placement.reloaded(old, config)
        settle_memory()
        log.info(
            "configuration reloaded: %d services (%d added, %d changed, %d removed), %d receivers",
            len(config.services),
            len(added),
            len(changed),
            len(gone),
            len(config.receivers),
        )
        self.systemd.ready(self.status_line())

    async def _tell_and_forget(self, told: list[_Event], gone: list[str]) -> None:
        """Queue the reload's notifications and forget the states of the services gone.

        Alone, in one transaction. In a cluster each service's notifications
        are written by its owner, fenced, and every node forgets (the same
        rows: whoever comes first).
        """
        assert self.store is not None
        assert self.placement is not None
        store = self.store

        async def forget() -> None:
            await store.forget(gone)

        if not self.placement.fenced:
            if not await self._queue(told, save=forget if gone else None) and gone:
                try:  # the notifications went from memory; forget in a transaction of its own
                    await store.forget(gone)
                except StoreError as exc:  # forgotten once the database can be written
                    self._store_failed(exc)
                    self._unforgotten.update(gone)
            return
        for name in dict.fromkeys(e.service.name for e in told):
            await self._queue([e for e in told if e.service.name == name], fence=name)
        if gone:
            try:
                await store.forget(gone)
            except StoreError as exc:
                log.warning("states of the removed services not forgotten yet: %s", exc)

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
        assert self.placement is not None
        settings = config.settings
        for key in (*RESTART_ONLY, *self.placement.restart_only):
            if getattr(settings, key) == getattr(old.settings, key):
                continue
            if key == "engine_id":
                assert self.notifier is not None
                running = format_engine_id(self.notifier.sender.engine_id)
                log.warning("engine_id changes only with a restart; still using %s", running)
            elif key == "state_dir":
                log.warning(
                    "state_dir changes only with a restart; keeping %s", old.settings.state_dir
                )
            else:
                log.warning("%s changes only with a restart; keeping the running one", key)
            settings = replace(settings, **{key: getattr(old.settings, key)})
        return config if settings is config.settings else replace(config, settings=settings)

    def _what_receivers_must_be_told(self, old: Config, new: Config) -> list[_Event]:
        """Keep Down/Up pairs whole across a reload, for each receiver.

        A receiver that was told a service is Down and will hear no more of it
        (the service was removed or renamed, or no longer notifies this
        receiver) gets an Up flagged ``removed`` with state ``unknown``, which
        closes its open problem. A receiver newly given a service that is down
        gets that Down, flagged ``added``, so that the Up to come pairs with
        something. Receivers removed from the file are told nothing: they are
        no longer ours to talk to. In a cluster, the owner of the service tells.
        """
        assert self.scheduler is not None
        assert self.placement is not None
        now = time.monotonic()
        configured = {r.name for r in new.receivers}
        was = {svc.name: svc for svc in old.services}
        wanted = {svc.name: svc for svc in new.services}
        events = []
        for name, st in self.scheduler.states().items():
            if st.notified is not state.State.DOWN or not self.placement.owns(name):
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
        before: state.ServiceState,
        st: state.ServiceState,
        result: CheckResult,
        notes: tuple[state.Notification, ...],
    ) -> None:
        assert self.placement is not None
        if not self.placement.owns(svc.name):
            # Handed over to another node while the check ran (its slot goes next).
            log.debug("check %s: result of a service handed over ignored", svc.name)
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
                log.log(level, event_log_line(svc, note))
            self._persist_and_notify(svc, st, notes)
        else:
            self._dirty[svc.name] = st
            if not (state.settled(st) and state.settled(before)):
                self._urgent.add(svc.name)
        if self.status_files is not None:
            self.status_files.update(svc.name, st)

    def _persist_and_notify(
        self, svc: Service, st: state.ServiceState, notes: tuple[state.Notification, ...]
    ) -> None:
        """Save ``st`` with ``notes`` and hand them to delivery, with this turn's others."""
        self._dirty.pop(svc.name, None)
        index = self.indexes[svc.name]
        self._changes.append((svc, st, [_Event(svc, index, note) for note in notes]))
        if self._turn is None:
            # A task's first step runs once the callbacks already due have run: the
            # turn's other results join this commit.
            self._turn = asyncio.get_running_loop().create_task(self._commit_changes())
            self._turns.add(self._turn)
            self._turn.add_done_callback(self._turn_done)

    def _turn_done(self, task: asyncio.Task[None]) -> None:
        self._turns.discard(task)
        if self._turn is task:
            self._turn = None
        if not task.cancelled() and task.exception() is not None:
            log.error("commit failed with an internal error", exc_info=task.exception())

    async def _commit_changes(self) -> None:
        """Commit the pending results with notifications (after the writes asked before)."""
        async with self._writing:
            await self._commit_pending()

    async def _commit_pending(self) -> None:
        """Commit the pending results with notifications, then queue them.

        Called (holding ``_writing``) once the loop turn that produced them has
        run its other callbacks, and before anything else writes or numbers
        notifications (a flush, a reload, a heartbeat, the stop), so the order
        is kept. Alone, all in one transaction; when it fails, the
        notifications go out from memory and the states wait for the next
        flush. In a cluster, each service's in a transaction fenced on its
        epoch; when one fails, that service goes back to its saved state.
        """
        if not self._changes:
            return
        assert self.store is not None
        assert self.placement is not None
        changes, self._changes = self._changes, []
        self._turn = None  # results from now on open the next turn (its own task)
        store = self.store
        groups = [changes] if not self.placement.fenced else [[c] for c in changes]
        for group in groups:

            async def save(group: list[tuple[Service, state.ServiceState, Any]] = group) -> None:
                await store.save_states(
                    ((svc.name, st) for svc, st, _ in group),
                    mono_now=time.monotonic(),
                    wall_now=time.time(),
                )

            events = [e for _, _, evs in group for e in evs]
            fence = group[0][0].name if self.placement.fenced else None
            if await self._queue(events, save=save, fence=fence):
                for svc, st, _ in group:
                    self.placement.saved(svc.name, st)
            elif not self.placement.fenced:
                for svc, st, _ in group:
                    # Saved at the next flush, unless a later result of the turn is there already.
                    self._dirty.setdefault(svc.name, st)
                    self._urgent.add(svc.name)

    async def _queue(
        self,
        events: list[_Event],
        *,
        save: Callable[[], Awaitable[None]] | None = None,
        fence: str | None = None,
    ) -> bool:
        """Save (``save``) and queue ``events`` in one transaction; False when it failed.

        Alone, nothing was queued then: the events go out from memory under
        the same numbers they would have had. In a cluster (writes fenced on
        service ``fence``), the change is undone, to be confirmed again.
        """
        assert self.store is not None
        assert self.notifier is not None
        assert self.placement is not None
        if not events and save is None:
            return True
        try:
            async with self.notifier.numbering(), self.placement.transaction(fence):
                if save is not None:
                    await save()
                for e in events:
                    await self.notifier.service_event(
                        e.service, e.row, e.note, flags=e.flags, receivers=e.receivers
                    )
        except Fenced as exc:
            assert fence is not None
            self.placement.undo(fence, f"no longer its owner ({exc})")
            return False
        except StoreError as exc:
            if self.placement.fenced:
                assert fence is not None
                self.placement.undo(fence, f"the state database failed: {exc}")
                return False
            self._store_failed(exc)
            for e in events:
                await self.notifier.service_event(
                    e.service, e.row, e.note, flags=e.flags, receivers=e.receivers, durable=False
                )
            return False
        self._store_recovered()
        return True

    async def _flush(self, *, everything: bool = False) -> None:
        """Save the states that changed without a notification, in one transaction.

        Those waiting for the next flush; with ``everything``, or once every
        ``SETTLED_FLUSH_EVERY``, the settled ones too.
        """
        assert self.placement is not None
        async with self._writing:
            await self._commit_pending()  # first: a state saved later must not be overwritten
            if self._dirty and self.store is not None:
                now = time.monotonic()
                if everything or now >= self._settled_flush_at:
                    batch, self._dirty = self._dirty, {}
                    self._settled_flush_at = now + SETTLED_FLUSH_EVERY
                else:
                    dirty = self._dirty
                    batch = {name: dirty.pop(name) for name in self._urgent if name in dirty}
                self._urgent.clear()  # before the write: results during it mark their own
                if batch:  # nothing written is no sign of a writable database
                    try:
                        await self.placement.save_states(batch)
                    except StoreError as exc:
                        self._store_failed(exc)
                        self._dirty = {**batch, **self._dirty}
                        self._urgent.update(batch)
                    else:
                        self._store_recovered()
            if self.notifier is not None:  # also while failing: a stop may come first
                try:  # a number sent from memory must not be handed out again after a restart
                    await self.notifier.store_sequence()
                    await self._forget_unforgotten()
                except StoreError as exc:
                    self._store_failed(exc)
        await self.placement.flushed()

    async def _forget_unforgotten(self) -> None:
        """Forget what a reload could not (else a restart would close their Downs again)."""
        if not self._unforgotten or self.store is None or self.config is None:
            return
        configured = {svc.name for svc in self.config.services}
        gone = sorted(self._unforgotten - configured)  # not those added back since
        if gone:
            await self.store.forget(gone)
        self._unforgotten.clear()

    def _store_failed(self, exc: StoreError) -> None:
        if not self._store_failing:
            assert self.placement is not None
            if self.placement.fenced:
                log.error(
                    "cannot write the state database: %s; checks go on, states are kept in "
                    "memory until it can be written again",
                    exc,
                )
            else:
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
            if self.notifier is not None:
                self.notifier.store_writable()
        self._store_failing = False

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            await self._flush()

    async def _heartbeat_loop(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            assert self.notifier is not None
            assert self.placement is not None
            async with self._writing:
                await self._commit_pending()  # numbered before the heartbeat, as they happened
                message = await self.placement.heartbeat(self.notifier, self._counts())
            if message is not None:
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
