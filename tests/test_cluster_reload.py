"""SIGHUP on the nodes of a cluster: new services are shared out, a bad file changes nothing."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from snmp_watchdog.notify.mib import Oids
from tests.helpers import Daemon, free_tcp_port
from tests.postgres import PASSWORD, SUPERUSER, PostgresServer
from tests.snmptrapd import Snmptrapd
from tests.test_cluster_e2e import Listener

pytestmark = [pytest.mark.slow, pytest.mark.snmp]

OIDS = Oids()
NAME = ".".join(map(str, OIDS.service_name)) + "."
DOWN = ".".join(map(str, OIDS.service_down))
NODES = ["a", "b"]


def write(path: Path, node: str, url: str, trapd: int, services: dict[str, int]) -> None:
    path.write_text(
        f"""
watchdog: {{state_dir: {path.parent}/{node}, store: {url}, node: {node}, lease: 2s,
           store_password: "${{WATCHDOG_TEST_PG_PASSWORD}}"}}
defaults: {{interval: 0.3s, retry_interval: 0.1s, timeout: 0.5s, fall: 2, rise: 1, jitter: 0}}
receivers:
  - {{name: traps, host: 127.0.0.1, port: {trapd}, version: 2c, community: public}}
services:
"""
        + "".join(
            f"  - {{name: {name}, host: 127.0.0.1, port: {port}, check: tcp}}\n"
            for name, port in services.items()
        )
    )


def test_reload_shares_out_new_services_and_a_bad_file_changes_nothing(
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
    services = {f"svc-{i}": listener.port for i in range(4)}
    nodes = {}
    for node in NODES:
        write(tmp_path / f"{node}.yaml", node, url, trapd.port or 0, services)
        nodes[node] = Daemon(tmp_path / f"{node}.yaml", env={"WATCHDOG_TEST_PG_PASSWORD": PASSWORD})
        daemons.append(nodes[node])
    for d in nodes.values():
        d.wait_for("ready")
    time.sleep(1.0)

    # A broken file: rejected with its line and key, the node goes on.
    for node in NODES:
        (tmp_path / f"{node}.yaml").write_text("watchdog: {lease: soon}\n")
        mark = len(nodes[node].lines)
        nodes[node].signal(signal.SIGHUP)
        nodes[node].wait_for(rf"reload rejected: .*{node}\.yaml:1: watchdog\.lease", start=mark)

    # Two new services on a closed port; one old one removed.
    services.pop("svc-0")
    services |= {"new-1": free_tcp_port(), "new-2": free_tcp_port()}
    for node in NODES:
        write(tmp_path / f"{node}.yaml", node, url, trapd.port or 0, services)
        mark = len(nodes[node].lines)
        nodes[node].signal(signal.SIGHUP)
        nodes[node].wait_for(r"configuration reloaded: 5 services .*, 1 receivers", start=mark)

    received = trapd.wait_for(2, timeout=15)
    time.sleep(1.0)
    received = trapd.notifications
    downs = sorted(
        next(v.text for k, v in n.varbinds.items() if k.startswith(NAME)).strip('"')
        for n in received
        if n.trap_oid == DOWN
    )
    assert downs == ["new-1", "new-2"]  # each once, from whichever node owns it
    assert len(received) == 2
    listener.stop()
