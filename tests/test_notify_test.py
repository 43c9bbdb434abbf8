"""``acs-detector notify test`` through the real CLI, against a local SMTP server (aiosmtpd)
and a local HTTP receiver (pytest-httpserver): real apprise sends, real exit codes."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Response

from detector.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, main
from detector.notify.probe import TEST_TITLE
from tests.fixtures_alerting import free_port
from tests.test_notify_email import PASSWORD, smtp  # noqa: F401  (the SMTP server fixture)

HOOK_TOKEN = "HookT0kenS3cret77"  # a secret in the webhook's query, as real ones carry


def _config(tmp_path: Path, routes: str) -> Path:
    cfg = tmp_path / "detector.toml"
    cfg.write_text(
        '[source]\nkind = "file"\npath = "data/none"\n\n'
        f'[state]\npath = "{tmp_path / "state"}"\nmodels = "{tmp_path / "models"}"\n\n'
        f"{routes}"
    )
    return cfg


def _mail_url(port: int) -> str:
    return (
        f"mailto://alerts:{PASSWORD}@127.0.0.1:{port}"
        "?from=acs-detector <alerts@example.com>&to=oncall@example.com"
    )


@pytest.fixture
def routes_env(smtp, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch):  # noqa: F811
    """Two routes whose URLs come from the environment, as a deployment gives them."""
    _, port = smtp
    monkeypatch.setenv("TEST_MAIL_URL", _mail_url(port))
    monkeypatch.setenv(
        "TEST_HOOK_URL", f"json://127.0.0.1:{httpserver.port}/hook?+X-Token={HOOK_TOKEN}"
    )
    return (
        '[[notify.route]]\nname = "oncall"\nurls = ["${TEST_MAIL_URL}", "${TEST_HOOK_URL}"]\n\n'
        '[[notify.route]]\nname = "team-chat"\nurls = ["${TEST_HOOK_URL}"]\ntimeout = 5\n'
    )


def test_every_target_of_every_route_gets_the_marked_message(
    tmp_path: Path,
    smtp,  # noqa: F811 (the fixture imported above)
    httpserver: HTTPServer,
    routes_env: str,
    capsys,  # noqa: F811
) -> None:
    sink, _ = smtp
    httpserver.expect_request("/hook", method="POST").respond_with_json({"ok": True})
    cfg = _config(tmp_path, routes_env)

    assert main(["--config", str(cfg), "notify", "test"]) == EXIT_OK

    (mail,) = sink.messages
    assert mail["Subject"] == TEST_TITLE
    body = mail.get_body(preferencelist=("plain", "html")).get_content()
    assert "No incident is open" in body
    assert "route: oncall" in body and f"host: {socket.gethostname()[:80]}" in body
    hooks = [json.loads(req.get_data()) for req, _ in httpserver.log]
    assert len(hooks) == 2  # one per route that lists the webhook
    assert {h["title"] for h in hooks} == {TEST_TITLE}
    assert {h["type"] for h in hooks} == {"info"}
    assert sorted(
        line.split(": ", 1)[1]
        for h in hooks
        for line in h["message"].splitlines()
        if line.startswith("- route:")
    ) == ["oncall", "team-chat"]
    out = capsys.readouterr().out
    assert out.count(" OK  SUCCESS") == 3 and "3 of 3 target(s) reached" in out
    # targets are shown redacted: no password, no webhook token
    assert PASSWORD not in out and HOOK_TOKEN not in out
    assert "mailto://" in out and "json://" in out
    # no alert state, notification log or outbox was written
    assert not (tmp_path / "state").exists()


def test_one_failing_target_exits_1_and_names_it(
    tmp_path: Path,
    smtp,  # noqa: F811 (the fixture imported above)
    httpserver: HTTPServer,
    routes_env: str,
    capsys,  # noqa: F811
) -> None:
    sink, _ = smtp
    httpserver.expect_request("/hook").respond_with_response(Response("boom", 500))
    cfg = _config(tmp_path, routes_env)

    assert main(["--config", str(cfg), "notify", "test", "--route", "oncall"]) == EXIT_FAILURE

    assert len(sink.messages) == 1  # the mail target still got its message
    assert len(httpserver.log) == 1  # --route oncall: team-chat was not tested
    lines = capsys.readouterr().out.splitlines()
    (mail_line,) = [ln for ln in lines if "mailto://" in ln]
    (hook_line,) = [ln for ln in lines if "json://" in ln]
    assert " OK  SUCCESS" in mail_line
    assert " FAILED  FAILURE" in hook_line and HOOK_TOKEN not in hook_line
    assert lines[-1] == "1 of 2 target(s) reached"
    assert not (tmp_path / "state").exists()


def test_unreachable_target_and_empty_route_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Nothing listens on the port; a route whose only URL is an unset ${VAR:-} has no target."""
    port = free_port()
    routes = (
        f'[[notify.route]]\nname = "down"\nurls = ["json://127.0.0.1:{port}/hook"]\ntimeout = 2\n\n'
        '[[notify.route]]\nname = "unset"\nurls = ["${TEST_UNSET_URL:-}"]\n'
    )
    monkeypatch.delenv("TEST_UNSET_URL", raising=False)
    cfg = _config(tmp_path, routes)

    assert main(["--config", str(cfg), "notify", "test"]) == EXIT_FAILURE

    rows = [ln.split()[:4] for ln in capsys.readouterr().out.splitlines()]
    assert rows[0] == ["down", f"json://127.0.0.1:{port}/****", "FAILED", "FAILURE"]
    assert rows[1] == ["unset", "-", "FAILED", "NO_TARGET"]
    assert rows[2] == ["0", "of", "2", "target(s)"]


def test_unknown_route_and_no_routes_exit_2(tmp_path: Path, httpserver: HTTPServer, capsys) -> None:
    hook = f'[[notify.route]]\nname = "oncall"\nurls = ["json://127.0.0.1:{httpserver.port}/h"]\n'
    cfg = _config(tmp_path, hook)
    assert main(["--config", str(cfg), "notify", "test", "--route", "nope"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "no route named 'nope'" in err and "'oncall'" in err

    (tmp_path / "bare").mkdir()
    bare = _config(tmp_path / "bare", "")
    assert main(["--config", str(bare), "notify", "test"]) == EXIT_USAGE
    assert "no [[notify.route]] is configured" in capsys.readouterr().err
    assert main(["--config", str(bare), "notify"]) == EXIT_USAGE  # no action given
    assert httpserver.log == []  # nothing was sent by any of them
