"""Schema drift: how the columns a source reads differ from ``ACSCallClientOperations``.

A file (or a query result) whose columns changed is still read where it can be: the read
records one :class:`SchemaDrift` per file listing the required columns it lacks, the columns
whose type changed and the columns nobody expects. Column names come from the log, so they are
hostile text: :func:`clean_name` escapes and truncates them before they reach a report.
:func:`drift_warning` is the one run-report line about them. A query service cannot read a
table whose columns changed: :func:`query_drift` turns its error into what changed.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from detector import schema

__all__ = [
    "IDENTITY_COLUMNS",
    "SchemaDrift",
    "clean_name",
    "column_drift",
    "drift_warning",
    "query_drift",
    "record_kinds",
    "value_kind",
]

#: Without these a file is not taken for an export at all (InputError, as before): drift is
#: about exports whose other columns changed.
IDENTITY_COLUMNS: Final[tuple[str, ...]] = ("TimeGenerated", "CallClientTimeStamp", "OperationName")

# Keys of the Diagnostic Settings envelope and of JSON exports that are not log columns.
_ENVELOPE: Final = frozenset(
    {"time", "resourceid", "operationname", "operationversion", "category", "properties"}
    | {"level", "location", "correlationid", "identity", "calleripaddress", "resulttype"}
    | {"resultsignature", "resultdescription", "durationms", "tenantid", "$table"}
)

_KNOWN: Final = frozenset(c.lower() for c in schema.LOG_COLUMNS) | _ENVELOPE

# What each log column's values should be: Kusto type -> kind of value (see value_kind).
_WANT: Final[dict[str, str]] = {"long": "number", "int": "number", "datetime": "time"}

_MAX_NAME: Final = 40

# How Log Analytics names what a query refers to and the table lacks (a SemanticError).
_UNRESOLVED: Final = re.compile(
    r"Failed to resolve (?:table or column or scalar|table or column|column or scalar|table"
    r"|scalar|column) expression"
    r" named '([^']{1,300})'"
)
_MAX_UNKNOWN: Final = 10


@dataclass(frozen=True)
class SchemaDrift:
    """One file's (or result's) columns against the log table: required columns missing,
    ``(column, kind it arrived as)`` type changes, unknown columns (escaped), and whether its
    rows were dropped (``unusable``: a required column is missing)."""

    where: str
    missing: tuple[str, ...] = ()
    retyped: tuple[tuple[str, str], ...] = ()
    unknown: tuple[str, ...] = ()
    unusable: bool = False

    def problems(self) -> list[str]:
        """The drift in words, one short phrase per column (``DurationMs missing``)."""
        return [
            *(f"{c} missing" for c in self.missing),
            *(f"{c} is {kind}" for c, kind in self.retyped),
            *(f"unknown column {c}" for c in self.unknown),
        ]

    def as_dict(self) -> dict[str, Any]:
        """The record for the run report's ``source.schema_drift`` list."""
        return {
            "where": clean_name(self.where, 300),
            "missing": list(self.missing),
            "retyped": {c: kind for c, kind in self.retyped},
            "unknown": list(self.unknown),
            "rows_dropped": self.unusable,
        }


def clean_name(name: str, limit: int = _MAX_NAME) -> str:
    """A column name (or path) from the log made printable ASCII and at most ``limit`` chars."""
    text = name.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key(name: str) -> str:
    """A column name as the readers compare it: unit suffix (`` [UTC]``) off, lower case."""
    return re.sub(r"\s*\[[^\]]*\]\s*$", "", name).strip().lower()


def value_kind(typ: str | None) -> str | None:
    """A DuckDB type name as a kind of value: number, text, time, boolean or the type itself
    (lower case); None when unknown (CSV: every field is text, so no type is claimed)."""
    if typ is None:
        return None
    t = typ.upper()
    if t.startswith(("VARCHAR", "JSON")):
        return "text"
    if t.startswith(("TIMESTAMP", "DATE")):
        return "time"
    if t.startswith("DECIMAL") or t in _NUMBER_TYPES:
        return "number"
    if t == "BOOLEAN":
        return "boolean"
    return clean_name(typ.lower(), 20)


_NUMBER_TYPES: Final = frozenset(
    {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "FLOAT", "DOUBLE"}
    | {"UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT"}
)


def column_drift(
    where: str,
    kinds: Mapping[str, str | None],
    *,
    optional: Iterable[str] = (),
) -> SchemaDrift | None:
    """The drift of a file whose columns are ``kinds`` (name -> kind of value, None when the
    format has no types), or None when it has none. ``optional``: required columns whose
    absence is tolerated (reported, the rows kept), e.g. JSON keys omitted when null."""
    by_key: dict[str, str] = {}
    for name in kinds:
        by_key.setdefault(_key(name), name)
    soft = set(optional)
    missing = tuple(c for c in schema.REQUIRED_COLUMNS if c.lower() not in by_key)
    retyped = []
    for col, kusto in schema.LOG_COLUMNS.items():
        want, found = _WANT.get(kusto), by_key.get(col.lower())
        got = kinds.get(found) if found is not None else None
        if want is None or got is None or got == want or (want == "time" and got == "text"):
            continue
        retyped.append((col, got))
    unknown = sorted({clean_name(n) for n in kinds if _key(n) not in _KNOWN})
    if len(unknown) > _MAX_UNKNOWN:
        unknown = [*unknown[:_MAX_UNKNOWN], f"(+{len(unknown) - _MAX_UNKNOWN} more)"]
    if not (missing or retyped or unknown):
        return None
    unusable = any(c not in soft for c in missing)
    return SchemaDrift(where, missing, tuple(retyped), tuple(unknown), unusable)


def drift_warning(drifts: Iterable[SchemaDrift], what: str = "file") -> str | None:
    """One run-report line about ``drifts`` (None without any): the problems counted over
    the files, most frequent first, and how many files' rows were dropped."""
    items = list(drifts)
    if not items:
        return None
    counts = Counter(p for d in items for p in d.problems())
    shown = ", ".join(f"{p} ({n})" for p, n in counts.most_common(6))
    if len(counts) > 6:
        shown += f", +{len(counts) - 6} more"
    n, dropped = len(items), sum(d.unusable for d in items)
    line = f"schema drift in {n} {what}{'s' if n > 1 else ''}: {shown}"
    if dropped == 1 and n == 1:
        line += "; its rows were dropped as malformed_record"
    elif dropped:
        line += f"; the rows of {dropped} of them were dropped as malformed_record"
    return line


def record_kinds(records: Iterable[object]) -> dict[str, str | None]:
    """Key -> kind of value (text, number, boolean, object; None when only null) over sampled
    JSON records, top-level keys and those under ``properties``; text wins over other kinds
    (a number sent as a string is the drift worth naming)."""
    seen: dict[str, set[str]] = {}
    for rec in records:
        if not isinstance(rec, dict):
            continue
        props = rec.get("properties")
        for key, value in [*rec.items(), *(props.items() if isinstance(props, dict) else [])]:
            kinds = seen.setdefault(str(key), set())
            if value is not None:
                kinds.add(_json_kind(value))
    if "time" in seen and not any(k.lower() == "timegenerated" for k in seen):
        seen["TimeGenerated"] = {"text"}  # Diagnostic Settings: the arrival time
    return {k: ("text" if "text" in v else min(v)) if v else None for k, v in seen.items()}


def _json_kind(value: object) -> str:
    if isinstance(value, str):
        return "text"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "object"


def query_drift(messages: Iterable[str], table: str) -> str | None:
    """A query service's error messages -> what they say about the table's schema (a missing
    table or a missing log column, in words), or None when they say nothing about it."""
    for text in messages:
        for name in _UNRESOLVED.findall(text):
            if name == table:
                return (
                    f"the workspace has no table {clean_name(table, 100)}: no diagnostic setting"
                    " sends call client operations (ACSCallClientOperations logs) to it yet, or"
                    " none has arrived"
                )
            if name in schema.LOG_COLUMNS:
                return (
                    f"schema drift: table {clean_name(table, 100)} has no column {name}"
                    " (renamed or removed), which the query reads"
                )
    return None
