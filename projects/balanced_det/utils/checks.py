"""Argument checks at the config boundary, one message style for the whole package:
``<name>=<value!r> is not valid; expected <what>``."""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

__all__ = ["check_choice", "check_range", "check_int", "check_type", "check_plugin"]


def _fail(name: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"{name}={value!r} is not valid; expected {expected}")


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise _fail(name, value, "one of " + ", ".join(map(repr, choices)))
    return value


def check_range(name: str, value: Any, low: Optional[float] = None,
                high: Optional[float] = None, low_open: bool = False,
                high_open: bool = False) -> float:
    """``float(value)`` if it is a finite number in the interval (bounds ``None``: unbounded)."""
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    interval = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(name, value, f"a number in {interval}")
    v = float(value)
    bad = not math.isfinite(v)
    if low is not None:
        bad |= v <= low if low_open else v < low
    if high is not None:
        bad |= v >= high if high_open else v > high
    if bad:
        raise _fail(name, value, f"a number in {interval}")
    return v


def check_int(name: str, value: Any, low: int = 0) -> int:
    """``int(value)`` if it is an integer >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _fail(name, value, f"an integer >= {low}")
    return int(value)


def check_type(name: str, value: Any, expected: type, what: str) -> Any:
    """``value`` if it is an instance of ``expected`` (``what`` describes it in the error)."""
    if not isinstance(value, expected):
        raise _fail(name, value, what)
    return value


def check_plugin(name: str, value: Any, kind: type, default: Optional[Callable[[], Any]] = None
                 ) -> Any:
    """``value`` if it is a ``kind`` plug-in object; ``None`` -> ``default()`` (or None)."""
    if value is None:
        return default() if default is not None else None
    if not isinstance(value, kind):
        raise _fail(name, value, f"a {kind.__name__} object (e.g. L(SomeClass)(...) in a "
                    f"config){' or None' if default is None else ''}")
    return value
