"""net/link.py: one table for the decoder, the pcap reader and the BPF generator."""

import pytest

from beiand.capture.bpf import build, run
from beiand.capture.pcap import shard_key
from beiand.lab import traffic as t
from beiand.net.decoder import Decoder
from beiand.net.link import LINK_TYPES, SUPPORTED_LINKTYPES, Start

IP = t.tcp("192.0.2.1", "198.51.100.1", 40000, 443, 1, payload=t.client_hello("link.example.com"))[14:]


def head(lt: int) -> bytes:
    """A link header for ``lt`` that carries an IPv4 packet."""
    spec = LINK_TYPES[lt]
    if spec.start is Start.ETHERNET:
        return t.MAC_B + t.MAC_A + b"\x08\x00"
    if spec.start is Start.NFLOG:
        return b"\x02\x00\x00\x01" + (4 + len(IP)).to_bytes(2, "little") + (9).to_bytes(2, "little")
    h = bytearray(spec.offset)
    if spec.start is Start.ETHERTYPE:
        h[spec.ethertype_at : spec.ethertype_at + 2] = b"\x08\x00"
    elif spec.offset == 4:
        h[:4] = (2).to_bytes(4, "little")
    return bytes(h)


@pytest.mark.parametrize("lt", sorted(SUPPORTED_LINKTYPES))
def test_every_link_type_is_decoded_filtered_and_sharded(lt: int) -> None:
    frame = head(lt) + IP
    assert [o.name for o in Decoder().feed(0.0, frame, lt)] == ["link.example.com"]
    if LINK_TYPES[lt].start is not Start.NFLOG:  # NFLOG is read from files, never captured with AF_PACKET
        assert run(build([443], [443], linktype=lt), frame) > 0
        assert shard_key(frame, lt) == hash(IP[12:16]) ^ hash(IP[16:20])  # either direction alike
