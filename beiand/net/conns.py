"""Connection records (issue 19): what the decoder keeps per five-tuple to log every new flow.

The decoder (``net/decoder.py``) keeps one :class:`Conn` per flow it sees start, on any port,
TCP and UDP, and turns it into a record once:
- a flow named on the same five-tuple (TLS/HTTP/QUIC, or the name pipeline's own ip-only give-up)
  carries the connection's fields in its observation: *one* record, never a second one;
- any other flow becomes an observation of kind ``conn`` when its coalescing window closes
  (``window`` seconds after its first packet), or later while the name pipeline still holds the
  flow waiting for its first bytes (at most the decoder's ``flow_timeout``).

Coalescing, not sampling: packets of the five-tuple, and new flows on it (a SYN again, a UDP
datagram after the idle timeout) that start inside the window, are counted into the one record.

Attempts (issue 32): a TCP flow whose SYN was seen and that the server never answered (no SYN+ACK
from it, no data and no FIN from either side) when its record falls due is an *attempt*: refused
(the server's RST came first) or unanswered. A flow that was never established is not anyone's
access, and a port scan would otherwise write a record per SYN; with ``attempts = "summarise"``
(the default) attempts are counted into one :class:`Attempts` summary per server address and
window, written as one record (reason ``not-named:attempts ...``); ``"each"`` keeps a record per
attempt. Every established flow keeps its own record either way.
"""

from __future__ import annotations

PENDING, NAMED, WRITTEN = 0, 1, 2

# Why a connection record carries no name (the record's reason is "not-named:" + one of these).
WHY_PORT = "unwatched-port"  # a port the name pipeline does not read (SSH, a game server, ...)
WHY_NO_DATA = "no-data"  # TCP: the handshake only, no client byte seen
WHY_MIDSTREAM = "midstream"  # TCP: joined an open connection (no SYN seen)
WHY_UNRECOGNISED = "unrecognised"  # bytes seen, but neither TLS, HTTP nor QUIC
WHY_DNS = "dns"  # a DNS exchange: its answers are logged as dns-answer records
WHY_EARLY = "table-full"  # written before its window closed: the connection table was full
WHY_ATTEMPTS = "attempts"  # a summary of the attempts (never established flows) at one server address

# An attempts summary's bounds: distinct client addresses and server ports are counted exactly up
# to these, beyond as a lower bound ("64+"); the summaries open at once hold at most the decoder's
# ``conn_max`` addresses and ports in all (beyond, the oldest is written early).
ATTEMPT_SOURCES = 64
ATTEMPT_PORTS = 1024
# The client of a summary of attempts from several addresses: the unspecified address of the
# server's family (RFC 4291 section 2.5.2, RFC 1122 section 3.2.1.3), port 0. Every sink stores it
# as it stores any address (the local log, ClickHouse's String columns, JSON lines).
SEVERAL4, SEVERAL6 = "0.0.0.0", "::"


class Conn:
    """One flow of a five-tuple, from its first packet to its record."""

    __slots__ = ("answered", "client", "cport", "data", "deadline", "first", "key", "last", "octets", "packets",
                 "refused", "seq1", "server", "sport", "state", "syn", "tcp")

    def __init__(self, ts: float, deadline: float, tcp: bool, client: bytes, server: bytes, cport: int, sport: int,
                 key: bytes, syn: bool) -> None:
        self.first = ts
        self.last = ts
        self.deadline = deadline
        self.tcp = tcp
        self.client = client
        self.server = server
        self.cport = cport
        self.sport = sport
        self.key = key  # client address, server address, client port, server port (the decoder's flow key)
        self.syn = syn
        self.data = False  # client bytes seen
        self.seq1 = -1  # TCP: the sequence number of the client's first byte, from its SYN (-1: no SYN seen)
        # TCP: the server answered (its SYN+ACK; or data or a FIN from either side) / refused (its
        # RST before any answer). A flow with its SYN seen and no answer is an attempt.
        self.answered = False
        self.refused = False
        self.packets = 0
        self.octets = 0
        self.state = PENDING


class Attempts:
    """The attempts at one server address counted while one summary is open (``window`` seconds
    from the first one counted): one record for all of them, written when it closes."""

    __slots__ = ("cport", "deadline", "first", "hi", "last", "lo", "n", "octets", "packets", "ports", "ports_over",
                 "refused", "server", "sources", "sources_over")

    def __init__(self, server: bytes, deadline: float, c: Conn) -> None:
        self.server = server
        self.deadline = deadline
        self.first = self.last = c.first
        self.lo = self.hi = c.sport
        self.cport = c.cport
        self.n = self.refused = self.packets = self.octets = 0
        self.sources: set[bytes] = set()
        self.ports: set[int] = set()
        self.sources_over = self.ports_over = False

    def add(self, c: Conn) -> int:
        """Count one attempt in; returns the addresses and ports newly held (the decoder's bound)."""
        self.n += 1
        if c.refused:
            self.refused += 1
        self.packets += c.packets
        self.octets += c.octets
        if c.first < self.first:
            self.first = c.first
        elif c.first > self.last:
            self.last = c.first
        if c.sport < self.lo:
            self.lo = c.sport
        elif c.sport > self.hi:
            self.hi = c.sport
        if c.cport != self.cport:
            self.cport = 0
        held = 0
        if c.client not in self.sources:
            if len(self.sources) < ATTEMPT_SOURCES:
                self.sources.add(c.client)
                held += 1
            else:
                self.sources_over = True
        if c.sport not in self.ports:
            if len(self.ports) < ATTEMPT_PORTS:
                self.ports.add(c.sport)
                held += 1
            else:
                self.ports_over = True
        return held

    def detail(self) -> str:
        """The record's reason: ``not-named:attempts`` and the counts (at most ~140 characters)."""
        return (f"not-named:{WHY_ATTEMPTS} n={self.n} refused={self.refused} unanswered={self.n - self.refused} "
                f"sources={len(self.sources)}{'+' if self.sources_over else ''} ports={self.lo}-{self.hi} "
                f"distinct={len(self.ports)}{'+' if self.ports_over else ''} span={self.last - self.first:.1f}s")

    def client(self) -> tuple[bytes | None, int]:
        """The record's client: the only source address (and its port, when it used only one),
        or None (several: the placeholder ``SEVERAL4``/``SEVERAL6``, port 0)."""
        if len(self.sources) == 1 and not self.sources_over:
            return next(iter(self.sources)), self.cport
        return None, 0


def client_first(tcp_flags: int, sport: int, dport: int, server_ports: frozenset[int]) -> bool:
    """Whether the sender of a flow's first packet seen is its client.

    TCP: a SYN's sender is the client, a SYN+ACK's the server. Otherwise (a flow already open, a
    UDP answer seen first): the side on a watched or DNS port, else on a port below 1024 facing one
    above, is the server.
    """
    if tcp_flags & 0x02:
        return not tcp_flags & 0x10
    if dport in server_ports:
        return True
    if sport in server_ports:
        return False
    return not (sport < 1024 <= dport)


def bound_url(target: str, max_len: int, keep_query: bool) -> str:
    """The URL path of an HTTP request target, for the log: absolute-form reduced to its path,
    the query string (personal data: names, phone numbers, tokens) and fragment cut unless
    ``keep_query``, control characters replaced, at most ``max_len`` characters."""
    if max_len <= 0 or not target:
        return ""
    if target[0] != "/" and "://" in target[:16]:  # absolute-form (RFC 9112 section 3.2.2): its path
        rest = target.split("://", 1)[1]
        slash = rest.find("/")
        target = rest[slash:] if slash >= 0 else "/"
    if not keep_query:
        for sep in "?#":
            cut = target.find(sep)
            if cut >= 0:
                target = target[:cut]
    else:
        cut = target.find("#")
        if cut >= 0:
            target = target[:cut]
    if not target.isprintable():  # percent-encoded, as in a URL (RFC 3986 section 2.1)
        target = "".join(ch if ch.isprintable() else "".join(f"%{x:02X}" for x in ch.encode("utf-8", "replace"))
                         for ch in target[:max_len])
    return target[:max_len]
