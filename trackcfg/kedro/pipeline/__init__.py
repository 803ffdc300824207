"""kedro-mlflow 2.0.3's ``pipeline_ml_factory``: a training pipeline that logs, at the end of
its run, the inference pipeline and the fitted datasets it needs as one MLflow pyfunc model.

::

    from trackcfg.kedro.pipeline import pipeline_ml_factory

    def register_pipelines():
        training = pipeline([...])          # fits "vectorizer", "classifier" (persisted)
        inference = pipeline([...])         # "instances" + fitted datasets -> "predictions"
        return {"training": pipeline_ml_factory(training, inference, input_name="instances")}

``kedro run --pipeline training`` runs the training nodes in trackcfg's session; when they
succeed, the hooks log ``KedroPipelineModel`` (``mlflow.pyfunc``, name ``model`` unless
``log_model_kwargs`` says otherwise) into the same run, its signature inferred from
``input_name``'s data.  ``mlflow.pyfunc.load_model(uri).predict(df)`` then runs the inference
pipeline in any process, without a Kedro project or session.

Importing this module imports neither mlflow nor ``KedroPipelineModel``'s module (a subclass
of MLflow's ``PythonModel``) until ``KedroPipelineModel`` is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import KedroMlflowPipelineMLError, KedroPipelineModelError
from ._pipeline_ml import PipelineML, pipeline_ml_factory

if TYPE_CHECKING:
    from ._model import KedroPipelineModel

__all__ = [
    "KedroMlflowPipelineMLError",
    "KedroPipelineModel",
    "KedroPipelineModelError",
    "PipelineML",
    "pipeline_ml_factory",
]


def __getattr__(name: str) -> Any:
    if name != "KedroPipelineModel":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = importlib.import_module("._model", __name__).KedroPipelineModel
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
