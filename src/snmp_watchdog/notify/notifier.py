"""From the state machine's notifications to messages on their way to receivers.

Rules:

* Every notification, heartbeats included, gets the next number of the
  watchdog's sequence (kept in the state database), so a receiver can see a
  gap. A number handed out while the database could not be written is kept in
  memory and the stored sequence continues above it; once the database can
  be written again the stored sequence is brought up to it
  (``store_sequence``) even if nothing is numbered then, so that a restart,
  which continues after the last stored number, does not hand it out again.
* ``service_event`` only writes to the durable outbox (inside the caller's
  transaction, with the state that produced it) and returns; ``heartbeat``
  only queues in memory; the dispatcher's per-receiver workers deliver.
  Nothing here waits for the network. The store is the async ``StateStore``.
* A service's notifications go to its own receivers; heartbeats to all.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from snmp_watchdog import model, state
from snmp_watchdog.clocks import wall_time
from snmp_watchdog.exceptions import StoreError
from snmp_watchdog.notify.durable import StoreQueue
from snmp_watchdog.notify.engine import format_engine_id
from snmp_watchdog.notify.message import Message, MessageBuilder
from snmp_watchdog.notify.mib import Oids
from snmp_watchdog.notify.outbox import Dispatcher, Pending, PendingQueue, notification_label
from snmp_watchdog.notify.sender import Sender
from snmp_watchdog.notify.told import told_after

if TYPE_CHECKING:
    from snmp_watchdog.storage import StateStore

log = logging.getLogger("snmp_watchdog")


class OutboxQueue(PendingQueue, Protocol):
    """A receiver's queue in the store's outbox, which the notifier writes to."""

    async def write(self, item: Pending) -> int:
        """Write ``item`` to the outbox, in the caller's transaction; its row id."""
        ...

    async def count(self) -> int:
        """How many wait, counted in the store."""
        ...

    async def settle(self) -> None:
        """Wait for the queue's own writes started so far."""
        ...


class DispatcherFactory(Protocol):
    def __call__(
        self,
        sender: Sender,
        receivers: Sequence[model.Receiver],
        queue_factory: Callable[[str], PendingQueue],
    ) -> Dispatcher: ...


def _dispatcher(
    sender: Sender,
    receivers: Sequence[model.Receiver],
    queue_factory: Callable[[str], PendingQueue],
) -> Dispatcher:
    return Dispatcher(sender, receivers, log=log, queue_factory=queue_factory)


class Notifier:
    """Numbers notifications, writes them to the outbox and owns their delivery.

    ``queue`` makes a receiver's queue (the default: ``StoreQueue``, this
    process's own delivery), ``dispatcher`` the dispatcher; ``resume``: at
    ``start``, deliver what the outbox holds.
    """

    def __init__(
        self,
        config: model.Config,
        store: StateStore,
        *,
        started: float,
        queue: Callable[[str], OutboxQueue] | None = None,
        dispatcher: DispatcherFactory = _dispatcher,
        resume: bool = True,
    ) -> None:
        self._store = store
        self._started = started
        self._builder = MessageBuilder(Oids(config.settings.oid_root))
        self._all = tuple(r.name for r in config.receivers)
        # The last number used, also while the store was failing (read by ``start``).
        self.last_sequence = 0
        self._unstored = False  # a number was handed out that the store does not know
        self.sender = Sender(config.settings, config.receivers, started=started)
        self._make_queue = queue or (lambda name: StoreQueue(store, name))
        self._resume = resume
        self._queues: dict[str, OutboxQueue] = {}  # the dispatcher's, to write to
        self.dispatcher = dispatcher(self.sender, config.receivers, self._queue)

    def _queue(self, name: str) -> OutboxQueue:
        queue = self._queues[name] = self._make_queue(name)
        return queue

    @contextlib.asynccontextmanager
    async def numbering(self) -> AsyncIterator[None]:
        """Around a transaction that numbers notifications: if it fails, so do the numbers.

        The numbers it took are handed out again (the store's sequence rolled
        back with it), so that notifications sent from memory instead keep them.
        """
        before = self.last_sequence
        try:
            yield
        except BaseException:
            self.last_sequence = before
            raise

    async def start(self) -> None:
        self.last_sequence = await self._store.last_sequence()
        await self.sender.start()
        log.info(
            "SNMP engine ID %s (boots %d)",
            format_engine_id(self.sender.engine_id),
            self.sender.engine_boots,
        )
        if not self._resume:
            return
        waiting = 0
        for name, count in (await self._store.pending_counts()).items():
            if name in self._all and count:
                self.dispatcher.wake(name)
                waiting += await self._queues[name].count()
        if waiting:
            log.info("%d notification(s) from before the restart are being delivered", waiting)

    async def _sequence(self, durable: bool) -> int:
        if durable:
            self.last_sequence = await self._store.next_sequence(above=self.last_sequence)
            self._unstored = False
        else:
            self.last_sequence += 1
            self._unstored = True
        return self.last_sequence

    async def store_sequence(self) -> None:
        """Store the last number if it was handed out from memory only (StoreError if not)."""
        if not self._unstored:
            return
        last = self.last_sequence
        if await self._store.last_sequence() < last:
            await self._store.next_sequence(above=last - 1)  # stores ``last`` itself
        if self.last_sequence == last:
            self._unstored = False

    async def service_event(
        self,
        svc: model.Service,
        index: int,
        note: state.Notification,
        *,
        flags: str = "normal",
        receivers: tuple[str, ...] | None = None,
        durable: bool = True,
    ) -> Message:
        """Queue the notification for the service's receivers (or ``receivers``).

        ``durable`` (the default) writes it to the outbox: call it inside the
        transaction that saves the state, within ``numbering()``. If that
        transaction fails, call again with ``durable=False``.
        """
        message = self._builder.service_event(
            kind=note.kind,
            service=svc,
            index=index,
            state=note.state,
            previous=note.previous,
            reason=note.reason,
            detail=note.detail,
            count=note.count,
            elapsed=note.elapsed,
            at_wall=wall_time(note.at),
            sequence=await self._sequence(durable),
            flags="reminder" if note.reminder else flags,
        )
        targets = svc.receivers if receivers is None else receivers
        if not durable:
            self.dispatcher.submit(message, targets, volatile=True)
            return message
        await self._write(message, targets)
        if note.kind in (state.Kind.DOWN, state.Kind.UP):
            # What the Up closing a Down needs, should the service leave the file while stopped.
            await self._store.save_told(svc.name, told_after(svc, note, flags, targets))
        return message

    async def _write(self, message: Message, targets: Sequence[str]) -> None:
        now = time.monotonic()
        for name in targets:
            if not self.dispatcher.wake(name):
                log.warning("%s: no receiver named %r", notification_label(message), name)
                continue
            await self._queues[name].write(Pending(name, message, now))

    async def heartbeat(
        self, *, up: int, down: int, unknown: int, durable: bool = False
    ) -> Message:
        """Queue a heartbeat for every receiver (in memory: a missed one has no value later).

        Its number is taken from the stored sequence like any other, so that
        a restart does not hand it out again. ``durable``: written to the
        outbox like a service's notification instead (in the caller's
        transaction, within ``numbering()``), for whoever delivers it.
        """
        if durable:
            sequence = await self._sequence(durable=True)
        else:
            try:
                sequence = await self._sequence(durable=True)
            except StoreError:
                sequence = await self._sequence(durable=False)
        message = self._builder.heartbeat(
            sequence=sequence,
            up=up,
            down=down,
            unknown=unknown,
            uptime=time.monotonic() - self._started,
        )
        if durable:
            await self._write(message, self._all)
        else:
            self.dispatcher.submit(message, self._all, volatile=True)
        return message

    async def reconfigure(self, config: model.Config) -> None:
        self._builder = MessageBuilder(Oids(config.settings.oid_root))
        self._all = tuple(r.name for r in config.receivers)
        await self.dispatcher.reconfigure(
            config.receivers, allow_weak_crypto=config.settings.allow_weak_crypto
        )

    def store_writable(self) -> None:
        """The state database can be written again: delete what was delivered meanwhile."""
        for queue in self._queues.values():
            if isinstance(queue, StoreQueue):
                queue.retry_deletes()

    async def close(self) -> None:
        await self.dispatcher.close()
        for queue in self._queues.values():
            await queue.settle()
        await self.sender.close()
