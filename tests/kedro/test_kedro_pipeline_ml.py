"""``trackcfg.kedro.pipeline`` on a real Kedro project: a kedro-mlflow project built on
``pipeline_ml_factory`` is migrated with ``kedro trackcfg migrate`` and run with
``kedro run``; the model its training run logged is loaded in a fresh process, without Kedro's
session, and predicts as the model kedro-mlflow 2.0.3 logs for the same project.

One project per module (``kedro run`` and model logging cost seconds each): the runs are
made once, by module fixtures, and the tests read them.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import run_python, store_uri, write
from test_kedro import PACKAGE, kedro_cli, kedro_template, only, runs  # noqa: F401

pytest.importorskip("kedro_datasets")
pytest.importorskip("sklearn")

CATALOG = """\
instances:  # the model's input: its data also gives the model's signature
  type: pandas.CSVDataset
  filepath: data/01_raw/instances.csv
scale:
  type: json.JSONDataset
  filepath: data/06_models/scale.json
classifier:
  type: pickle.PickleDataset
  filepath: data/06_models/classifier.pkl
"""
INSTANCES = "x,y\n0.0,0\n1.0,0\n2.0,0\n2.5,1\n3.0,1\n4.0,1\n5.0,1\n"
NEW_DATA = {"x": [0.5, 2.2, 2.6, 4.5], "y": [0, 0, 0, 0]}
PREDICT = """\
import json, sys
import mlflow
import pandas as pd

mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
data = pd.DataFrame(json.loads(sys.argv[3]))
print(json.dumps({
    "default": model.predict(data).to_dict("list"),
    "strict": model.predict(data, params={"threshold": 0.9}).to_dict("list"),
    "session": "kedro.framework.session.session" in sys.modules,
}))
"""
MODEL_FILES = {
    "MLmodel",
    "conda.yaml",
    "python_env.yaml",
    "python_model.pkl",
    "requirements.txt",
    "artifacts/classifier.pkl",
    "artifacts/params_threshold.pkl",
    "artifacts/scale.json",
}


def _kedro_mlflow_project(template: Path, folder: Path) -> Path:
    project = Path(shutil.copytree(template, folder))
    shutil.copy(
        Path(__file__).with_name("kedro_pipeline_ml_pipelines.py"),
        project / "src" / PACKAGE / "pipeline_registry.py",
    )
    write(project / "conf" / "base" / "catalog.yml", CATALOG)
    parameters = project / "conf" / "base" / "parameters.yml"
    parameters.write_text(parameters.read_text() + "threshold: 0.5\nregularization: 1.0\n")
    write(project / "data" / "01_raw" / "instances.csv", INSTANCES)
    return project


@contextlib.contextmanager
def _without_tracking_variables() -> Iterator[list[str]]:
    """A module fixture runs before each test's hermetic environment (conftest): what an
    earlier module on this worker left in ``MLFLOW_*``/``TRACKCFG_*`` must not reach its
    ``kedro run`` (the run would go to another store, or not be tracked)."""
    with pytest.MonkeyPatch.context() as patch:
        dropped = [
            name
            for name in os.environ
            if name.startswith("MLFLOW_")
            or (name.startswith("TRACKCFG_") and not name.startswith("TRACKCFG_TEST_"))
        ]
        for name in dropped:
            patch.delenv(name)
        yield dropped


@pytest.fixture(scope="module")
def ours(kedro_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """The kedro-mlflow project, migrated by ``kedro trackcfg migrate``, after ``kedro run``
    with ParallelRunner (its nodes in worker processes, the model logged by the main one)."""
    project = _kedro_mlflow_project(kedro_template, tmp_path_factory.mktemp("ours") / "p")
    with _without_tracking_variables() as dropped:
        migrated = kedro_cli(project, "trackcfg", "migrate")
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        result = kedro_cli(project, "run", "--pipeline", "training", "--runner", "ParallelRunner")
    assert result.returncode == 0, result.stdout + result.stderr
    assert runs(project), f"no run in {store_uri(project)} (variables dropped: {dropped})\n" + (
        result.stdout + result.stderr
    )
    return project


@pytest.fixture(scope="module")
def theirs(kedro_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """The same project run with kedro-mlflow 2.0.3 (skipped where it is not given)."""
    from test_kedro_datasets import with_kedro_mlflow

    source = _kedro_mlflow_project(kedro_template, tmp_path_factory.mktemp("source") / "p")
    project, pythonpath = with_kedro_mlflow(
        source, tmp_path_factory.mktemp("theirs") / "p", CATALOG
    )
    with _without_tracking_variables():
        result = kedro_cli(project, "run", "--pipeline", "training", PYTHONPATH=pythonpath)
    assert result.returncode == 0, result.stdout + result.stderr
    return project


def logged_model(project: Path) -> Any:
    """The pipeline's run and the one model logged into it."""
    from mlflow import MlflowClient

    run = only(runs(project))
    client = MlflowClient(tracking_uri=store_uri(project))
    experiments = [e.experiment_id for e in client.search_experiments()]
    models = list(client.search_logged_models(experiments))
    assert [m.source_run_id for m in models] == [run.info.run_id]
    return run, models[0]


def model_files(model: Any) -> dict[str, bytes]:
    """The files of a logged model (but ``registered_model_meta``, which MLflow adds to a
    local model's folder when it is first loaded)."""
    folder = Path(model.artifact_location.removeprefix("file://"))
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and p.name != "registered_model_meta"
    }


def expected_probabilities(project: Path) -> list[float]:
    """What the inference node computes for ``NEW_DATA`` with the fitted datasets the
    training run left in the project's data folder."""
    import numpy as np

    scale = json.loads((project / "data" / "06_models" / "scale.json").read_text())
    with (project / "data" / "06_models" / "classifier.pkl").open("rb") as stream:
        classifier = pickle.load(stream)
    x = (np.array(NEW_DATA["x"]).reshape(-1, 1) - scale["mean"]) / scale["std"]
    return [round(float(p), 10) for p in classifier.predict_proba(x)[:, 1]]


def predict_in_fresh_process(project: Path, uri: str, *paths: str) -> dict[str, Any]:
    """What the model at ``uri`` predicts in a new Python process outside the project, with
    the project's package (and ``paths``) importable."""
    from helpers import subprocess_env

    env = subprocess_env(PYTHONPATH=os.pathsep.join([str(project / "src"), *paths]))
    result = run_python(
        "-c", PREDICT, store_uri(project), uri, json.dumps(NEW_DATA), env=env, timeout=240
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------------


def test_migrated_training_run_logs_the_inference_pipeline_as_a_pyfunc_model(ours: Path) -> None:
    registry = (ours / "src" / PACKAGE / "pipeline_registry.py").read_text()
    assert "from trackcfg.kedro.pipeline import pipeline_ml_factory" in registry
    run, model = logged_model(ours)
    assert run.info.status == "FINISHED"
    assert model.name == "model"
    assert run.data.params["regularization"] == "1.0"
    assert model.params["regularization"] == "1.0"  # buffered params were sent first
    files = model_files(model)
    assert set(files) == MODEL_FILES
    mlmodel = files["MLmodel"].decode()
    assert "python_function:" in mlmodel
    assert "loader_module: mlflow.pyfunc.model" in mlmodel
    assert "python_model: python_model.pkl" in mlmodel
    signature = json.loads(_yaml(mlmodel)["signature"]["inputs"])
    assert [(c["name"], c["type"]) for c in signature] == [("x", "double"), ("y", "long")]
    params = json.loads(_yaml(mlmodel)["signature"]["params"])
    assert {p["name"]: p["default"] for p in params} == {
        "threshold": 0.5,
        "runner": "SequentialRunner",
    }
    local = (ours / "data" / "06_models" / "classifier.pkl").read_bytes()
    assert files["artifacts/classifier.pkl"] == local


def test_model_predicts_in_a_fresh_process_without_a_kedro_session(ours: Path) -> None:
    run, model = logged_model(ours)
    by_run = predict_in_fresh_process(ours, f"runs:/{run.info.run_id}/model")
    by_id = predict_in_fresh_process(ours, f"models:/{model.model_id}")
    assert by_run == by_id
    assert by_run["session"] is False
    proba = expected_probabilities(ours)
    assert by_run["default"]["proba"] == by_run["strict"]["proba"] == proba
    assert by_run["default"]["label"] == [int(p > 0.5) for p in proba]
    assert by_run["strict"]["label"] == [int(p > 0.9) for p in proba]  # params: threshold
    assert by_run["default"]["label"] != by_run["strict"]["label"]


def test_same_model_files_flavors_and_predictions_as_kedro_mlflow(ours: Path, theirs: Path) -> None:
    _, our_model = logged_model(ours)
    _, their_model = logged_model(theirs)
    our_files, their_files = model_files(our_model), model_files(their_model)
    assert set(our_files) == set(their_files)
    ours_ml, theirs_ml = (
        _yaml(our_files["MLmodel"].decode()),
        _yaml(their_files["MLmodel"].decode()),
    )
    assert ours_ml["flavors"].keys() == theirs_ml["flavors"].keys()
    assert ours_ml["signature"] == theirs_ml["signature"]
    for name in ("artifacts/params_threshold.pkl", "artifacts/scale.json"):
        assert our_files[name] == their_files[name]
    from test_kedro_datasets import REFERENCE_ENV

    # kedro-mlflow's model needs kedro-mlflow where it is loaded; trackcfg's needs trackcfg.
    reference = os.environ[REFERENCE_ENV]
    their_uri = f"models:/{their_model.model_id}"
    assert predict_in_fresh_process(ours, f"models:/{our_model.model_id}") == (
        predict_in_fresh_process(theirs, their_uri, reference)
    )


def _yaml(text: str) -> Any:
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load(text)


# --------------------------------------------------------------------------------------------
# Without a project run.


def test_pipeline_ml_and_kedro_pipeline_model_pickle(tmp_path: Path) -> None:
    """``ParallelRunner`` pickles what it hands its workers; MLflow pickles the model."""
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        registry = _trackcfg_registry(tmp_path)
        pipelines = registry.register_pipelines()
    finally:
        sys.path.remove(str(Path(__file__).parent))
    from kedro.io import DataCatalog, MemoryDataset
    from kedro_datasets.pickle import PickleDataset

    from trackcfg.kedro.pipeline import KedroPipelineModel, PipelineML

    training = pipelines["training"]
    assert isinstance(training, PipelineML)
    assert pickle.loads(pickle.dumps(training)) == training
    catalog = DataCatalog(
        datasets={
            "scale": PickleDataset(filepath=str(tmp_path / "s.pkl")),
            "classifier": PickleDataset(filepath=str(tmp_path / "c.pkl")),
            "params:threshold": MemoryDataset(0.5),
        }
    )
    model = KedroPipelineModel(training, catalog, input_name="instances")
    copy = pickle.loads(pickle.dumps(model))
    assert copy.pipeline.outputs() == {"predictions"}
    assert copy.copy_mode == {
        "classifier": "assign",
        "instances": "assign",
        "params:threshold": "assign",
        "scale": "assign",
    }


def _trackcfg_registry(tmp_path: Path) -> Any:
    import importlib.util

    text = Path(__file__).with_name("kedro_pipeline_ml_pipelines.py").read_text()
    text = text.replace("from kedro_mlflow.pipeline", "from trackcfg.kedro.pipeline")
    path = write(tmp_path / "pipeline_ml_registry.py", text)
    spec = importlib.util.spec_from_file_location("pipeline_ml_registry", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _identity(x: Any) -> Any:
    return x


def _pair(x: Any, y: Any) -> Any:
    return x


def test_pipeline_ml_factory_refuses_what_kedro_mlflow_refuses() -> None:
    from kedro.pipeline import Pipeline, node

    from trackcfg.kedro.pipeline import KedroMlflowPipelineMLError, pipeline_ml_factory

    training = Pipeline([node(_identity, "data", "model", name="fit")])
    two_outputs = Pipeline(
        [node(_pair, ["model", "data"], "a", name="a"), node(_identity, "data", "b", name="b")]
    )
    inference = Pipeline([node(_pair, ["model", "new"], "predictions", name="predict")])
    with pytest.raises(KedroMlflowPipelineMLError, match="one and only one output"):
        pipeline_ml_factory(training, two_outputs, input_name="data")
    with pytest.raises(KedroMlflowPipelineMLError) as caught:
        pipeline_ml_factory(training, inference, input_name="data")
    assert str(caught.value) == (
        "input_name='data' but it must be an input of 'inference', i.e. one of:\n"
        "    - model\n    - new"
    )
    free = Pipeline([node(_pair, ["encoder", "new"], "predictions", name="predict")])
    with pytest.raises(KedroMlflowPipelineMLError, match="free for the inference pipeline"):
        pipeline_ml_factory(training, free, input_name="new")
    with pytest.raises(KedroMlflowPipelineMLError, match="Both 'artifact_path'"):
        pipeline_ml_factory(
            training, inference, "new", log_model_kwargs={"name": "a", "artifact_path": "b"}
        )
    assert isinstance(KedroMlflowPipelineMLError("x"), ValueError)

    ml = pipeline_ml_factory(training, inference, "new", log_model_kwargs={"artifact_path": "clf"})
    assert ml.log_model_kwargs == {"signature": "auto", "name": "clf"}
    # Kedro sums the pipelines it runs from an empty one, then filters: the model stays.
    assert (Pipeline([]) + ml) is ml
    assert type(ml.filter(node_names=["fit"])) is type(ml)
    other = Pipeline([node(_identity, "x", "y", name="other")])
    assert type(ml + other) is Pipeline  # combined with other nodes: no model


def test_kedro_pipeline_model_needs_persisted_inputs() -> None:
    from kedro.io import DataCatalog, MemoryDataset
    from kedro.pipeline import Pipeline, node

    from trackcfg.kedro.pipeline import KedroPipelineModel, KedroPipelineModelError

    inference = Pipeline([node(_pair, ["model", "new"], "predictions", name="predict")])
    with pytest.raises(KedroPipelineModelError, match="Dataset 'model' is not persisted"):
        KedroPipelineModel(inference, DataCatalog({"model": MemoryDataset(1)}), "new")
    with pytest.raises(KedroPipelineModelError, match="must contain 'model' dataset"):
        KedroPipelineModel(inference, DataCatalog(), "new")


def test_offline_training_run_keeps_the_model_and_sync_carries_it_to_the_server(
    ours: Path, tmp_path: Path, mlflow_server: str
) -> None:
    """``server.offline: always``: the model is logged into the offline run, with its folder
    among the run's artifacts, and after ``kedro trackcfg sync`` the server's run loads it
    (``runs:/<uploaded run>/model``) and predicts as the online model does."""
    from mlflow import MlflowClient

    project = Path(shutil.copytree(ours, tmp_path / "offline"))
    write(
        project / "conf" / "local" / "mlflow.yml",
        f"""\
        server:
          mlflow_tracking_uri: {mlflow_server}
          offline: always
        tracking:
          experiment:
            name: offline-pipeline-ml
        """,
    )
    result = kedro_cli(project, "run", "--pipeline", "training")
    assert result.returncode == 0, result.stdout + result.stderr
    local = MlflowClient(tracking_uri=store_uri(project))
    (offline,) = local.search_runs(
        [e.experiment_id for e in local.search_experiments()],
        filter_string="tags.`trackcfg.offline.destination` != ''",
    )
    # Among the run's own artifacts (MLflow's listing of "model" would show the logged model).
    run_artifacts = Path(offline.info.artifact_uri.removeprefix("file://"))
    assert (run_artifacts / "model" / "MLmodel").is_file()
    assert (run_artifacts / "model" / "artifacts" / "classifier.pkl").is_file()

    synced = kedro_cli(project, "trackcfg", "sync")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    server = MlflowClient(tracking_uri=mlflow_server)
    experiment = server.get_experiment_by_name("offline-pipeline-ml")
    assert experiment is not None
    (uploaded,) = server.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`trackcfg.sync.source_run` = '{offline.info.run_id}'",
    )
    assert uploaded.data.params["regularization"] == "1.0"
    from helpers import subprocess_env

    env = subprocess_env(PYTHONPATH=str(project / "src"))
    uri = f"runs:/{uploaded.info.run_id}/model"
    predicted = run_python(
        "-c", PREDICT, mlflow_server, uri, json.dumps(NEW_DATA), env=env, timeout=240
    )
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(predicted.stdout.strip().splitlines()[-1]) == predict_in_fresh_process(
        ours, f"runs:/{only(runs(ours)).info.run_id}/model"
    )


def test_importing_the_pipeline_module_does_not_import_mlflow() -> None:
    code = (
        "import sys\n"
        "from trackcfg.kedro.pipeline import PipelineML, pipeline_ml_factory\n"
        "print('mlflow imported:', 'mlflow' in sys.modules)\n"
        "from trackcfg.kedro.pipeline import KedroPipelineModel\n"
        "print('mlflow imported:', 'mlflow' in sys.modules, KedroPipelineModel.__base__)\n"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stdout.splitlines() if line.startswith("mlflow imported:")]
    assert said == [
        "mlflow imported: False",
        "mlflow imported: True <class 'mlflow.pyfunc.model.PythonModel'>",
    ]


def test_a_model_that_cannot_be_packaged_fails_the_run_with_the_reason(
    ours: Path, tmp_path: Path
) -> None:
    """An inference input the training run keeps in memory only (not in the catalog): the
    run ends FAILED and ``kedro run`` fails with kedro-mlflow's error."""
    from mlflow import MlflowClient

    project = Path(shutil.copytree(ours, tmp_path / "unpackaged"))
    catalog = project / "conf" / "base" / "catalog.yml"
    catalog.write_text(CATALOG.replace("scale:\n", "_scale_on_disk:\n"))
    result = kedro_cli(project, "run", "--pipeline", "training")
    assert result.returncode != 0
    assert "KedroPipelineModelError" in result.stdout + result.stderr
    assert "Dataset 'scale' is not persisted" in " ".join((result.stdout + result.stderr).split())
    client = MlflowClient(tracking_uri=store_uri(project))
    latest = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], order_by=["start_time DESC"]
    )[0]
    assert latest.info.status == "FAILED"
    assert latest.info.run_id != only(runs(ours)).info.run_id
