"""What the running daemon does with the objects start-up leaves behind."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from snmp_watchdog.daemon import YOUNG_COLLECTION_EVERY, Daemon
from tests.helpers import free_tcp_port, run_bounded


@pytest.fixture
def unfrozen() -> Iterator[None]:
    thresholds = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_once_ready_the_objects_of_start_up_are_left_out_of_collections(
    tmp_path: Path, unfrozen: None
) -> None:
    """Full collections then walk only what changes, not the modules, MIBs and configuration
    (walking those held the event loop for tens of milliseconds during bursts)."""
    cfg = tmp_path / "watchdog.yaml"
    cfg.write_text(
        f"""
watchdog:
  state_dir: {tmp_path}/state
services:
  - name: mail
    host: 127.0.0.1
    port: {free_tcp_port()}
    check: smtp
"""
    )
    assert gc.get_freeze_count() == 0

    async def scenario() -> tuple[int, int]:
        daemon = Daemon(cfg)
        running = asyncio.create_task(daemon.run())
        # A first check has run: the daemon is past its start-up.
        for _ in range(1000):
            if daemon.scheduler is not None and daemon.scheduler.checks_done:
                break
            await asyncio.sleep(0.01)
        frozen = gc.get_freeze_count()
        daemon._request_stop("SIGTERM")
        return frozen, await running

    frozen, code = run_bounded(scenario(), 20.0)
    assert code == 0
    assert frozen > 10_000  # the modules' objects alone are tens of thousands
    # and young collections come less often than Python's default, every 700 objects
    assert gc.get_threshold()[0] == YOUNG_COLLECTION_EVERY > 700
