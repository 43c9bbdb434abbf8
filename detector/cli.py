"""Command line: argv in, exit code out. The only place that turns errors into exit codes.

Exit codes (design §1.8): 0 ran (with or without anomalies), 1 runtime failure (source, store
or delivery), 2 bad config or usage, 75 skipped (another run holds the lock). The clock is read
here and passed down as ``now``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from detector import __version__
from detector.errors import (
    ConfigError,
    DetectorError,
    InputError,
    LockHeldError,
    NotifyError,
)
from detector.logjson import JsonFormatter

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_SKIPPED", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_SKIPPED = 75

log = logging.getLogger("detector")


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so main() owns every exit code."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{self.prog}: {message}")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes to whatever ``sys.stderr`` is when a record is emitted.

    Bound to the ``sys.stderr`` of the moment it was made, a handler kept writing to a stream
    that its host (a test runner capturing output, an embedding process) had since swapped out
    and closed, and a late record from a server thread printed "--- Logging error ---".
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass  # always the current sys.stderr


def _setup_logging(level: str, fmt: str) -> None:
    in_functions = bool(os.environ.get("FUNCTIONS_WORKER_RUNTIME"))
    root = logging.getLogger()
    if in_functions and any(not getattr(h, "_acs_detector", False) for h in root.handlers):
        # The Functions worker already ships root's records to the host: format them as JSON
        # instead of adding a second handler (every line would be logged twice).
        for h in root.handlers:
            h.setFormatter(JsonFormatter())
        root.setLevel(getattr(logging, level.upper(), logging.WARNING))
        _quiet_libraries(root.level)
        return
    handler = _StderrHandler()
    if fmt == "json" or (fmt == "auto" and in_functions):
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for h in list(root.handlers):
        if getattr(h, "_acs_detector", False):
            root.removeHandler(h)
    handler._acs_detector = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.WARNING))
    _quiet_libraries(root.level)


def _quiet_libraries(level: int) -> None:
    # apprise logs full URLs at DEBUG in some plugins; keep it at WARNING where it only prints
    # privacy-redacted URLs and outcomes.
    logging.getLogger("apprise").setLevel(max(logging.WARNING, level))
    logging.getLogger("azure").setLevel(max(logging.WARNING, level))


def _time(text: str) -> datetime:
    from detector.config import parse_time

    try:
        return parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO-8601 time (e.g. 2026-11-20T14:00:00Z)"
        ) from None


def _build_parser() -> _Parser:
    p = _Parser(
        prog="acs-detector",
        description="Anomaly detection and alerting for ACS call client operations.",
    )
    p.add_argument("--version", action="version", version=f"acs-detector {__version__}")
    p.add_argument(
        "--config",
        help="config file (default: $ACS_DETECTOR_CONFIG or config/detector.toml)",
    )
    p.add_argument("--log-level", default=os.environ.get("ACS_DETECTOR_LOG_LEVEL", "info"))
    p.add_argument("--log-format", choices=("auto", "text", "json"), default="auto")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser("run", help="run the job (scheduled window, or --start/--end)")
    run.add_argument("--start", type=_time, help="judge buckets from this time (ISO-8601 UTC)")
    run.add_argument("--end", type=_time, help="... up to this time (exclusive)")
    run.add_argument("--dry-run", action="store_true", help="write nothing, send nothing")
    notify = run.add_mutually_exclusive_group()
    notify.add_argument("--no-notify", dest="notify", action="store_false", default=True)
    notify.add_argument("--notify", dest="notify", action="store_true")
    run.add_argument("--output", type=Path, help="anomalies as JSON lines to this file")
    run.add_argument("--report", type=Path, help="run report (JSON) to this file")
    run.add_argument("--html", type=Path, help="HTML report with a chart per alert")
    run.add_argument(
        "--step", default=None, help="judge in steps of this (default detection.step, 1h)"
    )
    run.add_argument("--now", type=_time, help=argparse.SUPPRESS)  # for replay and tests

    bf = sub.add_parser("backfill", help="load history into the store (warms the baselines)")
    bf.add_argument("--start", type=_time, required=True)
    bf.add_argument("--end", type=_time, required=True)

    demo = sub.add_parser("demo", help="simulate logs, run the job over them, show the result")
    demo.add_argument("--out", type=Path, default=Path("data/demo"), help="where to simulate")
    demo.add_argument("--days", type=int, default=9)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--scenario", default="default")
    demo.add_argument("--notify", action="store_true", help="send the digest to the routes")

    sim = sub.add_parser("simulate", help="write simulated ACSCallClientOperations logs")
    sim.add_argument("--out", type=Path, required=True)
    sim.add_argument("--days", type=int, default=7)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--scenario", default="default")
    sim.add_argument(
        "--format", dest="fmt", default="parquet", choices=("parquet", "jsonl", "csv", "diagnostic")
    )
    sim.add_argument("--calls-per-hour", type=float, default=None)
    sim.add_argument("--start", type=_time, default=None)
    sim.add_argument("--list", action="store_true", help="list the scenarios and exit")

    ev = sub.add_parser("evaluate", help="precision/recall of the detector on simulated data")
    ev.add_argument("--data", type=Path, required=True, help="a directory written by simulate")
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")

    sub.add_parser("check-config", help="validate the config and print it, secrets hidden")
    sub.add_parser("status", help="open alerts, silences, outbox, last run and watermark")

    sil = sub.add_parser("silence", help="manage silences")
    sil_sub = sil.add_subparsers(dest="silence_command", metavar="ACTION", parser_class=_Parser)
    sa = sil_sub.add_parser("add", help="silence alerts matching operation/version/metric")
    sa.add_argument("--operation", default=None)
    sa.add_argument("--sdk-version", default=None)
    sa.add_argument("--metric", default=None, choices=("duration", "failure_rate", "volume"))
    sa.add_argument("--for", dest="duration", default="2h", help="e.g. 2h, 1d")
    sa.add_argument("--comment", default="")
    sil_sub.add_parser("list", help="list active silences")
    se = sil_sub.add_parser("expire", help="expire a silence")
    se.add_argument("silence_id")

    ack = sub.add_parser("ack", help="acknowledge a firing alert: muted until it resolves")
    ack.add_argument("fingerprint", help="operation|sdk_version|metric, as shown by status")
    ack.add_argument("--comment", default="")

    nt = sub.add_parser("notify", help="notification tools (test the routes)")
    nt_sub = nt.add_subparsers(dest="notify_command", metavar="ACTION", parser_class=_Parser)
    nt_test = nt_sub.add_parser(
        "test", help="send a marked test message to every target; exit 1 if one fails"
    )
    nt_test.add_argument("--route", default=None, help="test this route only (by name)")

    rep = sub.add_parser("report", help="write the HTML report of a run")
    rep.add_argument("--run", type=Path, default=None, help="run report JSON (default: latest)")
    rep.add_argument("--html", type=Path, required=True)
    return p


# --------------------------------------------------------------------------------------------
# Command handlers. Heavy modules are imported inside them so `--help` stays fast.
# --------------------------------------------------------------------------------------------


def _load(args: argparse.Namespace) -> Any:
    from detector.config import load_config

    return load_config(args.config)


def _cmd_check_config(args: argparse.Namespace, now: datetime) -> int:
    cfg = _load(args)
    print(json.dumps({"config": str(cfg.path), "effective": cfg.redacted()}, indent=2))
    print("config OK", file=sys.stderr)
    return EXIT_OK


def _cmd_simulate(args: argparse.Namespace, now: datetime) -> int:
    from detector import simulate as sim

    if args.list:
        for name, scenario in sim.SCENARIOS.items():
            print(f"{name:24} {getattr(scenario, 'description', scenario)}")
        return EXIT_OK
    if args.scenario not in sim.SCENARIOS:
        raise ConfigError(
            f"--scenario: unknown scenario {args.scenario!r}; "
            f"choose from {', '.join(sim.SCENARIOS)}"
        )
    if args.days < 1:
        raise ConfigError("--days: must be at least 1")
    try:
        result = sim.simulate(
            args.out,
            days=args.days,
            seed=args.seed,
            scenario=args.scenario,
            fmt=args.fmt,
            start=args.start,
            calls_per_hour=args.calls_per_hour,
        )
    except ValueError as exc:  # the simulator lists every bad parameter in one message
        raise ConfigError(f"simulate: {exc}") from None
    print(_describe(result))
    return EXIT_OK


def _describe(result: Any) -> str:
    if hasattr(result, "summary"):
        return str(result.summary())
    return str(result)


def _cmd_run(args: argparse.Namespace, now: datetime) -> int:
    if (args.start is None) != (args.end is None):
        raise ConfigError("--start and --end go together")
    if args.start is not None and args.end <= args.start:
        raise ConfigError("--end must be after --start")
    from detector import pipeline
    from detector.notify.heartbeat import heartbeat_on_exit

    cfg = _load(args)
    if args.step is not None:
        cfg = _with_step(cfg, args.step)
    # Dead man's switch: from here on every run ends with a ping, the fail form if it failed.
    with heartbeat_on_exit(cfg.health, enabled=not args.dry_run) as outcome:
        report = pipeline.run_job(
            cfg,
            now=args.now or now,
            start=args.start,
            end=args.end,
            dry_run=args.dry_run,
            notify=args.notify,
            output=args.output,
            report_path=args.report,
            html_path=args.html,
            progress=sys.stderr.isatty(),
        )
        print(pipeline.console_summary(report))
        outcome.exit_code = EXIT_FAILURE if report.get("delivery_failed") else EXIT_OK
    return outcome.exit_code


def _with_step(cfg: Any, text: str) -> Any:
    """``cfg`` with ``detection.step`` from ``--step`` (a duration such as ``1h`` or ``30m``)."""
    from dataclasses import replace

    from detector.decide import parse_duration

    try:
        step = parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"--step: {exc}") from None
    return replace(cfg, detection={**cfg.detection, "step": step})


def _cmd_backfill(args: argparse.Namespace, now: datetime) -> int:
    from detector import pipeline

    cfg = _load(args)
    if args.end <= args.start:
        raise ConfigError("--end must be after --start")
    summary = pipeline.backfill(cfg, start=args.start, end=args.end, now=now)
    print(json.dumps(summary, indent=2, default=str))
    return EXIT_OK


def _demo_config(args: argparse.Namespace) -> Any:
    """The demo's config: ``--config``, ``$ACS_DETECTOR_CONFIG`` or ``config/detector.toml``
    when there is one; elsewhere (an install run outside the project) the built-in defaults
    with a file source on ``--out``: state in ``./.acs-detector``, models in ``./models``, no
    notification routes."""
    from detector.config import CONFIG_ENV, DEFAULT_CONFIG_PATH, config_from_dict

    if args.config or os.environ.get(CONFIG_ENV) or Path(DEFAULT_CONFIG_PATH).exists():
        return _load(args)
    log.info("no %s here: the demo runs with the built-in defaults", DEFAULT_CONFIG_PATH)
    return config_from_dict({"source": {"kind": "file", "path": str(args.out)}})


def _cmd_demo(args: argparse.Namespace, now: datetime) -> int:
    from detector import pipeline

    cfg = _demo_config(args)
    report = pipeline.demo(
        cfg,
        out=args.out,
        days=args.days,
        seed=args.seed,
        scenario=args.scenario,
        notify=args.notify,
    )
    print(pipeline.console_summary(report, verbose=True))
    return EXIT_FAILURE if report.get("delivery_failed") else EXIT_OK


def _cmd_evaluate(args: argparse.Namespace, now: datetime) -> int:
    from detector import pipeline

    cfg = _load(args) if args.config or Path("config/detector.toml").exists() else None
    result = pipeline.evaluate_dir(cfg, args.data)
    print(json.dumps(result.to_json(), indent=2) if args.json else result.to_table())
    return EXIT_OK


def _cmd_status(args: argparse.Namespace, now: datetime) -> int:
    from detector import pipeline

    print(pipeline.status_text(_load(args), now=now))
    return EXIT_OK


def _cmd_silence(args: argparse.Namespace, now: datetime) -> int:
    from detector import pipeline

    cfg = _load(args)
    if args.silence_command == "add":
        from detector.config import parse_duration

        try:
            duration = parse_duration(args.duration)
        except ValueError as exc:
            raise ConfigError(f"--for: {exc}") from None
        print(
            pipeline.add_silence(
                cfg,
                operation=args.operation,
                sdk_version=args.sdk_version,
                metric=args.metric,
                duration=duration,
                comment=args.comment,
                now=now,
            )
        )
    elif args.silence_command == "list":
        print(pipeline.list_silences(cfg, now=now))
    elif args.silence_command == "expire":
        print(pipeline.expire_silence(cfg, args.silence_id, now=now))
    else:
        raise ConfigError("silence: choose add, list or expire")
    return EXIT_OK


def _cmd_ack(args: argparse.Namespace, now: datetime) -> int:
    from detector import pipeline

    print(pipeline.acknowledge(_load(args), args.fingerprint, comment=args.comment, now=now))
    return EXIT_OK


def _cmd_report(args: argparse.Namespace, now: datetime) -> int:
    from detector import pipeline

    path = pipeline.write_report_html(_load(args), run_report=args.run, html=args.html)
    print(path)
    return EXIT_OK


def _cmd_notify(args: argparse.Namespace, now: datetime) -> int:
    import socket

    from detector.notify.probe import probe_routes, probe_text

    if args.notify_command != "test":
        raise ConfigError("notify: choose test")
    cfg = _load(args)
    results = probe_routes(cfg.routes, now=now, host=socket.gethostname(), route=args.route)
    print(probe_text(results))
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILURE


_HANDLERS = {
    "check-config": _cmd_check_config,
    "simulate": _cmd_simulate,
    "run": _cmd_run,
    "backfill": _cmd_backfill,
    "demo": _cmd_demo,
    "evaluate": _cmd_evaluate,
    "status": _cmd_status,
    "silence": _cmd_silence,
    "ack": _cmd_ack,
    "report": _cmd_report,
    "notify": _cmd_notify,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (never raises for expected failures)."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        print(f"{exc}\n(try: acs-detector --help)", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _setup_logging(args.log_level, args.log_format)
    now = datetime.now(UTC)
    try:
        return _HANDLERS[args.command](args, now)
    except (ConfigError, InputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LockHeldError as exc:
        print(f"skipped: {exc}", file=sys.stderr)
        return EXIT_SKIPPED
    except NotifyError as exc:
        print(f"error: delivery failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except DetectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
