"""Run every benchmark and write benchmarks/results.md (`python3 -m nox -s bench`).

`python3 -m nox -s bench -- loop import` runs only those (bench_loop, bench_import) and prints
them; results.md is written by a full run only."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_drain
import bench_drain_local
import bench_import
import bench_logging
import bench_loop
import bench_metrics
import bench_offline_upload
import bench_params
import bench_session
import bench_transport
from _common import QUICK, machine


def main(only: list[str]) -> None:
    benchmarks = {
        "import": bench_import.run,
        "params": bench_params.run,
        "params-1": lambda: bench_params.run(workers=1),
        "metrics": bench_metrics.run,
        "session": bench_session.run,
        "transport": bench_transport.run,
        "loop": bench_loop.run,
        "logging": bench_logging.run,
        "drain": bench_drain.run,
        "drain_local": bench_drain_local.run,
        "offline_upload": bench_offline_upload.run,
    }
    try:
        import bench_kedro

        benchmarks["kedro"] = bench_kedro.run
    except ImportError:
        pass
    unknown = set(only) - set(benchmarks)
    if unknown:
        raise SystemExit(f"unknown benchmarks {sorted(unknown)}; known: {sorted(benchmarks)}")
    sections = [run() for name, run in benchmarks.items() if not only or name in only]
    text = "# Benchmarks\n\n" + machine() + "\n\n" + "\n".join(sections)
    print(text)
    if not QUICK and not only:
        (Path(__file__).parent / "results.md").write_text(text)


if __name__ == "__main__":
    main(sys.argv[1:])
