"""Where the MIB's tree may sit: the rule for an OID root.

A leaf module (it imports nothing of ours), so that the configuration loader
checks ``oid_root`` by the same rule as ``notify.mib`` without importing the
notification side.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

MAX_ARC: Final = 2**32 - 1
INTERNET: Final = (1, 3, 6, 1)

#: The nodes SNMPv2-SMI defines at and below ``internet``. A root is placed
#: under the longest of them that is a proper prefix, and may not be one of them.
SMI_NODES: Final[Mapping[tuple[int, ...], str]] = {
    INTERNET: "internet",
    (1, 3, 6, 1, 1): "directory",
    (1, 3, 6, 1, 2): "mgmt",
    (1, 3, 6, 1, 2, 1): "mib-2",
    (1, 3, 6, 1, 2, 1, 10): "transmission",
    (1, 3, 6, 1, 3): "experimental",
    (1, 3, 6, 1, 4): "private",
    (1, 3, 6, 1, 4, 1): "enterprises",
    (1, 3, 6, 1, 5): "security",
    (1, 3, 6, 1, 6): "snmpV2",
    (1, 3, 6, 1, 6, 1): "snmpDomains",
    (1, 3, 6, 1, 6, 2): "snmpProxys",
    (1, 3, 6, 1, 6, 3): "snmpModules",
}


def check_root(root: tuple[int, ...]) -> None:
    """Raise ``ValueError`` unless ``root`` can carry the MIB's tree.

    A root lies strictly below ``internet`` (1.3.6.1), every arc fits in 32
    bits, and it is not itself a node SNMPv2-SMI defines (``enterprises``).
    """
    if any(not 0 <= arc <= MAX_ARC for arc in root):
        raise ValueError("every arc of an OID must be a number from 0 to 4294967295")
    if len(root) <= len(INTERNET) or root[: len(INTERNET)] != INTERNET:
        raise ValueError("the OID root must lie under internet (1.3.6.1), e.g. 1.3.6.1.4.1.<PEN>")
    if root in SMI_NODES:
        name = SMI_NODES[root]
        raise ValueError(f"the OID root {dotted(root)} is {name} itself; choose an arc below it")


def dotted(oid: tuple[int, ...]) -> str:
    """``(1, 3, 6, 1)`` -> ``1.3.6.1``."""
    return ".".join(map(str, oid))
