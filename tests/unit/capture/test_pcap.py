import pytest

from beiand.capture import CaptureError, CaptureReader, read_capture
from beiand.lab import traffic as t

FRAMES = [t.udp("192.0.2.1", "192.0.2.2", 1000 + i, 53, b"x" * i) for i in range(50)]


@pytest.mark.parametrize("ns", [False, True])
@pytest.mark.parametrize("big", [False, True])
def test_pcap_both_orders_and_resolutions(tmp_path, ns, big):
    p = tmp_path / "a.pcap"
    with t.PcapWriter(p, nanosecond=ns, big_endian=big) as w:
        for i, f in enumerate(FRAMES):
            w.write(1_700_000_000 + i * 0.25 + 0.000123, f)
    got = list(read_capture(p))
    assert [f for _, _, f in got] == FRAMES and all(lt == 1 for _, lt, _ in got)
    assert got[3][0] == pytest.approx(1_700_000_000.750123, abs=1e-6)


@pytest.mark.parametrize("big", [False, True])
def test_pcapng_several_interfaces(tmp_path, big):
    p = tmp_path / "a.pcapng"
    raw = [f[14:] for f in FRAMES]
    pkts = [(i % 2, 1_700_000_000 + i, FRAMES[i] if i % 2 == 0 else raw[i]) for i in range(len(FRAMES))]
    t.write_pcapng(p, pkts, [1, 101], tsresol=9, big_endian=big)
    got = list(read_capture(p))
    assert [(lt, f) for _, lt, f in got] == [(1 if i % 2 == 0 else 101, fr) for i, _, fr in pkts]
    assert got[5][0] == pytest.approx(1_700_000_005)


def test_streams_in_chunks(tmp_path, monkeypatch):
    import beiand.capture.pcap as pcap

    monkeypatch.setattr(pcap, "CHUNK", 100)  # records straddle every chunk boundary
    p = tmp_path / "a.pcap"
    t.write_pcap(p, FRAMES)
    assert [f for _, _, f in read_capture(p)] == FRAMES
    q = tmp_path / "a.pcapng"
    t.write_pcapng(q, [(0, 1.0, f) for f in FRAMES], [1])
    assert [f for _, _, f in read_capture(q)] == FRAMES


def test_truncated_and_bad_files(tmp_path):
    p = tmp_path / "a.pcap"
    t.write_pcap(p, FRAMES)
    data = p.read_bytes()
    (tmp_path / "cut.pcap").write_bytes(data[:-7])
    r = CaptureReader(tmp_path / "cut.pcap")
    assert len(list(r)) == len(FRAMES) - 1 and r.truncated
    (tmp_path / "junk.pcap").write_bytes(b"hello world")
    with pytest.raises(CaptureError, match="not a pcap or pcapng"):
        CaptureReader(tmp_path / "junk.pcap")
    with pytest.raises(CaptureError, match="cannot open"):
        CaptureReader(tmp_path / "missing.pcap")
    bad = bytearray(data)
    bad[24 + 8 : 24 + 12] = (10**7).to_bytes(4, "little")
    (tmp_path / "bad.pcap").write_bytes(bytes(bad))
    with pytest.raises(CaptureError, match="corrupt"):
        list(read_capture(tmp_path / "bad.pcap"))


def test_pcapng_packet_longer_than_its_block(tmp_path):
    p = tmp_path / "a.pcapng"
    t.write_pcapng(p, [(0, 1.0, f) for f in FRAMES[:3]], [1])
    data = bytearray(p.read_bytes())
    epb = data.index((6).to_bytes(4, "little"), 28)  # the first Enhanced Packet Block (after SHB, IDB)
    blen = int.from_bytes(data[epb + 4 : epb + 8], "little")
    data[epb + 20 : epb + 24] = (blen - 31).to_bytes(4, "little")  # reaches into the next block
    (tmp_path / "b.pcapng").write_bytes(bytes(data))
    with pytest.raises(CaptureError, match=r"packet of \d+ bytes in a block of \d+: corrupt"):
        list(read_capture(tmp_path / "b.pcapng"))


def test_prefilter_changes_no_observation(tmp_path):
    from beiand.lab.demo import build
    from beiand.net.decoder import Decoder

    files = build(tmp_path)
    # the demo's capture, and the servers' answers and bare ACKs a real link has (what the prefilter skips)
    frames = [f for _, _, f in CaptureReader(files["pcap"])]
    frames += [t.tcp("198.51.100.1", "192.0.2.1", 443, 40000 + i, 9, 2, flags=0x18, payload=b"x" * 100) for i in range(5)]
    frames += [t.tcp("192.0.2.1", "198.51.100.1", 40000 + i, 443, 2, 10, flags=0x10) for i in range(5)]
    t.write_pcap(tmp_path / "more.pcap", frames)
    results = []
    for skip in (frozenset(), frozenset({80, 443, 8080, 8443})):
        d = Decoder()
        r = CaptureReader(tmp_path / "more.pcap", skip_tcp_from=skip)
        obs = [o for ts, lt, f in r for o in d.feed(ts, f, lt)] + d.flush()
        results.append((obs, r.prefiltered))
    assert results[0][0] == results[1][0] and results[0][1] == 0 and results[1][1] == 10


def test_prefilter_keeps_the_servers_syn_ack_fin_and_rst(tmp_path):
    """Connection records (issue 32): the server's SYN+ACK or RST on a watched port tells an
    established flow from an attempt; the live filter passes them, so replay's prefilter does too."""
    from beiand.net.decoder import Decoder, DecoderConfig

    c, s = "192.0.2.1", "198.51.100.1"
    frames = [t.tcp(c, s, 40000, 443, 1, flags=0x02), t.tcp(s, c, 443, 40000, 9, 2, flags=0x12),
              t.tcp(c, s, 40000, 443, 2, 10, flags=0x10),  # a bare ACK: skipped
              t.tcp(s, c, 443, 40000, 10, 2, flags=0x18, payload=b"x" * 10),  # the server's bytes: skipped
              t.tcp(s, c, 443, 40000, 20, 2, flags=0x11), t.tcp(c, s, 40001, 80, 1, flags=0x02),
              t.tcp(s, c, 80, 40001, 0, 2, flags=0x14)]
    t.write_pcap(tmp_path / "a.pcap", frames)
    r = CaptureReader(tmp_path / "a.pcap", skip_tcp_from=frozenset({80, 443}))
    kept = [f for _, _, f in r]
    assert kept == [frames[i] for i in (0, 1, 4, 5, 6)] and r.prefiltered == 2
    d = Decoder(DecoderConfig(conns=True))
    for i, f in enumerate(kept):
        d.feed(1.0 + i, f)
    out = d.flush()
    assert [(o.server_port, o.detail.split()[0]) for o in out] == [(443, "not-named:no-data"), (80, "not-named:attempts")]
    assert "refused=1" in out[1].detail


def test_nflog_in_pcap_and_pcapng(tmp_path):
    # what `tcpdump -i nflog:5 -w` writes: LINKTYPE_NFLOG (239), the packet in TLV 9 (NFULA_PAYLOAD)
    from beiand.net.decoder import Decoder
    from beiand.net.link import LINKTYPE_NFLOG

    def nflog(packet: bytes) -> bytes:
        def tlv(typ: int, value: bytes) -> bytes:
            raw = (4 + len(value)).to_bytes(2, "little") + typ.to_bytes(2, "little") + value
            return raw + b"\x00" * (-len(raw) % 4)
        return b"\x02\x00\x00\x05" + tlv(1, b"\x08\x00\x03\x00") + tlv(9, packet)

    frame = nflog(t.tcp("192.0.2.1", "198.51.100.1", 40000, 443, 1, payload=t.client_hello("nflog.example.com"))[14:])
    t.write_pcap(tmp_path / "a.pcap", [frame], linktype=LINKTYPE_NFLOG)
    t.write_pcapng(tmp_path / "a.pcapng", [(0, 1.0, frame)], [LINKTYPE_NFLOG])
    for name in ("a.pcap", "a.pcapng"):
        d = Decoder()
        got = [o.name for ts, lt, f in read_capture(tmp_path / name) for o in d.feed(ts, f, lt)]
        assert got == ["nflog.example.com"], name
