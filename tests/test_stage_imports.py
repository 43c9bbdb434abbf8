"""The engine's stages import only stages before them in the data flow (none imports a later one)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import detector

PACKAGE = "detector.detect"
DETECT = Path(detector.__file__).parent / "detect"
#: Data-flow order of the stages (the package docstring lists them the same way).
ORDER = [
    "policy",
    "baseline",
    "features",
    "rollout",
    "tail",
    "forest",
    "score",
    "calibrate",
    "decide",
    "hold",
    "stop",
    "candidate",
    "engine",
    "explain",
]


def _stages_imported(source: str) -> set[str]:
    """Module source -> the stages of ``detector.detect`` it imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from within detector/detect/
                base = PACKAGE + (f".{node.module}" if node.module else "")
            else:
                base = node.module or ""
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[:2] == ["detector", "detect"] and len(parts) > 2 and parts[2] in ORDER:
                found.add(parts[2])
    return found


def test_every_stage_has_a_place_in_the_order() -> None:
    assert {p.stem for p in DETECT.glob("*.py")} - {"__init__"} == set(ORDER)


@pytest.mark.parametrize("stage", ORDER)
def test_a_stage_imports_no_later_stage(stage: str) -> None:
    source = (DETECT / f"{stage}.py").read_text(encoding="utf-8")
    later = sorted(s for s in _stages_imported(source) if ORDER.index(s) > ORDER.index(stage))
    assert not later, f"{PACKAGE}.{stage} imports later stages: {later}"


@pytest.mark.parametrize(
    "line",
    [
        "from detector.detect.decide import DetectionPolicy",
        "import detector.detect.decide",
        "from detector.detect import decide",
        "from .decide import Evidence",
        "from . import decide",
        "def f():\n    from detector.detect.decide import decide",
    ],
)
def test_every_import_form_is_seen(line: str) -> None:
    assert _stages_imported(line) == {"decide"}
