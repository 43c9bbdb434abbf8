"""Command line: argv in, exit code out. The only place that turns errors into exit codes.

Exit codes (design §1.8): 0 ran (with or without anomalies), 1 runtime failure (source, store
or delivery), 2 bad config or usage, 75 skipped (another run holds the lock), 141 stdout
closed early by its reader. The clock is read here and passed down as ``now``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from detector import __version__
from detector.errors import (
    ConfigError,
    DetectorError,
    InputError,
    LockHeldError,
    NotifyError,
)
from detector.escape import for_terminal
from detector.logjson import JsonFormatter

__all__ = [
    "EXIT_CLOSED_PIPE",
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_SKIPPED",
    "EXIT_USAGE",
    "LOG_LEVELS",
    "main",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_SKIPPED = 75
EXIT_CLOSED_PIPE = 141

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

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass  # always the current sys.stderr


def _not_progress(record: logging.LogRecord) -> bool:
    """Drop a judged step's progress record from text logs: on a terminal the step printer
    shows it already, and piped stderr gets no line per step. JSON logs keep it."""
    data = getattr(record, "data", None)
    return not (isinstance(data, dict) and "steps" in data and "step" in data)


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
        handler.addFilter(_not_progress)
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


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("auto", "text", "json")
LOG_LEVEL_ENV = "ACS_DETECTOR_LOG_LEVEL"


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Help that keeps the examples' line breaks and shows each option's default when it has a
    real one (not the None/False/True of an unset value or a flag)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or default in (None, "")
            or isinstance(default, bool)
            or default is argparse.SUPPRESS
            or not action.option_strings
            or "default" in text
        ):
            return text
        return f"{text} (default: %(default)s)"


def _example(*lines: str) -> str:
    return "example:\n" + "\n".join(f"  {line}" for line in lines)


def _add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """--config, --log-level and --log-format, on the top parser and on every sub-command.

    On sub-commands their default is SUPPRESS: a value given after the sub-command overrides
    the top parser's, and leaving it out keeps whatever was given before (or the default).
    """
    env_level = os.environ.get(LOG_LEVEL_ENV, "info")
    parser.add_argument(
        "--config",
        default=None if top else argparse.SUPPRESS,
        help="config file (default: $ACS_DETECTOR_CONFIG or config/detector.toml)",
    )
    parser.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default=env_level if top else argparse.SUPPRESS,
        help=f"log verbosity (default: ${LOG_LEVEL_ENV} or info)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="auto" if top else argparse.SUPPRESS,
        help="log line format; auto is JSON under Azure Functions, text elsewhere (default: auto)",
    )


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and every sub-command parser under it, depth first."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to one parser
                found += _all_parsers(child)
    return found


def _command(parent: Any, name: str, help: str, *examples: str) -> _Parser:
    """A sub-command parser with its help as description and its examples as epilog."""
    return parent.add_parser(  # type: ignore[no-any-return]
        name,
        help=help,
        description=help,
        epilog=_example(*examples),
        formatter_class=_Formatter,
    )


def _add_run(sub: Any) -> None:
    """Add the ``run`` command to the sub-command parsers ``sub``."""
    run = _command(
        sub,
        "run",
        "run the job (scheduled window, or --start/--end)",
        "acs-detector run",
        "acs-detector run --start 2026-11-20T00:00:00Z --end 2026-11-21T00:00:00Z --no-notify",
    )
    run.add_argument("--start", type=_time, help="judge buckets from this time (ISO-8601 UTC)")
    run.add_argument("--end", type=_time, help="... up to this time (exclusive)")
    run.add_argument("--dry-run", action="store_true", help="write nothing, send nothing")
    run.add_argument("--json", action="store_true", help="print the run report as JSON")
    notify = run.add_mutually_exclusive_group()
    notify.add_argument(
        "--no-notify",
        dest="notify",
        action="store_false",
        default=True,
        help="update the alert state but send nothing",
    )
    notify.add_argument(
        "--notify", dest="notify", action="store_true", help="send to the routes (the default)"
    )
    run.add_argument("--output", type=Path, help="anomalies as JSON lines to this file")
    run.add_argument("--report", type=Path, help="run report (JSON) to this file")
    run.add_argument("--html", type=Path, help="HTML report with a chart per alert")
    run.add_argument(
        "--step", default=None, help="judge in steps of this, e.g. 30m (default: detection.step)"
    )
    run.add_argument("--now", type=_time, help=argparse.SUPPRESS)  # for replay and tests


def _add_backfill_demo(sub: Any) -> None:
    """Add ``backfill`` and ``demo`` to the sub-command parsers ``sub``."""
    bf = _command(
        sub,
        "backfill",
        "load history into the store (warms the baselines)",
        "acs-detector backfill --start 2026-11-01T00:00:00Z --end 2026-11-20T00:00:00Z",
    )
    bf.add_argument("--start", type=_time, required=True, help="load from this time (ISO-8601 UTC)")
    bf.add_argument(
        "--end", type=_time, required=True, help="... up to this time (ISO-8601 UTC, exclusive)"
    )
    bf.add_argument("--json", action="store_true", help="print the summary as JSON")

    demo = _command(
        sub,
        "demo",
        "simulate logs, run the job over them, show the result",
        "acs-detector demo",
        "acs-detector demo --scenario fleet_failure_spike --days 4",
    )
    demo.add_argument("--out", type=Path, default=Path("data/demo"), help="where to simulate")
    demo.add_argument("--days", type=int, default=9, help="days of logs to simulate")
    demo.add_argument("--seed", type=int, default=7, help="random seed (same seed, same logs)")
    demo.add_argument(
        "--scenario", default="default", help="incidents to inject (see: simulate --list)"
    )
    demo.add_argument(
        "--notify",
        action="store_true",
        help="send the demo's digest to the routes (every time: the demo keeps its own state)",
    )


def _add_simulate_evaluate(sub: Any) -> None:
    """Add ``simulate`` and ``evaluate`` to the sub-command parsers ``sub``."""
    sim = _command(
        sub,
        "simulate",
        "write simulated ACSCallClientOperations logs",
        "acs-detector simulate --list",
        "acs-detector simulate --out data/sim --days 7 --scenario default",
    )
    sim.add_argument("--out", type=Path, default=None, help="directory to write (required)")
    sim.add_argument("--days", type=int, default=7, help="days of logs to simulate")
    sim.add_argument("--seed", type=int, default=0, help="random seed (same seed, same logs)")
    sim.add_argument("--scenario", default="default", help="incidents to inject (see: --list)")
    sim.add_argument(
        "--format",
        dest="fmt",
        default="parquet",
        choices=("parquet", "jsonl", "csv", "diagnostic"),
        help="file format; diagnostic is the Azure diagnostic-settings JSON layout",
    )
    sim.add_argument(
        "--calls-per-hour",
        type=float,
        default=None,
        help="traffic level (default: the scenario's own)",
    )
    sim.add_argument(
        "--start", type=_time, default=None, help="first log time (default: --days before now)"
    )
    sim.add_argument("--list", action="store_true", help="list the scenarios and exit")

    ev = _command(
        sub,
        "evaluate",
        "precision/recall of the detector on simulated data",
        "acs-detector evaluate --data data/demo",
    )
    ev.add_argument("--data", type=Path, required=True, help="a directory written by simulate")
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ev.add_argument(
        "--ablate",
        choices=("forest",),
        default=None,
        help="evaluate twice, with and without this part, and print what it adds",
    )


def _add_inspect(sub: Any) -> None:
    """Add ``check-config``, ``status`` and ``explain`` to the sub-command parsers ``sub``."""
    _command(
        sub,
        "check-config",
        "validate the config and print it, secrets hidden",
        "acs-detector check-config --config config/detector.toml",
    )
    status = _command(
        sub,
        "status",
        "open alerts, silences, outbox, last run and watermark",
        "acs-detector status",
    )
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    status.add_argument(
        "--demo",
        action="store_true",
        help="the demo's own state (its alerts and outbox) instead of the job's",
    )

    ex = _command(
        sub,
        "explain",
        "why an operation alerted or not at a time, from the stored history",
        "acs-detector explain --operation Join --at 2026-11-20T14:00:00Z",
        "acs-detector explain --operation Join --version 1.40.1.0_stable --metric duration"
        " --at 2026-11-20T14:00:00Z --json",
    )
    ex.add_argument("--operation", required=True, help="operation name, e.g. Join")
    ex.add_argument(
        "--version",
        dest="sdk_version",
        default=None,
        help="SDK version, as shown by status (default: the operation across all versions)",
    )
    ex.add_argument(
        "--metric",
        default=None,
        choices=("duration", "failures", "volume"),
        help="only this metric (default: all three)",
    )
    ex.add_argument("--at", type=_time, required=True, help="the time to explain (ISO-8601 UTC)")
    ex.add_argument("--json", action="store_true", help="print JSON for scripts")


def _add_alert_commands(sub: Any) -> None:
    """Add ``silence`` and ``ack`` to the sub-command parsers ``sub``."""
    sil = _command(sub, "silence", "manage silences", "acs-detector silence list")
    sil_sub = sil.add_subparsers(dest="silence_command", metavar="ACTION", parser_class=_Parser)
    sa = _command(
        sil_sub,
        "add",
        "silence alerts matching operation/version/metric",
        "acs-detector silence add --operation Join --metric duration --for 4h --comment 'CDN fix'",
    )
    sa.add_argument("--operation", default=None, help="operation name, e.g. Join")
    sa.add_argument("--sdk-version", default=None, help="SDK version, as shown by status")
    sa.add_argument(
        "--metric",
        default=None,
        choices=("duration", "failure_rate", "volume"),
        help="only this metric (default: all)",
    )
    sa.add_argument("--for", dest="duration", default="2h", help="how long, e.g. 2h, 1d")
    sa.add_argument("--comment", default="", help="why, shown by status and silence list")
    sa.add_argument("--by", default=None, help="who silences, shown by status (default: you)")
    _command(sil_sub, "list", "list active silences", "acs-detector silence list")
    se = _command(sil_sub, "expire", "expire a silence", "acs-detector silence expire SILENCE_ID")
    se.add_argument("silence_id", help="the id shown by silence list")

    ack = _command(
        sub,
        "ack",
        "acknowledge a firing alert: muted until it resolves",
        "acs-detector ack 'Join|1.40.1.0_stable|duration' --comment 'known, rollout paused'",
    )
    ack.add_argument("fingerprint", help="operation|sdk_version|metric, as shown by status")
    ack.add_argument("--comment", default="", help="why, shown by status")
    ack.add_argument(
        "--by", default=None, help="who acknowledges, shown by status (default: your login name)"
    )


def _add_tools(sub: Any) -> None:
    """Add ``notify`` and ``report`` to the sub-command parsers ``sub``."""
    nt = _command(sub, "notify", "notification tools (test the routes)", "acs-detector notify test")
    nt_sub = nt.add_subparsers(dest="notify_command", metavar="ACTION", parser_class=_Parser)
    nt_test = _command(
        nt_sub,
        "test",
        "send a marked test message to every target; exit 1 if one fails",
        "acs-detector notify test --route oncall",
    )
    nt_test.add_argument("--route", default=None, help="test this route only (by name)")

    rep = _command(
        sub,
        "report",
        "write the HTML report of a run",
        "acs-detector report --html report.html",
    )
    rep.add_argument("--run", type=Path, default=None, help="run report JSON (default: latest)")
    rep.add_argument("--html", type=Path, required=True, help="HTML file to write")


def _build_parser() -> _Parser:
    p = _Parser(
        prog="acs-detector",
        description="Anomaly detection and alerting for ACS call client operations.",
        formatter_class=_Formatter,
        epilog=_example(
            "acs-detector demo",
            "acs-detector run --config config/detector.toml",
            "acs-detector status",
        ),
    )
    p.add_argument("--version", action="version", version=f"acs-detector {__version__}")
    _add_global_options(p, top=True)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_run(sub)
    _add_backfill_demo(sub)
    _add_simulate_evaluate(sub)
    _add_inspect(sub)
    _add_alert_commands(sub)
    _add_tools(sub)
    for child in _all_parsers(p)[1:]:
        _add_global_options(child, top=False)
    return p


# --------------------------------------------------------------------------------------------
# Command handlers. Heavy modules are imported inside them so `--help` stays fast.
# --------------------------------------------------------------------------------------------


def _load(args: argparse.Namespace) -> Any:
    from detector.config import load_config

    return load_config(args.config)


def _cmd_check_config(args: argparse.Namespace, now: datetime) -> int:
    from detector.config import describe

    cfg = _load(args)
    settings = dict(describe(cfg))  # every setting, effective value, secrets hidden
    print(
        json.dumps(
            {"config": str(cfg.path), "effective": cfg.redacted(), "settings": settings}, indent=2
        )
    )
    print("config OK", file=sys.stderr)
    return EXIT_OK


def _cmd_simulate(args: argparse.Namespace, now: datetime) -> int:
    from detector import simulate as sim

    if args.list:
        for name, scenario in sim.SCENARIOS.items():
            print(f"{name:24} {getattr(scenario, 'description', scenario)}")
        return EXIT_OK
    if args.out is None:
        raise ConfigError("simulate: --out is required (or --list to see the scenarios)")
    if args.scenario not in sim.SCENARIOS:
        raise ConfigError(
            f"--scenario: unknown scenario {args.scenario!r}; "
            f"choose from {', '.join(sim.SCENARIOS)}"
        )
    if args.days < 1:
        raise ConfigError("--days: must be at least 1")
    try:
        spec = sim.SimSpec(
            days=args.days,
            seed=args.seed,
            scenario=args.scenario,
            start=args.start,
            calls_per_hour=args.calls_per_hour,
        )
        result = sim.simulate(args.out, spec, fmt=args.fmt)
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
    from detector.summary import console_summary

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
            files=pipeline.RunFiles(
                output=args.output, report_path=args.report, html_path=args.html
            ),
            progress=sys.stderr.isatty(),
        )
        outcome.exit_code = EXIT_FAILURE if report.get("delivery_failed") else EXIT_OK
    # Printed after the heartbeat: a reader that closes the pipe early is not a failed run.
    print(_json(report) if args.json else console_summary(report))
    return outcome.exit_code


def _with_step(cfg: Any, text: str) -> Any:
    """``cfg`` with ``detection.step`` from ``--step`` (a duration such as ``1h`` or ``30m``)."""
    from dataclasses import replace

    from detector.detect.decide import parse_duration

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
    summary = pipeline.backfill(
        cfg, start=args.start, end=args.end, now=now, progress=_terminal_progress()
    )
    print(_json(summary) if args.json else _backfill_text(summary))
    return EXIT_OK


def _backfill_text(summary: dict[str, Any]) -> str:
    """``backfill``'s summary for a person, in the words of ``run``'s."""
    start, end = summary.get("arrival_window") or ("?", "?")
    lines = [
        f"backfilled {start} .. {end}: read {summary.get('rows_read', 0):,} rows ->"
        f" {summary.get('operations', 0):,} operations in {summary.get('buckets', 0):,} buckets"
        f" over {summary.get('partitions', 0):,} partitions"
    ]
    for label, key in (("dropped", "dropped"), ("flagged (kept)", "flagged")):
        if summary.get(key):
            lines.append(f"  {label}: " + ", ".join(f"{k} {v:,}" for k, v in summary[key].items()))
    return "\n".join(lines)


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, default=str)


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
    from detector.summary import console_summary

    cfg = _demo_state(_demo_config(args), reset=True)
    report = pipeline.demo(
        cfg,
        out=args.out,
        days=args.days,
        seed=args.seed,
        scenario=args.scenario,
        notify=args.notify,
        progress=sys.stderr.isatty(),
    )
    print(console_summary(report, verbose=True))
    if args.notify:
        print(_digest_text(report, has_routes=bool(cfg.routes)))
    return EXIT_FAILURE if report.get("delivery_failed") else EXIT_OK


#: Where the demo keeps its state, under the configured state path.
DEMO_STATE = "demo"


def _demo_state(cfg: Any, *, reset: bool) -> Any:
    """``cfg`` with the demo's own local state: ``<state.path>/demo``, never a Blob store.

    ``reset`` empties it first, so every demo starts from nothing: alerts a previous demo left
    firing would otherwise suppress this one's digest as duplicates, and its engine state
    would change what this one finds.
    """
    import shutil
    from dataclasses import replace

    path = (cfg.state_path / DEMO_STATE).resolve()
    if reset and path.is_dir():
        shutil.rmtree(path)
    return replace(cfg, state={**cfg.state, "url": None, "path": str(path)})


def _digest_text(report: dict[str, Any], *, has_routes: bool) -> str:
    """Where ``demo --notify`` sent its digest, or why it sent nothing."""
    alerts = report.get("alerts") or {}
    sent, waiting = len(alerts.get("sent") or []), len(alerts.get("failed") or [])
    lost = len(alerts.get("undeliverable") or [])
    if not has_routes:
        return (
            "digest: not sent: the config has no [[notify.route]] (see the README, Try it locally)"
        )
    lines = []
    if alerts.get("by_target"):
        lines.append(
            f"digest: {sent} message(s) delivered, {waiting} waiting in the outbox,"
            f" {lost} undeliverable (per target above)"
        )
    for u in alerts.get("unrouted") or []:
        lines.append(
            f"digest: route {u['route']} has no URL (its ${{VAR:-}} is unset): nothing sent there"
        )
    if not lines:
        lines.append("digest: nothing to send (no alerts in the demo's window)")
    if waiting:
        lines.append("  the outbox: acs-detector status --demo")
    return for_terminal("\n".join(lines))


def _cmd_evaluate(args: argparse.Namespace, now: datetime) -> int:
    from detector import pipeline

    cfg = _load(args) if args.config or Path("config/detector.toml").exists() else None
    result = pipeline.evaluate_dir(
        cfg, args.data, ablate=args.ablate, progress=_terminal_progress()
    )
    print(json.dumps(result.to_json(), indent=2) if args.json else result.to_table())
    return EXIT_OK


def _terminal_progress() -> Callable[[str], None] | None:
    """A progress line printer on stderr when it is a terminal; None when it is piped."""
    if not sys.stderr.isatty():
        return None

    def say(msg: str) -> None:
        print(f"  {msg}", file=sys.stderr, flush=True)

    return say


def _cmd_status(args: argparse.Namespace, now: datetime) -> int:
    from detector import pipeline
    from detector.notify.commands import status_data, status_text
    from detector.store.buckets import BucketStore

    cfg = _load(args)
    if args.demo:
        cfg = _demo_state(cfg, reset=False)
    backend = pipeline.open_backend(cfg)
    watermark = BucketStore(backend).watermark
    judged = _judged_until(backend, pipeline.PIPELINE_KEY)
    if args.json:
        print(_json(status_data(backend, now, watermark=watermark, judged_until=judged)))
    else:
        print(status_text(backend, now, watermark=watermark, judged_until=judged))
    return EXIT_OK


def _judged_until(backend: Any, key: str) -> str | None:
    """How far scheduled runs have judged (the pipeline state's ``judged_until``), or None."""
    found = backend.read(key)
    try:
        value = json.loads(found[0]).get("judged_until") if found else None
    except (ValueError, AttributeError):
        log.warning("%s is unreadable: judged_until unknown", key)
        return None
    return str(value) if value else None


def _cmd_explain(args: argparse.Namespace, now: datetime) -> int:
    from detector import pipeline
    from detector.detect import explain
    from detector.detect.engine import StepContext
    from detector.explain_text import explanation_json, explanation_text
    from detector.store.alerts import AlertStore
    from detector.store.buckets import BucketStore
    from detector.store.engine_state import load_engine_state

    cfg = _load(args)
    backend = pipeline.open_backend(cfg)
    alerts = AlertStore(backend)
    found = explain.explain(
        _stored_or_read(cfg, BucketStore(backend)),
        question=explain.Question(args.operation, args.sdk_version, args.at, args.metric),
        policy=pipeline.detection_policy(cfg),
        step=cfg.detection["step"],
        context=StepContext(
            delay=cfg.detection["delay"],
            maintenance=[(w.start, w.end, w.operation_name) for w in cfg.maintenance],
        ),
        engine_state=load_engine_state(backend)[0],
        alerts=explain.Bookkeeping(alerts.load_state(), alerts.silences(), alerts.acks(), now),
    )
    print(_json(explanation_json(found)) if args.json else explanation_text(found))
    return EXIT_OK


def _stored_or_read(cfg: Any, store: Any) -> Any:
    """``history(start, end)`` for ``explain``: the bucket store, or the configured source
    when the store holds nothing then (a ``demo`` or a manual rerun judges what it reads and
    leaves the store empty)."""
    from detector.source.base import open_source

    def history(start: datetime, end: datetime) -> Any:
        stored = store.load(start, end)
        if len(stored.stats):
            return stored
        log.info("the store holds nothing for %s .. %s: reading the source", start, end)
        window = (start, end + cfg.detection["lateness"])
        return open_source(cfg).read(window, cfg.detection["bucket"])

    return history


def _cmd_silence(args: argparse.Namespace, now: datetime) -> int:
    from detector import pipeline

    cfg = _load(args)
    if args.silence_command == "add":
        from detector.config import parse_duration

        try:
            duration = parse_duration(args.duration)
        except ValueError as exc:
            raise ConfigError(f"--for: {exc}") from None
        print(_add_silence(cfg, args, duration, now))
    elif args.silence_command == "list":
        print(pipeline.list_silences(cfg, now=now))
    elif args.silence_command == "expire":
        print(pipeline.expire_silence(cfg, args.silence_id, now=now))
    else:
        raise ConfigError("silence: choose add, list or expire")
    return EXIT_OK


def _add_silence(cfg: Any, args: argparse.Namespace, duration: Any, now: datetime) -> str:
    """``silence add``: the new silence, one line, with who added it."""
    from detector import pipeline
    from detector.notify.commands import add_silence, silences_text

    matcher = {
        k: v
        for k, v in (
            ("operation", args.operation),
            ("sdk_version", args.sdk_version),
            ("metric", args.metric),
        )
        if v
    }
    if not matcher:
        raise ConfigError("silence add: give at least one of --operation, --sdk-version, --metric")
    backend = pipeline.open_backend(cfg)
    by = args.by or _login()
    silence = add_silence(backend, matcher, now + duration, args.comment, now, created_by=by)
    return silences_text([silence], now)


def _cmd_ack(args: argparse.Namespace, now: datetime) -> int:
    from detector import pipeline
    from detector.notify.commands import ack

    backend = pipeline.open_backend(_load(args))
    done = ack(backend, args.fingerprint, now, by=args.by or _login(), comment=args.comment)
    print(
        for_terminal(
            f"acknowledged {done.fingerprint} by {done.by or 'someone'}: muted until it resolves"
        )
    )
    return EXIT_OK


def _login() -> str:
    """Who runs the command: the login name, or "" where there is none (a container)."""
    import getpass

    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no $USER/$LOGNAME and no passwd entry
        return ""


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
    "explain": _cmd_explain,
    "silence": _cmd_silence,
    "ack": _cmd_ack,
    "report": _cmd_report,
    "notify": _cmd_notify,
}


def _reader_went_away() -> int:
    """Exit code for stdout closed early (``status | head -1``): no traceback, no message.

    Python would flush stdout again at exit and print "Exception ignored ... BrokenPipeError",
    so stdout is pointed at /dev/null first. 141 is what a shell reports for any filter
    stopped this way (128 + SIGPIPE).
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (an embedding host): nothing to do
        pass
    return EXIT_CLOSED_PIPE


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
    if args.log_level not in LOG_LEVELS:  # from $ACS_DETECTOR_LOG_LEVEL: argparse checks flags only
        print(
            f"acs-detector: ${LOG_LEVEL_ENV}: invalid choice {args.log_level!r}"
            f" (choose from {', '.join(LOG_LEVELS)})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    _setup_logging(args.log_level, args.log_format)
    now = datetime.now(UTC)
    try:
        code = _HANDLERS[args.command](args, now)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below, not at exit
        return code
    except BrokenPipeError:
        return _reader_went_away()
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
