"""An in-memory stand-in for MLflow behind trackcfg's ``Backend`` protocol, for fast unit tests
of the session's decisions (``TrackingSession(config, _backend_factory=FakeStore())``).

``FakeStore`` is the world a test looks at afterwards: experiments, runs (status, name, parent,
params, tags, metrics, artifacts), this process's active-run stacks (one per thread, like
MLflow's) and MLflow's process-wide "current store / active experiment", plus every call made
through it, in order.  It is also the ``BackendFactory``: calling it opens a ``FakeBackend`` on
the same store, whatever the URI (each opening is recorded in ``opened``).

The fake follows ``trackcfg/_mlflow``'s ``MlflowBackend`` where a session can tell the
difference, including MLflow's refusals that backend passes on: a param logged again with
another value, a key twice in one batch, a batch past the limits, logging to a missing or
deleted run (``RunError``, as the backend translates them); a run started under a parent that
is not the thread's active run, or that does not exist; reopening a run whose experiment is
not MLflow's active experiment.  Where real MLflow raises an ``MlflowException`` the backend
lets through untranslated, the fake raises ``RunError`` (it cannot raise mlflow's type without
importing mlflow) and the message says "MLflow would raise".

It imports no mlflow, on purpose: importing mlflow costs seconds.  It is never the only proof
of an MLflow behaviour: ``test_session.py`` and ``test_mlflow_backend.py`` check
the same behaviours on real stores.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trackcfg import TrackingConfig, TrackingSession, load_config
from trackcfg._backend import (
    ArtifactFile,
    ExperimentRef,
    LoggedModelDetails,
    ModelMetric,
    ModelVersionRef,
    RunDetails,
    RunRef,
    RunStatus,
)
from trackcfg._params import Batch, Limits, MetricPoint
from trackcfg.exceptions import ExperimentError, RunError

if TYPE_CHECKING:
    from trackcfg._backend import Backend, BackendFactory

__all__ = [
    "MLFLOW3_LIMITS",
    "Call",
    "FakeBackend",
    "FakeExperiment",
    "FakeRun",
    "FakeStore",
]

MLFLOW3_LIMITS = Limits(
    param_value=6000,
    tag_value=8000,
    key=250,
    params_per_batch=100,
    tags_per_batch=100,
    metrics_per_batch=1000,
    entities_per_batch=1000,
    request_bytes=1_000_000,
)
"""``mlflow.utils.validation``'s limits in MLflow 3 (3.17: ``MAX_BATCH_LOG_REQUEST_SIZE`` is
``int(1e6)``), what ``trackcfg._mlflow.mlflow_limits()`` reads there."""

PARENT_RUN_TAG = "mlflow.parentRunId"
_START_TIMES = itertools.count(1_700_000_000_000)
#: The one filter form the fake understands: a tag equal to a value.
_TAG_FILTER = re.compile(r"^tags\.`(?P<key>[^`]+)` = '(?P<value>[^']*)'$")
RUN_NAME_TAG = "mlflow.runName"


@dataclasses.dataclass
class FakeExperiment:
    id: str
    name: str
    deleted: bool = False
    artifact_location: str | None = None
    tags: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class FakeRun:
    id: str
    experiment_id: str
    name: str | None
    status: RunStatus = RunStatus.RUNNING
    parent_id: str | None = None
    deleted: bool = False
    params: dict[str, str] = dataclasses.field(default_factory=dict)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    metrics: list[MetricPoint] = dataclasses.field(default_factory=list)
    artifacts: dict[str, str] = dataclasses.field(default_factory=dict)
    """Artifact path → its text (``log_dict``: JSON; ``log_artifact``: the file's text)."""
    start_time: int = dataclasses.field(default_factory=lambda: next(_START_TIMES))
    """Increasing in creation order (MLflow: ms, which ties within one ms)."""

    @property
    def user_tags(self) -> dict[str, str]:
        """The tags without MLflow's own ``mlflow.*`` ones."""
        return {k: v for k, v in self.tags.items() if not k.startswith("mlflow.")}

    def ref(self) -> RunRef:
        return RunRef(
            id=self.id,
            experiment_id=self.experiment_id,
            name=self.name,
            status=self.status,
            deleted=self.deleted,
            params=dict(self.params),
            tags=dict(self.tags),
        )


@dataclasses.dataclass(frozen=True)
class Call:
    """One call through the store: the factory's (``limits``, ``open``) or a backend's."""

    method: str
    args: tuple[object, ...]
    thread: str


class FakeStore:
    """One in-memory tracking store, shared by every backend it opens; a ``BackendFactory``."""

    def __init__(self, limits: Limits = MLFLOW3_LIMITS) -> None:
        self._limits = limits
        self._lock = threading.RLock()
        self._stacks = threading.local()
        self._next_experiment = 1
        self.experiments: dict[str, FakeExperiment] = {}
        self.runs: dict[str, FakeRun] = {}
        self.calls: list[Call] = []
        self.opened: list[tuple[str, str | None]] = []
        """``(tracking_uri, registry_uri)`` of each backend opened, in order."""
        self.backends: list[FakeBackend] = []
        # MLflow's process-wide state that use_store / restore_store set and give back.
        self.current_tracking_uri: str | None = None
        self.current_registry_uri: str | None = None
        self.active_experiment_id: str | None = None
        self._failures: dict[str, list[BaseException]] = {}
        self.refused_metrics: set[str] = set()
        self.silent: str | None = None
        """What ``silence()`` answers: None, the in-memory store always answers; a reason
        stands for a server that does not (``server.offline: auto`` falls back)."""
        self.failing_keys: dict[str, Callable[[], BaseException]] = {}

    # ---------------------------------------------------------------- BackendFactory

    def __call__(self, tracking_uri: str, registry_uri: str | None = None) -> FakeBackend:
        self.record("open", tracking_uri, registry_uri)
        backend = FakeBackend(self, tracking_uri, registry_uri)
        with self._lock:
            self.opened.append((tracking_uri, registry_uri))
            self.backends.append(backend)
        return backend

    def limits(self) -> Limits:
        self.record("limits")
        return self._limits

    def silence(self, tracking_uri: str, timeout: float) -> str | None:
        self.record("silence", tracking_uri)
        return self.silent

    def prepare_local_store(self, tracking_uri: str, artifact_root: str) -> None:
        self.record("prepare_local_store", tracking_uri, artifact_root)

    # ---------------------------------------------------------------- calls and failures

    def record(self, method: str, *args: object) -> None:
        """Note a call, then raise the failure queued for ``method`` by ``fail``, if any."""
        with self._lock:
            self.calls.append(Call(method, args, threading.current_thread().name))
            queued = self._failures.get(method)
            failure = queued.pop(0) if queued else None
        if failure is not None:
            raise failure

    def refuse_metric(self, key: str) -> None:
        """Refuse (like MLflow refuses an invalid value) every batch holding metric ``key``."""
        with self._lock:
            self.refused_metrics.add(key)

    def fail_batches_holding(self, key: str, error: Callable[[], BaseException]) -> None:
        """Every batch holding a param, tag or metric ``key`` raises ``error()``, each time
        (a server answering HTTP 500 to one value, again and again)."""
        with self._lock:
            self.failing_keys[key] = error

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    def fail(self, method: str, error: BaseException) -> None:
        """Make the next call of ``method`` (a backend method, ``open`` or ``limits``) raise
        ``error`` after being recorded, without doing anything."""
        with self._lock:
            self._failures.setdefault(method, []).append(error)

    def methods(self) -> list[str]:
        """The names of the calls made so far, in order."""
        with self._lock:
            return [call.method for call in self.calls]

    def called(self, method: str) -> list[Call]:
        with self._lock:
            return [call for call in self.calls if call.method == method]

    def batches(self) -> list[Batch]:
        """Every ``log_batch`` request, in order (refused ones too)."""
        return [
            batch
            for call in self.called("log_batch")
            for batch in call.args[1:2]
            if isinstance(batch, Batch)
        ]

    # ---------------------------------------------------------------- what a test sets up

    def add_experiment(self, name: str, *, deleted: bool = False) -> str:
        """An experiment already in the store (created by someone else); returns its id."""
        with self._lock:
            if any(e.name == name for e in self.experiments.values()):
                raise ValueError(f"experiment {name!r} exists already")
            experiment_id = str(self._next_experiment)
            self._next_experiment += 1
            self.experiments[experiment_id] = FakeExperiment(experiment_id, name, deleted)
            return experiment_id

    def add_run(
        self,
        experiment_id: str,
        *,
        name: str | None = None,
        status: RunStatus = RunStatus.FINISHED,
        params: Mapping[str, str] | None = None,
        parent_id: str | None = None,
        deleted: bool = False,
    ) -> str:
        """A run already in the store (not active in any thread); returns its id."""
        with self._lock:
            if experiment_id not in self.experiments:
                raise ValueError(f"no experiment {experiment_id!r}")
            run = FakeRun(
                id=uuid.uuid4().hex,
                experiment_id=experiment_id,
                name=name,
                status=status,
                parent_id=parent_id,
                deleted=deleted,
                params=dict(params or {}),
            )
            if parent_id is not None:
                run.tags[PARENT_RUN_TAG] = parent_id
            self.runs[run.id] = run
            return run.id

    def mlflow_start_run(self, experiment_id: str | None = None, name: str | None = None) -> str:
        """What a user's plain ``mlflow.start_run(nested=True)`` does in the calling thread: a
        new run, child of this thread's active run if any, in ``experiment_id`` (default: the
        active experiment), pushed on this thread's stack.  Returns its id."""
        stack = self.stack()
        with self._lock:
            where = experiment_id or self.active_experiment_id
            if where is None:
                where = self.add_experiment(f"user-{uuid.uuid4().hex[:8]}")
            run_id = self.add_run(
                where,
                name=name,
                status=RunStatus.RUNNING,
                parent_id=stack[-1] if stack else None,
            )
            stack.append(run_id)
            return run_id

    def mlflow_end_run(self, status: RunStatus = RunStatus.FINISHED) -> None:
        """What a user's plain ``mlflow.end_run()`` does: end this thread's top active run."""
        stack = self.stack()
        if stack:
            run_id = stack.pop()
            with self._lock:
                self.runs[run_id].status = status

    # ---------------------------------------------------------------- what a test reads

    def stack(self) -> list[str]:
        """The calling thread's active-run stack (MLflow's is per thread), bottom first: the
        list itself, so a test may push a run it made active with plain MLflow."""
        stack: list[str] | None = getattr(self._stacks, "runs", None)
        if stack is None:
            stack = []
            self._stacks.runs = stack
        return stack

    def run(self, run_id: str | None) -> FakeRun:
        assert run_id is not None, "no run id"
        with self._lock:
            return self.runs[run_id]

    def experiment_named(self, name: str) -> FakeExperiment | None:
        with self._lock:
            for experiment in self.experiments.values():
                if experiment.name == name:
                    return experiment
            return None

    def children_of(self, run_id: str | None) -> list[FakeRun]:
        with self._lock:
            return [run for run in self.runs.values() if run.parent_id == run_id]

    # ---------------------------------------------------------------- shared by the backends

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    def live_run(self, run_id: str) -> FakeRun:
        """The run to log to: MLflow refuses a missing or deleted one."""
        run = self.runs.get(run_id)
        if run is None:
            raise RunError(f"MLflow refused what was logged to run {run_id}: Run not found")
        if run.deleted:
            raise RunError(
                f"MLflow refused what was logged to run {run_id}: the run must be in the "
                "'active' lifecycle stage"
            )
        return run


class FakeBackend:
    """One backend opened by ``FakeStore``: the ``Backend`` protocol over the shared store."""

    def __init__(self, store: FakeStore, tracking_uri: str, registry_uri: str | None) -> None:
        self.store = store
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri
        self.closed = False

    def _call(self, method: str, *args: object) -> None:
        self.store.record(method, *args)

    def limits(self) -> Limits:
        return self.store.limits()

    def close(self) -> None:
        self._call("close", self.tracking_uri)
        self.closed = True

    # ---------------------------------------------------------------- process-wide state

    def use_store(self, experiment_id: str | None) -> object:
        self._call("use_store", self.tracking_uri, experiment_id)
        store = self.store
        with store.lock:
            token = (
                store.current_tracking_uri,
                store.current_registry_uri,
                store.active_experiment_id,
            )
            store.current_tracking_uri = self.tracking_uri
            if self.registry_uri is not None:
                store.current_registry_uri = self.registry_uri
            if experiment_id is not None:
                store.active_experiment_id = experiment_id
        return token

    def restore_store(self, token: object) -> None:
        self._call("restore_store", token)
        assert isinstance(token, tuple), f"not a token of use_store: {token!r}"
        store = self.store
        with store.lock:
            (
                store.current_tracking_uri,
                store.current_registry_uri,
                store.active_experiment_id,
            ) = token

    # ---------------------------------------------------------------- experiments

    def get_experiment(self, name: str) -> ExperimentRef | None:
        self._call("get_experiment", name)
        found = self.store.experiment_named(name)
        if found is None:
            return None
        return ExperimentRef(id=found.id, name=found.name, deleted=found.deleted)

    def create_experiment(
        self, name: str, artifact_location: str | None, tags: Mapping[str, str] | None
    ) -> str:
        self._call("create_experiment", name, artifact_location, dict(tags or {}))
        store = self.store
        with store.lock:
            found = store.experiment_named(name)
            if found is not None:
                # MlflowBackend: created meanwhile by another process → use it; deleted → refuse.
                if not found.deleted:
                    return found.id
                raise ExperimentError(
                    f"cannot create experiment {name!r}: an experiment with this name exists "
                    "(deleted)"
                )
            experiment_id = store.add_experiment(name)
            experiment = store.experiments[experiment_id]
            experiment.artifact_location = artifact_location
            experiment.tags = dict(tags or {})
            return experiment_id

    def restore_experiment(self, experiment_id: str) -> None:
        self._call("restore_experiment", experiment_id)
        with self.store.lock:
            experiment = self.store.experiments.get(experiment_id)
            if experiment is None:
                raise ExperimentError(f"no experiment {experiment_id!r} (MLflow would raise)")
            experiment.deleted = False

    # ---------------------------------------------------------------- runs

    def get_run(self, run_id: str) -> RunRef | None:
        self._call("get_run", run_id)
        with self.store.lock:
            run = self.store.runs.get(run_id)
            return None if run is None else run.ref()

    def active_run_ids(self) -> list[str]:
        self._call("active_run_ids")
        return list(self.store.stack())

    def start_run(
        self,
        *,
        experiment_id: str,
        name: str | None,
        parent_run_id: str | None,
        tags: Mapping[str, str],
    ) -> RunRef:
        self._call("start_run", experiment_id, name, parent_run_id, dict(tags))
        store, stack = self.store, self.store.stack()
        with store.lock:
            top = stack[-1] if stack else None
            if top is not None and top != parent_run_id:
                raise RunError(
                    f"cannot start a run under {parent_run_id!r} while run {top!r} is active "
                    "in this thread"
                )
            if parent_run_id is not None:
                parent = store.runs.get(parent_run_id)
                if parent is None or parent.deleted:
                    raise RunError(
                        f"Run with id={parent_run_id} not found (MLflow would raise "
                        "MlflowException)"
                    )
            experiment = store.experiments.get(experiment_id)
            if experiment is None or experiment.deleted:
                raise RunError(
                    f"experiment {experiment_id!r} does not exist or is deleted (MLflow would "
                    "raise MlflowException)"
                )
            run_id = store.add_run(
                experiment_id, name=name, status=RunStatus.RUNNING, parent_id=parent_run_id
            )
            run = store.runs[run_id]
            run.tags.update(tags)
            if name:
                run.tags[RUN_NAME_TAG] = name
            stack.append(run_id)
            return run.ref()

    def resume_run(self, run_id: str) -> None:
        self._call("resume_run", run_id)
        store = self.store
        with store.lock:
            run = store.runs.get(run_id)
            if run is None:
                raise RunError(f"Run with id={run_id} not found (MLflow would raise)")
            # mlflow.start_run(run_id=...) refuses a run outside the active experiment and a
            # deleted run before touching it.
            active = store.active_experiment_id
            if active is not None and active != run.experiment_id:
                raise RunError(
                    f"Cannot start run with ID {run_id} because active experiment ID does not "
                    "match environment run ID (MLflow would raise MlflowException)"
                )
            if run.deleted:
                raise RunError(
                    f"Cannot start run with ID {run_id} because it is in the deleted state "
                    "(MLflow would raise MlflowException)"
                )
            run.status = RunStatus.RUNNING
            store.stack().append(run_id)

    def push_active(self, run_id: str) -> None:
        self._call("push_active", run_id)
        with self.store.lock:
            if run_id not in self.store.runs:
                raise RunError(f"Run with id={run_id} not found (MLflow would raise)")
        self.store.stack().append(run_id)

    def pop_active(self, run_id: str) -> None:
        self._call("pop_active", run_id)
        _remove_last(self.store.stack(), run_id)

    def end_run(self, run_id: str, status: RunStatus) -> None:
        self._call("end_run", run_id, status)
        store = self.store
        _remove_last(store.stack(), run_id)
        with store.lock:
            run = store.runs.get(run_id)
            if run is None:
                raise RunError(f"Run with id={run_id} not found (MLflow would raise)")
            run.status = status

    # ---------------------------------------------------------------- logging

    def log_batch(self, run_id: str, batch: Batch) -> None:
        self._call("log_batch", run_id, batch)
        store = self.store
        limits = store._limits
        keys = {k for k, _ in batch.params} | {k for k, _ in batch.tags}
        for key in keys | {m.key for m in batch.metrics}:
            if key in store.failing_keys:
                raise store.failing_keys[key]()
        with store.lock:
            run = store.live_run(run_id)
            problems = _batch_problems(batch, limits)
            problems += [
                f"Invalid value for metric {m.key!r}"
                for m in batch.metrics
                if m.key in store.refused_metrics
            ]
            for key, value in batch.params:
                if key in run.params and run.params[key] != value:
                    problems.append(
                        f"Changing param values is not allowed. Param with key={key!r} was "
                        f"already logged with value={run.params[key]!r} for run ID={run_id!r}. "
                        f"Attempted logging new value {value!r}"
                    )
            if problems:  # nothing of a refused batch is written, like MLflow's stores
                raise RunError(
                    f"MLflow refused what was logged to run {run_id}: {'; '.join(problems)}"
                )
            run.params.update(batch.params)
            run.tags.update(batch.tags)
            run.metrics.extend(batch.metrics)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self._call("log_text", run_id, artifact_file)
        with self.store.lock:
            self.store.live_run(run_id).artifacts[artifact_file] = text

    def log_dict(self, run_id: str, data: Mapping[str, Any], artifact_file: str) -> None:
        self._call("log_dict", run_id, artifact_file)
        text = json.dumps(dict(data), indent=2, default=str)
        with self.store.lock:
            self.store.live_run(run_id).artifacts[artifact_file] = text

    def log_artifact(self, run_id: str, path: str, artifact_path: str | None) -> None:
        self._call("log_artifact", run_id, path, artifact_path)
        source = Path(path)
        text = source.read_bytes().decode("utf-8", errors="replace")
        key = f"{artifact_path.rstrip('/')}/{source.name}" if artifact_path else source.name
        with self.store.lock:
            self.store.live_run(run_id).artifacts[key] = text

    # ---------------------------------------------------------------- journal replay

    def metric_history(self, run_id: str, key: str) -> list[MetricPoint]:
        self._call("metric_history", run_id, key)
        with self.store.lock:
            return [m for m in self.store.live_run(run_id).metrics if m.key == key]

    def terminate(self, run_id: str, status: RunStatus, end_time: int | None) -> None:
        self._call("terminate", run_id, status, end_time)
        with self.store.lock:
            self.store.live_run(run_id).status = status

    # ---------------------------------------------------------------- copying runs (sync)
    # Uploading offline runs is tested against real stores only (test_offline_upload.py).

    def list_experiments(self) -> list[ExperimentRef]:
        self._call("list_experiments")
        with self.store.lock:
            return [
                ExperimentRef(id=e.id, name=e.name, deleted=e.deleted)
                for e in self.store.experiments.values()
            ]

    def search_runs(self, experiment_ids: Sequence[str], filter_string: str) -> list[RunDetails]:
        self._call("search_runs", tuple(experiment_ids), filter_string)
        match = _TAG_FILTER.match(filter_string)
        if match is None:
            raise NotImplementedError(f"the fake store does not search by {filter_string!r}")
        with self.store.lock:
            return [
                RunDetails(
                    id=run.id,
                    experiment_id=run.experiment_id,
                    name=run.name,
                    status=run.status,
                    start_time=run.start_time,
                    end_time=None,
                    tags=dict(run.tags),
                    params=dict(run.params),
                )
                for run in self.store.runs.values()
                if run.experiment_id in experiment_ids
                and not run.deleted
                and run.tags.get(match["key"]) == match["value"]
            ]

    def create_run(
        self,
        *,
        experiment_id: str,
        name: str | None,
        start_time: int | None,
        tags: Mapping[str, str],
    ) -> RunRef:
        raise NotImplementedError("the fake store creates runs through start_run only")

    def artifact_files(self, run_id: str) -> list[ArtifactFile]:
        raise NotImplementedError("the fake store does not list artifacts")

    def download_artifact(self, run_id: str, path: str, dst_dir: str) -> str:
        raise NotImplementedError("the fake store does not download artifacts")

    def metric_keys(self, run_id: str) -> list[str]:
        self._call("metric_keys", run_id)
        with self.store.lock:
            run = self.store.runs.get(run_id)
            if run is None:
                raise RunError(f"cannot read run {run_id} in {self.tracking_uri}: not found")
            return sorted({m.key for m in run.metrics})

    def logged_models(self, experiment_id: str, run_id: str) -> list[LoggedModelDetails]:
        return []  # the fake store holds no MLflow models

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
        raise NotImplementedError("the fake store holds no MLflow models")

    def log_model_files(self, model_id: str, local_dir: str, run_id: str) -> None:
        raise NotImplementedError("the fake store holds no MLflow models")

    def link_model(
        self, run_id: str, model_id: str, step: int, metrics: Sequence[ModelMetric]
    ) -> None:
        raise NotImplementedError("the fake store holds no MLflow models")

    def finalize_logged_model(self, model_id: str, status: str) -> None:
        raise NotImplementedError("the fake store holds no MLflow models")

    def register_model_version(self, model_id: str, run_id: str, version: ModelVersionRef) -> None:
        raise NotImplementedError("the fake store holds no MLflow models")


def _remove_last(stack: list[str], run_id: str) -> None:
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] == run_id:
            del stack[i]
            return


def _batch_problems(batch: Batch, limits: Limits) -> list[str]:
    """What MLflow's ``log_batch`` validation refuses before writing anything."""
    problems: list[str] = []
    for kind, keys, most in (
        ("param", [k for k, _ in batch.params], limits.params_per_batch),
        ("tag", [k for k, _ in batch.tags], limits.tags_per_batch),
        ("metric", [m.key for m in batch.metrics], limits.metrics_per_batch),
    ):
        if len(keys) > most:
            problems.append(f"a batch holds {len(keys)} {kind}s, at most {most} are accepted")
        if kind != "metric" and len(set(keys)) != len(keys):
            problems.append(f"Duplicate {kind} keys in one batch: {sorted(keys)}")
        problems.extend(
            f"{kind} key {key[:20]!r}... is longer than {limits.key}"
            for key in keys
            if len(key) > limits.key
        )
    entities = len(batch.params) + len(batch.tags) + len(batch.metrics)
    if entities > limits.entities_per_batch:
        problems.append(f"a batch holds {entities} entities, at most {limits.entities_per_batch}")
    problems.extend(
        f"param {key!r} value is {len(value)} characters long, past {limits.param_value}"
        for key, value in batch.params
        if len(value) > limits.param_value
    )
    problems.extend(
        f"tag {key!r} value is {len(value)} characters long, past {limits.tag_value}"
        for key, value in batch.tags
        if len(value) > limits.tag_value
    )
    return problems


if TYPE_CHECKING:
    # mypy checks here that the fakes satisfy the protocols the session types them as.
    def _conforms(store: FakeStore) -> tuple[BackendFactory, Backend]:
        return store, store("http://fake.invalid")


# ---------------------------------------------------------------------------------------------
# A project whose mlflow.yml points at the fake (fixtures ``fake_project`` and ``fake_store`` in
# conftest.py), and a session on the fake.

FAKE_PROJECT_NAME = "decisions-project"
"""A fake test project's ``[project].name``: its default experiment name."""
FAKE_URI = "http://fake.invalid"
"""Not a local path, so no store folder is created; the fake never connects anywhere."""


@dataclasses.dataclass(frozen=True)
class FakeProject:
    root: Path

    def config(
        self,
        overrides: Mapping[str, Any] | None = None,
        *,
        extra_yaml: str = "",
        mode: str = "sync",
    ) -> TrackingConfig:
        """``mlflow.yml`` pointing at ``FAKE_URI`` (plus ``extra_yaml``), loaded with the real
        loader and ``overrides``.  ``tracking.logging.mode`` is ``sync`` unless said: most
        tests here are about when a call reaches the store; buffered logging has its own
        section at the end."""
        file = self.root / "mlflow.yml"
        file.write_text(f"server:\n  mlflow_tracking_uri: {FAKE_URI}\n{extra_yaml}")
        return load_config(file, overrides={"tracking.logging.mode": mode, **(overrides or {})})


def open_session(
    config: TrackingConfig, store: FakeStore, name: str = "train", **kwargs: Any
) -> TrackingSession:
    return TrackingSession(config, name=name, _backend_factory=store, **kwargs)
