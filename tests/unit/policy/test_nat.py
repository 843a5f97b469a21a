"""The NAT / elastic-IP mapping feed (MPS Order 82 art. 8): parsing, errors, lookups both ways."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beiand.policy.nat import NatError, load_nat

T0 = 1_795_000_000_000


def write(tmp_path: Path, text: str, name: str = "nat.csv") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


FEED = """public,internal,account,valid_from,valid_to
203.0.113.5:10000-10999,10.0.0.7:22,cust-a,2026-11-01T00:00Z,2026-12-01T00:00Z
203.0.113.6,10.0.0.8,cust-b,,
[2001:db8::5]:443,10.0.0.9,cust-c,,
"""


def test_a_feed_maps_both_ways_and_only_while_valid(tmp_path: Path) -> None:
    nat = load_nat(write(tmp_path, FEED))
    assert len(nat) == 3
    t = 1_796_000_000_000  # 2026-11-30
    assert nat.other_side("10.0.0.7", 22, t) == "203.0.113.5:10000"
    assert nat.other_side("10.0.0.7", 25, t) == "203.0.113.5:10003"
    assert nat.other_side("203.0.113.5", 10003, t) == "10.0.0.7:25"
    assert nat.other_side("203.0.113.5", 9999, t) == ""
    assert nat.other_side("10.0.0.7", 22, t + 86_400_000 * 5) == ""  # after valid_to
    assert nat.other_side("10.0.0.8", 3000, t) == "203.0.113.6:3000"  # every port, kept
    assert nat.other_side("10.0.0.9", 443, t) == "[2001:db8::5]:443"
    # A flow out of hosted space through source NAT: the client side maps.
    assert nat.record_nat("10.0.0.8", 40000, "192.0.2.1", 443, t) == "203.0.113.6:40000"
    assert nat.record_nat("192.0.2.1", 40000, "10.0.0.8", 22, t) == "203.0.113.6:22"


def test_other_sides_for_a_query(tmp_path: Path) -> None:
    nat = load_nat(write(tmp_path, FEED))
    t = 1_796_000_000_000
    assert list(nat.other_sides("203.0.113.5", 10000, t, t + 1)) == [(ipaddress.ip_network("10.0.0.7"), 22)]
    assert list(nat.other_sides("10.0.0.7", None, t, t + 1)) == [(ipaddress.ip_network("203.0.113.5"), None)]
    assert list(nat.other_sides("10.0.0.7", 22, 0, 1)) == []  # not valid then


def test_json_feed(tmp_path: Path) -> None:
    doc = {"mappings": [{"public": "203.0.113.5:22", "internal": "10.0.0.7", "account": "a", "valid_from": None}]}
    nat = load_nat(write(tmp_path, json.dumps(doc), "nat.json"))
    assert nat.other_side("10.0.0.7", 22, T0) == "203.0.113.5:22"


def test_chinese_headers(tmp_path: Path) -> None:
    nat = load_nat(write(tmp_path, "公网地址,内网地址,用户账号,生效时间,失效时间\n203.0.113.5:22,10.0.0.7,客户甲,,\n"))
    assert nat.at("10.0.0.7", T0)[0].account == "客户甲"


@pytest.mark.parametrize(("row", "field", "why"), [
    ("203.0.113.500,10.0.0.7,a,,", "public", "is not an address"),
    ("203.0.113.5:70000,10.0.0.7,a,,", "public", "not 0-65535"),
    ("203.0.113.5:\u00b2,10.0.0.7,a,,", "public", "not 0-65535"),  # "²".isdigit() is True, int("²") raises
    ("203.0.113.5:20-10,10.0.0.7,a,,", "public", "runs backwards"),
    ("203.0.113.5:22,10.0.0.x,a,,", "internal", "is not an address"),
    ("203.0.113.5,10.0.0.7:22,a,,", "internal", "needs a public port"),
    ("203.0.113.5:22,10.0.0.7,,,", "account", "empty"),
    ("203.0.113.5:22,10.0.0.7,a,yesterday,", "valid_from", "not an ISO time"),
    ("203.0.113.5:22,10.0.0.7,a,2026-12-01,2026-11-01", "valid_to", "not after valid_from"),
    ("203.0.113.5:22,10.0.0.7,a,,,extra", "row", "fields"),
])
def test_each_problem_names_file_line_and_field(tmp_path: Path, row: str, field: str, why: str) -> None:
    p = write(tmp_path, "public,internal,account,valid_from,valid_to\n# comment\n" + row + "\n")
    with pytest.raises(NatError) as ei:
        load_nat(p)
    assert ei.value.problems[0].startswith(f"{p}:3: {field}")
    assert why in ei.value.problems[0]


def test_overlapping_mappings_are_refused(tmp_path: Path) -> None:
    p = write(tmp_path, "public,internal,account\n203.0.113.5:10-20,10.0.0.7,a\n203.0.113.5:15,10.0.0.8,b\n")
    with pytest.raises(NatError, match=r"nat.csv:3: public .*overlaps the mapping at .*nat.csv:2"):
        load_nat(p)


def test_bad_header_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(NatError, match=":1: header"):
        load_nat(write(tmp_path, "a,b\n"))
    with pytest.raises(NatError, match="cannot read"):
        load_nat(tmp_path / "missing.csv")
    with pytest.raises(NatError, match=r"nat.json:mapping 1: bogus: unknown key"):
        load_nat(write(tmp_path, json.dumps([{"bogus": 1}]), "nat.json"))


@settings(max_examples=200)
@given(st.text(max_size=200))
def test_any_text_gives_a_table_or_a_nat_error(text: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        for name in ("f.csv", "f.json"):
            p = Path(d) / name
            p.write_text("public,internal,account,valid_from,valid_to\n" + text if name == "f.csv" else text, encoding="utf-8")
            try:
                load_nat(p)
            except NatError as exc:
                assert exc.problems
