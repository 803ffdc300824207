"""A small hyper-parameter sweep: one parent session, one child run per decorated call.

    python examples/decorated_sweep.py

Prints the parent run id, then one line per trial: child run id and its score.
"""

from __future__ import annotations

from pathlib import Path

from trackcfg import TrackingSession, load_config, tracked

CONFIG = Path(__file__).with_name("mlflow.yml")


@tracked(config=CONFIG)
def trial(lr: float, depth: int = 3) -> float:
    """One training run; its arguments are logged as params of its own (child) run."""
    import mlflow  # plain MLflow calls land in the trial's run

    score = 1.0 / (1.0 + abs(lr - 0.1) * depth)
    mlflow.log_metric("score", score)
    active = mlflow.active_run()
    assert active is not None
    print(active.info.run_id, f"{score:.4f}")
    return score


def main() -> None:
    config = load_config(CONFIG)
    with TrackingSession(config, name="sweep", params={"grid": "lr x depth"}) as sweep:
        print(sweep.run_id)
        best = max(trial(lr, depth=d) for lr in (0.01, 0.1, 0.3) for d in (2, 4))
        sweep.log_metrics({"best_score": best})


if __name__ == "__main__":
    main()
