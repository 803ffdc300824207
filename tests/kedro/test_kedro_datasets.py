"""trackcfg.kedro.datasets in a real Kedro project, run as a user runs it.

The project is test_kedro.py's generated one (its fixtures are imported), with the pipelines of
``kedro_dataset_pipelines.py`` and a catalog of trackcfg's datasets; ``kedro run`` runs
in a subprocess with each runner, and what lands in the store is read with ``MlflowClient``.
Where kedro-mlflow 2.0.3 works (not ``ParallelRunner``: its artifact dataset cannot be
pickled), the same project run with kedro-mlflow's datasets and hooks must log the same
artifacts (paths and bytes) and metrics (keys, values, steps).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
from helpers import write
from test_kedro import (  # noqa: F401  (fixtures)
    kedro_cli,
    kedro_template,
    only,
    project,
    runs,
)

pytest.importorskip("kedro_datasets")

REFERENCE_ENV = "TRACKCFG_TEST_KEDRO_MLFLOW_PATH"

CATALOG = """\
table:
  type: {artifacts}.MlflowArtifactDataset
  artifact_path: tables
  dataset:
    type: pandas.CSVDataset
    filepath: data/02_intermediate/table.csv
report:
  type: {artifacts}.MlflowArtifactDataset
  dataset:
    type: text.TextDataset
    filepath: data/08_reporting/report.txt
model:
  type: {artifacts}.MlflowArtifactDataset
  artifact_path: models
  dataset:
    type: pickle.PickleDataset
    filepath: data/06_models/model.pkl
accuracy:
  type: {metrics}.MlflowMetricDataset
loss_history:
  type: {metrics}.MlflowMetricHistoryDataset
metrics:
  type: {metrics}.MlflowMetricsHistoryDataset
checked:
  type: {artifacts}.MlflowArtifactDataset
  artifact_path: checks
  dataset:
    type: text.TextDataset
    filepath: data/08_reporting/checked.json
"""
TRACKCFG = {"artifacts": "trackcfg.kedro.datasets", "metrics": "trackcfg.kedro.datasets"}
KEDRO_MLFLOW = {"artifacts": "kedro_mlflow.io.artifacts", "metrics": "kedro_mlflow.io.metrics"}
LOCAL_FILES = {
    "tables/table.csv": "data/02_intermediate/table.csv",
    "report.txt": "data/08_reporting/report.txt",
    "models/model.pkl": "data/06_models/model.pkl",
    "checks/checked.json": "data/08_reporting/checked.json",
}
METRICS = {
    "accuracy": [(0, 0.75)],
    "loss_history": [(0, 0.5), (1, 0.4), (2, 0.3)],
    "metrics.precision": [(1, 0.8)],
    "metrics.recall": [(0, 0.6), (1, 0.7)],
}
RELOADED = {
    "table": {"x": [1, 2, 3], "y": [0.1, 0.2, pytest.approx(0.3)]},
    "model": {"weights": [1.5, -2.0], "bias": pytest.approx(0.6)},
    "accuracy": 0.75,
    "loss_history": [0.5, 0.4, 0.3],
    "metrics": {
        "metrics.precision": {"step": 1, "value": 0.8},
        "metrics.recall": [{"step": 0, "value": 0.6}, {"step": 1, "value": 0.7}],
    },
}


@pytest.fixture
def datasets_project(project: Path) -> Path:  # noqa: F811
    shutil.copy(
        Path(__file__).with_name("kedro_dataset_pipelines.py"),
        project / "src" / "tracked_demo" / "pipeline_registry.py",
    )
    (project / "conf" / "base" / "catalog.yml").write_text(CATALOG.format(**TRACKCFG))
    return project


def artifacts(run: Any) -> dict[str, bytes]:
    """Every artifact file of ``run``: path -> bytes (downloaded)."""
    import tempfile

    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    client = MlflowClient()
    found: dict[str, bytes] = {}

    def walk(path: str | None) -> None:
        for item in client.list_artifacts(run.info.run_id, path):
            if item.is_dir:
                walk(item.path)
            else:
                with tempfile.TemporaryDirectory() as folder:
                    local = download_artifacts(
                        run_id=run.info.run_id, artifact_path=item.path, dst_path=folder
                    )
                    found[item.path] = Path(local).read_bytes()

    walk(None)
    return found


def metric_points(run: Any) -> dict[str, list[tuple[int, float]]]:
    from mlflow import MlflowClient

    client = MlflowClient()
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        for key in run.data.metrics
    }


def logged(root: Path, tracking_uri: str) -> tuple[Any, dict[str, bytes], dict[str, Any]]:
    """The pipeline's run, its artifacts and its metrics' points."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    run = only(runs(root))
    return run, artifacts(run), metric_points(run)


def store(root: Path) -> str:
    return f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"


# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "runner",
    ["SequentialRunner", "ThreadRunner", "ParallelRunner:fork", "ParallelRunner:spawn"],
)
def test_every_dataset_logs_into_the_pipeline_run_and_loads_back(
    datasets_project: Path, runner: str
) -> None:
    """Artifacts byte-equal to the local files, metrics with their steps, every dataset
    loaded back by a later node (in worker processes too, with ParallelRunner)."""
    name, _, start_method = runner.partition(":")
    # An empty KEDRO_MP_CONTEXT is the platform's default (fork here).
    result = kedro_cli(datasets_project, "run", "--runner", name, KEDRO_MP_CONTEXT=start_method)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no MLflow run to log into" not in result.stdout + result.stderr

    run, files, points = logged(datasets_project, store(datasets_project))
    assert run.info.status == "FINISHED"
    assert sorted(files) == sorted(LOCAL_FILES)
    for artifact, local in LOCAL_FILES.items():
        assert files[artifact] == (datasets_project / local).read_bytes(), artifact
    assert points == METRICS
    reloaded = json.loads(files["checks/checked.json"])
    assert reloaded.pop("report") == files["report.txt"].decode()
    assert reloaded == RELOADED


def test_disabled_pipeline_saves_locally_logs_nothing_and_starts_no_run(
    datasets_project: Path,
) -> None:
    write(
        datasets_project / "conf" / "local" / "mlflow.yml",
        """\
        tracking:
          disable_tracking:
            pipelines: [produce]
        """,
    )
    result = kedro_cli(
        datasets_project, "run", "--pipeline", "produce", "--runner", "ParallelRunner"
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert runs(datasets_project) == []
    for local in list(LOCAL_FILES.values())[:3]:
        assert (datasets_project / local).is_file(), local
    assert "no MLflow run to log into" not in output


def test_trackcfg_disable_saves_locally_and_starts_no_run(datasets_project: Path) -> None:
    result = kedro_cli(datasets_project, "run", "--pipeline", "produce", TRACKCFG_DISABLE="1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert runs(datasets_project) == []
    assert (datasets_project / LOCAL_FILES["models/model.pkl"]).is_file()


def test_a_run_id_in_the_catalog_loads_from_that_run(
    datasets_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the pipeline: datasets given the run's id read it back, outside any pipeline
    (the store named by MLFLOW_TRACKING_URI); the artifact is downloaded over the local file."""
    from trackcfg.kedro.datasets import (
        MlflowArtifactDataset,
        MlflowMetricDataset,
        MlflowMetricHistoryDataset,
        MlflowMetricsHistoryDataset,
    )

    result = kedro_cli(datasets_project, "run", "--pipeline", "produce")
    assert result.returncode == 0, result.stdout + result.stderr
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store(datasets_project))
    run_id = only(runs(datasets_project)).info.run_id

    copy = tmp_path / "elsewhere" / "table.csv"
    table = MlflowArtifactDataset(
        dataset={"type": "pandas.CSVDataset", "filepath": str(copy)},
        run_id=run_id,
        artifact_path="tables",
    )
    assert table.load().to_dict(orient="list") == RELOADED["table"]
    assert copy.read_bytes() == (datasets_project / LOCAL_FILES["tables/table.csv"]).read_bytes()
    assert MlflowMetricDataset(key="accuracy", run_id=run_id).load() == 0.75
    history = MlflowMetricHistoryDataset(
        key="loss_history", run_id=run_id, load_args={"mode": "dict"}
    )
    assert history.load() == {0: 0.5, 1: 0.4, 2: 0.3}
    assert (
        MlflowMetricsHistoryDataset(run_id=run_id, prefix="metrics").load() == RELOADED["metrics"]
    )


def test_load_with_neither_a_pipeline_run_nor_a_run_id_says_what_to_do(tmp_path: Path) -> None:
    from kedro.io import DatasetError

    from trackcfg.kedro.datasets import MlflowMetricDataset, MlflowMetricHistoryDataset

    for dataset in (MlflowMetricDataset(key="acc"), MlflowMetricHistoryDataset(key="loss")):
        with pytest.raises(DatasetError) as caught:
            dataset.load()
        assert str(caught.value).endswith(
            "cannot load, no MLflow run to read from: not a pipeline run with trackcfg's "
            "hooks, and no open TrackingSession or active MLflow run; give the dataset a "
            "run_id in the catalog to read a run's values"
        )


def test_save_without_a_session_saves_locally_with_one_warning(tmp_path: Path) -> None:
    from trackcfg.kedro.datasets import MlflowArtifactDataset
    from trackcfg.kedro.datasets._common import NoTrackingWarning

    target = tmp_path / "notes.txt"
    dataset = MlflowArtifactDataset(dataset={"type": "text.TextDataset", "filepath": str(target)})
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        dataset.save("hello")
    assert target.read_text() == "hello"
    assert [w.category for w in seen] == [NoTrackingWarning]
    assert "nothing is logged" in str(seen[0].message)
    assert dataset.load() == "hello"


def test_importing_the_datasets_imports_neither_mlflow_nor_the_model_datasets() -> None:
    from helpers import run_python

    code = (
        "import sys, trackcfg.kedro.datasets as d; "
        "from trackcfg.kedro.datasets import MlflowArtifactDataset, MlflowMetricDataset; "
        "print(sorted(m for m in sys.modules if m == 'mlflow' or m.endswith('._models')))"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_datasets_pickle(tmp_path: Path) -> None:
    import pickle

    from trackcfg.kedro.datasets import (
        MlflowArtifactDataset,
        MlflowMetricDataset,
        MlflowMetricHistoryDataset,
        MlflowMetricsHistoryDataset,
    )

    for dataset in (
        MlflowArtifactDataset(
            dataset={"type": "pandas.CSVDataset", "filepath": str(tmp_path / "t.csv")},
            artifact_path="tables",
        ),
        MlflowMetricDataset(key="acc", save_args={"mode": "append"}),
        MlflowMetricHistoryDataset(key="loss"),
        MlflowMetricsHistoryDataset(prefix="m"),
    ):
        copy = pickle.loads(pickle.dumps(dataset))
        assert type(copy) is type(dataset)
        assert copy._describe() == dataset._describe()


# --------------------------------------------------------------------------------------------
# The same project with kedro-mlflow 2.0.3.


def with_kedro_mlflow(root: Path, copy: Path, catalog: str) -> tuple[Path, str]:
    """A copy of the project ``root`` at ``copy`` that runs with kedro-mlflow 2.0.3's hooks and
    ``catalog`` (trackcfg's hooks off), logging into its own ``mlruns/mlflow.db``; and the
    ``PYTHONPATH`` with which ``kedro run`` imports kedro-mlflow.  Skips the test when
    ``TRACKCFG_TEST_KEDRO_MLFLOW_PATH`` does not name kedro-mlflow's folder."""
    reference = os.environ.get(REFERENCE_ENV, "").strip()
    if not reference:
        pytest.skip(
            f"{REFERENCE_ENV} is not set (nox -s tests sets it to kedro-mlflow 2.0.3's folder)"
        )
    theirs = Path(shutil.copytree(root, copy))
    (theirs / "conf" / "base" / "catalog.yml").write_text(catalog)
    settings = theirs / "src" / "tracked_demo" / "settings.py"
    settings.write_text(settings.read_text() + '\nDISABLE_HOOKS_FOR_PLUGINS = ("trackcfg",)\n')
    write(
        theirs / "conf" / "local" / "mlflow.yml",
        f"""\
        server:
          mlflow_tracking_uri: {store(theirs)}
        """,
    )
    pythonpath = os.pathsep.join(filter(None, [reference, os.environ.get("PYTHONPATH")]))
    return theirs, pythonpath


def test_logs_what_kedro_mlflow_logs_for_the_same_catalog(
    datasets_project: Path, tmp_path: Path
) -> None:
    theirs, pythonpath = with_kedro_mlflow(
        datasets_project, tmp_path / "with-kedro-mlflow", CATALOG.format(**KEDRO_MLFLOW)
    )
    result = kedro_cli(theirs, "run", PYTHONPATH=pythonpath)
    assert result.returncode == 0, result.stdout + result.stderr
    ours = kedro_cli(datasets_project, "run")
    assert ours.returncode == 0, ours.stdout + ours.stderr

    _, their_files, their_points = logged(theirs, store(theirs))
    _, our_files, our_points = logged(datasets_project, store(datasets_project))
    assert our_files == their_files
    assert our_points == their_points


def test_artifacts_go_to_the_experiments_s3_store_from_worker_processes(
    datasets_project: Path, moto_s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The experiment's artifact location is S3 (moto), credentials from Kedro's
    credentials.yml: ParallelRunner's workers upload there, byte-equal to the local files."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    write(
        datasets_project / "conf" / "local" / "mlflow.yml",
        f"""\
        server:
          credentials: s3_store
        tracking:
          experiment:
            name: on-s3
            create_experiment_kwargs:
              artifact_location: s3://{moto_s3.bucket}/kedro-datasets
        """,
    )
    write(
        datasets_project / "conf" / "local" / "credentials.yml",
        f"""\
        s3_store:
          AWS_ACCESS_KEY_ID: {moto_s3.access_key_id}
          AWS_SECRET_ACCESS_KEY: {moto_s3.secret_access_key}
          AWS_DEFAULT_REGION: {moto_s3.region}
          MLFLOW_S3_ENDPOINT_URL: {moto_s3.endpoint_url}
        """,
    )
    no_aws = str(datasets_project / "no-aws-files")
    result = kedro_cli(
        datasets_project,
        "run",
        "--pipeline",
        "produce",
        "--runner",
        "ParallelRunner",
        AWS_SHARED_CREDENTIALS_FILE=no_aws,
        AWS_CONFIG_FILE=no_aws,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    run = only(runs(datasets_project))
    prefix = f"kedro-datasets/{run.info.run_id}/artifacts/"
    s3 = moto_s3.client()
    listed = s3.list_objects_v2(Bucket=moto_s3.bucket, Prefix=prefix)
    keys = sorted(obj["Key"][len(prefix) :] for obj in listed.get("Contents", []))
    expected = ["models/model.pkl", "report.txt", "tables/table.csv"]
    assert keys == expected
    for key in expected:
        body: Any = s3.get_object(Bucket=moto_s3.bucket, Key=prefix + key)
        assert body["Body"].read() == (datasets_project / LOCAL_FILES[key]).read_bytes()


CODE_CATALOG = '''
"""A catalog class that holds metric datasets no catalog YAML declares."""

from kedro.io import DataCatalog

from trackcfg.kedro.datasets import MlflowMetricDataset, MlflowMetricsHistoryDataset


class CodeCatalog(DataCatalog):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self["score_in_code"] = MlflowMetricDataset()
        self["scores_in_code"] = MlflowMetricsHistoryDataset()
'''
CODE_PIPELINES = """
from kedro.pipeline import Pipeline, node


def score():
    return 0.25, {"a": {"value": 1.5, "step": 0}}


def register_pipelines():
    return {"__default__": Pipeline([node(score, None, ["score_in_code", "scores_in_code"])])}
"""


def test_metric_datasets_of_a_catalog_built_in_code_are_named_after_their_entry(
    project: Path,  # noqa: F811
) -> None:
    """A custom DATA_CATALOG_CLASS adds metric datasets without key/prefix: the hook names
    them from the runtime catalog, as kedro-mlflow does."""
    package = project / "src" / "tracked_demo"
    write(package / "code_catalog.py", CODE_CATALOG)
    write(package / "pipeline_registry.py", CODE_PIPELINES)
    settings = package / "settings.py"
    settings.write_text(
        settings.read_text()
        + "\nfrom tracked_demo.code_catalog import CodeCatalog\n"
        + "\nDATA_CATALOG_CLASS = CodeCatalog\n"
    )
    result = kedro_cli(project, "run")
    assert result.returncode == 0, result.stdout + result.stderr
    run = only(runs(project))
    assert run.data.metrics == {"score_in_code": 0.25, "scores_in_code.a": 1.5}
