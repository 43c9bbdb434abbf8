"""Sources of call client operations: exported files (DuckDB) and Log Analytics (KQL).

Both produce :class:`detector.schema.BucketAggregates`.
"""

from detector.source.files import read_aggregates

__all__ = ["read_aggregates"]
