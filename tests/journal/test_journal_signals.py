"""A buffered session leaving on SIGTERM while its store does not answer, on a real store.

The store is a local SQLite store the test locks (``BEGIN EXCLUSIVE``), so the sender waits
on it as on a server that is away; the job is a real child process getting real signals.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from helpers import TRACKING_SETTINGS, copy_store, project_folder, subprocess_env

WATCHDOG = 180.0

JOB = textwrap.dedent(
    """
    import sys, time
    from trackcfg import TrackingSession, load_config

    with TrackingSession(load_config(sys.argv[1]), name="job") as s:
        for step in range(10):
            s.log_metrics({"loss": float(step)}, step=step)
        print(s.run_id, flush=True)
        while True:
            time.sleep(0.05)
    """
)


def main_thread_waits_on_a_lock(pid: int) -> bool:
    """Whether the process's main thread waits on a futex (a ``Condition``), not a timer."""
    wchan = Path(f"/proc/{pid}/wchan")
    return "futex" in wchan.read_text()


def test_sigterm_again_while_leaving_writes_the_end_and_dies_by_the_signal(
    migrated_sqlite_db: Path, tmp_path: Path
) -> None:
    config = (
        "server:\n  mlflow_tracking_uri: mlruns\ntracking:\n  logging:\n    mode: buffered\n"
        "    flush_seconds: 3600\n    exit_timeout: 120\n"
    )
    project = project_folder(tmp_path / "proj", config=config)
    db = copy_store(migrated_sqlite_db, project / "mlruns")
    script = tmp_path / "job.py"
    script.write_text(JOB)
    child = subprocess.Popen(
        [sys.executable, str(script), str(project)],
        cwd=project,
        env=subprocess_env(drop=TRACKING_SETTINGS),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lock = sqlite3.connect(db, isolation_level=None, timeout=60)
    try:
        assert child.stdout is not None
        run_id = child.stdout.readline().strip()
        assert run_id, child.stderr.read() if child.stderr else ""
        lock.execute("BEGIN EXCLUSIVE")  # the store does not answer from here on
        child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + WATCHDOG
        while not main_thread_waits_on_a_lock(child.pid):  # leaving: waits for the sender
            assert time.monotonic() < deadline, "the job never started leaving"
            time.sleep(0.02)
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=WATCHDOG)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
        if child.poll() is None:
            child.kill()

    assert child.returncode == -signal.SIGTERM, err
    assert "Traceback" not in err
    (journal,) = (project / ".trackcfg" / "journal").glob(f"{run_id}.*.journal")
    assert '{"end": "KILLED"' in journal.read_text()


TIGHT_LOOP = textwrap.dedent(
    """
    import sys
    from trackcfg import TrackingSession, load_config

    with TrackingSession(load_config(sys.argv[1]), name="loop") as s:
        print(s.run_id, flush=True)
        step = 0
        while True:
            s.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
            step += 1
    """
)


def test_ctrl_c_in_a_tight_loop_always_ends_the_loop_and_the_run_killed(
    migrated_sqlite_db: Path, tmp_path: Path
) -> None:
    """Five times: Ctrl-C while the loop logs and the sender sends to the default local
    store ends the process by SIGINT and the run KILLED (never printed as "Exception ignored"
    by a callback the main thread ran for the sender's objects, the loop going on)."""
    from mlflow import MlflowClient

    config = (
        "server:\n  mlflow_tracking_uri: mlruns\ntracking:\n  logging:\n    mode: buffered\n"
        "    flush_seconds: 0.01\n"
    )
    project = project_folder(tmp_path / "proj", config=config)
    db = copy_store(migrated_sqlite_db, project / "mlruns")
    script = tmp_path / "loop.py"
    script.write_text(TIGHT_LOOP)
    for trial in range(5):
        child = subprocess.Popen(
            [sys.executable, str(script), str(project)],
            cwd=project,
            env=subprocess_env(drop=TRACKING_SETTINGS),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            run_id = child.stdout.readline().strip()
            client = MlflowClient(tracking_uri=f"sqlite:///{db}")
            deadline = time.monotonic() + WATCHDOG
            while len(client.get_metric_history(run_id, "loss")) < 2000:  # the sender works
                assert time.monotonic() < deadline, "nothing was sent"
                time.sleep(0.1)
            child.send_signal(signal.SIGINT)
            _, err = child.communicate(timeout=WATCHDOG)
        finally:
            if child.poll() is None:
                child.kill()
        assert child.returncode == -signal.SIGINT, f"trial {trial}: {err}"
        assert "Exception ignored" not in err, f"trial {trial}: {err}"
        assert client.get_run(run_id).info.status == "KILLED"
