"""``beiand records authority`` on a real SQLite decision store (issue 35): an authority list with a
hosted unfiled name, a name not hosted here, a filed name and a garbage row → a case and a block for
the first (asserted through the policy's decision: lookup, and the daemon's decider), "not hosted"
for the second, a conflict for the third, the fourth named; the 处理结果 report holds all four; the
list in GB18030 with Chinese headers; importing it again writes nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from beiand.accesslog import AccessLog, LogConfig
from beiand.cli import main
from beiand.model import AccessRecord, Action, Kind, Observation, Overlay, Transport

LIST = "工信部〔2026〕12号"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(argv))
    got = capsys.readouterr()
    return rc, got.out, got.err


@pytest.fixture
def site(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "records.csv").write_text("备案号,主办单位,服务类型,域名,IP,接入商,状态\n"
                                          "京ICP备12345678号-1,示例公司,网站,filed.example.com,198.51.100.7,示例云,正常\n",
                                          encoding="utf-8")
    (tmp_path / "inventory.csv").write_text("prefix,account,site,state,mode\n198.51.100.0/24,cust-7,bj1,active,enforce\n",
                                            encoding="utf-8")
    cfg = tmp_path / "beiand.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n[records]\nfiles = ["{tmp_path / "records.csv"}"]\n'
                   f'provider = "示例云"\n[inventory]\nfile = "{tmp_path / "inventory.csv"}"\n'
                   f'[accesslog]\ndirectory = "{tmp_path / "log"}"\n', encoding="utf-8")
    now = int(time.time() * 1000)
    with AccessLog(LogConfig(tmp_path / "log", gateway="gw-1")) as log:  # what this gateway served
        for i in range(3):
            log.append(AccessRecord(now - 3_600_000 + i, "cust-7", "203.0.113.5", 40000 + i, "198.51.100.9", 443, "tcp", "tls-sni",
                                    "www.shop.example.com", "unfiled", "block", ""))
        log.append(AccessRecord(now - 3_600_000, "cust-7", "203.0.113.5", 40010, "198.51.100.7", 443, "tcp", "tls-sni",
                                "filed.example.com", "filed", "log", "京ICP备12345678号-1"))
    text = ("清单编号,网站域名,IP地址,下发日期,处理期限\n"
            f"{LIST},shop.example.com,,2026-12-01,2026-12-10\n"
            f"{LIST},away.example.org,,2026-12-01,2026-12-10\n"
            f"{LIST},filed.example.com,,2026-12-01,2026-12-10\n"
            f"{LIST},不是 域名!,,2026-12-01,2026-12-10\n")
    (tmp_path / "list.csv").write_bytes(text.encode("gb18030"))
    return {"config": str(cfg), "list": str(tmp_path / "list.csv"), "state": str(tmp_path / "state")}


def test_an_authority_list_from_import_to_the_report(site: dict[str, str], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    rc, o, e = run(capsys, "records", "authority", "import", site["list"], "--config", site["config"], "--by", "alice")
    assert rc == 1  # a row was rejected: named, the rest imported
    assert f"rejected: {site['list']}:5: name (域名): " in e and "expected a domain name" in e
    assert "1 blocked, 0 flagged, 1 conflict(s) for a person, 1 not hosted here" in o

    # the first: a sponsor case for the account that serves it ...
    rc, o, _ = run(capsys, "cases", "list", "--json", "--config", site["config"])
    (case,) = [json.loads(x) for x in o.splitlines()]
    assert case["key"] == "cust-7|authority|shop.example.com" and case["state"] == "open" and case["hits"] == 3
    assert case["steps"][0]["by"] == "alice" and LIST in case["steps"][0]["why"]
    # ... and a block, the list deciding: the lookup the CLI and the API answer ...
    rc, o, _ = run(capsys, "records", "lookup", "www.shop.example.com", "filed.example.com", "--server", "198.51.100.9",
                   "--config", site["config"], "--json")
    shop, filed_elsewhere = (json.loads(x) for x in o.splitlines())
    assert (shop["action"], shop["by"], shop["rule"], shop["order"]) == ("block", "authority", f"authority:{LIST}",
                                                                        f"authority:{LIST}")
    # ... and the decider the daemon's workers build from their snapshot (what replay uses too)
    from prometheus_client import CollectorRegistry

    from beiand.policy import Policy
    from beiand.runtime.decisions import Follower
    from beiand.runtime.settings import load_config
    from beiand.runtime.wiring import decider, load_state

    cfg = load_config(site["config"])
    reg = CollectorRegistry()
    f = Follower(cfg, reg)
    f.first_sync()  # the supervisor writes the snapshot the workers read
    assert reg.get_sample_value("beiand_authority_conflicts") == 1 and f.status()["authority_entries"] == 3
    f.stop()
    state = load_state(site["config"])
    live = decider(cfg, Policy(state.index, state.inventory, state.policy.config), live=True)
    d = live.decide(Observation(time.time(), "203.0.113.5", 40100, "198.51.100.9", 443, Transport.TCP, Kind.TLS_SNI,
                                "www.shop.example.com", "www.shop.example.com"))
    assert (d.action, d.by, d.ref, d.rule) == (Action.BLOCK, Overlay.AUTHORITY, LIST, f"authority:{LIST}")
    # the filed name at the address its filing lists: never blocked by the list (the conflict is for a person)
    d = live.decide(Observation(time.time(), "203.0.113.5", 40101, "198.51.100.7", 443, Transport.TCP, Kind.TLS_SNI,
                                "filed.example.com", "filed.example.com"))
    assert (d.action, d.by) == (Action.LOG, "")
    # on an address its filing does not list, the filing is still ours (drift, flagged by the records):
    # never blocked by the list (issue 35)
    assert (filed_elsewhere["reason"], filed_elsewhere["action"], filed_elsewhere["by"]) == ("ip-not-listed", "flag", None)

    # the 处理结果 report holds all four
    xlsx = tmp_path / "result.xlsx"
    assert run(capsys, "records", "authority", "report", LIST, "--format", "xlsx", "--output", str(xlsx),
               "--config", site["config"])[0] == 0
    from openpyxl import load_workbook

    ws = load_workbook(xlsx).active
    assert ws is not None
    rows = list(ws.iter_rows(values_only=True))
    assert rows[0] == ("清单编号", "网站域名/IP", "下发日期", "处理期限", "是否本单位接入", "用户账号", "接入地址", "备案核验", "处理结果",
                       "处理时间", "工单编号", "证据查询")
    by_site = {r[1]: r for r in rows[1:]}
    assert len(rows) == 5 and set(by_site) == {"shop.example.com", "away.example.org", "filed.example.com", "不是 域名!"}
    shop_row = by_site["shop.example.com"]
    assert shop_row[4] == "是" and shop_row[5] == "cust-7" and shop_row[6] == "198.51.100.9"
    assert shop_row[8].startswith("已阻断接入并立案督促整改") and shop_row[10] == "cust-7|authority|shop.example.com"
    assert shop_row[11].startswith("beiand logs query --suffix shop.example.com --since ")
    assert by_site["away.example.org"][4] == "否" and by_site["away.example.org"][8].startswith("非本单位接入")
    assert by_site["filed.example.com"][8].startswith("备案记录显示已备案") and "京ICP备12345678号-1" in by_site["filed.example.com"][7]
    assert by_site["不是 域名!"][8].startswith("格式错误，未导入") and f"{site['list']}:5: name (域名)" in by_site["不是 域名!"][8]
    # CSV and JSON say the same
    rc, o, _ = run(capsys, "records", "authority", "report", LIST, "--format", "json", "--config", site["config"])
    assert [r["网站域名/IP"] for r in json.loads(o)] == [r[1] for r in rows[1:]]
    rc, o, _ = run(capsys, "records", "authority", "report", LIST, "--format", "csv", "--config", site["config"])
    assert o.splitlines()[0].startswith("清单编号,网站域名/IP") and len(o.splitlines()) == 5

    # importing the same list again writes nothing
    from beiand.store import open_store
    from beiand.store.connect import StoreSettings

    def head() -> int:
        s = open_store(StoreSettings(""), Path(site["state"]), "gw-1")
        try:
            return s.head()
        finally:
            s.close()

    before = head()
    rc, _, e = run(capsys, "records", "authority", "import", site["list"], "--config", site["config"])
    assert rc == 1 and "imported already" in e and head() == before
    # the same entries in another file (re-saved as UTF-8): nothing new either, but no second case
    again = tmp_path / "again.csv"
    again.write_text(Path(site["list"]).read_bytes().decode("gb18030"), encoding="utf-8")
    rc, o, _ = run(capsys, "records", "authority", "import", str(again), "--config", site["config"])
    assert o.count("listed already in force") == 3
    rc, o, _ = run(capsys, "cases", "list", "--json", "--config", site["config"])
    assert len(o.splitlines()) == 1

    # list, then a person settles the conflict
    rc, o, e = run(capsys, "records", "authority", "list", "--json", "--config", site["config"])
    (lst,) = [json.loads(x) for x in o.splitlines()]
    assert (lst["list"], lst["entries"], lst["blocked"], lst["conflicts"], lst["not_hosted"], lst["rejected"]) == (LIST, 3, 1, 1, 1, 1)
    rc, _, e = run(capsys, "records", "authority", "settle", LIST, "shop.example.com", "--reason", "x", "--config", site["config"])
    assert rc == 2 and "not a conflict" in e
    rc, o, _ = run(capsys, "records", "authority", "settle", LIST, "filed.example.com", "--reason", "filing checked at beian.miit.gov.cn",
                   "--by", "bob", "--config", site["config"])
    assert rc == 0
    rc, o, _ = run(capsys, "records", "authority", "report", LIST, "--format", "json", "--config", site["config"])
    filed = next(r for r in json.loads(o) if r["网站域名/IP"] == "filed.example.com")
    assert "已人工核实 (settled by bob): filing checked at beian.miit.gov.cn" in filed["处理结果"]
    rc, _, e = run(capsys, "records", "authority", "report", "nope", "--config", site["config"])
    assert rc == 2 and "no such list" in e

    # the authority takes the first off its list: every gateway stops applying it; the report says so
    rc, _, e = run(capsys, "records", "authority", "withdraw", "TG-other", "shop.example.com", "--reason", "x", "--config", site["config"])
    assert rc == 2 and "no listing on 'TG-other' in force" in e
    rc, _, _ = run(capsys, "records", "authority", "withdraw", LIST, "shop.example.com", "--reason", "撤销通知", "--config", site["config"])
    assert rc == 0
    rc, o, _ = run(capsys, "records", "lookup", "www.shop.example.com", "--server", "198.51.100.9", "--config", site["config"], "--json")
    assert json.loads(o)["by"] is None
    rc, o, _ = run(capsys, "records", "authority", "report", LIST, "--format", "json", "--config", site["config"])
    assert "已撤销" in next(r for r in json.loads(o) if r["网站域名/IP"] == "shop.example.com")["处理结果"]


def test_xlsx_list_and_no_access_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from openpyxl import Workbook

    (tmp_path / "records.csv").write_text("备案号,主办单位,域名,接入商\n京ICP备12345678号-1,示例公司,filed.example.com,示例云\n",
                                          encoding="utf-8")
    (tmp_path / "inventory.csv").write_text("prefix,account\n198.51.100.0/24,cust-9\n", encoding="utf-8")
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(["域名", "IP地址", "下发日期"])
    ws.append(["quiet.example.com", "198.51.100.20", "2026-12-01"])
    ws.append([None, "198.51.100.21", "2026-12-01"])
    p = tmp_path / "list.xlsx"
    wb.save(p)
    common = ["--records", str(tmp_path / "records.csv"), "--inventory", str(tmp_path / "inventory.csv"), "--provider", "示例云",
              "--state-dir", str(tmp_path / "state")]
    rc, _, e = run(capsys, "records", "authority", "import", str(p), *common)
    assert rc == 1 and "list (清单编号): empty, and no --list given" in e  # every row named; nothing to import
    # the same file with the list's reference given is another import
    rc, o, e = run(capsys, "records", "authority", "import", str(p), "--list", "TG-7", *common)
    assert rc == 0 and "no access log" in e and "2 imported: 2 blocked" in o
    rc, o, _ = run(capsys, "cases", "list", "--json", "--state-dir", str(tmp_path / "state"))
    assert sorted(json.loads(x)["key"] for x in o.splitlines()) == ["cust-9|authority|198.51.100.21",
                                                                    "cust-9|authority|quiet.example.com"]


def test_a_name_only_resolved_to_hosted_space_is_hosted_here(site: dict[str, str], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    now = int(time.time() * 1000)
    with AccessLog(LogConfig(tmp_path / "log", worker=1, gateway="gw-1")) as log:
        log.append(AccessRecord(now - 60_000, "cust-7", "203.0.113.5", 53000, "198.51.100.30", 0, "udp", "dns-answer",
                                "dl.resolved.example.net", "unfiled", "flag", ""))
    p = tmp_path / "one.csv"
    p.write_text("list,domain,date\nTG-2,resolved.example.net,2026-12-01\n", encoding="utf-8")
    rc, o, _ = run(capsys, "records", "authority", "import", str(p), "--config", site["config"])
    assert rc == 0 and "1 imported: 1 blocked" in o
    rc, o, _ = run(capsys, "records", "authority", "report", "TG-2", "--format", "json", "--config", site["config"])
    (row,) = json.loads(o)
    assert (row["是否本单位接入"], row["接入地址"], row["工单编号"]) == ("是", "198.51.100.30", "cust-7|authority|resolved.example.net")
    # without an access log to show it, a name is not known to be hosted here
    p2 = tmp_path / "two.csv"
    p2.write_text("list,domain,date\nTG-3,resolved.example.net,2026-12-01\n", encoding="utf-8")
    rc, o, _ = run(capsys, "records", "authority", "import", str(p2), "--config", site["config"], "--seen-days", "1",
                   "--log-dir", str(tmp_path / "nolog"))
    assert rc == 0 and "1 not hosted here" in o


FORMULA = '=HYPERLINK("http://evil.example/","点击核实")'


def test_a_formula_in_a_lists_garbage_row_is_text_in_the_report(site: dict[str, str], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A site cell of the authority's file that a spreadsheet would run (=, +, -, @: OWASP "CSV
    Injection") goes into the 处理结果 report as text: an XLSX string cell, a CSV value behind an
    apostrophe; the JSON keeps it as it was."""
    text = ("清单编号,网站域名,IP地址,下发日期,处理期限\n"
            f'{LIST},"{FORMULA.replace(chr(34), chr(34) * 2)}",,2026-12-01,2026-12-10\n'
            f"{LIST},@SUM(1+1)*cmd,,2026-12-01,2026-12-10\n")
    (tmp_path / "l2.csv").write_bytes(text.encode("gb18030"))
    assert run(capsys, "records", "authority", "import", str(tmp_path / "l2.csv"), "--config", site["config"], "--by", "a")[0] == 1
    xlsx = tmp_path / "r.xlsx"
    assert run(capsys, "records", "authority", "report", LIST, "--config", site["config"], "--format", "xlsx",
               "--output", str(xlsx))[0] == 0
    from openpyxl import load_workbook

    ws = load_workbook(xlsx).active
    assert ws is not None
    cells = {c.value: c.data_type for row in ws.iter_rows() for c in row if c.column == 2}
    assert cells[FORMULA] == "s" and cells["@SUM(1+1)*cmd"] == "s"
    assert all(t != "f" for row in ws.iter_rows() for t in (c.data_type for c in row))
    _, o, _ = run(capsys, "records", "authority", "report", LIST, "--config", site["config"], "--format", "csv")
    import csv
    import io

    sites = [r[1] for r in csv.reader(io.StringIO(o))]
    assert "'" + FORMULA in sites and "'@SUM(1+1)*cmd" in sites and FORMULA not in sites
    out = tmp_path / "r.csv"
    assert run(capsys, "records", "authority", "report", LIST, "--config", site["config"], "--format", "csv",
               "--output", str(out))[0] == 0
    assert "'" + FORMULA in [r[1] for r in csv.reader(io.StringIO(out.read_text(encoding="utf-8-sig")))]
    _, o, _ = run(capsys, "records", "authority", "report", LIST, "--config", site["config"], "--format", "json")
    assert FORMULA in [r["网站域名/IP"] for r in json.loads(o)]
