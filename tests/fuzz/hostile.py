"""Hostile traffic generators (issue 17): what any client of a hosted site can send a gateway.

Each returns Ethernet frames. Used by the attack tests here and by ``bench/bench_attack.py``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

from beiand.enforce.packets import checksum
from beiand.lab import traffic as t
from beiand.net.quic import V1, InitialKeys

_ETH4 = t.MAC_B + t.MAC_A + b"\x08\x00"


def _ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, ident: int = 1, frag: int = 0x4000) -> bytes:
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident & 0xFFFF, frag, 64, proto, 0, src, dst)
    return _ETH4 + h[:10] + struct.pack("!H", checksum(h)) + h[12:] + payload


def tcp4(src: bytes, dst: bytes, sport: int, dport: int, seq: int, flags: int = 0x18, payload: bytes = b"") -> bytes:
    th = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, 0, 5 << 4, flags, 65535, 0, 0)
    return _ipv4(src, dst, 6, th + payload)


def client(i: int) -> bytes:
    return bytes([10, (i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF])


SERVER = bytes([198, 51, 100, 10])


def half_open(flows: int, segments: int, size: int = 1400, first: int = 0, step: int = 1) -> Iterator[bytes]:
    """Issue 17 item 1: a SYN, then segments at offsets 1, 1 + step, ..., never offset 0."""
    for f in range(first, first + flows):
        c, isn = client(f), 1000
        yield tcp4(c, SERVER, 20000 + f % 40000, 443, isn, 0x02)
        body = b"A" * size
        for k in range(1, segments + 1):
            yield tcp4(c, SERVER, 20000 + f % 40000, 443, isn + 1 + 1 + (k - 1) * step, 0x18, body)


def reverse_bytes(n: int = 16383, flow: int = 0) -> Iterator[bytes]:
    """Issue 17 item 2: n one-byte segments, highest offset first (a TLS record that never ends)."""
    c, isn = client(flow), 5000
    data = b"\x16\x03\x01" + struct.pack("!H", 0x3FFF) + os.urandom(n)
    data = data[:n]
    yield tcp4(c, SERVER, 30000, 443, isn, 0x02)
    for k in range(n - 1, -1, -1):
        yield tcp4(c, SERVER, 30000, 443, isn + 1 + k, 0x18, data[k : k + 1])


def reverse_fragments(n: int = 8191, ident: int = 7, flow: int = 0) -> Iterator[bytes]:
    """Issue 17 item 2: a UDP datagram (from port 53) in n eight-byte IPv4 fragments, the last one
    first (the length is known from then on), then the others in order."""
    payload = struct.pack("!HHHH", 53, 40000, 8 * n, 0) + b"\0" * (8 * n - 8)
    src, dst = SERVER, client(flow)
    for k in [n - 1, *range(n - 1)]:
        more = 0x2000 if k < n - 1 else 0
        yield _ipv4(src, dst, 17, payload[8 * k : 8 * k + 8], ident, more | k)


def fragment_holes(datagrams: int, per: int = 60, size: int = 1000, first: int = 0) -> Iterator[bytes]:
    """Fragments of many datagrams that never complete (the first is never sent)."""
    for d in range(first, first + datagrams):
        for k in range(1, per + 1):
            yield _ipv4(SERVER, client(d), 17, b"B" * size, d, 0x2000 | (k * size // 8))


def _varint(v: int) -> bytes:
    if v < 0x40:
        return bytes([v])
    if v < 0x4000:
        return struct.pack("!H", 0x4000 | v)
    return struct.pack("!I", 0x80000000 | v)


def quic_initial(dcid: bytes, frames: bytes, pn: int = 0, keys: InitialKeys | None = None) -> bytes:
    """One QUIC v1 client Initial carrying ``frames``, protected as RFC 9001 section 5 says."""
    keys = keys or InitialKeys(dcid, V1)
    frames += b"\0" * max(0, 1100 - len(frames))  # PADDING to the usual datagram size
    pn_bytes = struct.pack("!I", pn)
    length = len(pn_bytes) + len(frames) + 16
    head = bytes([0xC3]) + struct.pack("!I", V1) + bytes([len(dcid)]) + dcid + b"\x00" + b"\x00" + \
        struct.pack("!H", 0x4000 | length)
    pn_off = len(head)
    header = head + pn_bytes
    nonce = (int.from_bytes(keys.iv, "big") ^ pn).to_bytes(12, "big")
    sealed = keys.aead.encrypt(nonce, frames, header)
    packet = bytearray(header + sealed)
    enc = keys.hp.encryptor()
    mask = enc.update(bytes(packet[pn_off + 4 : pn_off + 20])) + enc.finalize()
    packet[0] ^= mask[0] & 0x0F
    for i in range(4):
        packet[pn_off + i] ^= mask[1 + i]
    return bytes(packet)


def quic_scatter(flows: int, datagrams: int = 8, first: int = 0) -> Iterator[bytes]:
    """Initials whose CRYPTO frames hold one byte every other offset: holes, never a ClientHello."""
    for f in range(first, first + flows):
        dcid = struct.pack("!Q", 0x5C00000000000000 + f)
        c = client(f)
        for d in range(datagrams):
            frames = b"".join(b"\x06" + _varint(2 + 2 * (d * 300 + k)) + b"\x01" + b"x" for k in range(300))
            pkt = quic_initial(dcid, frames, d)
            uh = struct.pack("!HHHH", 50000 + f % 10000, 443, 8 + len(pkt), 0)
            yield _ipv4(c, SERVER, 17, uh + pkt)


def quic_holes(flows: int, per: int = 30, size: int = 1000, first: int = 0) -> Iterator[bytes]:
    """Initials whose CRYPTO frames leave a hole before each (offset 0 never sent): each
    connection holds per x size bytes of CRYPTO stream that never becomes a ClientHello."""
    for f in range(first, first + flows):
        dcid = struct.pack("!Q", 0x5D00000000000000 + f)
        keys = InitialKeys(dcid, V1)
        c = client(f)
        for d in range(per):
            frame = b"\x06" + _varint(size + 2 * size * d) + _varint(size) + b"y" * size
            pkt = quic_initial(dcid, frame, d, keys)
            uh = struct.pack("!HHHH", 50000 + f % 10000, 443, 8 + len(pkt), 0)
            yield _ipv4(c, SERVER, 17, uh + pkt)
