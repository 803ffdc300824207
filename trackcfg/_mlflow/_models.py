"""MLflow models for ``trackcfg.kedro.datasets``' model datasets: a flavor module by its import
path, and its ``log_model``, ``save_model`` and ``load_model`` with MLflow's refusals as
``RunError``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlflow.exceptions import MlflowException

from trackcfg._records import ModelRef
from trackcfg._store import mask_uri
from trackcfg.exceptions import RunError

__all__ = [
    "current_run",
    "flavor_module",
    "infer_signature",
    "load_model",
    "log_model",
    "python_model_class",
    "save_model",
]


def flavor_module(flavor: str) -> Any:
    """The MLflow flavor module at import path ``flavor``; ``ValueError`` saying why not."""
    import importlib

    try:
        module = importlib.import_module(flavor)
    except ImportError as exc:
        raise ValueError(
            f"the model flavor {flavor!r} cannot be imported ({exc}); give an MLflow flavor "
            "module such as mlflow.sklearn or mlflow.pyfunc, or install its library"
        ) from None
    if not callable(getattr(module, "load_model", None)):
        raise ValueError(f"{flavor!r} is not an MLflow model flavor: it has no load_model")
    return module


def _model_error(action: str, exc: MlflowException) -> RunError:
    return RunError(f"cannot {action}: {exc.message}")


def log_model(
    flavor: str, model: Any, args: Mapping[str, Any], pyfunc_workflow: str | None
) -> ModelRef:
    module = flavor_module(flavor)
    kwargs = dict(args)
    try:
        if pyfunc_workflow is not None and flavor == "mlflow.pyfunc":
            kwargs[pyfunc_workflow] = model
            info = module.log_model(**kwargs)
        else:
            info = module.log_model(model, **kwargs)
    except MlflowException as exc:
        raise _model_error(f"log the {flavor} model", exc) from None
    return ModelRef(
        model_uri=str(info.model_uri),
        model_id=getattr(info, "model_id", None),
        run_id=getattr(info, "run_id", None),
        name=getattr(info, "name", None),
    )


def save_model(
    flavor: str, model: Any, path: str, args: Mapping[str, Any], pyfunc_workflow: str | None
) -> None:
    module = flavor_module(flavor)
    kwargs = dict(args)
    try:
        if pyfunc_workflow is not None and flavor == "mlflow.pyfunc":
            kwargs[pyfunc_workflow] = model
            module.save_model(path, **kwargs)
        else:
            module.save_model(model, path, **kwargs)
    except MlflowException as exc:
        raise _model_error(f"save the {flavor} model in {path}", exc) from None


def load_model(flavor: str, model_uri: str, args: Mapping[str, Any]) -> Any:
    module = flavor_module(flavor)
    try:
        return module.load_model(model_uri, **dict(args))
    except MlflowException as exc:
        raise _model_error(f"load the model {mask_uri(model_uri)}", exc) from None


def python_model_class() -> type:
    from mlflow.pyfunc.model import PythonModel

    return PythonModel


def infer_signature(model_input: Any, params: Mapping[str, Any] | None) -> Any:
    from mlflow.models import infer_signature as infer

    return infer(model_input=model_input, params=dict(params) if params is not None else None)


def current_run() -> tuple[str | None, str, str | None]:
    """MLflow's active run in this thread (its id, or None), and MLflow's current tracking and
    registry URIs."""
    import mlflow

    run = mlflow.active_run()
    return (
        None if run is None else run.info.run_id,
        mlflow.get_tracking_uri(),
        mlflow.get_registry_uri(),
    )
