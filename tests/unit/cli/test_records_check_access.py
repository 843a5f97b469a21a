"""``beiand records check-access`` (接入前核验, 501号 art. 11(三)1): exit 0 / 1 (conditions named) / 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from beiand.cli.main import main

US = "示例云计算有限公司"
RECORDS = ("备案号,主办单位,服务类型,网站名称,域名,IP,接入商,状态,审核时间\n"
           f"京ICP备12345678号-1,北京示例科技有限公司,网站,示例官网,example.com.cn,198.51.100.7,{US},正常,2024-03-01\n"
           "京ICP备12345678号-2,北京示例科技有限公司,网站,别处,elsewhere.cn,198.51.100.8,某某数据有限公司,正常,2024-03-01\n"
           f"浙ICP备87654321号-1,杭州注销有限公司,网站,旧站,old.example.org,198.51.100.9,{US},已注销,2020-01-01\n")


@pytest.fixture()
def base(tmp_path: Path) -> list[str]:
    p = tmp_path / "records.csv"
    p.write_text(RECORDS, encoding="utf-8")
    return ["records", "check-access", "--records", str(p), "--provider", US]


def test_a_filing_in_force_with_the_right_provider_addresses_and_names_may_open(base: list[str], capsys) -> None:
    assert main([*base, "--filing", "京ICP备12345678号-1", "--ip", "198.51.100.7", "--name", "www.example.com.cn"]) == 0
    assert "access may be opened (可以接入)" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "condition", "article"), [
    (["--filing", "京ICP备99999999号-1", "--ip", "198.51.100.7"], "filing-found", "501号 art. 11(三)1"),
    (["--filing", "浙ICP备87654321号-1", "--name", "old.example.org"], "filing-in-force", "Order 33 art. 18"),
    (["--filing", "京ICP备12345678号-2", "--ip", "198.51.100.8"], "provider-named", "Order 33 art. 19 ¶1"),
    (["--filing", "京ICP备12345678号-1", "--ip", "198.51.100.70"], "ips-listed", "501号 art. 7(3)"),
    (["--filing", "京ICP备12345678号-1", "--name", "example.org"], "names-listed", "Order 33 art. 5 ¶2"),
])
def test_each_failing_condition_alone_exits_1_named(base: list[str], capsys, args: list[str], condition: str,
                                                    article: str) -> None:
    assert main([*base, *args]) == 1
    text = capsys.readouterr().out
    assert "access may NOT be opened" in text
    failed = [line for line in text.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and failed[0].startswith(condition) and article in failed[0]
    assert main([*base, *args, "--json"]) == 1
    row = json.loads(capsys.readouterr().out)
    assert row["may_open"] is False and row["failed"] == [condition]


@pytest.mark.parametrize(("args", "why"), [
    (["--filing", "京ICP备123号-1", "--ip", "198.51.100.7"], "expected 8 or 10"),
    (["--filing", "粤公网安备44030502008569号", "--ip", "198.51.100.7"], "public-security"),
    (["--filing", "京ICP备12345678号-1", "--ip", "nope"], "not an IP address"),
    (["--batch", "/nonexistent.csv"], "cannot read"),
    ([], "--filing"),
])
def test_a_malformed_request_exits_2(base: list[str], capsys, args: list[str], why: str) -> None:
    assert main([*base, *args]) == 2
    assert why in capsys.readouterr().err


def test_no_provider_configured_exits_2(tmp_path: Path, capsys) -> None:
    p = tmp_path / "records.csv"
    p.write_text(RECORDS, encoding="utf-8")
    assert main(["records", "check-access", "--records", str(p), "--filing", "京ICP备12345678号-1", "--ip", "198.51.100.7"]) == 2
    assert "records.provider" in capsys.readouterr().err


def test_a_batch_checks_each_row_and_names_the_line_of_a_bad_one(base: list[str], tmp_path: Path, capsys) -> None:
    b = tmp_path / "batch.csv"
    b.write_text("filing,ip,name\n京ICP备12345678号-1,198.51.100.7,example.com.cn\n", encoding="utf-8")
    assert main([*base, "--batch", str(b)]) == 0
    b.write_text("filing,ip,name\n京ICP备12345678号-1,198.51.100.7,example.com.cn\n京ICP备12345678号-2,198.51.100.8,"
                 "elsewhere.cn\n", encoding="utf-8")
    assert main([*base, "--batch", str(b)]) == 1
    assert "provider-named" in capsys.readouterr().out
    b.write_text("filing,ip,name\n京ICP备12345678号-1,198.51.100.7,example.com.cn\nbad,1.2.3.4,a.cn\n", encoding="utf-8")
    assert main([*base, "--batch", str(b), "--json"]) == 2
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert rows[0]["may_open"] is True and rows[0]["line"] == f"{b}:2"
    assert rows[1]["line"] == f"{b}:3" and "filing (备案号)" in rows[1]["error"]
    assert "could not be made" in captured.err
    assert main([*base, "--batch", str(b), "--filing", "京ICP备12345678号-1"]) == 2
