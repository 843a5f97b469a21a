"""``capture.filter``: the operator's own condition, compiled into the kernel's BPF program.

A small tcpdump-like language on the *outer* headers of a frame (the link layer's VLAN tags and
the first IP header), so a gateway can keep to one customer VLAN or one address range::

    vlan 100 or vlan 200
    net 198.51.100.0/24 and not host 198.51.100.7
    (src net 2001:db8::/32 or dst net 2001:db8::/32) and vlan 10

Primitives: ``vlan ID`` (any of the first ``BPF_MAX_VLAN_TAGS`` tags), ``net CIDR``, ``host IP``,
each ``net``/``host`` optionally preceded by ``src`` or ``dst``; combined with ``and``, ``or``,
``not`` and parentheses (``not`` binds tightest, then ``and``, then ``or``). A frame the condition
rejects never leaves the kernel; one it accepts is then judged by beiand's own program.
:func:`parse_filter` raises :class:`FilterError` with a message for people (``check-config``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from beiand.capture.bpf import ABS, ALU, AND, IMM, IND, JEQ, JMP, LD, LDX, MEM, MISC, RSH, ST, TXA, B, H, K, W, _Asm
from beiand.errors import BeiandError
from beiand.net.link import BPF_MAX_VLAN_TAGS, ETH_IPV4, ETH_IPV6, ETH_VLAN, ETHERNET_HEADER, LINK_TYPES, VLAN_TAG, Start

MAX_FILTER_TERMS = 64
_TOKEN = re.compile(r"\(|\)|[^\s()]+")


class FilterError(BeiandError, ValueError):
    """capture.filter does not parse; the message says where and what was expected."""


@dataclass(frozen=True)
class Vlan:
    vid: int


@dataclass(frozen=True)
class Net:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    direction: str  # "src", "dst" or "" (either)


@dataclass(frozen=True)
class Not:
    node: Node


@dataclass(frozen=True)
class And:
    left: Node
    right: Node


@dataclass(frozen=True)
class Or:
    left: Node
    right: Node


Node = Vlan | Net | Not | And | Or


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _TOKEN.findall(text)
        self.pos = 0
        self.terms = 0

    def peek(self) -> str:
        return self.tokens[self.pos].lower() if self.pos < len(self.tokens) else ""

    def take(self) -> str:
        tok = self.peek()
        if not tok:
            raise FilterError("unexpected end of the condition")
        self.pos += 1
        return tok

    def expr(self) -> Node:
        node = self.term()
        while self.peek() == "or":
            self.take()
            node = Or(node, self.term())
        return node

    def term(self) -> Node:
        node = self.factor()
        while self.peek() == "and":
            self.take()
            node = And(node, self.factor())
        return node

    def factor(self) -> Node:
        tok = self.take()
        if tok == "not":
            return Not(self.factor())
        if tok == "(":
            node = self.expr()
            if self.take() != ")":
                raise FilterError(f"expected ')' at word {self.pos}")
            return node
        self.terms += 1
        if self.terms > MAX_FILTER_TERMS:
            raise FilterError(f"more than {MAX_FILTER_TERMS} primitives")
        if tok == "vlan":
            arg = self.take()
            if not (arg.isascii() and arg.isdigit()) or not 0 <= int(arg) <= 4095:
                raise FilterError(f"vlan {arg!r}: expected a VLAN id from 0 to 4095")
            return Vlan(int(arg))
        direction = ""
        if tok in ("src", "dst"):
            direction, tok = tok, self.take()
        if tok in ("net", "host"):
            arg = self.take()
            try:
                net = ipaddress.ip_network(arg, strict=False)
            except ValueError:
                raise FilterError(f"{tok} {arg!r}: expected {'a prefix like 198.51.100.0/24' if tok == 'net' else 'an address'}")
            if tok == "host" and net.num_addresses != 1:
                raise FilterError(f"host {arg!r}: expected one address (use net for a prefix)")
            return Net(net, direction)
        raise FilterError(f"{tok!r}: expected vlan, net, host, src, dst, not or '('")


def parse_filter(text: str) -> Node:
    p = _Parser(text)
    if not p.tokens:
        raise FilterError("empty condition")
    node = p.expr()
    if p.pos != len(p.tokens):
        raise FilterError(f"unexpected {p.tokens[p.pos]!r} after a complete condition (missing 'and' or 'or'?)")
    return node


_M_ET, _M_L3 = 4, 5  # scratch slots of the condition (the main program uses 0-3)


class Condition:
    """A parsed ``capture.filter``, ready to be compiled in front of the main program."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.node = parse_filter(text)

    def emit(self, a: _Asm, linktype: int) -> None:
        """Code that falls through to ``start`` when the condition holds, else jumps to ``reject``."""
        lt = LINK_TYPES.get(linktype)
        if lt is None or lt.start is Start.NFLOG:
            raise FilterError(f"no capture filter for link type {linktype}")
        # Locate the outer IP header once: M[4] = its ethertype (0 if none), M[5] = its offset;
        # VLAN ids are checked on the way by the vlan primitives themselves.
        if lt.start is Start.IP:
            a.op(LD | B | ABS, lt.offset)
            a.op(ALU | RSH | K, 4)
            six, done = a.fresh("f6"), a.fresh("fl3")
            a.op(JMP | JEQ | K, 6, jt=six)
            a.op(LD | IMM, ETH_IPV4)
            a.ja(done)
            a.label(six)
            a.op(LD | IMM, ETH_IPV6)
            a.label(done)
            a.op(ST, _M_ET)
            a.op(LD | IMM, lt.offset)
            a.op(ST, _M_L3)
        else:
            et_at, off = (lt.offset + 12, lt.offset + ETHERNET_HEADER) if lt.start is Start.ETHERNET else (lt.ethertype_at, lt.offset)
            a.op(LDX | IMM, off)
            a.op(LD | H | ABS, et_at)
            done = a.fresh("fl3")
            for _ in range(BPF_MAX_VLAN_TAGS):
                tag = a.fresh("ftag")
                a.jeq_any(ETH_VLAN, tag)
                a.ja(done)
                a.label(tag)
                a.op(LD | H | IND, 2)
                a.op(ST, _M_ET)
                a.advance(VLAN_TAG)
                a.op(LD | MEM, _M_ET)
            a.label(done)
            a.op(ST, _M_ET)
            a.op(MISC | TXA)
            a.op(ST, _M_L3)
        self._node(a, self.node, "start", "reject", lt.start is Start.IP, lt)

    def _node(self, a: _Asm, node: Node, yes: str, no: str, raw: bool, lt: object) -> None:
        if isinstance(node, Not):
            self._node(a, node.node, no, yes, raw, lt)
        elif isinstance(node, And):
            mid = a.fresh("fand")
            self._node(a, node.left, mid, no, raw, lt)
            a.label(mid)
            self._node(a, node.right, yes, no, raw, lt)
        elif isinstance(node, Or):
            mid = a.fresh("for")
            self._node(a, node.left, yes, mid, raw, lt)
            a.label(mid)
            self._node(a, node.right, yes, no, raw, lt)
        elif isinstance(node, Vlan):
            self._vlan(a, node.vid, yes, no, raw, lt)
        else:
            self._net(a, node, yes, no)

    def _vlan(self, a: _Asm, vid: int, yes: str, no: str, raw: bool, lt: object) -> None:
        if raw:
            a.ja(no)
            return
        from beiand.net.link import LinkType

        assert isinstance(lt, LinkType)
        et_at, off = (lt.offset + 12, lt.offset + ETHERNET_HEADER) if lt.start is Start.ETHERNET else (lt.ethertype_at, lt.offset)
        a.op(LDX | IMM, off)
        a.op(LD | H | ABS, et_at)
        for _ in range(BPF_MAX_VLAN_TAGS):
            tag = a.fresh("fvid")
            a.jeq_any(ETH_VLAN, tag)
            a.ja(no)
            a.label(tag)
            a.op(LD | H | IND, 0)
            a.op(ALU | AND | K, 0x0FFF)
            a.op(JMP | JEQ | K, vid, jt=yes)
            a.op(LD | H | IND, 2)
            a.op(ST, 0)
            a.advance(VLAN_TAG)
            a.op(LD | MEM, 0)
        a.ja(no)

    def _net(self, a: _Asm, node: Net, yes: str, no: str) -> None:
        net = node.network
        v6 = net.version == 6
        fields = (("src", 8 if v6 else 12), ("dst", 24 if v6 else 16))
        a.op(LD | MEM, _M_ET)
        go = a.fresh("fnet")
        a.op(JMP | JEQ | K, ETH_IPV6 if v6 else ETH_IPV4, jt=go)
        a.ja(no)
        a.label(go)
        a.op(LDX | MEM, _M_L3)
        words = net.network_address.packed
        mask = net.netmask.packed
        checks = [off for d, off in fields if node.direction in ("", d)]
        for i, base in enumerate(checks):
            miss = no if i == len(checks) - 1 else a.fresh("fnext")
            for w in range(len(words) // 4):
                m = int.from_bytes(mask[4 * w : 4 * w + 4], "big")
                if m == 0:
                    continue
                a.op(LD | W | IND, base + 4 * w)
                if m != 0xFFFFFFFF:
                    a.op(ALU | AND | K, m)
                nxt = a.fresh("fw")
                a.op(JMP | JEQ | K, int.from_bytes(words[4 * w : 4 * w + 4], "big"), jt=nxt, jf=miss)
                a.label(nxt)
            a.ja(yes)
            if miss != no:
                a.label(miss)


