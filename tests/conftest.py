"""Shared pytest setup: loopback only, no proxies, a fixed clock."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest

# Servers started by the tests listen on 127.0.0.1; never send them through a proxy.
os.environ["NO_PROXY"] = "127.0.0.1,localhost"
os.environ["no_proxy"] = "127.0.0.1,localhost"
for _var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
    os.environ.pop(_var, None)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def now() -> datetime:
    """A fixed clock: stages take `now` as a parameter, never read it."""
    return datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
