"""The job: wires source -> aggregate -> store -> detect -> lifecycle -> notify, and reports.

Consumes a validated :class:`~detector.config.Config` and ``now`` (read by the CLI only);
produces a JSON-able run report and, as side effects through the stages that own them, the
bucket store, alert state, outbox, run reports and notifications.

Two modes (design §1.8), one way of judging: every window is judged in steps of
``detection.step`` (1 h), each step as the scheduled run ending it would have judged it (its
trailing baseline, the engine state and forest schedule of the steps before it; see
:func:`detector.detect.engine.detect_steps`). A scheduled run is usually one step.

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
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from detector.anomaly import Anomaly, worst_key
from detector.config import Config
from detector.detect.candidate import Candidate
from detector.errors import ConfigError, DetectorError, PartialResultError, SourceError
from detector.schema import BucketAggregates
from detector.store.backend import Backend, LocalBackend
from detector.words import log_analytics_scope

if TYPE_CHECKING:
    from detector.source.base import Source

__all__ = [
    "RunFiles",
    "backfill",
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
    from detector.detect.decide import DetectionPolicy

    try:
        return DetectionPolicy.from_mapping(dict(cfg.detection))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"detection: {exc}", path=str(cfg.path) if cfg.path else None) from None


def routes(cfg: Config) -> list[Any]:
    """``[[notify.route]]`` as the alerting stage's Route objects."""
    from detector.notify import Route

    return [Route.from_config(r) for r in cfg.routes]


def _maintenance(cfg: Config) -> list[tuple[datetime, datetime, str | None]]:
    return [(w.start, w.end, w.operation_name) for w in cfg.maintenance]


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


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """Files a run writes besides its store (None: not written): the anomalies as JSON lines
    (``output``), the run report (``report_path``) and its HTML page (``html_path``)."""

    output: Path | None = None
    report_path: Path | None = None
    html_path: Path | None = None


def run_job(
    cfg: Config,
    *,
    now: datetime,
    start: datetime | None = None,
    end: datetime | None = None,
    dry_run: bool = False,
    notify: bool = True,
    files: RunFiles = RunFiles(),
    progress: bool = False,
) -> dict[str, Any]:
    """Run the job once; return the run report (also written under ``<state>/reports/``,
    and to ``files`` when given).

    When more than one ACS resource writes to the source (``[source] split_resources``, on
    by default), each is judged on its own (:class:`_Tenant`): its own bucket history,
    baselines, forests and alert state under ``resources/<slug>/`` in the state, its alerts
    naming it. A single resource keeps the store's root layout, as before.

    Raises the stage errors (SourceError, StateError, LockHeldError, ConfigError, InputError);
    a delivery failure does not raise: the report says ``delivery_failed`` after everything
    was saved (the CLI exits 1). With several resources, one whose read fails is recorded
    (self-health) and reported; the run raises only when every resource failed.
    """
    t0 = time.perf_counter()
    backend = open_backend(cfg)
    run = _Run(
        cfg=cfg,
        now=now,
        start=start,
        end=end,
        dry_run=dry_run,
        notify=notify,
        progress=progress,
        preload=_preload(_ENGINE_MODULES),
        say=_progress_printer(progress),
        policy=detection_policy(cfg),
    )
    report = _report_header(run)
    with _lock(cfg, backend, enabled=not dry_run):
        root_state = _read_pipeline_state(backend)
        tenants, notes = _tenants(run, backend, root_state)
        judged = [_judge_tenant(run, t, report) for t in tenants]
        _check_all_failed(judged)
        _combine(report, judged, notes)
        report["timings_s"]["total"] = round(time.perf_counter() - t0, 3)
        anomalies = [a for j in judged for a in j.anomalies]
        series = _series(judged, want=files.html_path is not None or not dry_run)
        # Outputs before the run is recorded: a crash in between reruns the window and
        # writes them again, where the other order would lose this run's anomalies file.
        _write_outputs(cfg, report, anomalies, files, series, dry_run)
        if not dry_run:
            _save_pipeline_states(run, backend, root_state, report, judged)
            _prune_reports(backend, cfg.alerting.get("keep_reports"), now=now)
    return report


def _report_header(run: _Run) -> dict[str, Any]:
    """The first keys of the run report: who, when, how."""
    cfg = run.cfg
    return {
        "run_id": uuid.uuid4().hex[:12],
        "mode": "manual" if run.manual else "scheduled",
        "dry_run": run.dry_run,
        "notify": run.notify and not run.dry_run,
        "now": _iso(run.now),
        "config": str(cfg.path) if cfg.path else None,
        "log_analytics": log_analytics_scope(cfg.source),  # for "Open in Log Analytics" links
    }


@dataclasses.dataclass
class _Run:
    """What every tenant's judging shares: the config, clock, mode and the run's switches."""

    cfg: Config
    now: datetime
    start: datetime | None
    end: datetime | None
    dry_run: bool
    notify: bool
    progress: bool
    preload: threading.Thread
    say: Callable[[str], None]
    policy: Any

    @property
    def manual(self) -> bool:
        return self.start is not None and self.end is not None


@dataclasses.dataclass
class _Tenant:
    """One baseline's worth of the source: an ACS resource (``key``, a lower-case resource
    id) with its state under ``resources/<slug>/``, or (``key`` None) the whole source in the
    store's root layout, as before resources were told apart."""

    key: str | None
    backend: Backend
    source: Source
    models_prefix: str = ""

    @property
    def name(self) -> str | None:
        from detector.source.resources import short_name

        return short_name(self.key) if self.key else None


@dataclasses.dataclass
class _Judged:
    """One tenant's outcome: its part of the report, anomalies, chart history and the
    pipeline state to save; ``error`` when reading its rows failed."""

    tenant: _Tenant
    part: dict[str, Any]
    anomalies: list[Anomaly] = dataclasses.field(default_factory=list)
    history: BucketAggregates | None = None
    pstate: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: SourceError | None = None


def _judge_tenant(run: _Run, tenant: _Tenant, base: dict[str, Any]) -> _Judged:
    """Read, judge and alert one tenant, as a single-resource run does the whole source."""
    from detector.store.buckets import BucketStore

    cfg, timings = run.cfg, {}
    part: dict[str, Any] = dict(base)
    if tenant.key is not None:
        part["resource"] = {"id": tenant.key, "name": tenant.name}
        scope = tenant.source.link_scope()
        if scope is not None:  # links scoped to this resource's rows
            part["log_analytics"] = scope
    store = BucketStore(tenant.backend)
    pstate = _read_pipeline_state(tenant.backend)
    t = time.perf_counter()
    try:
        plan = _read(run, tenant.source, store, pstate)
    except SourceError as exc:
        if not run.dry_run:
            _record_source_error(cfg, tenant.backend, exc, now=run.now, notify=run.notify)
        return _Judged(tenant, part, pstate=pstate, error=exc)
    timings["source"] = time.perf_counter() - t
    run.preload.join()  # then the imports below are lookups (or raise the real ImportError)
    part["window"] = {"start": _iso(plan.judge[0]), "end": _iso(plan.judge[1])}
    part["arrival_window"] = {"start": _iso(plan.arrival[0]), "end": _iso(plan.arrival[1])}
    part["source"] = {
        "kind": tenant.source.kind,
        **_agg_summary(plan.fresh),
        **tenant.source.stats(),
    }
    part["warnings"] = (
        list(plan.warnings)
        + tenant.source.notes()
        + [
            f"not read: {what} (its rows in this arrival window are not counted)"
            for what in tenant.source.failed
        ]
    )
    for warning in part["warnings"]:
        log.warning("%s", warning)
    t = time.perf_counter()
    anomalies, candidates, history = _detect(run, tenant, plan, part)
    timings["detect"] = time.perf_counter() - t
    t = time.perf_counter()
    _alert(run, tenant, part, anomalies, candidates, history, window=plan.judge)
    timings["alert"] = time.perf_counter() - t
    part["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    return _Judged(tenant, part, anomalies, history, pstate)


def _detect(
    run: _Run, tenant: _Tenant, plan: _Plan, part: dict[str, Any]
) -> tuple[list[Anomaly], list[Candidate], BucketAggregates | None]:
    """Judge ``plan.judge`` in steps; fill the report's ``detection``, ``candidates`` and
    ``anomalies``; return the anomalies (named after the tenant's resource), the candidates
    and the history alerting reads."""
    from detector.detect.engine import StepContext, detect_steps
    from detector.notify.evaluated import CHART_SPAN
    from detector.store.engine_state import load_engine_state, save_engine_state

    cfg, judge = run.cfg, plan.judge
    steps = _steps(cfg, plan)
    if not steps:
        part["detection"] = {"skipped": "nothing new to judge", "steps": 0}
        part["candidates"], part["anomalies"] = [], []
        return [], [], None
    run.say(
        f"judging {_iso(steps[0][0])} .. {_iso(steps[-1][1])} in {len(steps)} "
        f"step{'s' if len(steps) > 1 else ''} of at most {cfg.detection['step']}"
        + (f" for {tenant.name}" if tenant.name else "")
    )
    engine_state, engine_version = load_engine_state(tenant.backend)
    result = detect_steps(
        plan.history,
        window=judge,
        steps=steps,
        policy=run.policy,
        now=run.now,
        context=StepContext(
            delay=cfg.detection["delay"],
            maintenance=_maintenance(cfg),
            model_store=_model_store(
                cfg, tenant.backend, scratch=run.manual or run.dry_run, prefix=tenant.models_prefix
            ),
        ),
        state=engine_state,
        progress=_step_printer(run.progress) if len(steps) > 1 else None,
    )
    anomalies = list(result.anomalies)
    if not run.dry_run:
        save_engine_state(tenant.backend, result.state, if_version=engine_version)
    tenant.source.drill_down(anomalies, judge)
    _name_resource(anomalies, tenant)
    part["detection"] = _jsonable(result.stats)
    part["candidates"] = _jsonable([c.to_json() for c in result.candidates])
    part["anomalies"] = [a.to_json() for a in anomalies]
    # What alerting reads: the end of the judged window (its current values) and a day
    # before it for the charts, so its filters scan a day or two, not the window.
    since = max(judge[0], judge[1] - _ALERT_SPAN) - CHART_SPAN
    return anomalies, result.candidates, _between(plan.history(since, judge[1]), since, judge[1])


def _steps(cfg: Config, plan: _Plan) -> list[tuple[datetime, datetime]]:
    """The steps that judge ``plan.judge`` (none when it is empty or holds no data)."""
    from detector.detect.engine import plan_steps

    judge = plan.judge
    if judge[0] >= judge[1]:
        return []
    try:
        steps: list[tuple[datetime, datetime]] = plan_steps(
            judge,
            cfg.detection["step"],
            bucket=cfg.detection["bucket"],
            data=plan.data,
            reach=cfg.detection["baseline"],
        )
    except ValueError as exc:
        raise ConfigError(f"detection.step: {exc}") from None
    if plan.data is not None and len(plan.data):
        # A file ends where its export ended, not in an outage: judge up to its end.
        last = pd.Timestamp(plan.data[-1], tz="UTC").to_pydatetime()
        steps = [st for st in steps if st[0] <= last]
    return steps


def _name_resource(anomalies: list[Anomaly], tenant: _Tenant) -> None:
    """Say in each anomaly which ACS resource it is about (alerts and reports name it)."""
    if tenant.key is None:
        return
    for a in anomalies:
        a.details = {**(a.details or {}), "resource_id": tenant.key, "resource": tenant.name}


def _alert(
    run: _Run,
    tenant: _Tenant,
    part: dict[str, Any],
    anomalies: list[Anomaly],
    candidates: Sequence[Candidate],
    history: BucketAggregates | None,
    *,
    window: tuple[datetime, datetime],
) -> None:
    """The tenant's alerting stage (its own alert state) on the engine's anomalies and
    candidates; fills ``alerts``/``delivery_failed``."""
    from detector.notify import DeliveryContext, EngineOutput, run_alerting

    cfg = run.cfg
    output = EngineOutput(
        anomalies, candidates, history, window=window, bucket=cfg.detection["bucket"]
    )
    ctx = DeliveryContext(
        routes=routes(cfg),
        backend=tenant.backend,
        # A manual rerun judges a past window: its lifecycle clock is the window's end.
        now=window[1] if run.manual else run.now,
        dry_run=run.dry_run,
    )
    delivery = run_alerting(
        output,
        ctx,
        alerting=cfg.alerting,
        send=run.notify and not run.dry_run,
        report=part,
        report_url_or_path=report_link(cfg, part),
    )
    part["alerts"] = _jsonable(delivery)
    part["delivery_failed"] = bool(delivery.get("failed") or delivery.get("undeliverable"))


def _check_all_failed(judged: list[_Judged]) -> None:
    """Raise the first read error when no tenant was read (the run itself failed)."""
    errors = [j.error for j in judged if j.error is not None]
    if errors and len(errors) == len(judged):
        raise errors[0]


def _series(judged: list[_Judged], *, want: bool) -> dict[str, Any]:
    """Chart series of every tenant's alerts, one per alert, drawn around its most deviating
    window (none when no HTML page is drawn)."""
    series: dict[str, Any] = {}
    if not want:
        return series
    from detector.notify.evaluated import chart_history

    for j in judged:
        if j.history is not None and j.anomalies:
            worst_first = sorted(j.anomalies, key=worst_key, reverse=True)
            end = datetime.fromisoformat(str(j.part["window"]["end"]).replace("Z", "+00:00"))
            series.update(chart_history(j.history, worst_first, now=end))
    return series


# What the stages after the source import: scikit-learn, skops, SciPy and apprise, about 3 s of
# a cold start.
_ENGINE_MODULES = (
    "detector.detect.engine",
    "detector.detect.score",
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


def _read(run: _Run, source: Source, store: Any, pstate: dict[str, Any]) -> _Plan:
    """Read the source and plan the judging (the run's clock, mode and switches from ``run``).
    Scheduled runs merge the fresh aggregates into the store and judge from it; a manual
    rerun judges what it read and leaves the store."""
    from detector import aggregate

    cfg, now, start, end, dry_run, say = run.cfg, run.now, run.start, run.end, run.dry_run, run.say
    bucket: timedelta = cfg.detection["bucket"]
    baseline: timedelta = cfg.detection["baseline"]
    if start is not None and end is not None:
        return _read_rerun(cfg, source, start, end, say)
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
            read_whole = getattr(exc, "aggregates", None)
            if not dry_run and done is not None and done > arrival_start:
                store.merge(read_whole, watermark=done)
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


def _read_rerun(
    cfg: Config, source: Source, start: datetime, end: datetime, say: Callable[[str], None]
) -> _Plan:
    """A manual rerun's plan: the rows that arrived in ``[start - baseline, end + lateness)``,
    judged over ``[start, end)`` (whole buckets); the store is left alone."""
    bucket: timedelta = cfg.detection["bucket"]
    judge = (_floor(start, bucket), _ceil(end, bucket))
    arrival = (judge[0] - cfg.detection["baseline"], judge[1] + cfg.detection["lateness"])
    say(f"reading {_iso(arrival[0])} .. {_iso(arrival[1])} from the {source.kind} source")
    fresh = source.read(arrival, bucket, progress=say)
    data = _sorted_times(pd.unique(fresh.stats["bucket_start"]) if len(fresh.stats) else [])

    def read(a: datetime, b: datetime) -> BucketAggregates:
        # What was read is in memory already: each step selects its own rows from it
        # (a copy into a rolling buffer would only add one).
        return fresh

    return _Plan(fresh, read, judge, arrival, data)


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


# --------------------------------------------------------------------------------------------
# Many ACS resources: one tenant (bucket history, baselines, forests, alerts) per resource
# --------------------------------------------------------------------------------------------

#: Where a resource's state lives in the store when several resources are judged apart.
RESOURCES_PREFIX = "resources"


class _Prefixed:
    """A view of a :class:`Backend` under ``prefix/``: one resource's own state.

    Silences pass through to the job's root, so ``acs-detector silence add`` applies to every
    resource; everything else (buckets, engine state, alert state, outbox) is the resource's.
    """

    _SHARED: tuple[str, ...] = ("alerts/silences.json",)

    def __init__(self, inner: Backend, prefix: str) -> None:
        self.inner = inner
        self.prefix = prefix.strip("/") + "/"

    def _key(self, key: str) -> str:
        return key if key in self._SHARED else self.prefix + key

    def read(self, key: str) -> tuple[bytes, str] | None:
        return self.inner.read(self._key(key))

    def write(self, key: str, data: bytes, *, if_version: str | None = None) -> str:
        return self.inner.write(self._key(key), data, if_version=if_version)

    def delete(self, key: str) -> None:
        self.inner.delete(self._key(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        cut = len(self.prefix)
        return iter([k[cut:] for k in self.inner.list(self.prefix + prefix)])


def _tenants(
    run: _Run, backend: Backend, root_state: dict[str, Any]
) -> tuple[list[_Tenant], list[str]]:
    """The tenants this run judges, and warnings about the resources it could not tell.

    One tenant in the root layout while at most one resource is known (from this run's
    arrivals and from earlier runs); one per resource from the moment a second one appears
    (remembered in ``pipeline.json``, so a quiet hour does not blend them again).
    """
    from detector.source.base import Found, discover_resources, open_source
    from detector.source.resources import slug

    cfg = run.cfg
    known = _known_resources(cfg, root_state)
    found = Found()
    if cfg.source.get("split_resources", True):
        window = _discovery_window(run, backend, known)
        if window[0] < window[1]:
            found = discover_resources(cfg, window)
    notes = [f"resources not listed: {what}" for what in found.failed]
    keys = sorted(set(known) | set(found.targets))
    if len(keys) <= 1 and len(known) <= 1:
        return [_Tenant(None, backend, open_source(cfg))], notes
    if found.unattributed:
        notes.append(
            f"{found.unattributed:,} rows carry no usable _ResourceId and were not judged: "
            "the source holds several ACS resources, each judged on its own baseline"
        )
    tenants = []
    for key in keys:
        targets = found.targets.get(key) or known.get(key)
        prefix = f"{RESOURCES_PREFIX}/{slug(key)}"
        source = open_source(cfg, resource=key, targets=targets or None)
        tenants.append(_Tenant(key, _Prefixed(backend, prefix), source, prefix))
    return tenants, notes


def _known_resources(cfg: Config, root_state: dict[str, Any]) -> dict[str, list[int]]:
    """Resources judged apart by earlier runs (``pipeline.json``), validated again: the
    state file is input like any other. Key -> Log Analytics target indices."""
    from detector.source.base import configured_resources, configured_targets
    from detector.source.resources import resource_key

    entries = root_state.get("resources")
    if not isinstance(entries, dict):
        return {}
    n_targets = len(configured_targets(cfg))
    out: dict[str, list[int]] = {}
    for key, entry in entries.items():
        if resource_key(key) != key and key not in configured_resources(cfg):
            log.warning("pipeline.json: ignoring a resource entry that is not a resource id")
            continue
        raw = entry.get("targets") if isinstance(entry, dict) else None
        ok = isinstance(raw, list) and all(isinstance(i, int) for i in raw)
        out[key] = [i for i in raw if 0 <= i < n_targets] if ok and raw else []
    return out


def _discovery_window(
    run: _Run, backend: Backend, known: dict[str, list[int]]
) -> tuple[datetime, datetime]:
    """The arrival window whose rows say which resources write: what this run reads (from
    the oldest tenant watermark) or, for a rerun, what the rerun reads."""
    from detector.source.resources import slug
    from detector.store.buckets import BucketStore

    det = run.cfg.detection
    if run.start is not None and run.end is not None:
        judge = (_floor(run.start, det["bucket"]), _ceil(run.end, det["bucket"]))
        return judge[0] - det["baseline"], judge[1] + det["lateness"]
    end = run.now - det["delay"]
    stores = (
        [backend]
        if len(known) <= 1
        else [_Prefixed(backend, f"{RESOURCES_PREFIX}/{slug(k)}") for k in known]
    )
    marks = [m for m in (BucketStore(s).watermark for s in stores) if m is not None]
    start = min(marks) if marks and len(marks) == len(stores) else None
    return (start or end - det["baseline"] - det["lateness"]), end


def _combine(report: dict[str, Any], judged: list[_Judged], notes: list[str]) -> None:
    """The run report from the tenants' parts: a single tenant's part is the report as it
    always was; several are summed, listed under ``resources``, their warnings named."""
    for note in notes:
        log.warning("%s", note)
    if len(judged) == 1 and judged[0].tenant.key is None:
        part = judged[0].part
        report.update({k: v for k, v in part.items() if k not in report})
        report["warnings"] = list(notes) + list(part.get("warnings", []))
        return
    done = [j for j in judged if j.error is None]
    report["resources"] = [_resource_entry(j) for j in judged]
    report["window"] = _span_of([j.part["window"] for j in done])
    report["arrival_window"] = _span_of([j.part["arrival_window"] for j in done])
    report["source"] = _merge_json([j.part["source"] for j in done])
    report["warnings"] = list(notes) + [
        f"{j.tenant.name}: {w}" for j in judged for w in _tenant_warnings(j)
    ]
    report["detection"] = _merge_json([j.part["detection"] for j in done])
    report["detection"]["steps"] = max(int(j.part["detection"].get("steps") or 0) for j in done)
    report["candidates"] = [
        {**c, "resource": j.tenant.name} for j in done for c in j.part["candidates"]
    ]
    report["anomalies"] = [a for j in done for a in j.part["anomalies"]]
    report["alerts"] = _merge_json([j.part["alerts"] for j in done])
    report["delivery_failed"] = any(j.part["delivery_failed"] for j in done)
    report["timings_s"] = _merge_json([j.part["timings_s"] for j in done])


def _tenant_warnings(j: _Judged) -> list[str]:
    if j.error is not None:
        return [f"reading failed, not judged: {str(j.error).splitlines()[0][:300]}"]
    return list(j.part.get("warnings", []))


def _resource_entry(j: _Judged) -> dict[str, Any]:
    """One resource's line in a multi-resource report."""
    entry: dict[str, Any] = {"id": j.tenant.key, "name": j.tenant.name}
    if j.error is not None:
        return {**entry, "error": str(j.error).splitlines()[0][:300]}
    src = j.part["source"]
    return {
        **entry,
        "window": j.part["window"],
        "rows_read": src.get("rows_read", 0),
        "operations": src.get("operations", 0),
        "partitions": src.get("partitions", 0),
        "anomalies": len(j.anomalies),
        "delivery_failed": j.part["delivery_failed"],
    }


def _span_of(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """The smallest window holding all of ``windows`` (ISO strings sort by time)."""
    starts = [w["start"] for w in windows if w.get("start")]
    ends = [w["end"] for w in windows if w.get("end")]
    return {"start": min(starts, default=None), "end": max(ends, default=None)}


def _merge_json(parts: list[Any]) -> Any:
    """Several tenants' report sections as one: numbers summed, lists joined, mappings merged
    key by key, flags or'ed, anything else the last one's."""
    out: Any = None
    for part in parts:
        out = part if out is None else _merge_two(out, part)
    return out if out is not None else {}


def _merge_two(a: Any, b: Any) -> Any:
    if isinstance(a, dict) and isinstance(b, dict):
        return {
            k: _merge_two(a[k], b[k]) if k in a and k in b else a.get(k, b.get(k))
            for k in {**a, **b}
        }
    if isinstance(a, list) and isinstance(b, list):
        return [*a, *b]
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) or bool(b)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a + b
    return b


def _save_pipeline_states(
    run: _Run,
    backend: Backend,
    root_state: dict[str, Any],
    report: dict[str, Any],
    judged: list[_Judged],
) -> None:
    """Record the run: ``judged_until`` per tenant (scheduled runs), ``last_run`` at the root
    and, with several resources, which ones are judged apart (so they stay apart)."""
    last_run = {
        "run_id": report["run_id"],
        "at": _iso(run.now),
        "mode": report["mode"],
        "window": report.get("window"),
        "anomalies": len(report.get("anomalies") or []),
    }
    for j in judged:
        if j.error is not None:
            continue
        if not run.manual:
            j.pstate["judged_until"] = j.part["window"]["end"]
        if j.tenant.key is not None:
            j.pstate["last_run"] = {**last_run, "window": j.part["window"]}
            j.tenant.backend.write(PIPELINE_KEY, json.dumps(j.pstate, indent=2).encode())
    if len(judged) == 1 and judged[0].tenant.key is None:
        root_state = {**judged[0].pstate}
    else:
        previous = (
            root_state.get("resources") if isinstance(root_state.get("resources"), dict) else {}
        )
        root_state["resources"] = {
            j.tenant.key: {
                "name": j.tenant.name,
                "targets": j.tenant.source.targets_used(),
            }
            for j in judged
        } | {k: v for k, v in (previous or {}).items() if k not in {j.tenant.key for j in judged}}
    root_state["last_run"] = last_run
    backend.write(PIPELINE_KEY, json.dumps(root_state, indent=2).encode())


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


def _model_store(cfg: Config, backend: Backend, *, scratch: bool = False, prefix: str = "") -> Any:
    """Where forests are kept. ``scratch``: in memory for this run only (a manual rerun or a
    dry run refits on its own steps' schedule and leaves the scheduled runs' model alone).
    ``prefix``: a resource's folder (``resources/<slug>``) when resources are judged apart;
    ``backend`` is then that resource's view of the store."""
    from detector.store.models import ModelStore

    if scratch:
        from detector.store.backend import MemoryBackend

        return ModelStore(MemoryBackend(), prefix="models")
    if cfg.state.get("url"):
        return ModelStore(backend, prefix="models")
    models = cfg.models_path
    where = f"{models.name}/{prefix}" if prefix else models.name
    return ModelStore(LocalBackend(models.parent), prefix=where)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _write_outputs(
    cfg: Config,
    report: dict[str, Any],
    anomalies: list[Anomaly],
    files: RunFiles,
    series: dict[str, Any],
    dry_run: bool,
) -> None:
    lines = "".join(json.dumps(a.to_json()) + "\n" for a in anomalies)
    if files.output is not None:
        files.output.parent.mkdir(parents=True, exist_ok=True)
        files.output.write_text(lines)
    if files.report_path is not None:
        files.report_path.parent.mkdir(parents=True, exist_ok=True)
        files.report_path.write_text(json.dumps(report, indent=2))
    if not dry_run:
        # Through the store backend: under Azure Functions the local disk is not kept.
        reports = open_backend(cfg)
        body = json.dumps(report, indent=2).encode()
        reports.write(f"reports/{_run_report_name(report)}.json", body)
        reports.write("reports/latest.json", body)
        reports.write("reports/latest-anomalies.jsonl", lines.encode())
    _write_html(cfg, report, anomalies, series, files.html_path, dry_run)


def _write_html(
    cfg: Config,
    report: dict[str, Any],
    anomalies: list[Anomaly],
    series: dict[str, Any],
    html_path: Path | None,
    dry_run: bool,
) -> None:
    """Draw the run's HTML page once; store it under ``reports/`` (what messages link to)
    and, with ``--html``, write the same page there with the JSON report it links beside it."""
    if dry_run and html_path is None:
        return
    name = _run_report_name(report)
    href = f"{html_path.stem}.run.json" if dry_run and html_path is not None else f"{name}.json"
    page = _html_page(report, anomalies, series, json_href=href)
    if page is None:
        if html_path is not None:
            raise DetectorError(f"HTML report not written to {html_path}: see the log")
        return
    if not dry_run:
        reports = open_backend(cfg)
        reports.write(f"reports/{name}.html", page)
        reports.write("reports/latest.html", page)
    if html_path is not None:
        _write_atomic(html_path.with_name(href), json.dumps(report, indent=2).encode())
        _write_atomic(html_path, page)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` through a temporary name, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


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


def backfill(
    cfg: Config,
    *,
    start: datetime,
    end: datetime,
    now: datetime,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Read arrivals in ``[start, end)`` into the bucket store (warms the baselines);
    ``progress`` gets a line per Log Analytics chunk read."""
    from detector.source.base import open_source
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
        aggs = open_source(cfg).read((start, end), cfg.detection["bucket"], progress=progress)
        store.merge(aggs, watermark=end)
    return {"arrival_window": [_iso(start), _iso(end)], **_agg_summary(aggs)}


def evaluate_dir(
    cfg: Config | None,
    data_dir: Path,
    progress: Callable[[str], None] | None = None,
    *,
    ablate: str | None = None,
) -> Any:
    """Run ``detector.evaluate`` over a simulated data set with the configured policy (twice,
    with and without the part ``ablate`` names, when given)."""
    from detector.detect.decide import DetectionPolicy
    from detector.evaluate import ablate as run_ablation
    from detector.evaluate import evaluate

    if not data_dir.exists():
        raise ConfigError(f"--data: {data_dir} does not exist")
    policy = detection_policy(cfg) if cfg is not None else DetectionPolicy()
    if ablate:
        return run_ablation(data_dir, part=ablate, policy=policy)
    return evaluate(data_dir, policy=policy, progress=progress)


def demo(
    cfg: Config,
    *,
    out: Path,
    days: int,
    seed: int,
    scenario: str,
    notify: bool,
    progress: bool = False,
) -> dict[str, Any]:
    """Simulate ``days`` of logs into ``out``, run the job over them, return the run report."""
    from detector.simulate import SimSpec, simulate

    if days < 2:
        raise ConfigError("--days: the demo needs at least 2 days (one is warm-up history)")
    sim = simulate(out, SimSpec(days=days, seed=seed, scenario=scenario), fmt="parquet")
    # The warm-up days are baseline history; judge the rest, as a manual rerun would.
    judge_start = sim.warmup_end
    end = sim.end
    demo_cfg = _with_source_path(cfg, sim.data_path)
    if sim.maintenance:  # the simulator's windows are the config's MaintenanceWindow
        from dataclasses import replace

        demo_cfg = replace(demo_cfg, maintenance=demo_cfg.maintenance + tuple(sim.maintenance))
    html = demo_cfg.state_path / "reports" / "latest.html"
    files = RunFiles(
        output=demo_cfg.state_path / "reports" / "demo-anomalies.jsonl", html_path=html
    )
    report = run_job(
        demo_cfg, now=end, start=judge_start, end=end, notify=notify, files=files, progress=progress
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
    return cfg.updated("source", kind="file", path=str(path.resolve()))


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
