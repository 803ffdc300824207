"""5. `kedro run` of a one-node pipeline with the trackcfg hook against the same project with
no tracking plugin (`DISABLE_HOOKS_FOR_PLUGINS`), and where the extra time goes.

Three cases, interleaved, each `kedro run` in a fresh interpreter (`--case run`, which calls
Kedro's own CLI entry point): no tracking plugin, the trackcfg hook, and the trackcfg hook with
mlflow and its SQLite store module imported in a background thread from
`after_context_created` on (issue 24's proposal, measured rather than assumed: the GIL lets
that thread run only while the main thread does not hold it).  Wall and CPU time (user +
system, the process and its children) per case.

Then one tracked run with its main thread's time split by phase from Linux's
`/proc/<pid>/task/<tid>/schedstat` (on the CPU / waiting for a CPU / blocked): the time a
background thread can use without the GIL is the main thread's *blocked* time, and a second
core only helps for the CPU time the main thread spends between the context's creation and
the pipeline's start.  Both bounds are printed, whatever the machine's load.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import CACHED_BYTECODE_ENV, QUICK, ms, table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import kedro_example

ONE_NODE = """\
from kedro.pipeline import Pipeline, node


def identity(lr: float) -> float:
    return lr


def register_pipelines() -> dict[str, Pipeline]:
    return {"__default__": Pipeline([node(identity, "params:lr", "out", name="identity")])}
"""

HOOKS = ("after_context_created", "before_pipeline_run", "before_node_run", "after_pipeline_run")


def _kedro(
    project: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    exe = str(Path(sys.executable).with_name("kedro"))
    return subprocess.run(
        [exe, *args],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
        env={**CACHED_BYTECODE_ENV, "KEDRO_DISABLE_TELEMETRY": "1", **(env or {})},
    )


def _case(project: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """`kedro run` in ``project`` through this script's ``--case run`` (Kedro's CLI entry point,
    in a fresh interpreter)."""
    return subprocess.run(
        [sys.executable, __file__, "--case", "run", *flags],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
        env={**CACHED_BYTECODE_ENV, "KEDRO_DISABLE_TELEMETRY": "1"},
    )


def _top_imports(stderr: str, n: int = 6) -> list[tuple[str, float]]:
    """Slowest top-level packages by cumulative import time in `-X importtime` output."""
    rows = []
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m[2]) <= 1:
            rows.append((m[3], int(m[1]) / 1e6))
    return sorted(rows, key=lambda r: -r[1])[:n]


def _timed(cases: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds of each case, run in turns A B C A B C ..."""
    walls: dict[str, list[float]] = {name: [] for name in cases}
    cpus: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, case in cases.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            case()
            walls[name].append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus[name].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return {name: (statistics.median(walls[name]), statistics.median(cpus[name])) for name in cases}


def run() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        tracked = kedro_example.make_project(Path(tmp))
        (tracked / "src" / kedro_example.PACKAGE / "pipeline_registry.py").write_text(ONE_NODE)
        plain = Path(shutil.copytree(tracked, Path(tmp) / "plain"))
        settings = plain / "src" / kedro_example.PACKAGE / "settings.py"
        settings.write_text(settings.read_text() + '\nDISABLE_HOOKS_FOR_PLUGINS = ("trackcfg",)\n')
        _kedro(tracked, "run")  # first run creates the store and the experiment
        measured = _timed(
            {
                "no tracking plugin": lambda: _case(plain),
                "with trackcfg hook": lambda: _case(tracked),
                "hook, mlflow imported in a background thread": lambda: _case(
                    tracked, "--background"
                ),
            },
            repeats=1 if QUICK else 5,
        )
        profile = _kedro(tracked, "run", env={"PYTHONPROFILEIMPORTTIME": "1"})
        phases = _phases(_case(tracked, "--timeline").stdout)
    base_wall, base_cpu = measured["no tracking plugin"]
    rows: list[tuple[str, ...]] = []
    for name, (wall, cpu) in measured.items():
        extra = "" if name == "no tracking plugin" else f"+{ms(wall - base_wall)}"
        extra_cpu = "" if name == "no tracking plugin" else f"+{ms(cpu - base_cpu)}"
        rows.append((name, ms(wall), extra, f"{wall / base_wall:.2f}x", ms(cpu), extra_cpu))
    text = table(
        "kedro run, one node (median, interleaved)",
        rows,
        ("case", "wall", "extra wall", "ratio", "CPU", "extra CPU"),
    )
    text += f"\nLoad average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.\n"
    text += "\n" + phases
    text += "\nSlowest imports of the tracked run (`-X importtime`, cumulative):\n\n"
    text += "\n".join(f"- `{name}`: {ms(sec)}" for name, sec in _top_imports(profile.stderr)) + "\n"
    text += (
        "\nThe extra time is importing mlflow and its SQLite store (needed to log) and the "
        "run's writes; trackcfg imports mlflow only when a pipeline run starts (not for "
        "`kedro --help`, `kedro ipython` or a disabled pipeline).\n"
    )
    return text


def _phases(stdout: str) -> str:
    """The timeline case's report: the main thread's time per phase, and the two bounds."""
    marks = json.loads(stdout.strip().splitlines()[-1])
    if not marks:
        return "(no /proc/<pid>/task/<tid>/schedstat here: no phase split)\n"
    rows: list[tuple[str, ...]] = []
    spans = []  # (name, wall, on CPU, blocked) in order
    for (first, a), (second, b) in itertools.pairwise(marks):
        wall, cpu, queued = b[0] - a[0], b[1] - a[1], b[2] - a[2]
        blocked = max(wall - cpu - queued, 0.0)
        spans.append((f"{first} -> {second}", wall, cpu, blocked))
        rows.append((f"{first} -> {second}", ms(wall), ms(cpu), ms(queued), ms(blocked)))
    text = table(
        "kedro run, one node: the main thread's time by phase (one tracked run)",
        rows,
        ("phase", "wall", "on CPU", "waiting for a CPU", "blocked"),
    )
    names = [span[0] for span in spans]
    window = spans[names.index("after_context_created< -> before_pipeline_run>")]
    at = names.index("before_pipeline_run> -> before_pipeline_run<")
    hook, later = spans[at], spans[at + 1 :]
    blocked_after = window[3] + hook[3] + sum(span[3] for span in later)
    text += (
        f"\nThe hook's `before_pipeline_run` (import mlflow, open the store, create the run) "
        f"keeps the main thread on the CPU {ms(hook[2])}. A background thread started at "
        f"`after_context_created` could overlap it with at most {ms(blocked_after)} under the "
        f"GIL (the main thread's blocked time from then on), and with a free second core and "
        f"no GIL with at most {ms(window[2])} (Kedro's own work between the context and the "
        f"pipeline's start; a one-node pipeline's node and end take "
        f"{ms(sum(span[2] for span in later))} on the CPU).\n"
    )
    return text


# ------------------------------------------------------------------------------ child cases


def _schedstat() -> tuple[float, float, float]:
    """(wall, on-CPU, waiting-for-a-CPU) seconds of the calling thread, from Linux's
    schedstat; the rest of the wall time the thread was blocked (I/O, locks, sleeping)."""
    with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as f:
        on_cpu, queued, _ = f.read().split()
    return time.perf_counter(), int(on_cpu) / 1e9, int(queued) / 1e9


def _case_run(flags: list[str]) -> None:
    """`kedro run` here (Kedro's CLI entry point); ``--background``: mlflow imported in a
    thread from ``after_context_created`` on; ``--timeline``: the main thread's schedstat at
    each hook, printed as the last line (JSON) at exit."""
    import atexit
    import functools

    timeline = "--timeline" in flags and os.path.exists("/proc/self/schedstat")
    marks: list[tuple[str, tuple[float, float, float]]] = []
    if timeline:
        marks.append(("start", _schedstat()))
    if "--background" in flags or timeline:
        import trackcfg.kedro

        hooks = trackcfg.kedro.TrackingHooks
        for name in HOOKS:
            original = getattr(hooks, name)

            def wrapped(
                self: Any, *args: Any, _f: Any = original, _n: str = name, **kw: Any
            ) -> Any:
                if timeline:
                    marks.append((_n + ">", _schedstat()))
                if _n == "after_context_created" and "--background" in flags:
                    threading.Thread(target=_import_mlflow, daemon=True).start()
                result = _f(self, *args, **kw)
                if timeline:
                    marks.append((_n + "<", _schedstat()))
                return result

            setattr(hooks, name, functools.wraps(original)(wrapped))

    def report() -> None:
        if timeline:
            marks.append(("exit", _schedstat()))
        sys.stdout.flush()
        print(json.dumps(marks))

    atexit.register(report)
    sys.argv = ["kedro", "run"]
    from kedro.framework.cli import main

    main()


def _import_mlflow() -> None:
    import mlflow
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

    import trackcfg._mlflow._client  # noqa: F401


if __name__ == "__main__":
    if sys.argv[1:3] == ["--case", "run"]:
        _case_run(sys.argv[3:])
    else:
        print(run())
