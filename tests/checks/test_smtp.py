"""The ``smtp`` check against aiosmtpd (a real SMTP server) and scripted or hostile servers."""

from __future__ import annotations

import asyncio
import gc
import re
import weakref
from collections.abc import Awaitable
from pathlib import Path

import pytest

from snmp_watchdog.checks import _conversation, run_check
from snmp_watchdog.checks._format import format_conversation
from snmp_watchdog.reasons import Reason
from snmp_watchdog.result import CheckResult, Transcript
from tests.checks.certs import make_pki
from tests.checks.servers import (
    Handler,
    Rule,
    aiosmtpd_server,
    drip,
    hang,
    serve,
    service,
    smtp_script,
    speak,
    stream,
)
from tests.helpers import EARLY, SLACK, free_tcp_port, run_bounded

run = run_bounded


async def smtp_at(
    handler: Handler, transcript: Transcript | None = None, **options: object
) -> CheckResult:
    async with serve(handler) as server:
        return await run_check(service(server.port, "smtp", **options), transcript)


def test_aiosmtpd_is_up() -> None:
    transcript = Transcript()
    with aiosmtpd_server("mail.test") as port:
        result = run(run_check(service(port, "smtp", helo="probe.test"), transcript))
    assert result.reason is Reason.OK, result.detail
    assert result.detail.startswith("'220 mail.test ")
    assert result.detail.endswith(", EHLO accepted")
    assert result.answer is None
    lines = format_conversation(transcript, result, verbose=True).splitlines()
    assert any(line.endswith("ms  -> EHLO probe.test") for line in lines)
    assert any(line.endswith("ms  <- 250-mail.test") for line in lines)
    assert any(line.endswith("ms  -> QUIT") for line in lines)
    assert any(line.endswith("ms  <- 221 Bye") for line in lines)
    assert re.fullmatch(r"up: ok: '220 mail\.test .*', EHLO accepted \(\d+\.\d ms\)", lines[-1])


def test_a_stopped_server_is_refused() -> None:
    result = run(run_check(service(free_tcp_port(), "smtp")))
    assert result.reason is Reason.REFUSED
    assert result.detail == "connection refused"


def test_helo_when_ehlo_is_not_known() -> None:
    script = smtp_script()
    script.rules = [Rule(rb"^EHLO", b"502 5.5.1 what?\r\n"), *script.rules]
    result = run(smtp_at(script, helo="me.test"))
    assert result.reason is Reason.OK, result.detail
    assert result.detail.endswith("HELO accepted")
    assert script.lines == [b"EHLO me.test\r\n", b"HELO me.test\r\n", b"QUIT\r\n"]


@pytest.mark.parametrize(
    "greeting",
    [b"554 5.7.1 no SMTP service here\r\n", b"421 4.3.2 busy, try later\r\n"],
)
def test_a_refusing_greeting_is_unexpected_response(greeting: bytes) -> None:
    result = run(smtp_at(speak(greeting, "hang"), timeout=2))
    assert result.reason is Reason.UNEXPECTED_RESPONSE
    assert result.detail == f"greeting: '{greeting.decode().strip()}'"
    assert result.elapsed < 0.5


def test_a_temporary_failure_of_ehlo_is_unexpected_response() -> None:
    script = smtp_script()
    script.rules = [Rule(rb"^EHLO", b"421 4.7.0 too many connections\r\n"), *script.rules]
    result = run(smtp_at(script))
    assert result.reason is Reason.UNEXPECTED_RESPONSE
    assert result.detail == "answer to EHLO: '421 4.7.0 too many connections'"


def test_a_multi_line_greeting_in_pieces() -> None:
    script = smtp_script()
    script.greeting = [b"220-mail.test hello\r\n220-", b"more\r\n220 ", b"ready\r\n"]
    script.pause = 0.05
    result = run(smtp_at(script))
    assert result.reason is Reason.OK, result.detail
    assert not script.early


def test_hanging_is_timeout() -> None:
    result = run(smtp_at(hang(), timeout=0.3))
    assert result.reason is Reason.TIMEOUT
    assert result.detail == "no answer matching /^220/ within 0.3s; received 0 bytes"
    assert 0.3 - EARLY <= result.elapsed < 0.3 + SLACK


def test_a_banner_slower_than_the_deadline_is_timeout_with_what_came() -> None:
    result = run(smtp_at(drip(b"220 mail.test ESMTP\r\n", 0.1), timeout=0.35))
    assert result.reason is Reason.TIMEOUT
    assert result.detail.startswith(
        "no answer matching /^220/ within 0.35s; received 4 bytes: '220"
    )


@pytest.mark.parametrize(
    "garbage", [b"HTTP/1.1 400 Bad Request\r\n", b"\x16\x03\x01\x00", b"SSH-2.0-x"]
)
def test_garbage_is_unexpected_response_at_once(garbage: bytes) -> None:
    result = run(smtp_at(speak(garbage, "hang"), timeout=2))
    assert result.reason is Reason.UNEXPECTED_RESPONSE
    assert result.detail.startswith("expected an answer matching /^220/, got '")
    assert result.elapsed < 0.5


def test_closing_mid_banner_is_closed() -> None:
    result = run(smtp_at(speak(b"220 mail.te"), timeout=2))
    assert result.reason is Reason.CLOSED
    assert (
        result.detail
        == "the server closed the connection in the middle of an answer: '220 mail.te'"
    )


def test_closing_without_a_banner_is_closed() -> None:
    result = run(smtp_at(speak(b""), timeout=2))
    assert result.reason is Reason.CLOSED
    assert result.detail == "the server closed the connection before an answer matching /^220/"


def test_an_endless_multi_line_greeting_is_too_large_quickly() -> None:
    result = run(smtp_at(stream(b"220-" + b"x" * 70 + b"\r\n"), timeout=5))
    assert result.reason is Reason.TOO_LARGE
    assert result.elapsed < 1.0


def test_an_unanswered_quit_does_not_change_the_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    script = smtp_script()
    script.rules = [r for r in script.rules if not r.pattern.startswith(rb"^QUIT")]
    script.otherwise = b""
    # The deadline comes first: the verdict reached before it stands.
    result = run(smtp_at(script, timeout=0.3))
    assert result.reason is Reason.OK
    assert result.elapsed < 0.2
    # The goodbye wait comes first: the check ends then, well before its deadline.
    monkeypatch.setattr(_conversation, "GOODBYE_WAIT", 0.1)
    started = asyncio.run(_timed(smtp_at(script, timeout=3)))
    assert started[0].reason is Reason.OK
    assert 0.1 <= started[1] < 0.1 + SLACK


def test_goodbyes_begun_at_different_times_each_wait_their_own_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The goodbye waits of a loop share one timer: an earlier one ending, or
    one answered at once, ends no other before its time, nor after it."""
    silent = smtp_script()
    silent.rules = [r for r in silent.rules if not r.pattern.startswith(rb"^QUIT")]
    silent.otherwise = b""
    monkeypatch.setattr(_conversation, "GOODBYE_WAIT", 0.3)

    async def main() -> list[tuple[CheckResult, float]]:
        async with serve(silent) as quiet, serve(smtp_script()) as polite:
            loop = asyncio.get_running_loop()

            async def check(port: int, after: float) -> tuple[CheckResult, float]:
                await asyncio.sleep(after)
                start = loop.time()
                result = await run_check(service(port, "smtp", timeout=3))
                return result, loop.time() - start

            plan = [(quiet, 0.0), (polite, 0.05), (quiet, 0.1), (quiet, 0.2), (polite, 0.25)]
            return list(await asyncio.gather(*(check(s.port, after) for s, after in plan)))

    results = run(main())
    assert [result.reason for result, _ in results] == [Reason.OK] * 5
    for index in (0, 2, 3):
        assert 0.3 - EARLY <= results[index][1] < 0.3 + SLACK
    for index in (1, 4):
        assert results[index][1] < 0.3 - EARLY


def test_the_goodbye_waits_do_not_keep_a_finished_loop_alive() -> None:
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def main() -> CheckResult:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        return await smtp_at(smtp_script())

    assert asyncio.run(main()).reason is Reason.OK
    gc.collect()
    assert loops[0]() is None


async def _timed(coroutine: Awaitable[CheckResult]) -> tuple[CheckResult, float]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    result = await asyncio.wait_for(coroutine, 5)
    return result, loop.time() - start


def test_smtps_with_verified_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    transcript = Transcript()

    async def main(**options: object) -> CheckResult:
        async with serve(smtp_script(), tls=pki.valid.server_context()) as server:
            svc = service(server.port, "smtp", tls=True, **options)
            return await run_check(svc, transcript)

    result = run(main(ca_file=pki.ca_file, server_name="localhost"))
    assert result.reason is Reason.OK, result.detail
    infos = [e.data for e in transcript.entries if e.direction == "info"]
    assert any(b"certificate verified for localhost" in info for info in infos)

    untrusted = run(main())  # system CAs do not know the test CA
    assert untrusted.reason is Reason.TLS
    assert "certificate" in untrusted.detail

    unverified = run(main(tls_verify=False))
    assert unverified.reason is Reason.OK
