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
