"""Deliver a run's decisions: route, render, send, and keep what failed in the outbox.

Consumes the lifecycle's (and the health check's) :class:`~detector.lifecycle.Decision`
objects, the configured :class:`Route` list, the store backend and optional chart history;
produces a :class:`DeliveryReport`. Order of work:

1. retry the outbox left by earlier runs (oldest first; a retried message says how old it is;
   messages older than ``outbox_max_age`` or for targets no longer configured are dropped and
   reported as ``expired``);
2. per route: select the notifying decisions it takes, render one digest per target in the
   target's format, **write it to the outbox first**, send it, and remove it on success.

Because of that write-ahead, a crash or a failed target never loses a message: the next run
retries it exactly once per target (at-least-once delivery, like Alertmanager's fail-open HA).
``notify()`` results are checked per target; the report's ``ok`` is False when anything was
not delivered, and the caller exits 1 after saving its state (errors.NotifyError).

Does I/O: network (through :mod:`detector.notify.send`) and the store.
"""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from detector.anomaly import SEVERITIES
from detector.lifecycle import Decision, Reason
from detector.notify.chart import chart_png
from detector.notify.render import (
    Attachment,
    Message,
    channel_of,
    delay_note,
    render_digest,
    select,
    takes_attachments,
)
from detector.notify.send import display_url, send_message, target_id, validate_url
from detector.store.alerts import AlertStore, OutboxItem
from detector.store.backend import Backend

__all__ = ["Delivery", "DeliveryReport", "Route", "deliver", "validate_routes"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """Where a digest goes and which alerts it takes (``[[notify.route]]``).

    ``urls`` are apprise URLs (secrets: ``repr`` hides them). ``operations`` are glob
    patterns on the operation name (None/empty = all), ``metrics`` a subset of duration,
    failure_rate, volume. ``health``: also receive self-health notices. ``max_items``
    overrides :func:`deliver`'s digest limit for this route.
    """

    name: str
    urls: tuple[str, ...] = field(repr=False)
    min_severity: str = "warning"
    operations: tuple[str, ...] | None = None
    metrics: tuple[str, ...] | None = None
    send_resolved: bool = True
    health: bool = True
    max_items: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "urls", tuple(str(u) for u in self.urls if str(u).strip()))
        if self.operations is not None:
            object.__setattr__(self, "operations", tuple(self.operations))
        if self.metrics is not None:
            object.__setattr__(self, "metrics", tuple(self.metrics))
        if self.min_severity not in SEVERITIES:
            raise ValueError(f"route {self.name}: min_severity must be one of {SEVERITIES}")

    @classmethod
    def from_config(cls, obj: Any) -> Route:
        """From a mapping or any object with ``name``/``urls``/... attributes (RouteConfig)."""
        get = obj.get if isinstance(obj, Mapping) else lambda k, d=None: getattr(obj, k, d)
        return cls(
            name=str(get("name")),
            urls=tuple(get("urls", ()) or ()),
            min_severity=get("min_severity", "warning") or "warning",
            operations=tuple(get("operations") or ()) or None,
            metrics=tuple(get("metrics") or ()) or None,
            send_resolved=bool(get("send_resolved", True)),
            health=bool(get("health", True)),
            max_items=get("max_items"),
        )

    def targets(self) -> list[str]:
        """URLs in their display (privacy) form."""
        return [display_url(u) for u in self.urls]


def validate_routes(routes: Iterable[Route]) -> list[str]:
    """Problems with route URLs (for ``check-config``), secrets hidden."""
    problems = []
    for r in routes:
        if not r.urls:
            problems.append(f"notify.route {r.name}: no URLs")
        for i, u in enumerate(r.urls):
            p = validate_url(u)
            if p:
                problems.append(f"notify.route {r.name}: urls[{i}]: {p}")
    return problems


@dataclass
class Delivery:
    """One message to one target: sent, failed (queued), or expired from the outbox."""

    route: str
    target: str  # privacy form
    channel: str
    ok: bool
    status: str
    fingerprints: list[str]
    error: str = ""
    attempts: int = 0
    outbox_id: str | None = None
    retried: bool = False  # came from an earlier run's outbox
    age_seconds: float = 0.0
    title: str = ""


@dataclass
class DeliveryReport:
    """What :func:`deliver` did. ``ok`` is False when anything was left undelivered."""

    sent: list[Delivery] = field(default_factory=list)
    failed: list[Delivery] = field(default_factory=list)
    expired: list[Delivery] = field(default_factory=list)
    outbox_size: int = 0
    dry_run: bool = False
    messages: list[dict[str, Any]] = field(default_factory=list)  # dry run: what would be sent

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def outboxed(self) -> list[str]:
        """Ids of the outbox items left for the next run by this run."""
        return [d.outbox_id for d in self.failed if d.outbox_id]

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "dry_run": self.dry_run,
            "sent": [asdict(d) for d in self.sent],
            "failed": [asdict(d) for d in self.failed],
            "expired": [asdict(d) for d in self.expired],
            "outboxed": self.outboxed,
            "outbox_size": self.outbox_size,
            "messages": self.messages,
        }


def _notify_type(decisions: Sequence[Decision]) -> str:
    firing = [d for d in decisions if d.reason != Reason.RESOLVED]
    if any(d.severity == "critical" for d in firing):
        return "failure"
    if firing:
        return "warning"
    return "success"


def _charts(
    decisions: Sequence[Decision],
    history: Mapping[str, pd.DataFrame] | None,
    now: datetime,
) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    if not history:
        return out
    for d in decisions:
        if d.kind != "alert" or d.reason == Reason.RESOLVED or d.fingerprint in out:
            continue
        frame = history.get(d.fingerprint)
        if frame is None:
            continue
        try:
            png = chart_png(frame, d.anomaly, now=now)
        except Exception as exc:  # a chart must never cost the alert
            log.warning("chart for %s failed: %s", d.fingerprint, type(exc).__name__)
            png = None
        if png:
            out[d.fingerprint] = png
    return out


def _find_target(item: OutboxItem, routes: Sequence[Route]) -> str | None:
    for r in routes:
        if r.name != item.route:
            continue
        for u in r.urls:
            if target_id(r.name, u) == item.target_id:
                return u
        for u in r.urls:  # secret rotated: same service and visible parts
            if display_url(u) == item.target:
                return u
    return None


def _to_message(item: OutboxItem, now: datetime) -> Message:
    age = timedelta(seconds=item.age(now))
    body = delay_note(item.body, item.body_format, item.channel, item.title, age, item.attempts)
    atts = [
        Attachment(a["name"], a["mimetype"], base64.b64decode(a["data"])) for a in item.attachments
    ]
    return Message(item.channel, item.title, body, item.body_format, "", atts, item.fingerprints)


def _log_entry(d: Delivery, now: datetime) -> dict[str, Any]:
    return {
        "at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "route": d.route,
        "target": d.target,
        "ok": d.ok,
        "status": d.status,
        "retried": d.retried,
        "fingerprints": d.fingerprints,
        "error": d.error[:200],
    }


def deliver(
    decisions: Sequence[Decision],
    *,
    routes: Sequence[Route],
    store_backend: Backend,
    history_for_charts: Mapping[str, pd.DataFrame] | None = None,
    report_url_or_path: str | None = None,
    now: datetime,
    dry_run: bool = False,
    max_items: int = 10,
    outbox_max_age: timedelta = timedelta(days=2),
    outbox_max_items: int = 500,
    bin_size: str = "5m",
    retry_outbox: bool = True,
) -> DeliveryReport:
    """Retry the outbox, then send one digest per route and target.

    Parameters
    ----------
    decisions : lifecycle (and health) decisions; only ``notify=True`` ones are sent.
    routes : :class:`Route` list; a route with no matching decision sends nothing.
    store_backend : the store's :class:`Backend` (outbox and sent log live there).
    history_for_charts : per fingerprint, a frame with ``bucket_start``, ``observed``,
        ``baseline``, ``band_low``, ``band_high``; charts are skipped where absent.
    report_url_or_path : the full run report, linked from digests (Teams points there).
    now : the run's clock (outbox ages, "firing for" durations, log entries).
    dry_run : render only; nothing is sent and nothing is written. Rendered messages are
        in ``report.messages``.
    max_items : alerts per digest before "+k more" (a route's ``max_items`` overrides).
    outbox_max_age : undelivered messages older than this are dropped (reported as expired).
    outbox_max_items : the outbox keeps at most this many messages (oldest dropped first).
    bin_size : bucket width for the reproduce-KQL.
    retry_outbox : retry earlier runs' undelivered messages first.

    Returns
    -------
    DeliveryReport; ``ok`` False when any target failed (its message waits in the outbox).
    """
    store = AlertStore(store_backend)
    report = DeliveryReport(dry_run=dry_run)
    log_entries: list[dict[str, Any]] = []

    # 1. the outbox of earlier runs
    if retry_outbox and not dry_run:
        pending = sorted(store.outbox(), key=lambda i: i.created_at)
        drop = []
        for n, item in enumerate(pending):
            url = _find_target(item, routes)
            too_many = len(pending) - n > outbox_max_items
            if url is None or item.age(now) > outbox_max_age.total_seconds() or too_many:
                why = (
                    "target no longer configured"
                    if url is None
                    else "older than outbox_max_age"
                    if not too_many
                    else "outbox full"
                )
                d = Delivery(
                    item.route,
                    item.target,
                    item.channel,
                    False,
                    "EXPIRED",
                    item.fingerprints,
                    why,
                    item.attempts,
                    item.id,
                    True,
                    item.age(now),
                    item.title,
                )
                log.warning(
                    "outbox: dropped message for %s (%s, age %.1f h)",
                    item.target,
                    why,
                    item.age(now) / 3600,
                )
                report.expired.append(d)
                drop.append(item.id)
                log_entries.append(_log_entry(d, now))
                continue
            res = send_message(url, _to_message(item, now), notify_type=item.notify_type)
            d = Delivery(
                item.route,
                res.target,
                item.channel,
                res.ok,
                res.status,
                item.fingerprints,
                res.error,
                res.attempts,
                item.id,
                True,
                item.age(now),
                item.title,
            )
            log_entries.append(_log_entry(d, now))
            if res.ok:
                report.sent.append(d)
                drop.append(item.id)
            else:
                item.attempts += 1
                item.last_attempt_at = now
                item.last_error = res.error[:300]
                store.put_outbox([item])
                report.failed.append(d)
        store.remove_outbox(drop)

    # 2. this run's digests
    if not routes and any(d.notify for d in decisions):
        log.warning(
            "no [[notify.route]] configured: %d notification(s) only in the run report",
            sum(1 for d in decisions if d.notify),
        )
    charts = (
        _charts([d for d in decisions if d.notify], history_for_charts, now)
        if any(takes_attachments(u) for r in routes for u in r.urls)
        else {}
    )
    for route in routes:
        chosen = select(
            decisions,
            min_severity=route.min_severity,
            operations=route.operations,
            metrics=route.metrics,
            health=route.health,
        )
        if not route.send_resolved:
            chosen = [d for d in chosen if d.reason != Reason.RESOLVED or d.kind == "health"]
        if not chosen:
            continue
        ntype = _notify_type(chosen)
        for url in route.urls:
            channel = channel_of(url)
            msg = render_digest(
                chosen,
                channel=channel,
                route=route.name,
                now=now,
                report_url=report_url_or_path,
                max_items=route.max_items or max_items,
                charts=charts,
                attach_charts=takes_attachments(url),
                bin_size=bin_size,
            )
            shown = display_url(url)
            if dry_run:
                report.messages.append(
                    {
                        "route": route.name,
                        "target": shown,
                        "channel": channel,
                        "title": msg.title,
                        "body": msg.body,
                        "body_format": msg.body_format,
                        "attachments": [a.name for a in msg.attachments],
                        "fingerprints": msg.fingerprints,
                    }
                )
                continue
            item = OutboxItem(
                id=uuid.uuid4().hex[:12],
                route=route.name,
                target_id=target_id(route.name, url),
                target=shown,
                channel=channel,
                title=msg.title,
                body=msg.body,
                body_format=msg.body_format,
                created_at=now,
                attachments=[
                    {
                        "name": a.name,
                        "mimetype": a.mimetype,
                        "data": base64.b64encode(a.data).decode(),
                    }
                    for a in msg.attachments
                ],
                fingerprints=msg.fingerprints,
                notify_type=ntype,
            )
            store.put_outbox([item])  # write-ahead: a crash from here on loses nothing
            res = send_message(url, msg, notify_type=ntype)
            d = Delivery(
                route.name,
                res.target,
                channel,
                res.ok,
                res.status,
                msg.fingerprints,
                res.error,
                res.attempts,
                item.id,
                False,
                0.0,
                msg.title,
            )
            log_entries.append(_log_entry(d, now))
            if res.ok:
                store.remove_outbox([item.id])
                report.sent.append(d)
            else:
                item.attempts = 1
                item.last_attempt_at = now
                item.last_error = res.error[:300]
                store.put_outbox([item])
                report.failed.append(d)

    if not dry_run:
        store.append_log(log_entries)
        report.outbox_size = len(store.outbox())
    return report
