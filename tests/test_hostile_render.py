"""Hostile strings from the log go out inert in every channel (issue 21, item 4).

A corpus of names an attacker can put in ``OperationName``, ``SdkVersion``, ``ResultSignature``
and ``CallId`` is rendered into one digest and delivered through real apprise: Slack and Teams
captured at the HTTP layer (``responses``), json:// to a local HTTP server, email to a local
SMTP server; the plain text alternative and the HTML run report are checked as they are.
Every alert must still be in the message, and nothing in it may act: no link, image, mention,
tag, code-fence break, control or bidi character.
"""

from __future__ import annotations

import email
import json
import re
from email import policy as email_policy
from html.parser import HTMLParser

import pytest
import responses
from aiosmtpd.controller import Controller

from detector.anomaly import Anomaly
from detector.escape import ESCAPERS, clean, for_markdown, kql_string
from detector.lifecycle import AlertState, Decision, LifecyclePolicy, step
from detector.notify import DeliveryContext, Route, deliver
from detector.notify.render import CALL_DIAGNOSTICS_HINT, render_digest
from detector.report_html import render_html_report
from detector.store.backend import LocalBackend
from tests.fixtures_alerting import STEP, T0, free_port, make_anomaly

SLACK_HOOK = "https://hooks.slack.com/services/T0AAAAAAA/B0BBBBBBB/CccccccccccccccccccccccC"
TEAMS_URL = "workflows://prod-12.westeurope.logic.azure.com:443/4a5b6c7d8e9f/SigSig0123456789/"
TEAMS_RE = re.compile(r"https://[^/]+\.logic\.azure\.com(:443)?/workflows/.*")

#: Operation names as an attacker writes them into the client log.
HOSTILE = [
    "Join```\n<https://evil.example|click here>\n```",
    "<https://evil.example|Reset your password>",
    "<script>alert(1)</script>",
    "@channel <!channel> <!here> <@U024BE7LH> @here",
    "[click](https://evil.example) ![pixel](https://evil.example/p.png)",
    "<at>Everyone</at> <img src=x onerror=alert(1)>",
    "Join\u202egnp.exe\u2066x\u2069\u200b\ufeff",
    "Join\x00\x1b[31m\r\nBcc: victim@example.com",
    "**bold** _italic_ ~strike~ `code` # heading",
    "Join|Evil|duration",
    "50%7C%25",
    '" | take 1 //\\',
    "Cost $\\frac{1}{$ ^_^ $x",  # matplotlib mathtext in a chart title
]
#: Versions, codes and CallIds from the same log rows.
HOSTILE_VERSION = "1.2|<https://evil.example|x>`@channel"
HOSTILE_CODE = {"result_signature": "<!channel>", "sub_code": "`[x](http://e.x)`", "count": 3}
HOSTILE_CALL = "<https://evil.example|call>"

# What an acting payload would contain, per channel, after apprise converted it.
INVISIBLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
MD_LINK = re.compile(r"(?<!\\)\[[^\]\n]*(?<!\\)\]\(")


def _decisions() -> tuple[list[Decision], list[Anomaly]]:
    end = T0 + STEP
    anomalies = [
        make_anomaly(
            op=op,
            sdk=HOSTILE_VERSION if i % 2 else "1.30.1.1_stable",
            metric="failure_rate" if i % 3 == 0 else "duration",
            severity="critical" if i % 2 else "warning",
            end=end,
            top_result_codes=[HOSTILE_CODE, {"result_signature": 500, "count": 9}],
            example_call_ids=[HOSTILE_CALL, "0d8f2a3c-1111-4a4a-9c9c-000000000001"],
        )
        for i, op in enumerate(HOSTILE)
    ]
    decisions, _ = step(anomalies, {}, AlertState(), LifecyclePolicy(), end, window_end=end)
    assert len(decisions) == len(HOSTILE) and all(d.notify for d in decisions)
    return decisions, anomalies


def _assert_inert_markdown(text: str, *, mrkdwn: bool = False) -> None:
    """No raw tag, link, mention, image or invisible character in a Markdown/mrkdwn text.

    Slack's mrkdwn has no ``[text](url)`` syntax (apprise turns an unescaped one into
    ``<url|text>``, which the "<" check catches), so there a literal ``[x](y)`` is text.
    """
    text = text.replace(CALL_DIAGNOSTICS_HINT, "")  # our own words ("resource > Monitoring")
    assert "<" not in text and ">" not in text, text  # no <url|x>, <!channel>, <at>, <script>
    assert not INVISIBLE.search(text)
    assert mrkdwn or not MD_LINK.search(text), MD_LINK.search(text)
    assert "<!channel" not in text and "<@" not in text


def _assert_fences_hold(text: str, n_alerts: int) -> None:
    """Each alert's KQL block opens and closes on a line of its own; nothing else has ```."""
    fences = [line for line in text.splitlines() if "```" in line]
    assert fences == ["```"] * (2 * n_alerts), fences
    assert text.count("```") == 2 * n_alerts


def _shown_all(text: str) -> None:
    """Every alert is in the message (none dropped by its name)."""
    assert text.count("CRITICAL") + text.count("WARNING") >= len(HOSTILE)


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as r:
        yield r


def test_slack_payload_is_inert(rsps, tmp_path):
    rsps.add(responses.POST, SLACK_HOOK, body="ok", status=200)
    decisions, _ = _decisions()
    routes = [Route("chat", [SLACK_HOOK + "?footer=no"], max_items=50)]
    report = deliver(
        decisions,
        DeliveryContext(routes, LocalBackend(tmp_path), T0 + STEP),
    )
    assert report.ok, report.to_json()
    payload = json.loads(rsps.calls[0].request.body)
    (att,) = payload["attachments"]
    text = att["text"]
    # A raw "<" would open a Slack link or mention; "@channel" could notify everyone.
    _assert_inert_markdown(text, mrkdwn=True)
    assert "@channel" not in text and "@here" not in text
    _assert_fences_hold(text, len(HOSTILE))
    _shown_all(text)
    assert "<" not in att["title"] and not INVISIBLE.search(att["title"])


def test_teams_card_is_inert(rsps, tmp_path):
    rsps.add(responses.POST, TEAMS_RE, status=202)
    decisions, _ = _decisions()
    routes = [Route("teams", [TEAMS_URL], max_items=50)]
    report = deliver(
        decisions,
        DeliveryContext(routes, LocalBackend(tmp_path), T0 + STEP),
    )
    assert report.ok, report.to_json()
    card = json.loads(rsps.calls[0].request.body)
    content = card["attachments"][0]["content"]
    assert "msteams" not in content or not content["msteams"].get("entities")  # no mention
    texts = {b.get("id"): b["text"] for b in content["body"] if b["type"] == "TextBlock"}
    for text in texts.values():
        _assert_inert_markdown(text)
    assert "CRITICAL" in texts["body"]


def test_json_message_is_inert(httpserver, tmp_path):
    httpserver.expect_request("/hook", method="POST").respond_with_json({"ok": True})
    decisions, _ = _decisions()
    routes = [Route("hooks", [f"json://127.0.0.1:{httpserver.port}/hook"], max_items=50)]
    report = deliver(
        decisions,
        DeliveryContext(routes, LocalBackend(tmp_path), T0 + STEP),
    )
    assert report.ok, report.to_json()
    (req,) = [r for r, _ in httpserver.log]
    payload = json.loads(req.get_data())
    for key in ("title", "message"):
        _assert_inert_markdown(payload[key])
    _assert_fences_hold(payload["message"], len(HOSTILE))
    _shown_all(payload["message"])


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attrs: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attrs.update(name for name, _ in attrs)


class _Sink:
    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.messages.append(
            email.message_from_bytes(envelope.content, policy=email_policy.default)
        )
        return "250 OK"


def test_email_is_inert(tmp_path):
    sink, port = _Sink(), free_port()
    ctl = Controller(sink, hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        decisions, _ = _decisions()
        url = f"mailto://127.0.0.1:{port}?from=alerts@example.com&to=oncall@example.com"
        routes = [Route("mail", [url], max_items=50)]
        report = deliver(
            decisions,
            DeliveryContext(routes, LocalBackend(tmp_path), T0 + STEP),
        )
    finally:
        ctl.stop()
    assert report.ok, report.to_json()
    (msg,) = sink.messages
    assert msg["Bcc"] is None and "victim" not in str(msg["To"])  # no header injection
    assert not INVISIBLE.search(str(msg["Subject"]))
    parts = {p.get_content_type(): p.get_content() for p in msg.walk() if not p.is_multipart()}
    tags = _Tags()
    tags.feed(parts["text/html"])
    assert tags.tags <= {"div", "p", "strong", "h3", "table", "tr", "td", "pre", "code", "small"}
    assert tags.attrs <= {"style"}
    assert not INVISIBLE.search(parts["text/html"].replace("\r\n", "\n"))
    _shown_all(parts["text/html"])
    # apprise derives the text/plain part from the HTML: plain text shows "<" as itself,
    # so there only invisible and control characters could act.
    assert not INVISIBLE.search(parts["text/plain"].replace("\r\n", "\n"))


@pytest.mark.parametrize("channel", ["slack", "teams", "json", "other", "email"])
def test_rendered_text_alternative_is_inert(channel):
    """What logs, the outbox and run reports keep (``Message.text``) is inert too."""
    decisions, _ = _decisions()
    m = render_digest(decisions, channel=channel, now=T0 + STEP, max_items=50)
    _assert_inert_markdown(m.text)
    _assert_fences_hold(m.text, len(HOSTILE))
    assert not INVISIBLE.search(m.title) and "\n" not in m.title


def test_html_report_is_inert():
    _, anomalies = _decisions()
    page = render_html_report(anomalies=anomalies, run_report={"run_id": "<script>x</script>"})
    tags = _Tags()
    tags.feed(page)
    assert "script" not in tags.tags and "at" not in tags.tags and "onerror" not in tags.attrs
    assert not INVISIBLE.search(page.replace("\n", " "))


@pytest.mark.parametrize("value", HOSTILE)
def test_every_escaper_is_total_and_one_line(value):
    for name, esc in ESCAPERS.items():
        out = esc(value, 200)
        assert "\n" not in out and not INVISIBLE.search(out), name
    assert clean(value) == clean(clean(value))
    literal = kql_string(value)
    assert literal.isascii() and "`" not in literal and "|" not in literal
    assert "<" not in for_markdown(value) and "`" not in for_markdown(value)


def test_terminal_output_has_no_escape_sequences(tmp_path):
    """``run``'s console summary and ``status`` print names from the log to a terminal."""
    from detector.notify.commands import status_text
    from detector.store.alerts import AlertStore
    from detector.summary import console_summary

    _, anomalies = _decisions()
    end = T0 + STEP
    report = {
        "mode": "manual",
        "run_id": "r1",
        "window": {"start": "a", "end": "b"},
        "source": {},
        "anomalies": [a.to_json() for a in anomalies],
    }
    _, state = step(anomalies, {}, AlertState(), LifecyclePolicy(), end, window_end=end)
    backend = LocalBackend(tmp_path)
    AlertStore(backend).save_state(state)
    for text in (console_summary(report), status_text(backend, end)):
        assert not INVISIBLE.search(text), INVISIBLE.search(text)
        assert "\x1b" not in text and "\r" not in text
        assert text.count("\n") >= len(HOSTILE)  # every alert still listed
