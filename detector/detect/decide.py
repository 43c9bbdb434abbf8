"""Decide: which deviations become anomalies, and why the others did not.

Consumes the per-(partition, metric, bucket) :class:`Evidence` computed by
:mod:`detector.detect.features` (p-values over a few trailing spans, effects, sample sizes, the forest's
flag) and a :class:`DetectionPolicy`; produces a reason code for every (partition, metric,
bucket), from which the engine builds anomalies and the run report. Pure: no I/O, no clock
(``now`` is a parameter and only bounds which buckets may be judged).

The gates, in the order a candidate meets them (the first one it fails is its reason):

``maintenance``            the bucket lies in a configured maintenance window;
``insufficient_history``   neither the partition nor its operation has a usable baseline;
``suppressed_low_volume``  too few calls (or failures, or expected calls) behind the test;
``not_significant``        p-value above ``alpha`` once corrected (Bonferroni) for the number of
                           partitions tested and the number of trailing spans tried (a duration
                           p-value calibrated by ``duration_p_factor`` first; a new build's
                           since-rollout failure test within its own family, which gets
                           ``rollout_alpha_share`` of the failure rate's alpha), or above the
                           threshold calibrated on the tenant's history (``calibrate``).

Every multiplicity correction is made here: :func:`multiplicity` counts the tests of a run
and splits alpha between the families, :func:`on_decide_scale` puts the trailing spans'
p-values on the one scale the gate reads; the engine hands its ``on_scale`` to the sequential
and since-rollout tests, which express their evidence on that scale.
``below_min_effect``       statistically clear but smaller than the practical minimum
                           (e.g. +20 % and +100 ms for duration, +2 points of failure rate);
``not_persistent``         hot in fewer than N of the last M buckets (a span of M..3 buckets,
                           each of them deviating on its own, is itself persistent), carried by a
                           single bucket (the evidence dies when its strongest bucket is removed),
                           or not current (its latest window does not deviate on its own);
``explained_by_fleet``     a version moving with the rest of its operation (its siblings
                           deviate too, and it not significantly more): the operation's alert
                           covers it, or will once the operation's own test is clear;
``explained_by_version``   the operation as a whole deviates only because one version does;
``anomaly``                every gate passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

import numpy as np

from detector.detect.features import SpanEvidence
from detector.detect.policy import METRIC_NAMES, DetectionPolicy, Metric, volume_effect_ok
from detector.timeutil import parse_duration

__all__ = [
    "GATE_REASONS",
    "METRIC_NAMES",
    "DetectionPolicy",
    "Evidence",
    "decide",
    "gates_but_significance",
    "Multiplicity",
    "multiplicity",
    "on_decide_scale",
    "parse_duration",
    "volume_effect_ok",
]

#: Reason codes; index 0 = not a candidate. Order = gate order (later = got further).
GATE_REASONS: Final[tuple[str, ...]] = (
    "",
    "maintenance",
    "insufficient_history",
    "suppressed_low_volume",
    "not_significant",
    "below_min_effect",
    "not_persistent",
    "explained_by_fleet",
    "explained_by_version",
    "anomaly",
)
R_NONE, R_MAINT, R_HIST, R_LOWVOL, R_NOTSIG, R_EFFECT, R_PERSIST, R_FLEET, R_VERSION, R_ANOM = (
    range(len(GATE_REASONS))
)


@dataclass(frozen=True)
class Multiplicity:
    """Every multiplicity correction of one run, in one place: Bonferroni over the partitions
    tested and the buckets of an hour (the spans are in the p-values already), so ``alpha`` is
    the chance of one false significant bucket an hour across the run; on the failure rate a
    weighted Bonferroni between the trailing spans and the since-rollout tests of new builds.
    """

    n_tested: np.ndarray  # (M,) partitions tested per metric (at least 1)
    per_hour: float  # buckets an hour (at least 1)
    n_tests: np.ndarray  # (M,) trailing tests an hour per metric
    test_alpha: np.ndarray  # (M,) alpha of one trailing test
    roll_alpha: float  # alpha of one since-rollout test when an hour's looks count as one each
    tail_alpha: float  # ... of one since-rollout tail test (duration), likewise
    on_scale: np.ndarray  # (M,) alpha / n_tests: the per-test level decide's scale reads
    forest_tests: float  # the forest vote's tests an hour: partitions with calls x buckets


def multiplicity(
    testable: np.ndarray,
    active: np.ndarray,
    bucket_seconds: float,
    policy: DetectionPolicy,
    n_new: int,
    n_tail: int = 0,
) -> Multiplicity:
    """Testable (P, M) and active (P,) partitions, the bucket and the new builds -> the run's
    corrections. With ``n_new`` new builds their since-rollout tests share
    ``policy.rollout_alpha_share`` of the failure rate's alpha (apply_rollout counts an hour's
    looks for what they are worth) and the trailing spans keep the rest; without, all of it.
    The same for the duration alpha and the ``n_tail`` builds whose tail is tested (tail.py).
    """
    n_tested = np.maximum((testable & active[:, None]).sum(axis=0), 1)
    per_hour = max(1.0, 3600.0 / bucket_seconds)
    n_tests = n_tested * per_hour
    test_alpha = policy.alpha / np.asarray(n_tests, dtype=np.float64)
    # Weighted Bonferroni: the new builds' since-rollout tests of a metric (failures: n_new,
    # duration's tail: n_tail) share rollout_alpha_share of its alpha.
    family = {Metric.FAILURE_RATE: n_new, Metric.DURATION: n_tail}
    shared = dict.fromkeys(family, 0.0)
    for m, n in family.items():
        if n:
            test_alpha[m] *= 1.0 - policy.rollout_alpha_share
            shared[m] = policy.alpha * policy.rollout_alpha_share / (n * per_hour)
    forest_tests = float(active.sum() * per_hour)
    on_scale = policy.alpha / n_tests
    return Multiplicity(
        n_tested,
        per_hour,
        n_tests,
        test_alpha,
        shared[Metric.FAILURE_RATE],
        shared[Metric.DURATION],
        on_scale,
        forest_tests,
    )


def on_decide_scale(p: np.ndarray, mult: Multiplicity) -> None:
    """Put the trailing spans' p-values (P, M, T) on decide's scale in place: a failure-rate
    (duration) test that met its share of alpha then meets ``alpha / n_tests`` (factor 1
    without new builds)."""
    for m, shared in ((Metric.FAILURE_RATE, mult.roll_alpha), (Metric.DURATION, mult.tail_alpha)):
        if shared:
            p[:, m] = np.fmin(p[:, m] * (mult.on_scale[m] / mult.test_alpha[m]), 1.0)


@dataclass(kw_only=True)
class Evidence(SpanEvidence):
    """What the tests measured (:class:`SpanEvidence`: ``(P, M, T)`` arrays, partitions x
    metrics x buckets) and the context decide reads them in.

    ``forest`` (P, M, T) is the forest's flag for the metric. Per-partition vectors (length P):
    ``is_fleet``, ``op_index``, ``has_history``; ``testable`` (P, M) whether a metric is judged
    for the partition at all. ``maintenance`` has shape (T,) or (P, T). ``judged`` (T,) marks
    the buckets of the window (the others are look-back).
    """

    forest: np.ndarray
    is_fleet: np.ndarray
    op_index: np.ndarray
    has_history: np.ndarray
    testable: np.ndarray
    maintenance: np.ndarray
    judged: np.ndarray
    n_tests: np.ndarray = field(default_factory=lambda: np.ones(len(METRIC_NAMES)))
    raw_z: np.ndarray | None = None  # (P, M, T) single-bucket |z| before maintenance masking
    #: (P,) column index (may be negative: before this run) just after the partition's last
    #: alert in earlier runs, -inf if none: attribution to the fleet survives run boundaries.
    last_alert_end: np.ndarray | None = None
    #: (P,) for fleet rows: column just after the last alerted span of any of the operation's
    #: versions in earlier runs (-inf if none), for attribution to a version.
    last_version_dev_end: np.ndarray | None = None
    #: (P,) factor on alpha per partition (short history: ``short_history_alpha``); None = 1.
    alpha_scale: np.ndarray | None = None
    #: (P, T) the forest's best span p-value (spans in it already), None: no forest vote.
    forest_p: np.ndarray | None = None
    #: the forest test's multiplicity (partitions scored x buckets an hour), as ``n_tests``.
    forest_n_tests: float = 1.0
    #: (M,) each metric's threshold on the scale ``p x n_tests``, calibrated on the tenant's
    #: history (detector.detect.calibrate); None: ``policy.alpha`` for every metric.
    alpha_m: np.ndarray | None = None


def _practical(ev: Evidence, policy: DetectionPolicy) -> np.ndarray:
    eff = ev.effect
    out = np.zeros(eff.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        out[:, Metric.DURATION] = (eff[:, Metric.DURATION] >= policy.min_duration_rel) & (
            ev.effect_ms[:, Metric.DURATION] >= policy.min_duration_ms
        )
        out[:, Metric.FAILURE_RATE] = eff[:, Metric.FAILURE_RATE] >= policy.min_failure_points
        out[:, Metric.VOLUME] = volume_effect_ok(eff[:, Metric.VOLUME], policy)
    return out


def _enough_volume(ev: Evidence, policy: DetectionPolicy) -> np.ndarray:
    out = np.zeros(ev.n.shape, dtype=bool)
    d, f, v = Metric.DURATION, Metric.FAILURE_RATE, Metric.VOLUME
    out[:, d] = ev.n[:, d] >= policy.min_calls
    out[:, f] = (ev.n[:, f] >= policy.min_calls) & (ev.k[:, f] >= policy.min_failures)
    out[:, v] = ev.n[:, v] >= policy.min_expected_calls
    out &= ev.share >= policy.min_share
    return out


def _n_of_m(hot: np.ndarray, n: int, m: int) -> np.ndarray:
    """True at t when at least n of the buckets t-m+1..t are hot (trailing, along the last axis)."""
    # int16 counts when they fit: (P, M, T) temporaries at 10k partitions are tens of MB each.
    c: np.ndarray = np.cumsum(hot, axis=-1, dtype=np.int16 if hot.shape[-1] < 2**15 else np.int32)
    c[..., m:] = c[..., m:] - c[..., :-m].copy()
    out: np.ndarray = c >= n
    return out


def _any_within(flags: np.ndarray, span: np.ndarray) -> np.ndarray:
    """True at t when any of ``flags[..., t-span+1 .. t]`` is True (span per element)."""
    T = flags.shape[-1]
    # Small integers, written in place: at 10k partitions each (P, M, T) int64 temporary is
    # ~70 MB. Counts fit int16 while T < 2**15; indices need int32 only beyond that.
    small = np.int16 if T < 2**15 else np.int32
    c = np.zeros((*flags.shape[:-1], T + 1), small)
    np.cumsum(flags, axis=-1, dtype=small, out=c[..., 1:])
    lo = np.arange(1, T + 1, dtype=small) - span.astype(small)
    np.clip(lo, 0, T, out=lo)
    out: np.ndarray = c[..., 1:] > np.take_along_axis(c, lo, axis=-1)
    return out


def _span_starts_before(span: np.ndarray, before: np.ndarray) -> np.ndarray:
    """``(P, M, T)``: the span ending at t starts before column ``before[p]`` (may be +-inf)."""
    T = span.shape[-1]
    # Integer columns, int32 to keep the temporaries small; -inf (never) stays below every
    # span start (which can be negative: spans reach back before the first column).
    lim = 2.0**30
    b = np.clip(np.nan_to_num(before, neginf=-lim, posinf=lim), -lim, lim)
    start = np.arange(1, T + 1, dtype=np.int32) - span.astype(np.int32)
    out: np.ndarray = start < np.ceil(b).astype(np.int32)[:, None, None]
    return out


#: The longest span whose thirds (each checked on its own) are single buckets.
_SINGLE_BUCKET_THIRDS = 3


def decide(
    evidence: Evidence,
    *,
    policy: DetectionPolicy,
    now: datetime | None = None,
    bucket_end: np.ndarray | None = None,
    previous_hot: np.ndarray | None = None,
    forest_out: np.ndarray | None = None,
) -> np.ndarray:
    """Return the reason code (index into :data:`GATE_REASONS`) of every (partition, metric, bucket).

    Parameters
    ----------
    evidence
        What the features stage measured (see :class:`Evidence`).
    policy
        Thresholds and gates.
    now
        Buckets ending after ``now`` (``bucket_end`` > now) are not judged: their data may still be
        arriving. Optional; pure function of its arguments.
    bucket_end
        ``(T,)`` datetime64 end of each bucket, needed with ``now``.
    previous_hot
        ``(P, M, k)`` hot flags of the buckets just before the first one in ``evidence``, from
        the previous run (the engine normally recomputes them from the look-back buckets and
        leaves this None).
    forest_out
        Optional ``(P, M, T)`` bool array, set True where the alert is the forest's alone
        (routed to the metric that moved most); the engine words those alerts differently.

    Returns
    -------
    numpy.ndarray
        ``int8`` array of shape ``(P, M, T)``; 0 where the bucket was not a candidate
        (nothing deviated), else the first gate it failed or ``anomaly``.
    """
    ev = evidence
    g = _gates(ev, policy, previous_hot)
    reason = _first_failed_gate(g, *_attribution(ev, policy, g))
    if ev.forest_p is not None:
        blocked = (g.maint[:, 0], ~g.hist[:, :, 0])
        _forest_vote(ev, policy, reason, g.alert, blocked, g.volume, forest_out)
    reason[:, :, ~ev.judged.astype(bool)] = R_NONE
    if forest_out is not None:
        forest_out &= reason == R_ANOM
    if now is not None and bucket_end is not None:
        future = np.asarray(bucket_end) > np.datetime64(now.replace(tzinfo=None), "ns")
        reason[:, :, future] = R_NONE
    return reason


@dataclass(frozen=True)
class _Gates:
    """Where each gate of :func:`decide` passes, (P, M, T) (``maint`` (P, 1, T), ``hist``
    (P, 1, 1)); ``raw_sig``: nominally significant, before any correction."""

    raw_sig: np.ndarray
    candidate: np.ndarray
    maint: np.ndarray
    hist: np.ndarray
    volume: np.ndarray
    sig: np.ndarray
    practical: np.ndarray
    persistent: np.ndarray
    alert: np.ndarray  # hot (every gate up to the effect) and persistent


def _gates(ev: Evidence, policy: DetectionPolicy, previous_hot: np.ndarray | None) -> _Gates:
    """Evidence -> the candidates and where each gate (attribution aside) passes."""
    P, M, T = ev.p.shape
    n_tests = np.asarray(ev.n_tests, dtype="float64").reshape(1, M, 1)
    raw_sig = ev.p <= policy.alpha  # nominally interesting, before any correction
    candidate = (raw_sig | ev.forest) & ev.testable[:, :, None]
    maint = np.broadcast_to(
        ev.maintenance if ev.maintenance.ndim == 2 else ev.maintenance[None, :], (P, T)
    )[:, None, :]
    if ev.raw_z is not None:  # deviations inside maintenance are reported as such
        candidate = candidate | (maint & (ev.raw_z >= 3.0) & ev.testable[:, :, None])
    scale = 1.0 if ev.alpha_scale is None else ev.alpha_scale[:, None, None]
    level = policy.alpha if ev.alpha_m is None else ev.alpha_m.reshape(1, M, 1)
    sig = ev.p * np.maximum(n_tests, 1.0) <= level * scale
    practical = _practical(ev, policy)
    volume = _enough_volume(ev, policy)
    hist = ev.has_history[:, None, None]

    hot = sig & practical & volume & ev.loo_ok & ~maint & hist & ev.testable[:, :, None]
    hot, persistent = _persistence(ev, policy, hot, previous_hot)
    alert = hot & persistent
    return _Gates(raw_sig, candidate, maint, hist, volume, sig, practical, persistent, alert)


def gates_but_significance(ev: Evidence, policy: DetectionPolicy) -> np.ndarray:
    """Evidence -> (P, M, T) where every gate before persistence passes but significance:
    the buckets whose p-values calibration learns from (practical effect, volume, survives
    losing its strongest bucket, history, no maintenance, testable)."""
    P, M, T = ev.p.shape
    maint = np.broadcast_to(
        ev.maintenance if ev.maintenance.ndim == 2 else ev.maintenance[None, :], (P, T)
    )[:, None, :]
    ok = _practical(ev, policy) & _enough_volume(ev, policy) & ev.loo_ok & ~maint
    out: np.ndarray = ok & ev.has_history[:, None, None] & ev.testable[:, :, None]
    return out


def _persistence(
    ev: Evidence, policy: DetectionPolicy, hot: np.ndarray, previous_hot: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Hot buckets (and the previous run's) -> (hot, persistent), (P, M, T) each."""
    if previous_hot is not None:
        hot = np.concatenate([previous_hot.astype(bool), hot], axis=-1)
        persistent = _n_of_m(hot, policy.persist_n, policy.persist_m)[..., previous_hot.shape[-1] :]
        hot = hot[..., previous_hot.shape[-1] :]
    else:
        persistent = _n_of_m(hot, policy.persist_n, policy.persist_m)
    # A hot span of M to 3 buckets has already persisted: its thirds are single buckets,
    # so it passed only because each of its last M buckets deviates on its own (and it
    # survives losing the strongest). Waiting for a second hot bucket on top cost a clear
    # spike two more buckets of delay. A longer span's thirds are windows: one hot bucket
    # of a 12-hour span says nothing about the last M buckets, so it still needs N of M.
    persistent = persistent | (
        hot & (ev.span >= policy.persist_m) & (ev.span <= _SINGLE_BUCKET_THIRDS)
    )
    return hot, persistent


def _attribution(ev: Evidence, policy: DetectionPolicy, g: _Gates) -> tuple[np.ndarray, np.ndarray]:
    """Gates -> (explained by the fleet, explained by a version), (P, M, T) each.

    Attribution between a version and its operation's fleet, per (operation, metric, bucket),
    looks back over the partition's own evidence span: the fleet's trailing span still holds
    a version's deviation for a while after the version stops (and vice versa).
    """
    n_ops = int(ev.op_index.max()) + 1 if len(ev.p) else 0
    fleet = ev.is_fleet.astype(bool)
    by_fleet = _by_fleet(ev, g.alert, fleet, n_ops)
    return by_fleet, _by_version(ev, policy, g, fleet, n_ops)


def _by_fleet(ev: Evidence, alert: np.ndarray, fleet: np.ndarray, n_ops: int) -> np.ndarray:
    """Alerts, fleet rows, operations -> (P, M, T) version alerts the fleet explains."""
    P, M, T = ev.p.shape
    fleet_alert = np.zeros((n_ops, M, T), dtype=bool)
    if n_ops:
        np.logical_or.at(fleet_alert, ev.op_index[fleet], alert[fleet])
    fleet_recent = _any_within(fleet_alert[ev.op_index], ev.span)
    if ev.last_alert_end is not None and P:
        # The fleet alerted in an earlier run within this partition's evidence span.
        fleet_row = np.full(n_ops, -1, dtype=np.int64)
        fleet_row[ev.op_index[fleet]] = np.flatnonzero(fleet)
        fr = fleet_row[ev.op_index]
        before = np.where(fr >= 0, ev.last_alert_end[np.clip(fr, 0, None)], -np.inf)
        fleet_recent |= _span_starts_before(ev.span, before)
    # A version deviating together with its siblings (``shared``) and not significantly more
    # than they do (no ``peer_sig``) is its operation's deviation, whether or not the fleet has
    # alerted yet: the operation's test, with every version's calls, speaks for it. (Duration
    # and failure rate; a version's volume has no peer test.)
    siblings = np.bincount(ev.op_index[~fleet], minlength=n_ops)[ev.op_index] >= 2
    with_siblings = ev.shared & ~ev.peer_sig & siblings[:, None, None]
    with_siblings[:, Metric.VOLUME] = False
    out: np.ndarray = alert & ~fleet[:, None, None] & ev.shared & (fleet_recent | with_siblings)
    return out


def _by_version(
    ev: Evidence,
    policy: DetectionPolicy,
    g: _Gates,
    fleet: np.ndarray,
    n_ops: int,
) -> np.ndarray:
    """Gates, fleet rows, operations -> (P, M, T) fleet alerts a version explains."""
    P, M, T = ev.p.shape
    # A version deviating on its own: nominally significant and practically large while the
    # other versions are fine. Volume and sample size do not matter here (a new version with 20
    # calls can still be why its operation's fleet moved).
    own = g.raw_sig & g.practical & ~ev.shared & ~fleet[:, None, None] & ev.testable[:, :, None]
    version_own = np.zeros((n_ops, M, T), dtype=bool)
    if n_ops:
        np.logical_or.at(version_own, ev.op_index[~fleet], own[~fleet])
    version_recent = _any_within(version_own[ev.op_index], ev.span)
    # ... and a version that deviated on its own in most of the last attribution_lookback
    # buckets still explains the fleet when its own evidence blinks for a few buckets (a
    # fleet span of 3 at 08:10, the version slow all morning). "Most", not "any": a fleet-wide
    # spike whose first bucket looked like one version's must not be held back for an hour.
    if policy.attribution_lookback > 1 and n_ops:
        lb = policy.attribution_lookback
        version_recent |= _n_of_m(version_own, -(-lb // 2), lb)[ev.op_index]
    if ev.last_version_dev_end is not None and P:
        version_recent |= _span_starts_before(ev.span, ev.last_version_dev_end)
    out: np.ndarray = g.alert & fleet[:, None, None] & version_recent
    return out


def _first_failed_gate(g: _Gates, by_fleet: np.ndarray, by_version: np.ndarray) -> np.ndarray:
    """Gates and attribution -> (P, M, T) int8 reason codes (0 where not a candidate)."""
    candidate = g.candidate
    reason = np.zeros(candidate.shape, dtype=np.int8)
    # Assign from the last gate backwards, so the first failed gate wins.
    reason[candidate] = R_ANOM
    reason[candidate & by_version] = R_VERSION
    reason[candidate & by_fleet] = R_FLEET
    reason[candidate & ~g.persistent] = R_PERSIST
    reason[candidate & ~g.practical] = R_EFFECT
    reason[candidate & ~g.sig] = R_NOTSIG
    reason[candidate & ~g.volume] = R_LOWVOL
    reason[candidate & ~g.hist] = R_HIST
    reason[candidate & g.maint] = R_MAINT
    # A bucket passing every gate but not itself hot (e.g. carried by one strong bucket) or hot
    # without N of M support is "not persistent".
    reason[candidate & (reason == R_ANOM) & ~g.alert] = R_PERSIST
    return reason


def _effect_shares(ev: Evidence, policy: DetectionPolicy) -> np.ndarray:
    """(P, M, T) each metric's adverse effect as a share of its minimum (0 where untested)."""
    eff = np.nan_to_num(ev.effect, nan=0.0)
    share = np.zeros(eff.shape)
    d, f, v = Metric.DURATION, Metric.FAILURE_RATE, Metric.VOLUME
    share[:, d] = eff[:, d] / policy.min_duration_rel
    share[:, f] = eff[:, f] / policy.min_failure_points
    drop, rise = -eff[:, v] / policy.min_volume_drop, eff[:, v] / policy.min_volume_rise
    share[:, v] = {"drop": drop, "rise": rise}.get(policy.volume_direction, np.maximum(drop, rise))
    out: np.ndarray = np.clip(share, 0.0, None) * ev.testable[:, :, None]
    return out


def _forest_vote(
    ev: Evidence,
    policy: DetectionPolicy,
    reason: np.ndarray,
    alert: np.ndarray,
    blocked: tuple[np.ndarray, np.ndarray],
    volume: np.ndarray,
    forest_out: np.ndarray | None,
) -> None:
    """Add the forest's own test to ``reason`` (in place), on the metric that moved most.

    The forest's span p-value meets alpha corrected for its own multiplicity, like any test;
    what passes must be a joint shift under every metric's own minimum
    (:attr:`DetectionPolicy.forest_min_share`), on enough
    calls, persistent (N of M), on a partition no metric's own test alerts on at that bucket
    (the forest adds what the tests miss, not a second alert), and not a version whose
    operation's vector is unusual too (nominally; the operation's alert covers it). ``blocked``: maintenance (P, T) and
    no history (P, 1).
    """
    assert ev.forest_p is not None
    P, M, T = reason.shape
    shares = _effect_shares(ev, policy)
    # Under every metric's minimum (a larger change is its metric's to judge), yet together
    # worth at least one whole minimum, moved in at least two metrics.
    joint = (
        ((shares >= policy.forest_min_share).sum(axis=1) >= 2)
        & (shares.sum(axis=1) >= 1.0)
        & (shares.max(axis=1) < 1.0)
    )
    nominal = ev.forest_p <= policy.alpha
    sig = ev.forest_p * max(float(ev.forest_n_tests), 1.0) <= policy.alpha
    # One metric per partition carries its forest alerts (the one that moved most over the
    # buckets the forest found), so one joint change is one alert, not a metric per bucket.
    weight = (sig & joint)[:, None, :] | ~(sig & joint).any(axis=1)[:, None, None]
    routed = np.broadcast_to(np.argmax((shares * weight).sum(axis=2), axis=1)[:, None], (P, T))
    pick = (np.arange(P)[:, None], routed, np.arange(T)[None, :])
    maint, no_hist = blocked
    enough = volume[pick]
    hot = sig & joint & enough & ~maint & ~no_hist
    fa = hot & _n_of_m(hot, policy.persist_n, policy.persist_m) & ~alert.any(axis=1)
    fleet = ev.is_fleet.astype(bool)
    n_ops = int(ev.op_index.max()) + 1 if P else 0
    # The operation as a whole shows an unusual vector too: its alert speaks for the version.
    op_seen = np.zeros((n_ops, T), dtype=bool)
    np.logical_or.at(op_seen, ev.op_index[fleet], (fa | nominal)[fleet])
    by_fleet = fa & ~fleet[:, None] & op_seen[ev.op_index]
    # The first gate failed, in gate order (as the metrics' own reasons).
    code = np.select(
        [maint, no_hist & ~maint, ~enough, ~sig, ~joint, ~fa, by_fleet],
        [R_MAINT, R_HIST, R_LOWVOL, R_NOTSIG, R_EFFECT, R_PERSIST, R_FLEET],
        R_ANOM,
    ).astype(np.int8)
    cells = reason[pick]
    # The forest's reason stands where it got further than the metric's own (gate order).
    reason[pick] = np.where(nominal & (code > cells) & (cells != R_ANOM), code, cells)
    if forest_out is not None:
        forest_out[pick] |= fa & ~by_fleet
