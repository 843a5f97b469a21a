"""``beiand cases`` on a real SQLite decision store (issue 31): open, notify with a deadline in
working days, extend, appeal, close, list, show, and the report to the 通管局 as XLSX/CSV/JSON."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from beiand.cli import main

KEY = "cust-7|unfiled|shop.example.com"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(argv))
    got = capsys.readouterr()
    return rc, got.out, got.err


def test_a_case_by_hand_from_opening_to_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    st = ["--state-dir", str(tmp_path / "state")]
    rc, o, _ = run(capsys, "cases", "open", "--account", "cust-7", "--finding", "unfiled", "--name", "shop.example.com",
                   "--name", "www.shop.example.com", "--reason", "上级下发", "--by", "alice", *st)
    assert rc == 0 and o.startswith(f"case {KEY} opened")
    rc, o, _ = run(capsys, "cases", "notify", KEY, "--reason", "mail to ops@cust-7", *st)
    assert rc == 0 and "整改期限" in o and "10 working days" in o
    # a step that does not follow is refused with the reason, and nothing is written
    rc, _, e = run(capsys, "cases", "appeal", KEY, "--reason", "x", "--upheld", *st)
    assert rc == 2 and "appeal-upheld: not from state notified (only from appealed)" in e and "nothing was written" in e
    rc, _, e = run(capsys, "cases", "extend", "nope|unfiled|x.example", "--until", "2099-01-01", "--reason", "r", *st)
    assert rc == 2 and "no such case" in e
    assert run(capsys, "cases", "appeal", KEY, "--reason", "we filed it last week", "--by", "cust-7", *st)[0] == 0
    rc, o, _ = run(capsys, "cases", "appeal", KEY, "--reason", "no filing found", "--rejected", "--until", "2099-01-01", *st)
    assert rc == 0 and "now notified" in o and "2099-01-01" in o
    assert run(capsys, "cases", "close", KEY, "--reason", "rectified", "--note", "京ICP备12345678号-1", *st)[0] == 0
    rc, o, _ = run(capsys, "cases", "show", KEY, "--json", *st)
    case = json.loads(o)
    assert case["state"] == "closed" and case["close_reason"] == "rectified"
    assert [s["event"] for s in case["steps"]] == ["open", "notify", "appeal", "appeal-rejected", "close"]
    assert case["steps"][0]["by"] == "alice" and case["steps"][2]["by"] == "cust-7"
    rc, o, e = run(capsys, "cases", "list", *st)
    assert rc == 0 and KEY in o and "closed 1" in e
    since = time.strftime("%Y-%m-%d", time.localtime(time.time() - 86400))
    rc, o, _ = run(capsys, "cases", "report", "--from", since, "--format", "json", *st)
    (row,) = json.loads(o)
    assert row["域名"] == "shop.example.com, www.shop.example.com" and row["处理结果"] == "已整改"
    assert row["问题类型"].startswith("未备案")
    xlsx = tmp_path / "report.xlsx"
    assert run(capsys, "cases", "report", "--from", since, "--format", "xlsx", "--output", str(xlsx), *st)[0] == 0
    from openpyxl import load_workbook

    ws = load_workbook(xlsx).active
    assert ws is not None
    rows = list(ws.iter_rows(values_only=True))
    assert rows[0] == ("域名", "主办单位/客户", "发现时间", "问题类型", "通知时间", "整改期限", "处理结果", "处理时间")
    assert rows[1][0] == "shop.example.com, www.shop.example.com" and rows[1][6] == "已整改"


def test_a_bad_holiday_calendar_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hol = tmp_path / "holidays.csv"
    hol.write_text("date,kind\n2026-02-30,休\n", encoding="utf-8")
    cfg = tmp_path / "beiand.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n[cases]\nholidays_file = "{hol}"\n', encoding="utf-8")
    rc, _, e = run(capsys, "check-config", str(cfg))
    assert rc == 2 and "cases.holidays_file" in e and "2026-02-30" in e


def test_audit_findings_open_cases_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from beiand.cli.cases import open_from_findings
    from beiand.report.audit.findings import Finding

    args = argparse.Namespace(config=None, state_dir=str(tmp_path / "state"), store=None, by="auditor")
    found = [Finding("homepage-no-number", "www.shop.example.com", "no 备案号 on the homepage", account="cust-7", server="198.51.100.5"),
             Finding("dns-moved-away", "gone.example.com", "resolves to 203.0.113.9", account="cust-7"),
             Finding("unfiled-served", "x.example.xyz", "served", account=""),  # not hosted here: no account
             Finding("filing-ip-not-hosted", "京ICP备1号-1", "…", account="cust-7"),  # not about a site: no case
             Finding("authority-listed-hosted", "Bad Name!", "", account="cust-7")]
    opened, left = open_from_findings(args, found)
    assert opened == ["cust-7|no-number|www.shop.example.com", "cust-7|resolves-away|gone.example.com"]
    assert any("x.example.xyz: no account" in w for w in left) and any("not a name" in w for w in left)
    opened, left = open_from_findings(args, found)  # again: the cases are open already
    assert opened == [] and any("case cust-7|no-number|www.shop.example.com is open" in w for w in left)
    rc, o, _ = run(capsys, "cases", "show", "cust-7|no-number|www.shop.example.com", "--json", "--state-dir", str(tmp_path / "state"))
    c = json.loads(o)
    assert rc == 0 and c["servers"] == ["198.51.100.5"] and c["steps"][0]["by"] == "auditor" and "homepage-no-number" in c["steps"][0]["why"]


def test_a_deadline_date_is_the_end_of_that_day_in_beijing() -> None:
    import datetime as dt

    from beiand.cli.cases import deadline_arg
    from beiand.cli.common import CliError
    from beiand.policy.workdays import BEIJING

    assert deadline_arg("2026-05-08", "--until") == dt.datetime(2026, 5, 9, tzinfo=BEIJING).timestamp() - 0.001
    assert deadline_arg("2026-05-08T12:00+08:00", "--until") == dt.datetime(2026, 5, 8, 12, tzinfo=BEIJING).timestamp()
    with pytest.raises(CliError, match="not a date"):
        deadline_arg("2026-02-30", "--until")


def test_the_report_writes_a_formula_as_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A cell a spreadsheet would run (an account named ``=HYPERLINK(…)``: OWASP "CSV Injection")
    is an XLSX string cell and a CSV value behind an apostrophe; "-" (nothing yet) stays "-"."""
    st = ["--state-dir", str(tmp_path / "state")]
    formula = '=HYPERLINK("http://evil.example/","x")'
    assert run(capsys, "cases", "open", "--account", formula, "--finding", "unfiled", "--name", "shop.example.com",
               "--reason", "r", "--by", "alice", *st)[0] == 0
    since = time.strftime("%Y-%m-%d", time.localtime(time.time() - 86400))
    xlsx = tmp_path / "report.xlsx"
    assert run(capsys, "cases", "report", "--from", since, "--format", "xlsx", "--output", str(xlsx), *st)[0] == 0
    from openpyxl import load_workbook

    ws = load_workbook(xlsx).active
    assert ws is not None
    cell = ws.cell(2, 2)
    assert (cell.value, cell.data_type) == (formula, "s")
    _, o, _ = run(capsys, "cases", "report", "--from", since, "--format", "csv", *st)
    import csv
    import io

    row = list(csv.reader(io.StringIO(o)))[1]
    assert row[1] == "'" + formula and row[4] == "-"
