"""The algebra of bucket aggregates: merge, fleet, coarsen, quantiles, summarize.

Consumes and produces :class:`~detector.schema.BucketAggregates` (and summary frames); pure, no
I/O, vectorised pandas/numpy (no Python loop per row or per group).

Every column of the stats frame except the key is a sum, and the histogram is a sparse count
per bin, so aggregates merge *exactly*: late rows add up in their bucket, the fleet level of an
operation is the sum of its SDK-version partitions, and a 5-minute history coarsens to hours
by summing. Quantiles are read from the log-scale histogram with a relative error of at most
:data:`~detector.schema.HIST_ALPHA` (see :func:`quantiles`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Final

import numpy as np
import pandas as pd

from detector import schema
from detector.schema import AGG_COLUMNS, AGG_KEY, HIST_COLUMNS, BucketAggregates, fill_failed_calls

__all__ = [
    "FLEET",
    "cap_partitions",
    "coarsen",
    "fleet",
    "merge",
    "normalize",
    "quantile_column",
    "quantiles",
    "summarize",
]

#: ``sdk_version`` of fleet-level rows (all SDK versions of an operation together).
FLEET: Final = "*"

_STAT_VALUES: Final[list[str]] = [c for c in AGG_COLUMNS if c not in AGG_KEY]
_HIST_KEY: Final[list[str]] = [*AGG_KEY, "bin"]


def quantile_column(q: float) -> str:
    """Column name of quantile ``q`` in milliseconds: 0.5 -> ``p50_ms``, 0.999 -> ``p99.9_ms``."""
    return f"p{round(q * 100, 6):g}_ms"


def _empty(columns: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in columns.items()})


def _codes(frames: Sequence[pd.DataFrame], cols: Sequence[str]) -> list[np.ndarray]:
    """One int64 code per row and frame, ordered like the tuple of ``cols`` (lexicographic).

    Each column is factorised once over all frames (sorted uniques, shared dictionaries), and
    the per-column codes are combined into one integer: sorting it sorts by the key, equal
    codes are equal keys. Vectorised: the only sort is numpy's.
    """
    sizes = [len(f) for f in frames]
    combined = [np.zeros(n, dtype="int64") for n in sizes]
    card = 1
    for c in cols:
        col = (
            frames[0][c]
            if len(frames) == 1
            else pd.concat([f[c] for f in frames], ignore_index=True)
        )
        codes, uniques = pd.factorize(col, sort=True)
        codes = codes.astype("int64")
        n = max(len(uniques), 1)
        if card * n >= 2**62:  # would overflow: compact the key so far first
            allk = np.concatenate(combined)
            _, allk = np.unique(allk, return_inverse=True)
            combined = np.split(allk.astype("int64"), np.cumsum(sizes)[:-1])
            card = int(allk.max(initial=0)) + 1
        pieces = np.split(codes, np.cumsum(sizes)[:-1])
        combined = [k * n + p for k, p in zip(combined, pieces, strict=True)]
        card *= n
    return combined


def _sum_by(
    frames: Iterable[pd.DataFrame], key: list[str], columns: dict[str, str]
) -> pd.DataFrame:
    """Concatenate and sum every non-key column per key; sorted by key, contract dtypes."""
    parts = [f for f in frames if len(f)]
    if not parts:
        return _empty(columns)
    values = [c for c in columns if c not in key]
    df = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
    code = _codes([df], key)[0]
    if len(code) and bool(np.all(code[1:] > code[:-1])):  # already sorted and unique
        return df[list(columns)].astype(columns).reset_index(drop=True)
    order = np.argsort(code, kind="stable")
    sorted_code = code[order]
    starts = np.flatnonzero(np.r_[True, sorted_code[1:] != sorted_code[:-1]])
    first = order[starts]
    out = df[key].iloc[first].reset_index(drop=True)
    for v in values:
        out[v] = np.add.reduceat(df[v].to_numpy()[order], starts)
    return out.astype(columns)[list(columns)]


def _add_counts(dicts: Iterable[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            total[k] = total.get(k, 0) + int(v)
    return total


def normalize(stats: pd.DataFrame, hist: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Bring hand-made or foreign frames to the contract: columns, dtypes, one row per key.

    Rows with the same key are summed (so a frame built from raw pieces becomes mergeable),
    zero-count histogram rows are dropped, and both frames are sorted by key. Naive
    ``bucket_start`` values are taken as UTC.
    """

    def coerce(df: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise ValueError(f"missing column(s) {', '.join(missing)}")
        df = df[list(columns)].copy()
        ts = pd.to_datetime(df["bucket_start"])
        df["bucket_start"] = (
            ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts.dt.tz_convert("UTC")
        )
        return df.astype(columns)

    s = _sum_by([coerce(fill_failed_calls(stats), AGG_COLUMNS)], list(AGG_KEY), AGG_COLUMNS)
    h = _sum_by([coerce(hist, HIST_COLUMNS)], _HIST_KEY, HIST_COLUMNS)
    return s, h[h["count"] != 0].reset_index(drop=True)


def merge(*aggs: BucketAggregates) -> BucketAggregates:
    """Merge aggregates exactly: sums per key, histogram counts per bin, counters added.

    Parameters
    ----------
    *aggs : BucketAggregates
        Any number (zero gives an empty result), in any order: the result does not depend on
        the order (up to floating-point rounding of the log-duration sums).

    Returns
    -------
    BucketAggregates
        One row per key of the union, sorted by key; ``dropped``, ``flagged`` and
        ``rows_read`` are the sums of the inputs'.
    """
    return BucketAggregates(
        stats=_sum_by((a.stats for a in aggs), list(AGG_KEY), AGG_COLUMNS),
        hist=_sum_by((a.hist for a in aggs), _HIST_KEY, HIST_COLUMNS),
        dropped=_add_counts(a.dropped for a in aggs),
        flagged=_add_counts(a.flagged for a in aggs),
        rows_read=sum(a.rows_read for a in aggs),
        partitions_left_out=sum(a.partitions_left_out for a in aggs),
    )


def cap_partitions(aggs: BucketAggregates, max_partitions: int | None) -> BucketAggregates:
    """Keep the ``max_partitions`` busiest partitions (operation, SDK version); count the rest.

    Busiest: most operations (``calls``) in ``aggs``; ties go to the smaller key, so the
    choice does not depend on row order. The calls of the partitions left out move to
    ``dropped["partition_cap"]`` (``rows_read == kept + dropped`` still holds) and their number
    to ``partitions_left_out``. ``None`` (or a cap not reached) returns ``aggs`` unchanged.

    Raises
    ------
    ValueError
        If ``max_partitions`` is below 1.
    """
    if max_partitions is None:
        return aggs
    if max_partitions < 1:
        raise ValueError(f"max_partitions must be at least 1, got {max_partitions}")
    stats = aggs.stats
    if not len(stats):
        return aggs
    code = _codes([stats], ["operation_name", "sdk_version"])[0]
    pids, inv = np.unique(code, return_inverse=True)
    if len(pids) <= max_partitions:
        return aggs
    calls = np.bincount(inv.ravel(), weights=stats["calls"].to_numpy("float64"))
    # Stable sort on -calls keeps key order (np.unique sorted the codes) among equal counts.
    keep_pid = np.zeros(len(pids), dtype=bool)
    keep_pid[np.argsort(-calls, kind="stable")[:max_partitions]] = True
    keep = keep_pid[inv.ravel()]
    kept_keys = stats.loc[keep, ["operation_name", "sdk_version"]].drop_duplicates()
    hist = aggs.hist.merge(kept_keys, on=["operation_name", "sdk_version"], how="inner")
    dropped = dict(aggs.dropped)
    dropped["partition_cap"] = dropped.get("partition_cap", 0) + int(calls[~keep_pid].sum())
    return BucketAggregates(
        stats=stats[keep].reset_index(drop=True),
        hist=hist[list(HIST_COLUMNS)].astype(HIST_COLUMNS),
        dropped=dropped,
        flagged=dict(aggs.flagged),
        rows_read=aggs.rows_read,
        partitions_left_out=aggs.partitions_left_out + int((~keep_pid).sum()),
    )


def fleet(aggs: BucketAggregates) -> BucketAggregates:
    """Fleet level: sum every operation's partitions over SDK versions (``sdk_version = FLEET``).

    Rows already at the fleet level are not counted twice: they are left out of the sum.
    """
    stats = aggs.stats[aggs.stats["sdk_version"] != FLEET].assign(sdk_version=FLEET)
    hist = aggs.hist[aggs.hist["sdk_version"] != FLEET].assign(sdk_version=FLEET)
    return BucketAggregates(
        stats=_sum_by([stats], list(AGG_KEY), AGG_COLUMNS),
        hist=_sum_by([hist], _HIST_KEY, HIST_COLUMNS),
        dropped=dict(aggs.dropped),
        flagged=dict(aggs.flagged),
        rows_read=aggs.rows_read,
    )


def coarsen(aggs: BucketAggregates, width: timedelta) -> BucketAggregates:
    """Re-bucket to a wider ``width`` (e.g. 5 min -> 1 h): floor, epoch aligned, then sum.

    ``width`` should be a multiple of the original bucket width, else a bucket is assigned
    whole to the wider bucket its start falls in.
    """
    if width <= timedelta(0):
        raise ValueError(f"width must be positive, got {width}")
    step = pd.Timedelta(width)

    def floor(df: pd.DataFrame) -> pd.DataFrame:
        if not len(df):
            return df
        ns = pd.DatetimeIndex(df["bucket_start"]).as_unit("ns").asi8
        w = step.value
        floored = ns - np.mod(ns, w)
        return df.assign(bucket_start=pd.DatetimeIndex(floored.astype("datetime64[ns]"), tz="UTC"))

    return BucketAggregates(
        stats=_sum_by([floor(aggs.stats)], list(AGG_KEY), AGG_COLUMNS),
        hist=_sum_by([floor(aggs.hist)], _HIST_KEY, HIST_COLUMNS),
        dropped=dict(aggs.dropped),
        flagged=dict(aggs.flagged),
        rows_read=aggs.rows_read,
    )


def _ranks(q: float, n: np.ndarray) -> np.ndarray:
    # ceil(q * n), 1-based, without float noise turning 0.95 * 100 into rank 96.
    r: np.ndarray = np.ceil(np.round(q * n.astype("float64"), 6)).astype("int64")
    out: np.ndarray = np.maximum(r, 1)
    return out


def quantiles(
    hist: pd.DataFrame,
    qs: Sequence[float],
    by: Sequence[str] = AGG_KEY,
) -> pd.DataFrame:
    """Read duration quantiles (ms) from a sparse histogram, per group of ``by``.

    The quantile ``q`` of ``n`` durations is the element of rank ``ceil(q * n)`` (1-based,
    at least 1) in sorted order; its estimate is :func:`~detector.schema.bin_value` of that
    element's bin. Because every duration ``d >= 1`` ms in bin ``i`` satisfies
    ``|bin_value(i) - d| <= HIST_ALPHA * d``, the estimate is within a relative error of
    ``HIST_ALPHA`` (2 %) of the exact element of that rank (durations below 1 ms count as 1).

    Parameters
    ----------
    hist : DataFrame
        Columns ``by`` + ``bin`` + ``count`` (e.g. ``BucketAggregates.hist``). Groups may span
        several rows per bin (e.g. ``by=("operation_name", "bucket_start")`` sums versions).
    qs : sequence of float
        Quantiles in ``[0, 1]``.
    by : sequence of str
        Grouping columns. Default: the partition key ``AGG_KEY``.

    Returns
    -------
    DataFrame
        One row per group: ``by``, ``n`` (durations counted), and one float column per
        quantile named by :func:`quantile_column` (``p50_ms``, ``p95_ms``...).
    """
    by = list(by)
    for q in qs:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile {q} outside [0, 1]")
    cols = [quantile_column(q) for q in qs]
    if not len(hist):
        out = hist[by].iloc[0:0].copy()
        out["n"] = pd.Series(dtype="int64")
        for c in cols:
            out[c] = pd.Series(dtype="float64")
        return out.reset_index(drop=True)
    # Order rows by (group, bin) with integer codes, sum counts per (group, bin), then find
    # each group's rank positions with one searchsorted over the running total.
    gcode = _codes([hist], by)[0]
    bcode, buniq = pd.factorize(hist["bin"].to_numpy(dtype="int64"), sort=True)
    nb = max(len(buniq), 1)
    key = gcode * nb + bcode.astype("int64")
    order = np.argsort(key, kind="stable")
    ks = key[order]
    kstarts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    counts = np.add.reduceat(hist["count"].to_numpy(dtype="int64")[order], kstarts)
    keep = counts > 0
    kstarts, counts = kstarts[keep], counts[keep]
    gid = ks[kstarts] // nb
    bins = np.asarray(buniq)[ks[kstarts] % nb].astype("int64")
    starts = np.flatnonzero(np.r_[True, gid[1:] != gid[:-1]])
    cum = np.cumsum(counts)
    before = np.r_[0, cum[:-1]][starts]  # total count before each group
    n = np.add.reduceat(counts, starts)
    out = hist[by].iloc[order[kstarts[starts]]].reset_index(drop=True)
    out["n"] = n
    for q, c in zip(qs, cols, strict=True):
        pos = np.searchsorted(cum, before + _ranks(q, n), side="left")
        out[c] = np.asarray(schema.bin_value(bins[pos]), dtype="float64")
    return out


def summarize(aggs: BucketAggregates, qs: Sequence[float] = (0.5, 0.95)) -> pd.DataFrame:
    """Per key: calls, failures, failure rate, expected errors, log-duration moments, quantiles.

    Returns
    -------
    DataFrame
        ``AGG_KEY`` + ``calls``, ``failures``, ``failure_rate`` (failures / calls, NaN without
        calls), ``expected_errors``, ``dur_n``, ``log_dur_mean`` (mean of ln(ms), NaN without
        durations), ``log_dur_std`` (sample standard deviation, ddof=1, NaN below two
        durations), and one column per quantile (ms, :func:`quantile_column`; NaN without
        durations). Sorted by key.
    """
    s = aggs.stats
    out = s[list(AGG_KEY)].copy()
    calls = s["calls"].to_numpy(dtype="float64")
    n = s["dur_n"].to_numpy(dtype="float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(n > 0, s["log_dur_sum"].to_numpy() / n, np.nan)
        var = np.where(
            n > 1,
            (s["log_dur_sumsq"].to_numpy() - n * np.nan_to_num(mean) ** 2) / (n - 1),
            np.nan,
        )
        out["calls"] = s["calls"].to_numpy()
        out["failures"] = s["failures"].to_numpy()
        out["failure_rate"] = np.where(calls > 0, s["failures"].to_numpy() / calls, np.nan)
    out["expected_errors"] = s["expected_errors"].to_numpy()
    out["dur_n"] = s["dur_n"].to_numpy()
    out["log_dur_mean"] = mean
    out["log_dur_std"] = np.sqrt(np.clip(var, 0.0, None))
    q = quantiles(aggs.hist, qs, by=AGG_KEY)
    # Align quantile rows to stats rows on shared key codes (a 3-column merge is slow).
    skey, qkey = _codes([s, q], list(AGG_KEY))
    pos = np.searchsorted(qkey, skey)  # quantiles() returns rows sorted by key
    pos = np.clip(pos, 0, max(len(qkey) - 1, 0))
    hit = (qkey[pos] == skey) if len(qkey) else np.zeros(len(skey), dtype=bool)
    for q_ in qs:
        c = quantile_column(q_)
        vals = q[c].to_numpy()[pos] if len(qkey) else np.full(len(skey), np.nan)
        out[c] = np.where(hit, vals, np.nan)
    order = np.argsort(skey, kind="stable")
    return out.iloc[order].reset_index(drop=True)
