"""A Net-SNMP ``pass`` program serving SNMP-WATCHDOG-MIB's wdServiceTable from a JSON file.

``snmpd`` runs it as ``PROGRAM -g OID`` (get) or ``PROGRAM -n OID`` (get-next)
and reads three lines (OID, type, value), or nothing for no such object.
The JSON file holds the rows, ``[{"index": 1, "name": "alpha", "host": ...,
"port": 25, "check": "smtp", "state": 1, "previous": 3, "reason": 0,
"text": "..."}]``, and is read at every request, so a test changes the
table by rewriting the file.

Usage: ``static_table.py TABLE.json (-g|-n) OID``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: wdServiceEntry under the default root.
ENTRY = (1, 3, 6, 1, 4, 1, 8072, 9999, 9999, 1, 2, 1)
#: Column number -> (row key, Net-SNMP pass type).
COLUMNS = {
    2: ("name", "string"),
    3: ("host", "string"),
    4: ("port", "gauge"),
    5: ("check", "string"),
    6: ("state", "integer"),
    7: ("previous", "integer"),
    8: ("reason", "integer"),
    9: ("text", "string"),
}


def objects(rows: Sequence[dict[str, Any]]) -> list[tuple[tuple[int, ...], str, str]]:
    """Every object of the table, in OID order."""
    found = [
        ((*ENTRY, column, int(row["index"])), kind, str(row[key]))
        for column, (key, kind) in COLUMNS.items()
        for row in rows
    ]
    return sorted(found)


def parse_oid(text: str) -> tuple[int, ...]:
    return tuple(int(arc) for arc in text.strip(".").split(".") if arc)


def answer(rows: Sequence[dict[str, Any]], mode: str, oid: tuple[int, ...]) -> str:
    for name, kind, value in objects(rows):
        if (mode == "-g" and name == oid) or (mode == "-n" and name > oid):
            return f".{'.'.join(map(str, name))}\n{kind}\n{value}\n"
    return ""


def main(argv: Sequence[str]) -> int:
    table, mode, oid = argv
    rows = json.loads(Path(table).read_text())
    sys.stdout.write(answer(rows, mode, parse_oid(oid)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
