"""The kernel filter: interpreted packet by packet against the plain rule, and attached for real."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beiand.capture.bpf import build, reference, run
from beiand.lab import traffic as t

TCP, UDP = (80, 443, 8080, 8443), (443,)
PROG = build(TCP, UDP)


def accepted(pkt: bytes) -> bool:
    return run(PROG, pkt) > 0


@pytest.mark.parametrize(("pkt", "want"), [
    (t.tcp("192.0.2.1", "198.51.100.1", 40000, 443, 1, payload=t.client_hello("a.example.cn")), True),
    (t.tcp("192.0.2.1", "198.51.100.1", 40000, 443, 1, flags=0x02), True),  # SYN
    (t.tcp("192.0.2.1", "198.51.100.1", 40000, 443, 1, flags=0x10), False),  # bare ACK
    (t.tcp("198.51.100.1", "192.0.2.1", 443, 40000, 1, payload=b"x" * 100), False),  # server's answer
    (t.tcp("192.0.2.1", "198.51.100.1", 40000, 22, 1, payload=b"SSH-2.0"), False),
    (t.udp("192.0.2.53", "192.0.2.1", 53, 3333, b"\0" * 20), True),  # DNS answer
    (t.tcp("192.0.2.53", "192.0.2.1", 53, 3333, 1, payload=b"\0" * 20), True),  # DNS over TCP
    (t.udp("192.0.2.1", "198.51.100.1", 5000, 443, b"\xc0" + b"\0" * 1199), True),  # QUIC
    (t.udp("192.0.2.1", "198.51.100.1", 5000, 4433, b"\0"), False),
    (b"\xff" * 14 + b"\x08\x06" + b"\0" * 28, False),  # ARP-ish
])
def test_known_packets(pkt: bytes, want: bool) -> None:
    assert accepted(pkt) is want
    assert reference(pkt, TCP, UDP) is want


@settings(max_examples=400)
@given(st.binary(min_size=0, max_size=120), st.sampled_from([b"\x08\x00", b"\x86\xdd", b"\x81\x00"]), st.integers(0, 120))
def test_program_equals_the_plain_rule_on_any_bytes(body: bytes, ethertype: bytes, cut: int) -> None:
    pkt = (b"\0" * 12 + ethertype + body)[: 14 + cut]
    assert accepted(pkt) == reference(pkt, TCP, UDP)


@settings(max_examples=300)
@given(st.integers(1, 65535), st.integers(1, 65535), st.binary(max_size=40), st.sampled_from([0x02, 0x10, 0x18, 0x11, 0x04]),
       st.booleans())
def test_program_equals_the_plain_rule_on_tcp_and_udp(sport: int, dport: int, payload: bytes, flags: int, is_udp: bool) -> None:
    pkt = (t.udp("192.0.2.1", "198.51.100.1", sport, dport, payload) if is_udp
           else t.tcp("192.0.2.1", "198.51.100.1", sport, dport, 1, flags=flags, payload=payload))
    assert accepted(pkt) == reference(pkt, TCP, UDP)


# -- connection records (issue 19): SYN, SYN+ACK, FIN, RST on any port, UDP on any port but QUIC's answers --

CONN_PROG = build(TCP, UDP, connections=True)


@pytest.mark.parametrize(("pkt", "want"), [
    (t.tcp("192.0.2.1", "198.51.100.1", 40000, 2222, 1, flags=0x02), True),  # SYN to an odd port
    (t.tcp("198.51.100.1", "192.0.2.1", 2222, 40000, 1, flags=0x12), True),  # its SYN+ACK: established, not an attempt
    (t.tcp("198.51.100.1", "192.0.2.1", 443, 40000, 1, flags=0x12), True),  # a watched port's SYN+ACK too (issue 32)
    (t.tcp("198.51.100.1", "192.0.2.1", 2222, 40000, 1, flags=0x10), False),  # the handshake's last ACK: nothing
    (t.tcp("192.0.2.1", "198.51.100.1", 40000, 2222, 1, flags=0x11), True),  # FIN: a flow open before the capture
    (t.tcp("198.51.100.1", "192.0.2.1", 2222, 40000, 1, flags=0x14), True),  # RST+ACK
    (t.tcp("192.0.2.1", "198.51.100.1", 40000, 2222, 1, flags=0x18, payload=b"SSH-2.0"), False),  # its bulk
    (t.tcp("192.0.2.1", "198.51.100.1", 40000, 2222, 1, flags=0x10), False),  # bare ACK
    (t.tcp("198.51.100.1", "192.0.2.1", 443, 40000, 1, payload=b"x" * 100), False),  # server's answer, watched port
    (t.udp("192.0.2.1", "198.51.100.1", 5000, 27015, b"\0" * 20), True),  # a game server's datagram
    (t.udp("198.51.100.1", "192.0.2.1", 27015, 5000, b"\0" * 20), True),  # and its answer
    (t.udp("198.51.100.1", "192.0.2.1", 443, 5000, b"\x40" + b"\0" * 40), False),  # QUIC 1-RTT from the server
    (t.udp("192.0.2.1", "198.51.100.1", 5000, 443, b"\x40" + b"\0" * 40), False),  # QUIC 1-RTT to it
    (t.tcp("2001:db8::1", "2001:db8:100::1", 40000, 2222, 1, flags=0x02), True),  # IPv6 SYN
    (t.udp("2001:db8::1", "2001:db8:100::1", 5000, 9999, b"\0" * 8), True),
    (t.tcp("2001:db8::1", "2001:db8:100::1", 40000, 2222, 1, flags=0x10, payload=b"x"), False),
])
def test_connection_packets(pkt: bytes, want: bool) -> None:
    assert (run(CONN_PROG, pkt) > 0) is want
    assert reference(pkt, TCP, UDP, connections=True) is want


@settings(max_examples=300)
@given(st.integers(1, 65535), st.integers(1, 65535), st.binary(max_size=40), st.sampled_from([0x02, 0x12, 0x10, 0x18, 0x11, 0x04]),
       st.booleans(), st.booleans())
def test_connection_program_equals_the_plain_rule(sport: int, dport: int, payload: bytes, flags: int, is_udp: bool,
                                                  v6: bool) -> None:
    a, b = ("2001:db8::1", "2001:db8:100::1") if v6 else ("192.0.2.1", "198.51.100.1")
    pkt = (t.udp(a, b, sport, dport, payload) if is_udp else t.tcp(a, b, sport, dport, 1, flags=flags, payload=payload))
    assert (run(CONN_PROG, pkt) > 0) == reference(pkt, TCP, UDP, connections=True)


@settings(max_examples=300)
@given(st.binary(min_size=0, max_size=120), st.sampled_from([b"\x08\x00", b"\x86\xdd", b"\x81\x00"]), st.integers(0, 120))
def test_connection_program_equals_the_plain_rule_on_any_bytes(body: bytes, ethertype: bytes, cut: int) -> None:
    pkt = (b"\0" * 12 + ethertype + body)[: 14 + cut]
    assert (run(CONN_PROG, pkt) > 0) == reference(pkt, TCP, UDP, connections=True)


# -- inline (issue 22) with connection records: the queued ports stay off the ring --------------

INLINE_PROG = build((), (), connections=True, queued_udp=UDP, queued_tcp=TCP)


@settings(max_examples=300)
@given(st.integers(1, 65535), st.integers(1, 65535), st.binary(max_size=40), st.sampled_from([0x02, 0x12, 0x10, 0x18, 0x11, 0x04]),
       st.booleans(), st.booleans(), st.sampled_from([*TCP, *UDP, 53, 2222]), st.booleans())
def test_the_inline_program_equals_the_plain_rule(sport: int, dport: int, payload: bytes, flags: int, is_udp: bool, v6: bool,
                                                  watched: int, to_server: bool) -> None:
    if to_server:
        dport = watched
    else:
        sport = watched
    a, b = ("2001:db8::1", "2001:db8:100::1") if v6 else ("192.0.2.1", "198.51.100.1")
    pkt = (t.udp(a, b, sport, dport, payload) if is_udp else t.tcp(a, b, sport, dport, 1, flags=flags, payload=payload))
    want = reference(pkt, (), (), connections=True, queued_udp=UDP, queued_tcp=TCP)
    assert (run(INLINE_PROG, pkt) > 0) == want
    if (is_udp and watched in UDP) or (not is_udp and watched in TCP):
        assert not want  # a queued port's packet, either direction, never on the ring


@settings(max_examples=300)
@given(st.binary(min_size=0, max_size=120), st.sampled_from([b"\x08\x00", b"\x86\xdd", b"\x81\x00"]), st.integers(0, 120))
def test_the_inline_program_equals_the_plain_rule_on_any_bytes(body: bytes, ethertype: bytes, cut: int) -> None:
    pkt = (b"\0" * 12 + ethertype + body)[: 14 + cut]
    assert (run(INLINE_PROG, pkt) > 0) == reference(pkt, (), (), connections=True, queued_udp=UDP, queued_tcp=TCP)


# -- names on any port (issue 32): the first bytes of a ClientHello, a request, a QUIC Initial --

ANY_PROG = build(TCP, UDP, any_port=True)
ANY_CONN_PROG = build(TCP, UDP, connections=True, any_port=True)
INLINE_ANY_PROG = build((), (), connections=True, queued_udp=UDP, queued_tcp=TCP, queued_any_port=True)
HELLO = t.client_hello("odd.example.com", ["h2"])
QUIC = t.quic_initial_datagrams("quic.example.com")[0]


@pytest.mark.parametrize(("pkt", "want"), [
    (t.tcp("192.0.2.1", "198.51.100.1", 40000, 3000, 1, payload=HELLO), True),
    (t.tcp("192.0.2.1", "198.51.100.1", 40000, 8888, 1, payload=b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), True),
    (t.tcp("192.0.2.1", "198.51.100.1", 40000, 8888, 1, payload=b"PROPFIND / HTTP/1.1\r\n"), True),
    (t.tcp("192.0.2.1", "198.51.100.1", 40000, 3000, 1, payload=b"\x16"), True),  # cut short: what follows is read inline
    (t.tcp("192.0.2.1", "198.51.100.1", 40000, 3000, 1, payload=b"GE"), True),
    (t.tcp("192.0.2.1", "198.51.100.1", 40000, 22, 1, payload=b"SSH-2.0-OpenSSH_9.2\r\n"), False),
    (t.tcp("192.0.2.1", "198.51.100.1", 40000, 25, 1, payload=b"EHLO mail.example.com\r\n"), False),
    (t.tcp("198.51.100.1", "192.0.2.1", 3000, 40000, 1, payload=b"\x16\x03\x03\x00\x5a\x02" + b"\0" * 80), False),  # ServerHello
    (t.tcp("192.0.2.1", "198.51.100.1", 40000, 3000, 1, payload=b"\x17\x03\x03" + b"x" * 500), False),  # TLS bulk
    (t.tcp("192.0.2.1", "198.51.100.1", 40000, 3000, 1, flags=0x10), False),  # bare ACK
    (t.udp("192.0.2.1", "198.51.100.1", 5000, 4433, QUIC), True),
    (t.udp("2001:db8::1", "2001:db8:100::1", 5000, 4433, QUIC), True),
    (t.udp("192.0.2.1", "198.51.100.1", 5000, 4433, QUIC[:1000]), False),  # not padded: not an Initial
    (t.udp("192.0.2.1", "198.51.100.1", 5000, 4433, QUIC[:1] + b"\x0a\x0a\x0a\x0a" + QUIC[5:]), False),  # unknown version
    (t.udp("192.0.2.1", "198.51.100.1", 5000, 51820, b"\x01" + b"\0" * 1300), False),  # WireGuard
])
def test_any_port_packets(pkt: bytes, want: bool) -> None:
    assert (run(ANY_PROG, pkt) > 0) is want
    assert reference(pkt, TCP, UDP, any_port=True) is want


def test_inline_any_port_keeps_queued_quic_off_the_ring() -> None:
    """Inline, an odd port's QUIC Initial arrives through the queue: never on the ring too (decided twice)."""
    quic = t.udp("192.0.2.1", "198.51.100.1", 5000, 4433, QUIC)
    other = t.udp("192.0.2.1", "198.51.100.1", 5000, 27015, b"\0" * 40)
    assert run(INLINE_ANY_PROG, quic) == 0 and run(INLINE_ANY_PROG, other) > 0
    assert not reference(quic, (), (), connections=True, queued_udp=UDP, queued_tcp=TCP, queued_any_port=True)


PAYLOADS = st.one_of(st.binary(max_size=60), st.sampled_from([HELLO, b"GET / HTTP/1.1\r\nHost: x.example\r\n\r\n", QUIC]),
                     st.builds(lambda p, n: p[:n], st.sampled_from([HELLO, b"HEAD /x HTTP/1.0\r\n\r\n"]), st.integers(1, 12)))


@settings(max_examples=400, deadline=None)
@given(st.integers(1, 65535), st.integers(1, 65535), PAYLOADS, st.sampled_from([0x02, 0x12, 0x10, 0x18, 0x11, 0x04]),
       st.booleans(), st.booleans(), st.booleans())
def test_on_any_port_every_frame_the_decoder_names_is_passed(sport: int, dport: int, payload: bytes, flags: int, is_udp: bool,
                                                             v6: bool, conns: bool) -> None:
    """The property of issue 32: for any port, the program passes every frame a live decoder names
    from it alone, and equals the plain rule."""
    from beiand.net.decoder import Decoder, DecoderConfig

    a, b = ("2001:db8::1", "2001:db8:100::1") if v6 else ("192.0.2.1", "198.51.100.1")
    pkt = (t.udp(a, b, sport, dport, payload) if is_udp else t.tcp(a, b, sport, dport, 1, flags=flags, payload=payload))
    prog = ANY_CONN_PROG if conns else ANY_PROG
    ok = run(prog, pkt) > 0
    assert ok == reference(pkt, TCP, UDP, connections=conns, any_port=True)
    d = Decoder(DecoderConfig(odd_rest=False))
    if [o for o in d.feed(1000.0, pkt) + d.flush() if o.name or o.kind.value == "ip-only"]:
        assert ok, "named, but the kernel filter drops it"


def test_any_port_programs_fit_the_kernel() -> None:
    assert max(len(ANY_PROG), len(ANY_CONN_PROG), len(INLINE_ANY_PROG)) < 4096


def test_many_watched_ports_still_fit_with_names_on_any_port() -> None:
    """Found in review (issue 32): the odd ports' test, copied at every level, made a program of 13
    watched ports too long for the kernel; it is one block now."""
    ports = list(range(8000, 8064))
    assert len(build(ports, UDP, any_port=True, connections=True)) < 4096
