"""Schema drift in the file source: real files in every format through DuckDB, no mocks.

A file whose columns changed (``DurationMs`` missing, renamed, sent as text; a required column
gone; new columns) is named in a :class:`~detector.source.drift.SchemaDrift` record and in one
run-report warning; a file whose drift makes its rows unusable costs only its rows, counted as
``malformed_record``, never the run.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from detector import schema
from detector.cli import main
from detector.errors import InputError
from detector.source import drift
from detector.source.drift import SchemaDrift, clean_name, column_drift, drift_warning
from detector.source.files import read_aggregates
from tests.fixtures_files import FORMATS, file_name, row

BUCKET = timedelta(minutes=5)


def _write(rows: list[dict[str, Any]], path: Path, fmt: str) -> Path:
    """Write ``rows`` (any columns) as ``fmt``, through the fixture writer's column list."""
    import tests.fixtures_files as ff

    cols = list(dict.fromkeys(k for r in rows for k in r))
    saved, saved_schema = list(ff.COLUMNS), ff.schema
    extra = {c: "string" for c in cols if c not in schema.LOG_COLUMNS}
    try:
        ff.COLUMNS[:] = cols
        ff.schema = type("S", (), {"LOG_COLUMNS": {**schema.LOG_COLUMNS, **extra}})  # type: ignore[assignment]
        return ff.write_rows(rows, path, fmt)
    finally:
        ff.COLUMNS[:] = saved
        ff.schema = saved_schema


def _rows(n: int = 4, **change: Any) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        r = row(opid=f"op-{i}")
        for key, value in change.items():
            if key.startswith("drop_"):
                r.pop(key[5:])
            elif key.startswith("rename_"):
                r[value] = r.pop(key[7:])
            else:
                r[key] = value(r[key]) if callable(value) else value
        out.append(r)
    return out


def _read(path: Path) -> tuple[schema.BucketAggregates, dict[str, SchemaDrift]]:
    drift: dict[str, SchemaDrift] = {}
    return read_aggregates(path, bucket=BUCKET, drift=drift), drift


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_clean_export_has_no_drift(tmp_path: Path, fmt: str) -> None:
    aggs, drift = _read(_write(_rows(), tmp_path / file_name(fmt), fmt))
    assert drift == {}
    assert aggs.stats["calls"].sum() == 4


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_typed_exports_without_duration_cost_their_rows_not_the_run(
    tmp_path: Path, fmt: str
) -> None:
    good = _write(_rows(3), tmp_path / "d" / file_name(fmt, "good"), fmt)
    bad = _write(
        [{**r, "OperationId": f"x-{i}"} for i, r in enumerate(_rows(5, drop_DurationMs=1))],
        tmp_path / "d" / file_name(fmt, "bad"),
        fmt,
    )
    aggs, drift = _read(tmp_path / "d")
    assert list(drift) == [str(bad)] and str(good) not in drift
    d = drift[str(bad)]
    assert d.missing == ("DurationMs",) and d.unusable
    assert aggs.stats["calls"].sum() == 3  # the good file's rows are judged
    assert aggs.dropped["malformed_record"] == 5
    assert aggs.rows_read == aggs.stats["calls"].sum() + sum(aggs.dropped.values())
    line = drift_warning(drift.values())
    assert line == (
        "schema drift in 1 file: DurationMs missing (1); its rows were dropped as malformed_record"
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_renamed_duration_is_missing_plus_an_unknown_column(tmp_path: Path, fmt: str) -> None:
    path = _write(_rows(rename_DurationMs="Duration"), tmp_path / file_name(fmt), fmt)
    aggs, drift = _read(path)
    (d,) = drift.values()
    assert d.missing == ("DurationMs",)
    assert d.unknown == ("Duration",)
    if fmt in ("parquet", "csv"):
        assert aggs.dropped["malformed_record"] == 4
    else:  # JSON leaves null keys out: rows kept, their durations flagged as before
        assert aggs.stats["calls"].sum() == 4
        assert aggs.flagged["invalid_duration"] == 4


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "diagnostic"])
def test_duration_sent_as_text_is_a_type_change(tmp_path: Path, fmt: str) -> None:
    path = _write(_rows(DurationMs=str), tmp_path / file_name(fmt), fmt)
    aggs, drift = _read(path)
    (d,) = drift.values()
    assert d.retyped == (("DurationMs", "text"),) and not d.unusable
    assert aggs.stats["calls"].sum() == 4  # numbers in text are still read, and flagged
    assert aggs.flagged["string_number"] == 4
    assert "DurationMs is text (1)" in (drift_warning(drift.values()) or "")


@pytest.mark.parametrize("fmt", FORMATS)
def test_without_result_type_rows_are_dropped_not_read_as_failures(
    tmp_path: Path, fmt: str
) -> None:
    aggs, drift = _read(_write(_rows(drop_ResultType=1), tmp_path / file_name(fmt), fmt))
    (d,) = drift.values()
    assert d.missing == ("ResultType",) and d.unusable
    assert aggs.stats.empty or aggs.stats["failures"].sum() == 0
    assert aggs.dropped["malformed_record"] == 4


@pytest.mark.parametrize("fmt", FORMATS)
def test_hostile_unknown_column_names_are_escaped_and_cut(tmp_path: Path, fmt: str) -> None:
    hostile = "Evil\x1b[31m\u202e" + "x" * 200
    path = _write(_rows(**{hostile: "v"}), tmp_path / file_name(fmt), fmt)
    aggs, drift = _read(path)
    (d,) = drift.values()
    (name,) = d.unknown
    assert name.isascii() and name.isprintable() and len(name) <= 40
    assert name.startswith("Evil\\x1b[31m\\u202e")
    assert aggs.stats["calls"].sum() == 4  # unknown columns cost nothing
    line = drift_warning(drift.values()) or ""
    assert "\x1b" not in line and "\n" not in line


def test_csv_duration_that_is_never_a_number_is_text(tmp_path: Path) -> None:
    path = _write(_rows(DurationMs=lambda d: f"{d}ms"), tmp_path / "x.csv", "csv")
    aggs, drift = _read(path)
    (d,) = drift.values()
    assert d.retyped == (("DurationMs", "text"),) and not d.unusable
    assert aggs.flagged["invalid_duration"] == 4  # kept and flagged, as before
    # Numbers in CSV text are the format, not drift.
    aggs, drift = _read(_write(_rows(), tmp_path / "y.csv", "csv"))
    assert drift == {}


def test_identity_columns_missing_is_still_not_an_export(tmp_path: Path) -> None:
    path = _write(_rows(drop_OperationName=1), tmp_path / "x.csv", "csv")
    with pytest.raises(InputError, match="missing required column"):
        read_aggregates(path, bucket=BUCKET)


def test_the_warning_counts_problems_over_files() -> None:
    drifts = [
        SchemaDrift("a", missing=("DurationMs",), unusable=True),
        SchemaDrift("b", missing=("DurationMs",), unusable=True),
        SchemaDrift("c", retyped=(("DurationMs", "text"),)),
    ]
    assert drift_warning(drifts) == (
        "schema drift in 3 files: DurationMs missing (2), DurationMs is text (1); "
        "the rows of 2 of them were dropped as malformed_record"
    )
    assert drift_warning([]) is None
    assert column_drift("x", dict.fromkeys(schema.LOG_COLUMNS, None)) is None
    assert clean_name("a" * 100).endswith("...")


def test_the_run_report_warns_and_lists_the_drift(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    _write(_rows(3), data / "good.csv", "csv")
    _write(
        [{**r, "OperationId": f"x-{i}"} for i, r in enumerate(_rows(2, drop_DurationMs=1))],
        data / "bad.csv",
        "csv",
    )
    cfg = tmp_path / "detector.toml"
    cfg.write_text(
        f'[source]\nkind = "file"\npath = "{data.as_posix()}"\n\n'
        f'[detection]\nbucket = "5m"\nbaseline = "1d"\ndelay = "30m"\n\n'
        f'[state]\npath = "{(tmp_path / "state").as_posix()}"\n'
        f'models = "{(tmp_path / "models").as_posix()}"\n'
    )
    monkeypatch.delenv("ACS_DETECTOR_CONFIG", raising=False)
    args = ["--config", str(cfg), "run", "--start", "2026-11-02T10:00:00Z"]
    main([*args, "--end", "2026-11-02T11:00:00Z"])
    report = json.loads((tmp_path / "state" / "reports" / "latest.json").read_text())
    warnings = [w for w in report["warnings"] if w.startswith("schema drift")]
    assert warnings == [
        "schema drift in 1 file: DurationMs missing (1); its rows were dropped as malformed_record"
    ]
    (entry,) = report["source"]["schema_drift"]
    assert entry["where"].endswith("bad.csv") and entry["missing"] == ["DurationMs"]
    assert report["source"]["dropped"]["malformed_record"] == 2


def test_the_html_report_shows_the_warning_escaped(tmp_path: Path) -> None:
    from detector.report_html import render_html_report

    line = drift_warning([SchemaDrift("f", unknown=(clean_name("<script>x"),))])
    report = {"run_id": "r", "mode": "run", "warnings": [line], "source": {"rows_read": 0}}
    html = render_html_report(anomalies=[], run_report=report)
    assert "schema drift in 1 file: unknown column &lt;script&gt;x (1)" in html
    assert "<script>x" not in html


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        (
            ["'extend' operator: Failed to resolve scalar expression named 'DurationMs'"],
            "schema drift: table T has no column DurationMs (renamed or removed), which the query reads",
        ),
        (
            ["'where' operator: Failed to resolve table or column expression named 'T'"],
            "the workspace has no table T",
        ),
        (
            [
                "A semantic error occurred.",
                "'project' operator: Failed to resolve column or scalar expression named 'SdkVersion'",
            ],
            "schema drift: table T has no column SdkVersion",
        ),
        (
            ["'where' operator: Failed to resolve table or column or scalar expression named 'T'"],
            "the workspace has no table T",
        ),
        (["Failed to resolve table expression named 'T'"], "the workspace has no table T"),
        # a name that is not a log column: our own query's mistake, not drift
        (["'extend' operator: Failed to resolve scalar expression named '_Ld'"], None),
        (["Request is invalid: bad timespan"], None),
        ([], None),
    ],
    ids=[
        "column",
        "table",
        "nested-message",
        "table-or-column-or-scalar",
        "table-expression",
        "not-a-log-column",
        "other-error",
        "no-body",
    ],
)
def test_query_drift_reads_the_services_semantic_errors(
    messages: list[str], expected: str | None
) -> None:
    got = drift.query_drift(messages, "T")
    if expected is None:
        assert got is None
    else:
        assert got is not None and got.startswith(expected)
