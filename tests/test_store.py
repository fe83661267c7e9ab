"""The state store: round trips, clocks, outbox on both backends; SQLite's files and faults.

Tests taking ``backend`` run against SQLite and against a real PostgreSQL
(``tests/postgres.py``) through the async ``StateStore`` interface the
daemon uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from snmp_watchdog import store as store_module
from snmp_watchdog.exceptions import StoreError, StoreNotReady, WatchdogError
from snmp_watchdog.reasons import Reason
from snmp_watchdog.state import ServiceState, State
from snmp_watchdog.store import APPLICATION_ID, OutboxRow, Store
from tests.store_backends import Backend, Blocking, PgBackend, SqliteBackend

# Clock pairs read "together". Every value and difference is exact in binary,
# so round trips compare with ==.
MONO = 1000.0
WALL = 1_700_000_000.0

#: With SUCCEEDING: every field away from its default.
FULL = ServiceState(
    state=State.DOWN,
    since=900.5,
    failures=3,
    successes=0,
    changes=(700.25, 800.0, 900.5),
    flapping=True,
    flapping_since=850.0,
    notified=State.UP,
    notified_at=700.25,
    last_check=990.0,
    last_reason=Reason.UNEXPECTED_RESPONSE,
    last_detail="expected '^250', got '554 go away'",
    last_elapsed=0.125,
    checks=42,
    failed_checks=7,
    previous=State.UP,
)

SUCCEEDING = dataclasses.replace(FULL, failures=0, successes=2)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def store(state_dir: Path) -> Iterator[Store]:
    s = Store.open(state_dir)
    yield s
    s.close()


def reopen(state_dir: Path) -> Store:
    return Store.open(state_dir)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, state_dir: Path) -> Iterator[Backend]:
    """Each state store backend in turn, empty."""
    made: Backend = (
        SqliteBackend(state_dir)
        if request.param == "sqlite"
        else PgBackend(request.getfixturevalue("pg_url"))
    )
    yield made
    made.shutdown()


@pytest.fixture
def any_store(backend: Backend) -> Blocking:
    """An open store of each backend (closed with the backend)."""
    return backend.open()


@contextlib.contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain connection (autocommit), to set up what the store must cope with."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        yield db
    finally:
        db.close()


@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    """Run the body as a user file permissions apply to.

    As root (CI), switch the effective uid to nobody for the body: permission
    bits do not stop root. Paths used in the body must be reachable by that
    user (``public_dir``), because pytest's temporary directories are private.
    """
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A temporary directory every user can enter (removed afterwards)."""
    path = Path(tempfile.mkdtemp(prefix="store-test-"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        for sub in (path, *path.rglob("*")):
            if sub.is_dir():
                sub.chmod(0o755)
        shutil.rmtree(path)


# --- services -----------------------------------------------------------------


def test_every_field_round_trips(backend: Backend, any_store: Blocking) -> None:
    """Every ServiceState field survives a close and reopen, enums and Nones included."""
    assert {f.name for f in dataclasses.fields(ServiceState)} == {
        "state", "since", "failures", "successes", "changes", "flapping", "flapping_since",
        "notified", "notified_at", "last_check", "last_reason", "last_detail", "last_elapsed",
        "checks", "failed_checks", "previous",
    }, "ServiceState changed: persist the new field in store.py and set it in FULL"  # fmt: skip
    defaults = ServiceState()
    for f in dataclasses.fields(ServiceState):
        default = getattr(defaults, f.name)
        assert getattr(FULL, f.name) != default or getattr(SUCCEEDING, f.name) != default, f.name
    store = any_store
    store.save_state("full", FULL, mono_now=MONO, wall_now=WALL)
    store.save_state("succeeding", SUCCEEDING, mono_now=MONO, wall_now=WALL)
    store.save_state("fresh", defaults, mono_now=MONO, wall_now=WALL)
    store.close()
    with backend.open() as again:
        assert again.load_states(mono_now=MONO, wall_now=WALL) == {
            "full": FULL,
            "succeeding": SUCCEEDING,
            "fresh": defaults,
        }


def test_save_states_writes_many_as_save_state_writes_one(
    backend: Backend, any_store: Blocking
) -> None:
    """The batch the daemon flushes once a second stores exactly what one save would."""
    store = any_store
    store.save_state("old", ServiceState(checks=1), mono_now=MONO, wall_now=WALL)
    batch = {"full": FULL, "succeeding": SUCCEEDING, "fresh": ServiceState(), "old": FULL}
    store.save_states(list(batch.items()), mono_now=MONO, wall_now=WALL)
    store.close()
    with backend.open() as again:
        assert again.load_states(mono_now=MONO, wall_now=WALL) == batch


def test_save_replaces_the_previous_state(any_store: Blocking) -> None:
    store = any_store
    store.save_state("mail", ServiceState(checks=1), mono_now=MONO, wall_now=WALL)
    store.save_state("mail", ServiceState(checks=2), mono_now=MONO, wall_now=WALL)
    assert store.load_states(mono_now=MONO, wall_now=WALL) == {"mail": ServiceState(checks=2)}


def test_times_move_into_the_new_monotonic_frame(backend: Backend, any_store: Blocking) -> None:
    """After a reboot the monotonic clock restarts; ages measured on the wall clock stay."""
    store = any_store
    store.save_state("full", FULL, mono_now=MONO, wall_now=WALL)
    store.close()
    # An hour later, 50 s after boot: every time is now - (its age at save + 3600).
    mono2, wall2 = 50.0, WALL + 3600.0
    with backend.open() as again:
        got = again.load_states(mono_now=mono2, wall_now=wall2)["full"]

    def moved(t: float) -> float:
        return t - MONO - 3600.0 + mono2

    assert got.since == moved(900.5)
    assert got.changes == (moved(700.25), moved(800.0), moved(900.5))
    assert got.flapping_since == moved(850.0)
    assert got.notified_at == moved(700.25)
    assert got.last_check == moved(990.0)
    assert got.last_elapsed == 0.125  # a duration: not moved


def test_wall_clock_jump_backwards_clamps_future_times_to_now(any_store: Blocking) -> None:
    """Times that would lie in the future after the wall clock stepped back become now."""
    store = any_store
    store.save_state("full", FULL, mono_now=MONO, wall_now=WALL)
    # The wall clock now reads 150 s earlier than at save: times younger than
    # 150 s at save would lie in the future.
    got = store.load_states(mono_now=MONO, wall_now=WALL - 150.0)["full"]
    assert got.last_check == MONO  # 10 s before save
    assert got.since == MONO  # 99.5 s
    assert got.flapping_since == MONO  # exactly 150 s: now
    assert got.notified_at == MONO - 299.75 + 150.0
    assert got.changes == (MONO - 299.75 + 150.0, MONO - 200.0 + 150.0, MONO)


def test_same_clock_for_both_gives_wall_times(any_store: Blocking) -> None:
    """``watchdog status`` reads wall-clock times by passing the wall clock twice."""
    store = any_store
    store.save_state("full", FULL, mono_now=MONO, wall_now=WALL)
    got = store.load_states(mono_now=WALL + 5.0, wall_now=WALL + 5.0)["full"]
    assert got.since == WALL - 99.5
    assert got.last_check == WALL - 10.0


def test_forget_removes_only_the_named_services(any_store: Blocking) -> None:
    store = any_store
    for name in ("a", "b", "c"):
        store.save_state(name, ServiceState(), mono_now=MONO, wall_now=WALL)
    store.forget(iter(["a", "c", "never-there"]))
    assert set(store.load_states(mono_now=MONO, wall_now=WALL)) == {"b"}


def test_an_invalid_stored_state_is_an_error(backend: Backend, any_store: Blocking) -> None:
    store = any_store
    store.save_state("mail", ServiceState(), mono_now=MONO, wall_now=WALL)
    backend.execute("UPDATE service SET state = 'sideways'")
    way_out = "move it aside" if backend.name == "sqlite" else "delete its row in table service"
    with pytest.raises(StoreError, match=rf"'mail' is invalid .*sideways.*{way_out}"):
        store.load_states(mono_now=MONO, wall_now=WALL)


# --- sequence, meta, transactions -------------------------------------------------


def test_sequence_starts_at_one_and_keeps_increasing_across_restarts(
    backend: Backend, any_store: Blocking
) -> None:
    store = any_store
    assert [store.next_sequence() for _ in range(3)] == [1, 2, 3]
    store.close()
    with backend.open() as again:
        assert again.next_sequence() == 4


def test_meta_values_persist(backend: Backend, any_store: Blocking) -> None:
    store = any_store
    assert store.meta_get("engine_id") is None
    store.meta_set("engine_id", "80001f8804aabb")
    store.meta_set("boots", "1")
    store.meta_set("boots", "2")
    store.close()
    with backend.open() as again:
        assert again.meta_get("engine_id") == "80001f8804aabb"
        assert again.meta_get("boots") == "2"


def test_transaction_commits_once_and_rolls_back_on_error(
    backend: Backend, any_store: Blocking
) -> None:
    store = any_store
    with store.transaction():
        store.save_state("a", ServiceState(), mono_now=MONO, wall_now=WALL)
        with store.transaction():  # nested: part of the outer one
            store.save_state("b", ServiceState(), mono_now=MONO, wall_now=WALL)
        # A second connection sees nothing before the outer commit.
        assert backend.execute("SELECT count(*) FROM service") == [(0,)]
    assert set(store.load_states(mono_now=MONO, wall_now=WALL)) == {"a", "b"}

    def fail_halfway() -> None:
        with store.transaction():
            store.save_state("c", ServiceState(), mono_now=MONO, wall_now=WALL)
            store.next_sequence()
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_halfway()
    assert set(store.load_states(mono_now=MONO, wall_now=WALL)) == {"a", "b"}
    assert store.next_sequence() == 1  # the rolled-back number is handed out again


# --- outbox -------------------------------------------------------------------------


def test_outbox_is_fifo_per_receiver_and_survives_restart(
    backend: Backend, any_store: Blocking
) -> None:
    store = any_store
    ids = [
        store.enqueue(rcv, f"{rcv}-{n}".encode(), created=WALL + n, sequence=n)
        for n, rcv in enumerate(["nnm", "zbx", "nnm", "nnm", "zbx"], start=1)
    ]
    assert ids == sorted(ids)
    store.close()
    with backend.open() as again:
        assert again.pending_counts() == {"nnm": 3, "zbx": 2}
        assert again.pending("nnm", 10) == [
            OutboxRow(ids[0], "nnm", b"nnm-1", WALL + 1, 1, 0, ""),
            OutboxRow(ids[2], "nnm", b"nnm-3", WALL + 3, 3, 0, ""),
            OutboxRow(ids[3], "nnm", b"nnm-4", WALL + 4, 4, 0, ""),
        ]
        assert [p.payload for p in again.pending("zbx", 10)] == [b"zbx-2", b"zbx-5"]
        # Bounded batches, and paging past the ones in flight.
        assert [p.sequence for p in again.pending("nnm", 2)] == [1, 3]
        assert [p.sequence for p in again.pending("nnm", 2, after=ids[2])] == [4]
        assert again.pending("nobody", 10) == []


def test_outbox_counts_attempts_and_removes(any_store: Blocking) -> None:
    store = any_store
    first = store.enqueue("nnm", b"\x00\xff binary", created=WALL, sequence=1)
    second = store.enqueue("nnm", b"two", created=WALL, sequence=2)
    store.mark_attempt(first, "timeout after 2s")
    store.mark_attempt(first, "ICMP port unreachable")
    (head, _) = store.pending("nnm", 10)
    assert (head.attempts, head.last_error, head.payload) == (
        2,
        "ICMP port unreachable",
        b"\x00\xff binary",
    )
    store.remove(first)
    store.remove(first)  # an acknowledgement after give-up: nothing left to do
    store.mark_attempt(first, "late")  # gone: nothing to count
    assert [p.id for p in store.pending("nnm", 10)] == [second]
    assert store.pending_counts() == {"nnm": 1}
    assert store.discard("nnm") == 1
    assert store.pending_counts() == {}
    # Ids are never reused, so FIFO order holds after removals.
    assert store.enqueue("nnm", b"three", created=WALL, sequence=3) > second


# --- opening: creation, lock, read-only ------------------------------------------------


def test_open_creates_a_private_directory_and_reports_creation(state_dir: Path) -> None:
    with Store.open(state_dir / "deeper") as s:
        assert s.created
        assert (state_dir / "deeper").stat().st_mode & 0o777 == 0o700
    with Store.open(state_dir / "deeper") as s:
        assert not s.created


def test_second_open_of_the_same_directory_is_refused(state_dir: Path, store: Store) -> None:
    with pytest.raises(StoreError, match=rf"another watchdog .* \(pid {os.getpid()}\)"):
        Store.open(state_dir)
    store.close()
    Store.open(state_dir).close()  # released by close


def test_readonly_open_reads_while_the_daemon_runs(state_dir: Path, store: Store) -> None:
    store.save_state("mail", FULL, mono_now=MONO, wall_now=WALL)
    store.enqueue("nnm", b"x", created=WALL, sequence=1)
    with Store.open(state_dir, readonly=True) as status:
        assert status.load_states(mono_now=MONO, wall_now=WALL) == {"mail": FULL}
        assert status.pending_counts() == {"nnm": 1}
        with pytest.raises(StoreError, match="readonly"):
            status.meta_set("k", "v")
    store.save_state("mail", ServiceState(), mono_now=MONO, wall_now=WALL)  # still writable


def test_readonly_open_needs_an_existing_database(state_dir: Path) -> None:
    with pytest.raises(StoreError, match="no state database"):
        Store.open(state_dir, readonly=True)
    assert not state_dir.exists()


# --- opening: refusals ------------------------------------------------------------------


def test_a_garbage_file_is_refused_and_left_alone(state_dir: Path) -> None:
    state_dir.mkdir()
    garbage = b"0 ok\nnot a database at all\n" * 200
    (state_dir / "state.db").write_bytes(garbage)
    with pytest.raises(StoreError) as info:
        Store.open(state_dir)
    message = str(info.value)
    assert str(state_dir / "state.db") in message
    assert "not an SQLite database" in message
    assert "move it aside" in message
    assert "notified again" in message
    assert isinstance(info.value, WatchdogError)
    assert (state_dir / "state.db").read_bytes() == garbage
    # The way out: move it aside; the lock of the failed open was released.
    (state_dir / "state.db").rename(state_dir / "state.db.broken")
    with Store.open(state_dir) as fresh:
        assert fresh.created


def _filled(state_dir: Path) -> Path:
    """A closed database of many pages."""
    with Store.open(state_dir) as s, s.transaction():
        for n in range(2000):
            s.save_state(f"service-{n:04}", FULL, mono_now=MONO, wall_now=WALL)
    db = state_dir / "state.db"
    assert not (state_dir / "state.db-wal").exists()  # checkpointed at close
    assert db.stat().st_size > 50 * 4096
    return db


def test_a_corrupted_database_is_refused(state_dir: Path) -> None:
    db = _filled(state_dir)
    with db.open("r+b") as f:
        f.seek(db.stat().st_size // 2 // 4096 * 4096)
        f.write(bytes(range(256)) * 16)  # one page of garbage in the middle
    with pytest.raises(
        StoreError, match=r"state\.db: the state database is corrupt.*move it aside"
    ):
        Store.open(state_dir)


def test_a_truncated_database_is_refused(state_dir: Path) -> None:
    db = _filled(state_dir)
    os.truncate(db, db.stat().st_size // 2)
    with pytest.raises(
        StoreError, match=r"state\.db: the state database is corrupt.*move it aside"
    ):
        Store.open(state_dir)


def test_damage_only_a_full_check_finds_is_refused(state_dir: Path) -> None:
    """A page header that lies does not break reading the schema: quick_check finds it."""
    db = _filled(state_dir)
    with raw(db) as conn:
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'meta'").fetchone()
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    with db.open("r+b") as f:
        f.seek((root - 1) * page_size + 3)  # the page's number of cells: 0 -> 5
        f.write(b"\x00\x05")
    with pytest.raises(StoreError, match=r"state\.db: the state database is corrupt \(quick_check"):
        Store.open(state_dir)


def test_a_database_of_another_program_is_refused(state_dir: Path) -> None:
    state_dir.mkdir()
    with raw(state_dir / "state.db") as db:
        db.execute("CREATE TABLE users (name TEXT)")
    with pytest.raises(StoreError, match="another program"):
        Store.open(state_dir)
    with raw(state_dir / "state.db") as db:
        assert db.execute("PRAGMA user_version").fetchone() == (0,)


def test_a_database_from_a_newer_version_is_refused(state_dir: Path) -> None:
    Store.open(state_dir).close()
    with raw(state_dir / "state.db") as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match=r"schema version 99, written by a newer snmp-watchdog"):
        Store.open(state_dir)
    with pytest.raises(StoreError, match=r"schema version 99"):
        Store.open(state_dir, readonly=True)


def test_a_state_dir_under_a_regular_file_is_refused(tmp_path: Path) -> None:
    """Fails for root too: no permission bit is involved."""
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match=r"file/state: cannot create the state directory"):
        Store.open(tmp_path / "file" / "state")
    with pytest.raises(StoreError, match=r"exists but is not a directory"):
        Store.open(tmp_path / "file")


def test_a_database_that_is_a_directory_is_refused(state_dir: Path) -> None:
    (state_dir / "state.db").mkdir(parents=True)
    with pytest.raises(StoreError, match=r"state\.db: cannot read and write"):
        Store.open(state_dir)


def test_an_unwritable_state_dir_is_refused(public_dir: Path) -> None:
    state = public_dir / "state"
    state.mkdir(mode=0o500)
    state.chmod(0o500)
    with unprivileged(), pytest.raises(StoreError, match=r"state/lock: cannot open .*Permission"):
        Store.open(state)


def test_an_unwritable_state_dir_with_a_lock_file_is_refused(public_dir: Path) -> None:
    state = public_dir / "state"
    state.mkdir()
    (state / "lock").touch(mode=0o666)
    (state / "lock").chmod(0o666)
    state.chmod(0o555)
    with unprivileged(), pytest.raises(StoreError, match=r"state: .* not writable by this user"):
        Store.open(state)


def test_an_unreadable_database_is_refused(public_dir: Path) -> None:
    state = public_dir / "state"
    Store.open(state).close()
    state.chmod(0o777)
    (state / "lock").chmod(0o666)
    (state / "state.db").chmod(0o600)
    with unprivileged(), pytest.raises(StoreError, match=r"state\.db: cannot read and write"):
        Store.open(state)


def test_readonly_open_without_write_access_reads_a_stopped_daemons_database(
    public_dir: Path,
) -> None:
    """``watchdog status`` by a user who may read but not write the directory."""
    state = public_dir / "state"
    with Store.open(state) as s:
        s.save_state("mail", FULL, mono_now=MONO, wall_now=WALL)
    state.chmod(0o755)
    (state / "state.db").chmod(0o644)
    with unprivileged(), Store.open(state, readonly=True) as status:
        assert status.load_states(mono_now=MONO, wall_now=WALL) == {"mail": FULL}


# --- schema migrations --------------------------------------------------------------------


def test_an_empty_version_0_database_is_upgraded(state_dir: Path) -> None:
    state_dir.mkdir()
    with raw(state_dir / "state.db") as db:
        db.execute("PRAGMA user_version = 0")
        db.execute("VACUUM")  # writes the header: a real, empty database file
    assert (state_dir / "state.db").stat().st_size > 0
    with Store.open(state_dir) as s:
        assert not s.created
        assert s.next_sequence() == 1
    with raw(state_dir / "state.db") as db:
        assert db.execute("PRAGMA user_version").fetchone() == (store_module.schema_version(),)
        assert db.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)


CURRENT = store_module.schema_version()


def test_a_new_migration_upgrades_and_keeps_a_copy(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store.open(state_dir) as s:
        s.save_state("mail", FULL, mono_now=MONO, wall_now=WALL)
        s.next_sequence()

    def v2(db: sqlite3.Connection) -> None:
        db.execute("ALTER TABLE service ADD COLUMN note TEXT NOT NULL DEFAULT 'v2'")

    monkeypatch.setattr(store_module, "_MIGRATIONS", [*store_module._MIGRATIONS, v2])
    with Store.open(state_dir) as s:
        assert s.load_states(mono_now=MONO, wall_now=WALL) == {"mail": FULL}
        assert s.next_sequence() == 2
    with raw(state_dir / "state.db") as db:
        assert db.execute("PRAGMA user_version").fetchone() == (CURRENT + 1,)
        assert db.execute("SELECT note FROM service").fetchall() == [("v2",)]
    with raw(state_dir / f"state.db.schema-{CURRENT}.bak") as db:
        assert db.execute("PRAGMA user_version").fetchone() == (CURRENT,)
        assert db.execute("SELECT name FROM service").fetchall() == [("mail",)]


def test_a_failing_migration_leaves_the_database_as_it_was(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Store.open(state_dir).close()

    def broken(db: sqlite3.Connection) -> None:
        db.execute("ALTER TABLE service ADD COLUMN note TEXT")
        db.execute("SELECT * FROM no_such_table")

    monkeypatch.setattr(store_module, "_MIGRATIONS", [*store_module._MIGRATIONS, broken])
    with pytest.raises(StoreError, match=f"upgrading the schema to version {CURRENT + 1}"):
        Store.open(state_dir)
    with raw(state_dir / "state.db") as db:
        assert db.execute("PRAGMA user_version").fetchone() == (CURRENT,)
        columns = [r[1] for r in db.execute("PRAGMA table_info(service)")]
        assert "note" not in columns


def test_service_indexes_are_stable_and_never_reused(backend: Backend) -> None:
    with backend.open() as store:
        first = store.service_indexes(["b", "a"])
        assert sorted(first.values()) == [1, 2]
        store.forget(["a"])
        assert store.service_indexes(["c"]) == {"c": 3}
    with backend.open() as store:
        again = store.service_indexes(["a", "b", "c"])
    assert again == {**first, "c": 3}


def test_what_receivers_were_told_of_a_down_stays_beside_the_state_until_forgotten(
    backend: Backend,
) -> None:
    down = ServiceState(state=State.DOWN, notified=State.DOWN)
    with backend.open() as store:
        store.save_told("nothing-saved", "ignored")  # no state: nothing to keep it beside
        for name, st in (("a", down), ("b", ServiceState(notified=State.UP)), ("c", down)):
            store.save_state(name, st, mono_now=MONO, wall_now=WALL)
        store.save_told("a", '{"receivers": ["nms"]}')
        store.save_told("b", "closed later")
        store.save_states([("a", FULL), ("a", down)], mono_now=MONO, wall_now=WALL)
    with backend.open() as store:
        with store.transaction():
            told = store.forget_told(["a", "b", "c", "nothing-saved"])
        assert told == {"a": '{"receivers": ["nms"]}', "c": None}
        assert store.load_states(mono_now=MONO, wall_now=WALL) == {}
        assert store.forget_told(["a", "b", "c"]) == {}  # whoever forgets first tells


def test_a_version_2_database_is_upgraded_to_keep_what_a_down_told(backend: Backend) -> None:
    down = ServiceState(state=State.DOWN, notified=State.DOWN)
    with backend.open() as store:
        store.save_state("mail", down, mono_now=MONO, wall_now=WALL)
        numbers = store.service_indexes(["mail"])
    backend.execute("ALTER TABLE service DROP COLUMN told")
    if backend.name == "sqlite":
        backend.execute("PRAGMA user_version = 2")
    else:
        backend.execute("UPDATE watchdog_schema SET version = 2")
    with backend.open() as store:
        assert store.load_states(mono_now=MONO, wall_now=WALL) == {"mail": down}
        assert store.service_indexes(["mail"]) == numbers
        store.save_state("web", down, mono_now=MONO, wall_now=WALL)
        store.save_told("web", "told")
        assert store.forget_told(["mail", "web"]) == {"mail": None, "web": "told"}
    if backend.name == "sqlite":
        assert backend.execute("PRAGMA user_version") == [(3,)]
    else:
        assert backend.execute("SELECT version FROM watchdog_schema") == [(3,)]


def test_version_1_database_is_upgraded_keeping_states_and_numbering_services(
    tmp_path: Path,
) -> None:
    import sqlite3  # noqa: PLC0415

    with Store.open(tmp_path) as store:
        store.save_state(
            "mail", ServiceState(state=State.UP, notified=State.UP), mono_now=0.0, wall_now=0.0
        )
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute("DROP TABLE service_index")
    db.execute("ALTER TABLE service DROP COLUMN told")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with Store.open(tmp_path) as store:
        assert store.load_states(mono_now=0.0, wall_now=0.0)["mail"].state is State.UP
        numbers = store.service_indexes(["mail", "web"])
    assert numbers["mail"] == 1
    assert numbers["web"] > 1
    assert (tmp_path / "state.db.schema-1.bak").exists()


def test_a_reader_that_comes_while_the_daemon_creates_the_database_is_told_to_wait(
    tmp_path: Path,
) -> None:
    """`watchdog status` at the very moment of a first start: not a schema error."""
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.close()  # a database file exists, its schema not committed yet (version 0)
    with pytest.raises(StoreNotReady, match="still creating the state database"):
        Store.open(tmp_path, readonly=True)


def test_a_new_database_appears_whole_to_a_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the last migration of a first start runs, a reader still sees schema 0."""
    seen: list[int] = []
    last = store_module._MIGRATIONS[-1]

    def watched(db: sqlite3.Connection) -> None:
        last(db)
        reader = sqlite3.connect(tmp_path / "state.db")
        try:
            seen.append(int(reader.execute("PRAGMA user_version").fetchone()[0]))
        finally:
            reader.close()

    monkeypatch.setattr(store_module, "_MIGRATIONS", [*store_module._MIGRATIONS[:-1], watched])
    Store.open(tmp_path).close()
    assert seen == [0]
    with Store.open(tmp_path, readonly=True) as reader:
        assert reader.last_sequence() == 0
