import json
from pathlib import Path

import pytest

from beiand.cli import main
from beiand.lab.demo import build

PROVIDER = "示例云计算有限公司"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build(tmp_path_factory.mktemp("demo"))


def test_records_check(demo, capsys, tmp_path):
    assert main(["records", "check", demo["records"]]) == 0
    out = capsys.readouterr().out
    assert "5 filings" in out and "website" in out and "京" in out
    bad = tmp_path / "bad.csv"
    bad.write_text("备案号,主办单位,域名\n京ICP备1234567号-1,甲,a.com\n京ICP备12345678号-1,乙,b.com\n", encoding="utf-8")
    assert main(["records", "check", str(bad), "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert rep["filings"] == 1 and rep["errors"] == [f"{bad}:2: number (备案号): sponsor number has 7 digits, expected 8 or 10"]


def test_records_lookup(demo, capsys):
    rc = main(["records", "lookup", "www.example.com.cn", "例子.中国", "shop.example.net", "--records", demo["records"],
               "--provider", PROVIDER, "--json"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 1
    assert [(r["verdict"], r["reason"]) for r in rows] == [("filed", "filed"), ("filed", "filed"), ("mismatch", "other-provider")]
    assert rows[0]["filing"]["number"] == "京ICP备12345678号-1" and rows[0]["registrable_domain"] == "example.com.cn"
    assert rows[1]["name"] == "xn--fsqu00a.xn--fiqs8s"
    rc = main(["records", "lookup", "198.51.100.30", "www.example.com.cn", "--records", demo["records"], "--inventory",
               demo["inventory"], "--server", "198.51.100.10"])
    out = capsys.readouterr().out
    assert rc == 0 and "cust-0001" in out and "接入商 (access provider) not checked" in out


def test_replay_json_and_summary(demo, capsys):
    rc = main(["replay", demo["pcap"], "--records", demo["records"], "--inventory", demo["inventory"], "--provider", PROVIDER, "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 1
    names = {(d["kind"], d["name"] or d["server"], d["verdict"]) for d in lines}
    assert ("tls-sni", "api.shapp.cn", "filed") in names
    assert ("quic-sni", "quic-unfiled.example.top", "unfiled") in names
    assert ("http-host", "old.example.org", "inactive") in names
    assert ("ip-only", "198.51.100.31:443", "unfiled") in names
    assert all(d["mode"] == "dry-run" for d in lines if d["server"].startswith("198.51.100."))
    assert main(["replay", demo["pcap"], "--records", demo["records"], "--inventory", demo["inventory"]]) == 1
    out = capsys.readouterr().out
    assert "top names not filed" in out and "unfiled.example.xyz" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["records", "lookup", "a..b", "--records", "{records}"], "empty label"),
        (["records", "lookup", "a.com", "--records", "/nonexistent.csv"], "no such file"),
        (["records", "lookup", "a.com", "--records", "{records}", "--grace-days", "60"], "45"),
        (["records", "lookup", "a.com", "--records", "{records}", "--server", "nope"], "not an IP"),
        (["replay", "/nonexistent.pcap", "--records", "{records}"], "cannot open"),
        (["replay", "{records}", "--records", "{records}"], "not a pcap"),
    ],
)
def test_bad_arguments_exit_2_with_a_reason(demo, capsys, argv, message):
    assert main([a.format(**demo) for a in argv]) == 2
    assert message in capsys.readouterr().err


def test_bad_inventory_names_the_line(demo, capsys, tmp_path):
    inv = tmp_path / "inv.csv"
    inv.write_text("prefix,account\n10.0.0.1/8,a\n", encoding="utf-8")
    assert main(["records", "lookup", "a.com", "--records", demo["records"], "--inventory", str(inv)]) == 2
    assert f"{inv}:2: prefix" in capsys.readouterr().err


def test_usage_errors(capsys, tmp_path):
    assert main(["replay", "x.pcap", "--config", str(tmp_path / "none.toml")]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["replay", "x.pcap", "--records", "r", "--tcp-ports", "0,99999"])
    assert "ports must be" in capsys.readouterr().err


def test_demo_runs(capsys, tmp_path):
    assert main(["demo", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "tls-sni" in out and "unfiled.example.xyz" in out


def test_records_check_reports_unmapped_statuses_and_takes_a_status_map(tmp_path, capsys):
    p = tmp_path / "s.csv"
    p.write_text("备案号,主办单位,域名,IP,接入商,状态\n京ICP备20000012号-1,甲,a.cn,203.0.113.0/28,p,待复核\n", "utf-8")
    assert main(["records", "check", str(p), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert (got["unmapped_status"], got["ip_ranges"], got["status"]) == (1, 1, {"unmapped": 1})
    assert main(["records", "check", str(p), "--json", "--status-map", "待复核=cancelled"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == {"cancelled": 1}
    assert main(["records", "check", str(p), "--status-map", "待复核"]) == 2
    assert "expected WORD=STATUS" in capsys.readouterr().err


def test_records_lookup_takes_several_provider_names(tmp_path, capsys):
    p = tmp_path / "r.csv"
    p.write_text("备案号,主办单位,域名,接入商\n京ICP备20000013号-1,甲,a.cn,乙云（北京）\n", "utf-8")
    base = ["records", "lookup", "a.cn", "--records", str(p), "--json"]
    assert main([*base, "--provider", "乙云"]) == 1
    assert json.loads(capsys.readouterr().out)["reason"] == "other-provider"
    assert main([*base, "--provider", "乙云", "--provider", "乙云(北京)"]) == 0  # NFKC: full-width brackets compare equal
    r = json.loads(capsys.readouterr().out)
    assert (r["verdict"], r["reason"]) == ("filed", "filed") and "no server given" in r["assumed"]


def test_records_check_says_what_exit_1_means(demo, capsys, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(Path(demo["records"]).read_text(encoding="utf-8") + "not-a-number,x,网站,y,bad..domain,,p,正常,2024-01-01\n",
                   encoding="utf-8")
    assert main(["records", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "exit status 1" in err and "1 rejected row" in err


def test_no_imports_hidden_in_strings():
    """import-linter sees only real import statements (DESIGN.md: no imports hidden in strings)."""
    import pathlib

    import beiand

    root = pathlib.Path(beiand.__file__).parent
    hidden = [str(p.relative_to(root)) for p in root.rglob("*.py") if "__import__(" in p.read_text(encoding="utf-8")]
    assert not hidden, hidden


def test_entry_points():
    """``beiand.cli:main`` (the console script) and ``python -m beiand.cli`` still run."""
    import subprocess
    import sys

    import beiand.cli

    assert beiand.cli.main is main
    r = subprocess.run([sys.executable, "-m", "beiand.cli", "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("beiand "), r.stderr
