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

import binascii
import hashlib
import hmac
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from beiand.accesslog.format import decode, encode
from beiand.model import AccessRecord


class CopyRow(NamedTuple):
    gateway: str
    worker: int
    partition: str
    seq: int
    pos: int
    link: str  # 64 hex digits
    record: AccessRecord
    line: bytes = b""  # the record's line as the log chained it, when the reader has it as is

    def encoded(self) -> bytes:
        return self.line or encode(self.record)


class CopyRun(NamedTuple):
    """Rows of one worker's partition that follow each other (seq and pos both +1 a row), as a
    reader hands them over in bulk: ``lines[i]`` (as the log chained it) and ``links[i]`` (64 hex
    digits, ASCII) are those of record ``seq + i``, the ``pos + i``-th of ``partition``. Verified
    in a tight loop: one hash and one comparison a row (issue 27's bar: 10M rows in <= 60 s);
    only a run's first and last rows are decoded."""

    gateway: str
    worker: int
    partition: str
    seq: int
    pos: int
    links: list[bytes]
    lines: list[bytes]

    def row(self, i: int) -> CopyRow:
        return CopyRow(self.gateway, self.worker, self.partition, self.seq + i, self.pos + i, self.links[i].decode(),
                       decode(self.lines[i]), self.lines[i])


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


def _run_rest(run: CopyRun, head: bytes, step: Callable[[bytes, bytes], bytes], key: bytes | None, rep: CopyReport,
              anchored: dict[int, CopyAnchor] | None, found: dict[tuple[str, int, str], dict[int, str]],
              pk: tuple[str, int, str]) -> tuple[CopyRow, bytes]:
    """Rows 1… of a run, the first one done: returns the last row and its link (as bytes)."""
    links, lines = run.links, run.lines
    hexlify = binascii.b2a_hex
    sha = hashlib.sha256 if key is None else None
    for i in range(1, len(lines)):
        head = sha(head + lines[i]).digest() if sha is not None else step(head, lines[i])
        if hexlify(head) != links[i]:
            r = run.row(i)
            rep.problems.append(f"{_name(r.gateway, r.worker, r.partition, r.seq, r.pos)}: altered: the record and its link "
                                f"do not follow from seq {r.seq - 1}")
            head = _unhex(r.link)
    if anchored is not None:
        for count in anchored:
            if run.pos < count < run.pos + len(lines):
                found.setdefault(pk, {})[count] = links[count - run.pos].decode()
    return run.row(len(lines) - 1), head


def verify_copy(rows: Iterable[CopyRow | CopyRun], anchors: Iterable[CopyAnchor] = (), key: bytes | None = None) -> CopyReport:
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
    cur = WorkerCopy()
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
    run: CopyRun | None = None
    pending: list[CopyRun] = []  # the rest of a run whose first row was held twice
    it = iter(rows)
    while True:
        item = pending.pop() if pending else next(it, None)
        if item is None:
            break
        if isinstance(item, CopyRun):
            run, r = item, item.row(0)  # the first row as any row; the rest below, in bulk
        else:
            run, r = None, item
        if r.worker != wk[1] or r.gateway != wk[0]:
            if prev is not None:
                cur.last_seq, cur.head = prev.seq, prev.link
                maxpos[pk] = max(maxpos.get(pk, 0), prev.pos)
            prev = None
            wk = (r.gateway, r.worker)
            wc = rep.workers.get(wk)
            if wc is None:
                wc = rep.workers[wk] = WorkerCopy(first_seq=r.seq, first_ts=r.record.ts_ms)
            cur = wc
        if prev is not None:
            if r.seq == prev.seq + 1 and r.partition == prev.partition:  # the common case
                head = step(prev_head, r.line or r.encoded())
                if head.hex() != r.link:
                    rep.problems.append(f"{_name(*wk, r.partition, r.seq, r.pos)}: altered: the record and its link do not "
                                        f"follow from seq {prev.seq}")
                    head = _unhex(r.link)
                if anchored is not None and r.pos in anchored:
                    found.setdefault(pk, {})[r.pos] = r.link
                cur.rows += 1
                prev, prev_head = r, head
                if run is not None:
                    prev, prev_head = _run_rest(run, prev_head, step, key, rep, anchored, found, pk)
                    cur.rows += len(run.lines) - 1
                continue
            if r.seq == prev.seq:
                if r == prev:
                    rep.duplicates += 1
                else:
                    rep.problems.append(f"{_name(*wk, r.partition, r.seq, r.pos)}: held twice with different contents: "
                                        "one of them was altered")
                if run is not None and len(run.lines) > 1:
                    pending.append(CopyRun(run.gateway, run.worker, run.partition, run.seq + 1, run.pos + 1, run.links[1:],
                                           run.lines[1:]))
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
        cur.rows += 1
        prev, prev_head = r, _unhex(r.link)
        if run is not None:
            prev, prev_head = _run_rest(run, prev_head, step, key, rep, anchored, found, pk)
            cur.rows += len(run.lines) - 1
    if prev is not None:
        cur.last_seq, cur.head = prev.seq, prev.link
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
