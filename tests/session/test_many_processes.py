"""Many processes and distributed ranks, on real stores: an ``mlflow server`` on PostgreSQL,
one SQLite file shared by processes, and S3 artifacts on ``moto_server``.

The worker processes run ``WORKER`` below, a plain user script: it loads the project's
``mlflow.yml`` (which sets no tracking URI) and opens sessions; ``child_env()`` is all the
parent hands over.  Everything asserted is read back from the store.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from helpers import copy_store, project_folder, read_runs, store_uri, subprocess_env
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

from trackcfg import TrackingConfig, TrackingSession, load_config
from trackcfg._mlflow import MlflowBackend
from trackcfg.exceptions import TrackingUnavailableError

if TYPE_CHECKING:
    from conftest import MotoS3, PostgresStore

EXPERIMENT = "scale"

# A worker: ``python -c WORKER <mlflow.yml> <worker> <children> <steps> <metrics> [<barrier>]``.
# Each child session logs params up front and ``steps`` x ``metrics`` metric points through
# ``log_metrics``, one call per step; the run ids go to stdout (``RUN <id>`` lines).  With a
# barrier folder, the worker imports everything, says it is ready and waits for ``go``, so
# that all workers open their first session at the same moment.
WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import mlflow  # imported before the barrier: the sessions then start together
    import trackcfg._mlflow
    from trackcfg import TrackingSession, load_config

    path, worker, children, steps, metrics = sys.argv[1], *map(int, sys.argv[2:6])
    if len(sys.argv) > 6:
        barrier = Path(sys.argv[6])
        (barrier / f"ready-{worker}").touch()
        while not (barrier / "go").exists():
            time.sleep(0.01)
    config = load_config(path)
    for child in range(children):
        params = {"worker": worker, "child": child, "seed": worker * 1000 + child}
        with TrackingSession(config, name=f"w{worker}-c{child}", params=params) as session:
            for step in range(steps):
                session.log_metrics(
                    {f"m{k}": worker * 1e6 + child * 1e3 + k * 100 + step for k in range(metrics)},
                    step=step,
                )
        print("RUN", session.run_id, flush=True)
    """
)


def expected_points(worker: int, child: int, metric: int, steps: int) -> list[tuple[int, float]]:
    return [(step, worker * 1e6 + child * 1e3 + metric * 100 + step) for step in range(steps)]


def make_project(root: Path, yaml: str = "") -> Path:
    """A project whose ``mlflow.yml`` names the experiment and sets no tracking URI."""
    text = f"tracking:\n  experiment:\n    name: {EXPERIMENT}\n{yaml}"
    return project_folder(root, name="scale-project", config=text) / "mlflow.yml"


def run_workers(
    config: Path,
    envs: list[dict[str, str]],
    *,
    children: int,
    steps: int,
    metrics: int,
    barrier: Path | None = None,
    timeout: float = 420,
) -> list[list[str]]:
    """Run one worker per environment in parallel; assert each exits 0 with a clean stderr;
    return the run ids each printed."""
    processes = []
    for worker, env in enumerate(envs):
        args = [str(config), str(worker), str(children), str(steps), str(metrics)]
        args += [str(barrier)] if barrier is not None else []
        processes.append(
            subprocess.Popen(
                [sys.executable, "-c", WORKER, *args],
                env=env,
                cwd=config.parent,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    if barrier is not None:
        deadline = time.monotonic() + timeout
        while len(list(barrier.glob("ready-*"))) < len(envs):
            assert all(p.poll() is None for p in processes), "a worker died before the barrier"
            assert time.monotonic() < deadline, "workers never got ready"
            time.sleep(0.05)
        (barrier / "go").touch()
    outputs = []
    deadline = time.monotonic() + timeout
    try:
        for worker, process in enumerate(processes):
            out, err = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert process.returncode == 0, f"worker {worker} exited {process.returncode}:\n{err}"
            problems = [
                line
                for line in err.splitlines()
                if any(word in line for word in ("Traceback", "Error", "WARNING", "locked"))
            ]
            assert problems == [], f"worker {worker} stderr:\n{err}"
            outputs.append(
                [line.split()[1] for line in out.splitlines() if line.startswith("RUN ")]
            )
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return outputs


def assert_children(
    client: MlflowClient,
    parent_id: str,
    printed: list[list[str]],
    *,
    children: int,
    steps: int,
    metrics: int,
) -> None:
    """Every child run is FINISHED under ``parent_id`` with all its params and points."""
    experiment_id = client.get_run(parent_id).info.experiment_id
    found: list[Run] = list(
        client.search_runs(
            [experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
            max_results=10_000,
        )
    )
    workers = len(printed)
    assert len(found) == workers * children
    assert {r.info.run_id for r in found} == {run_id for ids in printed for run_id in ids}
    by_name = {r.info.run_name: r for r in found}
    for worker in range(workers):
        for child in range(children):
            run = by_name[f"w{worker}-c{child}"]
            assert run.info.status == "FINISHED"
            assert run.data.tags["mlflow.parentRunId"] == parent_id
            assert run.data.params == {
                "worker": str(worker),
                "child": str(child),
                "seed": str(worker * 1000 + child),
            }
            assert set(run.data.metrics) == {f"m{k}" for k in range(metrics)}
            for k in range(metrics):
                history = client.get_metric_history(run.info.run_id, f"m{k}")
                points = sorted((m.step, m.value) for m in history)
                assert points == expected_points(worker, child, k, steps)


# ---------------------------------------------------------------------------------------------
# The same contract on one SQLite file shared by the processes.

SQLITE_WORKERS, SQLITE_CHILDREN, SQLITE_STEPS, SQLITE_METRICS = 4, 8, 5, 20


@pytest.fixture
def sqlite_project(tmp_path: Path, migrated_sqlite_db: Path) -> Path:
    """A project whose store folder ``mlruns`` holds an existing (migrated) SQLite store."""
    config = make_project(tmp_path / "proj", "server:\n  mlflow_tracking_uri: mlruns\n")
    copy_store(migrated_sqlite_db, config.parent / "mlruns")
    return config


def test_workers_sharing_one_sqlite_file_lose_nothing(sqlite_project: Path) -> None:
    """SQLite serializes writers (MLflow waits up to 20 s for the lock): slow, but complete."""
    with TrackingSession(load_config(sqlite_project), name="sweep") as parent:
        envs = [subprocess_env() | parent.child_env() for _ in range(SQLITE_WORKERS)]
        assert envs[0]["MLFLOW_TRACKING_URI"] == parent.tracking_uri
        printed = run_workers(
            sqlite_project,
            envs,
            children=SQLITE_CHILDREN,
            steps=SQLITE_STEPS,
            metrics=SQLITE_METRICS,
        )
    assert parent.run_id is not None
    client = MlflowClient(tracking_uri=parent.tracking_uri)
    assert client.get_run(parent.run_id).info.status == "FINISHED"
    assert_children(
        client,
        parent.run_id,
        printed,
        children=SQLITE_CHILDREN,
        steps=SQLITE_STEPS,
        metrics=SQLITE_METRICS,
    )


def test_processes_starting_at_once_on_a_new_sqlite_store_all_succeed(tmp_path: Path) -> None:
    """MLflow creates a new store's tables in every process that finds them missing; at once,
    they collide ("table ... already exists").  trackcfg serializes the store's creation."""
    config = make_project(tmp_path / "proj", "server:\n  mlflow_tracking_uri: mlruns\n")
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    printed = run_workers(
        config, [subprocess_env()] * 3, children=1, steps=1, metrics=1, barrier=barrier
    )
    client = MlflowClient(tracking_uri=store_uri(config.parent))
    runs = [client.get_run(ids[0]) for ids in printed]
    assert [r.info.status for r in runs] == ["FINISHED"] * 3
    assert len({r.info.experiment_id for r in runs}) == 1


@pytest.mark.skipif(sys.version_info < (3, 11), reason="sqlite3 error codes need Python 3.11")
def test_a_sqlite_store_locked_past_mlflows_wait_raises_a_clear_error(
    tmp_path: Path, migrated_sqlite_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MLflow's 20-s wait for a locked SQLite file, the error says to use a server.  The
    lock error is real (another connection holds the file, SQLITE_BUSY) and reaches the
    backend wrapped as MLflow wraps it; only the 20-s wait is skipped."""
    locked = tmp_path / "locked.db"
    holder = sqlite3.connect(locked, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")

    def write_to_the_locked_file(*args: Any, **kwargs: Any) -> Any:
        writer = sqlite3.connect(locked, timeout=0)
        try:
            writer.execute("INSERT INTO t VALUES (1)")
        except sqlite3.OperationalError as exc:
            raise MlflowException(str(exc), error_code=TEMPORARILY_UNAVAILABLE) from exc
        finally:
            writer.close()

    store = tmp_path / "store" / "mlflow.db"
    store.parent.mkdir()
    shutil.copyfile(migrated_sqlite_db, store)
    backend = MlflowBackend(f"sqlite:///{store}")
    monkeypatch.setattr(backend._client, "get_experiment_by_name", write_to_the_locked_file)
    try:
        with pytest.raises(TrackingUnavailableError) as caught:
            backend.get_experiment("anything")
    finally:
        holder.close()
    assert str(store) in str(caught.value)
    assert "tracking server" in str(caught.value)
    assert isinstance(caught.value.__cause__, MlflowException)


# ---------------------------------------------------------------------------------------------
# TRACKCFG_PARENT_RUN_ID precedence, in one process.


@pytest.fixture
def store_project(sqlite_project: Path) -> TrackingConfig:
    return load_config(sqlite_project)


def _finished_run(config: TrackingConfig, name: str) -> str:
    with TrackingSession(config, name=name) as s:
        pass
    assert s.run_id is not None
    return s.run_id


@pytest.mark.parametrize("nested", [True, False])
def test_parent_run_id_beats_a_stale_mlflow_run_id(
    sqlite_project: Path, monkeypatch: pytest.MonkeyPatch, nested: bool
) -> None:
    """Even with ``run.nested: false``: a worker's session is always a child of its parent."""
    config = load_config(sqlite_project, overrides={"tracking.run.nested": nested})
    parent, stale = _finished_run(config, "parent"), _finished_run(config, "stale")
    monkeypatch.setenv("TRACKCFG_PARENT_RUN_ID", parent)
    monkeypatch.setenv("MLFLOW_RUN_ID", stale)

    with TrackingSession(config, name="worker") as s:
        s.log_metrics({"loss": 1.0})

    client = MlflowClient(tracking_uri=s.tracking_uri)
    assert s.run_id not in (parent, stale)
    run = client.get_run(s.run_id or "")
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.info.status == "FINISHED"
    assert client.get_run(stale).data.metrics == {}
    assert client.get_run(stale).info.status == "FINISHED"
    assert os.environ["MLFLOW_RUN_ID"] == stale
    assert os.environ["TRACKCFG_PARENT_RUN_ID"] == parent


def test_a_worker_child_lands_in_the_parents_experiment_whatever_its_config_names(
    sqlite_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent_config = load_config(sqlite_project, overrides={"tracking.experiment.name": "sweep"})
    worker_config = load_config(sqlite_project, overrides={"tracking.experiment.name": "other"})
    with TrackingSession(parent_config, name="parent") as parent:
        handed_to_worker = parent.child_env()
    for key, value in handed_to_worker.items():
        monkeypatch.setenv(key, value)
    with TrackingSession(worker_config, name="worker") as worker:
        pass

    client = MlflowClient(tracking_uri=worker.tracking_uri)
    run = client.get_run(worker.run_id or "")
    assert run.info.experiment_id == parent.experiment_id
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert client.get_experiment_by_name("other") is None, "no lookup/creation of the config's"


def test_a_stray_mlflow_experiment_id_alone_changes_nothing(
    store_project: TrackingConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "0")
    with TrackingSession(store_project, name="plain") as s:
        pass
    experiment = MlflowClient(tracking_uri=s.tracking_uri).get_experiment(s.experiment_id or "")
    assert experiment.name == s.experiment_name
    assert s.experiment_id != "0"


def test_an_active_run_in_the_process_beats_the_parent_run_id(
    store_project: TrackingConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRACKCFG_PARENT_RUN_ID", _finished_run(store_project, "elsewhere"))
    with TrackingSession(store_project, name="outer") as outer, outer.child("inner") as inner:
        pass
    run = MlflowClient(tracking_uri=inner.tracking_uri).get_run(inner.run_id or "")
    assert run.data.tags["mlflow.parentRunId"] == outer.run_id


def test_child_env_of_a_disabled_session_keeps_workers_quiet(
    store_project: TrackingConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRACKCFG_DISABLE", "1")
    with TrackingSession(store_project, name="off") as s:
        assert s.child_env() == {"TRACKCFG_DISABLE": "1"}


# ---------------------------------------------------------------------------------------------
# Rank policy.


def _store_runs(config: TrackingConfig) -> list[Run]:
    root = config.project_root
    assert root is not None
    return read_runs(store_uri(root), EXPERIMENT)


@pytest.mark.parametrize("variable", ["RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK"])
def test_a_session_on_a_nonzero_rank_is_a_no_op(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    config = load_config(make_project(tmp_path / "proj"))
    monkeypatch.setenv(variable, "1")
    with TrackingSession(config, name="train", params={"lr": 0.1}) as s:
        s.log_metrics({"loss": 0.5})
        with s.child("trial") as c:
            assert c.enabled is False
        assert s.child_env() == {"TRACKCFG_DISABLE": "1"}
    assert s.enabled is False
    assert s.run_id is None
    assert not (tmp_path / "proj" / "mlruns").exists()


def test_rank_zero_logs_normally_and_rank_comes_from_the_first_variable_set(
    store_project: TrackingConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("SLURM_PROCID", "3")  # RANK is read first
    with TrackingSession(store_project, name="train") as s:
        s.log_metrics({"loss": 0.5})
    assert s.enabled is True
    [run] = _store_runs(store_project)
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"loss": 0.5}
    assert "trackcfg.rank" not in run.data.tags


def test_ranks_all_logs_one_run_per_rank_tagged_with_it(
    sqlite_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(sqlite_project, overrides={"tracking.run.ranks": "all"})
    for rank in range(3):
        monkeypatch.setenv("SLURM_PROCID", str(rank))
        with TrackingSession(config, name=f"train-{rank}") as s:
            s.log_metrics({"loss": float(rank)})
            assert s.enabled is True

    runs = {r.data.tags["trackcfg.rank"]: r for r in _store_runs(config)}
    assert sorted(runs) == ["0", "1", "2"]
    for tag, run in runs.items():
        assert run.info.status == "FINISHED"
        assert run.data.metrics == {"loss": float(tag)}


def test_an_invalid_rank_is_ignored_with_a_warning(
    store_project: TrackingConfig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("RANK", "first")
    monkeypatch.setenv("PMI_RANK", "2")
    with caplog.at_level("WARNING", logger="trackcfg"):
        session = TrackingSession(store_project, name="train")
        assert session.enabled is False  # PMI_RANK=2 decides
    assert "RANK" in caplog.text
    assert "'first'" in caplog.text


# ---------------------------------------------------------------------------------------------
# S3 artifacts through credentials.yml only.

S3_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL")


def test_artifacts_land_in_s3_with_credentials_from_credentials_yml_only(
    moto_s3: MotoS3,
    tmp_path: Path,
    migrated_sqlite_db: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [*S3_VARIABLES, "AWS_DEFAULT_REGION", "AWS_PROFILE"]:
        monkeypatch.delenv(name, raising=False)
    # No credentials from the developer's files either: only credentials.yml may provide them.
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    config_file = make_project(
        tmp_path / "proj",
        textwrap.dedent(
            f"""\
                create_experiment_kwargs:
                  artifact_location: s3://{moto_s3.bucket}/experiments/scale
            server:
              mlflow_tracking_uri: mlruns
              credentials: s3_store
            """
        ),
    )
    (config_file.parent / "credentials.yml").write_text(
        textwrap.dedent(
            f"""\
            s3_store:
              AWS_ACCESS_KEY_ID: {moto_s3.access_key_id}
              AWS_SECRET_ACCESS_KEY: {moto_s3.secret_access_key}
              AWS_DEFAULT_REGION: {moto_s3.region}
              MLFLOW_S3_ENDPOINT_URL: {moto_s3.endpoint_url}
            """
        )
    )
    (config_file.parent / "mlruns").mkdir()
    shutil.copyfile(migrated_sqlite_db, config_file.parent / "mlruns" / "mlflow.db")
    model = tmp_path / "model.bin"
    model.write_bytes(b"\x00weights\xff")
    environ_before = dict(os.environ)

    with TrackingSession.from_yaml(config_file, name="train") as s:
        for name in S3_VARIABLES:
            assert name in os.environ
        s.log_artifact(model, artifact_path="models")
        s.log_text("hello s3", "notes/readme.txt")

    assert dict(os.environ) == environ_before
    prefix = f"experiments/scale/{s.run_id}/artifacts/"
    listed = moto_s3.client().list_objects_v2(Bucket=moto_s3.bucket, Prefix=prefix)
    keys = sorted(obj["Key"][len(prefix) :] for obj in listed.get("Contents", []))
    assert keys == ["models/model.bin", "notes/readme.txt"]
    body: Any = moto_s3.client().get_object(Bucket=moto_s3.bucket, Key=prefix + "models/model.bin")
    assert body["Body"].read() == b"\x00weights\xff"
    run = MlflowClient(tracking_uri=s.tracking_uri).get_run(s.run_id or "")
    assert run.info.artifact_uri == f"s3://{moto_s3.bucket}/{prefix.rstrip('/')}"
    assert run.info.status == "FINISHED"


# ---------------------------------------------------------------------------------------------
# The cross-process contract on the PostgreSQL-backed server (last in the module: the server
# starts at the first test, its start overlaps the tests above).

PG_WORKERS, PG_CHILDREN, PG_STEPS, PG_METRICS = 8, 25, 5, 20


def test_eight_workers_log_200_complete_child_runs_on_the_postgres_server(
    pg_mlflow_server: str, postgres_database: PostgresStore, tmp_path: Path
) -> None:
    """8 processes x 25 child sessions x (3 params + 20 metrics x 5 steps): nothing lost.
    Half the workers also inherit a stale ``MLFLOW_RUN_ID``: ``TRACKCFG_PARENT_RUN_ID`` wins."""
    config_file = make_project(tmp_path / "proj")
    client = MlflowClient(tracking_uri=pg_mlflow_server)
    config = load_config(config_file, overrides={"server.mlflow_tracking_uri": pg_mlflow_server})

    with TrackingSession(config, name="sweep", params={"workers": PG_WORKERS}) as parent:
        stale = client.create_run(parent.experiment_id or "", run_name="stale").info.run_id
        client.set_terminated(stale, "FINISHED")
        shared = parent.child_env()
        assert shared == {
            "MLFLOW_TRACKING_URI": pg_mlflow_server,
            "TRACKCFG_PARENT_RUN_ID": parent.run_id,
            "MLFLOW_EXPERIMENT_ID": parent.experiment_id,
        }
        envs = [
            subprocess_env() | shared | ({"MLFLOW_RUN_ID": stale} if w % 2 == 0 else {})
            for w in range(PG_WORKERS)
        ]
        printed = run_workers(
            config_file, envs, children=PG_CHILDREN, steps=PG_STEPS, metrics=PG_METRICS
        )
    assert parent.run_id is not None

    # Read back through the database itself: 2,000 metric histories cost seconds, not minutes.
    store = MlflowClient(tracking_uri=postgres_database.store_uri)
    assert store.get_run(parent.run_id).info.status == "FINISHED"
    assert_children(
        store, parent.run_id, printed, children=PG_CHILDREN, steps=PG_STEPS, metrics=PG_METRICS
    )
    stale_run = store.get_run(stale)
    assert stale_run.info.status == "FINISHED"
    assert stale_run.data.metrics == {}
    under_stale = store.search_runs(
        [parent.experiment_id or ""], filter_string=f"tags.`mlflow.parentRunId` = '{stale}'"
    )
    assert list(under_stale) == []
