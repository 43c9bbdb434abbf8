"""Many ACS resources writing to one source: each is judged on its own baseline (issue 22).

Real parts: simulated exports (a busy production resource, a small test resource with a
StartVideo failure spike) tagged with ``_ResourceId``, DuckDB over the Parquet file, the real
LogsQueryClient over HTTPS to the local emulator, the local store, a local HTTP receiver.

The case: blended into one baseline (``split_resources = false``, today's behaviour), the
test resource's spike is diluted by production's traffic and nothing alerts; judged apart,
it alerts, naming ``acs-test``, and production's state stays clean.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from detector.config import load_config
from detector.pipeline import run_job
from detector.simulate import SimSpec, simulate
from detector.source.resources import resource_key, short_name, slug
from detector.summary import console_summary
from tests.fixtures_alerting import Hook
from tests.fixtures_loganalytics import emulator, kusto  # noqa: F401
from tests.la_emulator import TOKEN

SUB = "/subscriptions/11111111-1111-1111-1111-111111111111"
PROD = (
    f"{SUB}/resourceGroups/rg-prod/providers/Microsoft.Communication/CommunicationServices/ACS-Prod"
)
TEST = (
    f"{SUB}/resourceGroups/rg-test/providers/Microsoft.Communication/CommunicationServices/acs-test"
)


@dataclass
class TwoResources:
    """One Parquet file holding both resources' rows; the simulated span's end and the
    hours around the test resource's incident (what the tests judge: a few steps)."""

    data: Path
    rows: pd.DataFrame
    judge_start: datetime
    judge_end: datetime
    end: datetime


@pytest.fixture(scope="module")
def two_resources(tmp_path_factory: pytest.TempPathFactory) -> TwoResources:
    out = tmp_path_factory.mktemp("two-resources")
    prod = simulate(out / "prod", SimSpec(days=4, seed=11, scenario="quiet", calls_per_hour=60))
    test = simulate(
        out / "test", SimSpec(days=4, seed=12, scenario="fleet_failure_spike", calls_per_hour=20)
    )
    assert [(i.operation_name, i.metric) for i in test.incidents] == [
        ("StartVideo", "failure_rate")
    ]
    rows = pd.concat(
        [
            pd.read_parquet(prod.data_path).assign(_ResourceId=PROD),
            # as the service may spell it: other casing, stray blanks
            pd.read_parquet(test.data_path).assign(_ResourceId=f" {TEST.upper()} "),
        ],
        ignore_index=True,
    )
    data = out / "data"
    data.mkdir()
    rows.to_parquet(data / "both.parquet")
    inc = test.incidents[0]
    start = inc.start.replace(minute=0) - timedelta(hours=2)
    return TwoResources(data, rows, start, inc.end.replace(minute=0) + timedelta(hours=2), prod.end)


def _file_config(tmp_path: Path, data: Path, *, split: bool, route: str = "") -> Path:
    cfg = tmp_path / f"files-{split}.toml"
    notify = f'\n[[notify.route]]\nname = "team"\nurls = ["{route}"]\nmin_severity = "info"\n'
    cfg.write_text(
        f"""
[source]
kind = "file"
path = "{data}"
split_resources = {str(split).lower()}

[state]
path = "{tmp_path / f"state-{split}"}"
models = "{tmp_path / f"models-{split}"}"
{notify if route else ""}"""
    )
    return cfg


def _alerts(report: dict[str, Any]) -> list[tuple[str, str | None, str, str | None]]:
    return sorted(
        (
            a["operation_name"],
            a["sdk_version"],
            a["metric"],
            (a.get("details") or {}).get("resource"),
        )
        for a in report["anomalies"]
    )


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


def test_files_two_resources_two_baselines(
    tmp_path: Path, two_resources: TwoResources, hook: Hook
) -> None:
    d = two_resources
    window = {"now": d.end, "start": d.judge_start, "end": d.judge_end}

    blended = run_job(
        load_config(_file_config(tmp_path, d.data, split=False)), **window, notify=False
    )
    # One baseline for both: the test resource's spike is lost in production's traffic.
    assert ("StartVideo", None, "failure_rate", None) not in _alerts(blended)
    assert "resources" not in blended

    cfg = load_config(
        _file_config(tmp_path, d.data, split=True, route=f"json://127.0.0.1:{hook.port}/")
    )
    split = run_job(cfg, **window)
    assert ("StartVideo", None, "failure_rate", "acs-test") in _alerts(split)
    assert all(name == "acs-test" for *_, name in _alerts(split))  # production stays quiet
    by_name = {r["name"]: r for r in split["resources"]}
    assert set(by_name) == {"acs-prod", "acs-test"}
    assert by_name["acs-prod"]["anomalies"] == 0 and by_name["acs-test"]["anomalies"] >= 1
    assert by_name["acs-prod"]["operations"] > 2 * by_name["acs-test"]["operations"]

    # The message, the console and the report name the resource.
    sent = [json.loads(b) for b in hook.bodies]
    assert sent and all("acs-test" in m["title"] and "acs-test" in m["message"] for m in sent)
    assert "ACS resource acs-test" in console_summary(split)

    # Each resource has its own history, engine state, forests and alert state.
    state = tmp_path / "state-True"
    folders = sorted(p.name for p in (state / "resources").iterdir())
    assert folders == sorted(slug(resource_key(r) or "") for r in (PROD, TEST))
    for folder in folders:
        assert (state / "resources" / folder / "alerts" / "state.json").exists()
    prod_alerts = json.loads(
        (state / "resources" / slug(resource_key(PROD) or "") / "alerts" / "state.json").read_text()
    )
    assert "StartVideo" not in json.dumps(prod_alerts)
    assert sorted(json.loads((state / "pipeline.json").read_text())["resources"]) == sorted(
        resource_key(r) for r in (PROD, TEST)
    )


def _la_config(tmp_path: Path, emu: Any, **extra: str) -> Path:
    cfg = tmp_path / "la.toml"
    lines = "\n".join(f"{k} = {v}" for k, v in extra.items())
    cfg.write_text(
        f"""
[source]
kind = "log_analytics"
endpoint = "{emu.endpoint}"
connection_verify = "{emu.ca_file}"
credential = "env:ACS_TEST_LA_TOKEN"
arrival = "TimeGenerated"
max_attempts = 1
retry_budget = 0
{lines}

[detection]
max_window = "2h"

[alerting]
health_source_error_runs = 1

[state]
path = "{tmp_path / "state"}"
models = "{tmp_path / "models"}"
"""
    )
    return cfg


def test_log_analytics_two_resources_in_one_workspace(
    tmp_path: Path,
    two_resources: TwoResources,
    emulator: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ACS_TEST_LA_TOKEN", TOKEN)
    d = two_resources
    emu = emulator(d.rows, workspaces=("ws-shared",))
    cfg = load_config(_la_config(tmp_path, emu, workspace_id='"ws-shared"'))
    report = run_job(cfg, now=d.end, start=d.judge_start, end=d.judge_end, notify=False)

    assert ("StartVideo", None, "failure_rate", "acs-test") in _alerts(report)
    assert all(name == "acs-test" for *_, name in _alerts(report))
    assert {r["name"] for r in report["resources"]} == {"acs-prod", "acs-test"}
    # One small query lists the resources; each resource's rows are read with its filter.
    texts = [r.query for r in emu.requests]
    assert any(t.startswith("// acs-detector:resources") for t in texts)
    aggregate = [t for t in texts if t.startswith("// acs-detector:aggregate")]
    assert all("_ResourceId" in t for t in aggregate)
    assert {r.status for r in emu.requests} == {200}


def test_failing_workspace_is_reported_and_others_still_judged(
    tmp_path: Path,
    two_resources: TwoResources,
    emulator: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ACS_TEST_LA_TOKEN", TOKEN)
    d = two_resources
    rows = d.rows[d.rows["_ResourceId"] == PROD]
    emu = emulator(workspaces=("ws-a",), tables={"ws-a": rows})
    cfg = load_config(
        _la_config(tmp_path, emu, workspace_id='"ws-a"', additional_workspaces='["ws-gone"]')
    )
    report = run_job(cfg, now=d.end, notify=False)  # a scheduled run

    # ws-a's rows were read and judged; ws-gone (404) is named in the report and warnings...
    assert report["source"]["operations"] > 0
    assert any("ws-gone" in f for f in report["source"]["failed_targets"])
    assert any("ws-gone" in w for w in report["warnings"])
    # ...and its failure is a self-health notice (health_source_error_runs = 1).
    health = [x for x in report["alerts"]["decisions"] if x.get("kind") == "health"]
    assert health and "ws-gone" in json.dumps(health)


def test_one_resource_keeps_the_root_layout(tmp_path: Path, two_resources: TwoResources) -> None:
    d = two_resources
    data = tmp_path / "data"
    data.mkdir()
    d.rows[d.rows["_ResourceId"] == PROD].to_parquet(data / "prod.parquet")
    report = run_job(
        load_config(_file_config(tmp_path, data, split=True)),
        now=d.end,
        start=d.judge_start,
        end=d.judge_end,
        notify=False,
    )
    state = tmp_path / "state-True"
    assert "resources" not in report and not (state / "resources").exists()
    assert (state / "alerts" / "state.json").exists()
    assert "resources" not in json.loads((state / "pipeline.json").read_text())


def test_hostile_resource_ids_are_counted_not_used(tmp_path: Path) -> None:
    from detector.simulate import simulate as sim

    out = sim(tmp_path / "sim", SimSpec(days=2, seed=3, scenario="quiet", calls_per_hour=10))
    rows = pd.read_parquet(out.data_path)
    hostile = [
        f"{SUB}/resourceGroups/rg/providers/x/y/../../../../etc/passwd",
        "'; DROP TABLE x; --",
        "/subscriptions/1/resourcegroups/rg\nprovi\u202eders/a/b/c",
        "",
    ]
    rows["_ResourceId"] = [PROD if i % 3 else hostile[i % len(hostile)] for i in range(len(rows))]
    rows.loc[rows.index % 7 == 0, "_ResourceId"] = TEST
    data = tmp_path / "data"
    data.mkdir()
    rows.to_parquet(data / "x.parquet")
    report = run_job(
        load_config(_file_config(tmp_path, data, split=True)),
        now=out.end,
        start=out.end - timedelta(hours=3),
        end=out.end,
        notify=False,
    )
    assert {r["name"] for r in report["resources"]} == {"acs-prod", "acs-test"}
    assert any("no usable _ResourceId" in w for w in report["warnings"])
    made = sorted(p.name for p in (tmp_path / "state-True" / "resources").iterdir())
    assert made == sorted(slug(resource_key(r) or "") for r in (PROD, TEST))


@pytest.mark.parametrize(
    ("value", "key"),
    [
        (f" {TEST.upper()} ", TEST.lower()),
        (PROD, PROD.lower()),
        ("", None),
        (None, None),
        ("acs-test", None),
        (f"{SUB}/resourceGroups/rg/providers/a/b/../c", None),
        (f"{SUB}/resourceGroups/../providers/a/b/c", None),
        (f"{SUB}/resourceGroups/r g/providers/a/b/c", None),
        (
            f"{SUB}/resourceGroups/rg/providers/a/b/c\n",
            f"{SUB}/resourcegroups/rg/providers/a/b/c".lower(),
        ),
        (f"{SUB}/resourceGroups/rg/providers/a/b/c'", None),
    ],
)
def test_resource_key(value: object, key: str | None) -> None:
    assert resource_key(value) == key


def test_slug_is_safe_and_tells_resources_apart() -> None:
    a = resource_key(TEST) or ""
    b = a.replace("rg-test", "rg-other")
    assert short_name(a) == "acs-test" == short_name(b)
    assert slug(a) != slug(b)
    assert all(ch.isalnum() or ch in "-." for ch in slug(a)) and slug(a).startswith("acs-test-")
