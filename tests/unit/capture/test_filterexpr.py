"""capture.filter: parsed for people, compiled in front of the program, equal to a plain evaluation."""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beiand.capture.bpf import build, pack, run
from beiand.capture.filterexpr import And, Condition, FilterError, Net, Node, Not, Or, Vlan, parse_filter
from beiand.lab import traffic as t
from beiand.net.link import LINKTYPE_RAW

TCP, UDP = (80, 443, 8080, 8443), (443,)
HELLO = t.client_hello("f.example.com")


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty condition"),
    ("vlan", "unexpected end"),
    ("vlan 5000", "VLAN id from 0 to 4095"),
    ("vlan \u00b2", "VLAN id from 0 to 4095"),  # "²".isdigit() is True and int("²") raises
    ("net 198.51.100.0/33", "expected a prefix"),
    ("host 198.51.100.0/24", "one address"),
    ("vlan 1 vlan 2", "missing 'and' or 'or'"),
    ("(vlan 1", "unexpected end"),
    ("port 80", "expected vlan, net, host"),
])
def test_errors_say_what_was_expected(text: str, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        parse_filter(text)


def test_precedence() -> None:
    assert parse_filter("vlan 1 or vlan 2 and not vlan 3") == Or(Vlan(1), And(Vlan(2), Not(Vlan(3))))
    assert parse_filter("src net 10.0.0.0/8") == Net(ipaddress.ip_network("10.0.0.0/8"), "src")


def frame(src: str, dst: str, vlans: list[int]) -> bytes:
    return t.tcp(src, dst, 40000, 443, 1, payload=HELLO, vlan=vlans)


def holds(node: Node, src: str, dst: str, vlans: list[int]) -> bool:
    if isinstance(node, Not):
        return not holds(node.node, src, dst, vlans)
    if isinstance(node, And):
        return holds(node.left, src, dst, vlans) and holds(node.right, src, dst, vlans)
    if isinstance(node, Or):
        return holds(node.left, src, dst, vlans) or holds(node.right, src, dst, vlans)
    if isinstance(node, Vlan):
        return node.vid in vlans[:3]
    addrs = {"src": [src], "dst": [dst], "": [src, dst]}[node.direction]
    return any(ipaddress.ip_address(a) in node.network for a in addrs if ipaddress.ip_address(a).version == node.network.version)


ADDRS = ["198.51.100.7", "198.51.100.200", "192.0.2.1", "2001:db8:100::7", "2001:db8:1::1"]
PRIMS = ["vlan 10", "vlan 20", "net 198.51.100.0/25", "src net 192.0.2.0/24", "dst host 198.51.100.7",
         "net 2001:db8:100::/48", "src host 2001:db8:1::1", "dst net 0.0.0.0/0"]


@st.composite
def conditions(draw: st.DrawFn, depth: int = 0) -> str:
    if depth > 2 or draw(st.booleans()):
        return draw(st.sampled_from(PRIMS))
    op = draw(st.sampled_from(["and", "or", "not"]))
    if op == "not":
        return f"not ({draw(conditions(depth + 1))})"
    return f"({draw(conditions(depth + 1))}) {op} ({draw(conditions(depth + 1))})"


@settings(max_examples=200, deadline=None)
@given(conditions(), st.integers(0, 4), st.lists(st.sampled_from([10, 20, 30]), max_size=3))
def test_compiled_condition_equals_plain_evaluation(text: str, pair: int, vlans: list[int]) -> None:
    v6 = pair >= 3
    src, dst = (ADDRS[4], ADDRS[3]) if v6 else (ADDRS[2], ADDRS[pair])
    cond = Condition(text)
    prog = build(TCP, UDP, condition=cond)
    f = frame(src, dst, vlans)
    assert (run(prog, f) > 0) == holds(cond.node, src, dst, vlans)


def test_raw_ip_link_type_and_main_program_still_applies() -> None:
    prog = build(TCP, UDP, linktype=LINKTYPE_RAW, condition=Condition("net 198.51.100.0/24 and not vlan 3"))
    assert run(prog, t.tcp("192.0.2.1", "198.51.100.1", 40000, 443, 1, payload=HELLO)[14:]) > 0
    assert run(prog, t.tcp("192.0.2.1", "203.0.113.1", 40000, 443, 1, payload=HELLO)[14:]) == 0
    assert run(prog, t.tcp("192.0.2.1", "198.51.100.1", 40000, 443, 1, flags=0x10)[14:]) == 0  # bare ACK


def test_the_kernel_takes_it() -> None:
    prog = build(TCP, UDP, condition=Condition("(vlan 10 or vlan 20) and (net 198.51.100.0/24 or net 2001:db8::/32)"))
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except PermissionError:
        pytest.fail("needs CAP_NET_RAW: run as root (CI does)")
    with s:
        buf = ctypes.create_string_buffer(pack(prog))
        s.setsockopt(socket.SOL_SOCKET, 26, struct.pack("HL", len(prog), ctypes.addressof(buf)))  # SO_ATTACH_FILTER
