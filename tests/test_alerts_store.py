"""Alert store (through the Backend protocol), status/silence/ack commands, self-health, run_alerts."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from detector.errors import ConfigError, StateError
from detector.lifecycle import AlertState, LifecyclePolicy, step
from detector.notify import (
    DeliveryContext,
    HealthPolicy,
    JudgedWindow,
    Route,
    check_health,
    run_alerts,
)
from detector.notify.commands import (
    ack,
    add_silence,
    config_silences,
    expire_silence,
    list_silences,
    parse_matcher,
    silences_text,
    status_data,
    status_text,
)
from detector.store.alerts import AlertStore, OutboxItem, RunRecord
from detector.store.backend import LocalBackend
from tests.fixtures_alerting import STEP, T0, make_anomaly

FP = "Join|1.30.1.1_stable|duration"


def test_state_save_is_compare_and_swap(tmp_path):
    b = LocalBackend(tmp_path)
    s1, s2 = AlertStore(b), AlertStore(b)
    st1, st2 = s1.load_state(), s2.load_state()
    end = T0 + STEP
    _, st1 = step([make_anomaly(end=end)], {}, st1, LifecyclePolicy(), end, window_end=end)
    s1.save_state(st1)
    with pytest.raises(StateError, match="changed by another run"):
        s2.save_state(st2)
    assert AlertStore(b).load_state().to_json() == st1.to_json()
    s1.save_state(st1)  # the winner can keep writing


def test_corrupt_state_is_a_state_error(tmp_path):
    (tmp_path / "alerts").mkdir()
    (tmp_path / "alerts" / "state.json").write_text("{not json")
    with pytest.raises(StateError, match="not valid JSON"):
        AlertStore(LocalBackend(tmp_path)).load_state()
    (tmp_path / "alerts" / "state.json").write_text(json.dumps({"schema": 99}))
    with pytest.raises(StateError):
        AlertStore(LocalBackend(tmp_path)).load_state()


def test_silence_commands(tmp_path):
    b = LocalBackend(tmp_path)
    now = T0
    s = add_silence(
        b, "operation=Join,sdk_version=1.30*", "2h", "release rollout", now, created_by="bob"
    )
    assert s.matchers == {"operation_name": "Join", "sdk_version": "1.30*"}
    assert s.ends_at == now + timedelta(hours=2)
    fp_s = add_silence(b, FP, "2026-11-26T00:00:00Z", "", now)
    assert fp_s.matchers == {"fingerprint": FP}
    assert {x.id for x in list_silences(b, now)} == {s.id, fp_s.id}
    expire_silence(b, s.id, now + timedelta(minutes=5))
    active = list_silences(b, now + timedelta(minutes=6))
    assert [x.id for x in active] == [fp_s.id]
    assert len(list_silences(b, now + timedelta(minutes=6), include_expired=True)) == 2
    assert "release rollout" in silences_text(list_silences(b, now, include_expired=True), now)
    with pytest.raises(StateError):
        expire_silence(b, "nope", now)
    for bad in ("participant=x", "Join", "operation", ""):
        with pytest.raises(ConfigError):
            parse_matcher(bad)
    with pytest.raises(ConfigError):
        add_silence(b, "metric=duration", "yesterday", "", now)


def test_config_silences():
    got = config_silences(
        {"silences": [{"operation": "Start*", "ends_at": "2026-12-01T00:00:00Z", "comment": "x"}]},
        T0,
    )
    assert got[0].matches("StartVideo|*|failure_rate") and got[0].active(T0)
    with pytest.raises(ConfigError) as exc:
        config_silences({"silences": [{"operation": "x"}, {"bogus": "y", "ends_at": "1d"}]}, T0)
    assert len(exc.value.problems) == 2


def test_ack_and_status(tmp_path):
    b = LocalBackend(tmp_path)
    end = T0 + STEP
    store = AlertStore(b, clock=lambda: end)  # the outbox item is queued at `end`
    _, st = step(
        [make_anomaly(end=end, severity="critical")],
        {},
        AlertState(),
        LifecyclePolicy(),
        end,
        window_end=end,
    )
    store.save_state(st)
    with pytest.raises(ConfigError, match="not firing"):
        ack(b, "StartVideo|*|duration", end)
    a = ack(b, FP, end + timedelta(minutes=1), by="alice", comment="looking")
    assert store.acks()[FP].by == "alice" == a.by
    store.record_run(
        RunRecord(
            started_at=end, window_start=T0, window_end=end, rows=4200, anomalies=1, notified=1
        )
    )
    store.put_outbox(
        [
            OutboxItem(
                "o1",
                "oncall",
                "t",
                "json://127.0.0.1:9/hook",
                "json",
                "T",
                "B",
                "markdown",
                created_at=end,
                last_error="error=500",
            )
        ]
    )
    add_silence(b, "metric=volume", "1d", "noisy", end)
    text = status_text(b, end + timedelta(hours=1), watermark=end)
    assert "critical" in text and FP in text and "acked by alice" in text
    assert "outbox: 1" in text and "age 1 h," in text and "error=500" in text
    assert "silences: 1" in text and "metric=volume" in text
    assert "watermark: 2026-11-25T08:05:00Z" in text and "rows=4200" in text
    data = status_data(b, end + timedelta(hours=1))
    assert data["firing"][0]["fingerprint"] == FP and data["outbox"][0]["age_hours"] == 1.0
    json.dumps(data)  # JSON-able for `status --json`


def test_status_on_empty_store(tmp_path):
    text = status_text(LocalBackend(tmp_path), T0)
    assert "last run: none recorded" in text and "firing: 0" in text and "outbox: 0" in text


def _run(status="ok", rows=100, at=T0, drift=()):
    return RunRecord(
        started_at=at,
        status=status,
        rows=rows,
        window_start=at - STEP,
        window_end=at,
        schema_drift=list(drift),
        error="QueryFailedError: 503" if status == "source_error" else "",
    )


def test_health_issues_fire_repeat_and_resolve():
    pol = HealthPolicy(
        source_error_runs=3, no_data_after=timedelta(hours=1), repeat_interval=timedelta(hours=1)
    )
    st = AlertState()
    runs = [_run("source_error", None, T0 + i * STEP) for i in range(2)]
    d, st = check_health(runs, [], st, pol, T0 + 2 * STEP)
    assert d == []  # two failures are not yet a pattern
    runs.append(_run("source_error", None, T0 + 2 * STEP))
    d, st = check_health(runs, [], st, pol, T0 + 3 * STEP)
    assert [(x.fingerprint, str(x.reason), x.notify, x.severity) for x in d] == [
        ("health|source_errors", "new", True, "critical")
    ]
    assert "503" in d[0].health["detail"]
    runs.append(_run("source_error", None, T0 + 3 * STEP))
    d, st = check_health(runs, [], st, pol, T0 + 4 * STEP)
    assert [str(x.reason) for x in d] == ["still_firing"] and not d[0].notify
    d, st = check_health(runs, [], st, pol, T0 + 4 * STEP + timedelta(hours=1))
    assert [str(x.reason) for x in d] == ["repeat_due"] and d[0].notify
    runs.append(_run("ok", 10, T0 + timedelta(hours=2)))
    d, st = check_health(runs, [], st, pol, T0 + timedelta(hours=2))
    assert [(str(x.reason), x.notify) for x in d] == [("resolved", True)]
    assert st.health == {}


def test_health_no_data_schema_drift_and_outbox():
    pol = HealthPolicy(
        no_data_after=timedelta(hours=1), outbox_warn_items=2, outbox_warn_age=timedelta(hours=5)
    )
    runs = [_run("ok", 50, T0)] + [_run("ok", 0, T0 + i * STEP) for i in range(1, 16)]
    runs[-1].schema_drift = ["missing column DurationMs"]
    box = [
        OutboxItem(str(i), "r", "t", "json://h/x", "json", "T", "B", "markdown", created_at=T0)
        for i in range(2)
    ]
    d, _ = check_health(runs, box, AlertState(), pol, T0 + 16 * STEP)
    names = {x.fingerprint: x for x in d}
    assert set(names) == {"health|no_data", "health|schema_drift", "health|outbox"}
    assert "DurationMs" in names["health|schema_drift"].health["detail"]
    assert "json://h/x" in names["health|outbox"].health["detail"]


def test_run_alerts_end_to_end(tmp_path, httpserver):
    httpserver.expect_request("/hook").respond_with_json({})
    b = LocalBackend(tmp_path)
    routes = [Route("hooks", [f"json://127.0.0.1:{httpserver.port}/hook"], min_severity="info")]
    alerting = {"n_of_m": "1/1", "repeat_interval": "4h", "health_source_error_runs": 2}
    end = T0 + STEP
    out = run_alerts(
        JudgedWindow([make_anomaly(end=end)], {}, window_end=end),
        DeliveryContext(routes, b, now=end),
        alerting=alerting,
        run=RunRecord(started_at=end, window_end=end, rows=10),
    )
    assert out.ok and [str(d.reason) for d in out.decisions] == ["new"]
    out.raise_for_delivery()  # nothing failed: no exception
    assert out.to_json()["counts"]["notified"] == 1
    # two source errors in a row: firing alert keeps its state, health notice goes out
    for i in (2, 3):
        e = T0 + i * STEP
        out = run_alerts(
            JudgedWindow([], {}, window_end=e),
            DeliveryContext(routes, b, now=e),
            alerting=alerting,
            run=RunRecord(started_at=e, status="source_error", error="SourceError: boom"),
        )
    reasons = {d.fingerprint: str(d.reason) for d in out.decisions}
    assert reasons == {"health|source_errors": "new", FP: "no_data"}
    bodies = [json.loads(r.get_data())["message"] for r, _ in httpserver.log]
    assert len(bodies) == 2 and "reading the log failed" in bodies[1]
    # ack mutes the repeat; runs are recorded with what they did
    ack(b, FP, T0 + 4 * STEP, by="carol")
    later = T0 + timedelta(hours=5)
    out = run_alerts(
        JudgedWindow([make_anomaly(end=later)], {}, window_end=later),
        DeliveryContext(routes, b, now=later),
        alerting=alerting,
        run=RunRecord(started_at=later, rows=5),
    )
    assert {d.fingerprint: str(d.reason) for d in out.decisions}[FP] == "acknowledged"
    runs = AlertStore(b).runs()
    assert [r.status for r in runs] == ["ok", "source_error", "source_error", "ok"]
    assert runs[0].notified == 1 and runs[-1].rows == 5
    # dry run writes nothing
    before = {p.name: p.read_bytes() for p in (tmp_path / "alerts").iterdir()}
    run_alerts(
        JudgedWindow([make_anomaly(op="X", end=later + STEP)], {}, window_end=later + STEP),
        DeliveryContext(routes, b, now=later + STEP, dry_run=True),
        alerting=alerting,
    )
    assert {p.name: p.read_bytes() for p in (tmp_path / "alerts").iterdir()} == before


def test_run_alerts_failed_delivery_saves_then_raises(tmp_path):
    from detector.errors import NotifyError
    from tests.fixtures_alerting import free_port

    b = LocalBackend(tmp_path)
    routes = [Route("hooks", [f"json://127.0.0.1:{free_port()}/hook"])]
    end = T0 + STEP
    out = run_alerts(
        JudgedWindow([make_anomaly(end=end)], {}, window_end=end),
        DeliveryContext(routes, b, now=end),
        alerting={},
        run=RunRecord(started_at=end, rows=3),
    )
    with pytest.raises(NotifyError, match="kept in the outbox"):
        out.raise_for_delivery()
    store = AlertStore(b)
    assert store.load_state().records[FP].status == "firing"  # state saved before raising
    assert len(store.outbox()) == 1 and store.runs()[-1].status == "delivery_failed"


def _aggregates(start, hours=2, slow_from=None):
    """Bucket aggregates for Join on two versions; durations ~900 ms, slower from slow_from."""
    import numpy as np
    import pandas as pd

    from detector.schema import BucketAggregates, duration_bin

    rows, hist = [], []
    for b in pd.date_range(start, start + pd.Timedelta(hours=hours), freq="5min", inclusive="left"):
        for ver, calls in (("1.30.1.1_stable", 40), ("1.29.0.0_stable", 60)):
            dur = (
                2400.0
                if slow_from is not None and b >= slow_from and ver.startswith("1.30")
                else 900.0
            )
            rows.append(
                {
                    "operation_name": "Join",
                    "sdk_version": ver,
                    "bucket_start": b,
                    "calls": calls,
                    "failures": 2,
                    "expected_errors": 0,
                    "dur_n": calls,
                    "log_dur_sum": calls * np.log(dur),
                    "log_dur_sumsq": calls * np.log(dur) ** 2,
                }
            )
            hist.append(
                {
                    "operation_name": "Join",
                    "sdk_version": ver,
                    "bucket_start": b,
                    "bin": int(duration_bin(dur)),
                    "count": calls,
                }
            )
    return BucketAggregates(stats=pd.DataFrame(rows), hist=pd.DataFrame(hist))


def test_run_alerting_adapter_resolves_from_history(tmp_path, httpserver):
    import pandas as pd

    from detector.notify import EngineOutput, run_alerting
    from detector.notify.chart import chart_png
    from detector.notify.evaluated import chart_history, evaluated_from_history

    httpserver.expect_request("/hook").respond_with_json({})
    b = LocalBackend(tmp_path)
    routes = [
        Route.from_config(
            {
                "name": "hooks",
                "urls": [f"json://127.0.0.1:{httpserver.port}/hook"],
                "min_severity": "info",
            }
        )
    ]
    alerting = {"resolve_after": timedelta(0), "recovery_evaluations": 1}
    start = pd.Timestamp(T0)
    hist = _aggregates(start, hours=2, slow_from=start + pd.Timedelta(minutes=100))
    w1 = (T0 + timedelta(minutes=100), T0 + timedelta(minutes=110))
    a = make_anomaly(end=w1[1], severity="critical")
    ev = evaluated_from_history(hist, w1)
    assert ev[FP]["observed"] == pytest.approx(2400, rel=0.03)
    assert ev["Join|*|failure_rate"]["observed"] == pytest.approx(0.04)  # 4 of 100 per bucket
    assert ev["Join|*|volume"]["observed"] == 100  # calls per bucket, both versions
    frames = chart_history(hist, [a], now=w1[1])
    assert frames[FP]["observed"].max() == pytest.approx(2400, rel=0.03)
    assert chart_png(frames[FP], a, now=w1[1])[:4] == b"\x89PNG"
    report = {
        "now": "2026-11-25T09:50:00Z",
        "window": {"start": "2026-11-25T09:40:00Z", "end": "2026-11-25T09:50:00Z"},
        "source": {"rows_read": 2100, "operations": 2000, "dropped": {"duplicate": 100}},
        "detection": {"partitions": 3},
    }
    out = run_alerting(
        EngineOutput([a], history=hist, bucket=timedelta(minutes=5)),
        DeliveryContext(routes, b, now=w1[1]),
        alerting=alerting,
        report=report,
    )
    assert out["ok"] and out["counts"]["new"] == 1 and not out["failed"]
    # next window: the 1.30 version is back to normal in the history -> resolved with its value
    hist2 = _aggregates(start, hours=3, slow_from=None)
    w2 = (w1[1], w1[1] + timedelta(minutes=10))
    report2 = {**report, "window": {"start": "2026-11-25T09:50:00Z", "end": "2026-11-25T10:00:00Z"}}
    out2 = run_alerting(
        EngineOutput([], history=hist2),
        DeliveryContext(routes, b, now=w2[1]),
        alerting=alerting,
        report=report2,
    )
    (d,) = [x for x in out2["decisions"] if x["fingerprint"] == FP]
    assert d["reason"] == "resolved" and d["current"]["observed"] == pytest.approx(900, rel=0.03)
    msg = json.loads(httpserver.log[-1][0].get_data())["message"]
    assert "RESOLVED Join slower" in msg and "now 9" in msg and "peak was 2,400 ms" in msg
    runs = AlertStore(b).runs()
    assert runs[0].rows == 2000 and runs[0].partitions == 3


def test_schema_drift_reasons_from_source_summary():
    from detector.notify.stage import schema_drift_reasons

    assert (
        schema_drift_reasons({"rows_read": 100, "operations": 90, "dropped": {"duplicate": 10}})
        == []
    )
    got = schema_drift_reasons(
        {
            "rows_read": 100,
            "operations": 20,
            "dropped": {"missing_operation_name": 80},
            "flagged": {"invalid_duration": 15},
            "schema_drift": ["column DurationMs missing"],
        }
    )
    assert (
        got[0] == "column DurationMs missing"
        and "80% of rows dropped as missing_operation_name" in got
    )
    assert "75% of operations flagged invalid_duration" in got
    # an input that is mostly unparseable lines (a changed export format) is drift too
    got = schema_drift_reasons(
        {"rows_read": 10, "operations": 2, "dropped": {"malformed_record": 8}}
    )
    assert got == ["80% of rows dropped as malformed_record"]


def test_validate_routes_for_check_config(caplog):
    from detector.notify import validate_routes

    secret = "xoxb-1-2-VerySecretBotTok"
    problems = validate_routes(
        [
            Route(
                "ok",
                [
                    f"slack://{secret}/#a",
                    "json://127.0.0.1:1/h",
                    "mailtos://u:pw1234@smtp.example.com?from=a@example.com&to=b@example.com",
                ],
            ),
            Route("bad", ["msteams://a/b/c", "${UNSET_URL}", "bogus://x"]),
            Route("empty", []),
        ]
    )
    assert len(problems) == 4, problems
    assert any("workflows://" in p for p in problems)
    assert any("environment reference" in p for p in problems)
    assert any("empty: no URLs" in p or "route empty" in p for p in problems)
    assert secret not in " ".join(problems) + caplog.text


def test_evaluated_skips_low_volume_and_ungated_candidates():
    import pandas as pd

    from detector.detect.candidate import Candidate
    from detector.notify.evaluated import evaluated_from_history

    hist = _aggregates(pd.Timestamp(T0), hours=1)
    w = (T0, T0 + STEP)  # one bucket: 40 calls on 1.30, 60 on 1.29, 100 fleet
    ev = evaluated_from_history(hist, w, min_calls=50)
    assert FP not in ev and "Join|1.30.1.1_stable|failure_rate" not in ev
    assert "Join|1.30.1.1_stable|volume" in ev and "Join|1.29.0.0_stable|duration" in ev
    cands = [
        Candidate.from_json(
            {
                "operation_name": "Join",
                "sdk_version": "1.29.0.0_stable",
                "metric": "duration",
                "reason": "suppressed_low_volume",
                "expected": 800.0,
            }
        ),
        Candidate.from_json(
            {
                "operation_name": "Join",
                "sdk_version": None,
                "metric": "duration",
                "reason": "not_significant",
                "expected": 850.0,
            }
        ),
    ]
    ev = evaluated_from_history(hist, w, candidates=cands, min_calls=50)
    assert "Join|1.29.0.0_stable|duration" not in ev
    assert ev["Join|*|duration"]["baseline"] == 850.0


def test_add_silence_from_argparse_style_dict(tmp_path):
    b = LocalBackend(tmp_path)
    s = add_silence(
        b, {"operation": "Join", "sdk_version": None, "metric": "duration"}, "30m", "", T0
    )
    assert s.matchers == {"operation_name": "Join", "metric": "duration"}
    with pytest.raises(ConfigError):
        add_silence(b, {"operation": None, "metric": ""}, "30m", "", T0)
    with pytest.raises(ConfigError):
        add_silence(b, {"participant": "x"}, "30m", "", T0)


def test_committed_batches_travel_with_the_state(tmp_path):
    b = LocalBackend(tmp_path)
    store = AlertStore(b)
    state = store.load_state()
    assert store.committed() == set()
    store.save_state(state, commit_batch="b1")
    store.save_state(state)  # a later save keeps what was committed
    again = AlertStore(b)
    assert again.load_state().to_json() == state.to_json()
    assert again.committed() == {"b1"}


def test_notification_log_keeps_the_latest_entries(tmp_path, monkeypatch):
    import detector.store.alerts as alerts

    monkeypatch.setattr(alerts, "MAX_NFLOG", 3)
    store = AlertStore(LocalBackend(tmp_path))
    for i in range(4):
        store.mark({f"d{i}/t": {"state": "intent"}})
    store.mark({"d1/t": {"state": "sent"}})  # an update moves the entry to the newest end
    assert list(store.nflog()) == ["d2/t", "d3/t", "d1/t"]
    with pytest.raises(ValueError, match="nflog state"):
        store.mark({"d9/t": {"state": "maybe"}})
