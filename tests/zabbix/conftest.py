"""One throwaway Zabbix for the live tests: database, server and API, with the template imported."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.zabbix.stack import (
    FRONTEND_DIR,
    SCHEMA_DIR,
    ZABBIX_SERVER,
    Api,
    Frontend,
    Postgres,
    Server,
)

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "contrib" / "zabbix" / "template_snmp_watchdog.yaml"
TRAPS_TEMPLATE = "snmp-watchdog by SNMP traps"
POLLING_TEMPLATE = "snmp-watchdog by SNMP"
IMPORT_RULES = {
    kind: {"createMissing": True, "updateExisting": True}
    for kind in ("groups", "templates", "items", "triggers", "discoveryRules", "valueMaps")
}


@dataclass
class Zabbix:
    api: Api
    server: Server
    trap_file: Path
    group_id: str

    def template_id(self, name: str) -> str:
        (template,) = self.api.call("template.get", {"filter": {"host": [name]}})
        return str(template["templateid"])

    def create_host(
        self, name: str, template: str, ip: str, port: int, macros: dict[str, str] | None = None
    ) -> str:
        """A host with one SNMPv2c interface (community public) at ip:port, linked to
        ``template``; its host id."""
        params: dict[str, Any] = {
            "host": name,
            "groups": [{"groupid": self.group_id}],
            "templates": [{"templateid": self.template_id(template)}],
            "interfaces": [
                {
                    "type": 2,  # SNMP
                    "main": 1,
                    "useip": 1,
                    "ip": ip,
                    "dns": "",
                    "port": str(port),
                    "details": {"version": 2, "bulk": 1, "community": "public"},
                }
            ],
            "macros": [{"macro": k, "value": v} for k, v in (macros or {}).items()],
        }
        return str(self.api.call("host.create", params)["hostids"][0])

    def delete_host(self, host_id: str) -> None:
        self.api.call("host.delete", [host_id])


@pytest.fixture(scope="package")
def zabbix() -> Iterator[Zabbix]:
    """PostgreSQL, the API and zabbix_server, with the template imported; stopped at the end."""
    missing = [p for p in (ZABBIX_SERVER, SCHEMA_DIR, FRONTEND_DIR) if not Path(p).exists()]
    if missing:
        pytest.fail(f"{', '.join(map(str, missing))} missing: run bash scripts/zabbix-test.sh")
    directory = Path(tempfile.mkdtemp(prefix="wd-zabbix-"))
    db = Postgres()
    server = Server(directory, db, directory / "snmptraps.log")
    frontend = Frontend(directory, db, server.port)
    try:
        db.start()
        db.load_zabbix_schema()
        frontend.start()
        api = frontend.api
        api.login()
        assert api.call(
            "configuration.import",
            {"format": "yaml", "source": TEMPLATE.read_text(), "rules": IMPORT_RULES},
        )
        # The database's own "Zabbix server" host polls an agent that is not there.
        own = api.call("host.get", {"filter": {"host": ["Zabbix server"]}})
        for host in own:
            api.call("host.update", {"hostid": host["hostid"], "status": 1})
        group_id = api.call("hostgroup.create", {"name": "snmp-watchdog tests"})["groupids"][0]
        server.start()
        yield Zabbix(api, server, server.trap_file, str(group_id))
    finally:
        server.stop()
        frontend.stop()
        db.stop()
        shutil.rmtree(directory, ignore_errors=True)
