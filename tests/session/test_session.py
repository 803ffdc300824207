"""TrackingSession: each behaviour on real stores (a SQLite store in a temporary project, a real
``mlflow server`` over HTTP), and where a section says so, the same decisions on the in-memory
fake store of ``tests/fakes.py`` (``fake_project``/``fake_store``), which covers every branch
in milliseconds; the fake's MLflow behaviours are checked against MLflow in
``tests/backend/test_mlflow_backend.py``.  Every test reads what it asserts back from the store
(or the fake), or from the process (environment, signal handlers, exact errors)."""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import json
import logging
import os
import pty
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Callable, Generator, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from types import FrameType
from typing import Any

import mlflow
import pytest
from fakes import FAKE_PROJECT_NAME, FAKE_URI, MLFLOW3_LIMITS, FakeProject, FakeStore, open_session
from helpers import (
    HTTP_SETTINGS,
    PROJECT_NAME,
    REPO,
    TRACKING_SETTINGS,
    Project,
    project_folder,
    read_runs,
    run_python,
    subprocess_env,
    use_every_method,
)
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.store.tracking.rest_store import RestStore
from mlflow.tracking import _tracking_service
from mlflow.tracking import fluent as mlflow_fluent

from trackcfg import (
    ConfigError,
    ExperimentError,
    ParamValueTooLongError,
    RunError,
    TrackingConfig,
    TrackingSession,
    TrackingUnavailableError,
    load_config,
    tracked,
)
from trackcfg._backend import RunStatus
from trackcfg._params import DEFAULT_LIMITS

# ---------------------------------------------------------------------------------------------
# A project folder, its store, and reading runs back.


@pytest.fixture
def project(tmp_path: Path, migrated_sqlite_db: Path) -> Project:
    """A project whose store (``<root>/mlruns/mlflow.db``) exists, empty but the Default
    experiment."""
    return Project(project_folder(tmp_path / "proj", name=PROJECT_NAME, store=migrated_sqlite_db))


@pytest.fixture
def bare_project(tmp_path: Path) -> Project:
    """A project with no store yet."""
    return Project(project_folder(tmp_path / "proj", name=PROJECT_NAME))


def client_of(session: TrackingSession) -> MlflowClient:
    return MlflowClient(tracking_uri=session.tracking_uri)


def run_of(session: TrackingSession) -> Run:
    assert session.run_id is not None
    run: Run = client_of(session).get_run(session.run_id)
    return run


def all_runs(client: MlflowClient) -> list[Run]:
    return read_runs(client, deleted=True)


def read_artifact(client: MlflowClient, run_id: str, path: str, tmp_path: Path) -> str:
    dest = tmp_path / "downloads" / run_id
    dest.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, path, str(dest))).read_text()


def _active_run_stack() -> list[mlflow.ActiveRun]:
    """This thread's active-run stack, MLflow's own list."""
    stack: list[mlflow.ActiveRun] = mlflow_fluent._active_run_stack.get()  # type: ignore[no-untyped-call]
    return stack


@pytest.fixture
def outer_run(project: Project) -> Iterator[str]:
    """A run started with plain MLflow in the project's store, active around the test."""
    experiment_id = MlflowClient(tracking_uri=project.store_uri).create_experiment("outer")
    mlflow.set_tracking_uri(project.store_uri)
    run_id: str = mlflow.start_run(experiment_id=experiment_id, run_name="outer").info.run_id
    yield run_id
    while mlflow.active_run() is not None:
        mlflow.end_run()


SECRET = "s3cr3t-Pa55"


STALE_RUN = "0123456789abcdef0123456789abcdef"


def experiment_names(store: str) -> set[str]:
    return {e.name for e in MlflowClient(tracking_uri=store).search_experiments()}


def printed(error: BaseException) -> str:
    """What Python prints for ``error`` when nobody catches it: the traceback, with every
    exception chained to it that is shown."""
    return "".join(traceback.format_exception(error))


# ---------------------------------------------------------------------------------------------
# 1. Disabled sessions.


def _raises_if(raises: bool, error: type[BaseException]) -> AbstractContextManager[object]:
    return pytest.raises(error) if raises else contextlib.nullcontext()


@pytest.mark.parametrize("how", ["disable_tracking.pipelines", "TRACKCFG_DISABLE=1"])
def test_disabled_session_works_and_writes_nothing(
    bare_project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    if how == "TRACKCFG_DISABLE=1":
        config = bare_project.config()
        assert TrackingSession(config, name="train").enabled is True
        monkeypatch.setenv("TRACKCFG_DISABLE", "1")
    else:
        config = bare_project.config("tracking:\n  disable_tracking:\n    pipelines: [train]\n")
        assert TrackingSession(config, name="other").enabled is True  # only "train" is skipped
    cwd_before = sorted(Path.cwd().iterdir())

    with TrackingSession(config, name="train", params={"lr": 0.1}, tags={"t": "x"}) as s:
        assert s.enabled is False
        assert s.run_id is None
        assert s.experiment_id is None
        use_every_method(s, tmp_path)
        with s.child("trial", params={"k": 1}) as child:
            assert child.enabled is False
            assert child.run_id is None
            child.log_metrics({"trial_loss": 0.1})
        assert mlflow.active_run() is None

    assert s.enabled is False
    assert not (bare_project.root / "mlruns").exists()
    assert sorted(Path.cwd().iterdir()) == cwd_before


def test_disabled_session_never_imports_mlflow(bare_project: Project, tmp_path: Path) -> None:
    bare_project.config("tracking:\n  disable_tracking:\n    pipelines: [train]\n")
    script = f"""
        import sys
        from pathlib import Path
        from trackcfg import TrackingSession
        with TrackingSession.from_yaml({str(bare_project.root / "mlflow.yml")!r}, name="train",
                                       params={{"lr": 0.1}}) as s:
            s.log_metrics({{"loss": 0.5}})
            s.log_text("x", "a.txt")
        print(sorted(m for m in sys.modules if m.partition(".")[0] == "mlflow"))
    """
    assert _run_python(script, cwd=tmp_path).strip() == "[]"
    assert not (bare_project.root / "mlruns").exists()


# ---------------------------------------------------------------------------------------------
# Disabled sessions, on the fake store.


@pytest.mark.parametrize(
    ("overrides", "env", "name"),
    [
        ({"tracking.disable_tracking.pipelines": ["train"]}, {}, "train"),
        ({"tracking.disable_tracking.pipelines": ["fit"]}, {}, "Trainer.fit"),
        ({}, {"TRACKCFG_DISABLE": "1"}, "train"),
        ({}, {"RANK": "1"}, "train"),
    ],
    ids=["whole-name", "last-dotted-part", "TRACKCFG_DISABLE", "rank-1-under-ranks-zero"],
)
def test_a_disabled_session_opens_nothing_and_logs_nothing(
    fake_project: FakeProject,
    fake_store: FakeStore,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    overrides: dict[str, Any],
    env: dict[str, str],
    name: str,
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    session = open_session(
        fake_project.config(overrides), fake_store, name=name, params={"lr": 0.1}
    )
    assert not session.enabled
    environ_before = dict(os.environ)
    handler = signal.getsignal(signal.SIGTERM)

    with session as s:
        assert signal.getsignal(signal.SIGTERM) == handler
        use_every_method(s, tmp_path)
        with s.child("step", params={"x": 1}) as child:
            assert not child.enabled
            use_every_method(child, tmp_path)
        assert s.child_env() == {"TRACKCFG_DISABLE": "1"}
        assert dict(os.environ) == environ_before

    assert not session.enabled
    assert session.run_id is None
    assert fake_store.calls == []  # the factory was never called, not even for its limits
    assert dict(os.environ) == environ_before


def test_a_disabled_session_lets_an_exception_through_unchanged(
    fake_project: FakeProject, fake_store: FakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRACKCFG_DISABLE", "1")
    error = ValueError("x")

    with (
        pytest.raises(ValueError, match="x") as raised,
        open_session(fake_project.config(), fake_store),
    ):
        raise error

    assert raised.value is error
    assert fake_store.calls == []


@pytest.mark.parametrize("name", ["fitness", "fit.Trainer", "refit"])
def test_disable_tracking_matches_only_the_whole_name_or_its_last_dotted_part(
    fake_project: FakeProject, fake_store: FakeStore, name: str
) -> None:
    config = fake_project.config({"tracking.disable_tracking.pipelines": ["fit"]})

    with open_session(config, fake_store, name=name) as s:
        assert s.enabled

    assert fake_store.run(s.run_id).status is RunStatus.FINISHED


def test_a_rank_other_than_zero_logs_under_ranks_all_tagged_with_its_rank(
    fake_project: FakeProject, fake_store: FakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "1")

    with open_session(fake_project.config({"tracking.run.ranks": "all"}), fake_store) as s:
        pass

    assert fake_store.run(s.run_id).user_tags == {"trackcfg.rank": "1"}


# ---------------------------------------------------------------------------------------------
# 2. What the session changes in the process, given back.

_CREDENTIALS = """\
    demo_server:
      DEMO_TRACKING_USER: alice
      DEMO_TRACKING_TOKEN: s3cret
"""


@pytest.mark.parametrize("raises", [False, True], ids=["success", "exception"])
def test_credentials_are_exported_only_during_the_session(
    project: Project, monkeypatch: pytest.MonkeyPatch, raises: bool
) -> None:
    (project.root / "credentials.yml").write_text(textwrap.dedent(_CREDENTIALS))
    config = project.config("server:\n  credentials: demo_server\n")
    monkeypatch.setenv("DEMO_TRACKING_USER", "previous-user")
    monkeypatch.delenv("DEMO_TRACKING_TOKEN", raising=False)
    seen: dict[str, str | None] = {}

    with _raises_if(raises, RuntimeError):  # noqa: SIM117
        with TrackingSession(config, name="train") as s:
            seen = {k: os.environ.get(k) for k in ("DEMO_TRACKING_USER", "DEMO_TRACKING_TOKEN")}
            if raises:
                raise RuntimeError("boom")

    assert seen == {"DEMO_TRACKING_USER": "alice", "DEMO_TRACKING_TOKEN": "s3cret"}
    assert os.environ.get("DEMO_TRACKING_USER") == "previous-user"
    assert "DEMO_TRACKING_TOKEN" not in os.environ
    assert run_of(s).info.status == ("FAILED" if raises else "FINISHED")


@pytest.mark.parametrize("before", ["unset", "set by the user"])
def test_tracking_uri_is_given_back(project: Project, tmp_path: Path, before: str) -> None:
    # Loaded first: mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI, which a config
    # loaded afterwards would take for its unset URI (docs/architecture.md: it fills an unset URI).
    config = project.config()
    if before == "set by the user":
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    uri_before = mlflow.get_tracking_uri()
    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    internal_before = _tracking_service.utils._tracking_uri

    with TrackingSession(config, name="train") as s:
        assert mlflow.get_tracking_uri() == s.tracking_uri == project.store_uri

    assert mlflow.get_tracking_uri() == uri_before
    assert os.environ.get("MLFLOW_TRACKING_URI") == env_before
    assert _tracking_service.utils._tracking_uri == internal_before
    assert run_of(s).info.status == "FINISHED"


def test_registry_uri_is_set_during_the_session_and_given_back(project: Project) -> None:
    config = project.config("server:\n  mlflow_registry_uri: sqlite:///registry/models.db\n")
    registry_before = mlflow.get_registry_uri()
    env_before = os.environ.get("MLFLOW_REGISTRY_URI")

    with TrackingSession(config, name="train") as s:
        assert mlflow.get_registry_uri() == f"sqlite:///{project.root / 'registry' / 'models.db'}"

    assert mlflow.get_registry_uri() == registry_before
    assert os.environ.get("MLFLOW_REGISTRY_URI") == env_before
    assert run_of(s).info.status == "FINISHED"


def test_active_experiment_set_by_the_user_is_given_back(project: Project) -> None:
    config = project.config()
    mlflow.set_tracking_uri(project.store_uri)
    mine = mlflow.set_experiment("mine").experiment_id

    with TrackingSession(config, name="train") as s:
        pass

    after = mlflow.start_run()
    mlflow.end_run()
    assert after.info.experiment_id == mine != s.experiment_id
    assert run_of(s).info.experiment_id == s.experiment_id


def test_no_active_run_before_means_none_after(project: Project) -> None:
    with TrackingSession(project.config(), name="train") as s:
        active = mlflow.active_run()
        assert active is not None
        assert active.info.run_id == s.run_id

    assert mlflow.active_run() is None
    assert run_of(s).info.status == "FINISHED"


def test_run_active_before_is_the_active_run_again_after(project: Project, outer_run: str) -> None:
    with TrackingSession(project.config(), name="train") as s:
        active = mlflow.active_run()
        assert active is not None
        assert active.info.run_id == s.run_id != outer_run

    active = mlflow.active_run()
    assert active is not None
    assert active.info.run_id == outer_run
    assert [r.info.run_id for r in _active_run_stack()] == [outer_run]
    assert client_of(s).get_run(outer_run).info.status == "RUNNING"


# ---------------------------------------------------------------------------------------------
# 3. Experiment.


def test_missing_experiment_is_created_with_artifacts_inside_the_store_folder(
    project: Project,
) -> None:
    artifacts = project.root / "mlruns" / "artifacts"
    assert MlflowClient(tracking_uri=project.store_uri).get_experiment_by_name(PROJECT_NAME) is None

    with TrackingSession(project.config(), name="train") as s:
        s.log_text("hello", "notes/hello.txt")

    experiment = client_of(s).get_experiment_by_name(PROJECT_NAME)
    assert experiment is not None
    assert experiment.experiment_id == s.experiment_id == run_of(s).info.experiment_id
    assert experiment.artifact_location.startswith(artifacts.as_uri())
    written = list(artifacts.rglob("hello.txt"))
    assert [p.read_text() for p in written] == ["hello"]


def test_missing_experiment_with_create_false_raises_and_creates_no_run(project: Project) -> None:
    config = project.config("tracking:\n  experiment:\n    name: absent\n    create: false\n")

    with pytest.raises(ExperimentError, match="'absent'") as info:  # noqa: SIM117
        with TrackingSession(config, name="train"):
            pytest.fail("the block must not run")

    assert "tracking.experiment.create" in str(info.value)
    client = MlflowClient(tracking_uri=project.store_uri)
    assert client.get_experiment_by_name("absent") is None
    assert all_runs(client) == []
    assert mlflow.active_run() is None


def test_deleted_experiment_is_restored_and_used(project: Project) -> None:
    client = MlflowClient(tracking_uri=project.store_uri)
    experiment_id = client.create_experiment("old")
    client.delete_experiment(experiment_id)

    config = project.config("tracking:\n  experiment:\n    name: old\n")
    with TrackingSession(config, name="train") as s:
        pass

    assert client.get_experiment(experiment_id).lifecycle_stage == "active"
    assert run_of(s).info.experiment_id == experiment_id == s.experiment_id


def test_deleted_experiment_with_restore_false_raises_naming_the_setting(project: Project) -> None:
    client = MlflowClient(tracking_uri=project.store_uri)
    experiment_id = client.create_experiment("old")
    client.delete_experiment(experiment_id)
    config = project.config(
        "tracking:\n  experiment:\n    name: old\n    restore_if_deleted: false\n"
    )

    with pytest.raises(ExperimentError, match="restore_if_deleted") as info:  # noqa: SIM117
        with TrackingSession(config, name="train"):
            pytest.fail("the block must not run")

    assert "'old'" in str(info.value)
    assert client.get_experiment(experiment_id).lifecycle_stage == "deleted"
    assert all_runs(client) == []


def test_create_experiment_kwargs_tags_are_set_on_the_new_experiment(project: Project) -> None:
    config = project.config(
        """\
        tracking:
          experiment:
            name: tagged
            create_experiment_kwargs:
              tags: {team: vision, owner: bob}
        """
    )
    with TrackingSession(config, name="train") as s:
        pass

    experiment = client_of(s).get_experiment(run_of(s).info.experiment_id)
    assert experiment.name == "tagged"
    assert experiment.tags["team"] == "vision"
    assert experiment.tags["owner"] == "bob"


# ---------------------------------------------------------------------------------------------
# The experiment, on the fake store.


def test_a_missing_experiment_is_created_and_an_existing_one_used_as_it_is(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    config = fake_project.config({"tracking.experiment.name": "my-exp"})

    with open_session(config, fake_store) as first:
        pass
    with open_session(config, fake_store) as second:
        pass

    experiment = fake_store.experiment_named("my-exp")
    assert experiment is not None
    assert not experiment.deleted
    assert experiment.artifact_location is None  # a server store picks it
    assert fake_store.run(first.run_id).experiment_id == experiment.id
    assert fake_store.run(second.run_id).experiment_id == experiment.id
    assert [call.args[0] for call in fake_store.called("create_experiment")] == ["my-exp"]


def test_a_missing_experiment_with_create_false_raises_naming_the_setting(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    session = open_session(fake_project.config({"tracking.experiment.create": False}), fake_store)

    with pytest.raises(ExperimentError, match=r"tracking\.experiment\.create") as raised, session:
        pass

    assert repr(FAKE_PROJECT_NAME) in str(raised.value)
    assert fake_store.experiments == {}
    assert fake_store.runs == {}


def test_a_deleted_experiment_is_restored_and_used(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    experiment_id = fake_store.add_experiment(FAKE_PROJECT_NAME, deleted=True)

    with open_session(fake_project.config(), fake_store) as s:
        pass

    assert not fake_store.experiments[experiment_id].deleted
    assert fake_store.run(s.run_id).experiment_id == experiment_id
    assert [call.args for call in fake_store.called("restore_experiment")] == [(experiment_id,)]


def test_a_deleted_experiment_with_restore_false_raises_naming_the_setting(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    experiment_id = fake_store.add_experiment(FAKE_PROJECT_NAME, deleted=True)
    config = fake_project.config({"tracking.experiment.restore_if_deleted": False})

    with (
        pytest.raises(ExperimentError, match="restore_if_deleted"),
        open_session(config, fake_store),
    ):
        pass

    assert fake_store.experiments[experiment_id].deleted
    assert fake_store.runs == {}


# ---------------------------------------------------------------------------------------------
# 4. Run: new, resumed, nested, attached, child.


@pytest.mark.parametrize(
    ("yaml", "expected"),
    [("", "train"), ("tracking:\n  run:\n    name: nightly\n", "nightly")],
    ids=["session name", "run.name"],
)
def test_new_run_is_named_by_run_name_else_the_session_name(
    project: Project, yaml: str, expected: str
) -> None:
    with TrackingSession(project.config(yaml), name="train", params={"lr": 0.1}) as s:
        pass

    run = run_of(s)
    assert run.info.run_name == expected
    assert run.data.params == {"lr": "0.1"}
    assert [r.info.run_id for r in all_runs(client_of(s))] == [s.run_id]


def test_inside_an_active_run_nested_true_starts_a_child_run(
    project: Project, outer_run: str
) -> None:
    with TrackingSession(project.config(), name="train", params={"lr": 0.1}) as s:
        s.log_metrics({"loss": 0.5})

    child = run_of(s)
    assert child.info.run_id != outer_run
    assert child.data.tags["mlflow.parentRunId"] == outer_run
    assert child.info.experiment_id == s.experiment_id
    assert child.info.status == "FINISHED"
    assert child.data.metrics == {"loss": 0.5}
    outer = client_of(s).get_run(outer_run)
    assert outer.info.status == "RUNNING"
    assert outer.data.params == {}


def test_inside_an_active_run_nested_false_attaches_and_leaves_it_running(
    project: Project, outer_run: str
) -> None:
    config = project.config("tracking:\n  run:\n    nested: false\n")
    with TrackingSession(config, name="train", params={"lr": 0.1}) as s:
        assert s.run_id == outer_run
        s.log_metrics({"loss": 0.5})
        mlflow.log_metric("plain", 1.0)

    outer = client_of(s).get_run(outer_run)
    assert outer.info.status == "RUNNING"
    assert outer.data.params == {"lr": "0.1"}
    assert outer.data.metrics == {"loss": 0.5, "plain": 1.0}
    active = mlflow.active_run()
    assert active is not None
    assert active.info.run_id == outer_run
    assert len(all_runs(client_of(s))) == 1


def test_attaching_with_a_param_the_run_logged_differently_raises_run_error(
    project: Project, outer_run: str
) -> None:
    mlflow.log_param("lr", 0.1)
    config = project.config("tracking:\n  run:\n    nested: false\n")

    with pytest.raises(RunError, match="'lr'"):  # noqa: SIM117
        with TrackingSession(config, name="train", params={"lr": 0.2}):
            pytest.fail("the block must not run")

    outer = MlflowClient(tracking_uri=project.store_uri).get_run(outer_run)
    assert outer.data.params == {"lr": "0.1"}
    assert outer.info.status == "RUNNING"


@pytest.fixture
def env_run(project: Project, monkeypatch: pytest.MonkeyPatch) -> str:
    """A RUNNING run named by ``MLFLOW_RUN_ID`` (as a launcher sets it), none active."""
    client = MlflowClient(tracking_uri=project.store_uri)
    run_id: str = client.create_run(client.create_experiment("launcher")).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    return run_id


def test_mlflow_run_id_with_nested_true_starts_a_child_of_it(
    project: Project, env_run: str
) -> None:
    with TrackingSession(project.config(), name="train") as s:
        s.log_metrics({"loss": 0.5})

    child = run_of(s)
    assert child.info.run_id != env_run
    assert child.data.tags["mlflow.parentRunId"] == env_run
    assert child.info.status == "FINISHED"
    assert client_of(s).get_run(env_run).info.status == "RUNNING"
    assert os.environ.get("MLFLOW_RUN_ID") == env_run
    assert mlflow.active_run() is None


def test_mlflow_run_id_with_nested_false_attaches_without_ending_it(
    project: Project, env_run: str
) -> None:
    config = project.config("tracking:\n  run:\n    nested: false\n")
    with TrackingSession(config, name="train", params={"lr": 0.1}) as s:
        assert s.run_id == env_run
        mlflow.log_metric("plain", 1.0)

    run = client_of(s).get_run(env_run)
    assert run.info.status == "RUNNING"
    assert run.data.params == {"lr": "0.1"}
    assert run.data.metrics == {"plain": 1.0}
    assert os.environ.get("MLFLOW_RUN_ID") == env_run
    assert mlflow.active_run() is None


def test_child_session_is_a_finished_child_run_with_its_params(project: Project) -> None:
    with TrackingSession(project.config(), name="train") as s:
        with s.child("trial", params={"k": 1}) as c:
            active = mlflow.active_run()
            assert active is not None
            assert active.info.run_id == c.run_id
            c.log_metrics({"score": 0.7})
        active = mlflow.active_run()
        assert active is not None
        assert active.info.run_id == s.run_id

    child = run_of(c)
    assert child.info.run_id != s.run_id
    assert child.info.run_name == "trial"
    assert child.info.status == "FINISHED"
    assert child.info.experiment_id == s.experiment_id
    assert child.data.tags["mlflow.parentRunId"] == s.run_id
    assert child.data.params == {"k": "1"}
    assert child.data.metrics == {"score": 0.7}
    assert run_of(s).data.params == {}


def test_plain_mlflow_calls_inside_the_block_log_into_the_session(project: Project) -> None:
    with TrackingSession(project.config(), name="train") as s:
        mlflow.log_metric("plain", 1.0)
        mlflow.log_param("plain_param", "x")
        with mlflow.start_run(nested=True, run_name="inner") as inner:
            mlflow.log_metric("inner_metric", 2.0)

    client = client_of(s)
    run = run_of(s)
    assert run.data.metrics == {"plain": 1.0}
    assert run.data.params == {"plain_param": "x"}
    nested = client.get_run(inner.info.run_id)
    assert nested.data.tags["mlflow.parentRunId"] == s.run_id
    assert nested.info.experiment_id == s.experiment_id != "0"
    assert nested.data.metrics == {"inner_metric": 2.0}
    assert len(all_runs(client)) == 2


def test_logging_from_another_thread_lands_in_the_session_run(project: Project) -> None:
    """MLflow's active run is per thread; the session's own calls name their run."""
    with TrackingSession(project.config(), name="train") as s:
        worker = threading.Thread(target=lambda: s.log_metrics({"from_thread": 1.0}, step=4))
        worker.start()
        worker.join()

    client = client_of(s)
    assert [
        (m.step, m.value) for m in client.get_metric_history(run_of(s).info.run_id, "from_thread")
    ] == [(4, 1.0)]
    assert len(all_runs(client)) == 1


def test_activate_makes_the_run_active_in_a_worker_thread_and_takes_it_off_after(
    project: Project,
) -> None:
    seen: dict[str, str | None] = {}

    def work(session: TrackingSession) -> None:
        with session.activate():
            active = mlflow.active_run()
            seen["during"] = None if active is None else active.info.run_id
            mlflow.log_metric("in_thread", 1.0)
        after = mlflow.active_run()
        seen["after"] = None if after is None else after.info.run_id

    with TrackingSession(project.config(), name="train") as s:
        worker = threading.Thread(target=work, args=(s,))
        worker.start()
        worker.join()
        assert client_of(s).get_run(run_of(s).info.run_id).info.status == "RUNNING"

    assert seen == {"during": s.run_id, "after": None}
    run = run_of(s)
    assert run.data.metrics == {"in_thread": 1.0}
    assert run.info.status == "FINISHED"
    assert len(all_runs(client_of(s))) == 1


def test_session_in_a_worker_thread_runs_and_leaves_sigterm_alone(project: Project) -> None:
    config = project.config()
    handler_before = signal.getsignal(signal.SIGTERM)
    seen: dict[str, object] = {}

    def work() -> None:
        try:
            with TrackingSession(config, name="worker") as s:
                seen["handler"] = signal.getsignal(signal.SIGTERM)
                s.log_metrics({"m": 1.0})
            seen["run_id"] = s.run_id
        except BaseException as exc:  # reported below, in the test's thread
            seen["error"] = exc

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()

    assert "error" not in seen, seen.get("error")
    assert seen["handler"] is handler_before
    run = MlflowClient(tracking_uri=project.store_uri).get_run(str(seen["run_id"]))
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"m": 1.0}


def test_a_param_logged_again_with_another_value_raises_and_keeps_the_first(
    project: Project,
) -> None:
    with TrackingSession(project.config(), name="train", params={"lr": 0.1}) as s:
        s.log_params({"lr": 0.1})  # the same value again is fine
        with pytest.raises(RunError, match="'lr'"):
            s.log_params({"lr": 0.2})

    run = run_of(s)
    assert run.data.params == {"lr": "0.1"}
    assert run.info.status == "FINISHED"


def test_logging_after_the_block_or_entering_twice_raises(project: Project) -> None:
    session = TrackingSession(project.config(), name="train")
    with session:
        pass

    with pytest.raises(RunError, match="ended"):
        session.log_metrics({"late": 1.0})
    with pytest.raises(RunError, match="entered already"):  # noqa: SIM117
        with session:
            pytest.fail("the block must not run")
    client = client_of(session)
    assert run_of(session).data.metrics == {}
    assert len(all_runs(client)) == 1


def test_run_left_open_inside_the_block_ends_with_the_session_status(project: Project) -> None:
    opened: list[str] = []

    def start_nested_run_and_fail() -> None:
        opened.append(mlflow.start_run(nested=True).info.run_id)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):  # noqa: SIM117
        with TrackingSession(project.config(), name="train") as s:
            start_nested_run_and_fail()

    assert [client_of(s).get_run(run_id).info.status for run_id in opened] == ["FAILED"]
    assert run_of(s).info.status == "FAILED"
    assert mlflow.active_run() is None


# ---------------------------------------------------------------------------------------------
# Where the run goes (new, child, attached), on the fake store.


def test_child_session_is_a_child_run_of_the_session_run(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    with open_session(fake_project.config(), fake_store) as parent:
        with parent.child("fold-1", params={"fold": 1}) as child:
            assert fake_store.stack() == [parent.run_id, child.run_id]
        assert fake_store.stack() == [parent.run_id]

    run = fake_store.run(child.run_id)
    assert run.parent_id == parent.run_id
    assert run.name == "fold-1"
    assert run.experiment_id == parent.experiment_id
    assert run.params == {"fold": "1"}
    assert run.status is RunStatus.FINISHED
    assert fake_store.run(parent.run_id).status is RunStatus.FINISHED
    assert len(fake_store.opened) == 1  # the child uses its parent's backend


def test_a_failed_child_caught_inside_the_parent_leaves_the_parent_finished(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    with open_session(fake_project.config(), fake_store) as parent:
        child = parent.child("step")
        with pytest.raises(ValueError, match="step failed"), child:
            raise ValueError("step failed")

    assert fake_store.run(child.run_id).status is RunStatus.FAILED
    assert fake_store.run(parent.run_id).status is RunStatus.FINISHED


def test_an_active_run_in_the_thread_with_nested_true_gets_a_child_run_and_stays_open(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    outer = fake_store.mlflow_start_run(fake_store.add_experiment("outer"), name="outer")

    with open_session(fake_project.config({"tracking.run.nested": True}), fake_store) as s:
        assert fake_store.stack() == [outer, s.run_id]

    run = fake_store.run(s.run_id)
    assert run.parent_id == outer
    assert run.status is RunStatus.FINISHED
    assert fake_store.run(outer).status is RunStatus.RUNNING
    assert fake_store.stack() == [outer]


@pytest.mark.parametrize("error", [None, ValueError("x")], ids=["success", "exception"])
def test_an_active_run_in_the_thread_with_nested_false_is_attached_and_never_ended(
    fake_project: FakeProject, fake_store: FakeStore, error: Exception | None
) -> None:
    outer = fake_store.mlflow_start_run(fake_store.add_experiment("outer"), name="outer")
    session = open_session(
        fake_project.config({"tracking.run.nested": False}), fake_store, params={"a": 1}
    )

    with raises_if(error), session:
        assert session.run_id == outer
        session.log_metric("loss", 0.25)
        if error is not None:
            raise error

    run = fake_store.run(outer)
    assert run.status is RunStatus.RUNNING
    assert run.params == {"a": "1"}
    assert [m.key for m in run.metrics] == ["loss"]
    assert fake_store.stack() == [outer]  # still the thread's active run, as before
    assert fake_store.called("start_run") == fake_store.called("end_run") == []


def test_mlflow_run_id_with_nested_false_is_attached_then_popped_and_never_ended(
    fake_project: FakeProject, fake_store: FakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = fake_store.add_run(fake_store.add_experiment("orchestrator"), status=RunStatus.RUNNING)
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)

    with open_session(fake_project.config({"tracking.run.nested": False}), fake_store) as s:
        assert s.run_id == run_id
        assert fake_store.stack() == [run_id]
        left = fake_store.mlflow_start_run(name="left open")
        s.log_params({"lr": 0.1})

    assert fake_store.stack() == []
    assert fake_store.run(run_id).status is RunStatus.RUNNING
    assert fake_store.run(run_id).params == {"lr": "0.1"}
    assert fake_store.run(left).status is RunStatus.FINISHED  # left open above it: ended
    assert os.environ["MLFLOW_RUN_ID"] == run_id


def test_mlflow_run_id_with_nested_true_gets_a_child_run(
    fake_project: FakeProject, fake_store: FakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = fake_store.add_run(fake_store.add_experiment("orchestrator"), status=RunStatus.RUNNING)
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)

    with open_session(fake_project.config(), fake_store) as s:
        pass

    assert fake_store.run(s.run_id).parent_id == run_id
    assert fake_store.run(s.run_id).status is RunStatus.FINISHED
    assert fake_store.run(run_id).status is RunStatus.RUNNING
    assert fake_store.stack() == []


@pytest.mark.parametrize("with_experiment", [True, False], ids=["child_env", "parent-only"])
def test_trackcfg_parent_run_id_forces_a_child_run_even_with_nested_false(
    fake_project: FakeProject,
    fake_store: FakeStore,
    monkeypatch: pytest.MonkeyPatch,
    with_experiment: bool,
) -> None:
    parent_config = fake_project.config({"tracking.experiment.name": "parent-exp"})
    with open_session(parent_config, fake_store, name="parent") as parent:
        worker_env = parent.child_env()
    assert worker_env["TRACKCFG_PARENT_RUN_ID"] == parent.run_id
    if not with_experiment:
        del worker_env["MLFLOW_EXPERIMENT_ID"]
    for key, value in worker_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLFLOW_RUN_ID", fake_store.add_run(fake_store.add_experiment("other")))
    lookups = len(fake_store.called("get_experiment"))

    worker_config = fake_project.config({"tracking.run.nested": False})
    with open_session(worker_config, fake_store, name="worker") as worker:
        pass

    run = fake_store.run(worker.run_id)
    assert run.parent_id == parent.run_id
    assert run.status is RunStatus.FINISHED
    if with_experiment:  # beside its parent, without a lookup request
        assert run.experiment_id == parent.experiment_id
        assert len(fake_store.called("get_experiment")) == lookups
    else:  # the worker's own configured experiment
        experiment = fake_store.experiment_named(FAKE_PROJECT_NAME)
        assert experiment is not None
        assert run.experiment_id == experiment.id


def test_attaching_to_a_missing_run_raises_naming_mlflow_run_id_and_creates_no_run(
    fake_project: FakeProject, fake_store: FakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = "0123456789abcdef0123456789abcdef"
    monkeypatch.setenv("MLFLOW_RUN_ID", missing)

    session = open_session(fake_project.config({"tracking.run.nested": False}), fake_store)
    with pytest.raises(RunError, match="MLFLOW_RUN_ID") as raised, session:
        pass

    assert missing in str(raised.value)
    assert fake_store.runs == {}
    assert fake_store.stack() == []
    assert not {"start_run", "push_active", "log_batch"} & set(fake_store.methods())
    assert os.environ["MLFLOW_RUN_ID"] == missing


def test_attaching_to_a_missing_run_creates_no_experiment_either(
    fake_project: FakeProject, fake_store: FakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_RUN_ID", "0123456789abcdef0123456789abcdef")

    session = open_session(fake_project.config({"tracking.run.nested": False}), fake_store)
    with pytest.raises(RunError, match="MLFLOW_RUN_ID"), session:
        pass

    assert fake_store.experiments == {}


def test_mlflow_run_id_naming_a_missing_run_with_nested_true_is_refused_naming_it(
    fake_project: FakeProject, fake_store: FakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_RUN_ID", "0123456789abcdef0123456789abcdef")

    with (
        pytest.raises(RunError, match="MLFLOW_RUN_ID"),
        open_session(fake_project.config(), fake_store),
    ):
        pass

    assert fake_store.runs == {}


@pytest.mark.xfail(
    strict=True,
    reason="with nested: false and the thread's own active run, the session never takes "
    "part in ending runs (_close only acts on a run it started or pushed), so a run left "
    "open inside the block stays open and active, unlike under MLFLOW_RUN_ID (reproduced on "
    "MLflow 3.17 with a SQLite store)",
)
def test_attached_to_the_threads_run_a_run_left_open_inside_ends_with_the_status(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    outer = fake_store.mlflow_start_run(fake_store.add_experiment("outer"), name="outer")
    session = open_session(fake_project.config({"tracking.run.nested": False}), fake_store)

    left: list[str] = []

    def body() -> None:
        left.append(fake_store.mlflow_start_run(name="left open"))
        raise ValueError("x")

    with pytest.raises(ValueError, match="x"), session:
        body()

    assert fake_store.run(left[0]).status is RunStatus.FAILED
    assert fake_store.stack() == [outer]


# ---------------------------------------------------------------------------------------------
# 5. Statuses.


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (None, "FINISHED"),
        (ValueError("boom"), "FAILED"),
        (SystemExit(0), "FINISHED"),
        (SystemExit(None), "FINISHED"),
        (SystemExit(1), "FAILED"),
        (KeyboardInterrupt(), "KILLED"),
    ],
    ids=["success", "exception", "exit-0", "exit-none", "exit-1", "keyboard-interrupt"],
)
def test_run_status_on_leaving_the_block(
    project: Project, error: BaseException | None, status: str
) -> None:
    session = TrackingSession(project.config(), name="train", params={"lr": 0.1})
    raised: BaseException | None = None
    try:
        with session as s:
            s.log_params({"epochs": 3})
            if error is not None:
                raise error
    except BaseException as exc:  # what escapes is what is checked
        raised = exc

    assert raised is error  # propagated unchanged (same object), or nothing escaped
    run = run_of(session)
    assert run.info.status == status
    assert run.info.end_time is not None
    assert run.data.params == {"lr": "0.1", "epochs": "3"}
    assert mlflow.active_run() is None


def test_sigterm_ends_the_run_killed_and_the_process_by_sigterm(
    project: Project, tmp_path: Path
) -> None:
    project.config()
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import time
            from trackcfg import TrackingSession
            with TrackingSession.from_yaml({str(project.root / "mlflow.yml")!r}, name="job") as s:
                print(s.run_id, flush=True)
                time.sleep(300)
            """
        )
    )
    process = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=subprocess_env(drop=TRACKING_SETTINGS),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(180, process.kill)
    watchdog.start()
    try:
        assert process.stdout is not None
        run_id = process.stdout.readline().strip()
        assert run_id, f"the script printed no run id; stderr:\n{process.communicate()[1]}"
        client = MlflowClient(tracking_uri=project.store_uri)
        assert client.get_run(run_id).info.status == "RUNNING"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == -signal.SIGTERM, stderr
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.info.end_time is not None


@pytest.mark.parametrize("raises", [False, True], ids=["success", "exception"])
def test_previous_sigterm_handler_is_restored_after_the_session(
    project: Project, raises: bool
) -> None:
    def previous(signum: int, frame: FrameType | None) -> None:
        pass

    original = signal.signal(signal.SIGTERM, previous)
    try:
        with _raises_if(raises, RuntimeError):  # noqa: SIM117
            with TrackingSession(project.config(), name="train") as s:
                assert signal.getsignal(signal.SIGTERM) is not previous
                if raises:
                    raise RuntimeError("boom")
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, original)
    assert run_of(s).info.status == ("FAILED" if raises else "FINISHED")


def test_sigterm_runs_the_programs_handler_at_once_and_a_handled_one_finishes_the_run(
    project: Project,
) -> None:
    received: list[int] = []

    def previous(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    original = signal.signal(signal.SIGTERM, previous)
    try:
        with TrackingSession(project.config(), name="train") as s:
            signal.raise_signal(signal.SIGTERM)
            assert received == [signal.SIGTERM]  # in the block: nothing was interrupted
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, original)
    assert received == [signal.SIGTERM]
    assert run_of(s).info.status == "FINISHED"


def test_sigterm_handler_that_exits_inside_a_child_kills_both_runs_and_runs_once(
    project: Project,
) -> None:
    received: list[int] = []

    def previous(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        raise SystemExit(143)

    original = signal.signal(signal.SIGTERM, previous)
    try:
        session = TrackingSession(project.config(), name="train")
        with pytest.raises(SystemExit), session as s, s.child("trial") as c:
            signal.raise_signal(signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, original)
    assert received == [signal.SIGTERM]
    assert run_of(c).info.status == "KILLED"
    assert run_of(s).info.status == "KILLED"


def test_sigterm_while_entering_runs_the_programs_handler_and_its_exit_kills_the_run(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The signal is raised at a precise moment: when the session sends its first batch
    (after its handler is installed).  Nothing is mocked: the real call follows."""
    received: list[int] = []
    real_log_batch = MlflowClient.log_batch

    def signal_then_log_batch(self: MlflowClient, *args: Any, **kwargs: Any) -> Any:
        signal.raise_signal(signal.SIGTERM)
        return real_log_batch(self, *args, **kwargs)

    def previous(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        raise SystemExit(0)  # even a clean exit: the process ends because of the signal

    # In sync mode the first batch is sent while entering (buffered: by the sender thread).
    config = project.config("tracking:\n  logging:\n    mode: sync\n")
    session = TrackingSession(config, name="train", params={"lr": 0.1})
    monkeypatch.setattr(MlflowClient, "log_batch", signal_then_log_batch)
    original = signal.signal(signal.SIGTERM, previous)
    try:
        with pytest.raises(SystemExit), session:
            pytest.fail("the block must not run")
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, original)
    assert run_of(session).info.status == "KILLED"
    assert received == [signal.SIGTERM]


def raises_if(error: BaseException | None) -> AbstractContextManager[object]:
    """``pytest.raises`` of ``error``'s type, or nothing expected when ``error`` is None."""
    return pytest.raises(type(error)) if error is not None else contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------
# Statuses on every way out of the block, on the fake store.


def test_success_ends_a_new_top_level_run_finished_with_what_was_logged(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    with open_session(
        fake_project.config(), fake_store, params={"lr": 0.1}, tags={"team": "a"}
    ) as s:
        assert fake_store.stack() == [s.run_id]
        assert fake_store.run(s.run_id).status is RunStatus.RUNNING
        s.log_metrics({"loss": 0.5}, step=3)
        s.log_text("notes", "notes.txt")

    run = fake_store.run(s.run_id)
    assert run.status is RunStatus.FINISHED
    assert run.name == "train"
    assert run.parent_id is None
    assert run.params == {"lr": "0.1"}
    assert run.user_tags == {"team": "a"}
    assert [(m.key, m.value, m.step) for m in run.metrics] == [("loss", 0.5, 3)]
    assert run.artifacts == {"notes.txt": "notes"}
    experiment = fake_store.experiment_named(FAKE_PROJECT_NAME)
    assert experiment is not None
    assert run.experiment_id == experiment.id == s.experiment_id
    assert fake_store.stack() == []
    # MLflow's current store was set once and given back; the backend was closed.
    assert (
        fake_store.methods().count("use_store") == fake_store.methods().count("restore_store") == 1
    )
    assert fake_store.current_tracking_uri is None
    assert fake_store.active_experiment_id is None
    assert [b.closed for b in fake_store.backends] == [True]


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ValueError("bad input"), RunStatus.FAILED),
        (KeyboardInterrupt(), RunStatus.KILLED),
        (SystemExit(0), RunStatus.FINISHED),
        (SystemExit(None), RunStatus.FINISHED),
        (SystemExit(1), RunStatus.FAILED),
        (SystemExit("fatal: no data"), RunStatus.FAILED),
    ],
    ids=repr,
)
def test_status_on_leaving_the_block_by_an_exception(
    fake_project: FakeProject, fake_store: FakeStore, error: BaseException, status: RunStatus
) -> None:
    session = open_session(fake_project.config(), fake_store)

    with pytest.raises(type(error)) as raised, session:
        raise error

    assert raised.value is error  # propagated unchanged
    assert fake_store.run(session.run_id).status is status
    assert fake_store.stack() == []


def test_generator_closed_while_holding_a_session_ends_its_run_finished(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    config = fake_project.config()

    def steps() -> Generator[str | None, None, None]:
        with open_session(config, fake_store) as s:
            yield s.run_id
            yield "never reached"

    generator = steps()
    run_id = next(generator)
    assert fake_store.run(run_id).status is RunStatus.RUNNING

    generator.close()  # GeneratorExit at the yield

    assert fake_store.run(run_id).status is RunStatus.FINISHED
    assert fake_store.stack() == []


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (None, RunStatus.FINISHED),
        (ValueError("x"), RunStatus.FAILED),
        (KeyboardInterrupt(), RunStatus.KILLED),
    ],
    ids=["success", "exception", "interrupt"],
)
def test_runs_left_open_above_the_session_run_end_with_its_status(
    fake_project: FakeProject, fake_store: FakeStore, error: BaseException | None, status: RunStatus
) -> None:
    session = open_session(fake_project.config(), fake_store)
    left: list[str] = []

    with raises_if(error), session:
        # What plain mlflow.start_run(nested=True) calls inside the block do, never ended.
        left.append(fake_store.mlflow_start_run(name="left-1"))
        left.append(fake_store.mlflow_start_run(name="left-2"))
        if error is not None:
            raise error

    own = session.run_id
    assert fake_store.run(left[0]).parent_id == own
    assert fake_store.run(left[1]).parent_id == left[0]
    assert [fake_store.run(r).status for r in (own, *left)] == [status] * 3
    # Ended from the top of the stack down, the session's own run last.
    assert [call.args[0] for call in fake_store.called("end_run")] == [left[1], left[0], own]
    assert fake_store.stack() == []


def test_a_failure_while_entering_ends_the_new_run_failed_and_gives_everything_back(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    fake_store.fail("log_batch", RunError("the store refused the batch"))
    handler = signal.getsignal(signal.SIGTERM)

    session = open_session(fake_project.config(), fake_store, params={"lr": 0.1})
    with pytest.raises(RunError, match="the store refused the batch"):
        session.__enter__()

    [run] = fake_store.runs.values()
    assert run.status is RunStatus.FAILED
    assert fake_store.stack() == []
    assert signal.getsignal(signal.SIGTERM) == handler
    assert not any(name in os.environ for name in HTTP_SETTINGS)
    assert fake_store.current_tracking_uri is None


def test_logging_after_the_block_or_entering_twice_raises_on_the_fake(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    session = open_session(fake_project.config(), fake_store)
    with session:
        pass

    with pytest.raises(RunError, match="has ended; log inside the with block"):
        session.log_metrics({"loss": 1.0})
    with pytest.raises(RunError, match="was entered already"):
        session.__enter__()
    assert len(fake_store.runs) == 1


# ---------------------------------------------------------------------------------------------
# 6. Long params, each strategy, on the real store.


def _strategy(project: Project, strategy: str) -> TrackingConfig:
    return project.config(f"tracking:\n  params:\n    long_params_strategy: {strategy}\n")


def test_long_param_under_fail_raises_before_any_run_exists(project: Project) -> None:
    config = _strategy(project, "fail")

    with pytest.raises(ParamValueTooLongError) as info:  # noqa: SIM117
        with TrackingSession(config, name="train", params={"prompt": "x" * 6001}):
            pytest.fail("the block must not run")

    assert "'prompt'" in str(info.value)
    assert "6001" in str(info.value)
    assert "6000" in str(info.value)
    assert "long_params_strategy" in str(info.value)
    client = MlflowClient(tracking_uri=project.store_uri)
    assert all_runs(client) == []
    assert client.get_experiment_by_name(PROJECT_NAME) is None
    assert mlflow.active_run() is None


def test_long_param_under_truncate_logs_exactly_the_limit(project: Project) -> None:
    value = "".join(str(i % 10) for i in range(7000))
    with TrackingSession(_strategy(project, "truncate"), name="train", params={"p": value}) as s:
        pass

    assert run_of(s).data.params == {"p": value[:6000]}


def test_long_param_under_tag_is_a_tag_with_the_full_value(project: Project) -> None:
    value = "v" * 7000
    with TrackingSession(_strategy(project, "tag"), name="train", params={"prompt": value}) as s:
        s.log_params({"later": "y" * 6500, "short": 1})

    run = run_of(s)
    assert run.data.params == {"short": "1"}
    assert run.data.tags["prompt"] == value
    assert run.data.tags["later"] == "y" * 6500


def test_param_past_the_tag_limit_under_tag_is_a_cut_tag_and_an_artifact(
    project: Project, tmp_path: Path
) -> None:
    value = "".join(chr(ord("a") + i % 26) for i in range(9000))
    with TrackingSession(_strategy(project, "tag"), name="train", params={"prompt": value}) as s:
        pass

    run = run_of(s)
    assert "prompt" not in run.data.params
    note = "\u2026 (9000 characters; full text in artifact params/prompt.txt)"
    assert run.data.tags["prompt"] == value[: 8000 - len(note)] + note
    assert s.run_id is not None
    assert read_artifact(client_of(s), s.run_id, "params/prompt.txt", tmp_path) == value


# ---------------------------------------------------------------------------------------------
# Params, on the fake store.


def test_a_too_long_param_under_fail_raises_before_any_backend_call(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    session = open_session(
        fake_project.config(), fake_store, params={"lr": 0.1, "prompt": "x" * 6001}
    )

    with pytest.raises(ParamValueTooLongError, match="long_params_strategy") as raised, session:
        pass

    assert (raised.value.key, raised.value.length, raised.value.limit) == ("prompt", 6001, 6000)
    assert fake_store.methods() == ["limits"]  # asked the factory its limits, opened nothing
    assert fake_store.opened == []
    assert not any(name in os.environ for name in HTTP_SETTINGS)


def test_a_too_long_param_logged_inside_the_block_raises_and_logs_none_of_the_call(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    with open_session(fake_project.config(), fake_store) as s:
        with pytest.raises(ParamValueTooLongError):
            s.log_params({"short": 1, "prompt": "x" * 6001})
        s.log_params({"other": 2})

    run = fake_store.run(s.run_id)
    assert run.params == {"other": "2"}
    assert run.status is RunStatus.FINISHED


def test_a_param_logged_again_with_another_value_raises_and_keeps_the_first_on_the_fake(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    with open_session(fake_project.config(), fake_store, params={"lr": 0.1}) as s:
        batches = len(fake_store.called("log_batch"))
        with pytest.raises(RunError, match="params are immutable") as raised:
            s.log_params({"lr": 0.2})
        assert len(fake_store.called("log_batch")) == batches  # refused before any request

    assert "'lr': logged '0.1', now '0.2'" in str(raised.value)
    assert fake_store.run(s.run_id).params == {"lr": "0.1"}
    assert fake_store.run(s.run_id).status is RunStatus.FINISHED


def test_a_param_logged_again_with_the_same_value_sends_no_request(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    with open_session(fake_project.config(), fake_store, params={"lr": 0.1}) as s:
        batches = len(fake_store.called("log_batch"))
        s.log_params({"lr": 0.1})
        assert len(fake_store.called("log_batch")) == batches
        s.log_params({"lr": 0.1, "epochs": 3})

    sent = [batch.params for batch in fake_store.batches()]
    assert sent == [(("lr", "0.1"),), (("epochs", "3"),)]


def test_many_params_go_out_in_few_batches_within_mlflow_limits(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    params = {f"p{i:03d}": i for i in range(250)}

    with open_session(fake_project.config(), fake_store, params=params) as s:
        pass

    # The fake refuses any batch past MLflow's limits, like MLflow.
    assert [len(batch.params) for batch in fake_store.batches()] == [100, 100, 50]
    assert fake_store.run(s.run_id).params == {k: str(v) for k, v in params.items()}


def test_attaching_with_a_param_the_run_logged_differently_raises_and_leaves_it_running(
    fake_project: FakeProject, fake_store: FakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = fake_store.add_run(
        fake_store.add_experiment("orchestrator"), status=RunStatus.RUNNING, params={"lr": "0.1"}
    )
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    config = fake_project.config({"tracking.run.nested": False})

    with (
        pytest.raises(RunError, match="immutable"),
        open_session(config, fake_store, params={"lr": 2}),
    ):
        pass

    assert fake_store.run(run_id).params == {"lr": "0.1"}
    assert fake_store.run(run_id).status is RunStatus.RUNNING
    assert fake_store.stack() == []
    assert fake_store.called("log_batch") == []


def test_the_fakes_limits_are_mlflow_3s() -> None:
    assert FakeStore().limits() == MLFLOW3_LIMITS == DEFAULT_LIMITS


# ---------------------------------------------------------------------------------------------
# 9-10. The current directory never matters; importing trackcfg imports no mlflow.


def test_session_from_another_cwd_writes_into_the_project_store(
    bare_project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also the one test on a store created from nothing by the session itself."""
    bare_project.config()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    db = bare_project.root / "mlruns" / "mlflow.db"

    path = bare_project.root / "mlflow.yml"
    with TrackingSession.from_yaml(path, name="train", params={"lr": 0.1}) as s:
        s.log_metrics({"loss": 0.5})

    assert s.tracking_uri == f"sqlite:///{db}"
    assert db.is_file()
    run = MlflowClient(tracking_uri=f"sqlite:///{db}").get_run(run_of(s).info.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.1"}
    assert run.data.metrics == {"loss": 0.5}
    assert list(elsewhere.iterdir()) == []


def _run_python(code: str, cwd: Path) -> str:
    env = subprocess_env(drop=TRACKING_SETTINGS)
    done = run_python("-c", textwrap.dedent(code), cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_trackcfg_imports_no_mlflow(tmp_path: Path) -> None:
    out = _run_python(
        """
        import sys
        import trackcfg
        from trackcfg import TrackingSession, load_config
        print(trackcfg.__file__)
        print(sorted(m for m in sys.modules if m.partition(".")[0] == "mlflow"))
        """,
        cwd=tmp_path,
    )
    location, modules = out.splitlines()
    assert Path(location).resolve().parent == REPO / "trackcfg"
    assert modules == "[]"


# ---------------------------------------------------------------------------------------------
# The fake store needs no mlflow.


def test_the_fake_and_a_session_on_it_import_no_mlflow(tmp_path: Path) -> None:
    """The fake-store tests' promise: the fake and a session driven by it never need mlflow."""
    tests = Path(__file__).resolve().parent
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        sys.path[:0] = [{str(tests)!r}, {str(tests.parent)!r}]
        import fakes
        from trackcfg import TrackingConfig, TrackingSession
        from trackcfg._config import ServerConfig

        store = fakes.FakeStore()
        config = TrackingConfig(
            server=ServerConfig(mlflow_tracking_uri={FAKE_URI!r}), project_root=Path.cwd()
        )
        with TrackingSession(config, name="x", params={{"a": 1}}, _backend_factory=store) as s:
            s.log_metric("m", 1.0)
        assert store.run(s.run_id).params == {{"a": "1"}}
        print("mlflow imported:", "mlflow" in sys.modules)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "mlflow imported: False" in result.stdout


# ---------------------------------------------------------------------------------------------
# 7-8. Over HTTP, against a real mlflow server.


def _http_config(project: Project, server: str, request: pytest.FixtureRequest) -> TrackingConfig:
    # One server for the whole test session: each test logs into an experiment of its own.
    return project.config(
        "tracking:\n  params:\n    dict_params: {flatten: true}\n",
        overrides={
            "server.mlflow_tracking_uri": server,
            "tracking.experiment.name": f"http-{request.node.name}",
        },
    )


def test_session_over_http_logs_params_metrics_and_artifacts(
    bare_project: Project, mlflow_server: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    config = _http_config(bare_project, mlflow_server, request)
    file = tmp_path / "model.txt"
    file.write_text("weights")
    mlflow_env_before = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}

    with TrackingSession(config, name="train", params={"opt": {"lr": 0.1}}, tags={"t": 1}) as s:
        assert s.tracking_uri == mlflow_server
        s.log_metrics({"loss": 0.5}, step=3)
        s.log_artifact(file)
        s.log_artifact(file, artifact_path="models")
        s.log_text("some text", "notes/readme.txt")
        s.log_dict({"a": 1, "b": [1, 2]}, "config.json")

    client = client_of(s)
    run = run_of(s)
    assert s.run_id is not None
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "train"
    assert run.data.params == {"opt.lr": "0.1"}
    assert run.data.tags["t"] == "1"
    assert [(m.step, m.value) for m in client.get_metric_history(s.run_id, "loss")] == [(3, 0.5)]
    assert read_artifact(client, s.run_id, "model.txt", tmp_path) == "weights"
    assert read_artifact(client, s.run_id, "models/model.txt", tmp_path) == "weights"
    assert read_artifact(client, s.run_id, "notes/readme.txt", tmp_path) == "some text"
    assert json.loads(read_artifact(client, s.run_id, "config.json", tmp_path)) == {
        "a": 1,
        "b": [1, 2],
    }
    assert not (bare_project.root / "mlruns").exists()
    assert {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")} == mlflow_env_before


def test_thousand_params_over_http_land_in_at_most_ten_batch_requests(
    bare_project: Project,
    mlflow_server: str,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """Counted, not mocked: the wrappers call the real methods."""
    calls = {"client": 0, "http": 0}
    real_client_log_batch = MlflowClient.log_batch
    real_rest_log_batch: Any = RestStore.log_batch

    def client_log_batch(self: MlflowClient, *args: Any, **kwargs: Any) -> Any:
        calls["client"] += 1
        return real_client_log_batch(self, *args, **kwargs)

    def rest_log_batch(self: RestStore, *args: Any, **kwargs: Any) -> Any:
        calls["http"] += 1
        return real_rest_log_batch(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", client_log_batch)
    monkeypatch.setattr(RestStore, "log_batch", rest_log_batch)
    params = {f"group{g}": {f"p{i}": g * 100 + i for i in range(100)} for g in range(10)}

    with TrackingSession(_http_config(bare_project, mlflow_server, request), name="many") as s:
        before = dict(calls)
        s.log_params(params)
        s.flush()  # buffered logging (the default) sends them from its own thread
        sent = {k: calls[k] - before[k] for k in calls}

    logged = run_of(s).data.params
    assert len(logged) == 1000
    assert logged == {f"group{g}.p{i}": str(g * 100 + i) for g in range(10) for i in range(100)}
    assert 1 <= sent["client"] <= 10
    assert 1 <= sent["http"] <= 10


# ---------------------------------------------------------------------------------------------
# Top-level sessions open at once in several threads (a sweep in a thread pool).


def _threads_config(url: str, root: Path, **overrides: Any) -> TrackingConfig:
    (root / "pyproject.toml").write_text("")
    return load_config(
        cwd=root,
        overrides={"server.mlflow_tracking_uri": url, "tracking.experiment.name": "threads"}
        | overrides,
    )


def test_overlapping_sessions_in_threads_each_finish_their_run(
    mlflow_server: str, tmp_path: Path
) -> None:
    """The first session to end must not take MLflow's tracking URI or the environment from
    one still open in another thread (its run would be left RUNNING, 'not found')."""
    config = _threads_config(mlflow_server, tmp_path)
    env_before = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    first_in, second_in, first_out = (threading.Event() for _ in range(3))
    run_ids: dict[str, str] = {}
    errors: list[BaseException] = []

    def first() -> None:
        try:
            with TrackingSession(config, name="first") as s:
                first_in.set()
                assert second_in.wait(60)
                s.log_metrics({"m": 1.0})
            run_ids["first"] = s.run_id or ""
        except BaseException as exc:
            errors.append(exc)
        finally:
            first_out.set()

    def second() -> None:
        try:
            assert first_in.wait(60)
            with TrackingSession(config, name="second") as s:
                second_in.set()
                assert first_out.wait(60)  # the first has ended: this one goes on
                s.log_metrics({"m": 2.0})
                mlflow.log_metric("plain", 3.0)  # plain MLflow, this thread's active run
            run_ids["second"] = s.run_id or ""
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert not errors, errors
    client = MlflowClient(mlflow_server)
    first_run, second_run = (client.get_run(run_ids[k]) for k in ("first", "second"))
    assert (first_run.info.status, first_run.data.metrics) == ("FINISHED", {"m": 1.0})
    assert (second_run.info.status, second_run.data.metrics) == (
        "FINISHED",
        {"m": 2.0, "plain": 3.0},
    )
    assert {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")} == env_before
    assert _tracking_service.utils._tracking_uri is None


def test_sessions_opening_in_threads_under_mlflow_run_id_all_nest_under_that_run(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An orchestrator's ``MLFLOW_RUN_ID`` with ``run.nested: true``: a session opening in a
    second thread while the first is open is a child of that run too (the first session's
    start took the variable out of ``os.environ``, and the second then made a top-level
    run).  The open sessions take it out once (``_state.join_settings``), not each run's
    start; it is there again afterwards."""
    client = MlflowClient(tracking_uri=project.store_uri)
    outer = client.create_run("0", run_name="orchestrator").info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", outer)
    config = project.config("tracking:\n  run:\n    nested: true\n")
    first_in, second_done = threading.Event(), threading.Event()
    run_ids: dict[str, str] = {}
    errors: list[BaseException] = []
    seen_inside: list[str | None] = []

    def first() -> None:
        try:
            with TrackingSession(config, name="first") as s:
                first_in.set()
                assert second_done.wait(60)
                s.log_metric("m", 1.0)
            run_ids["first"] = s.run_id or ""
        except BaseException as exc:
            errors.append(exc)
            first_in.set()

    def second() -> None:
        try:
            assert first_in.wait(60)
            with TrackingSession(config, name="second") as s:
                s.log_metric("m", 2.0)
                seen_inside.append(os.environ.get("MLFLOW_RUN_ID"))
            run_ids["second"] = s.run_id or ""
        except BaseException as exc:
            errors.append(exc)
        finally:
            second_done.set()

    threads = [threading.Thread(target=f) for f in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert not errors, errors
    for name in ("first", "second"):
        run = client.get_run(run_ids[name])
        assert run.data.tags.get("mlflow.parentRunId") == outer, name
        assert (run.info.status, run.data.metrics) == (
            "FINISHED",
            {"m": 1.0 if name == "first" else 2.0},
        )
    # Plain MLflow inside the sessions does not reopen the orchestrator's run.
    assert seen_inside == [None]
    assert client.get_run(outer).info.status == "RUNNING"
    assert os.environ["MLFLOW_RUN_ID"] == outer


@pytest.mark.parametrize(
    ("other", "named"),
    [
        ({"server.request_timeout": 7}, "MLFLOW_HTTP_REQUEST_TIMEOUT"),
        ({"server.mlflow_tracking_uri": "mlruns"}, "the tracking/registry URI"),
    ],
)
def test_a_session_needing_other_process_settings_than_an_open_one_is_refused(
    mlflow_server: str, tmp_path: Path, other: dict[str, Any], named: str
) -> None:
    config = _threads_config(mlflow_server, tmp_path)
    different = _threads_config(mlflow_server, tmp_path, **other)
    client = MlflowClient(mlflow_server)
    with TrackingSession(config, name="open") as open_session:
        runs_before = len(all_runs(client))
        opened = threading.Event()
        outcome: list[BaseException | None] = []

        def other_thread() -> None:
            try:
                with TrackingSession(different, name="refused"):
                    opened.set()
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join(60)
        open_session.log_metrics({"still": 1.0})  # the open session is unharmed

    assert not opened.is_set()
    [error] = outcome
    assert isinstance(error, RunError)
    assert f"with other process-wide settings ({named}" in str(error)
    assert "MainThread" in str(error)
    assert len(all_runs(client)) == runs_before  # nothing created by the refused one
    assert not (tmp_path / "mlruns").exists()
    assert run_of(open_session).data.metrics == {"still": 1.0}
    assert run_of(open_session).info.status == "FINISHED"


@dataclasses.dataclass
class RecordingHandler:
    received: list[int] = dataclasses.field(default_factory=list)

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)


@pytest.fixture
def previous_sigterm() -> Iterator[RecordingHandler]:
    """A SIGTERM handler of the application's own, installed before the sessions."""
    handler = RecordingHandler()
    before = signal.signal(signal.SIGTERM, handler)
    try:
        yield handler
    finally:
        signal.signal(signal.SIGTERM, before)


def in_thread(target: Callable[[], object]) -> BaseException | None:
    """Run ``target`` in a new thread; what it raised, if anything."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive()
    return raised[0] if raised else None


# ---------------------------------------------------------------------------------------------
# Threads, environment variables, SIGTERM, on the fake store.


def test_two_top_level_sessions_in_two_threads_share_the_settings_and_both_finish(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    config = fake_project.config()
    both_open = threading.Barrier(2, timeout=10)
    seen: dict[str, tuple[str | None, list[str]]] = {}
    handler = signal.getsignal(signal.SIGTERM)

    def work(name: str) -> None:
        with open_session(config, fake_store, name=name) as s:
            both_open.wait()
            seen[name] = (s.run_id, list(fake_store.stack()))
            s.log_metric("loss", 1.0)
            both_open.wait()

    threads = {name: threading.Thread(target=work, args=(name,)) for name in ("a", "b")}
    for thread in threads.values():
        thread.start()
    for thread in threads.values():
        thread.join(timeout=10)

    assert set(seen) == {"a", "b"}
    for name, (run_id, stack) in seen.items():
        assert stack == [run_id]  # each thread's own active run
        run = fake_store.run(run_id)
        assert (run.name, run.status, run.parent_id) == (name, RunStatus.FINISHED, None)
    experiment = fake_store.experiment_named(FAKE_PROJECT_NAME)
    assert experiment is not None
    assert {fake_store.run(run_id).experiment_id for run_id, _ in seen.values()} == {experiment.id}
    assert (
        fake_store.methods().count("use_store") == fake_store.methods().count("restore_store") == 1
    )
    assert fake_store.current_tracking_uri is None
    assert not any(name in os.environ for name in HTTP_SETTINGS)
    assert signal.getsignal(signal.SIGTERM) == handler  # only the main thread traps it


def test_a_session_needing_another_tracking_uri_is_refused_while_one_is_open(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    other = fake_project.config({"server.mlflow_tracking_uri": "http://other.invalid"})

    with open_session(fake_project.config(), fake_store, name="a") as a:
        error = in_thread(lambda: open_session(other, fake_store, name="b").__enter__())
        assert isinstance(error, RunError)
        assert "another trackcfg session is open" in str(error)
        assert "the tracking/registry URI" in str(error)
        assert fake_store.opened == [(FAKE_URI, None)]
        assert list(fake_store.runs) == [a.run_id]

    assert fake_store.run(a.run_id).status is RunStatus.FINISHED
    with open_session(other, fake_store, name="b") as b:  # once nothing is open, it may
        pass
    assert fake_store.opened[-1] == ("http://other.invalid", None)
    assert fake_store.run(b.run_id).status is RunStatus.FINISHED


@pytest.mark.parametrize("ending", ["success", "exception", "refused-while-entering"])
def test_credentials_and_http_settings_are_exported_only_during_the_session(
    fake_project: FakeProject, fake_store: FakeStore, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    (fake_project.root / "credentials.yml").write_text(
        "tracking_creds:\n  FAKE_SERVICE_TOKEN: s3cret\n  FAKE_SERVICE_USER: alice\n"
    )
    monkeypatch.delenv("FAKE_SERVICE_TOKEN", raising=False)
    monkeypatch.setenv("FAKE_SERVICE_USER", "before")
    overrides = {"tracking.experiment.create": ending != "refused-while-entering"}
    config = fake_project.config(overrides, extra_yaml="  credentials: tracking_creds\n")
    session = open_session(config, fake_store)
    during: dict[str, str | None] = {}

    def look() -> None:
        names = ("FAKE_SERVICE_TOKEN", "FAKE_SERVICE_USER", "MLFLOW_HTTP_REQUEST_TIMEOUT")
        during.update({name: os.environ.get(name) for name in names})

    if ending == "refused-while-entering":  # create: false, and the experiment is missing
        record = fake_store.record

        def look_at_lookup(method: str, *args: object) -> None:
            if method == "get_experiment":
                look()
            record(method, *args)

        monkeypatch.setattr(fake_store, "record", look_at_lookup)
        with pytest.raises(ExperimentError), session:
            pass
    else:
        with raises_if(ValueError("x") if ending == "exception" else None), session:
            look()
            if ending == "exception":
                raise ValueError("x")

    assert during == {
        "FAKE_SERVICE_TOKEN": "s3cret",
        "FAKE_SERVICE_USER": "alice",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    }
    assert "FAKE_SERVICE_TOKEN" not in os.environ
    assert os.environ["FAKE_SERVICE_USER"] == "before"
    assert not any(name in os.environ for name in HTTP_SETTINGS)


@pytest.mark.parametrize("order", ["a-first", "b-first"])
def test_the_sigterm_handler_is_given_back_whatever_order_sessions_end_in(
    fake_project: FakeProject, fake_store: FakeStore, previous_sigterm: RecordingHandler, order: str
) -> None:
    config = fake_project.config()
    a = open_session(config, fake_store, name="a")
    b = open_session(config, fake_store, name="b")  # top-level too: a child run of a's by nesting

    a.__enter__()
    b.__enter__()
    assert signal.getsignal(signal.SIGTERM) is not previous_sigterm  # the sessions' trap
    for session in (a, b) if order == "a-first" else (b, a):
        session.__exit__(None, None, None)

    assert previous_sigterm.received == []
    assert fake_store.run(b.run_id).parent_id == a.run_id
    assert fake_store.run(a.run_id).status is fake_store.run(b.run_id).status is RunStatus.FINISHED
    assert fake_store.stack() == []
    assert signal.getsignal(signal.SIGTERM) is previous_sigterm


def test_sigterm_runs_the_programs_handler_at_once_and_a_handled_one_finishes_the_runs(
    fake_project: FakeProject, fake_store: FakeStore, previous_sigterm: RecordingHandler
) -> None:
    session = open_session(fake_project.config(), fake_store)

    with session, session.child("step") as child:
        signal.raise_signal(signal.SIGTERM)
        assert previous_sigterm.received == [signal.SIGTERM]  # at the signal, in the block

    assert fake_store.run(session.run_id).status is RunStatus.FINISHED
    assert fake_store.run(child.run_id).status is RunStatus.FINISHED
    assert previous_sigterm.received == [signal.SIGTERM]  # once
    assert signal.getsignal(signal.SIGTERM) is previous_sigterm


def test_sigterm_handler_that_exits_ends_the_runs_killed(
    fake_project: FakeProject, fake_store: FakeStore, previous_sigterm: RecordingHandler
) -> None:
    """The program's handler ends the process (``sys.exit(0)``): the runs end KILLED, not
    FINISHED; where SIGTERM has no handler of the program's, ``Terminated`` does the same
    (test_session.py, with a real process)."""

    def exits(signum: int, frame: FrameType | None) -> None:
        previous_sigterm(signum, frame)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, exits)
    session = open_session(fake_project.config(), fake_store)

    with pytest.raises(SystemExit), session, session.child("step") as child:
        signal.raise_signal(signal.SIGTERM)

    assert fake_store.run(session.run_id).status is RunStatus.KILLED
    assert fake_store.run(child.run_id).status is RunStatus.KILLED
    assert previous_sigterm.received == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) is exits


def test_activate_makes_the_run_active_in_another_thread_only_for_the_block(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    stacks: list[list[str]] = []

    def worker(session: TrackingSession) -> None:
        with session.activate():
            stacks.append(list(fake_store.stack()))
        stacks.append(list(fake_store.stack()))

    with open_session(fake_project.config(), fake_store) as s:
        assert in_thread(lambda: worker(s)) is None
        assert fake_store.stack() == [s.run_id]

    assert stacks == [[s.run_id], []]
    assert fake_store.run(s.run_id).status is RunStatus.FINISHED


# ---------------------------------------------------------------------------------------------
# Metric keys are never merged in silence.


def test_metric_keys_that_become_one_series_are_refused_naming_both(project: Project) -> None:
    with TrackingSession(project.config(), name="m") as s:
        with pytest.raises(ConfigError) as raised:
            s.log_metrics({"a b!": 1, "a b?": 2})
        s.log_metrics({"ok": 3})

    message = str(raised.value)
    assert message.endswith(
        "metrics 'a b!' and 'a b?' both become the metric key 'a b_' (one series); "
        "rename one of them"
    )
    run = MlflowClient(tracking_uri=project.store_uri).get_run(s.run_id or "")
    assert run.data.metrics == {"ok": 3.0}  # nothing of the refused call was sent
    assert run.info.status == "FINISHED"


def test_a_renamed_metric_key_warns_once_and_a_later_key_joining_its_series_is_refused(
    project: Project, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trackcfg")
    with TrackingSession(project.config(), name="m") as s:
        for step in range(3):
            s.log_metrics({"a b!": float(step)}, step=step)
        with pytest.raises(ConfigError, match=r"'a b\?' becomes the metric key 'a b_'.*'a b!'"):
            s.log_metrics({"a b?": 9.0}, step=3)

    renames = [r for r in caplog.records if "not accepted by MLflow" in r.getMessage()]
    assert [r.getMessage() for r in renames] == [
        "metric key 'a b!' is not accepted by MLflow; logged as 'a b_'"
    ]
    history = MlflowClient(tracking_uri=project.store_uri).get_metric_history(
        s.run_id or "", "a b_"
    )
    assert sorted((m.step, m.value) for m in history) == [(0, 0.0), (1, 1.0), (2, 2.0)]


# ---------------------------------------------------------------------------------------------
# A stale MLFLOW_RUN_ID / TRACKCFG_PARENT_RUN_ID: RunError naming it, nothing created.


@pytest.mark.parametrize(
    ("variable", "nested", "role"),
    [
        ("MLFLOW_RUN_ID", True, "the parent of the session's run"),
        ("MLFLOW_RUN_ID", False, "the run the session logs into (tracking.run.nested: false)"),
        ("TRACKCFG_PARENT_RUN_ID", True, "the parent of the session's run"),
        ("TRACKCFG_PARENT_RUN_ID", False, "the parent of the session's run"),
    ],
)
def test_a_stale_run_id_in_the_environment_is_refused_naming_it_and_creates_nothing(
    project: Project, monkeypatch: pytest.MonkeyPatch, variable: str, nested: bool, role: str
) -> None:
    monkeypatch.setenv(variable, STALE_RUN)
    config = project.config(
        "tracking:\n  experiment: {name: fresh}\n", {"tracking.run.nested": nested}
    )
    before = experiment_names(project.store_uri)

    with pytest.raises(RunError) as raised, TrackingSession(config, name="worker"):
        pytest.fail("the block must not run")

    message = str(raised.value)
    assert message.startswith(f"{variable}='{STALE_RUN}' names {role}, but that run does not")
    assert f"unset {variable}" in message
    assert project.store_uri in message  # which store was looked in
    assert read_runs(project.store_uri) == []
    assert experiment_names(project.store_uri) == before  # not even the experiment


def test_a_stale_parent_run_id_over_http_is_refused_and_creates_nothing(
    mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    experiment = f"stale-parent-{time.monotonic_ns()}"
    config = Project(project_folder(tmp_path / "p", name=PROJECT_NAME)).config(
        f"server: {{mlflow_tracking_uri: '{mlflow_server}'}}\n"
        f"tracking: {{experiment: {{name: {experiment}}}}}\n"
    )
    monkeypatch.setenv("TRACKCFG_PARENT_RUN_ID", STALE_RUN)

    session = TrackingSession(config, name="worker")
    with pytest.raises(RunError, match="TRACKCFG_PARENT_RUN_ID") as raised, session:
        pytest.fail("the block must not run")

    assert mlflow_server in str(raised.value)
    assert MlflowClient(tracking_uri=mlflow_server).get_experiment_by_name(experiment) is None


# ---------------------------------------------------------------------------------------------
# A self-referencing argument is logged as Python prints it; the function runs.


def _cyclic() -> dict[str, Any]:
    looped: dict[str, Any] = {"depth": 4}
    looped["self"] = looped
    return looped


@pytest.mark.parametrize("flatten", [False, True])
def test_tracked_function_with_a_self_referencing_dict_runs_and_logs_it(
    project: Project, caplog: pytest.LogCaptureFixture, flatten: bool
) -> None:
    caplog.set_level(logging.WARNING, logger="trackcfg")
    config = project.config(f"tracking:\n  params:\n    dict_params: {{flatten: {flatten}}}\n")
    calls: list[int] = []

    @tracked(config=config)
    def train(model: dict[str, Any], lr: float = 0.1) -> str:
        calls.append(1)
        return "done"

    assert train(_cyclic()) == "done"

    assert calls == [1]
    (run,) = read_runs(project.store_uri)
    assert run.info.status == "FINISHED"
    if flatten:
        assert run.data.params == {"model.depth": "4", "model.self": "{...}", "lr": "0.1"}
    else:
        assert run.data.params == {"model": str(_cyclic()), "lr": "0.1"}
        assert run.data.params["model"] == "{'depth': 4, 'self': {...}}"
    assert "contains itself" in caplog.text


def test_flattened_session_params_with_a_cycle_log_it_as_python_prints_it(
    project: Project, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trackcfg")
    inner: dict[str, Any] = {"lr": 0.1}
    outer: dict[str, Any] = {"opt": inner, "name": "m"}
    inner["back"] = outer
    config = project.config("tracking:\n  params:\n    dict_params: {flatten: true}\n")

    with TrackingSession(config, name="s", params={"model": outer}) as s:
        pass

    params = MlflowClient(tracking_uri=project.store_uri).get_run(s.run_id or "").data.params
    assert params == {"model.opt.lr": "0.1", "model.opt.back": "{...}", "model.name": "m"}
    assert "param ['model']['opt']['back'] is ['model'] again" in caplog.text


def test_flatten_of_a_deeply_nested_mapping_raises_a_config_error_not_recursion(
    project: Project,
) -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(5000):
        node["k"] = {}
        node = node["k"]
    node["leaf"] = 1
    config = project.config("tracking:\n  params:\n    dict_params: {flatten: true}\n")

    session = TrackingSession(config, name="s", params={"deep": deep})
    with pytest.raises(ConfigError, match="MLflow accepts at most 250"), session:
        pass
    assert read_runs(project.store_uri) == []


# ---------------------------------------------------------------------------------------------
# Artifact paths and steps MLflow refuses: a RunError at the call, nothing written.


@pytest.mark.parametrize(
    ("call", "path", "problem"),
    [
        ("log_text", "../escape.txt", "goes out of the run's artifact folder"),
        ("log_text", "{abs}/escape.txt", "is absolute"),
        ("log_dict", "../escape.json", "goes out of the run's artifact folder"),
        ("log_dict", "a/./b.json", "is not in normal form"),
        ("log_artifact", "../up", "goes out of the run's artifact folder"),
        ("log_artifact", "{abs}", "is absolute"),
    ],
)
def test_an_artifact_path_outside_the_run_is_refused_at_the_call(
    project: Project, tmp_path: Path, call: str, path: str, problem: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    path = path.replace("{abs}", str(outside))
    source = tmp_path / "escape.txt"
    source.write_text("x")

    with TrackingSession(project.config(), name="a") as s:
        calls: dict[str, Callable[[], None]] = {
            "log_text": lambda: s.log_text("x", path),
            "log_dict": lambda: s.log_dict({"x": 1}, path),
            "log_artifact": lambda: s.log_artifact(source, path),
        }
        with pytest.raises(RunError) as raised:
            calls[call]()
        s.log_text("kept", "ok.txt")

    argument = "artifact_path" if call == "log_artifact" else "artifact_file"
    assert str(raised.value).startswith(f"{call}: {argument} {path!r} {problem}")
    assert "relative path such as" in str(raised.value)
    assert list(outside.iterdir()) == []
    artifacts = MlflowClient(tracking_uri=project.store_uri).list_artifacts(s.run_id or "")
    assert [a.path for a in artifacts] == ["ok.txt"]
    leaked = [p for p in (project.root / "mlruns").rglob("escape*") if p.is_file()]
    assert leaked == []


@pytest.mark.parametrize(
    ("step", "problem"),
    [
        (1.5, "step 1.5 (float) is not an integer"),
        ("3", "step '3' (str) is not an integer"),
        (True, "step True (bool) is not an integer"),
        (2**63, f"step {2**63} is outside the steps MLflow stores"),
        (-(2**63) - 1, f"step {-(2**63) - 1} is outside the steps MLflow stores"),
    ],
)
def test_a_step_mlflow_cannot_store_is_refused_at_the_call(
    project: Project, step: Any, problem: str
) -> None:
    with TrackingSession(project.config(), name="st") as s:
        with pytest.raises(RunError) as raised:
            s.log_metrics({"loss": 1.0}, step=step)
        s.log_metrics({"loss": 0.5}, step=2**63 - 1)
        s.log_metric("loss", 0.25, step=-(2**63))

    assert str(raised.value).startswith(f"log_metrics: {problem}")
    history = MlflowClient(tracking_uri=project.store_uri).get_metric_history(
        s.run_id or "", "loss"
    )
    assert sorted((m.step, m.value) for m in history) == [(-(2**63), 0.25), (2**63 - 1, 0.5)]


class _Refusing(http.server.BaseHTTPRequestHandler):
    """Answers every request with the status of its server (401 as MLflow's basic-auth app
    does, with a challenge, or 403), counting them."""

    def _refuse(self) -> None:
        server: Any = self.server
        server.seen += 1
        body = b"You are not authenticated." if server.status == 401 else b"Permission denied"
        self.send_response(server.status)
        if server.status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _refuse

    def log_message(self, format: str, *args: Any) -> None:  # no noise on stderr
        pass


@contextlib.contextmanager
def refusing_server(status: int) -> Iterator[Any]:
    server: Any = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    server.status, server.seen = status, 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize("status", [401, 403])
def test_credentials_refused_by_the_server_are_a_run_error_naming_the_setting(
    tmp_path: Path, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with refusing_server(status) as server:
        port = server.server_address[1]
        uri = f"http://alice:{SECRET}@127.0.0.1:{port}"
        config = Project(project_folder(tmp_path / "p", name=PROJECT_NAME)).config(
            f"server: {{mlflow_tracking_uri: '{uri}', request_timeout: 5, max_retries: 2}}\n"
        )
        started = time.monotonic()
        with pytest.raises(RunError) as raised, TrackingSession(config, name="r"):
            pytest.fail("the block must not run")
        elapsed = time.monotonic() - started
        seen = server.seen

    message = str(raised.value)
    shown = f"http://alice:***@127.0.0.1:{port}"
    if status == 401:
        assert message.startswith(f"credentials rejected by {shown} (HTTP 401")
    else:
        assert message.startswith(f"credentials refused by {shown} for this request (HTTP 403")
    assert "check server.credentials" in message
    assert seen == 1  # not retried: the answer will not change
    assert elapsed < 10
    assert SECRET not in printed(raised.value) + caplog.text


# ---------------------------------------------------------------------------------------------
# An unreachable server: the cause in one line, a refused connection at once.


def _unreachable(tmp_path: Path, uri: str, timeout: int = 10, retries: int = 3) -> TrackingConfig:
    return Project(project_folder(tmp_path / "p", name=PROJECT_NAME)).config(
        f"server: {{mlflow_tracking_uri: '{uri}', request_timeout: {timeout}, "
        f"max_retries: {retries}}}\n"
    )


def test_a_refused_connection_at_session_start_is_reported_at_once_with_its_cause(
    tmp_path: Path, refused_port: int
) -> None:
    """With the default budget (3 retries of 10 s), which used to take 10-35 s."""
    config = _unreachable(tmp_path, f"http://127.0.0.1:{refused_port}")
    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError) as raised, TrackingSession(config):
        pytest.fail("the block must not run")
    elapsed = time.monotonic() - started

    assert str(raised.value) == (
        f"tracking server http://127.0.0.1:{refused_port} refused the connection (nothing "
        f"listens on 127.0.0.1:{refused_port}); start the server, or fix the host and port in "
        "server.mlflow_tracking_uri"
    )
    assert elapsed < 3  # about a second on a loaded machine; the watchdog is generous
    assert isinstance(raised.value.__cause__, ConnectionRefusedError)
    assert len(printed(raised.value).splitlines()) < 40
    assert not (tmp_path / "p" / "mlruns").exists()


def test_a_host_name_that_does_not_resolve_is_named(tmp_path: Path) -> None:
    config = _unreachable(tmp_path, "http://no-such-host.invalid:5000")
    with pytest.raises(TrackingUnavailableError) as raised, TrackingSession(config):
        pytest.fail("the block must not run")

    assert str(raised.value).startswith(
        "the host name 'no-such-host.invalid' of tracking server "
        "http://no-such-host.invalid:5000 could not be resolved; fix the host"
    )


def test_a_server_that_never_answers_is_reported_as_timed_out_after_the_budget(
    tmp_path: Path, silent_uri: str
) -> None:
    config = _unreachable(tmp_path, silent_uri, timeout=1, retries=0)
    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError) as raised, TrackingSession(config):
        pytest.fail("the block must not run")

    assert time.monotonic() - started >= 1  # the configured timeout was waited for
    assert str(raised.value) == (
        f"tracking server {silent_uri} did not answer in time (timed out), through the "
        "session's budget of 0 retries of 1 s; check that it is running and not overloaded, "
        "or raise server.request_timeout / server.max_retries"
    )


@pytest.fixture
def plain_http_port() -> Iterator[int]:
    """A plain-HTTP server (it answers a TLS hello with an HTTP error page)."""
    with refusing_server(401) as server:
        yield server.server_address[1]


def test_https_to_a_plain_http_server_names_the_tls_handshake(
    tmp_path: Path, plain_http_port: int
) -> None:
    uri = f"https://127.0.0.1:{plain_http_port}"
    config = _unreachable(tmp_path, uri, timeout=2, retries=0)
    with pytest.raises(TrackingUnavailableError) as raised, TrackingSession(config):
        pytest.fail("the block must not run")

    assert str(raised.value).startswith(f"the TLS handshake with tracking server {uri} failed (")
    assert "check the scheme (http or https) of server.mlflow_tracking_uri" in str(raised.value)


SCRIPT = """
import sys
from trackcfg import TrackingSession, load_config
with TrackingSession(load_config(sys.argv[1]), name="script"):
    pass
"""


def test_a_script_on_a_refused_server_ends_with_a_short_traceback_and_the_cause(
    tmp_path: Path, refused_port: int
) -> None:
    uri = f"http://user:{SECRET}@127.0.0.1:{refused_port}"
    _unreachable(tmp_path, uri)
    done = run_python("-c", SCRIPT, str(tmp_path / "p" / "mlflow.yml"), timeout=120)

    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == (
        f"trackcfg.exceptions.TrackingUnavailableError: tracking server "
        f"http://user:***@127.0.0.1:{refused_port} refused the connection (nothing listens on "
        f"127.0.0.1:{refused_port}); start the server, or fix the host and port in "
        "server.mlflow_tracking_uri"
    )
    assert len(lines) < 40  # was 121 lines of MLflow's, urllib3's and requests' frames
    assert SECRET not in done.stderr + done.stdout


def test_trackcfg_check_on_a_refused_server_prints_no_traceback(
    tmp_path: Path, refused_port: int
) -> None:
    _unreachable(tmp_path, f"http://127.0.0.1:{refused_port}")
    done = run_python("-m", "trackcfg", "check", str(tmp_path / "p"), "--timeout", "5")

    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    assert "refused" in (done.stderr + done.stdout).lower()


# ---------------------------------------------------------------------------------------------
# The summary on a terminal.

SUMMARY_SCRIPT = """
    from trackcfg import TrackingSession, load_config, tracked

    @tracked(load_config("."))
    def trial(x: float) -> float:
        return x

    with TrackingSession(load_config("."), name="train", params={"lr": 0.1, "depth": 3}) as s:
        for step in range(3):
            s.log_metrics({"loss": 1.0 / (step + 1), "acc": 0.5 + step / 10}, step=step)
        s.log_metric("score", 0.75)
        with s.child("fold") as fold:
            fold.log_metric("inner", 1.0)
        trial(0.5)
    print("done")
"""


def run_on_terminal(cwd: Path, env: dict[str, str]) -> str:
    """SUMMARY_SCRIPT's stdout when stdout is a (pseudo-)terminal."""
    main, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SUMMARY_SCRIPT)],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=subprocess.DEVNULL,
    )
    os.close(secondary)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([main], [], [], 180)
            assert ready, "no output for 180 s"
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(main)
        process.wait(timeout=180)
    return b"".join(chunks).decode().replace("\r\n", "\n")


@pytest.fixture
def script_project(tmp_path: Path, migrated_sqlite_db: Path) -> Path:
    return project_folder(tmp_path / "proj", config="", store=migrated_sqlite_db)


def test_a_run_ends_with_its_summary_on_a_terminal(script_project: Path) -> None:
    output = run_on_terminal(script_project, subprocess_env())
    summary = [line for line in output.splitlines() if not line.startswith(("\N{RUNNER}", " "))]
    # One summary: the child and the tracked trial inside the session print none.
    assert summary == ["run 'train' FINISHED: 2 params, 3 metrics", "done"]
    assert "  loss   0.333333  (step 2)\n  acc    0.7  (step 2)\n  score  0.75\n" in output


@pytest.mark.parametrize("how", ["a pipe", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"])
def test_no_summary_in_a_pipe_or_when_mlflows_link_is_off(script_project: Path, how: str) -> None:
    env: dict[str, Any] = subprocess_env()
    if how == "a pipe":
        result = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(SUMMARY_SCRIPT)],
            cwd=script_project,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=True,
        )
        output = result.stdout
        assert "View run train" in output  # MLflow's link is there
    else:
        env["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        output = run_on_terminal(script_project, env)
    assert "done" in output
    assert "FINISHED" not in output
    assert "score" not in output
