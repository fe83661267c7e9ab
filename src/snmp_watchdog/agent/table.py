"""What the read-only agent serves: the MIB's scalars and service table, in OID order.

This module does no I/O and does not import pysnmp: the SNMP side
(``agent.server``) and the Net-SNMP ``pass_persist`` helper both answer from
it. Rules:

* A value is a ``(type, value)`` pair; ``type`` is one of ``TYPES``, named as
  Net-SNMP's ``pass`` protocol names them: ``string`` (bytes), ``integer``,
  ``unsigned`` (Unsigned32, the same wire type as Gauge32), ``gauge``,
  ``counter``, ``timeticks``, ``objectid`` (a tuple of arcs).
* The objects are the MIB's read-only scalars (``wdGeneral`` 1 to 6, each
  with the one instance ``.0``) and the columns 2 to 15 of ``wdServiceTable``
  (instanced by ``wdServiceIndex``), optionally preceded by SNMPv2-MIB's
  ``sysDescr.0``, ``sysObjectID.0`` and ``sysUpTime.0``. ``wdNotificationFlags``
  and ``wdNotificationText`` are accessible-for-notify and never served.
* Scalars whose value changes with time (uptime, the notification sequence)
  are functions called when they are read; everything else is stored.
* ``get`` answers one OID: a value, ``NO_SUCH_OBJECT`` (not an object of
  ours) or ``NO_SUCH_INSTANCE``. ``next`` answers the first instance after an
  OID in lexicographic order, or None at the end of the view. Both are a
  dictionary lookup or a binary search over the sorted row indexes: a
  GETBULK of the whole table costs the same per row at 10 or 10,000 rows.
* Rows change one at a time (``put``, ``remove``): a changed row replaces a
  tuple, a new or removed index is inserted into or deleted from the sorted
  list of indexes. The counts of services up, down and unknown follow.
* ``service_row`` builds a row from a service's definition and its state
  machine state. Its reason, response time and consecutive count are those
  of the check that confirmed the current state (``Confirmed``), as in the
  Down and Up notifications; the counters and the last check time follow
  every check.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from snmp_watchdog import model, state
from snmp_watchdog.clocks import to_wall
from snmp_watchdog.notify.mib import (
    HOST_SIZE,
    KIND_SIZE,
    MAX32,
    NAME_SIZE,
    STATE_VALUES,
    TEXT_SIZE,
    UNKNOWN_TIME,
    VERSION_SIZE,
    Oids,
    date_and_time,
    display_text,
)
from snmp_watchdog.reasons import Reason

Oid = tuple[int, ...]
Value = tuple[str, object]
Row = tuple[Value, ...]

TYPES: Final = ("string", "integer", "unsigned", "gauge", "counter", "timeticks", "objectid")

#: SNMPv2-MIB's system group: sysDescr.0, sysObjectID.0, sysUpTime.0.
SYS_DESCR: Final = (1, 3, 6, 1, 2, 1, 1, 1)
SYS_OBJECT_ID: Final = (1, 3, 6, 1, 2, 1, 1, 2)
SYS_UPTIME: Final = (1, 3, 6, 1, 2, 1, 1, 3)

#: The columns of ``wdServiceEntry`` served, in order: 2 (wdServiceName) to 15.
FIRST_COLUMN: Final = 2
LAST_COLUMN: Final = 15


class Missing:
    """An exception value of SNMPv2: no such object or instance, end of the view."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: ``get`` of an OID that is no object of this table.
NO_SUCH_OBJECT: Final = Missing("NO_SUCH_OBJECT")
#: ``get`` of an object of this table at an instance that does not exist.
NO_SUCH_INSTANCE: Final = Missing("NO_SUCH_INSTANCE")

Scalar = Value | Callable[[], Value]


@dataclass(frozen=True, slots=True)
class Confirmed:
    """The check that confirmed a service's current state."""

    reason: Reason = Reason.OK
    detail: str = ""
    elapsed: float = 0.0  # seconds
    count: int = 0  # consecutive checks that confirmed it


def confirmed_from(st: state.ServiceState) -> Confirmed:
    """The best account of the confirming check when only a saved state is known.

    A saved state keeps its most recent check. When that check agrees with
    the confirmed state it stands for the confirming one; otherwise (a blip
    since the change) the reason is the only one the state allows: ``ok`` for
    up, ``network_error`` for down, with the blip's detail left out.
    """
    count = st.successes if st.state is state.State.UP else st.failures
    reason = st.last_reason
    if st.state is state.State.UNKNOWN or reason is None:
        return Confirmed(count=count)
    if reason.ok == (st.state is state.State.UP):
        return Confirmed(reason, st.last_detail, st.last_elapsed, count)
    fallback = Reason.OK if st.state is state.State.UP else Reason.NETWORK_ERROR
    return Confirmed(fallback, "", 0.0, count)


def _string(text: str, size: int) -> Value:
    return ("string", display_text(text, size).encode("ascii"))


def _u32(value: float) -> int:
    return int(min(max(value, 0), MAX32))


def service_row(
    svc: model.Service,
    st: state.ServiceState,
    confirmed: Confirmed,
    *,
    mono_now: float,
    wall_now: float,
) -> Row:
    """The values of columns 2 to 15 of one service's row.

    Times in ``st`` are on the monotonic clock; ``mono_now`` and ``wall_now``,
    read together, turn them into wall-clock DateAndTime values.
    """

    def when(t: float | None) -> Value:
        if t is None:
            return ("string", UNKNOWN_TIME)
        return ("string", date_and_time(max(to_wall(t, mono_now=mono_now, wall_now=wall_now), 0.0)))

    return (
        _string(svc.name, NAME_SIZE),
        _string(svc.host, HOST_SIZE),
        ("unsigned", svc.port),
        _string(svc.check.value, KIND_SIZE),
        ("integer", STATE_VALUES[st.state.value]),
        ("integer", STATE_VALUES[st.previous.value]),
        ("integer", confirmed.reason.value),
        _string(confirmed.detail, TEXT_SIZE),
        ("unsigned", _u32(confirmed.count)),
        ("gauge", _u32(round(confirmed.elapsed * 1000))),
        when(st.since),
        ("counter", st.checks % (MAX32 + 1)),
        ("counter", st.failed_checks % (MAX32 + 1)),
        when(st.last_check),
    )


#: ``wdServiceState``'s values, to count rows by state.
_UP, _DOWN, _UNKNOWN = (STATE_VALUES[name] for name in ("up", "down", "unknown"))
_STATE_AT = 6 - FIRST_COLUMN  # wdServiceState's place in a row


def _state_of(row: Row) -> int:
    value = row[_STATE_AT][1]
    if not isinstance(value, int) or value not in (_UP, _DOWN, _UNKNOWN):
        raise ValueError(f"not a wdServiceState value: {value!r}")
    return value


class StatusTable:
    """The scalars and rows the agent serves; see the module's rules."""

    def __init__(
        self,
        oids: Oids,
        *,
        version: str,
        uptime: Callable[[], int],
        sequence: Callable[[], int],
        system: bool = True,
    ) -> None:
        """``uptime`` returns hundredths of a second since the daemon started,
        ``sequence`` the number of the latest notification; ``system`` adds
        sysDescr.0, sysObjectID.0 and sysUpTime.0."""
        self.oids = oids
        self._rows: dict[int, Row] = {}
        self._indexes: list[int] = []
        self._counts = {_UP: 0, _DOWN: 0, _UNKNOWN: 0}

        def ticks() -> Value:
            return ("timeticks", uptime() % (MAX32 + 1))

        def count(value: int) -> Callable[[], Value]:
            return lambda: ("gauge", self._counts[value])

        scalars: dict[Oid, Scalar] = {
            oids.watchdog_version: _string(version, VERSION_SIZE),
            oids.watchdog_uptime: ticks,
            oids.services_up: count(_UP),
            oids.services_down: count(_DOWN),
            oids.services_unknown: count(_UNKNOWN),
            oids.notification_sequence: lambda: ("unsigned", sequence() % (MAX32 + 1)),
        }
        if system:
            scalars[SYS_DESCR] = _string(f"snmp-watchdog {version}", 255)
            scalars[SYS_OBJECT_ID] = ("objectid", oids.root)
            scalars[SYS_UPTIME] = ticks
        self._scalars = scalars
        entry = (*oids.root, 1, 2, 1)
        self._columns = {(*entry, c): c for c in range(FIRST_COLUMN, LAST_COLUMN + 1)}
        #: Every object's OID in order, with its column number (0 for a scalar).
        self._objects: list[tuple[Oid, int]] = sorted(
            [(oid, 0) for oid in scalars] + list(self._columns.items())
        )
        self._prefixes = [oid for oid, _ in self._objects]

    # -- rows --

    def put(self, index: int, row: Row) -> None:
        """Add or replace the row of ``index`` (1 to 4294967295)."""
        if not 1 <= index <= MAX32:
            raise ValueError(f"wdServiceIndex must be 1..{MAX32}, not {index}")
        if len(row) != LAST_COLUMN - FIRST_COLUMN + 1:
            raise ValueError(f"a row has {LAST_COLUMN - FIRST_COLUMN + 1} values, not {len(row)}")
        old = self._rows.get(index)
        if old is None:
            bisect.insort(self._indexes, index)
        else:
            self._counts[_state_of(old)] -= 1
        self._rows[index] = row
        self._counts[_state_of(row)] += 1

    def remove(self, index: int) -> None:
        """Drop the row of ``index`` (nothing happens when there is none)."""
        old = self._rows.pop(index, None)
        if old is None:
            return
        del self._indexes[bisect.bisect_left(self._indexes, index)]
        self._counts[_state_of(old)] -= 1

    def row(self, index: int) -> Row | None:
        return self._rows.get(index)

    def indexes(self) -> list[int]:
        """The row indexes in order (a copy)."""
        return list(self._indexes)

    def __len__(self) -> int:
        return len(self._rows)

    # -- reading --

    def get(self, oid: Oid) -> Value | Missing:
        """The value at ``oid``, or NO_SUCH_OBJECT, or NO_SUCH_INSTANCE."""
        at = bisect.bisect_right(self._prefixes, oid) - 1
        if at < 0:
            return NO_SUCH_OBJECT
        prefix, column = self._objects[at]
        if oid[: len(prefix)] != prefix:
            return NO_SUCH_OBJECT
        rest = oid[len(prefix) :]
        if column == 0:
            return self._scalar(prefix) if rest == (0,) else NO_SUCH_INSTANCE
        if len(rest) == 1 and rest[0] in self._rows:
            return self._rows[rest[0]][column - FIRST_COLUMN]
        return NO_SUCH_INSTANCE

    def next(self, oid: Oid) -> tuple[Oid, Value] | None:
        """The first instance after ``oid`` and its value; None past the last one."""
        start = max(bisect.bisect_right(self._prefixes, oid) - 1, 0)
        for prefix, column in self._objects[start:]:
            inside = oid[: len(prefix)] == prefix
            if not inside and oid > prefix:
                continue  # the whole object lies before oid
            rest = oid[len(prefix) :] if inside else ()
            if column == 0:
                if not rest:  # .0 is the one instance, and only the bare prefix precedes it
                    return (*prefix, 0), self._scalar(prefix)
                continue
            at = bisect.bisect_right(self._indexes, rest[0]) if rest else 0
            if at < len(self._indexes):
                index = self._indexes[at]
                return (*prefix, index), self._rows[index][column - FIRST_COLUMN]
        return None

    def walk(self, oid: Oid = ()) -> Iterator[tuple[Oid, Value]]:
        """Every instance after ``oid``, in order."""
        found = self.next(oid)
        while found is not None:
            yield found
            found = self.next(found[0])

    def _scalar(self, prefix: Oid) -> Value:
        value = self._scalars[prefix]
        return value() if callable(value) else value
