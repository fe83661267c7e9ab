"""Informs waiting for a receiver that is away are taken over when their node dies."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from snmp_watchdog import cluster
from snmp_watchdog.notify.mib import Oids
from tests.helpers import Daemon, free_udp_port
from tests.postgres import PASSWORD, SUPERUSER, PostgresServer
from tests.snmptrapd import Snmptrapd
from tests.test_cluster_e2e import Listener

pytestmark = [pytest.mark.slow, pytest.mark.snmp]

OIDS = Oids()
NAME = ".".join(map(str, OIDS.service_name)) + "."
SEQUENCE = ".".join(map(str, (*OIDS.notification_sequence, 0)))
NODES = ["a", "b"]


def test_pending_informs_are_delivered_once_by_the_next_owner(
    tmp_path: Path,
    postgres_server: PostgresServer,
    snmptrapd: Callable[..., Snmptrapd],
    daemons: list[Daemon],
) -> None:
    database = postgres_server.create_database()
    url = f"postgresql://{SUPERUSER}@127.0.0.1:{postgres_server.port}/{database}"
    listener = Listener()
    listener.start()
    trapd = snmptrapd(start=False, port=free_udp_port(), communities=["public"])
    nodes = {}
    for node in NODES:
        cfg = tmp_path / f"{node}.yaml"
        cfg.write_text(
            f"""
watchdog: {{state_dir: {tmp_path}/{node}, store: {url}, node: {node}, lease: 2s,
           store_password: "${{WATCHDOG_TEST_PG_PASSWORD}}"}}
defaults: {{interval: 0.3s, retry_interval: 0.1s, timeout: 0.5s, fall: 2, rise: 1, jitter: 0}}
receivers:
  - {{name: informs, host: 127.0.0.1, port: {trapd.port}, version: 2c, community: public,
      mode: inform, timeout: 0.3s, give_up_after: 5m}}
services:
"""
            + "".join(
                f"  - {{name: svc-{i}, host: 127.0.0.1, port: {listener.port}, check: tcp}}\n"
                for i in range(4)
            )
        )
        nodes[node] = Daemon(cfg, env={"WATCHDOG_TEST_PG_PASSWORD": PASSWORD})
        daemons.append(nodes[node])
    courier = cluster.owner("@informs", NODES)
    assert courier is not None
    nodes[courier].wait_for(r"delivers to informs")

    def pending() -> int:
        with psycopg.connect(postgres_server.url(database), autocommit=True) as db:
            row = db.execute("SELECT count(*) FROM outbox").fetchone()
        return int(row[0]) if row else 0

    time.sleep(1.0)  # every service up, silently
    listener.stop()  # four Downs, as informs to a receiver that is not there
    deadline = time.monotonic() + 15
    while pending() < 4:
        assert time.monotonic() < deadline, "the Downs were not queued"
        time.sleep(0.05)
    nodes[courier].wait_for(r"to informs not acknowledged")
    nodes[courier].kill()  # the node retrying them dies
    trapd.start()  # and the receiver comes back

    received = trapd.wait_for(4, timeout=20)
    time.sleep(1.5)  # a repeat would show by now
    received = trapd.notifications
    assert sorted(
        next(v.text for k, v in n.varbinds.items() if k.startswith(NAME)).strip('"')
        for n in received
    ) == [f"svc-{i}" for i in range(4)]
    assert sorted(int(n.varbinds[SEQUENCE].text) for n in received) == [1, 2, 3, 4]
    assert {n.pdu for n in received} == {"INFORM"}
    deadline = time.monotonic() + 5
    while pending():
        assert time.monotonic() < deadline, "acknowledged informs left in the outbox"
        time.sleep(0.05)
