"""The public API: every module's ``__all__`` names what it exports (httpx's test_exported_members)."""

from __future__ import annotations

import importlib
import pkgutil
import re
from types import ModuleType

import pytest

import detector


def _modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(detector.__path__, "detector.")]
    return sorted(n for n in names if not n.endswith("__main__"))  # __main__ runs the CLI


def _isort_key(name: str) -> tuple[int, str]:
    """ruff's RUF022 order: CONSTANTS, then Classes, then functions."""
    if re.fullmatch(r"[A-Z0-9_]+", name) and len(name) > 1:
        return 0, name
    return (1, name) if name[:1].isupper() else (2, name)


@pytest.mark.parametrize("name", _modules())
def test_every_module_has_an_all_naming_what_exists(name: str) -> None:
    module: ModuleType = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert len(set(exported)) == len(exported), f"{name}.__all__ repeats a name"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"


@pytest.mark.parametrize("name", ["detector.config", "detector.settings", "detector.timeutil"])
def test_all_is_sorted(name: str) -> None:
    exported = list(importlib.import_module(name).__all__)
    assert exported == sorted(exported, key=_isort_key)


@pytest.mark.parametrize("package", ["detector.notify", "detector.source", "detector.store"])
def test_subpackages_export_their_public_names(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__all__, f"{package} exports nothing"
    for name in module.__all__:
        assert not name.startswith("_"), f"{package}.__all__ exports a private name {name}"
