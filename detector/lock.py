"""The job lock: at most one run of the detector at a time per state store.

Two overlapping runs (a slow run still going when cron fires again, a manual rerun during a
scheduled one, two Functions invocations) would query the same window twice and send the same
alerts twice. :class:`JobLock` makes the second one give up at once with
:class:`~detector.errors.LockHeldError`, which the CLI maps to exit code 75 ("skipped, try
next tick"). It never waits: the next scheduled run catches up from the watermark anyway.

- Local state (a directory, or a :class:`~detector.store.backend.LocalBackend`): an exclusive,
  non-blocking ``fcntl.flock`` on ``<state>/.run.lock``. The kernel drops it when the process
  dies, so a crashed run never leaves a stale lock behind.
- Blob state (a :class:`~detector.store.blob.BlobBackend`): a 60-second blob lease on
  ``<prefix>/.run.lock``, renewed in the background; a crashed holder's lease expires.

The lock file keeps ``pid``, host and start time of the holder, for the error message.
Does I/O (a file or a blob); reads the clock only to stamp the holder record.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from detector.errors import LockHeldError, StateError
from detector.store.backend import LocalBackend

__all__ = ["LOCK_NAME", "JobLock"]

#: Lock file / blob name inside the state store (a dot name: ``Backend.list`` leaves it out).
LOCK_NAME = ".run.lock"


class _Lock(Protocol):
    def acquire(self) -> None: ...

    def release(self) -> None: ...


class _FileLock:
    """``fcntl.flock(LOCK_EX | LOCK_NB)`` on one file; released on close or process exit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StateError(f"cannot open lock file {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise LockHeldError(f"another run holds {self.path}{holder}") from None
        except OSError as exc:
            os.close(fd)
            raise StateError(f"cannot lock {self.path}: {exc.strerror}") from exc
        # Holder record: diagnostics only, the lock is the flock itself, not the content.
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(
                fd, f"pid={os.getpid()} host={socket.gethostname()} since={stamp}\n".encode(), 0
            )
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            # Closing drops the flock. The file stays: unlinking it would race with a run
            # that opened it a moment ago and then locks an inode nobody else sees.
            os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        return ""
    return f" ({text})" if text else ""


class JobLock:
    """Exclusive, non-blocking lock for one run; a context manager.

    Parameters
    ----------
    target : str, path, LocalBackend or BlobBackend
        The state store: a directory (or a ``LocalBackend``) takes a file lock on
        ``<dir>/<name>``; a ``BlobBackend`` (anything with a ``lease_lock`` method) takes a
        blob lease.
    name : str
        Lock file or blob name inside the store. Default ``.run.lock``.
    lease_seconds : int
        Blob lease duration, 15 to 60. Default 60.
    renew_every : float, optional
        Blob lease renewal period. Default ``lease_seconds / 3``.

    Raises
    ------
    LockHeldError
        (on enter / :meth:`acquire`) another run holds the lock; the CLI exits 75.
    StateError
        The lock file or blob could not be created.

    Examples
    --------
    >>> with JobLock(".acs-detector"):          # doctest: +SKIP
    ...     run_pipeline()
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | Any,
        *,
        name: str = LOCK_NAME,
        lease_seconds: int = 60,
        renew_every: float | None = None,
    ) -> None:
        self._impl: _Lock
        if isinstance(target, LocalBackend):
            self._impl = _FileLock(Path(target.root) / name)
        elif hasattr(target, "lease_lock"):
            self._impl = target.lease_lock(
                name, lease_seconds=lease_seconds, renew_every=renew_every
            )
        elif isinstance(target, str | os.PathLike):
            self._impl = _FileLock(Path(target) / name)
        else:
            raise TypeError(
                f"JobLock needs a state directory or backend, not {type(target).__name__}"
            )
        self._held = False

    @classmethod
    def for_backend(
        cls,
        backend: Any,
        state_path: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> JobLock:
        """The lock that guards ``backend``: its blob lease for a Blob store, else a file
        lock in ``state_path`` (default: the local backend's root).

        Parameters
        ----------
        backend : Backend
            The store the run writes to.
        state_path : str or path, optional
            Local state directory (used when ``backend`` is not a Blob store).
        **kwargs
            ``name``, ``lease_seconds``, ``renew_every`` as for :class:`JobLock`.
        """
        if hasattr(backend, "lease_lock") or state_path is None:
            return cls(backend, **kwargs)
        return cls(state_path, **kwargs)

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._held

    @property
    def lost(self) -> bool:
        """True when a blob lease could not be renewed (never for a file lock)."""
        return bool(getattr(self._impl, "lost", False))

    def acquire(self) -> JobLock:
        """Take the lock now or raise :class:`LockHeldError`; returns self."""
        if self._held:
            raise StateError("JobLock is not re-entrant: already held")
        self._impl.acquire()
        self._held = True
        return self

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._held:
            self._held = False
            self._impl.release()

    def __enter__(self) -> JobLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
