"""Issue 24, goal 2: local stores drained at SQLite speed.  A loop of 10,000 steps logging 3
metrics each (30,000 points) into a local SQLite store, each client in a fresh interpreter, in
turns, each turn starting with the next case (A B C D, B C D A, C D A B: no case always
follows the same one):

- trackcfg buffered (its defaults), metric points written into the store's tables directly
  (``_mlflow/_sqlite_fast.py``);
- the same with the direct path off (its known schema revisions emptied): every batch through
  MLflow's ``log_batch``, as before;
- MLflow's own ``log_batch`` of the same 30,000 points, 1,000 per request (the baseline);
- W&B's offline ``init``..``finish`` around the same loop (the peer for a session's start to
  end; installed by the nox ``bench`` session only).

Figures: the drain (from the loop's end to the block's end: what the sender still had to write,
and the run's end) against the baseline's time, and a session's start to end (``with`` entered
.. left, MLflow's import included) against W&B's ``init``..``finish``, each with its start
(to the first logging call) and its loop.  Each store is a copy
of one made before the timing (MLflow's table creation is not what is measured).  Each child
checks every point, the latest values and the run's end in the store before it reports.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import QUICK, child_case, peer_env, table, with_wandb

STEPS = 500 if QUICK else 10_000
TURNS = 1 if QUICK else 3

#: case -> label
CASES = {
    "trackcfg": "trackcfg buffered, points written directly",
    "trackcfg-log-batch": "trackcfg buffered, points through MLflow's log_batch (before)",
    "log-batch": "MLflow's log_batch, 1,000 points a request (baseline)",
    "wandb": "W&B offline init..finish (peer)",
}


def _metrics(i: int) -> dict[str, float]:
    return {"a": float(i), "b": 2.0 * i, "c": 1.0}


def _child(case: str, uri: str, steps: int, folder: str) -> dict[str, Any]:
    drained = entered = looped = 0.0
    if case.startswith("trackcfg"):
        from trackcfg import TrackingSession, load_config

        cfg = load_config(
            overrides={
                "server.mlflow_tracking_uri": uri,
                "tracking.experiment.name": "bench-drain",
                "tracking.logging.journal_dir": folder,
                "tracking.logging.exit_timeout": 900,
            }
        )
        begun = time.perf_counter()
        with TrackingSession(cfg, name="bench") as s:
            if case == "trackcfg-log-batch":  # mlflow is imported by now: not before the clock
                from trackcfg._mlflow import _sqlite_fast

                _sqlite_fast.KNOWN_REVISIONS = frozenset()  # every batch falls back
            loop_start = time.perf_counter()
            run_id = s.run_id
            for i in range(steps):
                s.log_metrics(_metrics(i), step=i)
            loop_end = time.perf_counter()
        ended = time.perf_counter()
        entered, looped, drained = loop_start - begun, loop_end - loop_start, ended - loop_end
        session = ended - begun
    elif case == "log-batch":
        from mlflow import MlflowClient
        from mlflow.entities import Metric

        client = MlflowClient(uri)
        run_id = client.create_run(client.create_experiment("bench-drain-mlflow")).info.run_id
        now = int(time.time() * 1000)
        points = [Metric(k, v, now, i) for i in range(steps) for k, v in _metrics(i).items()]
        start = time.perf_counter()
        for at in range(0, len(points), 1000):
            client.log_batch(run_id, metrics=points[at : at + 1000])
        drained = time.perf_counter() - start
        client.set_terminated(run_id)
        session = 0.0
    else:
        import wandb

        begun = time.perf_counter()
        run = wandb.init(mode="offline", dir=folder, project="bench-drain")
        loop_start = time.perf_counter()
        for i in range(steps):
            wandb.log(_metrics(i), step=i)
        loop_end = time.perf_counter()
        run.finish()
        ended = time.perf_counter()
        entered, looped, drained = loop_start - begun, loop_end - loop_start, ended - loop_end
        session = ended - begun
        run_id = None

    if run_id is not None:  # every point, the latest values and the run's end in the store
        from mlflow import MlflowClient

        client = MlflowClient(uri)
        run = client.get_run(run_id)
        points = sum(len(client.get_metric_history(run_id, key)) for key in _metrics(0))
        if run.info.status != "FINISHED" or points != 3 * steps:
            raise SystemExit(f"{case}: run {run_id} is {run.info.status} with {points} points")
        if run.data.metrics != _metrics(steps - 1):
            raise SystemExit(f"{case}: run {run_id}'s latest values are {run.data.metrics}")
    return {"drained": drained, "session": session, "entered": entered, "looped": looped}


def _env() -> dict[str, str]:
    return peer_env()


def _template(cwd: Path) -> Path:
    """An empty store with MLflow's tables, made once: each case gets a copy."""
    db = cwd / "template.db"
    subprocess.run(
        [sys.executable, "-c", f"import mlflow; mlflow.MlflowClient('sqlite:///{db}')"],
        cwd=cwd,
        env=_env(),
        check=True,
        capture_output=True,
        timeout=600,
    )
    return db


def _run_case(case: str, cwd: Path, template: Path, steps: int = STEPS) -> dict[str, Any]:
    folder = tempfile.mkdtemp(prefix="drain-", dir=cwd)
    db = Path(folder) / "mlflow.db"
    shutil.copyfile(template, db)
    args = [case, f"sqlite:///{db}", str(steps), folder]
    result = child_case(__file__, args, cwd=cwd, env=_env())
    result["load"] = os.getloadavg()[0]
    return result


def run() -> str:
    cases, missing = with_wandb(CASES)
    runs: list[dict[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        template = _template(Path(tmp))
        for case in cases:  # untimed: the first start reads (and compiles) every module
            _run_case(case, Path(tmp), template, steps=100)
        for turn in range(TURNS):  # each turn starts with another case (A B C, B C A, ...)
            order = cases[turn % len(cases) :] + cases[: turn % len(cases)]
            figures = {case: _run_case(case, Path(tmp), template) for case in order}
            runs.append({case: figures[case] for case in cases})

    rows = []
    for n, figures in enumerate(runs, 1):
        base = figures["log-batch"]["drained"]
        for case in cases:
            f = figures[case]
            drain = f"{f['drained']:.2f} s"
            ratio = "" if case in ("wandb", "log-batch") else f"{f['drained'] / base:.3f}x"
            session = (
                f"{f['session']:.2f} s (start {f['entered']:.2f}, loop {f['looped']:.2f})"
                if f["session"]
                else ""
            )
            rows.append((f"{n}", CASES[case], drain, ratio, session, f"{f['load']:.1f}"))
    text = table(
        f"Draining a local SQLite store: {STEPS} steps x 3 metrics ({TURNS} runs in turns, "
        "each client in a fresh interpreter)",
        rows,
        (
            "run",
            "client",
            "loop end to block end (baseline: its log_batch calls; W&B: finish)",
            "/ baseline",
            "start to end",
            "load (1 min)",
        ),
    )

    def verdict(value: float, limit: float) -> str:
        return f"{value:.3f}x ({'met' if value <= limit else 'missed'})"

    rows = []
    for n, figures in enumerate(runs, 1):
        t = figures["trackcfg"]
        cells = [verdict(t["drained"] / figures["log-batch"]["drained"], 0.25)]
        if "wandb" in figures:
            cells.append(verdict(t["session"] / figures["wandb"]["session"], 1.0))
        else:
            cells.append("no W&B")
        rows.append((f"{n}", *cells))
    text += "\n" + table(
        "Draining a local SQLite store: issue 24's goal 2, per run (ratios against the same "
        "run's baselines)",
        rows,
        ("run", "drain / MLflow's log_batch <= 0.25x", "start to end / W&B's <= 1x"),
    )
    medians = {
        case: statistics.median(r[case]["drained"] for r in runs)
        for case in cases
        if case != "wandb"
    }
    text += (
        f"\n{missing}Median drain: trackcfg direct {medians['trackcfg']:.2f} s, through "
        f"log_batch {medians['trackcfg-log-batch']:.2f} s, MLflow's log_batch "
        f"{medians['log-batch']:.2f} s.\n"
    )
    return text


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--case":
        case, uri, steps, folder = sys.argv[2:6]
        print(json.dumps(_child(case, uri, int(steps), folder)))
    else:
        print(run())
