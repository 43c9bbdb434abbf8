"""Slack (webhook, bot) and Teams (workflows) payloads as apprise sends them, captured at the
HTTP layer with ``responses`` (Slack and Teams cannot run here); PII and secret checks."""

from __future__ import annotations

import json
import logging
import re
from datetime import timedelta

import pandas as pd
import pytest
import responses

from detector.lifecycle import AlertState, LifecyclePolicy, step
from detector.notify import DeliveryContext, DeliveryLimits, Route, deliver
from detector.notify.render import TEAMS_LIMIT, DigestLinks, render_digest
from detector.store.backend import LocalBackend
from tests.fixtures_alerting import STEP, T0, make_anomaly

SLACK_A, SLACK_B, SLACK_C = "T0SECRETA1", "B0SECRETB2", "SecretTokenCccccccccccc3"
SLACK_HOOK = f"https://hooks.slack.com/services/{SLACK_A}/{SLACK_B}/{SLACK_C}"
BOT_TOKEN = "xoxb-123456789012-987654321098-SecretBotToken77"
TEAMS_WF, TEAMS_SIG = "4a5b6c7d8e9f00112233445566778899", "SigSecretTeams0123456789abcdef"
TEAMS_URL = f"workflows://prod-12.westeurope.logic.azure.com:443/{TEAMS_WF}/{TEAMS_SIG}/"
TEAMS_RE = re.compile(r"https://[^/]+\.logic\.azure\.com(:443)?/workflows/.*")
SECRETS = [SLACK_A, SLACK_B, SLACK_C, BOT_TOKEN, TEAMS_SIG, "SecretBotToken77"]


def _decisions(n: int = 2, *, end=T0 + STEP):
    ops = ["Join", "StartVideo", "StartCall", "AcceptIncomingCall", "CreateView", "StopVideo"]
    anomalies = []
    for i in range(n):
        anomalies.append(
            make_anomaly(
                op=ops[i % len(ops)],
                sdk=f"1.{30 + i}.0.0_beta",
                metric="failure_rate" if i % 2 else "duration",
                observed=0.2 if i % 2 else 2000.0 + i,
                baseline=0.02 if i % 2 else 800.0,
                severity="critical" if i % 3 == 0 else "warning",
                score=0.5 + i / 100,
                end=end,
            )
        )
    d, _ = step(anomalies, {}, AlertState(), LifecyclePolicy(), end, window_end=end)
    return d


def _history(end):
    idx = pd.date_range(end - pd.Timedelta(hours=6), end, freq="5min", tz="UTC")
    return pd.DataFrame(
        {
            "bucket_start": idx,
            "observed": 900.0,
            "baseline": 880.0,
            "band_low": 700.0,
            "band_high": 1100.0,
        }
    )


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as r:
        yield r


def test_slack_webhook_payload(rsps, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    rsps.add(responses.POST, SLACK_HOOK, body="ok", status=200)
    decisions = _decisions(2)
    hist = {d.fingerprint: _history(pd.Timestamp(T0 + STEP)) for d in decisions}
    routes = [Route("chat", [SLACK_HOOK + "?footer=no"])]
    report = deliver(
        decisions,
        DeliveryContext(routes, LocalBackend(tmp_path), T0 + STEP),
        history_for_charts=hist,
    )
    assert report.ok, report.to_json()
    (call,) = rsps.calls
    payload = json.loads(call.request.body)
    assert payload["mrkdwn"] is True
    (att,) = payload["attachments"]
    assert att["title"].startswith("ACS anomalies: 2 firing (1 critical)")
    text = att["text"]
    assert "*CRITICAL Join slower" in text  # **bold** converted to Slack mrkdwn
    assert "ACSCallClientOperations" in text
    assert att["color"].startswith("#")
    # a webhook takes no files: no chart, and apprise did not have to warn about it
    assert "do not support attachments" not in caplog.text
    for s in SECRETS:
        assert s not in caplog.text
    assert report.sent[0].target.startswith("slack://")
    assert SLACK_C not in report.sent[0].target


def test_slack_blocks_payload(rsps, tmp_path):
    rsps.add(responses.POST, SLACK_HOOK, body="ok", status=200)
    url = f"slack://{SLACK_A}/{SLACK_B}/{SLACK_C}/#alerts?blocks=yes"
    report = deliver(
        _decisions(1), DeliveryContext([Route("chat", [url])], LocalBackend(tmp_path), T0 + STEP)
    )
    assert report.ok
    payload = json.loads(rsps.calls[0].request.body)
    blocks = payload["attachments"][0]["blocks"]
    types = [b["type"] for b in blocks]
    assert "section" in types
    section = next(b for b in blocks if b["type"] == "section")
    assert section["text"]["type"] == "mrkdwn" and "Join" in section["text"]["text"]
    assert payload["channel"] == "#alerts"


def test_slack_bot_payload_and_chart_upload(rsps, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    rsps.add(
        responses.POST,
        "https://slack.com/api/chat.postMessage",
        json={"ok": True, "channel": "C0123", "ts": "1.2"},
    )
    rsps.add(
        responses.GET,
        re.compile(r"https://slack.com/api/files.getUploadURLExternal.*"),
        json={"ok": True, "file_id": "F1", "upload_url": "https://files.slack.com/upload/v1/abc"},
    )
    rsps.add(responses.POST, "https://files.slack.com/upload/v1/abc", body="OK - 1000")
    rsps.add(
        responses.POST,
        "https://slack.com/api/files.completeUploadExternal",
        json={"ok": True, "files": [{"id": "F1", "title": "chart"}]},
    )
    decisions = _decisions(1)
    hist = {decisions[0].fingerprint: _history(pd.Timestamp(T0 + STEP))}
    routes = [Route("chat", [f"slack://{BOT_TOKEN}/#alerts"])]
    report = deliver(
        decisions,
        DeliveryContext(routes, LocalBackend(tmp_path), T0 + STEP),
        history_for_charts=hist,
    )
    assert report.ok, report.to_json()
    post = rsps.calls[0].request
    assert post.headers["Authorization"] == f"Bearer {BOT_TOKEN}"
    body = json.loads(post.body)
    assert body["channel"] == "#alerts" and "Join" in body["attachments"][0]["text"]
    urls = [c.request.url for c in rsps.calls]
    assert any("getUploadURLExternal" in u and "png" in u for u in urls)
    complete = json.loads(rsps.calls[-1].request.body)
    assert complete["channel_id"] == "C0123" and complete["files"][0]["title"].endswith(".png")
    for s in SECRETS:
        assert s not in caplog.text


def test_teams_adaptive_card_within_limit(rsps, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    rsps.add(responses.POST, TEAMS_RE, status=202)
    decisions = _decisions(25)
    routes = [Route("teams", [TEAMS_URL], min_severity="info")]
    report = deliver(
        decisions,
        DeliveryContext(routes, LocalBackend(tmp_path), T0 + STEP),
        links=DigestLinks(report_url="https://reports.example/acs/run-7.html"),
        limits=DeliveryLimits(max_items=50),
    )
    assert report.ok, report.to_json()
    (call,) = rsps.calls
    assert f"/workflows/{TEAMS_WF}/triggers/manual/paths/invoke" in call.request.url
    card = json.loads(call.request.body)
    assert card["type"] == "message"
    (att,) = card["attachments"]
    assert att["contentType"] == "application/vnd.microsoft.card.adaptive"
    content = att["content"]
    assert content["type"] == "AdaptiveCard"
    texts = {b.get("id"): b["text"] for b in content["body"] if b["type"] == "TextBlock"}
    title, body = texts["title"], texts["body"]
    assert len(title) + len(body) <= TEAMS_LIMIT
    assert "more" in body and "https://reports.example/acs/run-7.html" in body
    assert body.count("CRITICAL") >= 1
    for s in SECRETS:
        assert s not in caplog.text
    assert TEAMS_SIG not in json.dumps(report.to_json())


def test_teams_render_never_exceeds_limit():
    for n in (1, 5, 40):
        msg = render_digest(
            _decisions(n),
            channel="teams",
            now=T0 + STEP,
            links=DigestLinks(report_url="https://r.example/" + "x" * 200),
            max_items=100,
        )
        assert len(msg.title) + len(msg.body) <= TEAMS_LIMIT
        assert msg.omitted + sum(1 for line in msg.body.splitlines() if line.startswith("- ")) == n


def test_teams_retry_from_outbox_keeps_limit(rsps, tmp_path):
    rsps.add(responses.POST, TEAMS_RE, status=500)
    backend = LocalBackend(tmp_path)
    routes = [Route("teams", [TEAMS_URL], min_severity="info")]
    r1 = deliver(_decisions(25), DeliveryContext(routes, backend, T0 + STEP))
    assert not r1.ok
    rsps.replace(responses.POST, TEAMS_RE, status=200)
    r2 = deliver([], DeliveryContext(routes, backend, T0 + STEP + timedelta(hours=3)))
    assert r2.ok and r2.sent[0].retried
    content = json.loads(rsps.calls[-1].request.body)["attachments"][0]["content"]
    texts = {b.get("id"): b["text"] for b in content["body"] if b["type"] == "TextBlock"}
    assert texts["body"].startswith("_Delayed delivery: first attempt 3h00m ago")
    assert len(texts["title"]) + len(texts["body"]) <= TEAMS_LIMIT


def test_no_pii_in_any_rendered_message():
    end = T0 + STEP
    ua = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120 Safari/537.36"
    pid = "8:acs:11111111-2222-3333-4444-555555555555_0000001b-aaaa-bbbb"
    a = make_anomaly(
        end=end,
        sdk=f"1.30.1.1_stable {ua}",  # a raw user agent must never pass through
        details={"ParticipantId": pid, "UserAgent": ua, "participant_ids": [pid]},
        example_call_ids=[
            "0d8f2a3c-1111-4a4a-9c9c-000000000001",
            f"user <{pid}> {ua}",
            "alice@example.com x",
        ],
        top_result_codes=[{"result_signature": 500, "ParticipantId": pid, "count": 3}],
        drivers=["latency_z", ua],
    )
    d, _ = step([a], {}, AlertState(), LifecyclePolicy(), end, window_end=end)
    for ch in ("slack", "teams", "email", "json", "other"):
        m = render_digest(d, channel=ch, now=end)
        for text in (m.title, m.body, m.text):
            assert pid not in text and "acs:1111" not in text
            assert "Mozilla" not in text and "AppleWebKit" not in text
            assert "alice@example.com" not in text
        assert "0d8f2a3c-1111-4a4a-9c9c-000000000001" in m.text


def test_failure_alerts_say_how_many_calls_failed():
    """The on-call engineer sees whether 30 failures are one broken call or 30 users."""
    end = T0 + STEP
    a = make_anomaly(
        metric="failure_rate",
        observed=0.2,
        baseline=0.02,
        end=end,
        failures=30,
        details={"failed_calls": 1},
    )
    d, _ = step([a], {}, AlertState(), LifecyclePolicy(), end, window_end=end)
    for ch in ("slack", "teams", "email"):
        assert "30 failed in 1 call" in render_digest(d, channel=ch, now=end).text
