"""The anomaly record: what the detection engine emits and the alerting stage consumes.

Pure data. ``Anomaly.to_json()`` is the line format of ``acs-detector run --output FILE``
(design §2): the first eleven keys are the stable contract, the rest is the explanation that
notifications and reports render.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

from detector.timeutil import iso

__all__ = [
    "deviation",
    "worst_key",
    "FLEET",
    "METRICS",
    "TENANT_FINGERPRINT",
    "TENANT_OPERATION",
    "SEVERITIES",
    "Anomaly",
    "Metric",
    "Severity",
    "decode_part",
    "fingerprint_of",
    "severity_rank",
]

Metric = Literal["duration", "failure_rate", "volume"]
Severity = Literal["info", "warning", "critical"]

METRICS: Final[tuple[str, ...]] = ("duration", "failure_rate", "volume")
SEVERITIES: Final[tuple[str, ...]] = ("info", "warning", "critical")
#: The SDK-version part of a fleet fingerprint (all versions of the operation together).
FLEET: Final = "*"
#: ``operation_name`` of a tenant-level alert (every operation together) and its fingerprint.
#: An operation literally named ``*`` is encoded ``%2A``, so no log row can take it.
TENANT_OPERATION: Final = "*"
TENANT_FINGERPRINT: Final = "*|*|volume"

# Only the three characters that carry meaning in a fingerprint are encoded, so the
# fingerprints of ordinary names (and the state files keyed by them) stay as they were.
_ENCODE: Final = {"%": "%25", "|": "%7C"}
_DECODE = re.compile(r"%(25|7C|2A)")
_DECODED: Final = {"25": "%", "7C": "|", "2A": "*"}


def _encode_part(text: str) -> str:
    return "".join(_ENCODE.get(ch, ch) for ch in text)


def decode_part(part: str) -> str:
    """Inverse of the encoding :func:`fingerprint_of` applies to each part."""
    return _DECODE.sub(lambda m: _DECODED[m.group(1)], part)


def fingerprint_of(operation_name: str, sdk_version: str | None, metric: str) -> str:
    """``operation|sdk_version|metric``, the identity of an alert across runs.

    ``None`` and ``""`` as version both mean the fleet (``*``). ``%`` and ``|`` in any part
    are percent-encoded and a version or operation literally ``*`` becomes ``%2A``, so every
    operation name and version string gives a fingerprint that splits back into the same
    three parts (``detector.lifecycle.parse_fingerprint``); other characters are kept.
    """
    sdk = FLEET if not sdk_version else _encode_part(str(sdk_version))
    if sdk_version == FLEET:
        sdk = "%2A"
    op = "%2A" if operation_name == TENANT_OPERATION else _encode_part(str(operation_name))
    return f"{op}|{sdk}|{_encode_part(str(metric))}"


def severity_rank(severity: str) -> int:
    """0 for info, 1 for warning, 2 for critical (for ``min_severity`` routing)."""
    return SEVERITIES.index(severity)


def deviation(a: Anomaly) -> float:
    """How far a window moved in the alert's direction (the sign of its ``effect``): failure
    rate in points, other metrics as a relative change; 0 when a value is missing. A window
    that moved the other way (a lower p95 on one call of a slower partition) ranks last."""
    obs, base = a.observed, a.baseline
    if obs is None or base is None or not (math.isfinite(obs) and math.isfinite(base)):
        return 0.0
    relative = obs / base - 1 if base else 0.0
    moved = obs - base if a.metric == "failure_rate" else relative
    effect = a.effect if a.effect is not None and math.isfinite(a.effect) else moved
    return moved if effect >= 0 else -moved


def worst_key(a: Anomaly) -> tuple[int, float]:
    """Sort key of an alert's windows: the most severe, then the furthest from usual. The one
    window every channel (digest, report, chart) shows for an alert is the max of this."""
    return (severity_rank(a.severity) if a.severity in SEVERITIES else -1, deviation(a))


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become None, datetimes ISO-8601 UTC strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


@dataclass
class Anomaly:
    """One alert candidate that passed the gates, for one partition and metric.

    ``sdk_version`` is None for the fleet (all versions of the operation together).
    ``window_start``/``window_end`` (UTC, half-open) span the buckets that made it fire.
    ``observed`` and ``baseline`` are in the metric's unit: milliseconds (p95 by default) for
    ``duration``, a fraction in [0, 1] for ``failure_rate``, operations per bucket for ``volume``.
    ``score`` is the isolation-forest score, higher = more anomalous.
    """

    operation_name: str
    sdk_version: str | None
    metric: str
    window_start: datetime
    window_end: datetime
    observed: float
    baseline: float
    score: float
    severity: str
    calls: int
    reason: str
    # --- explanation -------------------------------------------------------------------
    band_low: float | None = None  # baseline band (same unit as observed)
    band_high: float | None = None
    effect: float | None = (
        None  # relative effect for duration/volume, absolute points for failure_rate
    )
    p_value: float | None = None  # corrected for the number of partitions tested
    baseline_kind: str = "flat"  # "seasonal", "flat" or "borrowed"
    provisional: bool = False  # baseline (partly) borrowed from the operation's fleet baseline
    baseline_calls: int | None = None  # sample size behind the baseline
    traffic_share: float | None = None  # this version's share of the operation's calls
    drivers: list[str] = field(
        default_factory=list
    )  # features that drove the score, strongest first
    failures: int | None = None
    top_result_codes: list[dict[str, Any]] = field(default_factory=list)  # drill-down
    example_call_ids: list[str] = field(default_factory=list)  # drill-down
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """Identity of the alert across runs: (operation, SDK version or fleet, metric), or
        :data:`TENANT_FINGERPRINT` for a tenant-level alert."""
        if self.details.get("scope") == "tenant":
            return TENANT_FINGERPRINT
        return fingerprint_of(self.operation_name, self.sdk_version, self.metric)

    def to_json(self) -> dict[str, Any]:
        """The JSON-lines record (design §2 keys first, explanation after)."""
        out = _clean(asdict(self))
        assert isinstance(out, dict)  # _clean keeps a dict a dict
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Anomaly:
        """Inverse of :meth:`to_json`."""
        kwargs = dict(data)
        for key in ("window_start", "window_end"):
            kwargs[key] = datetime.fromisoformat(str(kwargs[key]).replace("Z", "+00:00"))
        for key in ("observed", "baseline", "score"):
            if kwargs.get(key) is None:
                kwargs[key] = math.nan
        return cls(**kwargs)
