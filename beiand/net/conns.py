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


class Conn:
    """One flow of a five-tuple, from its first packet to its record."""

    __slots__ = ("client", "cport", "data", "deadline", "first", "key", "last", "octets", "packets", "seq1", "server",
                 "sport", "state", "syn", "tcp")

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
        self.data = False
        self.seq1 = -1  # TCP: the sequence number of the client's first byte, from its SYN (-1: no SYN seen)
        self.packets = 0
        self.octets = 0
        self.state = PENDING


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
