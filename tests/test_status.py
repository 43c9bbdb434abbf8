"""``status``, ``ack --by`` and ``silence add --by`` through the CLI, on a real state directory.

The store is set up as a run leaves it (a firing alert, an outbox item, two run records and the
pipeline's judged_until); the commands under test run through ``main`` with the real clock.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from detector.cli import EXIT_OK, main
from detector.lifecycle import AlertState, LifecyclePolicy, step
from detector.store.alerts import AlertStore, OutboxItem, RunRecord
from detector.store.backend import LocalBackend
from tests.fixtures_alerting import make_anomaly

FP = "Join|1.30.1.1_stable|duration"  # make_anomaly's partition and metric
#: Data time of the alert: a manual rerun or the demo judge days that are long past.
DATA_END = datetime(2026, 11, 5, 0, 0, tzinfo=UTC)


@pytest.fixture
def cfg(tmp_path: Path) -> str:
    """A config whose state holds what a manual rerun of a past window leaves behind."""
    state = tmp_path / "state"
    path = tmp_path / "detector.toml"
    path.write_text(
        f'[source]\nkind = "file"\npath = "{tmp_path / "none"}"\n[state]\npath = "{state}"\n'
    )
    backend = LocalBackend(state)
    store = AlertStore(backend)
    anomaly = make_anomaly(end=DATA_END, severity="critical")
    _, st = step([anomaly], {}, AlertState(), LifecyclePolicy(), DATA_END, window_end=DATA_END)
    store.save_state(st)
    item = OutboxItem(
        "o1", "oncall", "t", "json://127.0.0.1:9/hook", "json", "T", "B", "markdown",
        created_at=DATA_END,  # the rerun's clock: data time, weeks ago
        attempts=1,
        last_error="error=501",
    )  # fmt: skip
    store.put_outbox([item])  # queued now, by the wall clock
    store.record_run(RunRecord(started_at=DATA_END - timedelta(hours=1), rows=5000, anomalies=0))
    store.record_run(
        RunRecord(
            started_at=DATA_END,
            status="delivery_failed",
            rows=4200,
            anomalies=2,
            notified=1,
            failed=1,
            window_start=DATA_END - timedelta(hours=1),
            window_end=DATA_END,
        )
    )
    backend.write("pipeline.json", json.dumps({"judged_until": "2026-11-05T00:00:00Z"}).encode())
    return str(path)


def _status(cfg: str, capsys: pytest.CaptureFixture[str], *more: str) -> str:
    capsys.readouterr()
    assert main(["status", "--config", cfg, *more]) == EXIT_OK
    return capsys.readouterr().out


def test_ack_records_who_and_when(
    cfg: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["ack", FP, "--config", cfg, "--by", "alice", "--comment", "on it"]) == EXIT_OK
    assert f"acknowledged {FP} by alice" in capsys.readouterr().out
    text = _status(cfg, capsys)
    assert "(acked by alice " in text and " s ago)" in text
    # Without --by: the login name.
    monkeypatch.setenv("LOGNAME", "bob")
    assert main(["ack", FP, "--config", cfg]) == EXIT_OK
    data = json.loads(_status(cfg, capsys, "--json"))
    (ack,) = data["acks"]
    assert ack["by"] == "bob" and ack["fingerprint"] == FP and ack["at"]
    assert data["firing"][0]["acked_by"] == "bob" and data["firing"][0]["acked_at"] == ack["at"]


def test_silences_show_who_and_how_long(cfg: str, capsys: pytest.CaptureFixture[str]) -> None:
    add = ["silence", "add", "--config", cfg, "--operation", "Join", "--for", "4h"]
    assert main([*add, "--by", "carol", "--comment", "CDN fix"]) == EXIT_OK
    added = capsys.readouterr().out
    assert "by carol" in added
    assert "(ends in 3 h 59 min)" in added or "(ends in 4 h)" in added
    text = _status(cfg, capsys)
    assert "silences: 1" in text and "operation_name=Join" in text and "by carol" in text
    assert "# CDN fix" in text
    assert "(in 3 h 59 min)" in text or "(in 4 h)" in text


def test_outbox_ages_come_from_the_clock(cfg: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An item a rerun of a past window queued a moment ago is a moment old, not weeks."""
    text = _status(cfg, capsys)
    (line,) = [x for x in text.splitlines() if x.startswith("  o1 ")]
    assert " s," in line, line  # seconds old
    assert " d " not in line and "1 attempt(s): error=501" in line
    data = json.loads(_status(cfg, capsys, "--json"))
    assert data["outbox"][0]["age_hours"] < 0.1


def test_status_lists_runs_with_their_outcome_and_judged_until(
    cfg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _status(cfg, capsys)
    assert "latest runs (newest first, last 2):" in text
    runs = text.split("latest runs")[1].splitlines()[1:]
    assert "delivery failed: 2 anomalous windows, 1 notified" in runs[0]
    assert "ok: 0 anomalous windows" in runs[1]
    assert "judged until: 2026-11-05T00:00:00Z (" in text and " d " in text  # human units
    assert "timedelta" not in text and "days," not in text
    data = json.loads(_status(cfg, capsys, "--json"))
    assert data["judged_until"] == "2026-11-05T00:00:00Z"
    assert [r["outcome"].split(":")[0] for r in data["runs"]] == ["delivery failed", "ok"]


def test_status_on_a_fresh_state_says_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "detector.toml"
    path.write_text(f'[source]\nkind = "file"\npath = "x"\n[state]\npath = "{tmp_path / "s"}"\n')
    text = _status(str(path), capsys)
    assert "watermark: unknown (nothing read into the store yet)" in text
    assert "judged until: never (no scheduled run yet)" in text
    data = json.loads(_status(str(path), capsys, "--json"))
    assert data["judged_until"] is None and data["acks"] == [] and data["runs"] == []
