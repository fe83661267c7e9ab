"""One node's life in a cluster of watchdogs sharing a PostgreSQL store.

``Member`` renews the node's lease every ``renew_every``, rebalances the
services among the live nodes after each renewal, and tells its owner (the
daemon) which services it holds and under which epoch, through
``on_change``. The rules are in ``cluster.py``; the rows in ``store_pg.py``.

Self-fencing does not depend on the database answering: a timer on the
monotonic clock fences the node (``on_change({})``, ``may_act()`` false) at
``fence_at``, TTL minus margin after the sending of the last renewal that
succeeded, whatever the renewal in progress is doing. A renewal or a
rebalance that hangs (a partition, a stopped server) is never cancelled,
which could leave its connection in doubt, and never waited for: the next one
starts only when it has ended, and the timer fences the node meanwhile.

A node whose lease had expired when a renewal got through (it was paused or
cut off, and the others may have taken its services) drops everything it held
before it takes anything again, under new epochs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from snmp_watchdog.cluster import Lease, LeasePolicy, Ownership
from snmp_watchdog.exceptions import StoreError

log = logging.getLogger("snmp_watchdog")

#: What the daemon is told: service -> the epoch it holds it under.
Owned = dict[str, int]


class ClusterStore(Protocol):
    """What membership needs of the store (``store_pg.PgStore`` has it)."""

    async def renew_lease(self, node: str, ttl: float) -> bool: ...

    async def leave(self, node: str) -> None: ...

    async def rebalance(self, services: Iterable[str]) -> dict[str, Ownership]: ...


class Member:
    """Keeps ``node`` in the cluster; ``await run()`` until cancelled, then ``await leave()``."""

    def __init__(
        self,
        store: ClusterStore,
        node: str,
        policy: LeasePolicy,
        *,
        services: Callable[[], Iterable[str]],
        on_change: Callable[[Owned], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.node = node
        self.policy = policy
        self.lease = Lease(policy)
        self.owned: Owned = {}
        self._services = services
        self._on_change = on_change
        self._clock = clock
        self._step: asyncio.Task[None] | None = None
        self._failing = False
        self._wake = asyncio.Event()

    def may_act(self) -> bool:
        """True while the node may check and send for the services it owns."""
        return self.lease.may_act(self._clock())

    def _set(self, owned: Owned) -> None:
        if owned != self.owned:
            self.owned = owned
            self._on_change(dict(owned))

    def _fence(self, why: str) -> None:
        if self.owned:
            log.warning("%s: %s; checking and sending nothing until it is renewed", self.node, why)
        self._set({})

    async def step(self) -> None:
        """One renewal, then one rebalance. Failures are logged; the lease decides."""
        sent = self._clock()
        try:
            running = await self.store.renew_lease(self.node, self.policy.ttl)
        except StoreError as exc:
            if not self._failing:
                log.error("%s: cannot renew the lease: %s", self.node, exc)
            self._failing = True
            return
        if self._failing:
            log.info("%s: the lease is renewed again", self.node)
            self._failing = False
        if not running:
            self.lease.lost()
            self._fence("the lease had expired and the services may have moved")
        self.lease.renewed(sent)
        try:
            owners = await self.store.rebalance(self._services())
        except StoreError as exc:
            log.error("%s: cannot read the ownership of the services: %s", self.node, exc)
            return
        if not self.may_act():  # the answer came too late to act on
            self._fence("the lease ran out while waiting for the database")
            return
        self._set({s: o.epoch for s, o in owners.items() if o.node == self.node})

    def poke(self) -> None:
        """Renew and rebalance now (the services changed)."""
        self._wake.set()

    async def run(self) -> None:
        """Renew every ``renew_every``; fence the node at ``fence_at`` meanwhile."""
        try:
            while True:
                if self._step is None or self._step.done():
                    if self._step is not None:
                        self._step.result()  # a bug in a step surfaces here
                    self._step = asyncio.create_task(self.step(), name=f"lease-{self.node}")
                self._wake.clear()
                next_step = self._clock() + self.policy.renew_every
                while True:
                    now = self._clock()
                    if self.owned and not self.lease.may_act(now):
                        self._fence("the lease could not be renewed in time")
                    if now >= next_step or self._wake.is_set():
                        break
                    wait = next_step - now
                    if self.owned:
                        wait = min(wait, self.lease.remaining(now))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), max(wait, 0.001))
        finally:
            if self._step is not None and not self._step.done():
                self._step.cancel()
                with contextlib.suppress(asyncio.CancelledError, StoreError):
                    await self._step

    async def leave(self) -> None:
        """A clean stop: stop acting, then end the lease so others take over at once."""
        self._fence("stopping")
        self.lease.lost()
        try:
            await self.store.leave(self.node)
        except StoreError as exc:
            log.error("%s: cannot end the lease (it expires by itself): %s", self.node, exc)
