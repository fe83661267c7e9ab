"""From the state machine's notifications to messages on their way to receivers.

Rules:

* Every notification, heartbeats included, gets the next number of the
  watchdog's sequence (kept in the state database), so a receiver can see a
  gap. A number handed out while the database could not be written is kept in
  memory and the stored sequence continues above it; a restart continues
  after the last stored number, never below it.
* ``service_event`` and ``heartbeat`` only write to the durable outbox (inside
  the caller's transaction, with the state that produced them) and return;
  the dispatcher's per-receiver workers deliver. Nothing here waits for the
  network.
* A service's notifications go to its own receivers; heartbeats to all.
"""

from __future__ import annotations

import logging
import time

from snmp_watchdog import model, state
from snmp_watchdog.clocks import wall_time
from snmp_watchdog.exceptions import StoreError
from snmp_watchdog.notify.durable import StoreQueue
from snmp_watchdog.notify.engine import format_engine_id
from snmp_watchdog.notify.message import Message, MessageBuilder
from snmp_watchdog.notify.mib import Oids
from snmp_watchdog.notify.outbox import Dispatcher
from snmp_watchdog.notify.sender import Sender
from snmp_watchdog.store import Store

log = logging.getLogger("snmp_watchdog")


class Notifier:
    def __init__(self, config: model.Config, store: Store, *, started: float) -> None:
        self._store = store
        self._started = started
        self._builder = MessageBuilder(Oids(config.settings.oid_root))
        self._all = tuple(r.name for r in config.receivers)
        # The last number used, also while the store was failing.
        self.last_sequence = store.last_sequence()
        self.sender = Sender(config.settings, config.receivers, started=started)
        self.dispatcher = Dispatcher(
            self.sender,
            config.receivers,
            log=log,
            queue_factory=lambda name: StoreQueue(store, name),
        )

    async def start(self) -> None:
        await self.sender.start()
        log.info(
            "SNMP engine ID %s (boots %d)",
            format_engine_id(self.sender.engine_id),
            self.sender.engine_boots,
        )
        self.dispatcher.resume()
        waiting = self.dispatcher.pending()
        if waiting:
            log.info("%d notification(s) from before the restart are being delivered", waiting)

    def _sequence(self, durable: bool) -> int:
        if durable:
            self.last_sequence = self._store.next_sequence(above=self.last_sequence)
        else:
            self.last_sequence += 1
        return self.last_sequence

    def service_event(
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
        transaction that saves the state. If that transaction fails, set
        ``last_sequence`` back and call again with ``durable=False``.
        """
        message = self._builder.service_event(
            kind=note.kind,
            service=svc,
            index=index,
            state=note.state.value,
            previous=note.previous.value,
            reason=note.reason,
            detail=note.detail,
            count=note.count,
            elapsed=note.elapsed,
            at_wall=wall_time(note.at),
            sequence=self._sequence(durable),
            flags="reminder" if note.reminder else flags,
        )
        targets = svc.receivers if receivers is None else receivers
        self.dispatcher.submit(message, targets, volatile=not durable)
        return message

    def heartbeat(self, *, up: int, down: int, unknown: int) -> Message:
        """Queue a heartbeat for every receiver (in memory: a missed one has no value later).

        Its number is taken from the stored sequence like any other, so that
        a restart does not hand it out again.
        """
        try:
            sequence = self._sequence(durable=True)
        except StoreError:
            sequence = self._sequence(durable=False)
        message = self._builder.heartbeat(
            sequence=sequence,
            up=up,
            down=down,
            unknown=unknown,
            uptime=time.monotonic() - self._started,
        )
        self.dispatcher.submit(message, self._all, volatile=True)
        return message

    async def reconfigure(self, config: model.Config) -> None:
        self._builder = MessageBuilder(Oids(config.settings.oid_root))
        self._all = tuple(r.name for r in config.receivers)
        await self.dispatcher.reconfigure(
            config.receivers, allow_weak_crypto=config.settings.allow_weak_crypto
        )

    async def close(self) -> None:
        await self.dispatcher.close()
        await self.sender.close()
