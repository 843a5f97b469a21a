"""Streaming pcap and pcapng readers: both byte orders, micro- and nanosecond stamps, several
interfaces with their own link types (pcapng). A file is read in chunks, never whole.

https://www.ietf.org/archive/id/draft-ietf-opsawg-pcap-04.html (pcap) and
https://www.ietf.org/archive/id/draft-ietf-opsawg-pcapng-02.html (pcapng).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from beiand.errors import BeiandError
from beiand.net.link import ETH_IPV4, ETH_IPV6, ETH_VLAN, ETHERNET_HEADER, LINK_TYPES, LINKTYPE_ETHERNET, VLAN_TAG, Start

CHUNK = 1 << 20
PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
MAX_RECORD = 1 << 18


class CaptureError(BeiandError):
    """The file is not a capture we can read; says which file and why."""


class CaptureReader:
    """Iterate ``(timestamp, linktype, frame)`` over a pcap or pcapng file.

    ``skip_tcp_from`` does in user space what the live daemon's kernel BPF program does: TCP
    packets from a watched port to an unwatched one (the server's answers) and bare ACKs of
    Ethernet/IPv4 and Ethernet/IPv6 frames are counted in ``prefiltered`` and never become frame
    objects. A packet with SYN, FIN or RST is always kept: with connection records the kernel
    passes them on any port (the server's SYN+ACK or RST tells an established flow from an
    attempt, issue 32); without, the decoder counts a server's as it counts the kernel's.

    ``shard=(k, n)`` yields only the frames of shard ``k`` of ``n`` (see :func:`shard_key`): ``n``
    readers of one file, one per worker process, each see every packet of their flows and no
    other. ``records`` still counts every record of the file.
    """

    def __init__(self, path: str | Path, skip_tcp_from: frozenset[int] = frozenset(),
                 shard: tuple[int, int] = (0, 1)) -> None:
        self.path = Path(path)
        self.truncated = False  # the file ended inside a record
        self.records = 0
        self.prefiltered = 0
        self.skip_tcp_from = skip_tcp_from
        if not 0 <= shard[0] < shard[1]:
            raise ValueError(f"shard {shard}: expected (k, n) with 0 <= k < n")
        self.shard = shard
        try:
            self._f: BinaryIO = self.path.open("rb")
        except OSError as exc:
            raise CaptureError(f"{self.path}: cannot open: {exc.strerror}") from None
        head = self._f.read(4)
        self._f.seek(0)
        if head in PCAP_MAGICS:
            self.format = "pcap"
        elif head == PCAPNG_SHB:
            self.format = "pcapng"
        else:
            self._f.close()
            raise CaptureError(f"{self.path}: not a pcap or pcapng file (magic {head.hex() or 'empty'})")

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    def __iter__(self) -> Iterator[tuple[float, int, bytes]]:
        return self._pcap() if self.format == "pcap" else self._pcapng()

    def _pcap(self) -> Iterator[tuple[float, int, bytes]]:
        f = self._f
        hdr = f.read(24)
        if len(hdr) < 24:
            raise CaptureError(f"{self.path}: truncated pcap header")
        order, unit = PCAP_MAGICS[hdr[:4]]
        linktype = struct.unpack(order + "I", hdr[20:24])[0] & 0xFFFF
        rec = struct.Struct(order + "IIII")
        unpack = rec.unpack_from
        watched = self.skip_tcp_from
        filt = bool(watched) and linktype == LINKTYPE_ETHERNET
        mine, nshards = self.shard
        ether = linktype == LINKTYPE_ETHERNET
        little = order == "<"
        skipped = 0
        buf = b""
        pos = 0
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                if pos < len(buf):
                    self.truncated = True
                return
            if pos < len(buf):
                # A record straddles two chunks: complete it alone (one record copied, not the
                # whole new chunk), then read on in the new chunk itself.
                tail = buf[pos:]
                hdr = tail if len(tail) >= 16 else tail + chunk[: 16 - len(tail)]
                need = -1
                if len(hdr) >= 16:
                    sec, frac, incl, _orig = unpack(hdr, 0)
                    if incl > MAX_RECORD:
                        raise CaptureError(f"{self.path}: record {self.records + 1} claims {incl} bytes: corrupt file")
                    need = 16 + incl - len(tail)
                if 0 <= need <= len(chunk):
                    self.records += 1
                    frame = (tail + chunk[:need])[16:]
                    buf, pos = chunk, need
                    keep = _select(frame, 0, len(frame), linktype, watched, mine, nshards)
                    if keep is True:
                        yield sec + frac * unit, linktype, frame
                    elif keep is _FILTERED:
                        skipped += 1
                else:  # the new chunk does not finish it either (a short read near the end)
                    buf, pos = tail + chunk, 0
            else:
                buf, pos = chunk, 0
            # The record walk and the prefilter: _scan (typed by pcap.pxd when compiled, issue 21).
            kept: list[int] = []
            pos, count, dropped, bad = _scan(buf, pos, ether, little, filt, watched, nshards, mine, linktype, kept)
            for at in kept:
                sec, frac, incl, _orig = unpack(buf, at)
                yield sec + frac * unit, linktype, buf[at + 16 : at + 16 + incl]
            if bad >= 0:
                raise CaptureError(f"{self.path}: record {self.records + count + 1} claims {bad} bytes: corrupt file")
            skipped += dropped
            self.records += count
            self.prefiltered = skipped

    def _pcapng(self) -> Iterator[tuple[float, int, bytes]]:
        f = self._f
        buf = b""
        pos = 0
        order = "<"
        block = struct.Struct("<II").unpack_from
        epb = struct.Struct("<IIIII").unpack_from
        interfaces: list[tuple[int, float]] = []
        watched = self.skip_tcp_from
        mine, nshards = self.shard
        while True:
            # make sure a whole block is in buf
            if len(buf) - pos < 12:
                chunk = f.read(CHUNK)
                if not chunk:
                    if pos < len(buf):
                        self.truncated = True
                    return
                buf = buf[pos:] + chunk
                pos = 0
                continue
            btype, blen = block(buf, pos)
            if btype == 0x0A0D0D0A:  # Section Header Block (the same in both byte orders)
                bom = buf[pos + 8 : pos + 12]
                if bom == b"\x4d\x3c\x2b\x1a":
                    order = "<"
                elif bom == b"\x1a\x2b\x3c\x4d":
                    order = ">"
                else:
                    raise CaptureError(f"{self.path}: bad pcapng byte-order magic {bom.hex()}")
                block = struct.Struct(order + "II").unpack_from
                epb = struct.Struct(order + "IIIII").unpack_from
                btype, blen = block(buf, pos)
                interfaces = []
            if blen < 12 or blen % 4 or blen > MAX_RECORD + 64:
                raise CaptureError(f"{self.path}: pcapng block of type {btype:#x} claims length {blen}: corrupt file")
            if len(buf) - pos < blen:
                chunk = f.read(max(CHUNK, blen))
                if not chunk:
                    self.truncated = True
                    return
                buf = buf[pos:] + chunk
                pos = 0
                continue
            body = pos + 8
            if btype == 6:  # Enhanced Packet Block
                iface, hi, lo, cap, _orig = epb(buf, body)
                if iface >= len(interfaces):
                    raise CaptureError(f"{self.path}: packet on undeclared interface {iface}")
                if cap > blen - 32:
                    raise CaptureError(f"{self.path}: packet of {cap} bytes in a block of {blen}: corrupt file")
                lt, unit = interfaces[iface]
                self.records += 1
                keep = _select(buf, body + 20, body + 20 + cap, lt, watched, mine, nshards)
                if keep is True:
                    yield ((hi << 32) | lo) * unit, lt, buf[body + 20 : body + 20 + cap]
                elif keep is _FILTERED:
                    self.prefiltered += 1
            elif btype == 3:  # Simple Packet Block: interface 0, no timestamp
                (orig,) = struct.unpack_from(order + "I", buf, body)
                cap = min(orig, blen - 16)
                if not interfaces:
                    raise CaptureError(f"{self.path}: packet before any interface description")
                self.records += 1
                lt = interfaces[0][0]
                keep = _select(buf, body + 4, body + 4 + cap, lt, watched, mine, nshards)
                if keep is True:
                    yield 0.0, lt, buf[body + 4 : body + 4 + cap]
                elif keep is _FILTERED:
                    self.prefiltered += 1
            elif btype == 2:  # obsolete Packet Block
                iface, _drops, hi, lo, cap, _orig = struct.unpack_from(order + "HHIIII", buf, body)
                if iface >= len(interfaces):
                    raise CaptureError(f"{self.path}: packet on undeclared interface {iface}")
                if cap > blen - 32:
                    raise CaptureError(f"{self.path}: packet of {cap} bytes in a block of {blen}: corrupt file")
                lt, unit = interfaces[iface]
                self.records += 1
                keep = _select(buf, body + 20, body + 20 + cap, lt, watched, mine, nshards)
                if keep is True:
                    yield ((hi << 32) | lo) * unit, lt, buf[body + 20 : body + 20 + cap]
                elif keep is _FILTERED:
                    self.prefiltered += 1
            elif btype == 1:  # Interface Description Block
                lt = struct.unpack_from(order + "H", buf, body)[0]
                interfaces.append((lt, self._tsresol(buf, body + 8, pos + blen - 4, order)))
            pos += blen

    @staticmethod
    def _tsresol(buf: bytes, off: int, end: int, order: str) -> float:
        # if_tsresol (option 9): 10^-n, or 2^-n with the high bit set; default microseconds
        while off + 4 <= end:
            code, ln = struct.unpack_from(order + "HH", buf, off)
            if code == 0:
                break
            if code == 9 and ln >= 1:
                v = buf[off + 4]
                return 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0 ** -v
            off += 4 + ((ln + 3) & ~3)
        return 1e-6


_FILTERED = False  # _select(): a frame the capture filter drops (None: another worker's frame)


def _select(buf: bytes, o: int, end: int, linktype: int, watched: frozenset[int], mine: int, nshards: int) -> bool | None:
    """Whether the frame ``buf[o:end]`` is this reader's: ``True`` to yield it, ``None`` when it
    belongs to another shard, ``_FILTERED`` when the capture filter drops it.

    The filter is the live BPF program's test, in user space (only with ``watched``, the watched
    TCP ports, and on Ethernet): TCP from a watched port to an unwatched one (the server's
    answers) and bare ACKs, neither with SYN/FIN/RST (see :class:`CaptureReader`). The two common frames (Ethernet + IPv4
    without options, Ethernet + IPv6 carrying TCP or not) are read in place; the shard hashes
    the same address bytes as :func:`shard_key`. ``_pcap`` inlines this test in its loop; a test
    reads one capture as pcap and as pcapng and asserts both give the same frames.
    """
    incl = end - o
    if linktype == LINKTYPE_ETHERNET and incl >= 54 and buf[o + 12] == 8 and buf[o + 13] == 0 and buf[o + 14] == 0x45:
        if nshards > 1 and (hash(buf[o + 26 : o + 30]) ^ hash(buf[o + 30 : o + 34])) % nshards != mine:
            return None
        if watched and buf[o + 23] == 6 and not buf[o + 47] & 7:  # no SYN, FIN, RST
            if ((buf[o + 36] << 8) | buf[o + 37]) not in watched and ((buf[o + 34] << 8) | buf[o + 35]) in watched:
                return _FILTERED
            if ((buf[o + 16] << 8) | buf[o + 17]) == 20 + ((buf[o + 46] >> 4) << 2):
                return _FILTERED  # a bare ACK: no payload
        return True
    if linktype == LINKTYPE_ETHERNET and incl >= 74 and buf[o + 12] == 0x86 and buf[o + 13] == 0xDD and buf[o + 14] >> 4 == 6:
        if nshards > 1 and (hash(buf[o + 22 : o + 38]) ^ hash(buf[o + 38 : o + 54])) % nshards != mine:
            return None
        if watched and buf[o + 20] == 6 and not buf[o + 67] & 7:
            if ((buf[o + 56] << 8) | buf[o + 57]) not in watched and ((buf[o + 54] << 8) | buf[o + 55]) in watched:
                return _FILTERED
            if ((buf[o + 18] << 8) | buf[o + 19]) == (buf[o + 66] >> 4) << 2:
                return _FILTERED  # a bare ACK
        return True
    if nshards > 1 and shard_key(buf[o:end], linktype) % nshards != mine:
        return None
    return True


def _scan(buf: bytes, pos: int, ether: bool, little: bool, filt: bool, watched: frozenset[int], nshards: int, mine: int,
          linktype: int, kept: list[int]) -> tuple[int, int, int, int]:
    """Walk the whole pcap records of ``buf`` from ``pos``: the offset of each one kept goes to ``kept``.

    Returns the offset after the last whole record, the records walked, those the prefilter
    dropped, and the length a corrupt record claims (-1: none; the walk stops at it).
    """
    n = len(buf)
    count = 0
    skipped = 0
    sharded = nshards > 1
    while pos + 16 <= n:
        # the top byte apart: typed (pcap.pxd), its shift is 64-bit, never a C int overflowing
        if little:
            top = buf[pos + 11]
            incl = buf[pos + 8] | (buf[pos + 9] << 8) | (buf[pos + 10] << 16) | (top << 24)
        else:
            top = buf[pos + 8]
            incl = (top << 24) | (buf[pos + 9] << 16) | (buf[pos + 10] << 8) | buf[pos + 11]
        if incl > MAX_RECORD:
            return pos, count, skipped, incl
        end = pos + 16 + incl
        if end > n:
            break
        count += 1
        rec = pos
        o = pos + 16
        pos = end
        # The two common frames inline (Ethernet + IPv4 without options, Ethernet + IPv6,
        # both carrying TCP): _select()'s test inlined, a call per record costs 7% of a replay.
        if ether and incl >= 54 and buf[o + 12] == 8 and buf[o + 13] == 0 and buf[o + 14] == 0x45:
            if sharded and (hash(buf[o + 26 : o + 30]) ^ hash(buf[o + 30 : o + 34])) % nshards != mine:
                continue
            if filt and buf[o + 23] == 6 and not buf[o + 47] & 7:  # no SYN, FIN, RST
                if ((buf[o + 36] << 8) | buf[o + 37]) not in watched and ((buf[o + 34] << 8) | buf[o + 35]) in watched:
                    skipped += 1
                    continue
                if ((buf[o + 16] << 8) | buf[o + 17]) == 20 + ((buf[o + 46] >> 4) << 2):
                    skipped += 1  # a bare ACK: no payload
                    continue
        elif ether and incl >= 74 and buf[o + 12] == 0x86 and buf[o + 13] == 0xDD and buf[o + 14] >> 4 == 6:
            if sharded and (hash(buf[o + 22 : o + 38]) ^ hash(buf[o + 38 : o + 54])) % nshards != mine:
                continue
            if filt and buf[o + 20] == 6 and not buf[o + 67] & 7:
                if ((buf[o + 56] << 8) | buf[o + 57]) not in watched and ((buf[o + 54] << 8) | buf[o + 55]) in watched:
                    skipped += 1
                    continue
                if ((buf[o + 18] << 8) | buf[o + 19]) == (buf[o + 66] >> 4) << 2:
                    skipped += 1  # a bare ACK
                    continue
        elif sharded and shard_key(buf[o:end], linktype) % nshards != mine:
            continue
        kept.append(rec)
    return pos, count, skipped, -1


def shard_key(frame: bytes, linktype: int) -> int:
    """Which worker a frame belongs to, as a number to take modulo the worker count.

    Built from the outermost IP header's source and destination addresses only, either way round
    (the server's answers, its SYN+ACK or RST, go to the worker that has the client's packets:
    connection records, issue 32): every packet of a TCP flow, a QUIC connection, a DNS exchange
    and every fragment of one datagram share them, and so do all flows inside one tunnel, which
    the decoder opens. Frames with no IP header we
    can find go to shard 0. ``hash()`` of bytes is salted per interpreter: the workers of one
    replay are forked from one process and agree; the value means nothing across processes.
    """
    lt = LINK_TYPES.get(linktype)
    if lt is None or lt.start is Start.NFLOG:
        return 0
    off = lt.offset
    if lt.start is not Start.IP:
        if lt.start is Start.ETHERNET:
            et_at, off = off + 12, off + ETHERNET_HEADER
        else:
            et_at = lt.ethertype_at
        et = (frame[et_at] << 8) | frame[et_at + 1] if len(frame) >= et_at + 2 else 0
        while et in ETH_VLAN and len(frame) >= off + VLAN_TAG:
            et, off = (frame[off + 2] << 8) | frame[off + 3], off + VLAN_TAG
        if et != ETH_IPV4 and et != ETH_IPV6:
            return 0
    if len(frame) <= off:
        return 0
    ver = frame[off] >> 4
    if ver == 4 and len(frame) >= off + 20:
        return hash(frame[off + 12 : off + 16]) ^ hash(frame[off + 16 : off + 20])
    if ver == 6 and len(frame) >= off + 40:
        return hash(frame[off + 8 : off + 24]) ^ hash(frame[off + 24 : off + 40])
    return 0


def read_capture(path: str | Path) -> Iterator[tuple[float, int, bytes]]:
    with CaptureReader(path) as r:
        yield from r
