"""The one door to MLflow: the ``Backend`` protocol and the factory every caller uses.

``TrackingSession``, the CLI and the worker helpers talk only to a ``Backend`` they get from
``open_backend``; ``_mlflow.MlflowBackend`` is the real one, ``_mlflow`` the only module that
imports mlflow, and this module the only one that imports ``_mlflow`` (lazily: importing it
costs seconds).  Values crossing the boundary are plain data (ids, strings, dicts), never
mlflow objects, so a fake backend (``tests/fakes.py``) can drive the session in unit tests
through the session's ``_backend_factory`` seam.  See docs/architecture.md.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Protocol

import attrs

from ._params import Batch, Limits, MetricPoint

__all__ = [
    "Backend",
    "BackendFactory",
    "ExperimentRef",
    "RunRef",
    "RunStatus",
    "add_header_provider",
    "build_header_provider",
    "header_provider_class",
    "open_backend",
    "remove_header_provider",
]


class RunStatus(enum.Enum):
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"
    SCHEDULED = "SCHEDULED"


@attrs.frozen(kw_only=True)
class ExperimentRef:
    id: str
    name: str
    deleted: bool = False


@attrs.frozen(kw_only=True)
class RunRef:
    id: str
    experiment_id: str
    name: str | None = None
    status: RunStatus = RunStatus.RUNNING
    deleted: bool = False
    params: Mapping[str, str] = attrs.field(factory=dict)


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


class BackendFactory(Protocol):
    """Opens a backend for one store; also knows the limits values must respect, which the
    session checks before any store is opened."""

    def __call__(self, tracking_uri: str, registry_uri: str | None = None) -> Backend: ...

    def limits(self) -> Limits: ...


@attrs.frozen
class _MlflowFactory:
    def __call__(self, tracking_uri: str, registry_uri: str | None = None) -> Backend:
        from ._mlflow import MlflowBackend

        return MlflowBackend(tracking_uri, registry_uri)

    def limits(self) -> Limits:
        from ._mlflow import mlflow_limits

        return mlflow_limits()


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
