"""Baselines: what "normal" looks like for every partition, learnt from the trailing window.

Consumes bucket aggregates (:class:`~detector.schema.BucketAggregates` ``stats``) of the
baseline window, the maintenance windows and the buckets that already alerted; produces a
:class:`Baselines` table: per partition (``operation_name``, ``sdk_version``; ``sdk_version ==
"*"`` is the operation's fleet, all versions summed) and per hour-of-week slot, the expected
calls per bucket, failure rate, mean and variance of ``ln(DurationMs)``, plus overdispersion
factors and the sample sizes behind them. Pure: no I/O, no clock.

How it is built (design §1.4):

* **Robust sums, not averages of averages.** Every statistic comes from summed counts and
  log-duration moments, so late data merges exactly; buckets inside maintenance windows and
  buckets that alerted are left out of every sum (and of the bucket counts, so volume is not
  biased down). Overdispersion factors use the *median* squared Pearson residual, so a missed
  incident in the history barely moves them.
* **Profile by history.** A partition with at least ``weekly_min_days`` of history gets an
  hour-of-week profile, with ``seasonal_min_days`` an hour-of-day profile, otherwise a flat
  baseline; ``kind`` says which. Each slot is shrunk towards the partition's flat value with a
  prior of ``slot_prior_calls`` calls, so a thin hour does not make a noisy baseline. Failure
  rates lean harder: their prior is empirical Bayes (as many calls as the hours' measured
  spread beyond sampling noise warrants, at least ``slot_prior_calls``), because a rare
  failure's hour slot is mostly noise (see ``_slot_prior_fail``).
* **Cold start.** A version's flat statistics are shrunk towards its operation's fleet values
  with the empirical-Bayes weight ``w = n / (n + cold_start_k)`` (``n`` = the version's
  baseline calls). ``w < provisional_weight`` marks the baseline provisional; ``w`` is kept
  so every alert can say how much of its baseline was borrowed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from detector.detect.policy import DetectionPolicy
from detector.schema import fill_failed_calls

__all__ = [
    "FLEET",
    "SLOTS",
    "Baselines",
    "Partitions",
    "column_codes",
    "compute_baselines",
    "exclusion_mask",
    "rolled_out",
    "slot_of",
    "with_fleet",
]

#: ``sdk_version`` of an operation's fleet partition (all versions summed).
FLEET = "*"
#: Hour-of-week slots (Monday 00:00 UTC = slot 0).
SLOTS = 168
_SUM_COLS = (
    "calls",
    "failures",
    "failed_calls",
    "failed_calls_op",
    "failure_cluster",
    "failure_cluster_op",
    "expected_errors",
    "dur_n",
    "log_dur_sum",
    "log_dur_sumsq",
)
#: Columns that only build the fleet rows (a call's weight across versions); left out of
#: :func:`with_fleet`'s rows, which millions of rows make worth ~8 bytes a row each.
_OP_ONLY = frozenset({"failed_calls_op", "failure_cluster_op"})
#: Pseudo-failures behind a partition's failing-calls-per-failure ratio: thin history leans on
#: the operation's fleet ratio.
_CALL_RATIO_PRIOR = 5.0
#: Median of a chi-square with one degree of freedom: median(r^2) / this ~ dispersion factor.
_CHI2_MEDIAN = 0.454936


def slot_of(ts: pd.Series | pd.DatetimeIndex | np.ndarray) -> np.ndarray:
    """Hour-of-week slot of UTC timestamps (Monday 00:00 = 0)."""
    idx = pd.DatetimeIndex(ts)
    out: np.ndarray = (idx.day_of_week.to_numpy() * 24 + idx.hour.to_numpy()).astype(np.int16)
    return out


def epoch_ns(values: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """UTC timestamps as int64 nanoseconds since the epoch (naive input is taken as UTC)."""
    return _naive_ns(values).view(np.int64)


def _hour_of_week(ns: np.ndarray) -> np.ndarray:
    """:func:`slot_of` from epoch nanoseconds by arithmetic (the epoch was a Thursday, 72 h
    after a Monday 00:00): no calendar fields built for millions of rows."""
    return ((ns // 3_600_000_000_000 + 72) % SLOTS).astype(np.int16)


def with_fleet(stats: pd.DataFrame) -> pd.DataFrame:
    """Add one fleet row per (operation, bucket): the sum over its versions, ``sdk_version="*"``.

    Consumes stats rows (:data:`~detector.schema.AGG_COLUMNS`); produces the same rows followed
    by the fleet rows (without the ``_op`` columns, spent on the fleet's failing calls and
    clusters), with ``operation_name`` and ``sdk_version`` as categoricals: every later
    stage maps rows to partitions through the category codes (:meth:`Partitions.index_of`), so
    millions of rows are never hashed as strings again.
    """
    if "failures" in stats.columns:
        stats = fill_failed_calls(stats)
    cols = [c for c in _SUM_COLS if c in stats.columns]
    op_codes, op_names = _factorize_str(stats["operation_name"])
    ver_codes, ver_names = _factorize_str(stats["sdk_version"])
    # A raw version literally named "*" is the fleet partition, as string grouping made it.
    hit = np.flatnonzero(ver_names == FLEET)
    if len(hit):
        fleet_code = int(hit[0])
    else:
        fleet_code = len(ver_names)
        ver_names = np.append(ver_names, np.array([FLEET], dtype=object))
    b_codes, b_uniq = pd.factorize(stats["bucket_start"])
    nb = max(len(b_uniq), 1)
    # One integer key per (operation, bucket), groups in first-appearance order (as the string
    # grouping this replaces had them); sums by bincount, with no frame built for them.
    group, fkey = pd.factorize(op_codes * nb + b_codes)
    fkey = np.asarray(fkey, dtype=np.int64)
    f_op, f_b = fkey // nb, fkey % nb
    fleet: dict[str, np.ndarray] = {}
    for c in cols:
        values = stats[c].to_numpy()
        total = np.bincount(group, weights=values.astype(np.float64), minlength=len(fkey))
        # Integer counts stay integers (exact: bincount adds them in float64 below 2**53).
        fleet[c] = np.rint(total).astype(values.dtype) if values.dtype.kind in "iu" else total
    if "failed_calls_op" in fleet:
        # A call failing in several versions is one failing call of the fleet, not one each.
        fleet["failed_calls"] = np.rint(fleet["failed_calls_op"]).astype(np.int64)
    if "failure_cluster_op" in fleet:
        # ... and its failures one cluster of the fleet's.
        fleet["failure_cluster"] = fleet["failure_cluster_op"]
    times = stats["bucket_start"]
    data: dict[str, Any] = {
        "operation_name": pd.Categorical.from_codes(
            np.concatenate([op_codes, f_op]), categories=pd.Index(op_names, dtype=object)
        ),
        "sdk_version": pd.Categorical.from_codes(
            np.concatenate([ver_codes, np.full(len(fkey), fleet_code)]),
            categories=pd.Index(ver_names, dtype=object),
        ),
        "bucket_start": pd.concat(
            [times.reset_index(drop=True), pd.Series(b_uniq[f_b], dtype=times.dtype)],
            ignore_index=True,
        ),
    }
    for c in cols:
        if c in _OP_ONLY:
            continue  # served to build the fleet rows; nothing later reads them
        data[c] = np.concatenate([stats[c].to_numpy(), fleet[c]])
    # copy=False: the columns are fresh arrays; consolidating them would copy ~50 MB per 1M rows.
    out = pd.DataFrame(data, copy=False)
    return out


def _factorize_str(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(codes, unique names as ``str`` objects) of a string column; NA reads "<NA>" as str() does."""
    codes, uniques = pd.factorize(values, use_na_sentinel=False)
    names = np.asarray([str(u) if not pd.isna(u) else "<NA>" for u in uniques], dtype=object)
    if len(set(names)) < len(names):  # two values that print alike ("<NA>" and NA): merge them
        names, remap = np.unique(names, return_inverse=True)
        codes = remap[codes]
    return np.asarray(codes, dtype=np.int64), names


@dataclass
class Partitions:
    """The partitions of one run, in a fixed order: sorted by operation, fleet first."""

    operation: np.ndarray  # (P,) str
    version: np.ndarray  # (P,) str, FLEET for the operation level
    op_index: np.ndarray  # (P,) int: index into ``operations``
    operations: np.ndarray  # (n_ops,) str
    fleet_of: np.ndarray  # (P,) int: row of the partition's fleet partition

    @property
    def is_fleet(self) -> np.ndarray:
        out: np.ndarray = self.version == FLEET
        return out

    def take(self, sl: slice) -> Partitions:
        """A contiguous block of whole operations (indices re-based)."""
        op_index = self.op_index[sl]
        first = int(op_index[0]) if len(op_index) else 0
        last = int(op_index[-1]) + 1 if len(op_index) else 0
        start = sl.start or 0
        return Partitions(
            self.operation[sl],
            self.version[sl],
            op_index - first,
            self.operations[first:last],
            self.fleet_of[sl] - start,
        )

    def __len__(self) -> int:
        return len(self.operation)

    @classmethod
    def from_frame(cls, stats: pd.DataFrame) -> Partitions:
        """All (operation, version) pairs of ``stats`` (which must already contain fleet rows)."""
        if _is_cat(stats):
            oc = stats["operation_name"].cat.codes.to_numpy().astype(np.int64)
            vc = stats["sdk_version"].cat.codes.to_numpy().astype(np.int64)
            nv = max(len(stats["sdk_version"].cat.categories), 1)
            pairs = pd.unique(oc * nv + vc)  # (hashing: faster than a sort of every row)
            op_names = np.asarray(stats["operation_name"].cat.categories, dtype=object)
            ver_names = np.asarray(stats["sdk_version"].cat.categories, dtype=object)
            op_all, ver_all = op_names[pairs // nv], ver_names[pairs % nv]
        else:
            keys = stats[["operation_name", "sdk_version"]].drop_duplicates()
            op_all = keys["operation_name"].astype(str).to_numpy(dtype=object)
            ver_all = keys["sdk_version"].astype(str).to_numpy(dtype=object)
        # Sorted by operation then version: fleet first inside each operation ("*" sorts before
        # digits and letters); the order fixes the blocks the engine works in.
        order = sorted(range(len(op_all)), key=lambda i: (op_all[i], ver_all[i]))
        op = np.asarray(op_all[order], dtype=object)
        ver = np.asarray(ver_all[order], dtype=object)
        ops, op_index = np.unique(op, return_inverse=True)
        fleet_row = {o: i for i, (o, v) in enumerate(zip(op, ver, strict=True)) if v == FLEET}
        fleet_of = np.array([fleet_row.get(o, i) for i, o in enumerate(op)], dtype=np.int64)
        return cls(op, ver, op_index.astype(np.int64), ops, fleet_of)

    def index_of(self, stats: pd.DataFrame) -> np.ndarray:
        """Row index of each stats row's partition (-1 for a row of no partition here)."""
        # Through integer codes (a category's, else one factorize per column) and a (names x
        # names) lookup table: no hashing of (operation, version) pairs row by row.
        oc, ops = column_codes(stats["operation_name"])
        vc, vers = column_codes(stats["sdk_version"])
        lut = np.full((len(ops) + 1, len(vers) + 1), -1, dtype=np.int64)
        oi = pd.Index(ops).get_indexer(self.operation)
        vi = pd.Index(vers).get_indexer(self.version)
        ok = (oi >= 0) & (vi >= 0)
        lut[oi[ok], vi[ok]] = np.flatnonzero(ok)
        # Code -1 (a missing value) lands on the table's extra row/column: no partition.
        out: np.ndarray = lut[oc, vc]
        return out


def column_codes(col: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """A column's integer codes (-1: missing) and the names they stand for (a category's
    own, else one factorize)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        return col.cat.codes.to_numpy(), pd.Index(col.cat.categories)
    codes, names = pd.factorize(col)
    return codes, pd.Index(names)


def _is_cat(stats: pd.DataFrame) -> bool:
    return isinstance(stats["operation_name"].dtype, pd.CategoricalDtype) and isinstance(
        stats["sdk_version"].dtype, pd.CategoricalDtype
    )


@dataclass
class Baselines:
    """Per-partition baselines (arrays of length P, or shape (P, 168) per hour-of-week slot)."""

    exp_calls: np.ndarray  # (P, 168) expected calls per bucket
    fail_rate: np.ndarray  # (P, 168) expected failure rate
    mu_log: np.ndarray  # (P, 168) mean ln(duration)
    var_log: np.ndarray  # (P, 168) variance of ln(duration) of one operation
    phi_dur: np.ndarray  # (P,) overdispersion of bucket mean log-duration (>= 1)
    phi_fail: np.ndarray  # (P,) overdispersion of failures (>= 1)
    phi_vol: np.ndarray  # (P,) overdispersion of calls per bucket (>= 1)
    calls: np.ndarray  # (P,) baseline calls (own, before borrowing)
    buckets: np.ndarray  # (P,) baseline buckets counted (after exclusions)
    excluded: np.ndarray  # (P,) buckets left out (maintenance, alerted)
    history_days: np.ndarray  # (P,) days since the partition was first seen in the window
    kind: np.ndarray  # (P,) "weekly" | "seasonal" | "flat" | "borrowed"
    weight: np.ndarray  # (P,) own weight n/(n+k) (1 for fleet partitions)
    provisional: np.ndarray  # (P,) bool
    has_history: np.ndarray  # (P,) bool: any usable baseline (own or borrowed)
    #: (P,) variance of the true failure rate / mean log-duration between hours, beyond
    #: sampling noise (see :func:`_between_hours`): a span's expected level is itself uncertain
    #: by this much, however many calls it holds.
    tau2_fail: np.ndarray
    tau2_dur: np.ndarray
    k_fail: np.ndarray | None = None  # (P,) empirical-Bayes prior strength, failure rate
    k_dur: np.ndarray | None = None  # (P,) empirical-Bayes prior strength, log-duration
    #: (P,) effective calls behind the baseline's level: the level is an estimate too, and the
    #: tests add its variance (var / n_eff) to the sampling variance.
    n_eff_fail: np.ndarray | None = None
    n_eff_dur: np.ndarray | None = None
    #: (P,) failing calls per failure in the baseline (1: every failure its own call). Several
    #: legs of one bad call fail together, so failures cluster by call; the call-level failure
    #: test expects ``fail_rate * call_ratio`` failing calls per operation.
    call_ratio: np.ndarray | None = None
    #: (P,) overdispersion of failing calls per bucket (>= 1)
    phi_fcall: np.ndarray | None = None
    #: (P,) failure-weighted mean failures per failing call, E[S^2] / E[S] (>= 1): how much
    #: failures' coming in calls inflates the variance of a count spanning whole calls.
    cluster: np.ndarray | None = None
    #: (P,) first bucket of the baseline window (index from its start) holding the
    #: partition's rows, or the window's length if none (see detector.detect.rollout).
    first_bucket: np.ndarray | None = None
    #: (P,) >= 1: how much a short history widened the bands (min_history / its hours; 1 with
    #: enough history). Above 1 the tests also need stronger evidence (short_history_alpha).
    stretch: np.ndarray | None = None

    def fail_dispersion(self) -> np.ndarray:
        """(P,) variance factor of a failure count spanning whole calls, as the tests use it:
        the bucket-level dispersion, or the failures' clustering in calls where larger. Not
        for a provisional version: its clusters would be mostly its siblings' (borrowed), and
        a new build's own failures must not hide behind their bad calls."""
        cluster = self.cluster if self.cluster is not None else np.ones_like(self.phi_fail)
        return np.where(self.provisional, self.phi_fail, np.maximum(self.phi_fail, cluster))

    def take(self, sl: slice) -> Baselines:
        """The partitions ``sl``."""
        kwargs: dict[str, Any] = {
            name: (None if getattr(self, name) is None else getattr(self, name)[sl])
            for name in self.__dataclass_fields__
        }
        return Baselines(**kwargs)

    def to_frame(self, parts: Partitions) -> pd.DataFrame:
        """One row per partition (flat summaries), for persistence and reports."""
        return pd.DataFrame(
            {
                "operation_name": parts.operation.astype(str),
                "sdk_version": parts.version.astype(str),
                "kind": self.kind.astype(str),
                "weight": self.weight,
                "provisional": self.provisional,
                "calls": self.calls,
                "buckets": self.buckets,
                "excluded": self.excluded,
                "history_days": self.history_days,
                "exp_calls_mean": self.exp_calls.mean(axis=1),
                "fail_rate_mean": self.fail_rate.mean(axis=1),
                "mu_log_mean": self.mu_log.mean(axis=1),
                "var_log_mean": self.var_log.mean(axis=1),
                "phi_dur": self.phi_dur,
                "phi_fail": self.phi_fail,
                "phi_vol": self.phi_vol,
                # standard deviations of the level's hour-to-hour wander (rate; log-duration)
                "fail_rate_wander": np.sqrt(self.tau2_fail),
                "log_dur_wander": np.sqrt(self.tau2_dur),
                # failure-weighted mean failures per failing call (1: failures independent)
                "failure_cluster": (
                    self.cluster if self.cluster is not None else np.ones(len(self.calls))
                ),
            }
        )


def exclusion_mask(
    rows: pd.DataFrame,
    maintenance: Sequence[tuple[datetime, datetime, str | None]] = (),
    alerted: Iterable[tuple[str, str, datetime, datetime]] = (),
) -> np.ndarray:
    """True for stats rows to keep out of baselines.

    ``maintenance``: ``(start, end, operation or None)``, half-open, None = every operation.
    ``alerted``: ``(operation, sdk_version, start, end)`` spans that alerted; a fleet span
    (``sdk_version == "*"``) excludes every version of the operation too, since the fleet
    deviated because they did.
    """
    ts = _naive_ns(rows["bucket_start"])
    op = rows["operation_name"].to_numpy(dtype=object)
    mask = np.zeros(len(rows), dtype=bool)
    for start, end, op_name in maintenance:
        m = (ts >= _np_ts(start)) & (ts < _np_ts(end))
        if op_name:
            m &= op == op_name
        mask |= m
    spans: dict[tuple[str, str], list[tuple[np.datetime64, np.datetime64]]] = {}
    for op_name, version, start, end in alerted:
        spans.setdefault((op_name, version), []).append((_np_ts(start), _np_ts(end)))
    if not spans or not len(rows):
        return mask
    # One searchsorted per partition with spans (not one full pass per span): a run can carry
    # thousands of spans over millions of rows.
    by_part = rows.groupby(["operation_name", "sdk_version"], observed=True, sort=False).indices
    by_op = rows.groupby("operation_name", observed=True, sort=False).indices
    for (op_name, version), items in spans.items():
        pos = by_op.get(op_name) if version == FLEET else by_part.get((op_name, version))
        if pos is None or not len(pos):
            continue
        merged: list[list[np.datetime64]] = []
        for s, e in sorted(items):
            if merged and s <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        starts = np.array([m[0] for m in merged], dtype="datetime64[ns]")
        ends = np.array([m[1] for m in merged], dtype="datetime64[ns]")
        t = ts[pos]
        i = np.searchsorted(starts, t, side="right") - 1
        hit = (i >= 0) & (t < ends[np.clip(i, 0, None)])
        mask[pos[hit]] = True
    return mask


def _np_ts(value: datetime | pd.Timestamp) -> np.datetime64:
    """A UTC instant as naive ``datetime64[ns]`` (naive input is taken as UTC)."""
    ts = pd.Timestamp(value)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    out: np.datetime64 = ts.tz_localize(None).to_datetime64().astype("datetime64[ns]")
    return out


def _naive_ns(values: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """UTC timestamps as naive ``datetime64[ns]`` (so comparisons never mix tz kinds)."""
    idx = pd.DatetimeIndex(values)
    if idx.tz is not None:
        idx = idx.tz_convert("UTC").tz_localize(None)
    return idx.to_numpy().astype("datetime64[ns]")


def _excluded_bucket_counts(
    parts: Partitions,
    start: pd.Timestamp,
    end: pd.Timestamp,
    bucket: pd.Timedelta,
    maintenance: Sequence[tuple[datetime, datetime, str | None]],
    alerted: Iterable[tuple[str, str, datetime, datetime]],
    first_idx: np.ndarray,
) -> np.ndarray:
    """(P, 168) number of excluded calendar buckets per slot (so bucket counts stay honest)."""
    P = len(parts)
    out = np.zeros((P, SLOTS), dtype=np.float64)
    n_cal = int((end - start) / bucket)
    if not n_cal:
        return out
    grid = pd.date_range(start, periods=n_cal, freq=bucket)
    slots = slot_of(grid)
    gts = _naive_ns(grid)
    spans: list[tuple[np.ndarray, datetime, datetime]] = []
    for s, e, op_name in maintenance:
        sel = np.ones(P, dtype=bool) if not op_name else parts.operation == op_name
        spans.append((sel, s, e))
    for op_name, version, s, e in alerted:
        sel = parts.operation == op_name
        if version != FLEET:
            sel &= parts.version == version
        spans.append((sel, s, e))
    if not spans:
        return out
    mask = np.zeros((P, n_cal), dtype=bool)
    for sel, s, e in spans:
        cols = (gts >= _np_ts(s)) & (gts < _np_ts(e))
        if cols.any() and sel.any():
            mask[np.ix_(sel, cols)] = True
    # A bucket before the partition was first seen was never counted, so it is not excluded.
    mask &= np.arange(n_cal)[None, :] >= first_idx[:, None]
    rows = np.flatnonzero(mask.any(axis=1))
    for r in rows:
        out[r] = np.bincount(slots[mask[r]], minlength=SLOTS)
    return out


def compute_baselines(
    stats: pd.DataFrame,
    parts: Partitions,
    *,
    start: datetime,
    end: datetime,
    policy: DetectionPolicy,
    maintenance: Sequence[tuple[datetime, datetime, str | None]] = (),
    alerted: Iterable[tuple[str, str, datetime, datetime]] = (),
) -> Baselines:
    """Learn the baselines of ``parts`` from the stats rows in ``[start, end)``.

    Parameters
    ----------
    stats
        Bucket stats *with fleet rows* (:func:`with_fleet`); rows outside ``[start, end)`` are
        ignored.
    parts
        The partitions to learn (rows of every returned array).
    start, end
        The baseline window (normally ``window_start - policy.baseline`` .. ``window_start``).
    policy
        Knobs: profile thresholds, shrinkage priors, cold-start ``k``.
    maintenance, alerted
        Spans kept out (see :func:`exclusion_mask`).

    Returns
    -------
    Baselines
    """
    alerted = list(alerted)
    win = _window_of(start, end, policy)
    P = len(parts)
    seen = _window_rows(stats, parts, win)
    first_idx = seen.first_idx
    # The rolled-out versions' rows are set aside before alerted buckets are left out.
    roll = _rollout_rows(stats, parts, policy, seen, maintenance)
    rows = _kept_rows(stats, seen, maintenance, alerted)
    del seen
    n_slot_buckets, excluded = _slot_buckets(parts, win, first_idx, maintenance, alerted)
    sums = _slot_sums(rows, P, n_slot_buckets)
    del n_slot_buckets
    history_days, kind = _profile_kind(first_idx, win, policy)
    flat = _flat_stats(sums)
    clusters = _failure_clustering(parts, sums, flat, rows, policy)
    own = _own_profiles(sums, kind, flat, clusters[1], policy)
    regressed, slower = _since_rollout(stats, roll, own, parts.fleet_of, P, policy)
    # (P, 168) arrays add up at 10k partitions: drop the sums once folded.
    del roll, sums
    lv = _cold_start(parts, flat, own, regressed, slower, policy)
    p_any = np.nanmax(np.where(np.isfinite(lv.fail_rate), lv.fail_rate, -1.0), axis=1) >= 0
    hours = flat.buckets[parts.fleet_of] * win.bucket_days * 24
    has_history, stretch = _history_stretch(p_any, hours, policy)
    hist = _History(first_idx, history_days, kind, excluded, has_history, stretch)
    phi = _row_dispersion(rows, own, lv, clusters[0], P, policy.max_dispersion)
    phi = _borrowed_dispersion(phi, parts, lv, stretch)
    tau2 = _wander(rows, win, own, lv, phi, clusters[1], parts, stretch)
    del own, rows
    return _finish(parts, policy, flat, lv, phi, hist, clusters, tau2)


@dataclass
class _Window:
    """The baseline window: UTC start and end, the bucket, and its calendar buckets."""

    start: pd.Timestamp
    end: pd.Timestamp
    bucket: pd.Timedelta
    n_cal: int

    @property
    def bucket_days(self) -> float:
        """One bucket in days."""
        out: float = self.bucket / pd.Timedelta(days=1)
        return out


def _window_of(start: datetime, end: datetime, policy: DetectionPolicy) -> _Window:
    """Consumes the window's bounds and the policy's bucket; produces the :class:`_Window`."""
    start_ts, end_ts = (
        pd.Timestamp(_np_ts(start)).tz_localize("UTC"),
        pd.Timestamp(_np_ts(end)).tz_localize("UTC"),
    )
    bucket = pd.Timedelta(policy.bucket)
    n_cal = max(int((end_ts - start_ts) / bucket), 0)
    return _Window(start_ts, end_ts, bucket, n_cal)


class _Seen(NamedTuple):
    """The window's stats rows of the partitions, before any exclusion."""

    ns: np.ndarray  # (N,) epoch nanoseconds of every stats row
    idx: np.ndarray  # positions in stats of the window's rows
    pid: np.ndarray  # their partitions
    t_idx: np.ndarray  # their buckets, from the window's start
    first_idx: np.ndarray  # (P,) first bucket each partition was seen (n_cal if never)


def _window_rows(stats: pd.DataFrame, parts: Partitions, win: _Window) -> _Seen:
    """Consumes the stats rows and partitions; produces the window's rows (:class:`_Seen`)."""
    # Rows of the window by position, columns read one at a time through them: a copy of the
    # selected rows (every column at once) was the largest temporary of a large run.
    ns = epoch_ns(stats["bucket_start"])
    t_all = (ns - win.start.value) // win.bucket.value
    pid_all = parts.index_of(stats)
    idx = np.flatnonzero((t_all >= 0) & (t_all < win.n_cal) & (pid_all >= 0))
    pid, t_idx = pid_all[idx], t_all[idx]
    del t_all, pid_all
    # First bucket each partition was seen in the window (a new version has fewer buckets).
    first_idx = np.full(len(parts), win.n_cal, dtype=np.int64)
    if len(pid):
        np.minimum.at(first_idx, pid, t_idx)
    return _Seen(ns, idx, pid, t_idx, first_idx)


class _RollRows(NamedTuple):
    """Rows of the versions rolled out within the window: positions, partitions, slots."""

    idx: np.ndarray
    pid: np.ndarray
    slot: np.ndarray


def _rollout_rows(
    stats: pd.DataFrame,
    parts: Partitions,
    policy: DetectionPolicy,
    seen: _Seen,
    maintenance: Sequence[tuple[datetime, datetime, str | None]],
) -> _RollRows:
    """Consumes the window's rows; produces those of its rolled-out versions, less maintenance.

    Rolled out: first seen at least min_history after their operation (a rare version present
    all along is not new, however much it fails). Their alerted and suspect buckets are kept:
    those are the very evidence that the build fails since it appeared (see
    _regressed_since_rollout).
    """
    idx, pid = seen.idx, seen.pid
    late = rolled_out(seen.first_idx, parts, policy)
    r_idx, r_pid = idx[late[pid]], pid[late[pid]]
    if len(maintenance) and len(r_idx):
        keys = stats[["operation_name", "sdk_version", "bucket_start"]].iloc[r_idx]
        keep = ~exclusion_mask(keys, maintenance, ())
        r_idx, r_pid = r_idx[keep], r_pid[keep]
    return _RollRows(r_idx, r_pid, _hour_of_week(seen.ns[r_idx]))


@dataclass
class _Rows:
    """The baseline rows kept (maintenance and alerted buckets left out), by position."""

    stats: pd.DataFrame
    idx: np.ndarray  # positions in stats
    pid: np.ndarray  # partitions
    t_idx: np.ndarray  # buckets from the window's start
    slot: np.ndarray  # hour-of-week slots

    def col(self, name: str) -> np.ndarray:
        """A stats column at the kept rows, as float64."""
        out: np.ndarray = self.stats[name].to_numpy()[self.idx].astype(np.float64, copy=False)
        return out

    @cached_property
    def calls(self) -> np.ndarray:
        """The rows' calls (read once: most steps use them)."""
        return self.col("calls")


def _kept_rows(
    stats: pd.DataFrame,
    seen: _Seen,
    maintenance: Sequence[tuple[datetime, datetime, str | None]],
    alerted: list[tuple[str, str, datetime, datetime]],
) -> _Rows:
    """Consumes the window's rows and the spans kept out; produces the baseline :class:`_Rows`."""
    idx, pid, t_idx = seen.idx, seen.pid, seen.t_idx
    if len(maintenance) or alerted:
        keys = stats[["operation_name", "sdk_version", "bucket_start"]].iloc[idx]
        excl = exclusion_mask(keys, maintenance, alerted)
        del keys
        if excl.any():
            idx, pid, t_idx = idx[~excl], pid[~excl], t_idx[~excl]
    return _Rows(stats, idx, pid, t_idx, _hour_of_week(seen.ns[idx]))


def _slot_buckets(
    parts: Partitions,
    win: _Window,
    first_idx: np.ndarray,
    maintenance: Sequence[tuple[datetime, datetime, str | None]],
    alerted: list[tuple[str, str, datetime, datetime]],
) -> tuple[np.ndarray, np.ndarray]:
    """Consumes the window and each partition's first bucket; produces (P, 168) calendar
    buckets per slot from that bucket on, less the excluded, and (P,) the excluded."""
    n_cal = win.n_cal
    grid_slots = (
        slot_of(pd.date_range(win.start, periods=n_cal, freq=win.bucket))
        if n_cal
        else np.zeros(0, np.int16)
    )
    rev = np.zeros((n_cal + 1, SLOTS), dtype=np.float64)
    if n_cal:
        onehot = np.zeros((n_cal, SLOTS), dtype=np.float64)
        onehot[np.arange(n_cal), grid_slots] = 1.0
        rev[:-1] = np.cumsum(onehot[::-1], axis=0)[::-1]
    n_slot_buckets = rev[np.minimum(first_idx, n_cal)]
    excluded = _excluded_bucket_counts(
        parts, win.start, win.end, win.bucket, maintenance, alerted, first_idx
    )
    return np.maximum(n_slot_buckets - excluded, 0.0), excluded.sum(axis=1)


@dataclass
class _SlotSums:
    """(P, 168) hour-of-week sums of the baseline rows, and the buckets counted per slot."""

    C: np.ndarray  # calls
    F: np.ndarray  # failures
    G: np.ndarray  # failing calls
    D: np.ndarray  # durations
    S1: np.ndarray  # sum of log-durations
    S2: np.ndarray  # sum of squared log-durations
    B: np.ndarray  # calendar buckets


def _slot_sums(rows: _Rows, P: int, buckets: np.ndarray) -> _SlotSums:
    """Consumes the baseline rows and the buckets per slot; produces the :class:`_SlotSums`."""
    flat = rows.pid.astype(np.int64) * SLOTS + rows.slot

    def acc(values: np.ndarray) -> np.ndarray:
        return np.bincount(flat, weights=values, minlength=P * SLOTS).reshape(P, SLOTS)

    return _SlotSums(
        C=acc(rows.calls),
        F=acc(rows.col("failures")),
        G=acc(rows.col("failed_calls")),
        D=acc(rows.col("dur_n")),
        S1=acc(rows.col("log_dur_sum")),
        S2=acc(rows.col("log_dur_sumsq")),
        B=buckets,
    )


def _profile_kind(
    first_idx: np.ndarray, win: _Window, policy: DetectionPolicy
) -> tuple[np.ndarray, np.ndarray]:
    """Consumes each partition's first bucket; produces (P,) its days of history and its
    profile kind ("weekly", "seasonal" or "flat")."""
    history_days = np.maximum(win.n_cal - first_idx, 0) * win.bucket_days
    kind = np.where(
        history_days >= policy.weekly_min_days,
        "weekly",
        np.where(history_days >= policy.seasonal_min_days, "seasonal", "flat"),
    ).astype(object)
    return history_days, kind


@dataclass
class _Flat:
    """Whole-window statistics per partition, (P,) each."""

    calls: np.ndarray
    failures: np.ndarray
    dur_n: np.ndarray
    buckets: np.ndarray
    rate: np.ndarray  # calls per bucket
    p: np.ndarray  # failure rate (NaN without calls)
    mu: np.ndarray  # mean log-duration (NaN without durations)
    var: np.ndarray  # variance of log-duration (>= 1e-4; NaN below two durations)


def _flat_stats(s: _SlotSums) -> _Flat:
    """Consumes the slot sums; produces each partition's :class:`_Flat` statistics."""
    Cf, Ff, Df, S1f, S2f, Bf = (a.sum(axis=1) for a in (s.C, s.F, s.D, s.S1, s.S2, s.B))
    with np.errstate(invalid="ignore", divide="ignore"):
        rate_f = np.where(Bf > 0, Cf / np.maximum(Bf, 1), 0.0)
        p_f = np.where(Cf > 0, Ff / np.maximum(Cf, 1), np.nan)
        mu_f = np.where(Df > 0, S1f / np.maximum(Df, 1), np.nan)
        var_f = np.where(Df > 1, S2f / np.maximum(Df, 1) - mu_f**2, np.nan)
    var_f = np.where(np.isfinite(var_f), np.maximum(var_f, 1e-4), var_f)
    return _Flat(Cf, Ff, Df, Bf, rate_f, p_f, mu_f, var_f)


def _failure_clustering(
    parts: Partitions, s: _SlotSums, flat: _Flat, rows: _Rows, policy: DetectionPolicy
) -> tuple[np.ndarray, np.ndarray]:
    """Consumes the sums and the rows' failure clusters; produces (P,) ``call_ratio`` (failing
    calls per failure) and ``cluster`` (failures per failing call), both shrunk."""
    P, fo, Ff = len(parts), parts.fleet_of, flat.failures
    # Failing calls per failure, per partition, shrunk towards the operation's fleet ratio.
    Gf = s.G.sum(axis=1)
    a_r = _CALL_RATIO_PRIOR
    ratio_fleet = (Gf + a_r) / (Ff + a_r)
    call_ratio = np.clip((Gf + a_r * ratio_fleet[fo]) / (Ff + a_r), 0.0, 1.0)
    # Failures come in calls (a bad call fails several operations): a failure count varies
    # E[S^2] / E[S] times as much as a binomial one, S the failures of one failing call over
    # its whole length. Thin partitions lean on their operation's versions (a fleet on 1).
    fleet = parts.is_fleet
    CLf = np.bincount(rows.pid, weights=rows.col("failure_cluster"), minlength=P)
    vers = ~fleet
    op_cl = np.bincount(fo[vers], weights=CLf[vers], minlength=P)
    op_f = np.bincount(fo[vers], weights=Ff[vers], minlength=P)
    cl_prior = np.where(fleet, 1.0, (op_cl[fo] + a_r) / (op_f[fo] + a_r))
    cluster = np.clip((CLf + a_r * cl_prior) / (Ff + a_r), 1.0, policy.max_dispersion)
    return call_ratio, cluster


def _fold(a: np.ndarray, kind: np.ndarray) -> np.ndarray:
    """Consumes (P, 168) hour-of-week sums; produces them folded to each partition's profile."""
    out = a.copy()
    hod = a.reshape(a.shape[0], 7, 24).sum(axis=1)
    seasonal = kind == "seasonal"
    out[seasonal] = np.tile(hod[seasonal], (1, 7))
    flat = kind == "flat"
    out[flat] = a[flat].sum(axis=1, keepdims=True)
    return out


class _Own(NamedTuple):
    """Each partition's own (P, 168) profile, every slot shrunk towards its flat value."""

    exp_calls: np.ndarray  # calls per bucket
    fail: np.ndarray  # failure rate
    mu: np.ndarray  # mean log-duration
    m2: np.ndarray  # mean squared log-duration


def _own_profiles(
    s: _SlotSums, kind: np.ndarray, flat: _Flat, cluster: np.ndarray, policy: DetectionPolicy
) -> _Own:
    """Consumes the slot sums, profile kinds and flat statistics; produces the :class:`_Own`."""
    p_f, mu_f, var_f = flat.p, flat.mu, flat.var
    # How strongly an hour's failure rate leans on the partition's flat rate: as much as the
    # hours really differ beyond sampling noise (see _slot_prior_fail).
    k_slot = _slot_prior_fail(s.C, s.F, kind, p_f, cluster, policy.slot_prior_calls)
    Cs, Fs, Ds, S1s, S2s, Bs = (_fold(a, kind) for a in (s.C, s.F, s.D, s.S1, s.S2, s.B))
    # Each slot is shrunk towards the partition's own flat value (a thin hour stays sane).
    prior = policy.slot_prior_calls
    prior_b = 2.0  # pseudo-buckets for the volume profile
    with np.errstate(invalid="ignore", divide="ignore"):
        exp_calls = (Cs + prior_b * flat.rate[:, None]) / (Bs + prior_b)
        kf = k_slot[:, None]
        own_fail = np.where(np.isinf(kf), p_f[:, None], (Fs + kf * p_f[:, None]) / (Cs + kf))
        own_mu = (S1s + prior * mu_f[:, None]) / (Ds + prior)
        own_m2 = (S2s + prior * (var_f + mu_f**2)[:, None]) / (Ds + prior)
    return _Own(exp_calls, own_fail, own_mu, own_m2)


def _since_rollout(
    stats: pd.DataFrame,
    roll: _RollRows,
    own: _Own,
    fo: np.ndarray,
    P: int,
    policy: DetectionPolicy,
) -> tuple[np.ndarray, np.ndarray]:
    """Consumes the rolled-out versions' rows and their fleets' own profiles; produces (P,)
    ``regressed`` and ``slower`` since the rollout (see _regressed_since_rollout)."""
    r_idx, r_pid, r_slot = roll
    r_calls = stats["calls"].to_numpy()[r_idx].astype(np.float64)
    regressed = _regressed_since_rollout(
        np.bincount(r_pid, weights=r_calls, minlength=P),
        np.bincount(r_pid, weights=stats["failures"].to_numpy()[r_idx], minlength=P),
        np.bincount(r_pid, weights=r_calls * own.fail[fo[r_pid], r_slot], minlength=P),
        policy,
    )
    r_dn = stats["dur_n"].to_numpy()[r_idx].astype(np.float64)
    r_mu = own.mu[fo[r_pid], r_slot]
    with np.errstate(invalid="ignore"):
        r_var = np.maximum(own.m2[fo[r_pid], r_slot] - r_mu**2, 1e-4)
    slower = _slower_since_rollout(
        np.bincount(r_pid, weights=r_dn, minlength=P),
        np.bincount(
            r_pid,
            weights=stats["log_dur_sum"].to_numpy()[r_idx] - np.nan_to_num(r_dn * r_mu),
            minlength=P,
        ),
        np.bincount(r_pid, weights=np.nan_to_num(r_dn * r_var), minlength=P),
        policy,
    )
    return regressed, slower


@dataclass
class _Levels:
    """The baseline levels after the cold-start blend, and the weights behind them."""

    exp_calls: np.ndarray  # (P, 168) the partition's own
    fail_rate: np.ndarray  # (P, 168)
    mu_log: np.ndarray  # (P, 168)
    var_log: np.ndarray  # (P, 168)
    k_fail: np.ndarray  # (P,) empirical-Bayes prior strengths
    k_dur: np.ndarray
    w_calls: np.ndarray  # (P,) own weights, failure rate
    w_dur: np.ndarray  # (P,) own weights, log-duration


def _cold_start(
    parts: Partitions,
    flat: _Flat,
    own: _Own,
    regressed: np.ndarray,
    slower: np.ndarray,
    policy: DetectionPolicy,
) -> _Levels:
    """Consumes the own profiles and flat statistics; produces the :class:`_Levels`, each
    version's slots blended with its operation's fleet slots by n / (n + k)."""
    fleet, fo, Cf, Df = parts.is_fleet, parts.fleet_of, flat.calls, flat.dur_n
    # n = the version's own baseline calls (durations); k by empirical Bayes.
    k_fail, k_dur = _eb_prior_strength(parts, Cf, flat.failures, Df, flat.mu, flat.var, policy)
    with np.errstate(invalid="ignore", divide="ignore"):
        w_calls = np.where(fleet, 1.0, Cf / (Cf + k_fail))
        # A thin version already failing more than its siblings since it appeared does not
        # lean on that history (see _regressed_since_rollout).
        w_calls = np.where(regressed & (w_calls < policy.provisional_weight), 0.0, w_calls)
        w_dur = np.where(fleet, 1.0, Df / (Df + k_dur))
        # ... nor, slower than its siblings since it appeared, on its durations.
        w_dur = np.where(slower & (w_dur < policy.provisional_weight), 0.0, w_dur)
    fail_rate = _blend(own.fail, own.fail[fo], w_calls[:, None])
    mu_log = _blend(own.mu, own.mu[fo], w_dur[:, None])
    m2 = _blend(own.m2, own.m2[fo], w_dur[:, None])
    with np.errstate(invalid="ignore"):
        var_log = np.maximum(m2 - mu_log**2, 1e-4)
    return _Levels(own.exp_calls, fail_rate, mu_log, var_log, k_fail, k_dur, w_calls, w_dur)


class _Dispersion(NamedTuple):
    """(P,) overdispersion factors: log-duration, failures, failing calls, calls."""

    dur: np.ndarray
    fail: np.ndarray
    fcall: np.ndarray
    vol: np.ndarray


def _row_dispersion(
    rows: _Rows, own: _Own, lv: _Levels, call_ratio: np.ndarray, P: int, cap: float
) -> _Dispersion:
    """Consumes the baseline rows and levels; produces each partition's own :class:`_Dispersion`
    (median squared Pearson residual), one metric at a time so temporaries do not pile up."""
    pid, slot, calls = rows.pid, rows.slot, rows.calls
    fail_rate, var_log = lv.fail_rate, lv.var_log
    with np.errstate(invalid="ignore", divide="ignore"):
        n_d = rows.col("dur_n")
        s1 = rows.col("log_dur_sum")
        # Around the partition's own level, as the wander below: how far a thin version's
        # level is from the one it borrows is the deviation under test, not dispersion (a
        # build x2 slower since its rollout read phi ~10 against its siblings' level).
        mu_r = np.where(np.isfinite(own.mu), own.mu, lv.mu_log)[pid, slot]
        r = np.where(n_d >= 2, (s1 - n_d * mu_r) / np.sqrt(n_d * var_log[pid, slot]), np.nan)
        del n_d, s1, mu_r
        phi_dur = _median_dispersion(pid, r, P, cap)
        p_r = fail_rate[pid, slot]
        f_r = rows.col("failures")
        v_r = calls * p_r * (1 - p_r)
        r = np.where(v_r >= 3, (f_r - calls * p_r) / np.sqrt(v_r), np.nan)
        del p_r, f_r, v_r
        phi_fail = _median_dispersion(pid, r, P, cap)
        q_r = fail_rate[pid, slot] * call_ratio[pid]
        v_r = calls * q_r * (1 - q_r)
        r = np.where(v_r >= 3, (rows.col("failed_calls") - calls * q_r) / np.sqrt(v_r), np.nan)
        del q_r, v_r
        phi_fcall = _median_dispersion(pid, r, P, cap)
        e_r = lv.exp_calls[pid, slot]
        r = np.where(e_r >= 5, (calls - e_r) / np.sqrt(e_r), np.nan)
        del e_r
        phi_vol = _median_dispersion(pid, r, P, cap)
    return _Dispersion(phi_dur, phi_fail, phi_fcall, phi_vol)


def _borrowed_dispersion(
    phi: _Dispersion, parts: Partitions, lv: _Levels, stretch: np.ndarray
) -> _Dispersion:
    """Consumes each partition's own dispersion; produces it with thin versions' borrowed from
    their operation (as they borrow its level), every band widened by a short history's stretch."""
    fleet, fo, w_calls, w_dur = parts.is_fleet, parts.fleet_of, lv.w_calls, lv.w_dur
    phi_dur = np.maximum(phi.dur, np.where(fleet, 1.0, phi.dur[fo] * (1 - w_dur)))
    phi_fail = np.maximum(phi.fail, np.where(fleet, 1.0, phi.fail[fo] * (1 - w_calls)))
    phi_fcall = np.maximum(phi.fcall, np.where(fleet, 1.0, phi.fcall[fo] * (1 - w_calls)))
    # A short history has not seen the day's cycle: every band widens by its stretch.
    return _Dispersion(*(a * stretch for a in (phi_dur, phi_fail, phi_fcall, phi.vol)))


def _wander(
    rows: _Rows,
    win: _Window,
    own: _Own,
    lv: _Levels,
    phi: _Dispersion,
    cluster: np.ndarray,
    parts: Partitions,
    stretch: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Consumes the baseline rows, levels and dispersions; produces (P,) ``tau2_fail`` and
    ``tau2_dur``: how much the true level wanders from hour to hour beyond the profile
    (day-to-day mix of calls, devices, networks), from the baseline's hourly residuals."""
    pid, slot, calls, P = rows.pid, rows.slot, rows.calls, len(parts)
    block = (rows.t_idx // max(int(pd.Timedelta(hours=1) / win.bucket), 1)).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        # Around the partition's own level: how a thin version differs from the level it
        # borrows is the deviation under test, not wander.
        p_r = np.where(np.isfinite(own.fail), own.fail, lv.fail_rate)[pid, slot]
        # Failures come in clusters (one bad call fails several): an hour holds most of a
        # call, so the clusters inflate its sampling variance by ``cluster``.
        v_r = calls * p_r * (1 - p_r) * np.maximum(phi.fail, cluster)[pid]
        tau2_fail = _between_hours(pid, block, rows.col("failures") - calls * p_r, v_r, calls, P)
        del p_r, v_r
        n_d = rows.col("dur_n")
        mu_r = np.where(np.isfinite(own.mu), own.mu, lv.mu_log)[pid, slot]
        r = np.where(n_d > 0, rows.col("log_dur_sum") - n_d * mu_r, 0.0)
        v_r = n_d * lv.var_log[pid, slot] * phi.dur[pid]
        tau2_dur = _between_hours(pid, block, r, v_r, n_d, P)
        del n_d, mu_r, r, v_r
    # A version with thin history takes its operation's wander as it takes its level.
    fleet, fo = parts.is_fleet, parts.fleet_of
    tau2_fail = np.where(fleet, tau2_fail, _blend(tau2_fail, tau2_fail[fo], lv.w_calls))
    tau2_dur = np.where(fleet, tau2_dur, _blend(tau2_dur, tau2_dur[fo], lv.w_dur))
    return tau2_fail * stretch, tau2_dur * stretch


class _History(NamedTuple):
    """(P,) what each partition's history holds."""

    first_idx: np.ndarray  # first bucket seen in the window
    days: np.ndarray  # days since then
    kind: np.ndarray  # profile kind
    excluded: np.ndarray  # buckets left out
    has_history: np.ndarray  # any usable baseline
    stretch: np.ndarray  # band widening of a short history


def _finish(
    parts: Partitions,
    policy: DetectionPolicy,
    flat: _Flat,
    lv: _Levels,
    phi: _Dispersion,
    hist: _History,
    clusters: tuple[np.ndarray, np.ndarray],
    tau2: tuple[np.ndarray, np.ndarray],
) -> Baselines:
    """Consumes every step's result; produces the :class:`Baselines`, provisional versions
    marked "borrowed" and levels without data made neutral."""
    fleet, Cf, Df, k_fail, k_dur = parts.is_fleet, flat.calls, flat.dur_n, lv.k_fail, lv.k_dur
    weight = np.minimum(lv.w_calls, np.where(np.isfinite(lv.w_dur), lv.w_dur, 1.0))
    provisional = ~fleet & (weight < policy.provisional_weight)
    kind = np.where(provisional, "borrowed", hist.kind)
    # Partitions without any duration data at all (point events): neutral duration baseline.
    return Baselines(
        exp_calls=np.where(np.isfinite(lv.exp_calls), lv.exp_calls, 0.0),
        fail_rate=np.clip(np.where(np.isfinite(lv.fail_rate), lv.fail_rate, 0.0), 1e-5, 1 - 1e-5),
        mu_log=np.where(np.isfinite(lv.mu_log), lv.mu_log, 0.0),
        var_log=np.where(np.isfinite(lv.var_log), lv.var_log, 1.0),
        phi_dur=phi.dur,
        phi_fail=phi.fail,
        phi_vol=phi.vol,
        calls=Cf,
        buckets=flat.buckets,
        excluded=hist.excluded,
        history_days=hist.days,
        kind=kind.astype(object),
        weight=weight,
        provisional=provisional,
        has_history=hist.has_history,
        k_fail=k_fail,
        k_dur=k_dur,
        # A version's level is w * own + (1 - w) * fleet, w = n / (n + k): the own part's
        # sampling variance is w^2 var / n = var / ((n + k)^2 / n). The prior (the fleet's
        # level) is the hypothesis under test -- "a new build behaves like its siblings" -- so
        # a brand-new version (n = 0) is judged against it as if known.
        n_eff_fail=np.where(fleet, Cf, (Cf + k_fail) ** 2 / np.maximum(Cf, 1e-9)),
        n_eff_dur=np.where(fleet, Df, (Df + k_dur) ** 2 / np.maximum(Df, 1e-9)),
        call_ratio=clusters[0],
        phi_fcall=phi.fcall,
        cluster=clusters[1],
        first_bucket=hist.first_idx,
        tau2_fail=tau2[0],
        tau2_dur=tau2[1],
        stretch=hist.stretch,
    )


def _history_stretch(
    p_any: np.ndarray, hours: np.ndarray, policy: DetectionPolicy
) -> tuple[np.ndarray, np.ndarray]:
    """(has_history, stretch), both (P,), from each partition's operation's usable baseline
    ``hours``. Without ``policy.short_history`` a partition needs ``min_history``; with it,
    ``history_floor``, and below ``min_history`` its bands widen by ``stretch = min_history /
    hours`` (1 with enough history): the variance a level learnt from a few hours carries,
    having seen neither the day's cycle nor enough buckets to know its own spread."""
    min_h = policy.min_history.total_seconds() / 3600
    floor = policy.history_floor if policy.short_history else policy.min_history
    has_history = p_any & (hours >= floor.total_seconds() / 3600)
    short = has_history & (hours < min_h)
    stretch = np.where(short, min_h / np.maximum(hours, 1e-9), 1.0)
    return has_history, stretch


def _eb_prior_strength(
    parts: Partitions,
    calls: np.ndarray,
    failures: np.ndarray,
    dur_n: np.ndarray,
    mu: np.ndarray,
    var: np.ndarray,
    policy: DetectionPolicy,
) -> tuple[np.ndarray, np.ndarray]:
    """Empirical-Bayes ``k`` per partition for failure rate and mean log-duration.

    ``k = within-version variance / between-version variance`` of the operation's established
    versions (>= 100 calls): versions that really differ (web vs native builds) give a small
    ``k``, so a version's own data takes over quickly; versions that agree give a large ``k``
    and a new one leans on its siblings for longer. The between-version spread is a *robust*
    one (1.4826 x the median absolute deviation of the version means), so one deviating
    version -- typically the new one whose regression is being judged -- cannot legitimise
    itself by inflating it. Needs three established versions, else ``policy.cold_start_k``.
    Clipped to ``[10, policy.cold_start_k]``.
    """
    P = len(parts)
    kmax = max(policy.cold_start_k, 10.0)
    k_fail = np.full(P, kmax)
    k_dur = np.full(P, kmax)
    versions = ~parts.is_fleet
    for op_i in np.unique(parts.op_index):
        rows = np.flatnonzero((parts.op_index == op_i) & versions)
        est = rows[calls[rows] >= 100]
        if len(est) >= 3:
            p = failures[est] / calls[est]
            pbar = float(failures[est].sum() / calls[est].sum())
            within = pbar * (1 - pbar)
            spread = 1.4826 * float(np.median(np.abs(p - np.median(p))))
            between = spread**2 - within / float(np.median(calls[est]))
            if within > 0:
                k_fail[rows] = within / max(between, within / kmax)
        est = rows[(dur_n[rows] >= 100) & np.isfinite(mu[rows])]
        if len(est) >= 3:
            within = float(np.median(var[est]))
            spread = 1.4826 * float(np.median(np.abs(mu[est] - np.median(mu[est]))))
            between = spread**2 - within / float(np.median(dur_n[est]))
            if within > 0:
                k_dur[rows] = within / max(between, within / kmax)
    return np.clip(k_fail, 10.0, kmax), np.clip(k_dur, 10.0, kmax)


def rolled_out(first: np.ndarray, parts: Partitions, policy: DetectionPolicy) -> np.ndarray:
    """(P,) versions first seen at least ``policy.min_history`` after their operation.

    ``first``: each partition's first bucket (any common origin). A rare version present all
    along is not new, however much it fails: only a later rollout is.
    """
    gap = int(pd.Timedelta(policy.min_history) / pd.Timedelta(policy.bucket))
    out: np.ndarray = ~parts.is_fleet & (first - first[parts.fleet_of] >= gap)
    return out


def _regressed_since_rollout(
    n: np.ndarray, f: np.ndarray, e: np.ndarray, policy: DetectionPolicy
) -> np.ndarray:
    """Versions whose whole history fails more than their operation's fleet at the same hours:
    z >= ``policy.peer_z`` and by at least ``policy.min_failure_points``.

    Consumes per partition the calls ``n`` and failures ``f`` since the version appeared and
    the failures ``e`` its fleet's hourly rates expect of those calls (zeros for partitions
    that are not new versions). Produces a ``(P,)`` bool. Why: a new build is judged against
    "behaves like its siblings", and leans on its own history as that grows (n / (n + k)).
    A build failing from its first call at 10 calls an hour never has enough calls in one
    tested span (12 hours at most) before its failures have become its own baseline; its
    whole history does have enough. Its failures count one by one (binomial), as a thin
    version's do in the tests.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(n > 0, e / np.maximum(n, 1e-12), 0.0)
        z = (f - e) / np.sqrt(np.maximum(e * (1 - p), 1e-12))
        excess = np.where(n > 0, (f - e) / np.maximum(n, 1e-12), 0.0)
    out: np.ndarray = (n > 0) & (z >= policy.peer_z) & (excess >= policy.min_failure_points)
    return out


def _slower_since_rollout(
    n: np.ndarray, excess: np.ndarray, var: np.ndarray, policy: DetectionPolicy
) -> np.ndarray:
    """Versions whose whole history is slower than their operation's fleet at the same hours:
    z >= ``policy.peer_z`` and by at least ``policy.min_duration_rel`` (typical duration).

    Consumes per partition the durations ``n`` since the version appeared, the sum of their
    log-durations' excess over the fleet's hourly mean log-duration, and the sum of the
    fleet's hourly log-duration variances over them (zeros for partitions that are not new
    versions). Produces a ``(P,)`` bool. The duration counterpart of
    :func:`_regressed_since_rollout`: a build ×2 slower from its first call at 5 operations an
    hour holds ~60 of them in the longest tested span, and by the time that is significant its
    own slow history has become a third of its baseline (measured: the tested effect fell from
    +120 % to +60 % within a day). A build legitimately a little slower (another platform's,
    +10-15 %) stays under the practical minimum and leans on its own history as before.
    Each duration counts as independent (the dispersion is learnt later, from the blended
    level): a build wrongly held "slower" only keeps its siblings' level while provisional,
    and its tests still need their own significance and effect.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        z = excess / np.sqrt(np.maximum(var, 1e-12))
        shift = np.where(n > 0, excess / np.maximum(n, 1e-12), 0.0)
    out: np.ndarray = (n > 0) & (z >= policy.peer_z) & (np.expm1(shift) >= policy.min_duration_rel)
    return out


def _slot_prior_fail(
    C: np.ndarray,
    F: np.ndarray,
    kind: np.ndarray,
    p_flat: np.ndarray,
    cluster: np.ndarray,
    floor: float,
) -> np.ndarray:
    """Empirical-Bayes prior strength (pseudo-calls) of each partition's hourly failure rates.

    Consumes the ``(P, 168)`` hour-of-week calls ``C`` and failures ``F``, the profile ``kind``
    and flat rate per partition, and the failures' mean cluster size per partition (failures
    come in calls, so an hour's count varies ``cluster`` times a binomial one). Produces ``k``
    per partition: ``within / between``, where ``between`` is the method-of-moments variance
    of the true hourly rates around the flat one (hours of day for a ``seasonal`` profile,
    hours of week for ``weekly``) and ``within = p (1 - p) * cluster`` one call's sampling
    variance.

    Why: failures are rare. At 0.5 % an hour slot of a week's history holds ~5 failures, and
    one slot in twenty holds at most one by chance alone; read as that hour's rate, it made
    every ordinary failure at that hour look like an incident. Hours that do differ (a
    measured spread beyond sampling noise) keep their own rates; hours that do not collapse
    to the flat rate (``k = inf``). Never below ``floor`` (``policy.slot_prior_calls``).
    """
    P = C.shape[0]
    k = np.full(P, np.inf)
    with np.errstate(invalid="ignore", divide="ignore"):
        for name, width in (("seasonal", 24), ("weekly", 168)):
            rows = np.flatnonzero(kind == name)
            if not len(rows):
                continue
            c = C[rows].reshape(len(rows), -1, width).sum(axis=1)
            f = F[rows].reshape(len(rows), -1, width).sum(axis=1)
            n = c.sum(axis=1)
            p = p_flat[rows]
            used = (c > 0).sum(axis=1)
            within = p * (1 - p) * cluster[rows]
            q = np.where(c > 0, (f - c * p[:, None]) ** 2 / np.maximum(c, 1e-12), 0.0).sum(axis=1)
            denom = n - (c**2).sum(axis=1) / np.maximum(n, 1e-12)
            between = (q - (used - 1) * within) / np.maximum(denom, 1e-12)
            ok = (n > 0) & (used > 1) & (between > 0) & (within > 0) & np.isfinite(between)
            k[rows[ok]] = within[ok] / between[ok]
    out: np.ndarray = np.maximum(k, floor)
    return out


def _between_hours(
    pid: np.ndarray,
    block: np.ndarray,
    resid: np.ndarray,
    var: np.ndarray,
    weight: np.ndarray,
    P: int,
    trim_z: float = 3.0,
    rounds: int = 4,
) -> np.ndarray:
    """Variance of a partition's true level between hours, beyond sampling noise (>= 0).

    Consumes one value per baseline row: its partition ``pid``, hour ``block``, residual
    against the partition's own profile (failures minus expected; or sum of log-durations
    minus expected), that residual's sampling variance (dispersion included) and its size
    ``weight`` (calls; or durations). Produces ``tau2`` per partition, in squared units of the
    level (rate, or mean log-duration), by the method of moments on hourly sums:
    ``sum(R_h^2 - V_h) / sum(n_h^2)``, first over every hour, then ``rounds`` times over the
    hours within ``trim_z`` deviations of the last estimate.

    Why: counts that grow with volume make every small wobble of the level "significant". A
    week of CreateView failing 1.3 % one afternoon and 3.9 % the next, with nothing wrong,
    alerts on a busy hour unless a span's variance is ``n V + n^2 tau2`` instead of ``n V``
    (the additive random effect of overdispersed funnel plots). The trimmed rounds leave out
    the hours far outside it (an incident the exclusions missed), so one bad hour does not
    blunt the detector for a week.
    """
    out = np.zeros(P, dtype=np.float64)
    ok = np.isfinite(resid) & np.isfinite(var)
    if not ok.any() or P == 0:
        return out
    # Dense (partition, hour) sums: P x hours is small (a week is 168 hours), and a bincount
    # on it is several times cheaper than sorting the rows' keys.
    nb = int(block[ok].max()) + 1
    key = pid[ok].astype(np.int64) * nb + block[ok]
    n_h = np.bincount(key, weights=weight[ok], minlength=P * nb)
    used = np.flatnonzero(n_h > 0)
    n_h = n_h[used]
    r_h = np.bincount(key, weights=resid[ok], minlength=P * nb)[used]
    v_h = np.bincount(key, weights=var[ok], minlength=P * nb)[used]
    del key
    owner = used // nb
    keep = np.ones(len(used), dtype=bool)
    for i in range(rounds + 1):
        if i:
            keep = r_h**2 <= trim_z**2 * (v_h + n_h**2 * out[owner])
        num = np.bincount(owner[keep], weights=(r_h**2 - v_h)[keep], minlength=P)
        den = np.bincount(owner[keep], weights=(n_h**2)[keep], minlength=P)
        out = np.where(den > 0, np.maximum(num, 0.0) / np.maximum(den, 1e-300), 0.0)
    return out


def _blend(own: np.ndarray, borrowed: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``w * own + (1 - w) * borrowed``, falling back to whichever side is defined."""
    own_ok, bor_ok = np.isfinite(own), np.isfinite(borrowed)
    out = np.where(
        own_ok & bor_ok, w * np.nan_to_num(own) + (1 - w) * np.nan_to_num(borrowed), np.nan
    )
    out = np.where(own_ok & ~bor_ok, own, out)
    return np.where(~own_ok & bor_ok, borrowed, out)


def _median_dispersion(pid: np.ndarray, r: np.ndarray, P: int, cap: float) -> np.ndarray:
    """Per partition: median(r^2) / median(chi2_1), clipped to [1, cap]; 1 without data."""
    ok = np.isfinite(r)
    out = np.ones(P, dtype=np.float64)
    if not ok.any():
        return out
    df = pd.DataFrame({"p": pid[ok], "r2": r[ok] ** 2})
    g = df.groupby("p")["r2"]
    med = g.median()
    cnt = g.size()
    med = med[cnt >= 10]  # too few residuals: keep 1 (the test stays binomial / Poisson)
    out[med.index.to_numpy()] = np.clip(med.to_numpy() / _CHI2_MEDIAN, 1.0, cap)
    return out
