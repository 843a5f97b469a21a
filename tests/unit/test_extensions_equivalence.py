"""The compiled hot path and its pure-Python twin give the same outputs for the same inputs (issue 21).

Hypothesis feeds both implementations (``beiand.extensions.implementations()``) the same frames,
capture files, payloads, observations and access-log records, and every output is compared:
observations, drop and stat counters, parse results or the exception raised, decisions, lines.
With the extensions off, both sides are the ``.py`` source and the tests still run (and pass).
"""

from __future__ import annotations

import functools
import ipaddress
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from beiand import extensions
from beiand.capture import read_capture
from beiand.lab import traffic as t
from beiand.model import AccessRecord, Kind, Observation, Transport
from tests.unit.accesslog.test_connections import records as block_records

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
IMPLS = extensions.implementations()
C, P = IMPLS["compiled"], IMPLS["pure"]
SLOW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _corpus_frames() -> list[tuple[float, int, bytes]]:
    out = []
    for pcap in sorted(CORPUS.glob("*/input.pcap")):
        out += list(read_capture(pcap))
    return out


CORPUS_FRAMES = _corpus_frames()
HELLO = t.client_hello("equal.example.com", ["h2", "http/1.1"], big=True)
SAMPLES = [
    HELLO,
    b"GET /a?b=c HTTP/1.1\r\nHost: web.example.com\r\nUser-Agent: x\r\n\r\nPOST / HTTP/1.1\r\nHost: other.example\r\n\r\n",
    t.dns_response("www.example.com", ["198.51.100.7", "2001:db8::7"], cnames=["cdn.example.net"]),
    t.quic_initial_datagrams("quic.example.com")[0],
    t.gquic_chlo("gquic.example.com"),
]


def _outcome(fn: Any, *args: Any) -> Any:
    """What a call gives: its value (as repr, so classes of either twin compare), or the exception's type and text."""
    try:
        return ("ok", repr(fn(*args)))
    except IndexError:  # the same type; its text is CPython's or Cython's ("string index out of range")
        return ("raised", "IndexError")
    except Exception as exc:  # the same exception, by name and message, on both paths
        return ("raised", type(exc).__name__, str(exc))


def _decode(mod: Any, frames: list[tuple[float, int, bytes]], **cfg: Any) -> tuple[Any, ...]:
    dec = mod["beiand.net.decoder"]
    d = dec.Decoder(dec.DecoderConfig(**cfg))
    out: list[Observation] = []
    for ts, lt, frame in frames:
        out += d.feed(ts, frame, lt)
    flows = d.flow_count
    out += d.flush()
    return out, dict(d.drops), dict(d.stats), d.packets, d.bytes, d.server_to_client, flows


def _mutate(frame: bytes, rnd: random.Random) -> bytes:
    b = bytearray(frame)
    for _ in range(rnd.randint(0, 3)):
        if b:
            b[rnd.randrange(len(b))] = rnd.randrange(256)
    if rnd.random() < 0.3:
        b = b[: rnd.randint(0, len(b))]
    return bytes(b)


def test_both_implementations_are_there() -> None:
    assert set(C) == set(P) == set(extensions.COMPILED)
    if not extensions.disabled():
        assert all(extensions.is_compiled(m) for m in C.values())
    assert not any(extensions.is_compiled(m) for m in P.values())


def test_the_whole_corpus_decodes_the_same() -> None:
    assert _decode(C, CORPUS_FRAMES) == _decode(P, CORPUS_FRAMES)
    assert _decode(C, CORPUS_FRAMES, any_port=True, max_flows=4, max_flow_bytes=600) == \
        _decode(P, CORPUS_FRAMES, any_port=True, max_flows=4, max_flow_bytes=600)


@SLOW
@given(st.randoms(use_true_random=False), st.integers(1, 60), st.booleans())
def test_mutated_and_shuffled_frames_decode_the_same(rnd: random.Random, n: int, tight: bool) -> None:
    frames = [(ts + rnd.random(), lt, _mutate(f, rnd) if rnd.random() < 0.5 else f)
              for ts, lt, f in rnd.sample(CORPUS_FRAMES, min(n, len(CORPUS_FRAMES)))]
    cfg = {"max_flows": 3, "max_flow_bytes": 300, "max_done": 8, "reassembly_tcp_bytes": 2000} if tight else {}
    assert _decode(C, frames, **cfg) == _decode(P, frames, **cfg)


@SLOW
@given(st.lists(st.tuples(st.binary(max_size=300), st.sampled_from([0, 1, 101, 113, 228, 229, 239, 276])), max_size=8))
def test_junk_frames_decode_the_same(frames: list[tuple[bytes, int]]) -> None:
    fr = [(float(i), lt, b) for i, (b, lt) in enumerate(frames)]
    assert _decode(C, fr) == _decode(P, fr)


@SLOW
@given(st.integers(0, len(SAMPLES) - 1), st.randoms(use_true_random=False))
def test_parsers_give_the_same_value_or_error(which: int, rnd: random.Random) -> None:
    data = _mutate(SAMPLES[which], rnd)
    for mod, fn in (("beiand.net.tls", "parse_client_hello"), ("beiand.net.http", "parse_requests"),
                    ("beiand.net.dns", "parse_dns"), ("beiand.net.quic", "parse_gquic_chlo"), ("beiand.net.quic", "is_initial"),
                    ("beiand.net.quic", "gquic_version"), ("beiand.net.http", "looks_like_http"), ("beiand.net.tls", "looks_like_tls")):
        assert _outcome(getattr(C[mod], fn), data) == _outcome(getattr(P[mod], fn), data), (mod, fn)
    readers = [m["beiand.net.quic"].QuicInitialReader() for m in (C, P)]
    assert _outcome(readers[0].feed, data) == _outcome(readers[1].feed, data)


@SLOW
@given(st.lists(st.binary(max_size=120), max_size=4), st.text(max_size=30))
def test_names_and_dns_names_are_the_same(blobs: list[bytes], text: str) -> None:
    for b in blobs:
        assert _outcome(C["beiand.net.dns"].parse_dns, b) == _outcome(P["beiand.net.dns"].parse_dns, b)
    assert _outcome(C["beiand.net.names"].normalise_wire_name, text) == _outcome(P["beiand.net.names"].normalise_wire_name, text)


def _write(path: Path, frames: list[bytes], linktype: int) -> None:
    with t.PcapWriter(path, linktype) as w:
        for i, f in enumerate(frames):
            w.write(1_700_000_000 + i / 7, f)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.randoms(use_true_random=False), st.sampled_from([(0, 1), (0, 2), (1, 2), (2, 3)]), st.booleans(), st.integers(0, 200))
def test_capture_files_read_the_same(tmp_path: Path, rnd: random.Random, shard: tuple[int, int], filt: bool, cut: int) -> None:
    frames = [_mutate(f, rnd) if rnd.random() < 0.2 else f for _, _, f in rnd.sample(CORPUS_FRAMES, min(40, len(CORPUS_FRAMES)))]
    path = tmp_path / "c.pcap"
    _write(path, frames, 1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - cut])  # the file may end inside a record
    got = []
    for m in (C, P):
        pcap = m["beiand.capture.pcap"]
        with pcap.CaptureReader(path, skip_tcp_from=frozenset({80, 443}) if filt else frozenset(), shard=shard) as r:
            frames_read = _outcome(list, r)
            got.append((frames_read, r.records, r.prefiltered, r.truncated))
        got[-1] += tuple(_outcome(pcap.shard_key, f, lt) == _outcome(pcap.shard_key, f, lt) for f, lt in ((frames[0], 1), (b"", 228)))
    assert got[0] == got[1]


def _policy(mods: dict[str, Any]) -> Any:
    from beiand.policy.inventory import load_inventory
    from beiand.records import load_file

    verdict = mods["beiand.policy.verdict"]
    index = mods["beiand.records.index"].build_index(load_file(CORPUS / "records.csv"))
    return verdict.Policy(index, load_inventory(CORPUS / "inventory.csv"), verdict.PolicyConfig(
        provider="示例云计算有限公司", allow_names=frozenset({"status.example-cdn.com"}), allow_suffixes=("trusted.example",),
        allow_prefixes=("198.51.100.250/32",), access_pending_grace_days=30))


POLICIES = (_policy(C), _policy(P))
NAMES = sorted({line.split(",")[0].strip().lower() for line in (CORPUS / "records.csv").read_text(encoding="utf-8").splitlines()[1:]
                if line.strip()} | {"www.unfiled.example.xyz", "a.b.c.trusted.example", "status.example-cdn.com"})


@SLOW
@given(st.lists(st.tuples(st.sampled_from(NAMES), st.text("abc.-", max_size=8), st.integers(0, 255),
                          st.sampled_from(list(Kind)), st.booleans()), min_size=1, max_size=30))
def test_decisions_are_the_same(obs: list[tuple[str, str, int, Kind, bool]]) -> None:
    for name, prefix, last, kind, v6 in obs:
        server = str(ipaddress.ip_address("2001:db8:100::1") + last) if v6 else f"198.51.100.{last}"
        full = (prefix + "." + name) if prefix and not prefix.startswith(".") else name
        o = Observation(1_700_000_000.5, "192.0.2.9", 40000, server, 443, Transport.TCP, kind, full, full, (), "")
        got = [_outcome(p.decide, o) for p in POLICIES]
        assert got[0] == got[1], o


FIELD = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)) | st.sampled_from(["\t", "\n", "\\", "\r"]), max_size=12)


@SLOW
@given(st.lists(st.tuples(st.integers(0, 2**45), FIELD, FIELD, st.integers(0, 65535), FIELD, FIELD), max_size=20), st.binary(min_size=32, max_size=32))
def test_access_log_lines_and_chain_are_the_same(rows: list[tuple[Any, ...]], key: bytes) -> None:
    recs = [AccessRecord(ts, a, c, port, c, port, "tcp", "tls-sni", s, "filed", "log", "", "gw", v, "", "", "", "in", a, s, port, ts)
            for ts, a, c, port, s, v in rows]
    fc, fp = C["beiand.accesslog.format"], P["beiand.accesslog.format"]
    assert fc.encode_batch(recs) == fp.encode_batch(recs)
    lines = fc.encode_batch(recs)
    assert [fc.encode(r) for r in recs] == [fp.encode(r) for r in recs]
    assert [_outcome(fc.decode, ln) for ln in lines] == [_outcome(fp.decode, ln) for ln in lines]
    assert fc.chain(b"\0" * 32, lines) == fp.chain(b"\0" * 32, lines)
    assert fc.chain(b"\0" * 32, lines, key) == fp.chain(b"\0" * 32, lines, key)


@pytest.mark.parametrize("impl", ["compiled", "pure"])
def test_each_twin_imports_its_own_kind(impl: str) -> None:
    mods = IMPLS[impl]
    dec = mods["beiand.net.decoder"]
    assert dec.Decoder.__module__ == "beiand.net.decoder"
    assert extensions.is_compiled(dec) == (impl == "compiled" and not extensions.disabled())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400), st.booleans(), st.booleans())
@example(b"\0" * 8 + b"\x40\0\0\xa0" + b"\0" * 200, False, True)  # a length with its top bit set (a C int would overflow)
def test_hostile_capture_bytes_read_the_same(tmp_path: Path, body: bytes, big: bool, filt: bool) -> None:
    import struct

    head = struct.pack((">" if big else "<") + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
    path = tmp_path / "h.pcap"
    path.write_bytes(head + body)
    got = []
    for m in (C, P):
        with m["beiand.capture.pcap"].CaptureReader(path, skip_tcp_from=frozenset({443}) if filt else frozenset()) as r:
            got.append((_outcome(list, r), r.records, r.prefiltered, r.truncated))
    assert got[0] == got[1]


@SLOW
@given(st.lists(block_records, min_size=1, max_size=30))
def test_sealed_blocks_are_the_same_bytes_and_read_back_the_same(recs: list[AccessRecord]) -> None:
    """Format-2 columnar blocks (issue 19): bytearray byte planes once raised TypeError compiled only."""
    fc, fp = C["beiand.accesslog.format"], P["beiand.accesslog.format"]
    lines = fp.encode_batch(recs)
    blob = fp.encode_block(lines)
    assert _outcome(fc.encode_block, lines) == _outcome(fp.encode_block, lines)
    assert fp.decode_block(blob, 2) == lines
    assert _outcome(fc.decode_block, blob, 2) == _outcome(fp.decode_block, blob, 2)
    server = {fp.FIELDS.index("server_ip"): {lines[0].split(b"\t")[4]}}
    assert _outcome(fc.decode_block, blob, 2, [server]) == _outcome(fp.decode_block, blob, 2, [server])


@SLOW
@given(st.integers(0, 2), st.randoms(use_true_random=False), st.sampled_from([bytes, bytearray, memoryview]),
       st.integers(-20, 600))
def test_typed_walks_take_any_buffer_and_give_the_same(which: int, rnd: random.Random, kind: type, off: int) -> None:
    """tls.pxd / dns.pxd type the ClientHello and DNS walks on bytes (issue 21): a bytearray or a
    memoryview, a mutated message or an offset out of range give the same value or error on both paths."""
    data = kind(_mutate([HELLO, SAMPLES[2], HELLO[5:]][which], rnd))
    for mod, fn, args in (("beiand.net.tls", "parse_client_hello", (data,)), ("beiand.net.tls", "parse_handshake", (data,)),
                          ("beiand.net.tls", "parse_client_hello_body", (data,)),
                          ("beiand.net.tls", "parse_client_hello_body", (data[9:],)),
                          ("beiand.net.dns", "parse_dns", (data,)), ("beiand.net.dns", "read_name", (data, off)),
                          ("beiand.net.dns", "read_name", (data, 12))):
        assert _outcome(getattr(C[mod], fn), *args) == _outcome(getattr(P[mod], fn), *args), (mod, fn, kind)


@SLOW
@given(st.binary(min_size=0, max_size=24), st.integers(-2, 24))
@example(b"\x80\x00\x00\x01", 0)  # the top bit set: a 32-bit C shift overflowed into a negative sequence number
@example(b"\xff" * 16, 0)
def test_typed_byte_helpers_give_the_same(blob: bytes, at: int) -> None:
    """decoder.pxd types the frame's words and IPv4 text (issue 33): every byte value and every
    offset, in range or not, gives the same value or error on both paths."""
    c, p = C["beiand.net.decoder"], P["beiand.net.decoder"]
    assert _outcome(c._u32, blob, at) == _outcome(p._u32, blob, at)
    if len(blob) == 4:
        assert c._ntop(2, blob) == p._ntop(2, blob) == str(ipaddress.ip_address(blob))
    elif len(blob) == 16:
        assert c._ntop(10, blob) == p._ntop(10, blob)


@SLOW
@given(st.lists(st.tuples(st.sampled_from(range(len(CORPUS_FRAMES))), st.binary(min_size=4, max_size=4),
                          st.sampled_from([38, 42])), min_size=1, max_size=30))
def test_sequence_numbers_with_the_top_bit_decode_the_same(edits: list[tuple[int, bytes, int]]) -> None:
    """Frames whose TCP sequence or acknowledgement number (Ethernet + IPv4: bytes 38 and 42) is
    rewritten to any 32-bit value (the compiled twin reads them as C integers) give the same
    observations on both paths."""
    frames = []
    for i, word, at in edits:
        ts, lt, f = CORPUS_FRAMES[i]
        b = bytearray(f)
        if len(b) >= 58:
            b[at : at + 4] = word
        frames.append((ts, lt, bytes(b)))
    assert _decode(C, frames) == _decode(P, frames)


LABEL = st.sampled_from(["a", "b", "ab", "", "x1", "中"])
DOMAIN = st.lists(LABEL, min_size=1, max_size=5).map(".".join)


def _walk(by_domain: dict[str, Any], name: str) -> list[str]:
    """The listed suffixes of ``name``, most specific first: the plain walk (every suffix probed)."""
    out, cand = [], name
    while True:
        if cand in by_domain:
            out.append(cand)
        dot = cand.find(".")
        if dot < 0:
            return out
        cand = cand[dot + 1:]


@SLOW
@given(st.lists(st.tuples(st.lists(DOMAIN, max_size=3), st.lists(st.sampled_from(["198.51.100.7", "198.51.100.0/30",
                                                                                "2001:db8::1-2001:db8::9"]), max_size=2)),
                max_size=6),
       st.lists(DOMAIN, min_size=1, max_size=8), st.sampled_from(["198.51.100.7", "198.51.100.2", "2001:db8::5", "", "x"]))
@example([(["ab.a"], [])], ["b.ab.a", "a", ""], "198.51.100.7")
@example([([], [])], ["a.b", "", "."], "")
def test_suffix_walks_and_address_probes_are_the_same(specs: list[tuple[list[str], list[str]]], names: list[str], ip: str) -> None:
    """index.pxd types the suffix walk (issue 33), which probes only suffixes with as many labels as
    some listing: both twins give what the plain walk over every suffix gives."""
    from beiand.model import Filing, FilingStatus, ServiceType

    filings = [Filing(f"京ICP备{i:08d}号-1", "s", ServiceType.WEBSITE, tuple(ds), tuple(ips), "p", FilingStatus.ACTIVE)
               for i, (ds, ips) in enumerate(specs)]
    c, p = C["beiand.records.index"].RecordIndex(filings), P["beiand.records.index"].RecordIndex(filings)
    def filings_of(d: str) -> tuple[Any, ...]:
        hit = p.by_domain[d]
        return hit if type(hit) is tuple else (hit,)

    for name in names:
        listed = _walk(p.by_domain, name)
        assert c.covering_all(name) == p.covering_all(name) == tuple(f for d in listed for f in filings_of(d)), name
        assert c.covering(name) == p.covering(name) == ((listed[0], filings_of(listed[0])) if listed else None), name
    assert _outcome(c.by_address, ip) == _outcome(p.by_address, ip)
    assert _outcome(c.has_address, ip) == _outcome(p.has_address, ip)
    assert [_outcome(c.lists_ip, f, ip) for f in filings] == [_outcome(p.lists_ip, f, ip) for f in filings]


@SLOW
@given(st.lists(st.tuples(st.sampled_from([*NAMES, ""]), st.text("abc.-", max_size=8), st.integers(0, 255), st.booleans(),
                          st.sampled_from([1_600_000_000.0, 1_700_000_000.5, 1_900_000_000])), min_size=1, max_size=20))
def test_lookups_verdicts_and_judgements_are_the_same(rows: list[tuple[str, str, int, bool, float]]) -> None:
    """verdict.pxd types the policy (issue 33): its uncached entry points, on servers inside and outside
    the inventory (and none), at times around the pending grace, give the same on both paths."""
    for name, prefix, last, v6, ts in rows:
        server = "" if last == 0 else (str(ipaddress.ip_address("2001:db8:100::1") + last) if v6 else f"198.51.100.{last}")
        full = (prefix + "." + name) if prefix and not prefix.startswith(".") else name
        got = [(_outcome(p.lookup, full, server, ts), _outcome(functools.partial(p.lookup, no_inventory_means_hosted=True), full, server, ts),
                _outcome(p.verdict, full, server, ts), _outcome(p.judge, full, server, ts, p.inventory.lookup(server) if server else None))
               for p in POLICIES]
        assert got[0] == got[1], (full, server, ts)
