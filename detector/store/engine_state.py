"""The engine's own memory between runs: which partitions alerted when.

The detection engine keeps buckets that alerted out of later baselines (design §1.4), so a long
incident does not become the new normal. This record is that list: merged, half-open UTC spans
per (operation, sdk_version) partition (``"*"`` = the operation's fleet). It is pruned to the
baseline horizon, so it stays small. Pure data plus a tiny loader/saver over a
:class:`~detector.store.backend.Backend` (key ``engine/state.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from detector.errors import StateError
from detector.store.backend import Backend

__all__ = ["EngineState", "load_engine_state", "save_engine_state"]

STATE_KEY = "engine/state.json"


def _parse(text: str) -> datetime:
    ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class EngineState:
    """Alerted spans ``(operation, sdk_version, start, end)``, merged per partition."""

    alerted: list[tuple[str, str, datetime, datetime]] = field(default_factory=list)

    def add(self, operation: str, sdk_version: str, start: datetime, end: datetime) -> None:
        """Record a span that alerted (merged with touching/overlapping spans of the partition)."""
        keep, s, e = [], start, end
        for op, ver, a, b in self.alerted:
            if op == operation and ver == sdk_version and a <= e and s <= b:
                s, e = min(s, a), max(e, b)
            else:
                keep.append((op, ver, a, b))
        keep.append((operation, sdk_version, s, e))
        self.alerted = sorted(keep)

    def prune(self, before: datetime) -> None:
        """Forget spans that ended before ``before`` (older than any baseline window)."""
        self.alerted = [x for x in self.alerted if x[3] > before]

    def copy(self) -> EngineState:
        return EngineState(list(self.alerted))

    def to_json(self) -> dict[str, object]:
        return {"alerted": [[op, ver, _iso(a), _iso(b)] for op, ver, a, b in self.alerted]}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> EngineState:
        try:
            spans = data.get("alerted", [])
            assert isinstance(spans, list)
            return cls([(str(o), str(v), _parse(a), _parse(b)) for o, v, a, b in spans])
        except (AssertionError, TypeError, ValueError) as exc:
            raise StateError(f"engine state unreadable: {exc}") from exc


def load_engine_state(backend: Backend) -> tuple[EngineState, str]:
    """Return the stored state (empty when none) and its version for a CAS write."""
    got = backend.read(STATE_KEY)
    if got is None:
        return EngineState(), ""
    try:
        return EngineState.from_json(json.loads(got[0])), got[1]
    except json.JSONDecodeError as exc:
        raise StateError(f"engine state unreadable: {exc}") from exc


def save_engine_state(
    backend: Backend, state: EngineState, *, if_version: str | None = None
) -> str:
    """Write the state atomically (compare-and-swap when ``if_version`` is given)."""
    data = json.dumps(state.to_json(), indent=1).encode()
    return backend.write(STATE_KEY, data, if_version=if_version)
