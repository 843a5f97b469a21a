"""``store.url`` → a :class:`~beiand.store.base.DecisionStore`: an SQLite path (the default,
``<daemon.state_dir>/decisions.sqlite``) or ``postgresql://…`` with the password from a file only
beiand may read and TLS as libpq takes it (``sslmode``, ``sslrootcert``, a client certificate)."""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from beiand.store.base import DecisionStore, StoreError

DEFAULT_FILE = "decisions.sqlite"
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


@dataclass(frozen=True)
class StoreSettings:
    url: str = ""  # "" → <state_dir>/decisions.sqlite; a path (or sqlite:PATH); postgresql://user@host:port/db
    password: str = ""  # read from store.password_file by the caller (runtime.wiring checks its permissions)
    sslmode: str = "prefer"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    connect_timeout: float = 5.0


def redact(url: str) -> str:
    """``url`` with any password in it replaced (what messages and metrics show)."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def sqlite_path(url: str, state_dir: Path) -> Path:
    if not url:
        return Path(state_dir) / DEFAULT_FILE
    p = Path(url.removeprefix("sqlite://").removeprefix("sqlite:"))
    return p if p.is_absolute() else Path(state_dir) / p


def open_store(s: StoreSettings, state_dir: Path, gateway: str, *, create: bool = True) -> DecisionStore:
    """The store ``s`` names (not yet connected: the first use connects, and may raise StoreError)."""
    if is_postgres(s.url):
        from beiand.store.postgres import PostgresStore

        if s.sslmode not in SSLMODES:
            raise StoreError(f"store.sslmode: {s.sslmode!r} is not one of {', '.join(SSLMODES)}")
        u = urllib.parse.urlsplit(s.url)
        if u.password:
            raise StoreError(f"store.url {redact(s.url)}: a password in the URL is refused (it shows in `ps` and the "
                             "logs): put it in store.password_file")
        params: dict[str, Any] = {"connect_timeout": max(1, int(s.connect_timeout)), "sslmode": s.sslmode}
        if s.password:
            params["password"] = s.password
        for key, p in (("sslrootcert", s.ca_file), ("sslcert", s.cert_file), ("sslkey", s.key_file)):
            if p is not None:
                params[key] = str(p)
        return PostgresStore(s.url, redact(s.url), gateway, params)
    if "://" in s.url and not s.url.startswith("sqlite://"):
        raise StoreError(f"store.url {redact(s.url)!r}: expected a file path (SQLite) or postgresql://user@host:port/db")
    from beiand.store.sqlite import SqliteStore

    return SqliteStore(sqlite_path(s.url, state_dir), gateway, create=create)
