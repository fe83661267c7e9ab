"""Receivers named by host names, with a real DNS server that answers, fails or hangs.

``watchdog run`` runs with ``tests/dnsserver.py`` as its only name server and
a real Net-SNMP snmptrapd as the receiver: a name that hangs must not hold up
start-up, a name the resolver refuses must not stop the daemon, and a
receiver whose address changes is found at the new one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from snmp_watchdog.notify.mib import Oids
from tests.dnsserver import DnsServer
from tests.helpers import Daemon, free_tcp_port, pending_rows
from tests.snmptrapd import Snmptrapd

pytestmark = [pytest.mark.snmp, pytest.mark.slow]

OIDS = Oids()


def dotted(oid: tuple[int, ...]) -> str:
    return ".".join(map(str, oid))


def config(tmp_path: Path, receivers: list[str], **options: str) -> Path:
    """A service that goes DOWN at once (nothing listens) and the given receivers."""
    extra = "".join(f"    {k}: {v}\n" for k, v in options.items())
    body = "".join(
        f"  - name: {line.split()[0]}\n    host: {line.split()[1]}\n    port: {line.split()[2]}\n"
        f"    community: public\n{extra}"
        for line in receivers
    )
    cfg = tmp_path / "w.yaml"
    cfg.write_text(f"""
watchdog:
  state_dir: {tmp_path}/state
defaults:
  interval: 0.3s
  retry_interval: 0.1s
  timeout: 1s
  fall: 1
  rise: 1
  jitter: 0
receivers:
{body}
services:
  - name: app
    host: 127.0.0.1
    port: {free_tcp_port()}
    check: tcp
""")
    return cfg


def asked(dns: DnsServer, name: str) -> bool:
    return any(query == name for query, _type in list(dns.queries))


def daemon(dns: DnsServer, cfg: Path) -> Daemon:
    return Daemon(
        None, argv=dns.argv([sys.executable, "-m", "snmp_watchdog", "-c", str(cfg), "run"])
    )


def test_receivers_whose_names_hang_do_not_hold_up_start_up(
    tmp_path: Path,
    dns: DnsServer,
    snmptrapd: Callable[..., Snmptrapd],
    daemons: list[Daemon],
) -> None:
    trapd = snmptrapd(communities=["public"])
    names = ["slow1.test", "slow2.test", "slow3.test"]
    for name in names:
        dns.hang(name)
    # The C library's defaults: a name that hangs takes 10 s (two 5 s tries), as long
    # as the daemon waits for one, so a start-up that waited would wait 30 s.
    dns.resolv_conf.write_text(f"nameserver {dns.address}\noptions timeout:5 attempts:2\n")
    receivers = [f"{n.split('.')[0]} {n} {trapd.port}" for n in names]
    cfg = config(tmp_path, receivers)
    d = daemon(dns, cfg)
    daemons.append(d)
    # The lookups run at once, in the background: ready and the first check come now,
    # not after three lookups of 10 s one after the other.
    ready = d.wait_for(r"\bready\b", timeout=8)
    down = d.wait_for(r"app .* is DOWN", timeout=8)
    assert not any("cannot resolve" in line for line in d.lines[: max(ready, down)])
    # All three are being looked up at once (each would hang for 10 s).
    deadline = time.monotonic() + 5
    while not all(asked(dns, n) for n in names):
        assert time.monotonic() < deadline, dns.queries
        time.sleep(0.05)
    assert not any("cannot resolve" in line for line in d.lines)

    # Once a name answers, what waited for it is delivered (the others keep waiting).
    dns.answer("slow1.test", "127.0.0.1")
    (got,) = trapd.wait_for(1, timeout=30)
    assert got.trap_oid == dotted(OIDS.service_down)
    d.wait_for(r"down #1 \(app\) sent to slow1")
    assert d.stop() == 0
    # The others' notifications wait in the outbox, for the next start.
    assert pending_rows(tmp_path / "state") == {"slow2": 1, "slow3": 1}


def test_names_the_resolver_refuses_do_not_stop_the_daemon(
    tmp_path: Path,
    dns: DnsServer,
    snmptrapd: Callable[..., Snmptrapd],
    daemons: list[Daemon],
) -> None:
    trapd = snmptrapd(communities=["public"])
    dns.fail("broken.test")  # SERVFAIL: gaierror
    dns.answer("good.test", "127.0.0.1")
    # (A name the IDNA codec refuses, mail..example.com, is refused by the
    # configuration loader now; the sender's own handling of it is tested in-process.)
    receivers = [
        f"servfail broken.test {trapd.port}",
        f"good good.test {trapd.port}",
    ]
    d = daemon(dns, config(tmp_path, receivers))
    daemons.append(d)
    d.wait_for(r"receiver servfail: cannot resolve broken\.test: ")
    d.wait_for(r"down #1 \(app\) sent to good")
    (got,) = trapd.wait_for(1)
    assert got.trap_oid == dotted(OIDS.service_down)
    # The failing ones are tried again, logged with their names, and the daemon lives on.
    d.wait_for(r"down #1 \(app\) to servfail not sent \(attempt 2\): cannot resolve broken\.test")
    assert d.proc.poll() is None
    assert d.stop() == 0


def test_a_receiver_whose_address_changes_is_found_at_the_new_one(
    tmp_path: Path,
    dns: DnsServer,
    snmptrapd: Callable[..., Snmptrapd],
    daemons: list[Daemon],
) -> None:
    trapd = snmptrapd(communities=["public"])
    dns.answer("nms.test", "127.0.0.2")  # nothing listens there
    cfg = config(tmp_path, [f"nms nms.test {trapd.port}"], mode="inform", timeout="0.5s")
    d = daemon(dns, cfg)
    daemons.append(d)
    d.wait_for(r"down #1 \(app\) to nms not acknowledged \(attempt 1\): timeout")
    dns.answer("nms.test", "127.0.0.1")  # the receiver moved; no reload
    d.wait_for(r"down #1 \(app\) to nms acknowledged in ", 30)
    d.wait_for(r"receiver nms: nms\.test now resolves to 127\.0\.0\.1 \(was 127\.0\.0\.2\)")
    (got,) = trapd.wait_for(1)
    assert got.pdu == "INFORM"
    assert got.trap_oid == dotted(OIDS.service_down)
    assert d.stop() == 0
    assert pending_rows(tmp_path / "state") == {}
