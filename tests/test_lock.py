"""The job lock (detector.lock): file lock on local state, blob lease on Blob state (Azurite)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from azure.storage.blob import BlobLeaseClient

from detector.errors import ConfigError, LockHeldError, StateError
from detector.lock import LOCK_NAME, JobLock
from detector.store.backend import LocalBackend
from detector.store.blob import BlobBackend

try:
    from fixtures_azurite import azurite_blob, blob_container  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.fixtures_azurite import azurite_blob, blob_container  # noqa: F401


# --- local state: fcntl.flock ------------------------------------------------------------
def test_second_holder_is_refused_then_admitted(tmp_path: Path) -> None:
    first = JobLock(tmp_path / "state")
    with first:
        assert first.held
        with pytest.raises(LockHeldError, match=rf"pid={os.getpid()}"):
            JobLock(tmp_path / "state").acquire()
        # A LocalBackend on the same directory is the same lock.
        with pytest.raises(LockHeldError):
            JobLock(LocalBackend(tmp_path / "state")).acquire()
    assert not first.held
    with JobLock(LocalBackend(tmp_path / "state")) as again:
        assert again.held
    # Hidden from the store listing.
    assert (tmp_path / "state" / LOCK_NAME).exists()
    assert list(LocalBackend(tmp_path / "state").list()) == []


def test_not_reentrant_and_release_idempotent(tmp_path: Path) -> None:
    lock = JobLock(tmp_path).acquire()
    with pytest.raises(StateError, match="re-entrant"):
        lock.acquire()
    lock.release()
    lock.release()


HOLDER = textwrap.dedent(
    """
    import sys, time
    from detector.lock import JobLock
    lock = JobLock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(60)
    """
)


def test_other_process_holds_and_crash_frees_it(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        with pytest.raises(LockHeldError, match=rf"pid={proc.pid}"):
            JobLock(tmp_path).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)  # a crash: no release, no cleanup
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
    # The kernel dropped the flock with the process: no stale lock.
    with JobLock(tmp_path) as lock:
        assert lock.held


def test_unusable_location_is_a_state_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StateError, match="cannot open lock file"):
        JobLock(blocker).acquire()
    with pytest.raises(TypeError):
        JobLock(42)


# --- blob state: lease ------------------------------------------------------------------
@pytest.fixture
def blob_store(azurite_blob: str, blob_container: str) -> BlobBackend:
    return BlobBackend(connection_string=azurite_blob, container=blob_container, prefix="p")


@pytest.mark.node
def test_blob_lease_excludes_second_invocation(blob_store: BlobBackend) -> None:
    with JobLock(blob_store) as first:
        assert first.held and not first.lost
        with pytest.raises(LockHeldError, match=rf"pid {os.getpid()}"):
            JobLock(blob_store).acquire()
    # Released: the next invocation gets it at once, and the lock blob stays hidden.
    with JobLock(blob_store, lease_seconds=15) as second:
        assert second.held
    assert list(blob_store.list()) == []


@pytest.mark.node
def test_blob_lease_is_renewed_and_loss_is_reported(blob_store: BlobBackend) -> None:
    lock = JobLock(blob_store, lease_seconds=15, renew_every=0.2).acquire()
    try:
        time.sleep(0.7)  # a few renewals went through
        assert not lock.lost
        # Someone breaks the lease (an operator, or it expired while the process stalled).
        blob = blob_store.container_client.get_blob_client(f"p/{LOCK_NAME}")
        BlobLeaseClient(blob).break_lease(lease_break_period=0)
        deadline = time.monotonic() + 5
        while not lock.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock.lost
        with JobLock(blob_store) as other:  # the broken lease is free again
            assert other.held
    finally:
        lock.release()  # a lost lease releases without raising


def test_blob_lease_duration_validated(azurite_blob: str) -> None:
    store = BlobBackend(connection_string=azurite_blob, container="unused")
    with pytest.raises(ConfigError, match="between 15 and 60"):
        JobLock(store, lease_seconds=5)


def test_for_backend_picks_file_lock_for_local_state(tmp_path: Path) -> None:
    with JobLock.for_backend(LocalBackend(tmp_path / "a"), tmp_path / "state"):
        with pytest.raises(LockHeldError):
            JobLock(tmp_path / "state").acquire()
        JobLock(tmp_path / "a").acquire().release()  # state_path wins over the backend root


@pytest.mark.node
def test_for_backend_picks_lease_for_blob_state(blob_store: BlobBackend, tmp_path: Path) -> None:
    with JobLock.for_backend(blob_store, tmp_path):
        with pytest.raises(LockHeldError):
            JobLock(blob_store).acquire()
        JobLock(tmp_path).acquire().release()  # no local file lock was taken
