"""The numpy reductions: the rows pass's Arrow table -> bucket aggregates.

Distinct names become partitions (:func:`_dimension`, with the very functions of
:mod:`detector.schema`); duplicate keys are found with one sort of key|row words and resolved
exactly on the few candidates (:func:`_duplicates`); the kept rows are summed per (partition,
bucket) with dense bincounts and the histogram counted with one sort of ``uint32`` codes
(:func:`_group_compact`), or by the general path for codes too wide (:func:`_group_general`);
failing calls and their clusters are weighed in :func:`_failed_calls`; the counts become the
contract's frames (:func:`_contract_frames`). Per-row work is vectorised, a step of
:data:`_STEP` rows at a time; no Python loop touches rows, and nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from detector import schema
from detector.source.files.sql import _CODE, _DROP_CODES, _PSEUDO_LOWER, _U32_NONE, _Shape

__all__: list[str] = []


def _dimension(triples: list[tuple[Any, ...]]) -> pd.DataFrame:
    """Distinct raw (name, version, result type) -> dense partition id of (canonical name,
    version), name-based flags and drop code, result class."""
    ops = [t[0] for t in triples]
    names = ["" if o is None else schema.canonical_operation(o) for o in ops]
    dim = pd.DataFrame(
        {
            "op": pd.Series(ops, dtype=object),
            "sdk": pd.Series([t[1] for t in triples], dtype=object),
            "h": pd.Series([t[2] for t in triples], dtype="uint64"),
            "rc": pd.Series([t[3] for t in triples], dtype="int8"),
            "name": pd.Series(names, dtype=object),
        }
    )
    dim["point"] = [schema.is_point_event(x) for x in names]
    dim["noncanon"] = [o is not None and o != x for o, x in zip(ops, names, strict=True)]
    # Drop codes decided on names (first matching reason): 1 missing, 2 pseudo operation.
    missing, pseudo = _CODE["missing_operation_name"], _CODE["pseudo_operation"]
    dim["name_code"] = np.where(
        dim["name"] == "", missing, np.where(dim["name"].str.lower() == _PSEUDO_LOWER, pseudo, 0)
    ).astype("int8")
    dim["pid"] = dim.groupby(["name", "sdk"], sort=True).ngroup().astype("int32")
    return dim


def _pid_operations(dim: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """``dim`` -> (name, sdk, pid, op) per partition id, and the operation index of each id."""
    # A call failing in several versions of one operation is one failing call of the
    # operation's fleet (failed_calls_op).
    by_pid = dim.drop_duplicates("pid").sort_values("pid")
    op_of_pid = np.zeros(int(by_pid["pid"].max()) + 1 if len(by_pid) else 0, dtype=np.int64)
    op_of_pid[by_pid["pid"].to_numpy()] = pd.factorize(by_pid["name"])[0]
    by_pid = by_pid.assign(op=op_of_pid[by_pid["pid"].to_numpy()])
    return by_pid[["name", "sdk", "pid", "op"]], op_of_pid


# Rows per step of the numpy passes. The box this was tuned on pays ~2.5 ms per MiB of fresh
# memory (page faults): whole-column temporaries (a 72 MiB intp copy per bincount) cost more
# than the arithmetic, step-sized ones are recycled by the allocator. DuckDB's Arrow batches
# are 2**20 rows, so a step is (mostly) one zero-copy chunk.
_STEP: Final = 1 << 20


def _steps(rows: pa.Table, step: int) -> Iterator[tuple[int, pa.Table]]:
    for off in range(0, rows.num_rows, step):
        yield off, rows.slice(off, step)


def _col(rows: pa.Table, name: str) -> np.ndarray:
    """A column without nulls as numpy (a copy when the column is in several chunks)."""
    out: np.ndarray = rows.column(name).to_numpy()
    return out


def _take(column: pa.ChunkedArray, idx: np.ndarray) -> np.ndarray:
    """``column[idx]`` as numpy (nulls as NaN), gathered chunk by chunk: Arrow's take on a
    chunked column costs ~20 ms a call at 9M rows, whatever the few rows taken."""
    ends = np.cumsum([len(c) for c in column.chunks])
    which = np.searchsorted(ends, idx, side="right")
    out = np.empty(
        len(idx), dtype="float64" if column.null_count else column.type.to_pandas_dtype()
    )
    for i in np.unique(which):
        sel = which == i
        chunk = column.chunks[i].to_numpy(zero_copy_only=False)
        out[sel] = chunk[idx[sel] - (ends[i - 1] if i else 0)]
    return out


def _duplicates(rows: pa.Table, tie_break: Callable[[np.ndarray], list[np.ndarray]]) -> np.ndarray:
    """Row indices of duplicate copies to discard (every copy of a key but the kept one).

    Key: column ``k``, a 64-bit hash of (OperationId, CallClientTimeStamp), 0 on rows dropped
    for another reason (a collision among 10M keys has a probability of ~3e-6). The copy kept
    is the one with the latest TimeGenerated; ties are broken on what the copy contributes
    (result class, duration with none last, partition, flags; see :func:`_tie_break`), so
    neither file order nor splitting the input changes the result.
    """
    n = rows.num_rows
    empty = np.empty(0, dtype="int64")
    if n < 2:
        return empty
    # One sort finds the candidates: 64-bit words of the key's high bits and the row number in
    # the low bits (a plain sort, far cheaper than an argsort). Equal high bits make a
    # candidate; the exact comparison below runs on those few rows.
    shift = np.uint64(max((n - 1).bit_length(), 1))
    low = np.uint64((1 << int(shift)) - 1)
    packed = np.empty(n, dtype="uint64")
    for off, part in _steps(rows, _STEP):
        out = packed[off : off + part.num_rows]
        np.bitwise_and(_col(part, "k"), ~low, out=out)
        out |= np.arange(off, off + part.num_rows, dtype="uint64")
    packed.sort()
    # Words below 1 << shift have zero high bits: the dropped rows (k == 0), and any real key
    # whose high bits happen to be 0 (checked on the full key).
    z = int(np.searchsorted(packed, np.uint64(1) << shift))
    zero_run = (packed[:z] & low).astype("int64")
    near = []
    for lo in range(z, n - 1, _STEP):
        top = packed[lo : lo + _STEP + 1] >> shift
        eq = np.flatnonzero(top[1:] == top[:-1]) + lo
        near += [eq, eq + 1]
    pos = np.unique(np.concatenate(near)) if near else empty
    cand = np.concatenate([(packed[pos] & low).astype("int64"), zero_run])
    del packed
    dk = _take(rows.column("k"), cand)
    cand, dk = cand[dk != 0], dk[dk != 0]
    if len(cand) < 2:
        return empty
    arrival, rc, ld, pid, flags = tie_break(cand)
    # lexsort: last key is primary. Latest TimeGenerated first (NULL last), then content.
    order = np.lexsort((flags, pid, ld, rc, -arrival, dk))
    sorted_keys = dk[order]
    first = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
    return np.sort(cand[order[~first]])


def _tie_break(rows: pa.Table, shape: _Shape, idx: np.ndarray) -> list[np.ndarray]:
    """Dedup tie-break columns of rows ``idx``: arrival (NULL: -inf), result class, duration
    (none: +inf), partition, flags."""

    def take(name: str) -> np.ndarray:
        return _take(rows.column(name), idx)

    tg = take("tg_us")
    tg = np.where(pd.isna(tg), -np.inf, tg)
    if shape.compact:
        c3 = take("c3").astype("int64")
        cell, rc = c3 // 3, c3 % 3
        ld = np.where(take("hk") == _U32_NONE, np.inf, take("ld"))
        pid = cell // shape.nb
    else:
        rc, pid = take("rc"), take("pid")
        ld = np.where(take("bin") < 0, np.inf, take("ld"))
    return [np.asarray(c, dtype="float64") for c in (tg, rc, ld, pid, take("cf") & 15)]


def _seen_before(rows: pa.Table, prior: np.ndarray) -> np.ndarray:
    """Row indices whose dedup key is in ``prior`` (sorted keys), a step at a time."""
    if not len(prior):
        return np.empty(0, dtype="int64")
    hits = []
    for off, part in _steps(rows, _STEP):
        k = _col(part, "k")
        pos = np.minimum(np.searchsorted(prior, k), len(prior) - 1)
        hits.append(np.flatnonzero((prior[pos] == k) & (k != 0)) + off)
    return np.concatenate(hits) if hits else np.empty(0, dtype="int64")


def _per_code_flags(cf: np.ndarray) -> np.ndarray:
    return np.bincount(cf, minlength=16 * (len(_DROP_CODES) + 1)).reshape(-1, 16)


@dataclass(frozen=True)
class _Prior:
    """Failures that arrived before the read (its look-back): partition id and call hash of
    each, so the read's failures of the same calls weigh as the rest of their cluster."""

    pid: np.ndarray  # -1: a version the read does not hold (its operation's calls still count)
    op: np.ndarray
    key: np.ndarray
    n: np.ndarray  # failures of that (partition, call)

    @staticmethod
    def none() -> _Prior:
        ints = np.empty(0, np.int64)
        return _Prior(pid=ints, op=ints, key=ints, n=np.empty(0))


def _cluster_weights(
    group: np.ndarray,
    key: np.ndarray,
    prior_group: np.ndarray,
    prior_key: np.ndarray,
    prior_n: np.ndarray,
) -> np.ndarray:
    """Per failing row: ``s + 2 * k0``, ``s`` its call's failures in the read and ``k0`` those
    that arrived before it (``prior_n`` per ``prior_*`` key), calls keyed by (group, call hash).

    Summed over a call's rows: ``(k0 + s)**2 - k0**2``. Reads of consecutive arrival windows
    thus add up to the sum of S**2 over whole calls (S: a call's failures), as one read of
    everything gives, as long as the look-back reaches a call's earlier failures.
    """
    calls, inv, counts = np.unique((group << 32) | key, return_inverse=True, return_counts=True)
    inv = inv.ravel()
    w = counts.astype(np.float64)
    if len(prior_group):
        before, where = np.unique((prior_group << 32) | prior_key, return_inverse=True)
        k0 = np.bincount(where.ravel(), weights=prior_n, minlength=len(before))
        pos = np.minimum(np.searchsorted(before, calls), len(before) - 1)
        w += 2.0 * np.where(before[pos] == calls, k0[pos], 0)
    return np.asarray(w[inv])


def _failed_calls(
    cell: np.ndarray,
    key: np.ndarray,
    opb: np.ndarray,
    pid: np.ndarray,
    nb: int,
    n_cells: int,
    prior: _Prior,
) -> dict[str, np.ndarray]:
    """Failing calls per cell, from the failing rows' cells (``0 .. n_cells-1``), call hashes
    (uint32), (operation, bucket) keys ``op * nb + bucket`` and partition ids.

    ``failed_calls``: distinct calls per cell. ``failed_calls_op``: each of them weighted by
    1 / the number of versions of the same operation it failed in within the bucket, so the
    versions' weights add up to the operation's distinct failing calls (a group call's legs run
    several SDK versions: summing the per-version counts would count it once per version).
    ``failure_cluster`` (``_op``): each failure weighted by the failures of its call in the
    partition (operation) over the whole read, whatever their buckets (a call's failures spread
    over its length, so a per-bucket count would see the cluster cut in pieces), plus twice
    those of ``prior`` (arrived before the read; see :func:`_cluster_weights`).
    """
    cell, key, opb = cell.astype(np.int64), key.astype(np.int64), opb.astype(np.int64)
    out = {
        "failed_calls": np.zeros(n_cells, "int64"),
        "failed_calls_op": np.zeros(n_cells),
        "failure_cluster": np.zeros(n_cells),
        "failure_cluster_op": np.zeros(n_cells),
    }
    if not len(cell):
        return out
    for name, group, before in (
        ("failure_cluster", pid, prior.pid),
        ("failure_cluster_op", opb // max(nb, 1), prior.op),
    ):
        weights = _cluster_weights(group.astype(np.int64), key, before, prior.key, prior.n)
        out[name] = np.bincount(cell, weights=weights, minlength=n_cells)
    order = np.lexsort((key, cell))
    cell, key, opb = cell[order], key[order], opb[order]
    first = np.r_[True, (cell[1:] != cell[:-1]) | (key[1:] != key[:-1])]
    cell, key, opb = cell[first], key[first], opb[first]  # one row per (cell, call)
    out["failed_calls"] = np.bincount(cell, minlength=n_cells).astype("int64")
    # Versions per (operation, bucket, call): run lengths after sorting on that key.
    order = np.lexsort((key, opb))
    o, k = opb[order], key[order]
    starts = np.flatnonzero(np.r_[True, (o[1:] != o[:-1]) | (k[1:] != k[:-1])])
    runs = np.diff(np.r_[starts, len(o)])
    versions = np.empty(len(o), np.int64)
    versions[order] = np.repeat(runs, runs)
    out["failed_calls_op"] = np.bincount(cell, weights=1.0 / versions, minlength=n_cells)
    return out


def _group_compact(
    rows: pa.Table, discard: np.ndarray, shape: _Shape, op_of_pid: np.ndarray, prior: _Prior
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Counts per (drop code, flags), sums per (partition, bucket) and histogram counts.

    From the uint32 codes, a step of rows at a time: dense bincounts over cells (dropped rows
    sit in the garbage cell ``n_cells``), discarded duplicates taken back out (integers) or
    given a zero weight (sums); one in-place sort of the histogram codes.
    """
    n_cells, nb, nbin = shape.n_cells, shape.nb, shape.nbin
    step = max(_STEP, n_cells + 1)  # each step's bincounts no longer than its rows
    per_cf = _per_code_flags(np.empty(0, dtype="uint8"))
    per_rc = np.zeros(3 * (n_cells + 1), dtype="int64")
    sums = np.zeros(n_cells + 1)
    sumsq = np.zeros(n_cells + 1)
    hk = np.empty(rows.num_rows, dtype="uint32")
    fail_cell, fail_call = [], []  # (cell, call hash) of every kept failure: few rows
    for off, part in _steps(rows, step):
        m = part.num_rows
        d = discard[np.searchsorted(discard, off) : np.searchsorted(discard, off + m)] - off
        cf, c3, ld = _col(part, "cf"), _col(part, "c3"), _col(part, "ld")
        per_cf += _per_code_flags(cf)
        per_rc += np.bincount(c3, minlength=len(per_rc))
        hk[off : off + m] = _col(part, "hk")
        if len(d):
            per_cf[0] -= np.bincount(cf[d] & 15, minlength=16)  # discarded rows had code 0
            np.subtract.at(per_rc, c3[d].astype("int64"), 1)
            hk[off + d] = _U32_NONE
            ld = ld.copy()
            ld[d] = 0.0  # a zero weight adds nothing: the sums are those of the kept rows
        cell = (c3 // 3).astype(np.intp)  # bincount would convert it once per call
        sums += np.bincount(cell, weights=ld, minlength=n_cells + 1)
        sumsq += np.bincount(cell, weights=ld * ld, minlength=n_cells + 1)
        ck = _col(part, "ck")
        if len(d):
            ck = ck.copy()
            ck[d] = 0
        f = np.flatnonzero(ck)
        fail_cell.append(cell[f])
        fail_call.append(ck[f])
    fcell = np.concatenate(fail_cell) if fail_cell else np.empty(0, np.intp)
    fcall = np.concatenate(fail_call) if fail_call else np.empty(0, np.uint32)
    fpid = fcell // nb
    failed = _failed_calls(
        fcell, fcall, op_of_pid[fpid] * nb + fcell % nb, fpid, nb, n_cells, prior
    )
    del fcell, fcall, fpid
    per_rc3 = per_rc.reshape(-1, 3)[:n_cells]
    calls = per_rc3.sum(axis=1)
    present = np.flatnonzero(calls)
    # Histogram: sort the codes (uint32 sorts several times faster than int64), run lengths.
    hk.sort()
    hk = hk[: np.searchsorted(hk, np.uint32(_U32_NONE))]  # (a Python int converts hk)
    starts = np.flatnonzero(np.r_[True, hk[1:] != hk[:-1]]) if len(hk) else np.empty(0, "int64")
    hkey = hk[starts].astype("int64")
    hcount = np.diff(np.r_[starts, len(hk)]).astype("int64")
    del hk
    hcell = hkey // nbin
    dur_n = np.bincount(hcell, weights=hcount, minlength=n_cells)[present]
    stats = {
        "pid": present // nb,
        "bi": present % nb + shape.b0,
        "calls": calls[present],
        "failures": per_rc3[present, 2],
        **{name: v[present] for name, v in failed.items()},
        "expected_errors": per_rc3[present, 1],
        "dur_n": np.rint(dur_n).astype("int64"),
        "log_dur_sum": sums[present],
        "log_dur_sumsq": sumsq[present],
    }
    hist = {
        "pid": hcell // nb,
        "bi": hcell % nb + shape.b0,
        "bin": (hkey % nbin).astype("int32"),
        "count": hcount,
    }
    return per_cf, stats, hist


def _group_general(
    rows: pa.Table, discard: np.ndarray, op_of_pid: np.ndarray, prior: _Prior
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    cf = _col(rows, "cf")
    per_cf = _per_code_flags(cf)
    per_cf[0] -= np.bincount(cf[discard] & 15, minlength=16)
    keep = cf < 16
    keep[discard] = False
    del cf
    pid, bi, rc, ld, bins, ck = (
        _col(rows, c)[keep] for c in ("pid", "bi", "rc", "ld", "bin", "ck")
    )
    stats, hist = _group(pid, bi, rc, ld, bins, ck, op_of_pid, prior)
    return per_cf, stats, hist


def _group(
    pid: np.ndarray,
    bi: np.ndarray,
    rc: np.ndarray,
    ld: np.ndarray,
    bins: np.ndarray,
    ck: np.ndarray,
    op_of_pid: np.ndarray,
    prior: _Prior,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The general path of :func:`_group_compact` (kept rows only; codes too wide for uint32).

    Returns column arrays sorted by (pid, bi) and (pid, bi, bin).
    """
    if len(pid) == 0:
        e = np.empty(0, dtype="int64")
        stats = {
            c: e
            for c in ("pid", "bi", "calls", "failures", "failed_calls", "expected_errors", "dur_n")
        }
        stats |= {
            c: e.astype("float64")
            for c in (
                "failed_calls_op",
                "failure_cluster",
                "failure_cluster_op",
                "log_dur_sum",
                "log_dur_sumsq",
            )
        }
        return stats, {"pid": e, "bi": e, "bin": e.astype("int32"), "count": e}
    b0 = int(bi.min())
    nb = int(bi.max()) - b0 + 1
    cell = pid.astype("int64") * nb + (bi - b0)  # dense (partition, bucket), (pid, bi) order
    size = int(cell.max()) + 1
    if size <= len(cell) + 1_000_000:  # dense: bincount arrays no longer than the input
        inv, n_cells = cell, size
        cells = np.arange(size, dtype="int64")
    else:  # sparse: compact first (a sort)
        cells, inv = np.unique(cell, return_inverse=True)
        n_cells = len(cells)
    valid = bins >= 0
    f = rc == 2
    failed = _failed_calls(
        inv[f],
        ck[f],
        op_of_pid[pid[f]].astype("int64") * nb + (bi[f] - b0),
        pid[f],
        nb,
        n_cells,
        prior,
    )
    calls = np.bincount(inv, minlength=n_cells)
    present = calls > 0
    stats = {
        "pid": cells[present] // nb,
        "bi": cells[present] % nb + b0,
        "calls": calls[present],
        "failures": np.bincount(inv[rc == 2], minlength=n_cells)[present],
        **{name: v[present] for name, v in failed.items()},
        "expected_errors": np.bincount(inv[rc == 1], minlength=n_cells)[present],
        "dur_n": np.bincount(inv[valid], minlength=n_cells)[present],
        "log_dur_sum": np.bincount(inv, weights=ld, minlength=n_cells)[present],
        "log_dur_sumsq": np.bincount(inv, weights=ld * ld, minlength=n_cells)[present],
    }
    bins = bins[valid]
    nbin = int(bins.max()) + 1 if len(bins) else 1
    hkey, hcount = np.unique(cell[valid] * nbin + bins, return_counts=True)
    hcell = hkey // nbin
    hist = {
        "pid": hcell // nb,
        "bi": hcell % nb + b0,
        "bin": (hkey % nbin).astype("int32"),
        "count": hcount.astype("int64"),
    }
    return stats, hist


class _Reasons(NamedTuple):
    """Rows per drop reason and per flag, and the rows read (rejected lines included)."""

    dropped: dict[str, int]
    flagged: dict[str, int]
    rows_read: int


def _reason_counts(per_cf: np.ndarray, duplicates: int, rejected: int) -> _Reasons:
    """Rows per (drop code, flags) ``per_cf``, duplicates and rejected lines -> the counts."""
    dropped = {r: int(per_cf[c].sum()) for c, r in _DROP_CODES.items()}
    dropped["duplicate"] = duplicates
    dropped["malformed_record"] += rejected
    per_value = per_cf[0]  # flags of kept rows
    flagged = {
        reason: int(per_value[(np.arange(16) & bit) != 0].sum())
        for reason, bit in (
            ("invalid_duration", 1),
            ("invalid_payload_json", 4),
            ("string_number", 2),
            ("noncanonical_operation_case", 8),
        )
    }
    rows_read = sum(dropped.values()) + int(per_value.sum())  # rejected lines included
    return _Reasons(dropped, flagged, rows_read)


def _contract_frames(
    dim: pd.DataFrame,
    stats_cols: dict[str, np.ndarray],
    hist_cols: dict[str, np.ndarray],
    bucket_us: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Grouped columns (``pid``, ``bi`` and values; consumed) -> the stats and hist frames."""
    names = dim.drop_duplicates("pid").set_index("pid").sort_index()
    stats = _partition_frame(
        names,
        stats_cols.pop("pid"),
        stats_cols.pop("bi") * bucket_us,
        stats_cols,
        schema.AGG_COLUMNS,
        sort=False,  # partition ids follow (name, version) order: already sorted by key
    )
    hist = _partition_frame(
        names,
        hist_cols.pop("pid"),
        hist_cols.pop("bi") * bucket_us,
        hist_cols,
        schema.HIST_COLUMNS,
        sort=False,
    )
    return stats, hist


def _partition_frame(
    names: pd.DataFrame,
    pid: np.ndarray,
    b_us: np.ndarray,
    values: dict[str, np.ndarray],
    columns: dict[str, str],
    *,
    sort: bool,
) -> pd.DataFrame:
    """Build a contract frame from partition ids (strings looked up once per partition)."""
    pid = pa.array(pid.astype("int64"))
    frame = pd.DataFrame(
        {
            # Strings looked up with Arrow's take: no Python object per row.
            "operation_name": _arrow_strings(names["name"].to_numpy(), pid),
            "sdk_version": _arrow_strings(names["sdk"].to_numpy(), pid),
            "bucket_start": pd.DatetimeIndex(
                b_us.astype("int64").astype("datetime64[us]"), tz="UTC"
            ).as_unit("ns"),
            **values,
        }
    )
    if sort:
        frame = frame.sort_values(list(schema.AGG_KEY), kind="stable")
    return frame.astype(columns).reset_index(drop=True)


def _arrow_strings(values: np.ndarray, index: pa.Array) -> pd.api.extensions.ExtensionArray:
    taken = pa.array(list(values), type=pa.large_string()).take(index)
    out: pd.api.extensions.ExtensionArray = pd.array(taken, dtype=pd.StringDtype("pyarrow"))
    return out
