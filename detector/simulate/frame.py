"""Operation rows -> an Arrow table with the exact columns of ``ACSCallClientOperations``.

Consumes :class:`~detector.simulate.calls.Rows` of one part; produces a ``pyarrow.Table`` with
:data:`detector.schema.LOG_COLUMNS` in order, plus one private column ``_string_numbers``
(rows whose ``DurationMs``/``ResultSignature`` the JSON writers emit as strings). Here the
ingestion lag (``TimeGenerated``) and the data-shape quirks of reference §6 are applied:
invalid payload JSON, casing variants, empty ids and names, the pseudo operation, empty
durations and timestamps, and exact duplicates ingested again later. Pure (Generator passed in).

Value shapes follow the Log Analytics API: strings are never null (empty string instead),
``DurationMs``/``ResultSignature``/``CallClientTimeStamp`` may be null, ``OperationPayload``
(a ``dynamic``) is JSON text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detector.schema import LOG_COLUMNS, PSEUDO_OPERATION

from .calls import OpTable, Rows
from .params import QuirkRates, SimParams
from .population import Legs, Population
from .strings import guid_matrix, matrix_rows

__all__ = ["ARROW_SCHEMA", "PRIVATE_COLUMNS", "PayloadCache", "rows_to_table"]

_TS: Final = pa.timestamp("us", tz="UTC")
_TYPES: Final = {
    "string": pa.string(),
    "datetime": _TS,
    "long": pa.int64(),
    "int": pa.int32(),
    "dynamic": pa.string(),
}
#: Arrow schema of the written table: the Log Analytics columns with their Kusto types.
ARROW_SCHEMA: Final = pa.schema([(c, _TYPES[t]) for c, t in LOG_COLUMNS.items()])
#: Columns the writers use and never write.
PRIVATE_COLUMNS: Final = ("_string_numbers",)

_LEVELS = ("Good", "Poor", "Bad")


@dataclass(frozen=True)
class _PayloadParts:
    """The parts one payload text is built from, decoded from a row's mixed-radix code (in
    :attr:`PayloadCache._RADIX` order): indices into the operation, platform, result-code and
    UFD tables, the stream id and UFD level, and 0/1 flags (group call, incoming, screen
    share, camelCase keys, sub-code as a string, invalid JSON)."""

    op: int
    plat: int
    group: int
    incoming: int
    res: int
    screen: int
    sid: int
    ufd: int
    level: int
    camel: int
    substr: int
    invalid: int


class PayloadCache:
    """Builds ``OperationPayload`` texts per combination of their parts, once per combination.

    A payload depends only on a few small categorical parts (operation, platform, call type,
    direction, result code, stream, UFD name/level, key casing, quirk flags); rows carry the
    mixed-radix code of their combination and each distinct code is rendered once in Python.
    """

    def __init__(self, pop: Population, table: OpTable) -> None:
        self.pop = pop
        self.table = table
        self._cache: dict[int, str] = {}

    # radices of the parts, in order
    _RADIX = (64, 8, 2, 2, 128, 2, 8, 32, 4, 2, 2, 2)

    def encode(self, parts: list[np.ndarray]) -> np.ndarray:
        """Mixed-radix code of each row's payload parts (in :attr:`_RADIX` order).

        Raises
        ------
        ValueError
            A part exceeds its radix (e.g. more than 64 operations configured).
        """
        code = np.zeros(parts[0].size, dtype=np.int64)
        for i, (part, radix) in enumerate(zip(parts, self._RADIX, strict=True)):
            if part.size and int(part.max()) >= radix:
                raise ValueError(f"payload part {i} has {int(part.max()) + 1} values (max {radix})")
            code = code * radix + part.astype(np.int64)
        return code

    def _decode(self, code: int) -> _PayloadParts:
        out = []
        for radix in reversed(self._RADIX):
            out.append(code % radix)
            code //= radix
        return _PayloadParts(*out[::-1])

    def texts(self, codes: np.ndarray) -> pa.Array:
        uniq, inverse = np.unique(codes, return_inverse=True)
        strings = []
        for c in uniq.tolist():
            s = self._cache.get(c)
            if s is None:
                s = self._cache[c] = self._render(self._decode(c))
            strings.append(s)
        return pc.take(pa.array(strings, type=pa.string()), pa.array(inverse.ravel()))

    def _render(self, parts: _PayloadParts) -> str:
        """One combination's parts -> its ``OperationPayload`` text."""
        p = self.pop.params
        name = self.table.names[parts.op]
        kind = self.table.payload_kind[parts.op]
        code = self.table.codes[parts.res]
        platform = self.pop.platforms[parts.plat]
        call_type = "Group" if parts.group else "1 to 1"

        def k(key: str) -> str:
            return key[0].lower() + key[1:] if parts.camel else key

        d: dict[str, Any] = {}
        if kind == "call":
            d["CallDirection"] = "Incoming" if parts.incoming else "Outgoing"
        if kind in ("video", "view", "share"):
            d[k("StreamType")] = "ScreenSharing" if (parts.screen or kind == "share") else "Video"
            if kind == "view":
                d[k("StreamId")] = f"{parts.sid + 1}.0"
            d[k("Source")] = "remote" if kind == "view" else "local"
        if kind == "ufd":
            uname, ukind, _ = p.ufd_names[parts.ufd - 1]
            d[k("DiagnosticChanged")] = uname
            if ukind == "flag" and p.ufd_flag_encoding == "value":
                d[k("DiagnosticValue")] = parts.level > 0
            else:
                lvl = _LEVELS[parts.level]
                d[k("DiagnosticQuality")] = lvl.lower() if parts.camel else lvl
        d["SdkPlatform"] = platform
        if name not in ("CallAgentInit", "AskDevicePermission") and kind != "ufd":
            d["CallType"] = call_type
        if not code.result_type.lower().startswith("succ"):
            if kind == "call":
                d["FailureReason"] = code.reason or "Unknown"
            if code.subcode is not None:
                d["SubCode"] = str(code.subcode) if parts.substr else code.subcode
        text = json.dumps(d, separators=(",", ":"))
        # The docs sample prints the payload as a quoted string with unescaped inner quotes.
        return f'"{text}"' if parts.invalid else text


def _const(value: str, n: int) -> pa.Array:
    return pc.take(pa.array([value], type=pa.string()), pa.array(np.zeros(n, dtype=np.int32)))


def _pick(values: list[str] | tuple[str, ...], idx: np.ndarray) -> pa.Array:
    return pc.take(pa.array(list(values), type=pa.string()), pa.array(idx.astype(np.int32)))


def _lag_ms(rng: np.random.Generator, p: SimParams, n: int) -> np.ndarray:
    w = np.array([c.weight for c in p.lag])
    comp = np.minimum(np.searchsorted(np.cumsum(w / w.sum()), rng.random(n)), w.size - 1)
    med = np.array([c.median_s for c in p.lag])[comp]
    sig = np.array([c.sigma for c in p.lag])[comp]
    lag_s = med * np.exp(sig * rng.standard_normal(n))
    return np.asarray((np.maximum(lag_s, 5.0) * 1000).astype(np.int64))


class _Part(NamedTuple):
    """One part's rows in output order, with the per-row facts several columns need."""

    r: Rows
    n: int
    leg: np.ndarray
    legs: Legs
    payload_kind: np.ndarray
    incoming: np.ndarray


class _Ids(NamedTuple):
    """The id columns of one part (empty strings where a quirk blanks them)."""

    operation_id: pa.Array
    call_id: pa.Array
    participant: pa.Array
    endpoint: pa.Array
    client: pa.Array


class _Numbers(NamedTuple):
    """The numeric and time columns of one part, before they become Arrow arrays."""

    dur: np.ndarray
    dur_null: np.ndarray
    ts_null: np.ndarray
    tg: np.ndarray  # TimeGenerated in ms (the duplicates' lag is added to it)
    sig: np.ndarray
    rtype: pa.Array
    string_numbers: np.ndarray


def rows_to_table(
    rng: np.random.Generator,
    rows: Rows,
    legs: Legs,
    pop: Population,
    table: OpTable,
    payloads: PayloadCache,
    end_ms: int,
) -> pa.Table:
    """Apply lag and quirks to one part's rows and build its Arrow table (see module doc).

    Rows whose ``CallClientTimeStamp`` falls outside ``[pop.start_ms, end_ms)`` are left out, so
    the data range is exactly the simulated period (``TimeGenerated`` may run past its end).
    """
    p = pop.params
    part = _ordered_part(rows, legs, pop, table, end_ms)
    # The helpers draw from rng in this order; changing it changes every simulated file.
    payload = _payload_column(rng, part, table, payloads, p.quirks)
    names = _name_column(rng, part, table, p.quirks)
    ids = _id_columns(rng, part, table, p.quirks)
    nums = _numbers(rng, part, table, p)
    out = pa.table(_columns(part, pop, payload, names, ids, nums))
    return _add_duplicates(rng, out, nums.tg, p)


def _ordered_part(rows: Rows, legs: Legs, pop: Population, table: OpTable, end_ms: int) -> _Part:
    """A part's rows -> those inside the period, sorted by client time, with per-row facts."""
    inside = (rows.t >= pop.start_ms) & (rows.t < end_ms)
    order = np.nonzero(inside)[0]
    order = order[np.argsort(rows.t[order], kind="stable")]
    r = rows.take(order)
    leg = r.leg
    kinds = np.asarray(pop.start_kinds)[legs.start_kind[leg]]
    incoming = np.isin(kinds, ("AcceptIncomingCall", "RejectIncomingCall"))
    payload_kind = np.asarray(table.payload_kind)[r.op]
    return _Part(r, r.n, leg, legs, payload_kind, incoming)


def _payload_column(
    rng: np.random.Generator, part: _Part, table: OpTable, payloads: PayloadCache, q: QuirkRates
) -> pa.Array:
    """Part rows -> ``OperationPayload`` texts (draws the payload quirks from rng)."""
    r, n, leg, legs, payload_kind = part.r, part.n, part.leg, part.legs, part.payload_kind
    # Parts that do not change a payload are zeroed, so fewer distinct payloads are rendered.
    view = payload_kind == "view"
    screen = view & (rng.random(n) < 0.1)
    sid = np.where(view, rng.integers(0, 8, n), 0)
    keyed = np.isin(payload_kind, ("video", "view", "share", "ufd"))
    camel = keyed & (rng.random(n) < q.camel_case_keys)
    substr = ~table.success[r.res] & (rng.random(n) < q.subcode_as_string)
    invalid = rng.random(n) < q.invalid_payload
    group = legs.group[leg] & ~np.isin(payload_kind, ("ufd",))
    codes = payloads.encode(
        [
            r.op,
            legs.platform[leg],
            group,
            part.incoming & (payload_kind == "call"),
            r.res,
            screen,
            sid,
            r.ufd.astype(np.int64) + 1,
            r.ufd_level,
            camel,
            substr,
            invalid,
        ]
    )
    return payloads.texts(codes)


def _name_column(rng: np.random.Generator, part: _Part, table: OpTable, q: QuirkRates) -> pa.Array:
    """Part rows -> ``OperationName`` (draws lower-case twins, empty and pseudo names)."""
    r, n = part.r, part.n
    names = np.asarray(table.names)
    u = rng.random(n)
    name_idx = r.op.astype(np.int32)
    vocab = list(names) + [x[0].lower() + x[1:] for x in names] + ["", PSEUDO_OPERATION]
    k = len(names)
    # Microsoft lists lower-case twins only for the *-changed events and PageHidden.
    twins = np.array([x.endswith("-changed") or x == "PageHidden" for x in names])
    lower = twins[r.op] & (u < q.lowercase_event)
    name_idx = np.where(lower, name_idx + k, name_idx)
    u2 = rng.random(n)
    name_idx = np.where(u2 < q.empty_operation_name, 2 * k, name_idx)
    name_idx = np.where(
        (u2 >= q.empty_operation_name) & (u2 < q.empty_operation_name + q.pseudo_operation),
        2 * k + 1,
        name_idx,
    )
    return _pick(vocab, name_idx)


def _id_columns(rng: np.random.Generator, part: _Part, table: OpTable, q: QuirkRates) -> _Ids:
    """Part rows -> operation, call, participant, endpoint and client ids (draws empties)."""
    r, n, leg, legs = part.r, part.n, part.leg, part.legs
    uniq, inv = np.unique(r.opid, return_inverse=True)
    op_guids = guid_matrix(rng, uniq.size)
    operation_id = matrix_rows(op_guids, inv.ravel())
    operation_id = pc.if_else(pa.array(rng.random(n) < q.empty_operation_id), "", operation_id)
    is_init = r.op == table.index["CallAgentInit"]
    no_call = (is_init & (rng.random(n) < q.agent_init_without_call)) | (
        ~is_init & (rng.random(n) < q.empty_ids)
    )
    no_call_pa = pa.array(no_call)
    call_id = pc.if_else(no_call_pa, "", matrix_rows(legs.ids[:, 0], leg))
    participant = pc.if_else(no_call_pa, "", matrix_rows(legs.ids[:, 1], leg))
    endpoint = matrix_rows(legs.ids[:, 2], leg)
    client = matrix_rows(legs.ids[:, 3], leg)
    return _Ids(operation_id, call_id, participant, endpoint, client)


def _numbers(rng: np.random.Generator, part: _Part, table: OpTable, p: SimParams) -> _Numbers:
    """Part rows -> durations, times with ingestion lag and results (draws nulls and lag)."""
    q = p.quirks
    r, n = part.r, part.n
    point = table.point[r.op]
    dur = r.dur.astype(np.int64)
    dur_null = ~point & (rng.random(n) < q.null_duration)
    ts_null = rng.random(n) < q.null_timestamp
    tg = r.t + _lag_ms(rng, p, n)
    sig = np.array([c.signature for c in table.codes], dtype=np.int32)[r.res]
    rtype = _pick([c.result_type for c in table.codes], r.res)
    string_numbers = rng.random(n) < q.string_numbers
    return _Numbers(dur, dur_null, ts_null, tg, sig, rtype, string_numbers)


def _columns(
    part: _Part,
    pop: Population,
    payload: pa.Array,
    names: pa.Array,
    ids: _Ids,
    nums: _Numbers,
) -> dict[str, pa.Array]:
    """Part rows and their built columns -> every table column, in ``LOG_COLUMNS`` order."""
    p = pop.params
    r, n, leg, legs = part.r, part.n, part.leg, part.legs
    ua_idx = legs.version[leg] * pop.n_browsers + np.where(
        np.asarray(pop.platforms)[legs.platform[leg]] == "Web", legs.browser[leg], 0
    )
    ua_vocab = [
        pop.user_agent(v, b) for v in range(len(pop.versions)) for b in range(pop.n_browsers)
    ]
    ver_vocab = [v.sdk_version for v in pop.versions]
    return {
        "TenantId": _const(p.tenant_id, n),
        "TimeGenerated": pa.array(nums.tg * 1000, type=pa.int64()).cast(_TS),
        "CallClientTimeStamp": pa.array(r.t * 1000, mask=nums.ts_null, type=pa.int64()).cast(_TS),
        "CallId": ids.call_id,
        "ClientInstanceId": ids.client,
        "DurationMs": pa.array(nums.dur, mask=nums.dur_null, type=pa.int64()),
        "EndpointId": ids.endpoint,
        "OperationId": ids.operation_id,
        "OperationName": names,
        "OperationPayload": payload,
        "OperationType": _const("client-api-request", n),
        "ParticipantId": ids.participant,
        "ResultSignature": pa.array(nums.sig, type=pa.int32()),
        "ResultType": nums.rtype,
        "SdkVersion": _pick(ver_vocab, legs.version[leg]),
        "UserAgent": _pick(ua_vocab, ua_idx),
        "SourceSystem": _const("Azure", n),
        "Type": _const("ACSCallClientOperations", n),
        "_ResourceId": _const(resource_id(p).lower(), n),
        "_string_numbers": pa.array(nums.string_numbers),
    }


def _add_duplicates(
    rng: np.random.Generator, out: pa.Table, tg: np.ndarray, p: SimParams
) -> pa.Table:
    """Part table and its TimeGenerated (ms) -> with exact duplicates ingested again later."""
    dup = np.nonzero(rng.random(out.num_rows) < p.quirks.duplicate)[0]
    if dup.size:
        copies = out.take(pa.array(dup))
        extra = np.exp(rng.normal(np.log(p.duplicate_extra_lag_s), 1.0, dup.size)) * 1000
        tg2 = pa.array((tg[dup] + extra.astype(np.int64)) * 1000, type=pa.int64()).cast(_TS)
        copies = copies.set_column(
            copies.schema.get_field_index("TimeGenerated"), "TimeGenerated", tg2
        )
        out = pa.concat_tables([out, copies])
    return out


def resource_id(p: SimParams) -> str:
    """The ACS resource id, upper-case as in Diagnostic Settings blob paths."""
    return (
        f"/SUBSCRIPTIONS/{p.subscription_id.upper()}/RESOURCEGROUPS/{p.resource_group.upper()}"
        f"/PROVIDERS/MICROSOFT.COMMUNICATION/COMMUNICATIONSERVICES/{p.resource_name.upper()}"
    )
