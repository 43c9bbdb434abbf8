"""The job: wires source -> aggregate -> store -> detect -> lifecycle -> notify, and reports.

Consumes a validated :class:`~detector.config.Config` and ``now`` (read by the CLI only);
produces a JSON-able run report and, as side effects through the stages that own them, the
bucket store, alert state, outbox, run reports and notifications.

Two modes (design §1.8), one way of judging: every window is judged in steps of
``detection.step`` (1 h), each step as the scheduled run ending it would have judged it (its
trailing baseline, the engine state and forest schedule of the steps before it; see
:func:`detector.engine.detect_steps`). A scheduled run is usually one step.

* **scheduled** (``start``/``end`` not given): read what *arrived* since the stored watermark up
  to ``now - delay``, merge it into the bucket history (atomically, with the new watermark),
  then judge every bucket not judged yet (from the stored ``judged_until``; the first run
  ``detection.max_window`` back). A missed run is caught up on the next one, in steps, up to
  ``detection.max_catchup`` back; a span beyond that is left out *loudly* (a warning in the
  report and summary, and the ``unjudged_span`` self-health notice).
* **manual** (``--start/--end``): read the rows that arrived in ``[start - baseline, end +
  lateness)`` from the source, judge ``[start, end)`` in steps (stretches with no data within a
  baseline skipped, stopping where the data ends), and leave the bucket store and the
  scheduled runs' forest alone (merging again would count rows twice). Alert state still
  prevents a second notification for what was already sent (``suppressed_duplicate``).

Memory follows one step and its baseline, never a dense array over the window: scheduled
steps read a rolling buffer of the store's day files (:class:`_Rolling`); a rerun's steps
select their rows from what it read (bucket aggregates: as large as the data, not the window).

Crash safety: the bucket history and its watermark move together in one manifest write; the
alert state is saved after delivery; ``judged_until`` last. A crash in between makes the next
run judge the same buckets again, which the alert lifecycle turns into no new notification.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from detector.anomaly import Anomaly
from detector.config import Config
from detector.errors import ConfigError, DetectorError, PartialResultError, SourceError
from detector.escape import for_terminal
from detector.schema import BucketAggregates
from detector.store.backend import Backend, LocalBackend
from detector.words import log_analytics_scope

__all__ = [
    "backfill",
    "console_summary",
    "demo",
    "evaluate_dir",
    "open_backend",
    "run_job",
]

log = logging.getLogger("detector.pipeline")

PIPELINE_KEY = "pipeline.json"


# --------------------------------------------------------------------------------------------
# Wiring helpers
# --------------------------------------------------------------------------------------------


def open_backend(cfg: Config) -> Backend:
    """The store backend: Azure Blob Storage when ``state.url`` is set, else the state path."""
    url = cfg.state.get("url")
    if url:
        from detector.store.blob import open_backend as open_blob

        return open_blob(url)
    return LocalBackend(cfg.state_path)


def _floor(ts: datetime, width: timedelta) -> datetime:
    secs = int(width.total_seconds())
    epoch = int(ts.timestamp())
    return datetime.fromtimestamp(epoch - epoch % secs, UTC)


def _ceil(ts: datetime, width: timedelta) -> datetime:
    floored = _floor(ts, width)
    return floored if floored == ts else floored + width


def detection_policy(cfg: Config) -> Any:
    """The engine's DetectionPolicy from ``[detection]``; unknown keys are config errors."""
    from detector.decide import DetectionPolicy

    try:
        return DetectionPolicy.from_mapping(dict(cfg.detection))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"detection: {exc}", path=str(cfg.path) if cfg.path else None) from None


def routes(cfg: Config) -> list[Any]:
    """``[[notify.route]]`` as the alerting stage's Route objects."""
    from detector.notify import Route

    return [
        Route(
            name=r.name,
            urls=r.urls,
            min_severity=r.min_severity,
            operations=r.operations or None,
            metrics=r.metrics or None,
            send_resolved=r.send_resolved,
            health=r.health,
            max_items=r.max_items,
            timeout=r.timeout,
        )
        for r in cfg.routes
    ]


def _maintenance(cfg: Config) -> list[tuple[datetime, datetime, str | None]]:
    return [(w.start, w.end, w.operation_name) for w in cfg.maintenance]


class _Source:
    """Adapter over the configured source: ``read(arrival_window, bucket)`` -> aggregates."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.kind = cfg.source["kind"]
        self._la: Any = None

    def read(
        self,
        arrival_window: tuple[datetime, datetime],
        bucket: timedelta,
        progress: Callable[[str], None] | None = None,
    ) -> BucketAggregates:
        if self.kind == "file":
            from detector.source.files import read_aggregates

            return read_aggregates(
                self.cfg.source_path(),
                bucket=bucket,
                arrival_window=arrival_window,
                threads=self.cfg.source.get("threads"),
                memory_limit=self.cfg.source.get("memory_limit"),
                max_partitions=self.cfg.source.get("max_partitions"),
            )

        def chunk_progress(p: Any) -> None:
            if progress is not None:
                progress(
                    f"chunk {p.done}/{p.total} {_iso(p.start)} .. {_iso(p.end)}: "
                    f"{p.rows:,} result rows, {p.rows_read:,} log rows so far"
                )

        return self._log_analytics().read_aggregates(
            arrival_window, bucket=bucket, progress=chunk_progress
        )

    def _log_analytics(self) -> Any:
        if self._la is None:
            from detector.source.log_analytics import LogAnalyticsSettings, LogAnalyticsSource

            self._la = LogAnalyticsSource(LogAnalyticsSettings.from_config(self.cfg.source))
        return self._la

    def stats(self) -> dict[str, Any]:
        if self._la is not None and hasattr(self._la, "stats"):
            return {"queries": self._la.stats.as_dict()}
        return {}

    def drill_down(self, anomalies: list[Anomaly], window: tuple[datetime, datetime]) -> None:
        """Fill top result codes and example CallIds (Log Analytics only; best effort)."""
        if self.kind != "log_analytics" or not anomalies:
            return
        try:
            found = self._log_analytics().drill_down(anomalies)
        except DetectorError as exc:
            log.warning("drill-down failed, alerts go out without it: %s", exc)
            return
        for a in anomalies:
            extra = found.get(a.fingerprint) or {}
            a.top_result_codes = list(extra.get("top_result_codes", a.top_result_codes))
            a.example_call_ids = list(extra.get("example_call_ids", a.example_call_ids))


@contextmanager
def _lock(cfg: Config, backend: Backend, enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    from detector.lock import JobLock

    with JobLock.for_backend(backend, cfg.state_path):
        yield


def _read_pipeline_state(backend: Backend) -> dict[str, Any]:
    found = backend.read(PIPELINE_KEY)
    if not found:
        return {}
    try:
        data = json.loads(found[0])
    except ValueError:
        log.warning("%s is unreadable; starting from an empty pipeline state", PIPELINE_KEY)
        return {}
    return data if isinstance(data, dict) else {}


def _iso(ts: datetime | None) -> str | None:
    return None if ts is None else ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _agg_summary(aggs: BucketAggregates) -> dict[str, Any]:
    stats = aggs.stats
    return {
        "rows_read": int(aggs.rows_read),
        "operations": int(stats["calls"].sum()) if len(stats) else 0,
        "failures": int(stats["failures"].sum()) if len(stats) else 0,
        "buckets": len(stats),
        "partitions": int(stats.groupby(["operation_name", "sdk_version"]).ngroups)
        if len(stats)
        else 0,
        "dropped": {k: int(v) for k, v in sorted(aggs.dropped.items()) if v},
        "flagged": {k: int(v) for k, v in sorted(aggs.flagged.items()) if v},
    }


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def run_job(
    cfg: Config,
    *,
    now: datetime,
    start: datetime | None = None,
    end: datetime | None = None,
    dry_run: bool = False,
    notify: bool = True,
    output: Path | None = None,
    report_path: Path | None = None,
    html_path: Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the job once; return the run report (also written under ``<state>/reports/``).

    Raises the stage errors (SourceError, StateError, LockHeldError, ConfigError, InputError);
    a delivery failure does not raise: the report says ``delivery_failed`` after everything
    was saved (the CLI exits 1).
    """
    from detector.store.buckets import BucketStore
    from detector.store.engine_state import load_engine_state, save_engine_state

    t0 = time.perf_counter()
    preload = _preload(_ENGINE_MODULES)
    timings: dict[str, float] = {}
    bucket: timedelta = cfg.detection["bucket"]
    policy = detection_policy(cfg)
    backend = open_backend(cfg)
    source = _Source(cfg)
    manual = start is not None and end is not None
    report: dict[str, Any] = {
        "run_id": uuid.uuid4().hex[:12],
        "mode": "manual" if manual else "scheduled",
        "dry_run": dry_run,
        "notify": notify and not dry_run,
        "now": _iso(now),
        "config": str(cfg.path) if cfg.path else None,
        "log_analytics": log_analytics_scope(cfg.source),  # for "Open in Log Analytics" links
    }
    say = _progress_printer(progress)

    with _lock(cfg, backend, enabled=not dry_run):
        store = BucketStore(backend)
        pstate = _read_pipeline_state(backend)
        t = time.perf_counter()
        try:
            plan = _read(
                cfg, source, store, pstate, now=now, start=start, end=end, dry_run=dry_run, say=say
            )
        except SourceError as exc:
            if not dry_run:
                _record_source_error(cfg, backend, exc, now=now, notify=notify)
            raise
        timings["source"] = time.perf_counter() - t
        judge, arrival = plan.judge, plan.arrival
        preload.join()  # then the imports below are lookups (or raise the real ImportError)
        from detector.engine import detect_steps, plan_steps
        from detector.notify import run_alerting
        from detector.notify.evaluated import CHART_SPAN

        report["window"] = {"start": _iso(judge[0]), "end": _iso(judge[1])}
        report["arrival_window"] = {"start": _iso(arrival[0]), "end": _iso(arrival[1])}
        report["source"] = {"kind": source.kind, **_agg_summary(plan.fresh), **source.stats()}
        report["warnings"] = list(plan.warnings)
        for warning in plan.warnings:
            log.warning("%s", warning)

        anomalies: list[Anomaly] = []
        history: BucketAggregates | None = None
        steps: list[tuple[datetime, datetime]] = []
        if judge[0] < judge[1]:
            try:
                steps = plan_steps(
                    judge,
                    cfg.detection["step"],
                    bucket=bucket,
                    data=plan.data,
                    reach=cfg.detection["baseline"],
                )
            except ValueError as exc:
                raise ConfigError(f"detection.step: {exc}") from None
            if plan.data is not None and len(plan.data):
                # A file ends where its export ended, not in an outage: judge up to its end.
                last = pd.Timestamp(plan.data[-1], tz="UTC").to_pydatetime()
                steps = [st for st in steps if st[0] <= last]
        if steps:
            t = time.perf_counter()
            say(
                f"judging {_iso(steps[0][0])} .. {_iso(steps[-1][1])} in {len(steps)} "
                f"step{'s' if len(steps) > 1 else ''} of at most {cfg.detection['step']}"
            )
            engine_state, engine_version = load_engine_state(backend)
            result = detect_steps(
                plan.history,
                window=judge,
                steps=steps,
                policy=policy,
                now=now,
                delay=cfg.detection["delay"],
                maintenance=_maintenance(cfg),
                model_store=_model_store(cfg, backend, scratch=manual or dry_run),
                state=engine_state,
                progress=_step_printer(progress) if len(steps) > 1 else None,
            )
            timings["detect"] = time.perf_counter() - t
            anomalies = list(result.anomalies)
            report["detection"] = _jsonable(result.stats)
            report["candidates"] = _jsonable(result.candidates)
            if not dry_run:
                save_engine_state(backend, result.state, if_version=engine_version)
            source.drill_down(anomalies, judge)
            # What alerting reads: the end of the judged window (its current values) and a
            # day before it for the charts, so its filters scan a day or two, not the window.
            since = max(judge[0], judge[1] - _ALERT_SPAN) - CHART_SPAN
            history = _between(plan.history(since, judge[1]), since, judge[1])
        else:
            report["detection"] = {"skipped": "nothing new to judge", "steps": 0}
            report["candidates"] = []
        report["anomalies"] = [a.to_json() for a in anomalies]

        t = time.perf_counter()
        delivery = run_alerting(
            anomalies,
            evaluated=report["candidates"],
            routes=routes(cfg),
            alerting=cfg.alerting,
            backend=backend,
            history=history,
            # A manual rerun judges a past window: its lifecycle clock is the window's end.
            now=judge[1] if manual else now,
            dry_run=dry_run,
            send=notify and not dry_run,
            report=report,
            window=judge,
            report_url_or_path=report_link(cfg, report),
            bucket=bucket,
        )
        timings["alert"] = time.perf_counter() - t
        report["alerts"] = _jsonable(delivery)
        report["delivery_failed"] = bool(delivery.get("failed") or delivery.get("undeliverable"))

        timings["total"] = time.perf_counter() - t0
        report["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
        series: dict[str, Any] = {}
        if history is not None and anomalies and (html_path is not None or not dry_run):
            from detector.notify.evaluated import chart_history

            # One chart per alert, drawn around its most deviating window.
            worst_first = sorted(anomalies, key=lambda a: -_deviation(a.to_json()))
            series = chart_history(history, worst_first, now=judge[1])
        # Outputs before the run is recorded: a crash in between reruns the window and
        # writes them again, where the other order would lose this run's anomalies file.
        _write_outputs(cfg, report, anomalies, output, report_path, html_path, series, dry_run)

        if not dry_run:
            pstate["last_run"] = {
                "run_id": report["run_id"],
                "at": _iso(now),
                "mode": report["mode"],
                "window": report["window"],
                "anomalies": len(anomalies),
            }
            if not manual:
                pstate["judged_until"] = _iso(judge[1])
            backend.write(PIPELINE_KEY, json.dumps(pstate, indent=2).encode())
            _prune_reports(backend, cfg.alerting.get("keep_reports"), now=now)

    return report


# What the stages after the source import: scikit-learn, skops, SciPy and apprise, about 3 s of
# a cold start.
_ENGINE_MODULES = (
    "detector.engine",
    "detector.score",
    "detector.store.models",
    "detector.notify.stage",
    "detector.notify.deliver",
    "detector.notify.evaluated",
)


def _preload(modules: Sequence[str]) -> threading.Thread:
    """Import ``modules`` on a thread while the caller reads the source.

    DuckDB's query and the Log Analytics round trip release the GIL, so a cold start's imports
    overlap the read instead of following it. A failed import is left for the caller's own
    import statement to raise, with its real traceback. Not a daemon: a run that fails before
    joining it (lock held, source error) waits for the imports at exit rather than having
    the interpreter shut down under a half-finished import.
    """

    def load() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - re-raised by the caller's import
                return

    thread = threading.Thread(target=load, name="acs-detector-preload")
    thread.start()
    return thread


def _since(aggs: BucketAggregates, start: datetime) -> BucketAggregates:
    """``aggs`` with the buckets before ``start`` left out (counts of dropped rows kept)."""
    at = pd.Timestamp(start)
    stats = aggs.stats[aggs.stats["bucket_start"] >= at]
    hist = aggs.hist[aggs.hist["bucket_start"] >= at] if aggs.hist is not None else aggs.hist
    return dataclasses.replace(aggs, stats=stats, hist=hist)


@dataclasses.dataclass
class _Plan:
    """What a run judges, from where: the source's fresh aggregates (for the report), a
    ``history(start, end)`` loader (every bucket in the range, maybe more), the judged and
    arrival windows, the bucket starts that hold data when known (a manual rerun skips empty
    stretches), and the warnings the run summary must carry (a span left unjudged)."""

    fresh: BucketAggregates
    history: Callable[[datetime, datetime], BucketAggregates]
    judge: tuple[datetime, datetime]
    arrival: tuple[datetime, datetime]
    data: Any = None  # sorted datetime64 bucket starts, or None (the store: not known)
    warnings: list[str] = dataclasses.field(default_factory=list)


def _read(
    cfg: Config,
    source: _Source,
    store: Any,
    pstate: dict[str, Any],
    *,
    now: datetime,
    start: datetime | None,
    end: datetime | None,
    dry_run: bool,
    say: Callable[[str], None],
) -> _Plan:
    """Read the source and plan the judging. Scheduled runs merge the fresh aggregates into
    the store and judge from it; a manual rerun judges what it read and leaves the store."""
    from detector import aggregate

    bucket: timedelta = cfg.detection["bucket"]
    baseline: timedelta = cfg.detection["baseline"]
    if start is not None and end is not None:
        judge = (_floor(start, bucket), _ceil(end, bucket))
        arrival = (judge[0] - baseline, judge[1] + cfg.detection["lateness"])
        say(f"reading {_iso(arrival[0])} .. {_iso(arrival[1])} from the {source.kind} source")
        fresh = source.read(arrival, bucket, progress=say)
        data = pd.unique(fresh.stats["bucket_start"]) if len(fresh.stats) else []
        data = _sorted_times(data)

        def read(a: datetime, b: datetime) -> BucketAggregates:
            # What was read is in memory already: each step selects its own rows from it
            # (a copy into a rolling buffer would only add one).
            return fresh

        return _Plan(fresh, read, judge, arrival, data)

    arrival_end = now - cfg.detection["delay"]
    watermark = store.watermark
    arrival_start = watermark or arrival_end - baseline - cfg.detection["lateness"]
    arrival = (arrival_start, arrival_end)
    if arrival_start < arrival_end:
        say(f"reading arrivals {_iso(arrival_start)} .. {_iso(arrival_end)}")
        try:
            fresh = source.read(arrival, bucket, progress=say)
        except PartialResultError as exc:
            # Keep what was read completely: the watermark advances only over it, and
            # the next run resumes at the first window that was not read whole.
            done = getattr(exc, "completed_until", None)
            if not dry_run and done is not None and done > arrival_start:
                store.merge(exc.aggregates, watermark=done)
            raise
    else:
        fresh = aggregate.merge()
    judge_end = _floor(arrival_end, bucket)
    judged_until = pstate.get("judged_until")
    judge_start = (
        datetime.fromisoformat(judged_until.replace("Z", "+00:00"))
        if judged_until
        else judge_end - cfg.detection["max_window"]
    )
    warnings: list[str] = []
    # A missed run is caught up in steps, up to max_catchup back; beyond it the span is
    # left unjudged, and the run says so (warning, report, self-health).
    cap = judge_end - cfg.detection["max_catchup"]
    if judge_start < cap:
        warnings.append(
            f"catch-up capped: {_iso(judge_start)} .. {_iso(cap)} was NOT judged "
            f"(down longer than detection.max_catchup = {cfg.detection['max_catchup']}); "
            "rerun it with `acs-detector run --start ... --end ...`"
        )
        judge_start = cap
    judge = (judge_start, judge_end)
    if not dry_run and arrival_start < arrival_end:
        store.merge(fresh, watermark=arrival_end)
        load = store.load
    else:

        def load(a: datetime, b: datetime) -> BucketAggregates:
            return aggregate.merge(store.load(a, b), _between(fresh, a, b))

    return _Plan(fresh, _Rolling(load, limit=judge_end).get, judge, arrival, None, warnings)


#: How much of the judged window alerting reads back for current values (plus a chart span).
_ALERT_SPAN = timedelta(days=1)


def _sorted_times(values: Any) -> Any:
    """Bucket starts as a sorted ``datetime64[ns]`` array (UTC, naive)."""
    import numpy as np

    times = pd.DatetimeIndex(values)
    if times.tz is not None:
        times = times.tz_convert("UTC").tz_localize(None)
    return np.sort(times.to_numpy(dtype="datetime64[ns]"))


def _between(aggs: BucketAggregates, start: datetime, end: datetime) -> BucketAggregates:
    """The rows of ``aggs`` with ``start <= bucket_start < end`` (counters left out)."""
    lo, hi = pd.Timestamp(start), pd.Timestamp(end)
    stats = aggs.stats
    stats = stats[(stats["bucket_start"] >= lo) & (stats["bucket_start"] < hi)]
    hist = aggs.hist
    if hist is not None:
        hist = hist[(hist["bucket_start"] >= lo) & (hist["bucket_start"] < hi)]
    return BucketAggregates(stats=stats, hist=hist)


class _Rolling:
    """The history steps read, a chunk ahead at a time: ``get(start, end)`` returns the
    buffer with every bucket in ``[start, end)``, forgetting what is before ``start``.

    Steps move forward, so each bucket is loaded once (a day file of the store, a slice of a
    rerun's read) and the buffer holds one baseline plus at most ``chunk``: memory follows
    the step and its baseline, not the window. A request that goes back loads afresh.
    """

    def __init__(
        self,
        load: Callable[[datetime, datetime], BucketAggregates],
        *,
        limit: datetime,
        chunk: timedelta = timedelta(days=1),
    ) -> None:
        self._load, self._limit, self._chunk = load, limit, chunk
        self._lo: datetime | None = None
        self._hi: datetime | None = None
        self._buf: BucketAggregates | None = None

    def get(self, start: datetime, end: datetime) -> BucketAggregates:
        """Every bucket in ``[start, end)``, and possibly some after ``end``."""
        if self._buf is None or self._lo is None or self._hi is None or start < self._lo:
            self._lo = self._hi = start
            self._buf = self._load(start, start)  # an empty frame with the right columns
        if end > self._hi:
            upto = max(end, min(self._hi + self._chunk, self._limit))
            more = self._load(self._hi, upto)
            self._buf = _concat(self._buf, more)
            self._hi = upto
        if start > self._lo:
            self._buf = _since(self._buf, start)
            self._lo = start
        return self._buf  # (buckets after ``end`` too: detect selects its own range)


def _concat(a: BucketAggregates, b: BucketAggregates) -> BucketAggregates:
    """Two loads of disjoint bucket ranges, ``a`` before ``b``, as one."""
    if not len(a.stats):
        return b
    if not len(b.stats):
        return a
    stats = pd.concat([a.stats, b.stats], ignore_index=True)
    hist = a.hist
    if b.hist is not None and len(b.hist):
        hist = b.hist if a.hist is None or not len(a.hist) else pd.concat([a.hist, b.hist])
    return BucketAggregates(stats=stats, hist=hist)


def _record_source_error(
    cfg: Config, backend: Backend, exc: Exception, *, now: datetime, notify: bool
) -> None:
    """Record the failed run so self-health can tell "source failing N runs in a row"."""
    from detector.notify import record_failed_run

    try:
        record_failed_run(
            backend=backend,
            routes=routes(cfg) if notify else [],
            alerting=cfg.alerting,
            now=now,
            error=str(exc).splitlines()[0][:300],
        )
    except DetectorError as inner:  # the source error is the one to report
        log.warning("could not record the failed run: %s", inner)


def _model_store(cfg: Config, backend: Backend, *, scratch: bool = False) -> Any:
    """Where forests are kept. ``scratch``: in memory for this run only (a manual rerun or a
    dry run refits on its own steps' schedule and leaves the scheduled runs' model alone)."""
    from detector.store.models import ModelStore

    if scratch:
        from detector.store.backend import MemoryBackend

        return ModelStore(MemoryBackend(), prefix="models")
    if cfg.state.get("url"):
        return ModelStore(backend, prefix="models")
    models = cfg.models_path
    return ModelStore(LocalBackend(models.parent), prefix=models.name)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _write_outputs(
    cfg: Config,
    report: dict[str, Any],
    anomalies: list[Anomaly],
    output: Path | None,
    report_path: Path | None,
    html_path: Path | None,
    series: dict[str, Any],
    dry_run: bool,
) -> None:
    lines = "".join(json.dumps(a.to_json()) + "\n" for a in anomalies)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(lines)
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report, indent=2))
    if not dry_run:
        name = _run_report_name(report)
        # Through the store backend: under Azure Functions the local disk is not kept.
        reports = open_backend(cfg)
        body = json.dumps(report, indent=2).encode()
        reports.write(f"reports/{name}.json", body)
        reports.write("reports/latest.json", body)
        reports.write("reports/latest-anomalies.jsonl", lines.encode())
        page = _html_page(report, anomalies, series, json_href=f"{name}.json")
        if page is not None:
            reports.write(f"reports/{name}.html", page)  # what messages link to
            reports.write("reports/latest.html", page)
    if html_path is not None:
        from detector.report_html import write_html_report

        write_html_report(html_path, anomalies=anomalies, run_report=report, series=series)


def _run_report_name(report: dict[str, Any]) -> str:
    """``run-<stamp>-<run id>``: the name of a run's reports (``.json``, ``.html``) under
    ``reports/``; the stamp (``20261207T040000Z``) sorts by time."""
    stamp = report["now"].replace(":", "").replace("-", "")
    return f"run-{stamp}-{report['run_id']}"


def report_link(cfg: Config, report: dict[str, Any]) -> str:
    """What messages say about this run's HTML report.

    With ``[alerting] report_url``: ``<report_url>/run-<stamp>-<id>.html``. Without it, a
    sentence saying where the file is on the job's side: a local path is no link in Teams,
    Slack or an email, so it must not pose as one.
    """
    page = f"{_run_report_name(report)}.html"
    base = cfg.alerting.get("report_url")
    if base:
        return f"{base.rstrip('/')}/{page}"
    if cfg.state.get("url"):
        where = "under reports/ in the job's state container"
    else:
        where = f"in {cfg.state_path / 'reports'} on the job's host"
    return f"{page}, {where} (set [alerting] report_url to link it here)"


def _html_page(
    report: dict[str, Any], anomalies: list[Anomaly], series: dict[str, Any], *, json_href: str
) -> bytes | None:
    """The run's HTML page, or None when it cannot be drawn: a chart that fails must not
    cost the run its record (logged as an error, the JSON report is already written)."""
    from detector.report_html import render_html_report

    try:
        text = render_html_report(
            anomalies=anomalies, run_report=report, series=series, json_href=json_href
        )
    except Exception as exc:  # noqa: BLE001 - any drawing failure, reported below
        log.error("HTML report of run %s not written: %s", report["run_id"], exc)
        return None
    return text.encode("utf-8")


def _prune_reports(backend: Backend, keep: int | timedelta | None, *, now: datetime) -> int:
    """Delete the oldest runs' ``reports/run-*`` files beyond ``keep`` (a count of runs, or an
    age before ``now``); return how many files went. A failure is logged, never the run's."""
    if keep is None:
        return 0
    try:
        runs: dict[str, list[str]] = {}
        for key in backend.list("reports/run-"):
            runs.setdefault(key.rsplit(".", 1)[0], []).append(key)
        names = sorted(runs)  # run-<stamp>-<id>: oldest first
        if isinstance(keep, timedelta):
            cutoff = "reports/run-" + (now - keep).strftime("%Y%m%dT%H%M%SZ")
            old = [n for n in names if n < cutoff]
        else:
            old = names[: max(0, len(names) - keep)]
        for name in old:
            for key in runs[name]:
                backend.delete(key)
    except DetectorError as exc:
        log.warning("old run reports not pruned: %s", exc)
        return 0
    deleted = sum(len(runs[n]) for n in old)
    if deleted:
        log.info("pruned %d old run report files (%d runs)", deleted, len(old))
    return deleted


def _step_printer(terminal: bool) -> Callable[[Any], None]:
    """A progress line per judged step (where, alerts so far, time left): printed on a
    terminal, and a log record whose ``data`` carries the same fields for JSON logs."""
    import sys

    def step(p: Any) -> None:
        eta = int(p.eta_s)
        msg = (
            f"step {p.done}/{p.total} {_iso(p.start)} .. {_iso(p.end)}: "
            f"{p.anomalies} anomalies so far, {p.elapsed_s:.0f}s elapsed, "
            f"ETA {eta // 3600}h{eta % 3600 // 60:02d}m{eta % 60:02d}s"
        )
        data = {
            "step": p.done,
            "steps": p.total,
            "step_start": _iso(p.start),
            "step_end": _iso(p.end),
            "anomalies": p.anomalies,
            "elapsed_s": round(p.elapsed_s, 1),
            "eta_s": round(p.eta_s, 1),
        }
        log.info(msg, extra={"data": data})
        if terminal:
            print(f"  {msg}", file=sys.stderr, flush=True)

    return step


def _progress_printer(enabled: bool) -> Callable[[str], None]:
    def say(msg: str) -> None:
        log.info(msg)
        if enabled:
            import sys

            print(f"  {msg}", file=sys.stderr, flush=True)

    return say


# --------------------------------------------------------------------------------------------
# Other commands
# --------------------------------------------------------------------------------------------


def backfill(cfg: Config, *, start: datetime, end: datetime, now: datetime) -> dict[str, Any]:
    """Read arrivals in ``[start, end)`` into the bucket store (warms the baselines)."""
    from detector.store.buckets import BucketStore

    backend = open_backend(cfg)
    with _lock(cfg, backend, enabled=True):
        store = BucketStore(backend)
        wm = store.watermark
        if wm is not None and start < wm:
            raise ConfigError(
                f"--start {_iso(start)} is before the store's watermark {_iso(wm)}: "
                "those rows are already counted; backfill only extends history forward"
            )
        aggs = _Source(cfg).read((start, end), cfg.detection["bucket"])
        store.merge(aggs, watermark=end)
    return {"arrival_window": [_iso(start), _iso(end)], **_agg_summary(aggs)}


def evaluate_dir(cfg: Config | None, data_dir: Path, *, ablate: str | None = None) -> Any:
    """Run ``detector.evaluate`` over a simulated data set with the configured policy (twice,
    with and without the part ``ablate`` names, when given)."""
    from detector.decide import DetectionPolicy
    from detector.evaluate import ablate as run_ablation
    from detector.evaluate import evaluate

    if not data_dir.exists():
        raise ConfigError(f"--data: {data_dir} does not exist")
    policy = detection_policy(cfg) if cfg is not None else DetectionPolicy()
    if ablate:
        return run_ablation(data_dir, part=ablate, policy=policy)
    return evaluate(data_dir, policy=policy)


def demo(
    cfg: Config, *, out: Path, days: int, seed: int, scenario: str, notify: bool
) -> dict[str, Any]:
    """Simulate ``days`` of logs into ``out``, run the job over them, return the run report."""
    from detector.simulate import simulate

    if days < 2:
        raise ConfigError("--days: the demo needs at least 2 days (one is warm-up history)")
    sim = simulate(out, days=days, seed=seed, scenario=scenario, fmt="parquet")
    # The warm-up days are baseline history; judge the rest, as a manual rerun would.
    judge_start = sim.warmup_end
    end = sim.end
    demo_cfg = _with_source_path(cfg, sim.data_path)
    if sim.maintenance:  # the simulator's windows are the config's MaintenanceWindow
        from dataclasses import replace

        demo_cfg = replace(demo_cfg, maintenance=demo_cfg.maintenance + tuple(sim.maintenance))
    html = demo_cfg.state_path / "reports" / "latest.html"
    report = run_job(
        demo_cfg,
        now=end,
        start=judge_start,
        end=end,
        notify=notify,
        html_path=html,
        output=demo_cfg.state_path / "reports" / "demo-anomalies.jsonl",
    )
    report["demo"] = {
        "data": str(out),
        "scenario": scenario,
        "seed": seed,
        "incidents": [_incident_json(i) for i in sim.incidents],
        "html_report": str(html),
    }
    return report


def _incident_json(inc: Any) -> dict[str, Any]:
    for method in ("to_dict", "to_json"):
        if hasattr(inc, method):
            return dict(getattr(inc, method)())
    return dict(inc) if isinstance(inc, dict) else vars(inc)


def _with_source_path(cfg: Config, path: Path) -> Config:
    from dataclasses import replace

    return replace(cfg, source={**cfg.source, "kind": "file", "path": str(path.resolve())})


def console_summary(report: dict[str, Any], verbose: bool = False) -> str:
    """A short human summary of a run report for the terminal."""
    src = report.get("source", {})
    lines = [
        f"acs-detector {report['mode']} run {report['run_id']}"
        f"{' (dry run)' if report.get('dry_run') else ''}: "
        f"window {report['window']['start']} .. {report['window']['end']}",
        f"  read {src.get('rows_read', 0):,} rows -> {src.get('operations', 0):,} operations in "
        f"{src.get('buckets', 0):,} buckets over {src.get('partitions', 0)} partitions",
    ]
    if src.get("dropped"):
        lines.append("  dropped: " + ", ".join(f"{k} {v:,}" for k, v in src["dropped"].items()))
    if src.get("flagged"):
        lines.append(
            "  flagged (kept): " + ", ".join(f"{k} {v:,}" for k, v in src["flagged"].items())
        )
    for warning in report.get("warnings") or []:
        lines.append(f"  WARNING: {warning}")
    det = report.get("detection") or {}
    if int(det.get("steps") or 0) > 1:
        lines.append(f"  judged in {det['steps']} steps, {det.get('buckets_judged', 0):,} buckets")
    lines += _alert_lines(report.get("anomalies") or [])
    if verbose and report.get("demo"):
        lines.append(f"  labelled incidents in {report['demo']['data']}/incidents.json:")
        for inc in report["demo"]["incidents"]:
            lines.append(
                f"    {inc['operation_name']} / {inc['sdk_version'] or 'all versions'} / "
                f"{inc['metric']}: {inc['start']} .. {inc['end']}"
            )
        lines.append(f"  HTML report: {report['demo']['html_report']}")
    delivery = report.get("delivery", {})
    if delivery:
        lines.append("  delivery: " + json.dumps(delivery, default=str)[:300])
    alerts = report.get("alerts") or {}
    if alerts.get("by_target") or alerts.get("unrouted"):
        from detector.notify.deliver import delivery_lines

        lines += ["  delivered / failed per route and target:", *delivery_lines(alerts)]
    t = report.get("timings_s", {})
    if t:
        lines.append("  timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()))
    return for_terminal("\n".join(lines))  # names from the log: no terminal escapes


def _alert_lines(anomalies: Sequence[dict[str, Any]]) -> list[str]:
    """The run's alerts for the console, counted as the HTML report and the messages count them.

    In: the report's anomalies (JSON form). Out: "N alerts (M anomalous windows)", then one
    line per alert (its windows merged): severity, operation, what moved in plain words, span.
    """
    from detector import words

    found = words.incidents(Anomaly.from_json(a) for a in anomalies)
    lines = [f"  {_plural(len(found), 'alert')} ({_plural(len(anomalies), 'anomalous window')})"]
    for inc in found:
        lines.append(
            f"    [{inc.severity}] {inc.worst.operation_name}: {words.what_moved(inc.worst)},"
            f" {inc.start:%Y-%m-%d %H:%M} .. {inc.end:%Y-%m-%d %H:%M} UTC{_evidence_text(inc.worst)}"
        )
    return lines


def _evidence_text(a: Anomaly) -> str:
    """The calls behind a long span's evidence when they outnumber the worst window's, so a
    quiet window ("on 0 calls") does not read as an alert on nothing; else ""."""
    details = a.details or {}
    ev_calls, span = details.get("evidence_calls"), details.get("span_buckets")
    if ev_calls is None or not span or ev_calls <= a.calls:
        return ""
    return f" ({int(ev_calls):,} calls over the {int(span)}-bucket span behind it)"


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _deviation(a: dict[str, Any]) -> float:
    """How far a window's observed value is from its baseline, to pick an alert's worst window."""
    obs, base = a.get("observed"), a.get("baseline")
    if obs is None or base is None:
        return 0.0
    if a["metric"] == "failure_rate":
        return abs(float(obs) - float(base))
    return abs(math.log(max(float(obs), 1e-9) / max(float(base), 1e-9)))


# --------------------------------------------------------------------------------------------
# status, silences, acks, HTML report (thin wrappers over the alerting store)
# --------------------------------------------------------------------------------------------


def status_text(cfg: Config, *, now: datetime) -> str:
    """``acs-detector status``: open alerts, silences, outbox, last run, watermarks."""
    from detector.notify.commands import status_text as alert_status
    from detector.store.buckets import BucketStore

    backend = open_backend(cfg)
    pstate = _read_pipeline_state(backend)
    text = alert_status(backend, now, watermark=BucketStore(backend).watermark)
    judged = pstate.get("judged_until")
    return text + f"\njudged until: {judged or 'never'}"


def add_silence(
    cfg: Config,
    *,
    operation: str | None,
    sdk_version: str | None,
    metric: str | None,
    duration: timedelta,
    comment: str,
    now: datetime,
) -> str:
    """``acs-detector silence add``; returns a one-line description with the silence id."""
    from detector.notify.commands import add_silence as add
    from detector.notify.commands import silences_text

    matcher = {
        k: v
        for k, v in (("operation", operation), ("sdk_version", sdk_version), ("metric", metric))
        if v
    }
    if not matcher:
        raise ConfigError("silence add: give at least one of --operation, --sdk-version, --metric")
    silence = add(open_backend(cfg), matcher, now + duration, comment, now)
    return silences_text([silence], now)


def list_silences(cfg: Config, *, now: datetime) -> str:
    from detector.notify.commands import list_silences as listing
    from detector.notify.commands import silences_text

    return silences_text(listing(open_backend(cfg), now), now)


def expire_silence(cfg: Config, silence_id: str, *, now: datetime) -> str:
    from detector.notify.commands import expire_silence as expire
    from detector.notify.commands import silences_text

    return silences_text([expire(open_backend(cfg), silence_id, now)], now)


def acknowledge(cfg: Config, fingerprint: str, *, comment: str, now: datetime) -> str:
    from detector.notify.commands import ack

    result = ack(open_backend(cfg), fingerprint, now, comment=comment)
    return f"acknowledged {getattr(result, 'fingerprint', fingerprint)}: muted until it resolves"


def write_report_html(cfg: Config, *, run_report: Path | None, html: Path) -> Path:
    """``acs-detector report``: the HTML page of a run (default: the latest)."""
    from detector.report_html import write_html_report

    if run_report is not None:
        try:
            text = Path(run_report).read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"no run report at {run_report}") from None
        where = str(run_report)
    else:
        found = open_backend(cfg).read("reports/latest.json")
        if found is None:
            raise ConfigError("no run report in the store yet: run the job first") from None
        text, where = found[0], "reports/latest.json"
    try:
        report = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{where} is not a run report: {exc}") from None
    anomalies = [Anomaly.from_json(a) for a in report.get("anomalies", [])]
    return Path(write_html_report(html, anomalies=anomalies, run_report=report, series=None))
