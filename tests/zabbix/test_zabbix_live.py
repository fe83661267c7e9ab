"""contrib/zabbix proven against a real Zabbix 6.0 server (Debian's packages).

Traps: a real ``watchdog run`` watches two SMTP servers on loopback and sends
SNMPv2c traps, or SNMPv3 authPriv informs, to a real snmptrapd, whose ``traphandle`` is
``contrib/zabbix/zabbix_trap_receiver.py`` writing the server's
SNMPTrapperFile. The host that stands for the watchdog has an SNMP interface
at the watchdog's source address (``source: 127.0.0.2``) and the template
*snmp-watchdog by SNMP traps*. Through the API: stopping A opens one problem
tagged service=A; stopping B opens one for B; starting A again closes A's
problem and leaves B's open.

Polling: the template *snmp-watchdog by SNMP* on a host whose SNMP interface
is the agent of a real ``watchdog run``: its low-level discovery walks
wdServiceTable and finds each service, the items read each one's state and
reason, and the trigger prototype makes a problem for the service that is
down and no other, resolved when it is up again.

Run with ``bash scripts/zabbix-test.sh``; excluded from the default run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Daemon, SmtpServer, free_udp_port
from tests.snmptrapd import Snmptrapd, User
from tests.zabbix.conftest import POLLING_TEMPLATE, REPO, TRAPS_TEMPLATE, Zabbix
from tests.zabbix.stack import wait_until

pytestmark = [pytest.mark.zabbix]

RECEIVER = REPO / "contrib" / "zabbix" / "zabbix_trap_receiver.py"
MIB_DIR = REPO / "mibs"
IETF_MIBS = Path(os.environ.get("WATCHDOG_IETF_MIBS", REPO / ".cache" / "ietf-mibs"))
AUTH_KEY = "zabbix-auth-key"
PRIV_KEY = "zabbix-priv-key"
SOURCE = "127.0.0.2"  # the address the watchdog sends its traps from
WAIT = 60.0  # seconds for Zabbix to show a change; it takes a few


def problems(zabbix: Zabbix, host_id: str) -> dict[str, list[dict[str, Any]]]:
    """The host's open problems about a service, by the value of their ``service`` tag."""
    found: dict[str, list[dict[str, Any]]] = {}
    for problem in zabbix.api.call(
        "problem.get", {"hostids": [host_id], "selectTags": "extend", "recent": False}
    ):
        tags = {t["tag"]: t["value"] for t in problem["tags"]}
        if "service" in tags:
            found.setdefault(tags["service"], []).append(problem)
    return found


def restarted_problems(zabbix: Zabbix, host_id: str) -> list[str]:
    """The names of the host's open problems that are not about a service."""
    return [
        p["name"]
        for p in zabbix.api.call(
            "problem.get", {"hostids": [host_id], "selectTags": "extend", "recent": False}
        )
        if not any(t["tag"] == "service" for t in p["tags"])
    ]


def problem_events(zabbix: Zabbix, host_id: str) -> list[dict[str, Any]]:
    """Every problem event of the host about a service, open or resolved, oldest first."""
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
    return [e for e in events if any(t["tag"] == "service" for t in e["tags"])]


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


def send_test_trap(cfg: Path, *args: str) -> None:
    """``watchdog test-trap ARGS``, which must say that it delivered."""
    subprocess.run(
        [sys.executable, "-m", "snmp_watchdog", "-c", str(cfg), "test-trap", *args],
        capture_output=True,
        timeout=30,
        check=True,
    )


def read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


#: The receiver, as a plain SNMPv2c trap and as the authenticated, encrypted and
#: acknowledged SNMPv3 inform that contrib/zabbix/README.md suggests.
RECEIVERS = {
    "v2c trap": "version: 2c\n    community: public\n    mode: trap",
    "v3 inform": (
        "version: 3\n    user: watchdog\n    mode: inform\n"
        f"    auth: {{protocol: SHA256, key: {AUTH_KEY}}}\n"
        f"    priv: {{protocol: AES128, key: {PRIV_KEY}}}"
    ),
}


def config_text(
    tmp_path: Path, trapd_port: int, alpha: int, beta: int, receiver: str = "v2c trap"
) -> str:
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
    {RECEIVERS[receiver]}
    source: {SOURCE}
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


@pytest.fixture
def trapd(zabbix: Zabbix, snmptrapd: Callable[..., Snmptrapd]) -> Snmptrapd:
    """snmptrapd handing every notification to the receiver script, which writes the file
    the Zabbix server's SNMP trapper reads."""
    return snmptrapd(
        communities=["public"],
        users=[User("watchdog", "SHA-256", AUTH_KEY, "AES", PRIV_KEY)],  # for informs: no -e
        mib_dirs=[MIB_DIR, IETF_MIBS],
        mibs=["SNMPv2-MIB", "SNMP-WATCHDOG-MIB"],
        extra_config=[f"traphandle default {sys.executable} {RECEIVER} --file {zabbix.trap_file}"],
    )


@pytest.fixture(params=list(RECEIVERS))
def trap_config(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    trapd: Snmptrapd,
    servers: tuple[SmtpServer, SmtpServer],
) -> Path:
    """The watchdog's configuration: both services, snmptrapd as the receiver (each form)."""
    alpha, beta = servers
    cfg = tmp_path / "watchdog.yaml"
    cfg.write_text(config_text(tmp_path, trapd.port or 0, alpha.port, beta.port, request.param))
    return cfg


def test_down_opens_a_problem_for_its_service_and_its_up_closes_only_that(
    zabbix: Zabbix,
    trap_config: Path,
    daemons: list[Daemon],
    servers: tuple[SmtpServer, SmtpServer],
) -> None:
    alpha, beta = servers
    cfg = trap_config
    # Zabbix files a trap under the host whose SNMP interface has the trap's source address:
    # the receiver's source:, not the 127.0.0.1 the agent test's host has.
    host_id = zabbix.create_host("watchdog-traps", TRAPS_TEMPLATE, SOURCE, 161)
    try:
        # The path works end to end once the server knows the new host: a test
        # notification lands in its item (sent again until it does).
        def test_value_arrived() -> bool | None:
            send_test_trap(cfg)
            items = zabbix.api.call(
                "item.get",
                {"hostids": [host_id], "search": {"name": "test notifications"}},
            )
            return True if items and items[0]["lastclock"] != "0" else None

        wait_until("a test notification reaches the host", test_value_arrived, WAIT, 2)
        assert problems(zabbix, host_id) == {}

        # contrib/zabbix/README.md, step 4: a Down then an Up for a service, marked as a
        # test, open and resolve its problem.
        send_test_trap(cfg, "--service", "alpha")

        def resolved() -> list[dict[str, Any]] | None:
            events = problem_events(zabbix, host_id)
            return events if events and all(e["r_eventid"] != "0" for e in events) else None

        (test_event,) = wait_until(
            "test-trap --service: a problem opened and resolved", resolved, WAIT
        )
        assert test_event["name"] == "Service alpha (127.0.0.1) is down: refused"
        assert {"tag": "service", "value": "alpha"} in test_event["tags"]
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
        assert set(events) == {
            test_event["eventid"],
            alpha_problem["eventid"],
            beta_problem["eventid"],
        }
        assert events[alpha_problem["eventid"]]["r_eventid"] != "0"
        assert events[beta_problem["eventid"]]["r_eventid"] == "0"
        assert d.stop() == 0
    finally:
        zabbix.delete_host(host_id)


# --- polling --------------------------------------------------------------------


def test_discovery_finds_each_service_and_a_problem_follows_its_polled_state(
    zabbix: Zabbix,
    tmp_path: Path,
    daemons: list[Daemon],
    servers: tuple[SmtpServer, SmtpServer],
) -> None:
    alpha, beta = servers
    agent_port = free_udp_port()
    cfg = tmp_path / "watchdog.yaml"
    cfg.write_text(
        config_text(tmp_path, free_udp_port(), alpha.port, beta.port)
        + f"agent:\n  listen: 127.0.0.1:{agent_port}\n  community: public\n"
    )
    alpha.start()  # beta stays down: nothing listens on its port
    d = Daemon(cfg, "--log-level", "debug")
    daemons.append(d)
    d.wait_for(r"beta .* is DOWN \(was unknown\) after 2 checks: refused")
    d.wait_for("check alpha: ok", start=d.wait_for("check alpha: ok") + 1)

    macros = {"{$WD.LLD.INTERVAL}": "5s", "{$WD.POLL.INTERVAL}": "2s"}
    host_id = zabbix.create_host(
        "watchdog-agent", POLLING_TEMPLATE, "127.0.0.1", agent_port, macros
    )
    try:

        def values(key: str, count: int = 2) -> dict[str, str] | None:
            """Item key -> last value of the items whose key contains ``key``, once ``count``
            of them have one (by default the discovered items of both services)."""
            items = zabbix.api.call(
                "item.get", {"hostids": [host_id], "search": {"key_": key}, "output": "extend"}
            )
            found = {i["key_"]: i["lastvalue"] for i in items if i["lastclock"] != "0"}
            return found if len(found) == count else None

        try:
            states = wait_until("discovered items with values", lambda: values("state"), WAIT, 1)
        except AssertionError:
            rules = zabbix.api.call("discoveryrule.get", {"hostids": [host_id]})
            raise AssertionError(
                f"discovery: {rules}\nserver log:\n{zabbix.server.log_text()[-3000:]}"
            ) from None
        assert states == {'wd.service.state["alpha"]': "1", 'wd.service.state["beta"]': "2"}
        reasons = wait_until("reasons", lambda: values("wd.service.reason["), WAIT, 1)
        assert reasons == {'wd.service.reason["alpha"]': "0", 'wd.service.reason["beta"]': "1"}

        totals = wait_until("the totals", lambda: values("wd.services.", 3), WAIT, 1)
        assert totals == {
            "wd.services.up": "1",
            "wd.services.down": "1",
            "wd.services.unknown": "0",
        }
        uptime = wait_until("the uptime", lambda: values("wd.uptime", 1), WAIT, 1)
        assert 0 < float(uptime["wd.uptime"]) < 600, uptime  # seconds, from TimeTicks

        found = wait_for_problems(zabbix, host_id, {"beta"}, "a polled problem for beta")
        (beta_problem,) = found["beta"]
        assert beta_problem["name"] == f"Service beta (127.0.0.1:{beta.port}) is down (polled)"
        assert restarted_problems(zabbix, host_id) == ["snmp-watchdog: restarted (uptime < 10m)"]

        beta.start()
        alpha.stop()
        d.wait_for(r"alpha .* is DOWN \(was up\) after 2 checks: refused")
        d.wait_for(r"beta .* is UP \(was down\) after 2 checks: ok")
        found = wait_for_problems(zabbix, host_id, {"alpha"}, "alpha down, beta up again")
        events = {e["eventid"]: e for e in problem_events(zabbix, host_id)}
        assert set(events) == {beta_problem["eventid"], found["alpha"][0]["eventid"]}
        assert events[beta_problem["eventid"]]["r_eventid"] != "0"
        assert d.stop() == 0
    finally:
        zabbix.delete_host(host_id)
