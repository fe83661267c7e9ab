"""``watchdog.store``: a shared PostgreSQL store, its password from a file or the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from snmp_watchdog.cli import main
from snmp_watchdog.config import load_config
from snmp_watchdog.exceptions import ConfigError
from snmp_watchdog.pgurl import redact

SERVICES = "services:\n  - {name: mail, host: mail.example.com, check: smtp}\n"


def load(path: Path, watchdog: str) -> list[str] | object:
    path.write_text(f"watchdog:\n{watchdog}{SERVICES}")
    try:
        return load_config(path).settings
    except ConfigError as exc:
        return [str(p).replace(str(path), "FILE") for p in exc.problems]


def test_without_store_the_sqlite_database_is_used(tmp_path: Path) -> None:
    settings = load(tmp_path / "w.yaml", "  state_dir: state\n")
    assert getattr(settings, "store", "?") is None
    assert getattr(settings, "store_password", "?") is None


def test_password_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_TEST_DB_PW", "from-env")
    settings = load(
        tmp_path / "w.yaml",
        "  store: postgresql://watchdog@db.example.net:5433/wd\n"
        "  store_password: ${WATCHDOG_TEST_DB_PW}\n",
    )
    assert getattr(settings, "store", None) == "postgresql://watchdog@db.example.net:5433/wd"
    password = getattr(settings, "store_password", None)
    assert password is not None
    assert password.reveal() == "from-env"
    assert "from-env" not in repr(settings)


def test_password_from_a_file_relative_to_the_configuration(tmp_path: Path) -> None:
    (tmp_path / "db-password").write_text("from-file\n")
    settings = load(
        tmp_path / "w.yaml",
        "  store: postgres://watchdog@db/wd\n  store_password_file: db-password\n",
    )
    password = getattr(settings, "store_password", None)
    assert password is not None
    assert password.reveal() == "from-file"


def test_store_mistakes_name_the_line_and_key_and_never_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WATCHDOG_TEST_UNSET", raising=False)
    path = tmp_path / "w.yaml"
    assert load(path, "  store: mysql://db/wd\n") == [
        "FILE:2: watchdog.store: expected a postgresql:// URL (or no store: the SQLite "
        "database in state_dir), got 'mysql://db/wd'"
    ]
    assert load(path, "  store: mysql://me:pw-123@db/wd\n") == [
        "FILE:2: watchdog.store: expected a postgresql:// URL (or no store: the SQLite "
        "database in state_dir), got 'mysql://me:***@db/wd'"
    ]
    assert load(path, "  store_password_file: pw\n") == [
        "FILE:2: watchdog.store_password_file: applies only with store: postgresql://..."
    ]
    assert load(
        path, "  store: postgresql://db/wd\n  store_password: ${WATCHDOG_TEST_UNSET}\n"
    ) == ["FILE:3: watchdog.store_password: environment variable WATCHDOG_TEST_UNSET is not set"]
    assert load(
        path, "  store: postgresql://db/wd\n  store_password: ${A}\n  store_password_file: f\n"
    ) == [
        "FILE:4: watchdog.store_password_file: store_password and store_password_file "
        "exclude each other; keep one"
    ]
    assert load(path, "  store: postgresql://db/wd\n  store_password_file: missing\n") == [
        f"FILE:3: watchdog.store_password_file: cannot read {tmp_path}/missing: "
        "No such file or directory"
    ]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:secret@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u@h/db?password=secret&sslmode=require",
         "postgresql://u@h/db?password=***&sslmode=require"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://h/db", "postgresql://h/db"),
        ("postgresql://u:p%40ss@h/db", "postgresql://u:***@h/db"),
    ],
)  # fmt: skip
def test_redact_hides_every_password(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_the_daemon_runs_on_the_store_and_says_when_it_cannot_reach_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No silent fallback to SQLite; the message names the server, never the password."""
    monkeypatch.setenv("WATCHDOG_TEST_DB_PW", "pw-never-shown")
    path = tmp_path / "w.yaml"
    path.write_text(
        f"watchdog: {{state_dir: {tmp_path}/state, store: 'postgresql://wd@127.0.0.1:9/wd',\n"
        "           store_password: '${WATCHDOG_TEST_DB_PW}'}\n" + SERVICES
    )
    assert main(["-c", str(path), "run"]) == 1
    err = capsys.readouterr().err
    assert "postgresql://wd@127.0.0.1:9/wd: cannot connect to the state database" in err
    assert "pw-never-shown" not in err
    assert not (tmp_path / "state" / "state.db").exists()


def test_the_cluster_example_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/cluster/watchdog.yaml, with its files made, loads as documented."""
    example = Path(__file__).parent.parent / "examples" / "cluster" / "watchdog.yaml"
    text = example.read_text()
    for name in ("db-password", "auth.key", "priv.key"):
        (tmp_path / name).write_text("a-long-enough-secret\n")
        text = text.replace(f"/etc/snmp-watchdog/{name}", str(tmp_path / name))
    path = tmp_path / "watchdog.yaml"
    path.write_text(text)
    settings = load_config(path).settings
    assert settings.store == "postgresql://watchdog@db.example.net:5432/watchdog"
    assert settings.store_password is not None
    assert settings.lease == 15.0
