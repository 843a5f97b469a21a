"""Partitions roll by size as well as by day (issue 19): several partitions per worker per day,
the chain continuing across them; everything that walks partitions takes them in order."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

from beiand.accesslog import AccessLog, LogConfig, Query, query, retire, stats, verify
from beiand.accesslog.format import DAY_MS
from beiand.accesslog.reader import read_anchors
from beiand.accesslog.store import part_name, partition_paths
from tests.unit.accesslog.helpers import DAY0, rec

ROLL = 100


def write(d: Path, days: int = 2, per_day: int = 250, start: int = 0, **cfg: object) -> list:
    out = []
    with AccessLog(LogConfig(d, block_records=32, partition_records=ROLL, **cfg)) as log:  # type: ignore[arg-type]
        for day in range(start, start + days):
            for i in range(per_day):
                r = rec(i, day)
                log.append(r)
                out.append(r)
            log.flush()
    return out


def names(d: Path) -> list[str]:
    return [f"{part_name(p)}{p.suffix}" for p in partition_paths(d)]


def events(d: Path) -> list[dict]:
    return [json.loads(x) for x in (d / "heads.log").read_text().splitlines()]


def test_a_full_partition_is_closed_sealed_and_the_next_one_continues_the_chain(tmp_path: Path) -> None:
    recs = write(tmp_path)
    assert names(tmp_path) == [
        "2026-09-21/w0.sealed", "2026-09-21/w0.p1.sealed", "2026-09-21/w0.p2.sealed",
        "2026-09-22/w0.sealed", "2026-09-22/w0.p1.sealed", "2026-09-22/w0.p2.open"]
    by_part = {e["partition"]: e for e in events(tmp_path) if e["event"] == "seal"}  # sealed in threads: any order
    sealed = [by_part[part_name(p)] for p in partition_paths(tmp_path) if p.suffix == ".sealed"]
    assert [e["count"] for e in sealed] == [100, 100, 50, 100, 100]
    for a, b in itertools.pairwise(sealed):
        assert b["prev_head"] == a["head"]
    assert list(query(tmp_path, Query())) == recs
    rep = verify(tmp_path)
    assert rep.ok, rep.all_problems()
    assert stats(tmp_path).records == len(recs)


def test_a_restart_continues_the_open_partition_then_rolls(tmp_path: Path) -> None:
    recs = write(tmp_path, days=1, per_day=150)
    with AccessLog(LogConfig(tmp_path, block_records=32, partition_records=ROLL)) as log:
        for i in range(150, 300):
            log.append(rec(i))
            recs.append(rec(i))
    assert names(tmp_path) == ["2026-09-21/w0.sealed", "2026-09-21/w0.p1.sealed", "2026-09-21/w0.p2.open"]
    assert sorted(e["count"] for e in events(tmp_path) if e["event"] == "seal") == [100, 100]
    assert list(query(tmp_path, Query())) == recs
    assert verify(tmp_path).ok


def test_a_day_that_rolled_and_a_log_without_a_limit_read_together(tmp_path: Path) -> None:
    """A log written before (one partition per worker per day) goes on with rolling partitions."""
    recs = []
    with AccessLog(LogConfig(tmp_path, block_records=32)) as log:  # no limit: one partition a day
        for i in range(150):
            log.append(rec(i))
            recs.append(rec(i))
    with AccessLog(LogConfig(tmp_path, block_records=32, partition_records=ROLL)) as log:
        for i in range(150, 200):
            log.append(rec(i))
            recs.append(rec(i))
        for i in range(120):
            log.append(rec(i, day=1))
            recs.append(rec(i, day=1))
    assert names(tmp_path) == ["2026-09-21/w0.sealed", "2026-09-21/w0.p1.sealed",
                               "2026-09-22/w0.sealed", "2026-09-22/w0.p1.open"]
    assert list(query(tmp_path, Query())) == recs
    assert verify(tmp_path).ok


def test_verify_detects_a_deleted_middle_partition_of_a_day(tmp_path: Path) -> None:
    write(tmp_path)
    (tmp_path / "2026-09-21" / "w0.p1.sealed").unlink()
    probs = verify(tmp_path).all_problems()
    assert any("2026-09-21/w0.p2" in p and "does not continue the chain of 2026-09-21/w0" in p for p in probs), probs
    assert any("2026-09-21/w0.p1" in p and "missing and was never retired" in p for p in probs), probs


def test_a_partition_left_open_by_a_crash_is_sealed_at_start_in_order(tmp_path: Path) -> None:
    """The daemon died after rolling, before sealing finished: the older open partition is sealed."""
    write(tmp_path, days=1, per_day=150)
    d = tmp_path / "2026-09-21"
    # Rebuild the state of a crash: w0.p1 still open alongside w0.open … by writing with sealing off.
    for p in d.iterdir():
        p.unlink()
    (tmp_path / "heads.log").unlink()
    with AccessLog(LogConfig(tmp_path, block_records=32, partition_records=ROLL, seal=False)) as log:
        for i in range(250):
            log.append(rec(i))
    assert names(tmp_path) == ["2026-09-21/w0.open", "2026-09-21/w0.p1.open", "2026-09-21/w0.p2.open"]
    with AccessLog(LogConfig(tmp_path, block_records=32, partition_records=ROLL)) as log:
        log.append(rec(250))
    assert names(tmp_path) == ["2026-09-21/w0.sealed", "2026-09-21/w0.p1.sealed", "2026-09-21/w0.p2.open"]
    assert len(list(query(tmp_path, Query()))) == 251
    rep = verify(tmp_path)
    assert rep.ok, rep.all_problems()


def test_damage_in_a_rolled_partition_is_set_aside_under_an_unambiguous_name(tmp_path: Path) -> None:
    write(tmp_path, days=1, per_day=250)
    p = tmp_path / "2026-09-21" / "w0.p2.open"
    with open(p, "ab") as f:  # a torn tail as well: cut, not counted as damage
        f.write(b"\x00\x01")
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF  # damage before the commit mark
    p.write_bytes(bytes(data))
    with AccessLog(LogConfig(tmp_path, block_records=32, partition_records=ROLL)) as log:
        for i in range(250, 300):
            log.append(rec(i))
    assert names(tmp_path) == ["2026-09-21/w0.sealed", "2026-09-21/w0.p1.sealed", "2026-09-21/w0.p2.001.damaged",
                               "2026-09-21/w0.p2.open"]
    dmg = [e for e in events(tmp_path) if e["event"] == "damage"]
    assert dmg[0]["partition"] == "2026-09-21/w0.p2" and dmg[0]["aside"] == "2026-09-21/w0.p2.001"
    probs = verify(tmp_path).all_problems()
    assert probs and all("2026-09-21/w0.p2.001" in x for x in probs), probs
    rows = list(query(tmp_path, Query()))
    assert len(rows) == 250  # its one frame unreadable (50 at risk); the 50 written after it in the new w0.p2


def test_retention_removes_every_partition_of_an_old_day(tmp_path: Path) -> None:
    write(tmp_path, days=64, per_day=120)
    removed = retire(tmp_path, 60, now_ms=DAY0 + 61 * DAY_MS + 1)
    assert sorted(p.name for p in removed) == ["w0.p1.sealed", "w0.sealed"]
    assert not (tmp_path / "2026-09-21").exists()
    assert verify(tmp_path).ok


def test_anchors_of_rolled_partitions_are_checked(tmp_path: Path) -> None:
    write(tmp_path, days=1, per_day=250)
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text((tmp_path / "heads.log").read_text())
    parsed = read_anchors(anchors)
    assert {a.partition for a in parsed} >= {"2026-09-21/w0.p1", "2026-09-21/w0.p2"}
    assert verify(tmp_path, anchors=parsed).ok
    os.unlink(tmp_path / "2026-09-21" / "w0.p1.sealed")
    assert any("2026-09-21/w0.p1" in x for x in verify(tmp_path, anchors=parsed).all_problems())
