"""Signals and interrupts, with real processes and real signals on a real SQLite store.

- A program's own SIGTERM handler (a checkpoint on preemption) runs as it would without
  trackcfg, inside the session; the run ends KILLED when the process ends because of the
  signal, FINISHED when the program handles it and completes (README, "Statuses").
- After sessions end in any order (or in another thread), SIGTERM does what it did before.
- Ctrl-C while a write waits on a locked SQLite store ends the run KILLED once the lock is
  free, and a write that gives up on the lock says who holds it.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest
from helpers import TRACKING_SETTINGS, project_folder, read_runs, store_uri, subprocess_env
from mlflow import MlflowClient

from trackcfg import TrackingSession, TrackingUnavailableError, load_config

WATCHDOG = 180  # seconds: only ever reached when something hangs


@pytest.fixture
def project(tmp_path: Path, migrated_sqlite_db: Path) -> Path:
    return project_folder(
        tmp_path / "proj",
        name="signals",
        config="tracking:\n  experiment:\n    name: signals\n",
        store=migrated_sqlite_db,
    )


@pytest.fixture
def sigterm_handler() -> Iterator[list[int]]:
    """A SIGTERM handler of the test's own, installed around the test; the signals it got."""
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    original = signal.signal(signal.SIGTERM, handler)
    try:
        yield received
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, original)


class Child:
    """A script run in a child process; its stdout read line by line."""

    def __init__(self, script: Path, *args: str, cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(script), *args],
            cwd=cwd,
            env=subprocess_env(drop=TRACKING_SETTINGS),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.watchdog = threading.Timer(WATCHDOG, self.process.kill)
        self.watchdog.start()

    def line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        assert line, f"the script ended early; stderr:\n{self.finish()[1]}"
        return line

    def say(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def finish(self) -> tuple[str, str]:
        try:
            out, err = self.process.communicate(timeout=WATCHDOG)
        finally:
            self.watchdog.cancel()
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        return out, err


# ---------------------------------------------------------------------------------------------
# The program's own SIGTERM handler.

PREEMPTIBLE = """
import os, signal, sys, time
from pathlib import Path
import mlflow
from trackcfg import TrackingSession

mode, checkpoint = sys.argv[1], Path(sys.argv[2])
step, stop = 0, False

def on_sigterm(signum, frame):
    global stop
    checkpoint.write_text(f"step {{step}}")  # the program's state, as it is at the signal
    mlflow.set_tag("checkpoint", checkpoint.name)  # into the active run: the session's
    if mode == "exit":
        sys.exit(143)
    if mode == "resend":  # die of the signal, as without a handler
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
    stop = True

signal.signal(signal.SIGTERM, on_sigterm)
with TrackingSession.from_yaml({config!r}, name="job") as s:
    print(s.run_id, flush=True)
    while not stop:
        step += 1
        time.sleep(0.02)  # the work
    if mode == "exit-after-loop":
        sys.exit(0)
print("completed", flush=True)
"""


@pytest.mark.parametrize(
    ("mode", "returncode", "status", "completed"),
    [
        ("exit", 143, "KILLED", False),
        ("resend", -signal.SIGTERM, "KILLED", False),
        ("exit-after-loop", 0, "KILLED", False),
        ("finish", 0, "FINISHED", True),
    ],
    ids=["handler-exits", "handler-resends-the-signal", "exits-after-the-signal", "handled"],
)
def test_programs_own_sigterm_handler_runs_inside_the_session(
    project: Path, tmp_path: Path, mode: str, returncode: int, status: str, completed: bool
) -> None:
    script = tmp_path / "preemptible.py"
    script.write_text(textwrap.dedent(PREEMPTIBLE.format(config=str(project / "mlflow.yml"))))
    checkpoint = tmp_path / "checkpoint.txt"
    child = Child(script, mode, str(checkpoint), cwd=tmp_path)
    run_id = child.line()
    started = time.monotonic()
    child.process.send_signal(signal.SIGTERM)
    out, err = child.finish()
    elapsed = time.monotonic() - started

    assert child.process.returncode == returncode, err
    assert checkpoint.read_text().startswith("step "), err
    assert ("completed" in out) is completed
    runs = read_runs(store_uri(project))
    assert [run.info.run_id for run in runs] == [run_id], "the handler logged into another run"
    (run,) = runs
    assert run.info.status == status
    assert run.data.tags["checkpoint"] == "checkpoint.txt"
    assert "Traceback" not in err
    assert elapsed < 60, f"{elapsed:.0f} s from SIGTERM to the end"


def test_sigterm_handler_is_the_programs_again_after_sessions_end_out_of_order(
    project: Path, sigterm_handler: list[int]
) -> None:
    config = load_config(project / "mlflow.yml")
    a = TrackingSession(config, name="a")
    b = TrackingSession(config, name="b")
    a.__enter__()
    b.__enter__()
    signal.raise_signal(signal.SIGTERM)  # the handler runs now; nothing is interrupted
    assert sigterm_handler == [signal.SIGTERM]
    a.__exit__(None, None, None)
    b.__exit__(None, None, None)
    signal.raise_signal(signal.SIGTERM)

    assert sigterm_handler == [signal.SIGTERM, signal.SIGTERM]
    client = MlflowClient(tracking_uri=store_uri(project))
    assert [client.get_run(str(s.run_id)).info.status for s in (a, b)] == ["FINISHED"] * 2


def test_session_ended_in_another_thread_leaves_sigterm_to_the_programs_handler(
    project: Path, sigterm_handler: list[int]
) -> None:
    """A handler can only be set in the main thread: the trap the session left behind hands
    the next SIGTERM to the program's handler, and puts that handler back."""
    session = TrackingSession(load_config(project / "mlflow.yml"), name="job")
    session.__enter__()
    ended = threading.Thread(target=session.__exit__, args=(None, None, None))
    ended.start()
    ended.join(WATCHDOG)
    signal.raise_signal(signal.SIGTERM)

    assert sigterm_handler == [signal.SIGTERM]
    client = MlflowClient(tracking_uri=store_uri(project))
    assert client.get_run(str(session.run_id)).info.status == "FINISHED"


# ---------------------------------------------------------------------------------------------
# Ctrl-C and a locked SQLite store.

WAITS_ON_THE_LOCK = """
import sys
import mlflow
from sqlalchemy import event
from sqlalchemy.engine import Engine
from trackcfg import TrackingSession

armed = False

@event.listens_for(Engine, "before_cursor_execute")
def say_it_waits(conn, cursor, statement, parameters, context, executemany):
    global armed
    if armed:
        armed = False
        print("writing", flush=True)  # the statement that waits for the test's lock

with TrackingSession.from_yaml({config!r}, name="job") as s:
    print(s.run_id, flush=True)
    sys.stdin.readline()  # the test holds the store's lock now
    armed = True
    mlflow.log_metric("loss", 1.0)
    print("logged", flush=True)
"""


def wait_until_sleeping(pid: int) -> None:
    """Until the process's main thread sleeps on a timer, as SQLite's busy handler does
    between its tries for a lock (Linux: ``/proc/<pid>/wchan``; elsewhere at once)."""
    wchan = Path(f"/proc/{pid}/wchan")
    if not wchan.exists():
        return
    deadline = time.monotonic() + WATCHDOG
    while "nanosleep" not in wchan.read_text():
        assert time.monotonic() < deadline, f"process {pid} never waited on the lock"
        time.sleep(0.01)


def test_ctrl_c_while_a_write_waits_on_a_locked_store_ends_the_run_killed(
    project: Path, tmp_path: Path
) -> None:
    script = tmp_path / "waits.py"
    script.write_text(textwrap.dedent(WAITS_ON_THE_LOCK.format(config=str(project / "mlflow.yml"))))
    child = Child(script, cwd=tmp_path)
    run_id = child.line()
    lock = sqlite3.connect(project / "mlruns" / "mlflow.db", isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        child.say("go")
        assert child.line() == "writing"
        wait_until_sleeping(child.process.pid)  # in SQLite's wait for the lock
        started = time.monotonic()
        child.process.send_signal(signal.SIGINT)
    finally:
        lock.execute("ROLLBACK")  # the lock is free from here on
        lock.close()
    out, err = child.finish()
    elapsed = time.monotonic() - started

    assert child.process.returncode == -signal.SIGINT, err
    assert "logged" not in out
    run = MlflowClient(tracking_uri=store_uri(project)).get_run(run_id)
    assert run.info.status == "KILLED", err
    assert "could not end run" not in err
    # The end does not wait MLflow's 20 s for a lock: the process held none any more.
    assert elapsed < 20, f"{elapsed:.0f} s from Ctrl-C to the end"


HOLDS_THE_LOCK = """
import sqlite3, sys
lock = sqlite3.connect(sys.argv[1], isolation_level=None)
lock.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize("holder", ["this process", "another process"])
def test_a_write_that_gives_up_on_a_locked_store_says_who_holds_the_lock(
    project: Path, tmp_path: Path, holder: str
) -> None:
    db = project / "mlruns" / "mlflow.db"
    with TrackingSession(load_config(project / "mlflow.yml"), name="job") as session:
        if holder == "this process":
            own = sqlite3.connect(db, isolation_level=None)
            own.execute("BEGIN EXCLUSIVE")
            expected = f"this process (pid {os.getpid()}) holds that lock itself"
        else:
            script = tmp_path / "holds.py"
            script.write_text(HOLDS_THE_LOCK)
            other = Child(script, str(db), cwd=tmp_path)
            assert other.line() == "locked"
            expected = f"process {other.process.pid} holds it"
        try:
            with pytest.raises(TrackingUnavailableError) as raised, session.child("trial"):
                pytest.fail("the block must not run")
        finally:
            if holder == "this process":
                own.execute("ROLLBACK")
                own.close()
            else:
                other.say("done")
                other.finish()

    message = str(raised.value)
    assert message.startswith(
        f"a write to SQLite store sqlite:///{db} waited for its lock longer than MLflow waits "
        "(20 s): "
    ), message
    assert expected in message
    assert "other writers" not in message
    assert [run.info.run_name for run in read_runs(store_uri(project))] == ["job"]
