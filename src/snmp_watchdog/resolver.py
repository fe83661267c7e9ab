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
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import Any


async def getaddrinfo(
    host: str, port: int, *, type: int, proto: int
) -> Sequence[tuple[int, int, int, str, tuple[Any, ...]]]:
    """``loop.getaddrinfo(host, port, type=type, proto=proto)``; ``socket.gaierror`` if it fails."""
    loop = asyncio.get_running_loop()
    try:
        return await loop.getaddrinfo(host, port, type=type, proto=proto)
    except socket.gaierror:
        raise
    except UnicodeError as exc:
        # "encoding with 'idna' codec failed (UnicodeError: label empty or too long)"
        why = str(exc).rpartition("UnicodeError: ")[2].rstrip(")") or str(exc)
        raise socket.gaierror(socket.EAI_NONAME, f"not a valid host name: {why}") from exc
    except OSError as exc:
        raise socket.gaierror(socket.EAI_FAIL, exc.strerror or str(exc)) from exc
