"""trackcfg: MLflow experiment tracking as configuration.

One ``mlflow.yml`` says where runs are logged and how; :class:`TrackingSession` applies it
to a real MLflow run.  Importing trackcfg never imports mlflow: that happens when a session
starts.  Nor does it import the session, the configuration or their dependencies: each name
below is imported on first use (PEP 562), so ``import trackcfg`` and ``trackcfg --help``
start fast; ``from trackcfg import TrackingSession`` works as always.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_names as _lazy_names
from .exceptions import (
    ConfigError,
    CredentialsError,
    ExperimentError,
    ParamValueTooLongError,
    RunError,
    ServerError,
    TrackcfgError,
    TrackingUnavailableError,
)

if TYPE_CHECKING:
    from ._config import LongParamsStrategy, RankPolicy, Source, TrackingConfig
    from ._decorator import tracked
    from ._loading import load_config
    from ._session import TrackingSession
    from ._workers import activate_inherited_run

#: The names imported on first use, and their modules.
_LAZY = {
    "LongParamsStrategy": "._config",
    "RankPolicy": "._config",
    "Source": "._config",
    "TrackingConfig": "._config",
    "tracked": "._decorator",
    "load_config": "._loading",
    "TrackingSession": "._session",
    "activate_inherited_run": "._workers",
}

__all__ = [
    "ConfigError",
    "CredentialsError",
    "ExperimentError",
    "LongParamsStrategy",
    "ParamValueTooLongError",
    "RankPolicy",
    "RunError",
    "ServerError",
    "Source",
    "TrackcfgError",
    "TrackingConfig",
    "TrackingSession",
    "TrackingUnavailableError",
    "activate_inherited_run",
    "load_config",
    "tracked",
]


__getattr__, __dir__ = _lazy_names(__name__, _LAZY)
