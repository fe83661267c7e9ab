"""Host names at check time: every resolver failure, and a slow resolver, is ``dns``.

Names that cannot even be encoded fail inside the check's own process. Names
that need a DNS server are resolved through a real one (``tests/dnsserver.py``)
by ``watchdog probe`` run with that server as its only resolver.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from snmp_watchdog.checks import run_check
from snmp_watchdog.reasons import Reason
from tests.checks.servers import service
from tests.dnsserver import DnsServer
from tests.helpers import SmtpServer

#: Every kind of check, with the options that make it a conversation where it has one.
KINDS: dict[str, str] = {
    "tcp": "check: tcp",
    "dialogue": "check: tcp, send: hello, expect: hi",
    "smtp": "check: smtp",
    "pop3": "check: pop3",
    "ssh": "check: ssh",
    "pop3s": "check: pop3, tls: true",
    "http": "check: http",
    "https": "check: https",
    "tls": "check: tls",
}


@pytest.mark.parametrize("host", ["mail..example.com", "a" * 64 + ".example.com", ".example.com"])
@pytest.mark.parametrize("kind", ["tcp", "smtp", "pop3", "http", "https", "tls"])
def test_a_name_the_resolver_cannot_encode_is_dns(host: str, kind: str) -> None:
    svc = service(25, kind, host=host, timeout=2.0)
    result = asyncio.run(run_check(svc))
    assert result.reason is Reason.DNS
    assert result.detail == "name did not resolve: not a valid host name: label empty or too long"


def probe_all(
    dns: DnsServer,
    tmp_path: Path,
    host: str,
    kinds: dict[str, str],
    *extra: str,
    port: int = 9,
    timeout: str = "300ms",
) -> dict[str, subprocess.CompletedProcess[str]]:
    """``watchdog probe`` of one service per kind at ``host``, all at once, through ``dns``.

    The resolver gives up on a silent server after 1 s, so a 300 ms deadline
    passes while the name is still being resolved.
    """
    cfg = tmp_path / "watchdog.yaml"
    cfg.write_text(
        "services:\n"
        + "".join(
            f"  - {{name: {name}, host: {host}, port: {port}, timeout: {timeout}, {options}}}\n"
            for name, options in kinds.items()
        )
    )
    procs = {
        name: subprocess.Popen(
            dns.argv(
                [sys.executable, "-m", "snmp_watchdog", "-c", str(cfg), "probe", name, *extra]
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in kinds
    }
    done = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=30)
        done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done


def test_a_resolution_unfinished_at_the_deadline_is_dns(dns: DnsServer, tmp_path: Path) -> None:
    dns.hang("slow.test")
    for name, proc in probe_all(dns, tmp_path, "slow.test", KINDS).items():
        assert proc.returncode == 1, (name, proc.stdout, proc.stderr)
        verdict = proc.stdout.splitlines()[-1]
        assert verdict.startswith("down: dns: slow.test did not resolve within 0.3s"), (
            name,
            verdict,
        )
    assert ("slow.test", "A") in dns.queries


@pytest.mark.parametrize("rcode", ["NXDOMAIN", "SERVFAIL"])
def test_a_name_the_dns_server_refuses_is_dns(dns: DnsServer, tmp_path: Path, rcode: str) -> None:
    dns.fail("gone.test", rcode)
    for name, proc in probe_all(dns, tmp_path, "gone.test", KINDS, timeout="5s").items():
        assert proc.returncode == 1, (name, proc.stdout, proc.stderr)
        verdict = proc.stdout.splitlines()[-1]
        assert verdict.startswith("down: dns: name did not resolve: "), (name, verdict)


def test_a_name_the_dns_server_answers_is_checked_at_its_address(
    dns: DnsServer, tmp_path: Path, smtp: SmtpServer
) -> None:
    smtp.start()
    dns.answer("mail.test", "127.0.0.1")
    kinds = {"smtp": "check: smtp"}
    proc = probe_all(dns, tmp_path, "mail.test", kinds, "-v", port=smtp.port, timeout="5s")["smtp"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "mail.test is 127.0.0.1" in proc.stdout
    assert proc.stdout.splitlines()[-1].startswith("up: ok: ")
