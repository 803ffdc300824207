"""The errors of ``trackcfg.kedro.pipeline``, under kedro-mlflow 2.0.3's names."""

from __future__ import annotations

from trackcfg.exceptions import TrackcfgError

__all__ = ["KedroMlflowPipelineMLError", "KedroPipelineModelError"]


class KedroMlflowPipelineMLError(TrackcfgError, ValueError):
    """A training and an inference pipeline that cannot make a ``PipelineML``: the inference
    pipeline has not one output, ``input_name`` is not one of its inputs, it has inputs the
    training pipeline does not provide, or ``log_model_kwargs`` names the model twice."""


class KedroPipelineModelError(TrackcfgError, ValueError):
    """The inference pipeline cannot be packaged: an input is missing from the catalog, or
    is a ``MemoryDataset`` (nothing on disk to package with the model)."""
