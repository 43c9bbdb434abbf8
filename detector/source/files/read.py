"""The read: ACS call client operation exports aggregated by DuckDB into bucket aggregates.

Opens DuckDB on the files :mod:`~detector.source.files.discover` found, validates each per
format, runs the passes of :mod:`~detector.source.files.sql` and hands the rows to
:mod:`~detector.source.files.reduce`; :func:`read_aggregates` and :func:`read_resources`.

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
3. numpy (:mod:`~detector.source.files.reduce`) finds duplicate keys with one sort of key|row
   words (several times faster than a 10M-group hash aggregate, or than an argsort) and
   resolves the few candidates exactly; then sums per (partition, bucket) with dense bincounts
   and counts the histogram with one sort of ``uint32`` codes. Per-row work is vectorised, a
   step of 2**20 rows at a time (fresh memory is dear: see
   :data:`~detector.source.files.reduce._STEP`); no Python loop touches rows. Inputs whose
   codes do not fit ``uint32`` (timestamps decades apart at a fine bucket, absurd durations)
   take a general path with ``int64`` codes and the same results.

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
   than the header): that line is lost, counted, and the rest of the file is read. Every row
   of a file that lacks a required column (schema drift, see :mod:`detector.source.drift`)
   is one too; a file without the identity columns is not an export (InputError);
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

import csv
import itertools
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
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
from detector.source.drift import (
    IDENTITY_COLUMNS,
    SchemaDrift,
    column_drift,
    record_kinds,
    value_kind,
)
from detector.source.files.discover import (
    _JSON_SAMPLE_LINES,
    _csv_header,
    _File,
    _json_keys_ok,
    _json_record,
    _json_sample_keys,
    _mtimes,
    _open_text,
    _select_files,
    _us,
    _window_us,
)
from detector.source.files.reduce import (
    _contract_frames,
    _dimension,
    _duplicates,
    _group_compact,
    _group_general,
    _pid_operations,
    _Prior,
    _reason_counts,
    _seen_before,
    _tie_break,
)
from detector.source.files.sql import (
    _FILE_COL,
    _LN_GAMMA_SQL,
    _PSEUDO_LOWER,
    _REJECTS,
    _WS,
    RESULT_CLASS_SQL,
    _as_malformed,
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

#: Schema drift found per file (path -> record), filled by the read when a caller passes one.
Drift = dict[str, SchemaDrift]

# JSON exporters leave out null-valued keys: a sample without these keeps its rows (reported).
_JSON_OPTIONAL: Final = ("DurationMs", "SdkVersion")

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


def _note(drift: Drift | None, found: SchemaDrift | None) -> None:
    """Record one file's drift in ``drift`` (when the caller collects it)."""
    if drift is not None and found is not None:
        drift[found.where] = found


def _unusable(cols: dict[str, str]) -> bool:
    """A file lacking a required column: its rows are counted as malformed records."""
    return any(c not in cols for c in schema.REQUIRED_COLUMNS)


def _parquet_part(
    con: duckdb.DuckDBPyConnection, files: list[Path], drift: Drift | None = None
) -> tuple[list[str], list[str]]:
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
        if any(c not in cols for c in IDENTITY_COLUMNS):
            raise InputError(_missing_message(f, types, "Parquet"))
        _note(drift, column_drift(str(f), {n: value_kind(t) for n, t in types.items()}))
        sig = tuple(sorted((name, f"{cols[name]}:{types[cols[name]]}") for name in cols))
        groups.setdefault(sig, []).append(f)
    parts, bounds = [], []
    for sig, group in groups.items():
        cols = {name: spec.rsplit(":", 1)[0] for name, spec in sig}
        types = {spec.rsplit(":", 1)[0]: spec.rsplit(":", 1)[1] for _, spec in sig}
        source = f"read_parquet({_file_list(group)}, filename={_lit(_FILE_COL)})"
        part = _typed_select(source, cols, types, csv_=False)
        parts.append(_as_malformed(part, "TRUE") if _unusable(cols) else part)
        bounds.append(_bounds_select(source, cols, types))
    return parts, bounds


def _csv_kinds(path: Path, header: list[str], delim: str, quote: str) -> dict[str, str | None]:
    """Column -> kind for a CSV file: None (CSV has no types) except a numeric log column
    whose sampled non-empty fields are all non-numbers ("text": e.g. ``1000ms``)."""
    kinds: dict[str, str | None] = dict.fromkeys(header)
    numeric = {c.lower() for c, k in schema.LOG_COLUMNS.items() if k in ("long", "int")}
    at = [i for i, h in enumerate(header) if h.split("[")[0].strip().lower() in numeric]
    if not at:
        return kinds
    seen: dict[int, list[bool]] = {i: [] for i in at}
    try:
        with _open_text(path) as fh:
            rows = csv.reader(fh, delimiter=delim, quotechar=quote)
            for fields in itertools.islice(rows, 1, _JSON_SAMPLE_LINES + 1):
                for i in at:
                    if i < len(fields) and fields[i].strip():
                        seen[i].append(_is_number(fields[i]))
    except (OSError, EOFError, ValueError, csv.Error):
        pass  # what was sampled is judged; the read counts the rows it cannot parse
    for i, numbers in seen.items():
        if numbers and not any(numbers):
            kinds[header[i]] = "text"
    return kinds


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _csv_part(files: list[Path], parallel: bool = True, drift: Drift | None = None) -> list[str]:
    groups: dict[tuple[tuple[str, ...], str, str], list[Path]] = {}
    for f in files:
        raw, delim, quote = _csv_header(f)
        header = [h.strip() for h in raw]
        cols = _resolve(header)
        if any(c not in cols for c in IDENTITY_COLUMNS):
            raise InputError(_missing_message(f, header, "CSV"))
        _note(drift, column_drift(str(f), _csv_kinds(f, header, delim, quote)))
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
        part = _typed_select(source, cols, {}, csv_=True)
        parts.append(_as_malformed(part, "TRUE") if _unusable(cols) else part)
    return parts


def _json_sample(path: Path) -> list[object]:
    """The first sampled non-blank lines of a JSON lines file, parsed (None where not JSON)."""
    out: list[object] = []
    try:
        with _open_text(path) as fh:
            for line in fh:
                if line.strip():
                    out.append(_json_record(line))
                    if len(out) >= _JSON_SAMPLE_LINES:
                        break
    except (OSError, EOFError, ValueError):
        pass  # what was sampled is judged; the read counts the undecodable lines
    return out


def _json_drift(files: list[Path], samples: list[list[object]], drift: Drift | None) -> str:
    """Note the drift of JSON ``files`` (their ``samples``); the SQL condition true on the rows
    of those whose drift makes them unusable (FALSE when none does)."""
    bad = []
    for f, sample in zip(files, samples, strict=True):
        found = column_drift(str(f), record_kinds(sample), optional=_JSON_OPTIONAL)
        _note(drift, found)
        if found is not None and found.unusable:
            bad.append(_lit(str(f)))
    return f"{_FILE_COL} IN ({', '.join(bad)})" if bad else "FALSE"


def _jsonl_part(
    files: list[Path],
    parallel: bool = True,
    garbage: frozenset[Path] = frozenset(),
    drift: Drift | None = None,
) -> list[str]:
    checked = [f for f in files if f not in garbage]
    for f in checked:
        _json_keys_ok(f, _json_sample_keys(f))
    unusable = _json_drift(checked, [_json_sample(f) for f in checked], drift)
    # Each line is read as one text value (no quoting; the delimiter is the record separator,
    # which valid JSON never holds raw), so a malformed line is a row with all fields missing
    # (counted as a drop), never a reader error. A line holding the separator is cut there:
    # ``cut`` is not NULL, and the whole line is malformed, not its first piece a record.
    # nullstr: a field that is exactly \x1f is NULL (malformed too), an empty one is ''.
    source = (
        f"(SELECT CASE WHEN cut IS NULL AND line IS NOT NULL THEN line ELSE chr(30) END AS j, "
        f"{_FILE_COL} FROM read_csv({_file_list(files)}, "
        "columns={'line': 'VARCHAR', 'cut': 'VARCHAR'}, header=false, delim=E'\\x1e', "
        "quote='', escape='', nullstr=E'\\x1f', "
        f"auto_detect=false, strict_mode=false, null_padding=true, filename={_lit(_FILE_COL)}, "
        f"{_REJECTS}, parallel={str(parallel).lower()}) "
        "WHERE cut IS NOT NULL OR line IS NULL OR line >= '!' OR trim(line, ' \t\r') <> '')"
    )
    part = _json_select(source)
    return [part if unusable == "FALSE" else _as_malformed(part, unusable)]


def _json_array_part(
    con: duckdb.DuckDBPyConnection, files: list[Path], drift: Drift | None = None
) -> list[str]:
    samples: list[list[object]] = []
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
        samples.append([_json_record(text) for (text,) in rows])
    unusable = _json_drift(files, samples, drift)
    source = (
        f"(SELECT json AS j, {_FILE_COL} FROM read_json_objects({_file_list(files)}, "
        f"format='array', filename={_lit(_FILE_COL)}))"
    )
    part = _json_select(source)
    return [part if unusable == "FALSE" else _as_malformed(part, unusable)]


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------


def _text_parts(
    by_fmt: dict[str, list[Path]],
    *,
    parallel: bool,
    garbage: frozenset[Path] = frozenset(),
    drift: Drift | None = None,
) -> list[str]:
    parts: list[str] = []
    if "csv" in by_fmt:
        parts += _csv_part(by_fmt["csv"], parallel, drift)
    if "jsonl" in by_fmt:
        parts += _jsonl_part(by_fmt["jsonl"], parallel, garbage, drift)
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


def read_aggregates(  # noqa: PLR0913 (10 keyword arguments)
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
    drift: Drift | None = None,
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
    drift : dict, optional
        Filled with each drifted file's :class:`~detector.source.drift.SchemaDrift` (by path).

    Returns
    -------
    BucketAggregates
        ``stats`` and ``hist`` sorted by key, ``dropped`` and ``flagged`` with every reason of
        :data:`~detector.schema.DROP_REASONS` / :data:`~detector.schema.FLAG_REASONS` (zeros
        included), and ``rows_read == stats.calls.sum() + sum(dropped.values())``.

    Raises
    ------
    InputError
        A file is not an ACS export (identity columns missing, not a data file, empty,
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

    out = _with_inputs(files, threads, memory_limit, run, drift)
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


def _with_inputs(
    files: list[_File],
    threads: int | None,
    memory_limit: str | None,
    run: Callable[[duckdb.DuckDBPyConnection, list[str], list[str] | None], _T],
    drift: Drift | None = None,
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
                parts, bounds = _parquet_part(con, by_fmt["parquet"], drift)
            if "json_array" in by_fmt:
                parts += _json_array_part(con, by_fmt["json_array"], drift)
            try:
                try:
                    text = _text_parts(by_fmt, parallel=True, garbage=garbage, drift=drift)
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
                    text = _text_parts(by_fmt, parallel=False, garbage=garbage, drift=drift)
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
