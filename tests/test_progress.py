"""Progress lines for long commands, and ``evaluate`` agreeing with ``demo``.

``demo`` and ``evaluate`` run as real processes, once with stderr on a pseudo-terminal (a line
per judged step) and once piped (none); stdout stays the same clean output either way. Then
``evaluate`` on the demo's own data must find what the demo found: the same alerts, first
alerting in the same bucket.
"""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from detector.cli import EXIT_OK

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "detector"]
DEMO = ["demo", "--days", "2", "--seed", "5", "--scenario", "fleet_failure_spike"]


def _run(args: list[str], cwd: Path, *, terminal: bool) -> tuple[int, str, str]:
    """Run the CLI; stderr on a pseudo-terminal (read as it comes) or piped."""
    if not terminal:
        proc = subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=900)
        return proc.returncode, proc.stdout, proc.stderr
    main_fd, child_fd = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(main_fd, 4096)
            except OSError:  # the child side closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    proc = subprocess.Popen([*CLI, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=child_fd)
    os.close(child_fd)
    out, _ = proc.communicate(timeout=900)
    reader.join(timeout=10)
    os.close(main_fd)
    return proc.returncode, out.decode(), b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A project directory after ``demo`` ran on a terminal; its stderr."""
    root = tmp_path_factory.mktemp("progress")
    shutil.copytree(ROOT / "config", root / "config")
    code, _, err = _run(DEMO, root, terminal=True)
    assert code == EXIT_OK, err[-3000:]
    yield root, err


def test_demo_progress_on_a_terminal_only(demo: tuple[Path, str]) -> None:
    root, err = demo
    steps = [x for x in err.splitlines() if x.startswith("  step ") and " ETA " in x]
    assert len(steps) >= 6, err[-3000:]  # one per judged hour
    assert len(steps) == len({x.split(":")[0] for x in steps}), "each step once, not twice"
    code, out, quiet = _run(DEMO, root, terminal=False)
    assert code == EXIT_OK
    assert " ETA " not in quiet and "step 1/" not in quiet, quiet[-2000:]
    assert "alert" in out and " ETA " not in out


def _evaluate(root: Path, *, terminal: bool) -> tuple[dict[str, Any], str]:
    code, out, err = _run(["evaluate", "--data", "data/demo", "--json"], root, terminal=terminal)
    assert code == EXIT_OK, err[-3000:]
    return json.loads(out), err


def test_evaluate_progress_on_a_terminal_only(demo: tuple[Path, str]) -> None:
    root, _ = demo
    found, err = _evaluate(root, terminal=True)
    steps = [x for x in err.splitlines() if "judged " in x and " windows up to " in x]
    assert len(steps) >= 6, err[-3000:]  # a line per judged hour
    quiet_found, quiet = _evaluate(root, terminal=False)
    assert "windows up to" not in quiet, quiet[-2000:]
    assert found["rows"][0]["events"] == quiet_found["rows"][0]["events"]  # --json stays clean


def test_evaluate_finds_what_the_demo_found(demo: tuple[Path, str]) -> None:
    """The same windows judged the same way: the same alerts, from the same first bucket."""
    root, _ = demo
    found, _ = _evaluate(root, terminal=False)
    first: dict[tuple[str, str | None, str], datetime] = {}
    anomalies = root / ".acs-detector" / "demo" / "reports" / "demo-anomalies.jsonl"
    for line in anomalies.read_text().splitlines():
        a = json.loads(line)
        key = (a["operation_name"], a["sdk_version"], a["metric"])
        start = datetime.fromisoformat(a["window_start"].replace("Z", "+00:00"))
        first[key] = min(first.get(key, start), start)
    events: dict[tuple[str, str | None, str], datetime] = {}
    for e in found["rows"][0]["events_detail"]:
        key = (e["operation_name"], e["sdk_version"], e["metric"])
        start = datetime.fromisoformat(e["start"])
        events[key] = min(events.get(key, start), start)
    assert first, "the demo found its incident"
    assert events == first
