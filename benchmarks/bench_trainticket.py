"""Detection quality on TrainTicket: acs-detector vs three simple peers on real, public data.

Usage::

    .venv/bin/python benchmarks/bench_trainticket.py [--data DIR] [--step 1h] [--json out.json]

``DIR`` (default ``../shared/data/trainticket`` relative to the repository) holds
``operations.parquet`` and ``incidents.json`` as described in its README: two days of
per-minute TrainTicket latency metrics with 45 injected faults, recast as
``ACSCallClientOperations`` rows. When the directory is absent the benchmark says so and exits
0 (skipped), so a checkout without the shared data still runs.

The whole span is judged (the set has about 4 hours of fault-free history, too little for a
warm-up; its first fault comes 2 minutes after its data begin):

``acs-detector``  the engine replayed in windows of ``--step`` (default 1 h, the scheduled
                  job's period) from the first bucket, with the default policy: what it refuses
                  for lack of history is simply not alerted;
peers             ``static``, ``median_mad`` and ``iforest_raw`` exactly as in
                  ``bench_quality.py``, except that ``static`` and ``iforest_raw`` learn from
                  every bucket (there is no warm-up to learn from; seeing the future can only
                  flatter them). ``median_mad`` is trailing, as always.

Scoring follows the README's Scoring section: a detector's alerting buckets of one operation
(any metric; every operation here has a single ``SdkVersion``, so fleet and version alerts of
an operation are one series) merge into one alert when they touch; an alert matches an incident
of the same operation when it overlaps the incident widened by 2 minutes on each side. Printed
per detector: precision, strict recall (k/45), F1, time-only recall (any operation), alerts and
false alerts per day (over the hours with data), false alerts in the full-workload hours, in
the evening (from 16:00 UTC) and in buckets with no data at all, the median delay in minutes
(incident start to the end of the first alerting bucket, 0 if the alert began earlier); then
strict and time-only recall by ``fault_type`` and by day. This is a development set: its
scores are not held-out results.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_quality import Dense, peer_iforest, peer_median_mad, peer_static  # noqa: E402

from detector.detect.decide import DetectionPolicy, parse_duration  # noqa: E402
from detector.evaluate import Dataset, LabelledIncident, format_table, replay  # noqa: E402

DETECTORS = ("acs-detector", "static", "median_mad", "iforest_raw")
#: The README's match tolerance on each side of an incident.
TOLERANCE = timedelta(minutes=2)
#: The load generator switches to a lighter, different workload at this UTC hour every day.
EVENING_HOUR = 16
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "trainticket"

AlertBucket = tuple[str, str | None, str, datetime]


@dataclass(frozen=True)
class Fault:
    """One labelled incident of ``incidents.json`` (``sdk_version`` None matches any)."""

    operation_name: str
    sdk_version: str | None
    start: datetime
    end: datetime
    fault_type: str


@dataclass(frozen=True)
class Alert:
    """Touching alerting buckets of one operation, any metric: ``[start, end)``."""

    operation_name: str
    start: datetime
    end: datetime


def _utc(text: str) -> datetime:
    ts = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def load_faults(path: Path) -> list[Fault]:
    """Parse ``incidents.json`` (a list of objects with ``operation_name``, ``sdk_version``,
    ``start``, ``end``, ``fault_type``) into :class:`Fault` s. Raises ValueError on a bad entry."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(raw, list):
        raise ValueError(f"{path}: not a JSON list")
    try:
        return [
            Fault(
                str(x["operation_name"]),
                None if x.get("sdk_version") is None else str(x["sdk_version"]),
                _utc(x["start"]),
                _utc(x["end"]),
                str(x.get("fault_type", "unknown")),
            )
            for x in raw
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a list of incidents ({exc})") from exc


def load(data_dir: Path, bucket: timedelta) -> tuple[Dataset, list[Fault]]:
    """Aggregate ``data_dir/operations.parquet`` into buckets and read its faults.

    The returned :class:`Dataset` is judged from its first bucket (``warmup_end`` = start);
    its ``incidents`` carry the faults as latency incidents (the set has no failure signal).
    """
    from detector.source.files import read_aggregates  # DuckDB only when benchmarking

    faults = load_faults(data_dir / "incidents.json")
    aggs = read_aggregates(data_dir / "operations.parquet", bucket=bucket)
    first = aggs.stats["bucket_start"].min().to_pydatetime()
    last = (aggs.stats["bucket_start"].max() + pd.Timedelta(bucket)).to_pydatetime()
    incidents = [
        LabelledIncident(f.operation_name, f.sdk_version, "duration", f.start, f.end)
        for f in faults
    ]
    ds = Dataset(
        data_dir.name, aggs, incidents, [], first, last, first, {"scenario": "trainticket"}
    )
    return ds, faults


def merge_alerts(buckets: Sequence[AlertBucket], bucket: timedelta) -> list[Alert]:
    """Alerting buckets ``(operation, version|None, metric, bucket_start)`` -> alerts: per
    operation, buckets that touch or overlap (next start <= previous end) are one alert."""
    by_op: dict[str, set[datetime]] = {}
    for op, _ver, _metric, ts in buckets:
        by_op.setdefault(op, set()).add(ts)
    out: list[Alert] = []
    for op, times in by_op.items():
        ordered = sorted(times)
        start, end = ordered[0], ordered[0] + bucket
        for t in ordered[1:]:
            if t <= end:
                end = max(end, t + bucket)
                continue
            out.append(Alert(op, start, end))
            start, end = t, t + bucket
        out.append(Alert(op, start, end))
    out.sort(key=lambda a: (a.start, a.operation_name))
    return out


def _overlaps(a: Alert, f: Fault) -> bool:
    return a.start < f.end + TOLERANCE and a.end > f.start - TOLERANCE


def _strict(a: Alert, f: Fault) -> bool:
    # Every operation of this set has one SdkVersion, and an incident's null matches any.
    return a.operation_name == f.operation_name and _overlaps(a, f)


def _period(a: Alert, data_buckets: set[datetime]) -> str:
    if a.start not in data_buckets:
        return "no_data"
    return "evening" if a.start.hour >= EVENING_HOUR else "full"


def score(
    alerts: Sequence[Alert],
    faults: Sequence[Fault],
    *,
    bucket: timedelta,
    data_buckets: set[datetime],
) -> dict[str, Any]:
    """The README's event-level scores of ``alerts`` against ``faults``.

    ``data_buckets`` are the bucket starts with at least one row (tenant-wide): their count
    gives the hours with data (alerts per day) and an alert starting outside them is counted
    as a ``no_data`` false alert. Returns a JSON-able dict.
    """
    hours = len(data_buckets) * bucket / timedelta(hours=1)
    days = max(hours / 24, 1e-9)
    true = [a for a in alerts if any(_strict(a, f) for f in faults)]
    false = [a for a in alerts if a not in true]
    per_fault = []
    delays = []
    for f in faults:
        hits = [a for a in alerts if _strict(a, f)]
        seen = any(_overlaps(a, f) for a in alerts)
        delay = None
        if hits:
            first = min(hits, key=lambda a: a.start)
            late = first.start + bucket - f.start
            delay = 0.0 if first.start < f.start else late / timedelta(minutes=1)
            delays.append(delay)
        per_fault.append(
            {
                "operation_name": f.operation_name,
                "start": f.start.isoformat(),
                "fault_type": f.fault_type,
                "day": f.start.date().isoformat(),
                "strict": bool(hits),
                "time_only": seen,
                "delay_min": delay,
            }
        )
    n = len(faults)
    detected = sum(p["strict"] for p in per_fault)
    precision = len(true) / len(alerts) if alerts else 0.0
    recall = detected / n if n else math.nan
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    periods = {"full": 0, "evening": 0, "no_data": 0}
    for a in false:
        periods[_period(a, data_buckets)] += 1
    return {
        "incidents": n,
        "detected": detected,
        "seen_time_only": sum(p["time_only"] for p in per_fault),
        "events": len(alerts),
        "true_events": len(true),
        "false_events": len(false),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "recall_time_only": sum(p["time_only"] for p in per_fault) / n if n else math.nan,
        "alerts_per_day": len(alerts) / days,
        "false_per_day": len(false) / days,
        "false_full": periods["full"],
        "false_evening": periods["evening"],
        "false_no_data": periods["no_data"],
        "median_delay_min": float(np.median(delays)) if delays else math.nan,
        "hours_with_data": hours,
        "per_fault": per_fault,
        "false_alerts": [
            f"{a.operation_name} {a.start:%m-%d %H:%M}-{a.end:%H:%M}" for a in false[:40]
        ],
    }


def by_group(rows: Sequence[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Strict and time-only recall per value of ``key`` (``fault_type`` or ``day``) and
    detector, from the ``per_fault`` entries of :func:`score` rows."""
    out = []
    groups = sorted({p[key] for r in rows for p in r["per_fault"]})
    for g in groups:
        for r in rows:
            ps = [p for p in r["per_fault"] if p[key] == g]
            out.append(
                {
                    "group": g,
                    "detector": r["detector"],
                    "n": len(ps),
                    "strict": f"{sum(p['strict'] for p in ps)}/{len(ps)}",
                    "time_only": f"{sum(p['time_only'] for p in ps)}/{len(ps)}",
                }
            )
    return out


COLUMNS = [
    ("detector", "detector", "{}", 14),
    ("alerts", "events", "{:d}", 6),
    ("FP", "false_events", "{:d}", 4),
    ("prec", "precision", "{:.2f}", 5),
    ("recall", "recall", "{:.2f}", 6),
    ("det", "detected", "{:d}", 4),
    ("F1", "f1", "{:.2f}", 5),
    ("t-only", "recall_time_only", "{:.2f}", 6),
    ("alerts/d", "alerts_per_day", "{:.1f}", 8),
    ("FA/day", "false_per_day", "{:.1f}", 6),
    ("FP<16h", "false_full", "{:d}", 6),
    ("FP>=16h", "false_evening", "{:d}", 7),
    ("FP nodata", "false_no_data", "{:d}", 9),
    ("delay min", "median_delay_min", "{:.1f}", 9),
    ("sec", "seconds", "{:.1f}", 6),
]
GROUP_COLUMNS = [
    ("group", "group", "{}", 16),
    ("detector", "detector", "{}", 14),
    ("strict", "strict", "{}", 7),
    ("time-only", "time_only", "{}", 9),
]


def run(
    data_dir: Path, *, step: timedelta, seed: int = 0, policy: DetectionPolicy | None = None
) -> list[dict[str, Any]]:
    """Replay the engine and run the peers on ``data_dir``; one :func:`score` row per detector."""
    policy = policy or DetectionPolicy(seed=seed)
    ds, faults = load(data_dir, policy.bucket)
    data_buckets = {t.to_pydatetime() for t in ds.aggs.stats["bucket_start"].unique()}
    found: dict[str, list[AlertBucket]] = {}
    secs: dict[str, float] = {}
    t0 = time.perf_counter()
    found["acs-detector"], _info = replay(ds, policy=policy, step=step)
    secs["acs-detector"] = time.perf_counter() - t0
    dense = Dense(ds, policy.bucket, fit_on_all=True)
    window = int(timedelta(days=7) / policy.bucket)
    peers = {
        "static": lambda: peer_static(dense),
        "median_mad": lambda: peer_median_mad(dense, window),
        "iforest_raw": lambda: peer_iforest(dense, seed),
    }
    for name, fn in peers.items():
        t0 = time.perf_counter()
        found[name] = dense.buckets(fn())
        secs[name] = time.perf_counter() - t0
    rows = []
    for name in DETECTORS:
        alerts = merge_alerts(found[name], policy.bucket)
        row = score(alerts, faults, bucket=policy.bucket, data_buckets=data_buckets)
        row.update(detector=name, seconds=secs[name])
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the tables (or the reason it was skipped)."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--step", default="1h")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a [detection] setting (TOML value, e.g. calibrate=true); repeatable",
    )
    args = ap.parse_args(argv)
    data = Path(args.data)
    if not (data / "operations.parquet").is_file() or not (data / "incidents.json").is_file():
        print(f"TrainTicket: skipped, no operations.parquet and incidents.json in {data}")
        return 0
    from bench_quality import policy_from

    policy = policy_from(args.set, seed=args.seed)
    rows = run(data, step=parse_duration(args.step), seed=args.seed, policy=policy)
    print(
        f"TrainTicket ({rows[0]['incidents']} incidents, {rows[0]['hours_with_data']:.0f} h with data)"
    )
    print(format_table(rows, COLUMNS, left=("detector",)))
    print()
    print(
        format_table(
            by_group(rows, "fault_type"),
            GROUP_COLUMNS,
            left=("group", "detector"),
            group_by="group",
        )
    )
    print()
    print(
        format_table(
            by_group(rows, "day"), GROUP_COLUMNS, left=("group", "detector"), group_by="group"
        )
    )
    mine = rows[0]
    print()
    print("acs-detector false alerts: " + ("; ".join(mine["false_alerts"]) or "none"))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
