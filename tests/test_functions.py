"""cron/azure-functions: the v2 timer function called with real TimerRequests, its bindings,
the host's JSON payload decoding, its JSON logs, and the real CLI behind it."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from azure.functions import meta
from azure.functions.timer import TimerRequest, TimerRequestConverter

ROOT = Path(__file__).resolve().parent.parent
APP_DIR = ROOT / "cron" / "azure-functions"


def _load_app() -> ModuleType:
    spec = importlib.util.spec_from_file_location("acs_function_app", APP_DIR / "function_app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fa = _load_app()


class Recorder:
    """Stands in for the CLI entry point: records argv, returns a chosen exit code."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> int:
        self.calls.append(list(argv))
        return self.code


@pytest.fixture
def records(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The function's log lines, parsed as the JSON the host would receive."""
    lines: list[dict[str, Any]] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(self.format(record)))

    root = logging.getLogger()
    handler = Capture()
    old_handlers, old_level = root.handlers[:], root.level
    root.handlers = [handler]  # as inside the worker: one handler already installed
    yield lines
    root.handlers, root.level = old_handlers, old_level


def test_binding_metadata() -> None:
    (function,) = fa.app.get_functions()
    meta_json = json.loads(function.get_function_json())
    assert meta_json["scriptFile"] == "function_app.py"
    assert meta_json["bindings"] == [
        {
            "direction": "IN",
            "type": "timerTrigger",
            "name": "timer",
            "schedule": "%ACS_DETECTOR_SCHEDULE%",
            "runOnStartup": False,
            "useMonitor": True,
        }
    ]
    assert function.get_function_name() == "detector_timer"


def test_on_time_run_calls_the_cli_entry_point(
    monkeypatch: pytest.MonkeyPatch, records: list[dict[str, Any]], tmp_path: Path
) -> None:
    cli = Recorder(0)
    monkeypatch.setattr(fa, "run_job", cli)
    monkeypatch.setenv("ACS_DETECTOR_CONFIG", str(tmp_path / "detector.toml"))
    fa.detector_timer(TimerRequest(past_due=False))
    assert cli.calls == [
        ["--config", str(tmp_path / "detector.toml"), "--log-format", "json", "run"]
    ]
    (done,) = records
    assert done["event"] == "run_finished" and done["exit_code"] == 0 and done["level"] == "info"
    assert done["past_due"] is False and "past_due" not in [r.get("event") for r in records]


def test_past_due_is_logged_and_still_runs(
    monkeypatch: pytest.MonkeyPatch, records: list[dict[str, Any]]
) -> None:
    cli = Recorder(0)
    monkeypatch.setattr(fa, "run_job", cli)
    monkeypatch.delenv("ACS_DETECTOR_CONFIG", raising=False)
    status = {"Last": "2026-11-25T10:00:00+00:00", "Next": "2026-11-25T10:05:00+00:00"}
    fa.detector_timer(TimerRequest(past_due=True, schedule_status=status))
    # Same argv as an on-time run: the window comes from the watermark, not from the timer.
    assert cli.calls == [
        ["--config", str(APP_DIR / "config" / "detector.toml"), "--log-format", "json", "run"]
    ]
    past_due, done = records
    assert past_due["event"] == "past_due" and past_due["level"] == "warning"
    assert past_due["schedule_status"] == status
    assert done["event"] == "run_finished" and done["past_due"] is True


def test_skipped_run_is_not_a_failure(
    monkeypatch: pytest.MonkeyPatch, records: list[dict[str, Any]]
) -> None:
    monkeypatch.setattr(fa, "run_job", Recorder(75))
    fa.detector_timer(TimerRequest())  # no exception: invocation succeeds
    (skipped,) = records
    assert skipped["event"] == "run_skipped" and skipped["exit_code"] == 75


@pytest.mark.parametrize("code", [1, 2])
def test_failed_run_fails_the_invocation(
    code: int, monkeypatch: pytest.MonkeyPatch, records: list[dict[str, Any]]
) -> None:
    monkeypatch.setattr(fa, "run_job", Recorder(code))
    with pytest.raises(RuntimeError, match=f"exited with code {code}"):
        fa.detector_timer(TimerRequest())
    assert records[-1]["event"] == "run_failed" and records[-1]["level"] == "error"


def test_host_payload_decodes_to_a_timer_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """The JSON the host sends, through the library's own converter, into the function."""
    payload = json.dumps(
        {
            "Schedule": {"AdjustForDST": True},
            "ScheduleStatus": {
                "Last": "2026-11-25T09:55:00+00:00",
                "Next": "2026-11-25T10:00:00+00:00",
                "LastUpdated": "2026-11-25T09:55:00+00:00",
            },
            "IsPastDue": True,
        }
    )
    timer = TimerRequestConverter.decode(meta.Datum(payload, "json"), trigger_metadata={})
    assert timer.past_due is True
    cli = Recorder(0)
    monkeypatch.setattr(fa, "run_job", cli)
    fa.detector_timer.build().get_user_function()(timer)
    assert len(cli.calls) == 1


def test_real_cli_bad_config_fails_the_invocation(
    monkeypatch: pytest.MonkeyPatch, records: list[dict[str, Any]], tmp_path: Path
) -> None:
    """No stand-in: the real detector.cli.main runs and reports a config error (exit 2)."""
    bad = tmp_path / "detector.toml"
    bad.write_text('[source]\nkind = "carrier-pigeon"\n')
    monkeypatch.setenv("ACS_DETECTOR_CONFIG", str(bad))
    with pytest.raises(RuntimeError, match="exited with code 2"):
        fa.detector_timer(TimerRequest())


def test_shipped_config_is_valid(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    """The config deployed with the app passes the real `check-config`."""
    from detector.cli import main

    monkeypatch.setenv("LOG_WORKSPACE_ID", "00000000-0000-0000-0000-000000000000")
    monkeypatch.setenv("ACS_DETECTOR_STATE_URL", "blob://acct/acs-detector/state")
    assert main(["--config", str(APP_DIR / "config" / "detector.toml"), "check-config"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["effective"]["source"]["kind"] == "log_analytics"


def test_host_files() -> None:
    host = json.loads((APP_DIR / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["functionTimeout"] == "00:10:00"  # the Consumption maximum
    assert host["extensionBundle"] == {
        "id": "Microsoft.Azure.Functions.ExtensionBundle",
        "version": "[4.*, 5.0.0)",
    }
    settings = json.loads((APP_DIR / "local.settings.json.example").read_text())["Values"]
    assert settings["FUNCTIONS_WORKER_RUNTIME"] == "python"
    # Six NCRONTAB fields (seconds first), unlike the five of cron.
    assert len(settings["ACS_DETECTOR_SCHEDULE"].split()) == 6


def test_requirements_cover_the_package_dependencies() -> None:
    """The remote build installs requirements.txt only: nothing of pyproject may be missing."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]

    def name(req: str) -> str:
        return req.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip()

    lines = [
        ln.strip()
        for ln in (APP_DIR / "requirements.txt").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    required = {name(ln).lower() for ln in lines}
    assert {name(d).lower() for d in deps} <= required
    assert "azure-functions" in required and "azure-functions-worker" not in required


def test_package_script_vendors_the_detector(tmp_path: Path) -> None:
    out = tmp_path / "app"
    subprocess.run([str(APP_DIR / "package.sh"), str(out)], check=True, capture_output=True)
    for name in ("function_app.py", "host.json", "requirements.txt", "config/detector.toml"):
        assert (out / name).is_file(), name
    assert not list(out.rglob("__pycache__"))
    # The packaged app indexes its function with the vendored package first on sys.path.
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import detector, function_app; "
        "assert detector.__file__.startswith(sys.argv[1]), detector.__file__; "
        "print(function_app.app.get_functions()[0].get_function_name())"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, str(out)], cwd=out, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "detector_timer"


def test_app_indexes_without_the_detector_package() -> None:
    """The host indexes functions at startup; a broken detector import must fail the
    invocation (with its traceback), not make the app list no functions at all."""
    probe = (
        "import sys; sys.modules['detector'] = None; sys.path.insert(0, sys.argv[1]);"
        "import function_app as fa; print(fa.app.get_functions()[0].get_function_name());"
        "from azure.functions.timer import TimerRequest\n"
        "try:\n    fa.detector_timer(TimerRequest())\nexcept ImportError:\n    print('failed')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, str(APP_DIR)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["detector_timer", "failed"]


# --- end to end: the function, the real pipeline, state in Azurite ---------------------------
try:
    from fixtures_azurite import azurite_blob, blob_container  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.fixtures_azurite import azurite_blob, blob_container  # noqa: F401


@pytest.mark.node
@pytest.mark.slow
def test_end_to_end_state_in_blob_storage(
    azurite_blob: str,
    blob_container: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    records: list[dict[str, Any]],
) -> None:
    """Three invocations of the real function over simulated logs, state in Azurite:
    a normal run, one that finds the lease held (skipped, not failed), and a past-due one that
    catches up from the watermark the first left in Blob Storage."""
    from datetime import UTC, datetime, timedelta

    from detector.cli import main
    from detector.lock import JobLock
    from detector.store.blob import CONNECTION_STRING_ENV, BlobBackend

    start = (datetime.now(UTC) - timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    data = tmp_path / "data"
    assert (
        main(
            [
                "simulate",
                "--out",
                str(data),
                "--days",
                "1",
                "--seed",
                "3",
                "--calls-per-hour",
                "10",
                "--start",
                start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            ]
        )
        == 0
    )
    config = tmp_path / "detector.toml"
    config.write_text(
        f'[source]\nkind = "file"\npath = "{data}"\n\n'
        # A short judged window keeps the first run (which fits the models) quick.
        '[detection]\nbaseline = "1d"\nmax_window = "2h"\nforest = true\n\n'
        f'[state]\npath = "{tmp_path / "scratch"}"\n'
        f'url = "blob://devstoreaccount1/{blob_container}/state"\n'
    )
    monkeypatch.setenv("ACS_DETECTOR_CONFIG", str(config))
    monkeypatch.setenv(CONNECTION_STRING_ENV, azurite_blob)
    store = BlobBackend(connection_string=azurite_blob, container=blob_container, prefix="state")

    fa.detector_timer(TimerRequest(past_due=False))
    assert [r["event"] for r in records if r["logger"] == "detector.function"] == ["run_finished"]
    keys = list(store.list())
    # Bucket history, models and run state all went to Blob Storage, none to the local disk.
    assert "pipeline.json" in keys, keys
    assert any(k.startswith("models/") for k in keys), keys
    assert len(keys) >= 3, keys
    first = json.loads(store.read("pipeline.json")[0])  # type: ignore[index]
    assert first["last_run"]["mode"] == "scheduled"

    records.clear()
    with JobLock(store):  # another invocation is running
        fa.detector_timer(TimerRequest(past_due=False))  # returns: skipped is not a failure
    assert [r["event"] for r in records if r["logger"] == "detector.function"] == ["run_skipped"]

    records.clear()
    fa.detector_timer(TimerRequest(past_due=True))
    events = [r["event"] for r in records if r["logger"] == "detector.function"]
    assert events == ["past_due", "run_finished"]
    second = json.loads(store.read("pipeline.json")[0])  # type: ignore[index]
    # The late run judged from where the first stopped: nothing skipped, nothing twice.
    assert second["last_run"]["window"]["start"] == first["judged_until"]


def test_invocations_ping_the_heartbeat(
    httpserver: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    records: list[dict[str, Any]],
) -> None:
    """The real function and CLI: the shipped config's [health] URL (an app setting) is pinged
    after a good invocation and in its fail form after a failed one."""
    from detector.cli import main

    check = "c0ffee00-1111-2222-3333-444455556666"
    httpserver.expect_request(f"/{check}").respond_with_data("OK")
    httpserver.expect_request(f"/{check}/fail").respond_with_data("OK")
    monkeypatch.setenv("ACS_DETECTOR_HEARTBEAT_URL", httpserver.url_for(f"/{check}"))
    data = tmp_path / "data"
    sim = ["simulate", "--out", str(data), "--days", "1", "--seed", "3", "--calls-per-hour", "10"]
    assert main([*sim, "--start", "2026-11-20T00:00:00Z"]) == 0
    shipped = tomllib.loads((APP_DIR / "config" / "detector.toml").read_text())
    assert shipped["health"]["heartbeat_urls"] == ["${ACS_DETECTOR_HEARTBEAT_URL:-}"]
    config = tmp_path / "detector.toml"

    def configure(source_path: Path) -> None:
        config.write_text(
            f'[source]\nkind = "file"\npath = "{source_path}"\n\n'
            '[detection]\nbaseline = "1d"\nmax_window = "2h"\nforest = true\n\n'
            f'[state]\npath = "{tmp_path / "state"}"\nmodels = "{tmp_path / "models"}"\n\n'
            '[health]\nheartbeat_urls = ["${ACS_DETECTOR_HEARTBEAT_URL:-}"]\n'
        )

    monkeypatch.setenv("ACS_DETECTOR_CONFIG", str(config))
    configure(data)
    fa.detector_timer(TimerRequest(past_due=False))
    configure(tmp_path / "no-such-export")  # the run fails after the config loaded
    with pytest.raises(RuntimeError, match="exited with code"):
        fa.detector_timer(TimerRequest(past_due=False))
    assert [req.path for req, _ in httpserver.log] == [f"/{check}", f"/{check}/fail"]
    shown = json.dumps([r for r in records if r["logger"] != "werkzeug"])  # not the receiver's
    assert "heartbeat (success) sent" in shown and check not in shown
