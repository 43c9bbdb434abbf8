"""Who calls, when, and on which SDK build: traffic cycles, version rollout, call legs.

Consumes :class:`~detector.simulate.params.SimParams` and the scenario's traffic multipliers;
produces :class:`Legs` (one row per call leg: start time, platform, SDK version, how it starts,
call type, length, ids) for one hour of simulated time. Pure: randomness comes from the
caller's :class:`numpy.random.Generator`, no I/O.

Traffic has a daily cycle (night trough, business-hours plateau, lunch dip) and a weekly one
(quieter weekends), normalised so that ``calls_per_hour`` is the mean over a week; each day gets
a small random level. Within an hour, leg starts follow the minute-level rate, so a surge that
starts at 13:30 starts at 13:30.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .params import SimParams, VersionSpec
from .strings import guid_matrix

__all__ = ["Legs", "Population", "TrafficProfile"]

_MS_MIN = 60_000
_MS_HOUR = 3_600_000
_MS_DAY = 86_400_000
_BROWSERS = (
    ("Chrome", 0.65, "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36"),
    ("Edge", 0.2, "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36 Edg/130.0.0.0"),
    ("Safari", 0.1, "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15"),
    ("Firefox", 0.05, "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:132.0) Gecko/20100101 Firefox/132.0"),
)  # fmt: skip
# Native user agents are not documented (reference §1.6): plausible placeholders.
_NATIVE_UA = {
    "Android": "azsdk-android-communication-calling/{v} (Android 14; Google Pixel 8)",
    "iOS": "azsdk-ios-communication-calling/{v} (iOS 18.1; iPhone15,2)",
    "Windows": "azsdk-windows-communication-calling/{v} (Windows 10.0.22631; x64)",
}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)))


class TrafficProfile:
    """Relative call rate at any minute: daily and weekly cycle, mean 1 over a week."""

    def __init__(self, params: SimParams) -> None:
        self._p = params
        week = np.arange(7 * 24 * 60, dtype=np.float64) * _MS_MIN
        self._norm = float(self._raw(week).mean())

    def _raw(self, ms_of_week: np.ndarray) -> np.ndarray:
        # Epoch day 0 was a Thursday; weekday 0 = Monday.
        p = self._p
        hour = (ms_of_week % _MS_DAY) / _MS_HOUR
        lo, hi = p.peak_hours
        day_shape = _sigmoid((hour - lo) / 0.8) * _sigmoid((hi - hour) / 1.2)
        day_shape = day_shape * (1.0 - 0.12 * np.exp(-(((hour - 12.5) / 0.6) ** 2)))
        level = p.night_factor + (1.0 - p.night_factor) * day_shape
        weekday = ((ms_of_week // _MS_DAY) + 3) % 7
        return np.asarray(np.where(weekday >= 5, level * p.weekend_factor, level))

    def rate(self, epoch_ms: np.ndarray) -> np.ndarray:
        """Relative rate (mean 1 over a week) at each epoch millisecond."""
        return self._raw(np.asarray(epoch_ms, dtype=np.float64)) / self._norm


@dataclass
class Legs:
    """One hour's call legs, column-wise (all arrays have one entry per leg)."""

    t0: np.ndarray  # epoch ms the call starts (StartCall/Join/incoming)
    length_ms: np.ndarray  # connected time until Hangup
    platform: np.ndarray  # index into Population.platforms
    version: np.ndarray  # index into Population.versions
    browser: np.ndarray  # index into the browser table (web only)
    start_kind: np.ndarray  # index into params.start_mix
    group: np.ndarray  # bool: CallType 'Group' (else '1 to 1')
    ids: np.ndarray  # (n, 4, 36) uint8: CallId, ParticipantId, EndpointId, ClientInstanceId

    @property
    def n(self) -> int:
        return int(self.t0.size)


class Population:
    """The SDK builds in use and the legs they place.

    Parameters
    ----------
    params
        Simulator parameters.
    start_ms
        Simulation start (epoch ms); version release times are relative to it.
    rollout_ms
        When the scenario's new SDK build (``release_h=None`` in :class:`VersionSpec`) ships.
    surge
        Traffic multiplier as a function of epoch ms (vectorised); 1 outside surges.
    day_level
        Traffic level per simulated day (index = day since start), e.g. ``exp(N(0, 0.05))``.
    """

    def __init__(
        self,
        params: SimParams,
        start_ms: int,
        rollout_ms: int,
        surge: Callable[[np.ndarray], np.ndarray],
        day_level: np.ndarray,
    ) -> None:
        self.params = params
        self.start_ms = start_ms
        self.rollout_ms = rollout_ms
        self.profile = TrafficProfile(params)
        self.surge = surge
        self.day_level = day_level
        self.platforms: tuple[str, ...] = tuple(name for name, _ in params.platform_mix)
        self.versions: tuple[VersionSpec, ...] = (*params.versions, params.rare_version)
        self.rare_index = len(self.versions) - 1
        self._plat_of_version = np.array([self.platforms.index(v.platform) for v in self.versions])
        shares = np.array([w for _, w in params.platform_mix], dtype=np.float64)
        self._plat_cum = np.cumsum(shares / shares.sum())
        bw = np.array([w for _, w, _ in _BROWSERS])
        self._browser_cum = np.cumsum(bw / bw.sum())
        sw = np.array([w for _, w in params.start_mix])
        self._start_cum = np.cumsum(sw / sw.sum())
        self.start_kinds: tuple[str, ...] = tuple(name for name, _ in params.start_mix)

    # ---------------------------------------------------------------- versions
    def release_ms(self, v: VersionSpec) -> float:
        if v.release_h is None:
            return float(self.rollout_ms)
        return self.start_ms + v.release_h * _MS_HOUR

    def version_shares(self, t_ms: float) -> np.ndarray:
        """Unnormalised share of every (non-rare) version at ``t_ms``; 0 for the rare one."""
        out = np.zeros(len(self.versions))
        hours_since_start = (t_ms - self.start_ms) / _MS_HOUR
        for i, v in enumerate(self.params.versions):
            rel = self.release_ms(v)
            if t_ms < rel or (v.retire_h is not None and hours_since_start >= v.retire_h):
                continue
            age = (t_ms - rel) / _MS_HOUR / v.ramp_h  # in ramp widths
            # Starts at 0 (no jump at release), ~12 % of its weight after one ramp width,
            # half after three.
            adoption = float(_sigmoid(np.array(age - 3.0))) * min(age, 1.0)
            decay = 1.0
            if v.half_life_h is not None:
                decay = 0.5 ** (max(hours_since_start, 0.0) / v.half_life_h)
            out[i] = v.weight * adoption * decay
        return out

    def user_agent(self, version: int, browser: int) -> str:
        """The UserAgent string of a leg (web: the documented shape with the client tag)."""
        v = self.versions[version]
        if v.platform == "Web":
            return (
                f"azure-communication-services/1.3.1 azsdk-js-communication-calling/{v.ua_version} "
                f"(javascript_calling_sdk;#clientTag:{self.params.client_tag}). "
                f"{_BROWSERS[browser][2]}"
            )
        return _NATIVE_UA.get(v.platform, "{v}").format(v=v.ua_version)

    @property
    def n_browsers(self) -> int:
        return len(_BROWSERS)

    # ---------------------------------------------------------------- legs
    def block_rate(self, block_ms: int, hours: int) -> tuple[np.ndarray, np.ndarray]:
        """Minute-level leg rate (legs per minute) over a block, and the base level per minute."""
        minutes = block_ms + np.arange(60 * hours, dtype=np.int64) * _MS_MIN + _MS_MIN // 2
        day = np.clip((minutes - self.start_ms) // _MS_DAY, 0, len(self.day_level) - 1)
        base = self.profile.rate(minutes) * self.day_level[day]
        per_min = self.params.calls_per_hour / 60.0 * base * self.surge(minutes)
        return per_min, base

    def legs_for_block(self, rng: np.random.Generator, block_ms: int, hours: int) -> list[Legs]:
        """Draw the legs that start within ``[block_ms, block_ms + hours)``, in bounded parts.

        Blocks of several hours keep the per-call overhead low at small volumes; each leg
        still gets the version shares of its own hour.
        """
        per_min, base = self.block_rate(block_ms, hours)
        n = int(rng.poisson(per_min.sum()))
        n_rare = int(rng.poisson(self.params.rare_legs_per_day / 1440.0 * base.sum()))
        shares = np.stack(
            [self.version_shares(block_ms + h * _MS_HOUR + _MS_HOUR / 2) for h in range(hours)]
        )
        total_rate = per_min.sum()
        minute_cum = np.cumsum(per_min / total_rate) if total_rate > 0 else None
        size = self.params.max_legs_per_chunk
        sizes = [size] * (n // size)
        if n % size or not sizes:
            sizes.append(n % size)
        # The few rare-version legs ride along with the last part.
        return [
            self._draw(rng, block_ms, k, n_rare if i == len(sizes) - 1 else 0, shares, minute_cum)
            for i, k in enumerate(sizes)
        ]

    def _draw(
        self,
        rng: np.random.Generator,
        block_ms: int,
        n: int,
        n_rare: int,
        shares: np.ndarray,
        minute_cum: np.ndarray | None,
    ) -> Legs:
        p = self.params
        total = n + n_rare
        n_minutes = shares.shape[0] * 60
        if minute_cum is None:
            minute = rng.integers(0, n_minutes, total)
        else:
            minute = np.minimum(np.searchsorted(minute_cum, rng.random(total)), n_minutes - 1)
        t0 = block_ms + minute * _MS_MIN + rng.integers(0, _MS_MIN, total)
        platform = np.searchsorted(self._plat_cum, rng.random(total))
        platform = np.minimum(platform, len(self.platforms) - 1)
        # Version conditional on platform and hour: cumulative shares per (hour, platform).
        n_ver = len(self.versions)
        table = np.zeros((shares.shape[0], len(self.platforms), n_ver))
        table[:, self._plat_of_version, np.arange(n_ver)] = shares
        sums = table.sum(axis=2, keepdims=True)
        table = np.divide(table, sums, out=np.zeros_like(table), where=sums > 0)
        cum = np.cumsum(table, axis=2)
        cum[..., -2] = np.where(sums[..., 0] > 0, 1.0, cum[..., -2])  # no rounding gap at the top
        version = (rng.random(total)[:, None] > cum[minute // 60, platform]).sum(axis=1)
        version = np.minimum(version, n_ver - 2)
        if n_rare:
            version[n:] = self.rare_index
            platform[n:] = self._plat_of_version[self.rare_index]
        browser = np.minimum(
            np.searchsorted(self._browser_cum, rng.random(total)), len(_BROWSERS) - 1
        )
        start_kind = np.minimum(
            np.searchsorted(self._start_cum, rng.random(total)), len(self.start_kinds) - 1
        )
        group = rng.random(total) < p.group_call_share
        group[np.asarray(self.start_kinds)[start_kind] == "Join"] = True
        length = np.exp(rng.normal(np.log(p.leg_minutes_median), p.leg_minutes_sigma, total))
        length_ms = (np.minimum(length, 180.0) * _MS_MIN).astype(np.int64)
        ids = guid_matrix(rng, total * 4).reshape(total, 4, 36)
        return Legs(t0, length_ms, platform, version, browser, start_kind, group, ids)
