"""``contrib/systemd/snmp-watchdog.service``: valid, hardened, and enough for the daemon.

``systemd-analyze verify`` checks the unit as systemd would load it, including
that the commands exist: a temporary copy names the ``watchdog`` of this
installation instead of ``/usr/local/bin/watchdog``. ``systemd-analyze
security --offline`` rates its hardening.

No systemd runs here, so the unit's sandbox is rebuilt from its parts as far
as they can be: the daemon runs in a private mount namespace where the whole
file system is read-only but for its state and status directories
(``ProtectSystem=strict``), with no capabilities at all and no way to gain any
(``CapabilityBoundingSet=``, ``NoNewPrivileges=yes``), without writable and
executable memory (``MemoryDenyWriteExecute=yes``, as the kernel's
``PR_SET_MDWE``), with the unit's ``UMask=`` and without a writable ``/tmp``
(the unit's is private and holds nothing of the daemon's), and must work end
to end.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import Daemon, free_tcp_port, wait_for_file
from tests.snmptrapd import Snmptrapd

UNIT = Path(__file__).resolve().parent.parent / "contrib" / "systemd" / "snmp-watchdog.service"
INSTALLED = "/usr/local/bin/watchdog"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"


def unit_settings() -> dict[str, list[str]]:
    """Every ``Key=value`` of the unit (comments and section headers left out)."""
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line.startswith(("#", "[")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        settings.setdefault(key, []).append(value)
    return settings


def installed_copy(tmp_path: Path) -> Path:
    watchdog = Path(sys.executable).parent / "watchdog"
    assert os.access(watchdog, os.X_OK), watchdog
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(INSTALLED, str(watchdog)))
    return copy


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    commands = [v for k, v in unit_settings().items() if k.startswith("Exec")]
    assert any(INSTALLED in c for values in commands for c in values)
    proc = analyze("verify", str(installed_copy(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout + proc.stderr == ""  # unknown keys are only warnings: none allowed


def test_verify_would_catch_a_mistake(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key and a missing command are reported."""
    copy = installed_copy(tmp_path)
    copy.write_text(copy.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    assert "Unknown key" in analyze("verify", str(copy)).stderr
    copy.write_text(UNIT.read_text())  # /usr/local/bin/watchdog is not installed here
    if not Path(INSTALLED).exists():
        assert analyze("verify", str(copy)).returncode != 0


def test_its_documentation_is_the_readme_where_the_readme_installs_it() -> None:
    (doc,) = unit_settings()["Documentation"]
    path = doc.removeprefix("file:")
    assert doc.startswith("file:/"), doc
    readme = (UNIT.parents[2] / "README.md").read_text()
    assert f"install -Dm644 README.md {path}" in readme


def test_the_unit_is_a_hardened_notify_service() -> None:
    s = unit_settings()
    expected = {
        "Type": ["notify"],
        "NotifyAccess": ["main"],
        "DynamicUser": ["yes"],
        "ProtectSystem": ["strict"],
        "StateDirectory": ["snmp-watchdog"],
        "CapabilityBoundingSet": [""],
        "AmbientCapabilities": [""],
        "NoNewPrivileges": ["yes"],
        "MemoryDenyWriteExecute": ["yes"],
        "ExecReload": ["/bin/kill -HUP $MAINPID"],
    }
    for key, value in expected.items():
        assert s.get(key) == value, key
    assert re.fullmatch(r"\d+s", s["WatchdogSec"][0])
    assert s["Restart"] == ["on-failure"]


def test_its_exposure_level_stays_low(tmp_path: Path) -> None:
    # --threshold is in tenths: fail above 2.0 ("OK" in systemd's words).
    proc = analyze("security", "--offline=yes", "--threshold=20", str(installed_copy(tmp_path)))
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert re.search(r"Overall exposure level for \S+: [01]\.\d OK", proc.stdout)


# --- the sandbox, rebuilt -----------------------------------------------------------


# Inside the new mount namespace: the writable directories stay writable (their
# own bind mounts), then / becomes read-only; then every capability goes.
_SANDBOX = """
mount --bind "$1" "$1" && mount --bind "$2" "$2" && mount -o remount,bind,ro / || exit 97
touch /sandbox-test 2>/dev/null && exit 98
exec setpriv --inh-caps=-all --bounding-set=-all --no-new-privs \
    env -u TMPDIR "$3" -c "$4" "$5"
"""
# The last step, in Python: no W+X memory from here on (kept across exec), the unit's umask.
_PRELUDE = """
import ctypes, os, sys
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
assert ctypes.CDLL(None, use_errno=True).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) == 0
os.umask(0o027)
os.execv(sys.executable, [sys.executable, "-m", "snmp_watchdog", "-c", sys.argv[1], "run"])
"""


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


@pytest.mark.slow
@pytest.mark.snmp
@pytest.mark.skipif(os.geteuid() != 0, reason="making a mount namespace needs root")
def test_the_daemon_works_inside_the_units_sandbox(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd]
) -> None:
    trapd = snmptrapd()
    state, status = tmp_path / "state", tmp_path / "status"
    state.mkdir(mode=0o700)
    status.mkdir()
    cfg = tmp_path / "watchdog.yaml"
    cfg.write_text(
        f"""
watchdog: {{state_dir: {state}, status_dir: {status}}}
defaults: {{interval: 0.2s, retry_interval: 0.1s, timeout: 0.5s, fall: 2, rise: 2, jitter: 0}}
receivers:
  - {{name: nms, host: 127.0.0.1, port: {trapd.port}, version: 2c, community: public}}
services:
  - {{name: mail, host: 127.0.0.1, port: {free_tcp_port()}, check: smtp}}
"""
    )
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _SANDBOX, "sandbox"]
    d = Daemon(None, argv=[*argv, str(state), str(status), sys.executable, _PRELUDE, str(cfg)])
    try:
        d.wait_for(r"mail .* is DOWN \(was unknown\)")
        d.wait_for(r"down #1 \(mail\) sent to nms")
        wait_for_file(status / "mail", "1\n")
        proc = _status(d.proc.pid)
        assert proc["CapEff"] == proc["CapPrm"] == proc["CapBnd"] == "0000000000000000"
        assert proc["NoNewPrivs"] == "1"
        mounts = Path(f"/proc/{d.proc.pid}/mountinfo").read_text().splitlines()
        options = {m.split()[4]: m.split()[5].split(",") for m in mounts}
        assert "ro" in options["/"], options
        assert "rw" in options[str(state)], options
        d.signal(signal.SIGTERM)
        assert d.proc.wait(10) == 0
        d.wait_for(r"stopped after \d+ checks")
    finally:
        d.kill()
    assert len(trapd.wait_for(1)) == 1
    assert not any("Traceback" in line for line in d.lines), d.lines
    modes = {p.name: p.stat().st_mode & 0o777 for p in state.iterdir()}
    assert modes["state.db"] & 0o007 == 0, modes  # the unit's UMask=0027
    assert modes["engine-id"] == 0o600, modes
    assert not (state / "__pysnmp").exists()
