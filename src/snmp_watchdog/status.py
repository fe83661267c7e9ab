"""``watchdog status``: the state of every service, read from the state store.

It opens the database read-only, so it works beside a running daemon. Secrets
never appear: the ``createUser`` lines a receiver needs name the keys, they do
not print them.
"""

from __future__ import annotations

import json
import socket
import time
from datetime import UTC, datetime
from typing import Any

from snmp_watchdog import model
from snmp_watchdog.notify.engine import format_engine_id, parse_engine_id, saved_engine_id
from snmp_watchdog.snmp import AUTH_PROTOCOLS, PRIV_PROTOCOLS, Version
from snmp_watchdog.state import ServiceState
from snmp_watchdog.store import ENGINE_ID_IN_USE, Store


def create_user_line(receiver: model.Receiver, engine_id: bytes | None) -> str | None:
    """The snmptrapd.conf line a v3 receiver needs, with key placeholders."""
    if receiver.version != Version.V3 or receiver.user is None:
        return None
    parts = ["createUser"]
    if not receiver.informs:  # we are authoritative for traps, the receiver for informs
        parts += ["-e", format_engine_id(engine_id) if engine_id else "ENGINE_ID"]
    parts.append(receiver.user)
    if receiver.auth is not None:
        parts += [AUTH_PROTOCOLS[receiver.auth.protocol].netsnmp, "AUTH_KEY"]
    if receiver.priv is not None:
        parts += [PRIV_PROTOCOLS[receiver.priv.protocol].netsnmp, "PRIV_KEY"]
    return " ".join(parts)


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def collect(config: model.Config) -> dict[str, Any]:
    """Everything ``status`` shows, as plain data (what ``--json`` prints)."""
    settings = config.settings
    # The engine ID the next start will use; the daemon records the one it runs with,
    # which differs after an edit of engine_id that only a restart applies.
    next_start = saved_engine_id(settings.state_dir, settings.engine_id)
    in_use: str | None = None
    states: dict[str, ServiceState] = {}
    pending: dict[str, int] = {}
    cluster: dict[str, Any] | None = None
    owners: dict[str, Any] = {}
    deliverers: dict[str, str] = {}
    if settings.store is not None:
        from snmp_watchdog import cluster_status  # noqa: PLC0415 (needs psycopg)

        shared = cluster_status.read(settings)
        states, pending, owners = shared.states, shared.pending, shared.owners
        deliverers = shared.deliverers
        cluster = {
            "node": settings.node or socket.gethostname(),
            "nodes": [
                {
                    "name": n.node,
                    "live": n.live,
                    "lease_until": _iso(n.expires_at),
                    "renewed": _iso(n.renewed_at),
                    "services": sum(
                        1
                        for s in config.services
                        if getattr(owners.get(s.name), "node", "") == n.node
                    ),
                    "receivers": [
                        r.name
                        for r in config.receivers
                        if getattr(owners.get(f"@{r.name}"), "node", "") == n.node
                    ],
                }
                for n in shared.nodes
            ],
        }
    elif (settings.state_dir / "state.db").exists():
        now = time.time()
        with Store.open(settings.state_dir, readonly=True) as store:
            states = store.load_states(mono_now=now, wall_now=now)
            pending = store.pending_counts()
            in_use = store.meta_get(ENGINE_ID_IN_USE)
    at_next_start = format_engine_id(next_start) if next_start else None
    engine = in_use or at_next_start
    engine_id = parse_engine_id(engine) if engine else None
    services = []
    for svc in config.services:
        st = states.get(svc.name, ServiceState())
        services.append(
            {
                "name": svc.name,
                "host": svc.host,
                "port": svc.port,
                "check": svc.check.value,
                "state": st.state.value,
                "since": _iso(st.since),
                "last_check": _iso(st.last_check),
                "reason": st.last_reason.code if st.last_reason is not None else None,
                "detail": st.last_detail,
                "response_ms": round(st.last_elapsed * 1000.0, 1),
                "checks": st.checks,
                "failed_checks": st.failed_checks,
                "consecutive_failures": st.failures,
                "consecutive_successes": st.successes,
                "flapping": st.flapping,
                "notified": st.notified.value,
            }
        )
        if cluster is not None:
            owner = owners.get(svc.name)
            services[-1]["owner"] = owner.node if owner is not None else None
            services[-1]["epoch"] = owner.epoch if owner is not None else None
    receivers = [
        {
            "name": r.name,
            "address": f"{r.host}:{r.port}",
            "version": r.version,
            "mode": r.mode,
            "pending": pending.get(r.name, 0),
            "create_user": create_user_line(r, engine_id),
        }
        for r in config.receivers
    ]
    if cluster is not None:
        for entry in receivers:
            # Its owner may differ for a moment: the old one finishes its send, then hands over.
            entry["delivered_by"] = deliverers.get(str(entry["name"]))
    configured = {r.name for r in config.receivers}
    data: dict[str, Any] = {
        "engine_id": engine,
        "engine_id_at_next_start": at_next_start if at_next_start != engine else None,
        "services": services,
        "receivers": receivers,
        # Informs queued for receivers no longer in the file: discarded at the next start.
        "unconfigured_pending": {k: v for k, v in sorted(pending.items()) if k not in configured},
    }
    if cluster is not None:
        data["cluster"] = cluster
    return data


def render(data: dict[str, Any]) -> str:
    lines = []
    cluster = data.get("cluster")
    rows: list[tuple[str, ...]] = [
        ("SERVICE", "STATE", "SINCE", "LAST CHECK", "REASON", "MS", "CHECKS", "FAILED")
    ]
    if cluster is not None:
        rows[0] += ("OWNER",)
    for s in data["services"]:
        state = s["state"] + (" (flapping)" if s["flapping"] else "")
        row: tuple[str, ...] = (
            s["name"],
            state,
            s["since"] or "-",
            s["last_check"] or "-",
            s["reason"] or "-",
            f"{s['response_ms']:.1f}",
            str(s["checks"]),
            str(s["failed_checks"]),
        )
        if cluster is not None:
            row += (s["owner"] or "-",)
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    down = [s for s in data["services"] if s["state"] == "down" and s["detail"]]
    for s in down:
        lines.append(f"{s['name']}: {s['reason']}: {s['detail']}")
    lines.append("")
    if cluster is not None:
        for n in cluster["nodes"]:
            lease = "live" if n["live"] else "lease expired"
            lines.append(
                f"node {n['name']}: {lease} (until {n['lease_until']}), {n['services']} "
                f"service(s), delivers to {', '.join(n['receivers']) or 'no receiver'}"
            )
        if not cluster["nodes"]:
            lines.append("no node has joined yet")
        lines.append(f"this is node {cluster['node']}; its own SNMP engine ID:")
    engine = data["engine_id"] or "not generated yet (the daemon creates it at its first start)"
    lines.append(f"SNMP engine ID: {engine}")
    if data["engine_id_at_next_start"]:
        lines.append(
            f"  after the next restart: {data['engine_id_at_next_start']} "
            "(the file's engine_id; receivers of v3 traps need new createUser lines then)"
        )
    for r in data["receivers"]:
        line = (
            f"receiver {r['name']} ({r['address']}, v{r['version']} {r['mode']}): "
            f"{r['pending']} notification(s) not yet delivered"
        )
        if "delivered_by" in r:
            holder = r["delivered_by"]
            line += f", by node {holder}" if holder else ", no node delivering now"
        lines.append(line)
        if r["create_user"]:
            lines.append(f"  snmptrapd.conf: {r['create_user']}")
    for name, count in data["unconfigured_pending"].items():
        lines.append(
            f"receiver {name} (no longer configured): {count} notification(s) not yet "
            "delivered, discarded at the next start"
        )
    return "\n".join(lines)


def to_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2)
