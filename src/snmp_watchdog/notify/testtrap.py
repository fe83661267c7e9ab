"""``watchdog test-trap``: prove the path to the receivers.

Sends the MIB's test notification (or, for a service, a Down then an Up
marked as tests) to each chosen receiver at once, through the same sender the
daemon uses, and reports per receiver what happened. Test notifications carry
sequence number 0: they are not part of the daemon's sequence, so they open no
gap in it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from snmp_watchdog import model, state
from snmp_watchdog.notify.message import Message, MessageBuilder
from snmp_watchdog.notify.mib import Oids
from snmp_watchdog.notify.sender import Delivery, Sender
from snmp_watchdog.reasons import Reason
from snmp_watchdog.snmp import Mode

TEST_SEQUENCE = 0


@dataclass(frozen=True, slots=True)
class Outcome:
    receiver: model.Receiver
    deliveries: tuple[Delivery, ...]

    @property
    def ok(self) -> bool:
        """Delivered: every trap left, every inform was acknowledged."""
        return all(
            d.error is None and (d.acknowledged or not self.receiver.informs)
            for d in self.deliveries
        )


def messages(config: model.Config, service: model.Service | None, index: int) -> list[Message]:
    builder = MessageBuilder(Oids(config.settings.oid_root))
    if service is None:
        text = f"test notification from snmp-watchdog on {socket.gethostname()}"
        return [builder.test(sequence=TEST_SEQUENCE, text=text)]
    now = time.time()
    events = [
        (
            state.Kind.DOWN,
            state.State.DOWN,
            state.State.UP,
            Reason.REFUSED,
            "test: not a real outage",
        ),
        (state.Kind.UP, state.State.UP, state.State.DOWN, Reason.OK, "test: not a real recovery"),
    ]
    return [
        builder.service_event(
            kind=kind,
            service=service,
            index=index,
            state=new,
            previous=old,
            reason=reason,
            detail=detail,
            count=1,
            elapsed=0.0,
            at_wall=now,
            sequence=TEST_SEQUENCE,
            flags="test",
        )
        for kind, new, old, reason, detail in events
    ]


async def send_tests(
    config: model.Config,
    receivers: Sequence[model.Receiver],
    service: model.Service | None,
    index: int,
    *,
    inform: bool = False,
) -> list[Outcome]:
    if inform:
        receivers = [replace(r, mode=Mode.INFORM) for r in receivers]
    sender = Sender(config.settings, receivers, started=time.monotonic(), count_boot=False)
    await sender.start()
    try:
        batch = messages(config, service, index)

        async def one(receiver: model.Receiver) -> Outcome:
            if receiver.mode == Mode.INFORM and not receiver.informs:  # SNMPv1
                return Outcome(
                    receiver,
                    (Delivery(receiver.name, False, False, None, "SNMPv1 has no informs"),),
                )
            out = []
            for message in batch:  # in order: a Down before its Up
                out.append(await sender.send(receiver, message))
            return Outcome(receiver, tuple(out))

        return list(await asyncio.gather(*(one(r) for r in receivers)))
    finally:
        await sender.close()
