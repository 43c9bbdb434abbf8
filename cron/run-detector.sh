#!/usr/bin/env bash
# run-detector.sh: run acs-detector once, from cron or a systemd timer.
#
#   run-detector.sh                 scheduled run: window = stored watermark .. now - delay
#   run-detector.sh run --start 2026-11-25T08:00:00Z --end 2026-11-25T10:00:00Z   (any CLI args)
#   run-detector.sh check-config    the config as the job sees it (env file loaded)
#
# What it does, and why:
# - Reads secrets (webhook URLs, SMTP passwords, connection strings) from an env file, as
#   literal KEY=VALUE lines: nothing in it is run or expanded, so `&`, `;`, `=`, `$`, quotes and
#   spaces in a value reach the job as written (see read_env_file below).
# - Takes a lock with `flock -n -E 75`: if the previous run is still going, this one exits 75 at
#   once ("skipped"; the next run catches up from the watermark) instead of piling up. The lock
#   is the install directory itself, which the service user can open but not write (the install
#   is read-only). The detector also locks its state store (<state>/.run.lock), which covers
#   manual runs started outside this wrapper.
# - Uses the virtualenv's python by absolute path (cron has PATH=/usr/bin:/bin and no profile).
# - Sends the job's output and its own errors to a log file (cron) or to the journal (under
#   systemd, or ACS_DETECTOR_LOG=journal). Its own failures (unreadable env file, missing
#   python, failed run) also go to stderr, which cron mails to MAILTO and systemd journals.
#
# Settings (environment variables; all optional):
#   ACS_DETECTOR_HOME      install directory, the working directory of the job (relative paths in
#                          the config resolve here). Default: this script's ../
#   ACS_DETECTOR_PYTHON    python of the venv. Default: $ACS_DETECTOR_HOME/.venv/bin/python
#   ACS_DETECTOR_ENV_FILE  env file with secrets (KEY=VALUE lines, `#` comments).
#                          Default: /etc/acs-detector.env (skipped if absent)
#   ACS_DETECTOR_CONFIG    config file. Default: $ACS_DETECTOR_HOME/config/detector.toml
#   ACS_DETECTOR_LOG       log file, or "journal" (systemd-cat), or "-" (stdout/stderr).
#                          Default: "-" under systemd (stdout is the journal), else
#                          /var/log/acs-detector/acs-detector.log
#   ACS_DETECTOR_LOCK      wrapper lock (file or directory). Default: $ACS_DETECTOR_HOME
#   ACS_DETECTOR_TIMEOUT   kill a run that takes longer (timeout(1) syntax). Default: 15m
#
# Exit codes: those of `acs-detector` (0 ran, 1 runtime failure, 2 bad config or usage,
# 75 skipped because another run holds the lock), 124 when ACS_DETECTOR_TIMEOUT was hit; 2 too
# when the wrapper cannot start the job (env file unreadable or malformed, python missing).
set -u
set -o pipefail
# State, reports and logs are for the service user and its group (systemd: UMask=0027).
umask 027

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
home="${ACS_DETECTOR_HOME:-$(dirname "$here")}"
python="${ACS_DETECTOR_PYTHON:-$home/.venv/bin/python}"
env_file="${ACS_DETECTOR_ENV_FILE:-/etc/acs-detector.env}"
lock="${ACS_DETECTOR_LOCK:-$home}"
run_timeout="${ACS_DETECTOR_TIMEOUT:-15m}"
if [ -n "${JOURNAL_STREAM:-}" ]; then default_log="-"; else
    default_log="/var/log/acs-detector/acs-detector.log"
fi
log="${ACS_DETECTOR_LOG:-$default_log}"

stamp() { date -u +%Y-%m-%dT%H:%M:%SZ; }

# note LEVEL MESSAGE: one line about the wrapper's own work, to the log destination. Failures
# (LEVEL error) also go to stderr, so cron mails them and nothing depends on one channel; if
# the log file cannot be written, the line goes to syslog/the journal through logger(1).
note() {
    local level="$1" line
    line="$(stamp) run-detector: $2"
    case "$log" in
        -) echo "$line" >&2; return ;;
        journal) echo "$line" | systemd-cat -t acs-detector -p "$level" 2>/dev/null ||
            logger -t acs-detector -p "user.$level" -- "$line" 2>/dev/null ;;
        *) { mkdir -p "$(dirname "$log")" && echo "$line" >>"$log"; } 2>/dev/null ||
            { logger -t acs-detector -p user.err -- "$line (log file $log not writable)" 2>/dev/null
              echo "$line (log file $log not writable)" >&2; return; } ;;
    esac
    if [ "$level" = err ]; then echo "$line" >&2; fi
}

# read_env_file FILE: export each KEY=VALUE line of FILE literally. Blank lines and lines
# starting with `#` are skipped; spaces around the line are dropped; one pair of matching
# quotes around the whole value ("..." or '...') is stripped; everything else, backslashes
# and `$` included, is kept as written. Never sourced by the shell: a value such as
# `mailtos://...&to=...` or `...;AccountKey=...==` must not be cut or run. A line that is not
# KEY=VALUE stops the wrapper (exit 2) with its line number, never its content (a secret).
read_env_file() {
    local file="$1" n=0 line key value
    while IFS= read -r line || [ -n "$line" ]; do
        n=$((n + 1))
        line="${line%$'\r'}"                       # files edited on Windows
        line="${line#"${line%%[![:space:]]*}"}"    # leading blanks
        line="${line%"${line##*[![:space:]]}"}"    # trailing blanks
        case "$line" in '' | '#'*) continue ;; esac
        key="${line%%=*}"
        if [ "$key" = "$line" ] || ! [[ "$key" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
            note err "env file $file line $n: not a KEY=VALUE line (KEY: letters, digits, _)"
            return 2
        fi
        value="${line#*=}"
        if [ "${#value}" -ge 2 ]; then
            case "$value" in
                \"*\" | \'*\') value="${value:1:${#value}-2}" ;;
            esac
        fi
        export "$key=$value"
    done <"$file"
}

# Secrets: exported to the job, never echoed. A missing file is fine (e.g. managed identity);
# one that exists but cannot be read is a broken install, said loudly.
if [ -e "$env_file" ]; then
    if [ ! -r "$env_file" ]; then
        user="$(id -un 2>/dev/null)" || user="uid $(id -u)"
        group="$(id -gn 2>/dev/null)" || group="gid $(id -g)"
        note err "cannot read env file $env_file as $user: give it group $group, mode 640 (exit 2)"
        exit 2
    fi
    read_env_file "$env_file" || exit 2
fi
# The CLI reads its config path from ACS_DETECTOR_CONFIG (design §2).
export ACS_DETECTOR_CONFIG="${ACS_DETECTOR_CONFIG:-$home/config/detector.toml}"

if [ ! -x "$python" ]; then
    note err "python not found or not executable: $python (set ACS_DETECTOR_PYTHON) (exit 2)"
    exit 2
fi
if ! cd "$home"; then
    note err "cannot enter ACS_DETECTOR_HOME $home (exit 2)"
    exit 2
fi

if [ "$#" -eq 0 ]; then set -- run; fi
cmd=(/usr/bin/flock -n -E 75 "$lock" timeout --kill-after=30s "$run_timeout" "$python" -m detector "$@")

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
        if { mkdir -p "$(dirname "$log")" && : >>"$log"; } 2>/dev/null; then
            "${cmd[@]}" >>"$log" 2>&1
            rc=$?
        else
            note err "cannot write log file $log; the job's output goes to stderr"
            "${cmd[@]}"
            rc=$?
        fi
        ;;
esac

# One line for the runs that did not do their work, so the log shows why.
case "$rc" in
    0) ;;
    75) note notice "skipped: another run holds the lock (exit 75)" ;;
    124) note err "killed after $run_timeout (ACS_DETECTOR_TIMEOUT) (exit 124)" ;;
    1) note err "run failed: runtime failure, see the job's lines above (exit 1)" ;;
    2) note err "run failed: bad config or usage, see the job's lines above (exit 2)" ;;
    *) note err "run failed (exit $rc)" ;;
esac
exit "$rc"
