"""The detection engine: bucket history in, gated anomalies with reasons out.

Consumes :class:`~detector.schema.BucketAggregates` (the window to judge plus the trailing
baseline), the maintenance windows, the engine's previous state (spans that alerted) and a
:class:`DetectionPolicy`; produces a :class:`DetectionResult`: the anomalies that passed every
gate (:class:`~detector.anomaly.Anomaly`, one per partition, metric and run of consecutive
alerting buckets), every candidate with the reason it stopped at (JSON-able, for the run report),
statistics and timings, and the updated engine state.

Stages (each a pure function of its inputs; the only side effect is the optional model store)::

    with_fleet -> compute_baselines -> build_cube -> bucket_features / span_evidence
               -> PartitionScorer (fit on baseline buckets or load) -> decide -> explain

Deterministic: the same history, window, policy (seed), state and ``now`` give the same result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import special

from detector.anomaly import Anomaly
from detector.detect import calibrate
from detector.detect.baseline import (
    FLEET,
    Baselines,
    Partitions,
    column_codes,
    compute_baselines,
    exclusion_mask,
    with_fleet,
)
from detector.detect.candidate import Candidate
from detector.detect.decide import (
    GATE_REASONS,
    R_ANOM,
    Evidence,
    Multiplicity,
    decide,
    gates_but_significance,
    multiplicity,
    on_decide_scale,
)
from detector.detect.features import (
    FEATURE_METRIC,
    FEATURE_NAMES,
    Cube,
    SpanEvidence,
    apply_sequential,
    bucket_features,
    build_cube,
    expected_calls,
    sequential_details,
    span_evidence,
    true_runs,
)
from detector.detect.forest import (
    CalibrationRows,
    forest_evidence,
    forest_spans,
    partition_labels,
)
from detector.detect.hold import hold_open, keep_attribution
from detector.detect.policy import METRIC_NAMES, DetectionPolicy, Metric
from detector.detect.rollout import Applied, Rollout, apply_rollout, first_buckets, rollout_history
from detector.detect.stop import (
    AlertBucket,
    Stop,
    find_stops,
    fold_buckets,
    fold_into_stops,
    stop_anomaly,
)
from detector.detect.tail import TailApplied, TailRollout, apply_tail, tail_history, tail_used
from detector.errors import ModelMismatchError
from detector.explain_text import AlertNumbers, combination_text, reason_text
from detector.schema import BucketAggregates, bin_value
from detector.store.engine_state import EngineState

if TYPE_CHECKING:  # scikit-learn and skops load in ~2.5 s: imported when a forest is needed
    from detector.detect.score import PartitionScorer
    from detector.store.models import ModelStore

__all__ = [
    "DetectionPolicy",
    "DetectionResult",
    "EngineState",
    "StepContext",
    "StepProgress",
    "detect",
    "detect_steps",
    "plan_steps",
]

MODEL_NAME = "forest"


@dataclass
class DetectionResult:
    """What one :func:`detect` call found.

    ``anomalies``: the alert candidates that passed every gate. ``candidates``: every
    (partition, metric) that deviated in the window, with the furthest gate it reached
    (``reason``) and the evidence behind it (:class:`Candidate`). ``stats``: counts and timings.
    ``state``: the engine state to persist for the next run (alerted spans added).
    """

    anomalies: list[Anomaly]
    candidates: list[Candidate]
    stats: dict[str, Any]
    state: EngineState
    window: tuple[datetime, datetime]
    alert_buckets: list[tuple[str, str | None, str, datetime]] = field(default_factory=list)
    #: Per-bucket internals for tests and tuning (reasons, evidence, scores); not serialised.
    debug: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "window": [_iso(self.window[0]), _iso(self.window[1])],
            "anomalies": [a.to_json() for a in self.anomalies],
            "candidates": [c.to_json() for c in self.candidates],
            "stats": self.stats,
        }


def _utc(ts: datetime | pd.Timestamp) -> pd.Timestamp:
    t = pd.Timestamp(ts)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _iso(ts: datetime | pd.Timestamp) -> str:
    return _utc(ts).strftime("%Y-%m-%dT%H:%M:%SZ")


def _py(ts: pd.Timestamp) -> datetime:
    return _utc(ts).to_pydatetime().astimezone(UTC)


def detect(
    history: BucketAggregates,
    *,
    window: tuple[datetime, datetime],
    policy: DetectionPolicy,
    now: datetime,
    maintenance: Sequence[tuple[datetime, datetime, str | None]] = (),
    model_store: ModelStore | None = None,
    state: EngineState | None = None,
) -> DetectionResult:
    """Judge the buckets of ``window`` against baselines learnt from the history before it.

    Parameters
    ----------
    history
        Bucket aggregates covering at least ``[window_start - policy.baseline, window_end)``
        (more is ignored). ``hist`` is used for the p95 values shown in explanations; when it is
        empty a log-normal estimate is shown instead.
    window
        ``(start, end)`` UTC, half-open; snapped outwards to bucket boundaries.
    policy
        Every knob (see :class:`DetectionPolicy`).
    now
        The run's clock; buckets ending after it are not judged (their data may be incomplete).
    maintenance
        ``(start, end, operation or None)`` windows: no alerts inside, kept out of baselines.
    model_store
        Where the fitted forest is loaded from / saved to. None: fit in memory every call.
    state
        The previous run's :class:`EngineState` (spans that alerted, kept out of baselines).

    Returns
    -------
    DetectionResult
    """
    clock = _Stopwatch()
    policy.validate()
    frame = _frame(window, policy)
    state = (state or EngineState()).copy()
    stats = _rows(history, frame)  # (a copy of millions of rows)
    result_stats: dict[str, Any] = {"window": [_iso(frame.ws), _iso(frame.we)], "now": _iso(now)}
    if stats.empty:
        result_stats.update(partitions=0, candidates={}, anomalies=0, timings={})
        return DetectionResult([], [], result_stats, state, frame.window)
    parts = Partitions.from_frame(stats)
    clock.lap("prepare")
    base = _baselines(stats, parts, frame, policy, maintenance, state)
    run = _Run(policy, frame, parts, base, state, now, maintenance)
    clock.lap("baseline")
    cubes = _cubes(run, stats)
    clock.lap("features")
    forest = _forest(run, stats, cubes, model_store)
    clock.lap("score")
    roll, first = _rollout(run, stats, cubes)
    tail = _tail(run, history.hist, first)
    clock.lap("rollout")  # new builds' histories since their rollout (failures, tail)
    # The row frame (with fleet rows) is not needed past this point: freeing it before the
    # span evidence and the decisions keeps the peak of a 10k-partition run under 1 GiB.
    del stats

    tested = _evidence(run, cubes, forest, (roll, tail), first)
    clock.lap("evidence")
    decided = _decide(run, cubes, forest, tested)
    clock.lap("decide")
    anomalies, alert_buckets = _explain(run, tested, decided, cubes, forest, history.hist)
    if policy.tenant_stop:
        anomalies, alert_buckets = _fold_tenant_stops(run, anomalies, alert_buckets, cubes.full)
    candidates = _candidates(decided.reasons, tested.ev, forest.scores, cubes.cube, parts, base)
    clock.lap("explain")
    _record_suspects(
        decided.reasons, tested.ev, cubes.cube, parts, state, policy, tested.mult.n_tests
    )
    clock.lap("state")
    state.prune(
        _py(frame.ws - pd.Timedelta(policy.baseline) - frame.bucket * frame.lookback),
        _py(frame.ws - pd.Timedelta(policy.suspect_horizon)),
    )
    clock.total()

    result_stats.update(_summary(run, cubes, forest, tested, decided, anomalies, candidates))
    result_stats["timings"] = {k: round(v, 4) for k, v in clock.timings.items()}
    debug = _debug(run, cubes, forest, tested, decided)
    return DetectionResult(
        anomalies, candidates, result_stats, state, frame.window, alert_buckets, debug
    )


# --------------------------------------------------------------------------------------------
# The stages of detect
# --------------------------------------------------------------------------------------------


class _Stopwatch:
    """Seconds per stage of one detect call, for the run report's timings."""

    def __init__(self) -> None:
        self.t0 = self.t = time.perf_counter()
        self.timings: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        """Record the seconds since the last lap (or start) as ``stage``'s; start the next."""
        self.timings[stage] = time.perf_counter() - self.t
        self.t = time.perf_counter()

    def total(self) -> None:
        """Record the seconds since the call began as ``total``."""
        self.timings["total"] = time.perf_counter() - self.t0


@dataclass(frozen=True)
class _Frame:
    """The run's time frame: judged ``[ws, we)``, where the baseline and the cube start."""

    bucket: pd.Timedelta
    ws: pd.Timestamp
    we: pd.Timestamp
    lookback: int  # buckets before ws the persistence and the longest span reach back
    base_start: pd.Timestamp
    cube_start: pd.Timestamp

    @property
    def window(self) -> tuple[datetime, datetime]:
        """The judged window, as the result reports it."""
        return _py(self.ws), _py(self.we)

    @property
    def cube_offset(self) -> int:
        """Baseline buckets before the cube's first."""
        return int((self.cube_start - self.base_start) / self.bucket)


@dataclass(frozen=True)
class _Run:
    """What every stage after the baselines reads: policy, frame, partitions and baselines."""

    policy: DetectionPolicy
    frame: _Frame
    parts: Partitions
    base: Baselines
    state: EngineState
    now: datetime
    maintenance: Sequence[tuple[datetime, datetime, str | None]]


@dataclass(frozen=True)
class _Cubes:
    """The evidence cube: ``full`` (look-back and judged buckets), its last ``n_last`` buckets
    (``cube``, ``maint``, ``feats``), the features of the last ``n_long`` (the forest's spans
    reach further back) and the single-bucket |z| inside maintenance (None: none there)."""

    full: Cube
    cube: Cube
    maint: np.ndarray
    raw_z: np.ndarray | None
    feats_long: np.ndarray
    feats: np.ndarray
    n_last: int
    n_long: int


@dataclass(frozen=True)
class _ForestRun:
    """The forest's part: the scorer and its status, scores (P, K), flags routed to a metric
    (P, M, K) and its span p-values and spans (None without a calibrated forest)."""

    scorer: PartitionScorer | None
    status: dict[str, Any]
    scores: np.ndarray
    flag: np.ndarray
    p: tuple[np.ndarray, np.ndarray] | None


@dataclass(frozen=True)
class _Tested:
    """The span evidence on the scale decide reads, and the families it was corrected for."""

    ev: SpanEvidence
    testable: np.ndarray  # (P, M) the metric can be tested on the partition
    judged: np.ndarray  # (K,) the bucket is in the window (not look-back)
    active: np.ndarray  # (P,) the partition has calls in the window
    mult: Multiplicity  # the run's corrections (decide.multiplicity)
    roll: Rollout
    rolled: Applied
    tail: TailRollout  # new builds whose tail since their rollout is tested (tail.py)
    tailed: TailApplied


@dataclass(frozen=True)
class _Decided:
    """Reason codes (P, M, K), the Evidence decide read, and where the forest alone alerted."""

    reasons: np.ndarray
    evidence: Evidence
    forest_only: np.ndarray
    calibration: calibrate.Calibration
    # (L, K) each, rollout's and tail's: where an open alert was held open (hold.py)
    held: tuple[np.ndarray, np.ndarray]
    kept: np.ndarray  # (P, M, K) operation alerts kept from a version's attribution (hold.py)


def _frame(window: tuple[datetime, datetime], policy: DetectionPolicy) -> _Frame:
    """Window and policy -> the run's frame (window snapped outwards to buckets)."""
    bucket = pd.Timedelta(policy.bucket)
    ws = _utc(window[0]).floor(bucket)
    we = _utc(window[1]).ceil(bucket)
    if we <= ws:
        raise ValueError(f"empty window {window}")
    lookback = (policy.persist_m - 1) + (max(policy.spans) - 1)
    base_start = ws - pd.Timedelta(policy.baseline)
    return _Frame(bucket, ws, we, lookback, base_start, ws - lookback * bucket)


def _rows(history: BucketAggregates, frame: _Frame) -> pd.DataFrame:
    """History -> its rows from the baseline start to the window end, with fleet rows."""
    raw = history.stats
    sel = (raw["bucket_start"] >= frame.base_start) & (raw["bucket_start"] < frame.we)
    return with_fleet(raw if sel.all() else raw.loc[sel])


def _baselines(
    stats: pd.DataFrame,
    parts: Partitions,
    frame: _Frame,
    policy: DetectionPolicy,
    maintenance: Sequence[tuple[datetime, datetime, str | None]],
    state: EngineState,
) -> Baselines:
    """Rows -> baselines over the trailing window, maintenance and alerted spans left out."""
    return compute_baselines(
        stats,
        parts,
        start=_py(frame.base_start),
        end=_py(frame.ws),
        policy=policy,
        maintenance=maintenance,
        alerted=state.excluded(),
    )


def _cubes(run: _Run, stats: pd.DataFrame) -> _Cubes:
    """Rows -> the dense cube, maintenance zeroed out, and the bucket feature vectors."""
    frame, policy, parts, base = run.frame, run.policy, run.parts, run.base
    full = build_cube(
        stats, parts, start=_py(frame.cube_start), end=_py(frame.we), bucket=frame.bucket
    )
    # Evidence is needed for the judged buckets plus the M-1 before them (persistence); the
    # rest of the cube is look-back feeding the trailing spans.
    n_judged = int(np.asarray(full.times >= frame.ws).sum())
    K = min(len(full.times), n_judged + policy.persist_m - 1)
    # Maintenance buckets carry no evidence at all: spans skip them, so nothing fires on a
    # maintenance window's aftermath either.
    maint_full = _maintenance_mask(full.times, parts, run.maintenance)
    raw_z = None
    if maint_full[:, -K:].any():
        # What deviated inside maintenance (reported as such), before it is zeroed out.
        raw = np.abs(bucket_features(full.tail(K), parts, base))
        raw_z = np.stack(
            [raw[..., np.asarray(FEATURE_METRIC) == m].max(axis=-1) for m in range(3)], axis=1
        )
        raw_z[:, 2][~parts.is_fleet] = 0.0
    full.exclude(maint_full)
    # The forest's span test reads the look-back buckets' vectors too.
    L = min(len(full.times), K + max(forest_spans(policy.spans)) - 1) if policy.forest else K
    feats_long = bucket_features(full.tail(L), parts, base)
    return _Cubes(
        full, full.tail(K), maint_full[:, -K:], raw_z, feats_long, feats_long[:, -K:], K, L
    )


def _forest(
    run: _Run, stats: pd.DataFrame, cubes: _Cubes, model_store: ModelStore | None
) -> _ForestRun:
    """Rows and cube -> the forest (fitted, loaded or off), its scores, flags and p-values."""
    policy, parts = run.policy, run.parts
    scorer: PartitionScorer | None = None
    status: dict[str, Any] = {"action": "off"}
    if policy.forest:
        scorer, status = _get_scorer(
            stats,
            parts,
            run.base,
            policy,
            ws=run.frame.ws,
            base_start=run.frame.base_start,
            now=run.now,
            model_store=model_store,
        )
    scores, flag = _score(scorer, cubes.feats, cubes.cube, policy)
    calls = cubes.full.calls[:, -cubes.n_long :]
    forest_p = _forest_p(scorer, cubes.feats_long, calls, parts, policy, cubes.n_last)
    return _ForestRun(scorer, status, scores, flag, forest_p)


def _rollout(run: _Run, stats: pd.DataFrame, cubes: _Cubes) -> tuple[Rollout, np.ndarray]:
    """Rows and cube -> new builds' whole history since their first call, and (P,) the first
    bucket of every partition counted from the baseline start."""
    frame = run.frame
    n_cal = int((frame.ws - frame.base_start) / frame.bucket)
    first = first_buckets(run.base, cubes.full.calls, frame.cube_offset, n_cal)
    roll = rollout_history(
        stats,
        run.parts,
        run.base,
        run.policy,
        start=frame.base_start,
        end=frame.we,
        first=first,
        maintenance=run.maintenance,
    )
    return roll, first


def _tail(run: _Run, hist: pd.DataFrame | None, first: np.ndarray) -> TailRollout:
    """Histogram -> new builds' calls and slow calls since their rollout (tail.py)."""
    frame = run.frame
    times = pd.date_range(frame.base_start, frame.we, freq=frame.bucket, inclusive="left")
    n_base = int((frame.ws - frame.base_start) / frame.bucket)
    return tail_history(
        hist,
        run.parts,
        run.base,
        run.policy,
        times=times,
        n_base=n_base,
        first=first,
        maintenance=run.maintenance,
    )


def _evidence(
    run: _Run,
    cubes: _Cubes,
    forest: _ForestRun,
    new: tuple[Rollout, TailRollout],
    first: np.ndarray,
) -> _Tested:
    """Cube, forest flags and new builds -> span, sequential and since-rollout evidence
    (failures and tail), its p-values on the scale decide reads (p * n_tests <= alpha)."""
    policy, parts, base = run.policy, run.parts, run.base
    roll, tail = new
    # Fields beyond p are needed where a gate looks (p <= alpha, found by span_evidence itself)
    # and at the candidates p does not make: forest flags and maintenance buckets.
    keep = forest.flag | cubes.maint[:, None, :]
    if forest.p is not None:
        keep |= (forest.p[0] <= policy.alpha)[:, None, :]
    # First calls in the cube's columns (a new build's span may reach back before it).
    first_col = first - run.frame.cube_offset
    # Expected calls read every operation: computed once for both tests (a peak of the run).
    e = expected_calls(base, cubes.full.slots, cubes.full, parts)
    ev = span_evidence(
        cubes.full, parts, base, policy, last=cubes.n_last, keep=keep, first=first_col, expected=e
    )
    del keep
    cube = cubes.cube
    judged = np.asarray(cube.times >= run.frame.ws)
    testable = np.zeros((len(cube.calls), len(METRIC_NAMES)), dtype=bool)
    testable[:, 0] = cube.dur_n.sum(axis=1) > 0
    testable[:, 1] = True
    testable[:, 2] = policy.volume_judged(parts.is_fleet)
    active = cube.calls[:, judged].sum(axis=1) > 0
    mult = multiplicity(
        testable, active, run.frame.bucket.total_seconds(), policy, len(roll), len(tail)
    )
    on_decide_scale(ev.p, mult)
    # Evidence accumulated over buckets (thin partitions), on the same scale.
    apply_sequential(
        ev,
        cubes.full,
        parts,
        base,
        policy,
        n_tested=mult.n_tested,
        on_scale=mult.on_scale,
        expected=e,
    )
    del e
    rolled = apply_rollout(
        ev,
        roll,
        base,
        parts,
        policy,
        times=cube.times,
        alpha=mult.roll_alpha,
        on_scale=mult.on_scale[Metric.FAILURE_RATE],
    )
    tailed = apply_tail(
        ev,
        tail,
        policy,
        fleet_of=parts.fleet_of,
        times=cube.times,
        alpha=mult.tail_alpha,
        on_scale=mult.on_scale[Metric.DURATION],
    )
    return _Tested(ev, testable, judged, active, mult, roll, rolled, tail, tailed)


def _decide(run: _Run, cubes: _Cubes, forest: _ForestRun, tested: _Tested) -> _Decided:
    """Evidence, forest p-values and earlier alerts -> a reason code per bucket (decide)."""
    ev, cube, parts, state, bucket = tested.ev, cubes.cube, run.parts, run.state, run.frame.bucket
    cal = calibrate.thresholds(state.calibration, _py(run.frame.ws), run.policy, state.alerted)
    last_end = _last_alert_end(state, parts, cube.times, bucket)
    evidence = Evidence(
        **ev.test_fields(),
        forest=forest.flag,
        is_fleet=parts.is_fleet,
        op_index=parts.op_index,
        has_history=run.base.has_history,
        testable=tested.testable,
        maintenance=cubes.maint,
        judged=tested.judged,
        n_tests=tested.mult.n_tests,
        raw_z=cubes.raw_z,
        last_alert_end=last_end,
        last_version_dev_end=_last_version_dev_end(state, parts, cube.times, bucket),
        alpha_scale=_alpha_scale(run.base, run.policy),
        forest_p=None if forest.p is None else forest.p[0],
        forest_n_tests=tested.mult.forest_tests,
        alpha_m=cal.alpha,
    )
    bucket_end = (cube.times + bucket).tz_convert("UTC").tz_localize(None).to_numpy()
    forest_only = np.zeros(ev.p.shape, dtype=bool)
    reasons = decide(
        evidence, policy=run.policy, now=run.now, bucket_end=bucket_end, forest_out=forest_only
    )
    judged = tested.judged & (bucket_end <= np.datetime64(_naive(_utc(run.now)), "ns"))
    if run.policy.calibrate:
        minima, ops = _calibration_minima(evidence, run.policy, run.parts)
        times = [_py(t) for t in cube.times[judged]]
        calibrate.record(state.calibration, times, minima[:, judged], ops[:, judged])
    # An open alert of a since-rollout test stays open while its calls are too few to tell;
    # an operation's open alert keeps its attribution until one of its versions alerts.
    # Open at the window's start: the partition's last earlier alert ran to its first column.
    first_judged = np.flatnonzero(tested.judged)
    open_before = last_end >= (first_judged[0] if len(first_judged) else np.inf)
    held = hold_open(reasons, (tested.rolled.hold, tested.tailed.hold), open_before, judged)
    kept = keep_attribution(reasons, parts.op_index, parts.is_fleet, open_before, judged)
    return _Decided(reasons, evidence, forest_only, cal, (held[0], held[1]), kept)


def _calibration_minima(
    ev: Evidence, policy: DetectionPolicy, parts: Partitions
) -> tuple[np.ndarray, np.ndarray]:
    """Evidence -> (M, K) the smallest ``p x n_tests`` among the buckets that passed every
    gate but significance (1 where none did), and (M, K) the operation it came from."""
    P, M, K = ev.p.shape
    ok = gates_but_significance(ev, policy)
    scaled = np.where(ok, ev.p * np.asarray(ev.n_tests, dtype="float64").reshape(1, M, 1), 1.0)
    if not P:
        return np.ones((M, K)), np.full((M, K), "", dtype=object)
    best = scaled.argmin(axis=0)
    ops = np.asarray(parts.operations, dtype=object)[ev.op_index[best]]
    return np.clip(scaled.min(axis=0), 0.0, 1.0), ops


def _summary(
    run: _Run,
    cubes: _Cubes,
    forest: _ForestRun,
    tested: _Tested,
    decided: _Decided,
    anomalies: list[Anomaly],
    candidates: list[Candidate],
) -> dict[str, Any]:
    """The run's counts for the report (every stats key but window, now and timings)."""
    parts, base = run.parts, run.base
    counts: dict[str, int] = {}
    judged_reasons = decided.reasons[:, :, tested.judged]
    for code, name in enumerate(GATE_REASONS):
        if code:
            c = int((judged_reasons == code).sum())
            if c:
                counts[name] = c
    kinds, kind_counts = np.unique(base.kind.astype(str), return_counts=True)
    return dict(
        partitions=int(cubes.cube.calls.shape[0]),
        versions=int((~parts.is_fleet).sum()),
        operations=len(parts.operations),
        buckets_judged=int(tested.judged.sum()),
        candidate_buckets=counts,
        candidates=len(candidates),
        anomalies=len(anomalies),
        baseline_kinds={str(k): int(c) for k, c in zip(kinds, kind_counts, strict=True)},
        provisional_partitions=int(base.provisional.sum()),
        tests_per_metric={
            m: int(n) for m, n in zip(METRIC_NAMES, tested.mult.n_tested, strict=True)
        },
        multiplicity={m: float(n) for m, n in zip(METRIC_NAMES, tested.mult.n_tests, strict=True)},
        rollout_tests=len(tested.roll),  # new builds in the since-rollout family (DetectionPolicy)
        tail_tests=len(tested.tail),  # new builds whose tail since their rollout is tested
        # buckets where an open since-rollout alert was kept open for want of calls
        held_buckets=int(sum(h.sum() for h in decided.held)),
        tenant_stops=sum(a.details.get("scope") == "tenant" for a in anomalies),
        forest=forest.status,
        calibration=decided.calibration.to_json(run.policy.alpha),
    )


def _debug(
    run: _Run, cubes: _Cubes, forest: _ForestRun, tested: _Tested, decided: _Decided
) -> dict[str, Any]:
    """The stages' outputs -> DetectionResult.debug (per-bucket internals for tests, tuning)."""
    return {
        "reasons": decided.reasons,
        "evidence": tested.ev,
        "scores": forest.scores,
        "parts": run.parts,
        "times": cubes.cube.times,
        "baselines": run.base,
        "features": cubes.feats,
        "rollout": (tested.roll, tested.rolled),
        "tail": (tested.tail, tested.tailed),
        "held": decided.held,  # (rollout's, tail's) where hold.py kept an alert open
        "kept": decided.kept,  # where an operation's open alert kept its attribution
        "forest_p": decided.evidence.forest_p,
    }


# --------------------------------------------------------------------------------------------
# Windows of any length: judged in steps
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepContext:
    """What every step of a run is judged with besides the policy and the state: the data
    ``delay`` (a step's clock is ``min(now, step_end + delay)``), the ``maintenance`` windows
    and the ``model_store`` its forest is loaded from and saved to (see :func:`detect`)."""

    delay: timedelta = timedelta(0)
    maintenance: Sequence[tuple[datetime, datetime, str | None]] = ()
    model_store: ModelStore | None = None


@dataclass(frozen=True)
class StepProgress:
    """Where :func:`detect_steps` is: ``done`` of ``total`` steps, the last one judged."""

    done: int
    total: int
    start: datetime
    end: datetime
    anomalies: int  # found so far
    elapsed_s: float

    @property
    def eta_s(self) -> float:
        """Seconds left at the pace so far."""
        return self.elapsed_s / max(self.done, 1) * (self.total - self.done)


def plan_steps(
    window: tuple[datetime, datetime],
    step: timedelta,
    *,
    bucket: timedelta,
    data: np.ndarray | None = None,
    reach: timedelta = timedelta(0),
) -> list[tuple[datetime, datetime]]:
    """The steps a window is judged in: ``[start, end)`` pairs on multiples of ``step`` from
    the epoch (as hourly scheduled runs would end), cut by the window snapped to buckets.

    With ``data`` (sorted ``datetime64[ns]`` bucket starts that hold rows), a step with no
    data in ``[start - reach, end)`` is left out: with ``reach`` = the baseline span, such a
    step has nothing to judge and nothing to learn from, so an empty stretch costs nothing.
    """
    if step <= timedelta(0) or step % bucket:
        raise ValueError(f"step {step} must be a positive multiple of the bucket {bucket}")
    b = pd.Timedelta(bucket)
    start, end = _utc(window[0]).floor(b), _utc(window[1]).ceil(b)
    width = pd.Timedelta(step)
    times = None if data is None else np.asarray(data, dtype="datetime64[ns]")
    out: list[tuple[datetime, datetime]] = []
    s = start
    while s < end:
        e = min(s.floor(width) + width, end)
        if times is not None:
            lo = np.datetime64(_naive(s - pd.Timedelta(reach)), "ns")
            i = int(np.searchsorted(times, lo, side="left"))
            if i == len(times):
                break  # no data from here on
            nxt = pd.Timestamp(times[i], tz="UTC")
            if nxt >= e:  # jump to the step holding the next data (it may reach back to it)
                s = max(nxt.floor(width), e)
                continue
        out.append((_py(s), _py(e)))
        s = e
    return out


def _naive(ts: pd.Timestamp) -> pd.Timestamp:
    return ts.tz_convert("UTC").tz_localize(None)


def detect_steps(
    history: Callable[[datetime, datetime], BucketAggregates],
    *,
    window: tuple[datetime, datetime],
    steps: Sequence[tuple[datetime, datetime]],
    policy: DetectionPolicy,
    now: datetime,
    context: StepContext = StepContext(),
    state: EngineState | None = None,
    progress: Callable[[StepProgress], None] | None = None,
) -> DetectionResult:
    """Judge ``steps`` one after the other, each as the scheduled run ending it would have.

    One code path for every window: a scheduled run is one step, a catch-up or a manual rerun
    many. Each step is :func:`detect` over ``history(step_start - baseline, step_end)`` with the
    run's clock at ``min(now, step_end + context.delay)`` (forest refits follow that clock, as
    they do run by run), ``context``'s maintenance windows and model store, and the engine
    state the previous step left (alerted and suspect buckets of earlier steps stay out of
    later baselines). Only the step and its baseline are asked of ``history``, so memory
    follows the step, not the window.

    Returns one :class:`DetectionResult` for ``window``: every step's anomalies and alert
    buckets, candidates merged per (partition, metric) at their furthest gate, summed counts
    (``steps``, ``buckets_judged``, ``candidate_buckets``), and the final state. A single step
    returns that step's :func:`detect` result as it is.
    """
    state = (state or EngineState()).copy()

    def judge(s: datetime, e: datetime, state: EngineState) -> DetectionResult:
        return detect(
            history(s - policy.baseline, e),
            window=(s, e),
            policy=policy,
            now=min(now, e + context.delay),
            maintenance=context.maintenance,
            model_store=context.model_store,
            state=state,
        )

    if len(steps) == 1:
        one = judge(*steps[0], state)
        one.stats["steps"] = 1
        return one
    t0 = time.perf_counter()
    anomalies: list[Anomaly] = []
    alert_buckets: list[tuple[str, str | None, str, datetime]] = []
    merged: dict[tuple[str, str | None, str], Candidate] = {}
    totals = _StepTotals()
    for i, (s, e) in enumerate(steps):
        res = judge(s, e, state)
        state = res.state
        anomalies.extend(res.anomalies)
        alert_buckets.extend(res.alert_buckets)
        _merge_candidates(merged, res.candidates)
        totals.add(res.stats)
        if progress is not None:
            elapsed = time.perf_counter() - t0
            progress(StepProgress(i + 1, len(steps), s, e, len(anomalies), elapsed))
    stats = totals.to_json(window, now, len(merged), len(anomalies))
    stats["timings"]["total"] = round(time.perf_counter() - t0, 4)
    return DetectionResult(
        anomalies, list(merged.values()), stats, state, (window[0], window[1]), alert_buckets
    )


def _merge_candidates(
    into: dict[tuple[str, str | None, str], Candidate], found: list[Candidate]
) -> None:
    """One record per (partition, metric) over steps: the one at the furthest gate (the
    smaller p on a tie), with the bucket counts per reason summed."""
    rank = {name: i for i, name in enumerate(GATE_REASONS)}
    for c in found:
        key = (c.operation_name, c.sdk_version, c.metric)
        old = into.get(key)
        if old is None:
            into[key] = c
            continue
        counts = dict(old.buckets_by_reason)
        for k, v in c.buckets_by_reason.items():
            counts[k] = counts.get(k, 0) + v
        best = c if (rank[c.reason], -c.p_value) > (rank[old.reason], -old.p_value) else old
        into[key] = replace(best, buckets_by_reason=counts)


@dataclass
class _StepTotals:
    """What the steps of a window add up to, for the run report."""

    steps: int = 0
    buckets_judged: int = 0
    partitions: int = 0
    candidate_buckets: dict[str, int] = field(default_factory=dict)
    forest: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)  # the last step's thresholds

    def add(self, stats: dict[str, Any]) -> None:
        self.steps += 1
        self.calibration = stats.get("calibration", self.calibration)
        self.buckets_judged += int(stats.get("buckets_judged", 0))
        self.partitions = max(self.partitions, int(stats.get("partitions", 0)))
        for k, v in stats.get("candidate_buckets", {}).items():
            self.candidate_buckets[k] = self.candidate_buckets.get(k, 0) + int(v)
        action = (stats.get("forest") or {}).get("action")
        if action:
            self.forest[action] = self.forest.get(action, 0) + 1
        for k, v in stats.get("timings", {}).items():
            if k != "total":
                self.timings[k] = self.timings.get(k, 0.0) + float(v)

    def to_json(
        self, window: tuple[datetime, datetime], now: datetime, candidates: int, anomalies: int
    ) -> dict[str, Any]:
        return {
            "window": [_iso(window[0]), _iso(window[1])],
            "now": _iso(now),
            "steps": self.steps,
            "partitions": self.partitions,
            "buckets_judged": self.buckets_judged,
            "candidate_buckets": self.candidate_buckets,
            "candidates": candidates,
            "anomalies": anomalies,
            "forest": {"steps_by_action": self.forest},
            "calibration": self.calibration,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }


# --------------------------------------------------------------------------------------------
# Forest
# --------------------------------------------------------------------------------------------


def _training_vectors(
    stats: pd.DataFrame,
    parts: Partitions,
    base: Baselines,
    policy: DetectionPolicy,
    ws: pd.Timestamp,
    base_start: pd.Timestamp,
) -> tuple[np.ndarray, CalibrationRows, pd.Timestamp]:
    bucket = pd.Timedelta(policy.bucket)
    n_base = int((ws - base_start) / bucket)
    # As many trailing baseline buckets as keep the dense training cube near max_train_rows.
    n_train = int(np.clip(policy.max_train_rows // max(len(parts), 1), 12, max(n_base, 12)))
    start = max(ws - n_train * bucket, base_start)
    cube = build_cube(stats, parts, start=_py(start), end=_py(ws), bucket=bucket)
    X = bucket_features(cube, parts, base)[cube.calls > 0]
    p_idx, t_idx = np.nonzero(cube.calls > 0)
    groups, kinds = partition_labels(parts.operation, parts.version, parts.is_fleet)
    rows = CalibrationRows(groups[p_idx], kinds[p_idx], t_idx, forest_spans(policy.spans))
    if len(X) > policy.max_train_rows:
        rng = np.random.default_rng(policy.seed)
        keep = np.sort(rng.choice(len(X), policy.max_train_rows, replace=False))
        X, rows = X[keep], rows.take(keep)
    return X, rows, start


def _get_scorer(
    stats: pd.DataFrame,
    parts: Partitions,
    base: Baselines,
    policy: DetectionPolicy,
    *,
    ws: pd.Timestamp,
    base_start: pd.Timestamp,
    now: datetime,
    model_store: ModelStore | None,
) -> tuple[PartitionScorer | None, dict[str, Any]]:
    from detector.detect.score import PartitionScorer

    status: dict[str, Any] = {}
    config_hash = policy.config_hash()
    if model_store is not None:
        try:
            got = model_store.load(MODEL_NAME, feature_names=FEATURE_NAMES, config_hash=config_hash)
        except ModelMismatchError as exc:
            got = None
            status["refused"] = str(exc)
        if got is not None:
            scorer, meta = got
            if not meta.is_stale(now, policy.refit_every) and scorer.calibrated:
                status.update(action="loaded", fitted_at=meta.fitted_at)
                return scorer, status
            status["stale"] = meta.fitted_at
    X, rows, train_start = _training_vectors(stats, parts, base, policy, ws, base_start)
    if len(X) < 16:
        status.update(action="none", reason="too few baseline buckets to fit a forest")
        return None, status
    scorer = PartitionScorer(
        n_estimators=policy.n_estimators,
        max_samples=policy.max_samples,
        contamination=policy.contamination,
        random_state=policy.seed,
    ).fit(X, feature_names=FEATURE_NAMES, rows=rows)
    status.update(action="fitted", n_train=len(X), training=[_iso(train_start), _iso(ws)])
    if model_store is not None:
        model_store.save(
            MODEL_NAME,
            scorer,
            training_window=(_py(train_start), _py(ws)),
            config_hash=config_hash,
            now=now,
            baselines=base.to_frame(parts),
        )
        status["saved"] = True
    return scorer, status


def _score(
    scorer: PartitionScorer | None, feats: np.ndarray, cube: Cube, policy: DetectionPolicy
) -> tuple[np.ndarray, np.ndarray]:
    """Forest scores (P, T) (NaN = not scored) and the flag routed to a metric (P, M, T).

    Only buckets with calls and some |feature| >= ``forest_prefilter_z`` are scored: a vector
    with every deviation small is never isolated early, and skipping it keeps large runs fast.
    """
    P, T, _ = feats.shape
    scores = np.full((P, T), np.nan)
    flag = np.zeros((P, len(METRIC_NAMES), T), dtype=bool)
    if scorer is None:
        return scores, flag
    mask = (cube.calls > 0) & (np.abs(feats).max(axis=2) >= policy.forest_prefilter_z)
    if not mask.any():
        return scores, flag
    X = feats[mask]
    s = scorer.score_samples(X)
    scores[mask] = s
    hit = s >= scorer.threshold_
    # Route a flag to the metric of the feature that deviates most (relative to training spread).
    top = np.argmax(np.abs(X) / scorer.scale_[None, :].astype(np.float32), axis=1)
    metric = np.asarray(FEATURE_METRIC)[top]
    pi, ti = np.nonzero(mask)
    flag[pi[hit], metric[hit], ti[hit]] = True
    return scores, flag


def _forest_p(
    scorer: PartitionScorer | None,
    feats: np.ndarray,
    calls: np.ndarray,
    parts: Partitions,
    policy: DetectionPolicy,
    last: int,
) -> tuple[np.ndarray, np.ndarray] | None:
    """The forest's span p-values and spans, (P, last) each; None without a calibrated forest."""
    if scorer is None or not scorer.calibrated:
        return None
    return forest_evidence(
        scorer,
        feats,
        calls,
        partition_labels(parts.operation, parts.version, parts.is_fleet)[1],
        spans=forest_spans(policy.spans),
        last=last,
    )


# --------------------------------------------------------------------------------------------
# Explanations
# --------------------------------------------------------------------------------------------


def _maintenance_mask(
    times: pd.DatetimeIndex,
    parts: Partitions,
    maintenance: Sequence[tuple[datetime, datetime, str | None]],
) -> np.ndarray:
    mask = np.zeros((len(parts), len(times)), dtype=bool)
    for s, e, op in maintenance:
        cols = np.asarray((times >= _utc(s)) & (times < _utc(e)))
        rows = np.ones(len(parts), bool) if not op else parts.operation == op
        mask[np.ix_(rows, cols)] = True
    return mask


def _alpha_scale(base: Baselines, policy: DetectionPolicy) -> np.ndarray | None:
    """(P,) factor on alpha: ``short_history_alpha`` where a short history stretched the
    bands (stronger evidence needed), else 1; None when no partition is short."""
    if base.stretch is None or not (base.stretch > 1).any():
        return None
    return np.where(base.stretch > 1, policy.short_history_alpha, 1.0)


def _fold_tenant_stops(
    run: _Run, anomalies: list[Anomaly], alert_buckets: list[AlertBucket], full: Cube
) -> tuple[list[Anomaly], list[AlertBucket]]:
    """``anomalies`` and their alerting buckets with the volume drops of a tenant-wide stop
    folded into one tenant alert (see :mod:`detector.detect.stop`). The whole cube is searched, so
    a stop that began before the window is reported from its start."""
    parts, base, policy, ws, now = run.parts, run.base, run.policy, run.frame.ws, run.now
    bucket = pd.Timedelta(policy.bucket)
    times = full.times
    judged = np.asarray(times >= ws)
    complete = np.asarray(times + bucket <= _utc(now))
    stops = find_stops(full, parts, base, policy, judged=judged, complete=complete)
    stops = [s for s in stops if _an_operation_stopped(s, times, policy, anomalies)]
    # A stop covers its aftermath too (stop_recovery); a short quiet run only itself.
    quiet = [
        (
            _py(times[s.start]),
            _py(
                times[s.end - 1] + bucket + (policy.stop_recovery if s.confirmed else timedelta(0))
            ),
            s.confirmed,
        )
        for s in stops
    ]
    # The volume family's multiplicity, as the per-operation volume alerts report it.
    n_vol = float(max(int(parts.is_fleet.sum()), 1) * policy.buckets_per_hour)
    tenant = [stop_anomaly(s, times, policy, n_vol) for s in stops if s.alerting]
    kept, folded = fold_into_stops(anomalies, quiet, tenant)
    return kept, fold_buckets(alert_buckets, folded, tenant, times, _py(ws))


def _an_operation_stopped(
    stop: Stop,
    times: pd.DatetimeIndex,
    policy: DetectionPolicy,
    anomalies: list[Anomaly],
) -> bool:
    """Only a quiet span in which an operation's own volume test saw the drop is a stop: a
    volume drop of an operation overlapping it or its aftermath (``stop_recovery``). A
    tenant's quiet night its operations' tests accept is not, nor a night that only overlaps
    another metric's alert (a latency drift under way)."""
    bucket = pd.Timedelta(policy.bucket)
    a = _py(times[stop.start])
    b = _py(times[stop.end - 1] + bucket) + policy.stop_recovery
    return any(
        x.metric == "volume"
        and x.sdk_version is None
        and (x.effect is None or x.effect < 0)
        and x.window_start < b
        and a < x.window_end
        for x in anomalies
    )


class _HistByOperation:
    """The duration histogram's rows of one operation at a time: the operation column is
    factorized once per run (on the first duration alert), not compared with every alert's."""

    def __init__(self, hist: pd.DataFrame | None) -> None:
        self.hist = hist
        self._codes: tuple[np.ndarray, pd.Index] | None = None
        self._rows: dict[str, pd.DataFrame] = {}

    def rows(self, op: str) -> pd.DataFrame | None:
        """The rows of operation ``op`` (None: no histogram)."""
        if self.hist is None or self.hist.empty:
            return None
        if op not in self._rows:
            if self._codes is None:
                self._codes = column_codes(self.hist["operation_name"])
            codes, names = self._codes
            k = names.get_indexer(pd.Index([op]))[0]
            self._rows[op] = self.hist.iloc[np.flatnonzero(codes == k) if k >= 0 else []]
        return self._rows[op]


def _hist_p95(
    hist: _HistByOperation,
    op: str,
    version: str,
    start: pd.Timestamp,
    end: pd.Timestamp,
    exclude: Sequence[Any] = (),
    maintenance: Sequence[Any] = (),
) -> tuple[float, int]:
    """p95 (ms) and count read from the sparse histogram of a partition over ``[start, end)``."""
    rows = hist.rows(op)
    if rows is None:
        return float("nan"), 0
    sel = (rows["bucket_start"] >= start) & (rows["bucket_start"] < end)
    if version != FLEET:
        sel &= rows["sdk_version"] == version
    rows = rows.loc[sel]
    if len(rows) and (exclude or maintenance):
        rows = rows.loc[~exclusion_mask(rows, maintenance, exclude)]
    if rows.empty:
        return float("nan"), 0
    counts = rows.groupby("bin")["count"].sum().sort_index()
    cum = counts.cumsum().to_numpy()
    total = int(cum[-1])
    i = int(np.searchsorted(cum, 0.95 * total, side="left"))
    return float(bin_value(int(counts.index[min(i, len(cum) - 1)]))), total


@dataclass(frozen=True)
class _Explaining:
    """What the words of every alert read: the run, its evidence, decisions and cube."""

    run: _Run
    tested: _Tested
    decided: _Decided
    cubes: _Cubes
    scores: np.ndarray  # (P, K) forest scores (NaN = not scored)
    hist: _HistByOperation  # the history's duration histogram (p95 values)
    alerted_before: list[Any]  # the spans alerted before this run (kept out of the p95s)
    roll_row: dict[int, int]  # row of a new build -> its index in the rollout history
    forest: tuple[np.ndarray, np.ndarray] | None  # forest-only alerts, corrected p-values


@dataclass(frozen=True)
class _AlertRun:
    """One alerting run: partition ``p``, metric ``m``, columns ``idx``, ``j`` the most
    significant; the operation, version and the run's ``[start, end)``."""

    p: int
    m: int
    idx: np.ndarray
    j: int
    op: str
    ver: str
    start: pd.Timestamp
    end: pd.Timestamp


@dataclass(frozen=True)
class _Figures:
    """What an alert shows: observed and baseline value, band, calls and failures behind it,
    the traffic share and the since-rollout details (None: none)."""

    observed: float
    baseline: float
    band: tuple[float, float]
    calls: int
    fails: int
    fail_calls: int
    share: float | None
    since: dict[str, Any] | None = None


def _explain(
    run: _Run,
    tested: _Tested,
    decided: _Decided,
    cubes: _Cubes,
    forest: _ForestRun,
    hist: pd.DataFrame,
) -> tuple[list[Anomaly], list[tuple[str, str | None, str, datetime]]]:
    """Decisions -> one Anomaly per alerting run (sorted) and its alerting buckets; the runs
    are added to the engine state as alerted."""
    fp = forest.p
    x = _Explaining(
        run,
        tested,
        decided,
        cubes,
        forest.scores,
        _HistByOperation(hist),
        list(run.state.alerted),
        # Rows of versions whose failure evidence may be the since-rollout test (rollout.py).
        {int(r): i for i, r in enumerate(tested.roll.rows)},
        None if fp is None else (decided.forest_only, fp[0] * decided.evidence.forest_n_tests),
    )
    parts, cube, bucket = run.parts, cubes.cube, run.frame.bucket
    alert = decided.reasons == R_ANOM
    out: list[Anomaly] = []
    alert_buckets: list[tuple[str, str | None, str, datetime]] = []
    driver_rows: list[tuple[int, np.ndarray]] = []
    for p, m in zip(*np.nonzero(alert.any(axis=2)), strict=True):
        op, ver = str(parts.operation[p]), str(parts.version[p])
        for a, b in true_runs(alert[p, m]):
            idx = np.arange(a, b)
            # The evidence at the run's most significant bucket is what passed the gates.
            j = idx[np.argmin(tested.ev.p[p, m, idx])]
            at = _AlertRun(p, m, idx, j, op, ver, cube.times[a], cube.times[b - 1] + bucket)
            anomaly, k_best = _alert(x, at, _figures(x, at))
            driver_rows.append((len(out), cubes.feats[p, idx[k_best]]))
            out.append(anomaly)
            run.state.add(op, ver, _py(at.start), _py(at.end))
            for col in idx.tolist():
                alert_buckets.append(
                    (op, None if ver == FLEET else ver, METRIC_NAMES[m], _py(cube.times[col]))
                )
    if forest.scorer is not None and driver_rows:
        names = forest.scorer.drivers_many(np.stack([v for _, v in driver_rows]))
        for (i, _), d in zip(driver_rows, names, strict=True):
            out[i].drivers = d
    out.sort(key=lambda a: (a.operation_name, a.sdk_version or "", a.metric, a.window_start))
    return out, alert_buckets


def _zc(x: _Explaining, m: int) -> float:
    """Metric -> the z of its test's own threshold (the band is that wide; see detect)."""
    # norm.isf(q) == -ndtri(q); scipy.special, not scipy.stats (0.8 s of imports).
    return float(-special.ndtri(x.tested.mult.test_alpha[m]))


def _hours(x: _Explaining, at: _AlertRun) -> float:
    """Run -> the share of an hour its level's wander is averaged over (as in the tests)."""
    # The level's hour-to-hour wander, averaged over the hours the run spans: the band is
    # where the level itself may be, not only sampling noise.
    per_hour = x.run.policy.buckets_per_hour
    return per_hour / max(len(at.idx), per_hour)


def _figures(x: _Explaining, at: _AlertRun) -> _Figures:
    """Run -> its figures: the metric's own, or a new build's since its rollout."""
    cube, p, m, j, idx = x.cubes.cube, at.p, at.m, at.j, at.idx
    calls = int(cube.calls[p, idx].sum())
    fails = int(cube.failures[p, idx].sum())
    # Distinct calls behind the failures (summed per bucket: a call failing in two buckets
    # counts twice, so this errs towards ``fails``).
    fail_calls = int(cube.failed_calls[p, idx].sum())
    share_den = float(cube.calls[x.run.parts.fleet_of[p], idx].sum())
    share = float(calls / share_den) if share_den > 0 else None
    metric = METRIC_NAMES[m]
    li = tail_used(x.tested.tail, x.tested.tailed, p, j) if metric == "duration" else None
    if li is not None:
        observed, baseline, band, since = _tail_since_rollout(x, (p, m, j), li)
        since["held_buckets"] = int(x.decided.held[1][li, at.idx].sum())
        # calls: of the build since its rollout; share: of its operation's calls since then
        share_since = float(x.tested.ev.share[p, m, j])
        return _Figures(
            observed, baseline, band, since["calls"], fails, fail_calls, share_since, since
        )
    if metric == "duration":
        shown = _duration_figures(x, at)
    elif metric == "failure_rate" and p in x.roll_row and x.tested.rolled.used[x.roll_row[p], j]:
        # Judged on everything since its first call: show those figures, not the run's own
        # buckets (a quiet build's run can hold a handful of operations).
        li = x.roll_row[p]
        zc = float(-special.ndtri(x.tested.rolled.alpha[li, j]))
        observed, baseline, band, since = _since_rollout(
            x.tested.ev, (p, m, j), x.tested.roll, li, zc
        )
        since["held_buckets"] = int(x.decided.held[0][li, at.idx].sum())
        # share: of its operation's calls since then
        return _Figures(
            observed,
            baseline,
            band,
            since["calls"],
            since["failures"],
            fail_calls,
            float(x.tested.ev.share[p, m, j]),
            since,
        )
    elif metric == "failure_rate":
        shown = _failure_figures(x, at, fails)
    else:
        shown = _volume_figures(x, at, calls)
    return _Figures(*shown, calls, fails, fail_calls, share)


def _duration_figures(x: _Explaining, at: _AlertRun) -> tuple[float, float, tuple[float, float]]:
    """Duration run -> p95 observed and baseline (from the histogram) and band."""
    ev, base, frame, p, m, j = x.tested.ev, x.run.base, x.run.frame, at.p, at.m, at.j
    var = base.var_log[p, x.cubes.cube.slots[at.idx]].mean() * base.phi_dur[p]
    d_n = max(float(ev.n[p, m, j]), 1.0)  # operations behind the evidence
    obs_hist, _ = _hist_p95(x.hist, at.op, at.ver, at.start, at.end)
    # A provisional baseline is mostly the operation's: show the fleet's p95.
    base_ver = FLEET if base.provisional[p] else at.ver
    base_hist, _ = _hist_p95(
        x.hist, at.op, base_ver, frame.base_start, frame.ws, x.alerted_before, x.run.maintenance
    )
    baseline = base_hist if np.isfinite(base_hist) else float(ev.expected[p, m, j])
    observed = obs_hist if np.isfinite(obs_hist) else float(ev.observed[p, m, j])
    half = _zc(x, m) * np.sqrt(var / d_n + base.tau2_dur[p] * _hours(x, at))
    band = (baseline * float(np.exp(-half)), baseline * float(np.exp(half)))
    return observed, baseline, band


def _failure_figures(
    x: _Explaining, at: _AlertRun, fails: int
) -> tuple[float, float, tuple[float, float]]:
    """Failure-rate run -> the run's rate, the baseline's over its buckets and band."""
    cube, base, p, idx = x.cubes.cube, x.run.base, at.p, at.idx
    n_ = max(float(cube.calls[p, idx].sum()), 1.0)
    baseline = float((cube.calls[p, idx] * base.fail_rate[p, cube.slots[idx]]).sum() / n_)
    observed = fails / n_
    half = _zc(x, at.m) * np.sqrt(
        float(base.fail_dispersion()[p]) * baseline * (1 - baseline) / n_
        + base.tau2_fail[p] * _hours(x, at)
    )
    band = (max(baseline - half, 0.0), min(baseline + half, 1.0))
    return observed, baseline, band


def _volume_figures(
    x: _Explaining, at: _AlertRun, calls: int
) -> tuple[float, float, tuple[float, float]]:
    """Volume run -> calls per bucket observed and expected, and band."""
    base, p = x.run.base, at.p
    nb = len(at.idx)
    baseline = float(base.exp_calls[p, x.cubes.cube.slots[at.idx]].mean())
    observed = calls / nb
    half = _zc(x, at.m) * np.sqrt(base.phi_vol[p] * max(baseline, 1.0) / nb)
    band = (max(baseline - half, 0.0), baseline + half)
    return observed, baseline, band


def _alert(x: _Explaining, at: _AlertRun, fig: _Figures) -> tuple[Anomaly, int]:
    """Run and its figures -> the Anomaly, and the run column whose features drive it."""
    ev, base, policy, p, m, j = x.tested.ev, x.run.base, x.run.policy, at.p, at.m, at.j
    metric = METRIC_NAMES[m]
    effect = float(ev.effect[p, m, j])
    span = int(ev.span[p, m, j])
    # Reported p-value: corrected for the partitions tested (spans already in ev.p).
    p_corr = float(min(1.0, ev.p[p, m, j] * x.tested.mult.n_tests[m]))
    # Effect shown with the values: over the run (relative; points for failure rate).
    if metric == "failure_rate":
        run_effect = float(fig.observed - fig.baseline)
    else:
        run_effect = float(fig.observed / fig.baseline - 1) if fig.baseline > 0 else effect
    joint = _forest_moves(ev, x.forest, (p, m, at.idx)) if x.forest is not None else None
    if joint is not None:
        p_corr = joint[1]
    numbers = AlertNumbers(
        metric,
        fig.observed,
        fig.baseline,
        float(ev.p[p, m, j]),  # the test's own: the reason shows it before the correction
        buckets=len(at.idx),
        span=span,
        effect=effect,
        calls=fig.calls,
        failures=fig.fails,
        failed_calls=fig.fail_calls,
        rollout_since=None if fig.since is None else fig.since["since"],
        slow=_slow_calls(fig.since),
        provisional_weight=float(base.weight[p]) if base.provisional[p] else None,
        forest_moves=None if joint is None else joint[0],
    )
    s_run = x.scores[p, at.idx]
    k_best = int(np.nanargmax(s_run)) if np.isfinite(s_run).any() else int(j - at.idx[0])
    score = float(s_run[k_best]) if np.isfinite(s_run).any() else float("nan")
    ratio = abs(effect) / max(policy.min_effect(metric), 1e-9)
    anomaly = Anomaly(
        operation_name=at.op,
        sdk_version=None if at.ver == FLEET else at.ver,
        metric=metric,
        window_start=_py(at.start),
        window_end=_py(at.end),
        observed=float(fig.observed),
        baseline=float(fig.baseline),
        score=score,
        severity="critical" if ratio >= policy.critical_factor else "warning",
        calls=fig.calls,
        reason=reason_text(numbers),
        band_low=float(fig.band[0]),
        band_high=float(fig.band[1]),
        effect=run_effect,
        p_value=p_corr,
        baseline_kind=str(base.kind[p]),
        provisional=bool(base.provisional[p]),
        baseline_calls=int(base.calls[p]),
        traffic_share=fig.share,
        drivers=[],
        failures=fig.fails,
        details=_details(x, at, fig, None if joint is None else combination_text(joint[0]), k_best),
    )
    return anomaly, k_best


def _details(
    x: _Explaining, at: _AlertRun, fig: _Figures, combination: str | None, k_best: int
) -> dict[str, Any]:
    """Run, figures, forest words and driving column -> the anomaly's ``details``."""
    ev, base, parts, policy = x.tested.ev, x.run.base, x.run.parts, x.run.policy
    p, m, j, idx = at.p, at.m, at.j, at.idx
    metric = METRIC_NAMES[m]
    span = int(ev.span[p, m, j])
    a, b = int(idx[0]), int(idx[-1]) + 1
    return {
        "gate": "anomaly",
        "gate_effect": float(ev.effect[p, m, j]),  # the effect over the span that passed
        "span_buckets": span,
        # Calls over the whole span the test used: a run's own buckets can hold few calls (a
        # quiet night) while the evidence reaches back hours.
        "evidence_calls": int(
            round(float(ev.n[p, m, j]) if m < 2 else float(ev.observed[p, m, j]) * span)
        ),
        "hot_buckets": int(
            (x.decided.reasons[p, m, max(a - policy.persist_m + 1, 0) : b] == R_ANOM).sum()
        ),
        "z": float(ev.z[p, m, j]),
        "effect_ms": float(ev.effect_ms[p, m, j]) if metric == "duration" else None,
        "expected_calls": float(base.exp_calls[p, x.cubes.cube.slots[idx]].sum()),
        "own_weight": float(base.weight[p]),
        "baseline_buckets": int(base.buckets[p]),
        "baseline_excluded_buckets": int(base.excluded[p]),
        "dispersion": float([base.phi_dur, base.phi_fail, base.phi_vol][m][p]),
        # hour-to-hour wander of the level (sd: failure rate, or log-duration), in the tests
        # and the band
        "level_wander": (float(np.sqrt([base.tau2_dur, base.tau2_fail][m][p])) if m < 2 else None),
        "failed_calls": fig.fail_calls if metric == "failure_rate" else None,
        # failures come this many to a failing call (failure-weighted, baseline): the tests and
        # the band widen by it
        "failures_per_failing_call": (
            float(base.cluster[p])
            if metric == "failure_rate" and base.cluster is not None
            else None
        ),
        "new_version": bool(~parts.is_fleet[p] and base.calls[p] == 0),
        # the evidence is everything since the version's first call (see rollout.py)
        "since_rollout": fig.since,
        # what the sequential test accumulated, when its evidence passed the gates
        "sequential": None if fig.since else sequential_details(ev, p, m, j, policy),
        # the forest alone alerted: an unusual combination of moderate changes
        "combination": combination,
        "features": {
            n: round(float(v), 3)
            for n, v in zip(FEATURE_NAMES, x.cubes.feats[p, idx[k_best]], strict=True)
        },
    }


def _slow_calls(since: dict[str, Any] | None) -> tuple[int, int, float, float] | None:
    """A tail alert's slow calls, calls, expected slow share and typical change (None for
    any other alert)."""
    if since is None or "slow_calls" not in since:
        return None
    return (
        since["slow_calls"],
        since["calls"],
        since["expected_slow_share"],
        since["typical_change"],
    )


def _forest_moves(
    ev: Any, forest: tuple[np.ndarray, np.ndarray], at: tuple[int, int, np.ndarray]
) -> tuple[dict[str, float], float] | None:
    """Effect per metric and corrected p-value of a forest-only alert run, None for a metric's
    own."""
    p, _, idx = at
    alone = forest[0][p, at[1], idx]
    if not alone.all():  # the metric's own alert speaks for the run
        return None
    j = int(idx[np.argmin(np.where(alone, forest[1][p, idx], np.inf))])
    moves = {n: float(ev.effect[p, i, j]) for i, n in enumerate(METRIC_NAMES)}
    return moves, float(min(1.0, forest[1][p, j]))


def _since_rollout(
    ev: Any, at: tuple[int, int, int], roll: Rollout, li: int, zc: float
) -> tuple[float, float, tuple[float, float], dict[str, Any]]:
    """Observed and expected rate, band and details of a since-rollout failure alert
    (the evidence at ``at`` = (partition, metric, column), version ``li`` of ``roll``)."""
    since = _iso(roll.times[roll.first[li]])
    n = int(round(float(ev.n[at])))
    k = int(round(float(ev.k[at])))
    observed, expected = float(ev.observed[at]), float(ev.expected[at])
    # The test's own standard error (clusters and the other versions' rate included).
    half = zc * float(abs(ev.effect[at]) / max(abs(float(ev.z[at])), 1e-9))
    details = {
        "since": since,
        "calls": n,
        "failures": k,
        "observed": observed,
        "expected": expected,
    }
    return observed, expected, (max(expected - half, 0.0), min(expected + half, 1.0)), details


def _tail_since_rollout(
    x: _Explaining, at: tuple[int, int, int], li: int
) -> tuple[float, float, tuple[float, float], dict[str, Any]]:
    """p95 of a new build since its rollout and its other versions' over the same buckets,
    band and details of a since-rollout tail alert (``at`` = (partition, metric, column),
    version ``li`` of the tail history)."""
    ev, tail, applied = x.tested.ev, x.tested.tail, x.tested.tailed
    n = int(round(float(ev.n[at])))
    k = int(round(float(ev.k[at])))
    observed, expected = float(ev.observed[at]), float(ev.expected[at])
    zc = float(-special.ndtri(applied.alpha[li, at[2]]))
    # The test's own standard error, on the log of the p95s.
    half = zc * abs(float(np.log(observed / expected))) / max(abs(float(ev.z[at])), 1e-9)
    details = {
        "since": _iso(tail.counts.times[tail.counts.first[li]]),
        "calls": n,
        "slow_calls": k,
        "slow_share": k / max(n, 1),
        "expected_slow_share": float(applied.expected_share[li, at[2]]),
        # its median against its siblings' since its rollout (relative): the tail moved
        # beyond this
        "typical_change": float(applied.typical[li, at[2]]),
        "observed": observed,
        "expected": expected,
        "duration_part": "tail",
    }
    band = (expected * float(np.exp(-half)), expected * float(np.exp(half)))
    return observed, expected, band, details


def _last_alert_end(
    state: EngineState, parts: Partitions, times: pd.DatetimeIndex, bucket: pd.Timedelta
) -> np.ndarray:
    """Per partition: the column (relative to ``times[0]``) where its last earlier alert ended."""
    out = np.full(len(parts), -np.inf)
    if not state.alerted or not len(times):
        return out
    row = {(o, v): i for i, (o, v) in enumerate(zip(parts.operation, parts.version, strict=True))}
    t0 = times[0]
    for op, ver, _, end in state.alerted:
        i = row.get((op, ver))
        if i is not None:
            out[i] = max(out[i], (pd.Timestamp(end) - t0) / bucket)
    return out


def _last_version_dev_end(
    state: EngineState, parts: Partitions, times: pd.DatetimeIndex, bucket: pd.Timedelta
) -> np.ndarray:
    """Fleet rows: column where the last alerted span of one of its versions ended."""
    out = np.full(len(parts), -np.inf)
    if not len(times):
        return out
    fleet_row = {
        o: i
        for i, (o, v) in enumerate(zip(parts.operation, parts.version, strict=True))
        if v == FLEET
    }
    t0 = times[0]
    # Alerted version spans only: a version alerts when it deviates on its own (a shared
    # deviation is explained by the fleet), whereas suspect spans include shared deviations.
    for op, ver, _, end in state.alerted:
        i = fleet_row.get(op)
        if ver != FLEET and i is not None:
            out[i] = max(out[i], (pd.Timestamp(end) - t0) / bucket)
    return out


def _record_suspects(
    reasons: np.ndarray,
    ev: Any,
    cube: Cube,
    parts: Partitions,
    state: EngineState,
    policy: DetectionPolicy,
    n_tests: np.ndarray,
) -> None:
    """Remember judged buckets that deviated but did not alert (kept out of baselines).

    Deviated: nominally significant and at least ``policy.suspect_factor`` times the practical
    minimum effect.
    """
    judged = np.ones(len(cube.times), dtype=bool)
    k = policy.suspect_factor
    with np.errstate(invalid="ignore"):
        practical = np.zeros(ev.p.shape, dtype=bool)
        practical[:, 0] = (ev.effect[:, 0] >= k * policy.min_duration_rel) & (
            ev.effect_ms[:, 0] >= policy.min_duration_ms
        )
        practical[:, 1] = ev.effect[:, 1] >= k * policy.min_failure_points
    # Nominal significance (not corrected): a new build's first slow calls are few, and must
    # stay out of its own baseline even before they can alert.
    sig = ev.p <= policy.alpha
    deviating = sig & practical & (reasons != R_ANOM) & (reasons > 0)
    flags = deviating.any(axis=1) & judged[None, :]
    bucket = pd.Timedelta(policy.bucket)
    # Runs of consecutive flagged buckets, all partitions at once (a Python loop per partition
    # and a Timestamp conversion per run cost seconds at 10k partitions).
    d = np.diff(np.pad(flags.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    rows, starts = np.nonzero(d == 1)
    _, ends = np.nonzero(d == -1)  # same row order, one end per start
    edges: list[datetime] = []  # bucket starts, then the end of the last bucket
    if len(rows):
        edges = [_py(t) for t in cube.times] + [_py(cube.times[-1] + bucket)]
    spans = [
        (str(parts.operation[p]), str(parts.version[p]), edges[a], edges[b])
        for p, a, b in zip(rows.tolist(), starts.tolist(), ends.tolist(), strict=True)
    ]
    state.add_suspects(spans)


def _candidates(
    reasons: np.ndarray, ev: Any, scores: np.ndarray, cube: Cube, parts: Partitions, base: Baselines
) -> list[Candidate]:
    """One record per (partition, metric) that was a candidate in the window: its furthest gate."""
    out: list[Candidate] = []
    furthest = reasons.max(axis=2)
    ps, ms = np.nonzero(furthest)
    if not len(ps):
        return out
    # Vectorised over the candidates: the bucket (smallest p among those at the furthest
    # gate) and the bucket counts per reason; ISO strings computed once per bucket.
    r = reasons[ps, ms]  # (n, T)
    at_gate = r == furthest[ps, ms][:, None]
    js = np.argmin(np.where(at_gate, ev.p[ps, ms], np.inf), axis=1)
    per_reason = np.stack([(r == c).sum(axis=1) for c in range(len(GATE_REASONS))], axis=1)
    iso = [_iso(t) for t in cube.times]
    # Every field gathered at once and turned into Python values in one go: indexing the
    # (P, M, T) arrays one scalar at a time cost ~0.3 s for 15k candidates at 10k partitions.
    at = (ps, ms, js)

    def finite(a: np.ndarray) -> list[float | None]:
        a = np.asarray(a, dtype=np.float64)
        return [
            None if not ok else v for v, ok in zip(a.tolist(), np.isfinite(a).tolist(), strict=True)
        ]

    cols = {
        "p_value": ev.p[at].astype(np.float64).tolist(),
        "effect": ev.effect[at].astype(np.float64).tolist(),
        "observed": finite(ev.observed[at]),
        "expected": finite(ev.expected[at]),
        "calls": ev.n[at].astype(np.float64).tolist(),
        "failures": ev.k[at].astype(np.float64).tolist(),
        "span_buckets": ev.span[at].astype(np.int64).tolist(),
        "score": finite(scores[ps, js]),
    }
    names = list(GATE_REASONS)
    for i, (p, m, j, code) in enumerate(
        zip(ps.tolist(), ms.tolist(), js.tolist(), furthest[ps, ms].tolist(), strict=True)
    ):
        counts = per_reason[i].tolist()
        out.append(
            Candidate(
                operation_name=str(parts.operation[p]),
                sdk_version=None if parts.version[p] == FLEET else str(parts.version[p]),
                metric=METRIC_NAMES[m],
                reason=names[code],
                bucket=iso[j],
                p_value=cols["p_value"][i],
                effect=cols["effect"][i],
                observed=cols["observed"][i],
                expected=cols["expected"][i],
                calls=cols["calls"][i],
                failures=cols["failures"][i] if m == 1 else None,
                span_buckets=cols["span_buckets"][i],
                score=cols["score"][i],
                provisional=bool(base.provisional[p]),
                baseline_kind=str(base.kind[p]),
                buckets_by_reason={names[k]: c for k, c in enumerate(counts) if k and c},
            )
        )
    return out
