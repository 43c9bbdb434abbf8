"""File source: ACS call client operation exports aggregated by DuckDB into bucket aggregates.

One module per stage, in the order the data flows (as :mod:`detector.source.kql` is to the Log
Analytics source):

- ``discover``: the files a path designates, their formats (Parquet, CSV, JSON lines and the
  Diagnostic Settings ``PT1H.json``, JSON arrays), and arrival times in microseconds;
- ``sql``: the DuckDB SQL as text (normalised SELECTs per format, the arrival selection, the
  names and rows passes; :data:`~detector.source.files.sql.RESULT_CLASS_SQL`);
- ``reduce``: numpy on the rows pass's Arrow table: partitions of the distinct names,
  duplicates, sums and histograms per (partition, bucket), failing calls, the contract frames;
- ``read``: opens DuckDB on the files, runs the passes and counts the drops
  (:func:`~detector.source.files.read.read_aggregates`,
  :func:`~detector.source.files.read.read_resources`).

The design and the semantics (drop reasons, flags, arrival) are described in
:mod:`detector.source.files.read`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from detector.source.drift import drift_warning
from detector.source.files.discover import SUPPORTED_SUFFIXES, discover_files
from detector.source.files.read import Drift, read_aggregates, read_resources
from detector.source.files.sql import RESULT_CLASS_SQL

if TYPE_CHECKING:
    from detector.anomaly import Anomaly
    from detector.config import Config
    from detector.schema import BucketAggregates
    from detector.source.base import Found

__all__ = [
    "RESULT_CLASS_SQL",
    "SUPPORTED_SUFFIXES",
    "FileSource",
    "discover_files",
    "discover_resources",
    "read_aggregates",
    "read_resources",
]


class FileSource:
    """The file source as a :class:`detector.source.base.Source`: ``source.path`` via DuckDB.

    ``resource``: read only that ACS resource's rows (a tenant key).
    """

    kind = "file"

    def __init__(self, cfg: Config, *, resource: str | None = None) -> None:
        self.cfg = cfg
        self.resource = resource
        self.failed: list[str] = []
        self.drift: Drift = {}

    def read(
        self,
        arrival_window: tuple[datetime, datetime],
        bucket: timedelta,
        progress: Callable[[str], None] | None = None,
    ) -> BucketAggregates:
        """The aggregates of the files' rows that arrived in ``arrival_window``."""
        self.drift = {}
        return read_aggregates(
            self.cfg.source_path(),
            bucket=bucket,
            arrival_window=arrival_window,
            threads=self.cfg.source.get("threads"),
            memory_limit=self.cfg.source.get("memory_limit"),
            max_partitions=self.cfg.source.get("max_partitions"),
            resource=self.resource,
            drift=self.drift,
        )

    def targets_used(self) -> list[int]:
        """No Log Analytics targets: []."""
        return []

    def stats(self) -> dict[str, Any]:
        """No query statistics; the files whose columns drifted, when any."""
        if not self.drift:
            return {}
        return {"schema_drift": [d.as_dict() for _, d in sorted(self.drift.items())]}

    def notes(self) -> list[str]:
        """The run-report line about schema drift in the files read ([] without any)."""
        line = drift_warning(self.drift.values())
        return [line] if line else []

    def link_scope(self) -> dict[str, Any] | None:
        """Files have no portal links to scope: None."""
        return None

    def drill_down(self, anomalies: list[Anomaly], window: tuple[datetime, datetime]) -> None:
        """Nothing to drill into in files (the alerts go out as they are)."""


def discover_resources(cfg: Config, window: tuple[datetime, datetime]) -> Found:
    """Which ACS resources wrote the files' rows that arrived in ``window``, tallied."""
    from detector.source.base import Found

    counts = read_resources(
        cfg.source_path(),
        arrival_window=window,
        threads=cfg.source.get("threads"),
        memory_limit=cfg.source.get("memory_limit"),
    )
    found = Found()
    found.tally(counts, target=None)
    return found
