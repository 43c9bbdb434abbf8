"""The HTML report of one run: a single self-contained page a person opens in a browser.

Consumes the run's anomalies (:class:`~detector.anomaly.Anomaly`), its run report (the JSON
dict the pipeline writes: counts per stage, timings, decisions with reasons, dropped rows per
reason) and, optionally, the observed and baseline series behind each alert. Produces one HTML
file with inline CSS and each chart as an inline base64 PNG (matplotlib, Agg backend): no
scripts, no fonts, no network; a Content-Security-Policy forbids anything that is not inline,
so the page looks the same from a mail attachment, a CI artefact or a file share.

One section per alert (the windows of a partition x metric merged, see
:func:`detector.words.incidents`): what moved in plain words with units, since when, why it
is believed, an "Open in Log Analytics" link that runs its KQL in the Azure portal, a chart
of observed vs the usual range with the alert's windows shaded, then result codes, example
CallIds and the KQL. Then a compact "why not alerted" table of near misses and the run
summary; the raw run report is a JSON file beside the page, behind a link. All text is
escaped by :func:`detector.escape.for_html_block` (entities, and no control or bidi
character), and chart titles are drawn without mathtext, so a ``$`` in a name is a dollar
sign.

Pure rendering (:func:`render_html_report`) plus the file writes (:func:`write_html_report`).
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeGuard
from urllib.parse import quote

from detector.anomaly import Anomaly
from detector.escape import clean, for_html_block
from detector.timeutil import utc
from detector.words import (
    Incident,
    change_text,
    fmt_value,
    gate_words,
    incidents,
    portal_query_url,
    what_moved,
    why_believed,
)

__all__ = [
    "SERIES_COLUMNS",
    "chart_png",
    "read_anomalies",
    "render_html_report",
    "write_html_report",
]

#: Columns of a per-alert series frame (``bucket_start`` UTC; values in the metric's unit).
SERIES_COLUMNS = ("bucket_start", "observed", "baseline", "band_low", "band_high")

_UNITS = {"duration": "ms", "failure_rate": "%", "volume": "calls / bucket"}
_METRIC_LABEL = {"duration": "duration", "failure_rate": "failure rate", "volume": "volume"}
# Chart colours (also what the browser test looks for in the screenshot).
OBSERVED_COLOR = "#d62728"
BASELINE_COLOR = "#1f77b4"
BAND_COLOR = "#aec7e8"
WINDOW_COLOR = "#ffbb78"

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2329;
background:#f4f6f8}
main{max-width:1100px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:16px 0 4px}h2{font-size:18px;margin:0 0 8px}
h3{font-size:15px;margin:16px 0 6px}
.meta{color:#5b6670;margin:0 0 12px}
section.card{background:#fff;border:1px solid #dde3e8;border-radius:8px;padding:16px 20px;
margin:16px 0}
table{border-collapse:collapse;margin:4px 0 8px;font-size:13px;max-width:100%}
th,td{border-bottom:1px solid #e6eaee;padding:4px 10px 4px 0;text-align:left;vertical-align:top;
overflow-wrap:anywhere}
p.moved{font-size:15px;margin:6px 0}
a.portal{display:inline-block;margin:4px 0 8px;font-weight:600}
th{color:#5b6670;font-weight:600;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;border-radius:10px;padding:1px 9px;font-size:12px;font-weight:600;
color:#fff;vertical-align:middle}
.critical{background:#b42318}.warning{background:#c4620a}.info{background:#3b6fb6}
.ok{background:#2e7d32}.muted{background:#6b7785}
.provisional{background:#fff4e5;border:1px solid #f3c98b;border-radius:6px;padding:6px 10px;
margin:8px 0}
img.chart{max-width:100%;height:auto;border:1px solid #e6eaee;border-radius:4px}
pre{background:#f6f8fa;border:1px solid #e6eaee;border-radius:6px;padding:8px;overflow:auto;
font-size:12px;white-space:pre-wrap;word-break:break-word}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.stat{background:#fff;border:1px solid #dde3e8;border-radius:8px;padding:10px 16px;min-width:120px}
.stat b{display:block;font-size:22px}
a{color:#0b5cad}
"""


# --------------------------------------------------------------------------------------------
# Formatting helpers
# --------------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    """Escape any value for HTML text or attribute context (line breaks kept for ``<pre>``)."""
    return for_html_block(value)


def _when(ts: object) -> str:
    """A time for people: ``2026-11-25 10:00 UTC`` (anything else as text, None as "")."""
    if isinstance(ts, datetime):
        return utc(ts).strftime("%Y-%m-%d %H:%M UTC")
    return "" if ts is None else str(ts)


def _finite(x: object) -> TypeGuard[int | float]:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _fmt_num(x: Any) -> str:
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return "n/a" if not math.isfinite(x) else f"{x:,.4g}"
    return str(x)


def _title(a: Anomaly) -> str:
    version = a.sdk_version if a.sdk_version else "all SDK versions"
    return f"{a.operation_name} · {version} · {_METRIC_LABEL.get(a.metric, a.metric)}"


def _anchor(i: int) -> str:
    return f"alert-{i + 1}"


# --------------------------------------------------------------------------------------------
# Charts
# --------------------------------------------------------------------------------------------


def _series_for(a: Anomaly, series: Mapping[str, Any] | None) -> Any:
    """The series frame of an alert: ``series[fingerprint]``, else ``details["series"]``."""
    import pandas as pd

    frame = None
    if series is not None:
        frame = series.get(a.fingerprint)
    if frame is None and isinstance(a.details.get("series"), list):
        frame = pd.DataFrame(a.details["series"])
    if frame is None:
        return None
    frame = pd.DataFrame(frame)
    if "bucket_start" not in frame or "observed" not in frame or frame.empty:
        return None
    frame = frame.copy()
    # Naive UTC for matplotlib, whatever the input (tz-aware, strings, naive).
    frame["bucket_start"] = pd.to_datetime(frame["bucket_start"], utc=True).dt.tz_localize(None)
    for col in SERIES_COLUMNS[1:]:
        if col in frame:
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
        else:  # e.g. no band stored: draw what there is
            frame[col] = float("nan")
    return frame.sort_values("bucket_start")


def chart_png(a: Anomaly, frame: Any = None, *, width: float = 9.0, height: float = 3.2) -> bytes:
    """Render one alert's chart as PNG bytes.

    With a series frame (columns :data:`SERIES_COLUMNS`): the baseline band as a shaded area,
    the baseline as a dashed line, the observed values as a line with markers, and the alert
    window shaded. Without one: observed vs baseline as two bars with the band as an error bar.
    Failure rates are drawn in percent.

    Parameters
    ----------
    a : Anomaly
        The alert.
    frame : pandas.DataFrame, optional
        Its series (already normalised by the report, or raw with the same columns).
    width, height : float
        Figure size in inches (100 dpi).

    Returns
    -------
    bytes
        A PNG image.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
    from matplotlib.figure import Figure

    scale = 100.0 if a.metric == "failure_rate" else 1.0
    unit = _UNITS.get(a.metric, "")
    # Figure + Agg canvas, never pyplot: no global state, safe in threads and servers.
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if frame is not None:
        x = frame["bucket_start"].to_numpy()
        low = frame["band_low"].to_numpy() * scale
        high = frame["band_high"].to_numpy() * scale
        if np.isfinite(low).any() and np.isfinite(high).any():
            ax.fill_between(
                x, low, high, color=BAND_COLOR, alpha=0.7, linewidth=0, label="usual range"
            )
        base = frame["baseline"].to_numpy() * scale
        if np.isfinite(base).any():
            ax.plot(x, base, color=BASELINE_COLOR, linestyle="--", linewidth=1.5, label="usual")
        # The band is a profile, drawn continuously; observed breaks where buckets are missing.
        gapped = _break_gaps(frame)
        ax.plot(
            gapped["bucket_start"].to_numpy(),
            gapped["observed"].to_numpy() * scale,
            color=OBSERVED_COLOR,
            linewidth=2,
            marker="o",
            markersize=3,
            label="observed",
        )
        start = _naive_utc(a.window_start)
        end = _naive_utc(a.window_end)
        if start is not None and end is not None:
            x0, x1 = date2num([start, end])
            ax.axvspan(
                float(x0),
                float(x1),
                color=WINDOW_COLOR,
                alpha=0.35,
                linewidth=0,
                label="alert window",
            )
        locator = AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
        ax.set_xlabel("bucket start (UTC)")
        # Below the axes, so it never hides the data.
        ax.legend(loc="upper left", bbox_to_anchor=(0, -0.3), fontsize=8, frameon=False, ncol=4)
    else:
        observed = a.observed * scale if _finite(a.observed) else 0.0
        baseline = a.baseline * scale if _finite(a.baseline) else 0.0
        bars = ax.bar(
            ["usual", "observed"], [baseline, observed], color=[BASELINE_COLOR, OBSERVED_COLOR]
        )
        if _finite(a.band_low) and _finite(a.band_high):
            lo, hi = a.band_low * scale, a.band_high * scale
            ax.errorbar(
                [0],
                [baseline],
                yerr=[[max(baseline - lo, 0)], [max(hi - baseline, 0)]],
                color="#333333",
                capsize=8,
                label="usual range",
            )
            ax.legend(loc="upper left", fontsize=8, frameon=False)
        ax.bar_label(bars, fmt="%.4g", fontsize=8)
    ax.set_ylabel(unit)
    ax.set_title(clean(_title(a), 120), fontsize=10, loc="left", parse_math=False)
    ax.grid(axis="y", color="#e6eaee", linewidth=0.8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _break_gaps(frame: Any) -> Any:
    """Insert an empty row where buckets are missing, so lines break instead of drawing a
    straight segment across hours without calls (sparse partitions have many gaps)."""
    import numpy as np
    import pandas as pd

    if len(frame) < 3:
        return frame
    steps = frame["bucket_start"].diff().dropna()
    step = steps[steps > pd.Timedelta(0)].min()
    if pd.isna(step):
        return frame
    gaps = frame.index[frame["bucket_start"].diff() > step * 1.5]
    if len(gaps) == 0:
        return frame
    filler = pd.DataFrame(
        {
            "bucket_start": frame.loc[gaps, "bucket_start"] - step,
            **{c: np.nan for c in SERIES_COLUMNS[1:]},
        }
    )
    return pd.concat([frame, filler], ignore_index=True).sort_values("bucket_start")


def _naive_utc(ts: object) -> datetime | None:
    """A datetime in UTC without its zone (matplotlib's dates), None for anything else."""
    return utc(ts).replace(tzinfo=None) if isinstance(ts, datetime) else None


# --------------------------------------------------------------------------------------------
# HTML blocks
# --------------------------------------------------------------------------------------------


def _kv_table(rows: Iterable[tuple[str, Any]]) -> str:
    out = ["<table>"]
    for key, value in rows:
        cls = (
            ' class="num"' if isinstance(value, int | float) and not isinstance(value, bool) else ""
        )
        text = value if isinstance(value, str) else _fmt_num(value)
        out.append(f"<tr><th>{_e(key)}</th><td{cls}>{_e(text)}</td></tr>")
    out.append("</table>")
    return "".join(out)


def _flat(d: Mapping[str, Any]) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
    """Split a dict into scalar rows and nested rest."""
    rows, nested = [], {}
    for k, v in d.items():
        if isinstance(v, Mapping | list | tuple):
            nested[k] = v
        else:
            rows.append((str(k), v))
    return rows, nested


_PREFERRED = (
    "operation_name",
    "sdk_version",
    "metric",
    "reason",
    "decision",
    "severity",
    "score",
    "observed",
    "baseline",
    "calls",
    "bucket_start",
    "window_start",
    "window_end",
)


def _records_table(records: Sequence[Mapping[str, Any]], limit: int = 500) -> str:
    cols: list[str] = [c for c in _PREFERRED if any(c in r for r in records)]
    for r in records:
        for k, v in r.items():
            if k not in cols and not isinstance(v, Mapping | list | tuple):
                cols.append(str(k))
    out = ["<table><tr>", *(f"<th>{_e(c)}</th>" for c in cols), "</tr>"]
    for r in records[:limit]:
        out.append("<tr>")
        for c in cols:
            v = r.get(c)
            cls = ' class="num"' if isinstance(v, int | float) and not isinstance(v, bool) else ""
            out.append(f"<td{cls}>{_e('' if v is None else _fmt_num(v))}</td>")
        out.append("</tr>")
    out.append("</table>")
    if len(records) > limit:
        out.append(f"<p>… and {len(records) - limit:,} more (see the JSON report)</p>")
    return "".join(out)


def _badge(severity: str) -> str:
    cls = severity if severity in ("critical", "warning", "info") else "muted"
    return f'<span class="badge {cls}">{_e(severity)}</span>'


def _kql_of(a: Anomaly) -> str:
    """The KQL that reproduces an alert: the engine's own when it gave one, else ours."""
    kql = a.details.get("kql") if isinstance(a.details, Mapping) else None
    if isinstance(kql, str) and kql.strip():
        return kql
    from detector.notify.render import kql_for

    return kql_for(a)


def _portal_block(kql: str, scope: Mapping[str, Any]) -> str:
    url = portal_query_url(kql, scope.get("resource_id"))
    if url:
        return f'<a class="portal" href="{_e(url)}">Open in Log Analytics</a>'
    note = scope.get("note")
    return f'<p class="meta">{_e(note)}</p>' if note else ""


def _alert_section(i: int, inc: Incident, frame: Any, scope: Mapping[str, Any]) -> str:
    """One alert: what moved, since when, why it is believed, its chart, then drill-down."""
    a = inc.worst
    # The chart shades every window of the alert, not only the one whose numbers are shown.
    png = chart_png(replace(a, window_start=inc.start, window_end=inc.end), frame)
    src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    alt = (
        f"{_title(a)}: {fmt_value(a.metric, a.observed)} vs {fmt_value(a.metric, a.baseline)} usual"
    )
    span = f"{_when(inc.start)} to {_when(inc.end)}"
    if inc.windows > 1:
        span += f" ({inc.windows} windows merged; the numbers are from the furthest from usual)"
    kql = _kql_of(a)
    parts = [
        f'<section class="card" id="{_anchor(i)}">',
        f"<h2>{_badge(inc.severity)} {_e(_title(a))}</h2>",
        f'<p class="moved"><b>{_e(what_moved(a))}</b></p>',
        _kv_table([("When", span), ("Why we believe it", why_believed(a))]),
        _portal_block(kql, scope),
    ]
    parts.append(f'<img class="chart" alt="{_e(alt)}" src="{src}">')
    if frame is None:
        parts.append(
            '<p class="meta">No time series was stored for this alert; the chart shows '
            "the window's value against the usual level.</p>"
        )
    facts: list[tuple[str, Any]] = []
    if _finite(a.band_low) or _finite(a.band_high):
        facts.append(
            (
                "usual range",
                f"{fmt_value(a.metric, a.band_low)} to {fmt_value(a.metric, a.band_high)}",
            )
        )
    if a.failures and a.metric != "failure_rate":
        facts.append(("failed operations", f"{a.failures:,}"))
    if facts:
        parts.append(_kv_table(facts))
    if a.top_result_codes:
        parts.append(f"<h3>Top failing result codes</h3>{_records_table(a.top_result_codes)}")
    if a.example_call_ids:
        items = "".join(f"<li><code>{_e(c)}</code></li>" for c in a.example_call_ids)
        parts.append(f"<h3>Example CallIds (for Call Diagnostics)</h3><ul>{items}</ul>")
    parts.append(f"<details><summary>KQL to reproduce</summary><pre>{_e(kql)}</pre></details>")
    parts.append("</section>")
    return "".join(parts)


#: Gates in the order a candidate passes them: the further, the nearer a miss.
_NEAR_GATES = (
    "explained_by_version",
    "explained_by_fleet",
    "not_persistent",
    "below_min_effect",
    "not_significant",
    "suppressed_low_volume",
)


def _near_misses(candidates: Any, limit: int = 12) -> str:
    """The compact "why not alerted" table: candidates that got furthest, nearest first."""
    if not isinstance(candidates, list):
        return ""
    rows = [
        c
        for c in candidates
        if isinstance(c, Mapping) and c.get("reason") in _NEAR_GATES and c.get("metric")
    ]
    if not rows:
        return "<p>No near misses.</p>"

    def key(c: Mapping[str, Any]) -> tuple[int, float]:
        p = c.get("p_value")
        return (_NEAR_GATES.index(c["reason"]), p if _finite(p) else 1.0)

    rows.sort(key=key)
    out = [
        "<table><tr><th>partition</th><th>value vs usual</th><th>change</th><th>calls</th>"
        "<th>why not alerted</th></tr>"
    ]
    for c in rows[:limit]:
        m = str(c.get("metric"))
        ver = c.get("sdk_version") or "all SDK versions"
        what = f"{c.get('operation_name')} · {ver} · {_METRIC_LABEL.get(m, m)}"
        value = f"{fmt_value(m, c.get('observed'))} vs {fmt_value(m, c.get('expected'))}"
        calls = c.get("calls")
        out.append(
            f"<tr><td>{_e(what)}</td><td>{_e(value)}</td>"
            f'<td class="num">{_e(change_text(m, c.get("observed"), c.get("expected")))}</td>'
            f'<td class="num">{_e(f"{calls:,.0f}" if _finite(calls) else "n/a")}</td>'
            f"<td>{_e(gate_words(c.get('reason')))}</td></tr>"
        )
    out.append("</table>")
    if len(rows) > limit:
        out.append(f'<p class="meta">and {len(rows) - limit:,} more in the raw JSON</p>')
    return "".join(out)


def _run_summary(report: Mapping[str, Any], json_href: str | None) -> str:
    """Compact run facts; everything else is in the raw JSON behind a link."""
    parts = ['<section class="card" id="run"><h2>Run summary</h2>']
    head = [(k, report[k]) for k in ("run_id", "mode", "now", "dry_run", "notify") if k in report]
    for k in ("window", "arrival_window"):
        w = report.get(k)
        if isinstance(w, Mapping):
            head.append((k.replace("_", " "), f"{w.get('start')} to {w.get('end')}"))
    if head:
        parts.append(_kv_table(head))
    warnings = report.get("warnings")
    if isinstance(warnings, list) and warnings:  # e.g. schema drift: never silent
        items = "".join(f"<li>{_e(w)}</li>" for w in warnings[:20])
        parts.append(f"<h3>Warnings</h3><ul>{items}</ul>")
    source = report.get("source")
    if isinstance(source, Mapping):
        rows, nested = _flat(source)
        parts.append(f"<h3>Source</h3>{_kv_table(rows)}")
        for name in ("dropped", "flagged"):
            per = nested.get(name)
            label = "Dropped rows per reason" if name == "dropped" else "Flagged rows (kept)"
            if isinstance(per, Mapping) and per:
                parts.append(f"<h3>{label}</h3>{_kv_table(sorted(per.items()))}")
            elif name == "dropped":
                parts.append(f"<h3>{label}</h3><p>none</p>")
    timings = report.get("timings_s") or report.get("timings")
    if isinstance(timings, Mapping):
        parts.append(
            "<h3>Timings (seconds)</h3>" + _kv_table((str(k), v) for k, v in timings.items())
        )
    decisions = report.get("candidates")
    if isinstance(decisions, list) and decisions:
        reasons: dict[str, int] = {}
        for d in decisions:
            if isinstance(d, Mapping):
                words = gate_words(d.get("reason"))
                reasons[words] = reasons.get(words, 0) + 1
        parts.append("<h3>Every candidate, by what stopped it</h3>")
        parts.append(_kv_table(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))))
    if json_href:
        parts.append(
            f'<p><a href="{_e(json_href)}">Raw run report (JSON)</a>: every candidate,'
            " decision, delivery and setting of this run.</p>"
        )
    parts.append("</section>")
    return "".join(parts)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def render_html_report(
    *,
    anomalies: Sequence[Anomaly],
    run_report: Mapping[str, Any],
    series: Mapping[str, Any] | None = None,
    title: str = "acs-detector report",
    json_href: str | None = None,
) -> str:
    """Render the report page (pure: no file, no clock).

    Parameters
    ----------
    anomalies : sequence of Anomaly
        The run's anomalous windows; the windows of one partition and metric are merged into
        one alert (:func:`detector.words.incidents`), most severe first.
    run_report : mapping
        The run report (``run_id``, ``mode``, ``window``, ``source`` with ``dropped``,
        ``timings_s``, ``candidates``, ``log_analytics``...); missing keys are left out.
    series : mapping of fingerprint to DataFrame, optional
        Per alert (key ``Anomaly.fingerprint``) a frame with :data:`SERIES_COLUMNS`. An alert
        without one falls back to ``anomaly.details["series"]`` (a list of records), then to a
        bar chart of observed vs usual.
    title : str
        Page title.
    json_href : str, optional
        Link to the raw run report (JSON); None: no link.

    Returns
    -------
    str
        The HTML document.
    """
    alerts = incidents(anomalies)
    counts = {s: sum(1 for i in alerts if i.severity == s) for s in ("critical", "warning", "info")}
    scope = run_report.get("log_analytics")
    scope = scope if isinstance(scope, Mapping) else {}
    window = run_report.get("window") if isinstance(run_report.get("window"), Mapping) else None
    subtitle = [f"run {run_report.get('run_id', '?')}", str(run_report.get("mode", ""))]
    if window:
        subtitle.append(f"window {window.get('start')} to {window.get('end')}")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # Self-contained by construction: the browser refuses anything not inline.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">{_e(" · ".join(s for s in subtitle if s))}</p>',
        '<div class="cards">',
        f'<div class="stat"><b>{len(alerts)}</b>alert{"s" if len(alerts) != 1 else ""}</div>',
        *(f'<div class="stat"><b>{n}</b>{_badge(s)}</div>' for s, n in counts.items() if n),
    ]
    if run_report.get("delivery_failed"):
        parts.append(
            '<div class="stat"><b>!</b><span class="badge critical">delivery failed</span></div>'
        )
    parts.append("</div>")
    if alerts:
        rows = []
        for i, inc in enumerate(alerts):
            a = inc.worst
            rows.append(
                f"<tr><td>{_badge(inc.severity)}</td>"
                f'<td><a href="#{_anchor(i)}">{_e(_title(a))}</a></td>'
                f'<td class="num">{_e(change_text(a.metric, a.observed, a.baseline, a.effect))}'
                f"</td><td>{_e(_when(inc.start))}</td></tr>"
            )
        parts.append(
            '<section class="card"><h2>Alerts</h2><table><tr><th></th><th>alert</th>'
            "<th>change</th><th>since</th></tr>" + "".join(rows) + "</table></section>"
        )
        for i, inc in enumerate(alerts):
            parts.append(_alert_section(i, inc, _series_for(inc.worst, series), scope))
    else:
        parts.append(
            '<section class="card"><h2>No alerts in this run</h2>'
            "<p>The near misses below say what came closest and why it did not alert.</p>"
            "</section>"
        )
    parts.append(
        '<section class="card" id="near-misses"><h2>Why not alerted: near misses</h2>'
        + _near_misses(run_report.get("candidates"))
        + "</section>"
    )
    parts.append(_run_summary(run_report, json_href))
    parts.append("</main></body></html>")
    return "\n".join(parts)


def write_html_report(
    path: str | Path,
    *,
    anomalies: Sequence[Anomaly],
    run_report: Mapping[str, Any],
    series: Mapping[str, Any] | None = None,
    title: str = "acs-detector report",
) -> Path:
    """Write the self-contained HTML report to ``path`` (parents created); return the path.

    The raw run report is written beside it as ``<stem>.run.json`` and linked from the page (not
    inlined: it can be megabytes). See :func:`render_html_report` for the inputs. Each file is
    written to a temporary name and renamed, so a reader never sees half a page.
    """
    out = Path(path)
    # Not "<stem>.json": beside latest.html the store already keeps latest.json as it likes.
    raw = out.with_name(f"{out.stem}.run.json")
    text = render_html_report(
        anomalies=anomalies,
        run_report=run_report,
        series=series,
        title=title,
        json_href=quote(raw.name),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    for target, body in (
        (raw, json.dumps(dict(run_report), indent=2, default=str)),
        (out, text),
    ):
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(body, encoding="utf-8")
        tmp.replace(target)
    return out


def read_anomalies(path: str | Path) -> list[Anomaly]:
    """Read an anomalies JSON-lines file (``run --output``) back into :class:`Anomaly` records."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            out.append(Anomaly.from_json(json.loads(line)))
    return out
