"""The compiled twin of the hot path (issue 21): which modules Cython compiles, and which path runs.

The modules in ``COMPILED`` are ordinary Python, the reference and the fallback. ``setup.py``
compiles the same ``.py`` files with Cython (pure-Python mode: one source, no second copy to drift)
into extension modules beside them; Python's import system prefers an extension module to a
``.py`` of the same name. A finder installed by ``beiand/__init__.py`` decides per module:

* ``BEIAND_NO_EXTENSIONS=1`` (any value but ``""``/``0``): the ``.py`` source, always;
* no extension built, or one built from another version of the source (a checkout edited or
  merged since ``pip install``): the ``.py`` source, and ``status()`` says why;
* otherwise the extension.

``beiand --version`` prints ``summary()``; ``tests/unit/test_extensions.py`` fails when the
extensions are missing or stale while not disabled, so ``make test`` always tests what a gateway runs.
``pure_twins()`` loads the ``.py`` twins beside the compiled ones, for tests that compare both.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

# Dependency order (a module after the ones it imports): pure_twins() loads them in this order.
COMPILED: tuple[str, ...] = (
    "beiand.net.link",
    "beiand.net.names",
    "beiand.net.reassembly",
    "beiand.net.dns",
    "beiand.net.http",
    "beiand.net.tls",
    "beiand.net.quic",
    "beiand.net.conns",
    "beiand.net.decoder",
    "beiand.capture.pcap",
    "beiand.records.index",
    "beiand.policy.verdict",
    "beiand.accesslog.format",
)
ENV = "BEIAND_NO_EXTENSIONS"
# Written by setup.py's build_ext beside the package: module → sha256 of the source it compiled.
HASHES = "_extensions.json"
PACKAGE = Path(__file__).resolve().parent


def disabled() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


def source_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _built_hashes() -> dict[str, str]:
    try:
        data = json.loads((PACKAGE / HASHES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


# module → why its .py source runs instead of its extension (absent: the extension runs)
_why_pure: dict[str, str] = {}
_force_pure = False


def _extension_file(directory: str, leaf: str) -> str | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        p = os.path.join(directory, leaf + suffix)
        if os.path.exists(p):
            return p
    return None


class _Finder(importlib.abc.MetaPathFinder):
    """Chooses the ``.py`` source of a compiled module when the extension must not (or cannot) run."""

    def __init__(self) -> None:
        self._hashes: dict[str, str] | None = None

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None,
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _NAMES:
            return None
        leaf = fullname.rpartition(".")[2]
        for directory in path or ():
            src = os.path.join(directory, leaf + ".py")
            if not os.path.exists(src):
                continue
            if _force_pure:
                why = "twin"
            elif disabled():
                why = f"{ENV}=1"
            elif _extension_file(directory, leaf) is None:
                why = "not built"
            else:
                if self._hashes is None:
                    self._hashes = _built_hashes()
                if self._hashes.get(fullname) == source_hash(Path(src)):
                    _why_pure.pop(fullname, None)
                    return None  # the extension, found by the ordinary path finder
                why = "stale: the source changed since the build (pip install -e . again)"
            if why != "twin":
                _why_pure[fullname] = why
            return importlib.util.spec_from_file_location(fullname, src)
        return None


_NAMES = frozenset(COMPILED)
_FINDER = _Finder()


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (``beiand/__init__.py`` calls this once)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _FINDER)


def is_compiled(module: ModuleType) -> bool:
    f = getattr(module, "__file__", None) or ""
    return f.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def status() -> dict[str, str]:
    """Every compiled-twin module → ``"compiled"`` or ``"pure (<why>)"`` (imports them)."""
    out = {}
    for name in COMPILED:
        mod = importlib.import_module(name)
        out[name] = "compiled" if is_compiled(mod) else f"pure ({_why_pure.get(name, 'unknown')})"
    return out


def summary() -> str:
    """One line for ``beiand --version``: which path runs, and which modules are compiled."""
    st = status()
    short = [n.removeprefix("beiand.") for n, s in st.items() if s == "compiled"]
    if disabled():
        return f"hot path: pure Python ({ENV}=1)"
    if len(short) == len(st):
        return f"hot path: compiled (Cython): {', '.join(short)}"
    pure = [f"{n.removeprefix('beiand.')} {s}" for n, s in st.items() if s != "compiled"]
    if not short:
        return f"hot path: pure Python (extensions {'; '.join(sorted(set(s for s in st.values())))})"
    return f"hot path: mixed: compiled {', '.join(short)}; {'; '.join(pure)}"


@contextmanager
def _swapped(names: Sequence[str]) -> Iterator[dict[str, ModuleType]]:
    saved = {n: sys.modules[n] for n in names if n in sys.modules}
    parents = {n: getattr(sys.modules.get(n.rpartition(".")[0]), n.rpartition(".")[2], None) for n in names}
    for n in names:
        sys.modules.pop(n, None)
    loaded: dict[str, ModuleType] = {}
    try:
        yield loaded
    finally:
        for n in names:
            if n in sys.modules:
                loaded.setdefault(n, sys.modules[n])
            sys.modules.pop(n, None)
        sys.modules.update(saved)
        for n, mod in parents.items():
            parent = sys.modules.get(n.rpartition(".")[0])
            if parent is not None and mod is not None:
                setattr(parent, n.rpartition(".")[2], mod)


_twins: dict[str, ModuleType] | None = None


def pure_twins() -> dict[str, ModuleType]:
    """The ``.py`` twin of every compiled module, loaded beside it (not in ``sys.modules``).

    The twins import each other (a pure decoder calls the pure DNS parser); everything else
    (the model, errors) is shared, so outputs compare with ``==``. Loaded once per process.
    """
    global _twins, _force_pure
    if _twins is None:
        for name in COMPILED:
            importlib.import_module(name)  # parents and shared modules first
        _force_pure = True
        try:
            with _swapped(COMPILED) as loaded:
                for name in COMPILED:
                    importlib.import_module(name)
        finally:
            _force_pure = False
        _twins = loaded
    return _twins


def implementations() -> dict[str, dict[str, ModuleType]]:
    """``{"compiled": modules as imported, "pure": their twins}`` (when extensions are off, both pure)."""
    return {"compiled": {n: importlib.import_module(n) for n in COMPILED}, "pure": pure_twins()}
