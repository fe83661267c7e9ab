"""The state store in PostgreSQL, shared by several watchdogs (``watchdog.store``).

The same tables, meanings and schema versions as the SQLite store
(``store.py``); ``_MIGRATIONS[n]`` here takes the schema from version ``n``
to ``n + 1`` exactly as SQLite's does, in PostgreSQL's dialect (``bytea``,
identity columns, ``double precision``). The version is the one row of
``watchdog_schema``. Migrations run at open under a transaction-level
advisory lock, so watchdogs starting together upgrade once; DDL is
transactional in PostgreSQL, so a failed migration leaves the schema as it
was (take a ``pg_dump`` before upgrading to be able to go back).

Connections: psycopg 3, asynchronous, from a small pool (autocommit; a
``transaction()`` holds one connection until it ends). The password is passed
apart from the URL and scrubbed from every message; ``where`` is the URL
without it. ``remove`` commits with ``synchronous_commit = off``: like
SQLite's ``remove``, losing it in a crash sends a notification once more and
never loses one.

Durations and times are stored exactly as in SQLite: wall-clock seconds as
``double precision``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, LiteralString

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from snmp_watchdog import cluster
from snmp_watchdog.cluster import Ownership
from snmp_watchdog.exceptions import StoreError, StoreNotReady
from snmp_watchdog.pgurl import redact, scrub
from snmp_watchdog.state import ServiceState
from snmp_watchdog.store import (
    _FRESH_START,
    OutboxRow,
    decode_outbox,
    decode_state,
    encode_state,
)

#: ``pg_advisory_xact_lock`` keys: schema upgrades ("SNWD"), ownership changes ("SNWR").
MIGRATION_LOCK = 0x534E5744
REBALANCE_LOCK = 0x534E5752


@dataclass(frozen=True, slots=True)
class NodeLease:
    """A node's lease row, times in wall-clock seconds of the database's clock."""

    node: str
    expires_at: float
    renewed_at: float
    live: bool


Conn = psycopg.AsyncConnection[Any]
Params = Sequence[Any] | Mapping[str, Any]

# --- schema -----------------------------------------------------------------


async def _schema_v1(db: Conn) -> None:
    await db.execute("CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL)")
    await db.execute(
        """
        CREATE TABLE service (
            name           text PRIMARY KEY,
            state          text NOT NULL,
            since          double precision,
            failures       integer NOT NULL,
            successes      integer NOT NULL,
            changes        text NOT NULL,     -- JSON list of wall-clock times
            flapping       integer NOT NULL,
            flapping_since double precision,
            notified       text NOT NULL,
            notified_at    double precision,
            last_check     double precision,
            last_reason    integer,           -- Reason.value, the stable number
            last_detail    text NOT NULL,
            last_elapsed   double precision NOT NULL,
            checks         bigint NOT NULL,
            failed_checks  bigint NOT NULL,
            previous       text NOT NULL
        )
        """
    )
    await db.execute(
        "CREATE TABLE sequence (id integer PRIMARY KEY CHECK (id = 1), value bigint NOT NULL)"
    )
    await db.execute("INSERT INTO sequence (id, value) VALUES (1, 0)")
    await db.execute(
        """
        CREATE TABLE outbox (
            id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            receiver   text NOT NULL,
            payload    bytea NOT NULL,
            created    double precision NOT NULL,
            sequence   bigint NOT NULL,
            attempts   integer NOT NULL DEFAULT 0,
            last_error text NOT NULL DEFAULT ''
        )
        """
    )
    await db.execute("CREATE INDEX outbox_receiver ON outbox (receiver, id)")


async def _schema_v2(db: Conn) -> None:
    """Stable service numbers (the MIB's wdServiceIndex), never reused for another name."""
    await db.execute(
        "CREATE TABLE service_index "
        "(idx bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text UNIQUE NOT NULL)"
    )
    await db.execute("INSERT INTO service_index (name) SELECT name FROM service ORDER BY name")


async def _schema_v3(db: Conn) -> None:
    """What the receivers were told with a service's last Down (``save_told``), as JSON."""
    await db.execute("ALTER TABLE service ADD COLUMN told text")


#: ``_MIGRATIONS[n]`` takes the schema from version ``n`` to ``n + 1`` (as in store.py).
_MIGRATIONS: list[Callable[[Conn], Any]] = [_schema_v1, _schema_v2, _schema_v3]


def schema_version() -> int:
    """The schema version this code writes (the same number as SQLite's)."""
    return len(_MIGRATIONS)


# --- errors -----------------------------------------------------------------

#: Errors of the server, the network or the database's state (not of our SQL):
#: these become ``StoreError``; anything else is a bug and propagates as it is.
_ENVIRONMENTAL = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    psycopg.InternalError,
    psycopg.NotSupportedError,
)


# --- the store --------------------------------------------------------------

_SELECT_STATES: LiteralString = """
    SELECT name, state, since, failures, successes, changes, flapping, flapping_since,
           notified, notified_at, last_check, last_reason, last_detail, last_elapsed,
           checks, failed_checks, previous
    FROM service ORDER BY name
"""
# The parameters by name: ``encode_state``'s columns and ``name``.
_SAVE_STATE: LiteralString = """
    INSERT INTO service (name, state, since, failures, successes, changes, flapping,
        flapping_since, notified, notified_at, last_check, last_reason, last_detail,
        last_elapsed, checks, failed_checks, previous)
    VALUES (%(name)s, %(state)s, %(since)s, %(failures)s, %(successes)s, %(changes)s,
        %(flapping)s, %(flapping_since)s, %(notified)s, %(notified_at)s, %(last_check)s,
        %(last_reason)s, %(last_detail)s, %(last_elapsed)s, %(checks)s, %(failed_checks)s,
        %(previous)s)
    ON CONFLICT (name) DO UPDATE SET
        state = excluded.state, since = excluded.since, failures = excluded.failures,
        successes = excluded.successes, changes = excluded.changes,
        flapping = excluded.flapping, flapping_since = excluded.flapping_since,
        notified = excluded.notified, notified_at = excluded.notified_at,
        last_check = excluded.last_check, last_reason = excluded.last_reason,
        last_detail = excluded.last_detail, last_elapsed = excluded.last_elapsed,
        checks = excluded.checks, failed_checks = excluded.failed_checks,
        previous = excluded.previous
"""

_SAVE_STATE_IF_NEWER: LiteralString = _SAVE_STATE + " WHERE service.checks <= excluded.checks"


class PgStore:
    """An open PostgreSQL state store. Use ``await PgStore.open(...)``; ``await close()``."""

    def __init__(self, pool: AsyncConnectionPool[Conn], where: str, password: str | None) -> None:
        self._pool = pool
        self.where = where
        self.created = False
        self._password = password
        self._tx: contextvars.ContextVar[Conn | None] = contextvars.ContextVar(
            f"pg-transaction-{id(self)}", default=None
        )

    # -- opening --

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        password: str | None = None,
        readonly: bool = False,
        connect_timeout: float = 10.0,
        pool_size: int = 4,
        lock_timeout: float = 2.0,
        idle_timeout: float = 5.0,
    ) -> PgStore:
        """Connect to the database at ``url``, creating or upgrading the schema.

        ``password``: the password, kept out of the URL (and out of messages).
        With ``readonly`` the schema must exist; nothing is created, migrated
        or written. Raises ``StoreError`` with the way out on any problem.

        No node can hold up the others for long: a statement waits at most
        ``lock_timeout`` for a lock (then fails, and is tried again later), and
        the server ends a session of this store that stays idle inside a
        transaction for ``idle_timeout`` (a node paused or cut off halfway
        through a transaction), releasing its locks.
        """
        where = redact(url)
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(1, round(connect_timeout)),
        }
        if password is not None:
            kwargs["password"] = password
        if readonly:
            kwargs["options"] = "-c default_transaction_read_only=on"
        with _as_store_error(where, password, "cannot connect to the state database"):
            first = await psycopg.AsyncConnection.connect(url, **kwargs)
        options = [
            f"-c lock_timeout={round(lock_timeout * 1000)}",
            f"-c idle_in_transaction_session_timeout={round(idle_timeout * 1000)}",
        ]
        if readonly:
            options.append("-c default_transaction_read_only=on")
        kwargs["options"] = " ".join(options)
        try:
            with _as_store_error(where, password, "cannot set up the state database"):
                if readonly:
                    await _check_version(first, where)
                    created = False
                else:
                    created = await _migrate(first, where)
        finally:
            await first.close()
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            url,
            kwargs=kwargs,
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=connect_timeout,
            name="state-store",
        )
        with _as_store_error(where, password, "cannot connect to the state database"):
            await pool.open(wait=True, timeout=connect_timeout)
        store = cls(pool, where, password)
        store.created = created
        return store

    async def close(self) -> None:
        await self._pool.close()

    # -- connections and transactions --

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[Conn]:
        """The connection of the current transaction, or one from the pool (autocommit)."""
        current = self._tx.get()
        if current is not None:
            yield current
            return
        with self._sql():
            async with self._pool.connection() as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """Group the calls of this task into one commit; nests (only the outermost commits)."""
        if self._tx.get() is not None:
            yield
            return
        with self._sql():
            async with self._pool.connection() as conn, conn.transaction():
                token = self._tx.set(conn)
                try:
                    yield
                finally:
                    self._tx.reset(token)

    @contextlib.contextmanager
    def _sql(self) -> Iterator[None]:
        with _as_store_error(self.where, self._password, "the state database failed"):
            yield

    async def _write(self, sql: LiteralString, params: Params = ()) -> int:
        async with self._conn() as conn:
            cur = await conn.execute(sql, params)
            return cur.rowcount

    async def _read(self, sql: LiteralString, params: Params = ()) -> list[Any]:
        async with self._conn() as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()

    async def _read_named(self, sql: LiteralString, params: Params = ()) -> list[dict[str, Any]]:
        """``_read`` with each row a dict of its columns by name."""
        async with self._conn() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(sql, params)
            return await cur.fetchall()

    # -- services --

    async def load_states(self, *, mono_now: float, wall_now: float) -> dict[str, ServiceState]:
        """Every stored service state, times moved to the monotonic frame of ``mono_now``."""
        states = {}
        for row in await self._read_named(_SELECT_STATES):
            try:
                states[row["name"]] = decode_state(row, mono_now=mono_now, wall_now=wall_now)
            except (ValueError, TypeError) as exc:
                raise StoreError(
                    f"{self.where}: the stored state of service {row['name']!r} is invalid "
                    f"({exc}). "
                    f"Restore a backup, or delete its row in table service to start it "
                    f"afresh: {_FRESH_START}"
                ) from exc
        return states

    async def save_state(
        self, name: str, st: ServiceState, *, mono_now: float, wall_now: float
    ) -> None:
        """Insert or replace the state of service ``name``."""
        await self._write(
            _SAVE_STATE, {"name": name, **encode_state(st, mono_now=mono_now, wall_now=wall_now)}
        )

    async def save_states(
        self, states: Iterable[tuple[str, ServiceState]], *, mono_now: float, wall_now: float
    ) -> None:
        """``save_state`` for many services in one transaction."""
        rows = [
            {"name": n, **encode_state(st, mono_now=mono_now, wall_now=wall_now)}
            for n, st in states
        ]
        async with self.transaction(), self._conn() as conn, conn.cursor() as cur:
            await cur.executemany(_SAVE_STATE, rows)

    async def forget(self, names: Iterable[str]) -> None:
        """Delete the states of these services (no longer configured)."""
        await self._write("DELETE FROM service WHERE name = ANY(%s)", (list(names),))

    async def save_told(self, name: str, told: str | None) -> None:
        """Keep ``told`` beside the state of ``name`` (as ``Store.save_told``)."""
        await self._write("UPDATE service SET told = %s WHERE name = %s", (told, name))

    async def forget_told(self, names: Iterable[str]) -> dict[str, str | None]:
        """``forget``, returning what was told of the services last notified down.

        Only the rows this call deleted count: a watchdog forgetting the same
        names at the same time waits for this transaction, then finds them gone.
        """
        rows = await self._read(
            "DELETE FROM service WHERE name = ANY(%s) RETURNING name, notified, told",
            (list(names),),
        )
        return {
            str(name): None if told is None else str(told)
            for name, notified, told in rows
            if notified == "down"
        }

    async def known_indexes(self) -> dict[str, int]:
        """Every service number allocated so far (works on a read-only store)."""
        rows = await self._read("SELECT name, idx FROM service_index")
        return {str(n): int(i) for n, i in rows}

    async def service_indexes(self, names: Iterable[str]) -> dict[str, int]:
        """The stable number of each service, allocating one for a name never seen.

        Safe against other watchdogs allocating at the same time: a name gets
        one number, whoever inserts it first.
        """
        wanted = sorted(set(names))
        async with self.transaction():
            await self._write(
                "INSERT INTO service_index (name) SELECT n FROM unnest(%s::text[]) AS n "
                "ORDER BY n ON CONFLICT (name) DO NOTHING",
                (wanted,),
            )
            rows = await self._read(
                "SELECT name, idx FROM service_index WHERE name = ANY(%s)", (wanted,)
            )
        return {str(n): int(i) for n, i in rows}

    # -- sequence and meta --

    async def next_sequence(self, *, above: int = 0) -> int:
        """The next notification sequence number: 1, 2, 3, ... never repeated.

        The row stays locked until the caller's transaction ends, so watchdogs
        sharing the database hand out one gap-free sequence between them.
        """
        rows = await self._read(
            "UPDATE sequence SET value = GREATEST(value, %s) + 1 WHERE id = 1 RETURNING value",
            (above,),
        )
        return int(rows[0][0])

    async def last_sequence(self) -> int:
        """The last notification sequence number handed out (0: none yet); writes nothing."""
        rows = await self._read("SELECT value FROM sequence WHERE id = 1")
        return int(rows[0][0])

    async def meta_get(self, key: str) -> str | None:
        rows = await self._read("SELECT value FROM meta WHERE key = %s", (key,))
        return str(rows[0][0]) if rows else None

    async def meta_set(self, key: str, value: str) -> None:
        await self._write(
            "INSERT INTO meta (key, value) VALUES (%s, %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- outbox --

    async def enqueue(self, receiver: str, payload: bytes, *, created: float, sequence: int) -> int:
        """Keep a notification for ``receiver`` until ``remove``; return its id."""
        rows = await self._read(
            "INSERT INTO outbox (receiver, payload, created, sequence) "
            "VALUES (%s, %s, %s, %s) RETURNING id",
            (receiver, payload, created, sequence),
        )
        return int(rows[0][0])

    async def pending(self, receiver: str, limit: int, *, after: int = 0) -> list[OutboxRow]:
        """Up to ``limit`` notifications for ``receiver`` with id above ``after``, oldest first."""
        rows = await self._read_named(
            "SELECT id, receiver, payload, created, sequence, attempts, last_error FROM outbox "
            "WHERE receiver = %s AND id > %s ORDER BY id LIMIT %s",
            (receiver, after, limit),
        )
        return [decode_outbox(row) for row in rows]

    async def count_pending(self, receiver: str, *, after: int = 0) -> int:
        """How many notifications for ``receiver`` with id above ``after`` wait."""
        rows = await self._read(
            "SELECT count(*) FROM outbox WHERE receiver = %s AND id > %s", (receiver, after)
        )
        return int(rows[0][0])

    async def mark_attempt(self, id: int, error: str) -> None:
        """Count one failed delivery attempt (no-op when ``id`` is gone)."""
        await self._write(
            "UPDATE outbox SET attempts = attempts + 1, last_error = %s WHERE id = %s",
            (error, id),
        )

    async def remove(self, id: int) -> None:
        """Drop a notification: delivered or given up (no-op when already gone).

        Outside a caller's transaction it commits without waiting for the
        server's flush (``synchronous_commit = off``), as SQLite's ``remove``
        does: at worst a notification is sent once more after a crash.
        """
        if self._tx.get() is not None:
            await self._write("DELETE FROM outbox WHERE id = %s", (id,))
            return
        async with self.transaction():
            await self._write("SET LOCAL synchronous_commit TO off")
            await self._write("DELETE FROM outbox WHERE id = %s", (id,))

    async def discard(self, receiver: str) -> int:
        """Drop every notification of ``receiver`` (no longer configured); return how many."""
        return await self._write("DELETE FROM outbox WHERE receiver = %s", (receiver,))

    async def pending_counts(self) -> dict[str, int]:
        """Receiver -> number of notifications waiting (receivers with none omitted)."""
        rows = await self._read("SELECT receiver, count(*) FROM outbox GROUP BY receiver")
        return {r[0]: int(r[1]) for r in rows}

    # -- the cluster: leases and ownership (rules in cluster.py) --

    async def renew_lease(self, node: str, ttl: float) -> bool:
        """Extend ``node``'s lease to the database's ``now()`` plus ``ttl`` seconds.

        Returns False when the node had a lease that had already expired: its
        services may have moved, so whatever it believed it owned is stale.
        True for a lease still running, or a node joining.
        """
        async with self.transaction():
            old = await self._read(
                "SELECT expires_at > now() FROM node WHERE name = %s FOR UPDATE", (node,)
            )
            await self._write(
                "INSERT INTO node (name, expires_at) "
                "VALUES (%(node)s, now() + %(ttl)s * interval '1 second') "
                "ON CONFLICT (name) DO UPDATE "
                "SET expires_at = excluded.expires_at, renewed_at = now()",
                {"node": node, "ttl": ttl},
            )
        return not old or bool(old[0][0])

    async def leave(self, node: str) -> None:
        """End ``node``'s lease now (a clean stop): its services move at the next rebalance."""
        await self._write("DELETE FROM node WHERE name = %s", (node,))

    async def nodes(self) -> list[NodeLease]:
        """Every node with a lease row, live or expired, by name."""
        rows = await self._read(
            "SELECT name, extract(epoch FROM expires_at)::float8, "
            "extract(epoch FROM renewed_at)::float8, expires_at > now() "
            "FROM node ORDER BY name"
        )
        return [NodeLease(str(r[0]), float(r[1]), float(r[2]), bool(r[3])) for r in rows]

    async def owners(self) -> dict[str, Ownership]:
        """Service -> its current owner and epoch."""
        rows = await self._read("SELECT service, node, epoch FROM owner")
        return {str(r[0]): Ownership(str(r[1]), int(r[2])) for r in rows}

    async def deliverers(self) -> dict[str, str]:
        """Receiver -> the node that holds the delivery of its queue (``claim_delivery``)."""
        rows = await self._read(
            "SELECT receiver, node FROM delivery "
            "WHERE EXISTS (SELECT 1 FROM node WHERE name = delivery.node AND expires_at > now())"
        )
        return {str(r[0]): str(r[1]) for r in rows}

    async def rebalance(self, services: Iterable[str]) -> dict[str, Ownership]:
        """Give each of ``services`` to its rendezvous owner among the live nodes.

        Any node may call it at any time: calls are serialised, and an owner
        changes (with the next epoch) only after every write fenced on the old
        epoch has committed. Returns the ownership of every service afterwards.
        """
        wanted = sorted(set(services))
        async with self.transaction():
            await self._write("SELECT pg_advisory_xact_lock(%s)", (REBALANCE_LOCK,))
            live = [
                r[0] for r in await self._read("SELECT name FROM node WHERE expires_at > now()")
            ]
            rows = await self._read(
                "SELECT service, node, epoch FROM owner WHERE service = ANY(%s) FOR UPDATE",
                (wanted,),
            )
            current = {str(r[0]): Ownership(str(r[1]), int(r[2])) for r in rows}
            changes = cluster.plan(wanted, live, current)
            if changes:
                async with self._conn() as conn, conn.cursor() as cur:
                    await cur.executemany(
                        "INSERT INTO owner (service, node, epoch) VALUES (%s, %s, %s) "
                        "ON CONFLICT (service) DO UPDATE "
                        "SET node = excluded.node, epoch = excluded.epoch",
                        [(s, o.node, o.epoch) for s, o in sorted(changes.items())],
                    )
        return {**current, **changes}

    async def fence(self, service: str, node: str, epoch: int) -> None:
        """Inside a transaction: raise ``cluster.Fenced`` unless ``node`` holds ``epoch``.

        The ownership row stays share-locked until the transaction ends, so it
        cannot change hands before the writes made under it commit.
        """
        assert self._tx.get() is not None, "fence() belongs inside transaction()"
        rows = await self._read(
            "SELECT node, epoch FROM owner WHERE service = %s FOR SHARE", (service,)
        )
        now = Ownership(str(rows[0][0]), int(rows[0][1])) if rows else None
        cluster.check(node, epoch, now, service)

    async def save_owned_states(
        self,
        node: str,
        states: Mapping[str, tuple[int, ServiceState]],
        *,
        mono_now: float,
        wall_now: float,
    ) -> list[str]:
        """Save each ``name: (epoch, state)`` that ``node`` still holds at that epoch.

        One transaction; returns the names refused (owned by another node or
        under another epoch now). A state older than the stored one (fewer
        ``checks``: a confirmed change was saved since this batch was taken) is
        left alone, so a late batch never takes back a notified change.
        """
        names = sorted(states)
        async with self.transaction():
            rows = await self._read(
                "SELECT service, epoch FROM owner WHERE node = %s AND service = ANY(%s) FOR SHARE",
                (node, names),
            )
            held = {str(r[0]): int(r[1]) for r in rows}
            ok = [n for n in names if held.get(n) == states[n][0]]
            if ok:
                async with self._conn() as conn, conn.cursor() as cur:
                    await cur.executemany(
                        _SAVE_STATE_IF_NEWER,
                        [
                            {
                                "name": n,
                                **encode_state(states[n][1], mono_now=mono_now, wall_now=wall_now),
                            }
                            for n in ok
                        ],
                    )
        return [n for n in names if n not in set(ok)]

    async def state_counts(self, names: Iterable[str]) -> dict[str, int]:
        """How many of the services ``names`` are up, down and unknown (never saved: unknown)."""
        wanted = sorted(set(names))
        rows = await self._read(
            "SELECT state, count(*) FROM service WHERE name = ANY(%s) GROUP BY state", (wanted,)
        )
        counts = {"up": 0, "down": 0}
        for state, count in rows:
            if state in counts:
                counts[str(state)] = int(count)
        counts["unknown"] = len(wanted) - counts["up"] - counts["down"]
        return counts

    async def claim_delivery(self, receiver: str, key: str, node: str, epoch: int) -> bool:
        """Take the delivery of ``receiver``'s queue for ``node``, owning ``key`` at ``epoch``.

        True when ``node`` holds it now: it held it already, or nobody did, or
        its holder's lease has run out (by the database's clock). False while
        another live node holds it (it releases it once its item in hand has
        left, see ``release_delivery``), or when ``node`` no longer holds
        ``key`` at ``epoch``. The owner row stays share-locked until the
        claim commits, so ownership cannot change hands in between.
        """
        try:
            async with self.fenced(key, node, epoch):
                rows = await self._read(
                    "INSERT INTO delivery (receiver, node, epoch) VALUES (%(r)s, %(n)s, %(e)s) "
                    "ON CONFLICT (receiver) DO UPDATE "
                    "SET node = excluded.node, epoch = excluded.epoch "
                    "WHERE delivery.node = excluded.node OR NOT EXISTS "
                    "(SELECT 1 FROM node WHERE name = delivery.node AND expires_at > now()) "
                    "RETURNING node",
                    {"r": receiver, "n": node, "e": epoch},
                )
        except cluster.Fenced:
            return False
        return bool(rows)

    async def release_delivery(self, receiver: str, node: str, epoch: int) -> None:
        """Give up the delivery of ``receiver``'s queue that ``node`` claimed at ``epoch``.

        A claim taken again since (another epoch) stays.
        """
        await self._write(
            "DELETE FROM delivery WHERE receiver = %s AND node = %s AND epoch = %s",
            (receiver, node, epoch),
        )

    async def release_deliveries(self, node: str) -> None:
        """Give up every queue ``node`` holds (it starts afresh: nothing is in its hands)."""
        await self._write("DELETE FROM delivery WHERE node = %s", (node,))

    @contextlib.asynccontextmanager
    async def fenced(self, service: str, node: str, epoch: int) -> AsyncIterator[None]:
        """A transaction whose writes commit only if ``node`` still holds ``epoch``."""
        async with self.transaction():
            await self.fence(service, node, epoch)
            yield


# --- opening, step by step --------------------------------------------------


@contextlib.contextmanager
def _as_store_error(where: str, password: str | None, what: str) -> Iterator[None]:
    try:
        yield
    except _ENVIRONMENTAL as exc:
        detail = scrub(str(exc).strip(), password) or type(exc).__name__
        raise StoreError(f"{where}: {what}: {detail}") from None


async def _version(db: Conn) -> int | None:
    """The schema version, or None when the database has no watchdog schema yet."""
    cur = await db.execute("SELECT to_regclass('watchdog_schema') IS NOT NULL")
    row = await cur.fetchone()
    if row is None or not row[0]:
        return None
    cur = await db.execute("SELECT version FROM watchdog_schema WHERE id = 1")
    row = await cur.fetchone()
    return None if row is None else int(row[0])


async def _check_version(db: Conn, where: str) -> None:
    version = await _version(db)
    if not version:
        raise StoreNotReady(
            f"{where}: no state in this database yet; the daemon creates it at its first start"
        )
    if version != schema_version():
        raise StoreError(
            f"{where}: the state database has schema version {version}, this version of "
            f"snmp-watchdog reads version {schema_version()}; run the matching version (the "
            f"daemon upgrades an older database when it starts)"
        )


async def _migrate(db: Conn, where: str) -> bool:
    """Bring the schema to ``schema_version()``; True when this call created it."""
    target = schema_version()
    created = False
    while True:
        async with db.transaction():
            await db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            await db.execute(
                "CREATE TABLE IF NOT EXISTS watchdog_schema (id integer PRIMARY KEY "
                "CHECK (id = 1), version integer NOT NULL, cluster_version integer NOT NULL)"
            )
            await db.execute(
                "INSERT INTO watchdog_schema (id, version, cluster_version) VALUES (1, 0, 0) "
                "ON CONFLICT DO NOTHING"
            )
            version = await _version(db) or 0
            if version > target:
                raise StoreError(
                    f"{where}: the state database has schema version {version}, written by a "
                    f"newer snmp-watchdog; this version knows up to {target}. Run the newer "
                    f"version, or restore the dump taken before the upgrade"
                )
            if version == target:
                await _migrate_cluster(db, where)
                return created
            created = created or version == 0
            try:
                await _MIGRATIONS[version](db)
            except psycopg.Error as exc:  # rolled back: the schema stays as it was
                raise StoreError(
                    f"{where}: upgrading the schema to version {version + 1}: {exc}"
                ) from None
            await db.execute("UPDATE watchdog_schema SET version = %s WHERE id = 1", (version + 1,))


async def _migrate_cluster(db: Conn, where: str) -> None:
    """Bring the cluster tables to ``len(_CLUSTER_MIGRATIONS)`` (inside ``_migrate``'s lock)."""
    cur = await db.execute("SELECT cluster_version FROM watchdog_schema WHERE id = 1")
    row = await cur.fetchone()
    version = 0 if row is None else int(row[0])
    target = len(_CLUSTER_MIGRATIONS)
    if version > target:
        raise StoreError(
            f"{where}: the cluster tables have version {version}, written by a newer "
            f"snmp-watchdog; this version knows up to {target}. Run the newer version"
        )
    for step in range(version, target):
        try:
            await _CLUSTER_MIGRATIONS[step](db)
        except psycopg.Error as exc:
            raise StoreError(
                f"{where}: upgrading the cluster tables to version {step + 1}: {exc}"
            ) from None
    await db.execute("UPDATE watchdog_schema SET cluster_version = %s WHERE id = 1", (target,))


# --- the cluster: leases and ownership ---------------------------------------------


async def _cluster_v1(db: Conn) -> None:
    """Node leases and service ownership (``cluster.py`` has the rules)."""
    await db.execute(
        """
        CREATE TABLE node (
            name       text PRIMARY KEY,
            expires_at timestamptz NOT NULL,  -- the database's now() + TTL at the last renewal
            joined_at  timestamptz NOT NULL DEFAULT now(),
            renewed_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    await db.execute(
        """
        CREATE TABLE owner (
            service text PRIMARY KEY,
            node    text NOT NULL,
            epoch   bigint NOT NULL  -- the fencing token: grows at every change of owner
        )
        """
    )


async def _cluster_v2(db: Conn) -> None:
    """Who delivers each receiver's queue: one node at a time, even across a handover."""
    await db.execute(
        """
        CREATE TABLE delivery (
            receiver text PRIMARY KEY,
            node     text NOT NULL,
            epoch    bigint NOT NULL  -- the epoch of the receiver's ownership when claimed
        )
        """
    )


#: Tables only a shared store has, versioned apart from the common schema
#: (``watchdog_schema.cluster_version``).
_CLUSTER_MIGRATIONS: list[Callable[[Conn], Any]] = [_cluster_v1, _cluster_v2]
