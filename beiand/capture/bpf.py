"""The classic BPF program the kernel runs for beiand (no tcpdump needed at run time).

It accepts, on Ethernet frames (IPv4 and IPv6):
- DNS answers: UDP or TCP from port 53;
- TCP to a watched port that carries payload or SYN/FIN/RST (bare ACKs are dropped: they
  are most of a connection and carry nothing beiand reads);
- UDP to a watched port (QUIC Initials);
- IPv4 non-first fragments of UDP and IPv6 fragments (the decoder reassembles them).
Everything else (server answers on watched ports, bulk ACKs, other ports) stays in the kernel.

:func:`run` interprets a program in Python: the tests compare it, packet by packet, with
:func:`reference`, the same rule written plainly.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

# Opcodes (linux/filter.h)
LD, LDX, ST, ALU, JMP, RET, MISC = 0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x07
W, H, B = 0x00, 0x08, 0x10
IMM, ABS, IND, MEM, MSH = 0x00, 0x20, 0x40, 0x60, 0xA0
ADD, SUB, AND, RSH = 0x00, 0x10, 0x50, 0x70
K, X = 0x00, 0x08
JA, JEQ, JGT, JSET = 0x00, 0x10, 0x20, 0x40
TAX, TXA = 0x00, 0x80
SNAPLEN = 262144

Insn = tuple[int, int, int, int]  # code, jt, jf, k


@dataclass
class _Op:
    code: int
    k: int = 0
    jt: str | None = None  # label
    jf: str | None = None


class _Asm:
    def __init__(self) -> None:
        self.ops: list[_Op | str] = []

    def label(self, name: str) -> None:
        self.ops.append(name)

    def op(self, code: int, k: int = 0, jt: str | None = None, jf: str | None = None) -> None:
        self.ops.append(_Op(code, k, jt, jf))

    def jeq_any(self, values: Iterable[int], target: str) -> None:
        for v in sorted(set(values)):
            self.op(JMP | JEQ | K, v, jt=target)

    def assemble(self) -> list[Insn]:
        pos: dict[str, int] = {}
        n = 0
        for o in self.ops:
            if isinstance(o, str):
                pos[o] = n
            else:
                n += 1
        out: list[Insn] = []
        i = 0
        for o in self.ops:
            if isinstance(o, str):
                continue

            def rel(label: str | None, here: int = i) -> int:
                if label is None:
                    return 0
                off = pos[label] - here - 1
                if not 0 <= off <= 255:
                    raise ValueError(f"BPF jump to {label} out of range ({off})")
                return off

            if o.code & 0x07 == JMP and o.code & 0xF0 == JA:
                out.append((o.code, 0, 0, pos[o.jt or ""] - i - 1))
            else:
                out.append((o.code, rel(o.jt), rel(o.jf), o.k))
            i += 1
        return out


def build(tcp_ports: Iterable[int], udp_ports: Iterable[int], dns: bool = True) -> list[Insn]:
    tcp = sorted(set(tcp_ports))
    udp = sorted(set(udp_ports))
    a = _Asm()
    a.op(LD | H | ABS, 12)
    a.op(JMP | JEQ | K, 0x0800, jt="ip4")
    a.op(JMP | JEQ | K, 0x86DD, jt="ip6", jf="reject")
    # -- IPv4
    a.label("ip4")
    a.op(LD | B | ABS, 23)
    a.op(ST, 0)  # M[0] = protocol
    a.op(LD | H | ABS, 20)
    a.op(JMP | JSET | K, 0x1FFF, jt="frag4")
    a.op(LDX | B | MSH, 14)  # X = IPv4 header length
    a.op(LD | MEM, 0)
    a.op(JMP | JEQ | K, 17, jt="udp4")
    a.op(JMP | JEQ | K, 6, jt="tcp4", jf="reject")
    a.label("frag4")
    a.op(LD | MEM, 0)
    a.op(JMP | JEQ | K, 17, jt="accept", jf="reject")
    a.label("udp4")
    a.op(LD | H | IND, 14)
    if dns:
        a.op(JMP | JEQ | K, 53, jt="accept")
    a.op(LD | H | IND, 16)
    a.jeq_any(udp, "accept")
    a.op(JMP | JA, jt="reject")
    a.label("tcp4")
    a.op(LD | H | IND, 14)
    if dns:
        a.op(JMP | JEQ | K, 53, jt="accept")
    a.op(LD | H | IND, 16)
    a.jeq_any(tcp, "tcp4data")
    a.op(JMP | JA, jt="reject")
    a.label("tcp4data")
    a.op(LD | B | IND, 27)  # TCP flags
    a.op(JMP | JSET | K, 0x07, jt="accept")  # SYN, FIN, RST
    a.op(LD | B | IND, 26)
    a.op(ALU | AND | K, 0xF0)
    a.op(ALU | RSH | K, 2)  # A = TCP header length
    a.op(ALU | ADD | X)  # + IP header length
    a.op(ST, 1)
    a.op(LD | H | ABS, 16)  # IP total length
    a.op(LDX | W | MEM, 1)
    a.op(JMP | JGT | X, 0, jt="accept", jf="reject")  # payload > 0
    # -- IPv6 (no extension headers but a fragment header)
    a.label("ip6")
    a.op(LD | B | ABS, 20)
    a.op(JMP | JEQ | K, 17, jt="udp6")
    a.op(JMP | JEQ | K, 6, jt="tcp6")
    a.op(JMP | JEQ | K, 44, jt="accept", jf="reject")
    a.label("udp6")
    a.op(LD | H | ABS, 54)
    if dns:
        a.op(JMP | JEQ | K, 53, jt="accept")
    a.op(LD | H | ABS, 56)
    a.jeq_any(udp, "accept")
    a.op(JMP | JA, jt="reject")
    a.label("tcp6")
    a.op(LD | H | ABS, 54)
    if dns:
        a.op(JMP | JEQ | K, 53, jt="accept")
    a.op(LD | H | ABS, 56)
    a.jeq_any(tcp, "tcp6data")
    a.op(JMP | JA, jt="reject")
    a.label("tcp6data")
    a.op(LD | B | ABS, 67)
    a.op(JMP | JSET | K, 0x07, jt="accept")
    a.op(LD | B | ABS, 66)
    a.op(ALU | AND | K, 0xF0)
    a.op(ALU | RSH | K, 2)
    a.op(MISC | TAX)
    a.op(LD | H | ABS, 18)  # IPv6 payload length
    a.op(JMP | JGT | X, 0, jt="accept", jf="reject")
    a.label("accept")
    a.op(RET | K, SNAPLEN)
    a.label("reject")
    a.op(RET | K, 0)
    return a.assemble()


def pack(prog: list[Insn]) -> bytes:
    return b"".join(struct.pack("HBBI", c, jt, jf, k) for c, jt, jf, k in prog)


def run(prog: list[Insn], pkt: bytes) -> int:
    """Interpret a classic BPF program as the kernel does (out-of-bounds loads reject)."""
    a = x = 0
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
        cls = code & 0x07
        if cls in (LD, LDX):
            mode, size = code & 0xE0, {W: 4, H: 2, B: 1}[code & 0x18]
            if cls == LDX and mode == MSH:
                v = load(k, 1)
                if v is None:
                    return 0
                x = (v & 0xF) << 2
                continue
            if mode == IMM:
                v = k
            elif mode == MEM:
                v = mem[k]
            else:
                got = load(k + (x if mode == IND else 0), size)
                if got is None:
                    return 0
                v = got
            if cls == LD:
                a = v
            else:
                x = v
        elif cls == ST:
            mem[k] = a
        elif cls == ALU:
            src = x if code & X else k
            op = code & 0xF0
            a = {ADD: a + src, SUB: a - src, AND: a & src, RSH: a >> src}[op] & 0xFFFFFFFF
        elif cls == JMP:
            op = code & 0xF0
            if op == JA:
                pc += k
                continue
            src = x if code & X else k
            cond = {JEQ: a == src, JGT: a > src, JSET: bool(a & src)}[op]
            pc += jt if cond else jf
        elif cls == RET:
            return k if not code & 0x10 else a
        elif cls == MISC:
            if code & 0xF8 == TXA:
                a = x
            else:
                x = a
    return 0


def reference(pkt: bytes, tcp_ports: Iterable[int], udp_ports: Iterable[int], dns: bool = True) -> bool:
    """The rule the program implements, written plainly (for the tests); a field beyond the
    captured bytes rejects, as in the kernel."""
    tcp, udp = set(tcp_ports), set(udp_ports)
    n = len(pkt)

    def u16(o: int) -> int | None:
        return int.from_bytes(pkt[o:o + 2], "big") if o + 2 <= n else None

    et = u16(12)
    if et == 0x0800:
        if n < 24:
            return False
        proto = pkt[23]
        if (u16(20) or 0) & 0x1FFF:
            return proto == 17
        if proto not in (6, 17):
            return False
        l4 = 14 + (pkt[14] & 0xF) * 4
        sport = u16(l4)
        if sport is None:
            return False
        if dns and sport == 53:
            return True
        dport = u16(l4 + 2)
        if dport is None:
            return False
        if proto == 17:
            return dport in udp
        if dport not in tcp or n < l4 + 14:
            return False
        if pkt[l4 + 13] & 7:
            return True
        return (u16(16) or 0) > (l4 - 14) + ((pkt[l4 + 12] & 0xF0) >> 2)
    if et == 0x86DD:
        if n < 21:
            return False
        nh = pkt[20]
        if nh == 44:
            return True
        if nh not in (6, 17):
            return False
        sport = u16(54)
        if sport is None:
            return False
        if dns and sport == 53:
            return True
        dport = u16(56)
        if dport is None:
            return False
        if nh == 17:
            return dport in udp
        if dport not in tcp or n < 68:
            return False
        if pkt[67] & 7:
            return True
        return (u16(18) or 0) > ((pkt[66] & 0xF0) >> 2)
    return False
