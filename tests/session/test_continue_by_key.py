"""A job finds its run again: ``tracking.run.resume`` and ``tracking.run.key``.

The decisions (which run, refused when) on the fake store first; then, on a real SQLite
store, a job SIGKILLed mid-loop and started again with the same key, and a later
``trackcfg sync`` that must not end the continued run.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeStore
from helpers import project_folder, store_uri, subprocess_env

from trackcfg import (
    ConfigError,
    RunError,
    TrackingConfig,
    TrackingSession,
    _state,
    load_config,
)
from trackcfg._backend import RunStatus
from trackcfg._journal import open_journal
from trackcfg._params import MetricPoint
from trackcfg._rules import CONTINUED_TAG, RUN_KEY_TAG
from trackcfg._sync import journal_folder, sync_journals

FAKE_URI = "http://fake.invalid"
WATCHDOG = 240.0


@pytest.fixture(autouse=True)
def _no_settings_left() -> Iterator[None]:
    yield
    held = _state._settings is not None
    _state._settings = None
    assert not held, "a session left the process-wide settings held"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return project_folder(tmp_path / "proj", name="keyed")


def fake_config(root: Path, **overrides: Any) -> TrackingConfig:
    (root / "mlflow.yml").write_text(f"server:\n  mlflow_tracking_uri: {FAKE_URI}\n")
    return load_config(
        root / "mlflow.yml", overrides={"tracking.logging.mode": "sync", **overrides}
    )


def session(config: TrackingConfig, store: FakeStore, **kwargs: Any) -> TrackingSession:
    return TrackingSession(config, name="job", _backend_factory=store, **kwargs)


def keyed(root: Path, resume: str, key: str = "job-17", **more: Any) -> TrackingConfig:
    return fake_config(root, **{"tracking.run.resume": resume, "tracking.run.key": key, **more})


# ---------------------------------------------------------------------------------------------
# The keys, checked when the config loads.


@pytest.mark.parametrize(
    ("run_yaml", "line", "message"),
    [
        (
            '    key: "it\'s"\n',
            3,
            "'tracking.run.key': must not hold quotes, backslashes or control characters, "
            'got "it\'s"',
        ),
        ("    key: ''\n", 3, "'tracking.run.key': must not be empty (or null: no key)"),
        (
            "    resume: allow\n",
            3,
            "'tracking.run.resume': is 'allow' but tracking.run.key is not set: set the key the "
            "run is found by (TRACKCFG_TRACKING__RUN__KEY), or resume: never",
        ),
        (
            "    key: k\n    id: abc\n    resume: must\n",
            5,
            "'tracking.run.resume': is 'must' and tracking.run.id is set too: continue a run "
            "either by its id or by tracking.run.key, not both",
        ),
        (
            "    resume: sometimes\n",
            3,
            "'tracking.run.resume': must be one of 'never', 'allow', 'must', got 'sometimes'",
        ),
    ],
)
def test_bad_resume_settings_are_config_errors_with_file_and_line(
    root: Path, run_yaml: str, line: int, message: str
) -> None:
    file = root / "mlflow.yml"
    file.write_text(f"tracking:\n  run:\n{run_yaml}")
    with pytest.raises(ConfigError) as raised:
        load_config(file)
    assert f"{file}:{line}: {message}" in str(raised.value)


def test_the_key_comes_from_its_environment_twin(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRACKCFG_TRACKING__RUN__KEY", "12345")
    (root / "mlflow.yml").write_text("tracking:\n  run:\n    resume: must\n")
    run = load_config(root / "mlflow.yml").tracking.run
    assert (run.key, run.resume.value) == ("12345", "must")


# ---------------------------------------------------------------------------------------------
# Decisions, on the fake store.


def test_never_starts_a_new_run_each_time_tagged_with_the_key(root: Path) -> None:
    store = FakeStore()
    ids: list[str] = []
    for _ in range(2):
        with session(keyed(root, "never"), store) as s:
            assert not s.resumed
            ids.append(s.run_id or "")
    assert ids[0] != ids[1]
    assert [store.runs[i].tags[RUN_KEY_TAG] for i in ids] == ["job-17", "job-17"]


def test_allow_continues_the_latest_run_with_the_key_else_starts_one(root: Path) -> None:
    store = FakeStore()
    with session(keyed(root, "allow"), store, params={"lr": 0.1}) as first:
        assert not first.resumed
        first.log_metrics({"loss": 1.0}, step=0)
    with session(keyed(root, "allow"), store, params={"lr": 0.1}) as again:
        assert again.resumed
        assert again.run_id == first.run_id
        again.log_metrics({"loss": 0.5}, step=1)
    run = store.runs[first.run_id or ""]
    assert run.status is RunStatus.FINISHED
    assert [(m.step, m.value) for m in run.metrics if m.key == "loss"] == [(0, 1.0), (1, 0.5)]
    assert len(store.runs) == 1
    # Another key is another run.
    with session(keyed(root, "allow", key="job-18"), store) as other:
        assert not other.resumed
        assert other.run_id != first.run_id


def test_allow_takes_the_latest_by_start_time_of_any_status_never_a_deleted_one(
    root: Path,
) -> None:
    store = FakeStore()
    experiment = store.add_experiment("keyed")
    runs = [
        store.add_run(experiment, status=status, deleted=deleted)
        for status, deleted in (
            (RunStatus.FINISHED, False),
            (RunStatus.FAILED, False),
            (RunStatus.KILLED, True),
        )
    ]
    for run_id in runs:
        store.runs[run_id].tags[RUN_KEY_TAG] = "job-17"
    with session(keyed(root, "allow"), store) as s:
        assert s.run_id == runs[1]  # the FAILED one: the newest not deleted
    assert store.runs[runs[1]].status is RunStatus.FINISHED


def test_must_without_a_run_is_a_run_error_before_anything_is_created(root: Path) -> None:
    store = FakeStore()
    with pytest.raises(RunError) as raised, session(keyed(root, "must"), store):
        pass
    assert str(raised.value) == (
        "no run of the experiment has tracking.run.key 'job-17' and tracking.run.resume is "
        f"'must' (store: {FAKE_URI}); check the key (TRACKCFG_TRACKING__RUN__KEY) and the "
        "experiment, or set tracking.run.resume: allow to start a new run"
    )
    assert not {"create_experiment", "start_run", "log_batch"} & set(store.methods())
    # The experiment exists, the key names no run in it: still nothing is created.
    store.add_experiment("keyed")
    with pytest.raises(RunError), session(keyed(root, "must"), store):
        pass
    assert store.runs == {}


def test_a_differing_param_refuses_to_continue_and_leaves_the_run_as_it_was(root: Path) -> None:
    store = FakeStore()
    with session(keyed(root, "allow"), store, params={"lr": 0.1}) as first:
        pass
    calls = len(store.calls)
    with (
        pytest.raises(RunError, match=r"cannot continue run .*'lr': logged '0.1', now '0.2'"),
        session(keyed(root, "allow"), store, params={"lr": 0.2}),
    ):
        pass
    assert store.runs[first.run_id or ""].status is RunStatus.FINISHED
    assert not {"resume_run", "log_batch", "start_run"} & {c.method for c in store.calls[calls:]}


def test_child_runs_do_not_carry_the_key(root: Path) -> None:
    store = FakeStore()
    with session(keyed(root, "allow"), store) as s, s.child("trial") as c:
        child_id = c.run_id
    assert RUN_KEY_TAG not in store.runs[child_id or ""].tags
    with session(keyed(root, "allow"), store) as again:
        assert again.run_id == s.run_id


def test_a_run_whose_writer_still_lives_here_is_never_taken(root: Path) -> None:
    """A RUNNING run with a locked journal in the project's journal folder: its process
    lives; continuing it is refused, its journal left alone."""
    store = FakeStore()
    experiment = store.add_experiment("keyed")
    run_id = store.add_run(experiment, status=RunStatus.RUNNING)
    store.runs[run_id].tags[RUN_KEY_TAG] = "job-17"
    live = open_journal(
        journal_folder(None, root), run_id=run_id, experiment_id=experiment, tracking_uri=FAKE_URI
    )
    try:
        live.append(metrics=[MetricPoint(key="loss", value=1.0, step=0, timestamp=1)])
        with (
            pytest.raises(RunError, match="still being logged by a live process"),
            session(keyed(root, "allow"), store),
        ):
            pass
        assert store.runs[run_id].metrics == []
        assert store.runs[run_id].status is RunStatus.RUNNING
        assert live.path.exists()
    finally:
        live.close()


def test_a_killed_writers_journal_is_sent_first_and_the_run_not_ended(root: Path) -> None:
    """Resuming by ``run.id`` with ``resume_running``: what the killed process journaled is
    on the run before the session's own first call, once."""
    store = FakeStore()
    experiment = store.add_experiment("keyed")
    run_id = store.add_run(experiment, status=RunStatus.RUNNING)
    dead = open_journal(
        journal_folder(None, root), run_id=run_id, experiment_id=experiment, tracking_uri=FAKE_URI
    )
    dead.append(
        metrics=[MetricPoint(key="loss", value=float(s), step=s, timestamp=s) for s in range(3)]
    )
    dead.close()  # its process is gone: the lock is free
    config = fake_config(root, **{"tracking.run.id": run_id, "tracking.run.resume_running": True})
    with session(config, store) as s:
        assert s.resumed
        assert [m.step for m in store.runs[run_id].metrics] == [0, 1, 2]
        assert store.runs[run_id].status is RunStatus.RUNNING
        s.log_metrics({"loss": 9.0}, step=3)
    assert [m.step for m in store.runs[run_id].metrics] == [0, 1, 2, 3]
    assert store.runs[run_id].status is RunStatus.FINISHED
    assert list(journal_folder(None, root).glob("*.journal")) == []


def test_a_later_sync_never_ends_a_run_continued_since_its_journal_was_written(
    root: Path,
) -> None:
    """A journal left by a process killed before the run was continued (found later, e.g.
    copied back from another node): sync sends its points and leaves the run's end to the
    session that continued it."""
    store = FakeStore()
    experiment = store.add_experiment("keyed")
    run_id = store.add_run(experiment, status=RunStatus.RUNNING)
    folder = journal_folder(None, root)
    dead = open_journal(folder, run_id=run_id, experiment_id=experiment, tracking_uri=FAKE_URI)
    dead.append(metrics=[MetricPoint(key="loss", value=1.0, step=0, timestamp=1)])
    dead.close()
    time.sleep(0.002)  # the continuation comes strictly later than the journal (ms clock)
    store.runs[run_id].tags[CONTINUED_TAG] = str(int(time.time() * 1000))
    (result,) = sync_journals(folder, tracking_uri=FAKE_URI, shown_uri=FAKE_URI, factory=store)
    assert (result.state, result.end) == ("sent", None)
    assert "continued the run since" in result.detail
    assert store.runs[run_id].status is RunStatus.RUNNING
    assert [m.step for m in store.runs[run_id].metrics] == [0]


# ---------------------------------------------------------------------------------------------
# A real job, SIGKILLed and started again, on a SQLite store.

JOB = textwrap.dedent(
    """
    import sys
    from trackcfg import TrackingSession

    first = int(sys.argv[2])
    with TrackingSession.from_yaml(sys.argv[1], name="train", params={"lr": 0.1}) as s:
        print("RUN", s.run_id, s.resumed, flush=True)
        for step in range(first, first + int(sys.argv[3])):
            s.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
            print(step, flush=True)
    """
)


def start_job(root: Path, first: int, count: int, env: Mapping[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", JOB, str(root / "mlflow.yml"), str(first), str(count)],
        cwd=root,
        env={**subprocess_env(), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_after(process: subprocess.Popen[str], step: int) -> tuple[str, int]:
    """SIGKILL the job once it said step ``step`` returned; its run id and the last step
    whose call returned."""
    assert process.stdout is not None
    assert process.stderr is not None
    watchdog = threading.Timer(WATCHDOG, process.kill)
    watchdog.start()
    try:
        head = process.stdout.readline()
        assert head.startswith("RUN "), head + process.communicate()[1]
        returned = -1
        for line in process.stdout:
            returned = int(line)
            if returned >= step:
                break
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        rest = process.stdout.read()
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    for line in rest.split("\n")[:-1]:  # whole lines: the last may be cut by the kill
        returned = int(line)
    return head.split()[1], returned


def test_a_job_killed_at_step_500_and_started_again_with_its_key_is_one_finished_run(
    tmp_path: Path, migrated_sqlite_db: Path
) -> None:
    from mlflow import MlflowClient

    config = "tracking:\n  run:\n    resume: allow\n"
    root = project_folder(tmp_path / "proj", name="slurm", config=config, store=migrated_sqlite_db)
    env = {"TRACKCFG_TRACKING__RUN__KEY": "4242"}
    run_id, returned = kill_after(start_job(root, 0, 100_000, env), 500)
    assert returned >= 500
    client = MlflowClient(tracking_uri=store_uri(root))
    assert client.get_run(run_id).info.status == "RUNNING"

    again = start_job(root, 1000, 200, env)
    out, err = again.communicate(timeout=WATCHDOG)
    assert again.returncode == 0, err
    head = out.splitlines()[0].split()
    assert head == ["RUN", run_id, "True"]

    (run,) = client.search_runs([client.get_run(run_id).info.experiment_id])
    assert run.info.run_id == run_id
    assert run.info.status == "FINISHED"
    assert run.data.tags[RUN_KEY_TAG] == "4242"
    assert run.data.params == {"lr": "0.1"}
    steps = [m.step for m in client.get_metric_history(run_id, "loss")]
    assert len(steps) == len(set(steps)), "a point arrived twice"
    # Every step either process returned from: 0..returned, then 1000..1199 (the killed
    # process may have journaled one more step before it died).
    assert set(range(returned + 1)) | set(range(1000, 1200)) <= set(steps)
    assert set(steps) - set(range(1000, 1200)) <= set(range(returned + 2))
    assert list((root / ".trackcfg" / "journal").glob("*.journal")) == []


def test_against_a_real_server_a_killed_job_started_again_is_one_finished_run(
    mlflow_server: str, tmp_path: Path
) -> None:
    """The same over HTTP: the killed process's journal is sent to the server by the job
    started again, before its own steps."""
    from mlflow import MlflowClient

    experiment = f"slurm-{tmp_path.name}"
    config = (
        f"server:\n  mlflow_tracking_uri: {mlflow_server}\n"
        f"tracking:\n  experiment:\n    name: {experiment}\n  run:\n    resume: must\n"
    )
    root = project_folder(tmp_path / "proj", name="slurm", config=config)
    env = {"TRACKCFG_TRACKING__RUN__KEY": "job-99"}
    first = start_job(root, 0, 100_000, {**env, "TRACKCFG_TRACKING__RUN__RESUME": "allow"})
    run_id, returned = kill_after(first, 500)

    again = start_job(root, 1000, 100, env)
    out, err = again.communicate(timeout=WATCHDOG)
    assert again.returncode == 0, err
    assert out.splitlines()[0].split() == ["RUN", run_id, "True"]
    client = MlflowClient(tracking_uri=mlflow_server)
    (run,) = client.search_runs([client.get_run(run_id).info.experiment_id])
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "loss")]
    assert len(steps) == len(set(steps)), "a point arrived twice"
    assert set(range(returned + 1)) | set(range(1000, 1100)) <= set(steps)


def test_resume_running_by_id_sends_the_killed_journal_and_a_later_sync_keeps_it_finished(
    tmp_path: Path, migrated_sqlite_db: Path
) -> None:
    """The issue's numbers: 800 points, killed; resuming by ``run.id`` with
    ``resume_running`` has them all before its own; ``trackcfg sync`` then has nothing to end."""
    from mlflow import MlflowClient

    root = project_folder(tmp_path / "proj", name="byid", config="", store=migrated_sqlite_db)
    run_id, returned = kill_after(start_job(root, 0, 100_000, {}), 800)
    env = {"TRACKCFG_TRACKING__RUN__ID": run_id, "TRACKCFG_TRACKING__RUN__RESUME_RUNNING": "true"}
    again = start_job(root, 5000, 10, env)
    _, err = again.communicate(timeout=WATCHDOG)
    assert again.returncode == 0, err
    client = MlflowClient(tracking_uri=store_uri(root))
    steps = {m.step for m in client.get_metric_history(run_id, "loss")}
    assert set(range(returned + 1)) | set(range(5000, 5010)) <= steps
    sync = subprocess.run(
        [sys.executable, "-m", "trackcfg", "sync", str(root), "--json"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=WATCHDOG,
        check=False,
    )
    assert sync.returncode == 0, sync.stderr
    assert json.loads(sync.stdout)["results"] == []
    assert client.get_run(run_id).info.status == "FINISHED"


# ---------------------------------------------------------------------------------------------
# What ``trackcfg show`` and ``check`` say a start would do.


def cli(*args: str, cwd: Path) -> str:
    from click.testing import CliRunner

    from trackcfg._cli import cli as main

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code in (0, 1), result.output
    return result.stdout


def test_show_and_check_say_which_run_a_start_would_continue(
    tmp_path: Path, migrated_sqlite_db: Path
) -> None:
    config = "tracking:\n  run:\n    resume: must\n    key: nightly-3\n"
    root = project_folder(
        tmp_path / "proj", name="nightly", config=config, store=migrated_sqlite_db
    )
    intent = (
        "run: continue the latest run of the experiment tagged trackcfg.run.key='nightly-3', "
        "else an error (tracking.run.resume: must)"
    )
    assert intent in cli("show", cwd=root).splitlines()
    assert (
        "[FAIL] run: no run of the experiment has tracking.run.key 'nightly-3' and "
        "tracking.run.resume is 'must'"
    ) in cli("check", cwd=root)

    allow = load_config(root / "mlflow.yml", overrides={"tracking.run.resume": "allow"})
    with TrackingSession(allow, name="nightly") as s:
        run_id = s.run_id
    assert f"[ ok ] run: a start would continue run {run_id} (FINISHED, tracking.run.key " in (
        cli("check", cwd=root)
    )


def test_tracked_calls_with_a_key_continue_one_run(
    tmp_path: Path, migrated_sqlite_db: Path
) -> None:
    """``@tracked`` goes through the same session: two calls with the key are one run."""
    from mlflow import MlflowClient

    from trackcfg import tracked

    config = (
        "tracking:\n  run:\n    resume: allow\n    key: epoch-loop\n  logging:\n    mode: sync\n"
    )
    root = project_folder(
        tmp_path / "proj", name="tracked", config=config, store=migrated_sqlite_db
    )

    @tracked(config=root / "mlflow.yml", params=["lr"])
    def train(epoch: int, lr: float = 0.1) -> str:
        import mlflow

        mlflow.log_metric("loss", 1.0 / (epoch + 1), step=epoch)
        active = mlflow.active_run()
        assert active is not None
        return str(active.info.run_id)

    first, second = train(0), train(1)
    assert first == second
    client = MlflowClient(tracking_uri=store_uri(root))
    run = client.get_run(first)
    assert run.info.status == "FINISHED"
    assert run.data.tags[RUN_KEY_TAG] == "epoch-loop"
    assert [m.step for m in client.get_metric_history(first, "loss")] == [0, 1]
    assert run.data.params == {"lr": "0.1"}
    with pytest.raises(RunError, match=r"params differ .*'lr': logged '0.1', now '0.2'"):
        train(2, lr=0.2)
