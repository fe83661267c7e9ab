"""Times move between the monotonic and the wall clock through one pair of readings."""

from __future__ import annotations

import time

from snmp_watchdog.clocks import to_mono, to_wall, wall_time

MONO, WALL = 1000.0, 1_790_000_000.0


def test_a_time_keeps_its_distance_from_the_readings() -> None:
    assert to_wall(990.0, mono_now=MONO, wall_now=WALL) == WALL - 10.0
    assert to_mono(WALL - 10.0, mono_now=MONO, wall_now=WALL) == 990.0


def test_a_wall_time_after_the_readings_is_taken_as_now() -> None:
    """The wall clock was stepped back since the time was written."""
    assert to_mono(WALL + 150.0, mono_now=MONO, wall_now=WALL) == MONO


def test_the_same_value_for_both_readings_leaves_a_time_as_it_is() -> None:
    assert to_wall(WALL - 5.0, mono_now=WALL, wall_now=WALL) == WALL - 5.0
    assert to_mono(WALL - 5.0, mono_now=WALL, wall_now=WALL) == WALL - 5.0


def test_wall_time_reads_both_clocks_now() -> None:
    before = time.time()
    got = wall_time(time.monotonic() - 60.0)
    assert before - 60.0 - 1.0 < got < time.time() - 60.0 + 1.0
