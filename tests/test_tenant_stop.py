"""A tenant-wide stop (every operation silent) is one tenant alert, not one per operation.

The engine part runs detect() on synthetic bucket aggregates; the pipeline part runs the
scheduled job through the CLI on simulated Parquet files with a gap cut into them, with the
digest delivered through apprise's json:// to a local HTTP server.
"""

from __future__ import annotations

import json
from datetime import timedelta
from functools import cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from detector.anomaly import TENANT_FINGERPRINT, fingerprint_of
from detector.cli import EXIT_OK, main
from detector.detect.engine import DetectionPolicy, DetectionResult, detect
from detector.simulate import SimSpec, simulate
from tests.fixtures_alerting import Hook
from tests.fixtures_engine import T0, Incident, Part, make_aggs
from tests.test_pipeline import _iso

DAYS = 3.0
WE = T0 + timedelta(days=DAYS)
OPS = ("Join", "StartVideo", "StopVideo", "Mute", "Unmute", "HangUp")


def _parts() -> list[Part]:
    return [Part(op, "1.30.1.0_stable", 240.0, 0.01, 400.0) for op in OPS]


@cache
def stopped(hours: float = 1.0):
    """Six operations, every one of them silent for the last ``hours``."""
    start = WE - timedelta(hours=hours)
    incs = tuple(Incident(op, None, start, WE, volume_factor=0.0) for op in OPS)
    return make_aggs(_parts(), days=DAYS, incidents=incs, seed=4), start


def _detect(aggs, ws, we, **kw) -> DetectionResult:
    return detect(aggs, window=(ws, we), now=we, **kw)


def test_every_operation_silent_is_one_tenant_alert_since_the_stop() -> None:
    aggs, start = stopped()
    res = _detect(aggs, WE - timedelta(hours=3), WE, policy=DetectionPolicy())
    volume = [a for a in res.anomalies if a.metric == "volume"]
    assert [a.fingerprint for a in volume] == [TENANT_FINGERPRINT]
    tenant = volume[0]
    assert tenant.window_start == start and tenant.window_end == WE
    assert tenant.calls == 0 and tenant.observed == 0.0 and tenant.baseline > 0
    assert tenant.details["operations_silent"] == len(OPS)
    assert res.stats["tenant_stops"] == 1
    # The alerting buckets (what replays score) say the same: the tenant's, from the stop on.
    volume_buckets = [b for b in res.alert_buckets if b[2] == "volume"]
    assert {b[0] for b in volume_buckets} == {"*"}
    assert min(b[3] for b in volume_buckets) == start


def test_without_the_fold_each_operation_alerts_on_its_own() -> None:
    # What the fold replaces: the same data gives a volume alert per operation (most of them).
    aggs, _ = stopped()
    res = _detect(aggs, WE - timedelta(hours=3), WE, policy=DetectionPolicy(tenant_stop=False))
    fps = {a.fingerprint for a in res.anomalies if a.metric == "volume"}
    assert len(fps) >= 4 and fps <= {fingerprint_of(op, None, "volume") for op in OPS}


def test_a_stop_that_began_before_the_window_is_reported_from_its_start() -> None:
    aggs, start = stopped(3.0)
    res = _detect(aggs, WE - timedelta(hours=1), WE, policy=DetectionPolicy())
    assert [a.fingerprint for a in res.anomalies] == [TENANT_FINGERPRINT]
    assert res.anomalies[0].window_start == start


def test_one_operation_silent_is_that_operation_s_alert_not_the_tenant_s() -> None:
    start = WE - timedelta(hours=1)
    aggs = make_aggs(
        _parts(), days=DAYS, incidents=(Incident("Join", None, start, WE, volume_factor=0),)
    )
    res = _detect(aggs, WE - timedelta(hours=3), WE, policy=DetectionPolicy())
    fps = {a.fingerprint for a in res.anomalies}
    assert TENANT_FINGERPRINT not in fps
    assert fingerprint_of("Join", None, "volume") in fps


def test_an_operation_literally_named_star_cannot_take_the_tenant_fingerprint() -> None:
    assert fingerprint_of("*", None, "volume") != TENANT_FINGERPRINT
    aggs, _ = stopped()
    res = _detect(aggs, WE - timedelta(hours=3), WE, policy=DetectionPolicy())
    assert json.loads(json.dumps(res.anomalies[0].to_json()))["details"]["scope"] == "tenant"


# --------------------------------------------------------------------------------------------
# Through the pipeline: hourly scheduled runs over a gap in the files
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gap_sim(tmp_path_factory: pytest.TempPathFactory):
    """Three simulated days; every row from 04:20 to 07:00 of the last day cut out (as when
    the diagnostic setting breaks: nothing happens in the log, nothing arrives)."""
    sim = simulate(tmp_path_factory.mktemp("gap"), SimSpec(days=3, seed=3, scenario="quiet"))
    day = sim.end - timedelta(days=1)
    gap = (day + timedelta(hours=4, minutes=20), day + timedelta(hours=7))
    table = pq.read_table(sim.data_path)
    keep = None
    for col in ("CallClientTimeStamp", "TimeGenerated"):
        ts = table[col]
        inside = pc.and_(
            pc.greater_equal(ts, pa.scalar(gap[0], ts.type)),
            pc.less(ts, pa.scalar(gap[1], ts.type)),
        )
        out = pc.invert(pc.fill_null(inside, False))
        keep = out if keep is None else pc.and_(keep, out)
    pq.write_table(table.filter(keep), sim.data_path)
    return sim, gap


def test_scheduled_runs_over_a_tenant_stop_send_one_alert_then_resolve_it(
    gap_sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim, (gap_start, gap_end) = gap_sim
    hook = Hook()
    monkeypatch.setenv("TEST_ROUTE_URL", f"json://127.0.0.1:{hook.port}/hook")
    cfg = tmp_path / "detector.toml"
    # The first run judges one hour (max_window), not the default day: hourly runs from the
    # hour the stop began.
    cfg.write_text(
        f"""
[source]
kind = "file"
path = "{sim.data_path}"

[detection]
delay = "30m"
max_window = "1h"

[state]
path = "{tmp_path / "state"}"
models = "{tmp_path / "models"}"

[[notify.route]]
name = "hook"
urls = ["${{TEST_ROUTE_URL:-}}"]
min_severity = "info"
"""
    )
    fired: list[str] = []
    resolved: list[str] = []
    now = gap_start + timedelta(minutes=40)
    while now <= gap_end + timedelta(hours=3):
        assert main(["--config", str(cfg), "run", "--now", _iso(now)]) == EXIT_OK
        report = json.loads((tmp_path / "state" / "reports" / "latest.json").read_text())
        for d in report["alerts"]["decisions"]:
            if d["reason"] == "new":
                fired.append(d["fingerprint"])
            elif d["reason"] == "resolved":
                resolved.append(d["fingerprint"])
        now += timedelta(hours=1)
    hook.close()
    volume = [fp for fp in fired if fp.endswith("|volume")]
    assert volume == [TENANT_FINGERPRINT], fired
    assert TENANT_FINGERPRINT in resolved
    digest = b"".join(hook.bodies).decode()
    assert f"no call client operations since {gap_start:%H:%M} UTC" in digest
    assert "ingestion or the whole app" in digest


def test_a_quiet_spell_no_operation_alerts_on_is_not_a_stop() -> None:
    # A small tenant (6 operations x 20 calls an hour) silent for an hour: too few calls
    # for any operation's own volume test, so no operation alerts and neither does the tenant.
    start = WE - timedelta(hours=1)
    parts = [Part(op, "1.30.1.0_stable", 20.0, 0.01, 400.0) for op in OPS]
    incs = tuple(Incident(op, None, start, WE, volume_factor=0.0) for op in OPS)
    aggs = make_aggs(parts, days=DAYS, incidents=incs, seed=4)
    off = _detect(aggs, WE - timedelta(hours=3), WE, policy=DetectionPolicy(tenant_stop=False))
    assert not [a for a in off.anomalies if a.metric == "volume"]
    res = _detect(aggs, WE - timedelta(hours=3), WE, policy=DetectionPolicy())
    assert not res.anomalies and res.stats["tenant_stops"] == 0


def _alert(metric: str, start, end, version: str | None = None, effect: float = -0.9):
    from detector.anomaly import Anomaly

    return Anomaly(
        "StartVideo", version, metric, start, end, 1.0, 2.0, 0.0, "warning", 10, "anomaly",
        effect=effect,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("metric", "version", "effect", "offset_h", "expected"),
    [
        ("volume", None, -0.9, 0.0, True),  # an operation's own drop inside the quiet span
        ("volume", None, -0.9, 1.0, True),  # ... or in its aftermath (stop_recovery, 1 h)
        ("volume", None, -0.9, 3.0, False),  # later than the aftermath
        ("duration", None, 0.4, 0.0, False),  # a latency drift under way over a quiet night
        ("volume", "1.2.3", -0.9, 0.0, False),  # a version's drop is not the operation's
        ("volume", None, 0.5, 0.0, False),  # a rise
    ],
)
def test_only_an_operation_s_own_volume_drop_makes_a_quiet_span_a_stop(
    metric: str, version: str | None, effect: float, offset_h: float, expected: bool
) -> None:
    import pandas as pd

    from detector.detect.engine import _an_operation_stopped
    from detector.detect.stop import Stop

    times = pd.date_range(T0, periods=24, freq="5min", tz="UTC")
    stop = Stop(6, 12, 0.0, 100.0, 6, 6, confirmed=True, in_window=True)
    s = T0 + timedelta(minutes=30) + timedelta(hours=offset_h)
    alert = _alert(metric, s, s + timedelta(minutes=20), version, effect)
    assert _an_operation_stopped(stop, times, DetectionPolicy(), [alert]) is expected
