"""The ``watchdog`` command as a user runs it: exit codes and what it prints."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import SmtpServer, free_tcp_port


def watchdog(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "snmp_watchdog", "-c", str(cfg), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config_lists_every_mistake_with_its_line_and_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "defaults:\n"
        "  intreval: 5s\n"
        "  fall: 0\n"
        "services:\n"
        "  - name: a\n"
        "    host: h\n"
        "    port: 70000\n"
        "  - name: a\n"
        "    host: h\n"
        "    check: smtp\n"
        "    receivers: [nowhere]\n"
    )
    proc = watchdog(cfg, "check-config")
    assert proc.returncode == 2
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{cfg}:2: defaults.intreval: unknown key (did you mean 'interval'?)"
    assert lines[1].startswith(f"{cfg}:3: defaults.fall: ")
    assert lines[2].startswith(f"{cfg}:7: services[0].port: ")
    assert any(ln.startswith(f"{cfg}:8: services[1].name: ") for ln in lines)
    assert any(ln.startswith(f"{cfg}:11: services[1].receivers") for ln in lines)
    assert lines[-1] == f"{len(lines) - 1} problems in {cfg}"


def test_check_config_prints_every_problem_of_every_receiver_and_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A shape problem in a receiver or service hides none of its other mistakes."""
    monkeypatch.delenv("WATCHDOG_TEST_UNSET", raising=False)
    cfg = Path(__file__).parent / "config" / "invalid" / "every_problem.yaml"
    expected = [
        line.replace("FILE:", f"{cfg}:", 1).replace("DIR/", f"{cfg.parent}/")
        for line in cfg.with_suffix(".errors").read_text().splitlines()
    ]
    proc = watchdog(cfg, "check-config")
    assert proc.returncode == 2
    assert proc.stdout.splitlines() == [*expected, f"{len(expected)} problems in {cfg}"]


def test_check_config_accepts_the_bundled_examples_shape(tmp_path: Path) -> None:
    cfg = tmp_path / "ok.yaml"
    cfg.write_text("services:\n  - {name: mail, host: 127.0.0.1, check: smtp}\n")
    proc = watchdog(cfg, "check-config")
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.strip() == f"{cfg}: OK (1 services, 0 receivers)"


def test_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    proc = watchdog(tmp_path / "nope.yaml", "check-config")
    assert proc.returncode == 2
    assert "nope.yaml" in proc.stdout + proc.stderr


@pytest.fixture
def mail() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()


def test_probe_shows_the_conversation_and_the_verdict(tmp_path: Path, mail: SmtpServer) -> None:
    cfg = tmp_path / "w.yaml"
    closed = free_tcp_port()
    cfg.write_text(
        "services:\n"
        f"  - {{name: mail, host: 127.0.0.1, port: {mail.port}, check: smtp,"
        " helo: probe.example}\n"
        f"  - {{name: gone, host: 127.0.0.1, port: {closed}, check: smtp}}\n"
    )
    proc = watchdog(cfg, "probe", "mail", "-v")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "<- 220 " in out
    assert "-> EHLO probe.example" in out
    assert "<- 250" in out
    assert "-> QUIT" in out
    assert out.splitlines()[-1].startswith("up: ok")
    assert " ms " in out  # timings on every exchange

    proc = watchdog(cfg, "probe", "gone")
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[-1].startswith("down: refused")

    proc = watchdog(cfg, "probe", "nosuch")
    assert proc.returncode == 2
    assert "no service named 'nosuch'" in proc.stderr


def test_record_saves_the_good_answer_that_later_checks_compare_with(
    tmp_path: Path, mail: SmtpServer
) -> None:
    (tmp_path / "input.txt").write_text("HELO record.example\nQUIT\n")
    good = tmp_path / "mail_good"
    cfg = tmp_path / "w.yaml"
    cfg.write_text(
        "services:\n"
        "  - name: legacy\n"
        "    host: 127.0.0.1\n"
        f"    port: {mail.port}\n"
        "    check: tcp\n"
        "    send_file: input.txt\n"
        "    expect_file: mail_good\n"
        "    timeout: 3s\n"
    )
    # Before recording, the configuration names a file that does not exist yet.
    proc = watchdog(cfg, "check-config")
    assert proc.returncode == 2
    assert "watchdog record legacy" in proc.stdout

    proc = watchdog(cfg, "record", "legacy")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    answer = good.read_bytes()
    assert answer.startswith(b"220 ")
    assert b"\r\n250 " in answer
    assert b"\r\n221 " in answer
    assert proc.stdout.strip() == f"legacy: recorded {len(answer)} bytes into {good}"

    proc = watchdog(cfg, "probe", "legacy")
    assert proc.returncode == 0, proc.stdout

    good.write_bytes(answer.replace(b"250 ", b"250 changed ", 1))
    proc = watchdog(cfg, "probe", "legacy")
    assert proc.returncode == 1
    assert "down: unexpected_response" in proc.stdout


def test_mib_prints_the_bundled_module_or_moves_it(tmp_path: Path) -> None:
    cfg = tmp_path / "unused.yaml"
    proc = watchdog(cfg, "mib")
    assert proc.returncode == 0
    bundled = (Path(__file__).parent.parent / "mibs" / "SNMP-WATCHDOG-MIB.txt").read_text()
    assert proc.stdout == bundled
    moved = watchdog(cfg, "mib", "--root", "1.3.6.1.4.1.99999")
    assert moved.returncode == 0
    assert moved.stdout != bundled
    assert "99999" in moved.stdout
    bad = watchdog(cfg, "mib", "--root", "1.2.3")
    assert bad.returncode == 2
    assert "--root 1.2.3" in bad.stderr
