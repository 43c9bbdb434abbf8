"""One vocabulary for every place a person reads an alert: the HTML report, email, Slack,
Teams, json:// webhooks and the console.

An *alert* is one partition (operation x SDK version, or the operation's fleet) and metric;
the engine may report several windows of it in one run, and :func:`incidents` merges them.
Each alert is told in plain words, with units, computed once here:

* :func:`what_moved` - "p95 duration +55 % (7,051 ms vs 4,541 ms usual) on 30 calls,
  SDK 1.40.1.0_stable, 15 % of Join calls";
* :func:`why_believed` - the sample behind it and how unusual it is ("by chance about once in
  ~40 days across everything watched"), from the corrected p-value;
* :func:`gate_words` - why a near miss did not alert.

Internal names (feature names, scores, gate codes) never reach a person:
:data:`INTERNAL_NAMES` lists them for the test that greps every rendered output.

It also builds the Azure portal link that opens an alert's KQL in Log Analytics
(:func:`portal_query_url`). Pure: no I/O, no clock. Strings from the log are returned raw:
the caller escapes them for its channel (:mod:`detector.escape`).
"""

from __future__ import annotations

import base64
import gzip
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from urllib.parse import quote, unquote

from detector.anomaly import Anomaly, deviation, severity_rank, worst_key

__all__ = [
    "INTERNAL_NAMES",
    "accumulated_words",
    "Incident",
    "change_text",
    "decode_portal_query",
    "fmt_value",
    "gate_words",
    "incidents",
    "log_analytics_scope",
    "metric_words",
    "portal_query_url",
    "rarity_words",
    "resource_name",
    "what_moved",
    "who_words",
    "why_believed",
]

#: Words that must never appear in anything rendered for a person (checked by a test).
INTERNAL_NAMES: Final[tuple[str, ...]] = (
    "dur_z",
    "p95_log_ratio",
    "fail_z",
    "vol_z",
    "peer_dur_z",
    "peer_fail_z",
    "latency_z",
    "p95_ratio",
    "score",
    "drivers",
    "baseline n=",
    "n=0",
    "typical",
    "gate_effect",
    "span_buckets",
    "evidence_calls",
    "not_significant",
    "below_min_effect",
    "not_persistent",
    "explained_by_fleet",
    "explained_by_version",
    "insufficient_history",
    "suppressed_low_volume",
    "repeat_due",
    "still_firing",
)

#: Why a candidate did not alert, by the engine's gate code (see ``detector.detect.decide``).
_GATE_WORDS: Final = {
    "maintenance": "in a maintenance window",
    "insufficient_history": "too little history yet to know what is usual",
    "suppressed_low_volume": "too few calls to judge",
    "not_significant": "within normal variation",
    "below_min_effect": "real but smaller than the smallest change worth a page",
    "not_persistent": "did not last long enough",
    "explained_by_fleet": "the whole operation moved (alerted for all versions)",
    "explained_by_version": "explained by one SDK version's own alert",
    "anomaly": "alerted",
}

_METRIC_WORDS: Final = {
    "duration": "p95 duration",
    "failure_rate": "failure rate",
    "volume": "call volume",
}

_SAFE_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+\-]{0,39}")
_RESOURCE_ID = re.compile(r"/subscriptions/[^/\s]+/resourcegroups/[^/\s]+/providers/\S+", re.I)
PORTAL: Final = "https://portal.azure.com"


def finite(x: Any) -> float | None:
    """``x`` as a finite float, or None (missing, not a number, NaN or infinite)."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# --------------------------------------------------------------------------------------------
# Values and units
# --------------------------------------------------------------------------------------------


def metric_words(metric: str) -> str:
    """``p95 duration``, ``failure rate`` or ``call volume``."""
    return _METRIC_WORDS.get(metric, "value")


def fmt_value(metric: str, value: Any) -> str:
    """A value in its unit: ``7,051 ms``, ``12.0 %``, ``31 calls per bucket``; ``n/a`` if unknown."""
    v = finite(value)
    if v is None:
        return "n/a"
    if metric == "failure_rate":
        return f"{v * 100:.2f} %" if v < 0.1 else f"{v * 100:.1f} %"
    if metric == "duration":
        return f"{v:,.0f} ms" if v >= 10 else f"{v:.1f} ms"
    return (f"{v:,.0f}" if abs(v) >= 10 else f"{v:.1f}") + " calls per bucket"


def change_text(metric: str, observed: Any, usual: Any, effect: Any = None) -> str:
    """The one effect shown for an alert: ``+55 %`` (relative) or ``+10.5 points`` (rates).

    Computed from ``observed`` and ``usual`` when both are known, so it can never contradict
    them; ``effect`` (the engine's own, same convention) only when they are not.
    """
    obs, base = finite(observed), finite(usual)
    if metric == "failure_rate":
        pts = (obs - base) if obs is not None and base is not None else finite(effect)
        return "n/a" if pts is None or abs(pts) > 1 else f"{pts * 100:+.1f} points"
    rel = obs / base - 1 if obs is not None and base else finite(effect)
    return "n/a" if rel is None else f"{rel * 100:+.0f} %"


def safe_version(sdk_version: str | None) -> str:
    """An SDK version as shown: the first version-like token, never a raw user agent."""
    if sdk_version is None:
        return "all SDK versions"
    first = str(sdk_version).strip().split(" ", 1)[0].split("(", 1)[0].split("/", 1)[0]
    return first if _SAFE_VERSION.fullmatch(first) else "unknown SDK version"


def who_words(a: Anomaly) -> str:
    """``SDK 1.40.1.0_stable, 15 % of Join calls`` or ``all SDK versions``, then the ACS
    resource when several are judged apart (``..., ACS resource acs-test``)."""
    if a.sdk_version is None:
        text = "all SDK versions"
    else:
        text = f"SDK {safe_version(a.sdk_version)}"
        share = finite(a.traffic_share)
        if share is not None:
            text += f", {share * 100:.0f} % of {a.operation_name} calls"
    name = resource_name(a)
    return f"{text}, ACS resource {name}" if name else text


#: What a resource's short name may hold (the last segment of a validated resource id).
_RESOURCE_NAME: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")


def resource_name(a: Anomaly) -> str | None:
    """The short name of the ACS resource an anomaly is about (``acs-test``), or None when
    the source holds one resource. Read from ``details`` (which a state file carries back),
    so anything but a plain name is refused rather than shown."""
    name = (a.details or {}).get("resource")
    return name if isinstance(name, str) and _RESOURCE_NAME.fullmatch(name) else None


def is_tenant(a: Anomaly) -> bool:
    """A tenant-level alert (every operation together), as :mod:`detector.detect.stop` emits it."""
    return (a.details or {}).get("scope") == "tenant"


def tenant_words(a: Anomaly) -> str:
    """``no call client operations since 04:20 UTC (...); ingestion or the whole app``."""
    calls = int(a.calls)
    # baseline_calls: the calls the tenant usually has over the same buckets.
    usual = f"{a.baseline_calls:,}" if a.baseline_calls is not None else "n/a"
    lead = "no call client operations" if calls == 0 else "almost no call client operations"
    ops = finite((a.details or {}).get("operations_expected"))
    silent = finite((a.details or {}).get("operations_silent"))
    who = f"{int(silent)} of {int(ops)} operations silent; " if ops and silent is not None else ""
    return (
        f"{lead} since {a.window_start:%H:%M} UTC ({calls:,} calls vs about {usual} usual;"
        f" {who}every operation at once): ingestion or the whole app"
    )


def what_moved(a: Anomaly) -> str:
    """One line: what moved, by how much, against what, on how many calls, for whom."""
    if is_tenant(a):
        return tenant_words(a)
    m = a.metric
    combination = (a.details or {}).get("combination")
    if isinstance(combination, str) and combination:  # the forest's alone: several small moves
        return (
            f"{combination}, on {int(a.calls):,} call{'s' if a.calls != 1 else ''}, {who_words(a)}"
        )
    text = (
        f"{metric_words(m)} {change_text(m, a.observed, a.baseline, a.effect)}"
        f" ({fmt_value(m, a.observed)} vs {fmt_value(m, a.baseline)} usual)"
        f" on {int(a.calls):,} call{'s' if a.calls != 1 else ''}"
    )
    if m == "failure_rate" and a.failures is not None:
        text += f" ({int(a.failures):,} failed"
        fc = finite((a.details or {}).get("failed_calls"))
        if fc is not None:
            text += f" in {int(fc):,} call{'s' if fc != 1 else ''}"
        text += ")"
    return f"{text}, {who_words(a)}"


# --------------------------------------------------------------------------------------------
# Why it is believed
# --------------------------------------------------------------------------------------------


def rarity_words(p_value: Any) -> str:
    """How often chance alone gives a deviation this large, or "" when unknown.

    The engine's p-value is corrected for every test of an hour (partitions x buckets), so it
    is about the chance of one such false alarm per hour across everything watched: once in
    ``1/p`` hours.
    """
    p = finite(p_value)
    if p is None or p < 0:
        return ""
    if p >= 0.5:
        return "not unusual by the numbers alone"
    hours = math.inf if p == 0 else 1.0 / p
    if hours < 48:
        every = f"about once in {hours:,.0f} hours"
    elif hours < 24 * 365 * 2:
        every = f"about once in {hours / 24:,.0f} days"
    elif hours < 24 * 365 * 100:
        every = f"about once in {hours / (24 * 365):,.0f} years"
    else:
        every = "less than once a century"
    return f"chance alone would show a change this large {every} across everything watched"


def why_believed(a: Anomaly) -> str:
    """The sample behind an alert, what "usual" rests on, and how unusual it is, in words."""
    parts = []
    details = a.details or {}
    ev = finite(details.get("evidence_calls"))
    if ev is not None and ev > a.calls:
        parts.append(f"{int(ev):,} calls behind the evidence")
    else:
        parts.append(f"{int(a.calls):,} calls in the window")
    n_base = a.baseline_calls
    if a.provisional or a.baseline_kind == "borrowed" or not n_base:
        parts.append(
            "usual level mostly borrowed from the operation across all SDK versions"
            " (this version has little history yet)"
        )
    else:
        kind = "time-of-day " if a.baseline_kind == "seasonal" else ""
        parts.append(f"{kind}usual level learned from {int(n_base):,} calls")
    accumulated = accumulated_words(details.get("sequential"))
    if accumulated:
        parts.append(accumulated)
    rare = rarity_words(a.p_value)
    if rare:
        parts.append(rare)
    return "; ".join(parts)


def accumulated_words(seq: Any) -> str:
    """What evidence accumulated over buckets (the sequential test), or "" when none:
    "failures 11 of 46 calls over the last 3 h, usual 3 %" or "120 calls over the last 2 h,
    usual 410"."""
    if not isinstance(seq, Mapping):
        return ""
    hours, calls = finite(seq.get("hours")), finite(seq.get("calls"))
    if hours is None or calls is None or hours <= 0 or calls < 0:
        return ""
    span = f"over the last {hours:.0f} h" if hours >= 1.5 else f"over the last {hours * 60:.0f} min"
    fails, rate = finite(seq.get("failures")), finite(seq.get("usual_rate"))
    if fails is not None and rate is not None and 0 <= rate <= 1:
        return f"failures {int(fails):,} of {int(calls):,} calls {span}, usual {rate * 100:.2g} %"
    usual = finite(seq.get("usual_calls"))
    if usual is not None and usual >= 0:
        return f"{int(calls):,} calls {span}, usual {usual:,.0f}"
    return ""


def gate_words(code: Any) -> str:
    """Why a candidate did not alert, in words (unknown codes: "not alerted")."""
    return _GATE_WORDS.get(str(code), "not alerted")


# --------------------------------------------------------------------------------------------
# Incidents: the windows of one alert merged
# --------------------------------------------------------------------------------------------


@dataclass
class Incident:
    """One alert of a run: a partition x metric with its windows merged.

    ``worst`` is the most severe window, then the furthest from usual (its numbers are the
    ones every channel shows); ``start`` and
    ``end`` span every window; ``windows`` counts them.
    """

    worst: Anomaly
    start: datetime
    end: datetime
    windows: int
    severity: str

    @property
    def fingerprint(self) -> str:
        return self.worst.fingerprint


def incidents(anomalies: Iterable[Anomaly]) -> list[Incident]:
    """Merge the windows of each fingerprint; most severe first, then furthest from usual."""
    groups: dict[tuple[str | None, str], list[Anomaly]] = {}
    for a in anomalies:  # the same partition in two ACS resources is two alerts
        groups.setdefault((resource_name(a), a.fingerprint), []).append(a)
    out = []
    for items in groups.values():
        worst = max(items, key=worst_key)
        sev = max((a.severity for a in items), key=_rank)
        out.append(
            Incident(
                worst=worst,
                start=min(a.window_start for a in items),
                end=max(a.window_end for a in items),
                windows=len(items),
                severity=sev,
            )
        )
    out.sort(key=lambda i: (-_rank(i.severity), -deviation(i.worst), i.fingerprint))
    return out


def _rank(severity: str) -> int:
    try:
        return severity_rank(severity)
    except ValueError:
        return 1


# --------------------------------------------------------------------------------------------
# Open in Log Analytics
# --------------------------------------------------------------------------------------------


def log_analytics_scope(source: Mapping[str, Any]) -> dict[str, Any]:
    """What the portal link can be built from, for the run report.

    Returns ``{"resource_id": str | None, "note": str | None}``: the configured
    ``resource_id`` (an ACS resource or a workspace resource id), or a note saying why there
    is no link (a workspace GUID alone does not name the workspace's resource).
    """
    rid = source.get("resource_id")
    if isinstance(rid, str) and _RESOURCE_ID.fullmatch(rid.strip()):
        return {"resource_id": rid.strip(), "note": None}
    if source.get("workspace_id"):
        return {
            "resource_id": None,
            "note": "no Log Analytics link: only the workspace GUID is configured; set"
            " source.resource_id to the workspace's or the ACS resource's id for links",
        }
    return {"resource_id": None, "note": None}


def portal_query_url(kql: str, resource_id: str | None, tenant: str = "") -> str | None:
    """The Azure portal link that opens ``kql`` in Log Analytics for ``resource_id``.

    Format (the portal's "share link to query"): ``https://portal.azure.com/#@<tenant>/blade/
    Microsoft_Azure_Monitoring_Logs/LogsBlade/resourceId/<resource id, URL-encoded>/source/
    LogsBlade.AnalyticsShareLinkToQuery/q/<query>``, where ``<query>`` is the base64 of the
    gzipped UTF-8 query, URL-encoded twice as the portal's own links are (``%252F``). The time
    range is in the query itself. None when there is no usable resource id.
    """
    if not resource_id or not _RESOURCE_ID.fullmatch(resource_id.strip()):
        return None
    packed = base64.b64encode(gzip.compress(kql.encode("utf-8"), mtime=0)).decode("ascii")
    q = quote(quote(packed, safe=""), safe="")
    rid = quote(resource_id.strip(), safe="")
    tid = quote(tenant, safe="-")
    return (
        f"{PORTAL}/#@{tid}/blade/Microsoft_Azure_Monitoring_Logs/LogsBlade/resourceId/{rid}"
        f"/source/LogsBlade.AnalyticsShareLinkToQuery/q/{q}"
    )


def decode_portal_query(url: str) -> tuple[str, str]:
    """Inverse of :func:`portal_query_url`: ``(resource_id, kql)`` from a link."""
    m = re.search(r"/resourceId/([^/]+)/source/LogsBlade\.AnalyticsShareLinkToQuery/q/([^/]+)", url)
    if m is None:
        raise ValueError("not a Log Analytics query link")
    packed = unquote(unquote(m.group(2)))
    return unquote(m.group(1)), gzip.decompress(base64.b64decode(packed)).decode("utf-8")
