"""trackcfg's model datasets in a real Kedro project training a scikit-learn model.

The project is test_kedro.py's generated one (its fixtures are imported), with the pipelines
of ``MODEL_PIPELINES`` and the catalog ``CATALOG``; every run is a real ``kedro run``.  What
a reloaded model predicts is compared with what the trained one predicted, and the store is
read back with ``MlflowClient``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
from helpers import store_uri, write
from test_kedro import (  # noqa: F401  (fixtures)
    PACKAGE,
    kedro_cli,
    kedro_template,
    only,
    project,
    runs,
)

MODEL_PIPELINES = '''
"""Pipelines training and reloading a scikit-learn model (test_kedro_model_datasets.py)."""

import json

from kedro.pipeline import Pipeline, node

POINTS = [[0.5], [2.2], [2.6], [4.5]]


def _predict(model):
    return [round(float(p), 10) for p in model.predict_proba(POINTS)[:, 1]]


def train(lr):
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    x = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0]])
    y = np.array([0, 0, 0, 1, 1, 1])
    model = LogisticRegression(C=1 / lr).fit(x, y)
    return model, model, json.dumps(_predict(model))


def predict(*models):
    return json.dumps([_predict(m) for m in models])


def first(value, _):
    return value


def register_pipelines():
    return {
        "__default__": Pipeline([]),
        "train": Pipeline(
            [
                node(train, "params:lr", ["classifier", "local_classifier", "expected"],
                     name="train"),
                node(predict, ["classifier", "local_classifier"], "reloaded", name="reload"),
            ]
        ),
        "later": Pipeline(
            [
                node(predict, ["classifier_of_run", "champion", "version_one"], "later",
                     name="later"),
            ]
        ),
        "offline": Pipeline(
            [
                node(predict, "classifier_of_run", "later", name="from_offline_run"),
                node(first, ["later", "missing_metric"], "nothing", name="from_server_run"),
            ]
        ),
        "registered": Pipeline(
            [
                node(train, "params:lr", ["classifier", "local_classifier", "expected"],
                     name="train"),
                node(predict, ["classifier", "local_classifier", "version_one", "latest"],
                     "reloaded", name="reload"),
            ]
        ),
    }
'''

CATALOG_TEMPLATE = """\
classifier:
  type: {models}.MlflowModelTrackingDataset
  flavor: mlflow.sklearn
  save_args:
    name: classifier
    pip_requirements: [scikit-learn]   # no environment inference: seconds per model{register}
local_classifier:
  type: {models}.MlflowModelLocalFileSystemDataset
  flavor: mlflow.sklearn
  filepath: data/06_models/classifier
  save_args: {{pip_requirements: [scikit-learn]}}
champion:
  type: {models}.MlflowModelRegistryDataset
  model_name: clf
  alias: champion
  flavor: mlflow.sklearn
version_one:
  type: {models}.MlflowModelRegistryDataset
  model_name: clf
  stage_or_version: 1
  flavor: mlflow.sklearn
expected: {{type: text.TextDataset, filepath: data/08_reporting/expected.json}}
reloaded: {{type: text.TextDataset, filepath: data/08_reporting/reloaded.json}}
latest:
  type: {models}.MlflowModelRegistryDataset
  model_name: clf
  flavor: mlflow.sklearn
later: {{type: text.TextDataset, filepath: data/08_reporting/later.json}}
"""


def catalog(models: str = "trackcfg.kedro.datasets", *, register: bool = False) -> str:
    """The catalog with the model datasets of ``models`` (trackcfg's or kedro-mlflow's);
    ``register``: ``classifier`` also registers the model it logs as ``clf``."""
    return CATALOG_TEMPLATE.format(
        models=models, register="\n    registered_model_name: clf" if register else ""
    )


CATALOG = catalog()


@pytest.fixture
def models_project(project: Path) -> Path:  # noqa: F811
    (project / "src" / PACKAGE / "pipeline_registry.py").write_text(MODEL_PIPELINES)
    write(project / "conf" / "base" / "catalog.yml", CATALOG)
    return project


def reporting(root: Path, name: str) -> Any:
    return json.loads((root / "data" / "08_reporting" / f"{name}.json").read_text())


def logged_models(root: Path, run_id: str) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store_uri(root))
    experiments = [e.experiment_id for e in client.search_experiments()]
    return [m for m in client.search_logged_models(experiments) if m.source_run_id == run_id]


def kedro_run(root: Path, *args: str, **env: str) -> str:
    variables: dict[str, Any] = dict(env)
    result = kedro_cli(root, "run", *args, **variables)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


# --------------------------------------------------------------------------------------------


def test_model_logged_into_the_pipeline_run_reloaded_later_and_from_the_registry(
    models_project: Path,
) -> None:
    kedro_run(models_project, "--pipeline", "train")

    run = only(runs(models_project))
    assert run.info.status == "FINISHED"
    (model,) = logged_models(models_project, run.info.run_id)
    assert model.name == "classifier"
    expected = reporting(models_project, "expected")
    assert reporting(models_project, "reloaded") == [expected, expected]
    folder = models_project / "data" / "06_models" / "classifier"
    assert (folder / "MLmodel").is_file()
    assert "flavors:" in (folder / "MLmodel").read_text()

    # Registered with the client, as a user does; a later run loads by run, alias, version.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store_uri(models_project))
    client.create_registered_model("clf")
    version = client.create_model_version(
        "clf", source=model.artifact_location, run_id=run.info.run_id, model_id=model.model_id
    )
    assert str(version.version) == "1"
    client.set_registered_model_alias("clf", "champion", "1")
    write(
        models_project / "conf" / "local" / "catalog.yml",
        f"""\
        classifier_of_run:
          type: trackcfg.kedro.datasets.MlflowModelTrackingDataset
          flavor: mlflow.sklearn
          run_id: {run.info.run_id}
          save_args: {{name: classifier}}
        """,
    )

    kedro_run(models_project, "--pipeline", "later")

    assert reporting(models_project, "later") == [expected, expected, expected]
    later = [r for r in runs(models_project) if r.info.run_id != run.info.run_id]
    assert len(later) == 1
    assert logged_models(models_project, later[0].info.run_id) == []


@pytest.mark.parametrize("runner", ["ThreadRunner", "ParallelRunner:fork", "ParallelRunner:spawn"])
def test_other_runners_log_in_one_worker_and_load_in_another(
    models_project: Path, runner: str
) -> None:
    """The model is logged into the pipeline's run from a worker thread or process, and a
    later node (another worker) loads it back from that run (``runs:/<run>/classifier``)."""
    name, _, start_method = runner.partition(":")
    output = kedro_run(
        models_project,
        "--pipeline",
        "train",
        "--runner",
        name,
        KEDRO_MP_CONTEXT=start_method,
    )

    assert "cannot be used with multiprocessing" not in output
    run = only(runs(models_project))
    (model,) = logged_models(models_project, run.info.run_id)
    assert model.name == "classifier"
    expected = reporting(models_project, "expected")
    assert reporting(models_project, "reloaded") == [expected, expected]


def test_disabled_pipeline_keeps_the_model_logs_nothing_and_starts_no_run(
    models_project: Path,
) -> None:
    write(
        models_project / "conf" / "local" / "mlflow.yml",
        """\
        tracking:
          disable_tracking:
            pipelines: [train]
        """,
    )

    kedro_run(models_project, "--pipeline", "train")

    assert runs(models_project) == []
    expected = reporting(models_project, "expected")
    assert reporting(models_project, "reloaded") == [expected, expected]
    assert (models_project / "data" / "06_models" / "classifier" / "MLmodel").is_file()


# --------------------------------------------------------------------------------------------
# Without a pipeline run: what a user is told, and what pickles.


def test_clear_errors_without_a_run_and_for_bad_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kedro.io import DatasetError

    from trackcfg.kedro.datasets import (
        MlflowModelLocalFileSystemDataset,
        MlflowModelRegistryDataset,
        MlflowModelTrackingDataset,
    )

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match="cannot load, no MLflow run to read the model from"):
        MlflowModelTrackingDataset(flavor="mlflow.sklearn").load()
    with pytest.raises(DatasetError, match=r"the model flavor 'nosuch\.flavor' cannot be found"):
        MlflowModelTrackingDataset(flavor="nosuch.flavor")
    with pytest.raises(DatasetError, match=r"mlflow\.pyfunc models need pyfunc_workflow"):
        MlflowModelTrackingDataset(flavor="mlflow.pyfunc")
    with pytest.raises(DatasetError, match="give either alias"):
        MlflowModelRegistryDataset("clf", stage_or_version=1, alias="champion")
    with pytest.raises(DatasetError, match="MlflowModelRegistryDataset cannot be saved"):
        MlflowModelRegistryDataset("clf").save(object())
    with pytest.raises(DatasetError, match="no model at"):
        MlflowModelLocalFileSystemDataset("data/model", flavor="mlflow.sklearn").load()
    assert MlflowModelRegistryDataset("clf").model_uri == "models:/clf/latest"
    assert MlflowModelRegistryDataset("clf", alias="prod").model_uri == "models:/clf@prod"


def test_model_datasets_pickle_and_artifact_path_names_the_model() -> None:
    from trackcfg.kedro.datasets import (
        MlflowModelLocalFileSystemDataset,
        MlflowModelRegistryDataset,
        MlflowModelTrackingDataset,
    )

    datasets = [
        MlflowModelTrackingDataset(flavor="mlflow.sklearn", artifact_path="clf", run_id="abc"),
        MlflowModelLocalFileSystemDataset("data/m", flavor="mlflow.sklearn"),
        MlflowModelRegistryDataset("clf", alias="champion", flavor="mlflow.sklearn"),
    ]
    for dataset in datasets:
        clone = pickle.loads(pickle.dumps(dataset))
        assert clone._describe() == dataset._describe()
    assert datasets[0]._describe()["save_args"] == {"name": "clf"}


# --------------------------------------------------------------------------------------------
# The same project with kedro-mlflow 2.0.3's model datasets.


def model_in_store(root: Path, run: Any) -> dict[str, Any]:
    """What the store holds of the model ``run`` logged, less what differs between any two
    runs (ids, times): its name, status, params and tags, the files of its artifacts, its
    MLmodel's flavors, and the registered versions of ``clf`` made from it."""
    import tempfile

    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts
    from ruamel.yaml import YAML

    client = MlflowClient(tracking_uri=store_uri(root))
    (model,) = logged_models(root, run.info.run_id)
    files: list[str] = []

    def walk(path: str | None) -> None:
        for item in client.list_logged_model_artifacts(model.model_id, path):
            if item.is_dir:
                walk(item.path)
            else:
                files.append(item.path)

    walk(None)
    with tempfile.TemporaryDirectory() as folder:
        local = download_artifacts(
            artifact_uri=f"{model.artifact_location}/MLmodel",
            dst_path=folder,
            tracking_uri=store_uri(root),
        )
        mlmodel = YAML(typ="safe").load(Path(local).read_text())
    versions = client.search_model_versions("name='clf'")
    return {
        "name": model.name,
        "status": str(model.status),
        "files": sorted(files),
        "flavors": mlmodel["flavors"],
        "mlmodel": sorted(mlmodel),
        "params": model.params,
        "tags": model.tags,
        "versions": [
            (v.version, v.status, v.run_id == run.info.run_id, v.source == model.model_uri)
            for v in versions
        ],
    }


def test_model_datasets_leave_in_the_store_what_kedro_mlflow_leaves(
    models_project: Path, tmp_path: Path
) -> None:
    """The same catalog (``classifier`` also registers ``clf``) run with kedro-mlflow 2.0.3:
    the same logged model (name, files, flavors), the same registered version, and every
    model dataset loads back a model predicting what the trained one predicted."""
    from test_kedro_datasets import with_kedro_mlflow

    write(models_project / "conf" / "base" / "catalog.yml", catalog(register=True))
    theirs, pythonpath = with_kedro_mlflow(
        models_project,
        tmp_path / "with-kedro-mlflow",
        catalog("kedro_mlflow.io.models", register=True),
    )
    kedro_run(theirs, "--pipeline", "registered", PYTHONPATH=pythonpath)
    kedro_run(models_project, "--pipeline", "registered")

    expected = reporting(models_project, "expected")
    assert reporting(models_project, "reloaded") == [expected] * 4
    assert reporting(theirs, "expected") == expected
    assert reporting(theirs, "reloaded") == [expected] * 4
    ours = model_in_store(models_project, only(runs(models_project)))
    assert ours == model_in_store(theirs, only(runs(theirs)))


def test_parallel_runner_loads_the_model_where_kedro_mlflow_cannot(
    models_project: Path, tmp_path: Path
) -> None:
    """A deliberate difference.  With ``ParallelRunner`` the node that loads ``classifier``
    runs in another worker process than the node that saved it, with its own copy of the
    catalog's dataset object.  kedro-mlflow 2.0.3 loads only the model "this object saved
    last", so the run stops; trackcfg loads ``runs:/<pipeline run>/classifier`` from the
    store (``test_other_runners_log_in_one_worker_and_load_in_another``)."""
    from test_kedro_datasets import with_kedro_mlflow

    theirs, pythonpath = with_kedro_mlflow(
        models_project, tmp_path / "with-kedro-mlflow", catalog("kedro_mlflow.io.models")
    )
    result = kedro_cli(
        theirs, "run", "--pipeline", "train", "--runner", "ParallelRunner", PYTHONPATH=pythonpath
    )

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "DatasetError: classifier: To load from a given model_uri" in output
    assert "have saved a model before" in output


# --------------------------------------------------------------------------------------------
# server.offline: a run_id in the catalog is read in the offline store, never on the server.

NOT_OFFLINE = "0123456789abcdef0123456789abcdef"


def offline_run_with_a_model(root: Path) -> tuple[str, list[float]]:
    """A run in the project's offline store (``<root>/mlruns``) holding a scikit-learn model
    named ``classifier``, as an earlier offline pipeline leaves it; and what it predicts."""
    import mlflow
    import numpy as np
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped, unused-ignore]

    x = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0]])
    model = LogisticRegression(C=10).fit(x, np.array([0, 0, 0, 1, 1, 1]))
    predicted = [round(float(p), 10) for p in model.predict_proba([[0.5], [2.2]])[:, 1]]
    mlflow.set_tracking_uri(store_uri(root))
    experiment = mlflow.create_experiment(
        "earlier", artifact_location=(root / "mlruns" / "artifacts").as_uri()
    )
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.sklearn.log_model(model, name="classifier", pip_requirements=["scikit-learn"])
    return run.info.run_id, predicted


def offline_error(root: Path, server: str) -> str:
    return (
        f"run '{NOT_OFFLINE}' (the dataset's run_id) is not in the offline store "
        f"{store_uri(root)} this pipeline logs into (server.offline), and the tracking server "
        f"{server} is not read while offline; give the run_id of a run in the offline store, "
        "or run the pipeline with the server reachable (server.offline: auto or never) to "
        "read the server's run"
    )


def test_offline_pipeline_reads_a_catalog_run_id_in_the_offline_store(
    models_project: Path,
) -> None:
    """``server.offline: always`` (a server that is never contacted): a dataset's ``run_id``
    is loaded from the offline store the pipeline logs into; a ``run_id`` that is not there
    stops the node with an error naming both stores, the server's password masked."""
    run_id, predicted = offline_run_with_a_model(models_project)
    write(
        models_project / "conf" / "local" / "mlflow.yml",
        """\
        server:
          mlflow_tracking_uri: http://trainer:s3cret@127.0.0.1:9
          offline: always
        """,
    )
    write(
        models_project / "conf" / "local" / "catalog.yml",
        f"""\
        classifier_of_run:
          type: trackcfg.kedro.datasets.MlflowModelTrackingDataset
          flavor: mlflow.sklearn
          run_id: {run_id}
          save_args: {{name: classifier}}
        missing_metric:
          type: trackcfg.kedro.datasets.MlflowMetricDataset
          key: accuracy
          run_id: {NOT_OFFLINE}
        """,
    )

    result = kedro_cli(models_project, "run", "--pipeline", "offline")

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert reporting(models_project, "later")[0][:2] == predicted
    # Rich wraps the traceback's last line: compare with whitespace collapsed.
    expected = offline_error(models_project, "http://trainer:***@127.0.0.1:9")
    assert f"DatasetError: missing_metric: {expected}" in " ".join(output.split())
    assert "s3cret" not in output
    pipeline_run = [r for r in runs(models_project) if r.info.run_id != run_id]
    assert [r.info.status for r in pipeline_run] == ["FAILED"]


def test_an_offline_worker_reads_a_run_id_in_its_pipelines_offline_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ParallelRunner worker of an offline pipeline (the environment its session hands its
    workers): the same lookup, in the offline store the parent logs into."""
    from kedro.io import DatasetError

    from trackcfg.kedro.datasets import MlflowModelTrackingDataset
    from trackcfg.kedro.datasets._target import pipeline_target

    run_id, predicted = offline_run_with_a_model(tmp_path)
    monkeypatch.setenv("TRACKCFG_PARENT_RUN_ID", run_id)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri(tmp_path))
    monkeypatch.setenv("TRACKCFG_OFFLINE_DESTINATION", "https://ml:***@tracking.example")

    dataset = MlflowModelTrackingDataset(
        flavor="mlflow.sklearn", run_id=run_id, save_args={"name": "classifier"}
    )
    reloaded = dataset.load().predict_proba([[0.5], [2.2]])[:, 1]
    assert [round(float(p), 10) for p in reloaded] == predicted
    with pytest.raises(DatasetError) as caught:
        pipeline_target(NOT_OFFLINE)
    assert str(caught.value) == offline_error(tmp_path, "https://ml:***@tracking.example")
