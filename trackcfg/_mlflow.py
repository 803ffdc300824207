"""The real backend: the only module that imports mlflow.

Only ``_backend`` imports it (the one door; docs/architecture.md), when a session starts,
never by ``import trackcfg``.  It is long because it holds one concept, every contact with
mlflow, so that nothing else needs to know mlflow's internals.  MLflow errors are
translated here, by error code (never by message text), into trackcfg's own.

MLflow internals relied on (pinned by ``tests/test_mlflow_backend.py``):
- ``mlflow.tracking._tracking_service.utils._tracking_uri``: whether a tracking URI was set
  (``get_tracking_uri()`` cannot tell "unset" from a default), to give the state back;
- ``mlflow.tracking._model_registry.utils._registry_uri``: the same for the registry URI;
- ``mlflow.tracking.fluent._active_experiment_id``: so plain ``mlflow.start_run(nested=True)``
  inside a session lands in the session's experiment, without a ``set_experiment`` request;
- ``mlflow.tracking.fluent._active_run_stack``: to make a run that the session attached to
  (and must not end) active, and to take it off again without terminating it;
- ``MlflowClient.set_terminated`` fetching the run again (``GET runs/get``) only to print its
  "View run" link, which ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT`` turns off: the backend
  prints the same link from the run it holds and spares that request;
- ``mlflow.tracking.request_header.registry._request_header_provider_registry._registry``:
  the list of header-provider instances MLflow asks on every request, to add the configured
  ``server.request_header_provider`` for a session and take it off after (``register()``
  only takes a class it builds without arguments, and nothing removes);
- ``mlflow.utils.request_utils._get_request_session`` with the arguments
  ``mlflow.utils.rest_utils.http_request`` passes it by default: the cached
  ``requests.Session`` MLflow's REST calls use, to mount the quick-ACK adapter on it
  (``_transport.py``).  If it moves, trackcfg says so once at debug level and MLflow's client
  is used as it is.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs
import mlflow
import requests
from mlflow.entities import LifecycleStage, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)
from mlflow.tracking import MlflowClient
from mlflow.tracking import _model_registry as _registry_pkg
from mlflow.tracking import _tracking_service as _tracking_pkg
from mlflow.tracking import fluent as _fluent
from mlflow.utils import validation as _validation

from ._backend import ExperimentRef, RunRef, RunStatus
from ._env import exported
from ._params import Batch, Limits
from ._transport import QuickAckMount, mount_quickack, not_used
from .exceptions import ExperimentError, RunError, TrackingUnavailableError

__all__ = ["MlflowBackend"]

# Typed as Any: we read and restore their module globals, which mlflow annotates as None.
_tracking_utils: Any = _tracking_pkg.utils
_registry_utils: Any = _registry_pkg.utils
_fluent_state: Any = _fluent


F = TypeVar("F", bound=Callable[..., Any])
logger = logging.getLogger(__name__)


def _code(exc: MlflowException) -> int:
    return int(ErrorCode.Value(exc.error_code))


def _network_cause(exc: BaseException) -> BaseException | None:
    """The requests error behind an MlflowException, if the server was not reached.

    MLflow wraps transport failures in a plain MlflowException (error code INTERNAL_ERROR,
    like a server-side failure), chaining the requests exception; the chain tells them apart.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, requests.exceptions.RequestException):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


# SQLite's result codes for "another connection holds the lock" (sqlite3 names them from 3.11).
_SQLITE_BUSY_CODES = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED


def _sqlite_busy(exc: BaseException) -> bool:
    """Whether a SQLite store stayed locked past MLflow's own wait (its busy_timeout, 20 s):
    told by the sqlite3 error code in the chain (Python 3.11+), not by the message."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, sqlite3.OperationalError):
            return getattr(current, "sqlite_errorcode", None) in _SQLITE_BUSY_CODES
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _reachable(method: F) -> F:
    """Turn "the server did not answer" into ``TrackingUnavailableError`` naming the URI
    (and "the SQLite file stayed locked by other writers" into the same, recommending a
    server)."""

    @functools.wraps(method)
    def wrapper(self: MlflowBackend, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (MlflowException, requests.exceptions.RequestException) as exc:
            if _sqlite_busy(exc):
                raise TrackingUnavailableError(
                    f"SQLite store {self.tracking_uri} stayed locked by other writers longer "
                    "than MLflow waits (20 s); SQLite serializes every write, so for many "
                    "processes use a tracking server (mlflow server --backend-store-uri "
                    "postgresql+psycopg2://...; see docs/scale.md)"
                ) from exc
            cause = _network_cause(exc)
            if cause is None:
                raise
            raise TrackingUnavailableError(
                f"tracking server {self.tracking_uri} did not answer "
                f"({type(cause).__name__}) within the session's budget of "
                f"{os.environ.get('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '?')} retries of "
                f"{os.environ.get('MLFLOW_HTTP_REQUEST_TIMEOUT', '?')} s; check that it is "
                "running, or raise server.request_timeout / server.max_retries"
            ) from exc

    return wrapper  # type: ignore[return-value]


@attrs.frozen
class _StoreToken:
    tracking_uri: str | None
    registry_uri: str | None
    experiment_id: str | None


def _mlflow_rest_sessions() -> list[requests.Session]:
    """The ``requests.Session`` MLflow's REST client uses with the current environment."""
    import inspect

    from mlflow import environment_variables as variables
    from mlflow.utils import request_utils, rest_utils

    env: Any = variables
    defaults = inspect.signature(rest_utils.http_request).parameters
    get_session: Any = request_utils._get_request_session
    session = get_session(
        env.MLFLOW_HTTP_REQUEST_MAX_RETRIES.get(),
        env.MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get(),
        env.MLFLOW_HTTP_REQUEST_BACKOFF_JITTER.get(),
        defaults["retry_codes"].default,
        defaults["raise_on_status"].default,
        env.MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER.get(),
    )
    if not isinstance(session, requests.Session):
        raise TypeError(f"expected a requests.Session, got {type(session).__name__}")
    return [session]


def _quickack_for(tracking_uri: str) -> QuickAckMount | None:
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    try:
        sessions = _mlflow_rest_sessions()
    except Exception as exc:
        not_used(f"MLflow's hook point changed ({type(exc).__name__}: {exc})")
        return None
    return mount_quickack(tracking_uri, sessions)


_SUPPRESS_LINK = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"


def _run_link(tracking_uri: str, run: Any) -> str | None:
    """The "View run" lines MLflow writes to stdout when a run on a tracking server ends,
    composed from the run the active-run stack holds.  MLflow fetches the run again to write
    them (one more request per run, ~10 ms on a fast server, ~50 ms on a stalling one).

    None, and MLflow decides as before, where its rules differ from a plain server (Databricks,
    workspaces), where the user turned the printing off, or where its helpers moved."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    try:
        from mlflow.environment_variables import MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT
        from mlflow.utils import databricks_utils
        from mlflow.utils.workspace_context import get_request_workspace
    except ImportError:  # pragma: no cover - another MLflow version
        return None
    suppress: Any = MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT
    databricks: Any = databricks_utils
    if suppress.get() or databricks.is_in_databricks_runtime() or get_request_workspace():
        return None
    experiment = f"{tracking_uri.rstrip('/')}/#/experiments/{run.info.experiment_id}"
    return (
        f"\N{RUNNER} View run {run.info.run_name} at: {experiment}/runs/{run.info.run_id}\n"
        f"\N{TEST TUBE} View experiment at: {experiment}\n"
    )


def header_provider_class(spec: str) -> type:
    """Import ``spec`` (``package.module.Class``) and check that it is one of MLflow's
    ``RequestHeaderProvider`` classes; ``ValueError`` says what is wrong."""
    import importlib

    from mlflow.tracking.request_header.abstract_request_header_provider import (
        RequestHeaderProvider,
    )

    module_name, _, class_name = spec.strip().rpartition(".")
    if not module_name or not class_name:
        raise ValueError(f"{spec!r} is not a dotted path to a class (package.module.Class)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"module {module_name!r} has no {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, RequestHeaderProvider)):
        raise ValueError(
            f"{spec!r} must be a subclass of "
            "mlflow.tracking.request_header.abstract_request_header_provider."
            "RequestHeaderProvider"
        )
    return cls


def build_header_provider(spec: str, kwargs: Mapping[str, Any]) -> Any:
    """The provider class at ``spec`` built with ``kwargs``; ``ValueError`` says what is
    wrong (the session names the config key)."""
    cls = header_provider_class(spec)
    try:
        return cls(**kwargs)
    except Exception as exc:
        names = ", ".join(sorted(kwargs)) or "no arguments"
        raise ValueError(f"{spec}({names}) failed: {type(exc).__name__}: {exc}") from exc


def _header_providers() -> list[Any]:
    from mlflow.tracking.request_header import registry

    providers: Any = registry._request_header_provider_registry._registry
    if not isinstance(providers, list):
        raise TypeError("MLflow's request header provider registry moved")
    return providers


def add_header_provider(provider: Any) -> None:
    """Ask ``provider`` for headers on every MLflow request until ``remove_header_provider``."""
    _header_providers().append(provider)


def remove_header_provider(provider: Any) -> None:
    providers = _header_providers()
    for i in range(len(providers) - 1, -1, -1):
        if providers[i] is provider:
            del providers[i]
            return


def _sqlite_file(tracking_uri: str) -> Path | None:
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri[len("sqlite:///") :].partition("?")[0]
    return Path(path) if path and not path.startswith(":memory:") else None


@contextlib.contextmanager
def _store_creation_lock(tracking_uri: str) -> Iterator[None]:
    """Hold an exclusive lock, across processes, on the folder of a SQLite store's file.

    MLflow creates a new database's tables in EVERY process that finds them missing: processes
    opening a new store at once collide ("table ... already exists", alembic revision errors).
    A ``flock`` on the folder, not on the database file: closing any descriptor of that file
    would drop SQLite's own locks held by this process.  Where ``flock`` does not exist
    (Windows), nothing is locked."""
    db = _sqlite_file(tracking_uri)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None  # type: ignore[assignment]
    if db is None or fcntl is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(db.parent, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def mlflow_limits() -> Limits:
    """The installed mlflow's limits (6000-character param values in MLflow 3)."""
    return Limits(
        param_value=_validation.MAX_PARAM_VAL_LENGTH,
        tag_value=_validation.MAX_TAG_VAL_LENGTH,
        key=_validation.MAX_ENTITY_KEY_LENGTH,
        params_per_batch=_validation.MAX_PARAMS_TAGS_PER_BATCH,
        tags_per_batch=_validation.MAX_PARAMS_TAGS_PER_BATCH,
        metrics_per_batch=_validation.MAX_METRICS_PER_BATCH,
        entities_per_batch=_validation.MAX_ENTITIES_PER_BATCH,
        request_bytes=_validation.MAX_BATCH_LOG_REQUEST_SIZE,
    )


@attrs.define
class MlflowBackend:
    tracking_uri: str
    registry_uri: str | None = None
    _client: Any = attrs.field(init=False)
    _quickack: QuickAckMount | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        # The client builds MLflow's (per-process, cached) store, creating a new one's tables.
        with _store_creation_lock(self.tracking_uri):
            self._client = MlflowClient(
                tracking_uri=self.tracking_uri, registry_uri=self.registry_uri
            )
        # From the first request on (the experiment lookup), until close().
        self._quickack = _quickack_for(self.tracking_uri)

    def close(self) -> None:
        if self._quickack is not None:
            self._quickack.unmount()
            self._quickack = None

    def limits(self) -> Limits:
        return mlflow_limits()

    # ---------------------------------------------------------------- process-wide state

    def use_store(self, experiment_id: str | None) -> object:
        token = _StoreToken(
            tracking_uri=_tracking_utils._tracking_uri,
            registry_uri=_registry_utils._registry_uri,
            experiment_id=_fluent_state._active_experiment_id,
        )
        mlflow.set_tracking_uri(self.tracking_uri)
        if self.registry_uri is not None:
            mlflow.set_registry_uri(self.registry_uri)
        if experiment_id is not None:
            _fluent_state._active_experiment_id = experiment_id
        return token

    def restore_store(self, token: object) -> None:
        assert isinstance(token, _StoreToken)
        # The session restores the environment variables these calls touch.
        mlflow.set_tracking_uri(token.tracking_uri)  # type: ignore[arg-type]
        if _registry_utils._registry_uri != token.registry_uri:
            _registry_utils._registry_uri = token.registry_uri
        _fluent_state._active_experiment_id = token.experiment_id

    # ---------------------------------------------------------------- experiments

    @_reachable
    def get_experiment(self, name: str) -> ExperimentRef | None:
        exp = self._client.get_experiment_by_name(name)
        if exp is None:
            return None
        return ExperimentRef(
            id=exp.experiment_id,
            name=exp.name,
            deleted=exp.lifecycle_stage == LifecycleStage.DELETED,
        )

    @_reachable
    def create_experiment(
        self, name: str, artifact_location: str | None, tags: Mapping[str, str] | None
    ) -> str:
        try:
            return str(
                self._client.create_experiment(
                    name, artifact_location=artifact_location, tags=dict(tags or {})
                )
            )
        except MlflowException as exc:
            if _code(exc) == RESOURCE_ALREADY_EXISTS:
                # Another process created it between our lookup and our create.
                found = self.get_experiment(name)
                if found is not None and not found.deleted:
                    return found.id
            raise ExperimentError(f"cannot create experiment {name!r}: {exc.message}") from exc

    @_reachable
    def restore_experiment(self, experiment_id: str) -> None:
        self._client.restore_experiment(experiment_id)

    # ---------------------------------------------------------------- runs

    @_reachable
    def get_run(self, run_id: str) -> RunRef | None:
        try:
            run = self._client.get_run(run_id)
        except MlflowException as exc:
            if _code(exc) in (RESOURCE_DOES_NOT_EXIST, INVALID_PARAMETER_VALUE):
                return None
            raise
        return RunRef(
            id=run.info.run_id,
            experiment_id=run.info.experiment_id,
            name=run.info.run_name,
            status=RunStatus(run.info.status),
            deleted=run.info.lifecycle_stage == LifecycleStage.DELETED,
            params=dict(run.data.params),
        )

    def active_run_ids(self) -> list[str]:
        return [str(run.info.run_id) for run in _fluent_state._active_run_stack.get()]

    def active_run_id(self) -> str | None:
        run = mlflow.active_run()
        return None if run is None else str(run.info.run_id)

    @_reachable
    def start_run(
        self,
        *,
        experiment_id: str,
        name: str | None,
        parent_run_id: str | None,
        tags: Mapping[str, str],
    ) -> RunRef:
        # With MLFLOW_RUN_ID set, mlflow.start_run() would reopen that run instead of starting
        # one; the session decided already what it means and restores the variable on exit.
        os.environ.pop("MLFLOW_RUN_ID", None)
        top = self.active_run_id()
        if parent_run_id is not None and top == parent_run_id:
            active = mlflow.start_run(
                experiment_id=experiment_id, run_name=name, nested=True, tags=dict(tags)
            )
        elif top is None:
            active = mlflow.start_run(
                experiment_id=experiment_id,
                run_name=name,
                parent_run_id=parent_run_id,
                tags=dict(tags),
            )
        else:
            raise RunError(
                f"cannot start a run under {parent_run_id!r} while run {top!r} is active "
                "in this thread"
            )
        info = active.info
        return RunRef(id=info.run_id, experiment_id=info.experiment_id, name=info.run_name)

    @_reachable
    def resume_run(self, run_id: str) -> None:
        # No run_name: MLflow would rename the run it reopens.
        mlflow.start_run(run_id=run_id, nested=self.active_run_id() is not None)

    @_reachable
    def push_active(self, run_id: str) -> None:
        run = self._client.get_run(run_id)
        _fluent_state._active_run_stack.get().append(_fluent_state.ActiveRun(run))

    def pop_active(self, run_id: str) -> None:
        stack = _fluent_state._active_run_stack.get()
        for i in range(len(stack) - 1, -1, -1):
            if stack[i].info.run_id == run_id:
                del stack[i]
                return

    @_reachable
    def end_run(self, run_id: str, status: RunStatus) -> None:
        held = [run for run in _fluent_state._active_run_stack.get() if run.info.run_id == run_id]
        link = _run_link(self.tracking_uri, held[-1]) if held else None
        with exported({} if link is None else {_SUPPRESS_LINK: "true"}):
            if self.active_run_id() == run_id:
                mlflow.end_run(status.value)
            else:
                self.pop_active(run_id)
                self._client.set_terminated(run_id, status.value)
        if link is not None:
            sys.stdout.write(link)

    # ---------------------------------------------------------------- logging

    @_reachable
    def log_batch(self, run_id: str, batch: Batch) -> None:
        now = int(time.time() * 1000)
        try:
            self._client.log_batch(
                run_id,
                metrics=[Metric(m.key, m.value, m.timestamp or now, m.step) for m in batch.metrics],
                params=[Param(k, v) for k, v in batch.params],
                tags=[RunTag(k, v) for k, v in batch.tags],
            )
        except MlflowException as exc:
            if _code(exc) in (INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST):
                raise RunError(
                    f"MLflow refused what was logged to run {run_id}: {exc.message}"
                ) from exc
            raise

    @_reachable
    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self._client.log_text(run_id, text, artifact_file)

    @_reachable
    def log_dict(self, run_id: str, data: Mapping[str, Any], artifact_file: str) -> None:
        self._client.log_dict(run_id, dict(data), artifact_file)

    @_reachable
    def log_artifact(self, run_id: str, path: str, artifact_path: str | None) -> None:
        self._client.log_artifact(run_id, path, artifact_path)
