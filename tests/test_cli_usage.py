"""The command line as people type it (issue 23): global options anywhere, help on every
option, validated choices, ``simulate --list`` alone, quiet on a closed pipe."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from detector.cli import EXIT_CLOSED_PIPE, EXIT_OK, EXIT_USAGE, _all_parsers, _build_parser, main

DATA = Path(__file__).parent / "data" / "config"


def _state_config(tmp_path: Path) -> Path:
    """A config whose state lives in ``tmp_path`` (status reads an empty store)."""
    cfg = tmp_path / "detector.toml"
    cfg.write_text(
        f'[source]\nkind = "file"\npath = "{(tmp_path / "data").as_posix()}"\n'
        f'[state]\npath = "{(tmp_path / "state").as_posix()}"\n'
    )
    return cfg


def test_global_options_after_the_sub_command(capsys: pytest.CaptureFixture[str], monkeypatch):
    monkeypatch.setenv("TEST_HOOK_URL", "json://127.0.0.1:9/x")
    good = str(DATA / "good.toml")
    assert main(["check-config", "--config", good, "--log-level", "debug"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["config"].endswith("good.toml")
    # Given on both sides, the later one (after the sub-command) wins.
    bad = str(DATA / "bad-many.toml")
    assert main(["--config", good, "check-config", "--config", bad]) == EXIT_USAGE
    assert main(["--config", bad, "check-config", "--log-format", "text"]) == EXIT_USAGE


def test_global_options_after_nested_sub_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(_state_config(tmp_path))
    assert main(["silence", "list", "--config", cfg, "--log-level", "warning"]) == EXIT_OK
    assert "no silences" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-level", "verbose", "check-config"],
        ["check-config", "--log-level", "verbose"],
        ["status", "--log-format", "xml"],
    ],
)
def test_choices_are_validated(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "invalid choice" in err
    assert ("debug" in err and "critical" in err) or ("json" in err and "text" in err)


def test_log_level_from_the_environment_is_validated(
    capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.setenv("ACS_DETECTOR_LOG_LEVEL", "verbose")
    assert main(["check-config", "--config", str(DATA / "bad-many.toml")]) == EXIT_USAGE
    assert "ACS_DETECTOR_LOG_LEVEL" in capsys.readouterr().err
    monkeypatch.setenv("ACS_DETECTOR_LOG_LEVEL", "DEBUG")  # case does not matter
    monkeypatch.setenv("TEST_HOOK_URL", "json://127.0.0.1:9/x")
    assert main(["check-config", "--config", str(DATA / "good.toml")]) == EXIT_OK


def test_every_option_of_every_command_has_help_and_every_command_an_example() -> None:
    missing, no_example = [], []
    for parser in _all_parsers(_build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            if action.help is argparse.SUPPRESS:  # hidden on purpose (run --now, for replay)
                assert action.option_strings == ["--now"], action.option_strings
                continue
            if not (action.help or "").strip():
                missing.append(f"{parser.prog} {'/'.join(action.option_strings) or action.dest}")
        if "example:" not in (parser.epilog or ""):
            no_example.append(parser.prog)
    assert not missing, f"options without help: {missing}"
    assert not no_example, f"commands without an example: {no_example}"


def test_help_shows_defaults_and_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--help"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "(default: 9)" in out and "(default: data/demo)" in out
    assert "example:\n  acs-detector demo" in out
    assert "--config" in out and "--log-level" in out
    assert "(default: None)" not in out and "(default: False)" not in out


def test_simulate_list_needs_no_out(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--list"]) == EXIT_OK
    assert "default" in capsys.readouterr().out
    assert main(["simulate", "--days", "1"]) == EXIT_USAGE
    assert "--out is required" in capsys.readouterr().err


def test_status_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    """``acs-detector status | head -0``: the reader is gone before status writes a line."""
    cfg = _state_config(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "detector", "status", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader goes away before the first line
    err = proc.stderr.read().decode()
    rc = proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert rc == EXIT_CLOSED_PIPE


def test_evaluate_prints_delays_in_minutes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no config/detector.toml: evaluate's built-in defaults
    monkeypatch.delenv("ACS_DETECTOR_CONFIG", raising=False)
    sim = ["simulate", "--out", "sim", "--days", "4", "--seed", "3"]
    assert main([*sim, "--scenario", "fleet_failure_spike", "--calls-per-hour", "60"]) == EXIT_OK
    capsys.readouterr()
    assert main(["evaluate", "--data", "sim"]) == EXIT_OK
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert "delay min" in header
    detected = [line for line in out.splitlines() if "detected after" in line]
    assert detected and all(re.search(r"buckets \(\d+ min\)$", line) for line in detected), out


def test_status_shows_durations_in_human_units(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 23: ``for 31 days, 9:24:15`` reads ``for 31 d 9 h``; outbox ages likewise."""
    from detector.lifecycle import AlertState, LifecyclePolicy, step
    from detector.store.alerts import AlertStore, OutboxItem
    from detector.store.backend import LocalBackend
    from tests.fixtures_alerting import make_anomaly

    cfg = _state_config(tmp_path)
    clock = datetime.now(UTC)
    end = (clock - timedelta(days=31, hours=9, minutes=24)).replace(second=0, microsecond=0)
    end -= timedelta(minutes=end.minute % 5)
    queued = clock - timedelta(hours=2, minutes=30)  # when the store took the outbox item
    store = AlertStore(LocalBackend(tmp_path / "state"), clock=lambda: queued)
    anomaly = make_anomaly(end=end, severity="critical")
    _, state = step([anomaly], {}, AlertState(), LifecyclePolicy(), end, window_end=end)
    store.save_state(state)
    item = OutboxItem(
        "o1", "oncall", "t", "json://127.0.0.1:9/hook", "json", "T", "B", "markdown",
        created_at=queued, last_error="error=500",
    )  # fmt: skip
    store.put_outbox([item])
    assert main(["status", "--config", str(cfg)]) == EXIT_OK
    out = capsys.readouterr().out
    assert re.search(r"for 31 d 9 h$", out, re.M), out
    assert "age 2 h 30 min," in out
    assert "days," not in out and not re.search(r"\d:\d\d:\d\d", out)


def test_run_summary_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    """``acs-detector run ... | head -0``: the job runs and records itself; no traceback."""
    from detector.simulate import SimSpec, simulate

    simulate(tmp_path / "data", SimSpec(days=1, seed=1, calls_per_hour=30))
    cfg = _state_config(tmp_path)
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    window = ["--start", f"{end - timedelta(hours=2):%Y-%m-%dT%H:%M:%SZ}"]
    window += ["--end", f"{end:%Y-%m-%dT%H:%M:%SZ}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "detector", "--config", str(cfg), "run", *window, "--no-notify"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    rc = proc.wait(timeout=300)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert rc == EXIT_CLOSED_PIPE, err
    assert (tmp_path / "state").is_dir()  # the run itself went through


def test_json_for_scripts_text_for_people(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``run``, ``backfill`` and ``status`` print text; ``--json`` gives scripts the data."""
    from detector.simulate import SimSpec, simulate

    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    simulate(
        tmp_path / "data",
        SimSpec(days=1, seed=1, calls_per_hour=30, start=end - timedelta(hours=8)),
    )
    cfg = str(_state_config(tmp_path))

    def iso(hours_before: int) -> str:
        return f"{end - timedelta(hours=hours_before):%Y-%m-%dT%H:%M:%SZ}"

    assert main(["backfill", "--config", cfg, "--start", iso(6), "--end", iso(4)]) == EXIT_OK
    text = capsys.readouterr().out
    assert text.startswith(f"backfilled {iso(6)} .. {iso(4)}: read ") and "{" not in text
    assert main(["backfill", "--config", cfg, "--start", iso(4), "--end", iso(2), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["arrival_window"] == [iso(4), iso(2)] and summary["rows_read"] > 0

    run = ["run", "--config", cfg, "--start", iso(2), "--end", iso(0), "--no-notify"]
    assert main([*run, "--json"]) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["window"] and "anomalies" in report

    assert main(["status", "--config", cfg]) == EXIT_OK
    assert capsys.readouterr().out.startswith("last run: ")
    assert main(["status", "--config", cfg, "--json"]) == EXIT_OK
    data = json.loads(capsys.readouterr().out)
    assert data["last_run"] is not None and data["firing"] == data["firing"] and "outbox" in data
