"""The sender and the dispatcher against a real Net-SNMP snmptrapd on loopback.

Every notification is checked as snmptrapd decoded it: version, PDU type,
community or user, sysUpTime.0, snmpTrapOID.0 and every varbind's type and
value.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pyasn1.codec.ber import decoder as ber_decoder
from pysnmp.entity import config as pysnmp_config
from pysnmp.proto import rfc1902
from pysnmp.proto.mpmod.rfc3412 import SNMPv3Message
from pysnmp.proto.secmod.rfc3414.service import UsmSecurityParameters

from snmp_watchdog import model, snmp
from snmp_watchdog.exceptions import WatchdogError
from snmp_watchdog.notify import engine as identity
from snmp_watchdog.notify.message import Message
from snmp_watchdog.notify.outbox import Dispatcher
from snmp_watchdog.notify.sender import Delivery, Sender
from snmp_watchdog.snmp import Mode, Version
from tests.helpers import free_udp_port
from tests.snmptrapd import Received, Snmptrapd, User, Value

pytestmark = pytest.mark.snmp

T = TypeVar("T")
Trapd = Callable[..., Snmptrapd]

ENGINE_ID = bytes.fromhex("80001f88050102030405060708")
ROOT = (1, 3, 6, 1, 4, 1, 8072, 9999, 9999)
NOTIFICATION = (*ROOT, 0, 7)
AUTH_KEY = "auth-key-1234"
PRIV_KEY = "priv-key-5678"
#: Our protocol names -> Net-SNMP's.
NET_SNMP = {
    "SHA": "SHA",
    "SHA224": "SHA-224",
    "SHA256": "SHA-256",
    "SHA384": "SHA-384",
    "SHA512": "SHA-512",
    "MD5": "MD5",
    "AES128": "AES",
    "AES192": "AES-192",
    "AES256": "AES-256",
    "AES192C": "AES192C",
    "AES256C": "AES256C",
    "DES": "DES",
}


def run(coroutine: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
    """Run a test's coroutine in a fresh loop, bounded as a whole."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


async def timed_send_once(tmp_path: Path, receiver: model.Receiver) -> tuple[Delivery, float]:
    """One notification through a fresh sender, and how long ``send`` took."""
    sender = await started(tmp_path, [receiver])
    try:
        began = time.monotonic()
        delivery = await sender.send(receiver, message())
        return delivery, time.monotonic() - began
    finally:
        await sender.close()


async def send_once(tmp_path: Path, receiver: model.Receiver) -> Delivery:
    """One notification through a fresh sender."""
    delivery, _took = await timed_send_once(tmp_path, receiver)
    return delivery


def message(sequence: int = 1, text: str = "hello") -> Message:
    """A notification with one varbind of every type the SMI has."""
    o = (*ROOT, 1)
    varbinds: tuple[tuple[tuple[int, ...], object], ...] = (
        ((*o, 1, 0), rfc1902.OctetString(text)),
        ((*o, 2, 0), rfc1902.Integer32(-42)),
        ((*o, 3, 0), rfc1902.Unsigned32(4294967295)),
        ((*o, 4, 0), rfc1902.Gauge32(7)),
        ((*o, 5, 0), rfc1902.Counter32(99)),
        ((*o, 6, 0), rfc1902.IpAddress("10.1.2.3")),
        ((*o, 7, 0), rfc1902.ObjectIdentifier((1, 3, 6, 1, 2, 1))),
        ((*o, 8, 0), rfc1902.TimeTicks(500)),
        ((*o, 9, 0), rfc1902.OctetString(bytes([7, 234, 11, 25, 14, 3, 9, 0, 43, 0, 0]))),
        ((*o, 10, 0), rfc1902.Unsigned32(sequence)),
        ((*o, 11, 0), rfc1902.Counter64(1234567890123)),
    )
    return Message(NOTIFICATION, varbinds, "test", sequence, None)


def dotted(oid: tuple[int, ...]) -> str:
    return ".".join(map(str, oid))


def check_payload(got: Received, text: str = "hello", sequence: int = 1) -> None:
    """Every varbind of ``message()`` arrived with its type and value."""
    o = dotted((*ROOT, 1))
    expected = {
        f"{o}.1.0": Value("STRING", text),
        f"{o}.2.0": Value("INTEGER", "-42"),
        f"{o}.3.0": Value("Gauge32", "4294967295"),
        f"{o}.4.0": Value("Gauge32", "7"),
        f"{o}.5.0": Value("Counter32", "99"),
        f"{o}.6.0": Value("IpAddress", "10.1.2.3"),
        f"{o}.7.0": Value("OID", "1.3.6.1.2.1"),
        f"{o}.8.0": Value("Timeticks", "(500) 0:00:05.00"),
        f"{o}.9.0": Value("Hex-STRING", "07 EA 0B 19 0E 03 09 00 2B 00 00"),
        f"{o}.10.0": Value("Gauge32", str(sequence)),
    }
    if got.version != "1":  # Counter64 cannot travel in SNMPv1
        expected[f"{o}.11.0"] = Value("Counter64", "1234567890123")
    assert got.payload == expected
    assert list(got.payload) == list(expected)  # in order


def settings(tmp_path: Path, **changes: Any) -> model.Settings:
    return model.Settings(state_dir=tmp_path / "state", engine_id=ENGINE_ID, **changes)


def v2c(trapd: Snmptrapd, name: str = "nms", **changes: Any) -> model.Receiver:
    receiver = model.Receiver(
        name=name,
        host=trapd.host,
        port=trapd.port or 0,
        version=Version.V2C,
        community=model.Secret("public"),
        timeout=1.0,
    )
    return dataclasses.replace(receiver, **changes)


def v3(
    trapd: Snmptrapd,
    user: str,
    auth: str | None,
    priv: str | None,
    name: str = "nms3",
    **changes: Any,
) -> model.Receiver:
    receiver = model.Receiver(
        name=name,
        host=trapd.host,
        port=trapd.port or 0,
        version=Version.V3,
        user=user,
        auth=model.UsmKey(auth, model.Secret(AUTH_KEY)) if auth else None,
        priv=model.UsmKey(priv, model.Secret(PRIV_KEY)) if priv else None,
        timeout=1.0,
    )
    return dataclasses.replace(receiver, **changes)


def trapd_user(
    name: str, auth: str | None, priv: str | None, engine_id: bytes | None = ENGINE_ID
) -> User:
    """The receiver's side of ``v3(...)``: with ``engine_id`` for traps, None for informs."""
    return User(
        name,
        NET_SNMP[auth] if auth else None,
        AUTH_KEY,
        NET_SNMP[priv] if priv else None,
        PRIV_KEY,
        engine_id=engine_id,
    )


async def started(
    tmp_path: Path, receivers: list[model.Receiver], uptime: float = 12.34, **changes: Any
) -> Sender:
    sender = Sender(settings(tmp_path, **changes), receivers, started=time.monotonic() - uptime)
    await sender.start()
    return sender


# -- SNMPv1 and SNMPv2c ------------------------------------------------------------


def test_v2c_trap_carries_uptime_trap_oid_and_every_varbind(
    tmp_path: Path, snmptrapd: Trapd
) -> None:
    trapd = snmptrapd()
    receiver = v2c(trapd)

    async def scenario() -> tuple[Delivery, list[Received]]:
        sender = await started(tmp_path, [receiver], uptime=0.0)
        await asyncio.sleep(0.05)
        try:
            delivery = await sender.send(receiver, message())
            return delivery, await trapd.wait_for_async(1)
        finally:
            await sender.close()

    delivery, (got,) = run(scenario())
    assert delivery == Delivery("nms", True, False, None, None)
    assert str(delivery) == "sent; traps are not acknowledged"
    assert (got.version, got.pdu, got.security_name) == ("2c", "TRAP2", "public")
    assert got.source[0] == "127.0.0.1"
    assert got.trap_oid == dotted(NOTIFICATION)
    assert got.varbinds["1.3.6.1.2.1.1.3.0"].type == "Timeticks"
    assert 5 <= got.uptime < 500  # the daemon's uptime, not pysnmp's (which starts at 0)
    check_payload(got)


def test_uptime_is_the_daemons_real_uptime(tmp_path: Path, snmptrapd: Trapd) -> None:
    trapd = snmptrapd()
    receiver = v2c(trapd)

    async def scenario() -> list[Received]:
        sender = await started(tmp_path, [receiver], uptime=4321.0)
        try:
            await sender.send(receiver, message())
            return await trapd.wait_for_async(1)
        finally:
            await sender.close()

    (got,) = run(scenario())
    assert 432100 <= got.uptime < 432100 + 300


def test_v1_trap_follows_rfc_3584(tmp_path: Path, snmptrapd: Trapd) -> None:
    trapd = snmptrapd()
    receiver = v2c(trapd, version=Version.V1, mode=Mode.INFORM)  # SNMPv1 has no inform: a trap

    async def scenario() -> tuple[Delivery, list[Received]]:
        sender = await started(tmp_path, [receiver])
        try:
            delivery = await sender.send(receiver, message())
            return delivery, await trapd.wait_for_async(1)
        finally:
            await sender.close()

    delivery, (got,) = run(scenario())
    assert delivery.ok
    assert not delivery.acknowledged
    assert (got.version, got.pdu, got.security_name) == ("1", "TRAP", "public")
    assert got.enterprise == dotted(ROOT)  # the OID without its ".0.7"
    assert (got.generic, got.specific) == (6, 7)
    assert got.trap_oid == dotted(NOTIFICATION)
    assert got.agent_address == "127.0.0.1"  # the address we send from
    assert 1234 <= got.uptime < 1234 + 300
    check_payload(got)


def test_v1_agent_address_and_source_are_the_configured_source(
    tmp_path: Path, snmptrapd: Trapd
) -> None:
    trapd = snmptrapd()
    v1 = v2c(trapd, "v1", version=Version.V1, source="127.0.0.2")
    v2 = v2c(trapd, "v2", source="127.0.0.2")

    async def scenario() -> list[Received]:
        sender = await started(tmp_path, [v1, v2])
        try:
            assert (await sender.send(v1, message())).ok
            assert (await sender.send(v2, message())).ok
            return await trapd.wait_for_async(2)
        finally:
            await sender.close()

    first, second = run(scenario())
    assert first.version == "1"
    assert first.agent_address == "127.0.0.2"
    assert first.source[0] == "127.0.0.2"
    assert second.source[0] == "127.0.0.2"


def test_a_source_address_that_is_not_local_fails_its_sends(tmp_path: Path) -> None:
    receiver = model.Receiver("nms", "127.0.0.1", 9, community=model.Secret("x"))
    receiver = dataclasses.replace(receiver, source="192.0.2.10")

    scenario = functools.partial(send_once, tmp_path, receiver)

    delivery = run(scenario())
    assert not delivery.ok
    assert delivery.error is not None
    assert delivery.error.startswith("cannot send from 192.0.2.10: ")


def test_host_names_are_resolved(tmp_path: Path, snmptrapd: Trapd) -> None:
    trapd = snmptrapd()
    receiver = v2c(trapd, host="localhost", mode=Mode.INFORM)

    scenario = functools.partial(send_once, tmp_path, receiver)

    assert run(scenario()).acknowledged


def test_v2c_inform_is_acknowledged_with_a_round_trip_time(
    tmp_path: Path, snmptrapd: Trapd
) -> None:
    trapd = snmptrapd()
    receiver = v2c(trapd, mode=Mode.INFORM)

    async def scenario() -> tuple[Delivery, list[Received]]:
        sender = await started(tmp_path, [receiver])
        try:
            delivery = await sender.send(receiver, message())
            # snmptrapd answers before it prints: wait for its line.
            return delivery, await trapd.wait_for_async(1)
        finally:
            await sender.close()

    delivery, (got,) = run(scenario())
    assert delivery.ok
    assert delivery.acknowledged
    assert delivery.error is None
    assert delivery.rtt is not None
    assert 0 < delivery.rtt < receiver.timeout
    assert str(delivery).startswith("acknowledged in ")
    assert (got.version, got.pdu) == ("2c", "INFORM")
    assert got.trap_oid == dotted(NOTIFICATION)
    check_payload(got)


def test_inform_with_a_wrong_community_times_out(tmp_path: Path, snmptrapd: Trapd) -> None:
    trapd = snmptrapd()
    receiver = v2c(trapd, mode=Mode.INFORM, community=model.Secret("wrong"), timeout=0.5)

    scenario = functools.partial(timed_send_once, tmp_path, receiver)

    delivery, took = run(scenario())
    assert delivery == Delivery("nms", False, False, None, "timeout")
    assert 0.5 <= took < 0.9
    assert trapd.notifications == []


def test_ipv6_receivers(tmp_path: Path, snmptrapd: Trapd) -> None:
    trapd = snmptrapd(host="::1", users=[trapd_user("wd", "SHA256", "AES128", None)])
    trap = v2c(trapd, "trap", host="::1")
    inform = v3(trapd, "wd", "SHA256", "AES128", name="inform", host="::1", mode=Mode.INFORM)

    async def scenario() -> list[Delivery]:
        sender = await started(tmp_path, [trap, inform])
        try:
            deliveries = [await sender.send(r, message()) for r in (trap, inform, inform)]
            await trapd.wait_for_async(3)
            return deliveries
        finally:
            await sender.close()

    assert [d.error for d in run(scenario())] == [None, None, None]
    received = trapd.notifications
    assert [(r.version, r.pdu, r.source[0]) for r in received] == [
        ("2c", "TRAP2", "::1"),
        ("3", "INFORM", "::1"),
        ("3", "INFORM", "::1"),
    ]
    check_payload(received[1])


def test_a_socket_error_fails_a_trap(tmp_path: Path) -> None:
    receiver = model.Receiver("everyone", "255.255.255.255", 162, community=model.Secret("x"))

    scenario = functools.partial(send_once, tmp_path, receiver)

    assert run(scenario()) == Delivery(
        "everyone", False, False, None, "socket error: Permission denied"
    )


def test_closing_the_sender_ends_informs_in_flight(tmp_path: Path) -> None:
    receiver = model.Receiver(
        "nobody", "127.0.0.1", free_udp_port(), mode=Mode.INFORM,
        community=model.Secret("public"), timeout=5.0,
    )  # fmt: skip

    async def scenario() -> tuple[Delivery, float]:
        sender = await started(tmp_path, [receiver])
        began = time.monotonic()
        sending = asyncio.create_task(sender.send(receiver, message()))
        await asyncio.sleep(0.1)
        await sender.close()
        return await sending, time.monotonic() - began

    delivery, took = run(scenario())
    assert delivery.error == "sender closed"
    assert took < 0.5


def test_inform_to_a_port_where_nothing_listens_fails_within_its_timeout(
    tmp_path: Path,
) -> None:
    receiver = model.Receiver(
        "nobody", "127.0.0.1", free_udp_port(), mode=Mode.INFORM,
        community=model.Secret("public"), timeout=0.3,
    )  # fmt: skip

    scenario = functools.partial(timed_send_once, tmp_path, receiver)

    delivery, took = run(scenario())
    assert delivery.error == "timeout"
    assert not delivery.ok
    assert 0.3 <= took < 0.6


# -- SNMPv3 --------------------------------------------------------------------------

SECURITY = [
    (None, None),
    ("SHA", None),
    ("SHA", "AES128"),
    ("SHA224", "AES128"),
    ("SHA256", None),
    ("SHA256", "AES128"),
    ("SHA384", "AES128"),
    ("SHA512", None),
    ("SHA512", "AES128"),
    ("SHA256", "AES192"),
    ("SHA512", "AES256"),
    ("SHA", "AES256"),
    ("SHA", "AES192C"),  # the Cisco (Reeder) key extension differs from Blumenthal's for SHA-1
    ("SHA", "AES256C"),
]


def _ids(value: tuple[str | None, str | None]) -> str:
    auth, priv = value
    return f"{auth or 'noAuth'}-{priv or 'noPriv'}"


@pytest.mark.parametrize("mode", [Mode.TRAP, Mode.INFORM])
@pytest.mark.parametrize("security", SECURITY, ids=_ids)
def test_v3_is_received_at_every_security_level(
    tmp_path: Path, snmptrapd: Trapd, mode: Mode, security: tuple[str | None, str | None]
) -> None:
    auth, priv = security
    engine_id = ENGINE_ID if mode == "trap" else None  # the sender is authoritative for traps
    trapd = snmptrapd(communities=[], users=[trapd_user("wd", auth, priv, engine_id)])
    receiver = v3(trapd, "wd", auth, priv, mode=mode)

    async def scenario() -> tuple[Delivery, list[Received]]:
        sender = await started(tmp_path, [receiver])
        try:
            delivery = await sender.send(receiver, message())
            return delivery, await trapd.wait_for_async(1)
        finally:
            await sender.close()

    delivery, (got,) = run(scenario())
    assert delivery.error is None
    assert delivery.acknowledged == (mode == "inform")
    assert (got.version, got.security_name) == ("3", "wd")
    assert got.pdu == ("INFORM" if mode == "inform" else "TRAP2")
    assert got.trap_oid == dotted(NOTIFICATION)
    assert 1234 <= got.uptime < 1234 + 300
    check_payload(got)


@pytest.mark.parametrize("mode", [Mode.TRAP, Mode.INFORM])
def test_md5_and_des_work_when_weak_crypto_is_allowed(
    tmp_path: Path, snmptrapd: Trapd, mode: Mode
) -> None:
    engine_id = ENGINE_ID if mode == "trap" else None
    trapd = snmptrapd(communities=[], users=[trapd_user("old", "MD5", "DES", engine_id)])
    receiver = v3(trapd, "old", "MD5", "DES", mode=mode)

    async def scenario() -> Delivery:
        sender = await started(tmp_path, [receiver], allow_weak_crypto=True)
        try:
            delivery = await sender.send(receiver, message())
            await trapd.wait_for_async(1)
            return delivery
        finally:
            await sender.close()

    assert run(scenario()).error is None


@pytest.mark.parametrize(("auth", "priv"), [("MD5", "AES128"), ("SHA", "DES")])
def test_md5_and_des_are_refused_unless_allowed(tmp_path: Path, auth: str, priv: str) -> None:
    receiver = model.Receiver(
        "old", "127.0.0.1", 162, version=Version.V3, user="old",
        auth=model.UsmKey(auth, model.Secret(AUTH_KEY)),
        priv=model.UsmKey(priv, model.Secret(PRIV_KEY)),
    )  # fmt: skip

    async def scenario() -> None:
        sender = Sender(settings(tmp_path), [receiver], started=time.monotonic())
        try:
            await sender.start()
        finally:
            await sender.close()

    weak = auth if auth == "MD5" else priv
    with pytest.raises(ValueError, match=f"{weak} needs allow_weak_crypto: true"):
        run(scenario())


@pytest.mark.parametrize(
    ("wrong", "reason"),
    [
        ({"auth_key": "not-the-key"}, "wrong digest (auth key?)"),
        ({"name": "stranger"}, "unknown user"),
        # Net-SNMP sends no report for a PDU it cannot decrypt: it only logs it.
        ({"priv_key": "not-the-key"}, "timeout"),
    ],
)
def test_v3_inform_failures_say_why(
    tmp_path: Path, snmptrapd: Trapd, wrong: dict[str, Any], reason: str
) -> None:
    user = dataclasses.replace(trapd_user("wd", "SHA256", "AES128", None), **wrong)
    trapd = snmptrapd(communities=[], users=[user])
    receiver = v3(trapd, "wd", "SHA256", "AES128", mode=Mode.INFORM, timeout=0.5)

    scenario = functools.partial(timed_send_once, tmp_path, receiver)

    delivery, took = run(scenario())
    assert delivery == Delivery("nms3", False, False, None, reason)
    assert took < receiver.timeout + 0.2
    assert trapd.notifications == []
    if "priv_key" in wrong:
        assert "error parsing ScopedPDU" in trapd.log


def test_two_receivers_with_one_user_name_and_different_keys(
    tmp_path: Path, snmptrapd: Trapd
) -> None:
    """One USM row per (engine, user): each send must install its own receiver's keys."""
    trapd_a = snmptrapd(communities=[], users=[trapd_user("wd", "SHA", "AES128")])
    other = dataclasses.replace(trapd_user("wd", "SHA512", "AES128"), auth_key="other-key-999")
    trapd_b = snmptrapd(communities=[], users=[other])
    trapd_c = snmptrapd(communities=[], users=[dataclasses.replace(other, engine_id=None)])
    a = v3(trapd_a, "wd", "SHA", "AES128", name="a")
    b = v3(trapd_b, "wd", "SHA512", "AES128", name="b")
    b = dataclasses.replace(b, auth=model.UsmKey("SHA512", model.Secret("other-key-999")))
    c = dataclasses.replace(b, name="c", port=trapd_c.port or 0, mode=Mode.INFORM)

    async def scenario() -> list[Delivery]:
        sender = await started(tmp_path, [a, b, c])
        try:
            results = []
            for sequence in range(1, 4):
                for receiver in (a, b, c):
                    results.append(await sender.send(receiver, message(sequence)))
            for trapd in (trapd_a, trapd_b, trapd_c):
                await trapd.wait_for_async(3)
            return results
        finally:
            await sender.close()

    assert all(d.error is None for d in run(scenario()))
    for trapd in (trapd_a, trapd_b, trapd_c):
        assert [r.payload[f"{dotted(ROOT)}.1.10.0"].text for r in trapd.notifications] == [
            "1",
            "2",
            "3",
        ]


@pytest.mark.parametrize("mode", [Mode.TRAP, Mode.INFORM])
def test_two_receivers_on_one_port_get_one_copy_each_under_their_own_credentials(
    tmp_path: Path, snmptrapd: Trapd, mode: Mode
) -> None:
    engine_id = ENGINE_ID if mode == "trap" else None
    trapd = snmptrapd(users=[trapd_user("wd", "SHA256", "AES128", engine_id)])
    old = v2c(trapd, "old", mode=mode)
    new = v3(trapd, "wd", "SHA256", "AES128", name="new", mode=mode)

    async def scenario() -> None:
        sender = await started(tmp_path, [old, new])
        try:
            for sequence in range(1, 4):
                for receiver in (old, new):
                    delivery = await sender.send(receiver, message(sequence, f"n{sequence}"))
                    assert delivery.error is None
            await trapd.wait_for_async(6)
            await asyncio.sleep(0.2)  # anything extra would have arrived by now
        finally:
            await sender.close()

    run(scenario())
    received = trapd.notifications
    assert len(received) == 6
    for sequence in range(1, 4):
        copies = [r for r in received if r.payload[f"{dotted(ROOT)}.1.1.0"].text == f"n{sequence}"]
        assert sorted((r.version, r.security_name) for r in copies) == [
            ("2c", "public"),
            ("3", "wd"),
        ]


def test_a_trap_and_an_inform_receiver_with_one_community_on_one_port(
    tmp_path: Path, snmptrapd: Trapd
) -> None:
    """The inform's response matches its own request although both share the community."""
    trapd = snmptrapd()
    trap = v2c(trapd, "trap")
    inform = v2c(trapd, "inform", mode=Mode.INFORM)

    async def scenario() -> tuple[Delivery, Delivery]:
        sender = await started(tmp_path, [trap, inform])
        try:
            sent = await sender.send(trap, message(1, "trap"))
            await trapd.wait_for_async(1)
            acknowledged = await sender.send(inform, message(2, "inform"))
            await asyncio.sleep(0.2)  # anything extra would have arrived by now
            return sent, acknowledged
        finally:
            await sender.close()

    sent, acknowledged = run(scenario())
    assert sent == Delivery("trap", True, False, None, None)
    assert acknowledged.error is None
    assert acknowledged.acknowledged
    received = trapd.notifications
    assert [(r.version, r.pdu, r.security_name) for r in received] == [
        ("2c", "TRAP2", "public"),
        ("2c", "INFORM", "public"),
    ]
    check_payload(received[0], "trap", 1)
    check_payload(received[1], "inform", 2)


def test_a_shared_community_outlives_a_removed_receiver_and_follows_a_changed_one(
    tmp_path: Path, snmptrapd: Trapd
) -> None:
    trapd = snmptrapd(communities=["public", "other"])
    trap = v2c(trapd, "trap")
    inform = v2c(trapd, "inform", mode=Mode.INFORM)
    changed = dataclasses.replace(inform, community=model.Secret("other"))

    async def scenario() -> list[Delivery]:
        sender = await started(tmp_path, [trap, inform])
        try:
            await sender.reconfigure([inform])  # the community entry stays for "inform"
            first = await sender.send(inform, message(1))
            await sender.reconfigure([changed, trap])
            second = await sender.send(changed, message(2))
            third = await sender.send(trap, message(3))
            await trapd.wait_for_async(3)
            await asyncio.sleep(0.2)  # anything extra would have arrived by now
            return [first, second, third]
        finally:
            await sender.close()

    first, second, third = run(scenario())
    assert first.acknowledged
    assert second.acknowledged
    assert third.ok
    assert [(r.pdu, r.security_name) for r in trapd.notifications] == [
        ("INFORM", "public"),
        ("INFORM", "other"),
        ("TRAP2", "public"),
    ]


# -- engine ID and boots -------------------------------------------------------------


def test_engine_id_is_generated_once_kept_private_and_reused(
    tmp_path: Path, snmptrapd: Trapd
) -> None:
    state = model.Settings(state_dir=tmp_path / "state")

    async def engine_of(receivers: list[model.Receiver]) -> tuple[bytes, int]:
        sender = Sender(state, receivers, started=time.monotonic() - 1)
        await sender.start()
        try:
            for receiver in receivers:
                assert (await sender.send(receiver, message())).error is None
            return sender.engine_id, sender.engine_boots
        finally:
            await sender.close()

    first, boots1 = run(engine_of([]))
    saved = tmp_path / "state" / "engine-id"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert saved.read_text() == f"0x{first.hex()}\n"
    assert first[:5] == bytes.fromhex("80001f8805")
    assert len(first) == 13

    # After a restart, a receiver that knows the engine from before accepts v3 traps.
    trapd = snmptrapd(communities=[], users=[trapd_user("wd", "SHA", "AES128", first)])
    second, boots2 = run(engine_of([v3(trapd, "wd", "SHA", "AES128")]))
    assert second == first
    assert boots2 == boots1 + 1
    boots_file = tmp_path / "state" / "engine-boots"
    assert boots_file.read_text().startswith(f"0x{first.hex()} {boots2} ")
    assert stat.S_IMODE(boots_file.stat().st_mode) == 0o600
    (got,) = trapd.wait_for(1)
    assert got.security_name == "wd"


def test_v3_messages_carry_our_engine_id_and_boots_and_nothing_goes_to_tmpdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))  # where pysnmp would keep boots
    identity.next_boots(tmp_path / "state", ENGINE_ID)
    identity.next_boots(tmp_path / "state", ENGINE_ID)

    async def scenario() -> bytes:
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
            sink.bind(("127.0.0.1", 0))
            sink.setblocking(False)
            receiver = model.Receiver(
                "raw", "127.0.0.1", sink.getsockname()[1], version=Version.V3, user="wd"
            )
            sender = await started(tmp_path, [receiver])
            try:
                assert (await sender.send(receiver, message())).ok
                data, _ = await loop.sock_recvfrom(sink, 65536)
                return data
            finally:
                await sender.close()

    packet = run(scenario())
    whole, _ = ber_decoder.decode(packet, asn1Spec=SNMPv3Message())
    usm, _ = ber_decoder.decode(whole["msgSecurityParameters"], asn1Spec=UsmSecurityParameters())
    assert bytes(usm["msgAuthoritativeEngineId"]) == ENGINE_ID
    assert int(usm["msgAuthoritativeEngineBoots"]) == 3
    assert 0 <= int(usm["msgAuthoritativeEngineTime"]) < 5
    assert bytes(usm["msgUserName"]) == b"wd"
    assert list(tmpdir.iterdir()) == []


def test_a_configured_engine_id_wins_and_restarts_its_boots(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    identity.next_boots(state_dir, bytes.fromhex("80001f880511111111"))
    identity.next_boots(state_dir, bytes.fromhex("80001f880511111111"))

    async def scenario() -> tuple[bytes, int]:
        sender = Sender(settings(tmp_path), [], started=time.monotonic())
        await sender.start()
        try:
            return sender.engine_id, sender.engine_boots
        finally:
            await sender.close()

    assert run(scenario()) == (ENGINE_ID, 1)
    assert not (state_dir / "engine-id").exists()


def test_a_damaged_engine_id_file_is_an_error_not_a_new_identity(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "engine-id").write_text("0xzz\n")
    with pytest.raises(WatchdogError, match="not an SNMP engine ID"):
        identity.load_engine_id(state_dir, None)
    assert (state_dir / "engine-id").read_text() == "0xzz\n"


# -- reconfiguration -------------------------------------------------------------


def test_reconfigure_applies_new_credentials(tmp_path: Path, snmptrapd: Trapd) -> None:
    trapd = snmptrapd(communities=["public", "newer"])
    before = v2c(trapd)
    after = dataclasses.replace(before, community=model.Secret("newer"), mode=Mode.INFORM)

    async def scenario() -> list[Delivery]:
        sender = await started(tmp_path, [before])
        try:
            first = await sender.send(before, message(1))
            await sender.reconfigure([after])
            second = await sender.send(after, message(2))
            await trapd.wait_for_async(2)
            return [first, second]
        finally:
            await sender.close()

    first, second = run(scenario())
    assert first.ok
    assert second.acknowledged
    assert [(r.security_name, r.pdu) for r in trapd.notifications] == [
        ("public", "TRAP2"),
        ("newer", "INFORM"),
    ]


# -- the dispatcher ------------------------------------------------------------------


def dispatcher(sender: Sender, receivers: list[model.Receiver]) -> Dispatcher:
    return Dispatcher(
        sender,
        receivers,
        log=logging.getLogger("snmp_watchdog.test"),
        backoff_initial=0.05,
        backoff_max=0.2,
        backoff_jitter=0.02,
    )


def test_a_dead_receiver_does_not_delay_a_live_one(tmp_path: Path, snmptrapd: Trapd) -> None:
    trapd = snmptrapd()
    live = v2c(trapd, "live", mode=Mode.INFORM)
    dead = model.Receiver(
        "dead", "127.0.0.1", free_udp_port(), mode=Mode.INFORM,
        community=model.Secret("public"), timeout=1.0,
    )  # fmt: skip

    async def scenario() -> tuple[float, int]:
        sender = await started(tmp_path, [live, dead])
        outbox = dispatcher(sender, [live, dead])
        try:
            began = time.monotonic()
            for sequence in range(1, 6):
                outbox.submit(message(sequence), ["dead", "live"])
            await trapd.wait_for_async(5)
            took = time.monotonic() - began
            return took, outbox.pending("dead")
        finally:
            await outbox.close()
            await sender.close()

    took, dead_pending = run(scenario())
    assert took < 0.5  # the dead receiver's first attempt alone takes 1 s
    assert dead_pending == 5
    sequences = [r.payload[f"{dotted(ROOT)}.1.10.0"].text for r in trapd.notifications]
    assert sequences == ["1", "2", "3", "4", "5"]  # in order


def test_an_inform_is_retried_until_a_late_receiver_acknowledges_it(
    tmp_path: Path, snmptrapd: Trapd, caplog: pytest.LogCaptureFixture
) -> None:
    trapd = snmptrapd(start=False, port=free_udp_port())
    receiver = v2c(trapd, mode=Mode.INFORM, timeout=0.2)

    async def scenario() -> int:
        sender = await started(tmp_path, [receiver])
        outbox = dispatcher(sender, [receiver])
        try:
            outbox.submit(message(1), ["nms"])
            outbox.submit(message(2), ["nms"])
            await asyncio.sleep(0.6)
            await asyncio.to_thread(trapd.start)
            await outbox.drain(5)
            return outbox.pending()
        finally:
            await outbox.close()
            await sender.close()

    with caplog.at_level(logging.INFO, logger="snmp_watchdog.test"):
        assert run(scenario()) == 0
    sequences = [r.payload[f"{dotted(ROOT)}.1.10.0"].text for r in trapd.notifications]
    assert sequences[-2:] == ["1", "2"]
    assert set(sequences) == {"1", "2"}
    lines = [r.getMessage() for r in caplog.records]
    assert any(
        line.startswith("test #1 to nms not acknowledged (attempt 1): timeout; next attempt in ")
        for line in lines
    )
    assert any(line.startswith("test #1 to nms acknowledged in ") for line in lines)
    assert any(line.startswith("test #2 to nms acknowledged in ") for line in lines)


def test_an_inform_is_given_up_after_give_up_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = model.Receiver(
        "dead", "127.0.0.1", free_udp_port(), mode=Mode.INFORM,
        community=model.Secret("public"), timeout=0.1, give_up_after=0.5,
    )  # fmt: skip

    async def scenario() -> tuple[int, float]:
        sender = await started(tmp_path, [receiver])
        outbox = dispatcher(sender, [receiver])
        try:
            began = time.monotonic()
            outbox.submit(message(1), ["dead"])
            await outbox.drain(3)
            return outbox.pending(), time.monotonic() - began
        finally:
            await outbox.close()
            await sender.close()

    with caplog.at_level(logging.INFO, logger="snmp_watchdog.test"):
        pending, took = run(scenario())
    assert pending == 0
    assert 0.3 < took < 1.0
    lines = [r.getMessage() for r in caplog.records]
    failures = [line for line in lines if "not acknowledged" in line]
    assert len(failures) >= 2
    (gave_up,) = [line for line in lines if "given up" in line]
    assert gave_up.startswith("test #1 to dead given up after ")
    assert gave_up.endswith(": timeout")


def test_traps_are_sent_once(
    tmp_path: Path, snmptrapd: Trapd, caplog: pytest.LogCaptureFixture
) -> None:
    trapd = snmptrapd()
    receiver = v2c(trapd)

    async def scenario() -> None:
        sender = await started(tmp_path, [receiver])
        outbox = dispatcher(sender, [receiver])
        try:
            outbox.submit(message(1), ["nms", "unknown"])
            await outbox.drain(2)
            await trapd.wait_for_async(1)
            await asyncio.sleep(0.1)
        finally:
            await outbox.close()
            await sender.close()

    with caplog.at_level(logging.INFO, logger="snmp_watchdog.test"):
        run(scenario())
    assert len(trapd.notifications) == 1
    lines = [r.getMessage() for r in caplog.records]
    assert "test #1: no receiver named 'unknown'" in lines
    assert "test #1 sent to nms" in lines


def test_a_receiver_removed_by_a_reload_loses_its_queue(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dead = model.Receiver(
        "dead", "127.0.0.1", free_udp_port(), mode=Mode.INFORM,
        community=model.Secret("public"), timeout=0.5,
    )  # fmt: skip

    async def scenario() -> int:
        sender = await started(tmp_path, [dead])
        outbox = dispatcher(sender, [dead])
        try:
            outbox.submit(message(1), ["dead"])
            outbox.submit(message(2), ["dead"])
            await asyncio.sleep(0.1)
            await outbox.reconfigure([])
            await outbox.drain(1)
            outbox.submit(message(3), ["dead"])
            return outbox.pending()
        finally:
            await outbox.close()
            await sender.close()

    with caplog.at_level(logging.INFO, logger="snmp_watchdog.test"):
        assert run(scenario()) == 0
    lines = [r.getMessage() for r in caplog.records]
    assert "receiver dead removed: 2 notification(s) for it dropped" in lines
    assert "test #3: no receiver named 'dead'" in lines


# -- host names that do not resolve, workers that die ----------------------------------


async def until_logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    """Wait until a log record holds ``text``."""
    for _ in range(1000):
        if any(text in r.getMessage() for r in caplog.records):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"nothing logged with {text!r}")


def test_a_host_name_the_resolver_refuses_fails_only_its_own_sends(
    tmp_path: Path, snmptrapd: Trapd, caplog: pytest.LogCaptureFixture
) -> None:
    trapd = snmptrapd()
    good = v2c(trapd, "good")
    bad = v2c(trapd, "bad", host="mail..example.com")  # the IDNA codec raises UnicodeError

    async def scenario() -> tuple[Delivery, Delivery]:
        sender = await started(tmp_path, [bad, good])  # does not raise
        try:
            return await sender.send(bad, message(1)), await sender.send(good, message(2))
        finally:
            await sender.close()

    with caplog.at_level(logging.WARNING, logger="snmp_watchdog"):
        failed, sent = run(scenario())
    assert failed.unsent
    assert not failed.ok
    assert failed.error is not None
    # The same few words as a check of that host gives (resolver.py).
    assert (
        failed.error
        == "cannot resolve mail..example.com: not a valid host name: label empty or too long"
    )
    assert sent.ok
    (got,) = trapd.wait_for(1)
    assert got.payload[f"{dotted(ROOT)}.1.10.0"].text == "2"
    assert any(
        r.getMessage().startswith("receiver bad: cannot resolve mail..example.com: ")
        for r in caplog.records
    )


def test_a_trap_waits_in_its_queue_until_the_receiver_has_an_address(
    tmp_path: Path, snmptrapd: Trapd, caplog: pytest.LogCaptureFixture
) -> None:
    trapd = snmptrapd()
    fixed = v2c(trapd, "nms")
    broken = dataclasses.replace(fixed, host="nms..example.com")

    async def scenario() -> tuple[int, int]:
        sender = await started(tmp_path, [broken])
        outbox = dispatcher(sender, [broken])
        try:
            outbox.submit(message(1), ["nms"])
            await until_logged(caplog, "(attempt 3)")
            waiting = outbox.pending("nms")
            await outbox.reconfigure([fixed])  # the operator fixes the name
            await outbox.drain(5)
            return waiting, outbox.pending("nms")
        finally:
            await outbox.close()
            await sender.close()

    with caplog.at_level(logging.INFO, logger="snmp_watchdog.test"):
        waiting, left = run(scenario())
    assert (waiting, left) == (1, 0)
    (got,) = trapd.wait_for(1)
    assert got.pdu == "TRAP2"
    lines = [r.getMessage() for r in caplog.records]
    assert any(
        line.startswith("test #1 to nms not sent (attempt 1): cannot resolve nms..example.com")
        for line in lines
    )
    assert "test #1 sent to nms" in lines


def test_a_worker_that_dies_is_logged_and_started_again(
    tmp_path: Path, snmptrapd: Trapd, caplog: pytest.LogCaptureFixture
) -> None:
    trapd = snmptrapd()
    receiver = v2c(trapd, mode=Mode.INFORM)

    async def scenario() -> tuple[int, int]:
        # Not started yet: the worker's first send raises RuntimeError and kills it.
        sender = Sender(settings(tmp_path), [receiver], started=time.monotonic())
        outbox = Dispatcher(
            sender, [receiver], log=logging.getLogger("snmp_watchdog.test"), restart_delay=0.2
        )
        try:
            outbox.submit(message(1), ["nms"])
            await until_logged(caplog, "internal error")
            waiting = outbox.pending()
            await sender.start()
            await outbox.drain(5)
            return waiting, outbox.pending()
        finally:
            await outbox.close()
            await sender.close()

    with caplog.at_level(logging.INFO, logger="snmp_watchdog.test"):
        waiting, left = run(scenario())
    assert (waiting, left) == (1, 0)
    (got,) = trapd.wait_for(1)
    assert got.pdu == "INFORM"
    (died,) = [r for r in caplog.records if "internal error" in r.getMessage()]
    assert died.levelno == logging.ERROR
    assert died.getMessage() == (
        "delivery to nms stopped by an internal error; 1 notification(s) wait, restarting it in 0 s"
    )
    assert died.exc_info is not None
    assert isinstance(died.exc_info[1], RuntimeError)
    messages = [r.getMessage() for r in caplog.records]
    assert "delivery to nms restarted" in messages
    assert any(m.startswith("test #1 to nms acknowledged in ") for m in messages)


def test_the_protocol_table_names_pysnmp_s_protocols() -> None:
    """Each name of ``snmp``'s tables is the pysnmp protocol of that name, and the weak
    ones are exactly MD5 and DES (AES192/AES256 are Blumenthal's, the C forms Reeder's)."""
    expected = {
        "SHA": pysnmp_config.USM_AUTH_HMAC96_SHA,
        "SHA224": pysnmp_config.USM_AUTH_HMAC128_SHA224,
        "SHA256": pysnmp_config.USM_AUTH_HMAC192_SHA256,
        "SHA384": pysnmp_config.USM_AUTH_HMAC256_SHA384,
        "SHA512": pysnmp_config.USM_AUTH_HMAC384_SHA512,
        "MD5": pysnmp_config.USM_AUTH_HMAC96_MD5,
        "AES128": pysnmp_config.USM_PRIV_CFB128_AES,
        "AES192": pysnmp_config.USM_PRIV_CFB192_AES_BLUMENTHAL,
        "AES256": pysnmp_config.USM_PRIV_CFB256_AES_BLUMENTHAL,
        "AES192C": pysnmp_config.USM_PRIV_CFB192_AES,
        "AES256C": pysnmp_config.USM_PRIV_CFB256_AES,
        "DES": pysnmp_config.USM_PRIV_CBC56_DES,
    }
    table = {**snmp.AUTH_PROTOCOLS, **snmp.PRIV_PROTOCOLS}
    assert {name: protocol.oid for name, protocol in table.items()} == {
        name: tuple(oid) for name, oid in expected.items()
    }
    assert {name for name, protocol in table.items() if protocol.weak} == {"MD5", "DES"}
    # Net-SNMP's names (createUser), as snmptrapd accepts them.
    assert {name: protocol.netsnmp for name, protocol in table.items()} == {
        "SHA": "SHA",
        "SHA224": "SHA-224",
        "SHA256": "SHA-256",
        "SHA384": "SHA-384",
        "SHA512": "SHA-512",
        "MD5": "MD5",
        "AES128": "AES",
        "AES192": "AES-192",
        "AES256": "AES-256",
        "AES192C": "AES192C",
        "AES256C": "AES256C",
        "DES": "DES",
    }


def test_a_notification_that_keeps_killing_delivery_is_given_up_at_its_deadline(
    tmp_path: Path, snmptrapd: Trapd, caplog: pytest.LogCaptureFixture
) -> None:
    trapd = snmptrapd()
    receiver = v2c(trapd, give_up_after=0.5)
    o = (*ROOT, 1)
    # A value that is not an SNMP type: no encoding of it can ever succeed.
    poison = Message(NOTIFICATION, (((*o, 1, 0), object()),), "test", 1, None)

    async def scenario() -> int:
        sender = await started(tmp_path, [receiver])
        outbox = Dispatcher(
            sender, [receiver], log=logging.getLogger("snmp_watchdog.test"), restart_delay=0.1
        )
        try:
            outbox.submit(poison, ["nms"])
            outbox.submit(message(2), ["nms"])
            await outbox.drain(10)
            return outbox.pending()
        finally:
            await outbox.close()
            await sender.close()

    with caplog.at_level(logging.INFO, logger="snmp_watchdog.test"):
        left = run(scenario())
    assert left == 0
    (got,) = trapd.wait_for(1)
    check_payload(got, sequence=2)  # the one behind it was delivered
    messages = [r.getMessage() for r in caplog.records]
    died = [m for m in messages if m.startswith("delivery to nms stopped by an internal error")]
    # 0.1 s, then 0.2, 0.4, ... until the poison is older than its 0.5 s.
    assert died[:3] == [
        "delivery to nms stopped by an internal error; 2 notification(s) wait, "
        f"restarting it in {d:.0f} s"
        for d in (0.1, 0.2, 0.4)
    ]
    (gave_up,) = [m for m in messages if "given up" in m]
    assert gave_up.startswith(f"test #1 to nms given up after {len(died)} attempt(s) in ")
    assert "delivery stopped by an internal error: " in gave_up
    assert died[-1].endswith("1 notification(s) wait, restarting it in 0 s")
