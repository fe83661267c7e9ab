"""Leases, ownership and fenced writes in a real PostgreSQL, two store clients as two nodes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import psycopg
import pytest

from snmp_watchdog import cluster
from snmp_watchdog.cluster import Fenced, Ownership
from snmp_watchdog.cluster_daemon import ClusterQueue
from snmp_watchdog.notify.message import Message, encode
from snmp_watchdog.state import ServiceState, State
from snmp_watchdog.store_pg import PgStore
from tests.helpers import run_bounded

T = TypeVar("T")
SERVICES = [f"svc-{n:03}" for n in range(60)]
MONO = 1000.0
WALL = 1_700_000_000.0


def with_nodes(
    pg_url: str, body: Callable[[PgStore, PgStore], Awaitable[T]], bound: float = 30.0
) -> T:
    """Run ``body(a, b)`` with two store clients of one database: nodes 'a' and 'b'."""

    async def main() -> T:
        a = await PgStore.open(pg_url)
        b = await PgStore.open(pg_url)
        try:
            return await body(a, b)
        finally:
            await a.close()
            await b.close()

    coroutine: Coroutine[Any, Any, T] = main()
    return run_bounded(coroutine, bound)


async def expire(store: PgStore, node: str) -> None:
    """Make ``node``'s lease run out as if it had stopped renewing (by the database clock)."""
    await store.renew_lease(node, 0.05)
    await asyncio.sleep(0.1)


def test_live_nodes_share_the_services_and_agree_on_the_owners(pg_url: str) -> None:
    async def body(a: PgStore, b: PgStore) -> None:
        assert await a.renew_lease("a", 30) is True  # joining
        assert await b.renew_lease("b", 30) is True
        assert await a.renew_lease("a", 30) is True  # still running
        owners = await a.rebalance(SERVICES)
        assert owners == {s: Ownership(cluster.owner(s, ["a", "b"]) or "", 1) for s in SERVICES}
        assert {o.node for o in owners.values()} == {"a", "b"}
        assert await b.rebalance(SERVICES) == owners  # nothing moves: nothing written
        assert await b.owners() == owners
        leases = await b.nodes()
        assert [(n.node, n.live) for n in leases] == [("a", True), ("b", True)]
        assert all(n.expires_at - n.renewed_at == pytest.approx(30, abs=1) for n in leases)

    with_nodes(pg_url, body)


def test_a_fenced_write_commits_for_the_owner_and_is_refused_after_failover(
    pg_url: str,
) -> None:
    """Node a pauses past its lease; b takes its services; a's late writes are refused whole."""

    async def body(a: PgStore, b: PgStore) -> None:
        await a.renew_lease("a", 30)
        await b.renew_lease("b", 30)
        owners = await a.rebalance(SERVICES)
        mine = next(s for s, o in owners.items() if o.node == "a")
        epoch = owners[mine].epoch
        down = ServiceState(state=State.DOWN, notified=State.DOWN, checks=3)

        async with a.fenced(mine, "a", epoch):
            await a.save_state(mine, down, mono_now=MONO, wall_now=WALL)
            seq = await a.next_sequence()
            await a.enqueue("nnm", b"down", created=WALL, sequence=seq)
        assert seq == 1

        await expire(a, "a")  # a is paused (SIGSTOP) past its lease ...
        await b.renew_lease("b", 30)
        moved = await b.rebalance(SERVICES)  # ... and b takes over
        assert moved[mine] == Ownership("b", epoch + 1)
        assert all(o.node == "b" for o in moved.values())

        up = ServiceState(state=State.UP, notified=State.UP, checks=4)

        async def late_write() -> None:  # a wakes up and carries on
            async with a.fenced(mine, "a", epoch):
                await a.save_state(mine, up, mono_now=MONO, wall_now=WALL)
                await a.next_sequence()
                await a.enqueue("nnm", b"up from a fenced node", created=WALL, sequence=2)

        with pytest.raises(Fenced, match=rf"{mine}: owned by b \(epoch {epoch + 1}\), not by a"):
            await late_write()
        # Nothing of it landed: the state, the sequence and the outbox are as b found them.
        assert (await b.load_states(mono_now=MONO, wall_now=WALL))[mine] == down
        assert await b.last_sequence() == 1
        assert [p.payload for p in await b.pending("nnm", 10)] == [b"down"]
        # The new owner writes under its own epoch; the sequence goes on without a gap.
        async with b.fenced(mine, "b", epoch + 1):
            await b.save_state(mine, up, mono_now=MONO, wall_now=WALL)
            assert await b.next_sequence() == 2
        # a learns at its next renewal that its lease had gone.
        assert await a.renew_lease("a", 30) is False

    with_nodes(pg_url, body)


def test_ownership_cannot_change_under_a_write_in_progress(pg_url: str) -> None:
    """A rebalance waits for the fenced transaction holding the old epoch to commit."""
    events: list[str] = []

    async def body(a: PgStore, b: PgStore) -> None:
        await a.renew_lease("a", 30)
        owners = await a.rebalance(SERVICES)  # a alone: a owns everything
        service = SERVICES[0]
        writing = asyncio.Event()

        async def write() -> None:
            async with a.fenced(service, "a", owners[service].epoch):
                await a.save_state(service, ServiceState(), mono_now=MONO, wall_now=WALL)
                writing.set()
                await asyncio.sleep(0.5)  # a slow commit: the rebalance must wait for it
                events.append("a committed")

        async def take_over() -> None:
            await writing.wait()
            await a.leave("a")
            await b.renew_lease("b", 30)
            await b.rebalance(SERVICES)
            events.append("b took over")

        await asyncio.gather(write(), take_over())
        assert (await b.owners())[service] == Ownership("b", 2)

    with_nodes(pg_url, body)
    assert events == ["a committed", "b took over"]


def test_a_node_that_leaves_hands_its_services_over_at_once(pg_url: str) -> None:
    async def body(a: PgStore, b: PgStore) -> None:
        await a.renew_lease("a", 30)
        await b.renew_lease("b", 30)
        await a.rebalance(SERVICES)
        await a.leave("a")
        owners = await b.rebalance(SERVICES)
        assert {o.node for o in owners.values()} == {"b"}
        assert [n.node for n in await b.nodes()] == ["b"]
        # With no live node at all, the services stay where they were until one comes.
        await b.leave("b")
        assert await b.rebalance(SERVICES) == owners
        assert await a.renew_lease("a", 30) is True  # a rejoins as a new node
        assert {o.node for o in (await a.rebalance(SERVICES)).values()} == {"a"}

    with_nodes(pg_url, body)


def test_an_expired_lease_is_not_live_by_the_database_clock(pg_url: str) -> None:
    async def body(a: PgStore, b: PgStore) -> None:
        await a.renew_lease("a", 30)
        await expire(b, "b")
        assert [(n.node, n.live) for n in await a.nodes()] == [("a", True), ("b", False)]
        owners = await a.rebalance(SERVICES)
        assert {o.node for o in owners.values()} == {"a"}

    with_nodes(pg_url, body)


def test_fence_outside_a_transaction_is_a_bug(pg_url: str) -> None:
    async def body(a: PgStore, b: PgStore) -> None:
        with pytest.raises(AssertionError, match="inside transaction"):
            await a.fence("x", "a", 1)

    with_nodes(pg_url, body)


def test_a_late_batch_of_counters_never_takes_back_a_notified_change(pg_url: str) -> None:
    """The flush of states without news may commit after a change saved since: it loses."""

    async def body(a: PgStore, b: PgStore) -> None:
        await a.renew_lease("a", 30)
        owners = await a.rebalance(SERVICES)
        name, epoch = SERVICES[0], owners[SERVICES[0]].epoch
        failing = ServiceState(state=State.UP, notified=State.UP, failures=1, checks=9)
        down = ServiceState(state=State.DOWN, notified=State.DOWN, failures=2, checks=10)
        async with a.fenced(name, "a", epoch):
            await a.save_state(name, down, mono_now=MONO, wall_now=WALL)
        refused = await a.save_owned_states(
            "a", {name: (epoch, failing)}, mono_now=MONO, wall_now=WALL
        )
        assert refused == []  # still the owner: only older than what is stored
        assert (await b.load_states(mono_now=MONO, wall_now=WALL))[name] == down
        later = ServiceState(state=State.DOWN, notified=State.DOWN, failures=3, checks=11)
        await a.save_owned_states("a", {name: (epoch, later)}, mono_now=MONO, wall_now=WALL)
        assert (await b.load_states(mono_now=MONO, wall_now=WALL))[name] == later
        # Another node's epoch, or a service it does not hold: refused.
        assert await a.save_owned_states(
            "a", {name: (epoch + 1, later)}, mono_now=MONO, wall_now=WALL
        ) == [name]

    with_nodes(pg_url, body)


def test_a_receivers_queue_is_claimed_by_one_live_node_at_a_time(pg_url: str) -> None:
    """The new owner waits for the old one's release, or for its lease to run out."""
    key = next(f"@r{i}" for i in range(100) if cluster.owner(f"@r{i}", ["a", "b"]) == "b")
    receiver = key[1:]

    async def body(a: PgStore, b: PgStore) -> None:
        await a.renew_lease("a", 30)
        assert (await a.rebalance([key]))[key] == Ownership("a", 1)
        assert await a.claim_delivery(receiver, key, "a", 1) is True
        assert await a.claim_delivery(receiver, key, "a", 1) is True  # it holds it already
        await b.renew_lease("b", 30)
        assert (await b.rebalance([key]))[key] == Ownership("b", 2)
        assert await a.claim_delivery(receiver, key, "a", 1) is False  # fenced: epoch 1 is gone
        assert await b.claim_delivery(receiver, key, "b", 1) is False  # not its epoch
        assert await b.claim_delivery(receiver, key, "b", 2) is False  # a still holds it
        await a.release_delivery(receiver, "a", 2)  # not the epoch it claimed under: no-op
        assert await b.claim_delivery(receiver, key, "b", 2) is False
        await a.release_delivery(receiver, "a", 1)
        assert await b.claim_delivery(receiver, key, "b", 2) is True

        # A holder whose lease has run out no longer holds anyone up.
        await a.renew_lease("a", 30)
        assert (await a.rebalance([key]))[key] == Ownership("b", 2)
        await b.leave("b")
        assert (await a.rebalance([key]))[key] == Ownership("a", 3)
        assert await a.claim_delivery(receiver, key, "a", 3) is True  # b left: its claim lapsed
        await b.renew_lease("b", 30)
        assert (await b.rebalance([key]))[key] == Ownership("b", 4)
        assert await b.claim_delivery(receiver, key, "b", 4) is False
        await expire(a, "a")
        assert await b.claim_delivery(receiver, key, "b", 4) is True
        await a.renew_lease("a", 30)
        await a.release_deliveries("a")  # a node starting afresh: b's claim stays
        assert await b.claim_delivery(receiver, key, "b", 4) is True

    with_nodes(pg_url, body)


def test_a_sent_row_whose_deletion_fails_is_not_sent_again_and_deleted_later(
    pg_url: str,
) -> None:
    """While the database refuses the delete, the row is not read again and the queue is kept."""
    key = "@r"
    receiver = key[1:]

    def message(sequence: int) -> Message:
        return Message(
            notification=(1, 3, 6, 1), varbinds=(), kind="test", sequence=sequence, service=None
        )

    async def sql(statement: str) -> None:
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
            await conn.execute(statement)

    async def body(a: PgStore, b: PgStore) -> None:
        await a.renew_lease("a", 30)
        epoch = (await a.rebalance([key]))[key].epoch
        queue = ClusterQueue(a, receiver, node="a", epoch=lambda: epoch)
        for n in (1, 2):
            await a.enqueue(receiver, encode(message(n)), created=WALL, sequence=n)
        first = await queue.head()
        assert first.message.sequence == 1
        await sql(  # as a lock timeout would
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION 'row locked' USING ERRCODE = 'lock_not_available'; END $$"
        )
        await sql(
            "CREATE TRIGGER refuse BEFORE DELETE ON outbox FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
        try:
            await queue.delete(first)  # sent: its row must go
            queue.remove(first)
            queue.reset()  # read afresh, as after a change of ownership
            assert (await queue.head()).message.sequence == 2
            assert [r.sequence for r in await a.pending(receiver, 10)] == [1, 2]
            release = queue.release()
            assert release is not None
            await asyncio.sleep(1.0)
            assert not release.done()  # the next owner would send it again
        finally:
            await sql("DROP TRIGGER refuse ON outbox")
            await sql("DROP FUNCTION refuse")
        await asyncio.wait_for(release, 15)
        assert [r.sequence for r in await a.pending(receiver, 10)] == [2]

    with_nodes(pg_url, body)
