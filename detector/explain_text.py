"""The engine's numbers in words: an alert's ``reason``.

The engine (:mod:`detector.detect.engine`) measures each alerting run and hands this module an
:class:`AlertNumbers`; :func:`reason_text` words it as the Anomaly's ``reason`` ("anomaly:
failure rate 12.0% vs 1.0% (+11.0 pts, 6/50 failed in 5 calls, p=3e-08, 3 buckets, span 6)").
The forest's alone are worded by :func:`combination_text`. Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "AlertNumbers",
    "combination_text",
    "fmt_p",
    "joint_text",
    "reason_text",
]


@dataclass(frozen=True)
class AlertNumbers:
    """What an alerting run measured, for its ``reason``: the metric, its observed and baseline
    value over the run, the test's p-value (spans corrected in), the run's buckets and the
    test's span, and what only some alerts have (the rest are 0 or None)."""

    metric: str  # "duration" (p95 ms), "failure_rate" (a rate) or "volume" (calls per bucket)
    observed: float
    baseline: float
    p: float
    buckets: int
    span: int
    effect: float = float("nan")  # duration: the test's typical relative change
    calls: int = 0  # failure rate: calls, failures and failing calls behind it
    failures: int = 0
    failed_calls: int = 0
    rollout_since: str | None = None  # judged on everything since this rollout (ISO time)
    provisional_weight: float | None = None  # a provisional baseline's share of own history
    forest_moves: Mapping[str, float] | None = None  # the forest's alone: effect per metric


def fmt_p(p: float) -> str:
    """A p-value in one significant digit (``3e-08``), ``<1e-300`` below that."""
    return f"{p:.1g}" if p >= 1e-300 else "<1e-300"


#: A metric's words in a forest alert: its name, how its effect is scaled, unit, decimals.
_JOINT_WORDS: dict[str, tuple[str, float, str, int]] = {
    "duration": ("latency", 100.0, "%", 0),
    "failure_rate": ("failures", 100.0, "points", 1),
    "volume": ("volume", 100.0, "%", 0),
}


def joint_text(effects: Mapping[str, float]) -> str:
    """``"latency +9 %, failures +1.2 points, volume -20 %"`` from effects per metric name
    (relative for duration and volume, absolute for the failure rate; NaN ones left out)."""
    parts = []
    for metric, value in effects.items():
        if metric in _JOINT_WORDS and math.isfinite(value):
            word, scale, unit, decimals = _JOINT_WORDS[metric]
            parts.append(f"{word} {value * scale:+.{decimals}f} {unit}")
    return ", ".join(parts)


def combination_text(moves: Mapping[str, float]) -> str:
    """Effects per metric of a forest-only alert -> ``an unusual combination: ...`` words."""
    return f"an unusual combination: {joint_text(moves)}; no one of them conclusive alone"


def _figures_text(a: AlertNumbers) -> str:
    """An alert's numbers -> its figures in words, up to the p-value (the bracket left open)."""
    o, b = a.observed, a.baseline
    if a.metric == "duration":
        return f"duration p95 {o:.0f} ms vs {b:.0f} ms (typical {a.effect:+.0%}, p={fmt_p(a.p)}"
    if a.metric == "failure_rate" and a.rollout_since is not None:
        return (
            f"failure rate {o:.1%} vs {b:.1%} since its rollout at {a.rollout_since} "
            f"({(o - b) * 100:+.1f} pts, {a.failures}/{a.calls} failed, against its operation's "
            f"other versions at the same hours, p={fmt_p(a.p)}"
        )
    if a.metric == "failure_rate":
        fc = a.failed_calls
        return (
            f"failure rate {o:.1%} vs {b:.1%} "
            f"({(o - b) * 100:+.1f} pts, {a.failures}/{a.calls} failed "
            f"in {fc} call{'s' if fc != 1 else ''}, p={fmt_p(a.p)}"
        )
    return f"volume {o:.1f} vs {b:.1f} calls/bucket ({o / max(b, 1e-9) - 1:+.0%}, p={fmt_p(a.p)}"


def reason_text(a: AlertNumbers) -> str:
    """An alert's numbers -> its ``reason``: ``anomaly: <figures>, 3 buckets, span 6)``, a
    forest-only alert's combination instead, and the provisional baseline's share."""
    if a.forest_moves is not None:
        text = combination_text(a.forest_moves)
    else:
        n = a.buckets
        text = _figures_text(a) + f", {n} bucket{'s' if n > 1 else ''}, span {a.span})"
    if a.provisional_weight is not None:
        text += f" [provisional baseline: {a.provisional_weight:.0%} own]"
    return f"anomaly: {text}"
