"""The benchmark scripts run (at a tiny size, against the suite's server): not timed here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_benchmark_runs_at_a_tiny_size(mlflow_server: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "TRACKCFG_BENCH_QUICK": "1",
        "TRACKCFG_BENCH_SERVER": mlflow_server,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run_all.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    for title in (
        "Import cost",
        "params over HTTP",
        "metric points over HTTP",
        "Empty session",
        "kedro run, one node",
        "Quick ACKs",
    ):
        assert title in done.stdout
    assert not (REPO / "benchmarks" / "results.md").exists() or "QUICK" not in done.stdout
