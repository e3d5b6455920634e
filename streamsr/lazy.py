"""Package attributes imported on first use (PEP 562), so a light import stays light.

`import streamsr` and `streamsr --help` would otherwise pay ~3 s for torch, PyAV and the model
before doing anything; packages list their heavy public names here instead.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, table: dict[str, str],
                 namespace: dict) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The module-level `__getattr__` and `__dir__` of `package`: each name in `table` (name ->
    module) is imported from its module on first access and kept in `namespace`."""

    def __getattr__(name: str) -> object:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(table[name]), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__
