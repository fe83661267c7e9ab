"""The read-only SNMP agent on the wire: GET, GETNEXT and GETBULK answered from a ``StatusTable``.

Rules:

* Its own pysnmp engine, with the daemon's engine ID and ``snmpEngineBoots``
  (the notification sender's, see ``notify.sender.new_engine``): a manager
  sees one SNMP engine whether it polls or receives traps. The engine is not
  the sender's, so a trap receiver's community or SNMPv3 keys never open the
  agent.
* Who may read: the ``community`` (SNMPv1 and v2c) and each SNMPv3 user at
  the security level its configuration gives it (authPriv for a user with
  auth and priv keys): pysnmp's USM refuses a lower level with a report
  (unsupportedSecLevel), and the responder checks again, answering
  authorizationError, so that no path answers below that level.
  A wrong community is dropped without an answer, an unknown SNMPv3 user or a
  wrong key gets the usual report PDU (pysnmp's USM).
* Read-only: a SET gets notWritable for our objects and noAccess for any
  other, and changes nothing.
* Every answer is computed from the in-memory table at once: nothing waits
  on the state database or the network. A GETBULK answers at most
  ``MAX_VARBINDS`` variables (so one answer holds the event loop for a few
  milliseconds) and no more than fit in the largest message the manager
  accepts (RFC 3416 4.2.3 allows fewer repetitions).
* The agent takes at most about half of the event loop that runs the checks,
  however fast managers ask: requests are answered one at a time, and after
  each answer the next waits as long as that answer took to make (a full-speed
  walk gets slower, checks do not start late). At most ``MAX_WAITING``
  requests wait; more are dropped, as a full socket buffer would drop them,
  and the manager retries.
* ``start`` binds the listening socket before it returns: an address that
  cannot be bound is an ``AgentError`` naming it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections import deque
from typing import Any, Final

from pysnmp.carrier.asyncio.dgram import udp, udp6
from pysnmp.entity import config
from pysnmp.entity.engine import SnmpEngine
from pysnmp.entity.rfc3413 import cmdrsp
from pysnmp.entity.rfc3413.context import SnmpContext
from pysnmp.proto import rfc1902, rfc1905
from pysnmp.proto.api import v2c

from snmp_watchdog import model
from snmp_watchdog.agent.table import (
    NO_SUCH_INSTANCE,
    NO_SUCH_OBJECT,
    Missing,
    StatusTable,
    Value,
)
from snmp_watchdog.exceptions import WatchdogError
from snmp_watchdog.notify.sender import new_engine
from snmp_watchdog.snmp import AUTH_PROTOCOLS, PRIV_PROTOCOLS

#: Most variables in one GETBULK response (pysnmp's own responder's limit too). Building
#: the response PDU is most of an answer's cost and grows faster than its length
#: (measured: 10 variables 1.6 ms, 50 in 5.5 ms, 200 in 39 ms), and the event loop
#: that runs the checks waits meanwhile: a manager asking for more gets more requests.
MAX_VARBINDS = 64
#: Bytes kept free in a response for the message's own headers and security.
HEADROOM = 256

#: Requests that may wait for their turn (see the rules).
MAX_WAITING = 64

_LEVELS = {"noAuthNoPriv": 1, "authNoPriv": 2, "authPriv": 3}
_COMMUNITY_ENTRY = "wd-agent"

# RFC 3416 error-status values
_TOO_BIG = 1
_NO_ACCESS = 6
_NOT_WRITABLE = 17
_AUTHORIZATION_ERROR = 16


class AgentError(WatchdogError):
    """The agent cannot start (its address cannot be bound)."""


#: What a lookup found: a value of the table, or one of the exception markers.
Found = tuple[Any, "Value | Missing"]
END_OF_VIEW: Final = Missing("END_OF_VIEW")


def _wire(value: Value | Missing) -> Any:
    if value is NO_SUCH_OBJECT:
        return rfc1905.noSuchObject
    if value is NO_SUCH_INSTANCE:
        return rfc1905.noSuchInstance
    if value is END_OF_VIEW:
        return rfc1905.endOfMibView
    assert isinstance(value, tuple)
    kind, raw = value
    if kind == "string":
        return rfc1902.OctetString(raw)
    if kind == "integer":
        return rfc1902.Integer32(raw)
    if kind == "unsigned":
        return rfc1902.Unsigned32(raw)
    if kind == "gauge":
        return rfc1902.Gauge32(raw)
    if kind == "counter":
        return rfc1902.Counter32(raw)
    if kind == "timeticks":
        return rfc1902.TimeTicks(raw)
    if kind == "objectid":
        return rfc1902.ObjectIdentifier(raw)
    raise ValueError(f"not a value type of the table: {kind!r}")


def _arcs_size(oid: tuple[int, ...]) -> int:
    return sum(1 if a < 0x80 else 2 if a < 0x4000 else 3 if a < 0x200000 else 5 for a in oid)


def _size(oid: tuple[int, ...], value: Value | Missing) -> int:
    """An upper bound of the BER size of one variable binding."""
    if not isinstance(value, tuple):
        return _arcs_size(oid) + 8
    kind, raw = value
    if kind == "string":
        body = len(raw)  # type: ignore[arg-type]
    elif kind == "objectid":
        body = _arcs_size(raw)  # type: ignore[arg-type]
    else:
        body = 5
    return _arcs_size(oid) + body + 12


class _Paced:
    """A pysnmp datagram transport that answers one request at a time, then rests."""

    loop: asyncio.AbstractEventLoop
    _callback_function: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._waiting: deque[tuple[bytes, Any]] = deque()
        self._resting = False

    def datagram_received(self, datagram: bytes, address: Any) -> None:
        if len(self._waiting) >= MAX_WAITING:
            return
        self._waiting.append((datagram, address))
        if not self._resting:
            self._answer_next()

    def stop(self) -> None:
        """Answer nothing more (the engine is closing)."""
        self._waiting.clear()
        self._callback_function = None

    def _answer_next(self) -> None:
        self._resting = False
        if not self._waiting or self._callback_function is None:
            return
        datagram, address = self._waiting.popleft()
        started = time.perf_counter()
        self._callback_function(self, address, datagram)
        self._resting = True
        self.loop.call_later(time.perf_counter() - started, self._answer_next)


class _PacedUdp(_Paced, udp.UdpAsyncioTransport):  # type: ignore[misc]
    pass


class _PacedUdp6(_Paced, udp6.Udp6AsyncioTransport):  # type: ignore[misc]
    pass


class _Responder(cmdrsp.CommandResponderBase):  # type: ignore[misc]
    """GET, GETNEXT, GETBULK and SET, answered from the table, with our access rule."""

    SUPPORTED_PDU_TYPES = (
        rfc1905.GetRequestPDU.tagSet,
        rfc1905.GetNextRequestPDU.tagSet,
        rfc1905.GetBulkRequestPDU.tagSet,
        rfc1905.SetRequestPDU.tagSet,
    )

    def __init__(self, engine: SnmpEngine, agent: AgentServer) -> None:
        super().__init__(engine, SnmpContext(engine))
        self._agent = agent
        self._max_size = 65507

    def process_pdu(self, engine: SnmpEngine, *args: Any) -> None:
        self._max_size = int(args[-2])  # maxSizeResponseScopedPDU
        super().process_pdu(engine, *args)

    def handle_management_operation(
        self, engine: SnmpEngine, state_reference: Any, _context_name: Any, pdu: Any
    ) -> None:
        request = engine.observer.get_execution_context("rfc3412.receiveMessage:request")
        who = (int(request["securityModel"]), str(request["securityName"]))
        needed = self._agent.readers.get(who)
        varbinds = v2c.apiPDU.get_varbinds(pdu)
        tag = pdu.tagSet
        table = self._agent.table
        if needed is None or int(request["securityLevel"]) < needed:
            self._reply(engine, state_reference, _AUTHORIZATION_ERROR, 1, varbinds)
        elif tag == rfc1905.GetRequestPDU.tagSet:
            found = [(oid, table.get(tuple(oid))) for oid, _ in varbinds]
            self._answer(engine, state_reference, found)
        elif tag == rfc1905.GetNextRequestPDU.tagSet:
            self._answer(engine, state_reference, [self._next(oid) for oid, _ in varbinds])
        elif tag == rfc1905.GetBulkRequestPDU.tagSet:
            self._answer(engine, state_reference, self._bulk(pdu, varbinds))
        elif varbinds:  # SET: nothing here is writable
            mine = table.get(tuple(varbinds[0][0])) is not NO_SUCH_OBJECT
            self._reply(engine, state_reference, _NOT_WRITABLE if mine else _NO_ACCESS, 1, varbinds)
        else:
            self._reply(engine, state_reference, 0, 0, varbinds)
        self.release_state_information(state_reference)

    def _reply(
        self, engine: SnmpEngine, state_reference: Any, status: int, index: int, varbinds: Any
    ) -> None:
        self.send_varbinds(engine, state_reference, status, index, varbinds)

    def _answer(self, engine: SnmpEngine, state_reference: Any, found: list[Found]) -> None:
        """The variables found, or tooBig when they would not fit in one message."""
        if sum(_size(tuple(oid), value) for oid, value in found) > self._max_size - HEADROOM:
            self._reply(engine, state_reference, _TOO_BIG, 0, [])
            return
        self._reply(engine, state_reference, 0, 0, [(oid, _wire(v)) for oid, v in found])

    def _next(self, oid: Any) -> Found:
        found = self._agent.table.next(tuple(oid))
        return (oid, END_OF_VIEW) if found is None else (rfc1902.ObjectName(found[0]), found[1])

    def _bulk(self, pdu: Any, varbinds: list[Any]) -> list[Found]:
        """RFC 3416 4.2.3: non-repeaters once, then rows of repetitions while they fit
        (in the message and in ``max_varbinds``)."""
        non_repeaters = max(int(v2c.apiBulkPDU.get_non_repeaters(pdu)), 0)
        repetitions = max(int(v2c.apiBulkPDU.get_max_repetitions(pdu)), 0)
        n = min(non_repeaters, len(varbinds))
        out = [self._next(oid) for oid, _ in varbinds[:n]]
        room = self._max_size - HEADROOM - sum(_size(tuple(oid), v) for oid, v in out)
        cursors = [oid for oid, _ in varbinds[n:]]
        for _ in range(repetitions if cursors else 0):
            row = [self._next(cursor) for cursor in cursors]
            room -= sum(_size(tuple(oid), v) for oid, v in row)
            if (room < 0 or len(out) + len(row) > self._agent.max_varbinds) and out:
                break
            out.extend(row)
            if all(value is END_OF_VIEW for _, value in row):
                break
            cursors = [oid for oid, _ in row]
        return out


class AgentServer:
    """One listening socket and the engine that answers on it."""

    def __init__(
        self,
        agent: model.Agent,
        table: StatusTable,
        *,
        engine_id: bytes,
        boots: int,
        engine_started: int | None = None,
        max_varbinds: int = MAX_VARBINDS,
    ) -> None:
        self.agent = agent
        self.max_varbinds = max_varbinds
        self.table = table
        self._engine_id = engine_id
        self._boots = boots
        self._engine_started = engine_started
        self._engine: SnmpEngine | None = None
        self._transport: _Paced | None = None
        #: (security model, security name) -> the least security level it must use.
        self.readers: dict[tuple[int, str], int] = {}

    @property
    def address(self) -> tuple[str, int]:
        return self.agent.host, self.agent.port

    async def start(self) -> None:
        """Bind the listening address and start answering; ``AgentError`` if it cannot bind."""
        agent = self.agent
        engine = new_engine(self._engine_id, self._boots, self._engine_started)
        family = ipaddress.ip_address(agent.host).version
        loop = asyncio.get_running_loop()
        if family == 4:
            domain, transport = udp.SNMP_UDP_DOMAIN, _PacedUdp(loop=loop)
        else:
            domain, transport = udp6.SNMP_UDP6_DOMAIN, _PacedUdp6(loop=loop)
        sock = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            sock.bind((agent.host, agent.port))
        except OSError as exc:
            sock.close()
            engine.close_dispatcher()
            where = f"[{agent.host}]:{agent.port}" if family == 6 else f"{agent.host}:{agent.port}"
            raise AgentError(
                f"agent.listen: cannot listen on UDP {where}: {exc.strerror or exc}; "
                "choose a free address and port (a port below 1024 needs privileges)"
            ) from None
        await loop.create_datagram_endpoint(lambda: transport, sock=sock)
        config.add_transport(engine, domain, transport)
        readers: dict[tuple[int, str], int] = {}
        if agent.community is not None:
            config.add_v1_system(engine, _COMMUNITY_ENTRY, agent.community.reveal())
            readers[(1, _COMMUNITY_ENTRY)] = readers[(2, _COMMUNITY_ENTRY)] = 1
        for user in agent.users:
            level = "authPriv" if user.priv else "authNoPriv" if user.auth else "noAuthNoPriv"
            config.add_v3_user(
                engine,
                user.user,
                AUTH_PROTOCOLS[user.auth.protocol].oid if user.auth else config.USM_AUTH_NONE,
                user.auth.key.reveal() if user.auth else None,
                PRIV_PROTOCOLS[user.priv.protocol].oid if user.priv else config.USM_PRIV_NONE,
                user.priv.key.reveal() if user.priv else None,
            )
            readers[(3, user.user)] = _LEVELS[level]
        self.readers = readers
        _Responder(engine, self)
        self._engine, self._transport = engine, transport

    def close(self) -> None:
        """Stop answering and release the socket (the server cannot start again)."""
        if self._transport is not None:
            self._transport.stop()
            self._transport = None
        if self._engine is not None:
            self._engine.close_dispatcher()
            self._engine = None
