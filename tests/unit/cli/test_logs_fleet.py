"""``logs query|export``, ``audit`` and ``block report``: which store they read (issue 27, part B),
and the errors that name the option a malformed value came from. The answers from a real
ClickHouse are tested in tests/integration/test_fleet.py."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from beiand.accesslog.source import LocalRecords
from beiand.cli import main
from beiand.cli.logs import records_source
from beiand.sinks.fleet import FleetRecords


def config(tmp_path: Path, url: str = "http://127.0.0.1:8123", extra: str = "") -> Path:
    (tmp_path / "log").mkdir(exist_ok=True)
    p = tmp_path / "beiand.toml"
    ch = f'\n[accesslog.clickhouse]\nurl = "{url}"\ndatabase = "fleetdb"\n{extra}' if url else ""
    p.write_text(f'[accesslog]\ndirectory = "{tmp_path / "log"}"\n{ch}', encoding="utf-8")
    return p


def args(conf: Path, **kw: object) -> argparse.Namespace:
    base: dict[str, object] = {"config": str(conf), "log_dir": None, "local": False, "clickhouse": None, "database": None,
                               "table": None}
    return argparse.Namespace(**{**base, **kw})


def test_with_clickhouse_configured_the_tools_read_the_fleet_copy(tmp_path: Path) -> None:
    conf = config(tmp_path)
    src = records_source(args(conf))
    assert isinstance(src, FleetRecords) and src.fleet
    assert src.table == "fleetdb.access_log" and src.reader.url == "http://127.0.0.1:8123/" and src.gateways == ()


def test_local_or_an_explicit_log_dir_reads_the_embedded_log(tmp_path: Path) -> None:
    conf = config(tmp_path)
    for a in (args(conf, local=True), args(conf, log_dir=str(tmp_path / "log"))):
        src = records_source(a)
        assert isinstance(src, LocalRecords) and src.directory == tmp_path / "log" and not src.fleet


def test_without_clickhouse_the_embedded_log(tmp_path: Path) -> None:
    src = records_source(args(config(tmp_path, url="")))
    assert isinstance(src, LocalRecords)


def test_clickhouse_given_wins_over_the_config_and_database_table_override(tmp_path: Path) -> None:
    conf = config(tmp_path, url="")
    src = records_source(args(conf, clickhouse="http://ch.example:8123", database="other", table="copy"))
    assert isinstance(src, FleetRecords) and src.table == "other.copy" and src.reader.url == "http://ch.example:8123/"


@pytest.mark.parametrize(("argv", "message"), [
    (["--clickhouse", "ftp://ch:21"], "--clickhouse 'ftp://ch:21': expected http://host:8123"),
    (["--clickhouse", "ch:8123"], "--clickhouse 'ch:8123': expected http://host:8123"),
    (["--clickhouse", "http://ch:port"], "--clickhouse 'http://ch:port': not a URL"),
    (["--clickhouse", "http://127.0.0.1:8123", "--database", "x;DROP"], "--database 'x;DROP': a ClickHouse name"),
    (["--clickhouse", "http://127.0.0.1:8123", "--table", "1t"], "--table '1t': a ClickHouse name"),
    (["--local", "--clickhouse", "http://127.0.0.1:8123"], "not allowed with argument"),
])
@pytest.mark.parametrize("command", [["logs", "query"], ["logs", "export", "--out", "OUT"],
                                     ["block", "report", "--state-dir", "STATE"]])
def test_a_malformed_value_is_an_error_naming_its_option(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                                        message: str, command: list[str]) -> None:
    conf = config(tmp_path, url="")
    (tmp_path / "state").mkdir()
    cmd = [c.replace("OUT", str(tmp_path / "out")).replace("STATE", str(tmp_path / "state"))
           for c in command]
    try:
        rc = main([*cmd, "--config", str(conf), *argv])
    except SystemExit as exc:  # argparse: --local with --clickhouse
        rc = int(exc.code or 0)
    assert rc == 2
    assert message in capsys.readouterr().err


def test_a_malformed_url_in_the_config_is_named_as_the_config_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = config(tmp_path, url="clickhouse.example:8123")
    assert main(["logs", "query", "--config", str(conf)]) == 2
    err = capsys.readouterr().err
    assert "accesslog.clickhouse.url" in err and "'clickhouse.example:8123'" in err and str(conf) in err


def test_clickhouse_unreachable_is_an_error_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = config(tmp_path, url="http://127.0.0.1:9")  # discard: nothing listens
    assert main(["logs", "query", "--config", str(conf), "--server", "203.0.113.7", "--port", "22"]) == 2
    err = capsys.readouterr().err
    assert "ClickHouse http://127.0.0.1:9/" in err and "--local" in err


def test_the_isms_scope_is_this_gateway_unless_configured(tmp_path: Path) -> None:
    from beiand.runtime.settings import load_config
    from beiand.runtime.wiring import isms_gateways, records_source

    one = load_config(config(tmp_path))
    assert isms_gateways(one) == (one.gateway,)
    p = tmp_path / "house.toml"
    p.write_text(f'[daemon]\ngateway = "gw-1"\n[accesslog]\ndirectory = "{tmp_path / "log"}"\n[accesslog.clickhouse]\n'
                 'url = "http://127.0.0.1:8123"\n[isms]\ngateways = ["gw-1", "gw-2"]\n', encoding="utf-8")
    house = load_config(p)
    assert isms_gateways(house) == ("gw-1", "gw-2")
    src = records_source(house, isms_gateways(house))
    assert isinstance(src, FleetRecords) and src.gateways == ("gw-1", "gw-2") and "gw-1, gw-2" in src.where
    p.write_text(p.read_text().replace('["gw-1", "gw-2"]', '["*"]'))
    assert isms_gateways(load_config(p)) == ()
