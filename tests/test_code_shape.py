"""Functions that fit on a screen: none in ``detector/`` over 100 lines (issue 24)."""

from __future__ import annotations

import ast
from pathlib import Path

import detector
from tests.test_stage_imports import ORDER

MAX_LINES = 100


def test_no_function_in_detector_is_over_100_lines() -> None:
    root = Path(detector.__file__).parent
    long = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({lines})")
    assert not long, "split these functions: " + ", ".join(long)


def test_the_engine_package_lists_its_stages_in_data_flow_order() -> None:
    engine = Path(detector.__file__).parent / "detect"
    stages = {p.stem for p in engine.glob("*.py")} - {"__init__"}
    assert stages == set(ORDER)
    doc = (engine / "__init__.py").read_text(encoding="utf-8")
    order = ORDER
    positions = [doc.index(f"``{s}``") for s in order]
    assert positions == sorted(positions)
