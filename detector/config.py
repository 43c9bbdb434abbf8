"""Configuration: TOML in, a frozen validated :class:`Config` of typed settings out.

``load_config(path)`` parses the file with :mod:`tomllib`, substitutes ``${ENV_VAR}`` references
(``${VAR:-default}`` gives a default) and checks every key against its section's constraints
table (:data:`SCHEMA`, built from :mod:`detector.settings`), raising one
:class:`~detector.errors.ConfigError` that lists *every* problem with its full key
(alertmanager's ``config.Load``), so a user fixes them all in one go.

Each section becomes a typed settings object (:class:`SourceSettings`,
:class:`DetectionSettings`, :class:`StateSettings`, :class:`AlertingSettings`,
:class:`HealthSettings`, :class:`RouteConfig`); they also read as mappings (``cfg.source["kind"]``)
for stages that take a plain table. Defaults live in the tables, or, for keys marked
:data:`~detector.settings.POLICY`, in the policy class that consumes them (``DetectionPolicy``,
``LifecyclePolicy``, ``HealthPolicy``, ``LogAnalyticsSettings``).

Values that came from the environment are wrapped in :class:`Secret` and print as ``<secret>``;
``Config.redacted()`` and :func:`describe` are what ``acs-detector check-config`` prints.

Consumes a file path and the environment; produces a :class:`Config`. No other I/O.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

from detector.errors import ConfigError
from detector.settings import (
    POLICY,
    Boolean,
    BoolOrText,
    Bucket,
    Custom,
    Duration,
    Integer,
    IntList,
    KeyedError,
    Options,
    Param,
    Real,
    Text,
    check_table,
    defaults,
)
from detector.timeutil import format_duration, parse_duration, parse_time, utc

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from detector.detect.policy import DetectionPolicy
    from detector.lifecycle import LifecyclePolicy
    from detector.notify.health import HealthPolicy

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "RETIRED",
    "SCHEMA",
    "AlertingSettings",
    "Config",
    "DetectionSettings",
    "HealthSettings",
    "MaintenanceWindow",
    "RouteConfig",
    "Secret",
    "SourceSettings",
    "StateSettings",
    "alerting_settings",
    "config_from_dict",
    "describe",
    "format_duration",
    "load_config",
    "parse_duration",
    "parse_time",
    "redact_url",
    "retired_keys",
    "route_config",
]

DEFAULT_CONFIG_PATH = "config/detector.toml"
CONFIG_ENV = "ACS_DETECTOR_CONFIG"


class Secret(str):
    """A string that came from the environment: kept usable, printed as ``<secret>``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'<secret>'"


# --------------------------------------------------------------------------------------------
# Environment references
# --------------------------------------------------------------------------------------------

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _substitute(value: object, key: str, env: Mapping[str, str], problems: list[str]) -> object:
    """``value`` with every ``${VAR}`` replaced (recursively); unset variables are problems."""
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
# Constraints that only the config needs
# --------------------------------------------------------------------------------------------

_STRING = Text()
_POSITIVE = Duration()
_NON_NEGATIVE = Duration(lo_open=False, seconds_ok=True)
_SECONDS = Duration(seconds_ok=True, whole_seconds=True)
_COUNT = Integer(1)
_SHARE = Real(0, 1, closed="neither")
_Z = Real(0)


def _report_url(v: object) -> str | None:
    """A base URL (http or https, no query or fragment) the run reports are served under;
    empty (an unset ``${VAR:-}``) means none."""
    v = Text().check(v).strip()
    if not v:
        return None
    if not re.match(r"^https?://[^/?#\s]+[^?#\s]*$", v, re.I):
        # A query would be a SAS token: in every message, it would hand read access to the
        # state container (alert state, outbox) to everyone who sees an alert.
        raise ValueError("must be an http:// or https:// base URL without ?query or #fragment")
    return v.rstrip("/")


def _count_or_age(v: object) -> int | timedelta:
    """``keep_reports``: how many runs' reports to keep (>= 1), or for how long (``"14d"``)."""
    if isinstance(v, str | timedelta):
        return Duration().check(v)
    return Integer(1, 10_000_000).check(v)


def _n_of_m(v: object) -> str | tuple[int, int]:
    """``n_of_m``: ``"N/M"`` or ``[N, M]`` with 1 <= N <= M (kept as given for the lifecycle)."""
    parts = v.split("/") if isinstance(v, str) else v if isinstance(v, list | tuple) else None
    if parts is None or len(parts) != 2:
        raise ValueError(f"expected 'N/M' or [N, M], got {v!r}")
    n, m = (Integer(1).check(x.strip() if isinstance(x, str) else x) for x in parts)
    if n > m:
        raise ValueError(f"need 1 <= N <= M, got {n}/{m}")
    return v if isinstance(v, str) else (n, m)


def _tables(v: object) -> tuple[Mapping[str, object], ...]:
    """An array of tables (``[[alerting.silences]]``); their keys are checked by their owner."""
    if not isinstance(v, list | tuple) or not all(isinstance(x, Mapping) for x in v):
        raise ValueError("must be an array of tables")
    return tuple(v)


def _strings(v: object) -> tuple[str, ...]:
    """A list of strings (a single string is a list of one)."""
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list | tuple) or not all(isinstance(x, str) for x in items):
        raise ValueError(f"must be a list of strings, got {v!r}")
    return tuple(items)


def _string_list(v: object) -> tuple[str, ...]:
    """A list of strings (a single string is refused: these keys name several targets)."""
    if not isinstance(v, list | tuple) or not all(isinstance(x, str) for x in v):
        raise ValueError(f"must be a list of strings, got {v!r}")
    return tuple(v)


def _workspaces(v: object) -> str | tuple[str, ...]:
    """``workspace_id``: one id, or a list (the first is the main one)."""
    return _string_list(v) if isinstance(v, list | tuple) else Text().check(v)


def _metrics(v: object) -> tuple[str, ...]:
    out = _strings(v)
    if not all(m in ("duration", "failure_rate", "volume") for m in out):
        raise ValueError("must be a list of duration, failure_rate, volume")
    return out


def _http_urls(v: object) -> tuple[str, ...]:
    """http(s) URLs; empty values (an unset ``${VAR:-}``) are dropped, as in routes."""
    urls = [u.strip() for u in _strings(v) if u.strip()]
    for i, u in enumerate(urls):
        if not re.match(r"^https?://[^/?#\s]+", u, re.I):
            raise KeyedError(f"[{i}]", "must be an http:// or https:// URL")
    return tuple(urls)


def _heartbeat_timeout(v: object) -> timedelta:
    td = _POSITIVE.check(v)
    if td > timedelta(seconds=60):
        raise ValueError("must be at most 60s (a ping must not hold up the next run)")
    return td


def _time(v: object) -> datetime:
    """A maintenance window's start or end: ISO-8601 text or a TOML datetime, in UTC."""
    if isinstance(v, datetime):
        return utc(v)
    if not isinstance(v, str):
        raise ValueError(f"must be an ISO-8601 time, got {v!r}")
    return parse_time(v)


def _credential(v: object) -> str:
    v = Text().check(v)
    if v in ("default", "managed_identity", "azure_cli") or re.fullmatch(r"env:[A-Za-z_]\w*", v):
        return v
    raise ValueError(
        "must be 'default', 'managed_identity', 'azure_cli' or 'env:NAME', got " + repr(v)
    )


# --------------------------------------------------------------------------------------------
# The tables: section -> key -> Param(default, constraint). POLICY = the consumer's default.
# --------------------------------------------------------------------------------------------

SOURCE: dict[str, Param] = {
    "kind": Param("file", Options(("file", "log_analytics"))),
    "path": Param("data/demo", _STRING),
    "workspace_id": Param(
        None, Custom(_workspaces, "a workspace id or a list of them", (3, [1])), nullable=True
    ),
    "resource_id": Param(None, _STRING, nullable=True),
    # More workspaces / ACS resources, one query each; each ACS resource that writes to them
    # is judged on its own baseline (split_resources).
    "additional_workspaces": Param((), Custom(_string_list, "a list of workspace ids", (3, "w"))),
    "resource_ids": Param((), Custom(_string_list, "a list of resource ids", (3, "r"))),
    "split_resources": Param(True, Boolean()),
    "endpoint": Param("https://api.loganalytics.io", _STRING),
    "audience": Param(None, _STRING, nullable=True),
    "connection_verify": Param(True, BoolOrText()),
    "credential": Param(
        "default", Custom(_credential, "'default', 'managed_identity', ...", ("password", 3))
    ),
    "threads": Param(None, Integer(1, 256), nullable=True),  # DuckDB threads, file source
    "memory_limit": Param("640MB", _STRING),  # DuckDB's limit for the file source (spills beyond)
    # Partitions (operation, SDK version) one read models, busiest first; the rest are
    # counted as dropped (partition_cap), so junk operation names cannot drive memory.
    "max_partitions": Param(5000, Integer(1, 1_000_000)),
    # Log Analytics keys: defaults and exact limits in source.log_analytics.LogAnalyticsSettings.
    "table": Param(POLICY, _STRING),
    "arrival": Param(POLICY, _STRING),
    "overlap": Param(POLICY, _NON_NEGATIVE),
    "dedup_lookback": Param(POLICY, _NON_NEGATIVE),
    "server_timeout": Param(POLICY, _COUNT),
    "read_timeout": Param(POLICY, Real(0, closed="neither"), nullable=True),
    "max_rows_per_chunk": Param(POLICY, _COUNT),
    "max_bytes_per_chunk": Param(POLICY, _COUNT),
    "max_scan_rows_per_chunk": Param(POLICY, _COUNT),
    "plan_step": Param(POLICY, _SECONDS),
    "plan_threshold": Param(POLICY, _SECONDS),
    "min_chunk": Param(POLICY, _SECONDS),
    "max_attempts": Param(POLICY, _COUNT),
    "retry_budget": Param(POLICY, Real(0)),
    "backoff_base": Param(POLICY, Real(0)),
    "backoff_max": Param(POLICY, Real(0)),
    "drill_lateness": Param(POLICY, _NON_NEGATIVE),
    "top_codes": Param(POLICY, _COUNT),
    "example_calls": Param(POLICY, _COUNT),
}

#: Settings that existed and were removed: a config that still sets one loads, with a warning
#: saying why it is ignored (section -> key -> why).
RETIRED: dict[str, dict[str, str]] = {
    "detection": {
        "recent_z": "each third of a span needs only the practical minimum now; "
        "docs/decisions.md, fewer rules, a second pass",
    },
}

#: [detection]: the pipeline's own keys, then every DetectionPolicy knob (defaults there).
DETECTION: dict[str, Param] = {
    "delay": Param("10m", _POSITIVE),  # scheduled window ends at now - delay
    "lateness": Param("6h", _POSITIVE),  # late rows still merged into buckets this old
    "max_window": Param("1d", _POSITIVE),  # first scheduled run judges at most this much
    "step": Param("1h", _POSITIVE),  # every window is judged in steps of this
    "max_catchup": Param("30d", _POSITIVE),  # after downtime, judge at most this much (warns)
    # --- buckets and baselines
    "bucket": Param(POLICY, Bucket()),
    "baseline": Param(POLICY, _POSITIVE),
    "min_history": Param(POLICY, _POSITIVE),
    "seasonal_min_days": Param(POLICY, Real(0)),
    "weekly_min_days": Param(POLICY, Real(0)),
    "slot_prior_calls": Param(POLICY, Real(0)),
    "cold_start_k": Param(POLICY, Real(0)),
    "provisional_weight": Param(POLICY, Real(0, 1)),
    "suspect_horizon": Param(POLICY, _POSITIVE),
    "suspect_factor": Param(POLICY, Real(0)),
    "max_dispersion": Param(POLICY, Real(1)),
    # --- tests
    "spans": Param(POLICY, IntList(1)),
    "alpha": Param(POLICY, _SHARE),
    "rollout_alpha_share": Param(POLICY, _SHARE),
    "duration_p_factor": Param(POLICY, Real(1)),
    "loo_z": Param(POLICY, _Z),
    "peer_z": Param(POLICY, _Z),
    "shared_z": Param(POLICY, _Z),
    "latest_z": Param(POLICY, _Z),
    "latest_span": Param(POLICY, _COUNT),
    "latest_share": Param(POLICY, Real(0, 1)),
    "attribution_lookback": Param(POLICY, _COUNT),
    "third_support": Param(POLICY, Real(0, 1)),
    "third_volume_share": Param(POLICY, Real(0, 1, closed="right")),
    "forest_prefilter_z": Param(POLICY, _Z),
    # --- practical significance
    "min_duration_rel": Param(POLICY, Real(0)),
    "min_duration_ms": Param(POLICY, Real(0)),
    "min_failure_points": Param(POLICY, Real(0, 1)),
    "min_volume_drop": Param(POLICY, Real(0, 1, closed="right")),
    "min_volume_rise": Param(POLICY, Real(0, closed="neither")),
    "volume_direction": Param(POLICY, Options(("drop", "rise", "both"))),
    "critical_factor": Param(POLICY, Real(1)),
    # --- volume
    "min_calls": Param(POLICY, _COUNT),
    "min_failures": Param(POLICY, _COUNT),
    "min_share": Param(POLICY, Real(0, 1)),
    "min_expected_calls": Param(POLICY, Real(0, closed="neither")),
    "volume_scope": Param(POLICY, Options(("fleet", "all"))),
    # --- persistence
    "persist_n": Param(POLICY, _COUNT),
    "persist_m": Param(POLICY, _COUNT),
    # --- forest
    "n_estimators": Param(POLICY, _COUNT),
    "max_samples": Param(POLICY, Integer(2)),
    "contamination": Param(POLICY, Real(0, 0.5, closed="neither")),
    "max_train_rows": Param(POLICY, _COUNT),
    "refit_every": Param(POLICY, _POSITIVE),
    "seed": Param(POLICY, Integer(0, 2**31 - 1)),
    "tail": Param(POLICY, Boolean()),
    # --- short history and tenant-wide stop
    "short_history": Param(POLICY, Boolean()),
    "history_floor": Param(POLICY, _POSITIVE),
    "short_history_alpha": Param(POLICY, Real(0, 1, closed="right")),
    "tenant_stop": Param(POLICY, Boolean()),
    "stop_share": Param(POLICY, Real(0, 1, closed="left")),
    "stop_buckets": Param(POLICY, _COUNT),
    "stop_recovery": Param(POLICY, _NON_NEGATIVE),
    # --- sequential evidence
    "sequential": Param(POLICY, Options(("off", "failures", "both"))),
    "sequential_fold": Param(POLICY, Real(1, closed="neither")),
    "sequential_false_alerts_per_day": Param(POLICY, Real(0, closed="neither")),
    # --- forest vote
    "forest": Param(POLICY, Boolean()),
    "forest_min_share": Param(POLICY, Real(0, 1, closed="right")),
    # --- calibration on the tenant's own history
    "calibrate": Param(POLICY, Boolean()),
    "false_alerts_per_day": Param(POLICY, Real(0, closed="neither")),
    "calibration_min_hours": Param(POLICY, Integer(1)),
}

STATE: dict[str, Param] = {
    "path": Param(".acs-detector", _STRING),
    "models": Param("models", _STRING),
    "url": Param(None, _STRING, nullable=True),  # blob://account/container/prefix (Functions)
}

#: [alerting]: digest, outbox and report keys, then the lifecycle's and self-health's knobs.
ALERTING: dict[str, Param] = {
    "max_items": Param(10, Integer(1, 1000)),  # alerts per digest before "+k more"
    "max_items_per_digest": Param(None, Integer(1, 1000), nullable=True),  # old max_items
    "outbox_max_age": Param("2d", _POSITIVE),
    # Where people open the run reports (reports/run-*.html): messages link there.
    "report_url": Param(
        None,
        Custom(_report_url, "an http(s) base URL", ("ftp://x", "https://h/r?sig=1")),
        nullable=True,
    ),
    # Run reports kept in <state>/reports: a count of runs, or an age ("14d").
    "keep_reports": Param(
        500, Custom(_count_or_age, "a count >= 1 or a duration", (0, "soon", 2.5))
    ),
    "resolve_min_calls": Param(50, Integer(0)),  # calls a clean window needs to count as clean
    "silences": Param((), Custom(_tables, "an array of tables", ("x", [1])), nullable=True),
    # lifecycle.LifecyclePolicy
    "n_of_m": Param(
        POLICY, Custom(_n_of_m, "'N/M' or [N, M] with 1 <= N <= M", ("7/2", "x", [0, 1]))
    ),
    "recovery_evaluations": Param(POLICY, _COUNT),
    "resolve_after": Param(POLICY, Duration(lo_open=False)),
    "repeat_interval": Param(POLICY, _POSITIVE),
    "send_resolved": Param(POLICY, Boolean()),
    "retention": Param(POLICY, _POSITIVE),
    # notify.health.HealthPolicy
    "health_source_error_runs": Param(POLICY, _COUNT),
    "health_no_data_after": Param(POLICY, _POSITIVE),
    "health_outbox_items": Param(POLICY, _COUNT),
    "health_outbox_age": Param(POLICY, _POSITIVE),
    "health_repeat_interval": Param(POLICY, _POSITIVE),
}

HEALTH: dict[str, Param] = {
    "heartbeat_urls": Param(
        (), Custom(_http_urls, "a list of http(s) URLs", (["file:///etc/passwd"], 5))
    ),
    "heartbeat_timeout": Param(
        "10s", Custom(_heartbeat_timeout, "a duration up to 60s", ("5m", "soon"))
    ),
}

ROUTE: dict[str, Param] = {
    "name": Param(None, Text(r"(?s).+", "a non-empty string (required)")),
    "urls": Param((), Custom(_strings, "a list of apprise URLs", (5, [1]))),
    "min_severity": Param("warning", Options(("info", "warning", "critical"))),
    "operations": Param((), Custom(_strings, "a list of operation names (globs)", (5, [1]))),
    "metrics": Param(
        (), Custom(_metrics, "a list of duration, failure_rate, volume", (["latency"], 5))
    ),
    "send_resolved": Param(True, Boolean()),
    "health": Param(True, Boolean()),  # also receives self-health notices
    "max_items": Param(None, _COUNT, nullable=True),  # digest size (default alerting.max_items)
    "timeout": Param(None, Real(0, 600, closed="right"), nullable=True),  # seconds (default 15)
}

MAINTENANCE: dict[str, Param] = {
    "start": Param(None, Custom(_time, "an ISO-8601 time (required)", ("yesterday", 5))),
    "end": Param(None, Custom(_time, "an ISO-8601 time (required)", ("yesterday", 5))),
    "operation_name": Param(None, _STRING, nullable=True),  # None: every operation
    "note": Param("", _STRING),
}

#: Every table, by section (``notify.route`` and ``maintenance`` hold arrays of tables).
SCHEMA: dict[str, dict[str, Param]] = {
    "source": SOURCE,
    "detection": DETECTION,
    "state": STATE,
    "alerting": ALERTING,
    "health": HEALTH,
    "notify.route": ROUTE,
    "maintenance": MAINTENANCE,
}


# --------------------------------------------------------------------------------------------
# The typed settings
# --------------------------------------------------------------------------------------------


_S = TypeVar("_S", bound="_Section")


@dataclass(frozen=True, kw_only=True)
class _Section(Mapping[str, Any]):
    """A validated section: typed attributes, plus a read-only mapping view of its effective
    values for stages that take a plain table (``cfg.source["kind"]``).

    ``extra`` holds the keys given for the section's policy (:data:`POLICY` defaults).
    """

    extra: Mapping[str, object] = field(default_factory=dict)

    def _view(self) -> dict[str, object]:
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**own, **self.extra}

    def __getitem__(self, key: str) -> Any:
        return self._view()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._view())

    def __len__(self) -> int:
        return len(self._view())

    @classmethod
    def from_values(cls, values: Mapping[str, object]) -> Self:
        """Build from checked values: the class's fields by name, every other key in ``extra``."""
        names = {f.name for f in fields(cls)} - {"extra"}
        # Checked against the section's table, whose constraints give each field its type.
        own: dict[str, Any] = {k: v for k, v in values.items() if k in names}
        return cls(**own, extra={k: v for k, v in values.items() if k not in names})


@dataclass(frozen=True, kw_only=True)
class SourceSettings(_Section):
    """``[source]``: where the calls are read (file or Log Analytics) and the reader's bounds."""

    kind: str
    path: str
    workspace_id: str | tuple[str, ...] | None
    resource_id: str | None
    additional_workspaces: tuple[str, ...]
    resource_ids: tuple[str, ...]
    split_resources: bool
    endpoint: str
    audience: str | None
    connection_verify: bool | str
    credential: str
    threads: int | None
    memory_limit: str
    max_partitions: int


@dataclass(frozen=True, kw_only=True)
class DetectionSettings(_Section):
    """``[detection]``: the pipeline's window keys plus the engine's :class:`DetectionPolicy`.

    The mapping view holds every key with its effective value, the policy's included.
    """

    delay: timedelta
    lateness: timedelta
    max_window: timedelta
    step: timedelta
    max_catchup: timedelta

    @cached_property
    def policy(self) -> DetectionPolicy:
        """The engine's knobs (given keys over the policy's defaults)."""
        from detector.detect.policy import DetectionPolicy

        return DetectionPolicy.from_mapping(dict(self.extra))

    @property
    def bucket(self) -> timedelta:
        return self.policy.bucket

    @property
    def baseline(self) -> timedelta:
        return self.policy.baseline

    def _view(self) -> dict[str, object]:
        policy = {f.name: getattr(self.policy, f.name) for f in fields(self.policy)}
        return {**super()._view(), **policy}


@dataclass(frozen=True, kw_only=True)
class StateSettings(_Section):
    """``[state]``: the embedded store directory, the models directory, or a blob URL."""

    path: str
    models: str
    url: str | None


@dataclass(frozen=True, kw_only=True)
class AlertingSettings(_Section):
    """``[alerting]``: digest, outbox and report keys; the lifecycle's and self-health's knobs
    (``extra``) become :attr:`lifecycle` and :attr:`health`."""

    max_items: int
    max_items_per_digest: int | None
    outbox_max_age: timedelta
    report_url: str | None
    keep_reports: int | timedelta
    resolve_min_calls: int
    silences: tuple[Mapping[str, object], ...] | None

    @cached_property
    def lifecycle(self) -> LifecyclePolicy:
        from detector.lifecycle import LifecyclePolicy

        return LifecyclePolicy.from_config(self.extra)

    @cached_property
    def health(self) -> HealthPolicy:
        from detector.notify.health import HealthPolicy

        return HealthPolicy.from_config(self.extra)


@dataclass(frozen=True, kw_only=True)
class HealthSettings(_Section):
    """``[health]``: heartbeat URLs pinged after every run and how long a ping may take."""

    heartbeat_urls: tuple[str, ...]
    heartbeat_timeout: timedelta


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


def _build(cls: type[_S], name: str, given: Mapping[str, object] | None) -> _S:
    """A section built from a plain table; raises ConfigError listing every problem."""
    if isinstance(given, cls):
        return given
    checked = check_table(name, SCHEMA[name], given)
    problems = checked.problems + [f"{name}.{k}: unknown key" for k in checked.unknown]
    if problems:
        raise ConfigError(problems)
    return cls.from_values(_aliases(name, checked.values, given or {}))


def _aliases(
    name: str, values: dict[str, object], given: Mapping[str, object]
) -> dict[str, object]:
    """``alerting.max_items_per_digest`` is the older name of ``max_items``."""
    if name == "alerting" and "max_items" not in given and values.get("max_items_per_digest"):
        return {**values, "max_items": values["max_items_per_digest"]}
    return values


def alerting_settings(alerting: Mapping[str, object] | None) -> AlertingSettings:
    """``[alerting]`` as :class:`AlertingSettings` (a plain table is checked and defaulted;
    keys other stages own are ignored). Raises ConfigError listing every problem."""
    if isinstance(alerting, AlertingSettings):
        return alerting
    known = {k: v for k, v in (alerting or {}).items() if k in ALERTING}
    return _build(AlertingSettings, "alerting", known)


# --------------------------------------------------------------------------------------------
# The configuration
# --------------------------------------------------------------------------------------------

_SECTION_TYPES: dict[str, type[_Section]] = {
    "source": SourceSettings,
    "detection": DetectionSettings,
    "state": StateSettings,
    "alerting": AlertingSettings,
    "health": HealthSettings,
}


@dataclass(frozen=True)
class Config:
    """The validated configuration: one typed settings object per section, the routes and
    maintenance windows; ``raw`` keeps the substituted TOML."""

    path: Path | None
    source: SourceSettings
    detection: DetectionSettings
    state: StateSettings
    alerting: AlertingSettings
    routes: tuple[RouteConfig, ...] = ()
    maintenance: tuple[MaintenanceWindow, ...] = ()
    raw: dict[str, object] = field(default_factory=dict, repr=False)
    health: HealthSettings = field(default_factory=lambda: _build(HealthSettings, "health", {}))
    #: Problems that do not stop the job (a route whose every URL is an empty ${VAR:-}).
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # A section replaced by a plain table (dataclasses.replace(cfg, detection={...})) is
        # checked like the file's, so a Config never holds an unchecked value.
        for name, cls in _SECTION_TYPES.items():
            value = getattr(self, name)
            if not isinstance(value, cls):
                object.__setattr__(self, name, _build(cls, name, value))

    def updated(self, section: str, **values: object) -> Config:
        """A copy with ``values`` set in ``section`` (checked; raises ConfigError)."""
        current = getattr(self, section)
        return replace(self, **{section: _build(type(current), section, {**current, **values})})

    @property
    def state_path(self) -> Path:
        """The embedded store directory, relative to the config file's project root."""
        return self._resolve(self.state.path)

    @property
    def models_path(self) -> Path:
        """The models directory, resolved like :attr:`state_path`."""
        return self._resolve(self.state.models)

    def source_path(self) -> str:
        """The file source path (a file, directory or glob), resolved like the state path."""
        return str(self._resolve(self.source.path))

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

    def redacted(self) -> dict[str, object]:
        """The effective config with every secret hidden (for ``check-config``)."""

        def durations(section: Mapping[str, object]) -> dict[str, object]:
            return {
                k: (format_duration(v) if isinstance(v, timedelta) else v)
                for k, v in section.items()
            }

        out = _redact(
            {
                "source": durations(self.source),
                "detection": durations(self.detection),
                "state": dict(self.state),
                "alerting": durations(self.alerting),
                "notify": {"route": [_route_dict(r) for r in self.routes]},
                "health": {
                    # A heartbeat URL's path is the check's secret, wherever it came from.
                    "heartbeat_urls": [redact_url(u) for u in self.health.heartbeat_urls],
                    "heartbeat_timeout": format_duration(self.health.heartbeat_timeout),
                },
                "maintenance": [_window_dict(w) for w in self.maintenance],
            }
        )
        assert isinstance(out, dict)  # _redact keeps a dict a dict
        return out


def _route_dict(r: RouteConfig) -> dict[str, object]:
    return {
        "name": r.name,
        "urls": list(r.urls),
        "min_severity": r.min_severity,
        "operations": list(r.operations),
        "metrics": list(r.metrics),
        "send_resolved": r.send_resolved,
        "health": r.health,
        "max_items": r.max_items,
    }


def _window_dict(w: MaintenanceWindow) -> dict[str, object]:
    return {
        "start": w.start.isoformat(),
        "end": w.end.isoformat(),
        "operation_name": w.operation_name,
        "note": w.note,
    }


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


def _redact(value: object, key: str = "") -> object:
    """``value`` with secrets hidden: Secrets, notification URLs, URL credentials."""
    if isinstance(value, Secret):
        return "<secret>"
    if isinstance(value, Mapping):
        return {k: _redact(v, k) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v, key) for v in value]
    # A notification URL carries its token in the user, host or path part even when it has
    # no "@" or "?" (slack://xoxb-..., json://host/hook/TOKEN): shown as status, reports and
    # logs show it (send.display_url), never in clear.
    if isinstance(value, str) and key == "urls":
        from detector.notify.send import display_url

        return display_url(value)
    if isinstance(value, str) and key == "heartbeat_urls":
        return redact_url(value)
    if isinstance(value, str) and "://" in value:
        return redact_url(value) if "@" in value or "?" in value else value
    return value


# --------------------------------------------------------------------------------------------
# check-config: every setting with its effective value
# --------------------------------------------------------------------------------------------

#: [alerting] keys of the self-health checks -> HealthPolicy attributes.
_HEALTH_ATTRS: dict[str, str] = {
    "health_source_error_runs": "source_error_runs",
    "health_no_data_after": "no_data_after",
    "health_outbox_items": "outbox_warn_items",
    "health_outbox_age": "outbox_warn_age",
    "health_repeat_interval": "repeat_interval",
}


def describe(cfg: Config) -> list[tuple[str, str]]:
    """Every setting as ``(full key, effective value)``, secrets hidden, in table order.

    Keys left to a policy's default show that default (read from the policy class).
    """
    rows = _rows("source", cfg.source, _source_defaults())
    rows += _rows("detection", cfg.detection, {})
    rows += _rows("state", cfg.state, {})
    rows += _rows("alerting", cfg.alerting, _alerting_effective(cfg.alerting))
    rows += _rows("health", cfg.health, {})
    for i, r in enumerate(cfg.routes):
        rows += _rows(f"notify.route[{i}]", _route_dict(r) | {"timeout": r.timeout}, {})
    for i, w in enumerate(cfg.maintenance):
        rows += _rows(f"maintenance[{i}]", _window_dict(w), {})
    return rows


def _rows(
    section: str, values: Mapping[str, object], fallback: Mapping[str, object]
) -> list[tuple[str, str]]:
    effective = {**fallback, **values}
    table = SCHEMA.get(section.split("[")[0], {})
    keys = [k for k in table if k in effective] + [k for k in effective if k not in table]
    return [(f"{section}.{k}", _show(_redact(effective[k], k))) for k in keys]


def _show(value: object) -> str:
    """A value as TOML-like text (durations as ``5m``)."""
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _source_defaults() -> dict[str, object]:
    """The Log Analytics keys' defaults, from the settings class that owns them."""
    from detector.source.log_analytics import LogAnalyticsSettings

    return {k: v for k, v in _field_defaults(LogAnalyticsSettings).items() if k in SOURCE}


def _field_defaults(cls: type[DataclassInstance]) -> dict[str, object]:
    out: dict[str, object] = {}
    for f in fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out


def _alerting_effective(alerting: AlertingSettings) -> dict[str, object]:
    """The lifecycle's and self-health's effective values under their ``[alerting]`` keys."""
    life, health = alerting.lifecycle, alerting.health
    out: dict[str, object] = {"n_of_m": f"{life.n}/{life.m}"}
    for key in ("recovery_evaluations", "resolve_after", "repeat_interval", "send_resolved"):
        out[key] = getattr(life, key)
    out["retention"] = life.retention
    out.update({key: getattr(health, attr) for key, attr in _HEALTH_ATTRS.items()})
    return out


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

_TOP_LEVEL = ("source", "detection", "state", "alerting", "notify", "maintenance", "health")


def retired_keys(name: str, given: Mapping[str, object]) -> tuple[dict[str, object], list[str]]:
    """A section's table -> (the table without its retired keys, a warning per key dropped)."""
    retired = RETIRED.get(name, {})
    kept = {k: v for k, v in given.items() if k not in retired}
    why = [
        f"{name}.{k}: no longer used, ignored ({retired[k]}); remove it"
        for k in given
        if k in retired
    ]
    return kept, why


def _check_section(name: str, given: object, problems: list[str]) -> dict[str, object]:
    """One section's checked values (defaults filled); its problems appended to ``problems``."""
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        problems.append(f"{name}: must be a table")
        given = {}
    checked = check_table(name, SCHEMA[name], given)
    problems.extend(checked.problems)
    problems.extend(f"{name}.{key}: unknown key" for key in checked.unknown)
    return _aliases(name, checked.values, given)


def _check_routes(
    notify: object, problems: list[str], warnings: list[str], raw_notify: object
) -> tuple[RouteConfig, ...]:
    """Routes from ``[[notify.route]]``; every URL is checked with apprise's own parser.

    ``raw_notify`` is the table before ``${VAR}`` substitution: a route left with no URL is a
    problem, unless every URL it lists was an empty ``${VAR:-}`` (a route switched off by
    its environment), which is a warning.
    """
    if notify is None:
        return ()
    if not isinstance(notify, Mapping):
        problems.append("notify: must be a table")
        return ()
    problems.extend(f"notify.{key}: unknown key" for key in notify if key != "route")
    routes = notify.get("route", [])
    if not isinstance(routes, list):
        problems.append("notify.route: must be an array of tables ([[notify.route]])")
        return ()
    raw_routes = raw_notify.get("route") if isinstance(raw_notify, Mapping) else None
    out: list[RouteConfig] = []
    for i, given in enumerate(routes):
        route = _check_route(i, given, problems, warnings, _raw_urls(raw_routes, i))
        if route is None:
            continue
        if any(r.name == route.name for r in out):
            problems.append(f"notify.route[{i}].name: duplicate route name {route.name!r}")
        out.append(route)
    return tuple(out)


def _check_route(
    i: int, given: object, problems: list[str], warnings: list[str], raw_urls: list[object]
) -> RouteConfig | None:
    """One ``[[notify.route]]`` table as a RouteConfig (None if it is not a table)."""
    where = f"notify.route[{i}]"
    if not isinstance(given, Mapping):
        problems.append(f"{where}: must be a table")
        return None
    checked = check_table(where, ROUTE, given)
    problems.extend(checked.problems)
    problems.extend(f"{where}.{key}: unknown key" for key in checked.unknown)
    # A bad key costs that key: the route is still built (from defaults) to check the rest.
    v: dict[str, Any] = {**defaults(ROUTE), **checked.values}
    name = str(v.get("name") or f"route{i}")  # required: a problem above if missing
    urls = _route_urls(where, name, v["urls"], problems, warnings, raw_urls)
    return _route_of(v, name, urls)


def _route_of(v: Mapping[str, Any], name: str, urls: tuple[str, ...]) -> RouteConfig:
    """A RouteConfig from a route table's checked values, its name and its usable URLs."""
    return RouteConfig(
        name,
        urls,
        v["min_severity"],
        v["operations"],
        v["metrics"],
        send_resolved=v["send_resolved"],
        health=v["health"],
        max_items=v["max_items"],
        timeout=v["timeout"],
    )


def route_config(table: Mapping[str, object]) -> RouteConfig:
    """One route table (as a test or a caller writes it) checked and defaulted by
    :data:`ROUTE`; the URLs are kept as given (apprise checks them at load, :func:`load_config`).
    Raises ConfigError listing every problem."""
    checked = check_table("notify.route", ROUTE, table)
    problems = checked.problems + [f"notify.route.{k}: unknown key" for k in checked.unknown]
    if problems:
        raise ConfigError(problems)
    v: dict[str, Any] = checked.values
    return _route_of(v, v["name"], tuple(u for u in v["urls"] if u.strip()))


def _route_urls(
    where: str,
    name: str,
    listed: tuple[str, ...],
    problems: list[str],
    warnings: list[str],
    raw_urls: list[object],
) -> tuple[str, ...]:
    """The route's non-empty URLs, each checked by apprise; an empty ``${VAR:-}`` drops one."""
    kept = [(j, u) for j, u in enumerate(listed) if u.strip()]
    for j, u in kept:
        if "://" not in u:
            problems.append(f"{where}.urls[{j}]: not a URL (expected scheme://...)")
        elif bad := _apprise_problem(u):
            problems.append(f"{where}.urls[{j}] ({name}): {bad}")
    if not kept:
        all_env = bool(raw_urls) and all(
            isinstance(u, str) and _ENV_RE.fullmatch(u.strip()) is not None for u in raw_urls
        )
        if listed and all_env:
            warnings.append(
                f"{where} ({name}): every URL is an empty ${{VAR:-}}; this route sends nothing"
            )
        elif not listed or not any("${" in str(x) for x in raw_urls):
            problems.append(f"{where}.urls ({name}): no URL; a route needs an apprise URL")
    return tuple(u for _, u in kept)


def _raw_urls(raw_routes: object, i: int) -> list[object]:
    """The URLs route ``i`` listed before ``${VAR}`` substitution ([] if unknown)."""
    if not isinstance(raw_routes, list) or i >= len(raw_routes):
        return []
    r = raw_routes[i]
    urls = r.get("urls", []) if isinstance(r, Mapping) else []
    return [urls] if isinstance(urls, str) else list(urls) if isinstance(urls, list) else []


def _apprise_problem(url: str) -> str | None:
    """apprise's verdict on one URL (None if it accepts it); the message holds no secret."""
    # Imported here: apprise is only needed when a route lists a URL.
    from detector.notify.send import validate_url

    return validate_url(url)


def _check_maintenance(windows: object, problems: list[str]) -> tuple[MaintenanceWindow, ...]:
    """``[[maintenance]]`` windows; each needs a start before its end."""
    if windows is None:
        return ()
    if not isinstance(windows, list):
        problems.append("maintenance: must be an array of tables ([[maintenance]])")
        return ()
    out = []
    for i, w in enumerate(windows):
        where = f"maintenance[{i}]"
        if not isinstance(w, Mapping):
            problems.append(f"{where}: must be a table")
            continue
        checked = check_table(where, MAINTENANCE, w)
        problems.extend(checked.problems)
        problems.extend(f"{where}.{key}: unknown key" for key in checked.unknown)
        v: dict[str, Any] = checked.values
        if checked.problems:
            continue
        if v["end"] <= v["start"]:
            problems.append(f"{where}: end must be after start")
            continue
        out.append(MaintenanceWindow(v["start"], v["end"], v["operation_name"], v["note"]))
    return tuple(out)


#: The [source] keys naming what Log Analytics queries.
_LA_TARGETS = ("workspace_id", "resource_id", "additional_workspaces", "resource_ids")


def _check_source(source: dict[str, object], problems: list[str]) -> None:
    """A Log Analytics source: exactly one target, then its settings class's own limits."""
    if source.get("kind") != "log_analytics":
        return
    if (source.get("workspace_id") and source.get("resource_id")) or not any(
        source.get(k) for k in _LA_TARGETS
    ):
        problems.append(
            "source: log_analytics needs exactly one of workspace_id, resource_id "
            "(more in additional_workspaces, resource_ids)"
        )
        return
    from detector.source.log_analytics import LogAnalyticsSettings

    try:
        LogAnalyticsSettings.from_config(source)
    except ConfigError as exc:
        problems.extend(exc.problems)


def _check_policies(
    detection: dict[str, object], alerting: dict[str, object], problems: list[str]
) -> None:
    """Cross-key rules the engine's and the alerting stage's policies own (N <= M, ...)."""
    from detector.detect.policy import DetectionPolicy
    from detector.lifecycle import LifecyclePolicy
    from detector.notify.commands import config_silences
    from detector.notify.health import HealthPolicy

    try:
        DetectionPolicy.from_mapping({k: v for k, v in detection.items() if k not in SCHEMA_OWN})
    except ValueError as exc:
        problems.extend(
            p if p.startswith("detection.") else f"detection.{p}" for p in str(exc).split("; ")
        )
    for build in (LifecyclePolicy.from_config, HealthPolicy.from_config, config_silences):
        try:
            build(alerting)
        except ConfigError as exc:
            problems.extend(exc.problems)


#: [detection] keys the pipeline reads itself (the rest are DetectionPolicy's).
SCHEMA_OWN = frozenset(f.name for f in fields(DetectionSettings)) - {"extra"}


def config_from_dict(
    data: Mapping[str, object],
    *,
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Validate an already-parsed TOML document. Raises ConfigError listing every problem."""
    problems: list[str] = []
    warnings: list[str] = []
    given = dict(data)
    for name in RETIRED:  # before substitution: a retired key's value is never read
        if isinstance(table := given.get(name), Mapping):
            given[name], dropped = retired_keys(name, table)
            warnings.extend(dropped)
    substituted = _substitute(given, "", os.environ if env is None else env, problems)
    doc: dict[str, object] = substituted if isinstance(substituted, dict) else {}
    problems.extend(f"{key}: unknown section" for key in doc if key not in _TOP_LEVEL)
    values = {name: _check_section(name, doc.get(name), problems) for name in _SECTION_TYPES}
    routes = _check_routes(doc.get("notify"), problems, warnings, data.get("notify"))
    maintenance = _check_maintenance(doc.get("maintenance"), problems)
    _check_source(values["source"], problems)
    if not any(p.startswith(("detection", "alerting")) for p in problems):
        _check_policies(values["detection"], values["alerting"], problems)
    if problems:
        raise ConfigError(problems, path=str(path) if path else None)
    for w in warnings:
        log.warning("config: %s", w)
    return Config(
        path=path,
        source=SourceSettings.from_values(values["source"]),
        detection=DetectionSettings.from_values(values["detection"]),
        state=StateSettings.from_values(values["state"]),
        alerting=AlertingSettings.from_values(values["alerting"]),
        routes=routes,
        maintenance=maintenance,
        raw=doc,
        health=HealthSettings.from_values(values["health"]),
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
