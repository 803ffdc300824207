"""examples/kedro_example.py generates a Kedro project, runs it, and the run is in its store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

pytest.importorskip("kedro")

REPO = Path(__file__).resolve().parents[1]


def test_kedro_example_tracks_one_finished_run_with_effective_params(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "kedro_example.py"), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
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
