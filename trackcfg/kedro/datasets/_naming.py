"""Metric datasets without ``key`` (``prefix``) take their catalog name, as in kedro-mlflow."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["name_metric_datasets"]

_UNNAMED = {
    "MlflowMetricDataset": "key",
    "MlflowMetricHistoryDataset": "key",
    "MlflowMetricsHistoryDataset": "prefix",
}
_MODULE = "trackcfg.kedro.datasets"


def name_metric_datasets(catalog: Any, conf_catalog: Mapping[str, Any] | None) -> None:
    """Give each metric dataset of ``catalog`` with no ``key`` (``prefix`` for
    ``MlflowMetricsHistoryDataset``) its catalog name.

    The runtime catalog is read, so datasets a catalog holds without YAML (built in code, a
    custom ``DATA_CATALOG_CLASS``) are named too; only metric datasets are built (catalogs
    build the others lazily).  A catalog that cannot list its entries (``keys``) is read
    through its YAML config (``conf_catalog``).  Dataset factory patterns are not entries:
    their datasets need ``key:``."""
    for name in _metric_entries(catalog, conf_catalog):
        dataset = catalog.get(name)
        if dataset is None:
            continue
        attribute = _UNNAMED.get(type(dataset).__name__)
        if attribute == "key" and getattr(dataset, "key", None) is None:
            dataset.key = name
        elif attribute == "prefix" and getattr(dataset, "_prefix", None) is None:
            dataset._prefix = name


def _metric_entries(catalog: Any, conf_catalog: Mapping[str, Any] | None) -> Iterable[str]:
    if not hasattr(catalog, "get"):
        return []
    keys = getattr(catalog, "keys", None)
    if keys is None:  # not a DataCatalog: its YAML says which entries are metric datasets
        return [
            str(name)
            for name, config in (conf_catalog or {}).items()
            if isinstance(config, Mapping)
            and "{" not in str(name)
            and _is_metric(str(config.get("type", "")))
        ]
    get_type = getattr(catalog, "get_type", None)
    names = []
    for name in keys():
        if get_type is not None:  # the class path, without building the dataset
            kind = str(get_type(name) or "")
        else:
            dataset = catalog.get(name)
            kind = f"{type(dataset).__module__}.{type(dataset).__name__}"
        if _is_metric(kind):
            names.append(str(name))
    return names


def _is_metric(kind: str) -> bool:
    module, _, cls = kind.rpartition(".")
    return cls in _UNNAMED and module.startswith(_MODULE)
