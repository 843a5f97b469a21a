"""What verify notices without help, what anchors add, and retention by the records' own times
(issue 14)."""

from __future__ import annotations

from pathlib import Path

from beiand.accesslog import AccessLog, LogConfig, retire, verify
from beiand.accesslog.format import DAY_MS, read_open
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


def test_anchors_from_the_journal_report_a_missing_or_shorter_partition(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    from beiand.accesslog.reader import read_anchors

    d = tmp_path / "log"
    with caplog.at_level("INFO", logger="beiand.accesslog.store"), AccessLog(LogConfig(d)) as log:
        for i in range(300):
            log.append(rec(i))
        log.flush()
        log.checkpoint()
    # What `journalctl -u beiand | grep 'access log anchor'` gives: a prefix, then the JSON.
    journal = [f"Nov 29 10:00:00 gw beiand[1]: {r.getMessage()}" for r in caplog.records if "access log anchor" in r.getMessage()]
    anchors = tmp_path / "anchors.txt"
    anchors.write_text("\n".join(journal) + "\n")
    got = read_anchors(anchors)
    assert [(a.count, a.partition) for a in got] == [(0, "2026-09-21/w0"), (300, "2026-09-21/w0")]
    assert verify(d, anchors=got).ok
    p = next(d.glob("*/w0.open"))
    part = read_open(p)
    with open(p, "r+b") as f:
        f.truncate(part.frames[0].end)
    (d / "2026-09-21" / "w0.mark").unlink()  # a careful editor removes the commit mark too
    probs = verify(d, anchors=got).all_problems()
    assert any("anchor 2026-09-21/w0 (300 record(s)" in m and "fewer records" in m for m in probs), probs
    # The whole directory gone, heads.log included: only the anchors say what was there.
    import shutil

    shutil.rmtree(d)
    d.mkdir()
    probs = verify(d, anchors=got).all_problems()
    assert any("missing" in m for m in probs), probs
