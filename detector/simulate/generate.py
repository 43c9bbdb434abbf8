"""The simulation loop: scenario plan -> hour by hour legs -> rows -> writer.

Side effects: writes the data set, ``incidents.json``, ``maintenance.json`` (when the scenario
has maintenance windows) and ``simulation.json`` (what was simulated, for humans and
``evaluate``) under the output directory.

Memory stays bounded: one hour of legs at a time, split in parts of at most
``params.max_legs_per_chunk`` legs; Parquet row groups are flushed every ~64k rows.
Determinism: the scenario draws from ``default_rng([seed, 0x5CE7A])``, each block of hours
from ``default_rng([seed, block_index])``, so a seed (with the start and params) fixes every
byte.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .calls import OpTable, expand_legs
from .frame import PayloadCache, resource_id, rows_to_table
from .params import DEFAULT_START_ISO, SimParams, check_params
from .population import Population
from .scenarios import (
    SCENARIOS,
    Incident,
    MaintenanceWindow,
    format_time,
    maintenance_to_dict,
    parse_time,
    plan_scenario,
    surge_function,
    warmup_end,
)
from .writer import DIAGNOSTIC_CONTAINER, FORMATS, make_writer

__all__ = ["SimulationResult", "simulate"]

_H = 3_600_000


@dataclass(frozen=True)
class SimulationResult:
    """What :func:`simulate` wrote.

    ``files`` are the data files (one for parquet/jsonl/csv; the hourly blobs for diagnostic);
    ``rows`` counts every written row (duplicates included); ``legs`` counts call legs.
    """

    out_dir: Path
    fmt: str
    scenario: str
    seed: int
    start: datetime
    end: datetime
    warmup_end: datetime
    rows: int
    legs: int
    files: list[Path]
    incidents_path: Path
    maintenance_path: Path | None
    incidents: list[Incident] = field(default_factory=list)
    maintenance: list[MaintenanceWindow] = field(default_factory=list)

    @property
    def data_path(self) -> Path:
        """What to give a file source: the data file, or the diagnostic container directory."""
        if self.fmt == "diagnostic":
            return self.out_dir / DIAGNOSTIC_CONTAINER
        return self.files[0]

    def summary(self) -> str:
        """A few human-readable lines: what was written, the period, the labels."""
        lines = [
            f"wrote {self.rows:,} rows ({self.legs:,} call legs) to {self.data_path}",
            f"period {format_time(_ms(self.start))} .. {format_time(_ms(self.end))}, "
            f"scenario {self.scenario!r}, seed {self.seed}, "
            f"clean warm-up until {format_time(_ms(self.warmup_end))}",
            f"{len(self.incidents)} labelled incident(s) in {self.incidents_path}"
            + (":" if self.incidents else " (hard negative: nothing should alert)"),
        ]
        for i in self.incidents:
            lines.append(
                f"  {i.operation_name} {i.sdk_version or '(all versions)'} {i.metric} "
                f"{format_time(_ms(i.start))} .. {format_time(_ms(i.end))}  {i.effect}"
            )
        if self.maintenance_path is not None:
            lines.append(
                f"{len(self.maintenance)} maintenance window(s) in {self.maintenance_path}"
            )
        return "\n".join(lines)


def _ms(dt: datetime) -> int:
    return int(round(dt.timestamp() * 1000))


def _start_ms(start: datetime | None) -> int:
    dt = parse_time(DEFAULT_START_ISO) if start is None else start
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(round(dt.timestamp() * 1000))


def simulate(
    out_dir: Path,
    *,
    days: int,
    seed: int,
    scenario: str = "default",
    fmt: str = "parquet",
    start: datetime | None = None,
    calls_per_hour: float | None = None,
    progress: Callable[[int], None] | None = None,
    params: SimParams | None = None,
) -> SimulationResult:
    """Simulate ``days`` of ``ACSCallClientOperations`` rows with labelled incidents.

    Parameters
    ----------
    out_dir
        Output directory (created). Existing outputs of the same names are replaced.
    days
        Length of the simulated period, >= 1. Incidents start after a clean warm-up of
        ``min(params.warmup_days, days / 2)`` days (3 days by default).
    seed
        Seed of every random draw; the same seed, start and params give identical output.
    scenario
        A key of :data:`SCENARIOS`.
    fmt
        ``parquet``, ``jsonl``, ``csv`` or ``diagnostic`` (see :mod:`detector.simulate.writer`).
    start
        First instant (UTC; naive is taken as UTC). Default: 2026-11-02T00:00:00Z, a Monday.
    calls_per_hour
        Call legs per hour averaged over a week (~20 rows each); overrides
        ``params.calls_per_hour`` (default 100, ~340k rows for 7 days; ~2960 gives 10M).
    progress
        Called after each written part with the number of rows written so far.
    params
        All other knobs (:class:`SimParams`); default ``SimParams()``.

    Returns
    -------
    SimulationResult
        Paths, counts, the data range and the labels written.

    Raises
    ------
    ValueError
        Unknown scenario or format, ``days < 1``, ``calls_per_hour < 0``, or params that
        :func:`~detector.simulate.params.check_params` rejects (all problems in one message).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    p = params or SimParams()
    if calls_per_hour is not None:
        if calls_per_hour < 0:
            raise ValueError(f"calls_per_hour must be >= 0, got {calls_per_hour}")
        p = replace(p, calls_per_hour=float(calls_per_hour))
    problems = check_params(p)
    if problems:
        raise ValueError("invalid simulator params: " + "; ".join(problems))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "diagnostic":
        # The writer appends to hourly blobs: start from an empty container.
        shutil.rmtree(out / DIAGNOSTIC_CONTAINER, ignore_errors=True)
    start_ms = _start_ms(start)
    end_ms = start_ms + days * 24 * _H
    plan = plan_scenario(scenario, start_ms, end_ms, p, seed)
    day_rng = np.random.default_rng([seed, 0xDA7])
    day_level = np.exp(day_rng.normal(0.0, p.daily_jitter, days + 1))
    pop = Population(p, start_ms, plan.rollout_ms, surge_function(plan.effects), day_level)
    table = OpTable(p, plan.effects)
    payloads = PayloadCache(pop, table)
    rid = resource_id(p)
    writer = make_writer(fmt, out, rid)

    rows = legs_total = 0
    try:
        # Legs that start in the last minutes before the start still write rows inside it;
        # begin one hour early so the first hour is not thinner than the rest. Several hours
        # are drawn at once when the volume is small (fixed cost per part), one at a time
        # when it is large (bounded memory).
        block = _block_hours(p)
        first, last = -1, days * 24
        for index, h in enumerate(range(first, last, block)):
            hours = min(block, last - h)
            rng = np.random.default_rng([seed, index])
            for legs in pop.legs_for_block(rng, start_ms + h * _H, hours):
                legs_total += int((legs.t0 >= start_ms).sum())
                r = expand_legs(rng, legs, pop, table, plan.effects)
                t = rows_to_table(rng, r, legs, pop, table, payloads, end_ms)
                if t.num_rows:
                    writer.write(t)
                    rows += t.num_rows
                    if progress is not None:
                        progress(rows)
    finally:
        files = writer.close()

    start_dt = datetime.fromtimestamp(start_ms / 1000, tz=UTC)
    end_dt = datetime.fromtimestamp(end_ms / 1000, tz=UTC)
    incidents_path = out / "incidents.json"
    incidents_path.write_text(
        json.dumps([i.to_dict() for i in plan.incidents], indent=2) + "\n", encoding="utf-8"
    )
    maintenance_path: Path | None = out / "maintenance.json"
    assert maintenance_path is not None
    if plan.maintenance:
        maintenance_path.write_text(
            json.dumps([maintenance_to_dict(m) for m in plan.maintenance], indent=2) + "\n",
            encoding="utf-8",
        )
    else:
        maintenance_path.unlink(missing_ok=True)
        maintenance_path = None
    wu = warmup_end(start_ms, end_ms, p)
    manifest = {
        "scenario": scenario,
        "description": SCENARIOS[scenario].description,
        "hard_negative": SCENARIOS[scenario].hard_negative,
        "seed": seed,
        "format": fmt,
        "start": format_time(start_ms),
        "end": format_time(end_ms),
        "warmup_end": format_time(wu),
        "rollout": {"sdk_version": _new_version(p), "start": format_time(plan.rollout_ms)},
        "rare_sdk_version": p.rare_version.sdk_version,
        "calls_per_hour": p.calls_per_hour,
        "rows": rows,
        "legs": legs_total,
        "data": [str(f.relative_to(out)) for f in files[:1]]
        if fmt != "diagnostic"
        else [DIAGNOSTIC_CONTAINER],
        "incidents": len(plan.incidents),
        "effects": [
            {
                "kind": e.kind,
                "operation_name": e.operation_name,
                "sdk_version": e.sdk_version,
                "start": format_time(e.start_ms),
                "end": format_time(e.end_ms),
                "magnitude": e.magnitude,
                "ramp": e.ramp,
            }
            for e in plan.effects
        ],
    }
    (out / "simulation.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return SimulationResult(
        out_dir=out,
        fmt=fmt,
        scenario=scenario,
        seed=seed,
        start=start_dt,
        end=end_dt,
        warmup_end=datetime.fromtimestamp(wu / 1000, tz=UTC),
        rows=rows,
        legs=legs_total,
        files=files,
        incidents_path=incidents_path,
        maintenance_path=maintenance_path,
        incidents=list(plan.incidents),
        maintenance=list(plan.maintenance),
    )


def _block_hours(p: SimParams) -> int:
    """Hours drawn at once: about half a part's worth of legs at the weekly peak, 1 to 24."""
    peak = max(p.calls_per_hour, 1e-9) * 3.0
    return int(min(24, max(1, p.max_legs_per_chunk // 2 / peak)))


def _new_version(p: SimParams) -> str | None:
    for v in p.versions:
        if v.release_h is None and "beta" not in v.sdk_version:
            return v.sdk_version
    return None
