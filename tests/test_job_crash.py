"""kill -9 at each stage of a whole run: the next run ends where an uncrashed run ends.

Each case runs the real job in a child process (``tests/job_crash_child.py``) that dies at one
stage, then runs it again as cron would. Against a run that never crashed: the same alert
records, the same anomalies, and the webhook (a local HTTP receiver behind apprise's json://)
got every notice exactly once: nothing lost, nothing sent twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from detector.cli import main
from detector.simulate import SimSpec, simulate
from detector.store.alerts import AlertStore
from detector.store.backend import LocalBackend
from tests.job_crash_child import KILLED
from tests.test_pipeline import _config, _iso, receiver  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]
POINTS = (
    "after_store_merge",
    "after_engine_state",
    "after_alerting",
    "before_pipeline_state",
    "before_outputs",
)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory):
    return simulate(
        tmp_path_factory.mktemp("sim"), SimSpec(days=4, seed=3, scenario="fleet_failure_spike")
    )


def _job(point: str, args: list[str], url: str) -> int:
    env = {**os.environ, "TEST_ROUTE_URL": url}
    cmd = [sys.executable, "-m", "tests.job_crash_child", point, *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=600).returncode


def _outcome(tmp: Path, out: Path) -> tuple[dict, list]:
    state = AlertStore(LocalBackend(tmp / "state")).load_state()
    records = {fp: (r.status, r.severity) for fp, r in state.records.items()}
    anomalies = sorted(out.read_text().splitlines())
    return records, anomalies


def _scheduled_run(tmp: Path, sim, out: Path) -> list[str]:
    """Warm the store by hand, then the arguments of the scheduled run that judges the incident."""
    cfg = str(_config(tmp, sim.data_path))
    warm_until = sim.incidents[0].start - timedelta(hours=11)
    assert (
        main(["--config", cfg, "backfill", "--start", _iso(sim.start), "--end", _iso(warm_until)])
        == 0
    )
    now = sim.incidents[0].end + timedelta(hours=3)
    return ["--config", cfg, "run", "--now", _iso(now), "--output", str(out)]


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_a_run_killed_at_any_stage_loses_nothing_and_repeats_nothing(
    sim,
    tmp_path: Path,
    receiver,  # noqa: F811 (the fixture imported above)
    point: str,
) -> None:
    handler, url = receiver
    ref_dir, crash_dir = tmp_path / "ref", tmp_path / "crash"
    for d in (ref_dir, crash_dir):
        d.mkdir()
    ref_out, crash_out = ref_dir / "a.jsonl", crash_dir / "a.jsonl"

    assert _job("none", _scheduled_run(ref_dir, sim, ref_out), url) == 0
    reference = _outcome(ref_dir, ref_out)
    sent_by_reference = len(handler.bodies)
    assert reference[0] and sent_by_reference >= 1  # the incident alerted and was sent

    args = _scheduled_run(crash_dir, sim, crash_out)
    assert _job(point, args, url) == KILLED
    assert _job("none", args, url) == 0
    assert _outcome(crash_dir, crash_out) == reference
    sent = handler.bodies[sent_by_reference:]
    titles = sorted(json.dumps(b.get("title")) for b in sent)
    ref_titles = sorted(json.dumps(b.get("title")) for b in handler.bodies[:sent_by_reference])
    assert titles == ref_titles, f"{point}: {sent}"
