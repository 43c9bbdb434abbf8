"""Azurite (the Azure Storage emulator, npm ``azurite``) for the Blob store tests.

``azurite_blob`` is a session fixture: it installs the pinned package (``npm ci --prefix
tests/azurite``) when ``node_modules`` is missing, starts ``azurite-blob`` on 127.0.0.1 on a
free port with in-memory storage, waits until it answers and yields a connection string. One
emulator serves the whole session; it stops when the test process exits (or dies). Without Node.js the tests that use it FAIL with
a message saying what to install: the Blob store is a real part and CI has Node.

Import it into a test module (``from fixtures_azurite import azurite_blob``).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

AZURITE_DIR = Path(__file__).parent / "azurite"
# Azurite's well-known development account (public, documented by Microsoft; not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _azurite_bin() -> Path:
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            "Node.js and npm are required for the Azure Blob store tests (Azurite); "
            "install Node.js >= 18 (Debian: apt-get install nodejs npm)",
            pytrace=False,
        )
    binary = AZURITE_DIR / "node_modules" / ".bin" / "azurite-blob"
    if not binary.exists():
        proc = subprocess.run(
            [npm, "ci", "--prefix", str(AZURITE_DIR), "--no-audit", "--no-fund"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0 or not binary.exists():
            pytest.fail(
                f"npm ci --prefix {AZURITE_DIR} failed ({proc.returncode}):\n{proc.stderr[-2000:]}",
                pytrace=False,
            )
    return binary


def connection_string(port: int) -> str:
    """Connection string for the Azurite blob endpoint on ``127.0.0.1:port``."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
    )


def _wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = log.read_text(errors="replace") if log.exists() else ""
            pytest.fail(
                f"azurite-blob exited with {proc.returncode}:\n{out[-2000:]}", pytrace=False
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    _stop(proc)
    pytest.fail(
        f"azurite-blob did not listen on 127.0.0.1:{port} within {timeout:.0f}s", pytrace=False
    )


def _die_with_parent() -> None:
    # Linux: SIGTERM Azurite if the test process dies without running its cleanup (e.g.
    # SIGKILL on a timeout), so no emulator is left behind on a shared machine.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# One emulator per test session, shared by every module that imports the fixture (pytest
# would otherwise create one per importing module). Stopped at interpreter exit.
_SERVER: dict[str, Any] = {}


def _start(workdir: Path) -> str:
    binary = _azurite_bin()
    port = _free_port()
    log = workdir / "azurite.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(binary),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(port),
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--loose",
                "--silent",
                "--disableTelemetry",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,  # --inMemoryPersistence refuses --location; keep any stray files here
            # Only the well-known development account, whatever the caller's environment says.
            env={k: v for k, v in os.environ.items() if k != "AZURITE_ACCOUNTS"},
            preexec_fn=_die_with_parent,
        )
    _wait_ready(port, proc, log)
    atexit.register(_stop, proc)
    _SERVER.update(proc=proc, conn=connection_string(port))
    return str(_SERVER["conn"])


@pytest.fixture(scope="session")
def azurite_blob(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Azurite's blob service on 127.0.0.1 (started once per session); its connection string."""
    proc = _SERVER.get("proc")
    if proc is None or proc.poll() is not None:
        _start(tmp_path_factory.mktemp("azurite"))
    yield str(_SERVER["conn"])


@pytest.fixture
def blob_container(azurite_blob: str) -> str:
    """A fresh, unique container name for one test (created lazily by the backend)."""
    return f"t{uuid.uuid4().hex[:20]}"
