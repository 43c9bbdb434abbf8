"""The forest's vote: conformal p-values of its scores, combined over trailing spans, in words.

Consumes the forest scores of (partition, bucket) vectors and the held-out scores a
:class:`~detector.score.PartitionScorer` keeps; produces per-bucket conformal p-values
(:func:`conformal_p`), their combination over each trailing span by Brown's method
(:func:`span_p_values`: Fisher's ``-2 sum ln p`` against a chi-square whose scale and degrees
of freedom were matched on held-out baseline buckets, so neighbouring buckets' dependence and
any miscalibration of single p-values are paid for), what :func:`detector.decide.decide`
gates as the forest's test, and the plain words of a forest alert (:func:`joint_text`).
NumPy and SciPy only: a run with ``[detection] forest = false`` never imports scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy import special

__all__ = [
    "FALLBACK",
    "partition_labels",
    "CalibrationRows",
    "brown_params",
    "conformal_p",
    "forest_evidence",
    "joint_text",
    "span_p_values",
]

#: Prefix of the calibration keys of a kind of partition (used when a partition has too few).
FALLBACK = "\x1f"
#: Fewest held-out windows of a span for Brown's moments (longer spans: the longest with enough).
_MIN_WINDOWS = 50


def partition_labels(
    operation: np.ndarray, version: np.ndarray, is_fleet: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Calibration labels of partitions: their own key and their kind's (fleet or version)."""
    groups = np.array(
        [f"{o}{FALLBACK}{v}" for o, v in zip(operation, version, strict=True)], dtype=object
    )
    kinds = np.where(np.asarray(is_fleet, bool), FALLBACK + "fleet", FALLBACK + "version").astype(
        object
    )
    return groups, kinds


@dataclass
class CalibrationRows:
    """Who each training vector belongs to: partition label (``groups``), kind of partition
    (``fallbacks``), bucket index (``times``, None: unordered); the spans to calibrate and
    the engine's scoring floor ``min_z`` (vectors with every |feature| below it score 0)."""

    groups: np.ndarray
    fallbacks: np.ndarray
    times: np.ndarray | None = None
    spans: tuple[int, ...] = (1,)
    min_z: float = 0.0

    @classmethod
    def pooled(cls, n: int) -> CalibrationRows:
        """``n`` rows of one group, unordered."""
        one = np.full(n, FALLBACK + "all", dtype=object)
        return cls(one, one)

    def take(self, mask: np.ndarray) -> CalibrationRows:
        """The rows where ``mask`` is True."""
        times = None if self.times is None else self.times[mask]
        return CalibrationRows(
            self.groups[mask], self.fallbacks[mask], times, self.spans, self.min_z
        )


class Scorer(Protocol):
    """What :func:`forest_evidence` needs of a fitted scorer."""

    brown_: dict[int, tuple[float, float]]

    def score_samples(self, X: np.ndarray) -> np.ndarray: ...

    def p_values(
        self, scores: np.ndarray, groups: np.ndarray, fallbacks: np.ndarray | None = None
    ) -> np.ndarray: ...


def conformal_p(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``(1 + #{reference >= s}) / (n + 1)`` per score (``reference`` sorted ascending);
    NaN (not scored) gives 1."""
    ref = np.asarray(reference, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    at_least = len(ref) - np.searchsorted(ref, np.nan_to_num(s, nan=np.inf), side="left")
    p = (1.0 + at_least) / (len(ref) + 1.0)
    return np.where(np.isnan(s), 1.0, p)


def brown_params(
    p: np.ndarray, groups: np.ndarray, times: np.ndarray | None, spans: Sequence[int]
) -> dict[int, tuple[float, float]]:
    """Scale ``c`` and degrees of freedom ``nu`` per span: ``-2 sum ln p`` over ``k``
    consecutive held-out buckets of one partition, pooled over partitions, matched to
    ``c * chi2(nu)`` by its mean and variance (Brown's method). ``c`` is at least 1, so a
    sum is never judged more unusual than under independence. Spans with fewer than 50
    windows take the longest span's with enough, scaled to their length.
    """
    y = -2.0 * np.log(np.clip(np.asarray(p, dtype=np.float64), 1e-300, 1.0))
    g = np.asarray(groups, dtype=object)
    order = np.lexsort((np.arange(len(y)) if times is None else np.asarray(times), g.astype(str)))
    y, g = y[order], g[order]
    bounds = np.flatnonzero(np.r_[True, g[1:] != g[:-1], True])
    out: dict[int, tuple[float, float]] = {}
    last: tuple[int, float, float] | None = None
    for k in sorted(set(spans)):
        sums = [
            np.convolve(y[a:b], np.ones(k), mode="valid")
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
            if b - a >= k
        ]
        window = np.concatenate(sums) if sums else np.zeros(0)
        if len(window) >= _MIN_WINDOWS and window.mean() > 0:
            mean, var = float(window.mean()), float(window.var())
            last = (k, mean / k, var / k)
        elif last is not None:  # extrapolate per bucket from the longest span with enough
            mean, var = last[1] * k, last[2] * k
        else:
            mean, var = 2.0 * k, 4.0 * k  # independence: chi-square with 2k df
        c = max(var / (2.0 * mean), 1.0)
        out[k] = (c, mean / c)
    return out


def span_p_values(
    p: np.ndarray, spans: Sequence[int], last: int, brown: dict[int, tuple[float, float]]
) -> tuple[np.ndarray, np.ndarray]:
    """Best p-value over trailing spans, for the last ``last`` columns of ``p`` (P, T).

    Each span's ``-2 sum ln p`` meets the span's scaled chi-square from ``brown`` (a span
    missing there: independence, chi-square with ``2k`` df); the best span's value is
    multiplied by the number of spans (Bonferroni), as the other tests do. Spans longer than
    the look-back are cut to what there is. Returns the p-values and the span behind each,
    both (P, last).
    """
    P, T = p.shape
    logs = np.zeros((P, T + 1))
    np.cumsum(-2.0 * np.log(np.clip(p, 1e-300, 1.0)), axis=1, out=logs[:, 1:])
    best = np.ones((P, last))
    best_span = np.ones((P, last), dtype=np.int64)
    ends = np.arange(T - last + 1, T + 1)
    for k in sorted(set(spans)):
        starts = np.maximum(ends - k, 0)
        c, nu = brown.get(k, (1.0, 2.0 * k))
        stat = logs[:, ends] - logs[:, starts]
        pk = special.gammaincc(nu / 2.0, stat / (2.0 * c))  # c * chi2(nu) upper tail
        better = pk < best
        best = np.where(better, pk, best)
        best_span = np.where(better, np.broadcast_to(ends - starts, best.shape), best_span)
    return np.minimum(best * len(set(spans)), 1.0), best_span


def forest_evidence(
    scorer: Scorer,
    feats: np.ndarray,
    calls: np.ndarray,
    labels: tuple[np.ndarray, np.ndarray],
    *,
    min_z: float,
    spans: Sequence[int],
    last: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forest scores and span p-values of the last ``last`` buckets.

    ``feats`` (P, T, F) and ``calls`` (P, T) cover the judged buckets and the look-back the
    longest span needs; ``labels`` (P,) each partition's calibration labels
    (:func:`partition_labels`).
    Buckets without calls, or with every ``|feature|`` below ``min_z``, are not scored (p = 1,
    as in the calibration). Returns scores (P, last) (NaN = not scored), span p-values
    (P, last) and the span behind each (P, last).
    """
    P, T, _ = feats.shape
    scores = np.full((P, T), np.nan)
    p = np.ones((P, T))
    mask = (calls > 0) & (np.abs(feats).max(axis=2) >= min_z)
    if mask.any():
        rows = np.nonzero(mask)[0]
        scores[mask] = scorer.score_samples(feats[mask])
        p[mask] = scorer.p_values(scores[mask], labels[0][rows], labels[1][rows])
    span_p, span = span_p_values(p, spans, last, scorer.brown_)
    return scores[:, -last:], span_p, span


#: A metric's words in a forest alert, and how its effect is shown.
_JOINT_WORDS = {
    "duration": ("latency", lambda e: f"{e * 100:+.0f} %"),
    "failure_rate": ("failures", lambda e: f"{e * 100:+.1f} points"),
    "volume": ("volume", lambda e: f"{e * 100:+.0f} %"),
}


def joint_text(effects: dict[str, float]) -> str:
    """``"latency +9 %, failures +1.2 points, volume -20 %"`` from effects per metric name
    (relative for duration and volume, absolute for the failure rate; NaN ones left out)."""
    parts = []
    for metric, value in effects.items():
        if metric in _JOINT_WORDS and np.isfinite(value):
            word, fmt = _JOINT_WORDS[metric]
            parts.append(f"{word} {fmt(value)}")
    return ", ".join(parts)
