"""Three watchdogs sharing 300 services through a real PostgreSQL, failing over for real.

Each node is a ``watchdog run`` subprocess with its own state directory (its
own SNMPv3 engine ID) and the same configuration; a real Net-SNMP snmptrapd
receives; the services are real TCP listeners on loopback. One node is
SIGKILLed while services are going down; the node that delivers to the
receiver is SIGSTOPped past its lease while services come back, then
SIGCONTinued. Every Down and every Up must reach snmptrapd exactly once, with
one gap-free sequence across the cluster.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from snmp_watchdog import cluster
from snmp_watchdog.notify.mib import Oids
from tests.helpers import Daemon
from tests.postgres import PASSWORD, SUPERUSER, PostgresServer
from tests.snmptrapd import Received, Snmptrapd

pytestmark = [pytest.mark.slow, pytest.mark.snmp]

OIDS = Oids()
SEQUENCE = ".".join(map(str, (*OIDS.notification_sequence, 0)))
NAME = ".".join(map(str, OIDS.service_name)) + "."
KINDS = {
    ".".join(map(str, OIDS.service_down)): "down",
    ".".join(map(str, OIDS.service_up)): "up",
}
NODES = ["n1", "n2", "n3"]
#: The informs' community differs from the traps' (see tests/test_restart.py).
INFORMS = "watchdog-informs"
SERVICES = 300
PORTS = 10  # service i listens on port number i % PORTS
LEASE = 3.0
INTERVAL = 0.5


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 512


class _Close(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.close()


class Listener:
    """A TCP service on loopback that accepts and closes; ``stop`` makes it refuse."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self._server: _Server | None = None

    def start(self) -> None:
        self._server = _Server(("127.0.0.1", self.port), _Close)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def config(tmp_path: Path, node: str, url: str, ports: list[int], trapd: int) -> Path:
    services = "\n".join(
        f"  - {{name: svc-{i:03}, host: 127.0.0.1, port: {ports[i % PORTS]}, check: tcp}}"
        for i in range(SERVICES)
    )
    path = tmp_path / f"{node}.yaml"
    path.write_text(
        f"""
watchdog:
  state_dir: {tmp_path}/{node}
  store: {url}
  store_password: ${{WATCHDOG_TEST_PG_PASSWORD}}
  node: {node}
  lease: {LEASE}s
defaults:
  interval: {INTERVAL}s
  retry_interval: 0.2s
  timeout: 0.5s
  fall: 2
  rise: 2
  jitter: 0
  flap_changes: 0
receivers:
  - {{name: traps, host: 127.0.0.1, port: {trapd}, version: 2c, community: public}}
  - {{name: informs, host: 127.0.0.1, port: {trapd}, version: 2c, community: {INFORMS},
      mode: inform, timeout: 0.5s}}
services:
{services}
"""
    )
    return path


def name_of(n: Received) -> str:
    return next(v.text for k, v in n.varbinds.items() if k.startswith(NAME)).strip('"')


def events(received: list[Received], pdu: str = "TRAP2") -> list[tuple[int, str, str]]:
    return sorted(
        (int(n.varbinds[SEQUENCE].text), name_of(n), KINDS[n.trap_oid])
        for n in received
        if n.pdu == pdu
    )


def wait_until(condition: Callable[[], bool], within: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < within, f"not within {within}s: {what}"
        time.sleep(0.05)
    return time.monotonic() - start


def test_three_nodes_fail_over_and_every_change_arrives_once(
    tmp_path: Path,
    postgres_server: PostgresServer,
    snmptrapd: Callable[..., Snmptrapd],
    daemons: list[Daemon],
) -> None:
    database = postgres_server.create_database()
    admin = postgres_server.url(database)
    url = f"postgresql://{SUPERUSER}@127.0.0.1:{postgres_server.port}/{database}"
    listeners = [Listener() for _ in range(PORTS)]
    for listener in listeners:
        listener.start()
    trapd = snmptrapd(communities=["public", INFORMS])
    env = {"WATCHDOG_TEST_PG_PASSWORD": PASSWORD}
    nodes = {}
    for node in NODES:
        cfg = config(tmp_path, node, url, [li.port for li in listeners], trapd.port or 0)
        nodes[node] = Daemon(cfg, env=env)
        daemons.append(nodes[node])

    def query(sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(admin, autocommit=True) as db:
            return db.execute(sql.encode()).fetchall()

    def up_count() -> int:
        try:
            return int(query("SELECT count(*) FROM service WHERE state = 'up'")[0][0])
        except psycopg.errors.UndefinedTable:  # the first node is still creating the schema
            return 0

    def owners() -> set[str]:
        try:
            return {str(r[0]) for r in query("SELECT DISTINCT node FROM owner")}
        except psycopg.errors.UndefinedTable:
            return set()

    wait_until(lambda: owners() == set(NODES), 30, "every node owning its share")
    wait_until(lambda: up_count() == SERVICES, 30, "every service up")
    assert trapd.notifications == []  # up from unknown is silent

    # Services behind ports 0 and 1 go down; one node (not one that delivers
    # to a receiver) is killed while they are being confirmed.
    courier = cluster.owner("@traps", NODES)
    assert courier is not None
    couriers = {courier, cluster.owner("@informs", NODES)}
    victim = next(n for n in NODES if n not in couriers)
    listeners[0].stop()
    listeners[1].stop()
    time.sleep(0.3)
    killed_at = time.monotonic()
    nodes[victim].kill()
    went_down = {f"svc-{i:03}" for i in range(SERVICES) if i % PORTS in (0, 1)}
    wait_until(lambda: len(trapd.notifications) >= 2 * len(went_down), 30, "every Down")
    failover = time.monotonic() - killed_at

    # The courier is stopped past its lease; meanwhile port 1 comes back. (Not
    # between a send and the deletion of its row: a node stopped or killed
    # there makes its successor send that notification once more.)
    wait_until(lambda: query("SELECT count(*) FROM outbox")[0][0] == 0, 5, "outbox empty")
    stopped = nodes[courier]
    stopped.signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    listeners[1].start()
    came_up = {f"svc-{i:03}" for i in range(SERVICES) if i % PORTS == 1}
    wait_until(
        lambda: len(trapd.notifications) >= 2 * (len(went_down) + len(came_up)), 30, "every Up"
    )
    takeover = time.monotonic() - stopped_at
    seen = len(stopped.lines)
    stopped.signal(signal.SIGCONT)
    line = stopped.wait_for(r"lease|not saved|handed over", timeout=15, start=seen)
    time.sleep(LEASE)  # time enough for anything stale to leave, if it were going to

    received = trapd.notifications
    got = events(received)
    sequences = [s for s, _, _ in got]
    dups = [e for e in got if sequences.count(e[0]) > 1]
    assert sequences == list(range(1, len(got) + 1)), ("one gap-free sequence, none twice", dups)
    kinds = Counter((name, kind) for _, name, kind in got)
    assert kinds == Counter([(n, "down") for n in went_down] + [(n, "up") for n in came_up]), (
        "every Down and every Up exactly once"
    )
    assert events(received, "INFORM") == got  # the same notifications, acknowledged
    # Failover: the lease, the survivors' next renewal (a fifth of the lease),
    # one interval and the checks that confirm (fall 2 x retry 0.2 s), plus 2 s
    # for a loaded machine.
    bound = LEASE + LEASE / 5 + INTERVAL + 2 * 0.2 + 2.0
    assert failover <= bound
    assert takeover <= bound
    last_down = max(s for s, name, kind in got if kind == "down")
    assert all(s > last_down for s, _, kind in got if kind == "up")
    print(  # the figures the README quotes
        f"\nfailover after SIGKILL: all Downs within {failover:.1f} s; "
        f"after SIGSTOP of the courier: all Ups within {takeover:.1f} s; "
        f"lease {LEASE} s, interval {INTERVAL} s; stopped node said: {stopped.lines[line]}"
    )

    # `watchdog status` on any node: the nodes, their leases, who owns what.
    survivor = next(n for n in NODES if n not in (victim, courier))
    cfg = tmp_path / f"{survivor}.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "snmp_watchdog", "-c", str(cfg), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, **env},
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    nodes_seen = {n["name"]: n for n in data["cluster"]["nodes"]}
    assert sorted(nodes_seen) == NODES
    assert not nodes_seen[victim]["live"]  # killed: its lease ran out, its row stays
    assert nodes_seen[survivor]["live"]
    assert sum(n["services"] for n in nodes_seen.values()) == SERVICES
    assert nodes_seen[victim]["services"] == 0
    owners_seen = {s["owner"] for s in data["services"]}
    assert victim not in owners_seen
    # Each receiver's queue is delivered by the live node that owns it now.
    for r in data["receivers"]:
        assert r["delivered_by"] in {n for n, seen in nodes_seen.items() if seen["live"]}, r
        assert r["name"] in nodes_seen[r["delivered_by"]]["receivers"], r
    assert {s["state"] for s in data["services"] if s["name"] in went_down - came_up} == {"down"}
    text = subprocess.run(
        [sys.executable, "-m", "snmp_watchdog", "-c", str(cfg), "status"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={**os.environ, **env},
    ).stdout
    assert f"node {victim}: lease expired" in text
    assert f"this is node {survivor}" in text
    for r in data["receivers"]:
        assert f"not yet delivered, by node {r['delivered_by']}" in text
    assert PASSWORD not in proc.stdout + proc.stderr + text
    for listener in listeners:
        listener.stop()
