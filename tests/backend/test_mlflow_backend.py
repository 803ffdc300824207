"""``trackcfg._mlflow``: the MLflow internals it relies on are still there and behave as it assumes,
and ``MlflowBackend`` on a real SQLite store.  An MLflow upgrade that moves any of them fails
here, by name, before it breaks a session in a confusing way."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.entities import LifecycleStage
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)
from mlflow.tracking import _model_registry, _tracking_service
from mlflow.tracking import fluent as mlflow_fluent
from mlflow.utils import validation

from trackcfg._backend import RunStatus
from trackcfg._mlflow import MlflowBackend, mlflow_limits
from trackcfg._params import Batch, Limits, MetricPoint

MISSING_RUN = "0123456789abcdef0123456789abcdef"

# The pinned modules, typed loosely: their globals are what is under test, not their annotations.
tracking_utils: Any = _tracking_service.utils
registry_utils: Any = _model_registry.utils
fluent: Any = mlflow_fluent


def _tracking_uri_global() -> str | None:
    uri: str | None = tracking_utils._tracking_uri
    return uri


def _registry_uri_global() -> str | None:
    uri: str | None = registry_utils._registry_uri
    return uri


@pytest.fixture
def store_uri(tmp_path: Path, migrated_sqlite_db: Path) -> str:
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    shutil.copyfile(migrated_sqlite_db, db)
    return f"sqlite:///{db}"


@pytest.fixture
def client(store_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=store_uri)


@pytest.fixture
def experiment_id(client: MlflowClient) -> str:
    created: str = client.create_experiment("pins")
    return created


def _stack() -> list[mlflow.ActiveRun]:
    stack: list[mlflow.ActiveRun] = fluent._active_run_stack.get()
    return stack


@pytest.fixture(autouse=True)
def _mlflow_state(store_uri: str) -> Iterator[None]:
    """Each test starts with MLflow pointed at its store and leaves the process as found."""
    env_before = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    mlflow.set_tracking_uri(store_uri)
    yield
    _stack().clear()
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    registry_utils._registry_uri = None
    fluent._active_experiment_id = None
    for name in [k for k in os.environ if k.startswith("MLFLOW_")]:
        os.environ.pop(name)
    os.environ.update(env_before)


def _code(exc: MlflowException) -> int:
    return int(ErrorCode.Value(exc.error_code))


# ---------------------------------------------------------------------------------------------
# Pins: the module-level state trackcfg._mlflow saves and gives back.


def test_tracking_uri_global_tells_unset_from_set_and_set_none_unsets_the_env_var(
    store_uri: str,
) -> None:
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    assert _tracking_uri_global() is None
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert mlflow.get_tracking_uri()  # a default even when unset: it cannot tell "unset"

    mlflow.set_tracking_uri(store_uri)
    assert _tracking_uri_global() == store_uri
    assert os.environ["MLFLOW_TRACKING_URI"] == store_uri

    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    assert _tracking_uri_global() is None
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_registry_uri_global_is_what_set_registry_uri_sets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    assert _registry_uri_global() is None
    uri = f"sqlite:///{tmp_path / 'registry.db'}"

    mlflow.set_registry_uri(uri)

    assert _registry_uri_global() == uri
    assert mlflow.get_registry_uri() == uri
    registry_utils._registry_uri = None  # what MlflowBackend.restore_store does
    os.environ.pop("MLFLOW_REGISTRY_URI")
    assert mlflow.get_registry_uri() != uri


def test_active_experiment_global_is_where_start_run_lands(
    client: MlflowClient, experiment_id: str
) -> None:
    assert fluent._active_experiment_id is None
    fluent._active_experiment_id = experiment_id

    run = mlflow.start_run()
    mlflow.end_run()

    assert run.info.experiment_id == experiment_id
    assert client.get_run(run.info.run_id).info.experiment_id == experiment_id


def test_active_run_stack_is_a_per_thread_list_of_active_runs(
    client: MlflowClient, experiment_id: str
) -> None:
    assert _stack() is _stack()
    assert _stack() == []
    run = mlflow.start_run(experiment_id=experiment_id)
    assert isinstance(run, mlflow.ActiveRun)
    assert _stack() == [run]

    other_thread: list[object] = []
    worker = threading.Thread(target=lambda: other_thread.extend(_stack()))
    worker.start()
    worker.join()
    assert other_thread == []

    mlflow.end_run()
    assert _stack() == []


def test_pushing_an_active_run_makes_it_active_and_removing_it_does_not_end_it(
    client: MlflowClient, experiment_id: str
) -> None:
    run_id = client.create_run(experiment_id).info.run_id

    _stack().append(fluent.ActiveRun(client.get_run(run_id)))
    active = mlflow.active_run()
    assert active is not None
    assert active.info.run_id == run_id
    mlflow.log_metric("fluent", 1.0)
    del _stack()[-1]

    assert mlflow.active_run() is None
    run = client.get_run(run_id)
    assert run.data.metrics == {"fluent": 1.0}
    assert run.info.status == "RUNNING"


# ---------------------------------------------------------------------------------------------
# Pins: MLflow behaviours the backend works around or builds on.


def test_start_run_with_run_id_renames_only_when_given_a_name(
    client: MlflowClient, experiment_id: str
) -> None:
    """Why ``resume_run`` passes no ``run_name``."""
    run_id = client.create_run(experiment_id, run_name="original").info.run_id
    client.set_terminated(run_id, "FINISHED")

    mlflow.start_run(run_id=run_id)
    assert client.get_run(run_id).info.status == "RUNNING"
    mlflow.end_run()
    assert client.get_run(run_id).info.run_name == "original"

    mlflow.start_run(run_id=run_id, run_name="renamed")
    mlflow.end_run()
    assert client.get_run(run_id).info.run_name == "renamed"


def test_mlflow_run_id_makes_start_run_reopen_that_run_and_end_run_unsets_it(
    client: MlflowClient, experiment_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why ``start_run`` pops ``MLFLOW_RUN_ID`` (and the session restores it)."""
    run_id = client.create_run(experiment_id).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)

    started = mlflow.start_run(experiment_id=experiment_id)
    assert started.info.run_id == run_id
    assert "MLFLOW_RUN_ID" not in os.environ
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    mlflow.end_run()
    assert "MLFLOW_RUN_ID" not in os.environ


def test_parent_run_id_without_an_active_run_sets_the_parent_tag(
    client: MlflowClient, experiment_id: str
) -> None:
    parent = client.create_run(experiment_id).info.run_id

    child = mlflow.start_run(experiment_id=experiment_id, parent_run_id=parent)
    mlflow.end_run()

    assert client.get_run(child.info.run_id).data.tags["mlflow.parentRunId"] == parent


def test_get_experiment_by_name_returns_deleted_experiments(
    client: MlflowClient, experiment_id: str
) -> None:
    client.delete_experiment(experiment_id)

    found = client.get_experiment_by_name("pins")

    assert found is not None
    assert found.experiment_id == experiment_id
    assert found.lifecycle_stage == LifecycleStage.DELETED


def test_error_codes_are_names_of_the_databricks_error_code_enum(
    client: MlflowClient, experiment_id: str
) -> None:
    with pytest.raises(MlflowException) as missing:
        client.get_run(MISSING_RUN)
    with pytest.raises(MlflowException) as duplicate:
        client.create_experiment("pins")

    assert _code(missing.value) == RESOURCE_DOES_NOT_EXIST
    assert _code(duplicate.value) == RESOURCE_ALREADY_EXISTS


def test_limits_are_read_from_mlflow_validation() -> None:
    limits = mlflow_limits()

    assert limits == Limits(
        param_value=validation.MAX_PARAM_VAL_LENGTH,
        tag_value=validation.MAX_TAG_VAL_LENGTH,
        key=validation.MAX_ENTITY_KEY_LENGTH,
        params_per_batch=validation.MAX_PARAMS_TAGS_PER_BATCH,
        tags_per_batch=validation.MAX_PARAMS_TAGS_PER_BATCH,
        metrics_per_batch=validation.MAX_METRICS_PER_BATCH,
        entities_per_batch=validation.MAX_ENTITIES_PER_BATCH,
        request_bytes=validation.MAX_BATCH_LOG_REQUEST_SIZE,
    )
    # MLflow 3.17's values (the README states the param limit); a change is worth
    # noticing, not necessarily a bug.
    assert (limits.param_value, limits.tag_value, limits.key) == (6000, 8000, 250)


# ---------------------------------------------------------------------------------------------
# MlflowBackend on a real store.


def test_use_store_then_restore_store_gives_back_every_global(
    store_uri: str, tmp_path: Path, experiment_id: str
) -> None:
    before_uri = f"sqlite:///{tmp_path / 'before.db'}"
    mlflow.set_tracking_uri(before_uri)
    fluent._active_experiment_id = "before-exp"
    registry = f"sqlite:///{tmp_path / 'registry.db'}"
    backend = MlflowBackend(store_uri, registry)

    token = backend.use_store(experiment_id)
    assert _tracking_uri_global() == store_uri
    assert _registry_uri_global() == registry
    assert fluent._active_experiment_id == experiment_id
    backend.restore_store(token)

    assert _tracking_uri_global() == before_uri
    assert _registry_uri_global() is None
    assert fluent._active_experiment_id == "before-exp"


def test_get_run_is_none_for_an_unknown_id_and_a_ref_for_a_known_one(
    store_uri: str, client: MlflowClient, experiment_id: str
) -> None:
    backend = MlflowBackend(store_uri)
    run_id = client.create_run(experiment_id, run_name="r").info.run_id
    client.log_param(run_id, "lr", "0.1")

    assert backend.get_run(MISSING_RUN) is None
    ref = backend.get_run(run_id)
    assert ref is not None
    assert (ref.id, ref.experiment_id, ref.name, ref.status, ref.deleted) == (
        run_id,
        experiment_id,
        "r",
        RunStatus.RUNNING,
        False,
    )
    assert dict(ref.params) == {"lr": "0.1"}


def test_get_run_is_none_for_an_unknown_id_over_http(mlflow_server: str) -> None:
    backend = MlflowBackend(mlflow_server)
    try:
        assert backend.get_run(MISSING_RUN) is None
    finally:
        backend.close()  # an HTTP backend mounts a transport hook until closed


def test_create_experiment_of_an_existing_name_returns_its_id(
    store_uri: str, experiment_id: str
) -> None:
    """Another process created it between the session's lookup and its create."""
    assert MlflowBackend(store_uri).create_experiment("pins", None, None) == experiment_id


def test_end_run_of_a_run_below_the_top_terminates_it_and_takes_it_off_the_stack(
    store_uri: str, client: MlflowClient, experiment_id: str
) -> None:
    backend = MlflowBackend(store_uri)
    below = client.create_run(experiment_id).info.run_id
    backend.push_active(below)
    top = mlflow.start_run(experiment_id=experiment_id, nested=True).info.run_id

    backend.end_run(below, RunStatus.KILLED)

    assert backend.active_run_ids() == [top]
    assert client.get_run(below).info.status == "KILLED"
    assert client.get_run(top).info.status == "RUNNING"


def test_log_batch_sends_params_tags_and_metrics_with_their_steps(
    store_uri: str, client: MlflowClient, experiment_id: str
) -> None:
    run_id = client.create_run(experiment_id).info.run_id
    batch = Batch(
        params=(("lr", "0.1"),),
        tags=(("team", "vision"),),
        metrics=(
            MetricPoint(key="loss", value=0.5, step=1, timestamp=1_000),
            MetricPoint(key="loss", value=0.4, step=2, timestamp=0),
        ),
    )

    MlflowBackend(store_uri).log_batch(run_id, batch)

    run = client.get_run(run_id)
    assert run.data.params == {"lr": "0.1"}
    assert run.data.tags["team"] == "vision"
    history: list[Any] = client.get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.5), (2, 0.4)]
    assert all(m.timestamp > 0 for m in history)


def test_header_provider_registry_is_the_list_mlflow_asks_on_every_request() -> None:
    from mlflow.tracking.request_header import registry
    from mlflow.tracking.request_header.abstract_request_header_provider import (
        RequestHeaderProvider,
    )

    from trackcfg._mlflow import add_header_provider, remove_header_provider

    class Marker(RequestHeaderProvider):
        def in_context(self) -> bool:
            return True

        def request_headers(self) -> dict[str, str]:
            return {"X-Marker": "1"}

    providers = registry._request_header_provider_registry._registry
    assert isinstance(providers, list)
    resolve: Any = registry.resolve_request_headers
    before = list(providers)
    marker = Marker()
    add_header_provider(marker)
    assert resolve()["X-Marker"] == "1"
    remove_header_provider(marker)
    assert "X-Marker" not in resolve()
    assert providers == before


# ---------------------------------------------------------------------------------------------
# Pins and backend behaviour: the per-task active-run stacks, and a locked SQLite store.


class _OwnStack:
    """A stand-in with ``ThreadLocalVariable``'s interface, holding one list of our own."""

    def __init__(self) -> None:
        self.runs: list[Any] = []

    def get(self) -> list[Any]:
        return self.runs

    def set(self, value: list[Any]) -> None:
        self.runs = value

    def get_all_thread_values(self) -> dict[int, list[Any]]:
        return {threading.get_ident(): self.runs}

    def reset(self) -> None:
        self.runs = []


def test_active_run_stack_is_looked_up_at_each_call_and_changed_in_place(
    client: MlflowClient, experiment_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.utils.thread_utils import ThreadLocalVariable

    assert isinstance(fluent._active_run_stack, ThreadLocalVariable)
    for name in ("get", "set", "get_all_thread_values", "reset"):
        assert callable(getattr(fluent._active_run_stack, name)), name
    stand_in = _OwnStack()
    monkeypatch.setattr(fluent, "_active_run_stack", stand_in)

    run = mlflow.start_run(experiment_id=experiment_id)
    assert stand_in.runs == [run]
    active = mlflow.active_run()
    assert active is not None
    assert active.info.run_id == run.info.run_id
    mlflow.log_metric("through_the_stand_in", 1.0)
    assert fluent._get_latest_active_run().info.run_id == run.info.run_id
    mlflow.end_run()
    assert stand_in.runs == []

    logged = client.get_run(run.info.run_id)
    assert logged.data.metrics == {"through_the_stand_in": 1.0}
    assert logged.info.status == "FINISHED"


def test_sqlite_store_sessions_wait_20_s_for_a_lock() -> None:
    """The wait the locked-store message names (``_locked_store_error``)."""
    import inspect

    from mlflow.store.db import utils

    assert "PRAGMA busy_timeout = 20000;" in inspect.getsource(utils._get_managed_session_maker)


def test_each_asyncio_task_gets_its_own_active_run_stack_while_the_store_is_in_use(
    store_uri: str, experiment_id: str
) -> None:
    import asyncio

    backend = MlflowBackend(store_uri)
    original = fluent._active_run_stack
    token = backend.use_store(experiment_id)
    assert fluent._active_run_stack is not original
    seen: dict[str, list[str]] = {}

    async def task(name: str, go: asyncio.Event, other: asyncio.Event) -> None:
        ref = backend.start_run(experiment_id=experiment_id, name=name, parent_run_id=None, tags={})
        go.set()
        await other.wait()  # both runs started: each task still sees only its own
        seen[name] = backend.active_run_ids()
        mlflow.log_metric(name, 1.0)
        backend.end_run(ref.id, RunStatus.FINISHED)
        seen[f"{name} after"] = backend.active_run_ids()

    async def main() -> None:
        a, b = asyncio.Event(), asyncio.Event()
        await asyncio.gather(task("a", a, b), task("b", b, a))

    try:
        asyncio.run(main())
    finally:
        backend.restore_store(token)
    assert fluent._active_run_stack is original
    assert backend.active_run_ids() == []

    runs = {r.info.run_name: r for r in MlflowClient(store_uri).search_runs([experiment_id])}
    a_id, b_id = runs["a"].info.run_id, runs["b"].info.run_id
    assert seen == {"a": [a_id], "b": [b_id], "a after": [], "b after": []}
    assert runs["a"].data.metrics == {"a": 1.0}
    assert runs["b"].data.metrics == {"b": 1.0}
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
