"""The pipelines of the Kedro project that test_kedro.py generates.

Copied over the generated project's ``pipeline_registry.py``.  Nodes log with plain
``mlflow.*`` calls, as user code does, and record where they ran (thread, process) so a test
can tell that the runner really moved them.  mlflow is imported inside the nodes: a project
whose pipelines are never run (``kedro --help``) must not pay for it.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset
from kedro.pipeline import Pipeline, node


class TextFile(AbstractDataset[str, str]):
    """A text file (Kedro's core has no file datasets): ``slow_output``'s output."""

    def __init__(self, filepath: str) -> None:
        self._path = Path(filepath)

    def _load(self) -> str:
        return self._path.read_text()

    def _save(self, data: str) -> None:
        self._path.write_text(data)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._path)}


def fit(lr: float, model: dict[str, Any], parameters: dict[str, Any]) -> float:
    import mlflow

    mlflow.log_metric("loss", lr * 2)
    mlflow.set_tag("fit.thread", threading.current_thread().name)
    mlflow.set_tag("fit.pid", str(os.getpid()))
    return lr * 3


def tune(lr: float) -> float:
    import mlflow

    with mlflow.start_run(run_name="trial", nested=True):
        mlflow.log_metric("trial_loss", lr / 2)
    return lr / 2


def report(score: float, trial: float, lr: float) -> None:
    import mlflow

    mlflow.log_metric("score", score + trial)
    mlflow.set_tag("report.pid", str(os.getpid()))


def prepare(alpha: float) -> float:
    return alpha


def explode(value: float) -> None:
    raise ValueError(f"node failed on purpose with {value}")


def wait_for_signal(lr: float) -> None:
    marker = os.environ.get("DEMO_MARKER")
    if marker:
        Path(marker).write_text(str(os.getpid()))
    time.sleep(120)


def slow_result(lr: float) -> str:
    """Writes DEMO_MARKER (its pid) once started, then takes a minute to give its output."""
    Path(os.environ["DEMO_MARKER"]).write_text(str(os.getpid()))
    time.sleep(60)
    return "computed after a minute"


def interrupt(value: float) -> None:
    raise KeyboardInterrupt


def read_secret(lr: float) -> None:
    import mlflow

    token = os.environ.get("DEMO_API_TOKEN", "")
    mlflow.set_tag("token.length", str(len(token)))


def register_pipelines() -> dict[str, Pipeline]:
    train = Pipeline(
        [
            node(fit, ["params:lr", "params:model", "parameters"], "score", name="fit"),
            node(tune, "params:lr", "trial", name="tune"),
            node(report, ["score", "trial", "params:lr"], None, name="report"),
        ]
    )
    return {
        "__default__": train,
        "train": train,
        "fail": Pipeline(
            [
                node(prepare, "params:alpha", "prepared", name="prepare"),
                node(explode, "prepared", None, name="explode"),
            ]
        ),
        "plain": Pipeline([node(prepare, "params:alpha", "prepared", name="prepare")]),
        "interrupt": Pipeline(
            [
                node(prepare, "params:alpha", "prepared", name="prepare"),
                node(interrupt, "prepared", None, name="interrupt"),
            ]
        ),
        "slow": Pipeline([node(wait_for_signal, "params:lr", None, name="wait")]),
        # Its output "result" is a TextFile when the test's catalog says so.
        "slow_output": Pipeline([node(slow_result, "params:lr", "result", name="slow_result")]),
        "secret": Pipeline([node(read_secret, "params:lr", None, name="read_secret")]),
    }
