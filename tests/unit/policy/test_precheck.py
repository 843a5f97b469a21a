"""接入前核验 (501号 art. 11(三)1): each condition on its own, named with its article."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from beiand.policy.inventory import Inventory
from beiand.policy.precheck import AccessChecker, BatchError, CheckError, parse_request, read_batch
from beiand.policy.verdict import Policy, PolicyConfig
from beiand.records import build_index, load_files

US = "示例云计算有限公司"
HEADER = "备案号,主办单位,服务类型,网站名称,域名,IP,接入商,状态,审核时间\n"
ROWS = [
    f"京ICP备12345678号-1,北京示例科技有限公司,网站,示例官网,example.com.cn;例子.中国,198.51.100.7;203.0.113.0/28,{US},正常,2024-03-01",
    "京ICP备12345678号-2,北京示例科技有限公司,网站,别处,elsewhere.cn,198.51.100.8,某某数据有限公司,正常,2024-03-01",
    f"浙ICP备87654321号-1,杭州注销有限公司,网站,旧站,old.example.org,198.51.100.9,{US},已注销,2020-01-01",
    f"沪ICP备2023000001号-1,上海待审有限公司,网站,待审,pending.cn,198.51.100.10,{US},接入审核中,2026-12-01",
]
NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=8))).timestamp()


@pytest.fixture()
def checker(tmp_path: Path) -> AccessChecker:
    p = tmp_path / "records.csv"
    p.write_text(HEADER + "\n".join(ROWS) + "\n", encoding="utf-8")
    index = build_index(load_files([str(p)]))
    return AccessChecker(Policy(index, Inventory([]), PolicyConfig(provider=US)))


def _check(checker: AccessChecker, filing: str, ips: list[str], names: list[str], ts: float = NOW) -> tuple[bool, list[str]]:
    r = checker.check(parse_request(filing, ips, names), ts)
    return r.may_open, [c.condition for c in r.failed]


def test_a_filing_in_force_with_this_provider_addresses_and_names_may_open(checker: AccessChecker) -> None:
    r = checker.check(parse_request("京ICP备12345678号-1", ["198.51.100.7", "203.0.113.5"], ["www.example.com.cn", "例子.中国"]), NOW)
    assert r.may_open and not r.failed
    assert {c.condition for c in r.conditions} == {"filing-found", "filing-in-force", "provider-named", "ips-listed",
                                                   "names-listed"}
    assert all(c.article.startswith("501号 art. 11(三)1") for c in r.conditions)


@pytest.mark.parametrize(("filing", "ips", "names", "failed", "article"), [
    ("京ICP备99999999号-1", ["198.51.100.7"], ["example.com.cn"], "filing-found", "501号 art. 11(三)1"),
    ("浙ICP备87654321号-1", ["198.51.100.9"], ["old.example.org"], "filing-in-force", "Order 33 art. 18"),
    ("京ICP备12345678号-2", ["198.51.100.8"], ["elsewhere.cn"], "provider-named", "Order 33 art. 19 ¶1"),
    ("京ICP备12345678号-1", ["198.51.100.99"], ["example.com.cn"], "ips-listed", "501号 art. 7(3)"),
    ("京ICP备12345678号-1", ["198.51.100.7"], ["example.net"], "names-listed", "Order 33 art. 5 ¶2"),
])
def test_each_failing_condition_on_its_own_is_named_with_its_article(checker: AccessChecker, filing: str, ips: list[str],
                                                                     names: list[str], failed: str, article: str) -> None:
    r = checker.check(parse_request(filing, ips, names), NOW)
    assert not r.may_open
    assert [c.condition for c in r.failed] == [failed]
    assert article in r.failed[0].article


def test_access_pending_is_in_force_within_its_grace_only(checker: AccessChecker) -> None:
    assert _check(checker, "沪ICP备2023000001号-1", ["198.51.100.10"], ["pending.cn"]) == (True, [])
    later = NOW + 40 * 86400
    assert _check(checker, "沪ICP备2023000001号-1", ["198.51.100.10"], ["pending.cn"], later) == (False, ["filing-in-force"])


def test_a_name_below_a_listed_domain_is_covered_and_a_parent_is_not(checker: AccessChecker) -> None:
    assert _check(checker, "京ICP备12345678号-1", [], ["a.b.example.com.cn"])[0]
    assert _check(checker, "京ICP备12345678号-1", [], ["com.cn.example"]) == (False, ["names-listed"])


@pytest.mark.parametrize(("filing", "ips", "names", "why"), [
    ("粤ICP备1234号-1", [], ["a.cn"], "4 digits"),
    ("粤公网安备44030502008569号", [], ["a.cn"], "public-security"),
    ("京ICP备12345678号", [], ["a.cn"], "sponsor number"),
    ("京ICP备12345678号-1", ["999.1.1.1"], [], "not an IP address"),
    ("京ICP备12345678号-1", [], ["a..b"], "name"),
    ("京ICP备12345678号-1", [], [], "nothing to check"),
])
def test_a_malformed_request_is_an_error_naming_the_field(filing: str, ips: list[str], names: list[str], why: str) -> None:
    with pytest.raises(CheckError, match=why):
        parse_request(filing, ips, names)


def test_without_a_provider_name_nothing_can_be_checked(tmp_path: Path) -> None:
    p = tmp_path / "r.csv"
    p.write_text(HEADER + ROWS[0] + "\n", encoding="utf-8")
    with pytest.raises(CheckError, match=r"records\.provider"):
        AccessChecker(Policy(build_index(load_files([str(p)])), Inventory([])))


def test_a_batch_gives_each_row_its_line_and_names_bad_rows(tmp_path: Path) -> None:
    b = tmp_path / "batch.csv"
    b.write_text("备案号,IP,域名\n京ICP备12345678号-1,198.51.100.7;203.0.113.1,example.com.cn www.example.com.cn\n"
                 "not-a-number,1.2.3.4,a.cn\n\n京ICP备12345678号-2,198.51.100.8,elsewhere.cn\n", encoding="utf-8")
    rows = read_batch(str(b))
    assert [w for w, _ in rows] == [f"{b}:2", f"{b}:3", f"{b}:5"]
    first, bad, third = (r for _, r in rows)
    assert not isinstance(first, CheckError) and first.ips == ("198.51.100.7", "203.0.113.1") and len(first.names) == 2
    assert isinstance(bad, CheckError) and "filing (备案号)" in str(bad)
    assert not isinstance(third, CheckError)
    j = tmp_path / "batch.json"
    j.write_text('[{"filing": "京ICP备12345678号-1", "ips": ["198.51.100.7"], "names": ["example.com.cn"]}, {"ips": []}]',
                 encoding="utf-8")
    rows = read_batch(str(j))
    assert rows[0][0] == f"{j}: item 1" and isinstance(rows[1][1], CheckError) and "missing" in str(rows[1][1])
    jl = tmp_path / "batch.jsonl"
    jl.write_text('{"filing": "京ICP备12345678号-1", "ip": "198.51.100.7"}\nnot json\n', encoding="utf-8")
    rows = read_batch(str(jl))
    assert rows[1][0] == f"{jl}:2" and isinstance(rows[1][1], CheckError)


@pytest.mark.parametrize(("name", "text", "why"), [
    ("missing.csv", None, "cannot read"),
    ("nohead.csv", "a,b,c\n1,2,3\n", "header"),
    ("bad.json", "[not json", "not JSON"),
    ("empty.csv", "备案号,IP,域名\n", "no check"),
])
def test_an_unreadable_batch_is_refused_whole(tmp_path: Path, name: str, text: str | None, why: str) -> None:
    p = tmp_path / name
    if text is not None:
        p.write_text(text, encoding="utf-8")
    with pytest.raises(BatchError, match=why):
        read_batch(str(p))
