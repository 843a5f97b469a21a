"""``beiand records ip-report`` (IP地址备案, 501号 art. 19): from the inventory history, on an injected
clock (``--at``) and a holiday calendar; ``--mark-reported`` in the decision store; XLSX, CSV, JSON."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path

import pytest

from beiand.cli.main import main
from beiand.policy.history import record_load
from beiand.report import ipreport

BJ = dt.timezone(dt.timedelta(hours=8))
HEADER = "prefix,account,site,state,使用单位,使用方式\n"
A = "198.51.100.0/24,cust-1,bj,active,北京示例科技有限公司,IDC托管\n"
B = "203.0.113.0/28,cust-2,bj,pending,上海应用有限公司,IDC托管\n"


def ms(*args: int) -> int:
    return int(dt.datetime(*args, tzinfo=BJ).timestamp() * 1000)


@pytest.fixture()
def state(tmp_path: Path) -> Path:
    """A state directory whose history holds a block loaded in November and one added on Friday 4 December 18:00."""
    sd = tmp_path / "state"
    inv = tmp_path / "inventory.csv"
    inv.write_text(HEADER + A, encoding="utf-8")
    record_load(sd, inv, ms(2026, 11, 2, 9))
    inv.write_text(HEADER + A + B, encoding="utf-8")
    record_load(sd, inv, ms(2026, 12, 4, 18))
    (tmp_path / "holidays.csv").write_text("日期,类型,名称\n2026-12-08,休,a Tuesday off\n", encoding="utf-8")
    return sd


def run(state: Path, *args: str) -> int:
    return main(["records", "ip-report", "--state-dir", str(state), "--holidays", str(state.parent / "holidays.csv"), *args])


def test_an_allocation_added_on_a_friday_is_due_on_the_fifth_working_day(state: Path, capsys) -> None:
    assert run(state, "--at", "2026-11-03T10:00+08:00", "--mark-reported", "--by", "ops") == 0  # the November block filed
    capsys.readouterr()
    assert run(state, "--at", "2026-12-07T10:00+08:00", "--format", "json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(c["change"], c["prefix"], c["changed_at"], c["deadline"], c["overdue"]) for c in doc["changes"]] == [
        ("added", "203.0.113.0/28", "2026-12-04 18:00:00", "2026-12-14 23:59:59", False)]  # Tue 8th off: Mon 14th
    assert doc["last_report"]["by"] == "ops" and doc["article"].startswith("501号 art. 19")
    assert run(state, "--at", "2026-12-15T00:00+08:00") == 1  # past it, unreported: exit 1, named
    captured = capsys.readouterr()
    assert "203.0.113.0/28" in captured.out and "是 (yes)" in captured.out and "past their deadline" in captured.err


def test_mark_reported_clears_what_is_overdue(state: Path, capsys) -> None:
    assert run(state, "--at", "2026-12-20T10:00+08:00", "--format", "json") == 1
    assert json.loads(capsys.readouterr().out)["overdue"] == 2
    assert run(state, "--at", "2026-12-20T10:00+08:00", "--mark-reported", "--reason", "receipt 42", "--format", "json") == 0
    assert "marked as filed" in capsys.readouterr().err
    assert run(state, "--at", "2026-12-20T10:05+08:00", "--format", "json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["changes"] == [] and doc["overdue"] == 0 and doc["last_report"]["blocks"] == 2


def test_xlsx_has_chinese_headers_and_opens_with_openpyxl(state: Path, tmp_path: Path, capsys) -> None:
    from openpyxl import load_workbook

    out = tmp_path / "ip.xlsx"
    assert run(state, "--at", "2026-12-07T10:00+08:00", "--format", "xlsx", "--output", str(out)) == 1
    wb = load_workbook(out)
    ws = wb["IP地址备案"]
    rows = [[c for c in r] for r in ws.iter_rows(values_only=True)]
    assert tuple(rows[0]) == ipreport.REPORT_COLUMNS and rows[0][:4] == ["起始地址", "终止地址", "地址段", "使用单位"]
    assert rows[1][:4] == ["198.51.100.0", "198.51.100.255", "198.51.100.0/24", "北京示例科技有限公司"]
    assert rows[2][3] == "上海应用有限公司" and rows[2][9] == "新增 (added)"
    ch = [r for r in wb["变更"].iter_rows(values_only=True)]
    assert tuple(ch[0]) == ipreport.CHANGE_COLUMNS and len(ch) == 3
    assert run(state, "--format", "xlsx") == 2 and "--output" in capsys.readouterr().err


def test_csv_and_output_file(state: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ip.csv"
    assert run(state, "--at", "2026-12-07T10:00+08:00", "--format", "csv", "--output", str(out)) == 1
    rows = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert tuple(rows[0]) == ipreport.REPORT_COLUMNS and len(rows) == 3


def test_errors_exit_2(tmp_path: Path, state: Path, capsys) -> None:
    assert main(["records", "ip-report", "--state-dir", str(tmp_path / "none")]) == 2
    assert "no inventory history" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("日期,类型\n2026-13-01,休\n", encoding="utf-8")
    assert main(["records", "ip-report", "--state-dir", str(state), "--holidays", str(bad)]) == 2
    assert "--holidays" in capsys.readouterr().err


def test_a_formula_in_the_inventory_is_text_in_the_report(tmp_path: Path, capsys) -> None:
    """使用单位 and 使用方式 come from the operator's inventory (a customer's name): a value a
    spreadsheet would run (OWASP "CSV Injection") is an XLSX string cell and a CSV value behind an
    apostrophe."""
    sd, inv = tmp_path / "state", tmp_path / "inventory.csv"
    formula = '=HYPERLINK("http://evil.example/","x")'
    inv.write_text(HEADER + f'198.51.100.0/24,cust-1,bj,active,"{formula.replace(chr(34), chr(34) * 2)}",+cmd|x\n',
                   encoding="utf-8")
    record_load(sd, inv, ms(2026, 11, 2, 9))
    (tmp_path / "holidays.csv").write_text("日期,类型,名称\n", encoding="utf-8")
    xlsx = tmp_path / "ip.xlsx"
    assert run(sd, "--at", "2026-11-03T10:00+08:00", "--format", "xlsx", "--output", str(xlsx)) == 0
    from openpyxl import load_workbook

    wb = load_workbook(xlsx)
    cells = [c for ws in wb.worksheets for r in ws.iter_rows() for c in r]
    assert [(c.value, c.data_type) for c in cells if c.value == formula] == [(formula, "s")] * 2  # 地址 sheet and 变更
    assert all(c.data_type != "f" for c in cells)
    out = tmp_path / "ip.csv"
    assert run(sd, "--at", "2026-11-03T10:00+08:00", "--format", "csv", "--output", str(out)) == 0
    rows = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert rows[1][3] == "'" + formula and "'+cmd|x" in rows[1]
