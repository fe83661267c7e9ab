"""The heartbeat of a cluster: one node at a time sends it, and it survives that node.

Status files too: every node keeps one per service of the cluster.
"""

from __future__ import annotations

import time
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
HEARTBEAT = ".".join(map(str, OIDS.heartbeat))
UP = ".".join(map(str, (*OIDS.services_up, 0)))
NODES = ["a", "b"]


def heartbeats(received: list[Received]) -> list[tuple[int, int]]:
    """(sequence, services up) of each heartbeat, in order of arrival."""
    return [
        (int(n.varbinds[SEQUENCE].text), int(n.varbinds[UP].text))
        for n in received
        if n.trap_oid == HEARTBEAT
    ]


def test_one_heartbeat_per_period_from_whichever_node_owns_it(
    tmp_path: Path,
    postgres_server: PostgresServer,
    snmptrapd: Callable[..., Snmptrapd],
    daemons: list[Daemon],
) -> None:
    database = postgres_server.create_database()
    url = f"postgresql://{SUPERUSER}@127.0.0.1:{postgres_server.port}/{database}"
    listener = Listener()
    listener.start()
    trapd = snmptrapd(communities=["public"])
    nodes = {}
    for node in NODES:
        cfg = tmp_path / f"{node}.yaml"
        cfg.write_text(
            f"""
watchdog: {{state_dir: {tmp_path}/{node}, store: {url}, node: {node}, lease: 2s,
           heartbeat: 0.5s, store_password: "${{WATCHDOG_TEST_PG_PASSWORD}}",
           status_dir: {tmp_path}/{node}-status}}
defaults: {{interval: 0.3s, retry_interval: 0.1s, timeout: 0.5s, fall: 2, rise: 1, jitter: 0}}
receivers:
  - {{name: traps, host: 127.0.0.1, port: {trapd.port}, version: 2c, community: public}}
services:
"""
            + "".join(
                f"  - {{name: svc-{i}, host: 127.0.0.1, port: {listener.port}, check: tcp}}\n"
                for i in range(4)
            )
        )
        nodes[node] = Daemon(cfg, env={"WATCHDOG_TEST_PG_PASSWORD": PASSWORD})
        daemons.append(nodes[node])
    for d in nodes.values():
        d.wait_for("ready")

    owner = cluster.owner("@heartbeat", NODES)
    assert owner is not None
    survivor = next(n for n in NODES if n != owner)
    assert {cluster.owner(f"svc-{i}", NODES) for i in range(4)} == {owner}

    # Every node keeps the status file of every service, whoever checks it.
    def files(node: str) -> dict[str, str]:
        directory = tmp_path / f"{node}-status"
        return {p.name: p.read_text() for p in directory.iterdir()} if directory.exists() else {}

    deadline = time.monotonic() + 10
    while files(survivor) != {f"svc-{i}": "0\n" for i in range(4)}:  # checked by the owner
        assert time.monotonic() < deadline, files(survivor)
        time.sleep(0.05)
    deadline = time.monotonic() + 20
    while len([h for h in heartbeats(trapd.notifications) if h[1] == 4]) < 3:
        assert time.monotonic() < deadline, trapd.log
        time.sleep(0.05)
    with psycopg.connect(postgres_server.url(database), autocommit=True) as db:
        while db.execute("SELECT count(*) FROM outbox").fetchone() != (0,):
            time.sleep(0.01)
    nodes[owner].kill()
    before = len(heartbeats(trapd.notifications))
    deadline = time.monotonic() + 20
    while len(heartbeats(trapd.notifications)) < before + 3:
        assert time.monotonic() < deadline, trapd.log
        time.sleep(0.05)
    listener.stop()

    deadline = time.monotonic() + 10
    while files(survivor) != {f"svc-{i}": "1\n" for i in range(4)}:  # 1: refused
        assert time.monotonic() < deadline, "\n".join(nodes[survivor].lines)
        time.sleep(0.05)
    assert files(owner) == {f"svc-{i}": "0\n" for i in range(4)}  # as it was killed

    received = trapd.notifications
    got = heartbeats(received)
    # Never two heartbeats from two nodes for one period: one gap-free sequence
    # shared with the Downs of the end.
    every = sorted(int(n.varbinds[SEQUENCE].text) for n in received)
    assert every == list(range(1, len(received) + 1))
    assert [s for s, _ in got] == sorted(s for s, _ in got)
    assert len(received) - len(got) <= 4  # the four Downs, once each
    assert max(up for _, up in got) == 4  # the whole cluster's services, counted
