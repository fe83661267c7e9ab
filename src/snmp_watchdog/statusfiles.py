"""The status directory: one file per service, what the old cron script left.

Each file holds ``0`` and a newline while the service is up, or the number of
the reason it is down for (see ``reasons.Reason``), so an SNMP agent's
``extend``/``pass`` script can read it as before. Files are written atomically
(a temporary file renamed over the old one) and only when their content
changes; a service still unknown has no file yet. While a service is down the
file follows the reason of the latest failed check.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from snmp_watchdog.state import ServiceState, State

log = logging.getLogger("snmp_watchdog")


def status_content(st: ServiceState) -> str | None:
    """What the file says for this state, or None while nothing is confirmed."""
    if st.state is State.UP:
        return "0\n"
    if st.state is State.DOWN and st.last_reason is not None and not st.last_reason.ok:
        return f"{st.last_reason.value}\n"
    return None  # unknown, or down with a good check confirming a recovery: leave as is


class StatusFiles:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._written: dict[str, str] = {}
        self._failed = False

    def update(self, name: str, st: ServiceState) -> None:
        content = status_content(st)
        if content is None or self._written.get(name) == content:
            return
        try:
            write_atomic(self.directory / name, content)
        except OSError as exc:
            if not self._failed:  # one line, not one per check, until it works again
                log.error("cannot write status file in %s: %s", self.directory, exc.strerror)
            self._failed = True
            return
        self._failed = False
        self._written[name] = content

    def forget(self, name: str) -> None:
        self._written.pop(name, None)
        (self.directory / name).unlink(missing_ok=True)


def write_atomic(path: Path, content: bytes | str) -> None:
    """Replace ``path`` with ``content`` so that readers see the old or the new file, whole."""
    data = content.encode() if isinstance(content, str) else content
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
