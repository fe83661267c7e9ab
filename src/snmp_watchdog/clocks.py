"""Moving a time between the monotonic clock and the wall clock (a leaf module).

Within a process the monotonic clock (``time.monotonic()``) is the truth: it
never steps, so the state machine, the scheduler and the queues measure on it.
What outlives the process or leaves it (the store's rows, a notification's
time of change, the agent's DateAndTime columns) is wall-clock seconds since
the epoch, because the monotonic clock starts again at boot.

A time moves between the two through a pair of readings of both clocks taken
together (``mono_now``, ``wall_now``): it keeps its distance from that moment.
A wall-clock time that would be later than the moment on the monotonic clock
(the wall clock was stepped back since it was written) is taken as the moment
itself. Passing the same value for both leaves a time as it is.
"""

from __future__ import annotations

import time


def to_wall(mono: float, *, mono_now: float, wall_now: float) -> float:
    """The monotonic time ``mono`` as wall-clock seconds."""
    return mono - mono_now + wall_now


def to_mono(wall: float, *, mono_now: float, wall_now: float) -> float:
    """The wall-clock time ``wall`` on the monotonic clock, never later than ``mono_now``."""
    return min(wall - wall_now + mono_now, mono_now)


def wall_time(mono: float) -> float:
    """A monotonic time of this process as wall-clock seconds, both clocks read now."""
    return to_wall(mono, mono_now=time.monotonic(), wall_now=time.time())
