"""3. 10,000 metric points over HTTP: `session.log_metrics` (100 keys x 100 steps, one call
per step) against a loop of `mlflow.log_metric` (one request per point)."""

from __future__ import annotations

import uuid

import mlflow
from _common import QUICK, interleaved, mlflow_server, ms, table

from trackcfg import TrackingSession, load_config

KEYS, STEPS = (10, 10) if QUICK else (100, 100)
LOOP_POINTS = 100 if QUICK else 1000  # the per-point loop is timed on a sample, then scaled


def run(workers: int | None = None) -> str:
    with mlflow_server(workers) as url:
        mlflow.set_tracking_uri(url)
        exp = mlflow.MlflowClient(url).create_experiment(f"bench-metrics-raw-{uuid.uuid4().hex}")
        cfg = load_config(
            overrides={"server.mlflow_tracking_uri": url, "tracking.experiment.name": "bm"}
        )

        def session_metrics() -> None:
            with TrackingSession(cfg, name="bench") as s:
                for step in range(STEPS):
                    s.log_metrics({f"m{k}": k * step for k in range(KEYS)}, step=step)

        def per_point_loop() -> None:
            with mlflow.start_run(experiment_id=exp):
                for i in range(LOOP_POINTS):
                    mlflow.log_metric(f"m{i % KEYS}", i, step=i // KEYS)

        medians = interleaved(
            {"session": session_metrics, "loop": per_point_loop}, repeats=1 if QUICK else 5
        )
    points = KEYS * STEPS
    loop_scaled = medians["loop"] * points / LOOP_POINTS
    label = "default workers" if workers is None else f"--workers {workers}"
    rows = [
        (
            f"trackcfg log_metrics ({STEPS} calls of {KEYS})",
            ms(medians["session"]),
            f"{points / medians['session']:.0f}",
        ),
        (
            f"mlflow.log_metric loop ({LOOP_POINTS} timed, scaled to {points})",
            ms(loop_scaled),
            f"{points / loop_scaled:.0f}",
        ),
    ]
    text = table(f"{points} metric points over HTTP ({label})", rows, ("case", "time", "points/s"))
    text += (
        f"\ntrackcfg: {loop_scaled / medians['session']:.0f}x faster. How: each log_metrics call "
        "is one log_batch request (up to 1000 points, split by the param policy's planner); "
        "no async logging (MLflow's async queue without buffering was slower here).\n"
    )
    return text


if __name__ == "__main__":
    print(run())
