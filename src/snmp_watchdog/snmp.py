"""SNMP versions, notification modes and SNMPv3 protocols: one table of each.

A leaf module (it imports nothing of ours), read by the configuration loader
to check what is written, by the sender and the agent to set up pysnmp, and
by ``watchdog test-trap`` and ``watchdog status`` to describe receivers.

Rules:

- A version or mode is a ``str`` enum: it compares equal to its text
  (``Version.V2C == "2c"``) and shows as it (``f"v{version}"`` is ``v2c``).
- SNMPv1 has no informs: a receiver gets informs only when its mode is
  inform and its version is not 1 (``model.Receiver.informs``).
- A USM protocol is known by its upper-case name; the table gives the other
  spellings it accepts, the OID that identifies it to pysnmp and whether it is
  weak. Weak protocols (MD5, DES) are refused unless ``allow_weak_crypto``.
- AES-192/256 extend the localized key in one of two ways, which agree for
  SHA-256 and longer digests and differ for SHA-1 and MD5 (measured against
  Net-SNMP 5.9.3): ``AES192``/``AES256`` follow draft-blumenthal-aes-usm-04
  like Net-SNMP's ``AES-192``/``AES-256``; ``AES192C``/``AES256C`` follow the
  Reeder 3DES draft like Cisco and Net-SNMP's ``AES192C``/``AES256C``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class Version(StrEnum):
    V1 = "1"
    V2C = "2c"
    V3 = "3"


class Mode(StrEnum):
    TRAP = "trap"
    INFORM = "inform"


@dataclass(frozen=True, slots=True)
class UsmProtocol:
    """An SNMPv3 authentication or privacy protocol."""

    name: str  # upper case, as the configuration and the model write it
    oid: tuple[int, ...]  # pysnmp's identifier of the protocol
    netsnmp: str  # Net-SNMP's name for it (createUser in snmptrapd.conf)
    weak: bool = False
    aliases: tuple[str, ...] = ()  # other spellings, upper case without '-', '_' or spaces


_IGNORED = re.compile(r"[\s_-]")


def _table(*protocols: UsmProtocol) -> Mapping[str, UsmProtocol]:
    return {protocol.name: protocol for protocol in protocols}


#: SNMP-USER-BASED-SM-MIB and SNMP-USM-HMAC-SHA2-MIB (RFC 7860).
AUTH_PROTOCOLS: Mapping[str, UsmProtocol] = _table(
    UsmProtocol("SHA", (1, 3, 6, 1, 6, 3, 10, 1, 1, 3), "SHA", aliases=("SHA1",)),
    UsmProtocol("SHA224", (1, 3, 6, 1, 6, 3, 10, 1, 1, 4), "SHA-224"),
    UsmProtocol("SHA256", (1, 3, 6, 1, 6, 3, 10, 1, 1, 5), "SHA-256"),
    UsmProtocol("SHA384", (1, 3, 6, 1, 6, 3, 10, 1, 1, 6), "SHA-384"),
    UsmProtocol("SHA512", (1, 3, 6, 1, 6, 3, 10, 1, 1, 7), "SHA-512"),
    UsmProtocol("MD5", (1, 3, 6, 1, 6, 3, 10, 1, 1, 2), "MD5", weak=True),
)

#: SNMP-USM-AES-MIB (RFC 3826) and the identifiers pysnmp gives the AES-192/256 variants.
PRIV_PROTOCOLS: Mapping[str, UsmProtocol] = _table(
    UsmProtocol("AES128", (1, 3, 6, 1, 6, 3, 10, 1, 2, 4), "AES", aliases=("AES",)),
    UsmProtocol("AES192", (1, 3, 6, 1, 4, 1, 9, 12, 6, 1, 1), "AES-192"),
    UsmProtocol("AES256", (1, 3, 6, 1, 4, 1, 9, 12, 6, 1, 2), "AES-256"),
    UsmProtocol("AES192C", (1, 3, 6, 1, 4, 1, 9, 12, 6, 1, 101), "AES192C"),
    UsmProtocol("AES256C", (1, 3, 6, 1, 4, 1, 9, 12, 6, 1, 102), "AES256C"),
    UsmProtocol("DES", (1, 3, 6, 1, 6, 3, 10, 1, 2, 2), "DES", weak=True),
)


def is_weak(name: str) -> bool:
    """Whether the protocol of this name is one ``allow_weak_crypto`` must allow."""
    protocol = AUTH_PROTOCOLS.get(name) or PRIV_PROTOCOLS.get(name)
    return protocol is not None and protocol.weak


def find_protocol(table: Mapping[str, UsmProtocol], written: str) -> UsmProtocol | None:
    """The protocol ``written`` names in ``table`` (any case; '-', '_' and white space ignored)."""
    key = _IGNORED.sub("", written).upper()
    for protocol in table.values():
        if key == protocol.name or key in protocol.aliases:
            return protocol
    return None
