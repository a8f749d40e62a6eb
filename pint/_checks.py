"""Argument checks shared by the engine: each error names the argument and the expected form."""

from __future__ import annotations

import math


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an ``int >= minimum``; TypeError for non-ints (bools included),
    ValueError below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_callback(callback: object) -> None:
    """TypeError unless ``callback`` is ``None`` or callable."""
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")


def check_number(name: str, value: object, *, positive: bool) -> float:
    """``value`` as a finite float, ``> 0`` if ``positive`` else ``>= 0``."""
    bound = "> 0" if positive else ">= 0"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number {bound}, got {type(value).__name__}")
    if not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
        raise ValueError(f"{name} must be a finite number {bound}, got {value}")
    return float(value)


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is ``True`` or ``False``; TypeError otherwise (a string such as
    ``"no"`` would otherwise count as true)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r:.40}")
    return value


def check_holds_data(name: str, value: object, hint: str) -> None:
    """ValueError if ``value`` is a tensor on the meta device (a shape and a dtype, no
    values); ``hint`` says what to do instead."""
    if getattr(value, "is_meta", False):
        raise ValueError(f"{name} must hold data; got a tensor on the meta device, which has a "
                         f"shape and dtype but no values. {hint}")
