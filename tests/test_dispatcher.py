"""The dispatcher shares the event loop fairly with everything else."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path

from snmp_watchdog import model
from snmp_watchdog.notify.message import MessageBuilder
from snmp_watchdog.notify.mib import Oids
from snmp_watchdog.notify.outbox import Dispatcher
from snmp_watchdog.notify.sender import Sender
from tests.helpers import run_bounded


def test_a_burst_of_traps_lets_other_tasks_run_between_notifications(tmp_path: Path) -> None:
    """Trap sends never suspend; the worker must still yield, or checks starve."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    receiver = model.Receiver(
        name="sink",
        host="127.0.0.1",
        port=sink.getsockname()[1],
        community=model.Secret("public"),
    )
    settings = model.Settings(state_dir=tmp_path)
    builder = MessageBuilder(Oids())
    burst = 200

    async def main() -> tuple[int, int]:
        sender = Sender(settings, [receiver], started=time.monotonic())
        await sender.start()
        dispatcher = Dispatcher(sender, [receiver], log=logging.getLogger("test"))
        try:
            for i in range(1, burst + 1):
                dispatcher.submit(builder.test(sequence=i, text="burst"), ["sink"])
            await asyncio.sleep(0)  # the worker starts; we run again only when it yields
            seen_midway = dispatcher.pending()
            await dispatcher.drain(10.0)
            return seen_midway, dispatcher.pending()
        finally:
            await dispatcher.close()
            await sender.close()

    try:
        midway, left = run_bounded(main(), 20.0)
        received = 0
        while True:
            try:
                sink.recv(65536)
            except BlockingIOError:
                break
            received += 1
    finally:
        sink.close()
    assert 0 < midway < burst  # this task ran while the burst was still being sent
    assert left == 0
    assert received == burst
