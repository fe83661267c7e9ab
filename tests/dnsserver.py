"""A small real DNS server on loopback, and a way to make a subprocess use it.

The ``dns`` fixture starts a UDP DNS server on ``127.53.0.1:53`` (the next
free address of 127.53.0.0/24 when another test holds that one: the system
resolver only talks to port 53). Per name it can answer an IPv4 address
(``dns.answer(name, ip)``), stay silent (``dns.hang(name)``: the resolver
times out) or fail (``dns.fail(name)``: SERVFAIL); other names are NXDOMAIN.
A question of another type for a known name gets an empty answer (NOERROR),
as a real server's AAAA for an IPv4-only name.

The system resolver of this process is left alone: ``dns.argv(cmd)`` wraps a
command in ``unshare -m`` with ``/etc/resolv.conf`` bind-mounted to a file that
names this server, so only that subprocess and its children use it.
``dns.queries`` lists the names asked, in order.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

HANG = "hang"
FAIL = "fail"
_NOERROR, _SERVFAIL, _NXDOMAIN = 0, 2, 3
_TYPE_A, _CLASS_IN = 1, 1


class DnsServer:
    def __init__(self, directory: Path) -> None:
        self._rules: dict[str, str] = {}
        self._lock = threading.Lock()
        self.queries: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for last in range(1, 255):
            try:
                self.sock.bind((f"127.53.0.{last}", 53))
                break
            except OSError:
                continue
        else:
            raise RuntimeError("no free address in 127.53.0.0/24 for port 53")
        self.address = str(self.sock.getsockname()[0])
        self.resolv_conf = directory / "resolv.conf"
        directory.mkdir(parents=True, exist_ok=True)
        self.resolv_conf.write_text(f"nameserver {self.address}\noptions timeout:5 attempts:2\n")
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    # -- what it says ------------------------------------------------------------

    def answer(self, name: str, ip: str) -> None:
        """Answer ``ip`` (IPv4) for ``name`` from now on."""
        socket.inet_aton(ip)
        self._set(name, ip)

    def hang(self, name: str) -> None:
        """Never answer questions about ``name``."""
        self._set(name, HANG)

    def fail(self, name: str) -> None:
        """Answer SERVFAIL for ``name``."""
        self._set(name, FAIL)

    def asked(self, name: str) -> int:
        """How many questions about ``name`` arrived."""
        with self._lock:
            return sum(1 for q in self.queries if q == name.lower().rstrip("."))

    def argv(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` run with this server as its only name server (own mount namespace)."""
        script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
        return ["unshare", "-m", "sh", "-c", script, str(self.resolv_conf), *cmd]

    def _set(self, name: str, rule: str) -> None:
        with self._lock:
            self._rules[name.lower().rstrip(".")] = rule

    # -- serving -------------------------------------------------------------------

    def stop(self) -> None:
        self.sock.close()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return  # closed by stop()
            try:
                reply = self._reply(data)
            except (ValueError, IndexError, struct.error):
                continue  # not a question we understand: as good as lost
            if reply is not None:
                try:
                    self.sock.sendto(reply, peer)
                except OSError:
                    return

    def _reply(self, data: bytes) -> bytes | None:
        (ident, flags, qdcount) = struct.unpack("!HHH", data[:6])
        if qdcount != 1:
            raise ValueError("one question per query")
        labels, pos = [], 12
        while data[pos]:
            length = data[pos]
            labels.append(data[pos + 1 : pos + 1 + length].decode("ascii").lower())
            pos += 1 + length
        question_end = pos + 5
        qtype, _qclass = struct.unpack("!HH", data[pos + 1 : question_end])
        name = ".".join(labels)
        with self._lock:
            self.queries.append(name)
            rule = self._rules.get(name)
        if rule == HANG:
            return None
        rcode, answers = _NOERROR, b""
        if rule is None:
            rcode = _NXDOMAIN
        elif rule == FAIL:
            rcode = _SERVFAIL
        elif qtype == _TYPE_A:
            # A pointer to the question's name, type A, class IN, TTL 0, 4 octets.
            answers = struct.pack("!HHHIH", 0xC00C, _TYPE_A, _CLASS_IN, 0, 4)
            answers += socket.inet_aton(rule)
        count = 1 if answers else 0
        # QR, the query's RD, RA; the rcode.
        out_flags = 0x8000 | (flags & 0x0100) | 0x0080 | rcode
        header = struct.pack("!HHHHHH", ident, out_flags, 1, count, 0, 0)
        return header + data[12:question_end] + answers


@pytest.fixture
def dns(tmp_path: Path) -> Iterator[DnsServer]:
    server = DnsServer(tmp_path / "dns")
    yield server
    server.stop()
