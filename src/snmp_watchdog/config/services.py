"""``defaults:`` and ``services:``: what is checked, how often, and who is told.

Rules across keys (the shape of each key is ``schema``'s):

- A service's value wins over the ``defaults:`` value, which wins over the
  built-in default of ``model``. A service without ``receivers`` notifies
  the default receivers, else every receiver.
- A key that means something only for some check kinds is refused for the
  others: ``OPTIONS`` says for which kinds each key applies, what is said
  otherwise and which field of the service takes the value as written.
- A ``tcp`` check holds a conversation: ``send``/``expect`` or a
  ``dialogue`` of steps, ``send_file``, and ``expect_file`` (the recorded
  good answer) with the parts of it that may change (``ignore``).
- A port is given, or the check kind has a default one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from snmp_watchdog.config.problems import Problems
from snmp_watchdog.config.receivers import Names
from snmp_watchdog.config.resources import Resources
from snmp_watchdog.config.schema import SCHEDULE_KEYS, Schedule, ServiceSection
from snmp_watchdog.config.yaml import Path as KeyPath
from snmp_watchdog.model import DEFAULT_PORTS, MAX_READ, CheckKind, Service, Step

#: Keys that the rules across keys depend on (see ``Problems.salvage``): when one
#: of them has a shape problem, checking the rest would only report consequences.
_PIVOTS = frozenset(("", "check", "port", "tls", "expect_file"))
_SCHEDULE_VALUES = frozenset(SCHEDULE_KEYS) - {"receivers"}
_ALWAYS_TLS = frozenset((CheckKind.HTTPS, CheckKind.TLS))


@dataclass(frozen=True, slots=True)
class Option:
    """Where a key of a service means something, and what is said where it does not."""

    #: The check kinds the key applies to; None: any kind that uses TLS.
    kinds: frozenset[CheckKind] | None
    #: What is said for another kind; ``{kind}`` is that kind.
    message: str
    #: The field of ``Service`` that takes the value as written (None: ``_service`` resolves it).
    target: str | None = None
    #: What is said instead for particular kinds.
    otherwise: Mapping[CheckKind, str] = field(default_factory=dict)

    def problem(self, kind: CheckKind, uses_tls: bool) -> str | None:
        """Why the key means nothing for a check of this kind, or None if it applies."""
        if uses_tls if self.kinds is None else kind in self.kinds:
            return None
        return self.otherwise.get(kind, self.message).format(kind=kind.value)


def _with_tls(name: str | None) -> Option:
    return Option(None, "applies only with TLS (check: https or tls, or tls: true)", name)


def _http(name: str | None) -> Option:
    kinds = frozenset((CheckKind.HTTP, CheckKind.HTTPS))
    return Option(kinds, "applies only to check: http or https, not {kind}", name)


_CONVERSATION = Option(frozenset((CheckKind.TCP,)), "applies only to check: tcp, not {kind}")
_OPTIONAL_TLS = "applies only to check: tcp, smtp, pop3, imap or ftp"

#: The keys of a service that apply only to some check kinds.
OPTIONS: Mapping[str, Option] = {
    "send": _CONVERSATION,
    "expect": _CONVERSATION,
    "send_file": _CONVERSATION,
    "expect_file": _CONVERSATION,
    "ignore": _CONVERSATION,
    "dialogue": _CONVERSATION,
    "helo": Option(frozenset((CheckKind.SMTP,)), "applies only to check: smtp, not {kind}"),
    "tls": Option(
        frozenset((CheckKind.TCP, CheckKind.SMTP, CheckKind.POP3, CheckKind.IMAP, CheckKind.FTP)),
        _OPTIONAL_TLS,
        otherwise={
            CheckKind.HTTP: f"{_OPTIONAL_TLS} (for HTTP over TLS use check: https)",
            **{kind: "check: {kind} always uses TLS; remove tls" for kind in _ALWAYS_TLS},
        },
    ),
    "tls_verify": _with_tls("tls_verify"),
    "server_name": _with_tls("server_name"),
    "ca_file": _with_tls(None),
    "cert_warning": _with_tls("cert_warning"),
    "path": _http("http_path"),
    "status": _http("http_status"),
    "body": _http(None),
}


@dataclass(slots=True)
class _Loading:
    """What every service of one file is checked and merged with."""

    problems: Problems
    resources: Resources
    names: Names
    allow_missing_expect: bool
    inherited: dict[str, Any]
    default_receivers: tuple[str, ...]


def load_services(
    problems: Problems,
    resources: Resources,
    data: Any,
    defaults: Schedule | None,
    names: Names,
    *,
    allow_missing_expect: bool,
) -> tuple[Service, ...]:
    """Every service without problems, with the defaults merged in."""
    items = problems.items(data, ("services",))
    problems.duplicates(items, "services", "service")
    loading = _Loading(
        problems, resources, names, allow_missing_expect, {}, default_receivers=tuple(names.known)
    )
    if defaults is not None:
        for key in _SCHEDULE_VALUES & defaults.model_fields_set:
            loading.inherited[key] = getattr(defaults, key)
        if defaults.receivers is not None:
            names.check(problems, ("defaults", "receivers"), defaults.receivers)
            loading.default_receivers = tuple(defaults.receivers)
    out = []
    for index, item in enumerate(items):
        at = ("services", index)
        section, bad = problems.salvage(ServiceSection, item, at, _PIVOTS)
        if section is None:
            continue
        service = _service(loading, section, at, bad=bad)
        if service is not None and not bad:
            out.append(service)
    return tuple(out)


def _service(loading: _Loading, s: ServiceSection, at: KeyPath, *, bad: set[str]) -> Service | None:
    """The service; ``bad`` keys had shape problems and are left out of ``s``."""
    problems, resources = loading.problems, loading.resources
    before = len(problems)
    written = s.model_fields_set
    kind = s.check or CheckKind.TCP
    uses_tls = kind in _ALWAYS_TLS or s.tls is True
    values = dict(loading.inherited)
    for key in _SCHEDULE_VALUES & written:
        values[key] = getattr(s, key)
    for key, option in OPTIONS.items():
        if key not in written:
            continue
        problem = option.problem(kind, uses_tls)
        if problem is not None:
            problems.report((*at, key), problem)
        if option.target is not None:
            values[option.target] = getattr(s, key)

    if s.receivers is not None:
        loading.names.check(problems, (*at, "receivers"), s.receivers)
        values["receivers"] = tuple(s.receivers)
    else:
        values["receivers"] = loading.default_receivers

    port = s.port if s.port is not None else DEFAULT_PORTS.get(kind)
    if port is None:
        problems.report(at, "missing required key 'port' (check: tcp has no default port)")

    if kind is CheckKind.TCP:
        _conversation_of(loading, s, at, values, named="name" not in bad)
    if kind is CheckKind.SMTP:
        values["helo"] = s.helo if s.helo is not None else resources.hostname()
    values["tls"] = uses_tls
    if s.ca_file is not None:
        values["ca_file"] = resources.ca_file((*at, "ca_file"), s.ca_file)
    if s.body is not None:
        values["http_body"] = resources.regex((*at, "body"), s.body)
    if len(problems) > before or port is None:
        return None
    return Service(name=s.name, host=s.host, port=port, check=kind, **values)


def _conversation_of(
    loading: _Loading, s: ServiceSection, at: KeyPath, values: dict[str, Any], *, named: bool
) -> None:
    """The netcat-like conversation of a tcp check: dialogue, files, ignore.

    ``named``: the service's name is the one written (not a stand-in).
    """
    problems, resources = loading.problems, loading.resources
    written = s.model_fields_set
    for first, second in (("send", "send_file"), ("expect", "expect_file")):
        if first in written and second in written:
            problems.report((*at, second), f"{first} and {second} exclude each other; keep one")
    if s.dialogue is not None:
        for key in ("send", "expect", "send_file", "expect_file"):
            if key in written:
                problems.report((*at, key), f"dialogue and {key} exclude each other")
        values["dialogue"] = _dialogue(loading, s.dialogue, (*at, "dialogue"))
    else:
        steps = []
        if s.send is not None:
            steps.append(Step(send=s.send.encode()))
        if s.expect is not None:
            steps.append(Step(expect=resources.regex((*at, "expect"), s.expect)))
        values["dialogue"] = tuple(steps)
    if s.send_file is not None:
        values["send_file"] = resources.path(s.send_file)
        values["send_data"] = resources.read((*at, "send_file"), s.send_file)
    if s.expect_file is not None:
        values["expect_file"] = resources.path(s.expect_file)
        values["expect_answer"] = _expect_answer(loading, (*at, "expect_file"), s, named)
    if s.ignore is not None:
        if s.expect_file is None:
            problems.report(
                (*at, "ignore"),
                "needs expect_file: ignore names the parts of the recorded answer that may change",
            )
        listed = (*at, "ignore", 0) in problems.doc.lines
        patterns = []
        for index, text in enumerate(s.ignore):
            where = (*at, "ignore", index) if listed else (*at, "ignore")
            pattern = resources.regex(where, text)
            if pattern is not None:
                patterns.append(pattern)
        values["ignore"] = tuple(patterns)


def _dialogue(loading: _Loading, steps: Sequence[Any], at: KeyPath) -> tuple[Step, ...]:
    if not steps:
        loading.problems.report(at, "expected at least one step")
    out = []
    for index, step in enumerate(steps):
        if step.send is not None:
            out.append(Step(send=step.send.encode()))
        else:
            out.append(Step(expect=loading.resources.regex((*at, index, "expect"), step.expect)))
    return tuple(out)


def _expect_answer(loading: _Loading, at: KeyPath, s: ServiceSection, named: bool) -> bytes | None:
    assert s.expect_file is not None
    path = loading.resources.path(s.expect_file)
    name = s.name if named else "SERVICE"
    answer = loading.resources.read(
        at,
        s.expect_file,
        missing_ok=loading.allow_missing_expect,
        hint=f"run 'watchdog record {name}' to save the good answer",
    )
    if answer is not None and len(answer) > MAX_READ:
        loading.problems.report(
            at, f"{path} holds {len(answer)} bytes, more than the {MAX_READ} a check reads"
        )
    return answer
