"""Faults: a state directory that cannot be written, a full disk, clock steps, SIGTERM in a flood.

Each fault must give one clear log line and lose nothing. The file system
faults are real: a state directory under a regular file, one owned by another
user (the daemon runs as root without any capability, so permissions apply to
it), one on a read-only bind mount, and a full file system (a size-limited
tmpfs in a private mount namespace, filled from outside while the daemon
runs). Mount namespaces need root, which is how the tests run in CI.

A step of the wall clock cannot be made for one process without replacing
its C library's clock functions, so the pieces that turn monotonic times
into wall-clock times and back are tested with clocks passed in.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from snmp_watchdog.model import CheckKind, Service
from snmp_watchdog.notify.durable import StoreQueue
from snmp_watchdog.notify.message import Message, MessageBuilder
from snmp_watchdog.notify.mib import Oids
from snmp_watchdog.notify.outbox import Pending
from snmp_watchdog.reasons import Reason
from snmp_watchdog.snmp import Version
from snmp_watchdog.state import Kind, State
from snmp_watchdog.storage import SqliteStateStore
from snmp_watchdog.store import Store
from tests.helpers import (
    Daemon,
    SmtpServer,
    checks_after,
    free_tcp_port,
    free_udp_port,
    pending_rows,
)
from tests.snmptrapd import Received, Snmptrapd

OIDS = Oids()
SEQUENCE = ".".join(map(str, (*OIDS.notification_sequence, 0)))
NAME = ".".join(map(str, OIDS.service_name))
KINDS = {
    ".".join(map(str, OIDS.service_down)): "down",
    ".".join(map(str, OIDS.service_up)): "up",
}
INFORM_COMMUNITY = "watchdog-informs"  # not the traps' (see tests/test_restart.py)
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces need root")


def config_text(state_dir: Path, receiver_port: int, services: str, **defaults: str) -> str:
    settings = {
        "interval": "0.2s",
        "retry_interval": "0.1s",
        "timeout": "0.5s",
        "fall": "2",
        "rise": "2",
        "jitter": "0",
        "flap_changes": "0",
        **defaults,
    }
    return f"""
watchdog:
  state_dir: {state_dir}
defaults: {{{", ".join(f"{k}: {v}" for k, v in settings.items())}}}
receivers:
  - {{name: traps, host: 127.0.0.1, port: {receiver_port}, version: 2c, community: public}}
  - {{name: informs, host: 127.0.0.1, port: {receiver_port}, version: 2c,
      community: {INFORM_COMMUNITY}, mode: inform, timeout: 0.5s}}
services:
{services}"""


def service(name: str, port: int, check: str = "smtp") -> str:
    return f"  - {{name: {name}, host: 127.0.0.1, port: {port}, check: {check}}}\n"


def distinct(received: list[Received], pdu: str) -> list[tuple[int, str, str]]:
    """(sequence, kind, service) of each notification in order of first arrival.

    A repeat (sent again after a stop interrupted its acknowledgement) must be
    the same notification.
    """
    first: dict[int, Received] = {}
    for n in received:
        if n.pdu == pdu:
            seen = first.setdefault(int(n.varbinds[SEQUENCE].text), n)
            assert (seen.trap_oid, seen.payload) == (n.trap_oid, n.payload)
    return [
        (seq, KINDS[n.trap_oid], next(v.text for k, v in n.payload.items() if k.startswith(NAME)))
        for seq, n in first.items()
    ]


def run_argv(cfg: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "snmp_watchdog", "-c", str(cfg), *extra, "run"]


# --- a state directory that cannot be written, at start ---------------------------------


def _under_a_file(state: Path) -> list[str]:
    state.parent.write_text("")  # state_dir: FILE/state
    return []


def _another_users(state: Path) -> list[str]:
    state.mkdir(parents=True, mode=0o700)
    os.chown(state, 65534, 65534)
    # Root without capabilities is subject to file permissions like anyone.
    return ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"]


def _read_only(state: Path) -> list[str]:
    with Store.open(state):  # a database from an earlier run, on a file system now read-only
        pass
    script = 'mount --bind -o ro "$1" "$1" && shift && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(state)]


@pytest.mark.slow
@pytest.mark.snmp
@root_only
@pytest.mark.parametrize(
    ("prepare", "where", "why"),
    [
        (_under_a_file, "file/state", r"cannot create the state directory: Not a directory"),
        (_another_users, "state/lock", r"cannot open the lock file: Permission denied"),
        (_read_only, "state/lock", r"cannot open the lock file: Read-only file system"),
    ],
    ids=["under-a-regular-file", "owned-by-another-user", "read-only-file-system"],
)
def test_a_state_dir_that_cannot_be_written_stops_the_start_with_one_clear_line(
    tmp_path: Path,
    snmptrapd: Callable[..., Snmptrapd],
    prepare: Callable[[Path], list[str]],
    where: str,
    why: str,
) -> None:
    """Nothing is sent: a start without its state would announce a down service as news."""
    trapd = snmptrapd(communities=["public", INFORM_COMMUNITY])
    assert trapd.port is not None
    state = tmp_path / "file" / "state" if prepare is _under_a_file else tmp_path / "state"
    prefix = prepare(state)
    cfg = tmp_path / "watchdog.yaml"
    cfg.write_text(config_text(state, trapd.port, service("mail", free_tcp_port())))
    proc = subprocess.run(
        [*prefix, *run_argv(cfg)], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 1, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("watchdog: ")]
    assert len(errors) == 1, proc.stderr
    assert re.search(rf"{tmp_path}/{where}: {why}; .*watchdog\.state_dir", errors[0]), errors
    assert "Traceback" not in proc.stderr
    time.sleep(0.3)
    assert trapd.notifications == []


# --- a full file system at run time --------------------------------------------------------


class Tmpfs:
    """A size-limited tmpfs on ``path`` in a mount namespace of its own, kept by a holder."""

    def __init__(self, path: Path, size: str) -> None:
        path.mkdir(parents=True)
        script = (
            'mount -t tmpfs -o size="$2",mode=0700 tmpfs "$1" && echo mounted && exec sleep 600'
        )
        self.path = path
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
        self.holder = subprocess.Popen(
            [*argv, str(path), size],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.holder.stdout is not None
        assert self.holder.stdout.readline() == "mounted\n"

    def outside(self, name: str) -> Path:
        """``path / name`` as seen from here (through the holder's root)."""
        return Path(f"/proc/{self.holder.pid}/root") / self.path.relative_to("/") / name

    def enter(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt", "--", *argv]

    def fill(self) -> Path:
        """Take every free byte; remove the returned file to give them back."""
        filler = self.outside("filler")
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for chunk in (1 << 20, 4096, 1):
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, b"\0" * chunk)
        finally:
            os.close(fd)
        fd = os.open(filler, os.O_WRONLY | os.O_APPEND)
        try:
            with pytest.raises(OSError, match="No space left on device") as info:
                os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
        assert info.value.errno == errno.ENOSPC
        return filler

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait(10)
        if self.holder.stdout is not None:
            self.holder.stdout.close()


@pytest.mark.slow
@pytest.mark.snmp
@root_only
def test_a_full_disk_at_run_time_loses_no_notification_and_skips_no_number(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd], smtp: SmtpServer, daemons: list[Daemon]
) -> None:
    trapd = snmptrapd(communities=["public", INFORM_COMMUNITY])
    assert trapd.port is not None
    disk = Tmpfs(tmp_path / "state", "8m")
    try:
        cfg = tmp_path / "watchdog.yaml"
        cfg.write_text(config_text(disk.path, trapd.port, service("mail", smtp.port)))

        def start() -> Daemon:
            d = Daemon(None, argv=disk.enter(run_argv(cfg, "--log-level", "debug")))
            daemons.append(d)
            d.wait_for("ready")
            return d

        # Numbers 1 and 2 are used and stored by a first run.
        d = start()
        d.wait_for(r"down #1 \(mail\) to informs acknowledged")
        smtp.start()
        d.wait_for(r"up #2 \(mail\) to informs acknowledged")
        assert d.stop() == 0

        # Restarted, then the disk fills up: one error line, checks and notifications go on.
        d = start()
        d.wait_for(r"resumed the state of 1 service")
        filler = disk.fill()
        failed = d.wait_for(r"ERROR cannot write the state database: .*disk is full; checks go on")
        smtp.stop()
        d.wait_for(r"mail .* is DOWN \(was up\)", start=failed)
        d.wait_for(r"down #3 \(mail\) sent to traps", start=failed)  # from memory, next number
        d.wait_for(r"down #3 \(mail\) to informs acknowledged", start=failed)

        filler.unlink()
        back = d.wait_for(r"INFO the state database is writable again", start=failed)
        smtp.start()
        d.wait_for(r"up #4 \(mail\) to informs acknowledged", start=back)
        assert d.stop() == 0
        assert sum("cannot write the state database" in ln for ln in d.lines) == 1

        # What was kept in memory reached the database once it could: nothing is said again.
        d = start()
        d.wait_for(r"resumed the state of 1 service")
        first = d.wait_for(r"check mail: ok")
        for _ in range(3):
            first = d.wait_for(r"check mail: ok", start=first + 1)
        assert d.stop() == 0
    finally:
        disk.close()
    expected = [(1, "down", "mail"), (2, "up", "mail"), (3, "down", "mail"), (4, "up", "mail")]
    received = trapd.notifications
    assert distinct(received, "TRAP2") == expected
    assert distinct(received, "INFORM") == expected
    assert len([n for n in received if n.pdu == "TRAP2"]) == 4


@pytest.mark.slow
@pytest.mark.snmp
@root_only
def test_what_was_delivered_while_the_disk_was_full_is_not_sent_again_after_a_crash(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd], smtp: SmtpServer, daemons: list[Daemon]
) -> None:
    """A stored inform acknowledged while its delete cannot be written, then SIGKILL."""
    trapd = snmptrapd(communities=["public", INFORM_COMMUNITY], port=free_udp_port(), start=False)
    assert trapd.port is not None
    disk = Tmpfs(tmp_path / "state", "8m")
    try:
        cfg = tmp_path / "watchdog.yaml"
        cfg.write_text(config_text(disk.path, trapd.port, service("mail", smtp.port)))

        def start() -> Daemon:
            d = Daemon(None, argv=disk.enter(run_argv(cfg, "--log-level", "debug")))
            daemons.append(d)
            d.wait_for("ready")
            return d

        # Down #1 is stored while the receiver is away; then the disk fills up.
        d = start()
        d.wait_for(r"down #1 \(mail\) to informs not acknowledged \(attempt 1\)")
        filler = disk.fill()
        failed = d.wait_for(r"ERROR cannot write the state database: .*disk is full")
        trapd.start()
        d.wait_for(r"down #1 \(mail\) to informs acknowledged", start=failed, timeout=20)

        # The disk has room again; the delivered inform's delete follows, then a crash.
        filler.unlink()
        back = d.wait_for(r"INFO the state database is writable again", start=failed)
        d.wait_for(r"outbox of informs: 1 delivered notification\(s\) deleted", start=back)
        d.kill()

        d = start()
        d.wait_for(r"resumed the state of 1 service")
        first = d.wait_for(r"check mail: refused")
        d.wait_for(r"check mail: refused", start=first + 1)
        assert d.stop() == 0
        assert not any("from before the restart" in ln for ln in d.lines), d.lines
        assert not any(re.search(r"down #1 .* acknowledged", ln) for ln in d.lines), d.lines
    finally:
        disk.close()
    assert distinct(trapd.notifications, "INFORM") == [(1, "down", "mail")]
    assert len([n for n in trapd.notifications if n.pdu == "INFORM"]) == 1


@pytest.mark.slow
@pytest.mark.snmp
@root_only
def test_a_number_used_while_the_disk_was_full_is_not_used_again_after_a_restart(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd], smtp: SmtpServer, daemons: list[Daemon]
) -> None:
    """Down #3 goes out from memory; the disk is freed, the daemon stops: Up is #4, not #3."""
    trapd = snmptrapd(communities=["public", INFORM_COMMUNITY])
    assert trapd.port is not None
    disk = Tmpfs(tmp_path / "state", "8m")
    try:
        cfg = tmp_path / "watchdog.yaml"
        cfg.write_text(config_text(disk.path, trapd.port, service("mail", smtp.port)))

        def start() -> Daemon:
            d = Daemon(None, argv=disk.enter(run_argv(cfg, "--log-level", "debug")))
            daemons.append(d)
            d.wait_for("ready")
            return d

        d = start()
        d.wait_for(r"down #1 \(mail\) to informs acknowledged")
        smtp.start()
        d.wait_for(r"up #2 \(mail\) to informs acknowledged")
        filler = disk.fill()
        failed = d.wait_for(r"ERROR cannot write the state database: .*disk is full")
        smtp.stop()
        d.wait_for(r"down #3 \(mail\) to informs acknowledged", start=failed)
        filler.unlink()
        back = d.wait_for(r"INFO the state database is writable again", start=failed)
        first = d.wait_for(r"check mail: refused", start=back)
        d.wait_for(r"check mail: refused", start=first + 1)  # a flush has passed
        assert d.stop() == 0

        d = start()
        smtp.start()
        d.wait_for(r"up #4 \(mail\) to informs acknowledged")
        assert d.stop() == 0
    finally:
        disk.close()
    expected = [(1, "down", "mail"), (2, "up", "mail"), (3, "down", "mail"), (4, "up", "mail")]
    assert distinct(trapd.notifications, "TRAP2") == expected
    assert distinct(trapd.notifications, "INFORM") == expected


@pytest.mark.slow
@pytest.mark.snmp
@root_only
def test_a_service_a_reload_removed_while_the_disk_was_full_is_not_closed_again_at_restart(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd], smtp: SmtpServer, daemons: list[Daemon]
) -> None:
    """The reload's Up (removed) goes out from memory; its forgetting must follow."""
    trapd = snmptrapd(communities=["public", INFORM_COMMUNITY])
    assert trapd.port is not None
    disk = Tmpfs(tmp_path / "state", "8m")
    try:
        cfg = tmp_path / "watchdog.yaml"
        both = service("mail", smtp.port) + service("web", smtp.port)
        cfg.write_text(config_text(disk.path, trapd.port, both))

        def start() -> Daemon:
            d = Daemon(None, argv=disk.enter(run_argv(cfg, "--log-level", "debug")))
            daemons.append(d)
            d.wait_for("ready")
            return d

        d = start()
        d.wait_for(r"down #\d \(mail\) to informs acknowledged")
        d.wait_for(r"down #\d \(web\) to informs acknowledged")
        filler = disk.fill()
        failed = d.wait_for(r"ERROR cannot write the state database: .*disk is full")
        cfg.write_text(config_text(disk.path, trapd.port, service("web", smtp.port)))
        d.signal(signal.SIGHUP)
        d.wait_for(r"configuration reloaded", start=failed)
        d.wait_for(r"up #3 \(mail\) to informs acknowledged", start=failed)
        filler.unlink()
        back = d.wait_for(r"INFO the state database is writable again", start=failed)
        first = d.wait_for(r"check web: refused", start=back)
        d.wait_for(r"check web: refused", start=first + 1)  # a flush has passed
        assert d.stop() == 0

        d = start()
        first = d.wait_for(r"check web: refused")
        d.wait_for(r"check web: refused", start=first + 1)
        assert d.stop() == 0
        assert not any("removed from the configuration while" in ln for ln in d.lines), d.lines
    finally:
        disk.close()
    got = distinct(trapd.notifications, "INFORM")
    assert sorted(kind for _, kind, name in got if name == "mail") == ["down", "up"], got


# --- SIGTERM in a flood of checks ------------------------------------------------------------

FLOOD = 300


@pytest.mark.slow
@pytest.mark.snmp
def test_sigterm_twice_during_a_flood_of_checks_stops_cleanly_and_loses_nothing(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd], daemons: list[Daemon]
) -> None:
    """300 services going down at once; SIGTERM (twice) while the notifications go out."""
    trapd = snmptrapd(communities=["public", INFORM_COMMUNITY])
    assert trapd.port is not None
    closed = free_tcp_port()
    services = "".join(service(f"s{n:03}", closed, "tcp") for n in range(FLOOD))
    cfg = tmp_path / "watchdog.yaml"
    cfg.write_text(config_text(tmp_path / "state", trapd.port, services))

    d = Daemon(cfg)
    daemons.append(d)
    mark = d.wait_for("ready")
    for _ in range(20):
        mark = d.wait_for(r"down #\d+ \(s\d+\) sent to traps", start=mark + 1)
    d.signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    d.wait_for(r"SIGTERM received: stopping")
    d.signal(signal.SIGTERM)  # impatient: must not cut the clean-up short
    assert d.proc.wait(10) == 0
    assert time.monotonic() - stopped_at < 3.0
    d.wait_for(r"SIGTERM received: already stopping")
    queued = d.wait_for(r"\d+ notification\(s\) not yet delivered stay queued")
    d.wait_for(r"stopped after \d+ checks")
    assert not any("Traceback" in ln or "ERROR" in ln for ln in d.lines), d.lines
    first_run = [ln for ln in d.lines if " is DOWN " in ln]
    assert int(d.lines[queued].split()[2]) > 0

    d = Daemon(cfg)
    daemons.append(d)
    deadline = time.monotonic() + 20
    while True:
        waiting = pending_rows(tmp_path / "state")
        downs = first_run + [ln for ln in d.lines if " is DOWN " in ln]
        if waiting == {} and len(downs) >= FLOOD:
            break
        assert time.monotonic() < deadline, (waiting, len(downs))
        time.sleep(0.1)
    assert d.stop() == 0

    # Every service went down once, was announced once, under one number, none skipped.
    assert len(downs) == FLOOD
    numbers = set(range(1, FLOOD + 1))
    for pdu in ("TRAP2", "INFORM"):
        got = distinct(trapd.notifications, pdu)
        assert {seq for seq, _, _ in got} == numbers, pdu
        assert sorted(name for _, _, name in got) == [f"s{n:03}" for n in range(FLOOD)], pdu
    assert len([n for n in trapd.notifications if n.pdu == "TRAP2"]) == FLOOD


# --- the pieces that see the wall clock --------------------------------------------------------


def _message(sequence: int) -> Message:
    svc = Service(name=f"s{sequence}", host="127.0.0.1", port=25, check=CheckKind.SMTP)
    return MessageBuilder(OIDS).service_event(
        kind=Kind.DOWN if sequence % 2 else Kind.UP, service=svc, index=1, state=State.DOWN,
        previous=State.UP, reason=Reason.REFUSED, detail="", count=2, elapsed=0.001,
        at_wall=1.7e9, sequence=sequence,
    )  # fmt: skip


async def _head(queue: StoreQueue) -> Pending:
    return await asyncio.wait_for(queue.head(), 1)


def test_a_notification_kept_in_memory_is_not_overtaken_by_one_stored_later(
    tmp_path: Path,
) -> None:
    """Down #2 could not be stored (disk full); Up #3 could: the receiver must get #2 first."""

    async def scenario() -> list[int]:
        with Store.open(tmp_path / "state") as store:
            queue = StoreQueue(SqliteStateStore(store), "nms")
            await queue.write(Pending("nms", _message(1), time.monotonic()))
            order = []
            item = await _head(queue)  # #1 is being delivered (a receiver away) ...
            queue.append_volatile(Pending("nms", _message(2), time.monotonic()))
            await queue.write(Pending("nms", _message(3), time.monotonic()))
            while len(queue):  # ... and then all of them leave
                order.append(item.message.sequence)
                queue.remove(item)
                if len(queue):
                    item = await _head(queue)
            return order

    assert asyncio.run(scenario()) == [1, 2, 3]


def test_stored_notifications_are_decoded_one_at_a_time_as_they_reach_the_head(
    tmp_path: Path,
) -> None:
    """Decoding builds SNMP values; a whole window at once would hold the loop in a burst.

    A broken row behind the head is therefore found (and dropped) only when it
    becomes the head, not when its window is read from the database.
    """

    async def scenario() -> tuple[int, int, list[int]]:
        with Store.open(tmp_path / "state") as store:
            queue = StoreQueue(SqliteStateStore(store), "nms")
            await queue.write(Pending("nms", _message(1), time.monotonic()))
            broken = store.enqueue("nms", b"not json", created=time.time(), sequence=2)
            await queue.write(Pending("nms", _message(3), time.monotonic()))
            first = await _head(queue)
            still_stored = [row.id for row in store.pending("nms", 10)]
            queue.remove(first)
            rest = [(await _head(queue)).message.sequence]
            return first.message.sequence, broken, [*still_stored, *rest]

    first, broken, seen = asyncio.run(scenario())
    assert first == 1
    assert broken in seen[:-1]  # not decoded yet, so not dropped yet
    assert seen[-1] == 3  # then dropped on its turn, and the next one follows


class Clocks:
    """A monotonic and a wall clock that tests move; the wall one can be stepped alone."""

    def __init__(self) -> None:
        self.mono = 5000.0
        self.wall = 1_700_000_000.0

    def tick(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


def test_a_wall_clock_step_neither_ages_nor_rejuvenates_waiting_notifications(
    tmp_path: Path,
) -> None:
    """Within the process the monotonic clock is the truth, whatever the wall clock does.

    Rows are read back a window at a time; those read after a step of two days
    forward must not look two days old (``give_up_after`` would drop them
    unsent), those read after a step back must not look younger.
    """
    clocks = Clocks()

    async def scenario() -> list[tuple[int, float, float]]:
        with Store.open(tmp_path / "state") as store:
            queue = StoreQueue(
                SqliteStateStore(store),
                "nms",
                window=10,
                clock=lambda: clocks.mono,
                wall=lambda: clocks.wall,
            )
            made = {}
            for n in range(1, 31):
                if n == 11:
                    clocks.wall += 2 * 86400  # NTP finds the clock two days slow
                if n == 21:
                    clocks.wall -= 3600  # an operator sets it back an hour
                made[n] = clocks.mono
                await queue.write(Pending("nms", _message(n), clocks.mono))
                clocks.tick(1.0)
            clocks.wall += 86400  # and once more before anything is read
            seen = []
            while len(queue):
                item = await _head(queue)
                seen.append((item.message.sequence, item.submitted, made[item.message.sequence]))
                queue.remove(item)
            return seen

    seen = asyncio.run(scenario())
    assert [n for n, _, _ in seen] == list(range(1, 31))
    for n, submitted, made in seen:
        assert submitted == pytest.approx(made), n


def test_after_a_restart_waiting_notifications_keep_their_age(tmp_path: Path) -> None:
    """Rows of an earlier process are as old as the wall clock says, never from the future."""
    clocks = Clocks()

    async def scenario() -> list[float]:
        with Store.open(tmp_path / "state") as store:
            first = StoreQueue(
                SqliteStateStore(store), "nms", clock=lambda: clocks.mono, wall=lambda: clocks.wall
            )
            await first.write(Pending("nms", _message(1), clocks.mono))
            clocks.wall += 7200  # the clock runs two hours ahead ...
            await first.write(Pending("nms", _message(2), clocks.mono))
        clocks.mono = 10.0  # a reboot: a new monotonic clock
        clocks.wall += -7200 + 600  # ... ten minutes later, the clock is right again
        with Store.open(tmp_path / "state") as store:
            second = StoreQueue(
                SqliteStateStore(store), "nms", clock=lambda: clocks.mono, wall=lambda: clocks.wall
            )
            ages = []
            for _ in range(2):
                item = await _head(second)
                ages.append(clocks.mono - item.submitted)
                second.remove(item)
            return ages

    old, from_the_future = asyncio.run(scenario())
    assert old == pytest.approx(600.0)
    assert from_the_future == 0.0  # written with a clock two hours ahead: clamped to now


@pytest.mark.snmp
def test_snmpv3_traps_still_arrive_after_the_wall_clock_is_stepped_back(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd], monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 3414: snmpEngineTime counts seconds since the engine started, on no wall clock."""
    from snmp_watchdog import model  # noqa: PLC0415
    from snmp_watchdog.notify.sender import Sender  # noqa: PLC0415
    from tests.snmptrapd import User  # noqa: PLC0415

    engine_id = bytes.fromhex("80001f88050102030405060708")
    user = User("u", "SHA-256", "auth-key-1", "AES", "priv-key-2", engine_id=engine_id)
    trapd = snmptrapd(communities=[], users=[user])
    assert trapd.port is not None
    receiver = model.Receiver(
        name="nms", host="127.0.0.1", port=trapd.port, version=Version.V3, user="u",
        auth=model.UsmKey("SHA256", model.Secret("auth-key-1")),
        priv=model.UsmKey("AES128", model.Secret("priv-key-2")),
    )  # fmt: skip
    settings = model.Settings(state_dir=tmp_path / "state", engine_id=engine_id)
    real_time = time.time

    async def scenario() -> None:
        sender = Sender(settings, [receiver], started=time.monotonic())
        await asyncio.wait_for(sender.start(), 5)
        try:
            for n, step in enumerate([1000.0, 500.0, 500.0], start=1):
                # Up 1000 s on the wall clock, then the clock is set back 500 s.
                monkeypatch.setattr(time, "time", lambda step=step: real_time() + step)
                delivery = await asyncio.wait_for(sender.send(receiver, _message(n)), 5)
                assert delivery.ok
                await trapd.wait_for_async(n, timeout=2)
        finally:
            monkeypatch.setattr(time, "time", real_time)
            await asyncio.wait_for(sender.close(), 5)

    asyncio.run(scenario())


@pytest.mark.slow
@pytest.mark.snmp
@root_only
def test_a_full_disk_is_not_taken_for_writable_again_while_nothing_was_written(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd], smtp: SmtpServer, daemons: list[Daemon]
) -> None:
    """A flush with nothing to save yet is no sign that the disk has room again.

    The service stays up, so its states wait for the next full flush; the
    heartbeat's numbers cannot be stored. The failure is logged once, and
    the recovery only once the disk has room.
    """
    trapd = snmptrapd()
    assert trapd.port is not None
    smtp.start()
    disk = Tmpfs(tmp_path / "state", "8m")
    try:
        cfg = tmp_path / "watchdog.yaml"
        text = config_text(disk.path, trapd.port, service("mail", smtp.port))
        cfg.write_text(text.replace("watchdog:\n", "watchdog:\n  heartbeat: 0.3s\n", 1))
        d = Daemon(None, argv=disk.enter(run_argv(cfg, "--log-level", "debug")))
        daemons.append(d)
        d.wait_for("ready")
        checks_after(d, r"check mail: ok", 10)  # past the first flush: what follows is settled
        filler = disk.fill()
        failed = d.wait_for(r"ERROR cannot write the state database: .*disk is full")
        checks_after(d, r"check mail: ok", 10, start=failed)  # two seconds and more
        after = d.lines[failed:]
        assert not [ln for ln in after if "writable again" in ln], after
        assert not [ln for ln in after[1:] if "cannot write the state database" in ln], after
        filler.unlink()
        d.wait_for(r"INFO the state database is writable again", start=failed)
        assert d.stop() == 0
    finally:
        disk.close()
