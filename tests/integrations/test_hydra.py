"""``trackcfg.hydra.TrackcfgCallback``: a real Hydra app run as a user runs it
(``python app.py ...``, ``-m`` sweeps with the basic and the joblib launcher), its runs read
back from the SQLite store."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers import project_folder, run_python, store_uri

pytest.importorskip("hydra")

APP = textwrap.dedent(
    """
    import hydra
    import mlflow


    @hydra.main(version_base=None, config_path=".", config_name="config")
    def main(cfg):
        mlflow.log_metric("score", cfg.lr * 10)
        if cfg.fail:
            raise ValueError("the task failed")
        return cfg.lr


    if __name__ == "__main__":
        main()
    """
)
CONFIG = textwrap.dedent(
    """
    lr: 0.01
    fail: false
    model:
      depth: 2
      name: net-${model.depth}
    hydra:
      callbacks:
        trackcfg:
          _target_: trackcfg.hydra.TrackcfgCallback
          config: mlflow.yml
    """
)


@pytest.fixture
def app(tmp_path: Path, migrated_sqlite_db: Path) -> Path:
    root = project_folder(
        tmp_path / "app",
        config="tracking:\n  experiment:\n    name: sweeps\n",
        store=migrated_sqlite_db,
    )
    (root / "app.py").write_text(APP, encoding="utf-8")
    (root / "config.yaml").write_text(CONFIG, encoding="utf-8")
    return root


def runs(root: Path) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store_uri(root))
    experiment = client.get_experiment_by_name("sweeps")
    assert experiment is not None
    return list(client.search_runs([experiment.experiment_id]))


def config_artifact(root: Path, run_id: str) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store_uri(root))
    path = client.download_artifacts(run_id, "hydra/config.yaml", str(root / "downloaded"))
    return Path(path).read_text(encoding="utf-8")


def check_sweep(root: Path, result: Any) -> None:
    assert result.returncode == 0, result.stderr
    found = runs(root)
    (parent,) = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(found) == 4
    assert parent.info.status == "FINISHED"
    assert parent.data.params == {"lr": "0.1,0.2,0.3"}
    assert sorted((r.data.params["lr"], r.info.run_name) for r in children) == [
        ("0.1", "lr=0.1"),
        ("0.2", "lr=0.2"),
        ("0.3", "lr=0.3"),
    ]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.params == {"lr": child.data.params["lr"]}
        # mlflow.log_metric inside the task landed in the job's own run.
        assert child.data.metrics == {"score": pytest.approx(float(child.data.params["lr"]) * 10)}
        text = config_artifact(root, child.info.run_id)
        assert f"lr: {child.data.params['lr']}" in text
        assert "name: net-2" in text  # resolved
        assert "hydra" not in text


def test_a_multirun_is_a_parent_run_with_a_child_per_job(app: Path) -> None:
    result = run_python("app.py", "-m", "lr=0.1,0.2,0.3", cwd=app, timeout=300)
    check_sweep(app, result)


def test_a_multirun_with_the_joblib_launcher_is_the_same_parent_and_children(app: Path) -> None:
    """Jobs in other processes (loky workers) find the sweep's run through the worker
    environment contract."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    result = run_python(
        "app.py",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "lr=0.1,0.2,0.3",
        cwd=app,
        timeout=400,
    )
    check_sweep(app, result)


def test_a_single_run_has_its_overrides_as_params_and_fails_when_the_task_raises(
    app: Path,
) -> None:
    result = run_python("app.py", "lr=0.5", "fail=true", "+extra=x", cwd=app, timeout=300)
    assert result.returncode != 0
    assert "the task failed" in result.stderr
    (run,) = runs(app)
    assert run.info.status == "FAILED"
    assert run.info.run_name == "app"
    assert run.data.params == {"lr": "0.5", "fail": "true", "extra": "x"}
    assert run.data.metrics == {"score": 5.0}
    assert "fail: true" in config_artifact(app, run.info.run_id)


def test_importing_trackcfg_never_imports_hydra() -> None:
    probe = "import sys, trackcfg, trackcfg.kedro; print('hydra' in sys.modules)"
    result = run_python("-c", probe)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
