"""The session's logging API beside MLflow's fluent one (``log_param``, ``set_tag``,
``log_artifacts``, ``log_figure``, ``log_table``) and the values it refuses, read back with
MLflow's own client from a SQLite store and a real ``mlflow server``."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display in tests

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd  # type: ignore[import-untyped, import-not-found, unused-ignore]
import pytest
from helpers import project_folder
from matplotlib.figure import Figure
from mlflow import MlflowClient

from trackcfg import RunError, TrackingSession, load_config
from trackcfg.exceptions import ConfigError

MODES = ["buffered", "sync"]


@pytest.fixture
def figure() -> Iterator[Figure]:
    fig, ax = plt.subplots(figsize=(2, 1), dpi=100)
    ax.plot([0, 1], [2, 3])
    yield fig
    plt.close(fig)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG file, from its IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def make_folder(root: Path) -> Path:
    """``data/`` with a file and a subfolder holding another file."""
    folder = root / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("A")
    (folder / "sub" / "b.txt").write_text("B")
    return folder


def local_session(
    tmp_path: Path, migrated_sqlite_db: Path, mode: str, **overrides: Any
) -> TrackingSession:
    root = project_folder(tmp_path / "proj", config="", store=migrated_sqlite_db)
    config = load_config(root, overrides={"tracking.logging.mode": mode, **overrides})
    return TrackingSession(config, name="api")


def use_new_methods(session: TrackingSession, tmp_path: Path, figure: Figure) -> None:
    """The calls of the tests below, made in one run."""
    folder = make_folder(tmp_path)
    session.log_param("lr", 0.1)
    session.set_tag("stage", "dev")
    session.log_artifacts(folder)
    session.log_artifacts(folder, artifact_path="inputs")
    session.log_figure(figure, "plots/curve.png")
    figure.set_size_inches(8, 8)  # after the call: not what was logged
    session.log_table({"x": [1, 2], "y": ["a", "b"]}, "tables/t.json")
    session.log_table(pd.DataFrame({"x": [3], "y": ["c"]}), "tables/t.json")


def check_new_methods(client: MlflowClient, run_id: str, tmp_path: Path) -> None:
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.1"}
    assert run.data.tags["stage"] == "dev"
    assert json.loads(run.data.tags["mlflow.loggedArtifacts"]) == [
        {"path": "tables/t.json", "type": "table"}
    ]
    listed = {
        f.path
        for top in ("", "sub", "inputs", "inputs/sub", "plots", "tables")
        for f in client.list_artifacts(run_id, top or None)
        if not f.is_dir
    }
    assert listed == {
        "a.txt",
        "sub/b.txt",
        "inputs/a.txt",
        "inputs/sub/b.txt",
        "plots/curve.png",
        "tables/t.json",
    }
    dest = tmp_path / "down"
    assert Path(client.download_artifacts(run_id, "inputs/sub/b.txt", str(dest))).read_text() == "B"
    # Rendered at the call: 2 x 1 inches at 100 dpi, not the 8 x 8 it was resized to after.
    assert png_size(Path(client.download_artifacts(run_id, "plots/curve.png", str(dest)))) == (
        200,
        100,
    )
    # load_table finds the runs through the fluent API's store (and the run's table tag).
    mlflow.set_tracking_uri(client.tracking_uri)
    table = client.load_table(run.info.experiment_id, "tables/t.json", run_ids=[run_id])
    assert table.to_dict(orient="list") == {"x": [1, 2, 3], "y": ["a", "b", "c"]}
    raw = Path(client.download_artifacts(run_id, "tables/t.json", str(dest))).read_text()
    assert json.loads(raw) == {"columns": ["x", "y"], "data": [[1, "a"], [2, "b"], [3, "c"]]}


@pytest.mark.parametrize("mode", MODES)
def test_fluent_style_methods_land_in_a_sqlite_store(
    tmp_path: Path, migrated_sqlite_db: Path, figure: Figure, mode: str
) -> None:
    with local_session(tmp_path, migrated_sqlite_db, mode) as s:
        use_new_methods(s, tmp_path, figure)
    assert s.run_id is not None
    check_new_methods(MlflowClient(tracking_uri=s.tracking_uri), s.run_id, tmp_path)


def test_fluent_style_methods_land_on_a_tracking_server(
    tmp_path: Path, mlflow_server: str, figure: Figure, request: pytest.FixtureRequest
) -> None:
    root = project_folder(tmp_path / "proj", config="")
    config = load_config(
        root,
        overrides={
            "server.mlflow_tracking_uri": mlflow_server,
            "tracking.experiment.name": f"api-{request.node.name}",
        },
    )
    with TrackingSession(config, name="api") as s:
        use_new_methods(s, tmp_path, figure)
    assert s.run_id is not None
    check_new_methods(MlflowClient(tracking_uri=mlflow_server), s.run_id, tmp_path)


def test_buffered_artifacts_are_copies_in_the_journal_taken_at_the_call(
    tmp_path: Path, migrated_sqlite_db: Path, figure: Figure
) -> None:
    """A folder changed after ``log_artifacts`` is uploaded as it was at the call."""
    with local_session(tmp_path, migrated_sqlite_db, "buffered") as s:
        folder = make_folder(tmp_path)
        s.log_artifacts(folder, "snap")
        (folder / "a.txt").write_text("changed")
        (folder / "sub" / "b.txt").unlink()
    assert s.run_id is not None
    client = MlflowClient(tracking_uri=s.tracking_uri)
    dest = tmp_path / "down"
    assert Path(client.download_artifacts(s.run_id, "snap/a.txt", str(dest))).read_text() == "A"
    assert Path(client.download_artifacts(s.run_id, "snap/sub/b.txt", str(dest))).read_text() == "B"


@pytest.mark.parametrize("mode", MODES)
def test_wrong_arguments_are_refused_before_anything_is_logged(
    tmp_path: Path, migrated_sqlite_db: Path, mode: str
) -> None:
    with local_session(tmp_path, migrated_sqlite_db, mode) as s:
        with pytest.raises(RunError, match=r"log_artifacts: .*missing is not a folder"):
            s.log_artifacts(tmp_path / "missing")
        with pytest.raises(RunError, match=r"log_figure: list is not a matplotlib or plotly"):
            s.log_figure([1, 2], "f.png")
        with pytest.raises(RunError, match=r"log_table: artifact_file 't.csv' must end in .json"):
            s.log_table({"x": [1]}, "t.csv")
        with pytest.raises(RunError, match=r"log_table: data is a list; pass a dict of columns"):
            s.log_table([1, 2], "t.json")
        with pytest.raises(RunError, match=r"log_figure: artifact_file '/abs.png'"):
            s.log_figure(Figure(), "/abs.png")
    assert s.run_id is not None
    client = MlflowClient(tracking_uri=s.tracking_uri)
    assert client.list_artifacts(s.run_id) == []
    assert client.get_run(s.run_id).info.status == "FINISHED"


@pytest.mark.parametrize(
    ("call", "shown"),
    [
        (lambda s: s.log_metrics({"acc": "high"}), "metric 'acc' = 'high' (str)"),
        (lambda s: s.log_metric("x", None), "metric 'x' = None (NoneType)"),
        (lambda s: s.log_metric("x", "0.9"), "metric 'x' = '0.9' (str)"),
        (lambda s: s.log_metric("x", True), "metric 'x' = True (bool)"),
        (lambda s: s.log_metrics({"ok": 1.0, "z": 1j}), "metric 'z' = 1j (complex)"),
    ],
)
@pytest.mark.parametrize("mode", MODES)
def test_a_metric_value_that_is_not_a_number_is_a_run_error_naming_key_and_value(
    tmp_path: Path, migrated_sqlite_db: Path, mode: str, call: Any, shown: str
) -> None:
    with local_session(tmp_path, migrated_sqlite_db, mode) as s:
        with pytest.raises(RunError) as raised:
            call(s)
        assert not isinstance(raised.value, ConfigError)
        assert str(raised.value) == (
            f"not a number: {shown}; MLflow stores a metric as a 64-bit float: pass an int, "
            "a float or a numpy scalar"
        )
        s.log_metrics({"np32": np.float32(0.5), "np64": np.int64(3), "plain": 2})
    assert s.run_id is not None
    metrics = MlflowClient(tracking_uri=s.tracking_uri).get_run(s.run_id).data.metrics
    assert metrics == {"np32": 0.5, "np64": 3.0, "plain": 2.0}  # nothing of the refused call


def test_logging_outside_the_block_is_refused(
    tmp_path: Path, migrated_sqlite_db: Path, figure: Figure
) -> None:
    session = local_session(tmp_path, migrated_sqlite_db, "buffered")
    with pytest.raises(RunError, match="session 'api' has not started; log inside the with"):
        session.log_param("a", 1)
    with session:
        pass
    calls: list[Callable[[], None]] = [
        lambda: session.set_tag("a", 1),
        lambda: session.log_artifacts(tmp_path),
        lambda: session.log_figure(figure, "f.png"),
        lambda: session.log_table({"x": [1]}, "t.json"),
    ]
    for call in calls:
        with pytest.raises(RunError, match="session 'api' has ended; log inside the with block"):
            call()


def test_a_disabled_session_logs_nothing_with_the_new_methods(
    tmp_path: Path, figure: Figure, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = project_folder(tmp_path / "proj", config="")
    monkeypatch.setenv("TRACKCFG_DISABLE", "1")
    with TrackingSession(load_config(root), name="api") as s:
        use_new_methods(s, tmp_path, figure)
    assert s.run_id is None
    assert not (root / "mlruns").exists()
