"""The shape of the configuration file: one pydantic model per mapping.

Rules:

- Every mapping rejects keys it does not know (``extra="forbid"``).
- Every value is read by one small parser below that either returns the
  value in the form the loader wants or raises an error whose message is a
  short plain sentence: what was expected, and what was written. A parser for
  a secret never repeats what was written.
- Types are strict: a port is a YAML integer, a boolean is ``true`` or
  ``false``. Text keys (names, hosts, secrets, paths, regexes) are read as
  written, even when YAML would see a number (see ``TEXT_KEYS``).
- A key written with no value (``port:``) is an error, never "use the default".
- Optional keys default to ``None`` here; the loader merges defaults, so it can
  tell "not written" from "written as the default".
- Rules that involve more than one key are not here but in the loader.
"""

from __future__ import annotations

import difflib
import encodings.idna
import ipaddress
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainValidator, model_validator
from pydantic_core import PydanticCustomError

from snmp_watchdog import snmp
from snmp_watchdog.model import DEFAULT_AGENT_PORT, CheckKind
from snmp_watchdog.model import parse_oid as model_parse_oid
from snmp_watchdog.oid import check_root
from snmp_watchdog.pgurl import has_password, is_postgresql, redact
from snmp_watchdog.snmp import AUTH_PROTOCOLS, PRIV_PROTOCOLS, UsmProtocol, find_protocol

#: Keys whose scalar values are taken as the text written (see ``yaml.parse``).
TEXT_KEYS = frozenset(
    (
        "name",
        "host",
        "user",
        "community",
        "community_file",
        "key",
        "key_file",
        "source",
        "engine_id",
        "oid_root",
        "state_dir",
        "status_dir",
        "store",
        "store_password",
        "store_password_file",
        "node",
        "receivers",
        "send",
        "expect",
        "send_file",
        "expect_file",
        "ignore",
        "helo",
        "server_name",
        "ca_file",
        "path",
        "body",
        "listen",
    )
)

_SPACE_RE = re.compile(r"\s")
_HOST_RE = re.compile(r"[^\s/\[\]@]{1,255}")
#: Dots that separate labels in an internationalised name (RFC 3490, section 3.1).
_IDNA_DOTS = re.compile("[.\u3002\uff0e\uff61]")
MAX_LABEL_OCTETS = 63
MAX_NAME_OCTETS = 253
#: Labels of 1 to 63 characters without a hyphen at either end, a trailing dot allowed.
_ASCII_NAME_RE = re.compile(r"(?!-)[^.]{1,63}(?<!-)(?:\.(?!-)[^.]{1,63}(?<!-))*\.?")
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_DURATION_RE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_HEX_RE = re.compile(r"[0-9A-Fa-f]+")
_LISTEN_RE = re.compile(
    r"\[(?P<v6>[^\]]+)\](?::(?P<p6>\d{1,5}))?"  # [IPv6]:port
    r"|(?P<v4>[^:\[\]]+)(?::(?P<p4>\d{1,5}))?"  # IPv4:port
    r"|(?P<bare>[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)"  # IPv6 alone: no port
)
_OID_RE = re.compile(r"\.?\d+(?:\.\d+)+")
_DURATION_FORMS = "a duration like 250ms, 5s, 2m, 1h, 1d or a number of seconds"


def fail(message: str) -> PydanticCustomError:
    """The error a parser raises: ``message`` is shown as it is."""
    return PydanticCustomError("watchdog", message)


def as_written(value: Any) -> str:
    """How an error message shows what was written."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    return kind_of(value)


def kind_of(value: Any) -> str:
    """What sort of value was written, without showing it (safe for secrets)."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def suggest(word: str, choices: Sequence[str]) -> str | None:
    """The closest of ``choices`` to a misspelt ``word``, if one is close."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def one_of(choices: Sequence[str]) -> str:
    """``a, b or c``."""
    return choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} or {choices[-1]}"


# --- parsers: each takes what YAML gave and returns the value or raises ------


def _integer(value: Any, low: int, high: int | None, expected: str) -> int:
    in_range = isinstance(value, int) and value >= low and (high is None or value <= high)
    if in_range and not isinstance(value, bool):
        return int(value)
    raise fail(f"expected {expected}, got {as_written(value)}")


def parse_port(value: Any) -> int:
    return _integer(value, 1, 65535, "an integer from 1 to 65535")


def parse_count(value: Any) -> int:
    return _integer(value, 1, None, "an integer of 1 or more")


def parse_flap_changes(value: Any) -> int:
    if value == 0 and not isinstance(value, bool):
        return 0
    return _integer(value, 2, None, "0 (no flap detection) or an integer of 2 or more")


def duration_seconds(value: Any) -> float | None:
    """Seconds in a duration (``250ms``, ``5s``, ``1h30m``, ``90``), or None if it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None
    if isinstance(value, str):
        text = value.strip()
        if _NUMBER_RE.fullmatch(text):
            return float(text)
        if _DURATION_RE.fullmatch(text):
            return sum(
                float(number) * _UNITS[unit] for number, unit in _DURATION_PART_RE.findall(text)
            )
    return None


def parse_duration(value: Any) -> float:
    """A duration greater than zero."""
    seconds = duration_seconds(value)
    if seconds is None:
        raise fail(f"expected {_DURATION_FORMS}, got {as_written(value)}")
    if seconds <= 0:
        raise fail(f"expected a duration greater than 0, got {as_written(value)}")
    return seconds


def parse_duration_or_zero(value: Any) -> float:
    """A duration of zero or more (zero switches the feature off)."""
    seconds = duration_seconds(value)
    if seconds is None:
        raise fail(f"expected {_DURATION_FORMS}, got {as_written(value)}")
    if seconds < 0:
        raise fail(f"expected a duration of 0 or more, got {as_written(value)}")
    return seconds


def parse_jitter(value: Any) -> float:
    """``10%`` or ``0.1``: a fraction of the interval from 0 to 0.5."""
    fraction: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        fraction = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith("%") and _NUMBER_RE.fullmatch(text[:-1].strip()):
            fraction = float(text[:-1]) / 100
    if fraction is not None and 0 <= fraction <= 0.5:
        return fraction
    raise fail(
        "expected a percentage from 0% to 50% (like 10%) or a fraction from 0 to 0.5, "
        f"got {as_written(value)}"
    )


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise fail(f"expected true or false, got {as_written(value)}")


def _text(
    value: Any,
    expected: str,
    fits: Callable[[str], object] | None = None,
    *,
    show: Callable[[Any], str] = as_written,
) -> str:
    """``value`` if it is text that ``fits``; else "expected EXPECTED, got ..."."""
    if isinstance(value, str) and (fits is None or fits(value)):
        return value
    raise fail(f"expected {expected}, got {show(value)}")


def parse_name(value: Any) -> str:
    return _text(value, "a name of 1 to 64 letters, digits, '.', '_' or '-'", _NAME_RE.fullmatch)


def parse_host(value: Any) -> str:
    """A host name or IP address literal; not resolved here (DNS is checked at check time).

    A name must be one that name resolution and TLS can encode (they use the
    ``idna`` codec): labels of 1 to 63 octets that do not start or end with a
    hyphen, 253 octets in all, a trailing dot allowed.
    """
    if isinstance(value, str) and value.count(":") == 1:
        raise fail(
            "expected a host name or IP address without a port or scheme "
            f"(the port goes in port:), got {as_written(value)}"
        )
    if not (isinstance(value, str) and _HOST_RE.fullmatch(value)):
        raise fail(f"expected a host name or IP address, got {as_written(value)}")
    if ":" in value:
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            raise fail(f"expected an IPv6 address, got {as_written(value)}") from None
        return value
    problem = host_name_problem(value)
    if problem is not None:
        raise fail(problem)
    return value


def host_name_problem(name: str) -> str | None:
    """What makes ``name`` unusable as a DNS name (RFC 1035, IDNA 2003), or None."""
    if name.isascii() and _fine_ascii_name(name):
        return None
    shown = as_written(name)
    labels = _IDNA_DOTS.split(name)
    if len(labels) > 1 and not labels[-1]:
        labels.pop()  # the trailing dot of a fully qualified name
    total = len(labels) - 1
    for label in labels:
        try:
            ace = _ace_label(label)
        except UnicodeError as exc:
            return f"cannot encode label {as_written(label)} in {shown} with IDNA ({exc})"
        if not ace:
            return f"empty label in {shown}"
        if len(ace) > MAX_LABEL_OCTETS:
            return (
                f"label {as_written(label)} is {len(ace)} octets long, "
                f"more than {MAX_LABEL_OCTETS}, in {shown}"
            )
        if label.startswith("-") or label.endswith("-"):
            end = "starts" if label.startswith("-") else "ends"
            return f"label {as_written(label)} {end} with a hyphen in {shown}"
        total += len(ace)
    if total > MAX_NAME_OCTETS:
        return f"{shown} is {total} octets long, more than the {MAX_NAME_OCTETS} of a host name"
    try:
        name.encode("idna")
    except UnicodeError as exc:  # a rule of the codec not checked above
        return f"cannot encode {shown} with IDNA ({exc.__cause__ or exc})"
    return None


def _fine_ascii_name(name: str) -> bool:
    """The quick answer for the common case; ``host_name_problem`` says what is wrong."""
    return (
        len(name) - name.endswith(".") <= MAX_NAME_OCTETS
        and _ASCII_NAME_RE.fullmatch(name) is not None
    )


def _ace_label(label: str) -> bytes:
    """The ASCII form of one label, as the ``idna`` codec writes it."""
    if label.isascii():
        return label.encode("ascii")
    prepared = encodings.idna.nameprep(label)
    if prepared.isascii():
        return prepared.encode("ascii")
    return b"xn--" + prepared.encode("punycode")


def parse_user(value: Any) -> str:
    """An SNMPv3 user name (RFC 3414: 1 to 32 octets)."""
    return _text(
        value, "a user name of 1 to 32 characters", lambda text: 1 <= len(text.encode()) <= 32
    )


def parse_word(value: Any) -> str:
    """Text without white space (a user name, a HELO name, a TLS server name)."""
    return _text(value, "text without spaces", lambda text: text and not _has_space(text))


def parse_line(value: Any) -> str:
    """One line to send; CRLF is added when it is sent."""
    text = _text(value, "one line of text")
    if "\n" in text or "\r" in text:
        raise fail(
            "expected one line (CRLF is added when sending); "
            "use several send steps in a dialogue, or send_file"
        )
    return text


def parse_regex(value: Any) -> str:
    """A regular expression's text; the loader compiles it."""
    return _text(value, "a regular expression")


def parse_regexes(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise fail(f"expected a regular expression or a list of them, got {as_written(value)}")


def parse_path(value: Any) -> str:
    """Text that is not blank and has no NUL (which no file name can hold)."""
    return _text(value, "a file or directory path", _is_path)


def _is_path(text: str) -> bool:
    return bool(text.strip()) and "\0" not in text


def parse_store(value: Any) -> str:
    """A ``postgresql://`` URL without a password; shown only with any password hidden."""
    url = _text(value, "a postgresql:// URL", show=kind_of)
    if not is_postgresql(url):
        raise fail(
            f"expected a postgresql:// URL (or no store: the SQLite database in state_dir), "
            f"got {as_written(redact(url))}"
        )
    if has_password(url):
        raise fail(
            "a password in the URL would show wherever the URL does; give it as "
            "store_password: ${VARIABLE} or in store_password_file"
        )
    return url


def parse_secret(value: Any) -> str:
    """Inline secret text or ``${VAR}``; never shown in an error."""
    return _text(value, "text", show=kind_of)


def parse_ip(value: Any) -> str:
    if isinstance(value, str):
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            pass
    raise fail(f"expected an IP address, got {as_written(value)}")


def parse_listen(value: Any) -> tuple[str, int]:
    """``address:port``, ``[IPv6]:port``, or an address alone (port 1161); IP literals only."""
    text = value.strip() if isinstance(value, str) else ""
    match = _LISTEN_RE.fullmatch(text)
    host = port = None
    if match:
        host = match["v6"] or match["v4"] or match["bare"]
        digits = match["p6"] or match["p4"]
        port = int(digits) if digits else DEFAULT_AGENT_PORT
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        address = None
    if address is None or port is None or not 1 <= port <= 65535:
        raise fail(
            "expected an IP address and a UDP port like 127.0.0.1:1161 or [::1]:1161, "
            f"got {as_written(value)}"
        )
    return str(address), port


_VERSIONS = tuple(version.value for version in snmp.Version)
_MODES = tuple(mode.value for mode in snmp.Mode)


def parse_version(value: Any) -> snmp.Version:
    """``1``, ``2c`` or ``3``; YAML reads the first and last as integers."""
    if isinstance(value, int | str) and not isinstance(value, bool):
        text = str(value).strip().lower()
        if text in _VERSIONS:
            return snmp.Version(text)
    raise fail(f"expected {one_of(_VERSIONS)}, got {as_written(value)}")


def parse_mode(value: Any) -> snmp.Mode:
    if isinstance(value, str) and value.lower() in _MODES:
        return snmp.Mode(value.lower())
    raise fail(f"expected {one_of(_MODES)}, got {as_written(value)}")


_KINDS = tuple(kind.value for kind in CheckKind)


def parse_check(value: Any) -> CheckKind:
    if isinstance(value, str) and value.lower() in _KINDS:
        return CheckKind(value.lower())
    hint = suggest(value.lower(), _KINDS) if isinstance(value, str) else None
    extra = f" (did you mean '{hint}'?)" if hint else ""
    raise fail(f"expected one of {', '.join(_KINDS)}, got {as_written(value)}{extra}")


def _protocol(table: Mapping[str, UsmProtocol], value: Any) -> str:
    """The name of the protocol ``value`` names in ``table``."""
    found = find_protocol(table, value) if isinstance(value, str) else None
    if found is not None:
        return found.name
    strong = [protocol.name for protocol in table.values() if not protocol.weak]
    weak = [protocol.name for protocol in table.values() if protocol.weak]
    raise fail(
        f"expected {one_of(strong)} ({one_of(weak)} only with allow_weak_crypto), "
        f"got {as_written(value)}"
    )


def parse_auth_protocol(value: Any) -> str:
    """SHA (also SHA1, SHA-1), SHA224 ... SHA512 (also SHA-256 ...), MD5."""
    return _protocol(AUTH_PROTOCOLS, value)


def parse_priv_protocol(value: Any) -> str:
    """AES128 (also AES, AES-128), AES192, AES256, AES192C, AES256C, DES."""
    return _protocol(PRIV_PROTOCOLS, value)


def parse_engine_id(value: Any) -> bytes:
    """Hex, ``0x`` optional, 5 to 32 octets (RFC 3411 SnmpEngineID)."""
    text = value.strip() if isinstance(value, str) else ""
    if text[:2] in ("0x", "0X"):
        text = text[2:]
    if _HEX_RE.fullmatch(text) and len(text) % 2 == 0 and 5 <= len(text) // 2 <= 32:
        return bytes.fromhex(text)
    raise fail(f"expected 5 to 32 octets in hex like 0x80001f8804..., got {as_written(value)}")


def parse_oid(value: Any) -> tuple[int, ...]:
    """A dotted OID under which the MIB's tree can sit (``oid_root``)."""
    text = value.strip() if isinstance(value, str) else ""
    try:
        arcs = model_parse_oid(text) if _OID_RE.fullmatch(text) else None
        if arcs is not None:
            check_root(arcs)
            return arcs
    except ValueError as exc:
        raise fail(f"{exc}, got {as_written(value)}") from None
    raise fail(f"expected a dotted OID like 1.3.6.1.4.1.99999, got {as_written(value)}")


def parse_http_status(value: Any) -> tuple[int, ...]:
    items = value if isinstance(value, list) and value else [value]
    for item in items:
        if not (isinstance(item, int) and not isinstance(item, bool) and 100 <= item <= 599):
            raise fail(
                f"expected an HTTP status from 100 to 599 or a list of them, got {as_written(item)}"
            )
    return tuple(items)


def parse_http_path(value: Any) -> str:
    return _text(
        value,
        "a path starting with '/'",
        lambda text: text.startswith("/") and not _has_space(text),
    )


def _has_space(text: str) -> bool:
    return _SPACE_RE.search(text) is not None


def _not_null(expected: str) -> Callable[[Any], Any]:
    """A key written with no value is an error (pydantic would read it as absent)."""

    def check(value: Any) -> Any:
        if value is None:
            raise fail(f"expected {expected}, got nothing")
        return value

    return check


# --- the types fields use ------------------------------------------------------

Port = Annotated[int | None, PlainValidator(parse_port)]
Count = Annotated[int | None, PlainValidator(parse_count)]
FlapChanges = Annotated[int | None, PlainValidator(parse_flap_changes)]
Duration = Annotated[float | None, PlainValidator(parse_duration)]
DurationOrZero = Annotated[float | None, PlainValidator(parse_duration_or_zero)]
Jitter = Annotated[float | None, PlainValidator(parse_jitter)]
Bool = Annotated[bool | None, PlainValidator(parse_bool)]
Name = Annotated[str, PlainValidator(parse_name)]
Host = Annotated[str, PlainValidator(parse_host)]
Word = Annotated[str | None, PlainValidator(parse_word)]
HostName = Annotated[str | None, PlainValidator(parse_host)]
User = Annotated[str | None, PlainValidator(parse_user)]
Line = Annotated[str | None, PlainValidator(parse_line)]
Regex = Annotated[str | None, PlainValidator(parse_regex)]
Regexes = Annotated[tuple[str, ...] | None, PlainValidator(parse_regexes)]
PathText = Annotated[str | None, PlainValidator(parse_path)]
SecretText = Annotated[str | None, PlainValidator(parse_secret)]
StoreUrl = Annotated[str | None, PlainValidator(parse_store)]
IpAddress = Annotated[str | None, PlainValidator(parse_ip)]
Version = Annotated[snmp.Version | None, PlainValidator(parse_version)]
Mode = Annotated[snmp.Mode | None, PlainValidator(parse_mode)]
Check = Annotated[CheckKind | None, PlainValidator(parse_check)]
AuthProtocol = Annotated[str, PlainValidator(parse_auth_protocol)]
PrivProtocol = Annotated[str, PlainValidator(parse_priv_protocol)]
EngineId = Annotated[bytes | None, PlainValidator(parse_engine_id)]
Oid = Annotated[tuple[int, ...] | None, PlainValidator(parse_oid)]
HttpStatus = Annotated[tuple[int, ...] | None, PlainValidator(parse_http_status)]
HttpPath = Annotated[str | None, PlainValidator(parse_http_path)]
NameList = Annotated[list[Name] | None, BeforeValidator(_not_null("a list of receiver names"))]


class Section(BaseModel):
    """A mapping of the file: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class WatchdogSection(Section):
    state_dir: PathText = None
    engine_id: EngineId = None
    max_in_flight: Count = None
    status_dir: PathText = None
    heartbeat: DurationOrZero = None
    oid_root: Oid = None
    allow_weak_crypto: Bool = None
    store: StoreUrl = None
    store_password: SecretText = None
    store_password_file: PathText = None
    node: Annotated[str | None, PlainValidator(parse_name)] = None
    lease: Duration = None


class Schedule(Section):
    """The keys of ``defaults:``; every service may override each of them."""

    interval: Duration = None
    retry_interval: Duration = None
    timeout: Duration = None
    fall: Count = None
    rise: Count = None
    jitter: Jitter = None
    receivers: NameList = None
    flap_changes: FlapChanges = None
    flap_window: Duration = None
    remind_every: DurationOrZero = None


SCHEDULE_KEYS: tuple[str, ...] = tuple(Schedule.model_fields)


class StepSection(Section):
    """One step of a dialogue: exactly one of ``send`` and ``expect``."""

    send: Line = None
    expect: Regex = None

    @model_validator(mode="after")
    def _one_key(self) -> StepSection:
        if len(self.model_fields_set) != 1:
            both = "; this one has both" if self.model_fields_set else ""
            raise fail(f"a step has exactly one key, send or expect{both}")
        return self


class ServiceSection(Schedule):
    name: Name
    host: Host
    port: Port = None
    check: Check = None
    # the conversation of a tcp check
    send: Line = None
    expect: Regex = None
    send_file: PathText = None
    expect_file: PathText = None
    ignore: Regexes = None
    dialogue: Annotated[
        list[StepSection] | None, BeforeValidator(_not_null("a list of send and expect steps"))
    ] = None
    # protocol options
    helo: Word = None
    tls: Bool = None
    tls_verify: Bool = None
    server_name: HostName = None
    ca_file: PathText = None
    cert_warning: DurationOrZero = None
    path: HttpPath = None
    status: HttpStatus = None
    body: Regex = None


class AuthSection(Section):
    protocol: AuthProtocol
    key: SecretText = None
    key_file: PathText = None


class PrivSection(Section):
    protocol: PrivProtocol
    key: SecretText = None
    key_file: PathText = None


#: An SNMPv3 user's keys, as receivers and the agent's users write them.
AuthKey = Annotated[
    AuthSection | None, BeforeValidator(_not_null("a mapping with protocol and key"))
]
PrivKey = Annotated[
    PrivSection | None, BeforeValidator(_not_null("a mapping with protocol and key"))
]


class ReceiverSection(Section):
    name: Name
    host: Host
    port: Port = None
    version: Version = None
    mode: Mode = None
    community: SecretText = None
    community_file: PathText = None
    user: User = None
    auth: AuthKey = None
    priv: PrivKey = None
    source: IpAddress = None
    timeout: Duration = None
    give_up_after: Duration = None


class AgentUserSection(Section):
    user: Annotated[str, PlainValidator(parse_user)]
    auth: AuthKey = None
    priv: PrivKey = None


class AgentSection(Section):
    listen: Annotated[tuple[str, int] | None, PlainValidator(parse_listen)] = None
    community: SecretText = None
    community_file: PathText = None
    users: Annotated[
        list[AgentUserSection] | None, BeforeValidator(_not_null("a list of SNMPv3 users"))
    ] = None


#: The top-level sections and the model of each mapping inside them.
SECTIONS = ("watchdog", "defaults", "receivers", "services", "agent")
