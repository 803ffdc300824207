"""@tracked and the example scripts, on a real SQLite store in a temporary project."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import shutil
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from helpers import REPO, project_folder, read_runs, run_python, store_uri, subprocess_env
from mlflow import MlflowClient
from mlflow.entities import Run

from trackcfg import TrackingSession, load_config, tracked

CONFIG = "tracking:\n  experiment:\n    name: deco\n  disable_tracking:\n    pipelines: [skipped]\n"


@pytest.fixture
def project(tmp_path: Path, migrated_sqlite_db: Path) -> Path:
    """A project folder with an mlflow.yml; its store is <project>/mlruns, there already (a
    copy of a migrated one: a new SQLite store costs seconds of migrations in every test)."""
    return project_folder(tmp_path / "proj", config=CONFIG, store=migrated_sqlite_db)


@pytest.fixture
def storeless_project(tmp_path: Path) -> Path:
    """The same project with no store yet."""
    return project_folder(tmp_path / "proj", config=CONFIG)


def store(project: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=store_uri(project))


def runs(project: Path) -> list[Run]:
    return read_runs(store_uri(project), "deco", oldest_first=True)


def test_each_call_is_one_finished_run_with_bound_args_and_defaults(project: Path) -> None:
    @tracked(project / "mlflow.yml")
    def train(lr: float, epochs: int = 3, *, layers: tuple[int, ...] = (8, 4)) -> dict[str, float]:
        return {"lr": lr}

    assert train(0.1) == {"lr": 0.1}
    assert train(0.2, epochs=5) == {"lr": 0.2}

    found = runs(project)
    assert [r.info.status for r in found] == ["FINISHED", "FINISHED"]
    assert found[0].info.run_name.endswith("train")
    assert found[0].data.params == {"lr": "0.1", "epochs": "3", "layers": "(8, 4)"}
    assert found[1].data.params == {"lr": "0.2", "epochs": "5", "layers": "(8, 4)"}


def test_params_list_logs_only_named_arguments_and_none_logs_nothing(project: Path) -> None:
    @tracked(config=project / "mlflow.yml", params=["lr"])
    def only_lr(lr: float, secret_path: str = "/x") -> None:
        pass

    @tracked(config=project / "mlflow.yml", params=None)
    def nothing(lr: float) -> None:
        pass

    only_lr(0.5)
    nothing(0.5)
    found = runs(project)
    assert found[0].data.params == {"lr": "0.5"}
    assert found[1].data.params == {}


def test_method_leaves_self_out_and_is_named_by_qualname(project: Path) -> None:
    class Model:
        @tracked(project / "mlflow.yml")
        def fit(self, alpha: float) -> float:
            return alpha * 2

    assert Model().fit(1.5) == 3.0
    (run,) = runs(project)
    assert run.data.params == {"alpha": "1.5"}
    assert run.info.run_name == "Model.fit"


def test_name_and_run_name_override_the_function_name(project: Path) -> None:
    @tracked(project / "mlflow.yml", name="custom")
    def f() -> None:
        pass

    cfg = load_config(project / "mlflow.yml", overrides={"tracking.run.name": "from-config"})

    @tracked(config=cfg)
    def g() -> None:
        pass

    f()
    g()
    assert [r.info.run_name for r in runs(project)] == ["custom", "from-config"]


def test_async_function_is_tracked_and_returns_its_result(project: Path) -> None:
    @tracked(project / "mlflow.yml")
    async def fetch(n: int) -> int:
        await asyncio.sleep(0)
        active = mlflow.active_run()
        assert active is not None
        mlflow.log_metric("inside", n)
        return n + 1

    assert inspect.iscoroutinefunction(fetch)
    assert asyncio.run(fetch(4)) == 5
    (run,) = runs(project)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"n": "4"}
    assert run.data.metrics == {"inside": 4.0, "result": 5.0}  # the returned number


@pytest.mark.parametrize(
    ("returned", "metrics"),
    [
        (0.75, {"result": 0.75}),
        (3, {"result": 3.0}),
        (np.float32(0.5), {"result": 0.5}),
        (np.int64(7), {"result": 7.0}),
        ({"acc": 0.9, "loss": np.float64(0.25)}, {"acc": 0.9, "loss": 0.25}),
        (True, {}),
        (np.bool_(False), {}),
        ("0.9", {}),
        (None, {}),
        ([0.1, 0.2], {}),
        ({"acc": 0.9, "name": "ridge"}, {}),
        ({"acc": 0.9, "nested": {"loss": 0.2}}, {}),
        ({"acc": 0.9, "flag": True}, {}),
    ],
    ids=repr,
)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_returned_number_or_flat_mapping_of_numbers_is_logged_as_metrics(
    project: Path, returned: object, metrics: dict[str, float], kind: str
) -> None:
    if kind == "sync":

        @tracked(project / "mlflow.yml", params=None)
        def run() -> object:
            return returned

        assert run() is returned
    else:

        @tracked(project / "mlflow.yml", params=None)
        async def arun() -> object:
            return returned

        assert asyncio.run(arun()) is returned
    (found,) = runs(project)
    assert found.info.status == "FINISHED"
    assert found.data.metrics == metrics


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_log_result_false_logs_no_result(project: Path, kind: str) -> None:
    if kind == "sync":

        @tracked(project / "mlflow.yml", log_result=False)
        def run(x: float) -> float:
            return x

        assert run(0.5) == 0.5
    else:

        @tracked(project / "mlflow.yml", log_result=False)
        async def arun(x: float) -> float:
            return x

        assert asyncio.run(arun(0.5)) == 0.5
    (found,) = runs(project)
    assert found.data.params == {"x": "0.5"}
    assert found.data.metrics == {}


def test_a_result_mlflow_cannot_take_is_warned_and_the_call_returns(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two keys that become one metric key: the value is returned, the run FINISHED."""

    @tracked(project / "mlflow.yml", params=None)
    def run() -> dict[str, float]:
        return {"a b!": 1.0, "a b?": 2.0}

    assert run() == {"a b!": 1.0, "a b?": 2.0}
    (found,) = runs(project)
    assert found.info.status == "FINISHED"
    assert found.data.metrics == {}
    assert "session 'run': the returned value was not logged: " in caplog.text


def test_exception_propagates_unchanged_and_run_fails(project: Path) -> None:
    class Boom(Exception):
        pass

    error = Boom("exact")

    @tracked(project / "mlflow.yml")
    def explode(x: int) -> None:
        mlflow.log_metric("before", 1)
        raise error

    with pytest.raises(Boom) as info:
        explode(1)
    assert info.value is error
    (run,) = runs(project)
    assert run.info.status == "FAILED"
    assert run.data.params == {"x": "1"}
    assert run.data.metrics == {"before": 1.0}


def test_keyboard_interrupt_kills_the_run(project: Path) -> None:
    @tracked(project / "mlflow.yml")
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert [r.info.status for r in runs(project)] == ["KILLED"]


def test_calls_inside_a_session_are_child_runs(project: Path) -> None:
    @tracked(project / "mlflow.yml")
    def trial(lr: float) -> float:
        return lr

    with TrackingSession.from_yaml(project / "mlflow.yml", name="sweep") as parent:
        for lr in (0.1, 0.2, 0.3):
            trial(lr)

    found = runs(project)
    children = [r for r in found if r.info.run_id != parent.run_id]
    assert len(children) == 3
    assert {r.data.tags.get("mlflow.parentRunId") for r in children} == {parent.run_id}
    assert sorted(r.data.params["lr"] for r in children) == ["0.1", "0.2", "0.3"]
    assert all(r.info.status == "FINISHED" for r in found)
    assert mlflow.active_run() is None


def test_nested_false_logs_into_the_active_run_and_leaves_it_open(project: Path) -> None:
    cfg = load_config(project / "mlflow.yml", overrides={"tracking.run.nested": False})

    @tracked(config=cfg)
    def step(k: int) -> None:
        mlflow.log_metric("k", k)

    with TrackingSession.from_yaml(project / "mlflow.yml", name="outer") as outer:
        step(7)
        active = mlflow.active_run()
        assert active is not None
        assert outer.run_id is not None
        assert active.info.run_id == outer.run_id
        assert store(project).get_run(outer.run_id).info.status == "RUNNING"

    (run,) = runs(project)
    assert run.info.run_id == outer.run_id
    assert run.data.params == {"k": "7"}
    assert run.data.metrics == {"k": 7.0}
    assert run.info.status == "FINISHED"


def test_disable_tracking_matches_the_function_name(storeless_project: Path) -> None:
    project = storeless_project
    calls: list[int] = []

    @tracked(project / "mlflow.yml")
    def skipped(x: int) -> int:
        calls.append(x)
        assert mlflow.active_run() is None
        return x

    assert skipped(3) == 3
    assert calls == [3]
    assert not (project / "mlruns" / "mlflow.db").exists()


def test_objects_without_text_form_are_logged_as_type_name_with_warning(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Opaque:
        __slots__ = ()

    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no")

    @tracked(project / "mlflow.yml")
    def f(model: Any, other: Any, fine: Path) -> None:
        pass

    with caplog.at_level(logging.WARNING, logger="trackcfg"):
        f(Opaque(), Broken(), Path("/data/x.csv"))
    (run,) = runs(project)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"model": "Opaque", "other": "Broken", "fine": "/data/x.csv"}
    assert "'model'" in caplog.text
    assert "'other'" in caplog.text


def test_signature_docstring_and_name_are_kept(project: Path) -> None:
    def original(a: int, b: str = "x") -> str:
        """Doc of original."""
        return b * a

    wrapped = tracked(project / "mlflow.yml")(original)
    assert inspect.signature(wrapped) == inspect.signature(original)
    assert wrapped.__doc__ == "Doc of original."
    assert wrapped.__name__ == "original"
    assert wrapped.__wrapped__ is original  # type: ignore[attr-defined]


def test_bare_decorator_discovers_config_from_the_defining_file_not_the_cwd(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = project / "pipeline.py"
    module.write_text(
        textwrap.dedent(
            """
            from trackcfg import tracked

            @tracked
            def bare(n: int) -> int:
                return n * 2
            """
        )
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.syspath_prepend(str(project))
    import importlib

    mod = importlib.import_module("pipeline")
    try:
        assert mod.bare(21) == 42
    finally:
        sys.modules.pop("pipeline", None)
    (run,) = runs(project)
    assert run.data.params == {"n": "21"}
    assert not (elsewhere / "mlruns").exists()


def test_decorating_reads_no_file_and_imports_no_mlflow(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from trackcfg import tracked

        @tracked({str(tmp_path / "missing.yml")!r})
        def f(x): return x

        @tracked
        def g(x): return x

        assert "mlflow" not in sys.modules, "decorating imported mlflow"
        try:
            f(1)
        except ValueError as exc:
            print("ERR", exc)
        """
    )
    done = run_python("-c", code)
    assert done.returncode == 0, done.stderr
    assert "ERR" in done.stdout
    assert "missing.yml" in done.stdout


# ----------------------------------------------------------------------------- examples


def _copy_examples(tmp_path: Path) -> Path:
    root = project_folder(tmp_path / "examples-project", name="examples-project")
    shutil.copytree(REPO / "examples", root / "examples")
    return root


def _run_example(root: Path, script: str, cwd: Path) -> list[str]:
    # Only what the example prints: not the "View run ... with: mlflow ui" lines of its runs.
    quiet = subprocess_env(MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true")
    done = run_python(str(root / "examples" / script), cwd=cwd, env=quiet, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.split()


def _example_store(root: Path) -> Callable[[str], Run]:
    return MlflowClient(tracking_uri=store_uri(root)).get_run


def test_script_quickstart_example_creates_a_finished_run(tmp_path: Path) -> None:
    root = _copy_examples(tmp_path)
    run_id = _run_example(root, "script_quickstart.py", cwd=tmp_path)[-1]
    run = _example_store(root)(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "script_quickstart"
    assert run.data.params == {"model.kind": "ridge", "model.alpha": "0.5", "folds": "3"}
    assert run.data.tags["stage"] == "quickstart"
    assert set(run.data.metrics) == {"rmse"}


def test_decorated_sweep_example_makes_one_child_run_per_trial(tmp_path: Path) -> None:
    root = _copy_examples(tmp_path)
    lines = _run_example(root, "decorated_sweep.py", cwd=tmp_path)
    parent_id, trial_ids = lines[0], lines[1::2]
    get_run = _example_store(root)
    parent = get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert "best_score" in parent.data.metrics
    assert len(trial_ids) == 6
    for trial_id in trial_ids:
        child = get_run(trial_id)
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent_id
        assert set(child.data.params) == {"lr", "depth"}
        assert "score" in child.data.metrics
        assert child.data.metrics["result"] == child.data.metrics["score"]  # what trial returned


def test_a_sweep_in_a_thread_pool_finishes_every_run(mlflow_server: str, tmp_path: Path) -> None:
    """Tracked calls running at once in threads: one FINISHED run each, with its own params
    and metrics, and MLflow's process-wide state given back after the last one."""
    from concurrent.futures import ThreadPoolExecutor

    (tmp_path / "pyproject.toml").write_text("")
    config = load_config(
        cwd=tmp_path,
        overrides={"server.mlflow_tracking_uri": mlflow_server, "tracking.experiment.name": "pool"},
    )

    @tracked(config)
    def train(lr: float) -> str:
        mlflow.log_metric("loss", 1.0 - lr)  # plain MLflow: this thread's active run
        active = mlflow.active_run()
        assert active is not None
        return str(active.info.run_id)

    env_before = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    with ThreadPoolExecutor(max_workers=4) as pool:
        run_ids = list(pool.map(train, [i / 10 for i in range(8)]))

    client = MlflowClient(mlflow_server)
    runs = [client.get_run(run_id) for run_id in run_ids]
    assert len(set(run_ids)) == 8
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert sorted((run.data.params["lr"], run.data.metrics["loss"]) for run in runs) == [
        (str(i / 10), 1.0 - i / 10) for i in range(8)
    ]
    assert {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")} == env_before
    assert mlflow.get_tracking_uri() != mlflow_server
