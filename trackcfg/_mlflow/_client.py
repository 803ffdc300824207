"""``MlflowBackend``: the ``Backend`` (``trackcfg/_backend.py``) on MLflow's client, for one
store.  Every call goes through ``_errors.reachable``, which translates what stops it."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import mlflow
from mlflow.entities import LifecycleStage, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
)
from mlflow.tracking import MlflowClient
from mlflow.utils import validation as _validation

from trackcfg._records import (
    ArtifactFile,
    Batch,
    ExperimentRef,
    Limits,
    MetricPoint,
    RunDetails,
    RunRef,
    RunStatus,
)
from trackcfg._sqlite_locks import own_lock_let_go, sqlite_busy, store_creation_lock
from trackcfg._store import mask_text, mask_uri
from trackcfg._transport import QuickAckMount
from trackcfg.exceptions import ExperimentError, RunError, TrackingUnavailableError

from ._errors import (
    artifact_refused,
    code_of,
    drop_interrupted,
    http_status,
    network_cause,
    reachable,
)
from ._internals import fluent_state, quickack_for, registry_utils, tracking_store, tracking_utils
from ._links import quiet_links, run_link
from ._model_copies import LoggedModelCopies
from ._sqlite_fast import SqliteMetrics, sqlite_metrics_for
from ._stacks import give_back_stack, stop_context_stacks, take_own_stack, use_context_stacks

__all__ = ["MlflowBackend", "mlflow_limits"]

logger = logging.getLogger(__name__)


@attrs.frozen
class _StoreToken:
    tracking_uri: str | None
    registry_uri: str | None
    experiment_id: str | None
    context_stacks: bool = False  # whether use_store installed the stand-in


_DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")


def _database_answers(tracking_uri: str) -> None:
    """One connection to a database store before MLflow's: MLflow retries creating its
    engine ten times with growing pauses (about 100 s) and then raises SQLAlchemy's own
    error; a database that is down or never answers is said at once instead, within the
    connect timeout the session put in the URI (``server.request_timeout``)."""
    if tracking_uri.split(":", 1)[0].split("+", 1)[0].lower() not in _DATABASE_SCHEMES:
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(tracking_uri, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.DBAPIError as exc:
        # The driver's text names host and port, never the password; the URI is masked.
        cause = exc.orig if exc.orig is not None else exc
        detail = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        raise TrackingUnavailableError(
            f"database store {mask_uri(tracking_uri)} did not accept a connection "
            f"({type(cause).__name__}: {detail}); check that it is running and reachable, "
            "or raise server.request_timeout"
        ) from None
    finally:
        engine.dispose()


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
class MlflowBackend(LoggedModelCopies):
    tracking_uri: str = attrs.field(repr=lambda uri: repr(mask_uri(uri)))
    registry_uri: str | None = attrs.field(
        default=None, repr=lambda uri: repr(None if uri is None else mask_uri(uri))
    )
    _client: Any = attrs.field(init=False)
    _quickack: QuickAckMount | None = attrs.field(init=False, default=None)
    _prechecked: bool = attrs.field(init=False, default=False)
    #: For a local SQLite store: metric points written into its tables directly
    #: (``_sqlite_fast``); None for other stores, False until the first batch of points.
    _direct: SqliteMetrics | bool | None = attrs.field(init=False, default=False)

    def __attrs_post_init__(self) -> None:
        _database_answers(self.tracking_uri)
        # The client builds MLflow's (per-process, cached) store, creating a new one's tables.
        with store_creation_lock(self.tracking_uri):
            self._client = MlflowClient(
                tracking_uri=self.tracking_uri, registry_uri=self.registry_uri
            )
        # From the first request on (the experiment lookup), until close().
        self._quickack = quickack_for(self.tracking_uri)

    def close(self) -> None:
        if self._quickack is not None:
            self._quickack.unmount()
            self._quickack = None

    def limits(self) -> Limits:
        return mlflow_limits()

    # ---------------------------------------------------------------- process-wide state

    def use_store(self, experiment_id: str | None) -> object:
        token = _StoreToken(
            tracking_uri=tracking_utils._tracking_uri,
            registry_uri=registry_utils._registry_uri,
            experiment_id=fluent_state._active_experiment_id,
            context_stacks=use_context_stacks(),
        )
        mlflow.set_tracking_uri(self.tracking_uri)
        if self.registry_uri is not None:
            mlflow.set_registry_uri(self.registry_uri)
        if experiment_id is not None:
            fluent_state._active_experiment_id = experiment_id
        return token

    def restore_store(self, token: object) -> None:
        assert isinstance(token, _StoreToken)
        # The session restores the environment variables these calls touch.
        mlflow.set_tracking_uri(token.tracking_uri)  # type: ignore[arg-type]
        if registry_utils._registry_uri != token.registry_uri:
            registry_utils._registry_uri = token.registry_uri
        fluent_state._active_experiment_id = token.experiment_id
        if token.context_stacks:
            stop_context_stacks()

    # ---------------------------------------------------------------- experiments

    @reachable
    def get_experiment(self, name: str) -> ExperimentRef | None:
        exp = self._client.get_experiment_by_name(name)
        if exp is None:
            return None
        return ExperimentRef(
            id=exp.experiment_id,
            name=exp.name,
            deleted=exp.lifecycle_stage == LifecycleStage.DELETED,
        )

    @reachable
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
            if network_cause(exc) is not None or http_status(exc) in (401, 403):
                raise  # the server was not reached, or refused the credentials: _reachable
            if code_of(exc) == RESOURCE_ALREADY_EXISTS:
                # Another process created it between our lookup and our create.
                found = self.get_experiment(name)
                if found is not None and not found.deleted:
                    return found.id
            raise ExperimentError(
                f"cannot create experiment {name!r}: {mask_text(exc.message)}"
            ) from exc

    @reachable
    def restore_experiment(self, experiment_id: str) -> None:
        self._client.restore_experiment(experiment_id)

    # ---------------------------------------------------------------- runs

    @reachable
    def get_run(self, run_id: str) -> RunRef | None:
        try:
            run = self._client.get_run(run_id)
        except MlflowException as exc:
            if code_of(exc) in (RESOURCE_DOES_NOT_EXIST, INVALID_PARAMETER_VALUE):
                return None
            raise
        return RunRef(
            id=run.info.run_id,
            experiment_id=run.info.experiment_id,
            name=run.info.run_name,
            status=RunStatus(run.info.status),
            deleted=run.info.lifecycle_stage == LifecycleStage.DELETED,
            params=dict(run.data.params),
            tags=dict(run.data.tags),
        )

    def active_run_ids(self) -> list[str]:
        return [str(run.info.run_id) for run in fluent_state._active_run_stack.get()]

    def active_run_id(self) -> str | None:
        run = mlflow.active_run()
        return None if run is None else str(run.info.run_id)

    @reachable
    def start_run(
        self,
        *,
        experiment_id: str,
        name: str | None,
        parent_run_id: str | None,
        tags: Mapping[str, str],
    ) -> RunRef:
        # With MLFLOW_RUN_ID set, mlflow.start_run() would reopen that run instead of starting
        # one: the open sessions took it out of the environment (``_state.join_settings``)
        # and put it back when the last one ends.  Set again since (by the program): out.
        if "MLFLOW_RUN_ID" in os.environ:
            os.environ.pop("MLFLOW_RUN_ID", None)
        take_own_stack()
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

    @reachable
    def resume_run(self, run_id: str) -> None:
        # No run_name: MLflow would rename the run it reopens.
        take_own_stack()
        mlflow.start_run(run_id=run_id, nested=self.active_run_id() is not None)

    @reachable
    def push_active(self, run_id: str) -> None:
        run = self._client.get_run(run_id)
        take_own_stack()
        fluent_state._active_run_stack.get().append(fluent_state.ActiveRun(run))

    def pop_active(self, run_id: str) -> None:
        stack = fluent_state._active_run_stack.get()
        for i in range(len(stack) - 1, -1, -1):
            if stack[i].info.run_id == run_id:
                del stack[i]
                break
        give_back_stack()

    @reachable
    def end_run(self, run_id: str, status: RunStatus) -> None:
        # Ended while an interrupt propagates (Ctrl-C, SIGTERM): what the interrupted call
        # holds goes first, else the end would wait for this very process's lock.
        drop_interrupted(sys.exc_info()[1])
        held = [run for run in fluent_state._active_run_stack.get() if run.info.run_id == run_id]
        link = run_link(self.tracking_uri, held[-1]) if held else None
        try:
            with quiet_links(link is not None):
                try:
                    if self.active_run_id() == run_id:
                        mlflow.end_run(status.value)  # takes it off the stack, then ends it
                    else:
                        self.pop_active(run_id)
                        self._client.set_terminated(run_id, status.value)
                except MlflowException as exc:
                    if not (sqlite_busy(exc) and own_lock_let_go(self.tracking_uri)):
                        raise
                    self._client.set_terminated(run_id, status.value)  # once more, off the stack
        finally:
            give_back_stack()
        if link is not None:
            sys.stdout.write(link)

    # ---------------------------------------------------------------- logging

    @property
    def sqlite_metrics(self) -> SqliteMetrics | None:
        """The direct writer of metric points into a local SQLite store, once one was sent
        (None for other stores, or before)."""
        return self._direct if isinstance(self._direct, SqliteMetrics) else None

    def _direct_writer(self) -> SqliteMetrics | None:
        if self._direct is False:
            self._direct = None
            if self.tracking_uri.startswith("sqlite:"):
                try:
                    self._direct = sqlite_metrics_for(
                        tracking_store(self._client), self.tracking_uri
                    )
                except Exception:  # MLflow's internals moved: its log_batch, as before
                    logger.debug("metric points go through MLflow's log_batch", exc_info=True)
        return self._direct if isinstance(self._direct, SqliteMetrics) else None

    @reachable
    def log_batch(self, run_id: str, batch: Batch) -> None:
        now = int(time.time() * 1000)
        metrics = batch.metrics
        direct = self._direct_writer() if metrics else None
        if direct is not None:
            if batch.params or batch.tags:  # first, as MLflow's log_batch stores params first
                self._log_batch(run_id, Batch(params=batch.params, tags=batch.tags), now)
            if direct.write(run_id, metrics, now):
                return
            batch = Batch(metrics=metrics)
        self._log_batch(run_id, batch, now)

    def _log_batch(self, run_id: str, batch: Batch, now: int) -> None:
        try:
            self._client.log_batch(
                run_id,
                metrics=[Metric(m.key, m.value, m.timestamp or now, m.step) for m in batch.metrics],
                params=[Param(k, v) for k, v in batch.params],
                tags=[RunTag(k, v) for k, v in batch.tags],
            )
        except MlflowException as exc:
            if code_of(exc) in (INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST):
                raise RunError(
                    f"MLflow refused what was logged to run {run_id}: {mask_text(exc.message)}"
                ) from exc
            raise

    @reachable
    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        with artifact_refused(run_id, artifact_file):
            self._client.log_text(run_id, text, artifact_file)

    @reachable
    def log_dict(self, run_id: str, data: Mapping[str, Any], artifact_file: str) -> None:
        with artifact_refused(run_id, artifact_file):
            self._client.log_dict(run_id, dict(data), artifact_file)

    @reachable
    def log_artifact(self, run_id: str, path: str, artifact_path: str | None) -> None:
        with artifact_refused(run_id, artifact_path or os.path.basename(path)):
            self._client.log_artifact(run_id, path, artifact_path)

    # ---------------------------------------------------------------- journal replay

    @reachable
    def metric_history(self, run_id: str, key: str) -> list[MetricPoint]:
        return [
            MetricPoint(key=m.key, value=m.value, step=m.step, timestamp=m.timestamp)
            for m in self._client.get_metric_history(run_id, key)
        ]

    @reachable
    def terminate(self, run_id: str, status: RunStatus, end_time: int | None) -> None:
        # No "View run" line: ``trackcfg sync --json`` prints JSON only, and a session's
        # background sync must not print into its program's output (one request fewer too).
        with quiet_links():
            self._client.set_terminated(run_id, status.value, end_time)

    # ---------------------------------------------------------------- copying runs (sync)

    @reachable
    def list_experiments(self) -> list[ExperimentRef]:
        from mlflow.entities import ViewType

        found: list[ExperimentRef] = []
        token = None
        while True:
            page = self._client.search_experiments(
                view_type=ViewType.ALL, max_results=1000, page_token=token
            )
            found += [
                ExperimentRef(
                    id=e.experiment_id,
                    name=e.name,
                    deleted=e.lifecycle_stage == LifecycleStage.DELETED,
                )
                for e in page
            ]
            token = page.token
            if not token:
                return found

    @reachable
    def search_runs(self, experiment_ids: Sequence[str], filter_string: str) -> list[RunDetails]:
        found: list[RunDetails] = []
        token = None
        while experiment_ids:
            page = self._client.search_runs(
                list(experiment_ids), filter_string, max_results=1000, page_token=token
            )
            for run in page:
                info, data = run.info, run.data
                found.append(
                    RunDetails(
                        id=info.run_id,
                        experiment_id=info.experiment_id,
                        name=info.run_name,
                        status=RunStatus(info.status),
                        start_time=info.start_time,
                        end_time=info.end_time,
                        tags=dict(data.tags),
                        params=dict(data.params),
                        metric_keys=tuple(sorted(data.metrics)),
                        artifact_uri=info.artifact_uri,
                    )
                )
            token = page.token
            if not token:
                break
        return found

    @reachable
    def create_run(
        self,
        *,
        experiment_id: str,
        name: str | None,
        start_time: int | None,
        tags: Mapping[str, str],
    ) -> RunRef:
        run = self._client.create_run(
            experiment_id, start_time=start_time, tags=dict(tags), run_name=name
        )
        return RunRef(id=run.info.run_id, experiment_id=experiment_id, name=run.info.run_name)

    def _run_artifacts(self, run_id: str) -> Any:
        """The run's own artifact repository.  Not ``runs:/`` (the client's listing): MLflow 3
        reads a folder named like a model logged into the run as that logged model, looked up
        in MLflow's current store rather than this one."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        artifact_uri = self._client.get_run(run_id).info.artifact_uri
        return get_artifact_repository(artifact_uri, tracking_uri=self.tracking_uri)

    @reachable
    def artifact_files(self, run_id: str) -> list[ArtifactFile]:
        repository = self._run_artifacts(run_id)
        files: list[ArtifactFile] = []
        folders: list[str | None] = [None]
        while folders:
            for entry in repository.list_artifacts(folders.pop()):
                if entry.is_dir:
                    folders.append(entry.path)
                else:
                    files.append(ArtifactFile(path=entry.path, size=entry.file_size))
        return sorted(files, key=lambda f: f.path)

    @reachable
    def download_artifact(self, run_id: str, path: str, dst_dir: str) -> str:
        try:
            return str(self._run_artifacts(run_id).download_artifacts(path, dst_dir))
        except (MlflowException, OSError) as exc:
            if isinstance(exc, TrackingUnavailableError) or (
                isinstance(exc, MlflowException) and network_cause(exc) is not None
            ):
                raise
            detail = (
                mask_text(exc.message) if isinstance(exc, MlflowException) else type(exc).__name__
            )
            raise RunError(
                f"cannot download artifact {path!r} of run {run_id} from "
                f"{mask_uri(self.tracking_uri)}: {detail}"
            ) from None

    @reachable
    def metric_keys(self, run_id: str) -> list[str]:
        try:
            return sorted(self._client.get_run(run_id).data.metrics)
        except MlflowException as exc:
            if network_cause(exc) is not None:
                raise
            raise RunError(
                f"cannot read run {run_id} in {mask_uri(self.tracking_uri)}: "
                f"{mask_text(exc.message)}"
            ) from None
