"""Cost of the Log Analytics source: a 30-day backfill and a 5-minute scheduled run.

Runs the real ``LogsQueryClient`` against the local HTTPS emulator (tests/la_emulator.py) holding
a simulated tenant of ~1,000 partitions (operations x SDK versions), with the service's limits
enforced (500,000 rows, 100 MiB per answer: over them the answer comes back partial and the
source would have to split). Prints, for each scenario, the queries sent, rows and bytes
returned, the largest chunk against the limits, and side by side the *floor/peer*: what pulling
the raw rows of the same window would transfer (rows, bytes, minimum number of queries).

Usage::

    .venv/bin/python benchmarks/bench_log_analytics.py [--days 30] [--rows-per-day 100000]
        [--partitions 1000] [--seed 1]

The emulator computes answers in pandas, so the figure that matters is what crosses the wire,
not the wall time (printed for information).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.source.log_analytics import (  # noqa: E402
    API_MAX_BYTES,
    API_MAX_ROWS,
    LogAnalyticsSettings,
    LogAnalyticsSource,
)
from tests.la_emulator import Emulator, FakeCredential, table_json  # noqa: E402

BUCKET = timedelta(minutes=5)


def tenant(days: int, rows_per_day: int, partitions: int, seed: int, end: datetime) -> pd.DataFrame:
    """Rows of a tenant with ``partitions`` (operation, SDK version) pairs, Zipf-like traffic,
    a diurnal cycle, ingestion lag of minutes (1 % hours late) and 1 % duplicates."""
    rng = np.random.default_rng(seed)
    n_ops = 40
    n_sdk = max(1, partitions // n_ops)
    ops = np.array([f"Operation{i:02d}" for i in range(n_ops)])
    sdks = np.array([f"1.{30 + i // 5}.{i % 5}.0_stable" for i in range(n_sdk)])
    n = days * rows_per_day
    start = end - timedelta(days=days)
    # diurnal: accept-reject on hour of day
    t = rng.uniform(0, days * 86400, int(n * 1.6))
    keep = rng.random(t.size) < 0.55 + 0.45 * np.sin((t % 86400) / 86400 * 2 * np.pi) ** 2
    t = np.sort(t[keep][:n])
    n = t.size
    w_op = 1 / np.arange(1, n_ops + 1) ** 0.6
    w_sdk = 1 / np.arange(1, n_sdk + 1) ** 0.8
    cct = pd.Timestamp(start) + pd.to_timedelta(t, unit="s")
    lag = rng.exponential(90, n)
    late = rng.random(n) < 0.01
    lag[late] += rng.uniform(3600, 6 * 3600, late.sum())
    df = pd.DataFrame(
        {
            "TimeGenerated": cct + pd.to_timedelta(lag, unit="s"),
            "CallClientTimeStamp": cct,
            "CallId": np.char.add("call-", (np.arange(n) // 8).astype(str)),
            "OperationId": np.char.add("op-", np.arange(n).astype(str)),
            "OperationName": rng.choice(ops, n, p=w_op / w_op.sum()),
            "ResultType": rng.choice(
                ["Succeeded", "ExpectedError", "UnexpectedClientError"], n, p=[0.93, 0.04, 0.03]
            ),
            "ResultSignature": rng.choice([200, 500, 408], n, p=[0.95, 0.03, 0.02]),
            "DurationMs": np.round(rng.lognormal(6.3, 0.9, n)).astype("int64"),
            "SdkVersion": rng.choice(sdks, n, p=w_sdk / w_sdk.sum()),
            "OperationPayload": "{}",
        }
    )
    dups = df.sample(frac=0.01, random_state=seed)
    dups = dups.assign(TimeGenerated=dups["TimeGenerated"] + pd.Timedelta(minutes=3))
    return pd.concat([df, dups], ignore_index=True)


def raw_wire_bytes(rows: pd.DataFrame, sample: int = 2000) -> float:
    """Bytes per raw row in the wire format (all table columns, as a raw-row pull sends them)."""
    part = rows.head(sample)
    cols = {c: "string" for c in part.columns}
    table = table_json(cols, part.astype(str).values.tolist())
    return len(json.dumps({"tables": [table]})) / max(1, len(part))


def run(
    label: str,
    src: LogAnalyticsSource,
    window: tuple[datetime, datetime],
    raw_rows: int,
    raw_row_bytes: float,
) -> dict:
    before = src.stats.as_dict()
    t0 = time.perf_counter()
    shown = [0.0]

    def progress(p) -> None:  # a terminal line every ~2 s, as the CLI would
        if time.perf_counter() - shown[0] > 2:
            shown[0] = time.perf_counter()
            print(
                f"  [{label}] chunk {p.done}/{p.total} {p.start:%m-%d %H:%M}..{p.end:%m-%d %H:%M} "
                f"rows={p.rows} bytes={p.bytes}",
                flush=True,
            )

    agg = src.read_aggregates(window, bucket=BUCKET, progress=progress)
    secs = time.perf_counter() - t0
    after = src.stats.as_dict()
    chunks = after["chunks"][len(before["chunks"]) :]
    out = {
        "scenario": label,
        "queries": after["queries"] - before["queries"],
        "plan_queries": after["plan_queries"] - before["plan_queries"],
        "chunks": len(chunks),
        "splits": after["splits"] - before["splits"],
        "rows_returned": after["rows"] - before["rows"],
        "bytes_returned": after["bytes"] - before["bytes"],
        "max_chunk_rows": max((c["rows"] for c in chunks), default=0),
        "max_chunk_bytes": max((c["bytes"] for c in chunks), default=0),
        "log_rows_aggregated": agg.rows_read,
        "partitions_seen": int(agg.stats.groupby(["operation_name", "sdk_version"]).ngroups),
        "raw_rows": raw_rows,
        "raw_bytes_est": int(raw_rows * raw_row_bytes),
        "raw_min_queries": max(1, -(-raw_rows // API_MAX_ROWS)),
        "seconds": round(secs, 1),
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--rows-per-day", type=int, default=100_000)
    ap.add_argument("--partitions", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    end = datetime(2025, 4, 1, tzinfo=UTC)
    t0 = time.perf_counter()
    rows = tenant(args.days, args.rows_per_day, args.partitions, args.seed, end)
    print(
        f"tenant: {len(rows):,} rows over {args.days} days, "
        f"{rows.groupby(['OperationName', 'SdkVersion']).ngroups} partitions "
        f"(generated in {time.perf_counter() - t0:.1f} s)"
    )
    per_raw = raw_wire_bytes(rows)
    emu = Emulator(
        rows, max_rows=API_MAX_ROWS, max_bytes=API_MAX_BYTES, ingest_lag=timedelta(seconds=20)
    )
    with tempfile.TemporaryDirectory() as tmp:
        endpoint = emu.start(Path(tmp))
        try:
            settings = LogAnalyticsSettings(
                workspace_id="ws-test", endpoint=endpoint, connection_verify=emu.ca_file
            )
            src = LogAnalyticsSource(settings, credential=FakeCredential())
            arrival = emu.df["_IngestionTime"]
            start = end - timedelta(days=args.days)
            back_end = end + timedelta(hours=7)  # the late rows of the last day have arrived
            n_back = int(((arrival >= start) & (arrival < back_end)).sum())
            results = [run(f"{args.days}-day backfill", src, (start, back_end), n_back, per_raw)]
            w = (end - timedelta(minutes=5), end)  # the busiest arrival window of the tenant
            n_sched = int(((arrival >= w[0]) & (arrival < w[1])).sum())
            src2 = LogAnalyticsSource(settings, credential=FakeCredential())
            results.append(run("5-minute scheduled run", src2, w, n_sched, per_raw))
        finally:
            emu.stop()

    keys = [
        "queries",
        "plan_queries",
        "chunks",
        "splits",
        "rows_returned",
        "bytes_returned",
        "max_chunk_rows",
        "max_chunk_bytes",
        "log_rows_aggregated",
        "partitions_seen",
        "raw_rows",
        "raw_bytes_est",
        "raw_min_queries",
        "seconds",
    ]
    print()
    print(f"{'':24}" + "".join(f"{r['scenario']:>26}" for r in results))
    for k in keys:
        print(
            f"{k:24}"
            + "".join(f"{r[k]:>26,}" if isinstance(r[k], int) else f"{r[k]:>26}" for r in results)
        )
    print()
    print(
        f"limits per answer: {API_MAX_ROWS:,} rows, {API_MAX_BYTES:,} bytes; "
        f"chunk targets: {settings.max_rows_per_chunk:,} rows, {settings.max_bytes_per_chunk:,} bytes"
    )
    for r in results:
        ok = (
            r["max_chunk_rows"] <= API_MAX_ROWS
            and r["max_chunk_bytes"] <= API_MAX_BYTES
            and r["splits"] == 0
        )
        print(
            f"{r['scenario']}: max chunk {r['max_chunk_rows']:,} rows "
            f"({100 * r['max_chunk_rows'] / API_MAX_ROWS:.1f} % of limit), "
            f"{r['max_chunk_bytes']:,} bytes ({100 * r['max_chunk_bytes'] / API_MAX_BYTES:.1f} % of limit)"
            f" -> {'within limits' if ok else 'LIMIT HIT'}; pushdown sends "
            f"{r['bytes_returned'] / max(1, r['raw_bytes_est']):.3f} x the bytes of a raw-row pull"
        )
    print(json.dumps({"bench_log_analytics": results}, default=str))


if __name__ == "__main__":
    main()
