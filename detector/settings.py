"""Declarative setting constraints: one table per config section, checked in one pass.

A table maps each key to a :class:`Param` (its default and a :class:`Constraint`), the idea of
scikit-learn's ``_parameter_constraints``. :func:`check_table` takes a table and the TOML values
given for a section and returns the converted values plus *every* problem, each prefixed with its
full key (``detection.latest_span: must be an integer >= 1, got 0``).

A constraint is an object with ``check(value) -> converted`` (raising ``ValueError`` with the
message), ``describe()`` (what it accepts, in words) and ``nonsense()`` (values it must reject,
which the tests feed to every key). Values from ``${VAR}`` substitution arrive as strings, so numbers and
booleans also accept their plain spelling (``"30"``, ``"true"``), never a partial one (``"0.01x"``).

Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Final, NamedTuple, TypeGuard

from detector.timeutil import format_duration, parse_duration

__all__ = [
    "POLICY",
    "BoolOrText",
    "Boolean",
    "Bucket",
    "Constraint",
    "Custom",
    "Duration",
    "IntList",
    "Integer",
    "KeyedError",
    "Options",
    "Param",
    "Real",
    "Table",
    "Tables",
    "Text",
    "check_table",
    "defaults",
]


class _PolicyDefault:
    """Sentinel default: the owning policy class's field default (kept there, in one place)."""

    def __repr__(self) -> str:
        return "POLICY"


#: Default of a key whose default lives in the policy dataclass that consumes it.
POLICY: Final = _PolicyDefault()

_INT_RE = re.compile(r"[+-]?\d+")
_TRUE, _FALSE = frozenset({"true", "yes", "on"}), frozenset({"false", "no", "off"})


class KeyedError(ValueError):
    """A problem with one element of a value: ``suffix`` (``"[2]"``) is appended to the key."""

    def __init__(self, suffix: str, message: str) -> None:
        super().__init__(message)
        self.suffix = suffix


class Constraint:
    """Base class: what one key accepts. Subclasses implement :meth:`check`."""

    def describe(self) -> str:
        """What the constraint accepts, in words (for messages and docs)."""
        return "any value"

    def nonsense(self) -> tuple[object, ...]:
        """Values this constraint rejects (TOML values: the tests feed them to every key)."""
        return ()

    def check(self, value: object) -> object:
        """The value converted to its setting type; raises ``ValueError(message)``."""
        return value


@dataclass(frozen=True)
class Param:
    """One key of a table: its default (or :data:`POLICY`), its constraint, whether None is ok."""

    default: object
    constraint: Constraint | Callable[[object], object]
    nullable: bool = False


#: A table's entry: a Param, or the older ``(default, checker)`` pair (read as Param(*pair)).
Entry = Param | tuple[object, Callable[[object], object]]
Table = Mapping[str, Entry]
Tables = Mapping[str, Table]


class Checked(NamedTuple):
    """What :func:`check_table` returns: converted values (given or defaulted) and problems."""

    values: dict[str, object]
    problems: list[str]
    unknown: dict[str, object]


def _number(value: object) -> float | None:
    """A real number from an int, float or a string spelling a whole number; None if not."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _got(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Integer(Constraint):
    """A whole number in ``[lo, hi]`` (``hi`` None: no upper bound). Rejects 30.9 and true."""

    lo: int
    hi: int | None = None

    def describe(self) -> str:
        return (
            f"an integer in [{self.lo}, {self.hi}]"
            if self.hi is not None
            else (f"an integer >= {self.lo}")
        )

    def nonsense(self) -> tuple[object, ...]:
        over = () if self.hi is None else (self.hi + 1,)
        return (30.9, True, "12x", self.lo - 1, *over)

    def check(self, value: object) -> int:
        out: int | None = None
        if _whole(value):
            out = value
        elif isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
            out = int(value.strip())
        if out is None or out < self.lo or (self.hi is not None and out > self.hi):
            raise ValueError(f"must be {self.describe()}, got {_got(value)}")
        return out


@dataclass(frozen=True)
class Real(Constraint):
    """A finite number between ``lo`` and ``hi``; ``closed`` says which ends are included."""

    lo: float | None = None
    hi: float | None = None
    closed: str = "both"  # "both" | "left" | "right" | "neither"

    def describe(self) -> str:
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        if self.hi is None:
            return f"a number {'>=' if left == '[' else '>'} {self.lo}"
        return f"a number in {left}{self.lo}, {self.hi}{right}"

    def nonsense(self) -> tuple[object, ...]:
        edges = (
            [self.lo if self.closed in ("right", "neither") else self.lo - 1]
            if (self.lo is not None)
            else []
        )
        if self.hi is not None:
            edges.append(self.hi if self.closed in ("left", "neither") else self.hi + 1)
        return ("0.01x", True, [1], *edges)

    def check(self, value: object) -> float:
        x = _number(value)
        ok = x is not None and math.isfinite(x)
        if x is not None and ok and self.lo is not None:
            ok = x >= self.lo if self.closed in ("both", "left") else x > self.lo
        if x is not None and ok and self.hi is not None:
            ok = x <= self.hi if self.closed in ("both", "right") else x < self.hi
        if x is None or not ok:
            raise ValueError(f"must be {self.describe()}, got {_got(value)}")
        return x


@dataclass(frozen=True)
class Boolean(Constraint):
    """``true`` or ``false`` (a string ``"true"``/``"false"`` from the environment too)."""

    def nonsense(self) -> tuple[object, ...]:
        return ("maybe", 2)

    def describe(self) -> str:
        return "true or false"

    def check(self, value: object) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"must be true or false, got {_got(value)}")


@dataclass(frozen=True)
class Text(Constraint):
    """A string; ``pattern`` (a full match) and ``hint`` restrict it further."""

    pattern: str | None = None
    hint: str = "a string"

    def nonsense(self) -> tuple[object, ...]:
        return (5, ["x"])

    def describe(self) -> str:
        return self.hint

    def check(self, value: object) -> str:
        if not isinstance(value, str):
            raise ValueError(f"must be {self.hint}, got {type(value).__name__}")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise ValueError(f"must be {self.hint}, got {_got(value)}")
        return value


@dataclass(frozen=True)
class Options(Constraint):
    """One of a fixed set of strings."""

    choices: tuple[str, ...]

    def nonsense(self) -> tuple[object, ...]:
        return ("no-such-choice", 1)

    def describe(self) -> str:
        return "one of " + ", ".join(map(repr, self.choices))

    def check(self, value: object) -> str:
        if not isinstance(value, str) or value not in self.choices:
            raise ValueError(f"must be {self.describe()}, got {_got(value)}")
        return value


@dataclass(frozen=True)
class Duration(Constraint):
    """A duration (``"5m"``, ``"1h30m"``, a timedelta; bare seconds when ``seconds_ok``).

    ``lo``/``hi`` bound it (``lo_open``: strictly above ``lo``); ``whole_seconds`` rejects
    fractions of a second.
    """

    lo: timedelta = timedelta(0)
    lo_open: bool = True
    hi: timedelta | None = None
    seconds_ok: bool = False
    whole_seconds: bool = False

    def describe(self) -> str:
        low = f"> {_td(self.lo)}" if self.lo_open else f">= {_td(self.lo)}"
        return f"a duration {low}" + (f" and <= {_td(self.hi)}" if self.hi is not None else "")

    def nonsense(self) -> tuple[object, ...]:
        zero = ("0s",) if self.lo_open and not self.lo else ()
        return ("soon", "-5m", [5], *zero)

    def check(self, value: object) -> timedelta:
        td = self._parse(value)
        bad = td <= self.lo if self.lo_open else td < self.lo
        if bad or (self.hi is not None and td > self.hi):
            raise ValueError(f"must be {self.describe()}, got {_got(value)}")
        if self.whole_seconds and td % timedelta(seconds=1):
            raise ValueError(f"must be a whole number of seconds, got {_got(value)}")
        return td

    def _parse(self, value: object) -> timedelta:
        if isinstance(value, timedelta):
            return value
        if self.seconds_ok and not isinstance(value, bool) and isinstance(value, int | float):
            if not math.isfinite(value):
                raise ValueError(f"must be {self.describe()}, got {_got(value)}")
            return timedelta(seconds=value)
        if not isinstance(value, str):
            raise ValueError(f"must be a duration like '5m', '1h' or '7d', got {_got(value)}")
        return parse_duration(value)


def _td(td: timedelta) -> str:
    return format_duration(td) if td else "0"


@dataclass(frozen=True)
class Bucket(Duration):
    """A bucket width: at least one minute and dividing a day evenly."""

    def nonsense(self) -> tuple[object, ...]:
        return ("7m", "30s", "0m", 5)

    def describe(self) -> str:
        return "at least 1m and dividing a day evenly (1m, 5m, 15m, 1h, ...)"

    def check(self, value: object) -> timedelta:
        td = self._parse(value)
        if td < timedelta(minutes=1) or timedelta(days=1) % td:
            raise ValueError(f"must be {self.describe()}, got {_got(value)}")
        return td


@dataclass(frozen=True)
class IntList(Constraint):
    """A non-empty list of whole numbers, each at least ``lo`` (kept as a tuple)."""

    lo: int = 1

    def nonsense(self) -> tuple[object, ...]:
        return ([1.7, 3], [], [self.lo - 1], "1,2", [True])

    def describe(self) -> str:
        return f"a non-empty list of integers >= {self.lo}"

    def check(self, value: object) -> tuple[int, ...]:
        if (
            not isinstance(value, list | tuple)
            or not value
            or not all(_whole(v) and v >= self.lo for v in value)
        ):
            raise ValueError(f"must be {self.describe()}, got {_got(value)}")
        return tuple(int(v) for v in value)


def _whole(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class BoolOrText(Constraint):
    """``true``, ``false`` or a string (a CA bundle path for ``connection_verify``)."""

    def nonsense(self) -> tuple[object, ...]:
        return (3, [True])

    def describe(self) -> str:
        return "true, false or a CA bundle path"

    def check(self, value: object) -> bool | str:
        if isinstance(value, bool | str):
            return value
        raise ValueError(f"must be {self.describe()}, got {_got(value)}")


@dataclass(frozen=True)
class Custom(Constraint):
    """A checking function (returns the converted value or raises ``ValueError``)."""

    func: Callable[[object], object]
    words: str
    bad: tuple[object, ...]

    def describe(self) -> str:
        return self.words

    def nonsense(self) -> tuple[object, ...]:
        return self.bad

    def check(self, value: object) -> object:
        return self.func(value)


def _check_one(param: Param, value: object) -> object:
    constraint = param.constraint
    if isinstance(constraint, Constraint):
        return constraint.check(value)
    return constraint(value)  # a plain checker function (older table entries)


def check_table(
    section: str, table: Table, given: Mapping[str, object] | None, *, defaults: bool = True
) -> Checked:
    """Check the values ``given`` for ``section`` against ``table``.

    Parameters
    ----------
    section : the section's name, prefixed to every problem (``"detection"``).
    table : key -> :class:`Param`.
    given : the section's TOML table (None: empty).
    defaults : fill keys not given with their table default (:data:`POLICY` ones stay out).

    Returns
    -------
    Checked: the converted values, one ``"section.key: message"`` per problem, and the keys
    the table does not know (the caller decides whether they are an error).
    """
    given = given or {}
    values: dict[str, object] = {}
    problems: list[str] = []
    for key, entry in table.items():
        param = entry if isinstance(entry, Param) else Param(*entry)
        if key not in given and (not defaults or param.default is POLICY):
            continue
        value = given.get(key, param.default)
        if value is None and param.nullable:
            values[key] = None
            continue
        try:
            values[key] = _check_one(param, value)
        except KeyedError as exc:
            problems.append(f"{section}.{key}{exc.suffix}: {exc}")
        except ValueError as exc:
            problems.append(f"{section}.{key}: {exc}")
    unknown = {k: v for k, v in given.items() if k not in table}
    return Checked(values, problems, unknown)


def defaults(table: Table) -> dict[str, object]:
    """Every key's default, converted by its constraint (:data:`POLICY` keys left out)."""
    return check_table("", table, {}).values
