"""``KedroPipelineModel``: an inference pipeline and its fitted datasets as an MLflow pyfunc
model (a ``PythonModel``), with kedro-mlflow 2.0.3's arguments and behaviour.

Packaged (``artifacts``): each inference input but ``input_name`` is one file of the model,
the dataset's own file (a fitted model, a vectorizer), or for a ``params:`` entry its value
pickled.  Loaded (``load_context``): each dataset reads its packaged file, and the values
are kept in memory.  ``predict(context, data, params)`` runs the pipeline with a runner and
no hooks, so it needs no Kedro project or session: only the packages the nodes import.

The class subclasses MLflow's ``PythonModel``, taken through the backend door when this
module is imported (``trackcfg.kedro.pipeline`` imports it on first use only).
"""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline
from kedro.runner import AbstractRunner, SequentialRunner
from kedro.utils import load_obj

from trackcfg._backend import python_model_class

from ._errors import KedroPipelineModelError
from ._pipeline_ml import PipelineML

__all__ = ["KedroPipelineModel"]

logger = logging.getLogger(__name__)

_COPY_MODES = ("deepcopy", "copy", "assign")


class KedroPipelineModel(python_model_class()):  # type: ignore[misc]
    """An inference pipeline as an MLflow pyfunc model.

    - ``pipeline``: the inference pipeline (a ``PipelineML``: its ``inference``), with one
      output, the predictions;
    - ``catalog``: the catalog holding each input but ``input_name``: persisted datasets
      (not ``MemoryDataset``) and ``params:`` entries;
    - ``runner``: the runner ``predict`` uses (``SequentialRunner``), or the class named by
      the ``runner`` param at predict time;
    - ``copy_mode``: how the loaded values are handed to the nodes (``"assign"``, ``"copy"``,
      ``"deepcopy"``, None for Kedro's default, or a ``{dataset: mode}`` mapping).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        catalog: Any,
        input_name: str,
        runner: AbstractRunner | None = None,
        copy_mode: dict[str, str | None] | str | None = "assign",
    ) -> None:
        self.pipeline: Pipeline = (
            pipeline.inference if isinstance(pipeline, PipelineML) else pipeline
        )
        self.input_name = input_name
        self.initial_catalog = self._inputs_of(catalog)
        outputs = sorted(self.pipeline.outputs())
        if len(outputs) != 1:
            listed = "\n - ".join(outputs)
            raise ValueError(
                f"Pipeline must have one and only one output, got '{len(outputs)}' outputs: "
                f"\n - {listed}"
            )
        self.output_name: str = outputs[0]
        self.runner: AbstractRunner = runner or SequentialRunner()
        self.copy_mode = _copy_modes(copy_mode, self.pipeline, self.output_name)
        self.loaded_catalog = DataCatalog(
            datasets={
                name: MemoryDataset(copy_mode=mode)  # type: ignore[arg-type]
                for name, mode in self.copy_mode.items()
            }
        )

    def _inputs_of(self, catalog: Any) -> DataCatalog:
        """The catalog's datasets the pipeline reads (``input_name``: an empty stand-in)."""
        inputs = DataCatalog()
        for name in sorted(self.pipeline.inputs()):
            if name == self.input_name:
                # Replaced at each predict: no dependency on how the training data was stored.
                inputs[name] = MemoryDataset()
                continue
            if name not in catalog:
                raise KedroPipelineModelError(
                    f"The provided catalog must contain '{name}' dataset since it is an "
                    "input of the inference pipeline."
                )
            dataset = catalog[name]
            if isinstance(dataset, MemoryDataset) and not name.startswith("params:"):
                raise KedroPipelineModelError(
                    f"Dataset '{name}' is not persisted: the inference pipeline's inputs "
                    "made by the training pipeline are packaged with the model from their "
                    f"files; declare '{name}' in the catalog with a type that saves to disk "
                    "(not MemoryDataset)."
                )
            logger.info("The dataset '%s' is added to the model's catalog.", name)
            inputs[name] = dataset
        return inputs

    def extract_pipeline_artifacts(
        self, parameters_saving_folder: Path | None = None
    ) -> dict[str, str]:
        """``{input: file URI}`` for ``mlflow.pyfunc.log_model(artifacts=...)``; a
        ``params:<x>`` value is pickled into ``parameters_saving_folder/params_<x>.pkl``."""
        from kedro_datasets.pickle import PickleDataset

        artifacts: dict[str, str] = {}
        for name, dataset in self.initial_catalog.items():
            if name == self.input_name:
                continue
            if name.startswith("params:"):
                if parameters_saving_folder is None:
                    raise KedroPipelineModelError(
                        f"'{name}' is an input of the inference pipeline: give "
                        "parameters_saving_folder to persist it with the model"
                    )
                path = parameters_saving_folder / f"params_{name.removeprefix('params:')}.pkl"
                PickleDataset(filepath=path.as_posix()).save(dataset.load())
                artifacts[name] = path.resolve().as_uri()
            else:
                artifacts[name] = Path(str(_filepath(name, dataset))).resolve().as_uri()
        return artifacts

    def load_context(self, context: Any) -> None:
        packaged = set(context.artifacts)
        expected = set(self.pipeline.inputs()) - {self.input_name}
        if packaged != expected:
            raise ValueError(
                "Provided artifacts do not match catalog entries:"
                f"\n    - 'artifacts - inference.inputs()' = : {packaged - expected}"
                f"\n    - 'inference.inputs() - artifacts' = : {expected - packaged}"
            )
        catalog = copy.deepcopy(self.initial_catalog)
        for name, uri in context.artifacts.items():
            dataset = catalog[name]
            dataset._filepath = _local_path(uri)  # type: ignore[attr-defined]
            self.loaded_catalog[name].save(dataset.load())

    # No type hints: MLflow reads predict's hints as the model's input schema.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        params = dict(params or {})
        runner_name = params.pop("runner", "SequentialRunner")
        runner = (
            self.runner
            if runner_name == type(self.runner).__name__
            else load_obj(runner_name, "kedro.runner")()
        )
        for name, value in params.items():
            logger.info("Using params:%s=%r for the prediction", name, value)
            self.loaded_catalog[f"params:{name}"].save(value)
        # The run adds its outputs to the catalog it is given: a copy per call.
        catalog = copy.deepcopy(self.loaded_catalog)
        catalog[self.input_name].save(model_input)
        from kedro.framework.hooks.manager import _create_hook_manager

        outputs = runner.run(
            pipeline=self.pipeline, catalog=catalog, hook_manager=_create_hook_manager()
        )
        return outputs[self.output_name].load()


def _copy_modes(
    copy_mode: dict[str, str | None] | str | None, pipeline: Pipeline, output: str
) -> dict[str, str | None]:
    names = [name for name in sorted(pipeline.datasets()) if name != output]
    if copy_mode is None or isinstance(copy_mode, str):
        if copy_mode is not None and copy_mode not in _COPY_MODES:
            raise ValueError(f"copy_mode {copy_mode!r} must be one of {', '.join(_COPY_MODES)}")
        return dict.fromkeys(names, copy_mode)
    if isinstance(copy_mode, dict):
        return {**dict.fromkeys(names), **copy_mode}
    raise TypeError(f"'copy_mode' must be a 'str' or a 'dict', not '{type(copy_mode)}'")


def _filepath(name: str, dataset: AbstractDataset[Any, Any]) -> Any:
    path = getattr(dataset, "_filepath", None)
    if path is None:
        raise KedroPipelineModelError(
            f"Dataset '{name}' ({type(dataset).__name__}) has no file path to package with "
            "the model; give it a file-based type in the catalog"
        )
    return path


def _local_path(uri: str) -> Path:
    """The local path of an artifact ``uri`` MLflow hands to ``load_context`` (a path, or
    a ``file:`` URI)."""
    if re.match(r"file:/", uri):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(uri).path))
    return Path(uri)
