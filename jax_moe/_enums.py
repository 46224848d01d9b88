"""Parsing of the public enums (RoutingMethod, Activation, Format) from user input."""

from __future__ import annotations

import operator
from typing import Any


def parse_enum(enum_cls: Any, value: Any, aliases: dict) -> Any:
    """Converts an enum member, its int value or a name to ``enum_cls``.

    Args:
      enum_cls: The ``enum.IntEnum`` class to convert to.
      value: A member, an int value, or a case-insensitive name; ``-`` and
        ``_`` are interchangeable in names.
      aliases: Extra accepted lower-case names mapped to members.

    Returns:
      The matching member.

    Raises:
      ValueError: If ``value`` names no member.
    """
    choices = ", ".join(f"{m.name.lower()} ({m.value})" for m in enum_cls)
    if isinstance(value, enum_cls):
        return value
    if isinstance(value, str):
        key = value.strip().lower().replace("-", "_")
        by_name = {m.name.lower(): m for m in enum_cls}
        by_name.update(aliases)
        if key in by_name:
            return by_name[key]
    # bool is an int subclass, but True/False as a method is surely a mistake.
    elif not isinstance(value, bool):
        try:
            return enum_cls(operator.index(value))
        except (TypeError, ValueError):
            pass
    raise ValueError(
        f"invalid {enum_cls.__name__} {value!r}; valid choices: {choices}")
