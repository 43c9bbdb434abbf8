"""Shared helpers for the alerting tests (lifecycle, notify, outbox)."""

from __future__ import annotations

import socket
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from detector.anomaly import Anomaly

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
STEP = timedelta(minutes=5)


def make_anomaly(
    op: str = "Join",
    sdk: str | None = "1.30.1.1_stable",
    metric: str = "duration",
    *,
    end: datetime = T0 + STEP,
    severity: str = "warning",
    observed: float = 2400.0,
    baseline: float = 900.0,
    score: float = 0.7,
    **kw: Any,
) -> Anomaly:
    defaults: dict[str, Any] = {
        "band_low": baseline * 0.8,
        "band_high": baseline * 1.3,
        "calls": 1234,
        "baseline_calls": 50_000,
        "traffic_share": 0.42,
        "p_value": 1e-6,
        "drivers": ["latency_z", "p95_ratio"],
        "top_result_codes": [
            {
                "result_signature": 500,
                "sub_code": 41003,
                "result_type": "UnexpectedServerError",
                "count": 120,
            },
            {"result_signature": 408, "count": 33},
        ],
        "example_call_ids": [
            "0d8f2a3c-1111-4a4a-9c9c-000000000001",
            "0d8f2a3c-2222-4a4a-9c9c-000000000002",
        ],
    }
    defaults.update(kw)
    return Anomaly(
        operation_name=op,
        sdk_version=sdk,
        metric=metric,
        window_start=end - STEP,
        window_end=end,
        observed=observed,
        baseline=baseline,
        score=score,
        severity=severity,
        calls=defaults.pop("calls"),
        reason="latency_shift",
        **defaults,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Hook:
    """A tiny local HTTP endpoint whose answer can be switched (200 / 500), recording bodies."""

    def __init__(self, port: int = 0) -> None:
        self.status = 200
        self.bodies: list[bytes] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("Content-Length", 0))
                hook.bodies.append(self.rfile.read(n))
                self.send_response(hook.status)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
