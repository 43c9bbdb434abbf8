#!/usr/bin/env bash
# run-detector.sh: run acs-detector once, from cron or a systemd timer.
#
#   run-detector.sh                 scheduled run: window = stored watermark .. now - delay
#   run-detector.sh run --start 2026-11-25T08:00:00Z --end 2026-11-25T10:00:00Z   (any CLI args)
#
# What it does, and why:
# - Takes the job's own lock with `flock -n -E 75`: if the previous run is still going, this one
#   exits 75 at once ("skipped"; the next run catches up from the watermark) instead of piling up.
#   The detector also locks its state store itself (<state>/.run.lock), which covers manual runs
#   started outside this wrapper; this outer lock is a different file on purpose (flock's child
#   keeps the outer lock's descriptor, so sharing the file would make the job lock itself out).
# - Uses the virtualenv's python by absolute path (cron has PATH=/usr/bin:/bin and no profile).
# - Reads secrets (webhook URLs, SMTP passwords, connection strings) from an env file that only
#   the service user can read, never from the crontab.
# - Logs to a file (cron) or to the journal (under systemd, or ACS_DETECTOR_LOG=journal), so cron
#   mails nothing on success.
#
# Settings (environment variables; all optional):
#   ACS_DETECTOR_HOME      install directory, the working directory of the job (relative paths in
#                          the config, e.g. [state] path, resolve here). Default: this script's ../
#   ACS_DETECTOR_PYTHON    python of the venv. Default: $ACS_DETECTOR_HOME/.venv/bin/python
#   ACS_DETECTOR_ENV_FILE  env file with secrets, sourced with `set -a`. Default: /etc/acs-detector.env
#                          (skipped if absent)
#   ACS_DETECTOR_CONFIG    config file. Default: $ACS_DETECTOR_HOME/config/detector.toml
#   ACS_DETECTOR_LOG       log file, or "journal" (systemd-cat), or "-" (stdout).
#                          Default: "-" under systemd (stdout is the journal), else
#                          $ACS_DETECTOR_HOME/log/acs-detector.log
#   ACS_DETECTOR_LOCK      wrapper lock file. Default: $ACS_DETECTOR_HOME/.wrapper.lock
#   ACS_DETECTOR_TIMEOUT   kill a run that takes longer (timeout(1) syntax). Default: 15m
#
# Exit codes: those of `acs-detector` (0 ran, 1 runtime failure, 2 bad config or usage,
# 75 skipped because another run holds the lock), 124 when ACS_DETECTOR_TIMEOUT was hit.
set -u
set -o pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
home="${ACS_DETECTOR_HOME:-$(dirname "$here")}"
python="${ACS_DETECTOR_PYTHON:-$home/.venv/bin/python}"
env_file="${ACS_DETECTOR_ENV_FILE:-/etc/acs-detector.env}"
lock="${ACS_DETECTOR_LOCK:-$home/.wrapper.lock}"
run_timeout="${ACS_DETECTOR_TIMEOUT:-15m}"

# Secrets: exported to the job, never echoed. A missing file is fine (e.g. managed identity).
if [ -r "$env_file" ]; then
    set -a
    # shellcheck disable=SC1090
    . "$env_file"
    set +a
elif [ -e "$env_file" ]; then
    echo "run-detector: cannot read env file $env_file" >&2
    exit 2
fi
# The CLI reads its config path from ACS_DETECTOR_CONFIG (design §2).
export ACS_DETECTOR_CONFIG="${ACS_DETECTOR_CONFIG:-$home/config/detector.toml}"

if [ -n "${JOURNAL_STREAM:-}" ]; then default_log="-"; else default_log="$home/log/acs-detector.log"; fi
log="${ACS_DETECTOR_LOG:-$default_log}"

if [ ! -x "$python" ]; then
    echo "run-detector: python not found or not executable: $python (set ACS_DETECTOR_PYTHON)" >&2
    exit 2
fi
cd "$home" || exit 2

if [ "$#" -eq 0 ]; then set -- run; fi
cmd=(/usr/bin/flock -n -E 75 "$lock" timeout --kill-after=30s "$run_timeout" "$python" -m detector "$@")

stamp() { date -u +%Y-%m-%dT%H:%M:%SZ; }

case "$log" in
    -)
        "${cmd[@]}"
        rc=$?
        ;;
    journal)
        # systemd-cat runs the command with stdout/stderr connected to the journal.
        systemd-cat -t acs-detector "${cmd[@]}"
        rc=$?
        ;;
    *)
        mkdir -p "$(dirname "$log")" || exit 2
        "${cmd[@]}" >>"$log" 2>&1
        rc=$?
        ;;
esac

# One line for the runs that did not do their work, so the log shows why.
msg=""
case "$rc" in
    75) msg="skipped: another run holds the lock" ;;
    124) msg="killed after $run_timeout (ACS_DETECTOR_TIMEOUT)" ;;
esac
if [ -n "$msg" ]; then
    line="$(stamp) run-detector: $msg (exit $rc)"
    case "$log" in
        -) echo "$line" ;;
        journal) echo "$line" | systemd-cat -t acs-detector ;;
        *) echo "$line" >>"$log" ;;
    esac
fi
exit "$rc"
