"""One SNMP notification to one receiver, over one SNMP engine.

This is the only module that drives pysnmp. Rules:

* One ``SnmpEngine`` for the life of the sender, created in ``start()`` inside
  the running event loop and closed by ``close()``; a sender starts once.
* Every receiver gets its own rows in the engine's tables, named ``wd<n>``
  with ``n`` never reused: a target address and target parameters. A
  notification is sent to exactly one target, as a PDU built here, so it
  leaves once, under that receiver's credentials only, even when several
  receivers share one host and port (pysnmp's high-level ``send_notification``
  keys its targets by address and would send it under every credential used
  for that address).
* SNMPv1/v2c: there is one community entry per distinct community string,
  shared by every receiver that uses that community, its security name being
  its own ``wd<n>``; it is removed with the last receiver that uses it. pysnmp
  maps the community of an inform's response back to a security name by
  taking the first matching community entry, and drops the response unless
  that name is the request's: with one entry per receiver, an inform receiver
  sharing a community and an address with another receiver never saw its
  responses matched.
* The PDU always starts with ``sysUpTime.0``: the daemon's real uptime
  (``time.monotonic() - started``) in TimeTicks, modulo 2**32, and
  ``snmpTrapOID.0``. SNMPv1 receivers get the RFC 3584 conversion done by
  pysnmp: enterprise and specific-trap from the notification OID, agent-addr
  from ``snmpTrapAddress.0``, which is added for them (the source address, or
  the local address the system routes to the receiver through); Counter64
  values cannot travel in SNMPv1 and are left out.
* Traps are sent once and report ``ok`` with nothing acknowledged (only a
  local failure, such as a socket error, is reported). SNMPv1 has no inform:
  an SNMPv1 receiver always gets a trap. Informs wait up to
  ``receiver.timeout`` for the response; one attempt, no retransmission (the
  caller retries).
* SNMPv3: pysnmp's USM finds a user by (engine ID, user name), so the
  security name is the user name. For a trap the sender is authoritative and
  the user's keys are localized to our engine ID. For an inform the receiver
  is authoritative: pysnmp's automatic copying of users to discovered engines
  is switched off (it would copy whichever receiver's keys happen to be
  installed under that user name); instead, when the receiver's engine ID is
  discovered, the user is installed for that engine ID with this receiver's
  keys, and the inform is sent again within the same timeout. Before every
  SNMPv3 send the row for (engine ID, user) is checked to hold this
  receiver's keys, so two receivers with the same user name and different
  keys both work.
* Keys are hashed once (RFC 3414 password to key, a few ms each) and cached;
  localizing them to an engine ID is cheap.
* Protocols are always given explicitly (pysnmp's defaults are MD5 and DES),
  from the table of ``snmp_watchdog.snmp``; the weak ones (MD5 and DES) are
  refused unless ``allow_weak_crypto``.
* Host names are resolved off the caller's path: ``start()`` and
  ``reconfigure()`` start every receiver's lookup at once, in the background,
  and return; a send waits for its own receiver's lookup only (at most
  ``RESOLVE_TIMEOUT``), so a slow name server delays neither start-up nor any
  other receiver. Whatever the resolver raises (``resolver.getaddrinfo``,
  shared with the checks, says why in a few words: ``mail..example.com`` is
  ``not a valid host name``) is a failure of that receiver, logged with its
  name: a receiver that cannot be resolved, or whose source address cannot be
  bound, fails its sends with that reason (``Delivery.unsent``: nothing left, try again later)
  and is looked up again at its next send.
* A resolved receiver is looked up again after ``REFRESH_AFTER_FAILURES``
  consecutive timeouts or socket errors, or after ``REFRESH_AFTER`` seconds
  of them, so a receiver whose address changed is found at its new one; a
  lookup that fails then keeps the old address.
* The engine ID and ``snmpEngineBoots`` come from ``notify.engine`` (kept in
  ``state_dir``); pysnmp's own persistence under ``$TMPDIR/__pysnmp`` is not
  used.
* ``snmpEngineTime`` is the number of whole seconds since the engine started,
  on the monotonic clock (RFC 3414 section 2.2.1). pysnmp computes it from
  ``time.time()``: a wall clock stepped back by more than 150 s would make
  receivers drop our SNMPv3 traps as outside the time window until the clock
  caught up. The engine's own ``snmpEngineTime`` instance is replaced; the
  ``time`` module is left alone.
* A sender made with ``count_boot=False`` (``watchdog test-trap``) takes the
  daemon's boots and start (``notify.engine.join_engine``), so receivers
  accept its SNMPv3 traps whether the daemon runs or not.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import count
from typing import Any

from pysnmp.carrier.asyncio.dgram import udp, udp6
from pysnmp.entity import config
from pysnmp.entity.engine import SnmpEngine
from pysnmp.entity.rfc3413 import ntforg
from pysnmp.proto import errind, rfc1902
from pysnmp.proto import error as snmp_error
from pysnmp.proto.api import v2c
from pysnmp.proto.mpmod.rfc3412 import SnmpV3MessageProcessingModel

from snmp_watchdog import model
from snmp_watchdog.notify import engine as identity
from snmp_watchdog.notify.message import Message
from snmp_watchdog.notify.mib import SNMP_TRAP_OID, SYS_UPTIME
from snmp_watchdog.resolver import getaddrinfo
from snmp_watchdog.snmp import AUTH_PROTOCOLS, PRIV_PROTOCOLS, Version

#: SNMP-COMMUNITY-MIB snmpTrapAddress.0: SNMPv1's agent-addr (RFC 3584 section 3.2).
SNMP_TRAP_ADDRESS = (1, 3, 6, 1, 6, 3, 18, 1, 3, 0)

_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (errind.RequestTimedOut, "timeout"),
    (errind.WrongDigest, "wrong digest (auth key?)"),
    (errind.UnknownUserName, "unknown user"),
    (errind.UnknownEngineID, "unknown engine ID"),
    (errind.NotInTimeWindow, "not in time window"),
    (errind.DecryptionError, "decryption error (privacy key?)"),
    (errind.UnsupportedSecurityLevel, "unsupported security level"),
    (errind.UnknownSecurityName, "unknown security name"),
    (errind.AuthenticationFailure, "authentication failure"),
)
#: The unspecified IPv4 address: bind to every interface (an ephemeral client port), and
#: SNMPv1's "agent address unknown".
ANY_IPV4 = "0.0.0.0"  # noqa: S104
#: The largest ``snmpEngineTime`` (RFC 3414 section 2.2.1).
MAX_ENGINE_TIME = 2147483647
#: Longest wait for a receiver's host name to resolve.
RESOLVE_TIMEOUT = 10.0
#: A receiver's name is looked up again after this many timeouts or socket errors in a row...
REFRESH_AFTER_FAILURES = 3
#: ... or after it has been failing that way for this many seconds.
REFRESH_AFTER = 60.0

log = logging.getLogger("snmp_watchdog")
_CLOSED = "sender closed"
_CLOSED_MARK = object()  # the indication of an inform cut short by close()


@dataclass(frozen=True, slots=True)
class Delivery:
    """The outcome of one attempt to send one notification to one receiver.

    A trap: ``ok`` and not ``acknowledged`` once it left (or ``error`` for a
    local failure). An inform: ``acknowledged`` with the round-trip time in
    seconds, or ``error`` with the reason ("timeout", "wrong digest (auth
    key?)", "unknown user", ...). ``unsent``: nothing left because the
    receiver has no usable address yet (its name does not resolve, its source
    cannot be bound); worth trying again later, trap or inform.
    """

    receiver: str
    ok: bool
    acknowledged: bool
    rtt: float | None
    error: str | None
    unsent: bool = False

    def __str__(self) -> str:
        if self.acknowledged and self.rtt is not None:
            return f"acknowledged in {self.rtt * 1000:.1f} ms"
        if self.ok:
            return "sent; traps are not acknowledged"
        return f"failed: {self.error}"


@dataclass(frozen=True, slots=True)
class _Credentials:
    """An SNMPv3 user as installed in the engine: protocols and hashed (master) keys."""

    user: str
    level: str  # noAuthNoPriv | authNoPriv | authPriv
    auth: tuple[int, ...]
    auth_key: bytes | None
    priv: tuple[int, ...]
    priv_key: bytes | None


@dataclass(slots=True)
class _Target:
    receiver: model.Receiver
    name: str  # wd<n>: target address and target parameters
    domain: tuple[int, ...]
    address: tuple[str, int]
    agent_address: str  # SNMPv1 agent-addr
    credentials: _Credentials | None  # SNMPv3 only
    community: str | None  # SNMPv1/v2c only: the community string (a key of ``_communities``)
    peer_engine: bytes | None = None  # the receiver's engine ID, once discovered (informs)
    transport: _UdpMixin | None = None
    failures: int = 0  # timeouts and socket errors in a row
    failing_since: float | None = None  # on the loop's clock
    stale: bool = False  # look the name up again before the next send


class _UdpMixin(asyncio.DatagramProtocol):
    """Remembers the socket error a send ran into (asyncio reports it, pysnmp ignores it)."""

    last_error: OSError | None = None

    def error_received(self, exc: Exception) -> None:
        if not isinstance(exc, OSError):  # asyncio only reports socket errors here
            raise exc
        self.last_error = exc


class _Udp(_UdpMixin, udp.UdpAsyncioTransport):  # type: ignore[misc]
    pass


class _Udp6(_UdpMixin, udp6.Udp6AsyncioTransport):  # type: ignore[misc]
    pass


class _EngineTime(rfc1902.Integer32):  # type: ignore[misc]
    """``snmpEngineTime`` whose value is the monotonic clock when the engine started.

    pysnmp's USM reads the current engine time as ``syntax.clone()`` with no
    argument; this answers the seconds since then (at most 2**31 - 1) as a
    plain Integer32.
    """

    def clone(self, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return rfc1902.Integer32.clone(self, *args, **kwargs)
        elapsed = max(int(time.monotonic()) - int(self), 0)
        return rfc1902.Integer32(min(elapsed, MAX_ENGINE_TIME))


def new_engine(engine_id: bytes, boots: int, started: int | None = None) -> SnmpEngine:
    """An SNMP engine with this engine ID and ``snmpEngineBoots``, its engine time
    counted on the monotonic clock from ``started`` (default: now), and no
    automatic copies of USM users (see above)."""
    # Without an engine ID argument pysnmp writes nothing under $TMPDIR; the ID and
    # boots are then set in the engine's own MIB instances, where USM reads them.
    snmp = SnmpEngine()
    mib = snmp.get_mib_builder()
    (engine_id_mib, boots_mib) = mib.import_symbols(
        "__SNMP-FRAMEWORK-MIB", "snmpEngineID", "snmpEngineBoots"
    )
    engine_id_mib.syntax = engine_id_mib.syntax.clone(engine_id)
    snmp.snmpEngineID = engine_id_mib.syntax
    boots_mib.syntax = boots_mib.syntax.clone(boots)
    (time_mib,) = mib.import_symbols("__SNMP-FRAMEWORK-MIB", "snmpEngineTime")
    time_mib.syntax = _EngineTime(int(time.monotonic()) if started is None else started)
    (discovery,) = mib.import_symbols("__PYSNMP-USM-MIB", "pysnmpUsmDiscovery")
    discovery.syntax = discovery.syntax.clone(0)
    return snmp


class Sender:
    """Sends notifications to configured receivers over one pysnmp engine."""

    def __init__(
        self,
        settings: model.Settings,
        receivers: Sequence[model.Receiver],
        *,
        started: float,
        clock: Callable[[], float] = time.monotonic,
        count_boot: bool = True,
    ) -> None:
        self._count_boot = count_boot  # False: a one-off command beside the daemon
        #: The monotonic second the engine's ``snmpEngineTime`` counts from (after start()).
        self.engine_started: int | None = None
        self._settings = settings
        self._receivers = {r.name: r for r in receivers}
        self._started = started
        self._clock = clock
        self._engine: SnmpEngine | None = None
        self._closed = False
        self._engine_id: bytes | None = None
        self._boots = 0
        self._ntf = ntforg.NotificationOriginator()
        self._numbers = count(1)
        self._targets: dict[str, _Target] = {}
        self._broken: dict[str, str] = {}  # receiver name -> why it is not configured
        self._domains: dict[tuple[int, str | None], tuple[tuple[int, ...], _UdpMixin]] = {}
        self._usm: dict[tuple[bytes, str], _Credentials] = {}  # installed USM rows
        self._communities: dict[str, str] = {}  # community -> its entry's name and security name
        self._master_keys: dict[tuple[Any, ...], bytes] = {}
        self._pending: set[asyncio.Future[tuple[Any, Any]]] = set()
        self._configuring = asyncio.Lock()
        # receiver name -> the definition being looked up and its lookup
        self._lookups: dict[str, tuple[model.Receiver, asyncio.Task[None]]] = {}

    # -- life cycle ---------------------------------------------------------

    async def start(self) -> None:
        """Create the engine (engine ID and boots from ``state_dir``) and configure receivers."""
        if self._engine is not None or self._closed:
            raise RuntimeError("a Sender starts once (pysnmp's engine dies with its loop)")
        state_dir = self._settings.state_dir
        engine_id = identity.load_engine_id(state_dir, self._settings.engine_id)
        if self._count_boot:
            boots, started = identity.start_engine(state_dir, engine_id)
        else:  # beside the daemon: its boots and its engine time (see notify.engine)
            boots, started = identity.join_engine(state_dir, engine_id)
        snmp = new_engine(engine_id, boots, started)
        self.engine_started = started
        self._engine, self._engine_id, self._boots = snmp, engine_id, boots
        await self._domain(socket.AF_INET, None)
        for receiver in self._receivers.values():
            self._check(receiver)
        for receiver in self._receivers.values():
            self._look_up(receiver, announce=True)  # in the background: start-up goes on

    @property
    def engine_id(self) -> bytes:
        """Our SNMPv3 engine ID (receivers of v3 traps need it for ``createUser -e``)."""
        if self._engine_id is None:
            raise RuntimeError("Sender not started")
        return self._engine_id

    @property
    def engine_boots(self) -> int:
        """``snmpEngineBoots`` of this run (0 before ``start()``)."""
        return self._boots

    def uptime_ticks(self) -> int:
        """``sysUpTime.0`` now: hundredths of a second since the daemon started, mod 2**32."""
        return int((self._clock() - self._started) * 100) % 2**32

    async def reconfigure(
        self, receivers: Sequence[model.Receiver], *, allow_weak_crypto: bool | None = None
    ) -> None:
        """Apply a new receiver list: rows of removed or changed receivers are replaced.

        ``allow_weak_crypto``: the reloaded file's setting, which decides for
        the receivers of that same file (the engine ID and state directory stay
        those of the start).
        """
        if allow_weak_crypto is not None:
            self._settings = replace(self._settings, allow_weak_crypto=allow_weak_crypto)
        wanted = {r.name: r for r in receivers}
        for receiver in wanted.values():
            self._check(receiver)
        for name in list(self._targets):
            if wanted.get(name) != self._targets[name].receiver:
                self._unconfigure(name)
        for name, (receiver, task) in list(self._lookups.items()):
            if wanted.get(name) != receiver:
                task.cancel()
                del self._lookups[name]
        self._broken = {k: v for k, v in self._broken.items() if k in wanted}
        self._receivers = wanted
        for receiver in wanted.values():
            if receiver.name not in self._targets:
                self._look_up(receiver, announce=True)

    async def close(self) -> None:
        """Close the engine and its sockets; informs in flight fail with "sender closed"."""
        if self._engine is None:
            return
        for future in list(self._pending):
            if not future.done():
                future.set_result((_CLOSED_MARK, None))
        lookups = [task for _receiver, task in self._lookups.values()]
        self._lookups.clear()
        for task in lookups:
            task.cancel()
        await asyncio.gather(*lookups, return_exceptions=True)
        self._engine.close_dispatcher()
        self._engine = None
        self._closed = True
        await asyncio.sleep(0)  # let the transports' connection_lost run

    # -- sending ------------------------------------------------------------

    async def send(self, receiver: model.Receiver, message: Message) -> Delivery:
        """One attempt: a trap leaves once; an inform waits up to ``receiver.timeout``."""
        if self._engine is None:
            raise RuntimeError("Sender closed" if self._closed else "Sender not started")
        target = self._targets.get(receiver.name)
        if target is None or target.receiver != receiver or target.stale:
            self._check(receiver)
            # asyncio.wait: neither our cancellation nor the lookup's reaches the other.
            lookup = self._look_up(receiver, announce=False)
            await asyncio.wait({lookup})
            if self._engine is None:
                return _failed(receiver, _CLOSED)
            if not lookup.cancelled() and lookup.exception() is not None:
                raise RuntimeError(f"receiver {receiver.name}: lookup failed") from (
                    lookup.exception()
                )  # a bug, not a name that does not resolve: let it be seen
            target = self._targets.get(receiver.name)
            if target is None or target.receiver != receiver:
                reason = self._broken.get(receiver.name, "not configured")
                return Delivery(receiver.name, False, False, None, reason, unsent=True)
        if receiver.informs:
            delivery = await self._inform(target, message)
        else:
            delivery = self._trap(target, message)
        self._count(target, delivery)
        return delivery

    def _count(self, target: _Target, delivery: Delivery) -> None:
        """Note a timeout or socket error; enough of them make the name looked up again."""
        if delivery.error is None or not (
            delivery.error == "timeout" or delivery.error.startswith("socket error")
        ):
            if delivery.error is None:
                target.failures, target.failing_since = 0, None
            return
        now = asyncio.get_running_loop().time()
        if target.failing_since is None:
            target.failing_since = now
        target.failures += 1
        if not _is_address(target.receiver.host) and (
            target.failures >= REFRESH_AFTER_FAILURES or now - target.failing_since >= REFRESH_AFTER
        ):
            target.stale = True

    def _trap(self, target: _Target, message: Message) -> Delivery:
        if target.credentials is not None:
            self._install_user(self.engine_id, target.credentials)
        pdu = self._pdu(target, message, inform=False)
        assert target.transport is not None
        target.transport.last_error = None
        try:
            self._ntf.send_pdu(self._engine, target.name, None, b"", pdu)
        except snmp_error.StatusInformation as exc:
            return _failed(target.receiver, _reason(exc["errorIndication"]))
        if target.transport.last_error is not None:
            return _failed(target.receiver, _socket_reason(target.transport.last_error))
        return Delivery(target.receiver.name, True, False, None, None)

    async def _inform(self, target: _Target, message: Message) -> Delivery:
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + target.receiver.timeout
        discovered = False
        while True:
            if self._targets.get(target.receiver.name) is not target:  # reconfigured meanwhile
                return _failed(target.receiver, "receiver reconfigured")
            peer = self._peer_engine(target) or target.peer_engine
            if target.credentials is not None and peer is not None:
                self._install_user(peer, target.credentials)
            pdu = self._pdu(target, message, inform=True)
            indication, response = await self._request(target, pdu, deadline)
            if (
                isinstance(indication, errind.UnknownSecurityName)
                and target.credentials is not None
                and not discovered
            ):
                # The receiver's engine ID is known now (discovery ran): install the user
                # for it and send again within the same deadline.
                discovered = True
                target.peer_engine = self._peer_engine(target)
                if target.peer_engine is not None:
                    continue
            break
        rtt = loop.time() - start
        if indication is None:
            target.peer_engine = self._peer_engine(target) or target.peer_engine
            status = int(v2c.apiPDU.get_error_status(response))
            if status:
                return _failed(target.receiver, f"error-status {status} in the response")
            return Delivery(target.receiver.name, True, True, rtt, None)
        if indication is _CLOSED_MARK:
            return _failed(target.receiver, _CLOSED)
        if isinstance(indication, OSError):
            return _failed(target.receiver, _socket_reason(indication))
        return _failed(target.receiver, _reason(indication))

    async def _request(self, target: _Target, pdu: Any, deadline: float) -> tuple[Any, Any]:
        """Send a confirmed PDU; return (error indication or None, response PDU)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Any, Any]] = loop.create_future()

        def done(_engine: Any, _handle: Any, indication: Any, response: Any, _ctx: Any) -> None:
            if not future.done():
                future.set_result((indication, response))

        assert target.transport is not None
        target.transport.last_error = None
        self._pending.add(future)
        try:
            try:
                self._ntf.send_pdu(self._engine, target.name, None, b"", pdu, done)
            except snmp_error.StatusInformation as exc:
                return exc["errorIndication"], None
            if target.transport.last_error is not None:
                return target.transport.last_error, None
            try:
                async with asyncio.timeout(max(deadline - loop.time(), 0.0)):
                    return await future
            except TimeoutError:
                return errind.requestTimedOut, None
        finally:
            self._pending.discard(future)

    def _pdu(self, target: _Target, message: Message, *, inform: bool) -> Any:
        pdu = v2c.InformRequestPDU() if inform else v2c.SNMPv2TrapPDU()
        v2c.apiPDU.set_defaults(pdu)
        varbinds: list[tuple[tuple[int, ...], Any]] = [
            (SYS_UPTIME, rfc1902.TimeTicks(self.uptime_ticks())),
            (SNMP_TRAP_OID, rfc1902.ObjectIdentifier(message.notification)),
        ]
        if target.receiver.version == Version.V1:
            varbinds.append((SNMP_TRAP_ADDRESS, rfc1902.IpAddress(target.agent_address)))
            varbinds.extend(
                (oid, value)
                for oid, value in message.varbinds
                if not isinstance(value, rfc1902.Counter64)
            )
        else:
            varbinds.extend(message.varbinds)
        v2c.apiPDU.set_varbinds(pdu, varbinds)
        return pdu

    # -- configuration ------------------------------------------------------

    def _check(self, receiver: model.Receiver) -> None:
        """Raise ValueError for what configuration loading should have refused."""
        if receiver.version != Version.V3:
            if receiver.community is None:
                raise ValueError(
                    f"receiver {receiver.name}: SNMPv{receiver.version} needs a community"
                )
            return
        if not receiver.user:
            raise ValueError(f"receiver {receiver.name}: SNMPv3 needs a user")
        if receiver.priv is not None and receiver.auth is None:
            raise ValueError(f"receiver {receiver.name}: privacy needs authentication")
        for key, table in ((receiver.auth, AUTH_PROTOCOLS), (receiver.priv, PRIV_PROTOCOLS)):
            if key is None:
                continue
            protocol = table.get(key.protocol)
            if protocol is None:
                raise ValueError(f"receiver {receiver.name}: unknown protocol {key.protocol}")
            if protocol.weak and not self._settings.allow_weak_crypto:
                raise ValueError(
                    f"receiver {receiver.name}: {key.protocol} needs allow_weak_crypto: true"
                )

    def _look_up(self, receiver: model.Receiver, *, announce: bool) -> asyncio.Task[None]:
        """The lookup (and then configuration) of ``receiver``: the running one, or a new one.

        ``announce``: log a failure (nobody waits for this lookup to report it).
        """
        running = self._lookups.get(receiver.name)
        if running is not None and running[0] == receiver and not running[1].done():
            return running[1]
        task = asyncio.get_running_loop().create_task(
            self._configure(receiver, announce=announce), name=f"resolve {receiver.name}"
        )
        task.add_done_callback(_log_bug)
        self._lookups[receiver.name] = (receiver, task)
        return task

    async def _configure(self, receiver: model.Receiver, *, announce: bool) -> None:
        """Resolve ``receiver`` and install its rows, or record in ``_broken`` why not.

        The lookup runs concurrently with every other receiver's; only the
        installation of rows is one at a time.
        """
        failure = None
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT):
                family, ip = await self._resolve(receiver)
        except TimeoutError:
            failure = f"cannot resolve {receiver.host}: timed out"
        except OSError as exc:  # a gaierror saying why (resolver.py), or no usable address
            failure = f"cannot resolve {receiver.host}: {_strerror(exc)}"
        async with self._configuring:
            if self._engine is None:
                return  # closed meanwhile
            wanted = self._receivers.get(receiver.name)
            if wanted is not None and wanted != receiver:
                return  # a reload replaced this definition meanwhile
            current = self._targets.get(receiver.name)
            if current is not None and current.receiver != receiver:
                self._unconfigure(receiver.name)
                current = None
            if failure is not None:
                if current is not None:
                    # Looked up again after failures and the lookup failed: the old
                    # address is still the best guess.
                    current.stale, current.failures, current.failing_since = False, 0, None
                    log.warning(
                        "receiver %s: %s; still sending to %s",
                        receiver.name,
                        failure,
                        current.address[0],
                    )
                    return
                self._broken[receiver.name] = failure
                if announce:
                    log.warning(
                        "receiver %s: %s; trying again when there is something to send",
                        receiver.name,
                        failure,
                    )
                return
            if current is not None:
                current.stale, current.failures, current.failing_since = False, 0, None
                if current.address == (ip, receiver.port):
                    return
                log.warning(
                    "receiver %s: %s now resolves to %s (was %s)",
                    receiver.name,
                    receiver.host,
                    ip,
                    current.address[0],
                )
                self._unconfigure(receiver.name)
            await self._install(receiver, family, ip)

    async def _install(self, receiver: model.Receiver, family: int, ip: str) -> None:
        assert self._engine is not None
        self._broken.pop(receiver.name, None)
        try:
            domain, transport = await self._domain(family, receiver.source)
        except OSError as exc:
            self._broken[receiver.name] = f"cannot send from {receiver.source}: {_strerror(exc)}"
            log.warning("receiver %s: %s", receiver.name, self._broken[receiver.name])
            return
        name = f"wd{next(self._numbers)}"
        credentials = community = None
        if receiver.version == Version.V3:
            credentials = self._credentials(receiver)
            config.add_target_parameters(self._engine, name, credentials.user, credentials.level, 3)
        else:
            assert receiver.community is not None
            community = receiver.community.reveal()
            config.add_target_parameters(
                self._engine,
                name,
                self._community_entry(community),
                "noAuthNoPriv",
                0 if receiver.version == Version.V1 else 1,
            )
        # pysnmp's own timeout only cleans up after ours (``_request``) has expired.
        config.add_target_address(
            self._engine, name, domain, (ip, receiver.port), name,
            int(receiver.timeout * 100) + 100, 0,
        )  # fmt: skip
        agent = _agent_address(family, ip, receiver.port, receiver.source)
        self._targets[receiver.name] = _Target(
            receiver,
            name,
            domain,
            (ip, receiver.port),
            agent,
            credentials,
            community,
            transport=transport,
        )

    def _community_entry(self, community: str) -> str:
        """The security name of the community entry for ``community``, added if missing."""
        if community not in self._communities:
            entry = f"wd{next(self._numbers)}"
            config.add_v1_system(self._engine, entry, community, securityName=entry)
            self._communities[community] = entry
        return self._communities[community]

    def _unconfigure(self, receiver_name: str) -> None:
        target = self._targets.pop(receiver_name)
        config.delete_target_address(self._engine, target.name)
        config.delete_target_parameters(self._engine, target.name)
        if target.community is not None:
            if all(t.community != target.community for t in self._targets.values()):
                config.delete_v1_system(self._engine, self._communities.pop(target.community))
            return
        if any(t.credentials == target.credentials for t in self._targets.values()):
            return
        for key, credentials in list(self._usm.items()):
            if credentials == target.credentials:
                engine_id, user = key
                config.delete_v3_user(self._engine, user, securityEngineId=engine_id)
                del self._usm[key]

    async def _resolve(self, receiver: model.Receiver) -> tuple[int, str]:
        """The address family and IP address to send to (matching the source's family)."""
        want = None
        if receiver.source is not None:
            try:
                want = _family(ipaddress.ip_address(receiver.source))
            except ValueError:
                raise OSError(f"source {receiver.source!r} is not an IP address") from None
        try:
            family = _family(ipaddress.ip_address(receiver.host))
        except ValueError:
            pass
        else:
            if want not in (None, family):
                raise OSError(f"the source {receiver.source} is of another address family")
            return family, receiver.host
        infos = await getaddrinfo(
            receiver.host, receiver.port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP
        )
        for family, _type, _proto, _name, sockaddr in infos:
            if family in (socket.AF_INET, socket.AF_INET6) and want in (None, family):
                return family, str(sockaddr[0])
        raise OSError(f"no {'IPv6' if want == socket.AF_INET6 else 'IP'} address")

    async def _domain(self, family: int, source: str | None) -> tuple[tuple[int, ...], _UdpMixin]:
        """The transport domain (one UDP socket) for this family and source address."""
        key = (family, source)
        if key in self._domains:
            return self._domains[key]
        base = udp.SNMP_UDP_DOMAIN if family == socket.AF_INET else udp6.SNMP_UDP6_DOMAIN
        domain = base if source is None else (*base, len(self._domains) + 1)
        loop = asyncio.get_running_loop()
        transport: _UdpMixin = _Udp(loop=loop) if family == socket.AF_INET else _Udp6(loop=loop)
        local = (source or (ANY_IPV4 if family == socket.AF_INET else "::"), 0)
        await loop.create_datagram_endpoint(
            lambda: transport,
            local_addr=local,
            family=family,
        )
        config.add_transport(self._engine, domain, transport)
        self._domains[key] = (domain, transport)
        return domain, transport

    def _credentials(self, receiver: model.Receiver) -> _Credentials:
        assert receiver.user is not None
        auth = AUTH_PROTOCOLS[receiver.auth.protocol].oid if receiver.auth else config.USM_AUTH_NONE
        priv = PRIV_PROTOCOLS[receiver.priv.protocol].oid if receiver.priv else config.USM_PRIV_NONE
        auth_key = priv_key = None
        level = "noAuthNoPriv"
        if receiver.auth is not None:
            level = "authNoPriv"
            auth_key = self._master_key(auth, None, receiver.auth.key.reveal())
        if receiver.priv is not None:
            level = "authPriv"
            priv_key = self._master_key(priv, auth, receiver.priv.key.reveal())
        return _Credentials(receiver.user, level, auth, auth_key, priv, priv_key)

    def _master_key(
        self, protocol: tuple[int, ...], auth: tuple[int, ...] | None, key: str
    ) -> bytes:
        """RFC 3414 password-to-key (and its extensions), cached: it hashes 1 MB."""
        cache_key = (protocol, auth, key)
        if cache_key not in self._master_keys:
            passphrase = rfc1902.OctetString(key.encode())
            if auth is None:
                master = config.AUTH_SERVICES[protocol].hash_passphrase(passphrase)
            else:
                master = config.PRIV_SERVICES[protocol].hash_passphrase(auth, passphrase)
            self._master_keys[cache_key] = bytes(master.asOctets())
        return self._master_keys[cache_key]

    def _install_user(self, engine_id: bytes, credentials: _Credentials) -> None:
        """Make the USM row (engine_id, user) hold these credentials."""
        key = (engine_id, credentials.user)
        if self._usm.get(key) == credentials:
            return
        config.add_v3_user(
            self._engine,
            credentials.user,
            credentials.auth,
            credentials.auth_key,
            credentials.priv,
            credentials.priv_key,
            securityEngineId=engine_id,
            authKeyType=config.USM_KEY_TYPE_MASTER,
            privKeyType=config.USM_KEY_TYPE_MASTER,
        )
        self._usm[key] = credentials

    def _peer_engine(self, target: _Target) -> bytes | None:
        """The receiver's engine ID if pysnmp has discovered it (cached for 300 s)."""
        assert self._engine is not None
        mp = self._engine.message_processing_subsystems[
            SnmpV3MessageProcessingModel.MESSAGE_PROCESSING_MODEL_ID
        ]
        host, port = target.address
        for address in ((host, port), (host, port, 0, 0)):
            engine_id, _context, _name = mp.get_peer_engine_info(target.domain, address)
            if engine_id is not None:
                return bytes(engine_id.asOctets())
        return None


def _failed(receiver: model.Receiver, reason: str) -> Delivery:
    return Delivery(receiver.name, False, False, None, reason)


def _reason(indication: Any) -> str:
    for kind, text in _REASONS:
        if isinstance(indication, kind):
            return text
    return str(indication) or type(indication).__name__


def _socket_reason(exc: OSError) -> str:
    return f"socket error: {_strerror(exc)}"


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _log_bug(task: asyncio.Task[None]) -> None:
    """Log what a background lookup raised beyond what lookups are expected to raise."""
    if not task.cancelled() and task.exception() is not None:
        log.error("%s failed by an internal error", task.get_name(), exc_info=task.exception())


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _family(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    return socket.AF_INET if address.version == 4 else socket.AF_INET6


def _agent_address(family: int, ip: str, port: int, source: str | None) -> str:
    """SNMPv1 agent-addr: the source address, else the one the system routes through."""
    if family != socket.AF_INET:
        return ANY_IPV4
    if source is not None:
        return source
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((ip, port))  # no packet: only picks the route
            return str(probe.getsockname()[0])
    except OSError:
        return ANY_IPV4
