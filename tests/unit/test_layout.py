"""``tests/unit/`` mirrors ``beiand/``: every module has ``tests/unit/<package>/test_<module>.py``
(or ``test_<module>_*.py``). A new module without one fails here, by name (as mitmproxy's CI does)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Modules tested today only through another module's test file (named after each); split their
# tests out when next touched, and take them off this list (the test fails if a file appears).
TESTED_ELSEWHERE = {
    "accesslog.reader": "accesslog/test_evidence.py, accesslog/test_damage.py, cli/test_logs.py",
    "cli.audit": "integration/test_audit_lab.py",
    "cli.block": "enforce/test_actor.py, integration/test_enforce_lab.py",
    "cli.check_config": "runtime/test_settings.py",
    "cli.common": "cli/test_main.py",
    "cli.install_files": "runtime/test_installfiles.py",
    "cli.lab": "lab/test_demo.py",
    "cli.run": "integration/test_daemon_lab.py",
    "isms.answers": "integration/test_isms_answers.py",
    "isms.reload": "integration/test_isms_reload.py",
    "enforce.packets": "enforce/test_actor.py",
    "model": "test_corpus.py",
    "net.errors": "fuzz/test_decoders_fuzz.py",
    "net.names": "net/test_decoder.py",
    "net.reassembly": "fuzz/test_reassembly_attacks.py",
    "records.formats.base": "records/test_importer.py, fuzz/test_hostile_records.py",
    "records.formats.csv": "records/test_importer.py, records/test_export_shapes.py",
    "records.formats.json": "records/test_export_shapes.py, fuzz/test_hostile_records.py",
    "records.formats.xlsx": "records/test_export_shapes.py",
    "records.generate": "records/test_importer.py",
    "report.audit.findings": "integration/test_audit_lab.py",
    "report.audit.passive": "report/test_resource.py, integration/test_audit_lab.py",
    "report.audit.report": "integration/test_audit_lab.py",
    "isms.transport.ack": "integration/test_isms_endpoint.py",
    "isms.wire.codes": "isms/test_service.py, isms/wire/test_envelope.py",
    "isms.transport.endpoint": "integration/test_isms_endpoint.py",
    "isms.wire.fields": "isms/test_reports.py",
    "isms.wire.model": "isms/wire/test_codec.py",
    "isms.transport.upload": "integration/test_isms_culite.py",
    "runtime.isms": "cli/test_isms.py, integration/test_isms_lab.py",
    "runtime.http": "integration/test_daemon_lab.py, fuzz/test_hostile_http.py",
    "runtime.ipc": "runtime/test_metrics.py, runtime/test_supervisor.py",
    "sinks.accesslog": "sinks/test_sinks.py",
}


def _modules() -> list[Path]:
    pkg = ROOT / "beiand"
    out = []
    for p in sorted(pkg.rglob("*.py")):
        rel = p.relative_to(pkg)
        if p.name in ("__init__.py", "__main__.py"):
            continue
        if rel.parts[0] == "lab" and p.name != "demo.py":  # the lab is exercised by the integration tests
            continue
        out.append(rel)
    return out


def _has_test(rel: Path) -> bool:
    d = ROOT / "tests" / "unit" / rel.parent
    return (d / f"test_{rel.stem}.py").exists() or any(d.glob(f"test_{rel.stem}_*.py"))


def _name(rel: Path) -> str:
    return ".".join(rel.with_suffix("").parts)


def test_every_module_has_a_test_file() -> None:
    missing = [_name(r) for r in _modules() if not _has_test(r) and _name(r) not in TESTED_ELSEWHERE]
    assert not missing, f"modules lacking tests/unit/<package>/test_<module>.py: {missing}"


def test_the_list_of_modules_tested_elsewhere_is_current() -> None:
    names = {_name(r): r for r in _modules()}
    stale = [n for n in TESTED_ELSEWHERE if n not in names or _has_test(names[n])]
    assert not stale, f"take these off TESTED_ELSEWHERE: {stale}"


def test_unit_test_folders_mirror_packages() -> None:
    stray = [str(d.relative_to(ROOT)) for d in (ROOT / "tests" / "unit").rglob("*")
             if d.is_dir() and d.name != "__pycache__" and not (ROOT / "beiand" / d.relative_to(ROOT / "tests" / "unit")).is_dir()]
    assert not stray, f"tests/unit folders with no package of that name: {stray}"


def test_readme_and_docs_point_inside_the_repository() -> None:
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        assert "../" not in doc.read_text(encoding="utf-8"), f"{doc.name} points outside the repository"
    assert (ROOT / "docs" / "design.md").is_file()
