"""``acs-detector explain`` through the CLI, on a store filled by ``simulate`` and ``backfill``.

The simulated fleet failure spike (StartVideo, all SDK versions) gives, in its first hour,
buckets that alerted and buckets the engine stopped at a gate; ``explain`` must
answer for both, from the stored history, and exit 2 with a message for what it does not know.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from detector.cli import EXIT_OK, EXIT_USAGE, main
from detector.words import INTERNAL_NAMES

# The simulated incident's first hour (12:25 .. 14:00): candidates stopped at a gate while it
# builds up, then an alert.
INCIDENT_HOUR = "2026-11-04T12:00:00Z"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A config whose bucket store holds three simulated days with one labelled incident."""
    root = tmp_path_factory.mktemp("explain")
    cfg = root / "detector.toml"
    cfg.write_text(
        f'[source]\nkind = "file"\npath = "{root / "sim" / "operations.parquet"}"\n'
        f'[state]\npath = "{root / "state"}"\nmodels = "{root / "models"}"\n'
    )
    sim = ["simulate", "--out", str(root / "sim"), "--days", "3", "--seed", "3"]
    assert main([*sim, "--scenario", "fleet_failure_spike"]) == EXIT_OK
    incidents = json.loads((root / "sim" / "incidents.json").read_text())
    assert [i["start"] for i in incidents] == ["2026-11-04T12:25:00Z"]
    window = ["--start", "2026-11-02T00:00:00Z", "--end", "2026-11-05T00:00:00Z"]
    assert main(["backfill", "--config", str(cfg), *window]) == EXIT_OK
    yield cfg


def _explain(
    cfg: Path, capsys: pytest.CaptureFixture[str], *args: str, as_json: bool = False
) -> tuple[int, Any, str]:
    capsys.readouterr()
    argv = ["explain", "--config", str(cfg), "--operation", "StartVideo", *args]
    code = main([*argv, "--json"] if as_json else argv)
    out, err = capsys.readouterr()
    return code, (json.loads(out) if as_json and code == EXIT_OK else out), err


def _failure_timeline(cfg: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    code, found, _ = _explain(
        cfg, capsys, "--metric", "failures", "--at", INCIDENT_HOUR, as_json=True
    )
    assert code == EXIT_OK
    (metric,) = found["metrics"]
    assert metric["metric"] == "failure_rate"
    assert found["judged_as_step"] == [INCIDENT_HOUR, "2026-11-04T13:00:00Z"]
    return list(metric["timeline"])


def test_explain_an_alert(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    alerted = [r for r in _failure_timeline(store, capsys) if r["gate"] == "anomaly"]
    assert alerted, "the incident's hour holds an alert"
    at = alerted[0]["from"]
    code, found, _ = _explain(store, capsys, "--metric", "failures", "--at", at, as_json=True)
    assert code == EXIT_OK
    (metric,) = found["metrics"]
    assert metric["gate"] == "anomaly" and metric["verdict"] == "alerted"
    assert metric["alert"]["metric"] == "failure_rate"
    assert all(t["passed"] for t in metric["tests"])
    assert metric["corrected_p_value"] <= metric["alpha"]
    # The same in words: the alert as every channel tells it, each test with its threshold.
    code, text, _ = _explain(store, capsys, "--metric", "failures", "--at", at)
    assert code == EXIT_OK
    assert "failure rate: ALERTED" in text
    assert "alert: failure rate +" in text and "points (" in text
    assert "[pass] unusual enough: chance" in text and "(needs at most 0.01)" in text
    assert not [name for name in INTERNAL_NAMES if name in text]


def test_explain_a_suppressed_candidate(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stopped = [r for r in _failure_timeline(store, capsys) if r["gate"] not in ("", "anomaly")]
    assert stopped, "the incident's hour holds a candidate a gate stopped"
    run = stopped[0]
    args = ("--metric", "failures", "--at", run["from"])
    code, found, _ = _explain(store, capsys, *args, as_json=True)
    assert code == EXIT_OK
    (metric,) = found["metrics"]
    assert metric["gate"] == run["gate"] and metric["alert"] is None
    assert [t for t in metric["tests"] if t["passed"] is False], "the test that stopped it"
    code, text, _ = _explain(store, capsys, *args)
    assert f"failure rate: {run['words']}" in text
    assert "[FAIL]" in text and "(needs " in text
    assert run["gate"] not in text  # the gate's words, never its code
    assert not [name for name in INTERNAL_NAMES if name in text]


def test_explain_an_operation_alert_kept_from_one_versions_attribution(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # In the spike's second hour one version's failures stand out on their own while none of
    # its versions alerts: the operation's open alert stays open (hold.py) instead of being
    # handed to a version that never alerts, and explain says so.
    args = ("--metric", "failures", "--at", "2026-11-04T13:40:00Z")
    code, found, _ = _explain(store, capsys, *args, as_json=True)
    assert code == EXIT_OK
    (metric,) = found["metrics"]
    assert [r["gate"] for r in metric["timeline"]] == ["anomaly"]
    assert metric["gate"] == "anomaly"
    kept = [t for t in metric["tests"] if t["test"] == "kept open"]
    assert kept and kept[0]["passed"] is True
    code, text, _ = _explain(store, capsys, *args)
    assert "[pass] kept open: yes: its alert was open at the bucket before" in text
    assert "one SDK version deviates on its own, but none alerts" in text


def test_explain_all_metrics_of_a_quiet_partition(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text, _ = _explain(store, capsys, "--at", "2026-11-04T03:00:00Z")
    assert code == EXIT_OK
    for said in ("p95 duration: nothing unusual", "failure rate:", "call volume:"):
        assert said in text


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--at", "2025-01-01T00:00:00Z"), "no stored history for 2025-01-01T00:00:00Z"),
        (("--at", INCIDENT_HOUR, "--version", "9.9.9"), "StartVideo has no SDK version '9.9.9'"),
        (("--at", "soon"), "ISO-8601"),
        (("--at", INCIDENT_HOUR, "--metric", "latency"), "invalid choice: 'latency'"),
    ],
)
def test_explain_says_what_it_does_not_know(
    store: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], said: str
) -> None:
    code, _, err = _explain(store, capsys, *args)
    assert code == EXIT_USAGE
    assert said in err and "Traceback" not in err


def test_explain_unknown_operation(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    argv = ["explain", "--config", str(store), "--operation", "Startvideo", "--at", INCIDENT_HOUR]
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "no operation 'Startvideo'" in err and "did you mean: StartVideo" in err
