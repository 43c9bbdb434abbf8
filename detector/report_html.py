"""The HTML report of one run: a single self-contained page a person opens in a browser.

Consumes the run's anomalies (:class:`~detector.anomaly.Anomaly`), its run report (the JSON
dict the pipeline writes: counts per stage, timings, decisions with reasons, dropped rows per
reason) and, optionally, the observed and baseline series behind each alert. Produces one HTML
file with inline CSS and each chart as an inline base64 PNG (matplotlib, Agg backend): no
scripts, no fonts, no network; a Content-Security-Policy forbids anything that is not inline,
so the page looks the same from a mail attachment, a CI artefact or a file share.

Per alert: a chart of observed vs the baseline band over time with the alert window shaded,
then the explanation (observed vs baseline with units, band, effect, corrected p-value, calls,
baseline kind and whether it was borrowed, traffic share, drivers, top result codes, example
CallIds, the KQL to reproduce it). Then the run summary. All text is escaped by
:func:`detector.escape.for_html_block` (entities, and no control or bidi character), and chart
titles are drawn without mathtext, so a ``$`` in a name is a dollar sign.

Pure rendering (:func:`render_html_report`) plus one file write (:func:`write_html_report`).
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from detector.anomaly import Anomaly, severity_rank
from detector.escape import clean, for_html_block

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
table{border-collapse:collapse;margin:4px 0 8px;font-size:13px}
th,td{border-bottom:1px solid #e6eaee;padding:4px 10px 4px 0;text-align:left;vertical-align:top}
th{color:#5b6670;font-weight:600}
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


def _iso(ts: Any) -> str:
    if isinstance(ts, datetime):
        if ts.tzinfo is not None:
            ts = ts.astimezone(UTC)
        return str(ts.strftime("%Y-%m-%d %H:%M UTC"))
    return "" if ts is None else str(ts)


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _fmt_value(metric: str, x: Any) -> str:
    """A metric value in its display unit (failure rates as percent)."""
    if not _finite(x):
        return "n/a"
    if metric == "failure_rate":
        return f"{100 * x:.2f} %"
    if metric == "duration":
        return f"{x:,.0f} ms" if abs(x) >= 100 else f"{x:,.1f} ms"
    return f"{x:,.1f} calls / bucket" if metric == "volume" else f"{x:,.4g}"


def _fmt_effect(metric: str, x: Any) -> str:
    if not _finite(x):
        return "n/a"
    if metric == "failure_rate":
        return f"{100 * x:+.2f} points"
    return f"{100 * x:+.1f} %"


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
                x, low, high, color=BAND_COLOR, alpha=0.7, linewidth=0, label="baseline band"
            )
        base = frame["baseline"].to_numpy() * scale
        if np.isfinite(base).any():
            ax.plot(x, base, color=BASELINE_COLOR, linestyle="--", linewidth=1.5, label="baseline")
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
            x0, x1 = date2num([start, end])  # type: ignore[no-untyped-call]
            ax.axvspan(
                float(x0),
                float(x1),
                color=WINDOW_COLOR,
                alpha=0.35,
                linewidth=0,
                label="alert window",
            )
        locator = AutoDateLocator()  # type: ignore[no-untyped-call]
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
        ax.set_xlabel("bucket start (UTC)")
        # Below the axes, so it never hides the data.
        ax.legend(loc="upper left", bbox_to_anchor=(0, -0.3), fontsize=8, frameon=False, ncol=4)
    else:
        observed = a.observed * scale if _finite(a.observed) else 0.0
        baseline = a.baseline * scale if _finite(a.baseline) else 0.0
        bars = ax.bar(
            ["baseline", "observed"], [baseline, observed], color=[BASELINE_COLOR, OBSERVED_COLOR]
        )
        if _finite(a.band_low) and _finite(a.band_high):
            lo, hi = a.band_low * scale, a.band_high * scale  # type: ignore[operator]
            ax.errorbar(
                [0],
                [baseline],
                yerr=[[max(baseline - lo, 0)], [max(hi - baseline, 0)]],
                color="#333333",
                capsize=8,
                label="baseline band",
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
    if not isinstance(ts, datetime):
        return None
    if ts.tzinfo is not None:
        return ts.astimezone(UTC).replace(tzinfo=None)
    return ts


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


def _json_pre(value: Any) -> str:
    return f"<pre>{_e(json.dumps(value, indent=2, default=str, sort_keys=False))}</pre>"


def _dict_block(d: Mapping[str, Any]) -> str:
    rows, nested = _flat(d)
    parts = [_kv_table(rows)] if rows else []
    for k, v in nested.items():
        if (
            isinstance(v, Mapping)
            and v
            and all(not isinstance(x, Mapping | list) for x in v.values())
        ):
            parts.append(f"<h3>{_e(k)}</h3>{_kv_table((str(a), b) for a, b in v.items())}")
        elif isinstance(v, list) and v and all(isinstance(x, Mapping) for x in v):
            parts.append(f"<h3>{_e(k)}</h3>{_records_table(v)}")
        elif v:
            parts.append(f"<h3>{_e(k)}</h3>{_json_pre(v)}")
    return "".join(parts) or "<p>none</p>"


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


def _alert_section(i: int, a: Anomaly, frame: Any) -> str:
    png = chart_png(a, frame)
    src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    alt = f"{_title(a)}: observed {_fmt_value(a.metric, a.observed)} vs baseline {_fmt_value(a.metric, a.baseline)}"
    facts: list[tuple[str, Any]] = [
        ("window", f"{_iso(a.window_start)} → {_iso(a.window_end)}"),
        ("observed", _fmt_value(a.metric, a.observed)),
        ("baseline", _fmt_value(a.metric, a.baseline)),
    ]
    if _finite(a.band_low) or _finite(a.band_high):
        facts.append(
            (
                "baseline band",
                f"{_fmt_value(a.metric, a.band_low)} … {_fmt_value(a.metric, a.band_high)}",
            )
        )
    facts.append(("effect", _fmt_effect(a.metric, a.effect)))
    if _finite(a.p_value):
        facts.append(("p-value (corrected)", f"{a.p_value:.2g}"))
    facts.append(("calls", f"{a.calls:,}"))
    if a.failures is not None:
        facts.append(("failures", f"{a.failures:,}"))
    if _finite(a.traffic_share):
        facts.append(("traffic share of this version", f"{100 * a.traffic_share:.1f} %"))  # type: ignore[operator]
    baseline_kind = a.baseline_kind + (
        f", {a.baseline_calls:,} calls" if a.baseline_calls is not None else ""
    )
    facts += [
        ("baseline kind", baseline_kind),
        ("score", _fmt_num(a.score)),
        ("reason", a.reason),
    ]
    if a.drivers:
        facts.append(("drivers", ", ".join(a.drivers)))
    parts = [
        f'<section class="card" id="{_anchor(i)}">',
        f"<h2>{_badge(a.severity)} {_e(_title(a))}</h2>",
    ]
    if a.provisional:
        parts.append(
            '<div class="provisional">Provisional baseline: this SDK version has little history, '
            "so its baseline is partly borrowed from the operation across all versions.</div>"
        )
    parts.append(f'<img class="chart" alt="{_e(alt)}" src="{src}">')
    if frame is None:
        parts.append(
            '<p class="meta">No time series was stored for this alert; the chart shows '
            "the window's value against the baseline.</p>"
        )
    parts.append(_kv_table(facts))
    if a.top_result_codes:
        parts.append(f"<h3>Top failing result codes</h3>{_records_table(a.top_result_codes)}")
    if a.example_call_ids:
        items = "".join(f"<li><code>{_e(c)}</code></li>" for c in a.example_call_ids)
        parts.append(f"<h3>Example CallIds (for Call Diagnostics)</h3><ul>{items}</ul>")
    details = {k: v for k, v in a.details.items() if k != "series"}
    kql = details.pop("kql", None)
    if kql:
        parts.append(f"<h3>Reproduce in Log Analytics</h3><pre>{_e(kql)}</pre>")
    if details:
        parts.append(f"<details><summary>details</summary>{_json_pre(details)}</details>")
    parts.append("</section>")
    return "".join(parts)


def _run_summary(report: Mapping[str, Any]) -> str:
    parts = ['<section class="card" id="run"><h2>Run summary</h2>']
    head = [
        (k, report[k])
        for k in ("run_id", "mode", "now", "dry_run", "notify", "config", "delivery_failed")
        if k in report
    ]
    for k in ("window", "arrival_window"):
        w = report.get(k)
        if isinstance(w, Mapping):
            head.append((k.replace("_", " "), f"{w.get('start')} → {w.get('end')}"))
    if head:
        parts.append(_kv_table(head))
    source = report.get("source")
    if isinstance(source, Mapping):
        rows, nested = _flat(source)
        parts.append(f"<h3>Source</h3>{_kv_table(rows)}")
        dropped = nested.pop("dropped", None)
        parts.append("<h3>Dropped rows per reason</h3>")
        parts.append(
            _kv_table(sorted(dropped.items()))
            if isinstance(dropped, Mapping) and dropped
            else "<p>none</p>"
        )
        for k, v in nested.items():
            parts.append(
                f"<h3>{_e(k)}</h3>{_dict_block(v) if isinstance(v, Mapping) else _json_pre(v)}"
            )
    detection = report.get("detection")
    if isinstance(detection, Mapping):
        parts.append(f"<h3>Detection</h3>{_dict_block(detection)}")
    timings = report.get("timings_s") or report.get("timings")
    if isinstance(timings, Mapping):
        parts.append(
            "<h3>Timings (seconds)</h3>" + _kv_table((str(k), v) for k, v in timings.items())
        )
    decisions = report.get("candidates") or report.get("decisions")
    parts.append("<h3>Decisions (every candidate, with the reason it did or did not alert)</h3>")
    if isinstance(decisions, list) and decisions and all(isinstance(d, Mapping) for d in decisions):
        reasons: dict[str, int] = {}
        for d in decisions:
            r = str(d.get("reason", d.get("decision", "?")))
            reasons[r] = reasons.get(r, 0) + 1
        parts.append(_kv_table(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))))
        parts.append(_records_table(decisions))
    else:
        parts.append("<p>none</p>")
    delivery = report.get("delivery")
    if isinstance(delivery, Mapping):
        parts.append(f"<h3>Delivery</h3>{_dict_block(delivery)}")
    known = {
        "run_id", "mode", "now", "dry_run", "notify", "config", "delivery_failed", "window",
        "arrival_window", "source", "detection", "timings_s", "timings", "candidates",
        "decisions", "delivery", "anomalies",
    }  # fmt: skip
    rest = {k: v for k, v in report.items() if k not in known}
    if rest:
        parts.append(f"<h3>More</h3>{_dict_block(rest)}")
    parts.append(
        f"<details><summary>Full run report (JSON)</summary>{_json_pre(dict(report))}</details>"
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
) -> str:
    """Render the report page (pure: no file, no clock).

    Parameters
    ----------
    anomalies : sequence of Anomaly
        The run's alerts; shown most severe first.
    run_report : mapping
        The run report (``run_id``, ``mode``, ``window``, ``source`` with ``dropped``,
        ``detection``, ``timings_s``, ``candidates``, ``delivery``...); unknown keys are shown
        generically, missing ones are left out.
    series : mapping of fingerprint to DataFrame, optional
        Per alert (key ``Anomaly.fingerprint``) a frame with :data:`SERIES_COLUMNS`. An alert
        without one falls back to ``anomaly.details["series"]`` (a list of records), then to a
        bar chart of observed vs baseline.
    title : str
        Page title.

    Returns
    -------
    str
        The HTML document.
    """
    ordered = sorted(
        anomalies,
        key=lambda a: (
            -severity_rank(a.severity) if a.severity in ("info", "warning", "critical") else 1,
            -(a.score if _finite(a.score) else -math.inf),
        ),
    )
    counts = {
        s: sum(1 for a in ordered if a.severity == s) for s in ("critical", "warning", "info")
    }
    window = run_report.get("window") if isinstance(run_report.get("window"), Mapping) else None
    subtitle = [f"run {run_report.get('run_id', '?')}", str(run_report.get("mode", ""))]
    if window:
        subtitle.append(f"window {window.get('start')} → {window.get('end')}")
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
        f'<div class="stat"><b>{len(ordered)}</b>alerts</div>',
        *(f'<div class="stat"><b>{n}</b>{_badge(s)}</div>' for s, n in counts.items()),
    ]
    if run_report.get("delivery_failed"):
        parts.append(
            '<div class="stat"><b>!</b><span class="badge critical">delivery failed</span></div>'
        )
    parts.append("</div>")
    if ordered:
        rows = []
        for i, a in enumerate(ordered):
            rows.append(
                f'<tr><td>{_badge(a.severity)}</td><td><a href="#{_anchor(i)}">{_e(_title(a))}</a></td>'
                f'<td class="num">{_e(_fmt_value(a.metric, a.observed))}</td>'
                f'<td class="num">{_e(_fmt_value(a.metric, a.baseline))}</td>'
                f'<td class="num">{_e(_fmt_effect(a.metric, a.effect))}</td>'
                f'<td class="num">{a.calls:,}</td><td>{_e(_iso(a.window_start))}</td></tr>'
            )
        parts.append(
            '<section class="card"><h2>Alerts</h2><table><tr><th></th><th>alert</th>'
            "<th>observed</th><th>baseline</th><th>effect</th><th>calls</th><th>since</th></tr>"
            + "".join(rows)
            + "</table></section>"
        )
        for i, a in enumerate(ordered):
            parts.append(_alert_section(i, a, _series_for(a, series)))
    else:
        parts.append(
            '<section class="card"><h2>No alerts in this run</h2>'
            "<p>See the decisions below for candidates that were suppressed and why.</p>"
            "</section>"
        )
    parts.append(_run_summary(run_report))
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

    See :func:`render_html_report` for the inputs. The file is written to a temporary name
    and renamed, so a reader never sees half a page.
    """
    out = Path(path)
    text = render_html_report(
        anomalies=anomalies, run_report=run_report, series=series, title=title
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out


def read_anomalies(path: str | Path) -> list[Anomaly]:
    """Read an anomalies JSON-lines file (``run --output``) back into :class:`Anomaly` records."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            out.append(Anomaly.from_json(json.loads(line)))
    return out
