"""Issue 17 item 3: an exception outside the decoders' own errors drops the frame and its flow,
is counted by type, and the next frame is decoded as usual."""

import dataclasses
from types import SimpleNamespace

from beiand.lab import traffic as t
from beiand.net.decoder import Decoder

HELLO = t.client_hello("after.example.com")


def test_an_unexpected_exception_drops_the_frame_and_its_flow_and_decoding_goes_on():
    d = Decoder()
    half = t.tcp("192.0.2.1", "198.51.100.1", 40000, 443, 1, payload=HELLO[:100])
    assert d.feed(0.0, half) == []
    assert len(d.flows) == 1
    # A bug met halfway through the flow's next segment (a setting gone: an AttributeError, not a
    # DecodeError). A bytearray frame did it before issue 33 (an unhashable key); feed reads any
    # buffer as bytes now.
    rest = t.tcp("192.0.2.1", "198.51.100.1", 40000, 443, 101, payload=HELLO[100:])
    config = d.config
    d.config = SimpleNamespace(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "max_flow_bytes"})
    assert d.feed(0.001, rest) == []
    d.config = config
    assert d.drops["frame:AttributeError"] == 1
    assert len(d.flows) == 0 and d.budgets["tcp"].held == 0  # its flow is gone with it
    out = d.feed(0.002, t.tcp("192.0.2.2", "198.51.100.1", 40001, 443, 1, payload=HELLO))
    assert [o.name for o in out] == ["after.example.com"]


def test_a_frame_in_any_buffer_decodes_as_its_bytes():
    """feed reads a bytearray or a memoryview frame as the bytes it holds (issue 33: the compiled
    twin reads bytes typed)."""
    for kind in (bytes, bytearray, memoryview):
        d = Decoder()
        out = d.feed(0.0, kind(t.tcp("192.0.2.3", "198.51.100.1", 40002, 443, 1, payload=HELLO)))
        assert [o.name for o in out] == ["after.example.com"], kind
