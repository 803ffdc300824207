"""Metric datasets without ``key`` (``prefix``) take their catalog name, as in kedro-mlflow."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["name_metric_datasets"]

_UNNAMED = {
    "MlflowMetricDataset": "key",
    "MlflowMetricHistoryDataset": "key",
    "MlflowMetricsHistoryDataset": "prefix",
}


def name_metric_datasets(catalog: Any, conf_catalog: Mapping[str, Any] | None) -> None:
    """Give each metric dataset of ``catalog`` that its config (``conf_catalog``) gives no
    ``key`` (``prefix`` for ``MlflowMetricsHistoryDataset``) its catalog name.  Only those
    entries are built (catalogs build datasets lazily); dataset factory patterns are not
    entries: their datasets need ``key:``."""
    for name, config in (conf_catalog or {}).items():
        if not isinstance(config, Mapping) or "{" in str(name):
            continue
        kind = str(config.get("type", ""))
        module, _, cls = kind.rpartition(".")
        attribute = _UNNAMED.get(cls)
        if attribute is None or not module.startswith("trackcfg.kedro.datasets"):
            continue
        if config.get(attribute):
            continue
        dataset = catalog.get(name) if hasattr(catalog, "get") else None
        if dataset is None:
            continue
        if attribute == "key" and getattr(dataset, "key", None) is None:
            dataset.key = name
        elif attribute == "prefix" and getattr(dataset, "_prefix", None) is None:
            dataset._prefix = name
