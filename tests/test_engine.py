"""detect(): end to end on synthetic bucket aggregates (no simulator, no files)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from functools import cache

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.detect.engine import DetectionPolicy, DetectionResult, detect
from detector.schema import BucketAggregates
from detector.store.backend import LocalBackend
from detector.store.engine_state import EngineState, load_engine_state, save_engine_state
from detector.store.models import ModelStore
from tests.fixtures_engine import (
    T0,
    Incident,
    Part,
    hours_since_t0,
    make_aggs,
    standard_parts,
    with_failure_rates,
)

POLICY = DetectionPolicy(forest=True)  # the tests of the forest need it on
DAYS = 3.0
WS = T0 + timedelta(days=DAYS - 0.5)
WE = T0 + timedelta(days=DAYS)
V_OLD, V_NEW = "1.30.1.0_stable", "1.31.1.0_stable"


@cache
def version_failures():
    inc = Incident("Join", V_NEW, WS + timedelta(hours=3), WS + timedelta(hours=5), fail_rate=0.12)
    return make_aggs(standard_parts(), days=DAYS, incidents=(inc,), seed=1), inc


@cache
def fleet_latency():
    inc = Incident("StartVideo", None, WS + timedelta(hours=2), WS + timedelta(hours=4), 1.8)
    return make_aggs(standard_parts(), days=DAYS, incidents=(inc,), seed=2), inc


def _run(aggs, **kw) -> DetectionResult:
    kw.setdefault("policy", POLICY)
    return detect(aggs, window=(WS, WE), now=WE, **kw)


def _fps(res: DetectionResult) -> set[str]:
    return {a.fingerprint for a in res.anomalies}


def test_version_failure_spike_alerts_on_the_version_only() -> None:
    aggs, inc = version_failures()
    res = _run(aggs)
    assert _fps(res) == {f"Join|{V_NEW}|failure_rate"}
    a = res.anomalies[0]
    assert a.reason.startswith("anomaly: failure rate ")
    assert inc.start <= a.window_start < inc.end
    # The delay: flagged within an hour of the start at ~20 calls per bucket.
    assert a.window_start - inc.start <= timedelta(hours=1)
    # The fleet moved too, but only because of this version: its candidate says so.
    fleet = [c for c in res.candidates if c.sdk_version is None and c.metric == "failure_rate"]
    assert fleet and fleet[0].operation_name == "Join"
    assert fleet[0].buckets_by_reason.get("explained_by_version", 0) > 0
    assert "anomaly" not in fleet[0].buckets_by_reason


def test_explanation_fields() -> None:
    aggs, _ = version_failures()
    a = _run(aggs).anomalies[0]
    assert a.band_low is not None and a.band_low <= a.baseline <= a.band_high < a.observed
    assert a.effect == pytest.approx(a.observed - a.baseline)  # points over the run
    assert a.details["gate_effect"] >= POLICY.min_failure_points
    assert a.p_value is not None and a.p_value < POLICY.alpha
    assert a.calls > 20 and a.failures and a.failures > 3
    # every failure of the fixture is its own call
    assert a.details["failed_calls"] == a.failures and f"in {a.failures} calls" in a.reason
    assert 0.3 < a.traffic_share < 0.7
    assert a.drivers and "fail_z" in a.drivers
    assert a.baseline_kind == "seasonal" and a.provisional is False
    assert a.baseline_calls and a.baseline_calls > 1000
    assert a.severity in ("warning", "critical") and 0 < a.score <= 1
    assert a.details["span_buckets"] in POLICY.spans
    json.dumps(a.to_json())  # JSON-able


def test_fleet_wide_latency_alerts_on_the_fleet_and_explains_versions() -> None:
    aggs, inc = fleet_latency()
    res = _run(aggs)
    assert _fps(res) == {"StartVideo|*|duration"}
    a = res.anomalies[0]
    assert a.reason.startswith("anomaly: duration p95 ") and a.observed > 1.5 * a.baseline
    assert a.window_start - inc.start <= timedelta(minutes=30)
    versions = [
        c
        for c in res.candidates
        if c.operation_name == "StartVideo" and c.sdk_version is not None and c.metric == "duration"
    ]
    assert {c.reason for c in versions} == {"explained_by_fleet"}
    assert a.traffic_share == 1.0


def test_new_version_regression_is_flagged_within_300_operations() -> None:
    start_new = WS + timedelta(hours=1)
    parts = [
        Part("Join", V_OLD, 600.0, 0.01, 800.0),
        Part("Join", V_NEW, 120.0, 0.01, 800.0, start=start_new),
    ]
    inc = Incident("Join", V_NEW, start_new, WE, duration_factor=2.0)
    aggs = make_aggs(parts, days=DAYS, incidents=(inc,), seed=4)
    res = _run(aggs)
    hits = [a for a in res.anomalies if a.fingerprint == f"Join|{V_NEW}|duration"]
    assert hits, res.candidates
    a = hits[0]
    assert a.provisional and a.baseline_kind == "borrowed" and "provisional" in a.reason
    s = aggs.stats
    first_end = a.window_start + POLICY.bucket  # the end of the first alerting bucket
    ops_before = s[(s.sdk_version == V_NEW) & (s.bucket_start < first_end)]["calls"].sum()
    assert ops_before <= 300
    assert "Join|*|duration" not in _fps(res)


def test_rare_version_noise_is_suppressed() -> None:
    parts = [*standard_parts(), Part("Join", "0.9.0", 3.0, 0.01, 800.0)]
    inc = Incident("Join", "0.9.0", WS + timedelta(hours=2), WS + timedelta(hours=6), 3.0, 0.5)
    res = _run(make_aggs(parts, days=DAYS, incidents=(inc,), seed=5))
    assert not res.anomalies
    rare = [c for c in res.candidates if c.sdk_version == "0.9.0"]
    assert rare and {c.reason for c in rare} <= {"suppressed_low_volume", "not_significant"}


def test_maintenance_window_suppresses_and_is_reported() -> None:
    aggs, inc = fleet_latency()
    res = _run(
        aggs, maintenance=[(inc.start - timedelta(minutes=30), inc.end + timedelta(hours=1), None)]
    )
    assert not res.anomalies
    assert any(c.reason == "maintenance" for c in res.candidates)


def test_alerted_spans_are_recorded_and_kept_out_of_the_next_baseline(tmp_path) -> None:
    aggs, inc = version_failures()
    res = _run(aggs)
    assert any(op == "Join" and ver == V_NEW for op, ver, _, _ in res.state.alerted)
    backend = LocalBackend(tmp_path)
    save_engine_state(backend, res.state)
    state, _ = load_engine_state(backend)
    assert state.alerted == res.state.alerted
    # The next window's baseline excludes the alerted buckets: failure baseline stays ~1 %.
    nxt = detect(aggs, window=(WE - timedelta(hours=1), WE), policy=POLICY, now=WE, state=state)
    base = nxt.debug["baselines"]
    parts = nxt.debug["parts"]
    row = [
        i for i in range(len(parts)) if parts.operation[i] == "Join" and parts.version[i] == V_NEW
    ][0]
    assert base.excluded[row] > 0
    assert base.fail_rate[row].mean() < 0.02


def test_model_store_reuses_refuses_and_refits(tmp_path) -> None:
    aggs, _ = version_failures()
    store = ModelStore(LocalBackend(tmp_path))
    first = _run(aggs, model_store=store)
    assert first.stats["forest"]["action"] == "fitted" and first.stats["forest"]["saved"]
    # the baseline summary saved beside the model, for audit: one row per partition
    summary = store.baselines("forest")
    assert summary is not None and len(summary) == first.stats["partitions"]
    assert {
        "kind",
        "weight",
        "fail_rate_mean",
        "fail_rate_wander",
        "log_dur_wander",
        "failure_cluster",
    } <= set(summary.columns)
    assert (summary["fail_rate_wander"] >= 0).all() and summary["fail_rate_wander"].notna().all()
    assert (summary["failure_cluster"] >= 1).all()  # failures per failing call, never below one
    again = _run(aggs, model_store=store)
    assert again.stats["forest"]["action"] == "loaded"
    assert [a.to_json() for a in again.anomalies] == [a.to_json() for a in first.anomalies]
    other = DetectionPolicy(forest=True, n_estimators=50)
    refused = _run(aggs, model_store=store, policy=other)
    assert "config hash" in refused.stats["forest"]["refused"]
    assert refused.stats["forest"]["action"] == "fitted"
    stale = detect(
        aggs, window=(WS, WE), policy=other, now=WE + timedelta(days=2), model_store=store
    )
    assert stale.stats["forest"]["action"] == "fitted" and "stale" in stale.stats["forest"]


def test_a_tampered_model_file_is_refused_and_refitted(tmp_path) -> None:
    from tests.test_score import _reduce_node

    aggs, _ = version_failures()
    store = ModelStore(LocalBackend(tmp_path))
    first = _run(aggs, model_store=store)
    marker = tmp_path / "pwned"
    store.backend.write(
        "models/forest/forest.skops",
        _reduce_node("builtins", "exec", f"open({str(marker)!r}, 'w').write('x')"),
    )
    tampered = _run(aggs, model_store=ModelStore(LocalBackend(tmp_path)))
    assert not marker.exists()
    assert "untrusted" in tampered.stats["forest"]["refused"]
    assert tampered.stats["forest"]["action"] == "fitted"
    assert [a.to_json() for a in tampered.anomalies] == [a.to_json() for a in first.anomalies]


@settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(offset=st.integers(min_value=0, max_value=60), hours=st.integers(min_value=1, max_value=6))
def test_rerunning_a_window_gives_the_same_decisions(offset: int, hours: int) -> None:
    aggs, _ = version_failures()
    ws = WS + timedelta(minutes=5 * offset)
    we = ws + timedelta(hours=hours)
    state = EngineState()
    a = detect(aggs, window=(ws, we), policy=POLICY, now=we, state=state)
    b = detect(aggs, window=(ws, we), policy=POLICY, now=we, state=a.state)
    assert [x.to_json() for x in a.anomalies] == [x.to_json() for x in b.anomalies]
    assert a.candidates == b.candidates


def test_buckets_after_now_are_not_judged() -> None:
    aggs, inc = version_failures()
    res = detect(aggs, window=(WS, WE), policy=POLICY, now=inc.start)
    assert not res.anomalies


def test_empty_history_gives_an_empty_result() -> None:
    aggs = make_aggs(standard_parts(), days=0.1)
    far = WE + timedelta(days=30)  # the history ends before this window's baseline starts
    res = detect(aggs, window=(far, far + timedelta(hours=1)), policy=POLICY, now=far)
    assert res.anomalies == [] and res.stats["partitions"] == 0


def test_an_incident_that_ended_stops_alerting_on_a_quiet_version() -> None:
    # ~30 calls an hour: a long span still holds the incident for hours after it ended, and
    # one failure among a handful of calls reads as z ~ 2 by the normal approximation. The
    # latest-window check (continuity-corrected) must end the alert with the incident.
    parts = [*standard_parts(), Part("Join", "1.29.0.0_stable", 30.0, 0.01, 800.0)]
    ws, we = T0 + timedelta(days=3), T0 + timedelta(days=4)
    inc = Incident("Join", "1.29.0.0_stable", ws + timedelta(hours=2), ws + timedelta(hours=5))
    inc.fail_rate = 0.35
    aggs = make_aggs(parts, days=4, incidents=(inc,), seed=11)
    res = detect(aggs, window=(ws, we), now=we, policy=POLICY)
    hits = sorted(
        ts
        for op, ver, metric, ts in res.alert_buckets
        if (op, ver, metric) == ("Join", "1.29.0.0_stable", "failure_rate")
    )
    assert hits, res.candidates
    assert inc.start <= hits[0] < inc.end
    # Over within the latest window (latest_span buckets, 1 h) of the end; it ran for hours.
    assert hits[-1] < inc.end + POLICY.latest_span * POLICY.bucket, hits[-1]


def test_a_sparse_version_is_judged_on_its_latest_hours() -> None:
    # 6 calls an hour: the last hour alone has too few calls to judge, so the latest window
    # grows (2, 4 h ...) instead of vetoing: a doubled duration is still found.
    parts = [  # 6 of ~76 Join calls an hour: above min_share, so it is judged
        Part("Join", V_OLD, 40.0, 0.01, 800.0),
        Part("Join", V_NEW, 30.0, 0.01, 800.0),
        Part("Join", "1.29.0.0_stable", 6.0, 0.01, 800.0),
        Part("StartVideo", V_OLD, 240.0, 0.02, 300.0),
    ]
    ws, we = T0 + timedelta(days=3), T0 + timedelta(days=4)
    inc = Incident("Join", "1.29.0.0_stable", ws, we, duration_factor=2.0)
    aggs = make_aggs(parts, days=4, incidents=(inc,), seed=12)
    res = detect(aggs, window=(ws, we), now=we, policy=POLICY)
    assert "Join|1.29.0.0_stable|duration" in _fps(res), res.candidates


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_busy_tenant_wide_drop_is_not_an_operation_volume_drop(seed: int) -> None:
    """Every operation of a busy tenant (600 calls an hour each) drops to a third at once (the
    start of a weekend): the rest of the traffic follows within a bucket. (Read over a fixed
    30 minutes, it lagged, and the operations alerted as drops on the simulator at 1,000 calls
    an hour.)"""
    ops = ("Join", "StartCall", "StartVideo", "CreateView", "Mute")
    parts = [Part(op, V_OLD, 600.0, 0.01, 500.0) for op in ops]
    ws, we = T0 + timedelta(days=3), T0 + timedelta(days=4)
    night = (ws + timedelta(hours=1), ws + timedelta(hours=7))
    incs = tuple(Incident(op, None, *night, volume_factor=0.33) for op in ops)
    aggs = make_aggs(parts, days=4, incidents=incs, seed=seed, with_hist=False)
    res = detect(aggs, window=(ws, we), now=we, policy=POLICY)
    assert not [a for a in res.anomalies if a.metric == "volume"], _fps(res)


@pytest.mark.parametrize("seed", [13, 1, 2, 3])
def test_a_quiet_tenant_wide_night_is_not_an_operation_volume_drop(seed: int) -> None:
    """Every operation drops to a third for six hours (a weekend night) on a small tenant: the
    expected calls follow the rest of the traffic, so no operation's volume alerts. (With the
    rest's ratio taken bucket by bucket, a few calls each, seeds 1-3 alerted; 13 did not.)"""
    ops = ("Join", "StartCall", "StartVideo", "CreateView", "Mute")
    parts = [Part(op, V_OLD, 36.0, 0.01, 500.0) for op in ops]
    ws, we = T0 + timedelta(days=3), T0 + timedelta(days=4)
    night = (ws + timedelta(hours=1), ws + timedelta(hours=7))
    incs = tuple(Incident(op, None, *night, volume_factor=0.33) for op in ops)
    aggs = make_aggs(parts, days=4, incidents=incs, seed=seed)
    res = detect(aggs, window=(ws, we), now=we, policy=POLICY)
    assert not [a for a in res.anomalies if a.metric == "volume"], _fps(res)
    # ... while one operation losing two thirds of its traffic alone is one.
    one = (Incident("Join", None, *night, volume_factor=0.33),)
    res = detect(
        make_aggs(parts, days=4, incidents=one, seed=seed), window=(ws, we), now=we, policy=POLICY
    )
    assert "Join|*|volume" in _fps(res)


def test_the_end_of_a_surge_is_not_a_volume_drop() -> None:
    # A busy hour triples the calls; the operations that start a call return to normal at
    # once while the later ones (hang-ups) still carry the surge for a few buckets. Scaled by
    # that rest of the traffic, Join would look like a drop; against its own usual level for
    # the hour it is normal, and both views must agree.
    ops = ("Join", "StartCall", "Hangup", "DisposeView")
    parts = [Part(op, V_OLD, 600.0, 0.01, 500.0) for op in ops]
    ws, we = T0 + timedelta(days=3), T0 + timedelta(days=4)
    a, b, lag = ws + timedelta(hours=10), ws + timedelta(hours=11), timedelta(minutes=20)
    incs = (
        Incident("Join", None, a, b, volume_factor=3.0),
        Incident("StartCall", None, a, b, volume_factor=3.0),
        Incident("Hangup", None, a + lag, b + lag, volume_factor=3.0),
        Incident("DisposeView", None, a + lag, b + lag, volume_factor=3.0),
    )
    aggs = make_aggs(parts, days=4, incidents=incs, seed=14)
    res = detect(aggs, window=(ws, we), now=we, policy=POLICY)
    assert not [a for a in res.anomalies if a.metric == "volume"], _fps(res)


def test_a_blip_after_an_incident_does_not_prolong_it() -> None:
    # Three hours of failures on a version, then 15 minutes of a small blip 45 minutes later:
    # the 3-hour span still holds the incident and the latest hour deviates (the blip), but
    # by far less than the span's effect, so the alert ends with the incident.
    from dataclasses import replace

    parts = [
        Part("StartVideo", "1.0.0", 600.0, 0.01, 300.0),
        Part("StartVideo", "1.1.0", 600.0, 0.01, 300.0),
        Part("StartVideo", "1.2.0", 400.0, 0.01, 300.0),
    ]
    ws, we = T0 + timedelta(days=3), T0 + timedelta(days=4)
    a = ws + timedelta(hours=10)
    inc = Incident("StartVideo", "1.2.0", a, a + timedelta(hours=3), fail_rate=0.3)
    blip = Incident(
        "StartVideo", "1.2.0", inc.end + timedelta(minutes=45), inc.end + timedelta(hours=1)
    )
    blip.fail_rate = 0.08
    aggs = make_aggs(parts, days=4, incidents=(inc, blip), seed=0)

    def last_alert(policy: DetectionPolicy):
        res = detect(aggs, window=(ws, we), now=we, policy=policy)
        return max(
            ts for _, ver, m, ts in res.alert_buckets if (ver, m) == ("1.2.0", "failure_rate")
        )

    assert last_alert(POLICY) < inc.end + timedelta(minutes=40)
    assert last_alert(replace(POLICY, latest_share=0.0)) >= blip.start  # the blip carried it


@pytest.mark.parametrize(("failing_calls", "alerts"), [(1, False), (12, True)])
def test_failures_of_one_bad_call_are_not_an_outage(failing_calls: int, alerts: bool) -> None:
    """12 extra failures in each of 3 buckets: from one bad call (its legs failing together)
    they are one failing call per bucket and must not alert; from 12 calls each they do."""
    aggs = make_aggs(standard_parts(), days=DAYS, seed=5)
    s = aggs.stats.copy()
    at = WS + timedelta(hours=3)
    hit = (
        (s["operation_name"] == "Join")
        & (s["sdk_version"] == V_OLD)
        & (s["bucket_start"] >= at)
        & (s["bucket_start"] < at + timedelta(minutes=15))
    )
    assert hit.sum() == 3
    s.loc[hit, "calls"] += 12
    s.loc[hit, "failures"] += 12
    s.loc[hit, "failed_calls"] += failing_calls
    aggs.stats = s
    fps = _fps(_run(aggs))
    assert (f"Join|{V_OLD}|failure_rate" in fps) is alerts


@pytest.mark.parametrize(("excess", "alerts"), [(0.04, False), (0.12, True)])
def test_a_failure_rate_that_wanders_by_the_hour_alerts_only_beyond_its_wander(
    excess: float, alerts: bool
) -> None:
    """A busy operation whose failure rate wanders +-1.5 points from hour to hour (3 % on
    average, nothing wrong): an hour at +4 points is within its wander, +12 points is not.
    Counted as independent binomial draws, the +4 points on 1,200 calls read as z ~ 8."""
    import numpy as np

    rng = np.random.default_rng(11)
    aggs = make_aggs([Part("Join", "1.0", 1200.0)], days=DAYS, seed=11)
    hour = hours_since_t0(aggs.stats)
    hourly = np.clip(0.03 + 0.015 * rng.standard_normal(int(hour.max()) + 1), 0.005, 1.0)
    at = int((WS + timedelta(hours=3) - T0) / timedelta(hours=1))
    hourly[at] = 0.03 + excess
    aggs.stats = with_failure_rates(aggs.stats, hourly[hour], rng)
    res = _run(aggs)
    assert any(fp.endswith("|failure_rate") for fp in _fps(res)) is alerts
    for a in res.anomalies:
        if a.metric != "failure_rate":
            continue
        # the alert says how much the level wanders, and its band includes it
        assert a.details["level_wander"] == pytest.approx(0.015, rel=0.5)
        sampling = 3.0 * np.sqrt(a.baseline * (1 - a.baseline) / a.calls)
        assert a.band_high - a.baseline > 1.5 * sampling


def _new_build_ops_before_alert(aggs, metric: str) -> float:
    """Operations of ``V_NEW`` up to its first alert bucket on ``metric`` (inf: never)."""
    import pandas as pd

    res = _run(aggs)
    hits = [ts for _, ver, m, ts in res.alert_buckets if (ver, m) == (V_NEW, metric)]
    if not hits:
        return float("inf")
    s = aggs.stats
    new = s[(s["sdk_version"] == V_NEW) & (s["bucket_start"] <= pd.Timestamp(min(hits)))]
    return float(new["calls"].sum())


def test_a_new_version_failing_more_than_its_siblings_is_not_read_as_wander() -> None:
    """The operation's failure rate wanders +-3 points from hour to hour; a new build starts
    in the judged window failing 7 points more than its siblings in the same buckets. The
    wander is the level's, shared by every version: a comparison at the same time does not see
    it, so the regression is flagged within the new build's first 300 operations (held to the
    level's wander, it took over 1,300)."""
    import numpy as np

    rng = np.random.default_rng(12)
    start_new = WS + timedelta(hours=1)
    parts = [Part("Join", V_OLD, 1200.0), Part("Join", V_NEW, 150.0, start=start_new)]
    aggs = make_aggs(parts, days=DAYS, seed=12)
    hour = hours_since_t0(aggs.stats)
    hourly = np.clip(0.03 + 0.03 * rng.standard_normal(int(hour.max()) + 1), 0.005, 1.0)
    rate = hourly[hour] + np.where(aggs.stats["sdk_version"] == V_NEW, 0.07, 0.0)
    aggs.stats = with_failure_rates(aggs.stats, rate, rng)
    assert _new_build_ops_before_alert(aggs, "failure_rate") <= 300


def test_a_new_version_slower_than_its_siblings_is_not_read_as_wander() -> None:
    """The same for durations: the operation's typical duration wanders +-20 % from hour to
    hour, a new build is x1.5 slower than its siblings in the same buckets from its first
    call. Flagged within its first 300 operations (held to the wander: over 1,600)."""
    import numpy as np

    rng = np.random.default_rng(12)
    start_new = WS + timedelta(hours=1)
    parts = [Part("Join", V_OLD, 1200.0), Part("Join", V_NEW, 150.0, start=start_new)]
    aggs = make_aggs(parts, days=DAYS, seed=12, with_hist=False)
    s = aggs.stats.copy()
    hour = hours_since_t0(s)
    d = 0.2 * rng.standard_normal(int(hour.max()) + 1)[hour]
    d = d + np.where(s["sdk_version"] == V_NEW, 0.4, 0.0)  # ln 1.5
    n = s["dur_n"].to_numpy()
    s["log_dur_sumsq"] = s["log_dur_sumsq"] + 2 * d * s["log_dur_sum"] + n * d**2
    s["log_dur_sum"] = s["log_dur_sum"] + n * d
    aggs.stats = s
    assert _new_build_ops_before_alert(aggs, "duration") <= 300


def _clustered_failures(aggs, extra_calls: int, extra_single: int, seed: int, size: int = 4):
    """``aggs`` with failures that come ``size`` to a call: 1.5 failing calls an hour, each
    failing once in each of ``size`` consecutive buckets (so a bucket's distinct failing calls
    equal its failures). Three hours into the window ``extra_calls`` more such calls start, and
    ``extra_single`` failures of their own calls (independent) fall in that hour."""
    import numpy as np

    rng = np.random.default_rng(seed)
    s = aggs.stats.sort_values("bucket_start").reset_index(drop=True)
    t = ((s["bucket_start"] - s["bucket_start"].iloc[0]) // timedelta(minutes=5)).to_numpy()
    fails, cluster = np.zeros(len(s)), np.zeros(len(s))
    hours = int(t.max()) // 12 + 1
    at = int((WS + timedelta(hours=3) - s["bucket_start"].iloc[0]) / timedelta(hours=1))
    for h in range(hours):
        n = rng.poisson(1.5) + (extra_calls if h == at else 0)
        for b0 in h * 12 + rng.integers(0, 12, n):
            rows = np.searchsorted(t, np.arange(b0, b0 + size))
            rows = rows[rows < len(s)]
            fails[rows] += 1
            cluster[rows] += size
    if extra_single:
        rows = np.searchsorted(t, at * 12 + rng.integers(0, 12, extra_single))
        np.add.at(fails, rows, 1)
        np.add.at(cluster, rows, 1)
    s["failures"] = fails.astype("int64")
    s["failed_calls"] = s["failures"]
    s["failed_calls_op"] = fails
    s["failure_cluster"] = cluster
    s["failure_cluster_op"] = cluster
    aggs.stats = s
    return aggs


@pytest.mark.parametrize("seed", [13, 14, 15])
@pytest.mark.parametrize(("extra_single", "alerts"), [(0, False), (80, True)])
def test_failures_that_come_in_calls_are_judged_by_the_calls(
    extra_single: int, alerts: bool, seed: int
) -> None:
    """Failures come eight to a call, spread over eight buckets (a per-bucket count of
    distinct failing calls cannot see the clusters). An hour with six more failing calls than
    the usual 1.5 (p ~ 0.005 on calls, not significant over the tests made) is ordinary;
    counted as 48 more independent failures it alerted on every seed. Eighty more independent
    failures in that hour do alert."""
    aggs = make_aggs([Part("Join", "1.0", 600.0)], days=DAYS, seed=seed)
    aggs = _clustered_failures(aggs, 6, extra_single, seed=seed, size=8)
    res = _run(aggs)
    assert any(fp.endswith("|failure_rate") for fp in _fps(res)) is alerts
    for a in res.anomalies:
        if a.metric == "failure_rate":
            assert a.details["failures_per_failing_call"] == pytest.approx(8.0, rel=0.1)


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_a_quiet_new_build_failing_since_rollout_is_flagged_on_its_whole_history(
    seed: int,
) -> None:
    """A new build at 10 operations an hour (8 % of the operation's) fails 12 % against its
    siblings' 2 % from its first call, rolled out 20 hours before the window. No tested span (12 hours at most) had
    enough of its operations before they became its own baseline (weight n / (n + k)): its
    whole history shows the regression, so it is judged against its siblings and flagged
    within its first 300 operations."""
    start_new = WS - timedelta(hours=20)
    parts = [
        Part("Join", V_OLD, 120.0, fail_rate=0.02),
        Part("Join", V_NEW, 10.0, fail_rate=0.12, start=start_new),
    ]
    aggs = make_aggs(parts, days=DAYS, seed=seed)
    assert _new_build_ops_before_alert(aggs, "failure_rate") <= 300


QUIET_ROLLOUT = WE - timedelta(hours=60)


def _quiet_build(fail_rate: float, seed: int):
    """A new build at 5 operations an hour failing ``fail_rate`` from its first call,
    QUIET_ROLLOUT, beside its siblings at 80 an hour failing 3 %."""
    parts = [
        Part("Join", V_OLD, 80.0, fail_rate=0.03),
        Part("Join", V_NEW, 5.0, fail_rate=fail_rate, start=QUIET_ROLLOUT),
    ]
    return make_aggs(parts, days=DAYS, seed=seed)


@pytest.mark.parametrize("seed", [31, 32, 34])
def test_a_build_too_quiet_for_any_span_is_flagged_on_everything_since_its_rollout(
    seed: int,
) -> None:
    """A new build at 5 operations an hour fails 11 % against its siblings' 3 % from its first
    call, 60 hours before the window's end. Its longest trailing span (12 hours) holds ~60 of
    its operations, never significant over the tests made: without the since-rollout test it
    was missed on all 3 seeds (and flagged once in 5 seeds tried). Everything since its first
    call is enough: flagged within its first 300 operations, and the alert shows those
    figures."""
    aggs = _quiet_build(0.11, seed)
    assert _new_build_ops_before_alert(aggs, "failure_rate") <= 300
    a = next(a for a in _run(aggs).anomalies if a.fingerprint == f"Join|{V_NEW}|failure_rate")
    since = a.details["since_rollout"]
    first_call = datetime.strptime(since["since"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert QUIET_ROLLOUT <= first_call < QUIET_ROLLOUT + timedelta(hours=1)
    assert since["calls"] > 150 and since["failures"] > 10
    assert (a.calls, a.failures) == (since["calls"], since["failures"])
    assert a.observed == pytest.approx(since["failures"] / since["calls"])
    assert 0.03 < a.traffic_share < 0.1  # 5 of 85 operations an hour
    assert a.baseline == pytest.approx(0.03, abs=0.01)
    assert "since its rollout at" in a.reason
    assert a.details["span_buckets"] > max(POLICY.spans)


def test_the_since_rollout_tests_are_a_family_of_their_own() -> None:
    """Weighted Bonferroni: the since-rollout tests of the L new builds share
    rollout_alpha_share of alpha (each build's hour of looks counted for what it is worth),
    not every partition's (they are no extra span of every partition), and the trailing
    spans' failure p-values are corrected by 1 / (1 - share). On the evidence decide reads
    (p x n_tests <= alpha): a since-rollout p is put there through its own test's alpha
    (p x that alpha is the same whatever the share), and halving the share halves that alpha,
    a little more as its z grows (the looks are worth a little more); the trailing p-values
    move by (1 - 0.2) / (1 - 0.1)."""
    from dataclasses import replace

    aggs = _quiet_build(0.11, 31)
    f = 1  # failure_rate
    out = {}
    for share in (0.2, 0.1):
        res = _run(aggs, policy=replace(POLICY, rollout_alpha_share=share))
        roll, applied = res.debug["rollout"]
        out[share] = (res.debug["evidence"].p[:, f].copy(), roll.rows, applied)
    (p2, rows, app2), (p1, _, app1) = out[0.2], out[0.1]
    assert len(rows) == 1 and app2.used.any()
    both = app2.used[0] & app1.used[0]
    assert both.any()
    np.testing.assert_allclose(
        p1[rows[0], both] * app1.alpha[0, both], p2[rows[0], both] * app2.alpha[0, both], rtol=1e-9
    )
    halved = app2.alpha[0, both] / app1.alpha[0, both]
    assert (halved >= 2 - 1e-9).all() and (halved <= 2.2).all()
    old = np.flatnonzero(~np.isin(np.arange(len(p2)), rows))
    ratio = (p1[old] / p2[old])[(p2[old] > 0) & (p2[old] < 1)]
    np.testing.assert_allclose(ratio, 0.8 / 0.9, rtol=1e-9)


def test_a_since_rollout_alerts_band_is_as_wide_as_its_own_tests_threshold() -> None:
    """The band of a since-rollout alert is the test's standard error times the critical z
    of that test (its family's alpha over the new builds and the hour's looks), not that of
    every partition's trailing spans: the z it implies is one such test's, between one look
    an hour and one per bucket."""
    from scipy import special

    aggs = _quiet_build(0.11, 31)
    res = _run(aggs)
    a = next(a for a in res.anomalies if a.fingerprint == f"Join|{V_NEW}|failure_rate")
    assert a.details["since_rollout"] is not None
    roll, applied = res.debug["rollout"]
    n_new = len(roll)
    se = abs(a.observed - a.baseline) / abs(a.details["z"])
    zc = (a.band_high - a.baseline) / se
    used = applied.alpha[0][applied.used[0]]
    assert np.isclose(-special.ndtri(used), zc, rtol=1e-6).any()
    family = POLICY.alpha * POLICY.rollout_alpha_share / n_new
    assert -special.ndtri(family) - 1e-9 <= zc <= -special.ndtri(family / 12) + 1e-9
    # Counted for what they are worth, the hour's looks are not twelve tests here.
    assert zc < -special.ndtri(family / 12) - 0.1


@pytest.mark.parametrize("seed", [31, 32, 33])
def test_a_quiet_build_failing_like_its_siblings_is_not_flagged(seed: int) -> None:
    """The same quiet build failing 3 % like its siblings: nothing to flag, on 3 seeds."""
    assert not any(f.endswith("failure_rate") for f in _fps(_run(_quiet_build(0.03, seed))))


def _slow_quiet_build(factor: float, seed: int):
    """A new build at 5 operations an hour, ``factor`` x slower than its siblings (80 an hour)
    from its first call, QUIET_ROLLOUT."""
    parts = [
        Part("Join", V_OLD, 80.0, median_ms=900.0),
        Part("Join", V_NEW, 5.0, median_ms=900.0 * factor, start=QUIET_ROLLOUT),
    ]
    return make_aggs(parts, days=DAYS, seed=seed)


@pytest.mark.parametrize("seed", [41, 42, 43])
def test_a_quiet_build_slower_since_rollout_is_judged_against_its_siblings(seed: int) -> None:
    """A new build at 5 operations an hour, x2 slower from its first call 60 hours before the
    window's end. Its longest span (12 hours) holds ~60 operations, and its slow history
    since the rollout is in its baseline: as its own level (n / (n + k)), and once it keeps
    its siblings' level, as dispersion if measured around that level (phi ~10). Either way
    missed on all 3 seeds. Slower than its siblings since it appeared, it keeps their level
    with its own dispersion: flagged within its first 300 operations, at about x2."""
    aggs = _slow_quiet_build(2.0, seed)
    assert _new_build_ops_before_alert(aggs, "duration") <= 300
    a = next(a for a in _run(aggs).anomalies if a.fingerprint == f"Join|{V_NEW}|duration")
    assert a.provisional
    assert a.observed / a.baseline == pytest.approx(2.0, rel=0.25)


@pytest.mark.parametrize("seed", [41, 42, 43])
def test_a_quiet_build_a_little_slower_like_another_platforms_is_not_flagged(seed: int) -> None:
    """The same quiet build 12 % slower (as a native build is beside web ones): under the
    practical minimum, it leans on its own history and is not flagged."""
    assert not any(f.endswith("duration") for f in _fps(_run(_slow_quiet_build(1.12, seed))))


def _bursty_drop(seed: int):
    """Four operations at 600 an hour; CreateView comes in bursts (each of ~8 calls a bucket
    renders ~6 views at once: overdispersion ~10, as on the holdout) and loses 80 % of its
    operations for the last 3 hours of the window."""
    rng = np.random.default_rng(seed)
    drop_at = WE - timedelta(hours=3)
    aggs = make_aggs(
        [Part(n, "1.0", 600.0) for n in ("Join", "StartCall", "Hangup", "CreateView")],
        days=DAYS,
        with_hist=False,
        seed=seed,
    )
    s = aggs.stats.copy()
    cv = (s["operation_name"] == "CreateView").to_numpy()
    ops = np.array([rng.geometric(1 / 6, k).sum() for k in rng.poisson(8.0, cv.sum())])
    late = (s.loc[cv, "bucket_start"] >= pd.Timestamp(drop_at)).to_numpy()
    ops = np.where(late, rng.binomial(ops, 0.2), ops)
    frac = ops / s.loc[cv, "calls"].to_numpy()
    for col in ("calls", "dur_n"):
        s.loc[cv, col] = ops
    for col in ("failures", "failed_calls"):
        s.loc[cv, col] = 0
    for col in ("log_dur_sum", "log_dur_sumsq"):
        s.loc[cv, col] *= frac
    stats = s[s["calls"] > 0].reset_index(drop=True)
    return BucketAggregates(stats=stats, hist=aggs.hist.iloc[:0]), drop_at


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_a_drop_of_a_bursty_operation_is_flagged_within_its_first_half_hour_or_so(
    seed: int,
) -> None:
    """Bursty counts (overdispersion ~10) make 3 buckets of an 80 % drop not significant, and a
    12-bucket span waits until every third of it is inside the drop. The 6-bucket span flags it
    within 8 buckets on 3 seeds (6 on each); without it (the spans of before) it takes 9-11."""
    aggs, drop_at = _bursty_drop(seed)

    def first_alert(policy: DetectionPolicy) -> float:
        res = _run(aggs, policy=policy)
        assert _fps(res) == {"CreateView|*|volume"}
        hit = [t for o, _, m, t in res.alert_buckets if (o, m) == ("CreateView", "volume")]
        return (min(hit) - drop_at) / timedelta(minutes=5)

    with_six = first_alert(POLICY)
    assert with_six <= 8
    assert first_alert(DetectionPolicy(spans=(1, 3, 12, 36, 144))) >= with_six + 3


def _quiet_drop(factor: float, seed: int):
    """StartVideo at 65 calls an hour (beside three busy operations) keeps ``factor`` of its
    calls for 65 minutes, from 3 hours before the window's end."""
    start = WE - timedelta(hours=3)
    parts = [Part(n, "1.0", 600.0) for n in ("Join", "StartCall", "Hangup")]
    parts.append(Part("StartVideo", "1.0", 65.0))
    drop = Incident("StartVideo", None, start, start + timedelta(minutes=65), volume_factor=factor)
    return make_aggs(parts, days=DAYS, incidents=(drop,), with_hist=False, seed=seed)


@pytest.mark.parametrize("seed", [3, 4, 5, 9])
def test_an_hours_drop_is_flagged_though_a_third_of_it_reads_less(seed: int) -> None:
    """A third of StartVideo's calls for an hour: by chance one third of the span reads only
    -40 to -50 %. Each third needs half the minimum drop (third_volume_share), the span all of
    it: flagged on these seeds (10 of 12 tried; 6 of 12 with the full minimum per third, which
    misses all four)."""
    aggs = _quiet_drop(0.33, seed)
    assert _fps(_run(aggs)) == {"StartVideo|*|volume"}
    assert not _fps(_run(aggs, policy=DetectionPolicy(third_volume_share=1.0)))


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_an_hours_drop_under_the_minimum_is_not_flagged(seed: int) -> None:
    """-40 % for an hour, under the 50 % minimum: the thirds' half minimum does not lower the
    span's."""
    assert not _fps(_run(_quiet_drop(0.6, seed)))


def test_a_versions_volume_is_judged_only_with_volume_scope_all() -> None:
    """A version with a quarter of its operation's traffic loses 80 % of it for 3 hours: the
    operation loses 20 %, under the 50 % minimum. By default (volume judged per operation)
    nothing alerts; with volume_scope="all" the version's own volume does."""
    parts = [Part("Join", V_OLD, 900.0), Part("Join", V_NEW, 300.0), Part("StartCall", V_OLD)]
    drop = (Incident("Join", V_NEW, WE - timedelta(hours=3), WE, volume_factor=0.2),)
    aggs = make_aggs(parts, days=DAYS, incidents=drop, with_hist=False, seed=5)
    assert not [f for f in _fps(_run(aggs)) if f.endswith("|volume")]
    wide = _run(aggs, policy=DetectionPolicy(volume_scope="all"))
    assert {f for f in _fps(wide) if f.endswith("|volume")} == {f"Join|{V_NEW}|volume"}


def _ramping_slow_build(factor: float, seed: int):
    """A new build rolled out 11 hours before the window's end, reaching 12 operations an
    hour over 8 hours, ``factor`` x slower than its siblings (80 an hour) from its first call."""
    parts = [
        Part("Join", V_OLD, 80.0, median_ms=900.0),
        Part(
            "Join",
            V_NEW,
            12.0,
            median_ms=900.0 * factor,
            start=WE - timedelta(hours=11),
            ramp_hours=8.0,
        ),
    ]
    return make_aggs(parts, days=DAYS, seed=seed)


@pytest.mark.parametrize("seed", [51, 52, 53])
def test_a_ramping_build_slower_since_rollout_is_not_held_back_by_its_first_hours(
    seed: int,
) -> None:
    """A build x2 slower from its first call while its rollout ramps up. Its 12-hour span's
    first third (before the rollout) and second (the first hours of the ramp) hold too few
    calls to judge, which failed the span's consistency check until a shorter span held
    enough of its calls: flagged after 59, 60 and 83 operations (and missed on one of 5
    seeds). Those thirds are now skipped as no evidence either way: 53, 52 and 55.
    """
    assert _new_build_ops_before_alert(_ramping_slow_build(2.0, seed), "duration") <= 56


@pytest.mark.parametrize("seed", [51, 52, 53])
def test_a_ramping_build_like_its_siblings_is_not_flagged(seed: int) -> None:
    """The same ramping build as fast as its siblings: skipping its thin thirds flags nothing."""
    assert not any(f.endswith("duration") for f in _fps(_run(_ramping_slow_build(1.0, seed))))


@pytest.mark.parametrize(
    ("thin", "first", "at", "expected"),
    [
        (True, 100, 150, True),  # a new build, first call 51 buckets into a 144-bucket span
        (True, 100, 242, True),  # its span (99..242) still starts a bucket before it
        (True, 100, 243, False),  # ... no longer (100..243): its thirds are all its own
        (True, -50, 150, False),  # a thin version older than the span: every third judged
        (False, 100, 150, False),  # a version with its own baseline: every third judged
    ],
)
def test_only_a_new_builds_span_from_before_its_first_call_skips_thin_thirds(
    thin: bool, first: int, at: int, expected: bool
) -> None:
    """Skipping an earlier third with too few calls is for a provisional version whose span
    reaches back before its first call (its rollout), nothing else: applied to every thin
    version it let a quiet beta's one-hour burst through on the holdout."""
    from detector.detect.features import _before_first_call

    got = _before_first_call(
        np.array([thin]), np.array([first]), np.array([0]), np.array([at]), 144
    )
    assert got.tolist() == [expected]
    assert not _before_first_call(np.array([thin]), None, np.array([0]), np.array([at]), 144).any()


# --------------------------------------------------------------------------------------------
# Windows judged in steps (issue 19)
# --------------------------------------------------------------------------------------------

H, B5 = timedelta(hours=1), timedelta(minutes=5)
D0 = datetime(2026, 11, 2, tzinfo=UTC)


def _t(hours: float) -> datetime:
    return D0 + timedelta(hours=hours)


@pytest.mark.parametrize(
    ("window", "step", "data", "reach", "expected"),
    [
        # Steps end on multiples of the step, as hourly scheduled runs do; the window cuts them.
        ((_t(0.25), _t(3)), H, None, H, [(0.25, 1), (1, 2), (2, 3)]),
        ((_t(0), _t(2.5)), H, None, H, [(0, 1), (1, 2), (2, 2.5)]),
        ((_t(0), _t(12)), 6 * H, None, H, [(0, 6), (6, 12)]),
        # Data only at 10:05: a step is kept while its reach back (2 h) holds data.
        ((_t(0), _t(24)), H, [10.1], 2 * H, [(10, 11), (11, 12), (12, 13)]),
        # Two islands of data: the stretch between them costs nothing.
        ((_t(-9e4), _t(9e4)), H, [5.5, 50.0], 0 * H, [(5, 6), (50, 51)]),
        # No data in the window: nothing to judge.
        ((_t(0), _t(24)), H, [30.0], H, []),
    ],
)
def test_plan_steps(window, step, data, reach, expected) -> None:
    from detector.detect.engine import plan_steps

    times = None
    if data is not None:
        times = np.array([np.datetime64(_t(h).replace(tzinfo=None), "ns") for h in data])
    got = plan_steps(window, step, bucket=B5, data=times, reach=reach)
    assert got == [(_t(a), _t(b)) for a, b in expected]


def test_plan_steps_refuses_a_step_that_is_not_whole_buckets() -> None:
    from detector.detect.engine import plan_steps

    with pytest.raises(ValueError, match="multiple of the bucket"):
        plan_steps((_t(0), _t(1)), timedelta(minutes=7), bucket=B5)


def test_steps_judge_as_consecutive_runs_and_one_step_is_detect_itself() -> None:
    from detector.detect.engine import detect_steps, plan_steps

    aggs, inc = fleet_latency()
    steps = plan_steps((WS, WE), H, bucket=B5)
    assert len(steps) == 12
    stepped = detect_steps(lambda a, b: aggs, window=(WS, WE), steps=steps, policy=POLICY, now=WE)
    # The same as scheduled runs one hour apart, each carrying the state of the one before.
    state, found = EngineState(), []
    for s, e in steps:
        res = detect(aggs, window=(s, e), policy=POLICY, now=e, state=state)
        state, found = res.state, found + res.anomalies
    assert [a.to_json() for a in stepped.anomalies] == [a.to_json() for a in found]
    assert stepped.state == state
    assert stepped.stats["steps"] == 12 and stepped.stats["buckets_judged"] == 144
    assert any(a.operation_name == inc.operation for a in stepped.anomalies)
    # Candidates: one per (partition, metric), at the furthest gate any step reached.
    keys = [(c.operation_name, c.sdk_version, c.metric) for c in stepped.candidates]
    assert len(keys) == len(set(keys))
    # One step is plain detect (its stats included), with the step count added.
    one = detect_steps(lambda a, b: aggs, window=(WS, WE), steps=[(WS, WE)], policy=POLICY, now=WE)
    plain = _run(aggs)
    assert [a.to_json() for a in one.anomalies] == [a.to_json() for a in plain.anomalies]
    assert one.stats["steps"] == 1 and one.stats["partitions"] == plain.stats["partitions"]
