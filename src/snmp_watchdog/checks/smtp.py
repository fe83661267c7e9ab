"""The ``smtp`` check: greeting, EHLO (or HELO), QUIT.

Rules:

- The greeting must be a 220 reply; a reply may span lines (``220-...`` then
  ``220 ...``, RFC 5321 4.2). Any other code (421 or 554: the server refuses
  clients) is ``unexpected_response`` with the reply in the detail. Data that
  cannot be the start of a reply (no three-digit code) fails at once.
- ``EHLO <helo>`` must be answered with 250. A 5xx answer (a server that does
  not know EHLO) is followed by ``HELO <helo>``, which must get 250.
- Once 250 is in, the check has its verdict (``ok``, timed at that moment). It
  then sends ``QUIT`` and waits up to a second, within the deadline, for the
  221 so the server sees a polite goodbye; a missing, wrong or reset goodbye
  does not change the verdict (see ``Conversation.goodbye``).
- ``tls: true`` is SMTPS (implicit TLS from the first byte, port 465); STARTTLS
  is not spoken.
"""

from __future__ import annotations

import re

from snmp_watchdog.checks._conversation import (
    Conversation,
    Grammar,
    conversation_check,
)
from snmp_watchdog.checks._format import quote
from snmp_watchdog.reasons import Reason
from snmp_watchdog.result import CheckFailed


def reply_grammar(code: str) -> Grammar:
    """An SMTP reply (RFC 5321 4.2): ``ddd-text`` lines, then ``ddd text`` (or ``ddd``)."""
    return Grammar(
        re.compile(rb"(?:\d{3}-[^\n]*\n)*(?P<code>\d{3})(?:[ \t][^\n]*|\r)?\n"),
        re.compile(rb"(?:\d{3}-[^\n]*\n)*(?:\d{0,3}|\d{3}[ \t\r-][^\n]*)"),
        f"/^{code}/",
    )


GREETING = reply_grammar("220")
ACCEPTED = reply_grammar("250")
GOODBYE = reply_grammar("221")


def _code(match: re.Match[bytes]) -> bytes:
    return match.group("code")


async def _smtp(conversation: Conversation) -> str:
    service = conversation.service
    greeting = await conversation.reply(GREETING)
    if _code(greeting) != b"220":
        raise CheckFailed(Reason.UNEXPECTED_RESPONSE, f"greeting: {quote(greeting.group())}")
    helo = service.helo.encode()
    conversation.send(b"EHLO " + helo + b"\r\n")
    answer = await conversation.reply(ACCEPTED)
    said = "EHLO"
    if _code(answer)[:1] == b"5":
        said = "HELO"
        conversation.send(b"HELO " + helo + b"\r\n")
        answer = await conversation.reply(ACCEPTED)
    if _code(answer) != b"250":
        raise CheckFailed(Reason.UNEXPECTED_RESPONSE, f"answer to {said}: {quote(answer.group())}")
    detail = f"{quote(greeting.group())}, {said} accepted"
    conversation.verdict = conversation.result(Reason.OK, detail)
    await conversation.goodbye(b"QUIT\r\n", GOODBYE)
    return detail


check_smtp = conversation_check(_smtp)
