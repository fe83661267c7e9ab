"""The engine ID and boots files survive a power cut: renamed atomically, directory synced."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from snmp_watchdog.notify import engine as identity

ENGINE_ID = bytes.fromhex("80001f88050102030405060708")


def _watch_syncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record, in order, every rename and every fsync (of a file or a directory, by path)."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        kind = "fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file"
        events.append((kind, os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        real_replace(src, dst)
        events.append(("replace", os.fspath(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_engine_boots_rename_is_followed_by_a_sync_of_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir = tmp_path / "state"
    identity.next_boots(state_dir, ENGINE_ID)
    events = _watch_syncs(monkeypatch)

    assert identity.next_boots(state_dir, ENGINE_ID) == 2

    boots = str(state_dir / "engine-boots")
    assert ("replace", boots) in events
    after = events[events.index(("replace", boots)) :]
    assert ("fsync dir", str(state_dir)) in after
    assert identity.current_boots(state_dir, ENGINE_ID) == 2


def test_a_new_engine_id_file_is_synced_with_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir = tmp_path / "state"
    events = _watch_syncs(monkeypatch)

    engine_id = identity.load_engine_id(state_dir, None)

    saved = str(state_dir / "engine-id")
    assert events.index(("replace", saved)) < events.index(("fsync dir", str(state_dir)))
    assert events[0][0] == "fsync file"  # the content first, then the rename, then the directory
    assert identity.load_engine_id(state_dir, None) == engine_id


def test_a_one_off_sender_takes_the_daemons_boots_and_start(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    daemon = identity.start_engine(state_dir, ENGINE_ID)
    assert identity.join_engine(state_dir, ENGINE_ID) == daemon
    assert identity.join_engine(state_dir, ENGINE_ID) == daemon  # counts no start of its own
    assert identity.start_engine(state_dir, ENGINE_ID)[0] == daemon[0] + 1


def test_a_one_off_sender_counts_a_start_when_the_daemon_did_not_start_in_this_boot(
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    boots_file = state_dir / "engine-boots"
    # Another boot of the machine (its monotonic clock is gone), then the older format.
    for saved in (f"0x{ENGINE_ID.hex()} 7 not-this-boot 12\n", f"0x{ENGINE_ID.hex()} 7\n"):
        boots_file.write_text(saved)
        boots, started = identity.join_engine(state_dir, ENGINE_ID)
        assert boots == 8
        assert identity.join_engine(state_dir, ENGINE_ID) == (boots, started)  # saved
        # The daemon's next start counts above the one-off sender's.
        assert identity.start_engine(state_dir, ENGINE_ID)[0] == 9


def test_no_boots_saved_yet_is_a_first_start(tmp_path: Path) -> None:
    boots, _started = identity.join_engine(tmp_path / "state", ENGINE_ID)
    assert boots == 1
    assert identity.current_boots(tmp_path / "state", ENGINE_ID) == 1


def test_files_root_makes_belong_to_the_owner_of_the_state_directory(tmp_path: Path) -> None:
    """``sudo watchdog test-trap`` beside a daemon running as another user (DynamicUser).

    The tests run as root (as scripts/test.sh does).
    """
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    os.chown(state_dir, 65534, 65534)

    identity.load_engine_id(state_dir, None)
    identity.join_engine(state_dir, ENGINE_ID)

    owners = {p.name: (p.stat().st_uid, p.stat().st_gid) for p in state_dir.iterdir()}
    assert owners == {
        "engine-id": (65534, 65534),
        "engine-boots": (65534, 65534),
        "engine-boots.lock": (65534, 65534),
    }
