"""Vectorised string builders: GUIDs and ISO-8601 timestamps straight into Arrow buffers.

Formatting millions of GUIDs or timestamps through Python (``uuid4()``, ``strftime``) or even
``numpy.datetime_as_string`` costs seconds per million rows; here each value is a fixed-width
row of a ``uint8`` matrix filled by integer arithmetic and wrapped as an Arrow ``StringArray``
without a copy. Pure functions (randomness comes from the caller's Generator).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = ["fixed_width_strings", "guid_matrix", "iso_ms", "matrix_rows"]

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
# Character positions of the 32 hex digits inside the 36-character GUID text.
_GUID_POS = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])


def guid_matrix(rng: np.random.Generator, n: int) -> np.ndarray:
    """Return ``n`` random version-4 GUIDs as an ``(n, 36)`` ``uint8`` matrix of ASCII text."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    out = np.full((n, 36), ord("-"), dtype=np.uint8)
    nibbles = np.empty((n, 32), dtype=np.uint8)
    nibbles[:, 0::2] = raw >> 4
    nibbles[:, 1::2] = raw & 0x0F
    out[:, _GUID_POS] = _HEX[nibbles]
    return out


def fixed_width_strings(matrix: np.ndarray) -> pa.StringArray:
    """Wrap an ``(n, w)`` ``uint8`` ASCII matrix as an Arrow string array (one row per value)."""
    mat = np.ascontiguousarray(matrix, dtype=np.uint8)
    n, width = mat.shape
    offsets = np.arange(0, width * (n + 1), width, dtype=np.int64)
    if offsets[-1] < 2**31:
        return pa.StringArray.from_buffers(
            n, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(mat)
        )
    big = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(mat))
    return big.cast(pa.string())


def matrix_rows(matrix: np.ndarray, index: np.ndarray) -> pa.StringArray:
    """Strings of ``matrix[index]`` (e.g. a call's GUID repeated on each of its rows)."""
    return fixed_width_strings(matrix[index])


# "MM:SS." for every second of an hour and "fffZ" for every millisecond: row gathers from these
# small tables are far cheaper than per-digit arithmetic on millions of values.
_MMSS = np.array(
    [list(f"{i // 60:02d}:{i % 60:02d}.".encode()) for i in range(3600)], dtype=np.uint8
)
_FFFZ = np.array([list(f"{i:03d}Z".encode()) for i in range(1000)], dtype=np.uint8)


def iso_ms(epoch_ms: np.ndarray, *, quoted: bool = False) -> pa.StringArray:
    """Format epoch milliseconds as ``YYYY-MM-DDTHH:MM:SS.fffZ`` (the Log Analytics API shape).

    ``quoted=True`` adds double quotes around each value (a JSON string) at no extra cost.
    """
    ms = np.asarray(epoch_ms, dtype=np.int64)
    q = 1 if quoted else 0
    full = np.empty((ms.size, 24 + 2 * q), dtype=np.uint8)
    if quoted:
        full[:, 0] = full[:, -1] = ord('"')
    out = full[:, q : q + 24]
    if ms.size == 0:
        return fixed_width_strings(full)
    hours = np.floor_divide(ms, 3_600_000)
    first, last = int(hours.min()), int(hours.max())
    if last - first > 24 * 366:  # a wide span: the per-hour prefix table would be too large
        text = "".join(
            np.datetime_as_string(ms.astype("datetime64[ms]"), unit="ms", timezone="UTC")
        )
        out[:] = np.frombuffer(text.encode(), dtype=np.uint8).reshape(-1, 24)
        return fixed_width_strings(full)
    # "YYYY-MM-DDTHH:" for each hour in the (short) span of this batch.
    span = np.arange(first, last + 1, dtype=np.int64).astype("datetime64[h]")
    text = "".join(f"{h}:" for h in np.datetime_as_string(span, unit="h"))
    prefix = np.frombuffer(text.encode(), dtype=np.uint8).reshape(-1, 14)
    rem = ms - hours * 3_600_000
    sec = rem // 1000
    out[:, :14] = prefix[hours - first]
    out[:, 14:20] = _MMSS[sec]
    out[:, 20:24] = _FFFZ[rem - sec * 1000]
    return fixed_width_strings(full)
