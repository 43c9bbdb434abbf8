"""The engine's own memory between runs: which partitions alerted when.

The detection engine keeps buckets that alerted (and, for a shorter time, buckets that deviated
without alerting) out of later baselines (design §1.4), so a long incident does not become the
new normal. This record is those lists: merged, half-open UTC spans
per (operation, sdk_version) partition (``"*"`` = the operation's fleet). It is pruned to the
baseline horizon, so it stays small. Pure data plus a tiny loader/saver over a
:class:`~detector.store.backend.Backend` (key ``engine/state.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from detector.errors import StateError
from detector.store.backend import Backend
from detector.timeutil import iso, parse_time

__all__ = ["EngineState", "load_engine_state", "save_engine_state"]

STATE_KEY = "engine/state.json"


Span = tuple[str, str, datetime, datetime]


def _merge(
    spans: list[Span], operation: str, sdk_version: str, start: datetime, end: datetime
) -> list[Span]:
    keep, s, e = [], start, end
    for op, ver, a, b in spans:
        if op == operation and ver == sdk_version and a <= e and s <= b:
            s, e = min(s, a), max(e, b)
        else:
            keep.append((op, ver, a, b))
    keep.append((operation, sdk_version, s, e))
    return sorted(keep)


def _merge_all(spans: list[Span]) -> list[Span]:
    """Merge overlapping or touching spans of the same partition."""
    out: list[Span] = []
    for op, ver, a, b in sorted(spans):
        if out and out[-1][0] == op and out[-1][1] == ver and a <= out[-1][3]:
            last = out[-1]
            out[-1] = (op, ver, last[2], max(last[3], b))
        else:
            out.append((op, ver, a, b))
    return out


@dataclass
class EngineState:
    """Spans ``(operation, sdk_version, start, end)`` kept out of baselines, merged per partition.

    ``alerted``: buckets that became anomalies (kept for the whole baseline window).
    ``suspect``: buckets that deviated significantly and by a practical amount but did not
    alert (too few calls yet, not persistent yet, attributed elsewhere): a new version's first
    slow calls must not become its own baseline. Kept for a shorter horizon, so a genuine level
    shift that never alerts is learnt eventually.
    """

    alerted: list[Span] = field(default_factory=list)
    suspect: list[Span] = field(default_factory=list)
    #: judged bucket start (ISO) -> ``{"p": [...], "op": [...]}``: per metric, the smallest p
    #: on decide's scale among the buckets that passed every gate but significance, and its
    #: operation (detector.detect.calibrate).
    calibration: dict[str, dict[str, list[Any]]] = field(default_factory=dict)

    def add(self, operation: str, sdk_version: str, start: datetime, end: datetime) -> None:
        """Record a span that alerted (merged with touching/overlapping spans of the partition)."""
        self.alerted = _merge(self.alerted, operation, sdk_version, start, end)

    def add_suspect(self, operation: str, sdk_version: str, start: datetime, end: datetime) -> None:
        """Record a span that deviated without alerting."""
        self.suspect = _merge(self.suspect, operation, sdk_version, start, end)

    def add_suspects(self, spans: list[Span]) -> None:
        """Record many suspect spans at once (one sort and merge pass, not one per span)."""
        self.suspect = _merge_all([*self.suspect, *spans])

    def excluded(self) -> list[Span]:
        """Every span to keep out of baselines."""
        return [*self.alerted, *self.suspect]

    def prune(self, before: datetime, suspect_before: datetime | None = None) -> None:
        """Forget spans that ended before ``before`` (suspects: before ``suspect_before``)."""
        self.alerted = [x for x in self.alerted if x[3] > before]
        cut = suspect_before or before
        self.suspect = [x for x in self.suspect if x[3] > cut]
        self.calibration = {k: v for k, v in self.calibration.items() if parse_time(k) >= before}

    def copy(self) -> EngineState:
        return EngineState(list(self.alerted), list(self.suspect), dict(self.calibration))

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "alerted": [[op, ver, iso(a), iso(b)] for op, ver, a, b in self.alerted],
            "suspect": [[op, ver, iso(a), iso(b)] for op, ver, a, b in self.suspect],
        }
        if self.calibration:
            out["calibration"] = dict(sorted(self.calibration.items()))
        return out

    @classmethod
    def from_json(cls, data: dict[str, object]) -> EngineState:
        try:
            out = []
            for key in ("alerted", "suspect"):
                spans = data.get(key, [])
                assert isinstance(spans, list)
                out.append([(str(o), str(v), parse_time(a), parse_time(b)) for o, v, a, b in spans])
            return cls(out[0], out[1], _calibration(data.get("calibration", {})))
        except (AssertionError, TypeError, ValueError) as exc:
            raise StateError(f"engine state unreadable: {exc}") from exc


def _calibration(raw: object) -> dict[str, dict[str, list[Any]]]:
    """The stored calibration record, checked: ISO bucket start -> p-values in [0, 1] and
    operation names, as many of each."""
    assert isinstance(raw, dict)
    out: dict[str, dict[str, list[Any]]] = {}
    for key, rec in raw.items():
        parse_time(str(key))
        assert isinstance(rec, dict)
        p, ops = rec.get("p"), rec.get("op")
        assert isinstance(p, list) and isinstance(ops, list) and len(p) == len(ops)
        assert all(isinstance(v, int | float) and 0.0 <= float(v) <= 1.0 for v in p)
        assert all(isinstance(o, str) for o in ops)
        out[str(key)] = {"p": [float(v) for v in p], "op": list(ops)}
    return out


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
