"""The Blob store (detector.store.blob) against a real Azurite: same contract as LocalBackend."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from detector.errors import ConfigError, StateError
from detector.store.backend import Backend, LocalBackend, VersionConflict
from detector.store.blob import CONNECTION_STRING_ENV, BlobBackend, open_backend

try:
    from fixtures_azurite import ACCOUNT_KEY, azurite_blob, blob_container  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.fixtures_azurite import ACCOUNT_KEY, azurite_blob, blob_container  # noqa: F401

pytestmark = pytest.mark.node


@pytest.fixture
def store(azurite_blob: str, blob_container: str) -> BlobBackend:
    return BlobBackend(connection_string=azurite_blob, container=blob_container, prefix="state")


def test_is_a_backend(store: BlobBackend) -> None:
    assert isinstance(store, Backend)
    assert "AccountKey" not in repr(store) and ACCOUNT_KEY not in repr(store)


def test_round_trip_and_versions(store: BlobBackend) -> None:
    assert store.read("watermark.json") is None  # container does not exist yet
    v1 = store.write("watermark.json", b'{"end": "2026-11-25T10:00:00Z"}')
    data, version = store.read("watermark.json")  # type: ignore[misc]
    assert data == b'{"end": "2026-11-25T10:00:00Z"}' and version == v1
    payload = bytes(range(256)) * 4096  # 1 MiB of every byte value
    v2 = store.write("models/m.skops", payload)
    assert store.read("models/m.skops") == (payload, v2)
    v3 = store.write("watermark.json", b"")
    assert v3 != v1 and store.read("watermark.json") == (b"", v3)


def test_list_sorted_prefixed_and_isolated(azurite_blob: str, blob_container: str) -> None:
    a = BlobBackend(connection_string=azurite_blob, container=blob_container, prefix="a")
    b = BlobBackend(connection_string=azurite_blob, container=blob_container, prefix="a/b")
    for key in ["buckets/2026-11-25.parquet", "alerts/state.json", "buckets/2026-11-24.parquet"]:
        a.write(key, b"x")
    a.write(".run.lock", b"")  # internal, hidden like LocalBackend's dot files
    b.write("other.json", b"y")
    assert list(a.list("buckets/")) == ["buckets/2026-11-24.parquet", "buckets/2026-11-25.parquet"]
    assert list(a.list()) == [
        "alerts/state.json",
        "b/other.json",
        "buckets/2026-11-24.parquet",
        "buckets/2026-11-25.parquet",
    ]
    assert list(b.list()) == ["other.json"]
    assert list(a.list("nothing/")) == []
    missing = BlobBackend(connection_string=azurite_blob, container=blob_container + "x")
    assert list(missing.list()) == []


def test_delete(store: BlobBackend) -> None:
    store.write("outbox/1.json", b"{}")
    store.delete("outbox/1.json")
    assert store.read("outbox/1.json") is None
    store.delete("outbox/1.json")  # missing: not an error
    assert list(store.list("outbox/")) == []


def test_invalid_keys_rejected(store: BlobBackend) -> None:
    for key in ["/abs", "a/../b", ""]:
        with pytest.raises(StateError, match="invalid store key"):
            store.write(key, b"x")


def test_compare_and_swap(store: BlobBackend) -> None:
    v1 = store.write("alerts/state.json", b"1", if_version="")  # create only
    with pytest.raises(VersionConflict):
        store.write("alerts/state.json", b"other", if_version="")
    v2 = store.write("alerts/state.json", b"2", if_version=v1)
    with pytest.raises(VersionConflict):
        store.write("alerts/state.json", b"stale", if_version=v1)
    assert store.read("alerts/state.json") == (b"2", v2)
    store.delete("alerts/state.json")
    with pytest.raises(VersionConflict):
        store.write("alerts/state.json", b"3", if_version=v2)  # deleted since read
    assert store.read("alerts/state.json") is None


def test_two_concurrent_writers_exactly_one_wins_per_round(store: BlobBackend) -> None:
    """Writers that read the same version race; the service lets exactly one commit."""
    writers, rounds = 4, 6
    store.write("counter", b"0")
    barrier = threading.Barrier(writers)
    wins: list[list[int]] = [[] for _ in range(rounds)]
    errors: list[BaseException] = []

    def writer(ident: int) -> None:
        try:
            for r in range(rounds):
                data, version = store.read("counter")  # type: ignore[misc]
                barrier.wait()  # everyone holds the same version now
                try:
                    store.write("counter", str(int(data) + 1).encode(), if_version=version)
                    wins[r].append(ident)
                except VersionConflict:
                    pass
                barrier.wait()  # round over before anyone re-reads
        except BaseException as exc:  # surfaced below: a thread must not hide a failure
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert [len(w) for w in wins] == [1] * rounds
    assert store.read("counter")[0] == str(rounds).encode()  # type: ignore[index]


def test_concurrent_read_modify_write_loses_no_update(store: BlobBackend) -> None:
    """Two overlapping invocations that retry on conflict: every increment survives."""
    writers, increments = 2, 8

    def bump() -> None:
        for _ in range(increments):
            while True:
                current = store.read("alerts/count")
                data, version = current if current else (b"0", "")
                try:
                    store.write("alerts/count", str(int(data) + 1).encode(), if_version=version)
                    break
                except VersionConflict:
                    continue

    threads = [threading.Thread(target=bump) for _ in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert store.read("alerts/count")[0] == str(writers * increments).encode()  # type: ignore[index]


class _Token:
    """A TokenCredential shape; never asked for a token here (no request is sent)."""

    def get_token(self, *scopes: str, **kwargs: object) -> object:
        raise AssertionError("no request expected")


CRASHER = textwrap.dedent(
    """
    import os, sys
    from detector.store.blob import BlobBackend

    def die_before_commit(request):
        # The process dies after every block is staged, just before the commit request.
        if "comp=blocklist" in request.http_request.url:
            sys.stdout.write("staged\\n"); sys.stdout.flush()
            os._exit(9)

    store = BlobBackend(connection_string=sys.argv[1], container=sys.argv[2], prefix="state",
                        max_single_put_size=4096, max_block_size=4096,
                        raw_request_hook=die_before_commit)
    store.write("buckets/day.parquet", b"N" * 50_000, if_version=sys.argv[3])
    sys.stdout.write("committed\\n")
    """
)


def test_crash_between_writes_leaves_previous_blob(
    store: BlobBackend, azurite_blob: str, blob_container: str
) -> None:
    old = b"O" * 20_000
    v_old = store.write("buckets/day.parquet", old)
    proc = subprocess.run(
        [sys.executable, "-c", CRASHER, azurite_blob, blob_container, v_old],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 9 and proc.stdout == "staged\n", proc.stderr
    assert store.read("buckets/day.parquet") == (old, v_old)
    # Nothing was committed: the version read before the crash is still the current one.
    v_new = store.write("buckets/day.parquet", b"new", if_version=v_old)
    assert store.read("buckets/day.parquet") == (b"new", v_new)


def test_errors_carry_no_secret(azurite_blob: str, blob_container: str) -> None:
    wrong_key = "A" * 86 + "=="
    bad = azurite_blob.replace(ACCOUNT_KEY, wrong_key)
    store = BlobBackend(connection_string=bad, container=blob_container, retry_total=0)
    with pytest.raises(StateError) as info:
        store.write("x", b"1")
    text = str(info.value)
    assert "HTTP 403" in text and wrong_key not in text and "AccountKey" not in text


def test_open_backend_forms(
    azurite_blob: str, blob_container: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = open_backend(tmp_path / "state")
    assert isinstance(local, LocalBackend) and local.root == tmp_path / "state"
    assert isinstance(open_backend(".acs-detector"), LocalBackend)

    monkeypatch.setenv(CONNECTION_STRING_ENV, azurite_blob)
    blob = open_backend(f"blob://devstoreaccount1/{blob_container}/prod/eu")
    assert isinstance(blob, BlobBackend) and blob.prefix == "prod/eu"
    blob.write("watermark.json", b"w")
    direct = BlobBackend(connection_string=azurite_blob, container=blob_container)
    assert list(direct.list()) == ["prod/eu/watermark.json"]
    assert isinstance(open_backend(f"blob://_/{blob_container}"), BlobBackend)

    with pytest.raises(ConfigError, match="devstoreaccount1"):
        open_backend(f"blob://otheraccount/{blob_container}")
    with pytest.raises(ConfigError, match="blob://"):
        open_backend("blob://devstoreaccount1")

    monkeypatch.delenv(CONNECTION_STRING_ENV)
    sovereign = open_backend("https://acct.blob.core.chinacloudapi.cn/state/p", credential=_Token())
    assert isinstance(sovereign, BlobBackend)
    assert sovereign.container_client.url.startswith(
        "https://acct.blob.core.chinacloudapi.cn/state"
    )


def _script(store: Backend) -> list[object]:
    """One sequence of store operations; outcomes only (version strings differ by design)."""
    out: list[object] = []

    def attempt(key: str, data: bytes, if_version: str | None) -> str | None:
        try:
            version = store.write(key, data, if_version=if_version)
            out.append(("write", key, "ok"))
            return version
        except VersionConflict:
            out.append(("write", key, "conflict"))
            return None

    out.append(("read", store.read("a/x")))
    v1 = attempt("a/x", b"1", "")
    attempt("a/x", b"again", "")
    attempt("a/y", b"y", "stale-version")  # If-Match on a missing key
    v2 = attempt("a/x", b"2", v1)
    attempt("a/x", b"stale", v1)
    attempt("b/z", b"z", None)
    attempt(".hidden", b"h", None)
    found = store.read("a/x")
    out.append(("read", found[0] if found else None, found is not None and found[1] == v2))
    out.append(("list", list(store.list()), list(store.list("a/")), list(store.list("c"))))
    store.delete("a/x")
    store.delete("never-existed")
    out.append(("after delete", store.read("a/x"), list(store.list())))
    attempt("a/x", b"3", v2)
    return out


def test_same_behaviour_as_local_backend(store: BlobBackend, tmp_path: Path) -> None:
    assert _script(store) == _script(LocalBackend(tmp_path))


class _LoseFirstCommitAnswer:
    """Client-level response hook: the first commit reaches the service, its answer is 'lost'
    (a read error on the way back), so the SDK retries a write that already happened."""

    def __init__(self) -> None:
        self.armed = False
        self.fired = 0

    def __call__(self, response: Any) -> None:
        from azure.core.exceptions import ServiceResponseError

        request = response.http_request
        if self.armed and request.method == "PUT" and "comp=" not in request.url:
            self.armed = False
            self.fired += 1
            raise ServiceResponseError("connection reset while reading the response")


@pytest.mark.parametrize("create", [False, True])
def test_retried_commit_is_not_a_conflict_with_itself(
    azurite_blob: str, blob_container: str, create: bool
) -> None:
    hook = _LoseFirstCommitAnswer()
    store = BlobBackend(
        connection_string=azurite_blob,
        container=blob_container,
        raw_response_hook=hook,
        retry_total=2,
        retry_backoff_factor=0.01,
        initial_backoff=0,
        increment_base=0,
    )
    if create:
        store.write("k", b"seed")  # only to create the container
        store.delete("k")
        version: str = ""
    else:
        version = store.write("k", b"old")
    hook.armed = True
    new = store.write("k", b"mine", if_version=version)
    assert hook.fired == 1
    assert store.read("k") == (b"mine", new)
    # A genuine conflict with the same bytes, without a retry, is still a conflict.
    with pytest.raises(VersionConflict):
        store.write("k", b"mine", if_version=version or "")
