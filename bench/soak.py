"""Soak test: many services flapping at random for minutes; memory and notifications audited.

    .venv/bin/python bench/soak.py --services 1000 --minutes 10
    .venv/bin/python bench/soak.py --services 200 --minutes 1 --flips 5   # a quick look

Not part of the test suite (it runs for minutes). What it does:

- One process (this one) serves N loopback TCP ports. Each port answers
  ``OK`` while its service is meant to be up and ``NO`` while down; the
  services are ``check: tcp`` with ``expect: "^OK"``. A flipper turns a random
  service up or down ``--flips`` times a second.
- ``watchdog run`` runs as a child process with its log in a file, sending
  every Down and Up to a real Net-SNMP snmptrapd twice: as a v2c trap and as
  a v2c inform (two receivers, two communities).
- Every ``--sample`` seconds the daemon's RSS and open file descriptors are
  read from ``/proc``. The trend is taken after a warm-up (the first minute,
  or the first fifth of a shorter run). Memory that is bounded but fills
  slowly shows as growth in a short run: SQLite's page cache (at most 2 MB)
  and each service's history of changes, kept for ``flap_window``; without
  ``--flap`` that window is one minute, with it the default 30 minutes.
- At the end the flipper stops, the daemon is given time to deliver
  everything, is stopped with SIGTERM, and the books are balanced by
  sequence number (wdNotificationSequence.0): every state change the daemon
  logged must be a notification it logged as sent (trap) or acknowledged
  (inform), and each of those must have reached snmptrapd exactly once,
  the numbers running 1..N with no gap.

Prints a report and exits 1 if anything was lost, repeated or skipped.
Needs snmptrapd (Debian package ``snmptrapd``) and a free loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the test suite's snmptrapd runner

from tests.snmptrapd import Received, Snmptrapd, parse  # noqa: E402

from snmp_watchdog.notify.mib import Oids  # noqa: E402
from snmp_watchdog.store import Store  # noqa: E402

INFORM_COMMUNITY = "soak-informs"
SEQUENCE = ".".join(map(str, (*Oids().notification_sequence, 0)))
CHANGE = re.compile(r" (\S+) \(127\.0\.0\.1:\d+ tcp\) is (DOWN|UP) ")
SENT = re.compile(r" (down|up) #(\d+) \((\S+)\) sent to traps$")
ACKED = re.compile(r" (down|up) #(\d+) \((\S+)\) to informs acknowledged")
TROUBLE = re.compile(r"to traps failed|given up|Traceback|internal error|ERROR")


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class Port(asyncio.Protocol):
    """Says OK or NO, as its service is meant to be, and hangs up."""

    def __init__(self, up: list[bool], index: int) -> None:
        self.up, self.index = up, index

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(b"OK\r\n" if self.up[self.index] else b"NO\r\n")
        transport.close()


def config_text(work: Path, ports: list[int], trapd_port: int, args: argparse.Namespace) -> str:
    services = "".join(
        f'  - {{name: s{i:05}, host: 127.0.0.1, port: {port}, check: tcp, expect: "^OK"}}\n'
        for i, port in enumerate(ports)
    )
    # Without flap detection its window only bounds each service's history of
    # changes: one minute, so that history is full before the first RSS sample counts.
    flap = "" if args.flap else "  flap_changes: 0\n  flap_window: 1m\n"
    return f"""
watchdog:
  state_dir: {work}/state
  max_in_flight: 1000
defaults:
  interval: {args.interval}s
  retry_interval: {args.interval / 4}s
  timeout: 2s
  fall: 2
  rise: 2
  jitter: 10%
{flap}receivers:
  - {{name: traps, host: 127.0.0.1, port: {trapd_port}, version: 2c, community: public}}
  - {{name: informs, host: 127.0.0.1, port: {trapd_port}, version: 2c,
      community: {INFORM_COMMUNITY}, mode: inform, timeout: 2s}}
services:
{services}"""


def proc_sample(pid: int) -> tuple[int, int, float]:
    """(RSS in KiB, open file descriptors, CPU seconds) of ``pid``."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss, fds, cpu


def slope(points: list[tuple[float, int]]) -> float:
    """Least-squares slope of (t, value): value units per second."""
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (v - mv) for t, v in points) / den if den else 0.0


def read_log(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines() if path.exists() else []


def audit(lines: list[str], received: list[Received]) -> dict[str, Any]:
    """Balance the daemon's log against what snmptrapd received."""
    changes = [m.groups() for ln in lines if (m := CHANGE.search(ln))]
    sent = {int(m.group(2)) for ln in lines if (m := SENT.search(ln))}
    acked = {int(m.group(2)) for ln in lines if (m := ACKED.search(ln))}
    got: dict[str, Counter[int]] = {"TRAP2": Counter(), "INFORM": Counter()}
    for n in received:
        got[n.pdu][int(n.varbinds[SEQUENCE].text)] += 1
    logged = sent | acked
    top = max(logged, default=0)
    report = {
        "state_changes_logged": len(changes),
        "traps_logged_sent": len(sent),
        "informs_logged_acknowledged": len(acked),
        "traps_received": sum(got["TRAP2"].values()),
        "traps_received_distinct": len(got["TRAP2"]),
        "informs_received": sum(got["INFORM"].values()),
        "informs_received_distinct": len(got["INFORM"]),
        "traps_lost": sorted(sent - set(got["TRAP2"]))[:20],
        "informs_lost": sorted(acked - set(got["INFORM"]))[:20],
        "traps_repeated": sorted(s for s, c in got["TRAP2"].items() if c > 1)[:20],
        "informs_repeated": sorted(s for s, c in got["INFORM"].items() if c > 1)[:20],
        "traps_received_not_logged": sorted(set(got["TRAP2"]) - sent)[:20],
        "sequence_gaps": sorted(set(range(1, top + 1)) - logged)[:20],
        "trap_inform_mismatch": sorted(sent ^ acked)[:20],
        "trouble_lines": [ln for ln in lines if TROUBLE.search(ln)][:20],
    }
    report["ok"] = len(changes) == len(sent) == len(acked) and not any(
        report[k]
        for k in (
            "traps_lost",
            "informs_lost",
            "traps_repeated",
            "informs_repeated",
            "traps_received_not_logged",
            "sequence_gaps",
            "trap_inform_mismatch",
            "trouble_lines",
        )
    )
    return report


async def soak(args: argparse.Namespace, work: Path, trapd: Snmptrapd) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    up = [True] * args.services
    servers = [
        await loop.create_server(lambda i=i: Port(up, i), "127.0.0.1", 0, backlog=256)  # type: ignore[misc]
        for i in range(args.services)
    ]
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    cfg = work / "watchdog.yaml"
    assert trapd.port is not None
    cfg.write_text(config_text(work, ports, trapd.port, args))
    log_path = work / "daemon.log"
    rng = random.Random(args.seed)
    samples: list[tuple[float, int, int, float]] = []
    with log_path.open("w") as log_file:
        daemon = subprocess.Popen(  # noqa: ASYNC220 (once; the loop only serves the ports)
            [sys.executable, "-m", "snmp_watchdog", "-c", str(cfg), "run"],
            stderr=log_file,
            stdout=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        try:
            while not any(ln.endswith(" ready") for ln in read_log(log_path)):
                assert daemon.poll() is None, "\n".join(read_log(log_path))
                await asyncio.sleep(0.1)
            started = time.monotonic()
            await asyncio.sleep(args.interval * 3)  # every service confirmed up, silently
            print(f"flipping for {args.minutes} min, {args.flips}/s ...", file=sys.stderr)
            flips = 0
            end = time.monotonic() + args.minutes * 60
            next_sample = time.monotonic()
            while (now := time.monotonic()) < end:
                if now >= next_sample:
                    rss, fds, cpu = proc_sample(daemon.pid)
                    samples.append((now - started, rss, fds, cpu))
                    print(f"  {now - started:7.1f} s  RSS {rss} KiB  fds {fds}", file=sys.stderr)
                    next_sample += args.sample
                i = rng.randrange(args.services)
                up[i] = not up[i]
                flips += 1
                await asyncio.sleep(1.0 / args.flips)
            flipped_for = time.monotonic() - started

            # Quiet: wait until the log stops changing and nothing waits for a receiver.
            quiet_since, last_len, deadline = time.monotonic(), -1, time.monotonic() + 120
            while time.monotonic() < deadline:
                lines = read_log(log_path)
                if len(lines) != last_len:
                    quiet_since, last_len = time.monotonic(), len(lines)
                with Store.open(work / "state", readonly=True) as store:
                    waiting = store.pending_counts()
                if not waiting and time.monotonic() - quiet_since > max(5.0, 3 * args.interval):
                    break
                await asyncio.sleep(0.5)
            rss, fds, cpu = proc_sample(daemon.pid)
            samples.append((time.monotonic() - started, rss, fds, cpu))
        finally:
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(30)
            for server in servers:
                server.close()
    lines = read_log(log_path)
    report = audit(lines, parse(trapd.log))
    warm = [s for s in samples if s[0] >= min(60.0, flipped_for / 5)] or samples
    report.update(
        {
            "services": args.services,
            "minutes": args.minutes,
            "flips": flips,
            "daemon_exit": code,
            "rss_kib_first_after_warmup": warm[0][1],
            "rss_kib_last": samples[-1][1],
            "rss_kib_max": max(s[1] for s in samples),
            "rss_kib_per_minute_after_warmup": round(
                slope([(t, r) for t, r, _, _ in warm]) * 60, 1
            ),
            "fds_min_max": [min(s[2] for s in samples), max(s[2] for s in samples)],
            "daemon_cpu_percent": round(100 * samples[-1][3] / max(samples[-1][0], 1e-9), 1),
            "rss_samples_kib": " ".join(f"{t:.0f}s:{r}" for t, r, _, _ in samples),
            "work_dir": str(work),
        }
    )
    report["ok"] = report["ok"] and code == 0
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--flips", type=float, default=10.0, help="state flips per second")
    parser.add_argument("--interval", type=float, default=2.0, help="check interval, seconds")
    parser.add_argument("--sample", type=float, default=10.0, help="RSS sampling period")
    parser.add_argument("--flap", action="store_true", help="keep flap detection on")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if shutil.which("snmptrapd") is None:
        print("snmptrapd not found (Debian package snmptrapd)", file=sys.stderr)
        return 2
    raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="watchdog-soak-"))
    trapd = Snmptrapd(work / "snmptrapd", communities=["public", INFORM_COMMUNITY])
    trapd.start()
    try:
        report = asyncio.run(soak(args, work, trapd))
    finally:
        trapd.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
