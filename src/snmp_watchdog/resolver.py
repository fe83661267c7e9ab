"""Host name lookups for checks and receivers alike (a leaf module).

:func:`getaddrinfo` is the event loop's ``getaddrinfo`` with one rule for
failures: whatever the resolver raises becomes a ``socket.gaierror`` whose
``strerror`` says why in a few words, ready for a check's detail or a log
line:

- ``socket.gaierror`` as it is (``Name or service not known``, also for a
  name with a NUL in it);
- ``UnicodeError``, a name the IDNA codec cannot encode (``mail..example.com``,
  a label of 64 characters): ``not a valid host name: label empty or too long``;
- any other ``OSError``: its ``strerror``.

Lookups of the same name are shared: while one is under way, another of
that name (any port) waits for it instead of starting its own. The C
resolver runs in a thread and cannot be interrupted: a lookup given up by
its caller (a check's deadline) goes on until the resolver itself gives up.
Without sharing, each check of a name whose DNS server hangs would hold a
resolver thread of its own, and a few such names checked often could take
every thread and make the lookups of good names wait past their deadlines;
shared, a hanging name holds one thread per kind of lookup, whoever asks.
"""

from __future__ import annotations

import asyncio
import socket
import weakref
from collections.abc import Sequence
from typing import Any

AddrInfo = tuple[int, int, int, str, tuple[Any, ...]]

#: The lookups under way, per event loop: (host, type, proto) -> its task.
_lookups: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str, int, int], asyncio.Task[list[AddrInfo]]]
] = weakref.WeakKeyDictionary()


async def getaddrinfo(host: str, port: int, *, type: int, proto: int) -> Sequence[AddrInfo]:
    """``loop.getaddrinfo(host, port, type=type, proto=proto)``; ``socket.gaierror`` if it fails."""
    loop = asyncio.get_running_loop()
    under_way = _lookups.setdefault(loop, {})
    key = (host, type, proto)
    lookup = under_way.get(key)
    if lookup is None:
        # Port 0: every caller of the name shares it, each with its own port put in.
        lookup = loop.create_task(_lookup(loop, host, type, proto))
        under_way[key] = lookup
        lookup.add_done_callback(lambda task: _finished(under_way, key, task))
    try:
        # A caller that gives up (its deadline) leaves the lookup to the others.
        infos = await asyncio.shield(lookup)
    except socket.gaierror:
        raise
    except UnicodeError as exc:
        # "encoding with 'idna' codec failed (UnicodeError: label empty or too long)"
        why = str(exc).rpartition("UnicodeError: ")[2].rstrip(")") or str(exc)
        raise socket.gaierror(socket.EAI_NONAME, f"not a valid host name: {why}") from exc
    except OSError as exc:
        raise socket.gaierror(socket.EAI_FAIL, exc.strerror or str(exc)) from exc
    return [(f, t, p, name, (sa[0], port, *sa[2:])) for f, t, p, name, sa in infos]


async def _lookup(
    loop: asyncio.AbstractEventLoop, host: str, type: int, proto: int
) -> list[AddrInfo]:
    return list(await loop.getaddrinfo(host, 0, type=type, proto=proto))


def _finished(
    under_way: dict[tuple[str, int, int], asyncio.Task[list[AddrInfo]]],
    key: tuple[str, int, int],
    task: asyncio.Task[list[AddrInfo]],
) -> None:
    if under_way.get(key) is task:
        del under_way[key]
    if not task.cancelled():
        task.exception()  # retrieved: every caller may have gone before it ended
