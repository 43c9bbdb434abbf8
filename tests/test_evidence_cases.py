"""The evidence functions one by one, on hand-built bucket numbers (case tables, issue 24).

Each case states what a statistician expects of the function (in its id or a comment): no
change is not significant, a large shift on many calls is, the same shift on a handful of
calls is not, more calls make a smaller p, one-sided tests ignore the other direction, and
the persistence/window helpers count exactly the buckets they say. Expected values follow
from the statistics (exact binomial and Poisson tails from scipy.stats, the normal tail,
Ville's inequality), never from the code's own output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from scipy import stats

from detector.detect.baseline import FLEET, Baselines, Partitions
from detector.detect.decide import (
    Evidence,
    _any_within,
    _enough_volume,
    _gates,
    _n_of_m,
    _persistence,
    _practical,
    multiplicity,
    on_decide_scale,
)
from detector.detect.features import (
    _binomial_llr,
    _duration_p,
    _failing_calls_p,
    _failure_p,
    _Prior,
    _Span,
    _span_checks,
    _sub_checks,
    _Sums,
    _Tested,
    _volume_p,
    null_failure_rate,
    sequential_thresholds,
    volume_llr,
    windowed_cusum,
)
from detector.detect.policy import METRIC_NAMES, DetectionPolicy, volume_effect_ok
from tests.fixtures_engine import neutral_test_fields

POLICY = DetectionPolicy()
D, F, V = 0, 1, 2  # metric rows
T = 12  # buckets of a hand-built partition: one hour at 5-minute buckets
N_SPANS = len(POLICY.spans)


# --------------------------------------------------------------------------------------------
# Builders: one partition, T buckets, every per-bucket number given explicitly
# --------------------------------------------------------------------------------------------


@dataclass
class Spec:
    """One partition's buckets against its baseline (scalars are the same in every bucket).

    ``shift``: the mean log-duration over the baseline's ``mu`` per bucket; ``sigma`` the
    baseline's log-duration sd; ``p0`` its failure rate; ``expected`` its expected calls.
    """

    calls: object = 100.0
    failures: object = None  # default: exactly the baseline rate (calls * p0)
    failing_calls: object = None  # default: every failure its own call
    p0: float = 0.01
    shift: object = 0.0
    sigma: float = 0.5
    expected: object = None  # default: exactly the calls seen
    phi: float = 1.0  # every overdispersion factor
    n_eff: float = np.inf  # calls behind the baseline level
    tau2: float = 0.0  # hour-to-hour wander of the level
    vol_judged: bool = True
    policy: DetectionPolicy = field(default_factory=DetectionPolicy)


def _row(x: object) -> np.ndarray:
    return np.broadcast_to(np.asarray(x, dtype=np.float64), (T,)).reshape(1, T).copy()


def _parts() -> Partitions:
    return Partitions(
        operation=np.array(["Join"], dtype=object),
        version=np.array([FLEET], dtype=object),
        op_index=np.array([0]),
        operations=np.array(["Join"], dtype=object),
        fleet_of=np.array([0]),
    )


def make_tested(spec: Spec) -> _Tested:
    """A :class:`_Tested` of one (fleet) partition from explicit per-bucket numbers, judged at
    its last bucket (K = 1), with the per-bucket terms exactly as ``features._tested`` forms
    them from a cube and its baselines."""
    C = _row(spec.calls)
    p0 = spec.p0
    Fa = C * p0 if spec.failures is None else _row(spec.failures)
    G = Fa if spec.failing_calls is None else _row(spec.failing_calls)
    e = C if spec.expected is None else _row(spec.expected)
    var = spec.sigma**2
    phi = spec.phi
    cd = C * _row(spec.shift)  # D = C: every call has a duration
    ef = C * p0
    terms = dict(
        D=C,
        cd=cd,
        vd=C * var * phi,
        C=C,
        F=Fa,
        ef=ef,
        cf=Fa - ef,
        vf=ef * (1 - p0) * phi,
        e=e,
        cv=C - e,
        vv=e * phi,
        vdu=C * var,
    )
    sums = _Sums.build(terms, {"G": G, "eg": C * p0}, 1, spec.policy.spans)
    one = np.array([[phi]])
    prior = _Prior(
        phi_d=one,
        phi_f=one,
        phi_v=one,
        phi_g=one,
        phi_s=one,
        n_eff_d=np.array([[spec.n_eff]]),
        n_eff_f=np.array([[spec.n_eff]]),
        tau2_d=np.array([[spec.tau2]]),
        tau2_f=np.array([[spec.tau2]]),
        thin=np.zeros(1, bool),
        thin_rows=np.zeros(0, np.int64),
        vol_rows=np.array([[spec.vol_judged]]),
    )
    p95 = np.array([[np.exp(np.log(400.0) + 1.645 * spec.sigma)]])
    return _Tested(_parts(), spec.policy, prior, sums, p95, cd, terms["cf"], terms["cv"], None)


def span_sums(t: _Tested, s: int = T) -> dict[str, np.ndarray]:
    """The sums over the trailing span of ``s`` buckets, as ``features._test_span`` rolls them."""
    return {k: t.sums.roll(k, s) for k in t.sums.sums}


def duration_p(spec: Spec) -> tuple[float, float]:
    t = make_tested(spec)
    z, p = _duration_p(t, span_sums(t), T)
    return float(z[0, 0]), float(p[0, 0])


def failure_p(spec: Spec) -> float:
    t = make_tested(spec)
    _, _, p = _failure_p(t, span_sums(t), T)
    return float(p[0, 0])


def volume_p(spec: Spec) -> float:
    t = make_tested(spec)
    return float(_volume_p(t, span_sums(t))[0, 0])


def binom_upper(k: float, n: float, p: float) -> float:
    """P(X >= k), X ~ Binomial(n, p)."""
    return float(stats.binom.sf(k - 1, n, p))


# --------------------------------------------------------------------------------------------
# _duration_p: one-sided normal test of the mean log-duration (x duration_p_factor)
# --------------------------------------------------------------------------------------------


def _per_bucket(total_calls: float) -> float:
    return total_calls / T


@pytest.mark.parametrize(
    ("spec", "expect"),
    [
        # No shift: z = 0, one-sided p = 1/2, x10 calibration -> capped at 1.
        pytest.param(Spec(shift=0.0), "not_sig", id="no-shift-p-is-1"),
        # +30 % (log 0.262) on 1200 calls at sigma 0.5: z = sqrt(1200) 0.262 / 0.5 = 18.
        pytest.param(Spec(shift=np.log(1.3)), "tiny", id="plus30pct-1200-calls-tiny-p"),
        # The same +30 % on 3 calls: z = sqrt(3) 0.262 / 0.5 = 0.91, p = 10 x 0.18 -> 1.
        pytest.param(
            Spec(calls=[0.0] * 9 + [1.0] * 3, shift=np.log(1.3)), "not_sig", id="plus30pct-3-calls"
        ),
        # Faster by 30 %: a one-sided test of "slower" sees nothing.
        pytest.param(Spec(shift=np.log(0.7)), "not_sig", id="faster-is-one-sided-p-1"),
        # The baseline level is wandering (tau2 = 0.1^2 an hour): +5 % on a million calls is
        # z ~ 0.05 / 0.1 = 0.5, however many calls (the level itself is that uncertain).
        pytest.param(
            Spec(calls=1e6 / T, shift=0.05, tau2=0.01), "not_sig", id="wander-caps-z-on-many-calls"
        ),
    ],
)
def test_duration_p_significance(spec: Spec, expect: str) -> None:
    _, p = duration_p(spec)
    if expect == "tiny":
        assert p < 1e-20
    else:
        assert p * N_SPANS > POLICY.alpha


@pytest.mark.parametrize(
    ("total", "z"),
    [
        # shift 0.05 at sigma 0.5: z = sqrt(n) x 0.1
        pytest.param(900, 3.0, id="900-calls-z3"),
        pytest.param(1600, 4.0, id="1600-calls-z4"),
        pytest.param(2500, 5.0, id="2500-calls-z5"),
    ],
)
def test_duration_p_is_the_calibrated_normal_tail(total: float, z: float) -> None:
    zd, p = duration_p(Spec(calls=_per_bucket(total), shift=0.05))
    assert zd == pytest.approx(z, rel=1e-9)
    assert p == pytest.approx(min(POLICY.duration_p_factor * stats.norm.sf(z), 1.0), rel=1e-9)


def test_duration_p_falls_with_more_calls_at_the_same_shift() -> None:
    ps = [duration_p(Spec(calls=_per_bucket(n), shift=0.05))[1] for n in (400, 900, 1600, 2500)]
    assert all(a > b for a, b in zip(ps, ps[1:], strict=False))


def test_duration_baseline_of_as_many_calls_doubles_the_variance() -> None:
    # A level estimated from n_eff = n calls has variance var / n: the difference of two means
    # of n calls each has twice one mean's variance, so z falls by sqrt(2).
    z_known, _ = duration_p(Spec(calls=100.0, shift=0.05))
    z_est, _ = duration_p(Spec(calls=100.0, shift=0.05, n_eff=1200.0))
    assert z_est == pytest.approx(z_known / np.sqrt(2), rel=1e-9)


# --------------------------------------------------------------------------------------------
# _failure_p: one-sided exact binomial tail (deflated by overdispersion), and the same test on
# the distinct failing calls
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        # 1 % baseline, 1200 calls, 60 failures (5 %): P(Bin(1200, .01) >= 60) ~ 1e-19.
        pytest.param(Spec(failures=5.0), binom_upper(60, 1200, 0.01), id="5pct-on-1200-exact"),
        # 15 failures of 1200 (1.25 %): z = 3 / 3.45 = 0.87 < 1.5, never even computed: p = 1.
        pytest.param(Spec(failures=[1.0] * 9 + [2.0] * 3), 1.0, id="slight-rise-p-1"),
        # 1 failure in 3 calls: P(X >= 1) = 1 - 0.99^3 = 0.0297 (z = 5.7 makes it a candidate).
        pytest.param(
            Spec(calls=[0.0] * 9 + [1.0] * 3, failures=[0.0] * 11 + [1.0]),
            1 - 0.99**3,
            id="1-failure-in-3-calls-exact",
        ),
        # A baseline rate estimated from as many calls (n_eff = 1200) doubles the variance:
        # the counts are deflated by 2, P(Bin(600, .01) >= 30).
        pytest.param(
            Spec(failures=5.0, n_eff=1200.0),
            binom_upper(30, 600, 0.01),
            id="baseline-of-as-many-calls-halves-the-counts",
        ),
    ],
)
def test_failure_p_is_the_exact_binomial_tail(spec: Spec, expected: float) -> None:
    assert failure_p(spec) == pytest.approx(expected, rel=1e-6, abs=0)


@pytest.mark.parametrize(
    ("spec", "significant"),
    [
        pytest.param(Spec(), False, id="at-baseline-rate"),
        pytest.param(Spec(failures=0.0), False, id="fewer-failures-one-sided"),
        pytest.param(Spec(failures=5.0), True, id="1pct-to-5pct-on-1200-calls"),
        # 5 % of 3 calls is 0.15 failures: the most a shift of that size can show is 1 failure,
        # p = 0.03 (x 6 spans): not significant.
        pytest.param(
            Spec(calls=[0.0] * 9 + [1.0] * 3, failures=[0.0] * 11 + [1.0]),
            False,
            id="same-shift-on-3-calls",
        ),
        # 60 failures, but in 12 bad calls failing 5 legs each: 12 failing calls against 12
        # expected is no evidence (p = max of the two tests).
        pytest.param(Spec(failures=5.0, failing_calls=1.0), False, id="60-failures-in-12-calls"),
        # Overdispersion 20: 60 failures of 1200 calls count as 3 of 60, and
        # P(Bin(60, .01) >= 3) = 0.022: the same rates are no longer significant.
        pytest.param(Spec(failures=5.0, phi=20.0), False, id="overdispersion-20-deflates"),
    ],
)
def test_failure_p_significance(spec: Spec, significant: bool) -> None:
    assert (failure_p(spec) * N_SPANS <= POLICY.alpha) is significant


def test_failure_p_falls_with_more_calls_at_the_same_rates() -> None:
    # 1 % -> 3 % on 120, 240, 480, 960 calls
    ps = [failure_p(Spec(calls=c, failures=0.03 * c)) for c in (10.0, 20.0, 40.0, 80.0)]
    assert all(a > b for a, b in zip(ps, ps[1:], strict=False))
    assert ps[-1] < 1e-6


def test_failure_p_rises_with_overdispersion() -> None:
    ps = [failure_p(Spec(failures=3.0, phi=phi)) for phi in (1.0, 2.0, 4.0)]
    assert all(a < b for a, b in zip(ps, ps[1:], strict=False))


@pytest.mark.parametrize(
    ("failing_calls", "expected"),
    [
        # Failing calls are judged against 1 % of 1200 calls as calls: the binomial tail of G.
        pytest.param(5.0, binom_upper(60, 1200, 0.01), id="every-failure-its-own-call"),
        pytest.param(1.0, binom_upper(12, 1200, 0.01), id="12-calls-as-expected"),
        pytest.param(0.0, 1.0, id="no-failing-call-p-1"),
    ],
)
def test_failing_calls_p_is_the_binomial_tail_of_calls(
    failing_calls: float, expected: float
) -> None:
    t = make_tested(Spec(failures=5.0, failing_calls=failing_calls))
    r = span_sums(t)
    cand = np.ones((1, 1), bool)
    pg = _failing_calls_p(t, T, r["C"], cand, np.ones((1, 1)))
    assert float(pg[0]) == pytest.approx(expected, rel=1e-6, abs=0)


# --------------------------------------------------------------------------------------------
# _volume_p: two-sided Poisson tail (deflated by overdispersion), only where volume is judged
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        # 600 calls against 1200 expected: 2 P(Pois(1200) <= 600).
        pytest.param(
            Spec(calls=50.0, expected=100.0),
            2 * stats.poisson.cdf(600, 1200),
            id="halved-two-sided-exact",
        ),
        # 24 calls against 48: 2 P(Pois(48) <= 24) ~ 1.4e-4.
        pytest.param(
            Spec(calls=2.0, expected=4.0), 2 * stats.poisson.cdf(24, 48), id="halved-on-48-exact"
        ),
        # A rise: 2 P(Pois(1200) >= 1440).
        pytest.param(
            Spec(calls=120.0, expected=100.0),
            2 * stats.poisson.sf(1439, 1200),
            id="plus20pct-rise-exact",
        ),
    ],
)
def test_volume_p_is_the_two_sided_poisson_tail(spec: Spec, expected: float) -> None:
    assert volume_p(spec) == pytest.approx(expected, rel=1e-6, abs=0)


@pytest.mark.parametrize(
    ("spec", "significant"),
    [
        pytest.param(Spec(calls=100.0, expected=100.0), False, id="as-expected"),
        pytest.param(Spec(calls=50.0, expected=100.0), True, id="halved-on-1200"),
        pytest.param(Spec(calls=200.0, expected=100.0), True, id="doubled-two-sided"),
        # Half of 3 expected calls: 1 or 2 seen is what Poisson(3) gives anyway (z = -0.9).
        pytest.param(
            Spec(calls=[0.0] * 11 + [1.5], expected=[0.0] * 11 + [3.0]),
            False,
            id="halved-on-3-expected",
        ),
        pytest.param(
            Spec(calls=50.0, expected=100.0, vol_judged=False), False, id="version-not-judged"
        ),
        # Overdispersion 20: 24 calls of 48 expected count as 1.2 of 2.4 (z = -0.8): the
        # halving that was significant above is not.
        pytest.param(Spec(calls=2.0, expected=4.0, phi=20.0), False, id="overdispersion-20-on-48"),
    ],
)
def test_volume_p_significance(spec: Spec, significant: bool) -> None:
    assert (volume_p(spec) * N_SPANS <= POLICY.alpha) is significant


def test_volume_p_falls_with_more_expected_calls_at_the_same_drop() -> None:
    ps = [volume_p(Spec(calls=e / 2, expected=e)) for e in (2.0, 4.0, 8.0, 16.0)]
    assert all(a > b for a, b in zip(ps, ps[1:], strict=False))


# --------------------------------------------------------------------------------------------
# _span_checks: the thirds and the latest window of a span
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("s", "offsets", "latest"),
    [
        pytest.param(1, [0], [1], id="1-bucket-one-third"),
        pytest.param(3, [0, 1, 2], [1], id="3-buckets-single-bucket-thirds"),
        pytest.param(12, [0, 4, 8], [4], id="1h-thirds-of-4"),
        pytest.param(36, [0, 12, 24], [12], id="3h-latest-is-the-third"),
        # 12 h: thirds of 48; the latest window starts at latest_span (12) and doubles up to
        # the third (12, 24, 48).
        pytest.param(144, [0, 48, 96], [12, 24, 48], id="12h-latest-doubles-to-the-third"),
    ],
)
def test_span_checks_thirds_and_latest(s: int, offsets: list[int], latest: list[int]) -> None:
    checks = _span_checks(s, POLICY)
    thirds, last = checks[:-1], checks[-1]
    assert [c.off for c in thirds] == offsets
    assert all(c.zmin == 0.0 and c.frac == 0.0 for c in thirds)
    assert all(c.share == POLICY.third_volume_share for c in thirds)
    # the thirds cover the span
    assert offsets[-1] + thirds[-1].windows[0] >= s
    assert (last.off, last.zmin, last.windows) == (0, POLICY.latest_z, latest)
    assert (last.frac, last.share) == (POLICY.latest_share, 1.0)


# --------------------------------------------------------------------------------------------
# _sub_checks: leave-one-out, every third deviates, and the latest window is current
# --------------------------------------------------------------------------------------------


def sub_checks(spec: Spec, m: int) -> bool:
    t = make_tested(spec)
    span = _Span(T, span_sums(t), _span_checks(T, spec.policy), None)  # type: ignore[arg-type]
    return bool(_sub_checks(t, span, m, np.array([0]), np.array([0]))[0])


@pytest.mark.parametrize(
    ("spec", "m", "passes"),
    [
        # +35 % in every bucket (100 calls each): loo z = 19, each third z = 12.
        pytest.param(Spec(shift=0.3), D, True, id="duration-steady-shift"),
        # The same total excess in the last bucket alone: dropping it leaves z = 0.
        pytest.param(Spec(shift=[0.0] * 11 + [3.6]), D, False, id="duration-one-bucket"),
        # +57 % for 40 minutes, then back to normal for the last 20: not current.
        pytest.param(Spec(shift=[0.45] * 8 + [0.0] * 4), D, False, id="duration-over"),
        # 6 % failing in every bucket against 1 %: loo z = 16, each third z = 10.
        pytest.param(Spec(failures=6.0), F, True, id="failures-steady-rise"),
        pytest.param(Spec(failures=[1.0] * 11 + [61.0]), F, False, id="failures-one-bucket"),
        pytest.param(Spec(failures=[6.0] * 8 + [1.0] * 4), F, False, id="failures-over"),
        # -70 % in every bucket against 100 expected: each third -70 %, z = -14.
        pytest.param(Spec(calls=30.0, expected=100.0), V, True, id="volume-steady-drop"),
        pytest.param(
            Spec(calls=[30.0] * 8 + [100.0] * 4, expected=100.0), V, False, id="volume-recovered"
        ),
        pytest.param(
            Spec(calls=[100.0] * 11 + [0.0], expected=100.0), V, False, id="volume-one-bucket"
        ),
        pytest.param(Spec(calls=250.0, expected=100.0), V, True, id="volume-steady-rise"),
    ],
)
def test_sub_checks(spec: Spec, m: int, passes: bool) -> None:
    assert sub_checks(spec, m) is passes


# --------------------------------------------------------------------------------------------
# Sequential: thresholds, windowed CUSUM, log-likelihood ratios, null failure rate
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("looks", "n_seq", "budget"),
    [
        pytest.param(288.0, 1, 0.1, id="one-test-288-looks"),
        pytest.param(288.0, 100, 0.1, id="100-tests"),
        pytest.param(20.0, 10, 1.0, id="generous-budget"),
    ],
)
def test_sequential_threshold_spends_the_false_alarm_budget(
    looks: float, n_seq: int, budget: float
) -> None:
    # Ville: each look starts an SPRT crossing h with probability <= e^-h, so the n_seq
    # tests raise at most n_seq x looks x e^-h false alarms a day: exactly the budget.
    policy = DetectionPolicy(sequential_false_alerts_per_day=budget)
    h = float(sequential_thresholds(np.array([looks]), n_seq, policy)[0])
    assert n_seq * looks * np.exp(-h) == pytest.approx(budget, rel=1e-9)


def test_sequential_thresholds_grow_with_tests_and_shrink_with_budget() -> None:
    looks = np.array([288.0])
    by_n = [float(sequential_thresholds(looks, n, POLICY)[0]) for n in (1, 10, 100, 1000)]
    assert all(a < b for a, b in zip(by_n, by_n[1:], strict=False))
    # ten times the tests: ln(10) more evidence needed
    assert by_n[1] - by_n[0] == pytest.approx(np.log(10))
    by_budget = [
        float(
            sequential_thresholds(looks, 10, DetectionPolicy(sequential_false_alerts_per_day=b))[0]
        )
        for b in (0.01, 0.1, 1.0)
    ]
    assert all(a > b for a, b in zip(by_budget, by_budget[1:], strict=False))
    # a partition that almost never looks still needs a likelihood ratio of e
    assert float(sequential_thresholds(np.array([1e-6]), 1, POLICY)[0]) == 1.0


@pytest.mark.parametrize(
    ("llr", "w", "expected"),
    [
        pytest.param([-1.0] * 6, 6, [0.0] * 6, id="evidence-against-stays-0"),
        pytest.param([1.0] * 6, 6, [1, 2, 3, 4, 5, 6], id="accumulates"),
        # windows of at most 3 buckets: never more than 3 x 1
        pytest.param([1.0] * 6, 3, [1, 2, 3, 3, 3, 3], id="window-bounds-memory"),
        # a burst of 5, then evidence against it: 5, 4, 3, ... down to 0
        pytest.param([5.0, -1, -1, -1, -1, -1, -1], 10, [5, 4, 3, 2, 1, 0, 0], id="decays"),
        # the burst leaves the 3-bucket window: forgotten though the llr since is only 0
        pytest.param([5.0, 0, 0, 0, 0], 3, [5, 5, 5, 0, 0], id="burst-leaves-window"),
    ],
)
def test_windowed_cusum(llr: list[float], w: int, expected: list[float]) -> None:
    x = np.array([llr])
    out = windowed_cusum(x, w, x.shape[1])
    np.testing.assert_allclose(out[0], expected, atol=1e-12)


def test_binomial_llr_favours_the_alternative_only_when_failures_reach_it() -> None:
    n, p0 = 1000.0, 0.01
    p1 = POLICY.sequential_fold * p0  # 4 %, more than 1 % + 2 points
    one = np.array([[1.0]])

    def llr(k: float) -> float:
        return float(
            _binomial_llr(np.array([[n]]), np.array([[k]]), np.array([[p0]]), one, POLICY)[0, 0]
        )

    # E[llr] = n KL: negative under the null rate, positive under the alternative.
    assert llr(n * p0) == pytest.approx(-n * kl(p0, p1), rel=1e-9)
    assert llr(n * p1) == pytest.approx(n * kl(p1, p0), rel=1e-9)
    ks = [llr(k) for k in (0, 10, 20, 40, 80)]
    assert all(a < b for a, b in zip(ks, ks[1:], strict=False))
    # Overdispersion 4: a quasi-likelihood, a quarter of the evidence.
    q = _binomial_llr(np.array([[n]]), np.array([[40.0]]), np.array([[p0]]), 4 * one, POLICY)
    assert float(q[0, 0]) == pytest.approx(llr(40) / 4)


def kl(a: float, b: float) -> float:
    """Kullback-Leibler divergence of Bernoulli(a) from Bernoulli(b)."""
    return a * np.log(a / b) + (1 - a) * np.log((1 - a) / (1 - b))


def test_binomial_llr_tunes_to_at_least_min_failure_points() -> None:
    # A 0.1 % baseline: 4-fold is 0.4 %, below +2 points, so the alternative is 2.1 %; one
    # failure in one call is worth ln(0.021 / 0.001).
    out = _binomial_llr(
        np.array([[1.0]]), np.array([[1.0]]), np.array([[0.001]]), np.ones((1, 1)), POLICY
    )
    assert float(out[0, 0]) == pytest.approx(np.log(0.021 / 0.001))


@pytest.mark.parametrize(
    ("calls", "sign"),
    [
        pytest.param(100.0, -1, id="as-expected-favours-null"),
        pytest.param(25.0, 1, id="fallen-4-fold-favours-drop"),
        pytest.param(0.0, 1, id="silence-most-evidence"),
        pytest.param(150.0, -1, id="rise-is-not-a-drop"),
    ],
)
def test_volume_llr_sign(calls: float, sign: int) -> None:
    out = float(volume_llr(np.array([[calls]]), np.array([[100.0]]), np.ones(1), 4.0)[0, 0])
    # Poisson llr of rate e/4 against e: c ln(1/4) + e (1 - 1/4)
    assert out == pytest.approx(calls * np.log(0.25) + 75.0)
    assert np.sign(out) == sign


def make_base(fail_rate: float, n_eff: float | None, tau2: float = 0.0) -> Baselines:
    """One partition's baselines, flat over the 168 hour-of-week slots."""
    one = np.ones(1)
    flat = np.ones((1, 168))
    return Baselines(
        exp_calls=flat * 20.0,
        fail_rate=flat * fail_rate,
        mu_log=flat * np.log(400.0),
        var_log=flat * 0.25,
        phi_dur=one,
        phi_fail=one,
        phi_vol=one,
        calls=one * 1e4,
        buckets=one * 2016,
        excluded=one * 0,
        history_days=one * 7,
        kind=np.array(["flat"], dtype=object),
        weight=one,
        provisional=np.zeros(1, bool),
        has_history=np.ones(1, bool),
        tau2_fail=one * tau2,
        tau2_dur=one * 0.0,
        n_eff_fail=None if n_eff is None else one * n_eff,
    )


@pytest.mark.parametrize(
    ("n_eff", "tau2", "expected"),
    [
        pytest.param(None, 0.0, 0.01, id="known-exactly-is-the-rate"),
        # 0.01 + 2 sqrt(0.01 x 0.99 / 100)
        pytest.param(100.0, 0.0, 0.01 + 2 * np.sqrt(0.0099 / 100), id="100-calls-upper-bound"),
        pytest.param(1e4, 0.0, 0.01 + 2 * np.sqrt(0.0099 / 1e4), id="1e4-calls-closer"),
        # wander only: sd 0.005 -> 2 sd above
        pytest.param(None, 0.005**2, 0.02, id="wander-2-sd"),
    ],
)
def test_null_failure_rate_is_the_baselines_upper_bound(
    n_eff: float | None, tau2: float, expected: float
) -> None:
    out = null_failure_rate(make_base(0.01, n_eff, tau2), np.array([0, 5]))
    np.testing.assert_allclose(out, expected, rtol=1e-9)


# --------------------------------------------------------------------------------------------
# decide: practical effect, enough volume, N of M, any within, persistence, Bonferroni
# --------------------------------------------------------------------------------------------


def evidence(T_: int = 1, **overrides: object) -> Evidence:
    """Evidence of one version partition over ``T_`` buckets: nothing deviates."""
    M = len(METRIC_NAMES)
    shape = (1, M, T_)
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
        is_fleet=np.zeros(1, bool),
        op_index=np.zeros(1, np.int64),
        has_history=np.ones(1, bool),
        testable=np.ones((1, M), bool),
        maintenance=np.zeros(T_, bool),
        judged=np.ones(T_, bool),
    )
    for name, value in overrides.items():
        setattr(ev, name, value)
    return ev


def _at(m: int, value: float, fill: float = 0.0) -> np.ndarray:
    out = np.full((1, 3, 1), fill)
    out[0, m, 0] = value
    return out


@pytest.mark.parametrize(
    ("m", "effect", "effect_ms", "policy", "practical"),
    [
        pytest.param(D, 0.30, 150.0, POLICY, True, id="dur-30pct-150ms"),
        pytest.param(D, 0.30, 50.0, POLICY, False, id="dur-30pct-but-50ms"),
        pytest.param(D, 0.10, 500.0, POLICY, False, id="dur-500ms-but-10pct"),
        pytest.param(F, 0.02, 0.0, POLICY, True, id="fail-exactly-2-points"),
        pytest.param(F, 0.019, 0.0, POLICY, False, id="fail-1.9-points"),
        pytest.param(V, -0.5, 0.0, POLICY, True, id="vol-halved"),
        pytest.param(V, -0.4, 0.0, POLICY, False, id="vol-minus-40pct"),
        pytest.param(V, 2.0, 0.0, POLICY, False, id="vol-tripled-drop-only"),
        pytest.param(
            V, 2.0, 0.0, DetectionPolicy(volume_direction="both"), True, id="vol-tripled-both"
        ),
        pytest.param(
            V, -0.9, 0.0, DetectionPolicy(volume_direction="rise"), False, id="vol-drop-rise-only"
        ),
    ],
)
def test_practical(
    m: int, effect: float, effect_ms: float, policy: DetectionPolicy, practical: bool
) -> None:
    ev = evidence(effect=_at(m, effect), effect_ms=_at(m, effect_ms))
    assert bool(_practical(ev, policy)[0, m, 0]) is practical
    if m == V:
        assert bool(volume_effect_ok(np.array(effect), policy)) is practical


@pytest.mark.parametrize(
    ("m", "n", "k", "share", "enough"),
    [
        pytest.param(D, 30.0, 0.0, None, True, id="dur-30-calls"),
        pytest.param(D, 29.0, 0.0, None, False, id="dur-29-calls"),
        pytest.param(F, 500.0, 4.0, None, True, id="fail-4-failures"),
        pytest.param(F, 500.0, 3.0, None, False, id="fail-3-failures-of-500"),
        pytest.param(F, 29.0, 20.0, None, False, id="fail-29-calls"),
        pytest.param(V, 30.0, 0.0, None, True, id="vol-30-expected"),
        pytest.param(V, 10.0, 0.0, None, False, id="vol-10-expected"),
        pytest.param(D, 500.0, 0.0, 0.04, False, id="dur-4pct-of-traffic"),
    ],
)
def test_enough_volume(m: int, n: float, k: float, share: float | None, enough: bool) -> None:
    ev = evidence(n=_at(m, n, 500.0), k=_at(m, k, 50.0))
    if share is not None:
        ev.share = _at(m, share, 1.0)
    assert bool(_enough_volume(ev, POLICY)[0, m, 0]) is enough


@pytest.mark.parametrize(
    ("hot", "n", "m", "expected"),
    [
        pytest.param("001100", 2, 3, "000110", id="2of3-pair"),
        pytest.param("101001", 2, 3, "001000", id="2of3-scattered"),
        pytest.param("111111", 3, 3, "001111", id="3of3-needs-3-buckets-seen"),
        pytest.param("010110", 1, 1, "010110", id="1of1-identity"),
        pytest.param("110011", 2, 4, "011111", id="2of4"),
        pytest.param("100000", 1, 3, "111000", id="1of3-lasts-3"),
    ],
)
def test_n_of_m(hot: str, n: int, m: int, expected: str) -> None:
    h = np.array([[[c == "1" for c in hot]]])
    out = _n_of_m(h, n, m)
    assert "".join("1" if x else "0" for x in out[0, 0]) == expected


@pytest.mark.parametrize(
    ("flags", "span", "expected"),
    [
        pytest.param("001000", [1] * 6, "001000", id="span1-identity"),
        pytest.param("001000", [3] * 6, "001110", id="span3-carries-2-more"),
        pytest.param("001000", [1, 1, 1, 2, 1, 4], "001101", id="span-per-bucket"),
        pytest.param("100000", [10] * 6, "111111", id="span-reaching-before-start"),
        pytest.param("000000", [6] * 6, "000000", id="nothing-flagged"),
    ],
)
def test_any_within(flags: str, span: list[int], expected: str) -> None:
    f = np.array([[[c == "1" for c in flags]]])
    out = _any_within(f, np.array([[span]]))
    assert "".join("1" if x else "0" for x in out[0, 0]) == expected


@pytest.mark.parametrize(
    ("hot", "span", "previous", "expected"),
    [
        # A hot 3-bucket span: its single-bucket thirds each deviated, persistent at once.
        pytest.param("0010", 3, None, "0010", id="span3-persistent-at-once"),
        # A 12-bucket span: one hot bucket says nothing about the last 3, needs 2 of 3.
        pytest.param("0011", 12, None, "0001", id="span12-needs-2of3"),
        pytest.param("0010", 1, None, "0000", id="span1-alone-not-persistent"),
        # The previous run's last bucket was hot: 2 of 3 already at the first bucket.
        pytest.param("1000", 12, "01", "1000", id="previous-run-counts"),
    ],
)
def test_persistence(hot: str, span: int, previous: str | None, expected: str) -> None:
    def rows(flags: str) -> np.ndarray:
        return np.broadcast_to(np.array([c == "1" for c in flags]), (1, 3, len(flags))).copy()

    h = rows(hot)
    ev = evidence(T_=len(hot))
    ev.span = np.full((1, 3, len(hot)), span, np.int64)
    prev = None if previous is None else rows(previous)
    hot_out, persistent = _persistence(ev, POLICY, h, prev)
    assert "".join("1" if x else "0" for x in (hot_out & persistent)[0, 0]) == expected


@pytest.mark.parametrize(
    ("p", "n_tests", "alpha_scale", "sig"),
    [
        pytest.param(1e-3, 5.0, None, True, id="5-tests-5e-3"),
        pytest.param(1e-3, 20.0, None, False, id="20-tests-2e-2"),
        pytest.param(1e-3, 1.0, 0.05, False, id="short-history-alpha-x0.05"),
        pytest.param(0.01, 1.0, None, True, id="exactly-alpha"),
    ],
)
def test_gates_bonferroni(p: float, n_tests: float, alpha_scale: float | None, sig: bool) -> None:
    ev = evidence(p=_at(F, p, 1.0), n_tests=np.array([1.0, n_tests, 1.0]))
    if alpha_scale is not None:
        ev.alpha_scale = np.array([alpha_scale])
    g = _gates(ev, POLICY, None)
    assert bool(g.sig[0, F, 0]) is sig
    assert bool(g.raw_sig[0, F, 0]) is (p <= POLICY.alpha)


@pytest.mark.parametrize(
    ("flags", "runs"),
    [
        pytest.param([], [], id="empty"),
        pytest.param([0, 0, 0], [], id="no-true"),
        pytest.param([1, 1, 1], [(0, 3)], id="all-true-half-open"),
        pytest.param([0, 1, 1, 0, 1], [(1, 3), (4, 5)], id="two-runs-last-at-the-end"),
    ],
)
def test_true_runs_are_half_open_ranges(flags: list[int], runs: list[tuple[int, int]]) -> None:
    from detector.detect.features import true_runs

    assert true_runs(np.asarray(flags, dtype=bool)) == runs


# --- decide.multiplicity: the run's corrections, in one place --------------------------------


@pytest.mark.parametrize(
    ("n_new", "fail_share", "roll"),
    [(0, 1.0, 0.0), (1, 0.8, 0.01 * 0.2 / 12), (4, 0.8, 0.01 * 0.2 / 48)],
)
def test_multiplicity_splits_alpha_between_trailing_and_rollout_tests(
    n_new: int, fail_share: float, roll: float
) -> None:
    testable = np.array([[True, True, False], [True, True, True], [False, True, True]])
    active = np.array([True, True, False])
    m = multiplicity(testable, active, 300.0, DetectionPolicy(), n_new)
    assert list(m.n_tested) == [2, 2, 1]  # the inactive partition is not counted
    assert m.per_hour == 12.0 and list(m.n_tests) == [24.0, 24.0, 12.0]
    assert m.on_scale == pytest.approx([0.01 / 24, 0.01 / 24, 0.01 / 12], abs=0)
    assert m.test_alpha == pytest.approx([0.01 / 24, 0.01 / 24 * fail_share, 0.01 / 12], rel=1e-15)
    assert m.roll_alpha == pytest.approx(roll, rel=1e-15)
    assert m.forest_tests == 24.0


def test_multiplicity_splits_the_duration_alpha_with_the_tail_tests() -> None:
    testable, active = np.ones((2, 3), bool), np.ones(2, bool)
    m = multiplicity(testable, active, 300.0, DetectionPolicy(), 0, 4)
    assert m.roll_alpha == 0.0 and m.tail_alpha == pytest.approx(0.01 * 0.2 / 48, rel=1e-15)
    assert m.test_alpha == pytest.approx([0.01 / 24 * 0.8, 0.01 / 24, 0.01 / 24], rel=1e-15)
    p = np.full((2, 3, 4), 1e-4)
    on_decide_scale(p, m)
    assert p[:, 0] == pytest.approx(1e-4 / 0.8, rel=1e-15)
    assert (p[:, 1:] == 1e-4).all()


def test_on_decide_scale_moves_only_the_failure_rate_and_only_with_new_builds() -> None:
    testable, active = np.ones((2, 3), bool), np.ones(2, bool)
    p = np.full((2, 3, 4), 1e-4)
    on_decide_scale(p, multiplicity(testable, active, 300.0, DetectionPolicy(), 0))
    assert (p == 1e-4).all()
    on_decide_scale(p, multiplicity(testable, active, 300.0, DetectionPolicy(), 2))
    assert p[:, 1] == pytest.approx(1e-4 / 0.8, rel=1e-15)  # met 0.8 alpha: 1/0.8 on the scale
    assert (p[:, [0, 2]] == 1e-4).all()
    p[:] = 0.9
    on_decide_scale(p, multiplicity(testable, active, 300.0, DetectionPolicy(), 2))
    assert p.max() == 1.0  # a p-value stays a p-value
