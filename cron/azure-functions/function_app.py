"""Azure Functions (Python v2 programming model): acs-detector on a timer.

A thin shim over the CLI: the timer calls ``run_job(job_argv())``, which is
``detector.cli.main(["--config", <config>, "--log-format", "json", "run"])``, the same entry
point cron and systemd use. Everything else (the window, the lock, the store) is the job's:

- **Window.** ``run`` reads from the stored watermark to ``now - delay``. A late invocation
  (``timer.past_due``: the host was down or restarting) or a missed one is therefore caught up
  by the next run that happens; the platform does not replay missed slots and does not retry a
  failed invocation, and nothing here needs to.
- **State.** The Functions disk is not kept, so the config's ``[state] url`` points at Azure Blob
  Storage (``blob://<account>/<container>/<prefix>``): conditional writes and a blob-lease job
  lock keep two overlapping invocations from corrupting state or alerting twice.
- **Exit codes.** 0: done. 75: another run holds the lock, logged as skipped, not a failure.
  Anything else raises, so the invocation is marked failed in Application Insights.
- **Logs.** One JSON object per line (``--log-format json`` for the job; this module's own lines
  go through the same formatter).

App settings: ``ACS_DETECTOR_SCHEDULE`` (six-field NCRONTAB, UTC, e.g. ``0 */5 * * * *``),
``ACS_DETECTOR_CONFIG`` (default ``config/detector.toml`` next to this file), plus what the
config references (workspace id, storage account, notification URLs).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import azure.functions as func

__all__ = ["app", "configure_json_logging", "detector_timer", "job_argv", "run_job"]

APP_ROOT = Path(__file__).resolve().parent
EXIT_OK = 0
EXIT_SKIPPED = 75

log = logging.getLogger("detector.function")

app = func.FunctionApp()


try:
    from detector.logjson import JsonFormatter as _JsonFormatter
except ImportError:  # the app still indexes its function; the invocation then fails loudly
    _JsonFormatter = logging.Formatter  # type: ignore[misc,assignment]


def configure_json_logging() -> None:
    """Format every root handler as JSON lines.

    Inside the Functions worker the root logger already has the worker's handler, which ships
    records to the host (Application Insights); giving it a JSON formatter makes the traces
    structured without adding a second handler (which would log everything twice). Outside the
    worker (local runs, tests) a stderr handler is added.
    """
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.setFormatter(_JsonFormatter())
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)


def job_argv() -> list[str]:
    """The CLI arguments of one scheduled run (config from ``ACS_DETECTOR_CONFIG``)."""
    config = os.environ.get("ACS_DETECTOR_CONFIG") or str(APP_ROOT / "config" / "detector.toml")
    return ["--config", config, "--log-format", "json", "run"]


def run_job(argv: list[str]) -> int:
    """Run the CLI in-process and return its exit code.

    Imported lazily so this module (and the host's function indexing) loads even when the
    detector package fails to import; that failure then surfaces as a failed invocation with
    its traceback instead of a host that lists no functions.
    """
    from detector.cli import main

    return int(main(argv))


@app.timer_trigger(
    schedule="%ACS_DETECTOR_SCHEDULE%",
    arg_name="timer",
    run_on_startup=False,  # True would also fire on every restart and scale-out
    use_monitor=True,  # schedule status kept in AzureWebJobsStorage: past_due is reliable
)
def detector_timer(timer: func.TimerRequest) -> None:
    """One scheduled run of acs-detector; raises when the run failed."""
    configure_json_logging()
    # schedule_status is on the concrete TimerRequest the worker passes, not on the ABC.
    status = dict(getattr(timer, "schedule_status", None) or {})
    if timer.past_due:
        # Not an error: the run reads its window from the watermark, so the gap since the
        # last successful run is covered by this one.
        log.warning(
            "timer is past due; catching up from the stored watermark",
            extra={"data": {"event": "past_due", "schedule_status": status}},
        )
    argv = job_argv()
    t0 = time.perf_counter()
    code = run_job(argv)
    info = {
        "event": "run_finished",
        "exit_code": code,
        "past_due": bool(timer.past_due),
        "duration_s": round(time.perf_counter() - t0, 3),
    }
    if code == EXIT_OK:
        log.info("acs-detector run finished", extra={"data": info})
    elif code == EXIT_SKIPPED:
        log.warning(
            "acs-detector run skipped: another run holds the lock",
            extra={"data": {**info, "event": "run_skipped"}},
        )
    else:
        log.error("acs-detector run failed", extra={"data": {**info, "event": "run_failed"}})
        raise RuntimeError(f"acs-detector run exited with code {code}")
