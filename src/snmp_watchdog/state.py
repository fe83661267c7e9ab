"""The state machine of one service: hysteresis, flapping and reminders.

This module does no I/O. It reads no clock, opens no socket, logs nothing and
draws no random numbers: the caller passes in the current state, one check
result, the policy and the time, and gets back the new state and the
notifications to send. The same inputs always give the same outputs. Times are
seconds on whatever clock the caller uses; a clock that steps backwards only
makes windows and reminders wait longer.

Rules (SPEC section 6):

* States are ``unknown`` (nothing known yet), ``up`` and ``down``. A check
  that succeeds pushes towards ``up``, one that fails pushes towards ``down``
  (``_TOWARDS``). A success resets the count of consecutive failures and the
  other way round.
* From ``up``, ``fall`` consecutive failures confirm ``down``; from ``down``,
  ``rise`` consecutive successes confirm ``up``; from ``unknown``, whichever
  comes first. Fewer checks are a blip and change nothing.
* Each confirmed change gives exactly one notification (``_CHANGES``), whose
  ``count`` is the run of checks that confirmed it, except that the first
  confirmation of ``up`` (from ``unknown``) is silent: receivers are still
  recorded as told ``up``, so a later Down pairs with it. A service first
  confirmed ``down`` is news and is notified.
* Flapping: the times of confirmed up<->down changes are kept while younger
  than ``flap_window``. The change that brings their number to
  ``flap_changes`` (when that is not 0) makes the service flapping and sends
  one Flapping notification instead of its Down or Up. While flapping, state
  is still tracked but no Down or Up is sent.
* Flapping ends at the first step at which no confirmed change is younger than
  ``flap_window`` and the check agrees with the confirmed state (a blip delays
  the end by fewer than ``fall`` or ``rise`` checks, so that every notification
  carries a reason that supports its state). It sends one Flapping-ended
  notification with the current state, then a Down or Up if that state differs
  from the last one notified, so a receiver pairing Down with Up ends with the
  true state.
* Reminders: with ``remind_every`` > 0, a service that stays ``down`` (not
  flapping, receivers told ``down``) gets its Down repeated, marked as a
  reminder, once ``remind_every`` has passed since receivers were last told its
  state, at the next check that agrees with ``down``.
* Outside flapping, receivers have always been told the confirmed state
  (``notified == state``). ``step`` refuses a state that breaks this or any
  other rule in ``_INVARIANTS`` with ``StateMachineError``, and ``Policy``
  refuses settings out of range the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import NamedTuple

from snmp_watchdog.reasons import Reason
from snmp_watchdog.result import CheckResult


class StateMachineError(ValueError):
    """An input the state machine does not accept: a policy out of range, or a
    service state it could not have produced."""


class State(Enum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


class Kind(Enum):
    """What a notification announces."""

    DOWN = "down"
    UP = "up"
    FLAPPING = "flapping"
    FLAPPING_ENDED = "flapping_ended"


class _Change(NamedTuple):
    kind: Kind | None  # the notification it sends outside flapping; None: silent
    flaps: bool  # counts towards flapping


#: (confirmed state, check succeeded) -> the state a run of such checks
#: confirms, or None when the check agrees with the confirmed state.
_TOWARDS: dict[tuple[State, bool], State | None] = {
    (State.UNKNOWN, True): State.UP,
    (State.UNKNOWN, False): State.DOWN,
    (State.UP, True): None,
    (State.UP, False): State.DOWN,
    (State.DOWN, True): State.UP,
    (State.DOWN, False): None,
}

#: Every confirmed change: (from, to) -> what it sends and whether it flaps.
_CHANGES: dict[tuple[State, State], _Change] = {
    (State.UNKNOWN, State.UP): _Change(kind=None, flaps=False),  # first look: no news
    (State.UNKNOWN, State.DOWN): _Change(kind=Kind.DOWN, flaps=False),  # down at start: news
    (State.UP, State.DOWN): _Change(kind=Kind.DOWN, flaps=True),
    (State.DOWN, State.UP): _Change(kind=Kind.UP, flaps=True),
}

#: The Down or Up that tells receivers a confirmed state.
_TELLS: dict[State, Kind] = {State.UP: Kind.UP, State.DOWN: Kind.DOWN}


@dataclass(frozen=True, slots=True)
class Policy:
    """The hysteresis and notification settings of one service."""

    fall: int
    rise: int
    flap_changes: int  # 0: no flap detection
    flap_window: float  # seconds
    remind_every: float  # seconds; 0: never

    def __post_init__(self) -> None:
        for broken, rule in _POLICY_RULES:
            if broken(self):
                raise StateMachineError(f"invalid policy: {rule}: {self!r}")


_POLICY_RULES: tuple[tuple[Callable[[Policy], bool], str], ...] = (
    (lambda p: p.fall < 1, "fall must be at least 1"),
    (lambda p: p.rise < 1, "rise must be at least 1"),
    (lambda p: p.flap_changes < 0, "flap_changes must not be negative"),
    (
        lambda p: p.flap_changes > 0 and not p.flap_window > 0,
        "flap_window must be positive when flap_changes is set",
    ),
    (lambda p: not p.remind_every >= 0, "remind_every must not be negative"),
)


@dataclass(frozen=True, slots=True)
class ServiceState:
    """Everything the machine remembers about one service (the store keeps it)."""

    state: State = State.UNKNOWN
    since: float | None = None  # time the confirmed state was entered
    failures: int = 0  # consecutive failed checks
    successes: int = 0  # consecutive good checks
    changes: tuple[float, ...] = ()  # times of confirmed up<->down changes inside flap_window
    flapping: bool = False
    flapping_since: float | None = None
    notified: State = State.UNKNOWN  # last Up/Down state the receivers were told
    notified_at: float | None = None  # when receivers were last told it (reminders count from it)
    last_check: float | None = None
    last_reason: Reason | None = None
    last_detail: str = ""
    last_elapsed: float = 0.0
    checks: int = 0  # counters for `watchdog status`
    failed_checks: int = 0
    previous: State = State.UNKNOWN  # the confirmed state before ``state``


#: What every ``ServiceState`` given to ``step`` must satisfy: (broken, rule).
_INVARIANTS: tuple[tuple[Callable[[ServiceState], bool], str], ...] = (
    (
        lambda s: s.failures > 0 and s.successes > 0,
        "failures and successes are both counted, but each check resets the other",
    ),
    (
        lambda s: min(s.failures, s.successes, s.checks, s.failed_checks) < 0,
        "a counter is negative",
    ),
    (lambda s: s.flapping and s.state is State.UNKNOWN, "an unknown service cannot be flapping"),
    (
        lambda s: s.flapping != (s.flapping_since is not None),
        "flapping_since must be set exactly while flapping",
    ),
    (
        lambda s: not s.flapping and s.notified is not s.state,
        "outside flapping, receivers must have been told the confirmed state",
    ),
    (
        lambda s: s.notified is State.DOWN and s.notified_at is None,
        "receivers were told down at no recorded time",
    ),
)


@dataclass(frozen=True, slots=True)
class Notification:
    """One notification to send to each of the service's receivers."""

    kind: Kind
    state: State  # the service's confirmed state now
    previous: State  # the confirmed state before this change (Flapping-ended: last notified)
    reason: Reason  # reason of the check that confirmed it
    detail: str
    count: int  # consecutive checks that confirmed this state
    elapsed: float  # response time of that check, seconds
    at: float  # the ``now`` passed to ``step``
    reminder: bool = False


def confirming(st: ServiceState) -> bool:
    """True while a change is being confirmed, or nothing is confirmed yet.

    The caller then checks every ``retry_interval``, otherwise every ``interval``.
    """
    if st.state is State.UNKNOWN:
        return True
    return (st.failures if st.state is State.UP else st.successes) > 0


def settled(st: ServiceState) -> bool:
    """True when the check that gave ``st`` only repeated what was confirmed before it.

    Nothing is being confirmed, and that check neither confirmed a state nor
    told receivers anything nor started flapping. From a settled state, more
    checks that leave it settled change the last check's time, reason and
    detail and the counters, and nothing the machine does next (only the
    ``count`` of a later reminder): a caller may save a settled state that
    follows a settled one less promptly than any other, and continuing from
    the earlier one after a crash confirms and notifies the same.
    """
    at = st.last_check
    return (
        st.state is not State.UNKNOWN
        and not confirming(st)
        and at is not None
        and at not in (st.since, st.notified_at, st.flapping_since)
    )


def step(
    current: ServiceState, result: CheckResult, policy: Policy, now: float
) -> tuple[ServiceState, tuple[Notification, ...]]:
    """Apply one check result at time ``now``; return the new state and what to send.

    Raises ``StateMachineError`` when ``current`` breaks one of ``_INVARIANTS``.
    """
    for broken, rule in _INVARIANTS:
        if broken(current):
            raise StateMachineError(f"illegal service state: {rule}: {current!r}")
    good = result.ok
    changes = current.changes
    if changes:
        changes = tuple(t for t in changes if now - t < policy.flap_window)
    # Built field by field rather than with ``replace``: this runs once per check.
    st = ServiceState(
        state=current.state,
        since=current.since,
        failures=0 if good else current.failures + 1,
        successes=current.successes + 1 if good else 0,
        changes=changes,
        flapping=current.flapping,
        flapping_since=current.flapping_since,
        notified=current.notified,
        notified_at=current.notified_at,
        last_check=now,
        last_reason=result.reason,
        last_detail=result.detail,
        last_elapsed=result.elapsed,
        checks=current.checks + 1,
        failed_checks=current.failed_checks + (0 if good else 1),
        previous=current.previous,
    )
    notes: tuple[Notification, ...] = ()
    towards = _TOWARDS[(current.state, good)]
    if towards is not None and _run(st) >= (policy.rise if good else policy.fall):
        st, notes = _confirm(st, towards, result, policy, now)
    if st.flapping and not st.changes and not confirming(st):
        st, ended = _end_flapping(st, result, now)
        notes += ended
    elif _reminder_due(st, policy, now):
        notes += (_note(Kind.DOWN, st, st.previous, result, now, reminder=True),)
        st = replace(st, notified_at=now)
    return st, notes


def _run(st: ServiceState) -> int:
    """The consecutive checks behind the latest outcome."""
    return st.successes or st.failures


def _confirm(
    st: ServiceState, new: State, result: CheckResult, policy: Policy, now: float
) -> tuple[ServiceState, tuple[Notification, ...]]:
    old = st.state
    change = _CHANGES[(old, new)]
    changes = (*st.changes, now) if change.flaps else st.changes
    st = replace(st, state=new, previous=old, since=now, changes=changes)
    if st.flapping:
        return st, ()  # held back; the change restarts the wait for stability
    if change.flaps and 0 < policy.flap_changes <= len(changes):
        st = replace(st, flapping=True, flapping_since=now)
        return st, (_note(Kind.FLAPPING, st, old, result, now),)
    if change.kind is None:
        return replace(st, notified=new), ()
    note = _note(change.kind, st, old, result, now)
    return replace(st, notified=new, notified_at=now), (note,)


def _end_flapping(
    st: ServiceState, result: CheckResult, now: float
) -> tuple[ServiceState, tuple[Notification, ...]]:
    told = st.notified
    notes = [_note(Kind.FLAPPING_ENDED, st, told, result, now)]
    if st.state is not told:
        notes.append(_note(_TELLS[st.state], st, told, result, now))
    ended = replace(st, flapping=False, flapping_since=None, notified=st.state, notified_at=now)
    return ended, tuple(notes)


def _reminder_due(st: ServiceState, policy: Policy, now: float) -> bool:
    return (
        policy.remind_every > 0
        and st.state is State.DOWN
        and st.notified is State.DOWN
        and not st.flapping
        and not confirming(st)
        and st.notified_at is not None
        and now - st.notified_at >= policy.remind_every
    )


def _note(
    kind: Kind,
    st: ServiceState,
    previous: State,
    result: CheckResult,
    now: float,
    *,
    reminder: bool = False,
) -> Notification:
    return Notification(
        kind=kind,
        state=st.state,
        previous=previous,
        reason=result.reason,
        detail=result.detail,
        count=_run(st),
        elapsed=result.elapsed,
        at=now,
        reminder=reminder,
    )
