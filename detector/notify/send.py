"""Send one rendered message to one target through apprise. The only module importing apprise.

Consumes a target URL (a secret: it carries webhook tokens and SMTP passwords) and a
:class:`~detector.notify.render.Message`; produces a :class:`SendResult`. Every target is sent
on its own ``Apprise`` object so its ``AppriseResult`` (apprise 2.x: SUCCESS, FAILURE, NOMATCH,
PARTIAL, TIMEOUT) maps to exactly one outcome; ``notify()`` never raises for delivery problems
and neither does :func:`send_message`.

Secrets never reach logs: targets are shown only in apprise's privacy form with every part
that may hold a token masked (:func:`display_url`: path segments, token hosts, the whole
query, where apprise leaves header values visible), and while apprise runs a filter on the
``apprise`` and ``urllib3`` loggers masks every secret part of the URL, because apprise logs the
raw POST URL (Slack and Teams tokens are in it) at DEBUG level.

Time is bounded twice: every request waits at most ``timeout`` seconds for a connection or
for the next bytes of an answer (apprise's own default is 4 s, too short for a webhook that is
slow but alive: it then gets the message *and* a retry), and one send takes at most
:func:`total_timeout` seconds in all, so a target that trickles its answer byte by byte cannot
keep the job (or the process, after the job is done) alive. A send past that bound is reported
as TIMEOUT and its worker thread is abandoned as a daemon.

Does network I/O.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import string
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote

with warnings.catch_warnings():
    # apprise 2.3 imports the deprecated stdlib imghdr (Python 3.11/3.12); not our concern,
    # and it must not fail runs or test suites that turn warnings into errors.
    warnings.simplefilter("ignore", DeprecationWarning)
    # apprise imports it lazily when plugins load: import it once here, silenced.
    with contextlib.suppress(ImportError):
        import imghdr  # noqa: F401
    import apprise
    from apprise.attachment.memory import AttachMemory

from detector.notify.render import Message

__all__ = [
    "DEFAULT_TIMEOUT",
    "PERMANENT",
    "SendResult",
    "display_url",
    "redact",
    "secrets_of",
    "send_message",
    "target_id",
    "total_timeout",
    "validate_url",
]

log = logging.getLogger(__name__)

_REDACTED_LOGGERS = ("apprise", "urllib3.connectionpool", "urllib3.util.retry", "requests")
_FORMATS = {
    "markdown": apprise.NotifyFormat.MARKDOWN,
    "html": apprise.NotifyFormat.HTML,
    "text": apprise.NotifyFormat.TEXT,
}
_TYPES = {
    "failure": apprise.NotifyType.FAILURE,
    "warning": apprise.NotifyType.WARNING,
    "success": apprise.NotifyType.SUCCESS,
    "info": apprise.NotifyType.INFO,
}


#: Seconds a request waits for a connection or the next bytes of an answer (apprise: 4 s).
DEFAULT_TIMEOUT: Final = 15.0
#: Outcomes no retry can change: the URL is malformed or names no apprise service.
PERMANENT: Final = frozenset({"INVALID_URL", "NOMATCH"})


def total_timeout(timeout: float) -> float:
    """Upper bound of one whole send (connect, write, answer) for a per-request ``timeout``."""
    return 3 * timeout + 5


@dataclass
class SendResult:
    """Outcome of one message to one target."""

    ok: bool
    status: str  # SUCCESS | FAILURE | TIMEOUT | PARTIAL | NOMATCH | INVALID_URL
    target: str  # display (privacy) form
    error: str = ""  # redacted apprise log lines
    attempts: int = 0

    @property
    def permanent(self) -> bool:
        """True when retrying cannot help (malformed URL, no such service)."""
        return self.status in PERMANENT


def target_id(route: str, url: str) -> str:
    """Stable id of a target (finds outbox items' targets again); not reversible."""
    return hashlib.sha256(f"{route}\0{url}".encode()).hexdigest()[:16]


def _asset() -> apprise.AppriseAsset:
    # secure_logging keeps apprise from echoing attachment/config URLs with credentials.
    return apprise.AppriseAsset(
        app_id="acs-detector",
        app_desc="ACS call anomaly detector",
        secure_logging=True,
    )


class _DropAll(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


def display_url(url: str) -> str:
    """apprise's privacy form of ``url`` without the query string; safe to log and store."""
    # apprise logs the loaded URL in a privacy form that still shows header values
    # (json://...?+X-Token=...): mute it while we do not know the secrets yet.
    mute = _DropAll()
    apprise_log = logging.getLogger("apprise")
    apprise_log.addFilter(mute)
    try:
        obj = apprise.Apprise.instantiate(url, asset=_asset())
    except Exception:  # apprise raises for some malformed URLs; never echo them
        obj = None
    finally:
        apprise_log.removeFilter(mute)
    if not obj:
        scheme = url.split("://", 1)[0] if "://" in url else "?"
        return f"{scheme[:12]}://<invalid>"
    return _mask_tokens(str(obj.url(privacy=True)))


# apprise's own mask of a token it knows (first and last character kept): "T...1".
_APPRISE_MASK = re.compile(r"^.\.\.\..$")


def _mask_tokens(privacy_url: str) -> str:
    """apprise's privacy form with every part it left visible that may be a token masked.

    apprise masks the tokens it knows by name but keeps the path of generic webhooks
    (json://host/hook/TOKEN) and shows query values (headers, sig=...). Kept: the scheme, a
    user name, a host that is a network name (a dot, a port or localhost) and apprise's own
    ``T...1`` masks; every other host or path segment becomes ``****``; the query goes.
    """
    scheme, _, rest = privacy_url.split("?", 1)[0].partition("://")
    netloc, slash, path = rest.partition("/")
    user, at, host = netloc.rpartition("@")
    if not ("." in host or ":" in host or host.lower() == "localhost" or _shown(host)):
        host = "****"
    masked = [seg if seg == "" or _shown(seg) else "****" for seg in path.split("/")]
    return f"{scheme}://{user}{at}{host}{slash}{'/'.join(masked)}"


def _shown(part: str) -> bool:
    return part == "****" or bool(_APPRISE_MASK.match(part))


_SPLIT = re.compile(r"[/:@?&=#,;+ \s]+")


def secrets_of(url: str) -> set[str]:
    """Parts of ``url`` its display form hides (tokens, passwords, signatures), raw and decoded."""
    shown = display_url(url)
    out: set[str] = set()
    for tok in _SPLIT.split(url):
        for t in {tok, unquote(tok)}:
            if len(t) >= 4 and t not in shown and not set(t) <= set(string.punctuation):
                out.add(t)
    return out


def redact(text: str, secrets: set[str]) -> str:
    """Replace every secret in ``text`` by ``****`` (longest first, so parts do not leak)."""
    for s in sorted(secrets, key=len, reverse=True):
        text = text.replace(s, "****")
    return text


class _RedactFilter(logging.Filter):
    def __init__(self, secrets: set[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a broken format string must not break delivery
            msg = str(record.msg)
        record.msg = redact(msg, self.secrets)
        record.args = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        return True


@contextmanager
def _redacting(secrets: set[str]) -> Iterator[None]:
    filt = _RedactFilter(secrets)
    loggers = [logging.getLogger(n) for n in _REDACTED_LOGGERS]
    for lg in loggers:
        lg.addFilter(filt)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(filt)


def validate_url(url: str) -> str | None:
    """None if apprise accepts ``url``, else a problem description (no secret in it)."""
    if "${" in url:
        return f"{url.split('://', 1)[0]}://...: unresolved ${{...}} environment reference"
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("msteams",):
        return "msteams:// (Office 365 connectors) was retired; use workflows:// for Teams"
    with _redacting(secrets_of(url)):
        try:
            ok = apprise.Apprise.instantiate(url, asset=_asset()) is not None
        except Exception:
            ok = False
    return None if ok else f"{display_url(url)}: apprise does not accept this URL"


def _send_asset() -> apprise.AppriseAsset:
    # No apprise-side deadline or worker pool: apprise's pool threads are joined at exit, so a
    # trickling target abandoned there kept the process alive. The bound is ours (_bounded).
    return apprise.AppriseAsset(
        app_id="acs-detector",
        app_desc="ACS call anomaly detector",
        secure_logging=True,
        async_mode=False,
        service_timeout=0,
    )


def _bounded(work: Any, seconds: float) -> tuple[bool, Any, BaseException | None]:
    """Run ``work()`` on a daemon thread for at most ``seconds``: (finished, result, error)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = work()
        except BaseException as exc:  # handed back to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="acs-detector-send", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        return False, None, None
    return True, box.get("result"), box.get("error")


def send_message(
    url: str,
    message: Message,
    *,
    notify_type: str = "warning",
    timeout: float | None = None,
) -> SendResult:
    """Send ``message`` to ``url``; never raises for delivery problems.

    Parameters
    ----------
    url : an apprise URL (secret).
    message : the rendered digest; attachments are sent where the service takes them.
    notify_type : failure | warning | success | info (colour/icon on Slack and Teams).
    timeout : seconds one request waits for a connection or the next bytes of an answer
        (None: :data:`DEFAULT_TIMEOUT`); the whole send is bounded by :func:`total_timeout`.

    Returns
    -------
    SendResult with the privacy form of the target and redacted error lines. ``status`` is
    TIMEOUT when the whole send overran its bound (the target may still have the message).
    """
    secrets = secrets_of(url)
    shown = display_url(url)
    wait = float(timeout) if timeout and timeout > 0 else DEFAULT_TIMEOUT
    with _redacting(secrets):
        ap = apprise.Apprise(asset=_send_asset())
        try:
            added = ap.add(url)
        except Exception:  # malformed URL: apprise may raise deep inside its parser
            added = False
        if not added or len(ap) == 0:
            log.warning("notify target %s: apprise does not accept this URL", shown)
            return SendResult(False, "INVALID_URL", shown, "apprise does not accept this URL")
        for service in ap:
            service.socket_connect_timeout = wait
            service.socket_read_timeout = wait
            if message.body_format == "html" and hasattr(service, "inline"):
                service.inline = True  # email: charts as cid: images in the HTML part
        attach = None
        if message.attachments:
            attach = apprise.AppriseAttachment(asset=_asset())
            for a in message.attachments:
                attach.add(AttachMemory(content=a.data, name=a.name, mimetype=a.mimetype))
        done, result, exc = _bounded(
            lambda: ap.notify(
                body=message.body,
                title=message.title,
                notify_type=_TYPES.get(notify_type, apprise.NotifyType.WARNING),
                body_format=_FORMATS.get(message.body_format, apprise.NotifyFormat.TEXT),
                attach=attach,
            ),
            total_timeout(wait),
        )
        if not done:
            # The abandoned thread may still log the raw URL: keep masking it for good.
            for name in _REDACTED_LOGGERS:
                logging.getLogger(name).addFilter(_RedactFilter(secrets))
            total = total_timeout(wait)
            log.warning("notify target %s: no complete answer within %.0f s", shown, total)
            return SendResult(
                False, "TIMEOUT", shown, f"no complete answer within {total:.0f} s", 1
            )
        if exc is not None:  # API misuse only; keep the run alive and the item queued
            log.warning("notify target %s: apprise raised %s", shown, type(exc).__name__)
            return SendResult(False, "FAILURE", shown, redact(str(exc), secrets)[:300])
        status = result.status.name
        attempts = sum(len(r.attempts) for r in result)
        errors = [
            redact(e.message, secrets)
            for e in result.logs()
            if e.level in ("WARNING", "ERROR", "CRITICAL")
        ]
    ok = bool(result)
    error = "; ".join(dict.fromkeys(errors))[:500] if not ok else ""
    if ok:
        log.info("notify target %s: %s", shown, status)
    else:
        log.warning("notify target %s: %s %s", shown, status, error)
    return SendResult(ok, status, shown, error, attempts)
