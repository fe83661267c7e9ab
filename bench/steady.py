"""Benchmark: CPU per check of ``watchdog run`` under steady load, beside plain loops.

    .venv/bin/python bench/steady.py                        # N = 2,000 and 10,000
    .venv/bin/python bench/steady.py --sizes 2000 --rate 2000 --seconds 20
    .venv/bin/python bench/steady.py --profile 2000         # cProfile of the daemon
    .venv/bin/python bench/steady.py --other-src /tmp/main/src  # also another version

(``git archive main src | tar -x -C /tmp/main`` makes such a tree.)

A server process listens on N loopback addresses and speaks a minimal SMTP
conversation, counting the conversations it completes. In the same run, one
after the other, separate child processes check every service at the same
configured rate (``--rate`` checks/s in all, so each service every N/rate
seconds):

- ``plain``: the plainest asyncio code doing the same conversation (connect,
  220 greeting, EHLO -> 250, QUIT -> 221, close), one task per service that
  sleeps until its next check, with the daemon's default jitter (the first
  check spread over 10% of the interval, each next one +/-5%);
- ``watchdog``: the real daemon, ``watchdog run`` with a configuration of N
  ``check: smtp`` services, a status directory, a state database and a trap
  receiver (nothing changes state, so nothing is sent).

Each side runs once on the standard asyncio loop and, when uvloop is
installed, once on uvloop (the daemon is kept off uvloop by blocking its
import). After a warm-up, the CPU time (user+sys, from /proc) of the checking
process and the conversations the server completed are sampled over the
measuring window; each side runs ``--repeat`` times, interleaved, and its
run with the least CPU per check counts. The report gives checks/s (which should match the
configured rate), CPU per check, the watchdog/plain ratio on each loop, and the
daemon's peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from _plain import HELO, smtp_conversation

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
#: Service i listens on its own loopback address, all on this port: no range of ports
#: to collide with, and every connection has its own address pair.
PORT = int(os.environ.get("BENCH_PORT", "2525"))


def address(i: int) -> str:
    return f"127.77.{i // 200}.{i % 200 + 1}"


JITTER = 0.10
TICK = os.sysconf("SC_CLK_TCK")


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def run_loop(coro: Any, loop_name: str) -> Any:
    if loop_name == "uvloop":
        import uvloop  # noqa: PLC0415

        return uvloop.run(coro)
    return asyncio.run(coro)


def have_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


# -- the server process ----------------------------------------------------------


class SmtpLike(asyncio.Protocol):
    done = 0

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
                SmtpLike.done += 1
                self.t.write(b"221 bye\r\n")
                self.t.close()
                return
            else:
                self.t.write(b"502 no\r\n")


async def serve(n: int) -> None:
    """Serve N ports; answer each line on stdin with the conversations completed so far."""
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(SmtpLike, address(i), PORT, backlog=1024) for i in range(n)]
    stop = asyncio.Event()

    def answer() -> None:
        if not sys.stdin.readline():
            stop.set()
            return
        print(SmtpLike.done, flush=True)

    loop.add_reader(sys.stdin.fileno(), answer)
    print("ready", flush=True)
    await stop.wait()
    for s in servers:
        s.close()


# -- the plain checking process -----------------------------------------------------


async def plain(n: int, interval: float, limit: float) -> None:
    rng = random.Random()
    loop = asyncio.get_running_loop()

    async def service(host: str) -> None:
        await asyncio.sleep(rng.uniform(0.0, JITTER * interval))
        while True:
            started = loop.time()
            try:
                async with asyncio.timeout(limit):
                    await smtp_conversation(host, PORT)
            except (OSError, TimeoutError):
                pass
            delay = interval * rng.uniform(1.0 - JITTER / 2, 1.0 + JITTER / 2)
            await asyncio.sleep(max(0.0, started + delay - loop.time()))

    await asyncio.gather(*(service(address(i)) for i in range(n)))


# -- the measuring parent ---------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Server:
    def __init__(self, n: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE), "--serve", str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit("bench server did not start (ports in use?)")

    def done(self) -> int:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write("?\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def write_config(directory: Path, n: int, interval: float, timeout: float) -> Path:
    lines = [
        "watchdog:",
        f"  state_dir: {directory / 'state'}",
        f"  status_dir: {directory / 'status'}",
        "defaults:",
        f"  interval: {interval}",
        f"  retry_interval: {interval}",
        f"  timeout: {timeout}",
        "receivers:",
        "  - name: trapd",
        "    host: 127.0.0.1",
        "    port: 1",
        "    version: 2c",
        "    community: public",
        "    mode: trap",
        "services:",
    ]
    for i in range(n):
        lines += [
            f"  - name: s{i}",
            f"    host: {address(i)}",
            f"    port: {PORT}",
            "    check: smtp",
            f"    helo: {HELO.decode()}",
        ]
    path = directory / "watchdog.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


#: Runs the daemon's command line, on the standard asyncio loop when asked.
_DAEMON = """
import sys
if sys.argv[1] == "asyncio":
    sys.modules["uvloop"] = None  # the daemon uses uvloop only when it imports
del sys.argv[1]
from snmp_watchdog.cli import main
sys.exit(main())
"""


@dataclass(frozen=True)
class Setup:
    n: int  # services
    interval: float  # each service's, seconds
    timeout: float
    warmup: float  # seconds before the window
    seconds: float  # the measuring window
    work: Path  # the daemon's configuration and state go here
    other: Path | None = None  # the ``src`` directory of another version of the daemon


def start(side: str, loop_name: str, setup: Setup) -> subprocess.Popen[bytes]:
    if side == "plain":
        cmd = [sys.executable, str(HERE), "--plain", str(setup.n), "--loop", loop_name]
        cmd += ["--interval", str(setup.interval), "--timeout", str(setup.timeout)]
    else:
        shutil.rmtree(setup.work / "state", ignore_errors=True)
        shutil.rmtree(setup.work / "status", ignore_errors=True)
        config = write_config(setup.work, setup.n, setup.interval, setup.timeout)
        cmd = [sys.executable, "-c", _DAEMON, loop_name, "-c", str(config), "run"]
    env = dict(os.environ)
    if side == "other":  # the same command, importing the package from there
        assert setup.other is not None
        env["PYTHONPATH"] = str(setup.other)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def measure(server: Server, side: str, loop_name: str, setup: Setup) -> dict[str, Any]:
    proc = start(side, loop_name, setup)
    try:
        time.sleep(setup.warmup)
        if proc.poll() is not None:
            raise SystemExit(f"{side} on {loop_name} exited with {proc.returncode}")
        cpu0, done0, t0 = cpu_seconds(proc.pid), server.done(), time.monotonic()
        time.sleep(setup.seconds)
        cpu1, done1, t1 = cpu_seconds(proc.pid), server.done(), time.monotonic()
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    checks = done1 - done0
    return {
        "checks_per_s": checks / (t1 - t0),
        "cpu_per_check_ms": 1000 * (cpu1 - cpu0) / max(checks, 1),
        "cpu_share": (cpu1 - cpu0) / (t1 - t0),
        "peak_rss_mb": rss,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="2000,10000")
    p.add_argument("--rate", type=float, default=2000.0, help="checks/s in all")
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--warmup", type=float, default=8.0)
    p.add_argument("--seconds", type=float, default=20.0, help="measuring window")
    p.add_argument(
        "--other-src",
        type=Path,
        metavar="DIR",
        help="also run the daemon from this src directory (another version) beside this one",
    )
    p.add_argument("--repeat", type=int, default=2, help="runs of each side; the best counts")
    p.add_argument("--loops", default="", help="asyncio,uvloop (default: those installed)")
    p.add_argument("--profile", type=int, metavar="N", help="profile the daemon with N services")
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    p.add_argument("--plain", type=int, help=argparse.SUPPRESS)
    p.add_argument("--loop", default="asyncio", help=argparse.SUPPRESS)
    p.add_argument("--interval", type=float, help=argparse.SUPPRESS)
    args = p.parse_args()
    raise_nofile()
    if args.serve:
        run_loop(serve(args.serve), "uvloop" if have_uvloop() else "asyncio")
        return
    if args.plain:
        run_loop(plain(args.plain, args.interval, args.timeout), args.loop)
        return
    loops = args.loops.split(",") if args.loops else ["asyncio"] + (["uvloop"] * have_uvloop())
    if args.profile:
        profile(args.profile, args.rate, args.timeout, args.seconds, loops[-1])
        return
    print(
        f"# {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} cores,"
        f" {args.rate:.0f} checks/s configured, {args.warmup:.0f} s warm-up,"
        f" {args.seconds:.0f} s measured, best of {args.repeat}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-steady-") as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            setup = Setup(
                n, n / args.rate, args.timeout, args.warmup, args.seconds, Path(tmp), args.other_src
            )
            server = Server(n)
            try:
                for loop_name in loops:
                    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "watchdog": []}
                    if setup.other is not None:
                        runs["other"] = []
                    for _ in range(args.repeat):  # interleaved: both see the same machine
                        for side, results in runs.items():
                            results.append(measure(server, side, loop_name, setup))
                    best = {k: min(r, key=lambda x: x["cpu_per_check_ms"]) for k, r in runs.items()}
                    b, w = best["plain"], best["watchdog"]
                    print(
                        f"N={n:>6} {loop_name:>7}: plain {b['checks_per_s']:6.0f} checks/s "
                        f"{b['cpu_per_check_ms']:.3f} ms CPU/check | watchdog "
                        f"{w['checks_per_s']:6.0f} checks/s {w['cpu_per_check_ms']:.3f} ms "
                        f"CPU/check ({100 * w['cpu_share']:.0f}% of a core) | ratio "
                        f"{w['cpu_per_check_ms'] / b['cpu_per_check_ms']:.2f}x | watchdog "
                        f"peak RSS {w['peak_rss_mb']:.0f} MB",
                        flush=True,
                    )
                    if "other" in best:
                        o = best["other"]
                        print(
                            f"N={n:>6} {loop_name:>7}: the daemon from {setup.other}: "
                            f"{o['checks_per_s']:6.0f} checks/s {o['cpu_per_check_ms']:.3f} ms "
                            f"CPU/check | ratio to plain "
                            f"{o['cpu_per_check_ms'] / b['cpu_per_check_ms']:.2f}x | this one / "
                            f"that one {w['cpu_per_check_ms'] / o['cpu_per_check_ms']:.2f}",
                            flush=True,
                        )
            finally:
                server.stop()


def profile(n: int, rate: float, timeout: float, seconds: float, loop_name: str) -> None:
    """Run the daemon under cProfile for ``seconds`` and print where its time went."""
    import pstats  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="bench-steady-") as tmp:
        work = Path(tmp)
        config = write_config(work, n, n / rate, timeout)
        out = work / "daemon.prof"
        server = Server(n)
        wrapper = (
            "import cProfile, sys\n"
            f"code = compile({_DAEMON!r}, 'daemon', 'exec')\n"
            "prof = cProfile.Profile()\n"
            "try:\n"
            "    prof.runctx(code, {'__name__': '__main__'}, {})\n"
            "except SystemExit:\n"
            "    pass\n"
            f"prof.dump_stats({str(out)!r})\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", wrapper, loop_name, "-c", str(config), "run"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(seconds)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
            server.stop()
        stats = pstats.Stats(str(out))
        stats.sort_stats("tottime").print_stats(35)
        stats.sort_stats("cumulative").print_stats(45)


if __name__ == "__main__":
    main()
