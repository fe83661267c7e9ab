"""The SNMPv3 identity of the watchdog: its engine ID and boot counter.

Rules (RFC 3411, RFC 3414 section 2.2):

* The engine ID is ``settings.engine_id`` when the configuration gives one.
  Otherwise it is read from ``state_dir/engine-id``; when that file does not
  exist yet, a new ID is generated and saved there (mode 0600), so it is the
  same at every start. Receivers of SNMPv3 traps name it in
  ``createUser -e ENGINEID``: it must never change by accident, so a file that
  exists but cannot be read or parsed is an error, not a reason to make a new
  one.
* A generated ID has the RFC 3411 form: ``0x80`` OR-ed into the first octet of
  the IANA enterprise number (8072, Net-SNMP's, under whose playpen the MIB
  sits), then format octet 5 ("octets, administratively assigned"), then 8
  random octets.
* ``snmpEngineBoots`` counts the starts of the engine since its ID was set. It
  lives in ``state_dir/engine-boots`` (with the engine's start, below), is
  incremented at every start and saved before the first notification leaves.
  It starts again at 1 when the engine ID changes. A receiver that saw a higher
  value silently drops SNMPv3 traps, which is why it is not kept in a temporary
  directory. At its maximum (2147483647) it stays there, as RFC 3414 asks.
* ``snmpEngineTime`` counts the seconds since the engine started, on the
  system's monotonic clock. The start is saved next to the boots value, with
  the kernel's boot ID (the monotonic clock restarts at every boot):
  ``<engine id in hex> <boots> <boot id> <monotonic start>``. A file of the
  older two-field form is read as boots without a start.
* A receiver of SNMPv3 traps (the sender is authoritative) remembers the
  highest boots and the latest engine time it accepted from an engine and
  advances that time by its own clock; it drops, as "Message too old", a
  message with lower boots, or with the same boots and a time more than 150 s
  behind (RFC 3414 section 3.2 step 7b; Net-SNMP does exactly that). So a
  one-off sender beside the daemon (``watchdog test-trap``) must not start
  its own clock from 0 under the daemon's boots: ``join_engine`` gives it the
  daemon's boots and start when the daemon has started in this boot of the
  machine (running or not, the daemon's time is what receivers expect), and
  otherwise counts a new start of the engine itself, saved like a daemon's,
  so the daemon's next start still counts above it.
* Changes of the boots file are serialised by an ``flock`` on
  ``engine-boots.lock``, so a daemon and a ``test-trap`` starting together
  never count the same start twice.
* Files made by root in a state directory owned by another user (the daemon
  under systemd's ``DynamicUser``, ``sudo watchdog test-trap`` beside it) are
  given to the directory's owner, so the daemon can still read them.
* Both files are replaced atomically (a temporary file, fsynced, renamed over
  the old one) and the directory is fsynced after the rename, so a power cut
  leaves either the old value or the new one, never an older one or none.

This module does file I/O only; it does not import pysnmp.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

from snmp_watchdog.exceptions import WatchdogError

#: Net-SNMP's IANA enterprise number, with the RFC 3411 "new format" bit set.
ENTERPRISE_PREFIX = bytes.fromhex("80001f88")
#: RFC 3411 format octet: "octets, administratively assigned".
FORMAT_OCTETS = 5
ENGINE_ID_FILE = "engine-id"
ENGINE_BOOTS_FILE = "engine-boots"
BOOTS_LOCK_FILE = "engine-boots.lock"
#: The kernel's ID of this boot of the machine (Linux).
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
MAX_BOOTS = 2147483647


def generate_engine_id() -> bytes:
    """A new random engine ID in RFC 3411 format (13 octets)."""
    return ENTERPRISE_PREFIX + bytes([FORMAT_OCTETS]) + secrets.token_bytes(8)


def format_engine_id(engine_id: bytes) -> str:
    """The engine ID as operators type it: ``0x`` and lower-case hex."""
    return "0x" + engine_id.hex()


def parse_engine_id(text: str) -> bytes:
    """Parse ``0x...`` (or bare) hex; RFC 3411 allows 5 to 32 octets, not all 0 or all ff."""
    text = text.strip()
    if text[:2].lower() == "0x":
        text = text[2:]
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"not hexadecimal: {text!r}") from None
    check_engine_id(value)
    return value


def check_engine_id(value: bytes) -> None:
    """Raise ValueError unless ``value`` is a valid SNMP engine ID (RFC 3411 SnmpEngineID)."""
    if not 5 <= len(value) <= 32:
        raise ValueError(f"an engine ID has 5 to 32 octets, not {len(value)}")
    if value == bytes(len(value)) or value == b"\xff" * len(value):
        raise ValueError("an engine ID may not be all 0 or all ff octets")


def load_engine_id(state_dir: Path, configured: bytes | None) -> bytes:
    """The engine ID to use: the configured one, else the saved one, else a new saved one."""
    if configured is not None:
        check_engine_id(configured)
        return configured
    path = state_dir / ENGINE_ID_FILE
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        engine_id = generate_engine_id()
        _write_private(path, format_engine_id(engine_id) + "\n")
        return engine_id
    except (OSError, UnicodeDecodeError) as exc:
        raise WatchdogError(f"{path}: cannot read the SNMP engine ID: {exc}") from exc
    try:
        return parse_engine_id(text)
    except ValueError as exc:
        raise WatchdogError(
            f"{path}: not an SNMP engine ID ({exc}); receivers know this engine by its ID, "
            "so fix or remove the file deliberately"
        ) from None


def saved_engine_id(state_dir: Path, configured: bytes | None) -> bytes | None:
    """The engine ID the daemon uses, without creating one (None: not generated yet)."""
    if configured is not None:
        return configured
    try:
        return parse_engine_id((state_dir / ENGINE_ID_FILE).read_text(encoding="ascii"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise WatchdogError(
            f"{state_dir / ENGINE_ID_FILE}: cannot read the engine ID: {exc}"
        ) from exc


def next_boots(state_dir: Path, engine_id: bytes) -> int:
    """Increment and save ``snmpEngineBoots`` for ``engine_id``; return the new value."""
    return start_engine(state_dir, engine_id)[0]


def start_engine(state_dir: Path, engine_id: bytes) -> tuple[int, int]:
    """Count a start of the engine: (the new ``snmpEngineBoots``, its monotonic start)."""
    with _locked(state_dir):
        return _start(state_dir, engine_id)


def join_engine(state_dir: Path, engine_id: bytes) -> tuple[int, int]:
    """Boots and monotonic start for a one-off sender beside the daemon (see the module).

    The daemon's, when it started in this boot of the machine; else a new
    start, saved. When it cannot be saved (a state directory this user may
    only read), the saved boots with a clock from now: such a trap may be
    dropped, but a boots value the daemon does not know would make receivers
    drop the daemon's own traps.
    """
    with _locked(state_dir):
        boots, started = _read(state_dir, engine_id)
        if boots > 0 and started is not None:
            return boots, started
        try:
            return _start(state_dir, engine_id)
        except OSError:
            return max(boots, 1), int(time.monotonic())


def current_boots(state_dir: Path, engine_id: bytes) -> int:
    """The saved ``snmpEngineBoots`` for ``engine_id`` (0 when none is saved)."""
    return _read(state_dir, engine_id)[0]


def _start(state_dir: Path, engine_id: bytes) -> tuple[int, int]:
    boots = min(_read(state_dir, engine_id)[0] + 1, MAX_BOOTS)
    started = int(time.monotonic())
    line = f"{format_engine_id(engine_id)} {boots}"
    boot_id = _boot_id()
    if boot_id:
        line += f" {boot_id} {started}"
    _write_private(state_dir / ENGINE_BOOTS_FILE, line + "\n")
    return boots, started


def _read(state_dir: Path, engine_id: bytes) -> tuple[int, int | None]:
    """Saved boots for ``engine_id`` (0: none) and its start if it was in this boot."""
    path = state_dir / ENGINE_BOOTS_FILE
    try:
        fields = path.read_text(encoding="ascii").split()
        if len(fields) not in (2, 4):
            raise ValueError(f"{len(fields)} fields, not 2 or 4")
        if parse_engine_id(fields[0]) != engine_id:
            return 0, None
        boots = max(int(fields[1]), 0)
        started = int(fields[3]) if len(fields) == 4 else None
    except FileNotFoundError:
        return 0, None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise WatchdogError(f"{path}: cannot read snmpEngineBoots: {exc}") from exc
    boot_id = _boot_id()
    if started is None or not boot_id or fields[2] != boot_id or started > time.monotonic():
        return boots, None  # started in another boot of the machine: its clock is gone
    return boots, started


def _boot_id() -> str:
    try:
        return BOOT_ID_FILE.read_text(encoding="ascii").strip()
    except OSError:
        return ""


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Hold the boots lock; without one where it cannot be made (a read-only state_dir)."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(state_dir / BOOTS_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        yield  # nothing can be written there either
        return
    try:
        _owned_like_directory(fd, state_dir)
    except OSError:
        os.close(fd)
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _owned_like_directory(fd, path.parent)
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_directory(path.parent)


def _owned_like_directory(fd: int, directory: Path) -> None:
    """Give a file made by root (``sudo watchdog test-trap``) to the state directory's owner.

    The daemon may run as another user (systemd's ``DynamicUser``): a 0600
    file owned by root would stop it from reading its own boots at its next
    start.
    """
    if os.geteuid() != 0:
        return
    st = os.stat(directory)
    if (st.st_uid, st.st_gid) != (0, 0):
        os.fchown(fd, st.st_uid, st.st_gid)


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable: without this a power cut can undo it.

    ``os.replace`` changes the directory, not the file: until the directory
    itself is flushed, the file system may bring back the old name (an older
    boots value: receivers would then drop SNMPv3 traps) or no file at all.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
