"""Showing conversations to people: ``watchdog probe`` and the details of check results.

Rules:

- Bytes are shown as UTF-8 where they decode, with ``\\xNN`` for bytes that do
  not; control characters (``\\r``, ``\\n``, ``\\t``, NUL, ESC, DEL, ...) are
  escaped, so a line of output is always one line of text and a hostile
  server cannot move the cursor or ring the bell.
- A transcript prints one line per line of data: each received chunk and each
  sent line is split at ``\\n``; the line ending (CRLF or LF) is not shown, any
  other control character is. A chunk that ends in the middle of a line is
  printed as it came; the next chunk starts a new output line.
- Each line starts with the time since the check began, then ``->`` (sent),
  ``<-`` (received) or ``..`` (what the check did: resolve, connect, TLS).
- The verdict line reads ``up: ok: DETAIL (15.2 ms)`` or
  ``down: timeout: DETAIL (5001.0 ms)``. A detail of several lines (the diff of
  an ``expect_file`` mismatch) has its first line on the verdict line and the
  rest indented below.
"""

from __future__ import annotations

import re

from snmp_watchdog.result import CheckResult, Transcript

#: Control characters and their escapes (C0, DEL and C1); everything else prints.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_ESCAPES.update({0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"})

_ARROWS = {"send": "->", "recv": "<-", "info": ".."}

#: Most characters of server data a detail quotes.
QUOTE_LIMIT = 200


#: A byte that is not printable ASCII: only text with one needs the escaping.
_NOT_PLAIN = re.compile(rb"[^\x20-\x7e]")


def printable(data: bytes) -> str:
    """``data`` as one line of text: UTF-8 where it decodes, every control character escaped."""
    if _NOT_PLAIN.search(data) is None:  # most server lines, at a fifth of the cost
        return data.decode("ascii")
    return data.decode("utf-8", "backslashreplace").translate(_ESCAPES)


def quote(data: bytes, limit: int = QUOTE_LIMIT) -> str:
    """``data`` for a detail: one trailing line ending dropped, escaped, quoted, truncated."""
    if data.endswith(b"\n"):
        data = data[:-2] if data.endswith(b"\r\n") else data[:-1]
    text = printable(data[: limit * 4])
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"'{text}'"


def _lines(data: bytes) -> list[bytes]:
    """Split at LF, dropping each line's ending (CRLF or LF); a final partial line stays."""
    lines = data.split(b"\n")
    if lines[-1] == b"" and len(lines) > 1:
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def verdict(result: CheckResult) -> str:
    """The verdict line (and, for a multi-line detail, its indented continuation)."""
    state = "up" if result.ok else "down"
    first, _, rest = result.detail.partition("\n")
    line = f"{state}: {result.reason.code}: {first} ({result.elapsed * 1000:.1f} ms)"
    if not rest:
        return line
    return line + "".join(f"\n    {more}" for more in rest.split("\n"))


def format_conversation(transcript: Transcript, result: CheckResult, *, verbose: bool) -> str:
    """What ``watchdog probe`` prints: the conversation when ``verbose``, then the verdict."""
    out: list[str] = []
    if verbose:
        for entry in transcript.entries:
            stamp = f"{entry.at * 1000:7.1f} ms  {_ARROWS[entry.direction]} "
            if entry.direction == "info":
                out.append(stamp + printable(entry.data))
            else:
                out.extend(stamp + printable(line) for line in _lines(entry.data))
    out.append(verdict(result))
    return "\n".join(out)
