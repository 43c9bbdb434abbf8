"""Score: an isolation forest over the bucket features, one sign convention (higher = worse).

Consumes feature vectors (:data:`detector.features.FEATURE_NAMES`) of baseline buckets to
``fit`` and of recent buckets to score; produces anomaly scores in (0, 1] (the forest's
``2 ** (-E[h(x)] / c(n))``, so about 0.5 is ordinary and close to 1 is isolated at once), a flag
threshold learnt from the training scores, and per-feature ablation "drivers". Pure (no I/O);
persistence lives in :mod:`detector.store.models`.

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

from detector.errors import ModelMismatchError, NotFittedError

__all__ = ["PartitionScorer"]

#: Inputs at least this long are scored on several threads (below, threads cost more).
_PARALLEL_ROWS = 20_000


class PartitionScorer(BaseEstimator):
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
        self, X: np.ndarray, y: Any = None, *, feature_names: Sequence[str] | None = None
    ) -> PartitionScorer:
        """Fit the forest on baseline feature vectors ``X`` (n_samples, n_features)."""
        self._validate_params()
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or len(X) < 2:
            raise ValueError("fit needs a 2-D array with at least 2 rows")
        self.feature_names_ = tuple(feature_names or (f"x{i}" for i in range(X.shape[1])))
        if len(self.feature_names_) != X.shape[1]:
            raise ValueError("feature_names does not match the number of columns")
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
        return self

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
            return -self.model_.score_samples(X)
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
