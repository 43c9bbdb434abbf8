"""[health] heartbeat_urls: the dead man's switch, through the real CLI against a local receiver.

Real parts: the simulator's files, DuckDB, the state directory, the CLI's exit-code mapping, and
a pytest-httpserver receiver standing in for healthchecks.io (GET <url> = success, GET
<url>/fail = failure).
"""

from __future__ import annotations

import fcntl
import socket
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Response

from detector.cli import EXIT_FAILURE, EXIT_OK, EXIT_SKIPPED, EXIT_USAGE, main
from detector.config import config_from_dict
from detector.errors import ConfigError
from detector.notify.heartbeat import fail_url, send_heartbeats
from detector.simulate import SimSpec, simulate

CHECK = "5bd8e3a0-1a2b-4c3d-9e8f-0123456789ab"  # the check's secret, as in a real ping URL
NOW = "2026-11-21T12:00:00Z"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    start = "2026-11-20T10:00:00Z"
    simulate(out, SimSpec(days=1, seed=5, calls_per_hour=10, start=_time(start)))
    return out


def _time(text: str):  # noqa: ANN202
    from detector.config import parse_time

    return parse_time(text)


def _config(tmp_path: Path, source: str, health: str) -> Path:
    cfg = tmp_path / "detector.toml"
    cfg.write_text(
        f"{source}\n"
        '[detection]\nbaseline = "1d"\nmax_window = "2h"\n\n'
        f'[state]\npath = "{tmp_path / "state"}"\nmodels = "{tmp_path / "models"}"\n\n'
        f"[health]\n{health}\n"
    )
    return cfg


def _file_source(data: Path) -> str:
    return f'[source]\nkind = "file"\npath = "{data}"\n'


@pytest.fixture
def ping_url(httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The heartbeat URL, given to the config through the environment as a deployment would."""
    httpserver.expect_request(f"/ping/{CHECK}", method="GET").respond_with_data("OK")
    httpserver.expect_request(f"/ping/{CHECK}/fail", method="GET").respond_with_data("OK")
    url = httpserver.url_for(f"/ping/{CHECK}")
    monkeypatch.setenv("TEST_HEARTBEAT_URL", url)
    yield url


HEALTH = 'heartbeat_urls = ["${TEST_HEARTBEAT_URL}"]\nheartbeat_timeout = "5s"'


def _pings(httpserver: HTTPServer) -> list[str]:
    return [req.path for req, _ in httpserver.log]


def _ours(stderr: str) -> str:
    """The job's stderr without the receiver's own access log (werkzeug, in this process)."""
    return "\n".join(ln for ln in stderr.splitlines() if "werkzeug" not in ln)


def test_successful_run_pings_the_url(
    data: Path, tmp_path: Path, httpserver: HTTPServer, ping_url: str, capsys
) -> None:
    cfg = _config(tmp_path, _file_source(data), HEALTH)
    assert main(["--config", str(cfg), "run", "--now", NOW]) == EXIT_OK
    assert _pings(httpserver) == [f"/ping/{CHECK}"]
    (req, _), *_ = httpserver.log
    assert req.headers["User-Agent"].startswith("acs-detector/")
    err = _ours(capsys.readouterr().err)
    assert "heartbeat (success) sent" in err and CHECK not in err


def test_runtime_failure_pings_the_fail_form(
    tmp_path: Path, httpserver: HTTPServer, ping_url: str, monkeypatch, capsys
) -> None:
    """Exit 1: the Log Analytics source refuses the connection (nothing listens there)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("TEST_LA_TOKEN", "not-a-real-token")
    source = (
        '[source]\nkind = "log_analytics"\n'
        'workspace_id = "00000000-0000-0000-0000-000000000000"\n'
        f'endpoint = "https://127.0.0.1:{port}"\ncredential = "env:TEST_LA_TOKEN"\n'
        "max_attempts = 1\nretry_budget = 0\n"
    )
    cfg = _config(tmp_path, source, HEALTH)
    assert main(["--config", str(cfg), "run", "--now", NOW]) == EXIT_FAILURE
    assert _pings(httpserver) == [f"/ping/{CHECK}/fail"]
    assert CHECK not in _ours(capsys.readouterr().err)


def test_input_error_after_config_load_pings_the_fail_form(
    tmp_path: Path, httpserver: HTTPServer, ping_url: str
) -> None:
    """Exit 2 once the config is loaded (the source is not an ACS export) is a failed run."""
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    cfg = _config(tmp_path, _file_source(bad), HEALTH)
    argv = ["--config", str(cfg), "run", "--start", "2026-11-03T00:00:00Z"]
    assert main([*argv, "--end", "2026-11-04T00:00:00Z"]) == EXIT_USAGE
    assert _pings(httpserver) == [f"/ping/{CHECK}/fail"]


def test_dry_run_and_skipped_run_send_nothing(
    data: Path, tmp_path: Path, httpserver: HTTPServer, ping_url: str
) -> None:
    cfg = _config(tmp_path, _file_source(data), HEALTH)
    assert main(["--config", str(cfg), "run", "--now", NOW, "--dry-run"]) == EXIT_OK
    # Another run holds the state lock: this one is skipped, the holder pings when it ends.
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    with open(state / ".run.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["--config", str(cfg), "run", "--now", NOW]) == EXIT_SKIPPED
    assert _pings(httpserver) == []


def test_failed_ping_is_a_warning_not_a_failure(
    data: Path, tmp_path: Path, httpserver: HTTPServer, monkeypatch, capsys
) -> None:
    """A receiver answering 500 and one refusing connections: the run still exits 0."""
    httpserver.expect_request(f"/ping/{CHECK}").respond_with_response(Response("no", 500))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/{CHECK}"
    monkeypatch.setenv("TEST_HEARTBEAT_URL", httpserver.url_for(f"/ping/{CHECK}"))
    monkeypatch.setenv("TEST_DEAD_URL", dead)
    health = 'heartbeat_urls = ["${TEST_HEARTBEAT_URL}", "${TEST_DEAD_URL}"]'
    cfg = _config(tmp_path, _file_source(data), health)
    assert main(["--config", str(cfg), "run", "--now", NOW]) == EXIT_OK
    err = _ours(capsys.readouterr().err)
    assert "WARNING detector.heartbeat: heartbeat (success)" in err
    assert "failed: HTTP 500" in err and "ConnectionRefusedError" in err
    assert CHECK not in err  # the check id is the secret: only the host is shown


def test_a_receiver_that_never_answers_costs_the_timeout_only() -> None:
    """A listening socket that never accepts: the ping gives up after the timeout."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        url = f"http://127.0.0.1:{s.getsockname()[1]}/{CHECK}"
        t0 = time.monotonic()
        (result,) = send_heartbeats([url], success=True, timeout=timedelta(seconds=1))
        elapsed = time.monotonic() - t0
    assert not result.ok and elapsed < 3, (result, elapsed)
    assert CHECK not in result.detail and CHECK not in result.target


def test_fail_url_keeps_the_query() -> None:
    assert fail_url("https://hc-ping.com/abc") == "https://hc-ping.com/abc/fail"
    assert fail_url("https://hc.example/ping/k/slug/?create=1") == (
        "https://hc.example/ping/k/slug/fail?create=1"
    )


def test_config_rejects_non_http_urls_and_long_timeouts() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(
            {
                "health": {
                    "heartbeat_urls": ["file:///etc/passwd", "https://ok.example/x"],
                    "heartbeat_timeout": "5m",
                    "heartbeat_url": "typo",
                }
            }
        )
    problems = "\n".join(info.value.problems)
    assert "health.heartbeat_urls[0]: must be an http:// or https:// URL" in problems
    assert "health.heartbeat_timeout: must be at most 60s" in problems
    assert "health.heartbeat_url: unknown key" in problems
    cfg = config_from_dict({"health": {"heartbeat_urls": ["", "https://hc-ping.com/" + CHECK]}})
    assert cfg.health["heartbeat_urls"] == ("https://hc-ping.com/" + CHECK,)
    assert cfg.redacted()["health"]["heartbeat_urls"] == ["https://hc-ping.com/<secret>"]
