"""The TrainTicket benchmark's scoring follows its README: merged alerts, 2-minute tolerance,
strict and time-only recall, false alerts by period; a missing data directory is a skip."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_trainticket as tt  # noqa: E402

B = timedelta(minutes=5)


def at(hhmm: str, day: int = 29) -> datetime:
    h, m = (int(x) for x in hhmm.split(":"))
    return datetime(2023, 1, day, h, m, tzinfo=UTC)


def test_touching_buckets_of_one_operation_are_one_alert_whatever_the_metric_or_slice() -> None:
    buckets = [
        ("svc", None, "duration", at("10:00")),
        ("svc", "server", "volume", at("10:05")),  # touches: same alert
        ("svc", "server", "duration", at("10:20")),  # a gap: a second alert
        ("other", None, "duration", at("10:05")),
    ]
    alerts = tt.merge_alerts(buckets, B)
    assert alerts == [
        tt.Alert("svc", at("10:00"), at("10:10")),
        tt.Alert("other", at("10:05"), at("10:10")),
        tt.Alert("svc", at("10:20"), at("10:25")),
    ]


# (alert operation, alert start, alert end, strict match, time-only match) against one fault of
# "svc" from 10:43 to 10:46: the widened window is [10:41, 10:48).
CASES = [
    ("svc", "10:35", "10:40", False, False),  # ends before 10:41
    ("svc", "10:40", "10:45", True, True),
    ("svc", "10:45", "10:50", True, True),
    ("svc", "10:50", "10:55", False, False),  # starts after 10:48
    ("frontend", "10:40", "10:45", False, True),  # another operation: time-only
]


@pytest.mark.parametrize(("op", "start", "end", "strict", "time_only"), CASES)
def test_an_alert_matches_a_fault_widened_by_two_minutes(
    op: str, start: str, end: str, strict: bool, time_only: bool
) -> None:
    fault = tt.Fault("svc", None, at("10:43"), at("10:46"), "cpu_contention")
    alert = tt.Alert(op, at(start), at(end))
    row = tt.score([alert], [fault], bucket=B, data_buckets={at(start)})
    assert row["detected"] == int(strict)
    assert row["seen_time_only"] == int(time_only)
    assert row["false_events"] == int(not strict)


def test_scores_count_precision_delay_and_false_alerts_by_period() -> None:
    faults = [
        tt.Fault("svc", None, at("10:43"), at("10:46"), "cpu_contention"),
        tt.Fault("svc", None, at("11:02"), at("11:05"), "return"),
    ]
    alerts = [
        tt.Alert("svc", at("10:45"), at("10:55")),  # true: first bucket ends 10:50, 7 min late
        tt.Alert("svc", at("13:00"), at("13:05")),  # false, full workload
        tt.Alert("svc", at("17:00"), at("17:05")),  # false, evening
        tt.Alert("svc", at("03:00", day=30), at("03:05", day=30)),  # false, no data at all
    ]
    data = {at("10:45"), at("13:00"), at("17:00")} | {at("12:00") + B * k for k in range(9)}
    row = tt.score(alerts, faults, bucket=B, data_buckets=data)
    assert (row["detected"], row["events"], row["true_events"]) == (1, 4, 1)
    assert row["precision"] == pytest.approx(0.25)
    assert row["recall"] == pytest.approx(0.5)
    assert row["f1"] == pytest.approx(2 * 0.25 * 0.5 / 0.75)
    assert (row["false_full"], row["false_evening"], row["false_no_data"]) == (1, 1, 1)
    assert row["median_delay_min"] == pytest.approx(7.0)
    assert row["hours_with_data"] == pytest.approx(12 * 5 / 60)
    groups = {
        (g["group"], g["detector"]): g["strict"]
        for g in tt.by_group([row | {"detector": "x"}], "fault_type")
    }
    assert groups == {("cpu_contention", "x"): "1/1", ("return", "x"): "0/1"}


def test_missing_data_is_a_skip_that_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tt.main(["--data", str(tmp_path / "absent")]) == 0
    assert "skipped" in capsys.readouterr().out


@pytest.mark.skipif(
    not (tt.DEFAULT_DATA / "operations.parquet").is_file(),
    reason=f"TrainTicket data not at {tt.DEFAULT_DATA}",
)
def test_the_shared_set_loads_with_its_45_faults() -> None:
    ds, faults = tt.load(tt.DEFAULT_DATA, B)
    assert len(faults) == 45
    assert {f.fault_type for f in faults} == {
        "cpu_contention",
        "exception",
        "network_delay",
        "return",
    }
    assert ds.warmup_end == ds.start  # judged from the first bucket
    hours = ds.aggs.stats["bucket_start"].nunique() * B / timedelta(hours=1)
    assert 27 <= hours <= 30
