"""The ``tls`` check, and the TLS plumbing that ``http``/``https`` share with it.

Rules:

- Client contexts come from ``_net.client_context``, the one factory of every
  check (TLS 1.2 at least, cached per ``(ca_file, tls_verify)``, the CA file
  read again when it changes). ``tls_verify: false`` turns off the chain and
  host name checks (``CERT_NONE``), nothing else.
- Host names are resolved by ``_net.resolve`` (every resolver failure, and a
  resolution cut by the deadline, is ``dns``); addresses are tried in order.
- SNI and the host name check use ``server_name``, else ``host``.
- A chain that does not verify, a wrong host name, a self-signed or an expired
  certificate (with verification on) fail the handshake: ``Reason.TLS`` with
  OpenSSL's verify message.
- The certificate's validity is judged on its own as well, so it still counts
  with verification off: outside notBefore..notAfter is ``Reason.TLS``; less
  than ``cert_warning`` seconds before notAfter is
  ``Reason.CERTIFICATE_EXPIRING``; otherwise ``ok``. Days are whole days left,
  rounded down.
- The ``tls`` check connects, completes the handshake, reads the peer
  certificate and closes with a close_notify. It sends no application data.
- At most ``MAX_READ`` + 1 bytes are read from a connection (``_BoundedStream``).
- Connections are closed on every path: gracefully (close_notify, the peer
  given at most ``_net.CLOSE_GRACE`` in the background) once the verdict is known,
  so the close never delays or changes the result; at once (abort) when the
  check fails with an exception or is cancelled by its deadline.
- No timeouts of its own: the caller's single deadline bounds the check up to
  its verdict; ``OSError`` and ``TimeoutError`` propagate to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

from cryptography import x509

from snmp_watchdog import model
from snmp_watchdog.checks import _net
from snmp_watchdog.checks._net import client_context
from snmp_watchdog.reasons import Reason
from snmp_watchdog.result import CheckResult, Transcript, reason_for_error


class UnusableCertificate(ssl.SSLError):
    """The peer sent no certificate, or one that cannot be parsed."""


@dataclass(frozen=True, slots=True)
class Certificate:
    """What a check learned about the peer's (leaf) certificate."""

    subject: str
    issuer: str
    not_before: datetime  # aware, UTC
    not_after: datetime  # aware, UTC


@dataclass(slots=True)
class Stream:
    """An open connection; ``certificate`` is None for plain TCP."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    certificate: Certificate | None


def server_name(service: model.Service) -> str:
    """The name sent as SNI and checked against the certificate."""
    return service.server_name or service.host


def certificate_verdict(cert: Certificate, now: datetime, warning: float) -> tuple[Reason, str]:
    """Judge a certificate's validity period at ``now`` (aware, UTC)."""
    if now >= cert.not_after:
        ago = (now - cert.not_after).days
        return Reason.TLS, f"certificate expired {_when(cert.not_after)} ({_days(ago)} ago)"
    if now < cert.not_before:
        return Reason.TLS, f"certificate not valid before {_when(cert.not_before)}"
    left = cert.not_after - now
    if left.total_seconds() < warning:
        return (
            Reason.CERTIFICATE_EXPIRING,
            f"certificate expires {_when(cert.not_after)} ({_days(left.days)} left)",
        )
    return Reason.OK, f"certificate valid until {cert.not_after:%Y-%m-%d} ({_days(left.days)})"


def _when(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def _days(n: int) -> str:
    return "1 day" if n == 1 else f"{n} days"


def note(transcript: Transcript | None, start: float, text: str) -> None:
    """Add an ``info`` line to the transcript, if there is one."""
    if transcript is not None:
        transcript.add(time.monotonic() - start, "info", text.encode())


class _BoundedStream(asyncio.StreamReaderProtocol, asyncio.BufferedProtocol):
    """A stream protocol that hands its reader at most ``budget`` bytes in all.

    Data is read straight into a small buffer of its own, never more than
    what is left of the budget; once that is spent, reading stops. So a check
    holds at most ``MAX_READ`` + 1 bytes of an answer, whatever the server sends
    (a plain ``StreamReader`` keeps reading up to twice its limit, in chunks as
    large as the transport likes).
    """

    def __init__(
        self, reader: asyncio.StreamReader, budget: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__(reader, loop=loop)
        self.left = budget
        self.reading: asyncio.Transport | None = None  # the transport to pause
        self._chunk = bytearray(min(budget, _CHUNK))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.reading = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        view = memoryview(self._chunk)
        return view[: self.left] if self.left > 0 else view

    def buffer_updated(self, nbytes: int) -> None:
        if self.left <= 0:
            return  # reading was paused; what a transport still delivers is dropped
        self.left -= nbytes
        self.data_received(bytes(self._chunk[:nbytes]))
        if self.left <= 0 and self.reading is not None:
            self.reading.pause_reading()


#: Size of the buffer a connection reads into.
_CHUNK = 16 * 1024


@contextlib.asynccontextmanager
async def connected(
    service: model.Service, *, use_tls: bool, start: float, transcript: Transcript | None
) -> AsyncIterator[Stream]:
    """Resolve, connect (and handshake), yield the stream, and close it on the way out.

    TLS is negotiated after the TCP connect, so the transcript shows both steps.
    Handshake failures raise ``ssl.SSLError`` (``UnusableCertificate`` when the
    certificate cannot be read). At most ``MAX_READ`` + 1 bytes are ever read.
    Once the caller has its verdict the close goes on in the background
    (``close_after_verdict``): it cannot change the result or run into the deadline.
    """
    context = client_context(service) if use_tls else None  # before any network I/O
    loop = asyncio.get_running_loop()
    addresses = await _net.resolve(service.host, service.port)
    sock: socket.socket | None = None
    error: OSError | None = None
    for family, address in addresses:
        try:
            sock = await _net.connected_socket(loop, family, address)
        except OSError as exc:
            error = exc
            note(transcript, start, f"connecting to {address[0]} port {address[1]}: {exc}")
            continue
        break
    if sock is None:
        assert error is not None
        raise error
    reader = asyncio.StreamReader(limit=model.MAX_READ + 1, loop=loop)
    protocol = _BoundedStream(reader, model.MAX_READ + 1, loop)
    try:
        transport, _ = await loop.create_connection(lambda: protocol, sock=sock)
    except BaseException:
        sock.close()
        raise
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    try:
        peer = writer.get_extra_info("peername")
        note(transcript, start, f"connected to {peer[0]} port {peer[1]}")
        certificate = None
        if context is not None:
            certificate = await _handshake(service, context, writer, start, transcript)
            protocol.reading = cast(asyncio.Transport, writer.transport)
        stream = Stream(reader, writer, certificate)
    except BaseException:
        writer.transport.abort()
        raise
    try:
        yield stream
    except BaseException:
        stream.writer.transport.abort()
        raise
    transport = cast(asyncio.Transport, stream.writer.transport)
    _net.close_after_verdict(transport, _closed(stream.writer))


async def _closed(writer: asyncio.StreamWriter) -> None:
    await writer.wait_closed()


async def _handshake(
    service: model.Service,
    context: ssl.SSLContext,
    writer: asyncio.StreamWriter,
    start: float,
    transcript: Transcript | None,
) -> Certificate:
    try:
        await writer.start_tls(context, server_hostname=server_name(service))
    except ssl.SSLError as exc:
        note(transcript, start, f"TLS handshake failed: {reason_for_error(exc)[1]}")
        raise
    ssl_object: ssl.SSLObject = writer.get_extra_info("ssl_object")
    cipher = ssl_object.cipher()
    note(
        transcript,
        start,
        f"TLS {ssl_object.version()}, cipher {cipher[0] if cipher else 'none'}",
    )
    der = ssl_object.getpeercert(binary_form=True)
    if der is None:
        raise UnusableCertificate("the server sent no certificate")
    try:
        parsed = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise UnusableCertificate(f"the server's certificate cannot be parsed: {exc}") from exc
    certificate = Certificate(
        subject=parsed.subject.rfc4514_string(),
        issuer=parsed.issuer.rfc4514_string(),
        not_before=parsed.not_valid_before_utc,
        not_after=parsed.not_valid_after_utc,
    )
    note(
        transcript,
        start,
        f"certificate subject {certificate.subject}, issuer {certificate.issuer}, "
        f"notAfter {certificate.not_after:%Y-%m-%d %H:%M:%S} UTC",
    )
    return certificate


def tls_failure(exc: ssl.SSLError, start: float) -> CheckResult:
    """The result for a failed handshake or a TLS error during the conversation."""
    reason, detail = reason_for_error(exc)
    return CheckResult(reason, detail, time.monotonic() - start)


async def check_tls(service: model.Service, transcript: Transcript | None) -> CheckResult:
    """Handshake, verify (unless ``tls_verify`` is off) and judge the certificate's dates."""
    start = time.monotonic()
    try:
        async with connected(service, use_tls=True, start=start, transcript=transcript) as stream:
            assert stream.certificate is not None
            reason, detail = certificate_verdict(
                stream.certificate, datetime.now(UTC), service.cert_warning
            )
            result = CheckResult(reason, detail, time.monotonic() - start)
    except ssl.SSLError as exc:
        return tls_failure(exc, start)
    return result
