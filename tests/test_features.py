"""Sequential evidence (features.apply_sequential): thin partitions accumulate evidence."""

from __future__ import annotations

import re
from datetime import timedelta
from functools import cache

import numpy as np
import pytest

from detector.detect import features
from detector.detect.engine import (
    DetectionPolicy,
    DetectionResult,
    detect,
    detect_steps,
    plan_steps,
)
from detector.detect.features import sequential_thresholds, windowed_cusum
from detector.schema import BucketAggregates
from detector.words import accumulated_words, why_believed
from tests.fixtures_engine import T0, Incident, Part, make_aggs

POLICY = DetectionPolicy()
BETA = "1.32.0.1_beta"
WS, WE = T0 + timedelta(days=3), T0 + timedelta(days=4)


def _tenant(beta_calls_per_hour: float = 15.0) -> list[Part]:
    """Two operations; StartVideo has a beta at ``beta_calls_per_hour`` (~6 % of its calls)."""
    return [
        Part("Join", "1.30.1.0_stable", 240.0, 0.01, 800.0),
        Part("Join", "1.31.1.0_stable", 240.0, 0.01, 800.0),
        Part("StartVideo", "1.30.1.0_stable", 120.0, 0.03, 300.0),
        Part("StartVideo", "1.31.1.0_stable", 120.0, 0.03, 300.0),
        Part("StartVideo", BETA, beta_calls_per_hour, 0.03, 300.0),
    ]


@cache
def _beta_failing(seed: int) -> tuple[BucketAggregates, Incident]:
    """The beta's failure rate goes from 3 % to 24 % for five hours."""
    start = WS + timedelta(hours=4 + seed % 7)
    inc = Incident("StartVideo", BETA, start, start + timedelta(hours=5), fail_rate=0.24)
    return make_aggs(_tenant(), days=4, incidents=(inc,), seed=seed), inc


def _beta_alerts(res: DetectionResult) -> list:
    return sorted(
        ts for _, ver, metric, ts in res.alert_buckets if ver == BETA and metric == "failure_rate"
    )


def test_windowed_cusum_is_the_best_trailing_window_sum() -> None:
    rng = np.random.default_rng(0)
    llr = rng.normal(-0.2, 1.0, (3, 40))
    w, k = 7, 25
    got = windowed_cusum(llr, w, k)
    for p in range(3):
        for j, t in enumerate(range(40 - k, 40)):
            best = max([0.0] + [llr[p, t - n + 1 : t + 1].sum() for n in range(1, w + 1)])
            assert got[p, j] == pytest.approx(best)


def test_threshold_keeps_the_stated_false_alarm_rate_on_baseline_data() -> None:
    # A thin partition at its baseline rate (15 calls an hour, 3 % failing): the alarm
    # episodes a day stay within the budget the threshold was set from.
    rng = np.random.default_rng(1)
    days, lam, p0 = 1500, 15.0 / 12, 0.03
    n = rng.poisson(lam, days * 288).astype(float)
    f = rng.binomial(n.astype(int), p0).astype(float)
    p1 = POLICY.sequential_fold * p0
    llr = f * np.log(p1 / p0) + (n - f) * (np.log1p(-p1) - np.log1p(-p0))
    stat = windowed_cusum(llr[None, :], max(POLICY.spans), len(n))[0]
    looks = 288 * -np.expm1(-lam * p0)
    n_tests = 10  # the budget shared by ten tests: this one gets a tenth
    h = float(sequential_thresholds(np.array([looks]), n_tests, POLICY)[0])
    episode = np.cumsum(np.r_[0, (stat[1:] > 0) & (stat[:-1] <= 0)])
    alarms = np.unique(episode[stat >= h]).size / days
    assert alarms <= 1.5 * POLICY.sequential_false_alerts_per_day / n_tests


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_thin_beta_failing_8x_is_found_from_accumulated_evidence(seed: int) -> None:
    aggs, inc = _beta_failing(seed)
    res = detect(aggs, window=(WS, WE), now=WE, policy=POLICY)
    hits = _beta_alerts(res)
    assert hits, res.candidates
    # Found within ~3 h at 15 calls an hour (the trailing spans alone: 4.5-5 h on two seeds);
    # min_calls (30 calls, 2 h of this beta) bounds it from below.
    assert inc.start <= hits[0] and hits[0] + POLICY.bucket - inc.start <= timedelta(
        hours=3, minutes=10
    )
    # Where the accumulated evidence carried an alert, the alert says what accumulated.
    for a in res.anomalies:
        if a.details.get("sequential"):
            words = why_believed(a)
            assert re.search(
                r"failures \d+ of \d+ calls over the last \d+ h, usual [23](\.\d)? %", words
            ), words
    assert {fp for fp in (x.fingerprint for x in res.anomalies)} == {
        f"StartVideo|{BETA}|failure_rate"
    }


def test_the_accumulated_evidence_is_what_finds_the_thin_beta() -> None:
    seeds = range(4)
    carried = 0
    for seed in seeds:
        aggs, _ = _beta_failing(seed)
        res = detect(aggs, window=(WS, WE), now=WE, policy=POLICY)
        carried += any(a.details.get("sequential") for a in res.anomalies)
    assert carried >= 2


def test_one_bucket_of_two_failures_in_five_calls_stays_silent() -> None:
    rare = "0.9.1"
    parts = [*_tenant(), Part("StartVideo", rare, 3.0, 0.03, 300.0)]
    aggs = make_aggs(parts, days=4, seed=7)
    s = aggs.stats
    at = WS + timedelta(hours=9)
    row = s.index[(s.sdk_version == rare) & (s.bucket_start >= at)][0]
    s.loc[row, ["calls", "dur_n"]] = 5
    s.loc[row, ["failures", "failed_calls"]] = 2
    res = detect(aggs, window=(WS, WE), now=WE, policy=POLICY)
    assert not [a for a in res.anomalies if a.sdk_version == rare]


def test_a_rerun_in_hourly_steps_judges_as_one_window() -> None:
    aggs, inc = _beta_failing(3)
    window = (inc.start, inc.end)

    def history(start, end):
        return aggs

    hourly = detect_steps(
        history,
        window=window,
        steps=plan_steps(window, timedelta(hours=1), bucket=POLICY.bucket),
        policy=POLICY,
        now=WE,
    )
    whole = detect(aggs, window=window, now=WE, policy=POLICY)
    assert _beta_alerts(hourly) == _beta_alerts(whole) and _beta_alerts(whole)


def test_switched_off_it_changes_nothing_else() -> None:
    aggs, _ = _beta_failing(0)
    off = detect(aggs, window=(WS, WE), now=WE, policy=DetectionPolicy(sequential="off"))
    assert not any(a.details.get("sequential") for a in off.anomalies)


def test_accumulated_words_are_plain_and_refuse_junk() -> None:
    seq = {"metric": "failure_rate", "hours": 3.0, "calls": 46, "failures": 11, "usual_rate": 0.03}
    assert accumulated_words(seq) == "failures 11 of 46 calls over the last 3 h, usual 3 %"
    vol = {"metric": "volume", "hours": 0.5, "calls": 12, "usual_calls": 410.2}
    assert accumulated_words(vol) == "12 calls over the last 30 min, usual 410"
    for junk in (None, "x", {"hours": "nan", "calls": 3}, {"hours": 2, "calls": -1}, {}):
        assert accumulated_words(junk) == ""


def test_the_sequential_test_judges_the_same_one_operation_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The beta is StartVideo's, the second operation: judged block by block, its rows are
    # read at an offset, and every field must land where the whole-table run puts it.
    aggs, _ = _beta_failing(0)
    whole = detect(aggs, window=(WS, WE), now=WE, policy=POLICY)
    monkeypatch.setattr(features, "_SEQUENTIAL_BLOCK", 1)  # one operation per block
    blocked = detect(aggs, window=(WS, WE), now=WE, policy=POLICY)
    ev, ev_b = whole.debug["evidence"], blocked.debug["evidence"]
    parts = whole.debug["parts"]
    beta = int(np.flatnonzero((parts.operation == "StartVideo") & (parts.version == BETA))[0])
    assert beta > 3 and ev.sequential[beta].any()  # past Join's rows, and the test was used
    for name in ("p", "effect", "n", "k", "span", "observed", "expected", "z", "share"):
        np.testing.assert_array_equal(getattr(ev_b, name), getattr(ev, name), err_msg=name)
    np.testing.assert_array_equal(ev_b.sequential, ev.sequential)
    np.testing.assert_array_equal(blocked.debug["reasons"], whole.debug["reasons"])
    assert blocked.alert_buckets == whole.alert_buckets
