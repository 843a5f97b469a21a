"""DNS messages (RFC 1035 section 4.1): question, response code, A/AAAA/CNAME answers.

Compression pointers (section 4.1.4) may only point backwards, so following them always ends;
a hop limit bounds the work on top. Names are returned as lower-case ASCII, no trailing dot.
"""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

from beiand.net.errors import DnsError

MAX_ANSWERS = 256
MAX_QUESTIONS = 16
MAX_HOPS = 64
TYPE_A, TYPE_CNAME, TYPE_AAAA = 1, 5, 28
_HDR = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")


class Answer(NamedTuple):
    name: str
    rtype: int
    ttl: int
    data: str  # the address for A/AAAA, the target name for CNAME, "" otherwise


class DnsMessage(NamedTuple):
    id: int
    response: bool
    rcode: int
    qname: str  # the first valid question's name
    qtype: int
    answers: tuple[Answer, ...]
    questions: tuple[str, ...] = ()  # every valid question's name, in order, without repeats


def read_name(buf: bytes, off: int) -> tuple[str, int]:
    """The name at ``off`` and the offset after it (after the first pointer, if any)."""
    # The walk takes bytes (typed so in dns.pxd for the compiled twin); anything else is copied first.
    return _read_name(buf if type(buf) is bytes else bytes(buf), off)


def _read_name(buf: bytes, off: int) -> tuple[str, int]:
    labels: list[str] = []
    end = -1
    hops = 0
    total = 0
    n = len(buf)
    while True:
        if off >= n:
            raise DnsError("truncated-name")
        ln = buf[off]
        if ln == 0:
            off += 1
            break
        if ln & 0xC0 == 0xC0:
            if off + 1 >= n:
                raise DnsError("truncated-name")
            ptr = ((ln & 0x3F) << 8) | buf[off + 1]
            if ptr >= off:
                raise DnsError("forward-pointer")  # no loops by construction
            hops += 1
            if hops > MAX_HOPS:
                raise DnsError("too-many-pointers")
            if end < 0:
                end = off + 2
            off = ptr
            continue
        if ln & 0xC0:
            raise DnsError("bad-label-type")
        off += 1
        if off + ln > n:
            raise DnsError("truncated-name")
        total += ln + 1
        if total > 255:
            raise DnsError("name-too-long")
        labels.append(buf[off : off + ln].decode("ascii", "backslashreplace").lower())
        off += ln
    return ".".join(labels), (end if end >= 0 else off)


def parse_dns(buf: bytes) -> DnsMessage:
    return _parse_dns(buf if type(buf) is bytes else bytes(buf))


def _parse_dns(buf: bytes) -> DnsMessage:
    if len(buf) < 12:
        raise DnsError("truncated-header")
    mid, flags, qd, an, _ns, _ar = _HDR.unpack_from(buf, 0)
    if flags & 0x7800:  # opcode other than QUERY
        raise DnsError("not-query")
    if qd == 0:
        raise DnsError("question-count")
    # RFC 1035 section 4.1.2. Nearly every message has one question; one with several yields
    # each valid name, and a bad one (bad label, loop) is skipped to the next root label.
    off = 12
    questions: list[str] = []
    qtype = 0
    first_error: DnsError | None = None
    for _ in range(min(qd, MAX_QUESTIONS)):
        try:
            name, after = _read_name(buf, off)
        except DnsError as exc:
            first_error = first_error or exc
            end = buf.find(b"\x00", off)
            if end < 0:
                break
            off = end + 5
            continue
        if after + 4 > len(buf):
            first_error = first_error or DnsError("truncated-question")
            break
        if not questions:
            qtype = (buf[after] << 8) | buf[after + 1]
        if name not in questions:
            questions.append(name)
        off = after + 4
    if not questions:
        raise first_error or DnsError("question-count")
    qname = questions[0]
    answers: list[Answer] = []
    for _ in range(min(an, MAX_ANSWERS)):
        name, off = _read_name(buf, off)
        if off + 10 > len(buf):
            raise DnsError("truncated-answer")
        rtype, _cls, ttl, rdlen = _RR.unpack_from(buf, off)
        off += 10
        if off + rdlen > len(buf):
            raise DnsError("truncated-rdata")
        data = ""
        if rtype == TYPE_A:
            if rdlen != 4:
                raise DnsError("bad-a-length")
            data = socket.inet_ntop(socket.AF_INET, buf[off : off + 4])
        elif rtype == TYPE_AAAA:
            if rdlen != 16:
                raise DnsError("bad-aaaa-length")
            data = socket.inet_ntop(socket.AF_INET6, buf[off : off + 16])
        elif rtype == TYPE_CNAME:
            data, after = _read_name(buf, off)
            if after > off + rdlen:
                raise DnsError("bad-cname-length")
        answers.append(Answer(name, rtype, ttl, data))
        off += rdlen
    return DnsMessage(mid, bool(flags & 0x8000), flags & 0xF, qname, qtype, tuple(answers), tuple(questions))


def resolve_chain(msg: DnsMessage, qname: str | None = None) -> tuple[list[str], list[tuple[str, int]]]:
    """Follow the CNAME chain from the question (``qname``, else the first): (chain of names, [(address, ttl)])."""
    cur = msg.qname if qname is None else qname
    chain = [cur]
    seen = {cur}
    for _ in range(16):
        nxt = next((a.data for a in msg.answers if a.rtype == TYPE_CNAME and a.name == cur), None)
        if nxt is None or nxt in seen:
            break
        chain.append(nxt)
        seen.add(nxt)
        cur = nxt
    addrs = [(a.data, a.ttl) for a in msg.answers if a.rtype in (TYPE_A, TYPE_AAAA) and a.name in seen]
    return chain, addrs
