"""A receiver that is away: informs wait, arrive in order, give up on time, cost no memory.

A real Net-SNMP snmptrapd is stopped while a real SMTP server goes down and
up; the informs the daemon could not deliver stay in the outbox and are read
back a bounded window at a time, so the daemon's memory does not grow with
the number waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from snmp_watchdog.model import CheckKind, Service
from snmp_watchdog.notify.durable import StoreQueue
from snmp_watchdog.notify.message import MessageBuilder, encode
from snmp_watchdog.notify.mib import Oids
from snmp_watchdog.notify.outbox import Pending
from snmp_watchdog.reasons import Reason
from snmp_watchdog.state import Kind, State
from snmp_watchdog.storage import SqliteStateStore
from snmp_watchdog.store import Store
from tests.helpers import (
    Daemon,
    SmtpServer,
    free_tcp_port,
    free_udp_port,
    pending_rows,
    wait_pending,
)
from tests.snmptrapd import Received, Snmptrapd

OIDS = Oids()
SEQUENCE = ".".join(map(str, (*OIDS.notification_sequence, 0)))
KINDS = {
    ".".join(map(str, OIDS.service_down)): "down",
    ".".join(map(str, OIDS.service_up)): "up",
}


def write_config(
    tmp_path: Path, smtp_port: int, receiver_port: int, *, give_up_after: str = "1h"
) -> Path:
    cfg = tmp_path / "watchdog.yaml"
    cfg.write_text(
        f"""
watchdog:
  state_dir: {tmp_path}/state
defaults:
  interval: 0.2s
  retry_interval: 0.1s
  timeout: 0.5s
  fall: 2
  rise: 2
  jitter: 0
  flap_changes: 0
receivers:
  - name: nms
    host: 127.0.0.1
    port: {receiver_port}
    version: 2c
    community: public
    mode: inform
    timeout: 0.5s
    give_up_after: {give_up_after}
services:
  - name: mail
    host: 127.0.0.1
    port: {smtp_port}
    check: smtp
"""
    )
    return cfg


def numbered(received: list[Received]) -> list[tuple[int, str]]:
    """(sequence, kind) of each distinct notification, in order of first arrival."""
    seen: dict[int, str] = {}
    for n in received:
        seen.setdefault(int(n.varbinds[SEQUENCE].text), KINDS[n.trap_oid])
    return list(seen.items())


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.mark.slow
@pytest.mark.snmp
def test_every_inform_held_during_an_outage_arrives_in_order(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd], smtp: SmtpServer, daemons: list[Daemon]
) -> None:
    trapd = snmptrapd(port=free_udp_port(), start=False)
    assert trapd.port is not None
    cfg = write_config(tmp_path, smtp.port, trapd.port)
    smtp.start()
    d = Daemon(cfg, "--log-level", "debug")
    daemons.append(d)
    first = d.wait_for(r"check mail: ok")
    d.wait_for(r"check mail: ok", start=first + 1)  # up from unknown: silent

    mark = 0
    for change in range(4):  # down, up, down, up while the receiver is away
        if change % 2 == 0:
            smtp.stop()
            mark = d.wait_for(r"mail .* is DOWN \(was up\)", start=mark)
        else:
            smtp.start()
            mark = d.wait_for(r"mail .* is UP \(was down\)", start=mark)
    d.wait_for(r"down #1 \(mail\) to nms not acknowledged \(attempt 1\): timeout; next attempt in")
    assert trapd.notifications == []

    trapd.start()
    for n, kind in enumerate(["down", "up", "down", "up"], start=1):
        d.wait_for(rf"{kind} #{n} \(mail\) to nms acknowledged", timeout=12)
    assert d.stop() == 0
    assert numbered(trapd.notifications) == [(1, "down"), (2, "up"), (3, "down"), (4, "up")]
    assert pending_rows(tmp_path / "state") == {}
    d.wait_for(r"stopped after")
    assert not any("not yet delivered" in line for line in d.lines)


@pytest.mark.slow
@pytest.mark.snmp
def test_give_up_after_is_honoured_and_logged_and_later_informs_still_arrive(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd], smtp: SmtpServer, daemons: list[Daemon]
) -> None:
    trapd = snmptrapd(port=free_udp_port(), start=False)
    assert trapd.port is not None
    cfg = write_config(tmp_path, smtp.port, trapd.port, give_up_after="2.5s")
    d = Daemon(cfg)
    daemons.append(d)
    d.wait_for(r"mail .* is DOWN \(was unknown\)")  # news: the server is not there
    down_at = time.monotonic()
    gave_up = d.wait_for(r"down #1 \(mail\) to nms given up after \d+ attempt\(s\) in \d+ s")
    waited = time.monotonic() - down_at
    # No attempt starts after the deadline; the last one may take its timeout.
    assert 1.0 < waited < 2.5 + 0.5 + 0.5, waited
    assert d.lines[gave_up].split()[1] == "ERROR"
    attempts = [ln for ln in d.lines if "down #1 (mail) to nms not acknowledged" in ln]
    assert attempts, d.lines
    wait_pending(tmp_path / "state", {})

    trapd.start()
    smtp.start()
    d.wait_for(r"up #2 \(mail\) to nms acknowledged", timeout=8)
    assert d.stop() == 0
    assert numbered(trapd.notifications) == [(2, "up")]


@pytest.mark.slow
@pytest.mark.snmp
def test_an_inform_older_than_give_up_after_at_restart_is_given_up_at_once(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd], daemons: list[Daemon]
) -> None:
    """``give_up_after`` counts from when the notification was made, across restarts.

    (Made by a run that would have waited an hour; the restarted daemon is told 1 s.)
    """
    trapd = snmptrapd(port=free_udp_port(), start=False)
    assert trapd.port is not None
    smtp_port = free_tcp_port()
    cfg = write_config(tmp_path, smtp_port, trapd.port, give_up_after="1h")
    d = Daemon(cfg)
    daemons.append(d)
    d.wait_for(r"down #1 \(mail\) to nms not acknowledged \(attempt 1\)")
    d.kill()
    assert pending_rows(tmp_path / "state") == {"nms": 1}
    time.sleep(1.0)

    cfg = write_config(tmp_path, smtp_port, trapd.port, give_up_after="1s")
    trapd.start()
    d = Daemon(cfg)
    daemons.append(d)
    d.wait_for(r"1 notification\(s\) from before the restart are being delivered")
    d.wait_for(r"down #1 \(mail\) to nms given up after 0 attempt\(s\) .*too old")
    assert d.stop() == 0
    assert trapd.notifications == []
    assert pending_rows(tmp_path / "state") == {}


PENDING = 30_000


def _fill_outbox(state_dir: Path, receiver: str, count: int) -> None:
    """``count`` real Down notifications waiting for ``receiver``, made just now."""
    builder = MessageBuilder(OIDS)
    now = time.time()
    with Store.open(state_dir) as store, store.transaction():
        for n in range(1, count + 1):
            svc = Service(name=f"service-{n:05}", host=f"host-{n}.example.net", port=25,
                          check=CheckKind.SMTP)  # fmt: skip
            message = builder.service_event(
                kind=Kind.DOWN, service=svc, index=n, state=State.DOWN, previous=State.UP,
                reason=Reason.TIMEOUT, detail="no greeting within 5.0 s " + "x" * 100,
                count=3, elapsed=5.0, at_wall=now, sequence=n,
            )  # fmt: skip
            store.enqueue(receiver, encode(message), created=now, sequence=n)


@pytest.mark.slow
def test_memory_does_not_grow_with_thousands_of_informs_waiting(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """The same daemon, receiver away, with 0 and with 30,000 informs waiting: same memory.

    Held in memory, 30,000 decoded notifications would take well over 100 MB
    (their stored form alone is about 20 MB); the queue keeps a window of them.
    """
    nobody = free_udp_port()  # nothing listens there: every attempt times out
    sizes: dict[int, int] = {}
    for count in (0, PENDING):
        run = tmp_path / f"run-{count}"
        run.mkdir()
        cfg = write_config(run, free_tcp_port(), nobody)
        if count:
            _fill_outbox(run / "state", "nms", count)
        d = Daemon(cfg)
        daemons.append(d)
        d.wait_for("ready")
        if count:
            d.wait_for(rf"{count} notification\(s\) from before the restart are being delivered")
            d.wait_for(r"down #1 \(service-00001\) to nms not acknowledged \(attempt 1\)")
        else:
            d.wait_for(r"down #1 \(mail\) to nms not acknowledged \(attempt 1\)")
        time.sleep(0.5)
        sizes[count] = rss_kib(d.proc.pid)
        assert d.stop() == 0
        if count:
            d.wait_for(rf"{count + 1} notification\(s\) not yet delivered stay queued")
    grown = sizes[PENDING] - sizes[0]
    assert grown < 10 * 1024, (
        f"RSS {sizes[0]} KiB with none waiting, {sizes[PENDING]} with {PENDING}"
    )


def test_heartbeats_waiting_for_a_receiver_that_is_away_do_not_pile_up(tmp_path: Path) -> None:
    """Only the heartbeat that may be leaving and the newest one are kept."""
    builder = MessageBuilder(OIDS)

    def heartbeat(n: int) -> Pending:
        message = builder.heartbeat(sequence=n, up=1, down=0, unknown=0, uptime=n)
        return Pending("nms", message, time.monotonic())

    async def scenario() -> list[int]:
        with Store.open(tmp_path / "state") as store:
            queue = StoreQueue(SqliteStateStore(store), "nms")
            for n in range(1, 1001):
                queue.append_volatile(heartbeat(n))
            assert len(queue) == 2
            left = []
            while len(queue):
                item = await asyncio.wait_for(queue.head(), 1)
                left.append(item.message.sequence)
                queue.remove(item)
            return left

    assert asyncio.run(scenario()) == [1, 1000]
