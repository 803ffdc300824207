"""Run every benchmark and write benchmarks/results.md (`python3 -m nox -s bench`)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_import  # noqa: E402
import bench_metrics  # noqa: E402
import bench_params  # noqa: E402
import bench_session  # noqa: E402
from _common import QUICK, machine  # noqa: E402


def main() -> None:
    sections = [
        bench_import.run(),
        bench_params.run(),
        bench_params.run(workers=1),
        bench_metrics.run(),
        bench_session.run(),
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
