"""What ``watchdog status`` reads from a shared PostgreSQL store: states, nodes, owners."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from snmp_watchdog import model
from snmp_watchdog.cluster import Ownership
from snmp_watchdog.exceptions import StoreNotReady
from snmp_watchdog.state import ServiceState
from snmp_watchdog.store_pg import NodeLease, PgStore


@dataclass(frozen=True, slots=True)
class Shared:
    states: dict[str, ServiceState]
    pending: dict[str, int]
    nodes: list[NodeLease]
    owners: dict[str, Ownership]
    deliverers: dict[str, str]  # receiver -> the live node delivering its queue


def read(settings: model.Settings) -> Shared:
    """Read the shared store (read-only); empty when no node has created it yet."""
    assert settings.store is not None
    password = settings.store_password.reveal() if settings.store_password else None

    async def body() -> Shared:
        try:
            store = await PgStore.open(settings.store or "", password=password, readonly=True)
        except StoreNotReady:
            return Shared({}, {}, [], {}, {})
        try:
            now = time.time()
            return Shared(
                await store.load_states(mono_now=now, wall_now=now),
                await store.pending_counts(),
                await store.nodes(),
                await store.owners(),
                await store.deliverers(),
            )
        finally:
            await store.close()

    return asyncio.run(body())
