"""The banner checks: ``pop3``, ``imap``, ``ftp`` and ``ssh``.

Each reads the server's greeting, judges it, says goodbye and closes. Data
that cannot be the start of the expected greeting fails at once
(``unexpected_response``); a greeting still incomplete at the deadline is a
``timeout``; ``tls: true`` means implicit TLS (pop3s 995, imaps 993, ftps 990).

- ``pop3``: ``+OK ...`` (``-ERR`` is unexpected_response), then ``QUIT``.
- ``imap``: ``* OK ...`` or ``* PREAUTH ...`` (``* BYE`` is
  unexpected_response), then ``a1 LOGOUT``.
- ``ftp``: a 220 reply, one line or several (``220-...`` up to ``220 ...``;
  RFC 959 lets the lines between say anything). A ``120`` (ready in a few
  minutes) is followed by reading the next reply. Then ``QUIT``.
- ``ssh``: the identification line ``SSH-2.0-...`` or ``SSH-1.99-...``; other
  lines may come before it (RFC 4253 4.2), but no NUL byte and no line longer
  than 1024 bytes. The check sends nothing and closes.

The goodbye (``QUIT``, ``LOGOUT``) comes after the verdict and cannot change
it (see ``Conversation.goodbye``).
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

POP3_LINE = Grammar(
    re.compile(rb"(?P<status>\+OK|-ERR)(?:[ \t][^\n]*|\r)?\n"),
    re.compile(rb"\+(?:O(?:K[^\n]*)?)?|-(?:E(?:R(?:R[^\n]*)?)?)?|"),
    r"/^\+OK/",
)

IMAP_GREETING = Grammar(
    re.compile(rb"\* (?P<status>[A-Za-z]+)[^\n]*\n"),
    re.compile(rb"(?:\*(?: [^\n]*)?)?"),
    r"/^\* (OK|PREAUTH)/",
)
#: Untagged lines, then the tagged answer to ``a1 LOGOUT``.
IMAP_LOGOUT = Grammar(
    re.compile(rb"(?:\*[^\n]*\n)*a1 [^\n]*\n"),
    re.compile(rb"(?:\*[^\n]*\n)*(?:\*[^\n]*|a1?|a1 [^\n]*)"),
    "/^a1 /",
)


def ftp_reply(code: str) -> Grammar:
    """An FTP reply (RFC 959 4.2): ``ddd text``, or ``ddd-text`` ... ``ddd text``."""
    return Grammar(
        re.compile(rb"(?:(?P<m>\d{3})-[^\n]*\n(?:[^\n]*\n)*?(?P=m)|\d{3})(?:[ \t][^\n]*|\r)?\n"),
        re.compile(rb"\d{0,3}|\d{3}[ \t\r][^\n]*|\d{3}-[\s\S]*"),
        f"/^{code}/",
    )


FTP_GREETING = ftp_reply("220")
FTP_GOODBYE = ftp_reply("221")

SSH_IDENTIFICATION = Grammar(
    re.compile(rb"(?:[^\n]*\n)*?(?P<ident>SSH-[^\r\n]*)\r?\n"),
    re.compile(rb"(?:[^\x00\n]{0,1024}\n)*[^\x00\n]{0,1024}"),
    "/^SSH-(2.0|1.99)-/",
)


async def _greeted(
    conversation: Conversation, greeting: re.Match[bytes], ok: bool, bye: bytes, reply: Grammar
) -> str:
    """Judge a greeting; when it is good, the verdict is in and a polite goodbye follows."""
    detail = quote(greeting.group())
    if not ok:
        raise CheckFailed(Reason.UNEXPECTED_RESPONSE, f"greeting: {detail}")
    conversation.verdict = conversation.result(Reason.OK, detail)
    await conversation.goodbye(bye, reply)
    return detail


async def _pop3(conversation: Conversation) -> str:
    greeting = await conversation.reply(POP3_LINE)
    ok = greeting.group("status") == b"+OK"
    return await _greeted(conversation, greeting, ok, b"QUIT\r\n", POP3_LINE)


async def _imap(conversation: Conversation) -> str:
    greeting = await conversation.reply(IMAP_GREETING)
    ok = greeting.group("status").upper() in (b"OK", b"PREAUTH")
    return await _greeted(conversation, greeting, ok, b"a1 LOGOUT\r\n", IMAP_LOGOUT)


async def _ftp(conversation: Conversation) -> str:
    greeting = await conversation.reply(FTP_GREETING)
    if greeting.group()[:3] == b"120":  # "ready in a moment": the real greeting follows
        greeting = await conversation.reply(FTP_GREETING)
    ok = greeting.group()[:3] == b"220"
    return await _greeted(conversation, greeting, ok, b"QUIT\r\n", FTP_GOODBYE)


async def _ssh(conversation: Conversation) -> str:
    found = await conversation.reply(SSH_IDENTIFICATION)
    ident = found.group("ident")
    if not ident.startswith((b"SSH-2.0-", b"SSH-1.99-")):
        raise CheckFailed(
            Reason.UNEXPECTED_RESPONSE, f"not an SSH 2 identification: {quote(ident)}"
        )
    return quote(ident)


check_pop3 = conversation_check(_pop3)
check_imap = conversation_check(_imap)
check_ftp = conversation_check(_ftp)
check_ssh = conversation_check(_ssh)
