"""Benchmark: a cluster of 3 watchdogs on one PostgreSQL beside one watchdog on SQLite.

    .venv/bin/python bench/cluster.py                      # 3 nodes x 3,000 services
    .venv/bin/python bench/cluster.py --services 1000 --seconds 10

A child process listens on loopback ports and accepts TCP connections. In the
same run:

- ``sqlite``: one ``watchdog run`` on the embedded SQLite store, checking
  every service (``check: tcp``, ``interval: 0.1s``: as fast as it can);
- ``cluster``: three ``watchdog run`` nodes sharing the same services through
  a private PostgreSQL 15 (Debian's, started on a loopback port with fsync on).

After a warm-up, each side runs for ``--seconds``; it reports checks/s (the
growth of the stored check counters) and, for the cluster, database commits/s
(``pg_stat_database.xact_commit``) and commits per 1,000 checks, and the
cluster/single-node ratio of checks/s. Both sides share this machine's cores
with each other's servers: the ratio says what sharing the work costs or
gains here, not on separate hosts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import free_tcp_port  # noqa: E402
from tests.postgres import PASSWORD, SUPERUSER, PostgresServer  # noqa: E402

PORTS = 20
UP_AND_CHECKS = "SELECT coalesce(sum(checks), 0), count(*) FILTER (WHERE state = 'up') FROM service"
NODES = ("n1", "n2", "n3")


class Accept(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def serve(ports: list[int]) -> None:
    raise_nofile()
    loop = asyncio.get_running_loop()
    for port in ports:
        # asyncio accepts up to ``backlog`` connections per wake-up: keep PORTS x
        # backlog well under the file descriptor limit.
        await loop.create_server(Accept, "127.0.0.1", port, backlog=256)
    print("ready", flush=True)
    await asyncio.Event().wait()


def config(path: Path, services: int, ports: list[int], watchdog: str) -> Path:
    lines = [
        "watchdog:",
        watchdog,
        "  max_in_flight: 500",
        "defaults: {interval: 0.1s, retry_interval: 0.1s, timeout: 2s, jitter: 10%,",
        "           fall: 2, rise: 2, flap_changes: 0}",
        "services:",
    ]
    lines += [
        f"  - {{name: svc-{i:05}, host: 127.0.0.1, port: {ports[i % len(ports)]}, check: tcp}}"
        for i in range(services)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def start(cfg: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "snmp_watchdog", "-c", str(cfg), "--log-level", "warning", "run"],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def measure(read: Any, seconds: float, warmup: float) -> list[float]:
    """Sample ``read()`` after the warm-up and after ``seconds`` more; the deltas per second."""
    time.sleep(warmup)
    t0, v0 = time.monotonic(), read()
    time.sleep(seconds)
    t1, v1 = time.monotonic(), read()
    return [(b - a) / (t1 - t0) for a, b in zip(v0, v1, strict=True)]


def run_sqlite(tmp: Path, services: int, ports: list[int], seconds: float) -> dict[str, float]:
    cfg = config(tmp / "sqlite.yaml", services, ports, f"  state_dir: {tmp}/sqlite")
    proc = start(cfg)
    db = tmp / "sqlite" / "state.db"

    def read() -> list[float]:
        while True:
            try:
                conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
                try:
                    row = conn.execute(UP_AND_CHECKS).fetchone()
                finally:
                    conn.close()
                return [float(row[0]), float(row[1])]
            except sqlite3.OperationalError:
                time.sleep(0.2)

    try:
        checks, _ = measure(read, seconds, warmup=5.0)
        up = read()[1]
    finally:
        stop([proc])
    return {"checks_per_s": checks, "up": up}


def run_cluster(tmp: Path, services: int, ports: list[int], seconds: float) -> dict[str, float]:
    server = PostgresServer(durable=True)
    server.start()
    try:
        database = server.create_database()
        url = f"postgresql://{SUPERUSER}@127.0.0.1:{server.port}/{database}"
        procs = [
            start(
                config(
                    tmp / f"{node}.yaml",
                    services,
                    ports,
                    f"  state_dir: {tmp}/{node}\n  store: {url}\n"
                    f"  store_password: ${{BENCH_PG_PASSWORD}}\n  node: {node}\n  lease: 10s",
                ),
                {"BENCH_PG_PASSWORD": PASSWORD},
            )
            for node in NODES
        ]

        def read() -> list[float]:
            while True:
                try:
                    with psycopg.connect(server.url(database), autocommit=True) as db:
                        row = db.execute(UP_AND_CHECKS).fetchone() or (0, 0)
                        commits = db.execute(
                            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s",
                            (database,),
                        )
                        (count,) = commits.fetchone() or (0,)
                    return [float(row[0]), float(count), float(row[1])]
                except psycopg.errors.UndefinedTable:
                    time.sleep(0.2)

        try:
            checks, commits, _ = measure(read, seconds, warmup=8.0)
            up = read()[2]
        finally:
            stop(procs)
    finally:
        server.stop()
    # The sampling connections commit too: a handful, not worth subtracting.
    return {"checks_per_s": checks, "commits_per_s": commits, "up": up}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    ports = [free_tcp_port() for _ in range(PORTS)]
    listener = subprocess.Popen(
        [sys.executable, str(HERE), "--serve", json.dumps(ports)], stdout=subprocess.PIPE
    )
    assert listener.stdout is not None
    assert listener.stdout.readline().strip() == b"ready"
    try:
        with tempfile.TemporaryDirectory(prefix="bench-cluster-") as name:
            tmp = Path(name)
            single = run_sqlite(tmp, args.services, ports, args.seconds)
            cluster = run_cluster(tmp, args.services, ports, args.seconds)
    finally:
        listener.send_signal(signal.SIGTERM)
        listener.wait()
    print(f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{args.services} services, check: tcp, interval 0.1 s, {args.seconds:.0f} s measured")
    print(
        f"single node, SQLite:      {single['checks_per_s']:8,.0f} checks/s "
        f"({single['up']:.0f} services up at the end)"
    )
    print(
        f"3 nodes, one PostgreSQL:  {cluster['checks_per_s']:8,.0f} checks/s, "
        f"{cluster['commits_per_s']:,.1f} commits/s "
        f"({1000 * cluster['commits_per_s'] / max(cluster['checks_per_s'], 1):.2f} "
        f"per 1,000 checks; {cluster['up']:.0f} services up at the end)"
    )
    print(f"cluster / single node:    {cluster['checks_per_s'] / single['checks_per_s']:.2f}x")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        asyncio.run(serve(json.loads(sys.argv[2])))
    else:
        main()
