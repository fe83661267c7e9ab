"""The state store as the daemon sees it: one async interface, two backends.

``StateStore`` is what a backend offers: the service states, the stable
service numbers, the notification sequence, small values (``meta``) and the
outbox, with exactly the meaning ``store.py`` documents for SQLite. The
backends:

* ``SqliteStateStore``: the embedded SQLite ``Store`` of ``state_dir``, the
  default, one daemon per directory. Its calls are a few indexed statements on
  a local file, so they run directly on the event loop, as they always have.
* ``store_pg.PgStore``: a PostgreSQL database (``watchdog.store:
  postgresql://...``), which several watchdogs share; psycopg 3 with an async
  connection pool, so a slow database delays only the coroutine that waits
  for it.

Both keep the same schema (version numbers and migrations move together; the
SQL dialects differ only where the engines do) and pass the same tests.

Transactions: ``async with store.transaction():`` groups the calls inside it
(made by the same task) into one commit; it nests, and an exception rolls the
outermost one back. Inside a transaction, await nothing but the store: on
SQLite a call made meanwhile by another task would join it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from snmp_watchdog.state import ServiceState
from snmp_watchdog.store import OutboxRow, Store


class StateStore(Protocol):
    """An open state store; ``await close()`` when done."""

    #: Where the data lives, for messages: a path, or a URL without its password.
    where: str
    #: True when this open created the store (a first start).
    created: bool

    def transaction(self) -> AbstractAsyncContextManager[None]: ...

    async def close(self) -> None: ...

    # services
    async def load_states(self, *, mono_now: float, wall_now: float) -> dict[str, ServiceState]: ...

    async def save_state(
        self, name: str, st: ServiceState, *, mono_now: float, wall_now: float
    ) -> None: ...

    async def save_states(
        self, states: Iterable[tuple[str, ServiceState]], *, mono_now: float, wall_now: float
    ) -> None: ...

    async def forget(self, names: Iterable[str]) -> None: ...

    async def save_told(self, name: str, told: str | None) -> None: ...

    async def forget_told(self, names: Iterable[str]) -> dict[str, str | None]: ...

    async def known_indexes(self) -> dict[str, int]: ...

    async def service_indexes(self, names: Iterable[str]) -> dict[str, int]: ...

    # sequence and meta
    async def next_sequence(self, *, above: int = 0) -> int: ...

    async def last_sequence(self) -> int: ...

    async def meta_get(self, key: str) -> str | None: ...

    async def meta_set(self, key: str, value: str) -> None: ...

    # outbox
    async def enqueue(
        self, receiver: str, payload: bytes, *, created: float, sequence: int
    ) -> int: ...

    async def pending(self, receiver: str, limit: int, *, after: int = 0) -> list[OutboxRow]: ...

    async def count_pending(self, receiver: str, *, after: int = 0) -> int: ...

    async def mark_attempt(self, id: int, error: str) -> None: ...

    async def remove(self, id: int) -> None: ...

    async def discard(self, receiver: str) -> int: ...

    async def pending_counts(self) -> dict[str, int]: ...


class SqliteStateStore:
    """``StateStore`` over the SQLite ``Store``: the same calls, the same behaviour."""

    def __init__(self, store: Store) -> None:
        self.sync = store  # the engine, for what reads it beside the daemon (tests, status)
        self.where = str(store.path)
        self.created = store.created

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        with self.sync.transaction():
            yield

    async def close(self) -> None:
        self.sync.close()

    async def load_states(self, *, mono_now: float, wall_now: float) -> dict[str, ServiceState]:
        return self.sync.load_states(mono_now=mono_now, wall_now=wall_now)

    async def save_state(
        self, name: str, st: ServiceState, *, mono_now: float, wall_now: float
    ) -> None:
        self.sync.save_state(name, st, mono_now=mono_now, wall_now=wall_now)

    async def save_states(
        self, states: Iterable[tuple[str, ServiceState]], *, mono_now: float, wall_now: float
    ) -> None:
        self.sync.save_states(states, mono_now=mono_now, wall_now=wall_now)

    async def forget(self, names: Iterable[str]) -> None:
        self.sync.forget(names)

    async def save_told(self, name: str, told: str | None) -> None:
        self.sync.save_told(name, told)

    async def forget_told(self, names: Iterable[str]) -> dict[str, str | None]:
        return self.sync.forget_told(names)

    async def known_indexes(self) -> dict[str, int]:
        return self.sync.known_indexes()

    async def service_indexes(self, names: Iterable[str]) -> dict[str, int]:
        return self.sync.service_indexes(names)

    async def next_sequence(self, *, above: int = 0) -> int:
        return self.sync.next_sequence(above=above)

    async def last_sequence(self) -> int:
        return self.sync.last_sequence()

    async def meta_get(self, key: str) -> str | None:
        return self.sync.meta_get(key)

    async def meta_set(self, key: str, value: str) -> None:
        self.sync.meta_set(key, value)

    async def enqueue(self, receiver: str, payload: bytes, *, created: float, sequence: int) -> int:
        return self.sync.enqueue(receiver, payload, created=created, sequence=sequence)

    async def pending(self, receiver: str, limit: int, *, after: int = 0) -> list[OutboxRow]:
        return self.sync.pending(receiver, limit, after=after)

    async def count_pending(self, receiver: str, *, after: int = 0) -> int:
        return self.sync.count_pending(receiver, after=after)

    async def mark_attempt(self, id: int, error: str) -> None:
        self.sync.mark_attempt(id, error)

    async def remove(self, id: int) -> None:
        self.sync.remove(id)

    async def discard(self, receiver: str) -> int:
        return self.sync.discard(receiver)

    async def pending_counts(self) -> dict[str, int]:
        return self.sync.pending_counts()
