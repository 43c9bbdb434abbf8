"""Scenarios: what goes wrong, when, and the labels the detector is scored against.

A scenario turns (start, end, seed, params) into a :class:`ScenarioPlan`: the SDK rollout time,
the :class:`Effect` s the generator applies (slower durations, extra failures, thinned volume,
traffic surges), the labelled :class:`Incident` s written to ``incidents.json`` and the
:class:`MaintenanceWindow` s written to ``maintenance.json``.

Timing and targets vary with the seed (so a detector cannot be tuned to one instant), but every
incident starts after a clean warm-up of ``min(params.warmup_days, days / 2)`` days: the
detector needs a baseline. Incidents are sized above practical significance: durations x1.7 or
more, failure rate +12 points or more, volume down to 40 % or less; they last 1-4 hours, except
the new-version latency regression (from the rollout until a fix, 18-36 h later) and the slow
drift (labelled from where its factor exceeds ``params.drift_label_threshold`` to the end).

The joint shift (``joint_shift``) is the exception to that sizing: latency, failures and volume
of one operation each move by less than the detector's own minimum at once, labelled as one
incident with metric ``joint`` (an alert on any metric of the operation matches it). So is
the tail regression (``tail_regression``): a slow minority of the new build's CreateView calls,
its p95 about x1.5 while its median stays (the typical duration moves less than +20 %).

Hard negatives (``rare_version_noise``, ``busy_hour``, ``maintenance_window``, ``quiet``,
``moderate_lull``) label nothing: any alert on them is a false alert. Pure: no I/O except :func:`load_incidents` and
:func:`load_maintenance`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np

from detector.config import MaintenanceWindow

from . import params as P
from .params import ResultCode, SimParams

__all__ = [
    "LABEL_METRICS",
    "METRICS",
    "SCENARIOS",
    "Effect",
    "Incident",
    "MaintenanceWindow",
    "maintenance_to_dict",
    "Scenario",
    "ScenarioContext",
    "ScenarioPlan",
    "format_time",
    "load_incidents",
    "load_maintenance",
    "parse_time",
]

METRICS: Final = ("duration", "failure_rate", "volume")
#: What an incident may be labelled with: a metric, or ``joint`` (several at once, each small).
LABEL_METRICS: Final = (*METRICS, "joint")
_H = 3_600_000
_MIN5 = 300_000


def format_time(ms: int) -> str:
    """Epoch ms -> ISO-8601 UTC with a ``Z`` (seconds precision: windows are 5-min aligned)."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """ISO-8601 with ``Z`` or an offset -> aware UTC datetime (naive input is taken as UTC)."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _to_ms(dt: datetime) -> int:
    return int(round(dt.timestamp() * 1000))


@dataclass(frozen=True)
class Incident:
    """A labelled incident: half-open ``[start, end)``, UTC.

    ``sdk_version`` None means the operation across all versions. ``effect`` and ``note`` are
    human-readable extras (the size of the injected effect, how it was made).
    """

    operation_name: str
    sdk_version: str | None
    metric: str  # one of LABEL_METRICS
    start: datetime
    end: datetime
    effect: str = ""
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["start"] = format_time(_to_ms(self.start))
        d["end"] = format_time(_to_ms(self.end))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Incident:
        missing = [
            k for k in ("operation_name", "sdk_version", "metric", "start", "end") if k not in d
        ]
        if missing:
            raise ValueError(f"incident {d!r} lacks {', '.join(missing)}")
        if d["metric"] not in LABEL_METRICS:
            raise ValueError(f"incident metric {d['metric']!r} is not one of {LABEL_METRICS}")
        start, end = parse_time(d["start"]), parse_time(d["end"])
        if not start < end:
            raise ValueError(f"incident {d!r}: start must be before end")
        return cls(
            operation_name=str(d["operation_name"]),
            sdk_version=None if d["sdk_version"] is None else str(d["sdk_version"]),
            metric=d["metric"],
            start=start,
            end=end,
            effect=str(d.get("effect", "")),
            note=str(d.get("note", "")),
        )


def maintenance_to_dict(window: MaintenanceWindow) -> dict[str, Any]:
    """One ``maintenance.json`` entry (the windows are the config's own type)."""
    return {
        "start": format_time(_to_ms(window.start)),
        "end": format_time(_to_ms(window.end)),
        "operation_name": window.operation_name,
        "note": window.note,
    }


def load_incidents(path: str | Path) -> list[Incident]:
    """Read ``incidents.json`` (a file, or a directory holding it).

    Raises
    ------
    ValueError
        The file is not a list of incidents with the five required keys.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "incidents.json"
    data = json.loads(p.read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{p}: expected a JSON list of incidents")
    return [Incident.from_dict(d) for d in data]


def load_maintenance(path: str | Path) -> list[MaintenanceWindow]:
    """Read ``maintenance.json`` (a file, or a directory holding it); [] when absent."""
    p = Path(path)
    if p.is_dir():
        p = p / "maintenance.json"
    if not p.exists():
        return []
    out = []
    for d in json.loads(p.read_text(encoding="utf-8")):
        out.append(
            MaintenanceWindow(
                parse_time(d["start"]),
                parse_time(d["end"]),
                d.get("operation_name"),
                d.get("note", ""),
            )
        )
    return out


@dataclass(frozen=True)
class Effect:
    """A change the generator applies to rows in ``[start_ms, end_ms)``.

    kind ``duration``: durations times ``magnitude`` (``ramp``: from 1 at ``start_ms`` to
    ``magnitude`` at ``end_ms`` along ``((t - start) / (end - start)) ** power``), of a random
    ``share`` of the matching calls (1: all of them; less: a slow minority, a tail);
    ``failure``: extra probability ``magnitude`` of an unexpected failure with ``code``;
    ``volume``: keep a fraction ``magnitude`` of the rows; ``surge``: call legs times
    ``magnitude`` (operation and version ignored).
    """

    kind: str
    operation_name: str | None
    sdk_version: str | None
    start_ms: int
    end_ms: int
    magnitude: float
    code: ResultCode | None = None
    ramp: bool = False
    power: float = 1.5
    share: float = 1.0  # duration: the share of matching calls it slows


@dataclass
class ScenarioPlan:
    """What a scenario decided: rollout time, effects, labels, maintenance windows."""

    rollout_ms: int
    effects: list[Effect] = field(default_factory=list)
    incidents: list[Incident] = field(default_factory=list)
    maintenance: list[MaintenanceWindow] = field(default_factory=list)


@dataclass
class ScenarioContext:
    """What a scenario builder may use: the data range, the warm-up end, params, a Generator."""

    start_ms: int
    end_ms: int
    warmup_end_ms: int
    params: SimParams
    rng: np.random.Generator
    taken: list[tuple[int, int]] = field(default_factory=list)  # windows placed so far

    @property
    def new_version(self) -> str:
        """The web GA build the scenario rolls out (first ``release_h=None`` stable version)."""
        for v in self.params.versions:
            if v.release_h is None and "beta" not in v.sdk_version:
                return v.sdk_version
        raise ValueError("params.versions has no build with release_h=None to roll out")

    @property
    def rare_version(self) -> str:
        return self.params.rare_version.sdk_version

    def uniform(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    def choose(self, options: tuple[str, ...]) -> str:
        return options[int(self.rng.integers(len(options)))]

    def hours(self, lo: float, hi: float) -> int:
        """A duration in ms between ``lo`` and ``hi`` hours, in 5-minute steps."""
        return int(round(self.uniform(lo, hi) * _H / _MIN5)) * _MIN5

    def slot(self, duration_ms: int, after_ms: int | None = None) -> int:
        """Start of a window of ``duration_ms`` after the warm-up (and after ``after_ms``).

        On a 5-minute boundary, preferring a weekday business hour (start 09:00-15:55 UTC) so
        incidents hit real traffic, then any business hour, then any time; windows placed
        earlier in the same scenario are avoided (with an hour of margin), so effects do not
        mask one another. The choice among candidates is random (seeded).
        """
        a = max(self.warmup_end_ms, after_ms or 0)
        a = -(-a // _MIN5) * _MIN5
        b = self.end_ms - duration_ms
        if b < a:
            start = max(min(a, b), self.start_ms)
            self.taken.append((start, start + duration_ms))
            return start
        cand = np.arange(a, b + 1, _MIN5, dtype=np.int64)
        free = np.ones(cand.size, dtype=bool)
        for s0, e0 in self.taken:
            free &= (cand + duration_ms + _H <= s0) | (cand >= e0 + _H)
        hour = (cand % 86_400_000) // _H
        weekday = ((cand // 86_400_000) + 3) % 7
        business = (hour >= 9) & (hour < 16)
        for mask in (free & business & (weekday < 5), free & business, free, business):
            if mask.any():
                cand = cand[mask]
                break
        start = int(cand[int(self.rng.integers(cand.size))])
        self.taken.append((start, start + duration_ms))
        return start

    def rollout(self) -> int:
        """The new SDK build ships 1-6 h after the warm-up (any scenario has this rollout)."""
        return self.warmup_end_ms + self.hours(1.0, 6.0)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


# ------------------------------------------------------------------------------- pieces
def _new_version_latency(ctx: ScenarioContext, plan: ScenarioPlan) -> None:
    version = ctx.new_version
    start = plan.rollout_ms
    end = min(start + ctx.hours(18.0, 36.0), ctx.end_ms)
    for op in ("Join", "StartCall"):
        factor = round(ctx.uniform(1.7, 2.3), 2)
        plan.effects.append(Effect("duration", op, version, start, end, factor))
        plan.incidents.append(
            Incident(
                op,
                version,
                "duration",
                _dt(start),
                _dt(end),
                f"durations x{factor} (p50 and p95)",
                "new SDK build slower from its rollout until a server-side fix; its traffic "
                "share ramps up from 0, so the fleet-level shift is smaller",
            )
        )


def _tail_regression(ctx: ScenarioContext, plan: ScenarioPlan) -> None:
    """A slow minority of the new build's CreateView calls (8 %, x3.8-4.2) from its rollout
    until a fix 18-36 h later: its p95 about x1.5, its median about x1.07 (the typical
    duration under the +20 % minimum)."""
    version, op = ctx.new_version, "CreateView"  # a timed operation of >= 100 calls/h
    start = plan.rollout_ms
    end = min(start + ctx.hours(18.0, 36.0), ctx.end_ms)
    factor = round(ctx.uniform(3.8, 4.2), 2)
    plan.effects.append(Effect("duration", op, version, start, end, factor, share=0.08))
    plan.incidents.append(
        Incident(
            op,
            version,
            "duration",
            _dt(start),
            _dt(end),
            f"8 % of calls x{factor}: p95 about x1.5, median about x1.07",
            "new SDK build with a slow minority of calls from its rollout until a server-side "
            "fix; its traffic share ramps up from 0",
        )
    )


def _fleet_failure_spike(ctx: ScenarioContext, plan: ScenarioPlan) -> None:
    dur = ctx.hours(1.0, 3.0)
    start = ctx.slot(dur)
    extra = round(ctx.uniform(0.15, 0.3), 3)
    plan.effects.append(
        Effect("failure", "StartVideo", None, start, start + dur, extra, P.VIDEO_START_FAILED)
    )
    plan.incidents.append(
        Incident(
            "StartVideo",
            None,
            "failure_rate",
            _dt(start),
            _dt(start + dur),
            f"failure rate +{extra * 100:.0f} points (410/41048 video failed to start)",
            "all SDK versions",
        )
    )


def _new_version_failures(ctx: ScenarioContext, plan: ScenarioPlan) -> None:
    version = ctx.new_version
    op = ctx.choose(("Join", "StartVideo", "CreateView"))
    dur = ctx.hours(2.0, 4.0)
    # Once the build has traffic (10 h after its rollout); on very short runs, never before
    # the rollout itself.
    start = max(ctx.slot(dur, after_ms=plan.rollout_ms + 10 * _H), plan.rollout_ms)
    end = min(start + dur, ctx.end_ms)
    extra = round(ctx.uniform(0.2, 0.35), 3)
    code = P.STACK_INIT_TIMEOUT if op == "Join" else P.VIDEO_START_FAILED
    plan.effects.append(Effect("failure", op, version, start, end, extra, code))
    plan.incidents.append(
        Incident(
            op,
            version,
            "failure_rate",
            _dt(start),
            _dt(end),
            f"failure rate +{extra * 100:.0f} points ({code.signature}/{code.subcode})",
            "new SDK build only; other versions unaffected",
        )
    )


def _traffic_drop(
    ctx: ScenarioContext,
    plan: ScenarioPlan,
    ops: tuple[str, ...] = ("CreateView", "StartCall", "Join", "StartVideo"),
) -> None:
    op = ctx.choose(ops)
    dur = ctx.hours(1.0, 3.0)
    start = ctx.slot(dur)
    keep = round(ctx.uniform(0.15, 0.4), 3)
    plan.effects.append(Effect("volume", op, None, start, start + dur, keep))
    plan.incidents.append(
        Incident(
            op,
            None,
            "volume",
            _dt(start),
            _dt(start + dur),
            f"volume x{keep} (-{(1 - keep) * 100:.0f} %)",
            "operation rows thinned across all versions; other operations unchanged",
        )
    )


def _slow_drift(ctx: ScenarioContext, plan: ScenarioPlan) -> None:
    op = ctx.choose(("Join", "CreateView", "CallAgentInit"))
    peak = round(ctx.uniform(2.0, 2.4), 2)
    power = 1.5
    start, end = ctx.warmup_end_ms, ctx.end_ms
    plan.effects.append(Effect("duration", op, None, start, end, peak, ramp=True, power=power))
    thr = ctx.params.drift_label_threshold
    if thr >= peak:  # never exceeds the threshold: an unlabelled drift
        return
    frac = ((thr - 1.0) / (peak - 1.0)) ** (1.0 / power)
    cross = start + int((end - start) * frac)
    cross = -(-cross // _MIN5) * _MIN5
    plan.incidents.append(
        Incident(
            op,
            None,
            "duration",
            _dt(cross),
            _dt(end),
            f"durations creep from x1 at {format_time(start)} to x{peak} at the end",
            f"labelled where the factor exceeds x{thr}",
        )
    )


def _rare_version_noise(ctx: ScenarioContext, plan: ScenarioPlan) -> None:
    dur = ctx.hours(2.0, 4.0)
    start = ctx.slot(dur)
    v = ctx.rare_version
    for op in ("Join", "StartCall", "CreateView", "StartVideo"):
        plan.effects.append(Effect("failure", op, v, start, start + dur, 0.5, P.STACK_INIT_TIMEOUT))
        plan.effects.append(Effect("duration", op, v, start, start + dur, 3.0))


def _busy_hour(ctx: ScenarioContext, plan: ScenarioPlan) -> None:
    dur = ctx.hours(1.0, 2.0)
    start = ctx.slot(dur)
    plan.effects.append(
        Effect("surge", None, None, start, start + dur, round(ctx.uniform(2.5, 3.5), 2))
    )


def _maintenance(ctx: ScenarioContext, plan: ScenarioPlan) -> None:
    dur = ctx.hours(2.0, 3.0)
    start = ctx.slot(dur)
    inner = (start + 2 * _MIN5, start + dur - 2 * _MIN5)
    for op in ("Join", "StartCall", "CallAgentInit"):
        plan.effects.append(Effect("failure", op, None, *inner, 0.3, P.SERVER_NO_ANSWER))
        plan.effects.append(Effect("duration", op, None, *inner, 2.5))
    plan.maintenance.append(
        MaintenanceWindow(
            _dt(start),
            _dt(start + dur),
            None,
            "planned backend maintenance: call setup slower and failing inside this window",
        )
    )


def _joint_shift(ctx: ScenarioContext, plan: ScenarioPlan) -> None:
    """Latency, failures and volume of a busy operation move a little each, for 2-4 h (on
    a quiet one, changes this small are beyond any test's reach)."""
    op = ctx.choose(("CreateView", "DisposeView"))
    dur = ctx.hours(2.0, 4.0)
    start = ctx.slot(dur)
    slower = round(ctx.uniform(1.08, 1.12), 3)  # under the +20 % minimum
    extra = round(ctx.uniform(0.01, 0.015), 4)  # under the +2 points minimum
    keep = round(ctx.uniform(0.75, 0.85), 3)  # under the -50 % minimum
    code = P.SERVER_NO_ANSWER
    plan.effects.append(Effect("duration", op, None, start, start + dur, slower))
    plan.effects.append(Effect("failure", op, None, start, start + dur, extra, code))
    plan.effects.append(Effect("volume", op, None, start, start + dur, keep))
    plan.incidents.append(
        Incident(
            op,
            None,
            "joint",
            _dt(start),
            _dt(start + dur),
            f"durations x{slower}, failure rate +{extra * 100:.1f} points, volume x{keep}",
            "each change under its own minimum effect; together an unusual combination",
        )
    )


def _moderate_lull(ctx: ScenarioContext, plan: ScenarioPlan) -> None:
    """One operation's volume dips by 15-25 % for 2-4 h with normal quality (a lull)."""
    op = ctx.choose(("Join", "StartCall", "CreateView"))
    dur = ctx.hours(2.0, 4.0)
    start = ctx.slot(dur)
    plan.effects.append(
        Effect("volume", op, None, start, start + dur, round(ctx.uniform(0.75, 0.85), 3))
    )


# ------------------------------------------------------------------------------- scenarios
@dataclass(frozen=True)
class Scenario:
    """A named scenario: a one-line description and a plan builder."""

    name: str
    description: str
    build: Callable[[ScenarioContext], ScenarioPlan]
    hard_negative: bool = False


def _plan(
    *pieces: Callable[[ScenarioContext, ScenarioPlan], None],
) -> Callable[[ScenarioContext], ScenarioPlan]:
    def build(ctx: ScenarioContext) -> ScenarioPlan:
        plan = ScenarioPlan(rollout_ms=ctx.rollout())
        for piece in pieces:
            piece(ctx, plan)
        return plan

    return build


def _default(ctx: ScenarioContext, plan: ScenarioPlan) -> None:
    _new_version_latency(ctx, plan)
    # Labelled incidents first: they get the weekday business hours; the hard negatives
    # take what is left.
    _fleet_failure_spike(ctx, plan)
    # Not Join/StartCall: their new-version latency window is a day long.
    _traffic_drop(ctx, plan, ("CreateView", "StartVideo"))
    _rare_version_noise(ctx, plan)
    _busy_hour(ctx, plan)


SCENARIOS: Final[dict[str, Scenario]] = {
    s.name: s
    for s in (
        Scenario(
            "default",
            "a mix for the demo: new-version Join/StartCall latency, fleet StartVideo failure "
            "spike, an operation's volume drop, plus a rare-version blip and a busy hour",
            _plan(_default),
        ),
        Scenario(
            "new_version_latency",
            "a newly rolled-out SDK build makes Join and StartCall slower from its rollout",
            _plan(_new_version_latency),
        ),
        Scenario(
            "fleet_failure_spike",
            "StartVideo failures spike across all SDK versions for 1-3 h on a business day",
            _plan(_fleet_failure_spike),
        ),
        Scenario(
            "new_version_failures",
            "failures of one operation spike on the newly rolled-out SDK build only",
            _plan(_new_version_failures),
        ),
        Scenario(
            "traffic_drop",
            "one operation's volume drops by 60-85 % for 1-3 h while the rest is normal",
            _plan(_traffic_drop),
        ),
        Scenario(
            "slow_drift",
            "one operation's latency creeps up over days; labelled where it exceeds the threshold",
            _plan(_slow_drift),
        ),
        Scenario(
            "rare_version_noise",
            "hard negative: a rare SDK build with a handful of calls fails and is slow for a few hours",
            _plan(_rare_version_noise),
            hard_negative=True,
        ),
        Scenario(
            "busy_hour",
            "hard negative: a legitimate 2.5-3.5x traffic surge for 1-2 h with normal quality",
            _plan(_busy_hour),
            hard_negative=True,
        ),
        Scenario(
            "maintenance_window",
            "hard negative: call setup degrades inside a window listed in maintenance.json",
            _plan(_maintenance),
            hard_negative=True,
        ),
        Scenario(
            "joint_shift",
            "a busy operation's latency (+8-12 %), failures (+1-1.5 points) and volume (-15-25 %) "
            "move at once for 2-4 h, each under its own threshold",
            _plan(_joint_shift),
        ),
        Scenario(
            "moderate_lull",
            "hard negative: one operation's volume dips 15-25 % for 2-4 h, quality normal",
            _plan(_moderate_lull),
            hard_negative=True,
        ),
        Scenario(
            "quiet",
            "hard negative: nothing happens (only the normal rollout of a healthy SDK build)",
            _plan(),
            hard_negative=True,
        ),
        Scenario(
            "tail_regression",
            "a newly rolled-out SDK build makes 8 % of its CreateView calls ~4x slower: "
            "its p95 rises x1.5 while its median stays",
            _plan(_tail_regression),
        ),
    )
}


def warmup_end(start_ms: int, end_ms: int, params: SimParams) -> int:
    """End of the clean warm-up: ``min(warmup_days, days / 2)`` after the start, hour aligned."""
    span = min(params.warmup_days * 86_400_000, (end_ms - start_ms) / 2)
    return start_ms + int(span // _H) * _H


def plan_scenario(
    name: str, start_ms: int, end_ms: int, params: SimParams, seed: int
) -> ScenarioPlan:
    """Build the plan of scenario ``name`` for ``[start_ms, end_ms)`` and a seed.

    Raises
    ------
    ValueError
        Unknown scenario name.
    """
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    rng = np.random.default_rng([seed, 0x5CE7A])
    ctx = ScenarioContext(start_ms, end_ms, warmup_end(start_ms, end_ms, params), params, rng)
    plan = SCENARIOS[name].build(ctx)
    plan.incidents.sort(key=lambda x: (x.start, x.operation_name))
    return plan


def surge_function(effects: list[Effect]) -> Callable[[np.ndarray], np.ndarray]:
    """Traffic multiplier over epoch ms from the ``surge`` effects (1 elsewhere)."""
    surges = [e for e in effects if e.kind == "surge"]

    def surge(t: np.ndarray) -> np.ndarray:
        out = np.ones(np.shape(t))
        for e in surges:
            out[(t >= e.start_ms) & (t < e.end_ms)] *= e.magnitude
        return out

    return surge
