"""Build real protocol bytes and captures: ClientHellos from Python's ``ssl``, QUIC Initials
from ``aioquic``, DNS from ``dnspython``, packets with ``struct`` (fast enough for a million)."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

from beiand.enforce.packets import checksum as _csum


def client_hello(sni: str | None, alpn: Sequence[str] = (), tls13: bool = True, big: bool = False) -> bytes:
    """The TLS records of a real ClientHello from OpenSSL (Python ``ssl``).

    ``big`` offers many ALPN names so the ClientHello needs several TCP segments, as a
    browser's post-quantum key share does.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if not tls13:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    protos = list(alpn)
    if big:
        protos += [f"x-pad-{i:03d}-" + "p" * 200 for i in range(12)]
    if protos:
        ctx.set_alpn_protocols(protos)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def quic_initial_datagrams(sni: str, version: int = 1, alpn: Sequence[str] = ("h3",), big: bool = False) -> list[bytes]:
    """The client's first datagrams of a real QUIC connection (aioquic), v1 or v2."""
    import time

    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    cfg = QuicConfiguration(is_client=True, server_name=sni, alpn_protocols=list(alpn))
    cfg.supported_versions = [version]
    cfg.original_version = version
    if big:
        cfg.alpn_protocols = list(alpn) + [f"x-pad-{i:03d}-" + "p" * 200 for i in range(12)]
    conn = QuicConnection(configuration=cfg)
    conn.connect(("198.51.100.10", 443), now=time.time())
    return [d for d, _ in conn.datagrams_to_send(now=time.time())]


def dns_response(qname: str, addrs: Iterable[str], cnames: Sequence[str] = (), ttl: int = 300, qid: int = 0x1234) -> bytes:
    import dns.message
    import dns.rrset

    def absolute(n: str) -> str:
        return n if n.endswith(".") else n + "."

    q = dns.message.make_query(absolute(qname), "A")
    q.id = qid
    r = dns.message.make_response(q)
    owner = absolute(qname)
    for c in cnames:
        r.answer.append(dns.rrset.from_text(owner, ttl, "IN", "CNAME", absolute(c)))
        owner = absolute(c)
    for a in addrs:
        rtype = "AAAA" if ":" in a else "A"
        r.answer.append(dns.rrset.from_text(owner, ttl, "IN", rtype, a))
    return bytes(r.to_wire())


MAC_A = b"\x02\x00\x00\x00\x00\x01"
MAC_B = b"\x02\x00\x00\x00\x00\x02"


def ip_header(src: str, dst: str, proto: int, payload_len: int, ident: int = 1, frag: int = 0x4000) -> bytes:
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if a.version == 4:
        h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, ident & 0xFFFF, frag, 64, proto, 0, a.packed, b.packed)
        return h[:10] + struct.pack("!H", _csum(h)) + h[12:]
    return struct.pack("!IHBB16s16s", 0x60000000, payload_len, proto, 64, a.packed, b.packed)


def ether(payload: bytes, v6: bool = False, vlan: Sequence[int] = ()) -> bytes:
    out = MAC_B + MAC_A
    for i, v in enumerate(vlan):
        out += struct.pack("!HH", 0x88A8 if i == 0 and len(vlan) > 1 else 0x8100, v)
    return out + struct.pack("!H", 0x86DD if v6 else 0x0800) + payload


def tcp(src: str, dst: str, sport: int, dport: int, seq: int, ack: int = 0, flags: int = 0x18, payload: bytes = b"",
        vlan: Sequence[int] = ()) -> bytes:
    th = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack, 5 << 4, flags, 65535, 0, 0)
    v6 = ":" in src
    return ether(ip_header(src, dst, 6, len(th) + len(payload)) + th + payload, v6, vlan)


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes, vlan: Sequence[int] = ()) -> bytes:
    uh = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    return ether(ip_header(src, dst, 17, 8 + len(payload)) + uh + payload, ":" in src, vlan)


def tcp_session(client: str, server: str, cport: int, sport: int, data: bytes, isn: int = 1000,
                segment: int = 1400, order: Sequence[int] | None = None, handshake: bool = True) -> list[bytes]:
    """A SYN (optionally) and the client's first bytes in segments, in the given order."""
    pkts = []
    if handshake:
        pkts.append(tcp(client, server, cport, sport, isn, 0, 0x02))
        pkts.append(tcp(server, client, sport, cport, 5000, isn + 1, 0x12))
    segs = [(isn + 1 + i, data[i : i + segment]) for i in range(0, len(data), segment)]
    for k in order or range(len(segs)):
        seq, chunk = segs[k]
        pkts.append(tcp(client, server, cport, sport, seq, 5001, 0x18, chunk))
    return pkts


class PcapWriter:
    """Write a classic pcap (microseconds, little endian) with the given link type."""

    def __init__(self, path: str | Path, linktype: int = 1, nanosecond: bool = False, big_endian: bool = False) -> None:
        self.f = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.o = ">" if big_endian else "<"
        self.ns = nanosecond
        magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
        self.f.write(struct.pack(self.o + "IHHiIII", magic, 2, 4, 0, 0, 262144, linktype))
        self._rec = struct.Struct(self.o + "IIII")

    def write(self, ts: float, frame: bytes) -> None:
        sec = int(ts)
        frac = round((ts - sec) * (1e9 if self.ns else 1e6))
        self.f.write(self._rec.pack(sec, frac, len(frame), len(frame)))
        self.f.write(frame)

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_pcap(path: str | Path, frames: Iterable[bytes], t0: float = 1_700_000_000.0, step: float = 0.001,
               linktype: int = 1) -> None:
    with PcapWriter(path, linktype) as w:
        for i, f in enumerate(frames):
            w.write(t0 + i * step, f)


def write_pcapng(path: str | Path, packets: Iterable[tuple[int, float, bytes]], linktypes: Sequence[int],
                 tsresol: int | None = None, big_endian: bool = False) -> None:
    """pcapng with one IDB per link type; ``packets`` are (interface, ts, frame)."""
    o = ">" if big_endian else "<"

    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        ln = len(body) + 12
        return struct.pack(o + "II", btype, ln) + body + struct.pack(o + "I", ln)

    unit = 1e-6 if tsresol is None else 10.0 ** -tsresol
    with open(path, "wb") as f:
        f.write(block(0x0A0D0D0A, struct.pack(o + "IHHq", 0x1A2B3C4D, 1, 0, -1)))
        for lt in linktypes:
            opts = b""
            if tsresol is not None:
                opts = struct.pack(o + "HH", 9, 1) + bytes([tsresol]) + b"\0\0\0" + struct.pack(o + "HH", 0, 0)
            f.write(block(1, struct.pack(o + "HHI", lt, 0, 262144) + opts))
        for iface, ts, frame in packets:
            t = round(ts / unit)
            f.write(block(6, struct.pack(o + "IIIII", iface, t >> 32, t & 0xFFFFFFFF, len(frame), len(frame)) + frame))


def inet(addr: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in addr else socket.AF_INET, addr)


def quic_initial(sni: str, version: int, salt: bytes, v2_labels: bool = False, dcid: bytes = b"\x83\x94\xc8\xf0\x3e\x51\x57\x08",
                 alpn: Sequence[str] = ("h3",)) -> bytes:
    """One client Initial datagram of any QUIC version, protected with ``salt`` (RFC 9001 section 5):
    for the drafts and Google's T05x, which aioquic no longer speaks. The ClientHello is OpenSSL's."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from beiand.net.quic import hkdf_expand_label, hkdf_extract

    records = client_hello(sni, alpn)
    hs = b""
    while records:  # the handshake messages without their TLS record headers
        ln = int.from_bytes(records[3:5], "big")
        hs += records[5 : 5 + ln]
        records = records[5 + ln :]
    crypto = b"\x06\x00" + (0x4000 | len(hs)).to_bytes(2, "big") + hs
    payload = crypto + b"\x00" * max(0, 1162 - len(crypto))
    secret = hkdf_extract(salt, dcid)
    client = hkdf_expand_label(secret, b"client in", 32)
    p = "quicv2 " if v2_labels else "quic "
    key = hkdf_expand_label(client, (p + "key").encode(), 16)
    iv = hkdf_expand_label(client, (p + "iv").encode(), 12)
    hp = hkdf_expand_label(client, (p + "hp").encode(), 16)
    pn = 0
    b0 = 0xC0 | ((1 if v2_labels else 0) << 4) | 0x01  # Initial, 2-byte packet number
    length = 2 + len(payload) + 16
    header = bytes([b0]) + version.to_bytes(4, "big") + bytes([len(dcid)]) + dcid + b"\x00" + b"\x00" \
        + (0x4000 | length).to_bytes(2, "big") + pn.to_bytes(2, "big")
    nonce = (int.from_bytes(iv, "big") ^ pn).to_bytes(12, "big")
    ct = AESGCM(key).encrypt(nonce, payload, header)
    pn_off = len(header) - 2
    sample = ct[2:18]  # the sample starts 4 bytes after the packet number's start
    enc = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()
    mask = enc.update(sample) + enc.finalize()
    prot = bytearray(header)
    prot[0] ^= mask[0] & 0x0F
    for i in range(2):
        prot[pn_off + i] ^= mask[1 + i]
    return bytes(prot) + ct


def _varint(v: int) -> bytes:
    """RFC 9000 section 16."""
    if v < 0x40:
        return bytes([v])
    if v < 0x4000:
        return (0x4000 | v).to_bytes(2, "big")
    return (0x80000000 | v).to_bytes(4, "big")


def quic_initial_packet(crypto: Sequence[tuple[int, bytes]], dcid: bytes, pn: int = 0, version: int = 1,
                        pad_to: int = 1200, scid: bytes = b"\x01\x02\x03\x04") -> bytes:
    """One client Initial datagram (QUIC v1, RFC 9001 section 5) whose payload is the CRYPTO frames
    given, ``(offset, bytes)`` each, in that order, padded to ``pad_to`` bytes as a client must
    (RFC 9000 section 14.1): a ClientHello split over Initial packets any way, as Chrome does."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from beiand.net.quic import SALT_V1, hkdf_expand_label, hkdf_extract

    payload = b"".join(b"\x06" + _varint(off) + _varint(len(data)) + data for off, data in crypto)
    secret = hkdf_extract(SALT_V1, dcid)
    client = hkdf_expand_label(secret, b"client in", 32)
    key = hkdf_expand_label(client, b"quic key", 16)
    iv = hkdf_expand_label(client, b"quic iv", 12)
    hp = hkdf_expand_label(client, b"quic hp", 16)
    head = bytes([0xC1]) + version.to_bytes(4, "big") + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid + b"\x00"
    payload += b"\x00" * max(0, pad_to - len(head) - 2 - 2 - len(payload) - 16)  # PADDING frames
    length = 2 + len(payload) + 16
    header = head + (0x4000 | length).to_bytes(2, "big") + (pn & 0xFFFF).to_bytes(2, "big")
    nonce = (int.from_bytes(iv, "big") ^ pn).to_bytes(12, "big")
    ct = AESGCM(key).encrypt(nonce, payload, header)
    pn_off = len(header) - 2
    enc = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()
    mask = enc.update(ct[2:18]) + enc.finalize()  # the sample starts 4 bytes after the packet number's start
    prot = bytearray(header)
    prot[0] ^= mask[0] & 0x0F
    for i in range(2):
        prot[pn_off + i] ^= mask[1 + i]
    return bytes(prot) + ct


def gquic_chlo(sni: str, version: bytes = b"Q043", cid: bytes = b"\x11" * 8) -> bytes:
    """A Google QUIC client's first packet (public header, plaintext CHLO in a STREAM frame of stream 1):
    the QUIC crypto handshake message layout of Chromium's ``crypto_framer.cc``."""
    tags = sorted([(b"SNI\x00", sni.encode()), (b"VER\x00", version), (b"PAD\x00", b"-" * 40), (b"UAID", b"Chrome/49")],
                  key=lambda tv: int.from_bytes(tv[0], "little"))
    index = b""
    values = b""
    for tag, value in tags:
        values += value
        index += tag + len(values).to_bytes(4, "little")
    msg = b"CHLO" + len(tags).to_bytes(2, "little") + b"\x00\x00" + index + values
    if version >= b"Q046":  # IETF-style long header with the gQUIC version (Q046)
        head = b"\xc3" + version + b"\x50" + cid + (1).to_bytes(4, "big")
    else:  # public flags: version, 8-byte connection ID, 1-byte packet number
        head = b"\x09" + cid + version + b"\x01"
    frame = b"\xa0\x01" + len(msg).to_bytes(2, "big") + msg  # STREAM, stream 1, with data length
    return head + b"\x00" * 12 + frame + b"\x00" * max(0, 1350 - len(head) - 12 - len(frame))
