"""SNMPv3 from a cluster, decoded by Net-SNMP: each node is its own SNMP engine.

The decision this test stands for: every node keeps its own engine ID (and
boots) in its own ``state_dir``; nothing about SNMPv3 identity is shared
through the database. So a v3 *trap* receiver needs one ``createUser -e``
line per node (each node's ``watchdog status`` prints its own), and a v3
*inform* receiver, authoritative itself, needs one ``createUser`` without
``-e`` for the whole cluster. Here the node delivering to both receivers is
SIGKILLed halfway, so the second half of the notifications comes from the
other engine: snmptrapd accepts and decodes both halves.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from snmp_watchdog import cluster
from snmp_watchdog.notify.mib import Oids
from tests.helpers import Daemon
from tests.postgres import PASSWORD, SUPERUSER, PostgresServer
from tests.snmptrapd import Snmptrapd, User
from tests.test_cluster_e2e import Listener

pytestmark = [pytest.mark.slow, pytest.mark.snmp]

OIDS = Oids()
NAME = ".".join(map(str, OIDS.service_name)) + "."
AUTH_KEY = "cluster-auth-key-1"
PRIV_KEY = "cluster-priv-key-2"
ENGINES = {"a": bytes.fromhex("80001f8804636c0001"), "b": bytes.fromhex("80001f8804636c0002")}
SERVICES = 10  # rendezvous gives 6 to a, 4 to b


def config(tmp_path: Path, node: str, url: str, ports: list[int], trapd: int) -> Path:
    services = "\n".join(
        f"  - {{name: svc-{i:02}, host: 127.0.0.1, port: {ports[i % 2]}, check: tcp}}"
        for i in range(SERVICES)
    )
    path = tmp_path / f"{node}.yaml"
    path.write_text(
        f"""
watchdog:
  state_dir: {tmp_path}/{node}
  engine_id: "0x{ENGINES[node].hex()}"
  store: {url}
  store_password: ${{WATCHDOG_TEST_PG_PASSWORD}}
  node: {node}
  lease: 2s
defaults: {{interval: 0.3s, retry_interval: 0.1s, timeout: 0.5s, fall: 2, rise: 2, jitter: 0,
           flap_changes: 0}}
receivers:
  - name: v3traps
    host: 127.0.0.1
    port: {trapd}
    version: 3
    user: trapper
    auth: {{protocol: SHA256, key: {AUTH_KEY}}}
    priv: {{protocol: AES128, key: {PRIV_KEY}}}
    mode: trap
  - name: v3informs
    host: 127.0.0.1
    port: {trapd}
    version: 3
    user: informer
    auth: {{protocol: SHA256, key: {AUTH_KEY}}}
    priv: {{protocol: AES128, key: {PRIV_KEY}}}
    mode: inform
    timeout: 0.5s
services:
{services}
"""
    )
    return path


def test_each_node_is_its_own_engine_and_net_snmp_takes_both(
    tmp_path: Path,
    postgres_server: PostgresServer,
    snmptrapd: Callable[..., Snmptrapd],
    daemons: list[Daemon],
) -> None:
    database = postgres_server.create_database()
    url = f"postgresql://{SUPERUSER}@127.0.0.1:{postgres_server.port}/{database}"
    listeners = [Listener(), Listener()]
    for listener in listeners:
        listener.start()
    users = [
        User("trapper", "SHA-256", AUTH_KEY, "AES", PRIV_KEY, engine_id=engine)
        for engine in ENGINES.values()
    ] + [User("informer", "SHA-256", AUTH_KEY, "AES", PRIV_KEY)]
    trapd = snmptrapd(communities=[], users=users)
    env = {"WATCHDOG_TEST_PG_PASSWORD": PASSWORD}
    cfgs = {
        n: config(tmp_path, n, url, [li.port for li in listeners], trapd.port or 0) for n in ENGINES
    }
    nodes = {n: Daemon(cfg, env=env) for n, cfg in cfgs.items()}
    daemons.extend(nodes.values())
    for d in nodes.values():
        d.wait_for(r"now checks [1-9]")

    courier = cluster.owner("@v3traps", list(ENGINES))
    assert courier is not None
    other = next(n for n in ENGINES if n != courier)
    time.sleep(1.0)
    listeners[0].stop()  # half the services go down: delivered by the courier
    trapd.wait_for(SERVICES, timeout=15)  # SERVICES / 2 traps + as many informs
    # Not between a send and the deletion of its row (see README: a repeat).
    with psycopg.connect(postgres_server.url(database), autocommit=True) as db:
        deadline = time.monotonic() + 10
        while db.execute("SELECT count(*) FROM outbox").fetchone() != (0,):
            assert time.monotonic() < deadline, "the outbox never emptied"
            time.sleep(0.05)
    nodes[courier].kill()
    listeners[1].stop()  # the other half: delivered by the other node, after failover
    received = trapd.wait_for(2 * SERVICES, timeout=20)
    time.sleep(1.0)
    received = trapd.notifications

    def names(pdu: str) -> list[str]:
        return sorted(
            next(v.text for k, v in n.varbinds.items() if k.startswith(NAME)).strip('"')
            for n in received
            if n.pdu == pdu
        )

    everyone = sorted(f"svc-{i:02}" for i in range(SERVICES))
    assert names("TRAP2") == everyone
    assert names("INFORM") == everyone
    assert {n.security_name for n in received} == {"trapper", "informer"}

    # `watchdog status` on the survivor prints the line its trap receivers need.
    status = subprocess.run(
        [sys.executable, "-m", "snmp_watchdog", "-c", str(cfgs[other]), "status"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={**os.environ, **env},
    ).stdout
    assert f"createUser -e 0x{ENGINES[other].hex()} trapper SHA-256 AUTH_KEY AES PRIV_KEY" in status
    assert f"this is node {other}" in status
    assert f"node {courier}: lease expired" in status
    assert "createUser informer SHA-256 AUTH_KEY AES PRIV_KEY" in status
    for listener in listeners:
        listener.stop()
