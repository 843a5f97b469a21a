"""``beiand logs query`` for the requests issue 19 names: by server address and port at a time,
by account, protocol and URL prefix; table, CSV (Chinese headers) and JSONL; a signed export;
the account that held the address then; either side of a NAT mapping."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from beiand.accesslog import AccessLog, LogConfig
from beiand.cli import main
from beiand.cli.logs import parse_time
from beiand.model import AccessRecord
from beiand.policy.history import record_load

T = parse_time("2026-11-20T08:00+08:00", "--at")  # the request's time
DAY = 86_400_000


def conn(ts: int, server: str, port: int, client: str = "192.0.2.10", **kw: object) -> AccessRecord:
    r = AccessRecord(ts, "cust-a", client, 50000, server, port, "tcp", "conn", "", "", "log", "", "gw-1/w0", "not named",
                     "", "", "", "in", "", "", 3, 180)
    return r._replace(**kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def log(tmp_path_factory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("conn")
    recs = [
        conn(T - 60_000, "198.51.100.7", 22, client="192.0.2.1"),  # in the window
        conn(T + 240_000, "198.51.100.7", 22, client="192.0.2.2", transport="udp"),  # in the window
        conn(T + 400_000, "198.51.100.7", 22, client="192.0.2.3"),  # after it
        conn(T, "198.51.100.7", 443, client="192.0.2.4", kind="http-host", name="www.example.cn", method="GET", url="/api/v1/x"),
        conn(T, "198.51.100.8", 22, client="192.0.2.5", account="cust-b"),
        conn(T - 2 * DAY, "198.51.100.7", 22, client="192.0.2.6"),  # a day now sealed
        conn(T + 30_000, "10.0.0.7", 22, client="192.0.2.7", nat="203.0.113.5:10022"),  # behind NAT, mapping known
        conn(T + 31_000, "10.0.0.7", 22, client="192.0.2.8"),  # behind NAT, written without the mapping
    ]
    with AccessLog(LogConfig(d / "log", gateway="gw-1")) as alog:
        for r in sorted(recs):
            alog.append(r)
        alog.flush()
    state = d / "state"
    inv = d / "inventory.csv"
    inv.write_text("prefix,account\n198.51.100.0/24,cust-old\n")
    record_load(state, inv, T - 10 * DAY)
    inv.write_text("prefix,account\n198.51.100.0/24,cust-new\n")
    record_load(state, inv, T + DAY)  # the address changed hands after the request's time
    nat = d / "nat.csv"
    nat.write_text("public,internal,account,valid_from,valid_to\n203.0.113.5:10000-10999,10.0.0.7:0,cust-a,2026-11-01,\n")
    return {"dir": str(d / "log"), "state": str(state), "nat": str(nat), "recs": recs}


def run(capsys, log, *argv: str, fmt: str = "jsonl") -> list[dict]:  # type: ignore[no-untyped-def]
    assert main(["logs", "query", "--log-dir", log["dir"], *argv, "--format", fmt]) == 0
    text = capsys.readouterr().out
    return [json.loads(x) for x in text.splitlines()] if fmt == "jsonl" else text  # type: ignore[return-value]


def test_who_reached_this_address_and_port_at_that_time(log, capsys) -> None:  # type: ignore[no-untyped-def]
    rows = run(capsys, log, "--server", "198.51.100.7", "--port", "22", "--at", "2026-11-20T08:00+08:00", "--window", "5m")
    assert [r["client_ip"] for r in rows] == ["192.0.2.1", "192.0.2.2"]
    rows = run(capsys, log, "--server", "198.51.100.7", "--port", "22", "--since", "60d")
    assert [r["client_ip"] for r in rows] == ["192.0.2.6", "192.0.2.1", "192.0.2.2", "192.0.2.3"]


def test_account_proto_and_url_prefix(log, capsys) -> None:  # type: ignore[no-untyped-def]
    assert [r["client_ip"] for r in run(capsys, log, "--account", "cust-b")] == ["192.0.2.5"]
    assert [r["client_ip"] for r in run(capsys, log, "--proto", "udp")] == ["192.0.2.2"]
    rows = run(capsys, log, "--url-prefix", "/api/")
    assert [(r["method"], r["url"]) for r in rows] == [("GET", "/api/v1/x")]
    assert run(capsys, log, "--url-prefix", "/apix") == []


def test_csv_with_chinese_headers_and_the_table(log, capsys) -> None:  # type: ignore[no-untyped-def]
    text = run(capsys, log, "--server", "198.51.100.7", "--port", "22", "--at", "2026-11-20T08:00+08:00", "--headers", "zh",
               fmt="csv")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0][:9] == ["时间", "时间戳(毫秒)", "账号", "源地址", "源端口", "目的地址", "目的端口", "协议", "识别方式"]
    assert "域名" in rows[0] and len(rows) == 3
    table = run(capsys, log, "--server", "198.51.100.7", "--port", "22", "--at", "2026-11-20T08:00+08:00", fmt="table")
    assert "198.51.100.7:22" in table and "192.0.2.1:50000" in table


def test_the_holder_then_not_today(log, capsys) -> None:  # type: ignore[no-untyped-def]
    rows = run(capsys, log, "--server", "198.51.100.7", "--port", "22", "--at", "2026-11-20T08:00+08:00",
               "--state-dir", log["state"])
    assert {r["holder"] for r in rows} == {"cust-old"}
    assert main(["records", "holder", "198.51.100.7", "--at", "2026-11-20T08:00+08:00", "--state-dir", log["state"],
                 "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["account"] == "cust-old" and info["prefix"] == "198.51.100.0/24"
    assert main(["records", "holder", "198.51.100.7", "--at", "2026-11-22T08:00+08:00", "--state-dir", log["state"],
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["account"] == "cust-new"
    assert main(["records", "holder", "198.51.100.7", "--at", "2026-01-01", "--state-dir", log["state"]]) == 1
    assert "before the first recorded inventory load" in capsys.readouterr().out
    assert main(["records", "holder", "not-an-ip", "--state-dir", log["state"]]) == 2
    assert "IP 'not-an-ip'" in capsys.readouterr().err


def test_either_side_of_a_nat_mapping(log, capsys) -> None:  # type: ignore[no-untyped-def]
    at = ["--at", "2026-11-20T08:00+08:00"]
    # The public endpoint: the record carrying it in its nat field...
    assert [r["client_ip"] for r in run(capsys, log, "--server", "203.0.113.5", "--port", "10022", *at)] == ["192.0.2.7"]
    # ...and, with the feed, the record written before the mapping was known.
    rows = run(capsys, log, "--server", "203.0.113.5", "--port", "10022", "--nat", log["nat"], *at)
    assert [r["client_ip"] for r in rows] == ["192.0.2.7", "192.0.2.8"]
    # The internal endpoint finds both as well.
    assert len(run(capsys, log, "--server", "10.0.0.7", "--port", "22", *at)) == 2


def test_a_signed_export_with_the_same_filters(log, capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "export"
    assert main(["logs", "export", "--log-dir", log["dir"], "--out", str(out), "--server", "198.51.100.7", "--port", "22",
                 "--at", "2026-11-20T08:00+08:00", "--format", "csv", "--headers", "zh", "--state-dir", log["state"]]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["records"] == 2 and manifest["query"]["port"] == "22" and manifest["chain"]["verified"]
    rows = list(csv.reader(io.StringIO((out / "records.csv").read_text())))
    assert rows[0][0] == "时间" and rows[0][-1] == "当时地址持有账号" and [r[-1] for r in rows[1:]] == ["cust-old", "cust-old"]


def test_connection_records_no_name_came_for_are_asked_for_by_their_verdict(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from beiand.model import UNNAMED

    d = tmp_path / "log"
    with AccessLog(LogConfig(d, gateway="gw-1")) as alog:
        alog.append(conn(T, "198.51.100.7", 22, verdict=UNNAMED))
        alog.append(conn(T + 1, "198.51.100.7", 443, kind="tls-sni", name="www.example.cn", verdict="filed"))
        alog.flush()
    rows = run(capsys, {"dir": str(d)}, "--verdict", "unnamed")
    assert [(r["server_port"], r["verdict"]) for r in rows] == [(22, "unnamed")]
