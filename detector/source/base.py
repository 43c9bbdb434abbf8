"""What the pipeline asks of a source, and the one place that picks a source by its kind.

:class:`Source` is the seam: the pipeline reads aggregates for an arrival window, asks which
Log Analytics targets were read, the query statistics for the report, the targets that failed,
and (best effort) drill-down details for alerts. :func:`open_source` builds the adapter the
configuration names: :class:`detector.source.files.FileSource` or
:class:`detector.source.log_analytics.LogAnalyticsTargets`; :func:`discover_resources` asks
the configured source which ACS resources write to it, and :func:`configured_targets` lists
the Log Analytics targets it queries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from detector.anomaly import Anomaly
    from detector.config import Config
    from detector.schema import BucketAggregates

__all__ = [
    "Found",
    "Source",
    "configured_resources",
    "configured_targets",
    "discover_resources",
    "open_source",
]


class Source(Protocol):
    """A configured source of call client operations, as the pipeline uses it."""

    @property
    def kind(self) -> str:
        """The ``source.kind`` it reads (``file`` or ``log_analytics``)."""
        ...

    @property
    def failed(self) -> list[str]:
        """The targets whose read failed while others were read (one line each)."""
        ...

    def read(
        self,
        arrival_window: tuple[datetime, datetime],
        bucket: timedelta,
        progress: Callable[[str], None] | None = None,
    ) -> BucketAggregates:
        """The aggregates of the rows that arrived in ``arrival_window``."""
        ...

    def targets_used(self) -> list[int]:
        """The Log Analytics targets this source reads (indices; [] for files)."""
        ...

    def stats(self) -> dict[str, Any]:
        """The query statistics for the run report, and failed targets (may be empty)."""
        ...

    def notes(self) -> list[str]:
        """Run-report warnings about what the last read found (schema drift), one line each."""
        ...

    def drill_down(self, anomalies: list[Anomaly], window: tuple[datetime, datetime]) -> None:
        """Fill top result codes and example CallIds where the source can (best effort)."""
        ...

    def link_scope(self) -> dict[str, Any] | None:
        """The report's ``log_analytics`` scope for a resource's links, or None (no links)."""
        ...


@dataclasses.dataclass
class Found:
    """What the source says about resources: resource key -> indices of the Log Analytics
    targets holding its rows, rows without a usable ``_ResourceId``, targets that failed."""

    targets: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    unattributed: int = 0
    failed: list[str] = dataclasses.field(default_factory=list)

    def tally(self, counts: dict[str, int], target: int | None) -> None:
        """Add one target's rows per ``_ResourceId`` value (hostile text) to this record."""
        from detector.source.resources import resource_key

        for value, n in counts.items():
            key = resource_key(value)
            if key is None:
                self.unattributed += int(n)
                continue
            where = self.targets.setdefault(key, [])
            if target is not None and target not in where:
                where.append(target)


def open_source(
    cfg: Config, *, resource: str | None = None, targets: Sequence[int] | None = None
) -> Source:
    """The source ``cfg`` configures, scoped to ``resource`` and the ``targets`` indices."""
    if cfg.source["kind"] == "file":
        from detector.source.files import FileSource

        return FileSource(cfg, resource=resource)
    from detector.source.log_analytics import LogAnalyticsTargets

    return LogAnalyticsTargets(cfg, resource=resource, targets=targets)


def discover_resources(cfg: Config, window: tuple[datetime, datetime]) -> Found:
    """Which ACS resources wrote the rows that arrived in ``window`` (values validated)."""
    if cfg.source["kind"] == "file":
        from detector.source.files import discover_resources as discover_files

        return discover_files(cfg, window)
    from detector.source.log_analytics import discover_resources as discover_la

    return discover_la(cfg, window)


def configured_targets(cfg: Config) -> list[Any]:
    """The Log Analytics targets ``cfg`` lists, one settings object each ([] for files)."""
    if cfg.source["kind"] != "log_analytics":
        return []
    from detector.source.log_analytics import LogAnalyticsSettings

    targets: list[Any] = LogAnalyticsSettings.from_config(cfg.source).targets()
    return targets


def configured_resources(cfg: Config) -> set[str]:
    """The resource ids the config queries by resource (their own tenant keys)."""
    return {t.resource_id.strip().lower() for t in configured_targets(cfg) if t.resource_id}
