"""KQL builders: literals and escaping, every query shape checked by Microsoft's language service."""

from __future__ import annotations

import base64
import math
import re
from datetime import UTC, datetime, timedelta, timezone

import pandas as pd
import pytest

from detector.schema import HIST_GAMMA, duration_bin
from detector.source import kql
from tests.fixtures_loganalytics import kusto  # noqa: F401  (session fixture)

S = datetime(2025, 1, 1, tzinfo=UTC)
E = S + timedelta(hours=1)

HOSTILE = [
    'Join" | take 1 //',
    "Join' or 1==1 or '",
    'x\\"; drop table\n| project secret',
    "line1\r\nline2\ttab",
    "ünïcødé ✓ 漢字",
    "a}b{c]d[e",
    '@"verbatim"',
    'base64_decode_tostring("x")',
    "",
]


# -- literals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Join", '"Join"'),
        ("1.32.0.1_beta", '"1.32.0.1_beta"'),
        ("State-changed", '"State-changed"'),
        ("", '""'),
        (None, '""'),
    ],
)
def test_kql_string_plain(value: object, expected: str) -> None:
    assert kql.kql_string(value) == expected


@pytest.mark.parametrize("value", HOSTILE[:-1])
def test_kql_string_hostile_is_base64_and_round_trips(value: str) -> None:
    text = kql.kql_string(value)
    m = re.fullmatch(r'base64_decode_tostring\("([A-Za-z0-9+/=]*)"\)', text)
    assert m, text
    assert base64.b64decode(m.group(1)).decode("utf-8") == value


def test_kql_datetime() -> None:
    assert kql.kql_datetime(S) == "datetime(2025-01-01T00:00:00.0000000Z)"
    cet = datetime(2025, 1, 1, 1, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    assert kql.kql_datetime(cet) == "datetime(2025-01-01T00:00:00.1234560Z)"
    with pytest.raises(ValueError, match="no time zone"):
        kql.kql_datetime(datetime(2025, 1, 1))
    with pytest.raises(ValueError):
        kql.kql_datetime("2025-01-01")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("span", "text"),
    [
        (timedelta(minutes=5), "300s"),
        (timedelta(0), "0s"),
        (timedelta(milliseconds=1500), "1500ms"),
        (timedelta(days=2), "172800s"),
    ],
)
def test_kql_timespan(span: timedelta, text: str) -> None:
    assert kql.kql_timespan(span) == text


@pytest.mark.parametrize("span", [timedelta(seconds=-1), timedelta(microseconds=5)])
def test_kql_timespan_refuses(span: timedelta) -> None:
    with pytest.raises(ValueError):
        kql.kql_timespan(span)


@pytest.mark.parametrize(
    "name", ["ACS | take 1", "T;", "a b", "1abc", "[T]", "T//", "", "x" * 200, "ACS\n| x"]
)
def test_table_names_are_validated_not_escaped(name: str) -> None:
    with pytest.raises(ValueError, match="table name"):
        kql.aggregate_query(S, E, bucket=timedelta(minutes=5), table=name)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bucket": timedelta(0)}, "bucket"),
        ({"bucket": timedelta(seconds=1.5)}, "whole number of seconds"),
        (
            {
                "bucket": timedelta(minutes=5),
                "rules": kql.ArrivalRules(arrival="ingestion_time(); T"),
            },
            "arrival",
        ),
    ],
)
def test_aggregate_query_refuses_bad_values(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        kql.aggregate_query(S, E, **kwargs)


def test_window_must_be_ordered_and_aware() -> None:
    with pytest.raises(ValueError, match="not after"):
        kql.aggregate_query(E, S, bucket=timedelta(minutes=5))
    with pytest.raises(ValueError, match="time zone"):
        kql.aggregate_query(datetime(2025, 1, 1), E, bucket=timedelta(minutes=5))


def test_histogram_constant_is_schema_ln_gamma() -> None:
    text = kql.aggregate_query(S, E, bucket=timedelta(minutes=5))
    m = re.search(r"toint\(ceiling\(_Ld / ([0-9.e-]+)\)\)", text)
    assert m is not None
    assert float(m.group(1)) == math.log(HIST_GAMMA)
    # the KQL expression, evaluated in Python with the same doubles, is schema.duration_bin
    for d in [0, 0.5, 1, 2, 577, 1000, 5000, 123456, 10**7]:
        ld = math.log(max(float(d), 1.0))
        assert math.ceil(ld / float(m.group(1))) == duration_bin(d)


# -- the language service -------------------------------------------------------------------


def _shapes() -> list[tuple[str, str, dict[str, str]]]:
    out = []
    for arrival in kql.ARRIVALS:
        for lookback in (timedelta(0), timedelta(hours=1)):
            for bucket in (timedelta(minutes=5), timedelta(minutes=7)):
                out.append(
                    (
                        f"aggregate-{arrival}-{lookback}-{bucket}",
                        kql.aggregate_query(
                            S,
                            E,
                            bucket=bucket,
                            rules=kql.ArrivalRules(arrival=arrival, dedup_lookback=lookback),
                        ),
                        kql.AGG_RESULT_COLUMNS,
                    )
                )
        out.append(
            (
                f"plan-{arrival}",
                kql.plan_query(
                    S,
                    S + timedelta(days=30),
                    step=timedelta(hours=1),
                    bucket=timedelta(minutes=5),
                    arrival=arrival,
                ),
                kql.PLAN_RESULT_COLUMNS,
            )
        )
    targets = [
        kql.DrillTarget(f"fp{i}|{h}", h or "Join", h if i % 2 else None, metric, S, E)
        for i, (h, metric) in enumerate(
            zip(HOSTILE, ["duration", "failure_rate", "volume"] * 3, strict=False)
        )
    ]
    out.append(
        (
            "drilldown-hostile",
            kql.drill_down_query(targets, lateness=timedelta(hours=6)),
            kql.DRILL_RESULT_COLUMNS,
        )
    )
    out.append(
        (
            "drilldown-one",
            kql.drill_down_query(
                [kql.DrillTarget("Join|*|volume", "Join", None, "volume", S, E)],
                lateness=timedelta(0),
                top_codes=1,
                example_calls=1,
            ),
            kql.DRILL_RESULT_COLUMNS,
        )
    )
    out += _resource_shapes()
    return out


RESOURCE = (
    "/subscriptions/11111111-1111-1111-1111-111111111111/resourcegroups/rg-test"
    "/providers/microsoft.communication/communicationservices/acs-test"
)


def _resource_shapes() -> list[tuple[str, str, dict[str, str]]]:
    """Issue 22: the resources query, and every shape scoped to one ACS resource."""
    five = timedelta(minutes=5)
    target = kql.DrillTarget("Join|*|volume", "Join", None, "volume", S, E)
    return [
        ("resources", kql.resources_query(S, E), kql.RESOURCES_RESULT_COLUMNS),
        (
            "resources-timegenerated",
            kql.resources_query(S, E, arrival="TimeGenerated"),
            kql.RESOURCES_RESULT_COLUMNS,
        ),
        (
            "aggregate-resource",
            kql.aggregate_query(S, E, bucket=five, resource=RESOURCE),
            kql.AGG_RESULT_COLUMNS,
        ),
        (
            "plan-resource",
            kql.plan_query(S, E, step=timedelta(hours=1), bucket=five, resource=RESOURCE),
            kql.PLAN_RESULT_COLUMNS,
        ),
        (
            "drilldown-resource",
            kql.drill_down_query([target], lateness=timedelta(0), resource=RESOURCE),
            kql.DRILL_RESULT_COLUMNS,
        ),
    ]


@pytest.mark.parametrize(
    "value", [RESOURCE.upper(), f" {RESOURCE}", f'{RESOURCE}" or 1==1', "", "/subscriptions/x"]
)
def test_resource_filter_takes_tenant_keys_only(value: str) -> None:
    with pytest.raises(ValueError, match="resource"):
        kql.resource_filter(value)
    with pytest.raises(ValueError, match="resource"):
        kql.aggregate_query(S, E, bucket=timedelta(minutes=5), resource=value)


def test_resource_filter_is_one_where_line() -> None:
    assert kql.resource_filter(None) == ""
    line = kql.resource_filter(RESOURCE)
    assert line.count("\n") == 1 and line.strip().startswith("| where ")
    assert kql.kql_string(RESOURCE) in line


def test_resources_from_rows() -> None:
    got = kql.resources_from_rows(["ResourceId", "Rows"], [[RESOURCE, 5], [None, 2], ["", 1]])
    assert got == {RESOURCE: 5, "": 3}
    with pytest.raises(ValueError, match="lacks"):
        kql.resources_from_rows(["Rows"], [])


@pytest.mark.node
@pytest.mark.parametrize(("name", "text", "columns"), _shapes(), ids=[s[0] for s in _shapes()])
def test_every_query_shape_is_valid_kql(kusto, name, text, columns) -> None:  # noqa: F811
    result = kusto.check(text)
    errors = [d for d in result["diagnostics"] if d["severity"] == "Error"]
    assert errors == [], errors
    # The answer schema the language service infers is the one the parser and emulator use.
    assert {c["name"]: c["type"] for c in result["columns"]} == columns
    assert [c["name"] for c in result["columns"]] == list(columns)


@pytest.mark.node
def test_language_service_does_catch_errors(kusto) -> None:  # noqa: F811
    # Guard against a checker that accepts everything.
    text = kql.aggregate_query(S, E, bucket=timedelta(minutes=5)).replace(
        "make_bag_if", "make_bagg_if"
    )
    assert kusto.errors(text)
    assert kusto.errors("ACSCallClientOperations | where NoSuchColumn > 1")
    assert kusto.errors('ACSCallClientOperations | where OperationName == "x" | take')


@pytest.mark.node
@pytest.mark.parametrize("value", HOSTILE)
def test_injection_attempts_stay_data(kusto, value: str) -> None:  # noqa: F811
    """A hostile name cannot change the query: valid text, same answer schema, one target."""
    target = kql.DrillTarget(value, value, value, "failure_rate", S, E)
    text = kql.drill_down_query([target], lateness=timedelta(hours=1))
    result = kusto.check(text)
    assert [d for d in result["diagnostics"] if d["severity"] == "Error"] == []
    assert [c["name"] for c in result["columns"]] == list(kql.DRILL_RESULT_COLUMNS)
    assert value not in text or value.isalnum() or value == ""
    # a hostile string as a plain expression is one string value
    probe = f"print v = {kql.kql_string(value)}"
    res = kusto.check(probe)
    assert res["diagnostics"] == [] and res["columns"] == [{"name": "v", "type": "string"}]


# -- parsing answers ----------------------------------------------------------------------------


def _row(**kw: object) -> list[object]:
    base = dict.fromkeys(kql.AGG_RESULT_COLUMNS)
    base.update(kw)
    return list(base.values())


def test_aggregates_from_rows() -> None:
    cols = list(kql.AGG_RESULT_COLUMNS)
    rows = [
        _row(
            Kind="bucket",
            OperationName="Join",
            SdkVersion="1.0",
            BucketStart=S,
            Calls=3,
            Failures=1,
            ExpectedErrors=1,
            DurN=2,
            LogDurSum=10.0,
            LogDurSumSq=50.0,
            Hist='{"170": 1, "180": 1}',
        ),
        _row(
            Kind="bucket",
            OperationName="State-changed",
            SdkVersion="",
            BucketStart=S,
            Calls=2,
            Failures=0,
            ExpectedErrors=0,
            DurN=0,
            LogDurSum=0.0,
            LogDurSumSq=0.0,
            Hist="{}",
        ),
        _row(
            Kind="counts",
            OperationName="",
            SdkVersion="",
            Counts={
                "rows_read": 7,
                "duplicate": 1,
                "missing_operation_id": 1,
                "invalid_payload_json": 2,
            },
        ),
    ]
    agg = kql.aggregates_from_rows(cols, rows)
    assert agg.stats["calls"].tolist() == [3, 2]
    assert agg.stats["bucket_start"].tolist() == [pd.Timestamp(S)] * 2
    assert agg.hist[["bin", "count"]].values.tolist() == [[170, 1], [180, 1]]
    assert agg.rows_read == 7
    assert agg.dropped["duplicate"] == 1 and agg.dropped["pseudo_operation"] == 0
    assert agg.flagged == {
        "invalid_duration": 0,
        "invalid_payload_json": 2,
        "string_number": 0,
        "noncanonical_operation_case": 0,
    }
    assert agg.rows_read == agg.stats["calls"].sum() + sum(agg.dropped.values())


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([], "no counts row"),
        ([_row(Kind="counts", Counts="{}"), _row(Kind="counts", Counts="{}")], "more than one"),
        ([_row(Kind="weird")], "unexpected row kind"),
        ([_row(Kind="counts", Counts="[1]")], "JSON object"),
    ],
)
def test_aggregates_from_rows_refuses_malformed(rows: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        kql.aggregates_from_rows(list(kql.AGG_RESULT_COLUMNS), rows)


def test_aggregates_from_rows_needs_columns() -> None:
    with pytest.raises(ValueError, match="lacks columns"):
        kql.aggregates_from_rows(["Kind"], [])


def test_drill_down_refuses_bad_targets() -> None:
    with pytest.raises(ValueError, match="at least one"):
        kql.drill_down_query([], lateness=timedelta(0))
    bad = kql.DrillTarget("fp", "Join", None, "latency", S, E)
    with pytest.raises(ValueError, match="metric"):
        kql.drill_down_query([bad], lateness=timedelta(0))
    many = [kql.DrillTarget(str(i), "Join", None, "volume", S, E) for i in range(101)]
    with pytest.raises(ValueError, match="at most 100"):
        kql.drill_down_query(many, lateness=timedelta(0))
