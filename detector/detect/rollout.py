"""Since-rollout evidence: a new build judged on everything it did since it appeared.

A build rolled out mid-window at 10 operations an hour holds ~120 operations in the longest
trailing span (12 hours): at a corrected threshold that is not enough to see +8 points of failure
rate, and by the time a span is long enough its failures would have become its own baseline (see
:func:`detector.detect.baseline._regressed_since_rollout`). Its whole history since the first call is
enough: 58 failures in 476 calls against 22 expected reads z = 8.

Two stages, split so the engine can free its row frame in between:

* :func:`rollout_history` consumes the bucket rows (with fleet rows), the partitions and the
  baselines, and produces a :class:`Rollout`: for every new, still-provisional version, dense
  per-bucket calls and failures since the start of the baseline window, its own and those of its
  operation's other versions, and the fleet's hourly failure rates at those buckets.
* :func:`apply_rollout` consumes a :class:`Rollout` and the span evidence of the judged buckets,
  and replaces the failure-rate evidence of those versions where the since-rollout test is the
  stronger one that passes its checks (a new "span" reaching back to the first call).

The test: failures since the rollout against what the fleet's hourly rates expect of the same
calls, moved by as much as the other versions moved against the same rates over the same buckets
(a fleet-wide bad afternoon is not the build's; unless they clearly moved, their noisy excess is
shrunk by how much the level plausibly wanders). Failures count in clusters of the version's own
failures per failing call. Bonferroni: within a family of its own, the new builds tested (see
``DetectionPolicy.rollout_alpha_share``; the engine puts the p-values on its scale), each build
counting the looks of one hour for as many tests as they are worth (:func:`effective_looks`:
re-run every bucket on a count that grew by a bucket's calls, it is nearly one test an hour,
not twelve). Checks,
as for the trailing spans: the evidence survives dropping its strongest bucket, every third of
the span fails more on its own, and it is current (the last third, at most
``max(policy.spans)`` buckets, carries at least ``latest_share`` of the whole effect).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import special

from detector.detect.baseline import Baselines, Partitions, epoch_ns, rolled_out, slot_of
from detector.detect.features import SpanEvidence
from detector.detect.policy import DetectionPolicy, Metric

__all__ = [
    "Applied",
    "CountNull",
    "Hold",
    "Rollout",
    "Scaled",
    "Shown",
    "apply_rollout",
    "count_test",
    "effective_looks",
    "failure_null",
    "first_buckets",
    "held_evidence",
    "may_hold",
    "no_hold",
    "put_evidence",
    "rollout_history",
    "rollout_test",
    "scaled_test",
]


@dataclass
class Rollout:
    """Per-bucket history of the new, still-provisional versions (``L`` of them).

    ``rows``: (L,) partition rows; ``times``: (T,) bucket starts from the baseline start to the
    window end; ``first``: (L,) column of each version's first call. ``calls``/``failures``: the
    version's (L, T); ``other_calls``/``other_failures``: the operation's other versions', from
    the version's first call on (zeros before); ``rate``: (L, T) the fleet's baseline failure
    rate at each bucket's hour. Maintenance buckets are zeros.
    """

    rows: np.ndarray
    times: pd.DatetimeIndex
    first: np.ndarray
    calls: np.ndarray
    failures: np.ndarray
    other_calls: np.ndarray
    other_failures: np.ndarray
    rate: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)


class CountNull(NamedTuple):
    """What a since-rollout count test measures its counts against, beside the rates of the
    :class:`Rollout` (``L`` versions): ``cl``/``cl_o`` (L, 1) the variance factor of the
    version's count and of its other versions' (counted events come in calls), ``tau2`` (L, 1)
    how much the rate wanders between hours, ``min_points`` the practical minimum excess rate
    of the whole span and of each third, ``longer_than`` the buckets a span since the rollout
    must exceed to be tested, ``latest`` the most buckets the current check reads and
    ``current_z`` the z the excess there must reach on its own."""

    cl: np.ndarray
    cl_o: np.ndarray
    tau2: np.ndarray
    min_points: float
    longer_than: int
    latest: int
    current_z: float = 0.0


class Hold(NamedTuple):
    """Where a since-rollout test of metric ``metric`` may keep an open alert open (hold.py):
    ``rows`` (L,) its partitions, ``cand`` (L, K) its buckets (:func:`may_hold`),
    ``passing`` (L, K) where its evidence passed every check and is the engine's, ``write``
    puts its evidence into the engine's where an (L, K) mask is True."""

    rows: np.ndarray
    metric: int
    cand: np.ndarray
    passing: np.ndarray
    write: Callable[[np.ndarray], None]


class Applied(NamedTuple):
    """Where :func:`apply_rollout` put the since-rollout test into the evidence, ``(L, K)``:
    ``used`` (bool) and ``alpha``, the alpha of that one test (its family's, spread over the
    new builds and the looks of the hour; NaN where neither used nor held); ``hold`` where it
    may keep an open alert open (hold.py; ``used`` grows where it does)."""

    used: np.ndarray
    alpha: np.ndarray
    hold: Hold


def _utc(ts: datetime | pd.Timestamp) -> pd.Timestamp:
    t = pd.Timestamp(ts)
    return t.tz_convert("UTC") if t.tzinfo else t.tz_localize("UTC")


def first_buckets(base: Baselines, calls: np.ndarray, offset: int, n_cal: int) -> np.ndarray:
    """(P,) each partition's first bucket with rows, counted from the baseline window's start.

    Consumes the baselines (``base.first_bucket``, over the ``n_cal`` buckets of the baseline
    window) and the ``(P, T')`` calls of the evidence cube, whose first bucket is ``offset``
    buckets after the baseline's start and whose last is the window's last: a version first
    seen after the baseline window is found there. A partition with no calls at all gets the
    number of buckets to the window's end.
    """
    P, total = calls.shape[0], offset + calls.shape[1]
    own = base.first_bucket if base.first_bucket is not None else np.full(P, n_cal)
    seen = calls > 0
    if seen.shape[1]:
        cube_first = np.where(seen.any(axis=1), np.argmax(seen, axis=1) + offset, total)
    else:  # no bucket after the baseline window
        cube_first = np.full(P, total)
    return np.where(own < n_cal, own, np.clip(cube_first, 0, total)).astype(np.int64)


def rollout_history(
    stats: pd.DataFrame,
    parts: Partitions,
    base: Baselines,
    policy: DetectionPolicy,
    *,
    start: pd.Timestamp,
    end: pd.Timestamp,
    first: np.ndarray,
    maintenance: Sequence[tuple[datetime, datetime, str | None]] = (),
) -> Rollout:
    """The versions rolled out in ``[start, end)`` that are still provisional, and their history.

    ``first``: (P,) each partition's first bucket with rows, counted from ``start`` (the
    number of buckets to ``end`` if none; see :func:`first_buckets`). Rolled out: first seen
    at least ``policy.min_history`` after their operation (a rare version present all along is
    not new, however much it fails). Provisional: their baseline still leans on their
    operation's (``base.provisional``); once a build has its own level, the trailing spans
    judge it against that. The rows are read only when there is such a version.
    """
    bucket = pd.Timedelta(policy.bucket)
    times = pd.date_range(start, end, freq=bucket, inclusive="left")
    T, P = len(times), len(parts)
    empty = np.zeros((0, T))
    none = Rollout(np.zeros(0, np.int64), times, np.zeros(0, np.int64), *([empty] * 5))
    if not T or not P or stats.empty:
        return none
    fo = parts.fleet_of
    late = rolled_out(first, parts, policy) & np.asarray(base.provisional, bool) & (first < T)
    rows = np.flatnonzero(late)
    if not len(rows):
        return none
    t = (epoch_ns(stats["bucket_start"]) - int(start.value)) // int(bucket.value)
    pid = parts.index_of(stats)
    ok = (t >= 0) & (t < T) & (pid >= 0)
    # Dense (rows + their fleets, T) sums of only the partitions involved (a handful).
    want = np.unique(np.concatenate([rows, fo[rows]]))
    local = np.full(P, -1, np.int64)
    local[want] = np.arange(len(want))
    sel = ok & (local[np.clip(pid, 0, None)] >= 0)
    flat = local[pid[sel]] * T + t[sel]
    size = len(want) * T

    def dense(col: str) -> np.ndarray:
        w = stats[col].to_numpy()[sel].astype(np.float64, copy=False)
        return np.bincount(flat, weights=w, minlength=size).reshape(len(want), T)

    C, F = dense("calls"), dense("failures")
    for s, e, op in maintenance:
        cols = np.asarray((times >= _utc(s)) & (times < _utc(e)))
        hit = np.ones(len(want), bool) if not op else parts.operation[want] == op
        C[np.ix_(hit, cols)] = 0.0
        F[np.ix_(hit, cols)] = 0.0
    v, f = local[rows], local[fo[rows]]
    since = np.arange(T)[None, :] >= first[rows][:, None]
    return Rollout(
        rows=rows,
        times=times,
        first=first[rows],
        calls=C[v],
        failures=F[v],
        other_calls=np.where(since, C[f] - C[v], 0.0),
        other_failures=np.where(since, F[f] - F[v], 0.0),
        rate=base.fail_rate[fo[rows]][:, slot_of(times)],
    )


def apply_rollout(
    ev: SpanEvidence,
    roll: Rollout,
    base: Baselines,
    parts: Partitions,
    policy: DetectionPolicy,
    *,
    times: pd.DatetimeIndex,
    alpha: float,
    on_scale: float,
) -> Applied:
    """Put the since-rollout failure test into ``ev`` (the span evidence of ``times``), in place.

    Returns where the rollout test replaced the trailing spans' evidence, and the alpha of
    each such test (:class:`Applied`). Only spans longer than ``max(policy.spans)`` are used
    (a shorter rollout is one of the trailing spans already). ``alpha``: one test's alpha when
    every bucket of an hour counts as a test (the family's over the new builds x buckets an
    hour, see ``DetectionPolicy.rollout_alpha_share``); the hour's looks are counted for what
    they are worth instead (:func:`effective_looks`). ``on_scale``: the alpha ``ev.p`` is
    read against (the engine's scale); each test's p-value is put on it (p x on_scale / its
    own alpha), and the two are compared, and stored, there.
    """
    L, K = len(roll), len(times)
    f = Metric.FAILURE_RATE  # the since-rollout test is a failure-rate test
    if not L or not K:
        used = np.zeros((L, K), bool)
        return Applied(used, np.full((L, K), np.nan), no_hold(roll.rows, f, used))
    null = failure_null(roll, base, parts, policy)
    sc = scaled_test(roll, null, policy, times=times, alpha=alpha, on_scale=on_scale)
    used = sc.t["passes"] & ((sc.p < ev.p[roll.rows, f]) | ~ev.loo_ok[roll.rows, f])
    held = may_hold(sc.t, policy.alpha)
    t = sc.t
    with np.errstate(invalid="ignore", divide="ignore"):
        observed, expected = t["k"] / t["n"], t["expected"] / t["n"]
    shown = Shown(t["effect"], np.nan, observed, expected)
    put_evidence(ev, f, roll.rows, used, sc, shown, policy.shared_z)
    hold = held_evidence(ev, f, roll.rows, used, held, (sc, shown), policy.shared_z)
    return Applied(used, np.where(used | held, sc.own_alpha, np.nan), hold)


class Scaled(NamedTuple):
    """A since-rollout count test at the judged columns, on the engine's scale: ``col`` the
    columns of ``roll.times`` tested, ``t`` :func:`count_test`'s arrays, ``p`` its p-values
    on the scale ``ev.p`` is read against and ``own_alpha`` each test's own alpha, ``(L, K)``."""

    col: np.ndarray
    t: dict[str, np.ndarray]
    p: np.ndarray
    own_alpha: np.ndarray


def scaled_test(
    roll: Rollout,
    null: CountNull,
    policy: DetectionPolicy,
    *,
    times: pd.DatetimeIndex,
    alpha: float,
    on_scale: float,
) -> Scaled:
    """Run :func:`count_test` at the judged buckets ``times`` and put its p-values on the
    engine's scale (see :func:`apply_rollout` for ``alpha`` and ``on_scale``)."""
    col = np.searchsorted(roll.times, times)
    if (col >= len(roll.times)).any() or not (roll.times[np.clip(col, 0, None)] == times).all():
        raise ValueError("rollout history does not cover the judged buckets")
    t = count_test(roll, null, policy, col)
    per_hour = policy.buckets_per_hour
    # z of the least alpha a look gets (every bucket a test): the most looks the growth is
    # worth, so the count errs on the safe side.
    looks = effective_looks(t["growth"], float(-special.ndtri(alpha)), per_hour)
    own_alpha = alpha * per_hour / looks  # of each test
    return Scaled(col, t, np.fmin(t["p"] * (on_scale / own_alpha), 1.0), own_alpha)


class Shown(NamedTuple):
    """What the evidence of a since-rollout test reads beside the test's own numbers: its
    ``effect`` and ``effect_ms``, ``observed`` and ``expected`` value, ``(L, K)`` or scalars."""

    effect: np.ndarray | float
    effect_ms: np.ndarray | float
    observed: np.ndarray | float
    expected: np.ndarray | float


def put_evidence(
    ev: SpanEvidence,
    m: int,
    rows: np.ndarray,
    used: np.ndarray,
    sc: Scaled,
    shown: Shown,
    shared_z: float,
) -> None:
    """Replace metric ``m``'s evidence of partitions ``rows`` by the since-rollout test where
    ``used`` ((L, K)), in place: it passed its checks, so it counts as surviving leave-one-out
    and as the build's own (peer-significant) deviation; shared with its siblings where they
    moved by ``shared_z``."""
    r, c = np.nonzero(used)
    if not len(r):
        return
    pr, t = rows[r], sc.t

    def cell(x: np.ndarray | float) -> np.ndarray | float:
        return x[r, c] if isinstance(x, np.ndarray) else x

    ev.p[pr, m, c] = sc.p[r, c]
    ev.effect[pr, m, c] = cell(shown.effect)
    ev.effect_ms[pr, m, c] = cell(shown.effect_ms)
    ev.n[pr, m, c] = t["n"][r, c]
    ev.k[pr, m, c] = t["k"][r, c]
    ev.loo_ok[pr, m, c] = True
    ev.peer_sig[pr, m, c] = True
    ev.shared[pr, m, c] = t["others_z"][r, c] >= shared_z
    ev.span[pr, m, c] = np.minimum(t["span"][r, c], np.iinfo(ev.span.dtype).max)
    ev.observed[pr, m, c] = cell(shown.observed)
    ev.expected[pr, m, c] = cell(shown.expected)
    ev.z[pr, m, c] = t["z"][r, c]
    ev.share[pr, m, c] = t["share"][r, c]


def may_hold(t: dict[str, np.ndarray], alpha: float) -> np.ndarray:
    """``(L, K)``: where an open alert of a since-rollout test (:func:`count_test`'s arrays
    ``t``) may go on: every check passes, or every check but current with the calls since too
    few to tell it is over (``held``); and the test's own p-value is at most ``alpha``. The
    correction for the partitions and looks searched is for opening an alert; an alert
    already open follows one hypothesis."""
    out: np.ndarray = (t["passes"] | t["held"]) & (t["p"] <= alpha)
    return out


def no_hold(rows: np.ndarray, m: int, used: np.ndarray) -> Hold:
    """A :class:`Hold` of metric ``m`` that holds nothing (no new build, no judged bucket)."""

    def write(mask: np.ndarray) -> None:
        return None

    return Hold(rows, m, np.zeros(used.shape, bool), used, write)


def held_evidence(
    ev: SpanEvidence,
    m: int,
    rows: np.ndarray,
    used: np.ndarray,
    cand: np.ndarray,
    test: tuple[Scaled, Shown],
    shared_z: float,
) -> Hold:
    """A since-rollout test's :class:`Hold` at ``cand`` ((L, K)): where hold.py keeps an alert
    open, it writes the test's evidence (:func:`put_evidence`) and marks it ``used``."""

    def write(mask: np.ndarray) -> None:
        put_evidence(ev, m, rows, mask, test[0], test[1], shared_z)
        np.logical_or(used, mask, out=used)

    return Hold(rows, m, cand, used.copy(), write)


def failure_null(
    roll: Rollout, base: Baselines, parts: Partitions, policy: DetectionPolicy
) -> CountNull:
    """The since-rollout failure test's null: failures count in clusters of the version's own
    failures per failing call, its siblings' in theirs; the fleet's failure rate wanders by
    ``base.tau2_fail``."""
    rows, fo = roll.rows, parts.fleet_of[roll.rows]
    cluster = base.cluster if base.cluster is not None else np.ones(len(parts))
    return CountNull(
        cl=np.maximum(cluster[rows], 1.0)[:, None],
        cl_o=np.maximum(cluster[fo], 1.0)[:, None],
        tau2=base.tau2_fail[fo][:, None],
        min_points=policy.min_failure_points,
        # A shorter rollout is one of the trailing spans already.
        longer_than=max(policy.spans),
        latest=max(policy.spans),
    )


def rollout_test(
    roll: Rollout, base: Baselines, parts: Partitions, policy: DetectionPolicy, col: np.ndarray
) -> dict[str, np.ndarray]:
    """The since-rollout failure test of every rolled-out version at the columns ``col`` of
    ``roll.times`` (:func:`count_test` against :func:`failure_null`)."""
    return count_test(roll, failure_null(roll, base, parts, policy), policy, col)


def count_test(
    roll: Rollout, null: CountNull, policy: DetectionPolicy, col: np.ndarray
) -> dict[str, np.ndarray]:
    """A since-rollout count test (``roll.failures`` of ``roll.calls`` against ``roll.rate``)
    of every version at the columns ``col`` of ``roll.times``: ``(L, len(col))`` arrays ``p``
    (one test's), ``effect`` (excess rate), ``n``, ``k``, ``expected`` (counts), ``z``,
    ``span`` (buckets since the first call), ``loo``, ``steady`` (every third counts more),
    ``current``, ``share``, ``others_z``, ``passes`` (every check, and longer than
    ``null.longer_than``), ``held`` (every check but current, and the calls since it last was
    current too few to tell it is over) and ``growth``: ln of the calls since the first call
    over those an hour before (inf in its first hour; see :func:`effective_looks`)."""
    c = _running_counts(roll, null, col, policy.buckets_per_hour)
    x = _expectation(c, null, policy)
    p = _p_value(c, x)
    loo = _survives_loo(roll, c, x, col, policy.loo_z)
    steady = _steady(c, x, col, policy, null)
    current = _current(c, x, col, policy, null)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(c.n + c.co > 0, c.n / (c.n + c.co), 0.0)
        growth = np.where(c.n_hour_ago > 0, np.log(c.n / c.n_hour_ago), np.inf)
    but_current = (
        (c.span > null.longer_than)
        & (x.effect >= null.min_points)
        & (c.n >= policy.min_calls)
        & (c.k >= policy.min_failures)
        & (share >= policy.min_share)
        & loo
        & steady
    )
    passes = but_current & current
    # Not current, not over either: the calls since it last was are too few to tell. An open
    # alert on it stays open (hold.py) rather than ending for want of calls.
    held = but_current & ~current
    last = np.full(held.shape, -1)
    some = held.any(axis=1)  # most builds never get here: no search back for them
    if some.any():
        last[some] = _last_current(_some(roll, some), _some_null(null, some), policy, col)
    held &= (last >= 0) & ~_over(c, x, col, last, policy, null)
    return {
        "p": p,
        "effect": x.effect,
        "n": c.n,
        "k": c.k,
        "expected": x.ex,
        "z": x.z,
        "span": c.span,
        "loo": loo,
        "steady": steady,
        "current": current,
        "share": share,
        "others_z": x.others_z,
        "passes": passes,
        "held": held,
        "growth": growth,
    }


def _cum(x: np.ndarray) -> np.ndarray:
    """Running sums with a leading zero column: buckets [a, b) sum to c[:, b] - c[:, a]."""
    out = np.zeros((x.shape[0], x.shape[1] + 1))
    np.cumsum(x, axis=1, out=out[:, 1:])
    return out


@dataclass
class _Counts:
    """A rollout's running sums (``(L, T + 1)``, see :func:`_cum`) and what they read at the
    tested columns (``(L, K)``): the version's own, and the operation's other versions'."""

    cs: np.ndarray  # running calls
    fs: np.ndarray  # running failures
    es: np.ndarray  # running failures the fleet's rates expect
    n: np.ndarray  # calls since the first call
    k: np.ndarray  # failures since the first call
    e: np.ndarray  # failures the fleet's rates expect of them
    n_hour_ago: np.ndarray  # calls at the look one hour before
    co: np.ndarray  # the other versions' calls
    fo: np.ndarray  # ... failures
    eo: np.ndarray  # ... and failures expected
    span: np.ndarray  # buckets since the first call
    cl: np.ndarray  # (L, 1) the version's failures per failing call (>= 1)
    cl_o: np.ndarray  # (L, 1) its fleet's


def _running_counts(roll: Rollout, null: CountNull, col: np.ndarray, per_hour: int) -> _Counts:
    """Consumes a rollout, its null's variance factors and the tested columns; produces the
    :class:`_Counts` of every version at those columns."""
    C, F, Co, Fo = roll.calls, roll.failures, roll.other_calls, roll.other_failures
    cs, fs, es = _cum(C), _cum(F), _cum(C * roll.rate)
    co, fo_, eo = (_cum(x)[:, col + 1] for x in (Co, Fo, Co * roll.rate))
    return _Counts(
        cs=cs,
        fs=fs,
        es=es,
        n=cs[:, col + 1],
        k=fs[:, col + 1],
        e=es[:, col + 1],
        # Calls at the look one hour (per_hour buckets) before each column.
        n_hour_ago=cs[:, np.clip(col + 1 - per_hour, 0, None)],
        co=co,
        fo=fo_,
        eo=eo,
        span=col[None, :] - roll.first[:, None] + 1,
        cl=null.cl,
        cl_o=null.cl_o,
    )


class _Expected(NamedTuple):
    """The test's expectation at the tested columns, ``(L, K)`` each."""

    drift: np.ndarray  # failure rate the other versions moved by (shrunk), added to the fleet's
    ex: np.ndarray  # failures expected
    pbar: np.ndarray  # expected failure rate
    var: np.ndarray  # variance of the failure count
    sd: np.ndarray
    z: np.ndarray
    others_z: np.ndarray  # the other versions' excess, as a z
    effect: np.ndarray  # excess failure rate (points)


def _expectation(c: _Counts, null: CountNull, policy: DetectionPolicy) -> _Expected:
    """Consumes the running counts and the rate's wander (``null.tau2``); produces the
    counts expected of each version, moved by its siblings' drift, and its z."""
    n, k, e, co, fo_, eo, cl_o = c.n, c.k, c.e, c.co, c.fo, c.eo, c.cl_o
    per_hour = policy.buckets_per_hour
    with np.errstate(invalid="ignore", divide="ignore"):
        # The other versions' excess over the fleet's rates in the same buckets moves the
        # expectation: a fleet-wide bad stretch is not the build's. Their count is noisy too
        # (their failures come in calls), and taken as it is it doubled the test's variance on
        # a quiet operation: unless they clearly moved (|z| >= shared_z), it is shrunk
        # (empirical Bayes) by how much the level really wanders over that many hours
        # (the fleet's tau2 / hours).
        sampling = np.where(co > 0, np.maximum(fo_, 1.0) * cl_o / np.maximum(co, 1e-12) ** 2, 0.0)
        others_z = (fo_ - eo) / np.sqrt(np.maximum(eo * cl_o, 1e-12))
        prior = null.tau2 / np.maximum(c.span / per_hour, 1.0)
        keep = np.where(
            np.abs(others_z) >= policy.shared_z,
            1.0,
            np.where(sampling > 0, prior / np.maximum(prior + sampling, 1e-300), 0.0),
        )
        drift = keep * np.where(co > 0, (fo_ - eo) / np.maximum(co, 1e-12), 0.0)
        ex = np.maximum(e + n * drift, 0.1 * e)
        pbar = np.clip(np.where(n > 0, ex / n, 0.0), 1e-9, 1 - 1e-9)
        var = ex * (1 - pbar) * c.cl + n**2 * keep * sampling
        sd = np.sqrt(np.maximum(var, 1e-12))
        z = (k - ex) / sd
        effect = np.where(n > 0, (k - ex) / n, 0.0)
    return _Expected(drift, ex, pbar, var, sd, z, others_z, effect)


def _p_value(c: _Counts, x: _Expected) -> np.ndarray:
    """Consumes the counts and their expectation; produces ``(L, K)`` one test's p-values (a
    beta-binomial tail on the counts scaled down by the dispersion; 1 where z < 1.5)."""
    n, k, pbar = c.n, c.k, x.pbar
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.maximum(x.var / np.maximum(n * pbar * (1 - pbar), 1e-12), 1.0)
        kk, nn = k / d, n / d
        p = np.ones(n.shape)
        cand = (n > 0) & (kk > 0) & (x.z >= 1.5)
        p[cand] = special.betainc(kk[cand], (nn - kk + 1)[cand], pbar[cand])
    return p


def _survives_loo(
    roll: Rollout, c: _Counts, x: _Expected, col: np.ndarray, loo_z: float
) -> np.ndarray:
    """Consumes the history, counts and expectation; produces ``(L, K)`` bool: the evidence
    survives dropping its strongest bucket (the largest single-bucket excess so far)."""
    C = roll.calls
    with np.errstate(invalid="ignore", divide="ignore"):
        xs = roll.failures - C * roll.rate
        x_max = np.maximum.accumulate(np.where(C > 0, xs, -np.inf), axis=1)[:, col]
        out: np.ndarray = (c.k - x.ex - np.maximum(x_max, 0.0) - 0.5) / x.sd >= loo_z
    return out


def _sums(
    c: _Counts, drift: np.ndarray, col: np.ndarray, w: np.ndarray, off: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Calls, failures and failures expected (moved by ``drift``) in the ``w`` buckets ending
    ``off`` buckets before each tested column, ``(L, K)`` each."""
    L, K = c.n.shape
    rows_i = np.arange(L)[:, None]
    end = np.broadcast_to(col[None, :] + 1, (L, K))
    cs, fs, es = c.cs, c.fs, c.es
    hi = np.clip(end - off, 0, None)
    lo = np.clip(hi - w, 0, None)
    nw = cs[rows_i, hi] - cs[rows_i, lo]
    kw = fs[rows_i, hi] - fs[rows_i, lo]
    ew = np.maximum(es[rows_i, hi] - es[rows_i, lo] + nw * drift, 0.0)
    return nw, kw, ew


def _window(
    c: _Counts,
    drift: np.ndarray,
    col: np.ndarray,
    w: np.ndarray,
    off: np.ndarray,
    policy: DetectionPolicy,
) -> tuple[np.ndarray, np.ndarray]:
    """Excess failures' z, and the excess rate, of the ``w`` buckets ending ``off``
    buckets before the tested one; -inf and -1 where it holds too few calls to judge."""
    nw, kw, ew = _sums(c, drift, col, w, off)
    with np.errstate(invalid="ignore", divide="ignore"):
        pw = np.clip(np.where(nw > 0, ew / nw, 0.0), 1e-9, 1 - 1e-9)
        zw = (kw - ew - 0.5) / np.sqrt(np.maximum(ew * (1 - pw) * c.cl, 1e-12))
        rate = np.where(nw >= policy.min_calls * policy.third_support, (kw - ew) / nw, -1.0)
    return np.where(rate > -1.0, zw, -np.inf), rate


def _steady(
    c: _Counts, x: _Expected, col: np.ndarray, policy: DetectionPolicy, null: CountNull
) -> np.ndarray:
    """Consumes the counts and expectation; produces ``(L, K)`` bool: every third of the span
    counts more, by ``null.min_points``."""
    # Since the rollout: every third of the span fails more on its own (by the practical
    # minimum), so a build that failed for an afternoon a day after its rollout
    # is that afternoon's incident (the trailing spans' business), not "failing since".
    third = -(-c.span // 3)
    steady = np.ones(c.n.shape, bool)
    for i in range(3):
        zt, rt = _window(c, x.drift, col, third, i * third, policy)
        steady &= (zt >= 0.0) & (rt >= null.min_points)
    return steady


def _current(
    c: _Counts, x: _Expected, col: np.ndarray, policy: DetectionPolicy, null: CountNull
) -> np.ndarray:
    """Consumes the counts and expectation; produces ``(L, K)`` bool: the last third of the
    span, at most ``null.latest`` buckets, carries at least ``latest_share`` of the whole
    effect, with a z of at least ``null.current_z`` on its own."""
    w = np.clip(np.minimum(-(-c.span // 3), null.latest), 0, None)
    zc, rc = _window(c, x.drift, col, w, np.zeros_like(w), policy)
    with np.errstate(invalid="ignore"):
        out: np.ndarray = (zc >= null.current_z) & (rc >= policy.latest_share * x.effect)
    return out


def _some(roll: Rollout, keep: np.ndarray) -> Rollout:
    """The versions of ``roll`` where ``keep`` ((L,) bool) holds."""
    return Rollout(
        rows=roll.rows[keep],
        times=roll.times,
        first=roll.first[keep],
        calls=roll.calls[keep],
        failures=roll.failures[keep],
        other_calls=roll.other_calls[keep],
        other_failures=roll.other_failures[keep],
        rate=roll.rate[keep],
    )


def _some_null(null: CountNull, keep: np.ndarray) -> CountNull:
    """``null`` of the versions where ``keep`` ((L,) bool) holds."""
    return null._replace(cl=null.cl[keep], cl_o=null.cl_o[keep], tau2=null.tau2[keep])


def _last_current(
    roll: Rollout, null: CountNull, policy: DetectionPolicy, col: np.ndarray
) -> np.ndarray:
    """``(L, K)``: the latest column of ``roll.times``, at or before each tested one, where the
    test was current (:func:`_current`); -1 where it never was."""
    every = np.arange(int(col.max()) + 1)
    c = _running_counts(roll, null, every, policy.buckets_per_hour)
    cur = _current(c, _expectation(c, null, policy), every, policy, null) & (c.span > 0)
    last = np.maximum.accumulate(np.where(cur, every[None, :], -1), axis=1)
    out: np.ndarray = last[:, col]
    return out


def _over(
    c: _Counts,
    x: _Expected,
    col: np.ndarray,
    last: np.ndarray,
    policy: DetectionPolicy,
    null: CountNull,
) -> np.ndarray:
    """``(L, K)`` bool: the calls since the test was last current (``last``, see
    :func:`_last_current`) are enough to judge, and their excess lies below ``latest_share``
    of the whole effect by a z of ``null.current_z``: the change is over (the mirror of
    :func:`_current`, whose excess must be that far above none)."""
    w = np.where(last >= 0, col[None, :] - last, 0)
    nw, kw, ew = _sums(c, x.drift, col, w, np.zeros_like(w))
    with np.errstate(invalid="ignore", divide="ignore"):
        # What the effect, held at latest_share of its size, expects of those calls.
        alt = ew + policy.latest_share * np.maximum(x.effect, 0.0) * nw
        pa = np.clip(np.where(nw > 0, alt / nw, 0.0), 1e-9, 1 - 1e-9)
        z = (kw - alt + 0.5) / np.sqrt(np.maximum(alt * (1 - pa) * c.cl, 1e-12))
        out: np.ndarray = (nw >= policy.min_calls * policy.third_support) & (z <= -null.current_z)
    return out


def effective_looks(growth: np.ndarray, z: float, per_hour: int) -> np.ndarray:
    """How many independent tests one hour of a since-rollout test's looks amount to.

    Consumes ``growth``, S = ln(n2 / n1) of the calls the test counts at the end of the hour
    and at its start (:func:`rollout_test`), and ``z``, the critical z of one test; produces
    the hour's effective number of tests, between 1 and ``per_hour`` (one per bucket, what
    the family was corrected by before).

    The test is re-run every bucket on a cumulative count: consecutive looks share all but one
    bucket's calls, so twelve looks an hour at 250 calls since the rollout, a handful more by
    the hour's end, are nearly one test. Over log-count time a standardised cumulative sum
    is an Ornstein-Uhlenbeck process, which moves by a variance of about S over a stretch S:
    the chance that it crosses ``z`` at some look between n1 and n2 is one look's, Q(z), plus

    * ``phi(z) sqrt(2 S / pi)``: just below ``z`` at the first look, it crosses on the way
      (a Brownian stretch of variance S; what dominates within an hour), and
    * ``phi(z) z S / 2``: new crossings over longer stretches (Pickands; Siegmund,
      *Sequential Analysis*, 1985, for ``W(n) / sqrt(n)``).

    Their sum, over Q(z), is the count: conservative against simulated paths of twelve looks
    an hour (tests), e.g. at z = 4 from 250 calls, 1.47 for +3 in the hour (simulated 1.24),
    2.85 for +25 (1.83). At z = 4.5 a quiet build that grew 1 % is worth 1.5 tests, one
    that grew 9 % 3.0, where every bucket counted for one: 12.
    """
    mills = np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi) / special.ndtr(-z)  # phi(z) / Q(z)
    s = np.asarray(growth, np.float64)  # inf in a first hour: capped, every look a test
    out: np.ndarray = np.clip(
        1.0 + mills * (np.sqrt(2 * s / np.pi) + 0.5 * z * s), 1.0, float(per_hour)
    )
    return out
