"""Config loading: defaults, env substitution, every problem listed at once, secrets hidden."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from detector.config import (
    Secret,
    config_from_dict,
    format_duration,
    load_config,
    parse_duration,
    redact_url,
)
from detector.errors import ConfigError

DATA = Path(__file__).parent / "data" / "config"
ROOT = Path(__file__).parent.parent


def test_shipped_config_is_valid_without_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("ACS_DETECTOR_EMAIL_URL", "ACS_DETECTOR_WEBHOOK_URL"):
        monkeypatch.delenv(var, raising=False)
    cfg = load_config(ROOT / "config" / "detector.toml")
    assert cfg.source["kind"] == "file"
    assert cfg.detection["bucket"] == timedelta(minutes=5)
    assert cfg.detection["baseline"] == timedelta(days=7)
    # ${VAR:-} defaults disable the URL instead of failing the config.
    assert cfg.routes[0].urls == ()
    assert cfg.state_path == ROOT / ".acs-detector"


def test_good_file_and_env_substitution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_HOOK_URL", "slack://TA/TB/TC/#alerts")
    cfg = load_config(DATA / "good.toml")
    route = cfg.routes[0]
    assert route.urls[0] == "slack://TA/TB/TC/#alerts"
    assert isinstance(route.urls[0], Secret)
    assert route.min_severity == "critical" and route.operations == ("Join",)
    assert cfg.detection["bucket"] == timedelta(minutes=15)
    assert cfg.maintenance[0].operation_name == "Join"
    # relative paths resolve against the project root: the parent of a config/ directory
    assert cfg.state_path == DATA.parent / "state"


def test_secrets_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_HOOK_URL", "slack://TA/TB/sup3rs3cret/#alerts")
    cfg = load_config(DATA / "good.toml")
    text = json.dumps(cfg.redacted()) + repr(cfg) + repr(cfg.routes)
    assert "sup3rs3cret" not in text
    assert "<secret>" in text


def test_every_problem_listed_with_its_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UNSET_SECRET_FOR_TEST", raising=False)
    with pytest.raises(ConfigError) as info:
        load_config(DATA / "bad-many.toml")
    msg = str(info.value)
    expected = [
        "source.kind",
        "source.extra: unknown key",
        "detection.bucket",
        "detection.baseline",
        "state.path",
        "notify.route[0].name",
        "notify.route[0].urls[0]",
        "UNSET_SECRET_FOR_TEST is not set",
        "notify.route[0].min_severity",
        "maintenance[0]: end must be after start",
        "surprise: unknown section",
    ]
    for part in expected:
        assert part in msg, part
    assert len(info.value.problems) >= len(expected)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"source": {"kind": "log_analytics"}}, "exactly one of workspace_id, resource_id"),
        (
            {"source": {"kind": "log_analytics", "workspace_id": "a", "resource_id": "b"}},
            "exactly one of",
        ),
        ({"source": {"credential": "password"}}, "source.credential"),
        ({"detection": {"bucket": "1h", "baseline": "2h"}}, "at least 4 buckets"),
        ({"notify": {"route": {"name": "x"}}}, "array of tables"),
        ({"alerting": {"max_items": 0}}, "alerting.max_items"),
        ({"alerting": {"n_of_m": "7/2"}}, "alerting.n_of_m"),
        ({"alerting": {"silences": [{"operation": "Join"}]}}, "ends_at: required"),
        ({"alerting": {"typo_key": 1}}, "alerting.typo_key: unknown key"),
        ({"detection": {"min_callz": 5}}, "min_callz"),
        ({"source": {"kind": "file", "wat": 1}}, "source.wat: unknown key"),
    ],
)
def test_bad_values(data: dict, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        config_from_dict(data, env={})


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[source\nkind=1")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)


@pytest.mark.parametrize(
    ("text", "td"),
    [("5m", timedelta(minutes=5)), ("7d", timedelta(days=7)), ("90s", timedelta(seconds=90))],
)
def test_durations_round_trip(text: str, td: timedelta) -> None:
    assert parse_duration(text) == td
    assert parse_duration(format_duration(td)) == td


@pytest.mark.parametrize(
    ("url", "hidden"),
    [
        ("mailtos://bot:pa55@smtp.example.com?to=a@b.c", "pa55"),
        ("slack://TA/TB/TC/#alerts", "TC"),
        ("workflows://host:443/WFID/SIGNATURE/", "SIGNATURE"),
    ],
)
def test_redact_url(url: str, hidden: str) -> None:
    assert hidden not in redact_url(url)


def test_loading_a_config_does_not_import_the_forest() -> None:
    # `run` imports scikit-learn and skops (~2.5 s) on a thread while the source reads; a
    # config check that imported them first would put that time back in front of the read.
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    code = (
        "import sys; from detector.config import load_config; load_config(sys.argv[1]); "
        "heavy = sorted(m for m in ('sklearn', 'skops', 'apprise') if m in sys.modules); "
        "print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(root / "config" / "detector.toml")],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
    ).stdout.strip()
    # (apprise comes with the notify package the alerting keys are checked by: ~0.1 s)
    assert out in ("", "apprise"), out


# --- notification URLs (issue 21, item 12) -----------------------------------------------------

BOT = "xoxb-123456789012-987654321098-LiteralBotToken77"


def _route_config(tmp_path: Path, urls: str) -> Path:
    path = tmp_path / "detector.toml"
    route = f'[[notify.route]]\nname = "chat"\nurls = {urls}\n'
    path.write_text(f'[source]\nkind = "file"\npath = "data"\n\n{route}')
    return path


@pytest.mark.parametrize(
    ("url", "token"),
    [
        (f"slack://{BOT}/#alerts", "LiteralBotToken77"),
        ("json://hooks.example/hook/PathTokenSecret99", "PathTokenSecret99"),
        ("slack://T0AAAAAAA/B0BBBBBBB/LiteralWebhookToken", "LiteralWebhookToken"),
        ("slack://T0AAAAAAA/B0BBBBBBB/LiteralWebhookToken", "T0AAAAAAA"),
    ],
)
def test_check_config_never_prints_a_literal_url_in_clear(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, token: str
) -> None:
    from detector.cli import EXIT_OK, main

    path = _route_config(tmp_path, f'["{url}"]')
    assert main(["--config", str(path), "check-config"]) == EXIT_OK
    out = capsys.readouterr()
    assert token not in out.out + out.err
    assert url.split("://")[0] + "://" in out.out  # the scheme is still there to read


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("slack://not a url", "slack://"),
        ("htps://hooks.example/x", "htps://"),
        ("json://", "json://"),
    ],
)
def test_check_config_rejects_what_apprise_rejects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, named: str
) -> None:
    from detector.cli import EXIT_USAGE, main

    path = _route_config(tmp_path, f'["json://127.0.0.1:9/hook", "{url}"]')
    assert main(["--config", str(path), "check-config"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "notify.route[0].urls[1] (chat)" in err and named in err
    assert "apprise does not accept" in err


def test_route_without_urls_is_a_problem() -> None:
    for urls in ([], ["", "  "]):
        with pytest.raises(ConfigError, match=r"notify.route\[0\].urls \(x\): no URL"):
            config_from_dict({"notify": {"route": [{"name": "x", "urls": urls}]}}, env={})


def test_route_switched_off_by_its_environment_is_a_warning(caplog) -> None:
    cfg = config_from_dict(
        {"notify": {"route": [{"name": "x", "urls": ["${A_URL:-}", "${B_URL:-}"]}]}}, env={}
    )
    assert cfg.routes[0].urls == ()
    (warning,) = cfg.warnings
    assert "notify.route[0] (x): every URL is an empty" in warning
    assert warning in caplog.text


# --- issue 24: every setting range-checked, every problem listed at once ---------------------


def test_nonsense_the_engine_used_to_accept_is_rejected_naming_each_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # latest_span = 0 used to pass and then loop until MemoryError; the others were coerced
    # (30.9 -> 30, true -> 1, 1.7 -> 1) or failed with no key and hid the rest.
    from detector.cli import EXIT_USAGE, main

    path = tmp_path / "detector.toml"
    path.write_text(
        "[detection]\nlatest_span = 0\nmin_calls = 30.9\npersist_n = true\n"
        'spans = [1.7, 3]\nalpha = "0.01x"\n'
    )
    assert main(["--config", str(path), "check-config"]) == EXIT_USAGE
    err = capsys.readouterr().err
    for key in ("latest_span", "min_calls", "persist_n", "spans", "alpha"):
        assert f"detection.{key}: must be" in err, key


def test_check_config_prints_every_detection_setting(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from detector.cli import EXIT_OK, main
    from detector.detect.policy import DetectionPolicy

    monkeypatch.setenv("TEST_HOOK_URL", "json://127.0.0.1:9/x")
    assert main(["--config", str(DATA / "good.toml"), "check-config"]) == EXIT_OK
    printed = capsys.readouterr().out
    for name in DetectionPolicy.__dataclass_fields__:
        assert f'"detection.{name}"' in printed, name


def test_a_retired_setting_still_loads_with_a_warning_and_is_ignored(caplog) -> None:
    from detector.config import RETIRED
    from detector.detect.policy import DetectionPolicy

    for key in RETIRED["detection"]:
        cfg = config_from_dict({"detection": {key: 1.5, "alpha": 0.02}}, env={})
        (warning,) = cfg.warnings
        assert (
            warning.startswith(f"detection.{key}: no longer used, ignored")
            and warning in caplog.text
        )
        assert key not in cfg.raw["detection"]
        assert cfg.detection.policy.alpha == 0.02  # the rest of the section still counts
        assert DetectionPolicy.from_mapping({key: 1.5}) == DetectionPolicy()
        # a wrong value of a retired key is no problem either: it is not read at all
        config_from_dict({"detection": {key: "nonsense"}}, env={})


def test_a_retired_setting_from_an_unset_variable_is_no_problem() -> None:
    cfg = config_from_dict({"detection": {"recent_z": "${NOPE_UNSET_VAR}"}}, env={})
    assert "detection.recent_z: no longer used" in cfg.warnings[0]


def test_a_retired_setting_given_to_the_policy_is_logged(caplog) -> None:
    from detector.detect.policy import DetectionPolicy

    assert DetectionPolicy.from_mapping({"recent_z": 2.0}) == DetectionPolicy()
    assert "detection.recent_z: no longer used" in caplog.text
