"""``watchdog run`` with ``watchdog.store: postgresql://...``: one node of a cluster.

Every node runs the same configuration against one PostgreSQL database. The
services, and the receivers' queues, are shared out among the live nodes
(``membership.py``, rules in ``cluster.py``); a node checks only the services
it owns, and delivers only the queues of the receivers it owns.

Exactly once, as far as SNMP allows:

* A confirmed change is saved with its notifications (the state, the next
  number of the cluster's one sequence, one outbox row per receiver) in one
  transaction fenced on the service's epoch: a node that lost the service
  writes nothing. If that transaction fails, the service's state in memory
  goes back to the last one saved, so the change is confirmed and notified
  again by whoever owns the service then, never lost and never twice.
* A new owner resumes the saved state of the service: the last notified state
  is in it, so an unchanged state is not notified again.
* Each receiver's queue is delivered by the node that owns that receiver (a
  name ``@RECEIVER`` in the same rendezvous as the services), oldest first;
  the row leaves the outbox once sent (a trap) or acknowledged or given up
  (an inform). A new owner of the receiver takes over what is pending,
  informs included. A node fenced or no longer owning a receiver stops its
  delivery at once (an inform being retried included).
* The outbox rows of every node are numbered in the order of the sequence:
  each notifying transaction takes the sequence row's lock before it inserts,
  so row ids are committed in order and a reader never skips one.

The heartbeat is owned like a service (``@heartbeat``): its node sends the
whole cluster's counts, numbered in the cluster's sequence, through the
shared outbox.

SIGHUP reloads services and receivers (give every node the same file, then
signal each); ``store``, ``node``, ``lease``, ``state_dir`` and ``heartbeat``
change only with a restart.

With ``status_dir``, every node keeps a file for every service of the
cluster: its own services' files follow their checks, the others' follow the
states their owners save (within about two seconds).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Sequence

from snmp_watchdog import __version__, model, state
from snmp_watchdog.checks import run_check
from snmp_watchdog.clocks import to_mono, wall_time
from snmp_watchdog.cluster import Fenced, LeasePolicy
from snmp_watchdog.config import load_config
from snmp_watchdog.exceptions import ConfigError, StoreError
from snmp_watchdog.membership import Member, Owned
from snmp_watchdog.notify.engine import format_engine_id
from snmp_watchdog.notify.message import Message, MessageBuilder, decode, encode
from snmp_watchdog.notify.mib import Oids
from snmp_watchdog.notify.outbox import Dispatcher, Pending
from snmp_watchdog.notify.sender import Delivery, Sender
from snmp_watchdog.result import CheckResult
from snmp_watchdog.scheduler import Scheduler
from snmp_watchdog.statusfiles import StatusFiles
from snmp_watchdog.store_pg import PgStore

log = logging.getLogger("snmp_watchdog")

#: How often a receiver's owner looks for rows other nodes added to its queue.
POLL = 0.2
#: How often states that produced no notification are written.
FLUSH_EVERY = 1.0
#: The name under which one node at a time owns the heartbeat.
HEARTBEAT = "@heartbeat"


def receiver_key(name: str) -> str:
    """A receiver's name in the rendezvous (service names cannot contain '@')."""
    return f"@{name}"


def lease_policy(settings: model.Settings) -> LeasePolicy:
    """Renew every fifth of the lease; stop acting a fifth before it ends."""
    return LeasePolicy(
        ttl=settings.lease, renew_every=settings.lease / 5, margin=settings.lease / 5
    )


class ClusterQueue:
    """A receiver's queue read from the shared outbox, while this node owns the receiver."""

    def __init__(self, daemon: ClusterDaemon, receiver: str, *, window: int = 100) -> None:
        self._daemon = daemon
        self._receiver = receiver
        self._window = window
        self._items: collections.deque[Pending] = collections.deque()
        self._last_loaded = 0
        self._added = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._deleted: set[int] = set()

    def reset(self) -> None:
        """Forget what was loaded (ownership changed): read the outbox afresh."""
        self._items.clear()
        self._last_loaded = 0

    def wake(self) -> None:
        self._added.set()

    def append(self, item: Pending) -> None:  # the daemon writes rows itself
        raise AssertionError("rows are added by ClusterDaemon, in its transactions")

    def append_volatile(self, item: Pending) -> None:
        raise AssertionError("a cluster node has no notification kept only in memory")

    async def head(self) -> Pending:
        while True:
            if not self._items:
                await self._load()
            if self._items:
                return self._items[0]
            self._added.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._added.wait(), POLL)

    async def _load(self) -> None:
        try:
            rows = await self._daemon.store.pending(
                self._receiver, self._window, after=self._last_loaded
            )
        except StoreError as exc:
            log.debug("outbox of %s not readable now: %s", self._receiver, exc)
            return
        mono, wall = time.monotonic(), time.time()
        for row in rows:
            self._last_loaded = row.id
            try:
                message = decode(row.payload)
            except ValueError as exc:
                log.error("stored notification %d is unreadable and dropped: %s", row.id, exc)
                self._later(self._daemon.store.remove(row.id))
                continue
            submitted = to_mono(row.created, mono_now=mono, wall_now=wall)
            self._items.append(Pending(self._receiver, message, submitted, row.id))

    async def delete(self, item: Pending) -> None:
        """Delete the row of ``item``, which has left, before the next one is sent.

        Not fenced: a row that has left must go whoever owns the receiver now,
        so that a new owner does not send it again. The time between the send
        and this commit is the one window in which a node stopped or killed
        makes the next owner send a notification twice (same sequence number).
        """
        try:
            await self._daemon.store.remove(item.key)
        except StoreError as exc:
            log.warning("outbox of %s: %s", self._receiver, exc)
            self._later(self._daemon.store.remove(item.key))
        self._deleted.add(item.key)

    def remove(self, item: Pending) -> None:
        with contextlib.suppress(ValueError):
            self._items.remove(item)
        if item.key in self._deleted:
            self._deleted.discard(item.key)
        else:
            self._later(self._daemon.store.remove(item.key))

    def failed(self, item: Pending, error: str) -> None:
        self._later(self._daemon.store.mark_attempt(item.key, error))

    def clear(self) -> int:
        dropped = len(self._items)
        self.reset()
        return dropped

    def __len__(self) -> int:
        return len(self._items)

    def _later(self, write: Awaitable[object]) -> None:
        async def run() -> None:
            try:
                await write
            except StoreError as exc:
                log.warning("outbox of %s: %s", self._receiver, exc)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """Wait for the outbox writes started so far."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class ClusterDispatcher(Dispatcher):
    """A ``Dispatcher`` whose per-receiver delivery runs only while this node may send."""

    def __init__(self, daemon: ClusterDaemon, sender: Sender, receivers: Sequence[model.Receiver]):
        self._daemon = daemon
        super().__init__(sender, receivers, log=log, queue_factory=daemon.queue)

    async def halt(self, name: str) -> None:
        """Stop delivering to ``name`` now (an inform being retried included)."""
        worker = self._workers.pop(name, None)
        if worker is not None:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)

    def go(self, name: str) -> None:
        if name not in self._queues:
            self._queues[name] = self._queue_factory(name)
        self._ensure_worker(name)

    async def _attempt(self, item: Pending) -> Delivery:
        if not self._daemon.may_send(item.receiver):
            # Fenced or no longer the owner: never send; the halt cancels this worker.
            await asyncio.Event().wait()
        return await super()._attempt(item)

    async def _trap(self, item: Pending) -> None:
        if not self._daemon.may_send(item.receiver):
            await asyncio.Event().wait()
        await super()._trap(item)
        await self._daemon.queue(item.receiver).delete(item)

    async def _inform(self, item: Pending) -> None:
        await super()._inform(item)
        await self._daemon.queue(item.receiver).delete(item)


class ClusterDaemon:
    def __init__(self, config: model.Config) -> None:
        self.config = config
        settings = config.settings
        assert settings.store is not None
        self.node = settings.node or socket.gethostname()
        self.policy = lease_policy(settings)
        self.started = time.monotonic()
        self.store: PgStore
        self.lease_store: PgStore
        self.member: Member
        self.scheduler: Scheduler | None = None
        self.dispatcher: ClusterDispatcher | None = None
        self.builder = MessageBuilder(Oids(settings.oid_root))
        self.indexes: dict[str, int] = {}
        self.owned: Owned = {}
        self._queues: dict[str, ClusterQueue] = {}
        self._saved: dict[str, state.ServiceState] = {}  # as last written, per owned service
        self._dirty: dict[str, state.ServiceState] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._writes: set[asyncio.Task[None]] = set()
        self._changes: asyncio.Queue[Owned] = asyncio.Queue()
        self._stop = asyncio.Event()
        sd = config.settings.status_dir
        self.status_files = StatusFiles(sd) if sd is not None else None

    # -- reload --------------------------------------------------------------------

    def _names(self) -> list[str]:
        """Everything shared out: the services, the receivers' queues, the heartbeat."""
        names = [s.name for s in self.config.services]
        names += [receiver_key(r.name) for r in self.config.receivers]
        if self.config.settings.heartbeat > 0:
            names.append(HEARTBEAT)
        return names

    def _start_reload(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload(), name="reload")
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def reload(self) -> None:
        """SIGHUP: the new services and receivers; what needs a restart is said and kept."""
        log.info("SIGHUP received: reloading %s", self.config.path)
        try:
            config = load_config(self.config.path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload rejected: %s", problem)
            log.error("reload rejected: keeping the running configuration")
            return
        old = self.config.settings
        new = config.settings
        for key in ("store", "node", "lease", "state_dir", "heartbeat"):
            if getattr(new, key) != getattr(old, key):
                log.warning("%s changes only with a restart; keeping the running one", key)
        keep = {k: getattr(old, k) for k in ("store", "node", "lease", "state_dir", "heartbeat")}
        config = dataclasses.replace(config, settings=dataclasses.replace(new, **keep))
        try:
            indexes = await self.store.service_indexes(s.name for s in config.services)
        except StoreError as exc:
            log.error("reload rejected: %s", exc)
            return
        assert self.dispatcher is not None
        if config.receivers != self.config.receivers:
            await self.dispatcher.reconfigure(config.receivers)
        self.builder = MessageBuilder(Oids(config.settings.oid_root))
        self.indexes = indexes
        removed = {s.name for s in self.config.services} - {s.name for s in config.services}
        self.config = config
        sd = config.settings.status_dir
        if sd != (self.status_files.directory if self.status_files else None):
            self.status_files = StatusFiles(sd) if sd is not None else None
        elif self.status_files is not None:
            for name in removed:
                self.status_files.forget(name)
        # Owned services take their new definitions (keeping their state); new
        # ones are checked once the next rebalance gives them to a node.
        assert self.scheduler is not None
        self.scheduler.update(s for s in config.services if s.name in self.owned)
        self.member.poke()  # new names are shared out at once
        log.info(
            "configuration reloaded: %d services, %d receivers",
            len(config.services),
            len(config.receivers),
        )

    # -- ownership ---------------------------------------------------------------

    def queue(self, name: str) -> ClusterQueue:
        if name not in self._queues:
            self._queues[name] = ClusterQueue(self, name)
        return self._queues[name]

    def may_send(self, receiver: str) -> bool:
        return receiver_key(receiver) in self.owned and self.member.may_act()

    def _on_change(self, owned: Owned) -> None:
        self._changes.put_nowait(owned)

    async def _apply_changes(self) -> None:
        """Apply ownership changes in order: services to check, queues to deliver."""
        while True:
            owned = await self._changes.get()
            while not self._changes.empty():
                owned = self._changes.get_nowait()  # only the latest matters
            await self._apply(owned)

    async def _apply(self, owned: Owned) -> None:
        assert self.scheduler is not None
        assert self.dispatcher is not None
        old = self.owned
        services = [s for s in self.config.services if s.name in owned]
        gained = [s.name for s in services if old.get(s.name) != owned[s.name]]
        lost = [name for name in old if name not in owned and not name.startswith("@")]
        # Until their saved state is loaded, the services taken over are not ours yet.
        self.owned = {k: v for k, v in owned.items() if k not in gained}
        # Receivers lost (or re-owned under a new epoch: reload the queue) stop first.
        for r in self.config.receivers:
            key = receiver_key(r.name)
            if key in old and old.get(key) != owned.get(key):
                await self.dispatcher.halt(r.name)
                self.queue(r.name).reset()
        states: dict[str, state.ServiceState] = {}
        if gained:
            saved = await self._load_for_takeover()
            if saved is None:
                return  # a newer ownership came meanwhile: apply that one instead
            states = {name: saved.get(name, state.ServiceState()) for name in gained}
        self.owned = owned
        # Replace gained services' slots: their state is the one saved by the last owner.
        self.scheduler.update([s for s in services if s.name not in gained])
        self.scheduler.update(services)
        for name, st in states.items():
            self.scheduler.slots[name].state = st
            self._saved[name] = st
        for name in lost:
            self._saved.pop(name, None)
            self._dirty.pop(name, None)
        for r in self.config.receivers:
            if receiver_key(r.name) in owned:
                self.dispatcher.go(r.name)
        if owned.keys() != old.keys() or gained:
            log.info(
                "%s now checks %d service(s) (%d taken over, %d handed over) and delivers to %s",
                self.node,
                len(services),
                len(gained),
                len(lost),
                ", ".join(r.name for r in self.config.receivers if self.may_send(r.name))
                or "no receiver",
            )

    async def _load_for_takeover(self) -> dict[str, state.ServiceState] | None:
        """The saved states, read until the database answers; None when superseded.

        A service is never taken over without its saved state: starting it
        from unknown would notify a Down already notified by its last owner.
        """
        failing = False
        while True:
            try:
                return await self.store.load_states(mono_now=time.monotonic(), wall_now=time.time())
            except StoreError as exc:
                if not failing:
                    log.error("cannot load the state of the services taken over: %s", exc)
                failing = True
            await asyncio.sleep(self.policy.renew_every)
            if not self._changes.empty():
                return None

    # -- results -------------------------------------------------------------------

    def _on_result(
        self,
        svc: model.Service,
        st: state.ServiceState,
        result: CheckResult,
        notes: tuple[state.Notification, ...],
    ) -> None:
        assert self.scheduler is not None
        slot = self.scheduler.slots.get(svc.name)
        log.debug(
            "check %s: %s %s (%.1f ms)",
            svc.name,
            result.reason.code,
            result.detail,
            result.elapsed * 1000.0,
        )
        if slot is None or slot.service is not svc or svc.name not in self.owned:
            return  # handed over while the check ran
        if self.status_files is not None:
            self.status_files.update(svc.name, st)
        if not notes:
            self._dirty[svc.name] = st
            return
        self._dirty.pop(svc.name, None)
        task = asyncio.get_running_loop().create_task(self._persist_and_notify(svc, st, notes))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _persist_and_notify(
        self, svc: model.Service, st: state.ServiceState, notes: tuple[state.Notification, ...]
    ) -> None:
        lock = self._locks.setdefault(svc.name, asyncio.Lock())
        async with lock:  # one service's changes commit in the order they were made
            epoch = self.owned.get(svc.name)
            if epoch is None or not self.member.may_act():
                self._undo(svc.name, "this node may not act for it now")
                return
            try:
                async with self.store.fenced(svc.name, self.node, epoch):
                    await self.store.save_state(
                        svc.name, st, mono_now=time.monotonic(), wall_now=time.time()
                    )
                    for note in notes:
                        sequence = await self.store.next_sequence()
                        message = self._message(svc, note, sequence)
                        payload = encode(message)
                        for receiver in svc.receivers:
                            await self.store.enqueue(
                                receiver, payload, created=time.time(), sequence=sequence
                            )
            except Fenced as exc:
                self._undo(svc.name, f"no longer its owner ({exc})")
                return
            except StoreError as exc:
                self._undo(svc.name, f"the state database failed: {exc}")
                return
            self._saved[svc.name] = st
            for note in notes:
                level = logging.WARNING if note.state is state.State.DOWN else logging.INFO
                log.log(level, "%s is %s (notified)", svc.name, note.state.value.upper())
            for receiver in svc.receivers:
                self.queue(receiver).wake()

    def _undo(self, name: str, why: str) -> None:
        """The change was not saved: go back to the saved state, so it is confirmed again."""
        log.warning("%s: change not saved, to be confirmed again: %s", name, why)
        assert self.scheduler is not None
        slot = self.scheduler.slots.get(name)
        if slot is not None and name in self._saved:
            slot.state = self._saved[name]

    def _message(self, svc: model.Service, note: state.Notification, sequence: int) -> Message:
        return self.builder.service_event(
            kind=note.kind,
            service=svc,
            index=self.indexes[svc.name],
            state=note.state.value,
            previous=note.previous.value,
            reason=note.reason,
            detail=note.detail,
            count=note.count,
            elapsed=note.elapsed,
            at_wall=wall_time(note.at),
            sequence=sequence,
            flags="reminder" if note.reminder else "normal",
        )

    async def _heartbeat_loop(self) -> None:
        """The node owning the heartbeat sends the cluster's, through the shared outbox."""
        while True:
            await asyncio.sleep(self.config.settings.heartbeat)
            epoch = self.owned.get(HEARTBEAT)
            if epoch is None or not self.member.may_act():
                continue
            try:
                await self._heartbeat(epoch)
            except (Fenced, StoreError) as exc:
                log.warning("heartbeat not sent: %s", exc)

    async def _heartbeat(self, epoch: int) -> None:
        counts = await self.store.state_counts(s.name for s in self.config.services)
        async with self.store.fenced(HEARTBEAT, self.node, epoch):
            sequence = await self.store.next_sequence()
            message = self.builder.heartbeat(
                sequence=sequence, uptime=time.monotonic() - self.started, **counts
            )
            payload = encode(message)
            for r in self.config.receivers:
                await self.store.enqueue(r.name, payload, created=time.time(), sequence=sequence)
        log.info("heartbeat #%d", sequence)
        for r in self.config.receivers:
            self.queue(r.name).wake()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            await self._flush()
            if self.status_files is not None:
                await self._status_from_others()

    async def _status_from_others(self) -> None:
        """Status files of the services other nodes check, from the states they save."""
        assert self.status_files is not None
        try:
            saved = await self.store.load_states(mono_now=time.monotonic(), wall_now=time.time())
        except StoreError as exc:
            log.debug("status files of other nodes' services not refreshed: %s", exc)
            return
        for svc in self.config.services:
            st = saved.get(svc.name)
            if st is not None and svc.name not in self.owned:
                self.status_files.update(svc.name, st)

    async def _flush(self) -> None:
        dirty, self._dirty = self._dirty, {}
        batch = {n: (self.owned[n], st) for n, st in dirty.items() if n in self.owned}
        if not batch or not self.member.may_act():
            return
        try:
            refused = await self.store.save_owned_states(
                self.node, batch, mono_now=time.monotonic(), wall_now=time.time()
            )
        except StoreError as exc:
            log.debug("states not saved this time: %s", exc)
            self._dirty = {**dirty, **self._dirty}
            return
        for name in batch:
            if name not in refused:
                self._saved[name] = batch[name][1]

    # -- life cycle ----------------------------------------------------------------

    async def run(self) -> int:
        config = self.config
        settings = config.settings
        assert settings.store is not None
        password = settings.store_password.reveal() if settings.store_password else None
        log.info(
            "snmp-watchdog %s starting as node %s of a cluster: %d services, %d receivers",
            __version__,
            self.node,
            len(config.services),
            len(config.receivers),
        )
        url = settings.store

        async def open_store(pool_size: int) -> PgStore:
            return await PgStore.open(
                url,
                password=password,
                pool_size=pool_size,
                lock_timeout=self.policy.renew_every,
                idle_timeout=self.policy.margin,
            )

        self.store = await open_store(4)
        try:
            # The lease has a connection of its own: a burst of changes waiting
            # for the pool must never delay a renewal into self-fencing.
            self.lease_store = await open_store(1)
            try:
                return await self._run()
            finally:
                await self.lease_store.close()
        finally:
            await self.store.close()

    async def _run(self) -> int:
        config = self.config
        self.indexes = await self.store.service_indexes(s.name for s in config.services)
        sender = Sender(config.settings, config.receivers, started=self.started)
        await sender.start()
        log.info(
            "SNMP engine ID %s (boots %d)",
            format_engine_id(sender.engine_id),
            sender.engine_boots,
        )
        self.dispatcher = ClusterDispatcher(self, sender, config.receivers)
        self.scheduler = Scheduler(
            [],
            check=run_check,
            on_result=self._on_result,
            max_in_flight=config.settings.max_in_flight,
        )
        self._sender = sender
        self.member = Member(
            self.lease_store,
            self.node,
            self.policy,
            services=self._names,
            on_change=self._on_change,
        )
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._start_reload)
        tasks = [
            asyncio.create_task(self.scheduler.run(), name="scheduler"),
            asyncio.create_task(self.member.run(), name="membership"),
            asyncio.create_task(self._apply_changes(), name="ownership"),
            asyncio.create_task(self._flush_loop(), name="flush"),
        ]
        if config.settings.heartbeat > 0:
            tasks.append(asyncio.create_task(self._heartbeat_loop(), name="heartbeat"))
        log.info("ready")
        stopper = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait({*tasks, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper:
                    task.result()  # none ends by itself: surface its bug
        finally:
            log.info("stopping: handing the services over")
            self.scheduler.stop()
            for task in (*tasks, stopper):
                task.cancel()
            await asyncio.gather(*tasks, stopper, return_exceptions=True)
            if self._writes:
                await asyncio.gather(*self._writes, return_exceptions=True)
            with contextlib.suppress(StoreError):
                await self._flush()
            await self.member.leave()
            await self.dispatcher.close()
            for queue in self._queues.values():
                await queue.settle()
            await sender.close()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        log.info("stopped after %d checks", self.scheduler.checks_done)
        return 0
