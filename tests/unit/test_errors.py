"""Every error class beiand declares derives from the one root, ``beiand.errors.BeiandError``.

The modules are found by walking the files under ``beiand/``, not the packages: a folder that
lacks its ``__init__.py`` (``report/isms`` once did) is no place for an error class to hide.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import beiand
from beiand.errors import BeiandError

ROOT = Path(beiand.__file__).parent
# The lab is not part of the runtime (DESIGN.md) and may need the [lab] extra.
SKIP = ("beiand.lab",)


def _names() -> list[str]:
    out = []
    for p in sorted(ROOT.rglob("*.py")):
        rel = p.relative_to(ROOT.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        name = ".".join(parts)
        if name.startswith(SKIP) or name.endswith("__main__") or "build" in rel.parts:
            continue
        out.append(name)
    return out


def test_every_error_class_derives_from_beiand_error():
    strays = []
    for name in _names():
        mod = importlib.import_module(name)
        for attr, obj in vars(mod).items():
            ours = inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == mod.__name__
            if ours and not issubclass(obj, BeiandError):
                strays.append(f"{mod.__name__}.{attr}")
    assert not strays, f"error classes not derived from BeiandError: {strays}"


def test_the_walk_reaches_every_folder():
    names = set(_names())
    for p in ROOT.rglob("*.py"):
        rel = p.relative_to(ROOT.parent)
        if rel.parts[1] == "lab" or p.name in ("__init__.py", "__main__.py"):
            continue
        assert ".".join(rel.with_suffix("").parts) in names
    assert {"beiand.isms.wire.codec", "beiand.isms.transport.retry", "beiand.isms.store"} <= names


def test_every_folder_is_a_package():
    missing = [str(d.relative_to(ROOT.parent)) for d in [ROOT, *ROOT.rglob("*")]
               if d.is_dir() and any(d.glob("*.py")) and not (d / "__init__.py").exists()]
    assert not missing, f"folders of modules without __init__.py: {missing}"


def test_value_and_os_errors_keep_their_old_base():
    from beiand.capture.live import CaptureOpenError
    from beiand.records.domains import DomainError

    assert issubclass(DomainError, ValueError) and issubclass(DomainError, BeiandError)
    assert issubclass(CaptureOpenError, OSError)
