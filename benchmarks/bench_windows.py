"""Peak RSS and wall time against the length of a manual window, over one Parquet file.

Issue 19: memory must follow what is judged, not the window. One simulated file (``--days``
of data, ``--rows`` in all, cached under ``--data``); each window ends at the data's end and
reaches back ``--windows`` (default 1 day, 1 month, 1 year), so the month and the year cover
every row of the file and the year adds eleven months with nothing in them. Each run is a
whole fresh process, as cron runs it (interpreter start and imports included)::

    acs-detector --config CFG run --start END-W --end END --dry-run --report R

Beside them, the bare DuckDB floor over the same file (``GROUP BY`` operation, version,
5-minute bucket with count and p50/p95, fetched into Python: ``bench_aggregate.FLOOR_SQL``).
Peak RSS is the child's own (``os.wait4``); the box is shared, so the load average is printed.
Not a timed test: the target is <= 1 GiB peak for any window.

    .venv/bin/python benchmarks/bench_windows.py [--rows 10000000] [--days 8]
        [--windows 1d,30d,365d] [--step 1h] [--data /tmp/acs-bench-windows]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

from bench_aggregate import FLOOR_SQL, ROWS_PER_CPH_DAY, _load  # noqa: E402

BIN = Path(sys.executable).parent


def _ensure_data(data: Path, rows: int, days: int) -> tuple[Path, datetime]:
    """The simulated file (made when missing) and the end of its data."""
    path = data / "operations.parquet"
    meta = data / "simulation.json"
    if not path.exists():
        from detector.simulate import SimSpec, simulate

        cph = max(1.0, rows / (days * ROWS_PER_CPH_DAY))
        print(f"simulating ~{rows:,} rows over {days} days into {data} (calls_per_hour={cph:.0f})")
        t0 = time.perf_counter()
        res = simulate(data, SimSpec(days=days, seed=19, calls_per_hour=cph), fmt="parquet")
        print(f"  done in {time.perf_counter() - t0:.0f} s: {res.summary().splitlines()[0]}")
    end = json.loads(meta.read_text())["end"]
    return path, datetime.fromisoformat(end.replace("Z", "+00:00"))


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _command(kind: str, path: Path, work: Path, window: tuple[datetime, datetime], step: str):
    if kind == "floor":
        code = (
            "import duckdb, sys; con = duckdb.connect(config={'memory_limit': '640MB'}); "
            f"con.execute({FLOOR_SQL!r}, [sys.argv[1]]).fetchall()"
        )
        return [sys.executable, "-c", code, str(path)]
    cfg = work / "detector.toml"
    cfg.write_text(
        f'[source]\nkind = "file"\npath = "{path}"\n[detection]\nstep = "{step}"\n'
        f'[state]\npath = "{work / "state"}"\nmodels = "{work / "models"}"\n'
    )
    return [str(BIN / "acs-detector"), "--config", str(cfg), "run",
            "--start", _iso(window[0]), "--end", _iso(window[1]),
            "--dry-run", "--report", str(work / "report.json")]  # fmt: skip


def _measure(cmd: list[str], work: Path) -> dict[str, object]:
    """Run ``cmd``; its wall seconds, CPU seconds and peak RSS, and the run report's counts."""
    log = work / "stderr.log"  # a file, not a pipe: a step's log line must never block
    with log.open("wb") as err_file:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err_file)
        _, status, usage = os.wait4(proc.pid, 0)
        secs = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        err = log.read_text(errors="replace")
        raise SystemExit(f"failed ({code}): {' '.join(cmd)}\n{err[-2000:]}")
    out: dict[str, object] = {
        "seconds": secs,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_mib": usage.ru_maxrss / 1024,
    }
    report = work / "report.json"
    if report.exists():
        rep = json.loads(report.read_text())
        det = rep.get("detection", {})
        out.update(
            steps=det.get("steps", 0),
            buckets=det.get("buckets_judged", 0),
            anomalies=len(rep.get("anomalies") or []),
            rows=rep.get("source", {}).get("rows_read", 0),
            timings=rep.get("timings_s", {}),
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--days", type=int, default=8)
    ap.add_argument("--windows", default="1d,30d,365d")
    ap.add_argument("--step", default="1h")
    ap.add_argument("--data", type=Path, default=Path("/tmp/acs-bench-windows"))
    args = ap.parse_args()

    from detector.detect.decide import parse_duration

    path, end = _ensure_data(args.data, args.rows, args.days)
    print(f"file {path} ({path.stat().st_size / 2**20:.0f} MiB), data ends {_iso(end)}, "
          f"step {args.step}, cores {os.cpu_count()}, load {_load()}")  # fmt: skip
    rows = [("floor", None)] + [
        (w, (end - parse_duration(w), end)) for w in args.windows.split(",") if w
    ]
    print(f"{'window':>8s} {'wall s':>8s} {'cpu s':>7s} {'peak MiB':>9s} {'/floor':>7s} "
          f"{'steps':>6s} {'buckets':>8s} {'alerts':>6s} {'rows read':>11s}")  # fmt: skip
    floor_s = None
    for name, window in rows:
        work = Path(tempfile.mkdtemp(prefix="acs-bench-windows-"))
        try:
            kind = "floor" if window is None else "ours"
            r = _measure(_command(kind, path, work, window, args.step), work)  # type: ignore[arg-type]
        finally:
            shutil.rmtree(work, ignore_errors=True)
        floor_s = floor_s or float(r["seconds"])  # type: ignore[arg-type]
        print(f"{name:>8s} {r['seconds']:8.1f} {r['cpu_seconds']:7.1f} {r['peak_mib']:9.0f} "
              f"{float(r['seconds']) / floor_s:7.2f} {r.get('steps', ''):>6} "
              f"{r.get('buckets', ''):>8} {r.get('anomalies', ''):>6} "
              f"{r.get('rows', ''):>11}", flush=True)  # fmt: skip
        if r.get("timings"):
            print(f"{'':8s} stages (s): {json.dumps(r['timings'])}", flush=True)
    print(f"target: peak <= 1024 MiB for every window; load now {_load()}")


if __name__ == "__main__":
    main()
