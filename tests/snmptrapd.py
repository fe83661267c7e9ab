"""A private Net-SNMP ``snmptrapd`` as the reference receiver in tests.

``Snmptrapd`` writes a configuration file (communities, SNMPv3 users with and
without ``-e ENGINEID``, ``authUser`` lines), runs
``snmptrapd -f -Lo -C -c CONF -On udp:127.0.0.1:PORT`` with
``SNMP_PERSISTENT_DIR`` in its own directory, waits until it listens, reads its
output in a thread and parses every notification it logs into a ``Received``
record. It is stopped by PID.

Output format: ``-F`` prints one record per notification::

    ##WD-BEGIN <version>|<PDU address>|<community or user>|<security info>|<v1 agent-addr>|
        <v1 enterprise>|<v1 generic>|<v1 specific>|<v1 timestamp>
    <first varbind>
    ##WD-VB <next varbind>        (one per further varbind; a value may span lines)
    ##WD-END

with numeric OIDs (``-On``). Without ``mibs`` no MIB is loaded (``-m ""``);
with ``mibs`` and ``mib_dirs`` names are decoded where Net-SNMP can.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import free_udp_port

SYS_UPTIME = "1.3.6.1.2.1.1.3.0"
SNMP_TRAP_OID = "1.3.6.1.6.3.1.1.4.1.0"

_BEGIN = "##WD-BEGIN "
_VB = "\n##WD-VB "
_END = "##WD-END"
_FORMAT = _BEGIN + "%s|%b|%u|%P|%a|%N|%w|%q|%T\\n%V\\n##WD-VB %v\\n" + _END + "\\n"
_READY = "NET-SNMP version"
_SOURCE = re.compile(r"\[([^\]]+)\]:(\d+)")
_VARBIND = re.compile(r"\.?([0-9.]+) = (?:([A-Za-z0-9-]+): )?(.*)", re.DOTALL)
_VERSIONS = {"0": "1", "1": "2c", "3": "3"}


@dataclass(frozen=True, slots=True)
class User:
    """An SNMPv3 user of the receiver, with Net-SNMP protocol names.

    ``auth``: MD5, SHA, SHA-224, SHA-256, SHA-384, SHA-512. ``priv``: DES,
    AES, AES-192, AES-256 (and AES-192-C, AES-256-C where Net-SNMP has them).
    ``engine_id`` makes it ``createUser -e``: a user for traps from that engine;
    without it the user is the receiver's own, for informs.
    """

    name: str
    auth: str | None = None
    auth_key: str | None = None
    priv: str | None = None
    priv_key: str | None = None
    engine_id: bytes | None = None

    @property
    def level(self) -> str:
        return "priv" if self.priv else "auth" if self.auth else "noauth"

    def config_lines(self) -> list[str]:
        words = ["createUser"]
        if self.engine_id is not None:
            words += ["-e", "0x" + self.engine_id.hex()]
        words.append(self.name)
        if self.auth:
            words += [self.auth, _quote(self.auth_key or "")]
            if self.priv:
                words += [self.priv, _quote(self.priv_key or "")]
        return [" ".join(words), f"authUser log,execute,net {self.name} {self.level}"]


@dataclass(frozen=True, slots=True)
class Value:
    """A varbind's value as snmptrapd printed it: type ("STRING", "INTEGER", ...) and text.

    The text is unquoted for strings and without the leading dot for OIDs.
    Net-SNMP prints an empty string as ``""`` without a type: type "".
    """

    type: str
    text: str

    @property
    def ticks(self) -> int:
        """A Timeticks value in hundredths of a second."""
        match = re.match(r"\((\d+)\)", self.text)
        assert match, self.text
        return int(match.group(1))

    @property
    def octets(self) -> bytes:
        """A Hex-STRING's (or printable STRING's) octets."""
        if self.type == "Hex-STRING":
            return bytes.fromhex(self.text)
        return self.text.encode()


@dataclass(frozen=True, slots=True)
class Received:
    """One notification as snmptrapd logged it."""

    version: str  # "1", "2c" or "3"
    pdu: str  # "TRAP" (v1), "TRAP2" or "INFORM"
    security_name: str  # the community (v1/v2c) or the user (v3)
    source: tuple[str, int]
    varbinds: dict[str, Value]  # numeric OID without leading dot -> value, in order
    agent_address: str | None = None  # SNMPv1 only, from here on
    enterprise: str | None = None
    generic: int | None = None
    specific: int | None = None
    timestamp: int | None = None

    @property
    def trap_oid(self) -> str:
        """snmpTrapOID.0 (for SNMPv1: the RFC 3584 translation of enterprise and specific)."""
        if self.version == "1":
            assert self.enterprise is not None
            return f"{self.enterprise}.0.{self.specific}"
        return self.varbinds[SNMP_TRAP_OID].text

    @property
    def uptime(self) -> int:
        """sysUpTime.0 (SNMPv1: the timestamp) in hundredths of a second."""
        if self.version == "1":
            assert self.timestamp is not None
            return self.timestamp
        return self.varbinds[SYS_UPTIME].ticks

    @property
    def payload(self) -> dict[str, Value]:
        """The varbinds after sysUpTime.0 and snmpTrapOID.0."""
        return {k: v for k, v in self.varbinds.items() if k not in (SYS_UPTIME, SNMP_TRAP_OID)}


@dataclass
class Snmptrapd:
    """One private snmptrapd. ``start()`` it, read ``notifications``, ``stop()`` it."""

    directory: Path
    communities: Sequence[str] = ("public",)
    users: Sequence[User] = ()
    port: int | None = None  # None: a free port at start
    host: str = "127.0.0.1"  # or "::1"
    mib_dirs: Sequence[Path] = ()
    mibs: Sequence[str] = ()
    extra_config: Sequence[str] = ()
    _process: subprocess.Popen[str] | None = field(default=None, init=False, repr=False)
    _reader: threading.Thread | None = field(default=None, init=False, repr=False)
    _lines: list[str] = field(default_factory=list, init=False, repr=False)
    _changed: threading.Condition = field(
        default_factory=threading.Condition, init=False, repr=False
    )

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def config_text(self) -> str:
        lines = ["doNotRetainNotificationLogs yes"]
        lines += [f"authCommunity log,execute,net {c}" for c in self.communities]
        for user in self.users:
            lines += user.config_lines()
        lines += list(self.extra_config)
        return "\n".join(lines) + "\n"

    def command(self, config: Path) -> list[str]:
        command = ["snmptrapd", "-f", "-Lo", "-C", "-c", str(config), "-On", "-F", _FORMAT]
        if self.mib_dirs:
            command += ["-M", ":".join(str(d) for d in self.mib_dirs)]
        command += ["-m", ":".join(self.mibs)]
        if ":" in self.host:
            return [*command, f"udp6:[{self.host}]:{self.port}"]
        return [*command, f"udp:{self.host}:{self.port}"]

    def start(self, timeout: float = 5.0) -> Snmptrapd:
        """Start and wait until it listens; a port taken meanwhile means another free one."""
        fixed = self.port is not None
        for _attempt in range(3):
            if not fixed:
                self.port = _free_port(self.host)
            if self._launch(timeout):
                return self
            if fixed:
                break
        raise RuntimeError(f"snmptrapd did not start:\n{self.log}")

    def _launch(self, timeout: float) -> bool:
        assert self._process is None or not self.running, "already running"
        self._close_process()
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "snmptrapd.conf"
        config.write_text(self.config_text())
        persistent = self.directory / "persistent"
        persistent.mkdir(exist_ok=True)
        env = dict(os.environ, SNMP_PERSISTENT_DIR=str(persistent))
        with self._changed:
            start_index = len(self._lines)
        self._process = subprocess.Popen(
            self.command(config),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=env,
        )
        self._reader = threading.Thread(target=self._read, args=(self._process,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                if any(_READY in line for line in self._lines[start_index:]):
                    return True
                if self._process.poll() is not None or time.monotonic() >= deadline:
                    break
                self._changed.wait(0.05)
        self.stop()
        return False

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()

    def stop(self) -> None:
        """Stop by PID (SIGTERM, then SIGKILL after 5 s); keeps what was received."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        self._close_process()

    def _close_process(self) -> None:
        if self._reader is not None:
            self._reader.join(5)
            self._reader = None
        if self._process is not None:
            if self._process.stdout is not None:
                self._process.stdout.close()
            self._process = None

    @property
    def log(self) -> str:
        with self._changed:
            return "".join(self._lines)

    @property
    def notifications(self) -> list[Received]:
        return parse(self.log)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        """Block until at least ``count`` notifications arrived; fail with the log otherwise."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                received = parse("".join(self._lines))
                if len(received) >= count:
                    return received
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"{len(received)} of {count} notifications after {timeout} s; "
                        f"snmptrapd said:\n{''.join(self._lines)}"
                    )
                self._changed.wait(min(remaining, 0.05))

    async def wait_for_async(self, count: int, timeout: float = 5.0) -> list[Received]:  # noqa: ASYNC109 (fails with the log)
        """``wait_for`` without blocking the event loop."""
        deadline = time.monotonic() + timeout
        while True:
            received = self.notifications
            if len(received) >= count:
                return received
            if time.monotonic() >= deadline:
                return self.wait_for(count, 0)  # raises with the log
            await asyncio.sleep(0.01)


def parse(log: str) -> list[Received]:
    """Every complete notification record in snmptrapd's output."""
    records = []
    position = 0
    while (begin := log.find(_BEGIN, position)) >= 0:
        end = log.find("\n" + _END + "\n", begin)
        if end < 0:
            break
        records.append(_record(log[begin + len(_BEGIN) : end]))
        position = end + len(_END) + 2
    return records


def _record(text: str) -> Received:
    header, _, body = text.partition("\n")
    version, address, name, info, agent, enterprise, generic, specific, stamp = header.split("|")
    source = _SOURCE.search(address)
    assert source, address
    varbinds = {}
    for chunk in body.split(_VB):
        if not chunk.strip():
            continue
        match = _VARBIND.fullmatch(chunk)
        assert match, chunk
        oid, kind, value = match.groups()
        varbinds[oid] = _value(kind or "", value)
    v1 = version == "0"
    return Received(
        version=_VERSIONS[version],
        pdu=info.split(",")[0],
        security_name=name,
        source=(source.group(1), int(source.group(2))),
        varbinds=varbinds,
        agent_address=agent if v1 else None,
        enterprise=enterprise.lstrip(".") if v1 else None,
        generic=int(generic) if v1 else None,
        specific=int(specific.lstrip(".")) if v1 else None,
        timestamp=int(stamp) if v1 else None,
    )


def _value(kind: str, text: str) -> Value:
    if kind == "STRING" or (kind == "" and text.startswith('"')):
        if text.startswith('"') and text.endswith('"') and len(text) >= 2:
            text = text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        return Value(kind, text)
    if kind == "OID":
        return Value(kind, text.lstrip("."))
    return Value(kind, text.strip())


def _free_port(host: str) -> int:
    if ":" not in host:
        return free_udp_port()
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _quote(word: str) -> str:
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"' if " " in word else word
