"""Evaluation: event building, incident matching, scores, and one small end-to-end replay."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pytest

from detector.detect.policy import DetectionPolicy
from detector.evaluate import (
    EvaluationReport,
    Event,
    LabelledIncident,
    alert_gap,
    evaluate,
    events_from_buckets,
    score_events,
)

B = timedelta(minutes=5)
T = datetime(2026, 11, 5, 10, tzinfo=UTC)


def _b(op: str, ver: str | None, metric: str, minutes: list[int]):
    return [(op, ver, metric, T + timedelta(minutes=m)) for m in minutes]


def test_events_merge_consecutive_buckets_of_one_fingerprint() -> None:
    buckets = (
        _b("Join", None, "duration", [0, 5, 10, 25, 100])
        + _b("Join", "1.2", "duration", [0])
        + _b("Join", None, "failure_rate", [5])
    )
    events = events_from_buckets(buckets, bucket=B, max_gap=3)
    fleet = [e for e in events if e.sdk_version is None and e.metric == "duration"]
    # 0,5,10 and 25 (gap of 3 buckets) merge; 100 is a new event.
    assert [(e.start, e.end, e.buckets) for e in fleet] == [
        (T, T + timedelta(minutes=30), 4),
        (T + timedelta(minutes=100), T + timedelta(minutes=105), 1),
    ]
    assert len(events) == 4


@pytest.mark.parametrize(
    ("resolve_after", "persist_m", "gap"),
    [("30m", 3, 6), ("10m", 3, 3), ("1h", 2, 12), ("7m", 1, 2)],
)
def test_alert_gap_is_what_the_lifecycle_bridges(resolve_after, persist_m, gap) -> None:
    from detector.lifecycle import LifecyclePolicy

    life = LifecyclePolicy.from_config({"resolve_after": resolve_after})
    policy = DetectionPolicy(persist_n=1, persist_m=persist_m)
    assert alert_gap(policy, life) == gap
    # Default: the lifecycle's 30 minutes over 5-minute buckets.
    assert alert_gap(DetectionPolicy()) == 6


def test_per_incident_delay_and_volume_are_reported() -> None:
    judged = (T - timedelta(days=1), T + timedelta(days=1))
    ev = Event("Join", None, "duration", T + 2 * B, T + 4 * B, 2)
    got = score_events(
        [ev], [INC_FLEET, INC_VER], judged=judged, bucket=B, incident_volume={0: 250.0, 1: 40.0}
    )
    fleet, ver = got["per_incident"]
    assert (fleet["delay_buckets"], fleet["volume_per_hour"]) == (3.0, 250.0)
    assert (ver["delay_buckets"], ver["volume_per_hour"]) == (None, 40.0)
    assert got["incidents_big"] == 1 and got["recall_big"] == 1.0


INC_FLEET = LabelledIncident("Join", None, "duration", T, T + timedelta(hours=1))
INC_VER = LabelledIncident("Join", "1.2", "failure_rate", T, T + timedelta(hours=1))


@pytest.mark.parametrize(
    ("event", "incident", "matches"),
    [
        (Event("Join", None, "duration", T, T + B, 1), INC_FLEET, True),
        (Event("Join", "1.9", "duration", T, T + B, 1), INC_FLEET, True),  # null = any version
        (Event("Join", None, "failure_rate", T, T + B, 1), INC_VER, False),  # fleet != version
        (Event("Join", "1.2", "failure_rate", T, T + B, 1), INC_VER, True),
        (Event("Join", "1.2", "duration", T, T + B, 1), INC_VER, False),  # other metric
        (Event("StartCall", None, "duration", T, T + B, 1), INC_FLEET, False),
        # within the 30-minute grace after the end, and beyond it
        (
            Event(
                "Join", None, "duration", T + timedelta(minutes=80), T + timedelta(minutes=85), 1
            ),
            INC_FLEET,
            True,
        ),
        (
            Event(
                "Join", None, "duration", T + timedelta(minutes=95), T + timedelta(minutes=100), 1
            ),
            INC_FLEET,
            False,
        ),
        # an event that began before the incident and overlaps it
        (Event("Join", None, "duration", T - timedelta(hours=1), T + B, 13), INC_FLEET, True),
    ],
)
def test_matching_rules(event: Event, incident: LabelledIncident, matches: bool) -> None:
    judged = (T - timedelta(days=1), T + timedelta(days=1))
    got = score_events([event], [incident], judged=judged, bucket=B)
    assert got["true_events"] == int(matches)
    assert got["detected"] == int(matches)


def test_scores_precision_recall_delay_false_alerts() -> None:
    events = [
        Event("Join", None, "duration", T + timedelta(minutes=10), T + timedelta(minutes=40), 6),
        Event("Join", None, "volume", T, T + B, 1),  # false alert
    ]
    judged = (T - timedelta(days=1), T + timedelta(days=1))
    got = score_events(events, [INC_FLEET, INC_VER], judged=judged, bucket=B, partitions=50)
    assert got["precision"] == 0.5 and got["recall"] == 0.5
    assert got["f1"] == pytest.approx(0.5)
    assert got["false_per_day"] == pytest.approx(0.5)
    assert got["false_per_day_per_100"] == pytest.approx(1.0)
    # first alert bucket starts 10 min after the incident start and ends 15 min after it: 3.
    assert got["median_delay_buckets"] == 3.0
    none = score_events([], [], judged=judged, bucket=B)
    assert none["precision"] == 1.0 and math.isnan(none["recall"])


def test_report_table_and_json() -> None:
    row = score_events([], [INC_FLEET], judged=(T, T + timedelta(days=1)), bucket=B)
    row.update(dataset="x", detector="acs-detector", seconds=1.0)
    rep = EvaluationReport([row], {"step_seconds": 3600})
    text = rep.to_table()
    assert "recall" in text.splitlines()[0] and text.splitlines()[1].startswith("x")
    json.dumps(rep.to_json())


def test_report_table_lists_each_incident_and_each_false_alert() -> None:
    events = [
        Event("Join", None, "duration", T + timedelta(minutes=10), T + timedelta(minutes=40), 6),
        Event("Join", None, "volume", T, T + B, 1),  # false alert
    ]
    judged = (T - timedelta(days=1), T + timedelta(days=1))
    row = score_events(events, [INC_FLEET, INC_VER], judged=judged, bucket=B)
    row.update(dataset="x", detector="acs-detector", seconds=1.0)
    lines = EvaluationReport([row], {}).to_table().splitlines()[2:]
    assert lines == [
        f"incident Join|*|duration from {INC_FLEET.start.isoformat()}: detected after 3 buckets"
        f" ({3 * B / timedelta(minutes=1):.0f} min)",
        f"incident Join|{INC_VER.sdk_version}|failure_rate from "
        f"{INC_VER.start.isoformat()}: MISSED",
        f"false alert Join|*|volume {T:%m-%d %H:%M}+1",
    ]
    # Several data sets: each line says which one it is about.
    two = EvaluationReport([row, row | {"dataset": "y"}], {}).to_table().splitlines()
    assert sum(line.startswith("y: incident") for line in two) == 2


def test_evaluate_end_to_end_on_a_small_simulation(tmp_path) -> None:
    sim = pytest.importorskip("detector.simulate")
    pytest.importorskip("detector.source.files")
    out = tmp_path / "sim"
    sim.simulate(
        out, sim.SimSpec(days=4, seed=3, scenario="fleet_failure_spike", calls_per_hour=60)
    )
    report = evaluate(out, policy=DetectionPolicy(), step=timedelta(hours=12))
    row = report.rows[0]
    assert row["incidents"] == 1
    assert row["runs"] >= 4 and row["partitions"] > 10
    assert row["detected"] == 1, row["events_detail"]
    assert row["precision"] >= 0.5
    assert "delay" in report.to_table()
    assert report.settings["delay_measured_from"].startswith("incident start")


def test_a_joint_incident_is_matched_by_any_metric_of_its_partition() -> None:
    joint = LabelledIncident("Join", None, "joint", T, T + timedelta(hours=1))
    judged = (T - timedelta(days=1), T + timedelta(days=1))
    for metric in ("duration", "failure_rate", "volume"):
        got = score_events(
            [Event("Join", None, metric, T, T + B, 1)], [joint], judged=judged, bucket=B
        )
        assert got["detected"] == 1
    other = score_events(
        [Event("StartCall", None, "volume", T, T + B, 1)], [joint], judged=judged, bucket=B
    )
    assert other["detected"] == 0


def test_ablation_summary_says_what_the_part_adds() -> None:
    from detector.evaluate import Ablation

    judged = (T - timedelta(days=1), T + timedelta(days=1))
    found = Event("Join", None, "duration", T + timedelta(minutes=10), T + timedelta(minutes=40), 6)
    false = Event("Join", None, "volume", T, T + B, 1)

    def report(events: list[Event]) -> EvaluationReport:
        row = score_events(events, [INC_FLEET, INC_VER], judged=judged, bucket=B)
        return EvaluationReport([row | {"dataset": "x", "detector": "acs-detector"}], {})

    ab = Ablation("forest", report([found, false]), report([]))
    s = ab.summary()
    assert s["found_only_with"] == [f"Join|*|duration {INC_FLEET.start.isoformat()}"]
    assert s["false_alerts_only_with"] == [f"Join|*|volume {T:%m-%d %H:%M}+1"]
    assert s["found_only_without"] == [] and s["false_alerts_only_without"] == []
    text = ab.to_table()
    assert "incidents found only with the forest: 1" in text
    assert "false alerts only with the forest: 1" in text
    assert json.loads(json.dumps(ab.to_json()))["summary"]["part"] == "forest"


def test_cli_evaluate_ablate_forest_prints_json(tmp_path, capsys, monkeypatch) -> None:
    sim = pytest.importorskip("detector.simulate")
    from detector.cli import main

    monkeypatch.chdir(tmp_path)  # no config/detector.toml here: the default policy
    sim.simulate(tmp_path / "sim", sim.SimSpec(days=3, seed=2, scenario="quiet", calls_per_hour=40))
    assert main(["evaluate", "--data", str(tmp_path / "sim"), "--ablate", "forest", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert set(got) == {"summary", "with", "without"}
    assert got["summary"]["part"] == "forest"
    assert got["with"]["settings"]["policy"]["forest"] is True
    assert got["without"]["settings"]["policy"]["forest"] is False
