"""The fuzz suite runs against both implementations of the hot path (issue 21).

A test module that imports from a compiled module (``beiand.extensions.COMPILED``) runs each
test twice: ``[compiled]`` with the modules as imported (the Cython extensions when built), and
``[pure]`` with every such name in the test module's globals swapped for its ``.py`` twin
(``beiand.extensions.pure_twins``): the same frames, the same assertions.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from beiand import extensions


def _twin_of(value: Any, twins: dict[str, ModuleType]) -> Any:
    if isinstance(value, ModuleType):
        return twins.get(value.__name__)
    owner = getattr(value, "__module__", None)
    name = getattr(value, "__name__", None)
    if owner in twins and name is not None and getattr(twins[owner], name, None) is not None:
        return getattr(twins[owner], name)
    return None


def _hot_path_names(module: ModuleType) -> list[str]:
    compiled = set(extensions.COMPILED)
    out = []
    for k, v in vars(module).items():
        owner = v.__name__ if isinstance(v, ModuleType) else getattr(v, "__module__", None)
        if owner in compiled and not k.startswith("__"):
            out.append(k)
    return out


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.module is not None and _hot_path_names(metafunc.module):
        metafunc.fixturenames.append("hot_path")
        metafunc.parametrize("hot_path", ["compiled", "pure"], indirect=True)


@pytest.fixture
def hot_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "pure":
        twins = extensions.pure_twins()
        for k in _hot_path_names(request.module):
            twin = _twin_of(getattr(request.module, k), twins)
            assert twin is not None, f"no pure twin for {k}"
            monkeypatch.setattr(request.module, k, twin)
    return str(request.param)
