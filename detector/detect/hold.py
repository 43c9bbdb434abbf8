"""Hold: an open alert ends on evidence that it is over, not on a lack of calls, a p-value
hovering around its corrected threshold, or a change of attribution nobody takes up.

A since-rollout test (a new build's failures, its tail) must be *current* to alert: its last
hours must deviate on their own (rollout.py). On a quiet night those hours hold too few calls
to say either way, and a true, continuing regression used to end its alert at dusk and open a
new one at dawn. A thin build's p-value also hovers around the corrected threshold for hours,
and each dip above it ended the alert. This stage runs after decide. Where a since-rollout
test passes every check, or every check but "current" with the calls since it last was
current too few to show it is over (``count_test``'s ``held``), and its own p-value is
nominally significant (:func:`~detector.detect.rollout.may_hold`), an alert that was open at
the bucket before stays open: the bucket becomes an anomaly with the test's evidence. The
correction for every partition and look searched is for opening an alert; an open one
follows a single hypothesis. A hold never opens an alert (as the lifecycle keeps a firing
alert's state through a window that was not evaluated). Where the test passes again after a
held stretch, the open alert goes on without decide's persistence (N of M hot buckets), which
is for opening one.

An operation's open alert likewise keeps its attribution (:func:`keep_attribution`): where
decide hands its bucket to one of its versions that deviates on its own but none of its
versions alerts, the operation's alert stays open.

Consumes the reason codes of decide, the since-rollout tests'
:class:`~detector.detect.rollout.Hold` candidates and, per partition, whether its alert was
open at the bucket before the window (the engine state); produces the codes with the held
and kept buckets set to ``anomaly``, and the tests' evidence at the held ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from detector.detect.decide import R_ANOM, R_MAINT, R_PERSIST, R_VERSION
from detector.detect.rollout import Hold

__all__ = ["hold_open", "keep_attribution"]


def hold_open(
    reasons: np.ndarray,
    holds: Sequence[Hold],
    open_before: np.ndarray,
    judged: np.ndarray,
) -> list[np.ndarray]:
    """Keep open alerts open through their tests' held buckets, in place (``reasons`` (P, M,
    K) and the evidence, through each hold's ``write``); returns each hold's held buckets,
    (L, K) bool.

    ``open_before`` (P,): the partition's alert was open at the bucket before the first
    judged one; ``judged`` (K,): the columns decided in this run (in time order).
    """
    out = []
    cols = np.flatnonzero(judged)
    for h in holds:
        out.append(np.zeros(h.cand.shape, bool))
        if not len(h.rows) or not len(cols):
            continue
        r = reasons[h.rows, h.metric]  # (L, K), a copy
        prev = open_before[h.rows].copy()
        held = out[-1]
        for j in cols:
            # An open alert needs no new persistence: its test passing again continues it.
            goes_on = prev & (r[:, j] == R_PERSIST) & h.passing[:, j]
            alert = (r[:, j] == R_ANOM) | goes_on
            held[:, j] = ~alert & prev & h.cand[:, j] & (r[:, j] != R_MAINT)
            r[:, j] = np.where(alert | held[:, j], R_ANOM, r[:, j])
            prev = alert | held[:, j]
        if held.any():
            h.write(held)
        reasons[h.rows, h.metric] = r
    return out


def keep_attribution(
    reasons: np.ndarray,
    op_index: np.ndarray,
    is_fleet: np.ndarray,
    open_before: np.ndarray,
    judged: np.ndarray,
) -> np.ndarray:
    """Keep an operation's open alert open where decide put its bucket on one of its versions
    (``explained_by_version``) but no version of it alerts on that metric there, in place;
    returns the (P, M, K) buckets kept.

    Decide lets a version deviating on its own explain its operation's deviation even before
    the version's own test alerts (a new build with a few dozen calls). For an alert already
    open that left a gap in the middle of one incident: the operation stopped alerting and
    nothing else started (a fleet-wide drift in which one busy version showed first).
    ``open_before`` and ``judged`` as in :func:`hold_open`.
    """
    P, M, K = reasons.shape
    kept = np.zeros(reasons.shape, bool)
    fleet = np.flatnonzero(is_fleet)
    if not len(fleet) or not K:
        return kept
    n_ops = int(op_index.max()) + 1
    versions = ~is_fleet.astype(bool)
    # (operations, M, K): some version of the operation alerts (version rows are final here).
    version_alert = np.zeros((n_ops, M, K), bool)
    np.logical_or.at(version_alert, op_index[versions], reasons[versions] == R_ANOM)
    taken = version_alert[op_index[fleet]]
    prev = np.broadcast_to(open_before[fleet][:, None], (len(fleet), M)).copy()
    for j in np.flatnonzero(judged):
        r = reasons[fleet, :, j]
        keep = prev & (r == R_VERSION) & ~taken[:, :, j]
        kept[fleet, :, j] = keep
        reasons[fleet, :, j] = np.where(keep, R_ANOM, r)
        prev = (r == R_ANOM) | keep
    return kept
