"""The embedded store: append, rotation, sealing, queries, tamper evidence, retention, repair."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import stat
import zlib
from pathlib import Path

import pytest

from beiand.accesslog import (
    AccessLog,
    LogConfig,
    LogConfigError,
    Query,
    QueryStats,
    query,
    retire,
    stats,
    verify,
)
from beiand.accesslog.format import DAY_MS, FRAME, TRAILER, decode_block_seq, encode_block, frame_bytes, iter_frames, parse_header
from beiand.accesslog.store import BlockTable, read_sealed_meta
from tests.unit.accesslog.helpers import DAY0, rec


def write(d: Path, days: int = 3, per_day: int = 500, **cfg: object) -> list:
    out = []
    with AccessLog(LogConfig(d, block_records=64, **cfg)) as log:  # type: ignore[arg-type]
        for day in range(days):
            for i in range(per_day):
                r = rec(i, day)
                log.append(r)
                out.append(r)
            log.flush()
    return out


def parts(d: Path) -> list[Path]:
    return sorted(p for p in d.glob("*/w*.*") if p.suffix != ".mark")


def test_records_round_trip_across_days_and_partitions_are_sealed(tmp_path: Path) -> None:
    recs = write(tmp_path)
    p = parts(tmp_path)
    assert [x.suffix for x in p] == [".sealed", ".sealed", ".open"]
    assert list(query(tmp_path, Query())) == recs
    rep = verify(tmp_path)
    assert rep.ok, rep.all_problems()
    assert stats(tmp_path).records == len(recs)


def test_reopen_continues_the_chain(tmp_path: Path) -> None:
    write(tmp_path, days=1)
    with AccessLog(LogConfig(tmp_path)) as log:
        log.append(rec(9999))
    assert verify(tmp_path).ok
    assert stats(tmp_path).records == 501


def test_files_are_private(tmp_path: Path) -> None:
    d = tmp_path / "log"
    write(d, days=2, per_day=10)
    assert stat.S_IMODE(d.stat().st_mode) == 0o750
    for p in d.rglob("*"):
        assert stat.S_IMODE(p.stat().st_mode) == (0o750 if p.is_dir() else 0o640), p


def test_queries_filter_exactly_and_use_the_index(tmp_path: Path) -> None:
    recs = write(tmp_path, days=3, per_day=2000)
    cases = [
        Query(name="www3.example3.cn"),
        Query(suffix="example1.cn"),
        Query(client=ipaddress.ip_network("10.0.3.0/24")),
        Query(client=ipaddress.ip_network("10.0.2.9")),
        Query(server=ipaddress.ip_network("198.51.100.4")),
        Query(server=ipaddress.ip_network("198.51.100.4"), port=443),
        Query(port=443, proto="tcp"),
        Query(account="cust-2", verdict="unfiled"),
        Query(since_ms=DAY0 + DAY_MS + 5000, until_ms=DAY0 + DAY_MS + 9000),
    ]
    for q in cases:
        got = list(query(tmp_path, q))
        want = [r for r in recs if q.match(r)]
        assert got == want, q
        assert want or q.since_ms, q
    # Sealed partitions are clustered by server endpoint (issue 19): an endpoint's records sit in
    # few blocks. (Names here are spread over every server, unlike real traffic, where a name is
    # served from its own few addresses and so sits in their blocks.)
    st = QueryStats()
    list(query(tmp_path, Query(server=ipaddress.ip_network("198.51.100.4"), port=443), st))
    assert 0 < st.blocks_read <= st.blocks_total // 4  # the index kept most blocks closed


def test_partitions_outside_the_range_are_not_opened(tmp_path: Path) -> None:
    write(tmp_path, days=5, per_day=50)
    st = QueryStats()
    got = list(query(tmp_path, Query(since_ms=DAY0 + 4 * DAY_MS), st))
    assert len(got) == 50
    assert st.partitions_total == 5 and st.partitions_opened == 1
    st = QueryStats()
    got = list(query(tmp_path, Query(since_ms=DAY0 + DAY_MS, until_ms=DAY0 + 2 * DAY_MS), st))
    assert len(got) == 50
    assert st.partitions_opened == 2  # that day and the next (late records)


# -- tamper evidence ---------------------------------------------------------------------------


def rewrite_sealed_block(p: Path, block: int, edit) -> None:  # type: ignore[no-untyped-def]
    """Replace one block's records (recompressed, same table and heads): what a forger would do."""
    meta = read_sealed_meta(p, segments=False)
    data = bytearray(p.read_bytes())
    rows = [list(r) for r in meta.pop("blocks")]
    off, clen, *_ = rows[block]
    version = int(meta.get("format", 1))
    seqs, lines = decode_block_seq(bytes(data[off:off + clen]), version)
    edited = edit(lines)
    if seqs is not None and len(edited) != len(seqs):
        seqs = edit(seqs)  # a record inserted or deleted takes its log position with it
    new = encode_block(edited, None, seqs) if version >= 2 else zlib.compress(b"".join(edited), 6)
    data[off:off + clen] = new
    delta = len(new) - clen
    for b in rows[block + 1:]:
        b[0] += delta
    rows[block][1] = len(new)
    for sec in [meta.get("index"), meta.get("summary"), meta.get("block_table"), meta.get("segment_table"),
                *meta.get("index_kinds", {}).values()]:
        if sec is not None:
            sec[0] += delta
    if "block_table" in meta:  # format 2: the binary block table, rewritten in place
        at = meta["block_table"][0]
        table = BlockTable.pack(rows)
        data[at:at + len(table)] = table
    else:
        meta["blocks"] = rows
    moff = TRAILER.unpack(bytes(data[-TRAILER.size:]))[0] + delta
    mb = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    del data[moff:]
    data += mb + TRAILER.pack(moff, len(mb), b"BEIANDSL")
    p.write_bytes(bytes(data))


def rewrite_open(p: Path, edit) -> None:  # type: ignore[no-untyped-def]
    """Edit an open partition's records, keeping frame checksums valid (but not the chain)."""
    data = p.read_bytes()
    _, start = parse_header(data, str(p))
    frames, _, _ = iter_frames(data, start)
    out = bytearray(data[:start])
    for i, fr in enumerate(frames):
        lines = fr.payload.splitlines(keepends=True)
        if i == 0:
            lines = edit(lines)
        out += frame_bytes(len(lines), fr.head, b"".join(lines))
    p.write_bytes(bytes(out))


EDITS = {
    "modified": lambda ls: [ls[0].replace(b"tls-sni", b"http-host"), *ls[1:]],
    "inserted": lambda ls: [ls[0], ls[0], *ls[1:]],
    "deleted": lambda ls: ls[1:],
    "reordered": lambda ls: [ls[1], ls[0], *ls[2:]],
}


@pytest.mark.parametrize("kind", EDITS)
def test_verify_detects_edits_in_a_sealed_partition(tmp_path: Path, kind: str) -> None:
    write(tmp_path)
    rewrite_sealed_block(parts(tmp_path)[0], 2, EDITS[kind])
    rep = verify(tmp_path)
    assert not rep.ok
    # The edited block is named (a sealed partition is clustered: the records of the broken chain
    # segment are held in several blocks, the edited one among them).
    assert any("block 2" in p or re.search(r"block\(s\) ([0-9]+, )*2\b", p) for p in rep.all_problems()), rep.all_problems()


@pytest.mark.parametrize("kind", EDITS)
def test_verify_detects_edits_in_the_open_partition(tmp_path: Path, kind: str) -> None:
    write(tmp_path)
    rewrite_open(parts(tmp_path)[-1], EDITS[kind])
    rep = verify(tmp_path)
    assert any("chain broken" in p for p in rep.all_problems()), rep.all_problems()


def test_verify_detects_a_deleted_middle_partition(tmp_path: Path) -> None:
    write(tmp_path)
    parts(tmp_path)[1].unlink()
    probs = verify(tmp_path).all_problems()
    assert any("does not continue the chain" in p for p in probs)
    assert any("missing and was never retired" in p for p in probs)


def test_verify_detects_a_deleted_first_partition(tmp_path: Path) -> None:
    write(tmp_path)
    parts(tmp_path)[0].unlink()
    probs = verify(tmp_path).all_problems()
    assert any("missing (deleted without retirement)" in p for p in probs)


def test_verify_detects_truncated_partitions(tmp_path: Path) -> None:
    write(tmp_path)
    p = parts(tmp_path)[0]
    p.write_bytes(p.read_bytes()[:-100])
    assert any("truncated" in x for x in verify(tmp_path).all_problems())


def test_verify_detects_records_cut_from_the_open_partition_after_a_checkpoint(tmp_path: Path) -> None:
    d = tmp_path
    with AccessLog(LogConfig(d)) as log:
        for i in range(100):
            log.append(rec(i))
        log.flush()
        log.checkpoint()
        for i in range(100, 200):
            log.append(rec(i))
    p = parts(d)[-1]
    data = p.read_bytes()
    _, start = parse_header(data, str(p))
    frames, _, _ = iter_frames(data, start)
    p.write_bytes(data[:frames[0].offset + FRAME.size])  # keep the header only: every record gone
    with open(p, "r+b") as f:
        f.truncate(start)
    assert any("were checkpointed" in x for x in verify(d).all_problems())


def test_keyed_chain_needs_the_key(tmp_path: Path) -> None:
    write(tmp_path, days=2, key=b"secret")
    assert verify(tmp_path, key=b"secret").ok
    assert not verify(tmp_path).ok
    assert any("different HMAC key" in p for p in verify(tmp_path, key=b"other").all_problems())


# -- retention ---------------------------------------------------------------------------------


def test_retention_below_60_days_is_refused_with_the_article(tmp_path: Path) -> None:
    with pytest.raises(LogConfigError, match=r"Order 292 art\. 14"):
        LogConfig(tmp_path, retention_days=59)
    with pytest.raises(LogConfigError):
        retire(tmp_path, 30)


def test_retention_removes_only_old_partitions_and_verify_still_passes(tmp_path: Path) -> None:
    write(tmp_path, days=64, per_day=2)
    # Day 0 ended 59.5 days ago: kept, although its records are older than 60 days.
    assert retire(tmp_path, 60, now_ms=DAY0 + 60 * DAY_MS + DAY_MS // 2) == []
    removed = retire(tmp_path, 60, now_ms=DAY0 + 61 * DAY_MS + 1)
    assert [p.parent.name for p in removed] == ["2026-09-21"]
    assert not (tmp_path / "2026-09-21").exists()
    rep = verify(tmp_path)
    assert rep.ok, rep.all_problems()
    assert stats(tmp_path).records == 126
    # The wall clock far ahead: only partitions with 60 days of records after them go (days
    # 1-3); the newer ones are younger than 60 days by their records' own times.
    removed = retire(tmp_path, 60, now_ms=DAY0 + 200 * DAY_MS)
    assert [p.parent.name for p in removed] == ["2026-09-22", "2026-09-23", "2026-09-24"]
    assert verify(tmp_path).ok


# -- repair ------------------------------------------------------------------------------------


def test_torn_tail_is_cut_at_start_and_reported(tmp_path: Path) -> None:
    write(tmp_path, days=1, per_day=100)
    p = parts(tmp_path)[-1]
    whole = p.read_bytes()
    with open(p, "ab") as f:
        f.write(frame_bytes(3, bytes(32), b"x\ny\nz\n")[:-4])
    log = AccessLog(LogConfig(tmp_path))
    assert log.stats.torn_repaired == 1 and log.stats.torn_bytes > 0
    log.append(rec(500))
    log.close()
    assert p.read_bytes().startswith(whole)
    assert verify(tmp_path).ok
    assert stats(tmp_path).records == 101
    events = [json.loads(x) for x in (tmp_path / "heads.log").read_text().splitlines()]
    assert any(e["event"] == "repair" for e in events)


def test_an_old_open_partition_is_sealed_at_start(tmp_path: Path) -> None:
    with AccessLog(LogConfig(tmp_path)) as log:
        log.append(rec(1, day=0))
    (tmp_path / "2026-09-22").mkdir(mode=0o750)
    os.rename(parts(tmp_path)[0], tmp_path / "2026-09-21" / "w0.open")  # still open: the daemon died that day
    with AccessLog(LogConfig(tmp_path)) as log:
        log.append(rec(2, day=3))
    assert [p.suffix for p in parts(tmp_path)] == [".sealed", ".open"]
    assert verify(tmp_path).ok


def test_late_records_stay_in_the_open_partition(tmp_path: Path) -> None:
    with AccessLog(LogConfig(tmp_path)) as log:
        log.append(rec(1, day=1))
        log.flush()
        log.append(rec(2, day=0))  # late (an old pcap, clock skew)
    assert [p.parent.name for p in parts(tmp_path)] == ["2026-09-22"]
    assert len(list(query(tmp_path, Query(until_ms=DAY0 + DAY_MS)))) == 1


def test_metrics_report_the_logs_own_counters_and_gauges_and_fsync_samples_are_taken_once(tmp_path: Path) -> None:
    """Issue 26: the log reports its own counters (the worker reads none of its fields)."""
    from beiand.model import MetricKey as K

    log = AccessLog(LogConfig(tmp_path, commit_interval=60.0))
    for i in range(3):
        log.append(rec(i))
    m = log.metrics()
    assert m[K("beiand_accesslog_records")] == 0 and m[K("beiand_accesslog_pending_records")] == 3
    log.flush()
    m = log.metrics()
    assert m == {K("beiand_accesslog_records"): 3, K("beiand_accesslog_bytes"): log.stats.bytes_written,
                 K("beiand_accesslog_write_errors"): 0, K("beiand_accesslog_lost_records"): 0,
                 K("beiand_accesslog_torn_repairs"): 0, K("beiand_accesslog_pending_records"): 0,
                 K("beiand_accesslog_chain_head_prefix"): int.from_bytes(log.head[:6], "big")}
    assert m[K("beiand_accesslog_bytes")] > 0 and m[K("beiand_accesslog_chain_head_prefix")] > 0
    assert log.failing == ""
    fsyncs = log.take_fsync_seconds()
    assert fsyncs and all(s >= 0 for s in fsyncs)
    assert log.take_fsync_seconds() == []
    log.close()
