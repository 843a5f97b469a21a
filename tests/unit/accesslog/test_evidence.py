"""What verify notices without help, what anchors add, and retention by the records' own times
(issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

from beiand.accesslog import AccessLog, LogConfig, retire, verify
from beiand.accesslog.format import DAY_MS, parse_header, read_open
from tests.unit.accesslog.helpers import DAY0, rec


def fill(d: Path, days: tuple[int, ...] = (0,), per_day: int = 300, per_frame: int = 100) -> None:
    with AccessLog(LogConfig(d, commit_records=per_frame)) as log:
        for day in days:
            for i in range(per_day):
                log.append(rec(i, day))
                if (i + 1) % per_frame == 0:
                    log.flush()


def test_a_deleted_open_partition_is_reported(tmp_path: Path) -> None:
    fill(tmp_path)
    next(tmp_path.glob("*/w0.open")).unlink()
    rep = verify(tmp_path)
    assert not rep.ok
    assert any("2026-09-21/w0" in m and "missing" in m for m in rep.all_problems()), rep.all_problems()


def test_a_tail_cut_at_a_frame_boundary_before_any_checkpoint_is_reported(tmp_path: Path) -> None:
    fill(tmp_path)
    p = next(tmp_path.glob("*/w0.open"))
    part = read_open(p)
    with open(p, "r+b") as f:
        f.truncate(part.frames[1].end)  # a whole frame gone, no torn bytes left behind
    rep = verify(tmp_path)
    assert not rep.ok, "a tail cut at a frame boundary went unnoticed"
    assert any("100" in m for m in rep.all_problems()), rep.all_problems()


def test_default_retention_is_six_calendar_months() -> None:
    from beiand.accesslog.store import RETENTION_DEFAULT_DAYS

    assert RETENTION_DEFAULT_DAYS == 184
    assert LogConfig(Path("/nonexistent")).retention_days == 184


def test_a_clock_set_forward_a_year_does_not_retire_young_partitions(tmp_path: Path) -> None:
    # Ten days written, then the clock jumps a year ahead and writing goes on for two days.
    fill(tmp_path, days=(*range(10), 365, 366), per_day=10, per_frame=10)
    removed = retire(tmp_path, 60, now_ms=DAY0 + 367 * DAY_MS)
    assert removed == [], [str(p) for p in removed]


def test_anchors_file_reports_a_missing_or_shorter_partition(tmp_path: Path) -> None:
    from beiand.accesslog.reader import read_anchors

    fill(tmp_path)
    events = [json.loads(x) for x in (tmp_path / "heads.log").read_text().splitlines()]
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text("".join(json.dumps(e) + "\n" for e in events if e["event"] == "checkpoint"))
    assert read_anchors(anchors)
    assert verify(tmp_path, anchors=read_anchors(anchors)).ok
    p = next(tmp_path.glob("*/w0.open"))
    data = p.read_bytes()
    _, start = parse_header(data, str(p))
    p.write_bytes(data[:start])
    assert not verify(tmp_path, anchors=read_anchors(anchors)).ok
