"""A PNG chart per alert: observed vs the baseline band over the last day.

Consumes a history frame for one fingerprint (columns ``bucket_start``, ``observed``,
``baseline``, ``band_low``, ``band_high``; the engine/pipeline provides it) and the alert's
:class:`~detector.anomaly.Anomaly`; produces PNG bytes, or None when there is nothing to draw.
Uses matplotlib's object API on the Agg canvas (no pyplot, no global backend switch, safe in
threads and under cron without a display). No I/O besides the in-memory buffer.
"""

from __future__ import annotations

import io
import logging
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from detector.anomaly import Anomaly
from detector.escape import clean
from detector.words import metric_words, safe_version

__all__ = ["REQUIRED_COLUMNS", "chart_png"]

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("bucket_start", "observed")
_UNIT = {"duration": "p95 ms", "failure_rate": "% failed", "volume": "calls per bucket"}


def chart_png(
    history: pd.DataFrame | None,
    anomaly: Anomaly | None,
    *,
    now: datetime,
    span: timedelta = timedelta(days=1),
    width_px: int = 900,
    height_px: int = 300,
) -> bytes | None:
    """Draw observed vs baseline band for the ``span`` before ``now``; None if not drawable.

    Parameters
    ----------
    history : one row per bucket; ``baseline``, ``band_low`` and ``band_high`` optional.
    anomaly : the alert (its window is shaded, its values label the title).
    now : right edge of the chart.

    Returns
    -------
    PNG bytes, or None when ``history`` is missing, empty or lacks the required columns
    (the digest then goes without a chart; nothing fails).
    """
    if history is None or anomaly is None or len(history) == 0:
        return None
    if any(c not in history.columns for c in REQUIRED_COLUMNS):
        log.warning("chart skipped for %s: history lacks %s", anomaly.fingerprint, REQUIRED_COLUMNS)
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import date2num
    from matplotlib.figure import Figure

    df = history.copy()
    df["bucket_start"] = pd.to_datetime(df["bucket_start"], utc=True)
    start = pd.Timestamp(now - span)
    start = start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC")
    df = df[df["bucket_start"] >= start].sort_values("bucket_start")
    if df.empty:
        return None
    scale = 100.0 if anomaly.metric == "failure_rate" else 1.0
    x = df["bucket_start"].dt.tz_localize(None)

    def col(name: str) -> Any:
        return pd.to_numeric(df[name], errors="coerce") * scale if name in df else None

    dpi = 100
    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    low, high, base = col("band_low"), col("band_high"), col("baseline")
    if low is not None and high is not None:
        ax.fill_between(x, low, high, color="#9ecae1", alpha=0.5, linewidth=0, label="usual range")
    if base is not None:
        ax.plot(x, base, color="#3182bd", linewidth=1, linestyle="--", label="usual")
    ax.plot(x, col("observed"), color="#d62728", linewidth=1.4, label="observed")
    ws = pd.Timestamp(anomaly.window_start).tz_convert("UTC").tz_localize(None)
    we = pd.Timestamp(anomaly.window_end).tz_convert("UTC").tz_localize(None)
    ax.axvspan(date2num(ws), date2num(we), color="#fdae6b", alpha=0.3, label="alert window")
    who = f"SDK {safe_version(anomaly.sdk_version)}" if anomaly.sdk_version else "all versions"
    title = f"{anomaly.operation_name} {metric_words(anomaly.metric)} ({who})"
    # Drawn as plain text: a "$" in a log name is a dollar sign, not mathtext.
    ax.set_title(clean(title, 120), fontsize=10, parse_math=False)
    ax.set_ylabel(_UNIT.get(anomaly.metric, ""), fontsize=9)
    ax.set_xlabel("UTC", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.autofmt_xdate()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
