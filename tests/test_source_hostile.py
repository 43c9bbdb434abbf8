"""Hostile input at the source (issue 21): a bad record costs that record, counted, never the run.

Each case is a real file (or a real answer parsed by the real parser) carrying one bad record
beside good ones: the bad one is counted under a drop reason, the good ones are read, and
``rows_read == kept + dropped`` holds. Windowed reads see rows that carry no usable time too.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from detector import aggregate, schema
from detector.cli import main
from detector.errors import InputError
from detector.source import kql
from detector.source.files import read_aggregates
from tests.fixtures_files import FORMATS, file_name, row, write_rows

BUCKET = timedelta(minutes=5)
WINDOW = (datetime(2026, 11, 2, 10, tzinfo=UTC), datetime(2026, 11, 2, 12, tzinfo=UTC))
# A modification time inside WINDOW: rows without any time arrive when their file was written.
IN_WINDOW = WINDOW[0].timestamp() + 3600


def _good(n: int = 5) -> list[dict[str, Any]]:
    return [row(opid=f"g{i}") for i in range(n)]


def _kept(agg: schema.BucketAggregates) -> int:
    return int(agg.stats["calls"].sum())


def _check_accounted(agg: schema.BucketAggregates, *, read: int, kept: int) -> None:
    assert agg.rows_read == read
    assert _kept(agg) == kept
    assert agg.rows_read == _kept(agg) + sum(agg.dropped.values())
    assert set(agg.dropped) == set(schema.DROP_REASONS)


def _both_reads(path: Path) -> list[schema.BucketAggregates]:
    """The file read whole and through the arrival window its rows fall in."""
    os.utime(path, (IN_WINDOW, IN_WINDOW))
    return [
        read_aggregates(path, bucket=BUCKET),
        read_aggregates(path, bucket=BUCKET, arrival_window=WINDOW),
    ]


# -- 2: out-of-range timestamps ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["2999-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "garbage"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_out_of_range_client_timestamp_is_a_drop_reason(
    tmp_path: Path, fmt: str, value: str
) -> None:
    rows = [*_good(), row(opid="bad", cct=value)]
    path = write_rows(rows, tmp_path / file_name(fmt), fmt)
    for agg in _both_reads(path):
        _check_accounted(agg, read=6, kept=5)
        assert agg.dropped["invalid_timestamp"] == 1


@pytest.mark.parametrize("value", ["2999-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "garbage", None])
@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv"])
def test_row_without_a_usable_time_generated_is_counted_in_a_window(
    tmp_path: Path, fmt: str, value: str | None
) -> None:
    """It arrives at its CallClientTimeStamp (inside the window here), never nowhere."""
    rows = [*_good(), row(opid="x", tg=value, cct="2026-11-02T10:30:00Z")]
    path = write_rows(rows, tmp_path / file_name(fmt), fmt)
    for agg in _both_reads(path):
        _check_accounted(agg, read=6, kept=6)


def _answer(*buckets: tuple[Any, int]) -> tuple[list[str], list[list[Any]]]:
    """An aggregate answer: a bucket row per (BucketStart, Calls), and the counts row."""
    columns = list(kql.AGG_RESULT_COLUMNS)
    rows = []
    for start, calls in buckets:
        cells = dict.fromkeys(columns) | {
            "Kind": "bucket",
            "OperationName": "Join",
            "SdkVersion": "1.0",
            "BucketStart": start,
            "Calls": calls,
            "Failures": 0,
            "Hist": json.dumps({"10": calls}),
        }
        rows.append([cells[c] for c in columns])
    total = sum(c for _, c in buckets)
    counts = dict.fromkeys(columns) | {"Kind": "counts", "Counts": {"rows_read": total}}
    rows.append([counts[c] for c in columns])
    return columns, rows


@pytest.mark.parametrize(
    "start",
    [
        "2999-01-01T00:00:00Z",
        datetime(2999, 1, 1, tzinfo=UTC),
        "0001-01-01T00:00:00Z",
        "garbage",
        None,
    ],
)
def test_log_analytics_parser_counts_an_out_of_range_bucket(start: Any) -> None:
    agg = kql.aggregates_from_rows(*_answer(("2026-11-02T10:00:00Z", 3), (start, 2)))
    _check_accounted(agg, read=5, kept=3)
    assert agg.dropped["invalid_timestamp"] == 2
    assert len(agg.hist) == 1


def test_kql_drops_out_of_range_client_timestamps() -> None:
    text = kql.aggregate_query(WINDOW[0], WINDOW[1], bucket=BUCKET)
    assert f"CallClientTimeStamp >= {kql.kql_datetime(schema.TIMESTAMP_MAX)}" in text
    assert f"CallClientTimeStamp < {kql.kql_datetime(schema.TIMESTAMP_MIN)}" in text


# -- 7: CSV dialect ------------------------------------------------------------------------------


def test_csv_malformed_line_costs_that_line_only(tmp_path: Path) -> None:
    """A ';' in the UserAgent must not make DuckDB guess ';' as the delimiter: the header's
    dialect is used, and a line with extra fields is one malformed record."""
    rows = [
        row(opid=f"g{i}") | {"UserAgent": "Mozilla/5.0 (X11; Linux x86_64; rv:1)"} for i in range(5)
    ]
    path = write_rows(rows, tmp_path / "ops.csv", "csv")
    lines = path.read_text().splitlines(keepends=True)
    lines.insert(3, lines[2].replace(",g1,", ",bad,").rstrip("\n") + ",extra,fields\n")
    path.write_text("".join(lines))
    for agg in _both_reads(path):
        _check_accounted(agg, read=6, kept=5)
        assert agg.dropped["malformed_record"] == 1


def test_semicolon_separated_csv_is_read_with_its_own_delimiter(tmp_path: Path) -> None:
    rows = [row(opid=f"g{i}") | {"UserAgent": "a, b, c"} for i in range(4)]
    path = write_rows(rows, tmp_path / "ops.csv", "csv")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.to_csv(path, sep=";", index=False)
    for agg in _both_reads(path):
        _check_accounted(agg, read=4, kept=4)


# -- 8 and 9: one bad record never fails the input -----------------------------------------------


def _line(r: dict[str, Any]) -> bytes:
    return (json.dumps(r) + "\n").encode()


def _deep(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth + b"\n"


_GOOD = b"".join(_line(r) for r in _good())
_BAD_LINES: dict[str, tuple[bytes, str]] = {
    "invalid-utf8": (
        _line(row(opid="x")).replace(b'"Join"', b'"Jo\xff\xfein"'),
        "malformed_record",
    ),
    "nul-first-line": (_line(row(opid="x")).replace(b'"ua"', b'"u\x00a"'), "malformed_record"),
    "5mb-field": (_line(row(opid="x") | {"OperationPayload": "A" * 5_000_000}), "malformed_record"),
    "nested-20000": (_deep(20_000), "missing_operation_name"),
    "truncated-last-line": (_line(row(opid="x"))[:60], "malformed_record"),
    "not-json": (b"not json\n", "malformed_record"),
    "json-array-line": (b"[1, 2, 3]\n", "malformed_record"),
}


@pytest.mark.parametrize("first", [True, False], ids=["first", "last"])
@pytest.mark.parametrize("case", list(_BAD_LINES))
def test_one_bad_json_line_costs_that_line(tmp_path: Path, case: str, first: bool) -> None:
    bad, reason = _BAD_LINES[case]
    if first and not bad.endswith(b"\n"):
        bad += b"\n"  # (a truncated line ends its file; first, it would join the next)
    for name in ("ops.jsonl", "y=2026/m=11/d=02/h=10/m=00/PT1H.json"):
        path = tmp_path / case / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bad + _GOOD if first else _GOOD + bad)
        for agg in _both_reads(path):
            _check_accounted(agg, read=6, kept=5)
            assert agg.dropped[reason] == 1


def test_bad_csv_records_cost_those_records(tmp_path: Path) -> None:
    path = write_rows(_good(), tmp_path / "ops.csv", "csv")
    lines = path.read_bytes().splitlines(keepends=True)
    bad_utf8 = lines[1].replace(b"Join", b"Jo\xff\xfein")
    huge = lines[1].replace(b"ua", b"u" * 5_000_000)
    path.write_bytes(b"".join([lines[0], bad_utf8, *lines[1:], huge]))
    for agg in _both_reads(path):
        _check_accounted(agg, read=7, kept=5)
        assert agg.dropped["malformed_record"] == 2


def test_a_run_over_a_hostile_file_exits_0_and_is_recorded(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "ops.jsonl").write_bytes(_deep(20_000) + _GOOD + _BAD_LINES["invalid-utf8"][0])
    os.utime(data / "ops.jsonl", (IN_WINDOW, IN_WINDOW))
    cfg = tmp_path / "detector.toml"
    cfg.write_text(
        f'[source]\nkind = "file"\npath = "{data}"\n'
        f'[state]\npath = "{tmp_path / "state"}"\nmodels = "{tmp_path / "models"}"\n'
    )
    report = tmp_path / "report.json"
    argv = ["--config", str(cfg), "run", "--start", "2026-11-02T10:00:00Z"]
    argv += ["--end", "2026-11-02T12:00:00Z", "--no-notify", "--report", str(report)]
    assert main(argv) == 0
    source = json.loads(report.read_text())["source"]
    assert source["rows_read"] == 7
    assert source["dropped"] == {"malformed_record": 1, "missing_operation_name": 1}


# -- 10: duplicates across reads -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_a_copy_re_ingested_hours_later_counts_once_across_reads(tmp_path: Path, fmt: str) -> None:
    rows = [
        row(opid="a", tg="2026-11-02T10:20:00Z"),
        row(opid="a", tg="2026-11-02T13:50:00Z"),  # the same operation, 3.5 h later
        row(opid="b", tg="2026-11-02T13:55:00Z"),
    ]
    path = write_rows(rows, tmp_path / file_name(fmt), fmt)
    t = [datetime(2026, 11, 2, h, tzinfo=UTC) for h in (10, 12, 14)]
    first, second = (
        read_aggregates(path, bucket=BUCKET, arrival_window=(a, b))
        for a, b in zip(t, t[1:], strict=False)
    )
    whole = read_aggregates(path, bucket=BUCKET, arrival_window=(t[0], t[-1]))
    assert (_kept(first), _kept(second), _kept(whole)) == (1, 1, 2)
    assert second.dropped["duplicate"] == 1
    _check_accounted(second, read=2, kept=1)


def test_fifteen_minute_reads_count_what_one_read_counts(tmp_path: Path) -> None:
    """192 consecutive 15-minute reads of simulated days (re-ingested copies arrive up to
    hours later) count every operation once, as one read of the whole span does."""
    from detector.simulate import SimSpec, simulate

    start = datetime(2026, 11, 1, tzinfo=UTC)
    simulate(tmp_path, SimSpec(days=1, seed=3, calls_per_hour=20, start=start), fmt="parquet")
    step = timedelta(minutes=15)
    one = read_aggregates(tmp_path, bucket=BUCKET, arrival_window=(start, start + 192 * step))
    reads = [
        read_aggregates(
            tmp_path, bucket=BUCKET, arrival_window=(start + i * step, start + (i + 1) * step)
        )
        for i in range(192)
    ]
    merged = aggregate.merge(*reads)
    assert one.dropped["duplicate"] > 0
    assert merged.rows_read == one.rows_read
    assert _kept(merged) == _kept(one)
    assert merged.dropped == one.dropped


# -- 11: the partition cap -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_partition_cap_keeps_the_busiest_and_counts_the_rest(tmp_path: Path, fmt: str) -> None:
    rows = [row(opid=f"j{i}") for i in range(6)]  # Join: the busiest
    rows += [row(op="StartCall", opid=f"s{i}") for i in range(4)]
    rows += [row(op=f"junk-{i}", opid=f"x{i}") for i in range(30)]  # one row each
    path = write_rows(rows, tmp_path / file_name(fmt), fmt)
    agg = read_aggregates(path, bucket=BUCKET, max_partitions=2)
    assert set(agg.stats["operation_name"]) == {"Join", "StartCall"}
    assert set(agg.hist["operation_name"]) == {"Join", "StartCall"}
    assert agg.dropped["partition_cap"] == 30
    assert agg.partitions_left_out == 30
    _check_accounted(agg, read=40, kept=10)
    uncapped = read_aggregates(path, bucket=BUCKET, max_partitions=None)
    assert uncapped.stats["operation_name"].nunique() == 32


def test_a_garbage_file_in_a_scanned_directory_costs_its_lines_not_the_run(tmp_path: Path) -> None:
    """Named directly it is refused (exit 2, the message names it); found by a scan beside
    good files, its lines are malformed records and the good files are read."""
    write_rows(_good(), tmp_path / "good.jsonl", "jsonl")
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_bytes(b"\xff\xfe not json\n" * 3 + b"<html>\n")
    os.utime(garbage, (IN_WINDOW, IN_WINDOW))
    for agg in _both_reads(tmp_path):
        _check_accounted(agg, read=9, kept=5)
        assert agg.dropped["malformed_record"] == 4
    with pytest.raises(InputError, match="garbage.jsonl: not a JSON lines file"):
        read_aggregates(garbage, bucket=BUCKET)
