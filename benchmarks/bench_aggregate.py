"""Aggregation throughput and memory: our file source vs a bare DuckDB GROUP BY (the floor).

Simulates ~10M rows of ACSCallClientOperations to Parquet (``detector.simulate``, reused when
already there), then in the same run times, each in a fresh subprocess:

* ``ours``:  ``read_aggregates(file, bucket=5m)``: dedup, drop reasons, flags, canonical names,
  result classes, log-duration sums and the sparse histogram, into pandas frames;
* ``floor``: ``SELECT OperationName, SdkVersion, time_bucket(5m, CallClientTimeStamp),
  count(*), quantile_cont(DurationMs, [0.5, 0.95]) ... GROUP BY ALL`` over the same file,
  fetched into Python.

Wall time is measured inside the child around the work (interpreter start and imports
excluded), median of ``--repeat`` runs; peak RSS is ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` of
a fresh measuring process per run. The box is shared: quote medians and the ratio.

    .venv/bin/python benchmarks/bench_aggregate.py [--rows 10000000] [--data DIR] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve()
# Rows the default simulator scenario writes per day per unit of calls_per_hour (measured).
ROWS_PER_CPH_DAY = 643
FLOOR_SQL = (
    "SELECT OperationName, SdkVersion, "
    "time_bucket(INTERVAL 5 MINUTE, CallClientTimeStamp) AS b, count(*) AS n, "
    "quantile_cont(DurationMs, [0.5, 0.95]) AS q FROM read_parquet(?) GROUP BY ALL"
)


def _work(kind: str, path: str, memory_limit: str | None, threads: int | None) -> dict[str, float]:
    """Run one measurement in this (child) process; return seconds and sizes."""
    if kind == "ours":
        from detector.source.files import read_aggregates

        t0 = time.perf_counter()
        agg = read_aggregates(
            path, bucket=timedelta(minutes=5), memory_limit=memory_limit, threads=threads
        )
        secs = time.perf_counter() - t0
        return {
            "seconds": secs,
            "rows": agg.rows_read,
            "stats_rows": len(agg.stats),
            "hist_rows": len(agg.hist),
            "hist_mib": agg.hist.memory_usage(deep=True).sum() / 2**20,
        }
    import duckdb

    config: dict[str, object] = {}
    if memory_limit:
        config["memory_limit"] = memory_limit
    if threads:
        config["threads"] = threads
    con = duckdb.connect(config=config)
    t0 = time.perf_counter()
    res = con.execute(FLOOR_SQL, [path]).fetchall()
    secs = time.perf_counter() - t0
    n = con.execute("SELECT count(*) FROM read_parquet(?)", [path]).fetchone()[0]  # type: ignore[index]
    return {"seconds": secs, "rows": n, "stats_rows": len(res), "hist_rows": 0, "hist_mib": 0.0}


def _run(
    role: str, kind: str, path: str, memory_limit: str | None, threads: int | None
) -> dict[str, float]:
    cmd = [sys.executable, str(HERE), role, kind, path]
    if memory_limit:
        cmd += ["--memory-limit", memory_limit]
    if threads:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _measure(
    kind: str, path: str, memory_limit: str | None, threads: int | None
) -> dict[str, float]:
    """In a fresh measuring process: run the worker, wait, read RUSAGE_CHILDREN (its peak)."""
    result = _run("--child", kind, path, memory_limit, threads)
    result["peak_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return result


def _load() -> str:
    """1-minute load average: above ~1 on this 2-core box, other work is taking a core and
    DuckDB's two threads (ours more than the floor's) share it, so quote ratios with it."""
    return f"{os.getloadavg()[0]:.1f}"


def _ensure_data(data: Path, rows: int) -> Path:
    path = data / "operations.parquet"
    if path.exists():
        return path
    from detector.simulate import SimSpec, simulate

    days = 2
    cph = max(1.0, rows / (days * ROWS_PER_CPH_DAY))
    print(f"simulating ~{rows:,} rows into {data} (calls_per_hour={cph:.0f}) ...", flush=True)
    t0 = time.perf_counter()
    res = simulate(data, SimSpec(days=days, seed=11, calls_per_hour=cph), fmt="parquet")
    print(f"  done in {time.perf_counter() - t0:.0f} s: {res.summary().splitlines()[0]}")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--data", type=Path, default=Path("/tmp/acs-bench-aggregate"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--memory-limit", default="640MB", help="DuckDB memory_limit for both")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--child", nargs=2, metavar=("KIND", "FILE"), help=argparse.SUPPRESS)
    ap.add_argument("--measure", nargs=2, metavar=("KIND", "FILE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_work(args.child[0], args.child[1], args.memory_limit, args.threads)))
        return
    if args.measure:
        print(
            json.dumps(_measure(args.measure[0], args.measure[1], args.memory_limit, args.threads))
        )
        return

    path = _ensure_data(args.data, args.rows)
    print(f"file {path} ({path.stat().st_size / 2**20:.0f} MiB), cores {os.cpu_count()}, "
          f"memory_limit {args.memory_limit}, repeat {args.repeat} (alternating), "
          f"load average {_load()}")  # fmt: skip
    runs: dict[str, list[dict[str, float]]] = {"floor": [], "ours": []}
    for i in range(args.repeat):
        for kind in ("floor", "ours"):  # alternate, so load changes hit both alike
            r = _run("--measure", kind, str(path), args.memory_limit, args.threads)
            runs[kind].append(r)
            print(f"  run {i + 1} {kind:5s} {r['seconds']:7.2f} s  peak {r['peak_mib']:6.0f} MiB")
    med = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
    print()
    print(
        f"{'':6s} {'rows':>12s} {'seconds':>9s} {'rows/s':>12s} {'ours/floor':>10s} {'peak MiB':>9s}"
    )
    for kind in ("floor", "ours"):
        r0 = runs[kind][0]
        peak = max(r["peak_mib"] for r in runs[kind])
        ratio = med[kind] / med["floor"]
        print(
            f"{kind:6s} {int(r0['rows']):12,d} {med[kind]:9.2f} {r0['rows'] / med[kind]:12,.0f} "
            f"{ratio:10.2f} {peak:9.0f}"
        )
    o = runs["ours"][0]
    print(
        f"\nours: {int(o['stats_rows']):,} stats rows, {int(o['hist_rows']):,} histogram rows "
        f"({o['hist_mib']:.0f} MiB in pandas); floor: {int(runs['floor'][0]['stats_rows']):,} groups"
    )
    print(f"targets: ratio <= 1.5, peak <= 1024 MiB; load average now {_load()}")


if __name__ == "__main__":
    main()
