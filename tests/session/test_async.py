"""Sessions that run at once in one thread: asyncio tasks, and sessions that end out of order.

MLflow keeps its active-run stack per thread, and asyncio tasks share their thread: every
test here checks, on a real SQLite store, that each session logs into, nests under and ends
its own run only, and that the process is given back as it was (tracking URI, environment,
SIGTERM handler, MLflow's active-run stack), with no store created in the current folder.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from helpers import project_folder, read_runs, store_uri
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.tracking import _tracking_service
from mlflow.tracking import fluent as mlflow_fluent

from trackcfg import TrackingConfig, TrackingSession, load_config, tracked

TASKS = 8
fluent: Any = mlflow_fluent
tracking_utils: Any = _tracking_service.utils


@pytest.fixture
def project(tmp_path: Path, migrated_sqlite_db: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project in ``tmp_path/proj`` with its store; the current folder is ``tmp_path``,
    where no store must appear."""
    root = project_folder(
        tmp_path / "proj",
        name="concurrent",
        config="tracking:\n  experiment:\n    name: concurrent\n",
        store=migrated_sqlite_db,
    )
    monkeypatch.chdir(tmp_path)
    return root


@pytest.fixture
def config(project: Path) -> TrackingConfig:
    return load_config(project / "mlflow.yml")


@pytest.fixture
def process_state(tmp_path: Path) -> Iterator[None]:
    """What the process looks like before the test; checked again after it."""
    handler = signal.getsignal(signal.SIGTERM)
    stack = fluent._active_run_stack
    env = {k: v for k, v in os.environ.items() if k.startswith(("MLFLOW_", "TRACKCFG_"))}
    yield
    assert signal.getsignal(signal.SIGTERM) is handler
    assert fluent._active_run_stack is stack, "MLflow's active-run stack was not given back"
    assert mlflow.active_run() is None
    assert tracking_utils._tracking_uri is None
    assert {k: v for k, v in os.environ.items() if k.startswith(("MLFLOW_", "TRACKCFG_"))} == env
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proj"], "a store in the cwd"


def runs_of(project: Path) -> list[Run]:
    return read_runs(store_uri(project), "concurrent", oldest_first=True)


def points(project: Path, run: Run, key: str) -> list[tuple[int, float]]:
    client = MlflowClient(tracking_uri=store_uri(project))
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


class Gate:
    """Lets the tasks through a point only once all of them reached it, so that every
    session is open while every other one logs, and they end in the order entered (the
    first to enter ends first: not the order a stack unwinds in)."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self.opened = asyncio.Event()

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived == self.parties:
            self.opened.set()
        await self.opened.wait()


def test_gathered_tracked_coroutines_each_log_into_their_own_finished_run(
    project: Path, config: TrackingConfig, process_state: None
) -> None:
    entered, logged = Gate(TASKS), Gate(TASKS)
    seen: dict[int, str] = {}

    @tracked(config=config)
    async def trial(index: int) -> int:
        await entered.wait()  # every session is open
        active = mlflow.active_run()
        assert active is not None
        seen[index] = active.info.run_id
        for step in range(3):
            mlflow.log_metric("plain", index * 10 + step, step=step)
            await asyncio.sleep(0)  # the others log in between
        await logged.wait()
        return index

    async def main() -> list[int]:
        return await asyncio.gather(*(trial(i) for i in range(TASKS)))

    assert asyncio.run(main()) == list(range(TASKS))

    runs = runs_of(project)
    assert len(runs) == TASKS
    by_index = {int(run.data.params["index"]): run for run in runs}
    assert sorted(by_index) == list(range(TASKS))
    for index, run in by_index.items():
        assert run.info.status == "FINISHED"
        assert run.info.run_id == seen[index]
        assert "mlflow.parentRunId" not in run.data.tags  # independent runs, no chain
        assert points(project, run, "plain") == [(s, index * 10.0 + s) for s in range(3)]


def test_sessions_in_tasks_log_their_own_params_and_points(
    project: Path, config: TrackingConfig, process_state: None
) -> None:
    entered = Gate(TASKS)

    async def worker(index: int) -> str:
        with TrackingSession(config, name=f"worker-{index}", params={"index": index}) as s:
            await entered.wait()
            for step in range(3):
                s.log_metrics({"loss": index + step / 10}, step=step)
                mlflow.log_metric("plain", index, step=step)
                await asyncio.sleep(0)
            assert s.run_id is not None
            return s.run_id

    async def main() -> list[str]:
        return await asyncio.gather(*(worker(i) for i in range(TASKS)))

    ids = asyncio.run(main())

    runs = {run.info.run_id: run for run in runs_of(project)}
    assert sorted(runs) == sorted(ids)
    for index, run_id in enumerate(ids):
        run = runs[run_id]
        assert run.info.run_name == f"worker-{index}"
        assert run.info.status == "FINISHED"
        assert run.data.params == {"index": str(index)}
        assert points(project, run, "loss") == [(s, index + s / 10) for s in range(3)]
        assert points(project, run, "plain") == [(s, float(index)) for s in range(3)]


def test_tasks_inside_a_session_nest_under_its_run_and_plain_calls_land_in_it(
    project: Path, config: TrackingConfig, process_state: None
) -> None:
    entered = Gate(TASKS)

    @tracked(config=config)
    async def trial(index: int) -> None:
        await entered.wait()
        mlflow.log_metric("trial", index)

    async def untracked(index: int) -> None:
        await asyncio.sleep(0)
        mlflow.log_metric("outer", index, step=index)  # no session of its own: the sweep's

    async def main() -> str:
        with TrackingSession(config, name="sweep") as sweep:
            await asyncio.gather(
                *(trial(i) for i in range(TASKS)), *(untracked(i) for i in range(2))
            )
            mlflow.log_metric("outer", 99, step=99)
            assert sweep.run_id is not None
            return sweep.run_id

    sweep_id = asyncio.run(main())

    runs = runs_of(project)
    (sweep,) = [run for run in runs if run.info.run_id == sweep_id]
    trials = [run for run in runs if run.info.run_id != sweep_id]
    assert sweep.info.status == "FINISHED"
    assert points(project, sweep, "outer") == [(0, 0.0), (1, 1.0), (99, 99.0)]
    assert len(trials) == TASKS
    for run in trials:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == sweep_id
        assert run.data.metrics == {"trial": float(run.data.params["index"])}


def test_plain_calls_in_a_thread_started_by_a_task_land_in_the_tasks_run(
    project: Path, config: TrackingConfig, process_state: None
) -> None:
    """``asyncio.to_thread`` runs its function in a copy of the task's context."""

    async def worker(index: int) -> str:
        with TrackingSession(config, name=f"worker-{index}") as s:
            await asyncio.to_thread(mlflow.log_metric, "in_thread", index)
            assert s.run_id is not None
            return s.run_id

    async def main() -> list[str]:
        return await asyncio.gather(*(worker(i) for i in range(3)))

    ids = asyncio.run(main())

    runs = {run.info.run_id: run for run in runs_of(project)}
    assert sorted(runs) == sorted(ids)  # no run started by the thread
    for index, run_id in enumerate(ids):
        assert runs[run_id].data.metrics == {"in_thread": float(index)}


def test_sessions_ending_out_of_order_in_one_thread_each_end_only_their_own_run(
    project: Path, config: TrackingConfig, process_state: None
) -> None:
    """Entered a, then b (b's run is then a child of a's, as for any session opened while a
    run is active), left a, then b: a's end leaves b's run open and active, with b's status
    its own; afterwards the process is as before."""
    a = TrackingSession(config, name="a")
    b = TrackingSession(config, name="b")
    a.__enter__()
    b.__enter__()
    try:
        raise RuntimeError("a fails")
    except RuntimeError as exc:
        a.__exit__(type(exc), exc, exc.__traceback__)
    client = MlflowClient(tracking_uri=store_uri(project))
    assert client.get_run(str(a.run_id)).info.status == "FAILED"
    assert client.get_run(str(b.run_id)).info.status == "RUNNING"
    active = mlflow.active_run()
    assert active is not None
    assert active.info.run_id == b.run_id
    mlflow.log_metric("after_a", 1.0)
    b.log_metrics({"own": 2.0})
    b.__exit__(None, None, None)

    run_b = client.get_run(str(b.run_id))
    assert run_b.info.status == "FINISHED"
    assert run_b.data.metrics == {"after_a": 1.0, "own": 2.0}
    assert run_b.data.tags["mlflow.parentRunId"] == a.run_id
    assert client.get_run(str(a.run_id)).data.metrics == {}


def test_sessions_in_tasks_ending_in_the_order_they_began_leave_each_other_alone(
    project: Path, config: TrackingConfig, process_state: None
) -> None:
    """Two tasks: a enters, b enters, a leaves (failing), b leaves."""
    a_in, b_in, a_out = asyncio.Event(), asyncio.Event(), asyncio.Event()
    ids: dict[str, str] = {}

    class Fails(Exception):
        pass

    async def first() -> None:
        try:
            with TrackingSession(config, name="a") as s:
                ids["a"] = str(s.run_id)
                a_in.set()
                await b_in.wait()
                raise Fails
        except Fails:
            a_out.set()

    async def second() -> None:
        await a_in.wait()
        with TrackingSession(config, name="b") as s:
            ids["b"] = str(s.run_id)
            b_in.set()
            await a_out.wait()
            mlflow.log_metric("b_after_a", 1.0)

    async def main() -> None:
        await asyncio.gather(first(), second())

    asyncio.run(main())

    runs = {run.info.run_name: run for run in runs_of(project)}
    assert runs["a"].info.status == "FAILED"
    assert runs["b"].info.status == "FINISHED"
    assert runs["b"].data.metrics == {"b_after_a": 1.0}
    assert "mlflow.parentRunId" not in runs["b"].data.tags
