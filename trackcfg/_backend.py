"""The one door to MLflow: the ``Backend`` protocol and the factory every caller uses.

``TrackingSession``, the CLI and the worker helpers talk only to a ``Backend`` they get from
``open_backend``; ``_mlflow.MlflowBackend`` is the real one, ``_mlflow`` the only module that
imports mlflow, and this module the only one that imports ``_mlflow`` (lazily: importing it
costs seconds).  Values crossing the boundary are plain data (ids, strings, dicts), never
mlflow objects, so a fake backend (``tests/fakes.py``) can drive the session in unit tests
through the session's ``_backend_factory`` seam.  See docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import attrs

from ._records import (
    ArtifactFile,
    Batch,
    ExperimentRef,
    Limits,
    LoggedModelDetails,
    MetricPoint,
    ModelMetric,
    ModelRef,
    ModelVersionRef,
    RunDetails,
    RunRef,
    RunStatus,
)

__all__ = [
    "ArtifactFile",
    "Backend",
    "BackendFactory",
    "ExperimentRef",
    "LoggedModelDetails",
    "ModelMetric",
    "ModelRef",
    "ModelVersionRef",
    "RunDetails",
    "RunRef",
    "RunStatus",
    "add_header_provider",
    "build_header_provider",
    "check_flavor",
    "current_run",
    "download_artifacts",
    "header_provider_class",
    "infer_signature",
    "load_model",
    "log_model",
    "metric_keys",
    "open_backend",
    "python_model_class",
    "remove_header_provider",
    "save_model",
]


class Backend(Protocol):
    """What a session needs from the tracking library, for one tracking store."""

    tracking_uri: str

    def limits(self) -> Limits: ...

    def close(self) -> None:
        """Give back what the backend set up for its store (transport hooks)."""
        ...

    # Process-wide state, always given back by the matching ``restore_*``.
    def use_store(self, experiment_id: str | None) -> object:
        """Make this store (tracking and registry URI) and ``experiment_id`` MLflow's current
        ones; returns what ``restore_store`` needs to give the previous ones back."""
        ...

    def restore_store(self, token: object) -> None: ...

    # Experiments.
    def get_experiment(self, name: str) -> ExperimentRef | None: ...
    def create_experiment(
        self, name: str, artifact_location: str | None, tags: Mapping[str, str] | None
    ) -> str: ...
    def restore_experiment(self, experiment_id: str) -> None: ...

    # Runs.
    def get_run(self, run_id: str) -> RunRef | None: ...
    def active_run_ids(self) -> list[str]:
        """This thread's active-run stack, bottom first."""
        ...

    def start_run(
        self,
        *,
        experiment_id: str,
        name: str | None,
        parent_run_id: str | None,
        tags: Mapping[str, str],
    ) -> RunRef: ...
    def resume_run(self, run_id: str) -> None: ...
    def push_active(self, run_id: str) -> None: ...
    def pop_active(self, run_id: str) -> None: ...
    def end_run(self, run_id: str, status: RunStatus) -> None: ...

    # Logging, always with an explicit run id.
    def log_batch(self, run_id: str, batch: Batch) -> None: ...
    def log_text(self, run_id: str, text: str, artifact_file: str) -> None: ...
    def log_dict(self, run_id: str, data: Mapping[str, Any], artifact_file: str) -> None: ...
    def log_artifact(self, run_id: str, path: str, artifact_path: str | None) -> None: ...

    # Replaying a journal (``trackcfg sync``).
    def metric_history(self, run_id: str, key: str) -> list[MetricPoint]: ...
    def terminate(self, run_id: str, status: RunStatus, end_time: int | None) -> None:
        """Set the run's end status and time, whatever thread or process started it."""
        ...

    # Copying runs between stores (``trackcfg sync`` uploading offline runs).
    def list_experiments(self) -> list[ExperimentRef]:
        """Every experiment of the store, deleted ones too."""
        ...

    def search_runs(self, experiment_ids: Sequence[str], filter_string: str) -> list[RunDetails]:
        """The active (not deleted) runs of these experiments matching MLflow's filter."""
        ...

    def create_run(
        self,
        *,
        experiment_id: str,
        name: str | None,
        start_time: int | None,
        tags: Mapping[str, str],
    ) -> RunRef:
        """A new RUNNING run, never made active (no active-run stack is touched)."""
        ...

    def artifact_files(self, run_id: str) -> list[ArtifactFile]:
        """Every file of the run's artifacts, folders walked."""
        ...

    def download_artifact(self, run_id: str, path: str, dst_dir: str) -> str:
        """Copy one artifact file or folder under ``dst_dir`` (its folders kept); its local
        path.  ``RunError`` naming both when the run or the artifact is not there."""
        ...

    def metric_keys(self, run_id: str) -> list[str]:
        """The keys of the metrics the run holds; ``RunError`` when there is no such run."""
        ...

    # Copying a run's logged models (MLflow 3) with it.
    def logged_models(self, experiment_id: str, run_id: str) -> list[LoggedModelDetails]:
        """The logged models the run produced (``source_run_id``), with their registered
        versions in this store's registry."""
        ...

    def create_logged_model(
        self,
        *,
        experiment_id: str,
        name: str,
        run_id: str,
        tags: Mapping[str, str],
        params: Mapping[str, str],
        model_type: str | None,
    ) -> str:
        """A new (PENDING) logged model produced by run ``run_id``; its id."""
        ...

    def log_model_files(self, model_id: str, local_dir: str, run_id: str) -> None:
        """Upload the model folder ``local_dir`` as the model's files, its ``MLmodel`` naming
        this model and run (not those of the store it was copied from)."""
        ...

    def link_model(
        self, run_id: str, model_id: str, step: int, metrics: Sequence[ModelMetric]
    ) -> None:
        """Record the model as an output of the run at ``step``, with its metric points."""
        ...

    def finalize_logged_model(self, model_id: str, status: str) -> None:
        """Set the model's final status (``READY`` or ``FAILED``)."""
        ...

    def register_model_version(self, model_id: str, run_id: str, version: ModelVersionRef) -> None:
        """Register the logged model as a new version of ``version.name`` (created when
        missing), with its tags and description, unless a version of it exists already."""
        ...


class BackendFactory(Protocol):
    """Opens a backend for one store; also knows the limits values must respect, which the
    session checks before any store is opened."""

    def __call__(self, tracking_uri: str, registry_uri: str | None = None) -> Backend: ...

    def limits(self) -> Limits: ...

    def silence(self, tracking_uri: str, timeout: float) -> str | None:
        """``server.offline: auto``: why the server at ``tracking_uri`` does not answer
        (asked once, within ``timeout``), or None when it answers or the question does not
        apply (not a server)."""
        ...

    def prepare_local_store(self, tracking_uri: str, artifact_root: str) -> None:
        """Before a local store is first used: its experiment 0 keeps its artifacts under
        ``artifact_root`` (MLflow would put them under the CWD)."""
        ...


@attrs.frozen
class _MlflowFactory:
    def __call__(self, tracking_uri: str, registry_uri: str | None = None) -> Backend:
        from ._mlflow import MlflowBackend

        return MlflowBackend(tracking_uri, registry_uri)

    def limits(self) -> Limits:
        from ._mlflow import mlflow_limits

        return mlflow_limits()

    def silence(self, tracking_uri: str, timeout: float) -> str | None:
        from ._offline import server_silence

        return server_silence(tracking_uri, timeout)

    def prepare_local_store(self, tracking_uri: str, artifact_root: str) -> None:
        from ._mlflow import prepare_local_store

        prepare_local_store(tracking_uri, artifact_root)


#: The real backends (MLflow's).  Imports mlflow on first use, never before.
open_backend: BackendFactory = _MlflowFactory()


# MLflow's registry of request header providers is process-wide, not per store: these are
# functions, called by ``_state`` (which owns the process's share of it) and the CLI's check.


def header_provider_class(spec: str) -> type:
    """The class at import path ``spec``; ``ValueError`` saying why it is not usable."""
    from ._mlflow import header_provider_class as load

    return load(spec)


def build_header_provider(spec: str, kwargs: Mapping[str, Any]) -> Any:
    from ._mlflow import build_header_provider as build

    return build(spec, kwargs)


def add_header_provider(provider: Any) -> None:
    from ._mlflow import add_header_provider as add

    add(provider)


def remove_header_provider(provider: Any) -> None:
    from ._mlflow import remove_header_provider as remove

    remove(provider)


def download_artifacts(
    tracking_uri: str, registry_uri: str | None, run_id: str, artifact_path: str, dst_path: str
) -> str:
    """Download a run's artifact file or folder into the folder ``dst_path``; its local path
    (for ``trackcfg.kedro.datasets``; ``RunError`` when it is not there)."""
    backend = open_backend(tracking_uri, registry_uri)
    try:
        return backend.download_artifact(run_id, artifact_path, dst_path)
    finally:
        backend.close()


def metric_keys(tracking_uri: str, registry_uri: str | None, run_id: str) -> list[str]:
    """The keys of the metrics a run holds (for ``trackcfg.kedro.datasets``; ``RunError``
    when there is no such run)."""
    backend = open_backend(tracking_uri, registry_uri)
    try:
        return backend.metric_keys(run_id)
    finally:
        backend.close()


# MLflow models (``trackcfg.kedro.datasets``' model datasets).  ``flavor`` is the import path
# of an MLflow flavor module (``mlflow.sklearn``, ``mlflow.pyfunc``, a custom one); calls
# that need a store use MLflow's current one (the caller sets it: ``Backend.use_store``) and
# ``log_model`` logs into MLflow's active run (the caller makes it active).


def check_flavor(flavor: str) -> None:
    """Import the flavor module; ``ValueError`` saying why it is not usable."""
    from ._mlflow import flavor_module

    flavor_module(flavor)


def log_model(
    flavor: str, model: Any, args: Mapping[str, Any], pyfunc_workflow: str | None = None
) -> ModelRef:
    """``<flavor>.log_model(model, **args)`` into MLflow's active run (``mlflow.pyfunc``:
    the model is passed as ``args[pyfunc_workflow]``); ``RunError`` when MLflow refuses."""
    from ._mlflow import log_model as log

    return log(flavor, model, args, pyfunc_workflow)


def save_model(
    flavor: str,
    model: Any,
    path: str,
    args: Mapping[str, Any],
    pyfunc_workflow: str | None = None,
) -> None:
    """``<flavor>.save_model(model, path, **args)``: a model folder on the local disk."""
    from ._mlflow import save_model as save

    save(flavor, model, path, args, pyfunc_workflow)


def load_model(flavor: str, model_uri: str, args: Mapping[str, Any]) -> Any:
    """``<flavor>.load_model(model_uri, **args)``; ``RunError`` naming the URI when there is
    no such model."""
    from ._mlflow import load_model as load

    return load(flavor, model_uri, args)


def python_model_class() -> type:
    """MLflow's ``mlflow.pyfunc.PythonModel``, the base class of a custom pyfunc model
    (``trackcfg.kedro.pipeline.KedroPipelineModel``)."""
    from ._mlflow import python_model_class as base

    return base()


def infer_signature(model_input: Any, params: Mapping[str, Any] | None = None) -> Any:
    """MLflow's signature of a model taking ``model_input`` and inference ``params``."""
    from ._mlflow import infer_signature as infer

    return infer(model_input, params)


def current_run() -> tuple[str | None, str, str | None]:
    """MLflow's view of this thread now: its active run's id (None: no run), its tracking
    URI (``mlflow.set_tracking_uri``, else ``MLFLOW_TRACKING_URI``, else MLflow's default)
    and its registry URI.  Imports mlflow."""
    from ._mlflow import current_run as current

    return current()
