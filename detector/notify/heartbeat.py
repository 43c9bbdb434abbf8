"""Heartbeat (dead man's switch): ping every ``[health] heartbeat_urls`` at the end of a run.

Self-health notices need the job to run; a heartbeat is how the *absence* of runs gets noticed.
The receiving side (healthchecks.io, a self-hosted Healthchecks, Uptime Kuma, Cronitor, ...)
expects a ping every period and alerts when pings stop or a failure ping arrives::

    [health]
    heartbeat_urls = ["${ACS_DETECTOR_HEARTBEAT_URL:-}"]   # https://hc-ping.com/<uuid>
    heartbeat_timeout = "10s"                              # per run, all URLs together

Protocol (healthchecks.io's): an HTTP GET of ``<url>`` after a successful run (exit 0), of
``<url>/fail`` after a failed one (exit 1 or 2, or an unexpected error, once the config is
loaded). A run skipped because another run holds the lock sends nothing: the run holding it
pings when it ends, and a run that hangs holding it shows up as missing pings.

I/O: network only. Never raises: a failed or slow ping is logged as a warning with the URL
redacted (its path is the check's secret) and the run's exit code is unchanged.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from detector import __version__
from detector.config import redact_url
from detector.errors import LockHeldError

__all__ = [
    "DEFAULT_TIMEOUT",
    "PingResult",
    "RunOutcome",
    "fail_url",
    "heartbeat_on_exit",
    "send_heartbeats",
]

log = logging.getLogger("detector.heartbeat")

DEFAULT_TIMEOUT = timedelta(seconds=10)


@dataclass(frozen=True)
class PingResult:
    """The outcome of one ping: ``target`` is the redacted URL, ``detail`` says what happened."""

    target: str
    ok: bool
    detail: str


@dataclass
class RunOutcome:
    """Filled in by the run inside :func:`heartbeat_on_exit`: its exit code (0 = success)."""

    exit_code: int = 1


def fail_url(url: str) -> str:
    """``https://hc-ping.com/abc?x=1`` -> ``https://hc-ping.com/abc/fail?x=1``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/fail"))


def _opener() -> urllib.request.OpenerDirector:
    # Only http(s): no file://, ftp:// or data: handlers, so a URL from the config or a
    # redirect can only ever be an HTTP request. Proxies from the environment are honoured.
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPRedirectHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


def _scrub(text: str, url: str) -> str:
    """Remove every secret-bearing part of ``url`` from an error message."""
    parts = urlsplit(url)
    for piece in sorted({url, parts.path, parts.query, parts.netloc}, key=len, reverse=True):
        if len(piece) > 1:
            text = text.replace(piece, "<secret>")
    return text


def _ping(url: str, timeout: float) -> tuple[bool, str]:
    request = urllib.request.Request(
        url, method="GET", headers={"User-Agent": f"acs-detector/{__version__} heartbeat"}
    )
    try:
        with _opener().open(request, timeout=timeout) as response:
            response.read(1024)
            return True, f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except urllib.error.URLError as exc:
        return False, _scrub(f"{type(exc.reason).__name__}: {exc.reason}", url)[:200]
    except (TimeoutError, OSError, ValueError) as exc:
        return False, _scrub(f"{type(exc).__name__}: {exc}", url)[:200]


def send_heartbeats(
    urls: Sequence[str], *, success: bool, timeout: timedelta = DEFAULT_TIMEOUT
) -> list[PingResult]:
    """Ping every URL (``<url>`` or ``<url>/fail``) at once; return one result per URL.

    The pings run in daemon threads and this returns after at most ``timeout`` plus a second,
    whatever the network does (a hung DNS lookup included); a ping still going then is reported
    as timed out. Never raises; failures are logged as warnings, with the URL redacted.
    """
    seconds = max(timeout.total_seconds(), 0.1)
    slots: list[tuple[bool, str] | None] = [None] * len(urls)

    def work(i: int, target: str) -> None:
        slots[i] = _ping(target, seconds)

    threads = []
    for i, url in enumerate(urls):
        target = url if success else fail_url(url)
        thread = threading.Thread(target=work, args=(i, target), daemon=True, name="heartbeat")
        thread.start()
        threads.append(thread)
    deadline = time.monotonic() + seconds + 1.0
    for thread in threads:  # one shared budget, not one per URL
        thread.join(max(deadline - time.monotonic(), 0.0))
    results = []
    for url, slot in zip(urls, slots, strict=True):
        ok, detail = slot if slot is not None else (False, f"timed out after {seconds:g}s")
        result = PingResult(redact_url(url), ok, detail)
        results.append(result)
        kind = "success" if success else "fail"
        if ok:
            log.info("heartbeat (%s) sent to %s: %s", kind, result.target, detail)
        else:
            log.warning("heartbeat (%s) to %s failed: %s", kind, result.target, detail)
    return results


@contextmanager
def heartbeat_on_exit(health: Mapping[str, Any], *, enabled: bool = True) -> Iterator[RunOutcome]:
    """Wrap one run; ping the heartbeat URLs when it ends.

    ``health`` is the config's ``[health]`` section (``heartbeat_urls``, ``heartbeat_timeout``).
    The run sets ``outcome.exit_code``; 0 pings the success form, anything else the fail form.
    An exception leaving the block pings the fail form and is re-raised, except
    :class:`LockHeldError` (a skipped run: the run holding the lock pings). ``enabled=False``
    (a dry run) pings nothing.
    """
    urls = [u for u in health.get("heartbeat_urls", ()) if u]
    timeout = health.get("heartbeat_timeout") or DEFAULT_TIMEOUT
    outcome = RunOutcome()
    try:
        yield outcome
    except LockHeldError:
        raise
    except BaseException:
        if enabled and urls:
            send_heartbeats(urls, success=False, timeout=timeout)
        raise
    if enabled and urls:
        send_heartbeats(urls, success=outcome.exit_code == 0, timeout=timeout)
