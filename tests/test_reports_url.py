"""Reports people can open (issue 22): every run writes its HTML report through the store,
messages link to ``[alerting] report_url``, and ``keep_reports`` prunes old run reports.

Real parts only, through the CLI: the simulator writes Parquet, DuckDB reads it, the store is
a real directory (or Azurite for the Blob backend), and messages go through apprise's json://
to a local HTTP server.
"""

from __future__ import annotations

import json
import re
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from detector.cli import EXIT_OK, main
from detector.simulate import SimSpec, simulate
from detector.store.backend import LocalBackend

try:
    from fixtures_azurite import azurite_blob, blob_container  # noqa: F401
except ImportError:
    from tests.fixtures_azurite import azurite_blob, blob_container  # noqa: F401


class _Receiver(BaseHTTPRequestHandler):
    bodies: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        length = int(self.headers.get("Content-Length", 0))
        type(self).bodies.append(json.loads(self.rfile.read(length) or b"{}"))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver():
    handler = type("Receiver", (_Receiver,), {"bodies": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"json://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory):
    return simulate(
        tmp_path_factory.mktemp("sim"), SimSpec(days=4, seed=3, scenario="fleet_failure_spike")
    )


def _config(tmp_path: Path, data: Path, *, alerting: str = "", state: str = "") -> Path:
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
{state}

[alerting]
{alerting}

[[notify.route]]
name = "hook"
urls = ["${{TEST_ROUTE_URL:-}}"]
min_severity = "info"
"""
    )
    return cfg


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def _during_incident(sim) -> str:
    """A scheduled run's ``--now`` whose first judged window holds the labelled incident."""
    return _iso(sim.incidents[0].end + timedelta(hours=1))


def _run_names(reports: Path, ext: str) -> list[str]:
    return sorted(p.name for p in reports.glob(f"run-*.{ext}"))


def test_scheduled_run_writes_the_html_report(sim, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("TEST_ROUTE_URL", raising=False)
    cfg = _config(tmp_path, sim.data_path)
    assert main(["--config", str(cfg), "run", "--now", _during_incident(sim)]) == EXIT_OK
    reports = tmp_path / "state" / "reports"
    report = json.loads((reports / "latest.json").read_text())
    assert report["mode"] == "scheduled" and report["anomalies"]
    # The run's own page beside its JSON report, and latest.html: the same page.
    [page] = _run_names(reports, "html")
    assert _run_names(reports, "json") == [page.replace(".html", ".json")]
    assert report["run_id"] in page
    html = (reports / page).read_text()
    assert html == (reports / "latest.html").read_text()
    assert sim.incidents[0].operation_name in html
    assert "data:image/png;base64," in html  # the alert's chart
    assert f'href="{page.replace(".html", ".json")}"' in html  # its raw run report


def test_dry_run_writes_no_html(sim, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("TEST_ROUTE_URL", raising=False)
    cfg = _config(tmp_path, sim.data_path)
    args = ["--config", str(cfg), "run", "--now", _during_incident(sim), "--dry-run"]
    assert main(args) == EXIT_OK
    assert not list((tmp_path / "state").rglob("*.html"))


def test_message_links_to_the_runs_report_under_report_url(
    sim, tmp_path: Path, receiver, monkeypatch
) -> None:
    handler, url = receiver
    monkeypatch.setenv("TEST_ROUTE_URL", url)
    cfg = _config(tmp_path, sim.data_path, alerting='report_url = "https://reports.example/acs/"')
    assert main(["--config", str(cfg), "run", "--now", _during_incident(sim)]) == EXIT_OK
    reports = tmp_path / "state" / "reports"
    [page] = _run_names(reports, "html")
    assert handler.bodies, "the incident was not notified"
    message = handler.bodies[0]["message"]
    assert f"(https://reports.example/acs/{page})" in message  # a Markdown link to that page
    assert str(tmp_path) not in message


def test_without_report_url_the_message_says_where_the_report_is(
    sim, tmp_path: Path, receiver, monkeypatch
) -> None:
    handler, url = receiver
    monkeypatch.setenv("TEST_ROUTE_URL", url)
    cfg = _config(tmp_path, sim.data_path)
    assert main(["--config", str(cfg), "run", "--now", _during_incident(sim)]) == EXIT_OK
    [page] = _run_names(tmp_path / "state" / "reports", "html")
    message = handler.bodies[0]["message"]
    line = next(x for x in message.splitlines() if "report" in x.lower() and page in x)
    assert "on the job's host" in line and "report_url" in line
    assert "latest.html" not in message and "](" not in line  # no path posing as a link


def test_keep_reports_keeps_exactly_that_many_runs(sim, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("TEST_ROUTE_URL", raising=False)
    cfg = _config(tmp_path, sim.data_path, alerting="keep_reports = 2")
    now = sim.warmup_end + timedelta(hours=6)
    ids = []
    for i in range(4):
        assert (
            main(["--config", str(cfg), "run", "--now", _iso(now + i * timedelta(minutes=5))]) == 0
        )
        reports = tmp_path / "state" / "reports"
        ids.append(json.loads((reports / "latest.json").read_text())["run_id"])
    runs = {n.rsplit(".", 1)[0] for n in _run_names(reports, "*")}
    assert len(runs) == 2
    assert {n.rsplit("-", 1)[1] for n in runs} == set(ids[-2:])  # the newest two
    assert len(_run_names(reports, "json")) == len(_run_names(reports, "html")) == 2
    assert (reports / "latest.html").exists() and (reports / "latest.json").exists()


def test_keep_reports_as_an_age(tmp_path: Path) -> None:
    from detector.pipeline import _prune_reports

    backend = LocalBackend(tmp_path)
    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    for hours in (1, 20, 30, 50):
        stamp = (now - timedelta(hours=hours)).strftime("%Y%m%dT%H%M%SZ")
        for ext in ("json", "html"):
            backend.write(f"reports/run-{stamp}-{hours:012d}.{ext}", b"x")
    backend.write("reports/latest.json", b"x")
    assert _prune_reports(backend, timedelta(days=1), now=now) == 4
    left = list(backend.list("reports/"))
    assert left == [
        "reports/latest.json",
        *(
            f"reports/run-{(now - timedelta(hours=h)).strftime('%Y%m%dT%H%M%SZ')}-{h:012d}.{e}"
            for h in (20, 1)
            for e in ("html", "json")
        ),
    ]


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('report_url = "reports.example/acs"', "alerting.report_url"),
        ('report_url = "file:///var/lib/acs-detector/reports"', "alerting.report_url"),
        ('report_url = "https://acct.blob.core.windows.net/r?sig=abc"', "alerting.report_url"),
        ("keep_reports = 0", "alerting.keep_reports"),
        ('keep_reports = "forever"', "alerting.keep_reports"),
    ],
)
def test_bad_report_settings_exit_2_naming_the_key(
    sim, tmp_path: Path, line: str, key: str, capsys
) -> None:
    cfg = _config(tmp_path, sim.data_path, alerting=line)
    assert main(["--config", str(cfg), "run", "--now", _during_incident(sim)]) == 2
    err = capsys.readouterr().err
    assert key in err and "unknown key" not in err  # a known key, with what is wrong with it
    assert not (tmp_path / "state").exists()


def test_blob_state_gets_the_html_report_and_is_pruned(
    sim, tmp_path: Path, azurite_blob: str, blob_container: str, monkeypatch
) -> None:
    from detector.store.blob import CONNECTION_STRING_ENV, BlobBackend

    monkeypatch.delenv("TEST_ROUTE_URL", raising=False)
    monkeypatch.setenv(CONNECTION_STRING_ENV, azurite_blob)
    state = f'url = "blob://devstoreaccount1/{blob_container}/state"'
    cfg = _config(tmp_path, sim.data_path, alerting="keep_reports = 1", state=state)
    now = sim.incidents[0].end + timedelta(hours=1)
    for i in range(2):
        assert main(["--config", str(cfg), "run", "--now", _iso(now + i * timedelta(hours=1))]) == 0
    blob = BlobBackend(connection_string=azurite_blob, container=blob_container, prefix="state")
    runs = [k for k in blob.list("reports/run-")]
    assert len(runs) == 2 and {k.rsplit(".", 1)[1] for k in runs} == {"html", "json"}
    page = blob.container_client.get_blob_client(f"state/{runs[0]}")
    assert page.get_blob_properties().content_settings.content_type.startswith("text/html")
    html = blob.read("reports/latest.html")
    assert html is not None and b"<!DOCTYPE html>" in html[0]
    assert not list((tmp_path / "state").rglob("*.html"))  # nothing on the local disk
    assert re.fullmatch(r"reports/run-\d{8}T\d{6}Z-[0-9a-f]{12}\.html", runs[0])


def test_an_empty_report_url_from_the_environment_means_none(monkeypatch) -> None:
    from detector.config import config_from_dict

    doc = {"alerting": {"report_url": "${TEST_REPORT_URL:-}", "keep_reports": "14d"}}
    cfg = config_from_dict(doc, env={})
    assert cfg.alerting["report_url"] is None
    assert cfg.alerting["keep_reports"] == timedelta(days=14)
    cfg = config_from_dict(doc, env={"TEST_REPORT_URL": "https://r.example/acs/"})
    assert cfg.alerting["report_url"] == "https://r.example/acs"
