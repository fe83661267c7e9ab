"""What every check shares below its conversation: names, TLS contexts, closing.

Rules:

- **Names.** A host that is an IP address is used as it is. A name is
  resolved at check time (``resolver.getaddrinfo``, shared with the SNMP
  sender); whatever the resolver raises (a name that cannot be encoded such as
  ``mail..example.com`` included) becomes a ``socket.gaierror`` saying why,
  which ``reason_for_error`` maps to ``dns``. A resolution still running when
  the check's deadline passes is ``dns`` as well: the cancellation that ends it
  is marked (:func:`resolving`), and ``run_check`` reports ``dns`` for it.
- **TLS contexts.** One factory, :func:`client_context`, for every check:
  ``ssl.create_default_context`` with ``ca_file`` (the system store without
  one), TLS 1.2 at least; ``tls_verify: false`` turns off the chain and name
  checks and ignores ``ca_file``. Contexts are cached per ``(ca_file,
  tls_verify)``; the file is looked at (``stat``) on every use, and read again
  when its inode, size or modification time changed, so a renewed bundle or a
  reload takes effect at the next check.
- **A CA file that cannot be used** (gone, unreadable, no certificate in it)
  is a problem of this machine's configuration, not an outage of the
  service: it is logged once as an ERROR naming the file (again only when the
  problem changes, and a line says when it is usable again), checks go on with
  the last context read from it, and when there never was one the check raises
  :class:`~snmp_watchdog.exceptions.LocalProblem`: no verdict, the service
  keeps its state.
- **Closing after the verdict.** :func:`close_after_verdict` starts a clean
  close (FIN, TLS close_notify) and lets it finish in the background, at most
  :data:`CLOSE_GRACE`, then aborts: a peer that never answers the close costs
  a socket for half a second, never the check's result or its deadline.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from snmp_watchdog.exceptions import LocalProblem
from snmp_watchdog.model import Service
from snmp_watchdog.resolver import getaddrinfo

log = logging.getLogger("snmp_watchdog")

#: A socket address of AF_INET or AF_INET6.
Address = tuple[str, int] | tuple[str, int, int, int]

#: Longest wait for the peer's side of a clean close once the verdict is known.
CLOSE_GRACE = 0.5

#: The attribute of a cancellation that interrupted a name resolution: the name.
_RESOLVING = "_snmp_watchdog_resolving"


# -- names ---------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def literal_family(host: str) -> int:
    """The address family of an IP address literal, 0 for a name to resolve."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return family
    return 0


async def resolve(host: str, port: int) -> list[tuple[int, Address]]:
    """The addresses to try for ``host``, in the resolver's order; ``socket.gaierror`` if none."""
    family = literal_family(host)
    if family:
        return [(family, (host, port))]
    try:
        infos = await getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except asyncio.CancelledError as exc:
        vars(exc)[_RESOLVING] = host
        raise
    # AF_INET and AF_INET6 only: their addresses start with the host as text.
    addresses: list[tuple[int, Address]] = [
        (info[0], cast(Address, info[4]))
        for info in infos
        if info[0] in (socket.AF_INET, socket.AF_INET6)
    ]
    if not addresses:
        raise socket.gaierror(socket.EAI_NODATA, "no IPv4 or IPv6 address")
    return addresses


def resolving(exc: BaseException | None) -> str | None:
    """The host name whose resolution the cancellation ``exc`` interrupted, if any."""
    if exc is None:
        return None
    host = vars(exc).get(_RESOLVING)
    return host if isinstance(host, str) else None


async def connected_socket(
    loop: asyncio.AbstractEventLoop, family: int, address: Address
) -> socket.socket:
    """A socket connected to ``address`` (closed again if that fails or is cancelled)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


# -- TLS contexts ----------------------------------------------------------------

#: What identifies one version of a CA file, or why it could not be looked at.
_Seen = tuple[int, int, int, int] | str


@dataclass(slots=True)
class _Entry:
    seen: _Seen | None = None  # the version of the file last examined
    context: ssl.SSLContext | None = None  # the last context built from a good version
    problem: str | None = None  # the problem last logged, while it lasts


_contexts: dict[tuple[Path | None, bool], _Entry] = {}


def build_context(ca_file: Path | None, verify: bool) -> ssl.SSLContext:
    """A new client context: TLS 1.2 at least, ``ca_file`` (else the system's CAs) trusted.

    The one recipe of a check's context; ``check-config`` builds one to prove a
    ``ca_file`` usable. Raises ``OSError`` or ``ssl.SSLError`` when it is not.
    """
    context = ssl.create_default_context(cafile=ca_file if verify else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context(service: Service) -> ssl.SSLContext:
    """The (cached, shared, never to be modified) client context for ``service``.

    Raises ``LocalProblem`` when its ``ca_file`` cannot be used and never could.
    """
    verify = service.tls_verify
    ca_file = service.ca_file if verify else None
    entry = _contexts.setdefault((ca_file, verify), _Entry())
    if ca_file is None:
        if entry.context is None:
            entry.context = build_context(None, verify)
        return entry.context
    seen: _Seen
    try:
        st = os.stat(ca_file)
        seen = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError as exc:
        seen = f"cannot read it: {exc.strerror or exc}"
    if seen != entry.seen:
        entry.seen = seen
        problem = seen if isinstance(seen, str) else None
        if problem is None:
            try:
                context = build_context(ca_file, verify)
            except (OSError, ssl.SSLError) as exc:
                problem = f"cannot use it: {_why(exc)}"
            else:
                if entry.problem is not None:
                    log.info("ca_file %s is usable again", ca_file)
                entry.context, entry.problem = context, None
        if problem is not None and problem != entry.problem:
            entry.problem = problem
            then = (
                "checks go on with the certificates read from it before"
                if entry.context is not None
                else "services that use it are not checked until it is fixed"
            )
            log.error("configuration problem: ca_file %s: %s; %s", ca_file, problem, then)
    if entry.context is None:
        raise LocalProblem(f"ca_file {ca_file}: {entry.problem}")
    return entry.context


def _why(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"no usable certificate in it ({exc.reason or exc})"
    return exc.strerror or str(exc)


# -- closing ------------------------------------------------------------------

#: Closes under way, so that their tasks are not collected before they end.
_closing: set[asyncio.Task[None]] = set()


def close_after_verdict(transport: asyncio.Transport, closed: Awaitable[None]) -> None:
    """Close ``transport`` cleanly in the background; abort it if ``closed`` (what
    completes once the connection is gone) takes longer than :data:`CLOSE_GRACE`.

    A transport already closing is not closed again: asyncio's TLS transport
    forgets its protocol on a second close(), and could then not be aborted.
    """
    if not transport.is_closing():
        transport.close()
    task = asyncio.get_running_loop().create_task(_finish_close(transport, closed))
    _closing.add(task)
    task.add_done_callback(_closing.discard)


async def _finish_close(transport: asyncio.Transport, closed: Awaitable[None]) -> None:
    gone = False
    try:
        async with asyncio.timeout(CLOSE_GRACE):
            await closed
        gone = True
    except TimeoutError:
        pass
    except OSError:  # a reset or a TLS alert on the way out: gone all the same
        gone = True
    finally:
        if not gone:  # the grace passed, or the loop is shutting down
            transport.abort()
