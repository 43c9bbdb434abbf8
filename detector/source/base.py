"""What the pipeline asks of a source, and the one place that picks a source by its kind.

:class:`Source` is the seam: the pipeline reads aggregates for an arrival window, asks which
Log Analytics targets were read, the query statistics for the report, the targets that failed,
and (best effort) drill-down details for alerts. :func:`open_source` builds the adapter the
configuration names: :class:`detector.source.files.FileSource` or
:class:`detector.source.log_analytics.LogAnalyticsTargets`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from detector.anomaly import Anomaly
    from detector.config import Config
    from detector.schema import BucketAggregates

__all__ = ["Source", "open_source"]


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

    def drill_down(self, anomalies: list[Anomaly], window: tuple[datetime, datetime]) -> None:
        """Fill top result codes and example CallIds where the source can (best effort)."""
        ...


def open_source(
    cfg: Config, *, resource: str | None = None, targets: Sequence[int] | None = None
) -> Source:
    """The source ``cfg`` configures, scoped to ``resource`` and the ``targets`` indices."""
    if cfg.source["kind"] == "file":
        from detector.source.files import FileSource

        return FileSource(cfg, resource=resource)
    from detector.source.log_analytics import LogAnalyticsTargets

    return LogAnalyticsTargets(cfg, resource=resource, targets=targets)
