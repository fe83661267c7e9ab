"""The pure rules of a watchdog cluster: rendezvous ownership, epochs, leases."""

from __future__ import annotations

import collections

import pytest

from snmp_watchdog import cluster
from snmp_watchdog.cluster import Fenced, Lease, LeasePolicy, Ownership

SERVICES = [f"svc-{n:04}" for n in range(3000)]
NODES = ["alpha", "bravo", "charlie"]


def owners(nodes: list[str]) -> dict[str, str]:
    result = {}
    for s in SERVICES:
        node = cluster.owner(s, nodes)
        assert node is not None
        result[s] = node
    return result


# --- rendezvous hashing ---------------------------------------------------------


def test_every_node_computes_the_same_owner_whatever_the_order() -> None:
    assert owners(NODES) == owners(list(reversed(NODES)))
    assert cluster.owner("mail", []) is None


def test_the_weight_is_pinned() -> None:
    """Nodes of different versions must agree: changing the hash is a breaking change."""
    assert format(cluster.weight("node-1", "svc-0001"), "016x") == "d50e37a72404b534"


def test_services_spread_evenly() -> None:
    counts = collections.Counter(owners(NODES).values())
    assert set(counts) == set(NODES)
    for node in NODES:
        assert 900 <= counts[node] <= 1100, counts


def test_a_node_leaving_moves_only_its_own_services_spread_over_the_survivors() -> None:
    before = owners(NODES)
    after = owners(["alpha", "charlie"])
    moved = {s for s in SERVICES if before[s] != after[s]}
    assert moved == {s for s in SERVICES if before[s] == "bravo"}
    went_to = collections.Counter(after[s] for s in moved)
    assert set(went_to) == {"alpha", "charlie"}
    assert min(went_to.values()) > len(moved) * 0.4


def test_a_node_joining_takes_only_about_its_share() -> None:
    before = owners(NODES)
    after = owners([*NODES, "delta"])
    moved = {s for s in SERVICES if before[s] != after[s]}
    assert all(after[s] == "delta" for s in moved)
    assert 600 <= len(moved) <= 900


# --- plans and epochs -------------------------------------------------------------


def test_plan_assigns_new_services_at_epoch_one() -> None:
    changes = cluster.plan(["a", "b"], NODES, {})
    assert {s: o.epoch for s, o in changes.items()} == {"a": 1, "b": 1}
    assert all(o.node == cluster.owner(s, NODES) for s, o in changes.items())


def test_plan_moves_the_services_of_a_dead_node_with_the_next_epoch() -> None:
    current = {s: Ownership(n, 7) for s, n in owners(NODES).items()}
    assert cluster.plan(SERVICES, NODES, current) == {}  # nothing to do: nothing written
    changes = cluster.plan(SERVICES, ["alpha", "charlie"], current)
    assert set(changes) == {s for s, o in current.items() if o.node == "bravo"}
    assert all(o.epoch == 8 and o.node != "bravo" for o in changes.values())


def test_plan_without_a_live_node_changes_nothing() -> None:
    current = {"a": Ownership("alpha", 3)}
    assert cluster.plan(["a", "b"], [], current) == {}


def test_only_the_current_epoch_holder_may_write() -> None:
    now = Ownership("bravo", 4)
    assert cluster.holds("bravo", 4, now)
    assert not cluster.holds("bravo", 3, now)  # an older ownership of the same node
    assert not cluster.holds("alpha", 4, now)
    assert not cluster.holds("bravo", 4, None)
    cluster.check("bravo", 4, now, "mail")
    with pytest.raises(Fenced, match=r"mail: owned by bravo \(epoch 4\), not by alpha \(epoch 3\)"):
        cluster.check("alpha", 3, now, "mail")
    with pytest.raises(Fenced, match=r"mail: owned by nobody, not by alpha"):
        cluster.check("alpha", 3, None, "mail")


# --- leases and self-fencing -----------------------------------------------------------


def test_a_node_acts_only_until_its_ttl_minus_margin_after_sending_the_renewal() -> None:
    lease = Lease(LeasePolicy(ttl=15, renew_every=3, margin=3))
    assert not lease.may_act(0.0)  # no lease yet
    assert lease.remaining(0.0) == 0.0
    lease.renewed(sent=100.0)
    assert lease.may_act(111.9)
    assert lease.remaining(110.0) == 2.0
    assert not lease.may_act(112.0)  # 100 + 15 - 3
    lease.renewed(sent=103.0)
    assert lease.may_act(114.0)
    lease.renewed(sent=101.0)  # a late answer to an older renewal: no step back
    assert lease.may_act(114.9)
    assert not lease.may_act(115.0)
    lease.lost()
    assert not lease.may_act(104.0)


def test_lease_policies_that_leave_no_second_chance_are_refused() -> None:
    with pytest.raises(ValueError, match="margin"):
        LeasePolicy(ttl=10, renew_every=2, margin=10)
    with pytest.raises(ValueError, match="margin"):
        LeasePolicy(ttl=10, renew_every=2, margin=0)
    with pytest.raises(ValueError, match="renew at least twice as often"):
        LeasePolicy(ttl=10, renew_every=4, margin=3)
    with pytest.raises(ValueError, match="renew at least twice as often"):
        LeasePolicy(ttl=10, renew_every=0, margin=3)
    assert LeasePolicy(ttl=15, renew_every=3, margin=3).failover_bound(interval=5) == 23
