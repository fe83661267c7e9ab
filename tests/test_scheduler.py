"""The scheduler: timing, jitter, the in-flight cap, isolation of slow checks, reload.

The check function here is a stand-in on purpose: what is under test is when
checks start and what happens to their results, not the checks themselves
(those are tested against real servers in tests/checks/).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from snmp_watchdog import state
from snmp_watchdog.model import CheckKind, Service
from snmp_watchdog.reasons import Reason
from snmp_watchdog.result import CheckResult
from snmp_watchdog.scheduler import Scheduler, policy_for

OK = CheckResult(Reason.OK, "", 0.001)
FAIL = CheckResult(Reason.REFUSED, "connection refused", 0.001)


def svc(name: str, **kw: Any) -> Service:
    base: dict[str, Any] = {
        "interval": 0.2,
        "retry_interval": 0.05,
        "timeout": 1.0,
        "fall": 2,
        "rise": 2,
        "jitter": 0.0,
    }
    base.update(kw)
    return Service(name=name, host="127.0.0.1", port=1, check=CheckKind.TCP, **base)


def run(coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


class Recorder:
    def __init__(self, outcome: Callable[[Service, int], CheckResult] | None = None) -> None:
        self.starts: dict[str, list[float]] = defaultdict(list)
        self.notes: list[tuple[str, state.Notification]] = []
        self.outcome = outcome or (lambda s, n: OK)
        self.loop_time = 0.0

    async def check(self, s: Service) -> CheckResult:
        loop = asyncio.get_running_loop()
        self.starts[s.name].append(loop.time())
        return self.outcome(s, len(self.starts[s.name]))

    def result(
        self,
        s: Service,
        before: state.ServiceState,
        st: state.ServiceState,
        result: CheckResult,
        notes: tuple[state.Notification, ...],
    ) -> None:
        self.notes += [(s.name, note) for note in notes]


async def run_for(sched: Scheduler, seconds: float) -> None:
    task = asyncio.create_task(sched.run())
    await asyncio.sleep(seconds)
    sched.stop()
    await task


def test_a_scheduler_stopped_before_it_runs_checks_nothing_and_returns() -> None:
    rec = Recorder()

    async def main() -> None:
        sched = Scheduler([svc("a")], check=rec.check)
        sched.stop()
        await asyncio.wait_for(sched.run(), 1.0)

    run(main())
    assert rec.starts == {}


def test_stable_service_is_checked_every_interval() -> None:
    rec = Recorder()

    async def main() -> None:
        sched = Scheduler([svc("a", interval=0.1, rise=1)], check=rec.check, on_result=rec.result)
        await run_for(sched, 0.75)

    run(main())
    starts = rec.starts["a"]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # After the first confirmation (rise=1), checks are interval apart.
    assert 6 <= len(starts) <= 9, starts
    assert all(0.09 <= g <= 0.16 for g in gaps), gaps


def test_retry_interval_while_a_change_is_confirmed() -> None:
    # Up after 2 good checks, then failures: fall=3 needs 3 failures at retry_interval.
    rec = Recorder(lambda s, n: OK if n <= 2 else FAIL)

    async def main() -> None:
        sched = Scheduler(
            [svc("a", interval=0.3, retry_interval=0.05, rise=2, fall=3)],
            check=rec.check,
            on_result=rec.result,
        )
        await run_for(sched, 0.9)

    run(main())
    s = rec.starts["a"]
    gaps = [b - a for a, b in itertools.pairwise(s)]
    assert gaps[0] < 0.1  # unknown: confirming at retry_interval
    assert 0.25 <= gaps[1] <= 0.4  # up and stable: interval
    assert all(g < 0.1 for g in gaps[2:4])  # failing: confirming the change quickly
    downs = [n for name, n in rec.notes if n.kind is state.Kind.DOWN]
    assert len(downs) == 1
    assert downs[0].count == 3


def test_jitter_spreads_first_checks() -> None:
    rec = Recorder()
    services = [svc(f"s{i}", interval=1.0, jitter=0.5) for i in range(200)]

    async def main() -> None:
        sched = Scheduler(services, check=rec.check, on_result=rec.result, rng=random.Random(1))
        await run_for(sched, 0.6)

    run(main())
    firsts = sorted(v[0] for v in rec.starts.values())
    assert len(firsts) == 200
    # Spread over ~0.5s (jitter 50% of 1s), not all on the same instant.
    assert firsts[-1] - firsts[0] > 0.35


def test_max_in_flight_is_a_cap_and_a_hung_check_delays_no_one() -> None:
    running = 0
    peak = 0
    fast_done: list[float] = []

    async def check(s: Service) -> CheckResult:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            if s.name == "hung":
                await asyncio.sleep(30)
            else:
                await asyncio.sleep(0.02)
                fast_done.append(asyncio.get_running_loop().time())
            return OK
        finally:
            running -= 1

    services = [svc("hung")] + [svc(f"f{i}", interval=5.0) for i in range(30)]

    async def main() -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        sched = Scheduler(services, check=check, max_in_flight=4)
        await run_for(sched, 0.8)
        return t0

    t0 = run(main())
    assert peak == 4
    assert len(fast_done) >= 30  # every fast service got its first check despite the hung one
    assert max(fast_done[:30]) - t0 < 0.6


def test_stop_cancels_checks_in_flight() -> None:
    cancelled = []

    async def check(s: Service) -> CheckResult:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(s.name)
            raise
        return OK

    async def main() -> None:
        sched = Scheduler([svc("a"), svc("b")], check=check)
        await run_for(sched, 0.2)

    run(main(), timeout=3.0)
    assert sorted(cancelled) == ["a", "b"]


def test_checks_reuse_tasks_and_stop_leaves_no_task_behind() -> None:
    """Checks run on long-lived tasks, no more of them than ever ran at once (not a
    task per check); once stopped, no task of the scheduler is left, idle or busy."""
    rec = Recorder()
    tasks: dict[str, set[asyncio.Task[Any] | None]] = defaultdict(set)

    async def check(s: Service) -> CheckResult:
        tasks[s.name].add(asyncio.current_task())
        if s.name == "hung":
            await asyncio.sleep(60)
        return await rec.check(s)

    async def main() -> bool:
        services = [svc("alone", interval=0.05), svc("hung")]
        services += [svc(f"s{i}", interval=0.1) for i in range(5)]  # due together
        sched = Scheduler(services, check=check, rng=random.Random(1))
        await run_for(sched, 0.5)
        return all(task is not None and task.done() for task in set().union(*tasks.values()))

    all_done = run(main(), timeout=5.0)
    assert sum(len(starts) for starts in rec.starts.values()) >= 20
    assert len(set().union(*tasks.values())) <= 7  # at most all 7 services at once
    assert all_done


def test_a_bug_in_a_check_is_logged_and_the_service_keeps_its_state(caplog: Any) -> None:
    calls = 0

    async def check(s: Service) -> CheckResult:
        nonlocal calls
        calls += 1
        raise ZeroDivisionError("bug")

    async def main() -> Scheduler:
        sched = Scheduler([svc("a", interval=0.1)], check=check)
        await run_for(sched, 0.35)
        return sched

    sched = run(main())
    assert calls >= 2  # rescheduled, not dropped
    assert sched.states()["a"].state is state.State.UNKNOWN
    assert "internal error" in caplog.text


def test_update_keeps_unchanged_state_forgets_removed_starts_new_unknown() -> None:
    rec = Recorder()

    async def main() -> Scheduler:
        a, b = svc("a", rise=1), svc("b", rise=1)
        sched = Scheduler([a, b], check=rec.check, on_result=rec.result)
        task = asyncio.create_task(sched.run())
        await asyncio.sleep(0.1)
        assert sched.states()["a"].state is state.State.UP
        checks_a = sched.states()["a"].checks
        added, changed, removed = sched.update([a, svc("c"), replace(b, interval=0.3)])
        assert (added, changed, removed) == (["c"], ["b"], [])
        assert sched.states()["a"].checks >= checks_a
        assert sched.states()["b"].state is state.State.UP  # changed: state kept
        assert sched.states()["c"].state is state.State.UNKNOWN
        added, changed, removed = sched.update([a])
        assert removed == ["b", "c"]
        await asyncio.sleep(0.1)
        sched.stop()
        await task
        return sched

    sched = run(main())
    assert set(sched.states()) == {"a"}


def test_services_with_the_same_policy_share_it() -> None:
    """10,000 services mostly have the defaults: one policy object for them all."""

    async def never(service: Service) -> CheckResult:
        raise AssertionError("not run")

    sched = Scheduler([svc("a"), svc("b"), svc("c", fall=5)], check=never)
    slots = sched.slots
    assert slots["a"].policy is slots["b"].policy
    assert slots["c"].policy.fall == 5
    sched.update([svc("a"), svc("b"), svc("c", fall=5), svc("d"), svc("e", fall=5, rise=3)])
    assert slots["d"].policy is slots["a"].policy
    assert slots["e"].policy == policy_for(svc("e", fall=5, rise=3))


def test_max_in_flight_follows_a_reload_both_ways() -> None:
    running = 0
    peaks: list[int] = []

    async def check(s: Service) -> CheckResult:
        nonlocal running
        running += 1
        peaks.append(running)
        try:
            await asyncio.sleep(0.05)
            return OK
        finally:
            running -= 1

    services = [svc(f"s{i}", interval=0.05) for i in range(20)]

    async def main() -> tuple[int, int, int]:
        sched = Scheduler(services, check=check, max_in_flight=2)
        task = asyncio.create_task(sched.run())
        await asyncio.sleep(0.3)
        low = max(peaks)
        sched.set_max_in_flight(10)
        peaks.clear()
        await asyncio.sleep(0.3)
        high = max(peaks)
        sched.set_max_in_flight(3)
        await asyncio.sleep(0.2)  # the checks over the new cap finish
        peaks.clear()
        await asyncio.sleep(0.3)
        lowered = max(peaks)
        sched.stop()
        await task
        return low, high, lowered

    low, high, lowered = run(main())
    assert low == 2
    assert high == 10
    assert lowered == 3


def test_stop_while_waiting_for_a_free_slot_returns_at_once() -> None:
    async def check(s: Service) -> CheckResult:
        await asyncio.sleep(60)
        return OK

    async def main() -> None:
        sched = Scheduler([svc("a"), svc("b")], check=check, max_in_flight=1)
        await run_for(sched, 0.2)

    run(main(), timeout=3.0)


def test_the_dispatcher_sleeps_until_a_check_is_due_on_uvloop() -> None:
    """uvloop's timers count whole milliseconds: a shorter sleep ends at once, and a
    dispatcher that slept for what was left would spin, reading the clock again and
    again, until the next check was due. It reads it a few times per check."""
    import uvloop  # noqa: PLC0415 (the daemon's loop when installed; the tests install it)

    reads = 0

    def clock() -> float:
        nonlocal reads
        reads += 1
        return time.monotonic()

    rec = Recorder()

    async def main() -> int:
        # A check due every 2.5 ms: 20 services every 50 ms, spread over the interval.
        services = [svc(f"s{i}", interval=0.05, retry_interval=0.05, jitter=1.0) for i in range(20)]
        sched = Scheduler(services, check=rec.check, clock=clock)
        await run_for(sched, 1.0)
        return sched.checks_done

    checks = uvloop.run(main())
    assert checks > 100
    assert reads / checks < 8, (reads, checks)


def test_policy_for_takes_the_state_machine_settings_of_the_service() -> None:
    svc = Service(
        name="mail",
        host="127.0.0.1",
        port=25,
        check=CheckKind.SMTP,
        fall=5,
        rise=4,
        flap_changes=6,
        flap_window=600.0,
        remind_every=3600.0,
    )
    assert policy_for(svc) == state.Policy(
        fall=5, rise=4, flap_changes=6, flap_window=600.0, remind_every=3600.0
    )


def test_the_result_of_a_check_whose_service_a_reload_removed_or_changed_is_dropped() -> None:
    """Its service is gone, or its new definition decides from its own checks."""
    release = asyncio.Event()
    rec = Recorder()

    async def check(s: Service) -> CheckResult:
        if s.interval == 0.2:  # the definitions before the reload: they hang until released
            await release.wait()
        return await rec.check(s)

    async def main() -> list[tuple[str, float]]:
        seen: list[tuple[str, float]] = []

        def result(
            s: Service,
            before: state.ServiceState,
            st: state.ServiceState,
            result: CheckResult,
            notes: tuple[state.Notification, ...],
        ) -> None:
            seen.append((s.name, s.interval))

        a, b = svc("a"), svc("b")
        sched = Scheduler([a, b], check=check, on_result=result)
        task = asyncio.create_task(sched.run())
        await asyncio.sleep(0.05)  # both checks are running
        sched.update([replace(b, interval=5.0)])  # a removed, b changed
        release.set()
        await asyncio.sleep(0.1)
        sched.stop()
        await task
        return seen

    seen = run(main())
    assert ("a", 0.2) not in seen
    assert ("b", 0.2) not in seen
    assert ("b", 5.0) in seen  # the new definition's own check
