"""``server.request_header_provider``: the configured class, checked, built, and added to
MLflow's process-wide registry of header providers for a session (``_state`` owns the
process's share of it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._internals import header_providers

__all__ = [
    "add_header_provider",
    "build_header_provider",
    "header_provider_class",
    "remove_header_provider",
]


def header_provider_class(spec: str) -> type:
    """Import ``spec`` (``package.module.Class``) and check that it is one of MLflow's
    ``RequestHeaderProvider`` classes; ``ValueError`` says what is wrong."""
    import importlib

    from mlflow.tracking.request_header.abstract_request_header_provider import (
        RequestHeaderProvider,
    )

    module_name, _, class_name = spec.strip().rpartition(".")
    if not module_name or not class_name:
        raise ValueError(f"{spec!r} is not a dotted path to a class (package.module.Class)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"module {module_name!r} has no {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, RequestHeaderProvider)):
        raise ValueError(
            f"{spec!r} must be a subclass of "
            "mlflow.tracking.request_header.abstract_request_header_provider."
            "RequestHeaderProvider"
        )
    return cls


def build_header_provider(spec: str, kwargs: Mapping[str, Any]) -> Any:
    """The provider class at ``spec`` built with ``kwargs``; ``ValueError`` says what is
    wrong (the session names the config key)."""
    cls = header_provider_class(spec)
    try:
        return cls(**kwargs)
    except Exception as exc:
        names = ", ".join(sorted(kwargs)) or "no arguments"
        raise ValueError(f"{spec}({names}) failed: {type(exc).__name__}: {exc}") from exc


def add_header_provider(provider: Any) -> None:
    """Ask ``provider`` for headers on every MLflow request until ``remove_header_provider``."""
    header_providers().append(provider)


def remove_header_provider(provider: Any) -> None:
    providers = header_providers()
    for i in range(len(providers) - 1, -1, -1):
        if providers[i] is provider:
            del providers[i]
            return
