"""Lazily imported public names of a package (PEP 562 module ``__getattr__``/``__dir__``).

Importing :mod:`cryoet_monai` or :mod:`cryoet_monai.inference` must stay cheap (``cryoet-monai
--help`` answers without importing torch and MONAI), while ``cryoet_monai.MRCReader`` in a
bundle config must still work: each name is imported from its module on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose public ``name -> module`` map is ``exports``;
    ``namespace`` is the package's ``globals()``, where each imported value is cached."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(list(namespace) + list(exports))

    return __getattr__, __dir__
