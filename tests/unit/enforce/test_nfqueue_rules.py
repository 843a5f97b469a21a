"""The NFQUEUE rules: what the kernel queues, checked with a small u32 evaluator on built packets."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beiand.enforce.nfqueue import (
    CHAIN,
    IPV6_EXTENSIONS_TEST,
    NFQA_MARK,
    NFQA_PACKET_HDR,
    NFQA_PAYLOAD,
    U32_MAX_VALUES,
    Marks,
    NfQueue,
    Queued,
    _attr,
    bare_tcp_tests,
    eol_start_test,
    hello_start_test,
    long_payload_test,
    method_word_tests,
    quic_initial_test,
    request_head_test,
    rule_set,
    rule_specs,
)
from beiand.lab import traffic as t

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
        ok = False
        for rng in want.split(","):  # value := range | value "," range; range := number | number ":" number
            lo, _, hi = rng.partition(":")
            ok = ok or int(lo, 0) <= val <= int(hi or lo, 0)
        if not ok:
            return False
    return True


def packet(v6: bool, flags: int, payload: int = 0, options: int = 0, data: bytes = b"") -> bytes:
    th = struct.pack("!HHIIBBHHH", 40000, 443, 1, 1, ((20 + options) // 4) << 4, flags, 65535, 0, 0) + b"\x01" * options
    seg = th + (data or b"x" * payload)
    if v6:
        return struct.pack("!IHBB", 0x60000000, len(seg), 6, 64) + b"\0" * 32 + seg
    return struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(seg), 0, 0x4000, 64, 6, 0) + b"\0" * 8 + seg


def queued(family: int, pkt: bytes) -> bool:
    return not any(u32(t, pkt) for t in bare_tcp_tests(family))


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("options", [0, 12, 40])
def test_only_packets_with_payload_are_queued(family: int, options: int) -> None:
    v6 = family == 6
    # Issue 22: the SYN is not queued (the first queued packet's mark tells the decoder a connection starts).
    assert not queued(family, packet(v6, SYN, options=options))
    assert queued(family, packet(v6, SYN, payload=50, options=options))  # TCP Fast Open
    for payload in (1, 3, 4, 517):
        assert queued(family, packet(v6, ACK | PSH, payload=payload, options=options))
        assert queued(family, packet(v6, ACK | FIN, payload=payload, options=options))
    for flags in (ACK, ACK | FIN, RST, ACK | RST, SYN | ACK):
        assert not queued(family, packet(v6, flags, options=options))  # empty: cannot change a verdict


def test_ip_options_and_extension_headers_are_queued() -> None:
    p4 = bytearray(packet(False, ACK))
    p4[0] = 0x46  # IHL 6: this packet is not read, so it is queued (as before)
    assert queued(4, bytes(p4))
    p6 = bytearray(packet(True, ACK))
    p6[6] = 0  # hop-by-hop header first
    assert queued(6, bytes(p6))


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("options", [0, 12, 40])
def test_a_decided_connections_later_request_head_is_queued(family: int, options: int) -> None:
    """Issue 32: on a decided connection, a segment starting with a method token is queued again."""
    v6, test = family == 6, request_head_test(family)
    for head in (b"GET /2 HTTP/1.1\r\n", b"POST /x", b"PROPFIND", b"FOO / HTTP/1.1"):
        assert u32(test, packet(v6, ACK | PSH, data=head, options=options)), head
    for other in (b"\x16\x03\x01\x02\x00", b"get / HTTP/1.1", b"{\"a\":1}", b"GE", b"G3T /"):
        assert not u32(test, packet(v6, ACK | PSH, data=other, options=options)), other
    assert not u32(test, packet(v6, ACK, options=options))  # a bare ACK: the read past its end fails


def test_rules_are_bypass_connbytes_balanced_per_family() -> None:
    marks = Marks.from_base(0x100)
    rules = rule_set([443, 80], [443], 4, 2, 8, marks)
    assert set(rules) == {"iptables", "ip6tables"}
    for tool, specs in rules.items():
        jumps = [r.spec for r in specs if (r.table, r.chain) == ("filter", "FORWARD")]
        family = 4 if tool == "iptables" else 6
        assert len(jumps) == (6 if family == 4 else 7)
        tcp, more, later, eol, short, *v6ext, udp = jumps
        # what could hide a later head from the test: empty lines first, a cut method, IPv6 extension headers
        assert eol_start_test(family) in eol and "0x100/0x100" in eol and "--dports" in eol
        assert short[short.index(long_payload_test(family)) - 1] == "--u32" and short[short.index(long_payload_test(family)) - 2] == "!"
        assert [IPV6_EXTENSIONS_TEST in r for r in v6ext] == ([True] if family == 6 else [])
        # issue 32: the rest of a later head (``more`` on the connection), and a decided connection's later heads
        i = more.index("connmark")
        assert more[i + 1:i + 3] == ["--mark", "0x800/0x800"] and "--connbytes" not in more and more[-2:] == ["-j", CHAIN]
        i = later.index("connmark")
        family = 4 if tool == "iptables" else 6
        assert later[i + 1:i + 3] == ["--mark", "0x100/0x100"] and request_head_test(family) in later and "--connbytes" not in later
        jumps = [tcp, udp]
        for s in jumps:
            assert "0:8" in s and "beiand" in s and "--connbytes" in s and s[-2:] == ["-j", CHAIN]
            # a connection whose verdict is known is not queued again
            i = s.index("connmark")
            assert s[i + 1:i + 4] == ["!", "--mark", "0x100/0x100"]
        assert tcp.count("--u32") == 11 and "--u32" not in udp
        family = 4 if tool == "iptables" else 6
        assert [tcp[i + 1] for i, a in enumerate(tcp) if a == "--u32"] == bare_tcp_tests(family)
        assert all(tcp[i - 1] == "!" for i, a in enumerate(tcp) if a == "--u32")
        chain = [r.spec for r in specs if r.chain == CHAIN]
        # the first queued packet of a connection gets the "first" mark; the connection is then "seen"; queue
        assert chain[0][:5] == ["-m", "connmark", "!", "--mark", "0x200/0x200"] and chain[0][-3:] == ["MARK", "--or-mark", "0x400"]
        assert chain[1][-3:] == ["CONNMARK", "--or-mark", "0x200"]
        assert "--queue-bypass" in chain[2] and "4:5" in chain[2]
        save, keep = [r for r in specs if r.table == "mangle"]
        assert save.chain == "POSTROUTING" and save.spec[:4] == ["-m", "mark", "--mark", "0x100/0x300"]
        assert save.spec[-6:] == ["CONNMARK", "--save-mark", "--nfmask", "0x900", "--ctmask", "0x900"]
        # a verdict with ``seen`` too (a head completed): ``decided`` alone, ``more`` left as the kernel set it
        assert keep.chain == "POSTROUTING" and keep.spec[:4] == ["-m", "mark", "--mark", "0x300/0x300"]
        assert keep.spec[-6:] == ["CONNMARK", "--save-mark", "--nfmask", "0x100", "--ctmask", "0x100"]
    assert any("--queue-num" in r.spec for r in rule_specs([443], [], 0, 1, 8))
    assert rule_specs([], [], 0, 1, 8) == []


def test_marks_are_four_bits_from_one() -> None:
    assert Marks.from_base(0x10000000) == Marks(0x10000000, 0x20000000, 0x40000000, 0x80000000)
    for bad in (0, 3, 0x30, 1 << 29):
        with pytest.raises(ValueError):
            Marks.from_base(bad)


def _packet_msg(pid: int, payload: bytes, mark: int | None = None) -> bytes:
    attrs = _attr(NFQA_PACKET_HDR, struct.pack("!IHB", pid, 0x0800, 3))
    if mark is not None:
        attrs += _attr(NFQA_MARK, struct.pack("!I", mark))
    attrs += _attr(NFQA_PAYLOAD, payload)
    body = struct.pack("=BBH", 2, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), (3 << 8) | 0, 0, 0, 0) + body


def test_queued_packets_carry_id_mark_and_payload() -> None:
    out: list[Queued] = []
    NfQueue._parse(_packet_msg(7, b"E\0abc", 0x400) + _packet_msg(8, b"E\0xyz1"), out)
    assert out == [Queued(7, 0x400, b"E\0abc"), Queued(8, 0, b"E\0xyz1")]


@given(st.binary(max_size=300))
def test_a_netlink_read_of_junk_never_raises(data: bytes) -> None:
    out: list[Queued] = []
    NfQueue._parse(data, out)
    NfQueue._parse(_packet_msg(1, b"x") + data, out)
    assert Queued(1, 0, b"x") in out


def test_a_verdict_carries_the_new_mark() -> None:
    q = NfQueue.__new__(NfQueue)
    q.queue, q._seq, q._out, q.dropped = 3, 0, [], 0
    q.verdict(9, True, 0x100)
    q.verdict(10, False)
    accept, drop = q._out
    assert struct.unpack_from("!II", accept, 24) == (1, 9)  # NF_ACCEPT, id: after nlmsghdr, nfgenmsg, attr header
    assert struct.unpack_from("=HH", accept, 32) == (8, NFQA_MARK) and struct.unpack_from("!I", accept, 36) == (0x100,)
    assert struct.unpack_from("!II", drop, 24) == (0, 10) and len(drop) == 32 and q.dropped == 1


# What ``iptables -S`` printed for the rules of beiand before its chain (issue 22): the NFQUEUE
# target in FORWARD itself; beside them a rule of someone else's.
OLD_FORWARD = """-P FORWARD ACCEPT
-A FORWARD -p tcp -m multiport --dports 80,443 -m connbytes --connbytes 0:8 --connbytes-dir original --connbytes-mode packets -m u32 ! --u32 "0x0>>0x18=0x45&&0x0&0xffff=0x28&&0x20>>0x1a&0x3c=0x14&&0x20>>0x10&0x2=0x0" -m comment --comment beiand -j NFQUEUE --queue-num 0 --queue-bypass
-A FORWARD -p udp -m multiport --dports 443 -m comment --comment beiand -j NFQUEUE --queue-balance 0:1 --queue-bypass
-A FORWARD -s 10.0.0.0/8 -m comment --comment "beiand's neighbour" -j ACCEPT
-A FORWARD -p tcp -j ACCEPT
"""


def test_rules_an_older_beiand_left_are_removed_with_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Install and stop remove every rule of beiand's in FORWARD and mangle POSTROUTING, whatever
    its spec (the NFQUEUE rules from before the chain too), and nothing else."""
    import subprocess

    from beiand.enforce import nfqueue

    calls: list[tuple[str, ...]] = []

    def run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        calls.append((tool, *args))
        out = OLD_FORWARD if args[:4] == ("-t", "filter", "-S", "FORWARD") else ""
        return subprocess.CompletedProcess([tool, *args], 0 if "-S" in args else 1, out, "")

    monkeypatch.setattr(nfqueue, "_run", run)
    monkeypatch.setattr(nfqueue.shutil, "which", lambda tool: "/usr/sbin/" + tool)
    nfqueue.remove_rules({"iptables": rule_specs([80, 443], [443], 0, 1, 8, 4)})
    deleted = [c[4:] for c in calls if c[1:4] == ("-t", "filter", "-D") and c[4] == "FORWARD"]
    assert ("FORWARD", "-p", "tcp", "-m", "multiport", "--dports", "80,443", "-m", "connbytes", "--connbytes", "0:8",
            "--connbytes-dir", "original", "--connbytes-mode", "packets", "-m", "u32", "!", "--u32",
            "0x0>>0x18=0x45&&0x0&0xffff=0x28&&0x20>>0x1a&0x3c=0x14&&0x20>>0x10&0x2=0x0", "-m", "comment", "--comment",
            "beiand", "-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass") in deleted
    assert ("FORWARD", "-p", "udp", "-m", "multiport", "--dports", "443", "-m", "comment", "--comment", "beiand", "-j",
            "NFQUEUE", "--queue-balance", "0:1", "--queue-bypass") in deleted
    assert not any("ACCEPT" in c for c in deleted)  # someone else's rules stay
    sweep = next(i for i, c in enumerate(calls) if "-S" in c)
    assert calls.index(("iptables", "-F", CHAIN)) > sweep  # the jumps go before the chain


# -- names on any port (issue 32) ----------------------------------------------------------------


def udp_packet(v6: bool, payload: bytes) -> bytes:
    seg = struct.pack("!HHHH", 40000, 4433, 8 + len(payload), 0) + payload
    if v6:
        return struct.pack("!IHBB", 0x60000000, len(seg), 17, 64) + b"\0" * 32 + seg
    return struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(seg), 0, 0x4000, 64, 17, 0) + b"\0" * 8 + seg


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("options", [0, 12, 40])
def test_an_odd_ports_first_bytes_are_queued_by_content(family: int, options: int) -> None:
    v6 = family == 6

    def first(data: bytes) -> bool:  # one of the three content rules (with the bare tests for the short one)
        pkt = packet(v6, ACK | PSH, data=data, options=options)
        short = queued(family, pkt) and not u32(long_payload_test(family), pkt)
        return u32(hello_start_test(family), pkt) or any(u32(m, pkt) for m in method_word_tests(family)) or short

    hello = t.client_hello("odd.example.com")
    for data in (hello, hello[:1], hello[:3], hello[:7], b"GET / HTTP/1.1\r\n", b"POST", b"DELETE /x", b"MKCOL /d", b"G"):
        assert first(data), data
    for data in (b"SSH-2.0-OpenSSH_9.2", b"EHLO mail.example.com", b"\x17\x03\x03" + b"x" * 40, b"get / HTTP/1.1",
                 b"FOO / HTTP/1.1\r\n", b"\x00" * 8):
        assert not first(data), data
    assert not first(b"") and not queued(family, packet(v6, ACK, options=options))
    # a decided connection's later request: known methods only on an odd port (SMTP's commands are not)
    later = method_word_tests(family)
    assert any(u32(m, packet(v6, ACK | PSH, data=b"GET /2 HTTP/1.1\r\n", options=options)) for m in later)
    assert not any(u32(m, packet(v6, ACK | PSH, data=b"RCPT TO:<a@b>", options=options)) for m in later)
    assert all(m.count(",") < U32_MAX_VALUES for m in later)  # iptables refuses more


@pytest.mark.parametrize("family", [4, 6])
def test_a_quic_initial_on_an_odd_port_is_queued_by_content(family: int) -> None:
    v6 = family == 6
    dg = t.quic_initial_datagrams("quic.example.com")[0]
    assert u32(quic_initial_test(family), udp_packet(v6, dg))
    draft = t.quic_initial("draft.example.com", 0xFF00001D, bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899"))
    assert u32(quic_initial_test(family), udp_packet(v6, draft))
    for other in (b"\x40" + dg[1:], dg[:1] + b"\x0a\x0a\x0a\x0a" + dg[5:], b"\x01" + b"\0" * 1300):
        assert not u32(quic_initial_test(family), udp_packet(v6, other))


def test_any_port_rules() -> None:
    marks = Marks.from_base(0x100)
    for tool, specs in rule_set([443, 80], [443], 0, 1, 8, marks, any_port=True).items():
        family = 4 if tool == "iptables" else 6
        jumps = [r.spec for r in specs if (r.table, r.chain) == ("filter", "FORWARD")]
        odd = [j for j in jumps if "!" in j[:6] and "--dports" in j]
        for j in odd:  # never a watched port (nor DNS), the client's direction
            i = j.index("--dports")
            assert j[i - 1] == "!" and j[i + 1] in ("53,80,443", "53,443") and "ORIGINAL" in j
        def with_test(test: str, undecided: bool, odd: list[list[str]] = odd) -> list[list[str]]:
            return [j for j in odd if test in j and (j[j.index("connmark") + 1] == "!") is undecided]

        for test in (hello_start_test(family), *method_word_tests(family), eol_start_test(family), long_payload_test(family)):
            (first,) = with_test(test, True)
            assert "0:8" in first
        for test in method_word_tests(family):  # a decided connection's later heads
            (later,) = with_test(test, False)
            assert "0:8" not in later
        assert len(with_test(IPV6_EXTENSIONS_TEST, True)) == (family == 6)
        (quic,) = [j for j in odd if j[1] == "udp"]
        assert quic_initial_test(family) in quic and ("1228:65535" if family == 4 else "1248:65535") in quic
        # the rest of a flow's first bytes, the decided connections' cut or CR/LF-led segments: any port, the client's side
        others = [j for j in jumps if "--dports" not in j]
        assert len(others) == (4 if family == 6 else 3) and all(j[:6] == ["-p", "tcp", "-m", "conntrack", "--ctdir", "ORIGINAL"]
                                                                for j in others)


@pytest.mark.parametrize("family", [4, 6])
def test_what_could_hide_a_later_head_is_queued(family: int) -> None:
    v6 = family == 6
    for data in (b"\r\nGET /2 HTTP/1.1\r\n", b"\nGET /2", b"\r\n\r\nPOST"):  # shorter: the 1-to-7-byte rule
        assert u32(eol_start_test(family), packet(v6, ACK | PSH, data=data))
    assert not u32(eol_start_test(family), packet(v6, ACK | PSH, data=b"GET /2 HTTP/1.1\r\n"))
    if v6:
        plain = packet(True, ACK | PSH, data=b"GET / HTTP/1.1")
        assert u32(IPV6_EXTENSIONS_TEST, plain)
        ext = bytearray(plain)
        ext[6] = 60  # destination options first: the payload tests' offsets are wrong for it, so it is queued
        assert not u32(IPV6_EXTENSIONS_TEST, bytes(ext))


def test_the_rules_copy_of_what_names_a_flow_equals_the_decoders() -> None:
    """enforce reads no frame code (DESIGN.md): its copy of the method words and QUIC versions must
    be beiand.net.link's, or the kernel would queue what the decoder does not read, or miss it."""
    from beiand.enforce import nfqueue
    from beiand.net import link

    assert nfqueue.METHOD_WORDS == link.METHOD_WORDS
    assert (nfqueue.KNOWN_VERSIONS, nfqueue.FIRST_DRAFT, nfqueue.LAST_DRAFT, nfqueue.MIN_INITIAL) == (
        link.QUIC_KNOWN_VERSIONS, link.QUIC_FIRST_DRAFT, link.QUIC_LAST_DRAFT, link.QUIC_MIN_INITIAL)


def test_a_jump_that_may_start_a_name_sets_more_as_the_packet_is_queued() -> None:
    """Issue 32: a later head's first packet, an odd port's first bytes: the connection's ``more`` bit
    is set in the kernel as the packet is queued, so the packets sent right behind it are queued
    too (set by the verdict, they passed unjudged while it waited)."""
    from beiand.enforce.nfqueue import MORE_CHAIN

    marks = Marks.from_base(0x100)
    for specs in rule_set([443, 80], [443], 0, 1, 8, marks, any_port=True).values():
        more_chain = [r.spec for r in specs if r.chain == MORE_CHAIN]
        assert more_chain[0][-3:] == ["CONNMARK", "--or-mark", "0x800"] and more_chain[1][-2:] == ["-j", CHAIN]
        jumps = [r.spec for r in specs if r.chain == "FORWARD"]
        for j in jumps:
            starts = any(t in j for t in (request_head_test(4), request_head_test(6), hello_start_test(4), hello_start_test(6)))
            if starts:
                assert j[-1] == MORE_CHAIN, j
        assert next(j for j in jumps if "0x800/0x800" in j)[-1] == CHAIN  # the rest itself
        assert next(j for j in jumps if "--connbytes" in j and "--dports" in j and "!" not in j[:6] and j[1] == "tcp")[-1] == CHAIN
