"""``watchdog run`` with ``watchdog.store: postgresql://...``: one node of a cluster.

The daemon is ``daemon.Daemon``, the same as alone; this module is what a
cluster node does differently (``ClusterNode``, its placement): what it owns,
how its writes are fenced, and the receivers' queues read from the shared
outbox (``ClusterQueue``, ``ClusterDispatcher``).

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
  (an inform). One node at a time delivers a queue: it claims it in the
  database first (fenced on the receiver's epoch), and a new owner waits
  until the old one has released it or its lease has run out. A node no
  longer owning a receiver finishes the notification in hand (the send and
  the row's delete) while its lease lasts, then stops (an inform waiting to
  be retried at once) and releases the queue; a fenced node stops at once.
* The outbox rows of every node are numbered in the order of the sequence:
  each notifying transaction takes the sequence row's lock before it inserts,
  so row ids are committed in order and a reader never skips one.

The heartbeat is owned like a service (``@heartbeat``): its node sends the
whole cluster's counts, numbered in the cluster's sequence, through the
shared outbox.

SIGHUP reloads as alone (give every node the same file, then signal each):
a receiver that stops hearing of a service that is down gets an Up flagged
``removed``, one newly given a down service gets its Down flagged ``added``
(both written to the shared outbox by the service's owner, numbered in the
cluster's sequence); the queues of removed receivers are discarded and the
states of removed services forgotten (by every node: whoever comes first);
the heartbeat follows the file. At start, the states of services no longer
in the file are forgotten and their open Downs closed as alone, once, by the
first node to forget them. ``store``, ``store_password``, ``node``,
``lease``, ``state_dir`` and ``engine_id`` change only with a restart.

With ``status_dir``, every node keeps a file for every service of the
cluster: its own services' files follow their checks, the others' follow the
states their owners save (within about two seconds).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from snmp_watchdog import model, state
from snmp_watchdog.clocks import to_mono
from snmp_watchdog.cluster import Fenced, LeasePolicy
from snmp_watchdog.daemon import Standalone
from snmp_watchdog.exceptions import StoreError
from snmp_watchdog.membership import Member, Owned
from snmp_watchdog.notify.message import Message, decode, encode
from snmp_watchdog.notify.notifier import Notifier
from snmp_watchdog.notify.outbox import Dispatcher, Pending, PendingQueue
from snmp_watchdog.notify.sender import Delivery, Sender
from snmp_watchdog.store_pg import PgStore

if TYPE_CHECKING:
    from snmp_watchdog.daemon import Daemon

log = logging.getLogger("snmp_watchdog")

#: How often a receiver's owner looks for rows other nodes added to its queue.
POLL = 0.2
#: The name under which one node at a time owns the heartbeat.
HEARTBEAT = "@heartbeat"

#: The first and the longest wait before deleting again an outbox row whose deletion failed.
RETRY_DELETE_FIRST = 0.5
RETRY_DELETE_MAX = 10.0


def receiver_key(name: str) -> str:
    """A receiver's name in the rendezvous (service names cannot contain '@')."""
    return f"@{name}"


def lease_policy(settings: model.Settings) -> LeasePolicy:
    """Renew every fifth of the lease; stop acting a fifth before it ends."""
    return LeasePolicy(
        ttl=settings.lease, renew_every=settings.lease / 5, margin=settings.lease / 5
    )


class ClusterQueue:
    """A receiver's queue read from the shared outbox, while this node owns the receiver.

    Nothing is read or sent before the node has claimed the delivery of the
    queue in the database (``PgStore.claim_delivery``): a new owner waits
    until the previous one has released it (its item in hand gone, its row
    deleted) or its lease has run out, so two nodes never send at once.
    """

    def __init__(
        self,
        store: PgStore,
        receiver: str,
        *,
        node: str,
        epoch: Callable[[], int | None],
        window: int = 100,
    ) -> None:
        self._store = store
        self._receiver = receiver
        self._node = node
        self._epoch = epoch  # the epoch this node owns the receiver under (None: not now)
        self._window = window
        self._claimed: int | None = None  # the epoch of the claim this node holds
        self._releasing: asyncio.Task[None] | None = None
        self._waiting = False
        self._items: collections.deque[Pending] = collections.deque()
        self._last_loaded = 0
        self._added = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._deleted: set[int] = set()
        # Rows sent or given up whose deletion failed: deleted again until it works,
        # and never loaded again meanwhile (this node would send them twice).
        self._undeleted: set[int] = set()
        self._retries: set[asyncio.Task[None]] = set()  # deleting those

    def reset(self) -> None:
        """Forget what was loaded (ownership changed): read the outbox afresh."""
        self._items.clear()
        self._last_loaded = 0

    def wake(self) -> None:
        self._added.set()

    async def write(self, item: Pending) -> int:
        """Add ``item`` to the shared outbox (in the caller's transaction)."""
        row = await self._store.enqueue(
            self._receiver,
            encode(item.message),
            created=time.time(),
            sequence=item.message.sequence,
        )
        self.wake()
        return row

    async def count(self) -> int:
        return len(self)

    def append(self, item: Pending) -> None:
        raise AssertionError("stored notifications are added with write(), in a transaction")

    def append_volatile(self, item: Pending) -> None:
        raise AssertionError("a cluster node has no notification kept only in memory")

    async def head(self) -> Pending:
        while True:
            if await self._claim():
                if not self._items:
                    await self._load()
                if self._items:
                    return self._items[0]
            self._added.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._added.wait(), POLL)

    async def _claim(self) -> bool:
        """True when this node holds the delivery of the queue (claimed now if need be)."""
        epoch = self._epoch()
        if epoch is None:
            return False
        if self._claimed == epoch:
            return True
        if self._releasing is not None and not self._releasing.done():
            return False  # an earlier claim is still being given up
        try:
            ok = await self._store.claim_delivery(
                self._receiver, receiver_key(self._receiver), self._node, epoch
            )
        except StoreError as exc:
            log.debug("delivery to %s not claimable now: %s", self._receiver, exc)
            return False
        if not ok:
            if not self._waiting:
                log.info("%s: waiting for the previous owner to hand over", self._receiver)
            self._waiting = True
            return False
        self._waiting = False
        self._claimed = epoch
        self.reset()  # what the previous holder left, read afresh
        return True

    def release(self) -> asyncio.Task[None] | None:
        """Give up the delivery of the queue, in the background (the task, if any).

        The rows already sent are deleted first; a database that does not
        answer delays the release, never the caller.
        """
        self.reset()
        epoch, self._claimed = self._claimed, None
        if epoch is None:
            return None
        self._releasing = asyncio.get_running_loop().create_task(self._release(epoch))
        return self._releasing

    async def _release(self, epoch: int) -> None:
        await self.settle()
        if self._retries:  # rows that left: the next owner would send them again
            await asyncio.gather(*self._retries, return_exceptions=True)
        failing = False
        while True:
            try:
                await self._store.release_delivery(self._receiver, self._node, epoch)
            except StoreError as exc:
                if not failing:
                    log.warning("outbox of %s: %s; handing it over later", self._receiver, exc)
                failing = True
            else:
                return
            await asyncio.sleep(1.0)

    async def _load(self) -> None:
        try:
            rows = await self._store.pending(self._receiver, self._window, after=self._last_loaded)
        except StoreError as exc:
            log.debug("outbox of %s not readable now: %s", self._receiver, exc)
            return
        mono, wall = time.monotonic(), time.time()
        for row in rows:
            self._last_loaded = row.id
            if row.id in self._undeleted:
                continue
            try:
                message = decode(row.payload)
            except ValueError as exc:
                log.error("stored notification %d is unreadable and dropped: %s", row.id, exc)
                self._drop(row.id)
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
            await self._store.remove(item.key)
        except StoreError as exc:
            log.warning(
                "outbox of %s: %s; its row of notification #%d is deleted again until it goes",
                self._receiver,
                exc,
                item.message.sequence,
            )
            self._drop(item.key, retry_after=RETRY_DELETE_FIRST)
        self._deleted.add(item.key)

    def remove(self, item: Pending) -> None:
        with contextlib.suppress(ValueError):
            self._items.remove(item)
        if item.key in self._deleted:
            self._deleted.discard(item.key)
        else:
            self._drop(item.key)

    def _drop(self, key: int, *, retry_after: float = 0.0) -> None:
        """Delete row ``key`` in the background, again and again until it is gone.

        Until then it is not loaded again, and the delivery of the queue is
        not released (the release waits for it): while this node lives,
        nobody sends it again. Only a node that stops or loses its lease
        meanwhile leaves it to be sent twice (a stop does not wait for it
        longer than the lease).
        """
        self._undeleted.add(key)
        task = asyncio.get_running_loop().create_task(self._delete_until_done(key, retry_after))
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _delete_until_done(self, key: int, delay: float) -> None:
        failing = False
        while True:
            if delay:
                await asyncio.sleep(delay)
            try:
                await self._store.remove(key)
            except StoreError as exc:
                if not failing:
                    log.debug("outbox of %s: %s; deleting %d again", self._receiver, exc, key)
                failing = True
                delay = min(max(delay * 2, RETRY_DELETE_FIRST), RETRY_DELETE_MAX)
                continue
            self._undeleted.discard(key)
            return

    def failed(self, item: Pending, error: str) -> None:
        self._later(self._store.mark_attempt(item.key, error))

    def clear(self) -> int:
        """The receiver was removed: the daemon discards its rows (and says how many)."""
        self.reset()
        return 0

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
    """A ``Dispatcher`` whose per-receiver delivery runs only while this node may send.

    A notification in hand (from its send to the deletion of its row) is
    finished before its receiver's delivery stops, while the lease lasts:
    stopping between the two would leave the row to be sent again.
    """

    def __init__(
        self,
        node: ClusterNode,
        sender: Sender,
        receivers: Sequence[model.Receiver],
        queue_factory: Callable[[str], PendingQueue],
    ) -> None:
        self._node = node
        super().__init__(sender, receivers, log=log, queue_factory=queue_factory)
        self._stopping: set[str] = set()
        self._idle: dict[str, asyncio.Event] = {}  # clear while a notification is in hand

    def _idle_event(self, name: str) -> asyncio.Event:
        if name not in self._idle:
            self._idle[name] = asyncio.Event()
            self._idle[name].set()
        return self._idle[name]

    async def halt(self, name: str) -> asyncio.Task[None] | None:
        """Stop delivering to ``name``, then hand its queue over (the release's task).

        The notification in hand, if any, is finished first (sent, its row
        deleted) while the lease lasts; an inform waiting to be retried, or a
        node whose lease has run out, stops at once.
        """
        restart = self._restarts.pop(name, None)
        if restart is not None:
            restart.cancel()
        worker = self._workers.get(name)
        if worker is not None:
            self._stopping.add(name)  # no new attempt starts
            try:
                idle = self._idle_event(name)
                if not idle.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(idle.wait(), self._node.lease_left())
                worker.cancel()
                await asyncio.gather(worker, return_exceptions=True)
            finally:
                self._stopping.discard(name)
                if self._workers.get(name) is worker:
                    del self._workers[name]
                self._idle_event(name).set()
        return self._node.queue(name).release()

    async def halt_all(self) -> None:
        """Stop delivering to every receiver and hand the queues over (a clean stop)."""
        releases = [await self.halt(name) for name in list(self._queues)]
        waiting = [r for r in releases if r is not None]
        if waiting:
            await asyncio.wait(waiting, timeout=max(self._node.lease_left(), 0.001))

    def go(self, name: str) -> None:
        """Deliver to ``name``: this node owns it now."""
        if name not in self._queues:
            self._queues[name] = self._queue_factory(name)
        self._ensure_worker(name)

    def wake(self, name: str) -> bool:
        """Rows were written for ``name``: its owner delivers them (another node polls)."""
        if name not in self._receivers:
            return False
        if name not in self._queues:
            self._queues[name] = self._queue_factory(name)
        self._node.queue(name).wake()
        return True

    async def _attempt(self, item: Pending) -> Delivery:
        name = item.receiver
        if name in self._stopping or not self._node.may_send(name):
            # Fenced, no longer the owner or stopping: never send; the halt cancels this worker.
            await asyncio.Event().wait()
        idle = self._idle_event(name)
        idle.clear()
        delivery = await super()._attempt(item)
        if delivery.unsent or (self._receivers[name].informs and delivery.error is not None):
            idle.set()  # nothing was delivered: a halt need not wait for a retry
        return delivery

    async def _trap(self, item: Pending) -> None:
        try:
            await super()._trap(item)
            await self._node.queue(item.receiver).delete(item)
        finally:
            self._idle_event(item.receiver).set()

    async def _inform(self, item: Pending) -> None:
        try:
            await super()._inform(item)
            await self._node.queue(item.receiver).delete(item)
        finally:
            self._idle_event(item.receiver).set()


class ClusterNode(Standalone):
    """The placement of a node of a cluster: what the membership gives it is its own.

    It checks the services it owns and delivers the queues of the receivers
    it owns (``@RECEIVER``), and sends the heartbeat when it owns
    ``@heartbeat``; every write for a service is fenced on the service's
    epoch. A change whose fenced commit fails goes back to the state last
    saved, to be confirmed and notified again by whoever owns the service.
    """

    fenced = True
    restart_only = ("store", "store_password", "node", "lease")

    def __init__(self, settings: model.Settings, store: PgStore, lease_store: PgStore) -> None:
        super().__init__(store)
        self.pg = store
        self.lease_store = lease_store
        self.node = self.name_of(settings)
        self.policy = lease_policy(settings)
        self.member: Member | None = None
        self.dispatcher: ClusterDispatcher | None = None
        self.owned: Owned = {}
        self._queues: dict[str, ClusterQueue] = {}
        self._saved: dict[str, state.ServiceState] = {}  # as last written, per owned service
        self._changes: asyncio.Queue[Owned] = asyncio.Queue()
        self._releases: set[asyncio.Task[None]] = set()  # of removed receivers' queues

    @staticmethod
    def name_of(settings: model.Settings) -> str:
        return settings.node or socket.gethostname()

    @classmethod
    async def open(cls, settings: model.Settings) -> ClusterNode:
        assert settings.store is not None
        password = settings.store_password.reveal() if settings.store_password else None
        policy = lease_policy(settings)
        url = settings.store

        async def open_store(pool_size: int) -> PgStore:
            return await PgStore.open(
                url,
                password=password,
                pool_size=pool_size,
                lock_timeout=policy.renew_every,
                idle_timeout=policy.margin,
            )

        store = await open_store(4)
        try:
            # The lease has a connection of its own: a burst of changes waiting
            # for the pool must never delay a renewal into self-fencing.
            lease_store = await open_store(1)
        except BaseException:
            await store.close()
            raise
        return cls(settings, store, lease_store)

    async def close(self) -> None:
        try:
            await self.lease_store.close()
        finally:
            await self.pg.close()

    # -- the daemon's placement -------------------------------------------------------

    def _daemon(self) -> Daemon:
        assert self.daemon is not None
        return self.daemon

    def _config(self) -> model.Config:
        config = self._daemon().config
        assert config is not None
        return config

    async def start(self, daemon: Daemon, config: model.Config) -> dict[str, state.ServiceState]:
        """Nothing is owned yet: services come with the membership's first answer.

        The states of services no longer configured are forgotten (their open
        Downs closed) as alone: by whichever node comes first.
        """
        self.daemon = daemon
        saved = await self.pg.load_states(mono_now=time.monotonic(), wall_now=time.time())
        await daemon._forget_removed(config, self.pg, saved)
        daemon.indexes = await self.pg.service_indexes(s.name for s in config.services)
        # Nothing is in this node's hands yet: queues it held before a restart are free.
        await self.pg.release_deliveries(self.node)
        return {}

    def notifier(self, config: model.Config, started: float) -> Notifier:
        def dispatcher(
            sender: Sender,
            receivers: Sequence[model.Receiver],
            queue_factory: Callable[[str], PendingQueue],
        ) -> Dispatcher:
            self.dispatcher = ClusterDispatcher(self, sender, receivers, queue_factory)
            return self.dispatcher

        return Notifier(
            config, self.pg, started=started, queue=self.queue, dispatcher=dispatcher, resume=False
        )

    async def started(self, notifier: Notifier) -> list[Coroutine[Any, Any, None]]:
        self.member = Member(
            self.lease_store,
            self.node,
            self.policy,
            services=self._names,
            on_change=self._changes.put_nowait,
        )
        return [self.member.run(), self._apply_changes()]

    @property
    def agent(self) -> bool:
        return False

    def scheduled(self, services: Iterable[model.Service]) -> list[model.Service]:
        return [s for s in services if s.name in self.owned]

    def owns(self, name: str) -> bool:
        return name in self.owned

    @contextlib.asynccontextmanager
    async def transaction(self, name: str | None) -> AsyncIterator[None]:
        """A transaction fenced on service ``name``'s epoch, held by this node."""
        assert name is not None, "a cluster node's writes are fenced on one service"
        epoch = self.owned.get(name)
        if epoch is None or self.member is None or not self.member.may_act():
            raise Fenced("this node may not act for it now")
        async with self.pg.fenced(name, self.node, epoch):
            yield

    def saved(self, name: str, st: state.ServiceState) -> None:
        self._saved[name] = st

    def undo(self, name: str, why: str) -> None:
        """The change was not saved: go back to the saved state, so it is confirmed again."""
        log.warning("%s: change not saved, to be confirmed again: %s", name, why)
        scheduler = self._daemon().scheduler
        assert scheduler is not None
        slot = scheduler.slots.get(name)
        if slot is not None and name in self._saved:
            slot.state = self._saved[name]

    async def save_states(self, states: dict[str, state.ServiceState]) -> None:
        batch = {n: (self.owned[n], st) for n, st in states.items() if n in self.owned}
        if not batch or self.member is None or not self.member.may_act():
            return
        try:
            refused = await self.pg.save_owned_states(
                self.node, batch, mono_now=time.monotonic(), wall_now=time.time()
            )
        except StoreError as exc:
            log.debug("states not saved this time: %s", exc)
            raise
        for name in batch:
            if name not in refused:
                self._saved[name] = batch[name][1]

    async def flushed(self) -> None:
        """Status files of the services other nodes check, from the states they save."""
        daemon = self._daemon()
        if daemon.status_files is None:
            return
        try:
            saved = await self.pg.load_states(mono_now=time.monotonic(), wall_now=time.time())
        except StoreError as exc:
            log.debug("status files of other nodes' services not refreshed: %s", exc)
            return
        for svc in self._config().services:
            st = saved.get(svc.name)
            if st is not None and svc.name not in self.owned:
                daemon.status_files.update(svc.name, st)

    async def heartbeat(self, notifier: Notifier, counts: dict[str, int]) -> Message | None:
        """The node owning the heartbeat sends the cluster's, through the shared outbox."""
        epoch = self.owned.get(HEARTBEAT)
        if epoch is None or self.member is None or not self.member.may_act():
            return None
        try:
            every = await self.pg.state_counts(s.name for s in self._config().services)
            async with notifier.numbering(), self.pg.fenced(HEARTBEAT, self.node, epoch):
                return await notifier.heartbeat(
                    up=every["up"], down=every["down"], unknown=every["unknown"], durable=True
                )
        except (Fenced, StoreError) as exc:
            log.warning("heartbeat not sent: %s", exc)
            return None

    async def reloaded(self, old: model.Config, new: model.Config) -> None:
        """Discard the queues of removed receivers; new names are shared out at once."""
        await self._daemon()._discard_orphans(new, self.pg)
        kept = {r.name for r in new.receivers}
        for name in [n for n in self._queues if n not in kept]:
            release = self._queues.pop(name).release()
            if release is not None:  # kept until done: the queue is gone
                self._releases.add(release)
                release.add_done_callback(self._releases.discard)
        assert self.member is not None
        self.member.poke()

    async def stop(self) -> None:
        log.info("stopping: handing the services over")
        if self.dispatcher is not None and self.member is not None and self.member.may_act():
            await self.dispatcher.halt_all()  # the notifications in hand leave first
        if self.member is not None:
            await self.member.leave()

    # -- ownership ---------------------------------------------------------------------

    def _names(self) -> list[str]:
        """Everything shared out: the services, the receivers' queues, the heartbeat."""
        config = self._config()
        names = [s.name for s in config.services]
        names += [receiver_key(r.name) for r in config.receivers]
        if config.settings.heartbeat > 0:
            names.append(HEARTBEAT)
        return names

    def queue(self, name: str) -> ClusterQueue:
        if name not in self._queues:
            self._queues[name] = ClusterQueue(
                self.pg, name, node=self.node, epoch=lambda: self._sending_epoch(name)
            )
        return self._queues[name]

    def _sending_epoch(self, receiver: str) -> int | None:
        """The epoch this node owns ``receiver`` under, while it may send; else None."""
        if self.member is None or not self.member.may_act():
            return None
        return self.owned.get(receiver_key(receiver))

    def may_send(self, receiver: str) -> bool:
        return self._sending_epoch(receiver) is not None

    def lease_left(self) -> float:
        """Seconds this node may still act (0 when fenced)."""
        if self.member is None:
            return 0.0
        return self.member.lease.remaining(time.monotonic())

    async def _apply_changes(self) -> None:
        """Apply ownership changes in order: services to check, queues to deliver."""
        while True:
            owned = await self._changes.get()
            while not self._changes.empty():
                owned = self._changes.get_nowait()  # only the latest matters
            async with self._daemon()._reload_lock:  # not halfway through a reload
                await self._apply(owned)

    async def _apply(self, owned: Owned) -> None:
        scheduler = self._daemon().scheduler
        assert scheduler is not None
        assert self.dispatcher is not None
        config = self._config()
        old = self.owned
        services = [s for s in config.services if s.name in owned]
        gained = [s.name for s in services if old.get(s.name) != owned[s.name]]
        lost = [name for name in old if name not in owned and not name.startswith("@")]
        # Until their saved state is loaded, the services taken over are not ours yet.
        self.owned = {k: v for k, v in owned.items() if k not in gained}
        # Receivers lost (or re-owned under a new epoch: reload the queue) stop first.
        for r in config.receivers:
            key = receiver_key(r.name)
            if key in old and old.get(key) != owned.get(key):
                await self.dispatcher.halt(r.name)
        states: dict[str, state.ServiceState] = {}
        if gained:
            saved = await self._load_for_takeover()
            if saved is None:
                return  # a newer ownership came meanwhile: apply that one instead
            states = {name: saved.get(name, state.ServiceState()) for name in gained}
        self.owned = owned
        # Replace gained services' slots: their state is the one saved by the last owner.
        scheduler.update([s for s in services if s.name not in gained])
        scheduler.update(services)
        for name, st in states.items():
            scheduler.slots[name].state = st
            self._saved[name] = st
        for name in lost:
            self._saved.pop(name, None)
            self._daemon()._dirty.pop(name, None)
        for r in config.receivers:
            if receiver_key(r.name) in owned:
                self.dispatcher.go(r.name)
        if owned.keys() != old.keys() or gained:
            log.info(
                "%s now checks %d service(s) (%d taken over, %d handed over) and delivers to %s",
                self.node,
                len(services),
                len(gained),
                len(lost),
                ", ".join(r.name for r in config.receivers if self.may_send(r.name))
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
                return await self.pg.load_states(mono_now=time.monotonic(), wall_now=time.time())
            except StoreError as exc:
                if not failing:
                    log.error("cannot load the state of the services taken over: %s", exc)
                failing = True
            await asyncio.sleep(self.policy.renew_every)
            if not self._changes.empty():
                return None
