"""Fixtures for the Log Analytics tests: the Kusto language service, the emulator, sample rows.

``kusto`` starts Microsoft's language service (tests/kusto, Node.js) once per session; without
Node.js the tests that need it FAIL with a message saying what to install (CI has Node).
``emulator`` starts :class:`la_emulator.Emulator` instances and, at teardown, checks every KQL
text they received with the language service: zero errors, so every text the job sent in any
test is valid against the ``ACSCallClientOperations`` schema.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from detector.schema import LOG_COLUMNS
from detector.source import kql
from detector.source.log_analytics import LogAnalyticsSettings, LogAnalyticsSource
from tests.la_emulator import Emulator, FakeCredential

KUSTO_DIR = Path(__file__).parent / "kusto"


class KustoChecker:
    """One Node.js process running tests/kusto/check.js (JSON lines in and out)."""

    def __init__(self) -> None:
        node = shutil.which("node")
        if node is None:
            pytest.fail(
                "Node.js is required for the KQL checks (Microsoft's Kusto language service, "
                "tests/kusto): install Node.js >= 18 and npm, then rerun",
                pytrace=False,
            )
        if not (KUSTO_DIR / "node_modules" / "@kusto" / "language-service-next").is_dir():
            npm = shutil.which("npm")
            if npm is None:
                pytest.fail("npm is required to install tests/kusto (npm ci)", pytrace=False)
            done = subprocess.run(
                [npm, "ci", "--prefix", str(KUSTO_DIR), "--no-audit", "--no-fund"],
                capture_output=True,
                text=True,
                timeout=300,
            )
            if done.returncode != 0:
                pytest.fail(f"npm ci in tests/kusto failed:\n{done.stderr[-2000:]}", pytrace=False)
        self.proc = subprocess.Popen(
            [node, str(KUSTO_DIR / "check.js")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._n = 0
        hello = self._call({"tables": {kql.DEFAULT_TABLE: kql.table_schema(LOG_COLUMNS)}})
        assert hello.get("ready"), hello

    def _call(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the Kusto language service process died")
        return json.loads(line)

    def check(self, text: str) -> dict[str, Any]:
        """``{"diagnostics": [...], "columns": [{"name", "type"}]}`` for one KQL text."""
        self._n += 1
        out = self._call({"id": self._n, "query": text})
        if "fatal" in out:
            raise RuntimeError(f"language service failed: {out['fatal']}")
        return out

    def errors(self, text: str) -> list[str]:
        """Error diagnostics as ``code: message at 'text'`` strings (empty = valid)."""
        res = self.check(text)
        return [
            f"{d['code']}: {d['message']} at {text[d['start'] : d['start'] + d['length'] + 30]!r}"
            for d in res["diagnostics"]
            if d["severity"] == "Error"
        ]

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def kusto() -> Iterator[KustoChecker]:
    checker = KustoChecker()
    yield checker
    checker.close()


@pytest.fixture
def emulator(tmp_path: Path, kusto: KustoChecker) -> Iterator[Any]:
    """Factory: ``emulator(rows, **kw) -> Emulator`` (started); texts checked at teardown."""
    started: list[Emulator] = []

    def make(rows: pd.DataFrame | None = None, **kwargs: Any) -> Emulator:
        emu = Emulator(rows, **kwargs)
        emu.endpoint = emu.start(tmp_path)  # type: ignore[attr-defined]
        started.append(emu)
        return emu

    yield make
    # Texts that differ only in datetime literals have the same shape: check each shape once.
    texts = {
        re.sub(r"datetime\([^)]*\)", "datetime(2025-01-01T00:00:00Z)", r.query): None
        for emu in started
        for r in emu.requests
    }
    for emu in started:
        emu.stop()
    problems = {t[:60]: kusto.errors(t) for t in texts}
    assert not {k: v for k, v in problems.items() if v}, problems


def make_source(emu: Emulator, credential: Any = None, **settings: Any) -> LogAnalyticsSource:
    """A source pointed at the emulator, with fast retries unless told otherwise."""
    base: dict[str, Any] = {
        "workspace_id": "ws-test",
        "endpoint": emu.endpoint,  # type: ignore[attr-defined]
        "connection_verify": emu.ca_file,
        "backoff_base": 0.01,
        "backoff_max": 0.05,
    }
    base.update(settings)
    return LogAnalyticsSource(
        LogAnalyticsSettings(**base), credential=credential or FakeCredential()
    )


T0 = datetime(2025, 3, 1, tzinfo=UTC)


def sample_rows(
    *,
    hours: int = 6,
    per_hour: int = 300,
    seed: int = 7,
    start: datetime = T0,
    quirks: bool = True,
) -> pd.DataFrame:
    """A small synthetic ``ACSCallClientOperations`` export with the documented quirks.

    Arrival (``TimeGenerated``) trails ``CallClientTimeStamp`` by seconds to hours (a few rows
    arrive 3-5 h late), ~3 % exact duplicates arrive later, and with ``quirks`` there are
    casing variants, point events, pseudo operations, empty names/ids, missing timestamps,
    negative/empty durations and invalid payload JSON.
    """
    rng = np.random.default_rng(seed)
    n = hours * per_hour
    ops = np.array(
        ["Join", "StartCall", "CreateView", "StartVideo", "State-changed", "UserFacingDiagnostics"]
    )
    sdks = np.array(["1.30.1.0_stable", "1.31.2.0_stable", "1.32.0.1_beta", ""])
    results = np.array(
        [
            "Succeeded",
            "Success",
            "ExpectedError",
            "UnexpectedClientError",
            "UnexpectedServerError",
            "Failed",
        ]
    )
    cct = start + pd.to_timedelta(rng.uniform(0, hours * 3600, n), unit="s")
    lag = rng.exponential(120, n)
    late = rng.random(n) < 0.03
    lag[late] += rng.uniform(3 * 3600, 5 * 3600, late.sum())
    df = pd.DataFrame(
        {
            "TimeGenerated": cct + pd.to_timedelta(lag, unit="s"),
            "CallClientTimeStamp": cct,
            "CallId": [f"call-{i // 7:05d}" for i in range(n)],
            "OperationId": [f"op-{i:06d}" for i in range(n)],
            "OperationName": rng.choice(ops, n, p=[0.2, 0.15, 0.3, 0.15, 0.1, 0.1]),
            "ResultType": rng.choice(results, n, p=[0.6, 0.2, 0.08, 0.07, 0.03, 0.02]),
            "ResultSignature": rng.choice([200, 500, 408, 410], n, p=[0.85, 0.05, 0.05, 0.05]),
            "DurationMs": np.round(rng.lognormal(6.5, 1.0, n)).astype("int64").astype(object),
            "SdkVersion": rng.choice(sdks, n, p=[0.5, 0.3, 0.15, 0.05]),
            "OperationPayload": [
                json.dumps({"SubCode": int(s)}) for s in rng.choice([0, 40000, 41048], n)
            ],
        }
    )
    if quirks:
        m = len(df)
        pick = lambda frac: rng.random(m) < frac  # noqa: E731
        df.loc[pick(0.02), "OperationName"] = "join"
        df.loc[pick(0.01), "OperationName"] = "CallClientOperations"
        df.loc[pick(0.01), "OperationName"] = ""
        df.loc[pick(0.01), "OperationId"] = ""
        df.loc[pick(0.005), "CallClientTimeStamp"] = pd.NaT
        df.loc[pick(0.01), "DurationMs"] = None
        df.loc[pick(0.005), "DurationMs"] = -5
        df.loc[pick(0.01), "OperationPayload"] = "{not json"
    dups = df.sample(frac=0.03, random_state=seed).copy()
    dups["TimeGenerated"] = dups["TimeGenerated"] + pd.to_timedelta(
        rng.uniform(60, 1800, len(dups)), unit="s"
    )
    out = pd.concat([df, dups], ignore_index=True)
    return out.sort_values("TimeGenerated", kind="stable").reset_index(drop=True)


__all__ = [
    "T0",
    "KustoChecker",
    "emulator",
    "kusto",
    "make_source",
    "sample_rows",
    "timedelta",
]
