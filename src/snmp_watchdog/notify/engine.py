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
  lives in ``state_dir/engine-boots`` as ``<engine id in hex> <boots>``, is
  incremented at every start and saved before the first notification leaves.
  It starts again at 1 when the engine ID changes. A receiver that saw a higher
  value silently drops SNMPv3 traps, which is why it is not kept in a temporary
  directory. At its maximum (2147483647) it stays there, as RFC 3414 asks.
* Both files are replaced atomically (a temporary file, fsynced, renamed over
  the old one) and the directory is fsynced after the rename, so a power cut
  leaves either the old value or the new one, never an older one or none.

This module does file I/O only; it does not import pysnmp.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from snmp_watchdog.exceptions import WatchdogError

#: Net-SNMP's IANA enterprise number, with the RFC 3411 "new format" bit set.
ENTERPRISE_PREFIX = bytes.fromhex("80001f88")
#: RFC 3411 format octet: "octets, administratively assigned".
FORMAT_OCTETS = 5
ENGINE_ID_FILE = "engine-id"
ENGINE_BOOTS_FILE = "engine-boots"
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
    boots = min(current_boots(state_dir, engine_id) + 1, MAX_BOOTS)
    _write_private(state_dir / ENGINE_BOOTS_FILE, f"{format_engine_id(engine_id)} {boots}\n")
    return boots


def current_boots(state_dir: Path, engine_id: bytes) -> int:
    """The saved ``snmpEngineBoots`` for ``engine_id`` (0 when none is saved)."""
    path = state_dir / ENGINE_BOOTS_FILE
    boots = 0
    try:
        saved_id, saved_boots = path.read_text(encoding="ascii").split()
        if parse_engine_id(saved_id) == engine_id:
            boots = int(saved_boots)
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise WatchdogError(f"{path}: cannot read snmpEngineBoots: {exc}") from exc
    return max(boots, 0)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_directory(path.parent)


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
