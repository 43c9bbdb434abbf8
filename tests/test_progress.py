"""Progress lines for long commands: one per judged step on a terminal, none when piped.

``evaluate`` and ``demo`` run as real processes, once with stderr on a pseudo-terminal and once
with it piped; stdout (the table, or ``--json``) stays the same clean output either way.
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
from pathlib import Path

import pytest

from detector.cli import EXIT_OK, main

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "detector", "--log-level", "warning"]


def _run(args: list[str], cwd: Path, *, terminal: bool) -> tuple[int, str, str]:
    """Run the CLI; stderr on a pseudo-terminal (read as it comes) or piped."""
    if not terminal:
        proc = subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
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
    out, _ = proc.communicate(timeout=600)
    reader.join(timeout=10)
    os.close(main_fd)
    return proc.returncode, out.decode(), b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("progress")
    sim = ["simulate", "--out", str(root / "sim"), "--days", "2", "--seed", "5"]
    assert main([*sim, "--scenario", "fleet_failure_spike"]) == EXIT_OK
    yield root


def test_evaluate_progress_on_a_terminal_only(data: Path) -> None:
    args = ["evaluate", "--data", str(data / "sim"), "--json"]
    code, out, err = _run(args, data, terminal=True)
    assert code == EXIT_OK, err
    steps = [x for x in err.splitlines() if "judged " in x and " windows up to " in x]
    assert len(steps) >= 6, err  # a line per judged hour
    quiet_code, quiet_out, quiet_err = _run(args, data, terminal=False)
    assert quiet_code == EXIT_OK
    assert "windows up to" not in quiet_err and not quiet_err.strip(), quiet_err
    # --json stays clean either way: the same scores.
    assert json.loads(out)["rows"][0]["detected"] == json.loads(quiet_out)["rows"][0]["detected"]


def test_demo_progress_on_a_terminal_only(data: Path) -> None:
    shutil.copytree(ROOT / "config", data / "config", dirs_exist_ok=True)
    args = ["demo", "--days", "2", "--out", str(data / "demo"), "--log-level", "info"]
    code, out, err = _run(args, data, terminal=True)
    assert code == EXIT_OK, err
    steps = [x for x in err.splitlines() if x.startswith("  step ") and " ETA " in x]
    assert len(steps) >= 6 and steps[-1].startswith("  step ")  # one per judged hour
    assert len(steps) == len({x.split(":")[0] for x in steps}), "each step once"
    quiet_code, quiet_out, quiet_err = _run(args, data, terminal=False)
    assert quiet_code == EXIT_OK
    assert " ETA " not in quiet_err and "step 1/" not in quiet_err, quiet_err[-2000:]
    assert "alert" in quiet_out and " ETA " not in quiet_out
