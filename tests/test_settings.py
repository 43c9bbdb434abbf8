"""Every setting is range-checked once, from its section's constraints table.

The nonsense fed to each key comes from the tables themselves (each constraint names values it
must reject), so a key added to a table is covered without touching this file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import fields
from datetime import timedelta
from pathlib import Path

import pytest

from detector.cli import EXIT_OK, EXIT_USAGE, main
from detector.config import (
    ALERTING,
    DETECTION,
    SCHEMA,
    SOURCE,
    AlertingSettings,
    alerting_settings,
    config_from_dict,
    describe,
)
from detector.detect.policy import DetectionPolicy
from detector.errors import ConfigError
from detector.settings import (
    POLICY,
    Bucket,
    Constraint,
    Duration,
    Integer,
    IntList,
    Options,
    Real,
    check_table,
)
from detector.timeutil import parse_duration

# A valid route and maintenance window, so a nonsense value in them is the only problem.
ROUTE_OK = {"name": "oncall", "urls": ["json://127.0.0.1:9/hook"]}
WINDOW_OK = {"start": "2026-11-20T22:00:00Z", "end": "2026-11-20T23:00:00Z"}


def _cases() -> Iterator[tuple[str, str, object]]:
    """(section, key, nonsense value) for every key of every table."""
    for section, table in SCHEMA.items():
        for key, param in table.items():
            constraint = param.constraint
            assert isinstance(constraint, Constraint), f"{section}.{key}: not a Constraint"
            bad = constraint.nonsense()
            assert bad, f"{section}.{key}: its constraint names no nonsense to test with"
            for value in bad:
                yield section, key, value


CASES = list(_cases())


def _doc(section: str, key: str, value: object) -> tuple[dict[str, object], str]:
    """A config document with ``value`` at ``section.key`` and the full key a problem names."""
    if section == "notify.route":
        return {"notify": {"route": [{**ROUTE_OK, key: value}]}}, f"notify.route[0].{key}"
    if section == "maintenance":
        return {"maintenance": [{**WINDOW_OK, key: value}]}, f"maintenance[0].{key}"
    return {section: {key: value}}, f"{section}.{key}"


def _toml(value: object) -> str:
    """A TOML literal for the simple values the constraints name as nonsense."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def _toml_doc(section: str, key: str, value: object) -> str:
    """The same document as :func:`_doc`, as TOML text."""
    if section == "notify.route":
        return f"[[notify.route]]\n{_body({**ROUTE_OK, key: value})}"
    if section == "maintenance":
        return f"[[maintenance]]\n{_body({**WINDOW_OK, key: value})}"
    return f"[{section}]\n{_body({key: value})}"


def _body(table: dict[str, object]) -> str:
    return "".join(f"{k} = {_toml(v)}\n" for k, v in table.items())


@pytest.mark.parametrize(("section", "key", "value"), CASES, ids=lambda x: repr(x)[:30])
def test_every_setting_rejects_nonsense_naming_its_key(
    section: str, key: str, value: object
) -> None:
    doc, full_key = _doc(section, key, value)
    with pytest.raises(ConfigError) as info:
        config_from_dict(doc, env={})
    assert any(p.startswith(full_key) for p in info.value.problems), info.value.problems


@pytest.mark.parametrize(
    ("section", "key"),
    sorted({(s, k) for s, k, _ in CASES}),
)
def test_check_config_exits_2_naming_each_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], section: str, key: str
) -> None:
    value = next(v for s, k, v in CASES if (s, k) == (section, key))
    _, full_key = _doc(section, key, value)
    path = tmp_path / "detector.toml"
    path.write_text(_toml_doc(section, key, value))
    assert main(["--config", str(path), "check-config"]) == EXIT_USAGE
    assert full_key in capsys.readouterr().err


def test_every_detection_policy_field_has_a_constraint() -> None:
    policy_fields = {f.name for f in fields(DetectionPolicy)}
    assert policy_fields <= set(DETECTION), sorted(policy_fields - set(DETECTION))
    pipeline_keys = set(DETECTION) - policy_fields
    assert pipeline_keys == {"delay", "lateness", "max_window", "step", "max_catchup"}
    # The policy's keys keep their default in the policy class: one place.
    assert all(DETECTION[k].default is POLICY for k in policy_fields)


def test_default_config_builds_the_default_policy() -> None:
    cfg = config_from_dict({}, env={})
    assert cfg.detection.policy == DetectionPolicy()
    assert DetectionPolicy.from_mapping(dict(cfg.detection)) == DetectionPolicy()
    assert cfg.detection.policy.config_hash() == DetectionPolicy().config_hash()


def test_table_defaults_pass_their_own_constraints() -> None:
    for section, table in SCHEMA.items():
        problems = check_table(section, table, {}).problems
        required = {
            f"{section}.{k}" for k, p in table.items() if p.default is None and not p.nullable
        }
        assert {p.split(":")[0] for p in problems} == required


def test_check_config_prints_every_setting(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("ACS_DETECTOR_WEBHOOK_URL", "json://user:hunter2@127.0.0.1/x")
    assert main(["--config", str(root / "config" / "detector.toml"), "check-config"]) == EXIT_OK
    out = capsys.readouterr().out
    settings = json.loads(out)["settings"]
    for section in ("source", "detection", "state", "alerting", "health"):
        for key in SCHEMA[section]:
            assert f"{section}.{key}" in settings, f"{section}.{key}"
    assert settings["detection.latest_span"] == "12"
    assert settings["detection.bucket"] == "5m"
    assert settings["alerting.n_of_m"] == "1/1"
    assert settings["source.overlap"] == "2d"  # the Log Analytics default, read from its class
    assert settings["notify.route[0].urls"] == "[<secret>]"  # it came from the environment
    assert "hunter2" not in out


def test_describe_shows_given_values_and_hides_secrets() -> None:
    cfg = config_from_dict(
        {
            "detection": {"latest_span": 6, "spans": [1, 2]},
            "alerting": {"n_of_m": [2, 3], "health_outbox_items": 4},
            "notify": {"route": [{"name": "x", "urls": ["${HOOK}"]}]},
        },
        env={"HOOK": "json://127.0.0.1:9/hook/TOKEN99"},
    )
    rows = dict(describe(cfg))
    assert rows["detection.latest_span"] == "6" and rows["detection.spans"] == "[1, 2]"
    assert rows["alerting.n_of_m"] == "[2, 3]"
    assert rows["alerting.health_outbox_items"] == "4"
    assert "TOKEN99" not in json.dumps(rows)


# --- the constraints one by one (case tables) ---------------------------------------------

GOOD = [
    (Integer(1), 30, 30),
    (Integer(1), "30", 30),  # from ${VAR}
    (Integer(0, 5), 0, 0),
    (Real(0, 1, closed="neither"), 0.01, 0.01),
    (Real(0, 1, closed="neither"), "0.01", 0.01),
    (Real(0, 1, closed="right"), 1, 1.0),
    (Real(1), 3, 3.0),
    (Duration(), "5m", timedelta(minutes=5)),
    (Duration(), "1h30m", timedelta(minutes=90)),
    (Duration(), timedelta(hours=1), timedelta(hours=1)),
    (Duration(lo_open=False), "0s", timedelta(0)),
    (Duration(seconds_ok=True), 90, timedelta(seconds=90)),
    (Bucket(), "15m", timedelta(minutes=15)),
    (IntList(1), [1, 3, 6], (1, 3, 6)),
    (IntList(1), (1, 3), (1, 3)),
    (Options(("drop", "rise")), "rise", "rise"),
]

BAD = [
    (Integer(1), 0, "must be an integer >= 1, got 0"),
    (Integer(1), 30.9, "got 30.9"),
    (Integer(1), True, "got True"),
    (Integer(1, 5), 6, "in [1, 5]"),
    (Real(0, 1, closed="neither"), "0.01x", "got '0.01x'"),
    (Real(0, 1, closed="neither"), 0, "in (0, 1)"),
    (Real(0, 1, closed="neither"), float("nan"), "got nan"),
    (Real(1), False, "got False"),
    (Duration(), "0s", "> 0"),
    (Duration(), "soon", "not a duration"),
    (Duration(), 5, "like '5m'"),
    (Duration(whole_seconds=True), "1.5s", "whole number of seconds"),
    (Bucket(), "7m", "divid"),
    (IntList(1), [1.7, 3], "list of integers"),
    (IntList(1), [], "non-empty"),
    (Options(("drop", "rise")), "both", "one of 'drop', 'rise'"),
]


@pytest.mark.parametrize(("constraint", "value", "expected"), GOOD)
def test_constraint_accepts_and_converts(
    constraint: Constraint, value: object, expected: object
) -> None:
    assert constraint.check(value) == expected


@pytest.mark.parametrize(("constraint", "value", "message"), BAD)
def test_constraint_rejects_with_a_message(
    constraint: Constraint, value: object, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        constraint.check(value)


def test_check_table_lists_every_problem_and_unknown_keys() -> None:
    checked = check_table(
        "detection", DETECTION, {"latest_span": 0, "alpha": "0.01x", "min_callz": 5}
    )
    assert [p.split(":")[0] for p in checked.problems] == [
        "detection.alpha",
        "detection.latest_span",
    ]
    assert checked.unknown == {"min_callz": 5}
    assert checked.values["delay"] == timedelta(minutes=10)  # defaults filled
    assert "bucket" not in checked.values  # POLICY: the policy class's default applies


# --- durations: one parser -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "td"),
    [
        ("5m", timedelta(minutes=5)),
        (" 5 m ", timedelta(minutes=5)),  # the config parser's spacing
        ("1h30m", timedelta(minutes=90)),  # the engine parser's compound form
        ("2D", timedelta(days=2)),
        ("250ms", timedelta(milliseconds=250)),
        ("1.5h", timedelta(minutes=90)),
        ("1w", timedelta(weeks=1)),
        ("0s", timedelta(0)),
        (timedelta(seconds=3), timedelta(seconds=3)),
    ],
)
def test_parse_duration_accepts_both_old_grammars(text: str | timedelta, td: timedelta) -> None:
    assert parse_duration(text) == td


@pytest.mark.parametrize("text", ["", "5", "m", "5x", "-5m", "1.2.3m", "5m-", "five minutes"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


# --- the alerting stage's settings ---------------------------------------------------------


def test_a_plain_alerting_table_is_checked_and_defaulted_once() -> None:
    settings = alerting_settings({"max_items_per_digest": 4, "resolve_after": "0s"})
    assert isinstance(settings, AlertingSettings)
    assert settings.max_items == 4  # the older key still sets the digest size
    assert settings.resolve_min_calls == ALERTING["resolve_min_calls"].default
    assert settings.outbox_max_age == timedelta(days=2)
    assert settings.lifecycle.resolve_after == timedelta(0)
    with pytest.raises(ConfigError, match="alerting.resolve_min_calls"):
        alerting_settings({"resolve_min_calls": "many"})


def test_source_keys_of_log_analytics_are_in_the_table() -> None:
    from detector.source.log_analytics import LogAnalyticsSettings

    la = {f.name for f in fields(LogAnalyticsSettings)}
    assert la <= set(SOURCE), sorted(la - set(SOURCE))


def test_a_bad_value_from_the_environment_is_not_echoed() -> None:
    env = {"A": "s3cret-alpha", "D": "t0ken-delay", "N": "n0pe"}
    doc = {
        "detection": {"alpha": "${A}", "delay": "${D}", "min_calls": "${N}"},
        "source": {"kind": "${N}", "credential": "${A}"},
        "alerting": {"n_of_m": "${D}", "report_url": "${A}"},
    }
    with pytest.raises(ConfigError) as info:
        config_from_dict(doc, env=env)
    text = str(info.value) + repr(info.value.problems)
    assert len(info.value.problems) == 7
    for secret in env.values():
        assert secret not in text
