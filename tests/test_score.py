"""The forest scorer and the model store: seeded, known outliers first, safe persistence."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import skops.io as sio

from detector.detect.score import PartitionScorer
from detector.errors import ModelMismatchError, NotFittedError
from detector.store.backend import LocalBackend
from detector.store.models import ModelStore

NAMES = ("a", "b", "c", "d")
NOW = datetime(2026, 11, 9, tzinfo=UTC)


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train = rng.normal(size=(3000, 4))
    test = rng.normal(size=(200, 4))
    # The last three rows are the known outliers: far out in every feature at once (a forest
    # isolates a point outside the training range no faster than the most extreme sample).
    test[-3:] = [[6, 6, 6, 6], [-6, 6, -6, 6], [6, -6, 6, 6]]
    return train, test


def _fit(seed: int = 0) -> PartitionScorer:
    train, _ = _data()
    return PartitionScorer(random_state=seed).fit(train, feature_names=NAMES)


def test_same_seed_same_scores_other_seed_differs() -> None:
    _, test = _data()
    a, b, c = _fit(0), _fit(0), _fit(1)
    assert np.array_equal(a.score_samples(test), b.score_samples(test))
    assert a.threshold_ == b.threshold_
    assert not np.array_equal(a.score_samples(test), c.score_samples(test))


def test_known_outliers_rank_highest_and_are_flagged() -> None:
    _, test = _data()
    s = _fit().score_samples(test)
    assert set(np.argsort(-s)[:3]) == {197, 198, 199}
    assert _fit().predict(test)[-3:].all()
    assert s.min() > 0 and s.max() <= 1  # higher = more anomalous, in (0, 1]


def test_drivers_name_the_deviating_features() -> None:
    scorer = _fit()
    assert set(scorer.drivers(np.array([0.0, 7.0, 7.0, 0.0]))[:2]) == {"b", "c"}


def test_unfitted_and_mismatched_use_raise() -> None:
    with pytest.raises(NotFittedError):
        PartitionScorer().score_samples(np.zeros((1, 4)))
    scorer = _fit()
    with pytest.raises(ModelMismatchError):
        scorer.score_samples(np.zeros((1, 4)), feature_names=("a", "b", "c", "x"))
    with pytest.raises(ModelMismatchError):
        scorer.score_samples(np.zeros((1, 3)))
    with pytest.raises(ValueError):
        PartitionScorer(contamination=0.9).fit(np.zeros((10, 4)))


def test_store_round_trip_gives_identical_scores(tmp_path) -> None:
    _, test = _data()
    store = ModelStore(LocalBackend(tmp_path))
    scorer = _fit()
    meta = store.save(
        "forest", scorer, training_window=(NOW - timedelta(days=7), NOW), config_hash="h1", now=NOW
    )
    loaded, meta2 = store.load("forest", feature_names=NAMES, config_hash="h1")
    assert np.array_equal(loaded.score_samples(test), scorer.score_samples(test))
    assert loaded.threshold_ == scorer.threshold_ and meta2.config_hash == meta.config_hash
    assert (tmp_path / "models/forest/forest.skops").exists()
    record = json.loads((tmp_path / "models/forest/meta.json").read_text())
    assert record["versions"]["scikit-learn"] and record["training_start"] == "2026-11-02T00:00:00Z"
    assert not meta2.is_stale(NOW + timedelta(hours=23), timedelta(days=1))
    assert meta2.is_stale(NOW + timedelta(days=1), timedelta(days=1))


def test_store_refuses_mismatched_models(tmp_path) -> None:
    backend = LocalBackend(tmp_path)
    store = ModelStore(backend)
    store.save("forest", _fit(), training_window=(NOW, NOW), config_hash="h1", now=NOW)
    assert store.load("missing", feature_names=NAMES, config_hash="h1") is None
    with pytest.raises(ModelMismatchError, match="config hash"):
        store.load("forest", feature_names=NAMES, config_hash="h2")
    with pytest.raises(ModelMismatchError, match="features"):
        store.load("forest", feature_names=("x",), config_hash="h1")
    meta = json.loads(backend.read("models/forest/meta.json")[0])
    meta["versions"]["scikit-learn"] = "0.0.1"
    backend.write("models/forest/meta.json", json.dumps(meta).encode())
    with pytest.raises(ModelMismatchError, match="scikit-learn"):
        store.load("forest", feature_names=NAMES, config_hash="h1")


class Payload:
    """Not a scikit-learn type: a model file holding it must never be loaded."""

    def __init__(self) -> None:
        self.x = 1


def test_store_refuses_untrusted_types(tmp_path) -> None:
    backend = LocalBackend(tmp_path)
    store = ModelStore(backend)
    store.save("forest", _fit(), training_window=(NOW, NOW), config_hash="h1", now=NOW)
    backend.write("models/forest/forest.skops", sio.dumps(Payload()))
    with pytest.raises(ModelMismatchError, match="untrusted"):
        store.load("forest", feature_names=NAMES, config_hash="h1")
    backend.write("models/forest/forest.skops", b"not a zip file")
    with pytest.raises(ModelMismatchError):
        store.load("forest", feature_names=NAMES, config_hash="h1")


def test_large_inputs_score_on_threads_bit_for_bit() -> None:
    # Above _PARALLEL_ROWS the rows are scored in blocks on threads: every row must get
    # exactly the score the sequential forest gives it (same trees, same order).
    from detector.detect import score

    scorer = _fit()
    X = np.random.default_rng(3).normal(size=(score._PARALLEL_ROWS + 1001, 4))
    got = scorer.score_samples(X)
    assert np.array_equal(got, -scorer.model_.score_samples(X.astype(np.float32)))


def _reduce_node(module: str, name: str, *args: str) -> bytes:
    """A skops file whose one node calls ``module.name(*args)`` when loaded, as a tamperer writes it."""
    content = [
        {
            "__class__": "str",
            "__module__": "builtins",
            "__loader__": "JsonNode",
            "content": a,
            "is_json": True,
            "__id__": i,
        }
        for i, a in enumerate(args, start=2)
    ]
    schema = {
        "__class__": name,
        "__module__": module,
        "__loader__": "ConstructorFromReduceNode",
        "content": {
            "__class__": "tuple",
            "__module__": "builtins",
            "__loader__": "TupleNode",
            "content": content,
            "__id__": 1,
        },
        "__id__": 0,
        "protocol": 2,
        "_skops_version": "0.16.0",
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("schema.json", json.dumps(schema))
    return buf.getvalue()


@pytest.mark.parametrize(
    ("module", "name"), [("builtins", "exec"), ("builtins", "eval"), ("numpy", "load")]
)
def test_a_tampered_forest_never_runs_code(tmp_path, module, name) -> None:
    marker = tmp_path / "pwned"
    payload = f"open({str(marker)!r}, 'w').write('x')"
    if name == "load":  # numpy.load of a pickle-laden .npy path is the numpy route to code
        payload = str(tmp_path / "evil.npy")
    backend = LocalBackend(tmp_path)
    store = ModelStore(backend)
    store.save("forest", _fit(), training_window=(NOW, NOW), config_hash="h1", now=NOW)
    backend.write("models/forest/forest.skops", _reduce_node(module, name, payload))
    with pytest.raises(ModelMismatchError, match="untrusted"):
        store.load("forest", feature_names=NAMES, config_hash="h1")
    assert not marker.exists()


def test_a_file_of_safe_types_that_is_not_a_forest_is_refused(tmp_path) -> None:
    backend = LocalBackend(tmp_path)
    store = ModelStore(backend)
    store.save("forest", _fit(), training_window=(NOW, NOW), config_hash="h1", now=NOW)
    backend.write("models/forest/forest.skops", sio.dumps({"n_estimators": 3}))
    with pytest.raises(ModelMismatchError, match="not a forest"):
        store.load("forest", feature_names=NAMES, config_hash="h1")
