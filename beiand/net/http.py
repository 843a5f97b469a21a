"""HTTP/1.x request heads (RFC 9112 sections 3 and 3.2): the Host of each request.

``parse_requests(buf)`` takes the first client bytes of a flow and returns the requests whose
heads are complete (pipelining: several may follow each other), ``None`` when the first head is
not complete yet, or raises :class:`HttpError` when the bytes are not HTTP/1.x.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from beiand.net.errors import HttpError
from beiand.net.link import HTTP_METHOD_PREFIXES

MAX_HEAD = 16384
MAX_REQUESTS = 16
_METHOD = re.compile(rb"^[A-Z][A-Z-]{1,15} ")
_KNOWN = HTTP_METHOD_PREFIXES
_EOL = (b"\r", b"\n")
_EOL_BYTES = b"\r\n"
def _field(head: bytes, low: bytes, name: bytes, digits: bool = False) -> int:
    """Where the value of the first header line ``name[ \\t]*:[ \\t]*`` starts in ``head`` (``low``:
    ``head.lower()``; ``name``: lower case, after its line's LF), or -1; ``digits``: the first whose
    value starts with a digit. The regular expressions ``\\r?\\nNAME[ \\t]*:[ \\t]*`` (ASCII case
    folded) did this at a third of a head's parse (issue 33); the tests keep them as the reference."""
    pat = b"\n" + name
    n = len(head)
    i = low.find(pat)
    while i >= 0:
        j = i + len(pat)
        while j < n and (head[j] == 32 or head[j] == 9):  # SP, HTAB
            j += 1
        if j < n and head[j] == 58:  # ":"
            j += 1
            while j < n and (head[j] == 32 or head[j] == 9):
                j += 1
            if not digits or (j < n and 48 <= head[j] <= 57):
                return j
        i = low.find(pat, i + 1)
    return -1


def _digits_at(head: bytes, j: int) -> int:
    """The decimal number that starts at ``j``."""
    k = j
    n = len(head)
    while k < n and 48 <= head[k] <= 57:
        k += 1
    return int(head[j:k])


def _line_at(head: bytes, j: int) -> bytes:
    """The rest of the line from ``j`` (to its CR or LF)."""
    n = len(head)
    k = j
    while k < n and head[k] != 13 and head[k] != 10:
        k += 1
    return head[j:k]


class HttpRequest(NamedTuple):
    method: str
    target: str
    host: str  # the authority's host: no port, IPv6 without brackets; "" when absent
    malformed: bool = False  # the request line is not ``method SP target SP HTTP/1.x``; the Host header named it


def looks_like_http(buf: bytes) -> bool:
    """True if ``buf`` starts like a request line (or could, being shorter than a method), after
    any empty lines (RFC 9112 section 2.2: a server ignores CRLFs before a request line; a client
    that sends them must not hide its Host)."""
    if buf[:1] in _EOL:
        buf = buf.lstrip(b"\r\n")
        if not buf:
            return True
    if len(buf) >= 4:
        return buf[:4] in _KNOWN or _METHOD.match(buf[:17]) is not None
    return bool(buf) and buf.isupper()


def starts_request(buf: bytes) -> bool:
    """Whether ``buf`` (at least one byte) may start a request line of a method a server takes
    (``net.link.HTTP_METHOD_PREFIXES``), after any empty lines: the test for a flow's first bytes on
    a port not watched (issue 32), stricter than :func:`looks_like_http` (SMTP's EHLO, FTP's USER
    and the like are not requests)."""
    if buf[:1] in _EOL:
        buf = buf.lstrip(b"\r\n")
        if not buf:
            return True
    head = buf[:4]
    n = len(head)
    return n > 0 and any(k[:n] == head for k in _KNOWN)


def not_http_line(buf: bytes) -> bool:
    """Whether the first line of ``buf`` is complete and not an HTTP/1.x request line (a Redis
    ``GET key``): on a port not watched, such bytes are another protocol, not a request."""
    buf = buf.lstrip(b"\r\n")
    nl = buf.find(b"\n", 0, MAX_HEAD)
    if nl < 0:
        return False
    line = buf[:nl].rstrip(b"\r\t ")
    return not (line[-9:-1] == b" HTTP/1." and line[-1:] in (b"0", b"1"))


def head_prefix(buf: bytes) -> bytes:
    """The complete lines of an unfinished request head, closed as a head (what a prefix shows)."""
    nl = buf.rfind(b"\n")
    return buf[: nl + 1] + b"\r\n" if nl >= 0 else b""


def host_of(authority: str) -> str:
    """``example.com:8080`` → ``example.com``; ``[2001:db8::1]:443`` → ``2001:db8::1``."""
    a = authority.strip()
    if a.startswith("["):
        end = a.find("]")
        return a[1:end] if end > 0 else a[1:]
    colon = a.rfind(":")
    if colon >= 0 and a.count(":") == 1 and (a[colon + 1 :].isdigit() or colon == len(a) - 1):
        return a[:colon]
    return a


def parse_requests(buf: bytes) -> list[HttpRequest] | None:
    return parse_requests_at(buf)[0]


def parse_requests_at(buf: bytes) -> tuple[list[HttpRequest] | None, int]:
    """``parse_requests`` and where the bytes after the last complete request start (its head and,
    by Content-Length, its body). Bytes from there on are the start of the next request head
    (keep-alive, pipelining: issue 32). A chunked body: ``-(start + 1)``, where it starts (its
    end is found by :class:`Chunks`)."""
    out: list[HttpRequest] = []
    off = 0
    n = len(buf)
    while len(out) < MAX_REQUESTS:
        while off < n and buf[off] in _EOL_BYTES:  # empty lines before a request line (RFC 9112 section 2.2)
            off += 1
        if off >= n:
            if not out:
                return None, 0
            break
        end = buf.find(b"\r\n\r\n", off, off + MAX_HEAD)
        sep = 4
        if end < 0:
            end = buf.find(b"\n\n", off, off + MAX_HEAD)
            sep = 2
        if end < 0:
            if not out and n - off > MAX_HEAD:
                raise HttpError("head-too-long")
            if not out:
                _check_line_start(buf, off)
                return None, 0
            break
        head = buf[off:end]
        if type(head) is not bytes:  # as in _parse_head
            head = bytes(head)
        out.append(_parse_head(head))
        off = end + sep
        low = head.lower()
        if _field(head, low, b"transfer-encoding") >= 0:  # RFC 9112 section 6.3: Transfer-Encoding wins over a Content-Length
            return out, -(off + 1)  # a chunked body starts at off: where it ends, Chunks tells
        j = _field(head, low, b"content-length", True)
        if j >= 0:
            off += _digits_at(head, j)
    return out, off


def body_headers(lines: bytes) -> tuple[int, bool]:
    """The Content-Length (-1: none) and whether Transfer-Encoding is there, in header lines."""
    lines = b"\n" + lines
    low = lines.lower()
    j = _field(lines, low, b"content-length", True)
    return (_digits_at(lines, j) if j >= 0 else -1), _field(lines, low, b"transfer-encoding") >= 0


def _check_line_start(buf: bytes, off: int) -> None:
    first = buf[off : off + 17]
    if len(first) >= 4 and not looks_like_http(first):
        raise HttpError("not-http")


def _parse_head(head: bytes) -> HttpRequest:
    if type(head) is not bytes:  # a bytearray's or memoryview's slice: the header search reads bytes
        head = bytes(head)
    nl = head.find(b"\n")
    line = head if nl < 0 else head[:nl]
    if line.endswith(b"\r"):
        line = line[:-1]
    parts = line.split(b" ")
    if len(parts) != 3 or not _METHOD.match(parts[0] + b" ") or not parts[2].startswith(b"HTTP/1."):
        # Servers that accept such a line exist (spaces in the target, HTTP/0.9-style, trailing
        # blanks); a flow left unnamed is what an evader wants, so a valid Host still names it.
        j = _field(head, head.lower(), b"host")
        host = host_of(_line_at(head, j).decode("latin-1")) if j >= 0 else ""
        if not host or not nl > 0:
            raise HttpError("bad-request-line")
        method = parts[0].decode("latin-1") if _METHOD.match(parts[0] + b" ") else ""
        return HttpRequest(method, parts[1].decode("latin-1") if len(parts) > 1 else "", host, True)
    method = parts[0].decode("ascii")
    target = parts[1].decode("latin-1")
    host = ""
    # RFC 9112 section 3.2.2: an absolute-form target's authority wins over Host.
    low = target[:8].lower()
    if low.startswith("http://") or low.startswith("https://"):
        rest = target.split("//", 1)[1]
        auth = rest.split("/", 1)[0].split("?", 1)[0]
        host = host_of(auth.rsplit("@", 1)[-1])
    elif method == "CONNECT":
        host = host_of(target)
    if not host:
        j = _field(head, head.lower(), b"host")
        if j >= 0:
            host = host_of(_line_at(head, j).decode("latin-1"))
    return HttpRequest(method, target, host)


MAX_CHUNK_LINE = 1024  # a chunk-size line with its extensions, or a trailer line


class Chunks:
    """The chunked transfer coding of a request body (RFC 9112 section 7.1), read as it comes:
    :meth:`feed` returns where in the bytes given the body ends (after its last chunk and its
    trailer section), or -1 while it goes on. Lenient as servers are (a bare LF ends a line).
    A size line that is not hex raises :class:`HttpError`."""

    __slots__ = ("left", "line", "phase", "total")

    SIZE, DATA, DATA_END, TRAILER = 0, 1, 2, 3

    def __init__(self) -> None:
        self.phase = Chunks.SIZE
        self.left = 0  # data bytes left in the chunk being read
        self.line = b""  # the line being read (size or trailer) so far
        self.total = 0  # bytes read

    def feed(self, data: bytes) -> int:
        n = len(data)
        i = 0
        while i < n:
            if self.phase == Chunks.DATA:
                take = min(self.left, n - i)
                self.left -= take
                i += take
                if not self.left:
                    self.phase = Chunks.DATA_END
                continue
            nl = data.find(b"\n", i)
            if nl < 0:
                self.line += data[i:]
                if len(self.line) > MAX_CHUNK_LINE:
                    raise HttpError("bad-chunk")
                break
            line = (self.line + data[i:nl]).rstrip(b"\r")
            self.line = b""
            i = nl + 1
            if self.phase == Chunks.DATA_END:  # the CRLF after a chunk's data
                if line:
                    raise HttpError("bad-chunk")
                self.phase = Chunks.SIZE
            elif self.phase == Chunks.SIZE:
                size = line.split(b";", 1)[0].strip(b" \t")
                if not size or len(size) > 16 or size.strip(b"0123456789abcdefABCDEF"):
                    raise HttpError("bad-chunk")
                self.left = int(size, 16)
                self.phase = Chunks.DATA if self.left else Chunks.TRAILER
            elif not line:  # the empty line after the trailer section: the body ends here
                self.total += i
                return i
        self.total += n
        return -1
