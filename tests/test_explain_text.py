"""The engine's numbers in words: an alert's ``reason`` and ``explain``'s answer."""

from __future__ import annotations

import ast
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import detector
from detector.detect.decide import DetectionPolicy
from detector.detect.explain import Check, Explanation, LifecycleEntry, MetricVerdict, TimelineRun
from detector.explain_text import (
    AlertNumbers,
    combination_text,
    explanation_json,
    explanation_text,
    reason_text,
)


@pytest.mark.parametrize(
    ("numbers", "reason"),
    [
        (
            AlertNumbers("duration", 10949.4, 3718.0, 2.3e-9, buckets=2, span=12, effect=0.864),
            "anomaly: duration p95 10949 ms vs 3718 ms (typical +86%, p=2e-09, 2 buckets, span 12)",
        ),
        (
            AlertNumbers(
                "failure_rate", 0.3, 0.011, 6.2e-22, buckets=5, span=12, calls=10, failures=3,
                failed_calls=1, provisional_weight=0.61,
            ),
            "anomaly: failure rate 30.0% vs 1.1% (+28.9 pts, 3/10 failed in 1 call, p=6e-22,"
            " 5 buckets, span 12) [provisional baseline: 61% own]",
        ),
        (
            AlertNumbers(
                "failure_rate", 0.12, 0.01, 3e-8, buckets=1, span=6, calls=50, failures=6,
                rollout_since="2026-11-04T13:00:00Z",
            ),
            "anomaly: failure rate 12.0% vs 1.0% since its rollout at 2026-11-04T13:00:00Z"
            " (+11.0 pts, 6/50 failed, against its operation's other versions at the same hours,"
            " p=3e-08, 1 bucket, span 6)",
        ),
        (
            AlertNumbers("volume", 4.2, 9.5, 0.0, buckets=4, span=12),
            "anomaly: volume 4.2 vs 9.5 calls/bucket (-56%, p=<1e-300, 4 buckets, span 12)",
        ),
        (
            AlertNumbers(
                "duration", 900.0, 800.0, 1e-3, buckets=3, span=6, provisional_weight=0.8,
                forest_moves={"duration": 0.09, "failure_rate": 0.012, "volume": float("nan")},
            ),
            "anomaly: an unusual combination: latency +9 %, failures +1.2 points; no one of them"
            " conclusive alone [provisional baseline: 80% own]",
        ),
    ],
)  # fmt: skip
def test_reason_text_words_each_kind_of_alert(numbers: AlertNumbers, reason: str) -> None:
    assert reason_text(numbers) == reason


def test_combination_text_words_the_forests_moves() -> None:
    moves = {"duration": 0.09, "failure_rate": 0.012, "volume": -0.2}
    assert combination_text(moves) == (
        "an unusual combination: latency +9 %, failures +1.2 points, volume -20 %;"
        " no one of them conclusive alone"
    )


@pytest.mark.parametrize("module", ["detect/engine.py", "detect/forest.py", "detect/explain.py"])
def test_the_engine_imports_no_words_module(module: str) -> None:
    tree = ast.parse((Path(detector.__file__).parent / module).read_text(encoding="utf-8"))
    imported = {
        f"{n.module}.{a.name}" if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    }
    assert not [name for name in imported if name.startswith("detector.words")]


def test_explanation_words_verdicts_and_lifecycle_from_codes() -> None:
    t = datetime(2026, 11, 4, 13, tzinfo=UTC)
    late = MetricVerdict("failure_rate", "not_persistent", calls=40.0, failures=6.0)
    late.checks = [Check("calls", True), Check("not_persistent", False)]
    late.furthest_gate = "not_persistent"
    late.timeline = [TimelineRun(t, t + timedelta(minutes=10), "not_persistent")]
    found = Explanation(
        "Join",
        None,
        t,
        (t, t + timedelta(minutes=5)),
        (t, t + timedelta(hours=1)),
        [MetricVerdict("duration", ""), late, MetricVerdict("volume", "", judged=False)],
        DetectionPolicy(),
        [LifecycleEntry("failure_rate", "acknowledged", t, "alice")],
    )
    out = explanation_json(found)
    verdicts = [m["verdict"] for m in out["metrics"]]
    assert verdicts[0].startswith("nothing unusual: no span of recent buckets")
    assert verdicts[1:] == [
        "did not last long enough",
        "not judged: volume is judged per operation",
    ]
    assert [m["furthest_in_step"] for m in out["metrics"]] == [
        "nothing unusual: not a candidate",
        "did not last long enough",
        "",
    ]
    assert out["metrics"][1]["tests"] == [
        {
            "test": "enough calls",
            "value": "40 calls, 6 failures",
            "threshold": "at least 30 calls and 4 failures",
            "passed": True,
        },
        {
            "test": "lasted",
            "value": "did not last long enough",
            "threshold": "unusual in 2 of the last 3 buckets",
            "passed": False,
        },
    ]
    assert out["lifecycle"] == ["failure rate: acknowledged by alice at 2026-11-04T13:00:00Z"]
    assert "  failure rate: did not last long enough" in explanation_text(found)
