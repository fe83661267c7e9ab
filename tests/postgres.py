"""A real PostgreSQL server for the tests: Debian's PostgreSQL 15 on a loopback port.

``PostgresServer`` runs ``initdb`` into a private temporary directory and
starts ``postgres`` listening on 127.0.0.1 only, on a free port, with its
Unix socket in that directory. TCP connections need the password
(scram-sha-256), as a real deployment would; the socket trusts the local
user, for the fixture's own administration. The server is stopped by its PID
(SIGINT: PostgreSQL's fast shutdown) and the directory removed.

The tests run as root in CI, and PostgreSQL refuses to run as root: then the
cluster belongs to the ``postgres`` user (created by Debian's package) and
``initdb``/``postgres`` run as that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

from tests.helpers import free_tcp_port

#: Debian 12's PostgreSQL; scripts/test.sh installs the ``postgresql`` package.
BIN = Path(os.environ.get("WATCHDOG_PG_BIN", "/usr/lib/postgresql/15/bin"))

SUPERUSER = "watchdog"
PASSWORD = "s3cret-pw"  # noqa: S105 - a throwaway cluster on loopback


class PostgresServer:
    """One private PostgreSQL cluster; ``start`` it, ``create_database`` per test, ``stop``."""

    def __init__(self, *, durable: bool = False) -> None:
        """``durable``: flush commits to disk as a real server does (benchmarks)."""
        self.durable = durable
        if not (BIN / "initdb").is_file():
            raise RuntimeError(
                f"{BIN}/initdb not found: install Debian's postgresql package "
                f"(scripts/test.sh does), or set WATCHDOG_PG_BIN"
            )
        self.dir = Path(tempfile.mkdtemp(prefix="watchdog-pg-"))
        self.data = self.dir / "data"
        self.port = free_tcp_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._user: str | None = None
        self._count = 0
        if os.geteuid() == 0:
            self._user = "postgres"
            owner = pwd.getpwnam(self._user)
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
        self.dir.chmod(0o700)

    def _run(self, *argv: str) -> None:
        result = subprocess.run(
            argv, user=self._user, capture_output=True, text=True, check=False, timeout=120
        )
        if result.returncode:
            raise RuntimeError(f"{argv[0]} failed ({result.returncode}): {result.stderr}")

    def start(self) -> None:
        pwfile = self.dir / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self._user:
            owner = pwd.getpwnam(self._user)
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        self._run(
            str(BIN / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",  # a throwaway cluster: its durability is not under test
        )
        pwfile.unlink()
        log = (self.dir / "postgres.log").open("wb")
        self.proc = subprocess.Popen(
            [
                str(BIN / "postgres"),
                "-D",
                str(self.data),
                "-k",
                str(self.dir),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"fsync={'on' if self.durable else 'off'}",
                "-c",
                "max_connections=200",
            ],
            user=self._user,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 60
        while not self._ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"postgres did not start within 60 s: {self.log()}")
            time.sleep(0.05)

    def _ready(self) -> bool:
        result = subprocess.run(
            [str(BIN / "pg_isready"), "-q", "-h", str(self.dir), "-p", str(self.port)],
            check=False,
            timeout=10,
        )
        return result.returncode == 0

    def log(self) -> str:
        return (self.dir / "postgres.log").read_text(errors="replace")

    def admin(self, sql: str) -> None:
        """Run one statement as the superuser over the Unix socket."""
        self._run(
            str(BIN / "psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.dir),
            "-p",
            str(self.port),
            "-U",
            SUPERUSER,
            "-d",
            "postgres",
            "-c",
            sql,
        )

    def create_database(self) -> str:
        """A new empty database; returns its name."""
        self._count += 1
        name = f"test_{self._count}"
        self.admin(f"CREATE DATABASE {name}")
        return name

    def url(self, database: str, *, password: str | None = PASSWORD) -> str:
        """A ``postgresql://`` URL over TCP to ``database`` (with the password, by default)."""
        secret = f":{urllib.parse.quote(password, safe='')}" if password is not None else ""
        return f"postgresql://{SUPERUSER}{secret}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        """Fast shutdown by PID, then remove the cluster."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        with contextlib.suppress(OSError):
            shutil.rmtree(self.dir)
