"""The whole alerting stage of one run, in the order that loses nothing.

Consumes the engine's gated anomalies and evaluated fingerprints for the judged window, the
``[alerting]`` config, the routes, the store backend and ``now``; produces an
:class:`AlertOutcome` (decisions with reasons, the delivery report). Order:

1. load state, silences (config + ``acs-detector silence``) and acks;
2. :func:`detector.lifecycle.step`;
3. deliver: the outbox first, then this run's digests: written ahead to the outbox and the
   notification log, then the state that decided them is saved with their batch id (the
   commit), then they are sent;
4. the self-health check (with this run's record and delivery outcome), delivered the same way;
5. save the state, prune acks of resolved alerts, record the run.

A crash before the commit leaves outbox items of an uncommitted batch: the rerun starts from
the old state, decides the same notices again and drops those items unsent. A crash after it
leaves committed items the rerun's outbox retry sends, while the saved state keeps the
lifecycle from deciding them a second time. So no target that acknowledged a digest gets it
again, except in the instant between its acknowledgement and the ``sent`` mark (at-least-once
there: see :mod:`detector.notify.deliver`). ``dry_run`` writes and sends nothing;
``no_notify`` updates the state as if sent but sends nothing. Raising on failed delivery is left to the caller (after this returns,
everything is saved): ``if not outcome.report.ok: raise NotifyError(...)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from detector.anomaly import Anomaly
from detector.config import AlertingSettings, alerting_settings
from detector.detect.candidate import Candidate
from detector.errors import NotifyError
from detector.lifecycle import AlertState, Decision, step
from detector.notify.commands import config_silences
from detector.notify.deliver import (
    DeliveryContext,
    DeliveryLimits,
    DeliveryReport,
    Route,
    deliver,
)
from detector.notify.health import check_health
from detector.notify.render import DigestLinks
from detector.store.alerts import AlertStore, RunRecord
from detector.store.backend import Backend

log = logging.getLogger(__name__)

__all__ = ["AlertOutcome", "EngineOutput", "JudgedWindow", "run_alerts"]

#: Digests without a run report, Log Analytics link or non-default KQL bin.
_NO_LINKS = DigestLinks()


@dataclass(frozen=True)
class JudgedWindow:
    """What the engine judged in one window, as the lifecycle takes it.

    ``anomalies`` and ``evaluated`` as :func:`detector.lifecycle.step` takes them (on a source
    error: ``[]`` and ``{}``); ``window_end`` identifies the window for idempotent reruns;
    ``charts``: the anomalies' chart series by fingerprint (None: no charts).
    """

    anomalies: Sequence[Anomaly]
    evaluated: Iterable[Any] | Mapping[str, Any] | None
    window_end: datetime
    charts: Mapping[str, pd.DataFrame] | None = None


@dataclass
class AlertOutcome:
    """What the alerting stage decided and delivered in one run."""

    decisions: list[Decision]
    report: DeliveryReport

    @property
    def ok(self) -> bool:
        return self.report.ok

    def raise_for_delivery(self) -> None:
        """Raise NotifyError (exit 1) if anything was left undelivered; call after saving."""
        if not self.report.ok:
            failed, dropped = self.report.failed, self.report.undeliverable
            parts = []
            if failed:
                targets = ", ".join(sorted({f"{d.route}:{d.target}" for d in failed}))
                parts.append(
                    f"{len(failed)} notification(s) not delivered ({targets});"
                    " kept in the outbox for the next run"
                )
            if dropped:
                targets = ", ".join(sorted({f"{d.route}:{d.target}" for d in dropped}))
                parts.append(
                    f"{len(dropped)} notification(s) can never be delivered ({targets}):"
                    " fix the URL; dropped from the outbox"
                )
            raise NotifyError("; ".join(parts))

    def to_json(self) -> dict[str, Any]:
        return {
            "decisions": [d.to_json() for d in self.decisions],
            "delivery": self.report.to_json(),
            "counts": _counts(self.decisions),
        }


def _counts(decisions: Sequence[Decision]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in decisions:
        out[str(d.reason)] = out.get(str(d.reason), 0) + 1
    out["notified"] = sum(1 for d in decisions if d.notify)
    return out


def _with_delivery(
    run: RunRecord, report: DeliveryReport, decisions: Sequence[Decision]
) -> RunRecord:
    """``run`` with what delivery did: notices that reached a target (sent or queued for a
    retry) count as notified; a notice whose routes had no usable URL does not."""
    reached = {fp for d in report.sent + report.failed if not d.retried for fp in d.fingerprints}
    return replace(
        run,
        notified=sum(1 for d in decisions if d.notify and d.fingerprint in reached),
        delivered=len(report.sent),
        failed=len(report.failed),
        undeliverable=len(report.undeliverable),
        unrouted=sorted({u["route"] for u in report.unrouted}),
    )


def _committer(store: AlertStore, state: AlertState) -> Callable[[str], None]:
    """``deliver``'s commit: save ``state`` (as it is now) with the batch id."""

    def commit(batch: str) -> None:
        store.save_state(state, commit_batch=batch)

    return commit


def run_alerts(
    judged: JudgedWindow,
    ctx: DeliveryContext,
    *,
    alerting: Mapping[str, Any],
    run: RunRecord | None = None,
    links: DigestLinks = _NO_LINKS,
    no_notify: bool = False,
) -> AlertOutcome:
    """Run the alerting stage for one judged window (see the module docstring).

    Parameters
    ----------
    judged : the engine's anomalies, evaluated fingerprints, window end and chart series. On
        a source error pass ``[]`` and ``{}`` with ``run.status="source_error"``: firing
        alerts keep their state (``no_data``) and the health check counts the failure.
    ctx : routes, store backend, the run's clock and ``dry_run`` (nothing written or sent).
    alerting : the ``[alerting]`` table (lifecycle, health, digest and outbox keys).
    run : this run's record (status, window, rows, schema drift); recorded at the end with
        the notified count and outbox size filled in. None: no run is recorded.
    links : the run report, the Log Analytics resource and the KQL bin digests link to.
    no_notify : update the state as if sent, but send nothing.

    Returns
    -------
    AlertOutcome. Raises ConfigError for bad ``[alerting]`` values, StateError when the store
    fails.
    """
    settings = alerting_settings(alerting)
    now, dry_run = ctx.now, ctx.dry_run
    store = AlertStore(ctx.backend)
    decisions, state = _decide(store, settings, judged, now)
    committed = store.committed()
    limits = DeliveryLimits(max_items=settings.max_items, outbox_max_age=settings.outbox_max_age)
    report = deliver(
        [] if no_notify else decisions,
        ctx,
        links=links,
        limits=limits,
        history_for_charts=judged.charts,
        retry_outbox=not no_notify,
        commit=_committer(store, state),
        committed=committed,
    )
    # Health is judged after delivery, on the outbox as it is now (a retry that just worked
    # is not an issue) and on what this run could not deliver, and sent as its own message
    # to the routes that take health notices.
    this_run = _with_delivery(run, report, decisions) if run is not None else None
    runs = store.runs() + ([this_run] if this_run is not None else [])
    outbox_now = [] if dry_run else store.outbox()
    health, state = check_health(runs, outbox_now, state, settings.health, now)
    if any(d.notify for d in health) and not no_notify:
        hreport = deliver(
            health,
            ctx,
            links=links,
            limits=limits,
            retry_outbox=False,
            commit=_committer(store, state),
        )
        report.merge(hreport)
    decisions = health + decisions
    if not dry_run:
        _save_and_record(store, state, run, report, decisions, len(judged.anomalies), now)
    return AlertOutcome(decisions, report)


def _decide(
    store: AlertStore, settings: AlertingSettings, judged: JudgedWindow, now: datetime
) -> tuple[list[Decision], AlertState]:
    """The lifecycle's decisions and next state, from the stored state, silences and acks."""
    state = store.load_state()
    silences = config_silences(settings, now) + store.silences()
    return step(
        list(judged.anomalies),
        judged.evaluated,
        state,
        settings.lifecycle,
        now,
        window_end=judged.window_end,
        silences=silences,
        acks=store.acks(),
    )


def _save_and_record(
    store: AlertStore,
    state: AlertState,
    run: RunRecord | None,
    report: DeliveryReport,
    decisions: list[Decision],
    n_anomalies: int,
    now: datetime,
) -> None:
    """Save the state, prune acks of resolved alerts, record the run with its outcome."""
    store.save_state(state)
    store.prune_acks(state)
    if run is None:
        return
    failed = run.status == "ok" and not report.ok
    store.record_run(
        replace(
            _with_delivery(run, report, decisions),
            finished_at=run.finished_at or now,
            anomalies=run.anomalies or n_anomalies,
            outbox_size=report.outbox_size,
            status="delivery_failed" if failed else run.status,
        )
    )


# --------------------------------------------------------------------------------------------
# Adapters for the pipeline: config objects and the run report in, JSON-able summary out
# --------------------------------------------------------------------------------------------


def _bin_text(bucket: Any) -> str:
    if isinstance(bucket, timedelta):
        s = int(bucket.total_seconds())
        for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
            if s % n == 0 and s >= n:
                return f"{s // n}{unit}"
        return f"{s}s"
    return str(bucket) if bucket else "5m"


def _report_dt(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


#: Share of rows dropped/flagged for a structural reason above which the schema likely drifted.
DRIFT_SHARE = 0.5
_STRUCTURAL_DROPS = (
    "missing_operation_name",
    "missing_operation_id",
    "invalid_timestamp",
    "malformed_record",
)
_STRUCTURAL_FLAGS = ("invalid_duration", "invalid_payload_json")


def schema_drift_reasons(source: Mapping[str, Any]) -> list[str]:
    """Drift suspected from a source summary (``rows_read``, ``operations``, ``dropped``,
    ``flagged`` as in the run report), plus any explicit ``schema_drift`` list it carries.

    A column that was renamed or removed upstream shows up as most rows dropped (no
    OperationName/OperationId/timestamp) or flagged (no usable DurationMs), not as an error.
    """
    out = [str(x) for x in (source.get("schema_drift") or [])]
    rows = float(source.get("rows_read") or 0)
    ops = float(source.get("operations") or 0)
    dropped = source.get("dropped") or {}
    flagged = source.get("flagged") or {}
    for key in _STRUCTURAL_DROPS:
        n = float(dropped.get(key, 0) or 0)
        if rows > 0 and n / rows > DRIFT_SHARE:
            out.append(f"{n / rows:.0%} of rows dropped as {key}")
    for key in _STRUCTURAL_FLAGS:
        n = float(flagged.get(key, 0) or 0)
        if ops > 0 and n / ops > DRIFT_SHARE:
            out.append(f"{n / ops:.0%} of operations flagged {key}")
    return out


def _run_record(report: Mapping[str, Any], now: datetime, n_anomalies: int) -> RunRecord:
    src = report.get("source") or {}
    det = report.get("detection") or {}
    win = report.get("window") or {}
    read = report.get("arrival_window") or win
    rows = src.get("operations", src.get("rows_read", src.get("rows")))
    failed = [str(x) for x in src.get("failed_targets") or []]  # workspaces not read (issue 22)
    return RunRecord(
        status="source_error" if failed else "ok",
        error="; ".join(failed)[:300],
        started_at=_report_dt(report.get("now")) or now,
        read_start=_report_dt(read.get("start")),
        window_start=_report_dt(win.get("start")),
        window_end=_report_dt(win.get("end")),
        rows=int(rows) if rows is not None else None,
        partitions=det.get("partitions"),
        anomalies=n_anomalies,
        schema_drift=schema_drift_reasons(src),
        unjudged="; ".join(str(w) for w in report.get("warnings") or [])[:300],
    )


@dataclass(frozen=True)
class EngineOutput:
    """What the engine produced for the judged window, as the pipeline holds it.

    ``anomalies``: gated anomalies of the window. ``candidates``: those the engine could judge
    count as evaluated. ``history``: the :class:`~detector.schema.BucketAggregates` it judged
    (every partition with calls in the window counts as evaluated: firing alerts can resolve;
    chart series); None: only ``candidates`` count. ``window``: the judged window (None: the
    run report's, else the anomalies' span). ``bucket``: the bucket width (timedelta or "5m").
    """

    anomalies: Sequence[Anomaly]
    candidates: Sequence[Candidate] = ()
    history: Any = None
    window: tuple[datetime, datetime] | None = None
    bucket: Any = "5m"


def run_alerting(
    output: EngineOutput,
    ctx: DeliveryContext,
    *,
    alerting: Mapping[str, Any],
    send: bool = True,
    report: Mapping[str, Any] | None = None,
    report_url_or_path: str | None = None,
) -> dict[str, Any]:
    """The alerting stage for the pipeline; returns a JSON-able summary for the run report.

    Parameters
    ----------
    output : the engine's anomalies, candidates, judged history, window and bucket width;
        they become the :class:`JudgedWindow` of :func:`run_alerts`.
    ctx : routes, store backend, the lifecycle's clock and ``dry_run``.
    alerting : the ``[alerting]`` table.
    send : False = ``--no-notify`` (state updated, nothing sent).
    report : the run report so far (``window``, ``now``, ``source``, ``detection``,
        ``log_analytics``): gives the judged window, this run's record for ``status`` and
        health, and the resource id of the "Open in Log Analytics" links.
    report_url_or_path : where digests point for the full report (None: ``report_url``).

    Returns
    -------
    dict with ``ok``, ``sent``, ``failed`` (empty when everything was delivered), ``expired``,
    ``outboxed``, ``outbox_size``, ``messages`` (dry run), ``decisions`` and ``counts``.
    Everything is saved before it returns; the caller exits 1 when ``failed`` is non-empty.
    """
    anomalies = list(output.anomalies)
    report = report or {}
    now, bucket = ctx.now, output.bucket
    window = output.window or _judged_window(report, anomalies, now)
    ev, charts = _evaluated_and_charts(
        output.candidates, output.history, window, anomalies, bucket, alerting_settings(alerting)
    )
    links = DigestLinks(
        report_url=report_url_or_path or report.get("report_url"),
        portal_resource_id=(report.get("log_analytics") or {}).get("resource_id"),
        bin_size=_bin_text(bucket),
    )
    outcome = run_alerts(
        JudgedWindow(anomalies, ev, window_end=window[1], charts=charts),
        ctx,
        alerting=alerting,
        run=_run_record(report, now, len(anomalies)),
        links=links,
        no_notify=not send,
    )
    out = outcome.report.to_json()
    out["decisions"] = [d.to_json() for d in outcome.decisions]
    out["counts"] = _counts(outcome.decisions)
    return out


def _judged_window(
    report: Mapping[str, Any], anomalies: list[Anomaly], now: datetime
) -> tuple[datetime, datetime]:
    """The window the engine judged: the report's, else the anomalies' span, else ``now``."""
    win = report.get("window") or {}
    ws, we = _report_dt(win.get("start")), _report_dt(win.get("end"))
    if ws is not None and we is not None:
        return ws, we
    if anomalies:
        return min(a.window_start for a in anomalies), max(a.window_end for a in anomalies)
    return now, now


def _evaluated_and_charts(
    candidates: Sequence[Candidate],
    history: Any,
    window: tuple[datetime, datetime],
    anomalies: list[Anomaly],
    bucket: Any,
    settings: AlertingSettings,
) -> tuple[dict[str, Any], Mapping[str, pd.DataFrame] | None]:
    """What was evaluated in the window (the engine's candidates, plus every partition with
    calls in ``history``) and the chart series of the anomalies (None without history)."""
    from detector.notify.evaluated import (
        chart_history,
        evaluated_from_candidates,
        evaluated_from_history,
    )

    ev: dict[str, Any] = evaluated_from_candidates(candidates)
    if history is None:
        return ev, None
    width = bucket if isinstance(bucket, timedelta) else timedelta(minutes=5)
    ev.update(
        evaluated_from_history(
            history,
            window,
            candidates=candidates,
            bucket=width,
            min_calls=settings.resolve_min_calls,
        )
    )
    try:
        charts = chart_history(history, anomalies, now=window[1])
    except Exception as exc:  # a chart must never cost the alert, but it is not silent
        log.warning("charts for the alerts failed: %s: %s", type(exc).__name__, exc)
        charts = None
    return ev, charts


def record_failed_run(
    *,
    backend: Backend,
    routes: Sequence[Any],
    alerting: Mapping[str, Any],
    now: datetime,
    error: str,
    status: str = "source_error",
    dry_run: bool = False,
) -> dict[str, Any]:
    """Record a run that failed before detection and send self-health notices if due.

    Call it when the source raised (``status="source_error"``; ``error`` one line, no secret):
    firing alerts keep their state, the outbox is retried, and after
    ``health_source_error_runs`` such runs in a row every health route is told.
    """
    ctx = DeliveryContext(
        routes=[r if isinstance(r, Route) else Route.from_config(r) for r in routes],
        backend=backend,
        now=now,
        dry_run=dry_run,
    )
    outcome = run_alerts(
        JudgedWindow([], {}, window_end=now),
        ctx,
        alerting=alerting,
        run=RunRecord(started_at=now, status=status, error=error[:300]),
    )
    out = outcome.report.to_json()
    out["decisions"] = [d.to_json() for d in outcome.decisions if d.kind == "health"]
    return out
