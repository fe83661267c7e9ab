"""Receivers for bench/notify.py: a datagram counter and a private snmptrapd.

``Counter`` runs this file as a child process that binds UDP ports on
127.0.0.1 and counts the datagrams arriving on each (nothing is decoded or
answered, so a trap sender is never slowed down by its receiver). The child
prints its ports as one JSON line, answers every line it reads on stdin with
the counts so far (one JSON line), and exits at the end of its input.

``Trapd`` runs Net-SNMP's ``snmptrapd`` with a private configuration and
persistent directory, its output going to a file (a file never blocks it, a
pipe the benchmark is too busy to read would), one line per notification.
``notifications()`` reads the new lines since the last call. Both are stopped
by PID.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve()
#: The most a sink asks the kernel to buffer per socket (capped by net.core.rmem_max).
RCVBUF = 8 << 20


# -- the datagram counter --------------------------------------------------------


def _count(ports: int) -> None:
    """The child: count datagrams per port until stdin closes."""
    selector = selectors.DefaultSelector()
    sockets = []
    for index in range(ports):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, index)
        sockets.append(sock)
    selector.register(sys.stdin, selectors.EVENT_READ, None)
    counts = [0] * ports
    print(json.dumps([s.getsockname()[1] for s in sockets]), flush=True)
    while True:
        for key, _events in selector.select():
            if key.data is None:
                if not sys.stdin.readline():
                    for sock in sockets:
                        sock.close()
                    return
                print(json.dumps(counts), flush=True)
                continue
            sock = sockets[key.data]
            while True:
                try:
                    sock.recv(65536)
                except BlockingIOError:
                    break
                counts[key.data] += 1


class Counter:
    """A child process counting datagrams on ``size`` loopback UDP ports."""

    def __init__(self, size: int) -> None:
        self._process = subprocess.Popen(
            [sys.executable, str(HERE), "--count", str(size)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError("the datagram counter did not start")
        self.ports: list[int] = json.loads(line)

    def counts(self) -> list[int]:
        """Datagrams received so far, per port (a round trip to the child, well under 1 ms)."""
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.write("count\n")
        self._process.stdin.flush()
        counts: list[int] = json.loads(self._process.stdout.readline())
        return counts

    def close(self) -> None:
        """End the child (end of its input, then SIGKILL by PID if it lingers)."""
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.close()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(5)
        self._process.stdout.close()


# -- snmptrapd -------------------------------------------------------------------

_BEGIN = "##N "
#: One line per notification: version, community or user, PDU info, varbinds joined by "|".
_FORMAT = _BEGIN + "%s|%u|%P|%V|%v\\n"
_READY = "NET-SNMP version"


@dataclass(frozen=True, slots=True)
class V3User:
    """An SNMPv3 user in Net-SNMP's words (``SHA-256``, ``AES``); no engine ID: for informs."""

    name: str
    auth: str
    auth_key: str
    priv: str
    priv_key: str
    engine_id: bytes | None = None  # set: a user for traps from that engine (createUser -e)

    def lines(self) -> list[str]:
        engine = f"-e 0x{self.engine_id.hex()} " if self.engine_id is not None else ""
        create = f"createUser {engine}{self.name} {self.auth} {self.auth_key}"
        return [
            f"{create} {self.priv} {self.priv_key}",
            f"authUser log,execute,net {self.name} priv",
        ]


@dataclass
class Trapd:
    """A private snmptrapd on 127.0.0.1; ``start()``, ``notifications()``, ``stop()``."""

    directory: Path
    communities: tuple[str, ...] = ("public",)
    users: tuple[V3User, ...] = ()
    port: int = 0
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _offset: int = field(default=0, init=False, repr=False)
    _partial: str = field(default="", init=False, repr=False)

    @property
    def output(self) -> Path:
        return self.directory / "snmptrapd.out"

    def start(self, timeout: float = 5.0) -> Trapd:
        """Start on a free port and wait until it listens."""
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "snmptrapd.conf"
        lines = ["doNotRetainNotificationLogs yes"]
        lines += [f"authCommunity log,execute,net {c}" for c in self.communities]
        for user in self.users:
            lines += user.lines()
        config.write_text("\n".join(lines) + "\n")
        persistent = self.directory / "persistent"
        persistent.mkdir(exist_ok=True)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        command = ["snmptrapd", "-f", "-Lo", "-C", "-c", str(config), "-On", "-m", ""]
        command += ["-F", _FORMAT, f"udp:127.0.0.1:{self.port}"]
        with self.output.open("wb") as out:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, SNMP_PERSISTENT_DIR=str(persistent)),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._process.poll() is None:
            if _READY in self.output.read_text(errors="replace"):
                self._offset = self.output.stat().st_size
                return self
            time.sleep(0.01)
        text = self.output.read_text(errors="replace")
        self.stop()
        raise RuntimeError(f"snmptrapd did not start:\n{text}")

    def notifications(self) -> list[str]:
        """The notification lines printed since the last call (cheap: reads only new bytes)."""
        with self.output.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        text = self._partial + data.decode("ascii", "replace")
        *complete, self._partial = text.split("\n")
        return [line for line in complete if line.startswith(_BEGIN)]

    def cpu_seconds(self) -> float:
        """User + system CPU time snmptrapd has used so far."""
        assert self._process is not None
        fields = Path(f"/proc/{self._process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL after 5 s."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        self._process = None


def varbind(line: str, oid: tuple[int, ...]) -> str | None:
    """The printed value (``Gauge32: 17`` -> ``17``) of ``oid`` in a notification line."""
    dotted = re.escape("." + ".".join(map(str, oid)))
    match = re.search(rf"(?:^|\|){dotted} = (?:[A-Za-z0-9-]+: )?([^|]*)", line.split("|", 3)[3])
    return match.group(1).strip() if match else None


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--count":
        _count(int(sys.argv[2]))
    else:
        raise SystemExit("usage: _sink.py --count PORTS (run by bench/notify.py)")
