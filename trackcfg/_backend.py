"""The boundary between the session's decisions and the tracking library.

``TrackingSession`` talks only to a ``Backend``; ``_mlflow.MlflowBackend`` is the real one and
the only module that imports mlflow.  Values crossing the boundary are plain data (ids,
strings, dicts), never mlflow objects, so a fake backend can drive the session in unit tests.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Protocol

import attrs

from ._params import Batch, Limits

__all__ = ["Backend", "ExperimentRef", "RunRef", "RunStatus"]


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
