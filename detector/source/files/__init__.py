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

from detector.source.files.discover import SUPPORTED_SUFFIXES, discover_files
from detector.source.files.read import read_aggregates, read_resources
from detector.source.files.sql import RESULT_CLASS_SQL

__all__ = [
    "RESULT_CLASS_SQL",
    "SUPPORTED_SUFFIXES",
    "discover_files",
    "read_aggregates",
    "read_resources",
]
