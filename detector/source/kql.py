"""Every KQL text the Log Analytics source sends, built from validated values (pure, no I/O).

Consumes windows, a bucket width and a few settings; produces query texts and turns the
answers' rows back into :class:`~detector.schema.BucketAggregates`. Nothing here talks to the
network: :mod:`detector.source.log_analytics` sends the texts.

Three query shapes (each text starts with a ``// acs-detector:<kind>`` comment, so a log line or
the test emulator can tell them apart):

``aggregate``
    One arrival window in, one table out (:data:`AGG_RESULT_COLUMNS`): a row per
    (canonical ``OperationName``, ``SdkVersion``, bucket) with the mergeable sums of
    :data:`~detector.schema.AGG_COLUMNS` and the sparse histogram packed as a bag
    ``{"<bin>": count}`` (so the answer has one row per partition and bucket, not one per bin),
    plus a single ``counts`` row with ``rows_read`` and every drop/flag reason. Semantics, in
    query order:

    1. *Arrival*: rows whose arrival (``ingestion_time()`` or ``TimeGenerated``, see
       :data:`ARRIVALS`) lies in ``[start, end)``. With ``ingestion_time`` the scan is also
       bounded on ``TimeGenerated`` (``[start - overlap, end + 1d)``) so the service can prune
       by time; rows generated more than ``overlap`` before they were ingested are not read.
    2. *Drops* (first matching reason wins, in :data:`~detector.schema.DROP_REASONS` order):
       empty ``OperationName``, the ``CallClientOperations`` pseudo operation, empty
       ``OperationId``, missing or out-of-range ``CallClientTimeStamp``
       (:data:`~detector.schema.TIMESTAMP_MIN`, :data:`~detector.schema.TIMESTAMP_MAX`).
    3. *Dedup* on ``(OperationId, CallClientTimeStamp)`` keeping the copy with the latest
       ``TimeGenerated``; a key that already arrived in the ``dedup_lookback`` before ``start``
       (an earlier run or chunk counted it) is a duplicate too, so chunked and scheduled reads
       count every operation once.
    4. *Normalise*: canonical operation casing (:func:`~detector.schema.canonical_operation`),
       ``ResultType`` classes (:func:`~detector.schema.classify_result`), point events left out
       of duration statistics (:func:`~detector.schema.is_point_event`), histogram bin
       ``ceiling(ln(max(DurationMs, 1)) / ln(gamma))`` (:func:`~detector.schema.duration_bin`).
    5. *Summarize* by operation, ``SdkVersion`` and ``bin_at(CallClientTimeStamp, bucket,
       1970-01-01)`` (epoch aligned, like the file source).

``plan``
    Per arrival step (e.g. 1 h) of a long window: rows, distinct output keys and distinct
    (key, bin) pairs, so a backfill can be cut into chunks whose answers stay under the API's
    row and size limits before any big query is sent.

``drilldown``
    For flagged partitions only: the top failing ``ResultSignature``/``SubCode`` pairs and a
    few example ``CallId`` values, for the notification.

Injection: every value that reaches a text goes through :func:`kql_string`,
:func:`kql_datetime`, :func:`kql_timespan` or :func:`kql_identifier`, which escape or validate
it; free text is never pasted. Strings outside a conservative character set are sent as
``base64_decode_tostring("...")`` so no quote, backslash or newline ever reaches the parser.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple

import numpy as np
import pandas as pd

from detector.anomaly import METRICS
from detector.schema import (
    AGG_COLUMNS,
    CLUSTER_LOOKBACK,
    DEDUP_LOOKBACK,
    DROP_REASONS,
    FLAG_REASONS,
    HIST_COLUMNS,
    HIST_GAMMA,
    KNOWN_OPERATIONS,
    POINT_EVENTS,
    PSEUDO_OPERATION,
    TIMESTAMP_MAX,
    TIMESTAMP_MIN,
    BucketAggregates,
    empty_aggregates,
    fill_failed_calls,
)
from detector.source.resources import resource_key

__all__ = [
    "AGG_RESULT_COLUMNS",
    "ARRIVALS",
    "DEFAULT_TABLE",
    "DRILL_RESULT_COLUMNS",
    "FLAG_REASONS_KQL",
    "PLAN_RESULT_COLUMNS",
    "RESOURCES_RESULT_COLUMNS",
    "ArrivalRules",
    "DrillTarget",
    "PlanStep",
    "aggregate_query",
    "aggregates_from_rows",
    "drill_down_query",
    "drill_down_from_rows",
    "kql_datetime",
    "kql_identifier",
    "kql_string",
    "kql_timespan",
    "plan_from_rows",
    "plan_query",
    "query_kind",
    "resource_filter",
    "resources_from_rows",
    "resources_query",
    "scan_span",
    "table_schema",
]

#: Table read by default (a custom-log copy such as ``ACSCallClientOperations_CL`` also works).
DEFAULT_TABLE: Final = "ACSCallClientOperations"

#: How a row's arrival is defined. ``ingestion_time``: when Log Analytics ingested it (every row
#: has exactly one, and rows become queryable in that order: windows tiling the arrival axis
#: read each row once, however late it is). ``TimeGenerated``: the table's time column (cheaper
#: to scan, but a row that becomes visible after the run that covered its TimeGenerated is never
#: read; use a run delay larger than the ingestion latency).
ARRIVALS: Final[tuple[str, ...]] = ("ingestion_time", "TimeGenerated")

#: Columns (name -> Kusto type) of the ``aggregate`` answer. ``Kind`` is "bucket" or "counts".
AGG_RESULT_COLUMNS: Final[dict[str, str]] = {
    "Kind": "string",
    "OperationName": "string",
    "SdkVersion": "string",
    "BucketStart": "datetime",
    "Calls": "long",
    "Failures": "long",
    "FailedCalls": "long",
    "FailedCallsOp": "real",
    "FailureCluster": "real",
    "FailureClusterOp": "real",
    "ExpectedErrors": "long",
    "DurN": "long",
    "LogDurSum": "real",
    "LogDurSumSq": "real",
    "Hist": "dynamic",
    "Counts": "dynamic",
}

#: Columns of the ``plan`` answer: one row per arrival step that has rows.
PLAN_RESULT_COLUMNS: Final[dict[str, str]] = {
    "Step": "datetime",
    "Rows": "long",
    "Keys": "long",
    "KeyBins": "long",
}

#: Columns of the ``resources`` answer: rows per ``_ResourceId`` value (lower-cased, at most
#: :data:`MAX_RESOURCES` values; ``""`` for rows without one).
RESOURCES_RESULT_COLUMNS: Final[dict[str, str]] = {"ResourceId": "string", "Rows": "long"}

#: A row's resource as the tenant key compares it (trimmed, lower case).
RESOURCE_EXPR: Final = 'tolower(trim(@"\\s+", tostring(_ResourceId)))'

#: How many distinct ``_ResourceId`` values one ``resources`` answer lists.
MAX_RESOURCES: Final = 1000

#: Columns of the ``drilldown`` answer. ``Kind`` is "code" (a failing result code) or "call".
DRILL_RESULT_COLUMNS: Final[dict[str, str]] = {
    "Kind": "string",
    "Fingerprint": "string",
    "ResultSignature": "int",
    "SubCode": "int",
    "ResultType": "string",
    "CallId": "string",
    "Count": "long",
    "Score": "real",
}

#: Flag reasons the KQL can see. ``string_number`` cannot happen in Log Analytics: DurationMs and
#: ResultSignature are typed columns there, so it is always 0 for this source.
FLAG_REASONS_KQL: Final[tuple[str, ...]] = (
    "invalid_duration",
    "invalid_payload_json",
    "noncanonical_operation_case",
)

#: Drop reasons decided row by row in KQL. ``duplicate`` is counted from the dedup,
#: ``partition_cap`` by the source after the answer; ``malformed_record`` cannot happen in a
#: typed table.
_DROPS_KQL: Final[tuple[str, ...]] = (
    "missing_operation_name",
    "pseudo_operation",
    "missing_operation_id",
    "invalid_timestamp",
)

# ln(gamma) written with all 17 significant digits, so KQL divides by the very double that
# schema.duration_bin divides by (no second rounding through log(1.0408...)).
_LN_GAMMA_LITERAL: Final = repr(math.log(HIST_GAMMA))
_EPOCH: Final = "datetime(1970-01-01)"
_SAFE_STRING = re.compile(r"[A-Za-z0-9 _.:#/+()\[\],=@*-]*")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# A timestamp this far beyond a window end is still read: Log Analytics replaces TimeGenerated
# more than 1 day in the future by the receive time (reference/acs-logs.md §4).
_FUTURE_SKEW: Final = timedelta(days=1)
_PAYLOAD_SUBCODE = (
    "coalesce(tostring(OperationPayload['SubCode']), tostring(OperationPayload['subCode']))"
)


# --------------------------------------------------------------------------------------------
# Literals: the only way values enter a query text
# --------------------------------------------------------------------------------------------


def kql_string(value: object) -> str:
    """A KQL expression that evaluates to ``str(value)``, whatever characters it holds.

    Plain text (letters, digits, a few punctuation marks) is written as a double-quoted
    literal; anything else (quotes, backslashes, newlines, pipes, non-ASCII) as
    ``base64_decode_tostring("<base64>")``, whose argument only holds ``[A-Za-z0-9+/=]``.
    """
    text = "" if value is None else str(value)
    if _SAFE_STRING.fullmatch(text):
        return f'"{text}"'
    encoded = base64.b64encode(text.encode("utf-8")).decode("ascii")
    return f'base64_decode_tostring("{encoded}")'


def kql_datetime(value: datetime) -> str:
    """``datetime(2025-01-01T00:00:00.0000000Z)`` from a timezone-aware datetime.

    Raises
    ------
    ValueError
        For a naive datetime (its zone would be guessed) or a non-datetime.
    """
    if not isinstance(value, datetime):
        raise ValueError(f"expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"datetime {value.isoformat()} has no time zone; use UTC")
    utc = value.astimezone(UTC)
    return f"datetime({utc.strftime('%Y-%m-%dT%H:%M:%S')}.{utc.microsecond:06d}0Z)"


def kql_timespan(value: timedelta) -> str:
    """A KQL timespan literal (``300s``, ``1500ms``) for a non-negative whole number of ms.

    Raises
    ------
    ValueError
        For negative spans or spans finer than a millisecond.
    """
    if not isinstance(value, timedelta):
        raise ValueError(f"expected a timedelta, got {type(value).__name__}")
    micro = value // timedelta(microseconds=1)
    if micro < 0 or micro % 1000:
        raise ValueError(f"timespan {value} must be >= 0 and a whole number of milliseconds")
    ms = micro // 1000
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def kql_identifier(name: str) -> str:
    """Validate a table name: letters, digits and ``_``, not starting with a digit.

    Raises
    ------
    ValueError
        If ``name`` is not a plain identifier (brackets, quotes, pipes are refused, not escaped).
    """
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid table name (letters, digits, '_')")
    return name


def _positive_int(name: str, value: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi:
        raise ValueError(f"{name} must be an integer in [1, {hi}], got {value!r}")
    return value


def _check_window(start: datetime, end: datetime) -> None:
    kql_datetime(start)
    kql_datetime(end)
    if end <= start:
        raise ValueError(f"window end {end.isoformat()} is not after start {start.isoformat()}")


def _check_bucket(bucket: timedelta) -> None:
    if not isinstance(bucket, timedelta) or bucket <= timedelta(0):
        raise ValueError(f"bucket must be a positive timedelta, got {bucket!r}")
    if bucket % timedelta(seconds=1):
        raise ValueError(f"bucket {bucket} must be a whole number of seconds")


def _check_arrival(arrival: str) -> None:
    if arrival not in ARRIVALS:
        raise ValueError(f"arrival must be one of {ARRIVALS}, got {arrival!r}")


def query_kind(text: str) -> str | None:
    """The kind (``aggregate``, ``plan``, ``drilldown``) written in a text's first line."""
    m = re.match(r"// acs-detector:(\w+)", text)
    return m.group(1) if m else None


def table_schema(columns: dict[str, str]) -> str:
    """``(Name:type, ...)``: the schema string the Kusto language service takes."""
    return "(" + ", ".join(f"{name}:{kind}" for name, kind in columns.items()) + ")"


def scan_span(
    start: datetime,
    end: datetime,
    *,
    arrival: str,
    overlap: timedelta,
    dedup_lookback: timedelta = timedelta(0),
    cluster_lookback: timedelta = timedelta(0),
) -> tuple[datetime, datetime]:
    """The ``TimeGenerated`` range an aggregate query may touch (also the API ``timespan``).

    The service applies the request's ``timespan`` on top of the query's own filters, so it
    must cover every row the query reads, including the dedup and cluster look-backs (the
    longer of the two).
    """
    back = max(dedup_lookback, cluster_lookback)
    if arrival == "TimeGenerated":
        return start - back, end
    return start - overlap - back, end + _FUTURE_SKEW


# --------------------------------------------------------------------------------------------
# Shared fragments
# --------------------------------------------------------------------------------------------


def _canonical_bag() -> str:
    # Built from schema.KNOWN_OPERATIONS: lower-case name -> canonical casing.
    pairs = ", ".join(
        f"{json.dumps(name.lower())}: {json.dumps(name)}" for name in KNOWN_OPERATIONS
    )
    return "dynamic({" + pairs + "})"


def _point_list() -> str:
    return ", ".join(kql_string(name) for name in sorted(POINT_EVENTS))


def resource_filter(resource: str | None) -> str:
    """The ``where`` line keeping one ACS resource's rows (``""`` when ``resource`` is None).

    ``resource`` must be a tenant key (:func:`detector.source.resources.resource_key`); it
    still travels through :func:`kql_string`, like every value that reaches a text.
    """
    if resource is None:
        return ""
    if resource_key(resource) != resource:
        raise ValueError("resource must be a lower-case Azure resource id")
    return f"    | where {RESOURCE_EXPR} == {kql_string(resource)}\n"


def _rows_fragment(table: str, arrival: str, resource: str | None = None) -> str:
    """The table with ``_Arrival`` and the trimmed operation name, bounded by the scan span
    (one resource's rows only when ``resource`` is given)."""
    arrival_expr = "ingestion_time()" if arrival == "ingestion_time" else "TimeGenerated"
    return (
        f"{table}\n"
        f"{resource_filter(resource)}"
        "    | where TimeGenerated >= _ScanFrom and TimeGenerated < _ScanTo\n"
        f"    | extend _Arrival = {arrival_expr}\n"
        '    | extend _OpTrim = trim(@"\\s+", OperationName)\n'
        "    | extend _Drop = case(\n"
        '        isempty(_OpTrim), "missing_operation_name",\n'
        f"        tolower(_OpTrim) == {kql_string(PSEUDO_OPERATION.lower())}, "
        '"pseudo_operation",\n'
        '        isempty(trim(@"\\s+", OperationId)), "missing_operation_id",\n'
        "        isnull(CallClientTimeStamp) or CallClientTimeStamp < "
        f"{kql_datetime(TIMESTAMP_MIN)}\n"
        f"            or CallClientTimeStamp >= {kql_datetime(TIMESTAMP_MAX)}, "
        '"invalid_timestamp",\n'
        '        "")'
    )


def _normalise_fragment() -> str:
    """Columns every kept row gets: canonical op, result class, point flag, duration bin."""
    return (
        "    | extend _Op = coalesce(tostring(_Canonical[tolower(_OpTrim)]), _OpTrim)\n"
        "    | extend _Class = case(\n"
        '        ResultType contains "success" or ResultType contains "succeeded", "success",\n'
        '        ResultType startswith "expected", "expected_error",\n'
        '        "failure")\n'
        f'    | extend _Point = _Op in ({_point_list()}) or _Op endswith "-changed"\n'
        "    | extend _Usable = not(_Point) and isnotnull(DurationMs) and DurationMs >= 0\n"
        "    | extend _Ld = iff(_Usable, log(max_of(todouble(DurationMs), 1.0)), 0.0)\n"
        f"    | extend _Bin = iff(_Usable, toint(ceiling(_Ld / {_LN_GAMMA_LITERAL})), -1)"
    )


# --------------------------------------------------------------------------------------------
# aggregate
# --------------------------------------------------------------------------------------------


class _AggWindow(NamedTuple):
    """The arrival window of an aggregate query and the spans its ``let`` lines declare."""

    start: datetime
    end: datetime
    scan_from: datetime
    scan_to: datetime
    dedup_lookback: timedelta
    cluster_lookback: timedelta
    bucket: timedelta


@dataclass(frozen=True)
class ArrivalRules:
    """Which rows an aggregate query's arrival window holds and what it looks back on.

    ``arrival``: one of :data:`ARRIVALS`. ``overlap``: with ``ingestion_time``, how long
    before the window's start a row's ``TimeGenerated`` may lie and still be read (bounds the
    scan; ignored for ``TimeGenerated``). ``dedup_lookback``: how far before the start (in
    arrival time) a key counts as already seen; 0 disables. ``cluster_lookback``: how far
    before the start earlier failures of the window's failing calls weigh their clusters
    (``FailureCluster``; see ``files._cluster_weights``).
    """

    arrival: str = "ingestion_time"
    overlap: timedelta = timedelta(days=2)
    dedup_lookback: timedelta = DEDUP_LOOKBACK
    cluster_lookback: timedelta = CLUSTER_LOOKBACK


def aggregate_query(
    start: datetime,
    end: datetime,
    *,
    bucket: timedelta,
    rules: ArrivalRules = ArrivalRules(),
    table: str = DEFAULT_TABLE,
    resource: str | None = None,
) -> str:
    """The pushdown query for one arrival window ``[start, end)`` (see module docstring).

    Parameters
    ----------
    start, end
        Arrival window, timezone-aware, half-open.
    bucket
        Bucket width on ``CallClientTimeStamp`` (whole seconds), epoch aligned.
    rules
        The arrival axis, scan overlap and look-backs (:class:`ArrivalRules`).
    table
        Table name (validated identifier).
    resource
        Only this ACS resource's rows (a lower-case resource id); None: every row.

    Returns
    -------
    str
        A KQL text answering :data:`AGG_RESULT_COLUMNS`.

    Raises
    ------
    ValueError
        For an invalid window, bucket, arrival, table or a negative span.
    """
    _check_window(start, end)
    _check_bucket(bucket)
    _check_arrival(rules.arrival)
    table = kql_identifier(table)
    dedup_lookback, cluster_lookback = rules.dedup_lookback, rules.cluster_lookback
    scan_from, scan_to = scan_span(
        start,
        end,
        arrival=rules.arrival,
        overlap=rules.overlap,
        dedup_lookback=dedup_lookback,
        cluster_lookback=cluster_lookback,
    )
    window = _AggWindow(start, end, scan_from, scan_to, dedup_lookback, cluster_lookback, bucket)
    return (
        _aggregate_header(window)
        + _kept_lets(table, rules.arrival, resource, dedup=dedup_lookback > timedelta(0))
        + _failed_calls_lets()
        + _stats_let()
        + _counts_lets()
        + _AGG_PROJECT
    )


def _aggregate_header(window: _AggWindow) -> str:
    """The kind comment and the ``let`` lines of the window's literals, from ``window``."""
    return f"""// acs-detector:aggregate v1
let _Start = {kql_datetime(window.start)};
let _End = {kql_datetime(window.end)};
let _ScanFrom = {kql_datetime(window.scan_from)};
let _ScanTo = {kql_datetime(window.scan_to)};
let _Lookback = {kql_timespan(window.dedup_lookback)};
let _ClusterLookback = {kql_timespan(window.cluster_lookback)};
let _Bucket = {kql_timespan(window.bucket)};
let _Canonical = {_canonical_bag()};
"""


def _kept_lets(table: str, arrival: str, resource: str | None, *, dedup: bool) -> str:
    """``_Rows``, ``_Window``, ``_Prior`` and ``_Kept`` (deduplicated, normalised) as text."""
    # The anti-join against earlier arrivals only exists with a look-back (dedup_lookback > 0).
    prior_join = (
        "    | join kind=leftanti _Prior on OperationId, CallClientTimeStamp\n" if dedup else ""
    )
    return f"""let _Rows = {_rows_fragment(table, arrival, resource)};
let _Window = materialize(_Rows | where _Arrival >= _Start and _Arrival < _End);
let _Prior = _Rows
    | where _Arrival >= _Start - _Lookback and _Arrival < _Start and isempty(_Drop)
    | distinct OperationId, CallClientTimeStamp;
let _Kept = materialize(_Window
    | where isempty(_Drop)
    | summarize arg_max(TimeGenerated, *) by OperationId, CallClientTimeStamp
{prior_join}{_normalise_fragment()}
    | extend _BucketStart = bin_at(CallClientTimeStamp, _Bucket, {_EPOCH}));
"""


def _failed_calls_lets() -> str:
    """``_FailCalls``, ``_PriorFail`` and ``_FailedCalls`` (failing calls, cluster weights)."""
    return f"""let _FailCalls = materialize(_Kept
    | where _Class == "failure"
    | summarize _F = count()
        by _Op, SdkVersion, _BucketStart, _Call = iff(isempty(CallId), OperationId, CallId));
let _PriorFail = materialize(_Rows
    | where _Arrival >= _Start - _ClusterLookback and _Arrival < _Start and isempty(_Drop)
{_normalise_fragment()}
    | where _Class == "failure"
    | summarize _K0 = count()
        by _Op, SdkVersion, _Call = iff(isempty(CallId), OperationId, CallId));
let _FailedCalls = _FailCalls
    | join kind=inner (_FailCalls | summarize _V = count() by _Op, _BucketStart, _Call)
        on _Op, _BucketStart, _Call
    | join kind=inner (_FailCalls | summarize _S = sum(_F) by _Op, SdkVersion, _Call)
        on _Op, SdkVersion, _Call
    | join kind=inner (_FailCalls | summarize _SOp = sum(_F) by _Op, _Call) on _Op, _Call
    | join kind=leftouter _PriorFail on _Op, SdkVersion, _Call
    | join kind=leftouter (_PriorFail | summarize _K0Op = sum(_K0) by _Op, _Call) on _Op, _Call
    | extend _K0 = coalesce(_K0, 0), _K0Op = coalesce(_K0Op, 0)
    | summarize FailedCalls = count(), FailedCallsOp = sum(1.0 / _V),
        FailureCluster = sum(todouble(_F * (_S + 2 * _K0))),
        FailureClusterOp = sum(todouble(_F * (_SOp + 2 * _K0Op)))
        by OperationName = _Op, SdkVersion, BucketStart = _BucketStart;
"""


def _stats_let() -> str:
    """``_Stats``: the ``bucket`` rows (sums, histogram bag, failing-call columns) as text."""
    return """let _Stats = _Kept
    | summarize _N = count(), _F = countif(_Class == "failure"),
        _E = countif(_Class == "expected_error"), _S1 = sum(_Ld), _S2 = sum(_Ld * _Ld)
        by _Op, SdkVersion, _BucketStart, _Bin
    | summarize Calls = sum(_N), Failures = sum(_F), ExpectedErrors = sum(_E),
        DurN = sumif(_N, _Bin >= 0), LogDurSum = sum(_S1), LogDurSumSq = sum(_S2),
        Hist = make_bag_if(bag_pack(tostring(_Bin), _N), _Bin >= 0)
        by OperationName = _Op, SdkVersion, BucketStart = _BucketStart
    | lookup kind=leftouter _FailedCalls on OperationName, SdkVersion, BucketStart
    | extend FailedCalls = coalesce(FailedCalls, 0), FailedCallsOp = coalesce(FailedCallsOp, 0.0),
        FailureCluster = coalesce(FailureCluster, 0.0),
        FailureClusterOp = coalesce(FailureClusterOp, 0.0), Kind = "bucket";
"""


def _counts_lets() -> str:
    """``_WindowCounts``, ``_KeptCounts`` and ``_Counts`` (the single ``counts`` row) as text."""
    drop_counts = ",\n        ".join(
        f'{reason} = countif(_Drop == "{reason}")' for reason in _DROPS_KQL
    )
    count_pairs = ", ".join(f'"{r}", {r}' for r in ("rows_read", *_DROPS_KQL))
    flag_pairs = ", ".join(f'"{r}", {r}' for r in FLAG_REASONS_KQL)
    return f"""let _WindowCounts = _Window
    | summarize rows_read = count(), valid = countif(isempty(_Drop)),
        {drop_counts}
    | extend _J = 1;
let _KeptCounts = _Kept
    | summarize kept = count(),
        invalid_duration = countif(not(_Point) and (isnull(DurationMs) or DurationMs < 0)),
        invalid_payload_json = countif(isnotempty(tostring(OperationPayload))
            and gettype(OperationPayload) == "string"
            and gettype(parse_json(tostring(OperationPayload))) == "string"),
        noncanonical_operation_case = countif(_Op != OperationName)
    | extend _J = 1;
let _Counts = _WindowCounts
    | join kind=inner _KeptCounts on _J
    | project Kind = "counts",
        Counts = bag_pack({count_pairs}, "duplicate", valid - kept, {flag_pairs});
"""


# The answer's column order (:data:`AGG_RESULT_COLUMNS`), both row kinds in one table.
_AGG_PROJECT: Final = """union _Stats, _Counts
| project Kind, OperationName, SdkVersion, BucketStart, Calls, Failures, FailedCalls,
    FailedCallsOp, FailureCluster, FailureClusterOp, ExpectedErrors, DurN, LogDurSum,
    LogDurSumSq, Hist, Counts
"""


def _as_bag(value: Any) -> dict[str, Any]:
    """A ``dynamic`` cell: the client passes JSON text through untouched (libraries.md §1)."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except RecursionError:
            raise ValueError("a JSON cell is nested too deep") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _as_utc(value: Any) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def aggregates_from_rows(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> BucketAggregates:
    """Turn the rows of an ``aggregate`` answer into :class:`~detector.schema.BucketAggregates`.

    Parameters
    ----------
    columns
        Column names of the answer's table (must include every :data:`AGG_RESULT_COLUMNS` key).
    rows
        The table's rows (lists or ``LogsTableRow``), as the client returns them.

    Returns
    -------
    BucketAggregates
        ``stats`` and ``hist`` with the schema dtypes; ``dropped`` has every
        :data:`~detector.schema.DROP_REASONS` key, ``flagged`` every
        :data:`~detector.schema.FLAG_REASONS` key, ``rows_read`` the window's input rows.

    Raises
    ------
    ValueError
        If a column is missing, the counts row is missing or repeated, or a cell is malformed.
    """
    index = {name: i for i, name in enumerate(columns)}
    missing = [c for c in AGG_RESULT_COLUMNS if c not in index]
    if missing:
        raise ValueError(f"answer lacks columns {missing}")
    # Column-wise (an answer can hold 10^5 rows): one pass to split, then vectorised typing.
    names = list(AGG_RESULT_COLUMNS)
    picked = [[row[index[c]] for c in names] for row in rows]
    frame = pd.DataFrame(picked, columns=names, dtype=object)
    kinds = set(frame["Kind"].unique())
    if kinds - {"bucket", "counts"}:
        raise ValueError(f"unexpected row kind {sorted(map(str, kinds - {'bucket', 'counts'}))}")
    counts_rows = frame[frame["Kind"] == "counts"]
    if len(counts_rows) == 0:
        raise ValueError("answer has no counts row")
    if len(counts_rows) > 1:
        raise ValueError("answer has more than one counts row")
    counts = _as_bag(counts_rows["Counts"].iloc[0])
    b = frame[frame["Kind"] == "bucket"]
    out = empty_aggregates()
    # A bucket the contract cannot hold (no, an unparseable or an out-of-range BucketStart:
    # the query drops those rows, so only a changed query could send one) costs its rows,
    # counted as invalid_timestamp, never the answer.
    starts = pd.DatetimeIndex(
        pd.to_datetime(b["BucketStart"].tolist(), utc=True, errors="coerce", format="mixed")
    )
    good = np.asarray(
        starts.notna()
        & (starts >= pd.Timestamp(TIMESTAMP_MIN))
        & (starts < pd.Timestamp(TIMESTAMP_MAX))
    )
    bad_calls = int(pd.to_numeric(b["Calls"][~good], errors="coerce").fillna(0).sum())
    b, starts = b[good], starts[good].as_unit("ns")
    if len(b):
        stats = pd.DataFrame(
            {
                "operation_name": b["OperationName"].fillna("").to_numpy(),
                "sdk_version": b["SdkVersion"].fillna("").to_numpy(),
                "bucket_start": starts,
                "calls": b["Calls"].fillna(0).to_numpy(),
                "failures": b["Failures"].fillna(0).to_numpy(),
                # (a null failing-calls count reads as every failure its own call)
                "failed_calls": b["FailedCalls"].to_numpy(),
                "failed_calls_op": b["FailedCallsOp"].to_numpy(),
                "failure_cluster": b["FailureCluster"].to_numpy(),
                "failure_cluster_op": b["FailureClusterOp"].to_numpy(),
                "expected_errors": b["ExpectedErrors"].fillna(0).to_numpy(),
                "dur_n": b["DurN"].fillna(0).to_numpy(),
                "log_dur_sum": b["LogDurSum"].fillna(0.0).to_numpy(),
                "log_dur_sumsq": b["LogDurSumSq"].fillna(0.0).to_numpy(),
            }
        )
        out.stats = fill_failed_calls(stats).astype(AGG_COLUMNS)
        positions, bins, ns = [], [], []
        for pos, cell in enumerate(b["Hist"].tolist()):
            for bin_key, n in _as_bag(cell).items():
                if int(n):
                    positions.append(pos)
                    bins.append(int(bin_key))
                    ns.append(int(n))
        if positions:
            keyed = out.stats.iloc[positions][["operation_name", "sdk_version", "bucket_start"]]
            hist = keyed.reset_index(drop=True).assign(bin=bins, count=ns)
            out.hist = hist[list(HIST_COLUMNS)].astype(HIST_COLUMNS)
    out.rows_read = int(counts.get("rows_read", 0))
    out.dropped = {r: int(counts.get(r, 0)) for r in DROP_REASONS}
    out.dropped["invalid_timestamp"] += bad_calls
    out.flagged = {r: int(counts.get(r, 0)) for r in FLAG_REASONS}
    return out


# --------------------------------------------------------------------------------------------
# plan
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanStep:
    """Size of one arrival step of a long window, as the ``plan`` query measured it.

    ``keys`` (distinct output rows) and ``key_bins`` (distinct histogram entries) are
    ``dcount`` estimates; summing them over steps over-estimates a chunk's answer, which is the
    safe direction.
    """

    start: datetime
    rows: int
    keys: int
    key_bins: int


def plan_query(
    start: datetime,
    end: datetime,
    *,
    step: timedelta,
    bucket: timedelta,
    arrival: str = "ingestion_time",
    overlap: timedelta = timedelta(days=2),
    table: str = DEFAULT_TABLE,
    resource: str | None = None,
) -> str:
    """Per-step sizes of an arrival window, to plan the chunks of a backfill.

    Returns a text answering :data:`PLAN_RESULT_COLUMNS`, one row per ``step`` (aligned on
    ``start``) that holds rows. Raises ``ValueError`` like :func:`aggregate_query`.
    """
    _check_window(start, end)
    _check_bucket(bucket)
    _check_bucket(step)
    _check_arrival(arrival)
    table = kql_identifier(table)
    scan_from, scan_to = scan_span(start, end, arrival=arrival, overlap=overlap)
    return f"""// acs-detector:plan v1
let _Start = {kql_datetime(start)};
let _End = {kql_datetime(end)};
let _ScanFrom = {kql_datetime(scan_from)};
let _ScanTo = {kql_datetime(scan_to)};
let _Bucket = {kql_timespan(bucket)};
let _Step = {kql_timespan(step)};
{_rows_fragment(table, arrival, resource)}
| where _Arrival >= _Start and _Arrival < _End
| extend _Key = hash(strcat(tolower(_OpTrim), "|", SdkVersion, "|",
    tostring(bin_at(CallClientTimeStamp, _Bucket, {_EPOCH}))))
| extend _KeyBin = hash(strcat(tostring(_Key), "|", tostring(toint(ceiling(
    log(max_of(todouble(DurationMs), 1.0)) / {_LN_GAMMA_LITERAL})))))
| summarize Rows = count(), Keys = dcount(_Key), KeyBins = dcount(_KeyBin)
    by Step = bin_at(_Arrival, _Step, _Start)
| order by Step asc
"""


def resources_query(
    start: datetime,
    end: datetime,
    *,
    arrival: str = "ingestion_time",
    overlap: timedelta = timedelta(days=2),
    table: str = DEFAULT_TABLE,
) -> str:
    """Which ACS resources wrote the rows that arrived in ``[start, end)``, and how many each.

    Answers :data:`RESOURCES_RESULT_COLUMNS` (the busiest :data:`MAX_RESOURCES` values).
    Raises ``ValueError`` like :func:`aggregate_query`.
    """
    _check_window(start, end)
    _check_arrival(arrival)
    table = kql_identifier(table)
    scan_from, scan_to = scan_span(start, end, arrival=arrival, overlap=overlap)
    arrival_expr = "ingestion_time()" if arrival == "ingestion_time" else "TimeGenerated"
    return f"""// acs-detector:resources v1
let _Start = {kql_datetime(start)};
let _End = {kql_datetime(end)};
let _ScanFrom = {kql_datetime(scan_from)};
let _ScanTo = {kql_datetime(scan_to)};
{table}
| where TimeGenerated >= _ScanFrom and TimeGenerated < _ScanTo
| extend _Arrival = {arrival_expr}
| where _Arrival >= _Start and _Arrival < _End
| summarize Rows = count() by ResourceId = {RESOURCE_EXPR}
| top {MAX_RESOURCES} by Rows desc
"""


def resources_from_rows(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> dict[str, int]:
    """Parse a ``resources`` answer: ``{value: rows}`` with the values as sent (hostile text:
    callers keep only :func:`~detector.source.resources.resource_key` ones as tenants)."""
    index = {name: i for i, name in enumerate(columns)}
    missing = [c for c in RESOURCES_RESULT_COLUMNS if c not in index]
    if missing:
        raise ValueError(f"answer lacks columns {missing}")
    out: dict[str, int] = {}
    for row in rows:
        value = row[index["ResourceId"]]
        text = value if isinstance(value, str) else ""
        out[text] = out.get(text, 0) + int(row[index["Rows"]] or 0)
    return out


def plan_from_rows(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[PlanStep]:
    """Parse a ``plan`` answer into :class:`PlanStep` records, sorted by start."""
    index = {name: i for i, name in enumerate(columns)}
    missing = [c for c in PLAN_RESULT_COLUMNS if c not in index]
    if missing:
        raise ValueError(f"answer lacks columns {missing}")
    steps = [
        PlanStep(
            start=_as_utc(row[index["Step"]]).to_pydatetime(),
            rows=int(row[index["Rows"]]),
            keys=int(row[index["Keys"]]),
            key_bins=int(row[index["KeyBins"]]),
        )
        for row in rows
    ]
    return sorted(steps, key=lambda s: s.start)


# --------------------------------------------------------------------------------------------
# drilldown
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DrillTarget:
    """One flagged partition to explain: rows with ``CallClientTimeStamp`` in ``[start, end)``.

    ``sdk_version`` None means every version of the operation (the fleet).
    """

    fingerprint: str
    operation_name: str
    sdk_version: str | None
    metric: str
    start: datetime
    end: datetime


def drill_down_query(
    targets: Sequence[DrillTarget],
    *,
    lateness: timedelta,
    top_codes: int = 5,
    example_calls: int = 3,
    table: str = DEFAULT_TABLE,
    resource: str | None = None,
) -> str:
    """Top failing result codes and example ``CallId`` values for flagged partitions.

    Parameters
    ----------
    targets
        The partitions (at most 100 per query).
    lateness
        Rows are read whose ``TimeGenerated`` lies in ``[min start - 1h, max end + lateness)``
        (late rows of the flagged buckets included; the hour covers client clock skew).
    top_codes, example_calls
        How many codes and calls per target.

    Returns
    -------
    str
        A text answering :data:`DRILL_RESULT_COLUMNS`. Codes are failing operations grouped
        by ``ResultSignature``, ``SubCode`` (from ``OperationPayload``) and ``ResultType``;
        calls are ranked by failing operations (``failure_rate``), by the slowest operation
        (``duration``) or by operations (``volume``).

    Raises
    ------
    ValueError
        For no targets, too many, invalid windows or sizes.
    """
    if not targets:
        raise ValueError("drill_down_query needs at least one target")
    if len(targets) > 100:
        raise ValueError(f"at most 100 targets per query, got {len(targets)}")
    _positive_int("top_codes", top_codes, 100)
    _positive_int("example_calls", example_calls, 100)
    table = kql_identifier(table)
    table_rows = _target_rows(targets)
    return (
        _drill_header(targets, lateness, table_rows)
        + _hits_let(table, resource)
        + _codes_calls_lets(top_codes, example_calls)
    )


def _target_rows(targets: Sequence[DrillTarget]) -> str:
    """The ``datatable`` rows of ``targets`` (validated), one line each, as text."""
    lines = []
    for t in targets:
        _check_window(t.start, t.end)
        if t.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {t.metric!r}")
        # datatable cells must be literals: the strings travel as base64 text (alphabet
        # [A-Za-z0-9+/=], nothing to escape) and are decoded by the extend below.
        lines.append(
            f'    "{_b64(t.fingerprint)}", "{_b64(t.operation_name)}", '
            f'"{_b64(t.sdk_version or "")}", {"true" if t.sdk_version is None else "false"}, '
            f'"{t.metric}", {kql_datetime(t.start)}, {kql_datetime(t.end)},'
        )
    return "\n".join(lines)


def _drill_header(targets: Sequence[DrillTarget], lateness: timedelta, table_rows: str) -> str:
    """The kind comment, the span ``let`` lines and ``_Targets`` (from ``table_rows``)."""
    lo = min(t.start for t in targets)
    hi = max(t.end for t in targets)
    return f"""// acs-detector:drilldown v1
let _From = {kql_datetime(lo)};
let _To = {kql_datetime(hi)};
let _ScanFrom = {kql_datetime(lo - timedelta(hours=1))};
let _ScanTo = {kql_datetime(hi + lateness)};
let _Canonical = {_canonical_bag()};
let _Targets = datatable(Fingerprint:string, Op:string, Sdk:string, AllSdk:bool, Metric:string,
    From:datetime, To:datetime) [
{table_rows}
]
    | extend Fingerprint = base64_decode_tostring(Fingerprint), Op = base64_decode_tostring(Op),
        Sdk = base64_decode_tostring(Sdk);
"""


def _hits_let(table: str, resource: str | None) -> str:
    """``_Hits``: the targets' deduplicated, classified rows of ``table``, as text."""
    return f"""let _Hits = materialize({table}
{resource_filter(resource)}    | where TimeGenerated >= _ScanFrom and TimeGenerated < _ScanTo
    | where CallClientTimeStamp >= _From and CallClientTimeStamp < _To
    | where isnotempty(trim(@"\\s+", OperationId))
    | extend _OpTrim = trim(@"\\s+", OperationName)
    | extend _Op = coalesce(tostring(_Canonical[tolower(_OpTrim)]), _OpTrim)
    | join kind=inner _Targets on $left._Op == $right.Op
    | where CallClientTimeStamp >= From and CallClientTimeStamp < To
        and (AllSdk or SdkVersion == Sdk)
    | summarize arg_max(TimeGenerated, *) by Fingerprint, OperationId, CallClientTimeStamp
    | extend _Class = case(
        ResultType contains "success" or ResultType contains "succeeded", "success",
        ResultType startswith "expected", "expected_error",
        "failure")
    | extend _SubCode = toint(todecimal({_PAYLOAD_SUBCODE})));
"""


def _codes_calls_lets(top_codes: int, example_calls: int) -> str:
    """``_Codes``, ``_Calls`` (``top_codes``, ``example_calls`` per target), the union: text."""
    return f"""let _Codes = _Hits
    | where _Class == "failure"
    | summarize Count = count() by Fingerprint, ResultSignature, SubCode = _SubCode, ResultType
    | order by Fingerprint asc, Count desc, ResultSignature asc
    | extend _Rank = row_number(1, prev(Fingerprint) != Fingerprint)
    | where _Rank <= {top_codes}
    | extend Kind = "code";
let _Calls = _Hits
    | where isnotempty(CallId)
    | summarize _Fail = countif(_Class == "failure"), _MaxDur = max(DurationMs), Count = count()
        by Fingerprint, Metric, CallId
    | extend Score = case(Metric == "failure_rate", todouble(_Fail),
        Metric == "duration", todouble(_MaxDur), todouble(Count))
    | where Score > 0
    | order by Fingerprint asc, Score desc, CallId asc
    | extend _Rank = row_number(1, prev(Fingerprint) != Fingerprint)
    | where _Rank <= {example_calls}
    | extend Kind = "call";
union _Codes, _Calls
| project Kind, Fingerprint, ResultSignature, SubCode, ResultType, CallId, Count, Score
"""


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def drill_down_from_rows(
    columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> dict[str, dict[str, list[Any]]]:
    """Parse a ``drilldown`` answer: fingerprint -> ``top_result_codes``, ``example_call_ids``.

    Each code entry is ``{"result_signature", "sub_code", "result_type", "count"}`` (ints or
    None, the type string, the count), most frequent first; call ids are ranked as the query
    ranked them.
    """
    index = {name: i for i, name in enumerate(columns)}
    missing = [c for c in DRILL_RESULT_COLUMNS if c not in index]
    if missing:
        raise ValueError(f"answer lacks columns {missing}")
    out: dict[str, dict[str, list[Any]]] = {}
    calls: dict[str, list[tuple[float, str]]] = {}
    for row in rows:
        fp = str(row[index["Fingerprint"]])
        entry = out.setdefault(fp, {"top_result_codes": [], "example_call_ids": []})
        if row[index["Kind"]] == "code":
            entry["top_result_codes"].append(
                {
                    "result_signature": _opt_int(row[index["ResultSignature"]]),
                    "sub_code": _opt_int(row[index["SubCode"]]),
                    "result_type": row[index["ResultType"]] or "",
                    "count": int(row[index["Count"]] or 0),
                }
            )
        elif row[index["Kind"]] == "call":
            calls.setdefault(fp, []).append(
                (float(row[index["Score"]] or 0.0), str(row[index["CallId"]]))
            )
    for fp, entry in out.items():
        entry["top_result_codes"].sort(key=lambda c: (-c["count"], c["result_signature"] or 0))
        entry["example_call_ids"] = [cid for _, cid in sorted(calls.get(fp, []), key=_rank)]
    return out


def _rank(item: tuple[float, str]) -> tuple[float, str]:
    return (-item[0], item[1])


def _opt_int(value: Any) -> int | None:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return None
    return int(value)
