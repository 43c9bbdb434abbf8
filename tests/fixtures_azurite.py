"""Azurite (the Azure Storage emulator, npm ``azurite``) for the Blob store tests.

``azurite_blob`` is a session fixture: it installs the pinned package (``npm ci --prefix
tests/azurite``) when ``node_modules`` is missing, starts ``azurite-blob`` on 127.0.0.1 on a
free port with in-memory storage, waits until it answers, yields a connection string and
stops the process at the end of the session. Without Node.js the tests that use it FAIL with
a message saying what to install: the Blob store is a real part and CI has Node.

Import it into a test module (``from fixtures_azurite import azurite_blob``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

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


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            pytest.fail(
                f"azurite-blob exited with {proc.returncode}:\n{out[-2000:]}", pytrace=False
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    proc.kill()
    pytest.fail(
        f"azurite-blob did not listen on 127.0.0.1:{port} within {timeout:.0f}s", pytrace=False
    )


@pytest.fixture(scope="session")
def azurite_blob(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start Azurite's blob service for the session; yield its connection string."""
    binary = _azurite_bin()
    port = _free_port()
    workdir = tmp_path_factory.mktemp("azurite")
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
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=workdir,  # --inMemoryPersistence refuses --location; keep any stray files here
        # Only the well-known development account, whatever the caller's environment says.
        env={k: v for k, v in os.environ.items() if k != "AZURITE_ACCOUNTS"},
    )
    try:
        _wait_ready(port, proc)
        yield connection_string(port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


@pytest.fixture
def blob_container(azurite_blob: str) -> str:
    """A fresh, unique container name for one test (created lazily by the backend)."""
    return f"t{uuid.uuid4().hex[:20]}"
