"""Benchmark: loading and validating a configuration of many services.

    .venv/bin/python bench/config_load.py [N ...]     # default: 1000 10000

The whole file is validated at start and on every SIGHUP, so its cost bounds
how quickly a reload takes effect.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from snmp_watchdog.config import load_config

KINDS = [
    "    check: smtp\n",
    '    port: 7000\n    send: HELO x\n    expect: "^250"\n',
    "    check: https\n    path: /health\n    status: [200, 204]\n    interval: 30s\n",
    '    port: 7000\n    dialogue:\n      - expect: "^220"\n      - send: QUIT\n',
]


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [1000, 10000]
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            text = "receivers:\n  - {name: nms, host: 192.0.2.1, community: public}\nservices:\n"
            text += "".join(
                f"  - name: svc{i}\n    host: host{i}.example.com\n" + KINDS[i % len(KINDS)]
                for i in range(n)
            )
            path = Path(tmp) / f"w{n}.yaml"
            path.write_text(text)
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                load_config(path)
                best = min(best, time.perf_counter() - t0)
            print(f"{n:>6} services: {best * 1000:.0f} ms ({best / n * 1e6:.0f} us/service)")


if __name__ == "__main__":
    main()
