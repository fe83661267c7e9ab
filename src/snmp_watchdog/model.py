"""The configuration as the rest of the program sees it: frozen, typed, resolved.

``config`` builds these from a YAML file (defaults merged, regexes compiled,
files read, secrets resolved); everything else consumes them and never looks at
YAML. Equality is structural, so a reload can tell which services changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from snmp_watchdog.snmp import Mode, Version

#: The provisional OID root (netSnmpPlaypen) until the project has its own
#: IANA enterprise number; ``oid_root`` in the config moves the whole tree.
DEFAULT_OID_ROOT: tuple[int, ...] = (1, 3, 6, 1, 4, 1, 8072, 9999, 9999)

#: Most a check reads from one server, whatever the server sends.
MAX_READ = 64 * 1024


def parse_oid(text: str) -> tuple[int, ...]:
    """``"1.3.6.1.4.1.99999"`` (a leading dot allowed) -> ``(1, 3, 6, 1, 4, 1, 99999)``."""
    parts = text.strip().lstrip(".").split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts):
        raise ValueError("expected a numeric OID like 1.3.6.1.4.1.99999")
    arcs = tuple(int(p) for p in parts)
    if arcs[0] > 2 or (arcs[0] < 2 and arcs[1] > 39) or any(a > 0xFFFFFFFF for a in arcs):
        raise ValueError("not a valid OID (first arc 0-2, second 0-39 under 0 and 1)")
    return arcs


class CheckKind(Enum):
    TCP = "tcp"
    SMTP = "smtp"
    POP3 = "pop3"
    IMAP = "imap"
    FTP = "ftp"
    SSH = "ssh"
    HTTP = "http"
    HTTPS = "https"
    TLS = "tls"


#: Port used when a service does not name one.
DEFAULT_PORTS: dict[CheckKind, int] = {
    CheckKind.SMTP: 25,
    CheckKind.POP3: 110,
    CheckKind.IMAP: 143,
    CheckKind.FTP: 21,
    CheckKind.SSH: 22,
    CheckKind.HTTP: 80,
    CheckKind.HTTPS: 443,
    CheckKind.TLS: 443,
}


class Secret:
    """A community string or key. It never shows itself in repr, str or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a conversation: send a line (CRLF added) or expect a regex."""

    send: bytes | None = None
    expect: re.Pattern[bytes] | None = None


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    host: str
    port: int
    check: CheckKind
    # schedule and hysteresis (defaults already merged in)
    interval: float = 60.0
    retry_interval: float = 10.0
    timeout: float = 5.0
    fall: int = 3
    rise: int = 2
    jitter: float = 0.10  # a fraction of the interval
    receivers: tuple[str, ...] = ()  # resolved: never empty when receivers exist
    flap_changes: int = 4
    flap_window: float = 1800.0
    remind_every: float = 0.0  # 0: never
    # the conversation of a ``tcp`` check
    dialogue: tuple[Step, ...] = ()  # send/expect and dialogue both compile to this
    send_data: bytes | None = None  # contents of send_file
    send_file: Path | None = None
    expect_answer: bytes | None = None  # contents of expect_file (None if not recorded yet)
    expect_file: Path | None = None
    ignore: tuple[re.Pattern[bytes], ...] = ()  # parts of the answer that may differ
    # protocol options of the built-in kinds
    helo: str = "localhost"  # smtp: the name given in EHLO/HELO
    tls: bool = False  # implicit TLS from the first byte (smtps, pop3s, imaps, https)
    tls_verify: bool = True
    server_name: str | None = None  # SNI and name to verify; default: host
    ca_file: Path | None = None
    cert_warning: float = 14 * 86400.0  # tls/https: certificate_expiring this long before
    http_path: str = "/"
    http_status: tuple[int, ...] = ()  # empty: any 2xx or 3xx
    http_body: re.Pattern[bytes] | None = None


@dataclass(frozen=True, slots=True)
class UsmKey:
    protocol: (
        str  # upper case: SHA, SHA224, SHA256, SHA384, SHA512, MD5 | AES128, AES192, AES256, DES
    )
    key: Secret


@dataclass(frozen=True, slots=True)
class Receiver:
    name: str
    host: str
    port: int = 162
    version: Version = Version.V2C
    mode: Mode = Mode.TRAP
    community: Secret | None = None  # v1/v2c
    user: str | None = None  # v3
    auth: UsmKey | None = None
    priv: UsmKey | None = None
    source: str | None = None  # local address to send from
    timeout: float = 2.0  # per inform attempt
    give_up_after: float = 86400.0

    @property
    def informs(self) -> bool:
        """Whether this receiver gets informs (acknowledged) rather than traps.

        SNMPv1 has no informs: an SNMPv1 receiver gets traps whatever its mode.
        """
        return self.mode == Mode.INFORM and self.version != Version.V1


#: Where the read-only agent listens unless ``agent.listen`` says otherwise.
DEFAULT_AGENT_HOST = "127.0.0.1"
DEFAULT_AGENT_PORT = 1161


@dataclass(frozen=True, slots=True)
class AgentUser:
    """An SNMPv3 user allowed to read the agent (keys localized to our engine ID)."""

    user: str
    auth: UsmKey | None = None
    priv: UsmKey | None = None


@dataclass(frozen=True, slots=True)
class Agent:
    """The optional read-only SNMP agent (``agent:``): where it listens and who may read."""

    host: str = DEFAULT_AGENT_HOST  # an IP address literal
    port: int = DEFAULT_AGENT_PORT
    community: Secret | None = None  # SNMPv1/v2c
    users: tuple[AgentUser, ...] = ()  # SNMPv3


@dataclass(frozen=True, slots=True)
class Settings:
    state_dir: Path = Path("/var/lib/snmp-watchdog")
    engine_id: bytes | None = None
    max_in_flight: int = 1000
    status_dir: Path | None = None
    heartbeat: float = 0.0  # 0: no heartbeat
    oid_root: tuple[int, ...] = DEFAULT_OID_ROOT
    allow_weak_crypto: bool = False
    store: str | None = None  # postgresql://... (no password); None: SQLite in state_dir
    store_password: Secret | None = None
    node: str | None = None  # this watchdog's name in a cluster (default: the host name)
    lease: float = 15.0  # a cluster node's lease: failover takes about this long


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    settings: Settings = field(default_factory=Settings)
    receivers: tuple[Receiver, ...] = ()
    services: tuple[Service, ...] = ()
    agent: Agent | None = None  # None: no agent

    def service(self, name: str) -> Service:
        for svc in self.services:
            if svc.name == name:
                return svc
        raise KeyError(name)
