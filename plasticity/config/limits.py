"""Limits of config fields, written once as part of the field's type.

    episodes: Positive[int] = 1000
    clip: Positive[float | None] = None          # None, or > 0
    erase_fraction: Annotated[float, Range(0, 1, low_open=True, high_open=True)] = 0.5

`Range` is `Annotated` metadata: tyro ignores it when it builds the flags, validation
(`plasticity.config.base.validate`) checks every field against it, and the sweep spaces
(`tune/spaces.py`) refuse a search range that reaches past it.
"""

from __future__ import annotations

import functools
import math
import types
import typing
from dataclasses import dataclass, fields
from typing import Annotated, Any, Literal, TypeVar

from plasticity.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Range:
    """Allowed values `low <(=) value <(=) high` of a number field (None: no bound)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    """True: `low` itself is excluded (`> low`)."""
    high_open: bool = False
    """True: `high` itself is excluded (`< high`)."""

    def contains(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def describe(self) -> str:
        """`> 0`, `>= 0`, `in (0, 1)`, `at most 1e+06`..."""
        if self.low is not None and self.low == self.high:
            return f"{self.low:g}"
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{'<' if self.high_open else '<='} {self.high:g}"

    def check(self, name: str, value) -> None:
        """Raise a `ConfigError` naming field `name` unless `value` is None or in the range."""
        if value is None or isinstance(value, bool) or self.contains(value):
            return
        bound = self.describe()
        hint = bound if bound[0].isdigit() else f"a value {bound}"
        raise ConfigError(f"{name} must be {bound}, got {value!r}: pass {hint}")


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1, high_open=True)
"""In [0, 1)."""

Positive = Annotated[T, POSITIVE]
"""`Positive[int]`: a number > 0 (`Positive[float | None]`: None or > 0)."""
NonNegative = Annotated[T, NON_NEGATIVE]
"""`NonNegative[int]`: a number >= 0."""


def flag(name: str) -> str:
    """The command-line flag of a config field: `batch_size` -> `--batch-size`."""
    return "--" + name.replace("_", "-")


@functools.cache
def field_types(cls) -> dict[str, Any]:
    """Field name -> type, with `Annotated` metadata kept (resolved in each class's module;
    once per class: validation asks for every field of every config it checks)."""
    return typing.get_type_hints(cls, include_extras=True)


def field_range(cls, name: str) -> Range | None:
    """The `Range` of field `name` of dataclass `cls`, or None if it has none."""
    hint = field_types(cls).get(name)
    if typing.get_origin(hint) is Annotated:
        return next((m for m in hint.__metadata__ if isinstance(m, Range)), None)
    return None


def field_choices(cls, name: str) -> tuple | None:
    """The values a `Literal` field may take, or None if it is not a `Literal`."""
    hint = field_types(cls).get(name)
    if typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None


MAX_INT = 2**62
"""Largest integer any field takes (seeds and counts stay clear of 64-bit overflow)."""


def field_kinds(cls, name: str) -> tuple[type, ...] | None:
    """The plain types field `name` may hold (`(float, NoneType)` for `Positive[float |
    None]`), or None for a `Literal` (its choices say what it takes) or an unknown hint."""
    hint = field_types(cls).get(name)
    if typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) is Literal:
        return None
    kinds = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return kinds if all(k in (int, float, bool, str, type(None)) for k in kinds) else None


def _of_kind(value, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, int):
        return int in kinds or float in kinds
    return any(isinstance(value, k) for k in kinds if k not in (int, bool))


KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}


def check_kind(cls, name: str, value) -> None:
    """Raise a `ConfigError` unless `value` has the type field `name` holds (a config read
    from a file or a sweep's --fixed / --space can hold anything YAML or JSON can)."""
    kinds = field_kinds(cls, name)
    if kinds is not None and not _of_kind(value, kinds):
        wanted = " or ".join(KIND_NAMES[k] for k in kinds)
        raise ConfigError(f"{flag(name)} must be {wanted}, got {value!r} ({type(value).__name__}): pass {wanted}")


def check_fields(cfg) -> None:
    """Every field of dataclass `cfg` against its type: the kind of value (integer, number,
    string...), finite floats, integers within +-MAX_INT, `Literal` choices and `Range`
    limits. One `ConfigError` for the first bad value."""
    cls = type(cfg)
    for f in fields(cfg):
        value, name = getattr(cfg, f.name), flag(f.name)
        check_kind(cls, f.name, value)
        if isinstance(value, float) and not math.isfinite(value):
            example = f.default if isinstance(f.default, float) else 1.0
            raise ConfigError(f"{name} must be a finite number, got {value}: pass a number such as {example}")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            raise ConfigError(f"{name} is too large ({value}): pass a value below 2**62")
        choices = field_choices(cls, f.name)
        if choices is not None and value not in choices:
            raise ConfigError(f"unknown {f.name.replace('_', ' ')} {value!r}: choose one of "
                              f"{', '.join(map(str, choices))}")
        limit = field_range(cls, f.name)
        if limit is not None:
            limit.check(f.name, value)
