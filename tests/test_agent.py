"""The read-only agent of a running ``watchdog run``, polled with Net-SNMP's own tools.

Rules tested (SPEC section 8): snmpget, snmpwalk, snmpbulkwalk and snmptable
(decoded with the bundled MIB) see every service with its confirmed state,
over SNMPv2c and SNMPv3 authPriv; wrong credentials get nothing (v2c) or a
report (v3); SET is refused; a change of state shows in the next walk; a
service keeps its row index across a reload and a restart, a removed one
loses its row and a new one gets a new index; an address that cannot be
bound stops the start with a message naming the file and ``agent.listen``;
IPv6 works.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from snmp_watchdog.notify.mib import Oids
from tests.helpers import Daemon, free_tcp_port, free_udp_port

pytestmark = [pytest.mark.slow, pytest.mark.snmp]

REPO = Path(__file__).resolve().parents[1]
OIDS = Oids()
MIB = "SNMP-WATCHDOG-MIB"
V3 = [
    "-v3", "-l", "authPriv", "-u", "poller",
    "-a", "SHA-256", "-A", "poller-auth-key", "-x", "AES", "-X", "poller-priv-key",
]  # fmt: skip
V2C = ["-v2c", "-c", "agent-read"]
AGENT_USERS = """\
  users:
    - user: poller
      auth: {protocol: SHA256, key: poller-auth-key}
      priv: {protocol: AES128, key: poller-priv-key}
"""


def v2c_agent(port: int, community: str = "agent-read") -> str:
    return f"  listen: 127.0.0.1:{port}\n  community: {community}\n"


class NetSnmp:
    """Net-SNMP's command-line tools against one agent, untouched by any snmp.conf."""

    def __init__(self, home: Path, target: str) -> None:
        ietf = Path(os.environ.get("WATCHDOG_IETF_MIBS") or REPO / ".cache" / "ietf-mibs")
        assert (ietf / "SNMPv2-MIB.mib").exists(), f"run scripts/ietf-mibs.sh {ietf}"
        home.mkdir(exist_ok=True)
        (home / "cert_indexes").mkdir(exist_ok=True)
        self.target = target
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "SNMPCONFPATH": str(home),
            "SNMP_PERSISTENT_DIR": str(home),
            "LC_ALL": "C",
        }
        self.mibs = ["-M", f"{REPO / 'mibs'}:{ietf}", "-m", f"SNMPv2-MIB:{MIB}"]

    def run(
        self, tool: str, auth: list[str], *oids: str, opts: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [tool, *auth, "-t", "1", "-r", "1", *self.mibs, *opts, self.target, *oids],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
            check=False,
        )

    def ok(self, tool: str, auth: list[str], *oids: str, opts: tuple[str, ...] = ()) -> str:
        done = self.run(tool, auth, *oids, opts=opts)
        assert done.returncode == 0, done.stderr
        assert not done.stderr, done.stderr
        return done.stdout

    def table(self, auth: list[str]) -> dict[str, dict[str, str]]:
        """snmptable's rows by service name: column name -> value."""
        text = self.ok("snmptable", auth, f"{MIB}::wdServiceTable", opts=("-Cb", "-Cf", "|", "-CB"))
        lines = [line for line in text.splitlines() if "|" in line]
        header = lines[0].split("|")
        return {
            row.split("|")[0]: dict(zip(header, row.split("|"), strict=True)) for row in lines[1:]
        }


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP port that accepts connections (the kernel completes the handshake)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock
    sock.close()


def write_config(
    path: Path, state_dir: Path, services: dict[str, int], agent: str, *, extra: str = ""
) -> None:
    lines = [
        f"watchdog:\n  state_dir: {state_dir}\n{extra}",
        "defaults:\n  interval: 0.2s\n  retry_interval: 0.1s\n  timeout: 0.5s\n"
        "  fall: 1\n  rise: 1\n  jitter: 0\n  flap_changes: 0\n",
        "services:\n",
        *(
            f"  - {{name: {name}, host: 127.0.0.1, port: {port}, check: tcp}}\n"
            for name, port in services.items()
        ),
        f"agent:\n{agent}",
    ]
    path.write_text("".join(lines))


def wait_until(test: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not test():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def states(snmp: NetSnmp, auth: list[str]) -> dict[str, str]:
    return {name: row["State"] for name, row in snmp.table(auth).items()}


def test_snmptable_prints_every_service_with_its_state_over_v2c_and_v3(
    tmp_path: Path, daemons: list[Daemon], listener: socket.socket
) -> None:
    port = free_udp_port()
    cfg = tmp_path / "watchdog.yaml"
    up_port, closed = listener.getsockname()[1], free_tcp_port()
    services = {"web": up_port, "mail": closed, "shop": up_port}
    agent = f"  listen: 127.0.0.1:{port}\n  community: agent-read\n{AGENT_USERS}"
    write_config(cfg, tmp_path / "state", services, agent)
    d = Daemon(cfg)
    daemons.append(d)
    d.wait_for(rf"agent listening on UDP 127\.0\.0\.1:{port}")
    snmp = NetSnmp(tmp_path / "home", f"udp:127.0.0.1:{port}")
    wanted = {"web": "up", "mail": "down", "shop": "up"}
    wait_until(lambda: states(snmp, V2C) == wanted)

    for auth in (V2C, V3):
        rows = snmp.table(auth)
        assert {name: row["State"] for name, row in rows.items()} == wanted
        assert rows["mail"]["ReasonCode"] == "refused"
        assert rows["mail"]["Port"] == str(closed)
        assert rows["web"]["CheckKind"] == "tcp"
        assert rows["web"]["ReasonCode"] == "ok"
        assert int(rows["web"]["Checks"].split()[0]) >= 1

    scalars = snmp.ok(
        "snmpget", V3,
        f"{MIB}::wdServicesUp.0", f"{MIB}::wdServicesDown.0", f"{MIB}::wdServicesUnknown.0",
        f"{MIB}::wdWatchdogVersion.0", "SNMPv2-MIB::sysObjectID.0",
        opts=("-Oqv",),
    ).split("\n")  # fmt: skip
    assert scalars[:3] == ["2 services", "1 services", "0 services"]
    assert scalars[4] == f"{MIB}::snmpWatchdogMIB"

    walked = snmp.ok("snmpwalk", V2C, f"{MIB}::snmpWatchdogMIB", opts=("-On",))
    bulk = snmp.ok("snmpbulkwalk", V3, f"{MIB}::snmpWatchdogMIB", opts=("-On", "-Cr7"))

    def names(text: str) -> list[str]:
        """The OIDs a walk printed (the end of the agent's view is printed as a line too)."""
        return [line.split(" = ")[0] for line in text.splitlines() if "No more" not in line]

    assert names(walked) == names(bulk)
    assert len(names(walked)) == 6 + 3 * 14  # the scalars, then 3 rows of 14 columns
    name_column = ".".join(map(str, OIDS.service_name))
    indexes = [n.rsplit(".", 1)[1] for n in names(walked) if n.startswith(f".{name_column}.")]
    assert len(set(indexes)) == 3
    assert d.stop() == 0


def test_wrong_credentials_get_nothing_and_set_is_refused(
    tmp_path: Path, daemons: list[Daemon], listener: socket.socket
) -> None:
    port = free_udp_port()
    cfg = tmp_path / "watchdog.yaml"
    agent = f"  listen: 127.0.0.1:{port}\n  community: agent-read\n{AGENT_USERS}"
    write_config(cfg, tmp_path / "state", {"web": listener.getsockname()[1]}, agent)
    d = Daemon(cfg)
    daemons.append(d)
    d.wait_for("agent listening")
    snmp = NetSnmp(tmp_path / "home", f"udp:127.0.0.1:{port}")
    oid = f"{MIB}::wdServicesUp.0"

    wrong = snmp.run("snmpget", ["-v2c", "-c", "public"], oid)
    assert wrong.returncode != 0
    assert "Timeout" in wrong.stderr
    wrong_key = [*V3[:-1], "not-the-priv-key"]
    assert "Decryption error" in snmp.run("snmpget", wrong_key, oid).stderr
    wrong_auth = [*V3[:8], "not-the-auth-key", *V3[9:]]
    assert "Authentication failure" in snmp.run("snmpget", wrong_auth, oid).stderr
    unknown = ["-v3", "-l", "noAuthNoPriv", "-u", "nobody"]
    assert "Unknown user name" in snmp.run("snmpget", unknown, oid).stderr
    lower = ["-v3", "-l", "noAuthNoPriv", "-u", "poller"]
    refused = snmp.run("snmpget", lower, oid)
    assert refused.returncode != 0
    assert "2 services" not in refused.stdout

    for auth in (V2C, V3):
        done = snmp.run("snmpset", auth, oid, "u", "5")
        assert "notWritable" in done.stderr, done.stderr
        done = snmp.run("snmpset", auth, "SNMPv2-MIB::sysContact.0", "s", "me")
        assert "noAccess" in done.stderr, done.stderr
    assert snmp.ok("snmpget", V2C, f"{MIB}::wdServicesUnknown.0", opts=("-Oqv",)).strip() in (
        "0 services",
        "1 services",
    )
    assert d.stop() == 0


def test_a_change_of_state_shows_in_the_next_walk(tmp_path: Path, daemons: list[Daemon]) -> None:
    port = free_udp_port()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    tcp_port = server.getsockname()[1]
    cfg = tmp_path / "watchdog.yaml"
    write_config(
        cfg,
        tmp_path / "state",
        {"app": tcp_port},
        f"  listen: 127.0.0.1:{port}\n  community: agent-read\n",
    )
    d = Daemon(cfg)
    daemons.append(d)
    snmp = NetSnmp(tmp_path / "home", f"udp:127.0.0.1:{port}")
    d.wait_for("agent listening")
    wait_until(lambda: states(snmp, V2C) == {"app": "up"})
    first = snmp.table(V2C)["app"]
    server.close()
    wait_until(lambda: states(snmp, V2C) == {"app": "down"})
    second = snmp.table(V2C)["app"]
    assert second["PreviousState"] == "up"
    assert second["ReasonCode"] == "refused"
    assert second["LastChange"] != first["LastChange"]
    assert int(second["Failures"].split()[0]) >= 1
    assert d.stop() == 0


def row_indexes(snmp: NetSnmp) -> dict[str, int]:
    """Service name -> its row index, from a walk of wdServiceName."""
    text = snmp.ok("snmpwalk", V2C, f"{MIB}::wdServiceName", opts=("-On", "-Oq"))
    out = {}
    for line in text.splitlines():
        oid, name = line.split(" ", 1)
        out[name.strip('"')] = int(oid.rsplit(".", 1)[1])
    return out


def test_rows_keep_their_index_across_reload_and_restart(
    tmp_path: Path, daemons: list[Daemon], listener: socket.socket
) -> None:
    port = free_udp_port()
    up = listener.getsockname()[1]
    cfg = tmp_path / "watchdog.yaml"
    agent = v2c_agent(port)
    write_config(cfg, tmp_path / "state", {"a": up, "b": up, "c": up}, agent)
    d = Daemon(cfg)
    daemons.append(d)
    d.wait_for("agent listening")
    snmp = NetSnmp(tmp_path / "home", f"udp:127.0.0.1:{port}")
    before = row_indexes(snmp)
    assert sorted(before) == ["a", "b", "c"]

    write_config(cfg, tmp_path / "state", {"a": up, "c": up, "d": up}, agent)
    mark = len(d.lines)
    d.signal(signal.SIGHUP)
    d.wait_for(r"configuration reloaded", start=mark)
    after = row_indexes(snmp)
    assert after["a"] == before["a"]
    assert after["c"] == before["c"]
    assert "b" not in after
    assert after["d"] > max(before.values())  # never reused
    wait_until(lambda: states(snmp, V2C) == dict.fromkeys("acd", "up"))
    assert d.stop() == 0

    again = Daemon(cfg)
    daemons.append(again)
    again.wait_for("agent listening")
    assert row_indexes(snmp) == after
    assert again.stop() == 0


def test_reload_moves_adds_and_removes_the_agent(
    tmp_path: Path, daemons: list[Daemon], listener: socket.socket
) -> None:
    first, second = free_udp_port(), free_udp_port()
    cfg = tmp_path / "watchdog.yaml"
    svc = {"web": listener.getsockname()[1]}
    write_config(
        cfg, tmp_path / "state", svc, f"  listen: 127.0.0.1:{first}\n  community: agent-read\n"
    )
    d = Daemon(cfg)
    daemons.append(d)
    d.wait_for("agent listening")
    old = NetSnmp(tmp_path / "home", f"udp:127.0.0.1:{first}")
    new = NetSnmp(tmp_path / "home", f"udp:127.0.0.1:{second}")
    assert "web" in row_indexes(old)

    write_config(
        cfg, tmp_path / "state", svc, f"  listen: 127.0.0.1:{second}\n  community: agent-read\n"
    )
    mark = len(d.lines)
    d.signal(signal.SIGHUP)
    d.wait_for(rf"agent listening on UDP 127\.0\.0\.1:{second}", start=mark)
    assert "web" in row_indexes(new)
    assert "Timeout" in old.run("snmpget", V2C, f"{MIB}::wdServicesUp.0").stderr

    cfg.write_text(cfg.read_text().split("agent:")[0])
    mark = len(d.lines)
    d.signal(signal.SIGHUP)
    d.wait_for("agent stopped", start=mark)
    assert "Timeout" in new.run("snmpget", V2C, f"{MIB}::wdServicesUp.0").stderr
    assert d.stop() == 0


def test_an_address_that_cannot_be_bound_stops_the_start(tmp_path: Path) -> None:
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    port = busy.getsockname()[1]
    cfg = tmp_path / "watchdog.yaml"
    write_config(
        cfg, tmp_path / "state", {"web": 9}, f"  listen: 127.0.0.1:{port}\n  community: x\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-m", "snmp_watchdog", "-c", str(cfg), "run"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        busy.close()
    assert done.returncode == 1
    assert re.search(
        rf"{re.escape(str(cfg))}: agent\.listen: cannot listen on UDP 127\.0\.0\.1:{port}: "
        r"Address already in use",
        done.stderr,
    ), done.stderr


def test_ipv6(tmp_path: Path, daemons: list[Daemon], listener: socket.socket) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "watchdog.yaml"
    agent = f'  listen: "[::1]:{port}"\n  community: agent-read\n{AGENT_USERS}'
    write_config(cfg, tmp_path / "state", {"web": listener.getsockname()[1]}, agent)
    d = Daemon(cfg)
    daemons.append(d)
    d.wait_for(rf"agent listening on UDP \[::1\]:{port}")
    snmp = NetSnmp(tmp_path / "home", f"udp6:[::1]:{port}")
    assert "web" in row_indexes(snmp)
    assert "web" in snmp.table(V3)
    assert d.stop() == 0
