"""Logging a ``PipelineML``'s inference pipeline into its training run, when it succeeded.

Called by the hooks' ``after_pipeline_run`` before the session ends, so the model goes where
the run's params and metrics went (its store, offline or not) and the run's status says
whether it was logged: a failure here ends the run FAILED.  Buffered records are sent first:
MLflow copies the run's params onto the logged model when it is created.

An offline run (``server.offline``) also keeps the model's folder among the run's artifacts
(``<name>/MLmodel``, ...): MLflow 3 stores a logged model apart from its run, and ``trackcfg
sync`` uploads runs, so the uploaded run still holds the model (``runs:/<run>/<name>``).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trackcfg import _backend

from ._pipeline_ml import PipelineML

if TYPE_CHECKING:
    from kedro.pipeline import Pipeline

    from trackcfg._session import TrackingSession

__all__ = ["log_pipeline_model"]

logger = logging.getLogger(__name__)


def log_pipeline_model(session: TrackingSession, pipeline: Pipeline, catalog: Any) -> None:
    """Log ``pipeline.inference`` as ``KedroPipelineModel`` into ``session``'s run, when
    ``pipeline`` is a ``PipelineML`` and the session tracks."""
    if not isinstance(pipeline, PipelineML) or not session.enabled or session.run_id is None:
        return
    from trackcfg.kedro.datasets._target import active_run, pipeline_target

    from ._model import KedroPipelineModel

    for name in pipeline.datasets():  # dataset factory patterns become entries
        catalog.exists(name)
    model = KedroPipelineModel(
        pipeline=pipeline.inference,
        catalog=catalog,
        input_name=pipeline.input_name,
        **pipeline.kpm_kwargs,
    )
    kwargs = dict(pipeline.log_model_kwargs)
    signature = kwargs.pop("signature", None)
    if signature == "auto":
        # Every params: input can be changed at predict time, and so can the runner.
        params = {
            name.removeprefix("params:"): catalog.load(name)
            for name in sorted(pipeline.inference.inputs())
            if name.startswith("params:")
        }
        params["runner"] = "SequentialRunner"
        signature = _backend.infer_signature(catalog.load(pipeline.input_name), params)
    with tempfile.TemporaryDirectory(prefix="trackcfg-pipeline-model-") as folder:
        artifacts = model.extract_pipeline_artifacts(parameters_saving_folder=Path(folder))
        session.flush(timeout=session.config.tracking.logging.exit_timeout)
        with active_run(pipeline_target()):
            ref = _backend.log_model(
                "mlflow.pyfunc",
                model,
                {**kwargs, "artifacts": artifacts, "signature": signature},
                "python_model",
            )
        if session.offline_destination is not None:
            _keep_with_the_run(session, model, kwargs, artifacts, signature, Path(folder))
    logger.info("inference pipeline logged as the model %s (run %s)", ref.model_uri, ref.run_id)


# log_model's arguments that save_model also takes (the others name or register the model).
_SAVE_ARGS = frozenset(
    {
        "code_paths",
        "infer_code_paths",
        "conda_env",
        "pip_requirements",
        "extra_pip_requirements",
        "metadata",
        "model_config",
        "input_example",
    }
)


def _keep_with_the_run(
    session: TrackingSession,
    model: Any,
    kwargs: dict[str, Any],
    artifacts: dict[str, str],
    signature: Any,
    folder: Path,
) -> None:
    """The model's folder as the run's artifacts, so that ``trackcfg sync`` carries it."""
    name = str(kwargs.get("name") or "model")
    local = folder / "saved" / name
    local.parent.mkdir()
    args = {key: value for key, value in kwargs.items() if key in _SAVE_ARGS}
    _backend.save_model(
        "mlflow.pyfunc",
        model,
        str(local),
        {**args, "artifacts": artifacts, "signature": signature},
        "python_model",
    )
    session.log_artifact(local)
