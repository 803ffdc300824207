"""A local store keeps every run's artifacts under ``<root>/mlruns``, experiment 0
("Default") included, whatever the current folder: a notebook in a sibling folder leaves no
file where it runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import project_folder, store_uri

from trackcfg import TrackingSession

CONFIG = "tracking:\n  experiment:\n    name: Default\n  logging:\n    mode: {mode}\n"


def files_under(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())


def log_from_a_sibling_folder(root: Path, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    cwd.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(cwd)
    with TrackingSession.from_yaml(root / "mlflow.yml", name="notebook") as s:
        assert s.experiment_id == "0"
        s.log_text("hello", "notes/a.txt")
        s.log_dict({"lr": 0.1}, "config.json")
    assert s.run_id is not None
    return s.run_id


@pytest.mark.parametrize("mode", ["sync", "buffered"])
def test_a_new_store_set_up_from_another_folder_keeps_default_artifacts_in_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    from mlflow import MlflowClient

    root = project_folder(tmp_path / "proj", config=CONFIG.format(mode=mode))
    notebooks = tmp_path / "notebooks"
    run_id = log_from_a_sibling_folder(root, notebooks, monkeypatch)

    assert files_under(notebooks) == []
    client = MlflowClient(tracking_uri=store_uri(root))
    artifacts = root / "mlruns" / "artifacts" / "0" / run_id / "artifacts"
    assert client.get_run(run_id).info.artifact_uri == artifacts.as_uri()
    assert (artifacts / "notes" / "a.txt").read_text() == "hello"
    assert (artifacts / "config.json").is_file()


def test_a_store_mlflow_set_up_elsewhere_sends_new_default_runs_into_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store plain MLflow set up from another folder (its experiment 0 points at
    ``<that folder>/mlruns/0``): a session's run of experiment 0 still keeps its artifacts in
    the project; the earlier run keeps its own location."""
    import mlflow

    root = project_folder(tmp_path / "proj", config=CONFIG.format(mode="sync"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (root / "mlruns").mkdir()
    client = mlflow.MlflowClient(tracking_uri=store_uri(root))
    earlier = client.create_run("0").info
    assert earlier.artifact_uri.startswith(str(elsewhere))

    run_id = log_from_a_sibling_folder(root, tmp_path / "notebooks", monkeypatch)

    assert files_under(tmp_path / "notebooks") == []
    assert files_under(elsewhere) == []
    artifacts = root / "mlruns" / "artifacts" / "0" / run_id / "artifacts"
    assert (artifacts / "notes" / "a.txt").read_text() == "hello"
    assert client.get_run(earlier.run_id).info.artifact_uri == earlier.artifact_uri
