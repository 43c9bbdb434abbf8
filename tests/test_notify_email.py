"""Email through real apprise mailto:// to a real aiosmtpd server on 127.0.0.1."""

from __future__ import annotations

import email
import logging
import re
from email import policy as email_policy

import pandas as pd
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from detector.lifecycle import AlertState, LifecyclePolicy, step
from detector.notify import DeliveryContext, Route, deliver
from detector.notify.render import DigestLinks, kql_for
from detector.store.alerts import AlertStore
from detector.store.backend import LocalBackend
from detector.words import decode_portal_query
from tests.fixtures_alerting import STEP, T0, free_port, make_anomaly

PASSWORD = "Sm7pS3cretPassw0rd"
RESOURCE_ID = (
    "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-acs"
    "/providers/Microsoft.Communication/CommunicationServices/acs-prod"
)


class _Sink:
    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.envelopes.append(envelope)
        self.messages.append(
            email.message_from_bytes(envelope.content, policy=email_policy.default)
        )
        return "250 OK"


def _auth(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.password == PASSWORD.encode()
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def smtp():
    sink = _Sink()
    port = free_port()
    ctl = Controller(
        sink,
        hostname="127.0.0.1",
        port=port,
        authenticator=_auth,
        auth_require_tls=False,
    )
    ctl.start()
    try:
        yield sink, port
    finally:
        ctl.stop()


def _history(end):
    idx = pd.date_range(end - pd.Timedelta(hours=23), end, freq="5min", tz="UTC")
    base = 900.0
    obs = [base + (1500 if t >= end - pd.Timedelta(minutes=10) else 20) for t in idx]
    return pd.DataFrame(
        {
            "bucket_start": idx,
            "observed": obs,
            "baseline": base,
            "band_low": base * 0.8,
            "band_high": base * 1.3,
        }
    )


def _decisions():
    end = T0 + STEP
    anomalies = [
        make_anomaly(end=end, severity="critical"),
        make_anomaly(
            op="StartVideo", metric="failure_rate", end=end, observed=0.12, baseline=0.015
        ),
    ]
    d, _ = step(anomalies, {}, AlertState(), LifecyclePolicy(), end, window_end=end)
    return d, end


def test_email_digest_html_text_and_chart(tmp_path, smtp, caplog):
    sink, port = smtp
    caplog.set_level(logging.DEBUG)
    decisions, end = _decisions()
    url = (
        f"mailto://alerts:{PASSWORD}@127.0.0.1:{port}"
        "?from=acs-detector <alerts@example.com>&to=oncall@example.com"
    )
    route = Route("oncall", [url], min_severity="warning")
    history = {d.fingerprint: _history(pd.Timestamp(end)) for d in decisions}
    report = deliver(
        decisions,
        DeliveryContext([route], LocalBackend(tmp_path), end),
        links=DigestLinks(
            report_url="https://reports.example/acs/run-1.html", portal_resource_id=RESOURCE_ID
        ),
        history_for_charts=history,
    )
    assert report.ok, report.to_json()
    assert len(report.sent) == 1 and not report.failed
    assert len(sink.messages) == 1
    msg = sink.messages[0]
    assert msg["Subject"].startswith("ACS anomalies: 2 firing (1 critical)")
    assert "Join" in msg["Subject"] and "StartVideo" in msg["Subject"]
    assert msg["To"] == "oncall@example.com"
    assert msg.get_content_type() == "multipart/related"  # RFC 2387: images inline
    leaves = [p for p in msg.walk() if not p.is_multipart()]
    parts = {p.get_content_type(): p for p in leaves}
    assert {"text/plain", "text/html", "image/png"} <= set(parts)
    html = parts["text/html"].get_content()
    text = parts["text/plain"].get_content()
    for body in (html, text):
        assert "Join" in body and "StartVideo" in body
        assert "2,400 ms" in body and "900 ms" in body  # observed vs baseline
        assert "42 % of Join calls" in body  # traffic share
        assert "500/41003" in body  # top result code
        assert "0d8f2a3c-1111-4a4a-9c9c-000000000001" in body  # CallId
        assert "ACSCallClientOperations" in body  # KQL to reproduce
        assert "https://reports.example/acs/run-1.html" in body
    # ranked by severity: the critical Join alert comes before the warning StartVideo one
    assert html.index("CRITICAL Join") < html.index("WARNING StartVideo")
    # One chart per alert, each inline and referenced from the HTML part by its Content-ID.
    images = [p for p in leaves if p.get_content_type() == "image/png"]
    assert len(images) == 2
    for img in images:
        png = img.get_content()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
        assert img.get_content_disposition() == "inline"
        cid = img["Content-ID"].strip("<>")
        assert cid == img.get_filename() and cid.endswith(".png")
        assert f'src="cid:{cid}"' in html
    assert html.count('src="cid:') == 2  # no chart appended twice by apprise
    # "Open in Log Analytics" runs each alert's KQL: the link decodes back to it.
    links = re.findall(r'<a href="([^"]+)">Open in Log Analytics</a>', html)
    assert len(links) == 2
    rid, kql = decode_portal_query(links[0].replace("&amp;", "&"))
    assert rid == RESOURCE_ID and kql == kql_for(decisions[0].anomaly)
    # the store has nothing pending and a sent-log entry
    store = AlertStore(LocalBackend(tmp_path))
    assert store.outbox() == []
    assert [e["ok"] for e in store.log()] == [True]
    # the SMTP password never reaches any log line or the report
    assert PASSWORD not in caplog.text
    assert PASSWORD not in str(report.to_json())
    assert PASSWORD not in (tmp_path / "alerts" / "log.json").read_text()


def test_email_wrong_password_goes_to_outbox(tmp_path, smtp, caplog):
    sink, port = smtp
    caplog.set_level(logging.DEBUG)
    decisions, end = _decisions()
    bad = "Wr0ngPassw0rdXYZ"
    url = f"mailto://alerts:{bad}@127.0.0.1:{port}?from=alerts@example.com&to=oncall@example.com"
    report = deliver(
        decisions, DeliveryContext([Route("oncall", [url])], LocalBackend(tmp_path), end)
    )
    assert not report.ok and len(report.failed) == 1
    assert sink.messages == []
    items = AlertStore(LocalBackend(tmp_path)).outbox()
    assert len(items) == 1 and items[0].attempts == 1
    assert bad not in caplog.text
    assert bad not in (tmp_path / "alerts" / "outbox.json").read_text()
    assert "****" in items[0].target


def test_email_text_format_without_chart(tmp_path, smtp):
    sink, port = smtp
    decisions, end = _decisions()
    url = f"mailto://alerts:{PASSWORD}@127.0.0.1:{port}?from=a@example.com&to=b@example.com&format=text"
    report = deliver(decisions, DeliveryContext([Route("r", [url])], LocalBackend(tmp_path), end))
    assert report.ok
    (msg,) = sink.messages
    types = [p.get_content_type() for p in msg.walk() if not p.is_multipart()]
    assert "image/png" not in types  # no history given: chart skipped cleanly
    assert any(t in ("text/plain", "text/html") for t in types)


def test_an_alert_found_days_before_the_runs_end_still_gets_its_chart() -> None:
    # A manual rerun's clock is the end of its window; the chart series ends near the alert.
    # Drawn against the run's end, the day before it held no point of the series: no chart.
    import importlib

    deliver_mod = importlib.import_module("detector.notify.deliver")
    decisions, end = _decisions()
    history = {d.fingerprint: _history(pd.Timestamp(end)) for d in decisions}
    later = end + pd.Timedelta(days=3).to_pytimedelta()
    charts = deliver_mod._charts(decisions, history, later)
    assert set(charts) == {d.fingerprint for d in decisions if d.kind == "alert"}
    assert all(png.startswith(b"\x89PNG") for png in charts.values())
