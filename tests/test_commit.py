"""The daemon's commits: the changes of one loop turn share one durable transaction.

The daemon here is the real one with a real state database and a real
snmptrapd; SQLite's own trace of the statements it runs counts the commits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from snmp_watchdog import state
from snmp_watchdog.config import load_config
from snmp_watchdog.daemon import Daemon, Standalone
from snmp_watchdog.notify.mib import Oids
from snmp_watchdog.notify.notifier import Notifier
from snmp_watchdog.reasons import Reason
from snmp_watchdog.result import CheckResult
from snmp_watchdog.scheduler import policy_for
from snmp_watchdog.storage import SqliteStateStore
from snmp_watchdog.store import Store
from tests.helpers import run_bounded
from tests.snmptrapd import Snmptrapd

SERVICES = 20
OIDS = Oids()
SEQUENCE = ".".join(map(str, (*OIDS.notification_sequence, 0)))
NAME = ".".join(map(str, OIDS.service_name)) + "."


def _config(tmp_path: Path, port: int) -> Path:
    lines = [
        "watchdog:",
        f"  state_dir: {tmp_path}/state",
        "defaults:",
        "  fall: 1",
        "receivers:",
        "  - name: nms",
        "    host: 127.0.0.1",
        f"    port: {port}",
        "    version: 2c",
        "    community: public",
        "    mode: trap",
        "services:",
    ]
    for i in range(SERVICES):
        lines += [f"  - name: mail{i}", "    host: 127.0.0.1", "    port: 25", "    check: smtp"]
    path = tmp_path / "watchdog.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_changes_of_one_loop_turn_are_saved_in_one_commit_before_they_are_sent(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd]
) -> None:
    """A burst of Downs costs one fsync'd commit, and nothing leaves before it."""
    trapd = snmptrapd()
    assert trapd.port is not None
    path = _config(tmp_path, trapd.port)
    config = load_config(path)
    failed = CheckResult(Reason.REFUSED, "connection refused", 0.001)

    async def scenario() -> tuple[list[str], list[str], int]:
        daemon = Daemon(path)
        daemon.config = config
        with Store.open(config.settings.state_dir) as store:
            daemon.store = SqliteStateStore(store)
            daemon.placement = Standalone(daemon.store)
            daemon.indexes = store.service_indexes(s.name for s in config.services)
            daemon.notifier = notifier = Notifier(config, daemon.store, started=time.monotonic())
            await notifier.start()
            statements: list[str] = []
            store._db.set_trace_callback(statements.append)  # SQLite's own trace
            try:
                for svc in config.services:
                    policy = policy_for(svc)
                    st, notes = state.step(state.ServiceState(), failed, policy, time.monotonic())
                    assert [n.kind for n in notes] == [state.Kind.DOWN]
                    daemon._persist_and_notify(svc, st, notes)
                # The turn is not over: nothing is written, nothing is handed over.
                queued = notifier.dispatcher.pending()
                before = [sql for sql in statements if not sql.startswith("SELECT")]
                statements.clear()
                await asyncio.sleep(0)  # the turn ends
                after = list(statements)
                await trapd.wait_for_async(SERVICES)
            finally:
                store._db.set_trace_callback(None)
                await notifier.close()
        return before, after, queued

    before, after, queued = run_bounded(scenario(), 20.0)
    assert before == []
    assert queued == 0
    assert after.count("COMMIT") == 1, after
    assert after[0] == "BEGIN IMMEDIATE"
    with Store.open(tmp_path / "state", readonly=True) as store:
        saved = store.load_states(mono_now=time.monotonic(), wall_now=time.time())
        assert {name: st.state for name, st in saved.items()} == {
            f"mail{i}": state.State.DOWN for i in range(SERVICES)
        }
        assert store.last_sequence() == SERVICES


class SuspendingStore(SqliteStateStore):
    """The SQLite store with calls that suspend, as a database server's do."""

    async def next_sequence(self, *, above: int = 0) -> int:
        await asyncio.sleep(0.002)
        return await super().next_sequence(above=above)


def test_a_turn_whose_store_suspends_commits_before_the_next_turn_writes(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd]
) -> None:
    """Where the store's calls suspend, the next turn's commit waits for this one's.

    Otherwise the second turn's writes would join the first's transaction
    halfway and take sequence numbers between its notifications.
    """
    trapd = snmptrapd()
    assert trapd.port is not None
    path = _config(tmp_path, trapd.port)
    config = load_config(path)
    failed = CheckResult(Reason.REFUSED, "connection refused", 0.001)

    async def scenario() -> list[str]:
        daemon = Daemon(path)
        daemon.config = config
        with Store.open(config.settings.state_dir) as store:
            daemon.store = SuspendingStore(store)
            daemon.placement = Standalone(daemon.store)
            daemon.indexes = store.service_indexes(s.name for s in config.services)
            daemon.notifier = notifier = Notifier(config, daemon.store, started=time.monotonic())
            await notifier.start()
            statements: list[str] = []
            store._db.set_trace_callback(statements.append)
            try:
                half = SERVICES // 2
                for turn in (config.services[:half], config.services[half:]):
                    for svc in turn:
                        policy = policy_for(svc)
                        now = time.monotonic()
                        st, notes = state.step(state.ServiceState(), failed, policy, now)
                        daemon._persist_and_notify(svc, st, notes)
                    await asyncio.sleep(0.003)  # the turn ends; its commit is under way
                await daemon._commit_changes()
                await trapd.wait_for_async(SERVICES)
            finally:
                store._db.set_trace_callback(None)
                await notifier.close()
        return statements

    statements = run_bounded(scenario(), 20.0)
    transactions: list[list[str]] = []
    for sql in statements:
        if sql == "BEGIN IMMEDIATE":
            transactions.append([])
        elif transactions:
            transactions[-1].append(sql)
    queued = [sum(sql.startswith("INSERT INTO outbox") for sql in t) for t in transactions]
    assert [n for n in queued if n] == [SERVICES // 2] * 2  # one transaction per turn
    names = {
        int(n.varbinds[SEQUENCE].text): next(
            v.text.strip('"') for k, v in n.varbinds.items() if k.startswith(NAME)
        )
        for n in trapd.notifications
    }
    assert names == {i + 1: f"mail{i}" for i in range(SERVICES)}  # numbered as they happened
