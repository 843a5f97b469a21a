"""On-disk format of the embedded access log (docs/access-log.md).

A *partition* is one day of one worker: ``DIR/YYYY-MM-DD/wN.open`` while written, then
``wN.sealed``. Records are tab-separated lines in :data:`FIELDS` order. Every record extends a
hash chain: ``h_i = SHA-256(h_{i-1} ‖ line_i)`` (HMAC-SHA-256 with the key when one is
configured); a partition starts from the head its predecessor (same worker) ended with, so a
modified, inserted, deleted or reordered record, and a deleted or truncated partition, all
show as a broken chain.

Open partition: a JSON header line, then frames (one per group commit)::

    b"F" | count u32 | payload_len u32 | crc32(head ‖ payload) u32 | head 32 bytes | payload

(partitions whose header lacks ``"crc": "head+payload"`` were written before issue 14, with
``crc32(payload)``). Beside it, ``wN.mark`` holds the *commit mark*: the offset, record count
and chain head of the last fsynced frame (two checksummed slots, written alternately), so that
at start only what lies beyond it can be taken for a torn tail.

Sealed partition: the header line, blocks of up to ``block_records`` records, the index (keys →
blocks), the JSON meta (block table with each block's chain head), and a 24-byte trailer
``meta_offset u64 | meta_len u64 | b"BEIANDSL"``. The meta's ``"format"`` says how blocks and
index are stored: absent (format 1, before issue 19) zlib over the lines and one zlib index;
2: a codec byte per block (columnar or zlib, see "sealed blocks" below) and one zlib section per
index key kind. Every format ever written is read and verified.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import socket
import struct
import sys
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from beiand.errors import BeiandError
from beiand.model import AccessRecord

MAGIC = b"BEIANDLOG/1 "
SEAL_MAGIC = b"BEIANDSL"
FRAME = struct.Struct(">cIII32s")
TRAILER = struct.Struct(">QQ8s")
MARK = struct.Struct(">4sQQQ32sI")  # magic, sequence, offset, count, head, crc32 of the header line
MARK_MAGIC = b"BMK1"
MARK_SLOT = 512  # one slot per sector: a torn write of one leaves the other whole
CRC_HEAD = "head+payload"  # the header's "crc" value of partitions whose frame CRC covers the head
GENESIS = bytes(32)
DAY_MS = 86_400_000

FIELDS = AccessRecord._fields
NFIELDS = len(FIELDS)
INT_FIELDS = frozenset({"ts_ms", "client_port", "server_port", "packets", "octets"})
# Records written before issue 19 end at ``order``: read as such, the newer fields at their defaults.
NFIELDS_V1 = FIELDS.index("order") + 1
# Records written before issue 26 end at ``octets`` (no ``outcome``).
NFIELDS_V2 = FIELDS.index("octets") + 1
# Records written before issue 35 end at ``outcome``; so does, since, a record without a register
# version (``records_version`` ""), so that a gateway that keeps none writes the lines it wrote before.
NFIELDS_V3 = FIELDS.index("outcome") + 1
_SHAPES = frozenset({NFIELDS, NFIELDS_V3, NFIELDS_V2, NFIELDS_V1})
_INT_AT = tuple(i for i, f in enumerate(FIELDS) if f in INT_FIELDS)
_TABS = NFIELDS - 1


class FormatError(BeiandError):
    """A partition file that does not parse: the message names the file and offset."""


# -- records ------------------------------------------------------------------------------------


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


_FMT = "\t".join(["%s"] * NFIELDS) + "\n"
_FMT_V3 = "\t".join(["%s"] * NFIELDS_V3) + "\n"


def encode_batch(recs: list[AccessRecord]) -> list[bytes]:
    """Records as lines (with newlines). Fast path: no escaping needed, checked once for the batch.
    A record without a register version is written without that last field (:data:`NFIELDS_V3`)."""
    if recs and recs[0][-1] and all(r[-1] for r in recs):
        fmt, tabs = _FMT, _TABS
        lines = [(fmt % r).encode("utf-8", "surrogateescape") for r in recs]
    elif not any(r[-1] for r in recs):
        fmt, tabs = _FMT_V3, _TABS - 1
        lines = [(fmt % r[:-1]).encode("utf-8", "surrogateescape") for r in recs]
    else:
        return [encode(r) for r in recs]
    joined = b"".join(lines)
    if joined.count(b"\t") != tabs * len(recs) or joined.count(b"\n") != len(recs) or b"\\" in joined or b"\r" in joined:
        return [encode(r) for r in recs]
    return lines


def encode(rec: AccessRecord) -> bytes:
    """One record as a line (with its newline). Tabs, newlines and backslashes in fields are escaped."""
    fields = rec if rec[-1] else rec[:-1]
    line = "\t".join(map(str, fields))
    if line.count("\t") != len(fields) - 1 or "\n" in line or "\\" in line or "\r" in line:
        line = "\t".join(_esc(str(v)) for v in fields)
    return line.encode("utf-8", "surrogateescape") + b"\n"


_UNESC = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def _unesc(s: str) -> str:
    if "\\" not in s:
        return s
    out: list[str] = []
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            out.append(_UNESC.get(s[i + 1], s[i + 1]))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def decode(line: bytes | str) -> AccessRecord:
    text = line.decode("utf-8", "surrogateescape") if isinstance(line, bytes) else line
    parts = text.rstrip("\n").split("\t")
    n = len(parts)
    if n != NFIELDS and n not in _SHAPES:
        raise ValueError(f"expected {NFIELDS} fields (or {NFIELDS_V3} without a register version, {NFIELDS_V2} before "
                         f"issue 26, {NFIELDS_V1} before issue 19), got {n}")
    v: list[Any] = [_unesc(p) for p in parts] if "\\" in text else parts
    for i in _INT_AT:
        if i < n:
            v[i] = int(v[i])
    return AccessRecord(*v)


def record_dict(r: AccessRecord) -> dict[str, Any]:
    return r._asdict()


# -- the chain ----------------------------------------------------------------------------------


def chain(head: bytes, lines: Iterable[bytes], key: bytes | None = None) -> bytes:
    """Extend ``head`` over ``lines`` and return the new head."""
    if key is None:
        sha = hashlib.sha256
        for ln in lines:
            head = sha(head + ln).digest()
    else:
        dig = hmac.digest
        for ln in lines:
            head = dig(key, head + ln, "sha256")
    return head


def chain_links(head: bytes, lines: Iterable[bytes], key: bytes | None = None) -> list[bytes]:
    """The chain head after each of ``lines`` (each record's *link*): what a copy of the log
    (ClickHouse, issue 27) carries so that its chain can be recomputed row by row."""
    out: list[bytes] = []
    add = out.append
    if key is None:
        sha = hashlib.sha256
        for ln in lines:
            head = sha(head + ln).digest()
            add(head)
    else:
        dig = hmac.digest
        for ln in lines:
            head = dig(key, head + ln, "sha256")
            add(head)
    return out


def key_id(key: bytes | None) -> str:
    """Names the key without revealing it (a verifier needs the same key)."""
    return "" if key is None else hashlib.sha256(b"beiand-key-id\0" + key).hexdigest()[:16]


# -- headers ------------------------------------------------------------------------------------


def header_line(meta: dict[str, Any]) -> bytes:
    return MAGIC + json.dumps(meta, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def parse_header(data: bytes, path: str) -> tuple[dict[str, Any], int]:
    """Return (header, offset after it)."""
    end = data.find(b"\n", 0, 4096)
    if not data.startswith(MAGIC) or end < 0:
        raise FormatError(f"{path}: not a beiand access-log partition (bad header)")
    try:
        hdr = json.loads(data[len(MAGIC):end])
    except ValueError as exc:
        raise FormatError(f"{path}: header is not valid JSON: {exc}") from None
    if not isinstance(hdr, dict):
        raise FormatError(f"{path}: header is not a JSON object")
    return hdr, end + 1


@dataclass(frozen=True)
class Frame:
    offset: int  # of the frame's first byte
    end: int  # one past its last byte
    count: int
    head: bytes
    payload: bytes


def iter_frames(data: bytes, start: int, head_crc: bool = True) -> tuple[list[Frame], int, str]:
    """Parse frames from ``start``; stop at the first incomplete or corrupt one.

    Returns (frames, offset of the end of the last good frame, why parsing stopped or "").
    """
    frames: list[Frame] = []
    pos = start
    n = len(data)
    while pos < n:
        fr = frame_at(data, pos, head_crc)
        if isinstance(fr, str):
            return frames, pos, fr
        frames.append(fr)
        pos = fr.end
    return frames, pos, ""


def frame_at(data: bytes, pos: int, head_crc: bool | None = True) -> Frame | str:
    """The whole, intact frame at ``pos``, or why there is none (``head_crc`` None: either CRC)."""
    n = len(data)
    size = FRAME.size
    if n - pos < size:
        return f"torn frame header at offset {pos}"
    magic, count, plen, crc, head = FRAME.unpack_from(data, pos)
    if magic != b"F":
        return f"bad frame magic at offset {pos}"
    body = pos + size
    if body + plen > n:
        return f"torn frame at offset {pos} ({n - body} of {plen} payload bytes)"
    payload = data[body:body + plen]
    if head_crc is None:
        ok = _crc(payload, head) == crc or _crc(payload) == crc
    else:
        ok = (_crc(payload, head) if head_crc else _crc(payload)) == crc
    if not ok:
        return f"frame checksum mismatch at offset {pos}"
    held = payload.count(b"\n")
    if held != count:
        return f"frame at offset {pos} holds {held} records, header says {count}"
    return Frame(pos, body + plen, count, head, payload)


def resync(data: bytes, pos: int, head_crc: bool | None = True) -> int:
    """The offset of the next intact frame after a damaged one at ``pos`` (``len(data)``: none).

    First where the damaged frame's own length says the next one starts (damage in a payload
    leaves the header right), then byte by byte: a frame must end in a newline and pass its CRC.
    """
    n = len(data)
    size = FRAME.size
    if n - pos >= size:
        plen: int = FRAME.unpack_from(data, pos)[2]
        nxt = pos + size + plen
        if nxt < n and not isinstance(frame_at(data, nxt, head_crc), str):
            return nxt
    find = data.find
    i = find(b"F", pos + 1)
    while 0 <= i <= n - size:
        _, count, plen, _, _ = FRAME.unpack_from(data, i)
        end = i + size + plen
        if 0 < count <= plen and end <= n and data[end - 1] == 10 and not isinstance(frame_at(data, i, head_crc), str):
            return i
        i = find(b"F", i + 1)
    return n


def _crc(b: bytes, head: bytes = b"") -> int:
    return zlib.crc32(b, zlib.crc32(head)) & 0xFFFFFFFF if head else zlib.crc32(b) & 0xFFFFFFFF


@dataclass(frozen=True)
class OpenPartition:
    """An open partition as read from disk: its header, every intact frame, and what is damaged."""

    header: dict[str, Any]  # {} when the header line is damaged
    frames: list[Frame]  # every intact frame, including those after damage (found by resync)
    end: int  # one past the last whole frame before the first damage
    size: int  # of the file
    why: str  # why parsing stopped before ``size`` ("" when it did not)
    damaged: tuple[tuple[int, int], ...] = ()  # byte ranges that do not parse, in order
    header_crc: int = 0  # crc32 of the header line as it stands

    @property
    def header_ok(self) -> bool:
        return bool(self.header)

    @property
    def head(self) -> bytes:
        """The chain head after its last readable record (the predecessor's head when it holds none)."""
        if self.frames:
            return self.frames[-1].head
        return bytes.fromhex(self.header["prev_head"]) if self.header else GENESIS

    @property
    def records(self) -> int:
        return sum(f.count for f in self.frames)

    def tail_only(self) -> bool:
        """Whether the only damage is one run reaching the end of the file with no intact frame
        after it: what a crash leaves (a torn tail), as opposed to damage inside."""
        return self.header_ok and len(self.damaged) == 1 and self.damaged[0][1] == self.size


def read_open(path: Path) -> OpenPartition:
    return parse_open(path.read_bytes(), str(path))


def parse_open(data: bytes, path: str) -> OpenPartition:
    """Every intact frame of an open partition; damage is skipped (resync), never fatal."""
    damaged: list[tuple[int, int]] = []
    # Either CRC is accepted: a damaged header must not make intact frames unreadable, and a
    # frame whose CRC covers its head does not pass the payload-only check by accident.
    head_crc = None
    hdr: dict[str, Any]
    try:
        hdr, start = parse_header(data, path)
        hcrc = _crc(data[:start])
    except FormatError:
        hdr = {}
        nl = data.find(b"\n", 0, 4096)
        hcrc = _crc(data[:nl + 1]) if nl >= 0 else 0
        start = resync(data, 0, None) if not data.startswith(b"F") else 0
        if start:  # an empty range is no damage (the header's loss is said in `why`)
            damaged.append((0, start))
    frames: list[Frame] = []
    pos = start
    n = len(data)
    end, why = (start, "") if hdr else (0, f"damaged header line (bytes 0-{start})")
    while pos < n:
        fr = frame_at(data, pos, head_crc)
        if isinstance(fr, str):
            why = why or fr
            nxt = resync(data, pos, head_crc)
            damaged.append((pos, nxt))
            pos = nxt
            continue
        frames.append(fr)
        pos = fr.end
        if not damaged:
            end = pos
    return OpenPartition(hdr, frames, end, n, why, tuple(damaged), hcrc)


def frame_bytes(count: int, head: bytes, payload: bytes, head_crc: bool = True) -> bytes:
    return FRAME.pack(b"F", count, len(payload), _crc(payload, head) if head_crc else _crc(payload), head) + payload


# -- the commit mark ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Mark:
    """The last durable commit of an open partition: frames up to ``offset`` are fsynced."""

    seq: int
    offset: int
    count: int
    head: bytes
    header_crc: int


def mark_bytes(m: Mark) -> bytes:
    body = MARK.pack(MARK_MAGIC, m.seq, m.offset, m.count, m.head, m.header_crc)
    return body + struct.pack(">I", _crc(body))


def read_mark(path: Path) -> Mark | None:
    """The newest intact slot of a mark file; None when there is no file or no intact slot."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    best: Mark | None = None
    for slot in (0, MARK_SLOT):
        raw = data[slot:slot + MARK.size + 4]
        if len(raw) < MARK.size + 4 or struct.unpack(">I", raw[-4:])[0] != _crc(raw[:-4]):
            continue
        magic, seq, off, count, head, hcrc = MARK.unpack(raw[:-4])
        if magic == MARK_MAGIC and (best is None or seq > best.seq):
            best = Mark(seq, off, count, head, hcrc)
    return best


# -- the sealed index ---------------------------------------------------------------------------
# Keys: "n:" + every dot-suffix of the name (so --name and --suffix both use it), "c:" client IP,
# "s:" server IP, "a:" account, and (format 2, issue 19) "p:" server endpoint ``ip:port``; the
# NAT endpoint of a record (its ``nat`` field) is indexed under "s" and "p" too. Each key kind is a
# sorted array of 64-bit key hashes, offsets into a postings array of block numbers. A hash
# collision only costs reading a block that is then filtered exactly. Format 1 stores the kinds
# n, c, s, a in one zlib section; format 2 one zlib section per kind (a query inflates only the
# kind it looks up).

KEY_KINDS = ("n", "c", "s", "a")
KEY_KINDS_V2 = ("n", "c", "s", "a", "p")
_BIG = sys.byteorder == "big"


def key_hash(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "little")


def name_keys(name: str) -> list[str]:
    if not name:
        return []
    keys = [name]
    i = name.find(".")
    while i >= 0:
        keys.append(name[i + 1:])
        i = name.find(".", i + 1)
    return keys


def endpoint_key(ip: str, port: int | str) -> str:
    """The "p" key of a server endpoint."""
    return f"{ip}|{port}"


def split_endpoint(text: str) -> tuple[str, int] | None:
    """``ip:port`` or ``[v6]:port`` (a record's ``nat`` field) → (ip, port); None when it is not one."""
    if text.startswith("["):
        ip, sep, port = text[1:].partition("]:")
    else:
        ip, sep, port = text.rpartition(":")
        if ":" in ip:
            return None
    if not sep or not (port.isascii() and port.isdigit()) or not ip:
        return None
    return ip, int(port)


def build_kind(postings: dict[str, set[int]]) -> bytes:
    """One key kind: its count header, sorted key hashes, offsets, block numbers."""
    items = sorted((key_hash(k), sorted(v)) for k, v in postings.items())
    keys = array("Q")
    offs = array("I", [0])
    blocks = array("I")
    for h, bl in items:
        if keys and keys[-1] == h:  # merge colliding hashes
            merged = sorted(set(blocks[offs[-2]:]) | set(bl))
            del blocks[offs[-2]:]
            blocks.extend(merged)
            offs[-1] = len(blocks)
            continue
        keys.append(h)
        blocks.extend(bl)
        offs.append(len(blocks))
    if _BIG:  # pragma: no cover - big-endian hosts
        for a in (keys, offs, blocks):
            a.byteswap()
    return struct.pack("<III", len(keys), len(offs), len(blocks)) + keys.tobytes() + offs.tobytes() + blocks.tobytes()


_BUCKET_KEYS = 256  # keys per bucket of a format-2 index kind, on average


def _planes(a: array[int]) -> bytes:
    if _BIG:  # pragma: no cover - big-endian hosts
        a = array(a.typecode, a)
        a.byteswap()
    raw = a.tobytes()
    w = a.itemsize
    return raw if w == 1 else b"".join(raw[i::w] for i in range(w))


def _buffer(n: int) -> Any:
    return bytearray(n)


def _unplanes(code: str, data: bytes, n: int) -> array[int]:
    a = array(code)
    w = a.itemsize
    if len(data) != n * w:
        raise ValueError("index bucket: truncated")
    if w > 1:
        # Made by a function on purpose: compiled (issue 21), Cython infers ``bytearray(n)`` as
        # a bytearray, whose slice assignment then took only a bytearray, and every wide
        # bucket failed ("Expected bytearray, got bytes").
        buf = _buffer(len(data))
        for i in range(w):
            buf[i::w] = data[i * n:(i + 1) * n]
        a.frombytes(buf)
    else:
        a.frombytes(data)
    if _BIG:  # pragma: no cover
        a.byteswap()
    return a


def key_hash32(s: str | bytes) -> int:
    """The format-2 index hash of a key (CRC-32 of its UTF-8 bytes: fast, and a collision only
    costs reading a block)."""
    return zlib.crc32(s if isinstance(s, bytes) else s.encode("utf-8", "surrogateescape"))


class Postings:
    """(key hash, block) pairs of one index kind, gathered while sealing, bucketed by the hash's
    top bits (the number of buckets follows the record count: ~256 keys per bucket at most)."""

    def __init__(self, records: int) -> None:
        self.bits = max(0, (records // _BUCKET_KEYS).bit_length())
        self.shift = 32 - self.bits
        self.buckets = [array("Q") for _ in range(1 << self.bits)]

    def add(self, keys: Iterable[bytes], block: int) -> None:
        """Post ``block`` under each of ``keys`` (distinct within the block)."""
        buckets, shift, crc = self.buckets, self.shift, zlib.crc32
        if self.bits:
            for h in map(crc, keys):
                buckets[h >> shift].append(h << 32 | block)
        else:
            b0 = buckets[0]
            for h in map(crc, keys):
                b0.append(h << 32 | block)


def build_kind_v2(postings: Postings, nblocks: int) -> bytes:
    """A format-2 index kind: keys hashed to 32 bits, split by their top bits into buckets, each
    bucket zlib(sorted hashes, offsets, block numbers; byte plane by byte plane), behind a table
    of bucket offsets; a lookup reads two table entries and inflates one bucket."""
    code = "H" if nblocks <= 0xFFFF else "I"
    blobs: list[bytes] = []
    for bucket in postings.buckets:
        pairs = sorted(set(bucket))
        keys = array("I")
        offs = array("I", [0])
        blocks = array(code)
        last = -1
        for v in pairs:
            h = v >> 32
            if h != last:
                if last >= 0:
                    offs.append(len(blocks))
                keys.append(h)
                last = h
            blocks.append(v & 0xFFFFFFFF)
        if last >= 0:
            offs.append(len(blocks))
        body = struct.pack("<II", len(keys), len(blocks)) + code.encode() + _planes(keys) + _planes(offs) + _planes(blocks)
        blobs.append(zlib.compress(body, 6))
    table = array("I", [0])
    for blob in blobs:
        table.append(table[-1] + len(blob))
    if _BIG:  # pragma: no cover
        table.byteswap()
    return struct.pack("<I", postings.bits) + table.tobytes() + b"".join(blobs)


class KindIndex:
    """One format-2 index kind of a sealed partition, read bucket by bucket from the file."""

    def __init__(self, f: BinaryIO, offset: int, length: int) -> None:
        self.f, self.offset, self.length = f, offset, length
        f.seek(offset)
        head = f.read(4)
        if len(head) != 4:
            raise ValueError("index kind: truncated")
        self.bits: int = struct.unpack("<I", head)[0]
        if self.bits > 24:
            raise ValueError(f"index kind: {self.bits} bucket bits")
        self.base = offset + 4 + 4 * ((1 << self.bits) + 1)
        if self.base > offset + length:
            raise ValueError("index kind: truncated bucket table")

    def blocks(self, key: str) -> list[int]:
        h = key_hash32(key)
        b = h >> (32 - self.bits) if self.bits else 0
        self.f.seek(self.offset + 4 + 4 * b)
        ent = self.f.read(8)
        if len(ent) != 8:
            raise ValueError("index kind: truncated bucket table")
        lo, hi = struct.unpack("<II", ent)
        if hi <= lo:
            return []
        self.f.seek(self.base + lo)
        body = zlib.decompress(self.f.read(hi - lo))
        nk, nb = struct.unpack_from("<II", body, 0)
        code = body[8:9].decode("ascii")
        if code not in ("H", "I"):
            raise ValueError("index bucket: bad block width")
        pos = 9
        keys = _unplanes("I", body[pos:pos + 4 * nk], nk)
        pos += 4 * nk
        offs = _unplanes("I", body[pos:pos + 4 * (nk + 1)], nk + 1)
        pos += 4 * (nk + 1)
        w = 2 if code == "H" else 4
        blocks = _unplanes(code, body[pos:pos + w * nb], nb)
        i = bisect_left(keys, h)
        if i == len(keys) or keys[i] != h:
            return []
        return list(blocks[offs[i]:offs[i + 1]])


def build_index(postings: dict[str, dict[str, set[int]]]) -> bytes:
    """The format-1 index: kinds n, c, s, a in one section."""
    return b"".join(build_kind(postings.get(kind, {})) for kind in KEY_KINDS)


class Index:
    """A sealed partition's key → blocks index, loaded without parsing per entry (format 1: every
    kind from one section; format 2: the kinds given, each from its own section)."""

    def __init__(self, data: bytes | None = None, kinds: tuple[str, ...] = KEY_KINDS) -> None:
        self.kinds: dict[str, tuple[array[int], array[int], array[int]]] = {}
        pos = 0
        for kind in kinds:
            if data is not None:
                pos = self.load(kind, data, pos)

    def load(self, kind: str, data: bytes, pos: int = 0) -> int:
        nk, no, nb = struct.unpack_from("<III", data, pos)
        pos += 12
        arrs = []
        for code, n in (("Q", nk), ("I", no), ("I", nb)):
            a = array(code)
            a.frombytes(data[pos:pos + n * a.itemsize])
            if len(a) != n:
                raise ValueError(f"index kind {kind!r}: truncated")
            if _BIG:  # pragma: no cover
                a.byteswap()
            pos += n * a.itemsize
            arrs.append(a)
        self.kinds[kind] = (arrs[0], arrs[1], arrs[2])
        return pos

    def blocks(self, kind: str, key: str) -> list[int]:
        keys, offs, blocks = self.kinds[kind]
        h = key_hash(key)
        i = bisect_left(keys, h)
        if i == len(keys) or keys[i] != h:
            return []
        return list(blocks[offs[i]:offs[i + 1]])


# -- sealed blocks ------------------------------------------------------------------------------
# Sealed partitions of format 1 (before issue 19) hold zlib(lines) per block, in log order. In
# format 2 the partition's records are *clustered*: sorted by server address and port (stable:
# log order within one endpoint), so a query for one endpoint reads one or two blocks a day;
# every record keeps its position in the log (a "q" section) and the chain heads are kept per
# segment of block_records records in log order (meta "segments"), so verify puts the lines back
# in log order and recomputes the chain over exactly them. A format-2 block starts with a codec
# byte: b"C" columnar (the fields as columns: times as zigzag deltas, numbers as fixed-width
# integers byte plane by byte plane, text as a dictionary of the block's distinct values and an
# index per record, addresses as 4 or 16 bytes where they print back exactly; then zlib) or, for
# a block whose fields cannot all be stored exactly (an escape, a number not in canonical
# decimal, records of different shapes), b"z" zlib(positions ‖ lines). Either way the lines come
# back byte for byte.

SEAL_FORMAT = 2
CODEC_ZLIB = b"Z"
CODEC_ZLIB_SEQ = b"z"  # zlib(positions section ‖ lines): a clustered block that could not be columnar
CODEC_COLUMNS = b"C"
_U32 = struct.Struct("<I")
_INT_COLS = frozenset(i for i, f in enumerate(FIELDS) if f in INT_FIELDS and f != "ts_ms")
_IP_COLS = frozenset(i for i, f in enumerate(FIELDS) if f in ("client_ip", "server_ip"))
_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


def _int_array(values: list[int]) -> array[int]:
    hi = max(values, default=0)
    if min(values, default=0) < 0:
        raise ValueError("negative number")
    for code in ("B", "H", "I", "Q"):
        a = array(code)
        if hi < 1 << (8 * a.itemsize):
            a.extend(values)
            return a
    raise ValueError("number too large")


def _typed(tag: bytes, a: array[int]) -> bytes:
    """A section: tag, item width, byte length, then the little-endian items byte plane by byte
    plane (every item's low byte, then every second byte...: what compresses)."""
    if _BIG:  # pragma: no cover - big-endian hosts
        a.byteswap()
    raw = a.tobytes()
    w = a.itemsize
    planes = raw if w == 1 else b"".join(raw[i::w] for i in range(w))
    return tag + bytes([w]) + _U32.pack(len(raw)) + planes


def _read_typed(data: bytes, pos: int, want: bytes, n: int) -> tuple[list[int], int]:
    tag, w = data[pos:pos + 1], data[pos + 1]
    if tag != want or w not in _CODES:
        raise ValueError(f"columnar block: expected section {want!r}, got {tag!r} of width {w}")
    (ln,) = _U32.unpack_from(data, pos + 2)
    pos += 6
    if ln != n * w or pos + ln > len(data):
        raise ValueError(f"columnar block: section {want!r} holds {ln} bytes for {n} records")
    planes = data[pos:pos + ln]
    raw = planes
    if w > 1:
        buf = _buffer(ln)  # not ``bytearray(ln)``: see _unplanes
        for i in range(w):
            buf[i::w] = planes[i * n:(i + 1) * n]
        raw = bytes(buf)
    a = array(_CODES[w])
    a.frombytes(raw)
    if _BIG:  # pragma: no cover
        a.byteswap()
    return a.tolist(), pos + ln


def _zigzag(v: int) -> int:
    return v << 1 if v >= 0 else ((-v) << 1) - 1


def _unzigzag(v: int) -> int:
    return v >> 1 if not v & 1 else -((v + 1) >> 1)


_V4, _V6 = socket.AF_INET, socket.AF_INET6


def _ip_bytes(w: bytes) -> bytes | None:
    """The 4 or 16 bytes of a textual address when it prints back exactly as ``w``, else None."""
    try:
        text = w.decode("ascii")
        fam = _V6 if ":" in text else _V4
        b = socket.inet_pton(fam, text)
        if socket.inet_ntop(fam, b) == text:
            return b
    except (OSError, UnicodeDecodeError, ValueError):
        pass
    return None


def _pack_ips(words: list[bytes]) -> tuple[bytes, list[int]]:
    """An address dictionary: IPv4 words as 4 bytes, then IPv6 as 16, then any other text; and
    where each of ``words`` went (the index of its entry)."""
    v4: list[bytes] = []
    v6: list[bytes] = []
    other: list[bytes] = []
    where: list[tuple[int, int]] = []
    for w in words:
        b = _ip_bytes(w)
        if b is None:
            where.append((2, len(other)))
            other.append(w)
        elif len(b) == 4:
            where.append((0, len(v4)))
            v4.append(b)
        else:
            where.append((1, len(v6)))
            v6.append(b)
    base = (0, len(v4), len(v4) + len(v6))
    body = struct.pack("<III", len(v4), len(v6), len(other)) + b"".join(v4) + b"".join(v6) + b"\n".join(other)
    return body, [base[k] + i for k, i in where]


class _Ips:
    """An address dictionary as stored: entries printed only when asked for."""

    def __init__(self, raw: bytes) -> None:
        n4, n6, no = struct.unpack_from("<III", raw, 0)
        self.n4: int = n4
        self.n6: int = n6
        self.raw = raw
        self.at6 = 12 + 4 * n4
        at = self.at6 + 16 * n6
        if at > len(raw):
            raise ValueError("columnar block: truncated address dictionary")
        self.other: list[bytes] = raw[at:].split(b"\n") if no else []
        if len(self.other) != no:
            raise ValueError("columnar block: address dictionary count")
        self.size: int = n4 + n6 + no

    def __len__(self) -> int:
        return self.size

    def word(self, k: int) -> bytes:
        if k < self.n4:
            return socket.inet_ntop(_V4, self.raw[12 + 4 * k:16 + 4 * k]).encode()
        k -= self.n4
        if k < self.n6:
            return socket.inet_ntop(_V6, self.raw[self.at6 + 16 * k:self.at6 + 16 + 16 * k]).encode()
        return self.other[k - self.n6]

    def find(self, values: set[bytes]) -> set[int]:
        """The entries equal to any of ``values``."""
        out: set[int] = set()
        for v in values:
            b = _ip_bytes(v)
            if b is not None and len(b) == 4:
                raw, i = self.raw, 12
                end = self.at6
                while True:
                    j = raw.find(b, i, end)
                    if j < 0:
                        break
                    if (j - 12) % 4 == 0:
                        out.add((j - 12) // 4)
                        break
                    i = j + 1
            elif b is not None:
                raw, i, end = self.raw, self.at6, self.at6 + 16 * self.n6
                while True:
                    j = raw.find(b, i, end)
                    if j < 0:
                        break
                    if (j - self.at6) % 16 == 0:
                        out.add(self.n4 + (j - self.at6) // 16)
                        break
                    i = j + 1
            for k, w in enumerate(self.other):
                if w == v:
                    out.add(self.n4 + self.n6 + k)
        return out


def split_block(lines: list[bytes]) -> list[tuple[bytes, ...]] | None:
    """A block's columns (field bytes as on the line), or None when its lines are not all whole
    records of one field count (then the block is stored as zlib lines)."""
    if not lines or any(ln[-1:] != b"\n" for ln in lines):
        return None
    rows = [ln[:-1].split(b"\t") for ln in lines]
    nf = len(rows[0])
    if nf not in _SHAPES or any(len(r) != nf for r in rows):
        return None
    return list(zip(*rows, strict=True))


def _canonical_ints(col: tuple[bytes, ...]) -> list[int]:
    vals = list(map(int, col))
    if [b"%d" % v for v in vals] != list(col):
        raise ValueError("a number not in canonical decimal")
    return vals


def _encode_columns(cols: list[tuple[bytes, ...]], seqs: list[int] | None = None) -> bytes:
    """Every column encoded exactly: numbers only when they print back as they were, addresses
    only when they print back (else as text), text as itself; the lines are the fields joined."""
    n = len(cols[0])
    out = [struct.pack("<IB", n, len(cols))]
    for c, col in enumerate(cols):
        if c == 0:
            ts = _canonical_ints(col)
            out.append(struct.pack("<q", ts[0]))
            out.append(_typed(b"d", _int_array([_zigzag(b - a) for a, b in itertools.pairwise(ts)])))
        elif c in _INT_COLS:
            out.append(_typed(b"i", _int_array(_canonical_ints(col))))
        else:
            distinct = list(dict.fromkeys(col))  # first-seen order
            if c in _IP_COLS:
                words, moved = _pack_ips(distinct)
                out.append(b"a" + _U32.pack(len(words)) + words)
                where = dict(zip(distinct, moved, strict=True))
            else:
                out.append(b"s" + _U32.pack(sum(map(len, distinct)) + len(distinct) - 1) + b"\n".join(distinct))
                where = {w: i for i, w in enumerate(distinct)}
            if len(distinct) > 1:
                out.append(_typed(b"x", _int_array(list(map(where.__getitem__, col)))))
    if seqs is not None:
        out.append(_typed(b"q", _int_array(seqs)))
    return zlib.compress(b"".join(out), 6)


def _sections(data: bytes) -> tuple[int, list[tuple[bytes, int, int, int]]]:
    """(records, per column (tag, start, end, start of its index section or -1) ) of an inflated block."""
    n, nf = struct.unpack_from("<IB", data, 0)
    pos = 5
    cols: list[tuple[bytes, int, int, int]] = []
    for c in range(nf):
        if c == 0:
            start = pos
            pos = _skip_typed(data, pos + 8, b"d", n - 1)
            cols.append((b"d", start, pos, -1))
        elif c in _INT_COLS:
            start = pos
            pos = _skip_typed(data, pos, b"i", n)
            cols.append((b"i", start, pos, -1))
        else:
            tag = data[pos:pos + 1]
            if tag not in (b"s", b"a"):
                raise ValueError("columnar block: expected a dictionary section")
            (ln,) = _U32.unpack_from(data, pos + 1)
            start, end = pos + 5, pos + 5 + ln
            if end > len(data):
                raise ValueError("columnar block: truncated dictionary")
            pos = end
            xi = -1
            if data[pos:pos + 1] == b"x":
                xi = pos
                pos = _skip_typed(data, pos, b"x", n)
            cols.append((tag, start, end, xi))
    if data[pos:pos + 1] == b"q":  # the records' positions in the partition (clustered layout)
        start = pos
        pos = _skip_typed(data, pos, b"q", n)
        cols.append((b"q", start, pos, -1))
    if pos != len(data):
        raise ValueError("columnar block: trailing bytes")
    return n, cols


def _skip_typed(data: bytes, pos: int, want: bytes, n: int) -> int:
    if data[pos:pos + 1] != want or data[pos + 1] not in _CODES:
        raise ValueError(f"columnar block: expected section {want!r}")
    ln: int = _U32.unpack_from(data, pos + 2)[0]
    if ln != n * data[pos + 1] or pos + 6 + ln > len(data):
        raise ValueError(f"columnar block: section {want!r} holds {ln} bytes for {n} records")
    return pos + 6 + ln


def _words(data: bytes, sec: tuple[bytes, int, int, int]) -> _Ips | list[bytes]:
    _, start, end, _ = sec
    raw = data[start:end]
    return _Ips(raw) if sec[0] == b"a" else raw.split(b"\n")


def _typed_at(data: bytes, pos: int, n: int, rows: list[int]) -> list[int]:
    """Items ``rows`` of a typed section (already checked by :func:`_sections`), read from its byte
    planes without unpacking the rest: what a few matching rows of a block cost."""
    w = data[pos + 1]
    base = pos + 6
    if w == 1:
        return [data[base + i] for i in rows]
    return [sum(data[base + k * n + i] << (8 * k) for k in range(w)) for i in rows]


def _column(data: bytes, n: int, sec: tuple[bytes, int, int, int], rows: list[int] | None = None) -> list[bytes]:
    """A column's fields, of every row or of ``rows``."""
    tag, start, _end, xi = sec
    if tag == b"d":
        (t,) = struct.unpack_from("<q", data, start)
        deltas, _ = _read_typed(data, start + 8, b"d", n - 1)
        if rows is not None:
            deltas = deltas[:max(rows, default=0)]
        ts = list(itertools.accumulate([v >> 1 if not v & 1 else -((v + 1) >> 1) for v in deltas], initial=t))
        return [b"%d" % ts[i] for i in rows] if rows is not None else [b"%d" % v for v in ts]
    if tag in (b"i", b"q"):
        if rows is not None and len(rows) * 8 < n:
            return [b"%d" % v for v in _typed_at(data, start, n, rows)]
        vals, _ = _read_typed(data, start, tag, n)
        return [b"%d" % vals[i] for i in rows] if rows is not None else [b"%d" % v for v in vals]
    words = _words(data, sec)
    if xi < 0:
        if len(words) != 1:
            raise ValueError("columnar block: a dictionary of several words without an index")
        w = words.word(0) if isinstance(words, _Ips) else words[0]
        return [w] * (n if rows is None else len(rows))
    if rows is not None and len(rows) * 8 < n:
        idx = _typed_at(data, xi, n, rows)
    else:
        idx, _ = _read_typed(data, xi, b"x", n)
        if rows is not None:
            idx = [idx[i] for i in rows]
    if max(idx, default=0) >= len(words):
        raise ValueError("columnar block: index beyond its dictionary")
    if isinstance(words, _Ips):
        cache: dict[int, bytes] = {}
        out = []
        for k in idx:
            got = cache.get(k)
            if got is None:
                got = cache[k] = words.word(k)
            out.append(got)
        return out
    return [words[i] for i in idx]


def _rows_where(data: bytes, n: int, sec: tuple[bytes, int, int, int], values: set[bytes], rows: list[int] | None) -> list[int]:
    tag, _, _, xi = sec
    if tag in (b"d", b"i"):
        col = _column(data, n, sec, rows)
        return [i for i, v in zip(range(n) if rows is None else rows, col, strict=True) if v in values]
    words = _words(data, sec)
    hits = words.find(values) if isinstance(words, _Ips) else {k for k, w in enumerate(words) if w in values}
    if not hits:
        return []
    if xi < 0:
        return list(range(n)) if rows is None else rows
    if rows is not None and len(rows) * 8 < n:
        return [i for i, k in zip(rows, _typed_at(data, xi, n, rows), strict=True) if k in hits]
    idx, _ = _read_typed(data, xi, b"x", n)
    return [i for i in (range(n) if rows is None else rows) if idx[i] in hits]


def _decode_columns(blob: bytes, where: list[dict[int, set[bytes]]] | None = None) -> tuple[list[int] | None, list[bytes]]:
    data = zlib.decompress(blob)
    n, secs = _sections(data)
    seq_sec = secs.pop() if secs and secs[-1][0] == b"q" else None
    order: list[int] | None = None
    if where:
        # Only the rows that can match: the columns the filter names first, then those rows of the rest.
        keep: set[int] = set()
        for alt in where:
            rows: list[int] | None = None
            for c, values in alt.items():
                rows = _rows_where(data, n, secs[c], values, rows) if c < len(secs) else []
                if not rows:
                    break
            keep.update(rows or ())
        if not keep:
            return ([] if seq_sec else None), []
        order = sorted(keep)
    cols = [_column(data, n, sec, order) for sec in secs]
    seqs = list(map(int, _column(data, n, seq_sec, order))) if seq_sec is not None else None
    return seqs, [b"\t".join(r) + b"\n" for r in zip(*cols, strict=True)]


def encode_block(lines: list[bytes], cols: list[tuple[bytes, ...]] | None = None, seqs: list[int] | None = None) -> bytes:
    """A sealed block (format 2) holding ``lines`` (``cols``: their :func:`split_block`, when the
    caller has it; ``seqs``: each line's position in its partition, for a block of records not in
    log order): columnar when every field can be stored exactly, else zlib over the lines."""
    if cols is None:
        cols = split_block(lines)
    if cols is not None:
        try:
            return CODEC_COLUMNS + _encode_columns(cols, seqs)
        except (ValueError, OverflowError, struct.error):
            pass
    if seqs is None:
        return CODEC_ZLIB + zlib.compress(b"".join(lines), 6)
    return CODEC_ZLIB_SEQ + zlib.compress(_typed(b"q", _int_array(seqs)) + b"".join(lines), 6)


def decode_block(data: bytes, version: int, where: list[dict[int, set[bytes]]] | None = None) -> list[bytes]:
    """The lines (with newlines) of a sealed block; raises ValueError or zlib.error (damage). With
    ``where`` (alternatives, each {column: acceptable field bytes}), a columnar block may return
    only the lines that satisfy one: a pre-filter for queries."""
    return decode_block_seq(data, version, where)[1]


def decode_block_seq(data: bytes, version: int,
                     where: list[dict[int, set[bytes]]] | None = None) -> tuple[list[int] | None, list[bytes]]:
    """(each line's position in its partition, or None for a block in log order; the lines)."""
    if version < 2:
        return None, zlib.decompress(data).splitlines(keepends=True)
    codec, body = data[:1], data[1:]
    try:
        if codec == CODEC_ZLIB:
            return None, zlib.decompress(body).splitlines(keepends=True)
        if codec == CODEC_ZLIB_SEQ:
            raw = zlib.decompress(body)
            (ln,) = _U32.unpack_from(raw, 2)
            w = raw[1]
            if w not in _CODES or ln % w:
                raise ValueError("zlib block: bad positions section")
            seqs, pos = _read_typed(raw, 0, b"q", ln // w)
            lines = raw[pos:].splitlines(keepends=True)
            if len(lines) != len(seqs):
                raise ValueError(f"zlib block: {len(lines)} records, {len(seqs)} positions")
            return seqs, lines
        if codec == CODEC_COLUMNS:
            return _decode_columns(body, where)
    except (struct.error, IndexError, KeyError, OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{codec!r} block: {exc}") from None
    raise ValueError(f"unknown block codec {codec!r}")
