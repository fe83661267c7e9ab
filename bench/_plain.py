"""The baseline the benchmarks compare the daemon with: the same SMTP check,
written as plainly as asyncio allows (greeting, EHLO, QUIT; multi-line replies)."""

from __future__ import annotations

import asyncio

HELO = b"bench.example"


async def smtp_conversation(host: str, port: int) -> bool:
    """One check: True when the server greets with 220 and answers EHLO with 250."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        line = await reader.readline()
        while line[3:4] == b"-":
            line = await reader.readline()
        if line[:3] != b"220":
            return False
        writer.write(b"EHLO " + HELO + b"\r\n")
        line = await reader.readline()
        while line[3:4] == b"-":
            line = await reader.readline()
        if line[:3] != b"250":
            return False
        writer.write(b"QUIT\r\n")
        await reader.readline()
        return True
    finally:
        writer.close()
        await writer.wait_closed()
