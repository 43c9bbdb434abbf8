"""The store on Azure Blob Storage: a :class:`~detector.store.backend.Backend` for Azure Functions.

An Azure Functions instance keeps no disk between invocations, so the bucket history, alert
state, outbox, models and watermark live in a blob container instead. Each key is one block
blob under an optional prefix (``<prefix>/<key>``). The guarantees match :class:`LocalBackend`:

- **Atomic replace.** A block blob changes only when its block list is committed; a writer that
  dies while uploading leaves the previous content readable (uncommitted blocks are discarded
  by the service).
- **Compare-and-swap.** ``write(key, data, if_version=etag)`` sends ``If-Match: <etag>``;
  ``if_version=""`` sends ``If-None-Match: *`` (create only). A precondition failure (412, or
  409 ``BlobAlreadyExists``) raises :class:`VersionConflict`, so of two overlapping invocations
  that read the same state, exactly one commits and the other re-reads: no lost update. A
  commit the SDK retried because its first answer was lost is recognised (the blob already
  holds exactly these bytes) and not reported as a conflict with itself.
- **A lease-based job lock** (:meth:`BlobBackend.lease_lock`): a 60-second blob lease, renewed
  in the background, so two scheduled invocations do not run the job at the same time.

Versions are the blob ETags (opaque strings, quotes included). Authentication: a connection
string (Azurite, or an account key), or an account URL plus a ``TokenCredential`` (managed
identity through ``DefaultAzureCredential``; the identity needs the *Storage Blob Data
Contributor* role on the container). Error messages carry the status and the service error
code, never the connection string, SAS or key.

Consumes and produces bytes; does network I/O.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import BlobLeaseClient, BlobServiceClient, ContainerClient, ContentSettings

from detector.errors import ConfigError, LockHeldError, StateError
from detector.store.backend import Backend, LocalBackend, VersionConflict

__all__ = [
    "CONNECTION_STRING_ENV",
    "BlobBackend",
    "BlobLeaseLock",
    "open_backend",
]

log = logging.getLogger(__name__)

#: Environment variable holding a storage connection string for ``blob://`` store URLs.
CONNECTION_STRING_ENV = "ACS_DETECTOR_STORAGE_CONNECTION_STRING"

_OCTET = ContentSettings(content_type="application/octet-stream")
#: Run reports are opened in a browser (issue 22): served with their own type, not downloaded.
_TYPES = {
    ".html": ContentSettings(content_type="text/html; charset=utf-8"),
    ".json": ContentSettings(content_type="application/json"),
}


def _describe(exc: AzureError) -> str:
    """Status and service error code only: Azure messages may echo request URLs (SAS tokens)."""
    status = getattr(exc, "status_code", None)
    code = getattr(exc, "error_code", None)
    parts = [p for p in (f"HTTP {status}" if status else None, str(code) if code else None) if p]
    return " ".join(parts) or type(exc).__name__


def _state_error(action: str, key: str, exc: AzureError) -> StateError:
    hint = ""
    if getattr(exc, "status_code", None) == 403:
        hint = " (does the identity have 'Storage Blob Data Contributor' on the container?)"
    return StateError(f"cannot {action} blob {key!r}: {_describe(exc)}{hint}")


def _check_key(key: str) -> str:
    # Same rule as LocalBackend, so a key that works on disk works in Blob and vice versa.
    if not key or key.startswith("/") or ".." in PurePosixPath(key).parts:
        raise StateError(f"invalid store key {key!r}")
    return key


class BlobBackend:
    """A :class:`~detector.store.backend.Backend` on one Azure Blob Storage container.

    Parameters
    ----------
    container_client : ContainerClient, optional
        A ready client for the container (takes precedence over the other ways).
    account_url : str, optional
        ``https://<account>.blob.core.windows.net``; used with ``credential``.
    credential : object, optional
        A ``TokenCredential`` (e.g. ``DefaultAzureCredential()``), an account key or a SAS.
    connection_string : str, optional
        A storage connection string (``UseDevelopmentStorage=true`` for a local Azurite).
    container : str, optional
        Container name; required unless ``container_client`` is given.
    prefix : str
        Folder inside the container under which every key lives. Default: the root.
    create_container : bool
        Create the container on the first write that finds it missing. Default: True.
    **client_kwargs
        Passed to ``BlobServiceClient`` (e.g. ``max_single_put_size``, ``retry_total``).

    Raises
    ------
    ConfigError
        Neither a client, an account URL nor a connection string was given, or no container.
    """

    def __init__(
        self,
        container_client: ContainerClient | None = None,
        *,
        account_url: str | None = None,
        credential: Any = None,
        connection_string: str | None = None,
        container: str | None = None,
        prefix: str = "",
        create_container: bool = True,
        **client_kwargs: Any,
    ) -> None:
        if container_client is None:
            if not container:
                raise ConfigError("state: a blob store needs a container name")
            if connection_string:
                service = BlobServiceClient.from_connection_string(
                    connection_string, credential=credential, **client_kwargs
                )
            elif account_url:
                service = BlobServiceClient(account_url, credential=credential, **client_kwargs)
            else:
                raise ConfigError("state: a blob store needs a connection string or an account URL")
            container_client = service.get_container_client(container)
        self.container_client = container_client
        self.prefix = prefix.strip("/")
        self.create_container = create_container

    def __repr__(self) -> str:
        # Account and container only: never the credential.
        return (
            f"BlobBackend(account={self.container_client.account_name!r}, "
            f"container={self.container_client.container_name!r}, prefix={self.prefix!r})"
        )

    # --- keys -------------------------------------------------------------------------
    def _name(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _key(self, name: str) -> str:
        return name[len(self.prefix) + 1 :] if self.prefix else name

    # --- Backend protocol ---------------------------------------------------------------
    def read(self, key: str) -> tuple[bytes, str] | None:
        """Return ``(data, etag)`` of ``key``, or None when it (or the container) does not exist.

        The download is one consistent snapshot: the SDK pins later ranges of a large blob to
        the first answer's ETag, so a concurrent writer cannot mix two versions.
        """
        blob = self.container_client.get_blob_client(self._name(key))
        try:
            downloader = blob.download_blob()
            data = downloader.readall()
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise _state_error("read", key, exc) from exc
        return data, str(downloader.properties.etag)

    def write(self, key: str, data: bytes, *, if_version: str | None = None) -> str:
        """Atomically replace ``key``; return the new ETag.

        Parameters
        ----------
        key : str
            ``/``-separated relative name.
        data : bytes
            The whole new content.
        if_version : str, optional
            ``None``: unconditional. ``""``: only if ``key`` does not exist (``If-None-Match: *``).
            An ETag from :meth:`read`: only if the blob still has it (``If-Match``).

        Raises
        ------
        VersionConflict
            The precondition failed: another writer changed (or created, or deleted) the blob.
        StateError
            Any other storage failure.
        """
        blob = self.container_client.get_blob_client(self._name(key))
        kwargs: dict[str, Any] = {}
        if if_version == "":
            kwargs = {"match_condition": MatchConditions.IfMissing}
        elif if_version is not None:
            kwargs = {"match_condition": MatchConditions.IfNotModified, "etag": if_version}
        committed_retry = False

        def on_retry(request: Any = None, **_: Any) -> None:
            # Only a retried *commit* (Put Blob, or Put Block List) can have succeeded already.
            nonlocal committed_retry
            url = str(getattr(request, "url", ""))
            if "comp=" not in url or "comp=blocklist" in url:
                committed_retry = True

        for attempt in (1, 2):
            try:
                result = blob.upload_blob(
                    data,
                    overwrite=True,
                    content_settings=_TYPES.get(PurePosixPath(key).suffix, _OCTET),
                    retry_hook=on_retry,
                    **kwargs,
                )
                return str(result["etag"])
            except (ResourceModifiedError, ResourceExistsError) as exc:
                # 412 ConditionNotMet (If-Match) or 409 BlobAlreadyExists (If-None-Match: *).
                # After a retried commit the "other writer" may be our own first attempt,
                # whose answer was lost on the way back: if the blob now holds exactly our
                # bytes, the write did happen. Without a retry, equal bytes from someone else
                # are still a conflict (two increments of the same counter must not merge).
                if committed_retry:
                    current = self.read(key)
                    if current is not None and current[0] == data:
                        return current[1]
                what = (
                    "changed since it was read" if if_version else "was created by another writer"
                )
                raise VersionConflict(f"{key} {what}") from exc
            except ResourceNotFoundError as exc:
                code = str(getattr(exc, "error_code", "") or "")
                if code == "ContainerNotFound" and self.create_container and attempt == 1:
                    self._ensure_container()
                    continue
                if if_version:
                    # If-Match against a blob someone deleted: the read version is gone.
                    raise VersionConflict(f"{key} was deleted since it was read") from exc
                raise _state_error("write", key, exc) from exc
            except AzureError as exc:
                raise _state_error("write", key, exc) from exc
        raise StateError(f"cannot write blob {key!r}: container could not be created")

    def delete(self, key: str) -> None:
        """Remove ``key`` if it exists (a missing key or container is not an error)."""
        try:
            self.container_client.delete_blob(self._name(key), delete_snapshots="include")
        except ResourceNotFoundError:
            return
        except AzureError as exc:
            raise _state_error("delete", key, exc) from exc

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with ``prefix``, sorted; names whose last part starts with ``.`` are
        internal (the lock blob) and left out, as :class:`LocalBackend` leaves out dot files."""
        start = self._name(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        keys: list[str] = []
        try:
            for props in self.container_client.list_blobs(name_starts_with=start or None):
                key = self._key(props.name)
                if not PurePosixPath(key).name.startswith("."):
                    keys.append(key)
        except ResourceNotFoundError:
            return iter(())
        except AzureError as exc:
            raise _state_error("list", prefix or "/", exc) from exc
        return iter(sorted(keys))

    # --- extras -------------------------------------------------------------------------
    def _ensure_container(self) -> None:
        try:
            self.container_client.create_container()
        except ResourceExistsError:
            return  # created by a concurrent writer: fine
        except AzureError as exc:
            raise _state_error(
                "create container for", self.container_client.container_name, exc
            ) from exc

    def lease_lock(
        self, key: str = ".run.lock", *, lease_seconds: int = 60, renew_every: float | None = None
    ) -> BlobLeaseLock:
        """A :class:`BlobLeaseLock` on ``key`` in this store (not acquired yet)."""
        return BlobLeaseLock(self, key, lease_seconds=lease_seconds, renew_every=renew_every)


class BlobLeaseLock:
    """A job lock held as an Azure blob lease, renewed in a background thread.

    The lease makes the service refuse a second ``acquire`` (409 ``LeaseAlreadyPresent``)
    until it is released or expires; a holder that crashes loses it after ``lease_seconds``
    at most, so a dead run never blocks the schedule for long. While held, a daemon thread
    renews it every ``renew_every`` seconds (default a third of the lease). If renewal fails
    (network, or the lease expired because the process stalled), :attr:`lost` becomes True and
    an error is logged; the conditional writes of :class:`BlobBackend` still keep the state
    consistent in that case, the lock only prevents wasted duplicate work and duplicate sends.

    Parameters
    ----------
    backend : BlobBackend
        Where the lock blob lives.
    key : str
        Lock blob name inside the store. Default ``.run.lock`` (hidden from ``list``).
    lease_seconds : int
        15 to 60 (service limits). Default 60.
    renew_every : float, optional
        Renewal period in seconds. Default ``lease_seconds / 3``.
    """

    def __init__(
        self,
        backend: BlobBackend,
        key: str = ".run.lock",
        *,
        lease_seconds: int = 60,
        renew_every: float | None = None,
    ) -> None:
        if not 15 <= lease_seconds <= 60:
            raise ConfigError(f"lease_seconds must be between 15 and 60, got {lease_seconds}")
        self.backend = backend
        self.key = key
        self.lease_seconds = lease_seconds
        self.renew_every = renew_every if renew_every is not None else lease_seconds / 3
        self.lost = False
        self._lease: BlobLeaseClient | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def held(self) -> bool:
        """True between a successful :meth:`acquire` and :meth:`release`."""
        return self._lease is not None

    def acquire(self) -> None:
        """Take the lease, or raise :class:`LockHeldError` naming the current holder.

        Raises
        ------
        LockHeldError
            Another run holds the lease.
        StateError
            The storage account could not be reached or refused the request.
        """
        if self._lease is not None:
            raise StateError(f"lock {self.key!r} is already held by this object")
        name = self.backend._name(self.key)
        blob = self.backend.container_client.get_blob_client(name)
        # The lease needs an existing blob; create it once (a concurrent creator is fine).
        with contextlib.suppress(VersionConflict):
            self.backend.write(self.key, b"", if_version="")
        try:
            lease = blob.acquire_lease(lease_duration=self.lease_seconds)
        except ResourceExistsError as exc:  # 409 LeaseAlreadyPresent
            raise LockHeldError(f"another run holds the lock{self._holder(blob)}") from exc
        except HttpResponseError as exc:
            if exc.status_code == 409:
                raise LockHeldError(f"another run holds the lock{self._holder(blob)}") from exc
            raise _state_error("lease", self.key, exc) from exc
        except AzureError as exc:
            raise _state_error("lease", self.key, exc) from exc
        self._lease = lease
        self.lost = False
        # Who holds it, for the LockHeldError of the next run (best effort).
        try:
            blob.set_blob_metadata(
                {
                    "holder": socket.gethostname()[:60],
                    "pid": str(os.getpid()),
                    "acquired": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                },
                lease=lease,
            )
        except AzureError:
            log.debug("could not record the lock holder", exc_info=True)
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._renew_loop, name="blob-lease-renew", daemon=True
        )
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and release the lease (idempotent; errors are logged, not raised)."""
        lease, self._lease = self._lease, None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if lease is None:
            return
        try:
            lease.release()
        except AzureError as exc:
            # It expires by itself within lease_seconds.
            log.warning("could not release blob lease %s: %s", self.key, _describe(exc))

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_every):
            lease = self._lease
            if lease is None:
                return
            try:
                lease.renew()
            except AzureError as exc:
                self.lost = True
                log.error("lost the job lock lease %s: %s", self.key, _describe(exc))
                return

    def _holder(self, blob: Any) -> str:
        try:
            meta = blob.get_blob_properties().metadata or {}
        except AzureError:
            return ""
        if not meta.get("holder"):
            return ""
        return f" (holder {meta['holder']} pid {meta.get('pid', '?')} since {meta.get('acquired', '?')})"

    def __enter__(self) -> BlobLeaseLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _conn_account(connection_string: str) -> str | None:
    if connection_string.strip().lower().startswith("usedevelopmentstorage=true"):
        return "devstoreaccount1"
    for part in connection_string.split(";"):
        name, _, value = part.partition("=")
        if name.strip().lower() == "accountname":
            return value.strip()
    return None


def open_backend(
    url_or_path: str | os.PathLike[str],
    *,
    connection_string: str | None = None,
    credential: Any = None,
    env: Mapping[str, str] | None = None,
    **client_kwargs: Any,
) -> Backend:
    """Open the store named by a config value: a Blob container or a local directory.

    Accepted forms:

    - ``blob://<account>/<container>[/<prefix>]``: Azure Blob Storage. Authenticates with
      ``connection_string``, else the connection string in ``$ACS_DETECTOR_STORAGE_CONNECTION_STRING``,
      else ``credential``, else ``DefaultAzureCredential()`` (managed identity in Azure) against
      ``https://<account>.blob.core.windows.net``. With a connection string, ``<account>`` must
      match its ``AccountName`` (``devstoreaccount1`` for ``UseDevelopmentStorage=true``), or be
      ``_`` to take whatever account the connection string names.
    - ``https://<account>.blob.<suffix>/<container>[/<prefix>]``: the same with an explicit
      endpoint (sovereign clouds); token credential only.
    - anything else: a local directory (:class:`LocalBackend`).

    Parameters
    ----------
    url_or_path : str or path
        The ``[state] path`` config value.
    connection_string : str, optional
        Overrides the environment variable.
    credential : object, optional
        A ``TokenCredential``; default ``DefaultAzureCredential()``.
    env : mapping, optional
        Environment to read (default ``os.environ``).
    **client_kwargs
        Passed to ``BlobServiceClient``.

    Raises
    ------
    ConfigError
        A malformed blob URL, or an account that does not match the connection string.
    """
    text = os.fspath(url_or_path)
    env = os.environ if env is None else env
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("blob", "https") or (scheme == "https" and ".blob." not in parts.netloc):
        return LocalBackend(text)
    path = [p for p in parts.path.split("/") if p]
    if scheme == "blob":
        account = parts.netloc
        if not account or not path:
            raise ConfigError(
                f"state.path: expected blob://<account>/<container>[/<prefix>], got {text!r}"
            )
        account_url = f"https://{account}.blob.core.windows.net"
    else:
        if not path:
            raise ConfigError(
                f"state.path: expected https://<account>.blob.../<container>, got {text!r}"
            )
        account = parts.netloc.split(".", 1)[0]
        account_url = f"https://{parts.netloc}"
    container, prefix = path[0], "/".join(path[1:])
    conn = connection_string or (env.get(CONNECTION_STRING_ENV) if scheme == "blob" else None)
    if conn:
        conn_account = _conn_account(conn)
        if account != "_" and conn_account and conn_account != account:
            raise ConfigError(
                f"state.path names account {account!r} but ${CONNECTION_STRING_ENV} is for "
                f"account {conn_account!r}"
            )
        return BlobBackend(
            connection_string=conn,
            container=container,
            prefix=prefix,
            **client_kwargs,
        )
    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    return BlobBackend(
        account_url=account_url,
        credential=credential,
        container=container,
        prefix=prefix,
        **client_kwargs,
    )
