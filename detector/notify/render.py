"""Render lifecycle decisions into one digest message per channel.

Consumes :class:`~detector.lifecycle.Decision` objects (those with ``notify=True``) and
produces :class:`Message` objects: Markdown for Slack, Teams and generic webhooks, HTML (plus
a plain-text alternative) for email. One digest per run and route: firing alerts grouped by
operation and ranked by severity then score, resolved notices after them, self-health notices
first, and ``+k more`` beyond ``max_items``. Teams bodies (title included) stay within
:data:`TEAMS_LIMIT` characters and point to the full report. Pure: no I/O, no clock.

No personal data: only aggregates, operation names, SDK version strings (sanitised: a raw user
agent never passes), result codes and CallIds are rendered. ``Anomaly.details`` is never
rendered, because the engine or the source may put anything there.

Every string from the log is hostile: each one reaches a body through the escaper of the
message's channel (:mod:`detector.escape`), and the reproduce-KQL quotes it with
:func:`detector.escape.kql_string`, so no name can add a link, a mention, markup or close the
query's code block.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from detector.anomaly import TENANT_FINGERPRINT, Anomaly, severity_rank
from detector.escape import clean, escaper, for_html, for_html_block, for_text, kql_string
from detector.lifecycle import Decision, Reason
from detector.words import (
    finite,
    fmt_value,
    is_tenant,
    portal_query_url,
    resource_name,
    what_moved,
    why_believed,
)

__all__ = [
    "CHANNELS",
    "TEAMS_LIMIT",
    "Attachment",
    "DigestLinks",
    "Message",
    "channel_of",
    "delay_note",
    "kql_for",
    "render_digest",
    "select",
]

CHANNELS: Final = ("teams", "slack", "email", "json", "other")
#: apprise's workflows:// body limit; apprise counts the title inside it.
TEAMS_LIMIT: Final = 1000
MAX_CALL_IDS: Final = 5
MAX_CODES: Final = 5
CALL_DIAGNOSTICS_HINT: Final = (
    "Azure portal: ACS resource > Monitoring > Call Diagnostics, search by call ID"
)

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+\-]{0,99}$")
_SAFE_VERSION_FULL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+\-]{0,39}")
#: Keys of a top_result_codes entry that are rendered; anything else (ids, user agents) is not.
CODE_KEYS: Final = (
    "result_signature",
    "ResultSignature",
    "code",
    "sub_code",
    "SubCode",
    "subcode",
    "result_type",
    "ResultType",
)
_SAFE_CODE = re.compile(r"[^A-Za-z0-9._:\-]")


@dataclass
class Attachment:
    """A file attached to a message (charts)."""

    name: str
    mimetype: str
    data: bytes


@dataclass(frozen=True)
class DigestLinks:
    """Where a digest sends its reader: the full run report (a link or a path), the Azure
    resource id for each alert's "Open in Log Analytics" link (None: no link) and the bucket
    width of the reproduce-KQL."""

    report_url: str | None = None
    portal_resource_id: str | None = None
    bin_size: str = "5m"


@dataclass
class Message:
    """One rendered digest for one channel."""

    channel: str
    title: str
    body: str
    body_format: str  # markdown | html | text
    text: str = ""  # plain-text alternative (email; also what logs and reports show)
    attachments: list[Attachment] = field(default_factory=list)
    fingerprints: list[str] = field(default_factory=list)
    omitted: int = 0  # alerts beyond the limit ("+k more")


def channel_of(url: str) -> str:
    """Which renderer a target URL gets: teams, slack, email, json or other."""
    u = url.strip().lower()
    scheme = u.split("://", 1)[0]
    if scheme in ("workflows", "workflow") or (
        scheme == "https" and ("logic.azure.com" in u or "powerplatform.com" in u)
    ):
        return "teams"
    if scheme == "slack" or (scheme == "https" and "hooks.slack.com" in u):
        return "slack"
    if scheme in ("mailto", "mailtos"):
        return "email"
    if scheme in ("json", "jsons"):
        return "json"
    return "other"


def takes_attachments(url: str) -> bool:
    """Email and Slack bot tokens take files; Slack webhooks, Teams and json:// do not."""
    ch = channel_of(url)
    if ch == "email":
        return True
    if ch == "slack":
        return "xoxb-" in url or "xoxp-" in url
    return False


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------


def _metric_label(metric: str) -> str:
    return {
        "duration": "slower",
        "failure_rate": "failure rate",
        "volume": "volume change",
    }.get(metric, metric)


def safe_version(sdk_version: str | None) -> str:
    """An SDK version as shown: ``all versions`` for the fleet; never a raw user agent.

    Only the first whitespace-separated token is kept, and only when it looks like a version
    string (letters, digits, ``. _ + -``, at most 40 characters).
    """
    if sdk_version is None:
        return "all versions"
    first = str(sdk_version).strip().split(" ", 1)[0].split("(", 1)[0]
    first = first.split("/", 1)[0] if "/" in first else first
    return first if _SAFE_VERSION_FULL.fullmatch(first) else "unknown"


def safe_operation(name: str) -> str:
    """An operation name as plain text: visible characters only, at most 60 (escape per channel)."""
    return clean(name, 60) or "unknown"


def safe_call_ids(ids: Iterable[Any]) -> list[str]:
    """CallIds that look like ids (GUID-like tokens); anything else is dropped."""
    out = []
    for i in ids:
        s = str(i).strip()
        if _SAFE_ID.match(s) and s not in out:
            out.append(s)
        if len(out) >= MAX_CALL_IDS:
            break
    return out


def fmt_codes(codes: Sequence[Mapping[str, Any]]) -> list[str]:
    """``500/41003 (UnexpectedServerError) x12``: code parts joined, then the count."""
    out = []
    for c in list(codes)[:MAX_CODES]:
        if not isinstance(c, Mapping):
            continue
        count = next(
            (c[k] for k in ("count", "failures", "n", "calls") if c.get(k) is not None), None
        )
        parts = []
        rtype = None
        for k, v in c.items():
            if k not in CODE_KEYS or v is None or v == "":
                continue
            text = _SAFE_CODE.sub("", str(v))[:40]
            if not text:
                continue
            if k in ("result_type", "ResultType"):
                rtype = text
            else:
                parts.append(text)
        label = "/".join(parts) or "?"
        if rtype:
            label += f" ({rtype})"
        if count is not None:
            label += f" x{int(finite(count) or 0):,}"
        out.append(label)
    return out


def _hm(ts: datetime | None) -> str:
    return "?" if ts is None else ts.strftime("%Y-%m-%d %H:%M UTC")


def _dur(td: timedelta) -> str:
    s = int(td.total_seconds())
    if s < 3600:
        return f"{max(s // 60, 0)}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"


# --------------------------------------------------------------------------------------------
# KQL to reproduce
# --------------------------------------------------------------------------------------------


def _kql_dt(ts: datetime) -> str:
    return f"datetime({ts.strftime('%Y-%m-%dT%H:%M:%SZ')})"


def kql_for(a: Anomaly, *, bin_size: str = "5m", context: timedelta = timedelta(hours=2)) -> str:
    """A short KQL query that reproduces one alert in Log Analytics.

    Dedupes like the detector (one row per ``OperationId`` and ``CallClientTimeStamp``),
    counts failures the way Microsoft's workbooks do (``ExpectedError`` is not a failure),
    and shows ``context`` before the window for comparison.
    """
    if not re.fullmatch(r"\d+[smhd]", bin_size):
        bin_size = "5m"
    start = a.window_start - context
    lines = [
        "ACSCallClientOperations",
        f"| where CallClientTimeStamp between ({_kql_dt(start)} .. {_kql_dt(a.window_end)})",
    ]
    if not is_tenant(a):
        lines.append(f"| where OperationName =~ {kql_string(a.operation_name)}")
    if a.sdk_version is not None:
        shown = safe_version(a.sdk_version)
        if shown == a.sdk_version:
            lines.append(f"| where SdkVersion == {kql_string(a.sdk_version)}")
        elif shown != "unknown":  # not a clean version string: never echo the raw value
            lines.append(f"| where SdkVersion startswith {kql_string(shown)}")
    lines += [
        "| summarize arg_max(TimeGenerated, *) by OperationId, CallClientTimeStamp",
        "| extend failed = ResultType !in"
        ' ("Succeeded", "Success", "ExpectedError", "ExpectedClientError")',
        "| summarize calls = count(), failure_rate = round(100.0 * countif(failed) / count(), 2),",
        "    p95_ms = percentile(todouble(DurationMs), 95)"
        f" by bin(CallClientTimeStamp, {bin_size})",
        "| order by CallClientTimeStamp asc",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Digest structure
# --------------------------------------------------------------------------------------------


def select(
    decisions: Iterable[Decision],
    *,
    min_severity: str = "info",
    operations: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    health: bool = True,
) -> list[Decision]:
    """The notifying decisions a route takes (severity floor, operation and metric filters)."""
    import fnmatch

    out = []
    floor = severity_rank(min_severity)
    for d in decisions:
        if not d.notify:
            continue
        if d.kind == "health":
            if health:
                out.append(d)
            continue
        if severity_rank(d.severity) < floor:
            continue
        if operations and not any(
            fnmatch.fnmatchcase(d.operation_name.lower(), p.lower()) for p in operations
        ):
            continue
        if metrics and d.metric not in metrics:
            continue
        out.append(d)
    return out


def _score(d: Decision) -> float:
    return finite(d.anomaly.score) or 0.0 if d.anomaly else 0.0


@dataclass
class _Digest:
    health: list[Decision]
    groups: list[tuple[str, list[Decision]]]  # firing, by operation, ranked
    resolved: list[Decision]
    omitted: int

    @property
    def shown(self) -> list[Decision]:
        return self.health + [d for _, ds in self.groups for d in ds] + self.resolved


def _digest(decisions: Sequence[Decision], max_items: int) -> _Digest:
    health = [d for d in decisions if d.kind == "health"]
    alerts = [d for d in decisions if d.kind == "alert"]
    firing = sorted(
        (d for d in alerts if d.reason != Reason.RESOLVED),
        key=lambda d: (-severity_rank(d.severity), -_score(d), d.fingerprint),
    )
    resolved = sorted(
        (d for d in alerts if d.reason == Reason.RESOLVED), key=lambda d: d.fingerprint
    )
    budget = max(max_items, 1)
    shown_firing = firing[:budget]
    shown_resolved = resolved[: max(budget - len(shown_firing), 0)]
    omitted = len(firing) - len(shown_firing) + len(resolved) - len(shown_resolved)
    groups: dict[str, list[Decision]] = {}
    for d in shown_firing:  # insertion order = rank of each operation's worst alert
        groups.setdefault(safe_operation(d.operation_name), []).append(d)
    return _Digest(health, list(groups.items()), shown_resolved, omitted)


def _title(dg: _Digest, route: str, channel: str) -> str:
    """One line; operation names escaped for where the channel shows the title.

    apprise escapes a Slack title itself and an email subject is plain text; Teams and
    json:// titles are read as Markdown.
    """
    esc = for_text if channel in ("email", "slack") else escaper(channel)
    n_fire = sum(len(ds) for _, ds in dg.groups)
    n_crit = sum(1 for _, ds in dg.groups for d in ds if d.severity == "critical")
    n_res = len(dg.resolved)
    parts = []
    if dg.health:
        parts.append("job health")
    if n_fire:
        parts.append(f"{n_fire} firing" + (f" ({n_crit} critical)" if n_crit else ""))
    if n_res:
        parts.append(f"{n_res} resolved")
    if dg.omitted:
        parts.append(f"+{dg.omitted} more")
    ops = ", ".join(esc(op, _LINE) for op, _ in dg.groups[:3])
    title = f"ACS anomalies{_resources_label(dg, esc)}: " + ", ".join(parts or ["nothing new"])
    if ops:
        title += f" - {ops}"
    return title[:200]


def _resources_label(dg: _Digest, esc: Callable[[Any, int], str]) -> str:
    """`` (acs-test)``: the ACS resources a digest's alerts are about, when resources are
    judged apart (each digest then comes from one resource); "" otherwise."""
    names = sorted({n for d in dg.shown if d.anomaly and (n := resource_name(d.anomaly))})
    return f" ({esc(', '.join(names), _LINE)})" if names else ""


# --------------------------------------------------------------------------------------------
# Per-alert facts (shared by all formats)
# --------------------------------------------------------------------------------------------


@dataclass
class _Facts:
    headline: str  # "CRITICAL Join slower, SDK 1.2"
    moved: str  # what moved, by how much, vs usual, on how many calls, for whom
    when: str  # since when (and for how long)
    why: str  # sample size, what usual rests on, how unusual in words
    reason: str
    codes: list[str]
    call_ids: list[str]
    kql: str
    portal: str | None  # "Open in Log Analytics" link


def _facts(d: Decision, *, now: datetime, links: DigestLinks) -> _Facts:
    """Everything said about one alert, in the words of :mod:`detector.notify.words`."""
    a = d.anomaly
    op, metric = safe_operation(d.operation_name), d.metric
    who = f"SDK {safe_version(d.sdk_version)}" if d.sdk_version is not None else "all versions"
    where = resource_name(a) if a is not None else None
    if d.fingerprint == TENANT_FINGERPRINT:
        op, who = "all operations", "whole tenant"
    headline = f"{d.severity.upper()} {op} {_metric_label(metric)}, {who}"
    if where:
        headline += f", on {where}"
    reason = _REASON_WORDS.get(str(d.reason), str(d.reason).replace("_", " "))
    if a is None:
        return _Facts(headline, "", "", "", reason, [], [], "", None)
    start = d.started_at or a.window_start
    when = (
        f"since {_hm(start)} ({_dur(now - start)} ago)" if now >= start else f"since {_hm(start)}"
    )
    kql = kql_for(a, bin_size=links.bin_size)
    return _Facts(
        headline=headline,
        moved=what_moved(a),
        when=when,
        why=why_believed(a),
        reason=reason,
        codes=fmt_codes(a.top_result_codes),
        call_ids=safe_call_ids(a.example_call_ids),
        kql=kql,
        portal=portal_query_url(kql, links.portal_resource_id),
    )


#: Lifecycle reasons as a person reads them.
_REASON_WORDS: Final = {
    "new": "new",
    "escalated": "got worse",
    "repeat_due": "still going (reminder)",
    "still_firing": "still going",
    "resolved": "resolved",
}


def _resolved_line(d: Decision, now: datetime) -> str:
    a, cur, metric = d.anomaly, d.current, d.metric
    ver = safe_version(d.sdk_version)
    who = f"SDK {ver}" if d.sdk_version is not None else ver
    now_v = fmt_value(metric, cur.observed) if cur and cur.observed is not None else "n/a"
    base = cur.baseline if cur and cur.baseline is not None else (a.baseline if a else None)
    line = (
        f"RESOLVED {safe_operation(d.operation_name)} {_metric_label(metric)}, {who}: now {now_v}"
    )
    line += f" (usual {fmt_value(metric, base)}"
    if cur and cur.calls is not None:
        line += f", {cur.calls:,} calls"
    line += ")"
    if a is not None:
        line += f", peak was {fmt_value(metric, a.observed)}"
    if d.started_at is not None and d.resolved_at is not None:
        line += f", fired for {_dur(d.resolved_at - d.started_at)}"
    return line


def _health_line(d: Decision) -> str:
    h = d.health or {}
    state = "RESOLVED" if d.reason == Reason.RESOLVED else d.severity.upper()
    return f"{state} acs-detector health: {h.get('summary', d.fingerprint)}"


# --------------------------------------------------------------------------------------------
# Formats
# --------------------------------------------------------------------------------------------


#: Room for a whole rendered line (several values and our own words) in one escape call.
_LINE: Final = 2000


def _markdown(
    dg: _Digest,
    *,
    now: datetime,
    links: DigestLinks,
    with_kql: bool,
    charts: Mapping[str, bytes],
    channel: str = "other",
) -> str:
    """The Markdown digest; every text line goes through ``channel``'s escaper.

    Result codes and CallIds are already reduced to id characters and go in code spans; the
    KQL block holds only ASCII outside its string literals (see ``kql_for``).
    """
    esc = escaper(channel)
    out: list[str] = []
    for d in dg.health:
        out.append(f"**{esc(_health_line(d), _LINE)}**")
        if d.health and d.health.get("detail"):
            out.append(esc(d.health["detail"], _LINE))
        out.append("")
    for op, ds in dg.groups:
        out.append(f"### {esc(op, _LINE)} ({len(ds)})")
        for d in ds:
            f = _facts(d, now=now, links=links)
            out.append(f"**{esc(f.headline, _LINE)}** - {esc(f.reason, _LINE)}")
            out.append(f"- {esc(f.moved, _LINE)}")
            out.append(f"- {esc(f.when, _LINE)}")
            out.append(f"- why we believe it: {esc(f.why, _LINE)}")
            if f.codes:
                out.append("- top result codes: " + ", ".join(f"`{c}`" for c in f.codes))
            if f.call_ids:
                out.append(
                    "- example CallIds: "
                    + ", ".join(f"`{c}`" for c in f.call_ids)
                    + f" ({CALL_DIAGNOSTICS_HINT})"
                )
            if d.fingerprint in charts:
                out.append(f"- chart attached: {_chart_name(d.fingerprint)}")
            if f.portal:
                # Our own URL (resource id and query percent-encoded): no log text in it.
                out.append(
                    f"- [Open in Log Analytics]({f.portal})"
                    if channel in ("slack", "teams", "json")
                    else f"- Open in Log Analytics: {f.portal}"
                )
            if with_kql and f.kql:
                out.append("")
                out.append("```")
                out.append(f.kql)
                out.append("```")
            out.append("")
    if dg.resolved:
        out.append("### Resolved")
        for d in dg.resolved:
            out.append(f"- {esc(_resolved_line(d, now), _LINE)}")
        out.append("")
    report = links.report_url
    ref = _report_ref(report, channel) if report else ""
    if dg.omitted:
        out.append(f"+{dg.omitted} more" + (f" - full report: {ref}" if report else ""))
    elif report:
        out.append(f"Full report: {ref}")
    return "\n".join(out).strip()


def _is_link(report: str) -> bool:
    return bool(re.match(r"^https?://\S+$", report, re.I))


def _report_ref(report: str, channel: str) -> str:
    """The run report in a Markdown message: a link when it is a URL (``[alerting]
    report_url``), else the pipeline's words for where it is, escaped as text."""
    if not _is_link(report):
        return escaper(channel)(report, _LINE)
    if channel in ("slack", "teams", "json"):
        # Parentheses would end the Markdown link target early.
        return f"[open the run report]({report.replace('(', '%28').replace(')', '%29')})"
    return report


def _teams(dg: _Digest, *, title: str, now: datetime, report: str | None) -> tuple[str, int]:
    """Compact one-line-per-alert Markdown within TEAMS_LIMIT (title included)."""
    esc = escaper("teams")
    lines: list[str] = []
    for d in dg.health:
        lines.append(f"**{esc(_health_line(d), _LINE)}**")
    for op, ds in dg.groups:
        for d in ds:
            a = d.anomaly
            ver = safe_version(d.sdk_version)
            who = f"SDK {ver}" if d.sdk_version is not None else ver
            line = f"- **{d.severity.upper()} {esc(op, _LINE)}** "
            if a is not None:
                line += esc(what_moved(a), _LINE)
                if a.provisional:
                    line += ", usual level borrowed from all versions"
            else:
                line += f"{_metric_label(d.metric)}, " + esc(who, _LINE)
            line += f" ({_REASON_WORDS.get(str(d.reason), str(d.reason).replace('_', ' '))})"
            lines.append(line)
    for d in dg.resolved:
        lines.append(f"- {esc(_resolved_line(d, now), _LINE)}")
    budget = TEAMS_LIMIT - len(title) - 2
    base_omitted = dg.omitted
    kept: list[str] = []
    for i, line in enumerate(lines):
        remaining = len(lines) - i - 1 + base_omitted
        tail = _teams_tail(remaining, report)
        if len("\n".join([*kept, line, tail])) <= budget:
            kept.append(line)
        else:
            omitted = len(lines) - len(kept) + base_omitted
            body = "\n".join([*kept, _teams_tail(omitted, report)])
            return body[:budget], omitted
    body = "\n".join([*kept, _teams_tail(base_omitted, report)]).strip()
    return body[:budget], base_omitted


def _teams_tail(omitted: int, report: str | None) -> str:
    parts = []
    if omitted:
        parts.append(f"+{omitted} more")
    if report:
        parts.append(f"full report: {_report_ref(report, 'teams')}")
    elif omitted:
        parts.append("see the run report")
    return " - ".join(parts)


def _html(dg: _Digest, *, now: datetime, links: DigestLinks, charts: Mapping[str, bytes]) -> str:
    """The email HTML part; each alert's chart inline as ``cid:<chart name>`` (see send)."""
    e = _html_text
    out = ['<div style="font-family:Segoe UI,Arial,sans-serif;font-size:14px">']
    for d in dg.health:
        out.append(f"<p><strong>{e(_health_line(d))}</strong></p>")
        if d.health and d.health.get("detail"):
            out.append(f"<p>{e(str(d.health['detail']))}</p>")
    for op, ds in dg.groups:
        out.append(f"<h3>{e(op)} ({len(ds)})</h3>")
        for d in ds:
            out.extend(
                _html_alert(d, _facts(d, now=now, links=links), charted=d.fingerprint in charts)
            )
    if dg.resolved:
        out.append("<h3>Resolved</h3><ul>")
        out.extend(f"<li>{e(_resolved_line(d, now))}</li>" for d in dg.resolved)
        out.append("</ul>")
    report = links.report_url
    ref = ""
    if report:
        # The URL as the link's text too: the plain-text part is made from this HTML.
        ref = f'<a href="{e(report)}">{e(report)}</a>' if _is_link(report) else e(report)
    if dg.omitted:
        out.append(f"<p>+{dg.omitted} more" + (f" - full report: {ref}" if report else "") + "</p>")
    elif report:
        out.append(f"<p>Full report: {ref}</p>")
    out.append("</div>")
    return "\n".join(out)


def _html_text(value: Any) -> str:
    """Any value -> HTML-escaped text of at most one rendered line."""
    return for_html(value, _LINE)


def _html_alert(d: Decision, f: _Facts, *, charted: bool) -> list[str]:
    """One firing alert and its facts -> its HTML lines (chart, facts table, links, KQL)."""
    e = _html_text
    out = [f"<p><strong>{e(f.headline)}</strong> - {e(f.reason)}</p>"]
    if charted:
        # apprise (inline=yes) sends the attachment of this name with this Content-ID.
        name = _chart_name(d.fingerprint)
        out.append(
            f'<p><img src="cid:{name}" alt="{e(f.headline)}: chart"'
            ' width="600" style="max-width:100%;height:auto"></p>'
        )
    out.append("<table>")
    rows = [("What moved", f.moved), ("When", f.when), ("Why we believe it", f.why)]
    if f.codes:
        rows.append(("Top result codes", ", ".join(f.codes)))
    if f.call_ids:
        rows.append(("Example CallIds", ", ".join(f.call_ids)))
    for k, v in rows:
        out.append(f'<tr><td style="padding-right:12px;color:#555">{e(k)}</td><td>{e(v)}</td></tr>')
    out.append("</table>")
    if f.call_ids:
        out.append(f"<p><small>CallIds: {e(CALL_DIAGNOSTICS_HINT)}</small></p>")
    if f.portal:
        out.append(f'<p><a href="{e(f.portal)}">Open in Log Analytics</a></p>')
    if f.kql:
        out.append(
            '<pre style="white-space:pre-wrap;font-size:12px">'
            f"<code>{for_html_block(f.kql)}</code></pre>"
        )
    return out


def _chart_name(fingerprint: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", fingerprint.replace("|*|", "|fleet|")) + ".png"


def render_digest(
    decisions: Sequence[Decision],
    *,
    channel: str,
    route: str = "",
    now: datetime,
    links: DigestLinks = DigestLinks(),
    max_items: int = 10,
    charts: Mapping[str, bytes] | None = None,
    attach_charts: bool = False,
) -> Message:
    """Render the digest of ``decisions`` (already selected for a route) for one channel.

    Parameters
    ----------
    decisions : notifying decisions for this route (see :func:`select`).
    channel : one of :data:`CHANNELS` (see :func:`channel_of`).
    now : used for "firing for" durations only.
    links : the run report (Teams points there when it truncates), the resource id of the
        "Open in Log Analytics" links and the reproduce-KQL's bucket width.
    max_items : alerts shown before "+k more".
    charts : PNG bytes by fingerprint; attached when ``attach_charts``.

    Returns
    -------
    Message with ``body`` in the channel's format and ``text`` as plain text.
    """
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}")
    charts = dict(charts or {})
    dg = _digest(decisions, max_items)
    title = _title(dg, route, channel)
    shown = dg.shown
    attached = {fp: png for fp, png in charts.items() if fp in {d.fingerprint for d in shown}}
    if not attach_charts:
        attached = {}
    text = _markdown(dg, now=now, links=links, with_kql=True, charts=attached)
    attachments = [
        Attachment(_chart_name(fp), "image/png", png) for fp, png in sorted(attached.items())
    ]
    fps = [d.fingerprint for d in shown]
    if channel == "teams":
        body, omitted = _teams(dg, title=title, now=now, report=links.report_url)
        return Message(channel, title, body, "markdown", text, [], fps, omitted)
    if channel == "email":
        body = _html(dg, now=now, links=links, charts=attached)
        return Message(channel, title, body, "html", text, attachments, fps, dg.omitted)
    body = _markdown(dg, now=now, links=links, with_kql=True, charts=attached, channel=channel)
    return Message(channel, title, body, "markdown", text, attachments, fps, dg.omitted)


def delay_note(
    message_body: str, body_format: str, channel: str, title: str, age: timedelta, attempts: int
) -> str:
    """Prefix a retried outbox message with its age (Teams body kept within the limit)."""
    note = f"Delayed delivery: first attempt {_dur(age)} ago, attempt {attempts + 1}."
    if body_format == "html":
        return f"<p><em>{html.escape(note)}</em></p>\n{message_body}"
    body = f"_{note}_\n\n{message_body}"
    if channel == "teams":
        budget = TEAMS_LIMIT - len(title) - 2
        if len(body) > budget:
            body = body[: budget - 1] + "~"
    return body
