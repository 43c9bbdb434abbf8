"""Evaluate: replay the detector over a labelled data set and score it against the incidents.

Consumes a directory written by ``acs-detector simulate`` (``operations.*``, ``incidents.json``,
``maintenance.json`` if present, ``simulation.json`` if present); produces an
:class:`EvaluationReport` with event-level precision, recall, F1, false alerts per day and the
median detection delay. Reads files (through :func:`detector.source.files.read_aggregates`);
everything after loading is pure.

Replay
    The data after the warm-up (``simulation.json``'s ``warmup_end``, else 3 days or half the
    data) is judged in consecutive windows of ``step`` (default 1 h, as the scheduled job
    runs), each with ``now`` = the window end and the engine state carried over (alerted spans
    stay out of later baselines). The forest is kept in an in-memory model store and refitted
    on ``policy.refit_every``, as a scheduled deployment would. Every row is used, i.e. each
    bucket is judged as if its data had fully arrived by the end of its window.

Events and matching
    Consecutive alerting buckets of one fingerprint (operation, version or fleet, metric), with
    gaps the alert lifecycle bridges (:func:`alert_gap`: ``resolve_after``, 30 min by default,
    at least ``policy.persist_m`` buckets), form one alert event: what a user receives as one
    notification. An event is a true
    positive when it overlaps ``[incident.start, incident.end + grace)`` of an incident with the
    same operation and metric and the same ``sdk_version`` (an incident with ``sdk_version``
    null matches the fleet and every version). Recall = incidents matched by at least one
    event / incidents; precision = true-positive events / events; false alerts per day =
    false-positive events / judged days.

Delay
    In buckets, from the incident start to the *end* of the first alerting bucket of the first
    matching event (the earliest moment the alert exists once that bucket's data has arrived;
    event time, not including the scheduled job's ``delay``). 0 when the event began earlier.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from detector.detect.decide import DetectionPolicy
from detector.errors import InputError
from detector.lifecycle import LifecyclePolicy
from detector.schema import BucketAggregates
from detector.store.backend import Backend

__all__ = [
    "ABLATIONS",
    "Ablation",
    "Dataset",
    "EvaluationReport",
    "Event",
    "LabelledIncident",
    "ablate",
    "alert_gap",
    "evaluate",
    "events_from_buckets",
    "load_dataset",
    "replay",
    "score_events",
]


def _parse(text: str) -> datetime:
    ts = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


@dataclass(frozen=True)
class LabelledIncident:
    """One entry of ``incidents.json``."""

    operation_name: str
    sdk_version: str | None
    metric: str
    start: datetime
    end: datetime


@dataclass
class Dataset:
    """A labelled data set, aggregated into buckets."""

    name: str
    aggs: BucketAggregates
    incidents: list[LabelledIncident]
    maintenance: list[tuple[datetime, datetime, str | None]]
    start: datetime
    end: datetime
    warmup_end: datetime
    meta: dict[str, Any] = field(default_factory=dict)


def load_dataset(
    data_dir: str | Path, *, bucket: timedelta, warmup: timedelta | None = None
) -> Dataset:
    """Read ``data_dir`` (operations files + labels) and aggregate it into buckets.

    Raises
    ------
    InputError
        No operations file or no ``incidents.json`` in the directory.
    """
    from detector.source.files import read_aggregates  # DuckDB only when evaluating

    d = Path(data_dir)
    ops = sorted(p for p in d.glob("operations.*") if p.is_file())
    if not ops:
        raise InputError(f"{d}: no operations.* file (write one with acs-detector simulate)")
    inc_path = d / "incidents.json"
    if not inc_path.exists():
        raise InputError(f"{d}: no incidents.json")
    try:
        raw = json.loads(inc_path.read_text(encoding="utf-8"))
        incidents = [
            LabelledIncident(
                str(x["operation_name"]),
                None if x.get("sdk_version") is None else str(x["sdk_version"]),
                str(x["metric"]),
                _parse(x["start"]),
                _parse(x["end"]),
            )
            for x in raw
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{inc_path}: not a list of incidents ({exc})") from exc
    maintenance: list[tuple[datetime, datetime, str | None]] = []
    mpath = d / "maintenance.json"
    if mpath.exists():
        for x in json.loads(mpath.read_text(encoding="utf-8")):
            maintenance.append((_parse(x["start"]), _parse(x["end"]), x.get("operation_name")))
    meta: dict[str, Any] = {}
    if (d / "simulation.json").exists():
        meta = json.loads((d / "simulation.json").read_text(encoding="utf-8"))
    aggs = read_aggregates(ops[0] if len(ops) == 1 else str(d / "operations.*"), bucket=bucket)
    if aggs.stats.empty:
        raise InputError(f"{d}: no usable rows")
    first = aggs.stats["bucket_start"].min().to_pydatetime()
    last = (aggs.stats["bucket_start"].max() + pd.Timedelta(bucket)).to_pydatetime()
    start = _parse(meta["start"]) if "start" in meta else first
    end = _parse(meta["end"]) if "end" in meta else last
    if warmup is not None:
        warm = start + warmup
    elif "warmup_end" in meta:
        warm = _parse(meta["warmup_end"])
    else:
        warm = start + min(timedelta(days=3), (end - start) / 2)
    return Dataset(d.name, aggs, incidents, maintenance, start, end, warm, meta)


@dataclass
class Event:
    """Consecutive alerting buckets of one fingerprint."""

    operation_name: str
    sdk_version: str | None
    metric: str
    start: datetime
    end: datetime
    buckets: int


def events_from_buckets(
    buckets: Sequence[tuple[str, str | None, str, datetime]],
    *,
    bucket: timedelta,
    max_gap: int = 3,
) -> list[Event]:
    """Merge alerting buckets ``(operation, sdk_version|None, metric, bucket_start)`` into events."""
    by_fp: dict[tuple[str, str | None, str], list[datetime]] = {}
    for op, ver, metric, ts in buckets:
        by_fp.setdefault((op, ver, metric), []).append(ts)
    out: list[Event] = []
    for (op, ver, metric), times in by_fp.items():
        times = sorted(set(times))
        s, prev, n = times[0], times[0], 1
        for t in times[1:]:
            if t - prev <= bucket * max_gap:
                prev, n = t, n + 1
                continue
            out.append(Event(op, ver, metric, s, prev + bucket, n))
            s, prev, n = t, t, 1
        out.append(Event(op, ver, metric, s, prev + bucket, n))
    out.sort(key=lambda e: (e.start, e.operation_name, e.sdk_version or "", e.metric))
    return out


def alert_gap(policy: DetectionPolicy, lifecycle: LifecyclePolicy | None = None) -> int:
    """Largest step, in buckets, between alerting buckets of one event.

    The lifecycle keeps an alert firing until ``resolve_after`` has passed without an anomalous
    bucket, so buckets closer than that reach the user as one alert (one event), never less
    than the persistence window ``policy.persist_m``.
    """
    life = lifecycle if lifecycle is not None else LifecyclePolicy()
    return max(policy.persist_m, math.ceil(life.resolve_after / policy.bucket))


def _matches(e: Event, inc: LabelledIncident, grace: timedelta) -> bool:
    # A ``joint`` incident (several metrics moved at once) is found by an alert on any of them.
    same_metric = e.metric == inc.metric or inc.metric == "joint"
    if e.operation_name != inc.operation_name or not same_metric:
        return False
    if inc.sdk_version is not None and e.sdk_version != inc.sdk_version:
        return False
    return e.start < inc.end + grace and e.end > inc.start


def score_events(
    events: Sequence[Event],
    incidents: Sequence[LabelledIncident],
    *,
    judged: tuple[datetime, datetime],
    bucket: timedelta,
    grace: timedelta = timedelta(minutes=30),
    partitions: int = 0,
    incident_volume: dict[int, float] | None = None,
    min_volume_per_hour: float = 200.0,
) -> dict[str, Any]:
    """Event-level precision, recall, F1, false alerts per day, median delay (buckets)."""
    incs = [i for i in incidents if i.end > judged[0] and i.start < judged[1]]
    tp_events = 0
    false_events: list[Event] = []
    for e in events:
        if any(_matches(e, i, grace) for i in incs):
            tp_events += 1
        else:
            false_events.append(e)
    detected, delays = 0, []
    detected_big, n_big = 0, 0
    per_incident: list[dict[str, Any]] = []
    for k, inc in enumerate(incs):
        hits = [e for e in events if _matches(e, inc, grace)]
        volume = incident_volume.get(k, 0.0) if incident_volume is not None else None
        big = volume is not None and volume >= min_volume_per_hour
        n_big += big
        delay: float | None = None
        if hits:
            detected += 1
            detected_big += big
            first = min(hits, key=lambda e: e.start)
            delay = max((first.start + bucket - inc.start) / bucket, 0.0)
            delay = delay if first.start >= inc.start else 0.0
            delays.append(delay)
        per_incident.append(
            {
                "operation_name": inc.operation_name,
                "sdk_version": inc.sdk_version,
                "metric": inc.metric,
                "start": inc.start.isoformat(),
                "volume_per_hour": volume,
                "delay_buckets": delay,
                "delay_minutes": None if delay is None else delay * bucket / timedelta(minutes=1),
            }
        )
    days = max((judged[1] - judged[0]) / timedelta(days=1), 1e-9)
    n_ev = len(events)
    precision = tp_events / n_ev if n_ev else (1.0 if not incs else 0.0)
    recall = detected / len(incs) if incs else float("nan")
    f1 = (
        2 * precision * recall / (precision + recall)
        if incs and (precision + recall) > 0
        else (float("nan") if not incs else 0.0)
    )
    fa_day = len(false_events) / days
    return {
        "incidents": len(incs),
        "detected": detected,
        "events": n_ev,
        "true_events": tp_events,
        "false_events": len(false_events),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "false_per_day": fa_day,
        "false_per_day_per_100": fa_day / max(partitions, 1) * 100 if partitions else None,
        "median_delay_buckets": float(np.median(delays)) if delays else float("nan"),
        "median_delay_minutes": (
            float(np.median(delays)) * bucket / timedelta(minutes=1) if delays else float("nan")
        ),
        "recall_big": detected_big / n_big if n_big else float("nan"),
        "incidents_big": n_big,
        "per_incident": per_incident,
        "false_alerts": [
            f"{e.operation_name}|{e.sdk_version or '*'}|{e.metric} {e.start:%m-%d %H:%M}+{e.buckets}"
            for e in false_events[:20]
        ],
    }


def incident_volumes(ds: Dataset, bucket: timedelta) -> dict[int, float]:
    """Operations per hour of each incident's partition over the day before it started."""
    s = ds.aggs.stats
    out: dict[int, float] = {}
    for k, inc in enumerate(ds.incidents):
        lo = pd.Timestamp(inc.start) - pd.Timedelta(days=1)
        sel = (
            (s["operation_name"] == inc.operation_name)
            & (s["bucket_start"] >= lo)
            & (s["bucket_start"] < pd.Timestamp(inc.end))
        )
        if inc.sdk_version is not None:
            sel &= s["sdk_version"] == inc.sdk_version
        rows = s.loc[sel]
        # During the incident for a new version (no history before it), else the day before.
        before = rows[rows["bucket_start"] < pd.Timestamp(inc.start)]
        use = before if len(before) else rows
        hours = (
            (pd.Timestamp(inc.start) - lo) / pd.Timedelta(hours=1)
            if len(before)
            else max((inc.end - inc.start) / timedelta(hours=1), 1e-9)
        )
        out[k] = float(use["calls"].sum()) / hours
    return out


class _MemoryBackend:
    """A :class:`~detector.store.backend.Backend` in memory (replays keep models off disk)."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def read(self, key: str) -> tuple[bytes, str] | None:
        data = self.blobs.get(key)
        return None if data is None else (data, str(hash(data)))

    def write(self, key: str, data: bytes, *, if_version: str | None = None) -> str:
        self.blobs[key] = data
        return str(hash(data))

    def delete(self, key: str) -> None:
        self.blobs.pop(key, None)

    def list(self, prefix: str = "") -> Any:
        return iter(sorted(k for k in self.blobs if k.startswith(prefix)))


def replay(
    ds: Dataset,
    *,
    policy: DetectionPolicy,
    step: timedelta = timedelta(hours=1),
    backend: Backend | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[tuple[str, str | None, str, datetime]], dict[str, Any]]:
    """Run :func:`detector.detect.engine.detect` over the judged span in windows of ``step``.

    Returns the alerting buckets and replay statistics (runs, seconds, partitions, reasons).
    ``progress`` gets a line per window judged.
    """
    from detector.detect.engine import detect
    from detector.store.engine_state import EngineState
    from detector.store.models import ModelStore

    store = ModelStore(backend if backend is not None else _MemoryBackend())
    state = EngineState()
    buckets: list[tuple[str, str | None, str, datetime]] = []
    t = ds.warmup_end
    runs, t0 = 0, time.perf_counter()
    partitions = 0
    reasons: dict[str, int] = {}
    while t < ds.end:
        end = min(t + step, ds.end)
        res = detect(
            ds.aggs,
            window=(t, end),
            policy=policy,
            now=end,
            maintenance=ds.maintenance,
            model_store=store,
            state=state,
        )
        state = res.state
        buckets.extend(res.alert_buckets)
        partitions = max(partitions, int(res.stats.get("partitions", 0)))
        for k, v in res.stats.get("candidate_buckets", {}).items():
            reasons[k] = reasons.get(k, 0) + v
        runs += 1
        t = end
        if progress:
            progress(
                f"judged {runs} windows up to {end:%Y-%m-%d %H:%M}, {len(buckets)} alert buckets"
            )
    return buckets, {
        "runs": runs,
        "seconds": time.perf_counter() - t0,
        "partitions": partitions,
        "candidate_buckets": reasons,
    }


@dataclass
class EvaluationReport:
    """Scores of one or more data sets (one row each), with the settings used."""

    rows: list[dict[str, Any]]
    settings: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v

        out = clean({"rows": self.rows, "settings": self.settings})
        assert isinstance(out, dict)
        return out

    def to_table(self) -> str:
        """A fixed-width table, one line per data set (and detector), then what is behind its
        figures: each labelled incident, detected after how many buckets or missed, and each
        false alert."""
        lines = [format_table(self.rows, TABLE_COLUMNS, left=("dataset", "detector"))]
        for row in self.rows:
            lines += incident_lines(row, prefix=f"{row['dataset']}: " if len(self.rows) > 1 else "")
        return "\n".join(lines)


def incident_lines(row: dict[str, Any], *, prefix: str = "") -> list[str]:
    """One line per labelled incident of a :func:`score_events` row (detected after how many
    buckets, or missed) and one per false alert (``operation|version|metric MM-DD HH:MM+buckets``).
    """
    out = []
    for inc in row.get("per_incident", []):
        delay, vol = inc["delay_buckets"], inc.get("volume_per_hour")
        what = "MISSED" if delay is None else f"detected after {delay:.0f} buckets"
        if delay is not None and inc.get("delay_minutes") is not None:
            what += f" ({inc['delay_minutes']:.0f} min)"
        ops = "" if vol is None else f" ({vol:.0f} ops/h in the partition)"
        out.append(
            f"{prefix}incident {inc['operation_name']}|{inc['sdk_version'] or '*'}|"
            f"{inc['metric']} from {inc['start']}{ops}: {what}"
        )
    out += [f"{prefix}false alert {fa}" for fa in row.get("false_alerts", [])]
    return out


#: (header, row key, format, width) of the evaluation metrics, shared with the benchmarks.
METRIC_COLUMNS: list[tuple[str, str, str, int]] = [
    ("dataset", "dataset", "{}", 26),
    ("detector", "detector", "{}", 14),
    ("inc", "incidents", "{:d}", 4),
    ("det", "detected", "{:d}", 4),
    ("events", "events", "{:d}", 6),
    ("FP", "false_events", "{:d}", 4),
    ("prec", "precision", "{:.2f}", 5),
    ("recall", "recall", "{:.2f}", 6),
    ("F1", "f1", "{:.2f}", 5),
    ("FA/day", "false_per_day", "{:.2f}", 6),
    ("FA/d/100p", "false_per_day_per_100", "{:.2f}", 9),
    ("delay", "median_delay_buckets", "{:.1f}", 5),
    ("sec", "seconds", "{:.1f}", 6),
]

#: The columns ``acs-detector evaluate`` prints: the median delay in minutes beside buckets
#: (METRIC_COLUMNS stays as the benchmarks index it).
TABLE_COLUMNS: list[tuple[str, str, str, int]] = [
    *METRIC_COLUMNS[:-2],
    ("delay buckets", "median_delay_buckets", "{:.1f}", 13),
    ("delay min", "median_delay_minutes", "{:.0f}", 9),
    METRIC_COLUMNS[-1],
]


def format_table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[tuple[str, str, str, int]],
    *,
    left: Sequence[str] = (),
    group_by: str | None = None,
) -> str:
    """Fixed-width text table; missing or non-finite values print as ``-``.

    ``columns`` are (header, row key, format, width); headers in ``left`` are left-aligned;
    a blank line separates groups of consecutive rows with the same ``group_by`` value.
    """

    def cell(text: str, header: str, width: int) -> str:
        return f"{text:<{width}}" if header in left else f"{text:>{width}}"

    lines = [" ".join(cell(h, h, w) for h, _, _, w in columns)]
    last = None
    for row in rows:
        if group_by is not None and last is not None and row.get(group_by) != last:
            lines.append("")
        last = row.get(group_by) if group_by is not None else None
        cells = []
        for header, key, fmt, width in columns:
            v = row.get(key)
            if v is None or (isinstance(v, float) and not math.isfinite(v)):
                text = "-"
            else:
                try:
                    text = fmt.format(v)
                except (ValueError, TypeError):
                    text = str(v)
            cells.append(cell(text, header, width))
        lines.append(" ".join(cells))
    return "\n".join(lines)


def evaluate(
    data_dir: str | Path,
    *,
    policy: DetectionPolicy | None = None,
    seed: int = 0,
    step: timedelta = timedelta(hours=1),
    warmup: timedelta | None = None,
    grace: timedelta = timedelta(minutes=30),
    progress: Callable[[str], None] | None = None,
) -> EvaluationReport:
    """Replay the detector over ``data_dir`` and score it against its ``incidents.json``.

    Parameters
    ----------
    data_dir
        A directory written by ``acs-detector simulate`` (or with the same files).
    policy
        Detection policy; default :class:`DetectionPolicy` with ``seed``.
    seed
        Forest seed when ``policy`` is None.
    step
        Replay window (the scheduled job's period).
    warmup
        Data not judged at the start; default ``simulation.json``'s warm-up (else 3 days).
    grace
        An event still matches an incident if it starts within this long after its end.

    Returns
    -------
    EvaluationReport
        One row (``to_table()``, ``to_json()``).
    """
    policy = policy or DetectionPolicy(seed=seed)
    t0 = time.perf_counter()
    ds = load_dataset(data_dir, bucket=policy.bucket, warmup=warmup)
    load_s = time.perf_counter() - t0
    if progress:
        progress(f"loaded {ds.name}: {len(ds.aggs.stats)} bucket rows in {load_s:.1f}s")
    buckets, info = replay(ds, policy=policy, step=step, progress=progress)
    events = events_from_buckets(buckets, bucket=policy.bucket, max_gap=alert_gap(policy))
    row = score_events(
        events,
        ds.incidents,
        judged=(ds.warmup_end, ds.end),
        bucket=policy.bucket,
        grace=grace,
        partitions=info["partitions"],
        incident_volume=incident_volumes(ds, policy.bucket),
    )
    row.update(
        dataset=ds.name,
        scenario=ds.meta.get("scenario"),
        detector="acs-detector",
        seconds=info["seconds"],
        load_seconds=load_s,
        runs=info["runs"],
        partitions=info["partitions"],
        candidate_buckets=info["candidate_buckets"],
        events_detail=[
            asdict(e) | {"start": e.start.isoformat(), "end": e.end.isoformat()}
            for e in events[:50]
        ],
    )
    settings = {
        "step_seconds": step.total_seconds(),
        "grace_seconds": grace.total_seconds(),
        "judged": [ds.warmup_end.isoformat(), ds.end.isoformat()],
        "policy": policy.to_json(),
        "delay_measured_from": "incident start to the end of the first alerting bucket (event time)",
    }
    return EvaluationReport([row], settings)


#: The parts ``evaluate --ablate NAME`` can leave out (each a bool field of the policy).
ABLATIONS: tuple[str, ...] = ("forest",)


def _incident_key(inc: dict[str, Any]) -> str:
    return f"{inc['operation_name']}|{inc['sdk_version'] or '*'}|{inc['metric']} {inc['start']}"


@dataclass
class Ablation:
    """Two evaluations of one data set, with and without a part (:data:`ABLATIONS`)."""

    part: str
    with_part: EvaluationReport
    without_part: EvaluationReport

    def summary(self) -> dict[str, Any]:
        """What the part adds: incidents found only with it (and lost with it), false alerts
        only with it (and only without), per-incident delay with minus without (minutes)."""
        row_with, row_without = self.with_part.rows[0], self.without_part.rows[0]
        inc_with = {_incident_key(i): i for i in row_with["per_incident"]}
        inc_without = {_incident_key(i): i for i in row_without["per_incident"]}
        found_with = {k for k, i in inc_with.items() if i["delay_buckets"] is not None}
        found_without = {k for k, i in inc_without.items() if i["delay_buckets"] is not None}
        delays = {
            k: inc_with[k]["delay_minutes"] - inc_without[k]["delay_minutes"]
            for k in sorted(found_with & found_without)
        }
        fa_with, fa_without = set(row_with["false_alerts"]), set(row_without["false_alerts"])
        return {
            "part": self.part,
            "found_only_with": sorted(found_with - found_without),
            "found_only_without": sorted(found_without - found_with),
            "false_alerts_only_with": sorted(fa_with - fa_without),
            "false_alerts_only_without": sorted(fa_without - fa_with),
            "delay_change_minutes": delays,
            "f1": {"with": row_with["f1"], "without": row_without["f1"]},
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "summary": EvaluationReport([self.summary()], {}).to_json()["rows"][0],
            "with": self.with_part.to_json(),
            "without": self.without_part.to_json(),
        }

    def to_table(self) -> str:
        """Both evaluations' tables (one line each), then what the part adds, in lines."""
        rows = [
            self.with_part.rows[0] | {"detector": f"with {self.part}"},
            self.without_part.rows[0] | {"detector": f"no {self.part}"},
        ]
        lines = [format_table(rows, TABLE_COLUMNS, left=("dataset", "detector")), ""]
        s = self.summary()
        p = self.part
        lines.append(f"what the {p} adds:")
        for key, words in (
            ("found_only_with", f"incidents found only with the {p}"),
            ("found_only_without", f"incidents found only without the {p}"),
            ("false_alerts_only_with", f"false alerts only with the {p}"),
            ("false_alerts_only_without", f"false alerts only without the {p}"),
        ):
            lines.append(f"  {words}: {len(s[key])}")
            lines += [f"    {x}" for x in s[key]]
        changed = {k: v for k, v in s["delay_change_minutes"].items() if v}
        lines.append(f"  delay changes (minutes, with - without): {len(changed)}")
        lines += [f"    {k}: {v:+.0f}" for k, v in changed.items()]
        return "\n".join(lines)


def ablate(
    data_dir: str | Path,
    *,
    part: str = "forest",
    policy: DetectionPolicy | None = None,
    step: timedelta = timedelta(hours=1),
    progress: Callable[[str], None] | None = None,
) -> Ablation:
    """Evaluate ``data_dir`` with ``policy`` (its ``part`` switched on) and without ``part``.

    Raises
    ------
    ValueError
        ``part`` is not one of :data:`ABLATIONS`.
    """
    if part not in ABLATIONS:
        raise ValueError(f"--ablate: unknown part {part!r}; choose from {', '.join(ABLATIONS)}")
    from dataclasses import replace

    base = policy or DetectionPolicy()
    on, off = replace(base, forest=True), replace(base, forest=False)
    return Ablation(
        part,
        evaluate(data_dir, policy=on, step=step, progress=progress),
        evaluate(data_dir, policy=off, step=step, progress=progress),
    )
