"""The forest's vote: p-values of its scores over trailing spans, and its alerts' words.

A span of ``k`` buckets is one vector: the sum of its buckets' feature vectors over the square
root of their number (:func:`span_vectors`), so a change too small to see in any one bucket
stands out over an hour, as it does for the metrics' own tests. The forest, fitted on single
buckets, scores it; the score's p-value is its rank among the scores of held-out baseline
windows of the same length and kind of partition (conformal), and beyond the highest of those
an exponential tail fitted to their top scores (peaks over threshold, as in SPOT: Siffer et al.,
KDD 2017), so a p-value can be smaller than one over the number of held-out windows
(:func:`tail_p`). The best span's p-value times the number of spans is the forest's test,
which :func:`detector.detect.decide.decide` gates like any other; :mod:`detector.explain_text`
words an alert.
NumPy only: a run with ``[detection] forest = false`` never imports scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = [
    "FALLBACK",
    "POOLED",
    "calibration_key",
    "window_vectors",
    "MAX_SPAN",
    "forest_spans",
    "partition_labels",
    "CalibrationRows",
    "span_vectors",
    "tail_p",
    "forest_evidence",
]

#: Separator in calibration labels and keys (not in any name a log would carry as text).
FALLBACK = "\x1f"
#: Label of every kind of partition together.
POOLED = FALLBACK + "all"
#: Top held-out scores the exponential tail is fitted to (at least; else 5 % of them).
_TAIL_MIN = 20
#: The forest's longest trailing span (buckets). Every bucket of the look-back is scored, so
#: longer spans cost time; a joint change that takes longer to show is a drift the metrics'
#: own long spans see.
MAX_SPAN = 36


def forest_spans(spans: Sequence[int]) -> tuple[int, ...]:
    """The policy's spans the forest tests (those up to :data:`MAX_SPAN`, at least one)."""
    return tuple(sorted({k for k in spans if k <= MAX_SPAN} or {min(spans)}))


def calibration_key(label: str, span: int) -> str:
    """The key of the held-out scores of ``span``-bucket windows of partitions of ``label``."""
    return f"{label}{FALLBACK}{span}"


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
    (``fallbacks``), bucket index (``times``, None: unordered); the spans to calibrate."""

    groups: np.ndarray
    fallbacks: np.ndarray
    times: np.ndarray | None = None
    spans: tuple[int, ...] = (1,)

    @classmethod
    def pooled(cls, n: int) -> CalibrationRows:
        """``n`` rows of one group, unordered."""
        one = np.full(n, POOLED, dtype=object)
        return cls(one, one)

    def take(self, mask: np.ndarray) -> CalibrationRows:
        """The rows where ``mask`` is True."""
        times = None if self.times is None else self.times[mask]
        return CalibrationRows(self.groups[mask], self.fallbacks[mask], times, self.spans)


class Scorer(Protocol):
    """What :func:`forest_evidence` needs of a fitted scorer."""

    def score_samples(self, X: np.ndarray) -> np.ndarray: ...

    def p_values(self, scores: np.ndarray, labels: np.ndarray, span: int) -> np.ndarray: ...


def span_vectors(feats: np.ndarray, has: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(P, T, F): at each bucket, the sum of the feature vectors of the trailing ``k`` buckets
    (fewer at the start) over the square root of how many of them had calls (``has``, (P, T));
    and that number, (P, T). Features are z-like, so under no change a span's vector is about
    as spread as one bucket's."""
    P, T, F = feats.shape
    c = np.zeros((P, T + 1, F))
    np.cumsum(np.where(has[..., None], feats, 0.0), axis=1, out=c[:, 1:])
    n = np.zeros((P, T + 1))
    np.cumsum(has, axis=1, out=n[:, 1:])
    lo = np.maximum(np.arange(1, T + 1) - k, 0)
    count = n[:, 1:] - n[:, lo]
    return (c[:, 1:] - c[:, lo]) / np.sqrt(np.maximum(count, 1.0))[..., None], count


def tail_p(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """p-value of each score against held-out scores (``reference``, sorted ascending).

    Within the reference's range: conformal, ``(1 + #{reference >= s}) / (n + 1)``. Above its
    top ``m`` scores (m = max(20, 5 % of n)): ``m / (n + 1) * exp(-(s - u) / beta)``, u the
    threshold and beta the mean excess of the top scores over it (an exponential tail; the
    forest's scores are bounded, so their true tail is shorter and this errs high). NaN gives 1.
    """
    ref = np.asarray(reference, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    n = len(ref)
    if not n:
        return np.ones(len(s))
    at_least = n - np.searchsorted(ref, np.nan_to_num(s, nan=np.inf), side="left")
    p = (1.0 + at_least) / (n + 1.0)
    m = min(max(_TAIL_MIN, n // 20), n)
    u = ref[n - m - 1] if n > m else ref[0]
    beta = max(float(np.mean(ref[n - m :] - u)), 1e-6)
    tail = m / (n + 1.0) * np.exp(-(s - u) / beta)
    p = np.where(at_least < m, np.minimum(p, tail), p)
    return np.where(np.isnan(s), 1.0, np.clip(p, 0.0, 1.0))


def window_vectors(
    X: np.ndarray, groups: np.ndarray, times: np.ndarray | None, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Span vectors of every ``k`` consecutive held-out rows of one partition (``groups``),
    in ``times`` order, and the index of each window's last row."""
    order = np.lexsort(
        (np.arange(len(X)) if times is None else np.asarray(times), groups.astype(str))
    )
    Xs, gs = X[order].astype(np.float64), groups[order]
    c = np.zeros((len(Xs) + 1, Xs.shape[1]))
    np.cumsum(Xs, axis=0, out=c[1:])
    end = np.arange(k, len(Xs) + 1)
    ok = gs[end - 1] == gs[end - k] if len(end) else np.zeros(0, bool)
    end = end[ok]
    return (c[end] - c[end - k]) / np.sqrt(k), order[end - 1]


def forest_evidence(
    scorer: Scorer,
    feats: np.ndarray,
    calls: np.ndarray,
    labels: np.ndarray,
    *,
    spans: Sequence[int],
    last: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The forest's p-values of the last ``last`` buckets, and the span behind each.

    ``feats`` (P, T, F) and ``calls`` (P, T) cover the judged buckets and the look-back the
    longest of ``spans`` needs; ``labels`` (P,) each partition's calibration label (its kind,
    :func:`partition_labels`). Each span's vector is scored and ranked (:func:`tail_p`); the
    best span's p-value is multiplied by the number of spans (Bonferroni), as the metrics'
    tests are. A bucket of a partition without calls in the whole span has p = 1.
    Returns p-values and spans, (P, last) each.
    """
    P = feats.shape[0]
    has = calls > 0
    best = np.ones((P, last))
    best_span = np.ones((P, last), dtype=np.int64)
    for k in sorted(set(spans)):
        V, count = span_vectors(feats, has, k)
        V, seen = V[:, -last:], count[:, -last:] > 0
        pk = np.ones((P, last))
        if seen.any():
            rows = np.nonzero(seen)[0]
            scores = scorer.score_samples(V[seen].astype(np.float32))
            pk[seen] = scorer.p_values(scores, labels[rows], k)
        better = pk < best
        best = np.where(better, pk, best)
        best_span = np.where(better, k, best_span)
    return np.minimum(best * len(set(spans)), 1.0), best_span
