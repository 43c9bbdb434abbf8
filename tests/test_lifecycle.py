"""Lifecycle decisions, table-driven (after Alertmanager's TestDedupStageNeedsUpdate)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.errors import ConfigError
from detector.lifecycle import (
    Ack,
    AlertState,
    LifecyclePolicy,
    Reason,
    Silence,
    parse_fingerprint,
    step,
)
from tests.fixtures_alerting import STEP, T0, make_anomaly

FP = "Join|1.30.1.1_stable|duration"
M = timedelta(minutes=1)


def run_sequence(tokens, policy, *, silences=(), acks=None, state=None):
    """Feed one window per token: H hit (warning), X hit (critical), C clean, - not evaluated.

    Windows are 5 minutes apart; each is judged 1 minute after it ends.
    Returns (list of (reason or None, notify) per window, final state).
    """
    state = state or AlertState()
    out = []
    for i, tok in enumerate(tokens):
        end = T0 + STEP * (i + 1)
        now = end + M
        anomalies, evaluated = [], {}
        if tok in "HX":
            anomalies = [make_anomaly(end=end, severity="critical" if tok == "X" else "warning")]
        if tok == "C":
            evaluated = {FP: {"observed": 910.0, "baseline": 900.0, "calls": 1500}}
        decisions, state = step(
            anomalies, evaluated, state, policy, now, window_end=end, silences=silences, acks=acks
        )
        mine = [d for d in decisions if d.fingerprint == FP]
        out.append((str(mine[0].reason), mine[0].notify) if mine else (None, False))
    return out, state


P = LifecyclePolicy
CASES = [
    # name, policy, tokens, expected reasons (None = no decision)
    ("first hit fires (1 of 1)", P(), "H", ["new"]),
    ("2 of 3: pending, then fires", P(n=2, m=3), "HCH", ["pending", None, "new"]),
    ("2 of 3: isolated hits stay pending", P(n=2, m=3), "HCCH", ["pending", None, None, "pending"]),
    (
        "3 of 3 needs consecutive hits",
        P(n=3, m=3),
        "HHCHHH",
        ["pending", "pending", None, "pending", "pending", "new"],
    ),
    ("still firing inside repeat interval", P(), "HH", ["new", "still_firing"]),
    (
        "repeat due after interval",
        P(repeat_interval=timedelta(minutes=10)),
        "HHHHH",
        ["new", "still_firing", "repeat_due", "still_firing", "repeat_due"],
    ),
    ("severity rise is escalated", P(), "HXX", ["new", "escalated", "still_firing"]),
    (
        "recovery needs clean windows spanning resolve_after",
        P(resolve_after=timedelta(minutes=10)),
        "HCCC",
        ["new", "recovering", "resolved", None],
    ),
    (
        "recovery needs N clean evaluations too",
        P(recovery_evaluations=3, resolve_after=timedelta(0)),
        "HCCC",
        ["new", "recovering", "recovering", "resolved"],
    ),
    (
        "no data never resolves",
        P(resolve_after=timedelta(minutes=5), recovery_evaluations=1),
        "H---C",
        ["new", "no_data", "no_data", "no_data", "resolved"],
    ),
    (
        "a hit while recovering keeps it firing",
        P(resolve_after=timedelta(minutes=10)),
        "HCHCC",
        ["new", "recovering", "still_firing", "recovering", "resolved"],
    ),
    (
        "fires again after resolve: new episode",
        P(resolve_after=timedelta(minutes=5), recovery_evaluations=1),
        "HCH",
        ["new", "resolved", "new"],
    ),
    ("clean and never anomalous: nothing", P(), "CCC", [None, None, None]),
    (
        "no resolved notice when send_resolved is off",
        P(resolve_after=timedelta(minutes=5), recovery_evaluations=1, send_resolved=False),
        "HC",
        ["new", "resolved"],
    ),
]


@pytest.mark.parametrize(("name", "policy", "tokens", "expected"), CASES, ids=[c[0] for c in CASES])
def test_lifecycle_table(name, policy, tokens, expected):
    got, _ = run_sequence(tokens, policy)
    assert [r for r, _ in got] == expected
    for reason, notify in got:
        if reason in ("new", "repeat_due", "escalated"):
            assert notify
        elif reason == "resolved":
            assert notify == policy.send_resolved
        else:
            assert not notify


def test_flapping_does_not_storm():
    """Alternating hit/clean for 4 hours: one fire, no resolve while it flaps, one resolve after."""
    policy = P(
        n=2,
        m=3,
        resolve_after=timedelta(minutes=30),
        recovery_evaluations=2,
        repeat_interval=timedelta(hours=4),
    )
    tokens = "HC" * 24 + "C" * 8
    got, state = run_sequence(tokens, policy)
    notified = [r for r, n in got if n]
    assert notified == ["new", "resolved"]
    assert state.records[FP].status == "resolved"


def test_rerun_of_same_window_is_idempotent():
    policy = P()
    end = T0 + STEP
    a = [make_anomaly(end=end)]
    d1, s1 = step(a, {}, AlertState(), policy, end + M, window_end=end)
    assert [(str(d.reason), d.notify) for d in d1] == [("new", True)]
    d2, s2 = step(a, {}, s1, policy, end + 10 * M, window_end=end)
    assert [(str(d.reason), d.notify) for d in d2] == [("suppressed_duplicate", False)]
    # the rerun changes nothing: same state as after the first run
    assert s2.to_json() == s1.to_json()
    # even hours later, when a repeat would be due, a rerun sends nothing
    d3, s3 = step(a, {}, s2, policy, end + timedelta(hours=9), window_end=end)
    assert [d.notify for d in d3] == [False]
    # and the next real window continues from the original state
    end2 = end + STEP
    d4, _ = step([make_anomaly(end=end2)], {}, s3, policy, end2 + M, window_end=end2)
    assert [str(d.reason) for d in d4] == ["still_firing"]


def test_rerun_of_resolving_window_sends_nothing():
    policy = P(resolve_after=timedelta(minutes=5), recovery_evaluations=1)
    _, s = run_sequence("H", policy)
    end = T0 + 2 * STEP
    ev = {FP: 905.0}
    d1, s1 = step([], ev, s, policy, end + M, window_end=end)
    assert [(str(d.reason), d.notify) for d in d1] == [("resolved", True)]
    d2, s2 = step([], ev, s1, policy, end + 3 * M, window_end=end)
    assert [d.notify for d in d2] == [False]
    assert s2.records[FP].status == "resolved"


def test_out_of_order_window_changes_nothing():
    policy = P()
    got, s = run_sequence("HH", policy)
    old_end = T0 + STEP
    d, s2 = step(
        [make_anomaly(end=old_end)], {}, s, policy, T0 + timedelta(hours=1), window_end=old_end
    )
    assert [str(x.reason) for x in d] == ["out_of_order"]
    assert s2.to_json() == s.to_json()


def test_resolved_notice_carries_current_value():
    policy = P(resolve_after=timedelta(minutes=5), recovery_evaluations=1)
    got, s = run_sequence("H", policy)
    end = T0 + 2 * STEP
    d, _ = step(
        [],
        {FP: {"observed": 880.0, "baseline": 900.0, "calls": 777}},
        s,
        policy,
        end + M,
        window_end=end,
    )
    (res,) = d
    assert res.reason == Reason.RESOLVED and res.notify
    assert res.current is not None and res.current.observed == 880.0 and res.current.calls == 777
    assert res.anomaly is not None and res.anomaly.observed == 2400.0  # what it fired with


def test_silence_mutes_then_notifies_after_expiry():
    policy = P()
    sil = Silence("s1", {"operation": "join", "metric": "dur*"}, T0, T0 + 2 * STEP + 2 * M)
    got, s = run_sequence("HHH", policy, silences=[sil])
    assert got == [("silenced", False), ("silenced", False), ("new", True)]


def test_silenced_alert_resolves_quietly():
    policy = P(resolve_after=timedelta(minutes=5), recovery_evaluations=1)
    sil = Silence("s1", {"fingerprint": FP}, T0, T0 + timedelta(days=1))
    got, _ = run_sequence("HC", policy, silences=[sil])
    assert got == [("silenced", False), ("resolved", False)]


def test_silence_matchers():
    s = Silence("x", {"sdk_version": "1.30.*", "severity": "crit*"}, T0, T0 + STEP)
    assert s.matches(FP, "critical")
    assert not s.matches(FP, "warning")
    assert not s.matches("Join|1.29.0.0_stable|duration", "critical")
    assert Silence("y", {"sdk": "*"}, T0, T0 + STEP).matches("Join|*|duration")
    with pytest.raises(ConfigError):
        Silence("z", {"participant": "x"}, T0, T0 + STEP)


def test_ack_mutes_until_resolved_then_new_episode_notifies():
    policy = P(
        repeat_interval=timedelta(minutes=5),
        resolve_after=timedelta(minutes=5),
        recovery_evaluations=1,
    )
    got, s = run_sequence("H", policy)
    acks = {FP: Ack(FP, T0 + STEP + 2 * M, by="alice")}
    # continue from state s with the ack: repeats are muted, resolve is still told
    out = []
    for i, tok in enumerate("HHCH", start=1):
        end = T0 + STEP * (i + 1)
        anomalies = [make_anomaly(end=end)] if tok == "H" else []
        evaluated = {FP: 900.0} if tok == "C" else {}
        d, s = step(anomalies, evaluated, s, policy, end + M, window_end=end, acks=acks)
        out.append((str(d[0].reason), d[0].notify, d[0].ack_by))
    assert out == [
        ("acknowledged", False, "alice"),
        ("acknowledged", False, "alice"),
        ("resolved", True, None),
        ("new", True, None),  # the old ack does not cover a new episode
    ]


def test_not_evaluated_fingerprints_keep_state_and_gc_after_retention():
    policy = P(
        resolve_after=timedelta(minutes=5), recovery_evaluations=1, retention=timedelta(days=1)
    )
    _, s = run_sequence("HC", policy)
    assert s.records[FP].status == "resolved"
    later = T0 + timedelta(days=3)
    _, s2 = step([], {}, s, policy, later, window_end=later)
    assert FP not in s2.records


def test_state_json_roundtrip():
    _, s = run_sequence("HHC", P())
    again = AlertState.from_json(s.to_json())
    assert again.to_json() == s.to_json()


def test_evaluated_accepts_tuples_and_fleet():
    policy = P(resolve_after=timedelta(0), recovery_evaluations=1)
    end = T0 + STEP
    fleet = make_anomaly(sdk=None, end=end)
    d, s = step([fleet], [], AlertState(), policy, end, window_end=end)
    assert d[0].fingerprint == "Join|*|duration" and d[0].sdk_version is None
    end2 = end + STEP
    d2, _ = step([], [("Join", None, "duration")], s, policy, end2, window_end=end2)
    assert str(d2[0].reason) == "resolved"


def test_policy_from_config_and_errors():
    p = LifecyclePolicy.from_config(
        {"n_of_m": "2/3", "resolve_after": "15m", "repeat_interval": "2h", "other": 1}
    )
    assert (p.n, p.m, p.resolve_after, p.repeat_interval) == (
        2,
        3,
        timedelta(minutes=15),
        timedelta(hours=2),
    )
    with pytest.raises(ConfigError) as exc:
        LifecyclePolicy.from_config({"n_of_m": "4/3"})
    assert "n_of_m" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        LifecyclePolicy.from_config({"n_of_m": "x", "resolve_after": "soon"})
    assert len(exc.value.problems) == 2


def test_step_does_not_mutate_input_state():
    _, s = run_sequence("H", P())
    before = s.to_json()
    end = T0 + 2 * STEP
    step([make_anomaly(end=end, severity="critical")], {}, s, P(), end, window_end=end)
    assert s.to_json() == before


@settings(max_examples=60, deadline=None)
@given(
    tokens=st.text(alphabet="HXC-", min_size=1, max_size=25),
    n_m=st.sampled_from([(1, 1), (2, 3), (3, 5)]),
    rerun_after=st.integers(min_value=0, max_value=600),
)
def test_rerun_of_any_window_is_idempotent(tokens, n_m, rerun_after):
    """Property: replaying the latest window (at any later time) notifies nothing and leaves
    the state exactly as the first pass left it; notifications alternate fire/resolve."""
    policy = P(
        n=n_m[0],
        m=n_m[1],
        repeat_interval=timedelta(minutes=20),
        resolve_after=timedelta(minutes=10),
    )
    state = AlertState()
    kinds = []
    for i, tok in enumerate(tokens):
        end = T0 + STEP * (i + 1)
        anomalies = (
            [make_anomaly(end=end, severity="critical" if tok == "X" else "warning")]
            if tok in "HX"
            else []
        )
        evaluated = {FP: 900.0} if tok == "C" else {}
        d1, s1 = step(anomalies, evaluated, state, policy, end + M, window_end=end)
        d2, s2 = step(
            anomalies,
            evaluated,
            s1,
            policy,
            end + M + timedelta(minutes=rerun_after),
            window_end=end,
        )
        assert not any(d.notify for d in d2)
        assert s2.to_json() == s1.to_json()
        kinds += ["resolved" if d.reason == Reason.RESOLVED else "firing" for d in d1 if d.notify]
        state = s1
    # a resolved notice only ever follows a firing one, never two resolves in a row
    for a, b in zip(kinds, kinds[1:], strict=False):
        assert not (a == "resolved" and b == "resolved")
    if kinds:
        assert kinds[0] == "firing"


# --- fingerprints (issue 21, item 5) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "sdk", "expected"),
    [
        ("Join", "1.30.1.1_stable", "Join|1.30.1.1_stable|duration"),  # unchanged: state valid
        ("Join", None, "Join|*|duration"),
        ("Join", "", "Join|*|duration"),
        ("Join|Evil", "1.2", "Join%7CEvil|1.2|duration"),
        ("Join", "1|2", "Join|1%7C2|duration"),
        ("50%", "*", "50%25|%2A|duration"),
    ],
)
def test_fingerprint_encodes_only_what_would_break_it(op, sdk, expected):
    a = make_anomaly(op=op, sdk=sdk)
    assert a.fingerprint == expected
    assert parse_fingerprint(a.fingerprint) == (op, sdk or None, "duration")


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1), st.one_of(st.none(), st.text(min_size=1)))
def test_any_name_round_trips_through_its_fingerprint(op, sdk):
    fp = make_anomaly(op=op, sdk=sdk).fingerprint
    assert parse_fingerprint(fp) == (op, sdk, "duration")
    assert fp == make_anomaly(op=op, sdk=sdk).fingerprint
    assert (fp == make_anomaly(op=op, sdk=None).fingerprint) == (sdk is None)


@pytest.mark.parametrize(("op", "sdk"), [("Join|x", "1.2"), ("Join", "1.2|beta"), ("a|b", "c|d")])
def test_pipe_in_a_name_is_decided_notified_and_resolves(op, sdk):
    """A ``|`` in OperationName or SdkVersion used to drop the alert silently (0 decisions)."""
    policy = P(resolve_after=timedelta(0), recovery_evaluations=1)
    end = T0 + STEP
    d, s = step(
        [make_anomaly(op=op, sdk=sdk, severity="critical")],
        [],
        AlertState(),
        policy,
        end,
        window_end=end,
    )
    assert [(x.reason, x.notify) for x in d] == [(Reason.NEW, True)]
    assert (d[0].operation_name, d[0].sdk_version, d[0].metric) == (op, sdk, "duration")
    end2 = end + STEP
    d2, _ = step([], [(op, sdk, "duration")], s, policy, end2, window_end=end2)
    assert [(x.reason, x.notify) for x in d2] == [(Reason.RESOLVED, True)]
