"""The engine's typed candidate: its report record, fingerprint and evaluated flag."""

from __future__ import annotations

import math

from detector.detect.candidate import NOT_EVALUATED, Candidate
from detector.detect.decide import GATE_REASONS
from detector.notify import evaluated

RECORD = {
    "operation_name": "Join",
    "sdk_version": None,
    "metric": "failure_rate",
    "reason": "not_significant",
    "bucket": "2026-11-20T10:05:00Z",
    "p_value": 0.02,
    "effect": 1.5,
    "observed": 0.12,
    "expected": None,
    "calls": 300.0,
    "failures": 36.0,
    "span_buckets": 3,
    "score": None,
    "provisional": False,
    "baseline_kind": "seasonal",
    "buckets_by_reason": {"not_significant": 2, "anomaly": 1},
}


def test_to_json_is_the_report_record_with_its_key_order() -> None:
    c = Candidate.from_json(RECORD)
    assert c.to_json() == RECORD
    assert list(c.to_json()) == list(RECORD)


def test_fingerprint_and_evaluated() -> None:
    c = Candidate.from_json(RECORD)
    assert c.fingerprint == "Join|*|failure_rate" and c.evaluated
    for reason in NOT_EVALUATED:
        assert not Candidate.from_json({**RECORD, "reason": reason}).evaluated


def test_not_evaluated_names_gate_reasons_and_notify_reexports_it() -> None:
    assert set(NOT_EVALUATED) <= set(GATE_REASONS)
    assert evaluated.NOT_EVALUATED is NOT_EVALUATED


def test_from_json_fills_missing_evidence() -> None:
    c = Candidate.from_json({"operation_name": "Join", "metric": "duration", "expected": 800.0})
    assert c.sdk_version is None and c.expected == 800.0 and math.isnan(c.p_value)


def test_alerting_reads_the_candidates_it_could_judge() -> None:
    judged = Candidate.from_json({**RECORD, "observed": 0.12, "expected": 0.01, "calls": 300.0})
    gated = Candidate.from_json({**RECORD, "metric": "duration", "reason": "maintenance"})
    nan_calls = Candidate.from_json({**RECORD, "metric": "volume", "calls": float("nan")})
    ev = evaluated.evaluated_from_candidates([judged, gated, nan_calls])
    assert ev == {
        "Join|*|failure_rate": {"observed": 0.12, "baseline": 0.01, "calls": 300},
        "Join|*|volume": {"observed": 0.12, "baseline": None, "calls": None},
    }
