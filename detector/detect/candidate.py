"""A candidate: one (partition, metric) that deviated in the judged window, with the furthest
gate it reached and the evidence behind it.

Consumes nothing but its fields (the engine builds them); produces the run report's candidate
record (:meth:`Candidate.to_json`) and what alerting reads: the fingerprint, whether the engine
could judge it (:attr:`Candidate.evaluated`) and its values. Pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from detector.anomaly import fingerprint_of

__all__ = ["NOT_EVALUATED", "Candidate"]

#: Engine gate reasons meaning "could not judge": a firing alert keeps its state.
NOT_EVALUATED = frozenset({"maintenance", "insufficient_history", "suppressed_low_volume"})


@dataclass(frozen=True)
class Candidate:
    """One (partition, metric) at its furthest gate in the window (fields as in the report).

    ``sdk_version`` None is the operation's fleet; ``bucket`` the ISO start of the bucket
    shown (the smallest p among those at the furthest gate); ``observed``, ``expected`` and
    ``score`` are None when not finite; ``failures`` only for the failure rate;
    ``buckets_by_reason`` counts the window's buckets per gate reached (zeros left out).
    """

    operation_name: str
    sdk_version: str | None
    metric: str
    reason: str
    bucket: str
    p_value: float
    effect: float
    observed: float | None
    expected: float | None
    calls: float
    failures: float | None
    span_buckets: int
    score: float | None
    provisional: bool
    baseline_kind: str
    buckets_by_reason: dict[str, int] = field(default_factory=dict, hash=False)

    @property
    def fingerprint(self) -> str:
        """The alert fingerprint ``operation|sdk_version|metric`` of this candidate."""
        return fingerprint_of(self.operation_name, self.sdk_version, self.metric)

    @property
    def evaluated(self) -> bool:
        """False when the engine stopped at a gate that means it could not judge."""
        return self.reason not in NOT_EVALUATED

    def to_json(self) -> dict[str, Any]:
        """The run report's record: every field, in declaration order (JSON-able)."""
        return {
            "operation_name": self.operation_name,
            "sdk_version": self.sdk_version,
            "metric": self.metric,
            "reason": self.reason,
            "bucket": self.bucket,
            "p_value": self.p_value,
            "effect": self.effect,
            "observed": self.observed,
            "expected": self.expected,
            "calls": self.calls,
            "failures": self.failures,
            "span_buckets": self.span_buckets,
            "score": self.score,
            "provisional": self.provisional,
            "baseline_kind": self.baseline_kind,
            "buckets_by_reason": dict(self.buckets_by_reason),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Candidate:
        """A report record (as :meth:`to_json` wrote it) -> the candidate; missing keys empty."""
        return cls(
            operation_name=str(data["operation_name"]),
            sdk_version=data.get("sdk_version"),
            metric=str(data["metric"]),
            reason=str(data.get("reason", "")),
            bucket=str(data.get("bucket", "")),
            p_value=float(data.get("p_value", float("nan"))),
            effect=float(data.get("effect", float("nan"))),
            observed=data.get("observed"),
            expected=data.get("expected"),
            calls=float(data.get("calls", 0.0)),
            failures=data.get("failures"),
            span_buckets=int(data.get("span_buckets", 0)),
            score=data.get("score"),
            provisional=bool(data.get("provisional", False)),
            baseline_kind=str(data.get("baseline_kind", "")),
            buckets_by_reason=dict(data.get("buckets_by_reason") or {}),
        )
