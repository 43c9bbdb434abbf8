"""Significance thresholds calibrated on the tenant's own judged history.

The threshold rule is checked against its promise (hours at or under it stay within the
false-alert budget) on simulated null histories; the record's bookkeeping (alerts left out,
too little history, what the state stores) through the engine on synthetic aggregates.
"""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pytest

from detector.detect import calibrate
from detector.detect.decide import METRIC_NAMES, DetectionPolicy
from detector.detect.engine import detect
from detector.errors import StateError
from detector.store.engine_state import EngineState
from detector.timeutil import iso
from tests.fixtures_engine import T0, Incident, make_aggs, standard_parts

ON = DetectionPolicy.from_mapping({"calibrate": True})
PER_HOUR = ON.false_alerts_per_day / 24 / len(METRIC_NAMES)


def _history(minima: np.ndarray, ops: str = "Join") -> dict[str, dict[str, list[object]]]:
    """(M, hours) hourly minima -> a record with one bucket per hour."""
    out: dict[str, dict[str, list[object]]] = {}
    for h in range(minima.shape[1]):
        p = [float(v) for v in minima[:, h]]
        out[iso(T0 + timedelta(hours=h))] = {"p": p, "op": [ops if v < 1 else "" for v in p]}
    return out


@pytest.mark.parametrize("n_eff", [1, 30, 3000])
@pytest.mark.parametrize("heavy", [1.0, 20.0])
def test_calibrated_threshold_keeps_the_budget_on_null_histories(n_eff: int, heavy: float) -> None:
    """Hourly minima of n_eff null p-values (``heavy``: p-values that are ``heavy`` times too
    small, as a heavy-tailed test gives): a week of history sets the threshold, the next
    weeks' hours at or under it stay within the per-hour budget (averaged over histories)."""
    rng = np.random.default_rng(7)
    hits, hours = 0, 0
    for _ in range(300):
        week = rng.beta(1, n_eff, size=(len(METRIC_NAMES), 24 * 7)) * n_eff / heavy
        cal = calibrate.thresholds(_history(np.clip(week, 0, 1)), T0 + timedelta(days=8), ON)
        assert cal.alpha is not None and cal.hours == 24 * 7
        fresh = rng.beta(1, n_eff, size=(len(METRIC_NAMES), 24 * 7)) * n_eff / heavy
        hits += int((fresh <= cal.alpha[:, None]).sum())
        hours += fresh.size
    assert hits / hours <= PER_HOUR * 1.5  # noise of ~1,500 expected hits at most
    assert hits > 0  # the threshold is not vacuous either


def test_a_quiet_history_bounds_the_rate_by_its_length() -> None:
    """No bucket passed the other gates in n hours: the threshold follows the Poisson upper
    bound of zero events (it grows with the history, never past 1)."""
    quiet = np.ones((len(METRIC_NAMES), 48))
    cal = calibrate.thresholds(_history(quiet), T0 + timedelta(days=3), ON)
    assert cal.alpha is not None
    assert cal.alpha == pytest.approx(PER_HOUR * 48 / 1.6094, rel=1e-3)
    longer = calibrate.thresholds(_history(np.ones((3, 24 * 7))), T0 + timedelta(days=8), ON)
    assert longer.alpha is not None and (longer.alpha > cal.alpha).all()


def test_too_little_history_keeps_alpha_and_so_does_calibrate_off() -> None:
    short = _history(np.full((len(METRIC_NAMES), ON.calibration_min_hours - 1), 0.5))
    assert calibrate.thresholds(short, T0 + timedelta(days=2), ON).alpha is None
    full = _history(np.full((len(METRIC_NAMES), 48), 0.5))
    assert calibrate.thresholds(full, T0 + timedelta(days=3), DetectionPolicy()).alpha is None


def test_buckets_after_the_run_start_are_not_used() -> None:
    record = _history(np.full((len(METRIC_NAMES), 48), 0.5))
    assert calibrate.thresholds(record, T0 + timedelta(hours=20), ON).alpha is None
    assert calibrate.thresholds(record, T0 + timedelta(hours=30), ON).hours == 30


def test_an_operations_alert_leaves_its_onset_and_aftermath_out() -> None:
    """Small minima from an operation that alerted nearby are the incident, not false
    alarms: they do not make the threshold stricter; from another operation they do (three
    such hours in three days are over the budget; one would be within it)."""
    minima = np.full((len(METRIC_NAMES), 72), 0.5)
    minima[:, 38:41] = 1e-9
    before = T0 + timedelta(days=4)
    alert = [("Join", "*", T0 + timedelta(hours=43), T0 + timedelta(hours=45))]
    left_out = calibrate.thresholds(_history(minima, "Join"), before, ON, alert)
    counted = calibrate.thresholds(_history(minima, "StartVideo"), before, ON, alert)
    assert left_out.alpha is not None and counted.alpha is not None
    assert (counted.alpha < left_out.alpha / 1000).all()
    assert left_out.hours == 72 - 26  # the longest span's reach either side of the alert


def test_the_engine_records_judged_buckets_and_reports_its_thresholds() -> None:
    aggs = make_aggs(standard_parts(), days=4.0, seed=3)
    policy = DetectionPolicy.from_mapping({"calibrate": True, "calibration_min_hours": 6})
    state, ws = EngineState(), T0 + timedelta(days=3)
    sources = []
    for h in range(0, 12, 3):
        start, end = ws + timedelta(hours=h), ws + timedelta(hours=h + 3)
        res = detect(aggs, window=(start, end), policy=policy, now=end, state=state)
        state = res.state
        sources.append(res.stats["calibration"]["source"])
        assert set(res.stats["calibration"]["thresholds"]) == set(METRIC_NAMES)
    assert sources == ["alpha", "alpha", "history", "history"]
    assert len(state.calibration) == 12 * 12  # one record per judged bucket
    again = EngineState.from_json(json.loads(json.dumps(state.to_json())))
    assert again.calibration == state.calibration


def test_calibration_off_records_nothing() -> None:
    aggs = make_aggs(standard_parts(), days=4.0, seed=3, incidents=())
    ws = T0 + timedelta(days=3)
    res = detect(aggs, window=(ws, ws + timedelta(hours=2)), policy=DetectionPolicy(), now=ws)
    assert res.state.calibration == {}
    assert res.stats["calibration"]["source"] == "alpha"
    assert "calibration" not in res.state.to_json()


@pytest.mark.parametrize(
    "record",
    [
        {"not a time": {"p": [0.5], "op": ["Join"]}},
        {"2026-01-01T00:00:00Z": {"p": [2.0], "op": ["Join"]}},
        {"2026-01-01T00:00:00Z": {"p": [0.5, 0.5], "op": ["Join"]}},
        {"2026-01-01T00:00:00Z": {"p": ["__import__('os')"], "op": ["Join"]}},
        {"2026-01-01T00:00:00Z": [0.5]},
        ["2026-01-01T00:00:00Z"],
    ],
)
def test_a_tampered_record_is_a_state_error(record: object) -> None:
    with pytest.raises(StateError):
        EngineState.from_json({"alerted": [], "suspect": [], "calibration": record})


def test_an_incident_is_still_found_with_calibration_on() -> None:
    """A failure spike after a calibrated history alerts as it does without calibration."""
    start = T0 + timedelta(days=3, hours=9)
    inc = Incident("Join", None, start, start + timedelta(hours=2), fail_rate=0.3)
    aggs = make_aggs(standard_parts(), days=4.0, seed=5, incidents=(inc,))
    state, ws = EngineState(), T0 + timedelta(days=3)
    policy = DetectionPolicy.from_mapping({"calibrate": True, "calibration_min_hours": 6})
    found = []
    for h in range(0, 12, 3):
        window = (ws + timedelta(hours=h), ws + timedelta(hours=h + 3))
        res = detect(aggs, window=window, policy=policy, now=window[1], state=state)
        state = res.state
        found += [(a.operation_name, a.metric) for a in res.anomalies]
    assert ("Join", "failure_rate") in found
    assert res.stats["calibration"]["source"] == "history"


def test_a_stepped_run_reports_the_last_steps_thresholds() -> None:
    """A rerun in hourly steps records as scheduled runs do and reports where it ended."""
    from detector.detect.engine import detect_steps

    aggs = make_aggs(standard_parts(), days=4.0, seed=3)
    policy = DetectionPolicy.from_mapping({"calibrate": True, "calibration_min_hours": 3})
    ws, we = T0 + timedelta(days=3), T0 + timedelta(days=3, hours=6)
    steps = [(ws + timedelta(hours=h), ws + timedelta(hours=h + 1)) for h in range(6)]
    res = detect_steps(lambda a, b: aggs, window=(ws, we), steps=steps, policy=policy, now=we)
    assert res.stats["steps"] == 6
    assert res.stats["calibration"]["source"] == "history"
    assert res.stats["calibration"]["hours"] == 5  # the hours before the last step
    assert len(res.state.calibration) == 6 * 12


def test_explain_judges_with_the_calibration_record_the_run_had() -> None:
    """`acs-detector explain` rebuilds the state a step had: the record before it, no later."""
    from detector.detect.explain import _state_before

    state = EngineState(calibration=_history(np.full((len(METRIC_NAMES), 10), 0.5)))
    before = _state_before(state, T0 + timedelta(hours=4))
    assert sorted(before.calibration) == sorted(state.calibration)[:4]
