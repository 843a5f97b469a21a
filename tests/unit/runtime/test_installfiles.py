"""`beiand install-files`: the shipped artefacts laid out under a prefix; a config is never overwritten."""

from __future__ import annotations

import os
import stat

from beiand.cli import main
from beiand.runtime.installfiles import CONFIG, SHARE_DIR, install_files


def test_lays_out_units_rules_dashboard_and_config(tmp_path, capsys):
    assert main(["install-files", "--prefix", str(tmp_path)]) == 0
    for rel in ("etc/systemd/system/beiand.service", "etc/systemd/system/beiand-audit.timer",
                f"{SHARE_DIR}/rules/beiand.rules.yml", f"{SHARE_DIR}/dashboards/beiand.json", f"{SHARE_DIR}/LICENSE",
                f"{SHARE_DIR}/examples/beiand.toml", f"{SHARE_DIR}/examples/records.csv", CONFIG):
        assert (tmp_path / rel).is_file(), rel
    assert stat.S_IMODE(os.stat(tmp_path / CONFIG).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(tmp_path / "etc/beiand").st_mode) == 0o750
    assert "Apache License" in (tmp_path / SHARE_DIR / "LICENSE").read_text()
    capsys.readouterr()
    # The installed example config is complete: check-config accepts it as it lies.
    assert main(["check-config", str(tmp_path / SHARE_DIR / "examples/beiand.toml")]) == 0


def test_never_overwrites_an_edited_config_and_is_idempotent(tmp_path):
    install_files(tmp_path)
    conf = tmp_path / CONFIG
    conf.write_text("# mine\n")
    unit = tmp_path / "etc/systemd/system/beiand.service"
    unit.write_text("stale\n")
    steps = {s.path: s.action for s in install_files(tmp_path)}
    assert conf.read_text() == "# mine\n" and steps[conf] == "kept"
    assert steps[unit] == "updated" and "ExecStart=" in unit.read_text()  # units are ours: replaced on upgrade
    again = install_files(tmp_path)
    assert {s.action for s in again if s.path != conf} == {"unchanged"}


def test_dry_run_changes_nothing(tmp_path):
    steps = install_files(tmp_path, dry_run=True)
    assert steps and all(s.action.startswith("would-") for s in steps)
    assert not any(tmp_path.iterdir())


def test_version_names_package_python_and_kernel(capsys):
    import platform

    import pytest

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("beiand 0.") and platform.python_version() in line and platform.release() in line


def test_lab_without_the_lab_extra_says_so_in_one_line(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyroute2" else real(name, *a))
    assert main(["lab"]) == 2
    msg = capsys.readouterr().err.strip()
    assert "\n" not in msg and "pip install 'beiand[lab]'" in msg and "pyroute2" in msg


def test_install_doc_names_every_place_install_files_writes() -> None:
    from pathlib import Path

    from beiand.runtime.installfiles import SHARED, UNITS

    doc = (Path(__file__).resolve().parents[3] / "docs" / "install.md").read_text()
    assert "/etc/systemd/system/" in doc and "/" + CONFIG in doc and "install-files --prefix /" in doc
    for unit in UNITS:
        assert unit in doc, unit
    for rel in SHARED:
        assert Path(rel).name in doc, rel
    assert "/" + SHARE_DIR in doc
    assert "python3.11/site-packages" not in doc  # no hard-coded .pth (issue 18)
    assert doc.index("pip install beiand-") < doc.index("beiand install-files --prefix /")
