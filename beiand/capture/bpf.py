"""The classic BPF program the kernel runs for beiand (no tcpdump needed at run time).

It accepts a *candidate frame*, inside every encapsulation the decoder walks (VLAN/QinQ, MPLS
with a pseudowire control word, PPPoE with a full or compressed PPP protocol field, IP-in-IP,
6in4, GRE with its optional fields and ERSPAN II, VXLAN, Geneve with its options, GTP-U with
extension headers), to the decoder's depth (``net/link.py`` declares both):
- DNS answers: UDP or TCP from port 53;
- TCP to a watched port that carries payload or SYN/FIN/RST (bare ACKs are dropped: they
  are most of a connection and carry nothing beiand reads); an IPv4 total length of 0 (a TSO
  frame seen on the sender) counts as payload;
- UDP to a watched port whose first byte is a QUIC long header or a Google QUIC public header
  with the version flag (the client's Initials, never the 1-RTT bulk);
- IPv4 fragments of UDP and IPv6 fragments (the decoder reassembles them);
- with ``connections`` (issue 19, connection records): TCP with SYN, SYN+ACK, FIN or RST on
  *any* port (a flow's start; the server's answer, one packet a connection, which tells an
  established flow from an attempt, issue 32; the end of one open before capture began, or the
  server's refusal), and UDP on any port but from a
  watched UDP port (classic BPF keeps no state, so it cannot pick a flow's first datagram: every
  datagram is passed, the decoder coalesces; QUIC's bulk, from or to a watched port, stays out).
Everything else (server answers on watched ports, bulk ACKs, 1-RTT QUIC, other ports) stays in
the kernel.

Classic BPF has no loops, so every step is unrolled, and a header chain longer than the
unrolled steps is *passed*, never dropped: more than ``BPF_MAX_VLAN_TAGS`` VLAN tags, more than
``BPF_MAX_MPLS_LABELS`` MPLS labels, more than ``BPF_MAX_GTPU_EXTENSIONS`` GTP-U extension
headers, and IPv6 packets with extension headers (hop-by-hop, routing, destination options,
AH). The decoder counts such frames in ``stats["capture:bpf-unfollowed"]``.

``condition`` (``capture.filter``, see :mod:`beiand.capture.filterexpr`) is the operator's own
condition on the outer headers, compiled in front: a frame it rejects costs a few instructions.

:func:`run` interprets a program in Python as the kernel does: the tests check, frame by frame,
that every frame the decoder names is accepted, and compare the program with :func:`reference`,
the same rule written plainly.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from beiand.errors import BeiandError
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
    ETHERNET_HEADER,
    GENEVE_HEADER,
    GENEVE_PORT,
    GTPU_HEADER,
    GTPU_PORT,
    GTPU_TPDU,
    IP_IN_IP,
    IPPROTO_GRE,
    IPV6_EXTENSION_HEADERS,
    IPV6_FRAGMENT,
    LINK_TYPES,
    LINKTYPE_ETHERNET,
    MAX_DEPTH,
    METHOD_WORDS,
    MPLS_CONTROL_WORD,
    MPLS_LABEL,
    PPP_IPV4,
    PPP_IPV6,
    PPPOE_HEADER,
    QUIC_FIRST_DRAFT,
    QUIC_KNOWN_VERSIONS,
    QUIC_LAST_DRAFT,
    QUIC_MIN_INITIAL,
    VLAN_TAG,
    VXLAN_FLAG_VNI,
    VXLAN_HEADER,
    VXLAN_PORT,
    Start,
    quic_known_version,
)

# Opcodes (linux/filter.h)
LD, LDX, ST, STX, ALU, JMP, RET, MISC = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
W, H, B = 0x00, 0x08, 0x10
IMM, ABS, IND, MEM, MSH = 0x00, 0x20, 0x40, 0x60, 0xA0
ADD, SUB, OR, AND, LSH, RSH = 0x00, 0x10, 0x40, 0x50, 0x60, 0x70
K, X = 0x00, 0x08
JA, JEQ, JGT, JGE, JSET = 0x00, 0x10, 0x20, 0x30, 0x40
TAX, TXA = 0x00, 0x80
SNAPLEN = 262144
MAX_INSNS = 4096  # BPF_MAXINSNS

Insn = tuple[int, int, int, int]  # code, jt, jf, k

# Scratch memory slots (M[]): each is stored before it is loaded on every path (the kernel checks).
_M_TMP, _M_IHL, _M_TOTAL, _M_DOFF, _M_PAY, _M_SPORT = 0, 1, 2, 3, 4, 5
# Names on any port (issue 32): an odd port's segment is passed when it starts a ClientHello
# (``16 03``, handshake type 1 at its sixth byte) or a request of a known method (its first word;
# or CR/LF, empty lines a server skips before one),
# or carries fewer than ``_SHORT`` bytes (a first segment cut to hide what follows); a UDP
# datagram when it is a padded long-header packet of a known QUIC version.
_SHORT = 8
_QUIC_UDP_LENGTH = 8 + QUIC_MIN_INITIAL


@dataclass
class _Op:
    code: int
    k: int = 0
    jt: str | None = None  # label
    jf: str | None = None
    long: bool = False  # a conditional whose target is beyond 255: jcond 0,1 / ja jt / ja jf


class _Asm:
    def __init__(self) -> None:
        self.ops: list[_Op | str] = []
        self._n = 0

    def label(self, name: str) -> None:
        self.ops.append(name)

    def fresh(self, hint: str) -> str:
        self._n += 1
        return f"_{hint}{self._n}"

    def op(self, code: int, k: int = 0, jt: str | None = None, jf: str | None = None) -> None:
        self.ops.append(_Op(code, k, jt, jf))

    def ja(self, target: str) -> None:
        self.ops.append(_Op(JMP | JA, 0, target))

    def jeq_any(self, values: Iterable[int], target: str) -> None:
        for v in sorted(set(values)):
            self.op(JMP | JEQ | K, v, jt=target)

    def advance(self, n: int) -> None:
        """X += n (the header being read moves on)."""
        self.op(MISC | TXA)
        self.op(ALU | ADD | K, n)
        self.op(MISC | TAX)

    def assemble(self) -> list[Insn]:
        ops = [o for o in self.ops if isinstance(o, _Op)]
        while True:  # relax: widen conditionals whose targets are out of reach, until none is
            pos: dict[str, int] = {}
            n = 0
            for o in self.ops:
                if isinstance(o, str):
                    pos[o] = n
                else:
                    n += 3 if o.long else 1
            changed = False
            i = 0
            for o in ops:
                if o.code & 0x07 == JMP and o.code & 0xF0 != JA and not o.long:
                    for t in (o.jt, o.jf):
                        if t is not None and pos[t] - i - 1 > 255:
                            o.long = changed = True
                i += 3 if o.long else 1
            if not changed:
                break
        out: list[Insn] = []
        for o in ops:
            i = len(out)
            if o.code & 0x07 == JMP and o.code & 0xF0 == JA:
                out.append((o.code, 0, 0, pos[o.jt or ""] - i - 1))
            elif o.long:
                out.append((o.code, 0, 1, o.k))
                out.append((JMP | JA, 0, 0, (pos[o.jt] - i - 2) if o.jt else 1))
                out.append((JMP | JA, 0, 0, (pos[o.jf] - i - 3) if o.jf else 0))
            elif o.code & 0x07 == JMP:
                jt = pos[o.jt] - i - 1 if o.jt else 0
                jf = pos[o.jf] - i - 1 if o.jf else 0
                if not (0 <= jt <= 255 and 0 <= jf <= 255):
                    raise ValueError(f"BPF jump from {i} out of range")
                out.append((o.code, jt, jf, o.k))
            else:
                out.append((o.code, 0, 0, o.k))
        if len(out) > MAX_INSNS:
            raise ValueError(f"BPF program of {len(out)} instructions (the kernel takes {MAX_INSNS})")
        return out


class _Condition(Protocol):
    def emit(self, a: _Asm, linktype: int) -> None: ...


def build(tcp_ports: Iterable[int], udp_ports: Iterable[int], dns: bool = True, *,
          linktype: int = LINKTYPE_ETHERNET, condition: _Condition | None = None, connections: bool = False,
          queued_udp: Iterable[int] = (), queued_tcp: Iterable[int] = (), any_port: bool = False,
          queued_any_port: bool = False) -> list[Insn]:
    """The capture filter for frames of ``linktype`` (see the module's docstring).

    ``queued_udp``: inline, UDP ports whose datagrams arrive through NFQUEUE: never passed here,
    in either direction, connection records or not (a datagram must not be decided twice).
    ``queued_tcp``: inline with several workers, TCP ports whose SYN, FIN and RST are not passed
    for connection records either: the ring's fanout and NFQUEUE's balance pick a worker by
    different hashes, so a flow's SYN and its queued packet could reach two workers (two records,
    and a second decision on the ring's side); such a flow's record comes from the queue alone.

    ``any_port`` (passive, issue 32): on the ports not watched, TCP segments that may start a name
    and UDP datagrams that look like a QUIC Initial are passed too. ``queued_any_port`` (inline,
    where those arrive through NFQUEUE): such datagrams are never passed here, connection records
    or not.

    ``condition``: the operator's ``capture.filter`` (:class:`beiand.capture.filterexpr.Condition`),
    compiled in front: it falls through to ``start`` or jumps to ``reject``.
    """
    tcp = sorted(set(tcp_ports))
    udp = sorted(set(udp_ports))
    lt = LINK_TYPES.get(linktype)
    if lt is None or lt.start is Start.NFLOG:
        raise ValueError(f"no capture filter for link type {linktype}")
    a = _Asm()
    if condition is not None:
        condition.emit(a, linktype)
    a.label("start")
    if lt.start is Start.ETHERNET and lt.offset == 0:
        _fast_path(a, tcp, dns, connections, sorted(set(queued_tcp)), any_port)
        a.label("generic")
        a.op(LDX | IMM, 0)
        a.ja("eth0")
    elif lt.start is Start.ETHERNET:
        a.op(LDX | IMM, lt.offset)
        a.ja("eth0")
    elif lt.start is Start.ETHERTYPE:
        a.op(LDX | IMM, lt.offset)
        a.op(LD | H | ABS, lt.ethertype_at)
        a.ja("et0")
    else:
        a.op(LDX | IMM, lt.offset)
        a.ja("ip0")
    queued = sorted(set(queued_udp))
    qtcp = sorted(set(queued_tcp))
    for level in range(MAX_DEPTH + 1):
        _level(a, level, tcp, udp, dns, connections, queued, qtcp, any_port, queued_any_port)
    if any_port:
        _odd_content(a, tcp)
    a.label("accept")
    a.op(RET | K, SNAPLEN)
    a.label("reject")
    a.op(RET | K, 0)
    return a.assemble()


def _to_odd_content(a: _Asm, at: int) -> None:
    """A TCP segment on a port not watched, A = the IP length field, X = the header bytes it
    counts: on to ``_odd_content`` (one copy in the program, after every level: each copy took
    about 100 instructions, and 13 watched ports made the program too long for the kernel) with A
    = the payload's length (0: not known, a TSO frame or a jumbogram) and X = its offset, which
    is ``at`` + X here (``at`` 0: M[_M_PAY] holds it)."""
    known = a.fresh("odd")
    a.op(JMP | JEQ | K, 0, jt=known)
    a.op(JMP | JGT | X, 0, jf="reject")
    a.op(ALU | SUB | X)
    a.label(known)
    if at:
        a.op(ST, _M_TMP)
        a.advance(at)
        a.op(LD | MEM, _M_TMP)
    else:
        a.op(LDX | MEM, _M_PAY)
    a.ja("oddcontent")


def _odd_content(a: _Asm, tcp: list[int]) -> None:
    """The segment ``_to_odd_content`` jumped here with (M[_M_SPORT]: its source port): rejected
    from a watched port (a server's answer, most of the bulk); else accepted when shorter than
    ``_SHORT`` or when it starts a ClientHello or a known method's request, or with CR/LF."""
    at = 0
    content, tls = a.fresh("content"), a.fresh("tls")
    a.label("oddcontent")
    a.op(ST, _M_TMP)
    a.op(LD | MEM, _M_SPORT)
    a.jeq_any(tcp, "reject")
    a.op(LD | MEM, _M_TMP)
    a.op(JMP | JEQ | K, 0, jt=content)
    a.op(JMP | JGE | K, _SHORT, jt=content, jf="accept")
    a.label(content)
    a.op(LD | B | IND, at)
    a.op(JMP | JEQ | K, 0x16, jt=tls)
    a.jeq_any((0x0A, 0x0D), "accept")  # empty lines before a request line (RFC 9112 section 2.2)
    a.op(LD | W | IND, at)
    a.jeq_any(METHOD_WORDS, "accept")
    a.ja("reject")
    a.label(tls)
    a.op(LD | B | IND, at + 1)
    a.op(JMP | JEQ | K, 3, jf="reject")
    a.op(LD | B | IND, at + 5)
    a.op(JMP | JEQ | K, 1, jt="accept")
    a.op(LD | H | IND, at + 3)
    a.op(JMP | JEQ | K, 0, jt="accept", jf="reject")  # an empty first record (OpenSSL reads through it)


def _quic_content(a: _Asm, hit: str, miss: str) -> None:
    """A UDP datagram, X = its header: ``hit`` when it may be a client's QUIC Initial of a known
    version (length, long header with the fixed bit, version), else ``miss``."""
    drafts = a.fresh("drafts")
    a.op(LD | H | IND, 4)
    a.op(JMP | JGE | K, _QUIC_UDP_LENGTH, jf=miss)
    a.op(LD | B | IND, 8)
    a.op(ALU | AND | K, 0xC0)
    a.op(JMP | JEQ | K, 0xC0, jf=miss)
    a.op(LD | W | IND, 9)
    a.jeq_any(QUIC_KNOWN_VERSIONS, hit)
    a.op(ALU | AND | K, 0xFFFFFF00)
    a.op(JMP | JEQ | K, 0xFF000000, jt=drafts, jf=miss)
    a.label(drafts)
    a.op(LD | B | IND, 12)
    a.op(JMP | JGE | K, QUIC_FIRST_DRAFT, jf=miss)
    a.op(JMP | JGT | K, QUIC_LAST_DRAFT, jt=miss, jf=hit)


def _headers_and_length(a: _Asm, v4: bool) -> None:
    """The fast path's Ethernet + IPv4 (X = its header length) or IPv6 + TCP: X = the header bytes
    the IP length counts (IPv4 and TCP headers; IPv6: the TCP header), A = that length field."""
    if v4:
        a.op(LD | B | IND, 26)
    else:
        a.op(LD | B | ABS, 66)
    a.op(ALU | AND | K, 0xF0)
    a.op(ALU | RSH | K, 2)
    if v4:
        a.op(ALU | ADD | X)
    a.op(MISC | TAX)
    a.op(LD | H | ABS, 16 if v4 else 18)


def _fast_path(a: _Asm, tcp: list[int], dns: bool, connections: bool = False, qtcp: list[int] | None = None,
               any_port: bool = False) -> None:
    """Ethernet + IPv4/IPv6 + TCP, not fragmented, no IPv6 extension header: most of a link's
    bulk, judged with absolute loads in about 20 instructions (the walk below takes twice that).
    The same rule as the walk's level 0; anything else goes to ``generic``."""
    a.op(LD | H | ABS, 12)
    a.op(JMP | JEQ | K, ETH_IPV6, jt="fast6")
    a.op(JMP | JEQ | K, ETH_IPV4, jf="generic")
    a.op(LD | B | ABS, 14)
    a.op(ALU | AND | K, 0xF0)
    a.op(JMP | JEQ | K, 0x40, jf="generic")
    a.op(LD | H | ABS, 20)
    a.op(JMP | JSET | K, 0x3FFF, jt="generic")
    a.op(LD | B | ABS, 23)
    a.op(JMP | JEQ | K, 6, jf="generic")
    a.op(LDX | B | MSH, 14)  # X = IPv4 header length
    a.op(LD | H | IND, 16)
    a.jeq_any(tcp, "fastdata4")
    if dns:
        a.op(LD | H | IND, 14)
        a.op(JMP | JEQ | K, 53, jt="accept")
    if connections and qtcp:
        a.op(LD | H | IND, 16)
        a.jeq_any(qtcp, "reject")
        a.op(LD | H | IND, 14)
        a.jeq_any(qtcp, "reject")
    if connections:
        a.op(LD | B | IND, 27)
        a.op(JMP | JSET | K, 0x07, jt="accept")  # SYN (with or without ACK), FIN, RST on any port
    if any_port:  # the payload's first bytes (issue 32), but a watched port's answers (most of the bulk)
        a.op(LD | H | IND, 14)
        a.op(ST, _M_SPORT)
        _headers_and_length(a, True)
        _to_odd_content(a, 14)
    a.ja("reject")
    a.label("fastdata4")
    a.op(LD | B | IND, 27)
    a.op(JMP | JSET | K, 0x07, jt="accept")
    _headers_and_length(a, True)
    a.op(JMP | JEQ | K, 0, jt="accept")
    a.op(JMP | JGT | X, 0, jt="accept", jf="reject")
    a.label("fast6")
    a.op(LD | B | ABS, 14)
    a.op(ALU | AND | K, 0xF0)
    a.op(JMP | JEQ | K, 0x60, jf="generic")
    a.op(LD | B | ABS, 20)
    a.op(JMP | JEQ | K, 6, jf="generic")
    a.op(LD | H | ABS, 56)
    a.jeq_any(tcp, "fastdata6")
    if dns:
        a.op(LD | H | ABS, 54)
        a.op(JMP | JEQ | K, 53, jt="accept")
    if connections and qtcp:
        a.op(LD | H | ABS, 56)
        a.jeq_any(qtcp, "reject")
        a.op(LD | H | ABS, 54)
        a.jeq_any(qtcp, "reject")
    if connections:
        a.op(LD | B | ABS, 67)
        a.op(JMP | JSET | K, 0x07, jt="accept")
    if any_port:
        a.op(LD | H | ABS, 54)
        a.op(ST, _M_SPORT)
        _headers_and_length(a, False)
        _to_odd_content(a, 54)
    a.ja("reject")
    a.label("fastdata6")
    a.op(LD | B | ABS, 67)
    a.op(JMP | JSET | K, 0x07, jt="accept")
    _headers_and_length(a, False)
    a.op(JMP | JEQ | K, 0, jt="accept")
    a.op(JMP | JGT | X, 0, jt="accept", jf="reject")


def _level(a: _Asm, lv: int, tcp: list[int], udp: list[int], dns: bool, connections: bool = False,
           queued: list[int] | None = None, qtcp: list[int] | None = None, any_port: bool = False,
           queued_any_port: bool = False) -> None:
    """The headers at encapsulation depth ``lv``; X holds the offset of the header being read."""
    deeper = lv < MAX_DEPTH
    nxt = lv + 1
    # -- Ethernet: A = ethertype, X = its payload
    a.label(f"eth{lv}")
    a.op(LD | H | IND, 12)
    a.op(ST, _M_TMP)
    a.advance(ETHERNET_HEADER)
    a.op(LD | MEM, _M_TMP)
    a.label(f"et{lv}")
    for tag in range(BPF_MAX_VLAN_TAGS + 1):
        a.op(JMP | JEQ | K, ETH_IPV4, jt=f"ip{lv}")
        a.op(JMP | JEQ | K, ETH_IPV6, jt=f"ip{lv}")
        if tag == BPF_MAX_VLAN_TAGS:
            a.jeq_any(ETH_VLAN, "accept")  # deeper than unrolled: passed, counted by the decoder
            break
        cont = a.fresh("vlan")
        a.jeq_any(ETH_VLAN, cont)
        a.jeq_any(ETH_MPLS, f"mpls{lv}")
        a.op(JMP | JEQ | K, ETH_PPPOE_SESSION, jt=f"pppoe{lv}")
        a.ja("reject")
        a.label(cont)
        a.op(LD | H | IND, 2)
        a.op(ST, _M_TMP)
        a.advance(VLAN_TAG)
        a.op(LD | MEM, _M_TMP)
    a.jeq_any(ETH_MPLS, f"mpls{lv}")
    a.op(JMP | JEQ | K, ETH_PPPOE_SESSION, jt=f"pppoe{lv}")
    a.ja("reject")
    # -- MPLS label stack (RFC 3032): bottom of stack bit, then IP or a control word + Ethernet
    a.label(f"mpls{lv}")
    for _ in range(BPF_MAX_MPLS_LABELS):
        last = a.fresh("bos")
        a.op(LD | B | IND, 2)
        a.op(JMP | JSET | K, 1, jt=last)
        a.advance(MPLS_LABEL)
        continue_label = a.fresh("lbl")
        a.ja(continue_label)
        a.label(last)
        a.advance(MPLS_LABEL)
        a.ja(f"mplsend{lv}")
        a.label(continue_label)
    a.ja("accept")  # a deeper stack: passed, counted by the decoder
    a.label(f"mplsend{lv}")
    a.op(LD | B | IND, 0)
    a.op(ALU | RSH | K, 4)
    a.op(JMP | JEQ | K, 4, jt=f"ip{lv}")
    a.op(JMP | JEQ | K, 6, jt=f"ip{lv}")
    if deeper:
        pw = a.fresh("pw")
        a.op(JMP | JEQ | K, 0, jt=pw, jf="reject")
        a.label(pw)
        a.advance(MPLS_CONTROL_WORD)
        a.ja(f"eth{nxt}")
    else:
        a.ja("reject")
    # -- PPPoE session (RFC 2516) + PPP protocol, one byte when compressed (RFC 1661 section 6.5)
    a.label(f"pppoe{lv}")
    short, ip1, ip2 = a.fresh("pfc"), a.fresh("ppp1"), a.fresh("ppp2")
    a.op(LD | B | IND, PPPOE_HEADER)
    a.op(JMP | JSET | K, 1, jt=short)
    a.op(LD | H | IND, PPPOE_HEADER)
    a.op(JMP | JEQ | K, PPP_IPV4, jt=ip2)
    a.op(JMP | JEQ | K, PPP_IPV6, jt=ip2, jf="reject")
    a.label(short)
    a.op(JMP | JEQ | K, PPP_IPV4 & 0xFF, jt=ip1)
    a.op(JMP | JEQ | K, PPP_IPV6 & 0xFF, jt=ip1, jf="reject")
    a.label(ip1)
    a.advance(PPPOE_HEADER + 1)
    a.ja(f"ip{lv}")
    a.label(ip2)
    a.advance(PPPOE_HEADER + 2)
    # -- IP: the version nibble decides (as in the decoder)
    a.label(f"ip{lv}")
    a.op(LD | B | IND, 0)
    a.op(ALU | RSH | K, 4)
    a.op(JMP | JEQ | K, 4, jt=f"v4_{lv}")
    a.op(JMP | JEQ | K, 6, jt=f"v6_{lv}", jf="reject")
    a.label(f"v4_{lv}")
    a.op(LD | B | IND, 9)
    a.op(ST, _M_TMP)  # protocol
    a.op(LD | H | IND, 6)
    a.op(JMP | JSET | K, 0x3FFF, jt=f"frag{lv}")
    a.op(LD | H | IND, 2)
    a.op(ST, _M_TOTAL)
    a.op(LD | B | IND, 0)
    a.op(ALU | AND | K, 0x0F)
    a.op(ALU | LSH | K, 2)
    a.op(ST, _M_IHL)
    a.op(ALU | ADD | X)
    a.op(MISC | TAX)  # X = transport header
    a.op(LD | MEM, _M_TMP)
    a.op(JMP | JEQ | K, 6, jt=f"tcp4_{lv}")
    a.op(JMP | JEQ | K, 17, jt=f"udp{lv}")
    if deeper:
        a.jeq_any(IP_IN_IP, f"ip{nxt}")
        a.op(JMP | JEQ | K, IPPROTO_GRE, jt=f"gre{lv}")
    a.ja("reject")
    a.label(f"frag{lv}")
    a.op(LD | MEM, _M_TMP)
    a.op(JMP | JEQ | K, 17, jt="accept", jf="reject")
    a.label(f"v6_{lv}")
    a.op(LD | B | IND, 6)
    a.op(ST, _M_TMP)
    a.op(LD | H | IND, 4)
    a.op(ST, _M_TOTAL)  # payload length
    a.advance(40)
    a.op(LD | MEM, _M_TMP)
    a.op(JMP | JEQ | K, 6, jt=f"tcp6_{lv}")
    a.op(JMP | JEQ | K, 17, jt=f"udp{lv}")
    a.op(JMP | JEQ | K, IPV6_FRAGMENT, jt="accept")
    a.jeq_any((h for h in IPV6_EXTENSION_HEADERS if h != IPV6_FRAGMENT), "accept")  # not followed: counted by the decoder
    if deeper:
        a.jeq_any(IP_IN_IP, f"ip{nxt}")
        a.op(JMP | JEQ | K, IPPROTO_GRE, jt=f"gre{lv}")
    a.ja("reject")
    # -- TCP: to a watched port with payload or SYN/FIN/RST; from port 53
    for v in ("4", "6"):
        a.label(f"tcp{v}_{lv}")
        a.op(LD | H | IND, 2)
        a.jeq_any(tcp, f"tcpdata{v}_{lv}")
        if dns:
            a.op(LD | H | IND, 0)
            a.op(JMP | JEQ | K, 53, jt="accept")
        if connections and qtcp:
            a.op(LD | H | IND, 2)
            a.jeq_any(qtcp, "reject")
            a.op(LD | H | IND, 0)
            a.jeq_any(qtcp, "reject")
        if connections:
            a.op(LD | B | IND, 13)
            a.op(JMP | JSET | K, 0x07, jt="accept")  # SYN, SYN+ACK (the server answered), FIN, RST on any port
        if any_port:  # the payload's first bytes (issue 32), but a watched port's answers
            a.op(LD | H | IND, 0)
            a.op(ST, _M_SPORT)
            a.op(LD | B | IND, 12)
            a.op(ALU | AND | K, 0xF0)
            a.op(ALU | RSH | K, 2)  # TCP header length
            a.op(ST, _M_DOFF)
            a.op(ALU | ADD | X)
            a.op(ST, _M_PAY)  # the payload's offset
            a.op(LD | MEM, _M_DOFF)
            if v == "4":
                a.op(LDX | MEM, _M_IHL)
                a.op(ALU | ADD | X)
            a.op(MISC | TAX)  # X = the headers' length the total counts
            a.op(LD | MEM, _M_TOTAL)
            _to_odd_content(a, 0)
        a.ja("reject")
        a.label(f"tcpdata{v}_{lv}")
        a.op(LD | B | IND, 13)
        a.op(JMP | JSET | K, 0x07, jt="accept")  # SYN, FIN, RST
        a.op(LD | B | IND, 12)
        a.op(ALU | AND | K, 0xF0)
        a.op(ALU | RSH | K, 2)  # TCP header length
        if v == "4":
            a.op(ST, _M_DOFF)
            a.op(LDX | MEM, _M_IHL)
            a.op(LD | MEM, _M_DOFF)
            a.op(ALU | ADD | X)  # + IPv4 header length
        a.op(MISC | TAX)
        a.op(LD | MEM, _M_TOTAL)
        a.op(JMP | JEQ | K, 0, jt="accept")  # 0: TSO frame (IPv4) or a jumbogram (IPv6)
        a.op(JMP | JGT | X, 0, jt="accept", jf="reject")  # payload > 0
    # -- UDP: DNS answers, QUIC client long headers, tunnels
    a.label(f"udp{lv}")
    if dns:
        a.op(LD | H | IND, 0)
        a.op(JMP | JEQ | K, 53, jt="accept")
    a.op(LD | H | IND, 2)
    if udp:
        a.jeq_any(udp, f"quic{lv}")
    if queued:
        a.jeq_any(queued, "reject")
    if deeper:
        a.op(JMP | JEQ | K, VXLAN_PORT, jt=f"vxlan{lv}")
        a.op(JMP | JEQ | K, GENEVE_PORT, jt=f"geneve{lv}")
        a.op(JMP | JEQ | K, GTPU_PORT, jt=f"gtpu{lv}")
    if any_port or queued_any_port:  # a QUIC Initial on a port not watched (issue 32): passed, or queued (inline)
        miss = a.fresh("notquic")
        _quic_content(a, "reject" if queued_any_port else "accept", miss)
        a.label(miss)
    if connections:  # any other UDP, but a watched (QUIC) port's answers
        a.op(LD | H | IND, 0)
        a.jeq_any([*udp, *(queued or ())], "reject")
        a.ja("accept")
    a.ja("reject")
    a.label(f"quic{lv}")
    a.op(LD | B | IND, 8)
    a.op(JMP | JSET | K, 0x80, jt="accept")  # long header (RFC 9000 section 17.2)
    a.op(ALU | AND | K, 0x41)
    a.op(JMP | JEQ | K, 0x01, jt="accept", jf="reject")  # Google QUIC public header, version flag
    if not deeper:
        return
    a.label(f"vxlan{lv}")
    a.op(LD | B | IND, 8)
    a.op(JMP | JSET | K, VXLAN_FLAG_VNI, jf="reject")
    a.advance(8 + VXLAN_HEADER)
    a.ja(f"eth{nxt}")
    a.label(f"geneve{lv}")
    a.op(LD | H | IND, 10)
    a.op(ST, _M_TMP)  # protocol
    a.op(LD | B | IND, 8)
    a.op(ALU | AND | K, 0x3F)
    a.op(ALU | LSH | K, 2)  # options, in 4-byte words (RFC 8926 section 3.4)
    a.op(ALU | ADD | X)
    a.op(ALU | ADD | K, 8 + GENEVE_HEADER)
    a.op(MISC | TAX)
    a.op(LD | MEM, _M_TMP)
    a.op(JMP | JEQ | K, ETH_TEB, jt=f"eth{nxt}")
    a.op(JMP | JEQ | K, ETH_IPV4, jt=f"ip{nxt}")
    a.op(JMP | JEQ | K, ETH_IPV6, jt=f"ip{nxt}", jf="reject")
    a.label(f"gtpu{lv}")
    ext = a.fresh("gtpext")
    a.op(LD | B | IND, 8)
    a.op(ST, _M_TMP)  # flags
    a.op(ALU | RSH | K, 5)
    a.op(JMP | JEQ | K, 1, jf="reject")  # version 1
    a.op(LD | B | IND, 9)
    a.op(JMP | JEQ | K, GTPU_TPDU, jf="reject")
    a.op(LD | MEM, _M_TMP)
    a.op(JMP | JSET | K, 0x07, jt=ext)
    a.advance(8 + GTPU_HEADER)
    a.ja(f"ip{nxt}")
    a.label(ext)
    a.op(LD | B | IND, 8 + GTPU_HEADER + 3)  # next extension header type
    a.op(ST, _M_TMP)
    a.advance(8 + GTPU_HEADER + 4)
    a.op(LD | MEM, _M_TMP)
    for _ in range(BPF_MAX_GTPU_EXTENSIONS):
        a.op(JMP | JEQ | K, 0, jt=f"ip{nxt}")
        a.op(LD | B | IND, 0)
        a.op(ALU | LSH | K, 2)  # extension length, in 4-byte words
        a.op(JMP | JEQ | K, 0, jt="reject")
        a.op(ALU | ADD | X)
        a.op(ALU | SUB | K, 1)
        a.op(MISC | TAX)  # X = its last byte: the next type
        a.op(LD | B | IND, 0)
        a.op(ST, _M_TMP)
        a.advance(1)
        a.op(LD | MEM, _M_TMP)
    a.op(JMP | JEQ | K, 0, jt=f"ip{nxt}", jf="accept")  # a longer chain: passed, counted by the decoder
    # -- GRE (RFC 2784 / 2890): 4 bytes, +4 per optional field present; ERSPAN II after 8 more
    a.label(f"gre{lv}")
    a.op(LD | H | IND, 2)
    a.op(ST, _M_TMP)  # protocol
    a.op(LD | B | IND, 0)
    a.op(ST, _M_DOFF)  # flags
    a.advance(4)
    for bit in (0x80, 0x20, 0x10):
        skip = a.fresh("gre")
        a.op(LD | MEM, _M_DOFF)
        a.op(JMP | JSET | K, bit, jf=skip)
        a.advance(4)
        a.label(skip)
    a.op(LD | MEM, _M_TMP)
    a.op(JMP | JEQ | K, ETH_IPV4, jt=f"ip{nxt}")
    a.op(JMP | JEQ | K, ETH_IPV6, jt=f"ip{nxt}")
    a.op(JMP | JEQ | K, ETH_TEB, jt=f"eth{nxt}")
    erspan = a.fresh("erspan")
    a.op(JMP | JEQ | K, ETH_ERSPAN_II, jt=erspan, jf="reject")
    a.label(erspan)
    a.advance(ERSPAN_II_HEADER)
    a.ja(f"eth{nxt}")


def pack(prog: list[Insn]) -> bytes:
    return b"".join(struct.pack("HBBI", c, jt, jf, k) for c, jt, jf, k in prog)


def run(prog: list[Insn], pkt: bytes) -> int:
    """Interpret a classic BPF program as the kernel does (out-of-bounds loads reject)."""
    return run_counted(prog, pkt)[0]


def run_counted(prog: list[Insn], pkt: bytes) -> tuple[int, int]:
    """:func:`run`, and how many instructions it executed (the program's cost for this frame)."""
    a = x = 0
    steps = 0
    mem = [0] * 16
    pc = 0
    n = len(pkt)

    def load(off: int, size: int) -> int | None:
        if off < 0 or off + size > n:
            return None
        return int.from_bytes(pkt[off:off + size], "big")

    while pc < len(prog):
        code, jt, jf, k = prog[pc]
        pc += 1
        steps += 1
        cls = code & 0x07
        if cls in (LD, LDX):
            mode, size = code & 0xE0, {W: 4, H: 2, B: 1}[code & 0x18]
            if cls == LDX and mode == MSH:
                v = load(k, 1)
                if v is None:
                    return 0, steps
                x = (v & 0xF) << 2
                continue
            if mode == IMM:
                v = k
            elif mode == MEM:
                v = mem[k]
            else:
                got = load((k + (x if mode == IND else 0)) & 0xFFFFFFFF, size)
                if got is None:
                    return 0, steps
                v = got
            if cls == LD:
                a = v
            else:
                x = v
        elif cls == ST:
            mem[k] = a
        elif cls == STX:
            mem[k] = x
        elif cls == ALU:
            src = x if code & X else k
            op = code & 0xF0
            a = {ADD: a + src, SUB: a - src, OR: a | src, AND: a & src, LSH: a << (src & 31), RSH: a >> (src & 31)}[op] & 0xFFFFFFFF
        elif cls == JMP:
            op = code & 0xF0
            if op == JA:
                pc += k
                continue
            src = x if code & X else k
            cond = {JEQ: a == src, JGT: a > src, JGE: a >= src, JSET: bool(a & src)}[op]
            pc += jt if cond else jf
        elif cls == RET:
            return (k if not code & 0x10 else a), steps
        elif cls == MISC:
            if code & 0xF8 == TXA:
                a = x
            else:
                x = a
    return 0, steps


def reference(pkt: bytes, tcp_ports: Iterable[int], udp_ports: Iterable[int], dns: bool = True,
              linktype: int = LINKTYPE_ETHERNET, connections: bool = False, queued_udp: Iterable[int] = (),
              queued_tcp: Iterable[int] = (), any_port: bool = False, queued_any_port: bool = False) -> bool:
    """The rule :func:`build` compiles, written plainly (for the tests): a recursive walk of the
    same headers. A field beyond the captured bytes rejects, as in the kernel."""
    tcp, udp, queued, qtcp = frozenset(tcp_ports), frozenset(udp_ports), frozenset(queued_udp), frozenset(queued_tcp)
    n = len(pkt)

    class _Short(BeiandError):
        pass

    def u8(o: int) -> int:
        if not 0 <= o < n:
            raise _Short
        return pkt[o]

    def u16(o: int) -> int:
        return (u8(o) << 8) | u8(o + 1)

    def ether(o: int, lv: int) -> bool:
        return ethertype(o + ETHERNET_HEADER, u16(o + 12), lv)

    def ethertype(o: int, et: int, lv: int) -> bool:
        tags = 0
        while et in ETH_VLAN:
            if tags == BPF_MAX_VLAN_TAGS:
                return True
            et, o, tags = u16(o + 2), o + VLAN_TAG, tags + 1
        if et in (ETH_IPV4, ETH_IPV6):
            return ip(o, lv)
        if et in ETH_MPLS:
            for _ in range(BPF_MAX_MPLS_LABELS):
                bos = u8(o + 2) & 1
                o += MPLS_LABEL
                if bos:
                    break
            else:
                return True
            nib = u8(o) >> 4
            if nib in (4, 6):
                return ip(o, lv)
            return nib == 0 and lv < MAX_DEPTH and ether(o + MPLS_CONTROL_WORD, lv + 1)
        if et == ETH_PPPOE_SESSION:
            b = u8(o + PPPOE_HEADER)
            if b & 1:
                return b in (PPP_IPV4 & 0xFF, PPP_IPV6 & 0xFF) and ip(o + PPPOE_HEADER + 1, lv)
            return u16(o + PPPOE_HEADER) in (PPP_IPV4, PPP_IPV6) and ip(o + PPPOE_HEADER + 2, lv)
        return False

    def ip(o: int, lv: int) -> bool:
        ver = u8(o) >> 4
        if ver == 4:
            proto = u8(o + 9)
            if u16(o + 6) & 0x3FFF:
                return proto == 17
            total = u16(o + 2)
            ihl = (u8(o) & 0xF) << 2
            l4 = o + ihl
            if proto == 6:
                return tcp_(l4, total, ihl)
        elif ver == 6:
            proto = u8(o + 6)
            total = u16(o + 4)
            l4 = o + 40
            if proto == 6:
                return tcp_(l4, total, 0)
            if proto in IPV6_EXTENSION_HEADERS:
                return True
        else:
            return False
        if proto == 17:
            return udp_(l4, lv)
        if lv < MAX_DEPTH:
            if proto in IP_IN_IP:
                return ip(l4, lv + 1)
            if proto == IPPROTO_GRE:
                return gre(l4, lv)
        return False

    def tcp_(l4: int, total: int, ihl: int) -> bool:
        if u16(l4 + 2) in tcp:
            if u8(l4 + 13) & 7:
                return True
            hdr = ihl + ((u8(l4 + 12) & 0xF0) >> 2)
            return total == 0 or total > hdr
        if dns and u16(l4) == 53:
            return True
        if u16(l4) in qtcp or u16(l4 + 2) in qtcp:
            return False
        flags = u8(l4 + 13)
        if connections and flags & 0x07:  # SYN, SYN+ACK, FIN, RST
            return True
        if not any_port or u16(l4) in tcp:
            return False
        pay = l4 + ((u8(l4 + 12) & 0xF0) >> 2)
        hdr = ihl + ((u8(l4 + 12) & 0xF0) >> 2)
        if total and total <= hdr:
            return False
        if total and total - hdr < _SHORT:
            return True
        if u8(pay) == 0x16:
            return u8(pay + 1) == 3 and (u8(pay + 5) == 1 or u16(pay + 3) == 0)
        if u8(pay) in (0x0A, 0x0D):
            return True
        return int.from_bytes(bytes(u8(pay + i) for i in range(4)), "big") in METHOD_WORDS

    def quic_(l4: int) -> bool:
        if u16(l4 + 4) < _QUIC_UDP_LENGTH or u8(l4 + 8) & 0xC0 != 0xC0:
            return False
        version = int.from_bytes(bytes(u8(l4 + 9 + i) for i in range(4)), "big")
        return quic_known_version(version)

    def udp_(l4: int, lv: int) -> bool:
        if dns and u16(l4) == 53:
            return True
        dport = u16(l4 + 2)
        if dport in udp:
            b = u8(l4 + 8)
            return bool(b & 0x80) or b & 0x41 == 0x01
        if dport in queued:
            return False
        if lv >= MAX_DEPTH:
            return odd_udp(l4)
        p = l4 + 8
        if dport == VXLAN_PORT:
            return bool(u8(p) & VXLAN_FLAG_VNI) and ether(p + VXLAN_HEADER, lv + 1)
        if dport == GENEVE_PORT:
            proto = u16(p + 2)
            inner = p + GENEVE_HEADER + ((u8(p) & 0x3F) << 2)
            if proto == ETH_TEB:
                return ether(inner, lv + 1)
            return proto in (ETH_IPV4, ETH_IPV6) and ip(inner, lv + 1)
        if dport == GTPU_PORT:
            flags = u8(p)
            if flags >> 5 != 1 or u8(p + 1) != GTPU_TPDU:
                return False
            o = p + GTPU_HEADER
            if flags & 7:
                nxt = u8(o + 3)
                o += 4
                for _ in range(BPF_MAX_GTPU_EXTENSIONS):
                    if not nxt:
                        break
                    ln = u8(o) << 2
                    if not ln:
                        return False
                    nxt = u8(o + ln - 1)
                    o += ln
                else:
                    if nxt:
                        return True
            return ip(o, lv + 1)
        return odd_udp(l4)

    def odd_udp(l4: int) -> bool:
        if (any_port or queued_any_port) and quic_(l4):
            return not queued_any_port
        return connections and u16(l4) not in udp and u16(l4) not in queued

    def gre(o: int, lv: int) -> bool:
        proto = u16(o + 2)
        flags = u8(o)
        o += 4 + 4 * sum(1 for bit in (0x80, 0x20, 0x10) if flags & bit)
        if proto in (ETH_IPV4, ETH_IPV6):
            return ip(o, lv + 1)
        if proto == ETH_TEB:
            return ether(o, lv + 1)
        return proto == ETH_ERSPAN_II and ether(o + ERSPAN_II_HEADER, lv + 1)

    lt = LINK_TYPES[linktype]
    try:
        if lt.start is Start.ETHERNET:
            return ether(lt.offset, 0)
        if lt.start is Start.ETHERTYPE:
            return ethertype(lt.offset, u16(lt.ethertype_at), 0)
        return ip(lt.offset, 0)
    except _Short:
        return False
