"""2. 1,000 params over HTTP into a local `mlflow server`: `session.log_params` against a loop
of `mlflow.log_param` (kedro-mlflow's way, one request per key) and `mlflow.log_params`, and
the floor: ceil(N/100) x the round trip of a trivial request to the same server."""

from __future__ import annotations

import math
import uuid

import mlflow
from _common import QUICK, interleaved, mlflow_server, ms, table
from mlflow import MlflowClient

from trackcfg import TrackingConfig, TrackingSession, load_config

N = 100 if QUICK else 1000


def nested_params(n: int) -> dict[str, dict[str, int]]:
    groups = max(1, n // 50)
    return {f"group{g}": {f"p{i}": i for i in range(50)} for g in range(groups)}


def flat_params(n: int) -> dict[str, str]:
    return {f"group{g}.{k}": str(v) for g, d in nested_params(n).items() for k, v in d.items()}


def config(url: str) -> TrackingConfig:
    return load_config(
        overrides={
            "server.mlflow_tracking_uri": url,
            "tracking.experiment.name": "bench-params",
            "tracking.params.dict_params.flatten": True,
        }
    )


def run(workers: int | None = None) -> str:
    with mlflow_server(workers) as url:
        mlflow.set_tracking_uri(url)
        client = MlflowClient(url)
        exp = client.create_experiment(f"bench-params-raw-{uuid.uuid4().hex}")
        cfg = config(url)
        nested, flat = nested_params(N), flat_params(N)

        def with_session() -> None:
            with TrackingSession(cfg, name="bench") as s:
                s.log_params(nested)

        def per_key_loop() -> None:
            with mlflow.start_run(experiment_id=exp):
                for k, v in flat.items():
                    mlflow.log_param(k, v)

        def log_params() -> None:
            with mlflow.start_run(experiment_id=exp):
                mlflow.log_params(flat)

        def trivial() -> None:
            client.get_experiment(exp)

        def empty_session() -> None:
            with TrackingSession(cfg, name="bench"):
                pass

        def empty_raw() -> None:
            with mlflow.start_run(experiment_id=exp):
                pass

        # Runs are needed for params; measure the run overhead alone and subtract it.
        medians = interleaved(
            {
                "trackcfg session.log_params": with_session,
                "mlflow.log_param loop": per_key_loop,
                "mlflow.log_params": log_params,
                "_empty session": empty_session,
                "_empty raw run": empty_raw,
                "_trivial request": trivial,
            },
            repeats=1 if QUICK else 5,
        )
    net = {
        "trackcfg session.log_params": medians["trackcfg session.log_params"]
        - medians["_empty session"],
        "mlflow.log_param loop": medians["mlflow.log_param loop"] - medians["_empty raw run"],
        "mlflow.log_params": medians["mlflow.log_params"] - medians["_empty raw run"],
    }
    floor = math.ceil(N / 100) * medians["_trivial request"]
    rows = [(name, ms(t), f"{t / floor:.2f}x") for name, t in net.items()]
    rows.append((f"floor: ceil({N}/100) x trivial request", ms(floor), "1.00x"))
    label = "default workers" if workers is None else f"--workers {workers}"
    text = table(
        f"{N} params over HTTP ({label}; run start/end subtracted; median of 5)",
        rows,
        ("case", "time", "vs floor"),
    )
    speedup = net["mlflow.log_param loop"] / net["trackcfg session.log_params"]
    text += (
        f"\ntrackcfg is {speedup:.0f}x faster than the per-key loop (budget >= 10x) and "
        f"{net['trackcfg session.log_params'] / floor:.2f}x the floor (budget <= 1.5x).\n"
    )
    return text


if __name__ == "__main__":
    print(run())
    print(run(workers=1))
