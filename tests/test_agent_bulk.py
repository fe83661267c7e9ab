"""GETBULK answers fit in one message: a walk asking for far more than fits still gets it all."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from snmp_watchdog import model
from snmp_watchdog.agent.server import AgentServer
from snmp_watchdog.agent.table import Confirmed, StatusTable, service_row
from snmp_watchdog.notify.mib import Oids
from snmp_watchdog.reasons import Reason
from snmp_watchdog.state import ServiceState, State
from tests.helpers import free_udp_port, run_bounded

pytestmark = [pytest.mark.snmp]

ROWS = 1500


def test_a_bulk_walk_of_long_rows_with_huge_repetitions_gets_every_row(tmp_path: Path) -> None:
    """1500 rows of 64-character names asked 1000 at a time from an agent allowed 1000
    variables per answer: more than 64 KiB unless it sends fewer repetitions (RFC 3416
    4.2.3), which it must. (The default of 64 variables keeps answers smaller anyway.)"""
    oids = Oids()
    table = StatusTable(oids, version="t", uptime=lambda: 0, sequence=lambda: 0)
    st = ServiceState(state=State.DOWN, since=1.0, failures=3, notified=State.DOWN)
    for index in range(1, ROWS + 1):
        name = f"{index:04d}" + "x" * 60
        svc = model.Service(name=name, host="h" * 200, port=25, check=model.CheckKind.SMTP)
        confirmed = Confirmed(Reason.UNEXPECTED_RESPONSE, "y" * 255, 1.0, 3)
        table.put(index, service_row(svc, st, confirmed, mono_now=1.0, wall_now=time.time()))
    port = free_udp_port()
    agent = model.Agent(port=port, community=model.Secret("bulk"))
    home = tmp_path / "home"
    (home / "cert_indexes").mkdir(parents=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "SNMPCONFPATH": str(home)}

    async def walk() -> list[str]:
        server = AgentServer(
            agent, table, engine_id=bytes.fromhex("80001f880501"), boots=1, max_varbinds=1000
        )
        await server.start()
        try:
            proc = await asyncio.create_subprocess_exec(
                "snmpbulkwalk", "-m", "", "-v2c", "-c", "bulk", "-t", "2", "-r", "0",
                "-On", "-Cr1000",
                f"udp:127.0.0.1:{port}", ".".join(map(str, oids.service_name)),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
            )  # fmt: skip
            out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            return out.decode().splitlines()
        finally:
            server.close()

    lines = run_bounded(walk(), 60)
    assert len(lines) == ROWS
    assert lines[-1].endswith(f'"{ROWS:04d}' + "x" * 60 + '"')


def test_a_get_whose_answer_cannot_fit_gets_too_big() -> None:
    """A GET of 400 reason texts of 255 characters (over 100 KiB, sent as one
    SNMPv2c message; Net-SNMP's tools stop at 128 names): tooBig, not silence."""
    from pyasn1.codec.ber import decoder, encoder  # noqa: PLC0415
    from pysnmp.proto.api import v2c  # noqa: PLC0415

    oids = Oids()
    table = StatusTable(oids, version="t", uptime=lambda: 0, sequence=lambda: 0)
    st = ServiceState(state=State.DOWN, since=1.0, failures=3, notified=State.DOWN)
    for index in range(1, 401):
        svc = model.Service(name=f"s{index}", host="h", port=25, check=model.CheckKind.SMTP)
        confirmed = Confirmed(Reason.UNEXPECTED_RESPONSE, "y" * 255, 1.0, 3)
        table.put(index, service_row(svc, st, confirmed, mono_now=1.0, wall_now=time.time()))
    port = free_udp_port()
    agent = model.Agent(port=port, community=model.Secret("big"))
    pdu = v2c.GetRequestPDU()
    v2c.apiPDU.set_defaults(pdu)
    v2c.apiPDU.set_varbinds(
        pdu, [((*oids.service_reason_text, i), v2c.Null("")) for i in range(1, 401)]
    )
    message = v2c.Message()
    v2c.apiMessage.set_defaults(message)
    v2c.apiMessage.set_community(message, "big")
    v2c.apiMessage.set_pdu(message, pdu)
    request = encoder.encode(message)

    async def get() -> bytes:
        server = AgentServer(agent, table, engine_id=bytes.fromhex("80001f880501"), boots=1)
        await server.start()
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[bytes] = loop.create_future()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                answer.set_result(data)

        transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port))
        try:
            transport.sendto(request)
            return await asyncio.wait_for(answer, 5)
        finally:
            transport.close()
            server.close()

    response, _ = decoder.decode(run_bounded(get(), 30), asn1Spec=v2c.Message())
    got = v2c.apiMessage.get_pdu(response)
    assert int(v2c.apiPDU.get_error_status(got)) == 1  # tooBig
    assert not v2c.apiPDU.get_varbinds(got)
