"""Issue 21 (delivery): exactly once per target as near as a crash allows, bounded sends,
routes without URLs, undeliverable messages, the per-target summary.

Crash tests run the alerting stage in a real subprocess (``tests/crash_child.py``) that dies at
one point of delivery, against a real aiosmtpd server and a real HTTP receiver in this
process, then run it again (a later window, as the next scheduled run) and count what each
target received.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from detector.notify import DeliveryContext, JudgedWindow, Route, run_alerts
from detector.notify.commands import status_text
from detector.store.alerts import AlertStore, RunRecord
from detector.store.backend import LocalBackend
from detector.summary import console_summary
from tests.fixtures_alerting import STEP, T0, Hook, TricklingHook, free_port, make_anomaly

ROOT = Path(__file__).resolve().parents[1]


class _Mailbox:
    """An SMTP server that counts a message only once it has answered 250 to a live client.

    ``hold``: the first DATA waits (``holding`` is set) until ``release`` is set; if the client
    dies meanwhile, aiosmtpd cancels the handler and nothing is accepted (``dropped``).
    """

    def __init__(self, hold: bool = False) -> None:
        self.accepted: list[bytes] = []
        self.dropped = 0
        self.hold = hold
        self.holding = threading.Event()
        self.release = threading.Event()

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        if self.hold:
            self.hold = False
            self.holding.set()
            try:
                while not self.release.is_set():
                    await asyncio.sleep(0.02)
            except asyncio.CancelledError:  # aiosmtpd cancels the handler when the client goes
                self.dropped += 1
                raise
        self.accepted.append(envelope.content)
        return "250 OK"


@pytest.fixture
def mailbox():
    box = _Mailbox()
    port = free_port()
    ctl = Controller(box, hostname="127.0.0.1", port=port, auth_require_tls=False)
    ctl.start()
    try:
        yield box, f"mailto://127.0.0.1:{port}?from=a@example.com&to=oncall@example.com"
    finally:
        box.release.set()
        ctl.stop()


@pytest.fixture
def hook():
    h = Hook()
    try:
        yield h, f"json://127.0.0.1:{h.port}/hook"
    finally:
        h.close()


def _child(store: Path, smtp: str, hook: str, point: str, k: int, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.crash_child", str(store), smtp, hook, point, str(k), *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run(store: Path, smtp: str, hook: str, point: str, k: int, *extra: str) -> int:
    proc = _child(store, smtp, hook, point, k, *extra)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 1, 137), err[-2000:]
    return proc.returncode


# Per crash point: copies (SMTP, webhook) after the crashed run and two clean reruns. The
# SMTP target is first in the route. after_send_before_mark is the one window we resolve as
# at-least-once: the target acknowledged, the process died before recording it.
CRASH_POINTS = {
    "none": (1, 1),
    "after_intent": (1, 1),
    "after_commit": (1, 1),
    "between_targets": (1, 1),
    "after_mark_before_removal": (1, 1),
    "after_send_before_mark": (2, 1),
}


@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_kill_at_each_delivery_point_loses_nothing_and_repeats_nothing(
    tmp_path, mailbox, hook, point
):
    box, smtp = mailbox
    h, url = hook
    code = _run(tmp_path, smtp, url, point, 1)
    assert code == (0 if point == "none" else 137)
    for k in (2, 3):  # the next scheduled runs judge later windows; the anomaly goes on
        assert _run(tmp_path, smtp, url, "none", k) == 0
    assert (len(box.accepted), len(h.bodies)) == CRASH_POINTS[point]
    store = AlertStore(LocalBackend(tmp_path))
    assert store.outbox() == []
    states = sorted(e["state"] for e in store.nflog().values())
    if point == "after_intent":  # the dead run's two intents, then the rerun's digest
        assert states == ["sent", "sent", "superseded", "superseded"]
    else:
        assert states == ["sent", "sent"]


def test_kill_while_smtp_holds_data(tmp_path, mailbox, hook):
    box, smtp = mailbox
    h, url = hook
    box.hold = True
    proc = _child(tmp_path, smtp, url, "none", 1)
    assert box.holding.wait(60), proc.stderr.read() if proc.poll() is not None else ""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    box.release.set()
    deadline = time.monotonic() + 10
    while not box.dropped and time.monotonic() < deadline:
        time.sleep(0.05)
    assert box.dropped == 1 and not box.accepted and not h.bodies
    for k in (2, 3):
        assert _run(tmp_path, smtp, url, "none", k) == 0
    assert (len(box.accepted), len(h.bodies)) == (1, 1)


def test_slow_but_alive_webhook_gets_one_copy(tmp_path, mailbox):
    box, smtp = mailbox
    slow = Hook(delay=8)
    try:
        url = f"json://127.0.0.1:{slow.port}/hook"
        t = time.monotonic()
        assert _run(tmp_path, "-", url, "none", 1, "12") == 0
        assert time.monotonic() - t >= 8
        assert _run(tmp_path, "-", url, "none", 2, "12") == 0
        assert len(slow.bodies) == 1
    finally:
        slow.close()


def test_trickling_webhook_does_not_keep_the_process_alive(tmp_path):
    trickle = TricklingHook(every=1.0, for_seconds=120)
    try:
        url = f"json://127.0.0.1:{trickle.port}/hook"
        t = time.monotonic()
        proc = _child(tmp_path, "-", url, "none", 1, "2")
        try:
            out, err = proc.communicate(timeout=45)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail("the process was still alive 45 s after a send bounded at 11 s")
        took = time.monotonic() - t
        assert proc.returncode == 1, err[-2000:]  # not delivered: kept for a retry
        (row,) = json.loads(out.strip().splitlines()[-1])
        assert row["failed"] == 1 and row["error"].startswith("TIMEOUT")
        assert took < 30 and trickle.requests == 1
    finally:
        trickle.close()


def _alerting_run(backend: LocalBackend, routes: list[Route]):
    end = T0 + STEP
    return run_alerts(
        JudgedWindow([make_anomaly(end=end, severity="critical")], {}, window_end=end),
        DeliveryContext(routes, backend, now=end),
        alerting={},
        run=RunRecord(started_at=end, window_end=end, rows=100),
    )


def test_route_without_urls_is_reported_not_counted_as_notified(tmp_path, hook, caplog):
    h, url = hook
    pager = Route("pager", ["", "   "])  # ${PAGER_URL:-} left unset
    # the only route: nothing reached anyone, and the run says so
    alone = LocalBackend(tmp_path / "alone")
    out = _alerting_run(alone, [pager])
    assert [u["route"] for u in out.report.unrouted] == ["pager", "pager"]  # alert, then health
    assert "pager has no usable URL" in caplog.text
    (run,) = AlertStore(alone).runs()
    assert run.notified == 0 and run.unrouted == ["pager"] and run.delivered == 0
    text = status_text(alone, T0 + STEP)
    assert "notified=0" in text and "routes without URL: pager" in text
    assert "health: no_targets: notices went nowhere" in text
    # with a route that works, the self-health notice reaches it
    both = LocalBackend(tmp_path / "both")
    ops = Route("ops", [url], operations=("NoSuchOperation",), health=True)
    _alerting_run(both, [pager, ops])
    (body,) = [json.loads(b)["message"] for b in h.bodies]
    assert "no usable URL" in body and "pager" in body


def test_run_summary_lists_delivery_per_route_and_target(tmp_path, hook):
    h, url = hook
    backend = LocalBackend(tmp_path)
    end = T0 + STEP
    secret_url = "json://127.0.0.1:9/hook?+X-Token=Tk5ecretValue99"  # nothing listens on 9
    routes = [Route("oncall", [url, secret_url, "bogus://nothing"], timeout=2, health=False)]
    out = run_alerts(
        JudgedWindow([make_anomaly(end=end, severity="critical")], {}, window_end=end),
        DeliveryContext(routes, backend, now=end),
        alerting={},
        run=RunRecord(started_at=end, window_end=end, rows=100),
    )
    rows = {r["target"]: r for r in out.to_json()["delivery"]["by_target"]}
    assert len(rows) == 3
    ok = next(r for t, r in rows.items() if str(h.port) in t and r["sent"])
    assert ok["route"] == "oncall" and ok["failed"] == 0
    assert sum(r["failed"] for r in rows.values()) == 1
    assert sum(r["undeliverable"] for r in rows.values()) == 1
    report = {
        "mode": "scheduled",
        "run_id": "r1",
        "window": {"start": "a", "end": "b"},
        "alerts": out.report.to_json(),
    }
    text = console_summary(report)
    assert "delivered / failed per route and target" in text
    assert "sent 1" in text and "failed 1" in text and "undeliverable 1" in text
    assert "Tk5ecretValue99" not in text + json.dumps(report)
    (run,) = AlertStore(backend).runs()
    assert (run.delivered, run.failed, run.undeliverable) == (1, 1, 1)
    assert run.status == "delivery_failed"


def test_route_timeout_is_read_from_config_and_checked(tmp_path):
    from detector.config import load_config
    from detector.errors import ConfigError
    from detector.pipeline import routes

    def config(timeout: str) -> Path:
        path = tmp_path / "detector.toml"
        path.write_text(
            '[source]\nkind = "file"\npath = "data"\n'
            '[[notify.route]]\nname = "hooks"\nurls = ["json://127.0.0.1:9/hook"]\n'
            f"timeout = {timeout}\n"
        )
        return path

    (route,) = routes(load_config(config("12")))
    assert route.timeout == 12.0
    for bad in ("0", "-1", '"slow"', "601"):
        with pytest.raises(ConfigError, match=r"notify.route\[0\].timeout"):
            load_config(config(bad))
