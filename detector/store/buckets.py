"""Bucket history: the merged bucket aggregates of every run, plus the arrival watermark.

Layout under ``prefix`` (through any :class:`~detector.store.backend.Backend`)::

    buckets/manifest.json                 generation, watermark, day -> file names
    buckets/2026-11-25.g000042.stats.parquet
    buckets/2026-11-25.g000042.hist.parquet

A merge writes *new* files for the days it touches (never overwriting a file in use) and then
commits them by replacing the manifest with a compare-and-swap write. A crash before the
manifest write leaves the previous manifest, which still names the previous files: the last
good state. Files that no manifest names (superseded generations, leftovers of a crash) are
deleted after each commit. The watermark moves only with a merge, in the same manifest write,
so "what was read" and "what was counted" cannot disagree.

Consumes and produces :class:`~detector.schema.BucketAggregates`; does I/O via the backend.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from detector import aggregate
from detector.errors import StateError
from detector.schema import (
    AGG_COLUMNS,
    HIST_COLUMNS,
    BucketAggregates,
    empty_aggregates,
    fill_failed_calls,
)
from detector.store.backend import Backend
from detector.timeutil import iso, parse_time, utc

__all__ = ["BucketStore"]

_FORMAT = 1


def _day_numbers(frame: pd.DataFrame) -> np.ndarray:
    ns = pd.DatetimeIndex(frame["bucket_start"]).as_unit("ns").asi8
    days: np.ndarray = np.floor_divide(ns, 86_400 * 10**9)
    return days


def _to_bytes(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buf, compression="zstd")
    return buf.getvalue()


def _from_bytes(data: bytes, dtypes: dict[str, str], key: str) -> pd.DataFrame:
    try:
        frame = pq.read_table(io.BytesIO(data)).to_pandas()
    except (pa.ArrowException, OSError) as exc:
        raise StateError(f"bucket store file {key} is unreadable: {exc}") from exc
    if "failures" in dtypes:  # a store written before failed_calls existed
        frame = fill_failed_calls(frame)
    out: pd.DataFrame = frame.reindex(columns=list(dtypes)).astype(dtypes)
    return out


def _select(
    frame: pd.DataFrame, start: datetime | None, end: datetime | None, ops: set[str] | None
) -> pd.DataFrame:
    mask = np.ones(len(frame), dtype=bool)
    if start is not None:
        mask &= (frame["bucket_start"] >= pd.Timestamp(start)).to_numpy()
    if end is not None:
        mask &= (frame["bucket_start"] < pd.Timestamp(end)).to_numpy()
    if ops is not None:
        mask &= frame["operation_name"].isin(ops).to_numpy()
    return frame if mask.all() else frame[mask].reset_index(drop=True)


class BucketStore:
    """Day-partitioned bucket history with an atomic manifest (see the module docstring).

    Parameters
    ----------
    backend : where the files live (local directory or Azure Blob Storage).
    prefix : key prefix inside the backend. Default ``"buckets"``.
    """

    def __init__(self, backend: Backend, *, prefix: str = "buckets") -> None:
        self.backend = backend
        self.prefix = prefix.strip("/")

    # -- manifest ------------------------------------------------------------------------------

    @property
    def _manifest_key(self) -> str:
        return f"{self.prefix}/manifest.json"

    def _manifest(self) -> tuple[dict[str, Any], str]:
        found = self.backend.read(self._manifest_key)
        if found is None:
            return {"format": _FORMAT, "generation": 0, "watermark": None, "days": {}}, ""
        try:
            data = json.loads(found[0])
        except ValueError as exc:
            raise StateError(f"{self._manifest_key} is corrupt: {exc}") from exc
        if data.get("format") != _FORMAT:
            raise StateError(f"{self._manifest_key}: unsupported format {data.get('format')!r}")
        return data, found[1]

    @property
    def watermark(self) -> datetime | None:
        """End of the last arrival window merged (None before the first merge)."""
        wm = self._manifest()[0].get("watermark")
        return parse_time(wm) if wm else None

    # -- reading ---------------------------------------------------------------------------------

    def _read_day(self, files: dict[str, str]) -> BucketAggregates:
        out = empty_aggregates()
        for part, dtypes in (("stats", AGG_COLUMNS), ("hist", HIST_COLUMNS)):
            key = f"{self.prefix}/{files[part]}"
            found = self.backend.read(key)
            if found is None:
                raise StateError(f"bucket store file {key} named by the manifest is missing")
            setattr(out, part, _from_bytes(found[0], dtypes, key))
        return out

    def load(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        operations: Iterable[str] | None = None,
    ) -> BucketAggregates:
        """Bucket aggregates with ``start <= bucket_start < end`` (either bound optional).

        Only the day files overlapping the range are read. Rows are sorted by key within each
        UTC day, days in order (not one global key order); keys never repeat. ``operations``
        keeps only those operation names. Counters (``dropped``, ``flagged``, ``rows_read``)
        are not stored: they are zero.
        """
        manifest, _ = self._manifest()
        days = sorted(manifest["days"])
        start = None if start is None else utc(start)
        end = None if end is None else utc(end)
        lo = start.astimezone(UTC).date().isoformat() if start else None
        hi = end.astimezone(UTC).date().isoformat() if end else None
        ops = set(operations) if operations is not None else None
        stats_parts, hist_parts = [], []
        for d in days:
            if (lo is not None and d < lo) or (hi is not None and d > hi):
                continue
            day = self._read_day(manifest["days"][d])
            stats_parts.append(_select(day.stats, start, end, ops))
            hist_parts.append(_select(day.hist, start, end, ops))
        out = empty_aggregates()
        if stats_parts:
            # Each day's file is sorted by key; days are disjoint, so no key repeats.
            out.stats = pd.concat(stats_parts, ignore_index=True)
            out.hist = pd.concat(hist_parts, ignore_index=True)
        return out

    # -- writing ---------------------------------------------------------------------------------

    def merge(self, aggs: BucketAggregates, *, watermark: datetime | None = None) -> None:
        """Add ``aggs`` into the history (late buckets add up) and move the watermark.

        Atomic: either every touched day and the watermark are updated, or nothing is.
        Raises StateError (including VersionConflict when another writer committed first).
        """
        manifest, version = self._manifest()
        generation = int(manifest["generation"]) + 1
        days = dict(manifest["days"])
        if len(aggs.stats) or len(aggs.hist):
            # UTC day of every row as an integer (days since the epoch): no string formatting.
            day_of_stats = _day_numbers(aggs.stats)
            day_of_hist = _day_numbers(aggs.hist)
            for dn in np.union1d(day_of_stats, day_of_hist).tolist():
                day = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=dn)).date().isoformat()
                new = BucketAggregates(
                    stats=aggs.stats[day_of_stats == dn], hist=aggs.hist[day_of_hist == dn]
                )
                if day in days:
                    new = aggregate.merge(self._read_day(days[day]), new)
                else:
                    new = aggregate.merge(new)  # one row per key, sorted, contract dtypes
                names = {
                    part: f"{day}.g{generation:06d}.{part}.parquet" for part in ("stats", "hist")
                }
                for part, frame in (("stats", new.stats), ("hist", new.hist)):
                    self.backend.write(f"{self.prefix}/{names[part]}", _to_bytes(frame))
                days[day] = names
        if watermark is not None:
            watermark = utc(watermark)
            assert watermark is not None
            old = manifest.get("watermark")
            if old and parse_time(old) > watermark:
                raise StateError(
                    f"watermark would move back from {old} to {iso(watermark, fraction=True)}; refusing"
                )
            manifest["watermark"] = iso(watermark, fraction=True)
        manifest.update({"generation": generation, "days": days})
        self.backend.write(
            self._manifest_key, json.dumps(manifest, indent=1).encode(), if_version=version
        )
        self._collect_garbage(days)

    def prune(self, before: datetime) -> int:
        """Forget whole days that end at or before ``before``; returns how many were dropped."""
        manifest, version = self._manifest()
        utc = before.replace(tzinfo=UTC) if before.tzinfo is None else before.astimezone(UTC)
        cutoff = utc.date().isoformat()
        kept = {d: f for d, f in manifest["days"].items() if d >= cutoff}
        dropped = len(manifest["days"]) - len(kept)
        if dropped:
            manifest["days"] = kept
            manifest["generation"] = int(manifest["generation"]) + 1
            self.backend.write(
                self._manifest_key, json.dumps(manifest, indent=1).encode(), if_version=version
            )
            self._collect_garbage(kept)
        return dropped

    def _collect_garbage(self, days: dict[str, dict[str, str]]) -> None:
        live = {f"{self.prefix}/{name}" for files in days.values() for name in files.values()}
        live.add(self._manifest_key)
        for key in list(self.backend.list(f"{self.prefix}/")):
            if key not in live:
                self.backend.delete(key)
