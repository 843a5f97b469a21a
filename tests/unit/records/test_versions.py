"""Filings as register rows (issue 35): a filing comes back as it was published (its file and line
are not its content), the summary names what changed, and the reload guard refuses an export that
loses too many filings before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from beiand.model import FilingStatus
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
