import pytest

from beiand.lab.traffic import client_hello
from beiand.net.errors import TlsError
from beiand.net.tls import ClientHello, parse_client_hello, parse_handshake


@pytest.mark.parametrize(
    ("sni", "alpn", "tls13", "version"),
    [("www.example.com", ("h2", "http/1.1"), True, "tls1.3"), ("v12.example.com", (), False, "tls1.2"), (None, (), True, "tls1.3")],
)
def test_real_client_hellos(sni, alpn, tls13, version):
    ch = parse_client_hello(client_hello(sni, alpn, tls13))
    assert ch == ClientHello(sni or "", tuple(alpn), version, False)


def test_h11_style_feeding():
    """Whole; one byte at a time (None until complete); with trailing bytes."""
    data = client_hello("split.example.com", ["h2"], big=True)
    assert len(data) > 1500
    for i in range(len(data)):
        assert parse_client_hello(data[:i]) is None
    assert parse_client_hello(data).sni == "split.example.com"
    assert parse_client_hello(data + b"\x17\x03\x03\x00\x05hello").sni == "split.example.com"


def test_handshake_fragmented_over_records():
    data = client_hello("frag.example.com")
    hs = data[5:]
    records = b"".join(b"\x16\x03\x01" + len(c).to_bytes(2, "big") + c for c in (hs[:100], hs[100:101], hs[101:]))
    assert parse_client_hello(records).sni == "frag.example.com"
    assert parse_handshake(hs).sni == "frag.example.com"


def test_ech_is_flagged():
    data = bytearray(client_hello("public.example.com"))
    # append an encrypted_client_hello extension (0xfe0d) and fix the three lengths
    ext = b"\xfe\x0d\x00\x04\x00\x01\x02\x03"
    hs = bytes(data[9:]) + b""
    body = bytearray(hs)
    ext_len_off = _extensions_length_offset(bytes(body))
    total = int.from_bytes(body[ext_len_off : ext_len_off + 2], "big") + len(ext)
    body[ext_len_off : ext_len_off + 2] = total.to_bytes(2, "big")
    body += ext
    msg = b"\x01" + len(body).to_bytes(3, "big") + bytes(body)
    rec = b"\x16\x03\x01" + len(msg).to_bytes(2, "big") + msg
    ch = parse_client_hello(rec)
    assert ch.ech and ch.sni == "public.example.com"


def _extensions_length_offset(b: bytes) -> int:
    off = 34
    off += 1 + b[off]
    off += 2 + int.from_bytes(b[off : off + 2], "big")
    off += 1 + b[off]
    return off


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x17\x03\x03\x00\x10", "not-handshake"),
        (b"GET / HTTP/1.1\r\n", "not-handshake"),
        (b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00", "not-client-hello"),
        (b"\x16\x03\x01\xff\xff", "bad-record-length"),  # an empty record is read through (OpenSSL does)
        (b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\x03\x03\x00\x00", "truncated-client-hello"),
    ],
)
def test_malformed(data, reason):
    with pytest.raises(TlsError) as exc:
        parse_client_hello(data)
    assert exc.value.reason == reason


def test_records_a_server_reads_through_are_read_through() -> None:
    """Issue 32: OpenSSL accepts an empty handshake record before the ClientHello, and the
    ClientHello cut over records with one byte in the first; both hid the SNI (the lab's server
    answered the unfiled name)."""
    from beiand.lab.traffic import client_hello
    from beiand.net.tls import sni_from_prefix, starts_client_hello

    hello = client_hello("unfiled.example.xyz")
    hs = hello[5:]
    empty_first = b"\x16\x03\x01\x00\x00" + hello
    one_byte_first = b"\x16\x03\x01\x00\x01" + hs[:1] + b"\x16\x03\x01" + (len(hs) - 1).to_bytes(2, "big") + hs[1:]
    three = b"".join(b"\x16\x03\x01" + len(p).to_bytes(2, "big") + p for p in (hs[:2], b"", hs[2:40], hs[40:]))
    for wire in (empty_first, one_byte_first, three):
        got = parse_client_hello(wire)
        assert got is not None and got.sni == "unfiled.example.xyz"
        assert sni_from_prefix(wire[:len(wire) - 10]) == "unfiled.example.xyz"
        assert starts_client_hello(wire[:6])
