"""The ``tcp`` check: a bare connect, or the netcat conversation.

Rules:

- **Connect only.** With no ``dialogue`` and no ``send_file``/``expect_file``
  the check connects and closes: ``ok`` as soon as the connection is made.
- **Dialogue** (``send``/``expect`` compile to it too). Steps run in order; a
  step that has both sends first. ``send`` writes the line plus CRLF at once,
  so a dialogue that starts with ``send`` talks first. ``expect`` waits for its
  regex in what arrived since the previous match ended (see
  ``_conversation``). When the last step is done the connection is closed:
  ``ok``. Sending after the server closed is ``closed``.
- **send_file / expect_file** (the old ``nc host 25 < input.txt | diff``). The
  check first waits for the server to speak (a banner), at most the *pace*:
  a quarter of the timeout, and no more than 1 s; a server that says nothing
  by then is taken to wait for the client. Then it sends the file one line at
  a time, each line ending in CRLF whatever the file uses, and before each
  next line waits again, up to the pace, for the answer to start. If what
  arrived ends in the middle of a numbered multi-line reply (``220-...``,
  ``250-...``) it waits for the reply's last line (within the deadline). This
  is what SMTP servers demand: Postfix's postscreen rejects clients that talk
  before the greeting, Exim rejects commands sent ahead of their answers.
  Lines that get no answer (a message after ``DATA``) cost one pace each.
- **The answer** is everything received until the server closes the connection
  (the file normally ends with ``QUIT``) or the deadline passes, whichever is
  first; a server that closes early ends the sending too. With a recorded
  answer (``expect_answer``) the two are compared after turning CRLF into LF
  and replacing every match of each ``ignore`` regex, in both, by
  ``<ignored>``: equal is ``ok``, different is ``unexpected_response`` whose
  detail is a one-line summary and a short unified diff. Nothing received is
  ``closed`` (the server closed) or ``timeout``. With nothing recorded yet
  (only ``watchdog record``) the check is ``ok`` once the server has closed,
  or at the deadline if an answer came. The result's ``answer`` is always the
  whole raw answer: what ``watchdog record`` saves.
"""

from __future__ import annotations

import difflib
import re

from snmp_watchdog.checks._conversation import (
    Conversation,
    conversation_check,
    seconds,
)
from snmp_watchdog.checks._format import printable
from snmp_watchdog.model import Service
from snmp_watchdog.reasons import Reason
from snmp_watchdog.result import CheckFailed, CheckResult

#: The longest wait for a banner, or for the start of the answer to a line.
MAX_PACE = 1.0
#: What replaces each match of an ``ignore`` regex before answers are compared.
IGNORED = b"<ignored>"
#: Most diff lines a mismatch detail shows.
DIFF_LINES = 12

#: Received data that ends inside a numbered reply: a continuation line
#: (``250-SIZE``) or a line still arriving that starts with a code.
_UNFINISHED = re.compile(rb"(?:^\d{3}-[^\n]*\n|^\d{1,3}|^\d{3}[ \t-][^\n]*)\Z", re.MULTILINE)


def pace(service: Service) -> float:
    return min(MAX_PACE, service.timeout / 4)


def file_lines(data: bytes) -> list[bytes]:
    """The lines of a ``send_file``, each ending in CRLF."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return [line.removesuffix(b"\r") + b"\r\n" for line in lines]


def normalise(answer: bytes, ignore: tuple[re.Pattern[bytes], ...]) -> bytes:
    """``answer`` as compared: LF line endings, each ``ignore`` match replaced."""
    answer = answer.replace(b"\r\n", b"\n")
    for pattern in ignore:
        answer = pattern.sub(IGNORED, answer)
    return answer


def difference(expected: bytes, received: bytes) -> str:
    """A short unified diff of two normalised answers (hunk headers and lines, no file names)."""
    lines = list(
        difflib.unified_diff(
            [printable(line) for line in expected.split(b"\n")],
            [printable(line) for line in received.split(b"\n")],
            n=1,
            lineterm="",
        )
    )[2:]
    if len(lines) > DIFF_LINES:
        lines = [*lines[:DIFF_LINES], "..."]
    return "\n".join(line if len(line) <= 120 else line[:117] + "..." for line in lines)


def judge(conversation: Conversation, *, at_deadline: bool) -> CheckResult:
    """The verdict on a ``send_file``/``expect_file`` answer, at the close or at the deadline."""
    service = conversation.service
    received = conversation.received()
    within = seconds(service.timeout)
    expected = service.expect_answer
    if expected is not None:
        want = normalise(expected, service.ignore)
        got = normalise(received, service.ignore)
        if want == got:
            return conversation.result(Reason.OK, f"the answer matches ({len(received)} bytes)")
    if not received:
        if at_deadline:
            return conversation.result(Reason.TIMEOUT, f"no answer within {within}")
        return conversation.result(Reason.CLOSED, "the server closed the connection at once")
    if expected is None:
        return conversation.result(
            Reason.OK, f"answer of {len(received)} bytes received (nothing recorded to compare)"
        )
    source = str(service.expect_file) if service.expect_file else "the recorded answer"
    return conversation.result(
        Reason.UNEXPECTED_RESPONSE,
        f"the answer differs from {source}\n{difference(want, got)}",
    )


async def _file_conversation(conversation: Conversation) -> CheckResult:
    service = conversation.service
    conversation.on_deadline = lambda: judge(conversation, at_deadline=True)
    wait = pace(service)
    await conversation.answer_started(wait, _UNFINISHED)
    lines = file_lines(service.send_data or b"")
    for number, line in enumerate(lines, 1):
        if conversation.eof:
            break
        conversation.send(line)
        if number < len(lines):
            await conversation.answer_started(wait, _UNFINISHED)
    await conversation.answer()
    return judge(conversation, at_deadline=False)


async def _tcp(conversation: Conversation) -> str:
    service = conversation.service
    for step in service.dialogue:
        if step.send is not None:
            conversation.send(step.send + b"\r\n")
        if step.expect is not None:
            await conversation.expect(step.expect)
    if (
        service.send_data is not None
        or service.send_file is not None
        or service.expect_file is not None
        or service.expect_answer is not None
    ):
        result = await _file_conversation(conversation)
        if not result.ok:
            raise CheckFailed(result.reason, result.detail)
        conversation.verdict = result
        return result.detail
    if service.dialogue:
        steps = len(service.dialogue)
        return f"dialogue done ({steps} step{'' if steps == 1 else 's'})"
    return f"connected to {conversation.peer()}"


check_tcp = conversation_check(_tcp)
