"""Run every benchmark and write benchmarks/results.md (`python3 -m nox -s bench`)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_import
import bench_logging
import bench_metrics
import bench_offline_upload
import bench_params
import bench_session
import bench_transport
from _common import QUICK, machine


def main() -> None:
    sections = [
        bench_import.run(),
        bench_params.run(),
        bench_params.run(workers=1),
        bench_metrics.run(),
        bench_session.run(),
        bench_transport.run(),
        bench_logging.run(),
        bench_offline_upload.run(),
    ]
    try:
        import bench_kedro

        sections.append(bench_kedro.run())
    except ImportError:
        pass
    text = "# Benchmarks\n\n" + machine() + "\n\n" + "\n".join(sections)
    print(text)
    if not QUICK:
        (Path(__file__).parent / "results.md").write_text(text)


if __name__ == "__main__":
    main()
