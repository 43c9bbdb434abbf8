"""The console summary of a run report: what ``acs-detector run`` and ``demo`` print.

The pipeline returns the report; the CLI formats it here for the terminal.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from detector.anomaly import Anomaly
from detector.escape import for_terminal

__all__ = ["console_summary"]


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
