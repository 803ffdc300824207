"""An Optuna study: one run for the study, one child run per trial (no adapter needed).

    pip install optuna
    python examples/optuna_sweep.py [N_TRIALS]

Prints the study's run id, then one line per trial: its number, child run id and state
(COMPLETE or PRUNED), then the best value.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import optuna

from trackcfg import TrackingSession, load_config

CONFIG = Path(__file__).with_name("mlflow.yml")
STEPS = 10


def train_step(lr: float, depth: int, step: int) -> float:
    """A stand-in for one epoch of training: the loss after ``step``."""
    return (lr - 0.05) ** 2 * 100 + 1.0 / (depth * (step + 1))


def make_objective(study_session: TrackingSession) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        # Suggest first: the trial's params are then known, and logged when its run starts.
        lr = trial.suggest_float("lr", 1e-3, 0.3, log=True)
        depth = trial.suggest_int("depth", 1, 4)
        pruned = False
        with study_session.child(f"trial-{trial.number}", params=trial.params) as run:
            run.set_tags({"optuna.trial": trial.number})
            for step in range(STEPS):
                loss = train_step(lr, depth, step)
                run.log_metric("loss", loss, step=step)
                trial.report(loss, step)
                if trial.should_prune():
                    # Leave the block normally: the run ends FINISHED, tagged as pruned;
                    # TrialPruned raised inside it would end the run FAILED.
                    run.set_tags({"optuna.state": "PRUNED"})
                    pruned = True
                    break
            else:
                run.set_tags({"optuna.state": "COMPLETE"})
        print(trial.number, run.run_id, "PRUNED" if pruned else "COMPLETE", flush=True)
        if pruned:
            raise optuna.TrialPruned()
        return loss

    return objective


def main(n_trials: int) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=0)
    study = optuna.create_study(
        direction="minimize", sampler=sampler, pruner=optuna.pruners.MedianPruner()
    )
    params = {"sampler": type(sampler).__name__, "n_trials": n_trials}
    with TrackingSession(load_config(CONFIG), name="optuna-study", params=params) as session:
        print(session.run_id, flush=True)
        study.optimize(make_objective(session), n_trials=n_trials)
        session.log_metrics({"best_value": study.best_value})
        session.log_params({f"best.{key}": value for key, value in study.best_params.items()})
        session.set_tags({"best_trial": study.best_trial.number})
        print("best", study.best_value, flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
