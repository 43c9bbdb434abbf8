"""Log Analytics source through the real LogsQueryClient against the local HTTPS emulator.

Every KQL text sent in these tests is checked by the Kusto language service at fixture teardown
(``emulator`` in tests/fixtures_loganalytics.py).
"""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from detector.anomaly import Anomaly
from detector.errors import AuthError, ConfigError, PartialResultError, QueryFailedError
from detector.schema import AGG_KEY, CLUSTER_LOOKBACK, DROP_REASONS
from detector.source import kql
from detector.source.log_analytics import (
    EnvTokenCredential,
    IncompleteReadError,
    LogAnalyticsSettings,
    LogAnalyticsSource,
    merge_aggregates,
    pack_chunks,
)
from tests.fixtures_loganalytics import T0, emulator, kusto, make_source, sample_rows  # noqa: F401
from tests.la_emulator import TOKEN, FakeCredential, Fault

pytestmark = pytest.mark.node
BUCKET = timedelta(minutes=5)
H = timedelta(hours=1)


def _row(op: str, opid: str, cct: str, tg: str, **kw: object) -> dict:
    base = {
        "OperationName": op,
        "OperationId": opid,
        "CallClientTimeStamp": cct,
        "TimeGenerated": tg,
        "ResultType": "Succeeded",
        "DurationMs": 1000,
        "SdkVersion": "1.0.0.0_stable",
        "CallId": "c-" + opid,
        "ResultSignature": 200,
        "OperationPayload": "{}",
    }
    base.update(kw)
    return base


# A case table: each row says what it tests; expectations below are counted by hand.
CASE = pd.DataFrame(
    [
        _row("Join", "a", "2025-03-01T00:01:00Z", "2025-03-01T00:02:00Z"),
        _row("Join", "a", "2025-03-01T00:01:00Z", "2025-03-01T00:03:00Z"),  # duplicate
        _row(
            "join",
            "b",
            "2025-03-01T00:02:00Z",
            "2025-03-01T00:04:00Z",
            ResultType="UnexpectedClientError",
            DurationMs=5000,
        ),
        _row(
            "Join",
            "c",
            "2025-03-01T00:06:00Z",
            "2025-03-01T00:07:00Z",
            ResultType="ExpectedError",
            DurationMs=None,
        ),
        _row(
            "State-changed",
            "d",
            "2025-03-01T00:03:00Z",
            "2025-03-01T00:04:00Z",
            DurationMs=0,
            OperationPayload="{bad",
        ),
        _row("CallClientOperations", "e", "2025-03-01T00:03:00Z", "2025-03-01T00:04:00Z"),
        _row("", "f", "2025-03-01T00:03:00Z", "2025-03-01T00:04:00Z"),
        _row("Join", " ", "2025-03-01T00:03:00Z", "2025-03-01T00:04:00Z"),
        _row("Join", "g", None, "2025-03-01T00:04:00Z"),
        # late: generated at 00:04, arrives at 03:00 -> a later window, bucket 00:00
        _row("Join", "h", "2025-03-01T00:04:00Z", "2025-03-01T03:00:00Z", ResultType="Failed"),
    ]
)


def test_case_table_one_window(emulator) -> None:  # noqa: F811
    emu = emulator(CASE)
    src = make_source(emu)
    agg = src.read_aggregates((T0, T0 + H), bucket=BUCKET)
    stats = agg.stats.set_index(["operation_name", "bucket_start"])
    join0 = stats.loc[("Join", pd.Timestamp("2025-03-01T00:00Z"))]
    assert (join0.calls, join0.failures, join0.expected_errors, join0.dur_n) == (2, 1, 0, 2)
    assert join0.log_dur_sum == pytest.approx(np.log(1000) + np.log(5000))
    join5 = stats.loc[("Join", pd.Timestamp("2025-03-01T00:05:00Z"))]
    assert (join5.calls, join5.expected_errors, join5.dur_n) == (1, 1, 0)
    sc = stats.loc[("State-changed", pd.Timestamp("2025-03-01T00:00Z"))]
    assert (sc.calls, sc.dur_n) == (1, 0)  # point event: no duration
    assert agg.rows_read == 9
    assert agg.dropped == {
        "malformed_record": 0,  # a typed table has none
        "missing_operation_name": 1,
        "pseudo_operation": 1,
        "missing_operation_id": 1,
        "invalid_timestamp": 1,
        "duplicate": 1,
        "partition_cap": 0,
    }
    assert agg.flagged["invalid_duration"] == 1
    assert agg.flagged["invalid_payload_json"] == 1
    assert agg.flagged["noncanonical_operation_case"] == 1
    assert agg.rows_read == agg.stats["calls"].sum() + sum(agg.dropped.values())
    assert sorted(agg.hist["count"]) == [1, 1]
    # the late row arrives in a later window and lands in the 00:00 bucket there
    later = src.read_aggregates((T0 + 2 * H, T0 + 4 * H), bucket=BUCKET)
    assert later.stats[["operation_name", "calls", "failures"]].values.tolist() == [["Join", 1, 1]]
    assert later.stats["bucket_start"].iloc[0] == pd.Timestamp("2025-03-01T00:00Z")
    req = emu.requests[0]
    assert req.authorized and "wait=180" in req.prefer


def test_resource_id_uses_query_resource(emulator) -> None:  # noqa: F811
    rid = "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Communication/CommunicationServices/acs1"
    emu = emulator(CASE, workspaces=(), resources=(rid,))
    src = make_source(emu, workspace_id=None, resource_id=rid)
    agg = src.read_aggregates((T0, T0 + H), bucket=BUCKET)
    assert agg.rows_read == 9
    assert emu.requests[0].path == f"/v1{rid}/query"


def test_token_scope_is_audience_or_endpoint(emulator) -> None:  # noqa: F811
    emu = emulator(CASE)
    cred = FakeCredential()
    make_source(emu, credential=cred).read_aggregates((T0, T0 + H), bucket=BUCKET)
    assert cred.scopes == [f"{emu.endpoint}/.default"]
    cred2 = FakeCredential()
    src = make_source(emu, credential=cred2, audience="https://api.loganalytics.azure.cn")
    src.read_aggregates((T0, T0 + H), bucket=BUCKET)
    assert cred2.scopes == ["https://api.loganalytics.azure.cn/.default"]


def test_env_credential_reads_token_from_environment(emulator, monkeypatch) -> None:  # noqa: F811
    emu = emulator(CASE)
    monkeypatch.setenv("LA_TOKEN", TOKEN)
    assert (
        make_source(emu, credential=EnvTokenCredential("LA_TOKEN"))
        .read_aggregates((T0, T0 + H), bucket=BUCKET)
        .rows_read
        == 9
    )
    settings = LogAnalyticsSettings(
        workspace_id="ws-test",
        endpoint=emu.endpoint,
        connection_verify=emu.ca_file,
        credential="env:LA_TOKEN",
    )
    src = LogAnalyticsSource(settings)  # credential built from settings
    assert src.read_aggregates((T0, T0 + H), bucket=BUCKET).rows_read == 9
    monkeypatch.delenv("LA_TOKEN")
    src2 = LogAnalyticsSource(settings)
    with pytest.raises(AuthError, match="LA_TOKEN is empty or unset"):
        src2.read_aggregates((T0, T0 + H), bucket=BUCKET)


# -- faults -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        Fault("status", 429, headers={"Retry-After": "0"}),
        Fault("status", 429),
        Fault("status", 429, headers={"retry-after-ms": "10"}),
        Fault("status", 500),
        Fault("status", 502),
        Fault("status", 503),
        Fault("drop"),
        Fault("slow", delay=0.2),
    ],
    ids=[
        "429-retry-after",
        "429-bare",
        "429-retry-after-ms",
        "500",
        "502",
        "503",
        "conn-drop",
        "slow-ok",
    ],
)
def test_transient_faults_are_retried(emulator, fault: Fault) -> None:  # noqa: F811
    emu = emulator(CASE)
    emu.push(fault, fault)
    src = make_source(emu)
    agg = src.read_aggregates((T0, T0 + H), bucket=BUCKET)
    assert agg.rows_read == 9
    if fault.kind == "slow":
        assert src.stats.retries == 0
    else:
        assert src.stats.retries == 2 and src.stats.queries == 3
    assert src.stats.throttled == (2 if fault.status == 429 and fault.kind == "status" else 0)


def test_read_timeout_is_retried_then_succeeds(emulator) -> None:  # noqa: F811
    emu = emulator(CASE)
    emu.push(Fault("slow", delay=4.0))
    # (2 s: a loaded box answers the normal retry well within it; 0.5 s timed it out too)
    src = make_source(emu, read_timeout=2.0)
    assert src.read_aggregates((T0, T0 + H), bucket=BUCKET).rows_read == 9
    assert src.stats.retries == 1


def test_retries_are_bounded(emulator) -> None:  # noqa: F811
    emu = emulator(CASE)
    emu.push(*[Fault("status", 503)] * 10)
    src = make_source(emu, max_attempts=3)
    with pytest.raises(QueryFailedError, match=r"HTTP 503.*gave up after 3 attempts"):
        src.read_aggregates((T0, T0 + H), bucket=BUCKET)
    assert len(emu.requests) == 3


def test_retry_after_beyond_budget_fails_fast(emulator) -> None:  # noqa: F811
    emu = emulator(CASE)
    emu.push(Fault("status", 429, headers={"Retry-After": "3600"}))
    slept: list[float] = []
    src = make_source(emu, retry_budget=60)
    src._sleep = slept.append
    with pytest.raises(QueryFailedError, match="retry budget"):
        src.read_aggregates((T0, T0 + H), bucket=BUCKET)
    assert slept == [] and len(emu.requests) == 1


def test_retry_after_is_honoured(emulator) -> None:  # noqa: F811
    emu = emulator(CASE)
    emu.push(Fault("status", 429, headers={"Retry-After": "7"}))
    slept: list[float] = []
    src = make_source(emu)
    src._sleep = slept.append
    src.read_aggregates((T0, T0 + H), bucket=BUCKET)
    assert slept == [7.0]


@pytest.mark.parametrize(
    ("status", "match"),
    [
        (401, "token was refused"),
        (403, "'Log Analytics Reader' role on the Log Analytics workspace"),
    ],
)
def test_auth_errors_name_the_fix_and_never_the_token(emulator, status: int, match: str) -> None:  # noqa: F811
    emu = emulator(CASE)
    emu.push(Fault("status", status))
    src = make_source(emu)
    with pytest.raises(AuthError, match=match) as info:
        src.read_aggregates((T0, T0 + H), bucket=BUCKET)
    assert TOKEN not in str(info.value)
    assert len(emu.requests) == 1  # not retried


def test_wrong_token_is_401(emulator) -> None:  # noqa: F811
    emu = emulator(CASE)
    src = make_source(emu, credential=FakeCredential("secret-wrong-token"))
    with pytest.raises(AuthError) as info:
        src.read_aggregates((T0, T0 + H), bucket=BUCKET)
    assert "secret-wrong-token" not in str(info.value)


def test_bad_request_is_not_retried(emulator) -> None:  # noqa: F811
    emu = emulator(CASE)
    emu.push(Fault("status", 400))
    src = make_source(emu)
    with pytest.raises(QueryFailedError, match="HTTP 400"):
        src.read_aggregates((T0, T0 + H), bucket=BUCKET)
    assert len(emu.requests) == 1


def test_partial_answer_is_split_never_used(emulator) -> None:  # noqa: F811
    emu = emulator(CASE)
    whole = make_source(emu).read_aggregates((T0, T0 + 4 * H), bucket=BUCKET)
    emu.push(Fault("partial"))
    src = make_source(emu)
    agg = src.read_aggregates((T0, T0 + 4 * H), bucket=BUCKET)
    assert src.stats.splits == 1 and len(src.stats.chunks) == 2
    _assert_same(agg, whole)


def test_partial_at_min_chunk_raises(emulator) -> None:  # noqa: F811
    emu = emulator(CASE)
    emu.push(*[Fault("partial")] * 3)
    src = make_source(emu, min_chunk=timedelta(minutes=30))
    with pytest.raises(PartialResultError, match="cannot be read whole") as info:
        src.read_aggregates((T0, T0 + H), bucket=BUCKET)
    assert not isinstance(info.value, IncompleteReadError)
    assert "Low memory" in str(info.value)


def test_504_splits_the_chunk(emulator) -> None:  # noqa: F811
    emu = emulator(CASE)
    emu.push(Fault("status", 504))
    src = make_source(emu)
    agg = src.read_aggregates((T0, T0 + 4 * H), bucket=BUCKET)
    assert src.stats.splits == 1 and agg.rows_read == 10


def test_later_chunk_failure_reports_completed_prefix(emulator) -> None:  # noqa: F811
    rows = sample_rows(hours=4, per_hour=100)
    emu = emulator(rows)
    src = make_source(emu, plan_threshold=timedelta(hours=1), max_rows_per_chunk=60, max_attempts=2)
    # plan, chunk 1 ok, then the next chunk fails twice
    total = src.read_aggregates((T0 - H, T0 + 10 * H), bucket=BUCKET)
    n_chunks = len(src.stats.chunks)
    assert n_chunks >= 3
    emu.push(
        Fault("slow", delay=0), Fault("slow", delay=0), Fault("status", 500), Fault("status", 500)
    )
    src2 = make_source(
        emu, plan_threshold=timedelta(hours=1), max_rows_per_chunk=60, max_attempts=2
    )
    with pytest.raises(IncompleteReadError) as info:
        src2.read_aggregates((T0 - H, T0 + 10 * H), bucket=BUCKET)
    err = info.value
    first = src.stats.chunks[0]
    assert err.completed_until.isoformat() == first["end"]
    assert err.aggregates.rows_read == first["rows_read"]
    assert isinstance(err.__cause__, QueryFailedError)
    assert total.rows_read == len(rows)


# -- windows, chunks, limits ---------------------------------------------------------------------


def _assert_same(a, b) -> None:
    key = list(AGG_KEY)
    sa, sb = (
        a.stats.sort_values(key).reset_index(drop=True),
        b.stats.sort_values(key).reset_index(drop=True),
    )
    ints = ["calls", "failures", "expected_errors", "dur_n"]
    pd.testing.assert_frame_equal(sa[key + ints], sb[key + ints])
    np.testing.assert_allclose(
        sa[["log_dur_sum", "log_dur_sumsq"]], sb[["log_dur_sum", "log_dur_sumsq"]], rtol=1e-9
    )
    hk = [*key, "bin"]
    pd.testing.assert_frame_equal(
        a.hist.sort_values(hk).reset_index(drop=True), b.hist.sort_values(hk).reset_index(drop=True)
    )
    assert a.dropped == b.dropped and a.flagged == b.flagged and a.rows_read == b.rows_read


def test_scheduled_windows_add_up_to_one_read(emulator) -> None:  # noqa: F811
    """Tiling arrival windows (5-min runs) count every row once, late rows and duplicates too."""
    rows = sample_rows(hours=2, per_hour=150)
    emu = emulator(rows)
    end = T0 + 8 * H  # covers the late arrivals (3-5 h) of the last hour
    whole = make_source(emu).read_aggregates((T0 - H, end), bucket=BUCKET)
    src = make_source(emu, dedup_lookback=timedelta(hours=12))
    parts = []
    t = T0 - H
    step = timedelta(minutes=45)  # fewer, wider "runs" keep the test fast; same mechanism
    while t < end:
        parts.append(src.read_aggregates((t, t + step), bucket=BUCKET))
        t += step
    merged = merge_aggregates(parts)
    _assert_same(merged, whole)
    # failure clusters: each run weighs its failures with the same calls' failures that
    # arrived in the look-back before it, so the runs add up to one read's (calls whose
    # failures arrive further apart than the look-back weigh a little less)
    for c, key in (
        ("failure_cluster", ["operation_name", "sdk_version"]),
        ("failure_cluster_op", ["operation_name"]),
    ):
        got = merged.stats.groupby(key, observed=True)[c].sum()
        want = whole.stats.groupby(key, observed=True)[c].sum()
        assert (got <= want + 1e-9).all()
        assert float(got.sum()) == pytest.approx(float(want.sum()))  # no call spans 2 h here
    assert merged.stats["failure_cluster_op"].sum() > merged.stats["failures"].sum()
    # a rerun of a window reads exactly what the first run read (the store makes it idempotent)
    _assert_same(src.read_aggregates((T0 - H, T0 - H + step), bucket=BUCKET), parts[0])
    assert whole.rows_read == len(rows)
    assert whole.dropped["duplicate"] > 0


def test_row_limit_partial_is_split_until_it_fits(emulator) -> None:  # noqa: F811
    rows = sample_rows(hours=1, per_hour=200, quirks=False)
    emu = emulator(rows)
    whole = make_source(emu).read_aggregates((T0, T0 + 8 * H), bucket=BUCKET)
    emu.max_rows = 60
    src = make_source(emu)
    agg = src.read_aggregates((T0, T0 + 8 * H), bucket=BUCKET)
    assert src.stats.splits >= 2
    assert src.stats.max_chunk_rows <= 60
    _assert_same(agg, whole)


def test_backfill_plans_chunks_under_the_limits(emulator) -> None:  # noqa: F811
    rows = sample_rows(hours=6, per_hour=100)
    emu = emulator(rows)
    whole = make_source(emu, plan_threshold=timedelta(days=10)).read_aggregates(
        (T0, T0 + 12 * H), bucket=BUCKET
    )
    emu.max_rows = 150
    progress = []
    src = make_source(emu, plan_threshold=timedelta(hours=6), max_rows_per_chunk=120)
    agg = src.read_aggregates((T0, T0 + 12 * H), bucket=BUCKET, progress=progress.append)
    assert src.stats.plan_queries == 1
    assert src.stats.splits == 0  # the plan was good enough: no partial answers
    assert len(src.stats.chunks) > 2 and src.stats.max_chunk_rows <= 120
    assert [p.done for p in progress] == list(range(1, len(progress) + 1))
    assert progress[-1].total == len(progress)
    _assert_same(agg, whole)


def test_plan_failure_falls_back_to_step_chunks(emulator) -> None:  # noqa: F811
    emu = emulator(CASE)
    emu.push(Fault("partial"))
    src = make_source(emu, plan_threshold=timedelta(hours=1), plan_step=timedelta(hours=2))
    agg = src.read_aggregates((T0, T0 + 6 * H), bucket=BUCKET)
    assert len(src.stats.chunks) == 3 and agg.rows_read == 10


@pytest.mark.parametrize("arrival", ["ingestion_time", "TimeGenerated"])
def test_request_timespan_reaches_the_cluster_lookback(emulator, arrival: str) -> None:  # noqa: F811
    """A call failed once 90 minutes before the window (beyond the 1-hour dedup look-back,
    within the 2-hour cluster look-back) and once inside it: the window's failure weighs
    1 + 2 * 1 = 3. The service applies the request's timespan on top of the query, so a
    timespan reaching back only as far as the dedup look-back would hide the earlier one
    (with arrival = TimeGenerated; ingestion_time's 2-day overlap covers it anyway)."""
    fail = {"ResultType": "UnexpectedClientError", "CallId": "call-1"}
    rows = pd.DataFrame(
        [
            _row("Join", "x1", "2025-03-01T00:08:00Z", "2025-03-01T00:10:00Z", **fail),
            _row("Join", "x2", "2025-03-01T01:38:00Z", "2025-03-01T01:40:00Z", **fail),
        ]
    )
    emu = emulator(rows, ingest_lag=timedelta(minutes=1))
    src = make_source(emu, arrival=arrival, dedup_lookback=timedelta(hours=1))
    assert src.settings.dedup_lookback < timedelta(minutes=90) <= CLUSTER_LOOKBACK
    agg = src.read_aggregates((T0 + timedelta(minutes=90), T0 + 2 * H), bucket=BUCKET)
    assert agg.stats["failures"].sum() == 1
    assert agg.stats["failure_cluster"].sum() == 3
    assert agg.stats["failure_cluster_op"].sum() == 3


@pytest.mark.parametrize("arrival", ["ingestion_time", "TimeGenerated"])
def test_arrival_modes_and_request_timespan(emulator, arrival: str) -> None:  # noqa: F811
    emu = emulator(CASE, ingest_lag=timedelta(minutes=10))
    src = make_source(emu, arrival=arrival)
    agg = src.read_aggregates((T0, T0 + timedelta(minutes=10)), bucket=BUCKET)
    # TimeGenerated 00:02-00:07 are in; with ingestion_time (+10 min) none has arrived yet
    assert agg.rows_read == (9 if arrival == "TimeGenerated" else 0)
    ts = emu.requests[-1].timespan
    assert ts is not None and "/" in ts


def test_pack_chunks_case_table() -> None:
    steps = [
        kql.PlanStep(T0 + i * H, rows=1000, keys=k, key_bins=10 * k)
        for i, k in enumerate([50, 50, 200, 10, 0, 60])
    ]
    chunks = pack_chunks(
        T0, T0 + 6 * H, steps, step=H, max_rows=120, max_bytes=10**9, max_scan_rows=10**9
    )
    assert chunks == [(T0, T0 + 2 * H), (T0 + 2 * H, T0 + 3 * H), (T0 + 3 * H, T0 + 6 * H)]
    by_scan = pack_chunks(
        T0, T0 + 6 * H, steps, step=H, max_rows=10**6, max_bytes=10**9, max_scan_rows=2500
    )
    assert by_scan == [(T0, T0 + 2 * H), (T0 + 2 * H, T0 + 4 * H), (T0 + 4 * H, T0 + 6 * H)]
    assert pack_chunks(T0, T0 + 3 * H, None, step=H, max_rows=1, max_bytes=1, max_scan_rows=1) == [
        (T0, T0 + H),
        (T0 + H, T0 + 2 * H),
        (T0 + 2 * H, T0 + 3 * H),
    ]


# -- drill-down ------------------------------------------------------------------------------


def test_drill_down_for_flagged_partitions(emulator) -> None:  # noqa: F811
    rows = pd.DataFrame(
        [
            _row(
                "StartVideo",
                f"s{i}",
                "2025-03-01T00:01:00Z",
                "2025-03-01T00:02:00Z",
                CallId=f"call{i % 3}",
                ResultType="UnexpectedClientError" if i < 6 else "Succeeded",
                ResultSignature=410 if i < 4 else 500,
                OperationPayload=json.dumps({"SubCode": 41048 if i < 4 else "40000.0"}),
                DurationMs=100 * i,
            )
            for i in range(10)
        ]
    )
    emu = emulator(rows)
    src = make_source(emu)
    a = Anomaly(
        "StartVideo",
        "1.0.0.0_stable",
        "failure_rate",
        T0,
        T0 + timedelta(minutes=5),
        0.6,
        0.01,
        0.9,
        "critical",
        10,
        "new",
    )
    b = Anomaly(
        "StartVideo",
        None,
        "duration",
        T0,
        T0 + timedelta(minutes=5),
        900,
        100,
        0.8,
        "warning",
        10,
        "new",
    )
    c = Anomaly(
        'Nope" | take 1',
        None,
        "volume",
        T0,
        T0 + timedelta(minutes=5),
        0,
        10,
        0.8,
        "warning",
        0,
        "new",
    )
    out = src.drill_down([a, b, c])
    assert out[a.fingerprint]["top_result_codes"] == [
        {
            "result_signature": 410,
            "sub_code": 41048,
            "result_type": "UnexpectedClientError",
            "count": 4,
        },
        {
            "result_signature": 500,
            "sub_code": 40000,
            "result_type": "UnexpectedClientError",
            "count": 2,
        },
    ]
    assert out[a.fingerprint]["example_call_ids"] == ["call0", "call1", "call2"]
    assert out[b.fingerprint]["example_call_ids"][0] == "call0"  # holds the slowest (900 ms)
    assert out[c.fingerprint] == {"top_result_codes": [], "example_call_ids": []}
    assert src.stats.drill_queries == 1


# -- settings -------------------------------------------------------------------------------------


def test_settings_list_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        LogAnalyticsSettings(
            endpoint="http://x",
            credential="password",
            arrival="now()",
            table="T | take 1",
            server_timeout=601,
            max_rows_per_chunk=600_000,
        )
    text = str(info.value)
    for key in (
        "workspace_id",
        "endpoint",
        "credential",
        "arrival",
        "table",
        "server_timeout",
        "max_rows_per_chunk",
    ):
        assert key in text


def test_settings_from_config_mapping() -> None:
    s = LogAnalyticsSettings.from_config(
        {
            "kind": "log_analytics",
            "path": "x",
            "workspace_id": "ws-1",
            "overlap": timedelta(minutes=15),
            "dedup_lookback": 600,
            "credential": "env:LA_TOKEN",
            "connection_verify": "/ca.pem",
        }
    )
    assert s.overlap == timedelta(minutes=15) and s.dedup_lookback == timedelta(minutes=10)
    assert s.target == "workspace ws-1"
    with pytest.raises(ConfigError, match="resource_id"):
        LogAnalyticsSettings.from_config({"resource_id": "not-a-resource"})


def test_every_drop_reason_is_reported() -> None:
    assert set(
        kql.aggregates_from_rows(
            list(kql.AGG_RESULT_COLUMNS),
            [
                list(
                    {
                        **dict.fromkeys(kql.AGG_RESULT_COLUMNS),
                        "Kind": "counts",
                        "Counts": "{}",
                    }.values()
                )
            ],
        ).dropped
    ) == set(DROP_REASONS)


# -- equivalence with the file source (DuckDB) ---------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_same_aggregates_as_the_file_source(emulator, tmp_path, fmt: str) -> None:  # noqa: F811
    """The same rows, aggregated by DuckDB from a file and by our KQL's answer, agree exactly."""
    from detector.source import files

    rows = sample_rows(hours=3, per_hour=200, seed=11)
    path = tmp_path / f"operations.{fmt}"
    if fmt == "parquet":
        rows.to_parquet(path, index=False)
    else:
        rows.to_csv(path, index=False, date_format="%Y-%m-%dT%H:%M:%S.%fZ")
    by_files = files.read_aggregates(path, bucket=BUCKET)
    emu = emulator(rows)
    # one arrival window holding every row; dedup look-back is moot (nothing arrived before)
    by_kql = make_source(emu).read_aggregates((T0 - H, T0 + 12 * H), bucket=BUCKET)
    assert by_kql.rows_read == len(rows) == by_files.rows_read
    # string_number cannot occur in Log Analytics (typed columns): compare the other flags
    by_files.flagged["string_number"] = 0
    _assert_same(by_kql, by_files)
    assert by_kql.dropped["duplicate"] > 0 and by_kql.flagged["invalid_payload_json"] > 0
    # some bucket has two failures of one call: dcount(CallId) and DuckDB agree on it too
    s = by_files.stats
    assert (s["failed_calls"] < s["failures"]).any()
    # ... and some failure's call failed more than once: the clusters agree as well
    assert (s["failure_cluster"] > s["failures"]).any()


def test_drill_down_retries_504(emulator) -> None:  # noqa: F811
    emu = emulator(CASE)
    emu.push(Fault("status", 504), Fault("status", 503, headers={"Retry-After": "0"}))
    src = make_source(emu)
    a = Anomaly("Join", None, "failure_rate", T0, T0 + H, 0.5, 0.0, 1.0, "warning", 3, "new")
    out = src.drill_down([a])
    assert out[a.fingerprint]["top_result_codes"][0]["count"] == 1  # the "join" failure (b)
    assert src.stats.retries == 2 and src.stats.drill_queries == 3


@pytest.mark.parametrize(
    ("spec", "cls"),
    [
        ("default", "DefaultAzureCredential"),
        ("managed_identity", "ManagedIdentityCredential"),
        ("azure_cli", "AzureCliCredential"),
        ("env:MY_TOKEN", "EnvTokenCredential"),
    ],
)
def test_make_credential_choices(spec: str, cls: str) -> None:
    from detector.source.log_analytics import make_credential

    cred = make_credential(spec)  # constructing contacts nothing
    assert type(cred).__name__ == cls
    if hasattr(cred, "close"):
        cred.close()


def test_same_aggregates_as_the_file_source_on_simulated_data(emulator, tmp_path) -> None:  # noqa: F811
    """The simulator's rows (quirks included): DuckDB on the file vs our KQL via the emulator."""
    from detector.simulate import SimSpec, simulate
    from detector.source import files

    simulate(tmp_path, SimSpec(days=1, seed=3, calls_per_hour=10), fmt="parquet")
    path = tmp_path / "operations.parquet"
    rows = pd.read_parquet(path)
    by_files = files.read_aggregates(path, bucket=BUCKET)
    emu = emulator(rows)
    lo = rows["TimeGenerated"].min().to_pydatetime() - H
    hi = rows["TimeGenerated"].max().to_pydatetime() + H
    src = make_source(emu, plan_threshold=timedelta(hours=12), max_rows_per_chunk=2000)
    by_kql = src.read_aggregates((lo, hi), bucket=BUCKET)
    assert len(src.stats.chunks) > 1  # chunked backfill, merged
    by_files.flagged["string_number"] = 0  # typed columns in Log Analytics
    _assert_same(by_kql, by_files)
    assert by_kql.rows_read == len(rows)


# -- issue 21: look-back, token, retry budget, partition cap ------------------------------------


def test_a_copy_re_ingested_hours_later_counts_once_across_reads_and_chunks(emulator) -> None:  # noqa: F811
    """The same operation ingested again 3.5 h later: two scheduled reads, and one long read
    whose plan failed (so it falls back to 1-hour chunks), count it once, as one read does."""
    rows = pd.DataFrame(
        [
            _row("Join", "a", "2025-03-01T00:05:00Z", "2025-03-01T00:10:00Z"),
            _row("Join", "a", "2025-03-01T00:05:00Z", "2025-03-01T03:40:00Z"),  # the copy
            _row("Join", "b", "2025-03-01T03:30:00Z", "2025-03-01T03:35:00Z"),
        ]
    )
    emu = emulator(rows, ingest_lag=timedelta(minutes=1))
    src = make_source(emu)
    first = src.read_aggregates((T0, T0 + 2 * H), bucket=BUCKET)
    second = src.read_aggregates((T0 + 2 * H, T0 + 4 * H), bucket=BUCKET)
    assert (first.stats["calls"].sum(), second.stats["calls"].sum()) == (1, 1)
    assert second.dropped["duplicate"] == 1
    emu.push(Fault("status", 400))  # the plan query fails: one chunk per plan step
    chunked = src.read_aggregates((T0, T0 + 8 * H), bucket=BUCKET)
    assert len(src.stats.chunks) > 3
    assert chunked.stats["calls"].sum() == 2
    assert chunked.rows_read == chunked.stats["calls"].sum() + sum(chunked.dropped.values())


def test_non_ascii_env_token_is_a_clear_error(emulator, monkeypatch) -> None:  # noqa: F811
    emu = emulator(CASE)
    monkeypatch.setenv("LA_TOKEN", "\u0442\u043e\u043a\u0435\u043d-secret")  # not even latin-1
    src = make_source(emu, credential=EnvTokenCredential("LA_TOKEN"))
    with pytest.raises(
        AuthError, match="LA_TOKEN holds characters an HTTP Authorization header cannot"
    ) as err:
        src.read_aggregates((T0, T0 + H), bucket=BUCKET)
    assert "secret" not in str(err.value)
    assert len(emu.requests) == 0


def test_time_lost_to_timeouts_counts_in_the_retry_budget(emulator) -> None:  # noqa: F811
    """Each attempt times out after 0.5 s: a 0.3 s budget is spent by the first one."""
    emu = emulator(CASE)
    emu.push(Fault("slow", delay=1.5))
    src = make_source(emu, read_timeout=0.5, retry_budget=0.3)
    with pytest.raises(QueryFailedError, match="retry budget"):
        src.read_aggregates((T0, T0 + H), bucket=BUCKET)
    assert src.stats.retries == 0


def test_partition_cap_keeps_the_busiest(emulator) -> None:  # noqa: F811
    emu = emulator(CASE)
    full = make_source(emu).read_aggregates((T0, T0 + H), bucket=BUCKET)
    capped = make_source(emu, max_partitions=1).read_aggregates((T0, T0 + H), bucket=BUCKET)
    parts = full.stats.groupby(["operation_name", "sdk_version"])["calls"].sum()
    assert len(parts) > 1
    busiest = parts.idxmax()
    assert set(zip(capped.stats["operation_name"], capped.stats["sdk_version"], strict=True)) == {
        busiest
    }
    assert capped.dropped["partition_cap"] == parts.sum() - parts.max()
    assert capped.partitions_left_out == len(parts) - 1
    assert capped.rows_read == capped.stats["calls"].sum() + sum(capped.dropped.values())


def test_settings_several_targets() -> None:
    # issue 22: workspace_id as a list, additional_workspaces, resource_ids; one query each
    rid = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Communication/CommunicationServices/a"
    s = LogAnalyticsSettings.from_config(
        {"workspace_id": ["ws-1", "ws-2"], "additional_workspaces": ["ws-3"], "resource_ids": [rid]}
    )
    targets = s.targets()
    assert [t.target for t in targets] == [
        "workspace ws-1",
        "workspace ws-2",
        "workspace ws-3",
        f"resource {rid}",
    ]
    assert all(not t.additional_workspaces and not t.resource_ids for t in targets)
    assert LogAnalyticsSettings(resource_ids=(rid,)).targets()[0].resource_id == rid
    for bad, key in (
        ({"workspace_id": "ws-1", "additional_workspaces": ["WS-1"]}, "listed twice"),
        ({"workspace_id": "ws-1", "additional_workspaces": ["bad id!"]}, "additional_workspaces"),
        ({"workspace_id": "ws-1", "resource_ids": ["not-a-resource"]}, "resource_ids"),
        ({"additional_workspaces": []}, "exactly one of workspace_id, resource_id"),
    ):
        with pytest.raises(ConfigError, match=key):
            LogAnalyticsSettings.from_config(bad)


def test_resource_scoped_reads_through_the_emulator(emulator) -> None:  # noqa: F811
    # Two resources in one workspace: each filtered read holds its own rows, and they add up.
    rows = sample_rows(hours=2, per_hour=120)
    a, b = (
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Communication/"
        f"CommunicationServices/{name}"
        for name in ("acs-a", "acs-b")
    )
    rows["_ResourceId"] = [a if i % 3 else f" {b.upper()}" for i in range(len(rows))]
    emu = emulator(rows)
    window = (T0 - timedelta(hours=1), T0 + timedelta(hours=8))
    five = timedelta(minutes=5)
    found = make_source(emu).read_resources(window)
    assert set(found) == {a.lower(), b.lower()} and sum(found.values()) == len(rows)
    whole = make_source(emu).read_aggregates(window, bucket=five)
    parts = [
        LogAnalyticsSource(
            make_source(emu).settings, credential=FakeCredential(), resource=key.lower()
        ).read_aggregates(window, bucket=five)
        for key in (a, b)
    ]
    assert all(int(p.stats["calls"].sum()) > 0 for p in parts)
    assert sum(int(p.rows_read) for p in parts) == int(whole.rows_read)
