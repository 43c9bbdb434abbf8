"""json:// through real apprise to a local HTTP server; outbox retry; reruns send nothing."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pytest
from werkzeug.wrappers import Response

from detector.lifecycle import AlertState, LifecyclePolicy, step
from detector.notify import DeliveryContext, DeliveryLimits, Route, deliver
from detector.notify.render import DigestLinks
from detector.store.alerts import AlertStore
from detector.store.backend import LocalBackend
from tests.fixtures_alerting import STEP, T0, Hook, free_port, make_anomaly

SECRET_HEADER = "HdrS3cretValue42"


def _run(backend, end, anomalies, evaluated, routes, policy=None, state_store=True, now=None, **kw):
    """One scheduled run: lifecycle step + deliver + save state (what the pipeline does)."""
    store = AlertStore(backend)
    state = store.load_state()
    now = now or end
    decisions, state = step(
        anomalies, evaluated, state, policy or LifecyclePolicy(), now, window_end=end
    )
    report = deliver(decisions, DeliveryContext(routes, backend, now), **kw)
    if state_store:
        store.save_state(state)
    return decisions, report


def test_json_payload_shape(httpserver, tmp_path):
    httpserver.expect_request("/hook", method="POST").respond_with_json({"ok": True})
    end = T0 + STEP
    url = f"json://127.0.0.1:{httpserver.port}/hook"
    _, report = _run(
        LocalBackend(tmp_path),
        end,
        [make_anomaly(end=end, severity="critical")],
        {},
        [Route("hooks", [url])],
        links=DigestLinks(report_url="/var/lib/acs/report.html"),
    )
    assert report.ok and len(report.sent) == 1
    (req,) = [r for r, _ in httpserver.log]
    payload = json.loads(req.get_data())
    assert set(payload) >= {"version", "title", "message", "type"}
    assert payload["type"] == "failure"  # critical -> apprise FAILURE
    assert payload["title"].startswith("ACS anomalies: 1 firing (1 critical)")
    assert "CRITICAL Join slower" in payload["message"]
    assert "ACSCallClientOperations" in payload["message"]
    assert "/var/lib/acs/report.html" in payload["message"]
    assert req.headers["User-Agent"] == "acs-detector"


def test_500_goes_to_outbox_then_delivered_once(httpserver, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    backend = LocalBackend(tmp_path)
    url = f"json://127.0.0.1:{httpserver.port}/hook?+X-Token={SECRET_HEADER}"
    routes = [Route("hooks", [url])]
    httpserver.expect_oneshot_request("/hook").respond_with_response(Response("boom", 500))
    end1 = T0 + STEP
    d1, r1 = _run(backend, end1, [make_anomaly(end=end1)], {}, routes)
    assert [str(d.reason) for d in d1] == ["new"]
    assert not r1.ok and len(r1.failed) == 1 and r1.failed[0].status == "FAILURE"
    assert len(r1.outboxed) == 1 and r1.outbox_size == 1
    assert "500" in r1.failed[0].error

    # next run: the endpoint is back; same anomaly still firing -> only the outbox message goes
    httpserver.expect_request("/hook").respond_with_json({})
    end2 = end1 + STEP
    d2, r2 = _run(backend, end2, [make_anomaly(end=end2)], {}, routes)
    assert [str(d.reason) for d in d2] == ["still_firing"]
    assert r2.ok and len(r2.sent) == 1 and r2.sent[0].retried
    assert r2.outbox_size == 0
    delivered = [json.loads(r.get_data()) for r, _ in httpserver.log if r.headers.get("X-Token")]
    assert len(delivered) == 2  # the failed attempt and the one retry
    assert "Delayed delivery: first attempt 5m ago" in delivered[-1]["message"]

    # a third run sends nothing more
    end3 = end2 + STEP
    _, r3 = _run(backend, end3, [make_anomaly(end=end3)], {}, routes)
    assert r3.sent == [] and r3.failed == []
    assert len(httpserver.log) == 2
    assert SECRET_HEADER not in caplog.text
    assert SECRET_HEADER not in (tmp_path / "alerts" / "outbox.json").read_text()
    assert SECRET_HEADER not in (tmp_path / "alerts" / "log.json").read_text()


def test_down_target_then_up_delivered_exactly_once(tmp_path):
    backend = LocalBackend(tmp_path)
    port = free_port()  # nothing listens here yet
    routes = [Route("hooks", [f"json://127.0.0.1:{port}/hook"])]
    end1 = T0 + STEP
    _, r1 = _run(backend, end1, [make_anomaly(end=end1)], {}, routes)
    assert not r1.ok and r1.failed[0].status == "FAILURE"
    status = AlertStore(backend).outbox()
    assert len(status) == 1

    hook = Hook(port)
    try:
        end2 = end1 + STEP
        _, r2 = _run(backend, end2, [make_anomaly(end=end2)], {}, routes)
        assert r2.ok and [d.retried for d in r2.sent] == [True]
        end3 = end2 + STEP
        _, r3 = _run(backend, end3, [make_anomaly(end=end3)], {}, routes)
        assert r3.sent == []
        assert len(hook.bodies) == 1
        assert "Join" in json.loads(hook.bodies[0])["message"]
    finally:
        hook.close()


def test_rerun_of_window_sends_nothing(httpserver, tmp_path):
    httpserver.expect_request("/hook").respond_with_json({})
    backend = LocalBackend(tmp_path)
    routes = [Route("hooks", [f"json://127.0.0.1:{httpserver.port}/hook"])]
    end = T0 + STEP
    anomalies = [make_anomaly(end=end), make_anomaly(op="StartVideo", end=end)]
    _, r1 = _run(backend, end, anomalies, {}, routes)
    assert len(r1.sent) == 1
    for later in (timedelta(minutes=1), timedelta(hours=6)):
        d, r = _run(backend, end, anomalies, {}, routes, now=end + later)
        assert {str(x.reason) for x in d} == {"suppressed_duplicate"}
        assert r.sent == [] and r.failed == []
    assert len(httpserver.log) == 1


def test_flapping_data_no_storm(httpserver, tmp_path):
    httpserver.expect_request("/hook").respond_with_json({})
    backend = LocalBackend(tmp_path)
    routes = [Route("hooks", [f"json://127.0.0.1:{httpserver.port}/hook"])]
    policy = LifecyclePolicy(n=2, m=3, resolve_after=timedelta(minutes=30))
    fp = make_anomaly().fingerprint
    for i in range(24):  # two hours of hit, clean, hit, clean ...
        end = T0 + STEP * (i + 1)
        hit = i % 2 == 0
        _run(
            backend,
            end,
            [make_anomaly(end=end)] if hit else [],
            {} if hit else {fp: 900.0},
            routes,
            policy=policy,
        )
    assert len(httpserver.log) == 1  # fired once, never resolved while flapping


def test_route_filters_and_dry_run(httpserver, tmp_path):
    httpserver.expect_request("/crit").respond_with_json({})
    httpserver.expect_request("/video").respond_with_json({})
    backend = LocalBackend(tmp_path)
    p = httpserver.port
    routes = [
        Route("crit", [f"json://127.0.0.1:{p}/crit"], min_severity="critical"),
        Route("video", [f"json://127.0.0.1:{p}/video"], min_severity="info", operations=["Start*"]),
    ]
    end = T0 + STEP
    anomalies = [make_anomaly(end=end), make_anomaly(op="StartVideo", end=end, severity="info")]
    d, _ = step(anomalies, {}, AlertState(), LifecyclePolicy(), end, window_end=end)
    dry = deliver(d, DeliveryContext(routes, backend, end, dry_run=True))
    assert dry.ok and dry.sent == [] and len(dry.messages) == 1
    assert dry.messages[0]["route"] == "video"
    assert list(tmp_path.iterdir()) == []  # dry run writes nothing
    assert httpserver.log == []
    real = deliver(d, DeliveryContext(routes, backend, end))
    assert [x.route for x in real.sent] == ["video"]
    (req,) = [r for r, _ in httpserver.log]
    msg = json.loads(req.get_data())["message"]
    assert "StartVideo" in msg and "Join" not in msg


def test_outbox_expires_old_items(httpserver, tmp_path):
    backend = LocalBackend(tmp_path)
    port = free_port()
    routes = [Route("hooks", [f"json://127.0.0.1:{port}/hook"])]
    end = T0 + STEP
    _run(backend, end, [make_anomaly(end=end)], {}, routes)
    assert len(AlertStore(backend).outbox()) == 1
    later = end + timedelta(days=3)
    r = deliver(
        [],
        DeliveryContext(routes, backend, later),
        limits=DeliveryLimits(outbox_max_age=timedelta(days=2)),
    )
    assert [e.status for e in r.expired] == ["EXPIRED"] and r.outbox_size == 0
    assert r.expired[0].age_seconds > 2 * 86400


@pytest.mark.parametrize("bad", ["msteams://a/b/c", "bogus://nothing", "slack://not a url"])
def test_undeliverable_url_leaves_the_outbox_with_its_reason(tmp_path, bad):
    """Issue 21: a URL apprise can never use is not retried forever; the reason is visible."""
    end = T0 + STEP
    backend = LocalBackend(tmp_path)
    d, _ = step([make_anomaly(end=end)], {}, AlertState(), LifecyclePolicy(), end, window_end=end)
    r = deliver(d, DeliveryContext([Route("x", [bad])], backend, end))
    assert not r.ok and not r.failed
    assert [u.status for u in r.undeliverable] == ["INVALID_URL"]
    assert r.outbox_size == 0 and AlertStore(backend).outbox() == []
    (row,) = r.to_json()["by_target"]
    assert row["undeliverable"] == 1 and "INVALID_URL" in row["error"]
    (entry,) = AlertStore(backend).nflog().values()
    assert entry["state"] == "undeliverable" and "INVALID_URL" in entry["reason"]
    # the next run has nothing left to retry
    again = deliver([], DeliveryContext([Route("x", [bad])], backend, end + STEP))
    assert again.ok and not again.sent and not again.undeliverable
