"""File source properties (hypothesis) and the simulator's output in every format."""

from __future__ import annotations

import zlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector import aggregate, schema
from detector.source.files import read_aggregates
from tests.fixtures_files import FORMATS, file_name, row, write_rows

BUCKET = timedelta(minutes=5)

_ops = st.sampled_from(
    ["Join", "join", "StartVideo", "State-changed", "UserFacingDiagnostics", "CallClientOperations",
     "", None, "NewOp"]
)  # fmt: skip
_rts = st.sampled_from(["Succeeded", "Success", "ExpectedError", "Failed", "Weird", "", None])
_durs = st.one_of(st.none(), st.integers(-5, 100_000))
_minutes = st.integers(0, 40)
_ids = st.one_of(st.none(), st.sampled_from([f"id{i}" for i in range(30)]))


@st.composite
def _rows(draw: st.DrawFn) -> list[dict[str, Any]]:
    n = draw(st.integers(1, 40))
    out = []
    for _ in range(n):
        m = draw(_minutes)
        out.append(
            row(
                op=draw(_ops),
                opid=draw(_ids),
                cct=f"2026-11-02T10:{m:02d}:{draw(st.integers(0, 59)):02d}Z",
                tg=f"2026-11-02T11:{draw(_minutes):02d}:00Z",
                rt=draw(_rts),
                dur=draw(_durs),
                sdk=draw(st.sampled_from(["1.0", "2.0_beta", None])),
            )
            | {"OperationPayload": draw(st.sampled_from(['{"a":1}', "{bad", None]))}
        )
    return out


def _assert_same(
    a: schema.BucketAggregates, b: schema.BucketAggregates, *, merged: bool = False
) -> None:
    """``a`` equals ``b``; with ``merged`` (``a`` summed from parts), ``failed_calls`` (a
    distinct count: one call's failures may sit in two parts) lies between ``b``'s and the
    failures, and the failure clusters (counted within each part) between the failures and
    ``b``'s."""
    if merged:
        fc, whole = a.stats["failed_calls"], b.stats["failed_calls"]
        assert (fc >= whole).all() and (fc <= a.stats["failures"]).all()
        # per version, a call's weight is 1 / the versions it failed in (as seen by its part)
        assert (a.stats["failed_calls_op"] <= fc + 1e-9).all()
        assert (a.stats["failed_calls_op"] >= b.stats["failed_calls_op"] - 1e-9).all()
        # a call's cluster is weighed within each part (plus, for arrival windows, its
        # failures that arrived before): at least one failure each; per partition, at most the
        # whole read's (the operation's, per operation; equal for arrival windows: see
        # test_arrival_windows_tile)
        for c, key in (
            ("failure_cluster", ["operation_name", "sdk_version"]),
            ("failure_cluster_op", ["operation_name"]),
        ):
            assert (a.stats[c] >= a.stats["failures"] - 1e-9).all()
            totals_a = a.stats.groupby(key, observed=True)[c].sum()
            totals_b = b.stats.groupby(key, observed=True)[c].sum()
            assert (totals_a <= totals_b + 1e-9).all()
        a = schema.BucketAggregates(
            a.stats.assign(
                failed_calls=whole,
                failed_calls_op=b.stats["failed_calls_op"],
                failure_cluster=b.stats["failure_cluster"],
                failure_cluster_op=b.stats["failure_cluster_op"],
            ),
            a.hist,
            a.dropped,
            a.flagged,
            a.rows_read,
        )
    pd.testing.assert_frame_equal(a.stats, b.stats, check_exact=False, rtol=1e-9, atol=1e-9)
    key = [*schema.AGG_KEY, "bin"]
    pd.testing.assert_frame_equal(
        a.hist.sort_values(key).reset_index(drop=True),
        b.hist.sort_values(key).reset_index(drop=True),
    )
    assert a.dropped == b.dropped
    assert a.flagged == b.flagged
    assert a.rows_read == b.rows_read


def _key_split(r: dict[str, Any], parts: int, salt: int) -> int:
    # Copies of one operation (same OperationId and CallClientTimeStamp) stay in one part:
    # merging per-part aggregates cannot see a duplicate across parts (nor can KQL).
    key = f"{r['OperationId']}|{r['CallClientTimeStamp']}|{salt}".encode()
    return zlib.crc32(key) % parts


_SETTINGS = settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@_SETTINGS
@given(rows=_rows(), parts=st.integers(1, 3), salt=st.integers(0, 9), fmt=st.sampled_from(FORMATS))
def test_split_and_merge_in_any_order_equals_all_at_once(
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[dict[str, Any]],
    parts: int,
    salt: int,
    fmt: str,
) -> None:
    tmp = tmp_path_factory.mktemp("split")
    whole = read_aggregates(
        write_rows(rows, tmp / file_name("parquet", "whole"), "parquet"), bucket=BUCKET
    )

    # totals conserved, every dropped row counted under one reason
    assert whole.rows_read == len(rows)
    assert whole.rows_read == whole.stats["calls"].sum() + sum(whole.dropped.values())
    assert set(whole.dropped) == set(schema.DROP_REASONS)
    assert (whole.stats["failures"] + whole.stats["expected_errors"] <= whole.stats["calls"]).all()
    assert whole.hist["count"].sum() == whole.stats["dur_n"].sum()

    groups: list[list[dict[str, Any]]] = [[] for _ in range(parts)]
    for r in rows:
        groups[_key_split(r, parts, salt)].append(r)
    paths = [
        write_rows(g, tmp / "parts" / file_name(fmt, f"p{i}"), fmt)
        for i, g in enumerate(groups)
        if g
    ]
    # one read over the directory of parts (any format) == the single Parquet file
    _assert_same(read_aggregates(tmp / "parts", bucket=BUCKET), whole)
    # per-part aggregates merged in reverse order == the whole
    merged = aggregate.merge(*[read_aggregates(p, bucket=BUCKET) for p in reversed(paths)])
    _assert_same(merged, whole, merged=True)
    # every failure has a call: at least one failing call wherever there are failures
    st_ = whole.stats
    assert (
        (st_["failed_calls"] >= (st_["failures"] > 0)) & (st_["failed_calls"] <= st_["failures"])
    ).all()


@_SETTINGS
@given(rows=_rows())
def test_arrival_windows_tile(
    tmp_path_factory: pytest.TempPathFactory, rows: list[dict[str, Any]]
) -> None:
    """Consecutive arrival windows add up to the whole when copies arrive together."""
    from datetime import UTC, datetime

    # give every copy of a key the same arrival time, so a window never splits a duplicate
    first: dict[tuple[Any, Any], Any] = {}
    for r in rows:
        r["TimeGenerated"] = first.setdefault(
            (r["OperationId"], r["CallClientTimeStamp"]), r["TimeGenerated"]
        )
    path = write_rows(rows, tmp_path_factory.mktemp("win") / "w.jsonl", "jsonl")
    whole = read_aggregates(path, bucket=BUCKET)
    t = [datetime(2026, 11, 2, 11, m, tzinfo=UTC) for m in (0, 13, 27, 41)]
    parts = [
        read_aggregates(path, bucket=BUCKET, arrival_window=(a, b))
        for a, b in zip(t, t[1:], strict=False)
    ]
    merged = aggregate.merge(*parts)
    # each window weighs its failures with the same calls' earlier arrivals (look-back): the
    # clusters add up per partition (the operation's, per operation) to the whole read's
    for c, key in (
        ("failure_cluster", ["operation_name", "sdk_version"]),
        ("failure_cluster_op", ["operation_name"]),
    ):
        got = merged.stats.groupby(key, observed=True)[c].sum()
        want = whole.stats.groupby(key, observed=True)[c].sum()
        pd.testing.assert_series_equal(got, want, check_exact=False, rtol=1e-9)
    _assert_same(merged, whole, merged=True)


# --------------------------------------------------------------------------------------------
# The simulator's output, written in every format, reads back to identical aggregates.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, schema.BucketAggregates]:
    sim = pytest.importorskip("detector.simulate")
    out = {}
    for fmt in FORMATS:
        d: Path = tmp_path_factory.mktemp(f"sim-{fmt}")
        sim.simulate(d, sim.SimSpec(days=1, seed=7, calls_per_hour=15), fmt=fmt)
        out[fmt] = read_aggregates(d, bucket=BUCKET)
    return out


@pytest.mark.parametrize("fmt", FORMATS[1:])
def test_simulator_output_is_format_independent(simulated, fmt: str) -> None:
    a, b = simulated["parquet"], simulated[fmt]
    assert len(a.stats) > 100 and a.rows_read > 1000
    pd.testing.assert_frame_equal(b.stats, a.stats, check_exact=False, rtol=1e-12)
    key = [*schema.AGG_KEY, "bin"]
    pd.testing.assert_frame_equal(
        b.hist.sort_values(key).reset_index(drop=True),
        a.hist.sort_values(key).reset_index(drop=True),
    )
    assert b.dropped == a.dropped
    assert b.rows_read == a.rows_read
    # string-typed numbers exist only where the format has types for them (JSON)
    assert {k: v for k, v in b.flagged.items() if k != "string_number"} == {
        k: v for k, v in a.flagged.items() if k != "string_number"
    }


def test_simulator_quirks_are_counted(simulated) -> None:
    j = simulated["jsonl"]
    assert j.flagged["string_number"] > 0
    assert j.flagged["noncanonical_operation_case"] > 0
    assert j.dropped["duplicate"] > 0


# --------------------------------------------------------------------------------------------
# Hostile rows (issue 21): no exception escapes, every row is accounted for, in every format.
# --------------------------------------------------------------------------------------------

_hostile_text = st.one_of(
    st.none(),
    st.text(max_size=20),
    st.sampled_from(['"', "'", ",", ";", "\t", "|", "\\", "\x00", "\n", "\r\n", "{", "[1]",
                     "null", "CallClientOperations", " ", "\u202e", "\ufeff", "Join\x00"]),
)  # fmt: skip
_hostile_time = st.one_of(
    st.sampled_from(
        ["2026-11-02T10:20:00Z", "2999-01-01T00:00:00Z", "0001-01-01T00:00:00Z",
         "1969-12-31T23:59:59Z", "2100-01-01T00:00:00Z", "2026-11-02T10:20:00+14:00",
         "11/2/2026, 10:20:00.000 AM", "garbage", "", None]
    ),
    st.text(max_size=12),
)  # fmt: skip
_hostile_number = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from(["NaN", "inf", "-1", "1e308", "1e400", "0x10", " 12 ", "abc", ""]),
)
# Whole lines for the line-based formats: undecodable bytes, NULs, broken or deep JSON.
_raw_line = st.one_of(
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b" ").replace(b"\r", b" ")),
    st.sampled_from(
        [b"not json", b'{"TimeGenerated": "2026-11-02T1', b"[1, 2]", b"\xff\xfe{}", b"{}",
         b'{"a":' * 3000 + b"1" + b"}" * 3000, b'{"OperationName": "\x00"}', b"null"]
    ),
)  # fmt: skip


@st.composite
def _hostile_rows(draw: st.DrawFn) -> list[dict[str, Any]]:
    out = [row(opid="anchor")]  # one sound row, so every file is recognisably an export
    for _ in range(draw(st.integers(1, 12))):
        out.append(
            row(
                op=draw(st.one_of(_ops, _hostile_text)),
                opid=draw(st.one_of(_ids, _hostile_text)),
                cct=draw(_hostile_time),
                tg=draw(_hostile_time),
                rt=draw(st.one_of(_rts, _hostile_text)),
                dur=draw(_hostile_number),
                sdk=draw(_hostile_text),
            )
            | {"ResultSignature": draw(_hostile_number), "OperationPayload": draw(_hostile_text)}
            | {"CallId": draw(_hostile_text), "UserAgent": draw(_hostile_text)}
        )
    return out


def _parquet_safe(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Parquet columns are typed: a mixed column is written as text (as an exporter would).
    return [{k: (str(v) if isinstance(v, int) and k != "DurationMs" else v) for k, v in r.items()}
            for r in rows]  # fmt: skip


def _check_accounted(agg: schema.BucketAggregates) -> None:
    assert agg.rows_read == agg.stats["calls"].sum() + sum(agg.dropped.values())
    assert set(agg.dropped) == set(schema.DROP_REASONS)
    assert (agg.stats["calls"] >= 0).all() and (agg.hist["count"] > 0).all()


@_SETTINGS
@given(
    rows=_hostile_rows(),
    raw=st.lists(st.tuples(st.integers(1, 20), _raw_line), max_size=4),
    fmt=st.sampled_from(FORMATS),
)
def test_hostile_rows_are_all_accounted_for(
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[dict[str, Any]],
    raw: list[tuple[int, bytes]],
    fmt: str,
) -> None:
    """Whatever the rows hold, a read never raises, ``rows_read == kept + dropped``, every
    structured row is a row, and a windowed read over every plausible arrival time (rows
    without one arrive with their file) reads what the unwindowed read reads."""
    from datetime import UTC, datetime

    tmp = tmp_path_factory.mktemp("hostile")
    path = write_rows(_parquet_safe(rows) if fmt == "parquet" else rows, tmp / file_name(fmt), fmt)
    lines = 0
    if fmt in ("jsonl", "diagnostic") and raw:
        content = path.read_bytes().splitlines(keepends=True)
        for at, line in raw:
            content.insert(min(at, len(content)), line + b"\n")
        path.write_bytes(b"".join(content))
        lines = sum(1 for _, line in raw if line.strip(b" \t"))
    whole = read_aggregates(path, bucket=BUCKET)
    _check_accounted(whole)
    assert whole.rows_read == len(rows) + lines
    window = (datetime(1970, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    windowed = read_aggregates(path, bucket=BUCKET, arrival_window=window)
    _check_accounted(windowed)
    assert windowed.rows_read == whole.rows_read
    assert windowed.stats["calls"].sum() == whole.stats["calls"].sum()
