"""``acs-detector explain``: what the engine saw for one partition around a time, and why.

In: the stored bucket history (:class:`~detector.store.buckets.BucketStore`), the engine state,
the alert state and the policy; an operation, an optional SDK version and metric, and a time
``T``. Out: an :class:`Explanation` that re-judges the step holding ``T`` exactly as the
scheduled job judges it (:func:`detector.detect.engine.plan_steps` and
:func:`detector.detect.engine.detect_steps`) and lists, per metric, each test with its value against
the usual, its threshold and the gate that stopped it, or the alert it raised.

Numbers come from the engine; the words from :mod:`detector.words`. Names from the log are
returned raw: :func:`explanation_text` escapes them for a terminal.
"""

from __future__ import annotations

import bisect
import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from detector import words
from detector.anomaly import Anomaly
from detector.detect.decide import GATE_REASONS, METRIC_NAMES, DetectionPolicy
from detector.errors import ConfigError
from detector.escape import for_terminal
from detector.lifecycle import AlertState, Silence
from detector.schema import BucketAggregates
from detector.store.engine_state import EngineState
from detector.timeutil import iso_z

__all__ = ["METRIC_CHOICES", "Explanation", "MetricVerdict", "explain", "explanation_text"]

#: What ``--metric`` accepts, and the engine's metric each one means.
METRIC_CHOICES: dict[str, str] = {
    "duration": "duration",
    "failures": "failure_rate",
    "failure_rate": "failure_rate",
    "volume": "volume",
}
_FLEET = "*"  # detector.detect.baseline.FLEET: the operation across all its SDK versions


@dataclass
class MetricVerdict:
    """One metric of the partition at the bucket holding ``T``: each test and the verdict."""

    metric: str
    verdict: str  # plain words: "alerted", "within normal variation", ...
    gate: str  # the engine's gate code ("" = nothing deviated); for scripts only
    tests: list[dict[str, Any]] = field(default_factory=list)  # name, value, threshold, passed
    value: float | None = None
    usual: float | None = None
    calls: float | None = None
    span_buckets: int | None = None
    furthest_in_step: str = ""  # the furthest gate any bucket of the step reached, in words
    furthest_gate: str = ""  # ... its code
    timeline: list[dict[str, Any]] = field(default_factory=list)  # the step's buckets: from, gate
    p_value: float | None = None  # the engine's, before the correction for the tests
    corrected_p_value: float | None = None  # what meets alpha
    alpha: float | None = None
    alert: dict[str, Any] | None = None  # the engine's anomaly covering T (Anomaly.to_json)
    alert_text: str = ""  # what_moved of that anomaly

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "verdict": self.verdict,
            "gate": self.gate,
            "value": self.value,
            "usual": self.usual,
            "calls": self.calls,
            "span_buckets": self.span_buckets,
            "tests": self.tests,
            "furthest_in_step": self.furthest_in_step,
            "furthest_gate": self.furthest_gate,
            "timeline": self.timeline,
            "p_value": self.p_value,
            "corrected_p_value": self.corrected_p_value,
            "alpha": self.alpha,
            "alert": self.alert,
            "alert_text": self.alert_text,
        }


@dataclass
class Explanation:
    """What ``explain`` found: the partition, the bucket and step judged, a verdict per metric,
    and the alert's lifecycle now (firing, acknowledged, silenced)."""

    operation: str
    sdk_version: str | None
    at: datetime
    bucket: tuple[datetime, datetime]
    step: tuple[datetime, datetime]
    metrics: list[MetricVerdict]
    lifecycle: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "operation_name": self.operation,
            "sdk_version": self.sdk_version,
            "at": iso_z(self.at),
            "bucket": [iso_z(self.bucket[0]), iso_z(self.bucket[1])],
            "judged_as_step": [iso_z(self.step[0]), iso_z(self.step[1])],
            "metrics": [m.to_json() for m in self.metrics],
            "lifecycle": self.lifecycle,
        }


# --------------------------------------------------------------------------------------------
# Judging the step again
# --------------------------------------------------------------------------------------------


def _step_of(at: datetime, step: timedelta, bucket: timedelta) -> tuple[datetime, datetime]:
    """The scheduled step holding ``at`` (steps end on multiples of ``step`` from the epoch)."""
    from detector.detect.engine import plan_steps

    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    start = epoch + (at - epoch) // step * step
    return plan_steps((start, start + step), step, bucket=bucket)[0]


def _state_before(state: EngineState, start: datetime) -> EngineState:
    """The engine state as the run judging from ``start`` had it: spans known by then only
    (a span still open at ``start`` is cut there)."""
    out = EngineState()
    out.alerted = [(o, v, a, min(b, start)) for o, v, a, b in state.alerted if a < start]
    out.suspect = [(o, v, a, min(b, start)) for o, v, a, b in state.suspect if a < start]
    return out


def _judge(
    history: Callable[[datetime, datetime], BucketAggregates],
    step: tuple[datetime, datetime],
    policy: DetectionPolicy,
    *,
    delay: timedelta,
    maintenance: Sequence[tuple[datetime, datetime, str | None]],
    state: EngineState,
) -> Any:
    """The engine's result for ``step``, judged as the scheduled run ending it judged it."""
    from detector.detect.engine import detect_steps

    return detect_steps(
        history,
        window=step,
        steps=[step],
        policy=policy,
        now=step[1] + delay,
        delay=delay,
        maintenance=maintenance,
        state=_state_before(state, step[0]),
    )


def _row(parts: Any, operation: str, sdk_version: str | None) -> int:
    """The partition's row in the engine's arrays; ConfigError naming what is there instead."""
    ops = [str(o) for o in parts.operation]
    vers = [str(v) for v in parts.version]
    want = _FLEET if sdk_version is None else sdk_version
    for i, (o, v) in enumerate(zip(ops, vers, strict=True)):
        if o == operation and v == want:
            return i
    if operation not in ops:
        raise ConfigError(
            for_terminal(
                f"no operation {operation!r} in the stored history then"
                f" ({_nearest(operation, set(ops))})"
            )
        )
    seen = sorted(v for o, v in zip(ops, vers, strict=True) if o == operation and v != _FLEET)
    raise ConfigError(
        for_terminal(
            f"{operation} has no SDK version {sdk_version!r} in the stored history then"
            f" (seen: {', '.join(seen[:20]) or 'none'})"
        )
    )


def _nearest(name: str, known: set[str]) -> str:
    """``did you mean: A, B`` from the names seen, or the first of them in order."""
    close = difflib.get_close_matches(name, sorted(known), n=5, cutoff=0.6)
    if close:
        return "did you mean: " + ", ".join(close)
    shown = sorted(known)[:20]
    more = f" and {len(known) - len(shown):,} more" if len(known) > len(shown) else ""
    return "seen: " + ", ".join(shown) + more


# --------------------------------------------------------------------------------------------
# The tests of one metric, in the order the engine meets them (detector.detect.decide)
# --------------------------------------------------------------------------------------------


def _num(x: Any) -> float | None:
    return words.finite(x)


def _test(name: str, shown: str, threshold: str, passed: bool | None) -> dict[str, Any]:
    return {"test": name, "value": shown, "threshold": threshold, "passed": passed}


def _sample_test(metric: str, n: float | None, k: float | None, policy: DetectionPolicy) -> Any:
    if metric == "volume":
        need = policy.min_expected_calls
        shown = "n/a" if n is None else f"{n:,.0f} calls expected"
        return _test("enough calls", shown, f"at least {need:,.0f} expected", _ge(n, need))
    shown = "n/a" if n is None else f"{n:,.0f} calls"
    need_text = f"at least {policy.min_calls:,} calls"
    passed = _ge(n, policy.min_calls)
    if metric == "failure_rate":
        shown += "" if k is None else f", {k:,.0f} failures"
        need_text += f" and {policy.min_failures} failures"
        passed = None if passed is None else passed and bool(_ge(k, policy.min_failures))
    return _test("enough calls", shown, need_text, passed)


def _ge(x: float | None, need: float) -> bool | None:
    return None if x is None else x >= need


def _significance_test(p: float | None, n_tests: float, policy: DetectionPolicy) -> Any:
    """The p-value once corrected for every test of an hour, against alpha."""
    if p is None:
        return _test("unusual enough", "n/a", f"corrected chance at most {policy.alpha:g}", None)
    corrected = min(1.0, p * max(n_tests, 1.0))
    shown = f"chance {corrected:.2g} after correcting for {n_tests:,.0f} tests an hour"
    rare = words.rarity_words(corrected)
    if rare:
        shown += f" ({rare})"
    threshold = f"at most {policy.alpha:g}"
    return _test("unusual enough", shown, threshold, corrected <= policy.alpha)


def _size_test(metric: str, effect: float | None, ms: float | None, p: DetectionPolicy) -> Any:
    """The change against the smallest one worth a page (decide._practical)."""
    if effect is None:
        return _test("large enough", "n/a", _min_effect_words(metric, p), None)
    if metric == "failure_rate":
        return _test(
            "large enough",
            f"{effect * 100:+.1f} points",
            _min_effect_words(metric, p),
            effect >= p.min_failure_points,
        )
    if metric == "duration":
        shown = f"{effect * 100:+.0f} %" + ("" if ms is None else f" ({ms:+,.0f} ms)")
        ok = effect >= p.min_duration_rel and ms is not None and ms >= p.min_duration_ms
        return _test("large enough", shown, _min_effect_words(metric, p), ok)
    drop, rise = effect <= -p.min_volume_drop, effect >= p.min_volume_rise
    ok = {"drop": drop, "rise": rise}.get(p.volume_direction, drop or rise)
    return _test("large enough", f"{effect * 100:+.0f} %", _min_effect_words(metric, p), ok)


def _min_effect_words(metric: str, p: DetectionPolicy) -> str:
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


def _verdict(code: int) -> tuple[str, str]:
    """(gate code, plain words) of a reason code; code 0 = nothing deviated."""
    gate = GATE_REASONS[code]
    if not gate:
        return "", "nothing unusual: not a candidate"
    return gate, words.gate_words(gate)


def _metric_verdict(res: Any, row: int, col: int, m: int, policy: DetectionPolicy) -> MetricVerdict:
    """Every test of metric ``m`` for partition ``row`` at bucket column ``col`` of ``res``.

    A bucket that was no candidate (no span nominally significant, no forest flag) gets no
    tests: the engine measures the rest only where a gate looks, so there is nothing more.
    """
    metric = METRIC_NAMES[m]
    reasons = res.debug["reasons"]
    gate, verdict = _verdict(int(reasons[row, m, col]))
    furthest = int(reasons[row, m].max()) if reasons.shape[2] else 0
    found = MetricVerdict(metric, verdict, gate)
    found.furthest_gate, found.furthest_in_step = _verdict(furthest)
    found.timeline = _timeline(reasons[row, m], res.debug["times"], res.window[0])
    if not gate:
        found.verdict = (
            "nothing unusual: no span of recent buckets was even nominally unusual"
            f" (chance at most {policy.alpha:g} before correcting for the tests)"
        )
        return found
    ev = res.debug["evidence"]
    at = (row, m, col)
    n_tests = float(res.stats.get("multiplicity", {}).get(metric, 1.0))
    k = _num(ev.k[at]) if metric == "failure_rate" else None
    has_history = bool(res.debug["baselines"].has_history[row])
    found.tests = [
        _test(
            "history",
            "enough" if has_history else "too little",
            f"at least {_human(policy.min_history)} of it",
            has_history,
        ),
        _sample_test(metric, _num(ev.n[at]), k, policy),
        _significance_test(_num(ev.p[at]), n_tests, policy),
        _size_test(metric, _num(ev.effect[at]), _num(ev.effect_ms[at]), policy),
        *_late_gates(gate, policy, fleet=bool(res.debug["parts"].is_fleet[row])),
    ]
    found.p_value, found.alpha = _num(ev.p[at]), policy.alpha
    if found.p_value is not None:
        found.corrected_p_value = min(1.0, found.p_value * max(n_tests, 1.0))
    found.value, found.usual = _num(ev.observed[at]), _num(ev.expected[at])
    found.calls = _num(ev.n[at])
    span = _num(ev.span[at])
    found.span_buckets = None if span is None else int(span)
    return found


#: The gates after the four tests, in the order decide meets them: (code, test, threshold).
_LATE_GATES = (
    ("not_persistent", "lasted", "unusual in {n} of the last {m} buckets"),
    ("explained_by_fleet", "its own change", "a change of its own, not the whole operation's"),
    ("explained_by_version", "its own change", "a change of its own, not one SDK version's"),
)


def _late_gates(gate: str, policy: DetectionPolicy, *, fleet: bool) -> list[dict[str, Any]]:
    """Persistence and attribution, for a candidate that reached them: failed at ``gate``,
    passed before it; nothing when an earlier test stopped it. A version is checked against
    its operation, the operation (``fleet``) against its versions."""
    skip = "explained_by_fleet" if fleet else "explained_by_version"
    gates = [g for g in _LATE_GATES if g[0] != skip]
    if gate != "anomaly" and gate not in [code for code, _, _ in gates]:
        return []
    out: list[dict[str, Any]] = []
    for code, name, template in gates:
        needs = template.format(n=policy.persist_n, m=policy.persist_m)
        if code == gate:
            return [*out, _test(name, words.gate_words(code), needs, False)]
        out.append(_test(name, "yes", needs, True))
    return out


def _timeline(codes: Any, times: Any, start: datetime) -> list[dict[str, Any]]:
    """The judged buckets of the step, runs of one gate merged: ``{from, to, gate, words}``."""
    out: list[dict[str, Any]] = []
    for code, t in zip(codes.tolist(), times, strict=True):
        t = t.to_pydatetime()
        if t < start:
            continue  # look-back buckets before the step: judged by the run before
        gate, said = _verdict(int(code))
        if out and out[-1]["gate"] == gate:
            out[-1]["to"] = iso_z(t)
        else:
            out.append({"from": iso_z(t), "to": iso_z(t), "gate": gate, "words": said})
    return out


def _human(span: timedelta) -> str:
    from detector.notify.commands import human_duration

    return human_duration(span)


def _covering(
    anomalies: Sequence[Anomaly], operation: str, version: str | None, metric: str, at: datetime
) -> Anomaly | None:
    for a in anomalies:
        if (a.operation_name, a.sdk_version, a.metric) == (operation, version, metric) and (
            a.window_start <= at < a.window_end
        ):
            return a
    return None


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def explain(
    history: Callable[[datetime, datetime], BucketAggregates],
    *,
    operation: str,
    sdk_version: str | None,
    at: datetime,
    policy: DetectionPolicy,
    step: timedelta,
    delay: timedelta = timedelta(0),
    metric: str | None = None,
    maintenance: Sequence[tuple[datetime, datetime, str | None]] = (),
    engine_state: EngineState | None = None,
    alert_state: AlertState | None = None,
    silences: Sequence[Silence] = (),
    acks: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> Explanation:
    """Judge the step holding ``at`` again and explain ``operation``/``sdk_version`` there.

    ``history(start, end)`` returns the stored buckets in ``[start, end)``. ``metric`` is one of
    :data:`METRIC_CHOICES` (None: all three). Raises ConfigError (the CLI's exit 2) when the
    store holds nothing for that step, or not that operation or version.
    """
    window = _step_of(at, step, policy.bucket)
    res = _judge(
        history,
        window,
        policy,
        delay=delay,
        maintenance=maintenance,
        state=engine_state or EngineState(),
    )
    if "parts" not in res.debug:
        raise ConfigError(
            f"no stored history for {iso_z(window[0])} .. {iso_z(window[1])}:"
            " nothing was judged then (see `acs-detector status` for what the store holds)"
        )
    row = _row(res.debug["parts"], operation, sdk_version)
    col = _column(res.debug["times"], at)
    chosen = [METRIC_CHOICES[metric]] if metric else list(METRIC_NAMES)
    verdicts = []
    for name in chosen:
        if name == "volume" and sdk_version is not None and policy.volume_scope == "fleet":
            verdicts.append(MetricVerdict(name, "not judged: volume is judged per operation", ""))
            continue
        mv = _metric_verdict(res, row, col, METRIC_NAMES.index(name), policy)
        alert = _covering(res.anomalies, operation, sdk_version, name, at)
        if alert is not None:
            mv.alert, mv.alert_text = alert.to_json(), _alert_words(alert)
        verdicts.append(mv)
    first = window[0] + (at - window[0]) // policy.bucket * policy.bucket
    bucket = (first, first + policy.bucket)
    found = Explanation(operation, sdk_version, at, bucket, window, verdicts)
    found.lifecycle = _lifecycle(found, alert_state, silences, acks or {}, now or at)
    return found


def _alert_words(a: Anomaly) -> str:
    """The alert as every channel tells it: what moved, over which window, why believed."""
    return (
        f"{words.what_moved(a)}, {iso_z(a.window_start)} .. {iso_z(a.window_end)};"
        f" {words.why_believed(a)}"
    )


def _column(times: Any, at: datetime) -> int:
    """The column of the bucket holding ``at`` in the engine's cube times."""
    col = bisect.bisect_right([t.to_pydatetime() for t in times], at) - 1
    if col < 0:
        raise ConfigError(f"{iso_z(at)} is before the judged buckets")
    return col


def _lifecycle(
    found: Explanation,
    state: AlertState | None,
    silences: Sequence[Silence],
    acks: dict[str, Any],
    now: datetime,
) -> list[str]:
    """The alert's bookkeeping now, per metric explained: firing, acknowledged, silenced."""
    from detector.anomaly import fingerprint_of

    lines = []
    for mv in found.metrics:
        fp = fingerprint_of(found.operation, found.sdk_version, mv.metric)
        label = words.metric_words(mv.metric)
        rec = state.records.get(fp) if state is not None else None
        if rec is not None and rec.status != "inactive":
            since = f" since {iso_z(rec.started_at)}" if rec.started_at else ""
            lines.append(f"{label}: {rec.status}{since}")
        ack = acks.get(fp)
        if ack is not None:
            who = f" by {ack.by}" if ack.by else ""
            lines.append(f"{label}: acknowledged{who} at {iso_z(ack.at)}")
        for s in silences:
            if s.active(now) and s.matches(fp, rec.severity if rec else None):
                lines.append(f"{label}: silenced until {iso_z(s.ends_at)} ({s.id})")
    return lines


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------


def explanation_text(found: Explanation) -> str:
    """``explain``'s answer for a person (terminal escapes removed from log names)."""
    who = found.sdk_version or "all SDK versions"
    lines = [
        f"{found.operation} / {who} at {iso_z(found.at)}",
        f"  bucket {iso_z(found.bucket[0])} .. {iso_z(found.bucket[1])}, judged as the run"
        f" ending {iso_z(found.step[1])} judged it (from {iso_z(found.step[0])})",
    ]
    for mv in found.metrics:
        lines += _metric_lines(mv)
    if found.lifecycle:
        lines.append("  alert state now:")
        lines += [f"    {line}" for line in found.lifecycle]
    return for_terminal("\n".join(lines))


def _metric_lines(mv: MetricVerdict) -> list[str]:
    m = mv.metric
    head = f"  {words.metric_words(m)}: {mv.verdict.upper() if mv.alert else mv.verdict}"
    lines = [head]
    if mv.alert_text:
        lines.append(f"    alert: {mv.alert_text}")
    if mv.value is not None or mv.usual is not None:
        # The tests' own measure: a duration test compares mean (log) durations, not the p95.
        what = {"duration": "mean duration", "failure_rate": "failure rate"}.get(m, "volume")
        span = f" over the last {mv.span_buckets} buckets" if mv.span_buckets else ""
        lines.append(
            f"    {what} {words.fmt_value(m, mv.value)} vs {words.fmt_value(m, mv.usual)} usual"
            f" ({words.change_text(m, mv.value, mv.usual)}){span}"
        )
    for t in mv.tests:
        mark = {True: "pass", False: "FAIL", None: "n/a"}[t["passed"]]
        lines.append(f"    [{mark:4}] {t['test']}: {t['value']} (needs {t['threshold']})")
    if len(mv.timeline) > 1:
        lines.append("    the step bucket by bucket (UTC, from each bucket's start):")
        for run in mv.timeline:
            span = run["from"][11:16] + (
                f" .. {run['to'][11:16]}" if run["to"] != run["from"] else ""
            )
            lines.append(f"      {span:14} {run['words']}")
    return lines
