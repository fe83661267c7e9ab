"""contrib/net-snmp: the pass_persist helper behind a real snmpd serves what the agent serves.

* ``contrib/net-snmp/snmpd.conf``, its placeholders filled in, makes a real
  snmpd (started here on a loopback port, stopped by its PID) run
  ``watchdog_pass_persist.py``; snmptable through snmpd shows the same rows,
  indexes, states and reasons as the watchdog's built-in agent, while the
  daemon runs and writes its database.
* SET through snmpd is refused; outside the MIB's root the helper answers
  nothing.
* The conversation itself: PING, get, getnext (DateAndTime as octets), set,
  and an unreadable database answering NONE.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from snmp_watchdog.notify.mib import Oids
from tests.helpers import Daemon, free_tcp_port, free_udp_port
from tests.test_agent import V2C, NetSnmp, v2c_agent, wait_until, write_config

pytestmark = [pytest.mark.slow, pytest.mark.snmp]

REPO = Path(__file__).resolve().parents[1]
HELPER = REPO / "contrib" / "net-snmp" / "watchdog_pass_persist.py"
SNMPD_CONF = REPO / "contrib" / "net-snmp" / "snmpd.conf"
MIB = "SNMP-WATCHDOG-MIB"
OIDS = Oids()


def start_snmpd(tmp_path: Path, port: int, config: Path) -> subprocess.Popen[bytes]:
    snmpd = shutil.which("snmpd") or "/usr/sbin/snmpd"
    assert Path(snmpd).exists(), "snmpd is not installed (Debian package snmpd)"
    text = (
        SNMPD_CONF.read_text()
        .replace("/opt/snmp-watchdog/.venv/bin/python", sys.executable)
        .replace("/opt/snmp-watchdog/contrib/net-snmp/watchdog_pass_persist.py", str(HELPER))
        .replace("/etc/snmp-watchdog/watchdog.yaml", str(config))
        .replace("REPLACE-WITH-COMMUNITY", "agent-read")
    )
    conf = tmp_path / "snmpd.conf"
    conf.write_text(f"agentaddress udp:127.0.0.1:{port}\n{text}")
    persist = tmp_path / "snmpd-persist"
    persist.mkdir()
    env = dict(os.environ, SNMP_PERSISTENT_DIR=str(persist), SNMPCONFPATH=str(persist))
    with (tmp_path / "snmpd.log").open("wb") as log:
        return subprocess.Popen(
            [snmpd, "-f", "-Lo", "-C", "-c", str(conf), "-M", "/nonexistent", "-m", ""],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock
    sock.close()


def test_snmpd_with_the_helper_serves_the_agents_table(
    tmp_path: Path, daemons: list[Daemon], listener: socket.socket
) -> None:
    agent_port, snmpd_port = free_udp_port(), free_udp_port()
    cfg = tmp_path / "watchdog.yaml"
    services = {"web": listener.getsockname()[1], "mail": free_tcp_port(), "shop": 9}
    write_config(cfg, tmp_path / "state", services, v2c_agent(agent_port))
    d = Daemon(cfg)
    daemons.append(d)
    d.wait_for("agent listening")
    agent = NetSnmp(tmp_path / "home", f"udp:127.0.0.1:{agent_port}")
    wanted = {"web": "up", "mail": "down", "shop": "down"}
    wait_until(lambda: {n: r["State"] for n, r in agent.table(V2C).items()} == wanted)

    proc = start_snmpd(tmp_path, snmpd_port, cfg)
    try:
        via_snmpd = NetSnmp(tmp_path / "home", f"udp:127.0.0.1:{snmpd_port}")
        wait_until(lambda: via_snmpd.run("snmpget", V2C, f"{MIB}::wdServicesUp.0").returncode == 0)
        steady = ("Name", "Host", "Port", "CheckKind", "State", "PreviousState", "ReasonCode")
        mine = {n: [r[k] for k in steady] for n, r in agent.table(V2C).items()}

        def theirs() -> dict[str, list[str]]:
            return {n: [r[k] for k in steady] for n, r in via_snmpd.table(V2C).items()}

        # The helper reads the state database, which the daemon writes within a second.
        deadline = time.monotonic() + 10
        while (got := theirs()) != mine and time.monotonic() < deadline:
            time.sleep(0.2)
        assert got == mine
        index_walk = ("-On", "-Oq")
        names = f"{MIB}::wdServiceName"
        assert via_snmpd.ok("snmpwalk", V2C, names, opts=index_walk) == agent.ok(
            "snmpwalk", V2C, names, opts=index_walk
        )
        scalars = [
            f"{MIB}::wdServicesUp.0",
            f"{MIB}::wdServicesDown.0",
            f"{MIB}::wdWatchdogVersion.0",
        ]
        assert via_snmpd.ok("snmpget", V2C, *scalars) == agent.ok("snmpget", V2C, *scalars)
        uptime = via_snmpd.ok("snmpget", V2C, f"{MIB}::wdWatchdogUptime.0", opts=("-Oqvt",))
        assert int(uptime) > 0
        refused = via_snmpd.run("snmpset", V2C, f"{MIB}::wdServicesUp.0", "u", "1")
        assert refused.returncode != 0
        assert "notWritable" in refused.stderr or "noAccess" in refused.stderr, refused.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert d.stop() == 0


def dotted(oid: tuple[int, ...]) -> str:
    return "." + ".".join(map(str, oid))


def test_the_conversation(tmp_path: Path, daemons: list[Daemon], listener: socket.socket) -> None:
    """PING, get, getnext, set; a DateAndTime travels as octets; outside the root: NONE."""
    sys.path.insert(0, str(HELPER.parent))
    try:
        import watchdog_pass_persist as helper_module  # noqa: PLC0415
    finally:
        sys.path.remove(str(HELPER.parent))
    cfg = tmp_path / "watchdog.yaml"
    write_config(
        cfg, tmp_path / "state", {"web": listener.getsockname()[1]}, v2c_agent(free_udp_port())
    )
    state_dir = tmp_path / "state"
    services, found_dir, root = helper_module.read_config(cfg)
    assert found_dir == state_dir
    helper = helper_module.Helper(services, state_dir, root)

    def talk(*lines: str) -> list[str]:
        out = io.StringIO()
        helper_module.serve(helper, io.StringIO("".join(f"{x}\n" for x in lines)), out)
        return out.getvalue().splitlines()

    # no database yet: nothing to serve
    assert talk("PING", "get", f".{'.'.join(map(str, OIDS.services_up))}.0") == ["PONG", "NONE"]

    d = Daemon(cfg)
    daemons.append(d)
    d.wait_for("agent listening")
    name_0 = dotted(OIDS.service_name)
    last_check = f"{dotted(OIDS.service_last_check)}.1"

    def checked() -> bool:
        helper._checked = 0.0  # read the database again now
        return len(talk("get", last_check)[-1].split()) == 11  # DateAndTime: 11 octets

    wait_until(checked)  # the daemon writes its states once a second
    assert talk("getnext", name_0) == [f"{name_0}.1", "string", "web"]
    assert talk("get", last_check)[:2] == [last_check, "octet"]
    assert talk("set", f"{name_0}.1", "string x") == ["not-writable"]
    assert talk("getnext", f"{dotted(OIDS.service_last_check)}.1") == ["NONE"]
    assert talk("get", ".1.3.6.1.2.1.1.3.0") == ["NONE"]
    assert talk("") == []
    assert d.stop() == 0
