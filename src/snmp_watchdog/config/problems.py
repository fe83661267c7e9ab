"""The problems of one configuration file, each at ``FILE:LINE: path.to[2].key``.

Rules:

- Problems are collected, never raised one by one: the loader goes on after
  each so that the user sees every mistake of the file at once. They are
  raised together, sorted by line, as one ``ConfigError``.
- A problem is shown at a key path; its line is the line of that path, or of
  its nearest written ancestor when the key itself is missing.
- pydantic's errors are translated here: "missing required key", "unknown key
  (did you mean ...?)", "expected a mapping, got ...", or the parser's own
  sentence. An unknown key that looks like a misspelt required key stands for
  it: "missing required key" is not reported for that key as well.
- A mapping with shape problems is salvaged: checked again without the values
  that have problems (a required one replaced by a stand-in), so the rules
  across keys still find every other mistake in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, ValidationError

from snmp_watchdog.config.schema import (
    AuthSection,
    PrivSection,
    ReceiverSection,
    Schedule,
    Section,
    ServiceSection,
    kind_of,
    suggest,
)
from snmp_watchdog.config.yaml import Document
from snmp_watchdog.config.yaml import Path as KeyPath
from snmp_watchdog.exceptions import ConfigError, Problem

_M = TypeVar("_M", bound=Section)
#: Only a problem of the whole mapping stops the rules across its keys.
_WHOLE = frozenset(("",))

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


class Problems:
    """The problems found so far in one file, and the lines to show them at."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.doc = Document(None)
        self.found: list[Problem] = []

    def __len__(self) -> int:
        return len(self.found)

    def read(self, doc: Document) -> None:
        """Take the parsed file: its lines, and the problems parsing found."""
        self.doc = doc
        for found in doc.problems:
            self.found.append(
                Problem(self.file, found.line, format_path(found.path), found.message)
            )

    def report(self, path: KeyPath, message: str, *, at: KeyPath | None = None) -> None:
        """A problem shown at ``path``, on the line of ``at`` (default: ``path``)."""
        line = self.doc.line_of(path if at is None else at)
        self.found.append(Problem(self.file, line, format_path(path), message))

    def fatal(self, line: int | None, message: str) -> ConfigError:
        """The error for a problem that stops the loading of the file."""
        return ConfigError([Problem(self.file, line, "", message)])

    def error(self) -> ConfigError:
        """Every problem, each once, sorted by line."""
        unique = dict.fromkeys(self.found)
        return ConfigError(sorted(unique, key=lambda problem: problem.line or 0))

    def duplicates(self, items: list[Any], section: str, noun: str) -> list[str]:
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

    def items(self, data: Any, at: KeyPath) -> list[Any]:
        """The list of a section (``receivers:``, ``services:``); empty if it is not one."""
        if data is None:
            return []
        if not isinstance(data, list):
            self.report(at, f"expected a list of {at[-1]}, got {kind_of(data)}")
            return []
        return data

    # --- pydantic's errors --------------------------------------------------

    def section(self, model: type[_M], data: Any, at: KeyPath) -> _M | None:
        """A top-level mapping; with shape problems, what is left of it (see ``salvage``)."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.report(at, f"expected a mapping, got {kind_of(data)}")
            return None
        return self.salvage(model, data, at, _WHOLE)[0]

    def _validate(
        self, model: type[_M], data: Any, at: KeyPath
    ) -> tuple[_M | None, set[str], list[tuple[str | int, ...]]]:
        """``data`` checked by ``model`` (None, and problems reported, if it does not
        fit), the top keys (as meant) that have problems and where each problem is."""
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
            self._shape_problem(model, at, loc, kind, error)
            top = loc[0] if loc else ""
            bad.add(meant.get(loc, str(top)) if len(loc) == 1 else str(top))
        return None, bad, [error["loc"] for error in errors]

    def salvage(
        self, model: type[_M], data: Any, at: KeyPath, pivots: frozenset[str]
    ) -> tuple[_M | None, set[str]]:
        """``data`` checked by ``model``; if it has shape problems, what is left of it.

        What is left is the mapping without the values that have problems
        (required ones replaced by a stand-in). It is None when one of
        ``pivots`` has a problem: the rules across keys depend on those keys,
        and checking the rest would only report consequences of it.
        """
        section, bad, locs = self._validate(model, data, at)
        if section is not None or not isinstance(data, dict) or bad & pivots:
            return section, bad
        rest = dict(data)
        if not all(_without(model, rest, loc) for loc in locs):
            return None, bad
        try:
            return model.model_validate(rest), bad
        except ValidationError:
            return None, bad

    def _shape_problem(
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
