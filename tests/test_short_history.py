"""A new tenant with hours of data: judged with wider bands instead of refused outright.

detect() on synthetic bucket aggregates that start at T0 (no history before it).
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from detector.detect.baseline import Partitions, compute_baselines, with_fleet
from detector.detect.engine import DetectionPolicy, DetectionResult, detect
from tests.fixtures_engine import T0, Incident, make_aggs, standard_parts

SHORT = DetectionPolicy(short_history=True)
WS, WE = T0 + timedelta(hours=2), T0 + timedelta(hours=10)


def _run(aggs, policy: DetectionPolicy) -> DetectionResult:
    return detect(aggs, window=(WS, WE), now=WE, policy=policy)


def test_a_failure_spike_on_day_one_is_found_with_short_history_on() -> None:
    inc = Incident("Join", None, T0 + timedelta(hours=5), WE, fail_rate=0.20)
    aggs = make_aggs(standard_parts(), days=10 / 24, incidents=(inc,), seed=5)
    refused = _run(aggs, DetectionPolicy())
    assert not refused.anomalies
    assert refused.stats["candidate_buckets"].get("insufficient_history", 0) > 0
    found = _run(aggs, SHORT)
    hits = [a for a in found.anomalies if a.operation_name == "Join"]
    assert hits and all(a.metric == "failure_rate" for a in hits)
    assert min(a.window_start for a in hits) < T0 + timedelta(hours=7)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_clean_first_day_with_a_daily_cycle_stays_silent(seed: int) -> None:
    parts = standard_parts()
    for p in parts:
        p.daily_amplitude = 0.5  # hours 2-10 climb from the night towards the midday peak
    aggs = make_aggs(parts, days=10 / 24, seed=seed)
    assert _run(aggs, SHORT).anomalies == []


def test_below_the_floor_nothing_is_judged_and_bands_widen_above_it() -> None:
    aggs = make_aggs(standard_parts(), days=10 / 24, seed=7)
    stats = with_fleet(aggs.stats)
    parts = Partitions.from_frame(stats)

    def base(hours: float):
        end = T0 + timedelta(hours=hours)
        return compute_baselines(stats, parts, start=T0, end=end, policy=SHORT)

    assert not base(1.5).has_history.any()
    b3, b6 = base(3), base(6)
    assert b3.has_history.all() and b6.has_history.all()
    assert b3.stretch is not None and b6.stretch is not None
    # min_history / hours: 12 h over 3 h and over 6 h.
    np.testing.assert_allclose(b3.stretch, 4.0)
    np.testing.assert_allclose(b6.stretch, 2.0)
    off = compute_baselines(
        stats, parts, start=T0, end=T0 + timedelta(hours=6), policy=DetectionPolicy()
    )
    assert not off.has_history.any()
