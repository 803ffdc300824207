"""trackcfg: MLflow experiment tracking as configuration.

One ``mlflow.yml`` says where runs are logged and how; :class:`TrackingSession` applies it
to a real MLflow run.  Importing trackcfg never imports mlflow: that happens when a session
starts.
"""

from __future__ import annotations

from ._config import LongParamsStrategy, RankPolicy, Source, TrackingConfig
from ._decorator import tracked
from ._loading import load_config
from ._session import TrackingSession
from ._workers import activate_inherited_run
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
