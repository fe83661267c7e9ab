"""What goes on the wire for each notification, independent of how it is sent.

Rules:

* A ``Message`` holds the notification's OID and its own varbinds in the order
  of the MIB's OBJECTS clause; the sender puts ``sysUpTime.0`` and
  ``snmpTrapOID.0`` in front.
* Service notifications (Down, Up, Flapping, Flapping-ended) all carry the same
  13 varbinds, the table's columns instanced by the service's
  ``wdServiceIndex``, then ``wdNotificationSequence.0`` and
  ``wdNotificationFlags.0``.
* Values always fit the MIB: text becomes printable ASCII (other characters as
  backslash escapes) cut to the object's SIZE with a closing ``...``; counts and
  times are clamped to 0..4294967295 (Gauge32 latches at its maximum); the
  sequence number and TimeTicks wrap modulo 2**32, as the SMI defines; times of
  change are ``DateAndTime`` in UTC (11 octets, direction ``+``, offset 0:0).
* The notification and the states are the state machine's ``Kind`` and
  ``State``. Anything else that is not a value of the MIB (an unknown flag,
  an index of 0) raises ``ValueError``: it is a bug in the caller.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from pysnmp.proto.rfc1902 import (
    Counter32,
    Gauge32,
    Integer32,
    OctetString,
    TimeTicks,
    Unsigned32,
)

from snmp_watchdog import __version__, model
from snmp_watchdog.notify.mib import (
    FLAG_VALUES,
    HOST_SIZE,
    KIND_SIZE,
    MAX32,
    NAME_SIZE,
    STATE_VALUES,
    TEXT_SIZE,
    VERSION_SIZE,
    Oids,
    date_and_time,
    display_text,
)
from snmp_watchdog.reasons import Reason
from snmp_watchdog.state import Kind, State

Varbind = tuple[tuple[int, ...], object]


@dataclass(frozen=True, slots=True)
class Message:
    """One notification, ready for any transport."""

    notification: tuple[int, ...]  # the value of snmpTrapOID.0
    varbinds: tuple[Varbind, ...]  # (instance OID, pysnmp rfc1902 value), without the first two
    kind: str  # a ``Kind``'s value (down, up, flapping, flapping_ended), heartbeat or test
    sequence: int
    service: str | None  # the service's name; None for heartbeat and test


#: Wire types a message may carry, by the name its stored form uses.
_TYPES: Final[dict[str, type]] = {
    "s": OctetString,
    "i": Integer32,
    "u": Unsigned32,
    "g": Gauge32,
    "c": Counter32,
    "t": TimeTicks,
}
_TYPE_NAMES: Final = {cls: name for name, cls in _TYPES.items()}


def encode(message: Message) -> bytes:
    """The message as bytes for the outbox (pending notifications survive restarts)."""
    varbinds = []
    for oid, value in message.varbinds:
        name = _TYPE_NAMES[type(value)]
        raw = bytes(value).hex() if name == "s" else int(value)  # type: ignore[call-overload]
        varbinds.append([".".join(map(str, oid)), name, raw])
    doc = {
        "n": ".".join(map(str, message.notification)),
        "k": message.kind,
        "q": message.sequence,
        "v": message.service,
        "b": varbinds,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def decode(data: bytes) -> Message:
    """The inverse of ``encode``; ``ValueError`` for anything ``encode`` cannot have written."""
    try:
        doc = json.loads(data)
        varbinds = []
        for oid, name, raw in doc["b"]:
            cls = _TYPES[name]
            value = cls(bytes.fromhex(raw)) if name == "s" else cls(int(raw))
            varbinds.append((_oid(oid), value))
        return Message(
            notification=_oid(doc["n"]),
            varbinds=tuple(varbinds),
            kind=str(doc["k"]),
            sequence=int(doc["q"]),
            service=None if doc["v"] is None else str(doc["v"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a stored notification: {exc}") from exc


def _oid(text: str) -> tuple[int, ...]:
    return tuple(int(arc) for arc in text.split("."))


class MessageBuilder:
    """Builds the messages of one OID root."""

    def __init__(self, oids: Oids) -> None:
        self.oids = oids
        self._notification = {
            Kind.DOWN: oids.service_down,
            Kind.UP: oids.service_up,
            Kind.FLAPPING: oids.service_flapping,
            Kind.FLAPPING_ENDED: oids.service_flapping_ended,
        }

    def service_event(
        self,
        *,
        kind: Kind,
        service: model.Service,
        index: int,
        state: State,
        previous: State,
        reason: Reason,
        detail: str,
        count: int,
        elapsed: float,
        at_wall: float,
        sequence: int,
        flags: str = "normal",
    ) -> Message:
        """A Down, Up, Flapping or Flapping-ended notification about ``service``.

        ``index`` is its ``wdServiceIndex`` (1..4294967295), ``elapsed`` the
        check's response time in seconds, ``at_wall`` the time of the change
        in seconds since the epoch.
        """
        if not 1 <= index <= MAX32:
            raise ValueError(f"wdServiceIndex must be 1..{MAX32}, not {index}")
        o = self.oids
        state_value = STATE_VALUES[state.value]
        previous_value = STATE_VALUES[previous.value]
        columns: tuple[tuple[tuple[int, ...], object], ...] = (
            (o.service_name, _text(service.name, NAME_SIZE)),
            (o.service_host, _text(service.host, HOST_SIZE)),
            (o.service_port, Unsigned32(service.port)),
            (o.service_check_kind, _text(service.check.value, KIND_SIZE)),
            (o.service_state, Integer32(state_value)),
            (o.service_previous_state, Integer32(previous_value)),
            (o.service_reason_code, Integer32(reason.value)),
            (o.service_reason_text, _text(detail, TEXT_SIZE)),
            (o.service_consecutive, Unsigned32(_clamp(count))),
            (o.service_response_time, Gauge32(_clamp(round(elapsed * 1000)))),
            (o.service_last_change, OctetString(date_and_time(at_wall))),
        )
        varbinds = (
            *(((*column, index), value) for column, value in columns),
            ((*o.notification_sequence, 0), _sequence(sequence)),
            ((*o.notification_flags, 0), Integer32(_enum(FLAG_VALUES, "flags", flags))),
        )
        return Message(self._notification[kind], varbinds, kind.value, sequence, service.name)

    def heartbeat(
        self, *, sequence: int, up: int, down: int, unknown: int, uptime: float
    ) -> Message:
        """A heartbeat: how many services are in each state; ``uptime`` in seconds."""
        o = self.oids
        varbinds: tuple[Varbind, ...] = (
            ((*o.watchdog_version, 0), _text(__version__, VERSION_SIZE)),
            ((*o.watchdog_uptime, 0), TimeTicks(int(uptime * 100) % (MAX32 + 1))),
            ((*o.services_up, 0), Gauge32(_clamp(up))),
            ((*o.services_down, 0), Gauge32(_clamp(down))),
            ((*o.services_unknown, 0), Gauge32(_clamp(unknown))),
            ((*o.notification_sequence, 0), _sequence(sequence)),
        )
        return Message(o.heartbeat, varbinds, "heartbeat", sequence, None)

    def test(self, *, sequence: int, text: str) -> Message:
        """The MIB's test notification, carrying ``text``."""
        o = self.oids
        varbinds: tuple[Varbind, ...] = (
            ((*o.notification_text, 0), _text(text, TEXT_SIZE)),
            ((*o.watchdog_version, 0), _text(__version__, VERSION_SIZE)),
            ((*o.notification_sequence, 0), _sequence(sequence)),
        )
        return Message(o.test_notification, varbinds, "test", sequence, None)


def _text(text: str, size: int) -> OctetString:
    return OctetString(display_text(text, size).encode("ascii"))


def _enum(values: Mapping[str, int], what: str, name: str) -> int:
    try:
        return values[name]
    except KeyError:
        raise ValueError(f"not a valid {what}: {name!r} (one of {', '.join(values)})") from None


def _sequence(sequence: int) -> Unsigned32:
    return Unsigned32(sequence % (MAX32 + 1))


def _clamp(value: int) -> int:
    return min(max(value, 0), MAX32)
