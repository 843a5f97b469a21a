"""The decoder on whole frames: every link type, tunnel and reassembly case it claims."""

from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import GRE, IP, TCP, UDP, CookedLinux, Ether, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop, Raw, fragment
from scapy.contrib.geneve import GENEVE
from scapy.contrib.gtp import GTP_U_Header
from scapy.contrib.mpls import MPLS
from scapy.layers.inet6 import IPv6ExtHdrFragment, fragment6
from scapy.layers.ppp import PPP, PPPoE
from scapy.layers.vxlan import VXLAN

from beiand.lab import traffic as t
from beiand.model import Kind, Transport
from beiand.net.decoder import LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_RAW, Decoder, DecoderConfig

C4, S4, C6, S6 = "192.0.2.10", "198.51.100.10", "2001:db8:1::10", "2001:db8:100::10"
HELLO = t.client_hello("tls.example.com", ["h2"])


def run(frames, linktype=1, config=None):
    d = Decoder(config)
    out = []
    for i, f in enumerate(frames):
        out += d.feed(1000.0 + i * 0.001, bytes(f), linktype)
    out += d.flush()
    return out, d


def inner_tcp(payload=HELLO, v6=False, dport=443):
    ip = IPv6(src=C6, dst=S6) if v6 else IP(src=C4, dst=S4)
    return ip / TCP(sport=40000, dport=dport, flags="PA", seq=100) / Raw(payload)


def one(out):
    assert len(out) == 1, out
    return out[0]


def test_ethernet_ipv4_and_ipv6():
    for v6, c, s in ((False, C4, S4), (True, C6, S6)):
        o = one(run([Ether() / inner_tcp(v6=v6)])[0])
        assert (o.kind, o.name, o.client_ip, o.client_port, o.server_ip, o.server_port, o.transport) == (
            Kind.TLS_SNI, "tls.example.com", c, 40000, s, 443, Transport.TCP)
        assert "alpn=h2" in o.detail and "tls1.3" in o.detail


@pytest.mark.parametrize(
    "frame",
    [
        Ether(type=0x8100) / b"\x00\x0a\x08\x00" / inner_tcp(),
        Ether(type=0x88A8) / b"\x00\x64\x81\x00" / b"\x00\x0a\x08\x00" / inner_tcp(),  # QinQ
        Ether() / MPLS(label=16, s=0) / MPLS(label=17, s=1) / inner_tcp(),
        Ether() / PPPoE(sessionid=1) / PPP(proto=0x0021) / inner_tcp(),
        Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1234, dport=4789) / VXLAN(vni=42) / Ether() / inner_tcp(),
        Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1234, dport=6081) / GENEVE(proto=0x6558) / Ether() / inner_tcp(),
        Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / GRE() / inner_tcp(),
        Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / GRE(key_present=1, key=7) / inner_tcp(),
        Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / GRE(proto=0x6558) / Ether() / inner_tcp(),
        Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=2152, dport=2152) / GTP_U_Header(teid=9) / inner_tcp(),
        Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / inner_tcp(),  # IP-in-IP
        Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / inner_tcp(v6=True),  # 6in4
        Ether() / IPv6(src=C6, dst=S6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / TCP(sport=40000, dport=443, flags="PA") / Raw(HELLO),
        Ether() / IP(src=C4, dst=S4, options=b"\x01\x01\x01\x00") / TCP(sport=40000, dport=443, flags="PA") / Raw(HELLO),
    ],
    ids=["vlan", "qinq", "mpls", "pppoe", "vxlan", "geneve", "gre", "gre-key", "gre-teb", "gtpu", "ipip", "6in4", "ipv6-ext", "ipv4-options"],
)
def test_encapsulations(frame):
    o = one(run([frame])[0])
    assert o.name == "tls.example.com" and o.server_port == 443 and o.client_port == 40000


@pytest.mark.parametrize(("linktype", "head"), [
    (LINKTYPE_RAW, b""),
    (LINKTYPE_LINUX_SLL, bytes(CookedLinux(proto=0x0800))),
    (LINKTYPE_LINUX_SLL2, b"\x08\x00\x00\x00" + b"\x00\x00\x00\x02" + b"\x00\x01\x00\x06" + b"\x02" * 8),
])
def test_link_types(linktype, head):
    o = one(run([head + bytes(inner_tcp())], linktype)[0])
    assert o.name == "tls.example.com"


def test_tls_on_any_watched_port_and_http_on_443():
    out, _ = run([Ether() / inner_tcp(dport=80), Ether() / IP(src=C4, dst=S4) / TCP(sport=40001, dport=443, flags="PA") /
                  Raw(b"GET / HTTP/1.1\r\nHost: plain.example.com\r\n\r\n")])
    assert [(o.kind, o.name) for o in out] == [(Kind.TLS_SNI, "tls.example.com"), (Kind.HTTP_HOST, "plain.example.com")]


def test_client_hello_split_out_of_order_with_retransmission():
    big = t.client_hello("big.example.com", ["h2"], big=True)
    pk = t.tcp_session(C4, S4, 40000, 443, big, segment=1000, order=[2, 0, 0, 1, 2])
    o = one(run(pk)[0])
    assert (o.name, o.client_ip, o.server_ip) == ("big.example.com", C4, S4)


def test_split_without_syn_in_order():
    big = t.client_hello("nosyn.example.com", big=True)
    pk = t.tcp_session(C4, S4, 40000, 443, big, segment=700, handshake=False)
    assert one(run(pk)[0]).name == "nosyn.example.com"


def test_http_split_and_pipelined():
    data = b"GET /a HTTP/1.1\r\nHost: one.example\r\n\r\nGET /b HTTP/1.1\r\nHost: two.example:8080\r\n\r\n"
    out, _ = run(t.tcp_session(C4, S4, 40000, 8080, data, segment=10))
    # the segment that completes the first head begins the second: read on to its end (issue 32)
    assert [o.name for o in out] == ["one.example", "two.example"]
    out, _ = run(t.tcp_session(C4, S4, 40000, 8080, data, segment=len(data)))
    assert [o.name for o in out] == ["one.example", "two.example"]


def test_ip_only_once_per_flow_and_midstream_silence():
    junk = b"\x00\x01binary protocol" * 10
    out, d = run(t.tcp_session(C4, S4, 40000, 443, junk, segment=20))
    o = one(out)
    assert o.kind is Kind.IP_ONLY and o.name == "" and o.detail == "unknown-protocol" and o.server_ip == S4
    out, d = run(t.tcp_session(C4, S4, 40000, 443, junk, segment=20, handshake=False))
    assert out == [] and d.stats["flow:midstream"] == 1
    out, _ = run(t.tcp_session(C4, S4, 40000, 443, t.client_hello(None)))
    assert one(out).kind is Kind.IP_ONLY and "no-sni" in one(out).detail


def test_unwatched_and_server_to_client_ignored():
    frames = [t.tcp(S4, C4, 443, 40000, 1, flags=0x18, payload=HELLO), t.tcp(C4, S4, 40000, 22, 1, payload=HELLO)]
    out, d = run(frames, config=DecoderConfig(any_port=False))
    assert out == [] and d.server_to_client == 1 and d.stats["tcp:not-watched"] == 1
    # any port (the default since issue 32): the ClientHello to port 22 is named, the server's answer still skipped
    out, d = run(frames)
    assert one(out).name == "tls.example.com" and one(out).server_port == 22 and d.server_to_client == 1


def test_dns_udp_tcp_and_fragments():
    wire = t.dns_response("www.example.com", ["198.51.100.1"], cnames=["edge.example.net"])
    out, _ = run([t.udp("192.0.2.53", C4, 53, 33333, wire)])
    o = one(out)
    assert (o.kind, o.name, o.answers, o.client_ip, o.client_port, o.server_ip) == (
        Kind.DNS_ANSWER, "www.example.com", ("198.51.100.1",), C4, 33333, "192.0.2.53")
    assert o.detail == "cname=edge.example.net"
    # TCP: two messages in one segment, a third split over two
    w2 = t.dns_response("b.example.com", ["198.51.100.2"])
    w3 = t.dns_response("c.example.com", ["198.51.100.3"])
    stream = b"".join(len(w).to_bytes(2, "big") + w for w in (wire, w2, w3))
    pk = [t.tcp("192.0.2.53", C4, 53, 40000, 7000, flags=0x12)]
    cut = len(stream) - 10
    pk += [t.tcp("192.0.2.53", C4, 53, 40000, 7001, payload=stream[:cut]), t.tcp("192.0.2.53", C4, 53, 40000, 7001 + cut, payload=stream[cut:])]
    out, _ = run(pk)
    assert [(o.name, o.transport) for o in out] == [(n, Transport.TCP) for n in ("www.example.com", "b.example.com", "c.example.com")]
    # a big answer in IPv4 and IPv6 fragments, out of order
    many = t.dns_response("big.example.com", [f"198.51.100.{i}" for i in range(1, 120)])
    frags = fragment(IP(src="192.0.2.53", dst=C4) / UDP(sport=53, dport=5353) / Raw(many), fragsize=400)
    out, d = run([Ether() / f for f in reversed(frags)])
    assert one(out).name == "big.example.com" and len(one(out).answers) == 119 and d.stats["ip:reassembled"] == 1
    f6 = fragment6(IPv6(src="2001:db8::53", dst=C6) / IPv6ExtHdrFragment() / UDP(sport=53, dport=5353) / Raw(many), 600)
    out, _ = run([Ether() / f for f in f6])
    assert one(out).name == "big.example.com"


@pytest.mark.parametrize("version", [1, 0x6B3343CF])
def test_quic(version):
    dgs = t.quic_initial_datagrams("quic.example.com", version, big=True)
    out, _ = run([t.udp(C4, S4, 50000, 443, dg) for dg in dgs] + [t.udp(C4, S4, 50000, 443, dgs[0])])
    o = one(out)
    assert (o.kind, o.name, o.transport, o.client_port, o.server_ip) == (Kind.QUIC_SNI, "quic.example.com", Transport.UDP, 50000, S4)


def test_flow_state_is_bounded():
    cfg = DecoderConfig(max_flows=100, max_done=200)
    d = Decoder(cfg)
    half = t.client_hello("x.example.com", big=True)[:1000]
    for i in range(5000):
        d.feed(1.0 + i * 1e-4, t.tcp(C4, S4, 1024 + i % 60000, 443, 1, payload=half))
        d.feed(1.0 + i * 1e-4, t.tcp(C4, S4, 1024 + i % 60000, 443, 1, flags=0x02))
    assert len(d.flows) <= 100 and len(d.done) + len(d._done_old) <= 200 and d.drops["flow:evicted"] > 0


def test_flows_expire_by_age():
    d = Decoder(DecoderConfig(flow_timeout=5))
    d.feed(0.0, t.tcp(C4, S4, 40000, 443, 1, flags=0x02))
    d.feed(0.1, t.tcp(C4, S4, 40000, 443, 2, payload=HELLO[:100]))
    out = d.feed(10.0, t.tcp(C4, S4, 40001, 443, 1, flags=0x02))
    assert len(d.flows) == 1
    assert [o.detail for o in out] == ["incomplete"] and d.drops["flow:timeout"] == 1


def test_bad_frames_are_counted_never_raised():
    d = Decoder()
    for frame in (b"", b"\x00" * 13, bytes(Ether() / b"\x45"), bytes(Ether() / IP() / TCP())[:-5], bytes(Ether() / (b"\x70" * 40))):
        assert d.feed(0.0, frame) == []
    assert d.feed(0.0, b"\x00", 999) == [] and d.drops["link:unsupported-linktype"] == 1
    assert sum(d.drops.values()) >= 4


# -- issue 15: decoder gaps --------------------------------------------------------------------

def test_pppoe_with_a_compressed_protocol_field():
    # RFC 1661 section 6.5: protocol field compression, one byte (0x21 IPv4, 0x57 IPv6)
    for ip, proto in ((inner_tcp(), b"\x21"), (inner_tcp(v6=True), b"\x57")):
        body = proto + bytes(ip)
        frame = bytes(Ether(type=0x8864)) + b"\x11\x00\x00\x01" + len(body).to_bytes(2, "big") + body
        o = one(run([frame])[0])
        assert o.name == "tls.example.com"


def nflog(packet: bytes, family: int = 2) -> bytes:
    # LINKTYPE_NFLOG: family, version, resource id (big-endian); TLVs in host order (little-endian here)
    def tlv(typ: int, value: bytes) -> bytes:
        raw = (4 + len(value)).to_bytes(2, "little") + typ.to_bytes(2, "little") + value
        return raw + b"\x00" * (-len(raw) % 4)
    return bytes([family, 0]) + (7).to_bytes(2, "big") + tlv(1, b"\x08\x00\x01\x00") + tlv(10, b"beiand\x00") + tlv(9, packet)


def test_nflog_link_type():
    from beiand.net.link import LINKTYPE_NFLOG
    o = one(run([nflog(bytes(inner_tcp()))], LINKTYPE_NFLOG)[0])
    assert o.name == "tls.example.com" and o.server_ip == S4
    o = one(run([nflog(bytes(inner_tcp(v6=True)), 10)], LINKTYPE_NFLOG)[0])
    assert o.server_ip == S6
    out, d = run([nflog(b"")[:-4] + b"\xff\x00\x09\x00"], LINKTYPE_NFLOG)  # a TLV longer than the frame
    assert out == [] and d.drops["link:bad-nflog-tlv"] == 1


def test_detail_is_bounded():
    hello = t.client_hello("long.example.com", ["h2"], big=True)
    o = one(run(t.tcp_session(C4, S4, 40000, 443, hello))[0])
    assert o.name == "long.example.com" and len(o.detail) <= 256


def test_http_malformed_request_line_with_a_host_still_names_the_flow():
    for req in (b"GET /a b c HTTP/1.1\r\nHost: evasive.example.com\r\n\r\n",
                b"GET /\r\nHost: evasive.example.com\r\n\r\n",
                b"GET / HTTP/1.1 \r\nHost: evasive.example.com\r\n\r\n"):
        o = one(run([t.tcp(C4, S4, 40000, 80, 1, payload=req)])[0])
        assert (o.kind, o.name) == (Kind.HTTP_HOST, "evasive.example.com"), req
        assert "malformed-request-line" in o.detail


def test_dns_several_questions_each_valid_name():
    import dns.message
    q = dns.message.make_query("one.example.com.", "A")
    r = dns.message.make_response(q)
    wire = bytearray(r.to_wire())
    # hand-built: 2 questions (one.example.com, two.example.com), answers for both
    import struct
    def name(n):
        return b"".join(bytes([len(p)]) + p.encode() for p in n.split(".")) + b"\x00"
    body = name("one.example.com") + b"\x00\x01\x00\x01" + name("two.example.com") + b"\x00\x01\x00\x01"
    body += name("one.example.com") + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([198, 51, 100, 1])
    body += name("two.example.com") + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([198, 51, 100, 2])
    msg = bytes(wire[:4]) + struct.pack("!HHHH", 2, 2, 0, 0) + body
    out, _ = run([t.udp("192.0.2.53", C4, 53, 3333, msg)])
    assert sorted((o.name, o.answers) for o in out) == [("one.example.com", ("198.51.100.1",)), ("two.example.com", ("198.51.100.2",))]
    # one bad question (a label type 0x80) does not discard the other
    bad = b"\x80abc\x00" + b"\x00\x01\x00\x01"
    body2 = bad + name("two.example.com") + b"\x00\x01\x00\x01" + name("two.example.com") + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([198, 51, 100, 2])
    msg2 = bytes(wire[:4]) + struct.pack("!HHHH", 2, 1, 0, 0) + body2
    out, _ = run([t.udp("192.0.2.53", C4, 53, 3334, msg2)])
    assert [(o.name, o.answers) for o in out] == [("two.example.com", ("198.51.100.2",))]


# RFC 9001 section 5.2 (v1, also drafts 33 and 34), RFC 9369 section 3.3.1 (v2); draft salts from
# draft-ietf-quic-tls-23 section 5.2 (drafts 23-28) and draft-ietf-quic-tls-29 section 5.2 (29-32);
# Google T051 from Wireshark's epan/dissectors/packet-quic.c.
SALT_V1 = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
SALT_D23 = bytes.fromhex("c3eef712c72ebb5a11a7d2432bb46365bef9f502")
SALT_D29 = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")
SALT_T51 = bytes.fromhex("7a4edef4e7ccee5fa4506c19124fc8ccda6e033d")


@pytest.mark.parametrize(("version", "salt", "detail"), [
    *[(0xFF000000 + d, SALT_D23, f"quic=draft-{d}") for d in (27, 28)],
    *[(0xFF000000 + d, SALT_D29, f"quic=draft-{d}") for d in (29, 30, 31, 32)],
    *[(0xFF000000 + d, SALT_V1, f"quic=draft-{d}") for d in (33, 34)],
    (0x54303531, SALT_T51, "quic=T051"),
    (0x1A2A3A4A, SALT_V1, "quic=0x1a2a3a4a"),  # unknown (a grease-like version): the v1 salt, as tshark tries
])
def test_quic_draft_and_unknown_versions(version, salt, detail):
    dg = t.quic_initial("draft.example.com", version, salt)
    o = one(run([t.udp(C4, S4, 50000, 443, dg)])[0])
    assert (o.kind, o.name) == (Kind.QUIC_SNI, "draft.example.com")
    assert detail in o.detail.split()


@pytest.mark.parametrize("version", [b"Q039", b"Q043", b"Q046"])
def test_google_quic_plaintext_chlo(version):
    o = one(run([t.udp(C4, S4, 50000, 443, t.gquic_chlo("gquic.example.com", version))])[0])
    assert (o.kind, o.name, o.server_ip) == (Kind.QUIC_SNI, "gquic.example.com", S4)
    assert f"quic={version.decode()}" in o.detail.split()


def test_a_fresh_frame_starts_its_4_tuple_again():
    """Inline, the SYN is not queued: the first queued packet of a connection comes with
    ``fresh`` and the decoder forgets the 4-tuple's older connection (issue 22)."""
    d = Decoder()
    # a new connection: a new server ISN, so a new ack (issue 36: the same ack is the same connection)
    first = t.tcp(C4, S4, 40000, 443, 100, ack=5001, payload=t.client_hello("filed.example.cn"))[14:]
    again = t.tcp(C4, S4, 40000, 443, 9000, ack=770001, payload=t.client_hello("other.example.xyz"))[14:]
    assert one(d.feed(1.0, first, LINKTYPE_RAW, fresh=True)).name == "filed.example.cn" and d.settled()
    assert d.feed(1.1, again, LINKTYPE_RAW) == []  # the same connection as far as the decoder knows
    assert d.settled()
    assert one(d.feed(1.2, again, LINKTYPE_RAW, fresh=True)).name == "other.example.xyz"
    # A fresh start of bytes that are no protocol is the connection's start, not a mid-stream join.
    junk = t.tcp(C4, S4, 40001, 443, 5, payload=b"\x00\x01binary protocol" * 40)[14:]
    o = one(d.feed(1.3, junk, LINKTYPE_RAW, fresh=True) + d.flush())
    assert o.kind is Kind.IP_ONLY and o.detail == "unknown-protocol"


def test_settled_only_once_the_flow_needs_nothing_more():
    d = Decoder()
    hello = t.client_hello("split.example.cn")
    a = t.tcp(C4, S4, 40002, 443, 100, payload=hello[:50])[14:]
    b = t.tcp(C4, S4, 40002, 443, 150, payload=hello[50:])[14:]
    assert d.feed(1.0, a, LINKTYPE_RAW, fresh=True) == [] and not d.settled()
    assert one(d.feed(1.1, b, LINKTYPE_RAW)).name == "split.example.cn" and d.settled()
    d.feed(1.2, b"\x45junk", LINKTYPE_RAW)
    assert not d.settled()  # nothing of a flow: not a flow to settle


# -- a fresh flow whose first segments arrive swapped (issue 22) ---------------------------------
# Inline, the SYN is not queued: the decoder learns the connection's start from its first queued
# packet. Should the client's first data segments arrive out of order, that packet is not the
# start; the flow must wait for the segment before it, never be named ip-only (decided by its
# address: on an address shared with unfiled sites, a filed site's connection would be reset).

FRESH_HELLO = t.client_hello("filed.example.cn", ["h2"])
FRESH_HEAD = b"GET /index.html HTTP/1.1\r\nHost: filed.example.cn\r\nUser-Agent: curl/8.5\r\nAccept: */*\r\n\r\n"


def segments(data: bytes, cuts: list[int], isn: int = 7000) -> list[tuple[int, bytes]]:
    bounds = [0, *cuts, len(data)]
    return [(isn + 1 + a, data[a:b]) for a, b in pairwise(bounds)]


def feed_inline(d: Decoder, segs: list[tuple[int, bytes]], order: list[int], dport: int) -> list:
    """The segments as the queue thread feeds them: the first delivered carries the first mark."""
    out = []
    for i, k in enumerate(order):
        seq, chunk = segs[k]
        out += d.feed(1.0 + i * 0.001, t.tcp(C4, S4, 40000, dport, seq, 5001, 0x18, chunk)[14:], LINKTYPE_RAW, fresh=i == 0)
    return out


@pytest.mark.parametrize(("data", "dport", "kind"), [(FRESH_HELLO, 443, Kind.TLS_SNI), (FRESH_HEAD, 80, Kind.HTTP_HOST)],
                         ids=["tls", "http"])
def test_a_fresh_flow_whose_first_two_segments_arrive_swapped_is_named(data, dport, kind):
    d = Decoder()
    segs = segments(data, [len(data) // 2])
    first = feed_inline(d, segs, [1], dport)
    assert first == [] and not d.settled()  # held: inline, accepted without the decided mark
    seq, chunk = segs[0]
    o = one(d.feed(1.1, t.tcp(C4, S4, 40000, dport, seq, 5001, 0x18, chunk)[14:], LINKTYPE_RAW))
    assert (o.kind, o.name) == (kind, "filed.example.cn") and d.settled()
    assert o.tcp_seq == seq  # the packet that completed the name: a reset would use its numbers
    assert d.flush() == []


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_fresh_flow_in_2_to_4_segments_in_any_order_is_named(data):
    payload, dport, kind = data.draw(st.sampled_from(
        [(FRESH_HELLO, 443, Kind.TLS_SNI), (FRESH_HEAD, 80, Kind.HTTP_HOST)]))
    cuts = sorted(data.draw(st.lists(st.integers(1, len(payload) - 1), min_size=1, max_size=3, unique=True)))
    segs = segments(payload, cuts)
    order = data.draw(st.permutations(range(len(segs))))
    d = Decoder()
    out = feed_inline(d, segs, order, dport) + d.flush()
    assert [(o.kind, o.name) for o in out] == [(kind, "filed.example.cn")], (cuts, order, out)


def test_a_held_fresh_flow_is_named_ip_only_past_its_bounds():
    """Held, not kept: a fresh flow whose start never parses is named ip-only at the segment that
    spends the name budget (``name_packets``, ``name_seconds``, issue 36), with that segment's
    numbers (inline: the packet then dropped and the flow reset, as before the hold)."""
    junk = b"\x00\x01binary protocol" * 8
    d = Decoder(DecoderConfig(name_packets=4, name_seconds=1.0))
    for i in range(3):
        pkt = t.tcp(C4, S4, 40003, 443, 100 + i * len(junk), 5001, 0x18, junk)[14:]
        assert d.feed(1.0 + i * 0.01, pkt, LINKTYPE_RAW, fresh=i == 0) == [] and not d.settled()
    o = one(d.feed(1.05, t.tcp(C4, S4, 40003, 443, 100 + 3 * len(junk), 5001, 0x18, junk)[14:], LINKTYPE_RAW))
    assert (o.kind, o.detail, o.tcp_seq, o.tcp_ack) == (Kind.IP_ONLY, "unknown-protocol", 100 + 3 * len(junk), 5001)
    assert d.settled() and d.stats["flow:held"] == 1
    d = Decoder(DecoderConfig(name_seconds=1.0))
    assert d.feed(1.0, t.tcp(C4, S4, 40004, 443, 100, 5001, 0x18, junk)[14:], LINKTYPE_RAW, fresh=True) == []
    o = one(d.feed(2.5, t.tcp(C4, S4, 40004, 443, 100 + len(junk), 5001, 0x18, junk)[14:], LINKTYPE_RAW))
    assert (o.kind, o.detail) == (Kind.IP_ONLY, "unknown-protocol") and d.settled()
    # A later segment that does not grow the held bytes (beyond a hole) counts too.
    d = Decoder(DecoderConfig(name_packets=2))
    assert d.feed(1.0, t.tcp(C4, S4, 40005, 443, 100, 5001, 0x18, junk)[14:], LINKTYPE_RAW, fresh=True) == []
    o = one(d.feed(1.01, t.tcp(C4, S4, 40005, 443, 9000, 5001, 0x18, junk)[14:], LINKTYPE_RAW))
    assert o.kind is Kind.IP_ONLY and o.tcp_seq == 9000


def test_a_held_flow_that_expires_carries_no_other_flows_sequence_numbers():
    """Expired (inline: no more packets of it queued, past ``enforce.connbytes``), a held flow is
    named ip-only without sequence numbers: nothing of its own to reset with, and the packet being
    decoded at that moment is another flow's, which must not be dropped or reset for it."""
    junk = b"\x00\x01binary protocol" * 8
    d = Decoder(DecoderConfig(flow_timeout=5.0))
    assert d.feed(1.0, t.tcp(C4, S4, 40006, 443, 100, 5001, 0x18, junk)[14:], LINKTYPE_RAW, fresh=True) == []
    hello = t.tcp(C4, S4, 40007, 443, 777, 888, 0x18, t.client_hello("filed.example.cn"))[14:]
    out = d.feed(10.0, hello, LINKTYPE_RAW, fresh=True)
    assert [(o.kind, o.client_port) for o in out] == [(Kind.TLS_SNI, 40007), (Kind.IP_ONLY, 40006)]
    assert (out[0].tcp_seq, out[0].tcp_ack) == (777, 888)
    assert (out[1].detail, out[1].tcp_seq, out[1].tcp_ack, out[1].tcp_len) == ("unknown-protocol", 0, 0, 0)


def test_with_the_syn_seen_a_segment_before_the_start_is_ignored():
    """Passive, the SYN seen: the start is known; a segment before it is a retransmission of
    something older and moves nothing (unchanged by the hold of fresh flows)."""
    hello = t.client_hello("syn.example.cn")
    pk = t.tcp_session(C4, S4, 40008, 443, hello, isn=1000)
    early = t.tcp(C4, S4, 40008, 443, 900, 5001, 0x18, b"\x00" * 50)
    out, d = run([pk[0], early, *pk[1:]])
    assert one(out).name == "syn.example.cn" and d.stats["flow:held"] == 0


# -- issue 36: a packet marked as its connection's first, again; the name budget ---------------


def test_segments_of_one_super_packet_each_marked_first_are_one_connection():
    """Where the kernel cuts a GSO super-packet into segments before queuing them, every one carries
    the super-packet's ``first`` mark: the same ack (the server's ISN + 1) says they are one
    connection, so the ClientHello is put together, not restarted at each segment."""
    hello = t.client_hello("filed.example.cn", big=True)
    assert len(hello) > 2800
    d = Decoder()
    segs = [hello[i : i + 1448] for i in range(0, len(hello), 1448)]
    out = []
    for i, seg in enumerate(segs):
        out += d.feed(1.0, t.tcp(C4, S4, 40100, 443, 100 + i * 1448, 5001, 0x18, seg)[14:], LINKTYPE_RAW, fresh=True)
    assert [(o.kind, o.name) for o in out] == [(Kind.TLS_SNI, "filed.example.cn")]
    assert d.stats["flow:first-again"] == len(segs) - 1
    # A request head in the first segment, its body in the next ones (an HTTP POST written at once):
    # the body is the same connection, already decided; no second observation of it.
    d = Decoder()
    head = b"POST /up HTTP/1.1\r\nHost: filed.example.cn\r\nContent-Length: 3000\r\n\r\n"
    first = one(d.feed(1.0, t.tcp(C4, S4, 40101, 80, 100, 5001, 0x18, head)[14:], LINKTYPE_RAW, fresh=True))
    assert first.name == "filed.example.cn"
    body = t.tcp(C4, S4, 40101, 80, 100 + len(head), 5001, 0x18, b"\x00\x01" * 700)[14:]
    assert d.feed(1.0, body, LINKTYPE_RAW, fresh=True) == [] and d.settled()
    # A new connection on the 4-tuple (another server ISN: another ack) is decided afresh.
    again = t.tcp(C4, S4, 40101, 80, 9000, 880001, 0x18, head.replace(b"filed.example.cn", b"other.example.xyz"))[14:]
    assert one(d.feed(2.0, again, LINKTYPE_RAW, fresh=True)).name == "other.example.xyz"


def quic_split(hello: bytes, dcid: bytes, parts: int) -> list[bytes]:
    n = len(hello)
    cuts = [n * i // parts for i in range(parts + 1)]
    return [t.quic_initial_packet([(cuts[i], hello[cuts[i] : cuts[i + 1]])], dcid, i) for i in range(parts)]


BROWSER_QUIC_HELLO = (Path(__file__).parents[2] / "golden" / "browsers" / "chromium-quic.clienthello").read_bytes()


def test_initial_packets_of_a_burst_each_marked_first_are_one_connection():
    """The kernel marks every datagram of a burst ``first`` while the first waits in the queue (its
    conntrack entry not yet confirmed): the same Destination Connection ID says they are one QUIC
    connection. Chromium's ClientHello (recorded) in three Initial packets is named once."""
    d = Decoder()
    dcid = bytes.fromhex("0011223344556677")
    out = []
    for dg in quic_split(BROWSER_QUIC_HELLO, dcid, 3):
        out += d.feed(1.0, t.udp(C4, S4, 50000, 443, dg)[14:], LINKTYPE_RAW, fresh=True)
    assert [(o.kind, o.name) for o in out] == [(Kind.QUIC_SNI, "www.example.com.cn")]
    assert d.settled()
    late = t.udp(C4, S4, 50000, 443, quic_split(BROWSER_QUIC_HELLO, dcid, 3)[1])[14:]
    assert d.feed(1.1, late, LINKTYPE_RAW, fresh=True) == [] and d.settled()  # the same connection, decided
    # another connection from the same port: another DCID, read afresh
    other = quic_split(BROWSER_QUIC_HELLO, bytes.fromhex("8899aabbccddeeff"), 2)
    assert d.feed(2.0, t.udp(C4, S4, 50000, 443, other[0])[14:], LINKTYPE_RAW, fresh=True) == []
    assert one(d.feed(2.0, t.udp(C4, S4, 50000, 443, other[1])[14:], LINKTYPE_RAW, fresh=True)).name == "www.example.com.cn"


def test_the_name_budget_judges_a_flow_by_its_address_on_the_packet_at_hand():
    """Packets or seconds spent without a whole ClientHello (issue 36): named ip-only, reason
    ``budget-packets`` / ``budget-seconds``, on that packet (its numbers: inline drops and resets
    with them), and the flow settled; never passed on unjudged."""
    hello = t.client_hello("slow.example.cn", big=True)
    d = Decoder(DecoderConfig(name_packets=3))
    out = []
    for i in range(3):
        seg = t.tcp(C4, S4, 40200, 443, 100 + i * 10, 5001, 0x18, hello[i * 10 : i * 10 + 10])[14:]
        out += d.feed(1.0 + i, seg, LINKTYPE_RAW, fresh=i == 0)
    o = one(out)
    assert (o.kind, o.detail, o.tcp_seq, o.tcp_len) == (Kind.IP_ONLY, "budget-packets", 120, 10) and d.settled()
    d = Decoder(DecoderConfig(name_seconds=2.0))
    assert d.feed(1.0, t.tcp(C4, S4, 40201, 443, 100, 5001, 0x18, hello[:10])[14:], LINKTYPE_RAW, fresh=True) == []
    assert d.feed(2.0, t.tcp(C4, S4, 40201, 443, 110, 5001, 0x18, hello[10:20])[14:], LINKTYPE_RAW) == []
    o = one(d.feed(3.5, t.tcp(C4, S4, 40201, 443, 120, 5001, 0x18, hello[20:30])[14:], LINKTYPE_RAW))
    assert (o.kind, o.detail) == (Kind.IP_ONLY, "budget-seconds") and d.stats["flow:budget-seconds"] == 1
    # QUIC: Initial packets that never complete the ClientHello
    d = Decoder(DecoderConfig(name_packets=2))
    dgs = quic_split(BROWSER_QUIC_HELLO, bytes(8), 4)
    assert d.feed(1.0, t.udp(C4, S4, 50001, 443, dgs[0])[14:], LINKTYPE_RAW, fresh=True) == []
    o = one(d.feed(1.0, t.udp(C4, S4, 50001, 443, dgs[1])[14:], LINKTYPE_RAW))
    assert (o.kind, o.transport, o.detail) == (Kind.IP_ONLY, Transport.UDP, "budget-packets") and d.settled()


def test_the_name_budget_in_seconds_counts_from_the_first_data_not_the_syn():
    """A connection idle after its handshake, then a ClientHello in two segments: named, not
    ip-only ``budget-seconds`` (review of issue 36: the SYN's time was taken)."""
    hello = t.client_hello("idle.example.cn")
    d = Decoder()
    assert d.feed(1.0, t.tcp(C4, S4, 40300, 443, 1000, 0, 0x02)[14:], LINKTYPE_RAW) == []
    assert d.feed(20.0, t.tcp(C4, S4, 40300, 443, 1001, 5001, 0x18, hello[:100])[14:], LINKTYPE_RAW) == []
    o = one(d.feed(20.1, t.tcp(C4, S4, 40300, 443, 1101, 5001, 0x18, hello[100:])[14:], LINKTYPE_RAW))
    assert o.name == "idle.example.cn"


def test_a_spent_budget_without_the_connections_start_carries_no_sequence_numbers():
    """Passive, the SYN seen but the first data segment lost by the capture: the budget judges the
    flow ip-only, without sequence numbers (nothing to reset a live connection with; the same as
    at its expiry before the budget)."""
    d = Decoder()
    d.feed(1.0, t.tcp(C4, S4, 40301, 443, 1000, 0, 0x02)[14:], LINKTYPE_RAW)
    out = []
    for i in range(1, 7):  # the segment at 1001 never seen
        out += d.feed(1.0 + i * 0.01, t.tcp(C4, S4, 40301, 443, 1001 + i * 100, 5001, 0x18, b"\x17" * 100)[14:], LINKTYPE_RAW)
    o = one(out)
    assert (o.kind, o.detail, o.tcp_seq, o.tcp_ack, o.tcp_len) == (Kind.IP_ONLY, "budget-packets", 0, 0, 0)


# -- the decoder's own counters (issue 26: a component reports its own metrics) ----------------


def test_metrics_report_drops_evictions_budgets_and_flows_by_series():
    from beiand.model import MetricKey as K

    hello = t.client_hello("slow.example.cn", big=True)
    d = Decoder(DecoderConfig(name_packets=3, reassembly_tcp_bytes=2500))
    d.feed(1.0, b"\x00" * 20, LINKTYPE_RAW)  # not IP: dropped, counted by layer and reason
    for i in range(3):  # the name budget spent: judged ip-only
        d.feed(1.0 + i, t.tcp(C4, S4, 40200, 443, 100 + i * 10, 5001, 0x18, hello[i * 10 : i * 10 + 10])[14:], LINKTYPE_RAW, fresh=i == 0)
    for port in (40300, 40301, 40302):  # 1,000 bytes held each, 2,500 allowed: the oldest evicted
        d.feed(5.0, t.tcp(C4, S4, port, 443, 1, payload=hello[:1000]))
    m = d.metrics()
    drops = {k.labels[0]: v for k, v in m.items() if k.metric == "beiand_decode_errors"}
    assert drops == dict(d.drops) and drops
    assert m[K("beiand_reassembly_evicted", ("tcp",))] == 1 and m[K("beiand_reassembly_evicted", ("quic",))] == 0
    assert m[K("beiand_flow_name_budget_spent", ("packets",))] == 1 and m[K("beiand_flow_name_budget_spent", ("seconds",))] == 0
    assert m[K("beiand_capture_bpf_unfollowed")] == 0  # the worker adds its number: a per-worker series
    assert m[K("beiand_flows")] == d.flow_count == 2  # a gauge
    assert {k.metric for k in m} == {"beiand_decode_errors", "beiand_reassembly_evicted", "beiand_flow_name_budget_spent",
                                     "beiand_capture_bpf_unfollowed", "beiand_flows"}


def keepalive(*segments: bytes, dport: int = 80) -> list[bytes]:
    """A connection (SYN, SYN/ACK) and the client's segments one after the other, each its own send."""
    pkts = [t.tcp(C4, S4, 40000, dport, 1000, 0, 0x02), t.tcp(S4, C4, dport, 40000, 5000, 1001, 0x12)]
    seq = 1001
    for seg in segments:
        pkts.append(t.tcp(C4, S4, 40000, dport, seq, 5001, 0x18, seg))
        pkts.append(t.tcp(S4, C4, dport, 40000, 5001, seq + len(seg), 0x18, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
        seq += len(seg)
    return pkts


def get(host: str, path: str = "/") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


def test_every_request_head_of_a_keep_alive_connection_is_judged():
    """Issue 32: a filed Host first, then an unfiled one on the same connection (each its own
    segment): both are named, each on the segment that completes its head; a host named before on
    the connection is not named again."""
    out, d = run(keepalive(get("filed.example.com.cn"), get("unfiled.example.xyz", "/2"), get("filed.example.com.cn", "/3")))
    assert [(o.name, o.kind) for o in out] == [("filed.example.com.cn", Kind.HTTP_HOST), ("unfiled.example.xyz", Kind.HTTP_HOST)]
    second = out[1]
    assert second.tcp_len == len(get("unfiled.example.xyz", "/2")) and second.url.endswith("/2")
    assert d.stats["http:later-head"] == 2


def test_a_later_head_split_over_segments_and_pipelined_heads():
    head = get("split.example.xyz", "/s")
    out, _ = run(keepalive(get("a.example"), head[:9], head[9:25], head[25:]))
    assert [o.name for o in out] == ["a.example", "split.example.xyz"]
    out, _ = run(keepalive(get("a.example"), get("b.example") + get("c.example") + get("d.example")[:10], get("d.example")[10:]))
    assert [o.name for o in out] == ["a.example", "b.example", "c.example", "d.example"]
    body = get("hidden.example")
    post = f"POST /up HTTP/1.1\r\nHost: a.example\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    out, _ = run(keepalive(post, body[:20], body[20:], get("next.example")))  # a body that looks like a head is a body
    assert [o.name for o in out] == ["a.example", "next.example"]


def test_a_tls_connection_is_not_read_after_its_name():
    hello = t.client_hello("tls.example.com")
    out, d = run(keepalive(hello, b"GET / HTTP/1.1\r\nHost: x.example\r\n\r\n", dport=443))
    assert [o.name for o in out] == ["tls.example.com"] and d.stats["http:later-head"] == 0


def test_later_heads_past_one_parse_after_a_body_and_never_in_a_chunked_body():
    """Found in review (issue 32): 17 heads in one segment are all read; a head right after a
    Content-Length body inside the same segment is read; a chunked body (not followed) is never
    read as heads, so an upload to a filed site cannot be blocked for what its body says."""
    many = b"".join(get("filed.example.cn", f"/{i}") for i in range(16)) + get("unfiled.example.xyz")
    for segs in ((many,), (get("filed.example.cn"), many)):
        out, _ = run(keepalive(*segs))
        assert [o.name for o in out] == ["filed.example.cn", "unfiled.example.xyz"], segs[0][:40]
    post = b"POST / HTTP/1.1\r\nHost: filed.example.cn\r\nContent-Length: 5\r\n\r\n"
    for body in (b"HELLO", b"hello"):
        out, _ = run(keepalive(post, body + get("unfiled.example.xyz")))
        assert [o.name for o in out] == ["filed.example.cn", "unfiled.example.xyz"]
    chunked = b"POST / HTTP/1.1\r\nHost: filed.example.cn\r\nTransfer-Encoding: chunked\r\n\r\n"
    out, d = run(keepalive(chunked, get("in-the-body.example.xyz")))  # not chunk framing: the server refuses it
    assert [o.name for o in out] == ["filed.example.cn"] and d.stats["http:chunked-bad"] == 1


def test_a_chunked_body_is_read_to_its_end_and_the_head_after_it_judged():
    """Found by the attack run (issue 32): a chunked POST to a filed site, then an unfiled request
    on the connection (after the answer, in the same segment as the body's end, or the body in
    segments of its own) reached the unfiled site; the body's framing is now followed."""
    chunked = b"POST /c HTTP/1.1\r\nHost: filed.example.cn\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b"5\r\nhello\r\n3;ext=1\r\nGET\r\n0\r\nX-Trailer: a\r\n\r\n"
    unfiled = get("unfiled.example.xyz")
    for segs in ((chunked + body + unfiled,), (chunked, body + unfiled), (chunked, body, unfiled),
                 (chunked + body[:7], body[7:20], body[20:] + unfiled), (chunked, body[:1], body[1:], unfiled)):
        out, d = run(keepalive(*segs))
        assert [o.name for o in out] == ["filed.example.cn", "unfiled.example.xyz"], segs
    # a chunk whose data reads like a request is never taken for one
    tricky = b"1e\r\n" + get("in-the-body.example.xyz")[:30] + b"\r\n0\r\n\r\n"
    out, _ = run(keepalive(chunked, tricky[:5], tricky[5:], unfiled))
    assert [o.name for o in out] == ["filed.example.cn", "unfiled.example.xyz"]
    # inline, the body's segments are queued (more) until its end
    d = Decoder(DecoderConfig())
    d.feed(1000.0, t.tcp(C4, S4, 40000, 80, 1, 5001, 0x18, chunked), fresh=True)
    assert d.reading_later() and d.settled()
    d.feed(1000.1, t.tcp(C4, S4, 40000, 80, 1 + len(chunked), 5001, 0x18, body[:10]))
    assert d.reading_later()
    d.feed(1000.2, t.tcp(C4, S4, 40000, 80, 11 + len(chunked), 5001, 0x18, body[10:]))
    assert not d.reading_later() and d.settled()


# -- names on any port (issue 32) ----------------------------------------------------------------

ODD = DecoderConfig(conns=True)  # any_port is the default


def named(out):
    return [(o.kind, o.name, o.server_port) for o in out if o.kind is not Kind.CONN]


@pytest.mark.parametrize("port", [3000, 8888, 22, 65535])
def test_tls_http_and_quic_are_named_on_any_port(port):
    out, d = run(t.tcp_session(C4, S4, 40000, port, HELLO), config=ODD)
    assert named(out) == [(Kind.TLS_SNI, "tls.example.com", port)] and d.stats["tcp:odd-port"] == 1
    head = b"GET / HTTP/1.1\r\nHost: Odd.Example.XYZ.:8888\r\n\r\n"
    out, _ = run(t.tcp_session(C4, S4, 40001, port, head), config=ODD)
    assert named(out) == [(Kind.HTTP_HOST, "odd.example.xyz", port)]
    out, d = run([t.udp(C4, S4, 50000, port, dg) for dg in t.quic_initial_datagrams("quic.example.com", big=True)], config=ODD)
    assert named(out) == [(Kind.QUIC_SNI, "quic.example.com", port)] and d.stats["quic:odd-port"] >= 1


def test_a_split_client_hello_and_a_split_request_line_on_an_odd_port_are_named():
    for cut in (1, 3, 5, 7, 100):
        out, _ = run(t.tcp_session(C4, S4, 40000, 3000, HELLO, segment=cut), config=DecoderConfig(conns=True, max_flow_bytes=1 << 14,
                                                                                             name_packets=1000))
        assert named(out) == [(Kind.TLS_SNI, "tls.example.com", 3000)], cut
    head = b"GET / HTTP/1.1\r\nHost: split.example.xyz\r\n\r\n"
    out, _ = run(t.tcp_session(C4, S4, 40000, 8888, head, segment=2), config=DecoderConfig(conns=True, name_packets=1000))
    assert named(out) == [(Kind.HTTP_HOST, "split.example.xyz", 8888)]


@pytest.mark.parametrize("first", [b"SSH-2.0-OpenSSH_9.2\r\n", b"EHLO mail.example.com\r\n", b"GET key\r\n", b"\x00\x00\x00\x2c",
                                   b"\x16\x03\x03\x00\x40\x02\x00\x00\x3c" + b"\0" * 60, b"HTTP/1.1 200 OK\r\n\r\n"])
def test_other_protocols_on_an_odd_port_are_not_named_nor_judged(first):
    """SSH, SMTP, Redis, a binary protocol, a ServerHello, an answer: no name, no ip-only; its record says it."""
    out, _ = run(t.tcp_session(C4, S4, 40000, 6379, first + HELLO), config=ODD)
    assert named(out) == [], out
    assert [o.detail for o in out] == ["not-named:unrecognised"]


def test_a_client_hello_after_an_odd_ports_first_bytes_is_not_named():
    """STARTTLS: SMTP's EHLO first, a ClientHello later on the connection: the first bytes decide (as on any port)."""
    frames = t.tcp_session(C4, S4, 40000, 587, b"EHLO x\r\n")
    frames.append(t.tcp(C4, S4, 40000, 587, 1001 + 8, 5001, 0x18, HELLO))
    out, _ = run(frames, config=ODD)
    assert named(out) == []
    # without the SYN (a capture joined late), the first segment seen decides
    out, _ = run(frames[2:], config=ODD)
    assert named(out) == []


def test_an_odd_port_syn_scan_holds_no_flow():
    frames = [t.tcp(C4, S4, 10000 + i, 1 + i, 7, 0, 0x02) for i in range(2000)]
    _, d = run(frames, config=DecoderConfig())
    assert not d.flows and d.stats["tcp:odd-port"] == 0


def test_an_odd_ports_first_segment_alone_is_named_from_what_it_holds():
    """Live passive: the capture filter passes an odd port's first segment only (``odd_rest`` False)."""
    cfg = DecoderConfig(conns=True, odd_rest=False)
    out, _ = run(t.tcp_session(C4, S4, 40000, 3000, HELLO, segment=200), config=cfg)
    assert named(out) == [(Kind.TLS_SNI, "tls.example.com", 3000)] and "partial-hello" in out[0].detail
    out, d = run(t.tcp_session(C4, S4, 40000, 3000, HELLO, segment=20), config=cfg)  # cut before the SNI
    assert named(out) == [] and d.stats["tcp:odd-port-partial"] == 1  # not judged by its address: it may be filed
    head = b"GET /x HTTP/1.1\r\nHost: part.example.xyz\r\nUser-Agent: " + b"a" * 3000 + b"\r\n\r\n"
    out, _ = run(t.tcp_session(C4, S4, 40000, 8888, head), config=cfg)
    assert named(out) == [(Kind.HTTP_HOST, "part.example.xyz", 8888)] and "unfinished" in out[0].detail
    out, d = run(t.tcp_session(C4, S4, 40000, 8888, b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\n\r\n"), config=cfg)
    assert named(out) == [] and d.stats["tcp:odd-port-partial"] == 1


def test_keep_alive_heads_on_an_odd_port_are_named_too():
    reqs = b"GET / HTTP/1.1\r\nHost: www.example.com.cn\r\n\r\n"
    frames = t.tcp_session(C4, S4, 40000, 8888, reqs)
    frames.append(t.tcp(C4, S4, 40000, 8888, 1001 + len(reqs), 5001, 0x18, b"GET /2 HTTP/1.1\r\nHost: unfiled.example.xyz\r\n\r\n"))
    out, _ = run(frames, config=ODD)
    assert [n for _, n, _ in named(out)] == ["www.example.com.cn", "unfiled.example.xyz"]


def test_watched_ports_only_leaves_odd_ports_unnamed():
    cfg = DecoderConfig(conns=True, any_port=False)
    out, _ = run(t.tcp_session(C4, S4, 40000, 3000, HELLO), config=cfg)
    assert named(out) == [] and out[0].detail == "not-named:unwatched-port"
    out, _ = run([t.udp(C4, S4, 50000, 4433, dg) for dg in t.quic_initial_datagrams("quic.example.com")], config=cfg)
    assert named(out) == []


def test_a_small_or_unknown_udp_datagram_on_an_odd_port_is_not_quic():
    dg = t.quic_initial_datagrams("quic.example.com")[0]
    bad = [dg[:1000], bytes([dg[0]]) + b"\x0a\x0b\x0c\x0d" + dg[5:], bytes([dg[0] & 0x7F]) + dg[1:]]  # short, unknown version, short header
    out, d = run([t.udp(C4, S4, 50000 + i, 4433, b) for i, b in enumerate(bad)], config=DecoderConfig())
    assert out == [] and d.stats["quic:odd-port"] == 0 and d.stats["udp:other"] == 3


def test_client_tricks_that_would_hide_a_host():
    """Issue 32: empty lines before a request line (first or later), a later method cut to one
    byte, a head longer than the bytes read (first or later) with its Host in them."""
    first = b"GET / HTTP/1.1\r\nHost: www.example.com.cn\r\n\r\n"
    unfiled = b"GET /2 HTTP/1.1\r\nHost: unfiled.example.xyz\r\n\r\n"
    out, _ = run(t.tcp_session(C4, S4, 40000, 80, b"\r\n\r\n" + unfiled))
    assert named(out) == [(Kind.HTTP_HOST, "unfiled.example.xyz", 80)]
    for port in (80, 8888):
        frames = t.tcp_session(C4, S4, 40000, port, first)
        seq = 1001 + len(first)
        for piece in (b"\r\n", b"G", unfiled[1:]):  # CRLF, one byte, the rest: three segments
            frames.append(t.tcp(C4, S4, 40000, port, seq, 5001, 0x18, piece))
            seq += len(piece)
        out, _ = run(frames, config=ODD)
        assert [n for _, n, _ in named(out)] == ["www.example.com.cn", "unfiled.example.xyz"], port
    pad = b"X-Pad: " + b"a" * 20000 + b"\r\n"
    long_head = b"GET / HTTP/1.1\r\nHost: unfiled.example.xyz\r\n" + pad + b"\r\n"
    out, _ = run(t.tcp_session(C4, S4, 40000, 80, long_head), config=DecoderConfig(name_packets=100))
    assert named(out) == [(Kind.HTTP_HOST, "unfiled.example.xyz", 80)] and "long-head" in out[0].detail
    frames = t.tcp_session(C4, S4, 40000, 80, first)
    frames += t.tcp_session(C4, S4, 40000, 80, long_head, isn=1000 + len(first), handshake=False)
    out, _ = run(frames, config=DecoderConfig(name_packets=100))
    assert [n for _, n, _ in named(out)] == ["www.example.com.cn", "unfiled.example.xyz"]


def test_a_name_past_the_bytes_read_in_one_packet_is_judged_at_once():
    """Issue 32: one packet (a GSO super-packet) longer than max_flow_bytes, no SYN seen (inline): the
    head or ClientHello is given up on that packet (named from its prefix), never left waiting."""
    pad = b"".join(b"X-Pad-%d: " % i + b"a" * 7000 + b"\r\n" for i in range(3))
    head = b"GET /2 HTTP/1.1\r\nHost: unfiled.example.xyz\r\n" + pad + b"\r\n"
    d = Decoder(DecoderConfig())
    out = d.feed(1000.0, t.tcp(C4, S4, 40000, 80, 1, 5001, 0x18, head), fresh=True)
    assert named(out) == [(Kind.HTTP_HOST, "unfiled.example.xyz", 80)] and d.settled()
    first = b"GET / HTTP/1.1\r\nHost: www.example.com.cn\r\n\r\n"
    d = Decoder(DecoderConfig())
    d.feed(1000.0, t.tcp(C4, S4, 40000, 80, 1, 5001, 0x18, first), fresh=True)
    out = d.feed(1000.1, t.tcp(C4, S4, 40000, 80, 1 + len(first), 5001, 0x18, head))
    assert named(out) == [(Kind.HTTP_HOST, "unfiled.example.xyz", 80)] and d.settled()
    hello = t.client_hello("big.example.xyz", ["x" * 200] * 100)  # about 20 KB: SNI first
    assert len(hello) > 16384
    d = Decoder(DecoderConfig())
    out = d.feed(1000.0, t.tcp(C4, S4, 40000, 443, 1, 5001, 0x18, hello), fresh=True)
    assert [(o.kind, o.name, o.detail) for o in out] == [(Kind.TLS_SNI, "big.example.xyz", "too-long")]


def test_a_later_head_is_named_from_its_first_lines_and_read_to_its_end():
    """Issue 32: inline, a packet sent right after a later head's first one can pass before the
    kernel queues the rest (a hole here): the Host in the first part names it all the same; and
    the head is still read to its end, so a pipelined head after it is named too."""
    first = b"GET / HTTP/1.1\r\nHost: www.example.com.cn\r\n\r\n"
    pad = b"".join(b"X-Pad-%d: " % i + b"a" * 3000 + b"\r\n" for i in range(3))
    second = b"GET /2 HTTP/1.1\r\nHost: unfiled.example.xyz\r\n" + pad + b"\r\n"
    d = Decoder(DecoderConfig())
    d.feed(1000.0, t.tcp(C4, S4, 40000, 80, 1, 5001, 0x18, first), fresh=True)
    seq = 1 + len(first)
    out = d.feed(1000.1, t.tcp(C4, S4, 40000, 80, seq, 5001, 0x18, second[:2000]))  # the rest never comes
    assert [(o.name, o.detail) for o in out] == [("unfiled.example.xyz", "method=GET unfinished")] and d.reading_later()
    filed2 = b"GET /3 HTTP/1.1\r\nHost: www.example.com.cn\r\n" + pad + b"\r\n"
    third = b"GET /4 HTTP/1.1\r\nHost: unfiled.example.xyz\r\n\r\n"
    d = Decoder(DecoderConfig())
    d.feed(1000.0, t.tcp(C4, S4, 40000, 80, 1, 5001, 0x18, first), fresh=True)
    names = []
    for piece in (filed2[:2000], filed2[2000:] + third):
        names += [o.name for o in d.feed(1000.1, t.tcp(C4, S4, 40000, 80, seq, 5001, 0x18, piece))]
        seq += len(piece)
    assert names == ["unfiled.example.xyz"] and d.settled()  # the filed Host was named on the connection already


def test_a_head_longer_than_the_bytes_read_is_read_on_for_its_host():
    """Found by the attack run (issue 32): a keep-alive head with its Host after 16 KiB of header
    lines (each line within a server's limit) reached the unfiled site; and a filed first head so
    was reset (ip-only). The lines past the bytes read are dropped, the request line kept, the
    Host read where it comes."""
    pad = b"".join(b"X-Pad-%d: " % i + b"a" * 7000 + b"\r\n" for i in range(3))
    first = b"GET / HTTP/1.1\r\nHost: www.example.com.cn\r\n\r\n"
    late = b"GET /u HTTP/1.1\r\n" + pad + b"Host: unfiled.example.xyz\r\n\r\n"
    small = b"GET /u HTTP/1.1\r\n" + b"".join(b"X-Pad-%d: " % i + b"a" * 900 + b"\r\n" for i in range(30)) + \
        b"Host: unfiled.example.xyz\r\n\r\n"
    for cfg, head in ((DecoderConfig(), late), (DecoderConfig(max_flow_bytes=4096), small)):
        for segment in (1448, 100_000):  # segments, or one GSO packet
            out, _ = run(keepalive(first, *[head[i:i + segment] for i in range(0, len(head), segment)]), config=cfg)
            assert [(o.name, o.detail) for o in out] == [("www.example.com.cn", "method=GET"),
                                                         ("unfiled.example.xyz", "method=GET long-head")], out
    # a filed first head so: named, not reset by its address
    filed = b"GET / HTTP/1.1\r\n" + pad + b"Host: www.example.com.cn\r\n\r\n"
    d = Decoder(DecoderConfig())
    out = d.feed(1000.0, t.tcp(C4, S4, 40000, 80, 1, 5001, 0x18, filed), fresh=True)
    assert [(o.kind, o.name) for o in out] == [(Kind.HTTP_HOST, "www.example.com.cn")] and d.settled()
    # no Host to its end: judged as a head without one; a header line past the bytes read: given up
    out, _ = run(keepalive(b"GET / HTTP/1.1\r\n" + pad + b"\r\n"))
    assert [(o.kind, o.detail) for o in out] == [(Kind.IP_ONLY, "http-no-host long-head")]
    out, _ = run(keepalive(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\nHost: x.example\r\n\r\n"))
    assert [(o.kind, o.detail) for o in out] == [(Kind.IP_ONLY, "too-long")]


def test_review_findings_transfer_encoding_chunked_after_a_long_body_and_quic_from_a_low_port():
    """Found in review (issue 32): Content-Length beside Transfer-Encoding (the server reads it
    chunked: RFC 9112 section 6.3); a chunked body past body_follow switched later heads off for
    the connection; a QUIC Initial from a client port below 1024 was taken for the server's."""
    post = b"POST / HTTP/1.1\r\nHost: filed.example.cn\r\nContent-Length: 200\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    out, _ = run(keepalive(post + get("unfiled.example.xyz")))
    assert [o.name for o in out] == ["filed.example.cn", "unfiled.example.xyz"]
    chunked = b"POST /c HTTP/1.1\r\nHost: filed.example.cn\r\nTransfer-Encoding: chunked\r\n\r\n"
    big = b"".join(b"400\r\n" + b"x" * 1024 + b"\r\n" for _ in range(70)) + b"0\r\n\r\n"
    out, d = run(keepalive(chunked, *[big[i:i + 1400] for i in range(0, len(big), 1400)], get("unfiled.example.xyz")))
    assert [o.name for o in out] == ["filed.example.cn", "unfiled.example.xyz"] and d.stats["http:chunked-too-long"] == 1
    for sport in (500, 123, 443):
        out, _ = run([t.udp(C4, S4, sport, 4433, dg) for dg in t.quic_initial_datagrams("quic.example.com", big=True)],
                     config=DecoderConfig(conns=True))
        assert named(out) == [(Kind.QUIC_SNI, "quic.example.com", 4433)], sport


def test_a_head_pipelined_behind_a_long_head_is_judged():
    """Found in review (issue 32): a head longer than the bytes read was judged at its Host and not
    read to its end, so a head pipelined behind it (and its body's end) was never read."""
    pad = b"".join(b"X-Pad-%d: " % i + b"a" * 6000 + b"\r\n" for i in range(3))
    long_filed = b"GET / HTTP/1.1\r\nHost: www.example.com.cn\r\n" + pad + b"\r\n"
    unfiled = get("unfiled.example.xyz", "/2")
    with_body = b"POST / HTTP/1.1\r\nHost: www.example.com.cn\r\n" + pad + b"Content-Length: 5\r\n\r\nhello"
    chunked = b"POST / HTTP/1.1\r\nHost: www.example.com.cn\r\nTransfer-Encoding: chunked\r\n" + pad + b"\r\n5\r\nhello\r\n0\r\n\r\n"
    for head in (long_filed, with_body, chunked):
        wire = head + unfiled
        for segment in (1400, 100_000):  # a later head (a first one has the name budget: 6 packets)
            out, _ = run(keepalive(get("www.example.com.cn"), *[wire[i:i + segment] for i in range(0, len(wire), segment)]))
            assert [o.name for o in out] == ["www.example.com.cn", "unfiled.example.xyz"], (head[:20], segment, out)
        out, _ = run(keepalive(wire))  # a first head in one packet (GSO)
        assert [o.name for o in out] == ["www.example.com.cn", "unfiled.example.xyz"], (head[:20], out)


def test_odd_port_segments_sent_out_of_order_are_held_for_the_first():
    """Found in review (issue 32): on a port not watched, a later segment sent first (zapret's
    'disorder') made the connection 'another protocol' before its first came. Where the SYN was
    seen the later one waits for the first; inline without it (fresh), within the name budget."""
    hello = t.client_hello("unfiled.example.xyz", ["h2"])
    head = b"GET / HTTP/1.1\r\nHost: unfiled.example.xyz\r\n\r\n"
    for port, data in ((3000, hello), (8888, head)):
        out, d = run(t.tcp_session(C4, S4, 40000, port, data, segment=len(data) // 2 + 1, order=[1, 0]), config=ODD)
        assert [n for _, n, _ in named(out)] == ["unfiled.example.xyz"], (port, dict(d.stats))
        # inline, no SYN seen: the first queued packet is the later segment
        d = Decoder(DecoderConfig())
        cut = len(data) // 2
        got = d.feed(1000.0, t.tcp(C4, S4, 40001, port, 1001 + cut, 5001, 0x18, data[cut:]), fresh=True)
        assert got == [] and d.reading_later() and not d.settled()
        got = d.feed(1000.1, t.tcp(C4, S4, 40001, port, 1001, 5001, 0x18, data[:cut]))
        assert [o.name for o in got] == ["unfiled.example.xyz"] and d.settled()
    # another protocol, inline without its SYN: held within the name budget, then let go, never judged
    d = Decoder(DecoderConfig(name_packets=3))
    out = []
    for i in range(4):
        out += d.feed(1000.0 + i, t.tcp(C4, S4, 40002, 5432, 1001 + 10 * i, 5001, 0x18, b"\x00\x00\x00\x08\x04\xd2\x16\x2f"[:8] + b"xx"),
                      fresh=i == 0)
    assert out == [] and d.settled() and d.stats["tcp:odd-port-other"] == 1


def test_inline_a_syn_from_the_ring_after_the_first_queued_packet_wipes_nothing():
    """Found in the lab (issue 32; failed one run in five): inline, the SYN comes on the ring in
    blocks, after its connection's first queued packet; it wiped the connection's state, and a later
    head cut to one byte was then held behind a hole and passed unjudged."""
    first = b"GET / HTTP/1.1\r\nHost: www.example.com.cn\r\n\r\n"
    for port in (80, 8888):
        d = Decoder(DecoderConfig(conns=True, inline=True))
        out = d.feed(1000.0, t.tcp(C4, S4, 40000, port, 1001, 5001, 0x18, first), fresh=True)
        d.feed(1000.001, t.tcp(C4, S4, 40000, port, 1000, 0, 0x02))  # the SYN, late
        seq = 1001 + len(first)
        out += d.feed(1000.2, t.tcp(C4, S4, 40000, port, seq, 5001, 0x18, b"G"))
        assert d.reading_later()
        out += d.feed(1000.4, t.tcp(C4, S4, 40000, port, seq + 1, 5001, 0x18, get("unfiled.example.xyz")[1:]))
        assert [o.name for o in out if o.name] == ["www.example.com.cn", "unfiled.example.xyz"], port


def test_inline_a_clienthellos_records_sent_last_first_on_an_odd_port_are_named():
    """The review's case (issue 32): two TLS records, the second sent first; inline with the SYN
    seen on the ring, the kernel queues both (each starts 16 03): the second is held for the first."""
    hello = t.client_hello("unfiled.example.xyz", ["h2"])
    hs = hello[5:]
    rec1, rec2 = b"\x16\x03\x01" + (100).to_bytes(2, "big") + hs[:100], b"\x16\x03\x01" + (len(hs) - 100).to_bytes(2, "big") + hs[100:]
    d = Decoder(DecoderConfig(conns=True, inline=True))
    d.feed(1000.0, t.tcp(C4, S4, 40000, 3000, 1000, 0, 0x02))  # the SYN, on the ring
    out = d.feed(1000.1, t.tcp(C4, S4, 40000, 3000, 1001 + len(rec1), 5001, 0x18, rec2), fresh=True)
    assert out == [] and d.reading_later()
    out = d.feed(1000.2, t.tcp(C4, S4, 40000, 3000, 1001, 5001, 0x18, rec1))
    assert [o.name for o in out] == ["unfiled.example.xyz"]


def test_a_long_head_with_bare_lf_line_ends_is_named_at_its_end():
    """A head past the bytes read whose lines end in a bare LF: its Host, in the part with its end,
    is read (the lines before the empty line were cut so that no head end was found)."""
    pad = b"".join(b"X-Pad-%d: " % i + b"a" * 6000 + b"\n" for i in range(3))
    head = b"GET /u HTTP/1.1\n" + pad + b"Host: unfiled.example.xyz\n\n"
    out, _ = run(keepalive(get("www.example.com.cn"), *[head[i:i + 1400] for i in range(0, len(head), 1400)]))
    assert [o.name for o in out] == ["www.example.com.cn", "unfiled.example.xyz"], out
