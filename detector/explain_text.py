"""The engine's numbers in words: an alert's ``reason``, and the answer of ``acs-detector explain``.

The engine (:mod:`detector.detect.engine`) measures each alerting run and hands this module an
:class:`AlertNumbers`; :func:`reason_text` words it as the Anomaly's ``reason`` ("anomaly:
failure rate 12.0% vs 1.0% (+11.0 pts, 6/50 failed in 5 calls, p=3e-08, 3 buckets, span 6)").
The forest's alone are worded by :func:`combination_text`. ``acs-detector explain``'s
:class:`~detector.detect.explain.Explanation` (numbers and gate codes) is worded by
:func:`explanation_text` and :func:`explanation_json`. Pure: no I/O, no clock. Names from the
log are returned raw, except by :func:`explanation_text`, which escapes them for a terminal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from detector import words
from detector.escape import for_terminal
from detector.timeutil import iso_z

if TYPE_CHECKING:  # the engine's records; their modules import this one
    from detector.anomaly import Anomaly
    from detector.detect.decide import DetectionPolicy
    from detector.detect.explain import Explanation, LifecycleEntry, MetricVerdict

__all__ = [
    "AlertNumbers",
    "combination_text",
    "explanation_json",
    "explanation_text",
    "fmt_p",
    "joint_text",
    "reason_text",
]


@dataclass(frozen=True)
class AlertNumbers:
    """What an alerting run measured, for its ``reason``: the metric, its observed and baseline
    value over the run, the test's p-value (spans corrected in), the run's buckets and the
    test's span, and what only some alerts have (the rest are 0 or None)."""

    metric: str  # "duration" (p95 ms), "failure_rate" (a rate) or "volume" (calls per bucket)
    observed: float
    baseline: float
    p: float
    buckets: int
    span: int
    effect: float = float("nan")  # duration: the test's typical relative change
    calls: int = 0  # failure rate: calls, failures and failing calls behind it
    failures: int = 0
    failed_calls: int = 0
    rollout_since: str | None = None  # judged on everything since this rollout (ISO time)
    #: duration tail since the rollout: slow calls, calls, the share of them expected slow and
    #: the typical (median) duration's relative change
    slow: tuple[int, int, float, float] | None = None
    provisional_weight: float | None = None  # a provisional baseline's share of own history
    forest_moves: Mapping[str, float] | None = None  # the forest's alone: effect per metric


def fmt_p(p: float) -> str:
    """A p-value in one significant digit (``3e-08``), ``<1e-300`` below that."""
    return f"{p:.1g}" if p >= 1e-300 else "<1e-300"


#: A metric's words in a forest alert: its name, how its effect is scaled, unit, decimals.
_JOINT_WORDS: dict[str, tuple[str, float, str, int]] = {
    "duration": ("latency", 100.0, "%", 0),
    "failure_rate": ("failures", 100.0, "points", 1),
    "volume": ("volume", 100.0, "%", 0),
}


def joint_text(effects: Mapping[str, float]) -> str:
    """``"latency +9 %, failures +1.2 points, volume -20 %"`` from effects per metric name
    (relative for duration and volume, absolute for the failure rate; NaN ones left out)."""
    parts = []
    for metric, value in effects.items():
        if metric in _JOINT_WORDS and math.isfinite(value):
            word, scale, unit, decimals = _JOINT_WORDS[metric]
            parts.append(f"{word} {value * scale:+.{decimals}f} {unit}")
    return ", ".join(parts)


def combination_text(moves: Mapping[str, float]) -> str:
    """Effects per metric of a forest-only alert -> ``an unusual combination: ...`` words."""
    return f"an unusual combination: {joint_text(moves)}; no one of them conclusive alone"


def _figures_text(a: AlertNumbers) -> str:
    """An alert's numbers -> its figures in words, up to the p-value (the bracket left open)."""
    o, b = a.observed, a.baseline
    if a.metric == "duration" and a.slow is not None:
        k, n, e, typical = a.slow
        return (
            f"duration p95 {o:.0f} ms vs {b:.0f} ms on its operation's other versions since its "
            f"rollout at {a.rollout_since}: its typical duration {typical:+.0%}, its tail beyond "
            f"that ({k / max(n, 1):.1%} of its {n} calls above the operation's usual p95 for "
            f"the hour, {e:.1%} expected, p={fmt_p(a.p)}"
        )
    if a.metric == "duration":
        return f"duration p95 {o:.0f} ms vs {b:.0f} ms (typical {a.effect:+.0%}, p={fmt_p(a.p)}"
    if a.metric == "failure_rate" and a.rollout_since is not None:
        return (
            f"failure rate {o:.1%} vs {b:.1%} since its rollout at {a.rollout_since} "
            f"({(o - b) * 100:+.1f} pts, {a.failures}/{a.calls} failed, against its operation's "
            f"other versions at the same hours, p={fmt_p(a.p)}"
        )
    if a.metric == "failure_rate":
        fc = a.failed_calls
        return (
            f"failure rate {o:.1%} vs {b:.1%} "
            f"({(o - b) * 100:+.1f} pts, {a.failures}/{a.calls} failed "
            f"in {fc} call{'s' if fc != 1 else ''}, p={fmt_p(a.p)}"
        )
    return f"volume {o:.1f} vs {b:.1f} calls/bucket ({o / max(b, 1e-9) - 1:+.0%}, p={fmt_p(a.p)}"


def reason_text(a: AlertNumbers) -> str:
    """An alert's numbers -> its ``reason``: ``anomaly: <figures>, 3 buckets, span 6)``, a
    forest-only alert's combination instead, and the provisional baseline's share."""
    if a.forest_moves is not None:
        text = combination_text(a.forest_moves)
    else:
        n = a.buckets
        text = _figures_text(a) + f", {n} bucket{'s' if n > 1 else ''}, span {a.span})"
    if a.provisional_weight is not None:
        text += f" [provisional baseline: {a.provisional_weight:.0%} own]"
    return f"anomaly: {text}"


# --------------------------------------------------------------------------------------------
# acs-detector explain
# --------------------------------------------------------------------------------------------

#: A test's name by its code (detector.detect.explain.Check).
_TEST_NAMES: Final = {
    "history": "history",
    "calls": "enough calls",
    "chance": "unusual enough",
    "size": "large enough",
    "held": "kept open",
    "kept_attribution": "kept open",
    "not_persistent": "lasted",
    "explained_by_fleet": "its own change",
    "explained_by_version": "its own change",
}

#: What the gates after the four tests need, by code.
_LATE_NEEDS: Final = {
    "not_persistent": "unusual in {n} of the last {m} buckets",
    "explained_by_fleet": "a change of its own, not the whole operation's",
    "explained_by_version": "a change of its own, not one SDK version's",
}


def _gate_verdict(gate: str) -> str:
    """A gate code's verdict in words ("" = nothing deviated)."""
    return words.gate_words(gate) if gate else "nothing unusual: not a candidate"


def _verdict(mv: MetricVerdict, policy: DetectionPolicy) -> str:
    """A metric's verdict at the bucket in words."""
    if not mv.judged:
        return "not judged: volume is judged per operation"
    if not mv.gate:
        return (
            "nothing unusual: no span of recent buckets was even nominally unusual"
            f" (chance at most {policy.alpha:g} before correcting for the tests)"
        )
    return _gate_verdict(mv.gate)


def _row(code: str, shown: str, threshold: str, passed: bool | None) -> dict[str, Any]:
    """A test's code, shown value, threshold and outcome -> its row in ``explain``'s answer."""
    return {"test": _TEST_NAMES[code], "value": shown, "threshold": threshold, "passed": passed}


def _calls_row(mv: MetricVerdict, policy: DetectionPolicy, passed: bool | None) -> dict[str, Any]:
    """The calls (and failures) behind the evidence against what a test needs, in words."""
    n, k = mv.calls, mv.failures
    if mv.metric == "volume":
        need = policy.min_expected_calls
        shown = "n/a" if n is None else f"{n:,.0f} calls expected"
        return _row("calls", shown, f"at least {need:,.0f} expected", passed)
    shown = "n/a" if n is None else f"{n:,.0f} calls"
    need_text = f"at least {policy.min_calls:,} calls"
    if mv.metric == "failure_rate":
        shown += "" if k is None else f", {k:,.0f} failures"
        need_text += f" and {policy.min_failures} failures"
    return _row("calls", shown, need_text, passed)


def _chance_row(mv: MetricVerdict, policy: DetectionPolicy, passed: bool | None) -> dict[str, Any]:
    """The corrected p-value against alpha, in words."""
    corrected = mv.corrected_p_value
    level = policy.alpha if mv.alpha is None else mv.alpha
    if corrected is None:
        return _row("chance", "n/a", f"corrected chance at most {level:g}", None)
    shown = f"chance {corrected:.2g} after correcting for {mv.n_tests:,.0f} tests an hour"
    rare = words.rarity_words(corrected)
    if rare:
        shown += f" ({rare})"
    return _row("chance", shown, f"at most {level:g}", passed)


def _size_row(mv: MetricVerdict, p: DetectionPolicy, passed: bool | None) -> dict[str, Any]:
    """The change against the smallest one worth a page, in words."""
    effect, ms, needs = mv.effect, mv.effect_ms, _min_effect_words(mv.metric, p)
    if effect is None:
        return _row("size", "n/a", needs, None)
    if mv.metric == "failure_rate":
        return _row("size", f"{effect * 100:+.1f} points", needs, passed)
    if mv.metric == "duration":
        shown = f"{effect * 100:+.0f} %" + ("" if ms is None else f" ({ms:+,.0f} ms)")
        return _row("size", shown, needs, passed)
    return _row("size", f"{effect * 100:+.0f} %", needs, passed)


def _min_effect_words(metric: str, p: DetectionPolicy) -> str:
    """A metric and the policy -> the smallest change worth a page, in words."""
    if metric == "failure_rate":
        return f"at least +{p.min_failure_points * 100:.1f} points"
    if metric == "duration":
        return f"at least +{p.min_duration_rel * 100:.0f} % and +{p.min_duration_ms:,.0f} ms"
    parts = []
    if p.volume_direction in ("drop", "both"):
        parts.append(f"down {p.min_volume_drop * 100:.0f} %")
    if p.volume_direction in ("rise", "both"):
        parts.append(f"up {p.min_volume_rise * 100:.0f} %")
    return "at least " + " or ".join(parts)


def _test_rows(mv: MetricVerdict, policy: DetectionPolicy) -> list[dict[str, Any]]:
    """Each test of a metric: ``{test, value, threshold, passed}`` in words."""
    from detector.notify.commands import human_duration

    rows = []
    for check in mv.checks:
        code, passed = check.code, check.passed
        if code == "history":
            shown = "enough" if passed else "too little"
            needs = f"at least {human_duration(policy.min_history)} of it"
            rows.append(_row(code, shown, needs, passed))
        elif code == "calls":
            rows.append(_calls_row(mv, policy, passed))
        elif code == "chance":
            rows.append(_chance_row(mv, policy, passed))
        elif code == "size":
            rows.append(_size_row(mv, policy, passed))
        elif code == "kept_attribution":
            shown = "yes: its alert was open at the bucket before"
            needs = (
                "none of its SDK versions alerting (one deviating on its own would otherwise"
                " take the change over)"
            )
            rows.append(_row(code, shown, needs, passed))
        elif code == "held":
            shown = "yes: its alert was open at the bucket before"
            needs = (
                f"its test since the rollout at a chance of at most {policy.alpha:g} before the"
                " correction (which is for opening an alert), and no evidence yet that it is over"
            )
            rows.append(_row(code, shown, needs, passed))
        else:
            needs = _LATE_NEEDS[code].format(n=policy.persist_n, m=policy.persist_m)
            shown = "yes" if passed else words.gate_words(code)
            if passed is None and code == "explained_by_version":  # kept (hold.py)
                shown = "one SDK version deviates on its own, but none alerts"
            rows.append(_row(code, shown, needs, passed))
    return rows


def _alert_words(a: Anomaly) -> str:
    """The alert as every channel tells it: what moved, over which window, why believed."""
    return (
        f"{words.what_moved(a)}, {iso_z(a.window_start)} .. {iso_z(a.window_end)};"
        f" {words.why_believed(a)}"
    )


def _metric_json(mv: MetricVerdict, policy: DetectionPolicy) -> dict[str, Any]:
    """One metric's verdict, tests and timeline, in words and numbers."""
    return {
        "metric": mv.metric,
        "verdict": _verdict(mv, policy),
        "gate": mv.gate,
        "value": mv.value,
        "usual": mv.usual,
        "part": mv.part,
        "held": mv.held,
        "calls": mv.calls,
        "span_buckets": mv.span_buckets,
        "tests": _test_rows(mv, policy),
        "furthest_in_step": _gate_verdict(mv.furthest_gate) if mv.judged else "",
        "furthest_gate": mv.furthest_gate,
        "timeline": [
            {
                "from": iso_z(run.first),
                "to": iso_z(run.last),
                "gate": run.gate,
                "words": _gate_verdict(run.gate),
            }
            for run in mv.timeline
        ],
        "p_value": mv.p_value,
        "corrected_p_value": mv.corrected_p_value,
        "alpha": mv.alpha,
        "alert": None if mv.alert is None else mv.alert.to_json(),
        "alert_text": "" if mv.alert is None else _alert_words(mv.alert),
    }


def _lifecycle_line(entry: LifecycleEntry) -> str:
    """One fact of an alert's bookkeeping: ``failure rate: firing since ...``."""
    label = words.metric_words(entry.metric)
    if entry.event == "acknowledged":
        who = f" by {entry.who}" if entry.who else ""
        return f"{label}: acknowledged{who} at {iso_z(entry.at)}"
    if entry.event == "silenced":
        return f"{label}: silenced until {iso_z(entry.at)} ({entry.who})"
    since = f" since {iso_z(entry.at)}" if entry.at else ""
    return f"{label}: {entry.event}{since}"


def explanation_json(found: Explanation) -> dict[str, Any]:
    """``explain --json``: the explanation's numbers and codes, and their words."""
    return {
        "operation_name": found.operation,
        "sdk_version": found.sdk_version,
        "at": iso_z(found.at),
        "bucket": [iso_z(found.bucket[0]), iso_z(found.bucket[1])],
        "judged_as_step": [iso_z(found.step[0]), iso_z(found.step[1])],
        "metrics": [_metric_json(m, found.policy) for m in found.metrics],
        "lifecycle": [_lifecycle_line(e) for e in found.lifecycle],
    }


def explanation_text(found: Explanation) -> str:
    """``explain``'s answer for a person (terminal escapes removed from log names)."""
    who = found.sdk_version or "all SDK versions"
    lines = [
        f"{found.operation} / {who} at {iso_z(found.at)}",
        f"  bucket {iso_z(found.bucket[0])} .. {iso_z(found.bucket[1])}, judged as the run"
        f" ending {iso_z(found.step[1])} judged it (from {iso_z(found.step[0])})",
    ]
    for mv in found.metrics:
        lines += _metric_lines(_metric_json(mv, found.policy))
    if found.lifecycle:
        lines.append("  alert state now:")
        lines += [f"    {_lifecycle_line(e)}" for e in found.lifecycle]
    return for_terminal("\n".join(lines))


def _metric_lines(mv: dict[str, Any]) -> list[str]:
    """One metric of ``explain``'s answer (its :func:`_metric_json`) as lines."""
    m = mv["metric"]
    head = f"  {words.metric_words(m)}: {mv['verdict'].upper() if mv['alert'] else mv['verdict']}"
    lines = [head]
    if mv["alert_text"]:
        lines.append(f"    alert: {mv['alert_text']}")
    if mv["value"] is not None or mv["usual"] is not None:
        # The tests' own measure: a duration test compares mean (log) durations, not the p95;
        # the tail test of a new build, its p95 since its rollout against its siblings'.
        what = {"duration": "mean duration", "failure_rate": "failure rate"}.get(m, "volume")
        span = f" over the last {mv['span_buckets']} buckets" if mv["span_buckets"] else ""
        if mv.get("part") == "tail":
            what, span = "p95", f" on its other versions, since its rollout {span[1:]}"
        value, usual = mv["value"], mv["usual"]
        lines.append(
            f"    {what} {words.fmt_value(m, value)} vs {words.fmt_value(m, usual)} usual"
            f" ({words.change_text(m, value, usual)}){span}"
        )
    for t in mv["tests"]:
        mark = {True: "pass", False: "FAIL", None: "n/a"}[t["passed"]]
        lines.append(f"    [{mark:4}] {t['test']}: {t['value']} (needs {t['threshold']})")
    if len(mv["timeline"]) > 1:
        lines.append("    the step bucket by bucket (UTC, from each bucket's start):")
        for run in mv["timeline"]:
            span = run["from"][11:16] + (
                f" .. {run['to'][11:16]}" if run["to"] != run["from"] else ""
            )
            lines.append(f"      {span:14} {run['words']}")
    return lines
