#!/usr/bin/env bash
# Decision digest: `acs-detector evaluate --json` on simulated data sets, timings dropped,
# hashed. The same hashes before and after a refactor = the engine decides bit-identically.
#
#   bash benchmarks/decision_digest.sh DATA_DIR [DATA_DIR ...]
#
# DATA_DIR: a directory written by `acs-detector simulate` or cached by bench_quality.py /
# bench_holdout.py (--data), e.g. /tmp/qs/own/fleet_failure_spike_d7_s1. Run from the checkout
# whose code you want digested (its detector/ is put first on the path).
set -euo pipefail
py="${PYTHON:-.venv/bin/python}"
for d in "$@"; do
  PYTHONPATH="$PWD" "$py" -m detector evaluate --data "$d" --json 2>/dev/null \
  | "$py" -c '
import hashlib, json, sys
rows = json.load(sys.stdin)["rows"]
for r in rows:
    for k in ("seconds", "load_seconds"):
        r.pop(k, None)
print(hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16], sys.argv[1])
' "$(basename "$d")"
done
