"""Holdout detection quality: acs-detector vs three simple peers on an independent generator.

Usage::

    .venv/bin/python benchmarks/bench_holdout.py [--seeds 1,2,3] [--scenarios a,b]
        [--data /tmp/acs-holdout] [--days 7] [--calls-per-hour 80] [--step 6h]
        [--details] [--json out.json]

The built-in simulator (``detector/simulate``, judged by ``benchmarks/bench_quality.py``) was
written together with the engine; this benchmark judges the engine on data from
``benchmarks/holdout_sim.py``, a generator written separately with different shapes (see its
docstring): another operation mix, a two-peak weekday curve and a real weekend, overdispersed
arrivals, heavy-tailed durations, failures correlated within calls, staggered rollouts, late
rows and malformed rows.

For each scenario and seed the data set is generated under ``--data`` (cached; regenerated when
missing or generated with other settings or an older generator), then judged exactly as
``bench_quality.py`` judges its own data sets (its ``run_one``: the engine replayed in windows of
``--step`` with the default :class:`~detector.detect.decide.DetectionPolicy`, and the peers
``static``, ``median_mad`` and ``iforest_raw`` on the same buckets, all scored with
``detector.evaluate.score_events``). Prints one table (micro-averaged over seeds per scenario)
and bench_quality's summary lines; ``--details`` adds one line per acs-detector incident missed
or alerted late (> 6 buckets) and per false alert.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import holdout_sim  # noqa: E402
from bench_quality import judge, parser, policy_from, report  # noqa: E402

from detector.detect.decide import parse_duration  # noqa: E402

LATE_BUCKETS = 6


def ensure_dataset(data: Path, scenario: str, seed: int, days: int, calls_per_hour: float) -> Path:
    """Return the directory of one holdout data set, generating it when needed.

    Consumes the cache root ``data`` and the generation settings; produces
    ``data/<scenario>_d<days>_s<seed>`` holding ``operations.parquet``, ``incidents.json`` and
    ``simulation.json``. An existing directory is reused only when its ``simulation.json``
    records the same scenario, seed, days, calls per hour and generator version.
    """
    d = data / f"{scenario}_d{days}_s{seed}"
    manifest = d / "simulation.json"
    want = {
        "scenario": scenario,
        "seed": seed,
        "days": days,
        "calls_per_hour": calls_per_hour,
        "generator_version": holdout_sim.GENERATOR_VERSION,
    }
    fresh = False
    if (
        manifest.exists()
        and (d / "incidents.json").exists()
        and (d / "operations.parquet").exists()
    ):
        got = json.loads(manifest.read_text())
        fresh = all(got.get(k) == v for k, v in want.items())
    if not fresh:
        holdout_sim.generate(
            d, scenario=scenario, seed=seed, days=days, calls_per_hour=calls_per_hour
        )
    return d


def details(rows: list[dict[str, Any]], late: int = LATE_BUCKETS) -> list[str]:
    """One line per missed or late (> ``late`` buckets) incident and per false alert.

    Consumes the per-run rows of ``bench_quality.run_one``; uses only the acs-detector rows
    (their ``per_incident`` and ``false_alerts`` entries from ``score_events``).
    """
    out = []
    for r in rows:
        if r["detector"] != "acs-detector":
            continue
        for inc in r["per_incident"]:
            delay = inc["delay_buckets"]
            if delay is not None and delay <= late:
                continue
            what = "MISSED" if delay is None else f"LATE {delay:.0f} buckets"
            vol = inc["volume_per_hour"]
            out.append(
                f"{r['dataset']}: {what}: {inc['operation_name']}|{inc['sdk_version'] or '*'}|"
                f"{inc['metric']} from {inc['start']} "
                f"({'-' if vol is None else f'{vol:.0f}'} ops/h in the partition)"
            )
        for fa in r["false_alerts"]:
            out.append(f"{r['dataset']}: FALSE ALERT: {fa}")
    return out


def main(argv: list[str] | None = None) -> int:
    """Generate (or reuse) the data sets, judge every scenario x seed, print the table."""
    ap = parser(
        __doc__, scenarios=holdout_sim.SCENARIOS, data="/tmp/acs-holdout", calls_per_hour=80.0
    )
    ap.add_argument("--details", action="store_true", help="list misses, late and false alerts")
    args = ap.parse_args(argv)
    unknown = [s for s in args.scenarios.split(",") if s not in holdout_sim.SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {unknown}; choose from {', '.join(holdout_sim.SCENARIOS)}")
    datasets = (
        (ensure_dataset(Path(args.data), scen, seed, args.days, args.calls_per_hour), seed)
        for scen in args.scenarios.split(",")
        for seed in (int(s) for s in args.seeds.split(","))
    )
    rows = judge(datasets, parse_duration(args.step), policy_from(args.set))
    extra = (
        (details(rows) or ["no missed, late or false acs-detector alerts"]) if args.details else []
    )
    report(rows, json_path=args.json, extra=extra)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
