"""Fixtures shared by the tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dnsserver import DnsServer, running
from tests.helpers import Daemon, SmtpServer, free_tcp_port
from tests.postgres import PostgresServer
from tests.snmptrapd import Snmptrapd


@pytest.fixture
def snmptrapd(tmp_path: Path) -> Iterator[Callable[..., Snmptrapd]]:
    """A factory of private snmptrapd receivers, all stopped at the end of the test.

    ``snmptrapd(users=[User(...)], communities=["public"], start=True, ...)``
    takes the arguments of ``Snmptrapd``; with ``start=False`` the caller
    starts it (for a receiver that comes up late).
    """
    made: list[Snmptrapd] = []

    def make(*, start: bool = True, **options: Any) -> Snmptrapd:
        receiver = Snmptrapd(tmp_path / f"snmptrapd-{len(made)}", **options)
        made.append(receiver)
        if start:
            receiver.start()
        return receiver

    yield make
    for receiver in made:
        receiver.stop()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemons a test starts (``daemons.append(Daemon(...))``), killed at its end."""
    started: list[Daemon] = []
    yield started
    for d in started:
        d.kill()


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    """A real SMTP server on a free loopback port, not started yet."""
    server = SmtpServer(free_tcp_port())
    yield server
    server.stop()


@pytest.fixture
def dns(tmp_path: Path) -> Iterator[DnsServer]:
    """A real DNS server on loopback port 53; ``dns.argv(cmd)`` runs ``cmd`` resolving through it.

    See ``tests/dnsserver.py``.
    """
    directory = tmp_path / "dns"
    directory.mkdir()
    yield from running(directory)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One private PostgreSQL server on loopback for the whole run, stopped at its end."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> str:
    """A ``postgresql://`` URL (with the password) of a fresh, empty database."""
    return postgres_server.url(postgres_server.create_database())
