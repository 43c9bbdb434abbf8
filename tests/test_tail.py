"""The tail test: calls above the baseline p95 (exact binomial, learnt dispersion) beside the
log-mean test, on synthetic aggregates with their duration histogram (tests/fixtures_engine)."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest

from detector.engine import DetectionPolicy, detect
from detector.features import tail_rise
from tests.fixtures_engine import T0, Part, make_aggs

POLICY = DetectionPolicy()
DAYS = 3.0
WS = T0 + timedelta(days=DAYS - 0.5)
WE = T0 + timedelta(days=DAYS)
V_OLD, V_NEW = "1.30.1.0_stable", "1.31.1.0_stable"
SIGMA = 0.5
Z95 = 1.6448536269514722


def _sigma_for_p95(ratio: float) -> float:
    """The log-normal sigma whose p95 is ``ratio`` x that of SIGMA, at the same median."""
    return SIGMA + math.log(ratio) / Z95


def _new_build(p95_ratio: float, seed: int, calls_per_hour: float = 120.0):
    """A busy old build and a new one (from an hour into the window) at the same median,
    its p95 ``p95_ratio`` x the old one's."""
    start_new = WS + timedelta(hours=1)
    parts = [
        Part("Join", V_OLD, 600.0, 0.01, 800.0, sigma=SIGMA),
        Part(
            "Join",
            V_NEW,
            calls_per_hour,
            0.01,
            800.0,
            sigma=_sigma_for_p95(p95_ratio),
            start=start_new,
        ),
    ]
    aggs = make_aggs(parts, days=DAYS, seed=seed)
    return aggs, detect(aggs, window=(WS, WE), now=WE, policy=POLICY)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_new_build_whose_p95_rose_by_half_is_found_within_300_operations(seed: int) -> None:
    aggs, res = _new_build(1.5, seed)
    hits = [a for a in res.anomalies if a.fingerprint == f"Join|{V_NEW}|duration"]
    assert hits, res.candidates
    a = min(hits, key=lambda x: x.window_start)
    assert a.details["duration_part"] == "tail"
    assert "duration tail" in a.reason and "above the baseline p95" in a.reason
    s = aggs.stats
    first_end = a.window_start + POLICY.bucket
    ops_before = s[(s.sdk_version == V_NEW) & (s.bucket_start < first_end)]["calls"].sum()
    assert ops_before <= 300


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_new_build_with_a_four_percent_higher_p95_is_not_flagged(seed: int) -> None:
    _aggs, res = _new_build(1.04, seed)
    assert not [a for a in res.anomalies if a.metric == "duration"], [
        a.reason for a in res.anomalies
    ]


# (share above the old p95, its baseline share, sd of log-durations, implied p95 rise)
RISE_CASES = [
    (0.05, 0.05, 0.5, 0.0),  # unchanged
    (0.135, 0.05, 0.5, 0.5),  # sigma 0.5 -> 0.746 at the same median: p95 x1.5
    (0.02, 0.05, 0.5, None),  # fewer above: the p95 fell
]


@pytest.mark.parametrize(("share", "q", "sd", "rise"), RISE_CASES)
def test_the_p95_rise_implied_by_the_share_above_it(
    share: float, q: float, sd: float, rise: float | None
) -> None:
    got = float(tail_rise(np.array(share), np.array(q), np.array(sd)))
    if rise is None:
        assert got < 0
    else:
        assert got == pytest.approx(rise, abs=0.02)
