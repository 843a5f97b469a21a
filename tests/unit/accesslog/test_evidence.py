"""What verify notices without help, what anchors add, and retention by the records' own times
(issue 14)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hypothesis import assume, example, given
from hypothesis import strategies as st

from beiand.accesslog import AccessLog, LogConfig, Query, query, retire, verify
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
    # Logged even when the daemon's log level is "warning": anchors are evidence.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)
    caplog.handler.setLevel(logging.NOTSET)
    try:
        with AccessLog(LogConfig(d)) as log:
            for i in range(300):
                log.append(rec(i))
            log.flush()
            log.checkpoint()
    finally:
        root.setLevel(level)
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


def test_a_clock_set_back_a_day_while_writing_loses_nothing(tmp_path: Path) -> None:
    recs = [rec(i, 1) for i in range(50)] + [rec(i, 0) for i in range(50, 100)] + [rec(i, 1) for i in range(100, 150)]
    with AccessLog(LogConfig(tmp_path, commit_records=25)) as log:
        for r in recs:
            log.append(r)
    assert [p.parent.name for p in tmp_path.glob("*/w0.open")] == ["2026-09-22"]  # late records stay in the open day
    assert sorted(query(tmp_path, Query())) == sorted(recs)
    assert verify(tmp_path).ok
    assert retire(tmp_path, 60, now_ms=DAY0) == []  # the clock behind its records: nothing goes


def test_a_clock_set_forward_a_year_while_writing_loses_nothing(tmp_path: Path) -> None:
    recs = [rec(i, 0) for i in range(50)] + [rec(i, 365) for i in range(50, 100)] + [rec(i, 366) for i in range(100, 150)]
    with AccessLog(LogConfig(tmp_path, commit_records=25)) as log:
        for r in recs:
            log.append(r)
            log.flush()
    assert list(query(tmp_path, Query())) == recs
    assert verify(tmp_path).ok
    assert retire(tmp_path, 60, now_ms=DAY0 + 367 * DAY_MS) == []
    assert list(query(tmp_path, Query())) == recs


# -- anchors files: parsing ---------------------------------------------------------------------

HEX = st.text("0123456789abcdef", min_size=64, max_size=64)


@given(part=st.from_regex(r"\A20\d\d-\d\d-\d\d/w\d{1,3}\Z"), count=st.integers(0, 2**40), head=HEX,
       prefix=st.text(st.characters(blacklist_characters="{\n\r", blacklist_categories=("Cs",)), max_size=40))
@example(part="2026-11-23/w0", count=1, head="0" * 64, prefix="Nov 29 10:00:00 gw beiand[7]: access log anchor ")
def test_anchor_lines_round_trip_with_any_prefix(part: str, count: int, head: str, prefix: str) -> None:
    from beiand.accesslog.reader import Anchor, parse_anchor_line

    assume(not prefix.strip().startswith("#"))  # a comment line

    line = prefix + json.dumps({"partition": part, "count": count, "head": head, "ts_ms": 5})
    assert parse_anchor_line(line, "f:1") == Anchor(part, count, head, 5)


@given(st.text(max_size=200))
@example('{"partition": "2026-11-23/w0", "count": true, "head": ""}')
@example('x {"partition": 1}')
@example('{"event": "retire", "partition": "2026-11-23/w0"}')
def test_anchor_lines_are_parsed_or_refused_with_file_line_and_field(text: str) -> None:
    from beiand.accesslog.reader import Anchor, AnchorError, parse_anchor_line

    try:
        got = parse_anchor_line(text, "anchors.jsonl:7")
    except AnchorError as exc:
        assert str(exc).startswith("anchors.jsonl:7: ")
    else:
        assert got is None or isinstance(got, Anchor)


@given(st.binary(max_size=600), st.integers(0, 599))
@example(b"", 0)
@example(b"F", 0)  # junk that looks like a frame before the header: once an empty damaged range
def test_any_bytes_read_as_an_open_partition_never_raise(junk: bytes, cut: int) -> None:
    from beiand.accesslog.format import frame_bytes, header_line, parse_open

    good = header_line({"prev_head": "00" * 32, "crc": "head+payload"}) + frame_bytes(2, bytes(32), b"a\nb\n")
    data = good[:cut] + junk + good[cut:]
    part = parse_open(data, "w0.open")
    assert all(f.count == f.payload.count(b"\n") for f in part.frames)
    assert all(a < b for a, b in part.damaged)


def test_a_spill_store_logs_no_anchors(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    """A ClickHouse spill's partitions are deleted once replayed: anchors naming them would be
    reported missing by `verify --anchors` of the real log."""
    with caplog.at_level("INFO"), AccessLog(LogConfig(tmp_path, seal=False, anchors=False)) as log:
        log.append(rec(1))
        log.flush()
        log.checkpoint()
    assert not [r for r in caplog.records if "access log anchor" in r.getMessage()]
