"""Issue 9: quick ACKs against a default `mlflow server` (several uvicorn workers, no
TCP_NODELAY: ~40 ms delayed-ACK stall per request) and a `--workers 1` one, in the same run.

Same work both ways: an empty run (enter+exit), 1,000 params, 10,000 metric points (100 keys x
100 steps); trackcfg's session against MLflow's own client doing the same batched calls."""

from __future__ import annotations

import contextlib
import io
import time
import uuid

import mlflow
from _common import QUICK, interleaved, mlflow_server, ms, table
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from trackcfg import TrackingSession, load_config

PARAMS = 100 if QUICK else 1000
KEYS, STEPS = (10, 10) if QUICK else (100, 100)


def cases(url: str) -> dict[str, float]:
    mlflow.set_tracking_uri(url)
    client = MlflowClient(url)
    exp = client.create_experiment(f"raw-{uuid.uuid4().hex}")
    cfg = load_config(
        overrides={"server.mlflow_tracking_uri": url, "tracking.experiment.name": "transport"}
    )
    params = {f"p{i}": i for i in range(PARAMS)}

    def t_empty() -> None:
        with TrackingSession(cfg, name="bench"):
            pass

    def r_empty() -> None:
        with mlflow.start_run(experiment_id=exp):
            pass

    def t_params() -> None:
        with TrackingSession(cfg, name="bench") as s:
            s.log_params(params)

    def r_params() -> None:
        with mlflow.start_run(experiment_id=exp) as run:
            items = [Param(k, str(v)) for k, v in params.items()]
            for i in range(0, len(items), 100):
                client.log_batch(run.info.run_id, params=items[i : i + 100])

    def t_metrics() -> None:
        with TrackingSession(cfg, name="bench") as s:
            for step in range(STEPS):
                s.log_metrics({f"m{k}": k for k in range(KEYS)}, step=step)

    def r_metrics() -> None:
        with mlflow.start_run(experiment_id=exp) as run:
            now = int(time.time() * 1000)
            for step in range(STEPS):
                client.log_batch(
                    run.info.run_id, metrics=[Metric(f"m{k}", k, now, step) for k in range(KEYS)]
                )

    with contextlib.redirect_stdout(io.StringIO()):
        t_empty()  # creates the experiment
    return interleaved(
        {
            "empty run: trackcfg": t_empty,
            "empty run: MLflow client": r_empty,
            f"{PARAMS} params: trackcfg": t_params,
            f"{PARAMS} params: MLflow client": r_params,
            f"{KEYS * STEPS} points: trackcfg": t_metrics,
            f"{KEYS * STEPS} points: MLflow client": r_metrics,
        },
        repeats=1 if QUICK else 9,
    )


def run() -> str:
    results = {}
    for workers, label in ((None, "default"), (1, "workers1")):
        with mlflow_server(workers) as url:
            results[label] = cases(url)
    default, single = results["default"], results["workers1"]
    rows = []
    for ours, theirs in zip(list(default)[::2], list(default)[1::2], strict=True):
        rows.append(
            (
                ours.split(":")[0],
                ms(default[ours]),
                ms(default[theirs]),
                f"{default[theirs] / default[ours]:.1f}x",
                f"{default[theirs] / single[theirs]:.1f}x",
                ms(single[ours]),
                ms(single[theirs]),
                f"{single[ours] / single[theirs]:.2f}",
            )
        )
    text = table(
        "Quick ACKs: trackcfg vs MLflow's own client, same work (median of "
        f"{1 if QUICK else 9}, interleaved)",
        rows,
        (
            "work",
            "trackcfg, default server",
            "MLflow, default server",
            "speed-up",
            "stall-free bound",
            "trackcfg, --workers 1",
            "MLflow, --workers 1",
            "trackcfg / MLflow",
        ),
    )
    text += (
        "\nGoal: >= 3x against the default server (4 uvicorn workers, which stall ~40 ms per "
        "request);\nno slower (within noise) against --workers 1 (TCP_NODELAY, no stall).\n"
        "stall-free bound: MLflow's client against the default server over MLflow's client "
        "against\n--workers 1, i.e. the speed-up that removing the stall alone can give when "
        "trackcfg sends the\nsame requests as MLflow (cross-server: the two servers run one "
        "after the other).\n"
    )
    return text


if __name__ == "__main__":
    print(run())
