"""Shared pieces of the benchmarks: a real `mlflow server`, interleaved timing, counting.

These machines are noisy, so every benchmark measures trackcfg and its baseline in the same
run, interleaved (A B A B ...), and reports medians and ratios, never absolute budgets alone.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

QUICK = os.environ.get("TRACKCFG_BENCH_QUICK") == "1"

#: The environment for timed subprocesses: bytecode caches written and used, as users have
#: them (pip compiles at install); this sandbox sets PYTHONDONTWRITEBYTECODE, and uv does not
#: compile at install, so without this every start would compile every module from source.
CACHED_BYTECODE_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


@contextlib.contextmanager
def mlflow_server(workers: int | None = None) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 with a SQLite store (``trackcfg.testing``'s, the
    project's one way to run one), as a user starts one by hand: MLflow's GenAI job runner on
    (MLflow's default; the kit turns it off unless asked); yields its URL.  ``workers``:
    ``None`` is MLflow's default number of workers (a "default mlflow server", as the
    figures say).

    ``TRACKCFG_BENCH_SERVER`` names a running server to reuse instead, whatever ``workers``
    asks for (the test suite's smoke run)."""
    shared = os.environ.get("TRACKCFG_BENCH_SERVER")
    if shared:
        yield shared
        return
    from trackcfg.testing import mlflow_server as kit_server

    with kit_server(workers=workers, timeout=240, job_execution=True) as url:
        yield url


def interleaved(
    cases: dict[str, Callable[[], Any]], repeats: int = 5, setup: Callable[[], Any] | None = None
) -> dict[str, float]:
    """Median seconds of each case, run in turns A B C A B C ... ``repeats`` times.

    What the cases print (MLflow's "View run" links) is kept out of the report."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, case in cases.items():
            if setup is not None:
                setup()
            with contextlib.redirect_stdout(io.StringIO()):
                start = time.perf_counter()
                case()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


@contextlib.contextmanager
def count_requests() -> Iterator[list[str]]:
    """Record every HTTP request MLflow's client sends (method and path), at the transport."""
    import requests.adapters

    seen: list[str] = []
    original = requests.adapters.HTTPAdapter.send

    def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(f"{request.method} {request.path_url.split('?')[0]}")
        return original(self, request, *args, **kwargs)

    requests.adapters.HTTPAdapter.send = send  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        requests.adapters.HTTPAdapter.send = original  # type: ignore[method-assign]


def table(title: str, rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r: tuple[str, ...]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    out = [f"### {title}", "", line(header), "| " + " | ".join("-" * w for w in widths) + " |"]
    out += [line(r) for r in rows]
    return "\n".join(out) + "\n"


def machine() -> str:
    import importlib.metadata as md

    versions = ", ".join(
        f"{name} {md.version(name)}" for name in ("mlflow", "trackcfg", "kedro") if _has(name)
    )
    return (
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {versions}"
    )


def _has(name: str) -> bool:
    import importlib.metadata as md

    try:
        md.version(name)
    except md.PackageNotFoundError:
        return False
    return True


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def fine_ms(seconds: float) -> str:
    """Milliseconds, with three decimals below 10 ms (a logging call's cost)."""
    return f"{seconds * 1000:.3f} ms" if seconds < 0.01 else f"{seconds * 1000:.1f} ms"


def child_case(
    script: str, args: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 1800
) -> dict[str, Any]:
    """Run ``script --case ARGS...`` in a fresh interpreter; the JSON its last stdout line holds
    (``RuntimeError`` with its output when it fails)."""
    import json

    done = subprocess.run(
        [sys.executable, script, "--case", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{args[0]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def peer_env() -> dict[str, str]:
    """A child's environment for the loop benchmarks: bytecode cached, no trackcfg settings of
    this process, no run link printed, W&B offline and quiet."""
    env = {k: v for k, v in CACHED_BYTECODE_ENV.items() if not k.startswith("TRACKCFG_")}
    env.update(
        MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true",
        WANDB_SILENT="true",
        WANDB_MODE="offline",
        WANDB_DISABLE_GIT="true",
    )
    return env


def with_wandb(cases: Iterable[str]) -> tuple[list[str], str]:
    """The cases to run (``"wandb"`` left out where W&B is not installed), and the line saying
    so (empty when it is)."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        missing = "W&B is not installed here (`nox -s bench` installs it): no peer figures.\n"
        return [c for c in cases if c != "wandb"], missing
    return list(cases), ""
