"""``acs-detector notify test``: a marked test message to every target of every (or one) route.

Like Grafana's contact-point test: it proves, before an incident does, that each configured
target accepts a message from this host with the credentials it has. Each target gets one
message through :func:`~detector.notify.send.send_message`, the same send path (apprise,
per-route ``timeout``, bounded total time, secrets masked in logs) real digests take.

Consumes the configured routes (:class:`~detector.notify.deliver.Route` or ``[[notify.route]]``
records), the host name and ``now``; produces one :class:`ProbeResult` per target, showing the
target only in its display (privacy) form. It touches no alert state, notification log or
outbox: a test message is not an alert and is never retried.

Does network I/O (the sends). Raises :class:`~detector.errors.ConfigError` when there is no
route to test or the named one does not exist.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from detector.errors import ConfigError
from detector.notify.deliver import Route
from detector.notify.render import Message, channel_of
from detector.notify.send import SendResult, send_message

__all__ = ["TEST_TITLE", "ProbeResult", "probe_message", "probe_routes", "probe_text"]

#: Subject / title of every test message: says at a glance that nothing is wrong.
TEST_TITLE: Final = "acs-detector test notification: no incident"

# Route names come from the config and the host name from the machine: shown, but kept to
# name characters so neither can inject markup into a Teams card or an HTML mail.
_UNSAFE = re.compile(r"[^A-Za-z0-9._\- ]")

Sender = Callable[..., SendResult]


@dataclass(frozen=True)
class ProbeResult:
    """What one target answered: ``target`` in display form, ``status`` as apprise's outcome
    (SUCCESS, FAILURE, TIMEOUT, INVALID_URL, ... or NO_TARGET for a route without URLs)."""

    route: str
    target: str
    ok: bool
    status: str
    error: str = ""


def _safe(text: str, limit: int = 80) -> str:
    return _UNSAFE.sub("", str(text))[:limit] or "?"


def probe_message(route: str, host: str, now: datetime, channel: str) -> Message:
    """The test message for one target of ``route``.

    Parameters
    ----------
    route : the route's name (shown, sanitised).
    host : the sending machine's name (shown, sanitised).
    now : the send time (UTC), shown so a receiver can tell this test from an older one.
    channel : :func:`~detector.notify.render.channel_of` the target; email gets plain text,
        every other channel Markdown.

    Returns
    -------
    Message titled :data:`TEST_TITLE`, no attachments and no alert fingerprints.
    """
    when = now.strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [
        "This is a test message from `acs-detector notify test`. No incident is open and no "
        "alert is firing; nothing needs to be done.",
        "",
        f"- route: {_safe(route)}",
        f"- host: {_safe(host)}",
        f"- sent: {when}",
    ]
    text = "\n".join(lines)
    if channel == "email":
        plain = text.replace("`", "")
        return Message(channel, TEST_TITLE, plain, "text", plain)
    return Message(channel, TEST_TITLE, text, "markdown", text)


def _selected(routes: Sequence[Any], name: str | None) -> list[Route]:
    all_routes = [r if isinstance(r, Route) else Route.from_config(r) for r in routes]
    if not all_routes:
        raise ConfigError("notify test: no [[notify.route]] is configured")
    if name is None:
        return all_routes
    chosen = [r for r in all_routes if r.name == name]
    if not chosen:
        known = ", ".join(repr(r.name) for r in all_routes)
        raise ConfigError(f"notify test: no route named {name!r} (configured: {known})")
    return chosen


def probe_routes(
    routes: Sequence[Any],
    *,
    now: datetime,
    host: str,
    route: str | None = None,
    send: Sender = send_message,
) -> list[ProbeResult]:
    """Send the test message to every target of every route (or of ``route`` only).

    Parameters
    ----------
    routes : :class:`Route` objects or ``[[notify.route]]`` config records.
    now : shown in the message.
    host : shown in the message.
    route : the name of the one route to test; None tests them all.
    send : the sender (default :func:`send_message`, the real one).

    Returns
    -------
    One :class:`ProbeResult` per target, in config order. A route whose URLs are all empty
    (``${VAR:-}`` unset) gives one failed ``NO_TARGET`` row: a digest for it would go nowhere.

    Raises
    ------
    ConfigError
        No route is configured, or none is named ``route``.
    """
    results: list[ProbeResult] = []
    for r in _selected(routes, route):
        if not r.urls:
            results.append(
                ProbeResult(r.name, "-", False, "NO_TARGET", "every URL of this route is empty")
            )
            continue
        for url in r.urls:
            message = probe_message(r.name, host, now, channel_of(url))
            res = send(url, message, notify_type="info", timeout=r.timeout)
            results.append(ProbeResult(r.name, res.target, res.ok, res.status, res.error))
    return results


def probe_text(results: Sequence[ProbeResult]) -> str:
    """One line per target (``route  target  OK|FAILED  status  error``) and a summary line."""
    width = max((len(r.route) for r in results), default=0)
    lines = []
    for r in results:
        verdict = "OK" if r.ok else "FAILED"
        line = f"{r.route:<{width}}  {r.target}  {verdict}  {r.status}"
        lines.append(line + (f"  {r.error}" if r.error and not r.ok else ""))
    ok = sum(r.ok for r in results)
    lines.append(f"{ok} of {len(results)} target(s) reached")
    return "\n".join(lines)
