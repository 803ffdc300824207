"""``server.request_header_provider`` (kedro-mlflow's key): building the configured provider.

The provider is MLflow's ``RequestHeaderProvider`` subclass at ``type``, called with
``init_kwargs`` (and ``kedro_context=`` the Kedro context when ``pass_context``: under
``kedro run`` only).  Adding it to MLflow's process-wide registry is ``_state``'s business.
"""

from __future__ import annotations

from typing import Any

from ._backend import build_header_provider
from ._config import TrackingConfig
from .exceptions import ConfigError, ConfigProblem

__all__ = ["header_provider"]


def header_provider(config: TrackingConfig, kedro_context: Any = None) -> Any:
    """The configured provider, built; any failure is a ``ConfigError`` naming the key (and
    file and line), raised before any request."""
    spec = config.server.request_header_provider

    def problem(key: str, message: str) -> ConfigError:
        full = f"server.request_header_provider.{key}"
        source = config.sources.get(full)
        return ConfigError([ConfigProblem(full, message, str(source) if source else None)])

    kwargs = dict(spec.init_kwargs)
    if spec.pass_context:
        if kedro_context is None:
            raise problem(
                "pass_context",
                "is true, but only a Kedro run has a context to pass; set it to false "
                "outside Kedro",
            )
        kwargs["kedro_context"] = kedro_context
    try:
        return build_header_provider(spec.type or "", kwargs)
    except ValueError as exc:
        raise problem("type", str(exc)) from exc
