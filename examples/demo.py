"""The main job: load examples/mlflow.yml, show where each value came from, track a run.

python3 -m nox -s demo        # or: python examples/demo.py
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from trackcfg import TrackingSession, load_config

CONFIG = Path(__file__).with_name("mlflow.yml")


def show(config_path: Path) -> None:
    config = load_config(config_path)
    print(f"config: {config_path}  (project root: {config.project_root})")
    for key, value, source in config.provenance():
        print(f"  {key:<62} {value!r:<20} {source}")


def main() -> None:
    show(CONFIG)
    params: dict[str, Any] = {"optimizer": {"name": "adam", "lr": 0.01}, "epochs": 5, "seed": 42}
    with TrackingSession.from_yaml(CONFIG, name="demo", params=params) as session:
        for epoch in range(params["epochs"]):
            session.log_metrics({"loss": math.exp(-epoch / 2), "epoch": epoch}, step=epoch)
        session.log_text("a tiny model card\n", "model_card.md")
    print()
    print(f"run {session.run_id} in experiment {session.experiment_id} ({session.tracking_uri})")
    print("view it with:")
    print(f"  trackcfg ui {CONFIG}   # serves this store's UI on a free port")
    print(f"  mlflow ui --backend-store-uri {session.tracking_uri}   # or MLflow's own")


if __name__ == "__main__":
    main()
