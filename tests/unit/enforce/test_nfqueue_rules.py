"""The NFQUEUE rules: what the kernel queues, checked with a small u32 evaluator on built packets."""

from __future__ import annotations

import struct

import pytest

from beiand.enforce.nfqueue import bare_tcp_tests, rule_set, rule_specs

SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08


def u32(test: str, pkt: bytes) -> bool:
    """xt_u32, the subset the rules use: ``loc[>>n|&m|@...]=value`` joined by ``&&``; a read past the end fails."""
    for part in test.split("&&"):
        expr, want = part.split("=")
        base, val, op, num = 0, 0, "", ""
        tokens: list[str] = []
        for ch in expr:
            if ch in "&@" or (ch == ">" and not (tokens and tokens[-1] == ">")):
                tokens.append(num)
                num = ""
                tokens.append(ch)
            elif ch == ">":
                continue
            else:
                num += ch
        tokens.append(num)
        pos = int(tokens[0], 0)
        if base + pos + 4 > len(pkt):
            return False
        val = struct.unpack_from("!I", pkt, base + pos)[0]
        i = 1
        while i < len(tokens):
            op, arg = tokens[i], tokens[i + 1]
            if op == ">":
                val >>= int(arg, 0)
            elif op == "&":
                val &= int(arg, 0)
            elif op == "@":
                base += val
                if base + int(arg, 0) + 4 > len(pkt):
                    return False
                val = struct.unpack_from("!I", pkt, base + int(arg, 0))[0]
            i += 2
        if val != int(want, 0):
            return False
    return True


def packet(v6: bool, flags: int, payload: int = 0, options: int = 0) -> bytes:
    th = struct.pack("!HHIIBBHHH", 40000, 443, 1, 1, ((20 + options) // 4) << 4, flags, 65535, 0, 0) + b"\x01" * options
    seg = th + b"x" * payload
    if v6:
        return struct.pack("!IHBB", 0x60000000, len(seg), 6, 64) + b"\0" * 32 + seg
    return struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(seg), 0, 0x4000, 64, 6, 0) + b"\0" * 8 + seg


def queued(family: int, pkt: bytes) -> bool:
    return not any(u32(t, pkt) for t in bare_tcp_tests(family))


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("options", [0, 12, 40])
def test_only_syn_and_packets_with_payload_are_queued(family: int, options: int) -> None:
    v6 = family == 6
    assert queued(family, packet(v6, SYN, options=options))  # a connection starts: the decoder must know
    assert queued(family, packet(v6, SYN, payload=50, options=options))  # TCP Fast Open
    for payload in (1, 3, 4, 517):
        assert queued(family, packet(v6, ACK | PSH, payload=payload, options=options))
        assert queued(family, packet(v6, ACK | FIN, payload=payload, options=options))
    for flags in (ACK, ACK | FIN, RST, ACK | RST):
        assert not queued(family, packet(v6, flags, options=options))  # empty: cannot change a verdict


def test_ip_options_and_extension_headers_are_queued() -> None:
    p4 = bytearray(packet(False, ACK))
    p4[0] = 0x46  # IHL 6: this packet is not read, so it is queued (as before)
    assert queued(4, bytes(p4))
    p6 = bytearray(packet(True, ACK))
    p6[6] = 0  # hop-by-hop header first
    assert queued(6, bytes(p6))


def test_rules_are_bypass_connbytes_balanced_per_family() -> None:
    rules = rule_set([443, 80], [443], 4, 2, 8)
    assert set(rules) == {"iptables", "ip6tables"}
    for tool, specs in rules.items():
        assert len(specs) == 2
        tcp, udp = specs
        for s in specs:
            assert "--queue-bypass" in s and "0:8" in s and "4:5" in s and "beiand" in s and "--connbytes" in s
        assert tcp.count("--u32") == 11 and "--u32" not in udp
        family = 4 if tool == "iptables" else 6
        assert [tcp[i + 1] for i, a in enumerate(tcp) if a == "--u32"] == bare_tcp_tests(family)
        assert all(tcp[i - 1] == "!" for i, a in enumerate(tcp) if a == "--u32")
    assert "--queue-num" in rule_specs([443], [], 0, 1, 8)[0]
