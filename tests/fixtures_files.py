"""Write call client operation rows to real files in every format the file source reads.

Rows are dicts with Log Analytics column names; values are what an export would carry
(``str`` for text and ISO timestamps, ``int`` for numbers, a ``str`` for a string-typed
number, ``None`` for empty). Used by tests/test_files*.py and tests/test_aggregate*.py.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from detector import schema

FORMATS = ("parquet", "jsonl", "csv", "diagnostic")
COLUMNS = list(schema.LOG_COLUMNS)


def _parquet_type(values: list[Any], column: str) -> pa.DataType:
    present = [v for v in values if v is not None]
    if schema.LOG_COLUMNS[column] == "datetime":
        try:
            for v in present:
                datetime.fromisoformat(str(v).replace("Z", "+00:00"))
            return pa.timestamp("us", tz="UTC")
        except ValueError:
            return pa.string()
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.int64()
    return pa.string()


def write_rows(rows: Sequence[dict[str, Any]], path: Path, fmt: str) -> Path:
    """Write ``rows`` to ``path`` in ``fmt`` (parquet, jsonl, csv, diagnostic); return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    full = [{c: r.get(c) for c in COLUMNS} for r in rows]
    if fmt == "parquet":
        arrays = {}
        for c in COLUMNS:
            values = [r[c] for r in full]
            typ = _parquet_type(values, c)
            if pa.types.is_timestamp(typ):
                values = [
                    None if v is None else datetime.fromisoformat(str(v).replace("Z", "+00:00"))
                    for v in values
                ]
            elif typ == pa.string():
                values = [None if v is None else str(v) for v in values]
            arrays[c] = pa.array(values, type=typ)
        pq.write_table(pa.table(arrays), path)
    elif fmt == "jsonl":
        with path.open("w", encoding="utf-8") as fh:
            for r in full:
                fh.write(json.dumps(r) + "\n")
    elif fmt == "csv":
        with path.open("w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(COLUMNS)
            for r in full:
                w.writerow(["" if r[c] is None else r[c] for c in COLUMNS])
    elif fmt == "diagnostic":
        with path.open("w", encoding="utf-8") as fh:
            for r in full:
                props = {k: v for k, v in r.items() if k != "TimeGenerated"}
                rec = {
                    "time": r["TimeGenerated"],
                    "resourceId": "/SUBSCRIPTIONS/X/RESOURCEGROUPS/RG/PROVIDERS/"
                    "MICROSOFT.COMMUNICATION/COMMUNICATIONSERVICES/ACS",
                    "operationName": "CallClientOperations",
                    "category": "CallClientOperations",
                    "properties": props,
                }
                fh.write(json.dumps(rec) + "\n")
    else:
        raise ValueError(fmt)
    return path


def file_name(fmt: str, stem: str = "operations") -> str:
    """A file name the source recognises for ``fmt``."""
    if fmt == "diagnostic":
        return f"{stem}/y=2026/m=11/d=02/h=10/m=00/PT1H.json"
    return f"{stem}.{fmt}"


def row(
    op: str | None = "Join",
    opid: str | None = "op-1",
    cct: str | None = "2026-11-02T10:01:00Z",
    tg: str | None = "2026-11-02T10:20:00Z",
    rt: str | None = "Succeeded",
    dur: int | str | None = 1000,
    sdk: str | None = "1.30.1.0_stable",
) -> dict[str, Any]:
    """One row with sensible defaults; override what a case is about (any other column
    with ``row(...) | {"ResultSignature": "200"}``)."""
    return {
        "TenantId": "t",
        "TimeGenerated": tg,
        "CallClientTimeStamp": cct,
        "CallId": "call-1",
        "ClientInstanceId": "ci-1",
        "DurationMs": dur,
        "EndpointId": "ep-1",
        "OperationId": opid,
        "OperationName": op,
        "OperationPayload": '{"SdkPlatform":"Web"}',
        "OperationType": "client-api-request",
        "ParticipantId": "p-1",
        "ResultSignature": 200,
        "ResultType": rt,
        "SdkVersion": sdk,
        "UserAgent": "ua",
        "SourceSystem": "Azure",
        "Type": "ACSCallClientOperations",
        "_ResourceId": "/subscriptions/x",
    }
