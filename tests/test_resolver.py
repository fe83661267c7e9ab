"""Host name lookups shared by name, through the C resolver and a real DNS server.

The C resolver runs in threads that a caller's deadline cannot stop: a
lookup of a name whose DNS server hangs holds its thread until the
resolver gives up (here after 1 s: ``options timeout:1 attempts:1``).
Lookups of one name share one lookup, so such a name holds one thread
however often it is asked for, and good names still find a free one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.dnsserver import DnsServer

pytestmark = pytest.mark.slow

SCRIPT = """
import asyncio, json, socket, sys
from concurrent.futures import ThreadPoolExecutor
from snmp_watchdog.resolver import getaddrinfo

async def lookup(host, port, timeout):
    try:
        async with asyncio.timeout(timeout):
            infos = await getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
    except TimeoutError:
        return "timeout"
    except socket.gaierror as exc:
        return exc.strerror
    return sorted([info[4][0], info[4][1]] for info in infos)

async def main():
    # Two resolver threads, as a stand-in for a daemon's pool of them.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(2))
    hung = await asyncio.gather(*(lookup("hang.test", 1000 + i, 0.2) for i in range(20)))
    # The lookup given up above still holds a thread; the other one is free.
    good = await asyncio.gather(lookup("good.test", 25, 0.6), lookup("good.test", 110, 0.6))
    bad = await lookup("bad..test", 25, 0.6)
    print(json.dumps({"hung": hung, "good": good, "bad": bad}))

asyncio.run(main())
"""


def run_script(dns: DnsServer) -> dict[str, Any]:
    proc = subprocess.run(
        dns.argv([sys.executable, "-c", SCRIPT]),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_a_hanging_name_holds_one_resolver_thread_however_often_it_is_looked_up(
    dns: DnsServer,
) -> None:
    dns.hang("hang.test")
    dns.answer("good.test", "127.0.0.7", "::7")
    got = run_script(dns)
    assert got["hung"] == ["timeout"] * 20
    # One lookup asked the DNS server, for all twenty callers.
    assert [q for q in dns.queries if q == ("hang.test", "A")] == [("hang.test", "A")]
    # Each caller gets its own port in the shared answer.
    assert got["good"] == [
        [["127.0.0.7", 25], ["::7", 25]],
        [["127.0.0.7", 110], ["::7", 110]],
    ]
    assert got["bad"] == "not a valid host name: label empty or too long"
