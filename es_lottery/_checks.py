"""Validation of user-facing settings: each check names the field and says what it accepts.

Every config class and loader uses these, so the messages read the same across the toolkit and a bad
value fails before anything is traced or compiled.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np


def is_number(value: Any) -> bool:
    """A real number (Python or NumPy), not a bool."""
    return not isinstance(value, bool | np.bool_) and isinstance(
        value, int | float | np.integer | np.floating
    )


def check_int(
    value: Any, field: str, minimum: int, maximum: int | None = None, *, allow_none: bool = False
) -> int | None:
    """An integer (not a bool) in ``[minimum, maximum]``; ``None`` passes through when ``allow_none``."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if not ok or int(value) < minimum or (maximum is not None and int(value) > maximum):
        bound = f"≥ {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        extra = " or None" if allow_none else ""
        raise ValueError(f"{field} must be an integer {bound}{extra}, got {value!r}")
    return int(value)


def check_number(
    value: Any,
    field: str,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """A finite real number within the given (optionally open) bounds."""
    v = float(value) if is_number(value) else math.nan
    below = lo is not None and (v <= lo if lo_open else v < lo)
    above = hi is not None and (v >= hi if hi_open else v > hi)
    if not math.isfinite(v) or below or above:
        parts = []
        if lo is not None:
            parts.append(f"{'>' if lo_open else '≥'} {lo:g}")
        if hi is not None:
            parts.append(f"{'<' if hi_open else '≤'} {hi:g}")
        bound = f" {' and '.join(parts)}" if parts else ""
        raise ValueError(f"{field} must be a finite number{bound}, got {value!r}")
    return v


def check_rate(value: Any, field: str) -> float:
    """A number in [0, 1]."""
    return check_number(value, field, 0.0, 1.0)


def check_positive(value: Any, field: str) -> float:
    """A finite number > 0."""
    return check_number(value, field, 0.0, lo_open=True)


def check_bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{field} must be a bool, got {value!r}")
    return bool(value)


def check_choice(value: Any, allowed: Iterable, field: str) -> Any:
    """``value`` if it is one of ``allowed``; otherwise an error listing them."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"unknown {field} {value!r}; allowed: {', '.join(map(str, allowed))}")
    return value


def check_xy(x: Any, y: Any, n_features: int, n_classes: int, *, flatten: bool = False) -> None:
    """Training data for a classifier with ``n_features`` inputs and ``n_classes`` classes.

    ``x`` must be (n, n_features) — or (n, ...) with ``n_features`` entries per example when
    ``flatten`` — and ``y`` (n,) integer labels in 0..n_classes−1. Traced labels (inside a caller's
    ``jit``/``vmap``) are checked for shape only.
    """
    import jax

    xs, ys = np.shape(x), np.shape(y)
    per_example = int(np.prod(xs[1:])) if len(xs) >= 2 else -1
    if (len(xs) != 2 and not flatten) or len(xs) < 2 or per_example != int(n_features):
        raise ValueError(f"x must have shape (n, {n_features}), got {xs}")
    if ys != xs[:1]:
        raise ValueError(f"y must have shape ({xs[0]},) (integer labels), got {ys}")
    if xs[0] < 1:
        raise ValueError("x must hold at least one sample")
    try:
        yv = np.asarray(y)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    if not np.issubdtype(yv.dtype, np.integer):
        raise ValueError(f"y must hold integer labels, got dtype {yv.dtype}")
    if yv.min() < 0 or yv.max() >= n_classes:
        raise ValueError(
            f"labels y must be in 0..{n_classes - 1} ({n_classes} classes), got range {yv.min()}..{yv.max()}"
        )
