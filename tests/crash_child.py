"""One alerting run in its own process, dying (``os._exit``) at a chosen point of delivery.

Used by ``tests/test_delivery_once.py``: the parent holds a real SMTP server and a real HTTP
receiver, runs this script once with a crash point and again without, and counts what each
target received. Everything but the exit is the real code: the wrappers below call through.

    python -m tests.crash_child STORE SMTP_URL HOOK_URL POINT K [TIMEOUT]

``K``: the run judges the window ending ``T0 + K * STEP`` (a rerun judges a later one, as a
scheduled run after a crash does). ``POINT``: none, after_intent (outbox and intents written,
state not saved), after_commit (state saved, nothing sent), between_targets (first target
sent and marked), after_send_before_mark (first target acknowledged, not marked),
after_mark_before_removal (first target marked sent, still in the outbox). A crash while
SMTP holds DATA is a SIGKILL from the parent.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Any

from detector.notify import DeliveryContext, JudgedWindow, Route, run_alerts
from detector.store.alerts import AlertStore, RunRecord
from detector.store.backend import LocalBackend
from tests.fixtures_alerting import STEP, T0, make_anomaly

KILLED = 137
# The module, not the function detector.notify re-exports under the same name.
deliver_mod = importlib.import_module("detector.notify.deliver")


def _install(point: str) -> None:
    calls = {"send": 0}
    real_send = deliver_mod.send_message

    def send(*args: Any, **kw: Any) -> Any:
        calls["send"] += 1
        if point == "between_targets" and calls["send"] == 2:
            os._exit(KILLED)
        res = real_send(*args, **kw)
        if point == "after_send_before_mark" and calls["send"] == 1:
            os._exit(KILLED)
        return res

    deliver_mod.send_message = send
    real_save = AlertStore.save_state

    def save(self: AlertStore, state: Any, **kw: Any) -> None:
        committing = bool(kw.get("commit_batch"))
        if point == "after_intent" and committing:
            os._exit(KILLED)
        real_save(self, state, **kw)
        if point == "after_commit" and committing:
            os._exit(KILLED)

    AlertStore.save_state = save  # type: ignore[method-assign]
    real_remove = AlertStore.remove_outbox

    def remove(self: AlertStore, ids: list[str]) -> None:
        if point == "after_mark_before_removal" and ids:
            os._exit(KILLED)
        real_remove(self, ids)

    AlertStore.remove_outbox = remove  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    store, smtp_url, hook_url, point, k = argv[:5]
    timeout = float(argv[5]) if len(argv) > 5 else None
    _install(point)
    end = T0 + int(k) * STEP
    urls = [u for u in (smtp_url, hook_url) if u != "-"]
    routes = [Route("oncall", urls, **({"timeout": timeout} if timeout else {}))]
    out = run_alerts(
        JudgedWindow([make_anomaly(end=end, severity="critical")], {}, window_end=end),
        DeliveryContext(routes, LocalBackend(store), now=end),
        alerting={"repeat_interval": "4h"},
        run=RunRecord(started_at=end, window_end=end, rows=100),
    )
    print(json.dumps(out.report.to_json().get("by_target", [])))
    return 0 if out.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
