"""Copy the operations artefacts into the wheel as package data (``beiand/share/``).

They live at the top level of the checkout (``systemd/``, ``rules/``, ``dashboards/``,
``examples/``, ``LICENSE``), where the tests and the docs use them; ``beiand install-files``
lays them out on a gateway from the installed package. An editable install reads them from the
checkout instead (``beiand.share``), so nothing is duplicated in the tree.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# source (relative to the checkout) → destination under beiand/share/
SHARE = {
    "LICENSE": "LICENSE",
    "systemd/beiand.service": "systemd/beiand.service",
    "systemd/beiand-audit.service": "systemd/beiand-audit.service",
    "systemd/beiand-audit.timer": "systemd/beiand-audit.timer",
    "systemd/beiand-isms.service": "systemd/beiand-isms.service",
    "rules/beiand.rules.yml": "rules/beiand.rules.yml",
    "rules/beiand.rules.test.yml": "rules/beiand.rules.test.yml",
    "dashboards/beiand.json": "dashboards/beiand.json",
    "examples/beiand.toml": "examples/beiand.toml",
    "examples/records.csv": "examples/records.csv",
    "examples/inventory.csv": "examples/inventory.csv",
}


class BuildPyWithShare(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        dest = Path(self.build_lib) / "beiand" / "share"
        for src, rel in SHARE.items():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(HERE / src, target)


# -- the compiled twin of the hot path (issue 21, beiand/extensions.py) -----------------------------
# The same .py sources, compiled by Cython in pure-Python mode (typed by an optional .pxd beside a
# module). No compiler, no Python headers or no Cython: a warning, and the pure-Python package.
# BEIAND_NO_EXTENSIONS=1 at build time builds none.


def _compiled_modules() -> tuple[str, ...]:
    """COMPILED from beiand/extensions.py, read without importing the package."""
    tree = ast.parse((HERE / "beiand" / "extensions.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "COMPILED":
            return tuple(ast.literal_eval(node.value))  # type: ignore[arg-type]
    raise SystemExit("setup.py: no COMPILED in beiand/extensions.py")


COMPILED = _compiled_modules()
DIRECTIVES = {
    "language_level": 3,
    # Annotations stay hints, as in CPython: `ts: float` must not turn an int timestamp into a C double
    # (outputs would differ from the reference). Types come from the .pxd files only.
    "annotation_typing": False,
    # No types inferred from assignments either: `buf = bytearray(n)` made `buf[i::w] = some_bytes`
    # raise TypeError in the compiled twin (the columnar sealed blocks, issue 19) where Python accepts it.
    "infer_types": False,
    "binding": True,
    "embedsignature": False,
}


def _warn(msg: str) -> None:
    bar = "*" * 78
    print(f"\n{bar}\nWARNING (beiand): {msg}\nbeiand is installed without its compiled hot path: it runs, slower, in pure "
          f"Python.\nInstall gcc and python3-dev (scripts/system-deps does) and install again.\n{bar}\n", file=sys.stderr)


class BuildExtOptional(build_ext):
    """Cythonize at build time; any failure leaves the pure-Python modules (with a warning)."""

    def run(self) -> None:
        if os.environ.get("BEIAND_NO_EXTENSIONS", "") not in ("", "0"):
            print("beiand: BEIAND_NO_EXTENSIONS set: building no extensions", file=sys.stderr)
            self.extensions = []
            return
        try:
            from Cython.Build import cythonize
        except ImportError:
            _warn("Cython is not installed")
            self.extensions = []
            return
        # The sources as they are read for compiling: an edit made while the build runs leaves the
        # build stale (the .py then runs), never a compiled module taken for the edited source.
        hashes = {m: hashlib.sha256((HERE / Path(*m.split(".")).with_suffix(".py")).read_bytes()).hexdigest() for m in COMPILED}
        sources = [Extension(m, [str(Path(*m.split(".")).with_suffix(".py"))]) for m in COMPILED]
        try:
            generated = {e.name: e.sources for e in cythonize(
                sources, compiler_directives=DIRECTIVES, quiet=True, build_dir=str(Path(self.build_temp) / "cython"))}
            for ext in self.extensions:  # the declared ones, as build_ext finalised them: now from C
                ext.sources = generated[ext.name]
            self.parallel = self.parallel or os.cpu_count() or 1
            super().run()
        except Exception as exc:  # a compiler missing, headers missing, a build error: pure Python
            _warn(f"building the extensions failed: {exc}")
            self.extensions = []
            return
        out = Path(HERE if self.inplace else self.build_lib) / "beiand" / "_extensions.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n", encoding="utf-8")

    def get_outputs(self) -> list[str]:
        outs = list(super().get_outputs())
        if self.extensions and not self.inplace:
            outs.append(str(Path(self.build_lib) / "beiand" / "_extensions.json"))
        return outs


setup(
    cmdclass={"build_py": BuildPyWithShare, "build_ext": BuildExtOptional},
    # Declared so that setuptools runs build_ext (and marks the wheel as binary); the real list is
    # made by BuildExtOptional.run from COMPILED.
    ext_modules=[Extension(m, [str(Path(*m.split(".")).with_suffix(".py"))]) for m in COMPILED],
)
