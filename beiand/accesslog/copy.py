"""Verify a copy of the access log held elsewhere (ClickHouse, issue 27) from its rows alone.

Each row of the copy is one record with its chain fields: the gateway and worker that wrote it,
the log partition, ``seq`` (the worker's record number, 1, 2, … across its partitions), ``pos``
(its position in the partition: what an anchor's ``count`` names after it) and ``link`` (the
chain head after it, ``h_i = H(h_{i-1} ‖ line_i)`` as in the local log). Rows are taken in
(gateway, worker, seq) order; for each worker:

- a row whose predecessor (seq - 1) is there must satisfy ``link = H(link of seq - 1 ‖ line)``:
  a row altered in the copy fails here, named by gateway, worker, partition and seq;
- a gap in ``seq`` is a deleted row (or rows), named the same way; a gap before the first row
  is not (the copy may begin after the log did, and retention drops whole days);
- every anchor (the log's checkpoints: partition, count, head) names the row at ``pos = count``
  of that partition, whose link must be its head (count 0: the head before the partition's
  first row); an anchor beyond the rows the copy holds of a partition reports rows removed from
  its end;
- two rows with the same (gateway, worker, seq) are one record sent twice when they are equal
  (counted; ReplacingMergeTree folds them), a problem when they differ.

Pure: the rows come from an iterator, the HTTP reading is the caller's (``beiand.sinks.clickhouse``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from beiand.accesslog.format import encode
from beiand.model import AccessRecord


class CopyRow(NamedTuple):
    gateway: str
    worker: int
    partition: str
    seq: int
    pos: int
    link: str  # 64 hex digits
    record: AccessRecord | None  # None when ``line`` is given (a reader's fast path: not decoded)
    line: bytes = b""  # the record's line as the log chained it, when the reader has it as is

    def encoded(self) -> bytes:
        if self.line:
            return self.line
        assert self.record is not None
        return encode(self.record)

    def ts_ms(self) -> int:
        if self.record is not None:
            return self.record.ts_ms
        return int(self.line[:self.line.index(b"\t")])


@dataclass(frozen=True)
class CopyAnchor:
    """One checkpoint of the log as the anchors table holds it."""

    gateway: str
    worker: int
    partition: str
    count: int
    head: str
    ts_ms: int = 0


@dataclass
class WorkerCopy:
    rows: int = 0
    first_seq: int = 0
    last_seq: int = 0
    head: str = ""  # the link of the last row
    first_ts: int = 0


@dataclass
class CopyReport:
    workers: dict[tuple[str, int], WorkerCopy] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    duplicates: int = 0  # rows equal to another row of the same (gateway, worker, seq)
    anchors_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def _name(gw: str, worker: int, part: str, seq: int, pos: int) -> str:
    return f"gateway {gw} worker {worker} partition {part} seq {seq} (record {pos} of the partition)"


def _unhex(link: str) -> bytes:
    try:
        return bytes.fromhex(link)
    except ValueError:  # not a link at all: the next row cannot follow from it either
        return b""


def verify_copy(rows: Iterable[CopyRow], anchors: Iterable[CopyAnchor] = (), key: bytes | None = None) -> CopyReport:
    """Recompute each worker's chain from the copy's rows, given in (gateway, worker, seq) order.

    One pass, one hash per row (10M rows of one gateway-day in the bench, issue 27's bar: the
    common case, the next row of the same worker and partition, is a few steps)."""
    rep = CopyReport()
    # anchor heads by (gateway, worker, partition) → {count: head}
    wanted: dict[tuple[str, int, str], dict[int, CopyAnchor]] = {}
    for a in anchors:
        wanted.setdefault((a.gateway, a.worker, a.partition), {})[a.count] = a
    found: dict[tuple[str, int, str], dict[int, str]] = {}  # the heads the rows give at anchored counts
    maxpos: dict[tuple[str, int, str], int] = {}
    prev: CopyRow | None = None
    prev_head = b""  # prev's link, as bytes
    w = WorkerCopy()
    wk: tuple[str, int] = ("", -1)
    pk: tuple[str, int, str] = ("", -1, "")
    anchored: dict[int, CopyAnchor] | None = None
    if key is None:
        sha = hashlib.sha256

        def step(head: bytes, line: bytes) -> bytes:
            return sha(head + line).digest()
    else:
        k: bytes = key

        def step(head: bytes, line: bytes) -> bytes:
            return hmac.digest(k, head + line, "sha256")
    for r in rows:
        if r.worker != wk[1] or r.gateway != wk[0]:
            if prev is not None:
                w.last_seq, w.head = prev.seq, prev.link
                maxpos[pk] = max(maxpos.get(pk, 0), prev.pos)
            prev = None
            wk = (r.gateway, r.worker)
            got = rep.workers.get(wk)
            if got is None:
                got = rep.workers[wk] = WorkerCopy(first_seq=r.seq, first_ts=r.ts_ms())
            w = got
        if prev is not None:
            if r.seq == prev.seq + 1 and r.partition == prev.partition:  # the common case
                head = step(prev_head, r.line or r.encoded())
                if head.hex() != r.link:
                    rep.problems.append(f"{_name(*wk, r.partition, r.seq, r.pos)}: altered: the record and its link do not "
                                        f"follow from seq {prev.seq}")
                    head = _unhex(r.link)
                if anchored is not None and r.pos in anchored:
                    found.setdefault(pk, {})[r.pos] = r.link
                w.rows += 1
                prev, prev_head = r, head
                continue
            if r.seq == prev.seq:
                if r == prev:
                    rep.duplicates += 1
                else:
                    rep.problems.append(f"{_name(*wk, r.partition, r.seq, r.pos)}: held twice with different contents: "
                                        "one of them was altered")
                continue
        if pk != (r.gateway, r.worker, r.partition):
            if prev is not None:
                maxpos[pk] = max(maxpos.get(pk, 0), prev.pos)
            pk = (r.gateway, r.worker, r.partition)
            anchored = wanted.get(pk)
        line = r.encoded()
        if prev is not None and r.seq != prev.seq + 1:
            lo, hi = prev.seq + 1, r.seq - 1
            where = (f"partition {r.partition} record(s) {prev.pos + 1}-{r.pos - 1}"
                     if prev.partition == r.partition else f"after partition {prev.partition} record {prev.pos}")
            rep.problems.append(f"gateway {r.gateway} worker {r.worker} seq {lo}" + (f"-{hi}" if hi > lo else "")
                                + f" ({where}): missing: deleted from the copy")
            prev = None
        if prev is not None:
            if anchored is not None and r.pos == 1:
                found.setdefault(pk, {})[0] = prev.link
            if prev.partition != r.partition and r.pos != 1:
                rep.problems.append(f"{_name(*wk, r.partition, r.seq, r.pos)}: the first row of its partition is not its "
                                    "record 1")
            if step(prev_head, line).hex() != r.link:
                rep.problems.append(f"{_name(*wk, r.partition, r.seq, r.pos)}: altered: the record and its link do not "
                                    f"follow from seq {prev.seq}")
        elif anchored is not None and r.pos - 1 in anchored:
            start = anchored[r.pos - 1].head
            if step(_unhex(start), line).hex() != r.link:
                rep.problems.append(f"{_name(*wk, r.partition, r.seq, r.pos)}: altered: the record and its link do not "
                                    f"follow from the anchored head after record {r.pos - 1}")
            found.setdefault(pk, {})[r.pos - 1] = start
        if anchored is not None and r.pos in anchored:
            found.setdefault(pk, {})[r.pos] = r.link
        w.rows += 1
        prev, prev_head = r, _unhex(r.link)
    if prev is not None:
        w.last_seq, w.head = prev.seq, prev.link
        maxpos[pk] = max(maxpos.get(pk, 0), prev.pos)
    for pk, by_count in wanted.items():
        gw, worker, part = pk
        w = rep.workers.get((gw, worker))
        for count, a in sorted(by_count.items()):
            got = found.get(pk, {}).get(count)
            if got is not None:
                rep.anchors_checked += 1
                if got != a.head:
                    rep.problems.append(f"gateway {gw} worker {worker} partition {part}: the anchored head after record "
                                        f"{count} differs from the copy's: a row was altered or replaced")
                continue
            held = maxpos.get(pk, 0)
            if held and count > held:
                rep.problems.append(f"gateway {gw} worker {worker} partition {part} records {held + 1}-{count}: anchored, "
                                    "missing from the copy: removed from its end")
            elif not held and count and w is not None and a.ts_ms >= w.first_ts:
                rep.problems.append(f"gateway {gw} worker {worker} partition {part}: anchored with {count} record(s), "
                                    "none in the copy")
    return rep
