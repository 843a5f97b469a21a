"""Issue 17: mutated frames and hostile captures, seeded and counted. The decoder's catch-all
(``frame:<type>`` drops) must stay unused: every junk frame ends in a DecodeError or is decoded,
so a real bug is not hidden behind the catch-all."""

from __future__ import annotations

import random
import struct

from beiand.capture.pcap import CaptureError, read_capture
from beiand.lab import traffic as t
from beiand.net.decoder import Decoder, DecoderConfig
from tests.fuzz import hostile

SEED = 17


def corpus() -> list[tuple[int, bytes]]:
    hello = t.client_hello("mut.example.com", ["h2"], big=True)
    frames = [t.tcp("192.0.2.1", "198.51.100.1", 40000 + i, 443, 1, payload=hello[i * 700 : (i + 1) * 700]) for i in range(3)]
    frames += t.tcp_session("192.0.2.2", "198.51.100.1", 41000, 80, b"GET / HTTP/1.1\r\nHost: h.example.com\r\n\r\n")
    frames += [t.udp("192.0.2.3", "198.51.100.1", 50000, 443, d) for d in t.quic_initial_datagrams("q.example.com")]
    frames.append(t.udp("198.51.100.53", "192.0.2.4", 53, 33333, t.dns_response("d.example.com", ["198.51.100.7"])))
    frames.append(t.tcp("192.0.2.5", "198.51.100.1", 40000, 443, 1, payload=hello[:900], vlan=[10, 20]))
    frames += list(hostile.reverse_fragments(8))
    frames += list(hostile.quic_scatter(1, datagrams=1))
    v6 = t.tcp("2001:db8::1", "2001:db8::2", 40000, 443, 1, payload=hello[:600])
    frames.append(v6)
    return [(1, f) for f in frames] + [(101, f[14:]) for f in frames[:4]]


def mutate(rng: random.Random, frame: bytes) -> bytes:
    b = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        if op == 0 and b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[rng.randrange(len(b))] = rng.choice((0, 0xFF, 0x80, 0x7F, rng.randrange(256)))
        elif op == 2:
            del b[rng.randrange(len(b) + 1) :]
        elif op == 3:
            pos = rng.randrange(len(b) + 1)
            b[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 4 and len(b) > 40:  # a length or offset field set to an extreme
            pos = rng.randrange(14, 40)
            b[pos : pos + 2] = struct.pack("!H", rng.choice((0, 1, 0xFFFF, 0x8000, len(b))))
    return bytes(b)


TRIED = {"frames": 0, "captures": 0}


def budgets_match(d: Decoder) -> None:
    """What each budget is charged is what the tables hold: no leak, no double release."""
    assert d.budgets["tcp"].held == sum(f.cost for f in d.flows.values()) + sum(f.cost for f in d.dns_flows.values())
    assert d.budgets["quic"].held == sum(r.crypto.cost for _, r in d.quic.values())
    assert d.budgets["fragment"].held == sum(fb.cost for fb in d.frags.values())


def test_mutated_frames_never_reach_the_catch_all():
    rng = random.Random(SEED)
    base = corpus()
    d = Decoder(DecoderConfig(reassembly_tcp_bytes=1 << 20, reassembly_quic_bytes=1 << 20, reassembly_fragment_bytes=1 << 20))
    n = 0
    for i in range(30_000):
        lt, f = base[i % len(base)]
        d.feed(1000.0 + i * 1e-4, mutate(rng, f), lt)
        n += 1
        if i % 500 == 0:
            budgets_match(d)
    budgets_match(d)
    d.flush()
    TRIED["frames"] += n
    caught = {k: v for k, v in d.drops.items() if k.startswith("frame:")}
    assert not caught, caught
    assert d.packets == n
    assert all(b.held == 0 for b in d.budgets.values())


def test_mutated_frames_with_connection_records():
    """Issue 19: connection tracking sees every TCP/UDP frame first; junk still never reaches the
    catch-all, the tables stay bounded and every flow started is written exactly once."""
    for attempts in ("each", "summarise"):  # issue 32: an attempt is counted into a summary, not written
        rng = random.Random(SEED + 19)
        base = corpus()
        d = Decoder(DecoderConfig(conns=True, conn_window=2.0, conn_max=2048, conn_attempts=attempts))
        written = 0
        for i in range(20_000):
            lt, f = base[i % len(base)]
            for o in d.feed(1000.0 + i * 1e-3, mutate(rng, f), lt):
                written += not o.detail.startswith("not-named:attempts") and (o.kind == "conn" or o.packets > 0)
            assert len(d.conn_pending) <= 2048
            if i % 500 == 0:
                budgets_match(d)
        for o in d.flush():
            written += not o.detail.startswith("not-named:attempts") and (o.kind == "conn" or o.packets > 0)
        assert not {k: v for k, v in d.drops.items() if k.startswith("frame:")}
        assert written + d.stats["conn:attempts"] == d.conn_new and not d.conn_pending, attempts


def test_hostile_captures_are_read_or_refused(tmp_path):
    rng = random.Random(SEED)
    p = tmp_path / "good.pcap"
    t.write_pcap(p, [f for _, f in corpus()[:20]])
    good = p.read_bytes()
    for i in range(400):
        q = tmp_path / f"m{i}.pcap"
        q.write_bytes(mutate(rng, good) if i % 4 else good[: rng.randrange(len(good))])
        d = Decoder()
        try:
            for ts, lt, frame in read_capture(q):
                d.feed(ts, frame, lt)
        except CaptureError:
            pass
        d.flush()
        assert not [k for k in d.drops if k.startswith("frame:")]
        TRIED["captures"] += 1
