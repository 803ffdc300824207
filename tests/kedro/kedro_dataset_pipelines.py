"""The pipelines of the Kedro project that test_kedro_datasets.py generates.

Copied over the generated project's ``pipeline_registry.py``.  ``produce`` saves every kind of
dataset (artifacts wrapping pandas.CSVDataset, text.TextDataset and pickle.PickleDataset;
metric, metric history, metrics history); ``__default__`` also loads each back in a later node
(``check``), whose result is itself an artifact, so a test reads what the reload gave.
"""

from __future__ import annotations

import json
from typing import Any

from kedro.pipeline import Pipeline, node


def make_table(lr: float) -> Any:
    import pandas as pd  # type: ignore[import-untyped, import-not-found, unused-ignore]

    return pd.DataFrame({"x": [1, 2, 3], "y": [lr, lr * 2, lr * 3]})


def summarise(table: Any) -> tuple[str, dict[str, Any], float, list[float], dict[str, Any]]:
    total = float(table["y"].sum())
    report = f"rows: {len(table)}\ntotal: {total}\n"
    model = {"weights": [1.5, -2.0], "bias": total}
    metrics = {
        "precision": {"value": 0.8, "step": 1},
        "recall": [{"value": 0.6, "step": 0}, {"value": 0.7, "step": 1}],
    }
    return report, model, 0.75, [0.5, 0.4, 0.3], metrics


def check(
    table: Any,
    report: str,
    model: dict[str, Any],
    accuracy: float,
    loss_history: list[float],
    metrics: dict[str, Any],
) -> str:
    return json.dumps(
        {
            "table": table.to_dict(orient="list"),
            "report": report,
            "model": model,
            "accuracy": accuracy,
            "loss_history": loss_history,
            "metrics": metrics,
        },
        sort_keys=True,
    )


def register_pipelines() -> dict[str, Pipeline]:
    produce = Pipeline(
        [
            node(make_table, "params:lr", "table", name="make_table"),
            node(
                summarise,
                "table",
                ["report", "model", "accuracy", "loss_history", "metrics"],
                name="summarise",
            ),
        ]
    )
    checked = Pipeline(
        [
            node(
                check,
                ["table", "report", "model", "accuracy", "loss_history", "metrics"],
                "checked",
                name="check",
            )
        ]
    )
    return {"__default__": produce + checked, "produce": produce}
