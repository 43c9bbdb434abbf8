"""Alert bookkeeping in the store: lifecycle state, silences, acks, outbox, run history, sent log.

Everything is JSON written through a :class:`~detector.store.backend.Backend`, so the local
directory and Azure Blob Storage behave the same. Each kind of record has its own blob, because
they have different writers: the run writes ``state``, ``outbox``, ``runs`` and ``log`` (it holds
the job lock); ``acs-detector silence`` and ``ack`` write ``silences`` and ``acks`` at any time.
Every write is a compare-and-swap on the version read (``if_version``): read-modify-write
helpers retry a few times on a conflict, and :meth:`AlertStore.save_state` refuses to overwrite
a state another writer changed since :meth:`AlertStore.load_state` (StateError).

Blobs (under ``prefix``, default ``alerts/``): ``state.json``, ``silences.json``, ``acks.json``,
``outbox.json``, ``runs.json`` (last :data:`MAX_RUNS`), ``log.json`` (last :data:`MAX_LOG`
deliveries), ``nflog.json`` (the notification log: per digest and target, ``intent`` ->
``sending`` -> ``sent`` or ``undeliverable``, or ``superseded``/``expired``; last :data:`MAX_NFLOG` entries). Secrets are never
stored: outbox items and log entries keep the route name, a hash of the target URL and its
privacy form only.

Delivery batches: outbox items written ahead of a send carry the id of their batch, and
:meth:`AlertStore.save_state` records that id in ``state.json`` (``committed``) with the state
that decided them. An item whose batch is not there was written by a run that died before its
state was saved; it was never sent, and the rerun decides it again (see
:mod:`detector.notify.deliver`).

Consumes and produces records; does I/O through the backend only.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from detector.errors import StateError
from detector.lifecycle import Ack, AlertState, Silence
from detector.store.backend import Backend, VersionConflict
from detector.timeutil import iso_z, to_datetime

__all__ = [
    "MAX_LOG",
    "MAX_NFLOG",
    "MAX_RUNS",
    "NFLOG_STATES",
    "AlertStore",
    "OutboxItem",
    "RunRecord",
    "nflog_key",
]

MAX_RUNS: Final = 200
MAX_LOG: Final = 500
MAX_NFLOG: Final = 2000
MAX_BATCHES: Final = 200
#: Notification log states: intent -> sending -> sent | undeliverable; an intent whose batch
#: was never committed ends as superseded, one dropped from the outbox unsent as expired.
NFLOG_STATES: Final = ("intent", "sending", "sent", "undeliverable", "superseded", "expired")
_RETRIES: Final = 8
T = TypeVar("T")


@dataclass
class OutboxItem:
    """One message that could not be delivered to one target yet."""

    id: str
    route: str
    target_id: str  # hash of the target URL: finds the target again on the next run
    target: str  # apprise privacy form of the URL (safe to show)
    channel: str  # teams | slack | email | json | other
    title: str
    body: str
    body_format: str  # text | markdown | html
    created_at: datetime
    attachments: list[dict[str, str]] = field(default_factory=list)  # name, mimetype, data(b64)
    fingerprints: list[str] = field(default_factory=list)
    notify_type: str = "warning"  # failure | warning | success (colour/icon on retry)
    digest_id: str = ""  # the digest's content id (same decisions -> same id), for the nflog
    batch: str = ""  # the write-ahead batch ("" = written before batches existed: committed)
    timeout: float | None = None  # the route's send timeout when it was queued
    attempts: int = 0
    last_attempt_at: datetime | None = None
    last_error: str = ""
    #: Wall-clock time the store first took the item. ``created_at`` is the run's clock, which
    #: is data time for a manual rerun or the demo: ``status`` shows ages from this one.
    queued_at: datetime | None = None

    def age(self, now: datetime) -> float:
        """Seconds since the message was first created (on the run's clock)."""
        return (now - self.created_at).total_seconds()

    def queued_age(self, clock: datetime) -> float:
        """Seconds it has waited by the wall clock (``created_at`` for items stored before
        ``queued_at`` existed)."""
        return (clock - (self.queued_at or self.created_at)).total_seconds()

    @property
    def nflog_key(self) -> str:
        """Key of this message's notification log entry (digest and target)."""
        return nflog_key(self.digest_id or self.id, self.target_id)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["created_at"] = iso_z(self.created_at)
        d["last_attempt_at"] = iso_z(self.last_attempt_at)
        d["queued_at"] = iso_z(self.queued_at)
        return d

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OutboxItem:
        kw = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        kw["created_at"] = to_datetime(kw["created_at"])
        kw["last_attempt_at"] = to_datetime(kw.get("last_attempt_at"))
        kw["queued_at"] = to_datetime(kw.get("queued_at"))
        return cls(**kw)


_TIMES = ("started_at", "finished_at", "window_start", "window_end", "read_start")


@dataclass
class RunRecord:
    """What one run did, for ``status`` and the self-health checks.

    ``status``: ``ok``, ``source_error`` (reading the log failed), ``delivery_failed``
    (something went to the outbox), ``error`` (anything else). ``rows`` is what the source
    returned for the arrival window starting at ``read_start`` (0 = no data); the judged
    window (``window_start`` .. ``window_end``) can reach further back, e.g. after a crash. ``schema_drift`` lists unexpected/missing columns
    or other drift reasons the source reported.
    """

    started_at: datetime
    finished_at: datetime | None = None
    status: str = "ok"
    window_start: datetime | None = None
    window_end: datetime | None = None
    rows: int | None = None
    partitions: int | None = None
    anomalies: int = 0
    notified: int = 0
    outbox_size: int = 0
    schema_drift: list[str] = field(default_factory=list)
    error: str = ""  # one line, no secrets
    delivered: int = 0  # messages a target acknowledged in this run
    failed: int = 0  # messages left in the outbox for a retry
    undeliverable: int = 0  # messages dropped for good (malformed URL, no such service)
    unrouted: list[str] = field(default_factory=list)  # routes with notices but no usable URL
    read_start: datetime | None = None  # start of the arrival window ``rows`` were read from
    unjudged: str = ""  # a span the run left unjudged (catch-up cap), as its warning says

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in _TIMES:
            d[k] = iso_z(d[k])
        return d

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        kw = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        for k in _TIMES:
            if k in kw:
                kw[k] = to_datetime(kw[k])
        return cls(**kw)


def _wall_clock() -> datetime:
    return datetime.now(UTC)


class AlertStore:
    """Alert bookkeeping on a :class:`Backend` (local directory or Azure Blob Storage).

    ``clock`` stamps an outbox item's ``queued_at`` when the store first takes it (the wall
    clock unless a test passes its own).
    """

    def __init__(
        self,
        backend: Backend,
        prefix: str = "alerts/",
        *,
        clock: Callable[[], datetime] = _wall_clock,
    ) -> None:
        self.backend = backend
        self.prefix = prefix
        self.clock = clock
        self._state_version: str | None = None
        self._committed: list[str] = []

    # ---- low level -------------------------------------------------------------------------

    def _key(self, name: str) -> str:
        return f"{self.prefix}{name}.json"

    def _read(self, name: str, default: Any) -> tuple[Any, str]:
        got = self.backend.read(self._key(name))
        if got is None:
            return default, ""
        data, version = got
        try:
            return json.loads(data.decode("utf-8")), version
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StateError(f"{self._key(name)} is not valid JSON: {exc}") from exc

    def _write(self, name: str, value: Any, if_version: str | None) -> str:
        data = json.dumps(value, indent=1, sort_keys=True).encode("utf-8")
        return self.backend.write(self._key(name), data, if_version=if_version)

    def _update(self, name: str, default: Any, fn: Callable[[Any], T]) -> T:
        """Read-modify-write ``name`` with compare-and-swap, retrying on conflicts.

        ``fn`` mutates the decoded value in place and returns what the caller wants back.
        """
        for attempt in range(_RETRIES):
            value, version = self._read(name, default)
            result = fn(value)
            try:
                self._write(name, value, version)
            except VersionConflict:
                # Another writer won: back off a little (jittered) so retries do not collide.
                time.sleep(random.uniform(0, 0.02) * (attempt + 1))
                continue
            return result
        raise StateError(f"{self._key(name)}: too many concurrent writers, gave up")

    # ---- lifecycle state -------------------------------------------------------------------

    def load_state(self) -> AlertState:
        """The alert state (empty on the first run). Remembers its version for :meth:`save_state`."""
        data, version = self._read("state", None)
        self._state_version = version
        if data is None:
            self._committed = []
            return AlertState()
        try:
            self._committed = [str(b) for b in data.get("committed", [])]
            return AlertState.from_json(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"{self._key('state')}: cannot be read: {exc}") from exc

    def committed(self) -> set[str]:
        """Delivery batches whose state was saved (as of :meth:`load_state`/:meth:`save_state`)."""
        return set(self._committed)

    def save_state(self, state: AlertState, *, commit_batch: str | None = None) -> None:
        """Write the state, only if nobody changed it since :meth:`load_state` (else StateError).

        ``commit_batch``: the outbox batch this state decided; recorded in the same write, so
        its items are known to be committed (sendable) from then on.
        """
        if commit_batch:
            self._committed = [*self._committed, commit_batch][-MAX_BATCHES:]
        data = {**state.to_json(), "committed": list(self._committed)}
        try:
            self._state_version = self._write("state", data, self._state_version)
        except VersionConflict as exc:
            raise StateError(
                f"{self._key('state')} was changed by another run since it was read;"
                " this run's state was not saved"
            ) from exc

    # ---- silences --------------------------------------------------------------------------

    def silences(self) -> list[Silence]:
        data, _ = self._read("silences", [])
        return [Silence.from_json(s) for s in data]

    def active_silences(self, now: datetime) -> list[Silence]:
        return [s for s in self.silences() if s.active(now)]

    def add_silence(
        self,
        matchers: dict[str, str],
        starts_at: datetime,
        ends_at: datetime,
        *,
        comment: str = "",
        created_by: str = "",
        now: datetime,
    ) -> Silence:
        """Store a new silence (validated) and return it with its id."""
        if ends_at <= starts_at:
            raise StateError("silence must end after it starts")
        silence = Silence(
            id=uuid.uuid4().hex[:8],
            matchers=dict(matchers),
            starts_at=starts_at,
            ends_at=ends_at,
            comment=comment,
            created_by=created_by,
            created_at=now,
        )

        def add(items: list[dict[str, Any]]) -> Silence:
            items.append(silence.to_json())
            return silence

        return self._update("silences", [], add)

    def expire_silence(self, silence_id: str, now: datetime) -> Silence:
        """End a silence now (kept for the record). Raises StateError if the id is unknown."""

        def expire(items: list[dict[str, Any]]) -> Silence:
            for i, raw in enumerate(items):
                if raw.get("id") == silence_id:
                    s = Silence.from_json(raw)
                    s.expired_at = now
                    items[i] = s.to_json()
                    return s
            raise StateError(f"no silence with id {silence_id!r}")

        return self._update("silences", [], expire)

    def gc_silences(self, now: datetime, keep_for_seconds: float = 7 * 86400) -> int:
        """Drop silences that ended more than ``keep_for_seconds`` ago; return how many."""

        def gc(items: list[dict[str, Any]]) -> int:
            before = len(items)
            items[:] = [
                raw
                for raw in items
                if (now - _ended(Silence.from_json(raw))).total_seconds() <= keep_for_seconds
            ]
            return before - len(items)

        return self._update("silences", [], gc)

    # ---- acknowledgements -------------------------------------------------------------------

    def acks(self) -> dict[str, Ack]:
        data, _ = self._read("acks", {})
        return {fp: Ack.from_json(a) for fp, a in data.items()}

    def add_ack(self, ack: Ack) -> Ack:
        def add(items: dict[str, Any]) -> Ack:
            items[ack.fingerprint] = ack.to_json()
            return ack

        return self._update("acks", {}, add)

    def prune_acks(self, state: AlertState) -> int:
        """Drop acks whose fingerprint is no longer firing (an ack lasts until resolve)."""
        firing = {r.fingerprint for r in state.firing()}

        def prune(items: dict[str, Any]) -> int:
            stale = [fp for fp in items if fp not in firing]
            for fp in stale:
                del items[fp]
            return len(stale)

        return self._update("acks", {}, prune)

    # ---- outbox ----------------------------------------------------------------------------

    def outbox(self) -> list[OutboxItem]:
        data, _ = self._read("outbox", [])
        return [OutboxItem.from_json(i) for i in data]

    def put_outbox(self, items: list[OutboxItem]) -> None:
        """Add or replace items (by id); a new item is stamped ``queued_at`` by the clock."""
        queued = self.clock()
        for item in items:
            if item.queued_at is None:
                item.queued_at = queued
        by_id = {i.id: i.to_json() for i in items}

        def put(current: list[dict[str, Any]]) -> None:
            seen = set()
            for n, raw in enumerate(current):
                if raw["id"] in by_id:
                    current[n] = by_id[raw["id"]]
                    seen.add(raw["id"])
            current.extend(v for k, v in by_id.items() if k not in seen)

        self._update("outbox", [], put)

    def remove_outbox(self, ids: list[str]) -> None:
        drop = set(ids)

        def remove(current: list[dict[str, Any]]) -> None:
            current[:] = [raw for raw in current if raw["id"] not in drop]

        if drop:
            self._update("outbox", [], remove)

    # ---- runs and the sent log ---------------------------------------------------------------

    def runs(self) -> list[RunRecord]:
        """Run history, oldest first."""
        data, _ = self._read("runs", [])
        return [RunRecord.from_json(r) for r in data]

    def record_run(self, run: RunRecord) -> None:
        def add(items: list[dict[str, Any]]) -> None:
            items.append(run.to_json())
            del items[:-MAX_RUNS]

        self._update("runs", [], add)

    def log(self) -> list[dict[str, Any]]:
        """Deliveries (sent or failed), oldest first: at, route, target, outcome, fingerprints."""
        data, _ = self._read("log", [])
        return list(data)

    def append_log(self, entries: list[dict[str, Any]]) -> None:
        def add(items: list[dict[str, Any]]) -> None:
            items.extend(entries)
            del items[:-MAX_LOG]

        if entries:
            self._update("log", [], add)

    # ---- notification log ------------------------------------------------------------------

    def nflog(self) -> dict[str, dict[str, Any]]:
        """The notification log, oldest change first: ``nflog_key(digest, target)`` ->
        ``{state, at, route, target, digest, seq}``."""
        data, _ = self._read("nflog", {})
        if not isinstance(data, dict):
            return {}
        return dict(sorted(data.items(), key=lambda kv: kv[1].get("seq", 0)))

    def mark(self, entries: dict[str, dict[str, Any]]) -> None:
        """Add or update notification log entries in one write (oldest trimmed past MAX_NFLOG).

        Each value needs ``state`` (one of :data:`NFLOG_STATES`); other keys are kept as given,
        and ``seq`` orders the entries by their latest change (the blob is written key-sorted).
        """
        for entry in entries.values():
            if entry.get("state") not in NFLOG_STATES:
                raise ValueError(f"nflog state must be one of {NFLOG_STATES}")

        def put(current: dict[str, Any]) -> None:
            seq = max((int(e.get("seq", 0)) for e in current.values()), default=0)
            for key, entry in entries.items():
                seq += 1
                current[key] = {**entry, "seq": seq}
            oldest = sorted(current, key=lambda k: current[k].get("seq", 0))
            for key in oldest[: max(0, len(current) - MAX_NFLOG)]:
                del current[key]

        if entries:
            self._update("nflog", {}, put)


def nflog_key(digest_id: str, target_id: str) -> str:
    """The notification log key of one digest to one target."""
    return f"{digest_id}/{target_id}"


def _ended(s: Silence) -> datetime:
    return min(s.ends_at, s.expired_at) if s.expired_at else s.ends_at
