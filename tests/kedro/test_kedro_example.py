"""examples/kedro_example.py generates a Kedro project, runs it, and the run is in its store."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import REPO, run_python, subprocess_env
from mlflow import MlflowClient

pytest.importorskip("kedro")


def test_kedro_example_tracks_one_finished_run_with_effective_params(tmp_path: Path) -> None:
    done = run_python(
        str(REPO / "examples" / "kedro_example.py"),
        str(tmp_path),
        cwd=tmp_path,
        env=subprocess_env(venv_on_path=True),
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    run_id = done.stdout.split()[-1]
    store = tmp_path / "spaceflights-lite" / "mlruns" / "mlflow.db"
    run = MlflowClient(f"sqlite:///{store}").get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "__default__"
    assert run.data.params == {"lr": "0.05", "model.depth": "3", "model.kind": "tree"}
    assert set(run.data.metrics) == {"train_score", "eval_score"}
    assert run.data.tags["kedro.command"] == "kedro run --params lr=0.05"
