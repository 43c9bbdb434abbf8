"""Significance thresholds calibrated on the tenant's own judged history.

Every run records, per judged bucket and metric, the smallest p-value on decide's scale
(p x tests an hour) among the partitions whose bucket passed every gate but significance
and was not part of an alert: the bucket's would-be false alarm. A later run reads the
hourly minima of that record (before its own window) and sets each metric's threshold so
that, on the tenant's history, hours at or below it stay within ``false_alerts_per_day``
(split evenly over the metrics).

Below the smallest minima seen, the rate of hours under a threshold ``a`` is taken to fall
linearly with ``a`` (the shape of the minimum of many p-values), from each of the three
smallest minima ``m_j``, with the Poisson upper bound of ``j`` hours seen so a short record
errs strict. Consumes :class:`~detector.store.engine_state.EngineState`'s ``calibration``
record; produces one threshold per metric (or None: too little history, ``alpha`` holds).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import chi2

from detector.detect.policy import METRIC_NAMES, DetectionPolicy
from detector.store.engine_state import Span
from detector.timeutil import iso, parse_time

__all__ = ["Calibration", "record", "thresholds"]

#: Confidence of the upper bound on the rate of hours below a minimum seen j times.
_LEVEL = 0.8
#: How many of the smallest hourly minima bound the rate (the ones nearest the threshold).
_SMALLEST = 3


@dataclass(frozen=True)
class Calibration:
    """Each metric's threshold on decide's scale (None: not calibrated, ``alpha`` holds)."""

    alpha: np.ndarray | None  # (M,)
    hours: int  # judged hours of history behind it
    budget: float  # false alerts a day, the whole tenant

    def to_json(self, fallback: float) -> dict[str, object]:
        """The report's ``calibration`` entry: where the thresholds come from, and them."""
        values = [fallback] * len(METRIC_NAMES) if self.alpha is None else list(self.alpha)
        return {
            "source": "alpha" if self.alpha is None else "history",
            "hours": self.hours,
            "false_alerts_per_day": self.budget,
            "thresholds": {m: float(f"{v:.3g}") for m, v in zip(METRIC_NAMES, values, strict=True)},
        }


def record(
    history: MutableMapping[str, dict[str, list[Any]]],
    times: Sequence[datetime],
    minima: np.ndarray,
    operations: np.ndarray,
) -> None:
    """Store each judged bucket's per-metric minima ``(M, T)`` (3 digits) and the operation
    each came from (``""`` where nothing passed), under the bucket's start."""
    for j, t in enumerate(times):
        p = [float(f"{v:.3g}") for v in np.clip(minima[:, j], 0.0, 1.0)]
        ops = [str(o) if v < 1.0 else "" for o, v in zip(operations[:, j], p, strict=True)]
        history[iso(t)] = {"p": p, "op": ops}


def _near_alerts(
    alerted: Sequence[Span], reach: timedelta
) -> dict[str, list[tuple[datetime, datetime]]]:
    """Alerted spans -> per operation, the times their evidence may still reach."""
    out: dict[str, list[tuple[datetime, datetime]]] = {}
    for op, _ver, start, end in alerted:
        out.setdefault(op, []).append((start - reach, end + reach))
    return out


def _hourly(
    history: Mapping[str, Mapping[str, list[Any]]],
    before: datetime,
    alerted: Sequence[Span],
    reach: timedelta,
) -> np.ndarray:
    """The recorded buckets before ``before`` -> their hourly minima, ``(M, hours)``; a
    metric's bucket whose minimum came from an operation near one of its alerts is left out
    (the incident's onset and aftermath are not false alarms)."""
    near = _near_alerts(alerted, reach)
    rows, hours = [], []
    for key, rec in history.items():
        t = parse_time(key)
        if t >= before:
            continue
        p = [
            np.nan if any(a <= t < b for a, b in near.get(op, ())) else float(v)
            for v, op in zip(rec["p"], rec["op"], strict=True)
        ]
        rows.append(p)
        hours.append(t)
    if not rows:
        return np.ones((len(METRIC_NAMES), 0))
    frame = pd.DataFrame(rows, index=pd.DatetimeIndex(hours).floor("h"))
    hourly = frame.groupby(level=0).min()  # NaN only where every bucket was left out
    return np.asarray(hourly.to_numpy().T, dtype="float64")


def _threshold(minima: np.ndarray, per_hour: float) -> float:
    """One metric's hourly minima -> the largest threshold the budget ``per_hour`` allows."""
    minima = minima[~np.isnan(minima)]
    n = len(minima)
    smallest = np.sort(minima)[:_SMALLEST]
    seen = smallest[smallest < 1.0]
    if not len(seen):  # nothing came near in n hours: bound the rate at the level 1
        return float(per_hour * n / (chi2.ppf(_LEVEL, 2) / 2))
    j = np.arange(1, len(seen) + 1)
    upper = chi2.ppf(_LEVEL, 2 * (j + 1)) / 2  # Poisson upper bound on j hours seen
    return float(np.max(per_hour * n * np.maximum(seen, 1e-300) / upper))


def thresholds(
    history: Mapping[str, Mapping[str, list[Any]]],
    before: datetime,
    policy: DetectionPolicy,
    alerted: Sequence[Span] = (),
) -> Calibration:
    """The recorded history before ``before``, and the alerted spans to leave out ->
    per-metric thresholds (or ``alpha`` while under ``calibration_min_hours``)."""
    budget = policy.false_alerts_per_day
    if not policy.calibrate:
        return Calibration(None, 0, budget)
    reach = policy.bucket * max(policy.spans)
    minima = _hourly(history, before, alerted, reach)
    hours = int((~np.isnan(minima)).sum(axis=1).min()) if minima.size else 0
    if hours < policy.calibration_min_hours:
        return Calibration(None, hours, budget)
    per_hour = budget / 24.0 / len(METRIC_NAMES)
    alpha = np.array([_threshold(minima[m], per_hour) for m in range(len(METRIC_NAMES))])
    return Calibration(np.minimum(alpha, 1.0), hours, budget)
