"""trackcfg: MLflow experiment tracking as configuration.

One ``mlflow.yml`` says where runs are logged and how; :class:`TrackingSession` applies it
to a real MLflow run.  Importing trackcfg never imports mlflow: that happens when a session
starts.
"""

from __future__ import annotations

from ._config import LongParamsStrategy, RankPolicy, TrackingConfig
from ._decorator import tracked
from ._loading import load_config
from ._session import TrackingSession
from .exceptions import (
    ConfigError,
    ExperimentError,
    ParamValueTooLongError,
    RunError,
    TrackcfgError,
    TrackingUnavailableError,
)

__all__ = [
    "ConfigError",
    "ExperimentError",
    "LongParamsStrategy",
    "ParamValueTooLongError",
    "RankPolicy",
    "RunError",
    "TrackcfgError",
    "TrackingConfig",
    "TrackingSession",
    "TrackingUnavailableError",
    "load_config",
    "tracked",
]
