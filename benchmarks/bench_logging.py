"""Issue 14: buffered logging. A training loop of 10,000 steps logging 3 metrics each, against
a default `mlflow server`, a `--workers 1` one and a local SQLite store, in the same run:

- the time the loop is blocked per step: trackcfg buffered (with and without its journal),
  trackcfg `mode: sync`, `mlflow.log_metrics(..., step=i)` and MLflow's async queue
  (`synchronous=False`, with and without MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS);
- the time from the first logging call until the run has ended with every point on the
  server, against a floor: the same loop collecting the points and sending them as
  1,000-point `log_batch` requests with MLflow's client, then ending the run;
- memory: 1,000,000 points logged while the server is down stay within `max_buffered`.

Every case runs in a fresh interpreter (MLflow's async queue, its HTTP pools and trackcfg's
quick ACKs are per process: one case must not warm another up), after an untimed warm-up of
the server (a cold server takes twice as long to store the first batches).  The quick cases
run three times in turns (A B C A B C ...) and report medians; the slow ones (the
synchronous clients, MLflow's async queue without buffering: minutes each) run once, the
synchronous clients on a sample of steps, scaled.  Each child checks that every point and
the run's end reached the store before it reports.  A run takes ~30 min: run it two or
three times for the spread.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import CACHED_BYTECODE_ENV, QUICK, child_case, mlflow_server, table
from _common import fine_ms as _ms

STEPS = 300 if QUICK else 10_000
SYNC_STEPS = 30 if QUICK else 300  # trackcfg sync and mlflow.log_metrics: a sample, scaled
REPEATS = 1 if QUICK else 3
REPEATED = ("trackcfg", "trackcfg-nojournal", "mlflow-async-buffered", "floor")  # quick cases
WARMUP_STEPS = 2_000  # untimed, before each server's measurements
MEMORY_POINTS = 30_000 if QUICK else 1_000_000
MEMORY_BOUND = 3_000 if QUICK else 100_000  # tracking.logging.max_buffered (its default)
ASYNC_BUFFERING = "2"  # seconds: trackcfg's flush_seconds default, for MLflow's async queue

#: case -> (label, steps it runs)
CASES: dict[str, tuple[str, int]] = {
    "trackcfg": ("trackcfg buffered (journal: true, the default)", STEPS),
    "trackcfg-nojournal": ("trackcfg buffered, journal: false", STEPS),
    "trackcfg-sync": ("trackcfg mode: sync", SYNC_STEPS),
    "mlflow-sync": ("MLflow mlflow.log_metrics(..., step=i)", SYNC_STEPS),
    "mlflow-async": ("MLflow async queue (synchronous=False)", STEPS),
    "mlflow-async-buffered": (
        f"MLflow async queue, MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS={ASYNC_BUFFERING}",
        STEPS,
    ),
    "floor": ("floor: points collected, sent as 1,000-point log_batch requests", STEPS),
}


# ---------------------------------------------------------------------------------------------
# the children: one case each, in a fresh interpreter


def _metrics(i: int) -> dict[str, float]:
    return {"a": i, "b": 2 * i, "c": 1.0}


def _child_case(case: str, uri: str, steps: int, folder: str) -> dict[str, Any]:
    """Run one case; the loop's per-step times, the loop's time, and the time until the run
    has ended with everything on the server (both from the first logging call)."""
    blocked: list[int] = []
    clock = time.perf_counter_ns
    if case.startswith("trackcfg"):
        from trackcfg import TrackingSession, load_config

        cfg = load_config(
            overrides={
                "server.mlflow_tracking_uri": uri,
                "tracking.experiment.name": "bench-logging",
                "tracking.logging.mode": "sync" if case == "trackcfg-sync" else "buffered",
                "tracking.logging.journal": case != "trackcfg-nojournal",
                "tracking.logging.journal_dir": folder,
            }
        )
        with TrackingSession(cfg, name="bench") as s:
            run_id = s.run_id
            start = time.perf_counter()
            for i in range(steps):
                t = clock()
                s.log_metrics(_metrics(i), step=i)
                blocked.append(clock() - t)
            loop = time.perf_counter() - start
        ended = time.perf_counter() - start
    elif case.startswith("mlflow"):
        import mlflow

        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("bench-logging-mlflow")
        synchronous = case == "mlflow-sync"
        run_id = mlflow.start_run().info.run_id
        start = time.perf_counter()
        for i in range(steps):
            t = clock()
            mlflow.log_metrics(_metrics(i), step=i, synchronous=synchronous)
            blocked.append(clock() - t)
        loop = time.perf_counter() - start
        mlflow.end_run()  # waits for the async queue
        ended = time.perf_counter() - start
    else:  # the floor: what a loop batching by hand with MLflow's client costs
        from mlflow import MlflowClient
        from mlflow.entities import Metric

        client = MlflowClient(uri)
        found = client.get_experiment_by_name("bench-logging-floor")
        exp = found.experiment_id if found else client.create_experiment("bench-logging-floor")
        run_id = client.create_run(exp).info.run_id
        pending: list[Metric] = []
        start = time.perf_counter()
        for i in range(steps):
            t = clock()
            now = int(time.time() * 1000)
            pending.extend(Metric(k, float(v), now, i) for k, v in _metrics(i).items())
            if len(pending) >= 1000:
                client.log_batch(run_id, metrics=pending[:1000])
                del pending[:1000]
            blocked.append(clock() - t)
        if pending:
            client.log_batch(run_id, metrics=pending)
        loop = time.perf_counter() - start
        client.set_terminated(run_id)
        ended = time.perf_counter() - start

    from mlflow import MlflowClient

    assert run_id is not None
    client = MlflowClient(uri)
    status = client.get_run(run_id).info.status
    points = 0
    for key in _metrics(0):
        points += len(client.get_metric_history(run_id, key))
    if status != "FINISHED" or points != 3 * steps:
        raise SystemExit(f"{case}: run {run_id} is {status} with {points} of {3 * steps} points")
    blocked.sort()
    return {
        "median": statistics.median(blocked) / 1e9,
        "p99": blocked[int(len(blocked) * 0.99)] / 1e9,
        "loop": loop,
        "ended": ended,
    }


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _child_memory(uri: str, bound: int, points: int, folder: str) -> dict[str, Any]:
    """Start a session, wait until the parent has shut the server's port, log ``points``
    points, and report the growth of the peak RSS while logging (Linux: /proc)."""
    from trackcfg import TrackingSession, load_config

    cfg = load_config(
        overrides={
            "server.mlflow_tracking_uri": uri,
            "tracking.experiment.name": "bench-logging-memory",
            "tracking.logging.max_buffered": bound,
            "tracking.logging.journal_dir": folder,
            "tracking.logging.exit_timeout": 1,
        }
    )
    raised = 0
    with TrackingSession(cfg, name="bench-memory") as s:
        s.flush()  # what entering logged is on the server before it goes away
        print("ready", flush=True)
        sys.stdin.readline()  # the port is closed now
        # Writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS (Linux 4.0+);
        # without it, the peak so far (entering the session) may hide part of the growth.
        try:
            Path("/proc/self/clear_refs").write_text("5")
            reset = True
        except OSError:
            reset = False
        before = _status_kb("VmRSS")
        start = time.perf_counter()
        for i in range(points // 3):
            try:
                s.log_metrics(_metrics(i), step=i)
            except Exception:
                raised += 1
        loop = time.perf_counter() - start
        peak = _status_kb("VmHWM")
        leaving = time.perf_counter()
    ended = time.perf_counter() - leaving
    journals = list(Path(folder).glob("*.journal"))
    return {
        "growth_kb": peak - before,
        "peak_reset": reset,
        "loop": loop,
        "exit": ended,
        "raised": raised,
        "journal_mb": sum(p.stat().st_size for p in journals) / 1e6,
    }


# ---------------------------------------------------------------------------------------------
# the parent


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in CACHED_BYTECODE_ENV.items() if not k.startswith("TRACKCFG_")}
    env.pop("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", None)
    env["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    env.update(extra)
    return env


def _run_case(case: str, uri: str, cwd: Path, steps: int | None = None) -> dict[str, Any]:
    steps = steps or CASES[case][1]
    folder = tempfile.mkdtemp(prefix="journal-", dir=cwd)
    extra = (
        {"MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS": ASYNC_BUFFERING}
        if case == "mlflow-async-buffered"
        else {}
    )
    result = child_case(__file__, [case, uri, str(steps), folder], cwd=cwd, env=_child_env(**extra))
    scale = STEPS / steps  # the sampled cases, scaled to STEPS
    result["loop"] *= scale
    result["ended"] *= scale
    return result


def _measure(uri: str, cwd: Path) -> dict[str, dict[str, float]]:
    """Each figure of each case: the median of REPEATS runs in turns for the quick cases."""
    if not QUICK:  # the server's first requests (imports, caches, its database) are slow
        _run_case("floor", uri, cwd, WARMUP_STEPS)
        _run_case("trackcfg", uri, cwd, WARMUP_STEPS)
    runs: dict[str, list[dict[str, Any]]] = {case: [] for case in CASES}
    for turn in range(REPEATS):
        for case in CASES:
            if turn == 0 or case in REPEATED:
                runs[case].append(_run_case(case, uri, cwd))
    return {
        case: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for case, results in runs.items()
    }


class _Gate:
    """A TCP forwarder to the server: the session starts through it, then ``close()`` shuts
    its port (and the connections through it), as a server that went away."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets: list[socket.socket] = []
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = socket.create_connection(self._target)
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _memory(url: str, bound: int, cwd: Path) -> dict[str, Any]:
    gate = _Gate(url)
    folder = tempfile.mkdtemp(prefix="journal-", dir=cwd)
    with subprocess.Popen(
        [sys.executable, __file__, "--memory", gate.url, str(bound), str(MEMORY_POINTS), folder],
        cwd=cwd,
        env=_child_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdin is not None
        assert child.stdout is not None
        try:
            ready = child.stdout.readline()
            gate.close()
            if ready.strip() == "ready":
                child.stdin.write("go\n")
                child.stdin.flush()
            out, err = child.communicate(timeout=1800)
        finally:
            gate.close()
            if child.poll() is None:
                child.kill()
    if child.returncode != 0 or ready.strip() != "ready":
        raise RuntimeError(f"memory child failed:\n{ready}{out[-2000:]}\n{err[-4000:]}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


@contextlib.contextmanager
def _sqlite_store() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/store.db"
        from mlflow import MlflowClient

        MlflowClient(uri).search_experiments()  # creates the tables once, outside the timing
        yield uri


def _s(seconds: float) -> str:
    return f"{seconds:.2f} s"


def run() -> str:
    load = os.getloadavg()[0]
    targets: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        with mlflow_server() as url:
            targets["default server"] = _measure(url, cwd)
            memory = _memory(url, MEMORY_BOUND, cwd)
            unbounded = _memory(url, MEMORY_POINTS, cwd)
        if not QUICK:  # the smoke run in the test suite has one shared server
            with mlflow_server(workers=1) as url:
                targets["--workers 1"] = _measure(url, cwd)
            with _sqlite_store() as uri:
                targets["local SQLite"] = _measure(uri, cwd)
    names = list(targets)
    runs = (
        f"median of {REPEATS} runs in turns for trackcfg buffered, MLflow's buffered queue and "
        "the floor; each case in a fresh interpreter"
    )

    rows = []
    for case, (label, steps) in CASES.items():
        if case == "floor":
            continue
        sampled = f" ({steps} steps timed)" if steps != STEPS else ""
        rows.append(
            (
                label + sampled,
                *(
                    f"{_ms(targets[t][case]['median'])} (p99 {_ms(targets[t][case]['p99'])}, "
                    f"mean {_ms(targets[t][case]['loop'] / STEPS)})"
                    for t in names
                ),
            )
        )
    text = table(
        f"Buffered logging: time the loop is blocked per step, {STEPS} steps of 3 metrics "
        f"(median per step; {runs})",
        rows,
        ("client", *names),
    )

    rows = []
    for case, (label, steps) in CASES.items():
        sampled = f" (scaled from {steps} steps)" if steps != STEPS else ""
        rows.append((label + sampled, *(_s(targets[t][case]["ended"]) for t in names)))
    text += "\n" + table(
        f"Buffered logging: from the first call until the run has ended with all {3 * STEPS} "
        f"points on the server ({runs})",
        rows,
        ("client", *names),
    )

    def ratio(top: tuple[str, str], bottom: tuple[str, str]) -> list[float]:
        """(case, figure) over (case, figure), per target."""
        return [targets[t][top[0]][top[1]] / targets[t][bottom[0]][bottom[1]] for t in names]

    def goal(name: str, values: list[float], fmt: str, limit: float, most: bool) -> tuple[str, ...]:
        cells = []
        for value in values:
            met = value <= limit if most else value >= limit
            cells.append(f"{fmt.format(value)} ({'met' if met else 'missed'})")
        return (name, *cells)

    per_step = [targets[t]["trackcfg"]["median"] * 1000 for t in names]
    rows = [
        goal("blocked per step <= 0.05 ms", per_step, "{:.3f} ms", 0.05, True),
        goal(
            "MLflow's async queue / trackcfg, per step >= 20x",
            ratio(("mlflow-async", "median"), ("trackcfg", "median")),
            "{:.0f}x",
            20,
            False,
        ),
        goal(
            "until ended / floor <= 1.5x",
            ratio(("trackcfg", "ended"), ("floor", "ended")),
            "{:.2f}x",
            1.5,
            True,
        ),
        goal(
            "until ended / MLflow's async queue <= 0.5x",
            ratio(("trackcfg", "ended"), ("mlflow-async", "ended")),
            "{:.2f}x",
            0.5,
            True,
        ),
        goal(
            "loop time, journal: true / false <= 2x",
            ratio(("trackcfg", "loop"), ("trackcfg-nojournal", "loop")),
            "{:.2f}x",
            2,
            True,
        ),
    ]
    text += "\n" + table("Buffered logging: the issue's goals", rows, ("goal", *names))

    per_point = unbounded["growth_kb"] * 1024 / MEMORY_POINTS
    expected = per_point * MEMORY_BOUND / 1e6
    rows = [
        (
            f"max_buffered: {MEMORY_BOUND} (default), journal: true",
            f"{memory['growth_kb'] / 1024:.1f} MB",
            f"{expected:.1f} MB",
            f"{memory['journal_mb']:.0f} MB",
            _s(memory["loop"]),
            _s(memory["exit"]),
            str(memory["raised"]),
        ),
        (
            f"max_buffered: {MEMORY_POINTS} (all in memory; for the cost per point)",
            f"{unbounded['growth_kb'] / 1024:.1f} MB",
            f"{per_point * MEMORY_POINTS / 1e6:.1f} MB",
            f"{unbounded['journal_mb']:.0f} MB",
            _s(unbounded["loop"]),
            _s(unbounded["exit"]),
            str(unbounded["raised"]),
        ),
    ]
    text += "\n" + table(
        f"Buffered logging: {MEMORY_POINTS} points logged while the server is down "
        "(its port closed after the session started; exit_timeout: 1)",
        rows,
        (
            "case",
            "peak RSS growth",
            "expected (bound x bytes per point)",
            "journal on disk",
            "loop",
            "leaving the session",
            "calls that raised",
        ),
    )
    text += (
        f"\nBytes per buffered point: {per_point:.0f} (the unbounded case's growth / "
        f"{MEMORY_POINTS}); goal: the bounded case's growth within the bound's expected size.\n"
        "Per step: time.perf_counter_ns around each logging call; mean = the loop's time / "
        "steps (it includes the\nsender thread's share of the GIL and Python's garbage "
        "collections). The floor's loop blocks on its\nown log_batch requests; the sampled "
        "synchronous cases' end times are their loop times scaled.\n"
        f"Load average (1 min) at the start and the end: {load:.1f}, {os.getloadavg()[0]:.1f} "
        f"({os.cpu_count()} cores).\n"
    )
    return text


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--case":
        case, uri, steps, folder = sys.argv[2:6]
        print(json.dumps(_child_case(case, uri, int(steps), folder)))
    elif len(sys.argv) > 1 and sys.argv[1] == "--memory":
        uri, bound, points, folder = sys.argv[2:6]
        print(json.dumps(_child_memory(uri, int(bound), int(points), folder)))
    else:
        print(run())
