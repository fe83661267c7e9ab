"""The YAML loader's memory: a large configuration is read without a node tree."""

from __future__ import annotations

import tracemalloc

from snmp_watchdog.config.yaml import parse


def service_file(n: int) -> str:
    lines = ["defaults:", "  interval: 30s", "services:"]
    for i in range(n):
        lines += [
            f"  - name: s{i}",
            f"    host: 192.0.2.{i % 250 + 1}",
            "    port: 25",
            "    check: smtp",
            "    helo: watchdog.example.com",
        ]
    return "\n".join(lines) + "\n"


def test_reading_takes_little_more_memory_than_what_it_returns() -> None:
    text = service_file(2000)
    tracemalloc.start()
    try:
        doc = parse(text)
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(doc.data["services"]) == 2000
    # Composing the file into PyYAML's nodes first took three times what is kept.
    assert peak < 1.5 * kept


def test_the_lines_are_found_only_when_asked_for() -> None:
    """A file without problems never needs them, and they take more than the data."""
    text = service_file(2000)
    tracemalloc.start()
    try:
        doc = parse(text)
        data, _ = tracemalloc.get_traced_memory()
        assert doc.lines[("services", 1999, "helo")] == 3 + 5 * 1999 + 5
        with_lines, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert with_lines - data > data
    assert doc.line_of(("services", 3, "port", "nowhere")) == 3 + 5 * 3 + 3
    assert parse("a: 1\n").line_of(()) == 1
