"""Policy: the settings every stage reads.

:class:`DetectionPolicy` holds every knob of the engine (config section ``[detection]``) with
its default and checks; :class:`Metric` (its names: :data:`METRIC_NAMES`) is the metric axis
of every (partition, metric, bucket) array; :func:`volume_effect_ok` is the policy's practical
minimum for a volume change. Consumes a ``[detection]`` table; produces the policy. Pure: no
I/O, no clock.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import timedelta
from enum import IntEnum
from typing import Any, Final

import numpy as np

__all__ = ["METRIC_NAMES", "DetectionPolicy", "Metric", "volume_effect_ok"]


class Metric(IntEnum):
    """The metric axis of every (partition, metric, bucket) array: each value is its index."""

    DURATION = 0
    FAILURE_RATE = 1
    VOLUME = 2


#: Metric order of every (partition, metric, bucket) array in this package.
METRIC_NAMES: Final[tuple[str, ...]] = tuple(m.name.lower() for m in Metric)


@dataclass(frozen=True)
class DetectionPolicy:
    """Every knob of the detection engine, with its default (config section ``[detection]``).

    Durations accept ``timedelta`` or strings such as ``"5m"`` in :meth:`from_mapping`.
    """

    # --- buckets and baselines ---------------------------------------------------------------
    bucket: timedelta = timedelta(minutes=5)
    baseline: timedelta = timedelta(days=7)  # trailing baseline window
    min_history: timedelta = timedelta(hours=12)  # less baseline than this: insufficient_history
    seasonal_min_days: float = 1.75  # hour-of-day profile needs this much history
    weekly_min_days: float = 21.0  # hour-of-week profile needs this much history
    slot_prior_calls: float = 200.0  # shrinks an hour slot towards the flat baseline (at least)
    cold_start_k: float = 300.0  # empirical-Bayes k: version weight = n / (n + k)
    provisional_weight: float = 0.8  # below this own-weight the baseline is provisional
    suspect_horizon: timedelta = timedelta(days=2)  # deviating (not alerted) buckets kept out
    suspect_factor: float = 1.0  # ... when significant and >= this x the minimum effect
    max_dispersion: float = 20.0  # cap on the overdispersion factors learnt from the baseline
    # --- tests ---------------------------------------------------------------------------------
    spans: tuple[int, ...] = (1, 3, 6, 12, 36, 144)  # trailing spans (buckets) tested
    alpha: float = 0.01  # family-wise per hour: Bonferroni over partitions x spans x buckets/hour
    # Share of the failure rate's alpha spent on the since-rollout tests of new builds (a family
    # of their own: Bonferroni over the new builds x the tests an hour of each one's looks is
    # worth, rollout.effective_looks); the trailing spans keep the rest. A handful of builds
    # judged on everything since their first call is a pre-specified hypothesis, not one more
    # span of every partition.
    rollout_alpha_share: float = 0.2
    # bool: a new build's tail since its rollout (detector.detect.tail): its share of calls
    # above its operation's baseline p95 for the hour, against its other versions' at the same
    # hours; its tests share rollout_alpha_share of the duration alpha, as the failure ones do.
    tail: bool = True
    # Duration p-values are multiplied by this before they meet alpha: the normal test of the
    # mean log-duration has heavier tails than nominal (skewed, clustered durations; on
    # incident-free holdout weeks P(z > 4) was 1.6-17x the normal's), unlike the failure and
    # volume tests, whose exact tails hold. 10 left no duration alert on the holdout's
    # incident-free weeks; 3 kept one (measured, with its cost, in the issue notes).
    duration_p_factor: float = 10.0
    loo_z: float = 2.0  # the evidence must survive dropping its strongest bucket (z >= this)
    peer_z: float = 3.0  # a version differs from its operation's other versions (z >= this)
    shared_z: float = 2.0  # the other versions deviate too (z >= this): fleet-wide, not one version
    latest_z: float = 2.0  # the latest third (<= latest_span buckets) must deviate this much:
    latest_span: int = 12  # the evidence is current (an incident that ended stops alerting)
    latest_share: float = 0.5  # ... with at least this share of the whole span's effect
    attribution_lookback: int = (
        12  # a version own-deviating in most of these buckets explains the fleet
    )
    third_support: float = 1 / 3  # ... with at least this share of min_calls behind it
    # A volume span's thirds must each show this share of the minimum change (min_volume_drop,
    # min_volume_rise): the whole span still needs all of it. With the full minimum per third,
    # a -67 % hour at 65 calls an hour, one of whose thirds read -45 % by chance, was missed.
    # Durations and failure rates keep their full minimum per third (halving it there let
    # three more false alerts through on the two simulators).
    third_volume_share: float = 0.5
    forest_prefilter_z: float = 2.5  # the forest scores buckets with some |feature| >= this
    # --- practical significance -------------------------------------------------------------
    min_duration_rel: float = 0.20  # +20 % typical duration
    min_duration_ms: float = 100.0  # and +100 ms at the p95
    min_failure_points: float = 0.02  # +2 points of failure rate
    min_volume_drop: float = 0.5  # volume down by half ...
    min_volume_rise: float = 1.0  # ... or up by 100 % (only with volume_direction rise/both)
    volume_direction: str = "drop"  # "drop" | "rise" | "both": a surge of users is not a fault
    critical_factor: float = 3.0  # effect >= this x the minimum -> critical
    # --- volume --------------------------------------------------------------------------------
    min_calls: int = 30  # calls behind a duration / failure-rate test
    min_failures: int = 4  # failures behind a failure-rate test
    min_share: float = 0.05  # a version with less of its operation's traffic is not alerted on
    min_expected_calls: float = 30.0  # expected calls behind a volume test
    volume_scope: str = "fleet"  # "fleet": volume judged per operation only; "all"
    # --- persistence ---------------------------------------------------------------------------
    persist_n: int = 2
    persist_m: int = 3
    # --- forest --------------------------------------------------------------------------------
    n_estimators: int = 100
    max_samples: int = 256
    contamination: float = 0.01  # share of training buckets above the flag threshold
    max_train_rows: int = 50_000
    refit_every: timedelta = timedelta(days=1)
    seed: int = 0
    # --- short history and tenant-wide stop (issue 20, history) --------------------------------
    # Short history: an operation with history_floor..min_history of baseline is judged, with
    # bands widened by min_history / its history and alpha times short_history_alpha.
    short_history: bool = False  # bool: judge short histories (False: refuse below min_history)
    history_floor: timedelta = timedelta(hours=2)  # timedelta, bucket..min_history: hard floor
    short_history_alpha: float = 0.1  # float in (0, 1]: alpha factor below min_history
    # Tenant-wide stop: the whole tenant at or near zero is one tenant alert, the operations'
    # volume drops folded into it.
    tenant_stop: bool = True  # bool: fold a tenant-wide stop into one alert
    stop_share: float = 0.1  # float in [0, 1): tenant calls at most this share of expected
    stop_buckets: int = 2  # int >= 1: quiet buckets in a row before the tenant alert
    stop_recovery: timedelta = timedelta(hours=1)  # timedelta >= 0: aftermath folded in too
    # --- sequential evidence (issue 20): a windowed CUSUM per partition accumulates evidence
    # over buckets (failure rate rising, volume falling), for thin partitions
    sequential: str = "failures"  # "off" | "failures" | "both" (failures and volume drops):
    # which metrics the sequential test runs on, beside the trailing spans
    sequential_fold: float = 4.0  # float > 1: the k-fold rise of failure rate (fall of volume)
    # the CUSUM is tuned to; the failure rate it is tuned to is at least +min_failure_points
    sequential_false_alerts_per_day: float = 0.1  # float > 0: tenant-wide false alarms a day
    # the test may raise (its thresholds follow from it, see features.sequential_thresholds)
    # --- forest vote (issue 20) ------------------------------------------------------------
    # bool: true: the forest scores span vectors and its p-value (rank among held-out
    # baseline windows, detector.detect.forest) may alert on its own; false (default: its one gain,
    # a joint shift on 1 of 3 simulator seeds, is noise by our protocol; docs/decisions.md):
    # no forest at all, and scikit-learn is not even imported.
    forest: bool = False
    # float in (0, 1]: a forest alert needs an unusual *combination*: at least two metrics
    # each moved by this share of their own minimum effect, none by all of it, the shares
    # summing to >= 1.
    forest_min_share: float = 0.25
    # --- calibration (issue 20): significance thresholds from the tenant's own history ------
    # bool: true: once ``calibration_min_hours`` of judged history are recorded, each metric's
    # threshold (on the scale p x tests-an-hour) is set so that, on that history, the hours
    # whose best bucket passed every other gate would have alerted at most
    # ``false_alerts_per_day`` times a day (split over the metrics); false: ``alpha`` for all.
    calibrate: bool = False
    false_alerts_per_day: float = 0.1  # float > 0: the tenant's false-alert budget a day
    calibration_min_hours: int = 24  # int >= 1: judged hours before calibration replaces alpha

    @classmethod
    def from_mapping(cls, data: Mapping[str, object] | None) -> DetectionPolicy:
        """Build a policy from a ``[detection]`` table, checked by the config's constraints
        table (:data:`detector.config.DETECTION`): types, ranges and choices per key.

        Keys the engine does not use but the pipeline does (``delay``, ``lateness``,
        ``max_window``, ``step``, ``max_catchup``) are accepted and ignored. Raises
        ``ValueError`` listing every problem (``detection.alpha: must be ...; ...``).
        """
        from detector.config import DETECTION, retired_keys  # with the other sections' tables
        from detector.settings import check_table

        kept, dropped = retired_keys("detection", data or {})
        for why in dropped:  # (a config file's are also the loader's warnings)
            logging.getLogger(__name__).warning("%s", why)
        checked = check_table("detection", DETECTION, kept, defaults=False)
        problems = checked.problems + [f"unknown [detection] key {k!r}" for k in checked.unknown]
        if problems:
            raise ValueError("; ".join(problems))
        known = {f.name for f in fields(cls)}
        # Typed by the table's constraints (each key's check returns the field's type).
        kwargs: dict[str, Any] = {k: v for k, v in checked.values.items() if k in known}
        policy = cls(**kwargs)
        policy.validate()
        return policy

    def validate(self) -> None:
        """Raise ``ValueError`` listing every out-of-range knob."""
        problems = [message for bad, message in self._range_checks() if bad]
        if problems:
            raise ValueError("; ".join(problems))

    def _range_checks(self) -> list[tuple[bool, str]]:
        """(is out of range, message) per rule tying knobs together or to their range."""
        b = self.bucket
        return [
            (
                b < timedelta(minutes=1) or bool(86400 % b.total_seconds()),
                "bucket: must be >= 1m and divide a day",
            ),
            (self.baseline < 4 * b, "baseline: must cover at least 4 buckets"),
            (not 0 < self.alpha < 1, "alpha: must be in (0, 1)"),
            (not 0 < self.rollout_alpha_share < 1, "rollout_alpha_share: must be in (0, 1)"),
            (not self.duration_p_factor >= 1, "duration_p_factor: must be >= 1"),
            (not self.spans or min(self.spans) < 1, "spans: positive bucket counts"),
            (not 0 < self.third_volume_share <= 1, "third_volume_share: must be in (0, 1]"),
            (not 1 <= self.persist_n <= self.persist_m, "persist_n/persist_m: need 1 <= N <= M"),
            (not 0 < self.contamination < 0.5, "contamination: must be in (0, 0.5)"),
            (
                self.volume_direction not in ("drop", "rise", "both"),
                "volume_direction: 'drop', 'rise' or 'both'",
            ),
            (self.volume_scope not in ("fleet", "all"), "volume_scope: 'fleet' or 'all'"),
            (
                self.sequential not in ("off", "failures", "both"),
                "sequential: 'off', 'failures' or 'both'",
            ),
            (
                not self.sequential_fold > 1 or not self.sequential_false_alerts_per_day > 0,
                "sequential_fold: must be > 1; sequential_false_alerts_per_day: > 0",
            ),
            (
                self.cold_start_k < 0 or self.slot_prior_calls < 0,
                "cold_start_k/slot_prior_calls: must be >= 0",
            ),
            (
                not b <= self.history_floor <= self.min_history,
                "history_floor: must be between bucket and min_history",
            ),
            (not 0 < self.short_history_alpha <= 1, "short_history_alpha: must be in (0, 1]"),
            (
                not 0 <= self.stop_share < 1 or self.stop_buckets < 1,
                "stop_share/stop_buckets: need 0 <= share < 1 and buckets >= 1",
            ),
            (not 0 < self.forest_min_share <= 1, "forest_min_share: must be in (0, 1]"),
        ]

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict (durations as seconds)."""
        out = asdict(self)
        for k, v in out.items():
            if isinstance(v, timedelta):
                out[k] = v.total_seconds()
            elif isinstance(v, tuple):
                out[k] = list(v)
        return out

    def config_hash(self) -> str:
        """Hash of every knob that changes a fitted model (persisted in model metadata)."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]

    def volume_judged(self, is_fleet: np.ndarray) -> np.ndarray:
        """(P,) bool: the partitions whose volume is tested (``volume_scope``: the operations
        alone, or every partition)."""
        is_fleet = np.asarray(is_fleet, dtype=bool)
        return is_fleet.copy() if self.volume_scope == "fleet" else np.ones_like(is_fleet)

    @property
    def buckets_per_hour(self) -> int:
        """Buckets in one hour (at least 1): the looks an hour of a test re-run every bucket."""
        return max(int(timedelta(hours=1) / self.bucket), 1)

    def min_effect(self, metric: str) -> float:
        """The relative/absolute minimum effect used for severity scaling."""
        return {
            "duration": self.min_duration_rel,
            "failure_rate": self.min_failure_points,
            "volume": self.min_volume_drop,
        }[metric]


def volume_effect_ok(eff: np.ndarray, policy: DetectionPolicy) -> np.ndarray:
    """Volume effects (any shape) -> bool: large enough in the policy's direction(s)."""
    drop = eff <= -policy.min_volume_drop
    rise = eff >= policy.min_volume_rise
    if policy.volume_direction == "drop":
        return drop
    if policy.volume_direction == "rise":
        return rise
    return drop | rise
