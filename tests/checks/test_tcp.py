"""The ``tcp`` check and ``run_check`` against real loopback servers: connect, dialogue,
send_file/expect_file, every way a server can fail, and many checks at once."""

from __future__ import annotations

import asyncio
import random
import re
import time

from snmp_watchdog.checks import run_check
from snmp_watchdog.checks._format import _ESCAPES, format_conversation, printable
from snmp_watchdog.model import MAX_READ, Service, Step
from snmp_watchdog.reasons import Reason
from snmp_watchdog.result import CheckResult, Transcript
from tests.checks.servers import (
    Rule,
    Script,
    aiosmtpd_server,
    drip,
    hang,
    reset,
    serve,
    service,
    smtp_script,
    speak,
    stream,
)
from tests.helpers import EARLY, SLACK, free_tcp_port, run_bounded

run = run_bounded


def expect(pattern: bytes) -> Step:
    return Step(expect=re.compile(pattern, re.MULTILINE))


def send(line: bytes) -> Step:
    return Step(send=line)


async def check_at(handler: object, **options: object) -> CheckResult:
    """Serve ``handler`` and run one tcp check of it with ``options``."""
    async with serve(handler) as server:  # type: ignore[arg-type]
        return await run_check(service(server.port, **options))


# -- connect only -------------------------------------------------------------


def test_connect_only_is_ok_at_once() -> None:
    result = run(check_at(hang(), timeout=2.0))
    assert result.reason is Reason.OK
    assert re.fullmatch(r"connected to 127\.0\.0\.1:\d+", result.detail)
    assert result.elapsed < 0.5
    assert result.answer == b""


def test_nothing_listening_is_refused() -> None:
    result = run(run_check(service(free_tcp_port(), timeout=2.0)))
    assert result.reason is Reason.REFUSED
    assert result.elapsed < 0.5


def test_a_name_that_does_not_resolve_is_dns() -> None:
    result = run(run_check(service(25, host="nonexistent.invalid", timeout=2.0)))
    assert result.reason is Reason.DNS
    assert "resolve" in result.detail


def test_a_name_is_resolved_at_check_time() -> None:
    transcript = Transcript()

    async def main() -> CheckResult:
        async with serve(hang()) as server:
            return await run_check(service(server.port, host="localhost"), transcript)

    result = run(main())
    assert result.reason is Reason.OK
    infos = [e.data for e in transcript.entries if e.direction == "info"]
    assert infos[0] == b"resolving localhost"
    assert any(b"connected to 127.0.0.1:" in info or b"[::1]" in info for info in infos)


# -- dialogue -------------------------------------------------------------------


def test_dialogue_matches_a_prompt_without_newline_at_once() -> None:
    script = Script(
        greeting=b"login: ",
        rules=[
            Rule(rb"^admin\r\n$", b"Password: "),
            Rule(rb"^secret\r\n$", b"Welcome\r\n$ "),
            Rule(rb"^exit", b"bye\r\n", close=True),
        ],
    )
    dialogue = (
        expect(rb"login: $"),
        send(b"admin"),
        expect(rb"^Password:"),
        send(b"secret"),
        expect(rb"^\$ "),
        send(b"exit"),
    )
    result = run(check_at(script, dialogue=dialogue, timeout=3.0))
    assert result.reason is Reason.OK, result.detail
    assert result.elapsed < 0.5
    assert script.lines == [b"admin\r\n", b"secret\r\n", b"exit\r\n"]


def test_dialogue_that_starts_with_send_talks_first() -> None:
    script = Script(rules=[Rule(rb"^PING", b"PONG\r\n")])
    result = run(check_at(script, dialogue=(send(b"PING"), expect(rb"^PONG")), timeout=3.0))
    assert result.reason is Reason.OK, result.detail
    assert result.elapsed < 0.5


def test_expect_searches_only_after_the_previous_match() -> None:
    # "250" was in the greeting line, which the first expect consumed whole: the
    # second one must look at the answer to HELO only.
    script = Script(b"220 x 250\r\n", [Rule(rb"^HELO", b"554 no\r\n")])
    dialogue = (expect(rb"^220.*\n"), send(b"HELO a"), expect(rb"250"))
    result = run(check_at(script, dialogue=dialogue, timeout=0.5))
    assert result.reason is Reason.UNEXPECTED_RESPONSE
    assert result.detail == "expected /250/, got '554 no'"


def test_silence_until_the_deadline_is_timeout() -> None:
    result = run(check_at(hang(), dialogue=(expect(rb"^220"),), timeout=0.3))
    assert result.reason is Reason.TIMEOUT
    assert result.detail == "no answer matching /^220/ within 0.3s; received 0 bytes"
    assert 0.3 - EARLY <= result.elapsed < 0.3 + SLACK


def test_garbage_until_the_deadline_is_unexpected_response() -> None:
    garbage = b"\x00\xff\x1b[2Jhello\r\n"
    result = run(check_at(speak(garbage, "hang"), dialogue=(expect(rb"^220"),), timeout=0.3))
    assert result.reason is Reason.UNEXPECTED_RESPONSE
    assert result.detail == r"expected /^220/, got '\x00\xff\x1b[2Jhello'"
    assert result.elapsed >= 0.3


def test_garbage_then_close_is_unexpected_response_at_once() -> None:
    result = run(check_at(speak(b"HTTP/1.0 400\r\n"), dialogue=(expect(rb"^220"),), timeout=2))
    assert result.reason is Reason.UNEXPECTED_RESPONSE
    assert result.detail == "expected /^220/, got 'HTTP/1.0 400'"
    assert result.elapsed < 0.5


def test_close_without_a_word_is_closed() -> None:
    result = run(check_at(speak(b""), dialogue=(expect(rb"^220"),), timeout=2))
    assert result.reason is Reason.CLOSED
    assert "/^220/" in result.detail
    assert result.elapsed < 0.5


def test_a_reset_is_reset() -> None:
    result = run(check_at(reset(), dialogue=(expect(rb"^220"),), timeout=2))
    assert result.reason is Reason.RESET
    assert result.elapsed < 0.5


def test_a_stream_without_end_is_too_large_quickly() -> None:
    result = run(check_at(stream(), dialogue=(expect(rb"^220"),), timeout=5))
    assert result.reason is Reason.TOO_LARGE
    assert result.elapsed < 1.0
    assert result.answer is not None
    assert MAX_READ < len(result.answer) <= MAX_READ + 1


def test_a_match_within_the_limit_counts_even_if_more_came() -> None:
    result = run(check_at(stream(prefix=b"220 ok\r\n"), dialogue=(expect(rb"^220"),), timeout=5))
    assert result.reason is Reason.OK


def test_one_byte_at_a_time_is_matched_as_soon_as_it_can() -> None:
    result = run(check_at(drip(b"220 hello\r\n", 0.05), dialogue=(expect(rb"^220"),), timeout=2))
    assert result.reason is Reason.OK
    assert result.elapsed < 0.5  # three bytes, not the whole line


def test_a_prompt_after_much_data_is_still_matched_at_once() -> None:
    # Over 4 KiB pending, matching is retried less often; a last small piece still counts.
    handler = drip(b"y" * 8192 + b"\r\nlogin: ", 0.05, size=4096)
    result = run(check_at(handler, dialogue=(expect(rb"^login: "),), timeout=2))
    assert result.reason is Reason.OK
    assert result.elapsed < 0.1 + 0.1


def test_a_slow_drip_of_garbage_ends_at_the_deadline() -> None:
    handler = drip(b"xxxxxxxxxxxxxxxxxxxx", 0.05)
    result = run(check_at(handler, dialogue=(expect(rb"^220"),), timeout=0.4))
    assert result.reason is Reason.UNEXPECTED_RESPONSE
    assert 0.4 - EARLY <= result.elapsed < 0.4 + SLACK


def test_transcript_and_verdict_of_a_dialogue() -> None:
    transcript = Transcript()

    async def main() -> CheckResult:
        async with serve(smtp_script()) as server:
            steps = (expect(rb"^220"), send(b"HELO me"), expect(rb"^250"), send(b"QUIT"))
            return await run_check(service(server.port, dialogue=steps), transcript)

    result = run(main())
    text = format_conversation(transcript, result, verbose=True)
    lines = text.splitlines()
    assert re.fullmatch(r" +\d+\.\d ms  \.\. connected to 127\.0\.0\.1:\d+ from .*", lines[0])
    assert any(line.endswith("ms  <- 220 mail.test ESMTP ready") for line in lines)
    assert any(line.endswith("ms  -> HELO me") for line in lines)
    assert re.fullmatch(r"up: ok: dialogue done \(4 steps\) \(\d+\.\d ms\)", lines[-1])
    assert format_conversation(transcript, result, verbose=False) == lines[-1]


# -- send_file / expect_file ------------------------------------------------------

INPUT = b"HELO client.test\nQUIT\n"


def file_service(port: int, answer: bytes | None, **options: object) -> Service:
    return service(port, send_data=INPUT, expect_answer=answer, timeout=3.0, **options)


def test_send_file_records_compares_and_ignores_against_aiosmtpd() -> None:
    ignore = (re.compile(rb"mail-[ab]\.test"),)
    with aiosmtpd_server("mail-a.test") as port_a, aiosmtpd_server("mail-b.test") as port_b:
        recorded = run(run_check(file_service(port_a, None)))
        assert recorded.reason is Reason.OK, recorded.detail
        assert recorded.answer is not None
        assert recorded.answer.startswith(b"220 mail-a.test")
        assert b"\r\n250 mail-a.test\r\n221 Bye\r\n" in recorded.answer
        assert recorded.elapsed < 1.0  # the server closes after QUIT: no wait for the deadline

        same = run(run_check(file_service(port_a, recorded.answer)))
        assert same.reason is Reason.OK, same.detail

        lf_only = recorded.answer.replace(b"\r\n", b"\n")
        assert run(run_check(file_service(port_a, lf_only))).reason is Reason.OK

        other = run(run_check(file_service(port_b, recorded.answer)))
        assert other.reason is Reason.UNEXPECTED_RESPONSE
        summary, *diff = other.detail.split("\n")
        assert summary == "the answer differs from the recorded answer"
        assert "-250 mail-a.test" in diff
        assert "+250 mail-b.test" in diff

        ignored = run(run_check(file_service(port_b, recorded.answer, ignore=ignore)))
        assert ignored.reason is Reason.OK, ignored.detail


def test_send_file_waits_for_the_whole_greeting_and_each_answer() -> None:
    # postscreen style: "220-" first, the rest later; a client that talks early is caught.
    script = smtp_script()
    script.greeting = [b"220-mail.test first\r\n", b"220 mail.test ready\r\n"]
    script.pause = 0.2
    result = run(check_at(script, send_data=b"HELO a\r\nNOOP\r\nQUIT\r\n", timeout=3))
    assert not script.early
    assert script.lines == [b"HELO a\r\n", b"NOOP\r\n", b"QUIT\r\n"]
    assert result.reason is Reason.OK
    assert result.answer is not None
    assert result.answer.endswith(b"500 unknown command\r\n221 2.0.0 Bye\r\n")


def test_send_file_to_a_server_that_waits_for_the_client() -> None:
    script = Script(rules=[Rule(rb"^PING", b"PONG\r\n"), Rule(rb"^BYE", b"bye\r\n", close=True)])
    options = {"send_data": b"PING\nBYE\n", "expect_answer": b"PONG\nbye\n", "timeout": 1.0}
    result = run(check_at(script, **options))
    assert result.reason is Reason.OK, result.detail
    assert 0.25 <= result.elapsed < 0.25 + 0.5  # one pace (a quarter of 1 s) for the banner


def test_send_file_answer_ends_at_the_deadline_when_the_server_stays() -> None:
    handler = speak(b"220 hi\r\n", "hang")
    recorded = run(check_at(handler, send_data=b"HELO a\n", timeout=0.4))
    assert recorded.reason is Reason.OK
    assert recorded.answer == b"220 hi\r\n"
    compared = run(check_at(handler, send_data=b"HELO a\n", expect_answer=b"220 ho\n", timeout=0.4))
    assert compared.reason is Reason.UNEXPECTED_RESPONSE
    assert compared.detail.split("\n")[1:] == ["@@ -1,2 +1,2 @@", "-220 ho", "+220 hi", " "]
    assert 0.4 - EARLY <= compared.elapsed < 0.4 + SLACK


def test_send_file_with_no_answer_at_all() -> None:
    silent = run(check_at(hang(), send_data=b"HELO a\n", expect_answer=b"220\n", timeout=0.4))
    assert silent.reason is Reason.TIMEOUT
    assert silent.detail == "no answer within 0.4s"
    closed = run(check_at(speak(b""), send_data=b"HELO a\n", expect_answer=b"220\n", timeout=2))
    assert closed.reason is Reason.CLOSED


# -- many at once -----------------------------------------------------------------


def test_hanging_servers_do_not_delay_a_good_one() -> None:
    timeout = 0.5

    async def main() -> tuple[list[CheckResult], float, float]:
        async with serve(hang()) as bad, serve(smtp_script()) as good:
            started = time.monotonic()
            good_done = 0.0

            async def good_check() -> CheckResult:
                nonlocal good_done
                steps = (expect(rb"^220"), send(b"HELO a"), expect(rb"^250"), send(b"QUIT"))
                result = await run_check(service(good.port, dialogue=steps, timeout=timeout))
                good_done = time.monotonic() - started
                return result

            hanging = [
                run_check(service(bad.port, dialogue=(expect(rb"^220"),), timeout=timeout))
                for _ in range(50)
            ]
            results = await asyncio.gather(*hanging, good_check())
            return list(results), good_done, time.monotonic() - started

    results, good_done, total = run(main())
    assert results[-1].reason is Reason.OK
    assert good_done < 0.25
    assert [r.reason for r in results[:-1]] == [Reason.TIMEOUT] * 50
    assert timeout <= total < timeout + SLACK


# -- what probe prints ------------------------------------------------------------


def test_format_escapes_control_bytes_and_splits_lines() -> None:
    transcript = Transcript()
    transcript.add(0.0123, "info", b"connected to 127.0.0.1:25 from 127.0.0.1:5000")
    transcript.add(0.0140, "recv", b"220-one\r\n220 two\x1b[31m\xff\r\n")
    transcript.add(0.0151, "send", b"EHLO x\r\n")
    transcript.add(0.0160, "recv", b"login: ")
    result = CheckResult(Reason.TIMEOUT, "no answer matching /^250/ within 5s", 5.0012)
    assert format_conversation(transcript, result, verbose=True).splitlines() == [
        "   12.3 ms  .. connected to 127.0.0.1:25 from 127.0.0.1:5000",
        "   14.0 ms  <- 220-one",
        r"   14.0 ms  <- 220 two\x1b[31m\xff",
        "   15.1 ms  -> EHLO x",
        "   16.0 ms  <- login: ",
        "down: timeout: no answer matching /^250/ within 5s (5001.2 ms)",
    ]


def test_printable_text_is_shown_as_it_is_and_anything_else_escaped() -> None:
    """The shortcut for printable ASCII gives what the escaping gives, for any bytes."""
    rng = random.Random(7)
    samples = [b"", b"220 mail.example ESMTP", bytes(range(256)), "é ü €".encode()]
    samples += [rng.randbytes(rng.randint(0, 12)) for _ in range(3000)]
    samples += [bytes(rng.choice(b" ~Az\x7f\x1f\xc3\xa9") for _ in range(8)) for _ in range(3000)]
    for data in samples:
        slow = data.decode("utf-8", "backslashreplace").translate(_ESCAPES)
        assert printable(data) == slow, data
    assert printable(b"a\tb\x7f") == r"a\tb\x7f"


def test_format_indents_a_diff_under_the_verdict() -> None:
    detail = "the answer differs from /etc/mail_good\n@@ -1 +1 @@\n-220 a\n+220 b"
    result = CheckResult(Reason.UNEXPECTED_RESPONSE, detail, 0.0152)
    assert format_conversation(Transcript(), result, verbose=False).splitlines() == [
        "down: unexpected_response: the answer differs from /etc/mail_good (15.2 ms)",
        "    @@ -1 +1 @@",
        "    -220 a",
        "    +220 b",
    ]
