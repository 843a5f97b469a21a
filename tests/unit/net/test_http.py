import re
from itertools import pairwise

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from beiand.net import http
from beiand.net.errors import HttpError
from beiand.net.http import HttpRequest, host_of, parse_requests


@pytest.mark.parametrize(
    ("head", "host"),
    [
        (b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", "example.com"),
        (b"GET / HTTP/1.1\r\nhOsT:   Example.com:8080 \r\n\r\n", "Example.com"),
        (b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:8443\r\n\r\n", "2001:db8::1"),
        (b"GET http://abs.example.com:81/x?y HTTP/1.1\r\nHost: ignored.example\r\n\r\n", "abs.example.com"),
        (b"CONNECT tunnel.example.com:443 HTTP/1.1\r\n\r\n", "tunnel.example.com"),
        (b"GET / HTTP/1.0\n\n", ""),
    ],
)
def test_host(head, host):
    (req,) = parse_requests(head)
    assert req.host == host


def test_pipelining_and_bodies():
    data = (b"GET /a HTTP/1.1\r\nHost: a.example\r\n\r\n"
            b"POST /b HTTP/1.1\r\nHost: b.example\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /c HTTP/1.1\r\nHost: c.example\r\n\r\n")
    assert [r.host for r in parse_requests(data)] == ["a.example", "b.example", "c.example"]
    for i in range(1, len(data)):
        got = parse_requests(data[:i])
        assert got is None or all(r.host in ("a.example", "b.example", "c.example") for r in got)
    assert parse_requests(b"GET / HTTP/1.1\r\nHost: x") is None
    assert parse_requests(b"GE") is None


@pytest.mark.parametrize(("data", "reason"), [(b"\x16\x03\x01hello world", "not-http"), (b"GET /" + b"a" * 20000, "head-too-long"),
                                              (b"GET / FTP/1.0\r\n\r\n", "bad-request-line")])
def test_malformed(data, reason):
    with pytest.raises(HttpError) as exc:
        parse_requests(data)
    assert exc.value.reason == reason


def test_host_of():
    assert host_of("a.example:80") == "a.example" and host_of("[::1]") == "::1" and host_of("2001:db8::1") == "2001:db8::1"
    assert HttpRequest("GET", "/", "x")._fields == ("method", "target", "host", "malformed")


@given(st.lists(st.binary(min_size=1, max_size=40), max_size=6), st.lists(st.integers(0, 400), max_size=5),
       st.booleans(), st.binary(max_size=30))
def test_chunks_find_the_end_of_a_chunked_body_however_it_is_cut(chunks: list[bytes], cuts: list[int], trailer: bool,
                                                                 after: bytes) -> None:
    from beiand.net.http import Chunks

    body = b"".join(f"{len(c):x}".encode() + (b";x=1" if i % 2 else b"") + b"\r\n" + c + b"\r\n" for i, c in enumerate(chunks))
    body += b"0\r\n" + (b"X-T: 1\r\n" if trailer else b"") + b"\r\n"
    wire = body + after
    points = sorted({min(c, len(wire)) for c in cuts} | {0, len(wire)})
    reader, got, pos = Chunks(), -1, 0
    for a, b in pairwise(points):
        k = reader.feed(wire[a:b])
        if k >= 0:
            got = a + k
            break
        pos = b
    assert got == len(body), (got, len(body), pos)


@given(st.binary(max_size=200))
def test_chunks_on_any_bytes_end_raise_http_error_or_go_on(data: bytes) -> None:
    from beiand.net.http import Chunks

    try:
        k = Chunks().feed(data)
    except HttpError:
        return
    assert -1 <= k <= len(data)


# The header search replaced these regular expressions (issue 33): they stay here as the reference.
_REF = {
    b"content-length": re.compile(rb"\r?\ncontent-length[ \t]*:[ \t]*(\d+)", re.I),
    b"host": re.compile(rb"\r?\nhost[ \t]*:[ \t]*([^\r\n]*)", re.I),
    b"transfer-encoding": re.compile(rb"\r?\ntransfer-encoding[ \t]*:", re.I),
}
_PIECES = [b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b"0", b"7", b"42", b"x", b"Host", b"hOsT", b"host", b"HOST",
           b"Content-Length", b"content-LENGTH", b"Transfer-Encoding", b"transfer-encoding", b"a.example", b"-", b"\xc3\xa9",
           b"\xff", b"Hostx", b"content-lengthy"]


@given(st.lists(st.sampled_from(_PIECES), max_size=40))
@example([b"\n", b"Content-Length", b" ", b":", b"x", b"\r\n", b"content-length", b":", b"\t", b"7"])  # a second line counts
@example([b"\n", b"Host", b"\t", b" ", b":", b" ", b"a.example", b"\r", b"x"])
def test_header_search_agrees_with_the_regular_expressions(pieces: list[bytes]) -> None:
    head = b"".join(pieces)
    low = head.lower()
    for name, rx in _REF.items():
        m = rx.search(head)
        j = http._field(head, low, name, name == b"content-length")
        assert (j >= 0) == (m is not None), (name, head)
        if m is None:
            continue
        if name == b"content-length":
            assert http._digits_at(head, j) == int(m.group(1))
        elif name == b"host":
            assert http._line_at(head, j) == m.group(1)
    cl = _REF[b"content-length"].search(b"\n" + head)
    assert http.body_headers(head) == (int(cl.group(1)) if cl else -1, _REF[b"transfer-encoding"].search(b"\n" + head) is not None)
