"""Exceptions raised by acs-detector.

The tree (stages raise these; ``detector.cli`` alone maps them to exit codes)::

    DetectorError
    ├── ConfigError            bad config or usage                      -> exit 2
    ├── InputError             a file that is not an ACS export          -> exit 2
    ├── SourceError            reading the log failed                   -> exit 1
    │   ├── QueryFailedError   the query API answered with an error
    │   ├── AuthError          401/403: credential or role missing
    │   └── PartialResultError the answer was partial: never scored as whole
    │       └── IncompleteReadError  a multi-chunk read stopped part-way
    ├── StateError             the store could not be read or written   -> exit 1
    │   └── LockHeldError      another run holds the lock                -> exit 75
    ├── ModelError             a persisted model cannot be used
    │   ├── NotFittedError
    │   └── ModelMismatchError metadata does not match: refit
    └── NotifyError            delivery failed (after saving the outbox) -> exit 1
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datetime import datetime

    from detector.schema import BucketAggregates

__all__ = [
    "AuthError",
    "ConfigError",
    "DetectorError",
    "IncompleteReadError",
    "InputError",
    "LockHeldError",
    "ModelError",
    "ModelMismatchError",
    "NotFittedError",
    "NotifyError",
    "PartialResultError",
    "QueryFailedError",
    "SourceError",
    "StateError",
]


class DetectorError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(DetectorError):
    """The configuration (or the command line) is invalid.

    ``problems`` lists every problem found, each prefixed with its key, so a user
    fixes them all in one go instead of one per run.
    """

    def __init__(self, problems: list[str] | str, path: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.path = path
        where = f"{path}: " if path else ""
        if len(self.problems) == 1:
            msg = f"{where}{self.problems[0]}"
        else:
            msg = f"{where}{len(self.problems)} problems:\n" + "\n".join(
                f"  - {p}" for p in self.problems
            )
        super().__init__(msg)


class InputError(DetectorError):
    """An input file cannot be used at all (unreadable, or not an ACS export)."""


class SourceError(DetectorError):
    """Reading call client operations from the source failed."""


class QueryFailedError(SourceError):
    """The query API answered with an error after the retry budget was spent."""


class AuthError(SourceError):
    """The credential was refused (401) or lacks a role (403)."""


class PartialResultError(SourceError):
    """The source returned only part of a window; it must not be scored as whole."""


class IncompleteReadError(PartialResultError):
    """A multi-chunk read stopped after some chunks were read fully.

    ``aggregates`` holds the fully read chunks ``[window start, completed_until)``: the caller
    may store them and advance its watermark to ``completed_until``, never further.
    ``failed`` is the chunk that could not be read; ``__cause__`` says why.
    """

    def __init__(
        self,
        message: str,
        *,
        aggregates: BucketAggregates,
        completed_until: datetime,
        failed: tuple[datetime, datetime],
    ) -> None:
        super().__init__(message)
        self.aggregates = aggregates
        self.completed_until = completed_until
        self.failed = failed


class StateError(DetectorError):
    """The store (bucket history, alert state, outbox, models) failed."""


class LockHeldError(StateError):
    """Another run holds the job lock; this run was skipped."""


class ModelError(DetectorError):
    """A persisted model cannot be used."""


class NotFittedError(ModelError):
    """A scorer was used before ``fit``."""


class ModelMismatchError(ModelError):
    """A persisted model's metadata does not match the current config or libraries."""


class NotifyError(DetectorError):
    """One or more notification targets could not be reached (undelivered kept in the outbox)."""
