"""Issue 23, "one vocabulary": every rendered output says what moved in plain words with
units, never an internal feature name, and carries a Log Analytics link that decodes back
to the alert's KQL. Outputs: Slack, Teams, email, json:// (delivered to a real local HTTP
receiver), the plain text, and the HTML report."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

from detector.lifecycle import AlertState, LifecyclePolicy, step
from detector.notify import DeliveryContext, Route, deliver
from detector.notify.render import CHANNELS, DigestLinks, kql_for, render_digest
from detector.report_html import render_html_report
from detector.store.backend import LocalBackend
from detector.words import (
    INTERNAL_NAMES,
    change_text,
    decode_portal_query,
    log_analytics_scope,
    portal_query_url,
    rarity_words,
    what_moved,
)
from tests.fixtures_alerting import STEP, T0, make_anomaly

RESOURCE_ID = (
    "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-acs"
    "/providers/Microsoft.OperationalInsights/workspaces/la-acs"
)
LINKS = DigestLinks(portal_resource_id=RESOURCE_ID)
#: What the engine really puts in an anomaly record: the jargon the issue quotes.
JARGON = {
    "drivers": ["fail_z", "peer_fail_z", "dur_z"],
    "details": {"evidence_calls": 30, "span_buckets": 3, "gate_effect": 0.81},
}


REASON = "anomaly: duration p95 7051 ms vs 4541 ms (typical +81%, p=1e-09, span 3)"


def _anomalies():
    end = T0 + STEP
    out = [
        make_anomaly(
            sdk="1.40.1.0_stable",
            observed=7051.0,
            baseline=4541.0,
            calls=30,
            traffic_share=0.15,
            severity="critical",
            p_value=2e-4,
            end=end,
            **JARGON,
        ),
        make_anomaly(
            op="StartVideo",
            sdk=None,
            metric="volume",
            observed=12.0,
            baseline=30.0,
            baseline_calls=0,  # "baseline n=0" beside a real baseline, in the old wording
            provisional=True,
            end=end,
            **JARGON,
        ),
        make_anomaly(
            op="Join",
            sdk=None,
            metric="failure_rate",
            observed=0.12,
            baseline=0.015,
            failures=36,
            end=end,
            **JARGON,
        ),
    ]
    for a in out:
        a.reason = REASON
    return out


def _decisions():
    end = T0 + STEP
    d, _ = step(_anomalies(), {}, AlertState(), LifecyclePolicy(), end, window_end=end)
    return d, end


def _internal(text: str) -> list[str]:
    return [n for n in INTERNAL_NAMES if n in text]


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def _visible(html_text: str) -> str:
    p = _Text()
    p.feed(html_text)
    return "".join(p.parts)


@pytest.mark.parametrize("channel", CHANNELS)
def test_no_internal_names_and_one_effect_in_any_channel(channel):
    decisions, end = _decisions()
    msg = render_digest(decisions, channel=channel, now=end, links=LINKS)
    body = _visible(msg.body) if msg.body_format == "html" else msg.body
    for text in (msg.title, body, msg.text):
        assert _internal(text) == [], (channel, _internal(text))
    for text in (body, msg.text):
        # What moved, in plain words, with units, against the usual level; one effect only.
        assert "p95 duration +55 % (7,051 ms vs 4,541 ms usual) on 30 calls" in text
        assert "SDK 1.40.1.0_stable, 15 % of Join calls" in text
        assert "call volume -60 % (12 calls per bucket vs 30 calls per bucket usual)" in text
        assert "failure rate +10.5 points (12.0 % vs 1.50 % usual)" in text
        assert "+81" not in text  # the engine's other "typical" effect never shows
    if channel != "teams":  # Teams keeps to one line per alert (1,000 characters)
        for text in (body, msg.text):
            assert "since 2026-" in text
            assert "chance alone would show a change this large about once in 208 days" in text
            assert "usual level mostly borrowed from the operation across all SDK versions" in text


@pytest.mark.parametrize("channel", ["slack", "json", "email", "other"])
def test_every_linkable_message_opens_the_alerts_kql(channel):
    decisions, end = _decisions()
    msg = render_digest(decisions, channel=channel, now=end, links=LINKS)
    links = re.findall(r"https://portal\.azure\.com/[^\s)\"<]+", msg.body)
    assert len(links) == 3, msg.body
    by_kql = {kql_for(d.anomaly) for d in decisions}
    for link in links:
        rid, kql = decode_portal_query(link)
        assert rid == RESOURCE_ID and kql in by_kql


def test_json_webhook_delivered_in_plain_words(httpserver, tmp_path):
    httpserver.expect_request("/hook", method="POST").respond_with_json({"ok": True})
    decisions, end = _decisions()
    url = f"json://127.0.0.1:{httpserver.port}/hook"
    report = deliver(
        decisions,
        DeliveryContext([Route("hook", [url])], LocalBackend(tmp_path), end),
        links=LINKS,
    )
    assert report.ok, report.to_json()
    (req,) = [r for r, _ in httpserver.log]
    payload = json.loads(req.get_data())
    text = payload["title"] + payload["message"]
    assert _internal(text) == []
    assert "7,051 ms vs 4,541 ms usual" in text
    links = re.findall(r"\((https://portal\.azure\.com/[^)]+)\)", text)
    assert len(links) == 3
    by_kql = {kql_for(d.anomaly) for d in decisions}
    assert {decode_portal_query(u)[1] for u in links} == by_kql


def test_html_report_in_plain_words():
    page = render_html_report(
        anomalies=_anomalies(),
        run_report={"log_analytics": log_analytics_scope({"resource_id": RESOURCE_ID})},
    )
    visible = _visible(page)
    assert _internal(visible) == []
    assert "p95 duration +55 % (7,051 ms vs 4,541 ms usual) on 30 calls" in visible
    assert "30 calls in the window" in visible
    assert visible.count("Open in Log Analytics") == 3


def test_change_is_computed_once_from_the_values_shown():
    assert change_text("duration", 4192.0, 4541.0, effect=0.81) == "-8 %"
    assert change_text("failure_rate", 0.12, 0.015) == "+10.5 points"
    assert change_text("volume", None, None, effect=-0.5) == "-50 %"
    a = make_anomaly(observed=4192.0, baseline=4541.0, effect=0.81)
    assert "-8 % (4,192 ms vs 4,541 ms usual)" in what_moved(a)


def test_rarity_in_words():
    assert rarity_words(None) == ""
    assert "about once in 10 hours" in rarity_words(0.1)
    assert "about once in 208 days" in rarity_words(2e-4)
    assert "about once in 11 years" in rarity_words(1e-5)
    assert "less than once a century" in rarity_words(0.0)
    assert rarity_words(0.9) == "not unusual by the numbers alone"


def test_portal_link_round_trip_with_a_hostile_name():
    a = make_anomaly(op='Join" | take 1 //\n<script>')
    kql = kql_for(a)
    url = portal_query_url(kql, RESOURCE_ID)
    assert url is not None
    assert url.startswith(
        "https://portal.azure.com/#@/blade/Microsoft_Azure_Monitoring_Logs/LogsBlade/resourceId/"
        "%2Fsubscriptions%2F00000000-0000-0000-0000-000000000001%2FresourceGroups%2Frg-acs"
    )
    assert "/source/LogsBlade.AnalyticsShareLinkToQuery/q/H4sI" in url  # gzip magic, base64
    assert re.fullmatch(r"[A-Za-z0-9:/#@%._\-]+", url)  # nothing to escape in any channel
    assert decode_portal_query(url) == (RESOURCE_ID, kql)


def test_workspace_guid_alone_gives_no_link_and_says_so():
    scope = log_analytics_scope({"workspace_id": "0b1c2d3e-0000-4000-8000-000000000001"})
    assert scope["resource_id"] is None and "workspace GUID" in scope["note"]
    assert portal_query_url("T", None) is None
    assert portal_query_url("T", "not-a-resource-id") is None
    page = render_html_report(anomalies=_anomalies()[:1], run_report={"log_analytics": scope})
    assert "Open in Log Analytics" not in page and "only the workspace GUID" in page


def test_the_digest_and_the_report_show_the_same_window_of_an_alert() -> None:
    # Two windows of one alert in a run: the first scores higher, the second is further from
    # usual. The digest (lifecycle's pick) and the report (incidents) must show one window.
    from detector.words import incidents

    end = T0 + STEP
    first = make_anomaly(end=end - STEP / 2, observed=1500.0, baseline=900.0, score=0.9)
    second = make_anomaly(end=end, observed=2700.0, baseline=900.0, score=0.6)
    # A window of the slower partition whose p95 (one call) fell: further in ratio, wrong way.
    other_way = make_anomaly(end=end - STEP / 4, observed=90.0, baseline=900.0, effect=0.3)
    both = [first, other_way, second]
    decisions, _ = step(both, {}, AlertState(), LifecyclePolicy(), end, window_end=end)
    (alert,) = [d for d in decisions if d.kind == "alert"]
    (incident,) = incidents(both)
    assert alert.anomaly is not None and alert.anomaly.observed == 2700.0
    assert incident.worst.observed == 2700.0
    text = render_digest(decisions, channel="slack", now=end).text
    assert "2,700 ms" in text and "1,500 ms" not in text
