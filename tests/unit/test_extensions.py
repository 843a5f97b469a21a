"""The compiled twin of the hot path (issue 21): built, chosen, switched off, and never stale."""

from __future__ import annotations

import ast
import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path

import pytest

from beiand import extensions

ROOT = Path(__file__).resolve().parents[2]


def test_extensions_are_built_unless_disabled() -> None:
    """`make test` tests what a gateway runs: the compiled twin, unless BEIAND_NO_EXTENSIONS says not."""
    st = extensions.status()
    if extensions.disabled():
        assert all(s.startswith("pure") for s in st.values()), st
    else:
        missing = {n: s for n, s in st.items() if s != "compiled"}
        assert not missing, (f"the compiled hot path is missing or stale: {missing}; build it with gcc and python3-dev "
                             "(scripts/system-deps build) and `pip install -e .`, or set BEIAND_NO_EXTENSIONS=1")


def test_every_compiled_module_has_its_source_and_setup_builds_the_same_list() -> None:
    for name in extensions.COMPILED:
        assert (ROOT / Path(*name.split("."))).with_suffix(".py").is_file(), name
    # setup.py reads COMPILED from extensions.py by parsing it: the same tuple, in the same form
    tree = ast.parse((ROOT / "beiand/extensions.py").read_text(encoding="utf-8"))
    (node,) = [n for n in tree.body if isinstance(n, ast.AnnAssign) and getattr(n.target, "id", "") == "COMPILED"]
    assert tuple(ast.literal_eval(node.value)) == extensions.COMPILED  # type: ignore[arg-type]
    assert "_compiled_modules()" in (ROOT / "setup.py").read_text(encoding="utf-8")


def _run(code: str, **env: str) -> str:
    e = {k: v for k, v in os.environ.items() if k != extensions.ENV}
    e.update(env)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=e, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_no_extensions_forces_every_module_to_its_source() -> None:
    out = _run("import importlib, beiand.extensions as e\n"
               "print(all(importlib.import_module(n).__file__.endswith('.py') for n in e.COMPILED))\n"
               "print(e.summary())", BEIAND_NO_EXTENSIONS="1")
    assert out.splitlines() == ["True", "hot path: pure Python (BEIAND_NO_EXTENSIONS=1)"]


def test_version_says_which_path_runs() -> None:
    for env, expect in (({"BEIAND_NO_EXTENSIONS": "1"}, "hot path: pure Python (BEIAND_NO_EXTENSIONS=1)"),
                        ({"BEIAND_NO_EXTENSIONS": "0"}, extensions.summary())):
        out = _run("from beiand.cli import main; main(['--version'])", **env)
        assert out.splitlines()[1] == expect, out
    if not extensions.disabled():
        assert extensions.summary().startswith("hot path: compiled (Cython): net.link, net.names")


def test_a_stale_or_missing_extension_is_not_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkout edited (or merged) since the build runs the edited .py, never the old extension."""
    (tmp_path / "mod.py").write_text("X = 2\n")
    finder = extensions._Finder()
    monkeypatch.setattr(extensions, "_NAMES", frozenset({"fakepkg.mod"}))
    monkeypatch.delenv(extensions.ENV, raising=False)
    spec = finder.find_spec("fakepkg.mod", [str(tmp_path)])
    assert spec is not None and spec.origin == str(tmp_path / "mod.py")
    assert extensions._why_pure["fakepkg.mod"] == "not built"
    (tmp_path / f"mod{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"")
    finder._hashes = {"fakepkg.mod": "0" * 64}  # built from another source
    spec = finder.find_spec("fakepkg.mod", [str(tmp_path)])
    assert spec is not None and spec.origin == str(tmp_path / "mod.py")
    assert extensions._why_pure["fakepkg.mod"].startswith("stale")
    finder._hashes = {"fakepkg.mod": extensions.source_hash(tmp_path / "mod.py")}
    assert finder.find_spec("fakepkg.mod", [str(tmp_path)]) is None  # the ordinary finder loads the extension
    monkeypatch.setenv(extensions.ENV, "1")
    spec = finder.find_spec("fakepkg.mod", [str(tmp_path)])
    assert spec is not None and spec.origin == str(tmp_path / "mod.py")
    assert finder.find_spec("other.mod", [str(tmp_path)]) is None
    extensions._why_pure.pop("fakepkg.mod", None)


def test_pure_twins_are_the_sources_and_use_each_other() -> None:
    twins = extensions.pure_twins()
    assert set(twins) == set(extensions.COMPILED)
    for name, mod in twins.items():
        assert mod.__file__ is not None and mod.__file__.endswith(".py"), name
        assert sys.modules[name] is not mod  # the imported module stays what it was
    dec = twins["beiand.net.decoder"]
    assert dec.dnsmod is twins["beiand.net.dns"] and dec.parse_client_hello is twins["beiand.net.tls"].parse_client_hello
    assert extensions.pure_twins() is twins
    import beiand.net as net_pkg

    assert net_pkg.decoder is sys.modules["beiand.net.decoder"]  # the parent package attribute restored
