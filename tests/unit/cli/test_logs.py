"""``beiand replay --log-dir`` writes the access log; ``beiand logs`` reads it."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import pytest

from beiand.cli import main
from beiand.cli.logs import parse_time
from beiand.lab.demo import build

PROVIDER = "示例云计算有限公司"


@pytest.fixture(scope="module")
def logged(tmp_path_factory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("logcli")
    demo = build(d / "demo")
    log = d / "log"
    rc = main(["replay", demo["pcap"], "--records", demo["records"], "--inventory", demo["inventory"], "--provider", PROVIDER,
               "--log-dir", str(log), "--gateway", "gw-test"])
    assert rc == 1
    return log


def q(capsys, *argv: str) -> list[dict]:  # type: ignore[no-untyped-def]
    assert main(["logs", "query", "--log-dir", *argv, "--format", "jsonl"]) == 0
    return [json.loads(x) for x in capsys.readouterr().out.splitlines()]


def test_replay_writes_one_record_per_observation_into_hosted_space(logged, capsys) -> None:  # type: ignore[no-untyped-def]
    rows = q(capsys, str(logged))
    assert rows and all(r["gateway"] == "gw-test" for r in rows)
    kinds = {r["kind"] for r in rows}
    assert {"tls-sni", "http-host", "quic-sni", "ip-only"} <= kinds
    filed = [r for r in rows if r["name"] == "api.shapp.cn"]
    assert filed and all(r["verdict"] == "filed" and r["filing_number"] for r in filed)
    assert all(r["account"] for r in rows)


def test_query_filters(logged, capsys) -> None:  # type: ignore[no-untyped-def]
    everything = q(capsys, str(logged))
    assert q(capsys, str(logged), "--name", "API.SHAPP.CN") == [r for r in everything if r["name"] == "api.shapp.cn"]
    unf = q(capsys, str(logged), "--verdict", "unfiled")
    assert unf and all(r["verdict"] == "unfiled" for r in unf)
    c = everything[0]["client_ip"]
    assert q(capsys, str(logged), "--client", c + "/32") == [r for r in everything if r["client_ip"] == c]
    assert q(capsys, str(logged), "--since", "2000-01-01", "--until", "2000-01-02") == []


def test_table_and_csv_output(logged, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["logs", "query", "--log-dir", str(logged)]) == 0
    cap = capsys.readouterr()
    assert "filing no. (备案号)" in cap.out and "record(s)" in cap.err
    assert main(["logs", "query", "--log-dir", str(logged), "--format", "csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0][:3] == ["time", "ts_ms", "account"] and len(rows) > 2


def test_export_writes_records_and_a_checkable_manifest(logged, capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "export"
    assert main(["logs", "export", "--log-dir", str(logged), "--verdict", "unfiled", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    f = manifest["files"][0]
    data = (out / f["name"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == f["sha256"]
    assert manifest["records"] == len(data.splitlines()) > 0
    assert manifest["chain"]["verified"] and manifest["chain"]["partitions"][0]["head"]
    assert (out / "manifest.json.sha256").read_text().split()[0] == hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()
    # Never written over another export.
    assert main(["logs", "export", "--log-dir", str(logged), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_verify_and_stats(logged, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["logs", "verify", "--log-dir", str(logged)]) == 0
    assert "verify: ok" in capsys.readouterr().out
    assert main(["logs", "stats", "--log-dir", str(logged), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["records"] > 0 and st["partitions"] == 1 and st["workers"] == ["w0"]


def test_verify_fails_on_a_tampered_log(tmp_path: Path, logged, capsys) -> None:  # type: ignore[no-untyped-def]
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(logged, d)
    p = next(d.glob("*/w0.*"))
    data = bytearray(p.read_bytes())
    i = data.index(b"api.shapp.cn")
    data[i] = ord("b")  # also breaks the frame checksum
    p.write_bytes(bytes(data))
    assert main(["logs", "verify", "--log-dir", str(d)]) == 1
    assert "FAILED" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["logs", "query", "--log-dir", "/nonexistent"], "not a directory"),
    (["logs", "query", "--log-dir", "{d}", "--since", "yesterday-ish"], "--since"),
    (["logs", "query", "--log-dir", "{d}", "--client", "10.0.0.0/33"], "--client"),
    (["logs", "query", "--log-dir", "{d}", "--verdict", "bad"], "--verdict"),
    (["logs", "query", "--log-dir", "{d}", "--name", "a..b"], "--name"),
    (["logs", "query", "--log-dir", "{d}", "--since", "2026-01-02", "--until", "2026-01-01"], "later"),
    (["logs", "query", "--config", "/nonexistent.toml"], "no --log-dir"),
    (["logs", "query", "--log-dir", "{d}", "--port", "70000"], "--port '70000'"),
    (["logs", "query", "--log-dir", "{d}", "--port", "ssh"], "--port 'ssh'"),
    (["logs", "query", "--log-dir", "{d}", "--proto", "icmp"], "--proto 'icmp'"),
    (["logs", "query", "--log-dir", "{d}", "--at", "2026-11-20T08:00+08:00", "--window", "5x"], "--window '5x'"),
    (["logs", "query", "--log-dir", "{d}", "--window", "5m"], "--window needs --at"),
    (["logs", "query", "--log-dir", "{d}", "--at", "2026-11-20T08:00", "--since", "1d"], "--at"),
    (["logs", "query", "--log-dir", "{d}", "--at", "yesterday"], "--at 'yesterday'"),
    (["logs", "query", "--log-dir", "{d}", "--url-prefix", "api"], "--url-prefix"),
    (["logs", "query", "--log-dir", "{d}", "--server", "198.51.100.700"], "--server"),
    (["logs", "query", "--log-dir", "{d}", "--nat", "/nonexistent.csv"], "--nat /nonexistent.csv"),
    (["logs", "query", "--log-dir", "{d}", "--state-dir", "/nonexistent"], "--state-dir /nonexistent: no inventory history"),
    (["logs", "export", "--log-dir", "{d}", "--out", "/tmp/x", "--port", "-1"], "--port '-1'"),
    (["replay", "/dev/null", "--records", "/dev/null", "--log-dir", "{d}", "--retention-days", "30"], "Order 292"),
])
def test_bad_arguments(logged, capsys, argv, message) -> None:  # type: ignore[no-untyped-def]
    assert main([a.format(d=logged) for a in argv]) == 2
    assert message in capsys.readouterr().err


def test_time_forms() -> None:
    assert parse_time("2026-11-01T00:00:00Z", "--since") == 1_793_491_200_000
    assert parse_time("2026-11-01T08:00:00+08:00", "--since") == 1_793_491_200_000
    assert parse_time("1793491200", "--since") == 1_793_491_200_000
    assert parse_time("7d", "--since", now=1_000_000.0) == (1_000_000 - 7 * 86400) * 1000


def test_replay_creates_a_missing_log_dir(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    demo = build(tmp_path / "demo")
    log = tmp_path / "not" / "yet" / "log"
    assert main(["replay", demo["pcap"], "--records", demo["records"], "--inventory", demo["inventory"], "--log-dir", str(log)]) == 1
    assert log.is_dir() and "record(s) written" in capsys.readouterr().out


def test_audit_says_why_an_older_log_shows_no_services(logged, capsys) -> None:  # type: ignore[no-untyped-def]
    # The demo's capture is from 2023: outside the default 7-day window.
    demo = build(logged.parent / "demo")
    main(["audit", "--log-dir", str(logged), "--records", demo["records"], "--inventory", demo["inventory"]])
    cap = capsys.readouterr()
    assert "; 0 service(s) seen" in cap.out
    assert "outside the window" in cap.err and "--since 7d" in cap.err and "2023-11-14" in cap.err
    main(["audit", "--log-dir", str(logged), "--records", demo["records"], "--inventory", demo["inventory"], "--since", "2023-11-01"])
    cap = capsys.readouterr()
    assert "; 0 service(s) seen" not in cap.out and "outside the window" not in cap.err


# -- damage, acknowledgement, anchors (issue 14) ---------------------------------------------------


def _damaged_log(d: Path) -> Path:
    """300 committed records in frames of 50, one byte flipped in the middle, a writer restarted."""
    from beiand.accesslog import AccessLog, LogConfig
    from tests.unit.accesslog.helpers import rec

    with AccessLog(LogConfig(d)) as log:
        for i in range(300):
            log.append(rec(i))
            if i % 50 == 49:
                log.flush()
    p = next(d.glob("*/w0.open"))
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    AccessLog(LogConfig(d), start=False).close()
    return p


def test_damage_is_reported_until_acknowledged(tmp_path: Path, logged, capsys) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "log"
    _damaged_log(d)
    (aside,) = d.glob("*/w0.*.damaged")
    name = f"{aside.parent.name}/{aside.stem}"
    assert main(["logs", "verify", "--log-dir", str(d)]) == 1
    outp = capsys.readouterr().out
    assert f"FAILED: {name}: damaged: bytes at offsets " in outp and "record(s) at risk" in outp
    # Queries still return its readable records, marked.
    rows = q(capsys, str(d))
    assert len(rows) == 250 and all(r.get("set_aside") == name for r in rows)
    assert main(["logs", "acknowledge", "--log-dir", str(d), "2026-01-01/w0.001", "--reason", "checked"]) == 2
    assert "not a damaged or missing partition" in capsys.readouterr().err
    assert main(["logs", "acknowledge", "--log-dir", str(d), name, "--reason", ""]) == 2
    assert main(["logs", "acknowledge", "--log-dir", str(d), name, "--reason", "bad sector on sda, disk replaced"]) == 0
    capsys.readouterr()
    assert main(["logs", "verify", "--log-dir", str(d)]) == 0
    outp = capsys.readouterr().out
    assert f"acknowledged: {name}: damaged" in outp and "disk replaced" in outp
    events = [json.loads(x) for x in (d / "heads.log").read_text().splitlines()]
    assert {"damage", "acknowledge"} <= {e["event"] for e in events}


def test_verify_against_anchors(tmp_path: Path, logged, capsys) -> None:  # type: ignore[no-untyped-def]
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(logged, d)
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text((d / "heads.log").read_text())  # a copy of heads.log is an anchors file too
    assert main(["logs", "verify", "--log-dir", str(d), "--anchors", str(anchors)]) == 0
    assert "checked against" in capsys.readouterr().out
    shutil.rmtree(d)
    assert main(["logs", "verify", "--log-dir", str(d), "--anchors", str(anchors)]) == 1
    assert "missing" in capsys.readouterr().out
    anchors.write_text('{"partition": "2026-11-23/w0", "count": 3, "head": "zz"}\n')
    assert main(["logs", "verify", "--log-dir", str(d), "--anchors", str(anchors)]) == 2
    assert f"{anchors}:1: head: expected the full chain head" in capsys.readouterr().err


def test_replay_on_a_damaged_log_keeps_every_readable_record(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """The reproduction of issue 14 through the command: `replay --log-dir` starts a writer on a
    log with a flipped byte; it used to cut every record after the damaged frame."""
    d = tmp_path / "log"
    _damaged_log(d)
    # Undo the restart the helper did: the damaged file is the open partition again.
    (aside,) = d.glob("*/w0.001.damaged")
    aside.rename(aside.with_name("w0.open"))
    aside.with_suffix(".mark").rename(aside.with_name("w0.mark"))
    (d / "heads.log").write_text("".join(x + "\n" for x in (d / "heads.log").read_text().splitlines()
                                         if '"damage"' not in x))
    demo = build(tmp_path / "demo")
    main(["replay", demo["pcap"], "--records", demo["records"], "--inventory", demo["inventory"], "--provider", PROVIDER,
          "--log-dir", str(d), "--gateway", "gw-test"])
    capsys.readouterr()
    rows = q(capsys, str(d))
    assert len(rows) == 250 + 11
    assert main(["logs", "verify", "--log-dir", str(d)]) == 1
    assert "damaged: bytes at offsets " in capsys.readouterr().out


@pytest.mark.parametrize("zone", ["UTC", "Asia/Shanghai", "Asia/Kathmandu", "America/New_York", "Australia/Lord_Howe"])
def test_time_column_is_the_local_time_in_every_zone(zone: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """fmt_time looks the offset up once per UTC hour (query output speed, issue 19): it prints what
    the datetime conversion prints, across DST changes and zones off the hour."""
    import random
    import time as _time

    from beiand.cli import logs as cli_logs

    monkeypatch.setenv("TZ", zone)
    _time.tzset()
    cli_logs._OFFSETS.clear()
    cli_logs._DATES.clear()
    try:
        rnd = random.Random(19)
        start = 1_774_000_000_000  # 2026-03-20: the DST changes of both hemispheres follow
        stamps = [start + rnd.randrange(0, 300 * 86_400_000) for _ in range(3000)]
        stamps += [0, 1, 999, 1_000, 86_399_999, 1_790_000_000_000]
        for t in stamps:
            assert cli_logs.fmt_time(t) == cli_logs._fmt_time_slow(t), (zone, t)
    finally:
        monkeypatch.undo()
        _time.tzset()
        cli_logs._OFFSETS.clear()
        cli_logs._DATES.clear()
