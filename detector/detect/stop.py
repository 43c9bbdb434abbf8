"""Tenant-wide stop: every operation at or near zero is one alert, not one per operation.

When the diagnostic setting breaks or the whole app is down, every operation's volume drops to
zero together. The per-operation volume tests each see their own drop and raise one alert per
operation; what the user needs to read is one line: "no call client operations since 04:20;
ingestion or the whole app". This module finds such stops in the bucket cube and folds the
per-operation volume alerts they cover into one tenant-level :class:`~detector.anomaly.Anomaly`
(fingerprint :data:`~detector.anomaly.TENANT_FINGERPRINT`).

Consumes the cube's calls, the baselines' expected calls, the judged buckets and ``now``;
produces the tenant anomalies and the anomalies left once folded. Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from scipy import special

from detector.anomaly import TENANT_OPERATION, Anomaly
from detector.detect.baseline import Baselines, Partitions
from detector.detect.features import Cube, true_runs
from detector.detect.policy import DetectionPolicy
from detector.timeutil import iso_z

__all__ = ["AlertBucket", "Stop", "find_stops", "fold_buckets", "fold_into_stops", "stop_anomaly"]


@dataclass(frozen=True)
class Stop:
    """One run of buckets in which the whole tenant was (nearly) silent.

    ``start``/``end`` index the cube's columns (half-open); ``observed``/``expected`` are the
    tenant's calls summed over the run; ``operations`` the operations expected to have calls
    in it, ``silent`` how many of them had none. ``confirmed``: long and large enough to be
    the tenant's alert (a shorter run still holds back the volume alerts it covers: a stop in
    the making, or a gap too short to alert on); ``in_window``: it reaches the judged buckets.
    """

    start: int
    end: int
    observed: float
    expected: float
    operations: int
    silent: int
    confirmed: bool
    in_window: bool

    @property
    def alerting(self) -> bool:
        """A confirmed stop with buckets in the judged window: the tenant alert of this run."""
        return self.confirmed and self.in_window


def _tenant_series(
    cube: Cube, parts: Partitions, base: Baselines
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observed and expected calls of the whole tenant per bucket, and (O, T) expected calls
    per operation. Only operations with a usable baseline count; maintenance buckets
    (``cube.excluded``) expect nothing, so a planned outage is no stop."""
    rows = np.flatnonzero(parts.is_fleet & base.has_history)
    exp = base.exp_calls[rows][:, cube.slots]
    obs = cube.calls[rows].astype(np.float64)
    if cube.excluded is not None:
        excl = np.asarray(cube.excluded)[rows]
        exp = np.where(excl, 0.0, exp)
        obs = np.where(excl, 0.0, obs)
    return obs.sum(axis=0), exp.sum(axis=0), exp


def find_stops(
    cube: Cube,
    parts: Partitions,
    base: Baselines,
    policy: DetectionPolicy,
    *,
    judged: np.ndarray,
    complete: np.ndarray,
) -> list[Stop]:
    """Runs of complete buckets in which the tenant had at most ``policy.stop_share`` of its
    expected calls, ending at most ``policy.stop_recovery`` before the judged buckets;
    ``confirmed`` when the run holds at least ``policy.stop_buckets`` buckets and
    ``policy.min_expected_calls`` expected calls. A run not confirmed is kept only when it
    reaches the last complete bucket.

    ``judged`` (T,) marks the window's buckets, ``complete`` (T,) those that ended by ``now``
    (a bucket still filling is not silent yet). A run may start in the look-back buckets
    before the window: its start is when the stop began.
    """
    obs, exp, per_op = _tenant_series(cube, parts, base)
    quiet = complete & (exp > 0) & (obs <= policy.stop_share * exp)
    first_judged = int(np.argmax(judged)) if judged.any() else len(judged)
    recovery = int(pd.Timedelta(policy.stop_recovery) / pd.Timedelta(policy.bucket))
    last = int(np.flatnonzero(complete).max()) + 1 if complete.any() else 0
    op_calls = cube.calls[np.flatnonzero(parts.is_fleet & base.has_history)]
    out: list[Stop] = []
    for a, b in true_runs(quiet):
        # A stop that ended shortly before the window still explains the volume drops of
        # its aftermath (calls under way when it began never finish in the log).
        if b + recovery <= first_judged:
            continue
        e = float(exp[a:b].sum())
        confirmed = b - a >= policy.stop_buckets and e >= policy.min_expected_calls
        # A short quiet run counts only while it lasts (a stop in the making); with traffic
        # back after it, it was a gap in the data, and the operations' alerts stand.
        if not confirmed and b != last:
            continue
        expecting = per_op[:, a:b].sum(axis=1) > 0
        silent = op_calls[:, a:b].sum(axis=1) == 0
        out.append(
            Stop(
                start=a,
                end=b,
                observed=float(obs[a:b].sum()),
                expected=e,
                operations=int(expecting.sum()),
                silent=int((expecting & silent).sum()),
                confirmed=confirmed,
                in_window=bool(judged[a:b].any()),
            )
        )
    return out


def stop_anomaly(
    stop: Stop, times: pd.DatetimeIndex, policy: DetectionPolicy, n_tests: float
) -> Anomaly:
    """The tenant-level anomaly of one :class:`Stop` (its window spans the silent buckets).

    ``n_tests`` is the volume family's multiplicity (the reported p-value is corrected as the
    per-operation ones are).
    """
    bucket = pd.Timedelta(policy.bucket)
    start = times[stop.start].to_pydatetime().astimezone(UTC)
    end = (times[stop.end - 1] + bucket).to_pydatetime().astimezone(UTC)
    n = stop.end - stop.start
    # Poisson lower tail of the calls seen given the calls expected.
    p = float(special.gammaincc(stop.observed + 1.0, stop.expected))
    return Anomaly(
        operation_name=TENANT_OPERATION,
        sdk_version=None,
        metric="volume",
        window_start=start,
        window_end=end,
        observed=stop.observed / n,
        baseline=stop.expected / n,
        score=float("nan"),
        severity="critical",
        calls=int(stop.observed),
        reason="anomaly: tenant-wide stop",
        effect=stop.observed / stop.expected - 1.0,
        p_value=min(1.0, p * max(n_tests, 1.0)),
        baseline_calls=int(round(stop.expected)),
        details={
            "scope": "tenant",
            "since": iso_z(start),
            "operations_expected": stop.operations,
            "operations_silent": stop.silent,
        },
    )


def fold_into_stops(
    anomalies: list[Anomaly], quiet: list[tuple[datetime, datetime, bool]], stops: list[Anomaly]
) -> tuple[list[Anomaly], list[Anomaly]]:
    """``(kept, folded)``: ``kept`` is ``anomalies`` without the volume drops a tenant-quiet
    span covers, followed by ``stops``; ``folded`` the drops left out. A span of ``quiet``,
    ``(start, end, confirmed)``, covers the drops whose windows overlap it when confirmed (a
    stop), else only those that began inside it (a stop in the making is not why an
    operation's drop that began earlier alerts). One alert says the tenant went quiet, not
    one per operation."""

    def covered(a: Anomaly) -> bool:
        if a.metric != "volume" or (a.effect is not None and a.effect > 0):
            return False
        return any(
            (s <= a.window_start if not ok else s < a.window_end) and a.window_start < e
            for s, e, ok in quiet
        )

    folded = [a for a in anomalies if covered(a)]
    return [a for a in anomalies if not covered(a)] + stops, folded


AlertBucket = tuple[str, str | None, str, datetime]


def fold_buckets(
    buckets: list[AlertBucket],
    folded: list[Anomaly],
    stops: list[Anomaly],
    times: pd.DatetimeIndex,
    first_judged: datetime,
) -> list[AlertBucket]:
    """The alerting buckets ``(operation, version, metric, bucket start)`` to match what
    :func:`fold_into_stops` did: the buckets of the ``folded`` anomalies go, the judged
    buckets of each stop (from ``times``) come as the tenant's."""
    gone = {(a.operation_name, a.sdk_version, a.metric): a for a in folded}

    def kept(b: AlertBucket) -> bool:
        a = gone.get((b[0], b[1], b[2]))
        return a is None or not a.window_start <= b[3] < a.window_end

    out = [b for b in buckets if kept(b)]
    for s in stops:
        for t in times:
            ts = t.to_pydatetime().astimezone(UTC)
            if ts >= first_judged and s.window_start <= ts < s.window_end:
                out.append((TENANT_OPERATION, None, "volume", ts))
    return out
