"""Names a package imports on first use (PEP 562): its ``__getattr__`` and ``__dir__``, so
that importing the package (``import trackcfg``, ``trackcfg --help``, Kedro reading catalog
types) loads none of the modules behind those names."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(
    package: str, names: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for the package ``package``: ``names`` maps each lazy
    name to the module (relative to the package) it is imported from; a name whose module is
    ``.<name>`` is that module itself.  Each name is imported once, then kept in the package's
    namespace (later lookups are plain attribute reads)."""
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        loaded = importlib.import_module(module, package)
        value = loaded if module == f".{name}" else getattr(loaded, name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(namespace.get("__all__", ())) | set(names))

    return __getattr__, __dir__
