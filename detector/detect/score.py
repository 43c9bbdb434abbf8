"""Score: an isolation forest over the bucket features, one sign convention (higher = worse).

Consumes feature vectors (:data:`detector.detect.features.FEATURE_NAMES`) of baseline buckets to
``fit`` and of recent buckets to score; produces anomaly scores in (0, 1] (the forest's
``2 ** (-E[h(x)] / c(n))``, so about 0.5 is ordinary and close to 1 is isolated at once), a flag
threshold learnt from the training scores, per-feature ablation "drivers", and conformal
p-values of span vectors against held-out baseline windows (split: the forest never saw
them; see :mod:`detector.detect.forest`). Pure (no I/O); persistence lives in :mod:`detector.store.models`.

:class:`PartitionScorer` follows the scikit-learn estimator contract: ``__init__`` only stores
its keyword arguments, ``fit`` validates them and learns ``model_``, ``feature_names_``,
``threshold_``; every scoring method checks the fitted state and the feature names.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.ensemble import IsolationForest
from sklearn.utils._param_validation import Interval

from detector.detect.forest import POOLED, CalibrationRows, calibration_key, tail_p, window_vectors
from detector.errors import ModelMismatchError, NotFittedError

__all__ = ["PartitionScorer"]

#: Inputs at least this long are scored on several threads (below, threads cost more).
_PARALLEL_ROWS = 20_000
#: Fewest training vectors for a held-out calibration half (fewer: no p-values at all).
_MIN_SPLIT = 64


# scikit-learn ships no type information: its base class is Any to mypy.
class PartitionScorer(BaseEstimator):  # type: ignore[misc]
    """Isolation forest on per-(partition, bucket) deviation features.

    Parameters
    ----------
    n_estimators : int, default=100
        Trees in the forest.
    max_samples : int, default=256
        Sub-sample size per tree (the forest's own default).
    contamination : float, default=0.01
        Share of training vectors above ``threshold_`` (the flag threshold).
    random_state : int, default=0
        Seed: the same data and seed give the same forest and scores.

    Attributes
    ----------
    model_ : IsolationForest
    feature_names_ : tuple of str
    threshold_ : float
        Scores >= this are flagged (the ``1 - contamination`` quantile of training scores).
    n_train_ : int
    scale_ : ndarray
        Robust spread (1.4826 MAD) of each training feature, to compare features' deviations.
    calibration_ : dict of str to ndarray
        Sorted scores of held-out windows per span and kind of partition
        (:func:`detector.detect.forest.calibration_key`); empty when too few rows to hold any out.
    """

    _parameter_constraints: dict[str, list[Any]] = {
        "n_estimators": [Interval(Integral, 1, None, closed="left")],
        "max_samples": [Interval(Integral, 2, None, closed="left")],
        "contamination": [Interval(Real, 0.0, 0.5, closed="neither")],
        "random_state": [Interval(Integral, 0, 2**32 - 1, closed="both")],
    }

    def __init__(
        self,
        *,
        n_estimators: int = 100,
        max_samples: int = 256,
        contamination: float = 0.01,
        random_state: int = 0,
    ) -> None:
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.contamination = contamination
        self.random_state = random_state

    def fit(
        self,
        X: np.ndarray,
        y: Any = None,
        *,
        feature_names: Sequence[str] | None = None,
        rows: CalibrationRows | None = None,
    ) -> PartitionScorer:
        """Fit the forest on baseline feature vectors ``X`` (n_samples, n_features).

        With at least 64 rows, the earlier half (by ``rows.times``; a seeded random half
        without them) fits the forest and the later half calibrates its p-values: the sorted
        scores of the held-out windows of each span in ``rows.spans`` (consecutive rows of
        one ``rows.groups`` partition), per ``rows.fallbacks`` kind of partition and pooled.
        """
        self._validate_params()
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or len(X) < 2:
            raise ValueError("fit needs a 2-D array with at least 2 rows")
        self.feature_names_ = tuple(feature_names or (f"x{i}" for i in range(X.shape[1])))
        if len(self.feature_names_) != X.shape[1]:
            raise ValueError("feature_names does not match the number of columns")
        info = rows or CalibrationRows.pooled(len(X))
        if len(info.groups) != len(X):
            raise ValueError("rows does not match the number of rows of X")
        held = np.zeros(len(X), dtype=bool)
        if len(X) >= _MIN_SPLIT:
            if info.times is not None:
                held = info.times >= np.median(info.times)
            else:
                order = np.random.default_rng(self.random_state).permutation(len(X))
                held[order[: len(X) // 2]] = True
        self._fit_forest(X[~held] if (~held).sum() >= 2 else X)
        self.calibration_: dict[str, np.ndarray] = {}
        if held.any():
            self._calibrate(X[held], info.take(held))
        return self

    def _fit_forest(self, X: np.ndarray) -> None:
        """Learn ``model_``, ``scale_``, ``threshold_`` and ``n_train_`` from ``X``."""
        self.model_ = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, len(X)),
            contamination="auto",
            random_state=self.random_state,
            n_jobs=1,
        ).fit(X)
        mad = np.median(np.abs(X - np.median(X, axis=0)), axis=0) * 1.4826
        self.scale_ = np.maximum(mad, 1e-2).astype(np.float64)
        train = self.score_samples(X)
        self.threshold_ = float(np.quantile(train, 1 - self.contamination))
        self.n_train_ = len(X)

    def _calibrate(self, X: np.ndarray, info: CalibrationRows) -> None:
        """``calibration_``: sorted scores of the held-out windows, per span and kind."""
        for k in info.spans:
            V, last = window_vectors(X, info.groups, info.times, k)
            if not len(V):
                continue
            s = self.score_samples(V.astype(np.float32))
            self.calibration_[calibration_key(POOLED, k)] = np.sort(s)
            kinds = info.fallbacks[last]
            for kind in np.unique(kinds):
                self.calibration_[calibration_key(str(kind), k)] = np.sort(s[kinds == kind])

    @property
    def calibrated(self) -> bool:
        """True when the scorer has held-out scores to turn scores into p-values."""
        return bool(getattr(self, "calibration_", None))

    def p_values(self, scores: np.ndarray, labels: np.ndarray, span: int) -> np.ndarray:
        """p-value (:func:`detector.detect.forest.tail_p`) of each span score among the held-out
        windows of that span and the row's kind of partition (``labels``; all kinds pooled
        when there are none of its kind); NaN scores give 1."""
        if not self.calibrated:
            raise NotFittedError("PartitionScorer has no calibration: refit it")
        scores = np.asarray(scores, dtype=np.float64)
        lab = np.asarray(labels, dtype=object)
        pooled = self.calibration_.get(calibration_key(POOLED, span), np.zeros(0))
        out = np.ones(len(scores))
        for name in set(lab.tolist()):
            rows = lab == name
            ref = self.calibration_.get(calibration_key(str(name), span), pooled)
            out[rows] = tail_p(scores[rows], ref)
        return out

    def _check(self, X: np.ndarray, feature_names: Sequence[str] | None) -> np.ndarray:
        if not hasattr(self, "model_"):
            raise NotFittedError("PartitionScorer is not fitted: call fit() first")
        if feature_names is not None and tuple(feature_names) != self.feature_names_:
            raise ModelMismatchError(
                f"features {tuple(feature_names)} do not match the fitted {self.feature_names_}"
            )
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != len(self.feature_names_):
            raise ModelMismatchError(
                f"expected {len(self.feature_names_)} features, got shape {X.shape}"
            )
        return X

    def score_samples(
        self, X: np.ndarray, *, feature_names: Sequence[str] | None = None
    ) -> np.ndarray:
        """Anomaly score per row, in (0, 1]: higher = more anomalous."""
        X = self._check(X, feature_names)
        if not len(X):
            return np.zeros(0)
        # sklearn's score_samples is the *opposite* of the paper's score: flip it once, here.
        workers = min(os.cpu_count() or 1, 4)
        if len(X) < _PARALLEL_ROWS or workers < 2:
            return -np.asarray(self.model_.score_samples(X), dtype=np.float64)
        # Large inputs: contiguous row blocks on threads (the trees' apply releases the GIL).
        # A row's score sums its trees in the same order whatever the blocks, so the result
        # is bit-for-bit the sequential one (sklearn's own threading adds trees in any order).
        bounds = np.linspace(0, len(X), workers + 1).astype(int)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            parts = pool.map(
                lambda ab: self.model_.score_samples(X[ab[0] : ab[1]]),
                zip(bounds[:-1], bounds[1:], strict=True),
            )
            return -np.concatenate(list(parts))

    def predict(self, X: np.ndarray, *, feature_names: Sequence[str] | None = None) -> np.ndarray:
        """True where the score reaches ``threshold_``."""
        return self.score_samples(X, feature_names=feature_names) >= self.threshold_

    def drivers(self, x: np.ndarray, *, top: int = 3, min_drop: float = 0.005) -> list[str]:
        """Features that drove one vector's score, strongest first (ablation).

        Each feature in turn is reset to its baseline value (0: no deviation) and the vector is
        rescored; the features whose removal lowers the score most are the drivers (the
        counterfactual test Elastic uses for influencers). Falls back to the largest
        ``|value|`` when no single ablation lowers the score (redundant features).
        """
        return self.drivers_many(np.asarray(x).reshape(1, -1), top=top, min_drop=min_drop)[0]

    def drivers_many(
        self, X: np.ndarray, *, top: int = 3, min_drop: float = 0.005
    ) -> list[list[str]]:
        """:meth:`drivers` for every row of ``X`` with one scoring call."""
        X = self._check(np.asarray(X, dtype=np.float32).reshape(len(X), -1), None)
        n, f = X.shape
        if not n:
            return []
        base = self.score_samples(X)
        trials = np.repeat(X, f, axis=0).reshape(n, f, f)
        idx = np.arange(f)
        trials[:, idx, idx] = 0.0
        drops = base[:, None] - self.score_samples(trials.reshape(n * f, f)).reshape(n, f)
        out = []
        for i in range(n):
            order = np.argsort(-drops[i], kind="stable")
            names = [self.feature_names_[j] for j in order if drops[i, j] >= min_drop][:top]
            if not names:
                order = np.argsort(-np.abs(X[i]), kind="stable")
                names = [self.feature_names_[j] for j in order if X[i, j] != 0][:top]
            out.append(names)
        return out
