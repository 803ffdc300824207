"""The benchmark scripts run (at a tiny size, against the suite's server): not timed here."""

from __future__ import annotations

from pathlib import Path

from helpers import REPO, run_python, subprocess_env


def test_every_benchmark_runs_at_a_tiny_size(mlflow_server: str, tmp_path: Path) -> None:
    env = subprocess_env(
        venv_on_path=True, TRACKCFG_BENCH_QUICK="1", TRACKCFG_BENCH_SERVER=mlflow_server
    )
    done = run_python(str(REPO / "benchmarks" / "run_all.py"), cwd=tmp_path, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    for title in (
        "Import cost",
        "params over HTTP",
        "metric points over HTTP",
        "Empty session",
        "kedro run, one node",
        "Quick ACKs",
        "Buffered logging: time the loop is blocked",
        "points logged while the server is down",
        "Uploading an offline run",
    ):
        assert title in done.stdout
    assert not (REPO / "benchmarks" / "results.md").exists() or "QUICK" not in done.stdout
