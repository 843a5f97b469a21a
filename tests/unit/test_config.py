"""The TOML config: every problem named with file, line and field; nothing half-applied."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beiand.cli import main
from beiand.config import ConfigError, load_config, parse_config, reference


def cfg(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "beiand.toml"
    p.write_text(text, encoding="utf-8")
    return p


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config(cfg(tmp_path, text))
    return exc.value.problems


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("x")
    c = load_config(cfg(tmp_path, '[records]\nfiles = ["r.csv"]\n[accesslog]\nretention_days = 190\n'))
    assert c.records.files == [tmp_path / "r.csv"]
    assert c.accesslog.retention_days == 190 and c.capture.tcp_ports == [80, 443, 8080, 8443]
    assert c.listen() == ("127.0.0.1", 9640)


def test_retention_below_60_days_names_the_article_file_and_line(tmp_path: Path) -> None:
    p = problems(tmp_path, "[daemon]\nworkers = 2\n\n[accesslog]\nretention_days = 30\n")
    assert len(p) == 1 and p[0].startswith(f"{tmp_path / 'beiand.toml'}:5: accesslog.retention_days: 30 is below the minimum 60")
    assert "Order 292 art. 14" in p[0]


@pytest.mark.parametrize(("text", "line", "field", "why"), [
    ("[capture]\ntcp_ports = [80, 70000]\n", 2, "capture.tcp_ports", "above the maximum"),
    ("[capture]\ninterfaces = \"eth0\"\n", 2, "capture.interfaces", "expected a list"),
    ("[policy]\ndefault_mode = \"block-all\"\n", 2, "policy.default_mode", "expected one of"),
    ("[daemon]\nwrokers = 2\n", 2, "daemon.wrokers", "unknown setting"),
    ("[server]\nlisten = \"nowhere\"\n", 2, "server.listen", "expected host:port"),
    ("[records]\nfiles = [\"/nonexistent.csv\"]\n", 2, "records.files", "no such file"),
    ("[accesslog.clickhouse]\nurl = \"ftp://x\"\n", 2, "accesslog.clickhouse.url", "http"),
    ("[enforce]\nmax_unfiled_share = 2\n", 2, "enforce.max_unfiled_share", "above the maximum"),
    ("[accesslog]\ncommit_interval = true\n", 2, "accesslog.commit_interval", "expected a number"),
    ("[nosuchsection]\n", 1, "nosuchsection", "unknown setting"),
])
def test_each_problem_names_file_line_and_field(tmp_path: Path, text: str, line: int, field: str, why: str) -> None:
    p = problems(tmp_path, text)
    assert any(x.startswith(f"{tmp_path / 'beiand.toml'}:{line}: {field}:") and why in x for x in p), p


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    p = problems(tmp_path, "[daemon]\nworkers = -1\n[accesslog]\nretention_days = 1\n[capture]\nudp_ports = [0]\n")
    assert len(p) == 3


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    p = problems(tmp_path, "[daemon]\nworkers = = 2\n")
    assert p[0].startswith(f"{tmp_path / 'beiand.toml'}:2: not valid TOML")


@given(st.text(max_size=200))
def test_any_text_gives_a_config_or_a_config_error(text: str) -> None:
    try:
        parse_config(text, "fuzz.toml")
    except ConfigError as exc:
        assert all(p.startswith("fuzz.toml:") for p in exc.problems)


def test_reference_documents_every_key() -> None:
    ref = reference()
    for key in ("retention_days", "interfaces", "max_blocks_per_minute", "ring_block_timeout_ms", "token_file", "spill_dir"):
        assert f"`{key}`" in ref


def test_check_config_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(cfg(tmp_path, "[accesslog]\nretention_days = 59\n"))]) == 2
    assert "Order 292" in capsys.readouterr().err
    assert main(["check-config", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err
