"""The since-rollout failure test of new builds (detector.detect.rollout), on hand-built histories."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import special

from detector.detect.policy import DetectionPolicy
from detector.detect.rollout import Rollout, effective_looks, first_buckets, rollout_test

POLICY = DetectionPolicy()
T = 600  # buckets of history (50 hours)
FIRST = 200  # the build's first bucket: 400 buckets (33 hours) since its rollout


def _history(
    *,
    own_rate: float = 0.12,
    others_rate: float = 0.04,
    fleet_rate: float = 0.04,
    per_hour: float = 9.6,
    others_per_hour: float = 60.0,
    spike: int = 0,
    fixed_from: int | None = None,
    incident: tuple[int, int, float] | None = None,
) -> Rollout:
    """One build from bucket FIRST at ``per_hour`` calls an hour, failing ``own_rate``
    (expected values, no noise: the test's arithmetic is what is checked); its operation's
    other versions at ``others_per_hour`` failing ``others_rate``; the fleet's baseline rate
    ``fleet_rate``. ``spike``: that many extra failures in one bucket; ``fixed_from``: the
    build fails like the others from that bucket on; ``incident``: (from, to, rate) buckets
    where it fails at that rate."""
    t = np.arange(T)
    live = t >= FIRST
    c = np.where(live, per_hour / 12, 0.0)
    rate = np.full(T, own_rate)
    if fixed_from is not None:
        rate[t >= fixed_from] = others_rate
    if incident is not None:
        rate[incident[0] : incident[1]] = incident[2]
    f = c * rate
    if spike:
        f[FIRST + 10] += spike
    co = np.where(live, others_per_hour / 12, 0.0)
    return Rollout(
        rows=np.array([1]),
        times=pd.date_range("2026-11-02", periods=T, freq="5min", tz="UTC"),
        first=np.array([FIRST]),
        calls=c[None],
        failures=f[None],
        other_calls=co[None],
        other_failures=(co * others_rate)[None],
        rate=np.full((1, T), fleet_rate),
    )


def _test(roll: Rollout, cluster: float = 1.0, others_cluster: float = 1.0) -> dict[str, float]:
    # row 0: the fleet, row 1: the build
    base = SimpleNamespace(cluster=np.array([others_cluster, cluster]), tau2_fail=np.full(2, 1e-4))
    parts = SimpleNamespace(fleet_of=np.array([0, 0]))
    out = rollout_test(roll, base, parts, POLICY, np.array([T - 1]))  # type: ignore[arg-type]
    return {k: v[0, 0].item() for k, v in out.items()}


def test_a_build_failing_since_rollout_passes_with_its_figures() -> None:
    r = _test(_history())
    assert r["n"] == pytest.approx(9.6 / 12 * 400)  # 320 operations since the first call
    assert r["k"] == pytest.approx(0.12 * 320)
    assert r["expected"] == pytest.approx(0.04 * 320)
    assert r["effect"] == pytest.approx(0.08)
    assert r["span"] == 400
    assert r["share"] == pytest.approx(9.6 / (9.6 + 60))
    # significant over ~170 partitions x 12 buckets an hour (and one more span)
    assert r["passes"] and r["p"] * 2000 < POLICY.alpha


@pytest.mark.parametrize(
    ("case", "kwargs", "check"),
    [
        # The other versions fail as much in the same hours: a fleet-wide bad stretch.
        ("others moved too", {"others_rate": 0.12}, "effect"),
        # The same failures, but most of the excess is one bucket's burst.
        ("one bucket", {"own_rate": 0.04, "spike": 26}, "loo"),
        # Failing since its rollout, fixed 12 hours ago: the evidence is not current.
        ("fixed", {"fixed_from": T - 144}, "current"),
        # Like its siblings, but for an afternoon a day after its rollout: that incident is
        # the trailing spans' (it made a since-rollout alert 13 hours after it ended).
        ("an afternoon", {"own_rate": 0.04, "incident": (FIRST + 150, FIRST + 200, 0.4)}, "steady"),
        # Like its siblings.
        ("no regression", {"own_rate": 0.04}, "effect"),
    ],
)
def test_what_does_not_pass(case: str, kwargs: dict, check: str) -> None:
    r = _test(_history(**kwargs))
    assert not r["passes"], case
    if check == "effect":
        assert r["effect"] < POLICY.min_failure_points
    else:
        assert not r[check]


def test_failures_in_clusters_weigh_less() -> None:
    """The build's failures coming three to a failing call: the same counts are a third as
    much evidence (variance x3)."""
    one, three = _test(_history()), _test(_history(), cluster=3.0)
    assert three["z"] == pytest.approx(one["z"] / np.sqrt(3), rel=0.02)
    assert three["p"] > 1e3 * one["p"]


def test_a_rollout_no_longer_than_the_trailing_spans_is_left_to_them() -> None:
    roll = _history()
    col = np.array([FIRST + max(POLICY.spans) - 1, FIRST + max(POLICY.spans)])
    base = SimpleNamespace(cluster=np.ones(2), tau2_fail=np.full(2, 1e-4))
    parts = SimpleNamespace(fleet_of=np.array([0, 0]))
    out = rollout_test(roll, base, parts, POLICY, col)  # type: ignore[arg-type]
    assert out["span"].tolist() == [[max(POLICY.spans), max(POLICY.spans) + 1]]
    assert not out["passes"][0, 0]


def test_first_buckets_come_from_the_baseline_or_else_the_window() -> None:
    """Seen in the baseline window: its first bucket there. Seen only in the judged window:
    found in the evidence cube (here buckets 8..11 of a 10-bucket baseline and a 2-bucket
    window). Never seen: the buckets to the window's end."""
    base = SimpleNamespace(first_bucket=np.array([0, 5, 10, 10]))
    calls = np.zeros((4, 4))
    calls[0, 1] = calls[1, 0] = calls[2, 3] = 3.0
    out = first_buckets(base, calls, offset=8, n_cal=10)  # type: ignore[arg-type]
    assert out.tolist() == [0, 5, 11, 12]


def test_quiet_other_versions_that_did_not_move_add_little_noise() -> None:
    """The other versions at 20 operations an hour, failures four to a call: their own
    excess (none) is mostly noise and is shrunk by how little the level wanders, so the build's
    evidence is nearly what it is against 2,000 an hour (taken as it was, their noise cut z by
    a third)."""
    few = _test(_history(others_per_hour=20.0), others_cluster=4.0)
    many = _test(_history(others_per_hour=2000.0), others_cluster=4.0)
    assert few["z"] == pytest.approx(many["z"], rel=0.05)


def test_other_versions_that_clearly_moved_move_the_expectation() -> None:
    """The other versions fail 3 points above the fleet's baseline rate over the same hours
    (a fleet-wide bad stretch, |z| >= shared_z): the build is expected that much higher."""
    r = _test(_history(others_rate=0.07))
    assert r["expected"] == pytest.approx(0.07 * 320, rel=0.01)
    assert r["effect"] == pytest.approx(0.05, abs=0.002)


def test_history_of_a_new_build_leaves_out_maintenance() -> None:
    """rollout_history on real bucket rows: the build rolled out a day in is found, its calls
    and its siblings' are summed per bucket from its first call, and a maintenance window on its
    operation leaves those buckets out."""
    from datetime import timedelta

    from detector.detect.baseline import Partitions, compute_baselines, with_fleet
    from detector.detect.rollout import rollout_history
    from tests.fixtures_engine import T0, Part, make_aggs

    start, end = pd.Timestamp(T0), pd.Timestamp(T0 + timedelta(days=3))
    rollout = T0 + timedelta(days=1)
    aggs = make_aggs(
        [Part("Join", "1.0", 60.0), Part("Join", "2.0", 6.0, start=rollout)], days=3, seed=3
    )
    stats = with_fleet(aggs.stats)
    parts = Partitions.from_frame(stats)
    base = compute_baselines(stats, parts, start=T0, end=end.to_pydatetime(), policy=POLICY)
    first = first_buckets(base, np.zeros((len(parts), 0)), offset=864, n_cal=864)
    maint = [(T0 + timedelta(days=2), T0 + timedelta(days=2, hours=6), "Join")]
    roll = rollout_history(
        stats, parts, base, POLICY, start=start, end=end, first=first, maintenance=maint
    )
    assert [parts.version[r] for r in roll.rows] == ["2.0"]
    assert roll.first[0] >= 288 and roll.times[roll.first[0]] < rollout + timedelta(hours=1)
    s = aggs.stats
    live = s["bucket_start"] >= roll.times[roll.first[0]]
    inside = (s["bucket_start"] >= maint[0][0]) & (s["bucket_start"] < maint[0][1])
    own, other = s["sdk_version"] == "2.0", s["sdk_version"] == "1.0"
    assert roll.calls.sum() == s.loc[own & ~inside, "calls"].sum()
    assert roll.other_calls.sum() == s.loc[other & live & ~inside, "calls"].sum()
    cols = (roll.times >= maint[0][0]) & (roll.times < maint[0][1])
    assert roll.calls[:, cols].sum() == 0 and roll.other_calls[:, cols].sum() == 0


def test_the_test_reports_how_much_its_count_grew_in_the_last_hour() -> None:
    """``growth``: ln of the calls since the first call over those at the look an hour
    before; in the build's first hour there is no such look (inf: every look a test)."""
    base = SimpleNamespace(cluster=np.ones(2), tau2_fail=np.full(2, 1e-4))
    parts = SimpleNamespace(fleet_of=np.array([0, 0]))
    out = rollout_test(_history(), base, parts, POLICY, np.array([FIRST + 5, T - 1]))  # type: ignore[arg-type]
    assert out["growth"][0, 0] == np.inf
    assert out["growth"][0, 1] == pytest.approx(np.log(400 / 388))  # 12 of 400 buckets


@pytest.mark.parametrize(
    ("growth", "z", "looks"),
    [
        (0.0, 4.5, 1.0),  # no call in the hour: the same test twelve times
        (np.log(1.01), 4.5, 1.48),  # a quiet build overnight
        (np.log(1.09), 4.5, 3.01),  # the same build in the morning
        (np.log(2.0), 4.5, 11.46),  # doubled in the hour: nearly a test a bucket
        (np.log(3.0), 4.5, 12.0),  # tripled: every bucket a test (the cap)
        (np.inf, 4.5, 12.0),  # its first hour
        (np.log(1.09), 3.0, 2.19),  # a lower threshold is crossed more easily on the way
    ],
)
def test_effective_looks(growth: float, z: float, looks: float) -> None:
    assert effective_looks(np.array(growth), z, 12) == pytest.approx(looks, abs=0.01)


@pytest.mark.parametrize(
    ("n1", "n2", "z"),
    [(100, 101, 3.0), (100, 110, 3.0), (100, 200, 3.0), (300, 330, 3.5), (1000, 1030, 3.0)],
)
def test_effective_looks_cover_the_crossings_of_an_hours_looks(n1: int, n2: int, z: float) -> None:
    """Simulated null paths of a standardised cumulative sum looked at twelve times in an
    hour while its count grows from n1 to n2: the chance that some look crosses ``z`` is
    at most one test's chance times the effective looks, and more than one test's (counting
    the hour as one test would understate it)."""
    rng = np.random.default_rng(7)
    paths = 400_000
    counts = np.linspace(n1, n2, 13)
    total = rng.normal(0.0, np.sqrt(n1), paths)
    top = total / np.sqrt(n1)
    for a, b in zip(counts[:-1], counts[1:], strict=True):
        total += rng.normal(0.0, np.sqrt(b - a), paths)
        np.maximum(top, total / np.sqrt(b), out=top)
    crossed = float((top >= z).mean())
    one = float(special.ndtr(-z))
    assert 1.15 * one < crossed <= one * float(effective_looks(np.log(n2 / n1), z, 12))
