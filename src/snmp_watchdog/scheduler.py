"""The asyncio loop that decides when each service is checked.

Rules:

- One schedule per service, kept in a heap ordered by the monotonic time the
  next check is due. A single dispatcher pops due services and hands their
  checks to worker tasks (an idle one, or a new one when all are busy); no
  service waits for another's check to finish.
- At most ``max_in_flight`` checks run at once. When the cap is reached the
  dispatcher waits for a free slot; due checks then start late, never twice.
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

#: The shortest sleep of the dispatcher. uvloop's timers count whole
#: milliseconds: a shorter one fires at the next turn of the loop, before the
#: check is due, and the dispatcher would spin until it is (a fifth or more of
#: the daemon's CPU at 2,000 checks/s). A due check starts at most this much late.
MIN_SLEEP = 0.001


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
        self._slot_freed = asyncio.Event()
        self._slots: dict[str, Slot] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._tasks: set[asyncio.Task[None]] = set()  # the workers
        self._idle: list[asyncio.Future[Slot]] = []  # idle workers wait on these for a slot
        self._waiter: asyncio.Future[None] | None = None  # the idle dispatcher's sleep
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
        self._slot_freed.set()

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
        """Dispatch checks until ``stop()``; then cancel what is in flight."""
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping:
                now = self._clock()
                self.progress = now
                if self._heap and self._heap[0][0] <= now:
                    _, gen, name = heapq.heappop(self._heap)
                    slot = self._slots.get(name)
                    if slot is None or slot.generation != gen or slot.running:
                        continue
                    while self._running >= self._max_in_flight and not self._stopping:
                        self._slot_freed.clear()
                        await self._slot_freed.wait()
                    if self._stopping:
                        break
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
                    continue
                delay = (self._heap[0][0] - now) if self._heap else 1.0
                # One future and one timer per sleep (not wait_for's task and timeout):
                # the dispatcher sleeps once per due time, so this is on the hot path.
                self._waiter = waiter = loop.create_future()
                timer = loop.call_later(min(max(delay, MIN_SLEEP), 1.0), _release, waiter)
                try:
                    await waiter
                finally:
                    timer.cancel()
                    self._waiter = None
        finally:
            await self._cancel_all()

    def stop(self) -> None:
        self._stopping = True
        self._wake()
        self._slot_freed.set()

    # -- internals ---------------------------------------------------------

    def _push(self, slot: Slot, due: float) -> None:
        slot.due = due
        entry = (due, slot.generation, slot.service.name)
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry:
            self._wake()  # due before whatever the dispatcher sleeps towards

    def _wake(self) -> None:
        if self._waiter is not None:
            _release(self._waiter)

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
            self._slot_freed.set()
            slot.running = False
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


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _shared(policies: dict[state.Policy, state.Policy], policy: state.Policy) -> state.Policy:
    """One object for every service with the same policy (most have the defaults)."""
    return policies.setdefault(policy, policy)
