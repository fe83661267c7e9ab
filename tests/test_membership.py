"""Two nodes in one process, each with its own connections to a real PostgreSQL.

Node a talks to the database through a relay that can cut the line (a
partition); node b directly. Times are read on one monotonic clock, so the
order of events across the nodes is exact.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Awaitable, Callable

import pytest

from snmp_watchdog import cluster
from snmp_watchdog.cluster import Fenced, LeasePolicy
from snmp_watchdog.membership import Member, Owned
from snmp_watchdog.state import ServiceState
from snmp_watchdog.store_pg import PgStore
from tests.helpers import run_bounded
from tests.tcp_proxy import Proxy

SERVICES = [f"svc-{n:03}" for n in range(30)]
POLICY = LeasePolicy(ttl=3.0, renew_every=0.5, margin=1.0)


class Node:
    """A member and the history of what it owned: (monotonic time, owned)."""

    def __init__(self, store: PgStore, name: str) -> None:
        self.store = store
        self.history: list[tuple[float, Owned]] = []
        self.member = Member(
            store,
            name,
            POLICY,
            services=lambda: SERVICES,
            on_change=lambda owned: self.history.append((time.monotonic(), owned)),
        )
        self.task = asyncio.create_task(self.member.run())

    @property
    def owned(self) -> Owned:
        return self.history[-1][1] if self.history else {}

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def until(condition: Callable[[], bool], within: float) -> float:
    """Wait for ``condition``; return the monotonic time it became true."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s")
        await asyncio.sleep(0.01)
    return time.monotonic()


def split(a: Node, b: Node) -> bool:
    """Both nodes own services, none of them both, and every service is owned."""
    return (
        bool(a.owned)
        and bool(b.owned)
        and not set(a.owned) & set(b.owned)
        and len(a.owned) + len(b.owned) == len(SERVICES)
    )


def through(url: str, port: int) -> str:
    parts = urllib.parse.urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo}@127.0.0.1:{port}"))


def two_nodes(pg_url: str, body: Callable[[Node, Node, Proxy], Awaitable[None]]) -> None:
    async def main() -> None:
        proxy = Proxy(urllib.parse.urlsplit(pg_url).port or 5432)
        await proxy.start()
        store_a = await PgStore.open(
            through(pg_url, proxy.port), connect_timeout=2, idle_timeout=1.0, lock_timeout=0.5
        )
        store_b = await PgStore.open(pg_url, idle_timeout=1.0, lock_timeout=0.5)
        a, b = Node(store_a, "a"), Node(store_b, "b")
        try:
            await body(a, b, proxy)
        finally:
            proxy.resume()
            await a.stop()
            await b.stop()
            await store_b.close()
            await store_a.close()
            await proxy.close()

    run_bounded(main(), 60.0)


def test_nodes_split_the_services_and_a_clean_stop_hands_them_over(pg_url: str) -> None:
    async def body(a: Node, b: Node, proxy: Proxy) -> None:
        await until(lambda: split(a, b), 5)
        assert set(a.owned) == {s for s in SERVICES if cluster.owner(s, ["a", "b"]) == "a"}
        await a.stop()
        await a.member.leave()
        assert a.owned == {}
        b.member.poke()
        await until(lambda: len(b.owned) == len(SERVICES), POLICY.renew_every * 4)

    two_nodes(pg_url, body)


def test_a_partitioned_node_fences_itself_before_its_services_move(pg_url: str) -> None:
    """The safety property: at no moment do two nodes act for the same service."""

    async def body(a: Node, b: Node, proxy: Proxy) -> None:
        await until(lambda: split(a, b), 5)
        held_by_a = dict(a.owned)
        cut = time.monotonic()
        proxy.pause()  # a can no longer reach the database
        fenced = await until(lambda: a.owned == {}, POLICY.ttl)
        assert not a.member.may_act()
        taken = await until(lambda: set(held_by_a) <= set(b.owned), POLICY.ttl * 2)
        # a stopped acting before b could take anything of it ...
        assert fenced < taken
        assert all(t > fenced for t, owned in b.history if t > cut and set(owned) & set(held_by_a))
        # ... within its TTL minus the margin, and the failover took at most
        # the lease, one renewal interval and some slack for the test machine.
        assert fenced - cut <= POLICY.ttl - POLICY.margin + 1.0
        assert taken - cut <= POLICY.ttl + POLICY.renew_every + 2.0
        moved_epochs = {s: b.owned[s] for s in held_by_a}
        assert all(moved_epochs[s] == held_by_a[s] + 1 for s in held_by_a)

        # a's writes under its old epochs are refused, even before it learns anything.
        service = next(iter(held_by_a))
        with pytest.raises(Fenced):
            async with b.store.fenced(service, "a", held_by_a[service]):
                await b.store.save_state(service, ServiceState(), mono_now=0.0, wall_now=0.0)

        proxy.resume()  # the partition heals: a rejoins under new epochs
        await until(lambda: bool(a.owned), POLICY.ttl * 2)
        assert all(a.owned[s] > held_by_a.get(s, 0) for s in a.owned)
        b.member.poke()
        await until(lambda: split(a, b), POLICY.ttl * 2)

    two_nodes(pg_url, body)
