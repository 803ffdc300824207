"""Issue 24, goal 3: a tracking server drained in parallel.  A loop logs 10,000 steps x 3
metrics as fast as it can into a session against a default `mlflow server`; timed from the
loop's end to the block's end (every point stored and the run ended), against the serial
floor measured in the same run: the same 30,000 points sent as 1,000-point `log_batch`
requests one after another with MLflow's client (the requests only; the points are built
before the clock starts and the run is ended after it stops).

Cases, each in a fresh interpreter, in turns (A B C A B C ...) after an untimed warm-up of
the server:

- trackcfg buffered (defaults: up to ``_sender.IN_FLIGHT`` metric batches in flight);
- trackcfg buffered with one request at a time (``IN_FLIGHT`` set to 0 in the child): what
  the parallel drain gains;
- the floor;
- the floor's requests sent ``IN_FLIGHT`` at a time by MLflow's client in a thread pool:
  what the server and the machine allow at best with that many requests in flight.

Each child checks that all 30,000 points and the run's end reached the store before it
reports.  The goal: trackcfg's drain at most 0.5x the floor.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import CACHED_BYTECODE_ENV, QUICK, child_case, mlflow_server, table

STEPS = 300 if QUICK else 10_000
TURNS = 1 if QUICK else 3
BATCH = 1000
GOAL = 0.5
IN_FLIGHT = 4  # trackcfg._sender.IN_FLIGHT (not imported: the parent imports no trackcfg)

CASES = {
    "trackcfg": "trackcfg buffered (defaults)",
    "trackcfg-serial": "trackcfg buffered, one request at a time",
    "floor": f"floor: {BATCH}-point log_batch requests one after another",
    "floor-parallel": f"the same requests, {IN_FLIGHT} at a time (MLflow's client in threads)",
}


def _metrics(i: int) -> dict[str, float]:
    return {"a": float(i), "b": 2.0 * i, "c": 1.0}


def _child_case(case: str, uri: str, steps: int, folder: str) -> dict[str, Any]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    if case.startswith("trackcfg"):
        if case == "trackcfg-serial":
            import trackcfg._buffer

            trackcfg._buffer.IN_FLIGHT = 0  # for_run reads it: no lanes
        from trackcfg import TrackingSession, load_config

        cfg = load_config(
            overrides={
                "server.mlflow_tracking_uri": uri,
                "tracking.experiment.name": "bench-drain",
                "tracking.logging.journal_dir": folder,
            }
        )
        with TrackingSession(cfg, name="bench-drain") as s:
            run_id = s.run_id
            for i in range(steps):
                s.log_metrics(_metrics(i), step=i)
            loop_end = time.perf_counter()
        drain = time.perf_counter() - loop_end
    else:
        from mlflow.entities import Metric

        found = client.get_experiment_by_name("bench-drain-floor")
        exp = found.experiment_id if found else client.create_experiment("bench-drain-floor")
        run_id = client.create_run(exp).info.run_id
        now = int(time.time() * 1000)
        points = [Metric(k, v, now, i) for i in range(steps) for k, v in _metrics(i).items()]
        batches = [points[first : first + BATCH] for first in range(0, len(points), BATCH)]
        start = time.perf_counter()
        if case == "floor":
            for batch in batches:
                client.log_batch(run_id, metrics=batch)
        else:  # what a server and this machine give at best with requests in flight at once
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(IN_FLIGHT) as pool:
                list(pool.map(lambda b: client.log_batch(run_id, metrics=b), batches))
        drain = time.perf_counter() - start
        client.set_terminated(run_id)
    assert run_id is not None
    status = client.get_run(run_id).info.status
    stored = sum(len(client.get_metric_history(run_id, key)) for key in _metrics(0))
    if status != "FINISHED" or stored != 3 * steps:
        raise SystemExit(f"{case}: run {run_id} is {status} with {stored} of {3 * steps} points")
    return {"drain": drain}


def _env() -> dict[str, str]:
    env = {k: v for k, v in CACHED_BYTECODE_ENV.items() if not k.startswith("TRACKCFG_")}
    env["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    return env


def _case(case: str, uri: str, cwd: Path, steps: int = STEPS) -> float:
    folder = tempfile.mkdtemp(prefix="journal-", dir=cwd)
    result = child_case(__file__, [case, uri, str(steps), folder], cwd=cwd, env=_env())
    return float(result["drain"])


def run() -> str:
    load = os.getloadavg()[0]
    times: dict[str, list[float]] = {case: [] for case in CASES}
    with tempfile.TemporaryDirectory() as tmp, mlflow_server() as url:
        cwd = Path(tmp)
        if not QUICK:  # a cold server stores its first batches twice as slowly
            _case("floor", url, cwd)
            _case("trackcfg", url, cwd)
        for _ in range(TURNS):
            for case in CASES:
                times[case].append(_case(case, url, cwd))
    floor = statistics.median(times["floor"])
    rows = []
    for case, label in CASES.items():
        median = statistics.median(times[case])
        rows.append(
            (
                label,
                f"{median:.2f} s",
                ", ".join(f"{t:.2f}" for t in times[case]),
                f"{median / floor:.2f}x",
            )
        )
    ratio = statistics.median(times["trackcfg"]) / floor
    text = table(
        f"Draining a tracking server: {3 * STEPS} points, from the loop's end to the block's "
        f"end (median of {TURNS} runs in turns, each in a fresh interpreter)",
        rows,
        ("client", "median", "runs (s)", "/ floor"),
    )
    text += (
        f"\nGoal: trackcfg / floor <= {GOAL}x: {ratio:.2f}x "
        f"({'met' if ratio <= GOAL else 'missed'}).\n"
        f"Load average (1 min) at the start and the end: {load:.1f}, {os.getloadavg()[0]:.1f} "
        f"({os.cpu_count()} cores).\n"
    )
    return text


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--case":
        case, uri, steps, folder = sys.argv[2:6]
        print(json.dumps(_child_case(case, uri, int(steps), folder)))
    else:
        print(run())
