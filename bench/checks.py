"""Benchmark: full rounds of SMTP checks through the real scheduler and check code.

    .venv/bin/python bench/checks.py                 # N = 1,000 and 10,000
    .venv/bin/python bench/checks.py --sizes 2000    # other sizes

A server process listens on N loopback ports and speaks a minimal SMTP
conversation. In the same run, separate child processes check every service
once per round:

- ``baseline``: the plainest asyncio code doing the same conversation
  (connect, 220 greeting, EHLO -> 250, QUIT -> 221, close), capped at the same
  concurrency;
- ``watchdog``: the daemon's own ``Scheduler`` and ``run_check`` with
  ``check: smtp`` services.

It reports checks/s, CPU per check (user+sys of the checking process), the
watchdog/baseline CPU ratio, peak RSS and RSS per service, and the wall time of
a round in which 1% of the services hang (accept, never speak) with a 2 s
timeout: it should take about one timeout, not one per hung service.
uvloop is used by both sides when it is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

from _plain import HELO, smtp_conversation

HERE = Path(__file__).resolve()
BASE_PORT = int(os.environ.get("BENCH_BASE_PORT", "10000"))  # N ports from here, then hung ones
HANG_PORT_OFFSET = 10000  # hanging listeners sit at BASE_PORT + HANG_PORT_OFFSET + i

CONCURRENCY = 1000
ROUNDS = 3


def _loop_run(coro: Any) -> Any:
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


# -- the server process ----------------------------------------------------------


class SmtpLike(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.buf = b""
        self.t.write(b"220 bench.example ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\n" in self.buf:
            line, _, self.buf = self.buf.partition(b"\n")
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                self.t.write(b"250-bench.example\r\n250 8BITMIME\r\n")
            elif verb == b"QUIT":
                self.t.write(b"221 bye\r\n")
                self.t.close()
                return
            else:
                self.t.write(b"502 no\r\n")


class Hang(asyncio.Protocol):
    """Accepts and never speaks."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport


async def serve(n: int, hangs: int) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    for i in range(n):
        servers.append(await loop.create_server(SmtpLike, "127.0.0.1", BASE_PORT + i, backlog=512))
    for i in range(hangs):
        servers.append(
            await loop.create_server(Hang, "127.0.0.1", BASE_PORT + HANG_PORT_OFFSET + i)
        )
    print("ready", flush=True)
    await asyncio.Event().wait()


# -- the checking processes -----------------------------------------------------


async def baseline_round(ports: list[int], limit: float) -> int:
    sem = asyncio.Semaphore(CONCURRENCY)
    ok = 0

    async def one(port: int) -> None:
        nonlocal ok
        async with sem:
            try:
                async with asyncio.timeout(limit):
                    if await smtp_conversation("127.0.0.1", port):
                        ok += 1
            except (OSError, TimeoutError):
                pass

    await asyncio.gather(*(one(p) for p in ports))
    return ok


async def watchdog_round(services: list[Any], max_in_flight: int) -> int:
    from snmp_watchdog.checks import run_check  # noqa: PLC0415
    from snmp_watchdog.reasons import Reason  # noqa: PLC0415
    from snmp_watchdog.scheduler import Scheduler  # noqa: PLC0415

    done = asyncio.Event()
    target = len(services)

    def on_result(svc: Any, before: Any, st: Any, result: Any, notes: Any) -> None:
        if sched.checks_done >= target:
            done.set()

    sched = Scheduler(
        services,
        check=run_check,
        on_result=on_result,
        max_in_flight=max_in_flight,
    )
    runner = asyncio.create_task(sched.run())
    await done.wait()
    sched.stop()
    await runner
    return sum(1 for s in sched.states().values() if s.last_reason is Reason.OK)


def child(mode: str, n: int, hangs: int, timeout: float, rounds: int) -> dict[str, Any]:
    raise_nofile()
    ports = [BASE_PORT + i for i in range(n - hangs)]
    ports += [BASE_PORT + HANG_PORT_OFFSET + i for i in range(hangs)]
    services: list[Any] = []
    if mode == "watchdog":
        from snmp_watchdog.model import CheckKind, Service  # noqa: PLC0415

        services = [
            Service(
                name=f"s{i}",
                host="127.0.0.1",
                port=p,
                check=CheckKind.SMTP,
                helo=HELO.decode(),
                interval=3600.0,
                timeout=timeout,
                jitter=0.0,
            )
            for i, p in enumerate(ports)
        ]
    results = []
    for _ in range(rounds):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        if mode == "baseline":
            ok = _loop_run(baseline_round(ports, timeout))
        else:
            ok = _loop_run(watchdog_round(services, CONCURRENCY))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        results.append({"ok": ok, "cpu": cpu, "wall": wall})
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    best = min(results, key=lambda r: r["cpu"])
    return {"mode": mode, "n": n, "rounds": results, "best": best, "peak_rss_kib": rss_kib}


def run_child(mode: str, n: int, hangs: int, timeout: float, rounds: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            str(HERE),
            "--child",
            mode,
            "--n",
            str(n),
            "--hangs",
            str(hangs),
            "--timeout",
            str(timeout),
            "--rounds",
            str(rounds),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def bare_rss_kib() -> int:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import resource, snmp_watchdog.scheduler, snmp_watchdog.checks;"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout)


def measure(n: int, timeout: float) -> dict[str, Any]:
    hangs = max(1, n // 100)
    server = subprocess.Popen(
        [sys.executable, str(HERE), "--serve", str(n), "--hangs", str(hangs)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise SystemExit("bench server did not start (ports in use?)")
        base = run_child("baseline", n, 0, timeout, ROUNDS)
        wd = run_child("watchdog", n, 0, timeout, ROUNDS)
        hung = run_child("watchdog", n, hangs, timeout, 1)
    finally:
        server.terminate()
        server.wait()
    b, w = base["best"], wd["best"]
    bare = bare_rss_kib()
    return {
        "n": n,
        "baseline_checks_per_s": n / b["wall"],
        "watchdog_checks_per_s": n / w["wall"],
        "baseline_cpu_per_check_ms": 1000 * b["cpu"] / n,
        "watchdog_cpu_per_check_ms": 1000 * w["cpu"] / n,
        "cpu_ratio": w["cpu"] / b["cpu"],
        "watchdog_ok": w["ok"],
        "baseline_ok": b["ok"],
        "peak_rss_mb": wd["peak_rss_kib"] / 1024,
        "rss_per_service_kib": (wd["peak_rss_kib"] - bare) / n,
        "hung_services": hangs,
        "hung_round_wall_s": hung["best"]["wall"],
        "hung_extra_s": hung["best"]["wall"] - w["wall"],
        "timeout_s": timeout,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000")
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--hangs", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--rounds", type=int, default=ROUNDS, help=argparse.SUPPRESS)
    args = p.parse_args()
    raise_nofile()
    if args.serve:
        _loop_run(serve(args.serve, args.hangs))
        return
    if args.child:
        print(json.dumps(child(args.child, args.n, args.hangs, args.timeout, args.rounds)))
        return
    try:
        import uvloop  # noqa: F401, PLC0415

        loop_name = "uvloop"
    except ImportError:
        loop_name = "asyncio"
    print(
        f"# {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} cores,"
        f" {loop_name}, concurrency {CONCURRENCY}, best of {ROUNDS} rounds"
    )
    for n in (int(s) for s in args.sizes.split(",")):
        r = measure(n, args.timeout)
        print(
            f"N={r['n']:>6}: baseline {r['baseline_checks_per_s']:8.0f} checks/s "
            f"{r['baseline_cpu_per_check_ms']:.3f} ms CPU/check | watchdog "
            f"{r['watchdog_checks_per_s']:8.0f} checks/s {r['watchdog_cpu_per_check_ms']:.3f} ms "
            f"CPU/check | ratio {r['cpu_ratio']:.2f}x | ok {r['watchdog_ok']}/{r['n']} | peak RSS "
            f"{r['peak_rss_mb']:.0f} MB ({r['rss_per_service_kib']:.1f} KiB/service) | "
            f"{r['hung_services']} hung: round {r['hung_round_wall_s']:.2f} s, "
            f"{r['hung_extra_s']:.2f} s more than a clean round (timeout {r['timeout_s']:.0f} s)"
        )


if __name__ == "__main__":
    socket.setdefaulttimeout(None)
    main()
