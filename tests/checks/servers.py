"""Loopback servers for check tests: well-behaved, slow and hostile.

Every server runs in the test's own event loop, listens on 127.0.0.1 (or
another loopback address) on a port the system picks, and is an async context
manager: leaving it closes the listener, gives handlers 0.2 s to finish with
what clients sent last, then ends every connection, so no socket outlives the
test. A handler is a coroutine taking the connection's reader
and writer; the factories below make the usual ones:

- :func:`hang`: accepts and never speaks.
- :func:`speak`: sends fixed bytes, then closes, hangs or resets.
- :func:`stream`: sends forever (until the client goes).
- :func:`drip`: sends a few bytes at a time with a pause in between.
- :func:`reset`: accepts and resets the connection at once.
- :class:`Script`: a line server with a greeting and rules, recording what it
  was sent (an SMTP/POP3/IMAP/FTP stand-in, or a prompt server).

:func:`aiosmtpd_server` runs a real SMTP server (aiosmtpd) in a thread, and
:func:`service` builds the ``Service`` to check. Ports where nothing listens
come from ``tests.helpers.free_tcp_port``; certificates from
``tests.checks.certs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.handlers import Sink

from snmp_watchdog.model import CheckKind, Service
from tests.helpers import closing_controller, free_tcp_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Server:
    """A running test server: where it listens and how many clients came."""

    host: str
    port: int
    connections: int = 0


@contextlib.asynccontextmanager
async def serve(
    handler: Handler, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None
) -> AsyncIterator[Server]:
    """Run ``handler`` for each connection until the ``async with`` block ends."""
    tasks: set[asyncio.Task[None]] = set()
    server = Server(host, 0)

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        server.connections += 1
        try:
            await handler(reader, writer)
        except OSError:  # the client went away: that is its right
            writer.transport.abort()
        except asyncio.CancelledError:  # the test is over; end quietly (asyncio 3.11
            writer.transport.abort()  # logs an error for a cancelled handler task)
        finally:
            writer.close()
            tasks.discard(task)

    listener = await asyncio.start_server(connected, host, 0, ssl=tls)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        if tasks:  # let handlers read what clients sent last, briefly
            await asyncio.wait(list(tasks), timeout=0.2)
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await listener.wait_closed()


def hang() -> Handler:
    """Accept and never speak (reading whatever comes, until the client closes)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(4096):
            pass

    return handler


def speak(data: bytes, then: str = "close") -> Handler:
    """Send ``data``, then ``close``, ``hang`` or ``reset``."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        if then == "hang":
            await hang()(reader, writer)
        elif then == "reset":
            _reset(writer)

    return handler


def stream(chunk: bytes = b"x" * 4096, prefix: bytes = b"") -> Handler:
    """Send ``prefix`` and then ``chunk`` again and again until the client goes."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(prefix)
        while not writer.is_closing():
            writer.write(chunk)
            await writer.drain()

    return handler


def drip(data: bytes, interval: float, size: int = 1, then: str = "hang") -> Handler:
    """Send ``data`` ``size`` bytes at a time, ``interval`` seconds apart; then ``then``."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for at in range(0, len(data), size):
            writer.write(data[at : at + size])
            await writer.drain()
            await asyncio.sleep(interval)
        await speak(b"", then)(reader, writer)

    return handler


def reset() -> Handler:
    """Accept, then reset the connection (RST) at once."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _reset(writer)

    return handler


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(frozen=True)
class Rule:
    """When a received line matches ``pattern`` (a regex, searched, case-insensitive),
    answer ``reply`` (after ``delay`` seconds), then close if ``close``."""

    pattern: bytes
    reply: bytes
    close: bool = False
    delay: float = 0.0


@dataclass
class Script:
    """A line server: sends ``greeting`` (pieces with a pause between them, if a
    sequence), then answers each line by the first matching :class:`Rule`, or
    ``otherwise``. ``lines`` records every line received, in order, with
    ``early`` set when a client spoke before the whole greeting was sent."""

    greeting: bytes | Sequence[bytes] = b""
    rules: Sequence[Rule] = ()
    otherwise: bytes = b"500 unknown command\r\n"
    pause: float = 0.0
    lines: list[bytes] = field(default_factory=list)
    early: bool = False

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pieces = [self.greeting] if isinstance(self.greeting, bytes) else list(self.greeting)
        for number, piece in enumerate(pieces):
            if number:
                await asyncio.sleep(self.pause)
            # What the client sent so far waits in the reader's buffer (no public view of it).
            if len(reader._buffer):  # type: ignore[attr-defined]
                self.early = True
            writer.write(piece)
            await writer.drain()
        while line := await reader.readline():
            self.lines.append(line)
            rule = next((r for r in self.rules if re.search(r.pattern, line, re.I)), None)
            if rule is not None and rule.delay:
                await asyncio.sleep(rule.delay)
            writer.write(rule.reply if rule is not None else self.otherwise)
            await writer.drain()
            if rule is not None and rule.close:
                return


def smtp_script(name: bytes = b"mail.test") -> Script:
    """A small well-behaved SMTP server."""
    return Script(
        greeting=b"220 " + name + b" ESMTP ready\r\n",
        rules=[
            Rule(rb"^EHLO ", b"250-" + name + b"\r\n250-PIPELINING\r\n250 8BITMIME\r\n"),
            Rule(rb"^HELO ", b"250 " + name + b"\r\n"),
            Rule(rb"^QUIT", b"221 2.0.0 Bye\r\n", close=True),
        ],
    )


@contextlib.contextmanager
def aiosmtpd_server(name: str = "mail.test") -> Iterator[int]:
    """A real SMTP server (aiosmtpd, in its own thread) greeting as ``name``; yields its port."""

    controller = closing_controller(
        Sink(), hostname="127.0.0.1", port=free_tcp_port(), server_hostname=name
    )
    controller.start()
    try:
        yield controller.port
    finally:
        controller.stop()


def service(port: int, check: str = "tcp", /, **options: Any) -> Service:
    """A service to check on 127.0.0.1 (or ``host=``) at ``port``; ``options`` are other fields."""
    options.setdefault("host", "127.0.0.1")
    return Service(name="test", port=port, check=CheckKind(check), **options)
