"""Checks of setting values, shared by the stages' settings objects, the config loader and the CLI.

A bad value raises :class:`SettingError`, a ``ValueError`` that knows the setting's ``key``
(the field name, e.g. ``"min_count"``) and the ``reason`` (``"must be at least 1, got 0"``), so
each reader names the setting the way its user wrote it: the config loader as ``[grid]
min_count``, the command line as ``--min-count``. ``str(error)`` is ``"<key> <reason>"``.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Collection, Iterable
from typing import Any


class SettingError(ValueError):
    """A setting whose value cannot be used: ``key`` names it, ``reason`` says what is allowed."""

    def __init__(self, key: str, reason: str):
        self.key = key
        self.reason = reason
        super().__init__(f"{key} {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.key, self.reason))


def at_least(key: str, value: Any, low: int, hint: str = "") -> int:
    """``value`` as an int that is at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise SettingError(key, f"must be at least {low}, got {value!r}{hint}")
    return int(value)


def between(key: str, value: Any, low: int, high: int, hint: str = "") -> int:
    """``value`` as an int in ``low..high`` (both included)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise SettingError(key, f"must be between {low} and {high}, got {value!r}{hint}")
    return int(value)


def positive_number(key: str, value: Any, hint: str = "") -> float:
    """``value`` as a finite float above 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise SettingError(key, f"must be a positive number, got {value!r}{hint}")
    return float(value)


def non_negative_number(key: str, value: Any, hint: str = "") -> float:
    """``value`` as a finite float >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise SettingError(key, f"must be a number >= 0, got {value!r}{hint}")
    return float(value)


def one_of(key: str, value: Any, choices: Collection[Any]) -> Any:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise SettingError(key, f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def sizes(key: str, values: Iterable[Any], *, largest: int | None = None, hint: str = "") -> tuple[int, ...]:
    """Distinct positive whole numbers (grid sizes, levels), at most ``largest`` each."""
    values = tuple(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in values) \
            or len(set(values)) != len(values):
        raise SettingError(key, f"must be distinct positive integers, e.g. (20, 40, 80, 160); got {values!r}")
    if largest is not None and max(values) > largest:
        raise SettingError(key, f"holds {max(values)}, more than the largest allowed, {largest}{hint}")
    return tuple(int(v) for v in values)


def available_memory() -> int | None:
    """Bytes of memory this machine can give a process now (Linux: ``MemAvailable``), or None
    where that is not known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


__all__ = ["SettingError", "at_least", "available_memory", "between", "non_negative_number", "one_of", "positive_number", "sizes"]
