"""A throwaway Zabbix 6.0 on loopback, made of Debian's own packages.

* ``Postgres``: a private cluster (``initdb`` into a temporary directory,
  ``postgres`` on a free loopback port, trust authentication), loaded with the
  schema, images and data that ``zabbix-server-pgsql`` ships.
* ``Frontend``: a copy of ``zabbix-frontend-php`` served by PHP's built-in web
  server on a free loopback port, for the JSON-RPC API (in Zabbix 6.0 the API
  is part of the PHP frontend). The copy reads its own ``zabbix.conf.php``;
  Debian's frontend only reads ``/etc/zabbix/zabbix.conf.php``.
* ``Server``: ``zabbix_server -f`` with a generated configuration: the SNMP
  trapper on (``StartSNMPTrapper=1``) reading a file of ours, the
  configuration cache refreshed every second.
* ``Api``: a small JSON-RPC client.

Every process is started here and stopped by its PID (the server, which
forks its workers, by its own process group); every wait has a deadline.
PostgreSQL refuses to run as root: as root, the cluster runs as the
``postgres`` user in a directory that user owns.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.helpers import free_tcp_port

SCHEMA_DIR = Path("/usr/share/zabbix-server-pgsql")
FRONTEND_DIR = Path("/usr/share/zabbix")
CONFIG_CONSTANT = "const CONFIG_FILE_PATH = '/etc/zabbix/zabbix.conf.php';"
ZABBIX_SERVER = "/usr/sbin/zabbix_server"
DB_USER = "zabbix"
DB_NAME = "zabbix"
START_TIMEOUT = 60.0

T = TypeVar("T")


def wait_until(
    what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.25
) -> T:
    """Call ``probe`` until it returns something other than None; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = probe()
        except (OSError, ApiError) as exc:  # not up yet
            result, last_error = None, exc
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout} s (last error: {last_error})")
        time.sleep(interval)


def stop_process(
    proc: subprocess.Popen[Any],
    *,
    group: bool = False,
    timeout: float = 30,
    sig: signal.Signals = signal.SIGTERM,
) -> None:
    """``sig`` by PID (or to the process group it leads), then SIGKILL after ``timeout``."""
    if proc.poll() is not None:
        return
    send = (lambda s: os.killpg(proc.pid, s)) if group else proc.send_signal
    send(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait(10)


def _as_postgres() -> dict[str, Any]:
    """Popen arguments that run PostgreSQL's programs as ``postgres`` when we are root."""
    return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}


def _pg_bin(program: str) -> str:
    found = glob.glob(f"/usr/lib/postgresql/*/bin/{program}")
    if found:  # the newest major version Debian installed
        return max(found, key=lambda path: int(Path(path).parts[4]))
    path = shutil.which(program)
    assert path, f"{program} not found: install postgresql"
    return path


class Postgres:
    """A private PostgreSQL cluster holding one Zabbix database."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="wd-zabbix-pg-"))
        self.directory.chmod(0o755)
        self.data = self.directory / "data"
        self.port = free_tcp_port()
        self.log = self.directory / "postgres.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Postgres:
        self.data.mkdir()
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.data, user.pw_uid, user.pw_gid)
        done = subprocess.run(
            [
                *(_pg_bin("initdb"), "-D", str(self.data), "-U", DB_USER, "--auth=trust"),
                *("-E", "UTF8", "--locale=C.UTF-8", "--no-sync"),
            ],
            check=False,
            capture_output=True,
            timeout=120,
            **_as_postgres(),
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        with self.log.open("wb") as log:
            self._proc = subprocess.Popen(
                [
                    *(_pg_bin("postgres"), "-D", str(self.data), "-p", str(self.port)),
                    *("-k", str(self.data), "-c", "listen_addresses=127.0.0.1"),
                    # a throwaway database: no need to survive a crash
                    *("-c", "fsync=off", "-c", "synchronous_commit=off"),
                    *("-c", "full_page_writes=off"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                **_as_postgres(),
            )
        wait_until("PostgreSQL accepts queries", self._ready, START_TIMEOUT)
        self.psql("CREATE DATABASE zabbix ENCODING 'UTF8' TEMPLATE template0", database="postgres")
        return self

    def _ready(self) -> bool | None:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise AssertionError(f"postgres exited:\n{self.log.read_text(errors='replace')}")
        done = subprocess.run(
            [_pg_bin("psql"), *self._connect("postgres"), "-c", "SELECT 1"],
            capture_output=True,
            timeout=10,
            check=False,
        )
        return True if done.returncode == 0 else None

    def _connect(self, database: str) -> list[str]:
        return ["-X", "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", DB_USER, "-d", database]

    def psql(self, sql: str | bytes, database: str = DB_NAME, timeout: float = 300) -> str:
        """Run SQL (ON_ERROR_STOP); the output as text."""
        done = subprocess.run(
            [_pg_bin("psql"), *self._connect(database), "-v", "ON_ERROR_STOP=1", "-At"],
            input=sql.encode() if isinstance(sql, str) else sql,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")[-4000:]
        return done.stdout.decode()

    def load_zabbix_schema(self) -> None:
        """Debian's schema, images and data for a new Zabbix server database, in that order."""
        for name in ("schema", "images", "data"):
            self.psql(gzip.decompress((SCHEMA_DIR / f"{name}.sql.gz").read_bytes()))

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc, sig=signal.SIGINT)  # "fast" shutdown
            self._proc = None
        shutil.rmtree(self.directory, ignore_errors=True)


class ApiError(Exception):
    """An error answer of the Zabbix API."""


class Api:
    """The Zabbix JSON-RPC API of a frontend."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.token: str | None = None
        self._id = 0

    def call(self, method: str, params: Any, timeout: float = 60) -> Any:
        self._id += 1
        body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
        body["id"] = self._id
        if self.token is not None and method not in ("apiinfo.version", "user.login"):
            body["auth"] = self.token
        request = urllib.request.Request(  # noqa: S310 (http on loopback)
            self.url,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json-rpc"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            answer = json.loads(response.read())
        if "error" in answer:
            raise ApiError(f"{method}: {answer['error']}")
        return answer["result"]

    def login(self, user: str = "Admin", password: str = "zabbix") -> None:  # noqa: S107 (Zabbix's initial password in a throwaway database)
        self.token = self.call("user.login", {"username": user, "password": password})


class Frontend:
    """A copy of Debian's Zabbix frontend under PHP's built-in web server, for the API."""

    def __init__(self, directory: Path, db: Postgres, server_port: int) -> None:
        self.directory = directory
        self.db = db
        self.server_port = server_port
        self.port = free_tcp_port()
        self.log = directory / "php.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def api(self) -> Api:
        return Api(f"http://127.0.0.1:{self.port}/api_jsonrpc.php")

    def start(self) -> Frontend:
        root = self.directory / "ui"
        shutil.copytree(FRONTEND_DIR, root, symlinks=True)
        conf = self.directory / "zabbix.conf.php"
        conf.write_text(
            "<?php\n"
            "$DB['TYPE'] = 'POSTGRESQL';\n"
            "$DB['SERVER'] = '127.0.0.1';\n"
            f"$DB['PORT'] = '{self.db.port}';\n"
            f"$DB['DATABASE'] = '{DB_NAME}';\n"
            f"$DB['USER'] = '{DB_USER}';\n"
            "$DB['PASSWORD'] = '';\n"
            "$DB['SCHEMA'] = '';\n"
            "$DB['ENCRYPTION'] = false;\n"
            "$DB['DOUBLE_IEEE754'] = true;\n"
            "$ZBX_SERVER = '127.0.0.1';\n"
            f"$ZBX_SERVER_PORT = '{self.server_port}';\n"
            "$ZBX_SERVER_NAME = 'snmp-watchdog test';\n"
            "$IMAGE_FORMAT_DEFAULT = IMAGE_FORMAT_PNG;\n"
        )
        source = root / "include" / "classes" / "core" / "CConfigFile.php"
        text = source.read_text()
        assert CONFIG_CONSTANT in text, f"{source}: the configuration path moved"
        source.write_text(text.replace(CONFIG_CONSTANT, f"const CONFIG_FILE_PATH = '{conf}';"))
        with self.log.open("wb") as log:
            self._proc = subprocess.Popen(
                ["php", "-S", f"127.0.0.1:{self.port}", "-t", str(root)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, PHP_CLI_SERVER_WORKERS="2"),
                start_new_session=True,  # with its workers
            )
        api = self.api
        wait_until("the Zabbix API answers", lambda: api.call("apiinfo.version", {}), 30)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc, group=True, timeout=10)
            self._proc = None


class Server:
    """``zabbix_server`` in the foreground with the SNMP trapper reading ``trap_file``."""

    def __init__(self, directory: Path, db: Postgres, trap_file: Path) -> None:
        self.directory = directory
        self.db = db
        self.trap_file = trap_file
        self.port = low_free_port()
        self.log = directory / "zabbix_server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def config_text(self) -> str:
        lines = {
            "LogType": "file",
            "LogFile": self.log,
            "DebugLevel": 3,
            "PidFile": self.directory / "zabbix_server.pid",
            "SocketDir": self.directory,
            "ListenIP": "127.0.0.1",
            "ListenPort": self.port,
            "DBHost": "127.0.0.1",
            "DBPort": self.db.port,
            "DBName": DB_NAME,
            "DBUser": DB_USER,
            "StartSNMPTrapper": 1,
            "SNMPTrapperFile": self.trap_file,
            "CacheUpdateFrequency": 1,
            "HousekeepingFrequency": 0,
            "StartPollers": 2,
            "StartPollersUnreachable": 1,
            "StartPingers": 1,
            "StartDiscoverers": 1,
            "StartHTTPPollers": 1,
            "StartTrappers": 2,
            "Timeout": 3,
            "UnreachablePeriod": 10,
            "UnavailableDelay": 5,
            "UnreachableDelay": 5,
            "FpingLocation": "/usr/bin/fping",
        }
        if os.geteuid() == 0:
            lines["AllowRoot"] = 1
        return "".join(f"{key}={value}\n" for key, value in lines.items())

    def start(self) -> Server:
        """Start it; a listening port taken meanwhile by another process means another port."""
        for _attempt in range(3):
            try:
                return self._start()
            except AssertionError as exc:
                if "unable to serve on any address" not in str(exc):
                    raise
                self.stop()
                self.log.unlink(missing_ok=True)
                self.port = low_free_port()
        return self._start()

    def _start(self) -> Server:
        conf = self.directory / "zabbix_server.conf"
        conf.write_text(self.config_text())
        self.trap_file.touch()
        with (self.directory / "zabbix_server.out").open("wb") as out:
            self._proc = subprocess.Popen(
                [ZABBIX_SERVER, "-f", "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its workers share its process group
            )
        wait_until("zabbix_server's SNMP trapper runs", self._trapper_started, START_TIMEOUT)
        return self

    def _trapper_started(self) -> bool | None:
        assert self._proc is not None
        if self._proc.poll() is not None:
            out = (self.directory / "zabbix_server.out").read_text(errors="replace")
            raise AssertionError(f"zabbix_server exited:\n{out}{self.log_text()[-4000:]}")
        return True if "started [snmp trapper #1]" in self.log_text() else None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc, group=True)
            self._proc = None


def low_free_port() -> int:
    """A free loopback TCP port below 32768 (zabbix_server's ListenPort allows no higher)."""
    for _attempt in range(100):
        port = free_tcp_port()
        if port < 32768:
            return port
        with socket.socket() as s:
            candidate = 20000 + port % 12000
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return candidate
    raise AssertionError("no free TCP port below 32768")
