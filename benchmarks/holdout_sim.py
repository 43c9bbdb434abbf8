"""Holdout generator: an independently written ACSCallClientOperations world for benchmarking.

Usage::

    .venv/bin/python benchmarks/holdout_sim.py --out DIR --scenario NAME [--seed 1] [--days 7]
        [--calls-per-hour 80] [--start 2027-03-04]
    .venv/bin/python benchmarks/holdout_sim.py --list

Writes a data set directory the way ``acs-detector simulate`` does, so that
``acs-detector evaluate --data DIR`` and ``benchmarks/bench_holdout.py`` can read it:

``DIR/operations.parquet``
    The Log Analytics columns of ``ACSCallClientOperations`` with their Kusto types
    (``timestamp[us, UTC]`` times, ``int64`` ``DurationMs``, ``int32`` ``ResultSignature``,
    ``OperationPayload`` as JSON text, empty strings rather than nulls for strings).
``DIR/incidents.json``
    Labelled incidents ``{operation_name, sdk_version (null = all versions), metric, start,
    end}`` (ISO-8601 UTC, half-open): the span in which the effect is present in the data.
``DIR/simulation.json``
    What was generated: scenario, seed, ``start``/``end``/``warmup_end``, the effects with their
    magnitudes, and the number of malformed rows injected per kind.

This module deliberately shares no code, distributions or parameters with ``detector.simulate``
(numpy and pyarrow only). Its world, on purpose unlike the built-in simulator's:

* calls arrive as an overdispersed (gamma-Poisson, i.e. negative-binomial) process on a
  two-peak weekday curve (a small European bump at 09 UTC, peaks at 14:30 and 19 UTC) and a
  flatter, lower weekend curve (Saturday at half, Sunday at 40 % of a weekday); the data set
  starts on a Thursday, so the warm-up holds one weekend day and the judged days hold the other;
* a call has 1-2 legs (1:1) or 3-12 (group); every leg emits its own operation mix (ops per leg
  gamma-mixed, group calls render many more views);
* durations per operation are a lognormal body, a second slower lognormal mode and a Pareto
  tail, each operation with its own shape, times a per-leg device factor and a mild time-of-day
  load factor, times a per-platform factor;
* failures are correlated: a degraded leg (bad network) and a degraded call (service side) make
  several operations, and for a degraded call all of its legs, fail together;
* six SDK versions (three web GA builds with staggered rollouts, a beta, Android and iOS), a
  rare old web version, and a weekend shift towards the native clients;
* rows arrive late (``TimeGenerated`` minutes, sometimes hours after ``CallClientTimeStamp``);
* a few malformed rows: empty or pseudo ``OperationName``, empty ``OperationId``, empty
  timestamp, empty or negative ``DurationMs``, invalid payload JSON, re-ingested duplicates,
  lower-case event names.

Scenarios (:data:`SCENARIOS`): six with labelled incidents, three hard negatives without any.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = [
    "GENERATOR_VERSION",
    "SCENARIOS",
    "Scenario",
    "generate",
]

#: Bump when the generated world changes, so cached data sets are regenerated.
GENERATOR_VERSION: Final = 1

_MS_MIN: Final = 60_000
_MS_HOUR: Final = 3_600_000
_MS_DAY: Final = 86_400_000
_TS: Final = pa.timestamp("us", tz="UTC")


# =============================================================================== scenarios
@dataclass(frozen=True)
class Scenario:
    """A named scenario: what it injects and whether it is a hard negative (no incidents)."""

    name: str
    description: str
    hard_negative: bool = False


SCENARIOS: Final[dict[str, Scenario]] = {
    s.name: s
    for s in (
        Scenario(
            "latency_step_version",
            "one SDK version of a busy operation gets x1.5-2.0 slower (p50 and p95) for 2-6 h",
        ),
        Scenario(
            "failure_burst_fleet",
            "an operation fails +5..+30 points more on every SDK version for 30-90 min",
        ),
        Scenario(
            "op_volume_drop",
            "one operation's volume drops by 60-80 % for 1-3 h (the client stops emitting it)",
        ),
        Scenario(
            "new_version_failing",
            "a new SDK version rolls out mid-week; one operation fails +8..+20 points on it "
            "from its first call",
        ),
        Scenario(
            "latency_drift",
            "a busy operation slows down linearly to x1.8-2.2 over 24-36 h on every version "
            "(label starts where the drift crosses x1.3)",
        ),
        Scenario(
            "rare_version_noisy",
            "hard negative: a rare old SDK version (~1.5 % of legs) with very noisy durations "
            "and failures all week",
            hard_negative=True,
        ),
        Scenario(
            "busy_surge",
            "hard negative: a 1-2 h surge of x2.5-4 call legs across every operation, quality "
            "normal",
            hard_negative=True,
        ),
        Scenario(
            "weekly_only",
            "hard negative: the weekday/weekend pattern and nothing else",
            hard_negative=True,
        ),
        Scenario(
            "tail_version",
            "a new SDK version rolls out mid-week; 8 % of its CreateView calls are x5-5.5 slower "
            "from its first call (p95 about x1.5, median about x1.08)",
        ),
    )
}


# =============================================================================== the world
@dataclass(frozen=True)
class OpSpec:
    """One operation: how often a leg emits it, its duration shape, its failure behaviour."""

    name: str
    count: str  # "bern" (0/1 with probability `rate`) or "pois" (gamma-mixed Poisson, mean `rate`)
    rate: float
    group_mult: float = 1.0  # rate multiplier on group-call legs
    point: bool = False  # point event: DurationMs 0, no duration statistics
    med_ms: float = 0.0  # body median
    sigma: float = 0.5  # body log-sd
    slow_w: float = 0.0  # weight of the slow mode
    slow_mult: float = 1.0  # slow mode median / body median
    slow_sigma: float = 0.5
    tail_p: float = 0.0  # share in the Pareto tail
    tail_alpha: float = 2.0  # Pareto index (lower = heavier)
    p_fail: float = 0.0  # baseline unexpected-failure probability
    p_expected: float = 0.0  # ExpectedError probability (not a failure)
    q_leg: float = 0.0  # added failure probability on a degraded leg
    q_call: float = 0.0  # added failure probability on a degraded call (all its legs)
    phase: str = "mid"  # "init" | "start" | "mid" | "end": when in the leg it happens


OPS: Final[tuple[OpSpec, ...]] = (
    OpSpec("CallAgentInit", "bern", 0.85, med_ms=950, sigma=0.45, slow_w=0.12, slow_mult=2.8,
           tail_p=0.015, tail_alpha=1.6, p_fail=0.006, p_expected=0.003, q_leg=0.05,
           phase="init"),
    OpSpec("AskDevicePermission", "bern", 0.5, med_ms=1400, sigma=1.1, tail_p=0.03,
           tail_alpha=1.2, p_fail=0.004, p_expected=0.06, phase="init"),
    OpSpec("Join", "bern", 0.52, med_ms=1700, sigma=0.35, slow_w=0.2, slow_mult=1.9,
           slow_sigma=0.3, tail_p=0.01, tail_alpha=2.0, p_fail=0.012, p_expected=0.008,
           q_leg=0.35, q_call=0.5, phase="start"),
    OpSpec("StartCall", "bern", 0.28, med_ms=420, sigma=0.5, tail_p=0.01, tail_alpha=1.8,
           p_fail=0.015, p_expected=0.02, q_leg=0.3, q_call=0.5, phase="start"),
    OpSpec("HandleIncomingCall", "bern", 0.2, med_ms=160, sigma=0.6, p_fail=0.003,
           q_leg=0.05, phase="start"),
    OpSpec("AcceptIncomingCall", "bern", 0.18, med_ms=780, sigma=0.4, slow_w=0.1,
           slow_mult=3.0, p_fail=0.01, p_expected=0.015, q_leg=0.3, q_call=0.5,
           phase="start"),
    OpSpec("State-changed", "pois", 3.2, point=True),
    OpSpec("IsMuted-changed", "pois", 1.5, point=True),
    OpSpec("MuteMicrophone", "pois", 1.6, med_ms=45, sigma=0.7, tail_p=0.02, tail_alpha=1.3,
           p_fail=0.002, q_leg=0.03),
    OpSpec("UnmuteMicrophone", "pois", 1.6, med_ms=60, sigma=0.8, tail_p=0.02,
           tail_alpha=1.3, p_fail=0.003, q_leg=0.05),
    OpSpec("StartVideo", "bern", 0.45, med_ms=1250, sigma=0.55, slow_w=0.15, slow_mult=2.5,
           tail_p=0.02, tail_alpha=1.5, p_fail=0.025, p_expected=0.01, q_leg=0.4, q_call=0.1),
    OpSpec("StopVideo", "bern", 0.4, med_ms=110, sigma=0.5, p_fail=0.002, q_leg=0.03),
    OpSpec("CreateView", "pois", 1.4, group_mult=4.5, med_ms=310, sigma=0.6, slow_w=0.08,
           slow_mult=3.5, slow_sigma=0.6, tail_p=0.015, tail_alpha=1.4, p_fail=0.009,
           p_expected=0.025, q_leg=0.3, q_call=0.25),
    OpSpec("DisposeView", "pois", 1.2, group_mult=4.5, med_ms=35, sigma=0.9, p_fail=0.001,
           q_leg=0.02),
    OpSpec("StartScreenShare", "bern", 0.07, med_ms=2200, sigma=0.8, tail_p=0.03,
           tail_alpha=1.5, p_fail=0.03, p_expected=0.04, q_leg=0.4),
    OpSpec("StopScreenShare", "bern", 0.06, med_ms=140, sigma=0.5, p_fail=0.002),
    OpSpec("UserFacingDiagnostics", "pois", 0.6, point=True),
    OpSpec("Hangup", "bern", 0.9, med_ms=220, sigma=0.7, p_fail=0.004, q_leg=0.05,
           phase="end"),
)  # fmt: skip
_OP_INDEX: Final = {o.name: i for i, o in enumerate(OPS)}


@dataclass(frozen=True)
class VersionSpec:
    """One SdkVersion: platform, share over time, duration and failure factors."""

    sdk: str
    platform: str  # "Web" | "Android" | "iOS"
    share0: float  # share at the start
    share1: float  # share at the end (linear in between) unless a rollout is given
    rollout_day: float | None = None  # logistic rollout centre (days from start)
    rollout_width: float = 0.4  # days
    dur_mult: float = 1.0
    fail_mult: float = 1.0


VERSIONS: Final[tuple[VersionSpec, ...]] = (
    VersionSpec("1.37.2.0_stable", "Web", 0.20, 0.09, dur_mult=1.05),
    VersionSpec("1.39.1.0_stable", "Web", 0.40, 0.26),
    VersionSpec("1.40.1.0_stable", "Web", 0.0, 0.30, rollout_day=1.2, dur_mult=0.97),
    VersionSpec("1.41.1.1_beta", "Web", 0.04, 0.04, dur_mult=1.08, fail_mult=1.4),
    VersionSpec("2.11.0", "Android", 0.14, 0.14, dur_mult=1.22, fail_mult=1.3),
    VersionSpec("2.9.1", "iOS", 0.10, 0.10, dur_mult=0.9, fail_mult=0.9),
    VersionSpec("1.33.3.0_stable", "Web", 0.003, 0.003, dur_mult=1.35, fail_mult=2.0),
)
_RARE: Final = len(VERSIONS) - 1
#: The version a new-version scenario rolls out.
NEW_VERSION: Final = VersionSpec("1.42.1.0_stable", "Web", 0.0, 0.0, dur_mult=1.0)

#: Weekday traffic curve (UTC hour): floor + (height, centre, width) Gaussian bumps.
_WEEKDAY_BUMPS: Final = ((0.35, 9.0, 1.6), (1.0, 14.5, 1.7), (0.85, 19.0, 2.0))
_WEEKDAY_FLOOR: Final = 0.05
_WEEKEND_BUMPS: Final = ((0.6, 17.0, 3.5),)
_WEEKEND_FLOOR: Final = 0.08
#: Mean traffic of a day relative to a weekday (Monday=0 ... Sunday=6).
_DAY_LEVEL: Final = (1.0, 1.0, 1.0, 1.0, 0.95, 0.5, 0.4)
#: Gamma shape of the traffic noise per 30-minute block (overdispersion of arrivals).
_BLOCK_SHAPE: Final = 20.0
_NATIVE_WEEKEND_BOOST: Final = 1.4

_SUCCESS = (("Succeeded", 200, None), ("Success", 200, None))
_EXPECTED = (
    ("ExpectedError", 401, 40235),
    ("ExpectedError", 487, 10004),
    ("ExpectedError", 404, 43202),
    ("ExpectedClientError", 412, 41071),
)
_CLIENT_FAIL = (
    ("UnexpectedClientError", 500, 40000),
    ("UnexpectedClientError", 408, 40104),
    ("UnexpectedClientError", 410, 41048),
    ("UnexpectedClientError", 401, 44110),
    ("Failed", 500, None),
)
_SERVER_FAIL = (
    ("UnexpectedServerError", 503, 560503),
    ("UnexpectedServerError", 480, 560480),
    ("UnexpectedServerError", 500, 560000),
)
_CODES: Final = _SUCCESS + _EXPECTED + _CLIENT_FAIL + _SERVER_FAIL
_C_SUCC, _C_EXP, _C_CLI, _C_SRV = (
    0,
    len(_SUCCESS),
    len(_SUCCESS) + len(_EXPECTED),
    len(_SUCCESS) + len(_EXPECTED) + len(_CLIENT_FAIL),
)

#: Malformed-row rates (per row) by kind.
_MALFORMED: Final = {
    "empty_operation_name": 0.0004,
    "pseudo_operation": 0.0003,
    "empty_operation_id": 0.0004,
    "null_timestamp": 0.0002,
    "null_duration": 0.0008,
    "negative_duration": 0.0002,
    "invalid_payload_json": 0.001,
}
_DUPLICATE_RATE: Final = 0.002
_LOWERCASE_EVENT_RATE: Final = 0.04


# =============================================================================== effects
@dataclass
class Effects:
    """What a scenario injects on top of the world (times in epoch ms)."""

    dur: list[tuple[int, int | None, int, int, float, int]] = field(default_factory=list)
    # (op, version index | None, start, end, max multiplier, ramp ms; 0 = a step)
    tail: list[tuple[int, int, int, int, float, float]] = field(default_factory=list)
    # (op, version index, start, end, multiplier, share of the calls it slows)
    fail: list[tuple[int, int | None, int, int, float]] = field(default_factory=list)
    # (op, version index | None, start, end, added failure probability)
    drop: list[tuple[int, int, int, float]] = field(default_factory=list)  # (op, start, end, frac)
    surge: list[tuple[int, int, float]] = field(default_factory=list)  # (start, end, factor)
    new_version_start: int | None = None
    rare_share: float | None = None  # override the rare version's share
    rare_noisy: bool = False
    described: list[dict[str, Any]] = field(default_factory=list)
    incidents: list[dict[str, Any]] = field(default_factory=list)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pick_time(
    rng: np.random.Generator, lo: int, hi: int, hours: tuple[float, float], weekdays_only: bool
) -> int:
    """A 5-minute aligned time in [lo, hi) whose UTC hour lies in ``hours``."""
    for _ in range(10_000):
        t = int(rng.integers(lo // (5 * _MS_MIN), hi // (5 * _MS_MIN))) * 5 * _MS_MIN
        dt = datetime.fromtimestamp(t / 1000, tz=UTC)
        h = dt.hour + dt.minute / 60
        if hours[0] <= h < hours[1] and (not weekdays_only or dt.weekday() < 5):
            return t
    raise ValueError("no time matches the constraints")


def plan_effects(
    scenario: str, rng: np.random.Generator, start: int, warm: int, end: int
) -> Effects:
    """Draw a scenario's effects and labels from ``rng``.

    Consumes the scenario name and the data set's start, warm-up end and end (epoch ms);
    produces :class:`Effects` whose ``incidents`` are the honest labels (only the span where the
    effect is in the data, only in partitions that carry it).
    """
    eff = Effects()
    vidx = {v.sdk: i for i, v in enumerate(VERSIONS)}
    if scenario == "latency_step_version":
        op = str(rng.choice(["CreateView", "Join", "CallAgentInit"]))
        ver = str(rng.choice(["1.39.1.0_stable", "1.40.1.0_stable", "2.11.0"]))
        mult = float(rng.uniform(1.5, 2.0))
        t0 = _pick_time(rng, warm + 6 * _MS_HOUR, end - 8 * _MS_HOUR, (11, 19), False)
        t1 = t0 + int(rng.integers(24, 73)) * 5 * _MS_MIN
        eff.dur.append((_OP_INDEX[op], vidx[ver], t0, t1, mult, 0))
        eff.described.append({"kind": "latency_step", "op": op, "sdk": ver, "mult": mult})
        eff.incidents.append(_label(op, ver, "duration", t0, t1))
    elif scenario == "failure_burst_fleet":
        op = str(rng.choice(["CreateView", "Join", "StartVideo", "UnmuteMicrophone"]))
        delta = float(rng.uniform(0.05, 0.30))
        t0 = _pick_time(rng, warm + 6 * _MS_HOUR, end - 4 * _MS_HOUR, (12, 21), False)
        t1 = t0 + int(rng.integers(6, 19)) * 5 * _MS_MIN
        eff.fail.append((_OP_INDEX[op], None, t0, t1, delta))
        eff.described.append({"kind": "failure_burst", "op": op, "added_rate": delta})
        eff.incidents.append(_label(op, None, "failure_rate", t0, t1))
    elif scenario == "op_volume_drop":
        op = str(rng.choice(["CreateView", "State-changed", "MuteMicrophone", "Join"]))
        frac = float(rng.uniform(0.6, 0.8))
        t0 = _pick_time(rng, warm + 6 * _MS_HOUR, end - 5 * _MS_HOUR, (12, 19), False)
        t1 = t0 + int(rng.integers(12, 37)) * 5 * _MS_MIN
        eff.drop.append((_OP_INDEX[op], t0, t1, frac))
        eff.described.append({"kind": "volume_drop", "op": op, "drop": frac})
        eff.incidents.append(_label(op, None, "volume", t0, t1))
    elif scenario == "new_version_failing":
        op = str(rng.choice(["Join", "StartVideo", "CreateView"]))
        delta = float(rng.uniform(0.08, 0.20))
        t0 = _pick_time(rng, warm + 12 * _MS_HOUR, end - 40 * _MS_HOUR, (8, 16), True)
        eff.new_version_start = t0
        new = len(VERSIONS)  # index of NEW_VERSION once appended
        eff.fail.append((_OP_INDEX[op], new, t0, end, delta))
        eff.described.append(
            {"kind": "new_version", "sdk": NEW_VERSION.sdk, "op": op, "added_rate": delta}
        )
        eff.incidents.append(_label(op, NEW_VERSION.sdk, "failure_rate", t0, end))
    elif scenario == "latency_drift":
        op = str(rng.choice(["CreateView", "Join", "StartVideo"]))
        mult = float(rng.uniform(1.8, 2.2))
        ramp = int(rng.uniform(24, 36) * _MS_HOUR)
        t0 = warm + int(rng.integers(2, 21)) * _MS_HOUR
        eff.dur.append((_OP_INDEX[op], None, t0, end, mult, ramp))
        cross = t0 + int(ramp * 0.3 / (mult - 1.0))
        cross = -(-cross // (5 * _MS_MIN)) * 5 * _MS_MIN
        eff.described.append({"kind": "drift", "op": op, "max_mult": mult, "ramp_h": ramp / 36e5})
        eff.incidents.append(_label(op, None, "duration", cross, end))
    elif scenario == "rare_version_noisy":
        eff.rare_share = 0.015
        eff.rare_noisy = True
        eff.described.append({"kind": "rare_version", "sdk": VERSIONS[_RARE].sdk, "share": 0.015})
    elif scenario == "busy_surge":
        t0 = _pick_time(rng, warm + 6 * _MS_HOUR, end - 4 * _MS_HOUR, (13, 20), True)
        t1 = t0 + int(rng.integers(12, 25)) * 5 * _MS_MIN
        factor = float(rng.uniform(2.5, 4.0))
        eff.surge.append((t0, t1, factor))
        eff.described.append({"kind": "surge", "factor": factor})
    elif scenario == "weekly_only":
        pass
    elif scenario == "tail_version":
        op = "CreateView"
        mult = float(rng.uniform(5.0, 5.5))
        t0 = _pick_time(rng, warm + 12 * _MS_HOUR, end - 40 * _MS_HOUR, (8, 16), True)
        eff.new_version_start = t0
        new = len(VERSIONS)  # index of NEW_VERSION once appended
        eff.tail.append((_OP_INDEX[op], new, t0, end, mult, 0.08))
        eff.described.append(
            {"kind": "tail_version", "sdk": NEW_VERSION.sdk, "op": op, "mult": mult, "share": 0.08}
        )
        eff.incidents.append(_label(op, NEW_VERSION.sdk, "duration", t0, end))
    else:
        raise ValueError(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")
    for d, (t0, t1) in zip(eff.described, _spans(eff), strict=False):
        d.update(start=_iso(t0), end=_iso(t1))
    return eff


def _spans(eff: Effects) -> list[tuple[int, int]]:
    out = [(t0, t1) for _, _, t0, t1, _, _ in eff.dur]
    out += [(t0, t1) for _, _, t0, t1, _ in eff.fail]
    out += [(t0, t1) for _, t0, t1, _ in eff.drop]
    out += [(t0, t1) for t0, t1, _ in eff.surge]
    out += [(t0, t1) for _, _, t0, t1, _, _ in eff.tail]
    return out


def _label(op: str, sdk: str | None, metric: str, t0: int, t1: int) -> dict[str, Any]:
    return {
        "operation_name": op,
        "sdk_version": sdk,
        "metric": metric,
        "start": _iso(t0),
        "end": _iso(t1),
    }


# =============================================================================== traffic
def _curve(
    hours: np.ndarray, floor: float, bumps: tuple[tuple[float, float, float], ...]
) -> np.ndarray:
    y = np.full(hours.shape, floor)
    for height, centre, width in bumps:
        d = np.abs(hours - centre)
        d = np.minimum(d, 24 - d)  # wraps around midnight
        y = y + height * np.exp(-0.5 * (d / width) ** 2)
    return y


def traffic_per_minute(start: int, minutes: int, legs_per_hour: float) -> np.ndarray:
    """Expected call legs per minute (no noise, no surge) from ``start`` (epoch ms).

    The weekday curve has mean 1 over a day, the weekend curve mean 1 too; each day is then
    scaled by its :data:`_DAY_LEVEL`, and the whole by ``legs_per_hour / 60``.
    """
    grid = np.arange(1440) / 60.0
    wd = _curve(grid, _WEEKDAY_FLOOR, _WEEKDAY_BUMPS)
    we = _curve(grid, _WEEKEND_FLOOR, _WEEKEND_BUMPS)
    wd, we = wd / wd.mean(), we / we.mean()
    t = start + np.arange(minutes, dtype=np.int64) * _MS_MIN
    minute_of_day = (t // _MS_MIN) % 1440
    weekday = ((t // _MS_DAY) + 3) % 7  # 1970-01-01 was a Thursday (Monday = 0)
    level = np.asarray(_DAY_LEVEL)[weekday]
    shape = np.where(weekday >= 5, we[minute_of_day], wd[minute_of_day])
    return np.asarray(level * shape * legs_per_hour / 60.0)


def _hour_load(t: np.ndarray) -> np.ndarray:
    """Mild time-of-day load factor on durations (1.0 at night, ~1.06 at the weekday peaks)."""
    h = ((t // _MS_MIN) % 1440) / 60.0
    y = _curve(h, 0.0, _WEEKDAY_BUMPS)
    return np.asarray(1.0 + 0.06 * y / y.max())


# =============================================================================== generation
@dataclass
class _Legs:
    t0: np.ndarray  # leg start (ms)
    t1: np.ndarray  # leg end (ms)
    call: np.ndarray  # call index
    group: np.ndarray  # bool
    version: np.ndarray  # version index
    degraded: np.ndarray  # bool, bad network on this leg
    call_bad: np.ndarray  # bool, service-side trouble for the whole call
    device: np.ndarray  # per-leg duration factor
    activity: np.ndarray  # per-leg op-count factor
    incoming: np.ndarray  # bool
    fail_extra: np.ndarray  # per-leg extra failure probability (rare noisy version)


def _version_weights(
    t: np.ndarray, start: int, end: int, eff: Effects, versions: list[VersionSpec]
) -> np.ndarray:
    """Share of each version at times ``t`` (rows sum to 1)."""
    span = max(end - start, 1)
    x = (t - start) / span
    days = (t - start) / _MS_DAY
    w = np.zeros((t.size, len(versions)))
    for i, v in enumerate(versions):
        if v.rollout_day is not None:
            w[:, i] = v.share1 / (1 + np.exp(-(days - v.rollout_day) / v.rollout_width))
        else:
            w[:, i] = v.share0 + (v.share1 - v.share0) * x
    if eff.rare_share is not None:
        w[:, _RARE] = eff.rare_share
    weekday = ((t // _MS_DAY) + 3) % 7
    native = np.array([v.platform != "Web" for v in versions])
    w[:, native] *= np.where(weekday >= 5, _NATIVE_WEEKEND_BOOST, 1.0)[:, None]
    if eff.new_version_start is not None:
        tau = 10 * _MS_HOUR
        age = np.maximum(t - eff.new_version_start, 0)
        share = np.where(t >= eff.new_version_start, 0.3 * (1 - np.exp(-age / tau)), 0.0)
        w[:, : len(VERSIONS)] *= (1 - share)[:, None] / w[:, : len(VERSIONS)].sum(1, keepdims=True)
        w[:, len(VERSIONS)] = share
    return np.asarray(w / w.sum(axis=1, keepdims=True))


def _make_legs(
    rng: np.random.Generator,
    start: int,
    end: int,
    legs_per_hour: float,
    eff: Effects,
    versions: list[VersionSpec],
) -> _Legs:
    minutes = (end - start) // _MS_MIN
    lam = traffic_per_minute(start, minutes, legs_per_hour)
    t_min = start + np.arange(minutes, dtype=np.int64) * _MS_MIN
    for t0, t1, factor in eff.surge:
        lam = np.where((t_min >= t0) & (t_min < t1), lam * factor, lam)
    # Calls: gamma-Poisson per minute with the gamma factor shared by a 30-minute block.
    blocks = minutes // 30 + 1
    noise = rng.gamma(_BLOCK_SHAPE, 1 / _BLOCK_SHAPE, blocks)[np.arange(minutes) // 30]
    group_p = 0.42
    mean_legs = (1 - group_p) * 1.8 + group_p * (3 + 2.6)
    calls_per_min = rng.poisson(lam * noise / mean_legs)
    n_calls = int(calls_per_min.sum())
    c_t = np.repeat(t_min, calls_per_min) + rng.integers(0, _MS_MIN, n_calls)
    group = rng.random(n_calls) < group_p
    size = np.where(
        group,
        np.minimum(3 + rng.geometric(1 / 2.6, n_calls) - 1, 12),
        np.where(rng.random(n_calls) < 0.8, 2, 1),
    )
    call_bad = rng.random(n_calls) < 0.02
    call = np.repeat(np.arange(n_calls), size)
    n = call.size
    t0 = c_t[call] + (rng.exponential(40_000, n)).astype(np.int64)
    length = np.minimum(np.exp(rng.normal(np.log(18 * _MS_MIN), 0.8, n)), 4 * _MS_HOUR)
    t1 = t0 + length.astype(np.int64)
    w = _version_weights(t0, start, end, eff, versions)
    version = (w.cumsum(axis=1) < rng.random(n)[:, None]).sum(axis=1)
    version = np.minimum(version, len(versions) - 1)
    platform = np.array([v.platform for v in versions])[version]
    degraded = rng.random(n) < np.where(platform == "Android", 0.07, 0.04)
    device_sigma = np.where((version == _RARE) & eff.rare_noisy, 0.6, 0.12)
    device = np.exp(rng.normal(0, 1, n) * device_sigma)
    fail_extra = np.zeros(n)
    if eff.rare_noisy:
        rare = version == _RARE
        fail_extra[rare] = rng.beta(0.6, 3.5, int(rare.sum()))
    return _Legs(
        t0=t0,
        t1=t1,
        call=call,
        group=group[call],
        version=version,
        degraded=degraded,
        call_bad=call_bad[call],
        device=device,
        activity=rng.gamma(2.0, 0.5, n),
        incoming=rng.random(n) < 0.25,
        fail_extra=fail_extra,
    )


def _guids(rng: np.random.Generator, n: int) -> pa.Array:
    """``n`` random lower-case GUID strings (8-4-4-4-12 hex)."""
    raw = rng.integers(0, 16, (n, 32), dtype=np.uint8)
    hexchars = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)[raw]
    out = np.full((n, 36), ord("-"), dtype=np.uint8)
    pos = [i for i in range(36) if i not in (8, 13, 18, 23)]
    out[:, pos] = hexchars
    return pa.array(out.view("S36").ravel(), type=pa.binary()).cast(pa.string())


def _take(values: list[str], idx: np.ndarray) -> pa.Array:
    return pa.array(values, type=pa.string()).take(pa.array(idx.astype(np.int32)))


def _durations(
    rng: np.random.Generator,
    op: np.ndarray,
    t: np.ndarray,
    legs: _Legs,
    leg: np.ndarray,
    versions: list[VersionSpec],
    eff: Effects,
) -> np.ndarray:
    n = op.size
    med = np.array([o.med_ms for o in OPS])[op]
    sig = np.array([o.sigma for o in OPS])[op]
    slow = rng.random(n) < np.array([o.slow_w for o in OPS])[op]
    med = np.where(slow, med * np.array([o.slow_mult for o in OPS])[op], med)
    sig = np.where(slow, np.array([o.slow_sigma for o in OPS])[op], sig)
    d = med * np.exp(sig * rng.standard_normal(n))
    tail = rng.random(n) < np.array([o.tail_p for o in OPS])[op]
    alpha = np.array([o.tail_alpha for o in OPS])[op]
    pareto = 3 * np.array([o.med_ms for o in OPS])[op] * (1 - rng.random(n)) ** (-1 / alpha)
    d = np.where(tail, pareto, d)
    d = d * legs.device[leg] * np.array([v.dur_mult for v in versions])[legs.version[leg]]
    d = d * _hour_load(t)
    for o, v, t0, t1, mult, ramp in eff.dur:
        sel = (op == o) & (t >= t0) & (t < t1)
        if v is not None:
            sel &= legs.version[leg] == v
        f = 1 + (mult - 1) * np.clip((t - t0) / ramp, 0, 1) if ramp else np.full(n, mult)
        d = np.where(sel, d * f, d)
    for o, v, t0, t1, mult, share in eff.tail:  # a slow minority of one version's calls
        sel = (op == o) & (t >= t0) & (t < t1) & (legs.version[leg] == v)
        d = np.where(sel & (rng.random(n) < share), d * mult, d)
    d = np.minimum(d, 600_000)
    point = np.array([o.point for o in OPS])[op]
    return np.where(point, 0, np.maximum(np.rint(d), 1)).astype(np.int64)


def _results(
    rng: np.random.Generator,
    op: np.ndarray,
    t: np.ndarray,
    legs: _Legs,
    leg: np.ndarray,
    versions: list[VersionSpec],
    eff: Effects,
) -> np.ndarray:
    """Index into :data:`_CODES` per row."""
    n = op.size
    fail_mult = np.array([v.fail_mult for v in versions])[legs.version[leg]]
    base = np.array([o.p_fail for o in OPS])[op] * fail_mult + legs.fail_extra[leg]
    for o, v, t0, t1, delta in eff.fail:
        sel = (op == o) & (t >= t0) & (t < t1)
        if v is not None:
            sel &= legs.version[leg] == v
        base = np.where(sel, base + delta, base)
    q_leg = np.where(legs.degraded[leg], np.array([o.q_leg for o in OPS])[op], 0.0)
    q_call = np.where(legs.call_bad[leg], np.array([o.q_call for o in OPS])[op], 0.0)
    point = np.array([o.point for o in OPS])[op]
    u = rng.random((3, n))
    server = (u[0] < q_call) & ~point
    client = ((u[1] < q_leg) | (u[2] < base)) & ~point & ~server
    p_exp = np.array([o.p_expected for o in OPS])[op]
    expected = ~server & ~client & (rng.random(n) < p_exp)
    native = np.array([v.platform != "Web" for v in versions])[legs.version[leg]]
    succ = np.where(native | (rng.random(n) < 0.03), 1, 0)
    code = succ
    code = np.where(expected, _C_EXP + rng.integers(0, len(_EXPECTED), n), code)
    code = np.where(client, _C_CLI + rng.integers(0, len(_CLIENT_FAIL), n), code)
    return np.asarray(np.where(server, _C_SRV + rng.integers(0, len(_SERVER_FAIL), n), code))


def _payloads(
    op: np.ndarray, platform: np.ndarray, group: np.ndarray, code: np.ndarray, incoming: np.ndarray
) -> pa.Array:
    """``OperationPayload`` JSON text, rendered once per distinct combination."""
    key = ((op * 4 + platform) * 2 + group) * 32 + code
    key = key * 2 + incoming
    uniq, inv = np.unique(key, return_inverse=True)
    plats = ("Web", "Android", "iOS", "Windows")
    texts = []
    for k in uniq.tolist():
        inc, k = k % 2, k // 2
        c, k = k % 32, k // 32
        g, k = k % 2, k // 2
        p, o = k % 4, k // 4
        name = OPS[o].name
        d: dict[str, Any] = {"SdkPlatform": plats[p]}
        if name not in ("CallAgentInit", "AskDevicePermission", "UserFacingDiagnostics"):
            d["CallType"] = "Group" if g else "1 to 1"
        if name in ("Join", "StartCall", "AcceptIncomingCall"):
            d["CallDirection"] = "Incoming" if inc else "Outgoing"
        if name in ("CreateView", "StartVideo", "StopVideo", "DisposeView"):
            d["StreamType"] = "Video"
        if name == "UserFacingDiagnostics":
            d["DiagnosticChanged"] = "networkReceiveQuality"
            d["DiagnosticQuality"] = "Poor" if c >= _C_EXP else "Good"
        rt, _, sub = _CODES[c]
        if sub is not None:
            d["SubCode"] = sub
        if name in ("Join", "StartCall") and not rt.startswith("Succ"):
            d["FailureReason"] = rt
        texts.append(json.dumps(d, separators=(",", ":")))
    return _take(texts, inv.ravel())


def _user_agents(versions: list[VersionSpec]) -> list[str]:
    out = []
    for v in versions:
        num = v.sdk.split("_")[0]
        if v.platform == "Web":
            parts = num.split(".")
            npm = ".".join(parts[:3]) + ("-beta." + parts[3] if v.sdk.endswith("_beta") else "")
            out.append(
                f"azure-communication-services/{npm} azsdk-js-communication-calling/{npm} "
                "(javascript_calling_sdk;#clientTag:holdout). Mozilla/5.0 (Windows NT 10.0; "
                "Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 "
                "Safari/537.36"
            )
        else:
            out.append(f"azsdk-{v.platform.lower()}-communication-calling/{num}")
    return out


def _malformed(
    rng: np.random.Generator, op: np.ndarray, name_idx: np.ndarray, dur: np.ndarray
) -> tuple[np.ndarray, dict[str, int], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint malformed kinds, one uniform draw per row: each row's kind (``len(_MALFORMED)``:
    clean), the count per kind, and the names, durations and null masks they change."""
    n = op.size
    u = rng.random(n)
    edges = np.cumsum(list(_MALFORMED.values()))
    kind = np.searchsorted(edges, u, side="right")  # == len(edges): clean
    kinds = list(_MALFORMED)
    point = np.array([o.point for o in OPS])[op]
    dur_null = np.zeros(n, bool)
    ts_null = np.zeros(n, bool)
    counts: dict[str, int] = {}
    for j, name in enumerate(kinds):
        sel = kind == j
        if name in ("null_duration", "negative_duration"):
            sel &= ~point
        counts[name] = int(sel.sum())
        if name == "empty_operation_name":
            name_idx = np.where(sel, 2 * len(OPS), name_idx)
        elif name == "pseudo_operation":
            name_idx = np.where(sel, 2 * len(OPS) + 1, name_idx)
        elif name == "null_timestamp":
            ts_null |= sel
        elif name == "null_duration":
            dur_null |= sel
        elif name == "negative_duration":
            dur = np.where(sel, -1, dur)
    return kind, counts, name_idx, dur, ts_null, dur_null


def _operations(
    rng: np.random.Generator, legs: _Legs, eff: Effects, start_ms: int, end_ms: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The operations of every leg (count per kind, then a time in the leg's phase), inside
    ``[start_ms, end_ms)`` and the scenario's drops, sorted by time: (leg, op, t)."""
    n_legs = legs.t0.size
    leg_parts, op_parts = [], []
    for i, o in enumerate(OPS):
        if o.count == "bern":
            k = (rng.random(n_legs) < o.rate).astype(np.int64)
        else:
            lam = o.rate * legs.activity * np.where(legs.group, o.group_mult, 1.0)
            if o.name == "UserFacingDiagnostics":
                lam = lam * np.where(legs.degraded, 5.0, 1.0)
            k = rng.poisson(lam)
        if o.name in ("HandleIncomingCall", "AcceptIncomingCall"):
            k = k * legs.incoming
        elif o.name in ("Join", "StartCall"):
            k = k * ~legs.incoming
        leg_parts.append(np.repeat(np.arange(n_legs), k))
        op_parts.append(np.full(int(k.sum()), i, dtype=np.int64))
    leg = np.concatenate(leg_parts)
    op = np.concatenate(op_parts)
    phase = np.array([o.phase for o in OPS])[op]
    span = legs.t1[leg] - legs.t0[leg]
    t = legs.t0[leg] + (rng.random(leg.size) * span).astype(np.int64)
    t = np.where(phase == "init", legs.t0[leg] - rng.integers(500, 20_000, leg.size), t)
    t = np.where(phase == "start", legs.t0[leg] + rng.integers(0, 3_000, leg.size), t)
    t = np.where(phase == "end", legs.t1[leg], t)
    keep = (t >= start_ms) & (t < end_ms)
    for o, t0, t1, frac in eff.drop:
        keep &= ~((op == o) & (t >= t0) & (t < t1) & (rng.random(op.size) < frac))
    order = np.nonzero(keep)[0]
    order = order[np.argsort(t[order], kind="stable")]
    leg, op, t = leg[order], op[order], t[order]
    return leg, op, t


def generate(
    out: str | Path,
    *,
    scenario: str,
    seed: int,
    days: int = 7,
    calls_per_hour: float = 80.0,
    start: datetime | None = None,
    warmup_days: float = 3.0,
) -> dict[str, Any]:
    """Generate one data set into ``out`` and return its manifest (also ``simulation.json``).

    Parameters
    ----------
    out
        Output directory (created; existing files of the same names are replaced).
    scenario
        A key of :data:`SCENARIOS`.
    seed
        Seed of every random draw (world noise and the scenario's effects).
    days
        Length of the data set; the first ``warmup_days`` are incident-free warm-up.
    calls_per_hour
        Mean call legs per hour on a weekday (weekends are lower; see :data:`_DAY_LEVEL`).
        At the default 80 the busiest operations see a few hundred operations an hour at the
        weekday peaks and typical ones tens.
    start
        First instant (UTC, midnight recommended); default Thursday 2027-03-04.

    Returns
    -------
    dict
        The manifest: scenario, seed, start/end/warmup_end, effects, incidents, row counts and
        the malformed rows injected per kind.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")
    if days < 2 or warmup_days >= days:
        raise ValueError("need days >= 2 and a warm-up shorter than the data set")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start_dt = start or datetime(2027, 3, 4, tzinfo=UTC)
    start_ms = int(start_dt.timestamp() * 1000)
    end_ms = start_ms + days * _MS_DAY
    warm_ms = start_ms + int(warmup_days * _MS_DAY)
    scen_no = list(SCENARIOS).index(scenario)
    rng = np.random.default_rng([seed, scen_no, 7919])
    eff = plan_effects(
        scenario, np.random.default_rng([seed, scen_no, 104729]), start_ms, warm_ms, end_ms
    )
    versions = list(VERSIONS) + ([NEW_VERSION] if eff.new_version_start is not None else [])

    legs = _make_legs(rng, start_ms, end_ms, calls_per_hour, eff, versions)
    n_legs = legs.t0.size

    leg, op, t = _operations(rng, legs, eff, start_ms, end_ms)
    n = op.size

    dur = _durations(rng, op, t, legs, leg, versions, eff)
    code = _results(rng, op, t, legs, leg, versions, eff)

    # -- strings -------------------------------------------------------------------------------
    plat_idx = {"Web": 0, "Android": 1, "iOS": 2, "Windows": 3}
    vplat = np.array([plat_idx[v.platform] for v in versions])
    payload = _payloads(
        op,
        vplat[legs.version[leg]],
        legs.group[leg].astype(np.int64),
        code,
        legs.incoming[leg].astype(np.int64),
    )
    call_ids = _guids(rng, int(legs.call.max()) + 1 if n_legs else 0)
    leg_ids = _guids(rng, n_legs)
    endpoint_ids = _guids(rng, n_legs)
    client_ids = _guids(rng, n_legs)
    names = [o.name for o in OPS]
    lower = [o.name[0].lower() + o.name[1:] for o in OPS]
    vocab = names + lower + ["", "CallClientOperations"]
    is_event = np.array([o.name.endswith("-changed") for o in OPS])[op]
    name_idx = np.where(is_event & (rng.random(n) < _LOWERCASE_EVENT_RATE), op + len(OPS), op)

    kind, counts, name_idx, dur, ts_null, dur_null = _malformed(rng, op, name_idx, dur)
    kinds = list(_MALFORMED)
    op_id = _guids(rng, n)
    empty_id = kind == kinds.index("empty_operation_id")
    if empty_id.any():
        op_id = pc.if_else(pa.array(empty_id), "", op_id)
    if counts["invalid_payload_json"]:
        bad = pa.array(kind == kinds.index("invalid_payload_json"))
        broken = pc.utf8_slice_codeunits(payload, 0, 12)  # truncated: not valid JSON
        payload = pc.if_else(bad, broken, payload)
    # Pre-call operations: CallAgentInit mostly has no CallId/ParticipantId yet.
    no_call = (op == _OP_INDEX["CallAgentInit"]) & (rng.random(n) < 0.6)

    # -- arrival lag: minutes usually, sometimes tens of minutes, occasionally hours --------------
    comp = np.searchsorted([0.85, 0.98], rng.random(n), side="right")
    lag_med = np.array([75_000.0, 8 * _MS_MIN, 2.5 * _MS_HOUR])[comp]
    lag_sig = np.array([0.6, 0.7, 0.6])[comp]
    lag = (lag_med * np.exp(lag_sig * rng.standard_normal(n))).astype(np.int64) + 2_000
    tg = t + lag

    rtypes = [c[0] for c in _CODES]
    sig = np.array([c[1] for c in _CODES], dtype=np.int32)[code]
    uas = _user_agents(versions)
    resource = (
        "/subscriptions/00000000-0000-0000-0000-000000000b01/resourcegroups/rg-holdout"
        "/providers/microsoft.communication/communicationservices/acs-holdout"
    )
    empty = pa.array(np.full(n, "", dtype=object), type=pa.string())

    def const(value: str) -> pa.Array:
        return pa.array([value], type=pa.string()).take(pa.array(np.zeros(n, dtype=np.int32)))

    call_col = call_ids.take(pa.array(legs.call[leg]))
    part_col = leg_ids.take(pa.array(leg))
    table = pa.table(
        {
            "TenantId": const("5f0c4b6e-0000-4000-8000-00000000b01d"),
            "TimeGenerated": pa.array(tg * 1000, type=pa.int64()).cast(_TS),
            "CallClientTimeStamp": pa.array(t * 1000, type=pa.int64(), mask=ts_null).cast(_TS),
            "CallId": pc.if_else(pa.array(no_call), empty, call_col),
            "ClientInstanceId": client_ids.take(pa.array(leg)),
            "DurationMs": pa.array(dur, type=pa.int64(), mask=dur_null),
            "EndpointId": endpoint_ids.take(pa.array(leg)),
            "OperationId": op_id,
            "OperationName": _take(vocab, name_idx),
            "OperationPayload": payload,
            "OperationType": const("client-api-request"),
            "ParticipantId": pc.if_else(pa.array(no_call), empty, part_col),
            "ResultSignature": pa.array(sig, type=pa.int32()),
            "ResultType": _take(rtypes, code),
            "SdkVersion": _take([v.sdk for v in versions], legs.version[leg]),
            "UserAgent": _take(uas, legs.version[leg]),
            "SourceSystem": const("Azure"),
            "Type": const("ACSCallClientOperations"),
            "_ResourceId": const(resource),
        }
    )
    # -- re-ingested duplicates: same OperationId and timestamp, arriving later ------------------
    clean = np.nonzero((kind == len(kinds)) & (rng.random(n) < _DUPLICATE_RATE))[0]
    counts["duplicate"] = int(clean.size)
    if clean.size:
        dup = table.take(pa.array(clean))
        later = tg[clean] + (rng.exponential(40 * _MS_MIN, clean.size)).astype(np.int64)
        dup = dup.set_column(1, "TimeGenerated", pa.array(later * 1000, type=pa.int64()).cast(_TS))
        table = pa.concat_tables([table, dup])
    lowered = (name_idx >= len(OPS)) & (name_idx < 2 * len(OPS))
    counts["lowercase_event_name"] = int(lowered.sum())
    pq.write_table(table, out / "operations.parquet", compression="zstd")
    for stale in out.glob("operations.*"):
        if stale.name != "operations.parquet":
            stale.unlink()

    (out / "incidents.json").write_text(json.dumps(eff.incidents, indent=2) + "\n")
    (out / "maintenance.json").unlink(missing_ok=True)
    manifest = {
        "generator": "benchmarks/holdout_sim.py",
        "generator_version": GENERATOR_VERSION,
        "scenario": scenario,
        "description": SCENARIOS[scenario].description,
        "hard_negative": SCENARIOS[scenario].hard_negative,
        "seed": seed,
        "format": "parquet",
        "start": _iso(start_ms),
        "end": _iso(end_ms),
        "warmup_end": _iso(warm_ms),
        "days": days,
        "calls_per_hour": calls_per_hour,
        "legs": int(n_legs),
        "rows": int(table.num_rows),
        "sdk_versions": [v.sdk for v in versions],
        "effects": eff.described,
        "incidents": len(eff.incidents),
        "malformed": counts,
        "data": ["operations.parquet"],
    }
    (out / "simulation.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Command line: generate one data set (see the module docstring). Returns an exit code."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path)
    ap.add_argument("--scenario", default="weekly_only")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--calls-per-hour", type=float, default=80.0)
    ap.add_argument("--start", default=None, help="ISO date, default 2027-03-04 (a Thursday)")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = ap.parse_args(argv)
    if args.list:
        for s in SCENARIOS.values():
            print(f"{s.name:22} {s.description}")
        return 0
    if args.out is None:
        ap.error("--out is required")
    start = None
    if args.start:
        start = datetime.fromisoformat(args.start)
        start = start if start.tzinfo else start.replace(tzinfo=UTC)
    try:
        m = generate(
            args.out,
            scenario=args.scenario,
            seed=args.seed,
            days=args.days,
            calls_per_hour=args.calls_per_hour,
            start=start,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{args.out}: {m['rows']} rows, {m['legs']} legs, {m['incidents']} incident(s), "
        f"malformed {m['malformed']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
