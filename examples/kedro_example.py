"""A Kedro project tracked by trackcfg, generated offline and run once.

    pip install "trackcfg[kedro]"
    python examples/kedro_example.py [FOLDER]      # default: a new temporary folder

It runs `kedro new` (built-in template, no network), adds a two-node pipeline and a
`conf/base/mlflow.yml`, then `kedro run --params lr=0.05`. The trackcfg hook registers itself
(entry point), so nothing is added to settings.py. The last line printed is the run id.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

PACKAGE = "spaceflights_lite"

PIPELINE = '''\
"""Two nodes: plain mlflow calls inside a node land in the pipeline's run."""

from kedro.pipeline import Pipeline, node


def train(lr: float, model: dict) -> float:
    import mlflow

    score = 1.0 - lr * model["depth"]
    mlflow.log_metric("train_score", score)
    return score


def evaluate(score: float) -> None:
    import mlflow

    mlflow.log_metric("eval_score", score * 0.9)


def register_pipelines() -> dict[str, Pipeline]:
    pipeline = Pipeline([
        node(train, ["params:lr", "params:model"], "score", name="train"),
        node(evaluate, "score", None, name="evaluate"),
    ])
    return {"__default__": pipeline, "training": pipeline}
'''

MLFLOW_YML = """\
# The same keys as kedro-mlflow's mlflow.yml: an existing file works unchanged.
server:
  mlflow_tracking_uri: mlruns     # <project>/mlruns/mlflow.db, whatever folder kedro runs in
tracking:
  experiment:
    name: null                    # null: the package name
  params:
    dict_params:
      flatten: true               # model: {depth: 3} is logged as model.depth
"""

PARAMETERS = """\
lr: 0.1
model:
  depth: 3
  kind: tree
"""


def kedro(*args: str, cwd: Path) -> str:
    exe = Path(sys.executable).with_name("kedro")
    done = subprocess.run(
        [str(exe), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env={"KEDRO_DISABLE_TELEMETRY": "1", **os.environ},
    )
    if done.returncode != 0:
        raise SystemExit(f"kedro {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def make_project(parent: Path) -> Path:
    kedro(
        "new",
        "--name",
        "spaceflights-lite",
        "--tools",
        "none",
        "--example",
        "n",
        "-tc",
        "no",
        cwd=parent,
    )
    project = parent / "spaceflights-lite"
    (project / "src" / PACKAGE / "pipeline_registry.py").write_text(PIPELINE)
    (project / "conf" / "base" / "mlflow.yml").write_text(MLFLOW_YML)
    (project / "conf" / "base" / "parameters.yml").write_text(PARAMETERS)
    return project


def main() -> None:
    parent = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    parent.mkdir(parents=True, exist_ok=True)
    project = make_project(parent)
    kedro("run", "--params", "lr=0.05", cwd=project)

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(PACKAGE)
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    print(
        textwrap.dedent(f"""\
        project: {project}
        run {run.info.run_name!r}: {run.info.status}
          params:  {dict(sorted(run.data.params.items()))}
          metrics: {dict(sorted(run.data.metrics.items()))}
          command: {run.data.tags.get("kedro.command")}
        view it: cd {project} && kedro trackcfg ui""")
    )
    print(run.info.run_id)


if __name__ == "__main__":
    main()
