"""SIGHUP on the nodes of a cluster: new services are shared out, a bad file changes nothing."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from snmp_watchdog.notify.mib import Oids
from tests.helpers import Daemon, free_tcp_port, free_udp_port
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


# --- the reload rules of a daemon alone, in a cluster -----------------------------------

UP = ".".join(map(str, OIDS.service_up))
HEARTBEAT = ".".join(map(str, OIDS.heartbeat))
FLAGS = ".".join(map(str, (*OIDS.notification_flags, 0)))
SEQUENCE = ".".join(map(str, (*OIDS.notification_sequence, 0)))


def write_cluster(
    path: Path,
    node: str,
    url: str,
    receivers: list[str],
    services: dict[str, int],
    *,
    heartbeat: str = "0s",
    to: dict[str, str] | None = None,
) -> None:
    """``to``: a service's ``receivers`` (default: all)."""
    to = to or {}
    path.write_text(
        f"""
watchdog: {{state_dir: {path.parent}/{node}, store: {url}, node: {node}, lease: 2s,
           heartbeat: {heartbeat}, store_password: "${{WATCHDOG_TEST_PG_PASSWORD}}"}}
defaults: {{interval: 0.3s, retry_interval: 0.1s, timeout: 0.5s, fall: 2, rise: 1, jitter: 0}}
receivers:
"""
        + "".join(f"  - {r}\n" for r in receivers)
        + "services:\n"
        + "".join(
            f"  - {{name: {name}, host: 127.0.0.1, port: {port}, check: tcp"
            + (f", receivers: [{to[name]}]" if name in to else "")
            + "}\n"
            for name, port in services.items()
        )
    )


def start_cluster(
    tmp_path: Path,
    url: str,
    receivers: list[str],
    services: dict[str, int],
    daemons: list[Daemon],
    **settings: Any,
) -> dict[str, Daemon]:
    nodes = {}
    for node in NODES:
        write_cluster(tmp_path / f"{node}.yaml", node, url, receivers, services, **settings)
        nodes[node] = Daemon(tmp_path / f"{node}.yaml", env={"WATCHDOG_TEST_PG_PASSWORD": PASSWORD})
        daemons.append(nodes[node])
    for d in nodes.values():
        d.wait_for("ready")
    return nodes


def reload_cluster(
    tmp_path: Path,
    nodes: dict[str, Daemon],
    url: str,
    receivers: list[str],
    services: dict[str, int],
    **settings: Any,
) -> None:
    marks = {}
    for node, d in nodes.items():
        write_cluster(tmp_path / f"{node}.yaml", node, url, receivers, services, **settings)
        marks[node] = len(d.lines)
        d.signal(signal.SIGHUP)
    for node, d in nodes.items():
        d.wait_for(r"configuration reloaded", start=marks[node])


def test_a_reload_removing_a_down_service_closes_its_problem_once_and_forgets_it(
    tmp_path: Path,
    postgres_server: PostgresServer,
    snmptrapd: Callable[..., Snmptrapd],
    daemons: list[Daemon],
) -> None:
    """As alone: the receiver that will hear no more of a Down gets an Up flagged removed."""
    database = postgres_server.create_database()
    url = f"postgresql://{SUPERUSER}@127.0.0.1:{postgres_server.port}/{database}"
    listener = Listener()
    listener.start()
    trapd = snmptrapd(communities=["public"])
    receivers = [
        f"{{name: traps, host: 127.0.0.1, port: {trapd.port}, version: 2c, community: public}}"
    ]
    failing = Listener()
    failing.start()
    services = {"stays": listener.port, "gone": failing.port}
    nodes = start_cluster(tmp_path, url, receivers, services, daemons)
    failing.stop()
    trapd.wait_for(1, timeout=15)
    time.sleep(0.5)

    def seen() -> list[tuple[int, str, str, str, str]]:
        return [
            (
                n.source[1],
                n.trap_oid.rsplit(".", 1)[1],
                next(v.text for k, v in n.varbinds.items() if k.startswith(NAME)),
                n.varbinds[FLAGS].text,
                n.varbinds[SEQUENCE].text,
            )
            for n in trapd.notifications
        ]

    logs = {node: d.lines for node, d in nodes.items()}
    assert len(trapd.notifications) == 1, (seen(), logs)
    assert trapd.notifications[0].trap_oid == DOWN

    del services["gone"]
    reload_cluster(tmp_path, nodes, url, receivers, services)
    trapd.wait_for(2, timeout=15)
    time.sleep(1.5)  # a second one (from the other node) would show now
    received = trapd.notifications
    assert len(received) == 2, (seen(), logs)
    up = received[1]
    assert up.trap_oid == UP
    assert next(v.text for k, v in up.varbinds.items() if k.startswith(NAME)).strip('"') == "gone"
    assert up.varbinds[FLAGS].text == "4"  # removed(4)
    assert [int(n.varbinds[SEQUENCE].text) for n in received] == [1, 2]  # the cluster's sequence
    with psycopg.connect(postgres_server.url(database), autocommit=True) as db:
        rows = db.execute("SELECT name FROM service ORDER BY name").fetchall()
    assert rows == [("stays",)]  # the removed service's state is forgotten
    listener.stop()


def test_a_down_service_removed_while_the_cluster_was_stopped_is_closed_once_at_its_start(
    tmp_path: Path,
    postgres_server: PostgresServer,
    snmptrapd: Callable[..., Snmptrapd],
    daemons: list[Daemon],
) -> None:
    """Both nodes start together with the service gone from their file: one of them
    (whoever forgets its state first) sends the Up flagged removed, once."""
    database = postgres_server.create_database()
    url = f"postgresql://{SUPERUSER}@127.0.0.1:{postgres_server.port}/{database}"
    listener = Listener()
    listener.start()
    trapd = snmptrapd(communities=["public"])
    receivers = [
        f"{{name: traps, host: 127.0.0.1, port: {trapd.port}, version: 2c, community: public}}"
    ]
    services = {"stays": listener.port, "gone": free_tcp_port()}
    nodes = start_cluster(tmp_path, url, receivers, services, daemons)
    down = trapd.wait_for(1, timeout=15)[0]
    assert down.trap_oid == DOWN
    time.sleep(0.5)
    for d in nodes.values():
        assert d.stop() == 0

    del services["gone"]
    nodes = start_cluster(tmp_path, url, receivers, services, daemons)
    trapd.wait_for(2, timeout=15)
    time.sleep(1.5)  # a second one (from the other node) would show now
    for d in nodes.values():
        assert d.stop() == 0
    received = trapd.notifications
    logs = {node: d.lines for node, d in nodes.items()}
    assert len(received) == 2, logs
    up = received[1]
    assert up.trap_oid == UP
    assert next(v.text for k, v in up.varbinds.items() if k.startswith(NAME)).strip('"') == "gone"
    assert up.varbinds[FLAGS].text == "4"  # removed(4)
    state = ".".join(map(str, OIDS.service_state)) + "."
    assert next(v.text for k, v in up.varbinds.items() if k.startswith(state)) == "3"  # unknown
    assert [int(n.varbinds[SEQUENCE].text) for n in received] == [1, 2]  # the cluster's sequence
    told = [line for lines in logs.values() for line in lines if "gone: up removed" in line]
    assert len(told) == 1, logs
    with psycopg.connect(postgres_server.url(database), autocommit=True) as db:
        rows = db.execute("SELECT name FROM service ORDER BY name").fetchall()
    assert rows == [("stays",)]
    listener.stop()


def test_a_reload_removing_a_receiver_discards_its_queue_with_a_warning(
    tmp_path: Path,
    postgres_server: PostgresServer,
    snmptrapd: Callable[..., Snmptrapd],
    daemons: list[Daemon],
) -> None:
    database = postgres_server.create_database()
    url = f"postgresql://{SUPERUSER}@127.0.0.1:{postgres_server.port}/{database}"
    trapd = snmptrapd(communities=["public"])
    traps = f"{{name: traps, host: 127.0.0.1, port: {trapd.port}, version: 2c, community: public}}"
    away = (
        f"{{name: away, host: 127.0.0.1, port: {free_udp_port()}, version: 2c, community: public, "
        "mode: inform, "
        "timeout: 0.2s, give_up_after: 1h}"
    )
    services = {"down": free_tcp_port()}
    nodes = start_cluster(tmp_path, url, [traps, away], services, daemons)
    trapd.wait_for(1, timeout=15)  # the Down left for traps; for away it waits
    with psycopg.connect(postgres_server.url(database), autocommit=True) as db:
        deadline = time.monotonic() + 5
        query = "SELECT receiver, count(*) FROM outbox GROUP BY receiver ORDER BY receiver"
        while (waiting := db.execute(query).fetchall()) != [("away", 1)]:
            assert time.monotonic() < deadline, waiting
            time.sleep(0.05)
        marks = {node: len(d.lines) for node, d in nodes.items()}
        reload_cluster(tmp_path, nodes, url, [traps], services)
        warned = [
            line
            for node, d in nodes.items()
            for line in d.lines[marks[node] :]
            if "receiver away is no longer configured: 1 notification(s) waiting for it "
            "discarded" in line
        ]
        assert len(warned) == 1, {node: d.lines[marks[node] :] for node, d in nodes.items()}
        assert db.execute("SELECT count(*) FROM outbox").fetchone() == (0,)


def test_a_reload_turns_the_cluster_heartbeat_on_and_off(
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
    receivers = [
        f"{{name: traps, host: 127.0.0.1, port: {trapd.port}, version: 2c, community: public}}"
    ]
    services = {"up": listener.port}
    nodes = start_cluster(tmp_path, url, receivers, services, daemons)
    time.sleep(1.0)
    assert trapd.notifications == []

    def heartbeats() -> list[int]:
        return [
            int(n.varbinds[SEQUENCE].text) for n in trapd.notifications if n.trap_oid == HEARTBEAT
        ]

    reload_cluster(tmp_path, nodes, url, receivers, services, heartbeat="0.3s")
    deadline = time.monotonic() + 15
    while len(heartbeats()) < 3:
        assert time.monotonic() < deadline, trapd.log
        time.sleep(0.05)
    reload_cluster(tmp_path, nodes, url, receivers, services, heartbeat="0s")
    time.sleep(1.0)  # the last one sent before the reload has arrived
    stopped = heartbeats()
    time.sleep(1.5)
    assert heartbeats() == stopped
    assert stopped == list(range(1, len(stopped) + 1))  # from one node at a time
    listener.stop()


def test_a_reload_giving_a_receiver_a_down_service_sends_it_the_down_flagged_added(
    tmp_path: Path,
    postgres_server: PostgresServer,
    snmptrapd: Callable[..., Snmptrapd],
    daemons: list[Daemon],
) -> None:
    """So that the Up to come pairs with something, as alone."""
    database = postgres_server.create_database()
    url = f"postgresql://{SUPERUSER}@127.0.0.1:{postgres_server.port}/{database}"
    first = snmptrapd(communities=["public"])
    late = snmptrapd(communities=["public"])
    receivers = [
        f"{{name: {name}, host: 127.0.0.1, port: {trapd.port}, version: 2c, community: public}}"
        for name, trapd in (("first", first), ("late", late))
    ]
    failing = Listener()
    failing.start()
    services = {"down": failing.port}
    nodes = start_cluster(tmp_path, url, receivers, services, daemons, to={"down": "first"})
    failing.stop()
    first.wait_for(1, timeout=15)
    reload_cluster(tmp_path, nodes, url, receivers, services, to={"down": "first, late"})
    (added,) = late.wait_for(1, timeout=15)
    time.sleep(1.5)  # a second one (from the other node) would show now
    assert len(late.notifications) == 1, late.log
    assert added.trap_oid == DOWN
    assert added.varbinds[FLAGS].text == "5"  # added(5)
    assert added.varbinds[SEQUENCE].text == "2"  # the cluster's sequence
    assert len(first.notifications) == 1, first.log
