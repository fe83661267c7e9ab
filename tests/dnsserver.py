"""A small real DNS server on loopback, and a way to make programs use it.

:class:`DnsServer` listens on UDP and TCP port 53 of a loopback address of its
own (``127.53.0.1``, or another ``127.53.x.y`` when that one is taken by a
concurrent test run), in threads, so it serves synchronous and asyncio tests
alike. Per name (case-insensitive, trailing dot optional) it can:

- ``answer(name, *ips)``: answer A queries with the IPv4 and AAAA queries with
  the IPv6 addresses given (no address of a family is an empty NOERROR answer);
- ``fail(name, rcode="SERVFAIL")``: answer with that error (``"NXDOMAIN"``);
- ``hang(name)``: never answer (UDP queries are dropped, TCP connections are
  held open without a word).

Names it was not told about are NXDOMAIN. ``queries`` lists every question
received, as ``(name, type)`` (``type`` is ``"A"``, ``"AAAA"`` or a number).

How programs use it: host names are resolved by the C library, which reads
``/etc/resolv.conf``. ``argv(cmd)`` wraps a command line so that it runs in
a private mount namespace (``unshare -m``, the tests run as root) in which a
resolv.conf naming only this server, with ``options timeout:1 attempts:1``,
is bind-mounted over ``/etc/resolv.conf``; nothing outside that process tree
sees the change. A check that must resolve through this server therefore runs
in a subprocess, typically ``watchdog probe``::

    def test_x(dns: DnsServer) -> None:
        dns.answer("mail.test", "127.0.0.1")
        subprocess.run(dns.argv([sys.executable, "-m", "snmp_watchdog", ...]))

The ``dns`` fixture (in ``tests/conftest.py``) starts one server per test and
stops it at the end.
"""

from __future__ import annotations

import ipaddress
import random
import select
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

_A, _AAAA = 1, 28
_TYPES = {_A: "A", _AAAA: "AAAA"}
_RCODES = {"NOERROR": 0, "SERVFAIL": 2, "NXDOMAIN": 3, "REFUSED": 5}


def _normal(name: str) -> str:
    return name.rstrip(".").lower()


class DnsServer:
    """An authoritative-for-everything DNS server on a loopback address, port 53."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.queries: list[tuple[str, str | int]] = []
        self._answers: dict[str, list[ipaddress.IPv4Address | ipaddress.IPv6Address]] = {}
        self._failures: dict[str, int] = {}
        self._hanging: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._held: list[socket.socket] = []
        self._udp, self._tcp = self._bind()
        self.address = self._udp.getsockname()[0]
        self.resolv_conf = directory / "resolv.conf"
        self.resolv_conf.write_text(
            f"nameserver {self.address}\noptions timeout:1 attempts:1\n", encoding="ascii"
        )

    # -- what to answer --------------------------------------------------------

    def answer(self, name: str, *ips: str) -> None:
        """Answer ``name`` with these addresses (A for IPv4, AAAA for IPv6)."""
        with self._lock:
            key = _normal(name)
            self._answers[key] = [ipaddress.ip_address(ip) for ip in ips]
            self._failures.pop(key, None)
            self._hanging.discard(key)

    def fail(self, name: str, rcode: str = "SERVFAIL") -> None:
        """Answer ``name`` with an error: ``SERVFAIL`` (default), ``NXDOMAIN`` or ``REFUSED``."""
        with self._lock:
            key = _normal(name)
            self._failures[key] = _RCODES[rcode]
            self._answers.pop(key, None)
            self._hanging.discard(key)

    def hang(self, name: str) -> None:
        """Never answer queries for ``name``."""
        with self._lock:
            key = _normal(name)
            self._hanging.add(key)
            self._answers.pop(key, None)
            self._failures.pop(key, None)

    def argv(self, cmd: list[str]) -> list[str]:
        """``cmd`` run with ``/etc/resolv.conf`` naming this server only."""
        script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
        return ["unshare", "-m", "sh", "-c", script, str(self.resolv_conf), *cmd]

    # -- running ---------------------------------------------------------------

    def start(self) -> DnsServer:
        for target in (self._serve_udp, self._serve_tcp):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        with self._lock:
            held, self._held = self._held, []
        for sock in (*held, self._udp, self._tcp):
            sock.close()

    def _bind(self) -> tuple[socket.socket, socket.socket]:
        candidates = ["127.53.0.1"] + [
            f"127.53.{random.randrange(256)}.{random.randrange(1, 255)}" for _ in range(50)
        ]
        for address in candidates:
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                udp.bind((address, 53))
                tcp.bind((address, 53))
            except OSError:
                udp.close()
                tcp.close()
                continue
            tcp.listen(16)
            return udp, tcp
        raise RuntimeError("no free loopback address for a DNS server on port 53")

    def _serve_udp(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._udp], [], [], 0.1)
            if not ready:
                continue
            query, peer = self._udp.recvfrom(4096)
            response = self._respond(query)
            if response is not None:
                self._udp.sendto(response, peer)

    def _serve_tcp(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._tcp], [], [], 0.1)
            if not ready:
                continue
            conn, _ = self._tcp.accept()
            thread = threading.Thread(target=self._serve_connection, args=(conn,), daemon=True)
            thread.start()

    def _serve_connection(self, conn: socket.socket) -> None:
        with self._lock:
            self._held.append(conn)  # closed by stop(), whatever happens here
        conn.settimeout(0.1)
        pending = b""
        while not self._stop.is_set():
            try:
                data = conn.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            pending += data
            while len(pending) >= 2:
                size = struct.unpack("!H", pending[:2])[0]
                if len(pending) < 2 + size:
                    break
                query, pending = pending[2 : 2 + size], pending[2 + size :]
                response = self._respond(query)
                if response is not None:
                    conn.sendall(struct.pack("!H", len(response)) + response)

    # -- the protocol (RFC 1035) -----------------------------------------------

    def _respond(self, query: bytes) -> bytes | None:
        """The response to ``query``, or None to stay silent."""
        if len(query) < 12:
            return None
        ident, flags, qdcount = struct.unpack("!HHH", query[:6])
        if qdcount != 1:
            return None
        labels, offset = [], 12
        while offset < len(query) and (length := query[offset]) != 0:
            labels.append(query[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
            offset += 1 + length
        offset += 1
        if offset + 4 > len(query):
            return None
        qtype = struct.unpack("!H", query[offset : offset + 2])[0]
        question = query[12 : offset + 4]
        name = _normal(".".join(labels))
        with self._lock:
            self.queries.append((name, _TYPES.get(qtype, qtype)))
            if name in self._hanging:
                return None
            if name in self._failures:
                return _header(ident, flags, self._failures[name], 0) + question
            if name not in self._answers:
                return _header(ident, flags, _RCODES["NXDOMAIN"], 0) + question
            wanted = 4 if qtype == _A else 6 if qtype == _AAAA else 0
            ips = [ip for ip in self._answers[name] if ip.version == wanted]
        records = b"".join(
            struct.pack("!HHHIH", 0xC00C, qtype, 1, 60, len(ip.packed)) + ip.packed for ip in ips
        )
        return _header(ident, flags, _RCODES["NOERROR"], len(ips)) + question + records


def _header(ident: int, flags: int, rcode: int, answers: int) -> bytes:
    # QR, AA and RA set; the query's opcode and RD kept.
    reply_flags = 0x8000 | (flags & 0x7900) | 0x0400 | 0x0080 | rcode
    return struct.pack("!HHHHHH", ident, reply_flags, 1, answers, 0, 0)


def running(directory: Path) -> Iterator[DnsServer]:
    """A started server, stopped when the generator is closed (the fixture's body)."""
    server = DnsServer(directory).start()
    try:
        yield server
    finally:
        server.stop()
