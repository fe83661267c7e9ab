"""The agent in the daemon's life: start, reload, check results, stop.

Rules:

* At start an ``agent:`` section means a listening agent before the daemon
  says it is ready; an address that cannot be bound stops the start with an
  ``AgentError`` that names the configuration file and ``agent.listen``.
* A reload that changes ``agent:`` replaces the server: on a new address the
  new one is bound first and the old one kept if that fails; on the same
  address the old one is closed first. A failure is logged, never raised:
  a reload does not stop the daemon. A reload that removes ``agent:`` stops
  the agent; one that moves ``oid_root`` rebuilds the table under the new root.
* The table exists while ``agent:`` does: its rows follow every check
  result. A reload that adds ``agent:`` builds it from the scheduler's states.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from snmp_watchdog import __version__, model, state
from snmp_watchdog.agent.server import AgentError, AgentServer
from snmp_watchdog.agent.snapshot import Snapshot
from snmp_watchdog.agent.table import StatusTable
from snmp_watchdog.notify.mib import Oids
from snmp_watchdog.result import CheckResult

log = logging.getLogger("snmp_watchdog")


class AgentRunner:
    def __init__(
        self,
        *,
        engine_id: bytes,
        boots: int,
        started: float,
        sequence: Callable[[], int],
    ) -> None:
        self._engine_id = engine_id
        self._boots = boots
        self._started = started
        self._sequence = sequence
        self.server: AgentServer | None = None
        self.snapshot: Snapshot | None = None
        self._root: tuple[int, ...] | None = None

    def _table(self, root: tuple[int, ...]) -> StatusTable:
        return StatusTable(
            Oids(root),
            version=__version__,
            uptime=lambda: int((time.monotonic() - self._started) * 100),
            sequence=self._sequence,
        )

    def load(
        self,
        config: model.Config,
        states: Mapping[str, state.ServiceState],
        indexes: Mapping[str, int],
    ) -> None:
        """Rows for the services of ``config``; no table at all without ``agent:``."""
        if config.agent is None:
            self.snapshot = self._root = None
            return
        self._snapshot(config).load(config.services, states, indexes)

    def _snapshot(self, config: model.Config) -> Snapshot:
        """The snapshot under ``config``'s OID root (a new, empty one when the root moved)."""
        root = config.settings.oid_root
        if self.snapshot is None or root != self._root:
            self.snapshot = Snapshot(self._table(root))
            self._root = root
            if self.server is not None:
                self.server.table = self.snapshot.table
        return self.snapshot

    def result(self, svc: model.Service, st: state.ServiceState, result: CheckResult) -> None:
        if self.snapshot is not None:
            self.snapshot.result(svc, st, result)

    async def start(self, config: model.Config) -> None:
        """Listen when ``config`` has an agent (after ``load``); ``AgentError`` if it cannot."""
        if config.agent is None:
            return
        server = self._server(config)
        try:
            await server.start()
        except AgentError as exc:
            raise AgentError(f"{config.path}: {exc}") from None
        self.server = server
        log.info("agent listening on UDP %s", _where(config.agent))

    async def reload(self, config: model.Config) -> None:
        """Apply the ``agent:`` of a reloaded configuration (after ``load``)."""
        old = self.server
        wanted = config.agent
        if wanted == (old.agent if old is not None else None):
            return
        if wanted is None:
            assert old is not None
            old.close()
            self.server = None
            log.info("agent stopped: no agent section any more")
            return
        same_place = old is not None and (old.agent.host, old.agent.port) == (
            wanted.host,
            wanted.port,
        )
        if old is not None and same_place:
            old.close()
            self.server = None
        server = self._server(config)
        try:
            await server.start()
        except AgentError as exc:
            kept = "" if old is None or same_place else f"; still on UDP {_where(old.agent)}"
            log.error("%s: %s%s", config.path, exc, kept)
            return
        if self.server is not None:
            self.server.close()
        self.server = server
        log.info("agent listening on UDP %s", _where(wanted))

    def _server(self, config: model.Config) -> AgentServer:
        assert config.agent is not None
        table = self._snapshot(config).table
        return AgentServer(config.agent, table, engine_id=self._engine_id, boots=self._boots)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


def _where(agent: model.Agent) -> str:
    return f"[{agent.host}]:{agent.port}" if ":" in agent.host else f"{agent.host}:{agent.port}"
