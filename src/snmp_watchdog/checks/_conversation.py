"""The conversation core of the line-based checks: connect, read, match, send, close.

One :class:`Conversation` is one TCP (or implicit TLS) connection to one
service. It is an asyncio protocol that keeps what the server sent in one
buffer, and offers the few waits the checks need. Its rules:

- **Connect.** A host that is an IP address is used as it is; a name is
  resolved at check time (``_net.resolve``: any resolver failure, or the
  deadline passing during it, is ``dns``) and its addresses are tried in
  order until one accepts; if none does, the last address's error is the
  check's error. With ``service.tls`` a TLS handshake follows at once
  (implicit TLS: smtps, pop3s, imaps, ftps), verified against the system CAs or
  ``ca_file`` unless ``tls_verify`` is false, with ``server_name`` (default:
  the host) as SNI and name to verify.
- **Reading is bounded.** The socket is read straight into the buffer, never
  more than ``MAX_READ`` + 1 bytes in all; once that last byte arrives reading
  stops, and a wait that still needs more data fails with ``too_large``. A
  match found within the first ``MAX_READ`` bytes still counts.
- **Expect** (``dialogue``) searches a regex in what arrived since the
  previous match ended, again each time data arrives, so a prompt without a
  line ending (``login: ``) matches at once. With ``re.MULTILINE`` (as the
  configuration compiles them) ``^`` matches at the start of that new data
  and of every line in it; lines end in CRLF, so ``$`` needs ``\\r?$``. A
  pattern is matched against what has arrived so far: ``\\d+`` may match
  ``22`` of a ``220`` still on its way, as with ``expect``/``pexpect``.
- **Trickled data stays cheap.** Once more than 4 KiB wait unmatched, the
  next attempt waits until they grew by an eighth or 20 ms passed, and the
  protocol does not even wake the check before then: a server sending one
  byte at a time costs linear time, not quadratic.
- **Replies** (the built-in kinds) are matched as whole replies by a
  :class:`Grammar`: a regex for a complete reply and one for a valid
  beginning of one, so garbage fails at once instead of at the deadline.
- **Reasons.** The server closing before the awaited answer, or in the
  middle of a reply, is ``closed``; data that cannot match (at the close, or garbage in a
  reply) is ``unexpected_response`` quoting what came; an ``expect`` still
  unmatched at the deadline is ``unexpected_response`` when data came since the
  previous match and ``timeout`` when nothing did; a reply still incomplete at
  the deadline is ``timeout``. Resets and other socket errors propagate as
  ``OSError`` and ``run_check`` maps them (``reset``, ``unreachable``, ...).
- **The deadline** is ``run_check``'s alone. When it passes, the cancellation
  that travels through a conversation check carries the conversation along,
  and ``run_check`` asks it (:func:`deadline_result`) what it was waiting for,
  how much had arrived, or for the verdict it had already reached.
- **Closing.** Every connection is closed: aborted when the check fails or is
  cancelled, closed cleanly (FIN, TLS close_notify) when it succeeds. A clean
  TLS close finishes in the background once the verdict is known, for at most
  ``_net.CLOSE_GRACE``, then the socket is aborted: a peer that never answers
  the close_notify holds neither the verdict nor the check's in-flight slot.

Nothing is recorded for a transcript unless one is passed: the hot path does
not format, copy or time anything it does not need.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

from snmp_watchdog.checks._format import printable, quote
from snmp_watchdog.checks._net import (
    Address,
    client_context,
    close_after_verdict,
    connected_socket,
    literal_family,
    resolve,
    resolving,
)
from snmp_watchdog.model import MAX_READ, CheckKind, Service
from snmp_watchdog.reasons import Reason
from snmp_watchdog.result import CheckFailed, CheckResult, Transcript

#: A check: one service, an optional transcript to fill, a result. ``run_check``
#: wraps every call in the service's deadline and maps network errors.
Checker = Callable[[Service, Transcript | None], Awaitable[CheckResult]]

#: What a conversation check does once connected; it returns the detail of an
#: ``ok`` result, or raises :class:`CheckFailed`.
Body = Callable[["Conversation"], Awaitable[str]]


#: One byte more than may be read: its arrival means "too large".
_LIMIT = MAX_READ + 1
#: Size of a new receive buffer; it grows fourfold as needed, up to ``_LIMIT``.
#: Enough for a greeting and its answers; with its terminating byte it stays
#: within Python's small-object allocator (512 bytes), where the memory that
#: start-up freed is reused, instead of a fresh allocation for each of up to
#: ``max_in_flight`` checks at once.
_FIRST_BUFFER = 496

#: Pending data above this size is matched again only after it grew by an eighth ...
_RETRY_FROM = 4096
#: ... or this many seconds passed.
_RETRY_EVERY = 0.02

#: How long a check waits for the answer to its QUIT (or LOGOUT) after its verdict.
GOODBYE_WAIT = 1.0

# What a conversation is waiting for, for the detail when the deadline passes.
_RESOLVE, _CONNECT, _TLS, _EXPECT, _REPLY, _ANSWER, _CLOSING = range(7)

#: The attribute of a cancellation that carries the conversation it interrupted.
_CARRIED = "_snmp_watchdog_conversation"


@dataclass(frozen=True, slots=True)
class Grammar:
    """How one protocol reply looks: ``complete`` matches a whole reply at the
    read position, ``valid_start`` fully matches any beginning of one, and
    ``expected`` names it in details (``/^220/``)."""

    complete: re.Pattern[bytes]
    valid_start: re.Pattern[bytes]
    expected: str


def seconds(value: float) -> str:
    """A duration as a person writes it: ``5s``, ``0.25s``."""
    return f"{value:g}s"


def shown(pattern: re.Pattern[bytes]) -> str:
    """A regex as details show it: ``/^220/``."""
    return f"/{printable(pattern.pattern)}/"


class Conversation(asyncio.BufferedProtocol):
    """One connection of one check, and everything the server sent on it."""

    __slots__ = (
        "awaiting",
        "buf",
        "closed",
        "eof",
        "error",
        "expected",
        "loop",
        "lost",
        "mark",
        "n",
        "on_deadline",
        "service",
        "start",
        "target",
        "transcript",
        "transport",
        "verdict",
        "waited_out",
        "waiter",
        "wake_at",
    )

    def __init__(self, service: Service, transcript: Transcript | None) -> None:
        self.service = service
        self.transcript = transcript
        self.loop = asyncio.get_running_loop()
        self.start = self.loop.time()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray(_FIRST_BUFFER)
        self.n = 0  # bytes received, all of them in buf[:n]
        self.mark = 0  # where the next expect or reply starts
        self.eof = False  # the server closed its side, or the connection is gone
        self.lost = False  # the connection is gone (connection_lost was called)
        self.error: OSError | None = None  # how the connection was lost, if by an error
        self.closed: asyncio.Future[None] | None = None  # set when the connection is gone
        self.waiter: asyncio.Future[None] | None = None
        self.wake_at = 0  # data does not wake the waiter before the buffer holds this much
        self.awaiting = _RESOLVE
        self.expected: object = None  # the pattern or Grammar awaited
        self.target: Address = ("", 0)  # the address being connected to
        self.verdict: CheckResult | None = None  # reached before a polite goodbye
        self.waited_out = False  # the goodbye's wait is over
        self.on_deadline: Callable[[], CheckResult] | None = None

    # -- timeline --------------------------------------------------------------

    def elapsed(self) -> float:
        return self.loop.time() - self.start

    def note(self, what: str) -> None:
        """An ``info`` line for the transcript, if there is one."""
        if self.transcript is not None:
            self.transcript.add(self.elapsed(), "info", what.encode())

    def result(self, reason: Reason, detail: str) -> CheckResult:
        """The check's result now; ``tcp`` checks carry the whole answer."""
        answer = bytes(self.buf[: self.n]) if self.service.check is CheckKind.TCP else None
        return CheckResult(reason, detail, self.elapsed(), answer)

    def peer(self) -> str:
        """The address connected to (or being connected to): ``192.0.2.1:25``, ``[::1]:25``."""
        return _address(self.target)

    def received(self, start: int = 0) -> bytes:
        return bytes(self.buf[start : self.n])

    # -- asyncio protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's do not derive from asyncio.Transport).
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        buf, n = self.buf, self.n
        if n == len(buf):
            if n >= _LIMIT:  # reading is paused; anything still delivered is dropped
                return memoryview(bytearray(_FIRST_BUFFER))
            buf.extend(bytes(min(4 * n, _LIMIT) - n))
        return memoryview(buf)[n:_LIMIT]

    def buffer_updated(self, nbytes: int) -> None:
        n = self.n
        if n >= _LIMIT:
            return
        self.n = n + nbytes
        if self.transcript is not None:
            self.transcript.add(self.elapsed(), "recv", bytes(self.buf[n : n + nbytes]))
        if n + nbytes >= _LIMIT:
            if self.transport is not None:
                self.transport.pause_reading()
        elif n + nbytes < self.wake_at:
            return
        self._wake()

    def eof_received(self) -> None:
        self.eof = True
        self.note("the server closed the connection")
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self.eof:
            self.error = exc if isinstance(exc, OSError) else OSError(str(exc))
            self.note(f"connection lost: {exc}")
        self.eof = True
        self.lost = True
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _more(self) -> None:
        """Wait until data arrives, the server closes, or the connection is lost."""
        self.waiter = waiter = self.loop.create_future()
        await waiter

    async def _more_to_match(self) -> None:
        """Wait for more data before matching again. Small data is matched on each arrival;
        once more than :data:`_RETRY_FROM` bytes are pending, only after it grew by an eighth
        or :data:`_RETRY_EVERY` passed, so a server that trickles bytes costs linear time."""
        pending = self.n - self.mark
        if pending < _RETRY_FROM:
            await self._more()
            return
        self.wake_at = self.n + (pending >> 3)
        try:
            await self._more_within(_RETRY_EVERY)
        finally:
            self.wake_at = 0

    async def _more_within(self, delay: float) -> None:
        """Like :meth:`_more`, but return after ``delay`` seconds in any case."""
        self.waiter = waiter = self.loop.create_future()
        timer = self.loop.call_later(delay, _wake_future, waiter)
        try:
            await waiter
        finally:
            timer.cancel()

    # -- connecting ------------------------------------------------------------

    async def open(self) -> None:
        """Resolve, connect and (with ``service.tls``) handshake."""
        service, loop = self.service, self.loop
        # A context first: a CA file that cannot be used stops the check before any I/O.
        context = client_context(service) if service.tls else None
        named = not literal_family(service.host)
        if named:
            self.note(f"resolving {service.host}")
        addresses = await resolve(service.host, service.port)
        if named:
            self.note(f"{service.host} is {', '.join(str(a[1][0]) for a in addresses)}")
        self.awaiting = _CONNECT
        error: OSError | None = None
        sock: socket.socket | None = None
        for family, address in addresses:
            self.target = address
            try:
                if service.tls:
                    sock = await connected_socket(loop, family, address)
                else:  # the loop's own path: uvloop connects without a Python socket
                    await loop.create_connection(lambda: self, address[0], address[1])
            except OSError as exc:
                error = exc
                self.note(f"connecting to {_address(address)}: {exc.strerror or exc}")
                continue
            break
        else:
            assert error is not None
            raise error
        if self.transcript is not None:
            if sock is not None:
                local = sock.getsockname()
            else:
                assert self.transport is not None
                local = self.transport.get_extra_info("sockname")
            self.note(f"connected to {_address(self.target)} from {_address(local)}")
        if sock is None:
            return
        # The socket now belongs to the TLS transport, which closes it on failure.
        self.awaiting = _TLS
        name = service.server_name or service.host
        await loop.create_connection(
            lambda: self,
            sock=sock,
            ssl=context,
            server_hostname=name,
            ssl_handshake_timeout=service.timeout,
            ssl_shutdown_timeout=service.timeout,
        )
        if self.transcript is not None:
            self.note(_tls_summary(self.transport, name, service.tls_verify))

    # -- sending and receiving -------------------------------------------------

    def send(self, data: bytes) -> None:
        """Write ``data`` (a line with its CRLF) unless the server has already gone."""
        if self.eof:
            raise CheckFailed(
                Reason.CLOSED,
                f"the server closed the connection before {quote(data)} could be sent",
            )
        assert self.transport is not None
        self.transport.write(data)
        if self.transcript is not None:
            self.transcript.add(self.elapsed(), "send", data)

    async def expect(self, pattern: re.Pattern[bytes]) -> None:
        """Wait until ``pattern`` is found in what arrived since the previous match ended."""
        self.awaiting = _EXPECT
        self.expected = pattern
        while True:
            # A view of the new data, so that ``^`` matches at its start; no reference
            # to it may outlive this search (the buffer cannot grow while one exists).
            match = pattern.search(memoryview(self.buf)[self.mark : self.n])
            if match is not None:
                self.mark += match.end()
                return
            if self.n >= _LIMIT:
                raise self._too_large(shown(pattern))
            if self.eof:
                if self.error is not None:
                    raise self.error
                raise self._expect_failed(pattern, at_deadline=False)
            await self._more_to_match()

    async def reply(self, grammar: Grammar) -> re.Match[bytes]:
        """Wait for one whole reply of ``grammar`` starting where the previous one ended."""
        self.awaiting = _REPLY
        self.expected = grammar
        while True:
            match = self._whole_reply(grammar)
            if match is not None:
                return match
            await self._more_to_match()

    def _whole_reply(self, grammar: Grammar) -> re.Match[bytes] | None:
        """The reply of ``grammar`` at ``mark`` if it is all in (``mark`` then moves past
        it), None if more may complete it; raises if it cannot come."""
        match = grammar.complete.match(self.buf, self.mark, self.n)
        if match is not None:
            self.mark = match.end()
            return match
        if grammar.valid_start.fullmatch(self.buf, self.mark, self.n) is None:
            raise CheckFailed(
                Reason.UNEXPECTED_RESPONSE,
                f"expected an answer matching {grammar.expected}, got "
                f"{quote(self.received(self.mark))}",
            )
        if self.n >= _LIMIT:
            raise self._too_large(grammar.expected)
        if self.eof:
            if self.error is not None:
                raise self.error
            raise self._closed_early(grammar.expected)
        return None

    async def answer_started(self, delay: float, unfinished: re.Pattern[bytes]) -> None:
        """Wait up to ``delay`` for data after ``mark``; once some came, also while what came
        matches ``unfinished`` at its end (a numbered reply's continuation line, ``220-``)."""
        self.awaiting = _ANSWER
        deadline = self.loop.time() + delay
        while not self.eof and self.n < _LIMIT:
            if self.n > self.mark:
                if unfinished.search(self.buf, self.mark, self.n) is None:
                    break
                await self._more_to_match()
                continue
            left = deadline - self.loop.time()
            if left <= 0:
                break
            await self._more_within(left)
        self.mark = self.n

    async def answer(self) -> None:
        """Read until the server closes the connection (the deadline ends it otherwise)."""
        self.awaiting = _ANSWER
        while not self.eof:
            if self.n >= _LIMIT:
                raise self._too_large("the end of the answer")
            await self._more()
        if self.error is not None:
            raise self.error

    async def goodbye(self, command: bytes, grammar: Grammar) -> None:
        """Send ``command`` (QUIT) and wait up to :data:`GOODBYE_WAIT` for its answer.

        Called once ``verdict`` is set: nothing here changes it. A missing, wrong
        or reset answer only ends the wait.
        """
        try:
            self.send(command)
        except (CheckFailed, OSError):
            return
        self.awaiting = _REPLY
        self.expected = grammar
        self.waited_out = False
        waits = _goodbye_waits.get(self.loop)
        if waits is None:
            waits = _goodbye_waits[self.loop] = _GoodbyeWaits()
        key = waits.add(self)
        try:
            while self._whole_reply(grammar) is None and not self.waited_out:
                await self._more_to_match()
        except (CheckFailed, OSError):
            return
        finally:
            waits.remove(key)

    def wait_over(self) -> None:
        """The goodbye has been waited for long enough."""
        self.waited_out = True
        self._wake()

    # -- failures --------------------------------------------------------------

    def _too_large(self, expected: str) -> CheckFailed:
        return CheckFailed(
            Reason.TOO_LARGE, f"more than {MAX_READ} bytes received while waiting for {expected}"
        )

    def _closed_early(self, expected: str) -> CheckFailed:
        if self.n == self.mark:
            return CheckFailed(
                Reason.CLOSED,
                f"the server closed the connection before an answer matching {expected}",
            )
        return CheckFailed(
            Reason.CLOSED,
            f"the server closed the connection in the middle of an answer: "
            f"{quote(self.received(self.mark))}",
        )

    def _expect_failed(self, pattern: re.Pattern[bytes], *, at_deadline: bool) -> CheckFailed:
        if self.n > self.mark:
            return CheckFailed(
                Reason.UNEXPECTED_RESPONSE,
                f"expected {shown(pattern)}, got {quote(self.received(self.mark))}",
            )
        if at_deadline:
            return CheckFailed(
                Reason.TIMEOUT,
                f"no answer matching {shown(pattern)} within {seconds(self.service.timeout)}; "
                f"received {self.n} bytes",
            )
        return self._closed_early(shown(pattern))

    def at_deadline(self) -> CheckResult:
        """The result when the deadline interrupts this conversation."""
        if self.verdict is not None:
            return self.verdict
        if self.on_deadline is not None and self.awaiting == _ANSWER:
            return self.on_deadline()
        within = seconds(self.service.timeout)
        if self.awaiting == _RESOLVE:
            detail = f"{self.service.host} did not resolve within {within}"
            return self.result(Reason.DNS, detail)
        elif self.awaiting == _CONNECT:
            detail = f"no connection to {_address(self.target)} within {within}"
        elif self.awaiting == _TLS:
            detail = f"no TLS handshake with {_address(self.target)} within {within}"
        elif self.awaiting == _EXPECT:
            assert isinstance(self.expected, re.Pattern)
            failure = self._expect_failed(self.expected, at_deadline=True)
            return self.result(failure.reason, failure.detail)
        elif self.awaiting == _REPLY:
            assert isinstance(self.expected, Grammar)
            detail = f"no answer matching {self.expected.expected} within {within}"
            detail += f"; received {self.n} bytes"
            if self.n > self.mark:
                detail += f": {quote(self.received(self.mark))}"
        else:
            detail = f"no answer within {within}; received {self.n} bytes"
        return self.result(Reason.TIMEOUT, detail)

    # -- closing ---------------------------------------------------------------

    def close(self, *, clean: bool) -> None:
        """Close the connection: cleanly (FIN, TLS close_notify) or by abort."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if clean:
            transport.close()
        else:
            transport.abort()

    def close_in_background(self) -> None:
        """Let a clean (TLS) close finish without the caller: bounded, then aborted."""
        transport = self.transport
        if transport is None or self.lost:
            return
        self.awaiting = _CLOSING
        self.closed = self.loop.create_future()
        close_after_verdict(transport, self.closed)


def _wake_future(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _address(address: Address) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _tls_summary(transport: asyncio.BaseTransport | None, name: str, verified: bool) -> str:
    """``TLSv1.3 TLS_AES_256_GCM_SHA384, certificate verified for mail.example.org``."""
    sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
    if not isinstance(sslobj, ssl.SSLObject):
        return "TLS established"
    cipher = sslobj.cipher()
    what = f"{sslobj.version()} {cipher[0] if cipher else ''}".strip()
    trust = f"certificate verified for {name}" if verified else "certificate not verified"
    return f"{what}, {trust}"


def carry(exc: BaseException, conversation: Conversation) -> None:
    """Attach ``conversation`` to the cancellation ``exc`` for :func:`deadline_result`."""
    vars(exc)[_CARRIED] = conversation


class _GoodbyeWaits:
    """The goodbye waits of one event loop, ended by one timer between them.

    A timer of its own per goodbye cost more than the rest of the goodbye (on
    uvloop, a timer is a libuv handle started and stopped). Every wait lasts
    :data:`GOODBYE_WAIT`, so they end in the order they began: they are kept in
    that order, and the one timer is due when the oldest still waiting ends.
    It is left running when a goodbye ends early; when it fires with nothing
    due, it is set for the next one or, with none left, dropped. Under a
    steady load it fires about once per :data:`GOODBYE_WAIT`.
    """

    __slots__ = ("armed", "next_key", "waiting")

    def __init__(self) -> None:
        # Oldest first; an OrderedDict finds its first entry at once, however
        # many were removed before it.
        self.waiting: OrderedDict[int, tuple[float, Conversation]] = OrderedDict()
        self.next_key = 0
        # Whether the timer is set. Neither it nor the loop is kept here: the
        # table of each loop's waits must not keep the loop alive.
        self.armed = False

    def add(self, conversation: Conversation) -> int:
        key = self.next_key
        self.next_key = key + 1
        loop = conversation.loop
        ends = loop.time() + GOODBYE_WAIT
        self.waiting[key] = (ends, conversation)
        if not self.armed:
            self.armed = True
            loop.call_at(ends, self._fire, loop)
        return key

    def remove(self, key: int) -> None:
        self.waiting.pop(key, None)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self.armed = False
        waiting = self.waiting
        now = loop.time()
        while waiting:
            key = next(iter(waiting))
            ends, conversation = waiting[key]
            if ends > now:
                # Not before a millisecond: uvloop's timers count whole ones, and a
                # shorter one would fire before it is due and again and again.
                self.armed = True
                loop.call_at(max(ends, now + 0.001), self._fire, loop)
                return
            del waiting[key]
            conversation.wait_over()


#: Each running event loop's goodbye waits.
_goodbye_waits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _GoodbyeWaits] = (
    weakref.WeakKeyDictionary()
)


def deadline_result(exc: TimeoutError, service: Service, elapsed: float) -> CheckResult:
    """The result of a check whose deadline passed (``exc`` raised by ``asyncio.timeout``)."""
    cause = exc.__cause__
    conversation = vars(cause).get(_CARRIED) if cause is not None else None
    if isinstance(conversation, Conversation):
        return conversation.at_deadline()
    host = resolving(cause)
    if host is not None:
        return CheckResult(
            Reason.DNS, f"{host} did not resolve within {seconds(service.timeout)}", elapsed
        )
    return CheckResult(Reason.TIMEOUT, f"no result within {seconds(service.timeout)}", elapsed)


def conversation_check(body: Body) -> Checker:
    """A :data:`Checker` that opens a :class:`Conversation`, runs ``body`` in it and closes it."""

    async def check(service: Service, transcript: Transcript | None = None) -> CheckResult:
        conversation = Conversation(service, transcript)
        clean = False
        try:
            await conversation.open()
            detail = await body(conversation)
            clean = True
        except CheckFailed as failure:
            return conversation.result(failure.reason, failure.detail)
        except asyncio.CancelledError as exc:
            carry(exc, conversation)
            raise
        finally:
            conversation.close(clean=clean)
        result = conversation.verdict or conversation.result(Reason.OK, detail)
        if service.tls:
            conversation.close_in_background()
        return result

    check.__name__ = check.__qualname__ = f"check_{body.__name__.lstrip('_')}"
    return check
