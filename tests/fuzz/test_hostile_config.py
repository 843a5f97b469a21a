"""Issue 17 item 5: hostile config files are refused with ``file:line: field: reason``, never a
traceback; secrets readable by others are refused unless the operator says otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beiand.cli import main
from beiand.runtime.settings import ConfigError, load_config, parse_config


def problems(tmp_path: Path, text: str) -> list[str]:
    p = tmp_path / "beiand.toml"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    return exc.value.problems


@pytest.mark.parametrize(("text", "line", "field", "why"), [
    ("[accesslog]\ncommit_interval = nan\n", 2, "accesslog.commit_interval", "finite"),
    ("[accesslog]\n\ncommit_interval = inf\n", 3, "accesslog.commit_interval", "finite"),
    ("[records]\nmax_loss = -nan\n", 2, "records.max_loss", "finite"),
    ("[daemon]\nwatch_interval = inf\n", 2, "daemon.watch_interval", "finite"),
    ("[capture]\ninterfaces = []\n", 2, "capture.interfaces", "at least one"),
    ("[records]\nfiles = []\n", 2, "records.files", "at least one"),
    ('[daemon]\ngateway = "gw\\u0007one"\n', 2, "daemon.gateway", "control character"),
    ('[daemon]\ngateway = "gw\\none"\n', 2, "daemon.gateway", "control character"),
    ('[enforce]\ncontact = "a\\u001b[31m"\n', 2, "enforce.contact", "control character"),
    ('[records]\nfiles = ["../../etc/shadow"]\n', 2, "records.files", "'..'"),
    ('[inventory]\nfile = "inv/../../../x.csv"\n', 2, "inventory.file", "'..'"),
    ('[accesslog]\ndirectory = "/var/log/beiand\\u0000x"\n', 2, "accesslog.directory", "control character"),
])
def test_hostile_values_are_refused_with_file_line_and_field(tmp_path, text, line, field, why):
    p = problems(tmp_path, text)
    mine = [x for x in p if f": {field}: " in x]
    assert mine, p
    assert mine[0].startswith(f"{tmp_path / 'beiand.toml'}:{line}: {field}: "), mine[0]
    assert why in mine[0], mine[0]


def secret(tmp_path: Path, mode: int) -> Path:
    k = tmp_path / "key"
    k.write_bytes(b"0123456789abcdef\n")
    os.chmod(k, mode)
    return k


@pytest.mark.parametrize("key", ["accesslog.hmac_key_file", "server.token_file", "accesslog.clickhouse.password_file"])
def test_a_secret_readable_by_others_is_refused(tmp_path, key):
    k = secret(tmp_path, 0o644)
    section, _, name = key.rpartition(".")
    p = problems(tmp_path, f'[{section}]\n{name} = "{k}"\n')
    assert any(x.startswith(f"{tmp_path / 'beiand.toml'}:2: {key}: ") and "readable or writable by others" in x for x in p), p


def test_a_private_secret_is_accepted_and_the_switch_turns_refusal_into_a_warning(tmp_path):
    k = secret(tmp_path, 0o600)
    p = tmp_path / "beiand.toml"
    p.write_text(f'[server]\ntoken_file = "{k}"\n')
    load_config(p)
    os.chmod(k, 0o644)
    p.write_text(f'[daemon]\nsecret_permissions = "warn"\n[server]\ntoken_file = "{k}"\n')
    c = load_config(p)
    assert any("server.token_file" in w and "readable or writable by others" in w for w in c.warnings)


def test_group_read_is_for_the_daemons_own_group_only(tmp_path):
    """docs/install.md: 0640 root:beiand (the unit runs as beiand:beiand); another group may not read it."""
    import grp

    k = secret(tmp_path, 0o640)
    p = tmp_path / "beiand.toml"
    p.write_text(f'[server]\ntoken_file = "{k}"\n')
    os.chown(k, 0, 0)
    load_config(p)  # root's group
    other = next((g for g in grp.getgrall() if g.gr_gid not in (0, os.getegid()) and g.gr_name != "beiand"), None)
    assert other is not None
    os.chown(k, 0, other.gr_gid)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert f"readable by group {other.gr_name}" in exc.value.problems[0]


def test_check_config_prints_no_traceback_for_junk(tmp_path, capsys):
    p = tmp_path / "beiand.toml"
    for body in (b"\xff\xfe\x00garbage", b"[a]\n" * 3, b"x = [" * 2000, b"[" + b"a." * 5000 + b"a]\n"):
        p.write_bytes(body)
        assert main(["check-config", str(p)]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and str(p) in err


SCALARS = st.one_of(st.floats(allow_nan=True), st.integers(-2**70, 2**70), st.text(max_size=20), st.booleans(),
                    st.just([]), st.lists(st.text(max_size=5), max_size=3))
KEYS = st.sampled_from(["daemon.gateway", "daemon.workers", "daemon.watch_interval", "capture.interfaces", "capture.tcp_ports",
                        "accesslog.commit_interval", "accesslog.retention_days", "records.max_loss", "records.files",
                        "server.listen", "reassembly.tcp_bytes", "policy.allow", "enforce.contact", "inventory.file"])


def toml_value(v: object) -> str:
    import json
    import math

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(v) if isinstance(v, str) else str(v)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.dictionaries(KEYS, SCALARS, max_size=4))
def test_fuzzed_configs_load_or_are_refused_never_raise(tmp_path, entries):
    tables: dict[str, list[str]] = {}
    for k, v in entries.items():
        section, _, name = k.partition(".")
        tables.setdefault(section, []).append(f"{name} = {toml_value(v)}")
    text = "".join(f"[{s}]\n" + "\n".join(lines) + "\n" for s, lines in tables.items())
    try:
        parse_config(text, str(tmp_path / "f.toml"))
    except ConfigError as exc:
        assert all(p.startswith(str(tmp_path / "f.toml") + ":") for p in exc.problems), exc.problems
