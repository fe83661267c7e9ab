"""What a Down told, kept to close it when its service leaves the file while stopped."""

from __future__ import annotations

import pytest

from snmp_watchdog import model
from snmp_watchdog.notify.told import decode_told, encode_told, told_after
from snmp_watchdog.reasons import Reason
from snmp_watchdog.state import Kind, Notification, State

MAIL = model.Service(
    name="mail",
    host="mx.example.net",
    port=587,
    check=model.CheckKind.SMTP,
    receivers=("nnmi", "zabbix"),
)


def note(kind: Kind, state: State) -> Notification:
    return Notification(
        kind=kind,
        state=state,
        previous=State.UP if state is State.DOWN else State.DOWN,
        reason=Reason.OK if state is not State.DOWN else Reason.REFUSED,
        detail="",
        count=2,
        elapsed=0.01,
        at=5.0,
    )


def test_what_a_down_told_comes_back_as_the_service_its_up_describes() -> None:
    told = decode_told("mail", encode_told(MAIL, ("zabbix",)))
    assert told.receivers == ("zabbix",)
    svc = told.service
    assert (svc.name, svc.host, svc.port, svc.check) == ("mail", "mx.example.net", 587, MAIL.check)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"host": "h", "port": 1, "check": "smtp"}',
        '{"host": "h", "port": "x", "check": "smtp", "receivers": []}',
        '{"host": "h", "port": 1, "check": "gopher", "receivers": []}',
        '{"host": "h", "port": 1, "check": "smtp", "receivers": "nms"}',
        '{"host": "h", "port": 1, "check": "smtp", "receivers": [1]}',
    ],
)
def test_an_unreadable_saved_down_is_a_value_error_naming_the_service(text: str) -> None:
    with pytest.raises(ValueError, match="not a saved Down of 'mail'"):
        decode_told("mail", text)


def test_a_down_leaves_every_receiver_of_the_service_holding_it() -> None:
    down = note(Kind.DOWN, State.DOWN)
    for flags, targets in (("normal", MAIL.receivers), ("added", ("zabbix",))):
        text = told_after(MAIL, down, flags, targets)
        assert text is not None
        assert decode_told("mail", text).receivers == ("nnmi", "zabbix")


def test_an_up_closes_it_for_all_and_a_removed_up_only_for_those_it_went_to() -> None:
    up = note(Kind.UP, State.UP)
    assert told_after(MAIL, up, "normal", MAIL.receivers) is None
    closing = note(Kind.UP, State.UNKNOWN)
    assert told_after(MAIL, closing, "removed", MAIL.receivers) is None
    left = told_after(MAIL, closing, "removed", ("nnmi",))
    assert left is not None
    assert decode_told("mail", left).receivers == ("zabbix",)
