"""The asyncio loop that decides when each service is checked.

Rules:

- One schedule per service, kept in a heap ordered by the monotonic time the
  next check is due. A single dispatcher pops due services and hands their
  checks to worker tasks (an idle one, or a new one when all are busy); no
  service waits for another's check to finish.
- At most ``max_in_flight`` checks run at once. When the cap is reached the
  dispatcher waits for a free slot; due checks then start late, never twice.
- The dispatcher starts what is due in passes at least ``MIN_SLEEP`` (5 ms)
  apart: a check starts up to that much after it is due.
- The next check is due ``interval`` after this one started, or
  ``retry_interval`` while the state machine is confirming a change. Each delay
  is spread by ``jitter`` (a fraction: 10% means +/-5% around the delay), and the
  first check of each service is spread over ``jitter`` of its interval, so that
  services do not line up on the same second.
- Every check result goes through the pure state machine; ``on_result`` gets
  the result, the states before and after it and its notifications (a persistent caller saves
  them together). The scheduler itself decides nothing about up and down. A
  check that raises ``LocalProblem`` has no verdict: the state stays as it was.
  The result of a check whose service a reload removed or redefined while it
  ran is dropped: the service is gone, or its new definition decides from its
  own checks.
- ``progress`` is the monotonic time of the last dispatcher pass or finished
  check: a supervisor's keep-alive is sent only while it moves.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from snmp_watchdog import state
from snmp_watchdog.exceptions import LocalProblem
from snmp_watchdog.model import Service
from snmp_watchdog.result import CheckResult

CheckFn = Callable[[Service], Awaitable[CheckResult]]
#: ``on_result(service, before, after, result, notifications)``: the state before
#: and after the check's step.
ResultFn = Callable[
    [
        Service,
        "state.ServiceState",
        "state.ServiceState",
        CheckResult,
        tuple[state.Notification, ...],
    ],
    None,
]

log = logging.getLogger("snmp_watchdog")

#: The shortest sleep of the dispatcher: due checks start in passes at least
#: this far apart, so a check starts up to this much after it is due. Each pass
#: wakes the event loop, and a wake-up costs more than the Python code of a
#: check: at 2,000 checks/s, passes 1 ms apart (a check or two each) took a
#: fifth of the daemon's CPU more than passes 5 ms apart (bench/README.md).
#: Shorter than 1 ms, uvloop's timers (whole milliseconds) would fire before
#: the check is due and the dispatcher would spin until it is.
MIN_SLEEP = 0.005


def policy_for(service: Service) -> state.Policy:
    """The state machine's settings of ``service``."""
    return state.Policy(
        fall=service.fall,
        rise=service.rise,
        flap_changes=service.flap_changes,
        flap_window=service.flap_window,
        remind_every=service.remind_every,
    )


@dataclass(slots=True)
class Slot:
    """A service's place in the scheduler: its definition, policy and state."""

    service: Service
    policy: state.Policy
    state: state.ServiceState = field(default_factory=state.ServiceState)
    due: float = 0.0
    generation: int = 0  # bumped when the slot is replaced or removed; stale heap entries skip
    running: bool = False


class Scheduler:
    def __init__(
        self,
        services: Iterable[Service],
        *,
        check: CheckFn,
        on_result: ResultFn | None = None,
        max_in_flight: int = 1000,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        initial: dict[str, state.ServiceState] | None = None,
    ) -> None:
        self._check = check
        self._on_result = on_result
        self._clock = clock
        self._rng = rng or random.Random()
        self._max_in_flight = max_in_flight
        self._running = 0
        self._slots: dict[str, Slot] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._tasks: set[asyncio.Task[None]] = set()  # the workers
        self._idle: list[asyncio.Future[Slot]] = []  # idle workers wait on these for a slot
        self._loop: asyncio.AbstractEventLoop | None = None  # while ``run`` runs
        self._ended: asyncio.Future[None] | None = None  # ``run`` waits on it until ``stop``
        # The dispatcher's next pass (a timer, or a callback at the next turn).
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._parked = False  # due checks wait for one in flight to end (the cap)
        self._stopping = False
        self.progress = clock()
        self.checks_done = 0
        now = clock()
        policies: dict[state.Policy, state.Policy] = {}
        for svc in services:
            slot = Slot(svc, _shared(policies, policy_for(svc)))
            if initial and svc.name in initial:
                slot.state = initial[svc.name]
            self._slots[svc.name] = slot
            self._push(slot, now + self._rng.uniform(0.0, svc.jitter * svc.interval))

    # -- public -----------------------------------------------------------

    @property
    def slots(self) -> dict[str, Slot]:
        return self._slots

    def set_max_in_flight(self, limit: int) -> None:
        """Change the cap on checks at once (a reload); running checks are not cut short.

        A lower cap lets the checks over it finish and starts no new one until
        the count is below it; a higher one frees the dispatcher at once.
        """
        self._max_in_flight = limit
        self._slot_freed()

    def states(self) -> dict[str, state.ServiceState]:
        return {name: slot.state for name, slot in self._slots.items()}

    def update(self, services: Iterable[Service]) -> tuple[list[str], list[str], list[str]]:
        """Apply a reloaded service list.

        Services whose definition is unchanged keep their state, counters and
        schedule; changed ones keep their state but are re-scheduled; removed
        ones are forgotten; new ones start unknown. Returns (added, changed,
        removed) names.
        """
        now = self._clock()
        new = {svc.name: svc for svc in services}
        added, changed, removed = [], [], []
        policies = {slot.policy: slot.policy for slot in self._slots.values()}
        for name in list(self._slots):
            if name not in new:
                self._slots.pop(name).generation += 1
                removed.append(name)
        for name, svc in new.items():
            old = self._slots.get(name)
            if old is not None and old.service == svc:
                continue
            slot = Slot(svc, _shared(policies, policy_for(svc)))
            if old is None:
                added.append(name)
            else:
                changed.append(name)
                slot.state = old.state
                old.generation += 1
                slot.generation = old.generation + 1
            self._slots[name] = slot
            self._push(slot, now + self._rng.uniform(0.0, svc.jitter * min(svc.interval, 1.0)))
        return added, changed, removed

    async def run(self) -> None:
        """Dispatch checks until ``stop()``; then cancel what is in flight.

        The dispatcher is a loop callback, not a task: it starts the checks
        that are due and sets one timer for the next due time (a task that
        slept would cost a future, a timer and a task switch per due time, up
        to a thousand a second). At the cap it sets none: the end of a check
        calls it again.
        """
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._ended = ended = loop.create_future()
        if self._stopping:  # stopped before it ran
            ended.set_result(None)
        else:
            self._dispatch()
        try:
            await ended
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._loop = None
            await self._cancel_all()

    def stop(self) -> None:
        self._stopping = True
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)

    # -- internals ---------------------------------------------------------

    def _dispatch(self) -> None:
        """Start the checks that are due, then wait for the next (a loop callback)."""
        self._timer = None
        if self._stopping or self._loop is None:
            return
        try:
            self._dispatch_due(self._loop)
        except BaseException as exc:  # not a check's: the scheduler cannot go on
            if self._ended is not None and not self._ended.done():
                self._ended.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    def _dispatch_due(self, loop: asyncio.AbstractEventLoop) -> None:
        heap, slots = self._heap, self._slots
        now = self._clock()
        while heap and heap[0][0] <= now:
            if self._running >= self._max_in_flight:
                self._parked = True  # until a check ends or the cap is raised
                return
            _, gen, name = heapq.heappop(heap)
            slot = slots.get(name)
            if slot is None or slot.generation != gen or slot.running:
                continue
            self._running += 1
            slot.running = True
            while self._idle:
                ready = self._idle.pop()
                if not ready.done():  # (a worker cancelled from outside: gone)
                    ready.set_result(slot)
                    break
            else:
                task = loop.create_task(self._work(slot), name="check worker")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        self.progress = now
        self._parked = False
        delay = (heap[0][0] - now) if heap else 1.0
        self._timer = loop.call_later(min(max(delay, MIN_SLEEP), 1.0), self._dispatch)

    def _push(self, slot: Slot, due: float) -> None:
        slot.due = due
        entry = (due, slot.generation, slot.service.name)
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry and self._timer is not None:
            # Due before whatever the timer waits for: dispatch at the next turn.
            self._timer.cancel()
            self._timer = self._loop.call_soon(self._dispatch) if self._loop else None

    def _slot_freed(self) -> None:
        """A check ended or the cap was raised: a parked dispatcher goes on."""
        if self._parked and self._loop is not None:
            self._parked = False
            self._timer = self._loop.call_soon(self._dispatch)

    async def _work(self, slot: Slot) -> None:
        """Check ``slot``, then each slot the dispatcher hands over, until cancelled.

        A worker outlives its check and waits for the next one: a new task for
        every check costs more event-loop work than the wait (Python 3.11
        registers each task in a weak set). At most ``max_in_flight`` workers
        are busy; idle ones stay for the next due checks.
        """
        loop = asyncio.get_running_loop()
        while True:
            await self._run_one(slot)
            if self._stopping:
                return
            ready: asyncio.Future[Slot] = loop.create_future()
            self._idle.append(ready)
            slot = await ready

    async def _run_one(self, slot: Slot) -> None:
        svc = slot.service
        started = self._clock()
        try:
            result = await self._check(svc)
        except asyncio.CancelledError:
            raise
        except LocalProblem:
            # No verdict (a CA file here cannot be used; the check logged it): the
            # service keeps its state, and is checked again at the next interval.
            self._push(slot, started + svc.interval)
            return
        except Exception:
            # A bug in a check, not a verdict on the service: say so loudly, keep
            # the service's state as it was, and try again at the next interval.
            log.exception("check of %s failed with an internal error", svc.name)
            self._push(slot, started + svc.interval)
            return
        finally:
            self._running -= 1
            slot.running = False
            self._slot_freed()
        now = self._clock()
        self.progress = now
        self.checks_done += 1
        if self._slots.get(svc.name) is not slot:
            # Removed or replaced by a reload while the check ran.
            log.debug("check %s: result of the previous configuration ignored", svc.name)
            return
        before = slot.state
        new_state, notes = state.step(before, result, slot.policy, now)
        slot.state = new_state
        if self._on_result is not None:
            self._on_result(svc, before, new_state, result, notes)
        base = svc.retry_interval if state.confirming(new_state) else svc.interval
        spread = svc.jitter / 2.0
        delay = base * self._rng.uniform(1.0 - spread, 1.0 + spread)
        self._push(slot, max(started + delay, now))

    async def _cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _shared(policies: dict[state.Policy, state.Policy], policy: state.Policy) -> state.Policy:
    """One object for every service with the same policy (most have the defaults)."""
    return policies.setdefault(policy, policy)
