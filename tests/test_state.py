"""The pure state machine: hysteresis, flapping, reminders (SPEC section 6).

Most behaviour is one table: a start state, a sequence of checks written as
``"+0 +10 -20"`` (a good check at t=0, another at t=10, a failed one at t=20)
and a policy give a final state and the exact notifications. Every check
carries its own detail and elapsed time, so the table also shows which check a
notification reports.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import random
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import pytest

from snmp_watchdog.reasons import Reason
from snmp_watchdog.result import CheckResult
from snmp_watchdog.state import (
    Kind,
    Notification,
    Policy,
    ServiceState,
    State,
    StateMachineError,
    confirming,
    settled,
    step,
)

X, U, D = State.UNKNOWN, State.UP, State.DOWN

#: The documented defaults: fall 3, rise 2, 4 changes within 30 minutes.
P = Policy(fall=3, rise=2, flap_changes=4, flap_window=1800.0, remind_every=0.0)
#: Every check decides, 3 changes within 100 s flap: short flapping stories.
FAST = Policy(fall=1, rise=1, flap_changes=3, flap_window=100.0, remind_every=0.0)
#: The defaults with a reminder every 100 s.
REMIND = replace(P, remind_every=100.0)

FRESH = ServiceState()


def up(at: float = 0.0) -> ServiceState:
    """Confirmed up at ``at`` (silently, from unknown)."""
    return ServiceState(state=U, since=at, successes=2, notified=U)


def down(at: float = 0.0) -> ServiceState:
    """Confirmed down at ``at``, after up, and notified then."""
    return ServiceState(state=D, since=at, failures=3, notified=D, notified_at=at, previous=U)


def result(good: bool, at: float) -> CheckResult:
    """The check made at ``at``: its detail and elapsed time say which one it was."""
    if good:
        return CheckResult(Reason.OK, f"answered at {at:g}", elapsed=at / 1000)
    return CheckResult(Reason.REFUSED, f"refused at {at:g}", elapsed=at / 1000)


def checks(text: str) -> list[tuple[bool, float]]:
    out = []
    for token in text.split():
        assert token[0] in "+-", token
        out.append((token[0] == "+", float(token[1:])))
    return out


def note(
    kind: Kind, state: State, previous: State, count: int, at: float, *, reminder: bool = False
) -> Notification:
    """The notification sent at ``at``; it reports the check made then, which
    always agrees with the state it announces."""
    check = result(state is U, at)
    return Notification(
        kind=kind,
        state=state,
        previous=previous,
        reason=check.reason,
        detail=check.detail,
        count=count,
        elapsed=check.elapsed,
        at=at,
        reminder=reminder,
    )


def down_(previous: State, count: int, at: float) -> Notification:
    return note(Kind.DOWN, D, previous, count, at)


def up_(count: int, at: float) -> Notification:
    return note(Kind.UP, U, D, count, at)


def remind(previous: State, count: int, at: float) -> Notification:
    return note(Kind.DOWN, D, previous, count, at, reminder=True)


@dataclass(frozen=True)
class Case:
    start: ServiceState
    checks: str
    expect: dict[str, object]  # fields of the final state
    notes: tuple[Notification, ...] = ()
    policy: Policy = P


CASES = [
    # every (confirmed state, outcome) pair
    pytest.param(
        Case(FRESH, "+0", {"state": X, "successes": 1, "failures": 0, "since": None}),
        id="unknown-good-counts-towards-up",
    ),
    pytest.param(
        Case(FRESH, "-0 -10", {"state": X, "failures": 2, "successes": 0, "notified": X}),
        id="unknown-fail-counts-towards-down",
    ),
    pytest.param(
        Case(up(), "+10", {"state": U, "successes": 3, "since": 0.0}),
        id="up-good-stays-up",
    ),
    pytest.param(
        Case(up(), "-10 -20", {"state": U, "failures": 2, "successes": 0, "since": 0.0}),
        id="up-fail-is-a-blip-below-fall",
    ),
    pytest.param(
        Case(down(), "+10", {"state": D, "successes": 1, "failures": 0, "since": 0.0}),
        id="down-good-is-a-blip-below-rise",
    ),
    pytest.param(
        Case(down(), "-10", {"state": D, "failures": 4, "since": 0.0}),
        id="down-fail-stays-down",
    ),
    # confirmations
    pytest.param(
        Case(
            FRESH,
            "+0 +10",
            {"state": U, "since": 10.0, "previous": X, "notified": U, "notified_at": None},
        ),
        id="unknown-confirmed-up-silently",
    ),
    pytest.param(
        Case(
            FRESH,
            "-0 -10 -20",
            {"state": D, "since": 20.0, "previous": X, "notified": D, "notified_at": 20.0},
            (down_(X, 3, 20),),
        ),
        id="unknown-confirmed-down-is-news",
    ),
    pytest.param(
        Case(FRESH, "-0 -10 +20 -30 -40", {"state": X, "failures": 2, "successes": 0}),
        id="unknown-success-resets-failures",
    ),
    pytest.param(
        Case(FRESH, "+0 -10 +20", {"state": X, "successes": 1, "failures": 0}),
        id="unknown-failure-resets-successes",
    ),
    pytest.param(
        Case(
            up(),
            "-10 -20 -30",
            {"state": D, "since": 30.0, "previous": U, "notified": D, "notified_at": 30.0},
            (down_(U, 3, 30),),
        ),
        id="up-fall-failures-confirm-down",
    ),
    pytest.param(
        Case(up(), "-10 -20 +30 -40 -50 +60", {"state": U, "successes": 1, "since": 0.0}),
        id="up-blips-shorter-than-fall-are-silent",
    ),
    pytest.param(
        Case(
            down(),
            "+10 +20",
            {"state": U, "since": 20.0, "previous": D, "notified": U, "notified_at": 20.0},
            (up_(2, 20),),
        ),
        id="down-rise-successes-confirm-up",
    ),
    pytest.param(
        Case(down(), "+10 -20 +30 -40", {"state": D, "failures": 1, "since": 0.0}),
        id="down-blips-shorter-than-rise-are-silent",
    ),
    pytest.param(
        Case(
            up(),
            "-10 -20 -30 -40 -50 -60",
            {"state": D, "failures": 6, "since": 30.0},
            (down_(U, 3, 30),),
        ),
        id="one-notification-per-change-however-long",
    ),
    pytest.param(
        Case(
            FRESH,
            "+0 +10 -20 -30 -40 +50 +60",
            {"state": U, "notified": U, "since": 60.0},
            (down_(U, 3, 40), up_(2, 60)),
        ),
        id="silent-first-up-pairs-with-later-down",
    ),
    pytest.param(
        Case(
            FRESH,
            "-0 +10 -20 +30",
            {"state": U, "flapping": False, "changes": (10.0, 20.0, 30.0)},
            (down_(X, 1, 0), up_(1, 10), down_(U, 1, 20), up_(1, 30)),
            replace(P, fall=1, rise=1),
        ),
        id="fall-and-rise-of-one",
    ),
    # flapping (FAST: fall 1, rise 1, 3 changes within 100 s)
    pytest.param(
        Case(
            FRESH,
            "+0 -10 +20 -30",
            {
                "state": D,
                "flapping": True,
                "flapping_since": 30.0,
                "notified": U,
                "notified_at": 20.0,
                "changes": (10.0, 20.0, 30.0),
            },
            (down_(U, 1, 10), up_(1, 20), note(Kind.FLAPPING, D, U, 1, 30)),
            FAST,
        ),
        id="flapping-starts-instead-of-the-change",
    ),
    pytest.param(
        Case(
            FRESH,
            "+0 -10 +20 -30 +40 -50 +60",
            {
                "state": U,
                "previous": D,
                "since": 60.0,
                "flapping": True,
                "flapping_since": 30.0,
                "notified": U,
                "changes": (10.0, 20.0, 30.0, 40.0, 50.0, 60.0),
            },
            (down_(U, 1, 10), up_(1, 20), note(Kind.FLAPPING, D, U, 1, 30)),
            FAST,
        ),
        id="flapping-holds-back-up-and-down",
    ),
    pytest.param(
        Case(
            FRESH,
            "+0 -10 +200 -400",
            {"state": D, "flapping": False, "changes": (400.0,)},
            (down_(U, 1, 10), up_(1, 200), down_(U, 1, 400)),
            FAST,
        ),
        id="changes-older-than-the-window-do-not-count",
    ),
    pytest.param(
        Case(
            FRESH,
            "+0 -10 +20 -30 +40 +100 +139 +140",
            {
                "state": U,
                "flapping": False,
                "flapping_since": None,
                "notified": U,
                "notified_at": 140.0,
                "changes": (),
            },
            (
                down_(U, 1, 10),
                up_(1, 20),
                note(Kind.FLAPPING, D, U, 1, 30),
                note(Kind.FLAPPING_ENDED, U, U, 4, 140),
            ),
            FAST,
        ),
        id="flapping-ends-in-the-notified-state",
    ),
    pytest.param(
        Case(
            FRESH,
            "+0 -10 +20 -30 -129 -130",
            {"state": D, "flapping": False, "notified": D, "notified_at": 130.0},
            (
                down_(U, 1, 10),
                up_(1, 20),
                note(Kind.FLAPPING, D, U, 1, 30),
                note(Kind.FLAPPING_ENDED, D, U, 3, 130),
                down_(U, 3, 130),
            ),
            FAST,
        ),
        id="flapping-ends-in-another-state-then-tells-it",
    ),
    pytest.param(
        Case(
            FRESH,
            "+0 -10 +20 -30 +100 +130 +199 +200",
            {"state": U, "flapping": False, "notified": U, "notified_at": 200.0},
            (
                down_(U, 1, 10),
                up_(1, 20),
                note(Kind.FLAPPING, D, U, 1, 30),
                note(Kind.FLAPPING_ENDED, U, U, 4, 200),
            ),
            FAST,
        ),
        id="a-change-while-flapping-restarts-the-wait",
    ),
    pytest.param(
        Case(
            FRESH,
            "+0 +10 -20 +30 +40 -50 +150 -160",
            {"state": D, "flapping": False, "notified": D, "failures": 1},
            (
                down_(U, 1, 20),
                up_(2, 40),
                note(Kind.FLAPPING, D, U, 1, 50),
                note(Kind.FLAPPING_ENDED, D, U, 1, 160),
                down_(U, 1, 160),
            ),
            replace(FAST, rise=2),
        ),
        id="flapping-ends-at-a-check-that-agrees-with-the-state",
    ),
    pytest.param(
        Case(
            FRESH,
            "-0 +10 +110",
            {"state": U, "flapping": False, "notified": U},
            (
                down_(X, 1, 0),
                note(Kind.FLAPPING, U, D, 1, 10),
                note(Kind.FLAPPING_ENDED, U, D, 2, 110),
                up_(2, 110),
            ),
            replace(FAST, flap_changes=1),
        ),
        id="first-confirmation-is-no-change-for-flapping",
    ),
    pytest.param(
        Case(
            FRESH,
            "+0 -10 +20 -30 +40 -50",
            {"state": D, "flapping": False, "changes": (10.0, 20.0, 30.0, 40.0, 50.0)},
            (down_(U, 1, 10), up_(1, 20), down_(U, 1, 30), up_(1, 40), down_(U, 1, 50)),
            replace(FAST, flap_changes=0),
        ),
        id="flap-detection-disabled",
    ),
    # reminders
    pytest.param(
        Case(
            down(),
            "-50 -99 -100 -150 -199 -200",
            {"state": D, "notified_at": 200.0, "failures": 9},
            (remind(U, 6, 100), remind(U, 9, 200)),
            REMIND,
        ),
        id="reminders-repeat-down",
    ),
    pytest.param(
        Case(
            FRESH,
            "-0 -10 -20 -119 -120",
            {"state": D, "notified_at": 120.0},
            (down_(X, 3, 20), remind(X, 5, 120)),
            REMIND,
        ),
        id="reminders-count-from-the-down",
    ),
    pytest.param(
        Case(down(), "+100 -110", {"state": D, "notified_at": 110.0}, (remind(U, 1, 110),), REMIND),
        id="a-reminder-waits-for-a-check-that-agrees",
    ),
    pytest.param(
        Case(down(), "+10 +20 +200 +400", {"state": U}, (up_(2, 20),), REMIND),
        id="no-reminders-once-up",
    ),
    pytest.param(
        Case(down(), "-1000 -100000", {"state": D, "notified_at": 0.0}),
        id="no-reminders-when-remind-every-is-zero",
    ),
    pytest.param(
        Case(
            FRESH,
            "+0 -10 +20 -30 -200 -500 -1029 -1030 -1129 -1130",
            {"state": D, "flapping": False, "notified_at": 1130.0},
            (
                down_(U, 1, 10),
                up_(1, 20),
                note(Kind.FLAPPING, D, U, 1, 30),
                note(Kind.FLAPPING_ENDED, D, U, 5, 1030),
                down_(U, 5, 1030),
                remind(U, 7, 1130),
            ),
            replace(FAST, flap_window=1000.0, remind_every=100.0),
        ),
        id="no-reminders-while-flapping",
    ),
    pytest.param(
        Case(
            FRESH,
            "-0 +10 -20 +30 -40 -140 -141 -240",
            {"state": D, "flapping": False, "notified": D, "notified_at": 240.0},
            (
                down_(X, 1, 0),
                up_(1, 10),
                down_(U, 1, 20),
                note(Kind.FLAPPING, U, D, 1, 30),
                note(Kind.FLAPPING_ENDED, D, D, 2, 140),
                remind(U, 4, 240),
            ),
            replace(FAST, remind_every=100.0),
        ),
        id="flapping-ended-restarts-the-reminder-clock",
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_sequence(case: Case) -> None:
    st = case.start
    sent: list[Notification] = []
    sequence = checks(case.checks)
    for good, at in sequence:
        st, notes = step(st, result(good, at), case.policy, at)
        sent.extend(notes)
    assert sent == list(case.notes)
    assert {name: getattr(st, name) for name in case.expect} == case.expect
    good, at = sequence[-1]
    last = result(good, at)
    assert (st.last_check, st.last_reason, st.last_detail, st.last_elapsed) == (
        at,
        last.reason,
        last.detail,
        last.elapsed,
    )
    assert st.checks == case.start.checks + len(sequence)
    assert st.failed_checks == case.start.failed_checks + sum(not g for g, _ in sequence)


def test_step_does_not_change_its_input() -> None:
    before = up()
    after, _ = step(before, result(False, 5), P, 5)
    assert before == up()
    assert after.failures == 1


@pytest.mark.parametrize(
    ("st", "expected"),
    [
        pytest.param(FRESH, True, id="unknown"),
        pytest.param(ServiceState(state=X, successes=1), True, id="unknown-after-a-check"),
        pytest.param(up(), False, id="up-stable"),
        pytest.param(replace(up(), successes=0, failures=1), True, id="up-after-a-failure"),
        pytest.param(down(), False, id="down-stable"),
        pytest.param(replace(down(), failures=0, successes=1), True, id="down-after-a-success"),
    ],
)
def test_confirming(st: ServiceState, expected: bool) -> None:
    assert confirming(st) is expected


def test_confirming_follows_the_steps() -> None:
    """Retry interval while unknown and while a change is pending, interval otherwise."""
    st, seen = FRESH, []
    for good, at in checks("+0 +10 +20 -30 -40 -50 -60 +70 -80 +90 +100"):
        st, _ = step(st, result(good, at), P, at)
        seen.append(confirming(st))
    assert seen == [True, False, False, True, True, False, False, True, False, True, False]


@pytest.mark.parametrize(
    ("st", "rule"),
    [
        pytest.param(ServiceState(failures=1, successes=1), "both counted", id="both-counts"),
        pytest.param(ServiceState(checks=-1), "counter is negative", id="negative-counter"),
        pytest.param(
            ServiceState(flapping=True, flapping_since=0.0), "unknown service", id="unknown-flaps"
        ),
        pytest.param(replace(down(), flapping=True), "flapping_since", id="flapping-without-since"),
        pytest.param(
            replace(up(), flapping_since=5.0), "flapping_since", id="since-without-flapping"
        ),
        pytest.param(
            replace(down(), notified=U), "told the confirmed state", id="not-told-outside-flapping"
        ),
        pytest.param(
            replace(down(), notified_at=None), "no recorded time", id="told-down-at-no-time"
        ),
    ],
)
def test_illegal_state_is_refused(st: ServiceState, rule: str) -> None:
    with pytest.raises(StateMachineError, match=f"illegal service state: .*{rule}"):
        step(st, result(True, 0), P, 0)


@pytest.mark.parametrize(
    ("changes", "rule"),
    [
        pytest.param({"fall": 0}, "fall must be at least 1", id="fall"),
        pytest.param({"rise": 0}, "rise must be at least 1", id="rise"),
        pytest.param({"flap_changes": -1}, "flap_changes must not be negative", id="flap-changes"),
        pytest.param({"flap_window": 0.0}, "flap_window must be positive", id="flap-window"),
        pytest.param({"remind_every": -1.0}, "remind_every must not be negative", id="remind"),
    ],
)
def test_invalid_policy_is_refused(changes: dict[str, Any], rule: str) -> None:
    with pytest.raises(StateMachineError, match=f"invalid policy: {rule}"):
        replace(P, **changes)


def test_zero_window_is_fine_without_flap_detection() -> None:
    assert replace(P, flap_changes=0, flap_window=0.0).flap_window == 0.0


def _simulate(seed: int, seen: Counter[tuple[Kind, bool]]) -> None:
    """Random check sequences under a random policy, checking the rules at every step."""
    rng = random.Random(seed)
    policy = Policy(
        fall=rng.randint(1, 4),
        rise=rng.randint(1, 4),
        flap_changes=rng.choice([0, 1, 2, 3, 4]),
        flap_window=rng.choice([30.0, 200.0]),
        remind_every=rng.choice([0.0, 50.0, 300.0]),
    )
    where = f"seed {seed}, {policy}"
    st, now, good = FRESH, 0.0, True
    receiver: State | None = None  # what a receiver pairing Down with Up believes
    in_flap = False  # between Flapping and Flapping-ended, as a receiver saw it
    kinds: list[Kind] = []  # every notification but reminders, in order
    for _ in range(400):
        if rng.random() < 0.3:
            good = not good
        now += rng.choice([1.0, 5.0, 10.0, 40.0])
        st, notes = step(st, result(good, now), policy, now)
        for n in notes:
            seen[n.kind, n.reminder] += 1
            assert n.at == now, where
            assert n.state is st.state, where
            assert n.reason.ok == (n.state is U), where  # the reported check supports the state
            assert n.count >= 1, where
            if n.reminder:
                assert (n.kind, receiver, in_flap) == (Kind.DOWN, D, False), where
                continue
            assert not kinds or kinds[-1] is not n.kind, f"{where}: two {n.kind} in a row"
            kinds.append(n.kind)
            if n.kind is Kind.FLAPPING:
                assert not in_flap, where
                in_flap = True
            elif n.kind is Kind.FLAPPING_ENDED:
                assert in_flap, where
                in_flap = False
            else:
                assert not in_flap, f"{where}: {n.kind} while flapping"
                assert receiver is not n.state, where
                receiver = n.state
        assert st.failures == 0 or st.successes == 0, where
        assert st.flapping == in_flap, where
        if st.flapping:
            assert policy.flap_changes > 0, where
        else:
            assert st.notified is st.state, where
            assert receiver is st.state or (receiver is None and st.state is not D), where
    updown = [k for k in kinds if k in (Kind.DOWN, Kind.UP)]
    assert updown[:1] in ([], [Kind.DOWN]), where
    assert all(a is not b for a, b in itertools.pairwise(updown)), where


def test_random_sequences_keep_the_rules() -> None:
    seen: Counter[tuple[Kind, bool]] = Counter()
    for seed in range(60):
        _simulate(seed, seen)
    # the sequences did exercise every kind, reminders included
    assert set(seen) == {(kind, False) for kind in Kind} | {(Kind.DOWN, True)}


def test_a_check_changes_only_what_it_counts() -> None:
    """A check that confirms nothing carries every other remembered field over as it was."""
    current = ServiceState(
        state=D,
        since=5.0,
        failures=2,
        changes=(6.0, 7.0),
        flapping=True,
        flapping_since=7.0,
        notified=U,
        notified_at=3.0,
        last_check=8.0,
        last_reason=Reason.REFUSED,
        last_detail="connection refused",
        last_elapsed=0.5,
        checks=9,
        failed_checks=4,
        previous=U,
    )
    result = CheckResult(Reason.TIMEOUT, "deadline passed", 1.5)
    new, notes = step(current, result, P, 10.0)
    assert notes == ()
    counted = {
        "failures": 3,
        "successes": 0,
        "last_check": 10.0,
        "last_reason": Reason.TIMEOUT,
        "last_detail": "deadline passed",
        "last_elapsed": 1.5,
        "checks": 10,
        "failed_checks": 5,
    }
    for f in dataclasses.fields(ServiceState):
        expected = counted.get(f.name, getattr(current, f.name))
        assert getattr(new, f.name) == expected, f.name


@pytest.mark.parametrize(
    ("start", "text", "policy", "expected"),
    [
        pytest.param(up(), "+10", P, True, id="up-again"),
        pytest.param(down(), "-10", P, True, id="down-again"),
        pytest.param(down(), "-10", REMIND, True, id="down-again-before-a-reminder"),
        pytest.param(FRESH, "+10", P, False, id="unknown"),
        pytest.param(up(), "-10", P, False, id="confirming-down"),
        pytest.param(down(), "+10", P, False, id="confirming-up"),
        pytest.param(FRESH, "+0 +10", P, False, id="just-confirmed-silently"),
        pytest.param(up(), "-10 -20 -30", P, False, id="just-confirmed-and-told"),
        pytest.param(down(), "-100", REMIND, False, id="a-reminder"),
        pytest.param(FRESH, "+10 -20 +30", FAST, False, id="started-flapping"),
        pytest.param(ServiceState(state=U, notified=U, successes=1), "+10", P, True, id="no-since"),
    ],
)
def test_settled(start: ServiceState, text: str, policy: Policy, expected: bool) -> None:
    """True only for a check that repeats a confirmed state and tells nobody anything."""
    st = start
    for good, at in checks(text):
        st, _ = step(st, result(good, at), policy, at)
    assert settled(st) is expected


def _future(st: ServiceState, plan: list[tuple[bool, float]], policy: Policy) -> list[Any]:
    """What the checks of ``plan`` notify from ``st``, and the states they confirm."""
    seen: list[Any] = []
    for good, now in plan:
        st, notes = step(st, result(good, now), policy, now)
        seen.append((st.state, st.notified, st.flapping))
        seen.extend(replace(n, count=0) for n in notes)
    return seen


def test_forgetting_settled_checks_changes_nothing_that_follows() -> None:
    """A settled state followed by settled checks goes on as the state after them.

    The daemon saves a state promptly unless it and the state before it are
    both settled; what it saves later can be lost in a crash. Continuing from
    the last state saved promptly must confirm the same states and send the
    same notifications, counts (runs of checks) aside.
    """
    forks = 0
    for seed in range(40):
        rng = random.Random(seed)
        policy = Policy(
            fall=rng.randint(1, 3),
            rise=rng.randint(1, 3),
            flap_changes=rng.choice([0, 3]),
            flap_window=rng.choice([30.0, 200.0]),
            remind_every=rng.choice([0.0, 50.0]),
        )
        plan, now, good = [], 0.0, True
        for _ in range(160):
            if rng.random() < 0.15:
                good = not good
            now += rng.choice([1.0, 5.0, 10.0, 40.0])
            plan.append((good, now))
        states = [FRESH]
        for good, at in plan:
            states.append(step(states[-1], result(good, at), policy, at)[0])
        saved = 0  # the last state saved promptly
        for k in range(1, len(states)):
            if not (settled(states[k - 1]) and settled(states[k])):
                saved = k
                continue
            future = plan[k : k + 40]
            assert _future(states[saved], future, policy) == _future(states[k], future, policy), (
                seed,
                k,
            )
            forks += 1
    assert forks > 1000


def test_the_state_machine_needs_neither_the_config_nor_its_model() -> None:
    code = (
        "import sys, snmp_watchdog.state; "
        "print(sorted(m for m in sys.modules if m.startswith('snmp_watchdog')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded = ast.literal_eval(out)
    assert "snmp_watchdog.model" not in loaded
    assert "snmp_watchdog.config" not in loaded
