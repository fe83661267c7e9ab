"""contrib/zabbix proven against a real Zabbix 6.0 server (Debian's packages).

Traps: a real ``watchdog run`` watches two SMTP servers on loopback and sends
SNMPv2c traps to a real snmptrapd, whose ``traphandle`` is
``contrib/zabbix/zabbix_trap_receiver.py`` writing the server's
SNMPTrapperFile. The host that stands for the watchdog has an SNMP interface
at the watchdog's source address and the template *snmp-watchdog by SNMP
traps*. Through the API: stopping A opens one problem tagged service=A;
stopping B opens one for B; starting A again closes A's problem and leaves
B's open.

Polling: the template *snmp-watchdog by SNMP* on a host whose SNMP interface
is an agent serving wdServiceTable: its low-level discovery finds each row,
the items read each service's state, and the trigger prototype makes a
problem for the service that is down and no other, resolved when it is up.

Run with ``bash scripts/zabbix-test.sh``; excluded from the default run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Daemon, SmtpServer, free_udp_port
from tests.snmptrapd import Snmptrapd
from tests.zabbix.conftest import POLLING_TEMPLATE, REPO, TRAPS_TEMPLATE, Zabbix
from tests.zabbix.stack import stop_process, wait_until

pytestmark = [pytest.mark.zabbix]

RECEIVER = REPO / "contrib" / "zabbix" / "zabbix_trap_receiver.py"
STATIC_TABLE = Path(__file__).with_name("static_table.py")
MIB_DIR = REPO / "mibs"
IETF_MIBS = Path(os.environ.get("WATCHDOG_IETF_MIBS", REPO / ".cache" / "ietf-mibs"))
WAIT = 60.0  # seconds for Zabbix to show a change; it takes a few


def problems(zabbix: Zabbix, host_id: str) -> dict[str, list[dict[str, Any]]]:
    """The host's open problems, by the value of their ``service`` tag."""
    found: dict[str, list[dict[str, Any]]] = {}
    for problem in zabbix.api.call(
        "problem.get", {"hostids": [host_id], "selectTags": "extend", "recent": False}
    ):
        tags = {t["tag"]: t["value"] for t in problem["tags"]}
        found.setdefault(tags.get("service", ""), []).append(problem)
    return found


def problem_events(zabbix: Zabbix, host_id: str) -> list[dict[str, Any]]:
    """Every problem event of the host, open or resolved, oldest first."""
    events: list[dict[str, Any]] = zabbix.api.call(
        "event.get",
        {
            "hostids": [host_id],
            "source": 0,
            "object": 0,
            "value": 1,
            "selectTags": "extend",
            "sortfield": ["clock", "eventid"],
        },
    )
    return events


def wait_for_problems(
    zabbix: Zabbix, host_id: str, services: set[str], what: str
) -> dict[str, list[dict[str, Any]]]:
    """Wait until the open problems are exactly one for each of ``services``."""

    def probe() -> dict[str, list[dict[str, Any]]] | None:
        found = problems(zabbix, host_id)
        return found if set(found) == services else None

    try:
        found = wait_until(what, probe, WAIT, interval=0.5)
    except AssertionError:
        raise AssertionError(
            f"{what}: open problems {problems(zabbix, host_id)}\n"
            f"trapper file:\n{read(zabbix.trap_file)[-3000:]}\n"
            f"server log:\n{zabbix.server.log_text()[-3000:]}"
        ) from None
    assert all(len(p) == 1 for p in found.values()), found
    return found


def read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def config_text(tmp_path: Path, trapd_port: int, alpha: int, beta: int) -> str:
    return f"""
watchdog:
  state_dir: {tmp_path}/state
defaults:
  interval: 0.3s
  retry_interval: 0.1s
  timeout: 1s
  fall: 2
  rise: 2
  jitter: 0
receivers:
  - name: zabbix
    host: 127.0.0.1
    port: {trapd_port}
    version: 2c
    community: public
    mode: trap
    source: 127.0.0.1
services:
  - name: alpha
    host: 127.0.0.1
    port: {alpha}
    check: smtp
    helo: test.example
  - name: beta
    host: 127.0.0.1
    port: {beta}
    check: smtp
    helo: test.example
"""


@pytest.fixture
def servers() -> Iterator[tuple[SmtpServer, SmtpServer]]:
    pair = (SmtpServer(), SmtpServer())
    yield pair
    for server in pair:
        server.stop()


def test_down_opens_a_problem_for_its_service_and_its_up_closes_only_that(
    zabbix: Zabbix,
    tmp_path: Path,
    snmptrapd: Callable[..., Snmptrapd],
    daemons: list[Daemon],
    servers: tuple[SmtpServer, SmtpServer],
) -> None:
    alpha, beta = servers
    trapd = snmptrapd(
        communities=["public"],
        mib_dirs=[MIB_DIR, IETF_MIBS],
        mibs=["SNMPv2-MIB", "SNMP-WATCHDOG-MIB"],
        extra_config=[f"traphandle default {sys.executable} {RECEIVER} --file {zabbix.trap_file}"],
    )
    host_id = zabbix.create_host("watchdog-traps", TRAPS_TEMPLATE, "127.0.0.1", 161)
    try:
        cfg = tmp_path / "watchdog.yaml"
        cfg.write_text(config_text(tmp_path, trapd.port or 0, alpha.port, beta.port))

        # The path works end to end once the server knows the new host: a test
        # notification lands in its item (sent again until it does).
        def test_value_arrived() -> bool | None:
            subprocess.run(
                [sys.executable, "-m", "snmp_watchdog", "-c", str(cfg), "test-trap"],
                capture_output=True,
                timeout=30,
                check=True,
            )
            items = zabbix.api.call(
                "item.get",
                {"hostids": [host_id], "search": {"name": "test notifications"}},
            )
            return True if items and items[0]["lastclock"] != "0" else None

        wait_until("a test notification reaches the host", test_value_arrived, WAIT, 2)
        assert problems(zabbix, host_id) == {}

        alpha.start()
        beta.start()
        d = Daemon(cfg, "--log-level", "debug")
        daemons.append(d)
        for name in ("alpha", "beta"):  # confirmed up (rise: 2), silently
            d.wait_for(f"check {name}: ok", start=d.wait_for(f"check {name}: ok") + 1)

        alpha.stop()
        d.wait_for(r"alpha .* is DOWN \(was up\) after 2 checks: refused")
        found = wait_for_problems(zabbix, host_id, {"alpha"}, "a problem for alpha")
        (alpha_problem,) = found["alpha"]
        assert alpha_problem["name"] == "Service alpha (127.0.0.1) is down: refused"

        beta.stop()
        d.wait_for(r"beta .* is DOWN \(was up\) after 2 checks: refused")
        found = wait_for_problems(zabbix, host_id, {"alpha", "beta"}, "problems for both")
        assert found["alpha"][0]["eventid"] == alpha_problem["eventid"]
        (beta_problem,) = found["beta"]

        alpha.start()
        d.wait_for(r"alpha .* is UP \(was down\) after 2 checks: ok")
        found = wait_for_problems(zabbix, host_id, {"beta"}, "alpha's Up closed alpha's only")
        assert found["beta"][0]["eventid"] == beta_problem["eventid"]
        time.sleep(3)  # a wrong recovery of beta would show by now
        assert set(problems(zabbix, host_id)) == {"beta"}

        events = {e["eventid"]: e for e in problem_events(zabbix, host_id)}
        assert set(events) == {alpha_problem["eventid"], beta_problem["eventid"]}
        assert events[alpha_problem["eventid"]]["r_eventid"] != "0"
        assert events[beta_problem["eventid"]]["r_eventid"] == "0"
        assert d.stop() == 0
    finally:
        zabbix.delete_host(host_id)


# --- polling --------------------------------------------------------------------


class StaticAgent:
    """Net-SNMP's snmpd answering SNMPv2c (community public) on loopback, wdServiceTable
    served by ``static_table.py`` from a JSON file that the test rewrites."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_udp_port()
        self.table = directory / "table.json"
        self._proc: subprocess.Popen[bytes] | None = None

    def write(self, rows: list[dict[str, Any]]) -> None:
        tmp = self.table.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows))
        tmp.replace(self.table)

    def start(self) -> StaticAgent:
        program = self.directory / "wdservicetable"
        program.write_text(f'#!/bin/sh\nexec {sys.executable} {STATIC_TABLE} {self.table} "$@"\n')
        program.chmod(0o755)
        conf = self.directory / "snmpd.conf"
        conf.write_text(
            f"rocommunity public 127.0.0.1\npass .1.3.6.1.4.1.8072.9999.9999.1.2 {program}\n"
        )
        persistent = self.directory / "persistent"
        persistent.mkdir(exist_ok=True)
        with (self.directory / "snmpd.log").open("wb") as log:
            self._proc = subprocess.Popen(
                [
                    *("snmpd", "-f", "-Lo", "-C", "-c", str(conf), "-M", "/dev/null", "-m", ""),
                    f"udp:127.0.0.1:{self.port}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, SNMP_PERSISTENT_DIR=str(persistent)),
            )
        wait_until("snmpd answers", self._answers, 15)
        return self

    def _answers(self) -> bool | None:
        done = subprocess.run(
            [
                *("snmpget", "-v2c", "-c", "public", "-On", "-t", "1", "-r", "0"),
                *(f"udp:127.0.0.1:{self.port}", "1.3.6.1.4.1.8072.9999.9999.1.2.1.2.1"),
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return True if "alpha" in done.stdout else None

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc, timeout=5)
            self._proc = None


def row(index: int, name: str, port: int, *, state: int, reason: int, text: str) -> dict[str, Any]:
    return {
        "index": index,
        "name": name,
        "host": "127.0.0.1",
        "port": port,
        "check": "smtp",
        "state": state,
        "previous": 1,
        "reason": reason,
        "text": text,
    }


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[StaticAgent]:
    served = StaticAgent(tmp_path / "snmpd")
    served.write(
        [
            row(1, "alpha", 2525, state=1, reason=0, text="220 greeting"),
            row(7, "beta", 2526, state=2, reason=1, text="refused"),
        ]
    )
    yield served.start()
    served.stop()


def test_discovery_finds_each_service_and_a_problem_follows_its_polled_state(
    zabbix: Zabbix, agent: StaticAgent
) -> None:
    macros = {"{$WD.LLD.INTERVAL}": "5s", "{$WD.POLL.INTERVAL}": "2s"}
    host_id = zabbix.create_host(
        "watchdog-agent", POLLING_TEMPLATE, "127.0.0.1", agent.port, macros
    )
    try:

        def states() -> dict[str, str] | None:
            items = zabbix.api.call(
                "item.get",
                {"hostids": [host_id], "search": {"key_": "wd.service.state"}, "output": "extend"},
            )
            values = {i["key_"]: i["lastvalue"] for i in items if i["lastclock"] != "0"}
            return values if len(values) == 2 else None

        try:
            found = wait_until("discovered items with values", states, WAIT, 1)
        except AssertionError:
            rules = zabbix.api.call("discoveryrule.get", {"hostids": [host_id]})
            raise AssertionError(
                f"discovery: {rules}\nserver log:\n{zabbix.server.log_text()[-3000:]}"
            ) from None
        assert found == {'wd.service.state["alpha"]': "1", 'wd.service.state["beta"]': "2"}
        reasons = zabbix.api.call(
            "item.get", {"hostids": [host_id], "search": {"key_": "wd.service.reason["}}
        )
        assert len(reasons) == 2

        open_problems = wait_for_problems(zabbix, host_id, {"beta"}, "a polled problem for beta")
        (beta_problem,) = open_problems["beta"]
        assert beta_problem["name"] == "Service beta (127.0.0.1:2526) is down (polled)"

        agent.write(
            [
                row(1, "alpha", 2525, state=2, reason=2, text="timeout"),
                row(7, "beta", 2526, state=1, reason=0, text="220 greeting"),
            ]
        )
        wait_for_problems(zabbix, host_id, {"alpha"}, "alpha down, beta up again")
        events = {e["eventid"]: e for e in problem_events(zabbix, host_id)}
        assert events[beta_problem["eventid"]]["r_eventid"] != "0"
    finally:
        zabbix.delete_host(host_id)
