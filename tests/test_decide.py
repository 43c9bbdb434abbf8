"""decide(): one case per gate and reason, on hand-written evidence (adtk-style case table)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from detector.detect.decide import GATE_REASONS, Evidence, decide
from detector.detect.policy import METRIC_NAMES, DetectionPolicy
from tests.fixtures_engine import neutral_test_fields

POLICY = DetectionPolicy()
T = 6
D, F, V = 0, 1, 2  # metric rows


def make_evidence(P: int = 1, **overrides: object) -> Evidence:
    """Evidence where partition 0's failure rate clearly deviates in the last 3 buckets."""
    M = len(METRIC_NAMES)
    shape = (P, M, T)
    ev = Evidence(
        p=np.ones(shape),
        effect=np.zeros(shape),
        effect_ms=np.zeros(shape),
        n=np.full(shape, 500.0),
        k=np.full(shape, 50.0),
        loo_ok=np.ones(shape, bool),
        forest=np.zeros(shape, bool),
        peer_sig=np.zeros(shape, bool),
        shared=np.ones(shape, bool),
        **neutral_test_fields(shape),
        is_fleet=np.zeros(P, bool),
        op_index=np.zeros(P, np.int64),
        has_history=np.ones(P, bool),
        testable=np.ones((P, M), bool),
        maintenance=np.zeros(T, bool),
        judged=np.ones(T, bool),
        n_tests=np.ones(M),
    )
    ev.p[0, F, 3:] = 1e-9
    ev.effect[0, F, 3:] = 0.10
    for key, value in overrides.items():
        setattr(ev, key, value)
    return ev


def _reason(ev: Evidence, p: int = 0, m: int = F, t: int = T - 1, **kw: object) -> str:
    return GATE_REASONS[decide(ev, policy=POLICY, **kw)[p, m, t]]


def _set(arr: np.ndarray, value: object, p: int = 0, m: int = F) -> np.ndarray:
    arr = arr.copy()
    arr[p, m, 3:] = value
    return arr


CASES = [
    ("every gate passes", {}, "anomaly"),
    ("too few calls", {"n": _set(make_evidence().n, 20.0)}, "suppressed_low_volume"),
    ("too few failures", {"k": _set(make_evidence().k, 2.0)}, "suppressed_low_volume"),
    ("p above corrected alpha", {"n_tests": np.array([1.0, 1e8, 1.0])}, "not_significant"),
    ("effect below +2 points", {"effect": _set(make_evidence().effect, 0.01)}, "below_min_effect"),
    ("carried by one bucket", {"loo_ok": _set(make_evidence().loo_ok, False)}, "not_persistent"),
    ("maintenance window", {"maintenance": np.ones(T, bool)}, "maintenance"),
    ("no baseline at all", {"has_history": np.zeros(1, bool)}, "insufficient_history"),
]


@pytest.mark.parametrize(("name", "overrides", "expected"), CASES, ids=[c[0] for c in CASES])
def test_gate_table(name: str, overrides: dict[str, object], expected: str) -> None:
    ev = make_evidence(**overrides)
    assert _reason(ev) == expected


def test_not_a_candidate_when_nothing_deviates() -> None:
    ev = make_evidence()
    reasons = decide(ev, policy=POLICY)
    assert (reasons[0, D] == 0).all() and (reasons[0, V] == 0).all()
    assert (reasons[0, F, :3] == 0).all()


def test_forest_flag_alone_makes_a_candidate_that_fails_significance() -> None:
    forest = np.zeros((1, 3, T), bool)
    forest[0, D, 5] = True
    ev = make_evidence(forest=forest)
    assert _reason(ev, m=D) == "not_significant"


def test_persistence_needs_n_of_m() -> None:
    ev = make_evidence()
    reasons = decide(ev, policy=POLICY)
    # Bucket 3 is the first hot one: 1 of the last 3 -> not persistent; bucket 4: 2 of 3.
    assert GATE_REASONS[reasons[0, F, 3]] == "not_persistent"
    assert GATE_REASONS[reasons[0, F, 4]] == "anomaly"
    strict = DetectionPolicy(persist_n=3, persist_m=3)
    reasons = decide(ev, policy=strict)
    assert GATE_REASONS[reasons[0, F, 4]] == "not_persistent"
    assert GATE_REASONS[reasons[0, F, 5]] == "anomaly"


@pytest.mark.parametrize(
    ("span", "expected"),
    [(1, "not_persistent"), (3, "anomaly"), (12, "not_persistent"), (144, "not_persistent")],
)
def test_a_first_hot_bucket_is_persistent_only_on_a_span_of_m_single_bucket_thirds(
    span: int, expected: str
) -> None:
    # The 3-bucket span passed only because each of its 3 buckets deviates on its own: that
    # is N of M already. One hot bucket of a 12-hour span says nothing about the last three.
    ev = make_evidence(span=np.full((1, 3, T), span, np.int64))
    assert _reason(ev, t=3) == expected


def test_previous_hot_carries_persistence_across_runs() -> None:
    ev = make_evidence()
    prev = np.zeros((1, 3, 2), bool)
    prev[0, F, 1] = True
    ev.p[0, F, 3:] = 1.0
    ev.p[0, F, 0] = 1e-9
    ev.effect[0, F, 0] = 0.1
    reasons = decide(ev, policy=POLICY, previous_hot=prev)
    assert GATE_REASONS[reasons[0, F, 0]] == "anomaly"


def test_buckets_after_now_are_not_judged() -> None:
    ev = make_evidence()
    t0 = datetime(2026, 11, 2, tzinfo=UTC)
    ends = np.array(
        [
            np.datetime64(t0.replace(tzinfo=None) + timedelta(minutes=5 * (i + 1)), "ns")
            for i in range(T)
        ]
    )
    now = t0 + timedelta(minutes=25)  # the last bucket ends at 30 min
    reasons = decide(ev, policy=POLICY, now=now, bucket_end=ends)
    assert reasons[0, F, 5] == 0 and GATE_REASONS[reasons[0, F, 4]] == "anomaly"


def test_fleet_wide_deviation_explains_the_versions() -> None:
    # Partition 0 = fleet, 1 = a version; both deviate and the other versions deviate too.
    ev = make_evidence(P=2, is_fleet=np.array([True, False]))
    ev.p[1] = ev.p[0]
    ev.effect[1] = ev.effect[0]
    reasons = decide(ev, policy=POLICY)
    assert GATE_REASONS[reasons[0, F, 5]] == "anomaly"
    assert GATE_REASONS[reasons[1, F, 5]] == "explained_by_fleet"


@pytest.mark.parametrize(
    ("versions", "peer_sig", "expected"),
    [
        # Its sibling deviates too, and it does not deviate significantly more: the
        # operation's deviation, even before the operation's own test alerts.
        (2, False, "explained_by_fleet"),
        # It deviates significantly more than its sibling: its own alert.
        (2, True, "anomaly"),
        # No sibling to share with ("shared" only because there are no others).
        (1, False, "anomaly"),
    ],
)
def test_a_version_deviating_with_its_siblings_is_its_operations(
    versions: int, peer_sig: bool, expected: str
) -> None:
    """The fleet (row 0) is not significant yet; version 1 is (its effect above the minimum,
    as in the holdout's drift: +27 % on one version while the operation read +16 %)."""
    P = versions + 1
    ev = make_evidence(P=P, is_fleet=np.arange(P) == 0)
    ev.p[1], ev.effect[1] = ev.p[0].copy(), ev.effect[0].copy()
    ev.p[0], ev.effect[0] = 1.0, 0.0
    ev.peer_sig[1] = peer_sig
    reasons = decide(ev, policy=POLICY)
    assert GATE_REASONS[reasons[1, F, 5]] == expected


def test_one_version_explains_the_fleet() -> None:
    ev = make_evidence(P=2, is_fleet=np.array([True, False]))
    ev.p[1] = ev.p[0]
    ev.effect[1] = ev.effect[0]
    ev.shared[1] = False  # the other versions are fine
    reasons = decide(ev, policy=POLICY)
    assert GATE_REASONS[reasons[0, F, 5]] == "explained_by_version"
    assert GATE_REASONS[reasons[1, F, 5]] == "anomaly"


@pytest.mark.parametrize(
    ("own_buckets", "lookback", "expected"),
    [
        (4, 1, "anomaly"),  # no look-back: the blink lets the fleet alert
        (4, 6, "explained_by_version"),  # own in 4 of the last 6 buckets: still the version's
        (1, 6, "anomaly"),  # one early bucket (a fleet spike's start) does not hold it back
    ],
)
def test_a_version_deviating_most_of_the_lookback_explains_the_fleet(
    own_buckets, lookback, expected
) -> None:
    # The version deviates on its own in the first buckets, then its evidence blinks (e.g. its
    # best span shares the fleet's move); the fleet's own span is 1 bucket.
    from dataclasses import replace

    ev = make_evidence(P=2, is_fleet=np.array([True, False]), span=np.ones((2, 3, T), np.int64))
    ev.p[1, F, :own_buckets] = 1e-9
    ev.effect[1, F, :own_buckets] = 0.10
    ev.shared[1, F, :own_buckets] = False
    reasons = decide(ev, policy=replace(POLICY, attribution_lookback=lookback))
    assert GATE_REASONS[reasons[0, F, 5]] == expected


def test_decide_is_pure_and_deterministic() -> None:
    ev = make_evidence()
    before = ev.p.copy()
    a = decide(ev, policy=POLICY)
    b = decide(ev, policy=POLICY)
    assert np.array_equal(a, b) and np.array_equal(ev.p, before)


def test_policy_from_mapping_parses_and_rejects() -> None:
    pol = DetectionPolicy.from_mapping(
        {"bucket": "15m", "baseline": "14d", "spans": [1, 4], "alpha": 0.001, "delay": "10m"}
    )
    assert pol.bucket == timedelta(minutes=15) and pol.baseline == timedelta(days=14)
    assert pol.spans == (1, 4) and pol.alpha == 0.001
    with pytest.raises(ValueError, match="unknown"):
        DetectionPolicy.from_mapping({"bukket": "5m"})
    with pytest.raises(ValueError, match="persist"):
        DetectionPolicy.from_mapping({"persist_n": 4, "persist_m": 3})
    with pytest.raises(ValueError, match="duration_p_factor"):
        DetectionPolicy.from_mapping({"duration_p_factor": 0.5})
    for share in (0.0, 1.0):
        with pytest.raises(ValueError, match="rollout_alpha_share"):
            DetectionPolicy.from_mapping({"rollout_alpha_share": share})
    for share in (0.0, 1.5):
        with pytest.raises(ValueError, match="third_volume_share"):
            DetectionPolicy.from_mapping({"third_volume_share": share})
    assert DetectionPolicy.from_mapping({"third_volume_share": 1}).third_volume_share == 1.0
    assert pol.config_hash() != DetectionPolicy().config_hash()


def test_volume_judged_per_scope() -> None:
    fleet = np.array([True, False, False, True])
    assert DetectionPolicy().volume_judged(fleet).tolist() == [True, False, False, True]
    assert DetectionPolicy(volume_scope="all").volume_judged(fleet).all()


@pytest.mark.parametrize(("minutes", "per_hour"), [(5, 12), (15, 4), (7, 8), (120, 1)])
def test_buckets_per_hour(minutes: int, per_hour: int) -> None:
    """The looks an hour of a test re-run every bucket: whole buckets, at least one."""
    assert DetectionPolicy(bucket=timedelta(minutes=minutes)).buckets_per_hour == per_hour


def test_sequential_knobs_parse_and_validate() -> None:
    pol = DetectionPolicy.from_mapping(
        {"sequential": "off", "sequential_fold": 8, "sequential_false_alerts_per_day": 0.5}
    )
    assert pol.sequential == "off" and pol.sequential_fold == 8.0
    assert pol.sequential_false_alerts_per_day == 0.5
    assert DetectionPolicy().sequential == "failures"
    for bad in (
        {"sequential_fold": 1.0},
        {"sequential_false_alerts_per_day": 0.0},
        {"sequential": "x"},
    ):
        with pytest.raises(ValueError, match="sequential"):
            DetectionPolicy.from_mapping(bad)
