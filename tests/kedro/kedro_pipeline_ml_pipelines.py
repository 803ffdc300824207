"""A training pipeline whose run logs its inference pipeline as a model, through
kedro-mlflow's ``pipeline_ml_factory`` (test_kedro_pipeline_ml.py migrates the import
to trackcfg's with ``kedro trackcfg migrate``)."""

from typing import Any

import pandas as pd
from kedro.pipeline import Pipeline, node
from kedro_mlflow.pipeline import pipeline_ml_factory  # type: ignore[import-not-found]


def _scaled(instances: pd.DataFrame, scale: dict[str, float]) -> Any:
    return ((instances[["x"]] - scale["mean"]) / scale["std"]).to_numpy()


def fit_scale(instances: pd.DataFrame) -> dict[str, float]:
    return {"mean": float(instances["x"].mean()), "std": float(instances["x"].std())}


def fit(instances: pd.DataFrame, scale: dict[str, float], regularization: float) -> Any:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1 / regularization)
    return model.fit(_scaled(instances, scale), instances["y"].to_numpy())


def predict(
    instances: pd.DataFrame, scale: dict[str, float], classifier: Any, threshold: float
) -> pd.DataFrame:
    proba = classifier.predict_proba(_scaled(instances, scale))[:, 1]
    return pd.DataFrame({"proba": proba.round(10), "label": (proba > threshold).astype(int)})


def register_pipelines() -> dict[str, Pipeline]:
    training = Pipeline(
        [
            node(fit_scale, "instances", "scale", name="fit_scale"),
            node(fit, ["instances", "scale", "params:regularization"], "classifier", name="fit"),
        ]
    )
    inference = Pipeline(
        [
            node(
                predict,
                ["instances", "scale", "classifier", "params:threshold"],
                "predictions",
                name="predict",
            )
        ]
    )
    training_ml = pipeline_ml_factory(training, inference, input_name="instances")
    return {"__default__": training_ml, "training": training_ml, "inference": inference}
