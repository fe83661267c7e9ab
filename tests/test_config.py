"""The configuration loader: valid files resolve to the model, invalid ones list every problem.

Each ``tests/config/invalid/NAME.yaml`` is paired with ``NAME.errors``: the
exact lines the loader reports, with the fixture's path written ``FILE`` and
its directory ``DIR``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from snmp_watchdog.config import (
    DEFAULT_CONFIG_PATH,
    default_config_path,
    format_problems,
    load_config,
    schema,
)
from snmp_watchdog.config.services import OPTIONS
from snmp_watchdog.exceptions import ConfigError, Problem
from snmp_watchdog.model import (
    MAX_READ,
    Agent,
    CheckKind,
    Config,
    Receiver,
    Secret,
    Service,
    Step,
)
from snmp_watchdog.snmp import Mode, Version

FIXTURES = Path(__file__).parent / "config"
VALID = sorted((FIXTURES / "valid").glob("*.yaml"))
INVALID = sorted((FIXTURES / "invalid").glob("*.yaml"))


def problems_of(path: Path, **options: bool) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, **options)
    return [str(problem) for problem in info.value.problems]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def make_ca(path: Path) -> Path:
    """A self-signed CA certificate in PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


# --- the SPEC example --------------------------------------------------------


@pytest.fixture
def spec_example(tmp_path: Path) -> Path:
    """The example of SPEC section 4 with real files in a temporary directory."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "community").write_text("nnm-community\n")
    (etc / "auth.key").write_text("auth-passphrase\n")
    (etc / "priv.key").write_text("priv-passphrase\r\n")
    (etc / "input.txt").write_bytes(b"HELO mydomain.com\r\nQUIT\r\n")
    (etc / "mail_good").write_bytes(b"220 mail2 ESMTP\r\n250 mail2\r\n221 bye\r\n")
    return write(
        etc / "watchdog.yaml",
        f"""\
watchdog:
  state_dir: {tmp_path}/state
  engine_id: "0x80001f8804aabbccdd"
  max_in_flight: 1000
  status_dir: {tmp_path}/run
  heartbeat: 5m

defaults:
  interval: 60s
  retry_interval: 10s
  timeout: 5s
  fall: 3
  rise: 2
  jitter: 10%
  receivers: [nnm, zabbix]
  flap_changes: 4
  flap_window: 30m
  remind_every: 0

receivers:
  - name: nnm
    host: nnm.example.net
    port: 162
    version: 2c
    community_file: {etc}/community
    mode: trap
    source: 192.0.2.10
  - name: zabbix
    host: zbx.example.net
    version: 3
    user: watchdog
    auth: {{protocol: SHA256, key_file: {etc}/auth.key}}
    priv: {{protocol: AES128, key_file: {etc}/priv.key}}
    mode: inform
    timeout: 2s
    give_up_after: 24h

services:
  - name: mail
    host: mail.example.com
    port: 25
    check: smtp
    helo: mydomain.com
  - name: legacy-mail
    host: mail2.example.com
    port: 25
    check: tcp
    send_file: {etc}/input.txt
    expect_file: {etc}/mail_good
  - name: app
    host: 10.0.0.7
    port: 7000
    check: tcp
    dialogue:
      - expect: "^220"
      - send: "HELO mydomain.com"
      - expect: "^250"
      - send: "QUIT"
""",
    )


def test_spec_example_settings(spec_example: Path, tmp_path: Path) -> None:
    config = load_config(spec_example)
    assert config.path == spec_example
    settings = config.settings
    assert settings.state_dir == tmp_path / "state"
    assert settings.status_dir == tmp_path / "run"
    assert settings.engine_id == bytes.fromhex("80001f8804aabbccdd")
    assert settings.max_in_flight == 1000
    assert settings.heartbeat == 300.0
    assert settings.oid_root == (1, 3, 6, 1, 4, 1, 8072, 9999, 9999)
    assert settings.allow_weak_crypto is False


def test_spec_example_receivers(spec_example: Path) -> None:
    nnm, zabbix = load_config(spec_example).receivers
    assert (nnm.name, nnm.host, nnm.port, nnm.version, nnm.mode) == (
        "nnm",
        "nnm.example.net",
        162,
        "2c",
        "trap",
    )
    assert nnm.community == Secret("nnm-community")  # trailing newline stripped
    assert nnm.source == "192.0.2.10"
    assert (nnm.user, nnm.auth, nnm.priv) == (None, None, None)

    assert (zabbix.version, zabbix.mode, zabbix.user, zabbix.port) == (
        "3",
        "inform",
        "watchdog",
        162,
    )
    assert zabbix.community is None
    assert zabbix.auth is not None
    assert zabbix.priv is not None
    assert zabbix.auth.protocol == "SHA256"
    assert zabbix.auth.key.reveal() == "auth-passphrase"
    assert zabbix.priv.protocol == "AES128"
    assert zabbix.priv.key.reveal() == "priv-passphrase"  # CRLF stripped too
    assert (zabbix.timeout, zabbix.give_up_after) == (2.0, 86400.0)


def test_spec_example_services(spec_example: Path) -> None:
    config = load_config(spec_example)
    mail, legacy, app = config.services
    for service in config.services:
        # defaults: merged into every service
        assert service.interval == 60.0
        assert service.retry_interval == 10.0
        assert service.timeout == 5.0
        assert (service.fall, service.rise) == (3, 2)
        assert service.jitter == pytest.approx(0.10)
        assert service.receivers == ("nnm", "zabbix")
        assert (service.flap_changes, service.flap_window, service.remind_every) == (4, 1800.0, 0)

    assert (mail.check, mail.port, mail.helo, mail.dialogue) == (
        CheckKind.SMTP,
        25,
        "mydomain.com",
        (),
    )

    assert legacy.check is CheckKind.TCP
    assert legacy.send_file == spec_example.parent / "input.txt"
    assert legacy.send_data == b"HELO mydomain.com\r\nQUIT\r\n"
    assert legacy.expect_file == spec_example.parent / "mail_good"
    assert legacy.expect_answer == b"220 mail2 ESMTP\r\n250 mail2\r\n221 bye\r\n"
    assert legacy.dialogue == ()

    assert app.dialogue == (
        Step(expect=re.compile(rb"^220", re.M)),
        Step(send=b"HELO mydomain.com"),
        Step(expect=re.compile(rb"^250", re.M)),
        Step(send=b"QUIT"),
    )
    assert app.dialogue[0].expect is not None
    assert app.dialogue[0].expect.search(b"welcome\r\n220 ready\r\n")  # MULTILINE
    assert config.service("app") is app


def test_secrets_are_hidden_in_repr(spec_example: Path) -> None:
    config = load_config(spec_example)
    text = repr(config) + str(config)
    for secret in ("nnm-community", "auth-passphrase", "priv-passphrase"):
        assert secret not in text
    assert "Secret('***')" in text


def test_loading_twice_gives_equal_configs(spec_example: Path) -> None:
    """Structural equality is how a reload tells which services changed."""
    assert load_config(spec_example) == load_config(spec_example)


# --- merging ---------------------------------------------------------------


def test_service_value_beats_default_beats_built_in(tmp_path: Path) -> None:
    path = write(
        tmp_path / "w.yaml",
        """\
defaults:
  interval: 2m
  fall: 5
  jitter: 0.2
  receivers: [a]
receivers:
  - {name: a, host: 192.0.2.1, community: public}
  - {name: b, host: 192.0.2.2, community: public}
services:
  - name: own
    host: h
    check: ssh
    interval: 1500ms
    fall: 1
    jitter: 0%
    receivers: [b, a]
  - name: inherited
    host: h
    check: ssh
""",
    )
    own, inherited = load_config(path).services
    assert (own.interval, own.fall, own.jitter, own.receivers) == (1.5, 1, 0.0, ("b", "a"))
    assert (inherited.interval, inherited.fall, inherited.jitter) == (120.0, 5, 0.2)
    assert inherited.receivers == ("a",)
    # built-in defaults where neither says anything
    assert (inherited.retry_interval, inherited.timeout, inherited.rise) == (10.0, 5.0, 2)
    assert (inherited.flap_changes, inherited.flap_window, inherited.remind_every) == (4, 1800.0, 0)


def test_receivers_default_to_all(tmp_path: Path) -> None:
    path = write(
        tmp_path / "w.yaml",
        """\
receivers:
  - {name: a, host: 192.0.2.1, community: public}
  - {name: b, host: 192.0.2.2, community: public}
services:
  - {name: s, host: h, check: ssh}
""",
    )
    assert load_config(path).services[0].receivers == ("a", "b")


def test_kind_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path / "w.yaml",
        """\
services:
  - {name: smtp, host: h, check: smtp}
  - {name: pop3, host: h, check: pop3}
  - {name: imap, host: h, check: imap, tls: true, port: 993}
  - {name: ftp, host: h, check: ftp}
  - {name: ssh, host: h, check: ssh}
  - {name: http, host: h, check: http}
  - name: https
    host: h
    check: https
    path: /health
    status: 204
    body: "ok|OK"
    tls_verify: false
    server_name: www.example.com
    cert_warning: 7d
  - {name: tls, host: h, check: tls}
  - {name: tcp, host: h, port: 7}
""",
    )
    services = {service.name: service for service in load_config(path).services}
    ports = {name: service.port for name, service in services.items()}
    assert ports == {
        "smtp": 25,
        "pop3": 110,
        "imap": 993,
        "ftp": 21,
        "ssh": 22,
        "http": 80,
        "https": 443,
        "tls": 443,
        "tcp": 7,
    }
    assert services["smtp"].helo == socket.gethostname()
    assert services["tcp"].check is CheckKind.TCP
    assert [name for name, service in services.items() if service.tls] == ["imap", "https", "tls"]
    https = services["https"]
    assert (https.http_path, https.http_status, https.tls_verify) == ("/health", (204,), False)
    assert https.http_body == re.compile(b"ok|OK", re.M)
    assert (https.server_name, https.cert_warning) == ("www.example.com", 7 * 86400.0)
    http = services["http"]
    assert (http.http_path, http.http_status, http.http_body, http.cert_warning) == (
        "/",
        (),
        None,
        14 * 86400.0,
    )


def test_conversation_keys(tmp_path: Path) -> None:
    (tmp_path / "good").write_bytes(b"220 host ESMTP Mon, 1 Jan 2024 10:00:00\r\n")
    path = write(
        tmp_path / "w.yaml",
        """\
services:
  - name: one-line
    host: h
    port: 25
    send: HELO x
    expect: "^250 "
  - name: recorded
    host: h
    port: 25
    expect_file: good
    ignore: ["\\\\d+:\\\\d+:\\\\d+", "Mon|Tue"]
  - name: one-ignore
    host: h
    port: 25
    expect_file: good
    ignore: "ESMTP .*"
""",
    )
    one_line, recorded, one_ignore = load_config(path).services
    assert one_line.dialogue == (Step(send=b"HELO x"), Step(expect=re.compile(b"^250 ", re.M)))
    assert recorded.expect_answer == b"220 host ESMTP Mon, 1 Jan 2024 10:00:00\r\n"
    assert recorded.ignore == (re.compile(rb"\d+:\d+:\d+", re.M), re.compile(b"Mon|Tue", re.M))
    assert one_ignore.ignore == (re.compile(b"ESMTP .*", re.M),)


# --- YAML details ------------------------------------------------------------


def test_text_keys_keep_what_was_written(tmp_path: Path) -> None:
    """Names, secrets and IDs are text even where YAML would see numbers or booleans."""
    path = write(
        tmp_path / "w.yaml",
        """\
watchdog:
  engine_id: 0x00000000000001
  oid_root: 1.3.6.1.4.1.99999
receivers:
  - name: 007
    host: 10.1
    version: 1
    community: yes
  - name: v3
    host: h
    version: 3
    user: 12345
    auth: {protocol: sha-1, key: 12345678}
services:
  - name: 42
    host: h
    port: 7
    send: 1.50
""",
    )
    config = load_config(path)
    assert config.settings.engine_id == bytes.fromhex("00000000000001")
    assert config.settings.oid_root == (1, 3, 6, 1, 4, 1, 99999)
    bond, v3 = config.receivers
    assert (bond.name, bond.host, bond.version) == ("007", "10.1", "1")
    assert bond.community == Secret("yes")
    assert v3.user == "12345"
    assert v3.auth is not None
    assert (v3.auth.protocol, v3.auth.key) == ("SHA", Secret("12345678"))
    (service,) = config.services
    assert service.name == "42"
    assert service.dialogue == (Step(send=b"1.50"),)


def test_anchors_and_merge_keys() -> None:
    web1, web2 = load_config(FIXTURES / "valid" / "anchors.yaml").services
    assert (web1.name, web1.interval, web1.http_status) == ("web1", 30.0, (200, 204))
    assert (web2.name, web2.host, web2.interval) == ("web2", "web2.example.com", 45.0)
    assert (web2.check, web2.http_path, web2.http_status) == (
        CheckKind.HTTPS,
        "/health",
        (200, 204),
    )


def test_merged_key_problems_point_at_the_anchor(tmp_path: Path) -> None:
    path = write(
        tmp_path / "w.yaml",
        """\
services:
  - &base
    name: a
    host: h
    check: ssh
    fall: 0
  - <<: *base
    name: b
""",
    )
    assert problems_of(path) == [
        f"{path}:6: services[0].fall: expected an integer of 1 or more, got 0",
        f"{path}:6: services[1].fall: expected an integer of 1 or more, got 0",
    ]


def test_recursive_alias(tmp_path: Path) -> None:
    path = write(tmp_path / "w.yaml", "services: &s\n  - *s\n")
    # an alias has no position of its own: the line is the anchor's
    assert problems_of(path) == [
        f"{path}:1: services[0]: an alias refers to the collection that contains it",
        f"{path}:1: services[0]: expected a mapping, got nothing",
    ]


def test_a_mapping_merged_into_itself(tmp_path: Path) -> None:
    path = write(
        tmp_path / "w.yaml",
        "services:\n  - &s\n    name: a\n    host: h\n    check: ssh\n    <<: *s\n",
    )
    # the mapping is read once, without the merge, instead of endlessly
    assert problems_of(path) == [
        f"{path}:2: services[0]: an alias refers to the collection that contains it",
    ]


def _check_config_bounded(path: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``watchdog check-config`` in a process that may use 1 GiB of address space."""
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))"
    code = f"{limit}; from snmp_watchdog.cli import main; raise SystemExit(main())"
    argv = [sys.executable, "-c", code, "-c", str(path), "check-config"]
    return subprocess.run(
        argv,
        check=False,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


def test_aliases_of_aliases_stop_at_a_bound(tmp_path: Path) -> None:
    # Nine levels of ten aliases each would be a billion values: the reading
    # stops with the file's line instead of filling the memory.
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = write(tmp_path / "w.yaml", "\n".join(levels) + "\n")
    done = _check_config_bounded(path)
    assert (done.returncode, done.stdout.partition("\n")[0]) == (
        2,
        f"{path}:6: the aliases expand to more than 1,000,000 values (an alias of an "
        "alias of ...); write the values out or use fewer levels",
    ), done.stdout


def test_aliases_that_expand_moderately_are_read(tmp_path: Path) -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 5)]
    path = write(tmp_path / "w.yaml", "\n".join(levels) + "\n")
    # 123,455 values: no problem of the aliases, only the unknown sections
    assert [line.partition(": ")[2] for line in problems_of(path)] == [
        f"a{i}: unknown section (the sections are watchdog, defaults, receivers, "
        "services and agent)"
        for i in range(5)
    ]


@pytest.mark.parametrize("depth", [600, 900])
def test_collections_nested_too_deeply(tmp_path: Path, depth: int) -> None:
    text = "watchdog:\n" + "".join(f"{'  ' * level}  k{level}:\n" for level in range(depth))
    path = write(tmp_path / "w.yaml", text)
    problems = problems_of(path)
    assert len(problems) == 1
    # the line is where the reading stopped, somewhere down the staircase
    assert re.fullmatch(
        rf"{re.escape(str(path))}:\d+: the collections are nested too deeply", problems[0]
    ), problems
    done = _check_config_bounded(path)
    assert done.returncode == 2, done.stdout
    assert "Traceback" not in done.stdout


def test_a_fifo_is_not_waited_for(tmp_path: Path) -> None:
    # Opening a FIFO for reading waits for a writer: for ever, and a reload with it.
    fifo = tmp_path / "input"
    os.mkfifo(fifo)
    path = write(
        tmp_path / "w.yaml",
        "services:\n  - name: a\n    host: h\n    port: 7\n    check: tcp\n"
        f"    send_file: {fifo}\n",
    )
    done = _check_config_bounded(path, timeout=60)
    assert done.stdout.splitlines()[0] == (
        f"{path}:6: services[0].send_file: cannot read {fifo}: not a regular file"
    )
    done = _check_config_bounded(fifo, timeout=60)
    assert done.stdout.splitlines()[0] == f"{fifo}: cannot read the file: not a regular file"


def test_a_device_is_not_read(tmp_path: Path) -> None:
    path = write(
        tmp_path / "w.yaml",
        "receivers:\n  - name: r\n    host: h\n    version: 2c\n    community_file: /dev/zero\n",
    )
    # /dev/zero never ends: read, it would fill the memory
    done = _check_config_bounded(path, timeout=60)
    assert done.stdout.splitlines()[0] == (
        f"{path}:5: receivers[0].community_file: cannot read /dev/zero: not a regular file"
    )


def test_a_path_with_a_nul_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = write(
        tmp_path / "w.yaml",
        'watchdog:\n  state_dir: "/var/lib/a\\0b"\n'
        "services:\n  - name: a\n    host: h\n    port: 7\n    check: tcp\n"
        '    send_file: "in\\0put"\n',
    )
    assert problems_of(path) == [
        f"{path}:2: watchdog.state_dir: expected a file or directory path, got '/var/lib/a\\x00b'",
        f"{path}:8: services[0].send_file: expected a file or directory path, got 'in\\x00put'",
    ]


def test_a_value_its_tag_cannot_read(tmp_path: Path) -> None:
    path = write(
        tmp_path / "w.yaml",
        "services:\n  - name: a\n    host: h\n    check: ssh\n    fall: !!int x\n",
    )
    assert problems_of(path) == [
        f"{path}:5: services[0].fall: not a valid int",
        f"{path}:5: services[0].fall: expected an integer of 1 or more, got nothing",
    ]


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert info.value.problems == [
        Problem(str(missing), None, "", "cannot read the file: No such file or directory")
    ]
    assert str(info.value) == f"{missing}: cannot read the file: No such file or directory"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_bytes(b"services:\n  - name: caf\xe9\n")
    assert problems_of(path) == [f"{path}:2: not UTF-8 text"]


def test_control_character(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_bytes(b"services:\n  - name: a\x07\n")
    assert problems_of(path) == [
        f"{path}:2: character #x0007 is not allowed in YAML (control characters are not allowed)"
    ]


def test_secret_file_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "community").write_bytes(b"caf\xe9\n")
    path = write(
        tmp_path / "w.yaml",
        "receivers:\n  - {name: a, host: h, community_file: community}\n",
    )
    assert problems_of(path) == [
        f"{path}:2: receivers[0].community_file: the file {tmp_path}/community is not UTF-8 text"
    ]


# --- the invalid fixtures ----------------------------------------------------


@pytest.mark.parametrize("path", VALID, ids=lambda path: path.stem)
def test_valid_fixture_loads(path: Path) -> None:
    config = load_config(path)
    assert isinstance(config, Config)
    assert config.services


@pytest.mark.parametrize("path", INVALID, ids=lambda path: path.stem)
def test_invalid_fixture(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_TEST_UNSET", raising=False)
    expected = path.with_suffix(".errors").read_text().splitlines()
    assert expected, "a fixture needs at least one expected line"
    got = [
        line.replace(str(path), "FILE").replace(str(path.parent), "DIR")
        for line in problems_of(path)
    ]
    assert got == expected


def test_every_invalid_fixture_has_its_errors() -> None:
    assert INVALID
    assert {p.stem for p in INVALID} == {p.stem for p in (FIXTURES / "invalid").glob("*.errors")}


def test_several_mistakes_listed_in_line_order() -> None:
    path = FIXTURES / "invalid" / "several.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problems = info.value.problems
    lines = [problem.line or 0 for problem in problems]
    assert len(problems) == 7
    assert lines == sorted(lines)
    assert 0 not in lines
    # one of each pass: shape, YAML-level duplicate names, rules, references
    assert {problem.path for problem in problems} >= {
        "defaults.interval",
        "services[0].fal",
        "services[1].receivers[0]",
        "services[2].name",
    }


def test_a_receivers_shape_problem_hides_none_of_its_other_problems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WATCHDOG_TEST_UNSET", raising=False)
    path = write(
        tmp_path / "w.yaml",
        "receivers:\n"
        "  - name: nms\n"
        "    host: 192.0.2.1\n"
        "    community: ${WATCHDOG_TEST_UNSET}\n"
        "    port: 162\n"
        "    mode: trapp\n",
    )
    assert problems_of(path) == [
        f"{path}:4: receivers[0].community: environment variable WATCHDOG_TEST_UNSET is not set",
        f"{path}:6: receivers[0].mode: expected trap or inform, got 'trapp'",
    ]


def test_a_misspelt_key_hides_none_of_a_services_other_problems(tmp_path: Path) -> None:
    path = write(
        tmp_path / "w.yaml",
        "services:\n"
        "  - name: app\n"
        "    host: 10.0.0.7\n"
        "    port: 7000\n"
        "    retry_intreval: 5s\n"
        "    expect: '^220 ('\n",
    )
    assert problems_of(path) == [
        f"{path}:5: services[0].retry_intreval: unknown key (did you mean 'retry_interval'?)",
        f"{path}:6: services[0].expect: not a valid regular expression: "
        "missing ), unterminated subpattern at position 5",
    ]


def test_problem_format() -> None:
    path = FIXTURES / "invalid" / "numbers.yaml"
    problem = load_config_problems(path)[0]
    assert (
        str(problem) == f"{path}:2: watchdog.max_in_flight: expected an integer of 1 or more, got 0"
    )
    assert (problem.file, problem.line, problem.path) == (str(path), 2, "watchdog.max_in_flight")


def load_config_problems(path: Path) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def test_format_problems() -> None:
    one = [Problem("w.yaml", 3, "services[0].port", "expected an integer from 1 to 65535, got 0")]
    assert format_problems(one).splitlines() == [
        "w.yaml:3: services[0].port: expected an integer from 1 to 65535, got 0",
        "1 problem in w.yaml",
    ]
    two = [*one, Problem("w.yaml", None, "", "the file is empty")]
    assert format_problems(two).splitlines() == [
        "w.yaml:3: services[0].port: expected an integer from 1 to 65535, got 0",
        "w.yaml: the file is empty",
        "2 problems in w.yaml",
    ]


# --- secrets -----------------------------------------------------------------


def test_env_var_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WD_TEST_COMMUNITY", "from-the-environment")
    monkeypatch.setenv("WD_TEST_AUTH", "auth key from env")
    path = write(
        tmp_path / "w.yaml",
        """\
receivers:
  - name: v2
    host: h
    community: ${WD_TEST_COMMUNITY}
  - name: v3
    host: h
    version: 3
    user: u
    auth:
      protocol: SHA512
      key: ${WD_TEST_AUTH}
services: []
""",
    )
    v2, v3 = load_config(path).receivers
    assert v2.community == Secret("from-the-environment")
    assert v3.auth is not None
    assert v3.auth.key.reveal() == "auth key from env"

    monkeypatch.delenv("WD_TEST_AUTH")
    monkeypatch.setenv("WD_TEST_COMMUNITY", "")
    assert problems_of(path) == [
        f"{path}:4: receivers[0].community: environment variable WD_TEST_COMMUNITY is empty",
        f"{path}:11: receivers[1].auth.key: environment variable WD_TEST_AUTH is not set",
    ]


def test_secret_values_never_appear_in_messages(tmp_path: Path) -> None:
    secrets = ["hunter2", "do-not-show-me", "private-community", "env-secret"]
    path = write(
        tmp_path / "w.yaml",
        """\
receivers:
  - name: short
    host: h
    version: 3
    user: u
    auth: {protocol: SHA, key: hunter2}
  - name: text-auth
    host: h
    version: 3
    user: u
    auth: do-not-show-me
  - name: v3-with-community
    host: h
    version: 3
    user: u
    community: private-community
  - name: both
    host: h
    community: private-community
    community_file: nowhere
  - name: listed
    host: h
    community: [private-community]
""",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.count("\n") == 4
    for secret in secrets:
        assert secret not in message

    broken = write(tmp_path / "broken.yaml", 'receivers:\n  - community: "env-secret\n')
    with pytest.raises(ConfigError) as info:
        load_config(broken)
    message = str(info.value)
    assert "env-secret" not in message
    assert message.startswith(f"{broken}:3: ")


# --- files -------------------------------------------------------------------


def test_allow_missing_expect(tmp_path: Path) -> None:
    path = write(
        tmp_path / "w.yaml",
        """\
services:
  - name: legacy
    host: h
    port: 25
    expect_file: answers/legacy
    ignore: "\\\\d+"
""",
    )
    assert problems_of(path) == [
        f"{path}:5: services[0].expect_file: cannot read {tmp_path}/answers/legacy: "
        "No such file or directory (run 'watchdog record legacy' to save the good answer)"
    ]
    (service,) = load_config(path, allow_missing_expect=True).services
    assert service.expect_file == tmp_path / "answers" / "legacy"
    assert service.expect_answer is None
    assert service.ignore == (re.compile(rb"\d+", re.M),)

    # other failures to read are still problems
    (tmp_path / "answers").write_text("a file where a directory should be")
    assert problems_of(path, allow_missing_expect=True) == [
        f"{path}:5: services[0].expect_file: cannot read {tmp_path}/answers/legacy: Not a directory"
    ]


def test_expect_file_larger_than_a_check_reads(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * (MAX_READ + 1))
    path = write(
        tmp_path / "w.yaml",
        "services:\n  - {name: s, host: h, port: 7, expect_file: big}\n",
    )
    assert problems_of(path) == [
        f"{path}:2: services[0].expect_file: {tmp_path}/big holds {MAX_READ + 1} bytes, "
        f"more than the {MAX_READ} a check reads"
    ]


def test_relative_paths_are_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(FIXTURES / "valid" / "full.yaml")
    legacy = config.service("legacy-mail")
    assert legacy.send_file == FIXTURES / "valid" / "files" / "input.txt"
    assert legacy.expect_answer == (FIXTURES / "valid" / "files" / "mail_good").read_bytes()
    assert config.receivers[0].community == Secret("public-ro")


def test_ca_file(tmp_path: Path) -> None:
    make_ca(tmp_path / "ca.pem")
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    path = write(
        tmp_path / "w.yaml",
        """\
services:
  - {name: good, host: h, check: tls, ca_file: ca.pem}
  - {name: junk, host: h, check: https, ca_file: junk.pem}
""",
    )
    (problem,) = load_config_problems(path)
    assert (problem.line, problem.path) == (3, "services[1].ca_file")
    assert problem.message.startswith(f"{tmp_path}/junk.pem holds no usable CA certificate")

    write(path, "services:\n  - {name: good, host: h, check: tls, ca_file: ca.pem}\n")
    (good,) = load_config(path).services
    assert good.ca_file == tmp_path / "ca.pem"


# --- value parsers -----------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("90", 90.0),
        (90, 90.0),
        (0.5, 0.5),
    ],
)
def test_durations(written: object, seconds: float) -> None:
    assert schema.parse_duration(written) == seconds


@pytest.mark.parametrize("written", ["5 mins", "1w", "s", "", "-5s", True, None, [1]])
def test_not_durations(written: object) -> None:
    assert schema.duration_seconds(written) is None


@pytest.mark.parametrize(
    ("written", "fraction"), [("10%", 0.1), ("0%", 0.0), ("50%", 0.5), (0.25, 0.25), (0, 0.0)]
)
def test_jitter(written: object, fraction: float) -> None:
    assert schema.parse_jitter(written) == pytest.approx(fraction)


@pytest.mark.parametrize(
    ("written", "protocol"),
    [
        ("SHA", "SHA"),
        ("sha1", "SHA"),
        ("SHA-1", "SHA"),
        ("SHA-224", "SHA224"),
        ("sha256", "SHA256"),
        ("SHA-384", "SHA384"),
        ("SHA_512", "SHA512"),
        ("md5", "MD5"),
    ],
)
def test_auth_protocol_spellings(written: str, protocol: str) -> None:
    assert schema.parse_auth_protocol(written) == protocol


@pytest.mark.parametrize(
    ("written", "protocol"),
    [
        ("AES", "AES128"),
        ("aes-128", "AES128"),
        ("AES192", "AES192"),
        ("AES-256", "AES256"),
        ("AES-256-C", "AES256C"),
        ("aes192c", "AES192C"),
    ],
)
def test_priv_protocol_spellings(written: str, protocol: str) -> None:
    assert schema.parse_priv_protocol(written) == protocol


def test_version_spellings() -> None:
    assert [schema.parse_version(v) for v in (1, "1", "2c", "2C", 3, "3")] == [
        "1",
        "1",
        "2c",
        "2c",
        "3",
        "3",
    ]


# --- host names ----------------------------------------------------------------

#: The longest label and name DNS allows: 63 and 253 octets.
LABEL_63 = "a" * 63
NAME_253 = ".".join(("a" * 63, "b" * 63, "c" * 63, "d" * 61))
#: A label whose IDNA form (xn--...) is exactly 63 octets.
IDN_LABEL_63 = "ü" * 57


def service_with_host(tmp_path: Path, host: str) -> Path:
    return write(
        tmp_path / "w.yaml", f"services:\n  - name: a\n    host: '{host}'\n    check: ssh\n"
    )


def test_host_forms_load_as_written() -> None:
    config = load_config(FIXTURES / "valid" / "hosts.yaml")
    assert {r.name: r.host for r in config.receivers} == {
        "v4": "192.0.2.1",
        "v6": "2001:db8::162",
        "fqdn": "nms.example.net.",
    }
    assert {s.name: s.host for s in config.services} == {
        "mail": "mail.example.com.",
        "idn": "bücher.example",
        "ideographic-dots": "mail\u3002example\u3002com",
        "underscore": "mail_1.internal",
        "loopback6": "::1",
        "scoped": "fe80::1%lo",
        "single-label": "localhost",
    }
    assert config.services[1].server_name == "www.bücher.example"
    # Name resolution and TLS encode names with the idna codec; each one can be.
    for host in [*(r.host for r in config.receivers), *(s.host for s in config.services)]:
        host.encode("idna")


@pytest.mark.parametrize(
    "host",
    [
        f"{LABEL_63}.example.com",
        NAME_253,
        f"{NAME_253}.",
        f"{IDN_LABEL_63}.example",
        ".".join((IDN_LABEL_63, "a" * 63, "b" * 63, "c" * 61)),
    ],
    ids=["label-63", "name-253", "name-253-fqdn", "idn-label-63", "idn-name-253"],
)
def test_longest_host_names_load(tmp_path: Path, host: str) -> None:
    assert load_config(service_with_host(tmp_path, host)).services[0].host == host


@pytest.mark.parametrize(
    ("host", "message"),
    [
        (
            f"{LABEL_63}a.example.com",
            f"label '{'a' * 57}...' is 64 octets long, more than 63, in '{'a' * 57}...'",
        ),
        (
            f"{IDN_LABEL_63}ü.example",
            f"label '{IDN_LABEL_63}ü' is 64 octets long, more than 63, in '{IDN_LABEL_63[:57]}...'",
        ),
        (f"{NAME_253}d", f"'{'a' * 57}...' is 254 octets long, more than the 253 of a host name"),
        (
            ".".join((IDN_LABEL_63, "a" * 63, "b" * 63, "c" * 62)),
            f"'{IDN_LABEL_63}...' is 254 octets long, more than the 253 of a host name",
        ),
        ("mail..example.com", "empty label in 'mail..example.com'"),
        ("mail.example.com..", "empty label in 'mail.example.com..'"),
    ],
    ids=["label-64", "idn-label-64", "name-254", "idn-name-254", "empty-label", "two-dots-at-end"],
)
def test_host_names_too_long_or_empty(tmp_path: Path, host: str, message: str) -> None:
    path = service_with_host(tmp_path, host)
    assert problems_of(path) == [f"{path}:3: services[0].host: {message}"]


# --- the default path --------------------------------------------------------


def test_default_config_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_CONFIG", raising=False)
    assert default_config_path() == DEFAULT_CONFIG_PATH == Path("/etc/snmp-watchdog/watchdog.yaml")
    monkeypatch.setenv("WATCHDOG_CONFIG", "")
    assert default_config_path() == DEFAULT_CONFIG_PATH
    monkeypatch.setenv("WATCHDOG_CONFIG", "/srv/w.yaml")
    assert default_config_path() == Path("/srv/w.yaml")


# --- size --------------------------------------------------------------------


def test_thousands_of_services_load_in_order(tmp_path: Path) -> None:
    """A large file of mixed kinds loads whole (its speed: bench/config_load.py)."""
    kinds = [
        "    check: smtp\n",
        '    port: 7000\n    send: HELO x\n    expect: "^250"\n',
        "    check: https\n    path: /health\n    status: [200, 204]\n    interval: 30s\n",
        '    port: 7000\n    dialogue:\n      - expect: "^220"\n      - send: QUIT\n',
    ]
    text = "receivers:\n  - {name: nms, host: 192.0.2.1, community: public}\nservices:\n" + "".join(
        f"  - name: svc{i}\n    host: host{i}.example.com\n" + kinds[i % len(kinds)]
        for i in range(2000)
    )
    path = write(tmp_path / "w.yaml", text)
    config = load_config(path)
    assert len(config.services) == 2000
    assert config.services[1999].name == "svc1999"
    assert config.services[2].http_status == (200, 204)


# --- agent: ------------------------------------------------------------------


def test_agent_section(tmp_path: Path) -> None:
    """listen, community and users; no section means no agent."""
    config = load_config(FIXTURES / "valid" / "full.yaml")
    agent = config.agent
    assert agent is not None
    assert (agent.host, agent.port) == ("::1", 1161)
    assert agent.community is not None
    (user,) = agent.users
    assert user.user == "poller"
    assert user.auth is not None
    assert user.auth.protocol == "SHA256"
    assert user.priv is not None
    assert user.priv.protocol == "AES128"
    assert load_config(FIXTURES / "valid" / "minimal.yaml").agent is None
    path = write(
        tmp_path / "agent.yaml",
        """\
services:
  - {name: mail, host: 192.0.2.1, check: smtp}
agent:
  community: public
""",
    )
    assert load_config(path).agent == Agent(community=Secret("public"))


@pytest.mark.parametrize(
    ("written", "host", "port"),
    [
        ("127.0.0.1:1161", "127.0.0.1", 1161),
        ("0.0.0.0:161", "0.0.0.0", 161),
        ("192.0.2.7", "192.0.2.7", 1161),
        ("[::1]:2000", "::1", 2000),
        ("[::]", "::", 1161),
        ("::1", "::1", 1161),
    ],
)
def test_agent_listen_forms(written: str, host: str, port: int) -> None:
    assert schema.parse_listen(written) == (host, port)


def test_loading_the_configuration_does_not_import_the_notification_side() -> None:
    """``config`` checks ``oid_root`` and SNMP protocols by leaf modules, not by ``notify``
    (which drags pysnmp in): a fresh interpreter that imports it has no ``notify`` module."""
    code = (
        "import sys, snmp_watchdog.config\n"
        "print(sorted(m for m in sys.modules if m.startswith('snmp_watchdog.notify')"
        " or m.startswith('pysnmp')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_receiver_version_and_mode_are_enums_and_say_whether_informs_are_sent(
    tmp_path: Path,
) -> None:
    """Versions and modes load as ``snmp`` enums (equal to their text); SNMPv1 gets traps
    even when inform is asked for, which the file may not say but the model can hold."""
    path = write(
        tmp_path / "w.yaml",
        """\
receivers:
  - {name: a, host: 127.0.0.1, version: 2C, mode: INFORM, community: c}
  - {name: b, host: 127.0.0.1, version: 1, community: c}
  - {name: c, host: 127.0.0.1, version: 3, user: u, mode: trap}
""",
    )
    a, b, c = load_config(path).receivers
    assert (a.version, a.mode) == (Version.V2C, Mode.INFORM)
    assert (b.version, b.mode) == (Version.V1, Mode.TRAP)
    assert (c.version, c.mode) == (Version.V3, Mode.TRAP)
    assert isinstance(a.version, Version)
    assert isinstance(a.mode, Mode)
    assert a.version == "2c"
    assert f"v{a.version} {a.mode}" == "v2c inform"
    assert [r.informs for r in (a, b, c)] == [True, False, False]
    v1_inform = Receiver("d", "127.0.0.1", version=Version.V1, mode=Mode.INFORM)
    v3_inform = Receiver("e", "127.0.0.1", version=Version.V3, mode=Mode.INFORM)
    assert (v1_inform.informs, v3_inform.informs) == (False, True)


def test_every_per_check_option_is_a_service_key_and_fills_a_service_field() -> None:
    """The table of per-check options names keys a service may write and fields of Service."""
    fields = {f.name for f in dataclasses.fields(Service)}
    assert set(OPTIONS) <= set(schema.ServiceSection.model_fields)
    assert {o.target for o in OPTIONS.values() if o.target is not None} <= fields
    assert OPTIONS["tls"].problem(CheckKind.HTTPS, uses_tls=True) == (
        "check: https always uses TLS; remove tls"
    )
    assert OPTIONS["body"].problem(CheckKind.SMTP, uses_tls=False) == (
        "applies only to check: http or https, not smtp"
    )
    assert OPTIONS["ca_file"].problem(CheckKind.SMTP, uses_tls=True) is None
