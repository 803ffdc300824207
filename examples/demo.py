"""The main job: load examples/mlflow.yml, show where each value came from, track a run.

python3 -m nox -s demo        # or: python examples/demo.py

It ends with the commands that show the run, each runnable as printed in the shell that
started the demo: `python3 -m nox -s ui` under nox, and the same `trackcfg ui` through this
interpreter, which has trackcfg, so no virtualenv to activate.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
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
    for line in view_commands():
        print(line)


def shown(path: Path) -> str:
    """``path`` relative to the current folder when it lies below it: shorter to type."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def view_commands() -> list[str]:
    """How to view the run, as commands that run as printed in the shell that started the
    demo (nox's virtualenv is not on its PATH: `trackcfg` alone would not be found)."""
    python = shlex.quote(sys.executable)  # has trackcfg: no virtualenv to activate
    lines = ["view it (a UI on a free port, on the experiment's runs; Ctrl-C stops it):"]
    if os.environ.get("NOX_CURRENT_SESSION") == "demo":
        lines.append("  python3 -m nox -s ui")
        lines.append("or, without nox:")
    lines.append(f"  {python} -m trackcfg ui {shlex.quote(shown(CONFIG))}")
    return lines


if __name__ == "__main__":
    main()
