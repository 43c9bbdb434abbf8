"""The whole job under hostile configuration and log input (issue 21, items 5 and 6).

Planted secrets never leave. Route URLs carry secrets where real services put them: a token in
a json:// webhook's path, a header value in its query, a Teams workflow id and signature. The
job runs end to end through the CLI in a child process (simulated logs, DEBUG logging, a
working target, a failing one and an unreachable Teams workflow), then retries its outbox,
prints ``status`` and ``check-config`` and writes the HTML report. Every file it wrote and all
it printed are then searched for each secret. And an operation name with a ``|`` is detected,
decided and delivered.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from detector.simulate import SimSpec, simulate

ROOT = Path(__file__).resolve().parents[1]

WORK_TOKEN = "WorkPathTokenA7f3a9c1"
WORK_HEADER = "HeaderSecretB55aa0921"
FAIL_TOKEN = "FailPathTokenC9b2e1d4"
FAIL_QUERY = "QueryValueSecretD31337"
TEAMS_WF = "WorkflowIdE4455667788"
TEAMS_SIG = "TeamsSigSecretF0123abcd"
SECRETS = [WORK_TOKEN, WORK_HEADER, FAIL_TOKEN, FAIL_QUERY, TEAMS_WF, TEAMS_SIG]


class _Hook(BaseHTTPRequestHandler):
    status = 200
    hits = 0
    bodies: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        type(self).bodies.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        type(self).hits += 1
        self.send_response(type(self).status)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


def _server(status: int) -> tuple[ThreadingHTTPServer, type[_Hook]]:
    handler = type("Hook", (_Hook,), {"status": status, "hits": 0, "bodies": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, handler


@pytest.fixture
def targets():
    work, work_h = _server(200)
    fail, fail_h = _server(500)
    try:
        yield work, work_h, fail, fail_h
    finally:
        for s in (work, fail):
            s.shutdown()
            s.server_close()


def _write_config(tmp_path: Path, data: Path, routes: dict[str, list[str]]) -> Path:
    """A config reading ``data``, state under ``tmp_path``, one route per ``routes`` entry."""
    path = tmp_path / "config" / "detector.toml"
    path.parent.mkdir(exist_ok=True)
    text = (
        f'[source]\nkind = "file"\npath = "{data}"\n\n'
        '[detection]\nbucket = "5m"\nbaseline = "7d"\ndelay = "30m"\n\n'
        f'[state]\npath = "{tmp_path / "state"}"\nmodels = "{tmp_path / "models"}"\n'
    )
    for name, urls in routes.items():
        listed = ", ".join(f'"{u}"' for u in urls)
        text += f'\n[[notify.route]]\nname = "{name}"\nurls = [{listed}]\nmin_severity = "info"\n'
    path.write_text(text)
    return path


def _window(sim: Any) -> list[str]:
    return [
        "--start",
        f"{sim.warmup_end:%Y-%m-%dT%H:%M:%SZ}",
        "--end",
        f"{sim.end:%Y-%m-%dT%H:%M:%SZ}",
    ]


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "detector", "--log-level", "debug", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )


def test_planted_secrets_appear_in_no_file_and_no_output(tmp_path: Path, targets) -> None:
    work, work_h, fail, fail_h = targets
    sim = simulate(tmp_path / "sim", SimSpec(days=4, seed=3, scenario="fleet_failure_spike"))
    state, out = tmp_path / "state", tmp_path / "out"
    out.mkdir()
    work_url = f"json://127.0.0.1:{work.server_address[1]}/hook/{WORK_TOKEN}?+X-Token={WORK_HEADER}"
    # The failing target is written into the file itself (no ${VAR}), like a hand-made config.
    fail_url = f"json://127.0.0.1:{fail.server_address[1]}/hook/{FAIL_TOKEN}?+X-Q={FAIL_QUERY}"
    teams_url = f"workflows://127.0.0.1:{fail.server_address[1]}/{TEAMS_WF}/{TEAMS_SIG}/"
    config = _write_config(
        tmp_path, sim.data_path, {"work": ["${WORK_URL}"], "broken": [fail_url, "${TEAMS_URL}"]}
    )
    env = {**os.environ, "WORK_URL": work_url, "TEAMS_URL": teams_url, "NO_PROXY": "*"}
    window = _window(sim)
    runs = [
        _cli(["--config", str(config), "check-config"], env),
        _cli(
            [
                "--config",
                str(config),
                "run",
                *window,
                "--output",
                str(out / "anomalies.jsonl"),
                "--report",
                str(out / "report.json"),
                "--html",
                str(out / "report.html"),
            ],
            env,
        ),
        # A scheduled run an hour later retries the outbox (the broken targets fail again).
        _cli(
            ["--config", str(config), "run", "--now", f"{sim.end:%Y-%m-%dT%H:%M:%SZ}"],
            env,
        ),
        _cli(["--config", str(config), "status"], env),
        _cli(["--config", str(config), "report", "--html", str(out / "again.html")], env),
    ]
    for r in runs:
        assert r.returncode in (0, 1), r.stderr[-3000:]  # 1: some delivery failed
    assert work_h.hits >= 1 and fail_h.hits >= 1  # both targets were really tried

    written = [p for p in [*state.rglob("*"), *out.rglob("*")] if p.is_file()]
    assert any(p.name == "report.html" for p in written) and len(written) >= 5
    leaks = []
    for secret in SECRETS:
        for p in written:
            if secret.encode() in p.read_bytes():
                leaks.append(f"{secret} in {p.relative_to(tmp_path)}")
        for i, r in enumerate(runs):
            for name, text in (("stdout", r.stdout), ("stderr", r.stderr)):
                if secret in text:
                    line = next(x for x in text.splitlines() if secret in x)
                    leaks.append(f"{secret} in run {i} {name}: {line[:200]}")
    assert leaks == []


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        (f"json://hooks.example/hook/{WORK_TOKEN}", WORK_TOKEN),
        (f"jsons://user:pw@hooks.example:8443/a/{FAIL_TOKEN}?+X-Token={WORK_HEADER}", FAIL_TOKEN),
        (f"jsons://hooks.example/a?+X-Token={WORK_HEADER}", WORK_HEADER),
        (f"xml://hooks.example/{WORK_TOKEN}", WORK_TOKEN),
        (f"workflows://prod-1.westeurope.logic.azure.com:443/{TEAMS_WF}/{TEAMS_SIG}/", TEAMS_SIG),
        (f"workflows://prod-1.westeurope.logic.azure.com:443/{TEAMS_WF}/{TEAMS_SIG}/", TEAMS_WF),
        ("slack://xoxb-123456789012-987654321098-SlackBotTok77/#alerts", "SlackBotTok77"),
        (
            "https://hooks.slack.com/services/T0A1B2C3D/B0A1B2C3D/SlackHookTok8899",
            "SlackHookTok8899",
        ),
        ("ntfy://TopicSecretG42", "TopicSecretG42"),
    ],
)
def test_display_url_hides_path_tokens_and_query_values(url: str, secret: str) -> None:
    from detector.notify.send import display_url, redact, secrets_of

    shown = display_url(url)
    assert secret not in shown and "://" in shown and "<invalid>" not in shown
    assert secret not in redact(f"POST {url} failed: 500", secrets_of(url))


def test_a_pipe_in_operation_name_is_alerted_end_to_end(tmp_path: Path, targets) -> None:
    """Issue 21 item 5: 'Start|Video' was critical on the console, 0 decisions, 0 sent."""
    import json

    import pandas as pd

    work, work_h, _, _ = targets
    sim = simulate(tmp_path / "sim", SimSpec(days=4, seed=3, scenario="fleet_failure_spike"))
    incident = sim.incidents[0]
    hostile = incident.operation_name[:5] + "|" + incident.operation_name[5:]
    frame = pd.read_parquet(sim.data_path)
    frame["OperationName"] = frame["OperationName"].replace(incident.operation_name, hostile)
    frame.to_parquet(sim.data_path)
    config = _write_config(
        tmp_path, sim.data_path, {"work": [f"json://127.0.0.1:{work.server_address[1]}/hook"]}
    )
    r = _cli(["--config", str(config), "run", *_window(sim)], dict(os.environ))
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "state" / "reports" / "latest.json").read_text())
    assert any(a["operation_name"] == hostile for a in report["anomalies"])
    messages = [json.loads(b)["message"] for b in work_h.bodies]
    assert any(hostile in m and "failure rate" in m for m in messages), messages
