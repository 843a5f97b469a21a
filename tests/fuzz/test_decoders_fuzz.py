"""Property tests: no decoder raises on junk; truncation never yields a wrong name."""

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from beiand.lab import traffic as t
from beiand.net.decoder import Decoder
from beiand.net.errors import DecodeError
from beiand.net.http import parse_requests
from beiand.net.quic import QuicInitialReader, parse_gquic_chlo
from beiand.net.tls import parse_client_hello

HELLO = t.client_hello("fuzz.example.com", ["h2"], big=True)
QUIC = t.quic_initial_datagrams("quicfuzz.example.com")[0]
FRAME = t.tcp("192.0.2.1", "198.51.100.1", 40000, 443, 1, payload=HELLO[:1400])
LINKTYPES = st.sampled_from([0, 1, 101, 113, 228, 229, 239, 276])


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000), LINKTYPES)
def test_decoder_never_raises(data, linktype):
    d = Decoder()
    d.feed(0.0, data, linktype)
    d.flush()
    assert not [k for k in d.drops if k.startswith("frame:")]  # junk ends in a DecodeError, not the catch-all


@settings(max_examples=300)
@given(st.integers(0, len(FRAME)), st.binary(max_size=50))
def test_truncated_frames_never_give_a_wrong_name(cut, junk):
    d = Decoder()
    out = d.feed(0.0, FRAME[:cut] + junk) + d.flush()
    assert all(o.name in ("", "fuzz.example.com") for o in out)


@settings(max_examples=300)
@given(st.integers(0, len(HELLO)), st.binary(max_size=40))
@example(5, b"")
def test_tls_prefix_then_garbage(cut, junk):
    try:
        ch = parse_client_hello(HELLO[:cut] + junk)
    except DecodeError:
        return
    assert ch is None or ch.sni == "fuzz.example.com"


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_http_never_raises_other(data):
    try:
        parse_requests(data)
    except DecodeError:
        pass


@settings(max_examples=200)
@given(st.integers(0, len(QUIC) - 1), st.integers(0, 255))
def test_quic_bitflips(pos, value):
    d = bytearray(QUIC)
    d[pos] = value
    try:
        ch = QuicInitialReader().feed(bytes(d))
    except DecodeError:
        return
    # AEAD: a changed packet either fails to decrypt or was not changed where it matters
    assert ch is None or ch.sni == "quicfuzz.example.com"


GQUIC = t.gquic_chlo("gq.example.com", b"Q043")
DRAFT = t.quic_initial("draft.example.com", 0xFF00001D, bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899"))


@settings(max_examples=300)
@given(st.integers(0, len(GQUIC)), st.integers(0, len(GQUIC) - 1), st.integers(0, 255))
@example(100, 0, 0x09)
def test_gquic_chlo_damaged_never_raises_other_or_lies(cut, pos, value):
    d = bytearray(GQUIC[:cut] if cut else GQUIC)
    if pos < len(d):
        d[pos] = value
    try:
        ch = parse_gquic_chlo(bytes(d))
    except DecodeError:
        return
    if ch is not None and pos >= 200 and cut == 0:  # damage in the padding after the CHLO: the name is intact
        assert ch.sni == "gq.example.com"


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(DRAFT) - 1), st.integers(0, 255), st.sampled_from([b"", b"\x00" * 4]))
def test_quic_any_version_damaged_decoder_never_raises(pos, value, tail):
    d = bytearray(DRAFT)
    d[pos] = value
    dec = Decoder()
    dec.feed(0.0, t.udp("192.0.2.1", "198.51.100.1", 5000, 443, bytes(d) + tail))
    dec.feed(0.0, t.udp("192.0.2.1", "198.51.100.1", 5001, 443, GQUIC[: pos % len(GQUIC)]))
