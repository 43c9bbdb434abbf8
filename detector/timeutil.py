"""UTC time helpers shared by the stages (ISO-8601 with a ``Z``, as every file and report uses)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

__all__ = ["iso_z", "to_datetime"]


def iso_z(ts: datetime | None) -> str | None:
    """``2026-11-25T10:00:00Z`` (seconds precision); None stays None."""
    return None if ts is None else ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def to_datetime(value: Any) -> datetime | None:
    """A datetime, or an ISO-8601 string (``Z`` accepted), as a datetime; None stays None."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
