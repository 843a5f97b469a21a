"""``beiand isms status|commands|report --now`` on a config with ISMS enabled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from beiand.cli import main
from beiand.isms.store import CommandStore
from beiand.isms.wire.model import Rule, SecurityCommand
from tests import isms_double as dbl


def make_config(tmp_path: Path, mode: int = 0o600) -> Path:
    sec = tmp_path / "secrets"
    sec.mkdir()
    for n, v in (("user_key", dbl.USER_KEY), ("enc_key", dbl.ENC_KEY), ("iv", dbl.IV), ("auth_key", dbl.AUTH_KEY)):
        (sec / n).write_bytes(v + b"\n")
        os.chmod(sec / n, mode)
    cfg = tmp_path / "beiand.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n[accesslog]\ndirectory = "{tmp_path / "log"}"\n'
                   f'[isms]\nenabled = true\nidc_id = "{dbl.IDC_ID}"\nhouse_id = "H1"\nsecrets_dir = "secrets"\n')
    return cfg


def test_status_commands_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = make_config(tmp_path)
    s = CommandStore(tmp_path / "state", house_id="H1")
    s.apply_security(SecurityCommand(5, 2, 0, (Rule(1, "bad.example"),)), 0.0)
    s.apply_security(SecurityCommand(6, 2, 0, (Rule(3, "词"),)), 0.0)
    s.save()
    assert main(["isms", "status", "--config", str(cfg), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert (st["commands"], st["filter"], st["refused"][0]["commandId"]) == (1, 1, 6)
    assert main(["isms", "commands", "--config", str(cfg), "--json"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert (row["commandId"], row["type"], row["window"]) == (5, "filter", "in force")
    assert main(["isms", "report", "--now", "--config", str(cfg), "--json"]) == 0
    w = json.loads(capsys.readouterr().out)["written"]
    assert set(w) == {"7", "8", "9", "4", "5"}  # no command went through the endpoint: no DT 10
    assert len(list((tmp_path / "state" / "isms" / "spool" / "7").glob("*/*.xml"))) == 1


def test_secrets_readable_by_others_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = make_config(tmp_path, 0o644)
    assert main(["isms", "report", "--now", "--config", str(cfg)]) == 2
    assert "readable by others" in capsys.readouterr().err


def test_check_config_checks_the_isms_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = make_config(tmp_path, 0o640)
    assert main(["check-config", str(cfg)]) == 2
    assert "isms:" in capsys.readouterr().err
    os.chmod(tmp_path / "secrets" / "iv", 0o600)
    for n in ("user_key", "enc_key", "auth_key"):
        os.chmod(tmp_path / "secrets" / n, 0o600)
    main(["check-config", str(cfg)])
    assert "isms: idcId" in capsys.readouterr().out


def test_serve_refuses_a_config_that_is_not_a_cus_with_the_reason(tmp_path: Path) -> None:
    """Review of issue 30, F10: a gateway's config (isms.mode = "fleet", no idcId, no ack_url) given
    to `beiand isms serve` exits 2 naming the key, never a traceback or a CU refusing every command."""
    from tests.integration.nsdaemon import write_records

    write_records(tmp_path / "records.csv", 3)
    cfg = tmp_path / "beiand.toml"
    base = (f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n[accesslog]\ndirectory = "{tmp_path / "log"}"\n'
            f'[records]\nfiles = ["{tmp_path / "records.csv"}"]\n[isms]\nenabled = true\nmode = "fleet"\n')
    cfg.write_text(base, encoding="utf-8")

    def serve() -> subprocess.CompletedProcess[str]:  # a process of its own: serve configures logging for good
        return subprocess.run([sys.executable, "-m", "beiand.cli", "isms", "serve", "--config", str(cfg), "--log-format", "text"],
                              capture_output=True, text=True, timeout=60)

    r = serve()
    assert r.returncode == 2 and "isms.idc_id: required" in r.stderr, r.stderr
    sec = dbl.write_secrets(tmp_path / "secrets")
    cfg.write_text(base + f'idc_id = "{dbl.IDC_ID}"\nsecrets_dir = "{sec}"\n', encoding="utf-8")
    r = serve()
    assert r.returncode == 2 and "isms.ack_url: required" in r.stderr and "Traceback" not in r.stderr, r.stderr
