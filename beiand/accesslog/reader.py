"""Reading the embedded access log: query, verify, stats, export (``beiand logs``)."""

from __future__ import annotations

import ipaddress
import json
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from beiand.accesslog.format import (
    DAY_MS,
    GENESIS,
    FormatError,
    Index,
    chain,
    decode,
    key_id,
    read_open,
)
from beiand.accesslog.store import HEADS, day_start_ms, file_sha256, partition_paths, read_sealed_meta
from beiand.model import AccessRecord

IpNet = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Query:
    since_ms: int = 0
    until_ms: int = 2**62
    name: str = ""  # exact name
    suffix: str = ""  # the name or any name below it
    client: IpNet | None = None
    server: IpNet | None = None
    account: str = ""
    verdict: str = ""

    def key(self) -> tuple[str, str] | None:
        """The most selective indexed key, as (kind, key), or None for a scan."""
        if self.name:
            return ("n", self.name)
        if self.suffix:
            return ("n", self.suffix)
        for kind, net in (("c", self.client), ("s", self.server)):
            if net is not None and net.num_addresses == 1:
                return (kind, str(net.network_address))
        if self.account:
            return ("a", self.account)
        return None

    def needle(self) -> bytes:
        """Bytes every matching line contains: a cheap filter before decoding."""
        k = self.key()
        return k[1].encode() if k else b""

    def match(self, r: AccessRecord) -> bool:
        if not self.since_ms <= r.ts_ms < self.until_ms:
            return False
        if self.name and r.name != self.name:
            return False
        if self.suffix and not (r.name == self.suffix or r.name.endswith("." + self.suffix)):
            return False
        if self.account and r.account != self.account:
            return False
        if self.verdict and r.verdict != self.verdict:
            return False
        for net, ip in ((self.client, r.client_ip), (self.server, r.server_ip)):
            if net is not None:
                try:
                    if ipaddress.ip_address(ip) not in net:
                        return False
                except ValueError:
                    return False
        return True


@dataclass
class QueryStats:
    partitions_total: int = 0
    partitions_opened: int = 0
    blocks_read: int = 0
    blocks_total: int = 0


def _in_range(path: Path, q: Query) -> bool:
    # A partition holds the records written on its day; late records (clock skew, a slow
    # worker) sit in the partition open when they arrived, so one day of slack after ``until``.
    start = day_start_ms(path.parent.name)
    return start + DAY_MS > q.since_ms and start < q.until_ms + DAY_MS


def query(directory: Path, q: Query, stats: QueryStats | None = None) -> Iterator[AccessRecord]:
    """Matching records, partition by partition (day order), in log order within each."""
    st = stats if stats is not None else QueryStats()
    needle = q.needle()
    for p in partition_paths(directory):
        st.partitions_total += 1
        if not _in_range(p, q):
            continue
        st.partitions_opened += 1
        if p.suffix == ".sealed":
            yield from _query_sealed(p, q, needle, st)
        else:
            for fr in read_open(p).frames:
                yield from _scan(fr.payload, q, needle)


def _scan(payload: bytes, q: Query, needle: bytes) -> Iterator[AccessRecord]:
    if not needle:
        for ln in payload.splitlines():
            r = decode(ln)
            if q.match(r):
                yield r
        return
    # Only the lines holding the needle are decoded: Python work per match, not per record.
    find, rfind = payload.find, payload.rfind
    pos = find(needle)
    while pos >= 0:
        start = rfind(b"\n", 0, pos) + 1
        end = find(b"\n", pos)
        if end < 0:
            end = len(payload)
        r = decode(payload[start:end])
        if q.match(r):
            yield r
        pos = find(needle, end)


def _query_sealed(p: Path, q: Query, needle: bytes, st: QueryStats) -> Iterator[AccessRecord]:
    meta = read_sealed_meta(p)
    if meta["max_ts"] < q.since_ms or meta["min_ts"] >= q.until_ms:
        return
    blocks = meta["blocks"]
    st.blocks_total += len(blocks)
    key = q.key()
    with open(p, "rb") as f:
        if key is not None:
            off, ln = meta["index"]
            f.seek(off)
            idx = Index(zlib.decompress(f.read(ln)))
            wanted = idx.blocks(*key)
        else:
            wanted = list(range(len(blocks)))
        for b in wanted:
            off, clen, _n, lo, hi, _h = blocks[b]
            if hi < q.since_ms or lo >= q.until_ms:
                continue
            f.seek(off)
            st.blocks_read += 1
            yield from _scan(zlib.decompress(f.read(clen)), q, needle)


# -- summaries (the passive audit) -----------------------------------------------------------

SummaryKey = tuple[str, str, int, str, str, str, str, str, str]  # name, server, port, account, verdict, kind, action, reason, filing


def summaries(directory: Path, since_ms: int = 0, until_ms: int = 2**62) -> dict[SummaryKey, list[int]]:
    """(name, server, port, account, verdict, kind, action, reason, filing) → [first, last, hits].

    Sealed partitions carry this summary (written at sealing), so the audit of 60 days reads 60
    summaries rather than every record; the open partition is scanned. A sealed partition only
    partly inside the window is read record by record for exactness.
    """
    out: dict[SummaryKey, list[int]] = {}

    def add(k: SummaryKey, first: int, last: int, hits: int) -> None:
        row = out.get(k)
        if row is None:
            out[k] = [first, last, hits]
        else:
            row[0] = min(row[0], first)
            row[1] = max(row[1], last)
            row[2] += hits

    q = Query(since_ms=since_ms, until_ms=until_ms)
    for p in partition_paths(directory):
        if not _in_range(p, q):
            continue
        if p.suffix == ".sealed":
            meta = read_sealed_meta(p)
            if meta["max_ts"] < since_ms or meta["min_ts"] >= until_ms:
                continue
            if "summary" in meta and meta["min_ts"] >= since_ms and meta["max_ts"] < until_ms:
                with open(p, "rb") as f:
                    off, ln = meta["summary"]
                    f.seek(off)
                    for line in zlib.decompress(f.read(ln)).decode("utf-8", "surrogateescape").splitlines():
                        v = line.split("\t")
                        add((v[0], v[1], int(v[2]), v[3], v[4], v[5], v[6], v[7], v[8]), int(v[9]), int(v[10]), int(v[11]))
                continue
        for r in (_query_sealed(p, q, b"", QueryStats()) if p.suffix == ".sealed" else _open_records(p, q)):
            add((r.name, r.server_ip, r.server_port, r.account, r.verdict, r.kind, r.action, r.reason, r.filing_number),
                r.ts_ms, r.ts_ms, 1)
    return out


def _open_records(p: Path, q: Query) -> Iterator[AccessRecord]:
    for fr in read_open(p).frames:
        yield from _scan(fr.payload, q, b"")


# -- verify -----------------------------------------------------------------------------------


@dataclass
class PartitionCheck:
    partition: str
    state: str  # open | sealed
    records: int = 0
    prev_head: str = ""
    head: str = ""
    min_ts: int = 0
    max_ts: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class VerifyReport:
    partitions: list[PartitionCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    heads: dict[str, str] = field(default_factory=dict)  # worker → current chain head

    @property
    def ok(self) -> bool:
        return not self.problems and all(not p.problems for p in self.partitions)

    def all_problems(self) -> list[str]:
        return [f"{p.partition}: {m}" for p in self.partitions for m in p.problems] + self.problems


def read_heads(directory: Path) -> list[dict[str, Any]]:
    path = directory / HEADS
    if not path.exists():
        return []
    events = []
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        try:
            events.append(json.loads(line))
        except ValueError:
            events.append({"event": "damaged", "line": n})
    return events


def check_partition(p: Path, key: bytes | None) -> PartitionCheck:
    part = f"{p.parent.name}/{p.stem}"
    chk = PartitionCheck(part, p.suffix[1:], bytes=p.stat().st_size)
    try:
        if p.suffix == ".sealed":
            _check_sealed(p, key, chk)
        else:
            _check_open(p, key, chk)
    except (FormatError, OSError, ValueError, KeyError, zlib.error) as exc:
        chk.problems.append(f"unreadable: {exc}")
    return chk


def _key_check(hdr: dict[str, Any], key: bytes | None, chk: PartitionCheck) -> None:
    if hdr.get("key_id", "") != key_id(key):
        chk.problems.append("written with a different HMAC key than the one given (key ids differ)" if hdr.get("key_id")
                            else "written without an HMAC key, but one was given")


def _check_open(p: Path, key: bytes | None, chk: PartitionCheck) -> None:
    part = read_open(p)
    _key_check(part.header, key, chk)
    if part.end != part.size:
        chk.problems.append(f"{part.why} ({part.size - part.end} trailing byte(s); a running writer repairs a torn tail at start)")
    head = bytes.fromhex(part.header["prev_head"])
    chk.prev_head = part.header["prev_head"]
    for fr in part.frames:
        lines = fr.payload.splitlines(keepends=True)
        head = chain(head, lines, key)
        if head != fr.head:
            chk.problems.append(f"chain broken in the frame at offset {fr.offset}: a record was modified, inserted, deleted or reordered")
            head = fr.head
        _ts_range(lines, chk)
        chk.records += fr.count
    chk.head = head.hex()


def _ts_range(lines: list[bytes], chk: PartitionCheck) -> None:
    for ln in lines:
        ts = int(ln[:ln.index(b"\t")])
        if not chk.min_ts or ts < chk.min_ts:
            chk.min_ts = ts
        chk.max_ts = max(chk.max_ts, ts)


def _check_sealed(p: Path, key: bytes | None, chk: PartitionCheck) -> None:
    meta = read_sealed_meta(p)
    _key_check(meta, key, chk)
    chk.prev_head = meta["prev_head"]
    head = bytes.fromhex(meta["prev_head"])
    with open(p, "rb") as f:
        for b, (off, clen, n, _lo, _hi, bhead) in enumerate(meta["blocks"]):
            f.seek(off)
            lines = zlib.decompress(f.read(clen)).splitlines(keepends=True)
            if len(lines) != n:
                chk.problems.append(f"block {b}: {len(lines)} records, the block table says {n}")
            head = chain(head, lines, key)
            if head.hex() != bhead:
                chk.problems.append(f"block {b}: chain broken: a record was modified, inserted, deleted or reordered")
                head = bytes.fromhex(bhead)
            _ts_range(lines, chk)
            chk.records += len(lines)
    if chk.records != meta["count"]:
        chk.problems.append(f"{chk.records} records, the partition says {meta['count']}")
    if head.hex() != meta["head"]:
        chk.problems.append("the final chain head does not match the partition's")
    chk.head = head.hex()


def verify(directory: Path, key: bytes | None = None, since_ms: int = 0) -> VerifyReport:
    """Recompute every chain; check links across partitions and the seal/retire journal."""
    rep = VerifyReport()
    events = read_heads(directory)
    retired = {e["partition"]: e for e in events if e.get("event") == "retire"}
    sealed_ev = {e["partition"]: e for e in events if e.get("event") == "seal"}
    checkpoints: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.get("event") == "checkpoint":
            checkpoints[e["partition"]] = e
        if e.get("event") == "damaged":
            rep.problems.append(f"{HEADS} line {e['line']}: damaged")
    by_worker: dict[str, list[Path]] = {}
    for p in partition_paths(directory):
        by_worker.setdefault(p.stem, []).append(p)
    present = {f"{p.parent.name}/{p.stem}" for ps in by_worker.values() for p in ps}
    retired_heads = {e["head"] for e in retired.values()}
    for worker, paths in sorted(by_worker.items()):
        prev: PartitionCheck | None = None
        for p in paths:
            in_window = day_start_ms(p.parent.name) + DAY_MS > since_ms
            if not in_window:
                # Outside the window: only its end head is needed to check the next link.
                try:
                    head = read_sealed_meta(p)["head"] if p.suffix == ".sealed" else read_open(p).head.hex()
                except (FormatError, OSError, ValueError, KeyError) as exc:
                    rep.problems.append(f"{p.parent.name}/{p.stem}: unreadable: {exc}")
                    head = ""
                prev = PartitionCheck(f"{p.parent.name}/{p.stem}", p.suffix[1:], head=head)
                continue
            chk = check_partition(p, key)
            if prev is None:
                if chk.prev_head != GENESIS.hex() and chk.prev_head not in retired_heads:
                    chk.problems.append("its chain continues from a partition that is missing (deleted without retirement)")
            elif chk.prev_head != prev.head:
                chk.problems.append(f"does not continue the chain of {prev.partition}: a partition between them was deleted, "
                                    "or one was truncated or replaced")
            if p.suffix == ".sealed":
                ev = sealed_ev.get(chk.partition)
                if ev is None:
                    chk.problems.append(f"no seal event in {HEADS}")
                elif ev["head"] != chk.head or ev["count"] != chk.records:
                    chk.problems.append(f"differs from its seal event in {HEADS} (records {chk.records} vs {ev['count']})")
                elif ev.get("sha256") and ev["sha256"] != file_sha256(p):
                    chk.problems.append("file changed since it was sealed (SHA-256 differs from the seal event)")
            else:
                cp = checkpoints.get(chk.partition)
                if cp is not None and cp["count"] > chk.records:
                    chk.problems.append(f"holds {chk.records} records, but {cp['count']} were checkpointed: "
                                        "records were removed from its end")
            rep.partitions.append(chk)
            prev = chk
        if prev is not None:
            rep.heads[worker] = prev.head
    for part, ev in sealed_ev.items():
        if part not in present and part not in retired:
            rep.problems.append(f"{part}: sealed with {ev['count']} records, but the partition is missing and was never retired")
    return rep


# -- stats ------------------------------------------------------------------------------------


@dataclass
class Stats:
    partitions: int = 0
    open: int = 0
    sealed: int = 0
    records: int = 0
    bytes: int = 0
    oldest_ms: int = 0
    newest_ms: int = 0
    workers: list[str] = field(default_factory=list)

    @property
    def days_held(self) -> float:
        return (self.newest_ms - self.oldest_ms) / DAY_MS if self.records else 0.0


def stats(directory: Path) -> Stats:
    st = Stats()
    workers: set[str] = set()
    for p in partition_paths(directory):
        st.partitions += 1
        st.bytes += p.stat().st_size
        workers.add(p.stem)
        if p.suffix == ".sealed":
            st.sealed += 1
            meta = read_sealed_meta(p)
            n, lo, hi = meta["count"], meta["min_ts"], meta["max_ts"]
        else:
            st.open += 1
            chk = PartitionCheck(p.name, "open")
            for fr in read_open(p).frames:
                chk.records += fr.count
                _ts_range(fr.payload.splitlines(), chk)
            n, lo, hi = chk.records, chk.min_ts, chk.max_ts
        if n:
            st.records += n
            st.oldest_ms = lo if not st.oldest_ms else min(st.oldest_ms, lo)
            st.newest_ms = max(st.newest_ms, hi)
    st.workers = sorted(workers)
    return st


def now_ms() -> int:
    return int(time.time() * 1000)
