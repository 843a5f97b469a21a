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

Sealed partition: the header line, zlib blocks of up to ``block_records`` records, a zlib
index (keys → blocks), the JSON meta (block table with each block's chain head), and a
24-byte trailer ``meta_offset u64 | meta_len u64 | b"BEIANDSL"``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
import sys
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
_INT_AT = tuple(i for i, f in enumerate(FIELDS) if f in INT_FIELDS)
_TABS = NFIELDS - 1


class FormatError(BeiandError):
    """A partition file that does not parse: the message names the file and offset."""


# -- records ------------------------------------------------------------------------------------


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


_FMT = "\t".join(["%s"] * NFIELDS) + "\n"


def encode_batch(recs: list[AccessRecord]) -> list[bytes]:
    """Records as lines (with newlines). Fast path: no escaping needed, checked once for the batch."""
    fmt = _FMT
    lines = [(fmt % r).encode("utf-8", "surrogateescape") for r in recs]
    joined = b"".join(lines)
    if joined.count(b"\t") != _TABS * len(recs) or joined.count(b"\n") != len(recs) or b"\\" in joined or b"\r" in joined:
        return [encode(r) for r in recs]
    return lines


def encode(rec: AccessRecord) -> bytes:
    """One record as a line (with its newline). Tabs, newlines and backslashes in fields are escaped."""
    line = "\t".join(map(str, rec))
    if line.count("\t") != _TABS or "\n" in line or "\\" in line or "\r" in line:
        line = "\t".join(_esc(str(v)) for v in rec)
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
    if n != NFIELDS and n != NFIELDS_V1:
        raise ValueError(f"expected {NFIELDS} fields (or {NFIELDS_V1}, written before issue 19), got {n}")
    v: list[Any] = [_unesc(p) for p in parts]
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
# "s:" server IP, "a:" account. Each key kind is a sorted array of 64-bit key hashes, offsets into
# a postings array of block numbers. A hash collision only costs reading a block that is then
# filtered exactly.

KEY_KINDS = ("n", "c", "s", "a")
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


def build_index(postings: dict[str, dict[str, set[int]]]) -> bytes:
    out = bytearray()
    for kind in KEY_KINDS:
        items = sorted((key_hash(k), sorted(v)) for k, v in postings.get(kind, {}).items())
        # Merge colliding hashes.
        keys = array("Q")
        offs = array("I", [0])
        blocks = array("I")
        for h, bl in items:
            if keys and keys[-1] == h:
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
        out += struct.pack("<III", len(keys), len(offs), len(blocks))
        out += keys.tobytes() + offs.tobytes() + blocks.tobytes()
    return bytes(out)


class Index:
    """A sealed partition's key → blocks index, loaded without parsing per entry."""

    def __init__(self, data: bytes) -> None:
        self.kinds: dict[str, tuple[array[int], array[int], array[int]]] = {}
        pos = 0
        for kind in KEY_KINDS:
            nk, no, nb = struct.unpack_from("<III", data, pos)
            pos += 12
            arrs = []
            for code, n in (("Q", nk), ("I", no), ("I", nb)):
                a = array(code)
                a.frombytes(data[pos:pos + n * a.itemsize])
                if _BIG:  # pragma: no cover
                    a.byteswap()
                pos += n * a.itemsize
                arrs.append(a)
            self.kinds[kind] = (arrs[0], arrs[1], arrs[2])

    def blocks(self, kind: str, key: str) -> list[int]:
        keys, offs, blocks = self.kinds[kind]
        h = key_hash(key)
        i = bisect_left(keys, h)
        if i == len(keys) or keys[i] != h:
            return []
        return list(blocks[offs[i]:offs[i + 1]])
