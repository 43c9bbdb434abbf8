"""Model store: fitted forests and baselines, persisted safely with a metadata record.

Layout under the configured prefix (default ``models/``) of a :class:`~detector.store.backend.Backend`::

    models/<name>/forest.skops     the IsolationForest, skops format (no pickle)
    models/<name>/meta.json        training window, feature names, library versions,
                                   config hash, flag threshold, fitted_at
    models/<name>/baselines.parquet  per-partition baseline summary (for audit and reports)

Loading never unpickles: skops lists every type outside its own safe set that the file would
instantiate, and the load is refused unless that list is exactly the types an IsolationForest
needs (:data:`ALLOWED_TYPES`); nothing callable from ``builtins`` or NumPy gets through. A model whose metadata does not
match what the caller expects (feature names, config hash, scikit-learn/skops versions) is
refused with :class:`~detector.errors.ModelMismatchError`; the engine then refits. Does I/O
through the backend only.
"""

from __future__ import annotations

import io
import json
import platform
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import sklearn
import skops
import skops.io as sio
from sklearn.ensemble import IsolationForest

from detector.detect.score import PartitionScorer
from detector.errors import ModelMismatchError, StateError
from detector.store.backend import Backend
from detector.timeutil import iso

__all__ = ["ALLOWED_TYPES", "ModelMeta", "ModelStore", "library_versions"]

FORMAT_VERSION = 1
#: The only types beyond skops' own safe set that a fitted forest holds. A prefix rule
#: ("builtins.", "numpy.") would also admit ``builtins.exec`` or ``numpy.load``: a tampered
#: file could then run code at load, so the list is exact.
ALLOWED_TYPES: frozenset[str] = frozenset({"sklearn.tree._tree.Tree"})


def library_versions() -> dict[str, str]:
    """Versions that must match for a persisted forest to be reused."""
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "skops": skops.__version__,
    }


@dataclass
class ModelMeta:
    """The metadata record saved beside every model."""

    name: str
    training_start: str
    training_end: str
    fitted_at: str
    feature_names: list[str]
    config_hash: str
    threshold: float
    n_train: int
    versions: dict[str, str]
    scale: list[float] | None = None
    format: int = FORMAT_VERSION
    #: the forest's held-out window scores per span and kind (detector.detect.forest.calibration_key)
    calibration: dict[str, list[float]] | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def fitted(self) -> datetime:
        return datetime.fromisoformat(self.fitted_at.replace("Z", "+00:00"))

    def is_stale(self, now: datetime, refit_every: timedelta) -> bool:
        """True when the model is older than ``refit_every`` at ``now``."""
        return now - self.fitted() >= refit_every


class ModelStore:
    """Save and load :class:`~detector.detect.score.PartitionScorer` models through a backend."""

    def __init__(self, backend: Backend, prefix: str = "models") -> None:
        self.backend = backend
        self.prefix = prefix.strip("/")
        # In-process cache of deserialised forests keyed by the blob's version: a long-lived
        # process (a replay, a Functions host) does not re-audit the same file every run.
        self._cache: dict[str, tuple[str, Any]] = {}

    def _key(self, name: str, leaf: str) -> str:
        return f"{self.prefix}/{name}/{leaf}"

    def save(
        self,
        name: str,
        scorer: PartitionScorer,
        *,
        training_window: tuple[datetime, datetime],
        config_hash: str,
        now: datetime,
        baselines: pd.DataFrame | None = None,
    ) -> ModelMeta:
        """Persist ``scorer`` (and optionally a baseline summary) under ``name``; return its metadata."""
        if not hasattr(scorer, "model_"):
            raise StateError("refusing to save an unfitted scorer")
        meta = ModelMeta(
            name=name,
            training_start=iso(training_window[0]),
            training_end=iso(training_window[1]),
            fitted_at=iso(now),
            feature_names=list(scorer.feature_names_),
            config_hash=config_hash,
            threshold=float(scorer.threshold_),
            n_train=int(scorer.n_train_),
            versions=library_versions(),
            scale=[float(v) for v in scorer.scale_],
            calibration={
                k: [round(float(x), 6) for x in v]
                for k, v in getattr(scorer, "calibration_", {}).items()
            },
        )
        version = self.backend.write(self._key(name, "forest.skops"), sio.dumps(scorer.model_))
        self._cache[name] = (version, scorer.model_)
        if baselines is not None:
            buf = io.BytesIO()
            baselines.to_parquet(buf, index=False)
            self.backend.write(self._key(name, "baselines.parquet"), buf.getvalue())
        # Metadata last: a crash before it leaves no record, so the half-written model is not used.
        self.backend.write(
            self._key(name, "meta.json"), json.dumps(meta.to_json(), indent=2).encode()
        )
        return meta

    def meta(self, name: str) -> ModelMeta | None:
        """The metadata record of ``name``, or None when there is none."""
        got = self.backend.read(self._key(name, "meta.json"))
        if got is None:
            return None
        try:
            return ModelMeta(**json.loads(got[0]))
        except (ValueError, TypeError) as exc:
            raise ModelMismatchError(f"model {name}: unreadable metadata ({exc})") from exc

    def load(
        self, name: str, *, feature_names: list[str] | tuple[str, ...], config_hash: str
    ) -> tuple[PartitionScorer, ModelMeta] | None:
        """Load ``name`` if it exists; refuse (ModelMismatchError) when it does not match.

        Checks, in order: format version, feature names, config hash, scikit-learn and skops
        versions, then that the file holds only scikit-learn/NumPy types.
        """
        meta = self.meta(name)
        if meta is None:
            return None
        problems = []
        if meta.format != FORMAT_VERSION:
            problems.append(f"format {meta.format} != {FORMAT_VERSION}")
        if list(meta.feature_names) != list(feature_names):
            problems.append(f"features {meta.feature_names} != {list(feature_names)}")
        if meta.config_hash != config_hash:
            problems.append(f"config hash {meta.config_hash} != {config_hash}")
        current = library_versions()
        for lib in ("scikit-learn", "skops"):
            if meta.versions.get(lib) != current[lib]:
                problems.append(f"{lib} {meta.versions.get(lib)} != {current[lib]}")
        if problems:
            raise ModelMismatchError(f"model {name}: " + "; ".join(problems))
        got = self.backend.read(self._key(name, "forest.skops"))
        if got is None:
            raise ModelMismatchError(f"model {name}: metadata without forest.skops")
        data = got[0]
        cached = self._cache.get(name)
        if cached is not None and cached[0] == got[1]:
            return self._scorer(cached[1], meta), meta
        try:
            untrusted = sio.get_untrusted_types(data=data)
        except Exception as exc:  # skops raises assorted errors on corrupt files
            raise ModelMismatchError(f"model {name}: unreadable forest ({exc})") from exc
        bad = sorted(set(untrusted) - ALLOWED_TYPES)
        if bad:
            shown = [t[:80] for t in bad[:5]]
            raise ModelMismatchError(f"model {name}: refusing untrusted types {shown}")
        try:
            forest = sio.loads(data, trusted=untrusted)
        except Exception as exc:
            raise ModelMismatchError(f"model {name}: cannot load forest ({exc})") from exc
        if not isinstance(forest, IsolationForest):
            raise ModelMismatchError(f"model {name}: holds a {type(forest).__name__}, not a forest")
        self._cache[name] = (got[1], forest)
        return self._scorer(forest, meta), meta

    @staticmethod
    def _scorer(forest: Any, meta: ModelMeta) -> PartitionScorer:
        scorer = PartitionScorer()
        params = forest.get_params()
        scorer.set_params(n_estimators=params["n_estimators"], random_state=params["random_state"])
        scorer.model_ = forest
        scorer.feature_names_ = tuple(meta.feature_names)
        scorer.threshold_ = meta.threshold
        scorer.n_train_ = meta.n_train
        scorer.scale_ = np.asarray(meta.scale or [1.0] * len(meta.feature_names), dtype=np.float64)
        scorer.calibration_ = _calibration(meta)
        return scorer

    def baselines(self, name: str) -> pd.DataFrame | None:
        """The persisted baseline summary of ``name`` (None when absent)."""
        got = self.backend.read(self._key(name, "baselines.parquet"))
        return None if got is None else pd.read_parquet(io.BytesIO(got[0]))


def _calibration(meta: ModelMeta) -> dict[str, np.ndarray]:
    """The held-out scores of ``meta``; a tampered record is refused (the caller refits)."""
    try:
        out = {
            str(k): np.sort(np.asarray(v, dtype=np.float64))
            for k, v in (meta.calibration or {}).items()
        }
    except (TypeError, ValueError, AttributeError) as exc:
        raise ModelMismatchError(f"model {meta.name}: unreadable calibration ({exc})") from exc
    if any(v.ndim != 1 or not np.isfinite(v).all() for v in out.values()):
        raise ModelMismatchError(f"model {meta.name}: calibration is not lists of finite scores")
    return out
