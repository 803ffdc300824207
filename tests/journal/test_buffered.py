"""Buffered logging (``tracking.logging.mode: buffered``) and ``trackcfg sync``, on real stores.

One ``mlflow server`` of this module's own (SQLite store) is started at the first test and
killed (SIGKILL of its process group) and started again on the same port and store by the
outage tests; a test that needs it up starts it again if an earlier one left it down, so the
tests hold in any order.  The others use a local SQLite store, or MLflow's old file store,
which keeps duplicate metric points (see ``test_sql_store_drops_identical_points_file_store_
keeps_them``).  ``trackcfg sync`` runs as a subprocess (``python -m trackcfg sync``), as a
user runs it.  Sessions talking to the server use ``server.request_timeout: 2`` and
``max_retries: 1``: MLflow's own defaults retry for minutes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner
from fakes import FAKE_URI, FakeProject, FakeStore, open_session
from helpers import (
    TRACKING_SETTINGS,
    copy_store,
    header_providers_module,
    in_forked_child,
    project_folder,
    run_python,
    subprocess_env,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient
from mlflow.entities import Metric

from trackcfg import (
    ServerError,
    TrackingConfig,
    TrackingSession,
    TrackingUnavailableError,
    load_config,
)
from trackcfg._backend import RunStatus
from trackcfg._cli import cli
from trackcfg.exceptions import RunError

if TYPE_CHECKING:
    from conftest import _MlflowServer

HEALTH_TIMEOUT = 120.0
WATCHDOG = 180.0
"""Bounds waits that end on their own well before it; only a hang reaches it."""


def config_text(uri: str, **logging_keys: Any) -> str:
    lines = [f"    {key}: {json.dumps(value)}" for key, value in logging_keys.items()]
    body = "\n".join(lines) if lines else "    mode: buffered"
    return (
        textwrap.dedent(
            f"""\
            server:
              mlflow_tracking_uri: {uri}
              request_timeout: 2
              max_retries: 1
            tracking:
              experiment:
                name: buffered
              logging:
            """
        )
        + body
        + "\n"
    )


def make_project(root: Path, uri: str, **logging_keys: Any) -> Path:
    """A project folder whose ``mlflow.yml`` logs to ``uri`` with these
    ``tracking.logging`` keys; returns the folder."""
    return project_folder(root, name="buffered", config=config_text(uri, **logging_keys))


def journals(project: Path) -> list[Path]:
    return sorted((project / ".trackcfg" / "journal").glob("*.journal"))


def sync_command(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m trackcfg sync PROJECT ...`` in a child process, as a user runs it."""
    return run_python(
        "-m",
        "trackcfg",
        "sync",
        str(project),
        *args,
        cwd=project,
        env=subprocess_env(drop=TRACKING_SETTINGS),
        timeout=WATCHDOG,
    )


def sync_in_process(project: Path, *args: str) -> Any:
    """``trackcfg sync PROJECT ...`` through click's runner: the same command without a
    second interpreter importing mlflow (seconds on a busy machine)."""
    result = CliRunner().invoke(cli, ["sync", str(project), *args], catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    """A metric's points as (step, value), in step order (duplicates kept)."""
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def own_tags(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if not k.startswith("mlflow.")}


def sync_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("trackcfg") and "trackcfg sync" in r.getMessage()
    ]


# ---------------------------------------------------------------------------------------------
# The module's server.


@dataclasses.dataclass
class Server:
    """A real ``mlflow server`` the tests kill and start again on the same port and store."""

    launch: Callable[..., _MlflowServer]
    backend: str
    artifacts: Path
    port: int
    current: _MlflowServer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> str:
        """Its URL once it answers (started again first if a test left it down)."""
        if self.current.process.poll() is not None:
            self.start_again()
        self.current.wait_healthy(HEALTH_TIMEOUT)
        return self.url

    def kill(self) -> None:
        """An outage, not a shutdown: SIGKILL of the server's whole process group."""
        os.killpg(self.current.process.pid, signal.SIGKILL)
        self.current.process.wait(timeout=30)

    def start_again(self) -> None:
        self.current = self.launch(self.backend, self.artifacts, port=self.port)


@pytest.fixture(scope="module")
def server(
    mlflow_server_launcher: Callable[..., _MlflowServer],
    tmp_path_factory: pytest.TempPathFactory,
) -> Server:
    folder = tmp_path_factory.mktemp("buffered-server")
    backend = f"sqlite:///{folder / 'server.db'}"
    started = mlflow_server_launcher(backend, folder / "artifacts")
    port = int(started.url.rpartition(":")[2])
    return Server(mlflow_server_launcher, backend, folder / "artifacts", port, started)


@pytest.fixture(scope="module", autouse=True)
def _start_server_early(request: pytest.FixtureRequest) -> None:
    """The server starts at the module's first test (its 15-60 s start overlaps the local
    tests) when any selected test here needs it; under pytest-xdist at the first test that
    needs it (``ONE_WORKER_FIXTURES`` in conftest.py)."""
    if "PYTEST_XDIST_WORKER" not in os.environ and any(
        "server" in getattr(item, "fixturenames", ()) for item in request.session.items
    ):
        request.getfixturevalue("server")


# ---------------------------------------------------------------------------------------------
# Outages.

OUTAGE_SECONDS = 10.0


def test_server_killed_at_step_2000_and_restarted_the_loop_never_raises_nothing_is_lost(
    server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The server is SIGKILLed at step 2,000 of 5,000 and started again on the same port and
    store 10 s later.  Steps 2,000-3,999 are logged while it is down; the loop then waits for
    it (as a loop goes on training) and logs 4,000-4,999 while the backlog drains.  No call
    raises or waits on the network; afterwards the run holds every point (3 metrics a step)
    exactly once with its value, the param, the tag, and is FINISHED; one warning said the
    server went away and one that it was back.  (The store is SQL: it would drop a point sent
    again with the same timestamp, so "exactly once" here catches points sent again with
    another timestamp, lost ones and wrong values.)"""
    url = server.up()
    project = make_project(tmp_path / "proj", url, exit_timeout=WATCHDOG)
    config = load_config(project)
    back = threading.Event()
    restart_errors: list[BaseException] = []

    def restart_later() -> None:
        try:
            time.sleep(OUTAGE_SECONDS)  # the outage's length: the scenario, not a wait
            server.start_again()
            server.current.wait_healthy(HEALTH_TIMEOUT)
        except BaseException as exc:  # reported by the test's thread
            restart_errors.append(exc)
        finally:
            back.set()

    def values(step: int) -> dict[str, float]:
        return {"loss": 1.0 / (step + 1), "acc": step / 5000, "lr": 0.1 * 0.999**step}

    restarter = threading.Thread(target=restart_later, daemon=True)
    took: list[float] = []
    with caplog.at_level(logging.INFO, logger="trackcfg"):
        with TrackingSession(config, name="outage", params={"lr0": 0.1}) as session:
            session.set_tags({"phase": "train"})
            for step in range(5000):
                if step == 2000:
                    server.kill()
                    restarter.start()
                if step == 4000:
                    assert back.wait(OUTAGE_SECONDS + HEALTH_TIMEOUT + 30)
                    assert not restart_errors, restart_errors
                started = time.perf_counter()
                session.log_metrics(values(step), step=step)
                took.append(time.perf_counter() - started)
        run_id = session.run_id or ""

    # A call that waited on the dead server would take a request's budget (seconds); one
    # slow call alone can be the machine's scheduler, so the typical call is what is bounded.
    during = sorted(took[2000:4000])
    assert during[len(during) // 2] < 0.05, f"median call during the outage: {during[1000]} s"
    assert during[-1] < 10.0
    client = MlflowClient(tracking_uri=url)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr0": "0.1"}
    assert own_tags(run.data.tags) == {"phase": "train"}
    for key in ("loss", "acc", "lr"):
        assert history(client, run_id, key) == [(s, values(s)[key]) for s in range(5000)], key
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len([m for m in warnings if "is unreachable" in m]) == 1, warnings
    assert len([m for m in warnings if "answers again" in m]) == 1, warnings
    assert journals(project) == []


EXIT_TIMEOUT = 3.0


def test_server_down_when_the_session_ends_then_sync_sends_everything_and_the_status(
    server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Leaving the session while the server is down returns within ``exit_timeout``
    without raising and says, once, which command sends the rest; once the server is back,
    ``trackcfg sync`` sends every call and ends the run with the session's status; a second
    sync has nothing to send."""
    url = server.up()
    project = make_project(tmp_path / "proj", url, flush_seconds=3600, exit_timeout=EXIT_TIMEOUT)
    config = load_config(project)
    with caplog.at_level(logging.WARNING, logger="trackcfg"):
        with TrackingSession(config, name="late", params={"epochs": 3}) as session:
            session.set_tags({"stage": "eval"})
            for step in range(300):
                session.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
            server.kill()
            leaving = time.monotonic()
        left_after = time.monotonic() - leaving
    run_id = session.run_id or ""

    assert left_after <= EXIT_TIMEOUT + 0.75, f"the session took {left_after:.1f} s to end"
    said = sync_messages(caplog)
    assert len(said) == 1, said
    assert len(journals(project)) == 1
    assert (
        f"301 logging call(s) (300 metric point(s)) and the end of run {run_id} (FINISHED) "
        f"are kept in the journal {journals(project)[0]}; send them with: trackcfg sync {project}"
    ) in said[0]

    url = server.up()
    client = MlflowClient(tracking_uri=url)
    assert client.get_run(run_id).info.status == "RUNNING"  # nothing went before the end
    assert client.get_metric_history(run_id, "loss") == []

    done = sync_command(project)
    assert done.returncode == 0, done.stdout + done.stderr
    # The session's own params went at its start (before the block): 1 set_tags + 300 steps.
    assert f"sent: run {run_id} (301 call(s), 300 point(s), ended FINISHED)" in done.stdout
    assert "Traceback" not in done.stderr
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"epochs": "3"}
    assert own_tags(run.data.tags) == {"stage": "eval"}
    assert history(client, run_id, "loss") == [(s, 1.0 / (s + 1)) for s in range(300)]
    assert journals(project) == []

    again = sync_command(project)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to send" in again.stdout
    assert history(client, run_id, "loss") == [(s, 1.0 / (s + 1)) for s in range(300)]


# ---------------------------------------------------------------------------------------------
# A killed client.

# The user's script: log each step, and say so once the call has returned.
KILLED_CLIENT = textwrap.dedent(
    """
    import sys
    from trackcfg import TrackingSession, load_config

    with TrackingSession(load_config(sys.argv[1]), name="doomed", params={"seed": 7}) as s:
        s.set_tags({"kind": "doomed"})
        print("RUN", s.run_id, flush=True)
        step = 0
        while True:
            s.log_metrics({"loss": 1.0 / (step + 1), "sq": float(step * step)}, step=step)
            print(step, flush=True)
            step += 1
    """
)


def test_client_killed_mid_loop_sync_sends_every_call_that_returned_and_ends_it_killed(
    server: Server, tmp_path: Path
) -> None:
    """SIGKILL mid-loop: after ``trackcfg sync`` every step whose call returned is on the
    server, once, with the param and tag, and the run is KILLED.  ``max_buffered`` is small,
    so most calls were held only in the journal (not in memory) when the process died."""
    url = server.up()
    project = make_project(tmp_path / "proj", url, max_buffered=200)
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_CLIENT, str(project)],
        cwd=project,
        env=subprocess_env(drop=TRACKING_SETTINGS),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(WATCHDOG, process.kill)
    watchdog.start()
    try:
        assert process.stdout is not None
        assert process.stderr is not None
        first = process.stdout.readline()
        assert first.startswith("RUN "), first + process.communicate()[1]
        run_id = first.split()[1]
        returned = -1  # the last step whose call returned, as the client printed it
        for line in process.stdout:
            returned = int(line)
            if returned >= 3000:
                break
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        # Through the same reader: what it read ahead of the loop is in its buffer.
        rest, err = process.stdout.read(), process.stderr.read()
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL, err
    for line in rest.split("\n")[:-1]:  # whole lines: the last may be cut by the kill
        returned = int(line)
    assert returned >= 3000

    client = MlflowClient(tracking_uri=url)
    assert client.get_run(run_id).info.status == "RUNNING"
    done = sync_command(project, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    (result,) = json.loads(done.stdout)["results"]
    assert (result["run_id"], result["state"], result["end"]) == (run_id, "sent", "KILLED")

    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.info.end_time is not None
    assert run.data.params == {"seed": "7"}
    assert own_tags(run.data.tags) == {"kind": "doomed"}
    loss = history(client, run_id, "loss")
    sq = history(client, run_id, "sq")
    # Every call that returned; at most one more (it returned, the process died printing).
    assert len(loss) in (returned + 1, returned + 2)
    assert loss == [(s, 1.0 / (s + 1)) for s in range(len(loss))]
    assert sq == [(s, float(s * s)) for s in range(len(loss))]
    assert journals(project) == []


# ---------------------------------------------------------------------------------------------
# A value the server refuses.


def wait_for(check: Callable[[], bool], what: str) -> None:
    """Poll a condition a user could observe in the store (bounded by the watchdog)."""
    deadline = time.monotonic() + WATCHDOG
    while not check():
        assert time.monotonic() < deadline, f"not seen within {WATCHDOG} s: {what}"
        time.sleep(0.1)


def test_a_value_the_server_refuses_is_a_run_error_naming_the_key_and_the_rest_lands(
    server: Server, tmp_path: Path
) -> None:
    """A param logged through plain MLflow, then with another value through the session:
    trackcfg's local check cannot know it, the server refuses it (HTTP 400, "Changing param
    values is not allowed").  The rest of that batch lands; the next logging call raises a
    ``RunError`` naming the key, and a later refusal is raised when the session ends (the run
    still ends FINISHED)."""
    import mlflow

    url = server.up()
    config = load_config(make_project(tmp_path / "proj", url, flush_seconds=0.2))
    client = MlflowClient(tracking_uri=url)
    session = TrackingSession(config, name="refused")
    # The whole session is the subject: the last refusal is raised as it ends.
    with pytest.raises(RunError) as at_end, session:  # noqa: PT012
        run_id = session.run_id or ""
        mlflow.log_param("lr", "0.1")  # through MLflow, behind trackcfg's back
        session.log_params({"lr": 0.2, "batch": 32})
        session.log_metrics({"loss": 0.5}, step=1)
        session.set_tags({"team": "vision"})
        wait_for(lambda: bool(client.get_metric_history(run_id, "loss")), "the batch's rest")
        with pytest.raises(RunError) as at_next_call:
            session.log_metrics({"loss": 0.4}, step=2)
        session.log_metrics({"loss": 0.3}, step=3)  # reported once, then logging goes on
        mlflow.log_param("wd", "0")
        session.log_params({"wd": 1})

    assert "param 'lr'" in str(at_next_call.value)
    assert "Changing param values is not allowed" in str(at_next_call.value)
    assert "param 'wd'" in str(at_end.value)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.1", "batch": "32", "wd": "0"}
    assert own_tags(run.data.tags) == {"team": "vision"}
    assert history(client, run_id, "loss") == [(1, 0.5), (3, 0.3)]


# ---------------------------------------------------------------------------------------------
# A forked child.


def test_a_forked_child_never_sends_or_writes_its_parents_buffer(
    server: Server, tmp_path: Path
) -> None:
    """``os.fork()`` while calls are waiting in the buffer: the child's call through the
    parent's session object lands (sent by the child itself), the child's ``flush()`` does not
    wait for the parent's pending calls, and nothing of the parent's buffer or journal is
    touched: every parent point is there once, and the parent's journal holds each call once
    (no call numbered twice)."""
    url = server.up()
    project = make_project(tmp_path / "proj", url, flush_seconds=3600)
    config = load_config(project)
    client = MlflowClient(tracking_uri=url)
    with TrackingSession(config, name="forking") as session:
        run_id = session.run_id or ""
        for step in range(100):
            session.log_metrics({"loss": float(step)}, step=step)

        def child_logs() -> None:
            session.log_metric("from_child", 1.0, step=0)
            session.flush(timeout=10)

        assert in_forked_child(child_logs, bound=WATCHDOG, hung="the forked child hung") == 0
        for step in range(100, 200):
            session.log_metrics({"loss": float(step)}, step=step)
        (journal,) = journals(project)
        numbers = [
            json.loads(line)["s"] for line in journal.read_text().splitlines() if '"s":' in line
        ]
        assert len(numbers) == len(set(numbers)) >= 200

    assert history(client, run_id, "loss") == [(s, float(s)) for s in range(200)]
    assert history(client, run_id, "from_child") == [(0, 1.0)]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert journals(project) == []


# ---------------------------------------------------------------------------------------------
# Replay, journals.

# A process that logs and dies without leaving the session (no flush, no end), as SIGKILL or
# the OOM killer leave it; flush_seconds is an hour, so nothing was sent before.
DIES_AFTER_LOGGING = textwrap.dedent(
    """
    import os, sys
    from trackcfg import TrackingSession, load_config

    with TrackingSession(load_config(sys.argv[1]), name="dies", params={"seed": 3}) as s:
        s.set_tags({"kind": "died"})
        for step in range(int(sys.argv[2])):
            s.log_metrics({"loss": 1.0 / (step + 1), "nan": float("nan")}, step=step)
        print(s.run_id, flush=True)
        os._exit(0)
    """
)


def dies_after_logging(project: Path, steps: int) -> str:
    """Run :data:`DIES_AFTER_LOGGING` in ``project``; the run id."""
    done = run_python(
        "-c",
        DIES_AFTER_LOGGING,
        str(project),
        str(steps),
        cwd=project,
        env=subprocess_env(drop=TRACKING_SETTINGS),
        timeout=WATCHDOG,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[-1]


def test_sql_store_drops_identical_points_file_store_keeps_them(
    migrated_sqlite_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Verified here with MLflow 3.17: a point identical in key, step, timestamp and value,
    logged again (in the same ``log_batch`` or another), is dropped by MLflow's SQL store (its
    primary key), NaN included; the old file store keeps every copy.  So ``trackcfg sync``
    must not rely on the store to replay a journal without duplicates (it leaves out the
    points the store holds already), and the replay tests below run on a file store."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    sql = f"sqlite:///{copy_store(migrated_sqlite_db, tmp_path / 'sql')}"
    kept = {}
    for name, uri in (("sql", sql), ("file", (tmp_path / "file").as_uri())):
        client = MlflowClient(tracking_uri=uri)
        run_id = client.create_run(client.create_experiment("dups")).info.run_id
        point = Metric("k", 0.1 + 0.2, 1_700_000_000_123, 3)
        nan = Metric("n", math.nan, 1_700_000_000_123, 3)
        client.log_batch(run_id, metrics=[point, point, nan])
        client.log_batch(run_id, metrics=[point, nan])
        kept[name] = (
            len(client.get_metric_history(run_id, "k")),
            len(client.get_metric_history(run_id, "n")),
        )
    assert kept == {"sql": (1, 1), "file": (3, 2)}


def legacy_file_store_project(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project whose store folder ``mlruns`` is an old MLflow file store (used as one):
    it keeps duplicate points, so a replay that sends a point twice shows."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store = root / "mlruns"
    MlflowClient(tracking_uri=store.as_uri()).search_experiments()  # creates it
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    return make_project(root, "mlruns")


def test_replaying_a_journal_twice_or_after_a_sync_killed_half_way_duplicates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a store that keeps duplicates: a journal sent, then found again whole (a sync
    killed after sending, before it acknowledged anything), then again with half of it
    acknowledged (killed half-way): each point is in the run once, NaN included, and the
    run ended KILLED once."""
    project = legacy_file_store_project(tmp_path / "proj", monkeypatch)
    run_id = dies_after_logging(project, 300)
    (journal,) = journals(project)
    whole = journal.read_text()

    first = sync_command(project)
    assert first.returncode == 0, first.stdout + first.stderr
    # The session's params went at its start: 1 set_tags + 300 steps are in the journal.
    assert f"sent: run {run_id} (301 call(s), 600 point(s), ended KILLED)" in first.stdout
    assert journals(project) == []

    journal.write_text(whole)  # as a sync killed before its first acknowledgement left it
    second = sync_in_process(project)
    assert second.exit_code == 0, second.output

    records = [json.loads(line)["s"] for line in whole.splitlines() if '"s":' in line]
    half = records[len(records) // 2]
    journal.write_text(whole + json.dumps({"ack": half}) + "\n")  # killed half-way
    third = sync_in_process(project)
    assert third.exit_code == 0, third.output

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(project / "mlruns").as_uri())
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.params == {"seed": "3"}
    assert own_tags(run.data.tags) == {"kind": "died"}
    assert history(client, run_id, "loss") == [(s, 1.0 / (s + 1)) for s in range(300)]
    assert [step for step, _ in history(client, run_id, "nan")] == list(range(300))
    assert journals(project) == []


def test_a_torn_journal_tail_is_reported_and_the_valid_prefix_sent(
    migrated_sqlite_db: Path, tmp_path: Path
) -> None:
    """The last line cut short (the process died mid-write): ``sync`` says so, sends every
    call before it, ends the run KILLED and exits 0."""
    project = make_project(tmp_path / "proj", "mlruns", flush_seconds=3600)
    copy_store(migrated_sqlite_db, project / "mlruns")
    run_id = dies_after_logging(project, 50)
    (journal,) = journals(project)
    data = journal.read_bytes()
    journal.write_bytes(data[: data.rstrip(b"\n").rfind(b"\n") + 12])  # a piece of the last

    done = sync_in_process(project)
    assert done.exit_code == 0, done.output
    assert "the last line was cut short" in done.stdout
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert history(client, run_id, "loss") == [(s, 1.0 / (s + 1)) for s in range(49)]
    assert journals(project) == []


def test_a_journal_of_another_format_version_is_a_clear_error_not_a_traceback(
    tmp_path: Path,
) -> None:
    project = make_project(tmp_path / "proj", "mlruns")
    folder = project / ".trackcfg" / "journal"
    folder.mkdir(parents=True)
    journal = folder / "0123456789abcdef0123456789abcdef.journal"
    header = {
        "trackcfg_journal": 99,
        "run_id": journal.stem,
        "tracking_uri": f"sqlite:///{project / 'mlruns' / 'mlflow.db'}",
    }
    journal.write_text(json.dumps(header) + "\n" + '{"s": 1, "z": "a record of format 99"}\n')

    done = sync_command(project)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert f"failed: run {journal.stem}: {journal}" in done.stdout
    assert "journal format 99" in done.stderr
    assert str(journal) in done.stderr
    assert journal.exists()  # left for the trackcfg that wrote it


def test_a_resumed_run_sends_what_its_killed_session_left_in_the_journal(
    migrated_sqlite_db: Path, tmp_path: Path
) -> None:
    """A job killed, then started again on the same run (``tracking.run.id``) before anyone
    ran ``trackcfg sync``: the new session sends what the killed one left in its journal (in
    the background) without ending the run under itself; the run ends FINISHED with every
    step of both."""
    project = make_project(tmp_path / "proj", "mlruns", flush_seconds=3600)
    copy_store(migrated_sqlite_db, project / "mlruns")
    run_id = dies_after_logging(project, 50)
    # The killed job left the run RUNNING: continuing it anyway is the user's explicit choice.
    config = load_config(
        project, overrides={"tracking.run.id": run_id, "tracking.run.resume_running": True}
    )
    with TrackingSession(config, name="resumed") as session:
        for step in range(50, 80):
            session.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    wait_for(lambda: journals(project) == [], "the killed session's journal sent")

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"seed": "3"}
    assert history(client, run_id, "loss") == [(s, 1.0 / (s + 1)) for s in range(80)]
    assert journals(project) == []


def test_sync_leaves_a_journal_a_live_session_writes_alone(
    migrated_sqlite_db: Path, tmp_path: Path
) -> None:
    """A session still running holds its journal: ``sync`` (and ``--dry-run``) reports it
    "in use", sends nothing of it and exits 0."""
    project = make_project(tmp_path / "proj", "mlruns", flush_seconds=3600)
    copy_store(migrated_sqlite_db, project / "mlruns")
    with TrackingSession(load_config(project), name="live") as session:
        session.log_metrics({"loss": 1.0}, step=0)
        for args in ([], ["--dry-run"]):
            result = sync_in_process(project, *args)
            assert result.exit_code == 0, result.output
            assert f"in use: run {session.run_id}: a running session is writing it" in (
                result.stdout
            )
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    assert history(client, session.run_id or "", "loss") == [(0, 1.0)]


def test_sync_talks_to_the_server_as_a_session_does_and_gives_everything_back(
    server: Server, tmp_path: Path, http_requests: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every request of ``trackcfg sync`` carries the configured request header provider's
    headers, as a session's do; afterwards no header and no ``MLFLOW_*`` variable is left
    behind."""
    from trackcfg._journal import FORMAT_VERSION

    url = server.up()
    monkeypatch.syspath_prepend(str(header_providers_module(tmp_path / "modules")))
    project = project_folder(
        tmp_path / "proj",
        name="buffered",
        config=textwrap.dedent(
            f"""\
            server:
              mlflow_tracking_uri: {url}
              request_timeout: 2
              max_retries: 1
              request_header_provider:
                type: trackcfg_test_headers.TeamHeader
                init_kwargs: {{team: vision}}
            """
        ),
    )
    client = MlflowClient(tracking_uri=url)
    run_id = client.create_run(client.create_experiment(f"sync-{tmp_path.name}")).info.run_id
    journal = project / ".trackcfg" / "journal" / f"{run_id}.0a1b2c3d4e5f.journal"
    journal.parent.mkdir(parents=True)
    header = {"trackcfg_journal": FORMAT_VERSION, "run_id": run_id, "tracking_uri": url}
    record = {"s": 1, "p": {"k": "v"}, "m": [["loss", 0.5, 1_700_000_000_000, 0]]}
    journal.write_text(json.dumps(header) + "\n" + json.dumps(record) + "\n")
    http_requests.clear()
    before = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}

    result = sync_in_process(project)
    assert result.exit_code == 0, result.output
    during = [r for r in http_requests if r.url.startswith(url)]
    http_requests.clear()
    assert during
    assert all(r.headers.get("X-Team") == "vision" for r in during)
    assert {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")} == before
    run = client.get_run(run_id)
    assert http_requests
    assert all("X-Team" not in r.headers for r in http_requests)
    assert (run.info.status, run.data.params) == ("KILLED", {"k": "v"})
    assert history(client, run_id, "loss") == [(0, 0.5)]


# ---------------------------------------------------------------------------------------------
# The same calls, buffered or not.

PARAM_KEYS = st.sampled_from(["p1", "p2", "p3"])
CALLS = st.lists(
    st.one_of(
        st.tuples(st.just("params"), st.dictionaries(PARAM_KEYS, st.integers(0, 2), min_size=1)),
        st.tuples(
            st.just("tags"),
            st.dictionaries(st.sampled_from(["t1", "t2"]), st.sampled_from("xyz"), min_size=1),
        ),
        st.tuples(
            st.just("metrics"),
            st.dictionaries(
                st.sampled_from(["a", "b", "c"]),
                st.floats(allow_nan=False, allow_infinity=False),
                min_size=1,
            ),
            st.integers(0, 4),
        ),
        st.tuples(st.just("not a number"), st.sampled_from(["a", "d"])),
        st.tuples(st.just("flush")),
    ),
    max_size=25,
)


def apply(session: TrackingSession, calls: list[tuple[Any, ...]]) -> list[str]:
    """Make the calls; what each one did (``ok`` or the exception it raised)."""
    outcomes = []
    for call in calls:
        try:
            if call[0] == "params":
                session.log_params(call[1])
            elif call[0] == "tags":
                session.set_tags(call[1])
            elif call[0] == "metrics":
                session.log_metrics(call[1], step=call[2])
            elif call[0] == "not a number":
                session.log_metrics({call[1]: "high"}, step=0)  # type: ignore[dict-item]
            else:
                session.flush()
            outcomes.append("ok")
        except Exception as exc:
            outcomes.append(f"{type(exc).__name__}: {exc}")
    return outcomes


def store_content(client: MlflowClient, run_id: str) -> dict[str, Any]:
    """What a run holds, less what differs between two runs by nature (ids, times, names).
    Metric histories are sets of (step, value): whether two identical values logged at the
    same step in the same millisecond are one point depends on timing."""
    run = client.get_run(run_id)
    return {
        "status": run.info.status,
        "params": run.data.params,
        "tags": own_tags(run.data.tags),
        "metrics": {
            key: {(m.step, m.value) for m in client.get_metric_history(run_id, key)}
            for key in run.data.metrics
        },
    }


@pytest.fixture(scope="module")
def property_project(migrated_sqlite_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = make_project(tmp_path_factory.mktemp("property") / "proj", "mlruns")
    copy_store(migrated_sqlite_db, project / "mlruns")
    return project


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls=CALLS)
def test_buffered_calls_leave_the_store_as_the_same_calls_in_sync_mode(
    property_project: Path, calls: list[tuple[Any, ...]]
) -> None:
    """Random sequences of params, tags, metrics (steps included), calls refused locally
    (a param changed, a value that is not a number) and flushes: in ``buffered`` mode each
    call does what it does in ``sync`` mode (returns or raises the same error), and the run
    ends with the same content."""
    client = MlflowClient(tracking_uri=f"sqlite:///{property_project / 'mlruns' / 'mlflow.db'}")
    seen = {}
    for mode in ("buffered", "sync"):
        config = load_config(property_project, overrides={"tracking.logging.mode": mode})
        with TrackingSession(config, name=f"property-{mode}") as session:
            outcomes = apply(session, calls)
        seen[mode] = (outcomes, store_content(client, session.run_id or ""))
    assert seen["buffered"][0] == seen["sync"][0]
    assert seen["buffered"][1] == seen["sync"][1]
    assert journals(property_project) == []


# ---------------------------------------------------------------------------------------------
# Buffered logging (tracking.logging.mode: buffered, the default): what the session decides.


def buffered(fake_project: FakeProject, **logging: Any) -> TrackingConfig:
    settings = {"flush_seconds": 0.05, "exit_timeout": 2.0, **logging}
    return fake_project.config(
        {f"tracking.logging.{key}": value for key, value in settings.items()}, mode="buffered"
    )


def test_buffered_calls_land_in_order_and_the_journal_is_gone_after_a_clean_end(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    with open_session(buffered(fake_project), fake_store, params={"lr": 0.1}) as s:
        for step in range(50):
            s.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        s.set_tags({"stage": "dev"})
        run_id = s.run_id
    assert run_id is not None
    run = fake_store.runs[run_id]
    assert run.status is RunStatus.FINISHED
    assert run.params == {"lr": "0.1"}
    assert run.tags["stage"] == "dev"
    assert [m.step for m in run.metrics] == list(range(50))
    assert not list((fake_project.root / ".trackcfg" / "journal").glob("*.journal"))


def test_buffered_flush_returns_once_everything_is_in_the_store(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    with open_session(buffered(fake_project, flush_seconds=60), fake_store) as s:
        s.log_metrics({"loss": 0.5}, step=1)
        s.flush(timeout=5)
        assert run_id_metrics(fake_store, s) == [("loss", 1)]


def run_id_metrics(fake_store: FakeStore, s: TrackingSession) -> list[tuple[str, int]]:
    assert s.run_id is not None
    return [(m.key, m.step) for m in fake_store.runs[s.run_id].metrics]


def test_buffered_calls_never_raise_while_the_store_is_unreachable(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    with open_session(buffered(fake_project), fake_store) as s:
        for _ in range(2):
            fake_store.fail("log_batch", TrackingUnavailableError("server away"))
        for step in range(5):
            s.log_metrics({"loss": float(step)}, step=step)
        s.flush(timeout=10)  # retried after the failures: everything lands
        assert [step for _, step in run_id_metrics(fake_store, s)] == [0, 1, 2, 3, 4]


def test_buffered_flush_timeout_raises_unavailable_and_loses_nothing(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    with open_session(buffered(fake_project), fake_store) as s:
        for _ in range(2):
            fake_store.fail("log_batch", TrackingUnavailableError("server away"))
        s.log_metrics({"loss": 0.5}, step=1)
        with pytest.raises(TrackingUnavailableError, match="not yet on"):
            s.flush(timeout=0.2)
        s.flush(timeout=30)
        assert run_id_metrics(fake_store, s) == [("loss", 1)]


def test_buffered_rejection_raises_naming_the_key_and_the_rest_lands(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    session = open_session(buffered(fake_project), fake_store)
    # The store refuses any batch holding "bad", like MLflow refuses an invalid value.
    fake_store.refuse_metric("bad")
    with pytest.raises(RunError, match="'bad'"):  # noqa: SIM117
        with session as s:
            s.log_metrics({"good": 1.0, "bad": 2.0, "fine": 3.0}, step=0)
    assert session.run_id is not None
    run = fake_store.runs[session.run_id]
    assert sorted(m.key for m in run.metrics) == ["fine", "good"]
    assert run.status is RunStatus.FINISHED


def test_buffered_end_with_the_store_away_keeps_the_journal_for_sync(
    fake_project: FakeProject, fake_store: FakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    from trackcfg._sync import sync_journals

    session = open_session(buffered(fake_project, exit_timeout=0.3), fake_store)
    with session as s:
        s.log_metrics({"loss": 0.5}, step=1)
        s.flush(timeout=5)
        for _ in range(1000):
            fake_store.fail("log_batch", TrackingUnavailableError("server away"))
        fake_store.fail("end_run", TrackingUnavailableError("server away"))
        s.log_metrics({"loss": 0.25}, step=2)
    assert session.run_id is not None
    assert fake_store.runs[session.run_id].status is RunStatus.RUNNING
    journals = list((fake_project.root / ".trackcfg" / "journal").glob("*.journal"))
    assert [j.name.split(".")[0] for j in journals] == [session.run_id]
    # Leaving did not raise; the warning says what is left, where, and the command.
    assert (
        f"1 logging call(s) (1 metric point(s)) and the end of run {session.run_id} "
        f"(FINISHED) are kept in the journal {journals[0]}; send them with: "
        f"trackcfg sync {fake_project.root}"
    ) in caplog.text

    fake_store.clear_failures()
    results = sync_journals(
        journals[0].parent,
        tracking_uri=FAKE_URI,
        shown_uri=FAKE_URI,
        factory=fake_store,
    )
    assert [(r.state, r.end) for r in results] == [("sent", "FINISHED")]
    run = fake_store.runs[session.run_id]
    assert run.status is RunStatus.FINISHED
    assert [(m.key, m.step) for m in run.metrics] == [("loss", 1), ("loss", 2)]
    assert not journals[0].exists()


def test_buffered_a_batch_failing_with_the_same_5xx_again_and_again_is_isolated_as_refused(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    """One tag the server answers 500 to every time: after a bounded number of tries it is
    treated as a refusal, found by halving, named with the server's own message; every step
    logged after it lands, and the run ends."""
    # What the backend raises for an HTTP 500 that urllib3 gave up retrying (not "away").
    fake_store.fail_batches_holding("poison", lambda: ServerError("INTERNAL_ERROR: invalid byte"))
    session = open_session(buffered(fake_project), fake_store)
    with session as s:
        s.set_tags({"poison": "x", "fine": "y"})
        for step in range(300):
            s.log_metrics({"loss": float(step)}, step=step)
        with pytest.raises(RunError) as refused:
            s.flush(timeout=120)
    assert "tag 'poison'" in str(refused.value)
    assert "INTERNAL_ERROR: invalid byte" in str(refused.value)
    assert session.run_id is not None
    run = fake_store.runs[session.run_id]
    assert [m.step for m in run.metrics] == list(range(300))
    assert run.tags["fine"] == "y"
    assert "poison" not in run.tags
    assert run.status is RunStatus.FINISHED


def test_sync_isolates_a_batch_failing_with_the_same_5xx_and_reports_it_by_name(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    """The same rule in ``trackcfg sync``: the journal's other records are sent, the run
    ended, and the result says what the server refused, in its own words."""
    from trackcfg._sync import sync_journals

    session = open_session(buffered(fake_project, exit_timeout=0.3), fake_store)
    with session as s:
        for _ in range(1000):
            fake_store.fail("log_batch", TrackingUnavailableError("server away"))
        fake_store.fail("end_run", TrackingUnavailableError("server away"))
        s.log_metrics({"loss": 0.5, "poisoned": 1.0}, step=1)
        s.log_metrics({"loss": 0.25}, step=2)
    fake_store.clear_failures()
    fake_store.fail_batches_holding("poisoned", lambda: ServerError("INTERNAL_ERROR: no"))
    folder = fake_project.root / ".trackcfg" / "journal"
    (result,) = sync_journals(folder, tracking_uri=FAKE_URI, shown_uri=FAKE_URI, factory=fake_store)

    assert result.state == "sent"
    assert "metric 'poisoned'" in result.detail
    assert "INTERNAL_ERROR: no" in result.detail
    assert session.run_id is not None
    run = fake_store.runs[session.run_id]
    assert [(m.key, m.step) for m in run.metrics] == [("loss", 1), ("loss", 2)]
    assert run.status is RunStatus.FINISHED


def test_buffered_flush_raises_when_the_sender_stopped_with_calls_not_sent(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    """Whatever stops the sender thread, ``flush`` does not return as if all was sent."""
    session = open_session(buffered(fake_project, exit_timeout=0.5), fake_store)
    with session as s:
        fake_store.fail("log_batch", SystemExit(3))  # not an Exception: ends the sender thread
        s.log_metrics({"loss": 0.5}, step=1)
        with pytest.raises(RunError, match=r"sender for run .* stopped") as stopped:
            s.flush(timeout=30)
        assert "the journal" in str(stopped.value)


def test_buffered_without_a_journal_a_full_memory_makes_the_sender_send_at_once(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    """``journal: false`` and ``max_buffered`` reached: the call waits for the sender, which
    sends at once (not after ``flush_seconds``, an hour here)."""
    config = buffered(fake_project, journal=False, max_buffered=5, flush_seconds=3600)
    with open_session(config, fake_store) as s:

        def loop() -> None:
            for step in range(20):
                s.log_metrics({"loss": float(step)}, step=step)

        logging_thread = threading.Thread(target=loop, daemon=True)
        logging_thread.start()
        logging_thread.join(timeout=120)
        assert not logging_thread.is_alive(), "the loop waited for the sender for good"
        # Taken from memory is not yet stored: to a server, batches may still be in flight
        # (up to _sender.IN_FLIGHT) when the loop returns; they land long before an hour.
        deadline = time.monotonic() + 60
        while len(run_id_metrics(fake_store, s)) < 15 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(run_id_metrics(fake_store, s)) >= 15


@pytest.mark.parametrize("mode", ["sync", "buffered"])
def test_a_nul_character_in_a_param_or_tag_is_refused_at_the_call(
    fake_project: FakeProject, fake_store: FakeStore, mode: str
) -> None:
    config = buffered(fake_project) if mode == "buffered" else fake_project.config()
    with open_session(config, fake_store) as s:
        with pytest.raises(RunError, match="tag 'note': its value holds a NUL"):
            s.set_tags({"note": "a\x00b"})
        with pytest.raises(RunError, match="param 'name': its value holds a NUL"):
            s.log_params({"name": "a\x00b"})
        run_id = s.run_id
    assert run_id is not None
    assert "note" not in fake_store.runs[run_id].tags


# ---------------------------------------------------------------------------------------------
# mode: sync goes through the same delivery routine as the sender (_writer -> _delivery), but
# nothing is retried or halved there: the first failure reaches the call, as it is.


def batches_holding(store: FakeStore, key: str) -> int:
    return sum(
        1
        for batch in store.batches()
        if key in {k for k, _ in (*batch.params, *batch.tags)} | {m.key for m in batch.metrics}
    )


def test_sync_a_batch_failing_with_a_5xx_raises_it_at_the_call_tried_once(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    fake_store.fail_batches_holding("poison", lambda: ServerError("INTERNAL_ERROR: invalid byte"))
    with open_session(fake_project.config(), fake_store) as s:
        with pytest.raises(ServerError, match="INTERNAL_ERROR: invalid byte"):
            s.set_tags({"poison": "x", "fine": "y"})
        s.log_metrics({"loss": 0.5}, step=1)  # the next call goes on as usual
        run_id = s.run_id
    assert run_id is not None
    assert batches_holding(fake_store, "poison") == 1  # not tried again, not halved
    run = fake_store.runs[run_id]
    assert "fine" not in run.tags  # the call failed whole, as MLflow's log_batch does
    assert [(m.key, m.step) for m in run.metrics] == [("loss", 1)]
    assert run.status is RunStatus.FINISHED


def test_sync_a_refused_value_raises_the_stores_error_and_logs_none_of_the_call(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    fake_store.refuse_metric("bad")
    with open_session(fake_project.config(), fake_store) as s:
        with pytest.raises(RunError, match="Invalid value for metric 'bad'"):
            s.log_metrics({"good": 1.0, "bad": 2.0}, step=0)
        run_id = s.run_id
    assert run_id is not None
    assert batches_holding(fake_store, "bad") == 1
    assert fake_store.runs[run_id].metrics == []


def test_sync_an_unreachable_store_raises_at_the_call(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    with open_session(fake_project.config(), fake_store) as s:
        fake_store.fail(
            "log_batch", TrackingUnavailableError("tracking server refused the connection")
        )
        with pytest.raises(TrackingUnavailableError, match="refused the connection"):
            s.log_metrics({"loss": 0.5}, step=1)
        fake_store.fail("log_artifact", TrackingUnavailableError("tracking server refused it"))
        with pytest.raises(TrackingUnavailableError, match="refused it"):
            s.log_text("hello", "notes/a.txt")
        s.log_text("again", "notes/a.txt")
        run_id = s.run_id
    assert run_id is not None
    assert fake_store.runs[run_id].artifacts == {"notes/a.txt": "again"}


@pytest.mark.parametrize("mode", ["sync", "buffered"])
def test_artifact_calls_do_the_same_in_both_modes(
    fake_project: FakeProject, fake_store: FakeStore, mode: str, tmp_path: Path
) -> None:
    """A missing file is a ``RunError`` naming it at the call; ``log_dict`` writes what MLflow's
    own writes (a value JSON has no type for as its string), long params under ``artifact``
    land as files: the same store content whichever mode."""
    config = buffered(fake_project) if mode == "buffered" else fake_project.config()
    missing = tmp_path / "gone.txt"
    with open_session(config, fake_store) as s:
        with pytest.raises(RunError, match=f"log_artifact: {missing} does not exist"):
            s.log_artifact(missing)
        s.log_dict({"when": Path("/data/x"), "n": 1}, "cfg/params.json")
        s.log_text("hi", "a.txt")
        run_id = s.run_id
    assert run_id is not None
    assert fake_store.runs[run_id].artifacts == {
        "cfg/params.json": '{\n  "when": "/data/x",\n  "n": 1\n}',
        "a.txt": "hi",
    }
