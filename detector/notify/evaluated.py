"""What the lifecycle needs from the bucket history besides anomalies: evaluated partitions with
their current values (so clean partitions can resolve, with the value in the notice), and the
per-alert series the charts draw.

Consumes :class:`~detector.schema.BucketAggregates`, the judged window and the engine's
:class:`~detector.detect.candidate.Candidate` records; produces plain dicts and frames. Pure (pandas only, no I/O, no clock).

Values use the anomaly's units: p95 milliseconds (read from the log-scale histogram) for
``duration``, a fraction for ``failure_rate``, operations per bucket for ``volume``. The fleet
of an operation (fingerprint ``op|*|metric``) is the sum of its versions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from detector.anomaly import TENANT_FINGERPRINT, Anomaly, fingerprint_of
from detector.detect.candidate import NOT_EVALUATED, Candidate
from detector.schema import BucketAggregates, bin_value
from detector.timeutil import timestamp_utc

__all__ = [
    "CHART_SPAN",
    "NOT_EVALUATED",
    "chart_history",
    "evaluated_from_candidates",
    "evaluated_from_history",
]

#: What a chart shows: the day around the alert's window.
CHART_SPAN = timedelta(days=1)


def _pair(key: object) -> tuple[str, str]:
    """A (operation, version) group key as two strings."""
    if not isinstance(key, tuple) or len(key) != 2:
        raise TypeError(f"expected an (operation, version) key, got {key!r}")
    return str(key[0]), str(key[1])


def _bucket_width(stats: pd.DataFrame, default: timedelta) -> pd.Timedelta:
    starts = pd.Series(stats["bucket_start"].unique()).sort_values()
    diffs = starts.diff().dropna()
    diffs = diffs[diffs > pd.Timedelta(0)]
    return pd.Timedelta(diffs.min()) if len(diffs) else pd.Timedelta(default)


def _p95(hist: pd.DataFrame, keys: list[str]) -> pd.Series:
    """p95 per group of ``keys`` from long-format histogram rows (bin, count)."""
    if hist.empty:
        return pd.Series(dtype=float)
    h = hist.groupby([*keys, "bin"], observed=True)["count"].sum().reset_index()
    h = h.sort_values([*keys, "bin"])
    h["cum"] = h.groupby(keys, observed=True)["count"].cumsum()
    h["tot"] = h.groupby(keys, observed=True)["count"].transform("sum")
    first = h[h["cum"] >= 0.95 * h["tot"]].groupby(keys, observed=True)["bin"].first()
    return first.map(lambda b: float(bin_value(int(b))))


def _fleet(frame: pd.DataFrame) -> pd.DataFrame:
    f = frame.copy()
    f["sdk_version"] = "*"
    return f


def evaluated_from_candidates(candidates: Iterable[Candidate]) -> dict[str, dict[str, Any]]:
    """The engine's candidates -> ``{fingerprint: {"observed", "baseline", "calls"}}`` of those
    it could judge (``expected`` is the baseline; a non-finite call count is None)."""
    # Candidates the engine could not judge (maintenance, too little history or volume) are
    # not "evaluated": a firing alert on them keeps its state instead of resolving.
    return {
        c.fingerprint: {
            "observed": c.observed,
            "baseline": c.expected,
            "calls": int(c.calls) if math.isfinite(c.calls) else None,
        }
        for c in candidates
        if c.evaluated
    }


def evaluated_from_history(
    history: BucketAggregates,
    window: tuple[datetime, datetime],
    *,
    candidates: Iterable[Candidate] = (),
    bucket: timedelta = timedelta(minutes=5),
    min_calls: int = 50,
) -> dict[str, dict[str, Any]]:
    """Every fingerprint with enough calls in ``window``, mapped to its current value.

    Parameters
    ----------
    history : bucket aggregates covering at least the window.
    window : judged ``(start, end)``, half-open.
    candidates : the engine's candidate records (deviating but gated); their ``expected``
        becomes the ``baseline`` shown in resolved notices.
    bucket : bucket width when it cannot be inferred from the frame.
    min_calls : duration and failure rate count as evaluated only with at least this many
        calls (durations) in the window: a handful of calls cannot show an alert is over.
        Candidates the engine stopped at ``maintenance``, ``insufficient_history`` or
        ``suppressed_low_volume`` are not evaluated either.

    Returns
    -------
    ``{fingerprint: {"observed", "baseline", "calls"}}`` for duration (when durations exist),
    failure_rate and volume, per version and per fleet.
    """
    stats, hist = history.stats, history.hist
    out: dict[str, dict[str, Any]] = {}
    if stats is None or stats.empty:
        return out
    ws, we = timestamp_utc(window[0]), timestamp_utc(window[1])
    sel = stats[(stats["bucket_start"] >= ws) & (stats["bucket_start"] < we)]
    if sel.empty:
        return out
    width = _bucket_width(stats, bucket)
    n_buckets = max(1.0, (we - ws) / width)
    hsel = (
        hist[(hist["bucket_start"] >= ws) & (hist["bucket_start"] < we)]
        if hist is not None
        else None
    )
    keys = ["operation_name", "sdk_version"]
    cols = ["calls", "failures", "dur_n"]
    frames = [sel[keys + cols], _fleet(sel[keys + cols])]
    agg = pd.concat(frames).groupby(keys, observed=True)[cols].sum()
    p95 = pd.Series(dtype=float)
    if hsel is not None and not hsel.empty:
        # Sum the window's buckets per (partition, bin) first: the fleet copy and the p95 then
        # work on a few thousand rows instead of every (bucket, bin) of the window.
        hk = hsel.groupby([*keys, "bin"], observed=True, sort=False)["count"].sum().reset_index()
        p95 = _p95(pd.concat([hk, _fleet(hk)]), keys)
    # The tenant's calls: a tenant-wide stop resolves once traffic is back.
    total = int(sel["calls"].sum())
    if total > 0:
        out[TENANT_FINGERPRINT] = {"observed": total / n_buckets, "baseline": None, "calls": total}
    for key, row in agg.iterrows():
        op, ver = _pair(key)
        calls = int(row["calls"])
        if calls <= 0:
            continue
        sdk = ver if ver not in ("*", "") else None
        out[fingerprint_of(op, sdk, "volume")] = {
            "observed": calls / n_buckets,
            "baseline": None,
            "calls": calls,
        }
        if calls >= min_calls:
            out[fingerprint_of(op, sdk, "failure_rate")] = {
                "observed": float(row["failures"]) / calls,
                "baseline": None,
                "calls": calls,
            }
        if int(row["dur_n"]) >= max(min_calls, 1):
            v = p95.get((op, ver))
            out[fingerprint_of(op, sdk, "duration")] = {
                "observed": float(v) if v is not None and np.isfinite(v) else None,
                "baseline": None,
                "calls": int(row["dur_n"]),
            }
    for c in candidates:
        fp = c.fingerprint
        if not c.evaluated:
            out.pop(fp, None)
        elif fp in out and c.expected is not None:
            out[fp]["baseline"] = c.expected
    return out


def chart_history(
    history: BucketAggregates,
    anomalies: Sequence[Anomaly],
    *,
    now: datetime,
    span: timedelta = CHART_SPAN,
) -> dict[str, pd.DataFrame]:
    """Per-alert series for :func:`detector.notify.chart.chart_png` over ``span``.

    The span ends a quarter-span after the alert's window (never after ``now``), so an alert
    found in the middle of a long manual rerun is charted around its own window, not around
    the end of the rerun. ``observed`` per bucket comes from the history; ``baseline`` and the band are the values the
    engine reported for the alert window, drawn flat (a seasonal baseline's daily shape is not
    in the anomaly record).
    """
    out: dict[str, pd.DataFrame] = {}
    stats, hist = history.stats, history.hist
    if stats is None or stats.empty or not anomalies:
        return out
    spans: dict[str, tuple[pd.Timestamp, pd.Timestamp]] = {}
    for a in anomalies:  # the first anomaly of a fingerprint (the worst one) is charted
        hi = min(timestamp_utc(now), timestamp_utc(a.window_end) + pd.Timedelta(span) / 4)
        spans.setdefault(a.fingerprint, (hi - pd.Timedelta(span), hi))
    # Every filter is a mask over the whole frame and takes only the numeric columns it
    # needs: taking the (Arrow) string columns of millions of rows is what made this slow.
    for a in anomalies:
        if a.fingerprint in out:
            continue
        lo, hi = spans[a.fingerprint]
        mask = (stats["bucket_start"] >= lo) & (stats["bucket_start"] < hi)
        mask &= stats["operation_name"] == a.operation_name
        if a.sdk_version:
            mask &= stats["sdk_version"] == a.sdk_version
        part = (
            stats.loc[mask, ["bucket_start", "calls", "failures"]]
            .groupby("bucket_start")[["calls", "failures"]]
            .sum()
        )
        hwin = None
        if hist is not None and a.metric not in ("failure_rate", "volume"):
            hm = (hist["bucket_start"] >= lo) & (hist["bucket_start"] < hi)
            hm &= hist["operation_name"] == a.operation_name
            if a.sdk_version:
                hm &= hist["sdk_version"] == a.sdk_version
            hwin = hist.loc[hm, ["bucket_start", "bin", "count"]]
        if part.empty:
            continue
        if a.metric == "failure_rate":
            observed = part["failures"] / part["calls"].where(part["calls"] > 0)
        elif a.metric == "volume":
            observed = part["calls"].astype(float)
        else:
            if hwin is None or hwin.empty:
                continue
            observed = _p95(hwin, ["bucket_start"])
        frame = pd.DataFrame({"observed": observed}).reset_index()
        frame = frame.rename(columns={"index": "bucket_start"})
        frame["baseline"] = a.baseline
        frame["band_low"] = a.band_low if a.band_low is not None else np.nan
        frame["band_high"] = a.band_high if a.band_high is not None else np.nan
        out[a.fingerprint] = frame
    return out
