"""The README's "Try it locally" after the quick start: ``demo``, then ``demo --notify`` sends.

The README's own shell block runs (its servers, its environment, its command), with free ports
for 8025/8080 and ``--days 2`` for time; before it the quick start's ``demo``, after it
``status --demo``. The second demo must send its digest although the first left the same
alerts firing: the demo keeps its own state and starts it afresh.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.fixtures_alerting import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin, where .venv/bin points in the README


def _try_it_locally_block() -> list[str]:
    """The shell lines of the README's "Try it locally" block, continuation lines joined."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Try it locally", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return block.replace("\\\n", " ").splitlines()


def test_readme_try_it_locally_sends_the_demo_digest_after_the_quick_start(
    tmp_path: Path,
) -> None:
    shutil.copytree(ROOT / "config", tmp_path / "config")
    smtp, web = free_port(), free_port()
    lines = [
        line.replace(".venv/bin/", f"{BIN}/").replace("8025", str(smtp)).replace("8080", str(web))
        for line in _try_it_locally_block()
        if "pip install" not in line  # installed with the test extras
    ]
    assert lines[-1].rstrip().endswith("acs-detector demo --notify"), lines
    lines[-1] = lines[-1].rstrip() + " --days 2"
    script = "\n".join(
        [
            "set -u",
            f"{BIN}/acs-detector demo --days 2 >/dev/null 2>&1 || exit 9",  # the quick start
            *lines,
            "code=$?",
            f"{BIN}/acs-detector status --demo",
            "kill %1 %2",
            "exit $code",
        ]
    )
    proc = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    out = proc.stdout
    # The webhook target (http.server answers POST with 501) fails: exit 1, kept for a retry.
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "digest: 1 message(s) delivered, 1 waiting in the outbox" in out, out[-3000:]
    assert "the outbox: acs-detector status --demo" in out
    # The mail reached the local SMTP server, which printed it.
    assert re.search(r"^Subject: ", out, re.M), out[-3000:]
    # status --demo shows the waiting item, aged by the clock (seconds, not weeks).
    (item,) = [x for x in out.splitlines() if f"-> json://127.0.0.1:{web}/" in x and " age " in x]
    assert re.search(r" age \d+ (s|min)\b", item), item
