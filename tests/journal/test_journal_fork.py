"""A buffered session and ``os.fork()``: real forks while the sender works, a real server.

The children never return into pytest (``os._exit``); the parent waits for each one with a
bound, and a child still there past it is a hang (killed, the test fails).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from helpers import in_forked_child, project_folder, wait_child
from mlflow import MlflowClient

from trackcfg import TrackingSession, load_config

CHILD_BOUND = 90.0
"""A child that needs more than this is hung (each one makes one request)."""


def config_text(url: str) -> str:
    return (
        f"server:\n  mlflow_tracking_uri: {url}\n  request_timeout: 5\n  max_retries: 1\n"
        "tracking:\n  experiment:\n    name: forks\n  logging:\n    mode: buffered\n"
        "    flush_seconds: 0.01\n"
    )


def test_forks_while_the_sender_sends_never_leave_a_child_hung(
    mlflow_server: str, tmp_path: Path
) -> None:
    """Forty forks, each while the sender is busy sending the parent's calls: every child
    makes its logging call (through the session it inherited) and ends."""
    project = project_folder(tmp_path / "proj", config=config_text(mlflow_server))
    client = MlflowClient(tracking_uri=mlflow_server)
    with TrackingSession(load_config(project), name="forks") as session:
        run_id = session.run_id or ""
        for child in range(40):
            for step in range(50):
                session.log_metrics({"loss": float(step)}, step=child * 50 + step)

            def child_logs(child: int = child) -> None:
                session.log_metric(f"child_{child}", 1.0)
                session.flush(30)

            assert in_forked_child(child_logs, bound=CHILD_BOUND) == 0
    run = client.get_run(run_id)
    assert sorted(k for k in run.data.metrics if k.startswith("child_")) == sorted(
        f"child_{n}" for n in range(40)
    )
    assert len(client.get_metric_history(run_id, "loss")) == 2000


def test_a_forked_child_leaving_the_block_leaves_its_parents_run_running(
    mlflow_server: str, tmp_path: Path
) -> None:
    """The child runs the rest of the ``with`` block (no ``os._exit`` inside it): its parent's
    run stays RUNNING while the parent logs on, and ends FINISHED when the parent leaves."""
    project = project_folder(tmp_path / "proj", config=config_text(mlflow_server))
    client = MlflowClient(tracking_uri=mlflow_server)
    session = TrackingSession(load_config(project), name="leaving")
    pid = -1
    try:
        with session:
            run_id = session.run_id or ""
            session.log_metric("loss", 1.0, step=0)
            pid = os.fork()
            if pid != 0:
                assert wait_child(pid, bound=CHILD_BOUND) == 0
                status_after_child = client.get_run(run_id).info.status
                session.log_metric("loss", 0.5, step=1)
    finally:
        if pid == 0:
            os._exit(0)  # the child left the block: never back into pytest
    assert status_after_child == "RUNNING"
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == [0, 1]


SLOW_IMPORT_PROVIDER = '''
"""A header provider that, once ``flag`` exists, imports a module whose import takes seconds."""
import os

from mlflow.tracking.request_header.abstract_request_header_provider import RequestHeaderProvider


class SlowImport(RequestHeaderProvider):
    def __init__(self, flag=""):
        self.flag = flag

    def in_context(self):
        return True

    def request_headers(self):
        if os.path.exists(self.flag):
            import trackcfg_test_slow_import  # noqa: F401
        return {}
'''

SLOW_IMPORT = '''
"""Says it is being imported (``{entered}``), then takes {seconds} s to finish."""
import pathlib
import time

pathlib.Path({entered!r}).write_text("importing")
time.sleep({seconds})
'''

INSIDE_IMPORT = 6.0
"""Seconds the sender sits inside an import: the fork comes at once, well within them."""
FORKED_BOUND = 40.0
"""A child's one call, after the import it waited for: seconds; past them it is deadlocked."""


def test_a_fork_while_the_sender_sits_inside_an_import_never_deadlocks_the_child(
    mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender is made to sit inside an import (a request header provider imports a module
    that takes seconds) and the process forks at that moment: the import's lock is held by a
    thread the child does not have, so a child importing that module waits for ever, unless
    fork waits for the sender's call to end (``_state.guard_against_fork``).  The child's own
    logging call imports the module too: it must return, and its metric reach the server."""
    modules = tmp_path / "modules"
    modules.mkdir()
    entered, flag = tmp_path / "entered", tmp_path / "flag"
    (modules / "trackcfg_test_forkheaders.py").write_text(SLOW_IMPORT_PROVIDER)
    (modules / "trackcfg_test_slow_import.py").write_text(
        SLOW_IMPORT.format(entered=str(entered), seconds=INSIDE_IMPORT)
    )
    monkeypatch.syspath_prepend(str(modules))
    provider = (
        "  request_header_provider:\n    type: trackcfg_test_forkheaders.SlowImport\n"
        f"    init_kwargs:\n      flag: {flag}\n"
    )
    project = project_folder(
        tmp_path / "proj",
        config=config_text(mlflow_server).replace("tracking:\n", provider + "tracking:\n", 1),
    )
    client = MlflowClient(tracking_uri=mlflow_server)
    with TrackingSession(load_config(project), name="import-fork") as session:
        run_id = session.run_id or ""
        flag.write_text("")  # from now on each request imports the slow module
        session.log_metric("loss", 1.0, step=0)  # the sender's request: into the import
        deadline = time.monotonic() + CHILD_BOUND
        while not entered.exists():
            assert time.monotonic() < deadline, "the sender never started the slow import"
            time.sleep(0.005)

        def child_logs() -> None:
            session.log_metric("child", 1.0)
            session.flush(30)

        hung = (
            f"the forked child was still in its first logging call after {FORKED_BOUND:.0f} s "
            "(killed): deadlocked on the import lock the sender held when the process forked"
        )
        assert in_forked_child(child_logs, bound=FORKED_BOUND, hung=hung) == 0
    run = client.get_run(run_id)
    assert run.data.metrics == {"loss": 1.0, "child": 1.0}
