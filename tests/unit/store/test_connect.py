"""``store.url`` → a store (issue 29): the default SQLite file, a path, PostgreSQL; what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from beiand.store import StoreError, StoreSettings, open_store, redact
from beiand.store.connect import is_postgres, sqlite_path
from beiand.store.postgres import PostgresStore
from beiand.store.sqlite import SqliteStore


def test_the_default_is_an_sqlite_file_in_the_state_directory(tmp_path: Path) -> None:
    s = open_store(StoreSettings(), tmp_path, "gw")
    assert isinstance(s, SqliteStore) and s.path == tmp_path / "decisions.sqlite" and s.url.startswith("sqlite:")
    assert sqlite_path("sub/d.sqlite", tmp_path) == tmp_path / "sub" / "d.sqlite"
    assert sqlite_path("sqlite:/abs/d.sqlite", tmp_path) == Path("/abs/d.sqlite")


def test_postgresql_urls_take_tls_and_the_password_apart(tmp_path: Path) -> None:
    s = open_store(StoreSettings("postgresql://beiand@db.example:5432/beiand", password="pw", sslmode="verify-full",
                                 ca_file=tmp_path / "ca.pem"), tmp_path, "gw")
    assert isinstance(s, PostgresStore)
    assert s._params["sslmode"] == "verify-full" and s._params["sslrootcert"] == str(tmp_path / "ca.pem")
    assert s._params["password"] == "pw" and "pw" not in s.url
    assert is_postgres("postgres://x/y") and not is_postgres("/var/lib/beiand/decisions.sqlite")


@pytest.mark.parametrize(("url", "why"), [
    ("postgresql://u:secret@127.0.0.1/db", "password in the URL"),
    ("mysql://u@h/db", "expected a file path"),
])
def test_what_is_refused(tmp_path: Path, url: str, why: str) -> None:
    with pytest.raises(StoreError, match=why) as e:
        open_store(StoreSettings(url), tmp_path, "gw")
    assert "secret" not in str(e.value)


def test_a_bad_sslmode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"store\.sslmode"):
        open_store(StoreSettings("postgresql://u@h/db", sslmode="maybe"), tmp_path, "gw")


def test_redact_hides_a_password() -> None:
    assert redact("postgresql://u:p4ss@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"
