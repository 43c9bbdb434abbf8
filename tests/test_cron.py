"""cron/: the wrapper script (real bash, real flock) and the systemd units (systemd-analyze)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

CRON = Path(__file__).resolve().parent.parent / "cron"
WRAPPER = CRON / "run-detector.sh"

# A stand-in for the venv's python: records how it was called, then works for a while.
FAKE_PYTHON = """#!/bin/sh
{{
  echo "args=$*"
  echo "cwd=$(pwd)"
  echo "config=$ACS_DETECTOR_CONFIG"
  echo "secret=$ACS_DETECTOR_WEBHOOK_URL"
}} > "$FAKE_OUT.$$"
touch "$FAKE_OUT.started"
echo "job output on stdout"
sleep {sleep}
exit {code}
"""


def _fake(tmp_path: Path, name: str, sleep: float = 0, code: int = 0) -> Path:
    path = tmp_path / name
    path.write_text(FAKE_PYTHON.format(sleep=sleep, code=code))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _env(tmp_path: Path, python: Path, **extra: str) -> dict[str, str]:
    env_file = tmp_path / "acs-detector.env"
    env_file.write_text(
        "# secrets\nACS_DETECTOR_WEBHOOK_URL='json://127.0.0.1:9/hook?token=s3cret'\n"
    )
    env_file.chmod(0o600)
    return {
        # cron's environment: nothing but a minimal PATH.
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "ACS_DETECTOR_HOME": str(tmp_path / "home"),
        "ACS_DETECTOR_PYTHON": str(python),
        "ACS_DETECTOR_ENV_FILE": str(env_file),
        "ACS_DETECTOR_LOG": str(tmp_path / "log" / "job.log"),
        "FAKE_OUT": str(tmp_path / "out"),
        **extra,
    }


def _records(tmp_path: Path) -> list[str]:
    return sorted(p.read_text() for p in tmp_path.glob("out.[0-9]*"))


def test_two_runs_at_once_one_is_skipped_with_75(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    env = _env(tmp_path, _fake(tmp_path, "python", sleep=2))
    first = subprocess.Popen(["/bin/sh", "-c", str(WRAPPER)], env=env)
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "out.started").exists():
            assert first.poll() is None, "first run ended before it started working"
            assert time.monotonic() < deadline, "first run never started"
            time.sleep(0.05)
        second = subprocess.run([str(WRAPPER)], env=env, timeout=20)
        assert second.returncode == 75
        assert first.wait(timeout=20) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    # Exactly one job ran, as `python -m detector run`, in the install dir, with the env file.
    (record,) = _records(tmp_path)
    assert "args=-m detector run\n" in record
    assert f"cwd={tmp_path / 'home'}\n" in record
    assert f"config={tmp_path / 'home' / 'config' / 'detector.toml'}\n" in record
    assert "secret=json://127.0.0.1:9/hook?token=s3cret\n" in record
    log = (tmp_path / "log" / "job.log").read_text()
    assert "job output on stdout" in log
    assert re.search(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ run-detector: skipped: another run", log, re.M
    )
    assert "s3cret" not in log  # the wrapper never echoes the env file

    # The lock died with the first run: the next tick runs normally.
    assert subprocess.run([str(WRAPPER)], env=env, timeout=20).returncode == 0


def test_arguments_and_exit_codes_pass_through(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    env = _env(tmp_path, _fake(tmp_path, "python", code=2), ACS_DETECTOR_LOG="-")
    env["ACS_DETECTOR_CONFIG"] = str(tmp_path / "other.toml")
    proc = subprocess.run(
        [str(WRAPPER), "run", "--start", "2026-11-25T08:00:00Z", "--end", "2026-11-25T10:00:00Z"],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 2
    assert "job output on stdout" in proc.stdout  # "-" logs to stdout (the journal under systemd)
    (record,) = _records(tmp_path)
    assert (
        "args=-m detector run --start 2026-11-25T08:00:00Z --end 2026-11-25T10:00:00Z\n" in record
    )
    assert f"config={tmp_path / 'other.toml'}\n" in record


def test_timeout_kills_a_hung_run(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    env = _env(tmp_path, _fake(tmp_path, "python", sleep=30), ACS_DETECTOR_TIMEOUT="1s")
    t0 = time.monotonic()
    proc = subprocess.run([str(WRAPPER)], env=env, timeout=20)
    assert proc.returncode == 124 and time.monotonic() - t0 < 10
    assert "killed after 1s" in (tmp_path / "log" / "job.log").read_text()


def test_missing_python_or_unreadable_env_is_exit_2(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    env = _env(tmp_path, tmp_path / "no-such-python")
    proc = subprocess.run([str(WRAPPER)], env=env, capture_output=True, text=True, timeout=20)
    assert proc.returncode == 2 and "ACS_DETECTOR_PYTHON" in proc.stderr
    if os.geteuid() != 0:  # root reads any file
        env = _env(tmp_path, _fake(tmp_path, "python"))
        Path(env["ACS_DETECTOR_ENV_FILE"]).chmod(0)
        proc = subprocess.run([str(WRAPPER)], env=env, capture_output=True, text=True, timeout=20)
        assert proc.returncode == 2 and "env file" in proc.stderr


def test_wrapper_runs_the_real_cli(tmp_path: Path) -> None:
    """The real venv python and `python -m detector`: a usage error comes back as exit 2."""
    (tmp_path / "home").mkdir()
    env = _env(tmp_path, Path(sys.executable), ACS_DETECTOR_LOG="-")
    ok = subprocess.run(
        [str(WRAPPER), "--version"], env=env, capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0 and "acs-detector" in ok.stdout
    bad = subprocess.run(
        [str(WRAPPER), "no-such-command"], env=env, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2


def test_crontab_example_is_well_formed() -> None:
    lines = [
        ln
        for ln in (CRON / "acs-detector.cron").read_text().splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    jobs = [ln for ln in lines if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", ln)]
    assert jobs, "no job line"
    for job in jobs:
        fields = job.split(None, 5)
        assert len(fields) == 6, f"5 schedule fields + command expected: {job!r}"
        command = fields[5]
        assert command.startswith("/"), "cron has no PATH worth the name: absolute paths only"
        assert "%" not in command.replace(r"\%", ""), "unescaped % becomes a newline in cron"
        assert command.endswith("cron/run-detector.sh")


def _verify_units(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # The shipped unit points at /opt/acs-detector; verify checks that ExecStart exists, so
    # point it at this checkout's wrapper for the check.
    service = (CRON / "acs-detector.service").read_text()
    (tmp_path / "acs-detector.service").write_text(
        service.replace("/opt/acs-detector/cron/run-detector.sh", str(WRAPPER))
    )
    shutil.copy(CRON / "acs-detector.timer", tmp_path / "acs-detector.timer")
    return subprocess.run(
        ["systemd-analyze", "verify", "acs-detector.service", "acs-detector.timer"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (no systemd)"
)
def test_systemd_units_verify(tmp_path: Path) -> None:
    proc = _verify_units(tmp_path)
    # verify exits 0 on unknown keys, printing "ignoring": any output is a finding.
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr
    timer = (CRON / "acs-detector.timer").read_text()
    service = (CRON / "acs-detector.service").read_text()
    assert re.search(r"^Persistent=true$", timer, re.M)
    assert re.search(r"^Type=oneshot$", service, re.M)
    assert re.search(r"^SuccessExitStatus=75$", service, re.M)
    (calendar,) = re.findall(r"^OnCalendar=(.+)$", timer, re.M)
    cal = subprocess.run(
        ["systemd-analyze", "calendar", "--iterations=2", calendar],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TZ": "UTC"},  # one time per line
    )
    assert cal.returncode == 0, cal.stderr
    # Two consecutive elapses 5 minutes apart.
    stamps = re.findall(r"(\d\d):(\d\d):00", cal.stdout)
    minutes = [int(h) * 60 + int(m) for h, m in stamps[:2]]
    assert len(minutes) == 2 and (minutes[1] - minutes[0]) % 1440 == 5


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (no systemd)"
)
def test_systemd_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a bad calendar expression is reported."""
    proc = _verify_units(tmp_path)
    assert proc.returncode == 0
    timer = tmp_path / "acs-detector.timer"
    timer.write_text(timer.read_text().replace("*:00/5:00", "*:61:00"))
    proc = subprocess.run(
        ["systemd-analyze", "verify", "acs-detector.service", "acs-detector.timer"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 or proc.stderr.strip()


@pytest.mark.slow
def test_missed_runs_are_caught_up_from_the_watermark(tmp_path: Path) -> None:
    """The real CLI behind the wrapper: after skipped ticks, the next run judges the whole gap
    from where the last one stopped (state in <state>/pipeline.json, report in reports/)."""
    import json

    home = tmp_path / "home"
    (home / "config").mkdir(parents=True)
    data = tmp_path / "data"
    from detector.cli import main

    simulate = ["simulate", "--out", str(data), "--days", "1", "--seed", "5"]
    assert main([*simulate, "--calls-per-hour", "10", "--start", "2026-11-20T18:00:00Z"]) == 0
    (home / "config" / "detector.toml").write_text(
        f'[source]\nkind = "file"\npath = "{data}"\n\n'
        '[detection]\nbaseline = "1d"\nmax_window = "2h"\n\n'  # a quick first run
        f'[state]\npath = "{home / "state"}"\n'
    )
    env = _env(tmp_path, Path(sys.executable), ACS_DETECTOR_LOG="-")

    def run_at(now: str) -> dict[str, object]:
        proc = subprocess.run(
            [str(WRAPPER), "run", "--now", now],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return json.loads((home / "state" / "reports" / "latest.json").read_text())

    first = run_at("2026-11-21T12:00:00Z")
    # Ticks at 12:05 ... 12:55 never ran (machine off). The 13:00 run covers the gap.
    second = run_at("2026-11-21T13:00:00Z")
    assert second["window"]["start"] == first["window"]["end"]  # type: ignore[index]
    assert first["window"]["end"] == "2026-11-21T11:50:00Z"  # type: ignore[index]  # now - delay
    assert second["window"]["end"] == "2026-11-21T12:50:00Z"  # type: ignore[index]


# --------------------------------------------------------------------------------------------
# The install as cron/README.md lays it out: a root-owned, read-only checkout, an env file
# root:<service group> mode 640, state and log directories owned by the service user, and the
# wrapper run as that (unprivileged) user.
# --------------------------------------------------------------------------------------------

# Values a shell would mangle: `&` (mailtos to=), `;` and `==` (storage connection strings),
# quotes, spaces, `$` and command substitutions (which must not run), a Windows line end.
ENV_FILE = (
    "# acs-detector secrets: KEY=VALUE, read literally\n"
    "\n"
    "ACS_DETECTOR_EMAIL_URL=mailtos://alerts:p%40ss@smtp.example.com:587?from=a@example.com&to=oncall@example.com\n"
    "ACS_DETECTOR_STORAGE_CONNECTION_STRING=DefaultEndpointsProtocol=https;AccountName=st;AccountKey=bXk=a2V5==;EndpointSuffix=core.windows.net\n"
    'ACS_DETECTOR_TEAMS_URL="workflows://prod-01.westeurope.logic.azure.com:443/abc/def?api-version=2016-06-01&sp=%2Ftriggers&sig=AbC_d-E"\n'
    "  QUOTED_SINGLE='two  spaces \"inside\"'  \n"
    "SPACES=a value with spaces\n"
    "HOSTILE=$(touch {marker}) `touch {marker}` ${{HOME}} $HOME; touch {marker} & echo\n"
    "EMPTY=\n"
    "WINDOWS_LINE=crlf\r\n"
    "# COMMENTED=out\n"
    "LAST_LINE_WITHOUT_NEWLINE=end"
)
EXPECTED = {
    "ACS_DETECTOR_EMAIL_URL": "mailtos://alerts:p%40ss@smtp.example.com:587?from=a@example.com&to=oncall@example.com",
    "ACS_DETECTOR_STORAGE_CONNECTION_STRING": "DefaultEndpointsProtocol=https;AccountName=st;AccountKey=bXk=a2V5==;EndpointSuffix=core.windows.net",
    "ACS_DETECTOR_TEAMS_URL": "workflows://prod-01.westeurope.logic.azure.com:443/abc/def?api-version=2016-06-01&sp=%2Ftriggers&sig=AbC_d-E",
    "QUOTED_SINGLE": 'two  spaces "inside"',
    "SPACES": "a value with spaces",
    "HOSTILE": "$(touch {marker}) `touch {marker}` ${{HOME}} $HOME; touch {marker} & echo",
    "EMPTY": "",
    "WINDOWS_LINE": "crlf",
    "LAST_LINE_WITHOUT_NEWLINE": "end",
}

# The job stand-in: dumps the environment it was given, NUL-separated (values are exact).
ENV_DUMP = """#!/bin/sh
env -0 > "$DUMP_TO"
echo "job ran as $(id -u) in $(pwd)"
exit "${FAKE_EXIT:-0}"
"""


def _free_id() -> int:
    """A uid (and gid) nobody has: the test's service user needs no passwd entry."""
    import grp
    import pwd

    for candidate in range(61000, 62000):
        try:
            pwd.getpwuid(candidate)
            continue
        except KeyError:
            pass
        try:
            grp.getgrgid(candidate)
        except KeyError:
            return candidate
    pytest.skip("no free uid/gid in 61000-61999")


class Install:
    """A sandboxed /opt, /etc, /var laid out as cron/README.md installs them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uid = self.gid = _free_id() if os.geteuid() == 0 else os.getuid()
        if os.geteuid() != 0:
            self.gid = os.getgid()
        self.home = root / "opt" / "acs-detector"
        (self.home / "cron").mkdir(parents=True)
        (self.home / ".venv" / "bin").mkdir(parents=True)
        shutil.copy(WRAPPER, self.home / "cron" / "run-detector.sh")
        python = self.home / ".venv" / "bin" / "python"
        python.write_text(ENV_DUMP)
        for path in (self.home / "cron" / "run-detector.sh", python):
            path.chmod(0o755)
        self.state = root / "var" / "lib" / "acs-detector"
        self.logs = root / "var" / "log" / "acs-detector"
        for d in (self.state, self.logs):
            d.mkdir(parents=True)
            os.chown(d, self.uid, self.gid)  # install -d -o acs-detector -g acs-detector -m 750
            d.chmod(0o750)
        self.env_file = root / "etc" / "acs-detector.env"
        self.env_file.parent.mkdir()
        self.marker = root / "pwned"
        self.log = self.logs / "acs-detector.log"
        self.dump = self.state / "env.dump"

    def write_env(self, text: str, mode: int = 0o640, group: int | None = None) -> None:
        self.env_file.write_text(text.format(marker=self.marker))
        # install -m 640 -o root -g acs-detector: root writes it, the service user reads it.
        os.chown(self.env_file, os.geteuid(), self.gid if group is None else group)
        self.env_file.chmod(mode)

    def run(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        """The wrapper as the service user, with cron's environment and the README's paths."""
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(self.state),
            "ACS_DETECTOR_ENV_FILE": str(self.env_file),
            "ACS_DETECTOR_LOG": str(self.log),
            "DUMP_TO": str(self.dump),
            **extra,
        }
        argv = [str(self.home / "cron" / "run-detector.sh"), *args]
        if os.geteuid() == 0:
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.skip("setpriv (util-linux) not installed: cannot drop root")
            argv = [
                setpriv,
                f"--reuid={self.uid}",
                f"--regid={self.gid}",
                "--clear-groups",
                "--inh-caps=-all",
                *argv,
            ]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)

    def seen(self) -> dict[str, str]:
        pairs = [p.split("=", 1) for p in self.dump.read_bytes().decode().split("\0") if p]
        return dict(pairs)  # type: ignore[arg-type]


@pytest.fixture
def install() -> Install:
    import tempfile

    # Not tmp_path: pytest's base directory is private to the user running the tests, and the
    # service user must be able to reach the install like any /opt.
    root = Path(tempfile.mkdtemp(prefix="acs-install-", dir="/tmp"))
    root.chmod(0o755)
    yield Install(root)
    shutil.rmtree(root, ignore_errors=True)


def test_env_file_values_reach_the_job_literally_as_the_service_user(install: Install) -> None:
    install.write_env(ENV_FILE)
    proc = install.run()
    assert proc.returncode == 0, proc.stderr + install.log.read_text()
    seen = install.seen()
    expected = {k: v.format(marker=install.marker) for k, v in EXPECTED.items()}
    assert {k: seen.get(k) for k in expected} == expected
    assert "COMMENTED" not in seen
    assert not install.marker.exists(), "a value was run as shell"
    # It ran as the service user, in the read-only install, and logged where the README says.
    assert f"job ran as {install.uid} in {install.home}\n" in install.log.read_text()
    assert seen["ACS_DETECTOR_CONFIG"] == str(install.home / "config" / "detector.toml")
    if os.geteuid() == 0:  # the checkout is root's: the lock needs no write access to it
        assert install.home.stat().st_uid == 0 and install.home.stat().st_mode & 0o022 == 0
    assert proc.stdout == "" and proc.stderr == ""  # a good run mails nothing under cron


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a file another user cannot read")
def test_unreadable_env_file_is_in_the_log_not_only_on_stderr(install: Install) -> None:
    """The README's old `install -m 600` (root only): the service user cannot read it."""
    install.write_env(ENV_FILE, mode=0o600, group=0)
    proc = install.run()
    assert proc.returncode == 2
    logged = install.log.read_text()
    assert re.search(
        r"^\S+Z run-detector: cannot read env file .*mode 640 \(exit 2\)$", logged, re.M
    )
    assert "cannot read env file" in proc.stderr  # and on stderr, which cron mails
    assert not install.dump.exists()


def test_malformed_env_line_stops_the_run_without_showing_the_secret(install: Install) -> None:
    install.write_env("GOOD=1\nexport TOKEN=s3cret-value\n")
    proc = install.run()
    assert proc.returncode == 2 and not install.dump.exists()
    logged = install.log.read_text()
    assert "line 2: not a KEY=VALUE line" in logged and "line 2" in proc.stderr
    assert "s3cret" not in logged + proc.stderr


def test_wrapper_failures_reach_the_log(install: Install) -> None:
    install.write_env("A=1\n")
    missing = install.run(ACS_DETECTOR_PYTHON=str(install.root / "no-python"))
    assert missing.returncode == 2
    assert "python not found" in install.log.read_text() and "python not found" in missing.stderr
    failed = install.run(FAKE_EXIT="1")
    assert failed.returncode == 1
    assert "run failed: runtime failure" in install.log.read_text()
    assert "run failed" in failed.stderr


def test_unwritable_log_falls_back_to_stderr_and_syslog(install: Install) -> None:
    if os.geteuid() != 0:
        pytest.skip("the install is writable by its owner when not root")
    install.write_env("A=1\n")
    proc = install.run(ACS_DETECTOR_LOG=str(install.home / "log" / "acs-detector.log"))
    assert proc.returncode == 0
    assert "cannot write log file" in proc.stderr and "job ran as" in proc.stdout


def test_shipped_files_match_the_readme_install() -> None:
    """Static checks for what no test here can run: the README's steps and the unit's paths."""
    readme = (CRON / "README.md").read_text()
    service = (CRON / "acs-detector.service").read_text()
    crontab = (CRON / "acs-detector.cron").read_text()
    assert re.search(r"^StateDirectory=acs-detector$", service, re.M)
    assert re.search(r"^LogsDirectory=acs-detector$", service, re.M)
    assert "ReadWritePaths=/opt" not in service  # the install stays read-only
    assert not re.search(r"^EnvironmentFile=", service, re.M)  # one parser: the wrapper's
    assert not re.search(r'^MAILTO=""', crontab, re.M)
    assert "chown -R acs-detector" not in readme
    assert "install -m 640 -o root -g acs-detector /dev/null /etc/acs-detector.env" in readme
    # The final check runs through the wrapper, so it sees the env file like the job does.
    assert re.search(r"sudo -u acs-detector .*cron/run-detector\.sh check-config", readme)
    example = (CRON.parent / "config" / "log-analytics.example.toml").read_text()
    assert 'path = "/var/lib/acs-detector"' in example
    assert 'models = "/var/lib/acs-detector/models"' in example
