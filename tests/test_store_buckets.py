"""Bucket store: round trip, late data adds up, crash mid-merge keeps the last good state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from detector.errors import StateError
from detector.schema import AGG_COLUMNS, HIST_COLUMNS, BucketAggregates, fill_failed_calls
from detector.store.backend import LocalBackend
from detector.store.buckets import BucketStore

T0 = datetime(2026, 11, 2, 23, 50, tzinfo=UTC)


def _aggs(*rows: tuple[str, str, datetime, int, int], bins: int = 150) -> BucketAggregates:
    stats = pd.DataFrame(
        [
            {
                "operation_name": op,
                "sdk_version": ver,
                "bucket_start": pd.Timestamp(ts),
                "calls": calls,
                "failures": fails,
                "expected_errors": 0,
                "dur_n": calls,
                "log_dur_sum": 6.0 * calls,
                "log_dur_sumsq": 36.0 * calls,
            }
            for op, ver, ts, calls, fails in rows
        ]
    )
    hist = pd.DataFrame(
        [
            {
                "operation_name": op,
                "sdk_version": ver,
                "bucket_start": pd.Timestamp(ts),
                "bin": bins,
                "count": calls,
            }
            for op, ver, ts, calls, _ in rows
        ]
    )
    s = fill_failed_calls(stats).reindex(columns=list(AGG_COLUMNS)).astype(AGG_COLUMNS)
    h = hist.reindex(columns=list(HIST_COLUMNS)).astype(HIST_COLUMNS)
    return BucketAggregates(stats=s, hist=h, rows_read=sum(r[3] for r in rows))


def test_round_trip_across_days_and_watermark(tmp_path) -> None:
    store = BucketStore(LocalBackend(tmp_path))
    assert store.watermark is None
    a = _aggs(("Join", "1.0", T0, 10, 1), ("Join", "1.0", T0 + timedelta(minutes=15), 5, 0))
    store.merge(a, watermark=T0 + timedelta(hours=1))
    assert store.watermark == T0 + timedelta(hours=1)
    back = store.load()
    assert back.stats["calls"].tolist() == [10, 5]
    assert sorted(back.stats["bucket_start"].dt.day.unique()) == [2, 3]  # two day files
    only_second = store.load(T0 + timedelta(minutes=10), T0 + timedelta(hours=1))
    assert only_second.stats["calls"].tolist() == [5]


def test_late_rows_add_up_in_their_bucket(tmp_path) -> None:
    store = BucketStore(LocalBackend(tmp_path))
    store.merge(_aggs(("Join", "1.0", T0, 10, 1)), watermark=T0 + timedelta(hours=1))
    store.merge(_aggs(("Join", "1.0", T0, 4, 2)), watermark=T0 + timedelta(hours=2))
    back = store.load()
    assert back.stats[["calls", "failures"]].values.tolist() == [[14, 3]]
    assert back.hist["count"].tolist() == [14]
    # superseded generations are garbage-collected
    assert len([k for k in LocalBackend(tmp_path).list("buckets/") if "parquet" in k]) == 2


class _CrashingBackend(LocalBackend):
    def __init__(self, root, crash_on_write: int) -> None:
        super().__init__(root)
        self.writes = 0
        self.crash_on_write = crash_on_write

    def write(self, key, data, *, if_version=None):
        self.writes += 1
        if self.writes == self.crash_on_write:
            raise OSError("disk vanished")
        return super().write(key, data, if_version=if_version)


@pytest.mark.parametrize("crash_on_write", [1, 2, 3, 4, 5])
def test_crash_mid_merge_leaves_last_good_state(tmp_path, crash_on_write: int) -> None:
    good = BucketStore(LocalBackend(tmp_path))
    good.merge(
        _aggs(("Join", "1.0", T0, 10, 1), ("Join", "1.0", T0 + timedelta(minutes=15), 5, 0)),
        watermark=T0 + timedelta(hours=1),
    )
    before = good.load()
    crashing = BucketStore(_CrashingBackend(tmp_path, crash_on_write))
    late = _aggs(("Join", "1.0", T0, 3, 3), ("Join", "1.0", T0 + timedelta(minutes=15), 2, 2))
    # 2 days x 2 files + 1 manifest = 5 writes; a crash at any of them must not half-apply
    with pytest.raises(OSError):
        crashing.merge(late, watermark=T0 + timedelta(hours=2))
    after = BucketStore(LocalBackend(tmp_path))
    pd.testing.assert_frame_equal(after.load().stats, before.stats)
    assert after.watermark == T0 + timedelta(hours=1)
    # and the next merge still works and counts the late rows exactly once
    after.merge(late, watermark=T0 + timedelta(hours=2))
    assert after.load().stats["calls"].tolist() == [13, 7]


def test_watermark_never_moves_back(tmp_path) -> None:
    store = BucketStore(LocalBackend(tmp_path))
    store.merge(_aggs(("Join", "1.0", T0, 1, 0)), watermark=T0)
    with pytest.raises(StateError, match="move back"):
        store.merge(_aggs(("Join", "1.0", T0, 1, 0)), watermark=T0 - timedelta(hours=1))


def test_prune_drops_whole_old_days(tmp_path) -> None:
    store = BucketStore(LocalBackend(tmp_path))
    store.merge(_aggs(("Join", "1.0", T0, 1, 0), ("Join", "1.0", T0 + timedelta(days=2), 1, 0)))
    assert store.prune(T0 + timedelta(days=1)) == 1
    assert store.load().stats["calls"].tolist() == [1]


def test_corrupt_manifest_is_a_state_error(tmp_path) -> None:
    (tmp_path / "buckets").mkdir()
    (tmp_path / "buckets" / "manifest.json").write_text("{not json")
    with pytest.raises(StateError, match="corrupt"):
        BucketStore(LocalBackend(tmp_path)).load()


def _sim_aggs(tmp_path) -> BucketAggregates:
    from detector.source.files import read_aggregates
    from tests.fixtures_files import row, write_rows

    rows = [
        row(op=op, opid=f"{op}{i}", cct=f"2026-11-0{d}T23:{m:02d}:00Z", dur=10 * (i + 1), sdk=v)
        for i, (op, d, m, v) in enumerate(
            [("Join", 2, 1, "1.0"), ("Join", 2, 7, "2.0"), ("StartVideo", 3, 1, "1.0"),
             ("Hangup", 3, 59, "1.0"), ("Join", 4, 0, "1.0")]
        )
    ]  # fmt: skip
    path = write_rows(rows, tmp_path / "in" / "rows.parquet", "parquet")
    return read_aggregates(path, bucket=timedelta(minutes=5))


def test_round_trip_of_a_source_frame_is_exact(tmp_path) -> None:
    agg = _sim_aggs(tmp_path)
    store = BucketStore(LocalBackend(tmp_path / "state"))
    store.merge(agg)
    from detector import aggregate

    back = aggregate.merge(store.load())  # day by day order -> one key order
    pd.testing.assert_frame_equal(back.stats, aggregate.merge(agg).stats)
    pd.testing.assert_frame_equal(back.hist, aggregate.merge(agg).hist)
    joins = store.load(operations=["Join"])
    assert set(joins.stats["operation_name"]) == {"Join"} and joins.stats["calls"].sum() == 3
    window = store.load(datetime(2026, 11, 3), datetime(2026, 11, 4))  # naive = UTC
    assert window.stats["operation_name"].tolist() == ["Hangup", "StartVideo"]


def test_merge_without_rows_moves_only_the_watermark(tmp_path) -> None:
    store = BucketStore(LocalBackend(tmp_path))
    store.merge(_aggs(("Join", "1.0", T0, 1, 0)), watermark=T0)
    files = sorted(LocalBackend(tmp_path).list("buckets/"))
    from detector.schema import empty_aggregates

    store.merge(empty_aggregates(), watermark=T0 + timedelta(hours=1))
    assert store.watermark == T0 + timedelta(hours=1)
    assert [k for k in LocalBackend(tmp_path).list("buckets/") if "parquet" in k] == [
        k for k in files if "parquet" in k
    ]
    assert store.load().stats["calls"].tolist() == [1]


def test_leftovers_of_a_crash_are_collected_by_the_next_merge(tmp_path) -> None:
    good = BucketStore(LocalBackend(tmp_path))
    good.merge(_aggs(("Join", "1.0", T0, 1, 0)))
    crashing = BucketStore(_CrashingBackend(tmp_path, 3))  # 2 data files written, no manifest
    with pytest.raises(OSError):
        crashing.merge(_aggs(("Join", "1.0", T0 + timedelta(days=1), 1, 0)))
    assert len([k for k in LocalBackend(tmp_path).list("buckets/") if "parquet" in k]) == 4
    good.merge(_aggs(("Join", "1.0", T0, 1, 0)))
    assert len([k for k in LocalBackend(tmp_path).list("buckets/") if "parquet" in k]) == 2
    assert good.load().stats["calls"].tolist() == [2]


def test_concurrent_writer_loses_with_version_conflict(tmp_path) -> None:
    from detector.store.backend import VersionConflict

    class _Racing(LocalBackend):
        """Another run commits between our manifest read and our manifest write."""

        def write(self, key, data, *, if_version=None):
            if key.endswith("manifest.json") and if_version is not None:
                LocalBackend.write(self, key, b'{"format": 1, "generation": 99, '
                                   b'"watermark": null, "days": {}}')  # fmt: skip
            return super().write(key, data, if_version=if_version)

    BucketStore(LocalBackend(tmp_path)).merge(_aggs(("Join", "1.0", T0, 1, 0)))
    with pytest.raises(VersionConflict):
        BucketStore(_Racing(tmp_path)).merge(_aggs(("Join", "1.0", T0, 1, 0)))


def test_a_store_written_before_failed_calls_reads_every_failure_as_a_call(tmp_path) -> None:
    """Day files from before the failing-calls columns load with the old meaning."""
    import pyarrow.parquet as pq

    store = BucketStore(LocalBackend(tmp_path))
    store.merge(_aggs(("Join", "1.0", T0, 10, 3)), watermark=T0 + timedelta(hours=1))
    files = [p for p in tmp_path.rglob("*") if p.is_file() and "stats" in p.name]
    assert len(files) == 1
    new = ["failed_calls", "failed_calls_op", "failure_cluster", "failure_cluster_op"]
    old = pq.read_table(files[0]).drop_columns(new)
    pq.write_table(old, files[0])
    back = store.load().stats
    assert list(back.columns) == list(AGG_COLUMNS)
    assert back["failed_calls"].tolist() == [3] and back["failed_calls_op"].tolist() == [3.0]
    # ... and every failure as a cluster of one
    assert back["failure_cluster"].tolist() == [3.0] == back["failure_cluster_op"].tolist()
