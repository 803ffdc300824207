"""The benchmark scripts run (at a tiny size, against the suite's server): not timed here.

One test per benchmark module (each in a child Python, as ``benchmarks/run_all.py`` runs
them), so parallel workers share them out; every ``bench_*.py`` must be listed here."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import REPO, run_python, subprocess_env

BENCHMARKS = {
    # module: (the calls run_all.py makes, the titles its sections must hold)
    "bench_import": (("run()",), ("Import cost",)),
    "bench_params": (("run()", "run(workers=1)"), ("params over HTTP",)),
    "bench_metrics": (("run()",), ("metric points over HTTP",)),
    "bench_session": (("run()",), ("Empty session",)),
    "bench_transport": (("run()",), ("Quick ACKs",)),
    "bench_logging": (
        ("run()",),
        ("Buffered logging: time the loop is blocked", "points logged while the server is down"),
    ),
    "bench_loop": (("run()",), ("Training loop",)),
    "bench_drain": (("run()",), ("Draining a tracking server",)),
    "bench_offline_upload": (("run()",), ("Uploading an offline run",)),
    "bench_drain_local": (("run()",), ("Draining a local SQLite store",)),
    "bench_kedro": (("run()",), ("kedro run, one node",)),
}


def test_every_benchmark_module_is_run_here_and_by_run_all() -> None:
    modules = {path.stem for path in (REPO / "benchmarks").glob("bench_*.py")}
    assert modules == set(BENCHMARKS)
    run_all = (REPO / "benchmarks" / "run_all.py").read_text()
    assert [m for m in BENCHMARKS if f"{m}.run" not in run_all] == []


@pytest.mark.slow
@pytest.mark.parametrize("module", BENCHMARKS)
def test_the_benchmark_runs_at_a_tiny_size(module: str, mlflow_server: str, tmp_path: Path) -> None:
    calls, titles = BENCHMARKS[module]
    results = REPO / "benchmarks" / "results.md"
    before = results.stat().st_mtime_ns if results.exists() else None
    env = subprocess_env(
        venv_on_path=True, TRACKCFG_BENCH_QUICK="1", TRACKCFG_BENCH_SERVER=mlflow_server
    )
    code = f"import sys; sys.path.insert(0, {str(REPO / 'benchmarks')!r}); import {module}\n"
    code += "".join(f"print({module}.{call})\n" for call in calls)
    done = run_python("-c", code, cwd=tmp_path, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    for title in titles:
        assert title in done.stdout
    assert (results.stat().st_mtime_ns if results.exists() else None) == before
