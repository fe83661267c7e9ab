"""The file as a whole: read it, parse it, check each section, build ``Config``.

The sections are checked in the order the rules need: ``watchdog:`` first
(it says whether weak SNMPv3 crypto is allowed), then ``defaults:``,
``receivers:`` (whose names the services refer to), ``services:`` and
``agent:`` (whose users must agree with the SNMPv3 trap receivers).
"""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

from snmp_watchdog.config.problems import Problems
from snmp_watchdog.config.receivers import load_agent, load_receivers
from snmp_watchdog.config.resources import ENV_VARIABLE, Resources, read_regular_file
from snmp_watchdog.config.schema import (
    SECTIONS,
    TEXT_KEYS,
    Schedule,
    WatchdogSection,
    kind_of,
    suggest,
)
from snmp_watchdog.config.services import load_services
from snmp_watchdog.config.yaml import Path as KeyPath
from snmp_watchdog.config.yaml import YamlSyntaxError, parse
from snmp_watchdog.model import Config, Settings

DEFAULT_CONFIG_PATH = Path("/etc/snmp-watchdog/watchdog.yaml")

_SECTION_LIST = f"{', '.join(SECTIONS[:-1])} and {SECTIONS[-1]}"


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
    # Loading allocates many small objects that all stay alive until it
    # returns; cyclic garbage collection passes over them would only cost time.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _load(Path(path), allow_missing_expect)
    finally:
        if collecting:
            gc.enable()


def _load(path: Path, allow_missing_expect: bool) -> Config:
    problems = Problems(str(path))
    data = _read(path, problems)
    for key in data:
        if key not in SECTIONS:
            hint = suggest(key, SECTIONS)
            maybe = f"did you mean '{hint}'? " if hint else ""
            problems.report((key,), f"unknown section ({maybe}the sections are {_SECTION_LIST})")

    resources = Resources(path.absolute().parent, problems)
    settings, weak_ok = _settings(problems, resources, data.get("watchdog"))
    defaults = problems.section(Schedule, data.get("defaults"), ("defaults",))
    receivers, names = load_receivers(problems, resources, data.get("receivers"), weak_ok)
    services = load_services(
        problems,
        resources,
        data.get("services"),
        defaults,
        names,
        allow_missing_expect=allow_missing_expect,
    )
    agent = None
    if "agent" in data:
        agent = load_agent(problems, resources, data.get("agent"), weak_ok, receivers)
    if problems:
        raise problems.error()
    return Config(
        path=path,
        settings=settings,
        receivers=receivers,
        services=services,
        agent=agent,
    )


def _read(path: Path, problems: Problems) -> dict[str, Any]:
    """The file's top-level mapping; a file that cannot be read or parsed stops here."""
    try:
        raw = read_regular_file(path)
    except OSError as exc:
        raise problems.fatal(None, f"cannot read the file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise problems.fatal(line, "not UTF-8 text") from None
    try:
        doc = parse(text, TEXT_KEYS)
    except YamlSyntaxError as exc:
        raise problems.fatal(exc.line, exc.message) from None
    problems.read(doc)
    if doc.data is None:
        raise problems.fatal(None, "the file is empty")
    if not isinstance(doc.data, dict):
        raise problems.fatal(
            1, f"expected a mapping of the sections {_SECTION_LIST}, got {kind_of(doc.data)}"
        )
    return doc.data


def _settings(problems: Problems, resources: Resources, data: Any) -> tuple[Settings, bool]:
    """The daemon settings, and whether weak SNMPv3 crypto is allowed."""
    section = problems.section(WatchdogSection, data, ("watchdog",))
    if section is None:
        # Still honour the switch, so a typo elsewhere does not add problems.
        weak_ok = isinstance(data, dict) and data.get("allow_weak_crypto") is True
        return Settings(), weak_ok
    values = {key: value for key, value in section if value is not None}
    for key in ("state_dir", "status_dir"):
        if key in values:
            values[key] = resources.path(values[key])
    _store_password(problems, resources, values)
    settings = Settings(**values)
    return settings, settings.allow_weak_crypto


def _store_password(problems: Problems, resources: Resources, values: dict[str, Any]) -> None:
    """Resolve ``store_password``/``store_password_file`` in ``values`` into a Secret.

    The password of a shared store is never written in the file itself:
    ``${VARIABLE}`` or a file only.
    """
    at: KeyPath = ("watchdog",)
    for key in ("node", "lease"):
        if key in values and "store" not in values:
            problems.report((*at, key), "applies only with store: postgresql://...")
    if values.get("lease", 15.0) < 1.0:
        problems.report((*at, "lease"), "expected at least 1s (renewed every fifth of it)")
    inline = values.pop("store_password", None)
    file = values.pop("store_password_file", None)
    if inline is None and file is None:
        return
    if "store" not in values:
        key = "store_password" if inline is not None else "store_password_file"
        problems.report((*at, key), "applies only with store: postgresql://...")
        return
    if inline is not None and not ENV_VARIABLE.fullmatch(inline):
        problems.report(
            (*at, "store_password"),
            "write ${VARIABLE} or use store_password_file; the password itself does "
            "not belong in the configuration file",
        )
        return
    password = resources.secret(at, "store_password", inline, file, minimum=1)
    if password is not None:
        values["store_password"] = password
