"""A plain script tracked with the context manager.

    python examples/script_quickstart.py

The run lands in the store that examples/mlflow.yml names (<project root>/mlruns), named
after this script; the last line printed is its run id.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from trackcfg import TrackingSession

CONFIG = Path(__file__).with_name("mlflow.yml")


def main() -> str:
    params: dict[str, Any] = {"model": {"kind": "ridge", "alpha": 0.5}, "folds": 3}
    with TrackingSession.from_yaml(CONFIG, params=params, tags={"stage": "quickstart"}) as s:
        rng = random.Random(0)
        for fold in range(params["folds"]):
            s.log_metrics({"rmse": 1.0 + rng.random()}, step=fold)
        s.log_dict({"features": ["a", "b", "c"]}, "features.json")
    assert s.run_id is not None
    return s.run_id


if __name__ == "__main__":
    print(main())
