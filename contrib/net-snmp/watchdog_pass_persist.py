#!/usr/bin/env python3
"""Net-SNMP ``pass_persist`` helper: SNMP-WATCHDOG-MIB's table served by an snmpd on port 161.

For sites whose snmpd already owns port 161. snmpd starts this script once and
asks it for GET and GETNEXT under the MIB's root; it answers from the
watchdog's state database (read-only, never locked or written, while the
daemon runs) and the service definitions of its configuration file. One
``pass_persist`` line in snmpd.conf runs it with the Python that has
snmp-watchdog installed (``snmpd.conf`` beside this script; with ``oid_root``
set, use that root; ``-s`` overrides the state directory the configuration
names). snmpd's own access rules (``rocommunity``, ``rouser``,
views) decide who may read.

Rules:

* The OIDs, types and values are exactly those of the built-in agent
  (``snmp_watchdog.agent.table``): scalars wdGeneral 1-6 and wdServiceTable
  columns 2-15, rows indexed by the stable wdServiceIndex kept in the
  database. The system group is snmpd's own.
* The rows are the services of the configuration file (name, host, port and
  check kind come from it; secrets and other files are not read, so the
  snmpd user needs to read neither). A service the daemon has not stored yet
  is ``unknown``.
* The database is read again when it changed, at most once a second.
  wdWatchdogUptime counts from the daemon's start (the time it took its lock
  file); 0 when no daemon runs.
* ``set`` answers ``not-writable``. A database that cannot be read gives
  ``NONE`` for everything (snmpd then says noSuchObject) and one line on
  stderr, until it can be read again.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

import yaml

from snmp_watchdog import __version__, model, state
from snmp_watchdog.agent.table import StatusTable, Value, confirmed_from, service_row
from snmp_watchdog.config import default_config_path
from snmp_watchdog.exceptions import StoreError
from snmp_watchdog.notify.mib import Oids
from snmp_watchdog.oid import check_root
from snmp_watchdog.store import DB_NAME, LOCK_NAME, Store

#: Least time between two reads of the database.
REFRESH = 1.0


def services_of(config: dict[str, Any]) -> list[model.Service]:
    """Name, host, port and check kind of each service, as the daemon reads them."""
    out = []
    for item in config.get("services") or ():
        if not isinstance(item, dict) or "name" not in item:
            continue
        kind = model.CheckKind(str(item.get("check", "tcp")).lower())
        port = item.get("port", model.DEFAULT_PORTS.get(kind, 0))
        host = str(item.get("host", ""))
        out.append(model.Service(name=str(item["name"]), host=host, port=int(port), check=kind))
    return out


def read_config(path: Path) -> tuple[list[model.Service], Path, tuple[int, ...]]:
    """The services, the state directory and the OID root of a configuration file."""
    with path.open(encoding="utf-8") as f:
        config = yaml.safe_load(f) or {}
    settings = config.get("watchdog") or {}
    state_dir = Path(str(settings.get("state_dir", model.Settings().state_dir)))
    if not state_dir.is_absolute():
        state_dir = path.absolute().parent / state_dir
    root = model.DEFAULT_OID_ROOT
    if "oid_root" in settings:
        root = model.parse_oid(str(settings["oid_root"]))
        check_root(root)
    return services_of(config), state_dir, root


class Helper:
    def __init__(self, services: list[model.Service], state_dir: Path, root: tuple[int, ...]):
        self.services = services
        self.state_dir = state_dir
        self.oids = Oids(root)
        self.root = root
        self.sequence = 0
        self.started: float | None = None  # wall-clock start of the running daemon
        self.table: StatusTable | None = None  # None: the database cannot be read
        self._stamp: tuple[float, ...] | None = None
        self._checked = 0.0
        self._failing = False

    def _empty(self) -> StatusTable:
        return StatusTable(
            self.oids,
            version=__version__,
            uptime=self._uptime,
            sequence=lambda: self.sequence,
            system=False,
        )

    def _uptime(self) -> int:
        return 0 if self.started is None else int(max(time.time() - self.started, 0) * 100)

    def refresh(self) -> None:
        """Read the database again if it changed (at most once per ``REFRESH``)."""
        now = time.monotonic()
        if now - self._checked < REFRESH:
            return
        self._checked = now
        db = self.state_dir / DB_NAME
        stamp = tuple(
            p.stat().st_mtime if p.exists() else 0.0 for p in (db, db.with_name(f"{DB_NAME}-wal"))
        )
        self.started = self._daemon_start()
        if stamp == self._stamp:
            return
        try:
            self._load()
        except StoreError as exc:
            if not self._failing:
                print(f"watchdog_pass_persist: {exc}", file=sys.stderr, flush=True)
            self._failing = True
            self.table = None
            self._stamp = None
            return
        self._failing = False
        self._stamp = stamp

    def _daemon_start(self) -> float | None:
        """When the running daemon took its lock, or None when no daemon holds it."""
        lock = self.state_dir / LOCK_NAME
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return os.fstat(fd).st_mtime  # held: a daemon runs
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def _load(self) -> None:
        with Store.open(self.state_dir, readonly=True) as store:
            wall = time.time()
            saved = store.load_states(mono_now=wall, wall_now=wall)
            indexes = store.known_indexes()
            sequence = store.last_sequence()
        table = self._empty()
        for svc in self.services:
            index = indexes.get(svc.name)
            if index is None:
                continue  # the daemon has not seen this service yet
            st = saved.get(svc.name, state.ServiceState())
            table.put(index, service_row(svc, st, confirmed_from(st), mono_now=wall, wall_now=wall))
        self.table, self.sequence = table, sequence

    def get(self, oid: tuple[int, ...]) -> tuple[tuple[int, ...], Value] | None:
        self.refresh()
        if self.table is None:
            return None
        found = self.table.get(oid)
        return (oid, found) if isinstance(found, tuple) else None

    def next(self, oid: tuple[int, ...]) -> tuple[tuple[int, ...], Value] | None:
        self.refresh()
        if self.table is None:
            return None
        found = self.table.next(oid)
        if found is None or found[0][: len(self.root)] != self.root:
            return None
        return found


def _parse(line: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(arc) for arc in line.strip().lstrip(".").split("."))
    except ValueError:
        return None


def _format(found: tuple[tuple[int, ...], Value]) -> str:
    oid, (kind, value) = found
    dotted = "." + ".".join(map(str, oid))
    if kind == "string":
        raw = bytes(value)  # type: ignore[call-overload]
        if all(0x20 <= b < 0x7F for b in raw):
            return f"{dotted}\nstring\n{raw.decode('ascii')}"
        return f"{dotted}\noctet\n{' '.join(f'{b:02X}' for b in raw)}"
    if kind == "objectid":
        return f"{dotted}\nobjectid\n." + ".".join(map(str, value))  # type: ignore[call-overload]
    return f"{dotted}\n{kind}\n{value}"


def serve(helper: Helper, stdin: IO[str], stdout: IO[str]) -> None:
    """The pass_persist conversation, until snmpd closes our stdin."""
    while True:
        command = stdin.readline()
        if not command:
            return
        command = command.strip().lower()
        if command == "ping":
            answer = "PONG"
        elif command in ("get", "getnext"):
            oid = _parse(stdin.readline())
            found = None
            if oid is not None:
                found = helper.get(oid) if command == "get" else helper.next(oid)
            answer = "NONE" if found is None else _format(found)
        elif command == "set":
            stdin.readline()  # the OID
            stdin.readline()  # the type and value
            answer = "not-writable"
        elif command == "":
            return
        else:
            answer = "NONE"
        stdout.write(answer + "\n")
        stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", type=Path, default=default_config_path())
    parser.add_argument("-s", "--state-dir", type=Path, help="default: the configuration's")
    args = parser.parse_args(argv)
    try:
        services, state_dir, root = read_config(args.config)
    except (OSError, yaml.YAMLError, ValueError) as exc:
        print(f"watchdog_pass_persist: {args.config}: {exc}", file=sys.stderr)
        return 2
    helper = Helper(services, args.state_dir or state_dir, root)
    serve(helper, sys.stdin, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
