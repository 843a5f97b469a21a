"""``beiand records import|log|diff|lookup --at`` (issue 35): an export published as a version,
listed, compared, and a name removed in version 2 judged ``filed`` at a time of version 1."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from beiand.cli.main import main
from beiand.records.generate import GenConfig, write_csv


def test_import_log_diff_and_lookup_at(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    write_csv(str(a), GenConfig(filings=200, inactive_share=0.0, other_provider_share=0.0))
    rows = list(csv.reader(a.open(encoding="utf-8")))
    gone = rows[5]
    name = gone[4].split("、")[0].removeprefix("*.")
    with b.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([r for r in rows if r is not gone])
    st = ["--state-dir", str(tmp_path / "state")]
    assert main(["records", "import", str(a), "--by", "alice", "--why", "export of day 1", *st]) == 0
    assert "records: version 1 published: 200 rows" in capsys.readouterr().out
    t1 = time.time()
    time.sleep(0.05)
    assert main(["records", "import", str(b), "--json", *st]) == 0
    v2 = json.loads(capsys.readouterr().out)
    assert v2["version"] == 2 and v2["summary"]["removed"] == 1 and v2["published"]
    assert main(["records", "import", str(b), *st]) == 0
    assert "nothing published" in capsys.readouterr().out
    truncated = tmp_path / "c.csv"
    with truncated.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows[:10])
    assert main(["records", "import", str(truncated), *st]) == 1
    assert "refused" in capsys.readouterr().err
    assert main(["records", "log", "--json", *st]) == 0
    log = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(v["version"], v["by"], v["rows"]) for v in log] == [(2, v2["by"], 199), (1, "alice", 200)]
    assert main(["records", "diff", "1", "2", "--kind", "records", "--json", *st]) == 1
    d = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(x["change"], x["key"]) for x in d] == [("removed", gone[0])]
    look = ["records", "lookup", name, "--no-overlays", "--json", *st]
    assert main([*look, "--at", str(t1)]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "filed"
    assert main([*look, "--at", str(time.time())]) == 1
    assert json.loads(capsys.readouterr().out)["verdict"] == "unfiled"


def test_holder_at_a_time_from_the_register(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, inv1, inv2 = tmp_path / "a.csv", tmp_path / "inv1.csv", tmp_path / "inv2.csv"
    write_csv(str(a), GenConfig(filings=20))
    inv1.write_text("prefix,account,site,state,mode\n198.51.100.0/24,cust-old,bj-1,active,\n", encoding="utf-8")
    inv2.write_text("prefix,account,site,state,mode\n198.51.100.0/24,cust-new,bj-1,active,\n", encoding="utf-8")
    st = ["--state-dir", str(tmp_path / "state")]
    assert main(["records", "import", str(a), "--inventory", str(inv1), *st]) == 0
    t1 = time.time()
    time.sleep(0.05)
    assert main(["records", "import", "--inventory", str(inv2), *st]) == 0
    capsys.readouterr()
    assert main(["records", "holder", "198.51.100.7", "--at", f"{t1:.3f}", "--json", *st]) == 0
    then = json.loads(capsys.readouterr().out)
    assert then["account"] == "cust-old" and then["inventory"].startswith("register v2: ")
    assert main(["records", "holder", "198.51.100.7", "--json", *st]) == 0
    assert json.loads(capsys.readouterr().out)["account"] == "cust-new"
    assert main(["records", "holder", "203.0.113.1", "--json", *st]) == 1


def test_at_a_time_before_the_first_version_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--at`` before the register's first version: named, never judged with today's files."""
    from datetime import UTC, datetime

    a = tmp_path / "a.csv"
    write_csv(str(a), GenConfig(filings=20))
    st = ["--state-dir", str(tmp_path / "state")]
    before = time.time() - 3600
    assert main(["records", "import", str(a), *st]) == 0
    capsys.readouterr()
    assert main(["records", "lookup", "site.example.cn", "--no-overlays", "--json", "--at", f"{before:.0f}", *st]) == 2
    msg = capsys.readouterr().err
    when = datetime.fromtimestamp(round(before), UTC).isoformat(timespec="seconds")
    assert "no register version" in msg and when in msg and "first version" in msg, msg
