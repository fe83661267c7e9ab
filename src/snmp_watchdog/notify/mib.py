"""SNMP-WATCHDOG-MIB as the code sees it: the OIDs it sends, its enumerations, its text.

Rules:

* Every OID the watchdog sends comes from ``Oids``, computed from one root.
  Each attribute's MIB descriptor is ``wd`` followed by the attribute in camel
  case (``service_down`` -> ``wdServiceDown``), the root's is
  ``snmpWatchdogMIB``; ``Oids.by_name`` lists them, and the tests resolve every
  name with ``snmptranslate`` against the MIB file, so code and MIB cannot
  drift apart.
* Attributes are object OIDs, not instances: a scalar is sent as ``oid + (0,)``
  and a column of ``wdServiceTable`` as ``oid + (wdServiceIndex,)``.
* The numbers of the MIB's enumerations are ``ENUMERATIONS`` (tested against the
  MIB the same way). Reason codes are ``Reason.value`` unchanged, ``ok`` being
  0, as in the status files.
* The MIB text has one source, ``mibs/SNMP-WATCHDOG-MIB.txt``, shipped as
  package data. ``mib_text(root)`` moves the whole tree under another root by
  rewriting the MODULE-IDENTITY's value: the arcs between the nearest node
  SNMPv2-SMI defines and the root are named in place (``{ enterprises
  netSnmp(8072) netSnmpExperimental(9999) 9999 }``), which is valid SMI and
  lints clean, where bare extra numbers would make implicit nodes.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import resources
from typing import Final

from snmp_watchdog import model
from snmp_watchdog.oid import SMI_NODES, check_root, dotted
from snmp_watchdog.reasons import Reason

#: ``snmpTrapOID.0`` and ``sysUpTime.0`` (SNMPv2-MIB), the first two varbinds of every notification.
SNMP_TRAP_OID: Final = (1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0)
SYS_UPTIME: Final = (1, 3, 6, 1, 2, 1, 1, 3, 0)

MODULE: Final = "SNMP-WATCHDOG-MIB"
MIB_FILE: Final = f"{MODULE}.txt"

#: Largest value of Unsigned32, Gauge32, Counter32 and TimeTicks.
MAX32: Final = 2**32 - 1

#: SIZE limits of the MIB's text objects.
NAME_SIZE: Final = 255
HOST_SIZE: Final = 255
KIND_SIZE: Final = 32
TEXT_SIZE: Final = 255
VERSION_SIZE: Final = 64

#: ``DateAndTime`` of a time that is not known: eight zero octets.
UNKNOWN_TIME: Final = bytes(8)

_ESCAPES: Final = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
_ELLIPSIS: Final = "..."

#: Values of ``WdState``, keyed by the state names of the state machine.
STATE_VALUES: Final[Mapping[str, int]] = {"up": 1, "down": 2, "unknown": 3}

#: Values of ``wdNotificationFlags``.
FLAG_VALUES: Final[Mapping[str, int]] = {
    "normal": 1,
    "reminder": 2,
    "test": 3,
    "removed": 4,
    "added": 5,
}


def reason_label(reason: Reason) -> str:
    """The reason's label in ``WdReasonCode``: its code in camel case (``unexpectedResponse``)."""
    head, *rest = reason.code.split("_")
    return head + "".join(word.capitalize() for word in rest)


#: Every enumerated object the watchdog sends: MIB descriptor -> {MIB label: number}.
ENUMERATIONS: Final[Mapping[str, Mapping[str, int]]] = {
    "wdServiceState": STATE_VALUES,
    "wdServicePreviousState": STATE_VALUES,
    "wdServiceReasonCode": {reason_label(r): r.value for r in Reason},
    "wdNotificationFlags": FLAG_VALUES,
}

#: Names NET-SNMP-MIB gives to arcs above the default root; reused so that the
#: two modules agree when a manager loads both.
_KNOWN_ARCS: Final[Mapping[tuple[int, ...], str]] = {
    (1, 3, 6, 1, 4, 1, 8072): "netSnmp",
    (1, 3, 6, 1, 4, 1, 8072, 9999): "netSnmpExperimental",
    (1, 3, 6, 1, 4, 1, 8072, 9999, 9999): "netSnmpPlaypen",
}


class Oids:
    """Every OID the watchdog sends, computed from a root (read-only)."""

    __slots__ = (
        "heartbeat",
        "notification_flags",
        "notification_sequence",
        "notification_text",
        "root",
        "service_check_kind",
        "service_checks",
        "service_consecutive",
        "service_down",
        "service_failures",
        "service_flapping",
        "service_flapping_ended",
        "service_host",
        "service_last_change",
        "service_last_check",
        "service_name",
        "service_port",
        "service_previous_state",
        "service_reason_code",
        "service_reason_text",
        "service_response_time",
        "service_state",
        "service_up",
        "services_down",
        "services_unknown",
        "services_up",
        "test_notification",
        "watchdog_uptime",
        "watchdog_version",
    )

    def __init__(self, root: tuple[int, ...] = model.DEFAULT_OID_ROOT) -> None:
        check_root(root)
        self.root: Final = tuple(root)
        # wdNotifications
        n = (*root, 0)
        self.service_down: Final = (*n, 1)
        self.service_up: Final = (*n, 2)
        self.service_flapping: Final = (*n, 3)
        self.service_flapping_ended: Final = (*n, 4)
        self.heartbeat: Final = (*n, 5)
        self.test_notification: Final = (*n, 6)
        # wdObjects.wdGeneral: scalars
        g = (*root, 1, 1)
        self.watchdog_version: Final = (*g, 1)
        self.watchdog_uptime: Final = (*g, 2)
        self.services_up: Final = (*g, 3)
        self.services_down: Final = (*g, 4)
        self.services_unknown: Final = (*g, 5)
        self.notification_sequence: Final = (*g, 6)
        self.notification_flags: Final = (*g, 7)
        self.notification_text: Final = (*g, 8)
        # wdObjects.wdServiceTable.wdServiceEntry: columns (1 is the index)
        c = (*root, 1, 2, 1)
        self.service_name: Final = (*c, 2)
        self.service_host: Final = (*c, 3)
        self.service_port: Final = (*c, 4)
        self.service_check_kind: Final = (*c, 5)
        self.service_state: Final = (*c, 6)
        self.service_previous_state: Final = (*c, 7)
        self.service_reason_code: Final = (*c, 8)
        self.service_reason_text: Final = (*c, 9)
        self.service_consecutive: Final = (*c, 10)
        self.service_response_time: Final = (*c, 11)
        self.service_last_change: Final = (*c, 12)
        self.service_checks: Final = (*c, 13)
        self.service_failures: Final = (*c, 14)
        self.service_last_check: Final = (*c, 15)

    def by_name(self) -> dict[str, tuple[int, ...]]:
        """MIB descriptor -> OID, for the root and every attribute."""
        names = {"snmpWatchdogMIB": self.root}
        for attr in self.__slots__:
            if attr != "root":
                names["wd" + "".join(w.capitalize() for w in attr.split("_"))] = getattr(self, attr)
        return names

    def __repr__(self) -> str:
        return f"Oids({dotted(self.root)})"


def mib_text(root: tuple[int, ...] | None = None) -> str:
    """The bundled MIB; with ``root``, the same module with its whole tree moved under it."""
    text = (resources.files("snmp_watchdog") / "data" / MIB_FILE).read_text(encoding="ascii")
    if root is None or tuple(root) == model.DEFAULT_OID_ROOT:
        return text
    check_root(root)
    base, value = _oid_value(tuple(root))
    _, default_value = _oid_value(model.DEFAULT_OID_ROOT)
    text = _replace_once(text, f"    ::= {default_value}\n", f"    ::= {value}\n")
    imports = "\n        FROM SNMPv2-SMI"
    text = _replace_once(text, f"    enterprises{imports}", f"    {base}{imports}")
    return _replace_once(text, _PLACEMENT, _MOVED.format(root=dotted(tuple(root))))


# The paragraph of the module's DESCRIPTION that says where the tree lies.
_PLACEMENT = """\
        This module's tree lies provisionally under netSnmpPlaypen
        (1.3.6.1.4.1.8072.9999.9999) until the project has an
        enterprise number of its own. The command
        'watchdog mib --root OID' prints this module moved under
        another arc; the watchdog's oid_root setting must name the
        same arc."
"""
_MOVED = """\
        This copy of the module was moved under {root}
        by 'watchdog mib --root'; the watchdog's oid_root setting
        must name the same arc."
"""


def _oid_value(root: tuple[int, ...]) -> tuple[str, str]:
    """The SNMPv2-SMI node ``root`` lies under, and the MODULE-IDENTITY's value at ``root``."""
    base = max((node for node in SMI_NODES if root[: len(node)] == node), key=len)
    parts = [SMI_NODES[base]]
    for depth in range(len(base) + 1, len(root)):
        prefix = root[:depth]
        name = _KNOWN_ARCS.get(prefix, f"wdRootArc{depth - len(base)}")
        parts.append(f"{name}({prefix[-1]})")
    parts.append(str(root[-1]))
    return SMI_NODES[base], "{ " + " ".join(parts) + " }"


def _replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise RuntimeError(f"{MIB_FILE} does not contain exactly one {old.strip()!r}")
    return text.replace(old, new)


def date_and_time(at_wall: float) -> bytes:
    """``DateAndTime`` (SNMPv2-TC) of a time since the epoch: 11 octets, UTC."""
    t = datetime.fromtimestamp(at_wall, tz=UTC)
    return struct.pack(
        ">HBBBBBBcBB",
        t.year,
        t.month,
        t.day,
        t.hour,
        t.minute,
        t.second,
        t.microsecond // 100_000,
        b"+",
        0,
        0,
    )


def display_text(text: str, size: int) -> str:
    """``text`` as printable ASCII of at most ``size`` characters (see the module's rules)."""
    pieces = [_printable(ch) for ch in text]
    if sum(map(len, pieces)) <= size:
        return "".join(pieces)
    kept: list[str] = []
    room = size - len(_ELLIPSIS)
    for piece in pieces:
        if len(piece) > room:
            break
        kept.append(piece)
        room -= len(piece)
    return "".join(kept) + _ELLIPSIS


def _printable(ch: str) -> str:
    code = ord(ch)
    if 0x20 <= code < 0x7F:
        return ch
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
