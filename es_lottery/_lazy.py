"""Lazy attributes for package faces: a name loads its module on first use, never at import.

A package's ``__init__`` lists its public names as ``{name: "module"}`` (a submodule) or
``{name: "module:attribute"}`` and installs :func:`attach`'s ``__getattr__`` / ``__dir__``. Importing the
package then imports nothing heavy (no JAX programs, no gymnax, Brax or matplotlib); ``dir()``, ``__all__``
and tab completion still show every name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def attach(package: str, names: dict[str, str]) -> tuple[Callable, Callable, list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package`` with the lazy ``names``."""

    def __getattr__(name: str):
        target = names.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attr = target.partition(":")
        value = importlib.import_module(module)
        if attr:
            value = getattr(value, attr)
        globals_ = importlib.import_module(package).__dict__
        globals_[name] = value  # later lookups are plain attribute reads
        return value

    def __dir__() -> list[str]:
        return sorted(set(names) | set(importlib.import_module(package).__dict__))

    return __getattr__, __dir__, sorted(names)
