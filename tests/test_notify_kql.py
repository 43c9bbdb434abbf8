"""The reproduce-KQL in every alert is valid KQL for ACSCallClientOperations (Microsoft's Kusto
language service), and hostile operation/version strings stay string data."""

from __future__ import annotations

import pytest

from detector.notify.render import kql_for
from tests.fixtures_alerting import make_anomaly
from tests.fixtures_loganalytics import kusto  # noqa: F401  (session fixture)

HOSTILE = [
    'Join" | take 1 //',
    "Join' or 1==1 or '",
    'x\\"; drop table\n| project secret',
    "line1\r\nline2\ttab",
    "ünïcødé ✓ 漢字",
    '@"verbatim"',
    "Join```\n<https://evil.example|click>\n```",
    "bidi\u202egnp.exe\u2066 zero\u200bwidth\x00nul",
    "emoji 😀 and \\u0060 literally",
]


@pytest.mark.node
@pytest.mark.parametrize(
    "anomaly",
    [
        make_anomaly(),
        make_anomaly(sdk=None, metric="failure_rate"),
        make_anomaly(op="StartVideo", metric="volume", sdk="1.2.3-beta.1"),
    ],
    ids=["version-duration", "fleet-failure-rate", "volume"],
)
def test_reproduce_kql_is_valid(kusto, anomaly) -> None:  # noqa: F811
    text = kql_for(anomaly, bin_size="15m")
    result = kusto.check(text)
    assert [d for d in result["diagnostics"] if d["severity"] == "Error"] == []
    assert [c["name"] for c in result["columns"]] == [
        "CallClientTimeStamp",
        "calls",
        "failure_rate",
        "p95_ms",
    ]


@pytest.mark.node
@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_names_stay_data(kusto, value: str) -> None:  # noqa: F811
    text = kql_for(make_anomaly(op=value))
    result = kusto.check(text)
    assert [d for d in result["diagnostics"] if d["severity"] == "Error"] == []
    assert len(result["columns"]) == 4
    line = next(x for x in text.splitlines() if "OperationName" in x)
    assert line.startswith("| where OperationName =~ ") and "\n" not in line
    # Nothing can close a Markdown code fence around the query or hide in it.
    assert text.isascii() and "`" not in text and "<" not in text


def test_unclean_version_never_echoed() -> None:
    text = kql_for(make_anomaly(sdk="1.30.1.1_stable Mozilla/5.0 (X11; Linux)"))
    assert "Mozilla" not in text and 'SdkVersion startswith "1.30.1.1_stable"' in text
