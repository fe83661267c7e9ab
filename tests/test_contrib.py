"""What contrib/ ships for Zabbix, SNMPTT, NNMi and snmptrapd does what its documents say.

* ``contrib/zabbix/zabbix_trap_receiver.py``, run by a real snmptrapd as its
  ``traphandle``, appends one record per notification that Zabbix 6.0's SNMP
  trapper splits as intended: ``zabbix_traps`` below follows the server's
  ``parse_traps`` (snmptrapper.c) step by step. The records come from the
  sender's source address and carry the names (MIB loaded) or the numeric
  OIDs (snmptrapd ``-On``).
* ``contrib/zabbix/template_snmp_watchdog.yaml`` is a Zabbix 6.0 export whose
  item keys, trigger expressions and tag macros, applied to those real
  records the way the server applies them (first match, ``\\1``), file a
  Down and its Up under the same item, tag both with the service's name, and
  tell the Down (problem) from the Up (recovery).
* ``contrib/snmptrapd/snmptrapd.conf``, with its placeholders filled in, is
  read by snmptrapd without a complaint and receives SNMPv2c traps, SNMPv3
  traps (``createUser -e`` with the watchdog's engine ID) and SNMPv3 informs.
* ``contrib/snmptt/snmptt.conf.snmp-watchdog`` is exactly what
  ``contrib/snmptt/generate.py`` makes of the MIB, with one EVENT per
  notification at the OID the watchdog sends.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from snmp_watchdog.notify.mib import STATE_VALUES, Oids
from snmp_watchdog.reasons import Reason
from tests.helpers import free_udp_port
from tests.snmptrapd import Snmptrapd

REPO = Path(__file__).resolve().parents[1]
RECEIVER = REPO / "contrib" / "zabbix" / "zabbix_trap_receiver.py"
TEMPLATE = REPO / "contrib" / "zabbix" / "template_snmp_watchdog.yaml"
EXAMPLE_CONF = REPO / "contrib" / "snmptrapd" / "snmptrapd.conf"
GENERATOR = REPO / "contrib" / "snmptt" / "generate.py"
SNMPTT_CONF = REPO / "contrib" / "snmptt" / "snmptt.conf.snmp-watchdog"
MIB_DIR = REPO / "mibs"
IETF_MIBS = Path(os.environ.get("WATCHDOG_IETF_MIBS", REPO / ".cache" / "ietf-mibs"))
OIDS = Oids()
SERVICE = "mail-01.example"
SERVICE_HOST = "192.0.2.25"
ENGINE_ID = "0x80001f8805a1b2c3d4e5f60718"
AUTH_KEY = "auth-key-123"
PRIV_KEY = "priv-key-456"
TIMEOUT = 20  # seconds for one command; each takes well under one
WHITESPACE = " \t\r\n"  # ZBX_WHITESPACE


def dotted(oid: tuple[int, ...]) -> str:
    return ".".join(map(str, oid))


# --- Zabbix 6.0 as a model ---------------------------------------------------


@dataclass(frozen=True)
class Trap:
    """One trap as the Zabbix SNMP trapper hands it to the items of the hosts at ``address``."""

    address: str
    value: str


def zabbix_traps(text: str) -> list[Trap]:
    """Split an SNMPTrapperFile as Zabbix 6.0's ``parse_traps`` does, ending with its forced pass.

    A trap starts at every ``ZBXTRAP`` in the text, wherever it stands; its
    address is the next word; its value is what precedes ``ZBXTRAP`` on that
    line (the time stamp) followed by the text from the character after the
    address up to the newline before the line of the next ``ZBXTRAP``.
    """
    traps = []
    c = line = 0
    begin = addr = end = mark = addr_end = -1
    while c < len(text):
        if text[c] == "\n":
            c += 1
            line = c
            continue
        if not text.startswith("ZBXTRAP", c):
            c += 1
            continue
        start = c
        c += len("ZBXTRAP")
        while c < len(text) and text[c] in WHITESPACE:
            c += 1
        if begin >= 0:
            traps.append(Trap(text[addr:addr_end], text[begin:mark] + text[end : line - 1]))
        begin, addr, mark = line, c, start
        while c < len(text) and text[c] not in WHITESPACE:
            c += 1
        addr_end, end = c, c + 1
    if begin >= 0:
        traps.append(Trap(text[addr:addr_end], text[begin:mark] + text[end : line - 1]))
    return traps


def log_time(value: str, fmt: str) -> datetime:
    """The time stamp Zabbix reads from a log value with an item's log time format."""
    fields: dict[str, str] = {}
    for i, f in enumerate(fmt):
        if f in "yMdhms":
            fields[f] = fields.get(f, "") + value[i]
    return datetime(
        int(fields["y"]),
        int(fields["M"]),
        int(fields["d"]),
        int(fields["h"]),
        int(fields["m"]),
        int(fields["s"]),
    )


_KEY = re.compile(r'^snmptrap\["(?P<regex>[^"]*)"\]$')
_FIND = re.compile(
    r'^find\(/(?P<host>[^/]+)/(?P<key>snmptrap\["[^"]*"\]),,"regexp","(?P<pattern>[^"\\]*)"\)=1$'
)
_NODATA = re.compile(
    r"^nodata\(/(?P<host>[^/]+)/(?P<key>snmptrap\[\"[^\"]*\"\]),(?P<period>[^)]+)\)=1$"
)
_REGSUB = re.compile(r'\{\{ITEM\.VALUE\}\.regsub\("(?P<pattern>[^"\\]*)", \\1\)\}')


def regsub(macro_text: str, value: str) -> str:
    """Resolve every ``{{ITEM.VALUE}.regsub("...", \\1)}`` in a trigger field for ``value``."""

    def one(m: re.Match[str]) -> str:
        found = re.search(m.group("pattern"), value, re.MULTILINE)
        return found.group(1) if found else ""

    return _REGSUB.sub(one, macro_text)


class Template:
    """The template export, read with the rules the server applies to SNMP trap items."""

    def __init__(self, path: Path, name: str = "snmp-watchdog by SNMP traps") -> None:
        self.export: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))[
            "zabbix_export"
        ]
        (self.template,) = [t for t in self.export["templates"] if t["template"] == name]
        self.name: str = self.template["template"]
        self.items: dict[str, dict[str, Any]] = {
            i["key"]: i for i in self.template.get("items", [])
        }

    def matching_items(self, trap: Trap) -> list[str]:
        """Keys of the items that get the trap: each ``snmptrap[regex]`` that matches, else
        ``snmptrap.fallback``."""
        keys = [
            key
            for key in self.items
            if (m := _KEY.match(key)) and re.search(m.group("regex"), trap.value, re.MULTILINE)
        ]
        return keys or ["snmptrap.fallback"]

    def trigger(self, name: str) -> tuple[str, dict[str, Any]]:
        for key, item in self.items.items():
            for trigger in item.get("triggers", []):
                if trigger["name"] == name:
                    return key, trigger
        raise AssertionError(f"no trigger {name!r}")

    def find_pattern(self, expression: str, key: str) -> str:
        match = _FIND.match(expression)
        assert match, expression
        assert match.group("host") == self.name, expression
        assert match.group("key") == key, expression
        return match.group("pattern")

    def evaluate(self, name: str, trap: Trap) -> tuple[bool, bool, dict[str, str]]:
        """(problem expression true, recovery expression true, tags) for ``trap`` as the last
        value of the trigger's item."""
        key, trigger = self.trigger(name)
        problem = self.find_pattern(trigger["expression"], key)
        recovery = self.find_pattern(trigger["recovery_expression"], key)
        tags = {t["tag"]: regsub(t["value"], trap.value) for t in trigger["tags"]}
        return (
            re.search(problem, trap.value, re.MULTILINE) is not None,
            re.search(recovery, trap.value, re.MULTILINE) is not None,
            tags,
        )


@pytest.fixture(scope="module")
def template() -> Template:
    return Template(TEMPLATE)


# --- the receiver script -----------------------------------------------------


def run_receiver(
    stdin: bytes, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, str(RECEIVER), *args],
        input=stdin,
        capture_output=True,
        timeout=TIMEOUT,
        env=env,
        check=False,
    )


SAMPLE = (
    b"watchdog.example.net\n"
    b"UDP: [192.0.2.10]:40123->[192.0.2.1]:162\n"
    b"SNMPv2-MIB::sysUpTime.0 0:0:12:01.00\n"
    b"SNMPv2-MIB::snmpTrapOID.0 SNMP-WATCHDOG-MIB::wdServiceDown\n"
    b"SNMP-WATCHDOG-MIB::wdServiceName.1 mail\n"
)


def test_receiver_record_is_one_zabbix_trap_from_the_source_address(tmp_path: Path) -> None:
    out = tmp_path / "traps.log"
    proc = run_receiver(SAMPLE, "--file", str(out))
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    (trap,) = zabbix_traps(text)
    assert trap.address == "192.0.2.10"
    stamp, _, rest = trap.value.partition(" PDU INFO:\n")
    assert re.fullmatch(r"\d\d:\d\d:\d\d \d{4}/\d\d/\d\d", stamp), trap.value
    assert rest.splitlines() == [
        "  hostname                       watchdog.example.net",
        "  receivedfrom                   UDP: [192.0.2.10]:40123->[192.0.2.1]:162",
        "VARBINDS:",
        "  SNMPv2-MIB::sysUpTime.0        0:0:12:01.00",
        "  SNMPv2-MIB::snmpTrapOID.0      SNMP-WATCHDOG-MIB::wdServiceDown",
        "  SNMP-WATCHDOG-MIB::wdServiceName.1 mail",
    ]
    assert text.endswith("\n")


@pytest.mark.parametrize(
    ("transport", "address"),
    [
        ("UDP: [192.0.2.10]:40123->[192.0.2.1]:162", "192.0.2.10"),
        ("UDP/IPv6: [2001:db8:0:0::1]:40123", "2001:db8::1"),
        ("UDP/IPv6: [::ffff:192.0.2.10]:40123", "192.0.2.10"),
        ("UDP/IPv6: [fe80::1%eth0]:40123", "fe80::1"),
        ("TCP: [192.0.2.11]:5000->[192.0.2.1]:162", "192.0.2.11"),
        ("<UNKNOWN>", "unknown"),
        ("UDP: [not-an-address]:1", "unknown"),
    ],
)
def test_receiver_address_is_written_as_zabbix_compares_it(
    tmp_path: Path, transport: str, address: str
) -> None:
    out = tmp_path / "traps.log"
    data = b"host\n" + transport.encode() + b"\n.1.3.6.1.2.1.1.3.0 0:0:00:01.00\n"
    assert run_receiver(data, "-f", str(out)).returncode == 0
    (trap,) = zabbix_traps(out.read_text())
    assert trap.address == address


def test_receiver_text_can_neither_split_nor_swallow_a_record(tmp_path: Path) -> None:
    """ZBXTRAP in a value, control characters, a NUL, bad UTF-8 and a value over two lines."""
    out = tmp_path / "traps.log"
    data = (
        b"ZBXTRAP 203.0.113.9\n"
        b"UDP: [192.0.2.10]:40123->[192.0.2.1]:162\n"
        b"SNMP-WATCHDOG-MIB::wdServiceReasonText.1 got ZBXTRAP 203.0.113.9\x00\x1b[0m\xff\r\n"
        b"second line of it\n"
    )
    assert run_receiver(data, "-f", str(out)).returncode == 0
    assert run_receiver(SAMPLE, "-f", str(out)).returncode == 0
    text = out.read_text(encoding="utf-8")
    assert [t.address for t in zabbix_traps(text)] == ["192.0.2.10", "192.0.2.10"]
    assert "  hostname                       ZBX_TRAP 203.0.113.9\n" in text
    assert "got ZBX_TRAP 203.0.113.9\\x00\\x1b[0m\\xff\n  second line of it\n" in text
    assert all(ch in {"\n", "\t"} or ord(ch) >= 32 for ch in text)


def test_receiver_file_from_environment_else_zabbix_default(tmp_path: Path) -> None:
    out = tmp_path / "env.log"
    env = dict(os.environ, ZABBIX_SNMPTRAPPER_FILE=str(out))
    assert run_receiver(SAMPLE, env=env).returncode == 0
    assert len(zabbix_traps(out.read_text())) == 1
    env = {k: v for k, v in os.environ.items() if k != "ZABBIX_SNMPTRAPPER_FILE"}
    proc = run_receiver(b"", "--help", env=env)
    assert b"/tmp/zabbix_traps.tmp" in proc.stdout


def test_receiver_fails_without_input_or_without_a_writable_file(tmp_path: Path) -> None:
    out = tmp_path / "traps.log"
    proc = run_receiver(b"just one line\n", "-f", str(out))
    assert proc.returncode == 2
    assert b"no notification" in proc.stderr
    assert not out.exists()
    proc = run_receiver(SAMPLE, "-f", str(tmp_path))  # a directory
    assert proc.returncode == 1
    assert str(tmp_path).encode() in proc.stderr


def test_receivers_running_at_once_append_whole_records(tmp_path: Path) -> None:
    """Records of handlers that run at the same time never interleave."""
    out = tmp_path / "traps.log"
    count = 16
    value = "x" * 3000
    procs = [
        subprocess.Popen(
            [sys.executable, str(RECEIVER), "-f", str(out)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]
    for i, proc in enumerate(procs):  # all inputs first, so that they write at once
        assert proc.stdin is not None
        proc.stdin.write(SAMPLE + f"SNMP-WATCHDOG-MIB::wdServiceName.1 s{i}-{value}\n".encode())
        proc.stdin.close()
    assert [proc.wait(TIMEOUT) for proc in procs] == [0] * count
    traps = zabbix_traps(out.read_text())
    names = sorted(
        re.findall(r"wdServiceName\.1 (s\d+)-x+$", "\n".join(t.value for t in traps), re.M)
    )
    assert names == sorted(f"s{i}" for i in range(count))
    assert all(t.value.endswith(value) for t in traps)


# --- the template --------------------------------------------------------------


def test_template_is_a_zabbix_6_0_export(template: Template) -> None:
    export = template.export
    assert export["version"] == "6.0"
    assert [g["name"] for g in export["groups"]] == ["Templates/Applications"]
    assert template.template["groups"] == [{"name": "Templates/Applications"}]
    assert template.template["name"] == template.name
    uuids = [export["groups"][0]["uuid"], template.template["uuid"]]
    for item in template.template["items"]:
        uuids.append(item["uuid"])
        uuids += [t["uuid"] for t in item.get("triggers", [])]
        assert item["type"] == "SNMP_TRAP"
        assert item["value_type"] == "LOG"
        assert item["logtimefmt"] == "hh:mm:sszyyyy/MM/dd"
        assert item["trends"] == "0"
        assert item["key"] == "snmptrap.fallback" or _KEY.match(item["key"]), item["key"]
        assert len(item["key"]) <= 2048
    assert all(re.fullmatch(r"[0-9a-f]{32}", u) for u in uuids), uuids
    assert len(set(uuids)) == len(uuids)
    assert "snmptrap.fallback" in template.items
    assert [m["macro"] for m in template.template["macros"]] == ["{$WD.HEARTBEAT.TIMEOUT}"]


def test_template_file_uuids_are_unique_across_both_templates() -> None:
    export = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))["zabbix_export"]
    assert [t["template"] for t in export["templates"]] == [
        "snmp-watchdog by SNMP traps",
        "snmp-watchdog by SNMP",
    ]
    uuids = re.findall(r"^ *(?:- )?uuid: ([^\n]*)$", TEMPLATE.read_text(), re.MULTILINE)
    assert all(re.fullmatch(r"[0-9a-f]{32}", u) for u in uuids), uuids
    assert len(set(uuids)) == len(uuids)


def test_polling_template_discovers_the_service_table_of_the_mib() -> None:
    """Low-level discovery walks wdServiceTable's columns; each prototype reads its column at
    the row's index; the value maps are the MIB's enumerations; the trigger prototype is a
    problem while wdServiceState is down, tagged with the service. Plain items read the
    scalars: the services up, down and unknown, and the uptime (TimeTicks, in seconds)."""
    polling = Template(TEMPLATE, "snmp-watchdog by SNMP")
    scalars = {
        "wd.services.up": OIDS.services_up,
        "wd.services.down": OIDS.services_down,
        "wd.services.unknown": OIDS.services_unknown,
        "wd.uptime": OIDS.watchdog_uptime,
    }
    assert {key: item["snmp_oid"] for key, item in polling.items.items()} == {
        key: dotted(oid) + ".0" for key, oid in scalars.items()
    }
    assert all(item["type"] == "SNMP_AGENT" for item in polling.items.values())
    uptime = polling.items["wd.uptime"]
    assert uptime["preprocessing"] == [{"type": "MULTIPLIER", "parameters": ["0.01"]}]
    (restarted,) = uptime["triggers"]
    assert restarted["expression"] == f"last(/{polling.name}/wd.uptime)<10m"
    (rule,) = polling.template["discovery_rules"]
    assert rule["type"] == "SNMP_AGENT"
    macros = dict(re.findall(r"(\{#[A-Z.]+\}),([0-9.]+)", rule["snmp_oid"]))
    assert rule["snmp_oid"] == "discovery[" + ",".join(f"{k},{v}" for k, v in macros.items()) + "]"
    assert macros == {
        "{#WD.NAME}": dotted(OIDS.service_name),
        "{#WD.HOST}": dotted(OIDS.service_host),
        "{#WD.PORT}": dotted(OIDS.service_port),
        "{#WD.CHECK}": dotted(OIDS.service_check_kind),
    }
    prototypes = {p["key"]: p for p in rule["item_prototypes"]}
    columns = {
        'wd.service.state["{#WD.NAME}"]': OIDS.service_state,
        'wd.service.reason["{#WD.NAME}"]': OIDS.service_reason_code,
        'wd.service.reason_text["{#WD.NAME}"]': OIDS.service_reason_text,
    }
    assert set(prototypes) == set(columns)
    for key, oid in columns.items():
        assert prototypes[key]["type"] == "SNMP_AGENT"
        assert prototypes[key]["snmp_oid"] == dotted(oid) + ".{#SNMPINDEX}"
        assert {"tag": "service", "value": "{#WD.NAME}"} in prototypes[key]["tags"]
    maps = {
        m["name"]: {int(v["value"]): v["newvalue"] for v in m["mappings"]}
        for m in polling.template["valuemaps"]
    }
    assert maps["WdState"] == {number: name for name, number in STATE_VALUES.items()}
    assert maps["WdReasonCode"] == {r.value: r.code for r in Reason}
    state = prototypes['wd.service.state["{#WD.NAME}"]']
    assert state["valuemap"] == {"name": "WdState"}
    (trigger,) = state["trigger_prototypes"]
    assert trigger["expression"] == (
        f'last(/{polling.name}/wd.service.state["{{#WD.NAME}}"])={STATE_VALUES["down"]}'
    )
    assert {"tag": "service", "value": "{#WD.NAME}"} in trigger["tags"]
    assert {m["macro"] for m in polling.template["macros"]} == {
        "{$WD.LLD.INTERVAL}",
        "{$WD.POLL.INTERVAL}",
    }


@pytest.mark.parametrize(
    ("name", "problem", "recovery"),
    [
        ("snmp-watchdog: service down", "wdServiceDown", "wdServiceUp"),
        ("snmp-watchdog: service flapping", "wdServiceFlapping", "wdServiceFlappingEnded"),
    ],
)
def test_template_pairs_problem_and_recovery_per_service(
    template: Template, name: str, problem: str, recovery: str
) -> None:
    """A multiple-event trigger on one item; the recovery closes the problems whose ``service``
    tag has the same value, taken from wdServiceName."""
    key, trigger = template.trigger(name)
    assert trigger["type"] == "MULTIPLE"
    assert trigger["recovery_mode"] == "RECOVERY_EXPRESSION"
    assert trigger["correlation_mode"] == "TAG_VALUE"
    assert trigger["correlation_tag"] == "service"
    assert trigger["manual_close"] == "YES"
    assert trigger.get("status", "ENABLED") == "ENABLED"
    service_tag = next(t["value"] for t in trigger["tags"] if t["tag"] == "service")
    assert _REGSUB.fullmatch(service_tag), service_tag
    assert len(service_tag) <= 255
    for expression in (trigger["expression"], trigger["recovery_expression"]):
        pattern = template.find_pattern(expression, key)
        # Function parameters are stored in 255 characters; no quote or backslash to escape.
        assert len(f',"regexp","{pattern}"') <= 255
        re.compile(pattern)
    assert f"(?:{problem}|" in trigger["expression"]
    assert f"(?:{recovery}|" in trigger["recovery_expression"]


def test_template_heartbeat_trigger_waits_to_be_enabled(template: Template) -> None:
    key, trigger = template.trigger("snmp-watchdog: no heartbeat for {$WD.HEARTBEAT.TIMEOUT}")
    match = _NODATA.match(trigger["expression"])
    assert match, trigger["expression"]
    assert match.group("host") == template.name
    assert match.group("key") == key
    assert match.group("period") == "{$WD.HEARTBEAT.TIMEOUT}"
    assert trigger["status"] == "DISABLED"


def check_service_traps(template: Template, traps: list[Trap], *, address: str) -> None:
    """Down/Up pairs as the template sees them: same item, Down is a problem, Up a recovery,
    both tagged with the service; the event name reads the service, host and reason."""
    assert traps
    for trap in traps:
        assert trap.address == address
        stamp = log_time(trap.value, "hh:mm:sszyyyy/MM/dd")
        assert abs((stamp - datetime.now()).total_seconds()) < 300
        assert trap.value[20:].startswith("PDU INFO:\n"), trap.value
    key, trigger = template.trigger("snmp-watchdog: service down")
    results = []
    for trap in traps:
        assert template.matching_items(trap) == [key], trap.value
        problem, recovery, tags = template.evaluate("snmp-watchdog: service down", trap)
        assert tags == {"scope": "availability", "service": SERVICE}, trap.value
        results.append((problem, recovery))
        if problem:
            name = regsub(trigger["event_name"], trap.value)
            assert name in (
                f"Service {SERVICE} ({SERVICE_HOST}) is down: refused",
                f"Service {SERVICE} ({SERVICE_HOST}) is down: 1",
            ), name
    assert results == [(True, False), (False, True)] * (len(traps) // 2)


#: How snmptrapd hands the trap OID line and the service columns to a trap handler, per MIB
#: setting (measured with Net-SNMP 5.9.3): prefix of snmpTrapOID.0, prefix of the notification
#: OIDs, prefix of the service table columns, and whether strings come quoted.
PRINT_FORMS = {
    "MIB loaded": (
        "SNMPv2-MIB::snmpTrapOID.0",
        "SNMP-WATCHDOG-MIB::",
        "SNMP-WATCHDOG-MIB::",
        False,
    ),
    "MIB without SNMPv2-MIB": (
        "SNMPv2-SMI::snmpModules.1.1.4.1.0",
        "SNMP-WATCHDOG-MIB::",
        "SNMP-WATCHDOG-MIB::",
        False,
    ),
    "-On": (
        ".1.3.6.1.6.3.1.1.4.1.0",
        ".1.3.6.1.4.1.8072.9999.9999.0.",
        ".1.3.6.1.4.1.8072.9999.9999.1.2.1.",
        True,
    ),
    "no MIB": (
        "iso.3.6.1.6.3.1.1.4.1.0",
        "iso.3.6.1.4.1.8072.9999.9999.0.",
        "iso.3.6.1.4.1.8072.9999.9999.1.2.1.",
        True,
    ),
    "NET-SNMP-MIB only": (
        "SNMPv2-MIB::snmpTrapOID.0",
        "NET-SNMP-MIB::netSnmpPlaypen.0.",
        "NET-SNMP-MIB::netSnmpPlaypen.1.2.1.",
        True,
    ),
}


def handler_input(form: str, notification: str) -> bytes:
    trap_oid_name, notifications, columns, quoted = PRINT_FORMS[form]
    named = notifications.endswith("::")
    number = {"wdServiceDown": "1", "wdServiceUp": "2"}[notification]
    names = {"2": "wdServiceName", "3": "wdServiceHost", "8": "wdServiceReasonCode"}

    def column(n: str) -> str:
        return f"{columns}{names[n]}.1" if named else f"{columns}{n}.1"

    def text(s: str) -> str:
        return f'"{s}"' if quoted else s

    reason = ("refused" if named else "1") if notification == "wdServiceDown" else "ok"
    lines = [
        "localhost",
        "UDP: [192.0.2.10]:40123->[192.0.2.1]:162",
        "SNMPv2-MIB::sysUpTime.0 0:0:12:01.00",
        f"{trap_oid_name} {notifications}{notification if named else number}",
        f"{column('2')} {text(SERVICE)}",
        f"{column('3')} {text(SERVICE_HOST)}",
        f"{column('8')} {reason}",
    ]
    return "\n".join(lines).encode() + b"\n"


@pytest.mark.parametrize("form", list(PRINT_FORMS))
def test_template_reads_every_form_snmptrapd_prints(
    tmp_path: Path, template: Template, form: str
) -> None:
    out = tmp_path / "traps.log"
    for notification in ("wdServiceDown", "wdServiceUp"):
        proc = run_receiver(handler_input(form, notification), "-f", str(out))
        assert proc.returncode == 0, proc.stderr
    traps = zabbix_traps(out.read_text())
    check_service_traps(template, traps, address="192.0.2.10")


# --- end to end through snmptrapd ----------------------------------------------


def watchdog_config(tmp_path: Path, receivers: str) -> Path:
    path = tmp_path / "watchdog.yaml"
    path.write_text(
        f"""
watchdog:
  state_dir: {tmp_path}/state
  engine_id: "{ENGINE_ID}"
receivers:
{receivers}
services:
  - name: {SERVICE}
    host: {SERVICE_HOST}
    port: 25
    check: smtp
"""
    )
    return path


def send_test_trap(config: Path, *args: str) -> None:
    """``watchdog test-trap ARGS``, which must report every receiver delivered."""
    proc = subprocess.run(
        [sys.executable, "-m", "snmp_watchdog", "-c", str(config), "test-trap", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def wait_for_traps(path: Path, count: int, trapd: Snmptrapd, timeout: float = 10.0) -> list[Trap]:
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        traps = zabbix_traps(text)
        if len(traps) >= count:
            time.sleep(0.2)  # anything more would arrive now
            return zabbix_traps(path.read_text(encoding="utf-8"))
        if time.monotonic() >= deadline:
            raise AssertionError(f"{len(traps)} of {count} traps in {path}:\n{text}\n{trapd.log}")
        time.sleep(0.05)


@pytest.mark.snmp
def test_zabbix_receiver_behind_snmptrapd_numeric_oids(
    tmp_path: Path, snmptrapd: Callable[..., Snmptrapd], template: Template
) -> None:
    """snmptrapd -On, no MIB: a Down, an Up and a test notification, sent from the receiver's
    ``source:`` address, become three traps from that address."""
    out = tmp_path / "snmptraps.log"
    handler = f"traphandle default {sys.executable} {RECEIVER} --file {out}"
    trapd = snmptrapd(extra_config=[handler])
    config = watchdog_config(
        tmp_path,
        f"""
  - name: zabbix
    host: 127.0.0.1
    port: {trapd.port}
    version: 2c
    community: public
    mode: trap
    source: 127.0.0.2
""",
    )
    send_test_trap(config, "--service", SERVICE)
    down, up = wait_for_traps(out, 2, trapd)
    assert f"  .1.3.6.1.6.3.1.1.4.1.0         .{dotted(OIDS.service_down)}\n" in down.value
    assert f"  .{dotted(OIDS.service_name)}.1 " in down.value
    assert f"  .1.3.6.1.6.3.1.1.4.1.0         .{dotted(OIDS.service_up)}\n" in up.value
    check_service_traps(template, [down, up], address="127.0.0.2")

    send_test_trap(config)
    traps = wait_for_traps(out, 3, trapd)
    assert len(traps) == 3
    (test,) = [t for t in traps if f".{dotted(OIDS.test_notification)}\n" in t.value]
    assert template.matching_items(test) == [
        next(k for k in template.items if "wdTestNotification" in k)
    ]
    unknown = Trap(
        "127.0.0.2",
        down.value.replace(f".{dotted(OIDS.service_down)}\n", ".1.3.6.1.4.1.99999.0.1\n"),
    )
    assert template.matching_items(unknown) == ["snmptrap.fallback"]


def example_config(port: int, out: Path) -> str:
    """contrib/snmptrapd/snmptrapd.conf with every placeholder filled in for this test."""
    text = EXAMPLE_CONF.read_text(encoding="utf-8")
    substitutions = {
        "/usr/local/bin/zabbix_trap_receiver.py": f"{sys.executable} {RECEIVER}",
        "/var/lib/zabbix/snmptraps/snmptraps.log": str(out),
        "-e ENGINE_ID ": f"-e {ENGINE_ID} ",
        "AUTH_KEY": AUTH_KEY,
        "PRIV_KEY": PRIV_KEY,
        "COMMUNITY": "wd-community",
        "#[snmp] mibdirs +/usr/local/share/snmp/mibs": f"[snmp] mibdirs +{MIB_DIR}:{IETF_MIBS}",
        "#[snmp] mibs +": "[snmp] mibs +",
        "snmpTrapdAddr udp:162,udp6:162": f"snmpTrapdAddr udp:127.0.0.1:{port}",
    }
    for placeholder, value in substitutions.items():
        assert placeholder in text, placeholder
        text = text.replace(placeholder, value)
    assert not re.search(r"\b(ENGINE_ID|AUTH_KEY|PRIV_KEY|COMMUNITY)\b", text.split("#")[0])
    return text


@dataclass
class ConfiguredSnmptrapd(Snmptrapd):
    """snmptrapd run as a system runs it: only its configuration file, no options that
    change what it logs or hands to traphandle."""

    text: str = ""

    def config_text(self) -> str:
        return self.text

    def command(self, config: Path) -> list[str]:
        return ["snmptrapd", "-f", "-Lo", "-c", str(config)]


@pytest.fixture
def system_snmp_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The snmp.conf Debian ships (no MIBs loaded by default), in place of the system's."""
    conf_dir = tmp_path / "snmpconf"
    conf_dir.mkdir()
    (conf_dir / "snmp.conf").write_text("mibs :\n")
    monkeypatch.setenv("SNMPCONFPATH", str(conf_dir))
    monkeypatch.delenv("MIBS", raising=False)
    monkeypatch.delenv("MIBDIRS", raising=False)


@pytest.fixture
def configured_snmptrapd() -> Iterator[list[ConfiguredSnmptrapd]]:
    """Receivers the test starts itself, stopped by PID at the end."""
    started: list[ConfiguredSnmptrapd] = []
    yield started
    for trapd in started:
        trapd.stop()


@pytest.mark.snmp
@pytest.mark.usefixtures("system_snmp_conf")
def test_example_snmptrapd_conf_receives_v2c_v3_traps_and_informs_for_zabbix(
    tmp_path: Path,
    configured_snmptrapd: list[ConfiguredSnmptrapd],
    template: Template,
) -> None:
    out = tmp_path / "snmptraps.log"
    port = free_udp_port()
    trapd = ConfiguredSnmptrapd(tmp_path / "snmptrapd", port=port)
    trapd.text = example_config(port, out)
    configured_snmptrapd.append(trapd)
    trapd.start()
    startup = trapd.log.split("NET-SNMP version")[0].splitlines()
    complaints = [ln for ln in startup if not ln.startswith("Created directory:")]
    assert complaints == [], trapd.log

    config = watchdog_config(
        tmp_path,
        f"""
  - name: v2c-trap
    host: 127.0.0.1
    port: {trapd.port}
    version: 2c
    community: wd-community
    mode: trap
  - name: v3-trap
    host: 127.0.0.1
    port: {trapd.port}
    version: 3
    user: watchdog
    auth: {{protocol: SHA256, key: {AUTH_KEY}}}
    priv: {{protocol: AES128, key: {PRIV_KEY}}}
    mode: trap
  - name: v3-inform
    host: 127.0.0.1
    port: {trapd.port}
    version: 3
    user: watchdog
    auth: {{protocol: SHA256, key: {AUTH_KEY}}}
    priv: {{protocol: AES128, key: {PRIV_KEY}}}
    mode: inform
    timeout: 2s
""",
    )
    send_test_trap(config, "--service", SERVICE)
    traps = wait_for_traps(out, 6, trapd)
    assert len(traps) == 6, trapd.log
    for trap in traps:
        assert "  SNMPv2-MIB::snmpTrapOID.0      SNMP-WATCHDOG-MIB::wdService" in trap.value
        assert f"  SNMP-WATCHDOG-MIB::wdServiceName.1 {SERVICE}\n" in trap.value
    downs = [t for t in traps if "::wdServiceDown\n" in t.value]
    ups = [t for t in traps if "::wdServiceUp\n" in t.value]
    assert len(downs) == len(ups) == 3
    pairs = [t for pair in zip(downs, ups, strict=True) for t in pair]
    check_service_traps(template, pairs, address="127.0.0.1")
    assert "Error" not in trapd.log, trapd.log
    assert "Warning" not in trapd.log, trapd.log


# --- SNMPTT ---------------------------------------------------------------------


def test_snmptt_conf_is_what_the_generator_makes_of_the_mib() -> None:
    proc = subprocess.run(
        [sys.executable, str(GENERATOR)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == SNMPTT_CONF.read_text(encoding="ascii"), (
        "contrib/snmptt/snmptt.conf.snmp-watchdog is stale: run contrib/snmptt/generate.py "
        "-o contrib/snmptt/snmptt.conf.snmp-watchdog"
    )


def test_snmptt_conf_has_an_event_per_notification_at_the_oid_sent() -> None:
    text = SNMPTT_CONF.read_text(encoding="ascii")
    events = re.findall(r'^EVENT (\S+) (\S+) "Status Events" (\S+)$', text, re.MULTILINE)
    expected = {
        "wdServiceDown": (OIDS.service_down, "MAJOR"),
        "wdServiceUp": (OIDS.service_up, "NORMAL"),
        "wdServiceFlapping": (OIDS.service_flapping, "WARNING"),
        "wdServiceFlappingEnded": (OIDS.service_flapping_ended, "NORMAL"),
        "wdHeartbeat": (OIDS.heartbeat, "NORMAL"),
        "wdTestNotification": (OIDS.test_notification, "NORMAL"),
    }
    assert {name: (oid, sev) for name, oid, sev in events} == {
        name: ("." + dotted(oid), sev) for name, (oid, sev) in expected.items()
    }
    blocks = ["EVENT " + b for b in text.split("#\n#\n#\nEVENT ")[1:]]
    assert len(blocks) == len(expected)
    for block in blocks:
        lines = block.splitlines()
        assert lines[0].startswith("EVENT ")
        assert lines[1].startswith("FORMAT ")
        assert "%" not in lines[1]
        assert lines[2] == "SDESC"
        assert lines[-1] == "EDESC"
    down = blocks[0].splitlines()
    assert down[1] == (
        "FORMAT Service down: $1 on $2 port $3 is down ($4 check, reason $7: $8) [$13]"
    )
    variables = down[down.index("Variables:") + 1 : -1]
    assert variables[0] == "  1: wdServiceName"
    assert variables[12] == "  13: wdNotificationFlags"


def test_snmptt_generator_follows_a_moved_root(tmp_path: Path) -> None:
    moved = tmp_path / "SNMP-WATCHDOG-MIB.txt"
    proc = subprocess.run(
        [sys.executable, "-m", "snmp_watchdog", "mib", "--root", "1.3.6.1.4.1.99999.7"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    moved.write_text(proc.stdout)
    out = tmp_path / "moved.conf"
    subprocess.run(
        [sys.executable, str(GENERATOR), str(moved), "-o", str(out)], timeout=TIMEOUT, check=True
    )
    oids = re.findall(r"^EVENT wd\w+ (\S+) ", out.read_text(), re.MULTILINE)
    assert oids == [f".1.3.6.1.4.1.99999.7.0.{n}" for n in range(1, 7)]


def test_snmptt_generator_refuses_a_notification_without_annotations(tmp_path: Path) -> None:
    text = (MIB_DIR / "SNMP-WATCHDOG-MIB.txt").read_text(encoding="ascii")
    broken = tmp_path / "broken.txt"
    broken.write_text(text.replace("    --#SEVERITY MAJOR\n", "", 1))
    proc = subprocess.run(
        [sys.executable, str(GENERATOR), str(broken)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 2
    assert "wdServiceDown: no --#SEVERITY" in proc.stderr
