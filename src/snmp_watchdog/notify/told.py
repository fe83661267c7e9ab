"""What the receivers were told with a service's last Down, kept to close it later.

A receiver told that a service is Down keeps that problem open until an Up
comes. When the service leaves the configuration while the daemon runs, the
reload sends that Up (flagged ``removed``, state ``unknown``) from the
configuration it still holds. When it leaves while the daemon is stopped,
the configuration read at the next start knows nothing of it: so each Down
is saved with what its closing Up needs (the state store's ``told``, beside
the service's state, in the transaction that queues the Down): the service's
host, port and check kind (the varbinds besides the name) and the receivers
that were told.

The text is JSON: ``{"host": ..., "port": ..., "check": ..., "receivers":
[...]}``. ``told`` of ``None`` means the receivers are told nothing more of
the service (no Down, or all closed already).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from snmp_watchdog import model, state


@dataclass(frozen=True, slots=True)
class Told:
    """The service as its last Down described it, and the receivers that got it."""

    service: model.Service  # name, host, port and check kind as in the Down
    receivers: tuple[str, ...]


def encode_told(svc: model.Service, receivers: tuple[str, ...]) -> str:
    """The ``told`` text of ``svc`` when ``receivers`` hold a Down of it."""
    doc = {
        "host": svc.host,
        "port": svc.port,
        "check": svc.check.value,
        "receivers": list(receivers),
    }
    return json.dumps(doc, separators=(",", ":"))


def decode_told(name: str, text: str) -> Told:
    """The inverse of ``encode_told`` for service ``name``; ``ValueError`` when unreadable."""
    try:
        doc = json.loads(text)
        receivers = doc["receivers"]
        if not isinstance(receivers, list) or not all(isinstance(r, str) for r in receivers):
            raise TypeError("receivers is not a list of names")
        service = model.Service(
            name=name,
            host=str(doc["host"]),
            port=int(doc["port"]),
            check=model.CheckKind(doc["check"]),
            receivers=tuple(receivers),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a saved Down of {name!r}: {exc}") from exc
    return Told(service, service.receivers)


def told_after(
    svc: model.Service, note: state.Notification, flags: str, targets: tuple[str, ...]
) -> str | None:
    """The ``told`` of ``svc`` once ``note``, a Down or an Up, went to ``targets``.

    A Down (normal, reminder, or ``added`` by a reload) leaves every receiver
    of the service holding it; an Up flagged ``removed`` closes it for
    ``targets`` only (a reload took them from the service), the others still
    hold it; any other Up closes it for all.
    """
    if note.kind is state.Kind.DOWN:
        return encode_told(svc, svc.receivers)
    if flags == "removed":
        left = tuple(r for r in svc.receivers if r not in targets)
        return encode_told(svc, left) if left else None
    return None
