"""The register (issue 35): versions of the records, inventory and NAT feed kept as rows by content
with their intervals; what was in force at any version comes back exactly, an unchanged row costs
nothing, a gateway's copy is checked by its SHA-256."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beiand.store import StoreError
from beiand.store import register as reg
from beiand.store.sqlite import SqliteStore


def _store(d: Path) -> SqliteStore:
    s = SqliteStore(d / "s.sqlite", "gw-test")
    s.migrate()
    return s


def rows(snapshot: dict[str, str]) -> list[reg.RegisterRow]:
    return [reg.RegisterRow(k, v, (v,)) for k, v in snapshot.items()]


snapshots = st.lists(st.dictionaries(st.sampled_from("abcdefgh"), st.sampled_from(["1", "2", "3"]), min_size=1), min_size=1,
                     max_size=8)


@settings(max_examples=40, deadline=None)
@given(snapshots)
def test_every_version_reads_back_as_published_and_history_is_rows_not_copies(tmp_path_factory: pytest.TempPathFactory,
                                                                              snaps: list[dict[str, str]]) -> None:
    s = _store(tmp_path_factory.mktemp("reg"))
    published: dict[int, dict[str, str]] = {}
    last: dict[str, str] | None = None
    for snap in snaps:
        try:
            v = reg.publish(s, "records", rows(snap))
        except reg.Unchanged as exc:
            assert snap == last and exc.version.version == max(published)
            continue
        published[v.version] = dict(snap)
        last = snap
        assert v.summary["added"] == len(set(snap) - set(published.get(v.version - 1, {})))
    for version, snap in published.items():
        got, content = reg.fetch(s, "records", version)
        assert got is not None and got.version == version and dict(content) == snap
        for key, data in snap.items():  # found by its lookup key, at that version only as it was then
            assert (key, data) in reg.rows_named(s, "records", [data], version)
    # a copy at any version, with the change since, is the later version (what a gateway fetches)
    vs = sorted(published)
    for a in vs:
        for b in vs:
            if a < b:
                ended, begun = reg.changes_between(s, "records", a, b)
                assert reg.apply_changes(reg.rows_at(s, "records", a), ended, begun) == published[b]
    # one interval per row and content: never more than the rows that changed
    changes = sum(len(snap) for snap in list(published.values())[:1]) + sum(
        len({k for k in b if a.get(k) != b[k]}) for a, b in zip(list(published.values()), list(published.values())[1:],
                                                                  strict=False))
    assert reg.size(s)["beiand_register_rows"] == changes
    s.close()


def test_the_check_refuses_and_nothing_is_written(tmp_path: Path) -> None:
    s = _store(tmp_path)
    reg.publish(s, "records", rows({"a": "1", "b": "2"}))

    def guard(d: reg.Delta) -> dict[str, object]:
        assert d.in_force == 2 and d.removed == ["b"] and d.changed == [("a", "1", "9")]
        raise StoreError("refused by the guard")

    with pytest.raises(StoreError, match="guard"):
        reg.publish(s, "records", rows({"a": "9"}), check=guard)
    assert reg.head(s) == 1 and dict(reg.rows_at(s, "records", 1)) == {"a": "1", "b": "2"}
    assert s.changes(0) == []  # the decision rows are not the register's


def test_kinds_share_one_sequence_and_the_time_finds_the_version(tmp_path: Path) -> None:
    s = _store(tmp_path)
    v1 = reg.publish(s, "records", rows({"a": "1"}), at=100.0, actor="alice", why="first")
    v2 = reg.publish(s, "inventory", rows({"10.0.0.0/8": "x"}), at=200.0)
    v3 = reg.publish(s, "records", rows({"a": "2"}), at=300.0)
    assert (v1.version, v2.version, v3.version) == (1, 2, 3)
    assert reg.version_at(s, 50) == 0 and reg.version_at(s, 250) == 2 and reg.version_at(s, 300) == 3
    rec = reg.in_force(s, "records", 2)
    assert rec is not None and rec.version == 1 and rec.actor == "alice" and rec.why == "first"
    assert reg.diff(s, "records", 1, 3).changed == [("a", "1", "2")]
    assert [v.version for v in reg.versions(s)] == [3, 2, 1] and [v.version for v in reg.versions(s, "inventory")] == [2]


def test_a_copy_is_checked_against_its_sha256(tmp_path: Path) -> None:
    s = _store(tmp_path)
    reg.publish(s, "records", rows({"a": "1", "b": "2"}))
    v, content = reg.fetch(s, "records", 1)
    assert v is not None
    p = tmp_path / "copy"
    reg.write_snapshot(p, v, content)
    back, got = reg.read_snapshot(p)
    assert back == v and got == sorted(content)
    p.write_bytes(p.read_bytes().replace(b'\t2', b'\t3'))
    with pytest.raises(StoreError, match="damaged"):
        reg.read_snapshot(p)


def test_a_key_twice_or_an_unknown_kind_is_refused(tmp_path: Path) -> None:
    s = _store(tmp_path)
    with pytest.raises(StoreError, match="twice"):
        reg.publish(s, "records", [reg.RegisterRow("a", "1"), reg.RegisterRow("a", "2")])
    with pytest.raises(StoreError, match="not one of"):
        reg.publish(s, "orders", rows({"a": "1"}))


def test_history_is_never_rewritten(tmp_path: Path) -> None:
    """Nothing of the register is deleted or changed; an interval is only ever closed once."""
    import sqlite3

    s = _store(tmp_path)
    reg.publish(s, "records", rows({"a": "1", "b": "2"}))
    reg.publish(s, "records", rows({"a": "1"}))
    c = sqlite3.connect(tmp_path / "s.sqlite")
    for sql in ("DELETE FROM beiand_register_rows", "DELETE FROM beiand_register_content",
                "UPDATE beiand_register_versions SET actor = 'x'", "UPDATE beiand_register_rows SET valid_to = 9 WHERE key = 'b'",
                "UPDATE beiand_register_rows SET hash = 'x' WHERE key = 'a'"):
        with pytest.raises(sqlite3.DatabaseError, match="register"):
            c.execute(sql)
    c.close()
    assert dict(reg.rows_at(s, "records", 1)) == {"a": "1", "b": "2"}


@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\x85", "\x1c", "\r", "\x0b"])
def test_a_copy_with_a_line_separator_in_a_row_reads_back(tmp_path: Path, sep: str) -> None:
    """orjson writes U+2028, U+2029 and U+0085 unescaped: the copy is split on b"\\n" only."""
    s = _store(tmp_path)
    reg.publish(s, "records", rows({"a": f'["x{sep}y"]', "b": "2"}))
    v, content = reg.fetch(s, "records", 1)
    assert v is not None
    p = tmp_path / "copy"
    reg.write_snapshot(p, v, content)
    assert reg.read_snapshot(p) == (v, sorted(content))


def test_a_version_is_in_force_from_its_commit_not_before(tmp_path: Path) -> None:
    """A version's time is taken under the write lock, after the work (a long import waiting for the
    lock is not "in force" from when it started), never before the version it follows; and the
    version in force at a time is the last one that, with every one before it, was published by then."""
    import time

    s = _store(tmp_path)
    seen: list[float] = []

    def check(delta: reg.Delta) -> dict[str, object]:
        seen.append(time.time())  # under the lock
        return {}

    v1 = reg.publish(s, "records", rows({"a": "1"}), check=check)
    assert v1.at >= seen[0]
    assert reg.versions(s)[0].at == v1.at
    v2 = reg.publish(s, "inventory", rows({"p": "x"}))
    assert v2.at >= v1.at and reg.version_at(s, v2.at) == 2 and reg.version_at(s, v1.at) == 1
    # times out of order (given by the caller): a later number is never in force before an earlier one
    reg.publish(s, "records", rows({"a": "2"}), at=v2.at + 300)
    reg.publish(s, "records", rows({"a": "3"}), at=v2.at + 200)
    assert reg.version_at(s, v2.at + 250) == 2
    assert reg.version_at(s, v2.at + 300) == 4


def test_a_copy_that_is_not_utf8_is_refused_by_line(tmp_path: Path) -> None:
    s = _store(tmp_path)
    reg.publish(s, "records", rows({"a": "1"}))
    v, _ = reg.fetch(s, "records", 1)
    assert v is not None
    body = b"a\t\xff\n"
    p = tmp_path / "copy"
    p.write_bytes(orjson.dumps(v._replace(sha256=hashlib.sha256(body).hexdigest())._asdict()) + b"\n" + body)
    with pytest.raises(StoreError, match=r"copy:2: not UTF-8"):
        reg.read_snapshot(p)
