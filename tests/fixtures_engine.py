"""Synthetic bucket aggregates for the engine tests (no simulator, no files).

:func:`make_aggs` draws per-bucket calls (Poisson, optional daily profile), failures
(binomial) and log-normal durations for a few partitions, applies incidents (duration factor,
failure rate, volume factor) to chosen partitions and time ranges, and returns a
:class:`~detector.schema.BucketAggregates` with stats and the sparse histogram, exactly the
shape a source produces.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from detector.schema import AGG_COLUMNS, HIST_COLUMNS, BucketAggregates, duration_bin

T0 = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday


@dataclass
class Part:
    operation: str
    version: str
    calls_per_hour: float = 240.0
    fail_rate: float = 0.01
    median_ms: float = 400.0
    sigma: float = 0.5
    start: datetime | None = None  # first bucket (new version)
    daily_amplitude: float = 0.0  # calls vary by +-amplitude over the day
    ramp_hours: float = 0.0  # from ``start``, calls grow linearly to the full rate over this


@dataclass
class Incident:
    operation: str
    version: str | None  # None = every version
    start: datetime
    end: datetime
    duration_factor: float = 1.0
    fail_rate: float | None = None
    volume_factor: float = 1.0


def make_aggs(
    parts: list[Part],
    *,
    start: datetime = T0,
    days: float = 8,
    bucket: timedelta = timedelta(minutes=5),
    incidents: tuple[Incident, ...] = (),
    seed: int = 0,
    with_hist: bool = True,
) -> BucketAggregates:
    rng = np.random.default_rng(seed)
    times = pd.date_range(start, periods=int(days * 86400 / bucket.total_seconds()), freq=bucket)
    stats_rows: list[dict] = []
    hist_parts: list[pd.DataFrame] = []
    per_bucket = bucket.total_seconds() / 3600
    hours = times.hour.to_numpy() + times.minute.to_numpy() / 60
    for part in parts:
        lam = (
            part.calls_per_hour
            * per_bucket
            * (1 + part.daily_amplitude * np.sin(2 * np.pi * (hours - 6) / 24))
        )
        active = np.ones(len(times), bool)
        if part.start is not None:
            active = np.asarray(times >= pd.Timestamp(part.start))
            if part.ramp_hours > 0:  # a rollout reaching more users hour by hour
                since = (times - pd.Timestamp(part.start)) / pd.Timedelta(hours=part.ramp_hours)
                lam = lam * np.clip(np.asarray(since, dtype=float), 0.0, 1.0)
        dur_factor = np.ones(len(times))
        fail = np.full(len(times), part.fail_rate)
        vol = np.ones(len(times))
        for inc in incidents:
            if inc.operation != part.operation or (inc.version not in (None, part.version)):
                continue
            m = np.asarray((times >= pd.Timestamp(inc.start)) & (times < pd.Timestamp(inc.end)))
            dur_factor[m] *= inc.duration_factor
            if inc.fail_rate is not None:
                fail[m] = inc.fail_rate
            vol[m] *= inc.volume_factor
        calls = rng.poisson(lam * vol) * active
        failures = rng.binomial(calls, fail)
        total = int(calls.sum())
        logd = rng.normal(np.log(part.median_ms), part.sigma, total) + np.repeat(
            np.log(dur_factor), calls
        )
        logd = np.maximum(logd, 0.0)
        bidx = np.repeat(np.arange(len(times)), calls)
        s1 = np.bincount(bidx, logd, minlength=len(times))
        s2 = np.bincount(bidx, logd**2, minlength=len(times))
        nz = np.flatnonzero(calls)
        for i in nz:
            stats_rows.append(
                {
                    "operation_name": part.operation,
                    "sdk_version": part.version,
                    "bucket_start": times[i],
                    "calls": int(calls[i]),
                    "failures": int(failures[i]),
                    "failed_calls": int(failures[i]),
                    "expected_errors": 0,
                    "dur_n": int(calls[i]),
                    "log_dur_sum": float(s1[i]),
                    "log_dur_sumsq": float(s2[i]),
                }
            )
        if with_hist and total:
            bins = duration_bin(np.exp(logd))
            h = pd.DataFrame({"b": bidx, "bin": bins}).value_counts().reset_index(name="count")
            h["operation_name"] = part.operation
            h["sdk_version"] = part.version
            h["bucket_start"] = times[h["b"].to_numpy()]
            hist_parts.append(h.drop(columns="b"))
    stats = pd.DataFrame(stats_rows, columns=list(AGG_COLUMNS))
    stats = stats.astype(AGG_COLUMNS)
    if hist_parts:
        hist = pd.concat(hist_parts, ignore_index=True)[list(HIST_COLUMNS)].astype(HIST_COLUMNS)
    else:
        hist = pd.DataFrame({c: pd.Series(dtype=t) for c, t in HIST_COLUMNS.items()})
    return BucketAggregates(stats=stats, hist=hist, rows_read=int(stats["calls"].sum()))


def standard_parts(calls_per_hour: float = 240.0) -> list[Part]:
    """Two operations x two versions, as most tests need."""
    return [
        Part("Join", "1.30.1.0_stable", calls_per_hour, 0.01, 800.0),
        Part("Join", "1.31.1.0_stable", calls_per_hour, 0.01, 800.0),
        Part("StartVideo", "1.30.1.0_stable", calls_per_hour, 0.02, 300.0),
        Part("StartVideo", "1.31.1.0_stable", calls_per_hour, 0.02, 300.0),
    ]


def hours_since_t0(stats: pd.DataFrame) -> np.ndarray:
    """Whole hours from :data:`T0` to each row's bucket start."""
    return ((stats["bucket_start"] - pd.Timestamp(T0)) // pd.Timedelta(hours=1)).to_numpy()


def with_failure_rates(
    stats: pd.DataFrame, rate: np.ndarray, rng: np.random.Generator
) -> pd.DataFrame:
    """A copy of ``stats`` with failures drawn at ``rate`` (one per row), each its own call."""
    out = stats.copy()
    out["failures"] = rng.binomial(out["calls"].to_numpy(), rate)
    out["failed_calls"] = out["failures"]
    out["failed_calls_op"] = out["failures"].astype("float64")
    out["failure_cluster"] = out["failed_calls_op"]
    out["failure_cluster_op"] = out["failed_calls_op"]
    return out


def neutral_test_fields(shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """(P, M, T) -> the test fields a hand-written Evidence leaves neutral: one-bucket spans,
    a version with all of its operation's calls, nothing observed."""
    return {
        "span": np.ones(shape, np.int64),
        "share": np.ones(shape),
        "observed": np.full(shape, np.nan),
        "expected": np.full(shape, np.nan),
        "z": np.zeros(shape),
    }
