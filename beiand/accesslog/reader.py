"""Reading the embedded access log: query, verify, stats, export (``beiand logs``)."""

from __future__ import annotations

import ipaddress
import json
import logging
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from operator import itemgetter
from pathlib import Path
from typing import Any, BinaryIO

from beiand.accesslog.format import (
    DAY_MS,
    FIELDS,
    GENESIS,
    KEY_KINDS,
    FormatError,
    Index,
    KindIndex,
    OpenPartition,
    _esc,
    chain,
    chain_links,
    decode,
    decode_block_seq,
    endpoint_key,
    key_id,
    read_mark,
    read_open,
    split_endpoint,
)
from beiand.accesslog.store import (
    HEADS,
    Committed,
    assess,
    at_risk,
    day_start_ms,
    file_sha256,
    mark_path,
    part_name,
    partition_paths,
    read_sealed_meta,
    worker_of,
)
from beiand.errors import BeiandError
from beiand.model import AccessRecord, endpoint

log = logging.getLogger(__name__)
IpNet = ipaddress.IPv4Network | ipaddress.IPv6Network
_FIRST = itemgetter(0)


Endpoint = tuple[IpNet, int | None]  # a server address or prefix, and a port (None: any)


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
    port: int | None = None  # the server port (with ``server``, or alone)
    proto: str = ""  # tcp / udp
    url_prefix: str = ""  # HTTP URL path starting with this
    # Other server endpoints that answer for ``server``/``port`` (a NAT mapping's other side,
    # resolved when the query was built); a record's own ``nat`` endpoint is always matched too.
    also: tuple[Endpoint, ...] = ()

    def endpoints(self) -> list[Endpoint]:
        if self.server is None and self.port is None:
            return []
        return [(self.server, self.port), *self.also] if self.server is not None else [*self.also]

    def keys(self) -> list[tuple[str, str]] | None:
        """The most selective indexed keys, as (kind, key) (a block holding any of them may
        match), or None for a scan. Kind "p" (server endpoint) is found as "s" in partitions
        sealed before issue 19 (:meth:`Index.blocks` callers fall back)."""
        if self.name:
            return [("n", self.name)]
        if self.suffix:
            return [("n", self.suffix)]
        eps = self.endpoints()
        if eps and all(net is not None and net.num_addresses == 1 for net, _ in eps):
            return [("p", endpoint_key(str(net.network_address), port)) if port is not None
                    else ("s", str(net.network_address)) for net, port in eps if net is not None]
        if self.client is not None and self.client.num_addresses == 1:
            return [("c", str(self.client.network_address))]
        if self.account:
            return [("a", self.account)]
        return None

    def key(self) -> tuple[str, str] | None:
        k = self.keys()
        return k[0] if k and len(k) == 1 else None

    def needle(self) -> bytes:
        """Bytes every matching line contains: a cheap filter before decoding."""
        k = self.keys()
        if not k or len(k) != 1:
            return b""
        kind, key = k[0]
        # As the line holds it: a backslash, tab or newline in the field is escaped there.
        return _esc(key.split("|")[0] if kind == "p" else key).encode("utf-8", "surrogateescape")

    def where(self) -> list[dict[int, set[bytes]]] | None:
        """The columnar pre-filter of a sealed block (format.decode_block): alternatives of
        {column: field bytes}; None when this query offers none (then whole blocks are decoded)."""
        eps = self.endpoints()
        if not eps:
            return None
        out: list[dict[int, set[bytes]]] = []
        for net, port in eps:
            if net is None or net.num_addresses != 1 or port is None:
                return None
            ip = str(net.network_address)
            out.append({_COL_SERVER: {ip.encode()}, _COL_PORT: {str(port).encode()}})
            out.append({_COL_NAT: {endpoint(ip, port).encode()}})
        return out

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
        if self.proto and r.transport != self.proto:
            return False
        if self.url_prefix and not r.url.startswith(self.url_prefix):
            return False
        if self.client is not None and not _in(r.client_ip, self.client):
            return False
        eps = self._endpoints
        if eps:
            nat = split_endpoint(r.nat) if r.nat else None
            for net, one, port in eps:
                if ((net is None or (r.server_ip == one if one is not None else _in(r.server_ip, net)))
                        and (port is None or r.server_port == port)):
                    return True
                if nat is not None and (net is None or _in(nat[0], net)) and (port is None or nat[1] == port):
                    return True
            return False
        return True

    @cached_property
    def _endpoints(self) -> list[tuple[IpNet | None, str | None, int | None]]:
        """:meth:`endpoints` with the one text of each single IPv4 address (computed once per query)."""
        return [(net, _v4_text(net) if net is not None else None, port) for net, port in self.endpoints()]


@lru_cache(maxsize=256)
def _v4_text(net: IpNet) -> str | None:
    """The one text of a single IPv4 address (the writer's; ipaddress refuses leading zeros)."""
    return str(net.network_address) if net.version == 4 and net.prefixlen == 32 else None


def _in(ip: str, net: IpNet) -> bool:
    one = _v4_text(net)
    if one is not None:  # no parse per record
        return ip == one
    try:
        return ipaddress.ip_address(ip) in net
    except ValueError:
        return False


_COL_SERVER, _COL_PORT, _COL_NAT = FIELDS.index("server_ip"), FIELDS.index("server_port"), FIELDS.index("nat")


@dataclass
class QueryStats:
    partitions_total: int = 0
    partitions_opened: int = 0
    blocks_read: int = 0
    blocks_total: int = 0
    set_aside: dict[str, int] = field(default_factory=dict)  # damaged partition → records returned from it
    unreadable: list[str] = field(default_factory=list)  # sealed blocks or partitions skipped (damaged)


def query_marked(directory: Path, q: Query, stats: QueryStats | None = None) -> Iterator[tuple[AccessRecord, str]]:
    """Like :func:`query`, with the name of the set-aside (damaged) partition a record comes
    from, or "" for an intact one."""
    st = stats if stats is not None else QueryStats()
    needle = q.needle()
    for p in partition_paths(directory):
        st.partitions_total += 1
        if not _in_range(p, q):
            continue
        st.partitions_opened += 1
        if p.suffix == ".sealed":
            try:
                for r in _query_sealed(p, q, needle, st):
                    yield r, ""
            except (FormatError, OSError, ValueError, KeyError, zlib.error) as exc:
                st.unreadable.append(f"{part_name(p)}: {exc}")  # its metadata: no block can be found
        else:
            aside = part_name(p) if p.suffix == ".damaged" else ""
            for fr in read_open(p).frames:
                for r in _scan(fr.payload, q, needle):
                    if aside:
                        st.set_aside[aside] = st.set_aside.get(aside, 0) + 1
                    yield r, aside


def _in_range(path: Path, q: Query) -> bool:
    # A partition holds the records written on its day; late records (clock skew, a slow
    # worker) sit in the partition open when they arrived, so one day of slack after ``until``.
    start = day_start_ms(path.parent.name)
    return start + DAY_MS > q.since_ms and start < q.until_ms + DAY_MS


def query(directory: Path, q: Query, stats: QueryStats | None = None) -> Iterator[AccessRecord]:
    """Matching records, partition by partition (day order), in log order within each; every
    readable record of a partition set aside as damaged too (:func:`query_marked` says which)."""
    for r, _ in query_marked(directory, q, stats):
        yield r


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


def sealed_version(meta: dict[str, Any]) -> int:
    return int(meta.get("format", 1))


def read_block(f: BinaryIO, meta: dict[str, Any], b: int,
               where: list[dict[int, set[bytes]]] | None = None) -> tuple[list[int] | None, list[bytes]]:
    """Block ``b`` of an open sealed partition: its records' positions in the log (None: the block
    is in log order, format 1) and its lines (every one unless ``where`` pre-filters)."""
    off, clen = meta["blocks"][b][:2]
    f.seek(off)
    return decode_block_seq(f.read(clen), sealed_version(meta), where)


def log_order(f: BinaryIO, meta: dict[str, Any], problems: list[str] | None = None,
              held_in: list[int] | None = None) -> list[bytes | None]:
    """Every line of a sealed partition in log order (None where a damaged block held it); each
    unreadable block or misplaced position is described in ``problems``; ``held_in`` is filled
    with the block each position came from (format 2; -1: none)."""
    n = int(meta["count"])
    if held_in is not None:
        held_in[:] = [-1] * n
    if sealed_version(meta) < 2:
        out: list[bytes | None] = []
        for b, blk in enumerate(meta["blocks"]):
            try:
                out.extend(read_block(f, meta, b)[1])
            except (zlib.error, ValueError) as exc:
                if problems is not None:
                    problems.append(f"block {b}: unreadable: {exc}")
                out.extend([None] * blk[2])
        return out
    lines: list[bytes | None] = [None] * n
    for b, blk in enumerate(meta["blocks"]):
        try:
            seqs, got = read_block(f, meta, b)
        except (zlib.error, ValueError) as exc:
            if problems is not None:
                problems.append(f"block {b}: unreadable ({blk[2]} record(s)): {exc}")
            continue
        if seqs is None or len(got) != blk[2]:
            if problems is not None:
                problems.append(f"block {b}: {len(got)} records, the block table says {blk[2]}")
            if seqs is None:
                continue
        for q, ln in zip(seqs, got, strict=False):
            if not 0 <= q < n or lines[q] is not None:
                if problems is not None:
                    problems.append(f"block {b}: a record at log position {q} that is out of range or given twice")
                continue
            lines[q] = ln
            if held_in is not None:
                held_in[q] = b
    return lines


def sealed_blocks(f: BinaryIO, meta: dict[str, Any], keys: list[tuple[str, str]]) -> list[int]:
    """The blocks that may hold a record under any of ``keys`` (sorted)."""
    found: set[int] = set()
    if sealed_version(meta) < 2:
        off, ln = meta["index"]
        f.seek(off)
        v1 = Index(zlib.decompress(f.read(ln)), KEY_KINDS)
        for kind, key in keys:
            if kind == "p":  # not indexed before issue 19: the address's blocks
                kind, key = "s", key.split("|")[0]
            found.update(v1.blocks(kind, key))
        return sorted(found)
    kinds: dict[str, KindIndex] = {}
    for kind, key in keys:
        idx = kinds.get(kind)
        if idx is None:
            off, ln = meta["index_kinds"][kind]
            idx = kinds[kind] = KindIndex(f, off, ln)
        found.update(idx.blocks(key))
    return sorted(found)


def _query_sealed(p: Path, q: Query, needle: bytes, st: QueryStats) -> Iterator[AccessRecord]:
    meta = read_sealed_meta(p, segments=False)
    if meta["max_ts"] < q.since_ms or meta["min_ts"] >= q.until_ms:
        return
    blocks = meta["blocks"]
    st.blocks_total += len(blocks)
    keys = q.keys()
    where = q.where()
    clustered: list[tuple[int, AccessRecord]] = []
    with open(p, "rb") as f:
        wanted = sealed_blocks(f, meta, keys) if keys is not None else list(range(len(blocks)))
        for b in wanted:
            off, clen, _n, lo, hi = blocks[b][:5]
            if hi < q.since_ms or lo >= q.until_ms:
                continue
            st.blocks_read += 1
            try:
                seqs, lines = read_block(f, meta, b, where)
                if seqs is None:
                    found = list(_scan(b"".join(lines), q, needle))
                    yield from found
                    continue
                # Only the rows the columnar pre-filter kept; each decoded once, no generator per line.
                match, add = q.match, clustered.append
                for sq, ln in zip(seqs, lines, strict=True):
                    if needle and needle not in ln:
                        continue
                    r = decode(ln)
                    if match(r):
                        add((sq, r))
            except (zlib.error, ValueError) as exc:  # bit rot in one block: the others are still read
                st.unreadable.append(f"{part_name(p)}: block {b} (offset {off}, {clen} bytes): {exc}")
                continue
    # A clustered partition (format 2): its matches in log order.
    clustered.sort(key=_FIRST)
    for _, r in clustered:
        yield r


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
            if r.direction == "out":
                continue  # a hosted host connecting out: no hosted server (sealed summaries leave them out too)
            add((r.name, r.server_ip, 0 if r.kind == "conn" else r.server_port, r.account, r.verdict, r.kind, r.action,
                 r.reason, r.filing_number), r.ts_ms, r.ts_ms, 1)
    return out


def _open_records(p: Path, q: Query) -> Iterator[AccessRecord]:
    for fr in read_open(p).frames:
        yield from _scan(fr.payload, q, b"")


# -- verify -----------------------------------------------------------------------------------


@dataclass
class PartitionCheck:
    partition: str
    state: str  # open | sealed | damaged (set aside at start)
    records: int = 0
    prev_head: str = ""
    head: str = ""
    min_ts: int = 0
    max_ts: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    damage: str = ""  # what is damaged (byte ranges, records at risk), "" when nothing is
    acknowledged: str = ""  # the operator's reason, when the damage was acknowledged


@dataclass
class VerifyReport:
    partitions: list[PartitionCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    heads: dict[str, str] = field(default_factory=dict)  # worker → current chain head
    acknowledged: list[str] = field(default_factory=list)  # damage an operator acknowledged (not problems)

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
            ev = json.loads(line)
            if not isinstance(ev, dict):
                raise ValueError("not an object")
            events.append(ev)
        except ValueError:
            events.append({"event": "damaged", "line": n})
    return events


def check_partition(p: Path, key: bytes | None, checkpoints: dict[int, str] | None = None) -> PartitionCheck:
    """Check one partition; ``checkpoints`` (count → head, from heads.log) are compared with an open one."""
    chk = PartitionCheck(part_name(p), p.suffix[1:], bytes=p.stat().st_size)
    try:
        if p.suffix == ".sealed":
            _check_sealed(p, key, chk)
        else:
            _check_open(p, key, chk, checkpoints or {})
    except (FormatError, OSError, ValueError, KeyError, zlib.error) as exc:
        chk.problems.append(f"unreadable: {exc}")
    return chk


def _key_check(hdr: dict[str, Any], key: bytes | None, chk: PartitionCheck) -> None:
    if hdr.get("key_id", "") != key_id(key):
        chk.problems.append("written with a different HMAC key than the one given (key ids differ)" if hdr.get("key_id")
                            else "written without an HMAC key, but one was given")


def describe_damage(part: OpenPartition, risk: int | None) -> str:
    ranges = ", ".join(f"{a} to {b - 1}" for a, b in part.damaged)
    n = sum(b - a for a, b in part.damaged)
    return (f"bytes at offsets {ranges} unreadable ({n} byte(s): {part.why}); "
            f"{'an unknown number of' if risk is None else risk} record(s) at risk, {part.records} readable")


def _check_open(p: Path, key: bytes | None, chk: PartitionCheck, checkpoints: dict[int, str] | None = None) -> None:
    mark = read_mark(mark_path(p))  # before the partition: a running writer only moves it forward
    part = read_open(p)
    if part.header_ok:
        _key_check(part.header, key, chk)
        chk.prev_head = part.header["prev_head"]
    aside = p.suffix == ".damaged"
    if part.damaged and (aside or not part.tail_only()):
        chk.damage = "damaged: " + describe_damage(part, at_risk(part, mark))
        chk.problems.append(chk.damage + (f"; set aside at start, its readable records are still queried; once investigated: "
                                          f"beiand logs acknowledge {chk.partition} --reason '...'" if aside
                                          else "; a writer sets the partition aside at its next start"))
    elif part.damaged:
        chk.problems.append(f"{part.why} ({part.size - part.end} trailing byte(s); a running writer repairs a torn tail "
                            "beyond its last durable commit at start)")
    if not aside and not part.damaged:
        why = assess(part, mark)
        if why:
            chk.problems.append(why + ": records were removed or the partition was replaced" if "mark" in why else why)
    head = bytes.fromhex(part.header["prev_head"]) if part.header_ok else b""
    gaps = {b for _, b in part.damaged}
    for fr in part.frames:
        lines = fr.payload.splitlines(keepends=True)
        if fr.offset in gaps or not head:
            head = fr.head  # after damage the chain cannot be recomputed into this frame
        else:
            head = chain(head, lines, key)
            if head != fr.head:
                chk.problems.append(f"chain broken in the frame at offset {fr.offset}: a record was modified, inserted, "
                                    "deleted or reordered")
                head = fr.head
        _ts_range(lines, chk)
        chk.records += fr.count
        if checkpoints and checkpoints.get(chk.records, fr.head.hex()) != fr.head.hex():
            chk.problems.append(f"its chain head after {chk.records} records differs from the checkpoint in {HEADS}: "
                                "the partition was replaced or rolled back and written again")
    chk.head = head.hex() if head else ""


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
        if sealed_version(meta) < 2:
            for b, (_off, _clen, n, _lo, _hi, bhead) in enumerate(meta["blocks"]):
                lines = read_block(f, meta, b)[1]
                if len(lines) != n:
                    chk.problems.append(f"block {b}: {len(lines)} records, the block table says {n}")
                head = chain(head, lines, key)
                if head.hex() != bhead:
                    chk.problems.append(f"block {b}: chain broken: a record was modified, inserted, deleted or reordered")
                    head = bytes.fromhex(bhead)
                _ts_range(lines, chk)
                chk.records += len(lines)
        else:
            problems: list[str] = []
            held: list[int] = []
            lines_at = log_order(f, meta, problems, held)
            chk.problems.extend(problems)
            pos = 0
            for n, shead in meta["segments"]:
                seg = lines_at[pos:pos + n]
                whole = [ln for ln in seg if ln is not None]
                if len(whole) != n:
                    chk.problems.append(f"records {pos + 1}-{pos + n}: {n - len(whole)} unreadable (a damaged block): "
                                        "the chain cannot be recomputed over them")
                    head = bytes.fromhex(shead)
                else:
                    head = chain(head, whole, key)
                    if head.hex() != shead:
                        where = ", ".join(map(str, sorted(set(held[pos:pos + n]))))
                        chk.problems.append(f"records {pos + 1}-{pos + n} (held in block(s) {where}): chain broken: a record "
                                            "was modified, inserted, deleted or reordered")
                        head = bytes.fromhex(shead)
                _ts_range(whole, chk)
                chk.records += len(whole)
                pos += n
            if pos != len(lines_at):
                chk.problems.append(f"the chain segments cover {pos} records, the partition says {len(lines_at)}")
    if chk.records != meta["count"]:
        chk.problems.append(f"{chk.records} records, the partition says {meta['count']}")
    if head.hex() != meta["head"]:
        chk.problems.append("the final chain head does not match the partition's")
    chk.head = head.hex()


# -- anchors ------------------------------------------------------------------------------------


class AnchorError(BeiandError, ValueError):
    """An anchors file that does not parse: the message names the file, the line and the field."""


@dataclass(frozen=True)
class Anchor:
    """One checkpoint kept off the machine: after ``count`` records, ``partition``'s chain head was ``head``."""

    partition: str
    count: int
    head: str
    ts_ms: int = 0


ANCHOR_EVENTS = frozenset({"checkpoint", "open", "seal"})


def parse_anchor_line(line: str, where: str) -> Anchor | None:
    """One line of an anchors file: a JSON object, optionally after any prefix (a journal line's
    time and unit); None for a blank line, a ``#`` comment or a heads.log event that is no anchor."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    i = text.find("{")
    if i < 0:
        raise AnchorError(f"{where}: expected a JSON object with partition, count and head")
    try:
        obj = json.loads(text[i:])
    except ValueError as exc:
        raise AnchorError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise AnchorError(f"{where}: expected a JSON object")
    if "event" in obj and obj["event"] not in ANCHOR_EVENTS:
        return None
    part, count, head = obj.get("partition"), obj.get("count"), obj.get("head")
    if isinstance(count, str) and count.isascii() and count.isdigit():
        count = int(count)  # ClickHouse's JSONEachRow quotes 64-bit integers
    if not isinstance(part, str) or "/" not in part:
        raise AnchorError(f"{where}: partition: expected a partition name such as \"2026-11-23/w0\", got {part!r}")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise AnchorError(f"{where}: count: expected a record count (an integer >= 0), got {count!r}")
    if not isinstance(head, str) or len(head) != 64 or any(c not in "0123456789abcdef" for c in head):
        raise AnchorError(f"{where}: head: expected the full chain head, 64 lower-case hex digits, got {head!r}")
    ts = obj.get("ts_ms", 0)
    return Anchor(part, count, head, int(ts) if isinstance(ts, int) or (isinstance(ts, str) and ts.isascii() and ts.isdigit()) else 0)


def read_anchors(path: Path) -> list[Anchor]:
    """An exported list of checkpoints (docs/access-log.md, "Anchors"): JSON lines as the daemon
    logs them (``access log anchor {...}``), journal lines holding them, or a copy of heads.log."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise AnchorError(f"{path}: {exc.strerror}") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        a = parse_anchor_line(line, f"{path}:{n}")
        if a is not None:
            out.append(a)
    return out


def heads_at(p: Path, counts: set[int], key: bytes | None) -> dict[int, str]:
    """The chain head of partition file ``p`` after each of ``counts`` records (those it holds)."""
    out: dict[int, str] = {}
    if p.suffix == ".sealed":
        meta = read_sealed_meta(p)
        head, n = bytes.fromhex(meta["prev_head"]), 0
        if 0 in counts:
            out[0] = head.hex()
        with open(p, "rb") as f:
            if sealed_version(meta) >= 2:
                # Clustered: the lines back in log order, the chain over them (a segment with an
                # unreadable record gives no heads inside it).
                lines_at = log_order(f, meta) if any(0 < c < meta["count"] for c in counts) else []
                for sn, shead in meta["segments"]:
                    inside = sorted(c for c in counts if n < c < n + sn)
                    seg = lines_at[n:n + sn]
                    if inside and all(ln is not None for ln in seg):
                        for i, ln in enumerate(seg, n + 1):
                            head = chain(head, [ln], key)  # type: ignore[list-item]
                            if i in counts:
                                out[i] = head.hex()
                    head = bytes.fromhex(shead)
                    n += sn
                    if n in counts:
                        out[n] = shead
                return out
            for b, (_off, _clen, bn, _lo, _hi, bhead) in enumerate(meta["blocks"]):
                inside = sorted(c for c in counts if n < c <= n + bn)
                if inside and inside != [n + bn]:
                    lines = read_block(f, meta, b)[1]
                    for i, ln in enumerate(lines, n + 1):
                        head = chain(head, [ln], key)
                        if i in counts:
                            out[i] = head.hex()
                head = bytes.fromhex(bhead)
                n += bn
                if n in counts:
                    out[n] = bhead
        return out
    part = read_open(p)
    n = 0
    if 0 in counts and part.header_ok:
        out[0] = part.header["prev_head"]
    prev = bytes.fromhex(part.header["prev_head"]) if part.header_ok else b""
    gaps = {b for _, b in part.damaged}
    for fr in part.frames:
        if fr.offset in gaps:
            prev = b""  # after damage, counts are no longer known
        inside = [c for c in counts if n < c < n + fr.count]
        if inside and prev:
            head = prev
            for i, ln in enumerate(fr.payload.splitlines(keepends=True), n + 1):
                head = chain(head, [ln], key)
                if i in counts:
                    out[i] = head.hex()
        n += fr.count
        if n in counts and (prev or not part.damaged):
            out[n] = fr.head.hex()
        prev = fr.head
    return out


def _check_anchors(directory: Path, anchors: list[Anchor], events: list[dict[str, Any]], key: bytes | None,
                   rep: VerifyReport) -> None:
    files: dict[str, Path] = {part_name(p): p for p in partition_paths(directory)}
    retired = {e["partition"]: e for e in events if e.get("event") == "retire"}
    asides: dict[str, list[str]] = {}
    for e in events:
        if e.get("event") == "damage":
            asides.setdefault(e["partition"], []).append(e["aside"])
    wanted: dict[str, set[int]] = {}
    for a in anchors:
        wanted.setdefault(a.partition, set()).add(a.count)
    found: dict[str, dict[int, str]] = {}
    for name, counts in wanted.items():
        got: dict[int, str] = {}
        for cand in [name, *asides.get(name, [])]:
            if cand in files:
                try:
                    for c, h in heads_at(files[cand], counts, key).items():
                        got.setdefault(c, h)
                except (FormatError, OSError, ValueError, KeyError, zlib.error):
                    pass
        found[name] = got
    for a in anchors:
        where = f"anchor {a.partition} ({a.count} record(s), head {a.head[:16]}…)"
        got = found[a.partition]
        if a.count in got:
            if got[a.count] != a.head:
                rep.problems.append(f"{where}: the partition's chain head after {a.count} record(s) is {got[a.count][:16]}…: "
                                    "it was modified or replaced")
            continue
        r = retired.get(a.partition)
        if r is not None and r.get("count", 0) >= a.count:
            continue
        damaged = [n for n in asides.get(a.partition, []) if n in files]
        if damaged:
            continue  # inside a damaged range: reported as damage of the set-aside partition
        if a.partition not in files and not damaged:
            rep.problems.append(f"{where}: the partition is missing (deleted, with its directory?)")
        else:
            rep.problems.append(f"{where}: the partition holds fewer records than anchored: records were removed from it")


# -- verify -------------------------------------------------------------------------------------


def verify(directory: Path, key: bytes | None = None, since_ms: int = 0, anchors: list[Anchor] | None = None) -> VerifyReport:
    """Recompute every chain; check links across partitions, commit marks, the heads.log journal
    (open, checkpoint, seal, retire, damage, acknowledge) and, when given, anchors kept elsewhere."""
    rep = VerifyReport()
    events = read_heads(directory)
    last: dict[str, dict[str, Any]] = {}  # partition → its latest event (in file order)
    acks: dict[str, str] = {}
    retired: dict[str, dict[str, Any]] = {}
    sealed_ev: dict[str, dict[str, Any]] = {}
    asides = {e.get("aside"): e for e in events if e.get("event") == "damage"}
    cps: dict[str, dict[int, str]] = {}
    for e in events:
        kind = e.get("event")
        if kind == "damaged":
            rep.problems.append(f"{HEADS} line {e['line']}: damaged")
        elif kind == "acknowledge":
            acks[e.get("partition", "")] = str(e.get("reason", ""))
        elif kind in ("open", "checkpoint", "seal", "retire", "damage") and isinstance(e.get("partition"), str):
            last[e["partition"]] = e
            # The checkpoints of the partition now open under that name (a damage event starts anew).
            if kind == "checkpoint" and isinstance(e.get("count"), int) and isinstance(e.get("head"), str):
                seen = cps.setdefault(e["partition"], {})
                if seen.setdefault(e["count"], e["head"]) != e["head"]:
                    rep.problems.append(f"{e['partition']}: two checkpoints in {HEADS} after {e['count']} records disagree "
                                        "on the chain head: the partition was rolled back and written again")
            elif kind in ("open", "damage"):
                cps.pop(e["partition"], None)
            if kind == "retire":
                retired[e["partition"]] = e
            elif kind == "seal":
                sealed_ev[e["partition"]] = e
    by_worker: dict[str, list[Path]] = {}
    for p in partition_paths(directory):
        by_worker.setdefault(worker_of(p), []).append(p)
    present = {part_name(p) for ps in by_worker.values() for p in ps}
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
                    rep.problems.append(f"{part_name(p)}: unreadable: {exc}")
                    head = ""
                prev = PartitionCheck(part_name(p), p.suffix[1:], head=head)
                continue
            cp = last.get(part_name(p))
            chk = check_partition(p, key, cps.get(part_name(p)) if p.suffix == ".open" else None)
            if not chk.prev_head:
                pass  # damaged header: reported as damage
            elif prev is None:
                if chk.prev_head != GENESIS.hex() and chk.prev_head not in retired_heads:
                    chk.problems.append("its chain continues from a partition that is missing (deleted without retirement)")
            elif prev.head and chk.prev_head != prev.head:
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
            elif p.suffix == ".open":
                most = max(cps.get(part_name(p), {0: ""}))
                if cp is not None and cp.get("event") in ("checkpoint", "open") and most > chk.records:
                    chk.problems.append(f"holds {chk.records} records, but {most} were checkpointed: "
                                        "records were removed from its end")
            if p.suffix == ".damaged" and not chk.damage:
                ev = asides.get(chk.partition)
                chk.damage = (f"damaged: set aside at start: {ev.get('why')}" if ev is not None
                              else f"damaged: set aside at start (no damage event in {HEADS})")
                chk.problems.append(chk.damage)
            if chk.damage and chk.partition in acks:
                chk.acknowledged = acks[chk.partition]
                chk.problems = [m for m in chk.problems if not m.startswith("damaged:")]
                rep.acknowledged.append(f"{chk.partition}: {chk.damage}; acknowledged: {chk.acknowledged}")
            rep.partitions.append(chk)
            prev = chk
        if prev is not None:
            rep.heads[worker] = prev.head
    for part, ev in last.items():
        kind = str(ev.get("event"))
        if part in present or kind == "retire":
            continue
        if kind == "damage":
            if ev.get("aside") not in present and ev.get("aside") not in acks:
                rep.problems.append(f"{ev.get('aside')}: set aside as damaged, but the file is missing")
            continue
        what = {"seal": f"sealed with {ev.get('count')} records",
                "open": "opened", "checkpoint": f"checkpointed with {ev.get('count')} records"}[kind]
        if part in acks:
            rep.acknowledged.append(f"{part}: {what}, missing; acknowledged: {acks[part]}")
        else:
            rep.problems.append(f"{part}: {what}, but the partition is missing and was never retired")
    if anchors:
        _check_anchors(directory, anchors, events, key, rep)
    return rep


# -- stats ------------------------------------------------------------------------------------


@dataclass
class Stats:
    partitions: int = 0
    open: int = 0
    sealed: int = 0
    damaged: int = 0  # set aside at start (readable records counted)
    records: int = 0
    bytes: int = 0
    oldest_ms: int = 0
    newest_ms: int = 0
    workers: list[str] = field(default_factory=list)
    sealed_records: int = 0
    sealed_bytes: int = 0  # of sealed partitions: with sealed_records, the disk a record costs

    @property
    def days_held(self) -> float:
        return (self.newest_ms - self.oldest_ms) / DAY_MS if self.records else 0.0


def stats(directory: Path) -> Stats:
    st = Stats()
    workers: set[str] = set()
    for p in partition_paths(directory):
        st.partitions += 1
        st.bytes += p.stat().st_size
        workers.add(worker_of(p))
        if p.suffix == ".sealed":
            st.sealed += 1
            meta = read_sealed_meta(p)
            n, lo, hi = meta["count"], meta["min_ts"], meta["max_ts"]
            st.sealed_records += n
            st.sealed_bytes += p.stat().st_size
        else:
            if p.suffix == ".damaged":
                st.damaged += 1
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


# -- committed records, read back (a copy catching up, issue 27) -------------------------------------


def committed_since(directory: Path, worker: int, after: int, upto: int, key: bytes | None = None,
                    chunk: int = 4096) -> Iterator[Committed]:
    """The records of ``worker`` numbered ``after`` + 1 … ``upto`` as :class:`Committed` frames,
    read from its partitions (open and sealed) with their links recomputed: what a copy missed
    when the process stopped between the log's commit and the copy's. Partitions written before
    issue 27 (no ``seq`` in their header) and damaged ones (the chain cannot be recomputed) give
    nothing (logged)."""
    for p in partition_paths(directory, worker, damaged=False):
        try:
            if p.suffix == ".sealed":
                meta = read_sealed_meta(p)
                hdr: dict[str, Any] = meta
                if "seq" not in hdr or int(hdr["seq"]) + int(meta["count"]) <= after or int(hdr["seq"]) >= upto:
                    continue
                with open(p, "rb") as f:
                    got = log_order(f, meta)
                if any(ln is None for ln in got):
                    log.error("access log %s: a damaged block: its records cannot be copied with their links", p)
                    continue
                lines: list[bytes] = got  # type: ignore[assignment]
            else:
                part = read_open(p)
                hdr = part.header
                if "seq" not in hdr or int(hdr["seq"]) + part.records <= after or int(hdr["seq"]) >= upto:
                    continue
                if part.damaged and not part.tail_only():
                    log.error("access log %s: damaged: its records cannot be copied with their links", p)
                    continue
                lines = [ln for fr in part.frames for ln in fr.payload.splitlines(keepends=True)]
        except (FormatError, OSError, ValueError, KeyError, zlib.error) as exc:
            log.error("access log %s: unreadable, not copied: %s", p, exc)
            continue
        base = int(hdr["seq"])
        links = chain_links(bytes.fromhex(hdr["prev_head"]), lines, key)
        lo, hi = max(after - base, 0), min(upto - base, len(lines))
        for i in range(lo, hi, chunk):
            j = min(i + chunk, hi)
            yield Committed(str(hdr.get("gateway", "")), worker, part_name(p), base + i + 1, i + 1, lines[i:j], links[i:j])
