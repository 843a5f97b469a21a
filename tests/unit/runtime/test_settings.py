"""The TOML config: every problem named with file, line and field; nothing half-applied."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beiand.cli import main
from beiand.runtime.settings import ConfigError, load_config, parse_config, reference


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
    ("[server]\nlisten = \"127.0.0.1:\u00b2\"\n", 2, "server.listen", "expected host:port"),  # "²".isdigit()
    ("[records]\nfiles = [\"/nonexistent.csv\"]\n", 2, "records.files", "no such file"),
    ("[accesslog.clickhouse]\nurl = \"ftp://x\"\n", 2, "accesslog.clickhouse.url", "http"),
    ("[enforce]\nmax_unfiled_share = 2\n", 2, "enforce.max_unfiled_share", "above the maximum"),
    ("[accesslog]\ncommit_interval = true\n", 2, "accesslog.commit_interval", "expected a number"),
    ("[nosuchsection]\n", 1, "nosuchsection", "unknown setting"),
    ("[capture]\ndns = true\nfilter = \"vlan 100 nett 10.0.0.0/8\"\n", 3, "capture.filter", "missing 'and' or 'or'"),
    ("[capture]\nfilter = \"net 10.0.0.0/33\"\n", 2, "capture.filter", "expected a prefix"),
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
    # a kernel filter longer than the kernel takes is said before the daemon starts (issue 32)
    ports = ", ".join(str(p) for p in range(8000, 8300))
    assert main(["check-config", str(cfg(tmp_path, f"[capture]\ntcp_ports = [{ports}]\n"))]) == 2
    assert "capture: BPF program of" in capsys.readouterr().err


# -- every setting is read by something (DESIGN.md: "a test fails for a config field that nothing reads") --

BEIAND = Path(__file__).resolve().parents[3] / "beiand"


def _sections() -> dict[str, type]:
    """Attribute name → section class, over the whole tree of sections (``clickhouse`` included)."""
    import dataclasses
    import typing

    from beiand.runtime.settings import Config

    out: dict[str, type] = {}

    def walk(cls: type) -> None:
        for name, tp in typing.get_type_hints(cls).items():
            if dataclasses.is_dataclass(tp):
                out[name] = tp  # type: ignore[assignment]
                walk(tp)  # type: ignore[arg-type]

    walk(Config)
    return out


def _fields_read(tree: object, sections: dict[str, type]) -> set[tuple[str, str]]:
    """(section class, field) pairs read in one module: ``<x>.<section>.<field>``, and ``<alias>.<field>``
    where the alias was assigned a section (``al = cfg.accesslog``) or is a parameter annotated with one."""
    import ast
    import dataclasses

    assert isinstance(tree, ast.AST)
    by_class = {cls.__name__: cls for cls in sections.values()}
    fields = {cls.__name__: {f.name for f in dataclasses.fields(cls)} for cls in sections.values()}  # type: ignore[arg-type]
    read: set[tuple[str, str]] = set()
    scopes = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.Module)]
    for scope in scopes:
        alias: dict[str, str] = {}
        if not isinstance(scope, ast.Module):
            for a in [*scope.args.posonlyargs, *scope.args.args, *scope.args.kwonlyargs]:
                ann = ast.unparse(a.annotation) if a.annotation else ""
                for cname in by_class:
                    if ann.strip("'\"").split(" | ")[0] == cname:
                        alias[a.arg] = cname
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Attribute) and node.value.attr in sections:
                for t in node.targets:
                    if isinstance(t, ast.Name):
                        alias[t.id] = sections[node.value.attr].__name__
        for node in ast.walk(scope):
            if not isinstance(node, ast.Attribute):
                continue
            base = node.value
            cname = ""
            if isinstance(base, ast.Attribute) and base.attr in sections:
                cname = sections[base.attr].__name__
            elif isinstance(base, ast.Name) and base.id in alias:
                cname = alias[base.id]
            if cname and node.attr in fields[cname] and node.attr not in sections:
                read.add((cname, node.attr))
    return read


def test_every_config_field_is_read_outside_config_py() -> None:
    import ast
    import dataclasses

    from beiand.runtime.settings import Config

    sections = _sections()
    read: set[tuple[str, str]] = set()
    for py in sorted(BEIAND.rglob("*.py")):
        if py.name == "config.py" and py.parent == BEIAND:
            continue
        read |= _fields_read(ast.parse(py.read_text(encoding="utf-8")), sections)
    # Config's own accessors stand for the fields they read.
    text = "\n".join(py.read_text(encoding="utf-8") for py in BEIAND.rglob("*.py") if py.name != "config.py")
    accessors = {("DaemonSection", "gateway"): ".gateway", ("DaemonSection", "workers"): ".workers",
                 ("ServerSection", "listen"): ".listen()"}
    for key, spelling in accessors.items():
        if f"cfg{spelling}" in text or f"config{spelling}" in text:
            read.add(key)
    every = {(cls.__name__, f.name) for cls in sections.values() for f in dataclasses.fields(cls)  # type: ignore[arg-type]
             if not dataclasses.is_dataclass(f.type) and f.name != "clickhouse"}
    assert Config  # the root: its sections are the fields checked
    unread = sorted(every - read)
    assert not unread, f"settings that no code outside config.py reads (wire them or deprecate them): {unread}"


def test_the_read_check_sees_a_new_unread_field() -> None:
    import ast

    sections = _sections()
    src = "def f(cfg):\n    al = cfg.accesslog\n    c = al.clickhouse\n    return cfg.records.max_loss, al.directory, c.url\n"
    read = _fields_read(ast.parse(src), sections)
    assert read == {("RecordsSection", "max_loss"), ("AccessLogSection", "directory"), ("ClickHouseSection", "url")}


def test_provider_as_string_or_list_status_map_and_policy_lists(tmp_path) -> None:
    from beiand.runtime.settings import ConfigError, parse_config
    from beiand.runtime.wiring import policy_config

    one = parse_config('[records]\nprovider = "甲云"\n')
    assert one.records.provider == ["甲云"] and policy_config(one).provider == "甲云"
    many = parse_config('[records]\nprovider = ["甲云", "甲云（北京）"]\nstatus_map = { "待复核" = "active" }\n'
                        '[policy]\nallow_suffixes = ["*.cdn.example.cn"]\nallow_prefixes = ["10.1.0.0/16"]\npending_mode = "enforce"\n')
    pc = policy_config(many)
    assert (pc.provider, pc.providers, pc.allow_suffixes, pc.allow_prefixes, pc.pending_mode.value if pc.pending_mode else None) == (
        "甲云", ("甲云（北京）",), ("cdn.example.cn",), ("10.1.0.0/16",), "enforce")
    assert many.records.status_map == {"待复核": "active"}
    with pytest.raises(ConfigError) as exc:
        parse_config('[records]\nstatus_map = { "待复核" = "gone" }\n[policy]\nallow_prefixes = ["x"]\n', "b.toml")
    assert exc.value.problems[0].startswith("b.toml:2: records.status_map: '待复核' = 'gone': expected one of active")
    assert exc.value.problems[1] == "b.toml:4: policy.allow_prefixes: item 1: 'x' is not a CIDR prefix"


def test_a_deprecated_key_is_accepted_with_a_warning() -> None:
    from beiand.runtime.settings import parse_config

    cfg = parse_config("[enforce]\ninline = true\nip_block_seconds = 600\n", "c.toml")
    assert cfg.enforce.inline
    assert cfg.warnings == ("c.toml:3: enforce.ip_block_seconds: deprecated and ignored: an unnamed (IP-only) flow is reset "
                            "alone, never its address and port for everyone; host- or prefix-wide blocking is a closure order "
                            "(beiand block add); remove the key",)


def test_capture_filter_accepted(tmp_path: Path) -> None:
    c = load_config(cfg(tmp_path, '[capture]\nfilter = "vlan 100 and not host 198.51.100.7"\n'))
    assert c.capture.filter == "vlan 100 and not host 198.51.100.7"


def test_inline_the_name_budget_must_fit_what_the_kernel_queues() -> None:
    """Issue 36: past ``enforce.connbytes`` the kernel queues no more of a flow; a name budget
    beyond it would let a flow through unjudged. Passive, no such bound."""
    with pytest.raises(ConfigError) as err:
        parse_config("[enforce]\ninline = true\nconnbytes = 8\n\n[reassembly]\nname_packets = 7\n", "n.toml")
    assert "n.toml:6: reassembly.name_packets" in str(err.value) and "connbytes" in str(err.value)
    assert parse_config("[enforce]\ninline = true\nconnbytes = 12\n[reassembly]\nname_packets = 10\n").reassembly.name_packets == 10
    assert parse_config("[reassembly]\nname_packets = 40\nname_seconds = 2.5\n").reassembly.name_seconds == 2.5


def test_the_automatic_name_budget_fits_the_kernel_and_old_configs_still_load() -> None:
    """Review of issue 36: an inline config from before (connbytes below 8, no name_packets) still
    loads; the budget then follows connbytes. 1 is refused; connbytes below 4 is warned about."""
    from beiand.runtime.wiring import name_packets

    assert name_packets(parse_config("")) == 6
    assert name_packets(parse_config("[enforce]\ninline = true\n")) == 6
    assert name_packets(parse_config("[enforce]\ninline = true\nconnbytes = 5\n")) == 3
    low = parse_config("[enforce]\ninline = true\nconnbytes = 3\n", "w.toml")
    assert name_packets(low) == 2 and any("w.toml:3: enforce.connbytes" in w for w in low.warnings)
    with pytest.raises(ConfigError) as err:
        parse_config("[reassembly]\nname_packets = 1\n", "o.toml")
    assert "o.toml:2: reassembly.name_packets" in str(err.value)
