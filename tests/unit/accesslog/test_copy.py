"""A copy of the log verified from its rows alone (issue 27): what the local log commits, with
each record's chain fields, recomputes; a row deleted, altered or sent twice is told apart."""

from __future__ import annotations

from pathlib import Path

from beiand.accesslog import AccessLog, LogConfig
from beiand.accesslog.copy import CopyAnchor, CopyRow, verify_copy
from beiand.accesslog.format import decode
from beiand.accesslog.store import Committed
from tests.unit.accesslog.helpers import rec


def _copy(d: Path, n: int, key: bytes | None = None, **kw: object) -> tuple[list[CopyRow], list[CopyAnchor]]:
    got: list[Committed] = []
    anchors: list[CopyAnchor] = []

    def anchor(a: dict[str, object]) -> None:
        anchors.append(CopyAnchor("gw", 0, str(a["partition"]), int(a["count"]), str(a["head"]), 0))  # type: ignore[call-overload]

    with AccessLog(LogConfig(d, gateway="gw", key=key, **kw), on_commit=got.append, on_checkpoint=anchor) as log:  # type: ignore[arg-type]
        for i in range(n):
            log.append(rec(i))
            if i % 97 == 0:
                log.flush()
                log.checkpoint()
    rows = [CopyRow(c.gateway, c.worker, c.partition, c.seq + i, c.pos + i, link.hex(), decode(ln))
            for c in got for i, (ln, link) in enumerate(zip(c.lines, c.links, strict=True))]
    return rows, anchors


def test_the_committed_records_carry_their_numbers_across_partitions_and_restarts(tmp_path: Path) -> None:
    rows, _ = _copy(tmp_path, 1500, partition_records=1000)
    assert [r.seq for r in rows] == list(range(1, 1501))
    assert {r.partition for r in rows} == {"2026-09-21/w0", "2026-09-21/w0.p1"}
    assert rows[1000].pos == 1 and rows[999].pos == 1000
    more, _ = _copy(tmp_path, 10, partition_records=1000)  # a restart continues the numbers
    assert [r.seq for r in more] == list(range(1501, 1511))
    assert verify_copy(rows + more).ok


def test_a_clean_copy_verifies_with_its_anchors_and_a_key(tmp_path: Path) -> None:
    rows, anchors = _copy(tmp_path, 500, key=b"k" * 32)
    rep = verify_copy(rows, anchors, key=b"k" * 32)
    assert rep.ok and rep.anchors_checked == len(anchors) and rep.workers[("gw", 0)].rows == 500
    assert not verify_copy(rows, anchors).ok  # without the key the links do not recompute


def test_a_deleted_an_altered_and_a_doubled_row(tmp_path: Path) -> None:
    rows, anchors = _copy(tmp_path, 300)
    rep = verify_copy(rows[:40] + rows[41:], anchors)
    assert rep.problems == ["gateway gw worker 0 seq 41 (partition 2026-09-21/w0 record(s) 41-41): missing: deleted from the copy"]
    bad = rows[:]
    bad[40] = bad[40]._replace(record=bad[40].record._replace(client_ip="192.0.2.1"))
    rep = verify_copy(bad, anchors)
    assert rep.problems == ["gateway gw worker 0 partition 2026-09-21/w0 seq 41 (record 41 of the partition): altered: the "
                            "record and its link do not follow from seq 40"]
    rep = verify_copy(rows[:41] + rows[40:], anchors)
    assert rep.ok and rep.duplicates == 1
    # Rows cut from the end are found by the anchor after them.
    rep = verify_copy(rows[:250], anchors)
    assert rep.problems == ["gateway gw worker 0 partition 2026-09-21/w0 records 251-292: anchored, missing from the copy: "
                            "removed from its end"]


def test_rows_read_as_lines_verify_like_decoded_rows(tmp_path: Path) -> None:
    """A reader's fast path hands the record's line as the log chained it (no decoding): the
    same verdicts, the same names for an altered and a deleted row."""
    from beiand.accesslog.format import encode

    rows, anchors = _copy(tmp_path, 300, partition_records=120)
    fast = [r._replace(line=encode(r.record)) for r in rows]
    rep = verify_copy(fast, anchors)
    assert rep.ok and rep.anchors_checked == len(anchors) and rep.workers[("gw", 0)].rows == 300
    assert rep.workers[("gw", 0)].last_seq == 300 and rep.workers[("gw", 0)].head == rows[-1].link
    bad = fast[:]
    bad[40] = bad[40]._replace(line=bad[40].line.replace(b"\t10.0.", b"\t10.9."))
    assert verify_copy(bad, anchors).problems == verify_copy(
        [*rows[:40], rows[40]._replace(record=rows[40].record._replace(client_ip="10.9." + rows[40].record.client_ip[5:])),
         *rows[41:]], anchors).problems != []
    assert verify_copy(fast[:130] + fast[131:], anchors).problems == verify_copy(rows[:130] + rows[131:], anchors).problems
    assert verify_copy(fast[:131] + fast[130:], anchors).duplicates == 1


def test_runs_verify_like_rows(tmp_path: Path) -> None:
    """A reader hands rows that follow each other as one run (issue 27: 10M rows in <= 60 s): a
    run cut anywhere, with an altered, a deleted or a doubled row, gets the verdicts rows get."""
    from beiand.accesslog.copy import CopyRun
    from beiand.accesslog.format import encode

    rows, anchors = _copy(tmp_path, 300, partition_records=120)

    def runs(rs: list[CopyRow], cut: int = 7) -> list[CopyRow | CopyRun]:
        out: list[CopyRow | CopyRun] = []
        i = 0
        while i < len(rs):
            j = i + 1
            while (j < len(rs) and j - i < cut and rs[j].seq == rs[j - 1].seq + 1 and rs[j].pos == rs[j - 1].pos + 1
                   and rs[j].partition == rs[i].partition):
                j += 1
            r = rs[i]
            out.append(CopyRun(r.gateway, r.worker, r.partition, r.seq, r.pos, [x.link.encode() for x in rs[i:j]],
                               [encode(x.record) for x in rs[i:j]]))
            i = j
        return out

    for cut in (1, 7, 1000):
        rep = verify_copy(runs(rows, cut), anchors)
        assert rep.ok and rep.anchors_checked == len(anchors) and rep.workers[("gw", 0)].rows == 300, (cut, rep.problems)
        assert rep.workers[("gw", 0)].last_seq == 300 and rep.workers[("gw", 0)].head == rows[-1].link
        bad = rows[:]
        bad[40] = bad[40]._replace(record=bad[40].record._replace(client_ip="192.0.2.1"))
        assert verify_copy(runs(bad, cut), anchors).problems == verify_copy(bad, anchors).problems != []
        gone = rows[:130] + rows[131:]
        assert verify_copy(runs(gone, cut), anchors).problems == verify_copy(gone, anchors).problems != []
        doubled = runs(rows[:131], cut) + runs(rows[130:], cut)
        rep = verify_copy(doubled, anchors)
        assert rep.ok and rep.duplicates == 1 and rep.workers[("gw", 0)].rows == 300, (cut, rep.problems)
        cut_end = rows[:250]
        assert verify_copy(runs(cut_end, cut), anchors).problems == verify_copy(cut_end, anchors).problems != []
