"""Benchmark: walking the agent's table of 10,000 services while they are being checked.

    .venv/bin/python bench/agent.py                      # 10,000 services, 30 s interval
    .venv/bin/python bench/agent.py --services 2000 --interval 5

One process runs what ``watchdog run`` runs for the agent: the real
``Scheduler`` with ``run_check`` (``check: tcp`` against a loopback listener in
another process, so every check is a real connect), the agent's snapshot fed
by every result, and the ``AgentServer`` on a loopback UDP port. After every
service has been checked once, Net-SNMP's ``snmpbulkwalk`` (another process)
walks the whole ``wdServiceTable``, once with its default 10 repetitions per
request and once with 50.

It reports the wall time of each walk and, for the checks that were due during
it, the scheduling delay (how late each check started after it was due): the
largest and the 99th percentile, beside the same figures over an equal time
without a walk right after it, in the same run; medians over ``--rounds``
walks. uvloop is used when installed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from snmp_watchdog import model, state
from snmp_watchdog.agent.server import AgentServer
from snmp_watchdog.agent.snapshot import Snapshot
from snmp_watchdog.agent.table import StatusTable
from snmp_watchdog.checks import run_check
from snmp_watchdog.notify.mib import Oids
from snmp_watchdog.result import CheckResult
from snmp_watchdog.scheduler import Scheduler

LISTENER = """
import asyncio, sys
async def main():
    async def handle(reader, writer):
        writer.close()
    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()
asyncio.run(main())
"""


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * p), len(ordered) - 1)]


class Delays:
    """Scheduling delays of the checks that started, in windows."""

    def __init__(self) -> None:
        self.current: list[float] | None = None

    def window(self) -> list[float]:
        self.current = []
        return self.current

    def add(self, delay: float) -> None:
        if self.current is not None:
            self.current.append(delay)


async def walk(port: int, oid: str, repetitions: int, home: Path) -> tuple[float, int]:
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "SNMPCONFPATH": str(home)}
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        "snmpbulkwalk", "-m", "", "-v2c", "-c", "bench", "-t", "5", "-r", "0", "-On",
        f"-Cr{repetitions}", f"udp:127.0.0.1:{port}", oid,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await proc.communicate()
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"snmpbulkwalk failed: {err.decode()}")
    return elapsed, out.count(b"\n")


def summary(rounds: list[tuple[float, int, list[float], list[float]]]) -> dict[str, Any]:
    """Medians over the rounds: walk time, and the largest and 99th-percentile delays."""

    def med(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    def ms(value: float) -> float:
        return round(value * 1000, 1)

    walk_s = med([r[0] for r in rounds])
    lines = rounds[0][1]
    return {
        "walk_s": round(walk_s, 2),
        "varbinds": lines,
        "varbinds_per_s": round(lines / walk_s),
        "checks_during_walk": med([len(r[2]) for r in rounds]),
        "max_delay_walk_ms": ms(med([max(r[2], default=0.0) for r in rounds])),
        "p99_delay_walk_ms": ms(med([percentile(r[2], 0.99) for r in rounds])),
        "checks_without_walk": med([len(r[3]) for r in rounds]),
        "max_delay_quiet_ms": ms(med([max(r[3], default=0.0) for r in rounds])),
        "p99_delay_quiet_ms": ms(med([percentile(r[3], 0.99) for r in rounds])),
        "rounds": len(rounds),
    }


async def measure(
    n: int, interval: float, tcp_port: int, home: Path, repetitions: list[int], *, n_rounds: int
) -> dict[str, Any]:
    services = [
        model.Service(
            name=f"svc{i:05d}",
            host="127.0.0.1",
            port=tcp_port,
            check=model.CheckKind.TCP,
            interval=interval,
            retry_interval=interval,
            timeout=2.0,
            fall=1,
            rise=1,
            jitter=0.2,
            flap_changes=0,
        )
        for i in range(n)
    ]
    oids = Oids()
    started = time.monotonic()
    table = StatusTable(
        oids, version="bench", uptime=lambda: int((time.monotonic() - started) * 100),
        sequence=lambda: 0,
    )  # fmt: skip
    snapshot = Snapshot(table)
    snapshot.load(services, {}, {svc.name: i + 1 for i, svc in enumerate(services)})
    delays = Delays()
    scheduler: Scheduler

    async def check(svc: model.Service) -> CheckResult:
        delays.add(time.monotonic() - scheduler.slots[svc.name].due)
        return await run_check(svc)

    def on_result(
        svc: model.Service,
        _before: state.ServiceState,
        st: state.ServiceState,
        result: CheckResult,
        _notes: Any,
    ) -> None:
        snapshot.result(svc, st, result)

    scheduler = Scheduler(services, check=check, on_result=on_result, max_in_flight=1000)
    port = free_udp_port()
    agent = model.Agent(port=port, community=model.Secret("bench"))
    server = AgentServer(agent, table, engine_id=bytes.fromhex("80001f880562656e6368"), boots=1)
    await server.start()
    gc.freeze()  # as the daemon does once it has started
    runner = asyncio.create_task(scheduler.run())
    try:
        await asyncio.sleep(interval * 1.5)  # every service checked at least once
        checked = sum(1 for st in scheduler.states().values() if st.checks)
        table_oid = ".".join(map(str, (*oids.root, 1, 2)))
        results: dict[str, Any] = {"services": n, "checked_before_walks": checked}
        for reps in repetitions:
            rounds = []
            for _ in range(n_rounds):
                during = delays.window()
                elapsed, lines = await walk(port, table_oid, reps, home)
                quiet = delays.window()
                await asyncio.sleep(elapsed)
                delays.current = None
                rounds.append((elapsed, lines, during, quiet))
            results[f"r{reps}"] = summary(rounds)
        return results
    finally:
        scheduler.stop()
        await runner
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=3, help="walks per -Cr value (medians)")
    parser.add_argument(
        "--repetitions", default="10,50", help="snmpbulkwalk -Cr values, comma-separated"
    )
    args = parser.parse_args()
    raise_nofile()
    listener = subprocess.Popen([sys.executable, "-c", LISTENER], stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None
        tcp_port = int(listener.stdout.readline())
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp)
            (home / "cert_indexes").mkdir()
            reps = [int(r) for r in args.repetitions.split(",")]
            coro = measure(args.services, args.interval, tcp_port, home, reps, n_rounds=args.rounds)
            try:
                import uvloop  # noqa: PLC0415
            except ImportError:
                results = asyncio.run(coro)
            else:
                results = uvloop.run(coro)
    finally:
        listener.terminate()
        listener.wait()
    results["machine"] = f"{os.cpu_count()} cores, Python {platform.python_version()}"
    print(json.dumps(results, indent=2))
    for key in (k for k in results if k.startswith("r")):
        r = results[key]
        ratio = r["max_delay_walk_ms"] / max(r["max_delay_quiet_ms"], 0.1)
        print(
            f"-C{key}: walk of {r['varbinds']} varbinds in {r['walk_s']} s "
            f"({r['varbinds_per_s']}/s); largest scheduling delay {r['max_delay_walk_ms']} ms "
            f"during the walk vs {r['max_delay_quiet_ms']} ms without ({ratio:.2f}x); "
            f"p99 {r['p99_delay_walk_ms']} vs {r['p99_delay_quiet_ms']} ms"
        )


if __name__ == "__main__":
    main()
