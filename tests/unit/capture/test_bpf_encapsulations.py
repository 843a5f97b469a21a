"""The live daemon sees what replay sees: every frame the decoder names, the kernel filter accepts.

Checked with the Python interpreter of the program (``bpf.run``) over the test corpus and over
frames generated inside every encapsulation the decoder walks, nested two deep.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from beiand.capture import read_capture
from beiand.capture.bpf import build, reference, run
from beiand.lab import encap
from beiand.lab import traffic as t
from beiand.net.decoder import Decoder, DecoderConfig
from beiand.net.link import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_RAW

TCP, UDP = (80, 443, 8080, 8443), (443,)
PROG = build(TCP, UDP, any_port=True)  # the passive daemon's (issue 32: names on any port)
CORPUS = Path(__file__).parents[2] / "corpus"
LIVE = DecoderConfig(odd_rest=False)  # a live passive decoder: an odd port's first segment is all it gets
C4, S4, C6, S6 = "192.0.2.10", "198.51.100.10", "2001:db8:1::10", "2001:db8:100::10"


@cache
def inner_packets() -> dict[str, bytes]:
    """IP packets the decoder names on their own (one frame each), and some it must not."""
    hello = t.client_hello("tls.example.com", ["h2"])
    quic = t.quic_initial_datagrams("quic.example.com")[0]
    dns = t.dns_response("dns.example.com", ["198.51.100.7"])
    draft = t.quic_initial("draft.example.com", 0xFF00001D, bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899"))
    gquic = t.gquic_chlo("gquic.example.com", b"Q043")
    out = {}
    for v, (c, s) in (("4", (C4, S4)), ("6", (C6, S6))):
        out["tls" + v] = encap.strip_ether(t.tcp(c, s, 40000, 443, 1, payload=hello))
        out["http" + v] = encap.strip_ether(t.tcp(c, s, 40001, 80, 1, payload=b"GET / HTTP/1.1\r\nHost: http.example.com\r\n\r\n"))
        out["dns" + v] = encap.strip_ether(t.udp(s, c, 53, 3333, dns))
        out["dnstcp" + v] = encap.strip_ether(t.tcp(s, c, 53, 3334, 1, payload=len(dns).to_bytes(2, "big") + dns))
        out["quic" + v] = encap.strip_ether(t.udp(c, s, 40002, 443, quic))
        out["draft" + v] = encap.strip_ether(t.udp(c, s, 40003, 443, draft))
        out["gquic" + v] = encap.strip_ether(t.udp(c, s, 40004, 443, gquic))
        out["ack" + v] = encap.strip_ether(t.tcp(c, s, 40000, 443, 1, flags=0x10))
        out["answer" + v] = encap.strip_ether(t.tcp(s, c, 443, 40000, 1, payload=b"\x17\x03\x03" + b"x" * 200))
        out["short-quic" + v] = encap.strip_ether(t.udp(c, s, 40002, 443, b"\x41" + b"\x00" * 60))
        # issue 32: on ports not watched
        out["oddtls" + v] = encap.strip_ether(t.tcp(c, s, 40005, 3000, 1, payload=hello))
        out["oddhttp" + v] = encap.strip_ether(t.tcp(c, s, 40006, 8888, 1, payload=b"POST / HTTP/1.1\r\nHost: odd.example.com\r\n\r\n"))
        out["oddquic" + v] = encap.strip_ether(t.udp(c, s, 40007, 4433, quic))
        out["oddssh" + v] = encap.strip_ether(t.tcp(c, s, 40008, 22, 1, payload=b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"))
    return out


def names(frame: bytes, linktype: int = LINKTYPE_ETHERNET) -> list[str]:
    d = Decoder(LIVE)
    return [o.name for o in d.feed(1000.0, frame, linktype)]


def accepted(frame: bytes, prog: list[tuple[int, int, int, int]] = PROG) -> bool:
    return run(prog, frame) > 0


@pytest.mark.parametrize("step", sorted(encap.STEPS))
@pytest.mark.parametrize("kind", ["tls4", "tls6", "http4", "dns4", "dns6", "dnstcp4", "quic4", "quic6", "draft4", "gquic6"])
def test_each_encapsulation_named_and_accepted(step: str, kind: str) -> None:
    frame = encap.wrap(inner_packets()[kind], [step])
    assert names(frame), f"decoder names nothing in {step}/{kind}"
    assert accepted(frame), f"BPF drops {step}/{kind}"
    assert reference(frame, TCP, UDP)


@pytest.mark.parametrize("kind", ["ack4", "ack6", "answer4", "answer6", "short-quic4", "short-quic6"])
@pytest.mark.parametrize("steps", [[], ["vlan"], ["vxlan"], ["gre", "qinq"], ["gtpu-ext"], ["geneve", "mpls"]])
def test_bulk_rejected_inside_encapsulations(kind: str, steps: list[str]) -> None:
    assert not accepted(encap.wrap(inner_packets()[kind], steps))


@settings(max_examples=250, deadline=None)
@given(st.sampled_from(["tls4", "tls6", "http4", "http6", "dns4", "dns6", "dnstcp4", "dnstcp6", "quic4", "quic6",
                        "draft6", "gquic4", "ack4", "answer6", "short-quic4", "oddtls4", "oddtls6", "oddhttp4", "oddhttp6",
                        "oddquic4", "oddquic6", "oddssh4"]),
       st.lists(st.sampled_from(sorted(encap.STEPS)), max_size=4),
       st.lists(st.booleans(), max_size=4), st.booleans())
@example("tls4", ["gtpu-ext", "mpls-pw"], [True, False], False)
@example("quic6", ["pppoe-compressed", "geneve"], [False, True], True)
def test_every_named_frame_is_accepted(kind: str, steps: list[str], v6: list[bool], vlan: bool) -> None:
    frame = encap.wrap(inner_packets()[kind], steps, v6)
    if vlan:
        frame = encap.wrap(frame[14:], ["vlan"]) if frame[12:14] in (b"\x08\x00", b"\x86\xdd") else frame
    got = names(frame)
    ok = accepted(frame)
    assert ok == reference(frame, TCP, UDP, any_port=True)
    if got:
        assert ok, f"decoder names {got} in {steps}, BPF drops it"


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["tls4", "dns6", "quic4", "http6", "oddtls4", "oddhttp6", "oddquic4"]),
       st.lists(st.sampled_from(sorted(encap.STEPS)), max_size=2), st.integers(0, 400), st.integers(0, 255), st.integers(0, 200))
def test_program_equals_the_plain_rule_on_damaged_encapsulations(kind: str, steps: list[str], pos: int, value: int, cut: int) -> None:
    frame = bytearray(encap.wrap(inner_packets()[kind], steps))
    if pos < len(frame):
        frame[pos] = value
    damaged = bytes(frame[: max(0, len(frame) - cut)])
    assert accepted(damaged) == reference(damaged, TCP, UDP, any_port=True)
    # An odd port's test reads the payload, which a frame cut below its IP length no longer holds; the
    # kernel's filter always sees the whole packet (a capture's snap length cuts after it).
    if names(damaged) and (cut == 0 or not kind.startswith("odd")):
        assert accepted(damaged)


@pytest.mark.parametrize(("linktype", "head"), [
    (LINKTYPE_RAW, b""),
    (LINKTYPE_LINUX_SLL, b"\x00\x00\x00\x01\x00\x06" + b"\x02" * 8 + b"\x08\x00"),
])
def test_other_link_types(linktype: int, head: bytes) -> None:
    prog = build(TCP, UDP, linktype=linktype, any_port=True)
    pkts = inner_packets()
    assert accepted(head + pkts["tls4"], prog) and names(head + pkts["tls4"], linktype)
    assert not accepted(head + pkts["ack4"], prog)


CASES = sorted(p / "input.pcap" for p in CORPUS.iterdir() if (p / "input.pcap").exists())


@pytest.mark.parametrize("capture", CASES, ids=[c.parent.name for c in CASES])
def test_corpus_frames_named_are_accepted(capture: Path) -> None:
    d = Decoder(LIVE)
    named = 0
    for ts, lt, frame in read_capture(capture):
        if d.feed(ts, frame, lt):
            named += 1
            prog = PROG if lt == LINKTYPE_ETHERNET else build(TCP, UDP, linktype=lt, any_port=True)
            assert accepted(frame, prog), f"{capture.parent.name}: frame at {ts} named but dropped by BPF"
    assert named


def test_program_fits_the_kernel() -> None:
    assert len(PROG) < 4096


CONN_PROG = build(TCP, UDP, connections=True)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["tls4", "dns6", "quic4", "http6", "ack4"]), st.lists(st.sampled_from(sorted(encap.STEPS)), max_size=2),
       st.integers(0, 400), st.integers(0, 255), st.integers(0, 200))
def test_connection_program_equals_the_plain_rule_on_damaged_encapsulations(kind: str, steps: list[str], pos: int, value: int,
                                                                            cut: int) -> None:
    frame = bytearray(encap.wrap(inner_packets()[kind], steps))
    if pos < len(frame):
        frame[pos] = value
    damaged = bytes(frame[: max(0, len(frame) - cut)])
    assert accepted(damaged, CONN_PROG) == reference(damaged, TCP, UDP, connections=True)


def test_connection_program_fits_the_kernel() -> None:
    assert len(CONN_PROG) < 4096
