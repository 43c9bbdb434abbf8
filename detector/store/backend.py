"""Key/value blob backends under the store: a local directory (default) or Azure Blob Storage.

Everything the job keeps between runs (bucket history, watermark, alert state, outbox, models)
is written through a :class:`Backend`: named byte blobs with atomic replace and an optional
compare-and-swap on a version tag (ETag). The local backend writes a temp file and renames it,
so a crash mid-write leaves the previous blob intact; the Blob backend (issue 6) uses
conditional writes (``If-Match``) for the same guarantee across machines.

Consumes and produces bytes; does I/O.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

from detector.errors import StateError

__all__ = ["Backend", "LocalBackend", "MemoryBackend", "VersionConflict"]


class VersionConflict(StateError):
    """A conditional write found the blob changed since it was read (another writer won)."""


@runtime_checkable
class Backend(Protocol):
    """Named byte blobs. Keys are ``/``-separated relative paths (``buckets/2026-11-25.parquet``)."""

    def read(self, key: str) -> tuple[bytes, str] | None:
        """Return ``(data, version)`` or None when the key does not exist."""

    def write(self, key: str, data: bytes, *, if_version: str | None = None) -> str:
        """Atomically replace ``key``; return the new version.

        ``if_version``: only write when the current version equals it (``""`` = must not
        exist); otherwise raise :class:`VersionConflict`.
        """

    def delete(self, key: str) -> None:
        """Remove ``key`` if it exists."""

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with ``prefix``, sorted."""


def _version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


class LocalBackend:
    """A :class:`Backend` on a local directory (atomic temp-file + rename, fsync'd)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in Path(key).parts:
            raise StateError(f"invalid store key {key!r}")
        return self.root / key

    def read(self, key: str) -> tuple[bytes, str] | None:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {path}: {exc.strerror}") from exc
        return data, _version(data)

    def write(self, key: str, data: bytes, *, if_version: str | None = None) -> str:
        path = self._path(key)
        if if_version is not None:
            current = self.read(key)
            current_version = current[1] if current else ""
            if current_version != if_version:
                raise VersionConflict(f"{key} changed since it was read")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StateError(f"cannot write {path}: {exc.strerror}") from exc
        return _version(data)

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StateError(f"cannot delete {key}: {exc.strerror}") from exc

    def list(self, prefix: str = "") -> Iterator[str]:
        if not self.root.exists():
            return iter(())
        keys = []
        for p in self.root.rglob("*"):
            if p.is_file() and not p.name.startswith("."):
                key = p.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return iter(sorted(keys))


class MemoryBackend:
    """A :class:`Backend` in memory, gone with the process: a manual rerun's forests, which
    must not replace the model the scheduled runs use."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def read(self, key: str) -> tuple[bytes, str] | None:
        data = self.blobs.get(key)
        return None if data is None else (data, _version(data))

    def write(self, key: str, data: bytes, *, if_version: str | None = None) -> str:
        if if_version is not None:
            current = self.read(key)
            if (current[1] if current else "") != if_version:
                raise VersionConflict(f"{key} changed since it was read")
        self.blobs[key] = data
        return _version(data)

    def delete(self, key: str) -> None:
        self.blobs.pop(key, None)

    def list(self, prefix: str = "") -> Iterator[str]:
        return iter(sorted(k for k in self.blobs if k.startswith(prefix)))
