"""Frames inside encapsulations, built with ``struct`` (fast enough for hypothesis): every header
the decoder walks (``beiand/net/link.py``), nested as deep as asked.

A frame is built inside out: an IP packet (:func:`beiand.lab.traffic.ip_header` + transport)
is wrapped step by step; each step takes an IP packet or an Ethernet frame and gives one or the
other. :func:`wrap` applies a list of step names and returns an Ethernet frame.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

from beiand.lab import traffic as t

OUTER4 = ("10.0.0.1", "10.0.0.2")
OUTER6 = ("2001:db8:ffff::1", "2001:db8:ffff::2")
MACS = t.MAC_B + t.MAC_A

Layer = tuple[str, bytes]  # ("ip" | "eth", bytes)


def _ethertype_of(ip: bytes) -> int:
    return 0x86DD if ip and ip[0] >> 4 == 6 else 0x0800


def to_eth(layer: Layer) -> bytes:
    kind, b = layer
    return b if kind == "eth" else MACS + struct.pack("!H", _ethertype_of(b)) + b


def _outer_udp(dport: int, payload: bytes, v6: bool) -> bytes:
    src, dst = OUTER6 if v6 else OUTER4
    uh = struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0)
    return t.ip_header(src, dst, 17, 8 + len(payload)) + uh + payload


def _outer_ip(proto: int, payload: bytes, v6: bool) -> bytes:
    src, dst = OUTER6 if v6 else OUTER4
    return t.ip_header(src, dst, proto, len(payload)) + payload


def _ip_of(layer: Layer, v6: bool) -> bytes:
    """An IP packet carrying the layer (Ethernet rides in GRE as transparent bridging)."""
    kind, b = layer
    if kind == "ip":
        return b
    return _outer_ip(47, struct.pack("!HH", 0, 0x6558) + b, v6)


def vlan(layer: Layer, v6: bool) -> Layer:
    f = to_eth(layer)
    return "eth", f[:12] + struct.pack("!HH", 0x8100, 10) + f[12:]


def qinq(layer: Layer, v6: bool) -> Layer:
    f = to_eth(layer)
    return "eth", f[:12] + struct.pack("!HHHH", 0x88A8, 100, 0x8100, 10) + f[12:]


def mpls(layer: Layer, v6: bool) -> Layer:
    ip = _ip_of(layer, v6)
    return "eth", MACS + struct.pack("!HII", 0x8847, (16 << 12) | 64, (17 << 12) | 0x100 | 64) + ip


def mpls_pw(layer: Layer, v6: bool) -> Layer:
    return "eth", MACS + struct.pack("!HII", 0x8847, (18 << 12) | 0x100 | 64, 0) + to_eth(layer)


def pppoe(layer: Layer, v6: bool) -> Layer:
    ip = _ip_of(layer, v6)
    proto = 0x0057 if ip[0] >> 4 == 6 else 0x0021
    return "eth", MACS + struct.pack("!HBBHHH", 0x8864, 0x11, 0, 1, len(ip) + 2, proto) + ip


def pppoe_compressed(layer: Layer, v6: bool) -> Layer:
    ip = _ip_of(layer, v6)
    proto = 0x57 if ip[0] >> 4 == 6 else 0x21  # RFC 1661 section 6.5
    return "eth", MACS + struct.pack("!HBBHHB", 0x8864, 0x11, 0, 1, len(ip) + 1, proto) + ip


def vxlan(layer: Layer, v6: bool) -> Layer:
    return "ip", _outer_udp(4789, struct.pack("!II", 0x08000000, 42 << 8) + to_eth(layer), v6)


def geneve(layer: Layer, v6: bool) -> Layer:
    kind, b = layer
    opts = struct.pack("!HBB", 0x0101, 0x01, 1) + b"\x00" * 4  # one 8-byte option (2 words)
    proto = 0x6558 if kind == "eth" else _ethertype_of(b)
    return "ip", _outer_udp(6081, struct.pack("!BBHI", len(opts) // 4, 0, proto, 7 << 8) + opts + b, v6)


def gre(layer: Layer, v6: bool) -> Layer:
    ip = _ip_of(layer, v6)
    return "ip", _outer_ip(47, struct.pack("!HH", 0, _ethertype_of(ip)) + ip, v6)


def gre_key_seq(layer: Layer, v6: bool) -> Layer:
    ip = _ip_of(layer, v6)
    return "ip", _outer_ip(47, struct.pack("!HHII", 0x3000, _ethertype_of(ip), 7, 1) + ip, v6)


def gre_checksum(layer: Layer, v6: bool) -> Layer:
    ip = _ip_of(layer, v6)
    return "ip", _outer_ip(47, struct.pack("!HHI", 0x8000, _ethertype_of(ip), 0) + ip, v6)


def gre_teb(layer: Layer, v6: bool) -> Layer:
    return "ip", _outer_ip(47, struct.pack("!HH", 0, 0x6558) + to_eth(layer), v6)


def erspan(layer: Layer, v6: bool) -> Layer:
    hdr = struct.pack("!HHI", 0x1000, 0x0001, 0)
    return "ip", _outer_ip(47, struct.pack("!HHI", 0x1000, 0x88BE, 1) + hdr + to_eth(layer), v6)


def gtpu(layer: Layer, v6: bool) -> Layer:
    ip = _ip_of(layer, v6)
    return "ip", _outer_udp(2152, struct.pack("!BBHI", 0x30, 0xFF, len(ip), 9) + ip, v6)


def gtpu_ext(layer: Layer, v6: bool) -> Layer:
    ip = _ip_of(layer, v6)
    ext = struct.pack("!HBB", 0, 0, 0x85) + struct.pack("!BBBB", 1, 0x00, 0x09, 0)  # PDU session container
    return "ip", _outer_udp(2152, struct.pack("!BBHI", 0x34, 0xFF, len(ip) + len(ext), 9) + ext + ip, v6)


def ipip(layer: Layer, v6: bool) -> Layer:
    ip = _ip_of(layer, v6)
    return "ip", _outer_ip(41 if ip[0] >> 4 == 6 else 4, ip, v6)


STEPS: dict[str, Callable[[Layer, bool], Layer]] = {
    "vlan": vlan, "qinq": qinq, "mpls": mpls, "mpls-pw": mpls_pw, "pppoe": pppoe, "pppoe-compressed": pppoe_compressed,
    "vxlan": vxlan, "geneve": geneve, "gre": gre, "gre-key-seq": gre_key_seq, "gre-checksum": gre_checksum,
    "gre-teb": gre_teb, "erspan": erspan, "gtpu": gtpu, "gtpu-ext": gtpu_ext, "ipip": ipip,
}


def wrap(ip: bytes, steps: Sequence[str], v6_outer: Sequence[bool] = ()) -> bytes:
    """The IP packet ``ip`` inside ``steps`` (innermost first), as an Ethernet frame."""
    layer: Layer = ("ip", ip)
    for i, name in enumerate(steps):
        layer = STEPS[name](layer, v6_outer[i] if i < len(v6_outer) else False)
    return to_eth(layer)


def strip_ether(frame: bytes) -> bytes:
    """The IP packet of a plain Ethernet frame from :mod:`beiand.lab.traffic`."""
    return frame[14:]
