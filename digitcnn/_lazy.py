"""Lazily imported public names (PEP 562), for the packages whose import must stay quick.

A package lists each public name with the module that defines it and hands the list to
:func:`lazy_exports`, which makes the package's ``__all__``, ``__getattr__`` and ``__dir__``:
a name's module is imported the first time the name is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str,
    exports: Mapping[str, str],
    extra: Sequence[str] = (),
    first: str | None = None,
) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``package``.

    Args:
        package: the package's ``__name__``.
        exports: public name -> the module defining it, relative to ``package``
            (``"training.recipe"``).
        extra: further names of ``__all__`` that the package defines itself.
        first: a module (relative) imported before any name is served, e.g. one whose import
            registers things.
    """
    names = sorted(exports) + list(extra)

    def __getattr__(name: str) -> Any:
        if name in exports:
            if first is not None:
                importlib.import_module(f".{first}", package)
            return getattr(importlib.import_module(f".{exports[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return names

    return names, __getattr__, __dir__
