"""Both state store backends behind one blocking face, for tests written once.

``Backend`` opens the store it stands for (SQLite in a directory, or a fresh
PostgreSQL database) as often as a test likes, and runs raw SQL beside it on a
connection of its own. ``Blocking`` runs each call of the async ``StateStore``
to completion on one event loop, so a test reads like the synchronous code it
checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from snmp_watchdog.storage import SqliteStateStore, StateStore
from snmp_watchdog.store import Store
from snmp_watchdog.store_pg import PgStore

T = TypeVar("T")


class Blocking:
    """A ``StateStore`` whose calls block until done: ``store.save_state(...)``."""

    def __init__(self, runner: asyncio.Runner, store: StateStore) -> None:
        self._runner = runner
        self.inner = store

    def run(self, awaitable: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await awaitable

        return self._runner.run(wrapped())

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return self.run(attr(*args, **kwargs))

        return call

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        manager = self.inner.transaction()
        self.run(manager.__aenter__())
        try:
            yield
        except BaseException as exc:
            if not self.run(manager.__aexit__(type(exc), exc, exc.__traceback__)):
                raise
        else:
            self.run(manager.__aexit__(None, None, None))

    def close(self) -> None:
        self.run(self.inner.close())

    def __enter__(self) -> Blocking:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Backend:
    """One store to open and reopen, and a side door to its tables."""

    name: str

    def __init__(self) -> None:
        # One loop for every call: a context shared by all runs keeps a
        # transaction's connection across the calls made inside it.
        self.runner = asyncio.Runner()
        self._open: list[Blocking] = []

    def open(self) -> Blocking:
        store = Blocking(self.runner, self.runner.run(self._open_store()))
        self._open.append(store)
        return store

    async def _open_store(self) -> StateStore:
        raise NotImplementedError

    def execute(self, sql: str) -> list[tuple[Any, ...]]:
        """Run one statement on a connection of its own (autocommit); its rows, if any."""
        raise NotImplementedError

    def shutdown(self) -> None:
        for store in self._open:
            with contextlib.suppress(Exception):
                store.close()
        self.runner.close()


class SqliteBackend(Backend):
    name = "sqlite"

    def __init__(self, state_dir: Path) -> None:
        super().__init__()
        self.state_dir = state_dir

    async def _open_store(self) -> StateStore:
        return SqliteStateStore(Store.open(self.state_dir))

    def execute(self, sql: str) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(self.state_dir / "state.db", isolation_level=None)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()


class PgBackend(Backend):
    name = "postgresql"

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    async def _open_store(self) -> StateStore:
        return await PgStore.open(self.url)

    def execute(self, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True) as db:
            cur = db.execute(sql.encode())
            return cur.fetchall() if cur.description else []


BackendFactory = Callable[[], Backend]
