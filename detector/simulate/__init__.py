"""Realistic simulator of ACS call client operations logs, with labelled incidents.

``simulate(out_dir, SimSpec(days=..., seed=..., scenario=...), fmt=...)`` writes rows with
exactly the columns and value shapes of the Log Analytics table ``ACSCallClientOperations``
(quirks included) as Parquet, JSON lines, CSV or the Diagnostic Settings storage layout, plus
``incidents.json`` (the labels), ``maintenance.json`` (hard negatives with a maintenance
window) and ``simulation.json`` (what was simulated).

Modules, in data-flow order: :mod:`.params` (every knob), :mod:`.scenarios` (what goes wrong
and the labels), :mod:`.population` (traffic cycles, SDK rollout, call legs), :mod:`.calls`
(legs -> operations, durations, outcomes), :mod:`.frame` (lag, quirks, the Arrow table),
:mod:`.writer` (formats), :mod:`.generate` (the loop).
"""

from __future__ import annotations

from .generate import SimSpec, SimulationResult, simulate
from .params import DEFAULT_START_ISO, QuirkRates, SimParams, VersionSpec
from .scenarios import (
    SCENARIOS,
    Incident,
    MaintenanceWindow,
    Scenario,
    load_incidents,
    load_maintenance,
)
from .writer import FORMATS

__all__ = [
    "DEFAULT_START_ISO",
    "FORMATS",
    "SCENARIOS",
    "Incident",
    "MaintenanceWindow",
    "QuirkRates",
    "Scenario",
    "SimParams",
    "SimSpec",
    "SimulationResult",
    "VersionSpec",
    "load_incidents",
    "load_maintenance",
    "simulate",
]
