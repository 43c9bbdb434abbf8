"""Deliver a run's decisions: route, render, send, and keep what failed in the outbox.

Consumes the lifecycle's (and the health check's) :class:`~detector.lifecycle.Decision`
objects, the configured :class:`Route` list, the store backend and optional chart history;
produces a :class:`DeliveryReport`. Order of work:

1. retry the outbox left by earlier runs (oldest first; a retried message says how old it is;
   messages older than ``outbox_max_age`` or for targets no longer configured are dropped and
   reported as ``expired``);
2. per route: select the notifying decisions it takes and render one digest per target;
3. write every digest to the outbox and its *intent* to the notification log (one batch),
   then ``commit(batch)`` (the stage saves the alert state that decided them, with the batch
   id), then send each one: ``sending`` before, ``sent`` (or ``undeliverable``) after.

Exactly once per target, as near as a crash allows:

* a digest's id is a hash of the route and the decisions it carries; the notification log
  (``nflog``) says, per digest and target, how far delivery got. A digest already ``sent`` to a
  target is never sent to it again (outbox retry or a rerun deciding it again);
* an outbox item whose batch was never committed was written by a run that died before saving
  its state: it was never sent (sending starts after the commit), and the rerun, starting from
  the same state, decides it again. It is dropped (``superseded``), not sent a second time;
* between a target's acknowledgement and the ``sent`` mark (one small write) a crash leaves
  ``sending``, which looks the same as a crash while the target was still receiving (an SMTP
  DATA that never completed). We choose **at-least-once** there: it is sent again. A missed
  alert costs an unnoticed outage; a rare second copy costs a glance.

What can never be delivered (the URL is malformed, apprise has no such service) leaves the
outbox at once as ``undeliverable``, with its reason in the report, the log and the run record.
A route whose URLs are all empty (``${VAR:-}``) sends nothing and says so (``unrouted``).
The report's ``ok`` is False when anything was not delivered; the caller exits 1 after saving
its state (errors.NotifyError).

Does I/O: network (through :mod:`detector.notify.send`) and the store.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import pandas as pd

from detector.anomaly import SEVERITIES
from detector.config import RouteConfig, route_config
from detector.lifecycle import Decision, Reason
from detector.notify.chart import chart_png
from detector.notify.render import (
    Attachment,
    DigestLinks,
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
from detector.timeutil import iso_z, timestamp_utc

__all__ = [
    "Delivery",
    "DeliveryContext",
    "DeliveryLimits",
    "DeliveryReport",
    "Route",
    "deliver",
    "delivery_lines",
    "digest_id",
    "validate_routes",
]

log = logging.getLogger(__name__)

#: Digests without a run report, Log Analytics link or non-default KQL bin.
_NO_LINKS = DigestLinks()


@dataclass(frozen=True)
class Route:
    """Where a digest goes and which alerts it takes (``[[notify.route]]``).

    ``urls`` are apprise URLs (secrets: ``repr`` hides them). ``operations`` are glob
    patterns on the operation name (None/empty = all), ``metrics`` a subset of duration,
    failure_rate, volume. ``health``: also receive self-health notices. ``max_items``
    overrides :func:`deliver`'s digest limit for this route. ``timeout``: seconds a request to
    this route's targets waits for a connection or the next bytes of an answer (None: the
    sender's default, 15 s; apprise alone would give up after 4 s and the retry would reach a
    slow but alive webhook twice).
    """

    name: str
    urls: tuple[str, ...] = field(repr=False)
    min_severity: str = "warning"
    operations: tuple[str, ...] | None = None
    metrics: tuple[str, ...] | None = None
    send_resolved: bool = True
    health: bool = True
    max_items: int | None = None
    timeout: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "urls", tuple(str(u) for u in self.urls if str(u).strip()))
        if self.operations is not None:
            object.__setattr__(self, "operations", tuple(self.operations))
        if self.metrics is not None:
            object.__setattr__(self, "metrics", tuple(self.metrics))
        if self.min_severity not in SEVERITIES:
            raise ValueError(f"route {self.name}: min_severity must be one of {SEVERITIES}")
        if self.timeout is not None and not 0 < float(self.timeout) <= 600:
            raise ValueError(f"route {self.name}: timeout must be in (0, 600] seconds")

    @classmethod
    def from_config(cls, obj: RouteConfig | Mapping[str, object]) -> Route:
        """From the config's :class:`RouteConfig`, or a ``[[notify.route]]`` table (checked and
        defaulted by :func:`detector.config.route_config`; raises ConfigError)."""
        r = obj if isinstance(obj, RouteConfig) else route_config(obj)
        return cls(
            name=r.name,
            urls=r.urls,
            min_severity=r.min_severity,
            operations=r.operations or None,
            metrics=r.metrics or None,
            send_resolved=r.send_resolved,
            health=r.health,
            max_items=r.max_items,
            timeout=r.timeout,
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


@dataclass(frozen=True)
class DeliveryContext:
    """Where and when a run delivers: its routes, the store's backend (outbox, notification
    log, sent log), the run's clock (outbox ages, "firing for" durations, log entries), and
    ``dry_run`` (render only: nothing is sent and nothing is written)."""

    routes: Sequence[Route]
    backend: Backend
    now: datetime
    dry_run: bool = False


@dataclass(frozen=True)
class DeliveryLimits:
    """How much is shown and kept: alerts per digest before "+k more" (a route's
    ``max_items`` overrides), and the age and size past which undelivered messages leave the
    outbox (oldest first, reported as expired)."""

    max_items: int = 10
    outbox_max_age: timedelta = timedelta(days=2)
    outbox_max_items: int = 500


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
    digest_id: str = ""


#: Per target outcomes counted in :meth:`DeliveryReport.by_target`.
_OUTCOMES = ("sent", "failed", "undeliverable", "expired", "already_sent", "superseded")


@dataclass
class DeliveryReport:
    """What :func:`deliver` did. ``ok`` is False when anything was left undelivered.

    ``sent``: acknowledged by the target. ``failed``: kept in the outbox for a retry.
    ``undeliverable``: dropped for good (malformed URL, no such service), with the reason.
    ``expired``: dropped from the outbox (too old, target gone). ``already_sent``: the
    notification log says the target has this digest; not sent again. ``superseded``: outbox
    items of a run that died before committing; the rerun decided them again. ``unrouted``:
    routes that had notices but no usable URL.
    """

    sent: list[Delivery] = field(default_factory=list)
    failed: list[Delivery] = field(default_factory=list)
    expired: list[Delivery] = field(default_factory=list)
    undeliverable: list[Delivery] = field(default_factory=list)
    already_sent: list[Delivery] = field(default_factory=list)
    superseded: list[Delivery] = field(default_factory=list)
    unrouted: list[dict[str, Any]] = field(default_factory=list)
    outbox_size: int = 0
    dry_run: bool = False
    messages: list[dict[str, Any]] = field(default_factory=list)  # dry run: what would be sent

    @property
    def ok(self) -> bool:
        return not self.failed and not self.undeliverable

    @property
    def outboxed(self) -> list[str]:
        """Ids of the outbox items left for the next run by this run."""
        return [d.outbox_id for d in self.failed if d.outbox_id]

    def merge(self, other: DeliveryReport) -> None:
        """Add ``other``'s outcomes to this report (the health notices' delivery)."""
        for name in (*_OUTCOMES, "unrouted", "messages"):
            getattr(self, name).extend(getattr(other, name))
        self.outbox_size = other.outbox_size

    def by_target(self) -> list[dict[str, Any]]:
        """Per route and target (privacy form): how many messages ended in each outcome."""
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for outcome in _OUTCOMES:
            for d in getattr(self, outcome):
                row = rows.setdefault(
                    (d.route, d.target),
                    {"route": d.route, "target": d.target, **dict.fromkeys(_OUTCOMES, 0)},
                )
                row[outcome] += 1
                if outcome in ("failed", "undeliverable") and d.error:
                    row["error"] = f"{d.status}: {d.error}"[:200]
        return [rows[k] for k in sorted(rows)]

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "dry_run": self.dry_run,
            "by_target": self.by_target(),
            "unrouted": self.unrouted,
            **{name: [asdict(d) for d in getattr(self, name)] for name in _OUTCOMES},
            "outboxed": self.outboxed,
            "outbox_size": self.outbox_size,
            "messages": self.messages,
        }


def delivery_lines(summary: Mapping[str, Any]) -> list[str]:
    """Console lines for a run report's delivery summary (:meth:`DeliveryReport.to_json`):
    one per route and target (privacy form) with its counts, then routes that had no URL."""
    lines = []
    for row in summary.get("by_target") or []:
        counts = ", ".join(f"{k.replace('_', ' ')} {row[k]}" for k in _OUTCOMES if row.get(k))
        error = f" ({row['error'][:120]})" if row.get("error") else ""
        lines.append(f"    {row['route']} -> {row['target']}: {counts}{error}")
    for u in summary.get("unrouted") or []:
        n = len(u.get("fingerprints") or [])
        lines.append(f"    {u['route']}: no usable URL, {n} notice(s) not sent")
    return lines


def digest_id(route: str, decisions: Iterable[Decision]) -> str:
    """Content id of a route's digest: the same decisions give the same id on a rerun."""
    key = sorted(
        (d.kind, d.fingerprint, str(d.reason), d.status, d.severity, iso_z(d.window_end) or "")
        for d in decisions
    )
    return hashlib.sha256(json.dumps([route, key]).encode()).hexdigest()[:16]


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
            png = chart_png(frame, d.anomaly, now=_chart_end(frame, now))
        except Exception as exc:  # a chart must never cost the alert
            log.warning("chart for %s failed: %s", d.fingerprint, type(exc).__name__)
            png = None
        if png:
            out[d.fingerprint] = png
    return out


def _chart_end(frame: pd.DataFrame, now: datetime) -> datetime:
    """The chart's right edge: ``now``, or the series' own end when it ends earlier (an alert
    found in the middle of a manual rerun is charted around its window, not the rerun's end)."""
    if frame.empty or "bucket_start" not in frame:
        return now
    last = pd.to_datetime(frame["bucket_start"], utc=True).max() + pd.Timedelta(minutes=5)
    return min(timestamp_utc(now), last).to_pydatetime()


def _find_target(item: OutboxItem, routes: Sequence[Route]) -> tuple[str, Route] | None:
    for r in routes:
        if r.name != item.route:
            continue
        for u in r.urls:
            if target_id(r.name, u) == item.target_id:
                return u, r
        for u in r.urls:  # secret rotated: same service and visible parts
            if display_url(u) == item.target:
                return u, r
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


def _as_delivery(
    item: OutboxItem, status: str, *, ok: bool = False, error: str = "", retried: bool = True
) -> Delivery:
    return Delivery(
        item.route,
        item.target,
        item.channel,
        ok,
        status,
        item.fingerprints,
        error,
        item.attempts,
        item.id,
        retried,
        0.0,
        item.title,
        item.digest_id,
    )


def _nflog_entry(item: OutboxItem, state: str, now: datetime, **extra: Any) -> dict[str, Any]:
    return {
        "state": state,
        "at": iso_z(now),
        "route": item.route,
        "target": item.target,
        "digest": item.digest_id,
        **extra,
    }


class _Sender:
    """Sends outbox items one by one, keeping the outbox and the notification log in step."""

    def __init__(self, store: AlertStore, report: DeliveryReport, now: datetime) -> None:
        self.store = store
        self.report = report
        self.now = now
        self.log_entries: list[dict[str, Any]] = []

    def send(self, item: OutboxItem, url: str, message: Message, *, retried: bool) -> None:
        """``sending`` -> send -> ``sent`` (then out of the outbox), ``undeliverable`` or
        back in the outbox with the error."""
        key = item.nflog_key
        self.store.mark({key: _nflog_entry(item, "sending", self.now)})
        res = send_message(url, message, notify_type=item.notify_type, timeout=item.timeout)
        item.attempts += 1
        d = _as_delivery(item, res.status, ok=res.ok, error=res.error, retried=retried)
        d.target, d.attempts = res.target, res.attempts
        d.age_seconds = item.age(self.now) if retried else 0.0
        self.log_entries.append(_log_entry(d, self.now))
        if res.ok:
            # Mark first: a crash before the removal leaves an item the retry skips.
            self.store.mark({key: _nflog_entry(item, "sent", self.now)})
            self.store.remove_outbox([item.id])
            self.report.sent.append(d)
        elif res.permanent:
            reason = f"{res.status}: {res.error}"[:300]
            self.store.mark({key: _nflog_entry(item, "undeliverable", self.now, reason=reason)})
            self.store.remove_outbox([item.id])
            log.error(
                "notify route %s target %s: undeliverable, dropped (%s)",
                item.route,
                item.target,
                reason,
            )
            self.report.undeliverable.append(d)
        else:
            item.last_attempt_at = self.now
            item.last_error = res.error[:300]
            self.store.put_outbox([item])
            self.report.failed.append(d)


def _retry_outbox(
    sender: _Sender,
    routes: Sequence[Route],
    *,
    committed: Collection[str] | None,
    limits: DeliveryLimits,
) -> None:
    """Send earlier runs' undelivered messages again, or drop them with a reason."""
    store, report, now = sender.store, sender.report, sender.now
    pending = sorted(store.outbox(), key=lambda i: i.created_at)
    nflog = store.nflog()
    drop: list[str] = []
    ends: dict[str, dict[str, Any]] = {}  # nflog entries of items dropped unsent
    for n, item in enumerate(pending):
        state = (nflog.get(item.nflog_key) or {}).get("state")
        if committed is not None and item.batch and item.batch not in committed:
            # Written by a run that died before saving its state: never sent, decided again.
            log.info("outbox: %s for %s was never committed; superseded", item.id, item.target)
            report.superseded.append(_as_delivery(item, "SUPERSEDED"))
            ends[item.nflog_key] = _nflog_entry(item, "superseded", now)
            drop.append(item.id)
            continue
        if state in ("sent", "undeliverable"):
            # A crash between the mark and the removal: the target has it (or never will).
            report.already_sent.append(_as_delivery(item, "ALREADY_SENT", ok=state == "sent"))
            drop.append(item.id)
            continue
        found = _find_target(item, routes)
        too_many = len(pending) - n > limits.outbox_max_items
        if found is None or item.age(now) > limits.outbox_max_age.total_seconds() or too_many:
            why = (
                "target no longer configured"
                if found is None
                else "outbox full"
                if too_many
                else "older than outbox_max_age"
            )
            d = _as_delivery(item, "EXPIRED", error=why)
            d.age_seconds = item.age(now)
            log.warning(
                "outbox: dropped message for %s (%s, age %.1f h)",
                item.target,
                why,
                item.age(now) / 3600,
            )
            report.expired.append(d)
            ends[item.nflog_key] = _nflog_entry(item, "expired", now, reason=why)
            drop.append(item.id)
            sender.log_entries.append(_log_entry(d, now))
            continue
        url, route = found
        if state == "sending":
            log.warning(
                "outbox: the last send of %s to %s was cut off; sending again (at-least-once:"
                " the target may already have it)",
                item.id,
                item.target,
            )
        item.timeout = route.timeout
        sender.send(item, url, _to_message(item, now), retried=True)
    store.mark(ends)
    store.remove_outbox(drop)


@dataclass(frozen=True)
class _RenderOptions:
    """Run-wide settings every digest of :func:`deliver` is rendered and queued with."""

    now: datetime
    links: DigestLinks
    max_items: int
    charts: dict[str, bytes]
    batch: str
    dry_run: bool


class _Target(NamedTuple):
    """One target URL with its privacy form and renderer channel."""

    url: str
    shown: str
    channel: str


class _Digest(NamedTuple):
    """One route's notices and what all its targets' messages share."""

    route: Route
    chosen: list[Decision]
    notify_type: str
    digest_id: str


def deliver(
    decisions: Sequence[Decision],
    ctx: DeliveryContext,
    *,
    links: DigestLinks = _NO_LINKS,
    limits: DeliveryLimits = DeliveryLimits(),
    history_for_charts: Mapping[str, pd.DataFrame] | None = None,
    retry_outbox: bool = True,
    commit: Callable[[str], None] | None = None,
    committed: Collection[str] | None = None,
) -> DeliveryReport:
    """Retry the outbox, then send one digest per route and target.

    Parameters
    ----------
    decisions : lifecycle (and health) decisions; only ``notify=True`` ones are sent.
    ctx : the routes (one with no matching decision sends nothing), the store's backend, the
        run's clock and ``dry_run`` (rendered messages are then in ``report.messages``).
    links : the run report, the Log Analytics resource and the KQL bin every digest links to.
    limits : alerts per digest, and the outbox's age and size limits.
    history_for_charts : per fingerprint, a frame with ``bucket_start``, ``observed``,
        ``baseline``, ``band_low``, ``band_high``; charts are skipped where absent.
    retry_outbox : retry earlier runs' undelivered messages first.
    commit : called with the batch id once this run's digests are in the outbox and before
        any is sent; the caller saves the state that decided them (recording the batch). If it
        raises, nothing of the batch is sent and the error propagates.
    committed : batch ids known to be committed; outbox items of any other batch are dropped
        as superseded. None: every item counts as committed (no stage around this call).

    Returns
    -------
    DeliveryReport; ``ok`` False when any target failed (its message waits in the outbox) or
    a message could never be delivered.
    """
    routes, now, dry_run = ctx.routes, ctx.now, ctx.dry_run
    store = AlertStore(ctx.backend)
    report = DeliveryReport(dry_run=dry_run)
    sender = _Sender(store, report, now)

    # 1. the outbox of earlier runs
    if retry_outbox and not dry_run:
        _retry_outbox(sender, routes, committed=committed, limits=limits)

    # 2. this run's digests
    opts = _RenderOptions(
        now=now,
        links=links,
        max_items=limits.max_items,
        charts=_run_charts(decisions, routes, history_for_charts, now),
        batch=uuid.uuid4().hex[:12],
        dry_run=dry_run,
    )
    todo = _render_all(decisions, routes, opts, report)
    if not dry_run:
        if todo:
            _send_batch(sender, todo, commit, opts.batch)
        store.append_log(sender.log_entries)
        report.outbox_size = len(store.outbox())
    return report


def _run_charts(
    decisions: Sequence[Decision],
    routes: Sequence[Route],
    history: Mapping[str, pd.DataFrame] | None,
    now: datetime,
) -> dict[str, bytes]:
    """Decisions and routes -> charts by fingerprint (none if no target takes attachments)."""
    if not routes and any(d.notify for d in decisions):
        log.warning(
            "no [[notify.route]] configured: %d notification(s) only in the run report",
            sum(1 for d in decisions if d.notify),
        )
    return (
        _charts([d for d in decisions if d.notify], history, now)
        if any(takes_attachments(u) for r in routes for u in r.urls)
        else {}
    )


def _render_all(
    decisions: Sequence[Decision],
    routes: Sequence[Route],
    opts: _RenderOptions,
    report: DeliveryReport,
) -> list[tuple[OutboxItem, str, Message]]:
    """Decisions and routes -> (outbox item, URL, message) per route and target, in order."""
    todo: list[tuple[OutboxItem, str, Message]] = []
    for route in routes:
        digest = _route_digest(route, decisions, report)
        if digest is not None:
            todo.extend(_render_targets(digest, opts, report))
    return todo


def _route_digest(
    route: Route, decisions: Sequence[Decision], report: DeliveryReport
) -> _Digest | None:
    """Route and all decisions -> the digest it sends (None: nothing, or no usable URL)."""
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
        return None
    if not route.urls:
        log.warning(
            "notify route %s has no usable URL (all empty): %d notice(s) not sent",
            route.name,
            len(chosen),
        )
        report.unrouted.append(
            {"route": route.name, "fingerprints": [d.fingerprint for d in chosen]}
        )
        return None
    return _Digest(route, chosen, _notify_type(chosen), digest_id(route.name, chosen))


def _render_targets(
    digest: _Digest, opts: _RenderOptions, report: DeliveryReport
) -> list[tuple[OutboxItem, str, Message]]:
    """Digest -> (outbox item, URL, message) per target; a dry run only records the messages."""
    route = digest.route
    out: list[tuple[OutboxItem, str, Message]] = []
    for url in route.urls:
        channel = channel_of(url)
        msg = render_digest(
            digest.chosen,
            channel=channel,
            route=route.name,
            now=opts.now,
            links=opts.links,
            max_items=route.max_items or opts.max_items,
            charts=opts.charts,
            attach_charts=takes_attachments(url),
        )
        shown = display_url(url)
        if opts.dry_run:
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
        target = _Target(url, shown, channel)
        out.append((_outbox_item(digest, target, msg, opts), url, msg))
    return out


def _outbox_item(
    digest: _Digest, target: _Target, msg: Message, opts: _RenderOptions
) -> OutboxItem:
    """Digest, one target and its rendered message -> the outbox item that carries it."""
    route = digest.route
    return OutboxItem(
        id=uuid.uuid4().hex[:12],
        route=route.name,
        target_id=target_id(route.name, target.url),
        target=target.shown,
        channel=target.channel,
        title=msg.title,
        body=msg.body,
        body_format=msg.body_format,
        created_at=opts.now,
        attachments=[
            {
                "name": a.name,
                "mimetype": a.mimetype,
                "data": base64.b64encode(a.data).decode(),
            }
            for a in msg.attachments
        ],
        # Every notice the digest covers, including those behind "+k more".
        fingerprints=[d.fingerprint for d in digest.chosen],
        notify_type=digest.notify_type,
        digest_id=digest.digest_id,
        batch=opts.batch,
        timeout=route.timeout,
    )


def _send_batch(
    sender: _Sender,
    todo: list[tuple[OutboxItem, str, Message]],
    commit: Callable[[str], None] | None,
    batch: str,
) -> None:
    """This run's digests -> skip those already sent, write ahead, commit, then send each."""
    store, report, now = sender.store, sender.report, sender.now
    nflog = store.nflog()
    fresh = []
    for item, url, msg in todo:
        if (nflog.get(item.nflog_key) or {}).get("state") == "sent":
            log.info("digest %s already sent to %s: not sent again", item.digest_id, item.target)
            report.already_sent.append(_as_delivery(item, "ALREADY_SENT", ok=True, retried=False))
        else:
            fresh.append((item, url, msg))
    # Write-ahead: every digest is in the outbox, and its intent logged, before any send.
    if fresh:
        store.put_outbox([item for item, _, _ in fresh])
    store.mark({item.nflog_key: _nflog_entry(item, "intent", now) for item, _, _ in fresh})
    if commit is not None and fresh:
        commit(batch)
    for item, url, msg in fresh:
        sender.send(item, url, msg, retried=False)
