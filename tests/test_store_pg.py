"""The PostgreSQL store against a real PostgreSQL server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import psycopg
import pytest

from snmp_watchdog import store, store_pg
from snmp_watchdog.exceptions import StoreError, StoreNotReady
from snmp_watchdog.state import ServiceState
from snmp_watchdog.storage import SqliteStateStore, StateStore
from snmp_watchdog.store_pg import PgStore
from tests.helpers import free_tcp_port, run_bounded
from tests.postgres import PostgresServer

T = TypeVar("T")


def test_the_test_server_wants_the_password_over_tcp(postgres_server: PostgresServer) -> None:
    """The private server behaves like a real deployment: TCP on loopback, password needed."""
    name = postgres_server.create_database()
    with psycopg.connect(postgres_server.url(name)) as conn:
        row = conn.execute("SELECT current_database(), inet_server_addr()::text").fetchone()
    assert row == (name, "127.0.0.1/32")
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(postgres_server.url(name, password="wrong")).close()  # noqa: S106


# --- the PostgreSQL backend: what differs from SQLite ----------------------------

MONO = 1000.0
WALL = 1_700_000_000.0


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return run_bounded(coroutine, 30.0)


def test_schema_versions_move_together_with_sqlite() -> None:
    """A migration added to one backend and not the other is caught here."""
    assert store_pg.schema_version() == store.schema_version()


def test_watchdogs_starting_together_create_the_schema_once(pg_url: str) -> None:
    async def body() -> list[bool]:
        stores = await asyncio.gather(*(PgStore.open(pg_url) for _ in range(4)))
        created = [s.created for s in stores]
        numbers = await asyncio.gather(*(s.service_indexes(["a", "b", "c"]) for s in stores))
        assert all(n == numbers[0] for n in numbers)
        for s in stores:
            await s.close()
        return created

    assert sorted(run(body())) == [False, False, False, True]


def test_a_newer_schema_is_refused(pg_url: str) -> None:
    async def body() -> None:
        await (await PgStore.open(pg_url)).close()
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as db:
            await db.execute("UPDATE watchdog_schema SET version = 99")
        with pytest.raises(StoreError, match="schema version 99, written by a newer"):
            await PgStore.open(pg_url)
        with pytest.raises(StoreError, match="schema version 99"):
            await PgStore.open(pg_url, readonly=True)

    run(body())


def test_a_failing_migration_leaves_the_schema_as_it_was(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    current = store_pg.schema_version()

    async def broken(db: psycopg.AsyncConnection[Any]) -> None:
        await db.execute("ALTER TABLE service ADD COLUMN note text")
        await db.execute("SELECT * FROM no_such_table")

    async def body() -> None:
        await (await PgStore.open(pg_url)).close()
        monkeypatch.setattr(store_pg, "_MIGRATIONS", [*store_pg._MIGRATIONS, broken])
        with pytest.raises(StoreError, match=f"upgrading the schema to version {current + 1}"):
            await PgStore.open(pg_url)
        async with await psycopg.AsyncConnection.connect(pg_url) as db:
            cur = await db.execute("SELECT version FROM watchdog_schema")
            assert await cur.fetchall() == [(current,)]
            cur = await db.execute(
                "SELECT count(*) FROM information_schema.columns WHERE column_name = 'note'"
            )
            assert await cur.fetchall() == [(0,)]

    run(body())


def test_readonly_open_reads_and_never_writes(pg_url: str) -> None:
    async def body() -> None:
        with pytest.raises(StoreNotReady, match="no state in this database yet"):
            await PgStore.open(pg_url, readonly=True)
        daemon = await PgStore.open(pg_url)
        await daemon.save_state("mail", ServiceState(checks=3), mono_now=MONO, wall_now=WALL)
        status = await PgStore.open(pg_url, readonly=True)
        assert await status.load_states(mono_now=MONO, wall_now=WALL) == {
            "mail": ServiceState(checks=3)
        }
        with pytest.raises(StoreError, match="read-only transaction"):
            await status.meta_set("k", "v")
        await status.close()
        await daemon.close()

    run(body())


def test_the_password_never_appears_in_an_error(postgres_server: PostgresServer) -> None:
    """Given apart or in the URL: a refused login names the server, not the password."""
    name = postgres_server.create_database()
    wrong = "not-the-pw-42"

    async def body() -> None:
        for url, password in [
            (postgres_server.url(name, password=None), wrong),
            (postgres_server.url(name, password=wrong), None),
        ]:
            with pytest.raises(StoreError) as info:
                await PgStore.open(url, password=password)
            message = str(info.value)
            assert wrong not in message
            assert "password authentication failed" in message
            assert f"127.0.0.1:{postgres_server.port}/{name}" in message

    run(body())


def test_a_server_that_is_not_there_is_an_error_not_a_hang() -> None:
    url = f"postgresql://watchdog@127.0.0.1:{free_tcp_port()}/nowhere"
    with pytest.raises(StoreError, match=r"cannot connect to the state database.*refused"):
        run(PgStore.open(url, password="x", connect_timeout=2))  # noqa: S106


def test_both_backends_are_state_stores() -> None:
    """mypy checks these assignments: each backend offers the whole interface."""

    def as_interface(pg: PgStore, sqlite: SqliteStateStore) -> list[StateStore]:
        return [pg, sqlite]

    assert as_interface.__name__ == "as_interface"
