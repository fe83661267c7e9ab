"""The PostgreSQL store against a real PostgreSQL server on loopback."""

from __future__ import annotations

import psycopg
import pytest

from tests.postgres import PostgresServer


def test_the_test_server_wants_the_password_over_tcp(postgres_server: PostgresServer) -> None:
    """The private server behaves like a real deployment: TCP on loopback, password needed."""
    name = postgres_server.create_database()
    with psycopg.connect(postgres_server.url(name)) as conn:
        row = conn.execute("SELECT current_database(), inet_server_addr()::text").fetchone()
    assert row == (name, "127.0.0.1/32")
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(postgres_server.url(name, password="wrong")).close()  # noqa: S106
