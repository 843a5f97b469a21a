"""The embedded default: one SQLite file in ``daemon.state_dir`` (WAL, synchronous=FULL).

The CLI and the daemon open the same file; a writer takes SQLite's write lock (``BEGIN
IMMEDIATE``), so rows are numbered in commit order and no update is lost; readers never block.
The daemon's follower polls the last version (there is no notification channel in SQLite).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from beiand.store.base import DecisionStore, StoreError

BUSY_TIMEOUT_S = 30.0


class SqliteStore(DecisionStore):
    dialect = "sqlite"
    MARK = "?"
    POLL_S = 0.1  # the follower's poll: a change is seen within this

    def __init__(self, path: Path, gateway: str, *, create: bool = True) -> None:
        super().__init__(f"sqlite:{path}", gateway)
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise StoreError(f"decision store {self.url}: no such file")
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o640)
            os.close(fd)
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                c = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
                c.execute("PRAGMA journal_mode=WAL")
                c.execute("PRAGMA synchronous=FULL")  # an order committed is on disk
                c.execute("PRAGMA foreign_keys=ON")
            except sqlite3.Error as exc:
                raise self._error(exc) from None
            self._conn = c
            self._own()
        return self._conn

    def _own(self) -> None:
        """Run as root (``sudo beiand block add``), give the file and its WAL the state
        directory's owner: the daemon (User=beiand) must go on writing its heartbeats and the ISMS
        endpoint's commands into a store root created or touched."""
        if os.geteuid() != 0:
            return
        try:
            st = os.stat(self.path.parent)
        except OSError:
            return
        if st.st_uid == 0:
            return
        for p in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
            try:
                if os.stat(p).st_uid != st.st_uid:
                    os.chown(p, st.st_uid, st.st_gid)
            except OSError:
                continue

    def _has_meta(self, cur: Any) -> bool:
        cur.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'beiand_meta'")
        return cur.fetchone() is not None

    @contextlib.contextmanager
    def _tx(self, begin: str) -> Iterator[Any]:
        c = self._connect()
        cur = c.cursor()
        try:
            cur.execute(begin)
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        try:
            yield cur
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                cur.execute("ROLLBACK")
            raise
        try:
            cur.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                cur.execute("ROLLBACK")
            raise self._error(exc) from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[Any]:
        with self._tx("BEGIN IMMEDIATE") as cur:  # SQLite's write lock, taken at once
            yield cur
        self._own()

    @contextlib.contextmanager
    def _read(self) -> Iterator[Any]:
        with self._tx("BEGIN") as cur:
            yield cur

    def wait(self, timeout: float) -> bool:
        time.sleep(min(timeout, self.POLL_S))
        return False

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None
