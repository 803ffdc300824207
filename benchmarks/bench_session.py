"""4. Session overhead: enter+exit of an empty `TrackingSession` against raw
`mlflow.start_run()`/`end_run()`, on SQLite and over HTTP, with the requests each makes."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import mlflow
from _common import QUICK, count_requests, interleaved, mlflow_server, ms, table

from trackcfg import TrackingSession, load_config


def measure(uri: str, label: str) -> list[tuple[str, ...]]:
    mlflow.set_tracking_uri(uri)
    exp = mlflow.MlflowClient(uri).create_experiment(f"raw-{label}-{uuid.uuid4().hex}")
    cfg = load_config(
        overrides={"server.mlflow_tracking_uri": uri, "tracking.experiment.name": f"s-{label}"}
    )

    def session() -> None:
        with TrackingSession(cfg, name="bench"):
            pass

    def raw() -> None:
        with mlflow.start_run(experiment_id=exp):
            pass

    session()  # the first session creates the experiment: not what is measured
    medians = interleaved({"session": session, "raw": raw}, repeats=1 if QUICK else 15)
    rows = []
    for name, case in (("trackcfg session", session), ("raw start_run/end_run", raw)):
        with count_requests() as seen:
            case()
        requests = str(len(seen)) if uri.startswith("http") else "n/a (no HTTP)"
        rows.append(
            (
                label,
                name,
                ms(medians["session" if name.startswith("trackcfg") else "raw"]),
                requests,
                ", ".join(seen),
            )
        )
    return rows


def run() -> str:
    rows: list[tuple[str, ...]] = []
    with tempfile.TemporaryDirectory() as tmp:
        rows += measure(f"sqlite:///{Path(tmp) / 'bench.db'}", "sqlite")
    with mlflow_server() as url:
        rows += measure(url, "http")
    text = table(
        "Empty session vs raw run (median)", rows, ("store", "case", "time", "requests", "which")
    )
    text += "\nBudget: trackcfg's request count within +2 of raw MLflow's.\n"
    return text


if __name__ == "__main__":
    print(run())
