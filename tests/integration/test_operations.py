"""Operations artefacts: systemd units, Prometheus rules, the dashboard, docs that cannot drift."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from beiand.cli import main
from beiand.runtime.settings import reference

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed (scripts/system-deps installs it)")
    return path


@pytest.fixture(scope="module")
def units(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The units with ExecStart pointing at this checkout's beiand (verify needs the binary)."""
    d = tmp_path_factory.mktemp("units")
    exe = str(Path(sys.executable).parent / "beiand")
    for u in (ROOT / "systemd").iterdir():
        (d / u.name).write_text(u.read_text().replace("/opt/beiand/bin/beiand", exe))
    return d


@pytest.mark.parametrize("unit", ["beiand.service", "beiand-audit.service", "beiand-audit.timer", "beiand-isms.service"])
def test_systemd_analyze_verify_prints_nothing(units: Path, unit: str) -> None:
    need("systemd-analyze")
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(units / unit)], capture_output=True, text=True, cwd=units)
    # verify exits 0 on ignored bad values: any output is a failure.
    assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), r.stderr + r.stdout


@pytest.mark.parametrize(("unit", "bar"), [("beiand.service", 2.5), ("beiand-audit.service", 2.5), ("beiand-isms.service", 2.0)])
def test_systemd_security_exposure(units: Path, unit: str, bar: float) -> None:
    need("systemd-analyze")
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", str(units / unit)], capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= bar, r.stdout


def test_service_has_what_the_daemon_needs() -> None:
    text = (ROOT / "systemd" / "beiand.service").read_text()
    for line in ("Type=notify", "WatchdogSec=", "ExecReload=/bin/kill -HUP $MAINPID", "AmbientCapabilities=CAP_NET_RAW CAP_NET_ADMIN",
                 "StateDirectory=beiand", "LogsDirectory=beiand", "ConfigurationDirectory=beiand", "ProtectSystem=strict",
                 "AF_PACKET", "AF_NETLINK", "MemoryDenyWriteExecute=yes", "SystemCallFilter=@system-service", "User=beiand"):
        assert line in text, line


def test_prometheus_rules_check_and_unit_tests() -> None:
    promtool = need("promtool")
    r = subprocess.run([promtool, "check", "rules", str(ROOT / "rules" / "beiand.rules.yml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert subprocess.run([sys.executable, str(ROOT / "rules" / "render_tests.py"), "--check"]).returncode == 0, \
        "rules/beiand.rules.test.yml is stale: run python rules/render_tests.py"
    r = subprocess.run([promtool, "test", "rules", "beiand.rules.test.yml"], capture_output=True, text=True, cwd=ROOT / "rules")
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_every_alert_has_a_unit_test_firing_and_one_not_firing() -> None:
    rules = yaml.safe_load((ROOT / "rules" / "beiand.rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((ROOT / "rules" / "beiand.rules.test.in.yml").read_text())
    fired: set[str] = set()
    quiet: set[str] = set()
    for t in tests["tests"]:
        instances = {m.group(1) for s in t["input_series"] for m in [re.search(r'instance="([^"]+)"', s["series"])] if m}
        for a in t.get("alert_rule_test", []):
            if a.get("exp_alerts"):
                fired.add(a["alertname"])
                # Another instance in the same input that is not expected to fire: a "not firing" case.
                if len(instances) > len(a["exp_alerts"]):
                    quiet.add(a["alertname"])
            else:
                quiet.add(a["alertname"])
    assert alerts <= fired, alerts - fired
    assert alerts <= quiet, alerts - quiet
    for g in rules["groups"]:
        for r in g["rules"]:
            if "alert" in r:
                assert {"summary", "description", "runbook"} <= set(r["annotations"]), r["alert"]


def concrete(expr: str) -> str:
    return expr.replace("$__rate_interval", "1m").replace("$__range", "5m").replace("$instance", ".*")


def test_dashboard_is_current_and_every_query_parses(tmp_path: Path) -> None:
    promtool = need("promtool")
    assert subprocess.run([sys.executable, str(ROOT / "dashboards" / "build.py"), "--check"]).returncode == 0, \
        "dashboards/beiand.json is stale: run python dashboards/build.py"
    dash = json.loads((ROOT / "dashboards" / "beiand.json").read_text())
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource", "instance"}
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dash["panels"])
    rules = [{"record": f"dash:expr{i}", "expr": concrete(e)} for i, e in enumerate(exprs)]
    f = tmp_path / "dash.rules.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dash", "rules": rules}]}))
    r = subprocess.run([promtool, "check", "rules", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_configuration_reference_is_generated_from_the_schema() -> None:
    assert (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8") == reference(), \
        "docs/configuration.md is stale: beiand check-config --reference > docs/configuration.md"


def test_example_config_is_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(ROOT / "examples" / "beiand.toml")]) == 0
    assert "ok" in capsys.readouterr().out


def _realtime_dropin() -> str:
    """The drop-in docs/operations.md gives for capture.realtime_priority."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text[text.index("## Capture priority"):]
    m = re.search(r"```ini\n(.*?)```", section, re.S)
    assert m, "no ini block in the capture-priority section"
    return m.group(1)


def test_realtime_dropin_allows_sched_setscheduler(units: Path, tmp_path: Path) -> None:
    """The documented drop-in must let the workers' sched_setscheduler(SCHED_FIFO) through the unit's filter."""
    need("systemd-analyze")
    d = tmp_path / "units"
    d.mkdir()
    shutil.copy(units / "beiand.service", d / "beiand.service")
    (d / "beiand.service.d").mkdir()
    (d / "beiand.service.d" / "realtime.conf").write_text(_realtime_dropin())
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(d / "beiand.service")], capture_output=True, text=True, cwd=d)
    assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), r.stderr + r.stdout
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", str(d / "beiand.service")], capture_output=True, text=True)
    lines = {ln.split()[1].split("=")[0] + "=" + (ln.split()[1].split("=", 1)[1] if "=" in ln.split()[1] else ""): ln
             for ln in r.stdout.splitlines() if ln[:1] in "✓✗" and len(ln.split()) > 1}
    assert "sched_setscheduler is allowed" in lines["SystemCallFilter=~@resources"], r.stdout
    assert lines["RestrictRealtime="].startswith("✗"), r.stdout  # the drop-in was read
    assert lines["CapabilityBoundingSet=~CAP_SYS_(NICE|RESOURCE)"].startswith("✗"), r.stdout
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout)
    assert m and float(m.group(1)) <= 2.5, r.stdout
