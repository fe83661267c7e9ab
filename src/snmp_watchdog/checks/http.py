"""The ``http`` and ``https`` checks: one HTTP/1.1 GET over an asyncio stream.

Rules:

- TLS for kind ``https``, and for ``http`` with ``tls: true``; the TLS rules and
  the certificate's dates are those of ``checks.tls``.
- The request: ``GET {http_path} HTTP/1.1`` with ``Host`` (``server_name`` or
  ``host``, and the port when not 80/443), ``User-Agent``, ``Accept: */*`` and
  ``Connection: close``. Redirects are not followed.
- Interim 1xx responses (except 101) are skipped. The status must be one of
  ``http_status``, or any 2xx/3xx when that is empty: else ``http_status``.
- At most ``model.MAX_READ`` bytes are read, head and body together; a head
  that does not fit is ``too_large``. Without ``http_body`` the body is not
  read. With it, the body (Content-Length, chunked, or until the server
  closes) is read up to that bound and the regex searched once: no match in a
  whole body is ``unexpected_response``; no match in a body cut at the bound
  is ``too_large``.
- Anything that is not an HTTP response (no ``HTTP/`` status line, a broken
  header or chunk) is ``unexpected_response``; a connection closed before the
  head is complete is ``closed``.
- A bad status or body outranks an expiring certificate; an expired one (with
  verification off) fails the check before any request is sent.
"""

from __future__ import annotations

import re
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import quote

import snmp_watchdog
from snmp_watchdog import model
from snmp_watchdog.checks import _format, tls
from snmp_watchdog.model import CheckKind
from snmp_watchdog.reasons import Reason
from snmp_watchdog.result import CheckFailed, CheckResult, Transcript

USER_AGENT = f"snmp-watchdog/{snmp_watchdog.__version__}"

_LIMIT = f"{model.MAX_READ // 1024} KiB"

#: Longest chunk-size or trailer line accepted in a chunked body.
_MAX_LINE = 8192

_STATUS_LINE = re.compile(rb"HTTP/(\d)\.(\d) (\d{3})(?: ([^\r\n]*))?\r?")
_HEADER = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*\r?")
_HEAD_END = re.compile(rb"\r?\n\r?\n")

Framing = int | Literal["none", "chunked", "close"]


@dataclass(frozen=True, slots=True)
class Head:
    """A response's status line and headers (names lower case, in order)."""

    status: int
    phrase: str
    headers: tuple[tuple[str, str], ...]

    @property
    def status_text(self) -> str:
        return f"HTTP {self.status} {self.phrase}".rstrip()

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


def request_bytes(service: model.Service, use_tls: bool) -> bytes:
    """The whole request the check sends."""
    name = tls.server_name(service)
    if not name.isascii():
        name = name.encode("idna").decode("ascii")
    if ":" in name:
        name = f"[{name}]"  # an IPv6 literal
    if service.port != (443 if use_tls else 80):
        name = f"{name}:{service.port}"
    # Percent-encode what may not appear in a request line; keep existing escapes.
    target = quote(service.http_path or "/", safe="/:@!$&'()*+,;=?#[]%~")
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {name}",
        f"User-Agent: {USER_AGENT}",
        "Accept: */*",
        "Connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def looks_like_http(data: bytes) -> bool:
    """False as soon as the first bytes cannot start an HTTP status line."""
    return data[:5] == b"HTTP/"[: len(data)]


def head_end(data: bytes | bytearray, start: int = 0) -> int:
    """The offset just past the blank line ending the head, or -1."""
    found = _HEAD_END.search(data, max(0, start))
    return found.end() if found else -1


def status_line(line: bytes) -> re.Match[bytes]:
    """Match a status line (without its LF), or fail the check."""
    status = _STATUS_LINE.fullmatch(line)
    if status is None:
        raise CheckFailed(Reason.UNEXPECTED_RESPONSE, f"not an HTTP status line: {_show(line)}")
    return status


def parse_head(data: bytes) -> Head:
    """Parse a status line and headers (ending with the blank line)."""
    lines = data.split(b"\n")
    status = status_line(lines[0])
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line in (b"", b"\r"):
            break
        if line[:1] in (b" ", b"\t") and headers:  # obsolete line folding
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip().decode('latin-1')}")
            continue
        header = _HEADER.fullmatch(line)
        if header is None:
            raise CheckFailed(Reason.UNEXPECTED_RESPONSE, f"malformed header line: {_show(line)}")
        headers.append((header[1].decode("ascii").lower(), header[2].decode("latin-1")))
    return Head(int(status[3]), (status[4] or b"").decode("latin-1").strip(), tuple(headers))


def framing(head: Head) -> Framing:
    """How the body is delimited: a length, chunked, until close, or no body."""
    if 100 <= head.status < 200 or head.status in (204, 304):
        return "none"
    codings = [c.strip().lower() for v in head.values("transfer-encoding") for c in v.split(",")]
    codings = [c for c in codings if c]
    if codings:
        return "chunked" if codings[-1] == "chunked" else "close"
    lengths = {v.strip() for value in head.values("content-length") for v in value.split(",")}
    if not lengths:
        return "close"
    length = lengths.pop()
    if lengths or not length.isdigit() or not length.isascii():
        raise CheckFailed(Reason.UNEXPECTED_RESPONSE, "invalid Content-Length")
    return int(length)


class ChunkedDecoder:
    """Decodes a chunked body fed in pieces of any size (bytes in, body out)."""

    def __init__(self) -> None:
        self.body = bytearray()
        self._buffer = bytearray()
        self._state: Literal["size", "data", "data_end", "trailer", "done"] = "size"
        self._left = 0

    @property
    def done(self) -> bool:
        return self._state == "done"

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while self._state != "done":
            if self._state == "data":
                take = min(self._left, len(self._buffer))
                if take == 0:
                    return
                self.body += self._buffer[:take]
                del self._buffer[:take]
                self._left -= take
                if self._left == 0:
                    self._state = "data_end"
                continue
            line = self._line()
            if line is None:
                return
            if self._state == "size":
                size = line.split(b";", 1)[0].strip()
                if not size or len(size) > 16 or size.strip(b"0123456789abcdefABCDEF"):
                    raise CheckFailed(
                        Reason.UNEXPECTED_RESPONSE, f"malformed chunk size: {_show(line)}"
                    )
                self._left = int(size, 16)
                self._state = "data" if self._left else "trailer"
            elif self._state == "data_end":
                if line:
                    raise CheckFailed(Reason.UNEXPECTED_RESPONSE, "chunk longer than its size")
                self._state = "size"
            elif not line:  # the blank line after the trailers
                self._state = "done"

    def _line(self) -> bytes | None:
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > _MAX_LINE:
                raise CheckFailed(Reason.UNEXPECTED_RESPONSE, "malformed chunked body")
            return None
        line = bytes(self._buffer[:end]).rstrip(b"\r")
        del self._buffer[: end + 1]
        return line


def _show(line: bytes) -> str:
    """A line from the server, quoted for a detail (its CR dropped)."""
    return _format.quote(line.rstrip(b"\r"))


def _pattern(regex: re.Pattern[bytes]) -> str:
    return "/" + _format.printable(regex.pattern) + "/"


class _Source:
    """Reads from the stream, at most ``MAX_READ`` bytes in all, into the transcript."""

    def __init__(self, stream: tls.Stream, start: float, transcript: Transcript | None) -> None:
        self._reader = stream.reader
        self._start = start
        self._transcript = transcript
        self.left = model.MAX_READ

    @property
    def exhausted(self) -> bool:
        """The bound is reached and the server has not (yet) closed."""
        return self.left == 0 and not self._reader.at_eof()

    async def read(self) -> bytes:
        """Some bytes; b"" when the server closed or the bound is reached."""
        if self.left == 0:
            return b""
        data = await self._reader.read(self.left)
        self.left -= len(data)
        if data and self._transcript is not None:
            self._transcript.add(time.monotonic() - self._start, "recv", data)
        return data


async def _read_head(source: _Source) -> tuple[Head, bytes]:
    """The final (non-1xx) head, and the bytes read after it."""
    buffer = bytearray()
    scanned = 0  # bytes already searched for the end of the head
    status_seen = False
    while True:
        end = head_end(buffer, scanned - 3)
        if end >= 0:
            head = parse_head(bytes(buffer[:end]))
            del buffer[:end]
            scanned, status_seen = 0, False
            if 100 <= head.status < 200 and head.status != 101:
                continue  # interim response: the real one follows
            return head, bytes(buffer)
        if not status_seen:  # fail on garbage at once, not at the deadline
            first, newline, _ = bytes(buffer).partition(b"\n")
            if not looks_like_http(first):
                raise CheckFailed(
                    Reason.UNEXPECTED_RESPONSE, f"not an HTTP response: {_show(first)}"
                )
            if newline:
                status_line(first)
                status_seen = True
        scanned = len(buffer)
        data = await source.read()
        if not data:
            if source.exhausted:
                raise CheckFailed(Reason.TOO_LARGE, f"response head larger than {_LIMIT}")
            what = "in the middle of the response head" if buffer else "without a response"
            raise CheckFailed(Reason.CLOSED, f"connection closed {what}")
        buffer += data


async def _read_body(source: _Source, head: Head, rest: bytes) -> tuple[bytes, bool]:
    """The body as far as it could be read, and whether that is all of it."""
    how = framing(head)
    if how == "none":
        return b"", True
    if how == "chunked":
        decoder = ChunkedDecoder()
        decoder.feed(rest)
        while not decoder.done and (data := await source.read()):
            decoder.feed(data)
        return bytes(decoder.body), decoder.done
    body = bytearray(rest)
    while (how == "close" or len(body) < how) and (data := await source.read()):
        body += data
    if how == "close":
        return bytes(body), not source.exhausted
    return bytes(body[:how]), len(body) >= how


async def _exchange(
    service: model.Service,
    stream: tls.Stream,
    use_tls: bool,
    start: float,
    transcript: Transcript | None,
) -> CheckResult:
    def result(reason: Reason, detail: str) -> CheckResult:
        return CheckResult(reason, detail, time.monotonic() - start)

    certificate = (Reason.OK, "")
    if stream.certificate is not None:
        certificate = tls.certificate_verdict(
            stream.certificate, datetime.now(UTC), service.cert_warning
        )
        if certificate[0] is Reason.TLS:
            return result(*certificate)
    request = request_bytes(service, use_tls)
    stream.writer.write(request)
    if transcript is not None:
        transcript.add(time.monotonic() - start, "send", request)
    await stream.writer.drain()
    source = _Source(stream, start, transcript)
    try:
        head, rest = await _read_head(source)
        accepted = (
            head.status in service.http_status if service.http_status else 200 <= head.status < 400
        )
        if not accepted:
            wanted = ", ".join(map(str, service.http_status)) or "2xx or 3xx"
            return result(Reason.HTTP_STATUS, f"{head.status_text} (expected {wanted})")
        if service.http_body is not None:
            body, whole = await _read_body(source, head, rest)
            if service.http_body.search(body) is None:
                pattern = _pattern(service.http_body)
                if whole:
                    return result(
                        Reason.UNEXPECTED_RESPONSE,
                        f"{head.status_text}, body does not match {pattern}",
                    )
                if source.exhausted:
                    return result(
                        Reason.TOO_LARGE,
                        f"{head.status_text}, body larger than {_LIMIT}; "
                        f"{pattern} not in its first {len(body)} bytes",
                    )
                return result(
                    Reason.UNEXPECTED_RESPONSE,
                    f"{head.status_text}, body cut short by the server; "
                    f"{pattern} not in its {len(body)} bytes",
                )
    except CheckFailed as bad:
        return result(bad.reason, bad.detail)
    if certificate[1]:
        return result(certificate[0], f"{head.status_text}; {certificate[1]}")
    return result(Reason.OK, head.status_text)


async def check_http(service: model.Service, transcript: Transcript | None) -> CheckResult:
    """GET ``http_path`` and judge the status, the body and (over TLS) the certificate."""
    start = time.monotonic()
    use_tls = service.check is CheckKind.HTTPS or service.tls
    try:
        async with tls.connected(
            service, use_tls=use_tls, start=start, transcript=transcript
        ) as stream:
            return await _exchange(service, stream, use_tls, start, transcript)
    except ssl.SSLError as exc:
        return tls.tls_failure(exc, start)
