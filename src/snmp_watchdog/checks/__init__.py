"""Checks: one async signature per kind, one deadline per check, one reason per result.

``run_check`` is the only way the rest of the program runs a check. It owns
the deadline: ``service.timeout`` covers everything, name resolution,
connect, TLS, the conversation and the close. When it passes the result is
``timeout`` and its detail says what the check was waiting for and what had
arrived (``no answer matching /^220/ within 5s; received 0 bytes``), except
where a conversation defines the deadline otherwise (an ``expect`` that saw
data that did not match, a ``send_file`` answer, a verdict already reached).
Network errors become reasons through ``result.reason_for_error``; a
resolution still running at the deadline is ``dns``. ``LocalProblem`` (a
``ca_file`` that cannot be used) means no verdict at all and propagates, as
does any other exception, which is a bug. Every result carries its reason, a detail
for people and the time from the start of the check to its verdict
(monotonic, seconds).

``CHECKERS`` maps each kind to its :data:`Checker`. A checker may be
called on its own (no deadline, errors raised) but normally runs through
``run_check``.
"""

from __future__ import annotations

import asyncio

from snmp_watchdog.checks._conversation import Checker, deadline_result
from snmp_watchdog.checks.banner import check_ftp, check_imap, check_pop3, check_ssh
from snmp_watchdog.checks.http import check_http
from snmp_watchdog.checks.smtp import check_smtp
from snmp_watchdog.checks.tcp import check_tcp
from snmp_watchdog.checks.tls import check_tls
from snmp_watchdog.model import CheckKind, Service
from snmp_watchdog.result import CheckResult, Transcript, reason_for_error

__all__ = ["CHECKERS", "Checker", "run_check"]

CHECKERS: dict[CheckKind, Checker] = {
    CheckKind.TCP: check_tcp,
    CheckKind.SMTP: check_smtp,
    CheckKind.POP3: check_pop3,
    CheckKind.IMAP: check_imap,
    CheckKind.FTP: check_ftp,
    CheckKind.SSH: check_ssh,
    CheckKind.HTTP: check_http,
    CheckKind.HTTPS: check_http,
    CheckKind.TLS: check_tls,
}


async def run_check(service: Service, transcript: Transcript | None = None) -> CheckResult:
    """Run one check of ``service`` within its timeout; never raises for a network fault."""
    checker = CHECKERS[service.check]
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        async with asyncio.timeout_at(start + service.timeout):
            return await checker(service, transcript)
    except TimeoutError as exc:
        if exc.__cause__ is None and exc.errno is not None:
            # The system's own timeout (ETIMEDOUT), not our deadline.
            return _error_result(exc, start, loop.time(), transcript)
        elapsed = loop.time() - start
        if transcript is not None:
            transcript.add(elapsed, "info", f"deadline of {service.timeout:g}s passed".encode())
        return deadline_result(exc, service, elapsed)
    except OSError as exc:
        return _error_result(exc, start, loop.time(), transcript)


def _error_result(
    exc: OSError, start: float, now: float, transcript: Transcript | None
) -> CheckResult:
    reason, detail = reason_for_error(exc)
    if transcript is not None:
        transcript.add(now - start, "info", detail.encode())
    return CheckResult(reason, detail, now - start)
