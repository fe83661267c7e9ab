"""What the configuration names outside itself: files, CA bundles, regexes, secrets.

Rules:

- A relative path is relative to the directory of the configuration file.
- Each file is read once per load, each CA bundle tried once, each regex
  compiled once, the host name asked once: a configuration that names the
  same one for thousands of services pays for it once. A failure is
  remembered too, and reported wherever the resource is named.
- Only a regular file is read: a FIFO, a device or a socket could block the
  reading (and a reload with it) for ever, or never end.
- A secret is written inline, as ``${VAR}`` (an environment variable) or in
  ``KEY_file``; a message says "the value", "environment variable X" or "the
  file F", never the value itself.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import ssl
import stat
from pathlib import Path

from snmp_watchdog.checks._net import build_context
from snmp_watchdog.config.problems import Problems
from snmp_watchdog.config.yaml import Path as KeyPath
from snmp_watchdog.model import Secret

#: ``${VARIABLE}``: a secret taken from the environment.
ENV_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def read_regular_file(path: Path) -> bytes:
    """The bytes of ``path``; OSError unless it is a regular file (without waiting for one)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        with os.fdopen(fd, "rb", closefd=False) as file:
            return file.read()
    finally:
        os.close(fd)


class Resources:
    """The files, CA bundles, regexes and secrets of one load, each resolved once."""

    def __init__(self, base: Path, problems: Problems) -> None:
        self.base = base
        self.problems = problems
        self._paths: dict[str, Path] = {}
        self._files: dict[Path, bytes | OSError] = {}
        self._ca_files: dict[Path, str | None] = {}
        self._regexes: dict[str, re.Pattern[bytes] | str] = {}
        self._hostname: str | None = None

    def path(self, text: str) -> Path:
        """``text`` as a path, relative ones taken from the configuration's directory."""
        path = self._paths.get(text)
        if path is None:
            path = Path(text)
            path = self._paths[text] = path if path.is_absolute() else self.base / path
        return path

    def read(
        self, at: KeyPath, text: str, *, missing_ok: bool = False, hint: str | None = None
    ) -> bytes | None:
        """The contents of a file the configuration names (read once per load)."""
        path = self.path(text)
        content = self._files.get(path)
        if content is None:
            try:
                content = read_regular_file(path)
            except OSError as exc:
                content = exc
            self._files[path] = content
        if isinstance(content, OSError):
            missing = isinstance(content, FileNotFoundError)
            if missing and missing_ok:
                return None
            message = f"cannot read {path}: {content.strerror or content}"
            if missing and hint:
                message += f" ({hint})"
            self.problems.report(at, message)
            return None
        return content

    def ca_file(self, at: KeyPath, text: str) -> Path:
        """The path of a CA bundle, after checking that TLS can use it."""
        path = self.path(text)
        if path not in self._ca_files:
            error: str | None = None
            try:
                build_context(path, verify=True)
            except FileNotFoundError as exc:
                error = f"cannot read {path}: {exc.strerror}"
            except ssl.SSLError as exc:
                error = f"{path} holds no usable CA certificate ({exc.reason or exc})"
            except OSError as exc:
                error = f"cannot read {path}: {exc.strerror or exc}"
            self._ca_files[path] = error
        error = self._ca_files[path]
        if error is not None:
            self.problems.report(at, error)
        return path

    def regex(self, at: KeyPath, text: str | None) -> re.Pattern[bytes] | None:
        """``text`` compiled as a bytes pattern with ``re.MULTILINE``."""
        assert text is not None
        compiled = self._regexes.get(text)
        if compiled is None:
            try:
                compiled = re.compile(text.encode(), re.MULTILINE)
            except re.error as exc:
                compiled = exc.msg if exc.pos is None else f"{exc.msg} at position {exc.pos}"
            self._regexes[text] = compiled
        if isinstance(compiled, str):
            self.problems.report(at, f"not a valid regular expression: {compiled}")
            return None
        return compiled

    def hostname(self) -> str:
        """This machine's name (the default HELO name)."""
        if self._hostname is None:
            self._hostname = socket.gethostname() or "localhost"
        return self._hostname

    def secret(
        self, at: KeyPath, key: str, inline: str | None, file: str | None, *, minimum: int
    ) -> Secret | None:
        """Resolve a secret written inline, as ``${VAR}`` or in ``KEY_file``.

        Messages say "the value", never the value.
        """
        report = self.problems.report
        file_key = f"{key}_file"
        if inline is not None and file is not None:
            report((*at, file_key), f"{key} and {file_key} exclude each other; keep one")
            return None
        if inline is not None:
            where = (*at, key)
            match = ENV_VARIABLE.fullmatch(inline)
            if match:
                source = f"environment variable {match[1]}"
                value = os.environ.get(match[1])
                if value is None:
                    report(where, f"{source} is not set")
                    return None
            else:
                source, value = "the value", inline
        elif file is not None:
            where = (*at, file_key)
            data = self.read(where, file)
            if data is None:
                return None
            source = f"the file {self.path(file)}"
            try:
                value = data.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                report(where, f"{source} is not UTF-8 text")
                return None
        else:
            return None
        if not value:
            report(where, f"{source} is empty")
            return None
        if len(value) < minimum:
            report(
                where,
                f"{source} is shorter than {minimum} characters, "
                "the least an SNMPv3 passphrase may have (RFC 3414)",
            )
            return None
        return Secret(value)
