"""ACS resource ids as tenant keys: validation, short names and storage slugs (pure).

``_ResourceId`` comes from the log (or a file export's ``resourceId``), so it is hostile: it
becomes a tenant only when it is a plain Azure resource id (:func:`resource_key`), in lower
case (Azure compares resource ids case-insensitively). Anything else is counted as
"no usable resource id", never pasted into a query, a file name or a fingerprint.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

__all__ = ["RESOURCE_ID_RE", "resource_key", "short_name", "slug"]

#: A lower-cased Azure resource id of the ASCII characters Azure allows in its segments
#: (no segment starts with a dot: ``..`` never reaches a path).
RESOURCE_ID_RE: Final = re.compile(
    r"/subscriptions/[0-9a-z-]{1,64}/resourcegroups/[a-z0-9_()-][a-z0-9._()-]{0,89}"
    r"/providers/[a-z0-9][a-z0-9.]{0,79}(?:/[a-z0-9_-][a-z0-9._-]{0,127}){2,6}"
)


def resource_key(value: object) -> str | None:
    """The tenant key of a ``_ResourceId`` value: the id stripped and lower-cased, or None
    when it is not a plain Azure resource id (empty, another shape, odd characters)."""
    if not isinstance(value, str):
        return None
    key = value.strip().lower()
    return key if RESOURCE_ID_RE.fullmatch(key) else None


def short_name(key: str) -> str:
    """What people call the resource: the last path segment of its id (``acs-prod``)."""
    return key.rstrip("/").rsplit("/", 1)[-1]


def slug(key: str) -> str:
    """A storage-safe, collision-proof folder name: ``<short name>-<10 hex of the id hash>``.

    Only ``[a-z0-9._-]`` (the id was validated), at most 80 characters; two resources with the
    same name in different groups or subscriptions get different slugs.
    """
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:10]
    name = re.sub(r"[^a-z0-9-]", "-", short_name(key))[:64].strip("-") or "resource"
    return f"{name}-{digest}"
