"""Writers: simulated tables -> Parquet, JSON lines, CSV, or the Diagnostic Settings layout.

Each writer takes the Arrow tables of :func:`detector.simulate.frame.rows_to_table` one part at
a time (bounded memory) and appends them to its output. All four write the same rows and
values; only the encoding differs:

``parquet``
    ``operations.parquet``: typed columns (``timestamp[us, UTC]``, ``int64`` ``DurationMs``,
    ``int32`` ``ResultSignature``, ``OperationPayload`` as JSON text), zstd, row groups of
    >= 64k rows. A typed column cannot hold the string-number quirk, so it is absent here.
``jsonl``
    ``operations.jsonl``: one JSON object per line, as the Log Analytics API shapes values:
    ISO-8601 ``...T..:..:..fffZ`` timestamps, numbers as numbers except the string-number
    quirk rows (``"DurationMs":"577","ResultSignature":"200"``), ``null`` for empty numbers.
``csv``
    ``operations.csv``: header with the exact column names, strings quoted, ISO timestamps,
    empty fields for nulls.
``diagnostic``
    ``insights-logs-callclientoperations/resourceId=/SUBSCRIPTIONS/.../y=YYYY/m=MM/d=DD/h=HH/
    m=00/PT1H.json``: one JSON record per line, in the blob of its receive hour
    (``TimeGenerated``), with top-level ``time`` (= TimeGenerated), ``resourceId``,
    ``operationName`` and ``category`` (both ``CallClientOperations``) and the table's fields,
    PascalCase, under ``properties`` (as in Microsoft's only sample; ``_ResourceId`` is the
    top-level ``resourceId`` there).

Side effects: creates and appends files under the output directory.
"""

from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Final, Protocol, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from .frame import ARROW_SCHEMA, PRIVATE_COLUMNS
from .strings import iso_ms

__all__ = ["FORMATS", "Writer", "make_writer"]

FORMATS: Final = ("parquet", "jsonl", "csv", "diagnostic")
DIAGNOSTIC_CONTAINER: Final = "insights-logs-callclientoperations"
_ROW_GROUP = 65_536
# Columns whose text is not a GUID or fixed shape and so must be JSON-escaped.
_ESCAPE = {"OperationName", "OperationPayload", "ResultType", "SdkVersion", "UserAgent"}


class Writer(Protocol):
    """Appends simulated tables to one output; ``close`` returns the files written."""

    def write(self, table: pa.Table) -> None: ...

    def close(self) -> list[Path]: ...


def make_writer(fmt: str, out_dir: Path, resource_id: str) -> Writer:
    """Writer for ``fmt`` (one of :data:`FORMATS`) into ``out_dir``.

    Raises
    ------
    ValueError
        Unknown format.
    """
    if fmt == "parquet":
        return _ParquetWriter(out_dir / "operations.parquet")
    if fmt == "jsonl":
        return _JsonlWriter(out_dir / "operations.jsonl")
    if fmt == "csv":
        return _CsvWriter(out_dir / "operations.csv")
    if fmt == "diagnostic":
        return _DiagnosticWriter(out_dir, resource_id)
    raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")


def _public(table: pa.Table) -> pa.Table:
    return table.drop_columns([c for c in PRIVATE_COLUMNS if c in table.column_names])


class _ParquetWriter:
    """Row groups are encoded on one background thread (Arrow releases the GIL), overlapping
    the generation of the next part; at most one group is in flight, so memory stays bounded."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Random OperationIds do not compress and rarely repeat: no dictionary for them.
        dictionary = [c for c in ARROW_SCHEMA.names if c != "OperationId"]
        self._writer = pq.ParquetWriter(
            path,
            ARROW_SCHEMA,
            compression="zstd",
            compression_level=1,
            use_dictionary=dictionary,
        )
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._inflight: Future[None] | None = None
        self._pending: list[pa.Table] = []
        self._rows = 0

    def write(self, table: pa.Table) -> None:
        self._pending.append(_public(table))
        self._rows += table.num_rows
        if self._rows >= _ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            merged = pa.concat_tables(self._pending).combine_chunks()
            self._wait()
            self._inflight = self._pool.submit(
                self._writer.write_table, merged, row_group_size=max(merged.num_rows, 1)
            )
        self._pending, self._rows = [], 0

    def _wait(self) -> None:
        if self._inflight is not None:
            self._inflight.result()  # re-raises a write error here
            self._inflight = None

    def close(self) -> list[Path]:
        try:
            self._flush()
            self._wait()
        finally:
            self._pool.shutdown(wait=True)
            self._writer.close()
        return [self.path]


def _epoch_ms(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    ints = arr.cast(pa.int64())
    # Nulls get a nearby valid value (their text is replaced by null afterwards), which keeps
    # the formatter's hour span short.
    fill = pc.min(ints).as_py() or 0
    ms = np.floor_divide(ints.fill_null(fill).to_numpy(), 1000)
    return ms, ints.is_null()


#: A literal shared by every row, or one text per row.
Fragment: TypeAlias = "str | pa.Array"
# Columns a simulated table holds constant; written as literals when they are.
_MAYBE_CONSTANT = {"TenantId", "OperationType", "SourceSystem", "Type", "_ResourceId"}


def _json_values(table: pa.Table) -> dict[str, list[Fragment]]:
    """The JSON text of each column's values as fragments to concatenate.

    Strings are quoted and escaped, nulls are ``null``, timestamps ISO-8601 with ``Z``,
    integers are numbers except on ``_string_numbers`` rows, where they are quoted.
    """
    out: dict[str, list[Fragment]] = {}
    strnum = table.column("_string_numbers").combine_chunks()
    for name in ARROW_SCHEMA.names:
        col = table.column(name).combine_chunks()
        t = ARROW_SCHEMA.field(name).type
        if pa.types.is_timestamp(t):
            ms, null = _epoch_ms(col)
            text = iso_ms(ms, quoted=True)
            out[name] = [pc.if_else(null, "null", text) if col.null_count else text]
        elif pa.types.is_integer(t):
            digits = col.cast(pa.string())
            quoted = pc.binary_join_element_wise('"', digits, '"', "")
            out[name] = [pc.if_else(strnum, quoted, digits).fill_null("null")]
        elif (
            name in _MAYBE_CONSTANT
            and len(col)
            and not col.null_count
            and (mm := pc.min_max(col))["min"] == mm["max"]
        ):
            out[name] = [json.dumps(col[0].as_py())]
        else:
            if name in _ESCAPE:
                col = pc.replace_substring(col, "\\", "\\\\")
                col = pc.replace_substring(col, '"', '\\"')
            out[name] = ['"', col, '"']
    return out


def _lines(parts: list[Fragment]) -> pa.Array:
    """Concatenate fragments row-wise in one Arrow pass (adjacent literals merged first)."""
    merged: list[Fragment] = []
    for part in parts:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        else:
            merged.append(part)
    return pc.binary_join_element_wise(*merged, "")


def _object(fields: dict[str, list[Fragment]]) -> list[Fragment]:
    """Fragments of a JSON object with these fields, in order."""
    parts: list[Fragment] = ["{"]
    for i, (name, value) in enumerate(fields.items()):
        parts.append(("," if i else "") + json.dumps(name) + ":")
        parts.extend(value)
    parts.append("}")
    return parts


def _write_strings(fh: object, arr: pa.Array) -> None:
    # The lines already end in "\n": write the Arrow data buffer as is, no per-row Python.
    arr = arr.cast(pa.large_string()) if arr.type != pa.large_string() else arr
    if len(arr) == 0:
        return
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[
        arr.offset : arr.offset + len(arr) + 1
    ]
    data = arr.buffers()[2]
    fh.write(memoryview(data)[int(offsets[0]) : int(offsets[-1])])  # type: ignore[attr-defined]


class _JsonlWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = path.open("wb")

    def write(self, table: pa.Table) -> None:
        _write_strings(self._fh, _lines([*_object(_json_values(table)), "\n"]))

    def close(self) -> list[Path]:
        self._fh.close()
        return [self.path]


class _CsvWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = path.open("wb")
        self._fh.write((",".join(ARROW_SCHEMA.names) + "\n").encode())
        schema = pa.schema(
            [
                (f.name, pa.string() if pa.types.is_timestamp(f.type) else f.type)
                for f in ARROW_SCHEMA
            ]
        )
        self._writer = pcsv.CSVWriter(
            self._fh, schema, write_options=pcsv.WriteOptions(include_header=False)
        )
        self._schema = schema

    def write(self, table: pa.Table) -> None:
        cols = []
        for f in ARROW_SCHEMA:
            col = table.column(f.name).combine_chunks()
            if pa.types.is_timestamp(f.type):
                ms, null = _epoch_ms(col)
                col = pc.if_else(null, pa.scalar(None, pa.string()), iso_ms(ms))
            cols.append(col)
        self._writer.write_table(pa.table(cols, schema=self._schema))

    def close(self) -> list[Path]:
        self._writer.close()
        self._fh.close()
        return [self.path]


class _DiagnosticWriter:
    def __init__(self, out_dir: Path, resource_id: str) -> None:
        self.root = out_dir / DIAGNOSTIC_CONTAINER / f"resourceId={resource_id}"
        self.resource_id = resource_id
        self._files: set[Path] = set()

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        values = _json_values(table)
        props = {k: v for k, v in values.items() if k != "_ResourceId"}
        record = {
            "time": values["TimeGenerated"],
            "resourceId": [json.dumps(self.resource_id)],
            "operationName": ['"CallClientOperations"'],
            "category": ['"CallClientOperations"'],
        }
        lines = _lines([*_object(record)[:-1], ',"properties":', *_object(props), "}\n"])
        ms, _ = _epoch_ms(table.column("TimeGenerated"))
        hours = ms // 3_600_000
        order = np.argsort(hours, kind="stable")
        lines = lines.take(pa.array(order))
        hours = hours[order]
        bounds = np.flatnonzero(np.diff(hours)) + 1
        starts = np.concatenate([[0], bounds])
        ends = np.concatenate([bounds, [hours.size]])
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            h = np.datetime64(int(hours[a]), "h").astype(object)
            path = self.root / (
                f"y={h.year:04d}/m={h.month:02d}/d={h.day:02d}/h={h.hour:02d}/m=00/PT1H.json"
            )
            if path not in self._files:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._files.add(path)
            with path.open("ab") as fh:
                _write_strings(fh, lines.slice(a, b - a))

    def close(self) -> list[Path]:
        return sorted(self._files)
