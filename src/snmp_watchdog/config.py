"""Load the configuration file (SPEC §4) into the frozen objects of ``model``.

Three passes, in the manner of blackbox_exporter's ``config.go``:

1. YAML to plain data, remembering the line of every key (``_yaml``). A
   syntax error stops here; duplicate keys are problems.
2. Shape (``_config_schema``): every section, receiver and service is checked
   by its pydantic model: unknown keys, types, ranges, host names. A receiver
   or service with a shape problem goes on to pass 3 without the values that
   have problems, so its other mistakes are found too; only a problem in a key
   the rules depend on (``version``, ``check``, ...) leaves it out.
3. Rules across keys: duplicate names, receivers that do not exist, keys that
   exclude each other or do not apply to the check kind, SNMP security rules;
   regexes are compiled, files are read, ``${VAR}`` secrets are resolved.

Every problem of the file is collected; they are raised together as one
:class:`~snmp_watchdog.exceptions.ConfigError`, sorted by line, each written
``FILE:LINE: path.to[2].key: what is wrong``. A secret's value never appears
in a message.

Values are merged: a service's own value, else the ``defaults:`` value, else
the built-in default of ``model``. Relative paths are relative to the
directory of the configuration file. Host names are not resolved here.
"""

from __future__ import annotations

import gc
import os
import re
import socket
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, ValidationError

from snmp_watchdog._config_schema import (
    SCHEDULE_KEYS,
    SECTIONS,
    TEXT_KEYS,
    WEAK_PROTOCOLS,
    AgentSection,
    AuthSection,
    PrivSection,
    ReceiverSection,
    Schedule,
    Section,
    ServiceSection,
    WatchdogSection,
    kind_of,
    suggest,
)
from snmp_watchdog._yaml import Document, YamlSyntaxError, parse
from snmp_watchdog._yaml import Path as KeyPath
from snmp_watchdog.exceptions import ConfigError, Problem
from snmp_watchdog.model import (
    DEFAULT_PORTS,
    MAX_READ,
    Agent,
    AgentUser,
    CheckKind,
    Config,
    Receiver,
    Secret,
    Service,
    Settings,
    Step,
    UsmKey,
)

__all__ = ["DEFAULT_CONFIG_PATH", "default_config_path", "format_problems", "load_config"]

DEFAULT_CONFIG_PATH = Path("/etc/snmp-watchdog/watchdog.yaml")

#: The least length of an SNMPv3 passphrase (RFC 3414, section 11.2).
MIN_KEY_LENGTH = 8

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_M = TypeVar("_M", bound=Section)

_CONVERSATION_KEYS = ("send", "expect", "send_file", "expect_file", "ignore", "dialogue")
_TLS_KEYS = ("tls_verify", "server_name", "ca_file", "cert_warning")
_HTTP_KEYS = ("path", "status", "body")
_TLS_OPTIONAL = (CheckKind.TCP, CheckKind.SMTP, CheckKind.POP3, CheckKind.IMAP, CheckKind.FTP)
_ALWAYS_TLS = (CheckKind.HTTPS, CheckKind.TLS)
_HTTP_KINDS = (CheckKind.HTTP, CheckKind.HTTPS)
_SCHEDULE_VALUES = frozenset(SCHEDULE_KEYS) - {"receivers"}
_SECTION_LIST = f"{', '.join(SECTIONS[:-1])} and {SECTIONS[-1]}"
_RESTRICTED_KEYS = frozenset((*_CONVERSATION_KEYS, *_TLS_KEYS, *_HTTP_KEYS, "helo", "tls"))
#: Keys that the rules across keys depend on (see ``_Loader.salvage``): when one
#: of them has a shape problem, checking the rest would only report consequences.
_SERVICE_PIVOTS = frozenset(("", "check", "port", "tls", "expect_file"))
_RECEIVER_PIVOTS = frozenset(("", "version"))
_SECTION_PIVOTS = frozenset(("",))
#: What stands in for a required key that has a shape problem while the rules
#: across keys check the rest of its mapping; nothing is built from it.
_STAND_INS: dict[tuple[type[BaseModel], str], str] = {
    (ReceiverSection, "name"): "_",
    (ReceiverSection, "host"): "invalid",
    (ServiceSection, "name"): "_",
    (ServiceSection, "host"): "invalid",
    (AuthSection, "protocol"): "SHA",
    (PrivSection, "protocol"): "AES128",
}


def default_config_path() -> Path:
    """``$WATCHDOG_CONFIG`` when set and not empty, else ``/etc/snmp-watchdog/watchdog.yaml``."""
    env = os.environ.get("WATCHDOG_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG_PATH


def load_config(path: Path | str, *, allow_missing_expect: bool = False) -> Config:
    """Read, check and resolve the configuration file at ``path``.

    Raises ConfigError listing every problem of the file. With
    ``allow_missing_expect`` (``watchdog record``), an ``expect_file`` that does
    not exist yet is not a problem; the service's ``expect_answer`` is None.
    """
    # The loader allocates many small objects that all stay alive until it
    # returns; cyclic garbage collection passes over them would only cost time.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _Loader(Path(path), allow_missing_expect).load()
    finally:
        if collecting:
            gc.enable()


def format_problems(problems: Sequence[Problem], file: str | None = None) -> str:
    """Each problem on its own line, then ``N problems in FILE``."""
    name = file if file is not None else (problems[0].file if problems else "")
    count = len(problems)
    lines = [str(problem) for problem in problems]
    lines.append(f"{count} problem{'' if count == 1 else 's'} in {name}")
    return "\n".join(lines)


def format_path(path: KeyPath) -> str:
    """``("services", 2, "port")`` -> ``services[2].port``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _unknown_key(key: str, allowed: Sequence[str]) -> str:
    """The message for an unknown key; the problem's path already ends in the key."""
    hint = suggest(key, allowed)
    if hint:
        return f"unknown key (did you mean '{hint}'?)"
    if len(allowed) <= 8:
        return f"unknown key (known keys: {', '.join(allowed)})"
    return "unknown key"


def _model_at(model: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model of the mapping at ``loc`` inside ``model``."""
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        info = current.model_fields.get(part)
        current = _find_model(info.annotation) if info is not None else None
    return current


def _without(model: type[BaseModel], data: dict[str, Any], loc: Sequence[str | int]) -> bool:
    """Take the value at ``loc`` out of ``data`` (copying the mappings on the way).

    A required key gets its stand-in. False if that cannot be done: a problem
    of the whole mapping, or a required key without a stand-in. Inside a list
    the whole list is taken out.
    """
    if not loc or isinstance(loc[0], int):
        return False
    key = loc[0]
    inner = _model_at(model, (key,))
    value = data.get(key)
    if len(loc) > 1 and inner is not None and isinstance(value, dict):
        data[key] = inside = dict(value)
        return _without(inner, inside, loc[1:])
    data.pop(key, None)
    info = model.model_fields.get(key)
    if info is not None and info.is_required():
        stand_in = _STAND_INS.get((model, key))
        if stand_in is None:
            return False
        data[key] = stand_in
    return True


def _find_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _find_model(arg)
        if found is not None:
            return found
    return None


class _Loader:
    def __init__(self, path: Path, allow_missing_expect: bool) -> None:
        self.path = path
        self.file = str(path)
        self.base = path.absolute().parent
        self.allow_missing_expect = allow_missing_expect
        self.problems: list[Problem] = []
        self.doc = Document(None)
        self.files: dict[Path, bytes | OSError] = {}
        self.regexes: dict[str, re.Pattern[bytes] | str] = {}
        self.ca_files: dict[Path, str | None] = {}
        self.hostname: str | None = None
        self.receiver_names: list[str] = []
        #: False when ``receivers:`` is not a list: its names are then unknown.
        self.receivers_listed = True
        self.paths: dict[str, Path] = {}

    # --- reporting ---------------------------------------------------------

    def report(self, path: KeyPath, message: str, *, at: KeyPath | None = None) -> None:
        """A problem shown at ``path``, on the line of ``at`` (default: ``path``)."""
        line = self.doc.line_of(path if at is None else at)
        self.problems.append(Problem(self.file, line, format_path(path), message))

    def fail(self, line: int | None, message: str) -> ConfigError:
        return ConfigError([Problem(self.file, line, "", message)])

    def validate(self, model: type[_M], data: Any, at: KeyPath) -> _M | None:
        """``data`` checked by ``model``; None (and problems reported) if it does not fit."""
        return self.validate_all(model, data, at)[0]

    def validate_all(
        self, model: type[_M], data: Any, at: KeyPath
    ) -> tuple[_M | None, set[str], list[tuple[str | int, ...]]]:
        """Like ``validate``, and also the top keys (as meant) that have problems
        and where each problem is.

        An unknown key that looks like a misspelt required key stands for it:
        "missing required key" is not reported for that key as well.
        """
        try:
            return model.model_validate(data), set(), []
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False)
        meant: dict[tuple[str | int, ...], str] = {}
        for error in errors:
            loc = error["loc"]
            if error["type"] == "extra_forbidden":
                inner = _model_at(model, loc[:-1])
                hint = suggest(str(loc[-1]), tuple(inner.model_fields)) if inner else None
                if hint is not None:
                    meant[loc] = hint
        misspelt = {(*loc[:-1], hint) for loc, hint in meant.items()}
        bad: set[str] = set()
        for error in errors:
            loc, kind = error["loc"], error["type"]
            if kind == "missing" and loc in misspelt:
                continue
            self.shape_problem(model, at, loc, kind, error)
            top = loc[0] if loc else ""
            bad.add(meant.get(loc, str(top)) if len(loc) == 1 else str(top))
        return None, bad, [error["loc"] for error in errors]

    def salvage(
        self, model: type[_M], data: Any, at: KeyPath, pivots: frozenset[str]
    ) -> tuple[_M | None, set[str]]:
        """``data`` checked by ``model``; if it has shape problems, what is left of it.

        What is left is the mapping without the values that have problems
        (required ones replaced by a stand-in), so the rules across keys still
        find every other mistake in it. It is None when one of ``pivots`` has a
        problem: the rules would then only report consequences of it.
        """
        section, bad, locs = self.validate_all(model, data, at)
        if section is not None or not isinstance(data, dict) or bad & pivots:
            return section, bad
        rest = dict(data)
        if not all(_without(model, rest, loc) for loc in locs):
            return None, bad
        try:
            return model.model_validate(rest), bad
        except ValidationError:
            return None, bad

    def shape_problem(
        self,
        model: type[BaseModel],
        at: KeyPath,
        loc: tuple[str | int, ...],
        kind: str,
        error: Any,
    ) -> None:
        path = (*at, *loc)
        if kind == "missing":
            self.report(path[:-1], f"missing required key '{loc[-1]}'")
        elif kind == "extra_forbidden":
            key = str(loc[-1])
            inner = _model_at(model, loc[:-1])
            allowed = tuple(inner.model_fields) if inner is not None else ()
            message = _unknown_key(key, allowed)
            if inner is Schedule and key in ServiceSection.model_fields:
                message = "cannot be a default; set it in each service"
            self.report(path, message)
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            self.report(path, f"expected a mapping, got {kind_of(error.get('input'))}")
        elif kind == "list_type":
            self.report(path, f"expected a list, got {kind_of(error.get('input'))}")
        else:
            self.report(path, str(error["msg"]))

    # --- the file ----------------------------------------------------------

    def load(self) -> Config:
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise self.fail(None, f"cannot read the file: {exc.strerror or exc}") from None
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            raise self.fail(line, "not UTF-8 text") from None
        try:
            self.doc = parse(text, TEXT_KEYS)
        except YamlSyntaxError as exc:
            raise self.fail(exc.line, exc.message) from None
        for found in self.doc.problems:
            self.problems.append(
                Problem(self.file, found.line, format_path(found.path), found.message)
            )
        data = self.doc.data
        if data is None:
            raise self.fail(None, "the file is empty")
        if not isinstance(data, dict):
            raise self.fail(
                1, f"expected a mapping of the sections {_SECTION_LIST}, got {kind_of(data)}"
            )
        for key in data:
            if key not in SECTIONS:
                hint = suggest(key, SECTIONS)
                maybe = f"did you mean '{hint}'? " if hint else ""
                self.report((key,), f"unknown section ({maybe}the sections are {_SECTION_LIST})")

        settings, weak_ok = self.settings(data.get("watchdog"))
        defaults = self.section(Schedule, data.get("defaults"), ("defaults",))
        receivers = self.receivers(data.get("receivers"), weak_ok)
        services = self.services(data.get("services"), defaults)
        agent = self.agent(data.get("agent"), weak_ok, receivers) if "agent" in data else None
        if self.problems:
            raise ConfigError(self.sorted_problems())
        return Config(
            path=self.path,
            settings=settings,
            receivers=receivers,
            services=services,
            agent=agent,
        )

    def sorted_problems(self) -> list[Problem]:
        unique = dict.fromkeys(self.problems)
        return sorted(unique, key=lambda problem: problem.line or 0)

    def section(self, model: type[_M], data: Any, at: KeyPath) -> _M | None:
        """A top-level section; with shape problems, what is left of it (see ``salvage``)."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.report(at, f"expected a mapping, got {kind_of(data)}")
            return None
        return self.salvage(model, data, at, _SECTION_PIVOTS)[0]

    def items(self, data: Any, at: KeyPath) -> list[Any]:
        if data is None:
            return []
        if not isinstance(data, list):
            self.report(at, f"expected a list of {at[-1]}, got {kind_of(data)}")
            return []
        return data

    def check_duplicates(self, items: list[Any], section: str, noun: str) -> list[str]:
        """Report names written twice; return every name that is text."""
        first: dict[str, int] = {}  # the index of the item that has it first
        for index, item in enumerate(items):
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str):
                continue
            at = (section, index, "name")
            if name in first:
                line = self.doc.line_of((section, first[name], "name"))
                self.report(at, f"duplicate {noun} name '{name}' (first on line {line})")
            else:
                first[name] = index
        return list(first)

    # --- watchdog: --------------------------------------------------------

    def settings(self, data: Any) -> tuple[Settings, bool]:
        """The daemon settings, and whether weak SNMPv3 crypto is allowed."""
        section = self.section(WatchdogSection, data, ("watchdog",))
        if section is None:
            # Still honour the switch, so a typo elsewhere does not add problems.
            weak_ok = isinstance(data, dict) and data.get("allow_weak_crypto") is True
            return Settings(), weak_ok
        values = {key: value for key, value in section if value is not None}
        for key in ("state_dir", "status_dir"):
            if key in values:
                values[key] = self.resolve_path(values[key])
        self.store_password(values)
        settings = Settings(**values)
        return settings, settings.allow_weak_crypto

    # --- agent: -------------------------------------------------------------

    def agent(self, data: Any, weak_ok: bool, receivers: tuple[Receiver, ...]) -> Agent | None:
        """The read-only agent: where it listens, its community and its SNMPv3 users.

        An SNMPv3 user is known by (engine ID, name), and the agent shares the
        engine ID of the notifications: a user of both the agent and an SNMPv3
        trap receiver must have the same keys in both, or a manager holding
        one of them could not use the other.
        """
        at: KeyPath = ("agent",)
        if data is None:
            self.report(at, "expected a mapping with listen, community and/or users, got nothing")
            return None
        section = self.section(AgentSection, data, at)
        if section is None:
            return None
        before = len(self.problems)
        values: dict[str, Any] = {}
        if section.listen is not None:
            values["host"], values["port"] = section.listen
        # Written but wrong is reported where it is wrong, not also as missing.
        if isinstance(data, dict) and not (
            "community" in data or "community_file" in data or data.get("users", []) != []
        ):
            self.report(at, "missing community or users: nobody could read the agent")
        values["community"] = self.secret(
            at, "community", section.community, section.community_file, minimum=1
        )
        trap_users = {
            r.user: r for r in receivers if r.version == "3" and r.mode == "trap" and r.user
        }
        users = []
        first: dict[str, int] = {}  # the index of the item that has it first
        for index, item in enumerate(section.users or ()):
            where = (*at, "users", index)
            if item.user in first:
                line = self.doc.line_of((*at, "users", first[item.user], "user"))
                self.report(
                    (*where, "user"), f"duplicate user '{item.user}' (first on line {line})"
                )
                continue
            first[item.user] = index
            if item.priv is not None and item.auth is None:
                self.report((*where, "priv"), "privacy needs authentication too: add auth")
            user = AgentUser(
                item.user,
                self.usm_key(item.auth, (*where, "auth"), weak_ok),
                self.usm_key(item.priv, (*where, "priv"), weak_ok),
            )
            other = trap_users.get(item.user)
            if other is not None and (other.auth, other.priv) != (user.auth, user.priv):
                self.report(
                    (*where, "user"),
                    f"receiver '{other.name}' sends SNMPv3 traps as user '{item.user}' with "
                    "other protocols or keys; one engine ID has one set of keys per user",
                )
            users.append(user)
        values["users"] = tuple(users)
        if len(self.problems) > before:
            return None
        return Agent(**values)

    def store_password(self, values: dict[str, Any]) -> None:
        """Resolve ``store_password``/``store_password_file`` in ``values`` into a Secret.

        The password of a shared store is never written in the file itself:
        ``${VARIABLE}`` or a file only.
        """
        at: KeyPath = ("watchdog",)
        for key in ("node", "lease"):
            if key in values and "store" not in values:
                self.report((*at, key), "applies only with store: postgresql://...")
        if values.get("lease", 15.0) < 1.0:
            self.report((*at, "lease"), "expected at least 1s (renewed every fifth of it)")
        inline = values.pop("store_password", None)
        file = values.pop("store_password_file", None)
        if inline is None and file is None:
            return
        if "store" not in values:
            key = "store_password" if inline is not None else "store_password_file"
            self.report((*at, key), "applies only with store: postgresql://...")
            return
        if inline is not None and not _ENV_RE.fullmatch(inline):
            self.report(
                (*at, "store_password"),
                "write ${VARIABLE} or use store_password_file; the password itself does "
                "not belong in the configuration file",
            )
            return
        password = self.secret(at, "store_password", inline, file, minimum=1)
        if password is not None:
            values["store_password"] = password

    # --- receivers: -------------------------------------------------------

    def receivers(self, data: Any, weak_ok: bool) -> tuple[Receiver, ...]:
        items = self.items(data, ("receivers",))
        self.receiver_names = self.check_duplicates(items, "receivers", "receiver")
        self.receivers_listed = data is None or isinstance(data, list)
        out = []
        for index, item in enumerate(items):
            at = ("receivers", index)
            section, bad = self.salvage(ReceiverSection, item, at, _RECEIVER_PIVOTS)
            if section is not None:
                receiver = self.receiver(section, at, weak_ok, bad)
                if receiver is not None and not bad:
                    out.append(receiver)
        return tuple(out)

    def receiver(
        self, r: ReceiverSection, at: KeyPath, weak_ok: bool, bad: set[str]
    ) -> Receiver | None:
        """The receiver; ``bad`` keys had shape problems and are left out of ``r``."""
        before = len(self.problems)
        written = r.model_fields_set
        # A key with a shape problem was written: it is not missing.
        given = written | bad
        version = r.version or "2c"
        values: dict[str, Any] = {"name": r.name, "host": r.host, "version": version}
        for key in ("port", "mode", "user", "source", "timeout", "give_up_after"):
            value = getattr(r, key)
            if value is not None:
                values[key] = value
        if version == "1" and r.mode == "inform":
            self.report((*at, "mode"), "SNMPv1 has no informs; use version 2c or 3 for inform")
        if version in ("1", "2c"):
            for key in ("user", "auth", "priv"):
                if key in written:
                    self.report((*at, key), f"applies only to version 3, not {version}")
            if not given & {"community", "community_file"}:
                self.report(at, f"missing community or community_file (SNMPv{version} needs one)")
            values["community"] = self.secret(
                at, "community", r.community, r.community_file, minimum=1
            )
        else:
            for key in ("community", "community_file"):
                if key in written:
                    self.report((*at, key), "applies only to versions 1 and 2c, not 3")
            if "user" not in given:
                self.report(at, "missing required key 'user' (SNMPv3 needs a user name)")
            if r.priv is not None and "auth" not in given:
                self.report((*at, "priv"), "privacy needs authentication too: add auth")
            values["auth"] = self.usm_key(r.auth, (*at, "auth"), weak_ok)
            values["priv"] = self.usm_key(r.priv, (*at, "priv"), weak_ok)
        if len(self.problems) > before:
            return None
        return Receiver(**values)

    def usm_key(
        self, section: AuthSection | PrivSection | None, at: KeyPath, weak_ok: bool
    ) -> UsmKey | None:
        if section is None:
            return None
        if section.protocol in WEAK_PROTOCOLS and not weak_ok:
            self.report(
                (*at, "protocol"),
                f"{section.protocol} is weak; it is refused unless "
                "watchdog.allow_weak_crypto is true",
            )
        if section.key is None and section.key_file is None:
            self.report(at, "missing key or key_file")
            return None
        key = self.secret(at, "key", section.key, section.key_file, minimum=MIN_KEY_LENGTH)
        return UsmKey(section.protocol, key) if key is not None else None

    def secret(
        self, at: KeyPath, key: str, inline: str | None, file: str | None, *, minimum: int
    ) -> Secret | None:
        """Resolve a secret written inline, as ``${VAR}`` or in ``KEY_file``.

        Messages say "the value", never the value.
        """
        file_key = f"{key}_file"
        if inline is not None and file is not None:
            self.report((*at, file_key), f"{key} and {file_key} exclude each other; keep one")
            return None
        if inline is not None:
            where = (*at, key)
            match = _ENV_RE.fullmatch(inline)
            if match:
                source = f"environment variable {match[1]}"
                value = os.environ.get(match[1])
                if value is None:
                    self.report(where, f"{source} is not set")
                    return None
            else:
                source, value = "the value", inline
        elif file is not None:
            where = (*at, file_key)
            data = self.read(where, file)
            if data is None:
                return None
            source = f"the file {self.resolve_path(file)}"
            try:
                value = data.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                self.report(where, f"{source} is not UTF-8 text")
                return None
        else:
            return None
        if not value:
            self.report(where, f"{source} is empty")
            return None
        if len(value) < minimum:
            self.report(
                where,
                f"{source} is shorter than {minimum} characters, "
                "the least an SNMPv3 passphrase may have (RFC 3414)",
            )
            return None
        return Secret(value)

    # --- defaults: and services: -------------------------------------------

    def services(self, data: Any, defaults: Schedule | None) -> tuple[Service, ...]:
        items = self.items(data, ("services",))
        self.check_duplicates(items, "services", "service")
        known = self.receiver_names
        inherited: dict[str, Any] = {}
        default_receivers = tuple(known)
        if defaults is not None:
            for key in _SCHEDULE_VALUES & defaults.model_fields_set:
                inherited[key] = getattr(defaults, key)
            if defaults.receivers is not None:
                self.check_receivers(("defaults", "receivers"), defaults.receivers, known)
                default_receivers = tuple(defaults.receivers)
        out = []
        for index, item in enumerate(items):
            at = ("services", index)
            section, bad = self.salvage(ServiceSection, item, at, _SERVICE_PIVOTS)
            if section is None:
                continue
            service = self.service(section, at, inherited, default_receivers, known, bad=bad)
            if service is not None and not bad:
                out.append(service)
        return tuple(out)

    def check_receivers(self, at: KeyPath, names: list[str], known: list[str]) -> None:
        if not names:
            self.report(at, "expected at least one receiver name")
        seen: set[str] = set()
        for index, name in enumerate(names):
            if name in seen:
                self.report((*at, index), f"receiver '{name}' is listed twice")
            seen.add(name)
            if name not in known and self.receivers_listed:
                hint = suggest(name, known)
                if hint:
                    extra = f" (did you mean '{hint}'?)"
                elif known:
                    extra = f" (receivers: {', '.join(known)})"
                else:
                    extra = " (no receivers are defined)"
                self.report((*at, index), f"no receiver named '{name}'{extra}")

    def service(
        self,
        s: ServiceSection,
        at: KeyPath,
        inherited: dict[str, Any],
        default_receivers: tuple[str, ...],
        known: list[str],
        *,
        bad: set[str],
    ) -> Service | None:
        """The service; ``bad`` keys had shape problems and are left out of ``s``."""
        before = len(self.problems)
        written = s.model_fields_set
        kind = s.check or CheckKind.TCP
        uses_tls = kind in _ALWAYS_TLS or s.tls is True
        values = dict(inherited)
        for key in _SCHEDULE_VALUES & written:
            values[key] = getattr(s, key)
        for key in written & _RESTRICTED_KEYS:
            self.check_applies(at, key, kind, uses_tls)

        if s.receivers is not None:
            self.check_receivers((*at, "receivers"), s.receivers, known)
            values["receivers"] = tuple(s.receivers)
        else:
            values["receivers"] = default_receivers

        port = s.port if s.port is not None else DEFAULT_PORTS.get(kind)
        if port is None:
            self.report(at, "missing required key 'port' (check: tcp has no default port)")

        if kind is CheckKind.TCP:
            self.conversation(s, at, written, values, "name" not in bad)
        if kind is CheckKind.SMTP:
            values["helo"] = s.helo if s.helo is not None else self.local_hostname()
        values["tls"] = kind in _ALWAYS_TLS or bool(s.tls)
        if s.tls_verify is not None:
            values["tls_verify"] = s.tls_verify
        if s.server_name is not None:
            values["server_name"] = s.server_name
        if s.ca_file is not None:
            values["ca_file"] = self.ca_file((*at, "ca_file"), s.ca_file)
        if s.cert_warning is not None:
            values["cert_warning"] = s.cert_warning
        if s.path is not None:
            values["http_path"] = s.path
        if s.status is not None:
            values["http_status"] = s.status
        if s.body is not None:
            values["http_body"] = self.regex((*at, "body"), s.body)
        if len(self.problems) > before or port is None:
            return None
        return Service(name=s.name, host=s.host, port=port, check=kind, **values)

    def check_applies(self, at: KeyPath, key: str, kind: CheckKind, uses_tls: bool) -> None:
        """Report ``key`` if it means nothing for a check of this kind."""
        if key in _CONVERSATION_KEYS and kind is not CheckKind.TCP:
            self.report((*at, key), f"applies only to check: tcp, not {kind.value}")
        elif key == "helo" and kind is not CheckKind.SMTP:
            self.report((*at, key), f"applies only to check: smtp, not {kind.value}")
        elif key == "tls" and kind not in _TLS_OPTIONAL:
            if kind in _ALWAYS_TLS:
                message = f"check: {kind.value} always uses TLS; remove tls"
            else:
                hint = " (for HTTP over TLS use check: https)" if kind is CheckKind.HTTP else ""
                message = f"applies only to check: tcp, smtp, pop3, imap or ftp{hint}"
            self.report((*at, key), message)
        elif key in _TLS_KEYS and not uses_tls:
            self.report((*at, key), "applies only with TLS (check: https or tls, or tls: true)")
        elif key in _HTTP_KEYS and kind not in _HTTP_KINDS:
            self.report((*at, key), f"applies only to check: http or https, not {kind.value}")

    def conversation(
        self,
        s: ServiceSection,
        at: KeyPath,
        written: set[str],
        values: dict[str, Any],
        named: bool,
    ) -> None:
        """The netcat-like conversation of a tcp check: dialogue, files, ignore.

        ``named``: the service's name is the one written (not a stand-in).
        """
        for first, second in (("send", "send_file"), ("expect", "expect_file")):
            if first in written and second in written:
                self.report((*at, second), f"{first} and {second} exclude each other; keep one")
        if s.dialogue is not None:
            for key in ("send", "expect", "send_file", "expect_file"):
                if key in written:
                    self.report((*at, key), f"dialogue and {key} exclude each other")
            values["dialogue"] = self.dialogue(s.dialogue, (*at, "dialogue"))
        else:
            steps = []
            if s.send is not None:
                steps.append(Step(send=s.send.encode()))
            if s.expect is not None:
                steps.append(Step(expect=self.regex((*at, "expect"), s.expect)))
            values["dialogue"] = tuple(steps)
        if s.send_file is not None:
            values["send_file"] = self.resolve_path(s.send_file)
            values["send_data"] = self.read((*at, "send_file"), s.send_file)
        if s.expect_file is not None:
            values["expect_file"] = self.resolve_path(s.expect_file)
            values["expect_answer"] = self.expect_answer((*at, "expect_file"), s, named)
        if s.ignore is not None:
            if s.expect_file is None:
                self.report(
                    (*at, "ignore"),
                    "needs expect_file: ignore names the parts of the recorded answer "
                    "that may change",
                )
            listed = (*at, "ignore", 0) in self.doc.lines
            patterns = []
            for index, text in enumerate(s.ignore):
                where = (*at, "ignore", index) if listed else (*at, "ignore")
                pattern = self.regex(where, text)
                if pattern is not None:
                    patterns.append(pattern)
            values["ignore"] = tuple(patterns)

    def dialogue(self, steps: Sequence[Any], at: KeyPath) -> tuple[Step, ...]:
        if not steps:
            self.report(at, "expected at least one step")
        out = []
        for index, step in enumerate(steps):
            where = (*at, index)
            if step.send is not None:
                out.append(Step(send=step.send.encode()))
            else:
                out.append(Step(expect=self.regex((*where, "expect"), step.expect)))
        return tuple(out)

    def expect_answer(self, at: KeyPath, s: ServiceSection, named: bool) -> bytes | None:
        assert s.expect_file is not None
        path = self.resolve_path(s.expect_file)
        name = s.name if named else "SERVICE"
        answer = self.read(
            at,
            s.expect_file,
            missing_ok=self.allow_missing_expect,
            hint=f"run 'watchdog record {name}' to save the good answer",
        )
        if answer is not None and len(answer) > MAX_READ:
            self.report(
                at, f"{path} holds {len(answer)} bytes, more than the {MAX_READ} a check reads"
            )
        return answer

    # --- files, regexes ------------------------------------------------------

    def resolve_path(self, text: str) -> Path:
        path = self.paths.get(text)
        if path is None:
            path = Path(text)
            path = self.paths[text] = path if path.is_absolute() else self.base / path
        return path

    def read(
        self, at: KeyPath, text: str, *, missing_ok: bool = False, hint: str | None = None
    ) -> bytes | None:
        """The contents of a file the configuration names (read once per load)."""
        path = self.resolve_path(text)
        content = self.files.get(path)
        if content is None:
            try:
                content = path.read_bytes()
            except OSError as exc:
                content = exc
            self.files[path] = content
        if isinstance(content, OSError):
            missing = isinstance(content, FileNotFoundError)
            if missing and missing_ok:
                return None
            message = f"cannot read {path}: {content.strerror or content}"
            if missing and hint:
                message += f" ({hint})"
            self.report(at, message)
            return None
        return content

    def ca_file(self, at: KeyPath, text: str) -> Path:
        """The path of a CA bundle, after checking that TLS can use it."""
        path = self.resolve_path(text)
        if path not in self.ca_files:
            error: str | None = None
            try:
                ssl.create_default_context(cafile=str(path))
            except FileNotFoundError as exc:
                error = f"cannot read {path}: {exc.strerror}"
            except ssl.SSLError as exc:
                error = f"{path} holds no usable CA certificate ({exc.reason or exc})"
            except OSError as exc:
                error = f"cannot read {path}: {exc.strerror or exc}"
            self.ca_files[path] = error
        error = self.ca_files[path]
        if error is not None:
            self.report(at, error)
        return path

    def regex(self, at: KeyPath, text: str | None) -> re.Pattern[bytes] | None:
        """``text`` compiled as a bytes pattern with ``re.MULTILINE``."""
        assert text is not None
        compiled = self.regexes.get(text)
        if compiled is None:
            try:
                compiled = re.compile(text.encode(), re.MULTILINE)
            except re.error as exc:
                compiled = exc.msg if exc.pos is None else f"{exc.msg} at position {exc.pos}"
            self.regexes[text] = compiled
        if isinstance(compiled, str):
            self.report(at, f"not a valid regular expression: {compiled}")
            return None
        return compiled

    def local_hostname(self) -> str:
        if self.hostname is None:
            self.hostname = socket.gethostname() or "localhost"
        return self.hostname
