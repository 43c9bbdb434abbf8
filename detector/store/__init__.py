"""The store: everything kept between runs, behind one :class:`~detector.store.backend.Backend`."""

from detector.store.backend import Backend, LocalBackend, VersionConflict

__all__ = ["Backend", "LocalBackend", "VersionConflict"]
