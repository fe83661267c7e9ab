"""SNMP-WATCHDOG-MIB: it lints clean, and the code sends exactly what it defines.

The Net-SNMP and libsmi tests need ``smilint``, ``snmptranslate`` and the IETF
base modules in ``$WATCHDOG_IETF_MIBS`` (default ``.cache/ietf-mibs``, which
``scripts/ietf-mibs.sh`` fills); without them they fail, they do not skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from snmp_watchdog import model
from snmp_watchdog.notify import mib
from snmp_watchdog.notify.message import Message, MessageBuilder
from snmp_watchdog.notify.mib import ENUMERATIONS, Oids, mib_text
from snmp_watchdog.reasons import Reason
from snmp_watchdog.state import Kind, State

REPO = Path(__file__).resolve().parents[1]
MIB_PATH = REPO / "mibs" / mib.MIB_FILE
MOVED_ROOT = (1, 3, 6, 1, 4, 1, 99999)
DEEP_ROOT = (1, 3, 6, 1, 4, 1, 99999, 1, 5)
BASE_MODULES = ("SNMPv2-SMI", "SNMPv2-TC", "SNMPv2-CONF")
NOTIFICATIONS = (
    "wdServiceDown",
    "wdServiceUp",
    "wdServiceFlapping",
    "wdServiceFlappingEnded",
    "wdHeartbeat",
    "wdTestNotification",
)
TIMEOUT = 20  # seconds for one tool run; each takes a few milliseconds


# --- the MIB as text (no tools needed) -------------------------------------


def definitions(text: str, macro: str) -> dict[str, str]:
    """Name -> body (up to and including its ``::=`` line) of every ``macro`` definition."""
    pattern = rf"^(\w+) {macro}\n(.*?^\s*::=[^\n]*)$"
    return {m[1]: m[2] for m in re.finditer(pattern, text, re.MULTILINE | re.DOTALL)}


def objects_clause(body: str) -> list[str]:
    match = re.search(r"OBJECTS\s*\{([^}]*)\}", body)
    assert match, body
    return [name.strip() for name in match[1].split(",")]


def test_package_data_is_the_mib_file() -> None:
    """The installed package reads mibs/SNMP-WATCHDOG-MIB.txt itself, and the default root
    changes nothing."""
    assert mib_text() == MIB_PATH.read_text(encoding="ascii")
    assert mib_text(model.DEFAULT_OID_ROOT) == mib_text()


def test_imports_only_the_smiv2_base_modules() -> None:
    imports = re.search(r"^IMPORTS(.*?);", mib_text(), re.MULTILINE | re.DOTALL)
    assert imports
    assert set(re.findall(r"FROM\s+(\S+)", imports[1])) == set(BASE_MODULES)


def test_every_notification_has_the_annotations_snmptt_and_nnmi_read() -> None:
    """TYPE, SUMMARY, ARGUMENTS and SEVERITY sit between DESCRIPTION and ``::=``
    (snmpttconvertmib stops reading at ``::=``), each ``%s`` has an argument, each
    argument names a variable, and the texts fit NNMi's field limits."""
    notifications = definitions(mib_text(), "NOTIFICATION-TYPE")
    assert set(notifications) == set(NOTIFICATIONS)
    for name, body in notifications.items():
        variables = objects_clause(body)
        description = body[body.index("DESCRIPTION") :]
        notes = dict(re.findall(r"^\s*--#(\w+)\s+(.*?)\s*$", description, re.MULTILINE))
        assert set(notes) == {"TYPE", "SUMMARY", "ARGUMENTS", "SEVERITY"}, name
        type_, summary = notes["TYPE"].strip('"'), notes["SUMMARY"].strip('"')
        arguments = [int(a) for a in notes["ARGUMENTS"].strip("{}").split(",")]
        assert summary.count("%") == summary.count("%s") == len(arguments), name
        assert all(0 <= a < len(variables) for a in arguments), name
        assert notes["SEVERITY"] in {"CRITICAL", "MAJOR", "MINOR", "WARNING", "NORMAL"}, name
        assert len(type_) <= 255, name
        assert len(summary) <= 2000, name
        text = re.search(r'DESCRIPTION\s*"([^"]*)"', body)
        assert text, name
        assert len(text[1]) <= 4000, name
        # Words that end snmpttconvertmib's scan of a definition early.
        scanned = description.split("::=")[0]
        assert not re.search(r"OBJECTS|\sEND\s|NOTIFICATION-TYPE|TRAP-TYPE", scanned), name


def test_the_summaries_read_well() -> None:
    """What an operator sees once SNMPTT fills a Down's summary from its variables."""
    body = definitions(mib_text(), "NOTIFICATION-TYPE")["wdServiceDown"]
    summary = re.search(r'--#SUMMARY "(.*)"', body)
    arguments = re.search(r"--#ARGUMENTS \{(.*)\}", body)
    assert summary
    assert arguments
    variables: tuple[str, ...] = ("mail", "mx.example.net", "25", "smtp", "down", "up", "refused")
    variables += ("connection refused", "3", "12", "2026-11-25,15:20:0.0,+0:0", "17", "normal")
    filled = summary[1] % tuple(variables[int(a)] for a in arguments[1].split(","))
    assert filled == (
        "mail on mx.example.net port 25 is down (smtp check, reason refused: "
        "connection refused) [normal]"
    )


def test_down_and_up_carry_the_same_variables_in_the_same_order() -> None:
    notifications = definitions(mib_text(), "NOTIFICATION-TYPE")
    down = objects_clause(notifications["wdServiceDown"])
    assert len(down) == 13
    for name in ("wdServiceUp", "wdServiceFlapping", "wdServiceFlappingEnded"):
        assert objects_clause(notifications[name]) == down


def test_messages_carry_the_mib_objects_clause_in_order() -> None:
    """For each notification, the builder's varbinds (instance removed) are the OIDs of
    its OBJECTS clause, in order, and its OID is the notification's."""
    oids = Oids()
    by_name = oids.by_name()
    builder = MessageBuilder(oids)
    service = model.Service(name="mail", host="mx", port=25, check=model.CheckKind.SMTP)

    def event(kind: Kind) -> Message:
        return builder.service_event(
            kind=kind,
            service=service,
            index=7,
            state=State.DOWN,
            previous=State.UP,
            reason=Reason.REFUSED,
            detail="connection refused",
            count=3,
            elapsed=0.01,
            at_wall=0.0,
            sequence=1,
        )

    messages = {
        "wdServiceDown": event(Kind.DOWN),
        "wdServiceUp": event(Kind.UP),
        "wdServiceFlapping": event(Kind.FLAPPING),
        "wdServiceFlappingEnded": event(Kind.FLAPPING_ENDED),
        "wdHeartbeat": builder.heartbeat(sequence=1, up=1, down=0, unknown=0, uptime=1.0),
        "wdTestNotification": builder.test(sequence=1, text="hello"),
    }
    notifications = definitions(mib_text(), "NOTIFICATION-TYPE")
    for name, message in messages.items():
        assert message.notification == by_name[name]
        sent = [oid[:-1] for oid, _ in message.varbinds]
        assert sent == [by_name[v] for v in objects_clause(notifications[name])], name


def test_oids_know_every_notification_and_accessible_object_of_the_mib() -> None:
    """The other direction: nothing the MIB offers is missing from ``Oids``."""
    text = mib_text()
    accessible = {
        name
        for name, body in definitions(text, "OBJECT-TYPE").items()
        if not re.search(r"MAX-ACCESS\s+not-accessible", body)
    }
    assert accessible | set(NOTIFICATIONS) == set(Oids().by_name()) - {"snmpWatchdogMIB"}


def test_enumerations_cover_the_code() -> None:
    assert set(ENUMERATIONS["wdServiceState"]) == {s.value for s in State}
    assert sorted(ENUMERATIONS["wdServiceReasonCode"].values()) == sorted(r.value for r in Reason)
    assert ENUMERATIONS["wdServiceReasonCode"]["unexpectedResponse"] == 7
    assert ENUMERATIONS["wdServiceReasonCode"]["ok"] == 0


@pytest.mark.parametrize(
    "root",
    [(1, 3, 6), (1, 3, 6, 1), (1, 3, 6, 1, 4, 1), (2, 25, 1), (1, 3, 6, 1, 4, 1, 2**32)],
)
def test_a_root_must_lie_below_internet_and_not_be_an_smi_node(root: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="OID"):
        Oids(root)
    with pytest.raises(ValueError, match="OID"):
        mib_text(root)


# --- the MIB against libsmi and Net-SNMP -----------------------------------


@pytest.fixture(scope="module")
def ietf_mibs() -> Path:
    path = Path(os.environ.get("WATCHDOG_IETF_MIBS") or REPO / ".cache" / "ietf-mibs")
    missing = [m for m in BASE_MODULES if not any(path.glob(f"{m}.*"))]
    if missing:
        pytest.fail(
            f"the IETF base MIB modules {', '.join(missing)} are not in {path}: run "
            f"'scripts/ietf-mibs.sh {path}' or point WATCHDOG_IETF_MIBS at a folder that has them"
        )
    for tool, package in (("smilint", "smitools"), ("snmptranslate", "snmp")):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (Debian package {package})")
    return path


@pytest.fixture(scope="module")
def tool_env(tmp_path_factory: pytest.TempPathFactory, ietf_mibs: Path) -> dict[str, str]:
    """An environment in which no user or system snmp.conf changes what the tools do."""
    home = tmp_path_factory.mktemp("home")
    (home / "cert_indexes").mkdir()  # else snmptranslate says it created it
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "SMIPATH": str(ietf_mibs),
        "SNMPCONFPATH": str(home),
        "SNMP_PERSISTENT_DIR": str(home),
        "LC_ALL": "C",
    }


@pytest.fixture(scope="module", params=["bundled", "moved", "deep"])
def variant(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Oids]:
    """A folder holding the MIB (as bundled; as ``watchdog mib --root`` prints it moved
    under 1.3.6.1.4.1.99999; moved deeper, with named arcs in between), and the ``Oids``
    the daemon uses with that root."""
    if request.param == "bundled":
        return MIB_PATH.parent, Oids()
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "deep":
        (folder / mib.MIB_FILE).write_text(mib_text(DEEP_ROOT), encoding="ascii")
        return folder, Oids(DEEP_ROOT)
    printed = subprocess.run(
        [sys.executable, "-m", "snmp_watchdog", "mib", "--root", "1.3.6.1.4.1.99999"],
        capture_output=True,
        text=True,
        check=True,
        timeout=TIMEOUT,
    )
    assert printed.stdout == mib_text(MOVED_ROOT)
    (folder / mib.MIB_FILE).write_text(printed.stdout, encoding="ascii")
    return folder, Oids(MOVED_ROOT)


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, env=env, timeout=TIMEOUT, check=False
    )


def snmptranslate(
    folder: Path, ietf_mibs: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    done = run(
        ["snmptranslate", "-M", f"{ietf_mibs}:{folder}", "-m", mib.MODULE, *args],
        env,
    )
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    return done


@pytest.mark.snmp
def test_smilint_level_6_prints_nothing(
    variant: tuple[Path, Oids], tool_env: dict[str, str]
) -> None:
    folder, _ = variant
    done = run(["smilint", "-l", "6", str(folder / mib.MIB_FILE)], tool_env)
    # smilint exits 0 whatever it finds: only its silence means a clean module.
    assert done.stdout + done.stderr == ""
    assert done.returncode == 0


@pytest.mark.snmp
def test_smilint_catches_a_broken_module(tool_env: dict[str, str], tmp_path: Path) -> None:
    """The lint test can fail: an implicit node (the root written as bare numbers) is reported."""
    broken = mib_text().replace("netSnmp(8072) netSnmpExperimental(9999) 9999", "8072 9999 9999")
    (tmp_path / mib.MIB_FILE).write_text(broken, encoding="ascii")
    done = run(["smilint", "-l", "6", str(tmp_path / mib.MIB_FILE)], tool_env)
    assert "implicit node" in done.stdout + done.stderr


@pytest.mark.snmp
def test_every_oid_the_code_sends_is_the_one_the_mib_defines(
    variant: tuple[Path, Oids], ietf_mibs: Path, tool_env: dict[str, str]
) -> None:
    folder, oids = variant
    wanted = oids.by_name()
    names = [f"{mib.MODULE}::{name}" for name in wanted]
    done = snmptranslate(folder, ietf_mibs, tool_env, "-On", *names)
    resolved = [line for line in done.stdout.splitlines() if line]
    assert len(resolved) == len(wanted)
    got = dict(zip(wanted, resolved, strict=True))
    assert got == {name: "." + ".".join(map(str, oid)) for name, oid in wanted.items()}


@pytest.mark.snmp
def test_enumerations_are_the_mibs(
    variant: tuple[Path, Oids], ietf_mibs: Path, tool_env: dict[str, str]
) -> None:
    folder, _ = variant
    names = [f"{mib.MODULE}::{name}" for name in ENUMERATIONS]
    done = snmptranslate(folder, ietf_mibs, tool_env, "-Td", *names)
    syntaxes = re.findall(r"^\s*SYNTAX\s+INTEGER\s*\{(.*)\}", done.stdout, re.MULTILINE)
    assert len(syntaxes) == len(ENUMERATIONS)
    for name, syntax in zip(ENUMERATIONS, syntaxes, strict=True):
        values = {label: int(number) for label, number in re.findall(r"(\w+)\((\d+)\)", syntax)}
        assert values == dict(ENUMERATIONS[name]), name
