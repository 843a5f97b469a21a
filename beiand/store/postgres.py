"""The fleet's store: PostgreSQL through psycopg 3 (no ORM).

Writers take a transaction-scoped advisory lock before numbering their rows, so versions commit
in order (a follower that has read version N never meets a row below N later) and ``NOTIFY
beiand_decisions`` (delivered at commit) tells every following gateway at once; followers also
poll, in case a notification was lost with a connection.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from beiand.store.base import DecisionStore

CHANNEL = "beiand_decisions"
LOCK_KEY = 0x6265_6961_6E64  # "beiand": the write lock (pg_advisory_xact_lock)
# A connection that died without a reset (a NAT or a firewall between data centres) is noticed in
# about 25 s instead of never: the listening one would otherwise wait on a dead socket.
KEEPALIVE: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}


class PostgresStore(DecisionStore):
    dialect = "postgresql"
    MARK = "%s"

    def __init__(self, url: str, shown: str, gateway: str, params: dict[str, Any]) -> None:
        super().__init__(shown, gateway)
        self._dsn = url
        self._params = params  # password, sslmode, sslrootcert, connect_timeout …
        self._conn: Any = None
        self._listen: Any = None
        self.channel = CHANNEL  # what wait() listens on (the register's follower: store.register.CHANNEL)

    def _connect(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed:
            try:
                c = psycopg.connect(self._dsn, **self._params, **KEEPALIVE, application_name=f"beiand {self.gateway}"[:63])
                # READ COMMITTED whatever the server's default: a writer must see the last row
                # once it holds the lock (REPEATABLE READ took its snapshot before the wait)
                c.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
            except psycopg.Error as exc:
                raise self._error(_one_line(exc)) from None
            self._conn = c
        return self._conn

    def _error(self, exc: BaseException | str) -> Any:
        from beiand.store.base import StoreError

        if self._conn is not None and getattr(self._conn, "broken", False):
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        return StoreError(f"decision store {self.url}: {_one_line(exc)}")

    def _has_meta(self, cur: Any) -> bool:
        cur.execute("SELECT to_regclass('beiand_meta') IS NOT NULL")
        return bool(cur.fetchone()[0])

    @contextlib.contextmanager
    def _tx(self, lock: bool) -> Iterator[Any]:
        import psycopg

        c = self._connect()
        try:
            with c.transaction(), c.cursor() as cur:
                if lock:
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
                yield cur
        except psycopg.Error as exc:
            raise self._error(exc) from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[Any]:
        with self._tx(True) as cur:
            yield cur

    @contextlib.contextmanager
    def _read(self) -> Iterator[Any]:
        with self._tx(False) as cur:
            yield cur

    COPY_MIN = 1000  # rows from which COPY beats a pipelined INSERT (a 1M-filing export: seconds, not minutes)

    def _register_insert(self, cur: Any, table: str, cols: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        if len(rows) < self.COPY_MIN:
            super()._register_insert(cur, table, cols, rows)
            return
        with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)

    def _register_content(self, cur: Any, rows: list[tuple[str, str]]) -> set[str]:
        if len(rows) < self.COPY_MIN:
            return super()._register_content(cur, rows)
        # COPY knows no ON CONFLICT: through a temporary table dropped at commit, one statement
        # keeping the new contents and naming them
        cur.execute("CREATE TEMPORARY TABLE beiand_register_content_in (LIKE beiand_register_content) ON COMMIT DROP")
        with cur.copy("COPY beiand_register_content_in (hash, data) FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)
        cur.execute("INSERT INTO beiand_register_content (hash, data) SELECT hash, data FROM beiand_register_content_in "
                    "ON CONFLICT (hash) DO NOTHING RETURNING hash")
        new = {h for (h,) in cur.fetchall()}
        cur.execute("DROP TABLE beiand_register_content_in")
        return new

    def _notify(self, cur: Any, version: int) -> None:
        cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(version)))

    def _signal(self, cur: Any, channel: str, payload: str) -> None:
        cur.execute("SELECT pg_notify(%s, %s)", (channel, payload))

    def wait(self, timeout: float) -> bool:
        """Block until a NOTIFY or ``timeout``; a lost listening connection is opened again."""
        import psycopg

        try:
            if self._listen is None or self._listen.closed:
                self._listen = psycopg.connect(self._dsn, **self._params, **KEEPALIVE, autocommit=True,
                                               application_name=f"beiand {self.gateway} follower"[:63])
                self._listen.execute(f"LISTEN {self.channel}")
                return True  # listening from now: what changed before is read by the caller
            got = False
            for _ in self._listen.notifies(timeout=timeout, stop_after=1):
                got = True
            return got
        except (psycopg.Error, OSError) as exc:
            with contextlib.suppress(Exception):
                if self._listen is not None:
                    self._listen.close()
            self._listen = None
            raise self._error(exc) from None

    def close(self) -> None:
        for c in (self._conn, self._listen):
            if c is not None:
                with contextlib.suppress(Exception):
                    c.close()
        self._conn = self._listen = None


def _one_line(exc: BaseException | str) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__

