"""What every check returns, and the transcript ``watchdog probe -v`` prints."""

from __future__ import annotations

import errno
import socket
import ssl
from dataclasses import dataclass, field
from typing import Literal

from snmp_watchdog.reasons import Reason


@dataclass(frozen=True, slots=True)
class Exchange:
    """One event of a conversation, ``at`` seconds after the check started."""

    at: float
    direction: Literal["send", "recv", "info"]
    data: bytes


@dataclass(slots=True)
class Transcript:
    """Collects a conversation when asked to (probe, record); checks pass None otherwise."""

    entries: list[Exchange] = field(default_factory=list)

    def add(self, at: float, direction: Literal["send", "recv", "info"], data: bytes) -> None:
        self.entries.append(Exchange(at, direction, data))


@dataclass(frozen=True, slots=True)
class CheckResult:
    reason: Reason
    detail: str  # for a human: what was expected and what came, or which error
    elapsed: float  # seconds from the start of the check to its verdict
    answer: bytes | None = None  # tcp checks: the whole answer (what ``record`` saves)

    @property
    def ok(self) -> bool:
        return self.reason is Reason.OK


class CheckFailed(Exception):
    """The service answered, but not as it should: the check's reason and detail.

    Raised inside a check (a conversation, an HTTP response) and turned into
    its ``CheckResult`` by the check itself; it never leaves ``run_check``.
    """

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def reason_for_error(exc: BaseException) -> tuple[Reason, str]:
    """Map a network exception to a reason and a short detail.

    Only network failures are mapped; anything else is a bug and must not be
    passed here (the caller lets it propagate).
    """
    if isinstance(exc, TimeoutError):
        return Reason.TIMEOUT, "deadline passed"
    if isinstance(exc, socket.gaierror):
        return Reason.DNS, f"name did not resolve: {exc.strerror or exc}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Reason.TLS, f"certificate verification failed: {exc.verify_message or exc}"
    if isinstance(exc, ssl.SSLError):
        return Reason.TLS, f"TLS error: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return Reason.REFUSED, "connection refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return Reason.RESET, "connection reset by the server"
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ENETDOWN):
            return Reason.UNREACHABLE, exc.strerror or str(exc)
        return Reason.NETWORK_ERROR, exc.strerror or str(exc)
    raise TypeError(f"not a network error: {exc!r}")
