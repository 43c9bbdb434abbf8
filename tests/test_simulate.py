"""Tests of the ACS log simulator (detector.simulate): shapes, quirks, labels, determinism.

Every data set here is small (1-7 days at low volume) and generated once per module. The
checks are the ones a broken simulator would fail: exact columns, Kusto value shapes, quirks
at their configured rates, incidents visible in the data, hard negatives really hard, and the
four formats holding the same rows.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import detector.simulate as sim
from detector.schema import LOG_COLUMNS, ResultClass, classify_result
from detector.simulate import (
    SCENARIOS,
    Incident,
    QuirkRates,
    SimParams,
    SimSpec,
    load_incidents,
    load_maintenance,
    simulate,
)
from detector.simulate.writer import DIAGNOSTIC_CONTAINER

ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
ISO_S = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
WEB_SDK = re.compile(r"^(\d+)\.(\d+)\.(\d+)\.(\d+)_(stable|beta)$")
NATIVE_SDK = re.compile(r"^\d+\.\d+\.\d+$")
START = datetime(2026, 11, 2, tzinfo=UTC)
#: A lighter leg (call setup, video and views only, ~8 rows instead of ~20): the scenario
#: checks need volume on a few operations, not the whole mix.
LIGHT = SimParams(leg_mix=(("StartVideo", 0.55), ("CreateView", 2.8)))


# ------------------------------------------------------------------------------------ helpers
def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def parquet_frame(path: Path) -> pd.DataFrame:
    return pq.read_table(path).to_pandas()


def failure_rate(df: pd.DataFrame) -> float:
    classes = df["ResultType"].map(classify_result)
    return float((classes == ResultClass.FAILURE).mean())


def clean(df: pd.DataFrame) -> pd.DataFrame:
    """Rows an aggregator would use: named, real operations with a timestamp, deduplicated."""
    df = df[df["CallClientTimeStamp"].notna() & (df["OperationId"] != "")]
    df = df[~df["OperationName"].isin(["", "CallClientOperations"])]
    return df.drop_duplicates(["OperationId", "CallClientTimeStamp", "OperationName"])


def in_window(df: pd.DataFrame, start: datetime, end: datetime) -> pd.Series:
    return (df["CallClientTimeStamp"] >= start) & (df["CallClientTimeStamp"] < end)


# ----------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def formats(tmp_path_factory: pytest.TempPathFactory) -> dict[str, sim.SimulationResult]:
    """The same two days (seed 7) in all four formats."""
    base = tmp_path_factory.mktemp("formats")
    return {
        fmt: simulate(base / fmt, SimSpec(days=1, seed=7, calls_per_hour=40), fmt=fmt)
        for fmt in ("parquet", "jsonl", "csv", "diagnostic")
    }


@pytest.fixture(scope="module")
def jsonl_rows(formats: dict[str, sim.SimulationResult]) -> list[dict]:
    return read_jsonl(formats["jsonl"].files[0])


@pytest.fixture(scope="module")
def week(tmp_path_factory: pytest.TempPathFactory) -> tuple[sim.SimulationResult, pd.DataFrame]:
    """A quiet week at low volume: cycles, rollout, durations, lag."""
    out = tmp_path_factory.mktemp("week")
    res = simulate(out, SimSpec(days=7, seed=11, scenario="quiet", calls_per_hour=15))
    return res, parquet_frame(res.files[0])


# ------------------------------------------------------------------------------- public API
def test_public_api_is_sorted_and_exported() -> None:
    # isort style, as ruff keeps it: CONSTANTS, then Classes, then functions.
    style = sorted(sim.__all__, key=lambda s: (not s.isupper(), not s[0].isupper(), s))
    assert sim.__all__ == style
    for name in sim.__all__:
        assert hasattr(sim, name), name
    assert {"default", "quiet", "busy_hour", "maintenance_window"} <= set(SCENARIOS)
    for s in SCENARIOS.values():
        assert s.description and "\n" not in s.description


@pytest.mark.parametrize(
    ("spec", "fmt", "match"),
    [
        ({"scenario": "nope"}, "parquet", "unknown scenario"),
        ({}, "xlsx", "unknown format"),
        ({"days": 0}, "parquet", "days must be"),
        ({"calls_per_hour": -1.0}, "parquet", "calls_per_hour"),
    ],
)
def test_bad_arguments_raise_value_error(tmp_path: Path, spec: dict, fmt: str, match: str) -> None:
    args = {"days": 1, "seed": 1, **spec}
    with pytest.raises(ValueError, match=match):
        simulate(tmp_path, SimSpec(**args), fmt=fmt)


# ---------------------------------------------------------------------------- determinism
def test_same_seed_same_bytes_and_frames(tmp_path: Path) -> None:
    a = simulate(tmp_path / "a", SimSpec(days=1, seed=3, calls_per_hour=20), fmt="jsonl")
    b = simulate(tmp_path / "b", SimSpec(days=1, seed=3, calls_per_hour=20), fmt="jsonl")
    c = simulate(tmp_path / "c", SimSpec(days=1, seed=4, calls_per_hour=20), fmt="jsonl")
    assert a.files[0].read_bytes() == b.files[0].read_bytes()
    assert a.incidents_path.read_bytes() == b.incidents_path.read_bytes()
    assert a.files[0].read_bytes() != c.files[0].read_bytes()
    pa_ = simulate(tmp_path / "pa", SimSpec(days=1, seed=3, calls_per_hour=20))
    pb = simulate(tmp_path / "pb", SimSpec(days=1, seed=3, calls_per_hour=20))
    pd.testing.assert_frame_equal(parquet_frame(pa_.files[0]), parquet_frame(pb.files[0]))
    assert pa_.rows == a.rows  # the format does not change what is simulated


def test_incident_timing_varies_with_seed(tmp_path: Path) -> None:
    starts = {
        simulate(
            tmp_path / str(s),
            SimSpec(days=2, seed=s, scenario="fleet_failure_spike", calls_per_hour=1),
        )
        .incidents[0]
        .start
        for s in range(5)
    }
    assert len(starts) >= 3


def test_start_overrides_the_fixed_default(tmp_path: Path) -> None:
    res = simulate(tmp_path, SimSpec(days=1, seed=1, calls_per_hour=5, start=datetime(2027, 1, 4)))
    assert res.start == datetime(2027, 1, 4, tzinfo=UTC)
    df = parquet_frame(res.files[0])
    ts = df["CallClientTimeStamp"].dropna()
    assert ts.min() >= res.start and ts.max() < res.end


# --------------------------------------------------------------------------- columns/shapes
def test_exact_log_analytics_columns_in_every_format(
    formats: dict[str, sim.SimulationResult], jsonl_rows: list[dict]
) -> None:
    names = list(LOG_COLUMNS)
    schema = pq.read_schema(formats["parquet"].files[0])
    assert schema.names == names
    assert str(schema.field("TimeGenerated").type) == "timestamp[us, tz=UTC]"
    assert str(schema.field("DurationMs").type) == "int64"
    assert str(schema.field("ResultSignature").type) == "int32"
    assert all(list(r) == names for r in jsonl_rows)
    header = formats["csv"].files[0].open().readline().strip()
    assert header.split(",") == names


def test_kusto_value_shapes(jsonl_rows: list[dict]) -> None:
    payload_platforms = set()
    for r in jsonl_rows:
        assert ISO_MS.match(r["TimeGenerated"])
        assert r["CallClientTimeStamp"] is None or ISO_MS.match(r["CallClientTimeStamp"])
        for key in ("ClientInstanceId", "EndpointId"):
            assert GUID.match(r[key]), r
        for key in ("CallId", "ParticipantId", "OperationId"):
            assert r[key] == "" or GUID.match(r[key]), r
        assert r["OperationType"] == "client-api-request"
        assert r["Type"] == "ACSCallClientOperations" and r["SourceSystem"] == "Azure"
        assert r["_ResourceId"].startswith("/subscriptions/")
        assert r["_ResourceId"] == r["_ResourceId"].lower()
        assert isinstance(r["DurationMs"], (int, str)) or r["DurationMs"] is None
        assert isinstance(r["ResultSignature"], (int, str))
        assert isinstance(r["OperationPayload"], str)  # dynamic arrives as JSON text
        sdk = r["SdkVersion"]
        m = WEB_SDK.match(sdk)
        if m:  # UserAgent carries the npm form of the same version
            major, minor, patch, build, chan = m.groups()
            npm = f"{major}.{minor}.{patch}" + (f"-beta.{build}" if chan == "beta" else "")
            assert f"azsdk-js-communication-calling/{npm} " in r["UserAgent"]
        else:
            assert NATIVE_SDK.match(sdk), sdk
        try:
            payload = json.loads(r["OperationPayload"])
        except json.JSONDecodeError:
            continue
        if isinstance(payload, dict):
            payload_platforms.add(payload["SdkPlatform"])
            assert (payload["SdkPlatform"] == "Web") == bool(m)
    assert payload_platforms == {"Web", "Android", "iOS", "Windows"}


def test_result_codes_follow_the_workbook(jsonl_rows: list[dict]) -> None:
    df = pd.DataFrame(jsonl_rows)
    types = set(df["ResultType"])
    assert {"Succeeded", "Success", "ExpectedError", "UnexpectedClientError"} <= types
    assert types <= {
        "Succeeded",
        "Success",
        "ExpectedError",
        "ExpectedClientError",
        "UnexpectedClientError",
        "UnexpectedServerError",
        "Failed",
    }
    sig = df["ResultSignature"].astype(int)
    ok = df["ResultType"].isin(["Succeeded", "Success"])
    assert (sig[ok] == 200).all() and (sig[~ok] >= 400).all()
    sub = []
    for text in df.loc[~ok, "OperationPayload"]:
        with contextlib.suppress(json.JSONDecodeError, KeyError, TypeError):
            sub.append(int(float(json.loads(text)["SubCode"])))
    assert sub and all(40000 <= s <= 46999 or 10000 <= s <= 560999 for s in sub)
    pairs = set(zip(df.loc[~ok, "ResultType"], sig[~ok], strict=True))
    assert ("ExpectedError", 401) in pairs or ("ExpectedError", 487) in pairs


def test_call_legs_are_sequences_of_operations(jsonl_rows: list[dict]) -> None:
    df = pd.DataFrame(jsonl_rows)
    df = df[df["CallClientTimeStamp"].notna()]
    names = set(df["OperationName"])
    for op in (
        "CallAgentInit",
        "StartCall",
        "Join",
        "HandleIncomingCall",
        "AcceptIncomingCall",
        "CreateView",
        "DisposeView",
        "MuteMicrophone",
        "UnmuteMicrophone",
        "StartVideo",
        "StopVideo",
        "StartScreenShare",
        "State-changed",
        "UserFacingDiagnostics",
        "Hangup",
    ):
        assert op in names, op
    # CallAgentInit mostly without CallId/ParticipantId, linked only by ClientInstanceId.
    init = df[df["OperationName"] == "CallAgentInit"]
    assert 0.6 < (init["CallId"] == "").mean() < 0.95
    # Several CreateView per leg; a leg's rows share ClientInstanceId and CallId.
    legs = df[df["CallId"] != ""].groupby("CallId")
    views = df[df["OperationName"] == "CreateView"].groupby("ClientInstanceId").size()
    assert views.mean() > 2.0
    assert (legs["ClientInstanceId"].nunique() == 1).all()
    # Hangup comes after the call starts within a leg.
    starts = df[df["OperationName"].isin(["Join", "StartCall"])].set_index("CallId")
    hang = df[df["OperationName"] == "Hangup"].set_index("CallId")
    both = starts[["CallClientTimeStamp"]].join(
        hang[["CallClientTimeStamp"]].rename(
            columns={"CallClientTimeStamp": "CallClientTimeStamp_h"}
        ),
        how="inner",
    )
    both = both[~both.index.duplicated()]
    assert (both["CallClientTimeStamp_h"] > both["CallClientTimeStamp"]).mean() > 0.99


def test_ufd_pairs_share_operation_id_with_mixed_casing(jsonl_rows: list[dict]) -> None:
    ufd = [r for r in jsonl_rows if r["OperationName"] == "UserFacingDiagnostics"]
    by_id: dict[str, list[dict]] = {}
    for r in ufd:
        by_id.setdefault(r["OperationId"], []).append(r)
    pairs = [v for k, v in by_id.items() if k and len(v) == 2]
    assert len(pairs) > 0.7 * len(by_id)
    keys = set()
    for a, b in pairs[:300]:
        try:
            pa_, pb = (
                json.loads(x["OperationPayload"])
                for x in sorted((a, b), key=lambda r: r["CallClientTimeStamp"] or "")
            )
        except json.JSONDecodeError:  # the invalid-payload quirk
            continue
        qa = pa_.get("DiagnosticQuality", pa_.get("diagnosticQuality"))
        qb = pb.get("DiagnosticQuality", pb.get("diagnosticQuality"))
        assert str(qa).lower() in ("bad", "poor") and str(qb).lower() == "good"
        keys |= set(pa_) | set(pb)
    assert {"DiagnosticChanged", "diagnosticChanged"} <= keys


# ----------------------------------------------------------------------------------- quirks
def test_quirks_at_their_configured_rates(tmp_path: Path) -> None:
    rates = QuirkRates(
        string_numbers=0.05,
        invalid_payload=0.02,
        lowercase_event=0.2,
        duplicate=0.02,
        empty_ids=0.03,
        empty_operation_name=0.01,
        pseudo_operation=0.01,
        empty_operation_id=0.01,
        null_duration=0.01,
        null_timestamp=0.005,
    )
    res = simulate(
        tmp_path,
        SimSpec(days=1, seed=5, calls_per_hour=90, params=SimParams(quirks=rates)),
        fmt="jsonl",
    )
    rows = read_jsonl(res.files[0])
    n = len(rows)
    assert n > 30_000

    def near(count: int, rate: float, base: int = n) -> None:
        expected = rate * base
        assert abs(count - expected) < 5 * math.sqrt(expected) + 0.15 * expected, (count, expected)

    near(sum(isinstance(r["DurationMs"], str) for r in rows), rates.string_numbers)
    assert all(
        isinstance(r["ResultSignature"], str) == isinstance(r["DurationMs"], str)
        for r in rows
        if r["DurationMs"] is not None
    )
    invalid = 0
    for r in rows:
        try:
            json.loads(r["OperationPayload"])
        except json.JSONDecodeError:
            invalid += 1
    near(invalid, rates.invalid_payload)
    near(sum(r["OperationName"] == "" for r in rows), rates.empty_operation_name)
    near(sum(r["OperationName"] == "CallClientOperations" for r in rows), rates.pseudo_operation)
    near(sum(r["OperationId"] == "" for r in rows), rates.empty_operation_id)
    near(sum(r["CallClientTimeStamp"] is None for r in rows), rates.null_timestamp)
    changed = [r for r in rows if r["OperationName"].lower().endswith("-changed")]
    near(sum(r["OperationName"][0].islower() for r in changed), rates.lowercase_event, len(changed))
    # Exact duplicates: same OperationId and CallClientTimeStamp, every other field equal,
    # ingested again with a later TimeGenerated.
    df = pd.DataFrame(rows)
    keyed = df[(df["OperationId"] != "") & df["CallClientTimeStamp"].notna()]
    key = ["OperationId", "CallClientTimeStamp", "OperationName"]
    copies = int(keyed.duplicated(key).sum())
    near(copies, rates.duplicate / (1 + rates.duplicate), len(keyed))
    rest = [c for c in df.columns if c != "TimeGenerated"]
    assert int(keyed.duplicated(rest).sum()) == copies  # exact copies but for TimeGenerated
    assert int(keyed.duplicated().sum()) == 0  # ... which is always later, never equal
    first = keyed.drop_duplicates(key, keep="first").set_index(key)["TimeGenerated"]
    again = keyed[keyed.duplicated(key)].set_index(key)["TimeGenerated"]
    assert (again > first.reindex(again.index)).all()


def test_default_quirks_present_in_small_amounts(jsonl_rows: list[dict]) -> None:
    n = len(jsonl_rows)
    names = [r["OperationName"] for r in jsonl_rows]
    assert 0 < sum(isinstance(r["DurationMs"], str) for r in jsonl_rows) < 0.03 * n
    assert 0 < names.count("") < 0.005 * n
    assert 0 < names.count("CallClientOperations") < 0.005 * n
    assert "state-changed" in names and "State-changed" in names
    assert any(r["DurationMs"] is None for r in jsonl_rows)


# ---------------------------------------------------------------------------------- formats
def _normalise(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for c in ("TimeGenerated", "CallClientTimeStamp"):
        out[c] = pd.to_datetime(out[c], utc=True, format="ISO8601")
    for c in ("DurationMs", "ResultSignature"):
        out[c] = pd.to_numeric(out[c]).astype("Float64")
    for c in out.columns:
        if c not in ("TimeGenerated", "CallClientTimeStamp", "DurationMs", "ResultSignature"):
            out[c] = out[c].fillna("").astype(str)
    key = ["TimeGenerated", "OperationId", "CallClientTimeStamp", "OperationName", "CallId"]
    return out.sort_values(key, na_position="first").reset_index(drop=True)[list(LOG_COLUMNS)]


def _diagnostic_records(res: sim.SimulationResult) -> list[tuple[Path, dict]]:
    out = []
    for path in res.files:
        with path.open(encoding="utf-8") as fh:
            out += [(path, json.loads(line)) for line in fh]
    return out


def test_all_formats_hold_the_same_rows(
    formats: dict[str, sim.SimulationResult], jsonl_rows: list[dict]
) -> None:
    ref = _normalise(parquet_frame(formats["parquet"].files[0]))
    as_json = _normalise(pd.DataFrame(jsonl_rows))
    as_csv = _normalise(
        pd.read_csv(formats["csv"].files[0], dtype=str, keep_default_na=False, na_values=[""])
    )
    props = [
        r["properties"] | {"_ResourceId": r["resourceId"].lower()}
        for _, r in _diagnostic_records(formats["diagnostic"])
    ]
    as_diag = _normalise(pd.DataFrame(props))
    assert len(ref) == formats["parquet"].rows == len(as_json) == len(as_csv) == len(as_diag)
    pd.testing.assert_frame_equal(ref, as_json)
    pd.testing.assert_frame_equal(ref, as_csv)
    pd.testing.assert_frame_equal(ref, as_diag)


def test_diagnostic_layout_keyed_by_receive_hour(formats: dict[str, sim.SimulationResult]) -> None:
    res = formats["diagnostic"]
    root = res.out_dir / DIAGNOSTIC_CONTAINER
    assert res.data_path == root
    pattern = re.compile(
        r"resourceId=/SUBSCRIPTIONS/[0-9A-F-]{36}/RESOURCEGROUPS/[A-Z0-9-]+/PROVIDERS/"
        r"MICROSOFT\.COMMUNICATION/COMMUNICATIONSERVICES/[A-Z0-9-]+/"
        r"y=(\d{4})/m=(\d{2})/d=(\d{2})/h=(\d{2})/m=00/PT1H\.json$"
    )
    assert len(res.files) >= 24
    late_in_blob = 0
    for path, rec in _diagnostic_records(res):
        m = pattern.search(path.relative_to(root).as_posix())
        assert m, path
        assert set(rec) == {"time", "resourceId", "operationName", "category", "properties"}
        assert rec["category"] == "CallClientOperations"
        assert rec["operationName"] == "CallClientOperations"
        props = rec["properties"]
        assert rec["time"] == props["TimeGenerated"]
        assert "_ResourceId" not in props and props["Type"] == "ACSCallClientOperations"
        y, mo, d, h = m.groups()
        assert props["TimeGenerated"].startswith(f"{y}-{mo}-{d}T{h}:")
        cts = props["CallClientTimeStamp"]
        late_in_blob += cts is not None and not cts.startswith(f"{y}-{mo}-{d}T{h}:")
    assert late_in_blob > 0  # blobs hold events generated outside their hour


def test_rerun_replaces_outputs(tmp_path: Path) -> None:
    a = simulate(tmp_path, SimSpec(days=1, seed=2, calls_per_hour=5), fmt="diagnostic")
    b = simulate(tmp_path, SimSpec(days=1, seed=2, calls_per_hour=5), fmt="diagnostic")
    assert sum(1 for _ in _diagnostic_records(b)) == b.rows == a.rows


# ------------------------------------------------------------------------------ population
def test_daily_and_weekly_cycles(week: tuple[sim.SimulationResult, pd.DataFrame]) -> None:
    _, df = week
    t = clean(df)["CallClientTimeStamp"]
    per_hour = t.dt.floor("h").value_counts()
    idx = per_hour.index
    weekday = idx.day_of_week < 5
    peak = per_hour[weekday & (idx.hour >= 10) & (idx.hour < 16)].mean()
    night = per_hour[weekday & (idx.hour < 5)].mean()
    weekend = per_hour[~weekday & (idx.hour >= 10) & (idx.hour < 16)].mean()
    assert peak > 3 * night
    assert weekend < 0.6 * peak


def test_sdk_rollout_retirement_and_rare_version(
    week: tuple[sim.SimulationResult, pd.DataFrame],
) -> None:
    res, df = week
    manifest = json.loads((res.out_dir / "simulation.json").read_text())
    new = manifest["rollout"]["sdk_version"]
    rollout = pd.Timestamp(manifest["rollout"]["start"])
    df = clean(df)
    day = df["CallClientTimeStamp"].dt.floor("D")
    share = df.groupby(day)["SdkVersion"].apply(lambda s: (s == new).mean())
    assert (df.loc[df["SdkVersion"] == new, "CallClientTimeStamp"] >= rollout).all()
    assert share.iloc[-1] > share.iloc[-3] > 0.0  # ramps up over days
    old = df.groupby(day)["SdkVersion"].apply(lambda s: (s == "1.38.1.0_stable").mean())
    assert old.iloc[-1] < 0.5 * old.iloc[0]  # decays
    retired = df[df["SdkVersion"] == "1.37.2.0_stable"]["CallClientTimeStamp"]
    assert retired.max() < res.start + pd.Timedelta(hours=110 + 4)
    # The rare build stays rare whatever the volume: ~20 legs a day.
    rare = df[df["SdkVersion"] == manifest["rare_sdk_version"]]
    legs_per_day = rare["ClientInstanceId"].nunique() / 7
    assert 5 < legs_per_day < 40
    assert df["SdkVersion"].nunique() >= 8


def test_durations_right_skewed_around_latency_goals(
    week: tuple[sim.SimulationResult, pd.DataFrame],
) -> None:
    _, df = week
    df = clean(df)
    d = df[df["DurationMs"].notna()]
    goals = {
        "CallAgentInit": 2000,
        "Join": 5000,
        "StartCall": 1000,
        "StartVideo": 7000,
        "StopVideo": 1000,
    }
    for op, goal in goals.items():
        x = d.loc[d["OperationName"] == op, "DurationMs"]
        assert x.median() < 0.6 * goal, op
        assert x.mean() > x.median(), op  # right-skewed
        assert 0.002 < (x > goal).mean() < 0.2, op  # a tail above the goal
    cv = d.loc[d["OperationName"] == "CreateView", "DurationMs"].median()
    assert 450 < cv < 750
    points = d[d["OperationName"].str.lower().str.endswith("-changed")]
    assert (points["DurationMs"] == 0).all()
    sdk_platform = df["OperationPayload"].str.extract(r'"SdkPlatform":"(\w+)"')[0]
    join = d["OperationName"] == "Join"
    android = d.loc[join & (sdk_platform == "Android"), "DurationMs"].median()
    ios = d.loc[join & (sdk_platform == "iOS"), "DurationMs"].median()
    assert android > 1.1 * ios


def test_ingestion_lag_minutes_to_hours(week: tuple[sim.SimulationResult, pd.DataFrame]) -> None:
    _, df = week
    lag = (df["TimeGenerated"] - df["CallClientTimeStamp"]).dropna().dt.total_seconds()
    assert (lag > 0).all()
    assert 120 < lag.median() < 600
    assert 0.005 < (lag > 7200).mean() < 0.06


# --------------------------------------------------------------------------------- scenarios
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_scenario_writes_valid_labels(tmp_path: Path, name: str) -> None:
    res = simulate(tmp_path, SimSpec(days=4, seed=21, scenario=name, calls_per_hour=2))
    raw = json.loads(res.incidents_path.read_text())
    assert isinstance(raw, list)
    incidents = load_incidents(tmp_path)
    assert incidents == res.incidents
    hard = SCENARIOS[name].hard_negative
    assert (raw == []) == hard
    for d, inc in zip(raw, incidents, strict=True):
        assert {"operation_name", "sdk_version", "metric", "start", "end"} <= set(d)
        assert ISO_S.match(d["start"]) and ISO_S.match(d["end"])
        assert d["metric"] in ("duration", "failure_rate", "volume", "joint")  # joint: several
        assert res.start <= inc.start < inc.end <= res.end
        assert inc.start >= res.warmup_end  # clean history first
        if d["metric"] != "duration" or d["sdk_version"] is None and "creep" not in d["effect"]:
            assert inc.end - inc.start <= pd.Timedelta(hours=4)
    maint = load_maintenance(tmp_path)
    assert bool(maint) == (name == "maintenance_window")
    for m in maint:
        assert res.warmup_end <= m.start < m.end <= res.end


def test_incident_round_trip_and_validation() -> None:
    inc = Incident("Join", None, "duration", START, START + pd.Timedelta(hours=1))
    assert Incident.from_dict(inc.to_dict()) == inc
    with pytest.raises(ValueError, match="lacks"):
        Incident.from_dict({"operation_name": "Join"})
    with pytest.raises(ValueError, match="metric"):
        Incident.from_dict(inc.to_dict() | {"metric": "p95"})


@pytest.fixture(scope="module")
def incident_sets(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[sim.SimulationResult, pd.DataFrame]]:
    """Five labelled scenarios, 4 days at a volume where the effects are measurable."""
    out: dict[str, tuple[sim.SimulationResult, pd.DataFrame]] = {}
    for name in (
        "new_version_latency",
        "fleet_failure_spike",
        "new_version_failures",
        "traffic_drop",
        "slow_drift",
    ):
        res = simulate(
            tmp_path_factory.mktemp(name),
            SimSpec(days=4, seed=8, scenario=name, calls_per_hour=80, params=LIGHT),
        )
        out[name] = (res, clean(parquet_frame(res.files[0])))
    return out


@pytest.mark.parametrize(
    "name",
    [
        "new_version_latency",
        "fleet_failure_spike",
        "new_version_failures",
        "traffic_drop",
        "slow_drift",
    ],
)
def test_incidents_are_visible_in_the_data(incident_sets: dict, name: str) -> None:
    res, df = incident_sets[name]
    assert res.incidents
    for inc in res.incidents:
        m = df["OperationName"] == inc.operation_name
        if inc.sdk_version is not None:
            m &= df["SdkVersion"] == inc.sdk_version
        w = in_window(df, inc.start, inc.end)
        inside, outside = df[m & w], df[m & ~w & (df["CallClientTimeStamp"] < res.warmup_end)]
        if inc.sdk_version is not None:  # the new build has no history: compare to the others
            outside = df[
                (df["OperationName"] == inc.operation_name) & (df["SdkVersion"] != inc.sdk_version)
            ]
        assert len(inside) >= 20, inc
        if inc.metric == "duration":
            for q in (0.5, 0.95):
                ratio = inside["DurationMs"].quantile(q) / outside["DurationMs"].quantile(q)
                assert ratio >= 1.4, (inc, q, ratio)
        elif inc.metric == "failure_rate":
            assert failure_rate(inside) - failure_rate(outside) >= 0.05, inc
        else:  # volume against the same clock hours of the warm-up weekdays
            hours = sorted(set(inside["CallClientTimeStamp"].dt.hour))
            same = outside[outside["CallClientTimeStamp"].dt.hour.isin(hours)]
            n_days = same["CallClientTimeStamp"].dt.floor("D").nunique()
            per_day = len(same) / n_days * (inc.end - inc.start) / pd.Timedelta(hours=len(hours))
            assert len(inside) <= 0.5 * per_day, (len(inside), per_day)


def test_hard_negatives_are_hard(tmp_path: Path) -> None:
    """The degradations the detector must not alert on are really in the data."""
    maint = simulate(
        tmp_path / "m",
        SimSpec(days=4, seed=8, scenario="maintenance_window", calls_per_hour=60, params=LIGHT),
    )
    df = clean(parquet_frame(maint.files[0]))
    (win,) = maint.maintenance
    join = df[df["OperationName"] == "Join"]
    w = in_window(join, win.start, win.end)
    assert failure_rate(join[w]) - failure_rate(join[~w]) >= 0.1

    busy = simulate(
        tmp_path / "b",
        SimSpec(days=4, seed=8, scenario="busy_hour", calls_per_hour=60, params=LIGHT),
    )
    effects = json.loads((busy.out_dir / "simulation.json").read_text())["effects"]
    (surge,) = [e for e in effects if e["kind"] == "surge"]
    s, e = pd.Timestamp(surge["start"]), pd.Timestamp(surge["end"])
    df = clean(parquet_frame(busy.files[0]))
    w = in_window(df, s, e)
    prev = in_window(df, s - pd.Timedelta(days=1), e - pd.Timedelta(days=1))
    if (s - pd.Timedelta(days=1)).day_of_week < 5:
        assert w.sum() > 1.8 * prev.sum()
    j = df["OperationName"] == "Join"
    assert 0.8 < df.loc[j & w, "DurationMs"].median() / df.loc[j & ~w, "DurationMs"].median() < 1.25

    rare = simulate(
        tmp_path / "r",
        SimSpec(days=4, seed=8, scenario="rare_version_noise", calls_per_hour=60, params=LIGHT),
    )
    manifest = json.loads((rare.out_dir / "simulation.json").read_text())
    eff = manifest["effects"][0]
    df = clean(parquet_frame(rare.files[0]))
    w = in_window(df, pd.Timestamp(eff["start"]), pd.Timestamp(eff["end"]))
    v = df["SdkVersion"] == manifest["rare_sdk_version"]
    calls = df[v & w & df["OperationName"].isin(["Join", "StartCall"])]
    assert 0 < len(calls) < 25  # a handful: must be suppressed for low volume
    assert failure_rate(calls) > 0.2 or (
        calls["DurationMs"].median()
        > 2 * df.loc[~v & df["OperationName"].isin(["Join", "StartCall"]), "DurationMs"].median()
    )


# ---------------------------------------------------------------------------------- result
def test_progress_and_result(tmp_path: Path) -> None:
    seen: list[int] = []
    res = simulate(
        tmp_path,
        SimSpec(
            days=1, seed=1, calls_per_hour=30, params=replace(SimParams(), max_legs_per_chunk=10)
        ),
        progress=seen.append,
    )
    assert seen == sorted(seen) and seen[-1] == res.rows
    assert len(seen) > 24  # streamed in many parts
    assert pq.ParquetFile(res.files[0]).metadata.num_rows == res.rows
    assert res.legs > 0 and res.rows > 15 * res.legs
    manifest = json.loads((tmp_path / "simulation.json").read_text())
    assert manifest["rows"] == res.rows and manifest["seed"] == 1
    assert not (tmp_path / "maintenance.json").exists()
    assert np.isclose(res.rows / res.legs, 20, rtol=0.3)


def test_summary_names_the_period_and_labels(tmp_path: Path) -> None:
    res = simulate(
        tmp_path, SimSpec(days=2, seed=1, scenario="fleet_failure_spike", calls_per_hour=2)
    )
    text = res.summary()
    assert f"{res.rows:,} rows" in text and "2026-11-02T00:00:00Z" in text
    assert "StartVideo (all versions) failure_rate" in text
    quiet = simulate(tmp_path / "q", SimSpec(days=2, seed=1, scenario="quiet", calls_per_hour=2))
    assert "hard negative" in quiet.summary()


def test_invalid_params_report_every_problem(tmp_path: Path) -> None:
    bad = replace(
        SimParams(),
        leg_mix=(("Teleport", 1.0),),
        ufd_flag_encoding="emoji",
        quirks=QuirkRates(duplicate=1.5),
    )
    with pytest.raises(ValueError, match="Teleport") as err:
        simulate(tmp_path, SimSpec(days=1, seed=1, params=bad))
    assert "ufd_flag_encoding" in str(err.value) and "quirks.duplicate" in str(err.value)


def test_the_tail_regression_scenario_moves_the_p95_not_the_median(tmp_path: Path) -> None:
    """A tail-only regression: a minority of the new build's calls slow, so its p95 rises
    while its median barely moves (what a test of the mean log-duration hardly sees)."""
    from detector.simulate import SimSpec, simulate

    res = simulate(tmp_path, SimSpec(days=4, seed=8, scenario="tail_regression", calls_per_hour=80))
    (inc,) = res.incidents
    assert (inc.operation_name, inc.metric) == ("CreateView", "duration")
    df = pd.read_parquet(
        res.files[0], columns=["TimeGenerated", "OperationName", "SdkVersion", "DurationMs"]
    )
    op = df[df["OperationName"] == inc.operation_name]
    t = pd.to_datetime(op["TimeGenerated"], utc=True)
    inside = op[(op["SdkVersion"] == inc.sdk_version) & (t >= inc.start) & (t < inc.end)]
    others = op[op["SdkVersion"] != inc.sdk_version]
    assert len(inside) >= 200
    ratio = {
        q: inside["DurationMs"].quantile(q) / others["DurationMs"].quantile(q) for q in (0.5, 0.95)
    }
    assert ratio[0.95] >= 1.3 and ratio[0.5] <= 1.15, ratio
