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
from typing import Any, NamedTuple

import numpy as np

from .calls import OpTable, expand_legs
from .frame import PayloadCache, resource_id, rows_to_table
from .params import DEFAULT_START_ISO, SimParams, check_params
from .population import Population
from .scenarios import (
    SCENARIOS,
    Incident,
    MaintenanceWindow,
    ScenarioPlan,
    format_time,
    maintenance_to_dict,
    parse_time,
    plan_scenario,
    surge_function,
    warmup_end,
)
from .writer import DIAGNOSTIC_CONTAINER, FORMATS, make_writer

__all__ = ["SimSpec", "SimulationResult", "simulate"]

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


@dataclass(frozen=True, kw_only=True)
class SimSpec:
    """What to simulate; the same spec gives the same rows.

    ``days``: length of the simulated period, >= 1; incidents start after a clean warm-up of
    ``min(params.warmup_days, days / 2)`` days (3 days by default). ``seed``: seed of every
    random draw. ``scenario``: a key of :data:`SCENARIOS`. ``start``: first instant (UTC;
    naive is taken as UTC); default 2026-11-02T00:00:00Z, a Monday. ``calls_per_hour``: call
    legs per hour averaged over a week (~20 rows each); overrides ``params.calls_per_hour``
    (default 100, ~340k rows for 7 days; ~2960 gives 10M). ``params``: all other knobs
    (:class:`SimParams`); default ``SimParams()``.
    """

    days: int
    seed: int
    scenario: str = "default"
    start: datetime | None = None
    calls_per_hour: float | None = None
    params: SimParams | None = None


def simulate(
    out_dir: Path,
    spec: SimSpec,
    *,
    fmt: str = "parquet",
    progress: Callable[[int], None] | None = None,
) -> SimulationResult:
    """Simulate ``spec.days`` of ``ACSCallClientOperations`` rows with labelled incidents.

    Parameters
    ----------
    out_dir
        Output directory (created). Existing outputs of the same names are replaced.
    spec
        The period, scenario, seed, traffic and knobs (:class:`SimSpec`).
    fmt
        ``parquet``, ``jsonl``, ``csv`` or ``diagnostic`` (see :mod:`detector.simulate.writer`).
    progress
        Called after each written part with the number of rows written so far.

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
    p = _checked_params(fmt, spec)
    scenario, seed, days = spec.scenario, spec.seed, spec.days
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "diagnostic":
        # The writer appends to hourly blobs: start from an empty container.
        shutil.rmtree(out / DIAGNOSTIC_CONTAINER, ignore_errors=True)
    start_ms = _start_ms(spec.start)
    run = _Run(out, fmt, scenario, seed, days, p, start_ms, start_ms + days * 24 * _H)
    world = _build_world(run)
    written = _write_data(run, world, progress)
    incidents_path, maintenance_path = _write_labels(out, world.plan)
    wu = warmup_end(run.start_ms, run.end_ms, p)
    manifest = _manifest(run, world.plan, wu, written)
    (out / "simulation.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return SimulationResult(
        out_dir=out,
        fmt=fmt,
        scenario=scenario,
        seed=seed,
        start=datetime.fromtimestamp(run.start_ms / 1000, tz=UTC),
        end=datetime.fromtimestamp(run.end_ms / 1000, tz=UTC),
        warmup_end=datetime.fromtimestamp(wu / 1000, tz=UTC),
        rows=written.rows,
        legs=written.legs,
        files=written.files,
        incidents_path=incidents_path,
        maintenance_path=maintenance_path,
        incidents=list(world.plan.incidents),
        maintenance=list(world.plan.maintenance),
    )


@dataclass(frozen=True)
class _Run:
    """One simulation's checked inputs: where, what, which seed and which period."""

    out: Path
    fmt: str
    scenario: str
    seed: int
    days: int
    p: SimParams
    start_ms: int
    end_ms: int


class _World(NamedTuple):
    """What the scenario decided and the population and tables the rows are drawn from."""

    plan: ScenarioPlan
    pop: Population
    table: OpTable
    payloads: PayloadCache


class _Written(NamedTuple):
    """What the data writer wrote: rows (duplicates included), call legs and files."""

    rows: int
    legs: int
    files: list[Path]


def _checked_params(fmt: str, spec: SimSpec) -> SimParams:
    """Format and spec of :func:`simulate` -> the params to simulate with; ValueError if
    invalid."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if spec.scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {spec.scenario!r}; choose from {', '.join(SCENARIOS)}")
    if spec.days < 1:
        raise ValueError(f"days must be >= 1, got {spec.days}")
    p = spec.params or SimParams()
    calls_per_hour = spec.calls_per_hour
    if calls_per_hour is not None:
        if calls_per_hour < 0:
            raise ValueError(f"calls_per_hour must be >= 0, got {calls_per_hour}")
        p = replace(p, calls_per_hour=float(calls_per_hour))
    problems = check_params(p)
    if problems:
        raise ValueError("invalid simulator params: " + "; ".join(problems))
    return p


def _build_world(run: _Run) -> _World:
    """Run -> scenario plan, population (with daily jitter), operation table, payload cache."""
    p = run.p
    # Draw order is fixed (scenario, then daily levels): it decides every simulated byte.
    plan = plan_scenario(run.scenario, run.start_ms, run.end_ms, p, run.seed)
    day_rng = np.random.default_rng([run.seed, 0xDA7])
    day_level = np.exp(day_rng.normal(0.0, p.daily_jitter, run.days + 1))
    pop = Population(p, run.start_ms, plan.rollout_ms, surge_function(plan.effects), day_level)
    table = OpTable(p, plan.effects)
    return _World(plan, pop, table, PayloadCache(pop, table))


def _write_data(run: _Run, world: _World, progress: Callable[[int], None] | None) -> _Written:
    """Run and world -> the data files, block of hours by block, and what was written."""
    p = run.p
    writer = make_writer(run.fmt, run.out, resource_id(p))
    rows = legs_total = 0
    try:
        # Legs that start in the last minutes before the start still write rows inside it;
        # begin one hour early so the first hour is not thinner than the rest. Several hours
        # are drawn at once when the volume is small (fixed cost per part), one at a time
        # when it is large (bounded memory).
        block = _block_hours(p)
        first, last = -1, run.days * 24
        for index, h in enumerate(range(first, last, block)):
            hours = min(block, last - h)
            rng = np.random.default_rng([run.seed, index])
            for legs in world.pop.legs_for_block(rng, run.start_ms + h * _H, hours):
                legs_total += int((legs.t0 >= run.start_ms).sum())
                r = expand_legs(rng, legs, world.pop, world.table, world.plan.effects)
                t = rows_to_table(rng, r, legs, world.pop, world.table, world.payloads, run.end_ms)
                if t.num_rows:
                    writer.write(t)
                    rows += t.num_rows
                    if progress is not None:
                        progress(rows)
    finally:
        files = writer.close()
    return _Written(rows, legs_total, files)


def _write_labels(out: Path, plan: ScenarioPlan) -> tuple[Path, Path | None]:
    """Plan -> incidents.json and maintenance.json (removed when none); their paths."""
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
    return incidents_path, maintenance_path


def _manifest(run: _Run, plan: ScenarioPlan, wu: int, written: _Written) -> dict[str, Any]:
    """Run, plan, warm-up end and what was written -> the simulation.json content."""
    p, fmt = run.p, run.fmt
    return {
        "scenario": run.scenario,
        "description": SCENARIOS[run.scenario].description,
        "hard_negative": SCENARIOS[run.scenario].hard_negative,
        "seed": run.seed,
        "format": fmt,
        "start": format_time(run.start_ms),
        "end": format_time(run.end_ms),
        "warmup_end": format_time(wu),
        "rollout": {"sdk_version": _new_version(p), "start": format_time(plan.rollout_ms)},
        "rare_sdk_version": p.rare_version.sdk_version,
        "calls_per_hour": p.calls_per_hour,
        "rows": written.rows,
        "legs": written.legs,
        "data": [str(f.relative_to(run.out)) for f in written.files[:1]]
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


def _block_hours(p: SimParams) -> int:
    """Hours drawn at once: about half a part's worth of legs at the weekly peak, 1 to 24."""
    peak = max(p.calls_per_hour, 1e-9) * 3.0
    return int(min(24, max(1, p.max_legs_per_chunk // 2 / peak)))


def _new_version(p: SimParams) -> str | None:
    for v in p.versions:
        if v.release_h is None and "beta" not in v.sdk_version:
            return v.sdk_version
    return None
