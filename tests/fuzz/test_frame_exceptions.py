"""Issue 17 item 3: an exception outside the decoders' own errors drops the frame and its flow,
is counted by type, and the next frame is decoded as usual."""

from beiand.lab import traffic as t
from beiand.net.decoder import Decoder

HELLO = t.client_hello("after.example.com")


def test_an_unexpected_exception_drops_the_frame_and_its_flow_and_decoding_goes_on():
    d = Decoder()
    half = t.tcp("192.0.2.1", "198.51.100.1", 40000, 443, 1, payload=HELLO[:100])
    assert d.feed(0.0, half) == []
    assert len(d.flows) == 1
    # A frame handed over as a bytearray (a reused ring buffer) makes an unhashable flow key:
    # a TypeError, not a DecodeError.
    rest = t.tcp("192.0.2.1", "198.51.100.1", 40000, 443, 101, payload=HELLO[100:])
    assert d.feed(0.001, bytearray(rest)) == []
    assert d.drops["frame:TypeError"] == 1
    assert len(d.flows) == 0 and d.budgets["tcp"].held == 0  # its flow is gone with it
    out = d.feed(0.002, t.tcp("192.0.2.2", "198.51.100.1", 40001, 443, 1, payload=HELLO))
    assert [o.name for o in out] == ["after.example.com"]
