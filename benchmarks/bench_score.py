"""Scoring speed and memory: 10,000 partitions x 288 five-minute buckets.

Usage::

    .venv/bin/python benchmarks/bench_score.py [--partitions 10000] [--buckets 288]
        [--baseline-days 1]

Builds synthetic bucket aggregates directly with NumPy (no simulator, no files): ``--partitions``
version partitions spread over operations of 20 versions each (plus one fleet partition per
operation), ``--baseline-days`` of history before a judged window of ``--buckets`` buckets, every
bucket populated. Two anomalies are injected so the explain path runs.

Measured in the same run, side by side:

* ``detect (fit)``   : a first :func:`detector.detect.engine.detect` call that also fits and saves the
                       forest (in-memory model store);
* ``detect (scoring)``: the same call with the persisted forest loaded: baselines, features,
                       span evidence, forest scores, decisions, explanations -- the target
                       (<= 10 s, peak <= 1 GiB);
* ``floor``          : a bare NumPy pass computing one z-score per (partition, bucket, metric)
                       from the same arrays (the least any scorer has to do).

Peak memory is the tracemalloc peak during a third (untimed) scoring call (NumPy and pandas
allocations included), on top of the input frame; the process max RSS is printed too.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.detect.decide import DetectionPolicy  # noqa: E402
from detector.detect.engine import detect  # noqa: E402
from detector.evaluate import _MemoryBackend  # noqa: E402
from detector.schema import (  # noqa: E402
    AGG_COLUMNS,
    HIST_COLUMNS,
    BucketAggregates,
    fill_failed_calls,
)
from detector.store.models import ModelStore  # noqa: E402

T0 = datetime(2026, 11, 2, tzinfo=UTC)


def make_history(n_parts: int, n_buckets: int, seed: int = 0) -> BucketAggregates:
    rng = np.random.default_rng(seed)
    per_op = 20
    n_ops = max(n_parts // per_op, 1)
    ops = np.repeat(np.array([f"Op{i:04d}" for i in range(n_ops)], dtype=object), per_op)[:n_parts]
    vers = np.tile(np.array([f"1.{i}.0" for i in range(per_op)], dtype=object), n_ops)[:n_parts]
    times = pd.date_range(T0, periods=n_buckets, freq="5min")
    lam = rng.gamma(2.0, 4.0, n_parts)[:, None] * np.ones((1, n_buckets))
    calls = rng.poisson(lam).astype(np.int64)
    p = rng.uniform(0.005, 0.03, n_parts)[:, None]
    mu = rng.uniform(5.0, 7.5, n_parts)[:, None]
    sigma = 0.5
    # Two injected anomalies in the last quarter (failure spike, slowdown).
    q = int(n_buckets * 0.8)
    p = np.broadcast_to(p, calls.shape).copy()
    mu = np.broadcast_to(mu, calls.shape).copy()
    p[0, q:] += 0.2
    mu[1, q:] += 0.7
    failures = rng.binomial(calls, np.clip(p, 0, 1))
    n = np.maximum(calls, 1)
    s1 = calls * mu + np.sqrt(n) * sigma * rng.standard_normal(calls.shape) * (calls > 0)
    s2 = np.where(calls > 0, s1**2 / n + np.maximum(calls - 1, 0) * sigma**2, 0.0)
    keep = calls.ravel() > 0
    stats = pd.DataFrame(
        {
            "operation_name": np.repeat(ops, n_buckets)[keep],
            "sdk_version": np.repeat(vers, n_buckets)[keep],
            "bucket_start": np.tile(times.to_numpy(), n_parts)[keep],
            "calls": calls.ravel()[keep],
            "failures": failures.ravel()[keep],
            "expected_errors": np.zeros(int(keep.sum()), np.int64),
            "dur_n": calls.ravel()[keep],
            "log_dur_sum": s1.ravel()[keep],
            "log_dur_sumsq": s2.ravel()[keep],
        }
    )
    stats["bucket_start"] = pd.to_datetime(stats["bucket_start"], utc=True)
    # Every failure its own call (the failing-call columns a source adds), in AGG_COLUMNS order.
    stats = fill_failed_calls(stats)[list(AGG_COLUMNS)].astype(AGG_COLUMNS)
    hist = pd.DataFrame({c: pd.Series(dtype=t) for c, t in HIST_COLUMNS.items()})
    return BucketAggregates(stats=stats, hist=hist)


def floor_pass(aggs: BucketAggregates) -> float:
    """Bare NumPy: per-partition mean/std over time, one z per cell and metric."""
    t = time.perf_counter()
    s = aggs.stats
    key = s["operation_name"].astype(str) + "|" + s["sdk_version"].astype(str)
    codes, _ = pd.factorize(key)
    ts, _ = pd.factorize(s["bucket_start"])
    P, T = codes.max() + 1, ts.max() + 1
    out = []
    for col in ("calls", "failures", "log_dur_sum"):
        a = np.zeros((P, T))
        a[codes, ts] = s[col].to_numpy(dtype=float)
        z = (a - a.mean(axis=1, keepdims=True)) / (a.std(axis=1, keepdims=True) + 1e-9)
        out.append((np.abs(z) > 4).sum())
    return time.perf_counter() - t


def timed(fn, trace: bool = False):
    """Run ``fn``; seconds, and the tracemalloc peak when ``trace`` (slower, so separate)."""
    if trace:
        tracemalloc.start()
    t = time.perf_counter()
    res = fn()
    secs = time.perf_counter() - t
    peak = 0
    if trace:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return res, secs, peak


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--partitions", type=int, default=10_000)
    ap.add_argument("--buckets", type=int, default=288)
    ap.add_argument("--baseline-days", type=float, default=1.0)
    args = ap.parse_args(argv)
    base_buckets = int(args.baseline_days * 288)
    t = time.perf_counter()
    aggs = make_history(args.partitions, base_buckets + args.buckets)
    gen = time.perf_counter() - t
    ws = T0 + timedelta(minutes=5 * base_buckets)
    we = ws + timedelta(minutes=5 * args.buckets)
    policy = DetectionPolicy(
        baseline=timedelta(days=args.baseline_days), min_history=timedelta(hours=6)
    )
    store = ModelStore(_MemoryBackend())

    def run():
        return detect(aggs, window=(ws, we), policy=policy, now=we, model_store=store)

    print(
        f"history: {len(aggs.stats):,} bucket rows ({args.partitions:,} version partitions, "
        f"{base_buckets} baseline + {args.buckets} judged buckets), built in {gen:.1f}s",
        flush=True,
    )
    r1, s1, _ = timed(run)
    r2, s2, _ = timed(run)
    _, _, m1 = timed(run, trace=True)  # memory of a scoring run (tracing slows it: not timed)
    m2 = m1
    fl = floor_pass(aggs)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'stage':<22}{'seconds':>9}{'peak MiB':>10}   notes")
    print(
        f"{'detect (fit)':<22}{s1:>9.2f}{m1 / 2**20:>10.0f}   forest {r1.stats['forest'].get('action')}"
    )
    print(
        f"{'detect (scoring)':<22}{s2:>9.2f}{m2 / 2**20:>10.0f}   forest {r2.stats['forest'].get('action')}; "
        f"target <= 10 s, <= 1024 MiB"
    )
    print(f"{'floor (numpy z)':<22}{fl:>9.2f}{'':>10}   one z per cell and metric, nothing else")
    print(f"stage timings (scoring run): {r2.stats['timings']}")
    print(
        f"partitions judged: {r2.stats['partitions']:,}; anomalies: {len(r2.anomalies)} "
        f"({sorted({a.fingerprint for a in r2.anomalies})[:4]}); process max RSS {rss:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
