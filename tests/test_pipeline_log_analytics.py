"""The scheduled job against the Log Analytics emulator: a failed chunk keeps what was read.

Real parts: the CLI, the real LogsQueryClient over HTTPS to the local emulator, the local store.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from detector.cli import main
from detector.store.backend import LocalBackend
from detector.store.buckets import BucketStore
from tests.fixtures_loganalytics import T0, emulator, kusto, make_source, sample_rows  # noqa: F401
from tests.la_emulator import TOKEN, Fault


def _config(tmp_path: Path, emu) -> Path:
    cfg = tmp_path / "la.toml"
    cfg.write_text(
        f"""
[source]
kind = "log_analytics"
workspace_id = "ws-test"
endpoint = "{emu.endpoint}"
connection_verify = "{emu.ca_file}"
credential = "env:ACS_TEST_LA_TOKEN"
plan_threshold = "1h"
max_rows_per_chunk = 60
max_attempts = 2
backoff_base = 0.01
backoff_max = 0.05

[detection]
baseline = "1d"
lateness = "1h"

[state]
path = "{tmp_path / "state"}"
models = "{tmp_path / "models"}"
"""
    )
    return cfg


def test_failed_chunk_advances_watermark_only_over_what_was_read(
    tmp_path: Path,
    emulator,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ACS_TEST_LA_TOKEN", TOKEN)
    rows = sample_rows(hours=4, per_hour=100)
    emu = emulator(rows)
    whole = make_source(emu).read_aggregates(
        (T0 - timedelta(days=2), T0 + timedelta(hours=10)), bucket=timedelta(minutes=5)
    )
    cfg = _config(tmp_path, emu)
    now = (T0 + timedelta(hours=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    store = BucketStore(LocalBackend(tmp_path / "state"))

    # the resources query, plan and first chunk answer; the next chunk fails on both attempts
    emu.push(
        Fault("slow"), Fault("slow"), Fault("slow"), Fault("status", 500), Fault("status", 500)
    )
    assert main(["--config", str(cfg), "run", "--now", now]) == 1
    partial_wm = store.watermark
    assert partial_wm is not None and partial_wm < T0 + timedelta(hours=10)
    partial_calls = int(store.load().stats["calls"].sum())
    assert 0 < partial_calls < int(whole.stats["calls"].sum())

    # The next run resumes at the watermark: every operation counted exactly once.
    assert main(["--config", str(cfg), "run", "--now", now]) == 0
    assert store.watermark > partial_wm
    assert int(store.load().stats["calls"].sum()) == int(whole.stats["calls"].sum())


@pytest.mark.parametrize(
    ("missing", "says"),
    [
        (("DurationMs",), "schema drift: table ACSCallClientOperations has no column DurationMs"),
        (("ACSCallClientOperations",), "the workspace has no table ACSCallClientOperations"),
    ],
    ids=["a-column-renamed", "no-row-ever-arrived"],
)
def test_a_table_without_what_the_query_reads_fails_the_run_saying_so(
    tmp_path: Path,
    emulator,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    missing: tuple[str, ...],
    says: str,
) -> None:
    monkeypatch.setenv("ACS_TEST_LA_TOKEN", TOKEN)
    emu = emulator(sample_rows(hours=2, per_hour=50), missing=missing)
    now = (T0 + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert main(["--config", str(_config(tmp_path, emu)), "run", "--now", now]) == 1
    err = capsys.readouterr().err
    assert says in err and "SemanticError" not in says
    assert "Failed to resolve" in err  # the service's own words follow, for a search
    queries = [r.query for r in emu.requests]
    assert len(set(queries)) == len(queries)  # a semantic error is not retried
    assert BucketStore(LocalBackend(tmp_path / "state")).watermark is None
