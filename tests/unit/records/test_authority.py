"""The authority's lists of unfiled sites as read from the 通管局's file: CSV in GB18030 or UTF-8 with
Chinese or English headers, XLSX; each bad row named by file:line, field and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from beiand.records.authority import read_list, site_target
from beiand.records.formats.base import ImportRefused

ZH = "清单编号,网站域名,IP地址,下发日期,处理期限\n"


def test_gb18030_with_chinese_headers(tmp_path: Path) -> None:
    p = tmp_path / "list.csv"
    p.write_bytes((ZH + "工信部〔2026〕12号,商城.示例.中国,,2026年12月1日,2026/12/10\n"
                   "工信部〔2026〕12号,,198.51.100.9,2026-12-01,\n").encode("gb18030"))
    f = read_list(p)
    assert f.encoding == "gb18030" and not f.issues and f.rows == 2
    a, b = f.entries
    assert a.target == "xn--czru2d.xn--fsq092h.xn--fiqs8s" and a.list_ref == "工信部〔2026〕12号"
    assert (a.listed, a.deadline, a.source) == ("2026-12-01", "2026-12-10", f"{p}:2")
    assert b.target == "198.51.100.9" and b.is_address and b.deadline == ""
    assert f.lists == ["工信部〔2026〕12号"] and len(f.sha256) == 64


def test_english_headers_urls_wildcards_and_the_address_the_authority_saw(tmp_path: Path) -> None:
    p = tmp_path / "list.csv"
    p.write_text("list,domain,address,date,deadline\nL1,https://WWW.Shop.Example.com:8443/index.html,198.51.100.9,2026-12-01,"
                 "2026-12-10\nL1,*.games.example.net,,2026-12-01,2026-12-10\n", encoding="utf-8-sig")
    a, b = read_list(p).entries
    assert a.target == "www.shop.example.com" and a.address == "198.51.100.9"
    assert b.target == "games.example.net"


@pytest.mark.parametrize(("row", "field", "why"), [
    ("L1,not a name!,,2026-12-01,", "name (域名)", "expected a domain name (example.com) or an IP address"),
    ("L1,com.cn,,2026-12-01,", "name (域名)", "public suffix"),
    ("L1,,,2026-12-01,", "name (域名)", "empty: every row names a site"),
    ("L1,a.example.com,999.1.1.1,2026-12-01,", "address (IP地址)", "not an IP address"),
    ("L1,a.example.com,,someday,", "date (下发日期)", "expected YYYY-MM-DD"),
    ("L1,a.example.com,,,", "date (下发日期)", "empty"),
    ("L1,a.example.com,,2026-12-01,2026-02-30", "deadline (处理期限)", "does not exist"),
    ("L1,a.example.com,,2026-12-01,2026-11-01", "deadline (处理期限)", "before the date listed"),
    (",a.example.com,,2026-12-01,", "list (清单编号)", "no --list given"),
    ("L1,a.example.com,,2026-12-01,,extra", "row", "the header has 5"),
])
def test_a_bad_row_is_named_and_the_rest_read(tmp_path: Path, row: str, field: str, why: str) -> None:
    p = tmp_path / "list.csv"
    p.write_text("list,domain,ip,date,deadline\nL1,good.example.com,,2026-12-01,\n" + row + "\nL1,also.example.com,,2026-12-01,\n",
                 encoding="utf-8")
    f = read_list(p)
    assert [e.target for e in f.entries] == ["good.example.com", "also.example.com"]
    (issue,) = f.issues
    assert (issue.file, issue.line, issue.field) == (str(p), 3, field) and why in issue.reason
    assert str(issue).startswith(f"{p}:3: {field}: ")
    assert f.rejected[0][0] is issue and f.rejected[0][1] == ("" if row.startswith(",") or field == "row" else "L1")


def test_the_default_list_and_a_repeat(tmp_path: Path) -> None:
    p = tmp_path / "list.csv"
    p.write_text("域名,下发日期\na.example.com,2026-12-01\nA.example.com.,2026-12-01\n", encoding="utf-8")
    f = read_list(p, default_list="TG-9")
    assert [(e.target, e.list_ref) for e in f.entries] == [("a.example.com", "TG-9")]
    assert "listed already" in f.issues[0].reason and not f.rejected


def test_xlsx(tmp_path: Path) -> None:
    import datetime as dt

    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(["清单编号", "域名", "下发日期", "处理期限"])
    ws.append(["L2", "x.example.com", dt.date(2026, 12, 1), dt.date(2026, 12, 10)])
    ws.append(["L2", "bad name", dt.date(2026, 12, 1), None])
    p = tmp_path / "list.xlsx"
    wb.save(p)
    f = read_list(p)
    assert [(e.target, e.listed, e.deadline, e.source) for e in f.entries] == [("x.example.com", "2026-12-01", "2026-12-10",
                                                                                 f"{p}:row 2")]
    assert str(f.issues[0]).startswith(f"{p}:row 3: name (域名): ")


def test_a_file_that_cannot_be_a_list_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "list.csv"
    p.write_text("备案号,主办单位\nx,y\n", encoding="utf-8")
    with pytest.raises(ImportRefused, match=r"list\.csv:1: header: no column naming the site"):
        read_list(p)
    with pytest.raises(ImportRefused, match="CSV or XLSX"):
        read_list(tmp_path / "list.json")
    with pytest.raises(ImportRefused, match="cannot read"):
        read_list(tmp_path / "missing.csv")


def test_site_target() -> None:
    assert site_target(" [2001:DB8::1] ") == ("2001:db8::1", "address")
    assert site_target("http://198.51.100.9/") == ("198.51.100.9", "address")
    with pytest.raises(ValueError, match="no host"):
        site_target("http:///x")


@given(st.text(max_size=60))
@example("http://[::1")
@example("*.")
@example("１２３.example.com")
def test_site_target_names_or_refuses_and_is_idempotent(text: str) -> None:
    try:
        target, kind = site_target(text)
    except ValueError:
        return
    assert site_target(target) == (target, kind)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_give_entries_and_named_rows_or_one_refusal(data: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "list.csv"
        p.write_bytes("清单编号,域名,下发日期\n".encode("gb18030") + data)
        try:
            f = read_list(p)
        except ImportRefused:
            return
        assert all(i.line >= 2 and i.field for i in f.issues)
        assert f.rows >= len(f.entries) + len(f.rejected)
