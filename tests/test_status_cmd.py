"""``watchdog status [--json]`` beside a running daemon, and the status directory.

``status`` reads the state database the daemon is writing. Its SNMPv3 part is
proved by use: the ``createUser -e ...`` line it prints for a trap receiver,
with the placeholders replaced by the keys, is the whole configuration a
fresh Net-SNMP snmptrapd needs to accept the daemon's SNMPv3 traps.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Daemon, SmtpServer, free_tcp_port, free_udp_port, wait_for_file
from tests.snmptrapd import Snmptrapd

AUTH_KEY = "status-auth-key-1"
PRIV_KEY = "status-priv-key-2"
DEFAULTS = """
defaults:
  interval: 0.2s
  retry_interval: 0.1s
  timeout: 0.5s
  fall: 2
  rise: 2
  jitter: 0
  flap_changes: 0
"""


def status(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "snmp_watchdog", "-c", str(cfg), "status", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def status_json(cfg: Path) -> dict[str, Any]:
    proc = status(cfg, "--json")
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in items}


def test_status_before_the_first_start_shows_every_service_unknown(tmp_path: Path) -> None:
    cfg = tmp_path / "watchdog.yaml"
    cfg.write_text(
        f"watchdog: {{state_dir: {tmp_path}/state}}\nservices:\n"
        "  - {name: mail, host: 127.0.0.1, port: 25, check: smtp}\n"
    )
    data = status_json(cfg)
    assert data["engine_id"] is None
    assert [(s["name"], s["state"], s["checks"]) for s in data["services"]] == [
        ("mail", "unknown", 0)
    ]
    plain = status(cfg)
    assert plain.returncode == 0
    assert "SNMP engine ID: not generated yet" in plain.stdout
    assert not (tmp_path / "state").exists()  # status creates nothing


@pytest.mark.slow
@pytest.mark.snmp
def test_status_beside_a_running_daemon_and_its_create_user_line_works(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd], smtp: SmtpServer, daemons: list[Daemon]
) -> None:
    trapd = snmptrapd(port=free_udp_port(), communities=[], start=False)
    nobody = free_udp_port()
    smtp.start()
    cfg = tmp_path / "watchdog.yaml"
    keys = (
        f"auth: {{protocol: SHA256, key: {AUTH_KEY}}}, priv: {{protocol: AES128, key: {PRIV_KEY}}}"
    )
    cfg.write_text(
        f"""
watchdog:
  state_dir: {tmp_path}/state
{DEFAULTS}
receivers:
  - {{name: noc, host: 127.0.0.1, port: {trapd.port}, version: 3, user: trapper, {keys}}}
  - {{name: nms, host: 127.0.0.1, port: {nobody}, version: 3, user: informer, {keys},
      mode: inform, timeout: 0.5s}}
services:
  - {{name: mail, host: 127.0.0.1, port: {smtp.port}, check: smtp, receivers: [noc]}}
  - {{name: dead, host: 127.0.0.1, port: {free_tcp_port()}, check: tcp, receivers: [nms]}}
"""
    )
    d = Daemon(cfg)
    daemons.append(d)
    engine_line = d.lines[d.wait_for(r"SNMP engine ID 0x[0-9a-f]+ \(boots 1\)")]
    engine_id = engine_line.split("SNMP engine ID ")[1].split()[0]
    d.wait_for(r"down #1 \(dead\) to nms not acknowledged \(attempt 1\)")

    deadline = time.monotonic() + 5
    while True:  # up from unknown is saved within a second
        data = status_json(cfg)
        services = by_name(data["services"])
        if services["mail"]["state"] == "up" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert data["engine_id"] == engine_id
    mail, dead = services["mail"], services["dead"]
    assert (mail["state"], mail["reason"], mail["notified"]) == ("up", "ok", "up")
    assert mail["checks"] >= 2
    assert mail["failed_checks"] == 0
    assert mail["since"] is not None
    assert mail["last_check"] >= mail["since"]
    assert mail["response_ms"] > 0
    assert (dead["state"], dead["reason"], dead["detail"]) == (
        "down",
        "refused",
        "connection refused",
    )
    assert dead["checks"] == dead["failed_checks"] >= 2
    receivers = by_name(data["receivers"])
    assert receivers["nms"]["pending"] == 1  # the Down nobody acknowledged
    assert receivers["noc"]["pending"] == 0
    create_user = f"createUser -e {engine_id} trapper SHA-256 AUTH_KEY AES PRIV_KEY"
    assert receivers["noc"]["create_user"] == create_user
    # For informs the receiver is the authoritative engine: no -e.
    assert receivers["nms"]["create_user"] == "createUser informer SHA-256 AUTH_KEY AES PRIV_KEY"

    plain = status(cfg)
    assert plain.returncode == 0
    assert f"SNMP engine ID: {engine_id}" in plain.stdout
    assert f"snmptrapd.conf: {create_user}" in plain.stdout
    assert "dead: refused: connection refused" in plain.stdout
    assert "receiver nms (127.0.0.1:" in plain.stdout
    assert "1 notification(s) not yet delivered" in plain.stdout
    for text in (plain.stdout, json.dumps(data), plain.stderr):
        assert AUTH_KEY not in text
        assert PRIV_KEY not in text

    # The printed line, keys filled in, is all a new receiver needs for our v3 traps.
    line = create_user.replace("AUTH_KEY", AUTH_KEY).replace("PRIV_KEY", PRIV_KEY)
    trapd.extra_config = [line, "authUser log,execute,net trapper priv"]
    trapd.start()
    smtp.stop()
    d.wait_for(r"down #2 \(mail\) sent to noc")
    (received,) = trapd.wait_for(1)
    assert (received.version, received.pdu, received.security_name) == ("3", "TRAP2", "trapper")
    assert d.stop() == 0


@pytest.mark.slow
def test_status_files_are_replaced_whole_while_a_reader_watches(
    tmp_path: Path, smtp: SmtpServer, daemons: list[Daemon], request: pytest.FixtureRequest
) -> None:
    """A reader polling the file as the service flips never sees it empty, partial or gone."""
    status_dir = tmp_path / "status"
    silent = socket.socket()  # accepts, never speaks: that service stays unknown
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    request.addfinalizer(silent.close)
    cfg = tmp_path / "watchdog.yaml"
    cfg.write_text(
        f"""
watchdog: {{state_dir: {tmp_path}/state, status_dir: {status_dir}}}
defaults: {{interval: 0.05s, retry_interval: 0.05s, timeout: 0.5s, fall: 1, rise: 1, jitter: 0,
           flap_changes: 0}}
services:
  - {{name: mail, host: 127.0.0.1, port: {smtp.port}, check: smtp}}
  - {{name: silent, host: 127.0.0.1, port: {silent.getsockname()[1]}, check: smtp,
      timeout: 60s}}
"""
    )
    smtp.start()
    d = Daemon(cfg)
    daemons.append(d)
    path = status_dir / "mail"
    wait_for_file(path, "0\n")
    seen: dict[str, int] = {}
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            content = path.read_text()  # FileNotFoundError would fail the test below
            seen[content] = seen.get(content, 0) + 1

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(4):
            smtp.stop()
            wait_for_file(path, "1\n")  # Reason.REFUSED
            smtp.start()
            wait_for_file(path, "0\n")
    finally:
        stop.set()
        reader.join(5)
    assert not reader.is_alive()
    # Up, refused, and closed: a check that was talking to the server when it stopped.
    assert {"0\n", "1\n"} <= set(seen) <= {"0\n", "1\n", "6\n"}, seen
    assert sum(seen.values()) > 100, seen
    assert sorted(os.listdir(status_dir)) == ["mail"]  # no temporary file left, none for unknown
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert d.stop() == 0
