"""Frames → Observations: link and network layers, tunnels, bounded flow state, protocol dispatch.

sans-IO: ``Decoder.feed(ts, frame, linktype)`` takes one captured frame and returns the
observations it completes (usually none). It never raises on bad input: every ``DecodeError``
is caught here, in one place, and counted by layer and reason (``Decoder.drops``).

Link types, ethertypes and tunnel headers come from ``net/link.py``, the table the pcap reader
and the kernel's BPF program (``capture/bpf.py``) are built from too: what replay decodes, the
live daemon's filter passes (``tests/unit/capture/test_bpf_encapsulations.py``).

Flow state is bounded by count, bytes per flow and age, and dropped as soon as the name is
known; a flow once named (or given up) is remembered in a bounded "done" table so its bulk
data costs one dict probe.
"""

from __future__ import annotations

import socket
import struct
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass

from beiand.model import Kind, MetricKey, MetricValues, Observation, Transport
from beiand.net import conns as connmod
from beiand.net import dns as dnsmod
from beiand.net.conns import NAMED, PENDING, SEVERAL4, SEVERAL6, WRITTEN, Attempts, Conn, bound_url, client_first
from beiand.net.errors import DecodeError, IpError, LinkError, QuicError
from beiand.net.http import Chunks, body_headers, head_prefix, looks_like_http, not_http_line, parse_requests_at, starts_request
from beiand.net.link import (
    BPF_MAX_GTPU_EXTENSIONS,
    BPF_MAX_MPLS_LABELS,
    BPF_MAX_VLAN_TAGS,
    ERSPAN_II_HEADER,
    ETH_ERSPAN_II,
    ETH_IPV4,
    ETH_IPV6,
    ETH_MPLS,
    ETH_PPPOE_SESSION,
    ETH_TEB,
    ETH_VLAN,
    GENEVE_HEADER,
    GENEVE_PORT,
    GTPU_HEADER,
    GTPU_PORT,
    GTPU_TPDU,
    IP_IN_IP,
    IPPROTO_GRE,
    LINK_TYPES,
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NFLOG,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    MAX_DEPTH,
    NFLOG_TLV_PAYLOAD,
    PPP_IP,
    PPPOE_HEADER,
    SUPPORTED_LINKTYPES,
    VXLAN_FLAG_VNI,
    VXLAN_HEADER,
    VXLAN_PORT,
    Start,
)
from beiand.net.names import normalise_wire_name
from beiand.net.quic import MIN_INITIAL, V1, QuicInitialReader, gquic_version, initial_header, is_initial, parse_gquic_chlo, version_name
from beiand.net.reassembly import Budget, Stream
from beiand.net.tls import ClientHello, looks_like_tls, parse_client_hello, sni_from_prefix, starts_client_hello

__all__ = ["LINKTYPE_ETHERNET", "LINKTYPE_IPV4", "LINKTYPE_IPV6", "LINKTYPE_LINUX_SLL", "LINKTYPE_LINUX_SLL2", "LINKTYPE_LOOP",
           "LINKTYPE_NFLOG", "LINKTYPE_NULL", "LINKTYPE_RAW", "SUPPORTED_LINKTYPES", "Decoder", "DecoderConfig", "Flow"]
SYN, ACK, FIN, RST = 0x02, 0x10, 0x01, 0x04
MAX_DETAIL = 256  # Observation.detail: a log field, not a copy of the peer's ALPN list
_EMPTY: list[Observation] = []
# Exception types a frame was seen to raise past the decoders' own errors (issue 17), counted by
# name; any other type is counted as "other" so the metric's label set stays fixed.
FRAME_EXCEPTIONS = frozenset({"KeyError", "TypeError", "RecursionError", "MemoryError", "AttributeError",
                              "ZeroDivisionError", "OverflowError", "UnicodeError", "AssertionError", "LookupError"})
_PORTS = struct.Struct("!HH")  # two ports, as in a flow's key
_inet_ntop = socket.inet_ntop
_tuple_new = tuple.__new__


_TEXT: dict[bytes, str] = {}  # addresses in text, as met (a client and a hosted server come back)
_TEXT_MAX = 65536


def _ntop(af: int, addr: bytes) -> str:
    """An address in text (socket.inet_ntop's spelling), remembered: libc's inet_ntop cost ~2,000
    instructions an address (issue 33). IPv4 by hand, formatted in C in the compiled twin."""
    text = _TEXT.get(addr)
    if text is None:
        if len(_TEXT) >= _TEXT_MAX:
            _TEXT.clear()
        text = _TEXT[addr] = f"{addr[0]}.{addr[1]}.{addr[2]}.{addr[3]}" if len(addr) == 4 else _inet_ntop(af, addr)
    return text


def _u32(buf: bytes, i: int) -> int:
    """The big-endian 32-bit word at ``i`` (``struct.unpack_from("!I")``; past the end: IndexError)."""
    hi = buf[i]  # the compiled twin: a 64-bit integer, so that the shift cannot overflow a C int
    return (hi << 24) | (buf[i + 1] << 16) | (buf[i + 2] << 8) | buf[i + 3]
_TCP, _UDP, _CONN = Transport.TCP, Transport.UDP, Kind.CONN
# the reason of a connection record no name came for
_WHY_DNS, _WHY_PORT, _WHY_MIDSTREAM, _WHY_UNRECOGNISED, _WHY_NO_DATA, _WHY_EARLY = (
    "not-named:" + w for w in (connmod.WHY_DNS, connmod.WHY_PORT, connmod.WHY_MIDSTREAM, connmod.WHY_UNRECOGNISED,
                               connmod.WHY_NO_DATA, connmod.WHY_EARLY))
_AF4, _AF6 = socket.AF_INET, socket.AF_INET6
MAX_HEAD_SCAN = 1 << 18  # a request head is read up to this long for its Host (servers refuse longer ones)


@dataclass(frozen=True)
class DecoderConfig:
    tcp_ports: frozenset[int] = frozenset({80, 443, 8080, 8443})
    udp_ports: frozenset[int] = frozenset({443})  # QUIC
    dns_ports: frozenset[int] = frozenset({53})
    # Names on any port (issue 32): on a TCP port not watched, a connection whose first bytes start
    # a ClientHello or a request head of a known method is named as on a watched one; on a UDP port
    # not watched, a padded QUIC Initial of a known version. Other protocols there are not named
    # (nor judged by address): an odd port's connection is looked at once, at its first bytes.
    any_port: bool = True
    # Whether an odd port's later segments reach the decoder (replay; inline, through the ``more``
    # mark). A live passive capture passes only the segments that start a name (the kernel's filter
    # keeps no state): a ClientHello or head cut over segments is then named from its first one.
    odd_rest: bool = True
    # The frames include NFQUEUE's (inline): a SYN does not start its 4-tuple afresh (``feed(fresh=True)`` does).
    inline: bool = False
    max_flows: int = 65536
    max_flow_bytes: int = 16384  # enough for a post-quantum ClientHello split over segments
    flow_timeout: float = 30.0
    max_done: int = 262144
    max_fragments: int = 1024
    max_dns_tcp_bytes: int = 1 << 17
    # Per worker, bytes held by all reassemblies of one kind (issue 17): beyond, the oldest goes.
    reassembly_tcp_bytes: int = 32 << 20  # TCP first bytes and DNS over TCP
    reassembly_quic_bytes: int = 16 << 20  # QUIC CRYPTO streams
    reassembly_fragment_bytes: int = 8 << 20  # IP fragments
    max_flow_holes: int = 64  # pending out-of-order intervals per flow, datagram or CRYPTO stream
    # Connection records (issue 19, net/conns.py): every new TCP/UDP flow, on any port.
    conns: bool = False
    conn_window: float = 60.0  # coalescing window: one record per five-tuple per window
    conn_udp_idle: float = 60.0  # a UDP five-tuple silent this long starts a new flow
    conn_tcp_idle: float = 600.0  # a TCP five-tuple silent this long is forgotten (a later packet: a new flow)
    conn_max: int = 262144  # flows waiting for their record; beyond, the oldest is written early
    # TCP attempts (SYN seen, never answered: net/conns.py, issue 32): "summarise" (one record per
    # server address and window) or "each" (a record per attempt, as before)
    conn_attempts: str = "summarise"
    # A request body (Content-Length or chunked) up to this long is read to its end (inline: its
    # segments queued, the ``more`` mark), so a head right after it, in the segment where it ends,
    # is judged (issue 32); past it, a later head is read only from a segment that starts like one.
    body_follow: int = 65536
    url_max: int = 256  # HTTP: characters of the URL path kept
    url_query: bool = False  # HTTP: keep the query string (personal data: off by default)
    # The budget to find a flow's name (issue 36), besides ``max_flow_bytes``: packets of the flow
    # read (TCP data segments, QUIC datagrams) and seconds since its first one. A ClientHello still
    # not whole when either is spent is named ip-only from its address (reason ``budget-packets`` /
    # ``budget-seconds``), on the packet at hand, so that inline decides it while the kernel still
    # queues the flow (enforce.connbytes). A browser's 2 KB ClientHello takes 1 to 3 packets.
    # A fresh flow (``feed(fresh=True)``: inline, the SYN not seen) whose first bytes start no
    # protocol is held within the same budget for the segments before them (issue 22): its first
    # segments may have arrived swapped; spent, it is named ip-only (``unknown-protocol``).
    name_packets: int = 6
    name_seconds: float = 5.0


class Flow(Stream):
    """The first client bytes of one TCP connection, reassembled from segments in any order.

    ``syn``: the start is known (the SYN was seen); without it a segment before ``base`` moves
    the start back. ``fresh``: the connection's first bytes were seen (inline, the first queued
    packet), though perhaps not in order; ``held``: their start does not parse yet, and the
    decoder waits for a segment before it (bounded by the name budget, ``DecoderConfig.name_*``).
    ``segments``: data segments read (``DecoderConfig.name_packets``)."""

    __slots__ = ("ack", "base", "body", "client", "consumed", "data_ts", "dport", "fresh", "held", "later", "line", "named",
                 "odd", "scanned", "segments", "server", "sport", "syn", "ts")

    def __init__(self, base: int, syn: bool, ts: float, src: bytes, dst: bytes, sport: int, dport: int,
                 fresh: bool = False) -> None:
        # Stream.__init__, inlined: one Flow per new connection, on the hot path
        self.buf = b""
        self.starts = []
        self.chunks = []
        self.cost = 0
        self.base = base
        self.syn = syn
        self.fresh = fresh
        self.held = False
        self.segments = 0 if syn else 1
        self.ts = ts
        self.client = src
        self.server = dst
        self.sport = sport
        self.dport = dport
        self.consumed = 0
        self.ack = -1  # the ack of its first data segment: the server's ISN + 1 names the connection
        self.data_ts = ts  # the time of its first data (the name budget's clock; after a SYN: set then)
        self.later = False  # a later request head of a named HTTP/1.x connection (keep-alive, issue 32)
        self.odd = False  # on a port not watched: another protocol is not named (issue 32)
        self.named = False  # named from its head's first lines, read on to the head's end (issue 32)
        self.line = b""  # a head read on past max_flow_bytes: its request line (the lines after it dropped)
        self.scanned = 0  # and the bytes dropped so far
        self.body = -1  # and what the dropped lines said of its body: a Content-Length, -2 chunked, -1 none

    def add(self, seq: int, data: bytes, limit: int, max_holes: int = 64) -> int:
        """Add a segment; how much the contiguous prefix grew (0: not; -1: too many holes)."""
        off = (seq - self.base) & 0xFFFFFFFF
        if off >= 0x80000000:  # before our base: we missed the first segment
            if self.syn:
                return 0  # a retransmission of something before the SYN: ignore
            shift = (self.base - seq) & 0xFFFFFFFF
            if shift + self.extent > limit:
                return 0
            self.shift(shift)
            self.base = seq
            off = 0
        return self.insert(off, data, limit, max_holes)


class FragmentBuffer(Stream):
    __slots__ = ("total", "ts")

    def __init__(self, ts: float) -> None:
        Stream.__init__(self)
        self.ts = ts
        self.total = -1


def _other_protocol(flow: Flow) -> bool:
    """A flow on a port not watched whose bytes (if any) start no name: another protocol (issue 32)."""
    return flow.odd and not (looks_like_tls(flow.buf) or (bool(flow.buf) and looks_like_http(flow.buf[:17])))


def _client_initial(buf: bytes, l4: int, end: int) -> bool:
    """The UDP datagram at ``l4`` is a client's QUIC Initial by its shape (padded, long header, a known version)."""
    return end - l4 >= 8 + MIN_INITIAL and initial_header(buf[l4 + 8], _u32(buf, l4 + 9))


class Decoder:
    """Decodes frames into observations; one per connection or DNS answer, never per packet."""

    def __init__(self, config: DecoderConfig | None = None) -> None:
        self.config = cfg = config or DecoderConfig()
        self.tcp_ports = cfg.tcp_ports
        self.udp_ports = cfg.udp_ports
        self.dns_ports = cfg.dns_ports
        # OrderedDicts: evicting the oldest is O(1) (a plain dict's next(iter()) slows down
        # as deleted slots pile up at its front).
        self.flows: OrderedDict[bytes, Flow] = OrderedDict()
        self.dns_flows: OrderedDict[bytes, Flow] = OrderedDict()
        self.quic: OrderedDict[bytes, tuple[float, QuicInitialReader]] = OrderedDict()
        self.frags: OrderedDict[tuple[bytes, bytes, int, int], FragmentBuffer] = OrderedDict()
        # Flows already named or given up, in two generations: the older one is dropped whole. The
        # value names the connection (TCP: the ack of its first data, the server's ISN + 1; QUIC:
        # the client's first Destination Connection ID; else -1), so that a packet marked as its
        # connection's first is told from a new connection on the same 4-tuple (issue 36).
        self.done: dict[bytes, int | bytes] = {}
        self._done_old: dict[bytes, int | bytes] = {}
        # HTTP/1.x connections already named, with the hosts named on them (issue 32): a later
        # request head on one (keep-alive, pipelining) is read and judged too, not only the first.
        self.http_hosts: OrderedDict[bytes, frozenset[str]] = OrderedDict()
        # the start of the head after the last complete one (its bytes; b"": a Content-Length body's
        # end; a Chunks: where a chunked body goes on)
        self._next_head: tuple[Flow, int, bytes | Chunks] | None = None
        self.http_body_end: dict[bytes, int] = {}  # a connection's request body ends there: no head before it
        self.http_chunks: dict[bytes, tuple[int, Chunks]] = {}  # a chunked body read on: the next byte's seq, its state
        self._body_left = 0  # the frame's connection: request body bytes still to read before a head (inline: queued)
        self._head_done = False  # the frame completed an HTTP/1.x request head
        self.drops: Counter[str] = Counter()  # what was dropped, by layer:reason
        self._seg: tuple[int, int, int] = (0, 0, 0)  # the TCP segment being decoded: seq, ack, payload length
        self.stats: Counter[str] = Counter()  # what was seen
        self.packets = 0
        self.bytes = 0
        self.server_to_client = 0  # TCP packets from a watched port: skipped
        self._out: list[Observation] = []
        self._clock = 0.0
        self.budgets = {"tcp": Budget("tcp", cfg.reassembly_tcp_bytes), "quic": Budget("quic", cfg.reassembly_quic_bytes),
                        "fragment": Budget("fragment", cfg.reassembly_fragment_bytes)}
        self._tcp_budget = self.budgets["tcp"]
        self._current: bytes | tuple[bytes, bytes, int, int] | None = None  # the flow the frame touches
        # Connection records (issue 19): flows by five-tuple, each under both directions' keys, in
        # two generations per protocol (the older one dropped whole after the idle timeout), and
        # the flows whose record is still to be written, oldest first.
        self.tcp_conns: dict[bytes, Conn] | None = {} if cfg.conns else None
        self.udp_conns: dict[bytes, Conn] | None = {} if cfg.conns else None
        self._tcp_conns_old: dict[bytes, Conn] = {}
        self._udp_conns_old: dict[bytes, Conn] = {}
        self._conn_swap = {"tcp": 0.0, "udp": 0.0}
        self.conn_pending: deque[Conn] = deque()
        self.conn_new = 0  # flows started (each gets one record)
        self._conn_window, self._conn_udp_idle = cfg.conn_window, cfg.conn_udp_idle
        # Attempts being summarised (issue 32), by server address, oldest summary first; the
        # addresses and ports they hold in all (bounded by conn_max).
        self._summarise = cfg.conn_attempts == "summarise"
        self.attempts: dict[bytes, Attempts] = {}
        self._attempts_held = 0
        self._ntop_cache: dict[bytes, str] = {}  # server addresses in text (hosted ones repeat)
        self._server_ports = cfg.tcp_ports | cfg.udp_ports | cfg.dns_ports
        self._tunnel_ports = frozenset({VXLAN_PORT, GENEVE_PORT, GTPU_PORT})
        self._fresh = False  # the frame being decoded starts its connection (``feed(fresh=True)``)
        self._any_port = cfg.any_port
        self._inline = cfg.inline
        # Inline: connections whose packet was dropped (their verdict: block), by 4-tuple, with the
        # time. Their later packets are dropped too: a dropped QUIC Initial's retransmission comes
        # marked first again (its conntrack entry died with it) and is the same connection.
        self.blocked: OrderedDict[bytes, float] = OrderedDict()

    # -- entry point ----------------------------------------------------------------------

    def feed(self, ts: float, frame: bytes, linktype: int = LINKTYPE_ETHERNET, fresh: bool = False) -> list[Observation]:
        """The observations this frame completes. ``fresh``: the frame is known to be the first of
        its connection that the decoder is shown (inline: the kernel's conntrack says so, where the
        SYN is not queued), so what the decoder remembers of its 4-tuple belongs to an older
        connection and is forgotten, as on a SYN."""
        self.packets += 1
        self._fresh = fresh
        self._body_left = 0
        self._head_done = False
        self.bytes += len(frame)
        # bytes, whatever buffer the frame came in: the compiled twin reads it typed (issue 33); a
        # capture's frames are bytes already (pcap, the ring's slices, NFQUEUE's payloads)
        buf = frame if type(frame) is bytes else bytes(frame)
        out = self._out
        self._current = None
        try:
            if linktype == LINKTYPE_ETHERNET:
                # Fast path: Ethernet + IPv4 without options or fragments + TCP, the bulk of a link.
                n = len(buf)
                if n >= 42 and buf[12] == 8 and buf[13] == 0 and buf[14] == 0x45 \
                        and not (buf[20] & 0x3F or buf[21]):
                    proto = buf[23]
                    total = (buf[16] << 8) | buf[17]
                    if total < 20:  # 0: a TSO frame as captured on the sender; else invalid
                        end = n if total == 0 else 34
                    else:
                        end = min(14 + total, n)
                    if proto == 6 and n >= 54:
                        if ((buf[36] << 8) | buf[37]) not in self.tcp_ports and ((buf[34] << 8) | buf[35]) in self.tcp_ports \
                                and self.tcp_conns is None:
                            self.server_to_client += 1  # the server's answer: nothing to name
                        else:
                            self._tcp(ts, buf, 34, end, buf[26:30], buf[30:34], False, 26)
                    elif proto == 17:
                        self._udp(ts, buf, 34, end, buf[26:30], buf[30:34], False, 0, 26)
                    else:
                        self._ip(ts, buf, 14, 0)
                elif n >= 62 and buf[12] == 0x86 and buf[13] == 0xDD and buf[14] >> 4 == 6 and buf[20] in (6, 17):
                    # Ethernet + IPv6 without extension headers, TCP or UDP
                    plen = (buf[18] << 8) | buf[19]
                    end = min(54 + plen, n) if plen else n
                    if buf[20] == 6:
                        self._tcp(ts, buf, 54, end, buf[22:38], buf[38:54], True, 22)
                    else:
                        self._udp(ts, buf, 54, end, buf[22:38], buf[38:54], True, 0, 22)
                else:
                    self._ether(ts, buf, 0, 0)
            else:
                lt = LINK_TYPES.get(linktype)
                if lt is None:
                    raise LinkError("unsupported-linktype")
                off = lt.offset
                if len(buf) <= off:
                    raise LinkError("truncated-" + lt.name)
                if lt.start is Start.IP:
                    self._ip(ts, buf, off, 0)
                elif lt.start is Start.ETHERTYPE:
                    et = lt.ethertype_at
                    self._ethertype(ts, buf, off, (buf[et] << 8) | buf[et + 1], 0)
                elif lt.start is Start.NFLOG:
                    self._nflog(ts, buf, off)
                else:
                    self._ether(ts, buf, off, 0)
        except DecodeError as exc:
            self.drops[f"{exc.layer}:{exc.reason}"] += 1
        except (IndexError, struct.error, ValueError):
            # Defensive: a length check we missed must still not stop the daemon.
            self.drops["net:malformed"] += 1
            self._drop_current(ts)
        except Exception as exc:  # issue 17: nothing a frame holds may stop the worker
            # A bug, not junk: counted by exception type; the frame and its flow are dropped.
            name = type(exc).__name__
            self.drops["frame:" + (name if name in FRAME_EXCEPTIONS else "other")] += 1
            self._drop_current(ts)
        if ts - self._clock > 1.0:
            self._clock = ts
            self._expire(ts)
        if out:
            self._out = []
            return out
        return _EMPTY

    def tick(self, now: float) -> list[Observation]:
        """No frame for a while (a quiet link): expire flows and write the connection records whose
        window closed, as a frame at ``now`` would. Returns the observations that completes."""
        if now - self._clock > 1.0:
            self._clock = now
            self._expire(now)
        out, self._out = self._out, []
        return out

    def flush(self) -> list[Observation]:
        """End of input: flows that never showed a name become ip-only observations."""
        self._seg = (0, 0, 0)  # no packet of theirs at hand
        for flow in list(self.flows.values()):
            if flow.buf:  # a SYN alone is no one's name (as when it expires, _expire): its connection record says so
                self._give_up(flow, flow.ts, "unknown-protocol" if flow.held else "incomplete")
        if self.tcp_conns is not None:
            self._conn_sweep(self._clock, final=True)
        self.flows.clear()
        self.dns_flows.clear()
        self.quic.clear()
        self.frags.clear()
        for b in self.budgets.values():
            b.held = 0
        out, self._out = self._out, []
        return out

    @property
    def flow_count(self) -> int:
        return len(self.flows) + len(self.dns_flows) + len(self.quic)

    def metrics(self) -> MetricValues:
        """The decoder's own counters (cumulative) and its flow gauge, by Prometheus series
        (``runtime/metrics.py``): drops by ``layer:reason``, frames the kernel filter passed
        without following every header, reassemblies evicted by kind, name budgets spent."""
        m: MetricValues = {MetricKey("beiand_decode_errors", (k,)): v for k, v in self.drops.items()}
        stats = self.stats
        m[MetricKey("beiand_capture_bpf_unfollowed")] = stats["capture:bpf-unfollowed"]
        for kind, b in self.budgets.items():
            m[MetricKey("beiand_reassembly_evicted", (kind,))] = b.evicted
        for budget in ("packets", "seconds"):
            m[MetricKey("beiand_flow_name_budget_spent", (budget,))] = stats["flow:budget-" + budget]
        m[MetricKey("beiand_flows")] = self.flow_count  # a gauge
        if self.tcp_conns is not None:  # attempts summarised (issue 32)
            refused = stats["conn:attempts-refused"]
            m[MetricKey("beiand_connection_attempts", ("refused",))] = refused
            m[MetricKey("beiand_connection_attempts", ("unanswered",))] = stats["conn:attempts"] - refused
            m[MetricKey("beiand_connection_attempt_summaries")] = stats["conn:attempt-summaries"]
        return m

    # -- bounds (issue 17) ----------------------------------------------------------------

    def _drop_current(self, ts: float) -> None:
        """Forget the flow (or datagram) the failing frame belonged to."""
        key = self._current
        self._current = None
        if key is None:
            return
        if isinstance(key, tuple):
            fb = self.frags.pop(key, None)
            if fb is not None:
                self.budgets["fragment"].held -= fb.cost
            return
        key = bytes(key)  # the failing frame may have been a bytearray or memoryview
        for table in (self.flows, self.dns_flows):
            flow = table.pop(key, None)
            if flow is not None:
                self._tcp_budget.held -= flow.cost
        entry = self.quic.pop(key, None)
        if entry is not None:
            self.budgets["quic"].held -= entry[1].crypto.cost
        self._mark_done(key, -1)

    def _evict_tcp(self, ts: float) -> None:
        """Over the TCP budget: drop the oldest flows (first bytes or DNS over TCP) until under."""
        b = self._tcp_budget
        flows, dns_flows = self.flows, self.dns_flows
        seg = self._seg
        while b.held > b.limit and (flows or dns_flows):
            if flows and (not dns_flows or next(iter(flows.values())).ts <= next(iter(dns_flows.values())).ts):
                k, flow = flows.popitem(last=False)
                self._mark_done(k, flow.ack)
                if flow.buf:
                    # another flow's packet is being decoded: no sequence numbers of its own (see _expire)
                    self._seg = seg if k == self._current else (0, 0, 0)
                    self._give_up(flow, ts, "evicted")
                    self._seg = seg
            else:
                k, flow = dns_flows.popitem(last=False)
            b.held -= flow.cost
            b.evicted += 1
            self.drops["reassembly:evicted-tcp"] += 1

    def _evict_quic(self) -> None:
        b = self.budgets["quic"]
        while b.held > b.limit and self.quic:
            k, (_, reader) = self.quic.popitem(last=False)
            self._mark_done(k, reader.dcid)
            b.held -= reader.crypto.cost
            b.evicted += 1
            self.drops["reassembly:evicted-quic"] += 1

    def _evict_fragments(self) -> None:
        b = self.budgets["fragment"]
        while b.held > b.limit and self.frags:
            _, fb = self.frags.popitem(last=False)
            b.held -= fb.cost
            b.evicted += 1
            self.drops["reassembly:evicted-fragment"] += 1

    # -- link layer -----------------------------------------------------------------------

    def _ether(self, ts: float, buf: bytes, off: int, depth: int) -> None:
        if len(buf) < off + 14:
            raise LinkError("truncated-ethernet")
        self._ethertype(ts, buf, off + 14, (buf[off + 12] << 8) | buf[off + 13], depth)

    def _ethertype(self, ts: float, buf: bytes, off: int, et: int, depth: int) -> None:
        n = len(buf)
        tags = 0
        while True:
            if et in (ETH_IPV4, ETH_IPV6):
                self._ip(ts, buf, off, depth)
                return
            if et in ETH_VLAN:  # 802.1Q / QinQ
                if n < off + 4:
                    raise LinkError("truncated-vlan")
                et = (buf[off + 2] << 8) | buf[off + 3]
                off += 4
                tags += 1
                if tags == BPF_MAX_VLAN_TAGS + 1:
                    self.stats["capture:bpf-unfollowed"] += 1
                continue
            if et in ETH_MPLS:  # MPLS label stack (RFC 3032)
                labels = 0
                while True:
                    if n < off + 4:
                        raise LinkError("truncated-mpls")
                    bos = buf[off + 2] & 1
                    off += 4
                    labels += 1
                    if bos:
                        break
                if labels > BPF_MAX_MPLS_LABELS:
                    self.stats["capture:bpf-unfollowed"] += 1
                if off >= n:
                    raise LinkError("truncated-mpls")
                nib = buf[off] >> 4
                if nib in (4, 6):
                    self._ip(ts, buf, off, depth)
                elif nib == 0 and depth < MAX_DEPTH:  # pseudowire control word, then Ethernet
                    self._ether(ts, buf, off + 4, depth + 1)
                else:
                    self.drops["link:mpls-payload"] += 1
                return
            if et == ETH_PPPOE_SESSION:  # PPPoE session (RFC 2516) + PPP protocol
                off += PPPOE_HEADER
                if n < off + 1:
                    raise LinkError("truncated-pppoe")
                if buf[off] & 1:  # RFC 1661 section 6.5: a compressed, one-byte protocol field
                    proto = buf[off]
                    off += 1
                else:
                    if n < off + 2:
                        raise LinkError("truncated-pppoe")
                    proto = (buf[off] << 8) | buf[off + 1]
                    off += 2
                if proto in PPP_IP:
                    self._ip(ts, buf, off, depth)
                else:
                    self.stats["link:pppoe-control"] += 1
                return
            self.stats["link:not-ip"] += 1
            return

    def _nflog(self, ts: float, buf: bytes, off: int) -> None:
        # NFLOG (LINKTYPE_NFLOG): TLVs in host byte order, each padded to 4 bytes; the packet
        # (from its network header) is the value of NFULA_PAYLOAD.
        n = len(buf)
        while off + 4 <= n:
            ln = buf[off] | (buf[off + 1] << 8)
            typ = (buf[off + 2] | (buf[off + 3] << 8)) & 0x7FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
            if ln < 4 or off + ln > n:
                raise LinkError("bad-nflog-tlv")
            if typ == NFLOG_TLV_PAYLOAD:
                self._ip(ts, buf[: off + ln], off + 4, 0)
                return
            off += (ln + 3) & ~3
        self.stats["link:nflog-no-payload"] += 1

    # -- network layer --------------------------------------------------------------------

    def _ip(self, ts: float, buf: bytes, off: int, depth: int) -> None:
        n = len(buf)
        if off >= n:
            raise IpError("truncated-ip")
        ver = buf[off] >> 4
        if ver == 4:
            if n < off + 20:
                raise IpError("truncated-ipv4")
            ihl = (buf[off] & 0x0F) << 2
            if ihl < 20 or n < off + ihl:
                raise IpError("bad-ihl")
            total = (buf[off + 2] << 8) | buf[off + 3]
            end = off + total if total else n  # 0: TSO frame as captured on the sending host
            if total and total < ihl:
                raise IpError("bad-total-length")
            if end > n:
                end = n  # snap length cut the packet: decode what is there
            proto = buf[off + 9]
            src = buf[off + 12 : off + 16]
            dst = buf[off + 16 : off + 20]
            frag = ((buf[off + 6] << 8) | buf[off + 7]) & 0x3FFF
            l4 = off + ihl
            if frag:
                if proto != 17:
                    self.drops["ip:fragment-not-udp"] += 1
                    return
                ident = (buf[off + 4] << 8) | buf[off + 5]
                self._fragment(ts, src, dst, ident, (frag & 0x1FFF) << 3, bool(frag & 0x2000), buf[l4:end], 4, depth)
                return
            v6 = False
        elif ver == 6:
            if n < off + 40:
                raise IpError("truncated-ipv6")
            plen = (buf[off + 4] << 8) | buf[off + 5]
            end = off + 40 + plen if plen else n
            if end > n:
                end = n
            proto = buf[off + 6]
            src = buf[off + 8 : off + 24]
            dst = buf[off + 24 : off + 40]
            l4 = off + 40
            if proto in (0, 43, 60, 51):
                self.stats["capture:bpf-unfollowed"] += 1
            # Extension headers (RFC 8200 section 4)
            for _ in range(8):
                if proto in (0, 43, 60):
                    if l4 + 2 > end:
                        raise IpError("truncated-ext-header")
                    proto, l4 = buf[l4], l4 + ((buf[l4 + 1] + 1) << 3)
                elif proto == 51:  # AH
                    if l4 + 2 > end:
                        raise IpError("truncated-ext-header")
                    proto, l4 = buf[l4], l4 + ((buf[l4 + 1] + 2) << 2)
                elif proto == 44:  # Fragment
                    if l4 + 8 > end:
                        raise IpError("truncated-ext-header")
                    nh = buf[l4]
                    fo = ((buf[l4 + 2] << 8) | buf[l4 + 3])
                    more = bool(fo & 1)
                    fo &= 0xFFF8
                    if fo == 0 and not more:  # atomic fragment (RFC 6946)
                        proto, l4 = nh, l4 + 8
                        continue
                    if nh != 17:
                        self.drops["ip:fragment-not-udp"] += 1
                        return
                    ident = _u32(buf, l4 + 4)
                    self._fragment(ts, src, dst, ident, fo, more, buf[l4 + 8 : end], 6, depth)
                    return
                else:
                    break
            if l4 > end:
                raise IpError("truncated-ext-header")
            v6 = True
        else:
            raise IpError("bad-version")
        if proto == 6:
            # the addresses lie right before the ports where no option or extension header is between
            self._tcp(ts, buf, l4, end, src, dst, v6, (l4 - 32 if v6 else l4 - 8) if l4 - off == (40 if v6 else 20) else -1)
        elif proto == 17:
            self._udp(ts, buf, l4, end, src, dst, v6, depth, (l4 - 32 if v6 else l4 - 8) if l4 - off == (40 if v6 else 20) else -1)
        elif proto in IP_IN_IP:  # IP-in-IP, 6in4 (RFC 2003, RFC 4213)
            if depth >= MAX_DEPTH:
                raise IpError("too-deep")
            self._ip(ts, buf[:end], l4, depth + 1)
        elif proto == IPPROTO_GRE:
            self._gre(ts, buf[:end], l4, depth)
        else:
            self.stats["ip:other-protocol"] += 1

    def _gre(self, ts: float, buf: bytes, off: int, depth: int) -> None:
        # RFC 2784 / 2890; ERSPAN type II (0x88BE) carries Ethernet after 8 bytes
        if depth >= MAX_DEPTH:
            raise IpError("too-deep")
        if len(buf) < off + 4:
            raise IpError("truncated-gre")
        flags = buf[off]
        proto = (buf[off + 2] << 8) | buf[off + 3]
        off += 4 + 4 * (bool(flags & 0x80) + bool(flags & 0x20) + bool(flags & 0x10))
        if proto in (ETH_IPV4, ETH_IPV6):
            self._ip(ts, buf, off, depth + 1)
        elif proto == ETH_TEB:
            self._ether(ts, buf, off, depth + 1)
        elif proto == ETH_ERSPAN_II:
            self._ether(ts, buf, off + ERSPAN_II_HEADER, depth + 1)
        else:
            self.stats["gre:other-protocol"] += 1

    def _fragment(self, ts: float, src: bytes, dst: bytes, ident: int, fo: int, more: bool, data: bytes,
                  ver: int, depth: int) -> None:
        """UDP fragments (DNS answers over 1232 bytes) reassembled within bounds (RFC 791/8200)."""
        key = (src, dst, ident, ver)
        self._current = key
        frags = self.frags
        budget = self.budgets["fragment"]
        fb = frags.get(key)
        if fb is None:
            if len(frags) >= self.config.max_fragments:
                _, old = frags.popitem(last=False)
                budget.held -= old.cost
                self.drops["ip:fragment-evicted"] += 1
            fb = frags[key] = FragmentBuffer(ts)
        if fo + len(data) > 65535:
            del frags[key]
            budget.held -= fb.cost
            raise IpError("fragment-too-long")
        before = fb.cost
        if fb.insert(fo, data, 65535, self.config.max_flow_holes) < 0:
            del frags[key]
            budget.held -= before
            raise IpError("fragment-too-many-holes")
        budget.charge(fb.cost - before)
        if not more:
            fb.total = fo + len(data)
        if budget.held > budget.limit:
            self._evict_fragments()
            if key not in frags:
                return
        if fb.total < 0 or fb.starts or len(fb.buf) < fb.total:
            return
        del frags[key]
        budget.held -= fb.cost
        self.stats["ip:reassembled"] += 1
        self._udp(ts, fb.buf, 0, fb.total, src, dst, ver == 6, depth)

    # -- transport ------------------------------------------------------------------------

    def _udp(self, ts: float, buf: bytes, l4: int, end: int, src: bytes, dst: bytes, v6: bool, depth: int, at: int = -1) -> None:
        """``at``: as for :meth:`_tcp`."""
        if end - l4 < 8:
            raise IpError("truncated-udp")
        sport = (buf[l4] << 8) | buf[l4 + 1]
        dport = (buf[l4 + 2] << 8) | buf[l4 + 3]
        conns = self.udp_conns
        client: bytes | None = None  # the flow's client, where its first packet was seen
        if conns is not None and not (depth < MAX_DEPTH and dport in self._tunnel_ports):
            key = buf[at : l4 + 4] if at >= 0 else src + dst + buf[l4 : l4 + 4]
            c = conns.get(key)
            if c is None:
                rkey = dst + src + buf[l4 + 2 : l4 + 4] + buf[l4 : l4 + 2]
                c = conns.get(rkey)
                if c is None or (ts - c.last > self._conn_udp_idle and ts >= c.first + self._conn_window):
                    c = self._conn_start(ts, False, key, rkey, src, dst, sport, dport, 0, c, _client_initial(buf, l4, end))
            elif ts - c.last > self._conn_udp_idle and ts >= c.first + self._conn_window:
                c = self._conn_start(ts, False, key, dst + src + buf[l4 + 2 : l4 + 4] + buf[l4 : l4 + 2], src, dst, sport,
                                     dport, 0, c)
            c.last = ts
            c.packets += 1
            c.octets += end - l4 + (40 if v6 else 20)
            client = c.client
        if sport in self.dns_ports:
            self._dns(ts, buf[l4 + 8 : end], src, dst, sport, dport, v6, Transport.UDP)
            return
        if dport in self.udp_ports:
            self._quic(ts, buf[l4 + 8 : end], src, dst, sport, dport, v6)
            return
        if depth < MAX_DEPTH:
            p = l4 + 8
            if dport == VXLAN_PORT:
                if end - p >= VXLAN_HEADER and buf[p] & VXLAN_FLAG_VNI:
                    self._ether(ts, buf[:end], p + VXLAN_HEADER, depth + 1)
                return
            if dport == GENEVE_PORT:
                if end - p < GENEVE_HEADER:
                    raise IpError("truncated-geneve")
                inner = p + GENEVE_HEADER + ((buf[p] & 0x3F) << 2)
                proto = (buf[p + 2] << 8) | buf[p + 3]
                if proto == ETH_TEB:
                    self._ether(ts, buf[:end], inner, depth + 1)
                elif proto in (ETH_IPV4, ETH_IPV6):
                    self._ip(ts, buf[:end], inner, depth + 1)
                return
            if dport == GTPU_PORT:
                self._gtpu(ts, buf[:end], p, depth)
                return
        if dport in self.dns_ports:
            self.stats["dns:query"] += 1
            return
        if self._any_port and _client_initial(buf, l4, end) and (client is None or client == src):
            # a QUIC Initial on a port not watched (issue 32): read as on a watched one
            self.stats["quic:odd-port"] += 1
            self._quic(ts, buf[l4 + 8 : end], src, dst, sport, dport, v6)
            return
        self.stats["udp:other"] += 1

    def _gtpu(self, ts: float, buf: bytes, p: int, depth: int) -> None:
        # 3GPP TS 29.281 section 5: 8-byte header, +4 when E, S or PN is set, then extensions
        n = len(buf)
        if n < p + GTPU_HEADER:
            raise IpError("truncated-gtpu")
        flags, mtype = buf[p], buf[p + 1]
        if flags >> 5 != 1:
            raise IpError("gtp-version")
        if mtype != GTPU_TPDU:
            self.stats["gtpu:signalling"] += 1
            return
        off = p + GTPU_HEADER
        if flags & 0x07:
            if n < off + 4:
                raise IpError("truncated-gtpu")
            next_ext = buf[off + 3]
            off += 4
            hops = 0
            while next_ext:
                if off >= n or hops > 8:
                    raise IpError("truncated-gtpu")
                ln = buf[off] * 4
                if ln == 0 or off + ln > n:
                    raise IpError("bad-gtpu-extension")
                next_ext = buf[off + ln - 1]
                off += ln
                hops += 1
            if hops > BPF_MAX_GTPU_EXTENSIONS:
                self.stats["capture:bpf-unfollowed"] += 1
        self._ip(ts, buf, off, depth + 1)

    def _tcp(self, ts: float, buf: bytes, l4: int, end: int, src: bytes, dst: bytes, v6: bool, at: int = -1) -> None:
        """``at``: where the addresses start when the ports follow them right away (the flow's key is
        then one slice of the frame)."""
        if end - l4 < 20:
            raise IpError("truncated-tcp")
        sport = (buf[l4] << 8) | buf[l4 + 1]
        dport = (buf[l4 + 2] << 8) | buf[l4 + 3]
        key = buf[at : l4 + 4] if at >= 0 else src + dst + buf[l4 : l4 + 4]  # client, server, their ports
        conns = self.tcp_conns
        if conns is not None:
            c = conns.get(key)
            if c is None:
                rkey = dst + src + buf[l4 + 2 : l4 + 4] + buf[l4 : l4 + 2]
                c = conns.get(rkey)
                if c is None or (buf[l4 + 13] & 0x12 == SYN and ts >= c.first + self._conn_window):
                    c = self._conn_start(ts, True, key, rkey, src, dst, sport, dport, buf[l4 + 13], c)
            elif buf[l4 + 13] & 0x12 == SYN and ts >= c.first + self._conn_window:
                c = self._conn_start(ts, True, key, dst + src + buf[l4 + 2 : l4 + 4] + buf[l4 : l4 + 2], src, dst, sport,
                                     dport, buf[l4 + 13], c)
            c.last = ts
            c.packets += 1
            c.octets += end - l4 + (40 if v6 else 20)
            if not c.answered:  # established: the server's SYN+ACK, data or a FIN; refused: the server's RST first
                fl = buf[l4 + 13]
                if fl & FIN or (fl & 0x12 == 0x12 and src == c.server) or end - l4 > ((buf[l4 + 12] >> 4) << 2) >= 20:
                    c.answered = True
                elif fl & RST and src == c.server:
                    c.refused = True
            if not c.data and end - l4 > 20 and end - l4 > ((buf[l4 + 12] >> 4) << 2) and src == c.client:
                c.data = True
            if buf[l4 + 13] & 0x12 == SYN and src == c.client:  # where its first byte will be
                c.seq1 = (_u32(buf, l4 + 4) + 1) & 0xFFFFFFFF
        odd = False
        if dport not in self.tcp_ports:
            if sport in self.dns_ports:
                self._dns_tcp(ts, buf, l4, end, src, dst, sport, dport, v6)
                return
            if sport in self.tcp_ports:
                self.server_to_client += 1
                return
            if not self._any_port or dport in self.dns_ports:
                self.stats["tcp:not-watched"] += 1
                return
            odd = True  # a port not watched: named only where its first bytes start a name (issue 32)
        doff = (buf[l4 + 12] >> 4) << 2
        if doff < 20 or l4 + doff > end:
            raise IpError("bad-tcp-offset")
        flags = buf[l4 + 13]
        if l4 + doff == end and not flags & (SYN | FIN | RST):
            return  # a bare ACK
        self._current = key
        if flags & SYN:
            if flags & ACK or self._inline:
                # Inline the SYN comes on the ring, in blocks, and may come after its connection's first
                # queued packet: it would wipe what that one decided (issue 32's lab: a keep-alive head
                # then passed unread). The queue's ``first`` mark starts a 4-tuple afresh there (issue 22).
                return
            self._forget_named(key)
            if odd:  # nothing held before the first bytes (a port scan's SYNs hold no flow); the flow table holds no earlier one
                old = self.flows.pop(key, None)
                if old is not None:
                    self._tcp_budget.held -= old.cost
                return
            self._new_flow(key, Flow(_u32(buf, l4 + 4) + 1, True, ts, src, dst, sport, dport))
            return
        if l4 + doff == end:
            if flags & (FIN | RST):
                flow = self.flows.pop(key, None)
                if flow is not None:
                    self._tcp_budget.held -= flow.cost
                    if flow.buf:
                        self._give_up(flow, ts, "closed")
            return
        ack = _u32(buf, l4 + 8)
        later = False
        skip = 0  # a later head after the end of a body inside this segment starts this far in
        if self._fresh and not self._same_tcp(key, ack):  # a new connection on this 4-tuple, like a SYN: decided afresh
            self._forget(key)
        elif key in self.done or key in self._done_old:
            # Named already. An HTTP/1.x connection's later request heads are judged too (issue 32):
            # a segment that starts with a method token starts one; a head not complete in it waits
            # for the segments after it (held as a flow of its own).
            if key not in self.http_hosts:
                return
            chunks = self.http_chunks.get(key)
            if chunks is not None:  # a chunked body read on, segment by segment, to its end
                into = (chunks[0] - _u32(buf, l4 + 4)) & 0xFFFFFFFF
                if into >= 0x80000000:  # a segment missed before this one: its framing is lost; heads by their first bytes
                    del self.http_chunks[key]
                    self.stats["http:chunked-lost"] += 1
                elif l4 + doff + into >= end:
                    return  # bytes read already (a retransmission)
                else:
                    try:
                        k = chunks[1].feed(buf[l4 + doff + into : end])
                    except DecodeError:
                        k = -2
                    if k == -1 and chunks[1].total <= self.config.body_follow:
                        self.http_chunks[key] = ((_u32(buf, l4 + 4) + end - l4 - doff) & 0xFFFFFFFF, chunks[1])
                        self._body_left = 1
                        return  # inside the body: not a head
                    del self.http_chunks[key]
                    if k < 0:  # its framing broken, or longer than followed: later heads by their first bytes
                        self.stats["http:chunked-" + ("bad" if k == -2 else "too-long")] += 1
                        return  # this segment is the body's
                    skip = into + k  # the body ends in it: a head may start right after
                    if l4 + doff + skip >= end:
                        return
            body_end = self.http_body_end.get(key)
            if body_end is not None:
                seq0 = _u32(buf, l4 + 4)
                into = (body_end - seq0) & 0xFFFFFFFF
                if 0 < into < 0x80000000:  # the segment starts inside the body before (Content-Length)
                    if l4 + doff + into >= end:
                        self._body_left = into - (end - l4 - doff)
                        return  # wholly inside it: not a head
                    skip = into  # the body ends in it: a head may start right after
                del self.http_body_end[key]
            if key not in self.flows and not looks_like_http(buf[l4 + doff + skip : l4 + doff + skip + 17]):
                return
            later = True
        seq = _u32(buf, l4 + 4)
        if odd and not later and key not in self.flows:
            # An odd port's connection, its first segment seen: named where it starts a ClientHello or
            # a request head and is the connection's first byte (where its SYN was seen: a STARTTLS
            # ClientHello after SMTP's EHLO is not named, as it is not on any port); else never again.
            # Segments sent out of order (a later one first, to hide the name: issue 32's review) are
            # held for the first: where the SYN was seen, a TLS record up to the bytes read; inline
            # without it (a fresh flow), within the name budget, as on a watched port (issue 22).
            c = conns.get(key) if conns is not None else None
            name_like = starts_client_hello(buf[l4 + doff : l4 + doff + 6]) or starts_request(buf[l4 + doff : l4 + doff + 4])
            if c is not None and c.seq1 >= 0:
                into = (seq - c.seq1) & 0xFFFFFFFF
                if into and into < self.config.max_flow_bytes and (buf[l4 + doff] == 0x16 or not self._inline):
                    # inline, a TLS record past the first byte (a ClientHello's records sent last first): the
                    # kernel queues the first record too (it starts 16 03), and the held flow waits for it;
                    # other bytes past the first, queued, follow an unqueued first: another protocol's
                    # (SMTP's GET-like commands after EHLO). Replay reads every segment: any is held.
                    flow = Flow(c.seq1, True, ts, src, dst, sport, dport)  # as after its SYN: its first byte known
                    flow.odd = True
                    flow.ack = ack
                    flow.segments = 1
                    flow.add(seq, buf[l4 + doff : end], self.config.max_flow_bytes, self.config.max_flow_holes)
                    self._new_flow(key, flow)
                    self.stats["tcp:odd-port-held"] += 1
                    return
                if into or not name_like:
                    self._mark_done(key, ack)
                    self.stats["tcp:odd-port-other"] += 1
                    return
            elif not name_like and not self._fresh:
                self._mark_done(key, ack)
                self.stats["tcp:odd-port-other"] += 1
                return
            self.stats["tcp:odd-port"] += 1
        data = buf[l4 + doff + skip : end]
        self._seg = (seq, ack, end - l4 - doff)
        seq = (seq + skip) & 0xFFFFFFFF
        flow = self.flows.get(key)
        if later and flow is None:
            flow = Flow(seq, False, ts, src, dst, sport, dport)
            flow.later = True
            ident = self._done_ident(key)
            flow.ack = ident if isinstance(ident, int) else ack  # the connection's name (its server ISN + 1), kept
            flow.buf = data[: self.config.max_flow_bytes]
            flow.cost = len(flow.buf)
            self.stats["http:later-head"] += 1
            self._first_look(key, flow, ts, seq, data)  # the connection stays named; a next head begun in the segment goes on
            return
        if flow is None:
            # Most connections: the whole ClientHello or request head in the first segment.
            # Fresh: these are the connection's first bytes (as after a SYN), not a mid-stream join;
            # but unlike after a SYN the start is not known, only that nothing precedes what comes
            # first, bar reordering: should the client's first data segments arrive swapped, this
            # is a later one, and a segment before it moves the start back (Flow.add).
            flow = Flow(seq, False, ts, src, dst, sport, dport, self._fresh)
            flow.ack = ack
            flow.buf = data[: self.config.max_flow_bytes]
            flow.cost = len(flow.buf)
            if odd:
                flow.odd = True
                if not self.config.odd_rest:  # its later segments will not come (live passive): named from these bytes
                    if not self._examine(flow, ts):
                        self._from_prefix(flow, ts)
                    self._mark_done(key, ack)
                    return
            self._first_look(key, flow, ts, seq, data)
            return
        if flow.ack < 0:  # its first data after the SYN
            flow.ack = ack
            flow.data_ts = ts
        flow.segments += 1
        budget = self._tcp_budget
        before = flow.cost
        grown = flow.add(seq, data, self.config.max_flow_bytes, self.config.max_flow_holes)
        budget.charge(flow.cost - before)
        if grown < 0:
            self.drops["tcp:too-many-holes"] += 1
        if budget.held > budget.limit:
            self._evict_tcp(ts)
            if key not in self.flows:
                return
        if grown > 0 or (flow.held and not self._may_hold(flow, ts)):
            # held and past its bounds, the prefix unchanged: examined once more, to give it up
            if self._examine(flow, ts):
                del self.flows[key]
                budget.held -= flow.cost
                self._mark_done(key, flow.ack)
                return
            if len(flow.buf) >= self.config.max_flow_bytes:
                before = flow.cost
                if self._read_long_head(flow, ts, seq, data):
                    del self.flows[key]
                    budget.held -= before
                    self._mark_done(key, flow.ack)
                    return
                budget.held += flow.cost - before  # the lines dropped, the segment's rest read
        if flow.later:  # bounded by its bytes (max_flow_bytes, the TCP budget), not the name budget: named already
            return
        if not flow.held:
            # The name budget (issue 36): a flow still without its name is judged by its address now,
            # on this packet, rather than passed on unjudged once the kernel stops queuing it.
            spent = self._budget_spent(flow.segments, flow.data_ts, ts)
            if spent:
                del self.flows[key]
                budget.held -= flow.cost
                self._mark_done(key, flow.ack)
                self.stats["flow:" + spent] += 1
                if _other_protocol(flow):
                    self.stats["tcp:odd-port-other"] += 1  # another protocol on a port not watched: not judged
                    return
                if not flow.fresh:
                    # Passive, its start perhaps never captured: judged, but not on this packet's numbers
                    # (a live connection is not reset for the capture's loss; as at its expiry).
                    self._seg = (0, 0, 0)
                self._emit(flow, ts, Kind.IP_ONLY, Transport.TCP, "", spent)

    def _first_look(self, key: bytes, flow: Flow, ts: float, seq: int, data: bytes) -> None:
        """A new flow's first segment (``seq``, ``data``) read into it: the flow needs no more (named
        or given up; also a head read on past the bytes read in this one packet, a GSO super-packet),
        or is kept for the next segments."""
        if self._examine(flow, ts) or (len(flow.buf) >= self.config.max_flow_bytes and self._read_long_head(flow, ts, seq, data)):
            self._mark_done(key, flow.ack)
        else:
            self._new_flow(key, flow)

    def _same_tcp(self, key: bytes, ack: int) -> bool:
        """Whether a packet marked as its connection's first (inline) belongs to the connection the
        decoder already reads or has decided on this 4-tuple: the same ack (the server's ISN + 1;
        a new connection has a new ISN). Such a packet comes where the kernel cut a super-packet
        into segments before queuing them (NFQA_CFG_F_GSO unsupported), each with its marks."""
        flow = self.flows.get(key)
        return self._first_again(flow.ack == ack if flow is not None else self._done_ident(key) == ack)

    def _done_ident(self, key: bytes) -> int | bytes | None:
        """What names the connection decided on ``key`` (``done``), None when none was."""
        ident = self.done.get(key)
        return self._done_old.get(key) if ident is None else ident

    def _first_again(self, same: bool) -> bool:
        if same:
            self.stats["flow:first-again"] += 1
        return same

    def _forget_named(self, key: bytes) -> None:
        """Drop what decided a 4-tuple's TCP connection: named (``done``), its hosts and the body read on."""
        self.done.pop(key, None)
        self._done_old.pop(key, None)
        self.http_hosts.pop(key, None)
        self.http_body_end.pop(key, None)
        self.http_chunks.pop(key, None)

    def _forget(self, key: bytes) -> None:
        """Drop what is remembered of a 4-tuple: its connection ended, a new one starts."""
        self.blocked.pop(key, None)
        self._forget_named(key)
        old = self.flows.pop(key, None)
        if old is not None:
            self._tcp_budget.held -= old.cost
        entry = self.quic.pop(key, None)
        if entry is not None:
            self.budgets["quic"].held -= entry[1].crypto.cost

    def block_current(self, ts: float) -> None:
        """Inline: the packet just decoded was dropped (its connection blocked): drop its connection's
        later packets too (:meth:`blocked_current`), until a new connection takes the 4-tuple."""
        key = self._current
        if isinstance(key, bytes):
            blocked = self.blocked
            blocked[key] = ts
            blocked.move_to_end(key)
            if len(blocked) > self.config.max_flows:
                blocked.popitem(last=False)

    def blocked_current(self, ts: float) -> bool:
        """Whether the packet just decoded belongs to a connection blocked before (and not long ago:
        ``flow_timeout`` * 2)."""
        key = self._current
        if not isinstance(key, bytes):
            return False
        t = self.blocked.get(key)
        return t is not None and ts - t < 2 * self.config.flow_timeout

    def settled(self) -> bool:
        """Whether the flow the last frame touched needs no more packets (named or given up):
        inline, its later packets need not wait in the queue."""
        key = self._current
        return isinstance(key, bytes) and (key in self.done or key in self._done_old) and key not in self.flows

    def head_done(self) -> bool:
        """Inline: the frame just decoded completed an HTTP/1.x request head (issue 32): its verdict
        leaves the connection's ``more`` mark as the kernel has it."""
        return self._head_done

    def reading_later(self) -> bool:
        """Inline: the frame just decoded started (or continues) a later request head of a decided
        HTTP/1.x connection, or the first bytes of a flow on a port not watched (issue 32), that is
        not complete yet: its next segments must be queued too (the ``more`` mark)."""
        key = self._current
        if not isinstance(key, bytes):
            return False
        flow = self.flows.get(key)
        if flow is not None:
            return flow.later or flow.odd
        return 0 < self._body_left <= self.config.body_follow  # a request body to read on (issue 32)

    def _new_flow(self, key: bytes, flow: Flow) -> None:
        flows = self.flows
        budget = self._tcp_budget
        old = flows.get(key)
        if old is not None:
            budget.held -= old.cost
        elif len(flows) >= self.config.max_flows:
            old_key, old = flows.popitem(last=False)
            budget.held -= old.cost
            self.drops["flow:evicted"] += 1
            self._mark_done(old_key, old.ack)
        flows[key] = flow
        if flow.cost:
            budget.charge(flow.cost)
            if budget.held > budget.limit:
                self._evict_tcp(flow.ts)

    # -- connection records (issue 19) ----------------------------------------------------

    def _conn_start(self, ts: float, tcp: bool, key: bytes, rkey: bytes, src: bytes, dst: bytes, sport: int, dport: int,
                    flags: int, old: Conn | None, client: bool = False) -> Conn:
        """The flow a packet belongs to when the current generation does not hold it (or holds an
        earlier flow of the five-tuple that this packet starts anew): found in the older
        generation, or a new one. A flow is kept under the key of its first packet seen."""
        cfg = self.config
        if tcp:
            cur, prev = self.tcp_conns, self._tcp_conns_old
        else:
            cur, prev = self.udp_conns, self._udp_conns_old
        if cur is None:
            raise AssertionError("connection records are off")
        if old is None:
            if prev:
                k = key
                c = prev.pop(key, None)
                if c is None:
                    k = rkey
                    c = prev.pop(k, None)
                if c is not None:  # alive in the older generation: it moves to the current one
                    cur[k] = c
                    if ts < c.first + cfg.conn_window or (flags & 0x12 != SYN if tcp else ts - c.last <= cfg.conn_udp_idle):
                        return c
                    del cur[k]  # it starts anew
        else:  # the earlier flow of this five-tuple, under either key, makes way
            cur.pop(key, None)
            cur.pop(rkey, None)
        if flags & SYN:
            first = not flags & ACK
        else:  # ``client``: what the packet is says its sender is the client (a QUIC Initial), whatever the ports
            first = client or client_first(flags, sport, dport, self._server_ports)
        if first:
            c = Conn(ts, ts + cfg.conn_window, tcp, src, dst, sport, dport, key, flags & SYN != 0)
        else:
            c = Conn(ts, ts + cfg.conn_window, tcp, dst, src, dport, sport, rkey, False)
        cur[key] = c
        self.conn_new += 1
        pend = self.conn_pending
        pend.append(c)
        if len(pend) > cfg.conn_max:  # bounded: the oldest flow is written now, before its window closes
            oldest = pend.popleft()
            if oldest.state == PENDING:
                self.stats["conn:written-early"] += 1
                if self._summarise and oldest.syn and not oldest.answered and oldest.tcp:
                    self._conn_attempt(oldest, ts)
                else:
                    self._conn_write(oldest, _WHY_EARLY)
        if len(cur) > 2 * cfg.conn_max:  # the live table too: the older generation goes now
            self._conn_age("tcp" if tcp else "udp", ts)
        return c

    def _conn_age(self, proto: str, now: float) -> None:
        """Drop the older generation of live five-tuples; the current one becomes the older."""
        self._conn_swap[proto] = now
        if proto == "tcp":
            assert self.tcp_conns is not None
            self._tcp_conns_old, self.tcp_conns = self.tcp_conns, {}
        else:
            assert self.udp_conns is not None
            self._udp_conns_old, self.udp_conns = self.udp_conns, {}

    def _conn_claim(self, flow: Flow, transport: Transport) -> tuple[int, int]:
        """A name for the flow: its connection is logged with it (one record). Its packets and bytes so far."""
        if transport is Transport.TCP:
            cur, prev = self.tcp_conns, self._tcp_conns_old
        else:
            cur, prev = self.udp_conns, self._udp_conns_old
        if cur is None:
            return 0, 0
        key = flow.client + flow.server + _PORTS.pack(flow.sport, flow.dport)
        c = cur.get(key)
        if c is None:
            rkey = flow.server + flow.client + _PORTS.pack(flow.dport, flow.sport)
            c = cur.get(rkey) or prev.get(key) or prev.get(rkey)
        if c is None or c.state != PENDING:
            return 0, 0
        c.state = NAMED
        return c.packets, c.octets

    def _conn_sweep(self, now: float, final: bool = False) -> None:
        """Write the records of flows whose window closed and that no name came for (at the end of
        input: all of them). A flow the name pipeline still reads waits for it, at most ``flow_timeout``."""
        pend = self.conn_pending
        wait = self.config.flow_timeout + 1.0
        flows, quic, write, why = self.flows, self.quic, self._conn_write, self._conn_why
        summarise = self._summarise
        popleft = pend.popleft
        while pend:
            c = pend[0]
            if c.deadline > now and not final:
                break
            popleft()
            if c.state != PENDING:
                continue
            if not final and now - c.first < wait and (c.key in flows if c.tcp else c.key in quic):
                c.deadline = now + 1.0
                pend.append(c)
                continue
            if summarise and c.syn and not c.answered and c.tcp:  # an attempt: into its server's summary
                self._conn_attempt(c, now)
            else:
                write(c, why(c))
        attempts = self.attempts
        while attempts:
            a = next(iter(attempts.values()))
            if a.deadline > now and not final:
                break
            self._attempts_write(a)

    def _conn_why(self, c: Conn) -> str:
        if c.sport in self.dns_ports:
            return _WHY_DNS
        if c.tcp:
            if c.sport not in self.tcp_ports and (not self._any_port or not c.data):
                return _WHY_PORT  # on a port not watched, its bytes not read (live: not captured) or none seen
            if not c.syn:
                return _WHY_MIDSTREAM
            return _WHY_UNRECOGNISED if c.data else _WHY_NO_DATA
        return _WHY_UNRECOGNISED if c.sport in self.udp_ports else _WHY_PORT

    def _conn_attempt(self, c: Conn, now: float) -> None:
        """Count an attempt (``c``: its SYN seen, never answered) into its server's open summary
        (opened now, written ``conn_window`` later), instead of a record of its own."""
        c.state = WRITTEN
        a = self.attempts.get(c.server)
        if a is None:
            a = self.attempts[c.server] = Attempts(c.server, now + self._conn_window, c)
        self._attempts_held += a.add(c)
        stats = self.stats
        stats["conn:attempts"] += 1
        if c.refused:
            stats["conn:attempts-refused"] += 1
        limit = self.config.conn_max
        # bounded: the oldest summaries are written early (their counts so far) past conn_max
        # addresses and ports held, or conn_max / 4 servers
        while self._attempts_held > limit or len(self.attempts) > max(16, limit >> 2):
            stats["conn:attempt-summaries-early"] += 1
            self._attempts_write(next(iter(self.attempts.values())))

    def _attempts_write(self, a: Attempts) -> None:
        """The summary of a server's attempts: one ``conn`` record (net/conns.py)."""
        del self.attempts[a.server]
        self._attempts_held -= len(a.sources) + len(a.ports)
        self.stats["conn:attempt-summaries"] += 1
        v6 = len(a.server) == 16
        src, cport = a.client()
        client = (SEVERAL6 if v6 else SEVERAL4) if src is None else _ntop(_AF6 if v6 else _AF4, src)
        self._out.append(_tuple_new(Observation, (
            a.first, client, cport, _ntop(_AF6 if v6 else _AF4, a.server), a.lo, _TCP, _CONN, "", "", (), a.detail(),
            0, 0, 0, a.packets, a.octets, "", "", "")))

    def _conn_write(self, c: Conn, why: str) -> None:
        c.state = WRITTEN
        names = self._ntop_cache
        client = names.get(c.client)
        if client is None:
            client = _ntop(_AF6 if len(c.client) == 16 else _AF4, c.client)
        server = names.get(c.server)
        if server is None:
            if len(names) >= 4096:
                names.clear()
            server = names[c.server] = _ntop(_AF6 if len(c.server) == 16 else _AF4, c.server)
        # tuple.__new__: all fields given, without the NamedTuple's keyword handling (a third of the cost)
        self._out.append(_tuple_new(Observation, (
            c.first, client, c.cport, server, c.sport, _TCP if c.tcp else _UDP, _CONN, "", "", (), why,
            0, 0, 0, c.packets, c.octets, "", "", "")))

    def _mark_done(self, key: bytes, ident: int | bytes) -> None:
        """The flow ``key`` needs no more packets; ``ident`` names its connection (see ``done``).
        An HTTP/1.x flow whose last segment also began the next request head (pipelining) goes on
        as a later head (issue 32)."""
        done = self.done
        done[key] = ident
        if len(done) > self.config.max_done // 2:
            self._done_old = done
            self.done = {}
        nh = self._next_head
        if nh is not None:
            self._next_head = None
            old, seq, data = nh
            if isinstance(data, Chunks):
                self.http_chunks[key] = (seq, data)
                return
            if not data:
                self.http_body_end[key] = seq
                return
            flow = Flow(seq, False, old.ts, old.client, old.server, old.sport, old.dport)
            flow.later = True
            flow.ack = ident if isinstance(ident, int) else old.ack
            flow.buf = data[: self.config.max_flow_bytes]
            flow.cost = len(flow.buf)
            # More heads than one parse reads (pipelining past parse_requests' limit) may already be
            # complete: read them now, not when a segment that may never come arrives.
            if self._examine(flow, flow.ts):
                self._mark_done(key, flow.ack)
            else:
                self._new_flow(key, flow)

    def _examine(self, flow: Flow, ts: float) -> bool:
        """Look at the flow's first bytes; True when the flow needs no more bytes."""
        self._next_head = None
        buf = flow.buf
        if flow.line:  # a head longer than the bytes read: its request line and the header lines since
            return self._examine_long_head(flow, ts)
        if not buf:
            return False
        try:
            if looks_like_tls(buf) or (len(buf) < 3 and buf[0] == 0x16):
                hello = parse_client_hello(buf)
                if hello is None:
                    flow.held = False
                    return False
                self._emit_tls(flow, ts, hello, Kind.TLS_SNI, Transport.TCP)
                return True
            if looks_like_http(buf[:17]):
                if flow.odd and not flow.later and not_http_line(buf):
                    self.stats["tcp:odd-port-not-http"] += 1  # another protocol's line (Redis' GET key): not named
                    return True
                reqs, rest = parse_requests_at(buf)
                early = False
                if reqs is None and (flow.later or flow.odd) and not flow.named:
                    # A later head (or an odd port's first) not complete yet: named as soon as its Host
                    # line is in, not only when its end comes. Inline, the kernel queues its next
                    # packets from its first on (``more``), but one sent just before that can pass;
                    # the Host read from what came first is not hidden by it. The flow is still read
                    # to the head's end, for what follows it (a pipelined head).
                    try:
                        pre = parse_requests_at(head_prefix(buf))[0]
                    except DecodeError:
                        pre = None
                    if pre and pre[0].host:
                        reqs, rest, early = pre[:1], 0, True
                        self.stats["http:named-unfinished"] += 1
                if reqs is None:
                    flow.held = False
                    return False
                named = (self.http_hosts.get(self._current, frozenset())  # type: ignore[arg-type]
                         if flow.later or flow.named else frozenset())
                seen: set[str] = set(named)
                for r in reqs:
                    if r.host and r.host not in seen:
                        seen.add(r.host)
                        detail = f"method={r.method} unfinished" if early else f"method={r.method}"
                        # target: the request line's target, its own field (URL rules of the regulator's commands)
                        self._emit(flow, ts, Kind.HTTP_HOST, Transport.TCP, r.host,
                                   detail + " malformed-request-line" if r.malformed else detail, r.method[:16],
                                   bound_url(r.target, self.config.url_max, self.config.url_query), r.target[:512])
                if not seen:
                    self._emit(flow, ts, Kind.IP_ONLY, Transport.TCP, "", "http-no-host")
                self._after_heads(flow, buf, seen, rest)
                if early:
                    flow.named = True
                    flow.held = False
                    return False
                self._head_done = True
                return True
        except DecodeError as exc:
            if flow.later:  # not a request head after all (a body that looks like one): the connection stays named
                self.stats["http:later-not-a-head"] += 1
                return True
            if self._may_hold(flow, ts):
                return False
            self.drops[f"{exc.layer}:{exc.reason}"] += 1
            self._give_up(flow, ts, f"{exc.layer}-{exc.reason}")
            return True
        if self._may_hold(flow, ts):
            return False
        self._give_up(flow, ts, "unknown-protocol")
        return True

    def _may_hold(self, flow: Flow, ts: float) -> bool:
        """Whether a fresh flow whose start does not parse waits for the segments before it (and is
        now held): its first data segments may have arrived swapped (inline, issue 22). Bounded by
        the name budget (packets and time) here, by the flow's byte limit and the TCP budget where bytes are added.
        Named ip-only from its address at once, a filed site's connection on an address shared
        with unfiled ones would be reset."""
        if flow.fresh and not self._budget_spent(flow.segments, flow.data_ts, ts):
            if not flow.held:
                flow.held = True
                self.stats["flow:held"] += 1
            return True
        flow.held = False
        return False

    def _budget_spent(self, packets: int, first_data: float, ts: float) -> str:
        """Which part of a flow's name budget is spent ("" while none is): ``budget-packets`` after
        ``name_packets`` packets read, ``budget-seconds`` from ``name_seconds`` after its first data."""
        cfg = self.config
        if packets >= cfg.name_packets:
            return "budget-packets"
        return "budget-seconds" if ts - first_data >= cfg.name_seconds else ""

    def _after_heads(self, flow: Flow, buf: bytes, seen: set[str], rest: int) -> None:
        """The heads of ``buf`` are judged (hosts ``seen``): the connection's later heads are read too,
        from ``rest`` on (``parse_requests_at``'s: where the next head starts; its body's end; a
        chunked body's start, negative)."""
        key = self._current
        if isinstance(key, bytes) and len(seen) <= 64:
            hosts = self.http_hosts
            hosts[key] = frozenset(seen)
            hosts.move_to_end(key)
            if len(hosts) > self.config.max_done // 2:
                gone = hosts.popitem(last=False)[0]
                self.http_body_end.pop(gone, None)
                self.http_chunks.pop(gone, None)
            if rest < 0:  # a chunked body: read on to its end (Chunks), bounded by body_follow
                start = -rest - 1
                chunks = Chunks()
                try:
                    k = chunks.feed(buf[start:])
                except DecodeError:
                    k = -2
                if k >= 0:
                    rest = start + k
                elif k == -1 and len(buf) < self.config.max_flow_bytes:
                    self._next_head = flow, (flow.base + len(buf)) & 0xFFFFFFFF, chunks
                    self._body_left = 1
                else:  # its framing broken or lost: later heads are read by their first bytes
                    self.stats["http:chunked-bad" if k == -2 else "http:chunked-lost"] += 1
            if 0 < rest < len(buf) and looks_like_http(buf[rest:rest + 17]):
                self._next_head = flow, (flow.base + rest) & 0xFFFFFFFF, buf[rest:]  # the next head's start
            elif rest > len(buf):  # a body (Content-Length) goes on past these bytes: no head before its end
                self._next_head = flow, (flow.base + rest) & 0xFFFFFFFF, b""
                self._body_left = rest - len(buf)

    def _examine_long_head(self, flow: Flow, ts: float) -> bool:
        """``_examine`` of a head read on past ``max_flow_bytes`` (``_read_long_head``): named once a
        Host line is complete (judged without one at its end), and read to its end, where its body
        (by the Content-Length or Transfer-Encoding of all its lines) and a head after it are found."""
        buf = flow.buf
        # where the head ends in buf (after its empty line; -1: not yet), and its lines read so far
        if buf[:2] == b"\r\n" or buf[:1] == b"\n":
            e, lines = (2 if buf[:1] == b"\r" else 1), b""
        else:
            ends = [i + n for i, n in ((buf.find(b"\n\r\n"), 3), (buf.find(b"\n\n"), 2)) if i >= 0]
            e = min(ends) if ends else -1
            lines = head_prefix(buf) if e < 0 else buf[:e]
        try:
            reqs = parse_requests_at(flow.line + lines)[0]
        except DecodeError:
            reqs = None
        key = self._current
        named = self.http_hosts.get(key, frozenset()) if isinstance(key, bytes) else frozenset()
        host = reqs[0].host if reqs and reqs[0].host else ""
        if host and not flow.named:
            flow.named = True
            r = reqs[0]  # type: ignore[index]
            if not (flow.later and host in named):
                self._emit(flow, ts, Kind.HTTP_HOST, Transport.TCP, host, f"method={r.method} long-head", r.method[:16],
                           bound_url(r.target, self.config.url_max, self.config.url_query), r.target[:512])
            if isinstance(key, bytes) and len(named) < 64:
                self.http_hosts[key] = named = named | {host}
                self.http_hosts.move_to_end(key)
        if e < 0:
            return False  # read on to its end
        if not flow.named and not flow.later:
            self._emit(flow, ts, Kind.IP_ONLY, Transport.TCP, "", "http-no-host long-head")
        cl, chunked = body_headers(buf[:e])
        if chunked or flow.body == -2:
            rest = -(e + 1)
        else:
            rest = e + max(cl, flow.body, 0)
        if isinstance(key, bytes):
            self._after_heads(flow, buf, set(named), rest)
        self._head_done = True
        return True

    def _from_prefix(self, flow: Flow, ts: float) -> None:
        """An odd port's first segment that does not hold a whole ClientHello or request head, the
        rest of which will not come (a live passive capture): named from what it holds, where the
        server_name extension or the Host line is in it; else left unnamed (counted)."""
        buf = flow.buf
        if flow.named:
            return
        if looks_like_tls(buf):
            sni = sni_from_prefix(buf)
            if sni:
                self._emit(flow, ts, Kind.TLS_SNI, Transport.TCP, sni, "partial-hello")
                return
        elif looks_like_http(buf[:17]):
            if self._host_from_prefix(flow, ts, "partial-head"):
                return
        else:
            self._give_up(flow, ts, "unknown-protocol")
            return
        # Not judged by its address either: a filed site's connection cut so (a big ClientHello, a
        # long request line) on an address no filing lists would be reset for it. Counted.
        self.stats["tcp:odd-port-partial"] += 1

    def _read_long_head(self, flow: Flow, ts: float, seq: int, data: bytes) -> bool:
        """A flow whose bytes read are full (``max_flow_bytes``): True when it needs no more (named
        or given up, as ``_examine`` says). A request head longer than that with no Host in it yet
        is read on (issue 32: servers take heads of 32 KiB and more, and a Host after 16 KiB hid the
        name): its complete header lines are dropped, the request line kept (``Flow.line``), and
        the segment at hand read again past them; up to ``MAX_HEAD_SCAN`` bytes. False: read on."""
        limit, holes = self.config.max_flow_bytes, self.config.max_flow_holes
        while len(flow.buf) >= limit:
            buf = flow.buf
            if not flow.line:
                nl = buf.find(b"\n")
                if nl < 0 or not looks_like_http(buf[:17]) or not_http_line(buf):  # not a head, or a line past the limit
                    self._give_up(flow, ts, "too-long")
                    return True
                flow.line = buf[: nl + 1]
                cut = nl + 1
            else:
                cut = buf.rfind(b"\n") + 1
            if cut <= 0 or flow.scanned + cut > MAX_HEAD_SCAN:  # one header line past the limit, or too long a head
                self._give_up(flow, ts, "too-long")
                return True
            if flow.scanned:  # header lines dropped: their Content-Length / Transfer-Encoding kept
                cl, chunked = body_headers(buf[:cut])
                flow.body = -2 if chunked or flow.body == -2 else max(cl, flow.body)
            flow.scanned += cut
            flow.buf = buf[cut:]
            flow.base = (flow.base + cut) & 0xFFFFFFFF
            flow.starts = [x - cut for x in flow.starts]
            flow.cost -= cut
            into = (flow.base - seq) & 0xFFFFFFFF  # what of this segment the full bytes left out, from the new start on
            if into >= 0x80000000:  # the segment starts past the new start
                flow.add(seq, data, limit, holes)
            elif into < len(data):
                flow.add(flow.base, data[into:], limit, holes)
            self.stats["http:long-head"] += 1
            if self._examine(flow, ts):
                return True
        return False

    def _host_from_prefix(self, flow: Flow, ts: float, why: str) -> bool:
        """A request head whose end never came within the bytes read: named from its complete lines
        when the Host (or an absolute-form target) is among them. Whether it was."""
        try:
            reqs, _ = parse_requests_at(head_prefix(flow.buf))
        except DecodeError:
            return False
        if not reqs or not reqs[0].host:
            return False
        r = reqs[0]
        self._emit(flow, ts, Kind.HTTP_HOST, Transport.TCP, r.host, f"method={r.method} {why}", r.method[:16],
                   bound_url(r.target, self.config.url_max, self.config.url_query), r.target[:512])
        return True

    def _give_up(self, flow: Flow, ts: float, why: str) -> None:
        if flow.named:  # named from its first lines already; its end never came
            self.stats["http:unfinished-" + why] += 1
            return
        if _other_protocol(flow):  # not judged
            self.stats["tcp:odd-port-other"] += 1
            return
        if why == "too-long":  # longer than the bytes read (reassembly.max_flow_bytes): named from them if it can be
            self.stats["flow:too-long"] += 1
            if looks_like_http(flow.buf[:17]) and self._host_from_prefix(flow, ts, "too-long"):
                return  # a request head (a later one too): its Host decides
            sni = sni_from_prefix(flow.buf) if not flow.later and looks_like_tls(flow.buf) else None
            if sni:
                self._emit(flow, ts, Kind.TLS_SNI, Transport.TCP, sni, "too-long")
                return
        if flow.later:  # a later request head that never completed: the connection was judged by its first
            self.stats["http:later-" + why] += 1
            return
        if not flow.syn and not flow.fresh and why == "unknown-protocol":
            # Joined mid-stream (capture started late): not the connection's first bytes.
            self.stats["flow:midstream"] += 1
            return
        self._emit(flow, ts, Kind.IP_ONLY, Transport.TCP, "", why)

    def _emit_tls(self, flow: Flow, ts: float, hello: ClientHello, kind: Kind, transport: Transport, extra: str = "") -> None:
        detail = hello.version + extra
        if hello.alpn:
            detail += " alpn=" + ",".join(hello.alpn)
        if hello.ech:
            detail += " ech-outer"  # the SNI seen is ECH's public name, not the real one
        if hello.sni:
            self._emit(flow, ts, kind, transport, hello.sni, detail)
        else:
            self._emit(flow, ts, Kind.IP_ONLY, transport, "", detail + " no-sni")

    def _emit(self, flow: Flow, ts: float, kind: Kind, transport: Transport, name: str, detail: str,
              method: str = "", url: str = "", target: str = "") -> None:
        af = _AF6 if len(flow.client) == 16 else _AF4
        seq, ack, ln = self._seg if transport is Transport.TCP else (0, 0, 0)
        if len(detail) > MAX_DETAIL:
            detail = detail[: MAX_DETAIL - 3] + "..."
        packets, octets = self._conn_claim(flow, transport) if self.tcp_conns is not None else (0, 0)
        self._out.append(_tuple_new(Observation, (
            ts, _ntop(af, flow.client), flow.sport, _ntop(af, flow.server), flow.dport, transport, kind,
            name, normalise_wire_name(name) if name else "", (), detail, seq, ack, ln, packets, octets, method, url, target)))

    # -- DNS ------------------------------------------------------------------------------

    def _dns(self, ts: float, payload: bytes, src: bytes, dst: bytes, sport: int, dport: int, v6: bool,
             transport: Transport) -> None:
        msg = dnsmod.parse_dns(payload)
        if not msg.response:
            self.stats["dns:query"] += 1
            return
        if msg.rcode != 0:
            self.stats["dns:error-rcode"] += 1
            return
        af = _AF6 if v6 else _AF4
        client, server = _ntop(af, dst), _ntop(af, src)
        named = False
        for qname in msg.questions or (msg.qname,):
            chain, addrs = dnsmod.resolve_chain(msg, qname)
            if not addrs:
                continue
            named = True
            detail = "cname=" + ">".join(chain[1:]) if len(chain) > 1 else ""
            if len(detail) > MAX_DETAIL:
                detail = detail[: MAX_DETAIL - 3] + "..."
            # The querier is the client; the answer points the name at the answered addresses.
            self._out.append(Observation(
                ts, client, dport, server, sport, transport, Kind.DNS_ANSWER,
                qname, normalise_wire_name(qname), tuple(a for a, _ in addrs), detail))
        if not named:
            self.stats["dns:no-address"] += 1

    def _dns_tcp(self, ts: float, buf: bytes, l4: int, end: int, src: bytes, dst: bytes, sport: int, dport: int,
                 v6: bool) -> None:
        # RFC 1035 section 4.2.2 / RFC 7766: two-byte length prefix, several messages per segment
        doff = (buf[l4 + 12] >> 4) << 2
        if doff < 20 or l4 + doff > end:
            raise IpError("bad-tcp-offset")
        flags = buf[l4 + 13]
        key = src + dst + buf[l4 : l4 + 4]
        self._current = key
        seq = _u32(buf, l4 + 4)
        flows = self.dns_flows
        budget = self._tcp_budget
        if flags & SYN:
            old = flows.pop(key, None)
            if old is not None:
                budget.held -= old.cost
            elif len(flows) >= self.config.max_flows:
                _, old = flows.popitem(last=False)
                budget.held -= old.cost
                self.drops["flow:evicted"] += 1
            flows[key] = Flow(seq + 1, True, ts, src, dst, sport, dport)
            return
        data = buf[l4 + doff : end]
        flow = flows.get(key)
        if flow is None:
            if not data:
                return
            flow = flows[key] = Flow(seq, False, ts, src, dst, sport, dport)
        if data:
            before = flow.cost
            flow.add(seq, data, self.config.max_dns_tcp_bytes, self.config.max_flow_holes)
            budget.charge(flow.cost - before)
            if budget.held > budget.limit:
                self._evict_tcp(ts)
                if key not in flows:
                    return
            b = flow.buf
            off = flow.consumed
            while off + 2 <= len(b):
                ln = (b[off] << 8) | b[off + 1]
                if off + 2 + ln > len(b):
                    break
                try:
                    self._dns(ts, b[off + 2 : off + 2 + ln], src, dst, sport, dport, v6, Transport.TCP)
                except DecodeError as exc:
                    self.drops[f"{exc.layer}:{exc.reason}"] += 1
                off += 2 + ln
            flow.consumed = off
        if flags & (FIN | RST):
            gone = flows.pop(key, None)
            if gone is not None:
                budget.held -= gone.cost

    # -- QUIC -----------------------------------------------------------------------------

    def _quic(self, ts: float, payload: bytes, src: bytes, dst: bytes, sport: int, dport: int, v6: bool) -> None:
        key = src + dst + sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
        self._current = key
        if self._fresh and not self._same_quic(key, payload):
            self._forget(key)
        elif key in self.done or key in self._done_old:
            return
        budget = self.budgets["quic"]
        entry = self.quic.get(key)
        if entry is None:
            gquic = gquic_version(payload)
            if gquic is not None:
                self._gquic(ts, payload, key, gquic, src, dst, sport, dport)
                return
            if not is_initial(payload):
                self.stats["quic:not-initial"] += 1
                return
            if len(self.quic) >= self.config.max_flows:
                _, (_, old) = self.quic.popitem(last=False)
                budget.held -= old.crypto.cost
                self.drops["flow:evicted"] += 1
            entry = self.quic[key] = (ts, QuicInitialReader(self.config.max_flow_holes))
        reader = entry[1]
        before = reader.crypto.cost
        try:
            hello = reader.feed(payload)
        except DecodeError as exc:
            del self.quic[key]
            budget.held -= before
            self._mark_done(key, reader.dcid)
            if isinstance(exc, QuicError) and exc.reason == "decrypt-failed":
                self.drops["quic:decrypt-failed"] += 1
                return
            raise
        budget.charge(reader.crypto.cost - before)
        reader.datagrams += 1
        if hello is None:
            spent = self._budget_spent(reader.datagrams, entry[0], ts)
            if spent:  # the name budget (issue 36): judged by its address, on this datagram
                del self.quic[key]
                budget.held -= reader.crypto.cost
                self._mark_done(key, reader.dcid)
                self.stats["flow:" + spent] += 1
                self._emit(Flow(0, True, ts, src, dst, sport, dport), ts, Kind.IP_ONLY, Transport.UDP, "", spent)
                return
            if budget.held > budget.limit:
                self._evict_quic()
            return
        del self.quic[key]
        budget.held -= reader.crypto.cost
        self._mark_done(key, reader.dcid)
        flow = Flow(0, True, ts, src, dst, sport, dport)
        version = entry[1].version
        self._emit_tls(flow, ts, hello, Kind.QUIC_SNI, Transport.UDP, "" if version == V1 else " quic=" + version_name(version))

    def _same_quic(self, key: bytes, payload: bytes) -> bool:
        """Whether a datagram marked as its flow's first (inline) belongs to the QUIC connection the
        decoder already reads or has decided on this 4-tuple: the same Destination Connection ID
        in a long header (a new connection picks a new one, RFC 9000 section 7.2). Such a datagram
        comes where the kernel cut a UDP GSO packet without NFQA_CFG_F_GSO (Chromium sends its
        Initials so), and where a burst's later datagrams find the first one's conntrack entry not
        yet confirmed while it waits in the queue (reasoned from the kernel, not seen in the lab)."""
        n = len(payload)
        if n < 7 or not payload[0] & 0x80:
            return False
        ln = payload[5]
        if ln < 8 or 6 + ln > n:
            return False
        dcid = payload[6 : 6 + ln]
        entry = self.quic.get(key)
        return self._first_again(entry[1].dcid == dcid if entry is not None else self._done_ident(key) == dcid)

    def _gquic(self, ts: float, payload: bytes, key: bytes, version: bytes, src: bytes, dst: bytes, sport: int,
               dport: int) -> None:
        # Legacy Google QUIC: the CHLO is plaintext, in the client's first packet(s).
        hello = parse_gquic_chlo(payload)
        if hello is None:
            self.stats["quic:gquic-no-chlo"] += 1
            return
        self._mark_done(key, -1)
        flow = Flow(0, True, ts, src, dst, sport, dport)
        self._emit_tls(flow, ts, hello, Kind.QUIC_SNI, Transport.UDP, " quic=" + version.decode("ascii"))

    # -- housekeeping ---------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        if self.tcp_conns is not None:
            cfg = self.config
            if now - self._conn_swap["tcp"] >= cfg.conn_tcp_idle:
                self._conn_age("tcp", now)
            if now - self._conn_swap["udp"] >= cfg.conn_udp_idle:
                self._conn_age("udp", now)
            self._conn_sweep(now)
        limit = now - self.config.flow_timeout
        # What expires is given up without a packet of its own at hand: its observation carries no
        # sequence numbers (nothing to reset with; inline, the packet being decided is another
        # flow's and must not be dropped for it).
        self._seg = (0, 0, 0)
        for table in (self.flows, self.dns_flows):
            while table:
                k = next(iter(table))
                flow = table[k]
                if flow.ts >= limit:
                    break
                del table[k]
                self._tcp_budget.held -= flow.cost
                self.drops["flow:timeout"] += 1
                if table is self.flows and flow.buf:
                    self._mark_done(k, flow.ack)
                    self._give_up(flow, now, "unknown-protocol" if flow.held else "incomplete")
        while self.quic:
            k = next(iter(self.quic))
            if self.quic[k][0] >= limit:
                break
            self.budgets["quic"].held -= self.quic.pop(k)[1].crypto.cost
            self.drops["flow:timeout"] += 1
        while self.frags:
            k2 = next(iter(self.frags))
            if self.frags[k2].ts >= now - 5.0:
                break
            self.budgets["fragment"].held -= self.frags.pop(k2).cost
            self.drops["ip:fragment-timeout"] += 1
