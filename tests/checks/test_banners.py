"""The ``pop3``, ``imap``, ``ftp`` and ``ssh`` checks against scripted and hostile servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from snmp_watchdog.checks import run_check
from snmp_watchdog.reasons import Reason
from snmp_watchdog.result import CheckResult
from tests.checks.certs import make_pki
from tests.checks.servers import Handler, Rule, Script, hang, serve, service, speak, stream
from tests.helpers import EARLY, SLACK, run_bounded

run = run_bounded


async def check_at(kind: str, handler: Handler, **options: object) -> CheckResult:
    async with serve(handler) as server:
        return await run_check(service(server.port, kind, **options))


def pop3(greeting: bytes) -> Script:
    return Script(greeting, [Rule(rb"^QUIT", b"+OK bye\r\n", close=True)])


def imap(greeting: bytes) -> Script:
    logout = b"* BYE logging out\r\na1 OK LOGOUT completed\r\n"
    return Script(greeting, [Rule(rb"^a1 LOGOUT", logout, close=True)])


def ftp(*greeting: bytes) -> Script:
    return Script(list(greeting), [Rule(rb"^QUIT", b"221 Goodbye.\r\n", close=True)])


# -- well-behaved servers ---------------------------------------------------------


def test_pop3_greeting_and_quit() -> None:
    script = pop3(b"+OK Dovecot ready.\r\n")
    result = run(check_at("pop3", script))
    assert result.reason is Reason.OK, result.detail
    assert result.detail == "'+OK Dovecot ready.'"
    assert script.lines == [b"QUIT\r\n"]


def test_pop3_err_greeting_is_unexpected_response() -> None:
    result = run(check_at("pop3", pop3(b"-ERR [SYS/TEMP] too busy\r\n")))
    assert result.reason is Reason.UNEXPECTED_RESPONSE
    assert result.detail == "greeting: '-ERR [SYS/TEMP] too busy'"


@pytest.mark.parametrize(
    "greeting", [b"* OK [CAPABILITY IMAP4rev1] Dovecot ready.\r\n", b"* PREAUTH ready\r\n"]
)
def test_imap_greeting_and_logout(greeting: bytes) -> None:
    script = imap(greeting)
    result = run(check_at("imap", script))
    assert result.reason is Reason.OK, result.detail
    assert script.lines == [b"a1 LOGOUT\r\n"]


def test_imap_bye_greeting_is_unexpected_response() -> None:
    result = run(check_at("imap", imap(b"* BYE too many connections\r\n")))
    assert result.reason is Reason.UNEXPECTED_RESPONSE
    assert result.detail == "greeting: '* BYE too many connections'"


def test_ftp_multi_line_greeting_and_quit() -> None:
    script = ftp(b"220-Welcome\r\n", b"  anything goes here\r\n220-more\r\n", b"220 ready\r\n")
    script.pause = 0.05
    result = run(check_at("ftp", script))
    assert result.reason is Reason.OK, result.detail
    assert result.detail.endswith("220 ready'")
    assert script.lines == [b"QUIT\r\n"]


def test_ftp_ready_in_a_few_minutes_then_ready() -> None:
    script = ftp(b"120 ready in 1 minute\r\n", b"220 ready\r\n")
    result = run(check_at("ftp", script))
    assert result.reason is Reason.OK, result.detail


def test_ftp_refusal_is_unexpected_response() -> None:
    result = run(check_at("ftp", ftp(b"421 Too many users\r\n")))
    assert result.reason is Reason.UNEXPECTED_RESPONSE
    assert result.detail == "greeting: '421 Too many users'"


def test_ssh_identification_after_other_lines_and_nothing_sent() -> None:
    script = Script(b"Banner line one\r\nSSH-2.0-OpenSSH_9.2p1 Debian-2\r\n\x00\x00\x01\x14kex")
    result = run(check_at("ssh", script))
    assert result.reason is Reason.OK, result.detail
    assert result.detail == "'SSH-2.0-OpenSSH_9.2p1 Debian-2'"
    assert script.lines == []


def test_ssh_1_99_is_accepted_and_1_5_is_not() -> None:
    assert run(check_at("ssh", speak(b"SSH-1.99-old\r\n", "hang"))).reason is Reason.OK
    old = run(check_at("ssh", speak(b"SSH-1.5-older\n", "hang")))
    assert old.reason is Reason.UNEXPECTED_RESPONSE
    assert old.detail == "not an SSH 2 identification: 'SSH-1.5-older'"


def test_pop3s_over_tls(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)

    async def main() -> CheckResult:
        script = pop3(b"+OK ready\r\n")
        async with serve(script, tls=pki.valid.server_context()) as server:
            svc = service(server.port, "pop3", tls=True, ca_file=pki.ca_file)
            return await run_check(svc)

    result = run(main())
    assert result.reason is Reason.OK, result.detail


# -- hostile servers, every kind -----------------------------------------------------

KINDS = ["pop3", "imap", "ftp", "ssh"]
EXPECTED = {
    "pop3": r"/^\+OK/",
    "imap": r"/^\* (OK|PREAUTH)/",
    "ftp": "/^220/",
    "ssh": "/^SSH-(2.0|1.99)-/",
}


@pytest.mark.parametrize("kind", KINDS)
def test_hanging_is_timeout(kind: str) -> None:
    result = run(check_at(kind, hang(), timeout=0.3))
    assert result.reason is Reason.TIMEOUT
    assert result.detail == f"no answer matching {EXPECTED[kind]} within 0.3s; received 0 bytes"
    assert 0.3 - EARLY <= result.elapsed < 0.3 + SLACK


@pytest.mark.parametrize("kind", KINDS)
def test_closing_mid_banner_is_closed(kind: str) -> None:
    partial = {"pop3": b"+OK rea", "imap": b"* OK rea", "ftp": b"220 rea", "ssh": b"SSH-2.0-Op"}
    result = run(check_at(kind, speak(partial[kind]), timeout=2))
    assert result.reason is Reason.CLOSED
    assert result.detail.startswith("the server closed the connection in the middle of an answer")


@pytest.mark.parametrize(
    ("kind", "garbage"),
    [
        ("pop3", b"220 mail ESMTP\r\n"),
        ("imap", b"+OK pop3\r\n"),
        ("ftp", b"+OK pop3\r\n"),
        ("ssh", b"\x00\x01binary"),
        ("ssh", b"y" * 2000),
    ],
)
def test_garbage_is_unexpected_response_at_once(kind: str, garbage: bytes) -> None:
    result = run(check_at(kind, speak(garbage, "hang"), timeout=2))
    assert result.reason is Reason.UNEXPECTED_RESPONSE
    assert result.detail.startswith("expected an answer matching ")
    assert result.elapsed < 0.5


@pytest.mark.parametrize(
    ("kind", "prefix", "chunk"),
    [
        ("pop3", b"+OK ", b"x" * 4096),
        ("imap", b"* OK ", b"x" * 4096),
        ("ftp", b"220-", b"x" * 4096),
        ("ssh", b"", b"not yet\r\n" * 400),
    ],
)
def test_endless_stream_is_too_large_quickly(kind: str, prefix: bytes, chunk: bytes) -> None:
    result = run(check_at(kind, stream(chunk, prefix), timeout=5))
    assert result.reason is Reason.TOO_LARGE
    assert result.elapsed < 1.0
