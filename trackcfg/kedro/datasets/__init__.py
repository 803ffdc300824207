"""Kedro datasets that log into the pipeline's MLflow run: kedro-mlflow 2.0.3's seven, under
the same names and with the same catalog arguments, so a catalog moves over by changing the
module part of ``type:`` (``kedro trackcfg migrate`` does it).

- ``MlflowArtifactDataset``: wraps any Kedro dataset (``dataset: {type: ..., ...}``); saves it
  locally, then logs the saved file (or folder) as an artifact under ``artifact_path``;
  loads the local file, or with ``run_id`` downloads it from that run first.
- ``MlflowMetricDataset``: one value of the metric ``key`` (default: the dataset's name).
- ``MlflowMetricHistoryDataset``: a metric's values at several steps (``list``, ``dict`` or
  ``history`` mode).
- ``MlflowMetricsHistoryDataset``: several metrics, ``{key: {"value": v, "step": s}}`` or a
  list of those per key, prefixed with ``prefix`` (default: the dataset's name).
- ``MlflowModelTrackingDataset``, ``MlflowModelLocalFileSystemDataset``,
  ``MlflowModelRegistryDataset``: MLflow models (``_models``).

Imports are lazy: Kedro imports catalog types on every command, and ``import
trackcfg.kedro.datasets`` imports neither mlflow nor the model datasets until one is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trackcfg._lazy import lazy_names as _lazy_names

if TYPE_CHECKING:
    from ._artifacts import MlflowArtifactDataset
    from ._metrics import (
        MlflowMetricDataset,
        MlflowMetricHistoryDataset,
        MlflowMetricsHistoryDataset,
    )
    from ._models import (  # type: ignore[import-not-found, unused-ignore]
        MlflowModelLocalFileSystemDataset,
        MlflowModelRegistryDataset,
        MlflowModelTrackingDataset,
    )

__all__ = [
    "MlflowArtifactDataset",
    "MlflowMetricDataset",
    "MlflowMetricHistoryDataset",
    "MlflowMetricsHistoryDataset",
    "MlflowModelLocalFileSystemDataset",
    "MlflowModelRegistryDataset",
    "MlflowModelTrackingDataset",
]

_MODULES = {
    "MlflowArtifactDataset": "._artifacts",
    "MlflowMetricDataset": "._metrics",
    "MlflowMetricHistoryDataset": "._metrics",
    "MlflowMetricsHistoryDataset": "._metrics",
    "MlflowModelLocalFileSystemDataset": "._models",
    "MlflowModelRegistryDataset": "._models",
    "MlflowModelTrackingDataset": "._models",
}


__getattr__, __dir__ = _lazy_names(__name__, _MODULES)
