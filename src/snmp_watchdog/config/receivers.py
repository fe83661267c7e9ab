"""``receivers:`` and ``agent:``: who gets notifications, who may read the agent.

Rules across keys (the shape of each key is ``schema``'s):

- SNMPv1 and v2c need a community (inline, ``${VAR}`` or a file) and take no
  user, auth or priv; SNMPv3 needs a user and takes no community. SNMPv1 has
  no informs.
- Privacy needs authentication. A key has at least ``MIN_KEY_LENGTH``
  characters. MD5 and DES are refused unless ``watchdog.allow_weak_crypto``.
- A receiver's name is written once; a service names receivers that exist.
- The agent shares the notifications' engine ID, and an SNMPv3 user is known
  by (engine ID, name): a user of both the agent and an SNMPv3 trap receiver
  must have the same keys in both, or a manager holding one of them could not
  use the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from snmp_watchdog.config.problems import Problems
from snmp_watchdog.config.resources import Resources
from snmp_watchdog.config.schema import (
    AgentSection,
    AuthSection,
    PrivSection,
    ReceiverSection,
    suggest,
)
from snmp_watchdog.config.yaml import Path as KeyPath
from snmp_watchdog.model import Agent, AgentUser, Receiver, UsmKey
from snmp_watchdog.snmp import Mode, Version, is_weak

#: The least length of an SNMPv3 passphrase (RFC 3414, section 11.2).
MIN_KEY_LENGTH = 8

#: Keys that the rules across keys depend on (see ``Problems.salvage``).
_PIVOTS = frozenset(("", "version"))


@dataclass(frozen=True, slots=True)
class Names:
    """The receivers' names, for the services that name them."""

    known: list[str]
    #: False when ``receivers:`` is not a list: its names are then unknown.
    listed: bool = True

    def check(self, problems: Problems, at: KeyPath, names: list[str]) -> None:
        """Report a list of receiver names that is empty, repeats one or names an unknown one."""
        if not names:
            problems.report(at, "expected at least one receiver name")
        known = self.known
        seen: set[str] = set()
        for index, name in enumerate(names):
            if name in seen:
                problems.report((*at, index), f"receiver '{name}' is listed twice")
            seen.add(name)
            if name not in known and self.listed:
                hint = suggest(name, known)
                if hint:
                    extra = f" (did you mean '{hint}'?)"
                elif known:
                    extra = f" (receivers: {', '.join(known)})"
                else:
                    extra = " (no receivers are defined)"
                problems.report((*at, index), f"no receiver named '{name}'{extra}")


def load_receivers(
    problems: Problems, resources: Resources, data: Any, weak_ok: bool
) -> tuple[tuple[Receiver, ...], Names]:
    """Every receiver without problems, and the names of all that were written."""
    items = problems.items(data, ("receivers",))
    names = Names(
        problems.duplicates(items, "receivers", "receiver"),
        listed=data is None or isinstance(data, list),
    )
    out = []
    for index, item in enumerate(items):
        at = ("receivers", index)
        section, bad = problems.salvage(ReceiverSection, item, at, _PIVOTS)
        if section is not None:
            receiver = _receiver(problems, resources, section, at, weak_ok=weak_ok, bad=bad)
            if receiver is not None and not bad:
                out.append(receiver)
    return tuple(out), names


def _receiver(
    problems: Problems,
    resources: Resources,
    r: ReceiverSection,
    at: KeyPath,
    *,
    weak_ok: bool,
    bad: set[str],
) -> Receiver | None:
    """The receiver; ``bad`` keys had shape problems and are left out of ``r``."""
    report = problems.report
    before = len(problems)
    written = r.model_fields_set
    # A key with a shape problem was written: it is not missing.
    given = written | bad
    version = r.version or Version.V2C
    values: dict[str, Any] = {"name": r.name, "host": r.host, "version": version}
    for key in ("port", "mode", "user", "source", "timeout", "give_up_after"):
        value = getattr(r, key)
        if value is not None:
            values[key] = value
    if version is Version.V1 and r.mode is Mode.INFORM:
        report((*at, "mode"), "SNMPv1 has no informs; use version 2c or 3 for inform")
    if version is not Version.V3:
        for key in ("user", "auth", "priv"):
            if key in written:
                report((*at, key), f"applies only to version 3, not {version}")
        if not given & {"community", "community_file"}:
            report(at, f"missing community or community_file (SNMPv{version} needs one)")
        values["community"] = resources.secret(
            at, "community", r.community, r.community_file, minimum=1
        )
    else:
        for key in ("community", "community_file"):
            if key in written:
                report((*at, key), "applies only to versions 1 and 2c, not 3")
        if "user" not in given:
            report(at, "missing required key 'user' (SNMPv3 needs a user name)")
        if r.priv is not None and "auth" not in given:
            report((*at, "priv"), "privacy needs authentication too: add auth")
        values["auth"] = usm_key(problems, resources, r.auth, (*at, "auth"), weak_ok)
        values["priv"] = usm_key(problems, resources, r.priv, (*at, "priv"), weak_ok)
    if len(problems) > before:
        return None
    return Receiver(**values)


def usm_key(
    problems: Problems,
    resources: Resources,
    section: AuthSection | PrivSection | None,
    at: KeyPath,
    weak_ok: bool,
) -> UsmKey | None:
    """An SNMPv3 authentication or privacy key, of a receiver or of an agent's user."""
    if section is None:
        return None
    if is_weak(section.protocol) and not weak_ok:
        problems.report(
            (*at, "protocol"),
            f"{section.protocol} is weak; it is refused unless watchdog.allow_weak_crypto is true",
        )
    if section.key is None and section.key_file is None:
        problems.report(at, "missing key or key_file")
        return None
    key = resources.secret(at, "key", section.key, section.key_file, minimum=MIN_KEY_LENGTH)
    return UsmKey(section.protocol, key) if key is not None else None


def load_agent(
    problems: Problems,
    resources: Resources,
    data: Any,
    weak_ok: bool,
    receivers: tuple[Receiver, ...],
) -> Agent | None:
    """The read-only agent: where it listens, its community and its SNMPv3 users."""
    at: KeyPath = ("agent",)
    if data is None:
        problems.report(at, "expected a mapping with listen, community and/or users, got nothing")
        return None
    section = problems.section(AgentSection, data, at)
    if section is None:
        return None
    before = len(problems)
    values: dict[str, Any] = {}
    if section.listen is not None:
        values["host"], values["port"] = section.listen
    # Written but wrong is reported where it is wrong, not also as missing.
    if isinstance(data, dict) and not (
        "community" in data or "community_file" in data or data.get("users", []) != []
    ):
        problems.report(at, "missing community or users: nobody could read the agent")
    values["community"] = resources.secret(
        at, "community", section.community, section.community_file, minimum=1
    )
    trap_users = {
        r.user: r for r in receivers if r.version is Version.V3 and not r.informs and r.user
    }
    users = []
    first: dict[str, int] = {}  # the index of the item that has it first
    for index, item in enumerate(section.users or ()):
        where = (*at, "users", index)
        if item.user in first:
            line = problems.doc.line_of((*at, "users", first[item.user], "user"))
            problems.report(
                (*where, "user"), f"duplicate user '{item.user}' (first on line {line})"
            )
            continue
        first[item.user] = index
        if item.priv is not None and item.auth is None:
            problems.report((*where, "priv"), "privacy needs authentication too: add auth")
        user = AgentUser(
            item.user,
            usm_key(problems, resources, item.auth, (*where, "auth"), weak_ok),
            usm_key(problems, resources, item.priv, (*where, "priv"), weak_ok),
        )
        other = trap_users.get(item.user)
        if other is not None and (other.auth, other.priv) != (user.auth, user.priv):
            problems.report(
                (*where, "user"),
                f"receiver '{other.name}' sends SNMPv3 traps as user '{item.user}' with "
                "other protocols or keys; one engine ID has one set of keys per user",
            )
        users.append(user)
    values["users"] = tuple(users)
    if len(problems) > before:
        return None
    return Agent(**values)
