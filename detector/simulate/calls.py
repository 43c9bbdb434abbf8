"""Call legs -> operation rows: the sequence of SDK operations, their durations and outcomes.

Consumes :class:`~detector.simulate.population.Legs` and the scenario's :class:`Effect` s;
produces :class:`Rows` (one entry per operation: leg, operation, client timestamp, duration,
result code, UFD details, shared OperationId). Pure and vectorised: each kind of operation is
expanded for all legs at once with ``np.repeat``; Python loops run over operation kinds and
effects, never over rows.

A leg is: CallAgentInit (most legs; a reused agent writes none), then StartCall or Join, or
HandleIncomingCall followed by AcceptIncomingCall / RejectIncomingCall; once connected,
point events (State-changed, Id-changed, ...), AskDevicePermission, Mute/Unmute (each with an
IsMuted-changed), StartVideo/StopVideo, CreateView/DisposeView (several per leg), occasional
screen sharing, UserFacingDiagnostics bad->good pairs sharing one OperationId, and finally
Hangup (or Drop, or nothing when the client died).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import params as P
from .params import ResultCode, SimParams
from .population import Legs, Population
from .scenarios import Effect

__all__ = ["OpTable", "Rows", "expand_legs"]

_S = 1000


@dataclass
class Rows:
    """Operation rows of one part, column-wise."""

    leg: np.ndarray  # index into the part's Legs
    op: np.ndarray  # index into OpTable.names
    t: np.ndarray  # CallClientTimeStamp, epoch ms
    opid: np.ndarray  # index of the OperationId (UFD pairs share one)
    ufd: np.ndarray  # UFD name index, -1 for other rows
    ufd_level: np.ndarray  # 0 good, 1 poor, 2 bad
    dur: np.ndarray  # DurationMs as float (0 for point events)
    res: np.ndarray  # index into OpTable.codes

    @property
    def n(self) -> int:
        return int(self.t.size)

    def take(self, idx: np.ndarray) -> Rows:
        return Rows(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))


class OpTable:
    """Per-operation arrays (medians, sigmas, failure rates) and the table of result codes."""

    def __init__(self, params: SimParams, effects: list[Effect]) -> None:
        self.params = params
        self.names: tuple[str, ...] = tuple(params.ops)
        self.index = {name: i for i, name in enumerate(self.names)}
        specs = [params.ops[n] for n in self.names]
        self.median = np.array([s.median_ms for s in specs], dtype=np.float64)
        self.sigma = np.array([s.sigma for s in specs], dtype=np.float64)
        self.fail = np.array([s.fail for s in specs], dtype=np.float64)
        self.expected = np.array([s.expected for s in specs], dtype=np.float64)
        self.payload_kind: tuple[str, ...] = tuple(s.payload for s in specs)
        self.point = self.median <= 0
        codes: list[ResultCode] = [
            P.SUCCEEDED,
            P.SUCCESS_LEGACY,
            P.LEGACY_FAILED,
            P.LEGACY_EXPECTED,
        ]
        for s in specs:
            codes += [c for c, _ in s.fail_codes] + [c for c, _ in s.expected_codes]
        codes += [e.code for e in effects if e.code is not None]
        self.codes: tuple[ResultCode, ...] = tuple(dict.fromkeys(codes))
        cidx = {c: i for i, c in enumerate(self.codes)}
        self.fail_idx = [np.array([cidx[c] for c, _ in s.fail_codes]) for s in specs]
        self.fail_cum = [_cum([w for _, w in s.fail_codes]) for s in specs]
        self.exp_idx = [np.array([cidx[c] for c, _ in s.expected_codes]) for s in specs]
        self.exp_cum = [_cum([w for _, w in s.expected_codes]) for s in specs]
        self.code_index = cidx
        self.success = np.array([c.result_type.lower().startswith("succ") for c in self.codes])


def _cum(weights: list[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    return np.cumsum(w / w.sum()) if w.size else w


class _Builder:
    """Accumulates row parts for one batch of legs."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, int | np.ndarray, np.ndarray]] = []
        self.ufd: list[tuple[int, np.ndarray, np.ndarray]] = []  # (offset, names, levels)
        self.share: list[tuple[int, np.ndarray]] = []  # (offset of copy, source positions)
        self.size = 0

    def add(self, leg: np.ndarray, op: int, t: np.ndarray) -> int:
        off = self.size
        self.parts.append((leg, op, t))
        self.size += leg.size
        return off


def expand_legs(
    rng: np.random.Generator, legs: Legs, pop: Population, table: OpTable, effects: list[Effect]
) -> Rows:
    """Expand call legs into operation rows with durations and outcomes (see module doc)."""
    p = pop.params
    b = _Builder()
    op = table.index
    n = legs.n
    all_legs = np.arange(n)
    kinds = np.asarray(pop.start_kinds)[legs.start_kind]

    init = all_legs[rng.random(n) < p.agent_init_per_leg]
    pre = np.exp(rng.normal(np.log(8 * _S), 1.0, init.size)).astype(np.int64) + _S
    b.add(init, op["CallAgentInit"], legs.t0[init] - pre)

    incoming = np.isin(kinds, ("AcceptIncomingCall", "RejectIncomingCall"))
    ring = np.where(incoming, rng.integers(2 * _S, 15 * _S, n), 0)
    inc = all_legs[incoming]
    b.add(inc, op["HandleIncomingCall"], legs.t0[inc])
    for kind in pop.start_kinds:
        sel = all_legs[kinds == kind]
        b.add(sel, op[kind], legs.t0[sel] + ring[sel])

    conn = all_legs[kinds != "RejectIncomingCall"]
    t_on = legs.t0 + ring
    t_off = t_on + legs.length_ms
    web = np.asarray(pop.platforms)[legs.platform] == "Web"

    def during(idx: np.ndarray, lo: float = 0.0, hi: float = 0.95) -> np.ndarray:
        u = rng.uniform(lo, hi, idx.size)
        return np.asarray(t_on[idx] + (u * legs.length_ms[idx]).astype(np.int64) + 1)

    def later(idx: np.ndarray, t_src: np.ndarray) -> np.ndarray:
        room = np.maximum(t_off[idx] - t_src, 2)
        return np.asarray(t_src + 1 + (rng.random(idx.size) * (room - 1)).astype(np.int64))

    follow = {
        "MuteMicrophone": ("UnmuteMicrophone", 0.9),
        "StartVideo": ("StopVideo", 1.0),
        "CreateView": ("DisposeView", 0.95),
        "StartScreenShare": ("StopScreenShare", 1.0),
    }
    for name, mean in p.leg_mix:
        lam = np.full(conn.size, mean)
        if name == "CreateView":
            lam = np.where(legs.group[conn], mean, mean * 0.4)
        elif name == "OptimalVideoCount-changed":
            lam = np.where(legs.group[conn], mean, 0.0)
        elif name == "PageHidden":
            lam = np.where(web[conn], mean, 0.0)
        if name in p.bernoulli_ops:
            counts = (rng.random(conn.size) < lam).astype(np.int64)
        else:
            counts = rng.poisson(lam)
        idx = np.repeat(conn, counts)
        t = during(idx, 0.0, 0.9 if name in follow or name == "UserFacingDiagnostics" else 0.98)
        off = b.add(idx, op[name], t)
        if name == "UserFacingDiagnostics":
            names, levels = _ufd_draw(rng, p, idx.size)
            b.ufd.append((off, names, levels))
            rec = rng.random(idx.size) < p.ufd_recovery
            src = np.nonzero(rec)[0]
            t_good = t[src] + np.exp(rng.normal(np.log(30 * _S), 0.8, src.size)).astype(np.int64)
            off2 = b.add(idx[src], op[name], t_good)
            b.ufd.append((off2, names[src], np.zeros(src.size, dtype=np.int8)))
            b.share.append((off2, off + src))
        elif name in follow:
            second, prob = follow[name]
            keep = np.nonzero(rng.random(idx.size) < prob)[0]
            t2 = later(idx[keep], t[keep])
            b.add(idx[keep], op[second], t2)
            if name == "MuteMicrophone":  # each mute and unmute also fires IsMuted-changed
                for ids, tt in ((idx, t), (idx[keep], t2)):
                    b.add(ids, op["IsMuted-changed"], tt + rng.integers(5, 60, ids.size))

    end_u = rng.random(conn.size)
    hang = conn[end_u < p.hangup_share]
    drop = conn[(end_u >= p.hangup_share) & (end_u < p.hangup_share + p.drop_share)]
    b.add(hang, op["Hangup"], t_off[hang])
    b.add(drop, op["Drop"], t_off[drop])

    rows = _assemble(b)
    _durations(rng, rows, legs, pop, table, effects)
    _outcomes(rng, rows, legs, pop, table, effects)
    return _thin(rng, rows, legs, pop, table, effects)


def _ufd_draw(rng: np.random.Generator, p: SimParams, n: int) -> tuple[np.ndarray, np.ndarray]:
    w = np.array([x[2] for x in p.ufd_names])
    names = np.minimum(np.searchsorted(np.cumsum(w / w.sum()), rng.random(n)), w.size - 1)
    network = np.array([x[1] == "network" for x in p.ufd_names])[names]
    # Network UFDs go Poor or Bad; flag UFDs are simply "bad" (level 2).
    levels = np.where(network & (rng.random(n) < 0.4), 1, 2).astype(np.int8)
    return names.astype(np.int8), levels


def _assemble(b: _Builder) -> Rows:
    leg = np.concatenate([x[0] for x in b.parts]).astype(np.int64)
    opc = np.concatenate([np.full(x[0].size, x[1], dtype=np.int16) for x in b.parts])
    t = np.concatenate([x[2] for x in b.parts]).astype(np.int64)
    n = leg.size
    opid = np.arange(n, dtype=np.int64)
    for off, src in b.share:
        opid[off : off + src.size] = src
    ufd = np.full(n, -1, dtype=np.int8)
    lvl = np.zeros(n, dtype=np.int8)
    for off, names, levels in b.ufd:
        ufd[off : off + names.size] = names
        lvl[off : off + names.size] = levels
    zeros = np.zeros(n)
    return Rows(leg, opc, t, opid, ufd, lvl, zeros.copy(), np.zeros(n, dtype=np.int16))


def _effect_mask(rows: Rows, legs: Legs, pop: Population, table: OpTable, e: Effect) -> np.ndarray:
    m = (rows.t >= e.start_ms) & (rows.t < e.end_ms)
    if e.operation_name is not None:
        m &= rows.op == table.index.get(e.operation_name, -1)
    if e.sdk_version is not None:
        vidx = [i for i, v in enumerate(pop.versions) if v.sdk_version == e.sdk_version]
        m &= np.isin(legs.version[rows.leg], vidx)
    return m


def _durations(
    rng: np.random.Generator,
    rows: Rows,
    legs: Legs,
    pop: Population,
    table: OpTable,
    effects: list[Effect],
) -> None:
    p = pop.params
    plat_f = np.array([dict(p.platform_latency).get(name, 1.0) for name in pop.platforms])
    ver_f = np.array([v.latency_factor for v in pop.versions])
    load = 1.0 + p.load_latency * (pop.profile.rate(rows.t) - 1.0)
    factor = plat_f[legs.platform[rows.leg]] * ver_f[legs.version[rows.leg]] * load
    tail = rng.random(rows.n) < p.tail_share
    z = rng.standard_normal(rows.n)
    factor = factor * np.where(tail, np.exp(rng.normal(1.0, 0.4, rows.n)), 1.0)
    for e in effects:
        if e.kind != "duration":
            continue
        m = _effect_mask(rows, legs, pop, table, e)
        if e.share < 1.0:  # a slow minority (drawn only then: other effects stay as they were)
            m &= rng.random(rows.n) < e.share
        if e.ramp:
            frac = np.clip((rows.t[m] - e.start_ms) / max(e.end_ms - e.start_ms, 1), 0.0, 1.0)
            factor[m] *= 1.0 + (e.magnitude - 1.0) * frac**e.power
        else:
            factor[m] *= e.magnitude
    med = table.median[rows.op]
    dur = med * factor * np.exp(table.sigma[rows.op] * z)
    rows.dur = np.where(table.point[rows.op], 0.0, np.maximum(np.rint(dur), 1.0))


def _outcomes(
    rng: np.random.Generator,
    rows: Rows,
    legs: Legs,
    pop: Population,
    table: OpTable,
    effects: list[Effect],
) -> None:
    q = pop.params.quirks
    n = rows.n
    u = rng.random(n)
    f = table.fail[rows.op]
    e = table.expected[rows.op]
    res = np.zeros(n, dtype=np.int16)  # Succeeded
    pick = rng.random(n)
    for kind, hit in (("fail", u < f), ("exp", (u >= f) & (u < f + e))):
        for o in np.unique(rows.op[hit]):
            m = hit & (rows.op == o)
            idx = table.fail_idx[o] if kind == "fail" else table.exp_idx[o]
            cum = table.fail_cum[o] if kind == "fail" else table.exp_cum[o]
            res[m] = idx[np.minimum(np.searchsorted(cum, pick[m]), idx.size - 1)]
    for eff in effects:
        if eff.kind != "failure" or eff.code is None:
            continue
        m = _effect_mask(rows, legs, pop, table, eff)
        m &= rng.random(n) < eff.magnitude
        res[m] = table.code_index[eff.code]
    # Legacy vocabulary (reference §1.4), applied after the effects so spikes get it too.
    types = np.array([c.result_type for c in table.codes])[res]
    legacy = rng.random(n)
    res[(res == 0) & (legacy < q.legacy_success)] = table.code_index[P.SUCCESS_LEGACY]
    unexpected = np.strings.startswith(types, "Unexpected")
    res[unexpected & (legacy < q.legacy_failed)] = table.code_index[P.LEGACY_FAILED]
    res[(types == "ExpectedError") & (legacy < q.legacy_expected)] = table.code_index[
        P.LEGACY_EXPECTED
    ]
    rows.res = res


def _thin(
    rng: np.random.Generator,
    rows: Rows,
    legs: Legs,
    pop: Population,
    table: OpTable,
    effects: list[Effect],
) -> Rows:
    keep = np.ones(rows.n, dtype=bool)
    for e in effects:
        if e.kind == "volume":
            m = _effect_mask(rows, legs, pop, table, e)
            keep &= ~(m & (rng.random(rows.n) >= e.magnitude))
    return rows if keep.all() else rows.take(np.nonzero(keep)[0])
