"""``acs-detector explain``: what the engine saw for one partition around a time, and why.

In: the stored bucket history (:class:`~detector.store.buckets.BucketStore`), the engine state,
the alert state and the policy; an operation, an optional SDK version and metric, and a time
``T``. Out: an :class:`Explanation` that re-judges the step holding ``T`` exactly as the
scheduled job judges it (:func:`detector.detect.engine.plan_steps` and
:func:`detector.detect.engine.detect_steps`) and lists, per metric, each test with its value against
the usual, its threshold and the gate that stopped it, or the alert it raised.

Numbers and codes only: :func:`detector.explain_text.explanation_text` and
:func:`detector.explain_text.explanation_json` word them. Names from the log are returned raw.
"""

from __future__ import annotations

import bisect
import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from detector.anomaly import Anomaly
from detector.detect.decide import GATE_REASONS, METRIC_NAMES, DetectionPolicy
from detector.detect.policy import Metric
from detector.detect.tail import tail_used
from detector.errors import ConfigError
from detector.escape import for_terminal
from detector.lifecycle import AlertState, Silence
from detector.schema import BucketAggregates
from detector.store.engine_state import EngineState
from detector.timeutil import iso_z, parse_time

if TYPE_CHECKING:
    from detector.detect.engine import StepContext

__all__ = [
    "METRIC_CHOICES",
    "Bookkeeping",
    "Check",
    "Explanation",
    "LifecycleEntry",
    "MetricVerdict",
    "Question",
    "TimelineRun",
    "explain",
]

#: What ``--metric`` accepts, and the engine's metric each one means.
METRIC_CHOICES: dict[str, str] = {
    "duration": "duration",
    "failures": "failure_rate",
    "failure_rate": "failure_rate",
    "volume": "volume",
}
_FLEET = "*"  # detector.detect.baseline.FLEET: the operation across all its SDK versions


@dataclass(frozen=True)
class Check:
    """One test of a candidate, in the order the engine meets them: its code and whether it
    passed (None: not measured)."""

    code: str  # "history", "calls", "chance", "size", or the late gate's code (decide)
    passed: bool | None


@dataclass(frozen=True)
class TimelineRun:
    """Consecutive judged buckets of the step that stopped at one gate (code, "" = none):
    the first and the last bucket's start."""

    first: datetime
    last: datetime
    gate: str


@dataclass
class MetricVerdict:
    """One metric of the partition at the bucket holding ``T``: each test and the verdict.

    Numbers and gate codes; what the tests measured (``value`` .. ``effect_ms``) is None where
    the engine measured nothing."""

    metric: str
    gate: str  # the engine's gate code ("" = nothing deviated)
    judged: bool = True  # False: not judged (one SDK version's volume, judged per operation)
    checks: list[Check] = field(default_factory=list)
    value: float | None = None
    usual: float | None = None
    calls: float | None = None  # volume: calls expected
    failures: float | None = None  # failure rate only
    effect: float | None = None  # relative; absolute (a rate) for the failure rate
    effect_ms: float | None = None
    #: duration: "tail" where the evidence is a new build's tail since its rollout (its p95
    #: and its siblings'), "typical" where it is the mean log-duration; None for the others
    part: str | None = None
    n_tests: float = 1.0  # tests an hour the p-value is corrected for
    span_buckets: int | None = None
    furthest_gate: str = ""  # the furthest gate any bucket of the step reached
    timeline: list[TimelineRun] = field(default_factory=list)  # the step's buckets by gate
    #: an open alert kept open (hold.py): its test since the rollout still stands, the calls
    #: since it was last current too few to tell it is over
    held: bool = False
    p_value: float | None = None  # the engine's, before the correction for the tests
    corrected_p_value: float | None = None  # what meets alpha
    alpha: float | None = None
    alert: Anomaly | None = None  # the engine's anomaly covering T


@dataclass(frozen=True)
class LifecycleEntry:
    """One fact of an alert's bookkeeping now: its status ("firing", ..., ``at`` since when),
    "acknowledged" (``at``, ``who`` by) or "silenced" (``at`` until, ``who`` the silence)."""

    metric: str
    event: str
    at: datetime | None
    who: str = ""


@dataclass
class Explanation:
    """What ``explain`` found: the partition, the bucket and step judged, a verdict per metric,
    the policy judged by (the thresholds) and the alert's lifecycle now (firing, acknowledged,
    silenced)."""

    operation: str
    sdk_version: str | None
    at: datetime
    bucket: tuple[datetime, datetime]
    step: tuple[datetime, datetime]
    metrics: list[MetricVerdict]
    policy: DetectionPolicy
    lifecycle: list[LifecycleEntry] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Judging the step again
# --------------------------------------------------------------------------------------------


def _step_of(at: datetime, step: timedelta, bucket: timedelta) -> tuple[datetime, datetime]:
    """The scheduled step holding ``at`` (steps end on multiples of ``step`` from the epoch)."""
    from detector.detect.engine import plan_steps

    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    start = epoch + (at - epoch) // step * step
    return plan_steps((start, start + step), step, bucket=bucket)[0]


def _state_before(state: EngineState, start: datetime) -> EngineState:
    """The engine state as the run judging from ``start`` had it: spans known by then only
    (a span still open at ``start`` is cut there)."""
    out = EngineState()
    out.alerted = [(o, v, a, min(b, start)) for o, v, a, b in state.alerted if a < start]
    out.suspect = [(o, v, a, min(b, start)) for o, v, a, b in state.suspect if a < start]
    # The calibration record of the buckets judged before it (calibrate reads only those).
    out.calibration = {k: v for k, v in state.calibration.items() if parse_time(k) < start}
    return out


def _judge(
    history: Callable[[datetime, datetime], BucketAggregates],
    step: tuple[datetime, datetime],
    policy: DetectionPolicy,
    *,
    context: StepContext | None,
    state: EngineState,
) -> Any:
    """The engine's result for ``step``, judged as the scheduled run ending it judged it."""
    from detector.detect.engine import StepContext, detect_steps

    context = context or StepContext()
    return detect_steps(
        history,
        window=step,
        steps=[step],
        policy=policy,
        now=step[1] + context.delay,
        context=context,
        state=_state_before(state, step[0]),
    )


def _row(parts: Any, operation: str, sdk_version: str | None) -> int:
    """The partition's row in the engine's arrays; ConfigError naming what is there instead."""
    ops = [str(o) for o in parts.operation]
    vers = [str(v) for v in parts.version]
    want = _FLEET if sdk_version is None else sdk_version
    for i, (o, v) in enumerate(zip(ops, vers, strict=True)):
        if o == operation and v == want:
            return i
    if operation not in ops:
        raise ConfigError(
            for_terminal(
                f"no operation {operation!r} in the stored history then"
                f" ({_nearest(operation, set(ops))})"
            )
        )
    seen = sorted(v for o, v in zip(ops, vers, strict=True) if o == operation and v != _FLEET)
    raise ConfigError(
        for_terminal(
            f"{operation} has no SDK version {sdk_version!r} in the stored history then"
            f" (seen: {', '.join(seen[:20]) or 'none'})"
        )
    )


def _nearest(name: str, known: set[str]) -> str:
    """``did you mean: A, B`` from the names seen, or the first of them in order."""
    close = difflib.get_close_matches(name, sorted(known), n=5, cutoff=0.6)
    if close:
        return "did you mean: " + ", ".join(close)
    shown = sorted(known)[:20]
    more = f" and {len(known) - len(shown):,} more" if len(known) > len(shown) else ""
    return "seen: " + ", ".join(shown) + more


# --------------------------------------------------------------------------------------------
# The tests of one metric, in the order the engine meets them (detector.detect.decide)
# --------------------------------------------------------------------------------------------


def _num(x: Any) -> float | None:
    """``x`` as a finite float, or None (missing, not a number, NaN or infinite)."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _calls_passed(
    metric: str, n: float | None, k: float | None, policy: DetectionPolicy
) -> bool | None:
    """Enough calls (volume: expected) and, for the failure rate, failures to judge."""
    if metric == "volume":
        return _ge(n, policy.min_expected_calls)
    passed = _ge(n, policy.min_calls)
    if metric == "failure_rate":
        passed = None if passed is None else passed and bool(_ge(k, policy.min_failures))
    return passed


def _ge(x: float | None, need: float) -> bool | None:
    return None if x is None else x >= need


def _level(stats: dict[str, Any], metric: str, policy: DetectionPolicy) -> float:
    """The threshold the metric's corrected p-value met in this step: calibrated on the
    tenant's history when the run says so, else ``alpha``."""
    cal = stats.get("calibration", {})
    if cal.get("source") == "history":
        return float(cal["thresholds"][metric])
    return policy.alpha


def _corrected(p: float | None, n_tests: float) -> float | None:
    """The p-value once corrected for every test of an hour (what meets alpha)."""
    return None if p is None else min(1.0, p * max(n_tests, 1.0))


def _size_passed(
    metric: str, effect: float | None, ms: float | None, p: DetectionPolicy
) -> bool | None:
    """The change against the smallest one worth a page (decide._practical)."""
    if effect is None:
        return None
    if metric == "failure_rate":
        return effect >= p.min_failure_points
    if metric == "duration":
        return effect >= p.min_duration_rel and ms is not None and ms >= p.min_duration_ms
    drop, rise = effect <= -p.min_volume_drop, effect >= p.min_volume_rise
    return {"drop": drop, "rise": rise}.get(p.volume_direction, drop or rise)


def _gate(code: int) -> str:
    """The gate code of a reason code ("" for 0: nothing deviated)."""
    return GATE_REASONS[code]


def _metric_verdict(res: Any, row: int, col: int, m: int, policy: DetectionPolicy) -> MetricVerdict:
    """Every test of metric ``m`` for partition ``row`` at bucket column ``col`` of ``res``.

    A bucket that was no candidate (no span nominally significant, no forest flag) gets no
    tests: the engine measures the rest only where a gate looks, so there is nothing more.
    """
    metric = METRIC_NAMES[m]
    reasons = res.debug["reasons"]
    found = MetricVerdict(metric, _gate(int(reasons[row, m, col])))
    found.furthest_gate = _gate(int(reasons[row, m].max()) if reasons.shape[2] else 0)
    found.timeline = _timeline(reasons[row, m], res.debug["times"], res.window[0])
    if not found.gate:
        return found
    ev = res.debug["evidence"]
    at = (row, m, col)
    found.n_tests = float(res.stats.get("multiplicity", {}).get(metric, 1.0))
    found.failures = _num(ev.k[at]) if metric == "failure_rate" else None
    found.calls, found.p_value = _num(ev.n[at]), _num(ev.p[at])
    found.effect, found.effect_ms = _num(ev.effect[at]), _num(ev.effect_ms[at])
    found.corrected_p_value = _corrected(found.p_value, found.n_tests)
    found.alpha = _level(res.stats, metric, policy)
    found.checks = [
        Check("history", bool(res.debug["baselines"].has_history[row])),
        Check("calls", _calls_passed(metric, found.calls, found.failures, policy)),
        Check(
            "chance",
            None if found.corrected_p_value is None else found.corrected_p_value <= found.alpha,
        ),
        Check("size", _size_passed(metric, found.effect, found.effect_ms, policy)),
        *_late_gates(found.gate, fleet=bool(res.debug["parts"].is_fleet[row])),
    ]
    if _held(res.debug, row, m, col):
        # Kept open by hold.py: the correction is for opening an alert, not following one.
        found.held = True
        found.checks = [
            c if c.code != "chance" or c.passed else Check("chance", None) for c in found.checks
        ]
        found.checks.append(Check("held", True))
    kept = res.debug.get("kept")
    if kept is not None and kept[row, m, col]:
        # An open operation alert kept from one version's attribution (hold.py).
        found.checks = [
            c if c.code != "explained_by_version" else Check(c.code, None) for c in found.checks
        ]
        found.checks.append(Check("kept_attribution", True))
    found.value, found.usual = _num(ev.observed[at]), _num(ev.expected[at])
    if metric == "duration":
        history, applied = res.debug.get("tail", (None, None))
        tail = history is not None and tail_used(history, applied, row, col) is not None
        found.part = "tail" if tail else "typical"
    span = _num(ev.span[at])
    found.span_buckets = None if span is None else int(span)
    return found


def _held(debug: dict[str, Any], row: int, m: int, col: int) -> bool:
    """The engine kept partition ``row``'s open alert of metric ``m`` open at column ``col``
    (hold.py): its since-rollout failure test (failure rate) or tail test (duration)."""
    held = debug.get("held")
    if held is None or m not in (Metric.FAILURE_RATE, Metric.DURATION):
        return False
    rows = debug["rollout"][0].rows if m == Metric.FAILURE_RATE else debug["tail"][0].counts.rows
    mask = held[0] if m == Metric.FAILURE_RATE else held[1]
    hit = np.flatnonzero(rows == row)
    return bool(len(hit) and mask[hit[0], col])


#: The gates after the four tests, in the order decide meets them.
_LATE_GATES = ("not_persistent", "explained_by_fleet", "explained_by_version")


def _late_gates(gate: str, *, fleet: bool) -> list[Check]:
    """Persistence and attribution, for a candidate that reached them: failed at ``gate``,
    passed before it; nothing when an earlier test stopped it. A version is checked against
    its operation, the operation (``fleet``) against its versions."""
    skip = "explained_by_fleet" if fleet else "explained_by_version"
    gates = [g for g in _LATE_GATES if g != skip]
    if gate != "anomaly" and gate not in gates:
        return []
    out: list[Check] = []
    for code in gates:
        if code == gate:
            return [*out, Check(code, False)]
        out.append(Check(code, True))
    return out


def _timeline(codes: Any, times: Any, start: datetime) -> list[TimelineRun]:
    """The judged buckets of the step, runs of one gate merged."""
    out: list[TimelineRun] = []
    for code, t in zip(codes.tolist(), times, strict=True):
        t = t.to_pydatetime()
        if t < start:
            continue  # look-back buckets before the step: judged by the run before
        gate = _gate(int(code))
        if out and out[-1].gate == gate:
            out[-1] = TimelineRun(out[-1].first, t, gate)
        else:
            out.append(TimelineRun(t, t, gate))
    return out


def _covering(
    anomalies: Sequence[Anomaly], operation: str, version: str | None, metric: str, at: datetime
) -> Anomaly | None:
    for a in anomalies:
        if (a.operation_name, a.sdk_version, a.metric) == (operation, version, metric) and (
            a.window_start <= at < a.window_end
        ):
            return a
    return None


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    """What :func:`explain` is asked about: ``operation``/``sdk_version`` (None: the fleet) at
    ``at``, for ``metric``, one of :data:`METRIC_CHOICES` (None: all three)."""

    operation: str
    sdk_version: str | None
    at: datetime
    metric: str | None = None


@dataclass(frozen=True)
class Bookkeeping:
    """The alerts' bookkeeping :func:`explain` reports the lifecycle from: their state, the
    silences, the acknowledgements by fingerprint, and ``now`` (None: the time asked about)."""

    alert_state: AlertState | None = None
    silences: Sequence[Silence] = ()
    acks: dict[str, Any] | None = None
    now: datetime | None = None


def explain(
    history: Callable[[datetime, datetime], BucketAggregates],
    *,
    question: Question,
    policy: DetectionPolicy,
    step: timedelta,
    context: StepContext | None = None,
    engine_state: EngineState | None = None,
    alerts: Bookkeeping = Bookkeeping(),
) -> Explanation:
    """Judge the step holding ``question.at`` again and explain the partition asked about there.

    ``history(start, end)`` returns the stored buckets in ``[start, end)``; ``step`` is the
    scheduled runs' step and ``context`` their delay and maintenance windows (None: no delay,
    no maintenance). Raises ConfigError (the CLI's exit 2) when the store holds nothing for
    that step, or not that operation or version.
    """
    operation, sdk_version = question.operation, question.sdk_version
    at, metric = question.at, question.metric
    window = _step_of(at, step, policy.bucket)
    res = _judge(history, window, policy, context=context, state=engine_state or EngineState())
    if "parts" not in res.debug:
        raise ConfigError(
            f"no stored history for {iso_z(window[0])} .. {iso_z(window[1])}:"
            " nothing was judged then (see `acs-detector status` for what the store holds)"
        )
    row = _row(res.debug["parts"], operation, sdk_version)
    col = _column(res.debug["times"], at)
    chosen = [METRIC_CHOICES[metric]] if metric else list(METRIC_NAMES)
    verdicts = []
    for name in chosen:
        if name == "volume" and sdk_version is not None and policy.volume_scope == "fleet":
            verdicts.append(MetricVerdict(name, "", judged=False))
            continue
        mv = _metric_verdict(res, row, col, METRIC_NAMES.index(name), policy)
        mv.alert = _covering(res.anomalies, operation, sdk_version, name, at)
        verdicts.append(mv)
    first = window[0] + (at - window[0]) // policy.bucket * policy.bucket
    bucket = (first, first + policy.bucket)
    found = Explanation(operation, sdk_version, at, bucket, window, verdicts, policy)
    found.lifecycle = _lifecycle(
        found, alerts.alert_state, alerts.silences, alerts.acks or {}, alerts.now or at
    )
    return found


def _column(times: Any, at: datetime) -> int:
    """The column of the bucket holding ``at`` in the engine's cube times."""
    col = bisect.bisect_right([t.to_pydatetime() for t in times], at) - 1
    if col < 0:
        raise ConfigError(f"{iso_z(at)} is before the judged buckets")
    return col


def _lifecycle(
    found: Explanation,
    state: AlertState | None,
    silences: Sequence[Silence],
    acks: dict[str, Any],
    now: datetime,
) -> list[LifecycleEntry]:
    """The alert's bookkeeping now, per metric explained: firing, acknowledged, silenced."""
    from detector.anomaly import fingerprint_of

    out = []
    for mv in found.metrics:
        fp = fingerprint_of(found.operation, found.sdk_version, mv.metric)
        rec = state.records.get(fp) if state is not None else None
        if rec is not None and rec.status != "inactive":
            out.append(LifecycleEntry(mv.metric, rec.status, rec.started_at or None))
        ack = acks.get(fp)
        if ack is not None:
            out.append(LifecycleEntry(mv.metric, "acknowledged", ack.at, ack.by or ""))
        for s in silences:
            if s.active(now) and s.matches(fp, rec.severity if rec else None):
                out.append(LifecycleEntry(mv.metric, "silenced", s.ends_at, s.id))
    return out
