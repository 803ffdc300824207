"""The values that cross the door to MLflow (``_backend``), below both the policy and the
boundary: plain data, no I/O, no mlflow.  ``_params`` builds batches of them, ``_rules``
decides on runs and experiments by them, the backends take and return them."""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs

__all__ = [
    "DEFAULT_LIMITS",
    "ArtifactFile",
    "Batch",
    "ExperimentRef",
    "Limits",
    "LoggedModelDetails",
    "MetricPoint",
    "ModelMetric",
    "ModelRef",
    "ModelVersionRef",
    "RunDetails",
    "RunRef",
    "RunStatus",
]

_positive = attrs.validators.ge(1)


@attrs.frozen(kw_only=True)
class Limits:
    """MLflow's limits; the backend fills them from the installed mlflow at run time."""

    param_value: int = attrs.field(default=6000, validator=_positive)
    tag_value: int = attrs.field(default=8000, validator=_positive)
    key: int = attrs.field(default=250, validator=_positive)
    params_per_batch: int = attrs.field(default=100, validator=_positive)
    tags_per_batch: int = attrs.field(default=100, validator=_positive)
    metrics_per_batch: int = attrs.field(default=1000, validator=_positive)
    entities_per_batch: int = attrs.field(default=1000, validator=_positive)
    """Params + tags + metrics in one request."""
    request_bytes: int = attrs.field(default=1_000_000, validator=_positive)
    """Rough payload budget of one request: the sum of key + value lengths."""


DEFAULT_LIMITS = Limits()
"""MLflow 3.17's limits: what ``limits=None`` means, for callers that have no mlflow at hand."""


@attrs.frozen(kw_only=True)
class MetricPoint:
    key: str
    value: float
    step: int
    timestamp: int
    """Milliseconds since the epoch."""


@attrs.frozen(kw_only=True)
class Batch:
    """One ``log_batch`` request: within every limit, no key twice."""

    params: tuple[tuple[str, str], ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    metrics: tuple[MetricPoint, ...] = ()


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
    tags: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class RunDetails:
    """Everything a run holds but its metric histories and artifacts (``trackcfg sync``
    copying an offline run): ``metric_keys`` names the histories to read."""

    id: str
    experiment_id: str
    name: str | None
    status: RunStatus
    start_time: int | None
    end_time: int | None
    tags: Mapping[str, str] = attrs.field(factory=dict)
    params: Mapping[str, str] = attrs.field(factory=dict)
    metric_keys: tuple[str, ...] = ()
    artifact_uri: str | None = None
    """Where the store records the run's artifacts (for a local store, a ``file:`` URI)."""


@attrs.frozen(kw_only=True)
class ModelMetric:
    """A metric point of a logged model (MLflow 3 ties run metrics to a model by its id)."""

    key: str
    value: float
    step: int
    timestamp: int
    dataset_name: str | None = None
    dataset_digest: str | None = None


@attrs.frozen(kw_only=True)
class ModelVersionRef:
    """A registered version of a logged model (the model registry)."""

    name: str
    version: str
    tags: Mapping[str, str] = attrs.field(factory=dict)
    description: str | None = None


@attrs.frozen(kw_only=True)
class LoggedModelDetails:
    """An MLflow 3 logged model of a run (``<flavor>.log_model(..., name=...)``): everything
    ``trackcfg sync`` copies with an offline run."""

    id: str
    name: str
    experiment_id: str
    source_run_id: str | None
    status: str  # "READY" | "PENDING" | "FAILED" | "UNSPECIFIED"
    model_type: str | None
    artifact_uri: str
    step: int = 0  # the run's step the model was logged at
    tags: Mapping[str, str] = attrs.field(factory=dict)
    params: Mapping[str, str] = attrs.field(factory=dict)
    metrics: tuple[ModelMetric, ...] = ()
    versions: tuple[ModelVersionRef, ...] = ()


@attrs.frozen(kw_only=True)
class ArtifactFile:
    """One file of a run's artifacts: its path in the run ('/'-separated) and size."""

    path: str
    size: int | None


@attrs.frozen(kw_only=True)
class ModelRef:
    """A model ``log_model`` logged: the URI that loads it back (``models:/<model_id>``),
    its id, the run it was logged into and its name in that run."""

    model_uri: str
    model_id: str | None = None
    run_id: str | None = None
    name: str | None = None
