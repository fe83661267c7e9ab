"""Benchmark: SNMP notification throughput, and a burst of 1,000 state changes.

    .venv/bin/python bench/notify.py             # full run (about three minutes)
    .venv/bin/python bench/notify.py --quick     # a short run
    .venv/bin/python bench/notify.py --profile   # also profile the daemon's path

Run from the repository root. Everything runs in one process and one event
loop (uvloop when installed), each side with its own SNMP engine.

Throughput, for a v2c trap, an SNMPv3 authPriv (SHA-256/AES-128) trap and an
SNMPv3 authPriv inform, each of these sends one notification after the other:

- ``pysnmp``: the plain high-level loop, ``send_notification`` on one engine
  with the same 13 varbinds (sysUpTime.0 and snmpTrapOID.0 added by pysnmp),
  a ``NotificationType`` built for each send as any sender whose values
  change must; the baseline of every ratio;
- ``pysnmp, NT reused``: the same with one ``NotificationType`` resolved once
  and sent again and again (the same bytes every time: a floor, not a real
  sender);
- ``Sender.send``: the daemon's sender, awaited once per notification;
- ``dispatcher, memory``: ``Dispatcher.submit`` of every notification, then
  its worker delivers them through that ``Sender`` (in-memory queue);
- ``daemon path``: what the daemon does for each state change: in one
  ``store.transaction()`` save the service's state and ``Notifier.service_event``
  (message built, sequence number taken, written to the durable outbox), then
  the dispatcher's worker delivers it and deletes it from the outbox. Logging
  is set up as the daemon's (INFO, one line per notification), written to
  /dev/null. The state database lives in a temporary directory whose file
  system is printed: on tmpfs its fsyncs cost nothing.

Messages for the first three are built before timing; the daemon path builds
its own, as the daemon does. Traps go to a separate process that only counts
datagrams (one port per sender, so a sender is never slowed down by its
receiver, and every count is checked); informs go to a private Net-SNMP
snmptrapd, whose CPU use per inform is printed to show whether it is the
limit. Every variant is warmed up first (engine discovery, key localisation);
then rounds interleave the variants and the best round of each counts.
``ratio`` is time per notification over the ``pysnmp`` baseline's (below 1:
faster); the goal is at most 1.20 for the daemon path.

Burst: 1,000 services change state at once, through Notifier -> durable
outbox -> Dispatcher -> Sender to a real snmptrapd, as v2c traps and,
separately, as SNMPv3 informs; saved and queued twice over, interleaved: with
one transaction per change (the baseline of the ratio), and as the daemon does
it (``Daemon._persist_and_notify`` for each, then ``Daemon._commit_changes``,
what the end of the loop turn runs: one transaction for all of them).
Every notification must arrive: the count and the sequence numbers
(1..1000, no gap, none twice) are checked from snmptrapd's output, and the
time from the first submit to the last one snmptrapd printed is reported
(seen by polling its output every 2 ms). The submits run back to back, as when
1,000 checks complete in one turn of the loop; while the worker delivers, a
ticker task measures the longest time the event loop went without running
other tasks (the daemon's checks and timers).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import logging
import os
import platform
import pstats
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, Protocol

from pysnmp.hlapi.v3arch import asyncio as hlapi

from _sink import Counter, Trapd, V3User, varbind
from snmp_watchdog import model, state
from snmp_watchdog.cli import setup_logging
from snmp_watchdog.clocks import wall_time
from snmp_watchdog.daemon import Daemon, Standalone, settle_memory
from snmp_watchdog.notify.message import Message, MessageBuilder
from snmp_watchdog.notify.mib import SNMP_TRAP_OID, Oids
from snmp_watchdog.notify.notifier import Notifier
from snmp_watchdog.notify.outbox import Dispatcher
from snmp_watchdog.notify.sender import Sender
from snmp_watchdog.reasons import Reason
from snmp_watchdog.snmp import Mode, Version
from snmp_watchdog.storage import SqliteStateStore
from snmp_watchdog.store import Store

COMMUNITY = "public"
USER = "bench"
AUTH_KEY = "bench-auth-passphrase"
PRIV_KEY = "bench-priv-passphrase"
#: The same user in Net-SNMP's words, for snmptrapd (no -e: the receiver's own, for informs).
TRAPD_USER = V3User(USER, "SHA-256", AUTH_KEY, "AES", PRIV_KEY)
BURST = 1000
LOG = logging.getLogger("snmp_watchdog")
OIDS = Oids()
SEQUENCE_OID = (*OIDS.notification_sequence, 0)


@dataclass(frozen=True, slots=True)
class Kind:
    label: str
    version: Version
    mode: Mode

    @property
    def slug(self) -> str:
        return f"v{self.version}-{self.mode}"

    @property
    def inform(self) -> bool:
        return self.mode == Mode.INFORM


KINDS = (
    Kind("v2c trap", Version.V2C, Mode.TRAP),
    Kind("v3 authPriv trap", Version.V3, Mode.TRAP),
    Kind("v3 authPriv inform", Version.V3, Mode.INFORM),
)


@dataclass(frozen=True, slots=True)
class Plan:
    rounds: int
    traps: int  # notifications per timed block
    informs: int
    warmup: int
    bursts: int  # runs of each burst

    def size(self, kind: Kind) -> int:
        return self.informs if kind.inform else self.traps


FULL = Plan(rounds=5, traps=1000, informs=300, warmup=200, bursts=3)
QUICK = Plan(rounds=2, traps=300, informs=100, warmup=50, bursts=1)


# -- what is sent -------------------------------------------------------------------


def service(kind: Kind, i: int, receiver: str) -> model.Service:
    return model.Service(
        name=f"{kind.slug}-{i}",
        host=f"host{i}.example.net",
        port=25,
        check=model.CheckKind.SMTP,
        receivers=(receiver,),
    )


def note(i: int) -> state.Notification:
    """A Down (even ``i``) or an Up (odd), as the state machine hands them over."""
    down = i % 2 == 0
    return state.Notification(
        kind=state.Kind.DOWN if down else state.Kind.UP,
        state=state.State.DOWN if down else state.State.UP,
        previous=state.State.UP if down else state.State.DOWN,
        reason=Reason.REFUSED if down else Reason.OK,
        detail="connection refused" if down else "",
        count=3 if down else 2,
        elapsed=0.0126,
        at=time.monotonic(),
    )


def saved_state(n: state.Notification) -> state.ServiceState:
    """The state the daemon saves with ``n`` (counters filled in like a real one)."""
    return state.ServiceState(
        state=n.state,
        since=n.at,
        failures=n.count if n.state is state.State.DOWN else 0,
        successes=0 if n.state is state.State.DOWN else n.count,
        changes=(n.at,),
        notified=n.state,
        notified_at=n.at,
        last_check=n.at,
        last_reason=n.reason,
        last_detail=n.detail,
        last_elapsed=n.elapsed,
        checks=100,
        failed_checks=n.count,
        previous=n.previous,
    )


def messages(kind: Kind, count: int) -> list[Message]:
    """Ready messages, as the daemon would build them, for the loops that take messages."""
    builder = MessageBuilder(OIDS)
    out = []
    for i in range(count):
        n = note(i)
        svc = service(kind, i, "-")
        out.append(
            builder.service_event(
                kind=n.kind,
                service=svc,
                index=i + 1,
                state=n.state,
                previous=n.previous,
                reason=n.reason,
                detail=n.detail,
                count=n.count,
                elapsed=n.elapsed,
                at_wall=wall_time(n.at),
                sequence=i + 1,
            )
        )
    return out


def receiver(name: str, kind: Kind, port: int) -> model.Receiver:
    if kind.version == "2c":
        return model.Receiver(
            name=name, host="127.0.0.1", port=port, community=model.Secret(COMMUNITY)
        )
    return model.Receiver(
        name=name,
        host="127.0.0.1",
        port=port,
        version=Version.V3,
        mode=kind.mode,
        user=USER,
        auth=model.UsmKey("SHA256", model.Secret(AUTH_KEY)),
        priv=model.UsmKey("AES128", model.Secret(PRIV_KEY)),
        timeout=2.0,
    )


# -- what went wrong, from the daemon's own log -------------------------------------


class Problems(logging.Handler):
    """Counts the daemon's warnings and errors (a failed or refused delivery)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.first: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if self.first is None:
            self.first = record.getMessage()


def daemon_logging() -> tuple[Problems, io.TextIOWrapper]:
    """The daemon's log set-up (INFO, its format) writing to /dev/null, plus ``Problems``."""
    setup_logging(logging.INFO)
    devnull = open(os.devnull, "w")  # noqa: SIM115 (closed at the end of main)
    handler = LOG.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(devnull)
    problems = Problems()
    LOG.addHandler(problems)
    return problems, devnull


# -- the variants ---------------------------------------------------------------------


class Variant(Protocol):
    name: str

    async def send(self, count: int) -> int:
        """Send ``count`` notifications and wait until they are delivered; returns failures."""
        ...


class Hlapi:
    """pysnmp's high-level ``send_notification``, one engine, awaited one at a time."""

    def __init__(
        self, engine: Any, kind: Kind, port: int, pool: list[Message], *, reuse: bool
    ) -> None:
        self.name = "pysnmp, NT reused" if reuse else "pysnmp"
        self._engine = engine
        self._kind = kind
        self._port = port
        self._pool = pool
        self._reuse = reuse
        self._target: Any = None
        self._fixed: Any = None
        if kind.version == "2c":
            self._auth: Any = hlapi.CommunityData(COMMUNITY, mpModel=1)  # noqa: S508 (measured)
        else:
            self._auth = hlapi.UsmUserData(
                USER,
                authKey=AUTH_KEY,
                privKey=PRIV_KEY,
                authProtocol=hlapi.USM_AUTH_HMAC192_SHA256,
                privProtocol=hlapi.USM_PRIV_CFB128_AES,
            )

    @staticmethod
    def notification(message: Message) -> Any:
        return hlapi.NotificationType(hlapi.ObjectIdentity(message.notification)).add_varbinds(
            *(hlapi.ObjectType(hlapi.ObjectIdentity(oid), value) for oid, value in message.varbinds)
        )

    async def send(self, count: int) -> int:
        if self._target is None:
            self._target = await hlapi.UdpTransportTarget.create(
                ("127.0.0.1", self._port), timeout=2.0, retries=0
            )
            self._fixed = self.notification(self._pool[0])
        failures = 0
        context = hlapi.ContextData()
        for i in range(count):
            ntf = self._fixed if self._reuse else self.notification(self._pool[i % len(self._pool)])
            error, status, _index, _vbs = await hlapi.send_notification(
                self._engine, self._auth, self._target, context, self._kind.mode, ntf
            )
            failures += bool(error or status)
        return failures


class SenderLoop:
    """``await sender.send(receiver, message)`` once per notification."""

    name = "Sender.send"

    def __init__(self, sender: Sender, target: model.Receiver, pool: list[Message]) -> None:
        self._sender, self._receiver, self._pool = sender, target, pool

    async def send(self, count: int) -> int:
        failures = 0
        for i in range(count):
            delivery = await self._sender.send(self._receiver, self._pool[i % len(self._pool)])
            failures += not delivery.ok
        return failures


async def delivered(dispatcher: Dispatcher, name: str, problems: Problems, before: int) -> int:
    """Wait (polling every 2 ms) until the receiver's queue is empty; the new problems."""
    while dispatcher.pending(name):  # noqa: ASYNC110 (a queue has no event to wait for)
        await asyncio.sleep(0.002)
    return problems.count - before


class MemoryDispatch:
    """``Dispatcher.submit`` (in-memory queue) of every notification, then delivery."""

    name = "dispatcher, memory"

    def __init__(
        self, dispatcher: Dispatcher, target: str, pool: list[Message], problems: Problems
    ) -> None:
        self._dispatcher, self._receiver, self._pool = dispatcher, target, pool
        self._problems = problems

    async def send(self, count: int) -> int:
        before = self._problems.count
        for i in range(count):
            self._dispatcher.submit(self._pool[i % len(self._pool)], (self._receiver,))
        return await delivered(self._dispatcher, self._receiver, self._problems, before)


class DaemonPath:
    """Per notification: one transaction with ``save_state`` and ``Notifier.service_event``."""

    name = "daemon path"

    def __init__(
        self,
        *,
        notifier: Notifier,
        store: SqliteStateStore,
        services: Sequence[model.Service],
        indexes: dict[str, int],
        target: str,
        problems: Problems,
    ) -> None:
        self._notifier, self._store = notifier, store
        self._services, self._indexes = services, indexes
        self._receiver, self._problems = target, problems
        self._turn = 0

    async def submit(self, i: int) -> None:
        """What ``Daemon._persist_and_notify`` does for one confirmed change."""
        svc = self._services[i % len(self._services)]
        n = note(self._turn)
        self._turn += 1
        async with self._store.transaction():
            await self._store.save_state(
                svc.name, saved_state(n), mono_now=time.monotonic(), wall_now=time.time()
            )
            await self._notifier.service_event(svc, self._indexes[svc.name], n)

    async def send(self, count: int) -> int:
        before = self._problems.count
        for i in range(count):
            await self.submit(i)
        return await delivered(self._notifier.dispatcher, self._receiver, self._problems, before)


class TurnPath:
    """The daemon's own path: every change of one loop turn in one transaction."""

    def __init__(
        self,
        *,
        config: model.Config,
        notifier: Notifier,
        store: SqliteStateStore,
        services: Sequence[model.Service],
        indexes: dict[str, int],
    ) -> None:
        self._daemon = Daemon(config.path)
        self._daemon.config = config
        self._daemon.store = store
        self._daemon.placement = Standalone(store)
        self._daemon.notifier = notifier
        self._daemon.indexes = indexes
        self._services = services
        self._turn = 0

    def submit(self, i: int) -> None:
        """What ``Daemon._on_result`` does for one confirmed change."""
        svc = self._services[i % len(self._services)]
        n = note(self._turn)
        self._turn += 1
        self._daemon._persist_and_notify(svc, saved_state(n), (n,))

    async def end_of_turn(self) -> None:
        """What the loop runs once the turn's callbacks are done."""
        await self._daemon._commit_changes()


# -- throughput -----------------------------------------------------------------------


@dataclass
class Best:
    wall: float = float("inf")  # seconds per notification
    cpu: float = float("inf")
    trapd_cpu: float = 0.0  # snmptrapd CPU seconds per notification (informs)
    failures: int = 0
    lost: int = 0


@dataclass
class Bench:
    plan: Plan
    problems: Problems
    root: Path
    counter: Counter
    trapd: Trapd
    ports: Iterator[int]
    expected: dict[int, int] = field(default_factory=dict)  # sink port -> datagrams sent
    cleanup: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


async def wait_counted(bench: Bench, patience: float = 3.0) -> dict[int, int]:
    """Wait until the counter saw every datagram sent; returns the shortfall per port."""
    deadline = time.monotonic() + patience
    while True:
        counts = dict(zip(bench.counter.ports, bench.counter.counts(), strict=True))
        short = {p: n - counts[p] for p, n in bench.expected.items() if counts[p] < n}
        if not short or time.monotonic() >= deadline:
            return short
        await asyncio.sleep(0.01)


async def variants_for(
    bench: Bench, kind: Kind, *, engine: Any, sender: Sender, dispatcher: Dispatcher,
    notifier: Notifier, store: SqliteStateStore, ports: dict[str, int],
) -> list[tuple[Variant, int | None]]:  # fmt: skip
    """The five variants of one kind, each with the sink port it sends to (None: snmptrapd)."""
    pool = messages(kind, 100)
    services = [service(kind, i, f"daemon-{kind.slug}") for i in range(100)]
    indexes = await store.service_indexes(s.name for s in services)
    out: list[tuple[Variant, int | None]] = []
    for variant in (
        Hlapi(engine, kind, ports["pysnmp"], pool, reuse=False),
        Hlapi(engine, kind, ports["pysnmp, NT reused"], pool, reuse=True),
        SenderLoop(sender, receiver(f"send-{kind.slug}", kind, ports["Sender.send"]), pool),
        MemoryDispatch(dispatcher, f"memory-{kind.slug}", pool, bench.problems),
        DaemonPath(
            notifier=notifier,
            store=store,
            services=services,
            indexes=indexes,
            target=f"daemon-{kind.slug}",
            problems=bench.problems,
        ),
    ):
        port = None if kind.inform else ports[variant.name]
        out.append((variant, port))
    return out


VARIANT_NAMES = ("pysnmp", "pysnmp, NT reused", "Sender.send", "dispatcher, memory", "daemon path")


def oids(line: str) -> list[str]:
    """The varbind OIDs of one snmptrapd line, in order."""
    return [vb.split(" = ", 1)[0] for vb in line.split("|")[3:]]


async def same_varbinds(bench: Bench, engine: Any, sender: Sender) -> None:
    """Check that the baseline and the daemon's sender put the same OIDs on the wire."""
    kind = KINDS[0]
    pool = messages(kind, 1)
    await Hlapi(engine, kind, bench.trapd.port, pool, reuse=False).send(1)
    await sender.send(receiver("same-varbinds", kind, bench.trapd.port), pool[0])
    deadline = time.monotonic() + 3.0
    lines: list[str] = []
    while len(lines) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        lines += bench.trapd.notifications()
    if len(lines) != 2 or oids(lines[0]) != oids(lines[1]):
        raise SystemExit("pysnmp and Sender differ on the wire:\n" + "\n".join(lines))
    print(f"# checked: pysnmp and Sender.send send the same {len(oids(lines[0]))} varbind OIDs")


async def throughput(bench: Bench) -> dict[tuple[str, str], Best]:
    """Every kind x variant, interleaved over rounds; the best round of each."""
    state_dir = bench.root / "state"
    ports: dict[str, dict[str, int]] = {}
    receivers: dict[str, list[model.Receiver]] = {"send": [], "memory": [], "daemon": []}
    for kind in KINDS:
        ports[kind.slug] = {
            v: (bench.trapd.port if kind.inform else next(bench.ports)) for v in VARIANT_NAMES
        }
        for prefix, label in (
            ("send", "Sender.send"), ("memory", "dispatcher, memory"), ("daemon", "daemon path")
        ):  # fmt: skip
            receivers[prefix].append(
                receiver(f"{prefix}-{kind.slug}", kind, ports[kind.slug][label])
            )
    store = SqliteStateStore(Store.open(state_dir))
    config = model.Config(
        path=Path("bench.yaml"),
        settings=model.Settings(state_dir=state_dir),
        receivers=tuple(receivers["daemon"]),
    )
    notifier = Notifier(config, store, started=time.monotonic())
    await notifier.start()
    sender = Sender(
        model.Settings(state_dir=bench.root / "sender"),
        [*receivers["send"], *receivers["memory"]],
        started=time.monotonic(),
    )
    await sender.start()
    dispatcher = Dispatcher(sender, receivers["memory"], log=LOG)
    engine = hlapi.SnmpEngine()

    async def close() -> None:
        await dispatcher.close()
        await sender.close()
        await notifier.close()
        await store.close()
        engine.close_dispatcher()

    bench.cleanup.append(close)
    table = {
        kind: await variants_for(
            bench,
            kind,
            engine=engine,
            sender=sender,
            dispatcher=dispatcher,
            notifier=notifier,
            store=store,
            ports=ports[kind.slug],
        )
        for kind in KINDS
    }
    await same_varbinds(bench, engine, sender)
    best: dict[tuple[str, str], Best] = {}
    for kind, variants in table.items():  # warm-up
        for variant, port in variants:
            failures = await variant.send(bench.plan.warmup)
            if port is not None:
                bench.expected[port] = bench.expected.get(port, 0) + bench.plan.warmup
            if failures:
                raise SystemExit(f"{kind.label}, {variant.name}: {failures} failed in warm-up")
            best[kind.label, variant.name] = Best()
    for _round in range(bench.plan.rounds):
        for kind, variants in table.items():
            n = bench.plan.size(kind)
            for variant, port in variants:
                trapd0 = bench.trapd.cpu_seconds()
                cpu0, wall0 = time.process_time(), time.perf_counter()
                failures = await variant.send(n)
                wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
                trapd = bench.trapd.cpu_seconds() - trapd0
                b = best[kind.label, variant.name]
                b.failures += failures
                if port is not None:
                    bench.expected[port] = bench.expected.get(port, 0) + n
                if wall / n < b.wall:
                    b.wall, b.cpu, b.trapd_cpu = wall / n, cpu / n, trapd / n
        short = await wait_counted(bench)
        for kind, variants in table.items():
            for variant, port in variants:
                if port is not None:
                    best[kind.label, variant.name].lost = short.get(port, 0)
    return best


def report_throughput(plan: Plan, best: dict[tuple[str, str], Best]) -> None:
    print(
        f"# throughput: best of {plan.rounds} rounds of {plan.traps} traps / {plan.informs} "
        f"informs per variant, after {plan.warmup} warm-up; ratio = time per notification / "
        f"pysnmp's (goal for the daemon path: <= 1.20)"
    )
    for kind in KINDS:
        base = best[kind.label, "pysnmp"].wall
        for name in VARIANT_NAMES:
            b = best[kind.label, name]
            extra = ""
            if kind.inform:
                extra = f", snmptrapd {b.trapd_cpu * 1000:.2f} ms CPU each"
            if b.failures or b.lost:
                extra += f", FAILED {b.failures}, NOT RECEIVED {b.lost}"
            print(
                f"{kind.label:<19} {name:<19} {1 / b.wall:7.0f}/s  "
                f"{b.wall * 1000:6.3f} ms each, {b.cpu * 1000:6.3f} ms CPU  "
                f"ratio {b.wall / base:5.2f}{extra}"
            )
        daemon = best[kind.label, "daemon path"].wall / base
        verdict = "met" if daemon <= 1.2 else "NOT MET"
        print(f"{kind.label:<19} goal (daemon path <= 1.20 x pysnmp): {verdict} ({daemon:.2f})")


# -- burst ----------------------------------------------------------------------------


@dataclass
class BurstResult:
    received: int
    sequences_ok: str
    submit: float  # seconds to submit all
    total: float  # first submit -> last received
    stall: float  # during delivery, the longest the loop went without running a ticker
    busy: float  # the most CPU this process used within one such gap (the rest: not ours)
    gc_pause: float  # the longest garbage collection during delivery
    problems: int


async def burst_once(bench: Bench, kind: Kind, run: int, *, per_turn: bool) -> BurstResult:
    """One burst through a fresh daemon path (state dir, engine, snmptrapd).

    ``per_turn``: one transaction for the whole burst (the daemon's), else one per change.
    """
    base = bench.root / f"burst-{kind.slug}-{run}-{'turn' if per_turn else 'change'}"
    trapd = Trapd(base / "snmptrapd", communities=(COMMUNITY,), users=(TRAPD_USER,)).start()
    store = SqliteStateStore(Store.open(base / "state"))
    target = receiver("nms", kind, trapd.port)
    services = [service(kind, i, target.name) for i in range(BURST)]
    config = model.Config(
        path=Path("bench.yaml"),
        settings=model.Settings(state_dir=base / "state"),
        receivers=(target,),
        services=tuple(services),
    )
    notifier = Notifier(config, store, started=time.monotonic())
    try:
        await notifier.start()
        indexes = await store.service_indexes(s.name for s in services)
        path = DaemonPath(
            notifier=notifier,
            store=store,
            services=services,
            indexes=indexes,
            target=target.name,
            problems=bench.problems,
        )
        turn = TurnPath(
            config=config, notifier=notifier, store=store, services=services, indexes=indexes
        )
        # Warm-up outside the sequence (discovery for informs): the MIB's test notification.
        warm = MessageBuilder(OIDS).test(sequence=0, text="warm-up")
        delivery = await notifier.sender.send(target, warm)
        if not delivery.ok:
            raise SystemExit(f"burst {kind.label}: warm-up failed: {delivery}")
        await asyncio.sleep(0.05)
        trapd.notifications()  # skip the warm-up
        settle_memory()  # as the daemon does once it is ready
        problems0 = bench.problems.count
        stall = busy = gc_pause = 0.0
        done = False

        async def ticker(last: float) -> None:
            nonlocal stall, busy
            last_cpu = time.process_time()
            while not done:
                now = time.perf_counter()
                cpu = time.process_time()
                stall = max(stall, now - last)
                busy = max(busy, cpu - last_cpu)
                last_cpu = cpu
                last = now
                await asyncio.sleep(0.001)

        gc_started = 0.0

        def on_gc(phase: str, _info: dict[str, int]) -> None:
            nonlocal gc_started, gc_pause
            if phase == "start":
                gc_started = time.perf_counter()
            else:
                gc_pause = max(gc_pause, time.perf_counter() - gc_started)

        lines: list[str] = []
        t0 = time.perf_counter()
        if per_turn:
            for i in range(BURST):
                turn.submit(i)
            await turn.end_of_turn()
        else:
            for i in range(BURST):
                await path.submit(i)
        submitted = time.perf_counter() - t0
        # From here on the loop is free to run other tasks: does delivery let it?
        ticking = asyncio.create_task(ticker(time.perf_counter()))
        gc.callbacks.append(on_gc)
        deadline = t0 + (60.0 if kind.inform else 20.0)
        while time.perf_counter() < deadline:
            lines += [
                line for line in trapd.notifications() if varbind(line, SNMP_TRAP_OID) != _TEST_OID
            ]
            if len(lines) >= BURST:
                break
            await asyncio.sleep(0.002)
        total = time.perf_counter() - t0
        await asyncio.sleep(0.2)  # anything more (a duplicate) would show now
        lines += [
            line for line in trapd.notifications() if varbind(line, SNMP_TRAP_OID) != _TEST_OID
        ]
        done = True
        await ticking
        gc.callbacks.remove(on_gc)
        return BurstResult(
            len(lines),
            check_sequences(lines),
            submitted,
            total,
            stall,
            busy,
            gc_pause,
            bench.problems.count - problems0,
        )
    finally:
        await notifier.close()
        await store.close()
        trapd.stop()


_TEST_OID = "." + ".".join(map(str, OIDS.test_notification))


def check_sequences(lines: list[str]) -> str:
    """``sequence 1..1000 once each``, or what is missing or repeated."""
    numbers = [int(varbind(line, SEQUENCE_OID) or -1) for line in lines]
    seen = set(numbers)
    missing = sorted(set(range(1, BURST + 1)) - seen)
    twice = len(numbers) - len(seen)
    if not missing and twice == 0 and seen == set(range(1, BURST + 1)):
        return f"sequence 1..{BURST} once each"
    return f"SEQUENCE BROKEN: {len(missing)} missing (first {missing[:5]}), {twice} repeated"


async def bursts(bench: Bench) -> None:
    print(
        f"# burst: {BURST} services change state at once -> Notifier -> durable outbox -> "
        f"Dispatcher -> Sender -> snmptrapd; best of {bench.plan.bursts}"
    )
    for kind in (KINDS[0], KINDS[2]):
        runs: dict[bool, list[BurstResult]] = {False: [], True: []}
        for run in range(bench.plan.bursts):  # interleaved: both see the same machine
            for per_turn, results in runs.items():
                results.append(await burst_once(bench, kind, run, per_turn=per_turn))
        best: dict[bool, BurstResult] = {}
        for per_turn, results in runs.items():
            complete = [r for r in results if r.received == BURST]
            r = min(complete or results, key=lambda r: r.total)
            best[per_turn] = r
            short = len(results) - len(complete)
            flag = f" ({short} of {len(results)} runs short)" if short else ""
            how = "one commit per loop turn" if per_turn else "one commit per change"
            print(
                f"burst {kind.label:<19} {how}: {r.received}/{BURST} received, "
                f"{r.sequences_ok}; submit {r.submit * 1000:.0f} ms; first submit -> last "
                f"received {r.total:.2f} s ({BURST / r.total:.0f}/s); longest event-loop "
                f"stall while delivering {r.stall * 1000:.1f} ms (at most {r.busy * 1000:.1f} ms "
                f"of CPU in one gap; longest GC {r.gc_pause * 1000:.1f} ms)"
                f"{', warnings ' + str(r.problems) if r.problems else ''}{flag}"
            )
        ratio = min(r.submit for r in runs[True]) / min(r.submit for r in runs[False])
        print(f"burst {kind.label:<19} submit, one commit per loop turn / per change: {ratio:.2f}")


# -- profile --------------------------------------------------------------------------

#: Where the daemon path's time goes: (label, file suffix, function name). Cumulative
#: times; the indented rows are parts of the row above them.
LAYERS = (
    ("submit: Daemon._persist_and_notify", "bench/notify.py", "submit"),
    ("end of the turn: one transaction for all", "bench/notify.py", "end_of_turn"),
    ("  MessageBuilder.service_event", "notify/message.py", "service_event"),
    ("  Store.save_states", "snmp_watchdog/store.py", "save_states"),
    ("  Store.next_sequence", "snmp_watchdog/store.py", "next_sequence"),
    ("  StoreQueue.write (JSON, INSERT)", "notify/durable.py", "write"),
    ("deliver: Dispatcher worker", "notify/outbox.py", "_work"),
    ("  StoreQueue.head (SELECT, JSON)", "notify/durable.py", "head"),
    ("  StoreQueue.remove (DELETE, fsync)", "notify/durable.py", "_delete"),
    ("  Sender.send (pysnmp)", "notify/sender.py", "send"),
    ("  logging", "logging/__init__.py", "info"),
)
#: What a row's parts leave out, for the two rows that have parts.
REST = {
    "end of the turn: one transaction for all": "  the rest: BEGIN, COMMIT (fsync)",
    "deliver: Dispatcher worker": "  the rest: retry policy (tenacity), queue",
}


def layers(stats: pstats.Stats, count: int) -> list[str]:
    """Cumulative time per notification of each of ``LAYERS``."""
    table: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    rows: list[tuple[str, float]] = []
    for label, suffix, name in LAYERS:
        total = sum(
            row[3] for (path, _line, func), row in table.items()
            if func == name and path.endswith(suffix)
        )  # fmt: skip
        rows.append((label, total / count))
    out: list[tuple[str, float]] = []
    parent: tuple[str, float] | None = None
    parts = 0.0
    for label, each in [*rows, ("", 0.0)]:
        if not label.startswith(" "):
            if parent is not None and parent[0] in REST:
                out.append((REST[parent[0]], parent[1] - parts))
            parent, parts = (label, each), 0.0
        else:
            parts += each
        if label:
            out.append((label, each))
    return [f"  {label:<42} {each * 1000:7.3f} ms" for label, each in out]


async def profile(bench: Bench) -> None:
    """cProfile of one burst per kind through the daemon path: where the time goes."""
    for kind in (KINDS[0], KINDS[2]):
        profiler = cProfile.Profile()
        profiler.enable()
        result = await burst_once(bench, kind, 99, per_turn=True)
        profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        print(
            f"# profile: burst of {BURST} {kind.label}s, {result.total:.2f} s under cProfile "
            f"(which slows Python code, not SQLite or system calls); per notification:"
        )
        print("\n".join(layers(stats, BURST)))
        stats.sort_stats("tottime").print_stats(12)
        body = out.getvalue().splitlines()
        header = next(i for i, line in enumerate(body) if "ncalls" in line)
        print("\n".join(line for line in body[header:] if line.strip()))


# -- main -----------------------------------------------------------------------------


def _loop_run(coro: Any) -> Any:
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def file_system(path: Path) -> str:
    """The type of the file system holding ``path`` (from /proc/mounts)."""
    best, kind = "", "?"
    real = str(path.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        _dev, mount, fstype, *_ = line.split()
        if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
            best, kind = mount, fstype
    return kind


async def amain(args: argparse.Namespace, root: Path) -> None:
    plan = QUICK if args.quick else FULL
    problems, devnull = daemon_logging()
    counter = Counter(len(KINDS) * len(VARIANT_NAMES))
    trapd = Trapd(root / "snmptrapd", communities=(COMMUNITY,), users=(TRAPD_USER,)).start()
    bench = Bench(plan, problems, root, counter, trapd, iter(counter.ports))
    try:
        if not args.no_throughput:
            report_throughput(plan, await throughput(bench))
        if not args.no_burst:
            await bursts(bench)
        if args.profile:
            await profile(bench)
        if problems.count:
            print(f"# the daemon logged {problems.count} warnings; the first: {problems.first}")
    finally:
        for close in bench.cleanup:
            await close()
        trapd.stop()
        counter.close()
        devnull.close()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a short run")
    p.add_argument("--profile", action="store_true", help="profile a burst of each kind")
    p.add_argument("--no-throughput", action="store_true", help="skip the throughput part")
    p.add_argument("--no-burst", action="store_true", help="skip the burst part")
    p.add_argument(
        "--dir", type=Path, default=None, help="where the state database goes (default: $TMPDIR)"
    )
    args = p.parse_args(argv)
    if shutil.which("snmptrapd") is None:
        raise SystemExit("snmptrapd (Debian package snmptrapd) is needed")
    try:
        import uvloop  # noqa: F401, PLC0415

        loop_name = f"uvloop {version('uvloop')}"
    except ImportError:
        loop_name = "asyncio"
    root = Path(tempfile.mkdtemp(prefix="wd-bench-notify-", dir=args.dir))
    try:
        print(
            f"# {platform.platform()}, Python {platform.python_version()}, "
            f"{len(os.sched_getaffinity(0))} CPUs, pysnmp {version('pysnmp')}, {loop_name}, "
            f"state database on {file_system(root)} ({root})"
        )
        _loop_run(amain(args, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
