"""Shared helpers for the alerting tests (lifecycle, notify, outbox)."""

from __future__ import annotations

import socket
import threading
import time
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
    """A tiny local HTTP endpoint whose answer can be switched (200 / 500), recording bodies.

    ``delay``: seconds to wait after reading a request before answering (a slow but alive
    target: it has the message as soon as it has read it).
    """

    def __init__(self, port: int = 0, delay: float = 0.0) -> None:
        self.status = 200
        self.delay = delay
        self.bodies: list[bytes] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("Content-Length", 0))
                hook.bodies.append(self.rfile.read(n))
                time.sleep(hook.delay)
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


class TricklingHook:
    """An HTTP endpoint that reads a request, then answers one byte per ``every`` seconds for
    ``for_seconds`` (a target that never quite finishes: read timeouts never fire)."""

    def __init__(self, every: float = 1.0, for_seconds: float = 120.0) -> None:
        self.requests = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = int(self.sock.getsockname()[1])
        self.every, self.for_seconds = every, for_seconds
        self.closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    data += conn.recv(4096)
                self.requests += 1
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
                end = time.monotonic() + self.for_seconds
                while time.monotonic() < end and not self.closed.is_set():
                    conn.sendall(b" ")
                    time.sleep(self.every)
            except OSError:
                return

    def close(self) -> None:
        self.closed.set()
        self.sock.close()
