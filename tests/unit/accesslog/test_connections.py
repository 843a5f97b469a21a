"""Connection records in the store (issue 19): sealed format 2 (columnar blocks that rebuild the
chained lines byte for byte), the server-endpoint index, format 1 partitions still read, disk
per record."""

from __future__ import annotations

import random
import shutil
import zlib
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from beiand.accesslog import AccessLog, LogConfig, Query, QueryStats, query, stats, verify
from beiand.accesslog.format import (
    CODEC_COLUMNS,
    CODEC_ZLIB,
    DAY_MS,
    FIELDS,
    decode_block,
    encode,
    encode_batch,
    encode_block,
    split_endpoint,
)
from beiand.accesslog.reader import summaries
from beiand.accesslog.store import partition_paths, read_sealed_meta
from beiand.model import AccessRecord
from tests.unit.accesslog.helpers import DAY0, rec

GOLDEN_V1 = Path(__file__).parent.parent.parent / "golden" / "accesslog-v1"

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
ips = st.one_of(st.ip_addresses().map(str), st.sampled_from(["01.2.3.4", "::FFFF:1.2.3.4", "1.2.3", "", "fe80::1%eth0"]), text)
records = st.builds(AccessRecord, st.integers(0, 2**53), text, ips, st.integers(0, 65535), ips, st.integers(0, 65535),
                    text, text, text, text, text, text, text, text, text, text, text,
                    text, text, text, st.integers(0, 2**40), st.integers(0, 2**53))


def conn(i: int, rnd: random.Random, day: int = 0, **kw: object) -> AccessRecord:
    """A connection record as issue 19a writes them: any port, unnamed, counts coalesced."""
    server = f"198.51.100.{rnd.randrange(64)}"
    r = AccessRecord(DAY0 + day * DAY_MS + i * 7 + rnd.randrange(5), f"cust-{rnd.randrange(50)}",
                     f"{rnd.randrange(1, 224)}.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(256)}",
                     rnd.randrange(32768, 61000), server, rnd.choice([22, 443, 80, 3000, rnd.randrange(1024, 65536)]),
                     rnd.choice(["tcp", "udp"]), "conn", "", "", "log", "", "gw-1/w0", "not named", "", "", "",
                     rnd.choice(["in", "out"]), "", "", 1 + rnd.randrange(100), rnd.randrange(40, 150_000))
    return r._replace(**kw)  # type: ignore[arg-type]


# -- blocks -------------------------------------------------------------------------------------


@settings(max_examples=150)
@given(st.lists(records, min_size=1, max_size=30))
@example([rec(0)._replace(client_port=-1)])
@example([rec(0)._replace(name="a\tb", url="/x\\y")])
def test_a_block_rebuilds_its_lines_byte_for_byte(rs: list[AccessRecord]) -> None:
    lines = encode_batch(rs)
    blob = encode_block(lines)
    assert blob[:1] in (CODEC_COLUMNS, CODEC_ZLIB)
    assert decode_block(blob, 2) == lines


@settings(max_examples=100)
@given(st.lists(records, min_size=1, max_size=30), st.data())
def test_the_columnar_pre_filter_returns_exactly_the_matching_lines(rs: list[AccessRecord], data: st.DataObject) -> None:
    lines = encode_batch(rs)
    pick = data.draw(st.sampled_from(rs))
    s, p, n = FIELDS.index("server_ip"), FIELDS.index("server_port"), FIELDS.index("nat")
    fields = encode(pick)[:-1].split(b"\t")
    where = [{s: {fields[s]}, p: {fields[p]}}, {n: {b"203.0.113.9:22"}}]
    got = decode_block(encode_block(lines), 2, where)
    want = [ln for ln in lines if (ln.split(b"\t")[s] == fields[s] and ln.split(b"\t")[p] == fields[p])
            or ln.split(b"\t")[n] == b"203.0.113.9:22"]
    if encode_block(lines)[:1] == CODEC_COLUMNS:
        assert got == want
    else:  # a zlib block is returned whole: the query filters it exactly
        assert set(want) <= set(got)


def test_connection_records_are_stored_columnar() -> None:
    rnd = random.Random(1)
    lines = encode_batch([conn(i, rnd) for i in range(1024)])
    blob = encode_block(lines)
    assert blob[:1] == CODEC_COLUMNS
    assert decode_block(blob, 2) == lines


@pytest.mark.parametrize("cut", [1, 2, 10, 100, -1])
def test_a_damaged_columnar_block_raises_value_error(cut: int) -> None:
    rnd = random.Random(2)
    blob = encode_block(encode_batch([conn(i, rnd) for i in range(200)]))
    with pytest.raises((ValueError, zlib.error)):
        decode_block(blob[:cut] if cut > 0 else blob[:-5] + b"\0\0\0\0\0", 2)
    with pytest.raises(ValueError):
        decode_block(b"Q" + blob[1:], 2)


@given(st.text(max_size=40))
def test_split_endpoint_never_raises(s: str) -> None:
    ep = split_endpoint(s)
    assert ep is None or (isinstance(ep[1], int) and ep[0])


def test_split_endpoint_takes_ascii_digits_only() -> None:
    """Found by the property above: "²".isdigit() is True and int("²") raises."""
    assert split_endpoint("0:\u00b2") is None
    assert split_endpoint("[2001:db8::1]:\u0663") is None


def test_split_endpoint_reads_both_families() -> None:
    assert split_endpoint("203.0.113.9:22") == ("203.0.113.9", 22)
    assert split_endpoint("[2001:db8::1]:443") == ("2001:db8::1", 443)
    assert split_endpoint("2001:db8::1:443") is None
    assert split_endpoint("203.0.113.9") is None


# -- the store ----------------------------------------------------------------------------------


def write_days(d: Path, per_day: int, days: int = 2, seed: int = 3, block_records: int = 1024) -> list[AccessRecord]:
    rnd = random.Random(seed)
    out = []
    with AccessLog(LogConfig(d, gateway="gw-1", block_records=block_records)) as log:
        for day in range(days):
            for i in range(per_day):
                r = conn(i, rnd, day)
                out.append(r)
                log.append(r)
            log.flush()
    return out


def test_connection_records_seal_under_40_bytes_each_and_verify(tmp_path: Path) -> None:
    recs = write_days(tmp_path, 20_000)
    sealed = [p for p in partition_paths(tmp_path) if p.suffix == ".sealed"]
    assert len(sealed) == 1
    meta = read_sealed_meta(sealed[0])
    assert meta["format"] == 2 and meta["count"] == 20_000
    per_record = sealed[0].stat().st_size / meta["count"]
    assert per_record <= 40, per_record
    assert verify(tmp_path).ok
    assert list(query(tmp_path, Query())) == recs


def test_a_query_by_server_and_port_reads_only_the_blocks_holding_it(tmp_path: Path) -> None:
    recs = write_days(tmp_path, 5000, block_records=256)
    target = next(r for r in recs if r.server_port not in (22, 443, 80, 3000))
    net = Query(server=__import__("ipaddress").ip_network(target.server_ip), port=target.server_port)
    st = QueryStats()
    got = list(query(tmp_path, net, st))
    assert got == [r for r in recs if r.server_ip == target.server_ip and r.server_port == target.server_port]
    assert st.blocks_read < st.blocks_total / 4


def test_a_nat_endpoint_is_indexed_and_found_as_the_server(tmp_path: Path) -> None:
    import ipaddress

    rnd = random.Random(4)
    recs = [conn(i, rnd) for i in range(3000)]
    recs[1234] = recs[1234]._replace(nat="203.0.113.9:10022", server_ip="10.0.0.7", server_port=22)
    with AccessLog(LogConfig(tmp_path, block_records=128)) as log:
        log.extend(recs)
        log.append(conn(0, rnd, day=1))
        log.flush()
    st = QueryStats()
    got = list(query(tmp_path, Query(server=ipaddress.ip_network("203.0.113.9"), port=10022), st))
    assert got == [recs[1234]]
    assert st.blocks_read == 1


def test_outbound_flows_stay_out_of_the_audit_summary(tmp_path: Path) -> None:
    rnd = random.Random(5)
    with AccessLog(LogConfig(tmp_path)) as log:
        log.append(conn(0, rnd, direction="out", server_ip="192.0.2.77"))
        log.append(conn(1, rnd, direction="in", server_ip="198.51.100.77"))
        log.append(conn(0, rnd, day=1, direction="out", server_ip="192.0.2.78"))
        log.flush()
    servers = {k[1] for k in summaries(tmp_path)}
    assert "198.51.100.77" in servers and not {"192.0.2.77", "192.0.2.78"} & servers


# -- partitions sealed before issue 19 -----------------------------------------------------------


def test_a_partition_sealed_in_format_1_still_reads_and_verifies(tmp_path: Path) -> None:
    """tests/golden/accesslog-v1 was written and sealed by the code of a4a12d8 (before format 2)."""
    d = tmp_path / "log"
    shutil.copytree(GOLDEN_V1, d)
    sealed = [p for p in partition_paths(d) if p.suffix == ".sealed"]
    assert sealed and "format" not in read_sealed_meta(sealed[0])
    rep = verify(d)
    assert rep.ok, rep.all_problems()
    got = list(query(d, Query()))
    assert len(got) == 45
    assert got[3].name == "tab\there.example.cn" and got[3].reason == "back\\slash"
    import ipaddress

    st = QueryStats()
    hits = list(query(d, Query(server=ipaddress.ip_network("198.51.100.2"), port=443), st))
    assert hits and all(r.server_ip == "198.51.100.2" for r in hits)
    assert stats(d).records == 45
    # A writer of today continues the chain after it and seals in format 2.
    with AccessLog(LogConfig(d, gateway="gw-2")) as log:
        log.append(rec(0, day=2))
        log.flush()
    formats = [read_sealed_meta(p).get("format", 1) for p in partition_paths(d) if p.suffix == ".sealed"]
    assert formats == [1, 2]
    assert verify(d).ok
    assert len(list(query(d, Query()))) == 46


def test_a_clustered_partition_with_escaped_fields_verifies_and_answers_anchors_inside_it(tmp_path: Path) -> None:
    from beiand.accesslog.reader import Anchor, heads_at

    rnd = random.Random(6)
    recs = [conn(i, rnd) for i in range(700)]
    recs[10] = recs[10]._replace(name="tab\there.example.cn", url="/a\\b\nc")
    recs[11] = recs[11]._replace(client_ip="01.2.3.4")  # not canonical: kept as text
    with AccessLog(LogConfig(tmp_path, block_records=64)) as log:
        for r in recs:
            log.append(r)
        log.flush()
        log.append(conn(0, rnd, day=1))
        log.flush()
    sealed = next(p for p in partition_paths(tmp_path) if p.suffix == ".sealed")
    meta = read_sealed_meta(sealed)
    assert meta["format"] == 2 and len(meta["segments"]) == 11
    assert verify(tmp_path).ok
    assert list(query(tmp_path, Query(until_ms=DAY0 + DAY_MS))) == recs
    # The chain head after any count is recomputed in log order, as the open partition had it.
    from beiand.accesslog.format import GENESIS, chain

    lines = encode_batch(recs)
    want = {c: chain(GENESIS, lines[:c]).hex() for c in (0, 1, 63, 64, 65, 400, 700)}
    assert heads_at(sealed, set(want), None) == want
    anchors = [Anchor(f"{sealed.parent.name}/w0", c, h) for c, h in want.items()]
    assert verify(tmp_path, anchors=anchors).ok
    bad = [Anchor(f"{sealed.parent.name}/w0", 65, want[64])]
    assert not verify(tmp_path, anchors=bad).ok
