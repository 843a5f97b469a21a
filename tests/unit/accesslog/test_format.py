"""The record line format and the sealed index: property-based and malformed-input tests."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beiand.accesslog.format import (
    GENESIS,
    FormatError,
    Index,
    build_index,
    chain,
    decode,
    encode,
    encode_batch,
    frame_bytes,
    iter_frames,
    name_keys,
    parse_header,
)
from beiand.model import AccessRecord

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
records = st.builds(AccessRecord, st.integers(0, 2**53), text, text, st.integers(0, 65535), text, st.integers(0, 65535),
                    text, text, text, text, text, text, text, text, text, text, text,
                    text, text, text, st.integers(0, 2**40), st.integers(0, 2**53))


@given(records)
def test_any_record_round_trips(r: AccessRecord) -> None:
    line = encode(r)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode(line) == r


@given(st.lists(records, max_size=20))
def test_batch_encoding_equals_one_by_one(rs: list[AccessRecord]) -> None:
    assert encode_batch(rs) == [encode(r) for r in rs]


def test_tabs_newlines_and_backslashes_are_escaped() -> None:
    r = AccessRecord(1, "a\tb", "c\nd", 1, "e\\f", 2, "tcp", "k", "n\r", "v", "a", "f")
    line = encode(r)
    assert line.count(b"\t") == len(AccessRecord._fields) - 2  # no register version: written without the field
    assert decode(line) == r
    v = r._replace(records_version="7\t")
    assert encode(v).count(b"\t") == len(AccessRecord._fields) - 1 and decode(encode(v)) == v


def test_a_record_without_a_register_version_is_the_line_written_before_issue_35() -> None:
    from beiand.accesslog.format import NFIELDS_V3

    r = AccessRecord(1, "acct", "10.0.0.1", 1, "198.51.100.1", 443, "udp", "quic-sni", "a.example.cn", "filed", "log", "f",
                     outcome="done")
    assert encode(r).count(b"\t") == NFIELDS_V3 - 1 and encode_batch([r, r]) == [encode(r)] * 2
    v = r._replace(records_version="3")
    assert encode(v) == encode(r)[:-1] + b"\t3\n" and encode_batch([v, r]) == [encode(v), encode(r)]
    assert decode(encode(v)) == v and decode(encode(r)) == r


@pytest.mark.parametrize("bad", [b"", b"1\t2\n", b"x" * 50, "\t".join(["notanint"] * 17).encode()])
def test_malformed_lines_raise_value_error(bad: bytes) -> None:
    with pytest.raises(ValueError):
        decode(bad)


def test_chain_depends_on_order_content_and_key() -> None:
    a, b = b"one\n", b"two\n"
    h = chain(GENESIS, [a, b])
    assert h != chain(GENESIS, [b, a])
    assert h != chain(GENESIS, [a])
    assert h != chain(GENESIS, [a, b], key=b"k")
    assert chain(chain(GENESIS, [a]), [b]) == h


@given(st.binary(max_size=300))
def test_frames_parser_never_raises_on_garbage(data: bytes) -> None:
    _, end, why = iter_frames(data, 0)
    assert end <= len(data)
    assert (end == len(data)) == (why == "")


def test_torn_and_corrupt_frames_stop_the_parse() -> None:
    f1 = frame_bytes(1, GENESIS, b"a\n")
    f2 = frame_bytes(2, GENESIS, b"b\nc\n")
    frames, end, why = iter_frames(f1 + f2[:-1], 0)
    assert len(frames) == 1 and end == len(f1) and "torn" in why
    bad = bytearray(f1 + f2)
    bad[-1] ^= 1
    frames, end, why = iter_frames(bytes(bad), 0)
    assert len(frames) == 1 and "checksum" in why


def test_header_errors_name_the_file() -> None:
    with pytest.raises(FormatError, match=r"x\.open"):
        parse_header(b"garbage\n", "x.open")
    with pytest.raises(FormatError, match="JSON"):
        parse_header(b"BEIANDLOG/1 {nope\n", "x.open")


def test_name_keys_cover_every_suffix() -> None:
    assert name_keys("a.b.example.cn") == ["a.b.example.cn", "b.example.cn", "example.cn", "cn"]
    assert name_keys("") == []


@given(st.dictionaries(st.text(min_size=1, max_size=10), st.sets(st.integers(0, 1000), min_size=1, max_size=5), max_size=50))
def test_index_finds_every_key(post: dict[str, set[int]]) -> None:
    idx = Index(build_index({"n": post, "c": {}, "s": {}, "a": {}}))
    for k, blocks in post.items():
        assert set(blocks) <= set(idx.blocks("n", k))
    assert idx.blocks("c", "anything") == []


@given(records)
def test_a_line_written_before_connection_records_reads_with_the_new_fields_at_their_defaults(r: AccessRecord) -> None:
    from beiand.accesslog.format import NFIELDS_V1

    line = encode(r)
    old = b"\t".join(line.rstrip(b"\n").split(b"\t")[:NFIELDS_V1]) + b"\n"
    got = decode(old)
    assert got[:NFIELDS_V1] == r[:NFIELDS_V1]
    assert got[NFIELDS_V1:] == ("", "", "", 0, 0, "", "")


@given(records)
def test_a_line_written_before_outcomes_reads_with_the_outcome_empty(r: AccessRecord) -> None:
    from beiand.accesslog.format import NFIELDS_V2

    line = encode(r)
    old = b"\t".join(line.rstrip(b"\n").split(b"\t")[:NFIELDS_V2]) + b"\n"
    got = decode(old)
    assert got[:NFIELDS_V2] == r[:NFIELDS_V2]
    assert got.outcome == ""


@pytest.mark.parametrize("n", [1, 16, 18, 21, 25])
def test_a_line_with_a_field_count_of_no_version_is_refused(n: int) -> None:
    with pytest.raises(ValueError, match="fields"):
        decode("\t".join(["1"] * n) + "\n")


@pytest.mark.parametrize("code", ["B", "H", "I", "Q"])
def test_index_bucket_planes_round_trip_at_every_width(code: str) -> None:
    """Wide postings (a 10M-record partition's) failed compiled: bytes vs bytearray (issue 19)."""
    from array import array

    from beiand.accesslog.format import _planes, _unplanes

    a = array(code, [0, 1, 255, 7, 200, 3])
    if a.itemsize > 1:
        a.extend([256, 65535, 1000])
    if a.itemsize > 2:
        a.extend([70_000, 2**31 + 5])
    assert _unplanes(code, _planes(a), len(a)) == a
    with pytest.raises(ValueError):
        _unplanes(code, _planes(a)[:-1], len(a))
