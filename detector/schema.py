"""The shapes every stage agrees on: log columns, operation semantics, bucket aggregates.

This module is pure (no I/O). It is the single source of truth for

* the columns of ``ACSCallClientOperations`` (:data:`LOG_COLUMNS`, with their Kusto types);
* how a ``ResultType`` is classified (:func:`classify_result`), following Microsoft's own
  "Voice and video insights" workbook: ``Succeeded``/``Success`` are successes,
  ``ExpectedError`` (and legacy ``ExpectedClientError``) are expected errors and *not* failures,
  everything else (``UnexpectedClientError``, ``UnexpectedServerError``, ``Failed``, unknown,
  empty) is a failure;
* which operations are *point events* without a meaningful duration (:func:`is_point_event`);
* canonical casing of operation names (:func:`canonical_operation`);
* ``SdkVersion`` parsing for display (:func:`parse_sdk_version`);
* the **bucket aggregate frame** that both sources (DuckDB over files, KQL over Log Analytics)
  produce and that the store, baseline and scorer consume (:data:`AGG_COLUMNS`,
  :data:`HIST_COLUMNS`, :class:`BucketAggregates`);
* the sparse log-scale duration histogram (:func:`duration_bin`, :func:`bin_value`), with a
  relative error bound of :data:`HIST_ALPHA` on every quantile read from it.

Dedup rule (all sources): rows are one operation per ``(OperationId, CallClientTimeStamp)``;
later copies of the same key are duplicates and are counted, not aggregated. Microsoft's Call
Diagnostics queries dedupe on the same key; deduplicating on ``OperationId`` alone would merge a
``UserFacingDiagnostics`` bad->good pair, which shares its ``OperationId``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

import numpy as np
import pandas as pd

__all__ = [
    "AGG_COLUMNS",
    "AGG_KEY",
    "CLUSTER_LOOKBACK",
    "DEDUP_LOOKBACK",
    "DROP_REASONS",
    "FLAG_REASONS",
    "HIST_ALPHA",
    "HIST_COLUMNS",
    "HIST_GAMMA",
    "KNOWN_OPERATIONS",
    "LOG_COLUMNS",
    "MAX_PARTITIONS",
    "POINT_EVENTS",
    "PSEUDO_OPERATION",
    "REQUIRED_COLUMNS",
    "TIMESTAMP_MAX",
    "TIMESTAMP_MIN",
    "BucketAggregates",
    "ResultClass",
    "SdkVersionInfo",
    "bin_value",
    "canonical_operation",
    "classify_result",
    "duration_bin",
    "empty_aggregates",
    "fill_failed_calls",
    "is_point_event",
    "parse_sdk_version",
]

# --------------------------------------------------------------------------------------------
# The log table
# --------------------------------------------------------------------------------------------

#: Columns of ``ACSCallClientOperations`` with their Kusto types (Azure Monitor table reference).
LOG_COLUMNS: Final[dict[str, str]] = {
    "TenantId": "string",
    "TimeGenerated": "datetime",
    "CallClientTimeStamp": "datetime",
    "CallId": "string",
    "ClientInstanceId": "string",
    "DurationMs": "long",
    "EndpointId": "string",
    "OperationId": "string",
    "OperationName": "string",
    "OperationPayload": "dynamic",
    "OperationType": "string",
    "ParticipantId": "string",
    "ResultSignature": "int",
    "ResultType": "string",
    "SdkVersion": "string",
    "UserAgent": "string",
    "SourceSystem": "string",
    "Type": "string",
    "_ResourceId": "string",
}

#: Without these a file is not an ACS call client operations export (InputError, exit 2).
REQUIRED_COLUMNS: Final[tuple[str, ...]] = (
    "TimeGenerated",
    "CallClientTimeStamp",
    "OperationId",
    "OperationName",
    "ResultType",
    "DurationMs",
    "SdkVersion",
)

#: Microsoft's queries drop this pseudo operation name.
PSEUDO_OPERATION: Final = "CallClientOperations"

#: Operation names seen in Microsoft's material, in their canonical casing.
KNOWN_OPERATIONS: Final[tuple[str, ...]] = (
    "CallAgentInit",
    "StartCall",
    "Join",
    "EnterCall",
    "AcceptIncomingCall",
    "RejectIncomingCall",
    "HandleIncomingCall",
    "Hangup",
    "Drop",
    "AskDevicePermission",
    "PageHidden",
    "State-changed",
    "CallMode-changed",
    "Id-changed",
    "Role-changed",
    "SelectedDevice-changed",
    "MuteMicrophone",
    "UnmuteMicrophone",
    "StartAudio",
    "StopAudio",
    "SelectedMicrophoneChanged",
    "SelectedSpeakerChanged",
    "IsMuted-changed",
    "IsIncomingAudioMuted-changed",
    "CreateView",
    "DisposeView",
    "StartVideo",
    "StopVideo",
    "SwitchSource",
    "OptimalVideoCount-changed",
    "StartScreenShare",
    "StopScreenShare",
    "UserFacingDiagnostics",
)
_CANONICAL: Final[dict[str, str]] = {name.lower(): name for name in KNOWN_OPERATIONS}

#: Operations drawn with zero length by Call Diagnostics: no meaningful DurationMs.
POINT_EVENTS: Final[frozenset[str]] = frozenset(
    {
        "PageHidden",
        "SelectedMicrophoneChanged",
        "SelectedSpeakerChanged",
        "UserFacingDiagnostics",
    }
)


def canonical_operation(name: str) -> str:
    """Return the canonical casing of an operation name (``state-changed`` -> ``State-changed``).

    Unknown names are returned unchanged (stripped), so a new SDK operation still gets its own
    partition.
    """
    stripped = name.strip()
    return _CANONICAL.get(stripped.lower(), stripped)


def is_point_event(canonical_name: str) -> bool:
    """True for events without a duration: every ``*-changed`` event and :data:`POINT_EVENTS`."""
    return canonical_name in POINT_EVENTS or canonical_name.lower().endswith("-changed")


class ResultClass:
    """The three outcomes of an operation (string constants, same values in SQL and KQL)."""

    SUCCESS: Final = "success"
    EXPECTED_ERROR: Final = "expected_error"
    FAILURE: Final = "failure"


def classify_result(result_type: object) -> str:
    """Classify a ``ResultType`` value as in Microsoft's workbook (see module docstring).

    Matching is case-insensitive and on substrings, as the workbook's ``has_any`` is:
    ``Success``/``Succeeded`` -> success; ``ExpectedError``/``ExpectedClientError`` -> expected
    error; anything else, including empty and unknown values, -> failure.
    """
    text = "" if result_type is None else str(result_type).lower()
    if "success" in text or "succeeded" in text:
        return ResultClass.SUCCESS
    if text.startswith("expected"):  # ExpectedError, legacy ExpectedClientError
        return ResultClass.EXPECTED_ERROR
    return ResultClass.FAILURE


# --------------------------------------------------------------------------------------------
# SdkVersion
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SdkVersionInfo:
    """A parsed ``SdkVersion`` for display; the raw string stays the partition key."""

    raw: str
    version: str  # numeric part, e.g. "1.19.2.2"
    channel: str | None  # "beta", "stable", "rc", ... or None
    platform: str | None  # "web" for the JS format, else None (from OperationPayload.SdkPlatform)

    @property
    def display(self) -> str:
        return f"{self.version} ({self.channel})" if self.channel else self.version


_SDK_RE = re.compile(r"^\s*v?(?P<num>\d+(?:\.\d+)*)(?:[_-](?P<chan>[A-Za-z]+)[.\d]*)?\s*$")


def parse_sdk_version(raw: object) -> SdkVersionInfo:
    """Parse ``1.19.2.2_beta`` -> version ``1.19.2.2``, channel ``beta``, platform ``web``.

    Web builds carry a 4-part number and a ``_beta``/``_stable`` suffix; native builds (Android,
    iOS, Windows) have no documented format and are returned with ``platform=None``. Anything
    unparseable is kept verbatim as the version.
    """
    text = "" if raw is None else str(raw).strip()
    m = _SDK_RE.match(text)
    if not m:
        return SdkVersionInfo(raw=text, version=text or "unknown", channel=None, platform=None)
    chan = m.group("chan").lower() if m.group("chan") else None
    platform = "web" if chan in {"beta", "stable"} and m.group("num").count(".") == 3 else None
    return SdkVersionInfo(raw=text, version=m.group("num"), channel=chan, platform=platform)


# --------------------------------------------------------------------------------------------
# Duration histogram (DDSketch-style logarithmic bins)
# --------------------------------------------------------------------------------------------

#: Relative accuracy of every quantile read from the histogram.
HIST_ALPHA: Final = 0.02
#: Bin growth factor: bin ``i`` holds durations in ``(GAMMA**(i-1), GAMMA**i]`` milliseconds.
HIST_GAMMA: Final = (1 + HIST_ALPHA) / (1 - HIST_ALPHA)
_LN_GAMMA: Final = math.log(HIST_GAMMA)
#: Durations below 1 ms are counted as 1 ms (bin 0): the log has millisecond resolution.
MIN_DURATION_MS: Final = 1.0


def duration_bin(duration_ms: float | np.ndarray) -> int | np.ndarray:
    """Return the histogram bin of a duration: ``ceil(ln(max(d, 1)) / ln(gamma))``.

    The same formula is written in SQL (DuckDB) and KQL; keep them in sync.
    """
    d = np.maximum(np.asarray(duration_ms, dtype="float64"), MIN_DURATION_MS)
    bins = np.ceil(np.log(d) / _LN_GAMMA).astype("int32")
    return int(bins) if bins.ndim == 0 else bins


def bin_value(bin_index: int | np.ndarray) -> float | np.ndarray:
    """Representative duration of a bin, ``2 * gamma**i / (gamma + 1)``.

    For every duration ``d >= 1`` in bin ``i``: ``|bin_value(i) - d| <= HIST_ALPHA * d``.
    """
    v = 2.0 * np.power(HIST_GAMMA, np.asarray(bin_index, dtype="float64")) / (HIST_GAMMA + 1.0)
    v = np.maximum(v, MIN_DURATION_MS)
    return float(v) if np.ndim(v) == 0 else v


# --------------------------------------------------------------------------------------------
# Bucket aggregates
# --------------------------------------------------------------------------------------------

#: Partition key of one bucket row.
AGG_KEY: Final[tuple[str, ...]] = ("operation_name", "sdk_version", "bucket_start")

#: Columns of the bucket aggregate frame, with pandas dtypes. Every column but the key is a sum,
#: so two frames merge exactly by concatenating and summing per key (late data adds up).
AGG_COLUMNS: Final[dict[str, str]] = {
    "operation_name": "string",  # canonical casing
    "sdk_version": "string",  # raw SdkVersion; "" when missing
    "bucket_start": "datetime64[ns, UTC]",  # floor(CallClientTimeStamp, bucket), epoch aligned
    "calls": "int64",  # deduplicated operations
    "failures": "int64",  # classify_result == failure
    # Distinct calls (CallId; the OperationId when it is empty) behind the failures: one bad
    # call can fail dozens of CreateView operations at once. A distinct count, so summing two
    # frames (late data) can count a call twice: it errs towards ``failures``.
    "failed_calls": "int64",
    # The same calls, each weighted 1 / the number of versions of the operation it failed in
    # within the bucket: summed over versions, the operation's distinct failing calls (a group
    # call's legs run several SDK versions).
    "failed_calls_op": "float64",
    # Each failure weighted by how many failures its call had in the partition over the same
    # read (sum of S over this bucket's failures, S = the call's failures): summed over a window
    # and divided by ``failures``, the failure-weighted mean cluster size E[S^2] / E[S], the
    # factor by which failures coming in calls inflate the variance of a failure count.
    "failure_cluster": "float64",
    # The same with S counted over every version of the operation (the fleet's clusters: a
    # group call's legs run several SDK versions); summed over versions, the fleet's value.
    "failure_cluster_op": "float64",
    "expected_errors": "int64",  # classify_result == expected_error
    "dur_n": "int64",  # operations with a usable duration (not point events, numeric, >= 0)
    "log_dur_sum": "float64",  # sum of ln(max(DurationMs, 1))
    "log_dur_sumsq": "float64",  # sum of ln(max(DurationMs, 1)) ** 2
}

#: How far before a read's arrival window the earlier failures of its failing calls are looked
#: up for ``failure_cluster`` (a call's failures arrive over its length: minutes to an hour,
#: rarely more), so consecutive windows add up to one read of both.
CLUSTER_LOOKBACK: Final = timedelta(hours=2)

#: Long-format sparse histogram: one row per (key, bin) with a nonzero count.
HIST_COLUMNS: Final[dict[str, str]] = {
    "operation_name": "string",
    "sdk_version": "string",
    "bucket_start": "datetime64[ns, UTC]",
    "bin": "int32",
    "count": "int64",
}

#: How far before a read's arrival window a dedup key counts as already seen (both sources):
#: a copy re-ingested up to this long after the first is a duplicate even when the two copies
#: fall in different reads or chunks. Data export retries can duplicate records for up to 12 h.
DEDUP_LOOKBACK: Final = timedelta(hours=12)

#: Timestamps outside ``[TIMESTAMP_MIN, TIMESTAMP_MAX)`` are treated as unparseable: clients set
#: ``CallClientTimeStamp`` themselves, and a year 2999 or 0001 cannot be a bucket (nor fit the
#: nanosecond timestamps the frames use). Buckets are aligned on the epoch, the lower bound.
TIMESTAMP_MIN: Final = datetime(1970, 1, 1, tzinfo=UTC)
TIMESTAMP_MAX: Final = datetime(2100, 1, 1, tzinfo=UTC)

#: Default cap on the partitions (operation, SDK version) one read models: the busiest are
#: kept, the rest counted under ``partition_cap`` (junk operation names must not drive memory).
MAX_PARTITIONS: Final = 5000

#: Rows left out of the aggregates, each counted under one reason (the first that matches).
DROP_REASONS: Final[tuple[str, ...]] = (
    "malformed_record",  # a line that cannot be decoded: not JSON, invalid UTF-8, oversized
    "missing_operation_name",  # empty OperationName
    "pseudo_operation",  # OperationName == "CallClientOperations"
    "missing_operation_id",  # empty OperationId (Microsoft's queries drop these too)
    "invalid_timestamp",  # CallClientTimeStamp empty, unparseable or out of range
    "duplicate",  # same (OperationId, CallClientTimeStamp) seen before
    "partition_cap",  # a partition beyond the read's cap (MAX_PARTITIONS busiest kept)
)

#: Rows kept in the aggregates but with a defect, each counted under one reason.
FLAG_REASONS: Final[tuple[str, ...]] = (
    "invalid_duration",  # non-point operation whose DurationMs is empty, non-numeric or < 0
    "invalid_payload_json",  # OperationPayload present but not valid JSON
    "string_number",  # DurationMs or ResultSignature arrived as a string
    "noncanonical_operation_case",  # e.g. "state-changed"
)


@dataclass
class BucketAggregates:
    """Bucket aggregates of call client operations: what a source produces.

    ``stats`` has :data:`AGG_COLUMNS`, one row per :data:`AGG_KEY`; ``hist`` has
    :data:`HIST_COLUMNS`. ``dropped`` and ``flagged`` count rows per reason
    (:data:`DROP_REASONS`, :data:`FLAG_REASONS`); ``rows_read`` counts input rows before any drop.
    Invariant: ``rows_read == stats.calls.sum() + sum(dropped.values())`` for a source's output.
    ``partitions_left_out`` counts the partitions the cap left out (their rows are
    ``dropped["partition_cap"]``).
    """

    stats: pd.DataFrame
    hist: pd.DataFrame
    dropped: dict[str, int] = field(default_factory=dict)
    flagged: dict[str, int] = field(default_factory=dict)
    rows_read: int = 0
    partitions_left_out: int = 0


def fill_failed_calls(stats: pd.DataFrame) -> pd.DataFrame:
    """``stats`` with ``failed_calls``, ``failed_calls_op``, ``failure_cluster`` and
    ``failure_cluster_op`` present: where they are missing (frames and stores written before
    the columns existed, hand-made frames) every failure counts as its own call of one version,
    which is what the tests assumed before. Returns
    ``stats`` itself when nothing is missing."""

    def filled(name: str, fallback: pd.Series) -> pd.Series | None:
        if name not in stats.columns:
            return fallback
        col = stats[name]
        return col.fillna(fallback) if col.isna().any() else None

    fc = filled("failed_calls", stats["failures"])
    if fc is not None:
        stats = stats.assign(failed_calls=fc)
    fco = filled("failed_calls_op", stats["failed_calls"].astype("float64"))
    if fco is not None:
        stats = stats.assign(failed_calls_op=fco)
    # Unknown clusters read as clusters of one (no inflation), as before the columns existed.
    cl = filled("failure_cluster", stats["failures"].astype("float64"))
    if cl is not None:
        stats = stats.assign(failure_cluster=cl)
    clo = filled("failure_cluster_op", stats["failure_cluster"].astype("float64"))
    if clo is not None:
        stats = stats.assign(failure_cluster_op=clo)
    return stats


def empty_aggregates() -> BucketAggregates:
    """An empty :class:`BucketAggregates` with the right columns and dtypes."""
    stats = pd.DataFrame({c: pd.Series(dtype=t) for c, t in AGG_COLUMNS.items()})
    hist = pd.DataFrame({c: pd.Series(dtype=t) for c, t in HIST_COLUMNS.items()})
    return BucketAggregates(stats=stats, hist=hist)
