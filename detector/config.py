"""Configuration: TOML in, a frozen validated :class:`Config` out.

``load_config(path)`` parses the file with :mod:`tomllib`, substitutes ``${ENV_VAR}`` references
(``${VAR:-default}`` gives a default), checks every key against a declarative table and raises
one :class:`~detector.errors.ConfigError` listing *every* problem with its key (alertmanager's
``config.Load``), so a user fixes them all in one go. Values that came from the environment are
wrapped in :class:`Secret` and print as ``<secret>``; ``Config.redacted()`` is what
``acs-detector check-config`` prints.

Consumes a file path and the environment; produces a :class:`Config`. No other I/O.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from detector.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "Config",
    "MaintenanceWindow",
    "RouteConfig",
    "Secret",
    "format_duration",
    "load_config",
    "parse_duration",
    "parse_time",
    "redact_url",
]

DEFAULT_CONFIG_PATH = "config/detector.toml"
CONFIG_ENV = "ACS_DETECTOR_CONFIG"


class Secret(str):
    """A string that came from the environment: kept usable, printed as ``<secret>``."""

    def __repr__(self) -> str:
        return "'<secret>'"


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """``"5m"`` -> 5 minutes. Units: ms, s, m, h, d, w. Raises ValueError."""
    m = _DURATION_RE.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a duration like '5m', '1h' or '7d'")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


def format_duration(td: timedelta) -> str:
    """Inverse of :func:`parse_duration` for whole units (``timedelta(hours=1)`` -> ``"1h"``)."""
    secs = td.total_seconds()
    for unit in ("d", "h", "m", "s"):
        if secs >= _UNITS[unit] and secs % _UNITS[unit] == 0:
            return f"{int(secs // _UNITS[unit])}{unit}"
    return f"{secs}s"


def parse_time(text: str) -> datetime:
    """ISO-8601 to an aware UTC datetime; naive times are taken as UTC. Raises ValueError."""
    value = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# --------------------------------------------------------------------------------------------
# Environment references
# --------------------------------------------------------------------------------------------

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _substitute(value: Any, key: str, env: Mapping[str, str], problems: list[str]) -> Any:
    if isinstance(value, dict):
        return {
            k: _substitute(v, f"{key}.{k}" if key else k, env, problems) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_substitute(v, f"{key}[{i}]", env, problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    from_env = False

    def repl(m: re.Match[str]) -> str:
        nonlocal from_env
        name, default = m.group(1), m.group(2)
        if name in env:
            from_env = True
            return env[name]
        if default is not None:
            return default
        problems.append(f"{key}: environment variable {name} is not set")
        return ""

    out = _ENV_RE.sub(repl, value)
    return Secret(out) if from_env else out


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RouteConfig:
    """One ``[[notify.route]]``: where a digest goes and which alerts it takes."""

    name: str
    urls: tuple[str, ...]
    min_severity: str = "warning"
    operations: tuple[str, ...] = ()  # empty = every operation (glob patterns)
    metrics: tuple[str, ...] = ()  # empty = every metric
    send_resolved: bool = True
    health: bool = True  # also receives self-health notices
    max_items: int | None = None  # digest size for this route (default: alerting.max_items)
    timeout: float | None = None  # seconds a request waits for an answer (default 15)


@dataclass(frozen=True)
class MaintenanceWindow:
    """A ``[[maintenance]]`` window: kept out of baselines, no alerts inside it."""

    start: datetime
    end: datetime
    operation_name: str | None = None
    note: str = ""


@dataclass(frozen=True)
class Config:
    """The validated configuration. Sections are plain dicts of checked values plus typed
    lists for routes and maintenance windows; ``raw`` keeps the substituted TOML."""

    path: Path | None
    source: dict[str, Any]
    detection: dict[str, Any]
    state: dict[str, Any]
    alerting: dict[str, Any]
    routes: tuple[RouteConfig, ...] = ()
    maintenance: tuple[MaintenanceWindow, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    #: ``[health]``: heartbeat_urls (tuple of http(s) URLs) and heartbeat_timeout.
    health: dict[str, Any] = field(
        default_factory=lambda: {"heartbeat_urls": (), "heartbeat_timeout": timedelta(seconds=10)}
    )
    #: Problems that do not stop the job (a route whose every URL is an empty ${VAR:-}).
    warnings: tuple[str, ...] = ()

    @property
    def state_path(self) -> Path:
        """The embedded store directory, relative to the config file's project root."""
        return self._resolve(self.state["path"])

    @property
    def models_path(self) -> Path:
        return self._resolve(self.state["models"])

    def source_path(self) -> str:
        """The file source path (a file, directory or glob), resolved like the state path."""
        return str(self._resolve(self.source["path"]))

    def _resolve(self, value: str) -> Path:
        p = Path(value).expanduser()
        if p.is_absolute() or self.path is None:
            return p
        # Relative paths are relative to the directory holding config/, i.e. the project root
        # when the config lives in config/, else to the config file's own directory.
        base = self.path.parent
        if base.name == "config":
            base = base.parent
        return base / p

    def redacted(self) -> dict[str, Any]:
        """The effective config with every secret hidden (for ``check-config``)."""

        def durations(section: dict[str, Any]) -> dict[str, Any]:
            return {
                k: (format_duration(v) if isinstance(v, timedelta) else v)
                for k, v in section.items()
            }

        return _redact(
            {
                "source": durations(self.source),
                "detection": durations(self.detection),
                "state": self.state,
                "alerting": durations(self.alerting),
                "notify": {
                    "route": [
                        {
                            "name": r.name,
                            "urls": list(r.urls),
                            "min_severity": r.min_severity,
                            "operations": list(r.operations),
                            "metrics": list(r.metrics),
                            "send_resolved": r.send_resolved,
                            "health": r.health,
                            "max_items": r.max_items,
                        }
                        for r in self.routes
                    ]
                },
                "health": {
                    # A heartbeat URL's path is the check's secret, wherever it came from.
                    "heartbeat_urls": [redact_url(u) for u in self.health["heartbeat_urls"]],
                    "heartbeat_timeout": format_duration(self.health["heartbeat_timeout"]),
                },
                "maintenance": [
                    {
                        "start": w.start.isoformat(),
                        "end": w.end.isoformat(),
                        "operation_name": w.operation_name,
                        "note": w.note,
                    }
                    for w in self.maintenance
                ],
            }
        )


_URL_CRED_RE = re.compile(r"^([a-z][a-z0-9+.-]*://)([^/@]*@)?([^/?#]*)(.*)$", re.I)


def redact_url(url: str) -> str:
    """Hide credentials, token hosts and path tokens of a URL: ``slack://<secret>/<secret>``."""
    m = _URL_CRED_RE.match(url)
    if not m:
        return "<secret>"
    scheme, _cred, host, rest = m.groups()
    # Webhook tokens live in the path (Teams workflows, json://) and, for services addressed
    # by token (slack://xoxb-..., slack://TA/TB/TC), in the host part: show a host only when
    # it is a network name (a dot, a port or localhost).
    if not ("." in host or ":" in host or host.lower() == "localhost"):
        host = "<secret>" if host else ""
    return f"{scheme}{'<secret>@' if _cred else ''}{host}{'/<secret>' if rest.strip('/') else ''}"


def _redact(value: Any, key: str = "") -> Any:
    if isinstance(value, Secret):
        return "<secret>"
    if isinstance(value, dict):
        return {k: _redact(v, k) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v, key) for v in value]
    # A notification URL carries its token in the user, host or path part even when it has
    # no "@" or "?" (slack://xoxb-..., json://host/hook/TOKEN): shown as status, reports and
    # logs show it (send.display_url), never in clear.
    if isinstance(value, str) and key == "urls":
        from detector.notify.send import display_url

        return display_url(value)
    if isinstance(value, str) and "://" in value:
        return redact_url(value) if "@" in value or "?" in value else value
    return value


# --------------------------------------------------------------------------------------------
# Validation table: section -> key -> (default, checker). A checker returns the converted value
# or raises ValueError with a message; every failure becomes one "section.key: message" problem.
# --------------------------------------------------------------------------------------------

Checker = Callable[[Any], Any]


def _one_of(*choices: str) -> Checker:
    def check(v: Any) -> Any:
        if v not in choices:
            raise ValueError(f"must be one of {', '.join(map(repr, choices))}, got {v!r}")
        return v

    return check


def _string(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"must be a string, got {type(v).__name__}")
    return v


def _opt_string(v: Any) -> str | None:
    return None if v is None else _string(v)


def _duration(v: Any) -> timedelta:
    td = parse_duration(_string(v))
    if td <= timedelta(0):
        raise ValueError("must be positive")
    return td


def _bucket(v: Any) -> timedelta:
    td = _duration(v)
    if 86400 % td.total_seconds() != 0 or td < timedelta(minutes=1):
        raise ValueError("must be at least 1m and divide a day evenly (1m, 5m, 15m, 1h, ...)")
    return td


def _int_range(lo: int, hi: int) -> Checker:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError(f"must be an integer in [{lo}, {hi}], got {v!r}")
        return v

    return check


def _float_range(lo: float, hi: float) -> Checker:
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            raise ValueError(f"must be a number in [{lo}, {hi}], got {v!r}")
        return float(v)

    return check


def _report_url(v: Any) -> str | None:
    """A base URL (http or https, no query or fragment) the run reports are served under;
    empty (an unset ``${VAR:-}``) means none."""
    v = _string(v).strip()
    if not v:
        return None
    if not re.match(r"^https?://[^/?#\s]+[^?#\s]*$", v, re.I):
        # A query would be a SAS token: in every message, it would hand read access to the
        # state container (alert state, outbox) to everyone who sees an alert.
        raise ValueError("must be an http:// or https:// base URL without ?query or #fragment")
    return v.rstrip("/")


def _count_or_age(v: Any) -> int | timedelta:
    """``keep_reports``: how many runs' reports to keep (>= 1), or for how long (``"14d"``)."""
    if isinstance(v, str):
        return _duration(v)
    return _int_range(1, 10_000_000)(v)


def _bool_or_path(v: Any) -> bool | str:
    if isinstance(v, bool):
        return v
    return _string(v)


# --- issue 22, many ACS resources: [source] lists of workspaces / resource ids ---------------


def _string_list(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list | tuple) or not all(isinstance(x, str) for x in v):
        raise ValueError("must be a list of strings")
    return tuple(v)


def _workspaces(v: Any) -> str | tuple[str, ...] | None:
    """``workspace_id``: one id, or a list (the first is the main one)."""
    return _string_list(v) if isinstance(v, list | tuple) else _opt_string(v)


def _flag(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("must be true or false")
    return v


# --- end issue 22 ---------------------------------------------------------------------------


def _credential(v: Any) -> str:
    v = _string(v)
    if v in ("default", "managed_identity", "azure_cli") or re.fullmatch(r"env:[A-Za-z_]\w*", v):
        return v
    raise ValueError(
        "must be 'default', 'managed_identity', 'azure_cli' or 'env:NAME', got " + repr(v)
    )


SCHEMA: dict[str, dict[str, tuple[Any, Checker]]] = {
    "source": {
        "kind": ("file", _one_of("file", "log_analytics")),
        "path": ("data/demo", _string),
        "workspace_id": (None, _workspaces),
        "resource_id": (None, _opt_string),
        # issue 22: more workspaces / ACS resources, one query each; judge each ACS resource
        # that writes to them on its own baseline (split_resources).
        "additional_workspaces": ((), _string_list),
        "resource_ids": ((), _string_list),
        "split_resources": (True, _flag),
        "endpoint": ("https://api.loganalytics.io", _string),
        "audience": (None, _opt_string),
        "connection_verify": (True, _bool_or_path),
        "credential": ("default", _credential),
        "threads": (None, _int_range(1, 256)),  # DuckDB threads for the file source
        "memory_limit": ("640MB", _string),  # DuckDB's limit for the file source (spills beyond)
        # Partitions (operation, SDK version) one read models, busiest first; the rest are
        # counted as dropped (partition_cap), so junk operation names cannot drive memory.
        "max_partitions": (5000, _int_range(1, 1_000_000)),
        # Further Log Analytics keys (arrival, overlap, server_timeout, chunk sizes, retry
        # budget, ...) pass through and are validated by LogAnalyticsSettings at load.
    },
    "detection": {
        "bucket": ("5m", _bucket),
        "baseline": ("7d", _duration),
        "delay": ("10m", _duration),  # scheduled window ends at now - delay
        "lateness": ("6h", _duration),  # late rows still merged into buckets this old
        "max_window": ("1d", _duration),  # first scheduled run judges at most this much
        "step": ("1h", _duration),  # every window is judged in steps of this (a scheduled run's)
        "max_catchup": ("30d", _duration),  # after downtime, judge at most this much (warns)
        "seed": (0, _int_range(0, 2**31 - 1)),
    },
    "state": {
        "path": (".acs-detector", _string),
        "models": ("models", _string),
        "url": (None, _opt_string),  # blob://account/container/prefix (Azure Functions)
    },
    "alerting": {
        "repeat_interval": ("4h", _duration),
        "resolve_after": ("30m", _duration),
        "max_items": (10, _int_range(1, 1000)),
        "outbox_max_age": ("2d", _duration),
        # Where people open the run reports (reports/run-*.html): messages link there.
        "report_url": (None, _report_url),
        # Run reports kept in <state>/reports: a count of runs, or an age ("14d").
        "keep_reports": (500, _count_or_age),
    },
}


def _check_section(
    name: str, given: Any, problems: list[str], passthrough: bool = False
) -> dict[str, Any]:
    table = SCHEMA[name]
    if given is None:
        given = {}
    if not isinstance(given, dict):
        problems.append(f"{name}: must be a table")
        given = {}
    out: dict[str, Any] = {}
    for key, (default, check) in table.items():
        value = given.get(key, default)
        if value is None:
            out[key] = None
            continue
        try:
            out[key] = check(value) if not isinstance(value, timedelta) else value
        except ValueError as exc:
            problems.append(f"{name}.{key}: {exc}")
    for key in given:
        if key not in table:
            if passthrough:
                out[key] = given[key]  # engine knobs, validated by the engine's own policy
            else:
                problems.append(f"{name}.{key}: unknown key")
    return out


def _check_routes(
    notify: Any,
    problems: list[str],
    warnings: list[str] | None = None,
    raw_notify: Any = None,
) -> tuple[RouteConfig, ...]:
    """Routes from ``[[notify.route]]``; every URL is checked with apprise's own parser.

    ``raw_notify`` is the table before ``${VAR}`` substitution: a route left with no URL is a
    problem, unless every URL it lists was an empty ``${VAR:-}`` (a route switched off by
    its environment), which is a warning.
    """
    warnings = [] if warnings is None else warnings
    raw_routes = raw_notify.get("route") if isinstance(raw_notify, dict) else None
    if notify is None:
        return ()
    if not isinstance(notify, dict):
        problems.append("notify: must be a table")
        return ()
    for key in notify:
        if key != "route":
            problems.append(f"notify.{key}: unknown key")
    routes = notify.get("route", [])
    if not isinstance(routes, list):
        problems.append("notify.route: must be an array of tables ([[notify.route]])")
        return ()
    out = []
    names: set[str] = set()
    for i, r in enumerate(routes):
        where = f"notify.route[{i}]"
        if not isinstance(r, dict):
            problems.append(f"{where}: must be a table")
            continue
        for key in r:
            if key not in (
                "name",
                "urls",
                "min_severity",
                "operations",
                "metrics",
                "send_resolved",
                "health",
                "max_items",
                "timeout",
            ):
                problems.append(f"{where}.{key}: unknown key")
        name = r.get("name")
        if not isinstance(name, str) or not name:
            problems.append(f"{where}.name: required string")
            name = f"route{i}"
        elif name in names:
            problems.append(f"{where}.name: duplicate route name {name!r}")
        names.add(name)
        urls = r.get("urls", [])
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            problems.append(f"{where}.urls: must be a list of apprise URLs")
            urls = []
        # An empty value (e.g. ${VAR:-}) disables that URL rather than failing the config.
        listed = len(urls)
        index = [j for j, u in enumerate(urls) if u.strip()]
        urls = [urls[j] for j in index]
        for j, u in zip(index, urls, strict=True):
            if "://" not in u:
                problems.append(f"{where}.urls[{j}]: not a URL (expected scheme://...)")
            else:
                bad = _apprise_problem(u)
                if bad:
                    problems.append(f"{where}.urls[{j}] ({name}): {bad}")
        if not urls:
            if listed and _all_from_env(raw_routes, i):
                warnings.append(
                    f"{where} ({name}): every URL is an empty ${{VAR:-}}; this route sends nothing"
                )
            elif not listed or not any("${" in str(x) for x in _raw_urls(raw_routes, i)):
                problems.append(f"{where}.urls ({name}): no URL; a route needs an apprise URL")
        sev = r.get("min_severity", "warning")
        if sev not in ("info", "warning", "critical"):
            problems.append(f"{where}.min_severity: must be info, warning or critical, got {sev!r}")
        ops = r.get("operations", [])
        if not isinstance(ops, list) or not all(isinstance(o, str) for o in ops):
            problems.append(f"{where}.operations: must be a list of operation names")
            ops = []
        metrics = r.get("metrics", [])
        if not isinstance(metrics, list) or not all(
            m in ("duration", "failure_rate", "volume") for m in metrics
        ):
            problems.append(f"{where}.metrics: must be a list of duration, failure_rate, volume")
            metrics = []
        flags = {}
        for flag in ("send_resolved", "health"):
            if not isinstance(r.get(flag, True), bool):
                problems.append(f"{where}.{flag}: must be true or false")
            flags[flag] = bool(r.get(flag, True))
        max_items = r.get("max_items")
        if max_items is not None and (
            isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1
        ):
            problems.append(f"{where}.max_items: must be a positive integer")
            max_items = None
        timeout = r.get("timeout")
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout <= 600
        ):
            problems.append(f"{where}.timeout: must be a number of seconds in (0, 600]")
            timeout = None
        out.append(
            RouteConfig(
                name,
                tuple(urls),
                sev,
                tuple(ops),
                tuple(metrics),
                max_items=max_items,
                timeout=float(timeout) if timeout is not None else None,
                **flags,
            )
        )
    return tuple(out)


def _check_health(health: Any, problems: list[str]) -> dict[str, Any]:
    """``[health]``: heartbeat URLs (http or https; empty values dropped) and their timeout."""
    if health is None:
        health = {}
    if not isinstance(health, dict):
        problems.append("health: must be a table")
        health = {}
    for key in health:
        if key not in ("heartbeat_urls", "heartbeat_timeout"):
            problems.append(f"health.{key}: unknown key")
    urls = health.get("heartbeat_urls", [])
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        problems.append("health.heartbeat_urls: must be a list of http(s) URLs")
        urls = []
    urls = [u.strip() for u in urls if u.strip()]  # ${VAR:-} disables a URL, as in routes
    for i, u in enumerate(urls):
        if not re.match(r"^https?://[^/?#\s]+", u, re.I):
            problems.append(f"health.heartbeat_urls[{i}]: must be an http:// or https:// URL")
    timeout = timedelta(seconds=10)
    try:
        timeout = _duration(health.get("heartbeat_timeout", "10s"))
        if timeout > timedelta(seconds=60):
            raise ValueError("must be at most 60s (a ping must not hold up the next run)")
    except ValueError as exc:
        problems.append(f"health.heartbeat_timeout: {exc}")
    return {"heartbeat_urls": tuple(urls), "heartbeat_timeout": timeout}


def _raw_urls(raw_routes: Any, i: int) -> list[Any]:
    """The URLs route ``i`` listed before ``${VAR}`` substitution ([] if unknown)."""
    if not isinstance(raw_routes, list) or i >= len(raw_routes):
        return []
    r = raw_routes[i]
    urls = r.get("urls", []) if isinstance(r, dict) else []
    return [urls] if isinstance(urls, str) else urls if isinstance(urls, list) else []


def _all_from_env(raw_routes: Any, i: int) -> bool:
    """Whether every URL of route ``i`` is a ``${VAR:-default}`` reference."""
    raw = _raw_urls(raw_routes, i)
    return bool(raw) and all(
        isinstance(u, str) and _ENV_RE.fullmatch(u.strip()) is not None for u in raw
    )


def _apprise_problem(url: str) -> str | None:
    """apprise's verdict on one URL (None if it accepts it); the message holds no secret."""
    # Imported here: apprise is only needed when a route lists a URL.
    from detector.notify.send import validate_url

    return validate_url(url)


def _check_maintenance(windows: Any, problems: list[str]) -> tuple[MaintenanceWindow, ...]:
    if windows is None:
        return ()
    if not isinstance(windows, list):
        problems.append("maintenance: must be an array of tables ([[maintenance]])")
        return ()
    out = []
    for i, w in enumerate(windows):
        where = f"maintenance[{i}]"
        if not isinstance(w, dict):
            problems.append(f"{where}: must be a table")
            continue
        try:
            start = w["start"] if isinstance(w.get("start"), datetime) else parse_time(w["start"])
            end = w["end"] if isinstance(w.get("end"), datetime) else parse_time(w["end"])
        except (KeyError, ValueError, TypeError):
            problems.append(f"{where}: start and end must be ISO-8601 times")
            continue
        start = start.replace(tzinfo=UTC) if start.tzinfo is None else start
        end = end.replace(tzinfo=UTC) if end.tzinfo is None else end
        if end <= start:
            problems.append(f"{where}: end must be after start")
            continue
        out.append(MaintenanceWindow(start, end, w.get("operation_name"), str(w.get("note", ""))))
    return tuple(out)


def _check_source_extras(source: dict[str, Any], problems: list[str]) -> None:
    """Validate Log Analytics keys with the source's own settings class (offline)."""
    from dataclasses import fields

    from detector.source.log_analytics import LogAnalyticsSettings

    la_keys = {f.name: f for f in fields(LogAnalyticsSettings)}
    for key in list(source):
        if key in SCHEMA["source"]:
            continue
        if key not in la_keys:
            problems.append(f"source.{key}: unknown key")
            source.pop(key)
        elif la_keys[key].type == "timedelta" and isinstance(source[key], str):
            try:
                source[key] = parse_duration(source[key])
            except ValueError as exc:
                problems.append(f"source.{key}: {exc}")
    if source.get("kind") == "log_analytics" and not any(
        p.startswith("source") and "workspace_id, resource_id" in p for p in problems
    ):
        try:
            LogAnalyticsSettings.from_config(source)
        except ConfigError as exc:
            problems.extend(exc.problems)
        except (TypeError, ValueError) as exc:
            problems.append(f"source: {exc}")


#: The [source] keys naming what Log Analytics queries (issue 22).
_LA_TARGETS = ("workspace_id", "resource_id", "additional_workspaces", "resource_ids")


#: [alerting] keys read by the lifecycle, delivery and self-health stages.
ALERTING_KEYS = frozenset(
    {
        "n_of_m",
        "recovery_evaluations",
        "send_resolved",
        "retention",
        "resolve_min_calls",
        "max_items_per_digest",
        "health_source_error_runs",
        "health_no_data_after",
        "health_outbox_items",
        "health_outbox_age",
        "health_repeat_interval",
        "silences",
    }
)


def _check_stage_keys(
    detection: dict[str, Any], alerting: dict[str, Any], problems: list[str]
) -> None:
    """Validate the engine's and the alerting stage's keys offline, with their own policies."""
    from detector.decide import DetectionPolicy
    from detector.lifecycle import LifecyclePolicy
    from detector.notify.commands import config_silences
    from detector.notify.health import HealthPolicy

    try:
        DetectionPolicy.from_mapping(dict(detection))
    except (TypeError, ValueError) as exc:
        problems.append(f"detection: {exc}")
    for key in alerting:
        if key not in SCHEMA["alerting"] and key not in ALERTING_KEYS:
            problems.append(f"alerting.{key}: unknown key")
    for build in (LifecyclePolicy.from_config, HealthPolicy.from_config, config_silences):
        try:
            build(alerting)
        except ConfigError as exc:
            problems.extend(exc.problems)
        except (TypeError, ValueError) as exc:
            problems.append(f"alerting: {exc}")


def config_from_dict(
    data: dict[str, Any], *, path: Path | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Validate an already-parsed TOML document. Raises ConfigError listing every problem."""
    problems: list[str] = []
    warnings: list[str] = []
    raw_notify = data.get("notify")
    data = _substitute(data, "", os.environ if env is None else env, problems)
    for key in data:
        if key not in (
            "source",
            "detection",
            "state",
            "alerting",
            "notify",
            "maintenance",
            "health",
        ):
            problems.append(f"{key}: unknown section")
    source = _check_section("source", data.get("source"), problems, passthrough=True)
    detection = _check_section("detection", data.get("detection"), problems, passthrough=True)
    state = _check_section("state", data.get("state"), problems)
    alerting = _check_section("alerting", data.get("alerting"), problems, passthrough=True)
    routes = _check_routes(data.get("notify"), problems, warnings, raw_notify)
    maintenance = _check_maintenance(data.get("maintenance"), problems)
    health = _check_health(data.get("health"), problems)
    if source.get("kind") == "log_analytics" and (
        (source.get("workspace_id") and source.get("resource_id"))
        or not any(source.get(k) for k in _LA_TARGETS)
    ):
        problems.append(
            "source: log_analytics needs exactly one of workspace_id, resource_id "
            "(more in additional_workspaces, resource_ids)"
        )
    _check_source_extras(source, problems)
    _check_stage_keys(detection, alerting, problems)
    if (
        isinstance(detection.get("bucket"), timedelta)
        and isinstance(detection.get("baseline"), timedelta)
        and detection["baseline"] < 4 * detection["bucket"]
    ):
        problems.append("detection.baseline: must cover at least 4 buckets")
    if problems:
        raise ConfigError(problems, path=str(path) if path else None)
    for w in warnings:
        log.warning("config: %s", w)
    return Config(
        path=path,
        source=source,
        detection=detection,
        state=state,
        alerting=alerting,
        routes=routes,
        maintenance=maintenance,
        raw=data,
        health=health,
        warnings=tuple(warnings),
    )


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load and validate a config file.

    ``path`` defaults to ``$ACS_DETECTOR_CONFIG`` or ``config/detector.toml``. Raises
    :class:`ConfigError` (exit 2) for a missing or unparseable file and for every invalid key.
    """
    p = Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", path=str(p)) from None
    return config_from_dict(data, path=p.resolve())
