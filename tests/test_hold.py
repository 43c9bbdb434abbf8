"""Hold (detector/detect/hold.py): an open alert of a since-rollout test stays open through the
buckets where its calls are too few to tell whether the change is over; it never opens one."""

from __future__ import annotations

import numpy as np

from detector.detect.decide import R_ANOM, R_MAINT, R_NOTSIG, R_PERSIST, R_VERSION
from detector.detect.hold import hold_open, keep_attribution
from detector.detect.rollout import Hold, may_hold

P, M, K = 2, 3, 6  # partitions, metrics, buckets
ROW, METRIC = 1, 0  # the new build's partition, the metric its test judges


def _hold(cand: list[int], passing: list[int] | None = None) -> tuple[Hold, list[np.ndarray]]:
    """A hold of partition ROW whose candidates are the columns ``cand``; ``written`` collects
    the masks its evidence was written at."""
    c = np.zeros((1, K), bool)
    c[0, cand] = True
    ok = np.zeros((1, K), bool)
    ok[0, passing or []] = True
    written: list[np.ndarray] = []
    return Hold(np.array([ROW]), METRIC, c, ok, lambda mask: written.append(mask.copy())), written


def _reasons(codes: list[int]) -> np.ndarray:
    r = np.zeros((P, M, K), np.int8)
    r[ROW, METRIC] = codes
    return r


def _alerting(r: np.ndarray) -> list[int]:
    return np.flatnonzero(r[ROW, METRIC] == R_ANOM).tolist()


JUDGED = np.ones(K, bool)
NOT_OPEN = np.zeros(P, bool)


def test_an_open_alert_stays_open_through_its_held_buckets_and_ends_after() -> None:
    r = _reasons([R_ANOM, R_ANOM, R_NOTSIG, R_NOTSIG, R_NOTSIG, R_NOTSIG])
    h, written = _hold([2, 3, 5])
    assert hold_open(r, [h], NOT_OPEN, JUDGED)[0].sum() == 2
    # Held at 2 and 3; 4 is not a candidate (over, or a check failed): the alert ends there,
    # and 5 cannot reopen it.
    assert _alerting(r) == [0, 1, 2, 3]
    assert len(written) == 1 and np.flatnonzero(written[0][0]).tolist() == [2, 3]


def test_a_hold_never_opens_an_alert() -> None:
    r = _reasons([R_NOTSIG] * K)
    h, written = _hold(list(range(K)))
    assert not hold_open(r, [h], NOT_OPEN, JUDGED)[0].any()
    assert _alerting(r) == [] and not written


def test_an_alert_open_before_the_window_is_continued_from_the_engine_state() -> None:
    r = _reasons([R_NOTSIG] * K)
    h, _ = _hold([0, 1])
    is_open = np.zeros(P, bool)
    is_open[ROW] = True
    assert hold_open(r, [h], is_open, JUDGED)[0].sum() == 2
    assert _alerting(r) == [0, 1]


def test_look_back_buckets_are_left_as_decided() -> None:
    r = _reasons([R_ANOM, R_NOTSIG, R_NOTSIG, R_NOTSIG, R_NOTSIG, R_NOTSIG])
    h, _ = _hold([1, 2, 3])
    judged = np.array([False, False, True, True, True, True])
    # Column 0 alerted in the look-back, but only the state says what was open at the window.
    assert not hold_open(r, [h], NOT_OPEN, judged)[0].any()
    assert _alerting(r) == [0]


def test_a_maintenance_bucket_ends_the_hold() -> None:
    r = _reasons([R_ANOM, R_MAINT, R_NOTSIG, R_NOTSIG, R_NOTSIG, R_NOTSIG])
    h, _ = _hold([1, 2, 3])
    hold_open(r, [h], NOT_OPEN, JUDGED)
    assert _alerting(r) == [0]


def test_an_open_alert_needs_no_new_persistence() -> None:
    # Held at 1; at 2 the test passes again but decide's N of M saw no hot bucket before it.
    r = _reasons([R_ANOM, R_NOTSIG, R_PERSIST, R_PERSIST, R_NOTSIG, R_NOTSIG])
    h, _ = _hold([1], passing=[2, 3])
    hold_open(r, [h], NOT_OPEN, JUDGED)
    assert _alerting(r) == [0, 1, 2, 3]
    # Without an open alert, not persistent stays not persistent.
    r = _reasons([R_NOTSIG, R_NOTSIG, R_PERSIST, R_PERSIST, R_NOTSIG, R_NOTSIG])
    hold_open(r, [h], NOT_OPEN, JUDGED)
    assert _alerting(r) == []


def test_an_open_alert_follows_its_own_p_value_not_the_corrected_threshold() -> None:
    t = {
        "passes": np.array([[True, True, False, True]]),
        "held": np.array([[False, False, True, False]]),
        "p": np.array([[1e-7, 5e-3, 5e-3, 0.05]]),
    }
    # Passing at a p the corrected threshold refuses (5e-3) goes on; held goes on; a p above
    # alpha itself (0.05) ends it.
    assert may_hold(t, 0.01).tolist() == [[True, True, True, False]]


def _attr_reasons(fleet: list[int], version: list[int]) -> np.ndarray:
    """Partition 0 the operation's fleet, 1 one of its versions; metric 0."""
    r = np.zeros((P, M, K), np.int8)
    r[0, 0], r[1, 0] = fleet, version
    return r


OPS = np.array([0, 0])
IS_FLEET = np.array([True, False])


def test_an_open_operation_alert_keeps_its_attribution_until_a_version_alerts() -> None:
    none = [0] * K
    r = _attr_reasons([R_ANOM, R_VERSION, R_VERSION, R_VERSION, R_VERSION, R_VERSION], none)
    r[1, 0, 4:] = R_ANOM  # the version's own alert starts at 4: the operation's ends there
    kept = keep_attribution(r, OPS, IS_FLEET, NOT_OPEN, JUDGED)
    assert np.flatnonzero(r[0, 0] == R_ANOM).tolist() == [0, 1, 2, 3]
    assert np.flatnonzero(kept[0, 0]).tolist() == [1, 2, 3]


def test_attribution_is_kept_only_for_an_open_alert() -> None:
    r = _attr_reasons([R_NOTSIG, R_VERSION, R_VERSION, R_ANOM, R_NOTSIG, R_VERSION], [0] * K)
    keep_attribution(r, OPS, IS_FLEET, NOT_OPEN, JUDGED)
    # Not open before 1; open at 3, ended at 4 (not significant): 5 is the version's.
    assert np.flatnonzero(r[0, 0] == R_ANOM).tolist() == [3]
    r = _attr_reasons([R_VERSION] * K, [0] * K)
    is_open = np.array([True, False])
    keep_attribution(r, OPS, IS_FLEET, is_open, JUDGED)  # open per the engine state
    assert np.flatnonzero(r[0, 0] == R_ANOM).tolist() == list(range(K))
