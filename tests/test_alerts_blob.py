"""The alert store and delivery on the Azure Blob backend (Azurite): same behaviour as local."""

from __future__ import annotations

import threading

import pytest

from detector.errors import StateError
from detector.lifecycle import LifecyclePolicy, step
from detector.notify import DeliveryContext, Route, deliver
from detector.notify.commands import add_silence, list_silences
from detector.store.alerts import AlertStore
from detector.store.blob import BlobBackend
from tests.fixtures_alerting import STEP, T0, free_port, make_anomaly
from tests.fixtures_azurite import azurite_blob, blob_container  # noqa: F401


@pytest.fixture
def blob(azurite_blob: str, blob_container: str) -> BlobBackend:  # noqa: F811
    return BlobBackend(connection_string=azurite_blob, container=blob_container, prefix="state")


def test_state_cas_on_blob(blob: BlobBackend) -> None:
    s1, s2 = AlertStore(blob), AlertStore(blob)
    st1, st2 = s1.load_state(), s2.load_state()
    end = T0 + STEP
    _, st1 = step([make_anomaly(end=end)], {}, st1, LifecyclePolicy(), end, window_end=end)
    s1.save_state(st1)
    with pytest.raises(StateError):
        s2.save_state(st2)
    assert AlertStore(blob).load_state().to_json() == st1.to_json()


def test_concurrent_silence_adds_are_all_kept(blob: BlobBackend) -> None:
    errors: list[BaseException] = []

    def add(i: int) -> None:
        try:
            add_silence(blob, f"operation=Op{i}", "1h", f"n{i}", T0)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(s.comment for s in list_silences(blob, T0)) == [f"n{i}" for i in range(6)]


def test_outbox_on_blob(blob: BlobBackend) -> None:
    end = T0 + STEP
    d, _ = step(
        [make_anomaly(end=end)],
        {},
        AlertStore(blob).load_state(),
        LifecyclePolicy(),
        end,
        window_end=end,
    )
    routes = [Route("x", [f"json://127.0.0.1:{free_port()}/h"])]
    r = deliver(d, DeliveryContext(routes, blob, end))
    assert not r.ok and r.outbox_size == 1
    (item,) = AlertStore(blob).outbox()
    assert item.fingerprints == [d[0].fingerprint] and item.attempts == 1
