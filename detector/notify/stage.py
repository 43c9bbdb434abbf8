"""The whole alerting stage of one run, in the order that loses nothing.

Consumes the engine's gated anomalies and evaluated fingerprints for the judged window, the
``[alerting]`` config, the routes, the store backend and ``now``; produces an
:class:`AlertOutcome` (decisions with reasons, the delivery report). Order:

1. load state, silences (config + ``acs-detector silence``) and acks;
2. :func:`detector.lifecycle.step`, then the self-health check (with this run's record);
3. deliver (outbox first, then digests, written ahead to the outbox);
4. save the state, prune acks of resolved alerts, record the run.

State is saved after delivery: a crash in between re-sends on the next run (at-least-once),
never loses. ``dry_run`` writes and sends nothing; ``no_notify`` updates the state as if sent
but sends nothing. Raising on failed delivery is left to the caller (after this returns,
everything is saved): ``if not outcome.report.ok: raise NotifyError(...)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from detector.anomaly import Anomaly
from detector.errors import NotifyError
from detector.lifecycle import Decision, LifecyclePolicy, step
from detector.notify.commands import config_silences
from detector.notify.deliver import DeliveryReport, Route, deliver
from detector.notify.health import HealthPolicy, check_health
from detector.store.alerts import AlertStore, RunRecord
from detector.store.backend import Backend

__all__ = ["AlertOutcome", "run_alerts"]


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
            targets = ", ".join(sorted({f"{d.route}:{d.target}" for d in self.report.failed}))
            raise NotifyError(
                f"{len(self.report.failed)} notification(s) not delivered ({targets});"
                " kept in the outbox for the next run"
            )

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


def _td(value: Any, default: timedelta) -> timedelta:
    if value is None:
        return default
    if isinstance(value, timedelta):
        return value
    from detector.lifecycle import _duration

    problems: list[str] = []
    out = _duration(value, "outbox_max_age", problems)
    return out if out is not None else default


def run_alerts(
    anomalies: Iterable[Anomaly],
    evaluated: Iterable[Any] | Mapping[str, Any] | None,
    *,
    backend: Backend,
    routes: Sequence[Route],
    alerting: Mapping[str, Any],
    now: datetime,
    window_end: datetime,
    run: RunRecord | None = None,
    history_for_charts: Mapping[str, pd.DataFrame] | None = None,
    report_url_or_path: str | None = None,
    bin_size: str = "5m",
    dry_run: bool = False,
    no_notify: bool = False,
) -> AlertOutcome:
    """Run the alerting stage for one judged window (see the module docstring).

    Parameters
    ----------
    anomalies, evaluated : from the engine (see :func:`detector.lifecycle.step`). On a source
        error pass ``[]`` and ``{}`` with ``run.status="source_error"``: firing alerts keep
        their state (``no_data``) and the health check counts the failure.
    alerting : the ``[alerting]`` table (lifecycle, health, digest and outbox keys).
    run : this run's record (status, window, rows, schema drift); recorded at the end with
        the notified count and outbox size filled in. None: no run is recorded.

    Returns
    -------
    AlertOutcome. Raises ConfigError for bad ``[alerting]`` values, StateError when the store
    fails.
    """
    policy = LifecyclePolicy.from_config(alerting)
    hpolicy = HealthPolicy.from_config(alerting)
    anomalies = list(anomalies)
    store = AlertStore(backend)
    state = store.load_state()
    silences = config_silences(alerting, now) + store.silences()
    decisions, state = step(
        anomalies,
        evaluated,
        state,
        policy,
        now,
        window_end=window_end,
        silences=silences,
        acks=store.acks(),
    )
    common: dict[str, Any] = {
        "routes": routes,
        "store_backend": backend,
        "report_url_or_path": report_url_or_path,
        "now": now,
        "dry_run": dry_run,
        "max_items": int(alerting.get("max_items", alerting.get("max_items_per_digest", 10))),
        "outbox_max_age": _td(alerting.get("outbox_max_age"), timedelta(days=2)),
        "bin_size": bin_size,
    }
    report = deliver(
        [] if no_notify else decisions,
        history_for_charts=history_for_charts,
        retry_outbox=not no_notify,
        **common,
    )
    # Health is judged after delivery, on the outbox as it is now (a retry that just worked
    # is not an issue), and sent as its own message to the routes that take health notices.
    runs = store.runs() + ([run] if run is not None else [])
    outbox_now = [] if dry_run else store.outbox()
    health, state = check_health(runs, outbox_now, state, hpolicy, now)
    if any(d.notify for d in health) and not no_notify:
        hreport = deliver(health, retry_outbox=False, **common)
        report.sent += hreport.sent
        report.failed += hreport.failed
        report.messages += hreport.messages
        report.outbox_size = hreport.outbox_size
    decisions = health + decisions
    if not dry_run:
        store.save_state(state)
        store.prune_acks(state)
        if run is not None:
            store.record_run(
                replace(
                    run,
                    finished_at=run.finished_at or now,
                    notified=sum(1 for d in decisions if d.notify),
                    anomalies=run.anomalies or len(anomalies),
                    outbox_size=report.outbox_size,
                    status=(
                        "delivery_failed" if run.status == "ok" and not report.ok else run.status
                    ),
                )
            )
    return AlertOutcome(decisions, report)
