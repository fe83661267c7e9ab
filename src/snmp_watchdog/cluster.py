"""Several watchdogs sharing services: who owns what, and when a node must stop.

Pure rules, no I/O and no clock reads (the caller passes the times); the
PostgreSQL store (``store_pg``) keeps the rows they work on.

Rules:

* Membership is a lease row per node, ``expires_at`` computed by the
  database's ``now()`` plus the TTL at each renewal. A node is live while its
  lease has not expired by the database's clock; no node's own clock decides
  whether another node is alive.
* Each service belongs to the live node with the highest rendezvous weight
  (``weight(node, service)``, a hash of both names): every node computes the
  same owner from the same set of live nodes, and when a node leaves only its
  own services move, spread over the survivors; when one joins, it takes only
  services from others, about its share.
* Each ownership carries an epoch (a fencing token) that grows by one each
  time the service changes owner. A write for a service is accepted only from
  the node holding the current epoch (``holds``), so an old owner that was
  paused or cut off and wakes up cannot write after losing the service.
* Self-fencing: a node measures its lease on its own monotonic clock from the
  moment it *sent* the renewal that succeeded (the database computed
  ``expires_at`` later than that, so this errs on the safe side). From
  ``fence_at`` (TTL minus the margin after that moment) it stops checking and
  sending on its own, before any other node may take its services, and
  resumes only after a renewal succeeds again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


class Fenced(Exception):
    """A write from a node that no longer holds the service's current epoch."""


def weight(node: str, service: str) -> int:
    """The rendezvous weight of ``node`` for ``service``: the same on every node."""
    digest = hashlib.blake2b(
        service.encode() + b"\x00" + node.encode(), digest_size=8, person=b"snmp-wd"
    ).digest()
    return int.from_bytes(digest, "big")


def owner(service: str, nodes: Iterable[str]) -> str | None:
    """The node that owns ``service`` among ``nodes`` (None when there is none)."""
    best: tuple[int, str] | None = None
    for node in nodes:
        key = (weight(node, service), node)  # a tie of weights: the greater name
        if best is None or key > best:
            best = key
    return None if best is None else best[1]


@dataclass(frozen=True, slots=True)
class Ownership:
    """Who owns a service, and the fencing token of that ownership."""

    node: str
    epoch: int


def plan(
    services: Iterable[str], live: Iterable[str], current: Mapping[str, Ownership]
) -> dict[str, Ownership]:
    """The ownerships to write so every service belongs to its rendezvous owner.

    Only the services whose owner changes are returned, each with its epoch
    one above the current one (1 for a service never owned). With no live
    node nothing changes: the services wait for a node to come back.
    """
    nodes = sorted(set(live))
    if not nodes:
        return {}
    changes = {}
    for service in services:
        target = owner(service, nodes)
        assert target is not None
        now = current.get(service)
        if now is None:
            changes[service] = Ownership(target, 1)
        elif now.node != target:
            changes[service] = Ownership(target, now.epoch + 1)
    return changes


def holds(node: str, epoch: int, current: Ownership | None) -> bool:
    """True when ``node`` with token ``epoch`` may still write for the service."""
    return current is not None and current.node == node and current.epoch == epoch


def check(node: str, epoch: int, current: Ownership | None, service: str) -> None:
    """Raise ``Fenced`` unless ``node`` holds ``epoch`` of ``service``."""
    if not holds(node, epoch, current):
        now = "nobody" if current is None else f"{current.node} (epoch {current.epoch})"
        raise Fenced(f"{service}: owned by {now}, not by {node} (epoch {epoch})")


@dataclass(frozen=True, slots=True)
class LeasePolicy:
    """How long a lease lasts, how often it is renewed, how early a node fences itself.

    ``ttl``: the lease the database grants at each renewal. ``renew_every``:
    the time between renewals. ``margin``: how long before the end of its
    lease (by its own clock) a node stops acting. A renewal may fail
    ``(ttl - margin) / renew_every - 1`` times in a row before the node fences
    itself.
    """

    ttl: float = 15.0
    renew_every: float = 3.0
    margin: float = 3.0

    def __post_init__(self) -> None:
        if not 0 < self.margin < self.ttl:
            raise ValueError(f"the margin ({self.margin}s) must lie between 0 and the TTL")
        if not 0 < self.renew_every <= (self.ttl - self.margin) / 2:
            raise ValueError(
                f"renewals every {self.renew_every}s leave no second chance within "
                f"{self.ttl - self.margin}s (TTL minus margin); renew at least twice as often"
            )

    def fence_at(self, sent: float) -> float:
        """When a node whose renewal sent at ``sent`` (monotonic) succeeded must stop."""
        return sent + self.ttl - self.margin

    def failover_bound(self, interval: float) -> float:
        """The longest a dead node's service goes unchecked: its lease, the next
        rebalance by a survivor, and one check interval."""
        return self.ttl + self.renew_every + interval


class Lease:
    """A node's own view of its lease: may it act now?"""

    def __init__(self, policy: LeasePolicy) -> None:
        self.policy = policy
        self._fence_at: float | None = None  # None: no lease yet

    def renewed(self, sent: float) -> None:
        """A renewal sent at ``sent`` (monotonic) succeeded."""
        fence_at = self.policy.fence_at(sent)
        if self._fence_at is None or fence_at > self._fence_at:
            self._fence_at = fence_at

    def lost(self) -> None:
        """The database says the lease is gone (expired and taken over): stop now."""
        self._fence_at = None

    def may_act(self, now: float) -> bool:
        """True while the node may check and send (``now`` on the monotonic clock)."""
        return self._fence_at is not None and now < self._fence_at

    def remaining(self, now: float) -> float:
        """Seconds until the node must stop (0 when it must already)."""
        return 0.0 if self._fence_at is None else max(0.0, self._fence_at - now)
