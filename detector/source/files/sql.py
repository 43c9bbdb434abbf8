"""The DuckDB SQL of the file source: pure text builders, as :mod:`detector.source.kql` is for
Log Analytics.

Nothing here touches a connection or a file. Column names are resolved case-insensitively per
file; each format gets a normalised SELECT (typed Parquet and all-text CSV in
:func:`_typed_select`, one JSON value per row in :func:`_json_select`) of the same columns;
:func:`_norm_sql` unions them and selects by arrival; :func:`_names_sql` lists the distinct
names and :func:`_rows_sql` projects each row to the integer codes laid out by :class:`_Shape`.
:data:`RESULT_CLASS_SQL` is :func:`detector.schema.classify_result` in SQL (a test holds them
equal).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from detector import schema
from detector.source.files.discover import _us
from detector.source.resources import resource_key

__all__ = ["RESULT_CLASS_SQL"]

#: ``ResultType`` -> result class, written from :func:`detector.schema.classify_result`:
#: success when the lower-cased text contains ``success`` or ``succeeded``; expected error when
#: it starts with ``expected``; anything else (empty, unknown, NULL) a failure.
RESULT_CLASS_SQL: Final = (
    "CASE WHEN contains(lower(coalesce({rt}, '')), 'success') "
    "OR contains(lower(coalesce({rt}, '')), 'succeeded') THEN 'success' "
    "WHEN starts_with(lower(coalesce({rt}, '')), 'expected') THEN 'expected_error' "
    "ELSE 'failure' END"
)

# Columns the pipeline needs (required ones + optional ones read for flags).
_NEEDED: Final[tuple[str, ...]] = (
    *schema.REQUIRED_COLUMNS,
    "OperationPayload",
    "ResultSignature",
    "CallId",  # optional: the call behind a failure (failed_calls)
)

_OPTIONAL: Final[frozenset[str]] = frozenset({"OperationPayload", "ResultSignature"})

# The resource column: ``_ResourceId`` (Log Analytics export) or ``resourceId`` (Diagnostic
# Settings), lower-cased as _resolve compares them.
_RESOURCE_NAMES: Final[tuple[str, ...]] = ("_resourceid", "resourceid")

# ASCII whitespace trimmed from names and ids (DuckDB's trim() alone strips spaces only).
_WS: Final = "' \t\n\r\x0b\x0c'"

_LN_GAMMA: Final = math.log(schema.HIST_GAMMA)

_DROP_CODES: Final[dict[int, str]] = {i + 1: r for i, r in enumerate(schema.DROP_REASONS)}

_CODE: Final[dict[str, int]] = {r: c for c, r in _DROP_CODES.items()}

# Names of DuckDB's tables of rejected lines (undecodable, too long, too many fields).
_REJECTS: Final = "rejects_table='_acs_rej', rejects_scan='_acs_rej_scan', store_rejects=true"

# Column that carries each row's file name (a name no export uses).
_FILE_COL: Final = "_acs_file"

_PSEUDO_LOWER: Final = schema.PSEUDO_OPERATION.lower()


def _resolve(columns: Iterable[str]) -> dict[str, str]:
    """Map our column names to the file's, case-insensitively (``TimeGenerated [UTC]`` too)."""
    by_lower: dict[str, str] = {}
    for col in columns:
        key = re.sub(r"\s*\[[^\]]*\]\s*$", "", col).strip().lower()
        by_lower.setdefault(key, col)
    out = {name: by_lower[name.lower()] for name in _NEEDED if name.lower() in by_lower}
    res = next((by_lower[n] for n in _RESOURCE_NAMES if n in by_lower), None)
    if res is not None:  # optional: which ACS resource wrote the row
        out["_ResourceId"] = res
    return out


def _missing_message(path: Path, found: Iterable[str], fmt_label: str) -> str:
    resolved = _resolve(found)
    missing = [c for c in schema.REQUIRED_COLUMNS if c not in resolved]
    return (
        f"{path}: not an ACS call client operations export ({fmt_label}): missing required "
        f"column{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
    )


def _q(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _file_list(files: Sequence[Path]) -> str:
    return "[" + ", ".join(_lit(str(f)) for f in files) + "]"


def _is_text_type(typ: str) -> bool:
    return typ.upper() in ("VARCHAR", "JSON") or typ.upper().startswith("VARCHAR")


_INTEGER_TYPES: Final = frozenset(
    {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT"}
    | {"UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT"}
)


def _is_numeric_type(typ: str) -> bool:
    t = typ.upper()
    return t in {
        "TINYINT",
        "SMALLINT",
        "INTEGER",
        "BIGINT",
        "HUGEINT",
        "UTINYINT",
        "USMALLINT",
        "UINTEGER",
        "UBIGINT",
        "UHUGEINT",
        "FLOAT",
        "DOUBLE",
    } or t.startswith("DECIMAL")


def _ts_expr(col: str | None, typ: str) -> str:
    if col is None:
        return "CAST(NULL AS BIGINT)"
    t = typ.upper()
    if t.startswith("TIMESTAMP") or t == "DATE":
        return f"_acs_in_range(epoch_us(CAST({_q(col)} AS TIMESTAMPTZ)))"
    if _is_text_type(t):
        return f"_acs_ts_us({_q(col)})"
    return "CAST(NULL AS BIGINT)"


def _num_exprs(col: str | None, typ: str) -> tuple[str, str]:
    """(value as finite DOUBLE or NULL, arrived-as-numeric-string flag)."""
    if col is None:
        return "CAST(NULL AS DOUBLE)", "FALSE"
    if _is_numeric_type(typ):
        return f"_acs_finite(CAST({_q(col)} AS DOUBLE))", "FALSE"
    if _is_text_type(typ):
        value = f"_acs_finite(TRY_CAST({_q(col)} AS DOUBLE))"  # the cast ignores blanks
        return value, f"({value} IS NOT NULL)"
    return "CAST(NULL AS DOUBLE)", "FALSE"


def _payload_bad_expr(col: str | None, typ: str) -> str:
    if col is None or not _is_text_type(typ):
        return "FALSE"
    c = _q(col)
    # A CASE, not AND: DuckDB evaluates both sides of AND on every row, and trim() on ten
    # million payloads costs more than the rest of the row; here it runs on invalid ones only.
    return f"CASE WHEN {c} IS NULL OR json_valid({c}) THEN FALSE ELSE trim({c}, {_WS}) <> '' END"


def _str_expr(col: str | None) -> str:
    return "CAST(NULL AS VARCHAR)" if col is None else f"CAST({_q(col)} AS VARCHAR)"


def _typed_select(source: str, cols: dict[str, str], types: dict[str, str], *, csv_: bool) -> str:
    """Normalised SELECT over a typed source (Parquet, or CSV read as all-VARCHAR)."""

    def col(name: str) -> str | None:
        return cols.get(name)

    def typ(name: str) -> str:
        c = cols.get(name)
        return types.get(c, "VARCHAR") if c is not None else "VARCHAR"

    dur, dur_str = _num_exprs(col("DurationMs"), typ("DurationMs"))
    _, rs_str = _num_exprs(col("ResultSignature"), typ("ResultSignature"))
    if csv_:  # CSV has no types: a number in a CSV field is not a "string number".
        dur_str = rs_str = "FALSE"
    return (
        "SELECT "
        f"{_ts_expr(col('TimeGenerated'), typ('TimeGenerated'))} AS tg_us, "
        f"{_ts_expr(col('CallClientTimeStamp'), typ('CallClientTimeStamp'))} AS cct_us, "
        f"{_str_expr(col('OperationName'))} AS op, "
        f"{_str_expr(col('OperationId'))} AS opid, "
        f"{_str_expr(col('ResultType'))} AS rt, "
        f"{dur} AS dur, "
        f"({dur_str} OR {rs_str}) AS str_num, "
        f"{_payload_bad_expr(col('OperationPayload'), typ('OperationPayload'))} AS pay_bad, "
        f"coalesce({_str_expr(col('SdkVersion'))}, '') AS sdk, "
        f"{_str_expr(col('CallId'))} AS call, "
        f"{_str_expr(col('_ResourceId'))} AS res, "
        f"FALSE AS bad, {_FILE_COL} "
        f"FROM {source}"
    )


#: Where a JSON record names its ACS resource: top level in both exports, under
#: ``properties`` in hand-made files.
_RESOURCE_JSON: Final[tuple[str, ...]] = (
    "$.resourceId",
    "$._ResourceId",
    "$.ResourceId",
    "$.properties._ResourceId",
    "$.properties.resourceId",
)


def _json_key_variants(name: str) -> list[str]:
    camel = name[0].lower() + name[1:]
    return list(dict.fromkeys([name, camel, name.lower()]))


def _json_select(source: str) -> str:
    """Normalised SELECT over one-JSON-value-per-row text (column ``j``).

    Each field is looked up under ``properties`` first (Diagnostic Settings export), then at the
    top level (Log Analytics JSON), in PascalCase, camelCase and lower case; ``TimeGenerated``
    falls back to the top-level ``time``. One ``json_extract`` with all paths parses each line
    once.
    """
    paths: list[str] = []
    where: dict[str, list[int]] = {}
    top: dict[str, list[int]] = {}
    for name in _NEEDED:
        variants = _json_key_variants(name)
        where[name], top[name] = [], []
        for v in variants:
            where[name].append(len(paths) + 1)  # DuckDB lists are 1-based
            paths.append(f"$.properties.{v}")
        for v in [*variants, *(["time"] if name == "TimeGenerated" else [])]:
            top[name].append(len(paths) + 1)
            paths.append(f"$.{v}")
    res_at = list(range(len(paths) + 1, len(paths) + 1 + len(_RESOURCE_JSON)))
    paths += list(_RESOURCE_JSON)
    plist = "[" + ", ".join(_lit(p) for p in paths) + "]"

    def first(indices: list[int]) -> str:
        return "coalesce(" + ", ".join(f"nullif(v[{i}], 'null')" for i in indices) + ")"

    def raw(name: str) -> str:
        # First present, non-null JSON text: under properties, then at the top level. The
        # top-level operationName of a Diagnostic Settings record is the log category's
        # ("CallClientOperations"), not the SDK operation: used only without properties.
        if name == "OperationName":
            return f"CASE WHEN has_props THEN {first(where[name])} ELSE {first(top[name])} END"
        return first(where[name] + top[name])

    def text(name: str) -> str:
        return f"json_extract_string({raw(name)}, '$')"

    def is_str(name: str) -> str:
        return f"coalesce(starts_with({raw(name)}, '\"'), FALSE)"

    dur_val = f"_acs_finite(TRY_CAST({text('DurationMs')} AS DOUBLE))"
    rs_val = f"_acs_finite(TRY_CAST({text('ResultSignature')} AS DOUBLE))"
    pay = text("OperationPayload")
    pay_bad = (
        f"CASE WHEN NOT {is_str('OperationPayload')} THEN FALSE "
        f"WHEN {pay} IS NULL OR json_valid({pay}) THEN FALSE "
        f"ELSE trim({pay}, {_WS}) <> '' END"
    )
    return (
        "SELECT "
        f"_acs_ts_us({text('TimeGenerated')}) AS tg_us, "
        f"_acs_ts_us({text('CallClientTimeStamp')}) AS cct_us, "
        f"{text('OperationName')} AS op, "
        f"{text('OperationId')} AS opid, "
        f"{text('ResultType')} AS rt, "
        f"{dur_val} AS dur, "
        f"(({is_str('DurationMs')} AND {dur_val} IS NOT NULL) "
        f"OR ({is_str('ResultSignature')} AND {rs_val} IS NOT NULL)) AS str_num, "
        f"{pay_bad} AS pay_bad, "
        f"coalesce({text('SdkVersion')}, '') AS sdk, "
        f"{text('CallId')} AS call, "
        f"json_extract_string({first(res_at)}, '$') AS res, "
        f"NOT ok AS bad, {_FILE_COL} "
        f"FROM (SELECT ok, {_FILE_COL}, CASE WHEN ok THEN json_extract(j, {plist}) END AS v, "
        f"CASE WHEN ok THEN json_type(j, '$.properties') = 'OBJECT' ELSE FALSE END AS has_props "
        # A record is a JSON object; anything else on a line (text, an array, a number, a
        # truncated object) is a malformed record.
        # (valid JSON starting with '{' is an object: cheaper than a second parse)
        f"FROM (SELECT j, {_FILE_COL}, coalesce(json_valid(j), FALSE) AND "
        f"(CASE WHEN left(j, 1) = '{{' THEN TRUE ELSE starts_with(ltrim(j), '{{') END) AS ok "
        f"FROM {source}))"
    )


def _as_malformed(part: str, cond: str) -> str:
    """``part`` with the rows where the SQL ``cond`` holds made malformed records (their file
    lacks a required column): fields cleared, arrival, timestamps and resource kept."""
    c = f"({cond})"

    def cleared(col: str, empty: str = "NULL") -> str:
        return f"CASE WHEN {c} THEN {empty} ELSE {col} END AS {col}"

    sdk = cleared("sdk", "''")
    return (
        f"SELECT tg_us, cct_us, {cleared('op')}, {cleared('opid')}, {cleared('rt')}, "
        f"{cleared('dur')}, str_num AND NOT {c} AS str_num, pay_bad AND NOT {c} AS pay_bad, "
        f"{sdk}, {cleared('call')}, res, bad OR {c} AS bad, {_FILE_COL} "
        f"FROM ({part})"
    )


def _bounds_select(source: str, cols: dict[str, str], types: dict[str, str]) -> str:
    """(lo, hi, dmax): bounds of ``cct_us`` and ``dur`` over a Parquet source, for :class:`_Shape`.

    Aggregates applied to the bare columns are answered from the Parquet statistics without
    reading the data (0.01 s instead of 0.4 s for 9M rows); the conversions of _typed_select
    are monotone, so they are applied to the extremes. Other types are scanned.
    """
    cct, dur = cols.get("CallClientTimeStamp"), cols.get("DurationMs")
    cct_t = types.get(cct, "") if cct else ""
    if cct is None:
        lo = hi = "CAST(NULL AS BIGINT)"
    elif cct_t.upper().startswith("TIMESTAMP") or cct_t.upper() == "DATE":
        # Clamped to the accepted range: rows beyond it are dropped, they size no codes.
        lo_us, hi_us = _us(schema.TIMESTAMP_MIN), _us(schema.TIMESTAMP_MAX)
        lo = f"least(greatest(epoch_us(CAST(min({_q(cct)}) AS TIMESTAMPTZ)), {lo_us}), {hi_us})"
        hi = f"greatest(least(epoch_us(CAST(max({_q(cct)}) AS TIMESTAMPTZ)), {hi_us}), {lo_us})"
    else:
        lo, hi = f"min({_ts_expr(cct, cct_t)})", f"max({_ts_expr(cct, cct_t)})"
    dur_t = types.get(dur, "") if dur else ""
    if dur is not None and dur_t.upper() in _INTEGER_TYPES:
        dmax = f"CAST(max({_q(dur)}) AS DOUBLE)"  # integers are finite
    else:
        dmax = f"max({_num_exprs(dur, dur_t)[0]})"
    return f"SELECT {lo} AS lo, {hi} AS hi, {dmax} AS dmax FROM {source}"


def _unique(names: list[str]) -> list[str]:
    """Column names made unique (``a``, ``a_1``) as DuckDB's reader would name them."""
    seen: set[str] = set()
    out = []
    for name in names:
        cand, i = name or "column", 0
        while cand.lower() in seen:
            i += 1
            cand = f"{name}_{i}"
        seen.add(cand.lower())
        out.append(cand)
    return out


def _mtime_sql(mtimes: dict[str, int]) -> str:
    """SQL of the modification time (us) of the row's file, from ``mtimes`` (name -> us)."""
    if not mtimes:
        return "CAST(NULL AS BIGINT)"
    cases = " ".join(f"WHEN {_lit(name)} THEN {us}" for name, us in mtimes.items())
    return f"CASE {_FILE_COL} {cases} END"


def _norm_sql(
    parts: list[str], window: tuple[int, int] | None, mtimes: dict[str, int] | None = None
) -> str:
    """Normalised rows of every file, selected by arrival.

    A row's arrival (``arr_us``) is its ``TimeGenerated``; without a usable one, its
    ``CallClientTimeStamp``; without either (a malformed record), its file's modification
    time: every row falls in exactly one window of a series, so none is lost uncounted.
    """
    src = "\nUNION ALL\n".join(parts)
    where = f"WHERE arr_us >= {window[0]} AND arr_us < {window[1]}" if window else ""
    return f"""
SELECT tg_us, cct_us, op, opid, rt, dur, str_num, pay_bad, sdk, call, bad, arr_us
FROM (
SELECT *, coalesce(tg_us, cct_us, {_mtime_sql(mtimes or {})}) AS arr_us FROM (
{src}
)) {where}"""


@dataclass(frozen=True)
class _Shape:
    """What the names pass learned about the rows, to lay out dense integer codes.

    ``cell = pid * nb + (bucket - b0)`` numbers the (partition, bucket) pairs in key order and
    ``hk = cell * nbin + bin`` the histogram entries; both fit ``uint32`` for any realistic
    input (:attr:`compact`), which halves what numpy sorts and counts.
    """

    rows: int  # rows selected (the rows pass must return as many)
    n_pid: int
    b0: int  # smallest bucket index of any row with a timestamp
    nb: int  # buckets spanned
    nbin: int  # histogram bins 0..nbin-1 (durations are >= 1 ms, so no bin is negative)

    @property
    def n_cells(self) -> int:
        return self.n_pid * self.nb

    @property
    def compact(self) -> bool:
        # Dense bincounts no longer than the input (plus slack), codes below the uint32
        # sentinel, and room for the garbage cell (index n_cells) that takes dropped rows.
        n = self.n_cells + 1
        return n <= self.rows + 1_000_000 and 3 * n < _U32_NONE and n * self.nbin < _U32_NONE


# Sentinel histogram code of a row without one (no usable duration, dropped, discarded).
_U32_NONE: Final = 2**32 - 1

# ln(gamma) as an exact DOUBLE in SQL (a plain literal would be read as a DECIMAL).
_LN_GAMMA_SQL: Final = f"CAST('{_LN_GAMMA!r}' AS DOUBLE)"


def _names_sql(norm: str) -> str:
    """The distinct (OperationName, SdkVersion, ResultType) triples and their row counts.

    ``ResultType`` is classified here, once per distinct value (a handful), instead of per row.
    Grouped on the 64-bit hash the rows pass joins on (faster than on three strings; two of a
    thousand triples share a hash with a probability of ~3e-14).
    """
    rc = RESULT_CLASS_SQL.format(rt="rt")
    return f"""
SELECT op, sdk, h, CASE {rc} WHEN 'failure' THEN 2 WHEN 'expected_error' THEN 1 ELSE 0 END, n
FROM (SELECT h, any_value(op) AS op, any_value(sdk) AS sdk, any_value(rt) AS rt, count(*) AS n
      FROM (SELECT hash(op, sdk, rt) AS h, op, sdk, rt FROM ({norm})) GROUP BY h)"""


def _rows_sql(norm: str, bucket_us: int, shape: _Shape) -> str:
    """Compact per-row projection (integers and a double), streamed out as Arrow.

    Partitions, name-based drop codes and result classes come from ``_dim`` (joined on a hash
    of the raw name, version and result type): per-row string work is left to the id and the
    timestamps. Columns:

    * ``cf``: drop code (0 kept, else 1 + index in DROP_REASONS before ``duplicate``) * 16 +
      flags, flags packing invalid_duration (1), string_number (2), invalid_payload_json (4)
      and noncanonical_operation_case (8);
    * ``k``: 64-bit hash of the dedup key (OperationId, CallClientTimeStamp); 0 on dropped rows;
    * ``ck``: 32-bit hash (never 0) of the call behind a kept failure (``CallId``, else
      ``OperationId``); 0 on every other row;
    * ``tg_us``: arrival, the dedup tie-break;
    * ``ld``: ``ln(max(DurationMs, 1))``; 0.0 where there is no usable duration;
    * compact shape: ``c3 = cell * 3 + rc`` (cell: see :class:`_Shape`, dropped rows in the
      garbage cell ``n_cells``; rc: 0 success, 1 expected error, 2 failure) and ``hk``
      (:data:`_U32_NONE` where there is no duration), both ``uint32``;
    * otherwise: ``pid``, ``bi`` (bucket index), ``rc`` and ``bin`` (-1: no duration), for the
      general (sorting) path.
    """
    b = float(bucket_us)
    if shape.compact:
        cells = (
            f"CASE WHEN code = 0 THEN pid * {shape.nb} + (bi - {shape.b0}) ELSE {shape.n_cells} END"
        )
        out = f"""
SELECT cf, k, tg_us, ld, ck,
  CAST(cell * 3 + rc AS UINTEGER) AS c3,
  CAST(CASE WHEN has_ld THEN cell * {shape.nbin} + bin ELSE {_U32_NONE} END AS UINTEGER) AS hk
FROM (SELECT cf, k, tg_us, rc, has_ld, bin, ck,
        CASE WHEN has_ld THEN ld ELSE 0.0 END AS ld, {cells} AS cell"""
    else:
        out = """
SELECT cf, k, tg_us, CASE WHEN has_ld THEN ld ELSE 0.0 END AS ld,
  coalesce(pid, 0) AS pid, coalesce(bi, 0) AS bi, rc, ck,
  CAST(CASE WHEN has_ld THEN bin ELSE -1 END AS INTEGER) AS bin
FROM (SELECT cf, k, tg_us, rc, has_ld, bin, ld, pid, bi, ck"""
    return f"""{out}
FROM (
SELECT *,
  CAST(code * 16 + flags AS UTINYINT) AS cf,
  CASE WHEN code = 0 THEN hash(opid, cct_us) ELSE CAST(0 AS UBIGINT) END AS k,
  -- the call behind a kept failure (its OperationId when CallId is empty), 1..2**32-1;
  -- 0 otherwise. 32 bits: only distinct calls within one cell are counted, where two of a
  -- thousand failing calls share a value with a probability of ~1e-4.
  CAST(CASE WHEN code = 0 AND rc = 2 THEN 1 + hash(coalesce(nullif(call, ''), opid)) % 4294967295
       ELSE 0 END AS UINTEGER) AS ck,
  code = 0 AND ld IS NOT NULL AS has_ld,
  CAST(ceil(ld / {_LN_GAMMA_SQL}) AS BIGINT) AS bin  -- schema.duration_bin
FROM (
SELECT
  -- Name-based drop codes come from _dim (decided in Python on the distinct names); only the
  -- id and timestamp checks run per row, with cheap comparisons guarding the slow trim().
  CASE WHEN n.bad THEN {_CODE["malformed_record"]}
       WHEN d.name_code > 0 THEN d.name_code
       WHEN n.opid IS NULL THEN {_CODE["missing_operation_id"]}
       -- '' and blank ids sort below '!'; a CASE (unlike OR) runs trim() on those only
       WHEN n.opid < '!' AND (CASE WHEN n.opid < '!' THEN trim(n.opid, {_WS}) = ''
                                   ELSE FALSE END) THEN {_CODE["missing_operation_id"]}
       WHEN n.cct_us IS NULL THEN {_CODE["invalid_timestamp"]}
       ELSE 0 END AS code,
  n.opid, n.cct_us, n.tg_us, n.call, d.pid, d.rc,
  CAST(floor(n.cct_us / {b!r}) AS BIGINT) AS bi,  -- exact: |cct_us| < 2**53
  CASE WHEN NOT d.point AND n.dur >= 0 THEN ln(greatest(n.dur, 1.0)) END AS ld,
  CASE WHEN NOT d.point AND NOT coalesce(n.dur >= 0, FALSE) THEN 1 ELSE 0 END
    + CASE WHEN n.str_num THEN 2 ELSE 0 END
    + CASE WHEN n.pay_bad THEN 4 ELSE 0 END
    + CASE WHEN d.noncanon THEN 8 ELSE 0 END AS flags
FROM ({norm}) n JOIN _dim d ON hash(n.op, n.sdk, n.rt) = d.h)))"""


def _scan_rows_in(w: tuple[int, int]) -> str:
    """SQL of the ``_scan`` rows that arrived in ``w`` (us, half-open)."""
    return f"SELECT * FROM _scan WHERE arr_us >= {w[0]} AND arr_us < {w[1]}"


def _scoped(parts: list[str], resource: str | None) -> list[str]:
    """The normalised SELECTs keeping only ``resource``'s rows (all of them for None)."""
    if resource is None:
        return parts
    if resource_key(resource) != resource:
        raise ValueError("resource must be a lower-case Azure resource id")
    cond = f"lower(trim(res, {_WS})) = {_lit(resource)}"
    return [f"SELECT * FROM ({p}) WHERE {cond}" for p in parts]
