"""``examples/optuna_sweep.py``, run as a user runs it: the study is one run, each trial a
child run of it with the trial's params and its loss curve."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import REPO, project_folder, run_python, store_uri, subprocess_env

pytest.importorskip("optuna")

TRIALS = 12


def test_each_optuna_trial_is_a_child_run_of_the_studys_run(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    root = project_folder(tmp_path / "examples-project", name="examples-project")
    shutil.copytree(REPO / "examples", root / "examples")
    quiet = subprocess_env(MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true")
    script = str(root / "examples" / "optuna_sweep.py")
    done = run_python(script, str(TRIALS), cwd=tmp_path, env=quiet, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    study_id, trials, best = lines[0], [line.split() for line in lines[1:-1]], lines[-1]

    client = MlflowClient(tracking_uri=store_uri(root))
    study = client.get_run(study_id)
    assert study.info.status == "FINISHED"
    assert study.data.params["n_trials"] == str(TRIALS)
    assert {"best.lr", "best.depth"} <= set(study.data.params)
    assert study.data.metrics["best_value"] == pytest.approx(float(best.split()[1]))
    assert [int(number) for number, _, _ in trials] == list(range(TRIALS))
    states = set()
    for number, run_id, state in trials:
        trial = client.get_run(run_id)
        assert trial.info.status == "FINISHED"
        assert trial.info.run_name == f"trial-{number}"
        assert trial.data.tags["mlflow.parentRunId"] == study_id
        assert trial.data.tags["optuna.state"] == state
        assert set(trial.data.params) == {"lr", "depth"}
        steps = [m.step for m in client.get_metric_history(run_id, "loss")]
        assert steps == list(range(len(steps)))
        assert len(steps) == 10 if state == "COMPLETE" else 1 <= len(steps) < 10
        states.add(state)
    assert states == {"COMPLETE", "PRUNED"}  # the seeded sampler prunes some trials
