"""Benchmark: loading and validating a configuration of many services.

    .venv/bin/python bench/config_load.py [N ...]     # default: 1000 10000

The whole file is validated at start and on every SIGHUP, so its cost bounds
how quickly a reload takes effect, and its peak memory is part of the
daemon's. Beside it, in the same run, PyYAML alone on the same text: ``load``
(plain data, libyaml's parser) and ``compose`` (the node tree, with marks,
that the loader walked before). Memory is the peak of Python's allocations
(``tracemalloc``) while reading, in passes of their own; times are the best of 3.
"""

from __future__ import annotations

import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from snmp_watchdog.config import load_config
from snmp_watchdog.config.yaml import parse

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

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
            measure(n, path, text)


def measure(n: int, path: Path, text: str) -> None:
    best = fastest(lambda: load_config(path))
    plain = fastest(lambda: yaml.load(text, Loader=_Loader))  # noqa: S506 (a safe loader)
    print(
        f"{n:>6} services: {best * 1000:.0f} ms ({best / n * 1e6:.0f} us/service); "
        f"PyYAML load alone {plain * 1000:.0f} ms (ratio {best / plain:.1f})"
    )
    ours = peak_mb(lambda: load_config(path))
    read = peak_mb(lambda: parse(text))
    data = peak_mb(lambda: yaml.load(text, Loader=_Loader))  # noqa: S506 (a safe loader)
    nodes = peak_mb(lambda: yaml.compose(text, Loader=_Loader))
    print(
        f"{n:>6} services: peak memory: load_config {ours:.1f} MB, its YAML reading "
        f"{read:.1f} MB; PyYAML load {data:.1f} MB, compose {nodes:.1f} MB "
        f"(reading / load {read / data:.2f}, reading / compose {read / nodes:.2f})"
    )


def fastest(work: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - t0)
    return best


def peak_mb(work: Callable[[], object]) -> float:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


if __name__ == "__main__":
    main()
