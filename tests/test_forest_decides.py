"""The forest's vote: its p-values, its gate in decide(), its alerts, and switching it off."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from detector.detect.decide import GATE_REASONS, Evidence, decide
from detector.detect.engine import DetectionResult, detect
from detector.detect.forest import CalibrationRows, span_vectors, tail_p
from detector.detect.policy import METRIC_NAMES, DetectionPolicy
from detector.explain_text import joint_text
from detector.store.backend import LocalBackend
from detector.store.models import ModelStore
from detector.words import INTERNAL_NAMES, what_moved
from tests.fixtures_engine import T0, Incident, Part, make_aggs, neutral_test_fields

DAYS = 4.0
WS = T0 + timedelta(days=DAYS - 0.5)
WE = T0 + timedelta(days=DAYS)
#: Three busy operations (two versions of Join); 100 calls a bucket on each partition.
PARTS = [
    Part("Join", "1.30.1.0_stable", 600, 0.02, 800.0),
    Part("Join", "1.31.1.0_stable", 600, 0.02, 800.0),
    Part("StartVideo", "1.30.1.0_stable", 600, 0.02, 300.0),
    Part("StartCall", "1.30.1.0_stable", 600, 0.02, 500.0),
]
#: Latency +10 %, failures +1.2 points, volume -20 % on Join for 4 h: each under its minimum.
JOINT = Incident(
    "Join",
    None,
    WS + timedelta(hours=3),
    WS + timedelta(hours=7),
    duration_factor=1.1,
    fail_rate=0.032,
    volume_factor=0.8,
)


@cache
def _aggs(joint: bool = True):
    return make_aggs(PARTS, days=DAYS, incidents=(JOINT,) if joint else (), seed=1)


@cache
def _run(forest: bool, joint: bool = True) -> DetectionResult:
    return detect(_aggs(joint), window=(WS, WE), policy=DetectionPolicy(forest=forest), now=WE)


# --------------------------------------------------------------------------------- p-values
def test_tail_p_is_conformal_inside_and_exponential_beyond_the_held_out_scores() -> None:
    ref = np.sort(np.random.default_rng(0).uniform(0.4, 0.6, 999))
    p = tail_p(np.array([0.3, 0.5, 0.59, 0.7, 0.9, np.nan]), ref)
    assert p[0] == 1.0 and p[-1] == 1.0  # below everything; not scored
    assert p[1] == pytest.approx((1 + (ref >= 0.5).sum()) / 1000)
    # Beyond the top scores the tail keeps falling, below one over the held-out count.
    assert p[3] < 1 / 1000 and p[4] < p[3] < p[2]


def test_span_vectors_sum_over_the_root_of_the_buckets_with_calls() -> None:
    feats = np.ones((1, 4, 2))
    has = np.array([[True, False, True, True]])
    v, n = span_vectors(feats, has, 3)
    assert n.tolist() == [[1, 1, 2, 2]]
    assert v[0, :, 0] == pytest.approx([1, 1, 2 / np.sqrt(2), 2 / np.sqrt(2)])


def test_p_values_hold_their_level_on_fresh_data_without_change() -> None:
    from detector.detect.score import PartitionScorer

    rng = np.random.default_rng(3)
    P, T = 20, 400
    X = rng.normal(size=(P * T, 4))
    rows = CalibrationRows(
        np.repeat(np.arange(P).astype(str), T).astype(object),
        np.full(P * T, "version", dtype=object),
        np.tile(np.arange(T), P),
        (1, 6),
    )
    scorer = PartitionScorer(random_state=0).fit(X, rows=rows)
    fresh = rng.normal(size=(4000, 4))
    p1 = scorer.p_values(scorer.score_samples(fresh), np.full(4000, "version", object), 1)
    assert (p1 <= 0.05).mean() == pytest.approx(0.05, abs=0.02)
    assert (p1 <= 0.01).mean() <= 0.02
    far = scorer.p_values(scorer.score_samples(np.full((1, 4), 6.0)), np.array(["version"]), 6)
    assert far[0] < 1e-3


# --------------------------------------------------------------------------------- decide
def _evidence(forest_p: float, effects: tuple[float, float, float]) -> Evidence:
    P, M, T = 1, len(METRIC_NAMES), 6
    eff = np.zeros((P, M, T))
    eff[0, :, :] = np.asarray(effects)[:, None]
    return Evidence(
        p=np.full((P, M, T), 0.5),
        effect=eff,
        effect_ms=np.full((P, M, T), 50.0),
        n=np.full((P, M, T), 500.0),
        k=np.full((P, M, T), 20.0),
        loo_ok=np.ones((P, M, T), bool),
        forest=np.zeros((P, M, T), bool),
        peer_sig=np.zeros((P, M, T), bool),
        shared=np.ones((P, M, T), bool),
        **neutral_test_fields((P, M, T)),
        is_fleet=np.ones(P, bool),
        op_index=np.zeros(P, np.int64),
        has_history=np.ones(P, bool),
        testable=np.ones((P, M), bool),
        maintenance=np.zeros(T, bool),
        judged=np.ones(T, bool),
        forest_p=np.full((P, T), forest_p),
        forest_n_tests=12.0,
    )


@pytest.mark.parametrize(
    ("forest_p", "effects", "expected"),
    [
        (1e-9, (0.10, 0.012, -0.20), "anomaly"),  # the joint change
        (1e-2, (0.10, 0.012, -0.20), "not_significant"),  # p above alpha / 12
        (1e-9, (0.0, 0.0, -0.30), "below_min_effect"),  # one metric alone is not a combination
    ],
)
def test_decide_gates_the_forest_like_any_test(forest_p, effects, expected) -> None:
    ev = _evidence(forest_p, effects)
    out = np.zeros(ev.p.shape, bool)
    reasons = decide(ev, policy=DetectionPolicy(), forest_out=out)
    # Routed to one metric: the one that moved most for its minimum (failures: 0.6 of 2 pts).
    got = {GATE_REASONS[r] for r in reasons[0, :, -1]} - {""}
    assert got == {expected}
    assert out.any() == (expected == "anomaly")


# --------------------------------------------------------------------------------- engine
def test_joint_change_is_found_with_the_forest_and_missed_without() -> None:
    on, off = _run(True), _run(False)
    assert off.anomalies == []
    assert {x.operation_name for x in on.anomalies} == {"Join"}
    assert all(JOINT.start <= x.window_start < JOINT.end for x in on.anomalies)
    a = on.anomalies[0]
    assert a.sdk_version is None  # the operation's alert, not one version's
    words = what_moved(a)
    assert words.startswith("an unusual combination: latency +")
    assert "failures +" in words and "volume -" in words
    assert not [n for n in INTERNAL_NAMES if n in words]
    assert a.details["combination"] and a.p_value <= DetectionPolicy().alpha


def test_no_forest_alert_without_a_change() -> None:
    assert _run(True, False).anomalies == []


def test_forest_off_imports_no_scikit_learn_and_computes_no_forest_p() -> None:
    off = _run(False)
    assert off.stats["forest"] == {"action": "off"}
    assert off.debug["forest_p"] is None
    # A fresh interpreter: only the engine and the fixtures (this module imports the store).
    code = (
        "import sys\n"
        "from datetime import timedelta\n"
        "from detector.detect.engine import DetectionPolicy, detect\n"
        "from tests.fixtures_engine import T0, Part, make_aggs\n"
        "aggs = make_aggs([Part('Join', '1.0')], days=2, seed=1)\n"
        "end = T0 + timedelta(days=2)\n"
        "r = detect(aggs, window=(end - timedelta(hours=1), end),"
        " policy=DetectionPolicy(forest=False), now=end)\n"
        "assert r.stats['forest'] == {'action': 'off'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'skops')))\n"
    )
    root = Path(__file__).resolve().parents[1]
    got = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert got.stdout.strip() == "[]", got.stdout + got.stderr


def test_tampered_calibration_is_refused_and_the_forest_refits(tmp_path: Path) -> None:
    store = ModelStore(LocalBackend(tmp_path))
    policy = DetectionPolicy(forest=True)
    first = detect(_aggs(), window=(WS, WE), policy=policy, now=WE, model_store=store)
    assert first.stats["forest"]["action"] == "fitted"
    meta_path = next(tmp_path.rglob("meta.json"))
    meta = json.loads(meta_path.read_text())
    assert meta["calibration"]
    meta["calibration"] = {"x": ["__import__('os')", None]}
    meta_path.write_text(json.dumps(meta))
    again = detect(_aggs(), window=(WS, WE), policy=policy, now=WE, model_store=store)
    assert "unreadable calibration" in again.stats["forest"]["refused"]
    assert again.stats["forest"]["action"] == "fitted"
    assert [a.window_start for a in again.anomalies] == [a.window_start for a in first.anomalies]


def test_joint_text_words_each_metric() -> None:
    text = joint_text({"duration": 0.09, "failure_rate": 0.012, "volume": -0.2})
    assert text == "latency +9 %, failures +1.2 points, volume -20 %"
