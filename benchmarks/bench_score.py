"""Scoring speed and memory: 10,000 partitions x 288 five-minute buckets.

Usage::

    .venv/bin/python benchmarks/bench_score.py [--partitions 10000] [--buckets 288]
        [--baseline-days 1] [--new-builds 0]

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

``--new-builds N`` makes the last version of each of the first ``N`` operations a new build: no
calls before the middle of the baseline window (nor before ``min_history`` after its start), so
it is rolled out inside the baseline window (``baseline.rolled_out``), then a staged rollout (its
calls thinned by a share rising as the square of the time since, to 1 at the judged window's
end), so its baseline stays provisional (own weight < ``provisional_weight``; at full volume
about half of them would not, and ``rollout_history`` takes only provisional builds).
Both since-rollout stages then take every one of them: the failure test
(``rollout.rollout_history``/``apply_rollout``) and the tail test
(``tail.tail_history``/``apply_tail``). For every version of those
``N`` operations (the tail test compares a build with its siblings) the sparse duration histogram
is generated too: each row's calls drawn log-normal around the row's mean log-duration with
``sigma``, standardised so their log sum and sum of squares are the row's ``log_dur_sum`` and
``log_dur_sumsq``, binned with :func:`detector.schema.duration_bin` and counted per (key, bin).
The run then prints ``rollout_tests``/``tail_tests`` and the seconds of the four since-rollout
functions (wrapped in the engine's namespace, scoring run): the two histories are the engine's
``rollout`` lap, the two tests
run inside ``evidence``. With the default 0 nothing changes: no histogram, the same rows, no
wrapping, the same output.

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

from detector.detect import engine  # noqa: E402
from detector.detect.decide import DetectionPolicy  # noqa: E402
from detector.detect.engine import detect  # noqa: E402
from detector.evaluate import _MemoryBackend  # noqa: E402
from detector.schema import (  # noqa: E402
    AGG_COLUMNS,
    HIST_COLUMNS,
    BucketAggregates,
    duration_bin,
    fill_failed_calls,
)
from detector.store.models import ModelStore  # noqa: E402

T0 = datetime(2026, 11, 2, tzinfo=UTC)
PER_OP = 20  # versions per operation
HIST_CHUNK = 4_000_000  # calls sampled at once for the duration histogram


def new_build_rows(n_builds: int) -> np.ndarray:
    """Partitions of the new builds: the last version of each of the first ``n_builds`` ops."""
    return np.arange(n_builds, dtype=np.int64) * PER_OP + PER_OP - 1


def make_history(
    n_parts: int, n_buckets: int, seed: int = 0, new_builds: int = 0, new_from: int = 0
) -> BucketAggregates:
    """The synthetic history; ``new_builds`` > 0: that many new builds without calls before
    bucket ``new_from``, and the duration histogram of their operations (:func:`make_hist`)."""
    rng = np.random.default_rng(seed)
    per_op = PER_OP
    n_ops = max(n_parts // per_op, 1)
    ops = np.repeat(np.array([f"Op{i:04d}" for i in range(n_ops)], dtype=object), per_op)[:n_parts]
    vers = np.tile(np.array([f"1.{i}.0" for i in range(per_op)], dtype=object), n_ops)[:n_parts]
    times = pd.date_range(T0, periods=n_buckets, freq="5min")
    lam = rng.gamma(2.0, 4.0, n_parts)[:, None] * np.ones((1, n_buckets))
    calls = rng.poisson(lam).astype(np.int64)
    # New builds: none before ``new_from``, then a staged rollout, their calls thinned by a share
    # rising as the square of the time since (1 at the end): thin enough in the baseline window
    # that their baselines stay provisional. Nothing changes when new_builds == 0.
    new = new_build_rows(new_builds)
    share = np.clip((np.arange(n_buckets) - new_from + 1) / (n_buckets - new_from), 0.0, 1.0)
    calls[new] = np.random.default_rng(seed + 2).binomial(calls[new], share**2)
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
    if new_builds:
        rows = np.arange(min(new_builds * per_op, n_parts))  # every version of their operations
        hist = make_hist(calls, s1, rows, ops, vers, times, sigma, seed + 1)
    else:
        hist = pd.DataFrame({c: pd.Series(dtype=t) for c, t in HIST_COLUMNS.items()})
    return BucketAggregates(stats=stats, hist=hist)


def make_hist(
    calls: np.ndarray,
    s1: np.ndarray,
    rows: np.ndarray,
    ops: np.ndarray,
    vers: np.ndarray,
    times: pd.DatetimeIndex,
    sigma: float,
    seed: int,
) -> pd.DataFrame:
    """The sparse duration histogram (:data:`HIST_COLUMNS`) of partitions ``rows``.

    ``calls``/``s1``: (P, T) calls and log-duration sums. Each cell's ``n`` calls get durations
    ``exp(s1 / n + sigma * z)``, ``z`` standard normals centred and scaled per cell so the logs
    sum to ``s1`` and their squares to ``s1**2 / n + (n - 1) * sigma**2`` (the row's
    ``log_dur_sumsq``); binned by :func:`duration_bin`, counted per (cell, bin). Vectorised, in
    chunks of about :data:`HIST_CHUNK` calls (bounded memory).
    """
    rng = np.random.default_rng(seed)
    sub = calls[rows]
    r_idx, t_idx = np.nonzero(sub > 0)
    n = sub[r_idx, t_idx]
    mean = s1[rows][r_idx, t_idx] / n
    cum = np.cumsum(n)
    edges = np.unique(
        np.searchsorted(cum, np.arange(HIST_CHUNK, cum[-1] if len(cum) else 0, HIST_CHUNK))
    )
    cells, bins, counts = [], [], []
    for a, b in zip(np.r_[0, edges], np.r_[edges, len(n)], strict=True):
        nn = n[a:b]
        cell = np.repeat(np.arange(b - a), nn)
        z = rng.standard_normal(len(cell))
        dz = z - (np.bincount(cell, z, minlength=b - a) / nn)[cell]
        ss = np.bincount(cell, dz * dz, minlength=b - a)
        scale = np.sqrt(np.divide(nn - 1, ss, out=np.zeros(b - a), where=ss > 0))
        bi = duration_bin(np.exp(mean[a:b][cell] + sigma * scale[cell] * dz)).astype(np.int64)
        lo = int(bi.min()) if len(bi) else 0
        width = int(bi.max()) - lo + 1 if len(bi) else 1
        key, cnt = np.unique(cell * width + (bi - lo), return_counts=True)
        cells.append(a + key // width)
        bins.append(lo + key % width)
        counts.append(cnt)
    c = np.concatenate(cells) if cells else np.zeros(0, np.int64)
    part = rows[r_idx[c]]
    hist = pd.DataFrame(
        {
            "operation_name": ops[part],
            "sdk_version": vers[part],
            "bucket_start": times[t_idx[c]],
            "bin": np.concatenate(bins) if bins else np.zeros(0, np.int64),
            "count": np.concatenate(counts) if counts else np.zeros(0, np.int64),
        }
    )
    hist = hist[list(HIST_COLUMNS)].astype(HIST_COLUMNS)
    assert int(hist["count"].sum()) == int(sub.sum())  # every call of the rows, once
    return hist


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


#: The since-rollout functions the engine calls, timed one by one with ``--new-builds`` (the
#: histories make its ``rollout`` lap, the tests run inside ``evidence``).
ROLLOUT_STEPS = ("rollout_history", "tail_history", "apply_rollout", "apply_tail")


def time_steps(into: dict[str, float]) -> None:
    """Wrap :data:`ROLLOUT_STEPS` in the engine's namespace: their seconds add up in ``into``."""
    for name in ROLLOUT_STEPS:
        fn = getattr(engine, name)

        def wrapped(*a, _fn=fn, _name=name, **k):
            t = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                into[_name] = into.get(_name, 0.0) + time.perf_counter() - t

        setattr(engine, name, wrapped)


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
    ap.add_argument(
        "--new-builds",
        type=int,
        default=0,
        help="make the last version of each of the first N operations a new build, rolled "
        "out in the middle of the baseline window (with their operations' duration histogram)",
    )
    args = ap.parse_args(argv)
    base_buckets = int(args.baseline_days * 288)
    policy = DetectionPolicy(
        baseline=timedelta(days=args.baseline_days), min_history=timedelta(hours=6)
    )
    # Rolled out (baseline.rolled_out): first seen >= min_history after its operation (bucket 0).
    gap = int(pd.Timedelta(policy.min_history) / pd.Timedelta(policy.bucket))
    new_from = max(base_buckets // 2, gap)
    if not 0 <= args.new_builds <= args.partitions // PER_OP:
        ap.error(f"--new-builds: 0..{args.partitions // PER_OP} (one per operation)")
    if args.new_builds and new_from >= base_buckets:
        ap.error("--new-builds: the baseline window is too short to roll a build out inside it")
    t = time.perf_counter()
    aggs = make_history(
        args.partitions, base_buckets + args.buckets, new_builds=args.new_builds, new_from=new_from
    )
    gen = time.perf_counter() - t
    ws = T0 + timedelta(minutes=5 * base_buckets)
    we = ws + timedelta(minutes=5 * args.buckets)
    store = ModelStore(_MemoryBackend())

    def run():
        return detect(aggs, window=(ws, we), policy=policy, now=we, model_store=store)

    print(
        f"history: {len(aggs.stats):,} bucket rows ({args.partitions:,} version partitions, "
        f"{base_buckets} baseline + {args.buckets} judged buckets), built in {gen:.1f}s",
        flush=True,
    )
    if args.new_builds:
        n_ops = len(aggs.hist["operation_name"].unique())
        print(
            f"new builds: {args.new_builds} (the last version of Op0000..Op"
            f"{args.new_builds - 1:04d}, no calls before baseline bucket {new_from} of "
            f"{base_buckets}, then ramping up); duration histogram: {len(aggs.hist):,} rows "
            f"({n_ops} operations, {aggs.hist['count'].sum():,} calls)",
            flush=True,
        )
    steps: dict[str, float] = {}
    if args.new_builds:
        time_steps(steps)
    r1, s1, _ = timed(run)
    steps.clear()
    r2, s2, _ = timed(run)
    steps = dict(steps)  # the scoring run's
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
    if args.new_builds:
        print(
            f"since-rollout (scoring run): rollout_tests {r2.stats['rollout_tests']}, "
            f"tail_tests {r2.stats['tail_tests']}, held buckets {r2.stats['held_buckets']}"
        )
        print(
            "since-rollout seconds (scoring run; the histories in 'rollout', the apply_ in "
            f"'evidence'): { {k: round(v, 4) for k, v in steps.items()} }"
        )
    print(
        f"partitions judged: {r2.stats['partitions']:,}; anomalies: {len(r2.anomalies)} "
        f"({sorted({a.fingerprint for a in r2.anomalies})[:4]}); process max RSS {rss:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
