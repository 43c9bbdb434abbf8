"""End to end: ``acs-detector run --start/--end`` over a ~10M-row Parquet vs the bare DuckDB floor.

The same file as ``bench_aggregate.py`` (simulated there when missing). Measured in the same
run, alternating, each as a whole fresh process (interpreter start and imports included, as a
cron job pays them), median of ``--repeat``:

* ``ours``:  ``acs-detector --config CFG run --start DAY --end DAY+1 --no-notify --report R``
  with a file source on the Parquet and a fresh state directory per run: read, dedup,
  aggregate, store the buckets, baselines, forest fit, decisions, explanations, alert
  lifecycle, reports. Its own stage timings come from the run report.
* ``floor``: ``python -c`` running the bare ``GROUP BY OperationName, SdkVersion, bucket`` with
  count and p50/p95 over the same file (``bench_aggregate.FLOOR_SQL``), fetched into Python.
* ``imports``: ``python -c`` importing what a run imports (the CLI, the pipeline and the
  modules it preloads: pandas, scikit-learn, skops, SciPy, apprise, DuckDB), running nothing.
  Not a peer: it shows how much of the budget the libraries take before any row is read.

Peak RSS and CPU seconds (user + system) are ``RUSAGE_CHILDREN`` of a fresh measuring process
per run. The box is shared: quote the ratio of medians and the load average printed with it;
CPU seconds move less with the load than wall seconds do.

    .venv/bin/python benchmarks/bench_run.py [--data DIR] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

from bench_aggregate import FLOOR_SQL, _ensure_data, _load  # noqa: E402

BIN = Path(sys.executable).parent


def _judged_day(path: Path) -> tuple[str, str]:
    """The second calendar day of the file (the first one is the baseline)."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    sql = "SELECT min(CallClientTimeStamp) FROM read_parquet(?)"
    lo = con.execute(sql, [str(path)]).fetchone()[0]  # type: ignore[index]
    start = datetime(lo.year, lo.month, lo.day, tzinfo=UTC) + timedelta(days=1)
    end = start + timedelta(days=1)
    return start.strftime("%Y-%m-%dT%H:%M:%SZ"), end.strftime("%Y-%m-%dT%H:%M:%SZ")


def _command(kind: str, path: Path, work: Path, day: tuple[str, str]) -> list[str]:
    if kind == "floor":
        code = (
            "import duckdb, sys; con = duckdb.connect(config={'memory_limit': '640MB'}); "
            f"con.execute({FLOOR_SQL!r}, [sys.argv[1]]).fetchall()"
        )
        return [sys.executable, "-c", code, str(path)]
    if kind == "imports":
        from detector.pipeline import _ENGINE_MODULES

        mods = ["duckdb", "detector.cli", "detector.pipeline", "detector.source.files"]
        return [sys.executable, "-c", "import " + ", ".join([*mods, *_ENGINE_MODULES])]
    cfg = work / "detector.toml"
    cfg.write_text(
        f'[source]\nkind = "file"\npath = "{path}"\n'
        f'[state]\npath = "{work / "state"}"\nmodels = "{work / "models"}"\n'
    )
    exe = BIN / "acs-detector"
    return [str(exe), "--config", str(cfg), "run", "--start", day[0], "--end", day[1],
            "--no-notify", "--report", str(work / "report.json")]  # fmt: skip


def _measure(kind: str, path: Path, day: tuple[str, str]) -> dict[str, object]:
    """In this (fresh) process: run one whole command, return wall seconds and its peak RSS."""
    work = Path(tempfile.mkdtemp(prefix="acs-bench-run-"))
    try:
        cmd = _command(kind, path, work, day)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        secs = time.perf_counter() - t0
        if proc.returncode not in (0, 1):  # 1: anomalies found (the run itself succeeded)
            raise SystemExit(f"{kind} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        out: dict[str, object] = {
            "seconds": secs,
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "peak_mib": usage.ru_maxrss / 1024,
        }
        report = work / "report.json"
        if report.exists():
            rep = json.loads(report.read_text())
            out["timings"] = rep.get("timings_s", {})
            out["anomalies"] = len(rep.get("anomalies", []) or [])
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--data", type=Path, default=Path("/tmp/acs-bench-aggregate"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--measure", nargs=4, metavar=("KIND", "FILE", "START", "END"),
                    help=argparse.SUPPRESS)  # fmt: skip
    args = ap.parse_args()
    if args.measure:
        kind, file, start, end = args.measure
        print(json.dumps(_measure(kind, Path(file), (start, end))))
        return

    path = _ensure_data(args.data, args.rows)
    day = _judged_day(path)
    print(f"file {path} ({path.stat().st_size / 2**20:.0f} MiB), judged {day[0]} .. {day[1]}, "
          f"cores {os.cpu_count()}, repeat {args.repeat} (alternating), load {_load()}")  # fmt: skip
    kinds = ("floor", "ours", "imports")
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    for i in range(args.repeat):
        for kind in kinds:
            cmd = [sys.executable, str(HERE), "--measure", kind, str(path), *day]
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            runs[kind].append(r)
            print(f"  run {i + 1} {kind:7s} {r['seconds']:7.2f} s  cpu {r['cpu_seconds']:6.2f} s  "
                  f"peak {r['peak_mib']:6.0f} MiB")  # fmt: skip
    med = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
    cpu = {k: statistics.median(r["cpu_seconds"] for r in v) for k, v in runs.items()}
    print(f"\n{'':7s} {'wall s':>8s} {'/floor':>7s} {'cpu s':>7s} {'/floor':>7s} {'peak MiB':>9s}")
    for kind in kinds:
        peak = max(r["peak_mib"] for r in runs[kind])
        print(f"{kind:7s} {med[kind]:8.2f} {med[kind] / med['floor']:7.2f} {cpu[kind]:7.2f} "
              f"{cpu[kind] / cpu['floor']:7.2f} {peak:9.0f}")  # fmt: skip
    stages: dict[str, list[float]] = {}
    for r in runs["ours"]:
        for k, v in (r.get("timings") or {}).items():
            if isinstance(v, int | float):
                stages.setdefault(k, []).append(float(v))
    if stages:
        print("ours, stage medians (s): "
              + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in stages.items()))  # fmt: skip
    print(f"target: ours <= 1.5 x floor (wall, whole process); load now {_load()}")


if __name__ == "__main__":
    main()
