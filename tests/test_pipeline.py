"""End to end through the CLI: simulated files -> run -> anomalies, reports, state, delivery.

Real parts only: the simulator writes Parquet, DuckDB aggregates it, the store is a real
directory, and notifications go through apprise's json:// to a local HTTP server.
"""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from detector.cli import EXIT_OK, main
from detector.simulate import SimSpec, simulate


class _Receiver(BaseHTTPRequestHandler):
    bodies: list[dict] = []
    status = 200

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        length = int(self.headers.get("Content-Length", 0))
        type(self).bodies.append(json.loads(self.rfile.read(length) or b"{}"))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver():
    handler = type("Receiver", (_Receiver,), {"bodies": [], "status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"json://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("sim")
    return simulate(out, SimSpec(days=4, seed=3, scenario="fleet_failure_spike"))


def _config(tmp_path: Path, data: Path, url: str = "") -> Path:
    cfg = tmp_path / "detector.toml"
    cfg.write_text(
        f"""
[source]
kind = "file"
path = "{data}"

[detection]
bucket = "5m"
baseline = "7d"
delay = "30m"

[state]
path = "{tmp_path / "state"}"
models = "{tmp_path / "models"}"

[[notify.route]]
name = "hook"
urls = ["${{TEST_ROUTE_URL:-}}"]
min_severity = "info"
"""
    )
    return cfg


def _iso(ts) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_manual_run_finds_the_labelled_incident_and_rerun_sends_nothing(
    sim, tmp_path: Path, receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler, url = receiver
    monkeypatch.setenv("TEST_ROUTE_URL", url)
    cfg = _config(tmp_path, sim.data_path)
    out = tmp_path / "anomalies.jsonl"
    args = [
        "--config",
        str(cfg),
        "run",
        "--start",
        _iso(sim.warmup_end),
        "--end",
        _iso(sim.end),
        "--output",
        str(out),
    ]
    assert main(args) == EXIT_OK
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    contract = {
        "operation_name",
        "sdk_version",
        "metric",
        "window_start",
        "window_end",
        "observed",
        "baseline",
        "score",
        "severity",
        "calls",
        "reason",
    }
    assert lines, "the labelled failure spike was not detected"
    assert all(contract <= set(a) for a in lines)
    incident = sim.incidents[0]
    hits = [
        a
        for a in lines
        if a["operation_name"] == incident.operation_name and a["metric"] == incident.metric
    ]
    assert hits, f"no anomaly on {incident.operation_name}/{incident.metric}: {lines}"
    assert len(handler.bodies) >= 1  # the digest went out through apprise json://
    digest = json.dumps(handler.bodies)
    assert incident.operation_name in digest

    # The run report is on disk with counts per stage and every decision's reason.
    report = json.loads((tmp_path / "state" / "reports" / "latest.json").read_text())
    assert report["source"]["rows_read"] > 0
    assert report["source"]["dropped"]  # the simulator's quirks were counted, not crashed on
    assert report["candidates"] and all("reason" in c for c in report["candidates"])

    # Rerunning the same window sends nothing new.
    sent = len(handler.bodies)
    assert main(args) == EXIT_OK
    assert len(handler.bodies) == sent


def test_dry_run_writes_and_sends_nothing(
    sim, tmp_path: Path, receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler, url = receiver
    monkeypatch.setenv("TEST_ROUTE_URL", url)
    cfg = _config(tmp_path, sim.data_path)
    rc = main(
        [
            "--config",
            str(cfg),
            "run",
            "--start",
            _iso(sim.warmup_end),
            "--end",
            _iso(sim.end),
            "--dry-run",
        ]
    )
    assert rc == EXIT_OK
    assert handler.bodies == []
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").rglob("*.json"))


def test_scheduled_runs_advance_the_watermark_and_catch_up(
    sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TEST_ROUTE_URL", raising=False)
    cfg = _config(tmp_path, sim.data_path)
    first = sim.warmup_end + timedelta(hours=6)
    assert main(["--config", str(cfg), "run", "--now", _iso(first)]) == EXIT_OK
    report1 = json.loads((tmp_path / "state" / "reports" / "latest.json").read_text())
    assert report1["mode"] == "scheduled"
    # A missed run: the next one, 2 h later, judges everything since the last judged bucket.
    second = first + timedelta(hours=2)
    assert main(["--config", str(cfg), "run", "--now", _iso(second)]) == EXIT_OK
    report2 = json.loads((tmp_path / "state" / "reports" / "latest.json").read_text())
    assert report2["window"]["start"] == report1["window"]["end"]
    assert report2["arrival_window"]["start"] == report1["arrival_window"]["end"]
    # Only the new arrivals were read the second time.
    assert 0 < report2["source"]["rows_read"] < report1["source"]["rows_read"]


def test_check_config_and_status(sim, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path, sim.data_path)
    assert main(["--config", str(cfg), "status"]) == EXIT_OK
    assert "last run" in capsys.readouterr().out


def test_not_an_acs_export_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    cfg = _config(tmp_path, bad)
    rc = main(
        [
            "--config",
            str(cfg),
            "run",
            "--start",
            "2026-11-03T00:00:00Z",
            "--end",
            "2026-11-04T00:00:00Z",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "bad.csv" in err


def test_source_failure_exits_1_and_is_recorded_for_self_health(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A real connection refusal: nothing listens on this loopback port.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("TEST_LA_TOKEN", "not-a-real-token")
    cfg = tmp_path / "la.toml"
    cfg.write_text(
        f"""
[source]
kind = "log_analytics"
workspace_id = "00000000-0000-0000-0000-000000000000"
endpoint = "https://127.0.0.1:{port}"
credential = "env:TEST_LA_TOKEN"
max_attempts = 1
retry_budget = 0

[state]
path = "{tmp_path / "state"}"
"""
    )
    assert main(["--config", str(cfg), "run", "--now", "2026-11-10T12:00:00Z"]) == 1
    err = capsys.readouterr().err
    assert "not-a-real-token" not in err
    assert main(["--config", str(cfg), "status"]) == EXIT_OK
    assert "status=source_error" in capsys.readouterr().out


def test_backfill_then_silence_through_the_cli(
    sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TEST_ROUTE_URL", raising=False)
    cfg = str(_config(tmp_path, sim.data_path))
    start, end = _iso(sim.start), _iso(sim.warmup_end)
    assert main(["--config", cfg, "backfill", "--start", start, "--end", end, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows_read"] > 0
    # The store now holds that history; backfilling over it again would count rows twice.
    assert main(["--config", cfg, "backfill", "--start", start, "--end", end]) == 2
    assert "watermark" in capsys.readouterr().err

    assert main(["--config", cfg, "silence", "add", "--operation", "Join", "--for", "2h"]) == 0
    added = capsys.readouterr().out
    assert "operation_name=Join" in added
    silence_id = added.split()[0]
    assert main(["--config", cfg, "silence", "list"]) == 0
    assert silence_id in capsys.readouterr().out
    assert main(["--config", cfg, "silence", "expire", silence_id]) == 0
    capsys.readouterr()
    assert main(["--config", cfg, "silence", "list"]) == 0
    assert silence_id not in capsys.readouterr().out


def test_console_shows_the_calls_behind_a_long_span() -> None:
    from detector.summary import console_summary
    from tests.fixtures_alerting import make_anomaly

    def line(calls: int, details: dict[str, int]) -> str:
        a = make_anomaly(calls=calls, details=details).to_json()
        report = {"mode": "manual", "run_id": "r", "window": {"start": "a", "end": "b"}}
        return console_summary({**report, "anomalies": [a]})

    quiet = line(0, {"evidence_calls": 50, "span_buckets": 144})
    assert "on 0 calls" in quiet and "(50 calls over the 144-bucket span behind it)" in quiet
    busy = line(170, {"evidence_calls": 150, "span_buckets": 12})
    assert "on 170 calls" in busy and "span behind it" not in busy
    assert "span behind it" not in line(3, {})  # older reports


def test_html_report_is_drawn_once_with_html(
    sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # issue 22: `run --html` (and demo) drew the page twice: once for the store, once for --html.
    import detector.report_html as report_html

    drawn: list[str] = []
    real = report_html.render_html_report

    def counting(**kwargs: object) -> str:
        drawn.append(str(kwargs.get("json_href")))
        return real(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(report_html, "render_html_report", counting)
    incident = sim.incidents[0]
    html = tmp_path / "out" / "report.html"
    args = ["--config", str(_config(tmp_path, sim.data_path)), "run", "--no-notify"]
    window = [
        "--start",
        _iso(incident.start.replace(minute=0) - timedelta(hours=1)),
        "--end",
        _iso(incident.end.replace(minute=0) + timedelta(hours=1)),
    ]
    assert main([*args, *window, "--html", str(html)]) == EXIT_OK
    assert len(drawn) == 1
    stored = sorted((tmp_path / "state" / "reports").glob("run-*.html"))
    assert len(stored) == 1 and stored[0].read_bytes() == html.read_bytes()
    # the JSON report the page links to is beside it
    assert (html.parent / drawn[0]).is_file()
