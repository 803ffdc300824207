"""trackcfg's Kedro datasets outside ``kedro run`` (a notebook, a script): they log into the
open ``TrackingSession``'s run, else MLflow's active run in MLflow's current store, as
kedro-mlflow documents (``with mlflow.start_run(): MlflowMetricDataset(key="m").save(0.3)``).
Real SQLite stores in ``tmp_path``; no Kedro project, no hooks."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from helpers import copy_store, write

from trackcfg import TrackingSession, load_config

pytest.importorskip("kedro_datasets")


@pytest.fixture
def store(tmp_path: Path, migrated_sqlite_db: Path) -> str:
    """A store MLflow's fluent API is pointed at, as a notebook user does."""
    import mlflow

    uri = f"sqlite:///{copy_store(migrated_sqlite_db, tmp_path / 'notebook')}"
    mlflow.set_tracking_uri(uri)
    return uri


def test_datasets_log_into_the_active_mlflow_run_and_load_back_by_run_id(
    store: str, tmp_path: Path
) -> None:
    import mlflow
    from mlflow import MlflowClient

    from trackcfg.kedro.datasets import (
        MlflowArtifactDataset,
        MlflowMetricDataset,
        MlflowMetricHistoryDataset,
    )
    from trackcfg.kedro.datasets._common import NoTrackingWarning

    report = tmp_path / "report.txt"
    with warnings.catch_warnings():
        # No "nothing is logged" warning.  Only trackcfg's: MLflow's first store of this
        # worker may set up SQLAlchemy here, whose own deprecation warning made an error
        # breaks MLflow's table mappers for the rest of the process.
        warnings.simplefilter("error", NoTrackingWarning)
        with mlflow.start_run() as run:
            MlflowMetricDataset(key="m").save(0.3)
            MlflowMetricHistoryDataset(key="loss").save([0.5, 0.4])
            MlflowArtifactDataset(
                dataset={"type": "text.TextDataset", "filepath": str(report)},
                artifact_path="reports",
            ).save("hello")
    run_id = run.info.run_id
    client = MlflowClient(tracking_uri=store)
    logged = client.get_run(run_id)
    assert logged.data.metrics == {"m": 0.3, "loss": 0.4}
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [0.5, 0.4]
    assert [a.path for a in client.list_artifacts(run_id, "reports")] == ["reports/report.txt"]
    assert logged.info.status == "FINISHED"  # the user's run: ended by the user's block

    # After the run, a load by run_id reads MLflow's current store.
    assert mlflow.active_run() is None
    assert MlflowMetricDataset(key="m", run_id=run_id).load() == 0.3
    report.unlink()
    again = MlflowArtifactDataset(
        dataset={"type": "text.TextDataset", "filepath": str(report)},
        artifact_path="reports",
        run_id=run_id,
    )
    assert again.load() == "hello"


def test_datasets_log_into_the_open_tracking_session_run(
    tmp_path: Path, migrated_sqlite_db: Path
) -> None:
    from mlflow import MlflowClient

    from trackcfg.kedro.datasets import MlflowMetricDataset, MlflowMetricsHistoryDataset

    root = tmp_path / "project"
    write(root / "pyproject.toml", "[project]\nname = 'notebook'\n")
    copy_store(migrated_sqlite_db, root / "mlruns")
    config = load_config(write(root / "mlflow.yml", "tracking:\n  run:\n    name: cell\n"))
    with TrackingSession(config) as session:
        MlflowMetricDataset(key="m").save(0.7)
        MlflowMetricsHistoryDataset(prefix="p").save({"a": {"value": 1.0, "step": 2}})
    client = MlflowClient(tracking_uri=session.tracking_uri)
    run = client.get_run(str(session.run_id))
    assert run.info.run_name == "cell"
    assert run.data.metrics == {"m": 0.7, "p.a": 1.0}
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "p.a")] == [
        (2, 1.0)
    ]
    assert len(client.search_runs([run.info.experiment_id])) == 1  # no run of its own


@pytest.mark.parametrize(("artifact_path", "suggested"), [("/abs/x", "abs/x"), ("../x", "x")])
def test_artifact_path_leaving_the_run_is_refused_at_save(
    store: str, tmp_path: Path, artifact_path: str, suggested: str
) -> None:
    import mlflow
    from kedro.io import DatasetError
    from mlflow import MlflowClient

    from trackcfg.kedro.datasets import MlflowArtifactDataset

    report = tmp_path / "report.txt"
    dataset = MlflowArtifactDataset(
        dataset={"type": "text.TextDataset", "filepath": str(report)},
        artifact_path=artifact_path,
    )
    with mlflow.start_run() as run, pytest.raises(DatasetError) as caught:
        dataset.save("hello")
    assert str(caught.value).startswith(f"MlflowArtifactDataset: artifact_path {artifact_path!r} ")
    assert str(caught.value).endswith(
        f"; artifacts are stored under the run, at a relative path such as {suggested!r}"
    )
    assert not report.exists()
    assert MlflowClient(tracking_uri=store).list_artifacts(run.info.run_id) == []
