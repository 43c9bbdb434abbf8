#!/usr/bin/env bash
# package.sh OUTDIR: assemble the Azure Functions app (function_app.py, host.json,
# requirements.txt, config/, and the detector package itself) into OUTDIR, ready for
#   cd OUTDIR && func azure functionapp publish <APP_NAME> --python
# The app root must contain the `detector` package: the remote build installs only
# requirements.txt, and the app root is on the worker's sys.path.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${1:?usage: package.sh OUTDIR}"
mkdir -p "$out"
cp "$here/function_app.py" "$here/host.json" "$here/requirements.txt" "$here/.funcignore" "$out/"
mkdir -p "$out/config"
cp "$here/config/detector.toml" "$out/config/detector.toml"
rm -rf "$out/detector"
# The package without caches; models are fitted at run time and kept in Blob Storage.
(cd "$repo" && find detector -type d -name __pycache__ -prune -o -type f -print) |
    while read -r f; do mkdir -p "$out/$(dirname "$f")" && cp "$repo/$f" "$out/$f"; done
echo "packaged into $out"
