"""Aggregate algebra: exact merges, fleet, coarsen, histogram quantiles within HIST_ALPHA."""

from __future__ import annotations

from datetime import timedelta
from fractions import Fraction
from math import ceil

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector import aggregate, schema
from detector.aggregate import FLEET, coarsen, fleet, merge, quantile_column, quantiles, summarize
from detector.schema import AGG_KEY, BucketAggregates, empty_aggregates

T0 = pd.Timestamp("2026-11-02T10:00Z")
M5 = pd.Timedelta(minutes=5)


def make(
    rows: list[tuple[str, str, int, list[float], int]], **counters: object
) -> BucketAggregates:
    """rows: (operation, version, bucket index, durations ms, failures)."""
    stats, hist = [], []
    for op, ver, b, durs, fails in rows:
        logs = np.log(np.maximum(np.asarray(durs, dtype=float), 1.0))
        stats.append(
            {
                "operation_name": op,
                "sdk_version": ver,
                "bucket_start": T0 + b * M5,
                "calls": len(durs),
                "failures": fails,
                "expected_errors": 0,
                "dur_n": len(durs),
                "log_dur_sum": logs.sum(),
                "log_dur_sumsq": (logs**2).sum(),
            }
        )
        bins, counts = np.unique(schema.duration_bin(np.asarray(durs)), return_counts=True)
        for bn, c in zip(bins, counts, strict=True):
            hist.append(
                {
                    "operation_name": op,
                    "sdk_version": ver,
                    "bucket_start": T0 + b * M5,
                    "bin": bn,
                    "count": c,
                }
            )
    s, h = aggregate.normalize(pd.DataFrame(stats), pd.DataFrame(hist))
    return BucketAggregates(stats=s, hist=h, **counters)  # type: ignore[arg-type]


A = make(
    [("Join", "1", 0, [100, 200, 300], 1), ("Join", "2", 0, [50], 0)],
    rows_read=5,
    dropped={"duplicate": 1},
)
B = make(
    [("Join", "1", 0, [400], 1), ("Join", "1", 1, [10, 20], 0)],
    rows_read=3,
    flagged={"string_number": 2},
)
WHOLE = make(
    [
        ("Join", "1", 0, [100, 200, 300, 400], 2),
        ("Join", "2", 0, [50], 0),
        ("Join", "1", 1, [10, 20], 0),
    ]
)


def _same(a: BucketAggregates, b: BucketAggregates) -> None:
    pd.testing.assert_frame_equal(a.stats, b.stats, check_exact=False, rtol=1e-12)
    pd.testing.assert_frame_equal(a.hist, b.hist)


def test_merge_sums_per_key_and_adds_counters() -> None:
    m = merge(A, B)
    _same(m, WHOLE)
    assert m.rows_read == 8
    assert m.dropped == {"duplicate": 1} and m.flagged == {"string_number": 2}
    _same(merge(B, A), m)
    _same(merge(m), m)
    assert len(merge().stats) == 0 and list(merge().stats.columns) == list(schema.AGG_COLUMNS)


def test_merge_keeps_contract_dtypes() -> None:
    m = merge(A, empty_aggregates(), B)
    assert m.stats.dtypes.to_dict() == empty_aggregates().stats.dtypes.to_dict()
    assert m.hist.dtypes.to_dict() == empty_aggregates().hist.dtypes.to_dict()


def test_fleet_sums_versions() -> None:
    f = fleet(merge(A, B))
    assert set(f.stats["sdk_version"]) == {FLEET}
    assert f.stats["calls"].tolist() == [5, 2]
    assert f.hist["count"].sum() == 7
    # fleet of fleet is the fleet (rows already at the fleet level are not counted twice)
    _same(fleet(merge(merge(A, B), f)), f)


def test_coarsen_to_an_hour() -> None:
    c = coarsen(merge(A, B), timedelta(hours=1))
    assert c.stats["bucket_start"].unique().tolist() == [T0]
    assert c.stats.groupby("sdk_version")["calls"].sum().to_dict() == {"1": 6, "2": 1}
    assert c.hist["count"].sum() == 7
    with pytest.raises(ValueError):
        coarsen(A, timedelta(0))


def _exact_rank_element(values: np.ndarray, q: float) -> float:
    n = len(values)
    r = max(1, ceil(Fraction(str(q)) * n))
    return float(np.sort(values)[r - 1])


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 3000),
    sigma=st.floats(0.1, 3.0),
    qs=st.lists(st.sampled_from([0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0]), min_size=1, max_size=4, unique=True),
)  # fmt: skip
def test_quantiles_within_alpha_of_numpy(seed: int, n: int, sigma: float, qs: list[float]) -> None:
    """The documented bound: |estimate - exact element of rank ceil(q n)| <= HIST_ALPHA * exact."""
    rng = np.random.default_rng(seed)
    durs = np.maximum(np.round(np.exp(rng.normal(6.0, sigma, n))), 1.0)
    agg = make([("Join", "1", 0, list(durs), 0)])
    got = quantiles(agg.hist, qs)
    assert got["n"].tolist() == [n]
    for q in qs:
        exact = _exact_rank_element(durs, q)
        est = got[quantile_column(q)].iloc[0]
        assert abs(est - exact) <= schema.HIST_ALPHA * exact + 1e-9, (q, est, exact)


def test_quantiles_per_group_and_across_versions() -> None:
    m = merge(A, B)
    per = quantiles(m.hist, [0.5])
    assert len(per) == 3
    across = quantiles(m.hist, [0.5, 1.0], by=("operation_name", "bucket_start"))
    first = across.iloc[0]
    assert first["n"] == 5
    assert first["p50_ms"] == pytest.approx(200, rel=schema.HIST_ALPHA)
    assert first["p100_ms"] == pytest.approx(400, rel=schema.HIST_ALPHA)
    assert quantile_column(0.999) == "p99.9_ms"
    with pytest.raises(ValueError):
        quantiles(m.hist, [1.5])
    assert len(quantiles(empty_aggregates().hist, [0.5])) == 0


def test_summarize() -> None:
    s = summarize(merge(A, B), qs=(0.5, 0.95))
    row = s[(s["sdk_version"] == "1") & (s["bucket_start"] == T0)].iloc[0]
    logs = np.log([100, 200, 300, 400])
    assert row["calls"] == 4 and row["failures"] == 2 and row["failure_rate"] == 0.5
    assert row["log_dur_mean"] == pytest.approx(logs.mean())
    assert row["log_dur_std"] == pytest.approx(logs.std(ddof=1))
    assert row["p50_ms"] == pytest.approx(200, rel=schema.HIST_ALPHA)
    assert row["p95_ms"] == pytest.approx(400, rel=schema.HIST_ALPHA)
    single = s[s["sdk_version"] == "2"].iloc[0]
    assert np.isnan(single["log_dur_std"]) and single["dur_n"] == 1
    assert list(s.columns[:3]) == list(AGG_KEY)


@settings(max_examples=8, deadline=None)
@given(
    pieces=st.lists(
        st.tuples(
            st.sampled_from(["Join", "StartVideo"]),
            st.sampled_from(["1", "2"]),
            st.integers(0, 30),
            st.lists(st.integers(1, 10**6), min_size=1, max_size=5),
            st.integers(0, 1),
        ),
        min_size=1,
        max_size=8,
    ),
    order=st.randoms(use_true_random=False),
)
def test_merge_order_and_coarsening_commute(pieces, order) -> None:
    parts = [make([p]) for p in pieces]
    shuffled = list(parts)
    order.shuffle(shuffled)
    a, b = merge(*parts), merge(*shuffled)
    _same(a, b)
    assert a.stats["calls"].sum() == sum(len(p[3]) for p in pieces)
    hour = timedelta(hours=1)
    _same(coarsen(a, hour), merge(*[coarsen(p, hour) for p in shuffled]))
    _same(fleet(a), merge(*[fleet(p) for p in shuffled]))


@pytest.mark.parametrize(
    ("cap", "kept", "left_out_calls"),
    [
        (None, {("Join", "1"), ("Join", "2"), ("Hangup", "1"), ("Zap", "1")}, 0),
        (9, {("Join", "1"), ("Join", "2"), ("Hangup", "1"), ("Zap", "1")}, 0),
        (2, {("Join", "1"), ("Hangup", "1")}, 2),  # Join 2 and Zap 1 tie: the smaller key
        (3, {("Join", "1"), ("Hangup", "1"), ("Join", "2")}, 1),
        (1, {("Join", "1")}, 4),
    ],
)
def test_cap_partitions_keeps_the_busiest(
    cap: int | None, kept: set[tuple[str, str]], left_out_calls: int
) -> None:
    aggs = make(
        [
            ("Join", "1", 0, [100, 200], 0),
            ("Join", "1", 1, [100, 200], 1),  # 4 calls over two buckets
            ("Hangup", "1", 0, [10, 20], 0),
            ("Join", "2", 0, [50], 0),
            ("Zap", "1", 3, [50], 0),
        ],
        rows_read=10,
        dropped={"duplicate": 2},
    )
    out = aggregate.cap_partitions(aggs, cap)
    assert set(zip(out.stats["operation_name"], out.stats["sdk_version"], strict=True)) == kept
    assert set(zip(out.hist["operation_name"], out.hist["sdk_version"], strict=True)) == kept
    assert out.dropped.get("partition_cap", 0) == left_out_calls
    assert out.partitions_left_out == 4 - len(kept)
    assert out.rows_read == out.stats["calls"].sum() + sum(out.dropped.values())


def test_cap_partitions_refuses_a_cap_below_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        aggregate.cap_partitions(A, 0)
