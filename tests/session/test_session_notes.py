"""What a session says at the end of its run and what it keeps quiet: the reminder that an
offline run waits for ``trackcfg sync``, no urllib3 "Retrying" warnings while a real server is
unreachable (a real dead port), and the run's summary on a terminal (a real pseudo-terminal)."""

from __future__ import annotations

import contextlib
import logging
import os
import pty
import select
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import project_folder, subprocess_env
from mlflow import MlflowClient

from trackcfg import TrackingSession, TrackingUnavailableError, load_config

TRACKCFG = "trackcfg"


def dead_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def trackcfg_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith(TRACKCFG) and r.levelno >= logging.WARNING
    ]


def wait_for(condition: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# The offline reminder.


@pytest.mark.parametrize("mode", ["always", "auto"])
def test_an_offline_run_ends_with_one_line_naming_trackcfg_sync(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    """``always``, and ``auto`` falling back (nothing listens on the port): the last thing
    said is where the run is and the command that sends it."""
    caplog.set_level(logging.WARNING)
    port = dead_port()
    root = project_folder(
        tmp_path / "proj",
        config=f"server:\n  mlflow_tracking_uri: http://127.0.0.1:{port}\n"
        f"  offline: {mode}\n  request_timeout: 2\n",
    )
    with TrackingSession(load_config(root), name="notes") as s:
        s.log_metric("loss", 0.5)
    assert s.run_id is not None
    run = MlflowClient(tracking_uri=s.tracking_uri).get_run(s.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"loss": 0.5}
    said = trackcfg_warnings(caplog)
    assert said[-1] == (
        f"run {s.run_id} of session 'notes' is in the offline store {root / 'mlruns'}, not yet "
        f"on http://127.0.0.1:{port}; send it there with: trackcfg sync {root}"
    )
    # auto: the start's warning says the server did not answer; always: nothing else.
    assert len(said) == (2 if mode == "auto" else 1)


def test_a_run_on_its_server_has_no_offline_reminder(
    tmp_path: Path, migrated_sqlite_db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    root = project_folder(tmp_path / "proj", config="", store=migrated_sqlite_db)
    with TrackingSession(load_config(root), name="notes") as s, s.child("trial"):
        s.log_metric("loss", 0.5)
    assert trackcfg_warnings(caplog) == []


# ---------------------------------------------------------------------------------------------
# urllib3's retry warnings during an outage.


class Proxy:
    """A TCP relay to a real server; ``stop()`` closes it and every connection through it,
    and the port is dead from then on (connections are refused)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self.stopped.set()
        # shutdown() first: close() alone leaves a socket that another thread waits in
        # accept() on still listening (Linux).
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@pytest.fixture
def proxy(mlflow_server: str) -> Iterator[Proxy]:
    host, _, port = mlflow_server.removeprefix("http://").partition(":")
    relay = Proxy((host, int(port.strip("/"))))
    yield relay
    relay.stop()


def test_an_outage_adds_no_urllib3_retry_warnings_during_the_session(
    tmp_path: Path,
    proxy: Proxy,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """The program's root logger (``logging.basicConfig()``'s) sees trackcfg's own message
    about the outage and none of urllib3's; afterwards urllib3 is as it was (its warning for
    the same dead port shows again)."""
    caplog.set_level(logging.WARNING)
    pool_logger = logging.getLogger("urllib3.connectionpool")
    filters_before = list(pool_logger.filters)
    root = project_folder(tmp_path / "proj", config="")
    config = load_config(
        root,
        overrides={
            "server.mlflow_tracking_uri": f"http://127.0.0.1:{proxy.port}",
            "server.request_timeout": 2,
            "server.max_retries": 2,
            "tracking.experiment.name": f"notes-{request.node.name}",
            "tracking.logging.exit_timeout": 1,
        },
    )
    with TrackingSession(config, name="outage") as s:
        s.log_metric("loss", 0.5)
        s.flush(60)
        proxy.stop()
        s.log_metric("loss", 0.4, step=1)
        wait_for(lambda: any("is unreachable" in m for m in trackcfg_warnings(caplog)))
        # One more failed request, each after urllib3's retries, with the outage known.
        s.log_metric("loss", 0.3, step=2)
        with pytest.raises(TrackingUnavailableError, match="not yet on"):
            s.flush(8)
        assert [r for r in caplog.records if r.getMessage().startswith("Retrying")] == []
    assert pool_logger.filters == filters_before

    # urllib3 as before: its warning about the same requests to the same dead port shows.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    with pytest.raises(Exception, match=r"127\.0\.0\.1"):
        MlflowClient(f"http://127.0.0.1:{proxy.port}").search_experiments()
    here = threading.current_thread().name  # not the ended session's sender, still retrying
    assert [
        r for r in caplog.records if r.getMessage().startswith("Retrying") and r.threadName == here
    ]


# ---------------------------------------------------------------------------------------------
# The summary on a terminal.

SCRIPT = """
    from trackcfg import TrackingSession, load_config, tracked

    @tracked(load_config("."))
    def trial(x: float) -> float:
        return x

    with TrackingSession(load_config("."), name="train", params={"lr": 0.1, "depth": 3}) as s:
        for step in range(3):
            s.log_metrics({"loss": 1.0 / (step + 1), "acc": 0.5 + step / 10}, step=step)
        s.log_metric("score", 0.75)
        with s.child("fold") as fold:
            fold.log_metric("inner", 1.0)
        trial(0.5)
    print("done")
"""


def run_on_terminal(cwd: Path, env: dict[str, str]) -> str:
    """SCRIPT's stdout when stdout is a (pseudo-)terminal."""
    main, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SCRIPT)],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=subprocess.DEVNULL,
    )
    os.close(secondary)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([main], [], [], 180)
            assert ready, "no output for 180 s"
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(main)
        process.wait(timeout=180)
    return b"".join(chunks).decode().replace("\r\n", "\n")


@pytest.fixture
def script_project(tmp_path: Path, migrated_sqlite_db: Path) -> Path:
    return project_folder(tmp_path / "proj", config="", store=migrated_sqlite_db)


def test_a_run_ends_with_its_summary_on_a_terminal(script_project: Path) -> None:
    output = run_on_terminal(script_project, subprocess_env())
    summary = [line for line in output.splitlines() if not line.startswith(("\N{RUNNER}", " "))]
    # One summary: the child and the tracked trial inside the session print none.
    assert summary == ["run 'train' FINISHED: 2 params, 3 metrics", "done"]
    assert "  loss   0.333333  (step 2)\n  acc    0.7  (step 2)\n  score  0.75\n" in output


@pytest.mark.parametrize("how", ["a pipe", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"])
def test_no_summary_in_a_pipe_or_when_mlflows_link_is_off(script_project: Path, how: str) -> None:
    env: dict[str, Any] = subprocess_env()
    if how == "a pipe":
        result = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(SCRIPT)],
            cwd=script_project,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=True,
        )
        output = result.stdout
        assert "View run train" in output  # MLflow's link is there
    else:
        env["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        output = run_on_terminal(script_project, env)
    assert "done" in output
    assert "FINISHED" not in output
    assert "score" not in output
