"""Frames → Observations: link and network layers, tunnels, bounded flow state, protocol dispatch.

sans-IO: ``Decoder.feed(ts, frame, linktype)`` takes one captured frame and returns the
observations it completes (usually none). It never raises on bad input: every ``DecodeError``
is caught here, in one place, and counted by layer and reason (``Decoder.drops``).

Flow state is bounded by count, bytes per flow and age, and dropped as soon as the name is
known; a flow once named (or given up) is remembered in a bounded "done" table so its bulk
data costs one dict probe.
"""

from __future__ import annotations

import socket
import struct
from collections import Counter, OrderedDict
from dataclasses import dataclass

from beiand.model import Kind, Observation, Transport
from beiand.net import dns as dnsmod
from beiand.net.errors import DecodeError, IpError, LinkError, QuicError
from beiand.net.http import looks_like_http, parse_requests
from beiand.net.names import normalise_wire_name
from beiand.net.quic import QuicInitialReader, is_initial
from beiand.net.tls import ClientHello, looks_like_tls, parse_client_hello

# Link types (https://www.tcpdump.org/linktypes.html)
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
SUPPORTED_LINKTYPES = frozenset({LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LOOP, LINKTYPE_LINUX_SLL,
                                 LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL2, 12, 14})

VXLAN_PORT = 4789  # RFC 7348
GENEVE_PORT = 6081  # RFC 8926
GTPU_PORT = 2152  # 3GPP TS 29.281
MAX_DEPTH = 4  # nested encapsulations
SYN, ACK, FIN, RST = 0x02, 0x10, 0x01, 0x04
_U32 = struct.Struct("!I")
_EMPTY: list[Observation] = []
_ntop = socket.inet_ntop
_AF4, _AF6 = socket.AF_INET, socket.AF_INET6


@dataclass(frozen=True)
class DecoderConfig:
    tcp_ports: frozenset[int] = frozenset({80, 443, 8080, 8443})
    udp_ports: frozenset[int] = frozenset({443})  # QUIC
    dns_ports: frozenset[int] = frozenset({53})
    all_tcp_ports: bool = False  # recognise by content on every TCP port
    max_flows: int = 65536
    max_flow_bytes: int = 16384  # enough for a post-quantum ClientHello split over segments
    flow_timeout: float = 30.0
    max_done: int = 262144
    max_fragments: int = 1024
    max_dns_tcp_bytes: int = 1 << 17


class Flow:
    """The first client bytes of one TCP connection, reassembled from segments in any order."""

    __slots__ = ("base", "buf", "client", "consumed", "dport", "segs", "server", "sport", "syn", "ts")

    def __init__(self, base: int, syn: bool, ts: float, src: bytes, dst: bytes, sport: int, dport: int) -> None:
        self.base = base
        self.syn = syn
        self.ts = ts
        self.segs: dict[int, bytes] = {}
        self.buf = b""
        self.client = src
        self.server = dst
        self.sport = sport
        self.dport = dport
        self.consumed = 0

    def add(self, seq: int, data: bytes, limit: int) -> bool:
        """Add a segment; True if the contiguous prefix grew."""
        off = (seq - self.base) & 0xFFFFFFFF
        if off >= 0x80000000:  # before our base: we missed the first segment
            if self.syn:
                return False  # a retransmission of something before the SYN: ignore
            shift = (self.base - seq) & 0xFFFFFFFF
            if shift + len(self.buf) > limit:
                return False
            self.segs = {o + shift: d for o, d in self.segs.items()}
            if self.buf:
                self.segs[shift] = self.buf
            self.buf = b""
            self.base = seq
            off = 0
        if off >= limit:
            return False
        if off + len(data) > limit:
            data = data[: limit - off]
        have = len(self.buf)
        if off + len(data) <= have:
            return False  # retransmission
        if off <= have:
            self.buf += data[have - off :]
        else:
            old = self.segs.get(off)
            if old is None or len(old) < len(data):
                self.segs[off] = data
            return False
        segs = self.segs
        while segs:
            grown = False
            for o in list(segs):
                d = segs[o]
                have = len(self.buf)
                if o <= have:
                    del segs[o]
                    if o + len(d) > have:
                        self.buf += d[have - o :]
                        grown = True
            if not grown:
                break
        return True


class FragmentBuffer:
    __slots__ = ("parts", "total", "ts")

    def __init__(self, ts: float) -> None:
        self.ts = ts
        self.parts: dict[int, bytes] = {}
        self.total = -1


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
        # Flows already named or given up, in two generations: the older one is dropped whole.
        self.done: dict[bytes, float] = {}
        self._done_old: dict[bytes, float] = {}
        self.drops: Counter[str] = Counter()  # what was dropped, by layer:reason
        self._seg: tuple[int, int, int] = (0, 0, 0)  # the TCP segment being decoded: seq, ack, payload length
        self.stats: Counter[str] = Counter()  # what was seen
        self.packets = 0
        self.bytes = 0
        self.server_to_client = 0  # TCP packets from a watched port: skipped
        self._out: list[Observation] = []
        self._clock = 0.0

    # -- entry point ----------------------------------------------------------------------

    def feed(self, ts: float, frame: bytes, linktype: int = LINKTYPE_ETHERNET) -> list[Observation]:
        self.packets += 1
        self.bytes += len(frame)
        out = self._out
        try:
            if linktype == LINKTYPE_ETHERNET:
                # Fast path: Ethernet + IPv4 without options or fragments + TCP, the bulk of a link.
                n = len(frame)
                if n >= 42 and frame[12] == 8 and frame[13] == 0 and frame[14] == 0x45 \
                        and not (frame[20] & 0x3F or frame[21]):
                    proto = frame[23]
                    total = (frame[16] << 8) | frame[17]
                    if total < 20:  # 0: a TSO frame as captured on the sender; else invalid
                        end = n if total == 0 else 34
                    else:
                        end = min(14 + total, n)
                    if proto == 6 and n >= 54:
                        if ((frame[36] << 8) | frame[37]) not in self.tcp_ports and ((frame[34] << 8) | frame[35]) in self.tcp_ports:
                            self.server_to_client += 1  # the server's answer: nothing to name
                        else:
                            self._tcp(ts, frame, 34, end, frame[26:30], frame[30:34], False)
                    elif proto == 17:
                        self._udp(ts, frame, 34, end, frame[26:30], frame[30:34], False, 0)
                    else:
                        self._ip(ts, frame, 14, 0)
                elif n >= 62 and frame[12] == 0x86 and frame[13] == 0xDD and frame[14] >> 4 == 6 and frame[20] in (6, 17):
                    # Ethernet + IPv6 without extension headers, TCP or UDP
                    plen = (frame[18] << 8) | frame[19]
                    end = min(54 + plen, n) if plen else n
                    if frame[20] == 6:
                        self._tcp(ts, frame, 54, end, frame[22:38], frame[38:54], True)
                    else:
                        self._udp(ts, frame, 54, end, frame[22:38], frame[38:54], True, 0)
                else:
                    self._ether(ts, frame, 0, 0)
            elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6, 12, 14):
                self._ip(ts, frame, 0, 0)
            elif linktype == LINKTYPE_LINUX_SLL:
                if len(frame) < 16:
                    raise LinkError("truncated-sll")
                self._ethertype(ts, frame, 16, (frame[14] << 8) | frame[15], 0)
            elif linktype == LINKTYPE_LINUX_SLL2:
                if len(frame) < 20:
                    raise LinkError("truncated-sll2")
                self._ethertype(ts, frame, 20, (frame[0] << 8) | frame[1], 0)
            elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
                if len(frame) < 5:
                    raise LinkError("truncated-null")
                self._ip(ts, frame, 4, 0)
            else:
                raise LinkError("unsupported-linktype")
        except DecodeError as exc:
            self.drops[f"{exc.layer}:{exc.reason}"] += 1
        except (IndexError, struct.error, ValueError):
            # Defensive: a length check we missed must still not stop the daemon.
            self.drops["net:malformed"] += 1
        if ts - self._clock > 1.0:
            self._clock = ts
            self._expire(ts)
        if out:
            self._out = []
            return out
        return _EMPTY

    def flush(self) -> list[Observation]:
        """End of input: flows that never showed a name become ip-only observations."""
        for flow in list(self.flows.values()):
            self._give_up(flow, flow.ts, "incomplete")
        self.flows.clear()
        self.dns_flows.clear()
        self.quic.clear()
        self.frags.clear()
        out, self._out = self._out, []
        return out

    @property
    def flow_count(self) -> int:
        return len(self.flows) + len(self.dns_flows) + len(self.quic)

    # -- link layer -----------------------------------------------------------------------

    def _ether(self, ts: float, buf: bytes, off: int, depth: int) -> None:
        if len(buf) < off + 14:
            raise LinkError("truncated-ethernet")
        self._ethertype(ts, buf, off + 14, (buf[off + 12] << 8) | buf[off + 13], depth)

    def _ethertype(self, ts: float, buf: bytes, off: int, et: int, depth: int) -> None:
        n = len(buf)
        while True:
            if et == 0x0800 or et == 0x86DD:
                self._ip(ts, buf, off, depth)
                return
            if et in (0x8100, 0x88A8, 0x9100):  # 802.1Q / QinQ
                if n < off + 4:
                    raise LinkError("truncated-vlan")
                et = (buf[off + 2] << 8) | buf[off + 3]
                off += 4
                continue
            if et in (0x8847, 0x8848):  # MPLS label stack (RFC 3032)
                while True:
                    if n < off + 4:
                        raise LinkError("truncated-mpls")
                    bos = buf[off + 2] & 1
                    off += 4
                    if bos:
                        break
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
            if et == 0x8864:  # PPPoE session (RFC 2516) + PPP protocol
                if n < off + 8:
                    raise LinkError("truncated-pppoe")
                proto = (buf[off + 6] << 8) | buf[off + 7]
                if proto in (0x0021, 0x0057):
                    self._ip(ts, buf, off + 8, depth)
                else:
                    self.stats["link:pppoe-control"] += 1
                return
            self.stats["link:not-ip"] += 1
            return

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
                    ident = _U32.unpack_from(buf, l4 + 4)[0]
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
            self._tcp(ts, buf, l4, end, src, dst, v6)
        elif proto == 17:
            self._udp(ts, buf, l4, end, src, dst, v6, depth)
        elif proto in (4, 41):  # IP-in-IP, 6in4 (RFC 2003, RFC 4213)
            if depth >= MAX_DEPTH:
                raise IpError("too-deep")
            self._ip(ts, buf[:end], l4, depth + 1)
        elif proto == 47:
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
        if proto in (0x0800, 0x86DD):
            self._ip(ts, buf, off, depth + 1)
        elif proto == 0x6558:
            self._ether(ts, buf, off, depth + 1)
        elif proto == 0x88BE:
            self._ether(ts, buf, off + 8, depth + 1)
        else:
            self.stats["gre:other-protocol"] += 1

    def _fragment(self, ts: float, src: bytes, dst: bytes, ident: int, fo: int, more: bool, data: bytes,
                  ver: int, depth: int) -> None:
        """UDP fragments (DNS answers over 1232 bytes) reassembled within bounds (RFC 791/8200)."""
        key = (src, dst, ident, ver)
        fb = self.frags.get(key)
        if fb is None:
            if len(self.frags) >= self.config.max_fragments:
                self.frags.popitem(last=False)
                self.drops["ip:fragment-evicted"] += 1
            fb = self.frags[key] = FragmentBuffer(ts)
        if fo + len(data) > 65535:
            self.frags.pop(key, None)
            raise IpError("fragment-too-long")
        fb.parts[fo] = data
        if not more:
            fb.total = fo + len(data)
        if fb.total < 0:
            return
        whole = b""
        for o in sorted(fb.parts):
            if o > len(whole):
                return  # a hole
            whole += fb.parts[o][len(whole) - o :]
        if len(whole) < fb.total:
            return
        del self.frags[key]
        self.stats["ip:reassembled"] += 1
        self._udp(ts, whole, 0, fb.total, src, dst, ver == 6, depth)

    # -- transport ------------------------------------------------------------------------

    def _udp(self, ts: float, buf: bytes, l4: int, end: int, src: bytes, dst: bytes, v6: bool, depth: int) -> None:
        if end - l4 < 8:
            raise IpError("truncated-udp")
        sport = (buf[l4] << 8) | buf[l4 + 1]
        dport = (buf[l4 + 2] << 8) | buf[l4 + 3]
        if sport in self.dns_ports:
            self._dns(ts, buf[l4 + 8 : end], src, dst, sport, dport, v6, Transport.UDP)
            return
        if dport in self.udp_ports:
            self._quic(ts, buf[l4 + 8 : end], src, dst, sport, dport, v6)
            return
        if depth < MAX_DEPTH:
            p = l4 + 8
            if dport == VXLAN_PORT:
                if end - p >= 8 and buf[p] & 0x08:
                    self._ether(ts, buf[:end], p + 8, depth + 1)
                return
            if dport == GENEVE_PORT:
                if end - p < 8:
                    raise IpError("truncated-geneve")
                inner = p + 8 + ((buf[p] & 0x3F) << 2)
                proto = (buf[p + 2] << 8) | buf[p + 3]
                if proto == 0x6558:
                    self._ether(ts, buf[:end], inner, depth + 1)
                elif proto in (0x0800, 0x86DD):
                    self._ip(ts, buf[:end], inner, depth + 1)
                return
            if dport == GTPU_PORT:
                self._gtpu(ts, buf[:end], p, depth)
                return
        if dport in self.dns_ports:
            self.stats["dns:query"] += 1
            return
        self.stats["udp:other"] += 1

    def _gtpu(self, ts: float, buf: bytes, p: int, depth: int) -> None:
        # 3GPP TS 29.281 section 5: 8-byte header, +4 when E, S or PN is set, then extensions
        n = len(buf)
        if n < p + 8:
            raise IpError("truncated-gtpu")
        flags, mtype = buf[p], buf[p + 1]
        if flags >> 5 != 1:
            raise IpError("gtp-version")
        if mtype != 0xFF:
            self.stats["gtpu:signalling"] += 1
            return
        off = p + 8
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
        self._ip(ts, buf, off, depth + 1)

    def _tcp(self, ts: float, buf: bytes, l4: int, end: int, src: bytes, dst: bytes, v6: bool) -> None:
        if end - l4 < 20:
            raise IpError("truncated-tcp")
        sport = (buf[l4] << 8) | buf[l4 + 1]
        dport = (buf[l4 + 2] << 8) | buf[l4 + 3]
        if dport not in self.tcp_ports:
            if sport in self.dns_ports:
                self._dns_tcp(ts, buf, l4, end, src, dst, sport, dport, v6)
                return
            if sport in self.tcp_ports:
                self.server_to_client += 1
                return
            if not self.config.all_tcp_ports or dport in self.dns_ports:
                self.stats["tcp:not-watched"] += 1
                return
        doff = (buf[l4 + 12] >> 4) << 2
        if doff < 20 or l4 + doff > end:
            raise IpError("bad-tcp-offset")
        flags = buf[l4 + 13]
        if l4 + doff == end and not flags & (SYN | FIN | RST):
            return  # a bare ACK
        key = src + dst + buf[l4 : l4 + 4]
        if flags & SYN:
            if flags & ACK:
                return
            self.done.pop(key, None)
            self._done_old.pop(key, None)
            self._new_flow(key, Flow(_U32.unpack_from(buf, l4 + 4)[0] + 1, True, ts, src, dst, sport, dport))
            return
        if l4 + doff == end:
            if flags & (FIN | RST):
                flow = self.flows.pop(key, None)
                if flow is not None and flow.buf:
                    self._give_up(flow, ts, "closed")
            return
        if key in self.done or key in self._done_old:
            return
        seq = _U32.unpack_from(buf, l4 + 4)[0]
        data = buf[l4 + doff : end]
        self._seg = (seq, _U32.unpack_from(buf, l4 + 8)[0], end - l4 - doff)
        flow = self.flows.get(key)
        if flow is None:
            # Most connections: the whole ClientHello or request head in the first segment.
            flow = Flow(seq, False, ts, src, dst, sport, dport)
            flow.buf = data[: self.config.max_flow_bytes]
            if self._examine(flow, ts):
                self._mark_done(key, ts)
            else:
                self._new_flow(key, flow)
            return
        if flow.add(seq, data, self.config.max_flow_bytes):
            if self._examine(flow, ts):
                del self.flows[key]
                self._mark_done(key, ts)
            elif len(flow.buf) >= self.config.max_flow_bytes:
                del self.flows[key]
                self._mark_done(key, ts)
                self._give_up(flow, ts, "too-long")

    def _new_flow(self, key: bytes, flow: Flow) -> None:
        flows = self.flows
        if len(flows) >= self.config.max_flows and key not in flows:
            old_key, old = flows.popitem(last=False)
            self.drops["flow:evicted"] += 1
            self._mark_done(old_key, old.ts)
        flows[key] = flow

    def _mark_done(self, key: bytes, ts: float) -> None:
        done = self.done
        done[key] = ts
        if len(done) > self.config.max_done // 2:
            self._done_old = done
            self.done = {}

    def _examine(self, flow: Flow, ts: float) -> bool:
        """Look at the flow's first bytes; True when the flow needs no more bytes."""
        buf = flow.buf
        if not buf:
            return False
        try:
            if looks_like_tls(buf) or (len(buf) < 3 and buf[0] == 0x16):
                hello = parse_client_hello(buf)
                if hello is None:
                    return False
                self._emit_tls(flow, ts, hello, Kind.TLS_SNI, Transport.TCP)
                return True
            if looks_like_http(buf[:17]):
                reqs = parse_requests(buf)
                if reqs is None:
                    return False
                seen: set[str] = set()
                for r in reqs:
                    if r.host and r.host not in seen:
                        seen.add(r.host)
                        # target: the request line's path, for URL rules of the regulator's commands (ISMS)
                        self._emit(flow, ts, Kind.HTTP_HOST, Transport.TCP, r.host, f"method={r.method} target={r.target[:512]}")
                if not seen:
                    self._emit(flow, ts, Kind.IP_ONLY, Transport.TCP, "", "http-no-host")
                return True
        except DecodeError as exc:
            self.drops[f"{exc.layer}:{exc.reason}"] += 1
            self._give_up(flow, ts, f"{exc.layer}-{exc.reason}")
            return True
        self._give_up(flow, ts, "unknown-protocol")
        return True

    def _give_up(self, flow: Flow, ts: float, why: str) -> None:
        if not flow.syn and why == "unknown-protocol":
            # Joined mid-stream (capture started late): not the connection's first bytes.
            self.stats["flow:midstream"] += 1
            return
        self._emit(flow, ts, Kind.IP_ONLY, Transport.TCP, "", why)

    def _emit_tls(self, flow: Flow, ts: float, hello: ClientHello, kind: Kind, transport: Transport) -> None:
        detail = hello.version
        if hello.alpn:
            detail += " alpn=" + ",".join(hello.alpn)
        if hello.ech:
            detail += " ech-outer"  # the SNI seen is ECH's public name, not the real one
        if hello.sni:
            self._emit(flow, ts, kind, transport, hello.sni, detail)
        else:
            self._emit(flow, ts, Kind.IP_ONLY, transport, "", detail + " no-sni")

    def _emit(self, flow: Flow, ts: float, kind: Kind, transport: Transport, name: str, detail: str) -> None:
        af = _AF6 if len(flow.client) == 16 else _AF4
        seq, ack, ln = self._seg if transport is Transport.TCP else (0, 0, 0)
        self._out.append(Observation(
            ts, _ntop(af, flow.client), flow.sport, _ntop(af, flow.server), flow.dport, transport, kind,
            name, normalise_wire_name(name) if name else "", (), detail, seq, ack, ln))

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
        chain, addrs = dnsmod.resolve_chain(msg)
        if not addrs:
            self.stats["dns:no-address"] += 1
            return
        af = _AF6 if v6 else _AF4
        detail = "cname=" + ">".join(chain[1:]) if len(chain) > 1 else ""
        # The querier is the client; the answer points the name at the answered addresses.
        self._out.append(Observation(
            ts, _ntop(af, dst), dport, _ntop(af, src), sport, transport, Kind.DNS_ANSWER,
            msg.qname, normalise_wire_name(msg.qname), tuple(a for a, _ in addrs), detail))

    def _dns_tcp(self, ts: float, buf: bytes, l4: int, end: int, src: bytes, dst: bytes, sport: int, dport: int,
                 v6: bool) -> None:
        # RFC 1035 section 4.2.2 / RFC 7766: two-byte length prefix, several messages per segment
        doff = (buf[l4 + 12] >> 4) << 2
        if doff < 20 or l4 + doff > end:
            raise IpError("bad-tcp-offset")
        flags = buf[l4 + 13]
        key = src + dst + buf[l4 : l4 + 4]
        seq = _U32.unpack_from(buf, l4 + 4)[0]
        flows = self.dns_flows
        if flags & SYN:
            if len(flows) >= self.config.max_flows:
                flows.popitem(last=False)
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
            flow.add(seq, data, self.config.max_dns_tcp_bytes)
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
            flows.pop(key, None)

    # -- QUIC -----------------------------------------------------------------------------

    def _quic(self, ts: float, payload: bytes, src: bytes, dst: bytes, sport: int, dport: int, v6: bool) -> None:
        key = src + dst + sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
        if key in self.done or key in self._done_old:
            return
        entry = self.quic.get(key)
        if entry is None:
            if not is_initial(payload):
                self.stats["quic:not-initial"] += 1
                return
            if len(self.quic) >= self.config.max_flows:
                self.quic.popitem(last=False)
                self.drops["flow:evicted"] += 1
            entry = self.quic[key] = (ts, QuicInitialReader())
        try:
            hello = entry[1].feed(payload)
        except DecodeError as exc:
            del self.quic[key]
            self._mark_done(key, ts)
            if isinstance(exc, QuicError) and exc.reason == "decrypt-failed":
                self.drops["quic:decrypt-failed"] += 1
                return
            raise
        if hello is None:
            return
        del self.quic[key]
        self._mark_done(key, ts)
        flow = Flow(0, True, ts, src, dst, sport, dport)
        self._emit_tls(flow, ts, hello, Kind.QUIC_SNI, Transport.UDP)

    # -- housekeeping ---------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        limit = now - self.config.flow_timeout
        for table in (self.flows, self.dns_flows):
            while table:
                k = next(iter(table))
                flow = table[k]
                if flow.ts >= limit:
                    break
                del table[k]
                self.drops["flow:timeout"] += 1
                if table is self.flows and flow.buf:
                    self._mark_done(k, flow.ts)
                    self._give_up(flow, now, "incomplete")
        while self.quic:
            k = next(iter(self.quic))
            if self.quic[k][0] >= limit:
                break
            del self.quic[k]
            self.drops["flow:timeout"] += 1
        while self.frags:
            k2 = next(iter(self.frags))
            if self.frags[k2].ts >= now - 5.0:
                break
            del self.frags[k2]
            self.drops["ip:fragment-timeout"] += 1
