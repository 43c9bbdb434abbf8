"""File source: semantics through the real DuckDB path on real files in every format."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest

from detector import aggregate, schema
from detector.errors import InputError
from detector.source.files import RESULT_CLASS_SQL, read_aggregates
from tests.fixtures_files import FORMATS, file_name, row, write_rows

BUCKET = timedelta(minutes=5)
DATA = Path(__file__).parent / "data" / "files"

# --------------------------------------------------------------------------------------------
# The case table: one row each, with what it must become. ("drop", reason) or
# ("keep", operation, result class, duration usable, flags).
# --------------------------------------------------------------------------------------------

S, E, F = "success", "expected_error", "failure"
CASES: list[tuple[str, dict[str, Any], tuple[Any, ...]]] = [
    ("Succeeded", row(opid="a1", rt="Succeeded"), ("keep", "Join", S, True, ())),
    ("Success", row(opid="a2", rt="Success"), ("keep", "Join", S, True, ())),
    ("lower succeeded", row(opid="a3", rt="succeeded"), ("keep", "Join", S, True, ())),
    ("upper SUCCESS", row(opid="a4", rt="SUCCESS"), ("keep", "Join", S, True, ())),
    ("ExpectedError", row(opid="a5", rt="ExpectedError"), ("keep", "Join", E, True, ())),
    ("ExpectedClientError", row(opid="a6", rt="ExpectedClientError"), ("keep", "Join", E, True, ())),
    ("Failed", row(opid="a7", rt="Failed"), ("keep", "Join", F, True, ())),
    ("UnexpectedClientError", row(opid="a8", rt="UnexpectedClientError"), ("keep", "Join", F, True, ())),
    ("UnexpectedServerError", row(opid="a9", rt="UnexpectedServerError"), ("keep", "Join", F, True, ())),
    ("empty ResultType", row(opid="a10", rt=None), ("keep", "Join", F, True, ())),
    ("unknown ResultType", row(opid="a11", rt="Weird"), ("keep", "Join", F, True, ())),
    ("point event", row(op="State-changed", opid="b1", dur=0), ("keep", "State-changed", S, False, ())),
    ("point event lower case", row(op="state-changed", opid="b2", dur=3),
     ("keep", "State-changed", S, False, ("noncanonical_operation_case",))),
    ("UFD without duration", row(op="UserFacingDiagnostics", opid="b3", dur=None),
     ("keep", "UserFacingDiagnostics", S, False, ())),
    ("UFD recovery, same id, later timestamp",
     row(op="UserFacingDiagnostics", opid="b3", cct="2026-11-02T10:02:00Z", dur=None),
     ("keep", "UserFacingDiagnostics", S, False, ())),
    ("empty duration", row(opid="c1", dur=None), ("keep", "Join", S, False, ("invalid_duration",))),
    ("negative duration", row(opid="c2", dur=-5), ("keep", "Join", S, False, ("invalid_duration",))),
    ("zero duration", row(opid="c3", dur=0), ("keep", "Join", S, True, ())),
    ("invalid payload JSON", row(opid="c4") | {"OperationPayload": "{bad"}, ("keep", "Join", S, True, ("invalid_payload_json",))),
    ("empty payload", row(opid="c5") | {"OperationPayload": None}, ("keep", "Join", S, True, ())),
    ("lower-case op", row(op="join", opid="c6"), ("keep", "Join", S, True, ("noncanonical_operation_case",))),
    ("op with spaces", row(op=" Join ", opid="c7"), ("keep", "Join", S, True, ("noncanonical_operation_case",))),
    ("unknown op kept", row(op="NewFancyOp", opid="c8"), ("keep", "NewFancyOp", S, True, ())),
    ("missing SdkVersion", row(opid="c9", sdk=None), ("keep", "Join", S, True, ())),
    ("7 fractional digits", row(opid="c10", cct="2026-11-02T10:01:00.1234567Z"), ("keep", "Join", S, True, ())),
    ("offset timestamp", row(opid="c11", cct="2026-11-02T11:01:00+01:00"), ("keep", "Join", S, True, ())),
    ("missing name", row(op=None, opid="d1"), ("drop", "missing_operation_name")),
    ("blank name", row(op="   ", opid="d2"), ("drop", "missing_operation_name")),
    ("pseudo operation", row(op="CallClientOperations", opid="d3"), ("drop", "pseudo_operation")),
    ("pseudo operation casing", row(op="callclientoperations", opid="d4"), ("drop", "pseudo_operation")),
    ("missing id", row(opid=None), ("drop", "missing_operation_id")),
    ("missing id and name: first reason", row(op=None, opid=None), ("drop", "missing_operation_name")),
    ("missing timestamp", row(opid="d5", cct=None), ("drop", "invalid_timestamp")),
    ("bad timestamp", row(opid="d6", cct="yesterday"), ("drop", "invalid_timestamp")),
    # Duplicates: the copy with the latest TimeGenerated is kept (here: the success).
    ("dup, earlier copy", row(opid="e1", rt="Failed", tg="2026-11-02T10:20:00Z"), ("drop", "duplicate")),
    ("dup, later copy", row(opid="e1", rt="Succeeded", tg="2026-11-02T10:30:00Z"), ("keep", "Join", S, True, ())),
    ("dup, exact copy", row(opid="e2"), ("keep", "Join", S, True, ())),
    ("dup, exact copy again", row(opid="e2"), ("drop", "duplicate")),
]  # fmt: skip


def _expected() -> dict[str, Any]:
    dropped = dict.fromkeys(schema.DROP_REASONS, 0)
    flagged = dict.fromkeys(schema.FLAG_REASONS, 0)
    calls: Counter[str] = Counter()
    cls: Counter[str] = Counter()
    dur_n = 0
    for _, _, exp in CASES:
        if exp[0] == "drop":
            dropped[exp[1]] += 1
            continue
        _, op, c, dur_ok, flags = exp
        calls[op] += 1
        cls[c] += 1
        dur_n += dur_ok
        for f in flags:
            flagged[f] += 1
    return {"dropped": dropped, "flagged": flagged, "calls": calls, "cls": cls, "dur_n": dur_n}


@pytest.fixture(scope="module", params=FORMATS)
def case_aggs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    fmt = request.param
    path = write_rows([r for _, r, _ in CASES], tmp_path_factory.mktemp(fmt) / file_name(fmt), fmt)
    return fmt, read_aggregates(path, bucket=BUCKET)


def test_case_table_drops(case_aggs) -> None:
    _, agg = case_aggs
    exp = _expected()
    assert agg.dropped == exp["dropped"]
    assert agg.rows_read == len(CASES)
    assert agg.rows_read == agg.stats["calls"].sum() + sum(agg.dropped.values())


def test_case_table_flags(case_aggs) -> None:
    _, agg = case_aggs
    assert agg.flagged == _expected()["flagged"]


def test_case_table_counts(case_aggs) -> None:
    _, agg = case_aggs
    exp = _expected()
    per_op = agg.stats.groupby("operation_name")["calls"].sum().to_dict()
    assert per_op == dict(exp["calls"])
    fails, expd = agg.stats["failures"].sum(), agg.stats["expected_errors"].sum()
    assert (fails, expd) == (exp["cls"][F], exp["cls"][E])
    assert agg.stats["dur_n"].sum() == exp["dur_n"]
    assert agg.hist["count"].sum() == exp["dur_n"]  # point events are not in the histogram
    assert set(agg.stats["sdk_version"]) == {"1.30.1.0_stable", ""}


def test_case_table_contract_dtypes(case_aggs) -> None:
    _, agg = case_aggs
    assert {c: str(t) for c, t in agg.stats.dtypes.items()} == {
        c: str(pd.Series(dtype=t).dtype) for c, t in schema.AGG_COLUMNS.items()
    }
    assert {c: str(t) for c, t in agg.hist.dtypes.items()} == {
        c: str(pd.Series(dtype=t).dtype) for c, t in schema.HIST_COLUMNS.items()
    }
    assert not agg.stats.duplicated(list(schema.AGG_KEY)).any()


def test_log_duration_sums_and_bins_follow_the_schema(tmp_path: Path) -> None:
    durs = [0, 1, 2, 577, 1000, 59_999]
    rows = [row(opid=f"x{i}", dur=d) for i, d in enumerate(durs)]
    agg = read_aggregates(write_rows(rows, tmp_path / "d.jsonl", "jsonl"), bucket=BUCKET)
    import numpy as np

    logs = np.log(np.maximum(np.array(durs, dtype=float), 1.0))
    assert agg.stats["log_dur_sum"].iloc[0] == pytest.approx(logs.sum(), rel=1e-12)
    assert agg.stats["log_dur_sumsq"].iloc[0] == pytest.approx((logs**2).sum(), rel=1e-12)
    want = Counter(int(b) for b in schema.duration_bin(np.array(durs)))
    assert dict(zip(agg.hist["bin"], agg.hist["count"], strict=True)) == want


def test_buckets_are_epoch_aligned_floors_of_client_time(tmp_path: Path) -> None:
    rows = [
        row(opid="1", cct="2026-11-02T10:00:00Z"),
        row(opid="2", cct="2026-11-02T10:04:59.999Z"),
        row(opid="3", cct="2026-11-02T10:05:00Z"),
        row(opid="4", cct="2026-11-02T09:59:59Z", tg="2026-11-02T13:00:00Z"),  # late arrival
    ]
    agg = read_aggregates(write_rows(rows, tmp_path / "b.parquet", "parquet"), bucket=BUCKET)
    got = dict(zip(agg.stats["bucket_start"], agg.stats["calls"], strict=True))
    ts = pd.Timestamp
    assert got == {
        ts("2026-11-02T09:55Z"): 1,
        ts("2026-11-02T10:00Z"): 2,
        ts("2026-11-02T10:05Z"): 1,
    }
    hourly = read_aggregates(tmp_path / "b.parquet", bucket=timedelta(hours=1))
    assert hourly.stats["calls"].tolist() == [1, 3]


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_wide_codes_take_the_general_path_with_the_same_results(tmp_path: Path, fmt: str) -> None:
    """Timestamps decades apart at a one-minute bucket do not fit the uint32 codes: that read
    takes the general path and must equal the merge of two reads that fit them."""
    near = [
        row(opid="a", dur=5, tg="2026-11-02T10:20:00Z"),
        row(opid="a", dur=7, tg="2026-11-02T10:21:00Z"),  # later copy: kept
        row(opid="b", rt="Failed", dur=None, tg="2026-11-02T10:20:00Z"),
        row(opid="b", rt="ExpectedError", dur=3, tg="2026-11-02T10:20:00Z"),  # tie: content
        row(opid="b", rt="Success", dur=3, tg="2026-11-02T10:20:00Z"),
        row(op="State-changed", opid="c", dur=None),
        row(op="join", opid="d", cct="2026-11-02T11:59:00Z", dur=10**15),
        row(opid=" ", cct="2026-11-02T10:02:00Z"),
        row(opid="e", cct=None),
        row(opid="g", rt="Failure") | {"CallId": "x"},
        row(opid="h", rt="Failure") | {"CallId": "x"},  # same call: one failing call
        row(opid="i", rt="Failure") | {"CallId": "y"},
    ]
    far = [
        row(opid="f", cct="1971-01-01T00:00:00Z", dur=2),
        row(opid="f", cct="1971-01-01T00:00:00Z"),
    ]
    minute = timedelta(minutes=1)
    whole = read_aggregates(
        write_rows(near + far, tmp_path / file_name(fmt, "all"), fmt), bucket=minute
    )
    parts = [
        read_aggregates(write_rows(rows, tmp_path / "p" / file_name(fmt, name), fmt), bucket=minute)
        for name, rows in (("near", near), ("far", far))
    ]
    merged = aggregate.merge(*parts)
    pd.testing.assert_frame_equal(whole.stats, merged.stats, check_exact=False, rtol=1e-12)
    pd.testing.assert_frame_equal(whole.hist, merged.hist)
    assert whole.dropped == merged.dropped
    assert whole.dropped["duplicate"] == 4
    join = whole.stats[whole.stats["operation_name"] == "Join"]
    assert int((join["failures"] - join["failed_calls"]).sum()) == 1  # g and h share call x
    assert whole.flagged == merged.flagged
    assert whole.rows_read == merged.rows_read == len(near) + len(far)


def test_arrival_window_selects_by_time_generated(tmp_path: Path) -> None:
    rows = [
        row(opid="1", tg="2026-11-02T09:59:59Z"),
        row(opid="2", tg="2026-11-02T10:00:00Z"),  # start is inclusive
        row(opid="3", tg="2026-11-02T10:59:59Z", cct="2026-11-01T23:00:00Z"),  # very late
        row(opid="4", tg="2026-11-02T11:00:00Z"),  # end is exclusive
        row(op=None, opid="5", tg="2026-11-02T10:30:00Z"),  # dropped, but read
    ]
    path = write_rows(rows, tmp_path / "w.csv", "csv")
    window = (datetime(2026, 11, 2, 10, tzinfo=UTC), datetime(2026, 11, 2, 11, tzinfo=UTC))
    agg = read_aggregates(path, bucket=BUCKET, arrival_window=window)
    assert agg.rows_read == 3
    assert agg.stats["calls"].sum() == 2
    assert agg.dropped["missing_operation_name"] == 1
    assert agg.stats["bucket_start"].min() == pd.Timestamp("2026-11-01T23:00Z")


# --------------------------------------------------------------------------------------------
# String-typed numbers: visible in JSON and in string-typed Parquet columns; CSV has no types.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "string_numbers"),
    # Parquet: one string value makes the whole column text, so every row is a string number.
    [("jsonl", 2), ("diagnostic", 2), ("csv", 0), ("parquet", 4)],
)
def test_string_numbers(tmp_path: Path, fmt: str, string_numbers: int) -> None:
    rows = [
        row(opid="1", dur="577"),  # string number: counted, and its duration is used
        row(opid="2", dur=100) | {"ResultSignature": "200"},  # string ResultSignature
        row(opid="3", dur="abc"),  # not a number: invalid duration, not a string number
        row(opid="4", dur=12),  # a number
    ]
    path = write_rows(rows, tmp_path / file_name(fmt), fmt)
    agg = read_aggregates(path, bucket=BUCKET)
    assert agg.flagged["string_number"] == string_numbers
    assert agg.flagged["invalid_duration"] == 1
    assert agg.stats["dur_n"].sum() == 3


# --------------------------------------------------------------------------------------------
# ResultType classification: the SQL CASE equals schema.classify_result.
# --------------------------------------------------------------------------------------------

RESULT_TYPES = [
    "Succeeded", "Success", "succeeded", "SUCCESS", "PartialSuccess", "NotSucceeded",
    "ExpectedError", "ExpectedClientError", "expectederror", "Expected", "UnexpectedClientError",
    "UnexpectedServerError", "Failed", "", " ExpectedError", "Weird", "200", None,
]  # fmt: skip


def _sql_classes(values: list[str | None]) -> list[str]:
    con = duckdb.connect()
    con.execute("CREATE TABLE t (i INTEGER, rt VARCHAR)")
    con.executemany("INSERT INTO t VALUES (?, ?)", list(enumerate(values)))
    sql = f"SELECT {RESULT_CLASS_SQL.format(rt='rt')} FROM t ORDER BY i"
    return [r[0] for r in con.execute(sql).fetchall()]


def test_result_class_sql_equals_python() -> None:
    assert _sql_classes(RESULT_TYPES) == [schema.classify_result(v) for v in RESULT_TYPES]


# --------------------------------------------------------------------------------------------
# Formats, discovery and bad input
# --------------------------------------------------------------------------------------------


def test_all_formats_in_one_directory_add_up(tmp_path: Path) -> None:
    parts = []
    for i, fmt in enumerate(FORMATS):
        rows = [row(opid=f"{fmt}-{j}", rt="Failed" if j == 0 else "Succeeded") for j in range(3)]
        parts.append(write_rows(rows, tmp_path / "mixed" / file_name(fmt, f"part{i}"), fmt))
    (tmp_path / "mixed" / "incidents.json").write_text('[{"operation_name": "Join"}]')
    (tmp_path / "mixed" / "notes.txt").write_text("ignored: not a supported suffix")
    agg = read_aggregates(tmp_path / "mixed", bucket=BUCKET)
    assert agg.rows_read == 12
    assert agg.stats["failures"].sum() == 4
    by_glob = read_aggregates(str(tmp_path / "mixed" / "part*.*"), bucket=BUCKET)
    assert by_glob.rows_read == 9  # part0.parquet, part1.jsonl, part2.csv
    assert (
        read_aggregates(str(tmp_path / "mixed" / "**" / "PT1H.json"), bucket=BUCKET).rows_read == 3
    )


def test_a_line_holding_the_record_separator_is_one_malformed_record(tmp_path: Path) -> None:
    # The JSON-lines reader splits on \x1e (valid JSON never holds it raw): a line holding it
    # is one malformed record, not its first piece a record nor its pieces nothing (hypothesis
    # found a lone \x1e line that was not counted at all).
    good = (
        '{"TimeGenerated": "2026-11-02T10:20:00Z", "OperationName": "Join", "OperationId": "%s", '
        '"CallClientTimeStamp": "2026-11-02T10:01:00Z", "ResultType": "Succeeded", '
        '"DurationMs": 5, "SdkVersion": "1.0"}'
    )
    path = tmp_path / "sep.jsonl"
    path.write_bytes(
        (good % "1").encode()
        + b"\n\x1e\n"
        + (good % "2").encode()
        + b"\x1egarbage\n"
        + (good % "3").encode()
        + b"\x1e\x1e\n\x1f\n \t\n"
        + (good % "4").encode()
        + b"\n"
    )
    agg = read_aggregates(path, bucket=BUCKET)
    assert agg.rows_read == 6  # the whitespace line is not a row
    assert agg.stats["calls"].sum() == 2  # records 1 and 4
    assert agg.dropped["malformed_record"] == 4


def test_camel_case_and_top_level_fields(tmp_path: Path) -> None:
    path = tmp_path / "camel.json"
    path.write_text(
        '{"time": "2026-11-02T10:20:00Z", "properties": {"operationName": "Join", '
        '"operationId": "1", "callClientTimeStamp": "2026-11-02T10:01:00Z", '
        '"resultType": "Failed", "durationMs": "5", "sdkVersion": "1.0"}}\n'
        '{"TimeGenerated": "2026-11-02T10:20:00Z", "OperationName": "Join", "OperationId": "2", '
        '"CallClientTimeStamp": "2026-11-02T10:01:00Z", "ResultType": "Succeeded", '
        '"DurationMs": 5, "SdkVersion": "1.0"}\n'
        "\n"
        "this line is not JSON\n"
    )
    agg = read_aggregates(path, bucket=BUCKET)
    assert agg.rows_read == 3  # the blank line is not a row, the broken one is
    assert agg.stats["calls"].sum() == 2
    assert agg.stats["failures"].sum() == 1
    assert agg.dropped["malformed_record"] == 1
    assert agg.flagged["string_number"] == 1


def test_hand_written_fixtures(tmp_path: Path) -> None:
    """The files in tests/data/files (see its README) read as documented there."""
    la = read_aggregates(DATA / "la_export.csv", bucket=BUCKET)
    assert (la.rows_read, int(la.stats["calls"].sum())) == (6, 4)
    assert la.dropped["pseudo_operation"] == 1 and la.dropped["duplicate"] == 1
    diag = read_aggregates(DATA / "diagnostic" / "PT1H.json", bucket=BUCKET)
    assert (diag.rows_read, int(diag.stats["calls"].sum())) == (3, 3)
    assert diag.stats["failures"].sum() == 1
    assert read_aggregates(DATA / "la_api.json", bucket=BUCKET).rows_read == 2


def _bad(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", b"", "empty file"),
        ("empty.parquet", b"", "empty file"),
        ("empty.jsonl", b"\n\n", "empty file"),
        ("empty.json", b"", "empty file"),
        ("hello.parquet", b"hello, not parquet", "not a readable Parquet file"),
        ("hello.jsonl", b"hello\n", "not a JSON lines file"),
        ("hello.json", b"# comment\n", "not a JSON lines file"),
        ("cols.csv", b"TimeGenerated,OperationName,OperationId\n1,2,3\n", "missing required columns"),
        ("cols.jsonl", b'{"OperationName": "Join", "OperationId": "1"}\n', "missing required fields TimeGenerated, CallClientTimeStamp"),
        ("array.json", b'[{"OperationName": "Join"}]', "missing required fields"),
        ("broken.json", b'[{"OperationName": ', "not a readable JSON array"),
    ],
)  # fmt: skip
def test_bad_files_raise_one_clear_input_error(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = _bad(tmp_path / name, content)
    with pytest.raises(InputError) as err:
        read_aggregates(path, bucket=BUCKET)
    assert str(path) in str(err.value)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_columns_are_named(tmp_path: Path) -> None:
    path = write_rows([row()], tmp_path / "x.parquet", "parquet")
    table = pd.read_parquet(path).drop(columns=["CallClientTimeStamp", "SdkVersion"])
    table.to_parquet(tmp_path / "y.parquet")
    with pytest.raises(
        InputError, match=r"y\.parquet.*missing required columns CallClientTimeStamp, SdkVersion"
    ):
        read_aggregates(tmp_path / "y.parquet", bucket=BUCKET)
    # Without a non-identity column the file is read; its rows are malformed records.
    table = pd.read_parquet(path).drop(columns=["DurationMs", "SdkVersion"])
    table.to_parquet(tmp_path / "z.parquet")
    aggs = read_aggregates(tmp_path / "z.parquet", bucket=BUCKET)
    assert aggs.dropped["malformed_record"] == aggs.rows_read == 1


def test_corrupt_parquet_raises_input_error(tmp_path: Path) -> None:
    good = write_rows([row(opid=str(i)) for i in range(200)], tmp_path / "g.parquet", "parquet")
    data = good.read_bytes()
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.parquet"):
        read_aggregates(cut, bucket=BUCKET)
    garbled = tmp_path / "garbled.parquet"
    garbled.write_bytes(data[:4] + bytes(len(data) - 8) + data[-4:])
    with pytest.raises(InputError, match="garbled.parquet"):
        read_aggregates(garbled, bucket=BUCKET)


def test_a_bad_file_in_a_directory_is_named(tmp_path: Path) -> None:
    write_rows([row()], tmp_path / "d" / "good.csv", "csv")
    (tmp_path / "d" / "bad.csv").write_text("a,b,c\n1,2,3\n")
    (tmp_path / "d" / "empty.json").write_text("")  # an empty hour blob is skipped
    with pytest.raises(InputError, match=r"bad\.csv.*missing required columns"):
        read_aggregates(tmp_path / "d", bucket=BUCKET)


def test_nothing_to_read(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_aggregates(tmp_path / "nope", bucket=BUCKET)
    with pytest.raises(InputError, match="matches no files"):
        read_aggregates(str(tmp_path / "*.parquet"), bucket=BUCKET)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no data files"):
        read_aggregates(tmp_path / "empty", bucket=BUCKET)


def test_malformed_csv_rows_are_counted_not_fatal(tmp_path: Path) -> None:
    path = write_rows([row(opid="1"), row(opid="2")], tmp_path / "m.csv", "csv")
    with path.open("a") as fh:
        fh.write("only,three,fields\n")
        fh.write(",".join(["x"] * 25) + "\n")
    agg = read_aggregates(path, bucket=BUCKET)
    assert agg.rows_read == agg.stats["calls"].sum() + sum(agg.dropped.values())
    assert agg.stats["calls"].sum() == 2


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="bucket"):
        read_aggregates(DATA / "la_export.csv", bucket=timedelta(0))
    t = datetime(2026, 11, 2, tzinfo=UTC)
    with pytest.raises(ValueError, match="arrival_window"):
        read_aggregates(DATA / "la_export.csv", bucket=BUCKET, arrival_window=(t, t - BUCKET))


def test_empty_window_gives_empty_frames_with_contract_dtypes() -> None:
    t = datetime(2030, 1, 1, tzinfo=UTC)
    agg = read_aggregates(DATA / "la_export.csv", bucket=BUCKET, arrival_window=(t, t + BUCKET))
    assert agg.rows_read == 0 and len(agg.stats) == 0 and len(agg.hist) == 0
    assert agg.stats.dtypes.to_dict() == schema.empty_aggregates().stats.dtypes.to_dict()
    assert agg.dropped == dict.fromkeys(schema.DROP_REASONS, 0)


@pytest.mark.parametrize("fmt", FORMATS)
def test_failed_calls_count_the_calls_behind_the_failures(tmp_path: Path, fmt: str) -> None:
    """One bad call failing ten operations is one failing call; an empty CallId falls back to
    the operation (its own call); successes of a failing call do not count."""
    rows = [row(opid=f"a{i}", rt="Failure") | {"CallId": "bad-call"} for i in range(10)]
    rows += [row(opid=f"b{i}", rt="Failure") | {"CallId": f"call-{i}"} for i in range(3)]
    rows += [row(opid=f"c{i}", rt="Failure") | {"CallId": ""} for i in range(2)]
    rows += [row(opid=f"d{i}") | {"CallId": "bad-call"} for i in range(5)]
    rows += [row(opid="a0", rt="Failure") | {"CallId": "bad-call"}]  # a duplicate
    path = write_rows(rows, tmp_path / file_name(fmt, "calls"), fmt)
    s = read_aggregates(path, bucket=BUCKET).stats
    assert len(s) == 1
    assert (int(s["calls"][0]), int(s["failures"][0])) == (20, 15)
    assert int(s["failed_calls"][0]) == 1 + 3 + 2


@pytest.mark.parametrize("fmt", FORMATS)
def test_failure_clusters_count_a_calls_failures_across_buckets(tmp_path: Path, fmt: str) -> None:
    """Each failure is weighted by its call's failures over the whole read (in its partition,
    and in its operation for ``_op``), whichever buckets they fall in: a call failing four
    times, over two buckets, is a cluster of four in both."""
    a, b = "2026-11-02T10:01:00Z", "2026-11-02T10:07:00Z"

    def fail(opid: str, cct: str, call: str, sdk: str = "1.0") -> dict[str, Any]:
        return row(opid=opid, rt="Failure", cct=cct, sdk=sdk) | {"CallId": call}

    rows = [fail(f"a{i}", a, "bad") for i in range(3)] + [fail("a3", b, "bad")]
    rows += [fail("b0", b, "lone"), fail("c0", b, "bad", sdk="2.0")]
    rows += [row(opid=f"d{i}", cct=a, sdk="1.0") | {"CallId": "bad"} for i in range(4)]
    path = write_rows(rows, tmp_path / file_name(fmt, "clusters"), fmt)
    s = read_aggregates(path, bucket=BUCKET).stats
    got = {
        (r.sdk_version, r.bucket_start.minute): (
            r.failures,
            r.failure_cluster,
            r.failure_cluster_op,
        )
        for r in s.itertuples()
    }
    # 1.0 at 10:00: three of bad's four 1.0 failures (five with 2.0's); 10:05: bad's fourth
    # and lone's only one; 2.0 at 10:05: bad's only 2.0 failure (five in the operation).
    assert got == {
        ("1.0", 0): (3, 3 * 4.0, 3 * 5.0),
        ("1.0", 5): (2, 4.0 + 1.0, 5.0 + 1.0),
        ("2.0", 5): (1, 1.0, 5.0),
    }


def test_a_later_read_weighs_a_calls_earlier_failures(tmp_path: Path) -> None:
    """Three failures of a call arrive in one run's window, a fourth in the next: the next run
    looks the first three up (cluster look-back) and weighs its failure 1 + 2 * 3, so the two
    runs add up to one read's 4 * 4. Beyond the look-back they are not seen."""
    rows = [
        row(opid=f"a{i}", rt="Failure", tg=f"2026-11-02T10:{10 + i:02d}:00Z") | {"CallId": "c"}
        for i in range(3)
    ]
    rows += [row(opid="a3", rt="Failure", tg="2026-11-02T10:40:00Z") | {"CallId": "c"}]
    path = write_rows(rows, tmp_path / "late.parquet", "parquet")
    t = [datetime(2026, 11, 2, 10, m, tzinfo=UTC) for m in (0, 30, 59)]

    def cluster(window: tuple[datetime, datetime], lookback: timedelta) -> float:
        s = read_aggregates(path, bucket=BUCKET, arrival_window=window, cluster_lookback=lookback)
        return float(s.stats["failure_cluster"].sum())

    whole = float(read_aggregates(path, bucket=BUCKET).stats["failure_cluster"].sum())
    assert whole == 16.0
    assert cluster((t[0], t[1]), timedelta(hours=2)) == 9.0
    assert cluster((t[1], t[2]), timedelta(hours=2)) == 7.0
    assert cluster((t[1], t[2]), timedelta(minutes=5)) == 1.0  # the earlier ones: too long ago


def test_a_call_failing_in_two_versions_is_one_failing_call_of_the_operation(
    tmp_path: Path,
) -> None:
    """A group call's legs run different SDK versions: each version counts the call once, and
    the weights (1 / versions it failed in) add up to one failing call for the operation."""
    from detector.detect.baseline import FLEET, with_fleet

    rows = [row(opid="a", rt="Failure", sdk="1.0") | {"CallId": "group-call"}]
    rows += [row(opid="b", rt="Failure", sdk="2.0") | {"CallId": "group-call"}]
    rows += [row(opid="c", rt="Failure", sdk="2.0") | {"CallId": "other-call"}]
    s = read_aggregates(write_rows(rows, tmp_path / "v.parquet", "parquet"), bucket=BUCKET).stats
    by_ver = s.set_index("sdk_version")
    assert by_ver["failed_calls"].to_dict() == {"1.0": 1, "2.0": 2}
    assert by_ver["failed_calls_op"].to_dict() == {"1.0": 0.5, "2.0": 1.5}
    fleet = with_fleet(s)
    fleet = fleet[fleet["sdk_version"] == FLEET]
    assert int(fleet["failed_calls"].iloc[0]) == 2  # group-call and other-call, once each


# -- issue 22: rows of several ACS resources --------------------------------------------------

_ACS = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Communication/CommunicationServices"


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv"])
def test_resource_column_splits_the_rows(tmp_path: Path, fmt: str) -> None:
    from detector.source.files import read_resources

    rows = []
    for i in range(30):
        r = row(opid=f"op-{i}", cct=f"2026-11-02T10:{i:02d}:00Z")
        r["_ResourceId"] = f"{_ACS}/acs-a" if i % 3 else f" {_ACS.upper()}/ACS-B "
        rows.append(r)
    rows[0]["_ResourceId"] = "../../etc/passwd'; --"
    path = write_rows(rows, tmp_path / file_name(fmt), fmt)
    a, b = f"{_ACS}/acs-a".lower(), f"{_ACS}/acs-b".lower()
    assert read_resources(path) == {a: 20, b: 9, "../../etc/passwd'; --": 1}
    five = timedelta(minutes=5)
    got = {k: read_aggregates(path, bucket=five, resource=k) for k in (a, b)}
    assert int(got[a].stats["calls"].sum()) == 20 and int(got[b].stats["calls"].sum()) == 9
    assert int(read_aggregates(path, bucket=five).stats["calls"].sum()) == 30
    with pytest.raises(ValueError, match="resource"):
        read_aggregates(path, bucket=five, resource="x' OR 1=1 --")


def test_diagnostic_export_resource_id(tmp_path: Path) -> None:
    from detector.source.files import read_resources

    path = write_rows(
        [row(opid=f"op-{i}") for i in range(3)],
        tmp_path / "d" / file_name("diagnostic"),
        "diagnostic",
    )
    # the Diagnostic Settings record names its resource at the top level, in upper case
    assert read_resources(path) == {
        "/subscriptions/x/resourcegroups/rg/providers/microsoft.communication/communicationservices/acs": 3
    }
