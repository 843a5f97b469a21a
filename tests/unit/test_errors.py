"""Every error class beiand declares derives from the one root, ``beiand.errors.BeiandError``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import beiand
from beiand.errors import BeiandError

# The lab is not part of the runtime (DESIGN.md) and may need the [lab] extra.
SKIP = ("beiand.lab",)


def _modules():
    for info in pkgutil.walk_packages(beiand.__path__, "beiand."):
        if info.name.startswith(SKIP) or info.name.endswith("__main__"):
            continue
        yield importlib.import_module(info.name)


def test_every_error_class_derives_from_beiand_error():
    strays = []
    for mod in _modules():
        for name, obj in vars(mod).items():
            ours = inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == mod.__name__
            if ours and not issubclass(obj, BeiandError):
                strays.append(f"{mod.__name__}.{name}")
    assert not strays, f"error classes not derived from BeiandError: {strays}"


def test_value_and_os_errors_keep_their_old_base():
    from beiand.capture.live import CaptureOpenError
    from beiand.records.domains import DomainError

    assert issubclass(DomainError, ValueError) and issubclass(DomainError, BeiandError)
    assert issubclass(CaptureOpenError, OSError)
