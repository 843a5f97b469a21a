"""Filings as register rows (issue 35): a filing comes back as it was published (its file and line
are not its content), the summary names what changed, and the reload guard refuses an export that
loses too many filings before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from beiand.model import Filing, FilingStatus, ServiceType
from beiand.records import load_files
from beiand.records.formats.base import ImportRefused
from beiand.records.generate import GenConfig, write_csv
from beiand.records.versions import filing_of, filing_row, filings_of, lookup_keys, publish_filings
from beiand.store import register as reg
from beiand.store.sqlite import SqliteStore


@pytest.fixture
def export(tmp_path: Path) -> Path:
    p = tmp_path / "a.csv"
    write_csv(str(p), GenConfig(filings=400, range_share=0.3))
    return p


def test_a_filing_round_trips_without_its_line(export: Path) -> None:
    fs = load_files([export]).filings
    for f in fs:
        assert filing_of(filing_row(f).data, f.source) == f
    moved = fs[0]._replace(source="other.csv:99")
    assert filing_row(moved) == filing_row(fs[0])  # the same filing on another line: the same row


def test_a_row_is_the_same_text_and_keys_as_published_before() -> None:
    """A register keeps rows by the hash of their text: the text of a filing must never change
    between releases (a store written by one would see every filing "changed" by the next)."""
    f = Filing("京ICP备12345678号-1", "某某科技有限公司", ServiceType.WEBSITE, ("a.example.cn", "b.example.cn"),
               ("198.51.100.7", "198.51.100.0/28", "2001:db8::1-2001:db8::9"), "某接入商", FilingStatus.ACTIVE,
               "2024-01-02", "站点\u2028名", "京", "x.csv:7")
    row = filing_row(f)
    assert row.data == ('["京ICP备12345678号-1","某某科技有限公司","website",["a.example.cn","b.example.cn"],'
                        '["198.51.100.7","198.51.100.0/28","2001:db8::1-2001:db8::9"],"某接入商","active","2024-01-02",'
                        '"站点\u2028名","京"]')
    assert row.names == ("a.example.cn", "b.example.cn", "198.51.100.7", "~4", "~6")
    assert filing_of(row.data, "x.csv:7") == f


def test_many_rows_come_back_in_key_order(export: Path) -> None:
    fs = load_files([export]).filings
    rows = [(f.number, filing_row(f).data) for f in fs]
    many = [(f"{i:07d}", d) for i, (_, d) in enumerate(rows * 120)]  # past one parse chunk (20,000 rows)
    got = filings_of(reversed(many), "v")
    assert len(got) == len(many) and [g.source for g in got[:1]] == ["v"]
    assert [(f.number, f.service_type, f.status) for f in got] == [
        (f.number, f.service_type, f.status) for f in (fs * 120)]


def test_lookup_keys_cover_the_suffix_walk_and_ranges() -> None:
    assert lookup_keys("a.b.example.cn") == ["a.b.example.cn", "b.example.cn", "example.cn", "cn"]
    assert lookup_keys("", "198.51.100.7") == ["198.51.100.7", "~4"]
    assert lookup_keys("", "2001:db8::1") == ["2001:db8::1", "~6"]


def test_publish_summarises_and_guards(tmp_path: Path, export: Path) -> None:
    s = SqliteStore(tmp_path / "s.sqlite", "gw")
    s.migrate()
    fs = load_files([export]).filings
    v1 = publish_filings(s, fs, sources=[export], max_loss=0.2, actor="alice")
    assert v1.rows == len(fs) and v1.summary["added"] == len(fs) and v1.source == str(export) and len(v1.source_sha256) == 64
    changed = [fs[0]._replace(status=FilingStatus.CANCELLED), fs[1]._replace(domains=("renamed.example.cn",)),
               fs[2]._replace(ips=("203.0.113.9",)), *fs[3:-10]]
    v2 = publish_filings(s, changed, sources=[export], max_loss=0.2)
    assert {k: v2.summary[k] for k in ("removed", "status_changed", "names_changed", "addresses_changed")} == {
        "removed": 10, "status_changed": 1, "names_changed": 1, "addresses_changed": 1}
    with pytest.raises(ImportRefused, match="fewer than the"):
        publish_filings(s, fs[: len(fs) // 10], sources=[export], max_loss=0.2)
    assert reg.head(s) == 2
    _, rows = reg.fetch(s, "records", 1)
    assert filings_of(rows) == sorted((f._replace(source="") for f in fs), key=lambda f: f.number)
    # a name of version 1 only: found at version 1, not at version 2
    name = fs[1].domains[0]
    assert [k for k, _ in reg.rows_named(s, "records", lookup_keys(name), 1)] == [fs[1].number]
    assert fs[1].number not in [k for k, _ in reg.rows_named(s, "records", lookup_keys(name), 2)]


def test_a_row_holding_two_filings_is_refused(export: Path) -> None:
    """Rows are parsed many at a time: a row whose data is two arrays must not become two filings."""
    f = load_files([export]).filings[0]
    data = filing_row(f).data
    with pytest.raises(ValueError, match="2 filings in 1 rows"):
        filings_of([(f.number, f"{data},{data}")])
    with pytest.raises(ValueError):
        filings_of([(f.number, "{not json")])
