"""The rows, the errors and the interface shared by both backends (SQLite, PostgreSQL).

Both speak DB-API; what differs (placeholders, the write lock, DDL, NOTIFY) is a backend's few
hooks. The schema has a version (``beiand_meta``); :data:`MIGRATIONS` take a store from one version
to the next, each marked safe to run at a gateway's start (it only adds) or not (``beiand store
migrate`` only). A store whose schema is newer than this beiand is refused, never written.
"""

from __future__ import annotations

import contextlib
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from beiand.errors import BeiandError

# The kinds of row the store holds; a row of another kind is kept and ignored (a newer writer's).
KINDS = ("order", "exemption", "isms-command", "isms-list", "isms-house", "isms-codes", "isms-setting", "isms-sequence",
         "isms-refused", "case", "ip-report", "authority")
OPS = ("set", "end", "note")
SCHEMA_VERSION = 2


class StoreError(BeiandError):
    """The store cannot be reached, read or written; the message says which store and why."""


class SchemaError(StoreError):
    """The store's schema is not one this beiand can use (newer, or older and not migrated)."""


class Entry(NamedTuple):
    """A change to write: the store gives it its version and the gateway."""

    kind: str
    key: str
    op: str  # set | end | note
    data: dict[str, Any]
    at: float
    actor: str = ""
    why: str = ""


class Change(NamedTuple):
    """A row of the store."""

    version: int
    kind: str
    key: str
    op: str
    data: dict[str, Any]
    at: float
    actor: str
    why: str
    gateway: str


@dataclass(frozen=True)
class Migration:
    version: int
    what: str
    safe: bool  # only adds: run at a gateway's start
    sql: dict[str, tuple[str, ...]]  # dialect → statements


_TABLES = {
    "meta": "CREATE TABLE beiand_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "decisions": """CREATE TABLE beiand_decisions (
        version BIGINT PRIMARY KEY, kind TEXT NOT NULL, key TEXT NOT NULL,
        op TEXT NOT NULL CHECK (op IN ('set', 'end', 'note')), data TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL, actor TEXT NOT NULL, why TEXT NOT NULL, gateway TEXT NOT NULL)""",
    "index": "CREATE INDEX beiand_decisions_kind ON beiand_decisions (kind, key, version)",
    "gateways": """CREATE TABLE beiand_gateways (
        gateway TEXT PRIMARY KEY, version BIGINT NOT NULL, applied_at DOUBLE PRECISION NOT NULL,
        heartbeat_at DOUBLE PRECISION NOT NULL, host TEXT NOT NULL, beiand TEXT NOT NULL, state TEXT NOT NULL)""",
    "imports": """CREATE TABLE beiand_imports (
        gateway TEXT NOT NULL, source TEXT NOT NULL, sha256 TEXT NOT NULL, at DOUBLE PRECISION NOT NULL,
        rows BIGINT NOT NULL, PRIMARY KEY (gateway, source, sha256))""",
}
# The register (store/register.py): versions of the filing records, the inventory and the NAT feed;
# each row's content once under its hash, one interval of versions per row, its lookup keys.
_REGISTER = (
    """CREATE TABLE beiand_register_versions (
        version BIGINT PRIMARY KEY, kind TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, actor TEXT NOT NULL,
        why TEXT NOT NULL, source TEXT NOT NULL, source_sha256 TEXT NOT NULL, sha256 TEXT NOT NULL, rows BIGINT NOT NULL,
        summary TEXT NOT NULL, gateway TEXT NOT NULL)""",
    "CREATE INDEX beiand_register_versions_at ON beiand_register_versions (at, version)",
    "CREATE TABLE beiand_register_content (hash TEXT PRIMARY KEY, data TEXT NOT NULL)",
    """CREATE TABLE beiand_register_rows (kind TEXT NOT NULL, key TEXT NOT NULL, hash TEXT NOT NULL,
        valid_from BIGINT NOT NULL, valid_to BIGINT)""",
    "CREATE INDEX beiand_register_rows_hash ON beiand_register_rows (hash)",
    # the rows in force: what a new version is compared with, and what a gateway fetches
    "CREATE UNIQUE INDEX beiand_register_rows_open ON beiand_register_rows (kind, key) WHERE valid_to IS NULL",
)
_ROWS = "beiand_register_rows"
_REGISTER_TABLES = ("beiand_register_versions", "beiand_register_content", _ROWS, "beiand_register_names")
MIGRATIONS = [
    Migration(1, "decisions (append-only), gateways' heartbeats, one-time imports", True, {
        "sqlite": (_TABLES["meta"], _TABLES["decisions"], _TABLES["index"], _TABLES["gateways"], _TABLES["imports"],
                   "CREATE TRIGGER beiand_decisions_no_update BEFORE UPDATE ON beiand_decisions "
                   "BEGIN SELECT RAISE(ABORT, 'beiand_decisions is append-only: add a row instead'); END",
                   "CREATE TRIGGER beiand_decisions_no_delete BEFORE DELETE ON beiand_decisions "
                   "BEGIN SELECT RAISE(ABORT, 'beiand_decisions is append-only: nothing is deleted'); END"),
        "postgresql": (_TABLES["meta"], _TABLES["decisions"], _TABLES["index"], _TABLES["gateways"], _TABLES["imports"],
                       "CREATE FUNCTION beiand_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                       "RAISE EXCEPTION 'beiand_decisions is append-only: add a row instead'; END $$",
                       "CREATE TRIGGER beiand_decisions_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON beiand_decisions "
                       "FOR EACH STATEMENT EXECUTE FUNCTION beiand_append_only()"),
    }),
    Migration(2, "the register: versions of records, inventory and NAT feed, rows by content with their intervals", True, {
        "sqlite": (*_REGISTER, "CREATE TABLE beiand_register_names (name TEXT NOT NULL, hash TEXT NOT NULL, "
                   "PRIMARY KEY (name, hash)) WITHOUT ROWID",
                   *(f"CREATE TRIGGER {t}_no_delete BEFORE DELETE ON {t} "
                     f"BEGIN SELECT RAISE(ABORT, '{t}: the register keeps its history: nothing is deleted'); END"
                     for t in _REGISTER_TABLES),
                   *(f"CREATE TRIGGER {t}_no_update BEFORE UPDATE ON {t} "
                     f"BEGIN SELECT RAISE(ABORT, '{t} is append-only'); END" for t in _REGISTER_TABLES if t != _ROWS),
                   # a row's interval is closed once (valid_to: NULL → the version that ended it), nothing else changes
                   f"CREATE TRIGGER {_ROWS}_close_only BEFORE UPDATE ON {_ROWS} WHEN OLD.valid_to IS NOT NULL "
                   "OR NEW.valid_to IS NULL OR NEW.kind != OLD.kind OR NEW.key != OLD.key OR NEW.hash != OLD.hash "
                   "OR NEW.valid_from != OLD.valid_from "
                   f"BEGIN SELECT RAISE(ABORT, '{_ROWS}: an interval is only ever closed once'); END"),
        "postgresql": (*_REGISTER, "CREATE TABLE beiand_register_names (name TEXT NOT NULL, hash TEXT NOT NULL, "
                       "PRIMARY KEY (name, hash))",
                       "CREATE FUNCTION beiand_register_history() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                       "RAISE EXCEPTION '%: the register keeps its history: nothing is changed or deleted', TG_TABLE_NAME; "
                       "END $$",
                       *(f"CREATE TRIGGER {t}_history BEFORE DELETE OR TRUNCATE{' OR UPDATE' if t != _ROWS else ''} ON {t} "
                         "FOR EACH STATEMENT EXECUTE FUNCTION beiand_register_history()" for t in _REGISTER_TABLES),
                       "CREATE FUNCTION beiand_register_close() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                       "IF OLD.valid_to IS NULL AND NEW.valid_to IS NOT NULL AND NEW.kind = OLD.kind AND NEW.key = OLD.key "
                       "AND NEW.hash = OLD.hash AND NEW.valid_from = OLD.valid_from THEN RETURN NEW; END IF; "
                       f"RAISE EXCEPTION '{_ROWS}: an interval is only ever closed once'; END $$",
                       f"CREATE TRIGGER {_ROWS}_close_only BEFORE UPDATE ON {_ROWS} "
                       "FOR EACH ROW EXECUTE FUNCTION beiand_register_close()"),
    }),
]


def check_entry(e: Entry) -> None:
    """A row as every writer must give it (the folders check what the data means)."""
    if e.op not in OPS:
        raise StoreError(f"{e.kind} {e.key!r}: op {e.op!r} is not one of {', '.join(OPS)}")
    if not e.kind or not isinstance(e.key, str) or not e.key:
        raise StoreError(f"a change needs a kind and a key (got {e.kind!r}, {e.key!r})")
    if not math.isfinite(e.at):
        raise StoreError(f"{e.kind} {e.key!r}: time {e.at!r} is not a time")


def _schema_problem(url: str, have: int) -> str:
    if have > SCHEMA_VERSION:
        return (f"decision store {url}: schema version {have} is newer than this beiand's ({SCHEMA_VERSION}): upgrade "
                "beiand on this gateway; nothing was read or written")
    if have == 0:
        return f"decision store {url}: no schema yet: run `beiand store migrate` (a gateway's start does it)"
    return f"decision store {url}: schema version {have}, this beiand needs {SCHEMA_VERSION}: run `beiand store migrate`"


class Transaction:
    """The write lock held: the rows since a version, then new rows numbered after the last."""

    def __init__(self, store: DecisionStore, cur: Any) -> None:
        self.store = store
        self.cur = cur
        self.head = store._head(cur)
        self.appended: list[Change] = []

    def changes(self, since: int, kinds: Sequence[str] = ()) -> list[Change]:
        return self.store._changes(self.cur, since, kinds)

    def append(self, entries: Sequence[Entry]) -> int:
        """Write ``entries`` (numbered after the store's last row); the new last version."""
        rows = []
        for e in entries:
            check_entry(e)
            self.head += 1
            rows.append((self.head, e.kind, e.key, e.op, orjson.dumps(e.data).decode(), float(e.at), e.actor or "",
                         e.why or "", self.store.gateway))
            self.appended.append(Change(self.head, e.kind, e.key, e.op, e.data, float(e.at), e.actor or "", e.why or "",
                                        self.store.gateway))
        if rows:
            self.store._insert(self.cur, rows)
        return self.head

    def imported(self, source: str, sha256: str) -> bool:
        return self.store._imported(self.cur, source, sha256)

    def note_import(self, source: str, sha256: str, rows: int) -> None:
        self.store._note_import(self.cur, source, sha256, rows)


class DecisionStore(ABC):
    """One store; a connection per instance (not shared between threads)."""

    dialect = ""
    MARK = "?"

    def __init__(self, url: str, gateway: str) -> None:
        self.url = url  # for messages: no password in it
        self.gateway = gateway

    # -- the backend's hooks ---------------------------------------------------------------------

    @abstractmethod
    def _connect(self) -> Any: ...

    @abstractmethod
    @contextlib.contextmanager
    def _locked(self) -> Iterator[Any]:
        """A cursor in a transaction holding the store's write lock; committed on leaving."""
        yield None

    @abstractmethod
    def _read(self) -> Any:
        """A cursor for reading (its own short transaction)."""

    @abstractmethod
    def close(self) -> None: ...

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for news of a change (True: maybe one); without a notification
        channel, sleep (the caller polls the version)."""
        time.sleep(timeout)
        return False

    def _notify(self, cur: Any, version: int) -> None:  # noqa: B027 (SQLite has no channel: followers poll)
        """Tell the followers (PostgreSQL: NOTIFY, delivered at commit)."""

    def _signal(self, cur: Any, channel: str, payload: str) -> None:  # noqa: B027 (SQLite has no channel: followers poll)
        """News on another channel than the decisions' (the register's: ``store.register``)."""

    def _error(self, exc: BaseException) -> StoreError:
        return StoreError(f"decision store {self.url}: {exc}")

    # -- SQL shared by both ----------------------------------------------------------------------

    def _q(self, sql: str) -> str:
        return sql.replace("?", self.MARK)

    def _head(self, cur: Any) -> int:
        cur.execute("SELECT coalesce(max(version), 0) FROM beiand_decisions")
        return int(cur.fetchone()[0])

    def _changes(self, cur: Any, since: int, kinds: Sequence[str]) -> list[Change]:
        sql = "SELECT version, kind, key, op, data, at, actor, why, gateway FROM beiand_decisions WHERE version > ?"
        args: list[Any] = [since]
        if kinds:
            sql += " AND kind IN (" + ", ".join("?" for _ in kinds) + ")"
            args += list(kinds)
        cur.execute(self._q(sql + " ORDER BY version"), args)
        out = []
        for v, kind, key, op, data, at, actor, why, gw in cur.fetchall():
            try:
                d = orjson.loads(data)
            except orjson.JSONDecodeError:
                d = {"__damaged__": str(data)[:200]}  # the folder refuses it, naming the row
            out.append(Change(int(v), kind, key, op, d if isinstance(d, dict) else {"__damaged__": repr(d)[:200]}, float(at),
                              actor, why, gw))
        return out

    def _insert(self, cur: Any, rows: list[tuple[Any, ...]]) -> None:
        cur.executemany(self._q("INSERT INTO beiand_decisions (version, kind, key, op, data, at, actor, why, gateway) "
                                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"), rows)

    def _register_insert(self, cur: Any, table: str, cols: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        """Many new rows into a register table."""
        if rows:
            cur.executemany(self._q(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"), rows)

    def _register_content(self, cur: Any, rows: list[tuple[str, str]]) -> set[str]:
        """Store the (hash, data) rows whose hash is not stored yet; the hashes stored now (a content
        seen in an earlier version is kept once, with the lookup keys it had then)."""
        have: set[str] = set()
        for i in range(0, len(rows), 500):
            part = [h for h, _ in rows[i:i + 500]]
            cur.execute(self._q(f"SELECT hash FROM beiand_register_content WHERE hash IN ({', '.join('?' * len(part))})"), part)
            have.update(h for (h,) in cur.fetchall())
        new = [r for r in rows if r[0] not in have]
        self._register_insert(cur, "beiand_register_content", ("hash", "data"), new)
        return {h for h, _ in new}

    def _imported(self, cur: Any, source: str, sha256: str) -> bool:
        """This content was imported (by any gateway, from any path: the same file copied to two
        gateways is one import)."""
        cur.execute(self._q("SELECT 1 FROM beiand_imports WHERE sha256 = ?"), (sha256,))
        return cur.fetchone() is not None

    def _note_import(self, cur: Any, source: str, sha256: str, rows: int) -> None:
        cur.execute(self._q("INSERT INTO beiand_imports (gateway, source, sha256, at, rows) VALUES (?, ?, ?, ?, ?)"),
                    (self.gateway, source, sha256, time.time(), rows))

    def _schema(self, cur: Any) -> int:
        """The store's schema version (0: an empty store)."""
        if not self._has_meta(cur):
            return 0
        cur.execute("SELECT value FROM beiand_meta WHERE key = 'schema'")
        row = cur.fetchone()
        return int(row[0]) if row else 0

    @abstractmethod
    def _has_meta(self, cur: Any) -> bool: ...

    # -- the interface ---------------------------------------------------------------------------

    def schema(self) -> int:
        try:
            with self._read() as cur:
                return self._schema(cur)
        except StoreError:
            raise
        except Exception as exc:
            raise self._error(exc) from None

    def pending_migrations(self) -> list[Migration]:
        """The migrations this store needs; a schema newer than this beiand's is refused."""
        have = self.schema()
        if have > SCHEMA_VERSION:
            raise SchemaError(_schema_problem(self.url, have))
        return [m for m in MIGRATIONS if m.version > have]

    def migrate(self, *, auto: bool = False) -> list[Migration]:
        """Bring the schema to this beiand's; ``auto`` (a gateway's start): only safe migrations,
        an unsafe one pending is a :class:`SchemaError` naming ``beiand store migrate``."""
        todo = self.pending_migrations()
        if not todo:
            return []
        if auto and not all(m.safe for m in todo):
            first = next(m for m in todo if not m.safe)
            raise SchemaError(f"decision store {self.url}: schema {first.version - 1} needs migration {first.version} "
                              f"({first.what}), which is not run at start: run `beiand store migrate`")
        done = []
        try:
            with self._locked() as cur:
                have = self._schema(cur)  # again, under the lock: another gateway may have migrated meanwhile
                for m in MIGRATIONS:
                    if m.version <= have:
                        continue
                    for stmt in m.sql[self.dialect]:
                        cur.execute(stmt)
                    if m.version == 1:
                        cur.execute("INSERT INTO beiand_meta (key, value) VALUES ('schema', '1')")
                    else:
                        cur.execute(self._q("UPDATE beiand_meta SET value = ? WHERE key = 'schema'"), (str(m.version),))
                    done.append(m)
        except StoreError:
            raise
        except Exception as exc:
            raise self._error(exc) from None
        return done

    def check_schema(self) -> None:
        """Refuse a store this beiand cannot read (newer, or not migrated)."""
        have = self.schema()
        if have != SCHEMA_VERSION:
            raise SchemaError(_schema_problem(self.url, have))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """The write lock: read what changed, then append; committed (and the followers told) on
        leaving, rolled back on an exception."""
        try:
            with self._locked() as cur:
                have = self._schema(cur)
                if have != SCHEMA_VERSION:
                    raise SchemaError(_schema_problem(self.url, have))
                tx = Transaction(self, cur)
                yield tx
                if tx.appended:
                    self._notify(cur, tx.head)
        except StoreError:
            raise
        except BeiandError:
            raise
        except Exception as exc:
            if type(exc).__module__.startswith(("sqlite3", "psycopg")):
                raise self._error(exc) from None
            raise

    def append(self, entries: Sequence[Entry]) -> int:
        with self.transaction() as tx:
            return tx.append(entries)

    def head(self) -> int:
        try:
            with self._read() as cur:
                return self._head(cur)
        except Exception as exc:
            raise self._error(exc) from None

    def changes(self, since: int = 0, kinds: Sequence[str] = ()) -> list[Change]:
        try:
            with self._read() as cur:
                return self._changes(cur, since, kinds)
        except Exception as exc:
            raise self._error(exc) from None

    def heartbeat(self, version: int, applied_at: float, host: str, beiand: str, state: dict[str, Any]) -> None:
        """This gateway applies ``version`` since ``applied_at`` (``fleet status``)."""
        now = time.time()
        try:
            with self._locked_free() as cur:
                cur.execute(self._q(
                    "INSERT INTO beiand_gateways (gateway, version, applied_at, heartbeat_at, host, beiand, state) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (gateway) DO UPDATE SET version = excluded.version, "
                    "applied_at = excluded.applied_at, heartbeat_at = excluded.heartbeat_at, host = excluded.host, "
                    "beiand = excluded.beiand, state = excluded.state"),
                    (self.gateway, version, applied_at, now, host, beiand, orjson.dumps(state).decode()))
        except Exception as exc:
            raise self._error(exc) from None

    def gateways(self) -> list[dict[str, Any]]:
        try:
            with self._read() as cur:
                cur.execute("SELECT gateway, version, applied_at, heartbeat_at, host, beiand, state FROM beiand_gateways "
                            "ORDER BY gateway")
                rows = cur.fetchall()
        except Exception as exc:
            raise self._error(exc) from None
        out = []
        for gw, v, applied, hb, host, beiand, state in rows:
            try:
                st = orjson.loads(state)
            except orjson.JSONDecodeError:
                st = {}
            out.append({"gateway": gw, "version": int(v), "applied_at": float(applied), "heartbeat_at": float(hb),
                        "host": host, "beiand": beiand, "state": st})
        return out

    @contextlib.contextmanager
    def _locked_free(self) -> Iterator[Any]:
        """A short write transaction that needs no order against the rows (a heartbeat)."""
        with self._read() as cur:
            yield cur
