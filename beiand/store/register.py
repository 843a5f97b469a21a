"""The register in the decision store (DESIGN.md, Fleet: "filing records, inventory"): the filing
export, the hosted inventory and the NAT feed, each published as *versions*, with their history
kept as data, not copies.

A version is one published snapshot of one kind (``records``, ``inventory``, ``nat``), numbered in
one sequence for every kind, with who, when, why, the source it was imported from (path and
SHA-256), its row count, the SHA-256 of its content and a summary of what changed. The register
*at* version V is, for each kind, the rows in force at V: so one number says which records,
inventory and NAT mappings decided something.

Rows are kept by content: a row's data (canonical JSON text, given by its kind's owner:
``records.versions``, ``policy.register``) is stored once under its hash
(``beiand_register_content``); ``beiand_register_rows`` holds one interval per row and content,
``[valid_from, valid_to)`` in versions (``valid_to`` NULL: in force). An unchanged row costs
nothing in a new version; a changed one ends its interval and opens another. A row's lookup keys
(the names and addresses a filing lists) are kept per content (``beiand_register_names``), so a
lookup at any past version reads the few rows that matter, not the whole export.

A gateway fetches a version by its content (:func:`fetch`: the rows in force at it, checked
against the version's SHA-256), never through the notification: publishing ``NOTIFY``s
:data:`CHANNEL` (PostgreSQL) with the version's number only, to say that a new one exists;
followers poll besides (and SQLite has no channel). The decision rows are not touched: their
versions stay the orders' and commands'.

This module knows rows only; what a row means, whether a new version may replace the one in force
(the reload guard) and how its change is summarised are the caller's (``check``).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from beiand.store.base import DecisionStore, StoreError, Transaction

REGISTER_KINDS = ("records", "inventory", "nat")
CHANNEL = "beiand_register"  # PostgreSQL NOTIFY: a version was published (its number; fetched by content)
HASH_CHARS = 32  # 128 bits of SHA-256 in hex: the content's name


class RegisterRow(NamedTuple):
    """A row to publish: its key within the kind (a filing number, a prefix), its data as canonical
    JSON text, and the keys a lookup finds it by (names, addresses; ``"~"`` for ranges)."""

    key: str
    data: str
    names: tuple[str, ...] = ()


class Version(NamedTuple):
    version: int
    kind: str
    at: float
    actor: str
    why: str
    source: str
    source_sha256: str
    sha256: str  # of the content (:func:`content_sha256`): what a gateway checks after fetching
    rows: int
    summary: dict[str, Any]
    gateway: str


class Delta(NamedTuple):
    """What a new snapshot changes against the one in force: keys added and removed, and for each
    changed key its data before and after."""

    in_force: int
    added: list[str]
    removed: list[str]
    changed: list[tuple[str, str, str]]
    added_data: dict[str, str]
    removed_data: dict[str, str]


class Unchanged(StoreError):
    """The snapshot is the one in force: no version published."""

    def __init__(self, message: str, version: Version) -> None:
        super().__init__(message)
        self.version = version


def row_hash(data: str) -> str:
    return hashlib.sha256(data.encode()).hexdigest()[:HASH_CHARS]


_CHUNK = 20_000  # lines joined at a time: one encode and one hash update each, not four calls a row


def _lines(ordered: Sequence[tuple[str, str]]) -> Iterator[bytes]:
    """``key<TAB>data<LF>`` lines of rows already sorted by key, as a few large chunks."""
    for i in range(0, len(ordered), _CHUNK):
        yield "".join([f"{k}\t{d}\n" for k, d in ordered[i:i + _CHUNK]]).encode()


def content_sha256(rows: Iterable[tuple[str, str]]) -> str:
    """The SHA-256 of a snapshot: its (key, data) lines sorted by key (what a gateway writes and
    checks after fetching; the same whatever order the rows came in)."""
    h = hashlib.sha256()
    for chunk in _lines(sorted(rows)):
        h.update(chunk)
    return h.hexdigest()


_VERSION_COLS = "version, kind, at, actor, why, source, source_sha256, sha256, rows, summary, gateway"


def _version(row: Sequence[Any]) -> Version:
    v, kind, at, actor, why, source, ssha, sha, rows, summary, gw = row
    try:
        s = orjson.loads(summary)
    except orjson.JSONDecodeError:
        s = {}
    return Version(int(v), kind, float(at), actor, why, source, ssha, sha, int(rows), s if isinstance(s, dict) else {}, gw)


def _in_force(tx: Transaction, kind: str) -> dict[str, str]:
    """key → content hash of the rows of ``kind`` in force now."""
    tx.cur.execute(tx.store._q("SELECT key, hash FROM beiand_register_rows WHERE kind = ? AND valid_to IS NULL"), (kind,))
    return dict(tx.cur.fetchall())


def _data(tx: Transaction, hashes: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    todo = list(dict.fromkeys(hashes))
    q = tx.store._q
    for i in range(0, len(todo), 500):
        part = todo[i:i + 500]
        tx.cur.execute(q("SELECT hash, data FROM beiand_register_content WHERE hash IN (" + ", ".join("?" * len(part))
                         + ")"), part)
        out.update(tx.cur.fetchall())
    return out


def publish(store: DecisionStore, kind: str, rows: Sequence[RegisterRow], *, at: float | None = None, actor: str = "",
            why: str = "", source: str = "", source_sha256: str = "",
            check: Callable[[Delta], dict[str, Any]] | None = None) -> Version:
    """Publish ``rows`` as the new version of ``kind``, under the store's write lock.

    ``check`` sees what changes against the version in force and returns the summary kept with the
    new one, or raises (the reload guard: nothing is written). A snapshot equal to the one in force
    raises :class:`Unchanged` naming it. Keys must be unique (the caller's rows are one snapshot).
    """
    if kind not in REGISTER_KINDS:
        raise StoreError(f"register: kind {kind!r} is not one of {', '.join(REGISTER_KINDS)}")
    by_key: dict[str, RegisterRow] = {}
    for r in rows:
        if r.key in by_key:
            raise StoreError(f"register {kind}: key {r.key!r} twice in one snapshot")
        by_key[r.key] = r
    hashes = {k: row_hash(r.data) for k, r in by_key.items()}
    h = hashlib.sha256()  # content_sha256 (the keys are unique: sorted by key alone)
    for chunk in _lines([(k, r[1]) for k, r in sorted(by_key.items())]):
        h.update(chunk)
    sha = h.hexdigest()
    try:
        with store.transaction() as tx:
            q = store._q
            cur = tx.cur
            head = _head(tx, kind)
            if head is not None and head.sha256 == sha:
                raise Unchanged(f"register {kind}: the same content as version {head.version} in force: nothing published",
                                head)
            old = _in_force(tx, kind)
            added: list[str] = []
            changed_keys: list[str] = []
            for k, now in hashes.items():
                was = old.get(k)
                if was is None:
                    added.append(k)
                elif was != now:
                    changed_keys.append(k)
            removed = [k for k in old if k not in hashes] if len(old) > len(hashes) - len(added) else []
            need = [old[k] for k in changed_keys] + [old[k] for k in removed]
            before = _data(tx, need) if need else {}
            delta = Delta(len(old), added, removed, [(k, before.get(old[k], ""), by_key[k].data) for k in changed_keys],
                          {k: by_key[k].data for k in added}, {k: before.get(old[k], "") for k in removed})
            summary = check(delta) if check is not None else {}
            summary = {"added": len(added), "removed": len(removed), "changed": len(changed_keys), **summary}
            cur.execute(q("SELECT coalesce(max(version), 0) FROM beiand_register_versions"))
            version = int(cur.fetchone()[0]) + 1
            ended = removed + changed_keys
            if ended:
                cur.executemany(q("UPDATE beiand_register_rows SET valid_to = ? WHERE kind = ? AND key = ? AND valid_to IS NULL"),
                                [(version, kind, k) for k in ended])
            opened = added + changed_keys
            content = {hashes[k]: by_key[k] for k in opened}
            # a content stored before (a row back to what it was) is kept once, its lookup keys with it
            stored = store._register_content(cur, [(h, r.data) for h, r in content.items()])
            store._register_insert(cur, "beiand_register_names", ("name", "hash"),
                                   [(n, h) for h, r in content.items() if h in stored for n in dict.fromkeys(r.names)])
            store._register_insert(cur, "beiand_register_rows", ("kind", "key", "hash", "valid_from"),
                                   [(kind, k, hashes[k], version) for k in opened])
            # the version's time: under the write lock, after its rows are written (a long import is
            # not "in force" from when it began), never before the version it follows (`--at`
            # resolves by it: :func:`version_at`)
            when = at
            if when is None:
                cur.execute(q("SELECT coalesce(max(at), 0) FROM beiand_register_versions"))
                when = max(time.time(), float(cur.fetchone()[0]))
            v = Version(version, kind, when, actor, why, source, source_sha256, sha, len(by_key), summary, store.gateway)
            cur.execute(q(f"INSERT INTO beiand_register_versions ({_VERSION_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                        (*v[:9], orjson.dumps(summary).decode(), store.gateway))
            # the followers' news: a new version exists (they fetch it by content, not from the news)
            store._signal(cur, CHANNEL, str(version))
            return v
    except StoreError:
        raise
    except Exception as exc:
        if type(exc).__module__.startswith(("sqlite3", "psycopg")):
            raise store._error(exc) from None
        raise


def _head(tx: Transaction, kind: str) -> Version | None:
    tx.cur.execute(tx.store._q(f"SELECT {_VERSION_COLS} FROM beiand_register_versions WHERE kind = ? "
                               "ORDER BY version DESC LIMIT 1"), (kind,))
    row = tx.cur.fetchone()
    return _version(row) if row else None


def versions(store: DecisionStore, kind: str = "", limit: int = 0) -> list[Version]:
    """Published versions, newest first (``kind``: of that kind only)."""
    sql = f"SELECT {_VERSION_COLS} FROM beiand_register_versions"
    args: list[Any] = []
    if kind:
        sql += " WHERE kind = ?"
        args.append(kind)
    sql += " ORDER BY version DESC"
    if limit:
        sql += f" LIMIT {int(limit)}"
    try:
        with store._read() as cur:
            cur.execute(store._q(sql), args)
            return [_version(r) for r in cur.fetchall()]
    except StoreError:
        raise
    except Exception as exc:
        raise store._error(exc) from None


def head(store: DecisionStore) -> int:
    """The register's last version (0: nothing published)."""
    try:
        with store._read() as cur:
            cur.execute("SELECT coalesce(max(version), 0) FROM beiand_register_versions")
            return int(cur.fetchone()[0])
    except StoreError:
        raise
    except Exception as exc:
        raise store._error(exc) from None


def version_at(store: DecisionStore, ts: float) -> int:
    """The register version in force at time ``ts`` (0: before the first): the last one that, with
    every version before it, was published by ``ts`` (a version is the rows of all before it: one
    published later is never in force earlier, whatever time a caller gave it)."""
    try:
        with store._read() as cur:
            cur.execute(store._q("SELECT min(version) FROM beiand_register_versions WHERE at > ?"), (ts,))
            later = cur.fetchone()[0]
            if later is not None:
                return int(later) - 1
            cur.execute("SELECT coalesce(max(version), 0) FROM beiand_register_versions")
            return int(cur.fetchone()[0])
    except StoreError:
        raise
    except Exception as exc:
        raise store._error(exc) from None


def in_force(store: DecisionStore, kind: str, version: int) -> Version | None:
    """The version of ``kind`` in force at register version ``version`` (None: none yet)."""
    try:
        with store._read() as cur:
            cur.execute(store._q(f"SELECT {_VERSION_COLS} FROM beiand_register_versions WHERE kind = ? AND version <= ? "
                                 "ORDER BY version DESC LIMIT 1"), (kind, version))
            row = cur.fetchone()
    except StoreError:
        raise
    except Exception as exc:
        raise store._error(exc) from None
    return _version(row) if row else None


_AT = "r.valid_from <= ? AND (r.valid_to IS NULL OR r.valid_to > ?)"


def rows_at(store: DecisionStore, kind: str, version: int) -> list[tuple[str, str]]:
    """(key, data) of every row of ``kind`` in force at ``version``."""
    try:
        with store._read() as cur:
            cur.execute(store._q("SELECT r.key, c.data FROM beiand_register_rows r JOIN beiand_register_content c "
                                 f"ON c.hash = r.hash WHERE r.kind = ? AND {_AT}"), (kind, version, version))
            return [(k, d) for k, d in cur.fetchall()]
    except StoreError:
        raise
    except Exception as exc:
        raise store._error(exc) from None


def fetch(store: DecisionStore, kind: str, version: int) -> tuple[Version | None, list[tuple[str, str]]]:
    """The content of the version of ``kind`` in force at ``version``, checked against its SHA-256
    (a StoreError when it does not match: a damaged store is never applied)."""
    v = in_force(store, kind, version)
    if v is None:
        return None, []
    rows = rows_at(store, kind, v.version)
    got = content_sha256(rows)
    if got != v.sha256:
        raise StoreError(f"register {kind} version {v.version}: content SHA-256 {got[:16]}… is not the published "
                         f"{v.sha256[:16]}…: not applied")
    return v, rows


def changes_between(store: DecisionStore, kind: str, held: int, version: int) -> tuple[list[str], list[tuple[str, str]]]:
    """What a copy of ``kind`` at version ``held`` needs to be the one at ``version``: the keys of
    the rows that ended, and the rows (key, data) that began (a gateway fetches the change, not
    the whole export; :func:`apply_changes` and the SHA-256 check make the copy)."""
    try:
        with store._read() as cur:
            cur.execute(store._q("SELECT key FROM beiand_register_rows WHERE kind = ? AND valid_from <= ? AND valid_to > ? "
                                 "AND valid_to <= ?"), (kind, held, held, version))
            ended = [k for (k,) in cur.fetchall()]
            cur.execute(store._q("SELECT r.key, c.data FROM beiand_register_rows r JOIN beiand_register_content c "
                                 "ON c.hash = r.hash WHERE r.kind = ? AND r.valid_from > ? AND r.valid_from <= ? "
                                 "AND (r.valid_to IS NULL OR r.valid_to > ?)"), (kind, held, version, version))
            begun = [(k, d) for k, d in cur.fetchall()]
    except StoreError:
        raise
    except Exception as exc:
        raise store._error(exc) from None
    return ended, begun


def apply_changes(rows: Iterable[tuple[str, str]], ended: Sequence[str], begun: Sequence[tuple[str, str]]) -> dict[str, str]:
    out = dict(rows)
    for k in ended:
        out.pop(k, None)
    out.update(begun)
    return out


def rows_named(store: DecisionStore, kind: str, names: Sequence[str], version: int) -> list[tuple[str, str]]:
    """(key, data) of the rows of ``kind`` in force at ``version`` listed under any of ``names``."""
    if not names:
        return []
    try:
        with store._read() as cur:
            cur.execute(store._q("SELECT DISTINCT r.key, c.data FROM beiand_register_names n "
                                 "JOIN beiand_register_rows r ON r.hash = n.hash JOIN beiand_register_content c ON c.hash = n.hash "
                                 f"WHERE n.name IN ({', '.join('?' * len(names))}) AND r.kind = ? AND {_AT}"),
                        (*names, kind, version, version))
            return [(k, d) for k, d in cur.fetchall()]
    except StoreError:
        raise
    except Exception as exc:
        raise store._error(exc) from None


def diff(store: DecisionStore, kind: str, v1: int, v2: int) -> Delta:
    """What changed in ``kind`` from register version ``v1`` to ``v2``."""
    a = dict(rows_at(store, kind, v1))
    b = dict(rows_at(store, kind, v2))
    added = sorted(k for k in b if k not in a)
    removed = sorted(k for k in a if k not in b)
    changed = [(k, a[k], b[k]) for k in sorted(b) if k in a and a[k] != b[k]]
    return Delta(len(a), added, removed, changed, {k: b[k] for k in added}, {k: a[k] for k in removed})


def size(store: DecisionStore) -> dict[str, int]:
    """Rows per register table (the bench's figure of the history's cost)."""
    out = {}
    try:
        with store._read() as cur:
            for t in ("beiand_register_versions", "beiand_register_content", "beiand_register_rows", "beiand_register_names"):
                cur.execute(f"SELECT count(*) FROM {t}")
                out[t] = int(cur.fetchone()[0])
    except Exception as exc:
        raise store._error(exc) from None
    return out


# -- a gateway's copy --------------------------------------------------------------------------


def write_snapshot(path: Path, v: Version, rows: Iterable[tuple[str, str]], *, check: bool = False) -> None:
    """Keep a fetched version on this gateway (what it judges with while the store is unreachable,
    and what it starts from): a header line (the version), then ``key<TAB>data`` lines sorted by
    key; written beside and renamed, fsynced. ``check``: the lines must hash to the version's
    SHA-256 (StoreError, nothing replaced: a damaged fetch or a wrong change is never kept)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    h = hashlib.sha256()
    with os.fdopen(fd, "wb") as f:
        f.write(orjson.dumps(v._asdict()) + b"\n")
        for chunk in _lines(sorted(rows)):
            h.update(chunk)
            f.write(chunk)
        f.flush()
        if check and h.hexdigest() != v.sha256:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"register {v.kind} version {v.version}: content SHA-256 {h.hexdigest()[:16]}… is not the "
                             f"published {v.sha256[:16]}…: not kept")
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_header(path: Path) -> Version:
    """The version a gateway's copy says it holds (its first line only: whether to fetch again;
    :func:`read_snapshot` checks the content before it is used)."""
    try:
        with path.open("rb") as f:
            return Version(**orjson.loads(f.readline()))
    except OSError as exc:
        raise StoreError(f"register snapshot {path}: {exc.strerror}") from None
    except (orjson.JSONDecodeError, TypeError) as exc:
        raise StoreError(f"register snapshot {path}:1: not a version header ({exc})") from None


def read_snapshot(path: Path) -> tuple[Version, list[tuple[str, str]]]:
    """A gateway's copy, checked against the SHA-256 its header names (StoreError: damaged)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"register snapshot {path}: {exc.strerror}") from None
    head, _, body = raw.partition(b"\n")
    try:
        h = orjson.loads(head)
        v = Version(**h)
    except (orjson.JSONDecodeError, TypeError) as exc:
        raise StoreError(f"register snapshot {path}:1: not a version header ({exc})") from None
    if hashlib.sha256(body).hexdigest() != v.sha256:
        raise StoreError(f"register snapshot {path}: content does not match its SHA-256 (damaged): not used")
    # b"\n" only: str.splitlines() also splits on U+2028, U+2029, U+0085 (and \r, \x1c…), which
    # orjson writes unescaped inside a row's JSON (a sponsor's name may hold one)
    try:
        text = body.decode()
    except UnicodeDecodeError:
        for n, raw_line in enumerate(body.split(b"\n"), start=2):
            try:
                raw_line.decode()
            except UnicodeDecodeError as exc:
                raise StoreError(f"register snapshot {path}:{n}: not UTF-8 ({exc.reason}): not used") from None
        raise
    if not text:
        return v, []
    rows = []
    for line in text[:-1].split("\n") if text.endswith("\n") else text.split("\n"):
        key, _, data = line.partition("\t")
        rows.append((key, data))
    return v, rows
