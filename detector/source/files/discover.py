"""Discovery and formats: which files a path designates, what each holds, when rows arrive.

Finds the data files (a file, a directory scanned recursively, a glob), tells their formats
apart (Parquet by name or magic; CSV by name or a header line; JSON lines, among them the
Diagnostic Settings storage export ``insights-logs-callclientoperations/.../PT1H.json``, and
JSON arrays by content), skips what is evidently not an export when scanning, sniffs CSV
headers and samples JSON keys to reject a file that is not an export with one clear
:class:`~detector.errors.InputError`, and turns arrival windows and file modification times
into microseconds since the epoch. Reads the files' first bytes and lines only.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from detector import schema
from detector.errors import InputError

__all__ = ["SUPPORTED_SUFFIXES", "discover_files"]

log = logging.getLogger("detector.source.files")  # the package's logger, as before the split

#: File name endings the file source reads (a directory scan ignores everything else).
SUPPORTED_SUFFIXES: Final[tuple[str, ...]] = (
    ".parquet",
    ".pq",
    ".csv",
    ".csv.gz",
    ".json",
    ".jsonl",
    ".ndjson",
    ".json.gz",
    ".jsonl.gz",
    ".ndjson.gz",
)

# Fields a JSON sample must show to be taken for an export (others may be omitted when null).
_JSON_IDENTITY: Final = ("TimeGenerated", "CallClientTimeStamp", "OperationName")

# How many leading JSON lines are inspected to decide whether a file is an ACS export.
_JSON_SAMPLE_LINES: Final = 200


@dataclass(frozen=True)
class _File:
    path: Path
    fmt: str  # "parquet" | "csv" | "jsonl" | "json_array"
    # Found by a scan, JSON lines without one valid record in its sample: read anyway, every
    # line a malformed record, so one garbage file cannot stop the run.
    garbage: bool = False


def _suffix_of(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return None


def discover_files(path: str | os.PathLike[str]) -> list[Path]:
    """List the data files ``path`` designates: a file, a directory (recursive) or a glob.

    Parameters
    ----------
    path : str or PathLike
        A file (read whatever its name), a directory (every file with a name ending in
        :data:`SUPPORTED_SUFFIXES`, recursively, hidden files and folders skipped) or a glob
        pattern (``**`` recursive).

    Returns
    -------
    list of Path
        Sorted file paths.

    Raises
    ------
    InputError
        When nothing matches.
    """
    text = os.fspath(path)
    p = Path(text)
    if p.is_file():
        return [p]
    if p.is_dir():
        found = [
            f
            for f in p.rglob("*")
            if f.is_file()
            and _suffix_of(f) is not None
            and not any(part.startswith(".") for part in f.relative_to(p).parts)
        ]
        if not found:
            raise InputError(
                f"{p}: no data files found (looked for {', '.join(SUPPORTED_SUFFIXES)})"
            )
        return sorted(found)
    if glob.has_magic(text):
        found = [Path(f) for f in glob.glob(text, recursive=True) if Path(f).is_file()]
        if not found:
            raise InputError(f"{text}: the pattern matches no files")
        return sorted(found)
    raise InputError(f"{text}: no such file or directory")


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        import gzip

        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", errors="replace")
    return open(path, encoding="utf-8-sig", errors="replace", newline="")  # noqa: SIM115


def _detect_format(path: Path) -> str:
    suffix = _suffix_of(path)
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix is not None and suffix.startswith(".csv"):
        return "csv"
    # .json and friends, or an unknown suffix named directly: look at the content.
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
        if magic == b"PAR1":
            return "parquet"
        with _open_text(path) as fh:
            head = fh.read(4096)
    except OSError as exc:
        raise InputError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    except (EOFError, ValueError) as exc:  # e.g. a truncated .gz
        raise InputError(f"{path}: cannot read file ({exc})") from exc
    stripped = head.lstrip()
    if not stripped:
        raise InputError(f"{path}: empty file, not an ACS call client operations export")
    if stripped[0] == "[" and not _is_json_lines(stripped):
        return "json_array"
    if stripped[0] in "{[" or suffix is not None:
        # A JSON lines name (or a first record): whatever the first line holds, the file is
        # read line by line and a line that is not a JSON object is one malformed record.
        return "jsonl"
    # Not JSON: a CSV header line names the columns.
    return "csv"


def _is_json_lines(head: str) -> bool:
    """True when ``head`` (a file's start, opening with '[') is a one-line JSON value followed
    by more lines: JSON lines whose first record is an array, not one JSON array document."""
    first, sep, rest = head.partition("\n")
    return bool(sep and rest.strip()) and _json_record(first) is not None


def _select_files(path: str | os.PathLike[str]) -> list[_File]:
    """Discovered files with their formats.

    A file named directly is always validated. When scanning a directory or a glob, files that
    are evidently not exports are skipped with a warning instead of failing the run: empty
    files (a Diagnostic Settings hour blob can be empty) and ``.json`` documents without any
    ACS column (``incidents.json`` beside simulated data, exporter metadata).
    """
    found = discover_files(path)
    if Path(os.fspath(path)).is_file():
        return [_File(found[0], _detect_format(found[0]))]
    selected = []
    for f in found:
        reason = _skip_reason(f)
        if reason:
            log.warning("skipping %s: %s", f, reason)
            continue
        fmt = _detect_format(f)
        selected.append(_File(f, fmt, fmt == "jsonl" and _no_valid_record(f)))
    if not selected:
        raise InputError(f"{os.fspath(path)}: no ACS call client operations export among the files")
    return selected


def _no_valid_record(path: Path) -> bool:
    """True when none of the first lines of a JSON lines file is valid JSON (warned)."""
    try:
        _json_sample_keys(path)
    except InputError as exc:
        if "valid JSON" not in str(exc):
            raise
        log.warning("%s; its lines are counted as malformed records", exc)
        return True
    return False


def _skip_reason(path: Path) -> str | None:
    try:
        if path.stat().st_size == 0:
            return "empty file"
    except OSError:
        return None  # reported when read
    if _suffix_of(path) not in (".json", ".json.gz"):
        return None
    try:
        fmt = _detect_format(path)
        if fmt == "jsonl":
            keys = _json_sample_keys(path)
        elif fmt == "json_array" and path.stat().st_size < 16 * 2**20:
            with _open_text(path) as fh:
                doc = _json_record(fh.read())
            if doc is None:
                return "not JSON"
            keys = set()
            for rec in doc[:_JSON_SAMPLE_LINES] if isinstance(doc, list) else []:
                if isinstance(rec, dict):
                    keys.update(rec)
                    if isinstance(rec.get("properties"), dict):
                        keys.update(rec["properties"])
        else:
            return None  # big JSON arrays are checked (and named) when read
    except (InputError, ValueError, OSError):
        return "not JSON lines"
    wanted = {c.lower() for c in schema.REQUIRED_COLUMNS}
    if not wanted & {k.lower() for k in keys}:
        return "no ACS call client operations fields"
    return None


def _json_record(line: str) -> object:
    """One JSON value, or None when the line is not JSON (nested too deep included)."""
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        return None


def _json_sample_keys(path: Path) -> set[str]:
    keys: set[str] = set()
    seen = parsed = 0
    try:
        with _open_text(path) as fh:
            for line in fh:
                if not line.strip():
                    continue
                seen += 1
                # A bad line (even the first) costs that line, counted when read, not the file.
                rec = _json_record(line)
                parsed += rec is not None
                if isinstance(rec, dict):
                    keys.update(rec)
                    props = rec.get("properties")
                    if isinstance(props, dict):
                        keys.update(props)
                if seen >= _JSON_SAMPLE_LINES:
                    break
    except OSError as exc:
        raise InputError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    except (EOFError, ValueError) as exc:
        raise InputError(f"{path}: cannot read file ({exc})") from exc
    if seen == 0:
        raise InputError(f"{path}: empty file, not an ACS call client operations export")
    if parsed == 0:
        raise InputError(
            f"{path}: not a JSON lines file (none of the first {seen} records is valid JSON)"
        )
    return keys


def _json_keys_ok(path: Path, keys: set[str]) -> None:
    lowered = {k.lower() for k in keys}
    if "time" in lowered:
        lowered.add("timegenerated")  # Diagnostic Settings: top-level time = arrival time
    # JSON exporters leave out null-valued keys, so a sample may lack e.g. DurationMs of point
    # events; the fields that identify an operation record must be there.
    missing = [c for c in _JSON_IDENTITY if c.lower() not in lowered]
    if missing:
        raise InputError(
            f"{path}: not an ACS call client operations export (JSON): missing required "
            f"field{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
        )


def _csv_header(path: Path) -> tuple[list[str], str, str]:
    """The header's field names, its delimiter and quote character (sniffed on that line)."""
    try:
        with _open_text(path) as fh:
            first = fh.readline()
    except OSError as exc:
        raise InputError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    except (EOFError, ValueError) as exc:
        raise InputError(f"{path}: cannot read file ({exc})") from exc
    if not first.strip():
        raise InputError(f"{path}: empty file, not an ACS call client operations export")
    try:
        dialect = csv.Sniffer().sniff(first, delimiters=",;\t|")
        delim, quote = dialect.delimiter, dialect.quotechar or '"'
    except csv.Error:
        delim, quote = ",", '"'
    return next(csv.reader([first], delimiter=delim, quotechar=quote)), delim, quote


def _us(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)  # naive datetimes are taken as UTC
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _window_us(arrival_window: tuple[datetime, datetime] | None) -> tuple[int, int] | None:
    """An arrival window in microseconds since the epoch (None: every row)."""
    if arrival_window is None:
        return None
    window = (_us(arrival_window[0]), _us(arrival_window[1]))
    if window[1] < window[0]:
        raise ValueError(f"arrival_window ends before it starts: {arrival_window}")
    return window


def _mtimes(paths: Iterable[Path]) -> dict[str, int]:
    """File name (as DuckDB reports it) -> modification time in microseconds since the epoch."""
    out = {}
    for p in paths:
        try:
            out[str(p)] = int(p.stat().st_mtime_ns // 1000)
        except OSError:
            continue  # reported when read
    return out
