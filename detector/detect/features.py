"""Features: how far each (partition, bucket) is from its baseline, already scaled by sample size.

Consumes the bucket stats (with fleet rows), the :class:`~detector.detect.baseline.Partitions` and
:class:`~detector.detect.baseline.Baselines`; produces

* :func:`bucket_features`: one vector per (partition, bucket) for the isolation forest,
  :data:`FEATURE_NAMES`:

  ``dur_z``        (sum ln d - n mu) / sqrt(phi n var): the log-duration z of the bucket;
  ``p95_log_ratio`` ln(p95 / baseline p95) under a log-normal fit of the bucket;
  ``fail_z``       (failures - n p0) / sqrt(phi n p0 (1 - p0)): binomial excess failures;
  ``vol_z``        (calls - expected) / sqrt(phi expected): volume change (negative = drop);
  ``peer_dur_z``   the version's log-duration excess minus that of the *other* versions of the
                   same operation in the same bucket (0 for the fleet): new-version regression;
  ``peer_fail_z``  the same for failure-rate excess.

* :func:`span_evidence`: the statistical evidence of every (partition, metric, bucket) over the
  trailing spans of ``policy.spans`` buckets: best one-sided p-value (Bonferroni over the spans),
  practical effect, sample size, a leave-strongest-bucket-out check and the peer test. This is
  what :func:`detector.detect.decide.decide` gates.

Everything is vectorised over (partition, bucket) arrays; pure, no I/O.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, Final, NamedTuple

import numpy as np
import pandas as pd
from scipy import special
from scipy.ndimage import maximum_filter1d, minimum_filter1d

from detector.detect.baseline import Baselines, Partitions, epoch_ns, slot_of
from detector.detect.policy import METRIC_NAMES, DetectionPolicy, Metric, volume_effect_ok

__all__ = [
    "FEATURE_NAMES",
    "Blocking",
    "Cube",
    "Sequential",
    "SpanEvidence",
    "apply_sequential",
    "bucket_features",
    "build_cube",
    "sequential_details",
    "span_evidence",
    "true_runs",
]

FEATURE_NAMES: tuple[str, ...] = (
    "dur_z",
    "p95_log_ratio",
    "fail_z",
    "vol_z",
    "peer_dur_z",
    "peer_fail_z",
)
#: Which metric each feature speaks for (to route a forest flag to a metric).
FEATURE_METRIC: tuple[int, ...] = (0, 0, 1, 2, 0, 1)
_Z95 = 1.6448536269514722
_CLIP = 50.0


@dataclass
class Cube:
    """Dense (P, T) sums per partition and bucket; ``times`` are the bucket starts (UTC)."""

    times: pd.DatetimeIndex
    calls: np.ndarray
    failures: np.ndarray
    dur_n: np.ndarray
    s1: np.ndarray
    s2: np.ndarray
    failed_calls: np.ndarray  # distinct calls behind the failures
    excluded: np.ndarray | None = None  # (P, T) buckets zeroed out (maintenance)

    @property
    def slots(self) -> np.ndarray:
        return slot_of(self.times)

    def rows(self, sl: slice) -> Cube:
        """The partitions ``sl`` (views)."""
        return Cube(
            self.times,
            self.calls[sl],
            self.failures[sl],
            self.dur_n[sl],
            self.s1[sl],
            self.s2[sl],
            self.failed_calls[sl],
            None if self.excluded is None else self.excluded[sl],
        )

    def tail(self, k: int) -> Cube:
        """The last ``k`` buckets (views, not copies)."""
        return Cube(
            self.times[-k:],
            self.calls[:, -k:],
            self.failures[:, -k:],
            self.dur_n[:, -k:],
            self.s1[:, -k:],
            self.s2[:, -k:],
            self.failed_calls[:, -k:],
            None if self.excluded is None else self.excluded[:, -k:],
        )

    def exclude(self, mask: np.ndarray) -> None:
        """Zero the buckets of ``mask`` (P, T) so no span's evidence includes them."""
        if not mask.any():
            return
        for a in (self.calls, self.failures, self.dur_n, self.s1, self.s2, self.failed_calls):
            a[mask] = 0.0
        self.excluded = mask if self.excluded is None else (self.excluded | mask)


def build_cube(
    stats: pd.DataFrame,
    parts: Partitions,
    *,
    start: datetime,
    end: datetime,
    bucket: pd.Timedelta,
) -> Cube:
    """Pivot the stats rows in ``[start, end)`` into dense (P, T) arrays (missing = 0 calls).

    ``stats`` as :func:`~detector.detect.baseline.with_fleet` returns them (``failed_calls`` filled).
    """
    start_ts = (
        pd.Timestamp(start).tz_convert("UTC")
        if pd.Timestamp(start).tzinfo
        else pd.Timestamp(start, tz="UTC")
    )
    end_ts = (
        pd.Timestamp(end).tz_convert("UTC")
        if pd.Timestamp(end).tzinfo
        else pd.Timestamp(end, tz="UTC")
    )
    times = pd.date_range(start_ts, end_ts, freq=bucket, inclusive="left")
    P, T = len(parts), len(times)
    # Column by column through one row mask: a copy of the selected rows (every column at
    # once) was the peak of a 10k-partition run.
    ts = epoch_ns(stats["bucket_start"])
    step = int(pd.Timedelta(bucket).value)
    t0 = int(start_ts.value)
    tid = (ts - t0) // step
    ok = (tid >= 0) & (tid < T)
    pid = parts.index_of(stats)
    ok &= pid >= 0
    flat = pid[ok].astype(np.int64) * T + tid[ok]
    del ts, tid, pid
    arrays = []
    for col in ("calls", "failures", "dur_n", "log_dur_sum", "log_dur_sumsq", "failed_calls"):
        w = stats[col].to_numpy()[ok].astype(np.float64, copy=False)
        arrays.append(np.bincount(flat, weights=w, minlength=P * T).reshape(P, T))
    return Cube(times, *arrays)


#: The rest of the traffic that scales an operation's expected calls (expected_calls): the
#: trailing buckets that expect this many calls of it (the pseudo-count of 5 then moves the
#: ratio by under a tenth of its deviation), at most RATIO_WINDOW of them.
RATIO_MIN_CALLS: Final = 50.0
RATIO_WINDOW: Final = timedelta(minutes=30)


def _buckets_in(span: timedelta, times: pd.DatetimeIndex) -> int:
    """Buckets of ``times`` (evenly spaced) in ``span``, at least 1."""
    if len(times) < 2:
        return 1
    return max(1, round(span / (times[1] - times[0]).to_pytimedelta()))


def _window_sums(cum: np.ndarray, w: int) -> np.ndarray:
    """From row-wise cumulative sums: the sums over the last ``w`` columns up to each one
    (fewer at the start)."""
    out = cum.copy()
    out[:, w:] -= cum[:, :-w]
    return out


def _trailing_sum(x: np.ndarray, w: int) -> np.ndarray:
    """Sum of ``x`` over its last ``w`` columns up to each one (fewer at the start)."""
    return x if w <= 1 else _window_sums(np.cumsum(x, axis=1), w)


def _trailing_until(
    obs: np.ndarray, exp: np.ndarray, min_exp: float, w_max: int
) -> tuple[np.ndarray, np.ndarray]:
    """``obs`` and ``exp`` summed over the fewest trailing columns (1 to ``w_max``) whose
    ``exp`` reaches ``min_exp`` (``w_max`` where none does)."""
    obs_w, exp_w = obs, exp
    need = exp < min_exp
    if w_max <= 1 or not need.any():
        return obs_w, exp_w
    # One cumulative sum each, whatever the number of window lengths tried.
    c_obs, c_exp = np.cumsum(obs, axis=1), np.cumsum(exp, axis=1)
    for w in range(2, w_max + 1):
        obs_w = np.where(need, _window_sums(c_obs, w), obs_w)
        exp_w = np.where(need, _window_sums(c_exp, w), exp_w)
        need &= exp_w < min_exp
        if not need.any():
            break
    return obs_w, exp_w


def expected_calls(base: Baselines, slots: np.ndarray, cube: Cube, parts: Partitions) -> np.ndarray:
    """Expected calls per (partition, bucket), scaled by how the *rest* of the traffic moves.

    The hour-of-day profile says what an operation usually gets at this hour; the rest of the
    traffic (every other operation's fleet) says whether this is a quieter or busier day than
    usual (a weekend, a holiday, a legitimate surge). Scaling by the rest's observed/expected
    ratio keeps those out of volume alerts, so a volume anomaly means *this operation* lost (or
    gained) traffic relative to everything else. A drop of all operations together is therefore
    not an operation's volume anomaly (the job's self-health checks see a global drop).

    The two views must agree: the value returned is the observed calls clipped to the band
    between the plain hour-of-day expectation and the scaled one, so a bucket deviates only by
    what lies outside both. When a surge of new calls ends, the operations that start a call
    return to normal at once while the rest of the traffic (hang-ups, views) still carries the
    surge for a while: scaled alone, Join would look like a drop against the surge level.
    """
    e = base.exp_calls[:, slots]
    if cube.excluded is not None:
        e = np.where(cube.excluded, 0.0, e)
    fleet = parts.is_fleet
    if fleet.sum() < 2:
        return e
    obs_total = cube.calls[fleet].sum(axis=0)
    exp_total = e[fleet].sum(axis=0)
    own_obs = cube.calls[parts.fleet_of]
    own_exp = e[parts.fleet_of]
    rest_obs = obs_total[None, :] - own_obs
    rest_exp = exp_total[None, :] - own_exp
    # The ratio over as many trailing buckets (this one included) as it takes to expect
    # RATIO_MIN_CALLS of the rest of the traffic, at most RATIO_WINDOW: on a small tenant the
    # rest is a few calls a bucket at night, and the pseudo-count below then held each
    # bucket's ratio near 1 (a night at a third of the day's traffic read ~0.5; on a fixture
    # tenant of five operations at 36 calls an hour, every operation's night looked like a
    # volume drop on 8 of 9 seeds). Only as long as needed: a window lags a tenant-wide change
    # (at 1,000 calls an hour, a 30-minute one turned every weekend's start into drops).
    rest_obs, rest_exp = _trailing_until(
        rest_obs, rest_exp, RATIO_MIN_CALLS, _buckets_in(RATIO_WINDOW, cube.times)
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        # Smoothed ratio: a pseudo-count of 5 expected calls keeps the quietest buckets stable
        # without pulling a quiet night's ratio towards 1 (with 20, a weekend night at a third
        # of the weekday traffic read as 0.6 and the operations looked like volume drops).
        ratio = (rest_obs + 5.0) / (rest_exp + 5.0)
    scaled = e * np.clip(np.nan_to_num(ratio, nan=1.0), 0.2, 5.0)
    res: np.ndarray = np.clip(cube.calls, np.minimum(e, scaled), np.maximum(e, scaled))
    return res


def _version_sums(x: np.ndarray, parts: Partitions) -> np.ndarray:
    """Per operation (rows in ``parts.operations`` order): the sum of ``x`` over its versions."""
    versions = ~parts.is_fleet
    # Partitions are sorted by operation, so each operation is a contiguous block of rows.
    starts = np.flatnonzero(np.r_[True, parts.op_index[1:] != parts.op_index[:-1]])
    return np.add.reduceat(
        np.where(versions.reshape(-1, *([1] * (x.ndim - 1))), x, 0.0), starts, axis=0
    )


def _peer_z_duration(
    cd: np.ndarray,
    d: np.ndarray,
    cd_o: np.ndarray,
    d_o: np.ndarray,
    vdu: np.ndarray,
    phi: np.ndarray,
) -> np.ndarray:
    """z of a version's mean log-duration shift against its siblings' in the same buckets.

    ``cd``/``d``: the version's summed log-duration excess over its baseline and its durations;
    ``cd_o``/``d_o``: the same summed over the other versions; ``vdu``: summed per-operation
    variance (baseline). NaN or inf where a side has no durations.
    """
    res: np.ndarray = (cd / d - cd_o / d_o) / np.sqrt(
        np.where(d > 0, vdu / d, 1.0) * phi * (1 / d + 1 / d_o)
    )
    return res


def _peer_z_failure(
    cf: np.ndarray,
    n: np.ndarray,
    cf_o: np.ndarray,
    n_o: np.ndarray,
    pbar: np.ndarray,
    phi: np.ndarray,
) -> np.ndarray:
    """z of a version's failure-rate excess against its siblings' in the same buckets.

    ``cf``/``n``: the version's failures over expected and its calls; ``cf_o``/``n_o``: the
    same summed over the other versions; ``pbar``: the version's expected rate.
    """
    res: np.ndarray = (cf / n - cf_o / n_o) / np.sqrt(pbar * (1 - pbar) * phi * (1 / n + 1 / n_o))
    return res


def _others(x: np.ndarray, parts: Partitions) -> np.ndarray:
    """For every version row: the sum of ``x`` over the *other* versions of its operation."""
    out = _version_sums(x, parts)[parts.op_index] - x
    out[parts.is_fleet] = 0.0
    res: np.ndarray = out
    return res


def _op_blocks(parts: Partitions, chunk: int) -> list[slice]:
    """Row blocks of whole operations of about ``chunk`` rows (peers need the whole operation)."""
    starts = np.flatnonzero(np.r_[True, parts.op_index[1:] != parts.op_index[:-1]])
    bounds = [0]
    for s in starts[1:]:
        if s - bounds[-1] >= chunk:
            bounds.append(int(s))
    bounds.append(len(parts))
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def bucket_features(
    cube: Cube, parts: Partitions, base: Baselines, *, chunk: int = 1000
) -> np.ndarray:
    """The forest's feature vectors, shape (P, T, len(FEATURE_NAMES)); 0 where there is no data.

    Computed in blocks of whole operations (``chunk`` rows): a dozen (P, T) float64
    temporaries at once cost ~0.5 GB at 10k partitions. Results do not depend on ``chunk``.
    """
    slots = cube.slots
    e_all = expected_calls(base, slots, cube, parts)  # needs every operation (rest of traffic)
    out = np.zeros((*cube.calls.shape, len(FEATURE_NAMES)), dtype=np.float32)
    for sl in _op_blocks(parts, chunk):
        _features_block(cube.rows(sl), parts.take(sl), base.take(sl), e_all[sl], slots, out[sl])
    out[..., 4:][parts.is_fleet] = 0.0
    np.nan_to_num(out, copy=False, nan=0.0, posinf=_CLIP, neginf=-_CLIP)
    np.clip(out, -_CLIP, _CLIP, out=out)
    return out


def _features_block(
    cube: Cube,
    parts: Partitions,
    base: Baselines,
    e: np.ndarray,
    slots: np.ndarray,
    out: np.ndarray,
) -> None:
    """Fill ``out`` (a view of the block's rows) with :func:`bucket_features`' vectors."""
    mu, var, p0 = base.mu_log[:, slots], base.var_log[:, slots], base.fail_rate[:, slots]
    phi_d = base.phi_dur[:, None]
    phi_f = base.phi_fail[:, None]
    phi_v = base.phi_vol[:, None]
    C, F, D, S1, S2 = cube.calls, cube.failures, cube.dur_n, cube.s1, cube.s2
    with np.errstate(invalid="ignore", divide="ignore"):
        cd = S1 - D * mu
        vd = D * var * phi_d
        out[..., 0] = np.where(D > 0, cd / np.sqrt(vd), 0.0)
        m = S1 / D
        sd_b = np.sqrt(np.maximum(S2 / D - m**2, 0.0))
        lr = (m + _Z95 * sd_b) - (mu + _Z95 * np.sqrt(var))
        out[..., 1] = np.where(D >= 5, lr, 0.0)
        ef = C * p0
        vf = ef * (1 - p0) * phi_f
        out[..., 2] = np.where(C > 0, (F - ef) / np.sqrt(vf), 0.0)
        out[..., 3] = np.where(e > 0, (C - e) / np.sqrt(e * phi_v + 1.0), 0.0)
        # Peers: this version's excess vs the other versions' excess in the same bucket.
        cd0, d0 = np.where(D > 0, cd, 0.0), D
        so, do = _others(cd0, parts), _others(d0, parts)
        z = (cd0 / d0 - so / do) / np.sqrt(var * phi_d * (1 / d0 + 1 / do))
        out[..., 4] = np.where((d0 > 0) & (do > 0), z, 0.0)
        xf = F - ef
        fo, co = _others(xf, parts), _others(C, parts)
        pp = p0
        z = (xf / C - fo / co) / np.sqrt(pp * (1 - pp) * phi_f * (1 / C + 1 / co))
        out[..., 5] = np.where((C > 0) & (co > 0), z, 0.0)


@dataclass(kw_only=True)
class SpanEvidence:
    """What the tests measured: arrays of shape ``(P, M, T)``, partitions x metrics
    (:data:`METRIC_NAMES`) x buckets; :class:`detector.detect.decide.Evidence` extends it with
    the context decide needs.

    ``p`` is the best one-sided p-value over the trailing spans (already multiplied by the
    number of spans); ``effect`` the practical effect at that span (relative for duration and
    volume, absolute points for failure rate); ``effect_ms`` the absolute p95 shift (duration
    only, else NaN); ``n`` the calls behind the test (expected calls for volume); ``k`` the
    failures (failure rate only); ``loo_ok`` whether the evidence survives dropping its strongest
    bucket; ``peer_sig`` whether a version differs significantly from the other versions of its
    operation (duration, failure rate); ``shared`` whether the other versions of the operation
    deviate as well (or there are none), i.e. the deviation is operation-wide rather than one
    version's.
    """

    p: np.ndarray
    effect: np.ndarray
    effect_ms: np.ndarray
    n: np.ndarray
    k: np.ndarray
    loo_ok: np.ndarray
    peer_sig: np.ndarray
    shared: np.ndarray
    span: np.ndarray  # best span length (buckets): the attribution window
    observed: np.ndarray  # metric value over the best span (geo-mean ms / rate / calls per bucket)
    expected: np.ndarray  # its baseline counterpart
    z: np.ndarray  # signed z at the best span
    share: np.ndarray  # the version's share of its operation's calls over the span (1 for fleet)
    #: (P, M, K) where the sequential test's evidence stands (see apply_sequential); None
    #: before it ran
    sequential: np.ndarray | None = None

    def test_fields(self) -> dict[str, Any]:
        """This record (or one extending it) -> its test fields by name, the arrays themselves."""
        return {f.name: getattr(self, f.name) for f in fields(SpanEvidence)}


_EVIDENCE_FIELDS = tuple(f for f in SpanEvidence.__dataclass_fields__ if f != "sequential")


def _roll_extreme(x: np.ndarray, s: int, fn: str) -> np.ndarray:
    """Trailing max (or min) over ``s`` buckets; shorter at the start (van Herk, O(n))."""
    if s <= 1:
        return x.copy()
    filt = maximum_filter1d if fn == "max" else minimum_filter1d
    cval = -np.inf if fn == "max" else np.inf
    return filt(x, size=s, axis=1, mode="constant", cval=cval, origin=(s - 1) // 2)


class _Cells:
    """One span's sums at a set of cells (every ``(P, K)`` cell, or ``rows``/``cols`` of some),
    and the per-metric evidence fields computed there with the same formulas either way."""

    def __init__(
        self,
        r: dict[str, np.ndarray],
        parts: Partitions,
        cells: dict[str, np.ndarray],
        per_row: dict[str, np.ndarray],
        rows: np.ndarray | None = None,
        cols: np.ndarray | None = None,
        groups: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.r, self.parts, self.cells, self.per_row = r, parts, cells, per_row
        self.rows, self.cols = rows, cols
        # Per-operation sums over versions, shared by every sparse view of the same span.
        self.groups: dict[str, np.ndarray] = {} if groups is None else groups

    @classmethod
    def everywhere(
        cls,
        r: dict[str, np.ndarray],
        parts: Partitions,
        *,
        zd: np.ndarray,
        pbar: np.ndarray,
        infl: np.ndarray,
        p95_base: np.ndarray,
        phi_d: np.ndarray,
        phi_f: np.ndarray,
    ) -> _Cells:
        """Every cell; ``zd`` .. ``p95_base`` are ``(P, K)``, ``phi_d``/``phi_f`` ``(P, 1)``."""
        cells = dict(zd=zd, pbar=pbar, infl=infl, p95_base=p95_base)
        per_row = dict(phi_d=phi_d, phi_f=phi_f, versions=(~parts.is_fleet)[:, None])
        return cls(r, parts, cells, per_row)

    def at(self, rows: np.ndarray, cols: np.ndarray) -> _Cells:
        return _Cells(self.r, self.parts, self.cells, self.per_row, rows, cols, self.groups)

    def v(self, a: np.ndarray) -> np.ndarray:
        """A ``(P, K)`` array at the cells."""
        return a if self.rows is None else a[self.rows, self.cols]

    def row(self, name: str) -> np.ndarray:
        """A per-partition ``(P, 1)`` array at the cells' partitions."""
        a = self.per_row[name]
        return a if self.rows is None else a[self.rows, 0]

    def fleet(self, a: np.ndarray) -> np.ndarray:
        """``a`` of each cell's fleet partition."""
        fo = self.parts.fleet_of
        return a[fo] if self.rows is None else a[fo[self.rows], self.cols]

    def others(self, name: str) -> np.ndarray:
        """Sum of ``r[name]`` over the *other* versions of each cell's operation (0 on fleets)."""
        x = self.r[name]
        if self.rows is None:
            return _others(x, self.parts)
        if name not in self.groups:
            self.groups[name] = _version_sums(x, self.parts)
        out = self.groups[name][self.parts.op_index[self.rows], self.cols] - x[self.rows, self.cols]
        out[self.parts.is_fleet[self.rows]] = 0.0
        res: np.ndarray = out
        return res

    def fields(self, m: int, s: int, policy: DetectionPolicy) -> dict[str, Any]:
        """Evidence fields of metric ``m`` for span ``s`` at the cells, plus two gates:
        ``passes`` (practical effect and volume) and ``share_ok`` (the version's share)."""
        r, a, v = self.r, self.cells, self.v
        versions = self.row("versions")
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            calls = v(r["C"])
            share = np.where(versions, calls / np.maximum(self.fleet(r["C"]), 1.0), 1.0)
            out: dict[str, Any]
            if m == Metric.DURATION:
                dn, cd, vdu = v(r["D"]), v(r["cd"]), v(r["vdu"])
                shift = np.where(dn > 0, cd / dn, 0.0)
                eff = np.expm1(shift)
                p95 = v(a["p95_base"])
                eff_ms = p95 * eff
                so, do, vo = self.others("cd"), self.others("D"), self.others("vd")
                shared = (vo <= 0) | (so / np.sqrt(vo) >= policy.shared_z)
                pz = _peer_z_duration(cd, dn, so, do, vdu, self.row("phi_d"))
                out = dict(
                    effect=eff,
                    effect_ms=eff_ms,
                    n=dn,
                    k=0.0,
                    peer_sig=versions & (dn > 0) & (do > 0) & (pz >= policy.peer_z),
                    shared=shared,
                    observed=p95 * np.exp(shift),
                    expected=p95,
                    z=v(a["zd"]),
                    passes=(eff >= policy.min_duration_rel)
                    & (eff_ms >= policy.min_duration_ms)
                    & (dn >= policy.min_calls),
                )
            elif m == Metric.FAILURE_RATE:
                k_, cf, vf = v(r["F"]), v(r["cf"]), v(r["vf"])
                pbar, infl = v(a["pbar"]), v(a["infl"])
                eff = np.where(calls > 0, k_ / calls - pbar, 0.0)
                xo, co, vfo = self.others("cf"), self.others("C"), self.others("vf")
                pz = _peer_z_failure(cf, calls, xo, co, pbar, self.row("phi_f"))
                out = dict(
                    effect=eff,
                    effect_ms=np.nan,
                    n=calls,
                    k=k_,
                    peer_sig=versions & (calls > 0) & (co > 0) & (pz >= policy.peer_z),
                    shared=(vfo <= 0) | (xo / np.sqrt(vfo) >= policy.shared_z),
                    observed=np.where(calls > 0, k_ / calls, np.nan),
                    expected=pbar,
                    z=np.where(vf > 0, cf / np.sqrt(vf * infl), 0.0),
                    passes=(eff >= policy.min_failure_points)
                    & (calls >= policy.min_calls)
                    & (k_ >= policy.min_failures),
                )
            else:
                ee, vv, cv = v(r["e"]), v(r["vv"]), v(r["cv"])
                eff = np.where(ee > 0, calls / ee - 1.0, 0.0)
                out = dict(
                    effect=eff,
                    effect_ms=np.nan,
                    n=ee,
                    k=0.0,
                    peer_sig=False,
                    shared=True,
                    observed=calls / s,
                    expected=ee / s,
                    z=np.where(vv > 0, cv / np.sqrt(vv), 0.0),
                    passes=volume_effect_ok(eff, policy) & (ee >= policy.min_expected_calls),
                )
        out["share"] = share
        out["share_ok"] = share >= policy.min_share
        return out


@dataclass(frozen=True)
class Blocking:
    """How :func:`span_evidence` splits its work (results do not depend on it): blocks of
    whole operations of about ``chunk`` rows, ``threads`` of them at once (None: one per
    core, at most 4)."""

    chunk: int = 250
    threads: int | None = None


def span_evidence(  # noqa: PLR0913 (four keyword-only options)
    cube: Cube,
    parts: Partitions,
    base: Baselines,
    policy: DetectionPolicy,
    *,
    last: int | None = None,
    blocking: Blocking = Blocking(),
    keep: np.ndarray | None = None,
    first: np.ndarray | None = None,
    expected: np.ndarray | None = None,
) -> SpanEvidence:
    """Test every (partition, metric, bucket) over the trailing spans; keep the best span.

    The best span is the one with the smallest p-value among those that also pass the
    practical-effect, volume and leave-one-out checks (if none does, the smallest p-value).
    Its p-value is multiplied by the number of spans tried (Bonferroni).

    ``last``: evidence only for the last ``last`` buckets of the cube (the earlier ones are
    look-back that feeds the trailing spans); the arrays then have ``last`` columns.
    ``blocking``: partitions are processed in blocks of whole operations of about
    ``blocking.chunk`` rows, which bounds the temporaries (memory) on large runs, and
    ``blocking.threads`` blocks in parallel; results do not depend on it.
    ``keep``: ``(P, M, last)`` cells whose fields are needed whatever their p-value (the
    engine passes its forest flags and maintenance buckets). Elsewhere only ``p`` and ``span``
    are always filled; the other fields are exact wherever the best span is nominally
    significant (``p <= policy.alpha``), which is every cell a gate downstream looks at, and
    may be left at "nothing found" in the others. None: every cell is kept (slower).
    ``first``: ``(P,)`` column of the cube where each partition's first call is (negative:
    before the cube; None: every partition is older than the cube). An earlier third of a
    provisional version's span that reaches back before its first call is skipped where it
    holds too few calls to judge (see ``sub_checks``). ``expected``: the cube's
    :func:`expected_calls` when the caller has them (None: computed here).
    """
    slots = cube.slots
    # Needs every operation (the rest of the traffic), not only a block's.
    e_all = expected_calls(base, slots, cube, parts) if expected is None else expected
    P = len(parts)
    # One output allocated up front, filled block by block through views: concatenating
    # per-block pieces held the (P, M, K) evidence twice (~0.8 GiB at 10k partitions).
    T = cube.calls.shape[1]
    K = T if last is None else max(min(last, T), 1)
    full = _empty_evidence((P, len(METRIC_NAMES), K))

    def block(sl: slice) -> None:
        view = SpanEvidence(**{name: getattr(full, name)[sl] for name in _EVIDENCE_FIELDS})
        blk = _Block(
            cube.rows(sl),
            parts.take(sl),
            base.take(sl),
            e_all[sl],
            None if first is None else first[sl],
        )
        _span_evidence(
            blk, policy, slots, view, np.ones(view.p.shape, bool) if keep is None else keep[sl]
        )

    chunk, threads = blocking.chunk, blocking.threads
    blocks = _op_blocks(parts, chunk)
    # Blocks are independent and write disjoint rows of `full`; NumPy and SciPy's ufuncs
    # release the GIL, so a second thread uses the second core (the result does not depend
    # on the number of threads or on the block size).
    workers = min(threads if threads is not None else (os.cpu_count() or 1), len(blocks), 4)
    if workers <= 1:
        for sl in blocks:
            block(sl)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(block, blocks))
    return full


def _empty_evidence(shape: tuple[int, int, int]) -> SpanEvidence:
    """Evidence arrays of ``shape`` (P, M, K) holding "nothing found" (p = 1, no effect)."""
    return SpanEvidence(
        p=np.ones(shape, np.float64),
        effect=np.zeros(shape, np.float32),
        effect_ms=np.zeros(shape, np.float32),
        n=np.zeros(shape, np.float32),
        k=np.zeros(shape, np.float32),
        loo_ok=np.zeros(shape, bool),
        peer_sig=np.zeros(shape, bool),
        shared=np.ones(shape, bool),
        span=np.ones(shape, np.int16),
        observed=np.full(shape, np.nan, np.float32),
        expected=np.full(shape, np.nan, np.float32),
        z=np.zeros(shape, np.float32),
        share=np.ones(shape, np.float32),
    )


def _before_first_call(
    thin: np.ndarray, first: np.ndarray | None, rows: np.ndarray, at: np.ndarray, s: int
) -> np.ndarray:
    """At cells ``(rows, at)`` (``at``: cube columns), whether the span of ``s`` buckets
    ending there belongs to a provisional (``thin``) version and reaches back before its
    first call (``first``: cube column per row; None: every row is older than the cube)."""
    if first is None:
        return np.zeros(len(rows), bool)
    res: np.ndarray = thin[rows] & (at - first[rows] + 1 < s)
    return res


def shortest_supported(
    windows: list[int], test: Callable[[int], tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """Whether the shortest window (of ``windows``, ascending) with enough support deviates.

    ``test(w)`` returns ``(deviates, supported)`` for the trailing window of ``w`` buckets;
    where no window is supported the result is False.
    """
    res: np.ndarray | None = None
    for w in reversed(windows):  # longest first; a shorter window with support overrides
        ok, supported = test(w)
        res = np.where(supported, ok, False if res is None else res)
    assert res is not None
    return res


class _Block(NamedTuple):
    """One block of partitions: its cube rows, partitions, baselines, expected calls ``(P, T)``
    and first-call columns (see :func:`span_evidence`)."""

    cube: Cube
    parts: Partitions
    base: Baselines
    e: np.ndarray
    first: np.ndarray | None


@dataclass
class _Prior:
    """Per-partition constants of one block's baselines: ``(P, 1)`` dispersions, certainty of
    the baseline level and its wander, and which rows are provisional or volume-judged."""

    phi_d: np.ndarray
    phi_f: np.ndarray
    phi_v: np.ndarray
    phi_g: np.ndarray  # failing calls' dispersion
    phi_s: np.ndarray  # failures over a span of whole calls (Baselines.fail_dispersion)
    n_eff_d: np.ndarray  # calls behind the baseline level (inf: known exactly)
    n_eff_f: np.ndarray
    tau2_d: np.ndarray  # hour-to-hour wander of the true level (baseline._between_hours)
    tau2_f: np.ndarray
    thin: np.ndarray  # (P,) provisional versions (never a fleet row)
    thin_rows: np.ndarray
    vol_rows: np.ndarray  # (P, 1) where volume is judged

    @classmethod
    def of(cls, base: Baselines, parts: Partitions, policy: DetectionPolicy) -> _Prior:
        """The constants of ``base`` for the rows of ``parts``."""
        P = len(base.phi_dur)
        # Calls behind each baseline level (no estimate: as if known exactly).
        n_eff_d = base.n_eff_dur if base.n_eff_dur is not None else np.full(P, np.inf)
        n_eff_f = base.n_eff_fail if base.n_eff_fail is not None else np.full(P, np.inf)
        thin = ~parts.is_fleet & np.asarray(base.provisional, dtype=bool)
        return cls(
            phi_d=base.phi_dur[:, None],
            phi_f=base.phi_fail[:, None],
            phi_v=base.phi_vol[:, None],
            phi_g=(base.phi_fcall if base.phi_fcall is not None else base.phi_fail)[:, None],
            # Failures come in calls: over a span holding whole calls the count varies
            # `cluster` times as much as a binomial one (the bucket-level phi_f sees calls cut
            # in pieces). (A thin version's failures still face the failing-calls test.)
            phi_s=base.fail_dispersion()[:, None],
            n_eff_d=np.maximum(n_eff_d, 1.0)[:, None],
            n_eff_f=np.maximum(n_eff_f, 1.0)[:, None],
            # Over a span of h hours the level's mean wanders 1/h as much (the hours are taken
            # as independent).
            tau2_d=base.tau2_dur[:, None],
            tau2_f=base.tau2_fail[:, None],
            thin=thin,
            thin_rows=np.flatnonzero(thin),
            vol_rows=policy.volume_judged(parts.is_fleet)[:, None],
        )


@dataclass
class _Sums:
    """Cumulative sums ``(P, T + 1 + Z)`` of per-bucket terms, read as trailing-window sums
    ending at each of the last ``K`` buckets of the cube."""

    sums: dict[str, np.ndarray]  # rolled into every span (roll)
    call_sums: dict[str, np.ndarray]  # failing calls: read at some cells only (roll_at)
    T: int
    K: int
    Z: int  # leading zero columns

    @classmethod
    def build(
        cls,
        terms: dict[str, np.ndarray],
        call_terms: dict[str, np.ndarray],
        K: int,
        spans: tuple[int, ...],
    ) -> _Sums:
        """Cumulative sums of ``(P, T)`` ``terms`` and ``call_terms``, judged on the last ``K``."""
        P, T = terms["C"].shape
        # Z leading zero columns, so every trailing window is two slices (a window reaches at
        # most max(spans) + 2 buckets behind the first judged one).
        Z = max(1, max(spans) + 3 - (T - K))

        def cs(x: np.ndarray) -> np.ndarray:
            out = np.zeros((P, T + 1 + Z), dtype=np.float64)
            np.cumsum(x, axis=1, out=out[:, Z + 1 :])
            return out

        call_sums = {name: cs(x) for name, x in call_terms.items()}
        return cls({name: cs(x) for name, x in terms.items()}, call_sums, T, K, Z)

    def roll(self, name: str, s: int, offset: int = 0) -> np.ndarray:
        """Sums over buckets ``t-offset-s+1 .. t-offset`` (zeros before the cube start)."""
        c = self.sums[name]
        hi = self.Z + self.T - self.K + 1 - offset
        res: np.ndarray = c[:, hi : hi + self.K] - c[:, hi - s : hi - s + self.K]
        return res

    def roll_at(
        self, name: str, w: int, offset: int, rows: np.ndarray, cols: np.ndarray
    ) -> np.ndarray:
        """:meth:`roll` at the cells ``(rows, cols)`` only."""
        c = self.sums[name] if name in self.sums else self.call_sums[name]
        hi = self.Z + self.T - self.K + 1 - offset
        res: np.ndarray = c[rows, hi + cols] - c[rows, hi - w + cols]
        return res

    def extreme(self, x: np.ndarray, s: int, fn: str) -> np.ndarray:
        """Trailing max (or min) of ``(P, T)`` ``x`` over ``s`` buckets at the last ``K``."""
        T, K = self.T, self.K
        return _roll_extreme(x[:, max(T - K - s + 1, 0) :], s, fn)[:, -K:]

    def extreme_at(
        self, x: np.ndarray, w: int, fn: str, rows: np.ndarray, cols: np.ndarray
    ) -> np.ndarray:
        """:meth:`extreme` at the cells ``(rows, cols)`` only."""
        uniq, inv = np.unique(rows, return_inverse=True)
        res: np.ndarray = self.extreme(x[uniq], w, fn)[inv, cols]
        return res


@dataclass
class _Tested:
    """What one block's spans are tested with: its constants, sums and per-bucket deviations
    ``(P, T)`` (for the leave-one-out extremes)."""

    parts: Partitions
    policy: DetectionPolicy
    prior: _Prior
    sums: _Sums
    p95_base: np.ndarray  # (P, K) baseline p95 duration (ms)
    cd: np.ndarray  # log-duration excess per bucket
    cf: np.ndarray  # failures over expected per bucket
    cv: np.ndarray  # calls over expected per bucket
    first: np.ndarray | None  # cube column of each row's first call (None: older than the cube)

    def others_at_thin(self, x: np.ndarray) -> np.ndarray:
        """:func:`_others` at the thin rows only."""
        parts, thin_rows = self.parts, self.prior.thin_rows
        res: np.ndarray = _version_sums(x, parts)[parts.op_index[thin_rows]] - x[thin_rows]
        return res


def _tested(blk: _Block, policy: DetectionPolicy, slots: np.ndarray, K: int) -> _Tested:
    """The per-bucket terms of ``blk`` against its baselines, summed for the spans."""
    cube, base, e = blk.cube, blk.base, blk.e
    P, T = cube.calls.shape
    prior = _Prior.of(base, blk.parts, policy)
    mu, var, p0 = base.mu_log[:, slots], base.var_log[:, slots], base.fail_rate[:, slots]
    C, F, D, S1 = cube.calls, cube.failures, cube.dur_n, cube.s1
    # Failing calls (several legs of one bad call fail together): their expected count per
    # operation is the failure rate times the baseline's failing calls per failure.
    ratio = base.call_ratio if base.call_ratio is not None else np.ones(P)
    eg = C * (p0 * ratio[:, None])
    p95_base = np.exp(mu + _Z95 * np.sqrt(var))
    cd = S1 - D * mu
    vd = D * var * prior.phi_d
    ef = C * p0
    cf = F - ef
    vf = ef * (1 - p0) * prior.phi_f
    cv = C - e
    vv = e * prior.phi_v
    terms = dict(D=D, cd=cd, vd=vd, C=C, F=F, ef=ef, cf=cf, vf=vf, e=e, cv=cv, vv=vv, vdu=D * var)
    # Failing calls: read only where the failures' own test is promising (roll_at).
    sums = _Sums.build(terms, {"G": cube.failed_calls, "eg": eg}, K, policy.spans)
    return _Tested(blk.parts, policy, prior, sums, p95_base[:, T - K : T], cd, cf, cv, blk.first)


class _Check(NamedTuple):
    """One sub-window check of a span: it passes where its shortest window with enough calls
    deviates by ``zmin``, by ``frac`` of the whole span's effect and by the practical minimum
    (for volume: ``share`` of it)."""

    off: int  # buckets between the window's end and the span's end
    zmin: float
    windows: list[int]  # candidate window lengths, ascending
    frac: float
    share: float


def _span_checks(s: int, policy: DetectionPolicy) -> list[_Check]:
    """The sub-window checks of a span of ``s`` buckets: its thirds and its latest window."""
    # Consistency: every third of a span must deviate by the practical minimum (no z of its
    # own: docs/decisions.md, "fewer rules, a second pass"), so a long span is not carried by an old short
    # incident plus a little recent noise.
    h = -(-s // 3)
    thirds = (0, h, 2 * h) if s >= 3 else (0,)
    # Plus the latest window at latest_z: the evidence has to be current, not an incident
    # that ended hours ago still filling a long span. The window is the last latest_span
    # buckets, doubled while it has too few calls to judge (a version with 6 calls an
    # hour is judged on its last 2-4 hours), never longer than the last third.
    latest = []
    w = min(h, policy.latest_span)
    while w < h:
        latest.append(w)
        w *= 2
    latest.append(h)
    # The thirds have one window each. frac on the latest window: an incident over, plus a
    # small blip in the last hour, is not a current deviation of the incident's size. share:
    # a third of a volume span needs third_volume_share of the minimum change, the latest
    # window all of it (as the span).
    checks = [_Check(off, 0.0, [h], 0.0, policy.third_volume_share) for off in thirds]
    checks.append(_Check(0, policy.latest_z, latest, policy.latest_share, 1.0))
    return checks


def _duration_p(t: _Tested, r: dict[str, np.ndarray], s: int) -> tuple[np.ndarray, np.ndarray]:
    """Duration z and p-value ``(P, K)`` of every cell from the span's sums ``r``."""
    pr, policy = t.prior, t.policy
    # One-sided (slower) normal test on the mean log-duration. The baseline level is an
    # estimate from n_eff calls: its variance (var / n_eff per call, D^2 var / n_eff over the
    # span) adds to the sampling variance. A version with 40 calls of history no longer reads
    # +25 % on 100 calls as p = 1e-7.
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        hours = policy.buckets_per_hour / max(s, policy.buckets_per_hour)
        wander = r["D"] ** 2 * pr.tau2_d * hours
        if len(thin_rows := pr.thin_rows):
            # A thin version slower than its siblings in the very same buckets: see the
            # failure rate. (Computed on the thin rows only: ~1 in 5 at 10k.)
            pz = _peer_z_duration(
                r["cd"][thin_rows],
                r["D"][thin_rows],
                t.others_at_thin(r["cd"]),
                t.others_at_thin(r["D"]),
                r["vdu"][thin_rows],
                pr.phi_d[thin_rows],
            )
            wander[thin_rows] = np.where(pz >= policy.peer_z, 0.0, wander[thin_rows])
            del pz
        vd_tot = r["vd"] + r["D"] * r["vdu"] / pr.n_eff_d + wander
        del wander
        zd = np.where(vd_tot > 0, r["cd"] / np.sqrt(vd_tot), 0.0)
        # Calibrated: the normal approximation understates its tails (DetectionPolicy).
        pd_ = np.fmin(special.ndtr(-zd) * policy.duration_p_factor, 1.0)
    return zd, pd_


def _failure_p(
    t: _Tested, r: dict[str, np.ndarray], s: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Failure-rate ``pbar`` (expected rate), ``infl`` (variance inflation) and p-value
    ``(P, K)`` of every cell from the span's sums ``r``."""
    pr, policy = t.prior, t.policy
    # One-sided binomial, counts deflated by the overdispersion.
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        n_, k_ = r["C"], r["F"]
        pbar = np.where(n_ > 0, r["ef"] / n_, 0.0)
        # Baseline-rate uncertainty as extra dispersion of this span (see duration).
        # The level's wander between hours too (n^2 tau2 / hours spanned) ...
        hours = policy.buckets_per_hour / max(s, policy.buckets_per_hour)
        wander = n_**2 * pr.tau2_f * hours
        if len(thin_rows := pr.thin_rows):
            # ... except for a thin version failing more than its siblings in the very
            # same buckets: its hypothesis is "behaves like its siblings", and a
            # comparison at the same time does not see the level's wander.
            pz = _peer_z_failure(
                r["cf"][thin_rows],
                n_[thin_rows],
                t.others_at_thin(r["cf"]),
                t.others_at_thin(n_),
                pbar[thin_rows],
                pr.phi_f[thin_rows],
            )
            wander[thin_rows] = np.where(pz >= policy.peer_z, 0.0, wander[thin_rows])
            del pz
        # Variance over the binomial one: dispersion (phi_s, with the clusters), plus the
        # baseline level's and the wander's (``infl`` relative to the rolled ``vf``, which
        # holds phi_f).
        vb = r["vf"] / pr.phi_f
        extra = np.where(vb > 0, (n_ * r["ef"] * (1 - pbar) / pr.n_eff_f + wander), 0.0)
        extra /= np.maximum(vb, 1e-12)
        infl = (pr.phi_s + extra) / pr.phi_f
        infl_g = 1.0 + extra / pr.phi_f  # failing calls: the bucket-level dispersion only
        del wander, vb, extra
        kk, nn = k_ / (pr.phi_f * infl), n_ / (pr.phi_f * infl)
        # Exact (overdispersed) binomial tail only where the normal z is at all promising:
        # the special function dominates the run time on large inputs.
        zf0 = (k_ - n_ * pbar) / np.sqrt(
            np.maximum(n_ * pbar * (1 - pbar) * pr.phi_f * infl, 1e-12)
        )
        pf = np.ones_like(zf0)
        cand = (kk > 0) & (nn > 0) & (zf0 >= 1.5)
        pf[cand] = special.betainc(
            np.maximum(kk[cand], 1e-9), np.maximum((nn - kk + 1)[cand], 1e-9), pbar[cand]
        )
        del kk, nn, zf0
        # Only where the operations' test is nominally significant: elsewhere max(pf, pg) is
        # not significant either, and pf stands (a lower bound; it only ranks spans that
        # fail anyway).
        cand &= pf * len(policy.spans) <= policy.alpha
        pf[cand] = np.maximum(pf[cand], _failing_calls_p(t, s, n_, cand, infl_g))
    return pbar, infl, pf


def _failing_calls_p(
    t: _Tested, s: int, n_: np.ndarray, cand: np.ndarray, infl_g: np.ndarray
) -> np.ndarray:
    """The failure test on the distinct calls behind the failures, at the ``cand`` cells.

    A deviation must be significant in calls too, so one bad call failing 30 CreateViews is
    one failing call, not 30 independent failures.
    """
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        rows_c, cols_c = np.nonzero(cand)
        g_, n_c = t.sums.roll_at("G", s, 0, rows_c, cols_c), n_[cand]
        deflate = t.prior.phi_g[rows_c, 0] * infl_g[cand]
        ng, kg = n_c / deflate, g_ / deflate
        eg_c = t.sums.roll_at("eg", s, 0, rows_c, cols_c)
        qbar = np.where(n_c > 0, eg_c / np.maximum(n_c, 1e-12), 0.0)
        pg: np.ndarray = np.ones_like(kg)
        hit = (kg > 0) & (qbar > 0)
        pg[hit] = special.betainc(
            np.maximum(kg[hit], 1e-9), np.maximum((ng - kg + 1)[hit], 1e-9), qbar[hit]
        )
    return pg


def _volume_p(t: _Tested, r: dict[str, np.ndarray]) -> np.ndarray:
    """Volume p-value ``(P, K)`` of every cell from the span's sums ``r``: two-sided Poisson,
    deflated by the overdispersion."""
    phi_v = t.prior.phi_v
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        n_, ee = r["C"], r["e"]
        cc, e2 = n_ / phi_v, ee / phi_v
        zv0 = (n_ - ee) / np.sqrt(np.maximum(ee * phi_v, 1e-12))
        pv: np.ndarray = np.ones_like(zv0)
        # Only where volume is judged (the operations alone by default): a version's volume
        # is never a candidate then, and its tail functions were most of this test's time.
        low = (ee > 0) & (zv0 <= -1.5) & t.prior.vol_rows
        high = (ee > 0) & (zv0 >= 1.5) & (cc > 0) & t.prior.vol_rows
        pv[low] = special.gammaincc(cc[low] + 1, e2[low])  # P(X <= c)
        pv[high] = special.gammainc(cc[high], e2[high])  # P(X >= c)
        pv = np.minimum(1.0, 2 * pv)
    return pv


class _Span(NamedTuple):
    """One span length under test: its sums ``r`` ``(P, K)``, checks and cells."""

    s: int
    r: dict[str, np.ndarray]
    checks: list[_Check]
    cells: _Cells  # every cell


class _Best(NamedTuple):
    """The best span so far per cell ``(P, M, K)``: its evidence and ranking key."""

    ev: SpanEvidence
    key: np.ndarray


class _Fields(NamedTuple):
    """One metric's ranking key ``(P, K)`` and its fields at the cells ``(rows, cols)``."""

    key: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    f: dict[str, Any]


def _test_span(t: _Tested, s: int, keep: np.ndarray, best: _Best) -> None:
    """Test every cell over the trailing span of ``s`` buckets; update ``best`` where it wins."""
    r = {k: t.sums.roll(k, s) for k in t.sums.sums}
    # ---- p-values of every cell (they rank the spans); every other field is only computed
    # where it can matter (see _metric_fields).
    zd, pd_ = _duration_p(t, r, s)
    pbar, infl, pf = _failure_p(t, r, s)
    pv = _volume_p(t, r)
    pr = t.prior
    full_cells = _Cells.everywhere(
        r, t.parts, zd=zd, pbar=pbar, infl=infl, p95_base=t.p95_base, phi_d=pr.phi_d, phi_f=pr.phi_f
    )
    span = _Span(s, r, _span_checks(s, t.policy), full_cells)
    for m, p_raw in enumerate((pd_, pf, pv)):
        p_m = np.fmin(p_raw * len(t.policy.spans), 1.0)  # (fmin: a NaN p, nothing to test, 1)
        tested = _metric_fields(t, span, m, p_m, keep[:, m])
        _keep_better(best, m, s, p_m, tested)


def _metric_fields(t: _Tested, span: _Span, m: int, p_m: np.ndarray, keep: np.ndarray) -> _Fields:
    """Metric ``m``'s ranking key over span ``span`` (Bonferroni p ``p_m``; +10 where a gate
    fails) and its fields where they can matter."""
    policy, s = t.policy, span.s
    # The fields of a cell matter only where its best span is nominally significant (every
    # gate downstream starts from p <= alpha) or where the caller asks for them (`keep`:
    # forest flags and maintenance, reported as candidates whatever their p). A span beats an
    # earlier one in a cell only when it is significant there or the earlier one was not
    # either, so copying fields at those cells alone leaves every significant cell exactly as
    # computing them everywhere would, for ~1/20 the work.
    cells = p_m <= policy.alpha
    cells |= keep
    if s == 1:
        # A single bucket has no leave-one-out: a practically large one-bucket span ranks
        # before a longer span that fails its checks, significant or not, so its gates are
        # needed in every cell.
        f_all = span.cells.fields(m, s, policy)
        ok_all = f_all.pop("passes") & f_all.pop("share_ok")
        key = np.where(ok_all, p_m, p_m + 10.0)
    else:
        key = p_m + 10.0
    rows, cols = np.nonzero(cells)
    f: dict[str, Any] = {}
    if len(rows):
        if s == 1:
            f = {name: v[rows, cols] if np.ndim(v) else v for name, v in f_all.items()}
            f["loo_ok"] = True
            ok = ok_all[rows, cols]
        else:
            f = span.cells.at(rows, cols).fields(m, s, policy)
            ok = f.pop("passes") & f.pop("share_ok")
            # Leave-one-out and sub-window checks where they can change a decision:
            # significant, practically large, enough calls and share.
            need = ok & (p_m[rows, cols] <= policy.alpha)
            loo = np.zeros(len(rows), bool)
            if need.any():
                loo[need] = _sub_checks(t, span, m, rows[need], cols[need])
            ok &= loo
            f["loo_ok"] = loo
        key[rows, cols] = np.where(ok, p_m[rows, cols], p_m[rows, cols] + 10.0)
    return _Fields(key, rows, cols, f)


def _keep_better(best: _Best, m: int, s: int, p_m: np.ndarray, tested: _Fields) -> None:
    """Where ``tested`` (metric ``m``, span ``s``) ranks before ``best``, it becomes the best."""
    key, rows, cols = tested.key, tested.rows, tested.cols
    better = key < best.key[:, m]
    np.copyto(best.key[:, m], key, where=better)
    np.copyto(best.ev.p[:, m], p_m, where=better)
    np.copyto(best.ev.span[:, m], s, where=better, casting="unsafe")
    if len(rows):
        b = better[rows, cols]
        br, bc = rows[b], cols[b]
        for name, val in tested.f.items():
            getattr(best.ev, name)[br, m, bc] = val[b] if np.ndim(val) else val


class _At(NamedTuple):
    """One span's sums at some cells ``(rows, cols)``: over the span and over sub-windows."""

    sums: _Sums
    r: dict[str, np.ndarray]
    rows: np.ndarray
    cols: np.ndarray

    def at(self, name: str) -> np.ndarray:
        """``name`` summed over the whole span."""
        res: np.ndarray = self.r[name][self.rows, self.cols]
        return res

    def sub(self, name: str, w: int, off: int) -> np.ndarray:
        """``name`` summed over the ``w`` buckets ending ``off`` before the span's end."""
        return self.sums.roll_at(name, w, off, self.rows, self.cols)

    def extreme(self, x: np.ndarray, w: int, fn: str) -> np.ndarray:
        """The max (or min) bucket of ``(P, T)`` ``x`` within the last ``w``."""
        return self.sums.extreme_at(x, w, fn, self.rows, self.cols)


def _sub_checks(t: _Tested, span: _Span, m: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Leave-one-out and sub-window consistency of ``span``, metric ``m``, at some cells.

    The evidence must survive dropping its strongest bucket (z >= loo_z), every third of
    the span must deviate (practical effect, some support) and the latest window
    at latest_z (the evidence is current). Failure and volume counts are continuity
    corrected (+-0.5): with a handful of calls, one failure against 0.2 expected is z = 2
    by the normal approximation but an exact tail of 0.18, and kept an incident's tail
    alerting at night.
    """
    at = _At(t.sums, span.r, rows, cols)
    if m < Metric.VOLUME:
        return _rate_sub_checks(t, span, m, at)
    return _volume_sub_checks(t, span, at)


def _rate_sub_checks(t: _Tested, span: _Span, m: int, c: _At) -> np.ndarray:
    """:func:`_sub_checks` of duration (continuous) or failures (counts, continuity-corrected)."""
    policy, s = t.policy, span.s
    with np.errstate(invalid="ignore", divide="ignore"):
        num, var, cnt, x = (
            ("cd", "vd", "D", t.cd) if m == Metric.DURATION else ("cf", "vf", "C", t.cf)
        )
        cc = 0.0 if m == Metric.DURATION else 0.5
        ok = (c.at(num) - c.extreme(x, s, "max") - cc) / np.sqrt(c.at(var)) >= policy.loo_z
        span_shift = c.at(num) / c.at(cnt)  # mean log-shift / failure-rate excess
        # A new build's span reaching back before its first call: an earlier third
        # with too few calls to judge (its rollout, its ramp-up) is no evidence either
        # way, and is skipped; one with enough calls must deviate as always (a build
        # that was fine for hours before an incident that is over stays blocked).
        new = _before_first_call(t.prior.thin, t.first, c.rows, t.sums.T - t.sums.K + c.cols, s)
        for off, zmin, windows, frac, _ in span.checks:

            def dev(
                w: int, off: int = off, zmin: float = zmin, frac: float = frac
            ) -> tuple[np.ndarray, np.ndarray]:
                rc, rv, rn = c.sub(num, w, off), c.sub(var, w, off), c.sub(cnt, w, off)
                big = (
                    np.expm1(rc / rn) >= policy.min_duration_rel
                    if m == Metric.DURATION
                    else rc / rn >= policy.min_failure_points
                )
                big &= rc / rn >= frac * span_shift
                ok = ((rc - cc) / np.sqrt(rv) >= zmin) & big
                return ok, rn >= policy.min_calls * policy.third_support

            if off > 0:  # an earlier third (one window; the last has offset 0)
                dv, sup = dev(windows[0])
                ok &= np.where(sup, dv, new)
            else:
                ok &= shortest_supported(windows, dev)
        res: np.ndarray = ok
        return res


def _volume_sub_checks(t: _Tested, span: _Span, c: _At) -> np.ndarray:
    """:func:`_sub_checks` of volume: a drop or a rise, as the whole span's change."""
    policy, s, cv = t.policy, span.s, t.cv
    with np.errstate(invalid="ignore", divide="ignore"):
        sv = np.sqrt(c.at("vv"))
        drop = (c.at("cv") - c.extreme(cv, s, "min") + 0.5) / sv <= -policy.loo_z
        rise = (c.at("cv") - c.extreme(cv, s, "max") - 0.5) / sv >= policy.loo_z
        span_rel = c.at("cv") / c.at("e")  # relative volume change over the span
        for off, zmin, windows, frac, share in span.checks:
            drop_min, rise_min = share * policy.min_volume_drop, share * policy.min_volume_rise

            def vol_drop(
                w: int,
                off: int = off,
                zmin: float = zmin,
                frac: float = frac,
                lim: float = drop_min,
            ) -> tuple[np.ndarray, np.ndarray]:
                rcv, re_ = c.sub("cv", w, off), c.sub("e", w, off)
                dev = (rcv + 0.5) / np.sqrt(c.sub("vv", w, off)) <= -zmin
                dev &= rcv / re_ <= np.minimum(-lim, frac * span_rel)
                return dev, re_ >= policy.min_expected_calls * policy.third_support

            def vol_rise(
                w: int,
                off: int = off,
                zmin: float = zmin,
                frac: float = frac,
                lim: float = rise_min,
            ) -> tuple[np.ndarray, np.ndarray]:
                rcv, re_ = c.sub("cv", w, off), c.sub("e", w, off)
                dev = (rcv - 0.5) / np.sqrt(c.sub("vv", w, off)) >= zmin
                dev &= rcv / re_ >= np.maximum(lim, frac * span_rel)
                return dev, np.ones_like(dev)

            drop &= shortest_supported(windows, vol_drop)
            rise &= shortest_supported(windows, vol_rise)
        vol: np.ndarray = np.where(c.at("cv") < 0, drop, rise)
        return vol


def _span_evidence(
    blk: _Block,
    policy: DetectionPolicy,
    slots: np.ndarray,
    out: SpanEvidence,
    keep: np.ndarray,
) -> SpanEvidence:
    """Fill ``out`` ``(P, M, K)`` with the best span's evidence of each cell of ``blk``
    (``keep``: cells whose fields are needed whatever their p; see :func:`span_evidence`)."""
    K = out.p.shape[2]
    t = _tested(blk, policy, slots, K)
    best = _Best(out, np.full(out.p.shape, np.inf))
    for s in sorted(set(policy.spans)):
        _test_span(t, s, keep, best)
    return out


# --------------------------------------------------------------------------------------------
# Sequential evidence: a windowed CUSUM per partition (failures rising, volume falling)
# --------------------------------------------------------------------------------------------

_BUCKETS_PER_DAY_H: Final = 24.0


@dataclass
class Sequential:
    """What :func:`apply_sequential` found, for the ``K`` judged columns of the evidence.

    ``stat`` (P, M, K): the windowed CUSUM, a log-likelihood ratio (0 where not tested);
    ``threshold`` (P, M): its alarm level (inf where not tested); ``used`` (P, M, K): where
    its evidence replaced the trailing spans' in the :class:`SpanEvidence`.
    """

    stat: np.ndarray
    threshold: np.ndarray
    used: np.ndarray


def failure_llr(
    calls: np.ndarray,
    failures: np.ndarray,
    failed_calls: np.ndarray,
    base: Baselines,
    slots: np.ndarray,
    policy: DetectionPolicy,
) -> np.ndarray:
    """Per-bucket log-likelihood ratio (P, T) of "failure rate risen ``sequential_fold``-fold"
    against the baseline rate, the smaller of the failures' and the distinct failing calls'.

    The rate tuned to is at least ``min_failure_points`` above the baseline (a rise smaller
    than that is never alerted). Counts are deflated by their overdispersion (quasi-likelihood),
    so clustered failures (legs of one bad call) count as the independent evidence they are.
    """
    p0 = null_failure_rate(base, slots)
    ratio = base.call_ratio if base.call_ratio is not None else np.ones(len(p0))
    phi_g = base.phi_fcall if base.phi_fcall is not None else base.phi_fail
    q0 = np.clip(p0 * ratio[:, None], 1e-6, 0.5)
    out = _binomial_llr(calls, failures, p0, base.fail_dispersion()[:, None], policy)
    calls_llr = _binomial_llr(calls, failed_calls, q0, phi_g[:, None], policy)
    np.minimum(out, calls_llr, out=out)
    return out


#: z of the baseline failure rate's upper bound the sequential test is run against.
_NULL_Z: Final = 2.0


def null_failure_rate(base: Baselines, slots: np.ndarray) -> np.ndarray:
    """The failure rate (P, len(slots)) the sequential test holds as "no change": the
    baseline's upper bound (``_NULL_Z`` standard errors of its own estimate, from its n_eff
    calls, and of its hour-to-hour wander). The baseline rate is itself an estimate (a thin
    version's is mostly borrowed from its operation): a likelihood ratio against it alone
    accumulated a version's ordinary difference from its siblings into alarms."""
    p0 = np.clip(base.fail_rate[:, slots], 1e-6, 0.5)
    n_eff = base.n_eff_fail if base.n_eff_fail is not None else np.full(len(p0), np.inf)
    var = p0 * (1 - p0) / np.maximum(n_eff, 1.0)[:, None] + base.tau2_fail[:, None]
    res: np.ndarray = np.clip(p0 + _NULL_Z * np.sqrt(var), 1e-6, 0.5)
    return res


def _binomial_llr(
    n: np.ndarray, k: np.ndarray, p0: np.ndarray, phi: np.ndarray, policy: DetectionPolicy
) -> np.ndarray:
    """Bernoulli log-likelihood ratio of ``k`` in ``n`` at rate p1 against ``p0``, over ``phi``."""
    p1 = np.minimum(np.maximum(policy.sequential_fold * p0, p0 + policy.min_failure_points), 0.99)
    k = np.minimum(k, n)
    llr: np.ndarray = k * np.log(p1 / p0) + (n - k) * np.log1p(-p1) - (n - k) * np.log1p(-p0)
    llr /= np.maximum(phi, 1.0)
    return llr


def volume_llr(
    calls: np.ndarray, expected: np.ndarray, phi_v: np.ndarray, fold: float
) -> np.ndarray:
    """Per-bucket Poisson log-likelihood ratio (P, T) of "volume fallen ``fold``-fold" against
    the ``expected`` calls, deflated by the overdispersion ``phi_v`` (P,)."""
    r = 1.0 / fold
    llr: np.ndarray = (calls * np.log(r) + expected * (1.0 - r)) / np.maximum(phi_v, 1.0)[:, None]
    return llr


def windowed_cusum(llr: np.ndarray, w: int, k: int) -> np.ndarray:
    """The CUSUM of ``llr`` (P, T) at its last ``k`` columns, over windows of at most ``w``.

    S_t = max(0, the largest sum of llr over the buckets t-L+1..t, L <= w). Windows of a fixed
    reach make it a function of the last ``w`` buckets alone, so a rerun over any steps judges
    a bucket exactly as the scheduled run did (no state carried between runs).
    """
    P, T = llr.shape
    c = np.zeros((P, T + 1))
    np.cumsum(llr, axis=1, out=c[:, 1:])
    low = _roll_extreme(c, w + 1, "min")  # min of c over indices t+1-w .. t+1
    stat: np.ndarray = (c - low)[:, 1:][:, T - k :]
    return stat


def sequential_thresholds(
    looks_per_day: np.ndarray, n_seq: int, policy: DetectionPolicy
) -> np.ndarray:
    """Alarm level per test: ln(n_seq x looks per day / sequential_false_alerts_per_day).

    A CUSUM is a chain of one-sided SPRTs, each started by an observation that raises it
    from 0; with exact likelihood ratios each reaches h with probability at most e^-h
    (Ville's inequality), so its false alarms a day are at most e^-h x such observations a
    day (``looks_per_day``, see :func:`_looks_per_day`). The tenant's budget is split
    evenly over its ``n_seq`` tests, so the tenant raises at most
    ``sequential_false_alerts_per_day`` false alarms a day from this test (simulated from
    baseline rates, the bound holds within sampling noise and is nearly tight for thin
    partitions).
    """
    per_test = policy.sequential_false_alerts_per_day / max(n_seq, 1)
    h: np.ndarray = np.log(np.maximum(looks_per_day, 1e-9) / per_test)
    res: np.ndarray = np.maximum(h, 1.0)
    return res


def _gather(x: np.ndarray, rows: np.ndarray, t: np.ndarray, w: int) -> np.ndarray:
    """``x[rows, t-w+1 .. t]`` as (n, w) (columns before the cube read 0)."""
    idx = t[:, None] - np.arange(w - 1, -1, -1)[None, :]
    out: np.ndarray = np.where(idx >= 0, x[rows[:, None], np.clip(idx, 0, None)], 0.0)
    return out


def _best_window(llr_w: np.ndarray) -> np.ndarray:
    """(n, w) trailing llr (last column = the judged bucket) -> the length of the shortest
    trailing window with the largest sum."""
    suffix = np.cumsum(llr_w[:, ::-1], axis=1)
    out: np.ndarray = np.argmax(suffix, axis=1) + 1
    return out


def _in_window(lengths: np.ndarray, w: int) -> np.ndarray:
    """(n, w) mask of the last ``lengths`` columns of each row."""
    out: np.ndarray = np.arange(w)[None, :] >= (w - lengths)[:, None]
    return out


class _Windows:
    """The best CUSUM window of a set of cells and masked sums over it.

    ``rows``/``t``: the cells' partitions and cube columns; ``llr`` (P, T) the test's
    increments; ``w`` the longest window. :meth:`sum` and :meth:`extreme` read any (P, T)
    array over each cell's own window.
    """

    def __init__(self, llr: np.ndarray, rows: np.ndarray, t: np.ndarray, w: int) -> None:
        self.rows, self.t, self.w = rows, t, w
        lg = _gather(llr, rows, t, w)
        self.length = _best_window(lg)
        self.mask = _in_window(self.length, w)

    def sum(self, x: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Sum of ``x`` over each window (of partition ``rows`` if given: e.g. the fleet's)."""
        g = _gather(x, self.rows if rows is None else rows, self.t, self.w)
        out: np.ndarray = (g * self.mask).sum(axis=1)
        return out

    def extreme(self, x: np.ndarray, fn: str) -> np.ndarray:
        """The largest (``max``) or smallest (``min``) bucket value of ``x`` in each window."""
        g = _gather(x, self.rows, self.t, self.w)
        fill = -np.inf if fn == "max" else np.inf
        g = np.where(self.mask, g, fill)
        out: np.ndarray = g.max(axis=1) if fn == "max" else g.min(axis=1)
        return out

    def recent_sum(self, x: np.ndarray, recent: np.ndarray) -> np.ndarray:
        """Sum of ``x`` over the last ``recent`` (per cell) buckets of each window."""
        g = _gather(x, self.rows, self.t, self.w)
        last = np.arange(self.w)[None, :] >= self.w - np.minimum(self.length, recent)[:, None]
        out: np.ndarray = (g * last).sum(axis=1)
        return out


def _latest(win: _Windows, support: np.ndarray, need: float, policy: DetectionPolicy) -> np.ndarray:
    """Buckets of each window's latest part: the last ``latest_span``, doubled while it holds
    less than ``need`` of ``support`` (calls, or expected calls), never past the window's
    last third (as the trailing spans' latest window)."""
    third = np.maximum(-(-win.length // 3), 1)
    recent: np.ndarray = np.minimum(np.full(len(win.length), max(policy.latest_span, 1)), third)
    while True:
        short = (win.recent_sum(support, recent) < need) & (recent < third)
        if not short.any():
            return recent
        recent = np.where(short, np.minimum(2 * recent, third), recent)


def _failures_current(
    win: _Windows,
    C: np.ndarray,
    F: np.ndarray,
    ef: np.ndarray,
    excess: np.ndarray,
    policy: DetectionPolicy,
) -> np.ndarray:
    """The failures are current: the latest part of each window (see :func:`_latest`) fails
    in excess by at least ``latest_share`` of the whole window's ``excess`` (an incident that
    ended stops alerting, however much evidence its window still holds)."""
    recent = _latest(win, C, policy.min_calls * policy.third_support, policy)
    n, k, e = (win.recent_sum(x, recent) for x in (C, F, ef))
    with np.errstate(invalid="ignore", divide="ignore"):
        out: np.ndarray = (n > 0) & ((k - e) / n >= policy.latest_share * excess)
    return out


def _volume_current(
    win: _Windows, calls: np.ndarray, e: np.ndarray, drop: np.ndarray, policy: DetectionPolicy
) -> np.ndarray:
    """The drop is current: the latest part of each window (as for failures) is down by at
    least ``latest_share`` of the whole window's relative ``drop`` (negative)."""
    recent = _latest(win, e, policy.min_expected_calls * policy.third_support, policy)
    c, ee = win.recent_sum(calls, recent), win.recent_sum(e, recent)
    with np.errstate(invalid="ignore", divide="ignore"):
        out: np.ndarray = (ee > 0) & (c / ee - 1.0 <= policy.latest_share * drop)
    return out


def _failure_fields(
    win: _Windows,
    cube: Cube,
    parts: Partitions,
    p0: np.ndarray,
    phi: np.ndarray,
    policy: DetectionPolicy,
) -> dict[str, np.ndarray]:
    """Evidence fields of the failure CUSUM at ``win``'s cells, and ``passes`` (its gates:
    practical effect, calls, failures, share, leave-one-out, current)."""
    C, F = cube.calls, cube.failures
    ef, vf = C * p0, C * p0 * (1 - p0) * phi
    rows = win.rows
    versions = ~parts.is_fleet[rows]
    with np.errstate(invalid="ignore", divide="ignore"):
        n, k, e, v = win.sum(C), win.sum(F), win.sum(ef), win.sum(vf)
        pbar = np.where(n > 0, e / n, 0.0)
        cf = k - e
        loo = (cf - win.extreme(F - ef, "max") - 0.5) / np.sqrt(v) >= policy.loo_z
        fleet_n = win.sum(C, parts.fleet_of[rows])
        share = np.where(versions, n / np.maximum(fleet_n, 1.0), 1.0)
        cf_o, n_o = win.sum(_others(F - ef, parts)), win.sum(_others(C, parts))
        v_o = win.sum(_others(vf, parts))
        pz = _peer_z_failure(cf, n, cf_o, n_o, pbar, phi[rows, 0])
        effect = np.where(n > 0, k / n - pbar, 0.0)
        passes = (effect >= policy.min_failure_points) & (n >= policy.min_calls)
        passes &= (k >= policy.min_failures) & (share >= policy.min_share) & loo
        passes &= _failures_current(win, C, F, ef, effect, policy)
        return dict(
            effect=effect,
            n=n,
            k=k,
            peer_sig=versions & (n > 0) & (n_o > 0) & (pz >= policy.peer_z),
            shared=(v_o <= 0) | (cf_o / np.sqrt(v_o) >= policy.shared_z),
            observed=np.where(n > 0, k / n, np.nan),
            expected=pbar,
            z=np.where(v > 0, cf / np.sqrt(v), 0.0),
            share=share,
            passes=passes,
        )


def _volume_fields(
    win: _Windows, calls: np.ndarray, e: np.ndarray, phi_v: np.ndarray, policy: DetectionPolicy
) -> dict[str, np.ndarray]:
    """Evidence fields of the volume CUSUM at ``win``'s cells, and ``passes`` (practical drop,
    expected calls, leave-one-out, current)."""
    cv, vv = calls - e, e * np.maximum(phi_v, 1.0)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        c, ee, v = win.sum(calls), win.sum(e), win.sum(vv)
        effect = np.where(ee > 0, c / ee - 1.0, 0.0)
        loo = (c - ee - win.extreme(cv, "min") + 0.5) / np.sqrt(v) <= -policy.loo_z
        passes = volume_effect_ok(effect, policy) & (ee >= policy.min_expected_calls) & loo
        passes &= _volume_current(win, calls, e, effect, policy)
        length = win.length.astype(np.float64)
        return dict(
            effect=effect,
            n=ee,
            k=np.zeros_like(ee),
            peer_sig=np.zeros(len(ee), bool),
            shared=np.ones(len(ee), bool),
            observed=c / length,
            expected=ee / length,
            z=np.where(v > 0, (c - ee) / np.sqrt(v), 0.0),
            share=np.ones_like(ee),
            passes=passes,
        )


def _span_passes(
    ev: SpanEvidence,
    m: int,
    rows: np.ndarray,
    cols: np.ndarray,
    on_scale: float,
    policy: DetectionPolicy,
) -> np.ndarray:
    """Whether the trailing spans' evidence at the cells passes the gates decide applies
    (significance, practical effect, sample, leave-one-out)."""
    p, eff, n = ev.p[rows, m, cols], ev.effect[rows, m, cols], ev.n[rows, m, cols]
    ok = (p <= on_scale) & ev.loo_ok[rows, m, cols] & (ev.share[rows, m, cols] >= policy.min_share)
    if m == Metric.FAILURE_RATE:
        ok &= (eff >= policy.min_failure_points) & (n >= policy.min_calls)
        ok &= ev.k[rows, m, cols] >= policy.min_failures
    else:
        ok &= volume_effect_ok(eff, policy) & (n >= policy.min_expected_calls)
    out: np.ndarray = ok
    return out


def _looks_per_day(base: Baselines, policy: DetectionPolicy) -> tuple[np.ndarray, float]:
    """Observations a day that can start an alarm: for the failure test (per partition) the
    buckets expected to hold a failure (a bucket without one only lowers the CUSUM), for the
    volume test every bucket (a quiet bucket raises it)."""
    per_day = _BUCKETS_PER_DAY_H * policy.buckets_per_hour
    lam = np.maximum(base.exp_calls, 0.0) * null_failure_rate(
        base, np.arange(base.exp_calls.shape[1])
    )
    busy: np.ndarray = -np.expm1(-lam).mean(axis=1) * per_day
    return busy, float(per_day)


def _thresholds(
    base: Baselines, parts: Partitions, policy: DetectionPolicy, n_tested: np.ndarray
) -> np.ndarray:
    """(P, M) alarm level of each partition's sequential tests (inf where not run)."""
    P = len(parts)
    h = np.full((P, len(METRIC_NAMES)), np.inf)
    busy, every = _looks_per_day(base, policy)
    both = policy.sequential == "both"
    n_seq = int(n_tested[Metric.FAILURE_RATE] + (n_tested[Metric.VOLUME] if both else 0))
    hist = np.asarray(base.has_history, bool)
    h[:, Metric.FAILURE_RATE] = np.where(hist, sequential_thresholds(busy, n_seq, policy), np.inf)
    if both:
        vol = policy.volume_judged(parts.is_fleet) & hist
        h[:, Metric.VOLUME] = np.where(
            vol, sequential_thresholds(np.full(P, every), n_seq, policy), np.inf
        )
    return h


#: Rows (whole operations) the sequential test judges at a time, as span_evidence's blocks.
_SEQUENTIAL_BLOCK = Blocking().chunk


def apply_sequential(
    ev: SpanEvidence,
    cube: Cube,
    parts: Partitions,
    base: Baselines,
    policy: DetectionPolicy,
    *,
    n_tested: np.ndarray,
    on_scale: np.ndarray,
    expected: np.ndarray | None = None,
) -> Sequential:
    """Put the sequential evidence (failures rising, volume falling) into ``ev``, in place.

    ``cube``: the buckets behind ``ev`` (its last ``K`` columns are ``ev``'s), reaching at
    least ``max(policy.spans)`` buckets before them. ``n_tested`` (M,): partitions tested per
    metric (the tests the false-alarm budget is split over); ``on_scale`` (M,): the alpha
    decide reads ``ev.p`` against. Where the CUSUM passes its threshold and gates and beats the
    trailing spans' evidence, its window becomes the cell's evidence, with a p-value put on the
    scale (``on_scale x e^(threshold - stat)``: significant exactly when the CUSUM alarms).
    ``expected``: the cube's :func:`expected_calls` when the caller has them.
    """
    P, M, K = ev.p.shape
    stat = np.zeros((P, M, K))
    used = np.zeros((P, M, K), bool)
    ev.sequential = used
    if policy.sequential == "off" or not P:
        return Sequential(stat, np.full((P, M), np.inf), used)
    h = _thresholds(base, parts, policy, n_tested)
    e = expected_calls(base, cube.slots, cube, parts) if expected is None else expected
    # Operation block by operation block: a test reads its operation's rows (fleet, siblings)
    # and no other's, and whole (P, T) temporaries were the run's peak memory.
    for sl in _op_blocks(parts, _SEQUENTIAL_BLOCK):
        blk = _Block(cube.rows(sl), parts.take(sl), base.take(sl), e[sl], None)
        _sequential_block(ev, blk, sl, h[sl], (stat, used), policy, on_scale)
    return Sequential(stat, h, used)


def _sequential_block(
    ev: SpanEvidence,
    blk: _Block,
    sl: slice,
    h: np.ndarray,
    out: tuple[np.ndarray, np.ndarray],
    policy: DetectionPolicy,
    on_scale: np.ndarray,
) -> None:
    """:func:`apply_sequential` on the rows ``sl`` (whole operations; ``blk`` their cube,
    partitions, baselines and expected calls, ``h`` their thresholds): fills those rows of
    ``out`` (the CUSUM statistics and where the test is used) and of ``ev``."""
    stat, used = out
    cube, parts, base, e = blk.cube, blk.parts, blk.base, blk.e
    K, T = ev.p.shape[2], cube.calls.shape[1]
    w = min(max(policy.spans), T)
    slots = cube.slots
    p0 = np.clip(base.fail_rate[:, slots], 1e-6, 0.5)
    llr_f = failure_llr(cube.calls, cube.failures, cube.failed_calls, base, slots, policy)
    llr_v = volume_llr(cube.calls, e, base.phi_vol, policy.sequential_fold)
    seq = ((Metric.FAILURE_RATE, llr_f), (Metric.VOLUME, llr_v))
    for m, llr in seq[: 2 if policy.sequential == "both" else 1]:
        s_all = windowed_cusum(llr, w, T)
        stat[sl, m] = s_all[:, T - K :]
        rows, cols = np.nonzero(stat[sl, m] >= h[:, m, None])
        if not len(rows):
            continue
        win = _Windows(llr, rows, T - K + cols, w)
        at = rows + (sl.start or 0)  # the rows in ``ev``
        # Ended: since its peak in the window, the data favour the baseline over the
        # alternative by half the alarm's likelihood ratio (an incident over stops alerting).
        falling = win.extreme(s_all, "max") - stat[at, m, cols] >= h[rows, m] / 2
        if m == Metric.FAILURE_RATE:
            f = _failure_fields(win, cube, parts, p0, base.fail_dispersion()[:, None], policy)
        else:
            f = _volume_fields(win, cube.calls, e, base.phi_vol, policy)
        p = np.fmin(on_scale[m] * np.exp(h[rows, m] - stat[at, m, cols]), 1.0)
        beats = (p < ev.p[at, m, cols]) | ~_span_passes(ev, m, at, cols, on_scale[m], policy)
        ok = f.pop("passes") & beats & ~falling
        r, c = at[ok], cols[ok]
        used[r, m, c] = True
        ev.p[r, m, c] = p[ok]
        ev.loo_ok[r, m, c] = True
        ev.effect_ms[r, m, c] = np.nan
        ev.span[r, m, c] = win.length[ok]
        for name, val in f.items():
            getattr(ev, name)[r, m, c] = val[ok]


def sequential_details(
    ev: SpanEvidence, p: int, m: int, j: int, policy: DetectionPolicy
) -> dict[str, Any] | None:
    """What the sequential test accumulated at cell (p, m, j), for an alert's details: the
    hours, calls (and failures, or expected calls) of its window; None where it was not used."""
    used = getattr(ev, "sequential", None)
    if used is None or not used[p, m, j]:
        return None
    hours = float(ev.span[p, m, j]) / policy.buckets_per_hour
    out: dict[str, Any] = {"metric": METRIC_NAMES[m], "hours": round(hours, 2)}
    if m == Metric.FAILURE_RATE:
        out.update(
            calls=int(round(float(ev.n[p, m, j]))),
            failures=int(round(float(ev.k[p, m, j]))),
            usual_rate=float(ev.expected[p, m, j]),
        )
    else:
        span = float(ev.span[p, m, j])
        out.update(
            calls=int(round(float(ev.observed[p, m, j]) * span)),
            usual_calls=float(ev.expected[p, m, j]) * span,
        )
    return out


def true_runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """``(start, end)`` of every run of True in a 1-D bool array, half-open."""
    padded = np.concatenate([[False], np.asarray(flags, dtype=bool), [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]
