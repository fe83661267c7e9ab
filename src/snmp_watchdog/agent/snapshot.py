"""Keeps the agent's ``StatusTable`` in step with the daemon's services and states.

Rules:

* The daemon calls ``load`` at start and after each reload (every service
  with its state and its stable ``wdServiceIndex``; rows of services no
  longer configured go away), and ``result`` after every check. No call
  reads the database or waits.
* A row's reason, response time and consecutive count describe the check
  that confirmed the current state: ``result`` takes them from the check
  whose result moved ``since`` (a new confirmed state). Until then (at start,
  from a saved state) ``confirmed_from`` reads them from the saved state.
* Clocks are injected: the monotonic and wall clocks read together turn the
  state machine's monotonic times into DateAndTime values.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from snmp_watchdog import state
from snmp_watchdog.agent.table import Confirmed, StatusTable, confirmed_from, service_row
from snmp_watchdog.model import Service
from snmp_watchdog.result import CheckResult


class Snapshot:
    def __init__(
        self,
        table: StatusTable,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.table = table
        self._clock = clock
        self._wall = wall
        #: name -> (its index, ``since`` of the state it describes, the confirming check)
        self._known: dict[str, tuple[int, float | None, Confirmed]] = {}

    def load(
        self,
        services: Iterable[Service],
        states: Mapping[str, state.ServiceState],
        indexes: Mapping[str, int],
    ) -> None:
        """Every configured service's row; rows of other services are removed."""
        mono, wall = self._clock(), self._wall()
        known: dict[str, tuple[int, float | None, Confirmed]] = {}
        for svc in services:
            st = states.get(svc.name, state.ServiceState())
            index = indexes[svc.name]
            before = self._known.get(svc.name)
            if before is not None and before[0] == index and before[1] == st.since:
                confirmed = before[2]
            else:
                confirmed = confirmed_from(st)
            known[svc.name] = (index, st.since, confirmed)
            self.table.put(index, service_row(svc, st, confirmed, mono_now=mono, wall_now=wall))
        wanted = {index for index, _, _ in known.values()}
        for index in self.table.indexes():
            if index not in wanted:
                self.table.remove(index)
        self._known = known

    def result(self, svc: Service, st: state.ServiceState, result: CheckResult) -> None:
        """A check has ended and left ``svc`` in state ``st``.

        A service ``load`` has not seen yet (a reload that adds the agent is
        still starting it) is left for the ``load`` that follows.
        """
        known = self._known.get(svc.name)
        if known is None:
            return
        index, since, confirmed = known
        if st.since != since:
            count = st.successes if st.state is state.State.UP else st.failures
            confirmed = Confirmed(result.reason, result.detail, result.elapsed, count)
            self._known[svc.name] = (index, st.since, confirmed)
        row = service_row(svc, st, confirmed, mono_now=self._clock(), wall_now=self._wall())
        self.table.put(index, row)
