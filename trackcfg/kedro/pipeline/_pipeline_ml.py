"""``PipelineML``: a training pipeline that carries the inference pipeline to package.

The facts are kedro-mlflow 2.0.3's: the same checks (and the same error class), the same
defaults (``log_model_kwargs``: ``{"signature": "auto", "name": "model"}``), and the same
way through Kedro's pipeline algebra: filtering (``kedro run --from-nodes``, ``--tags``) keeps
a ``PipelineML``; adding it to the empty pipeline Kedro sums ``--pipelines`` from keeps it
too; combining it with other nodes gives a plain ``Pipeline`` (no model is logged then) with
a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from kedro.pipeline import Pipeline
from kedro.pipeline.node import Node

from ._errors import KedroMlflowPipelineMLError

__all__ = ["PipelineML", "pipeline_ml_factory"]

logger = logging.getLogger(__name__)

DEMOTED = (
    "this PipelineML is combined with other nodes into a plain Pipeline: the run of the "
    "result logs no model; keep the training pipeline by itself (filtered with --nodes, "
    "--tags, ... if needed) to log its inference pipeline"
)


class PipelineML(Pipeline):
    """A training pipeline plus the inference pipeline that its run logs as a model.

    Build it with ``pipeline_ml_factory``.  ``inference`` must have one output;
    ``input_name`` is the inference input a caller of the model gives (the data); every
    other inference input is produced or read by the training pipeline, or a ``params:``
    entry (packaged with the model, overridable at predict time)."""

    KPM_KWARGS_DEFAULT: Mapping[str, Any] = {}
    LOG_MODEL_KWARGS_DEFAULT: Mapping[str, Any] = {"signature": "auto", "name": "model"}

    def __init__(
        self,
        nodes: Iterable[Node | Pipeline],
        *,
        tags: str | Iterable[str] | None = None,
        inference: Pipeline,
        input_name: str | None,
        kpm_kwargs: Mapping[str, Any] | None = None,
        log_model_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(nodes, tags=tags)
        _check_inference(inference)
        self._inference = inference
        allowed = sorted(inference.inputs())
        if input_name not in allowed:
            listed = "\n    - ".join(allowed)
            raise KedroMlflowPipelineMLError(
                f"input_name={input_name!r} but it must be an input of 'inference', i.e. "
                f"one of:\n    - {listed}"
            )
        self._input_name: str = input_name
        self.kpm_kwargs: dict[str, Any] = {**self.KPM_KWARGS_DEFAULT, **(kpm_kwargs or {})}
        self.log_model_kwargs: dict[str, Any] = {
            **self.LOG_MODEL_KWARGS_DEFAULT,
            **_model_name(dict(log_model_kwargs or {})),
        }
        self._check_free_inputs()

    @property
    def training(self) -> Pipeline:
        """The training nodes as a plain ``Pipeline``."""
        return Pipeline(self.nodes)

    @property
    def inference(self) -> Pipeline:
        return self._inference

    @property
    def input_name(self) -> str:
        return self._input_name

    def _check_free_inputs(self) -> None:
        free = (
            self._inference.inputs()
            - {self._input_name}
            - self.all_outputs()
            - self.inputs()
            - {name for name in self._inference.inputs() if name.startswith("params:")}
        )
        if free:
            listed = "\n     - ".join(sorted(free))
            raise KedroMlflowPipelineMLError(
                "The following inputs are free for the inference pipeline:\n"
                f"    - {listed}.\nNo free input is allowed: every input of 'inference' but "
                "'input_name' and 'params:' entries must be in training.all_outputs() or "
                "training.inputs()"
            )

    def _with_nodes(self, pipeline: Pipeline) -> PipelineML:
        return PipelineML(
            pipeline.nodes,
            inference=self._inference,
            input_name=self._input_name,
            kpm_kwargs=self.kpm_kwargs,
            log_model_kwargs=self.log_model_kwargs,
        )

    # Filters keep the model (Kedro filters the pipeline it runs with them).
    def filter(
        self,
        tags: Iterable[str] | None = None,
        from_nodes: Iterable[str] | None = None,
        to_nodes: Iterable[str] | None = None,
        node_names: Iterable[str] | None = None,
        from_inputs: Iterable[str] | None = None,
        to_outputs: Iterable[str] | None = None,
        node_namespaces: Iterable[str] | None = None,
    ) -> PipelineML:
        return self._with_nodes(
            self.training.filter(
                tags=tags,
                from_nodes=from_nodes,
                to_nodes=to_nodes,
                node_names=node_names,
                from_inputs=from_inputs,
                to_outputs=to_outputs,
                node_namespaces=node_namespaces,
            )
        )

    def from_inputs(self, *inputs: str) -> PipelineML:
        return self._with_nodes(self.training.from_inputs(*inputs))

    def to_outputs(self, *outputs: str) -> PipelineML:
        return self._with_nodes(self.training.to_outputs(*outputs))

    def from_nodes(self, *node_names: str) -> PipelineML:
        return self._with_nodes(self.training.from_nodes(*node_names))

    def to_nodes(self, *node_names: str) -> PipelineML:
        return self._with_nodes(self.training.to_nodes(*node_names))

    def only_nodes_with_tags(self, *tags: str) -> PipelineML:
        return self._with_nodes(self.training.only_nodes_with_tags(*tags))

    def tag(self, tags: str | Iterable[str]) -> PipelineML:
        return self._with_nodes(self.training.tag(tags))

    def __and__(self, other: Any) -> PipelineML:
        return self._with_nodes(self.training & other)

    # Combinations with other nodes lose the model (as in kedro-mlflow).
    def only_nodes(self, *node_names: str) -> Pipeline:
        logger.warning(DEMOTED)
        return self.training.only_nodes(*node_names)

    def only_nodes_with_namespaces(self, node_namespaces: list[str]) -> Pipeline:
        logger.warning(DEMOTED)
        return self.training.only_nodes_with_namespaces(node_namespaces)

    def only_nodes_with_inputs(self, *inputs: str) -> Pipeline:
        logger.warning(DEMOTED)
        return self.training.only_nodes_with_inputs(*inputs)

    def only_nodes_with_outputs(self, *outputs: str) -> Pipeline:
        logger.warning(DEMOTED)
        return self.training.only_nodes_with_outputs(*outputs)

    def __add__(self, other: Any) -> Pipeline:
        if isinstance(other, Pipeline) and not other.nodes:
            return self  # Kedro sums the pipelines it runs, starting from an empty one
        logger.warning(DEMOTED)
        combined: Pipeline = self.training + other
        return combined

    def __radd__(self, other: Any) -> Pipeline:
        if isinstance(other, Pipeline) and not other.nodes:
            return self
        logger.warning(DEMOTED)
        combined: Pipeline = other + self.training
        return combined

    def __sub__(self, other: Any) -> Pipeline:
        logger.warning(DEMOTED)
        rest: Pipeline = self.training - other
        return rest

    def __or__(self, other: Any) -> Pipeline:
        logger.warning(DEMOTED)
        union: Pipeline = self.training | other
        return union

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PipelineML):
            return False
        return (
            set(self.nodes) == set(other.nodes)
            and set(self._inference.nodes) == set(other._inference.nodes)
            and self._input_name == other._input_name
            and self.kpm_kwargs == other.kpm_kwargs
            and self.log_model_kwargs == other.log_model_kwargs
        )

    __hash__ = None  # type: ignore[assignment]


def _check_inference(inference: Pipeline) -> None:
    outputs = sorted(inference.outputs())
    if len(outputs) != 1:
        listed = "\n - ".join(outputs)
        raise KedroMlflowPipelineMLError(
            "The inference pipeline must have one and only one output. You are trying to "
            f"set an inference pipeline with '{len(outputs)}' output(s):\n - {listed}"
        )


def _model_name(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``artifact_path`` (MLflow 2's spelling) becomes ``name``; both is an error."""
    if "artifact_path" not in kwargs:
        return kwargs
    if "name" in kwargs:
        raise KedroMlflowPipelineMLError(
            "Both 'artifact_path' (deprecated in MLflow 3) and 'name' were given in "
            "log_model_kwargs; give only 'name'"
        )
    logger.warning("log_model_kwargs: 'artifact_path' is deprecated in MLflow 3; use 'name'")
    kwargs["name"] = kwargs.pop("artifact_path")
    return kwargs


def pipeline_ml_factory(
    training: Pipeline,
    inference: Pipeline,
    input_name: str | None = None,
    kpm_kwargs: Mapping[str, Any] | None = None,
    log_model_kwargs: Mapping[str, Any] | None = None,
) -> PipelineML:
    """The ``training`` pipeline, which logs ``inference`` as an MLflow model at the end of
    its run.

    - ``inference``: one output (the predictions); its inputs are ``input_name`` (the data a
      caller gives), datasets the training pipeline reads or writes (persisted: not
      ``MemoryDataset``), and ``params:`` entries.
    - ``kpm_kwargs``: for ``KedroPipelineModel``: ``copy_mode`` (``"assign"`` by default)
      and ``runner`` (a Kedro runner instance; ``SequentialRunner`` by default).
    - ``log_model_kwargs``: for ``mlflow.pyfunc.log_model`` (``name``: ``model`` by
      default; ``signature: "auto"``, the default, infers it from ``input_name``'s data and
      the ``params:`` inputs, which become inference params, plus ``runner``).
    """
    return PipelineML(
        training.nodes,
        inference=inference,
        input_name=input_name,
        kpm_kwargs=kpm_kwargs,
        log_model_kwargs=log_model_kwargs,
    )
