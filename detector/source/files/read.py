"""File source: ACS call client operation exports aggregated by DuckDB into bucket aggregates.

Consumes files on disk (does I/O, read only): Parquet; CSV and JSON lines as exported from Log
Analytics; the Diagnostic Settings storage export (``insights-logs-callclientoperations/...
/PT1H.json``, one JSON record per line, fields top-level or under ``properties``); JSON arrays.
Produces one :class:`~detector.schema.BucketAggregates` (the contract in :mod:`detector.schema`).

How the work is split, and why (measured on 9M rows, see benchmarks/bench_aggregate.py):

1. DuckDB lists the distinct (``OperationName``, ``SdkVersion``, ``ResultType``) triples.
   Canonical casing, point events, the name-based drop reasons and the
   ``noncanonical_operation_case`` flag are decided in Python on those few names with the very
   functions of :mod:`detector.schema` (identical to the contract by construction), each
   (canonical name, version) gets a small integer partition id, and each ``ResultType`` its
   class (:data:`RESULT_CLASS_SQL`, written from :func:`detector.schema.classify_result`; a
   test holds them equal), once per distinct value instead of once per row. The bucket and
   duration ranges come from the Parquet statistics (no data read) or the materialised text.
2. One DuckDB pass reads only the needed columns, normalises types (string numbers, ISO or
   portal timestamps, JSON keys in any casing), windows by arrival, joins the names, and
   computes ``ln(max(DurationMs, 1))``, flag bits, a 64-bit hash of the dedup key (and a
   32-bit one of the ``CallId`` behind each failure, for ``failed_calls``) and dense
   ``uint32`` codes of the (partition, bucket, result class) and of the histogram entry, into
   an Arrow table of ~33 bytes a row.
3. numpy finds duplicate keys with one sort of key|row words (several times faster than a
   10M-group hash aggregate, or than an argsort) and resolves the few candidates exactly; then
   sums per (partition, bucket) with dense bincounts and counts the histogram with one sort of
   ``uint32`` codes. Per-row work is vectorised, a step of 2**20 rows at a time (fresh memory
   is dear: see :data:`_STEP`); no Python loop touches rows. Inputs whose codes do not fit
   ``uint32`` (timestamps decades apart at a fine bucket, absurd durations) take a general
   path with ``int64`` codes and the same results.

Semantics (one reason per dropped row, the first that matches, in
:data:`~detector.schema.DROP_REASONS` order):

1. rows are selected by arrival in ``arrival_window`` (half-open): a row arrives at its
   ``TimeGenerated``; without a usable one at its ``CallClientTimeStamp``; without either (a
   malformed record) when its file was last modified, so every row falls in one window of a
   series. Rows outside the window are not read (``rows_read`` counts only selected rows;
   without a window every row is selected). Timestamps outside
   [:data:`~detector.schema.TIMESTAMP_MIN`, :data:`~detector.schema.TIMESTAMP_MAX`) are
   unusable;
2. ``malformed_record``: a JSON line that is not a JSON object (not JSON, truncated, an
   array), or a line the reader rejects (invalid UTF-8, longer than 2 MB, more CSV fields
   than the header): that line is lost, counted, and the rest of the file is read;
3. ``missing_operation_name``: empty or whitespace ``OperationName``;
4. ``pseudo_operation``: ``OperationName`` equals ``CallClientOperations`` (case-insensitive);
5. ``missing_operation_id``: empty ``OperationId``;
6. ``invalid_timestamp``: ``CallClientTimeStamp`` empty, unparseable or out of range;
7. ``duplicate``: a later copy of the same ``(OperationId, CallClientTimeStamp)``; the copy with
   the latest ``TimeGenerated`` is kept (ties broken by content, so the choice does not depend
   on file order). With an arrival window, a key that arrived in the ``dedup_lookback`` before
   it is a duplicate too (an earlier read counted it);
8. ``partition_cap``: the rows of partitions beyond ``max_partitions`` (the busiest are kept).

Kept rows are bucketed by ``CallClientTimeStamp`` floored to ``bucket`` (epoch aligned, UTC).
Flags (a kept row may carry several; each is counted once per row under each reason that
applies): ``invalid_duration`` (non-point operation with an empty, non-numeric, non-finite or
negative ``DurationMs``), ``invalid_payload_json``, ``string_number`` (``DurationMs`` or
``ResultSignature`` arrived as a JSON/Parquet string holding a number; CSV carries no types, so
CSV never raises this flag), ``noncanonical_operation_case`` (raw name differs from its
canonical form).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Final, NamedTuple, TypeVar

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from detector import aggregate, schema
from detector.errors import InputError
from detector.source.files.discover import (
    _JSON_SAMPLE_LINES,
    _csv_header,
    _File,
    _json_keys_ok,
    _json_record,
    _json_sample_keys,
    _mtimes,
    _select_files,
    _us,
    _window_us,
)
from detector.source.files.sql import (
    _CODE,
    _DROP_CODES,
    _FILE_COL,
    _LN_GAMMA_SQL,
    _PSEUDO_LOWER,
    _REJECTS,
    _U32_NONE,
    _WS,
    RESULT_CLASS_SQL,
    _bounds_select,
    _file_list,
    _json_select,
    _lit,
    _missing_message,
    _mtime_sql,
    _names_sql,
    _norm_sql,
    _resolve,
    _rows_sql,
    _scan_rows_in,
    _scoped,
    _Shape,
    _typed_select,
    _unique,
)

__all__ = ["read_aggregates", "read_resources"]

_T = TypeVar("_T")

log = logging.getLogger("detector.source.files")  # the package's logger, as before the split


# DuckDB errors that mean "this input cannot be read" (others are bugs and propagate).
_READ_ERRORS: Final = (
    duckdb.IOException,
    duckdb.InvalidInputException,
    duckdb.ConversionException,
    duckdb.NotImplementedException,
)


# --------------------------------------------------------------------------------------------
# Per-format validation (one clear InputError per bad file)
# --------------------------------------------------------------------------------------------


def _describe(con: duckdb.DuckDBPyConnection, relation_sql: str) -> dict[str, str]:
    rows = con.execute(f"DESCRIBE {relation_sql}").fetchall()
    return {str(r[0]): str(r[1]) for r in rows}


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


def _parquet_part(con: duckdb.DuckDBPyConnection, files: list[Path]) -> tuple[list[str], list[str]]:
    """Normalised SELECTs over the Parquet files, and their bounds SELECTs (see _bounds_select)."""
    # Group files by their (column -> type) signature, so each read has one consistent type per
    # column: a string DurationMs in one file must not turn another file's integers into strings.
    groups: dict[tuple[tuple[str, str], ...], list[Path]] = {}
    for f in files:
        if f.stat().st_size == 0:
            raise InputError(f"{f}: empty file, not an ACS call client operations export")
        try:
            types = _describe(con, f"SELECT * FROM read_parquet({_lit(str(f))})")
        except duckdb.Error as exc:
            raise InputError(f"{f}: not a readable Parquet file ({_short(exc)})") from exc
        cols = _resolve(types)
        if any(c not in cols for c in schema.REQUIRED_COLUMNS):
            raise InputError(_missing_message(f, types, "Parquet"))
        sig = tuple(sorted((name, f"{cols[name]}:{types[cols[name]]}") for name in cols))
        groups.setdefault(sig, []).append(f)
    parts, bounds = [], []
    for sig, group in groups.items():
        cols = {name: spec.rsplit(":", 1)[0] for name, spec in sig}
        types = {spec.rsplit(":", 1)[0]: spec.rsplit(":", 1)[1] for _, spec in sig}
        source = f"read_parquet({_file_list(group)}, filename={_lit(_FILE_COL)})"
        parts.append(_typed_select(source, cols, types, csv_=False))
        bounds.append(_bounds_select(source, cols, types))
    return parts, bounds


def _csv_part(files: list[Path], parallel: bool = True) -> list[str]:
    groups: dict[tuple[tuple[str, ...], str, str], list[Path]] = {}
    for f in files:
        raw, delim, quote = _csv_header(f)
        header = [h.strip() for h in raw]
        cols = _resolve(header)
        if any(c not in cols for c in schema.REQUIRED_COLUMNS):
            raise InputError(_missing_message(f, header, "CSV"))
        groups.setdefault((tuple(header), delim, quote), []).append(f)
    parts = []
    for (header_key, delim, quote), group in groups.items():
        header = list(header_key)
        cols = _resolve(header)
        # Read every field as text: the export may quote numbers, leave them empty, or put
        # garbage in them; typing happens in SQL with TRY_CAST, never as a reader error. The
        # dialect is the header's, never sniffed from the data (a ';' in a UserAgent would win).
        columns = "{" + ", ".join(f"{_lit(h)}: 'VARCHAR'" for h in _unique(header)) + "}"
        source = (
            f"read_csv({_file_list(group)}, header=true, auto_detect=false, columns={columns}, "
            f"delim={_lit(delim)}, quote={_lit(quote)}, escape={_lit(quote)}, "
            f"null_padding=true, filename={_lit(_FILE_COL)}, {_REJECTS}, "
            # Strict and parallel is fastest; a line that does not fit (too many fields, bad
            # UTF-8, too long) is rejected and counted as a malformed record. Should the strict
            # reader fail anyway, the file is re-read by the lenient single-threaded one.
            + ("strict_mode=true)" if parallel else "strict_mode=false, parallel=false)")
        )
        parts.append(_typed_select(source, cols, {}, csv_=True))
    return parts


def _jsonl_part(
    files: list[Path], parallel: bool = True, garbage: frozenset[Path] = frozenset()
) -> list[str]:
    for f in files:
        if f not in garbage:
            _json_keys_ok(f, _json_sample_keys(f))
    # Each line is read as one text value (no quoting, no delimiter), so a malformed line is a
    # row with all fields missing (counted as a drop), never a reader error.
    source = (
        f"(SELECT line AS j, {_FILE_COL} FROM read_csv({_file_list(files)}, "
        "columns={'line': 'VARCHAR'}, header=false, delim=E'\\x1e', quote='', escape='', "
        f"auto_detect=false, strict_mode=false, null_padding=true, filename={_lit(_FILE_COL)}, "
        f"{_REJECTS}, parallel={str(parallel).lower()}) "
        "WHERE line >= '!' OR trim(line, ' \t\r') <> '')"
    )
    return [_json_select(source)]


def _json_array_part(con: duckdb.DuckDBPyConnection, files: list[Path]) -> list[str]:
    for f in files:
        try:
            rows = con.execute(
                f"SELECT json FROM read_json_objects({_lit(str(f))}, format='array') "
                f"LIMIT {_JSON_SAMPLE_LINES}"
            ).fetchall()
        except duckdb.Error as exc:
            raise InputError(f"{f}: not a readable JSON array ({_short(exc)})") from exc
        if not rows:
            raise InputError(f"{f}: empty JSON array, no ACS call client operations")
        keys: set[str] = set()
        for (text,) in rows:
            rec = _json_record(text)
            if isinstance(rec, dict):
                keys.update(rec)
                if isinstance(rec.get("properties"), dict):
                    keys.update(rec["properties"])
        _json_keys_ok(f, keys)
    source = (
        f"(SELECT json AS j, {_FILE_COL} FROM read_json_objects({_file_list(files)}, "
        f"format='array', filename={_lit(_FILE_COL)}))"
    )
    return [_json_select(source)]


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------


def _text_parts(
    by_fmt: dict[str, list[Path]], *, parallel: bool, garbage: frozenset[Path] = frozenset()
) -> list[str]:
    parts: list[str] = []
    if "csv" in by_fmt:
        parts += _csv_part(by_fmt["csv"], parallel)
    if "jsonl" in by_fmt:
        parts += _jsonl_part(by_fmt["jsonl"], parallel, garbage)
    return parts


def _macros(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("CREATE OR REPLACE TEMP MACRO _acs_finite(x) AS CASE WHEN isfinite(x) THEN x END")
    # Out-of-range timestamps (schema.TIMESTAMP_MIN/MAX) read as unparseable (NULL).
    con.execute(
        "CREATE OR REPLACE TEMP MACRO _acs_in_range(us) AS CASE WHEN us >= "
        f"{_us(schema.TIMESTAMP_MIN)} AND us < {_us(schema.TIMESTAMP_MAX)} THEN us END"
    )
    # ISO 8601 (any offset, 'Z', up to 7 fractional digits), else the portal's display format.
    con.execute(
        "CREATE OR REPLACE TEMP MACRO _acs_ts_us(s) AS _acs_in_range(epoch_us(coalesce("
        "TRY_CAST(s AS TIMESTAMPTZ), TRY_CAST(trim(s) AS TIMESTAMPTZ), "
        "CAST(try_strptime(trim(s), ['%m/%d/%Y, %I:%M:%S.%f %p', '%m/%d/%Y, %I:%M:%S %p']) "
        "AS TIMESTAMPTZ))))"
    )


def _prior_failures(
    con: duckdb.DuckDBPyConnection,
    rows_in: Callable[[tuple[int, int]], str],
    window: tuple[int, int] | None,
    lookback_us: int,
    ids: pd.DataFrame,
) -> _Prior:
    """Failures that arrived in ``lookback_us`` before ``window`` (none without a window), in
    the read's operations: per (partition id, operation, call hash) how many, partitions and
    calls keyed as the rows pass keys them (``ids``: name, sdk -> pid, op). ``rows_in``: the
    normalised rows that arrived in a window, as SQL.

    One pass over the look-back: failures classified in SQL (:data:`RESULT_CLASS_SQL`), names
    per distinct raw triple in Python as for the read; re-ingested copies are not taken out
    (a call's earlier failures are a weight, not a count).
    """
    if window is None or lookback_us <= 0:
        return _Prior.none()
    norm = rows_in((window[0] - lookback_us, window[0]))
    rc = RESULT_CLASS_SQL.format(rt="rt")
    got = con.execute(f"""
SELECT any_value(op) AS op, any_value(sdk) AS sdk, h, ck, count(*) AS n
FROM (SELECT hash(op, sdk, rt) AS h, op, sdk,
        CAST(1 + hash(coalesce(nullif(call, ''), opid)) % 4294967295 AS UINTEGER) AS ck
      FROM ({norm})
      WHERE opid IS NOT NULL AND cct_us IS NOT NULL AND ({rc}) = 'failure')
GROUP BY h, ck""").fetchall()
    if not got:
        return _Prior.none()
    # (fetchall, not a frame: a NULL name must stay None for the name rules, not become NaN)
    triples = {h: (op, sdk, h, 2, 0) for op, sdk, h, _, _ in got}
    names = _dimension(list(triples.values()))
    names = names.loc[names["name_code"] == 0, ["h", "name", "sdk"]]
    names = names.merge(ids[["name", "op"]].drop_duplicates(), on="name")
    names = names.merge(ids[["name", "sdk", "pid"]], on=["name", "sdk"], how="left")
    frame = pd.DataFrame(
        {
            "h": pd.Series([r[2] for r in got], dtype="uint64"),
            "ck": np.array([r[3] for r in got], np.int64),
            "n": np.array([r[4] for r in got], np.float64),
        }
    ).merge(names[["h", "pid", "op"]], on="h")
    return _Prior(
        pid=frame["pid"].fillna(-1).to_numpy(np.int64),
        op=frame["op"].to_numpy(np.int64),
        key=frame["ck"].to_numpy(np.int64),
        n=frame["n"].to_numpy(np.float64),
    )


class _Inputs(NamedTuple):
    """Where the aggregation reads its rows: SQL texts over the files or the parsed scan."""

    norm: str  # the window's normalised rows
    rows_in: Callable[[tuple[int, int]], str]  # the normalised rows that arrived in a range
    bounds: list[str]  # selects of min/max CallClientTimeStamp and max DurationMs
    rejected: int  # unparseable text lines (malformed records)


class _Reasons(NamedTuple):
    """Rows per drop reason and per flag, and the rows read (rejected lines included)."""

    dropped: dict[str, int]
    flagged: dict[str, int]
    rows_read: int


def _run(
    con: duckdb.DuckDBPyConnection,
    parts: list[str],
    bucket_us: int,
    window: tuple[int, int] | None,
    bounds: list[str] | None,
    lookback: int = 0,
    *,
    mtimes: dict[str, int] | None = None,
    dedup_lookback: int = 0,
) -> schema.BucketAggregates:
    """Aggregate the normalised rows of ``parts``.

    ``bounds``: one _bounds_select per part (Parquet); None for text and JSON, which are then
    parsed once into DuckDB's own spillable storage rather than three times (bounds, names and
    rows passes). ``lookback`` (microseconds): how far before ``window`` earlier failures of
    the read's failing calls are looked up (see :func:`_prior_failures`). ``mtimes``: file
    name -> modification time (us), the arrival of rows that carry no time.
    ``dedup_lookback`` (us): keys that arrived that long before ``window`` are duplicates.
    """
    if bounds is None:
        # Text is parsed once, for the window and the look-backs before it together.
        back = max(lookback, dedup_lookback) if window is not None else 0
        inputs = _scanned_inputs(con, parts, window, back, mtimes)
    else:
        inputs = _Inputs(_norm_sql(parts, window, mtimes), partial(_norm_sql, parts), bounds, 0)

    # 1. Partitions: canonical casing and point events from the Python contract, applied to
    #    the few distinct (OperationName, SdkVersion, ResultType) triples; dense ids for fast
    #    grouping; the bounds that size the integer codes of step 2.
    dim, shape = _partitions(con, inputs.norm, inputs.bounds, bucket_us)

    # 2. One pass over the input into a compact Arrow table of integers (~37 bytes a row).
    rows = _read_rows(con, inputs.norm, bucket_us, shape)

    # 3. Duplicates, in numpy (one sort of the key column is several times faster than a
    #    10M-group hash aggregate). See _duplicates().
    discard = _duplicates(rows, partial(_tie_break, rows, shape))
    seen = _seen_before(rows, _prior_keys(con, inputs.rows_in, window, dedup_lookback))
    if len(seen):
        discard = np.union1d(discard, seen)

    # 4. Counts per reason and flag (one bincount of code * 16 + flags), then stats and
    #    histogram of the kept rows.
    keys, op_of_pid = _pid_operations(dim)
    prior = _prior_failures(con, inputs.rows_in, window, lookback, keys)
    if shape.compact:
        per_cf, stats_cols, hist_cols = _group_compact(rows, discard, shape, op_of_pid, prior)
    else:
        per_cf, stats_cols, hist_cols = _group_general(rows, discard, op_of_pid, prior)
    reasons = _reason_counts(per_cf, len(discard), inputs.rejected)
    del rows
    stats, hist = _contract_frames(dim, stats_cols, hist_cols, bucket_us)
    return schema.BucketAggregates(
        stats=stats,
        hist=hist,
        dropped=reasons.dropped,
        flagged=reasons.flagged,
        rows_read=reasons.rows_read,
    )


def _scanned_inputs(
    con: duckdb.DuckDBPyConnection,
    parts: list[str],
    window: tuple[int, int] | None,
    back: int,
    mtimes: dict[str, int] | None,
) -> _Inputs:
    """Parse text ``parts`` once into ``_scan`` (the window and ``back`` us before it): inputs."""
    scan = (window[0] - back, window[1]) if window is not None else None
    for table in ("_acs_rej", "_acs_rej_scan"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE _scan AS {_norm_sql(parts, scan, mtimes)}")
    rejected = _rejected_lines(con, window, mtimes or {})
    if window is not None and back > 0:
        # The look-backs read _scan again: the window's own rows get a table of their own.
        con.execute(f"CREATE OR REPLACE TEMP TABLE _norm AS {_scan_rows_in(window)}")
        norm = "SELECT * FROM _norm"
    else:
        norm = "SELECT * FROM _scan"
    bounds = [f"SELECT min(cct_us) AS lo, max(cct_us) AS hi, max(dur) AS dmax FROM ({norm})"]
    return _Inputs(norm, _scan_rows_in, bounds, rejected)


def _partitions(
    con: duckdb.DuckDBPyConnection, norm: str, bounds: list[str], bucket_us: int
) -> tuple[pd.DataFrame, _Shape]:
    """Distinct names of ``norm`` -> the ``_dim`` frame (also as DuckDB table) and the shape."""
    triples = con.execute(_names_sql(norm)).fetchall()
    dim = _dimension(triples)
    shape = _shape(con, triples, dim, bounds, bucket_us)
    con.register("_dim_df", dim)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _dim AS SELECT CAST(h AS UBIGINT) AS h, "
        "CAST(pid AS INTEGER) AS pid, CAST(rc AS UTINYINT) AS rc, CAST(point AS BOOLEAN) AS point, "
        "CAST(noncanon AS BOOLEAN) AS noncanon, CAST(name_code AS UTINYINT) AS name_code "
        "FROM _dim_df"
    )
    con.unregister("_dim_df")
    return dim, shape


def _read_rows(
    con: duckdb.DuckDBPyConnection, norm: str, bucket_us: int, shape: _Shape
) -> pa.Table:
    """The rows pass (:func:`_rows_sql`) over ``norm`` as one Arrow table of ``shape.rows``."""
    # The string columns are decoded and hashed exactly once. Arrow instead of a DuckDB temp
    # table: cheaper to build, and numpy reads its columns without a copy.
    rows = con.sql(_rows_sql(norm, bucket_us, shape)).to_arrow_reader(1 << 20).read_all()
    if rows.num_rows != shape.rows:  # every row joins exactly one name
        raise RuntimeError(f"read {rows.num_rows} rows, expected {shape.rows}; input changed?")
    return rows


def _pid_operations(dim: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """``dim`` -> (name, sdk, pid, op) per partition id, and the operation index of each id."""
    # A call failing in several versions of one operation is one failing call of the
    # operation's fleet (failed_calls_op).
    by_pid = dim.drop_duplicates("pid").sort_values("pid")
    op_of_pid = np.zeros(int(by_pid["pid"].max()) + 1 if len(by_pid) else 0, dtype=np.int64)
    op_of_pid[by_pid["pid"].to_numpy()] = pd.factorize(by_pid["name"])[0]
    by_pid = by_pid.assign(op=op_of_pid[by_pid["pid"].to_numpy()])
    return by_pid[["name", "sdk", "pid", "op"]], op_of_pid


def _reason_counts(per_cf: np.ndarray, duplicates: int, rejected: int) -> _Reasons:
    """Rows per (drop code, flags) ``per_cf``, duplicates and rejected lines -> the counts."""
    dropped = {r: int(per_cf[c].sum()) for c, r in _DROP_CODES.items()}
    dropped["duplicate"] = duplicates
    dropped["malformed_record"] += rejected
    per_value = per_cf[0]  # flags of kept rows
    flagged = {
        reason: int(per_value[(np.arange(16) & bit) != 0].sum())
        for reason, bit in (
            ("invalid_duration", 1),
            ("invalid_payload_json", 4),
            ("string_number", 2),
            ("noncanonical_operation_case", 8),
        )
    }
    rows_read = sum(dropped.values()) + int(per_value.sum())  # rejected lines included
    return _Reasons(dropped, flagged, rows_read)


def _contract_frames(
    dim: pd.DataFrame,
    stats_cols: dict[str, np.ndarray],
    hist_cols: dict[str, np.ndarray],
    bucket_us: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Grouped columns (``pid``, ``bi`` and values; consumed) -> the stats and hist frames."""
    names = dim.drop_duplicates("pid").set_index("pid").sort_index()
    stats = _partition_frame(
        names,
        stats_cols.pop("pid"),
        stats_cols.pop("bi") * bucket_us,
        stats_cols,
        schema.AGG_COLUMNS,
        sort=False,  # partition ids follow (name, version) order: already sorted by key
    )
    hist = _partition_frame(
        names,
        hist_cols.pop("pid"),
        hist_cols.pop("bi") * bucket_us,
        hist_cols,
        schema.HIST_COLUMNS,
        sort=False,
    )
    return stats, hist


def _rejected_lines(
    con: duckdb.DuckDBPyConnection, window: tuple[int, int] | None, mtimes: dict[str, int]
) -> int:
    """Lines DuckDB's reader rejected (undecodable, too long, too many fields) in ``window``.

    A rejected line has no time: it arrives with its file's modification time (as a
    malformed record does in :func:`_norm_sql`).
    """
    try:
        per_file = con.execute(
            # one error per offending field: count each line once
            "SELECT s.file_path, count(*) FROM "
            "(SELECT DISTINCT scan_id, file_id, line FROM _acs_rej) e JOIN _acs_rej_scan s "
            "ON e.scan_id = s.scan_id AND e.file_id = s.file_id GROUP BY s.file_path"
        ).fetchall()
    except duckdb.CatalogException:  # no text file was read
        return 0
    total = 0
    for path, n in per_file:
        mtime = mtimes.get(str(path))
        if window is None or (mtime is not None and window[0] <= mtime < window[1]):
            total += int(n)
    if total:
        log.warning("%d malformed line(s) rejected by the reader (counted as dropped)", total)
    return total


def _prior_keys(
    con: duckdb.DuckDBPyConnection,
    rows_in: Callable[[tuple[int, int]], str],
    window: tuple[int, int] | None,
    lookback_us: int,
) -> np.ndarray:
    """Sorted dedup keys (the rows pass's ``k``) of the rows that arrived in ``lookback_us``
    before ``window`` and were not dropped: a later copy in the window is a duplicate, so
    consecutive reads count a re-ingested operation once (the KQL's ``_Prior``)."""
    if window is None or lookback_us <= 0:
        return np.empty(0, dtype="uint64")
    norm = rows_in((window[0] - lookback_us, window[0]))
    got = con.execute(f"""
SELECT DISTINCT hash(opid, cct_us) AS k FROM ({norm})
WHERE NOT bad AND cct_us IS NOT NULL AND opid IS NOT NULL AND op IS NOT NULL
  -- blank values sort below '!' and the pseudo name is short: CASEs keep trim() off most rows
  AND (CASE WHEN opid < '!' THEN trim(opid, {_WS}) <> '' ELSE TRUE END)
  AND (CASE WHEN op < '!' THEN trim(op, {_WS}) <> '' ELSE TRUE END)
  AND (CASE WHEN length(op) < 64 THEN lower(trim(op, {_WS})) <> {_lit(_PSEUDO_LOWER)}
       ELSE TRUE END)""").fetchnumpy()["k"]
    return np.sort(np.asarray(got, dtype="uint64"))


def _seen_before(rows: pa.Table, prior: np.ndarray) -> np.ndarray:
    """Row indices whose dedup key is in ``prior`` (sorted keys), a step at a time."""
    if not len(prior):
        return np.empty(0, dtype="int64")
    hits = []
    for off, part in _steps(rows, _STEP):
        k = _col(part, "k")
        pos = np.minimum(np.searchsorted(prior, k), len(prior) - 1)
        hits.append(np.flatnonzero((prior[pos] == k) & (k != 0)) + off)
    return np.concatenate(hits) if hits else np.empty(0, dtype="int64")


def _shape(
    con: duckdb.DuckDBPyConnection,
    triples: list[tuple[Any, ...]],
    dim: pd.DataFrame,
    bounds: list[str],
    bucket_us: int,
) -> _Shape:
    # Bucket and bin bounds with the very expressions of _rows_sql on the extreme values (both
    # are monotone), so every row's codes fall inside them. Rows outside the arrival window
    # may widen them: harmless.
    union = "\nUNION ALL\n".join(bounds)
    b = float(bucket_us)
    bmin, bmax, binmax = con.execute(
        f"SELECT CAST(floor(min(lo) / {b!r}) AS BIGINT), CAST(floor(max(hi) / {b!r}) AS BIGINT), "
        f"CAST(ceil(ln(greatest(max(dmax), 1.0)) / {_LN_GAMMA_SQL}) AS BIGINT) FROM ({union})"
    ).fetchall()[0]
    b0 = 0 if bmin is None else int(bmin)
    return _Shape(
        rows=sum(int(t[4]) for t in triples),
        n_pid=int(dim["pid"].max()) + 1 if len(dim) else 0,
        b0=b0,
        nb=1 if bmax is None else int(bmax) - b0 + 1,
        nbin=1 if binmax is None else int(binmax) + 1,
    )


def _tie_break(rows: pa.Table, shape: _Shape, idx: np.ndarray) -> list[np.ndarray]:
    """Dedup tie-break columns of rows ``idx``: arrival (NULL: -inf), result class, duration
    (none: +inf), partition, flags."""

    def take(name: str) -> np.ndarray:
        return _take(rows.column(name), idx)

    tg = take("tg_us")
    tg = np.where(pd.isna(tg), -np.inf, tg)
    if shape.compact:
        c3 = take("c3").astype("int64")
        cell, rc = c3 // 3, c3 % 3
        ld = np.where(take("hk") == _U32_NONE, np.inf, take("ld"))
        pid = cell // shape.nb
    else:
        rc, pid = take("rc"), take("pid")
        ld = np.where(take("bin") < 0, np.inf, take("ld"))
    return [np.asarray(c, dtype="float64") for c in (tg, rc, ld, pid, take("cf") & 15)]


def _take(column: pa.ChunkedArray, idx: np.ndarray) -> np.ndarray:
    """``column[idx]`` as numpy (nulls as NaN), gathered chunk by chunk: Arrow's take on a
    chunked column costs ~20 ms a call at 9M rows, whatever the few rows taken."""
    ends = np.cumsum([len(c) for c in column.chunks])
    which = np.searchsorted(ends, idx, side="right")
    out = np.empty(
        len(idx), dtype="float64" if column.null_count else column.type.to_pandas_dtype()
    )
    for i in np.unique(which):
        sel = which == i
        chunk = column.chunks[i].to_numpy(zero_copy_only=False)
        out[sel] = chunk[idx[sel] - (ends[i - 1] if i else 0)]
    return out


def _col(rows: pa.Table, name: str) -> np.ndarray:
    """A column without nulls as numpy (a copy when the column is in several chunks)."""
    out: np.ndarray = rows.column(name).to_numpy()
    return out


# Rows per step of the numpy passes. The box this was tuned on pays ~2.5 ms per MiB of fresh
# memory (page faults): whole-column temporaries (a 72 MiB intp copy per bincount) cost more
# than the arithmetic, step-sized ones are recycled by the allocator. DuckDB's Arrow batches
# are 2**20 rows, so a step is (mostly) one zero-copy chunk.
_STEP: Final = 1 << 20


def _steps(rows: pa.Table, step: int) -> Iterator[tuple[int, pa.Table]]:
    for off in range(0, rows.num_rows, step):
        yield off, rows.slice(off, step)


def _per_code_flags(cf: np.ndarray) -> np.ndarray:
    return np.bincount(cf, minlength=16 * (len(_DROP_CODES) + 1)).reshape(-1, 16)


def _group_compact(
    rows: pa.Table, discard: np.ndarray, shape: _Shape, op_of_pid: np.ndarray, prior: _Prior
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Counts per (drop code, flags), sums per (partition, bucket) and histogram counts.

    From the uint32 codes, a step of rows at a time: dense bincounts over cells (dropped rows
    sit in the garbage cell ``n_cells``), discarded duplicates taken back out (integers) or
    given a zero weight (sums); one in-place sort of the histogram codes.
    """
    n_cells, nb, nbin = shape.n_cells, shape.nb, shape.nbin
    step = max(_STEP, n_cells + 1)  # each step's bincounts no longer than its rows
    per_cf = _per_code_flags(np.empty(0, dtype="uint8"))
    per_rc = np.zeros(3 * (n_cells + 1), dtype="int64")
    sums = np.zeros(n_cells + 1)
    sumsq = np.zeros(n_cells + 1)
    hk = np.empty(rows.num_rows, dtype="uint32")
    fail_cell, fail_call = [], []  # (cell, call hash) of every kept failure: few rows
    for off, part in _steps(rows, step):
        m = part.num_rows
        d = discard[np.searchsorted(discard, off) : np.searchsorted(discard, off + m)] - off
        cf, c3, ld = _col(part, "cf"), _col(part, "c3"), _col(part, "ld")
        per_cf += _per_code_flags(cf)
        per_rc += np.bincount(c3, minlength=len(per_rc))
        hk[off : off + m] = _col(part, "hk")
        if len(d):
            per_cf[0] -= np.bincount(cf[d] & 15, minlength=16)  # discarded rows had code 0
            np.subtract.at(per_rc, c3[d].astype("int64"), 1)
            hk[off + d] = _U32_NONE
            ld = ld.copy()
            ld[d] = 0.0  # a zero weight adds nothing: the sums are those of the kept rows
        cell = (c3 // 3).astype(np.intp)  # bincount would convert it once per call
        sums += np.bincount(cell, weights=ld, minlength=n_cells + 1)
        sumsq += np.bincount(cell, weights=ld * ld, minlength=n_cells + 1)
        ck = _col(part, "ck")
        if len(d):
            ck = ck.copy()
            ck[d] = 0
        f = np.flatnonzero(ck)
        fail_cell.append(cell[f])
        fail_call.append(ck[f])
    fcell = np.concatenate(fail_cell) if fail_cell else np.empty(0, np.intp)
    fcall = np.concatenate(fail_call) if fail_call else np.empty(0, np.uint32)
    fpid = fcell // nb
    failed = _failed_calls(
        fcell, fcall, op_of_pid[fpid] * nb + fcell % nb, fpid, nb, n_cells, prior
    )
    del fcell, fcall, fpid
    per_rc3 = per_rc.reshape(-1, 3)[:n_cells]
    calls = per_rc3.sum(axis=1)
    present = np.flatnonzero(calls)
    # Histogram: sort the codes (uint32 sorts several times faster than int64), run lengths.
    hk.sort()
    hk = hk[: np.searchsorted(hk, np.uint32(_U32_NONE))]  # (a Python int converts hk)
    starts = np.flatnonzero(np.r_[True, hk[1:] != hk[:-1]]) if len(hk) else np.empty(0, "int64")
    hkey = hk[starts].astype("int64")
    hcount = np.diff(np.r_[starts, len(hk)]).astype("int64")
    del hk
    hcell = hkey // nbin
    dur_n = np.bincount(hcell, weights=hcount, minlength=n_cells)[present]
    stats = {
        "pid": present // nb,
        "bi": present % nb + shape.b0,
        "calls": calls[present],
        "failures": per_rc3[present, 2],
        **{name: v[present] for name, v in failed.items()},
        "expected_errors": per_rc3[present, 1],
        "dur_n": np.rint(dur_n).astype("int64"),
        "log_dur_sum": sums[present],
        "log_dur_sumsq": sumsq[present],
    }
    hist = {
        "pid": hcell // nb,
        "bi": hcell % nb + shape.b0,
        "bin": (hkey % nbin).astype("int32"),
        "count": hcount,
    }
    return per_cf, stats, hist


@dataclass(frozen=True)
class _Prior:
    """Failures that arrived before the read (its look-back): partition id and call hash of
    each, so the read's failures of the same calls weigh as the rest of their cluster."""

    pid: np.ndarray  # -1: a version the read does not hold (its operation's calls still count)
    op: np.ndarray
    key: np.ndarray
    n: np.ndarray  # failures of that (partition, call)

    @staticmethod
    def none() -> _Prior:
        ints = np.empty(0, np.int64)
        return _Prior(pid=ints, op=ints, key=ints, n=np.empty(0))


def _cluster_weights(
    group: np.ndarray,
    key: np.ndarray,
    prior_group: np.ndarray,
    prior_key: np.ndarray,
    prior_n: np.ndarray,
) -> np.ndarray:
    """Per failing row: ``s + 2 * k0``, ``s`` its call's failures in the read and ``k0`` those
    that arrived before it (``prior_n`` per ``prior_*`` key), calls keyed by (group, call hash).

    Summed over a call's rows: ``(k0 + s)**2 - k0**2``. Reads of consecutive arrival windows
    thus add up to the sum of S**2 over whole calls (S: a call's failures), as one read of
    everything gives, as long as the look-back reaches a call's earlier failures.
    """
    calls, inv, counts = np.unique((group << 32) | key, return_inverse=True, return_counts=True)
    inv = inv.ravel()
    w = counts.astype(np.float64)
    if len(prior_group):
        before, where = np.unique((prior_group << 32) | prior_key, return_inverse=True)
        k0 = np.bincount(where.ravel(), weights=prior_n, minlength=len(before))
        pos = np.minimum(np.searchsorted(before, calls), len(before) - 1)
        w += 2.0 * np.where(before[pos] == calls, k0[pos], 0)
    return np.asarray(w[inv])


def _failed_calls(
    cell: np.ndarray,
    key: np.ndarray,
    opb: np.ndarray,
    pid: np.ndarray,
    nb: int,
    n_cells: int,
    prior: _Prior,
) -> dict[str, np.ndarray]:
    """Failing calls per cell, from the failing rows' cells (``0 .. n_cells-1``), call hashes
    (uint32), (operation, bucket) keys ``op * nb + bucket`` and partition ids.

    ``failed_calls``: distinct calls per cell. ``failed_calls_op``: each of them weighted by
    1 / the number of versions of the same operation it failed in within the bucket, so the
    versions' weights add up to the operation's distinct failing calls (a group call's legs run
    several SDK versions: summing the per-version counts would count it once per version).
    ``failure_cluster`` (``_op``): each failure weighted by the failures of its call in the
    partition (operation) over the whole read, whatever their buckets (a call's failures spread
    over its length, so a per-bucket count would see the cluster cut in pieces), plus twice
    those of ``prior`` (arrived before the read; see :func:`_cluster_weights`).
    """
    cell, key, opb = cell.astype(np.int64), key.astype(np.int64), opb.astype(np.int64)
    out = {
        "failed_calls": np.zeros(n_cells, "int64"),
        "failed_calls_op": np.zeros(n_cells),
        "failure_cluster": np.zeros(n_cells),
        "failure_cluster_op": np.zeros(n_cells),
    }
    if not len(cell):
        return out
    for name, group, before in (
        ("failure_cluster", pid, prior.pid),
        ("failure_cluster_op", opb // max(nb, 1), prior.op),
    ):
        weights = _cluster_weights(group.astype(np.int64), key, before, prior.key, prior.n)
        out[name] = np.bincount(cell, weights=weights, minlength=n_cells)
    order = np.lexsort((key, cell))
    cell, key, opb = cell[order], key[order], opb[order]
    first = np.r_[True, (cell[1:] != cell[:-1]) | (key[1:] != key[:-1])]
    cell, key, opb = cell[first], key[first], opb[first]  # one row per (cell, call)
    out["failed_calls"] = np.bincount(cell, minlength=n_cells).astype("int64")
    # Versions per (operation, bucket, call): run lengths after sorting on that key.
    order = np.lexsort((key, opb))
    o, k = opb[order], key[order]
    starts = np.flatnonzero(np.r_[True, (o[1:] != o[:-1]) | (k[1:] != k[:-1])])
    runs = np.diff(np.r_[starts, len(o)])
    versions = np.empty(len(o), np.int64)
    versions[order] = np.repeat(runs, runs)
    out["failed_calls_op"] = np.bincount(cell, weights=1.0 / versions, minlength=n_cells)
    return out


def _group_general(
    rows: pa.Table, discard: np.ndarray, op_of_pid: np.ndarray, prior: _Prior
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    cf = _col(rows, "cf")
    per_cf = _per_code_flags(cf)
    per_cf[0] -= np.bincount(cf[discard] & 15, minlength=16)
    keep = cf < 16
    keep[discard] = False
    del cf
    pid, bi, rc, ld, bins, ck = (
        _col(rows, c)[keep] for c in ("pid", "bi", "rc", "ld", "bin", "ck")
    )
    stats, hist = _group(pid, bi, rc, ld, bins, ck, op_of_pid, prior)
    return per_cf, stats, hist


def _group(
    pid: np.ndarray,
    bi: np.ndarray,
    rc: np.ndarray,
    ld: np.ndarray,
    bins: np.ndarray,
    ck: np.ndarray,
    op_of_pid: np.ndarray,
    prior: _Prior,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The general path of :func:`_group_compact` (kept rows only; codes too wide for uint32).

    Returns column arrays sorted by (pid, bi) and (pid, bi, bin).
    """
    if len(pid) == 0:
        e = np.empty(0, dtype="int64")
        stats = {
            c: e
            for c in ("pid", "bi", "calls", "failures", "failed_calls", "expected_errors", "dur_n")
        }
        stats |= {
            c: e.astype("float64")
            for c in (
                "failed_calls_op",
                "failure_cluster",
                "failure_cluster_op",
                "log_dur_sum",
                "log_dur_sumsq",
            )
        }
        return stats, {"pid": e, "bi": e, "bin": e.astype("int32"), "count": e}
    b0 = int(bi.min())
    nb = int(bi.max()) - b0 + 1
    cell = pid.astype("int64") * nb + (bi - b0)  # dense (partition, bucket), (pid, bi) order
    size = int(cell.max()) + 1
    if size <= len(cell) + 1_000_000:  # dense: bincount arrays no longer than the input
        inv, n_cells = cell, size
        cells = np.arange(size, dtype="int64")
    else:  # sparse: compact first (a sort)
        cells, inv = np.unique(cell, return_inverse=True)
        n_cells = len(cells)
    valid = bins >= 0
    f = rc == 2
    failed = _failed_calls(
        inv[f],
        ck[f],
        op_of_pid[pid[f]].astype("int64") * nb + (bi[f] - b0),
        pid[f],
        nb,
        n_cells,
        prior,
    )
    calls = np.bincount(inv, minlength=n_cells)
    present = calls > 0
    stats = {
        "pid": cells[present] // nb,
        "bi": cells[present] % nb + b0,
        "calls": calls[present],
        "failures": np.bincount(inv[rc == 2], minlength=n_cells)[present],
        **{name: v[present] for name, v in failed.items()},
        "expected_errors": np.bincount(inv[rc == 1], minlength=n_cells)[present],
        "dur_n": np.bincount(inv[valid], minlength=n_cells)[present],
        "log_dur_sum": np.bincount(inv, weights=ld, minlength=n_cells)[present],
        "log_dur_sumsq": np.bincount(inv, weights=ld * ld, minlength=n_cells)[present],
    }
    bins = bins[valid]
    nbin = int(bins.max()) + 1 if len(bins) else 1
    hkey, hcount = np.unique(cell[valid] * nbin + bins, return_counts=True)
    hcell = hkey // nbin
    hist = {
        "pid": hcell // nb,
        "bi": hcell % nb + b0,
        "bin": (hkey % nbin).astype("int32"),
        "count": hcount.astype("int64"),
    }
    return stats, hist


def _duplicates(rows: pa.Table, tie_break: Callable[[np.ndarray], list[np.ndarray]]) -> np.ndarray:
    """Row indices of duplicate copies to discard (every copy of a key but the kept one).

    Key: column ``k``, a 64-bit hash of (OperationId, CallClientTimeStamp), 0 on rows dropped
    for another reason (a collision among 10M keys has a probability of ~3e-6). The copy kept
    is the one with the latest TimeGenerated; ties are broken on what the copy contributes
    (result class, duration with none last, partition, flags; see :func:`_tie_break`), so
    neither file order nor splitting the input changes the result.
    """
    n = rows.num_rows
    empty = np.empty(0, dtype="int64")
    if n < 2:
        return empty
    # One sort finds the candidates: 64-bit words of the key's high bits and the row number in
    # the low bits (a plain sort, far cheaper than an argsort). Equal high bits make a
    # candidate; the exact comparison below runs on those few rows.
    shift = np.uint64(max((n - 1).bit_length(), 1))
    low = np.uint64((1 << int(shift)) - 1)
    packed = np.empty(n, dtype="uint64")
    for off, part in _steps(rows, _STEP):
        out = packed[off : off + part.num_rows]
        np.bitwise_and(_col(part, "k"), ~low, out=out)
        out |= np.arange(off, off + part.num_rows, dtype="uint64")
    packed.sort()
    # Words below 1 << shift have zero high bits: the dropped rows (k == 0), and any real key
    # whose high bits happen to be 0 (checked on the full key).
    z = int(np.searchsorted(packed, np.uint64(1) << shift))
    zero_run = (packed[:z] & low).astype("int64")
    near = []
    for lo in range(z, n - 1, _STEP):
        top = packed[lo : lo + _STEP + 1] >> shift
        eq = np.flatnonzero(top[1:] == top[:-1]) + lo
        near += [eq, eq + 1]
    pos = np.unique(np.concatenate(near)) if near else empty
    cand = np.concatenate([(packed[pos] & low).astype("int64"), zero_run])
    del packed
    dk = _take(rows.column("k"), cand)
    cand, dk = cand[dk != 0], dk[dk != 0]
    if len(cand) < 2:
        return empty
    arrival, rc, ld, pid, flags = tie_break(cand)
    # lexsort: last key is primary. Latest TimeGenerated first (NULL last), then content.
    order = np.lexsort((flags, pid, ld, rc, -arrival, dk))
    sorted_keys = dk[order]
    first = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
    return np.sort(cand[order[~first]])


def _dimension(triples: list[tuple[Any, ...]]) -> pd.DataFrame:
    """Distinct raw (name, version, result type) -> dense partition id of (canonical name,
    version), name-based flags and drop code, result class."""
    ops = [t[0] for t in triples]
    names = ["" if o is None else schema.canonical_operation(o) for o in ops]
    dim = pd.DataFrame(
        {
            "op": pd.Series(ops, dtype=object),
            "sdk": pd.Series([t[1] for t in triples], dtype=object),
            "h": pd.Series([t[2] for t in triples], dtype="uint64"),
            "rc": pd.Series([t[3] for t in triples], dtype="int8"),
            "name": pd.Series(names, dtype=object),
        }
    )
    dim["point"] = [schema.is_point_event(x) for x in names]
    dim["noncanon"] = [o is not None and o != x for o, x in zip(ops, names, strict=True)]
    # Drop codes decided on names (first matching reason): 1 missing, 2 pseudo operation.
    missing, pseudo = _CODE["missing_operation_name"], _CODE["pseudo_operation"]
    dim["name_code"] = np.where(
        dim["name"] == "", missing, np.where(dim["name"].str.lower() == _PSEUDO_LOWER, pseudo, 0)
    ).astype("int8")
    dim["pid"] = dim.groupby(["name", "sdk"], sort=True).ngroup().astype("int32")
    return dim


def _partition_frame(
    names: pd.DataFrame,
    pid: np.ndarray,
    b_us: np.ndarray,
    values: dict[str, np.ndarray],
    columns: dict[str, str],
    *,
    sort: bool,
) -> pd.DataFrame:
    """Build a contract frame from partition ids (strings looked up once per partition)."""
    pid = pa.array(pid.astype("int64"))
    frame = pd.DataFrame(
        {
            # Strings looked up with Arrow's take: no Python object per row.
            "operation_name": _arrow_strings(names["name"].to_numpy(), pid),
            "sdk_version": _arrow_strings(names["sdk"].to_numpy(), pid),
            "bucket_start": pd.DatetimeIndex(
                b_us.astype("int64").astype("datetime64[us]"), tz="UTC"
            ).as_unit("ns"),
            **values,
        }
    )
    if sort:
        frame = frame.sort_values(list(schema.AGG_KEY), kind="stable")
    return frame.astype(columns).reset_index(drop=True)


def _connect(
    threads: int | None, memory_limit: str | None, spill_dir: str
) -> duckdb.DuckDBPyConnection:
    config: dict[str, str | bool | int | float | list[str]] = {"preserve_insertion_order": False}
    if threads is not None:
        config["threads"] = int(threads)
    if memory_limit is not None:
        config["memory_limit"] = str(memory_limit)
    con = duckdb.connect(":memory:", config=config)
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")  # never draw on the user's terminal
    con.execute(f"SET temp_directory = {_lit(spill_dir)}")
    _macros(con)
    return con


def read_aggregates(  # noqa: PLR0913 (9 keyword arguments)
    path: str | os.PathLike[str],
    *,
    bucket: timedelta,
    arrival_window: tuple[datetime, datetime] | None = None,
    threads: int | None = None,
    memory_limit: str | None = None,
    cluster_lookback: timedelta = schema.CLUSTER_LOOKBACK,
    dedup_lookback: timedelta = schema.DEDUP_LOOKBACK,
    max_partitions: int | None = schema.MAX_PARTITIONS,
    resource: str | None = None,
) -> schema.BucketAggregates:
    """Aggregate ACS call client operation exports into bucket aggregates with DuckDB.

    Parameters
    ----------
    path : str or PathLike
        A file, a directory (recursive, every supported file) or a glob. Formats: Parquet,
        CSV (Log Analytics export), JSON lines (Log Analytics export or the Diagnostic Settings
        storage export ``PT1H.json``), JSON arrays; detected by extension and, for JSON, by
        content.
    bucket : timedelta
        Bucket width; buckets are ``CallClientTimeStamp`` floored to it, aligned on the Unix
        epoch, UTC.
    arrival_window : (datetime, datetime), optional
        Half-open ``[start, end)`` on ``TimeGenerated`` (arrival). Naive datetimes are UTC.
        Default: every row.
    threads : int, optional
        DuckDB worker threads (default: DuckDB's, one per core).
    memory_limit : str, optional
        DuckDB memory limit (e.g. ``"512MB"``); beyond it DuckDB spills to a temporary
        directory that is removed afterwards.
    cluster_lookback : timedelta
        With an ``arrival_window``: how far before it the earlier failures of the window's
        failing calls are looked up, so ``failure_cluster`` of consecutive windows adds up to
        that of one read of both (calls whose failures arrive over a longer time are cut).
    dedup_lookback : timedelta
        With an ``arrival_window``: a dedup key that arrived this long before the window is a
        duplicate in it, so consecutive windows count a re-ingested operation once.
    max_partitions : int, optional
        Keep the busiest partitions (operation, SDK version) up to this many; the rows of the
        rest are counted under ``partition_cap`` (see :func:`detector.aggregate.cap_partitions`).
        None: no cap.
    resource : str, optional
        Only the rows of this ACS resource (a tenant key, see
        :func:`detector.source.resources.resource_key`), matched on the row's
        ``_ResourceId`` / ``resourceId`` trimmed and lower-cased. None: every row.

    Returns
    -------
    BucketAggregates
        ``stats`` and ``hist`` sorted by key, ``dropped`` and ``flagged`` with every reason of
        :data:`~detector.schema.DROP_REASONS` / :data:`~detector.schema.FLAG_REASONS` (zeros
        included), and ``rows_read == stats.calls.sum() + sum(dropped.values())``.

    Raises
    ------
    InputError
        A file is not an ACS export (required columns missing, not a data file, empty,
        corrupt); the message names the file and what is wrong.
    ValueError
        ``bucket`` is not positive or ``arrival_window`` is reversed.
    """
    bucket_us = int(bucket / timedelta(microseconds=1))
    lookback_us = int(cluster_lookback / timedelta(microseconds=1))
    dedup_us = int(dedup_lookback / timedelta(microseconds=1))
    if bucket_us <= 0:
        raise ValueError(f"bucket must be positive, got {bucket}")
    window = _window_us(arrival_window)
    files = _select_files(path)
    mtimes = _mtimes(f.path for f in files)

    def run(
        con: duckdb.DuckDBPyConnection, parts: list[str], bounds: list[str] | None
    ) -> schema.BucketAggregates:
        return _run(
            con,
            _scoped(parts, resource),
            bucket_us,
            window,
            bounds,
            lookback_us,
            mtimes=mtimes,
            dedup_lookback=dedup_us,
        )

    out = _with_inputs(files, threads, memory_limit, run)
    capped = aggregate.cap_partitions(out, max_partitions)
    if capped.partitions_left_out:
        log.warning(
            "partition cap: modelled the %d busiest partitions, left out %d (%d operations, "
            "counted as dropped: partition_cap)",
            max_partitions,
            capped.partitions_left_out,
            capped.dropped["partition_cap"],
        )
    return capped


def _arrow_strings(values: np.ndarray, index: pa.Array) -> pd.api.extensions.ExtensionArray:
    taken = pa.array(list(values), type=pa.large_string()).take(index)
    out: pd.api.extensions.ExtensionArray = pd.array(taken, dtype=pd.StringDtype("pyarrow"))
    return out


def _with_inputs(
    files: list[_File],
    threads: int | None,
    memory_limit: str | None,
    run: Callable[[duckdb.DuckDBPyConnection, list[str], list[str] | None], _T],
) -> _T:
    """Open DuckDB on ``files`` and return ``run(con, parts, bounds)``: the normalised SELECTs
    of every file (by format) and the Parquet bounds SELECTs (None when text is read)."""
    garbage = frozenset(f.path for f in files if f.garbage)
    spill_dir = tempfile.mkdtemp(prefix="acs-duckdb-")
    try:
        con = _connect(threads, memory_limit, spill_dir)
        try:
            by_fmt: dict[str, list[Path]] = {}
            for f in files:
                by_fmt.setdefault(f.fmt, []).append(f.path)
            parts: list[str] = []
            bounds: list[str] | None = []
            if "parquet" in by_fmt:
                parts, bounds = _parquet_part(con, by_fmt["parquet"])
            if "json_array" in by_fmt:
                parts += _json_array_part(con, by_fmt["json_array"])
            try:
                try:
                    text = _text_parts(by_fmt, parallel=True, garbage=garbage)
                    if text or "json_array" in by_fmt:
                        bounds = None  # read once into a table (see _run)
                    return run(con, parts + text, bounds)
                except duckdb.Error:
                    if not text:
                        raise
                    # A text file the strict parallel reader cannot split (a stray quote before
                    # a line break): re-read it with the lenient single-threaded reader, so bad
                    # rows are counted, not fatal. A bug in our SQL fails again and propagates.
                    log.info("re-reading text files with the single-threaded CSV reader")
                    text = _text_parts(by_fmt, parallel=False, garbage=garbage)
                    return run(con, parts + text, None)
            except _READ_ERRORS as exc:
                names = ", ".join(str(f.path) for f in files[:3])
                more = f" (+{len(files) - 3} more)" if len(files) > 3 else ""
                raise InputError(f"cannot read {names}{more}: {_short(exc)}") from exc
        finally:
            con.close()
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)


def read_resources(
    path: str | os.PathLike[str],
    *,
    arrival_window: tuple[datetime, datetime] | None = None,
    threads: int | None = None,
    memory_limit: str | None = None,
) -> dict[str, int]:
    """Rows per resource value (``_ResourceId`` / ``resourceId``, trimmed and lower-cased;
    ``""`` without one) among the rows that arrived in ``arrival_window``: which ACS
    resources wrote these files. Values are hostile text; the busiest 1000 are listed.
    Raises :class:`InputError` like :func:`read_aggregates`."""
    window = _window_us(arrival_window)
    files = _select_files(path)
    mtimes = _mtimes(f.path for f in files)

    def count(
        con: duckdb.DuckDBPyConnection, parts: list[str], bounds: list[str] | None
    ) -> dict[str, int]:
        src = "\nUNION ALL\n".join(
            f"SELECT res, coalesce(tg_us, cct_us, {_mtime_sql(mtimes)}) AS arr_us FROM ({p})"
            for p in parts
        )
        where = f"WHERE arr_us >= {window[0]} AND arr_us < {window[1]}" if window else ""
        rows = con.execute(
            f"SELECT coalesce(lower(trim(res, {_WS})), '') AS r, count(*) AS n FROM ({src}) "
            f"{where} GROUP BY r ORDER BY n DESC LIMIT 1000"
        ).fetchall()
        return {str(r): int(n) for r, n in rows}

    return _with_inputs(files, threads, memory_limit, count)
