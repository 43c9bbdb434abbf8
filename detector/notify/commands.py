"""Plain functions behind ``acs-detector status``, ``silence add/list/expire`` and ``ack``.

The CLI (owned by the lead) parses arguments and calls these; they read and write the alert
bookkeeping through :class:`~detector.store.alerts.AlertStore` and return records or text.
Usage problems raise :class:`~detector.errors.ConfigError` (exit 2), store problems
:class:`~detector.errors.StateError` (exit 1).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from detector.errors import ConfigError
from detector.escape import for_terminal
from detector.lifecycle import Ack, Silence, _duration, _iso, parse_fingerprint
from detector.store.alerts import AlertStore, RunRecord
from detector.store.backend import Backend

__all__ = [
    "ack",
    "add_silence",
    "config_silences",
    "expire_silence",
    "human_duration",
    "list_silences",
    "parse_matcher",
    "parse_until",
    "silences_text",
    "run_outcome",
    "status_data",
    "status_text",
]

_KV = re.compile(r"^\s*([A-Za-z_]+)\s*=\s*(.+?)\s*$")


def parse_matcher(text: str) -> dict[str, str]:
    """``operation=Join,sdk_version=1.2*,metric=duration`` or a fingerprint ``Join|1.2.3|duration``.

    Values are glob patterns (case-insensitive). Raises ConfigError on a bad matcher.
    """
    text = text.strip()
    if not text:
        raise ConfigError("silence matcher is empty")
    if "|" in text and "=" not in text:
        try:
            parse_fingerprint(text)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        return {"fingerprint": text}
    out: dict[str, str] = {}
    for part in text.split(","):
        m = _KV.match(part)
        if not m:
            raise ConfigError(f"silence matcher: expected field=pattern, got {part.strip()!r}")
        out[m.group(1)] = m.group(2)
    Silence("check", out, datetime.min, datetime.max)  # validates the field names
    return out


def parse_until(text: str | datetime, now: datetime) -> datetime:
    """An expiry: a datetime, ISO-8601 (UTC if naive) or a duration from now (``2h``, ``3d``)."""
    if isinstance(text, datetime):
        return text if text.tzinfo else text.replace(tzinfo=UTC)
    problems: list[str] = []
    if re.match(r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d|w)\s*$", str(text)):
        td = _duration(text, "until", problems)
        assert td is not None
        return now + td
    try:
        ts = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(
            f"until: expected a duration like 2h or an ISO time, got {text!r}"
        ) from exc
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def add_silence(
    backend: Backend,
    matcher: str | Mapping[str, str],
    until: str | datetime,
    comment: str,
    now: datetime,
    *,
    created_by: str = "",
    starts: str | datetime | None = None,
) -> Silence:
    """Add a silence (``acs-detector silence add``); returns it with its id."""
    if isinstance(matcher, str):
        matchers = parse_matcher(matcher)
    else:  # e.g. {"operation": args.operation, "sdk_version": None, ...} from argparse
        matchers = {k: str(v) for k, v in matcher.items() if v is not None and str(v) != ""}
        if not matchers:
            raise ConfigError("silence: give at least one of operation, sdk_version, metric")
        Silence("check", matchers, datetime.min, datetime.max)  # validates the field names
    starts_at = parse_until(starts, now) if starts is not None else now
    ends_at = parse_until(until, now)
    if ends_at <= starts_at:
        raise ConfigError("silence: until must be later than the start")
    return AlertStore(backend).add_silence(
        matchers, starts_at, ends_at, comment=comment, created_by=created_by, now=now
    )


def list_silences(
    backend: Backend, now: datetime, *, include_expired: bool = False
) -> list[Silence]:
    """Stored silences, active (and pending) ones unless ``include_expired``."""
    out = []
    for s in AlertStore(backend).silences():
        ended = (s.expired_at is not None and s.expired_at <= now) or s.ends_at <= now
        if include_expired or not ended:
            out.append(s)
    return out


def expire_silence(backend: Backend, silence_id: str, now: datetime) -> Silence:
    """End a silence now (``acs-detector silence expire ID``)."""
    return AlertStore(backend).expire_silence(silence_id, now)


def silences_text(silences: Sequence[Silence], now: datetime) -> str:
    """One line per silence: id, matchers, window, state, comment."""
    if not silences:
        return "no silences"
    lines = []
    for s in silences:
        m = ",".join(f"{k}={v}" for k, v in sorted(s.matchers.items()))
        state = "active" if s.active(now) else ("pending" if s.starts_at > now else "expired")
        left = ""
        if state == "active":
            left = f" (ends in {human_duration(s.ends_at - now)})"
        lines.append(
            f"{s.id}  {m}  {_iso(s.starts_at)} .. {_iso(s.ends_at)}  {state}{left}"
            + (f"  by {s.created_by}" if s.created_by else "")
            + (f"  # {s.comment}" if s.comment else "")
        )
    return for_terminal("\n".join(lines))


def ack(
    backend: Backend, fingerprint: str, now: datetime, *, by: str = "", comment: str = ""
) -> Ack:
    """Acknowledge a firing alert (``acs-detector ack FINGERPRINT``): no repeats until it resolves.

    Raises ConfigError when the fingerprint is not firing (nothing to acknowledge).
    """
    store = AlertStore(backend)
    state = store.load_state()
    rec = state.records.get(fingerprint)
    if rec is None or rec.status != "firing":
        firing = ", ".join(sorted(r.fingerprint for r in state.firing())) or "none"
        raise ConfigError(f"{fingerprint!r} is not firing (firing: {firing})")
    return store.add_ack(Ack(fingerprint, now, by, comment))


def config_silences(alerting: Mapping[str, Any], now: datetime | None = None) -> list[Silence]:
    """Silences declared in ``[[alerting.silences]]`` (or ``alerting.silences = [...]``).

    Each table: matcher fields (``operation``/``operation_name``, ``sdk_version``, ``metric``,
    ``severity``, ``fingerprint``: glob patterns), ``ends_at`` (required, ISO-8601),
    optional ``starts_at`` and ``comment``. Raises ConfigError listing every problem.
    """
    problems: list[str] = []
    out: list[Silence] = []
    for i, raw in enumerate(alerting.get("silences", []) or []):
        where = f"alerting.silences[{i}]"
        if not isinstance(raw, Mapping):
            problems.append(f"{where}: must be a table")
            continue
        matchers = {
            k: str(v) for k, v in raw.items() if k not in ("starts_at", "ends_at", "comment")
        }
        try:
            ends = (
                parse_until(raw["ends_at"], now or datetime.now(UTC)) if "ends_at" in raw else None
            )
            starts = (
                parse_until(raw["starts_at"], now or datetime.now(UTC))
                if "starts_at" in raw
                else datetime.min.replace(tzinfo=UTC)
            )
            if ends is None:
                raise ConfigError(f"{where}.ends_at: required")
            out.append(Silence(f"config-{i}", matchers, starts, ends, str(raw.get("comment", ""))))
        except ConfigError as exc:
            problems.extend(f"{where}: {p}" for p in exc.problems)
    if problems:
        raise ConfigError(problems)
    return out


#: How many of the latest runs ``status`` lists.
RUNS_SHOWN = 5


def status_data(
    backend: Backend,
    now: datetime,
    *,
    watermark: datetime | None = None,
    judged_until: datetime | str | None = None,
) -> dict[str, Any]:
    """What ``acs-detector status --json`` prints: open alerts with their acknowledgements,
    silences, the outbox (ages from the clock ``now``), the latest runs and their outcome,
    the store's watermark and how far scheduled runs have judged (``judged_until``)."""
    store = AlertStore(backend)
    state = store.load_state()
    acks = store.acks()
    runs = store.runs()
    return {
        "now": _iso(now),
        "watermark": _iso(watermark),
        "judged_until": _iso(_when(judged_until)),
        "last_run": runs[-1].to_json() if runs else None,
        "runs": [{**r.to_json(), "outcome": run_outcome(r)} for r in reversed(runs[-RUNS_SHOWN:])],
        "firing": [
            {
                "fingerprint": r.fingerprint,
                "severity": r.severity,
                "since": _iso(r.started_at),
                "observed": (r.anomaly or {}).get("observed"),
                "baseline": (r.anomaly or {}).get("baseline"),
                "last_notified": _iso(r.notified_at),
                "acked_by": acks[r.fingerprint].by if r.fingerprint in acks else None,
                "acked_at": _iso(acks[r.fingerprint].at) if r.fingerprint in acks else None,
            }
            for r in sorted(state.firing(), key=lambda r: r.fingerprint)
        ],
        "acks": [a.to_json() for _, a in sorted(acks.items())],
        "pending": sorted(r.fingerprint for r in state.records.values() if r.status == "pending"),
        "health": state.health,
        "silences": [s.to_json() for s in list_silences(backend, now)],
        "outbox": [
            {
                "id": i.id,
                "route": i.route,
                "target": i.target,
                "queued_at": _iso(i.queued_at or i.created_at),
                "age_hours": round(i.queued_age(now) / 3600, 2),
                "attempts": i.attempts,
                "last_error": i.last_error,
            }
            for i in store.outbox()
        ],
    }


def _when(value: datetime | str | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def run_outcome(run: RunRecord) -> str:
    """What a run came to, in words: ``ok: 2 alerts, 1 notified`` or ``failed: <error>``."""
    words = {
        "ok": "ok",
        "delivery_failed": "delivery failed",
        "source_error": "could not read the log",
        "error": "failed",
    }.get(run.status, run.status)
    parts = [f"{run.anomalies:,} anomalous window{'s' if run.anomalies != 1 else ''}"]
    if run.notified:
        parts.append(f"{run.notified:,} notified")
    if run.delivered or run.failed or run.undeliverable:
        parts.append(
            f"{run.delivered} delivered, {run.failed} waiting in the outbox,"
            f" {run.undeliverable} undeliverable"
        )
    if run.rows == 0:
        parts.append("no new rows")
    text = f"{words}: {', '.join(parts)}"
    return text + (f" ({run.error})" if run.error else "")


def human_duration(span: timedelta) -> str:
    """A span for a person, its two largest units: ``31 d 9 h``, ``2 h 5 min``, ``4 min``, ``30 s``.

    Negative spans (a clock behind the data) read as ``0 s``.
    """
    seconds = max(int(span.total_seconds()), 0)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min"
    return f"{secs} s"


def status_text(
    backend: Backend,
    now: datetime,
    *,
    watermark: datetime | None = None,
    judged_until: datetime | str | None = None,
) -> str:
    """Human-readable ``acs-detector status``: times with how long ago, spans in human units."""
    d = status_data(backend, now, watermark=watermark, judged_until=judged_until)
    lines = _last_run_lines(d["last_run"], now)
    lines.append(
        f"watermark: {_ago(d['watermark'], now, 'unknown (nothing read into the store yet)')}"
    )
    lines.append(f"judged until: {_ago(d['judged_until'], now, 'never (no scheduled run yet)')}")
    lines += _firing_lines(d, now)
    if d["pending"]:
        lines.append(f"pending: {', '.join(d['pending'])}")
    for name, h in sorted(d["health"].items()):
        lines.append(f"health: {name}: {h.get('summary')} since {h.get('since')}")
    lines += _silence_lines(d["silences"], now)
    lines += _outbox_lines(d["outbox"])
    if len(d["runs"]) > 1:
        lines.append(f"latest runs (newest first, last {len(d['runs'])}):")
        for r in d["runs"]:
            lines.append(f"  {_ago(r['started_at'], now, '?')}: {r['outcome']}")
    return for_terminal("\n".join(lines))  # names from the log: no terminal escapes


def _ago(iso: str | None, now: datetime, missing: str) -> str:
    """``2026-11-25T08:05:00Z (3 h 5 min ago)``, or ``missing`` when there is no time."""
    when = _when(iso)
    if when is None:
        return missing
    span = now - when
    rel = (
        f"in {human_duration(-span)}" if span.total_seconds() < 0 else f"{human_duration(span)} ago"
    )
    return f"{iso} ({rel})"


def _last_run_lines(lr: dict[str, Any] | None, now: datetime) -> list[str]:
    if not lr:
        return ["last run: none recorded"]
    lines = [
        f"last run: {_ago(lr['started_at'], now, '?')} status={lr['status']}"
        f" window={lr['window_start']}..{lr['window_end']}"
        f" rows={lr['rows']} anomalies={lr['anomalies']} notified={lr['notified']}"
        + (f" error={lr['error']}" if lr["error"] else "")
    ]
    delivery = {k: lr.get(k) for k in ("delivered", "failed", "undeliverable") if lr.get(k)}
    if delivery or lr.get("unrouted"):
        lines.append(
            "  delivery: "
            + ", ".join(f"{k}={v}" for k, v in delivery.items())
            + (f" routes without URL: {', '.join(lr['unrouted'])}" if lr.get("unrouted") else "")
        )
    return lines


def _firing_lines(d: dict[str, Any], now: datetime) -> list[str]:
    lines = [f"firing: {len(d['firing'])}"]
    for f in d["firing"]:
        since = _when(f["since"])
        age = f" for {human_duration(now - since)}" if since else ""
        acked, at = "", _when(f["acked_at"])
        if f["acked_by"] is not None and at is not None:
            acked = f"  (acked by {f['acked_by'] or 'someone'} {human_duration(now - at)} ago)"
        lines.append(f"  {f['severity'] or '?':8} {f['fingerprint']}{age}{acked}")
    return lines


def _silence_lines(silences: list[dict[str, Any]], now: datetime) -> list[str]:
    lines = [f"silences: {len(silences)}"]
    for s in silences:
        m = ",".join(f"{k}={v}" for k, v in sorted(s["matchers"].items()))
        who = f" by {s['created_by']}" if s.get("created_by") else ""
        lines.append(
            f"  {s['id']} {m} until {_ago(s['ends_at'], now, '?')}{who}"
            + (f" # {s['comment']}" if s["comment"] else "")
        )
    return lines


def _outbox_lines(outbox: list[dict[str, Any]]) -> list[str]:
    lines = [f"outbox: {len(outbox)}"]
    for o in outbox:
        lines.append(
            f"  {o['id']} {o['route']} -> {o['target']}"
            f" age {human_duration(timedelta(hours=o['age_hours']))},"
            f" {o['attempts']} attempt(s): {o['last_error'][:80]}"
        )
    return lines
