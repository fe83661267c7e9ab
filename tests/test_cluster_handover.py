"""A receiver's queue changing hands between live nodes is delivered exactly once.

When a node joins, the receiver it now owns moves to it at once, while the
node that delivered it so far learns of the change only at its next renewal;
when it leaves, its delivery stops. Traps keep flowing meanwhile (services
going down and up again and again), and informs wait for a receiver that is
away when its queue moves: every sequence number must reach snmptrapd once.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from snmp_watchdog import cluster
from snmp_watchdog.notify.mib import Oids
from tests.helpers import Daemon
from tests.postgres import PASSWORD, SUPERUSER, PostgresServer
from tests.snmptrapd import Received, Snmptrapd
from tests.test_cluster_e2e import Listener

pytestmark = [pytest.mark.slow, pytest.mark.snmp]

OIDS = Oids()
SEQUENCE = ".".join(map(str, (*OIDS.notification_sequence, 0)))
#: The node that is there from the start, and the one that joins and leaves.
FIRST, JOINING = "a", "b"
SERVICES = 20
ENV = {"WATCHDOG_TEST_PG_PASSWORD": PASSWORD}


def moving_receiver(prefix: str) -> str:
    """A receiver name whose queue the joining node takes from the first one."""
    for i in range(100):
        name = f"{prefix}-{i}"
        if cluster.owner(f"@{name}", [FIRST, JOINING]) == JOINING:
            return name
    raise AssertionError("no receiver name moves to the joining node")


def write_config(
    path: Path, node: str, url: str, receivers: list[str], port: int, *, lease: str = "2s"
) -> None:
    listed = "".join(f"  - {r}\n" for r in receivers)
    services = "".join(
        f"  - {{name: svc-{i:02}, host: 127.0.0.1, port: {port}, check: tcp}}\n"
        for i in range(SERVICES)
    )
    path.write_text(
        f"""
watchdog: {{state_dir: {path.parent}/{node}, store: {url}, node: {node}, lease: {lease},
           store_password: "${{WATCHDOG_TEST_PG_PASSWORD}}"}}
defaults: {{interval: 0.1s, retry_interval: 0.1s, timeout: 0.3s, fall: 1, rise: 1, jitter: 0,
           flap_changes: 0}}
receivers:
{listed}services:
{services}"""
    )


def pending(postgres_server: PostgresServer, database: str) -> int:
    with psycopg.connect(postgres_server.url(database), autocommit=True) as db:
        row = db.execute("SELECT count(*) FROM outbox").fetchone()
    return int(row[0]) if row else 0


def sequences(received: list[Received]) -> Counter[int]:
    return Counter(int(n.varbinds[SEQUENCE].text) for n in received)


def test_traps_flowing_while_a_node_joins_and_leaves_arrive_exactly_once(
    tmp_path: Path,
    postgres_server: PostgresServer,
    snmptrapd: Callable[..., Snmptrapd],
    daemons: list[Daemon],
) -> None:
    database = postgres_server.create_database()
    url = f"postgresql://{SUPERUSER}@127.0.0.1:{postgres_server.port}/{database}"
    trapd = snmptrapd(communities=["public"])
    name = moving_receiver("traps")
    receiver = (
        f"{{name: {name}, host: 127.0.0.1, port: {trapd.port}, version: 2c, community: public}}"
    )
    listener = Listener()
    listener.start()
    configs = {}
    for node in (FIRST, JOINING):
        configs[node] = tmp_path / f"{node}.yaml"
        write_config(configs[node], node, url, [receiver], listener.port)
    first = Daemon(configs[FIRST], env=ENV)
    daemons.append(first)
    first.wait_for(rf"delivers to {name}")

    flapping = threading.Event()

    def flap() -> None:  # every service goes down and up again, again and again
        up = True
        while not flapping.wait(0.25):
            if up:
                listener.stop()
            else:
                listener.start()
            up = not up
        if not up:
            listener.start()

    flapper = threading.Thread(target=flap, daemon=True)
    flapper.start()
    try:
        for _ in range(3):
            joining = Daemon(configs[JOINING], env=ENV)
            daemons.append(joining)
            joining.wait_for(rf"delivers to {name}")
            time.sleep(1.0)
            mark = len(first.lines)
            joining.stop()  # a clean stop: the queue goes back to the first node
            first.wait_for(rf"delivers to {name}", start=mark)
            time.sleep(0.5)
    finally:
        flapping.set()
        flapper.join(timeout=5)
    deadline = time.monotonic() + 20
    while pending(postgres_server, database):
        assert time.monotonic() < deadline, "the outbox was not emptied"
        time.sleep(0.1)
    time.sleep(1.0)  # a late repeat would show by now
    seen = sequences(trapd.notifications)
    assert len(seen) > 3 * SERVICES  # the queue moved while traps were flowing
    assert [s for s, n in seen.items() if n > 1] == []
    assert sorted(seen) == list(range(1, max(seen) + 1))  # none lost
    listener.stop()


class SlowRelay:
    """A UDP relay on loopback that delays every datagram, both ways: a distant receiver."""

    def __init__(self, target: int, delay: float) -> None:
        self.target = ("127.0.0.1", target)
        self.delay = delay
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self._upstream: dict[tuple[str, int], socket.socket] = {}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._relay, args=(self.sock, None), daemon=True)]

    def start(self) -> None:
        self._threads[0].start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        for s in [self.sock, *self._upstream.values()]:
            s.close()

    def _later(self, sock: socket.socket, data: bytes, to: tuple[str, int]) -> None:
        def send() -> None:
            with contextlib.suppress(OSError):
                sock.sendto(data, to)

        threading.Timer(self.delay, send).start()

    def _relay(self, sock: socket.socket, client: tuple[str, int] | None) -> None:
        while not self._stop.is_set():
            try:
                data, source = sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if client is not None:  # an answer from the receiver
                self._later(self.sock, data, client)
                continue
            upstream = self._upstream.get(source)
            if upstream is None:
                upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                upstream.bind(("127.0.0.1", 0))
                upstream.settimeout(0.1)
                self._upstream[source] = upstream
                thread = threading.Thread(target=self._relay, args=(upstream, source), daemon=True)
                self._threads.append(thread)
                thread.start()
            self._later(upstream, data, self.target)


def test_informs_to_a_distant_receiver_are_sent_by_one_node_at_a_time_when_it_moves(
    tmp_path: Path,
    postgres_server: PostgresServer,
    snmptrapd: Callable[..., Snmptrapd],
    daemons: list[Daemon],
) -> None:
    """The old owner has an inform in flight, and more queued, when a node joins."""
    database = postgres_server.create_database()
    url = f"postgresql://{SUPERUSER}@127.0.0.1:{postgres_server.port}/{database}"
    trapd = snmptrapd(communities=["public"])
    assert trapd.port is not None
    relay = SlowRelay(trapd.port, delay=0.1)
    relay.start()
    name = moving_receiver("informs")
    receiver = (
        f"{{name: {name}, host: 127.0.0.1, port: {relay.port}, version: 2c, "
        f"community: public, mode: inform, timeout: 1s, give_up_after: 5m}}"
    )
    listener = Listener()
    listener.start()
    configs = {}
    for node in (FIRST, JOINING):
        configs[node] = tmp_path / f"{node}.yaml"
        write_config(configs[node], node, url, [receiver], listener.port)
    first = Daemon(configs[FIRST], env=ENV)
    daemons.append(first)
    try:
        first.wait_for(rf"delivers to {name}")
        time.sleep(1.0)  # every service up, silently
        listener.stop()  # a Down each, informs that take a while to be acknowledged
        trapd.wait_for(2, timeout=15)
        joining = Daemon(configs[JOINING], env=ENV)  # while the first node is delivering
        daemons.append(joining)
        joining.wait_for(rf"delivers to {name}")

        trapd.wait_for(SERVICES, timeout=30)
        deadline = time.monotonic() + 20
        while pending(postgres_server, database):
            assert time.monotonic() < deadline, "acknowledged informs left in the outbox"
            time.sleep(0.05)
        time.sleep(1.5)  # a repeat would show by now
    finally:
        relay.stop()
    seen = sequences(trapd.notifications)
    assert [s for s, n in seen.items() if n > 1] == [], (first.lines, joining.lines)
    assert sorted(seen) == list(range(1, SERVICES + 1))
    assert {n.pdu for n in trapd.notifications} == {"INFORM"}


def test_a_node_restarted_at_once_frees_the_queue_it_held_before(
    tmp_path: Path,
    postgres_server: PostgresServer,
    snmptrapd: Callable[..., Snmptrapd],
    daemons: list[Daemon],
) -> None:
    """Killed and back within its lease, it holds nothing: the receiver's new owner sends."""
    database = postgres_server.create_database()
    url = f"postgresql://{SUPERUSER}@127.0.0.1:{postgres_server.port}/{database}"
    trapd = snmptrapd(communities=["public"])
    name = moving_receiver("traps")
    receiver = (
        f"{{name: {name}, host: 127.0.0.1, port: {trapd.port}, version: 2c, community: public}}"
    )
    listener = Listener()
    listener.start()
    configs = {}
    for node in (FIRST, JOINING):
        configs[node] = tmp_path / f"{node}.yaml"
        write_config(configs[node], node, url, [receiver], listener.port, lease="10s")
    first = Daemon(configs[FIRST], env=ENV)
    daemons.append(first)
    first.wait_for(rf"delivers to {name}")
    time.sleep(1.0)  # it has claimed the queue
    first.kill()
    joining = Daemon(configs[JOINING], env=ENV)  # the receiver's owner from now on
    daemons.append(joining)
    joining.wait_for(rf"{name}: waiting for the previous owner")  # the killed node's claim
    first = Daemon(configs[FIRST], env=ENV)  # back before its lease has run out
    daemons.append(first)
    first.wait_for("ready")
    time.sleep(1.0)  # every service up, silently
    listener.stop()
    trapd.wait_for(SERVICES, timeout=10)
    time.sleep(1.0)  # a repeat would show by now
    seen = sequences(trapd.notifications)
    assert sorted(seen.elements()) == list(range(1, SERVICES + 1))


def test_a_receiver_removed_by_a_reload_is_free_for_its_next_owner_when_it_comes_back(
    tmp_path: Path,
    postgres_server: PostgresServer,
    snmptrapd: Callable[..., Snmptrapd],
    daemons: list[Daemon],
) -> None:
    """The node that delivered it lets it go, though it never hears of its new owner."""
    database = postgres_server.create_database()
    url = f"postgresql://{SUPERUSER}@127.0.0.1:{postgres_server.port}/{database}"
    trapd = snmptrapd(communities=["public"])
    other = snmptrapd(communities=["public"])
    third = "c"
    name = next(
        f"traps-{i}"
        for i in range(1000)
        if cluster.owner(f"@traps-{i}", [FIRST, JOINING]) == JOINING
        and cluster.owner(f"@traps-{i}", [FIRST, JOINING, third]) == third
    )
    receiver = (
        f"{{name: {name}, host: 127.0.0.1, port: {trapd.port}, version: 2c, community: public}}"
    )
    stays = f"{{name: stays, host: 127.0.0.1, port: {other.port}, version: 2c, community: public}}"
    listener = Listener()
    listener.start()
    nodes = {}
    for node in (FIRST, JOINING):
        write_config(tmp_path / f"{node}.yaml", node, url, [stays, receiver], listener.port)
        nodes[node] = Daemon(tmp_path / f"{node}.yaml", env=ENV)
        daemons.append(nodes[node])
    nodes[JOINING].wait_for(rf"delivers to .*{name}")
    time.sleep(1.0)  # it has claimed the queue

    def reload(receivers: list[str]) -> None:
        for node, d in nodes.items():
            write_config(tmp_path / f"{node}.yaml", node, url, receivers, listener.port)
            mark = len(d.lines)
            d.signal(signal.SIGHUP)
            d.wait_for(r"configuration reloaded", start=mark)

    reload([stays])
    write_config(tmp_path / f"{third}.yaml", third, url, [stays], listener.port)
    nodes[third] = Daemon(tmp_path / f"{third}.yaml", env=ENV)
    daemons.append(nodes[third])
    nodes[third].wait_for("ready")
    reload([stays, receiver])  # back, and its owner is the third node now
    nodes[third].wait_for(rf"delivers to .*{name}")
    time.sleep(1.0)  # every service up, silently
    listener.stop()
    trapd.wait_for(SERVICES, timeout=10)
    time.sleep(1.0)  # a repeat would show by now
    seen = sequences(trapd.notifications)
    assert sorted(seen.elements()) == sorted(sequences(other.notifications).elements())
    assert len(seen) == SERVICES
