"""The ``tls`` check, and the TLS plumbing that ``http``/``https`` share with it.

Rules:

- Client contexts are built once per ``(ca_file, tls_verify)`` and cached:
  ``ssl.create_default_context(cafile=ca_file)`` (the system trust store when
  ``ca_file`` is unset), TLS 1.2 at least. ``tls_verify: false`` turns off the
  chain and host name checks (``CERT_NONE``), nothing else.
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
- Connections are closed on every path: gracefully (close_notify, waiting at
  most ``CLOSE_GRACE`` for the peer) once the verdict is known, at once
  (abort) when the check fails with an exception or is cancelled by its
  deadline.
- No timeouts of its own beyond that grace: the caller's single deadline
  bounds the whole check; ``OSError`` and ``TimeoutError`` propagate to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from snmp_watchdog import model
from snmp_watchdog.reasons import Reason
from snmp_watchdog.result import CheckResult, Transcript, reason_for_error

#: Longest wait for the peer's close_notify once the verdict is known. It only
#: delays freeing the connection, never the verdict.
CLOSE_GRACE = 0.5


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


@functools.lru_cache(maxsize=64)
def _context(ca_file: Path | None, verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context(service: model.Service) -> ssl.SSLContext:
    """The (cached, shared, never to be modified) client context for a service."""
    return _context(service.ca_file, service.tls_verify)


def clear_contexts() -> None:
    """Forget cached contexts, so that CA files are read again (on reload)."""
    _context.cache_clear()


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


@contextlib.asynccontextmanager
async def connected(
    service: model.Service, *, use_tls: bool, start: float, transcript: Transcript | None
) -> AsyncIterator[Stream]:
    """Connect (and handshake), yield the stream, and close it on the way out.

    TLS is negotiated after the TCP connect, so the transcript shows both steps.
    Handshake failures raise ``ssl.SSLError`` (``UnusableCertificate`` when the
    certificate cannot be read).
    """
    reader, writer = await asyncio.open_connection(service.host, service.port, limit=model.MAX_READ)
    try:
        peer = writer.get_extra_info("peername")
        note(transcript, start, f"connected to {peer[0]} port {peer[1]}")
        certificate = await _handshake(service, writer, start, transcript) if use_tls else None
        stream = Stream(reader, writer, certificate)
    except BaseException:
        writer.transport.abort()
        raise
    try:
        yield stream
    except BaseException:
        stream.writer.transport.abort()
        raise
    await _close(stream.writer)


async def _handshake(
    service: model.Service,
    writer: asyncio.StreamWriter,
    start: float,
    transcript: Transcript | None,
) -> Certificate:
    try:
        await writer.start_tls(client_context(service), server_hostname=server_name(service))
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


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close gracefully; the verdict is known, so errors on the way out do not count."""
    writer.close()
    try:
        async with asyncio.timeout(CLOSE_GRACE):
            await writer.wait_closed()
    except TimeoutError:
        writer.transport.abort()
    except OSError:
        pass  # reset or TLS alert while closing: the conversation was already judged


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
