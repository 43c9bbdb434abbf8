"""Alert lifecycle: from the gated anomalies of one judged window to notification decisions.

Consumes the :class:`~detector.anomaly.Anomaly` records the engine emitted for a window, the set
of fingerprints it *evaluated* (so "evaluated and clean" can be told from "no data"), the
previous :class:`AlertState`, the active silences and acknowledgements, a
:class:`LifecyclePolicy` and ``now``. Produces one :class:`Decision` per fingerprint that has
something to say, and the next :class:`AlertState`. Pure: no I/O, no clock.

Modelled on Alertmanager's ``DedupStage.needsUpdate``: every decision carries a
:class:`Reason`, and only ``new``, ``escalated``, ``repeat_due`` and ``resolved`` notify.
Flapping is damped by hysteresis: ``n`` hits out of the last ``m`` evaluations to fire, and
``recovery_evaluations`` consecutive clean evaluations spanning at least ``resolve_after`` to
resolve (Grafana's "keep firing for").

Idempotent reruns: each record remembers the snapshot it had *before* the latest window was
applied. A rerun of that same window replays it from the snapshot, and a notification already
sent for that window is reported as ``suppressed_duplicate`` instead of being sent again.
A window older than the latest one applied is ``out_of_order``: it changes nothing.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from detector.anomaly import (
    FLEET,
    SEVERITIES,
    Anomaly,
    decode_part,
    fingerprint_of,
    severity_rank,
    worst_key,
)
from detector.errors import ConfigError
from detector.timeutil import iso_z, to_datetime

__all__ = [
    "NOTIFY_REASONS",
    "Ack",
    "AlertRecord",
    "AlertState",
    "Current",
    "Decision",
    "LifecyclePolicy",
    "Reason",
    "Silence",
    "parse_fingerprint",
    "step",
]

STATE_SCHEMA: Final = 1


class Reason(StrEnum):
    """Why a decision was taken (stable strings: they reach reports, logs and metrics)."""

    NEW = "new"  # started firing (or first notification after a silence ended)
    ESCALATED = "escalated"  # still firing, severity rose above what was last notified
    REPEAT_DUE = "repeat_due"  # still firing, repeat interval elapsed since last notification
    STILL_FIRING = "still_firing"  # still firing, already notified recently
    RECOVERING = "recovering"  # clean, but not for long enough to resolve (hysteresis)
    RESOLVED = "resolved"
    PENDING = "pending"  # anomalous, but N of M not reached yet
    SILENCED = "silenced"
    ACKNOWLEDGED = "acknowledged"
    SUPPRESSED_DUPLICATE = "suppressed_duplicate"  # rerun of a window already notified
    NO_DATA = "no_data"  # firing, but not evaluated in this window: state kept
    OUT_OF_ORDER = "out_of_order"  # a window older than the latest one applied


#: Reasons that produce a notification.
NOTIFY_REASONS: Final = frozenset(
    {Reason.NEW, Reason.ESCALATED, Reason.REPEAT_DUE, Reason.RESOLVED}
)


_iso = iso_z
_dt = to_datetime


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def parse_fingerprint(fingerprint: str) -> tuple[str, str | None, str]:
    """Split ``operation|sdk_version-or-*|metric`` into its decoded parts.

    Inverse of :func:`detector.anomaly.fingerprint_of`: the parts are percent-decoded
    (``%7C`` is a ``|`` inside a name, ``%2A`` a version that is literally ``*``), and the
    version is None for the fleet. Raises ValueError unless there are exactly three parts
    with a non-empty operation and metric.
    """
    parts = fingerprint.split("|")
    # sdk_version may be "" (rows without SdkVersion form their own partition); "*" = fleet.
    if len(parts) != 3 or not parts[0] or not parts[2]:
        raise ValueError(f"not a fingerprint (operation|sdk_version|metric): {fingerprint!r}")
    op, sdk, metric = parts
    return decode_part(op), (None if sdk == FLEET else decode_part(sdk)), decode_part(metric)


# --------------------------------------------------------------------------------------------
# Inputs besides anomalies: current values, silences, acknowledgements, policy
# --------------------------------------------------------------------------------------------


@dataclass
class Current:
    """The value of an evaluated partition in the judged window (carried by resolved notices)."""

    observed: float | None = None
    baseline: float | None = None
    calls: int | None = None

    @classmethod
    def coerce(cls, value: Any) -> Current | None:
        """Accept a :class:`Current`, an observed float, a dict with those keys, or None."""
        if value is None or isinstance(value, Current):
            return value
        if isinstance(value, Mapping):
            calls = value.get("calls")
            return cls(
                _finite(value.get("observed")),
                _finite(value.get("baseline")),
                int(calls) if calls is not None else None,
            )
        return cls(observed=_finite(value))


_MATCHER_FIELDS: Final = ("fingerprint", "operation_name", "sdk_version", "metric", "severity")
_MATCHER_ALIASES: Final = {
    "operation": "operation_name",
    "op": "operation_name",
    "sdk": "sdk_version",
    "version": "sdk_version",
}


@dataclass
class Silence:
    """Mute matching alerts between ``starts_at`` and ``ends_at`` (Alertmanager silences).

    ``matchers`` maps a field (``operation_name``, ``sdk_version``, ``metric``, ``severity``,
    ``fingerprint``) to a glob pattern; all must match (case-insensitive). ``sdk_version``
    ``*`` also matches the fleet (no version).
    """

    id: str
    matchers: dict[str, str]
    starts_at: datetime
    ends_at: datetime
    comment: str = ""
    created_by: str = ""
    created_at: datetime | None = None
    expired_at: datetime | None = None  # set when expired early by hand

    def __post_init__(self) -> None:
        self.matchers = {_MATCHER_ALIASES.get(k, k): v for k, v in self.matchers.items()}
        unknown = sorted(set(self.matchers) - set(_MATCHER_FIELDS))
        if unknown:
            raise ConfigError(
                f"silence {self.id}: unknown matcher field(s) {', '.join(unknown)}"
                f" (use {', '.join(_MATCHER_FIELDS)})"
            )
        if not self.matchers:
            raise ConfigError(f"silence {self.id}: needs at least one matcher")

    def active(self, now: datetime) -> bool:
        end = min(self.ends_at, self.expired_at) if self.expired_at else self.ends_at
        return self.starts_at <= now < end

    def matches(self, fingerprint: str, severity: str | None = None) -> bool:
        op, sdk, metric = parse_fingerprint(fingerprint)
        values = {
            "fingerprint": fingerprint,
            "operation_name": op,
            "sdk_version": sdk or "*",
            "metric": metric,
            "severity": severity or "",
        }
        return all(
            fnmatch.fnmatchcase(values[k].lower(), str(pattern).lower())
            for k, pattern in self.matchers.items()
        )

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("starts_at", "ends_at", "created_at", "expired_at"):
            d[k] = _iso(d[k])
        return d

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Silence:
        """Inverse of :meth:`to_json`; KeyError/ValueError on a record missing its window."""
        starts, ends = _dt(data["starts_at"]), _dt(data["ends_at"])
        if starts is None or ends is None:
            raise ValueError(f"silence {data.get('id')!r}: starts_at and ends_at are required")
        return cls(
            id=str(data["id"]),
            matchers={str(k): str(v) for k, v in dict(data.get("matchers") or {}).items()},
            starts_at=starts,
            ends_at=ends,
            comment=str(data.get("comment") or ""),
            created_by=str(data.get("created_by") or ""),
            created_at=_dt(data.get("created_at")),
            expired_at=_dt(data.get("expired_at")),
        )


@dataclass
class Ack:
    """An acknowledgement: mutes one firing fingerprint until it resolves."""

    fingerprint: str
    at: datetime
    by: str = ""
    comment: str = ""

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "at": _iso(self.at)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Ack:
        return cls(
            str(data["fingerprint"]),
            _dt(data["at"]),  # type: ignore[arg-type]
            str(data.get("by", "")),
            str(data.get("comment", "")),
        )


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _duration(value: Any, key: str, problems: list[str]) -> timedelta | None:
    if isinstance(value, timedelta):
        return value
    m = _DURATION_RE.match(str(value))
    if not m:
        problems.append(f"alerting.{key}: not a duration like 30m, 4h, 2d: {value!r}")
        return None
    return timedelta(seconds=float(m.group(1)) * _UNIT[m.group(2)])


@dataclass(frozen=True)
class LifecyclePolicy:
    """How anomalies turn into firing/resolved alerts and how often they are repeated.

    Parameters
    ----------
    n, m : fire when at least ``n`` of the last ``m`` evaluated windows were anomalous.
    recovery_evaluations : consecutive clean evaluated windows needed to resolve ...
    resolve_after : ... spanning at least this long since the last anomalous window.
    repeat_interval : re-notify a still-firing alert this often.
    send_resolved : send resolved notices (only for alerts whose firing was notified).
    retention : forget resolved/inactive fingerprints not evaluated for this long.
    """

    n: int = 1
    m: int = 1
    recovery_evaluations: int = 2
    resolve_after: timedelta = timedelta(minutes=30)
    repeat_interval: timedelta = timedelta(hours=4)
    send_resolved: bool = True
    retention: timedelta = timedelta(days=7)

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.n <= self.m:
            problems.append(f"alerting.n_of_m: need 1 <= N <= M, got {self.n}/{self.m}")
        if self.recovery_evaluations < 1:
            problems.append("alerting.recovery_evaluations: must be >= 1")
        if self.repeat_interval <= timedelta(0):
            problems.append("alerting.repeat_interval: must be > 0")
        if problems:
            raise ConfigError(problems)

    @classmethod
    def from_config(cls, alerting: Mapping[str, Any]) -> LifecyclePolicy:
        """Build from the ``[alerting]`` table (unknown keys are ignored: other stages own them).

        Keys: ``n_of_m`` ("2/3" or [2, 3]), ``recovery_evaluations``, ``resolve_after``,
        ``repeat_interval``, ``send_resolved``, ``retention``. Durations are timedeltas or
        strings like ``30m``. Raises :class:`ConfigError` listing every problem.
        """
        problems: list[str] = []
        kw: dict[str, Any] = {}
        if "n_of_m" in alerting:
            raw = alerting["n_of_m"]
            try:
                n, m = (
                    (int(x) for x in str(raw).split("/"))
                    if isinstance(raw, str)
                    else (int(raw[0]), int(raw[1]))
                )
                kw["n"], kw["m"] = n, m
            except (TypeError, ValueError, IndexError):
                problems.append(f"alerting.n_of_m: expected 'N/M' or [N, M], got {raw!r}")
        for key in ("resolve_after", "repeat_interval", "retention"):
            if alerting.get(key) is not None:
                kw[key] = _duration(alerting[key], key, problems)
        if "recovery_evaluations" in alerting:
            try:
                kw["recovery_evaluations"] = int(alerting["recovery_evaluations"])
            except (TypeError, ValueError):
                problems.append("alerting.recovery_evaluations: must be an integer")
        if "send_resolved" in alerting:
            kw["send_resolved"] = bool(alerting["send_resolved"])
        if problems:
            raise ConfigError(problems)
        return cls(**kw)


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------

_EPISODE_FIELDS: Final = (
    "started_at",
    "fired_at",
    "resolved_at",
    "notified_at",
    "notified_status",
    "notified_severity",
    "notified_window_end",
    "notifications",
)
_RECORD_DT: Final = (
    "fired_at",
    "last_window_end",
    "last_hit_end",
    "started_at",
    "resolved_at",
    "notified_at",
    "notified_window_end",
)


@dataclass
class AlertRecord:
    """What the job remembers about one fingerprint between runs."""

    fingerprint: str
    status: str = "inactive"  # inactive | pending | firing | resolved
    history: list[bool] = field(default_factory=list)  # last m evaluations, newest last
    clean_streak: int = 0
    last_window_end: datetime | None = None
    last_hit_end: datetime | None = None
    started_at: datetime | None = None  # data time the current/last episode started
    fired_at: datetime | None = None  # wall-clock time it was decided to fire
    resolved_at: datetime | None = None
    severity: str | None = None
    anomaly: dict[str, Any] | None = None  # latest anomalous record (Anomaly.to_json)
    current: dict[str, Any] | None = None  # latest clean value (Current as dict)
    notified_at: datetime | None = None  # last notification of this episode
    notified_status: str | None = None  # "firing" | "resolved"
    notified_severity: str | None = None
    notified_window_end: datetime | None = None
    notifications: int = 0  # in this episode
    prev: dict[str, Any] | None = None  # snapshot before last_window_end was applied

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "prev"}
        for k in _RECORD_DT:
            d[k] = _iso(d[k])
        d["history"] = list(self.history)
        d["anomaly"] = copy.deepcopy(self.anomaly)
        d["current"] = copy.deepcopy(self.current)
        d["prev"] = copy.deepcopy(self.prev)
        return d

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AlertRecord:
        kw = {f.name: copy.deepcopy(data[f.name]) for f in fields(cls) if f.name in data}
        for k in _RECORD_DT:
            if k in kw:
                kw[k] = _dt(kw[k])
        return cls(**kw)

    def snapshot(self) -> dict[str, Any]:
        d = self.to_json()
        d.pop("prev", None)
        return d


@dataclass
class AlertState:
    """All alert records (keyed by fingerprint) plus the self-health records."""

    records: dict[str, AlertRecord] = field(default_factory=dict)
    health: dict[str, dict[str, Any]] = field(default_factory=dict)

    def firing(self) -> list[AlertRecord]:
        return [r for r in self.records.values() if r.status == "firing"]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": STATE_SCHEMA,
            "records": {fp: r.to_json() for fp, r in sorted(self.records.items())},
            "health": copy.deepcopy(self.health),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AlertState:
        if data.get("schema") != STATE_SCHEMA:
            raise ValueError(f"alert state schema {data.get('schema')!r} is not {STATE_SCHEMA}")
        return cls(
            {fp: AlertRecord.from_json(r) for fp, r in data.get("records", {}).items()},
            copy.deepcopy(dict(data.get("health", {}))),
        )


# --------------------------------------------------------------------------------------------
# Decisions
# --------------------------------------------------------------------------------------------


@dataclass
class Decision:
    """What the lifecycle decided for one fingerprint in this window, and why."""

    fingerprint: str
    reason: Reason
    notify: bool
    status: str  # the record's status after this window
    severity: str
    window_end: datetime
    anomaly: Anomaly | None = None  # firing: this window's anomaly; resolved: the last one
    current: Current | None = None  # resolved/recovering: the clean value now
    started_at: datetime | None = None
    resolved_at: datetime | None = None
    silence_id: str | None = None
    ack_by: str | None = None
    kind: str = "alert"  # "alert" | "health"
    health: dict[str, Any] | None = None  # for kind == "health": the issue

    @property
    def operation_name(self) -> str:
        return parse_fingerprint(self.fingerprint)[0] if self.kind == "alert" else "acs-detector"

    @property
    def sdk_version(self) -> str | None:
        return parse_fingerprint(self.fingerprint)[1] if self.kind == "alert" else None

    @property
    def metric(self) -> str:
        return parse_fingerprint(self.fingerprint)[2] if self.kind == "alert" else "health"

    def to_json(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "kind": self.kind,
            "reason": str(self.reason),
            "notify": self.notify,
            "status": self.status,
            "severity": self.severity,
            "window_end": _iso(self.window_end),
            "started_at": _iso(self.started_at),
            "resolved_at": _iso(self.resolved_at),
            "silence_id": self.silence_id,
            "ack_by": self.ack_by,
            "anomaly": self.anomaly.to_json() if self.anomaly else None,
            "current": asdict(self.current) if self.current else None,
            "health": copy.deepcopy(self.health),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Decision:
        cur = data.get("current")
        return cls(
            fingerprint=data["fingerprint"],
            reason=Reason(data["reason"]),
            notify=bool(data["notify"]),
            status=data["status"],
            severity=data["severity"],
            window_end=_dt(data["window_end"]),  # type: ignore[arg-type]
            anomaly=Anomaly.from_json(data["anomaly"]) if data.get("anomaly") else None,
            current=Current(**cur) if cur else None,
            started_at=_dt(data.get("started_at")),
            resolved_at=_dt(data.get("resolved_at")),
            silence_id=data.get("silence_id"),
            ack_by=data.get("ack_by"),
            kind=data.get("kind", "alert"),
            health=data.get("health"),
        )


# --------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------


def _evaluated_map(evaluated: Iterable[Any] | Mapping[str, Any] | None) -> dict[str, Any]:
    """What :func:`step` was told was evaluated -> ``{fingerprint: current value or None}``.

    The one adapter for the shapes ``step`` accepts: the alerting stage passes the mapping
    (copied as it is); fingerprint strings, ``(operation, sdk_version, metric)`` tuples and
    objects with ``.fingerprint`` (evaluated, no current value) are for callers and tests
    that have nothing more.
    """
    if evaluated is None:
        return {}
    if isinstance(evaluated, Mapping):
        return {str(k): v for k, v in evaluated.items()}
    out: dict[str, Any] = {}
    for item in evaluated:
        if isinstance(item, str):
            out[item] = None
        elif hasattr(item, "fingerprint"):
            out[item.fingerprint] = None
        else:  # (operation, sdk_version, metric)
            op, sdk, metric = item
            out[fingerprint_of(op, sdk, metric)] = None
    return out


def _pick(anomalies: Iterable[Anomaly]) -> dict[str, Anomaly]:
    """One anomaly per fingerprint: the most severe, then the furthest from usual (the window
    the run report shows for the alert too)."""
    out: dict[str, Anomaly] = {}
    for a in anomalies:
        old = out.get(a.fingerprint)
        if old is None or worst_key(a) > worst_key(old):
            out[a.fingerprint] = a
    return out


def _sev(severity: str | None) -> int:
    return severity_rank(severity) if severity in SEVERITIES else -1


def _apply(
    rec: AlertRecord,
    anomaly: Anomaly | None,
    current: Current | None,
    policy: LifecyclePolicy,
    now: datetime,
    window_end: datetime,
) -> Reason | None:
    """Apply one evaluated window to ``rec`` (in place); return the raw reason or None."""
    hit = anomaly is not None
    rec.history = (rec.history + [hit])[-policy.m :]
    rec.last_window_end = window_end
    if hit:
        assert anomaly is not None
        rec.last_hit_end = window_end
        rec.clean_streak = 0
        rec.anomaly = anomaly.to_json()
        rec.severity = anomaly.severity
        rec.current = None
    else:
        rec.clean_streak += 1
        rec.current = asdict(current) if current else None

    if rec.status != "firing":
        if hit and sum(rec.history) >= policy.n:
            rec.status = "firing"
            # started_at is data time (the window that fired, for "firing since"); fired_at is
            # the wall clock of the decision (acks given after it belong to this episode).
            rec.started_at = anomaly.window_start if anomaly is not None else window_end
            rec.fired_at = now
            rec.resolved_at = None
            rec.notified_at = rec.notified_status = rec.notified_severity = None
            rec.notified_window_end = None
            rec.notifications = 0
            return Reason.NEW
        if hit:
            rec.status = "pending"
            return Reason.PENDING
        if rec.status == "pending" and not any(rec.history):
            rec.status = "inactive"
        return None

    if hit:
        if rec.notified_at is None:
            return Reason.NEW  # never notified in this episode (it was silenced): say it now
        if _sev(rec.severity) > _sev(rec.notified_severity):
            return Reason.ESCALATED
        if now - rec.notified_at >= policy.repeat_interval:
            return Reason.REPEAT_DUE
        return Reason.STILL_FIRING
    since_hit = window_end - rec.last_hit_end if rec.last_hit_end else policy.resolve_after
    if rec.clean_streak >= policy.recovery_evaluations and since_hit >= policy.resolve_after:
        rec.status = "resolved"
        rec.resolved_at = window_end
        return Reason.RESOLVED
    return Reason.RECOVERING


@dataclass(frozen=True)
class _StepInput:
    """What every fingerprint of one step is judged against (built once per step)."""

    picked: dict[str, Anomaly]
    ev: dict[str, Any]
    policy: LifecyclePolicy
    now: datetime
    window_end: datetime
    silences: list[Silence]
    acks: Mapping[str, Ack]


def step(
    anomalies: Iterable[Anomaly],
    evaluated: Iterable[Any] | Mapping[str, Any] | None,
    state: AlertState,
    policy: LifecyclePolicy,
    now: datetime,
    *,
    window_end: datetime | None = None,
    silences: Sequence[Silence] = (),
    acks: Mapping[str, Ack] | None = None,
) -> tuple[list[Decision], AlertState]:
    """Advance the alert lifecycle by one judged window.

    Parameters
    ----------
    anomalies : gated anomalies of the window (several per fingerprint: the most severe wins).
    evaluated : the fingerprints the engine evaluated in the window, as strings,
        ``(operation, sdk_version, metric)`` tuples, objects with ``.fingerprint``, or a
        mapping fingerprint -> current value (a :class:`Current`, a float or a dict with
        ``observed``/``baseline``/``calls``) that resolved notices carry. Fingerprints of
        ``anomalies`` count as evaluated. A firing fingerprint that is not evaluated keeps its
        state (``no_data``): missing data never resolves an alert.
    state : the previous state (not modified).
    policy : :class:`LifecyclePolicy`.
    now : decision time (UTC).
    window_end : end of the judged window; identifies it for idempotent reruns. Defaults to
        the latest ``window_end`` of the anomalies, else ``now``: pass it explicitly.
    silences : silences to apply (inactive ones are ignored).
    acks : acknowledgements by fingerprint; an ack mutes its fingerprint's episode if it
        was given after the episode started.

    Returns
    -------
    (decisions, new_state) : decisions sorted by fingerprint; ``Decision.notify`` marks those
    the digest must carry. The new state records them as notified: the outbox, not the
    state, guarantees delivery.
    """
    picked = _pick(anomalies)
    if window_end is None:
        window_end = max((a.window_end for a in picked.values()), default=now)
    inp = _StepInput(
        picked=picked,
        ev=_evaluated_map(evaluated),
        policy=policy,
        now=now,
        window_end=window_end,
        silences=[s for s in silences if s.active(now)],
        acks=acks or {},
    )
    new_state = AlertState(
        {fp: AlertRecord.from_json(r.to_json()) for fp, r in state.records.items()},
        copy.deepcopy(state.health),
    )
    decisions: list[Decision] = []
    open_fps = {fp for fp, r in state.records.items() if r.status in ("firing", "pending")}
    for fp in sorted(set(picked) | set(inp.ev) | open_fps):
        decision = _step_one(fp, state.records.get(fp), inp, new_state)
        if decision is not None:
            decisions.append(decision)
    _forget_quiet(new_state, policy, now)
    return decisions, new_state


def _step_one(
    fp: str, old: AlertRecord | None, inp: _StepInput, new_state: AlertState
) -> Decision | None:
    """Fingerprint, its previous record, step input -> its decision (new record into new_state)."""
    anomaly = inp.picked.get(fp)
    if fp not in inp.picked and fp not in inp.ev:
        if old is not None and old.status == "firing":
            return _decision(old, Reason.NO_DATA, False, inp.window_end)
        return None
    if old is None and anomaly is None:
        return None  # clean and never seen: nothing to remember (the state stays small)
    try:
        parse_fingerprint(fp)
    except ValueError:
        return None  # not an alert fingerprint (the engine's own bookkeeping): ignore
    rerun = False
    if old is not None and old.last_window_end is not None:
        if inp.window_end < old.last_window_end:
            if anomaly is not None or old.status == "firing":
                return _decision(old, Reason.OUT_OF_ORDER, False, inp.window_end)
            return None
        rerun = inp.window_end == old.last_window_end
    rerun_of = old if rerun else None
    rec = _start_record(fp, old, rerun_of)
    current = Current.coerce(inp.ev.get(fp))
    reason = _apply(rec, anomaly, current, inp.policy, inp.now, inp.window_end)
    new_state.records[fp] = rec
    if reason is None:
        return None
    if rerun_of is not None and rec.status == rerun_of.status:
        # The outcome of this window was recorded before: keep that episode's bookkeeping.
        for k in _EPISODE_FIELDS:
            setattr(rec, k, getattr(rerun_of, k))
    return _gated_decision(rec, reason, rerun_of, inp)


def _start_record(fp: str, old: AlertRecord | None, rerun_of: AlertRecord | None) -> AlertRecord:
    """Previous record (and the one a rerun replays) -> fresh record to apply the window to."""
    # A rerun replays the window from the snapshot taken before it was first applied.
    if rerun_of is not None:
        base = AlertRecord.from_json(rerun_of.prev) if rerun_of.prev else AlertRecord(fp)
    elif old is not None:
        base = AlertRecord.from_json(old.snapshot())
    else:
        base = AlertRecord(fp)
    rec = AlertRecord.from_json(base.snapshot())
    rec.prev = base.snapshot()
    return rec


def _gated_decision(
    rec: AlertRecord, reason: Reason, rerun_of: AlertRecord | None, inp: _StepInput
) -> Decision:
    """Applied record and raw reason -> decision after silences, acks and rerun dedup."""
    fp = rec.fingerprint
    silence = next((s for s in inp.silences if s.matches(fp, rec.severity)), None)
    ack = inp.acks.get(fp)
    ack_ok = (
        ack is not None
        and rec.status == "firing"
        and rec.fired_at is not None
        and ack.at >= rec.fired_at
    )
    if reason in (Reason.NEW, Reason.ESCALATED, Reason.REPEAT_DUE, Reason.STILL_FIRING):
        if silence is not None:
            reason = Reason.SILENCED
        elif ack_ok:
            reason = Reason.ACKNOWLEDGED
    notify = reason in NOTIFY_REASONS
    if reason == Reason.RESOLVED:
        # Only tell people an alert resolved if they were told it fired (and not silenced).
        notify = inp.policy.send_resolved and rec.notified_status == "firing" and silence is None
    if (
        notify
        and rerun_of is not None
        and (rerun_of.notified_window_end == inp.window_end or reason == Reason.REPEAT_DUE)
    ):
        reason, notify = Reason.SUPPRESSED_DUPLICATE, False
    if notify:
        rec.notified_at = inp.now
        rec.notified_status = "resolved" if reason == Reason.RESOLVED else "firing"
        rec.notified_severity = rec.severity
        rec.notified_window_end = inp.window_end
        rec.notifications += 1
    return _decision(
        rec,
        reason,
        notify,
        inp.window_end,
        silence_id=silence.id if silence and reason == Reason.SILENCED else None,
        ack_by=(ack.by or "someone") if ack and reason == Reason.ACKNOWLEDGED else None,
    )


def _forget_quiet(new_state: AlertState, policy: LifecyclePolicy, now: datetime) -> None:
    """New state -> same state without inactive/resolved records older than the retention."""
    # Forget what is long quiet, so the state does not grow with every version ever seen.
    for fp, rec in list(new_state.records.items()):
        if (
            rec.status in ("inactive", "resolved")
            and rec.last_window_end is not None
            and now - rec.last_window_end > policy.retention
        ):
            del new_state.records[fp]


def _decision(
    rec: AlertRecord,
    reason: Reason,
    notify: bool,
    window_end: datetime,
    *,
    silence_id: str | None = None,
    ack_by: str | None = None,
) -> Decision:
    anomaly = Anomaly.from_json(rec.anomaly) if rec.anomaly else None
    current = Current(**rec.current) if rec.current else None
    return Decision(
        fingerprint=rec.fingerprint,
        reason=reason,
        notify=notify,
        status=rec.status,
        severity=rec.severity or "warning",
        window_end=window_end,
        anomaly=anomaly,
        current=current,
        started_at=rec.started_at,
        resolved_at=rec.resolved_at,
        silence_id=silence_id,
        ack_by=ack_by,
    )
