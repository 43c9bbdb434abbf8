"""The CLI through main(argv): exit codes and messages."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from detector.cli import EXIT_OK, EXIT_USAGE, main
from detector.words import INTERNAL_NAMES, metric_words

DATA = Path(__file__).parent / "data" / "config"


def test_check_config_ok(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.setenv("TEST_HOOK_URL", "json://user:hunter2@127.0.0.1/x")
    assert main(["--config", str(DATA / "good.toml"), "check-config"]) == EXIT_OK
    out = capsys.readouterr().out
    assert json.loads(out)["effective"]["detection"]["bucket"] == "15m"
    assert "hunter2" not in out


def test_check_config_invalid_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(DATA / "bad-many.toml"), "check-config"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "source.kind" in err and "detection.bucket" in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == EXIT_USAGE
    assert main(["no-such-command"]) == EXIT_USAGE
    assert main(["run", "--start", "yesterday"]) == EXIT_USAGE
    assert "ISO-8601" in capsys.readouterr().err


def test_run_needs_both_start_and_end(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(DATA / "good.toml")
    rc = main(["--config", cfg, "run", "--start", "2026-11-10T00:00:00Z"])
    assert rc == EXIT_USAGE
    assert "--start and --end go together" in capsys.readouterr().err


def test_python_m_detector_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "detector", "--version"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and "acs-detector" in proc.stdout


def test_log_records_follow_the_current_stderr(monkeypatch) -> None:
    """A host that swaps sys.stderr (a test runner's capture, an embedding process) and closes
    the old one: later records go to the new stream, never a "--- Logging error ---"."""
    import io
    import logging

    from detector.cli import _setup_logging

    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    _setup_logging("info", "text")
    logging.getLogger("detector.test").warning("one")
    assert "one" in first.getvalue()
    first.close()
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("detector.test").warning("two")
    assert "two" in second.getvalue()
    assert "Logging error" not in second.getvalue()


def test_demo_runs_outside_the_project_and_shows_its_incidents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # An install run from any directory: no config/detector.toml there, the built-in defaults.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ACS_DETECTOR_CONFIG", raising=False)
    assert main(["demo", "--days", "4", "--scenario", "fleet_failure_spike"]) == EXIT_OK
    out = capsys.readouterr().out
    labelled = json.loads((tmp_path / "data/demo/incidents.json").read_text())
    assert labelled and "labelled incidents in" in out
    # The console names each labelled incident's partition among the alerts it found, in words.
    alerts = out.split("labelled incidents in")[0]
    for inc in labelled:
        said = f"[critical] {inc['operation_name']}: {metric_words(inc['metric'])} "
        assert said in alerts and "all SDK versions" in alerts
    assert not [name for name in INTERNAL_NAMES if name in out]
    # It counts alerts as the HTML report does (issue 23: "11 windows in 4 alerts" vs "11 alerts").
    counted = re.search(r"^  (\d+) alerts? \((\d+) anomalous windows?\)$", out, re.M)
    assert counted, out
    page = Path(re.search(r"HTML report: (\S+)", out)[1]).read_text()
    assert re.search(rf'<div class="stat"><b>{counted[1]}</b>alerts?</div>', page)
    assert int(counted[1]) == out.count("    [critical] ") + out.count(
        "    [warning] "
    ) + out.count("    [info] ")
    assert (tmp_path / ".acs-detector").is_dir()


def test_run_step_must_be_a_duration(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.setenv("TEST_HOOK_URL", "json://127.0.0.1:9/x")
    cfg = str(DATA / "good.toml")
    args = ["--config", cfg, "run", "--start", "2026-11-10T00:00:00Z"]
    rc = main([*args, "--end", "2026-11-11T00:00:00Z", "--step", "soon"])
    assert rc == EXIT_USAGE
    assert "--step" in capsys.readouterr().err
