"""``beiand store`` and ``beiand fleet`` (issue 29) on the embedded store; ``beiand exempt``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from beiand.cli import main
from beiand.runtime.decisions import open_decisions
from beiand.runtime.settings import Config, DaemonSection


def test_store_migrate_then_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    st = ["--state-dir", str(tmp_path)]
    assert main(["store", "migrate", *st]) == 0
    assert "schema 0 → 2" in capsys.readouterr().out
    assert main(["store", "migrate", *st]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["block", "add", "a.example", "--order", "1", *st]) == 0
    capsys.readouterr()
    assert main(["store", "status", "--json", *st]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["version"] == 1 and info["schema"] == 2


def test_fleet_status_names_a_silent_gateway_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    st = ["--state-dir", str(tmp_path)]
    store = open_decisions(Config(daemon=DaemonSection(gateway="gw-old", state_dir=tmp_path)))
    store.heartbeat(0, 0.0, "h", "0", {})
    store.close()
    with open_decisions(Config(daemon=DaemonSection(gateway="gw-now", state_dir=tmp_path)))._locked() as cur:
        cur.execute("UPDATE beiand_gateways SET heartbeat_at = ? WHERE gateway = 'gw-old'", (time.time() - 3600,))
    assert main(["block", "add", "a.example", "--order", "1", *st]) == 0
    capsys.readouterr()
    assert main(["fleet", "status", "--json", *st]) == 1
    (g,) = json.loads(capsys.readouterr().out)["gateways"]
    assert g["gateway"] == "gw-old" and g["state"] == "silent" and g["behind"] == 1


def test_a_store_url_of_another_kind_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["block", "list", "--store", "mysql://x@y/z", "--state-dir", str(tmp_path)]) == 2
    assert "expected a file path (SQLite) or postgresql://" in capsys.readouterr().err


def test_exempt_add_list_remove_and_the_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    st = ["--state-dir", str(tmp_path)]
    assert main(["exempt", "add", "Partner.Example.CN", "--order", "TICKET-7", "--reason", "filing in review", "--by", "li", *st]) == 0
    assert "exemption TICKET-7: partner.example.cn exempt" in capsys.readouterr().out
    assert main(["exempt", "remove", "partner.example.cn", "--reason", "filed", "--by", "wang", *st]) == 0
    assert main(["exempt", "remove", "partner.example.cn", *st]) == 2
    assert "no exemption for it" in capsys.readouterr().err
    assert main(["exempt", "list", "--all", "--json", *st]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["state"], row["created_by"], row["lifted_by"], row["lift_reason"]) == ("lifted", "li", "wang", "filed")
    assert main(["block", "list", "--json", *st]) == 0
    assert json.loads(capsys.readouterr().out) == []  # an exemption is not a closure order


def test_check_config_names_the_store_and_warns_when_it_does_not_answer(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from tests.integration.nsdaemon import write_records

    records = tmp_path / "records.csv"
    write_records(records, 3)
    cfg = tmp_path / "beiand.toml"
    base = f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n[capture]\ninterfaces = ["lo"]\n[records]\nfiles = ["{records}"]\n'
    cfg.write_text(base, encoding="utf-8")
    assert main(["check-config", str(cfg)]) == 0
    assert "created at the daemon's first start" in capsys.readouterr().out
    assert main(["block", "add", "a.example", "--order", "1", "--config", str(cfg)]) == 0
    capsys.readouterr()
    assert main(["check-config", str(cfg)]) == 0
    assert "(schema 2, version 1, 0 gateway(s) following it)" in capsys.readouterr().out
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg.write_text(base + f'[store]\nurl = "postgresql://beiand@127.0.0.1:{port}/beiand"\nconnect_timeout = 1\n', encoding="utf-8")
    assert main(["check-config", str(cfg)]) == 0  # a warning: the daemon would fail static
    assert f"store: decision store postgresql://beiand@127.0.0.1:{port}/beiand" in capsys.readouterr().err
