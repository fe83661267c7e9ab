#!/usr/bin/env python3
"""Write the SNMPTT configuration for SNMP-WATCHDOG-MIB, as snmpttconvertmib would.

Usage::

    contrib/snmptt/generate.py [MIB] [-o FILE]

MIB defaults to the repository's ``mibs/SNMP-WATCHDOG-MIB.txt``; the output
goes to standard output unless ``-o`` names a file. For a tree moved with
``oid_root``, run it on the moved MIB: ``watchdog mib --root OID > moved.txt``.
It needs the Python 3 standard library only (no snmptranslate, no SNMPTT).

Rules (the output of ``snmpttconvertmib`` v1.5 with its default options):

* A header of comment lines names the MIB module and the file.
* For every NOTIFICATION-TYPE, in the order of the MIB: three ``#`` lines,
  ``EVENT <name> <numeric OID> "Status Events" <--#SEVERITY>``,
  ``FORMAT <--#TYPE>: <--#SUMMARY>`` where the n-th ``%s`` (any ``%`` and a
  letter) becomes ``$<k+1>`` for the n-th number k of ``--#ARGUMENTS`` (SNMPTT
  counts variables from 1, the annotations from 0), then ``SDESC``, the
  DESCRIPTION lines without leading or trailing white space, without double
  quotes and without empty lines, ``Variables:`` with one ``  <n>: <name>``
  line per object of the OBJECTS clause, and ``EDESC``.
* Numeric OIDs are resolved from the MIB's own ``::= { parent n }``
  assignments down from ``enterprises`` (1.3.6.1.4.1), the only root it
  imports for its tree.
* A notification without all four annotations (TYPE, SUMMARY, ARGUMENTS,
  SEVERITY), a ``%`` conversion without an argument, or a name that does not
  resolve is an error (exit status 2): the file must never lose a field
  silently.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MIB = REPO / "mibs" / "SNMP-WATCHDOG-MIB.txt"
CONVERTER = "snmpttconvertmib v1.5"
CATEGORY = "Status Events"
ANNOTATIONS = ("TYPE", "SUMMARY", "ARGUMENTS", "SEVERITY")

#: Roots a MIB may hang its tree from (SNMPv2-SMI).
KNOWN_OIDS: dict[str, tuple[int, ...]] = {
    "iso": (1,),
    "org": (1, 3),
    "dod": (1, 3, 6),
    "internet": (1, 3, 6, 1),
    "mgmt": (1, 3, 6, 1, 2),
    "mib-2": (1, 3, 6, 1, 2, 1),
    "experimental": (1, 3, 6, 1, 3),
    "private": (1, 3, 6, 1, 4),
    "enterprises": (1, 3, 6, 1, 4, 1),
}

_MODULE = re.compile(r"^\s*(\S+)\s+DEFINITIONS\s*::=\s*BEGIN", re.MULTILINE)
_STRING = re.compile(r'"[^"]*"')
_COMMENT = re.compile(r"--.*$", re.MULTILINE)
_ASSIGNMENT = re.compile(
    r"^([a-z][\w-]*)\s+(?:OBJECT\s+IDENTIFIER|[A-Z][A-Z-]+)\b.*?::=\s*\{([^}]*)\}",
    re.MULTILINE | re.DOTALL,
)
_COMPONENT = re.compile(r"^(?:[a-z][\w-]*\((\d+)\)|(\d+))$")
_NOTIFICATION = re.compile(r"^([a-z][\w-]*)\s+NOTIFICATION-TYPE\b", re.MULTILINE)
_OBJECTS = re.compile(r"OBJECTS\s*\{([^}]*)\}")
_ANNOTATION = re.compile(r"--#(\w+)\s*(.*?)\s*$")
_CONVERSION = re.compile(r"%[a-zA-Z]")


class MibError(Exception):
    """The MIB lacks something the configuration needs."""


@dataclass(frozen=True, slots=True)
class Notification:
    name: str
    oid: tuple[int, ...]
    variables: tuple[str, ...]
    description: tuple[str, ...]
    type: str
    summary: str
    arguments: tuple[int, ...]
    severity: str

    @property
    def format(self) -> str:
        """``TYPE: SUMMARY`` with each ``%x`` replaced by its SNMPTT variable ``$n``."""
        text = f"{self.type}: {self.summary}"
        for argument in self.arguments:
            text, replaced = _CONVERSION.subn(f"${argument + 1}", text, count=1)
            if not replaced:
                break
        if _CONVERSION.search(text):
            raise MibError(f"{self.name}: --#SUMMARY has more conversions than --#ARGUMENTS")
        return text


def module_name(text: str) -> str:
    match = _MODULE.search(text)
    if match is None:
        raise MibError("no 'DEFINITIONS ::= BEGIN' line")
    return match.group(1)


def resolve_oids(text: str) -> dict[str, tuple[int, ...]]:
    """Every ``name ... ::= { parent sub ... }`` of the MIB, as numeric OIDs."""
    code = _COMMENT.sub("", _STRING.sub('""', text))
    pending: dict[str, list[str]] = {
        m.group(1): m.group(2).split() for m in _ASSIGNMENT.finditer(code)
    }
    resolved = dict(KNOWN_OIDS)
    while pending:
        progress = False
        for name, (parent, *subs) in list(pending.items()):
            if parent not in resolved:
                continue
            oid = resolved[parent]
            for sub in subs:
                match = _COMPONENT.match(sub)
                if match is None:
                    raise MibError(f"{name}: cannot read OID component {sub!r}")
                oid += (int(match.group(1) or match.group(2)),)
            resolved[name] = oid
            del pending[name]
            progress = True
        if not progress:
            raise MibError(f"cannot resolve the OID of {', '.join(sorted(pending))}")
    return resolved


def notifications(text: str) -> list[Notification]:
    """The MIB's notifications with their annotations, in the order of the file."""
    oids = resolve_oids(text)
    lines = text.splitlines()
    found = []
    for match in _NOTIFICATION.finditer(text):
        name = match.group(1)
        start = text.count("\n", 0, match.start())
        end = next(i for i in range(start, len(lines)) if "::=" in lines[i])
        body = "\n".join(lines[start:end])
        objects = _OBJECTS.search(_COMMENT.sub("", body))
        variables = tuple(v.strip() for v in objects.group(1).split(",")) if objects else ()
        notes: dict[str, str] = {}
        description: list[str] = []
        in_description = False
        for line in lines[start:end]:
            annotation = _ANNOTATION.search(line)
            if annotation:
                key, value = annotation.groups()
                value = value.replace('"', "")
                notes[key] = (notes.get(key, "") + value) if key == "SUMMARY" else value
            elif in_description:
                if stripped := line.strip().replace('"', ""):
                    description.append(stripped)
            elif line.strip().startswith("DESCRIPTION"):
                in_description = True
                if rest := line.strip()[len("DESCRIPTION") :].strip().replace('"', ""):
                    description.append(rest)
        missing = [key for key in ANNOTATIONS if key not in notes]
        if missing:
            raise MibError(f"{name}: no --#{', --#'.join(missing)}")
        if name not in oids:
            raise MibError(f"{name}: no OID")
        arguments = tuple(int(a) for a in notes["ARGUMENTS"].strip("{} ").split(","))
        found.append(
            Notification(
                name=name,
                oid=oids[name],
                variables=variables,
                description=tuple(description),
                type=notes["TYPE"],
                summary=notes["SUMMARY"],
                arguments=arguments,
                severity=notes["SEVERITY"],
            )
        )
    return found


def render(text: str, file_name: str) -> str:
    """The whole SNMPTT configuration for the MIB ``text`` read from ``file_name``."""
    out = [
        "#",
        "#",
        "#",
        "#",
        f"# MIB: {module_name(text)} (file:{file_name}) converted in the form of {CONVERTER}",
        "# by contrib/snmptt/generate.py; do not edit: run it again when the MIB changes.",
    ]
    for n in notifications(text):
        out += ["#", "#", "#"]
        out.append(f'EVENT {n.name} .{".".join(map(str, n.oid))} "{CATEGORY}" {n.severity}')
        out.append(f"FORMAT {n.format}")
        out.append("SDESC")
        out += n.description
        if n.variables:
            out.append("Variables:")
            out += [f"  {i}: {v}" for i, v in enumerate(n.variables, start=1)]
        out.append("EDESC")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("mib", nargs="?", type=Path, default=DEFAULT_MIB, help="the MIB file")
    parser.add_argument("-o", "--output", type=Path, help="write here instead of standard output")
    args = parser.parse_args(argv)
    try:
        text = args.mib.read_text(encoding="ascii")
        result = render(text, args.mib.name)
    except (OSError, UnicodeDecodeError, MibError) as exc:
        print(f"generate.py: {args.mib}: {exc}", file=sys.stderr)
        return 2
    if args.output is None:
        sys.stdout.write(result)
    else:
        args.output.write_text(result, encoding="ascii")
    return 0


if __name__ == "__main__":
    sys.exit(main())
