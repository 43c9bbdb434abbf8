"""A local HTTPS emulator of the Log Analytics query API, for the real ``LogsQueryClient``.

It listens on 127.0.0.1 with a ``trustme`` certificate and answers ``POST
/v1/workspaces/{id}/query`` and ``POST /v1/{resourceId}/query`` in the service's wire format
(reference/libraries.md §1: tables with typed columns, ``dynamic`` cells as JSON text, partial
answers as 200 + ``error`` with the cause in ``details[].innererror``, OneAPI error bodies).

Answers are *computed* from a simulated table it holds (:class:`Emulator` ``rows``), so a
scheduled run, a backfill and a rerun go end to end through it. It cannot run KQL; instead it
recognises the three query shapes of :mod:`detector.source.kql` by their first line, reads
their parameters (window, scan span, bucket, arrival, look-back, step, drill-down targets) from
the text itself, applies the request's ``timespan`` on ``TimeGenerated`` as the service does,
and evaluates the documented semantics with pandas and the contract functions of
:mod:`detector.schema`. A text with a wrong window or bucket therefore gets a wrong answer.
Whether the KQL itself is valid is checked separately by Microsoft's language service.

Service limits are enforced like the real service: an answer over ``max_rows`` rows or
``max_bytes`` bytes comes back *partial* (truncated rows + error).

Faults are programmable, first in first out: :meth:`Emulator.push` takes ``Fault`` records
(status with or without ``Retry-After``, partial, slow, connection drop).
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import trustme
from azure.core.credentials import AccessToken

from detector import schema
from detector.source import kql

TOKEN = "emulator-token"


class FakeCredential:
    """A ``TokenCredential`` handing out a fixed token; counts calls and scopes."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.calls = 0
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls += 1
        self.scopes.extend(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)


@dataclass
class Fault:
    """One programmed misbehaviour, used for the next request.

    ``kind``: ``status`` (answer ``status`` with an error body and ``headers``), ``partial``
    (compute the answer, return half of it with a partial error), ``slow`` (sleep ``delay`` s
    first, then answer normally), ``drop`` (close the connection without answering).
    """

    kind: str
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    code: str = ""


@dataclass
class Request:
    """What the emulator received (the token is not kept, only whether it matched)."""

    path: str
    query: str
    timespan: str | None
    prefer: str
    authorized: bool
    status: int = 0
    rows: int = 0
    bytes: int = 0


def _error_body(code: str, message: str, inner: str | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if inner:
        err["innererror"] = {"code": inner, "message": message}
    return {"error": err}


def _semantic_error(message: str) -> dict[str, Any]:
    """Log Analytics' body for a query naming what the table lacks (HTTP 400)."""
    inner = {"code": "SEM0100", "message": message}
    semantic = {
        "code": "SemanticError",
        "message": "A semantic error occurred.",
        "innererror": inner,
    }
    return {
        "error": {
            "message": "The request had some invalid properties",
            "code": "BadArgumentError",
            "correlationId": "00000000-0000-0000-0000-000000000000",
            "innererror": semantic,
        }
    }


_STATUS_CODES = {
    400: "BadArgumentError",
    401: "AuthorizationRequiredError",
    403: "InsufficientAccessError",
    404: "WorkspaceNotFoundError",
    429: "ThrottledError",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailableError",
    504: "GatewayTimeout",
}


# --------------------------------------------------------------------------------------------
# The simulated table
# --------------------------------------------------------------------------------------------


def load_rows(rows: pd.DataFrame, *, ingest_lag: timedelta = timedelta(seconds=30)) -> pd.DataFrame:
    """Type a simulated export as Log Analytics would store it.

    Datetimes become UTC (unparseable -> NaT), ``DurationMs``/``ResultSignature`` numbers
    (a non-numeric string -> null, as a typed ``long``/``int`` column holds), ``OperationPayload``
    the parsed JSON when it parses, else the raw string (a ``dynamic`` column keeps invalid JSON
    as a string). ``_IngestionTime`` (what ``ingestion_time()`` returns) is kept if present,
    else ``TimeGenerated + ingest_lag``.
    """
    df = rows.copy()
    for col in schema.LOG_COLUMNS:
        if col not in df.columns:
            df[col] = None
    for col in ("TimeGenerated", "CallClientTimeStamp"):
        df[col] = pd.to_datetime(df[col], utc=True, errors="coerce", format="mixed")
    for col in ("DurationMs", "ResultSignature"):
        if not pd.api.types.is_numeric_dtype(df[col]):
            df[col] = pd.to_numeric(df[col].astype("object").map(_strip), errors="coerce")
        df[col] = df[col].astype("float64")
    df["DurationMs"] = df["DurationMs"].where(np.isfinite(df["DurationMs"]))
    # map each distinct value once (large simulated tables repeat payloads and names a lot)
    payloads = df["OperationPayload"].astype("object")
    uniq = {v: _as_dynamic(v) for v in pd.unique(payloads.dropna())}
    df["OperationPayload"] = payloads.map(uniq).astype("object")
    if "_ResourceId" not in df.columns:
        df["_ResourceId"] = ""
    for col in (
        "OperationName",
        "OperationId",
        "ResultType",
        "SdkVersion",
        "CallId",
        "_ResourceId",
    ):
        df[col] = df[col].astype("object").where(df[col].notna(), "").astype(str)
    if "_IngestionTime" in df.columns:
        df["_IngestionTime"] = pd.to_datetime(df["_IngestionTime"], utc=True)
    else:
        df["_IngestionTime"] = df["TimeGenerated"] + pd.Timedelta(ingest_lag)
    return df.reset_index(drop=True)


def _strip(v: Any) -> Any:
    return v.strip() if isinstance(v, str) else v


def _as_dynamic(v: Any) -> Any:
    if v is None or (isinstance(v, float) and v != v):
        return None
    if isinstance(v, str):
        if not v.strip():
            return None
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


# --------------------------------------------------------------------------------------------
# Reading parameters back from a query text
# --------------------------------------------------------------------------------------------


def _let_datetime(text: str, name: str) -> pd.Timestamp:
    m = re.search(rf"let {name} = datetime\(([^)]+)\);", text)
    if not m:
        raise ValueError(f"query has no {name}")
    return pd.Timestamp(m.group(1)).tz_convert("UTC")


def _let_timespan(text: str, name: str) -> pd.Timedelta:
    m = re.search(rf"let {name} = (\d+)(s|ms);", text)
    if not m:
        raise ValueError(f"query has no {name}")
    return pd.Timedelta(int(m.group(1)), unit="s" if m.group(2) == "s" else "ms")


def _parse_timespan(value: str | None) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    if not value:
        return None
    a, b = value.split("/")
    start = pd.Timestamp(a).tz_convert("UTC")
    if b.startswith("P"):
        import isodate

        return start, start + pd.Timedelta(isodate.parse_duration(b))
    return start, pd.Timestamp(b).tz_convert("UTC")


# --------------------------------------------------------------------------------------------
# Reference semantics (what the KQL computes), with the contract functions
# --------------------------------------------------------------------------------------------


def _drop_reason(df: pd.DataFrame) -> pd.Series:
    op = df["OperationName"].str.strip()
    opid = df["OperationId"].str.strip()
    reason = pd.Series("", index=df.index, dtype=object)
    cct = df["CallClientTimeStamp"]
    out_of_range = (cct < pd.Timestamp(schema.TIMESTAMP_MIN)) | (
        cct >= pd.Timestamp(schema.TIMESTAMP_MAX)
    )
    reason = reason.mask(cct.isna() | out_of_range, "invalid_timestamp")
    reason = reason.mask(opid == "", "missing_operation_id")
    reason = reason.mask(op.str.lower() == schema.PSEUDO_OPERATION.lower(), "pseudo_operation")
    reason = reason.mask(op == "", "missing_operation_name")
    return reason


def _map_unique(col: pd.Series, fn: Any) -> pd.Series:
    # the contract functions, applied once per distinct value
    return col.map({v: fn(v) for v in pd.unique(col)})


def _dedup(valid: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    ordered = valid.sort_values("TimeGenerated", ascending=False, kind="stable")
    return ordered.drop_duplicates(subset=by, keep="first")


def _payload_bad(v: Any) -> bool:
    if not isinstance(v, str) or not v.strip():
        return False
    try:
        return isinstance(json.loads(v), str)
    except ValueError:
        return True


def aggregate_answer(df: pd.DataFrame, text: str, span: tuple | None) -> list[list[Any]]:
    """Rows of :data:`kql.AGG_RESULT_COLUMNS` for an ``aggregate`` text."""
    start, end = _let_datetime(text, "_Start"), _let_datetime(text, "_End")
    scan_from, scan_to = _let_datetime(text, "_ScanFrom"), _let_datetime(text, "_ScanTo")
    lookback = _let_timespan(text, "_Lookback")
    cluster_lookback = _let_timespan(text, "_ClusterLookback")
    bucket = _let_timespan(text, "_Bucket")
    arrival = "_IngestionTime" if "_Arrival = ingestion_time()" in text else "TimeGenerated"
    dedup_prior = "join kind=leftanti _Prior" in text

    tg = df["TimeGenerated"]
    in_scan = (tg >= scan_from) & (tg < scan_to)
    if span is not None:  # the service applies the request timespan on top of the query
        in_scan &= (tg >= span[0]) & (tg < span[1])
    # only rows that can matter (window or look-back) get the per-row string work
    arr_all = df[arrival]
    scan = df[in_scan & (arr_all >= start - lookback) & (arr_all < end)]
    scan = scan.assign(_Drop=_drop_reason(scan))
    arr = scan[arrival]
    window = scan[(arr >= start) & (arr < end)]
    valid = window[window["_Drop"] == ""]
    kept = _dedup(valid, ["OperationId", "CallClientTimeStamp"])
    if dedup_prior and lookback > pd.Timedelta(0) and len(kept):
        prior = scan[(arr >= start - lookback) & (arr < start) & (scan["_Drop"] == "")]
        seen = pd.MultiIndex.from_frame(prior[["OperationId", "CallClientTimeStamp"]])
        key = pd.MultiIndex.from_frame(kept[["OperationId", "CallClientTimeStamp"]])
        kept = kept[~key.isin(seen)]

    counts = {"rows_read": len(window)}
    for reason in schema.DROP_REASONS:
        counts[reason] = int((window["_Drop"] == reason).sum())
    counts["duplicate"] = len(valid) - len(kept)

    k = kept.copy()
    k["_Op"] = _map_unique(k["OperationName"], schema.canonical_operation)
    k["_Class"] = _map_unique(k["ResultType"], schema.classify_result)
    k["_Point"] = _map_unique(k["_Op"], schema.is_point_event).astype(bool)
    dur = k["DurationMs"]
    k["_Usable"] = ~k["_Point"] & dur.notna() & (dur >= 0)
    ld = np.log(np.maximum(dur.fillna(1.0).to_numpy(dtype="float64"), 1.0))
    k["_Ld"] = np.where(k["_Usable"], ld, 0.0)
    k["_Bin"] = np.where(
        k["_Usable"], schema.duration_bin(np.maximum(dur.fillna(1.0).to_numpy(), 1.0)), -1
    )
    k["_BucketStart"] = k["CallClientTimeStamp"].dt.floor(pd.Timedelta(bucket))
    counts["invalid_duration"] = int((~k["_Point"] & ~(dur.notna() & (dur >= 0))).sum())
    texts = k["OperationPayload"][k["OperationPayload"].map(lambda v: isinstance(v, str))]
    counts["invalid_payload_json"] = int(texts.map(_payload_bad).sum())
    counts["noncanonical_operation_case"] = int((k["_Op"] != k["OperationName"]).sum())

    keys = ["_Op", "SdkVersion", "_BucketStart"]
    k["_F"] = (k["_Class"] == "failure").astype("int64")
    k["_E"] = (k["_Class"] == "expected_error").astype("int64")
    k["_U"] = k["_Usable"].astype("int64")
    k["_Ld2"] = k["_Ld"] ** 2
    g = k.groupby(keys, sort=True).agg(
        n=("_F", "size"),
        f=("_F", "sum"),
        e=("_E", "sum"),
        u=("_U", "sum"),
        s1=("_Ld", "sum"),
        s2=("_Ld2", "sum"),
    )
    fails = k[k["_Class"] == "failure"]
    call = fails["CallId"].where(fails["CallId"].fillna("") != "", fails["OperationId"])
    rows = fails.assign(_Call=call)
    # Each failure weighted by its call's failures in the partition / operation in the read,
    # plus twice those that arrived in the cluster look-back before it.
    pr = df[in_scan & (arr_all >= start - cluster_lookback) & (arr_all < start)]
    pr = pr[_drop_reason(pr) == ""]
    pr = pr.assign(_Op=_map_unique(pr["OperationName"], schema.canonical_operation))
    pr = pr[_map_unique(pr["ResultType"], schema.classify_result) == "failure"]
    pr = pr.assign(_Call=pr["CallId"].where(pr["CallId"].fillna("") != "", pr["OperationId"]))
    k0 = pr.groupby(["_Op", "SdkVersion", "_Call"]).size()
    k0_op = pr.groupby(["_Op", "_Call"]).size()
    by_ver = pd.MultiIndex.from_frame(rows[["_Op", "SdkVersion", "_Call"]])
    by_op = pd.MultiIndex.from_frame(rows[["_Op", "_Call"]])
    rows = rows.assign(
        _S=rows.groupby(["_Op", "SdkVersion", "_Call"])["_Call"].transform("size")
        + 2 * k0.reindex(by_ver, fill_value=0).to_numpy(),
        _SOp=rows.groupby(["_Op", "_Call"])["_Call"].transform("size")
        + 2 * k0_op.reindex(by_op, fill_value=0).to_numpy(),
    )
    cluster = rows.groupby(keys, sort=True)["_S"].sum()
    cluster_op = rows.groupby(keys, sort=True)["_SOp"].sum()
    pairs = rows[[*keys, "_Call"]].drop_duplicates()
    versions = pairs.groupby(["_Op", "_BucketStart", "_Call"])["SdkVersion"].transform("size")
    pairs = pairs.assign(_W=1.0 / versions)
    failed_calls = pairs.groupby(keys, sort=True).size()
    failed_calls_op = pairs.groupby(keys, sort=True)["_W"].sum()
    hists: dict[tuple, dict[str, int]] = {}
    for (op, sdk, bstart, b), n in k[k["_Usable"]].groupby([*keys, "_Bin"]).size().items():
        hists.setdefault((op, sdk, bstart), {})[str(int(b))] = int(n)
    out: list[list[Any]] = []
    for key, r in zip(g.index, g.itertuples(index=False), strict=True):
        out.append(
            [
                "bucket",
                *key,
                int(r.n),
                int(r.f),
                int(failed_calls.get(key, 0)),
                float(failed_calls_op.get(key, 0.0)),
                float(cluster.get(key, 0.0)),
                float(cluster_op.get(key, 0.0)),
                int(r.e),
                int(r.u),
                float(r.s1),
                float(r.s2),
                json.dumps(hists.get(key, {})),
                None,
            ]
        )
    out.append(
        [
            "counts",
            "",
            "",
            *([None] * (len(kql.AGG_RESULT_COLUMNS) - 4)),
            json.dumps(counts),
        ]
    )
    return out


def _resource_of(df: pd.DataFrame) -> pd.Series:
    """Each row's resource as ``kql.RESOURCE_EXPR`` computes it (trimmed, lower case)."""
    return df["_ResourceId"].str.strip().str.lower()


def scoped(df: pd.DataFrame, text: str) -> pd.DataFrame:
    """The rows a text reads: one resource's when it carries ``kql.resource_filter``."""
    m = re.search(
        r'\| where tolower\(trim\(@"\\s\+", tostring\(_ResourceId\)\)\) == '
        r'(?:"([^"]*)"|base64_decode_tostring\("([^"]*)"\))',
        text,
    )
    if m is None:
        return df
    value = m.group(1) if m.group(1) is not None else base64.b64decode(m.group(2)).decode()
    return df[_resource_of(df) == value]


def resources_answer(df: pd.DataFrame, text: str, span: tuple | None) -> list[list[Any]]:
    """Rows of :data:`kql.RESOURCES_RESULT_COLUMNS` for a ``resources`` text."""
    start, end = _let_datetime(text, "_Start"), _let_datetime(text, "_End")
    scan_from, scan_to = _let_datetime(text, "_ScanFrom"), _let_datetime(text, "_ScanTo")
    arrival = "_IngestionTime" if "_Arrival = ingestion_time()" in text else "TimeGenerated"
    tg, arr = df["TimeGenerated"], df[arrival]
    keep = (tg >= scan_from) & (tg < scan_to) & (arr >= start) & (arr < end)
    if span is not None:
        keep &= (tg >= span[0]) & (tg < span[1])
    counts = _resource_of(df[keep]).value_counts()
    return [[str(k), int(n)] for k, n in counts.head(kql.MAX_RESOURCES).items()]


def plan_answer(df: pd.DataFrame, text: str, span: tuple | None) -> list[list[Any]]:
    """Rows of :data:`kql.PLAN_RESULT_COLUMNS` for a ``plan`` text (exact distinct counts)."""
    start, end = _let_datetime(text, "_Start"), _let_datetime(text, "_End")
    scan_from, scan_to = _let_datetime(text, "_ScanFrom"), _let_datetime(text, "_ScanTo")
    bucket, step = _let_timespan(text, "_Bucket"), _let_timespan(text, "_Step")
    arrival = "_IngestionTime" if "_Arrival = ingestion_time()" in text else "TimeGenerated"
    tg = df["TimeGenerated"]
    w = df[(tg >= scan_from) & (tg < scan_to)]
    if span is not None:
        w = w[(w["TimeGenerated"] >= span[0]) & (w["TimeGenerated"] < span[1])]
    w = w[(w[arrival] >= start) & (w[arrival] < end)]
    if not len(w):
        return []
    bkt = w["CallClientTimeStamp"].dt.floor(bucket).astype(str)
    key = w["OperationName"].str.strip().str.lower() + "|" + w["SdkVersion"] + "|" + bkt
    bins = schema.duration_bin(np.maximum(w["DurationMs"].fillna(1.0).to_numpy(), 1.0))
    keybin = key + "|" + pd.Series(bins, index=w.index).astype(str)
    steps = start + ((w[arrival] - start) // step) * step
    frame = pd.DataFrame({"Step": steps, "k": key, "kb": keybin})
    out = []
    for s, g in frame.groupby("Step", sort=True):
        out.append([s, len(g), g["k"].nunique(), g["kb"].nunique()])
    return out


_TARGET_RE = re.compile(
    r'"([A-Za-z0-9+/=]*)", "([A-Za-z0-9+/=]*)", "([A-Za-z0-9+/=]*)", (true|false), '
    r'"(\w+)", datetime\(([^)]+)\), datetime\(([^)]+)\),'
)


def _subcode(payload: Any) -> float | None:
    if isinstance(payload, dict):
        for key in ("SubCode", "subCode"):
            if payload.get(key) not in (None, ""):
                try:
                    return int(float(payload[key]))
                except (TypeError, ValueError):
                    return None
    return None


def drill_answer(df: pd.DataFrame, text: str, span: tuple | None) -> list[list[Any]]:
    """Rows of :data:`kql.DRILL_RESULT_COLUMNS` for a ``drilldown`` text."""
    scan_from, scan_to = _let_datetime(text, "_ScanFrom"), _let_datetime(text, "_ScanTo")
    top = int(re.search(r"where _Rank <= (\d+)\n    \| extend Kind = \"code\"", text).group(1))
    calls_n = int(re.search(r"where _Rank <= (\d+)\n    \| extend Kind = \"call\"", text).group(1))
    tg = df["TimeGenerated"]
    base = df[(tg >= scan_from) & (tg < scan_to)]
    if span is not None:
        base = base[(base["TimeGenerated"] >= span[0]) & (base["TimeGenerated"] < span[1])]
    base = base[base["OperationId"].str.strip() != ""]
    base = base.assign(_Op=_map_unique(base["OperationName"], schema.canonical_operation))
    out: list[list[Any]] = []

    def dec(s: str) -> str:
        return base64.b64decode(s).decode("utf-8")

    for m in _TARGET_RE.finditer(text):
        fp, op, sdk = dec(m.group(1)), dec(m.group(2)), dec(m.group(3))
        all_sdk, metric = m.group(4) == "true", m.group(5)
        lo, hi = pd.Timestamp(m.group(6)), pd.Timestamp(m.group(7))
        cct = base["CallClientTimeStamp"]
        hits = base[(base["_Op"] == op) & (cct >= lo) & (cct < hi)]
        if not all_sdk:
            hits = hits[hits["SdkVersion"] == sdk]
        hits = _dedup(hits, ["OperationId", "CallClientTimeStamp"])
        cls = hits["ResultType"].map(schema.classify_result)
        fails = hits[cls == "failure"]
        codes = (
            fails.assign(
                _Sig=fails["ResultSignature"],
                _Sub=fails["OperationPayload"].map(_subcode),
            )
            .groupby(["_Sig", "_Sub", "ResultType"], dropna=False)
            .size()
            .reset_index(name="n")
        )
        codes = codes.sort_values(["n", "_Sig"], ascending=[False, True]).head(top)
        for r in codes.itertuples():
            out.append(["code", fp, _int(r._1), _int(r._2), r.ResultType, "", int(r.n), None])
        named = hits[hits["CallId"] != ""].assign(_F=(cls == "failure").astype(int))
        per_call = named.groupby("CallId").agg(
            f=("_F", "sum"), d=("DurationMs", "max"), n=("_F", "size")
        )
        score = {"failure_rate": per_call["f"], "duration": per_call["d"]}.get(
            metric, per_call["n"]
        )
        per_call = per_call.assign(s=score.astype(float)).query("s > 0").reset_index()
        per_call = per_call.sort_values(["s", "CallId"], ascending=[False, True]).head(calls_n)
        for r in per_call.itertuples():
            out.append(["call", fp, None, None, "", r.CallId, int(r.n), float(r.s)])
    return out


def _int(v: Any) -> int | None:
    return None if v is None or (isinstance(v, float) and v != v) else int(v)


# --------------------------------------------------------------------------------------------
# Wire format
# --------------------------------------------------------------------------------------------


def _cell(value: Any, kind: str) -> Any:
    if value is None or (isinstance(value, float) and value != value) or value is pd.NaT:
        return None
    if kind == "datetime":
        ts = pd.Timestamp(value).tz_convert("UTC")
        return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond:06d}" + "Z"
    if kind in ("long", "int"):
        return int(value)
    if kind == "real":
        return float(value)
    return value


def table_json(columns: dict[str, str], rows: list[list[Any]]) -> dict[str, Any]:
    """One ``PrimaryResult`` table in the service's JSON shape."""
    kinds = list(columns.values())
    return {
        "name": "PrimaryResult",
        "columns": [{"name": n, "type": t} for n, t in columns.items()],
        "rows": [[_cell(v, k) for v, k in zip(row, kinds, strict=True)] for row in rows],
    }


def partial_body(table: dict[str, Any], message: str) -> dict[str, Any]:
    """A 200 partial answer: the rows that completed plus the error (libraries.md §1 shape)."""
    return {
        "tables": [table],
        "error": {
            "code": "PartialError",
            "message": "There were some errors when processing your query.",
            "details": [
                {
                    "code": "EngineError",
                    "message": "Something went wrong processing your query on the server.",
                    "innererror": {
                        "code": "-2133196797",
                        "message": message,
                        "severity": 2,
                        "severityName": "Error",
                    },
                }
            ],
        },
    }


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


_CERT: tuple[trustme.CA, trustme.LeafCert] | None = None


def _certificate() -> tuple[trustme.CA, trustme.LeafCert]:
    # One CA and server certificate per process: key generation is the slow part of a start.
    global _CERT
    if _CERT is None:
        ca = trustme.CA()
        _CERT = (ca, ca.issue_cert("127.0.0.1"))
    return _CERT


class Emulator:
    """HTTPS Log Analytics query API on 127.0.0.1 answering from ``rows``.

    Parameters
    ----------
    rows
        A simulated ``ACSCallClientOperations`` export (typed by :func:`load_rows`).
    workspaces, resources
        Ids that exist (others get 404). A resource-scoped query reads the rows whose
        ``_ResourceId`` is that resource, as the service does.
    tables
        Workspace id -> its own rows (others hold ``rows``).
    max_rows, max_bytes
        Service limits per answer (default the real ones); over them the answer is partial.
    """

    def __init__(
        self,
        rows: pd.DataFrame | None = None,
        *,
        workspaces: tuple[str, ...] = ("ws-test",),
        resources: tuple[str, ...] = (),
        tables: dict[str, pd.DataFrame] | None = None,
        max_rows: int = 500_000,
        max_bytes: int = 100 * 2**20,
        ingest_lag: timedelta = timedelta(seconds=30),
        missing: tuple[str, ...] = (),
    ) -> None:
        # Names the workspace lacks: log columns (schema drift) or the table's own name (no
        # row ever arrived). A query naming one gets a SemanticError, as from Log Analytics.
        self.missing = missing
        self.df = load_rows(rows if rows is not None else pd.DataFrame(), ingest_lag=ingest_lag)
        # A workspace listed in ``tables`` holds those rows; every other one holds ``rows``.
        self.tables = {ws: load_rows(t, ingest_lag=ingest_lag) for ws, t in (tables or {}).items()}
        self.workspaces = set(workspaces) | set(self.tables)
        self.resources = {r.lower() for r in resources}
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.faults: deque[Fault] = deque()
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.ca_file: str = ""

    # -- control -----------------------------------------------------------------------------

    def push(self, *faults: Fault) -> None:
        """Program the next requests' faults (first in, first out)."""
        with self._lock:
            self.faults.extend(faults)

    def start(self, tmp_dir: Path) -> str:
        """Start serving; returns the endpoint ``https://127.0.0.1:PORT``."""
        ca, cert = _certificate()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        self.ca_file = str(Path(tmp_dir) / "emulator-ca.pem")
        ca.cert_pem.write_to_path(self.ca_file)
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                emulator._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- one request -------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        body = json.loads(raw or b"{}")
        auth = h.headers.get("Authorization", "")
        req = Request(
            path=h.path,
            query=body.get("query") or "",
            timespan=body.get("timespan"),
            prefer=h.headers.get("Prefer", ""),
            authorized=auth == f"Bearer {TOKEN}",
        )
        with self._lock:
            self.requests.append(req)
            fault = self.faults.popleft() if self.faults else None

        if fault is not None and fault.kind == "drop":
            h.close_connection = True
            h.connection.close()
            req.status = -1
            return
        if fault is not None and fault.kind == "slow":
            time.sleep(fault.delay)
        if fault is not None and fault.kind == "status":
            code = fault.code or _STATUS_CODES.get(fault.status, "Error")
            self._send(
                h, req, fault.status, _error_body(code, f"emulated {fault.status}"), fault.headers
            )
            return
        if not req.authorized:
            self._send(
                h,
                req,
                401,
                _error_body("AuthorizationRequiredError", "Valid authentication was not provided"),
            )
            return
        m_ws = re.fullmatch(r"/v1/workspaces/([^/]+)/query", h.path)
        m_res = re.fullmatch(r"/v1(/subscriptions/.+)/query", h.path)
        if not (
            (m_ws and m_ws.group(1) in self.workspaces)
            or (m_res and m_res.group(1).lower() in self.resources)
        ):
            self._send(h, req, 404, _error_body("WorkspaceNotFoundError", "not found"))
            return
        if m_ws:
            df = self.tables.get(m_ws.group(1), self.df)
        elif (_resource_of(self.df) != "").any():
            df = self.df[_resource_of(self.df) == m_res.group(1).lower()]
        else:  # a table written without resource ids: all of it is the resource's
            df = self.df
        if (unresolved := self._unresolved(req.query)) is not None:
            self._send(h, req, 400, _semantic_error(unresolved))
            return
        try:
            span = _parse_timespan(req.timespan)
            kind = kql.query_kind(req.query)
            df = scoped(df, req.query)
            if kind == "aggregate":
                columns, rows = kql.AGG_RESULT_COLUMNS, aggregate_answer(df, req.query, span)
            elif kind == "plan":
                columns, rows = kql.PLAN_RESULT_COLUMNS, plan_answer(df, req.query, span)
            elif kind == "drilldown":
                columns, rows = kql.DRILL_RESULT_COLUMNS, drill_answer(df, req.query, span)
            elif kind == "resources":
                columns, rows = kql.RESOURCES_RESULT_COLUMNS, resources_answer(df, req.query, span)
            else:
                raise ValueError("unknown query shape")
        except (ValueError, AttributeError, KeyError) as err:
            self._send(
                h,
                req,
                400,
                _error_body("BadArgumentError", f"Query could not be parsed: {err}", "SyntaxError"),
            )
            return
        table = table_json(columns, rows)
        size = len(json.dumps({"tables": [table]}))
        if (
            (fault is not None and fault.kind == "partial")
            or len(rows) > self.max_rows
            or size > self.max_bytes
        ):
            keep = min(len(rows) // 2, self.max_rows)
            table["rows"] = table["rows"][:keep]
            why = (
                f"The results of this query exceed the set limit of {self.max_rows} records"
                if len(rows) > self.max_rows
                else f"Query result set has exceeded the internal data size limit {self.max_bytes}"
                if size > self.max_bytes
                else "Partial query failure: Low memory condition (E_LOW_MEMORY_CONDITION)"
            )
            self._send(h, req, 200, partial_body(table, why))
            return
        req.rows = len(rows)
        self._send(h, req, 200, {"tables": [table]})

    def _unresolved(self, query: str) -> str | None:
        """The service's words for the first name ``query`` uses that the table lacks."""
        for name in self.missing:
            if not re.search(rf"\b{re.escape(name)}\b", query):
                continue
            if name in schema.LOG_COLUMNS:
                return f"'extend' operator: Failed to resolve scalar expression named '{name}'"
            return f"'where' operator: Failed to resolve table or column expression named '{name}'"
        return None

    def _send(
        self,
        h: BaseHTTPRequestHandler,
        req: Request,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> None:
        data = json.dumps(body).encode("utf-8")
        req.status, req.bytes = status, len(data)
        h.send_response(status)
        h.send_header("Content-Type", "application/json; charset=utf-8")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)


def utc(*args: int) -> datetime:
    """``datetime(*args, tzinfo=UTC)``."""
    return datetime(*args, tzinfo=UTC)
