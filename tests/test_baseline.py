"""Baselines: profile choice, cold-start shrinkage, exclusions (case tables on synthetic buckets)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from detector.detect.baseline import (
    FLEET,
    Partitions,
    compute_baselines,
    exclusion_mask,
    with_fleet,
)
from detector.detect.policy import DetectionPolicy
from tests.fixtures_engine import T0, Part, hours_since_t0, make_aggs, with_failure_rates

POLICY = DetectionPolicy()


def _baselines(
    parts, days=4.0, incidents=(), maintenance=(), alerted=(), policy=POLICY, seed=0, extra=0.0
):
    """Baselines over ``days``; ``extra`` days of data after them (the judged window)."""
    aggs = make_aggs(parts, days=days + extra, incidents=incidents, seed=seed, with_hist=False)
    stats = with_fleet(aggs.stats)
    p = Partitions.from_frame(stats)
    end = T0 + timedelta(days=days)
    base = compute_baselines(
        stats,
        p,
        start=end - policy.baseline,
        end=end,
        policy=policy,
        maintenance=maintenance,
        alerted=alerted,
    )
    return p, base, stats


def _row(p: Partitions, op: str, ver: str) -> int:
    return int(np.flatnonzero((p.operation == op) & (p.version == ver))[0])


@pytest.mark.parametrize(
    ("history_days", "expected"),
    [(1.0, "flat"), (1.5, "flat"), (2.0, "seasonal"), (6.0, "seasonal"), (22.0, "weekly")],
)
def test_profile_follows_the_history_available(history_days: float, expected: str) -> None:
    policy = DetectionPolicy(baseline=timedelta(days=max(history_days, 7)))
    p, base, _ = _baselines([Part("Join", "1.0", 120.0)], days=history_days, policy=policy)
    assert base.kind[_row(p, "Join", FLEET)] == expected
    assert base.kind[_row(p, "Join", "1.0")] == expected


def test_seasonal_profile_learns_the_daily_cycle_and_flat_does_not() -> None:
    parts = [Part("Join", "1.0", 240.0, daily_amplitude=0.8)]
    p, base, _ = _baselines(parts, days=4.0)
    f = _row(p, "Join", FLEET)
    # hour 12 is the daily peak of the fixture's sine, hour 0 the trough (slots 12 and 0).
    assert base.exp_calls[f, 12] > 2.5 * base.exp_calls[f, 0]
    p, flat, _ = _baselines(parts, days=1.0)
    f = _row(p, "Join", FLEET)
    assert flat.exp_calls[f, 12] == pytest.approx(flat.exp_calls[f, 0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hourly_failure_rates_that_differ_only_by_noise_fall_back_to_the_flat_rate(seed) -> None:
    # 0.5 % over 6 days at 60 calls/h: ~1.8 failures per hour of day. Read hour by hour, one
    # hour in several would say "0.1 %" and make its ordinary failures look like an incident.
    parts = [Part("Mute", "1.0", 60.0, fail_rate=0.005)]
    p, base, stats = _baselines(parts, days=6.0, seed=seed)
    f = _row(p, "Mute", FLEET)
    assert base.kind[f] == "seasonal"
    flat = (
        stats.loc[stats.sdk_version == FLEET, "failures"].sum()
        / stats.loc[stats.sdk_version == FLEET, "calls"].sum()
    )
    assert base.fail_rate[f].min() >= 0.6 * flat
    assert base.fail_rate[f].max() <= 1.6 * flat


def test_hourly_failure_rates_that_really_differ_are_kept() -> None:
    # 1 % in the morning hours, 6 % in the afternoon, plenty of calls: the profile keeps it.
    parts = [Part("Join", "1.0", 600.0)]
    aggs = make_aggs(parts, days=4.0, seed=3, with_hist=False)
    rate = np.where(aggs.stats.bucket_start.dt.hour < 12, 0.01, 0.06)
    stats = with_fleet(with_failure_rates(aggs.stats, rate, np.random.default_rng(3)))
    p = Partitions.from_frame(stats)
    end = T0 + timedelta(days=4)
    base = compute_baselines(stats, p, start=end - POLICY.baseline, end=end, policy=POLICY)
    f = _row(p, "Join", FLEET)
    assert base.fail_rate[f, 15] == pytest.approx(0.06, rel=0.15)
    assert base.fail_rate[f, 3] == pytest.approx(0.01, rel=0.3)


@pytest.mark.parametrize(
    ("wander", "incident_hour", "low", "high"),
    [
        (0.0, False, 0.0, 2e-6),  # binomial noise only: no wander
        (0.01, False, 0.5e-4, 2e-4),  # the rate wanders +-1 point from hour to hour
        (0.0, True, 0.0, 2e-6),  # ... and one hour at 30 % (a missed incident) is left out
    ],
)
def test_between_hours_variance_of_the_failure_rate(wander, incident_hour, low, high) -> None:
    rng = np.random.default_rng(7)
    hourly = np.clip(0.03 + wander * rng.standard_normal(24 * 5), 0.001, 1.0)
    if incident_hour:
        hourly[50] = 0.30
    aggs = make_aggs([Part("Join", "1.0", 1200.0)], days=5.0, seed=7, with_hist=False)
    rate = hourly[hours_since_t0(aggs.stats)]
    stats = with_fleet(with_failure_rates(aggs.stats, rate, np.random.default_rng(7)))
    p = Partitions.from_frame(stats)
    end = T0 + timedelta(days=5)
    base = compute_baselines(stats, p, start=end - POLICY.baseline, end=end, policy=POLICY)
    f = _row(p, "Join", FLEET)
    assert low <= base.tau2_fail[f] <= high
    # a version borrows the fleet's wander as it borrows its level; this one has all the calls
    assert base.tau2_fail[_row(p, "Join", "1.0")] == pytest.approx(base.tau2_fail[f], rel=0.05)


def test_a_new_version_failing_from_its_first_call_does_not_read_as_wander() -> None:
    # The version fails 9 % against its siblings' 1 % from the start: how it differs from the
    # level it borrows is the regression under test, not hour-to-hour wander.
    parts = [
        Part("Join", "old", 600.0, fail_rate=0.01),
        Part("Join", "new", 60.0, fail_rate=0.09, start=T0 + timedelta(days=3)),
    ]
    p, base, _ = _baselines(parts, days=4.0)
    new, fleet = _row(p, "Join", "new"), _row(p, "Join", FLEET)
    assert 0.0 < base.weight[new] < 1.0  # partly borrowed
    assert base.tau2_fail[new] <= 2 * base.tau2_fail[fleet] + 1e-6


def _new_build(calls_per_hour: float, from_day: float, **old_new: tuple[float, float]):
    """Baselines over 4 days of Join "old" at 600 calls an hour and "new" at ``calls_per_hour``
    from day ``from_day`` (0: present from the start); each keyword gives a :class:`Part`
    field's (old, new) values. Returns the baselines and the rows of "new" and of the fleet."""
    old = {k: v[0] for k, v in old_new.items()}
    new = {k: v[1] for k, v in old_new.items()}
    start = T0 + timedelta(days=from_day) if from_day else None
    parts = [
        Part("Join", "old", 600.0, **old),
        Part("Join", "new", calls_per_hour, start=start, **new),
    ]
    p, base, _ = _baselines(parts, days=4.0)
    return base, _row(p, "Join", "new"), _row(p, "Join", FLEET)


@pytest.mark.parametrize(
    ("new_rate", "calls_per_hour", "from_day", "leans_on_own"),
    [
        (0.09, 10.0, 3.0, False),
        (0.09, 30.0, 3.0, False),
        (0.025, 30.0, 3.0, True),
        (0.09, 400.0, 3.0, True),
        (0.09, 10.0, 0.0, True),
    ],
)
def test_a_thin_version_failing_since_it_appeared_keeps_its_siblings_level(
    new_rate: float, calls_per_hour: float, from_day: float, leans_on_own: bool
) -> None:
    """A new build failing 9 % against its siblings' 1 % for its whole day of history (not
    flagged yet: 10 calls an hour never fill a tested span) does not lean on that history:
    its level stays its siblings'. Failing 2.5 % (under min_failure_points more), with enough
    history not to be provisional, or present from the start (a rare old version, not a new
    build), it does lean on its own."""
    base, new, fleet = _new_build(calls_per_hour, from_day, fail_rate=(0.01, new_rate))
    assert bool(base.weight[new] > 0) == leans_on_own
    if not leans_on_own:
        assert base.provisional[new] and base.kind[new] == "borrowed"
        assert np.average(base.fail_rate[new]) == pytest.approx(
            np.average(base.fail_rate[fleet]), abs=1e-9
        )


@pytest.mark.parametrize(
    ("factor", "calls_per_hour", "from_day", "leans_on_own"),
    [
        (2.0, 5.0, 3.0, False),
        (1.5, 10.0, 3.0, False),
        (1.12, 10.0, 3.0, True),
        (2.0, 400.0, 3.0, True),
        (2.0, 5.0, 0.0, True),
    ],
)
def test_a_thin_version_slower_since_it_appeared_keeps_its_siblings_duration(
    factor: float, calls_per_hour: float, from_day: float, leans_on_own: bool
) -> None:
    """A new build x2 (or x1.5) slower than its siblings for its whole day of history does not
    lean on that history for its durations: its level stays its siblings'. 12 % slower (under
    min_duration_rel, as another platform's build can be), with enough history not to be
    provisional, or present from the start (a rare old version), it does lean on its own."""
    base, new, fleet = _new_build(calls_per_hour, from_day, median_ms=(900.0, 900.0 * factor))
    assert bool(base.weight[new] > 0) == leans_on_own
    if not leans_on_own:
        assert base.provisional[new] and base.kind[new] == "borrowed"
        np.testing.assert_allclose(base.mu_log[new], base.mu_log[fleet])


@pytest.mark.parametrize("new_calls_per_hour", [0.0, 5.0, 30.0, 400.0])
def test_cold_start_weight_is_n_over_n_plus_k(new_calls_per_hour: float) -> None:
    # An established version fails 1 %, the new one 2.5 %: its baseline is shrunk towards 1 %.
    # (More than min_failure_points more: see the next test.) A rate of 0 in the baseline: the
    # version first shows up in the judged window.
    start_new = T0 + timedelta(days=3 if new_calls_per_hour else 4.1)
    rate = new_calls_per_hour or 30.0
    parts = [
        Part("Join", "old", 600.0, fail_rate=0.01),
        Part("Join", "new", rate, fail_rate=0.025, start=start_new),
    ]
    p, base, stats = _baselines(parts, days=4.0, extra=0.5)
    stats = stats[stats.bucket_start < pd.Timestamp(T0 + timedelta(days=4))]
    new, fleet = _row(p, "Join", "new"), _row(p, "Join", FLEET)
    n = float(stats.loc[stats.sdk_version == "new", "calls"].sum())
    # k is the empirical-Bayes prior strength (within/between-version variance), capped.
    k = base.k_fail[new]
    assert 10 <= k <= POLICY.cold_start_k and 10 <= base.k_dur[new] <= POLICY.cold_start_k
    w = n / (n + k)
    assert base.weight[new] == pytest.approx(min(w, n / (n + base.k_dur[new])))
    assert base.calls[new] == n
    assert base.provisional[new] == (base.weight[new] < POLICY.provisional_weight)
    assert base.kind[new] == ("borrowed" if base.provisional[new] else "flat")
    own = stats.loc[stats.sdk_version == "new"]
    own_rate = own.failures.sum() / own.calls.sum() if n else 0.0
    fleet_rate = (
        stats.loc[stats.sdk_version == FLEET, "failures"].sum()
        / stats.loc[stats.sdk_version == FLEET, "calls"].sum()
    )
    expected = w * own_rate + (1 - w) * fleet_rate
    # The slot values are shrunk towards this flat value, so their mean is close.
    assert np.average(base.fail_rate[new]) == pytest.approx(expected, abs=0.004)
    assert base.has_history[new] and not base.provisional[fleet]


def test_empirical_bayes_k_is_small_when_versions_differ() -> None:
    # Web and native builds with very different latencies: each keeps its own baseline.
    parts = [
        Part("Join", "web", 300.0, 0.01, 300.0),
        Part("Join", "android", 300.0, 0.01, 3000.0),
        Part("Join", "ios", 300.0, 0.01, 1000.0),
    ]
    p, base, _ = _baselines(parts, days=2.0)
    rows = [_row(p, "Join", v) for v in ("web", "android", "ios")]
    assert (base.k_dur[rows] == 10).all() and (base.weight[rows] > 0.97).all()
    assert np.exp(base.mu_log[_row(p, "Join", "android")]).mean() > 2500


def test_alerted_and_maintenance_buckets_are_kept_out() -> None:
    from tests.fixtures_engine import Incident

    bad_start, bad_end = T0 + timedelta(days=2), T0 + timedelta(days=2, hours=6)
    parts = [Part("Join", "1.0", 240.0, fail_rate=0.01, median_ms=500.0)]
    inc = (Incident("Join", None, bad_start, bad_end, duration_factor=3.0, fail_rate=0.5),)
    p, clean, _ = _baselines(parts, seed=3)
    _, polluted, _ = _baselines(parts, incidents=inc, seed=3)
    _, alerted, _ = _baselines(
        parts, incidents=inc, seed=3, alerted=[("Join", "1.0", bad_start, bad_end)]
    )
    _, maint, _ = _baselines(parts, incidents=inc, seed=3, maintenance=[(bad_start, bad_end, None)])
    _, fleet_alert, _ = _baselines(
        parts, incidents=inc, seed=3, alerted=[("Join", FLEET, bad_start, bad_end)]
    )
    v = _row(p, "Join", "1.0")
    rate = lambda b: float(np.mean(b.fail_rate[v]))  # noqa: E731
    assert rate(polluted) > rate(clean) + 0.02
    for b in (alerted, maint, fleet_alert):
        assert rate(b) == pytest.approx(rate(clean), abs=0.004)
        assert np.mean(b.mu_log[v]) == pytest.approx(np.mean(clean.mu_log[v]), abs=0.02)
        # Excluded buckets are not counted either, so expected volume is not biased down.
        assert b.excluded[v] == 72
        assert b.buckets[v] == clean.buckets[v] - 72
        assert np.mean(b.exp_calls[v]) == pytest.approx(np.mean(clean.exp_calls[v]), rel=0.03)


def test_exclusion_mask_scopes() -> None:
    rows = pd.DataFrame(
        {
            "operation_name": ["Join", "Join", "StartCall", "Join"],
            "sdk_version": ["a", "b", "a", "a"],
            "bucket_start": pd.to_datetime(
                ["2026-11-02T01:00Z", "2026-11-02T01:00Z", "2026-11-02T01:00Z", "2026-11-02T03:00Z"]
            ),
        }
    )
    s, e = T0 + timedelta(hours=1), T0 + timedelta(hours=2)
    assert exclusion_mask(rows, [(s, e, None)]).tolist() == [True, True, True, False]
    assert exclusion_mask(rows, [(s, e, "Join")]).tolist() == [True, True, False, False]
    assert exclusion_mask(rows, alerted=[("Join", "a", s, e)]).tolist() == [
        True,
        False,
        False,
        False,
    ]
    assert exclusion_mask(rows, alerted=[("Join", FLEET, s, e)]).tolist() == [
        True,
        True,
        False,
        False,
    ]


def test_with_fleet_sums_versions() -> None:
    aggs = make_aggs([Part("Join", "a", 60.0), Part("Join", "b", 60.0)], days=0.5, with_hist=False)
    stats = with_fleet(aggs.stats)
    fleet = stats[stats.sdk_version == FLEET]
    versions = stats[stats.sdk_version != FLEET]
    for col in ("calls", "failures", "dur_n", "log_dur_sum"):
        assert fleet[col].sum() == pytest.approx(versions[col].sum())


def test_no_history_is_insufficient() -> None:
    policy = DetectionPolicy(min_history=timedelta(hours=12))
    p, base, _ = _baselines([Part("Join", "1.0", 120.0)], days=0.25, policy=policy)
    assert not base.has_history.any()


def test_a_thin_baseline_weakens_the_evidence_against_it() -> None:
    # The same deviation judged against a level learnt from 40 calls is less certain than
    # against one learnt from thousands: the tests add the level's own variance (var / n_eff).
    from dataclasses import replace

    from detector.detect.features import build_cube, span_evidence

    parts = [Part("Join", "1.0.0", 240.0, 0.02, 800.0), Part("Join", "1.1.0", 240.0, 0.02, 800.0)]
    p, base, stats = _baselines(parts, days=3.0, extra=0.5)
    assert base.n_eff_dur is not None and base.n_eff_fail is not None
    v = _row(p, "Join", "1.1.0")
    assert base.n_eff_dur[v] >= base.calls[v]  # own calls plus the prior's k
    end = T0 + timedelta(days=3.5)
    cube = build_cube(stats, p, start=T0 + timedelta(days=2.5), end=end, bucket=POLICY.bucket)
    # Make the last 12 buckets of the version 30 % slower and 5 points more failing.
    cube.s1[v, -12:] += cube.dur_n[v, -12:] * np.log(1.3)
    extra_failures = np.round(cube.calls[v, -12:] * 0.05)  # each from its own call
    cube.failures[v, -12:] += extra_failures
    assert cube.failed_calls is not None
    cube.failed_calls[v, -12:] += extra_failures
    sure = span_evidence(cube, p, replace(base, n_eff_dur=None, n_eff_fail=None), POLICY, last=1)
    thin = replace(base, n_eff_dur=np.full(len(p), 40.0), n_eff_fail=np.full(len(p), 40.0))
    unsure = span_evidence(cube, p, thin, POLICY, last=1)
    for m in (0, 1):  # duration, failure rate: the deviation is there, but less significant
        assert sure.p[v, m, -1] < 1e-6
        assert unsure.p[v, m, -1] > 10 * sure.p[v, m, -1]


def test_duration_p_values_are_calibrated_by_the_policy_factor() -> None:
    # The normal test of the mean log-duration has heavier tails than nominal, so its p-values
    # are scaled by duration_p_factor before they meet alpha; the failure-rate and volume
    # tests (exact tails) are left as they are.
    from dataclasses import replace

    from detector.detect.features import build_cube, span_evidence

    parts = [Part("Join", "1.0.0", 240.0, 0.02, 800.0), Part("Join", "1.1.0", 240.0, 0.02, 800.0)]
    p, base, stats = _baselines(parts, days=3.0, extra=0.5)
    v = _row(p, "Join", "1.1.0")
    cube = build_cube(
        stats, p, start=T0 + timedelta(days=2.5), end=T0 + timedelta(days=3.5), bucket=POLICY.bucket
    )
    cube.s1[v, -3:] += cube.dur_n[v, -3:] * np.log(1.5)
    cube.failures[v, -3:] += 2
    nominal = span_evidence(cube, p, base, replace(POLICY, duration_p_factor=1.0), last=1)
    calibrated = span_evidence(cube, p, base, replace(POLICY, duration_p_factor=10.0), last=1)
    assert 1e-12 < nominal.p[v, 0, -1] < 1e-3
    assert calibrated.p[v, 0, -1] == pytest.approx(10 * nominal.p[v, 0, -1], rel=1e-9)
    assert np.array_equal(calibrated.p[:, 1:], nominal.p[:, 1:])
    assert POLICY.duration_p_factor == DetectionPolicy().duration_p_factor == 10.0


def test_evidence_kept_only_where_a_gate_looks_equals_the_full_evidence() -> None:
    # The engine asks span_evidence for the fields beyond p only at the cells it keeps (forest
    # flags, maintenance); elsewhere they are computed where the best span is significant.
    # p and span must equal the full computation everywhere, every field wherever p <= alpha,
    # and every field at a kept cell whatever its p.
    from detector.detect.features import build_cube, span_evidence
    from tests.fixtures_engine import Incident

    parts = [
        Part(op, ver, 120.0, 0.02, 500.0) for op in ("Join", "StartVideo") for ver in ("1.0", "2.0")
    ]
    t1 = T0 + timedelta(days=2, hours=2)
    incs = (
        Incident("Join", "2.0", t1, t1 + timedelta(hours=3), duration_factor=1.8),
        Incident(
            "StartVideo", None, t1 + timedelta(hours=4), t1 + timedelta(hours=6), fail_rate=0.3
        ),
    )
    p, base, stats = _baselines(parts, days=2.0, extra=0.5, seed=5, incidents=incs)
    cube = build_cube(
        stats, p, start=T0 + timedelta(days=1.5), end=T0 + timedelta(days=2.5), bucket=POLICY.bucket
    )
    full = span_evidence(cube, p, base, POLICY, last=120)
    keep = np.zeros(full.p.shape, bool)
    keep[0, 1, ::7] = True  # some cells kept whatever their p
    got = span_evidence(cube, p, base, POLICY, last=120, keep=keep)
    np.testing.assert_array_equal(got.p, full.p)
    np.testing.assert_array_equal(got.span, full.span)
    sig = full.p <= POLICY.alpha
    assert sig.sum() > 20  # the incidents give the sparse path real work
    for name in full.__dataclass_fields__:
        a, b = getattr(got, name), getattr(full, name)
        if a is None or b is None:  # optional evidence (sequential), set later by the engine
            assert a is None and b is None, name
            continue
        np.testing.assert_array_equal(a[sig | keep], b[sig | keep], err_msg=name)


@pytest.mark.parametrize(("chunk", "threads"), [(1, 1), (3, 2), (1000, 4)])
def test_evidence_and_features_do_not_depend_on_blocks_or_threads(chunk, threads) -> None:
    # Blocks of whole operations, processed by a thread pool, write disjoint rows: the result
    # must be the same as one block on one thread.
    from detector.detect.features import Blocking, bucket_features, build_cube, span_evidence

    parts = [
        Part(op, ver, 120.0, 0.02, 500.0)
        for op in ("Join", "StartCall", "StartVideo")
        for ver in ("1.0.0", "1.1.0", "2.0.0")
    ]
    p, base, stats = _baselines(parts, days=2.0, extra=0.5, seed=3)
    end = T0 + timedelta(days=2.5)
    cube = build_cube(stats, p, start=T0 + timedelta(days=1.5), end=end, bucket=POLICY.bucket)
    ref = span_evidence(cube, p, base, POLICY, last=60, blocking=Blocking(10_000, 1))
    got = span_evidence(cube, p, base, POLICY, last=60, blocking=Blocking(chunk, threads))
    for name in ref.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name), err_msg=name)
    np.testing.assert_array_equal(
        bucket_features(cube, p, base, chunk=chunk), bucket_features(cube, p, base, chunk=10_000)
    )


def test_with_fleet_codes_match_string_grouping() -> None:
    # The categorical path (codes, no string hashing) must give what grouping the strings
    # gives: the same partitions in the same order and every row mapped to the same one.
    parts = [Part("Join", "b", 30.0), Part("Join", "a", 20.0), Part("Call", "", 10.0)]
    stats = make_aggs(parts, days=0.25, with_hist=False).stats
    got = with_fleet(stats)
    assert isinstance(got["operation_name"].dtype, pd.CategoricalDtype)
    plain = got.astype({"operation_name": str, "sdk_version": str})
    p_cat, p_str = Partitions.from_frame(got), Partitions.from_frame(plain)
    assert p_cat.operation.tolist() == p_str.operation.tolist()
    assert p_cat.operation.tolist() == ["Call", "Call", "Join", "Join", "Join"]
    assert p_cat.version.tolist() == p_str.version.tolist() == ["", FLEET, FLEET, "a", "b"]
    assert np.array_equal(p_cat.fleet_of, p_str.fleet_of)
    assert np.array_equal(p_cat.index_of(got), p_str.index_of(plain))
    # Fleet rows: per (operation, bucket) the sum of its versions, every column.
    fleet = got[got["sdk_version"] == FLEET].astype({"operation_name": str})
    want = stats.groupby(["operation_name", "bucket_start"])[["calls", "log_dur_sum"]].sum()
    have = fleet.set_index(["operation_name", "bucket_start"])[["calls", "log_dur_sum"]]
    pd.testing.assert_frame_equal(
        have.sort_index(), want.sort_index(), check_names=False, check_index_type=False
    )
    assert got["calls"].dtype == np.int64
    # A raw version literally named "*" is the fleet partition, as string grouping made it.
    star = with_fleet(
        stats.assign(sdk_version=stats["sdk_version"].where(stats["sdk_version"] != "a", "*"))
    )
    assert Partitions.from_frame(star).version.tolist() == ["", FLEET, FLEET, "b"]
    # A partition list from another frame maps this frame's rows by name (-1: not there).
    other = Partitions.from_frame(with_fleet(stats[stats["operation_name"] == "Join"]))
    idx = other.index_of(got)
    ops = got["operation_name"].astype(str).to_numpy()
    assert (idx[ops == "Call"] == -1).all() and (idx[ops == "Join"] >= 0).all()


def test_hour_of_week_arithmetic_matches_the_calendar() -> None:
    # compute_baselines takes slots from epoch arithmetic (no calendar fields for millions of
    # rows); it must agree with slot_of everywhere, before 1970 and across DST-free UTC.
    from detector.detect.baseline import _hour_of_week, epoch_ns, slot_of

    times = pd.date_range("1969-12-20", "2027-01-10", freq="37h", tz="UTC")
    assert np.array_equal(_hour_of_week(epoch_ns(times)), slot_of(times))
    # Naive and microsecond-unit columns read the same instants as tz-aware nanoseconds.
    naive = pd.Series(times.tz_localize(None).as_unit("us"))
    assert np.array_equal(epoch_ns(naive), times.as_unit("ns").asi8)


@pytest.mark.parametrize(
    ("w", "expected"),
    [
        (1, [[1, 2, 3, 4], [0, 5, 0, 5]]),
        (2, [[1, 3, 5, 7], [0, 5, 5, 5]]),
        (3, [[1, 3, 6, 9], [0, 5, 5, 10]]),
        (9, [[1, 3, 6, 10], [0, 5, 5, 10]]),  # longer than the row: running sums
    ],
)
def test_trailing_sum(w: int, expected: list[list[int]]) -> None:
    from detector.detect.features import _trailing_sum

    x = np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 5.0, 0.0, 5.0]])
    assert _trailing_sum(x, w).tolist() == expected
    assert x.tolist() == [[1, 2, 3, 4], [0, 5, 0, 5]]  # the input is left as it was


@pytest.mark.parametrize(
    ("freq", "n", "expected"), [("5min", 10, 6), ("15min", 10, 2), ("1h", 10, 1), ("5min", 1, 1)]
)
def test_the_ratio_window_in_buckets(freq: str, n: int, expected: int) -> None:
    from detector.detect.features import RATIO_WINDOW, _buckets_in

    times = pd.date_range("2026-11-02", periods=n, freq=freq, tz="UTC")
    assert _buckets_in(RATIO_WINDOW, times) == expected


def test_trailing_until_sums_only_as_far_back_as_needed() -> None:
    from detector.detect.features import _trailing_until

    obs = np.array([[10.0, 20.0, 30.0, 40.0], [1.0, 2.0, 3.0, 4.0]])
    exp = np.array([[60.0, 60.0, 60.0, 60.0], [20.0, 20.0, 20.0, 20.0]])
    o, e = _trailing_until(obs, exp, 50.0, 3)
    # Row 0 expects 60 a column: each column alone. Row 1 needs 3 columns (the cap) for 60;
    # its first columns have fewer behind them (40 expected at the second: still short).
    assert e.tolist() == [[60, 60, 60, 60], [20, 40, 60, 60]]
    assert o.tolist() == [[10, 20, 30, 40], [1, 3, 6, 9]]
