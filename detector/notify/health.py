"""Self-health notices: tell people when the detector itself is failing.

Consumes the run history (:class:`~detector.store.alerts.RunRecord`, oldest first), the outbox
and the previous health records kept in :attr:`AlertState.health`; produces health
:class:`~detector.lifecycle.Decision` objects (``kind="health"``) and the next health records.
Issues checked (Azure disables a failing rule after a week; Elastic needs separate job-health
rules; here they come with the job):

* ``source_errors``: the last ``source_error_runs`` runs all failed to read the log;
* ``no_data``: runs have returned no rows for at least ``no_data_after``;
* ``schema_drift``: the latest run reported unexpected or missing columns;
* ``unjudged_span``: the latest run caught up less than its downtime (``max_catchup``);
* ``outbox``: undelivered messages pile up (``outbox_warn_items``) or wait too long
  (``outbox_warn_age``): delivery itself is failing, so this goes to every route that takes
  health notices, and whichever channel still works carries it;
* ``undeliverable``: the latest run dropped messages no retry can deliver (malformed URL, no
  such service): someone must fix the route;
* ``no_targets``: the latest run had notices for a route whose URLs are all empty (an unset
  ``${VAR:-}``): they went nowhere.

Each issue notifies once when it starts, again every ``repeat_interval``, and once when it
clears. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from detector.errors import ConfigError
from detector.lifecycle import AlertState, Decision, Reason, _dt, _duration, _iso
from detector.store.alerts import OutboxItem, RunRecord

__all__ = ["HealthPolicy", "check_health"]


@dataclass(frozen=True)
class HealthPolicy:
    """Thresholds of the self-health checks (``[alerting]`` keys with a ``health_`` prefix)."""

    source_error_runs: int = 3
    no_data_after: timedelta = timedelta(hours=6)
    outbox_warn_items: int = 10
    outbox_warn_age: timedelta = timedelta(hours=2)
    repeat_interval: timedelta = timedelta(hours=12)

    @classmethod
    def from_config(cls, alerting: Mapping[str, Any]) -> HealthPolicy:
        """Keys: ``health_source_error_runs``, ``health_no_data_after``,
        ``health_outbox_items``, ``health_outbox_age``, ``health_repeat_interval``."""
        problems: list[str] = []
        kw: dict[str, Any] = {}
        for key, attr in (
            ("health_no_data_after", "no_data_after"),
            ("health_outbox_age", "outbox_warn_age"),
            ("health_repeat_interval", "repeat_interval"),
        ):
            if alerting.get(key) is not None:
                kw[attr] = _duration(alerting[key], key, problems)
        for key, attr in (
            ("health_source_error_runs", "source_error_runs"),
            ("health_outbox_items", "outbox_warn_items"),
        ):
            if alerting.get(key) is not None:
                try:
                    kw[attr] = int(alerting[key])
                    if kw[attr] < 1:
                        raise ValueError
                except (TypeError, ValueError):
                    problems.append(f"alerting.{key}: must be an integer >= 1")
        if problems:
            raise ConfigError(problems)
        return cls(**kw)


def _issues(
    runs: Sequence[RunRecord], outbox: Sequence[OutboxItem], policy: HealthPolicy, now: datetime
) -> dict[str, dict[str, Any]]:
    """The issues present now: name -> {severity, summary, detail}."""
    out: dict[str, dict[str, Any]] = {}
    k = policy.source_error_runs
    last = list(runs[-k:])
    if len(last) >= k and all(r.status == "source_error" for r in last):
        out["source_errors"] = {
            "severity": "critical",
            "summary": f"reading the log failed in the last {k} runs",
            "detail": f"last error: {last[-1].error or 'unknown'}"[:300],
        }
    # no data: the trailing streak of runs that read 0 rows, and how long it has lasted
    streak_start = None
    for r in reversed(runs):
        if r.status == "source_error":
            continue  # a failed read says nothing about data; source_errors covers it
        if r.rows == 0:
            # what was read, not what was judged: a rerun after a crash judges hours it
            # had already read, and finding nothing new there is not an outage
            streak_start = r.read_start or r.window_start or r.started_at
        else:
            break
    if streak_start is not None and now - streak_start >= policy.no_data_after:
        hours = (now - streak_start).total_seconds() / 3600
        out["no_data"] = {
            "severity": "warning",
            "summary": f"no call client operations for {hours:.0f} h",
            "detail": "check the Diagnostic Settings export of CallClientOperations and the source config",
        }
    if runs and runs[-1].schema_drift:
        out["schema_drift"] = {
            "severity": "warning",
            "summary": "the log's columns changed",
            "detail": "; ".join(str(x) for x in runs[-1].schema_drift)[:300],
        }
    latest = runs[-1] if runs else None
    if latest is not None and latest.undeliverable:
        out["undeliverable"] = {
            "severity": "critical",
            "summary": f"{latest.undeliverable} notification(s) can never be delivered",
            "detail": "a notify URL is malformed or names no apprise service;"
            " see the run report's delivery.undeliverable and `acs-detector check-config`",
        }
    if latest is not None and latest.unrouted:
        out["no_targets"] = {
            "severity": "warning",
            "summary": "notices went nowhere: route(s) with no usable URL",
            "detail": "routes: " + ", ".join(latest.unrouted[:5]),
        }
    if runs and runs[-1].unjudged:
        out["unjudged_span"] = {
            "severity": "critical",
            "summary": "the detector was down longer than it catches up: a span was not judged",
            "detail": runs[-1].unjudged[:300],
        }
    if outbox:
        oldest = max(i.age(now) for i in outbox)
        if (
            len(outbox) >= policy.outbox_warn_items
            or oldest >= policy.outbox_warn_age.total_seconds()
        ):
            targets = sorted({i.target for i in outbox})
            out["outbox"] = {
                "severity": "critical",
                "summary": f"{len(outbox)} notification(s) undelivered, oldest {oldest / 3600:.1f} h",
                "detail": "failing targets: " + ", ".join(targets[:5]),
            }
    return out


def check_health(
    runs: Sequence[RunRecord],
    outbox: Sequence[OutboxItem],
    state: AlertState,
    policy: HealthPolicy,
    now: datetime,
) -> tuple[list[Decision], AlertState]:
    """Health decisions for this run and the state with updated health records.

    Parameters
    ----------
    runs : run history, oldest first, *including* the current run's record when the
        caller wants it judged (e.g. a source error that just happened).
    outbox : undelivered messages after this run's delivery attempt.
    state : alert state; only ``state.health`` is read and replaced.

    Returns
    -------
    (decisions, new_state) : decisions with ``kind="health"``, ``notify`` set for new,
    repeated and resolved issues.
    """
    issues = _issues(runs, outbox, policy, now)
    old = state.health
    new: dict[str, dict[str, Any]] = {}
    decisions: list[Decision] = []
    for name in sorted(set(issues) | set(old)):
        prev = old.get(name)
        issue = issues.get(name)
        fp = f"health|{name}"
        if issue is None:
            if prev is not None:
                decisions.append(
                    Decision(
                        fp,
                        Reason.RESOLVED,
                        True,
                        "resolved",
                        prev.get("severity", "warning"),
                        now,
                        started_at=_dt(prev.get("since")),
                        resolved_at=now,
                        kind="health",
                        health={**prev, "summary": f"{prev.get('summary')}: cleared"},
                    )
                )
            continue
        rec = dict(issue)
        if prev is None:
            rec["since"], rec["notified_at"], reason = _iso(now), _iso(now), Reason.NEW
        else:
            rec["since"] = prev.get("since")
            last = _dt(prev.get("notified_at"))
            if last is None or now - last >= policy.repeat_interval:
                rec["notified_at"], reason = _iso(now), Reason.REPEAT_DUE
            else:
                rec["notified_at"], reason = prev.get("notified_at"), Reason.STILL_FIRING
        new[name] = rec
        decisions.append(
            Decision(
                fp,
                reason,
                reason in (Reason.NEW, Reason.REPEAT_DUE),
                "firing",
                rec["severity"],
                now,
                started_at=_dt(rec["since"]),
                kind="health",
                health=rec,
            )
        )
    return decisions, AlertState(state.records, new)
