"""The time helpers every stage shares: UTC conversion, ISO-8601 text, durations.

Conventions: a naive datetime is UTC (the job's rule everywhere); files and reports carry
ISO-8601 with a ``Z``; durations are written ``5m``, ``1h30m``, ``7d``. Pure: no clock, no I/O.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "format_duration",
    "iso",
    "iso_z",
    "parse_duration",
    "parse_time",
    "timestamp_utc",
    "to_datetime",
    "utc",
]

_UNITS: dict[str, float] = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# One or more <number><unit> parts ("90s", "1h30m", "1.5 h"); units are case-insensitive.
_PART_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.I)
_DURATION_RE = re.compile(rf"(?:{_PART_RE.pattern})+\s*", re.I)


def utc(ts: datetime) -> datetime:
    """``ts`` as an aware UTC datetime: a naive one is taken as UTC, an aware one converted.

    A :class:`pandas.Timestamp` stays a Timestamp (it is a datetime).
    """
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def timestamp_utc(value: datetime | str) -> pd.Timestamp:
    """Anything pandas reads as a time (datetime, ISO text, epoch ns) as a UTC Timestamp."""
    import pandas as pd  # here: loading the config (which uses this module) stays light

    t = pd.Timestamp(value)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def iso(ts: datetime, *, fraction: bool = False) -> str:
    """``2026-11-25T10:00:00Z`` in UTC; ``fraction`` adds microseconds (``...:00.000000Z``)."""
    return utc(ts).strftime("%Y-%m-%dT%H:%M:%S.%fZ" if fraction else "%Y-%m-%dT%H:%M:%SZ")


def iso_z(ts: datetime | None) -> str | None:
    """:func:`iso` (seconds precision, as written, no conversion); None stays None."""
    return None if ts is None else ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def to_datetime(value: object) -> datetime | None:
    """A datetime, or an ISO-8601 string (``Z`` accepted), as a datetime; None stays None."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def parse_time(text: str) -> datetime:
    """ISO-8601 to an aware UTC datetime; naive times are taken as UTC. Raises ValueError."""
    return utc(datetime.fromisoformat(str(text).strip().replace("Z", "+00:00")))


def parse_duration(value: str | timedelta) -> timedelta:
    """``"5m"``, ``"90s"``, ``"250ms"``, ``"1h30m"``, ``"2D"`` or a timedelta -> timedelta.

    Units: ms, s, m, h, d, w (any case), one or more parts. Zero (``"0s"``) parses; whether it
    is allowed is the caller's rule. Raises ValueError naming the text otherwise.
    """
    if isinstance(value, timedelta):
        return value
    text = str(value)
    if not _DURATION_RE.fullmatch(text):
        # repr of the value itself: a config Secret prints as '<secret>'.
        raise ValueError(f"{value!r} is not a duration like '5m', '1h' or '7d'")
    seconds = sum(float(n) * _UNITS[u.lower()] for n, u in _PART_RE.findall(text))
    return timedelta(seconds=seconds)


def format_duration(td: timedelta) -> str:
    """Inverse of :func:`parse_duration` for whole units (``timedelta(hours=1)`` -> ``"1h"``)."""
    secs = td.total_seconds()
    for unit in ("d", "h", "m", "s"):
        if secs >= _UNITS[unit] and secs % _UNITS[unit] == 0:
            return f"{int(secs // _UNITS[unit])}{unit}"
    return f"{secs}s"
