"""A new build's tail since its rollout: did it make its operation's p95 slower? (``[detection] tail``)

A build that slows a minority of its calls (8 % of them x4) lifts its p95 by half while its
median, and the mean log-duration the trailing spans test, barely move. Its own baseline soon
holds those slow calls too, so only its whole history since the first call, against its
operation's other versions at the same hours, shows it. Two stages:

* :func:`tail_history` consumes the duration histogram of the history, the partitions and the
  baselines, and produces a :class:`TailRollout`: for every version rolled out since the
  baseline window began, per bucket its calls and its *slow* calls, those above its operation's
  baseline p95 for the hour (residual log-durations against the operation's hour-slot mean, so
  the daily cycle is not a tail), the same of the operation's other versions, the baseline's
  share above that threshold (the rate expected), and the null the counts face (:class:`~
  detector.detect.rollout.CountNull`: the slow counts' dispersion between the baseline's
  buckets and the share's wander between its hours).
* :func:`apply_tail` runs the since-rollout count test of :mod:`.rollout` on those counts (the
  other versions' excess moves the expectation, so an operation-wide slow afternoon is not the
  build's; the same leave-one-out and thirds checks; the current check on the last three
  hours, their excess significant on its own) and puts it into the duration evidence where
  it is the stronger test, the build's p95 since its rollout is above its other versions' by
  the practical minimum (``min_duration_rel`` and ``min_duration_ms``) and, beyond its
  typical shift, its tail is (see :func:`apply_tail`).

Alpha: a weighted Bonferroni inside the duration metric, as for the failure rate: the new
builds' tail tests share ``rollout_alpha_share`` of it (:func:`~detector.detect.decide.multiplicity`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import numpy as np
import pandas as pd

from detector.detect.baseline import Baselines, Partitions, epoch_ns, rolled_out, slot_of
from detector.detect.features import SpanEvidence
from detector.detect.policy import DetectionPolicy, Metric
from detector.detect.rollout import (
    CountNull,
    Hold,
    Rollout,
    Shown,
    held_evidence,
    may_hold,
    no_hold,
    put_evidence,
    scaled_test,
)
from detector.schema import bin_value

__all__ = ["TailApplied", "TailRollout", "apply_tail", "tail_history", "tail_used"]

#: The baseline quantile a call is compared with (its operation's p95 for the hour).
TAIL_LEVEL = 0.95
#: The baseline calls behind a threshold (about 20 expected above it); fewer: no tail test.
TAIL_MIN_CALLS = 400.0
#: The z the last hours' excess must reach on its own (one-sided 5 %, set a priori): the
#: count since the rollout stays significant long after a fix, and a point estimate of the
#: last hours' excess crossed half the effect by chance again and again after one.
CURRENT_Z = 1.645


@dataclass
class _Hist:
    """The histogram rows of the operations involved, as arrays: column, partition, its
    operation's fleet row, bin, count and residual log-duration."""

    t: np.ndarray
    pid: np.ndarray
    fleet: np.ndarray
    bins: np.ndarray
    count: np.ndarray
    resid: np.ndarray


class Sparse(NamedTuple):
    """Histogram rows of one build (or its other versions) since its rollout: bucket column,
    bin, count and residual log-duration (against the operation's hour-slot mean)."""

    t: np.ndarray
    bins: np.ndarray
    calls: np.ndarray
    resid: np.ndarray


class _Kept(NamedTuple):
    """The histogram rows :meth:`TailRollout.sparse` reads (those since a build of their
    operation rolled out): column, partition, fleet row, bin and count, 20 bytes a row; the
    residuals are recomputed from the operation's hour-slot means (``mu_log``, ``slots``)."""

    t: np.ndarray
    pid: np.ndarray
    fleet: np.ndarray
    bins: np.ndarray
    calls: np.ndarray  # float32: whole numbers of calls, exact below 2**24
    mu_log: np.ndarray
    slots: np.ndarray

    def sparse(self, m: np.ndarray) -> Sparse:
        """Rows ``m`` (a mask) as :class:`Sparse`."""
        t, fleet, bins = self.t[m], self.fleet[m], self.bins[m]
        resid = _log_value(bins) - self.mu_log[fleet, self.slots[t]]
        return Sparse(t, bins, self.calls[m].astype(np.float64), resid)


@dataclass
class TailRollout:
    """The new builds' calls and slow calls per bucket (``counts``: ``failures`` are the slow
    calls, ``rate`` the baseline's share above the threshold), the ``null`` they face, the
    residual threshold (``thr``, (L,)) and the histogram rows they came from, from which
    :meth:`sparse` reads a build's rows for the practical minimum and the p95s an alert
    shows."""

    counts: Rollout
    null: CountNull
    thr: np.ndarray
    h: _Kept | None

    def __len__(self) -> int:
        return len(self.counts)

    def sparse(self, li: int, fleet_of: np.ndarray) -> tuple[Sparse, Sparse]:
        """Build ``li``'s histogram rows, and its operation's other versions' since its first
        call (``fleet_of``: the partitions' fleet rows)."""
        h, r = self.h, int(self.counts.rows[li])
        if h is None:
            raise ValueError("no histogram rows behind an empty tail history")
        mine = h.pid == r
        others = (h.fleet == fleet_of[r]) & ~mine & (h.t >= self.counts.first[li])
        return h.sparse(mine), h.sparse(others)


class TailApplied(NamedTuple):
    """Where :func:`apply_tail` put the tail test into the duration evidence, ``(L, K)``:
    ``used`` (bool), ``alpha`` (that one test's, NaN where not used) and ``expected_share``,
    the share of the build's calls its other versions' made the test expect above the
    threshold (the build's own is ``k / n`` of the evidence) and ``typical``, how much its
    median moved against its siblings' (NaN where not used)."""

    used: np.ndarray
    alpha: np.ndarray
    expected_share: np.ndarray
    typical: np.ndarray  # the build's typical (median) duration over its siblings', relative
    hold: Hold  # where it may keep an open alert open (hold.py; used grows where it does)


def _empty(times: pd.DatetimeIndex) -> TailRollout:
    T = len(times)
    z = np.zeros((0, T))
    roll = Rollout(np.zeros(0, np.int64), times, np.zeros(0, np.int64), z, z, z, z, z)
    col = np.zeros((0, 1))
    return TailRollout(roll, CountNull(col, col, col, 0.0, 0, 0), np.zeros(0), None)


#: Histogram rows read at a time: bounds the transient arrays of a run with many new builds.
_CHUNK = 1 << 22


def _hist_rows(
    hist: pd.DataFrame,
    parts: Partitions,
    base: Baselines,
    times: pd.DatetimeIndex,
    ops: set[str],
    maintenance: Sequence[tuple[datetime, datetime, str | None]],
) -> _Hist:
    """The histogram's rows of ``ops`` inside ``times`` (maintenance left out) -> :class:`_Hist`."""
    wanted = np.isin(parts.operations, sorted(ops))[parts.op_index]  # per partition
    chunks = [
        _chunk_rows(hist.iloc[a : a + _CHUNK], parts, wanted, times, maintenance)
        for a in range(0, len(hist), _CHUNK)
    ]
    # Columns, partitions and bins fit 32 bits: these rows live as long as the run's evidence.
    t, pid, bins, count = (_concat(chunks, i) for i in range(4))
    fleet = parts.fleet_of[pid].astype(np.int32)
    resid = _log_value(bins) - base.mu_log[fleet, slot_of(times)[t]]
    return _Hist(t, pid, fleet, bins, count, resid)


def _chunk_rows(
    h: pd.DataFrame,
    parts: Partitions,
    wanted: np.ndarray,
    times: pd.DatetimeIndex,
    maintenance: Sequence[tuple[datetime, datetime, str | None]],
) -> list[np.ndarray]:
    """Rows ``h`` of the histogram -> the column, partition, bin and count of those wanted."""
    pid = parts.index_of(h)
    bucket = times[1] - times[0] if len(times) > 1 else pd.Timedelta(minutes=5)
    ns = epoch_ns(h["bucket_start"])
    t = (ns - int(times[0].value)) // int(bucket.value)
    ok = (t >= 0) & (t < len(times)) & (pid >= 0) & wanted[pid]  # pid -1: masked either way
    for s, e, op in maintenance:
        inside = (ns >= pd.Timestamp(s).value) & (ns < pd.Timestamp(e).value)
        ok &= ~(inside & (parts.op_index[pid] == _op_code(parts, op) if op else True))
    sel = np.flatnonzero(ok)
    return [
        t[sel].astype(np.int32),
        pid[sel].astype(np.int32),
        h["bin"].to_numpy()[sel].astype(np.int32),
        h["count"].to_numpy()[sel].astype(np.float64),
    ]


def _concat(chunks: list[list[np.ndarray]], i: int) -> np.ndarray:
    """Field ``i`` of every chunk, joined; the chunks' copies are let go as it goes."""
    out = np.concatenate([c[i] for c in chunks]) if chunks else np.zeros(0)
    for c in chunks:
        c[i] = out[:0]
    return out


def _op_code(parts: Partitions, op: str) -> int:
    """Index of operation ``op`` in ``parts.operations`` (-1: not there)."""
    i = int(np.searchsorted(parts.operations, op))
    return i if i < len(parts.operations) and parts.operations[i] == op else -1


def _log_value(bins: np.ndarray) -> np.ndarray:
    """``log(bin_value(bins))``, read off a table of the bins' range (few distinct values)."""
    if not len(bins):
        return np.zeros(0)
    lo = int(bins.min())
    table = np.log(np.asarray(bin_value(np.arange(lo, int(bins.max()) + 1)), np.float64))
    out: np.ndarray = table[bins - lo]
    return out


class _Null(NamedTuple):
    """An operation's tail null, from its baseline: the residual threshold (its p95), the
    share above it, the slow counts' dispersion between buckets and the share's variance
    between hours."""

    thr: float
    q: float
    phi: float
    tau2: float


def _fleet_null(h: _Hist, sel: np.ndarray, per_hour: int) -> _Null | None:
    """Baseline rows ``sel`` (indices) of one operation -> its :class:`_Null` (None: too few
    calls)."""
    r, w, t = h.resid[sel], h.count[sel], h.t[sel]
    finite = np.isfinite(r)
    r, w, t = r[finite], w[finite], t[finite]
    if w.sum() < TAIL_MIN_CALLS:
        return None
    thr = _quantile(r, w, TAIL_LEVEL)
    slow = w * (r > thr)
    q = float(slow.sum() / w.sum())
    if not 0 < q < 1:
        return None
    _, inv = np.unique(t, return_inverse=True)
    n_b, a_b = np.bincount(inv, weights=w), np.bincount(inv, weights=slow)
    # Slow calls come together (legs of one slow call): the Pearson dispersion between buckets.
    phi = float(max(np.mean((a_b - q * n_b) ** 2 / (q * (1 - q) * n_b)), 1.0))
    hours, hinv = np.unique(t // per_hour, return_inverse=True)
    n_h, a_h = np.bincount(hinv, weights=w), np.bincount(hinv, weights=slow)
    # Between hours, beyond sampling (method of moments, call-weighted).
    between = (
        np.average((a_h / n_h - q) ** 2, weights=n_h) - phi * q * (1 - q) * len(hours) / n_h.sum()
    )
    return _Null(thr, q, phi, float(max(between, 0.0)))


def tail_history(
    hist: pd.DataFrame | None,
    parts: Partitions,
    base: Baselines,
    policy: DetectionPolicy,
    *,
    times: pd.DatetimeIndex,
    n_base: int,
    first: np.ndarray,
    maintenance: Sequence[tuple[datetime, datetime, str | None]] = (),
) -> TailRollout:
    """The versions rolled out in ``times`` (the baseline window's buckets, ``n_base`` of them,
    then the judged window's) and their calls and slow calls per bucket.

    ``first``: (P,) each partition's first bucket with rows, counted from ``times[0]`` (see
    :func:`~detector.detect.rollout.first_buckets`). Rolled out: first seen at least
    ``policy.min_history`` after their operation. Unlike the failure test, a build is followed
    after its baseline is its own: nothing else judges its tail. An operation's threshold and
    null come from its baseline window, the new builds' own calls left out.
    """
    T = len(times)
    none = _empty(times)
    if not policy.tail or not T or hist is None or hist.empty or not len(parts):
        return none
    rows = np.flatnonzero(rolled_out(first, parts, policy) & (first < T))
    if not len(rows):
        return none
    h = _hist_rows(hist, parts, base, times, set(parts.operation[rows].tolist()), maintenance)
    nulls = _nulls(h, parts, rows, n_base, policy.buckets_per_hour)
    rows = np.array(
        [r for r in rows.tolist() if nulls[int(parts.fleet_of[r])] is not None], np.int64
    )
    if not len(rows):
        return none
    tr = _counts(h, parts, rows, nulls, times, first, 3 * policy.buckets_per_hour)
    h.resid = np.zeros(0)  # spent: what is kept recomputes its own (the run's peak memory)
    tr.h = _keep(h, parts.fleet_of[rows], first[rows], base.mu_log, slot_of(times))
    return tr


def _nulls(
    h: _Hist, parts: Partitions, rows: np.ndarray, n_base: int, per_hour: int
) -> dict[int, _Null | None]:
    """The null of each operation of the new builds ``rows``, from its baseline rows in ``h``
    (the first ``n_base`` columns), the new builds' own left out; keyed by fleet row."""
    new = np.zeros(len(parts), bool)
    new[rows] = True
    # The baseline rows of every operation involved, grouped by operation (one sort).
    idx = np.flatnonzero((h.t < n_base) & ~new[h.pid])
    idx = idx[np.argsort(h.fleet[idx], kind="stable")]
    grouped = h.fleet[idx]
    # Needles of the haystack's dtype: a Python int would copy ``grouped`` on every search.
    fleets = np.unique(parts.fleet_of[rows]).astype(grouped.dtype)
    bounds = zip(
        np.searchsorted(grouped, fleets, "left"),
        np.searchsorted(grouped, fleets, "right"),
        strict=True,
    )
    return {
        int(f): _fleet_null(h, idx[lo:hi], per_hour)
        for f, (lo, hi) in zip(fleets, bounds, strict=True)
    }


def _keep(
    h: _Hist, fleets: np.ndarray, first: np.ndarray, mu_log: np.ndarray, slots: np.ndarray
) -> _Kept:
    """The rows of ``h`` at or after the first call of a build of their operation (the
    builds' ``fleets`` and ``first`` columns): all that :meth:`TailRollout.sparse` reads."""
    since = np.full(len(mu_log), np.iinfo(np.int32).max, np.int32)
    np.minimum.at(since, fleets, first.astype(np.int32))
    m = np.flatnonzero(h.t >= since[h.fleet])
    count = h.count[m].astype(np.float32)
    return _Kept(h.t[m], h.pid[m], h.fleet[m], h.bins[m], count, mu_log, slots)


def _counts(
    h: _Hist,
    parts: Partitions,
    rows: np.ndarray,
    nulls: dict[int, _Null | None],
    times: pd.DatetimeIndex,
    first: np.ndarray,
    latest: int,
) -> TailRollout:
    """The dense per-bucket counts of the versions ``rows`` and their operations; ``latest``:
    the buckets the current check reads at most."""
    T, L = len(times), len(rows)
    fo = parts.fleet_of[rows]
    thr, q, phi, tau2 = (
        np.array([getattr(nulls[int(f)], name) for f in fo]) for name in _Null._fields
    )
    shape = (L, T)
    P = len(parts)
    thr_of = np.full(P, np.inf)  # per fleet row
    thr_of[fo] = thr
    slow = h.resid > thr_of[h.fleet]  # NaN residuals are not slow

    def dense(local: np.ndarray, key: np.ndarray, n: int, where: np.ndarray) -> np.ndarray:
        out = np.zeros(n * T)
        for a in range(0, len(key), _CHUNK):  # whole numbers: the sums are exact in any order
            g, w = local[key[a : a + _CHUNK]], where[a : a + _CHUNK]
            sel = (g >= 0) & w
            flat = g[sel] * T + h.t[a : a + _CHUNK][sel]
            out += np.bincount(flat, weights=h.count[a : a + _CHUNK][sel], minlength=n * T)
        return out.reshape(n, T)

    local = np.full(P, -1, np.int64)
    local[rows] = np.arange(L)
    every = np.ones(len(h.t), bool)
    C, S = (dense(local, h.pid, L, w) for w in (every, slow))
    ops = np.unique(fo)
    local_op = np.full(P, -1, np.int64)
    local_op[ops] = np.arange(len(ops))
    FC, FS = (dense(local_op, h.fleet, len(ops), w) for w in (every, slow))
    since = np.arange(T)[None, :] >= first[rows][:, None]
    Co, So = FC[local_op[fo]] - C, FS[local_op[fo]] - S
    counts = Rollout(
        rows=rows,
        times=times,
        first=first[rows],
        calls=C,
        failures=S,
        other_calls=np.where(since, Co, 0.0),
        other_failures=np.where(since, So, 0.0),
        rate=np.broadcast_to(q[:, None], shape).copy(),
    )
    # Every span since the rollout is tested: no trailing span tests the tail. Current: its
    # last three hours (not twelve) carry their share, so an alert ends hours after a fix
    # rather than half a day, while at 100 calls an hour they still expect ~15 slow calls.
    null = CountNull(phi[:, None], phi[:, None], tau2[:, None], 0.0, 0, latest, CURRENT_Z)
    return TailRollout(counts, null, thr, None)


def _quantile(x: np.ndarray, w: np.ndarray, q: float) -> float:
    """The ``q`` quantile of values ``x`` weighted by ``w`` (NaN when empty)."""
    if not len(x) or not w.sum():
        return float("nan")
    order = np.argsort(x, kind="stable")
    cum = np.cumsum(w[order])
    return float(x[order][min(int(np.searchsorted(cum, q * cum[-1])), len(cum) - 1)])


#: The grid (log units) the running residuals are read on: finer than the histogram's bins.
_STEP = 0.01


def _grid_quantile(h: np.ndarray, q: float) -> int:
    """Index of the ``q`` quantile of the counts ``h`` on a grid (-1 when empty)."""
    cum = np.cumsum(h)
    if not len(cum) or cum[-1] <= 0:
        return -1
    return min(int(np.searchsorted(cum, q * cum[-1])), len(cum) - 1)


class _Running:
    """A sparse histogram read at increasing columns: its bins and its residuals on a grid
    (from ``r0`` in steps of :data:`_STEP`), summed up to the column asked for."""

    def __init__(self, s: Sparse, bins: np.ndarray, r0: float, size: int) -> None:
        order = np.argsort(s.t, kind="stable")
        resid = s.resid[order]
        finite = np.isfinite(resid)
        self.t = s.t[order]
        self.b = np.searchsorted(bins, s.bins[order])
        self.r = np.clip(np.floor((np.where(finite, resid, r0) - r0) / _STEP), 0, size - 1)
        self.r = self.r.astype(np.int64)
        self.w = s.calls[order]
        self.wr = np.where(finite, self.w, 0.0)
        self.hb = np.zeros(len(bins))
        self.hr = np.zeros(size)
        self.i = 0

    def upto(self, col: int) -> _Running:
        """Add the rows up to and including column ``col`` (never fewer than before)."""
        j = int(np.searchsorted(self.t, self.t.dtype.type(col), side="right"))
        if j > self.i:
            sl = slice(self.i, j)
            self.hb += np.bincount(self.b[sl], weights=self.w[sl], minlength=len(self.hb))
            self.hr += np.bincount(self.r[sl], weights=self.wr[sl], minlength=len(self.hr))
            self.i = j
        return self


class _Measured(NamedTuple):
    """What the histograms say at one tested cell: the p95s (ms) of the build and of its other
    versions since its rollout, the build's typical shift (median residual over theirs) and
    the share of its calls above the threshold raised by that shift and the practical minimum."""

    p95: float
    p95_others: float
    shift: float
    tail_share: float


class _Measure:
    """Reads :class:`_Measured` of one build at increasing columns."""

    def __init__(self, own: Sparse, others: Sparse, thr: float, rise: float) -> None:
        self.bins = np.unique(np.concatenate([own.bins, others.bins]))
        resid = np.concatenate([own.resid, others.resid])
        resid = resid[np.isfinite(resid)]
        self.r0 = float(resid.min()) if len(resid) else 0.0
        size = int((float(resid.max()) - self.r0) / _STEP) + 1 if len(resid) else 1
        self.own = _Running(own, self.bins, self.r0, size)
        self.others = _Running(others, self.bins, self.r0, size)
        self.thr, self.rise = thr, rise

    def _p95(self, h: np.ndarray) -> float:
        i = _grid_quantile(h, TAIL_LEVEL)
        return float(bin_value(int(self.bins[i]))) if i >= 0 else float("nan")

    def at(self, col: int) -> _Measured:
        """The build and its siblings from their first rows up to column ``col``."""
        own, others = self.own.upto(col), self.others.upto(col)
        mo, mr = _grid_quantile(own.hr, 0.5), _grid_quantile(others.hr, 0.5)
        shift = (mo - mr) * _STEP if mo >= 0 and mr >= 0 else float("nan")
        lift = self.thr + self.rise + max(shift, 0.0) if np.isfinite(shift) else np.inf
        k = int(np.ceil((lift - self.r0) / _STEP)) if np.isfinite(lift) else len(own.hr)
        above = float(own.hr[max(k, 0) :].sum())
        share = above / max(float(own.hb.sum()), 1.0)
        return _Measured(self._p95(own.hb), self._p95(others.hb), shift, share)


def apply_tail(
    ev: SpanEvidence,
    tr: TailRollout,
    policy: DetectionPolicy,
    *,
    fleet_of: np.ndarray,
    times: pd.DatetimeIndex,
    alpha: float,
    on_scale: float,
) -> TailApplied:
    """Put the since-rollout tail test into ``ev``'s duration evidence (``times``), in place.

    Returns where it replaced the trailing spans' evidence (:class:`TailApplied`; looks and
    scale as :func:`~detector.detect.rollout.apply_rollout`'s). Used
    where it passes its checks, is stronger than the duration evidence there (or that one
    failed its leave-one-out) and the build's p95 since its rollout is above its other
    versions' by the practical minimum. The evidence then reads: ``observed``/``expected``
    those two p95s (ms), ``effect`` their relative difference, ``n``/``k`` the calls and slow
    calls since the rollout.
    """
    roll = tr.counts
    L, K = len(roll), len(times)
    used, d = np.zeros((L, K), bool), Metric.DURATION
    if not L or not K:
        nan = np.full((L, K), np.nan)
        return TailApplied(used, nan, nan, nan, no_hold(roll.rows, d, used))
    sc = scaled_test(roll, tr.null, policy, times=times, alpha=alpha, on_scale=on_scale)
    t = sc.t
    cand = t["passes"] & ((sc.p < ev.p[roll.rows, d]) | ~ev.loo_ok[roll.rows, d])
    may = may_hold(t, policy.alpha)
    held = np.zeros((L, K), bool)
    rise = float(np.log1p(policy.min_duration_rel))
    obs, exp, shift = (np.full((L, K), np.nan) for _ in range(3))
    measures: dict[int, _Measure] = {}
    # row-major: columns increase per build
    for li, c in zip(*np.nonzero(cand | may), strict=True):
        if li not in measures:
            measures[li] = _Measure(*tr.sparse(int(li), fleet_of), tr.thr[li], rise)
        m = measures[li].at(int(sc.col[c]))
        # The practical minimum: the p95 rose by min_duration_rel and min_duration_ms, and
        # beyond the build's typical shift at least the baseline's share of its calls lie
        # above the threshold raised by min_duration_rel (hour-adjusted). A build slower
        # across the board (another platform's, +15 % typical) is the mean test's business.
        practical = (
            m.p95 / m.p95_others - 1.0 >= policy.min_duration_rel
            and m.p95 - m.p95_others >= policy.min_duration_ms
        )
        if practical and m.tail_share >= roll.rate[li, 0]:
            used[li, c], held[li, c] = cand[li, c], may[li, c]
            obs[li, c], exp[li, c], shift[li, c] = m.p95, m.p95_others, m.shift
    shown = Shown(obs / exp - 1.0, obs - exp, obs, exp)
    put_evidence(ev, d, roll.rows, used, sc, shown, policy.shared_z)
    hold = held_evidence(ev, d, roll.rows, used, held, (sc, shown), policy.shared_z)
    some = used | held
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.where(some, t["expected"] / t["n"], np.nan)
    alpha_used = np.where(some, sc.own_alpha, np.nan)
    return TailApplied(used, alpha_used, expected, np.expm1(shift), hold)


def tail_used(tail: TailRollout, applied: TailApplied, row: int, col: int) -> int | None:
    """Index in ``tail`` of partition ``row`` where its duration evidence at column ``col`` is
    the tail test's (:func:`apply_tail`), else None."""
    hit = np.flatnonzero(tail.counts.rows == row)
    return int(hit[0]) if len(hit) and applied.used[hit[0], col] else None
