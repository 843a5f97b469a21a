import pytest
from hypothesis import given
from hypothesis import strategies as st

from beiand.lab.traffic import dns_response
from beiand.net.dns import parse_dns, read_name, resolve_chain
from beiand.net.errors import DnsError


def test_answers_and_cname_chain():
    wire = dns_response("www.Example.com", ["198.51.100.1", "2001:db8::5"], cnames=["edge.cdn.example.net"], ttl=60)
    msg = parse_dns(wire)
    assert msg.response and msg.rcode == 0 and msg.qname == "www.example.com" and msg.qtype == 1
    chain, addrs = resolve_chain(msg)
    assert chain == ["www.example.com", "edge.cdn.example.net"]
    assert addrs == [("198.51.100.1", 60), ("2001:db8::5", 60)]


def test_compression_loops_and_forward_pointers_end():
    # a pointer to itself, and a pointer forward
    loop = b"\x00\x01\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00" + b"\xc0\x0c"
    with pytest.raises(DnsError, match="forward-pointer"):
        parse_dns(loop)
    fwd = b"\x00\x01\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00" + b"\xc0\x20"
    with pytest.raises(DnsError):
        parse_dns(fwd)
    # two pointers pointing at each other can't both point backwards
    buf = b"\xc0\x02\xc0\x00"
    with pytest.raises(DnsError):
        read_name(buf, 2)


@pytest.mark.parametrize("cut", range(1, 60, 3))
def test_truncated(cut):
    wire = dns_response("www.example.com", ["198.51.100.1"])
    with pytest.raises(DnsError):
        parse_dns(wire[: len(wire) - cut])


@given(st.binary(max_size=300))
def test_never_raises_other_errors(data):
    try:
        parse_dns(data)
    except DnsError:
        pass


@given(st.binary(min_size=12, max_size=12), st.lists(st.integers(0, 255), max_size=200))
def test_pointer_soup_terminates(header, body):
    buf = header + bytes(body)
    try:
        parse_dns(buf)
    except DnsError:
        pass
