"""Log Analytics source: bucket aggregates computed by Kusto, read through ``LogsQueryClient``.

Consumes an arrival window and a bucket width; produces
:class:`~detector.schema.BucketAggregates` (the same frame as the file source) and a
:class:`SourceStats` record for the run report. Does network I/O; the query texts come from
:mod:`detector.source.kql` (pure). This is the only module that imports ``azure.monitor.query``
and ``azure.identity``; every library error is mapped to a
:class:`~detector.errors.SourceError` in one place (:meth:`LogAnalyticsSource._send`).

How a window is read:

* A short window (a scheduled run) is one ``aggregate`` query. A window longer than
  ``plan_threshold`` (a first run, a backfill) first sends one small ``plan`` query that
  measures rows, output keys and histogram entries per arrival step, then packs steps into
  chunks whose answers stay under ``max_rows_per_chunk`` rows, ``max_bytes_per_chunk`` bytes
  and ``max_scan_rows_per_chunk`` scanned rows (the API allows 500,000 rows, ~100 MiB, 10 min).
* Every answer's status is checked. A partial answer (the service hit a limit) or a gateway
  timeout (504: the query ran out of time) is never used: the chunk is split in two and each
  half re-read, down to ``min_chunk``; then the read fails with
  :class:`~detector.errors.PartialResultError` naming the window.
* 429 (with or without ``Retry-After``), 500/502/503/504, connection errors and timeouts are
  retried here, with exponential backoff and the server's ``Retry-After``, within
  ``max_attempts`` per query and ``retry_budget`` seconds lost per read or drill-down (the
  sleeps between attempts and the time the failed attempts took, a timeout's included) (azure-core's own policy is switched off: it does not retry
  POST for most of these).
* 401/403 raise :class:`~detector.errors.AuthError` naming the role to grant
  (Log Analytics Reader); tokens and secrets never appear in messages.
* Chunks are read in arrival order. When a later chunk fails, :class:`IncompleteReadError`
  carries the aggregates of the chunks read fully and the arrival time up to which they go,
  so the caller can store them and advance its watermark exactly that far.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, NamedTuple, NoReturn

import pandas as pd

from detector.aggregate import cap_partitions
from detector.anomaly import Anomaly
from detector.errors import (
    AuthError,
    ConfigError,
    DetectorError,
    IncompleteReadError,
    PartialResultError,
    QueryFailedError,
    SourceError,
)
from detector.schema import (
    AGG_COLUMNS,
    AGG_KEY,
    CLUSTER_LOOKBACK,
    DEDUP_LOOKBACK,
    DROP_REASONS,
    FLAG_REASONS,
    HIST_COLUMNS,
    MAX_PARTITIONS,
    BucketAggregates,
    empty_aggregates,
)
from detector.source import kql
from detector.source.drift import query_drift

if TYPE_CHECKING:
    from detector.config import Config
    from detector.source.base import Found

__all__ = [
    "CREDENTIAL_CHOICES",
    "ChunkProgress",
    "EnvTokenCredential",
    "IncompleteReadError",
    "LogAnalyticsSettings",
    "LogAnalyticsSource",
    "LogAnalyticsTargets",
    "SourceStats",
    "discover_resources",
    "make_credential",
    "merge_aggregates",
]

log = logging.getLogger(__name__)
#: The run's lines about its targets keep the logger they were written under.
_run_log = logging.getLogger("detector.pipeline")

#: ``credential`` values: ``default`` (DefaultAzureCredential: managed identity under Azure
#: Functions, ``az login`` on a laptop), ``managed_identity``, ``azure_cli``, ``env:NAME``.
CREDENTIAL_CHOICES: Final[tuple[str, ...]] = (
    "default",
    "managed_identity",
    "azure_cli",
    "env:NAME",
)

#: HTTP statuses retried within the budget (transient by the service's own description).
RETRY_STATUSES: Final[frozenset[int]] = frozenset({408, 429, 500, 502, 503, 504})
#: The API's hard limits per query (reference/acs-logs.md §4).
API_MAX_ROWS: Final = 500_000
API_MAX_BYTES: Final = 100 * 2**20
API_MAX_SECONDS: Final = 600

# Wire size of one answer row, for chunk planning: a bucket row without its histogram, and one
# histogram entry ("123":45, inside a JSON string). The benchmark measured ~162 bytes per row
# all included (benchmarks/bench_log_analytics.py, 1,000 partitions); 260 leaves room for
# longer operation names and SDK strings, so planned chunks land near 55 % of their byte target.
ROW_BYTES: Final = 260
BIN_BYTES: Final = 12

_WORKSPACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,127}")
_RESOURCE_RE = re.compile(r"/subscriptions/[^/?#\s]+/resource[Gg]roups/[^?#\s]+")
_ENV_CRED_RE = re.compile(r"env:([A-Za-z_][A-Za-z0-9_]*)")
# What a bearer token may hold in an Authorization header: printable ASCII, no spaces.
_TOKEN_RE = re.compile(r"[\x21-\x7e]+")


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogAnalyticsSettings:
    """Where and how to query (``[source]`` keys of the config, see :meth:`from_config`).

    Exactly one of ``workspace_id`` and ``resource_id`` (an ACS resource id, queried with
    ``query_resource``), and any further ``additional_workspaces`` / ``resource_ids``: one
    query each (:meth:`targets`; ``workspace_id`` may also be given as a list). ``endpoint``/``audience``/``connection_verify`` serve sovereign clouds
    and the test emulator (audience defaults to the endpoint, as in the client).
    ``read_timeout`` (seconds, default ``server_timeout + 30``) bounds one HTTP read.
    ``arrival``/``overlap``/``dedup_lookback`` define which rows a window holds
    (:mod:`detector.source.kql`). Sizes and budgets bound each query and each read.
    Validated at construction: :class:`~detector.errors.ConfigError` lists every problem.
    """

    workspace_id: str | None = None
    resource_id: str | None = None
    additional_workspaces: tuple[str, ...] = ()
    resource_ids: tuple[str, ...] = ()
    endpoint: str = "https://api.loganalytics.io"
    audience: str | None = None
    connection_verify: bool | str = True
    credential: str = "default"
    table: str = kql.DEFAULT_TABLE
    arrival: str = "ingestion_time"
    overlap: timedelta = timedelta(days=2)
    dedup_lookback: timedelta = DEDUP_LOOKBACK
    max_partitions: int | None = MAX_PARTITIONS
    server_timeout: int = 180
    read_timeout: float | None = None
    max_rows_per_chunk: int = 250_000
    max_bytes_per_chunk: int = 50 * 2**20
    max_scan_rows_per_chunk: int = 500_000_000
    plan_step: timedelta = timedelta(hours=1)
    plan_threshold: timedelta = timedelta(hours=6)
    min_chunk: timedelta = timedelta(minutes=1)
    max_attempts: int = 5
    retry_budget: float = 300.0
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    drill_lateness: timedelta = timedelta(hours=6)
    top_codes: int = 5
    example_calls: int = 3

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(problems)

    def problems(self) -> list[str]:
        """Every problem with these settings, each prefixed with its ``source.`` key."""
        p = self._target_problems()
        if not re.match(r"https://[^/\s?#]+/?$", str(self.endpoint)):
            p.append("source.endpoint: must be an https:// URL without a path")
        if self.audience is not None and not re.match(r"https://\S+$", str(self.audience)):
            p.append("source.audience: must be an https:// URL")
        if not isinstance(self.connection_verify, bool | str):
            p.append("source.connection_verify: must be true, false or a CA bundle path")
        if self.credential not in CREDENTIAL_CHOICES[:3] and not _ENV_CRED_RE.fullmatch(
            str(self.credential)
        ):
            p.append(
                "source.credential: must be 'default', 'managed_identity', 'azure_cli' or "
                f"'env:NAME', got {self.credential!r}"
            )
        try:
            kql.kql_identifier(self.table)
        except ValueError as err:
            p.append(f"source.table: {err}")
        if self.arrival not in kql.ARRIVALS:
            p.append(f"source.arrival: must be one of {kql.ARRIVALS}, got {self.arrival!r}")
        for name in ("overlap", "dedup_lookback", "drill_lateness"):
            value = getattr(self, name)
            if not isinstance(value, timedelta) or value < timedelta(0):
                p.append(f"source.{name}: must be a duration >= 0")
        for name in ("plan_step", "plan_threshold", "min_chunk"):
            value = getattr(self, name)
            if (
                not isinstance(value, timedelta)
                or value <= timedelta(0)
                or value % timedelta(seconds=1)
            ):
                p.append(f"source.{name}: must be a positive whole number of seconds")
        p += self._int_problems()
        if self.read_timeout is not None and (
            isinstance(self.read_timeout, bool)
            or not isinstance(self.read_timeout, int | float)
            or self.read_timeout <= 0
        ):
            p.append("source.read_timeout: must be a number of seconds > 0")
        for name in ("retry_budget", "backoff_base", "backoff_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                p.append(f"source.{name}: must be a number >= 0")
        return p

    def _int_problems(self) -> list[str]:
        """What is wrong with the integer settings (each within its documented range)."""
        p: list[str] = []
        ints = {
            "server_timeout": (1, API_MAX_SECONDS),
            "max_rows_per_chunk": (1, API_MAX_ROWS),
            "max_bytes_per_chunk": (1024, API_MAX_BYTES),
            "max_scan_rows_per_chunk": (1, 10**12),
            "max_attempts": (1, 20),
            "top_codes": (1, 100),
            "example_calls": (1, 100),
            **({"max_partitions": (1, 1_000_000)} if self.max_partitions is not None else {}),
        }
        for name, (lo, hi) in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                p.append(f"source.{name}: must be an integer in [{lo}, {hi}], got {value!r}")
        return p

    def _target_problems(self) -> list[str]:
        """What is wrong with the workspaces and resource ids to query."""
        p: list[str] = []
        if (self.workspace_id and self.resource_id) or not (
            self.workspace_id or self.resource_id or self.additional_workspaces or self.resource_ids
        ):
            p.append(
                "source: log_analytics needs exactly one of workspace_id, resource_id "
                "(more in additional_workspaces, resource_ids)"
            )
        spaces = [("workspace_id", self.workspace_id)] if self.workspace_id else []
        spaces += [("additional_workspaces", w) for w in self.additional_workspaces]
        for key, value in spaces:
            if not isinstance(value, str) or not _WORKSPACE_RE.fullmatch(value):
                p.append(f"source.{key}: must be a workspace id (letters, digits, '-')")
        ids = [("resource_id", self.resource_id)] if self.resource_id else []
        ids += [("resource_ids", r) for r in self.resource_ids]
        for key, value in ids:
            if not isinstance(value, str) or not _RESOURCE_RE.fullmatch(value):
                p.append(f"source.{key}: must look like /subscriptions/<id>/resourceGroups/...")
        names = [str(v).lower() for _, v in spaces + ids]
        if len(set(names)) != len(names):
            p.append("source: a workspace or resource id is listed twice (it would count twice)")
        return p

    def targets(self) -> list[LogAnalyticsSettings]:
        """One settings per workspace / resource to query, each with one target only."""
        spaces = [self.workspace_id] if self.workspace_id else []
        ids = [self.resource_id] if self.resource_id else []
        return [
            replace(
                self, workspace_id=w, resource_id=None, additional_workspaces=(), resource_ids=()
            )
            for w in [*spaces, *self.additional_workspaces]
        ] + [
            replace(
                self, workspace_id=None, resource_id=r, additional_workspaces=(), resource_ids=()
            )
            for r in [*ids, *self.resource_ids]
        ]

    @classmethod
    def from_config(cls, source: Mapping[str, Any]) -> LogAnalyticsSettings:
        """Build from the config's ``[source]`` table (unknown keys such as ``kind`` ignored).

        Durations may be :class:`~datetime.timedelta` (as ``detector.config`` parses them) or
        seconds.

        Raises
        ------
        ConfigError
            Listing every invalid key.
        """
        names = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in source.items():
            if key not in names or value is None:
                continue
            if names[key].type == "timedelta" and isinstance(value, int | float):
                value = timedelta(seconds=value)
            kwargs[key] = tuple(value) if isinstance(value, list) else value
        spaces = kwargs.get("workspace_id")
        if isinstance(spaces, tuple):  # a list: the first is the main workspace
            kwargs["workspace_id"] = spaces[0] if spaces else None
            kwargs["additional_workspaces"] = (
                *spaces[1:],
                *kwargs.get("additional_workspaces", ()),
            )
        return cls(**kwargs)

    @property
    def target(self) -> str:
        """What is queried, for messages: ``workspace <id>`` or ``resource <id>``."""
        if self.workspace_id:
            return f"workspace {self.workspace_id}"
        return f"resource {self.resource_id}"


# --------------------------------------------------------------------------------------------
# Credentials
# --------------------------------------------------------------------------------------------


class EnvTokenCredential:
    """A bearer token read from an environment variable at each ``get_token`` call.

    For CI jobs and emulators that hand out a token (``credential = "env:NAME"``). The token is
    never logged; its expiry is read from a JWT ``exp`` claim when there is one, else taken as
    five minutes from now, so a refreshed variable is picked up.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken
        from azure.core.exceptions import ClientAuthenticationError

        token = os.environ.get(self.name, "").strip()
        if not token:
            raise ClientAuthenticationError(
                message=f"environment variable {self.name} is empty or unset"
            )
        if not _TOKEN_RE.fullmatch(token):
            # An HTTP header cannot carry it (the library would fail with a traceback deep in
            # the request); the token itself is never echoed.
            raise ClientAuthenticationError(
                message=f"environment variable {self.name} holds characters an HTTP "
                "Authorization header cannot carry (a token is printable ASCII, no spaces)"
            )
        return AccessToken(token, _jwt_expiry(token) or int(time.time()) + 300)

    def __repr__(self) -> str:
        return f"EnvTokenCredential({self.name!r})"


def _jwt_expiry(token: str) -> int | None:
    import base64
    import json

    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        return int(payload["exp"])
    except (ValueError, KeyError, TypeError):
        return None


def make_credential(spec: str) -> Any:
    """The credential object for a ``credential`` setting (see :data:`CREDENTIAL_CHOICES`).

    ``default`` -> ``DefaultAzureCredential`` (managed identity under Azure Functions,
    ``az login`` on a laptop); ``managed_identity`` -> ``ManagedIdentityCredential`` (user
    assigned when ``AZURE_CLIENT_ID`` is set); ``azure_cli`` -> ``AzureCliCredential``;
    ``env:NAME`` -> :class:`EnvTokenCredential`.
    """
    m = _ENV_CRED_RE.fullmatch(spec)
    if m:
        return EnvTokenCredential(m.group(1))
    from azure import identity

    if spec == "default":
        return identity.DefaultAzureCredential()
    if spec == "managed_identity":
        client_id = os.environ.get("AZURE_CLIENT_ID") or None
        return identity.ManagedIdentityCredential(client_id=client_id)
    if spec == "azure_cli":
        return identity.AzureCliCredential()
    raise ConfigError(f"source.credential: unknown credential {spec!r}")


# --------------------------------------------------------------------------------------------
# Stats, progress, errors
# --------------------------------------------------------------------------------------------


@dataclass
class SourceStats:
    """What reading cost, for the run report (cumulative over a source's lifetime).

    ``queries`` counts HTTP requests (retries included) by purpose; ``rows`` and ``bytes`` are
    the answers' rows and body bytes; ``chunks`` lists every fully read aggregate chunk.
    """

    queries: int = 0
    aggregate_queries: int = 0
    plan_queries: int = 0
    drill_queries: int = 0
    resources_queries: int = 0
    rows: int = 0
    bytes: int = 0
    retries: int = 0
    throttled: int = 0
    splits: int = 0
    chunks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def max_chunk_rows(self) -> int:
        return max((c["rows"] for c in self.chunks), default=0)

    @property
    def max_chunk_bytes(self) -> int:
        return max((c["bytes"] for c in self.chunks), default=0)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (chunk list included)."""
        out = asdict(self)
        out["max_chunk_rows"] = self.max_chunk_rows
        out["max_chunk_bytes"] = self.max_chunk_bytes
        return out


@dataclass(frozen=True)
class ChunkProgress:
    """Reported after each aggregate chunk: ``done`` of ``total`` (total grows on a split)."""

    done: int
    total: int
    start: datetime
    end: datetime
    rows: int
    bytes: int
    rows_read: int


class _ChunkTooBig(Exception):
    """Internal: the answer hit a service limit (partial or 504); split the chunk."""


def merge_aggregates(parts: Sequence[BucketAggregates]) -> BucketAggregates:
    """Sum bucket aggregates per key (late rows of one bucket may come in several chunks)."""
    out = empty_aggregates()
    stats = [p.stats for p in parts if len(p.stats)]
    hists = [p.hist for p in parts if len(p.hist)]
    if stats:
        merged = pd.concat(stats).groupby(list(AGG_KEY), as_index=False, sort=True).sum()
        out.stats = merged[list(AGG_COLUMNS)].astype(AGG_COLUMNS).reset_index(drop=True)
    if hists:
        hkey = [*AGG_KEY, "bin"]
        counts = (
            pd.concat(hists).groupby(hkey, as_index=False, sort=True).agg(count=("count", "sum"))
        )
        out.hist = counts[list(HIST_COLUMNS)].astype(HIST_COLUMNS).reset_index(drop=True)
    out.dropped = {r: sum(p.dropped.get(r, 0) for p in parts) for r in DROP_REASONS}
    out.flagged = {r: sum(p.flagged.get(r, 0) for p in parts) for r in FLAG_REASONS}
    out.rows_read = sum(p.rows_read for p in parts)
    return out


# --------------------------------------------------------------------------------------------
# The source
# --------------------------------------------------------------------------------------------


class _Query(NamedTuple):
    """One query as :meth:`LogAnalyticsSource._send` sends it (``what`` names it in errors)."""

    text: str
    timespan: tuple[datetime, datetime]
    purpose: str
    what: str
    splittable: bool


class _Attempt(NamedTuple):
    """One attempt's outcome: the answer (``reason`` empty) or a retryable failure."""

    result: Any
    size: int  # response body bytes
    retry_after: float | None
    reason: str
    began: float  # clock at the start of the attempt


class LogAnalyticsSource:
    """Reads bucket aggregates and drill-downs from Log Analytics.

    Parameters
    ----------
    settings
        Validated :class:`LogAnalyticsSettings`.
    credential
        A ``TokenCredential``; None builds one from ``settings.credential``
        (:func:`make_credential`). Tests pass a fake with ``get_token``.
    sleep, clock
        Injected for tests (default ``time.sleep``, ``time.monotonic``): the retry budget
        counts the sleeps and the time failed attempts took.
    resource
        Read only this ACS resource's rows (a tenant key, see
        :func:`detector.source.resources.resource_key`); None: every row of the target.
    """

    def __init__(
        self,
        settings: LogAnalyticsSettings,
        credential: Any = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        resource: str | None = None,
    ) -> None:
        self.settings = settings
        self.resource = resource
        self.stats = SourceStats()
        self._credential = credential
        self._client: Any = None
        self._sleep = sleep
        self._clock = clock
        self._waited = 0.0

    # -- client ------------------------------------------------------------------------------

    def _get_client(self) -> Any:
        if self._client is None:
            from azure.monitor.query import LogsQueryClient

            s = self.settings
            credential = self._credential or make_credential(s.credential)
            # audience defaults to the endpoint inside the client; None must not be passed.
            extra = {"audience": s.audience} if s.audience else {}
            self._client = LogsQueryClient(
                credential,
                endpoint=s.endpoint.rstrip("/"),
                **extra,
                connection_verify=s.connection_verify,
                # Our own loop retries (bounded, POST included, Retry-After honoured).
                retry_total=0,
                connection_timeout=30,
                # The server gives up after server_timeout; leave it time to say so.
                read_timeout=s.read_timeout or s.server_timeout + 30,
            )
        return self._client

    def close(self) -> None:
        """Close the HTTP session (idempotent)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> LogAnalyticsSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one request, every error mapped -----------------------------------------------------

    @contextmanager
    def _mapped(self, what: str) -> Iterator[None]:
        """Translate azure-core errors into SourceError subclasses (the one boundary)."""
        from azure.core.exceptions import AzureError, ClientAuthenticationError

        try:
            yield
        except ClientAuthenticationError as err:
            raise AuthError(
                f"{what}: could not get a token with credential "
                f"{self.settings.credential!r}: {_first_line(err)}"
            ) from None
        except AzureError as err:
            raise QueryFailedError(f"{what}: {type(err).__name__}: {_first_line(err)}") from None

    def _send(
        self, text: str, timespan: tuple[datetime, datetime], *, purpose: str, splittable: bool
    ) -> tuple[list[str], list[Any], int]:
        """Send one query with retries; return (columns, rows, body bytes) of a whole answer.

        Raises _ChunkTooBig (partial answer or 504, when ``splittable``), AuthError,
        PartialResultError (partial answer, not splittable), QueryFailedError.
        """
        what = f"{purpose} query on {self.settings.target} for {_span(timespan)}"
        query = _Query(text, timespan, purpose, what, splittable)
        attempt = 0
        while True:
            attempt += 1
            outcome = self._attempt(query)
            if not outcome.reason:  # an answer: whole, or partial (never used as whole)
                return self._answer(query, outcome)
            self._wait_for_retry(query, attempt, outcome)

    def _attempt(self, query: _Query) -> _Attempt:
        """Query -> one attempt's outcome: the answer, or why it failed in a retryable way."""
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ServiceRequestError,
            ServiceResponseError,
        )

        s = self.settings
        client = self._get_client()
        size = [0]

        def hook(response: Any, size: list[int] = size) -> None:
            body = response.http_response.body()
            size[0] = len(body) if body else 0

        purpose = query.purpose
        self.stats.queries += 1
        setattr(self.stats, f"{purpose}_queries", getattr(self.stats, f"{purpose}_queries") + 1)
        retry_after: float | None = None
        reason = ""
        result: Any = None
        began = self._clock()
        with self._mapped(query.what):
            try:
                kwargs = {
                    "timespan": query.timespan,
                    "server_timeout": s.server_timeout,
                    "raw_response_hook": hook,
                }
                if s.workspace_id:
                    result = client.query_workspace(s.workspace_id, query.text, **kwargs)
                else:
                    result = client.query_resource(s.resource_id, query.text, **kwargs)
            except ClientAuthenticationError:
                raise  # the credential failed before sending (mapped by _mapped)
            except HttpResponseError as err:
                retry_after, reason = self._http_failure(query, err, size[0])
            except (ServiceRequestError, ServiceResponseError) as err:
                reason = f"{type(err).__name__}: {_first_line(err)}"
        return _Attempt(result, size[0], retry_after, reason, began)

    def _http_failure(self, query: _Query, err: Any, size: int) -> tuple[float | None, str]:
        """HTTP error of one attempt -> (Retry-After, reason) if retryable; raises otherwise."""
        what = query.what
        if err.response is None:
            # query_workspace re-wraps a ClientAuthenticationError raised by
            # the credential (no request was sent) as HttpResponseError.
            raise AuthError(
                f"{what}: could not get a token with credential "
                f"{self.settings.credential!r}: {_first_line(err)}"
            ) from None
        self.stats.bytes += size
        status = err.status_code or 0
        if status in (401, 403):
            self._auth_failed(status, what, err)
        if status == 504 and query.splittable:
            raise _ChunkTooBig(f"HTTP 504 (query ran out of time){_code(err)}") from None
        if status not in RETRY_STATUSES:
            drift = query_drift(_error_texts(err), self.settings.table)
            cause = f"HTTP {status}{_code(err)}: {_error_message(err)}"
            text = f"{what}: {drift} ({cause})" if drift else f"{what}: {cause}"
            raise QueryFailedError(text) from None
        if status == 429:
            self.stats.throttled += 1
        return _retry_after(err.response), f"HTTP {status}{_code(err)}"

    def _answer(self, query: _Query, outcome: _Attempt) -> tuple[list[str], list[Any], int]:
        """An answered attempt -> (columns, rows, body bytes); raises if it is partial."""
        from azure.monitor.query import LogsQueryStatus

        what = query.what
        result = outcome.result
        self.stats.bytes += outcome.size
        if result.status == LogsQueryStatus.SUCCESS:
            tables = result.tables
            if len(tables) != 1:
                raise QueryFailedError(f"{what}: expected 1 table, got {len(tables)}")
            rows = list(tables[0].rows)
            self.stats.rows += len(rows)
            return list(tables[0].columns), rows, outcome.size
        cause = _partial_message(result.partial_error)
        self.stats.rows += sum(len(t.rows) for t in result.partial_data)
        if query.splittable:
            raise _ChunkTooBig(f"partial answer: {cause}")
        raise PartialResultError(f"{what}: partial answer, not used: {cause}")

    def _wait_for_retry(self, query: _Query, attempt: int, outcome: _Attempt) -> None:
        """A failed attempt -> sleep before the next; raises when attempts or budget run out."""
        s = self.settings
        # The attempt's time is lost (a timeout's can be minutes); wait (Retry-After or
        # backoff) within what is left of the budget.
        self._waited += max(0.0, self._clock() - outcome.began)
        retry_after = outcome.retry_after
        delay = retry_after if retry_after is not None else self._backoff(attempt)
        if attempt >= s.max_attempts or self._waited + delay > s.retry_budget:
            why = (
                f"{attempt} attempts"
                if attempt >= s.max_attempts
                else f"the retry budget ({s.retry_budget:g} s) would be exceeded"
            )
            raise QueryFailedError(f"{query.what}: {outcome.reason}; gave up after {why}")
        log.warning("%s: %s; retry %d in %.1f s", query.what, outcome.reason, attempt, delay)
        self.stats.retries += 1
        self._waited += delay
        self._sleep(delay)

    def _backoff(self, attempt: int) -> float:
        s = self.settings
        return float(min(s.backoff_max, s.backoff_base * 2 ** (attempt - 1)))

    def _auth_failed(self, status: int, what: str, err: Any) -> NoReturn:
        s = self.settings
        scope = "Log Analytics workspace" if s.workspace_id else "ACS resource"
        if status == 401:
            msg = (
                f"{what}: HTTP 401, the token was refused (credential {s.credential!r}, "
                f"audience {s.audience or s.endpoint}). Check the credential and that the "
                f"audience matches the cloud of {s.endpoint}"
            )
        else:
            msg = (
                f"{what}: HTTP 403, the identity lacks access. Grant it the "
                f"'Log Analytics Reader' role on the {scope} ({s.target})"
            )
        raise AuthError(f"{msg}{_code(err)}") from None

    # -- aggregates --------------------------------------------------------------------------

    def read_aggregates(
        self,
        arrival_window: tuple[datetime, datetime],
        *,
        bucket: timedelta,
        progress: Callable[[ChunkProgress], None] | None = None,
    ) -> BucketAggregates:
        """Aggregates of every row that arrived in ``[start, end)``, read in chunks.

        Parameters
        ----------
        arrival_window
            ``(start, end)``, timezone-aware, half-open, on the ``arrival`` axis. Windows that
            tile the axis without overlap read every row once (the overlap setting widens only
            the scan, see :mod:`detector.source.kql`).
        bucket
            Bucket width on ``CallClientTimeStamp``.
        progress
            Called after each chunk (terminal progress or structured log lines).

        Returns
        -------
        BucketAggregates
            Merged over chunks, one stats row per key.

        Raises
        ------
        AuthError
            401/403 (message names the role).
        PartialResultError
            A chunk could not be read whole even at ``min_chunk``; :class:`IncompleteReadError`
            when earlier chunks were read (their aggregates are attached).
        QueryFailedError
            Any other failure after the retry budget.
        """
        start, end = _check_window(arrival_window)
        s = self.settings
        self._waited = 0.0
        pending = self._chunks(start, end, bucket)
        parts: list[BucketAggregates] = []
        done = 0
        total = len(pending)
        while pending:
            c_start, c_end = pending.pop(0)
            try:
                agg, rows, size = self._read_chunk(c_start, c_end, bucket)
            except _ChunkTooBig as big:
                span = c_end - c_start
                if span <= s.min_chunk:
                    self._fail(
                        PartialResultError(
                            f"arrival window {_span((c_start, c_end))} on {s.target} cannot be "
                            f"read whole even at the minimum chunk ({span}): {big}; "
                            "it was not scored"
                        ),
                        parts,
                        start,
                        c_start,
                        c_end,
                    )
                mid = _midpoint(c_start, c_end)
                log.warning(
                    "chunk %s: %s; split into %s and %s",
                    _span((c_start, c_end)),
                    big,
                    _span((c_start, mid)),
                    _span((mid, c_end)),
                )
                self.stats.splits += 1
                pending[:0] = [(c_start, mid), (mid, c_end)]
                total += 1
                continue
            except SourceError as err:
                self._fail(err, parts, start, c_start, c_end)
            parts.append(agg)
            done += 1
            self.stats.chunks.append(
                {
                    "start": c_start.isoformat(),
                    "end": c_end.isoformat(),
                    "rows": rows,
                    "bytes": size,
                    "rows_read": agg.rows_read,
                }
            )
            if progress is not None:
                progress(ChunkProgress(done, total, c_start, c_end, rows, size, agg.rows_read))
        return self._capped(merge_aggregates(parts))

    def _capped(self, aggs: BucketAggregates) -> BucketAggregates:
        """``aggs`` with the busiest ``max_partitions`` partitions (the rest counted)."""
        cap = self.settings.max_partitions
        capped = cap_partitions(aggs, cap)
        if capped.partitions_left_out:
            log.warning(
                "partition cap: modelled the %d busiest partitions, left out %d (%d operations, "
                "counted as dropped: partition_cap)",
                cap,
                capped.partitions_left_out,
                capped.dropped["partition_cap"],
            )
        return capped

    def _fail(
        self,
        err: SourceError,
        parts: list[BucketAggregates],
        start: datetime,
        c_start: datetime,
        c_end: datetime,
    ) -> NoReturn:
        if not parts:
            raise err
        raise IncompleteReadError(
            f"read {_span((start, c_start))} fully; chunk {_span((c_start, c_end))} failed: {err}",
            aggregates=self._capped(merge_aggregates(parts)),
            completed_until=c_start,
            failed=(c_start, c_end),
        ) from err

    def _read_chunk(
        self, start: datetime, end: datetime, bucket: timedelta
    ) -> tuple[BucketAggregates, int, int]:
        s = self.settings
        rules = kql.ArrivalRules(
            arrival=s.arrival,
            overlap=s.overlap,
            dedup_lookback=s.dedup_lookback,
            cluster_lookback=CLUSTER_LOOKBACK,
        )
        text = kql.aggregate_query(
            start, end, bucket=bucket, rules=rules, table=s.table, resource=self.resource
        )
        span = kql.scan_span(
            start,
            end,
            arrival=s.arrival,
            overlap=s.overlap,
            dedup_lookback=s.dedup_lookback,
            cluster_lookback=CLUSTER_LOOKBACK,
        )
        columns, rows, size = self._send(text, span, purpose="aggregate", splittable=True)
        try:
            agg = kql.aggregates_from_rows(columns, rows)
        except (ValueError, TypeError, KeyError) as err:
            raise QueryFailedError(f"aggregate answer for {_span((start, end))}: {err}") from None
        return agg, len(rows), size

    def _chunks(
        self, start: datetime, end: datetime, bucket: timedelta
    ) -> list[tuple[datetime, datetime]]:
        """One chunk for a short window; plan-sized chunks for a long one."""
        s = self.settings
        if end - start <= s.plan_threshold:
            return [(start, end)]
        text = kql.plan_query(
            start,
            end,
            step=s.plan_step,
            bucket=bucket,
            arrival=s.arrival,
            overlap=s.overlap,
            table=s.table,
            resource=self.resource,
        )
        span = kql.scan_span(start, end, arrival=s.arrival, overlap=s.overlap)
        try:
            columns, rows, _ = self._send(text, span, purpose="plan", splittable=False)
            steps = kql.plan_from_rows(columns, rows)
        except (PartialResultError, QueryFailedError, ValueError) as err:
            # Without a plan, fall back to one chunk per step: more queries, same result.
            log.warning("plan query failed (%s); reading in %s chunks", err, s.plan_step)
            steps = None
        return pack_chunks(
            start,
            end,
            steps,
            step=s.plan_step,
            max_rows=s.max_rows_per_chunk,
            max_bytes=s.max_bytes_per_chunk,
            max_scan_rows=s.max_scan_rows_per_chunk,
        )

    def read_resources(self, arrival_window: tuple[datetime, datetime]) -> dict[str, int]:
        """Rows per ``_ResourceId`` value (lower-cased, hostile text) that arrived in the
        window: which ACS resources write to this target. Raises like :meth:`read_aggregates`."""
        start, end = _check_window(arrival_window)
        s = self.settings
        self._waited = 0.0
        text = kql.resources_query(start, end, arrival=s.arrival, overlap=s.overlap, table=s.table)
        span = kql.scan_span(start, end, arrival=s.arrival, overlap=s.overlap)
        columns, rows, _ = self._send(text, span, purpose="resources", splittable=False)
        try:
            return kql.resources_from_rows(columns, rows)
        except (ValueError, TypeError) as err:
            raise QueryFailedError(f"resources answer for {_span((start, end))}: {err}") from None

    # -- drill-down --------------------------------------------------------------------------

    def drill_down(
        self, anomalies: Sequence[Anomaly], *, batch: int = 50
    ) -> dict[str, dict[str, list[Any]]]:
        """Top failing result codes and example calls for flagged partitions.

        Parameters
        ----------
        anomalies
            The flagged partitions; each is read over its own ``[window_start, window_end)``
            on ``CallClientTimeStamp`` (rows up to ``drill_lateness`` late included).
        batch
            Partitions per query (one small query per batch).

        Returns
        -------
        dict
            ``anomaly.fingerprint -> {"top_result_codes": [{"result_signature", "sub_code",
            "result_type", "count"}], "example_call_ids": [str]}``; partitions without hits
            get empty lists. Callers copy these into ``Anomaly.top_result_codes`` and
            ``Anomaly.example_call_ids``.

        Raises
        ------
        AuthError, PartialResultError, QueryFailedError
            As :meth:`read_aggregates`; a drill-down is an extra, so callers may catch
            :class:`~detector.errors.SourceError` and notify without it.
        """
        s = self.settings
        self._waited = 0.0
        out: dict[str, dict[str, list[Any]]] = {
            a.fingerprint: {"top_result_codes": [], "example_call_ids": []} for a in anomalies
        }
        targets = [
            kql.DrillTarget(
                fingerprint=a.fingerprint,
                operation_name=a.operation_name,
                sdk_version=a.sdk_version,
                metric=a.metric,
                start=a.window_start,
                end=a.window_end,
            )
            for a in anomalies
        ]
        unique = list({t.fingerprint: t for t in targets}.values())
        for i in range(0, len(unique), max(1, min(batch, 100))):
            group = unique[i : i + batch]
            text = kql.drill_down_query(
                group,
                lateness=s.drill_lateness,
                top_codes=s.top_codes,
                example_calls=s.example_calls,
                table=s.table,
                resource=self.resource,
            )
            lo = min(t.start for t in group) - timedelta(hours=1)
            hi = max(t.end for t in group) + s.drill_lateness
            columns, rows, _ = self._send(text, (lo, hi), purpose="drill", splittable=False)
            try:
                out.update(kql.drill_down_from_rows(columns, rows))
            except (ValueError, TypeError) as err:
                raise QueryFailedError(f"drill-down answer: {err}") from None
        return out


# --------------------------------------------------------------------------------------------
# Chunk planning (pure)
# --------------------------------------------------------------------------------------------


def pack_chunks(
    start: datetime,
    end: datetime,
    steps: Sequence[kql.PlanStep] | None,
    *,
    step: timedelta,
    max_rows: int,
    max_bytes: int,
    max_scan_rows: int,
) -> list[tuple[datetime, datetime]]:
    """Cut ``[start, end)`` at step boundaries so every chunk's estimate fits the limits.

    A chunk's answer is estimated as the sum over its steps of ``keys`` rows and
    ``keys * ROW_BYTES + key_bins * BIN_BYTES`` bytes (an over-estimate: a key seen in two
    steps is one row). A single step over a limit becomes a chunk of its own (the read splits
    it further if the service answers partially). ``steps=None`` (no plan): one chunk per step.
    """
    edges: list[datetime] = []
    t = start + step
    while t < end:
        edges.append(t)
        t += step
    if steps is None:
        bounds = [start, *edges, end]
        return list(zip(bounds[:-1], bounds[1:], strict=True))
    by_start = {st.start: st for st in steps}
    chunks: list[tuple[datetime, datetime]] = []
    c_start = start
    rows = size = scan = 0
    for s_start, s_end in zip([start, *edges], [*edges, end], strict=True):
        st = by_start.get(s_start)
        if st is None:
            continue
        s_rows = st.keys
        s_size = st.keys * ROW_BYTES + st.key_bins * BIN_BYTES
        over = (
            rows + s_rows > max_rows or size + s_size > max_bytes or scan + st.rows > max_scan_rows
        )
        if over and (rows or size or scan):
            chunks.append((c_start, s_start))
            c_start, rows, size, scan = s_start, 0, 0, 0
        rows, size, scan = rows + s_rows, size + s_size, scan + st.rows
        del s_end
    chunks.append((c_start, end))
    return chunks


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _check_window(window: tuple[datetime, datetime]) -> tuple[datetime, datetime]:
    start, end = window
    for ts in (start, end):
        if not isinstance(ts, datetime) or ts.tzinfo is None:
            raise ValueError("arrival window bounds must be timezone-aware datetimes")
    if end <= start:
        raise ValueError(f"arrival window end {end.isoformat()} is not after its start")
    return start.astimezone(UTC), end.astimezone(UTC)


def _midpoint(start: datetime, end: datetime) -> datetime:
    # Split on a whole second so every chunk bound is a clean KQL literal.
    half = timedelta(seconds=max(1, round((end - start).total_seconds() / 2)))
    return min(start + half, end - timedelta(seconds=1))


def _span(window: tuple[datetime, datetime]) -> str:
    a, b = window
    return f"[{a.strftime('%Y-%m-%dT%H:%M:%SZ')}, {b.strftime('%Y-%m-%dT%H:%M:%SZ')})"


def _first_line(err: BaseException) -> str:
    text = str(getattr(err, "message", None) or err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    # Never echo a bearer token that a library might have put into a message.
    return re.sub(r"(?i)bearer\s+\S+", "Bearer <redacted>", line)[:300]


def _code(err: Any) -> str:
    error = getattr(err, "error", None)
    code = getattr(error, "code", None) if error is not None else None
    return f" ({code})" if code else ""


def _error_message(err: Any) -> str:
    model = getattr(err, "model", None)
    message = getattr(model, "message", None) if model is not None else None
    return _first_line(Exception(message)) if isinstance(message, str) else _first_line(err)


def _error_texts(err: Any) -> list[str]:
    """Every ``message`` of an error answer's JSON body (nested ``innererror``s hold the
    service's own words, e.g. a SemanticError's), outermost first; [] if it has none."""
    try:
        body = json.loads(err.response.text())
    except Exception:  # noqa: BLE001 - no body, not JSON: nothing to read
        return []
    out: list[str] = []
    stack = [body]
    while stack:
        node = stack.pop(0)
        if isinstance(node, dict):
            if isinstance(node.get("message"), str):
                out.append(node["message"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return out


def _partial_message(error: Any) -> str:
    """The real cause of a partial answer lives in ``details[i].innererror`` (libraries.md)."""
    if error is None:
        return "unknown"
    inner = []
    for detail in getattr(error, "details", None) or []:
        # details are ErrorDetail models (mapping-like), plain dicts in older versions
        msg = _field(_field(detail, "innererror"), "message") or _field(detail, "message")
        if msg:
            inner.append(str(msg))
    code = getattr(error, "code", "")
    text = "; ".join(inner) or str(getattr(error, "message", "") or "")
    return _first_line(Exception(f"{code}: {text}" if code else text))


def _field(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    try:
        return obj[key]
    except (KeyError, TypeError, IndexError):
        return getattr(obj, key, None)


def _retry_after(response: Any) -> float | None:
    """Seconds from ``retry-after-ms``, ``x-ms-retry-after-ms`` or ``Retry-After``."""
    if response is None:
        return None
    headers = response.headers
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) / 1000)
            except ValueError:
                pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    # An HTTP date: relative to the response's own Date header (we never read the clock).
    try:
        until = email.utils.parsedate_to_datetime(value)
        sent = email.utils.parsedate_to_datetime(headers.get("Date") or "")
    except (TypeError, ValueError):
        return None
    return max(0.0, (until - sent).total_seconds())


def _iso_z(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sum_stats(each: list[dict[str, Any]]) -> dict[str, Any]:
    """Several targets' query statistics as one: numbers summed, maxima kept, chunks joined."""
    out: dict[str, Any] = {}
    for stats in each:
        for key, value in stats.items():
            if isinstance(value, list):
                out[key] = [*out.get(key, []), *value]
            elif isinstance(value, int | float) and not isinstance(value, bool):
                prev = out.get(key, 0)
                out[key] = max(prev, value) if key.startswith("max_") else prev + value
    return out


class LogAnalyticsTargets:
    """The Log Analytics source as a :class:`detector.source.base.Source`: every target.

    ``resource``: read only that ACS resource's rows (a tenant key); ``targets``: the indices
    of the Log Analytics workspaces / resources to query (default all). With several targets
    one that fails is recorded in :attr:`failed` (and its rows are not read); the others'
    aggregates are returned. When every target fails, the first error is raised.
    """

    kind = "log_analytics"

    def __init__(
        self, cfg: Config, *, resource: str | None = None, targets: Sequence[int] | None = None
    ) -> None:
        self.cfg = cfg
        self.resource = resource
        self._targets = targets
        self._la: list[Any] | None = None
        self.failed: list[str] = []

    def read(
        self,
        arrival_window: tuple[datetime, datetime],
        bucket: timedelta,
        progress: Callable[[str], None] | None = None,
    ) -> BucketAggregates:
        """The targets' aggregates for ``arrival_window``; chunks reported to ``progress``."""

        def chunk_progress(p: Any) -> None:
            if progress is not None:
                progress(
                    f"chunk {p.done}/{p.total} {_iso_z(p.start)} .. {_iso_z(p.end)}: "
                    f"{p.rows:,} result rows, {p.rows_read:,} log rows so far"
                )

        sources = self._sources()
        if len(sources) == 1:  # one target: its errors (and partial reads) are the run's
            aggs: BucketAggregates = sources[0].read_aggregates(
                arrival_window, bucket=bucket, progress=chunk_progress
            )
            return aggs
        return self._read_each(sources, arrival_window, bucket, chunk_progress)

    def _read_each(
        self,
        sources: list[Any],
        arrival_window: tuple[datetime, datetime],
        bucket: timedelta,
        progress: Callable[[Any], None],
    ) -> BucketAggregates:
        """Every target's aggregates merged; a failing target is recorded, not fatal."""
        parts: list[BucketAggregates] = []
        errors: list[SourceError] = []
        for src in sources:
            try:
                parts.append(src.read_aggregates(arrival_window, bucket=bucket, progress=progress))
            except SourceError as exc:
                errors.append(exc)
                what = f"{src.settings.target}: {str(exc).splitlines()[0][:300]}"
                _run_log.warning("reading %s failed; the other targets are read", what)
                self.failed.append(what)
        if not parts:
            raise errors[0]
        return merge_aggregates(parts)

    def _sources(self) -> list[Any]:
        """One LogAnalyticsSource per target; a workspace's is scoped to ``resource``."""
        if self._la is None:
            targets = LogAnalyticsSettings.from_config(self.cfg.source).targets()
            chosen = range(len(targets)) if self._targets is None else self._targets
            self._la = [
                LogAnalyticsSource(
                    targets[i], resource=self.resource if targets[i].workspace_id else None
                )
                for i in chosen
            ]
        return self._la

    def targets_used(self) -> list[int]:
        """The Log Analytics targets this source reads (indices)."""
        if self._targets is not None:
            return list(self._targets)
        return list(range(len(self._sources())))

    def stats(self) -> dict[str, Any]:
        """The query statistics for the run report (summed over targets), and failed targets."""
        out: dict[str, Any] = {}
        if self._la:
            each = [src.stats.as_dict() for src in self._la if hasattr(src, "stats")]
            out["queries"] = each[0] if len(each) == 1 else _sum_stats(each)
        if self.failed:
            out["failed_targets"] = list(self.failed)
        return out

    def notes(self) -> list[str]:
        """Nothing beyond the failed targets (listed apart): []."""
        return []

    def link_scope(self) -> dict[str, Any] | None:
        """Portal links scoped to this resource's rows, or None when reading every resource."""
        return {"resource_id": self.resource, "note": None} if self.resource else None

    def drill_down(self, anomalies: list[Anomaly], window: tuple[datetime, datetime]) -> None:
        """Fill top result codes and example CallIds (best effort)."""
        if not anomalies:
            return
        found: dict[str, Any] = {}
        for src in self._sources():
            try:
                for fp, extra in src.drill_down(anomalies).items():
                    if extra.get("top_result_codes") or extra.get("example_call_ids"):
                        found.setdefault(fp, extra)
            except DetectorError as exc:
                _run_log.warning("drill-down failed, alerts go out without it: %s", exc)
        for a in anomalies:
            extra = found.get(a.fingerprint) or {}
            a.top_result_codes = list(extra.get("top_result_codes", a.top_result_codes))
            a.example_call_ids = list(extra.get("example_call_ids", a.example_call_ids))


def discover_resources(cfg: Config, window: tuple[datetime, datetime]) -> Found:
    """Which ACS resources wrote the rows that arrived in ``window``, target by target: a
    target queried by resource is that resource's; a workspace is asked (failures recorded)."""
    from detector.source.base import Found, configured_resources
    from detector.source.resources import resource_key

    found = Found()
    configured = configured_resources(cfg)
    for i, target in enumerate(LogAnalyticsSettings.from_config(cfg.source).targets()):
        if target.resource_id:  # queried by resource: its rows are that resource's
            found.targets.setdefault(target.resource_id.strip().lower(), []).append(i)
            continue
        try:
            counts = LogAnalyticsSource(target).read_resources(window)
        except SourceError as exc:
            found.failed.append(f"{target.target}: {str(exc).splitlines()[0][:300]}")
            continue
        # A resource also queried by its own id is read there, not twice.
        found.tally({v: n for v, n in counts.items() if resource_key(v) not in configured}, i)
    return found
