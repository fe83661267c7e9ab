"""The state store: one SQLite database, ``state_dir/state.db``.

It holds what must survive a restart (SPEC section 9): each service's
``ServiceState`` (confirmed state, counters, last change, last notified
state) and, while its last notification is a Down, whom that Down told
(``save_told``: what closes it if the service leaves the file while the
daemon is stopped), the notification sequence number, small daemon-wide
values such as the SNMPv3 engine ID (``meta``), and the informs not yet
acknowledged, per receiver (the outbox).

Rules:

* One daemon per state directory. ``Store.open`` takes an exclusive
  ``flock`` on ``state_dir/lock`` (holding the daemon's pid) and refuses to
  open when another process holds it. ``Store.open(..., readonly=True)``
  (``watchdog status``) takes no lock and never writes; WAL mode lets it read
  while the daemon writes.
* Durable writes: WAL journal with ``synchronous=FULL``, so a write that has
  returned (or a ``transaction()`` that has ended) survives a crash or a power
  cut. Every method is its own transaction unless called inside
  ``transaction()``, which groups writes into one commit (one fsync): the
  daemon saves the changes of one turn of its event loop, with their
  notifications, in one, and the other results once a second in another.
* Nothing is ever reset silently. A file that is not a database, a database
  that fails ``PRAGMA quick_check``, one written by a newer version, one that
  belongs to another program, an unreadable file or a directory the daemon
  cannot write: each raises ``StoreError`` naming the path, what is wrong and
  the way out. Only a missing ``state.db`` is created (``Store.created``).
* The schema version is ``PRAGMA user_version``. ``_MIGRATIONS[n]`` takes the
  schema from version ``n`` to ``n + 1`` (version 1 is the first schema);
  adding version 2 means appending one function. Migrations run in order at
  open, each in its own transaction, after a copy of the old file is saved as
  ``state.db.schema-N.bak``.
* Times are stored as wall-clock seconds (``time.time()``), because the
  monotonic clock restarts at boot. The state machine works on the monotonic
  clock, so ``save_state`` and ``load_states`` take the pair ``(mono_now,
  wall_now)`` read together and move times between the frames (``clocks.py``);
  a loaded time later than now (the wall clock stepped back while the daemon
  was stopped) is clamped to now. Passing the same value for both returns wall-clock times
  (what ``watchdog status`` shows). Durations (``last_elapsed``) are not moved.
* Rows are read by column name (``sqlite3.Row``); ``encode_state``,
  ``decode_state`` and ``decode_outbox`` turn them into values and back, for
  the PostgreSQL store as well.
* The outbox keeps payloads as opaque bytes (the sender serialises its
  message) in FIFO order per receiver (row ids only grow). ``pending`` loads a
  bounded batch, so memory stays bounded however long a receiver is down.
  ``created`` is wall-clock seconds, so ``give_up_after`` counts across
  restarts.

The store is synchronous and the daemon calls it from its event loop. That is
acceptable because each call is one or a few indexed statements on a local
file, and the expensive part, the fsync of a commit, is paid once per
``transaction()``. Measured on a virtio ext4 disk: a write in its own commit
0.3 ms (0.04 ms with ``synchronous=NORMAL``); 5000 ``save_state`` in one
transaction 60 ms (12 us each); ``pending(limit=100)`` 0.2 ms; loading 5000
states 50 ms; ``open`` with ``quick_check`` of that database 2-6 ms. Grouped
as above, a slow disk delays a burst of changes by one fsync, not one per
service.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import sqlite3
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from snmp_watchdog.clocks import to_mono
from snmp_watchdog.exceptions import StoreError, StoreNotReady
from snmp_watchdog.reasons import Reason
from snmp_watchdog.state import ServiceState, State

DB_NAME = "state.db"
LOCK_NAME = "lock"

#: ``PRAGMA application_id`` of our databases ("SNWD"): tells our file from
#: another program's SQLite database.
APPLICATION_ID = 0x534E5744

_FRESH_START = (
    "every service then starts unknown, a service found down is notified again, "
    "and informs not yet acknowledged are lost"
)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One inform not yet acknowledged by its receiver."""

    id: int  # grows with every enqueue: FIFO order
    receiver: str
    payload: bytes
    created: float  # wall-clock seconds
    sequence: int  # the notification sequence number it carries
    attempts: int
    last_error: str


# --- schema -----------------------------------------------------------------


def _schema_v1(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute(
        """
        CREATE TABLE service (
            name          TEXT PRIMARY KEY,
            state         TEXT NOT NULL,
            since         REAL,
            failures      INTEGER NOT NULL,
            successes     INTEGER NOT NULL,
            changes       TEXT NOT NULL,     -- JSON list of wall-clock times
            flapping      INTEGER NOT NULL,
            flapping_since REAL,
            notified      TEXT NOT NULL,
            notified_at   REAL,
            last_check    REAL,
            last_reason   INTEGER,           -- Reason.value, the stable number
            last_detail   TEXT NOT NULL,
            last_elapsed  REAL NOT NULL,
            checks        INTEGER NOT NULL,
            failed_checks INTEGER NOT NULL,
            previous      TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE TABLE sequence (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER)")
    db.execute("INSERT INTO sequence (id, value) VALUES (1, 0)")
    db.execute(
        """
        CREATE TABLE outbox (
            id         INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: FIFO
            receiver   TEXT NOT NULL,
            payload    BLOB NOT NULL,
            created    REAL NOT NULL,
            sequence   INTEGER NOT NULL,
            attempts   INTEGER NOT NULL DEFAULT 0,
            last_error TEXT NOT NULL DEFAULT ''
        )
        """
    )
    db.execute("CREATE INDEX outbox_receiver ON outbox (receiver, id)")


def _schema_v2(db: sqlite3.Connection) -> None:
    """Stable service numbers (the MIB's wdServiceIndex), never reused for another name."""
    db.execute(
        "CREATE TABLE service_index "
        "(idx INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE NOT NULL)"
    )
    db.execute("INSERT INTO service_index (name) SELECT name FROM service ORDER BY name")


def _schema_v3(db: sqlite3.Connection) -> None:
    """What the receivers were told with a service's last Down (``save_told``), as JSON."""
    db.execute("ALTER TABLE service ADD COLUMN told TEXT")


#: ``_MIGRATIONS[n]`` takes the schema from version ``n`` to ``n + 1``.
_MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_schema_v1, _schema_v2, _schema_v3]


def schema_version() -> int:
    """The schema version this code writes."""
    return len(_MIGRATIONS)


# --- errors -----------------------------------------------------------------


def _environmental(exc: sqlite3.Error) -> bool:
    """True for errors of the file or the disk (not of our SQL): these become
    ``StoreError``; anything else is a bug and propagates as it is."""
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _corrupt(db_path: Path, what: str) -> StoreError:
    return StoreError(
        f"{db_path}: {what}. Restore a backup, or move it aside to start afresh "
        f"(mv {db_path} {db_path}.broken): {_FRESH_START}"
    )


# --- the store --------------------------------------------------------------

#: The values of a statement's parameters: by position (``?``) or by name (``:name``).
_Params = Sequence[Any] | Mapping[str, Any]


class Store:
    """The open state database. Use ``Store.open``; call ``close`` when done."""

    def __init__(
        self, db: sqlite3.Connection, path: Path, lock_fd: int | None, *, created: bool
    ) -> None:
        self._db = db
        self.path = path  # the database file
        self.created = created  # True when this open created the database
        self._lock_fd = lock_fd
        self._depth = 0  # nesting of transaction()

    # -- opening --

    @classmethod
    def open(cls, state_dir: Path, *, readonly: bool = False) -> Store:
        """Open (creating when missing) ``state_dir/state.db`` and lock the directory.

        With ``readonly`` the database must exist; nothing is locked, created,
        migrated or written. Raises ``StoreError`` with the way out on any
        problem.
        """
        db_path = state_dir / DB_NAME
        if readonly:
            return cls._open_readonly(db_path)
        _make_dir(state_dir)
        lock_fd = _lock(state_dir)
        try:
            return cls._open_locked(state_dir, db_path, lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise

    @classmethod
    def _open_locked(cls, state_dir: Path, db_path: Path, lock_fd: int) -> Store:
        if not os.access(state_dir, os.W_OK | os.X_OK, effective_ids=True):
            raise StoreError(
                f"{state_dir}: the state directory is not writable by this user; "
                f"give it to the user the watchdog runs as (chown/chmod), or set "
                f"watchdog.state_dir to a writable directory"
            )
        if db_path.is_dir() or (
            db_path.exists() and not os.access(db_path, os.R_OK | os.W_OK, effective_ids=True)
        ):
            raise StoreError(
                f"{db_path}: cannot read and write the state database (not a regular file, "
                f"or permissions); give it to the user the watchdog runs as, or move it "
                f"aside to start afresh: {_FRESH_START}"
            )
        created = not db_path.exists()
        db = _connect(db_path, _uri(db_path, "rwc"))
        try:
            _check(db, db_path)
            with _fail_as_store_error(db_path, "cannot set up the state database"):
                db.execute("PRAGMA journal_mode=WAL").fetchone()
                db.execute("PRAGMA synchronous=FULL")
            _migrate(db, db_path)
        except BaseException:
            db.close()
            raise
        return cls(db, db_path, lock_fd, created=created)

    @classmethod
    def _open_readonly(cls, db_path: Path) -> Store:
        if not db_path.is_file():
            raise StoreError(
                f"{db_path}: no state database; the daemon creates it at its first start "
                f"(check watchdog.state_dir)"
            )
        mode = "ro"
        wal = db_path.with_name(f"{db_path.name}-wal")
        if not wal.exists() and not os.access(db_path.parent, os.W_OK, effective_ids=True):
            # No daemon has it open (its WAL would exist) and SQLite could not
            # create the shared-memory file a WAL read needs: read the file as it is.
            mode = "ro&immutable=1"
        db = _connect(db_path, _uri(db_path, mode))
        try:
            _check(db, db_path)
            version = _user_version(db, db_path)
            if version == 0:
                raise StoreNotReady(
                    f"{db_path}: the daemon is still creating the state database; "
                    f"try again in a moment"
                )
            if version != schema_version():
                raise StoreError(
                    f"{db_path}: the state database has schema version {version}, this "
                    f"version of snmp-watchdog reads version {schema_version()}; run the "
                    f"matching version (the daemon upgrades an older database when it starts)"
                )
            db.execute("PRAGMA query_only=ON")
        except BaseException:
            db.close()
            raise
        return cls(db, db_path, None, created=False)

    def close(self) -> None:
        """Close the database and release the directory lock."""
        self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions --

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes into one durable commit; nests (only the outermost commits).

        An exception inside rolls the whole outermost transaction back.
        """
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        with self._sql():
            self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
            with self._sql():
                self._db.execute("COMMIT")
        finally:
            self._depth = 0
            if self._db.in_transaction:  # an exception inside, or a COMMIT that failed
                with contextlib.suppress(sqlite3.OperationalError):
                    self._db.execute("ROLLBACK")

    @contextlib.contextmanager
    def _sql(self) -> Iterator[None]:
        with _fail_as_store_error(self.path, "the state database failed"):
            yield

    def _write(self, sql: str, params: _Params = ()) -> sqlite3.Cursor:
        with self.transaction(), self._sql():
            return self._db.execute(sql, params)

    def _read(self, sql: str, params: _Params = ()) -> list[sqlite3.Row]:
        with self._sql():
            return self._db.execute(sql, params).fetchall()

    # -- services --

    def load_states(self, *, mono_now: float, wall_now: float) -> dict[str, ServiceState]:
        """Every stored service state, times moved to the monotonic frame of ``mono_now``."""
        rows = self._read(_SELECT_STATES)
        return {row["name"]: self._row_state(row, mono_now, wall_now) for row in rows}

    def save_state(self, name: str, st: ServiceState, *, mono_now: float, wall_now: float) -> None:
        """Insert or replace the state of service ``name``."""
        self._write(_SAVE_STATE, _state_row(name, st, mono_now, wall_now))

    def save_states(
        self, states: Iterable[tuple[str, ServiceState]], *, mono_now: float, wall_now: float
    ) -> None:
        """``save_state`` for many services in one statement (and one commit, unless nested)."""
        with self.transaction(), self._sql():
            self._db.executemany(
                _SAVE_STATE, (_state_row(name, st, mono_now, wall_now) for name, st in states)
            )

    def forget(self, names: Iterable[str]) -> None:
        """Delete the states of these services (no longer configured)."""
        with self.transaction(), self._sql():
            self._db.executemany("DELETE FROM service WHERE name = ?", ((n,) for n in names))

    def save_told(self, name: str, told: str | None) -> None:
        """Keep ``told`` beside the state of ``name`` (no-op when it has none saved).

        ``told`` says what the receivers were told with the service's last
        Down (``notify/told.py``); the state's own columns never change it.
        """
        self._write("UPDATE service SET told = ? WHERE name = ?", (told, name))

    def forget_told(self, names: Iterable[str]) -> dict[str, str | None]:
        """``forget`` these services; what was told of those whose last notification was a Down.

        Only the states this call deleted count (name -> ``told``, None when
        none was saved, by a version before it was).
        """
        down: dict[str, str | None] = {}
        with self.transaction():
            for name in names:
                rows = self._read("SELECT notified, told FROM service WHERE name = ?", (name,))
                if not rows:
                    continue
                if rows[0]["notified"] == _STATE_TEXT[State.DOWN]:
                    down[name] = None if rows[0]["told"] is None else str(rows[0]["told"])
                self._write("DELETE FROM service WHERE name = ?", (name,))
        return down

    def _row_state(self, row: sqlite3.Row, mono_now: float, wall_now: float) -> ServiceState:
        try:
            return decode_state(row, mono_now=mono_now, wall_now=wall_now)
        except (ValueError, TypeError) as exc:
            raise _corrupt(
                self.path, f"the stored state of service {row['name']!r} is invalid ({exc})"
            ) from exc

    def known_indexes(self) -> dict[str, int]:
        """Every service number allocated so far (works on a read-only store)."""
        rows = self._read("SELECT name, idx FROM service_index")
        return {str(row["name"]): int(row["idx"]) for row in rows}

    def service_indexes(self, names: Iterable[str]) -> dict[str, int]:
        """The stable number of each service, allocating one for a name never seen."""
        wanted = set(names)
        with self.transaction(), self._sql():
            rows = self._db.execute("SELECT name, idx FROM service_index").fetchall()
            known = {str(row["name"]): int(row["idx"]) for row in rows}
            for name in sorted(wanted - known.keys()):
                cur = self._db.execute("INSERT INTO service_index (name) VALUES (?)", (name,))
                known[name] = int(cur.lastrowid or 0)
        return {name: idx for name, idx in known.items() if name in wanted}

    # -- sequence and meta --

    def next_sequence(self, *, above: int = 0) -> int:
        """The next notification sequence number: 1, 2, 3, ... never repeated.

        ``above``: a number already used elsewhere (while the database could not
        be written); the sequence continues after it.
        """
        with self.transaction():
            self._write("UPDATE sequence SET value = MAX(value, ?) + 1 WHERE id = 1", (above,))
            (value,) = self._read("SELECT value FROM sequence WHERE id = 1")[0]
        return int(value)

    def last_sequence(self) -> int:
        """The last notification sequence number handed out (0: none yet); writes nothing."""
        (value,) = self._read("SELECT value FROM sequence WHERE id = 1")[0]
        return int(value)

    def meta_get(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def meta_set(self, key: str, value: str) -> None:
        self._write("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- outbox --

    def enqueue(self, receiver: str, payload: bytes, *, created: float, sequence: int) -> int:
        """Keep an inform for ``receiver`` until ``remove``; return its id."""
        cur = self._write(
            "INSERT INTO outbox (receiver, payload, created, sequence) VALUES (?, ?, ?, ?)",
            (receiver, payload, created, sequence),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def pending(self, receiver: str, limit: int, *, after: int = 0) -> list[OutboxRow]:
        """Up to ``limit`` informs for ``receiver`` with id above ``after``, oldest first."""
        rows = self._read(_SELECT_OUTBOX, (receiver, after, limit))
        return [decode_outbox(row) for row in rows]

    def count_pending(self, receiver: str, *, after: int = 0) -> int:
        """How many notifications for ``receiver`` with id above ``after`` wait."""
        rows = self._read(
            "SELECT COUNT(*) FROM outbox WHERE receiver = ? AND id > ?", (receiver, after)
        )
        return int(rows[0][0])

    def mark_attempt(self, id: int, error: str) -> None:
        """Count one failed delivery attempt (no-op when ``id`` is gone)."""
        self._write(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?", (error, id)
        )

    def remove(self, id: int) -> None:
        """Drop a notification: delivered or given up (no-op when already gone).

        The only write that is not flushed to disk before it returns: losing
        it in a power cut sends the notification once more (at least once,
        never lost), and sparing the fsync halves the cost of a delivery. The
        next durable commit flushes it anyway.
        """
        if self._depth:  # inside a caller's transaction: its commit decides
            self._write("DELETE FROM outbox WHERE id = ?", (id,))
            return
        with self._sql():
            self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            self._write("DELETE FROM outbox WHERE id = ?", (id,))
        finally:
            with self._sql():
                self._db.execute("PRAGMA synchronous=FULL")

    def discard(self, receiver: str) -> int:
        """Drop every inform of ``receiver`` (no longer configured); return how many."""
        return self._write("DELETE FROM outbox WHERE receiver = ?", (receiver,)).rowcount

    def pending_counts(self) -> dict[str, int]:
        """Receiver -> number of informs not yet acknowledged (receivers with none omitted)."""
        rows = self._read("SELECT receiver, count(*) AS n FROM outbox GROUP BY receiver")
        return {row["receiver"]: int(row["n"]) for row in rows}


#: ``meta`` key: the engine ID the running (or last) daemon uses, as ``0x...``.
ENGINE_ID_IN_USE = "engine_id_in_use"


_STATE_TEXT = {s: s.value for s in State}
_REASON_NUMBER = {r: r.value for r in Reason}


def _state_row(name: str, st: ServiceState, mono_now: float, wall_now: float) -> tuple[Any, ...]:
    """The ``_SAVE_STATE`` parameters of one service, in order: its name and ``_state_values``.

    By position, not by name: the once-a-second flush binds one row per
    checked service, and SQLite binds a dict's 17 names at about twice the cost.
    """
    return (name, *_state_values(st, mono_now=mono_now, wall_now=wall_now))


# --- rows <-> values (shared by every backend) -------------------------------

#: The columns of table ``service`` that hold a ``ServiceState`` (all but ``name``).
_STATE_COLUMNS = (
    "state",
    "since",
    "failures",
    "successes",
    "changes",
    "flapping",
    "flapping_since",
    "notified",
    "notified_at",
    "last_check",
    "last_reason",
    "last_detail",
    "last_elapsed",
    "checks",
    "failed_checks",
    "previous",
)

#: The columns of table ``outbox``, as ``decode_outbox`` reads them.
_OUTBOX_COLUMNS = "id, receiver, payload, created, sequence, attempts, last_error"


# Column names are constants here; every value is a parameter, by name.
_SELECT_STATES = f"SELECT name, {', '.join(_STATE_COLUMNS)} FROM service ORDER BY name"  # noqa: S608
_SAVE_STATE = f"""
    INSERT INTO service (name, {", ".join(_STATE_COLUMNS)})
    VALUES (?, {", ".join("?" for _ in _STATE_COLUMNS)})
    ON CONFLICT (name) DO UPDATE SET
    {", ".join(f"{c} = excluded.{c}" for c in _STATE_COLUMNS)}
"""  # noqa: S608
_SELECT_OUTBOX = (
    f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE receiver = ? AND id > ? ORDER BY id LIMIT ?"  # noqa: S608
)


class Named(Protocol):
    """A row whose columns are read by name (``sqlite3.Row``, a psycopg ``dict_row``)."""

    def __getitem__(self, column: str, /) -> Any: ...


def encode_state(st: ServiceState, *, mono_now: float, wall_now: float) -> dict[str, Any]:
    """The column values (``_STATE_COLUMNS``) of a state, times on the wall clock."""
    values = _state_values(st, mono_now=mono_now, wall_now=wall_now)
    return dict(zip(_STATE_COLUMNS, values, strict=True))


def _state_values(st: ServiceState, *, mono_now: float, wall_now: float) -> tuple[Any, ...]:
    """``encode_state``'s values in the order of ``_STATE_COLUMNS``."""
    m, w = mono_now, wall_now  # to_wall, inline (same arithmetic): this runs for every row flushed
    return (
        _STATE_TEXT[st.state],
        None if st.since is None else st.since - m + w,
        st.failures,
        st.successes,
        json.dumps([t - m + w for t in st.changes]) if st.changes else "[]",
        int(st.flapping),
        None if st.flapping_since is None else st.flapping_since - m + w,
        _STATE_TEXT[st.notified],
        None if st.notified_at is None else st.notified_at - m + w,
        None if st.last_check is None else st.last_check - m + w,
        None if st.last_reason is None else _REASON_NUMBER[st.last_reason],
        st.last_detail,
        st.last_elapsed,
        st.checks,
        st.failed_checks,
        _STATE_TEXT[st.previous],
    )


def decode_state(row: Named, *, mono_now: float, wall_now: float) -> ServiceState:
    """The state in a row of table ``service``, times moved to the monotonic frame of ``mono_now``.

    Raises ``ValueError`` or ``TypeError`` for a row that holds no valid state.
    """

    def mono(t: float | None) -> float | None:
        return None if t is None else to_mono(float(t), mono_now=mono_now, wall_now=wall_now)

    changes = json.loads(row["changes"])
    return ServiceState(
        state=State(row["state"]),
        since=mono(row["since"]),
        failures=int(row["failures"]),
        successes=int(row["successes"]),
        changes=tuple(to_mono(float(t), mono_now=mono_now, wall_now=wall_now) for t in changes),
        flapping=bool(row["flapping"]),
        flapping_since=mono(row["flapping_since"]),
        notified=State(row["notified"]),
        notified_at=mono(row["notified_at"]),
        last_check=mono(row["last_check"]),
        last_reason=None if row["last_reason"] is None else Reason(row["last_reason"]),
        last_detail=str(row["last_detail"]),
        last_elapsed=float(row["last_elapsed"]),
        checks=int(row["checks"]),
        failed_checks=int(row["failed_checks"]),
        previous=State(row["previous"]),
    )


def decode_outbox(row: Named) -> OutboxRow:
    """The notification in a row of table ``outbox`` (``_OUTBOX_COLUMNS``)."""
    return OutboxRow(
        id=int(row["id"]),
        receiver=str(row["receiver"]),
        payload=bytes(row["payload"]),
        created=float(row["created"]),
        sequence=int(row["sequence"]),
        attempts=int(row["attempts"]),
        last_error=str(row["last_error"]),
    )


# --- opening, step by step --------------------------------------------------


def _make_dir(state_dir: Path) -> None:
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise StoreError(
            f"{state_dir}: the state directory exists but is not a directory; "
            f"move it aside or set watchdog.state_dir to a directory"
        ) from None
    except OSError as exc:
        raise StoreError(
            f"{state_dir}: cannot create the state directory: {_describe(exc)}; "
            f"create it writable by the user the watchdog runs as, or set "
            f"watchdog.state_dir to a writable directory"
        ) from exc


def _lock(state_dir: Path) -> int:
    """Take the exclusive lock of the directory and write our pid into it."""
    lock_path = state_dir / LOCK_NAME
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreError(
            f"{lock_path}: cannot open the lock file: {_describe(exc)}; the state directory "
            f"must be writable by the user the watchdog runs as (or set watchdog.state_dir)"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise StoreError(
                f"another watchdog is running with this state directory (pid {holder}); "
                f"stop it, or give this one another watchdog.state_dir ({state_dir})"
            ) from None
        raise StoreError(f"{lock_path}: cannot lock: {_describe(exc)}") from exc
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        os.close(fd)
        raise StoreError(f"{lock_path}: cannot write the lock file: {_describe(exc)}") from exc
    return fd


def _uri(db_path: Path, mode: str) -> str:
    return f"file:{urllib.parse.quote(str(db_path))}?mode={mode}"


def _connect(db_path: Path, uri: str) -> sqlite3.Connection:
    try:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (transaction()).
        db = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        if not _environmental(exc):
            raise
        raise StoreError(
            f"{db_path}: cannot open the state database: {exc}; check its owner and "
            f"permissions, or move it aside to start afresh: {_FRESH_START}"
        ) from exc
    db.row_factory = sqlite3.Row  # columns by name: row["state"]
    return db


@contextlib.contextmanager
def _fail_as_store_error(db_path: Path, what: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        if not _environmental(exc):
            raise
        if exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            raise _corrupt(db_path, f"{what}: {exc}") from exc
        raise StoreError(f"{db_path}: {what}: {exc}") from exc


def _check(db: sqlite3.Connection, db_path: Path) -> None:
    """Refuse a file that is not our database or is damaged."""
    try:
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        problems = [r[0] for r in db.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.Error as exc:
        if not _environmental(exc):
            raise
        code = exc.sqlite_errorcode & 0xFF
        if code == sqlite3.SQLITE_NOTADB:
            raise _corrupt(db_path, "not an SQLite database") from exc
        if code == sqlite3.SQLITE_CORRUPT:
            raise _corrupt(db_path, f"the state database is corrupt ({exc})") from exc
        raise StoreError(f"{db_path}: cannot read the state database: {exc}") from exc
    if problems != ["ok"]:
        raise _corrupt(
            db_path, f"the state database is corrupt (quick_check: {'; '.join(problems[:3])})"
        )
    if app_id != APPLICATION_ID and (app_id != 0 or tables):
        raise StoreError(
            f"{db_path}: an SQLite database of another program (application_id {app_id:#x}); "
            f"set watchdog.state_dir to a directory of its own"
        )


def _user_version(db: sqlite3.Connection, db_path: Path) -> int:
    with _fail_as_store_error(db_path, "cannot read the schema version"):
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def _migrate(db: sqlite3.Connection, db_path: Path) -> None:
    """Bring the schema to ``schema_version()``, one migration per transaction."""
    version = _user_version(db, db_path)
    target = schema_version()
    if version > target:
        raise StoreError(
            f"{db_path}: the state database has schema version {version}, written by a newer "
            f"snmp-watchdog; this version knows up to {target}. Run the newer version, restore "
            f"{db_path}.schema-{target}.bak if the upgrade left one, or move it aside to "
            f"start afresh: {_FRESH_START}"
        )
    if 0 < version < target:
        _backup(db, db_path, version)
    # A new database is made in one transaction, so that a reader (``watchdog status``
    # during a first start) sees none of it or all of it; an upgrade goes one
    # migration per transaction.
    steps = [target] if version == 0 else list(range(version + 1, target + 1))
    for upto in steps:
        with _fail_as_store_error(db_path, f"upgrading the schema to version {upto}"):
            db.execute("BEGIN IMMEDIATE")
            try:
                for migration in _MIGRATIONS[version:upto]:
                    migration(db)
                db.execute(f"PRAGMA user_version = {upto}")
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        version = upto
    # Prove now, not at the first state change, that we can write.
    with _fail_as_store_error(db_path, "cannot write the state database"):
        db.execute("BEGIN IMMEDIATE")
        db.execute("COMMIT")


def _backup(db: sqlite3.Connection, db_path: Path, version: int) -> None:
    """Copy the database before upgrading it, so an older version can go back to it."""
    backup_path = db_path.with_name(f"{db_path.name}.schema-{version}.bak")
    with _fail_as_store_error(backup_path, "cannot save a copy before upgrading"):
        target = sqlite3.connect(backup_path)
        try:
            db.backup(target)
        finally:
            target.close()
