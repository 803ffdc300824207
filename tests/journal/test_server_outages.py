"""Tracking server outages, on a real ``mlflow server`` that the tests start, kill (SIGKILL
of its process group) and start again on the same port.

Every session here has ``server.request_timeout: 2`` and ``server.max_retries: 1``: MLflow's
own HTTP defaults would retry for about four minutes before giving up.  They log in
``tracking.logging.mode: sync``, where a call waits for the server and an outage reaches the
caller as ``TrackingUnavailableError``; the buffered mode (the default), where it never does, is
tested against the same kind of outage in ``test_buffered.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from helpers import TRACKING_SETTINGS, project_folder, subprocess_env, trackcfg_warnings
from mlflow import MlflowClient

from trackcfg import TrackingConfig, TrackingSession, TrackingUnavailableError, load_config
from trackcfg.exceptions import TrackcfgError

if TYPE_CHECKING:
    from conftest import _MlflowServer

HEALTH_TIMEOUT = 120.0
BUDGET = 30.0
"""Loose bound for "within timeout x retries" (2 s x 2 attempts + backoff, on a busy machine)."""
HTTP_VARIABLES = (
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER",
)


def make_config(root: Path, uri: str, experiment: str) -> Path:
    yaml = f"""\
        server:
          mlflow_tracking_uri: {uri}
          request_timeout: 2
          max_retries: 1
        tracking:
          experiment:
            name: {experiment}
          logging:
            mode: sync
        """
    return project_folder(root, name="faults", config=textwrap.dedent(yaml)) / "mlflow.yml"


def http_env() -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in HTTP_VARIABLES}


@pytest.fixture
def previous_http_settings(monkeypatch: pytest.MonkeyPatch) -> dict[str, str | None]:
    """A user's own MLflow HTTP setting, and one left unset: both must be as they were after."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "77")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    return http_env()


# ---------------------------------------------------------------------------------------------
# Unreachable at session start.


@pytest.fixture
def refused_uri() -> str:
    """A port nobody listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_unreachable_server_at_start_raises_tracking_unavailable_within_the_budget(
    kind: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    previous_http_settings: dict[str, str | None],
) -> None:
    uri: str = request.getfixturevalue(f"{kind}_uri")
    config = load_config(make_config(tmp_path / "proj", uri, "outage"))
    started = time.monotonic()

    with pytest.raises(TrackingUnavailableError) as caught, TrackingSession(config, name="t"):
        pytest.fail("the block must not run")
    elapsed = time.monotonic() - started

    error = caught.value
    assert isinstance(error, TrackcfgError)
    assert isinstance(error, ConnectionError)
    assert uri in str(error)
    # A refused connection is reported at session start without retries (the fix is the
    # server or the URI, not a longer budget); a silent server spent the budget.
    fix = "server.mlflow_tracking_uri" if kind == "refused" else "server.request_timeout"
    assert fix in str(error)
    assert elapsed < BUDGET
    if kind == "silent":
        assert elapsed >= 2  # the configured timeout was waited for, not MLflow's 120 s
    assert http_env() == previous_http_settings
    assert not (tmp_path / "proj" / "mlruns").exists()


# ---------------------------------------------------------------------------------------------
# Killed in the middle of a run, then started again.


@dataclasses.dataclass
class Outage:
    server: _MlflowServer
    port: int
    backend: str
    artifacts: Path
    config: Path


@pytest.fixture(scope="module")
def outage(
    mlflow_server_launcher: Callable[..., _MlflowServer],
    tmp_path_factory: pytest.TempPathFactory,
) -> Outage:
    """A server of the module's own, started at once (its start overlaps the tests above)."""
    folder = tmp_path_factory.mktemp("outage-server")
    backend = f"sqlite:///{folder / 'server.db'}"
    server = mlflow_server_launcher(backend, folder / "artifacts")
    port = int(server.url.rpartition(":")[2])
    config = make_config(folder / "proj", server.url, "outage")
    return Outage(server, port, backend, folder / "artifacts", config)


@pytest.fixture(scope="module", autouse=True)
def _start_outage_server_early(outage: Outage) -> None:
    """Requesting ``outage`` at the first test of the module starts the server."""


# The user's script: log, wait for the test to kill the server, log again.
DOOMED = textwrap.dedent(
    """
    import json, sys, time
    from trackcfg import TrackingSession, load_config
    from trackcfg.exceptions import TrackingUnavailableError

    result = {}
    try:
        with TrackingSession(load_config(sys.argv[1]), name="doomed") as session:
            session.log_metrics({"loss": 1.0}, step=0)
            print("READY", session.run_id, flush=True)
            sys.stdin.readline()  # the server is dead now
            started = time.monotonic()
            try:
                session.log_metrics({"loss": 0.5}, step=1)
            except TrackingUnavailableError as exc:
                result["seen_in_block"] = str(exc)
                result["elapsed"] = time.monotonic() - started
                raise
    except TrackingUnavailableError as exc:
        result["escaped"] = type(exc).__name__
    print("RESULT", json.dumps(result), flush=True)
    """
)


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The process's next stdout line, killing it if none comes within ``timeout``."""
    timer = threading.Timer(timeout, process.kill)
    timer.start()
    try:
        assert process.stdout is not None
        return process.stdout.readline()
    finally:
        timer.cancel()


def _session_logs(config: TrackingConfig) -> TrackingSession:
    with TrackingSession(config, name="after", params={"attempt": 2}) as session:
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "2"
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
        session.log_metrics({"loss": 0.25}, step=2)
    return session


def test_server_killed_mid_run_then_restarted(
    outage: Outage,
    mlflow_server_launcher: Callable[..., _MlflowServer],
    previous_http_settings: dict[str, str | None],
) -> None:
    """The next logging call raises TrackingUnavailableError within the budget, the with
    block sees it, the process exits promptly; the killed run stays RUNNING; a new session
    works once the server is back on the same port."""
    outage.server.wait_healthy(HEALTH_TIMEOUT)
    process = subprocess.Popen(
        [sys.executable, "-c", DOOMED, str(outage.config)],
        env=subprocess_env(drop=TRACKING_SETTINGS),
        cwd=outage.config.parent,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = _read_line(process, timeout=120)
        assert ready.startswith("READY "), process.communicate()[1]
        run_id = ready.split()[1]

        os.killpg(outage.server.process.pid, signal.SIGKILL)  # an outage, not a shutdown
        outage.server.process.wait(timeout=30)
        started = time.monotonic()
        out, err = process.communicate("go\n", timeout=2 * BUDGET + 30)
        exited_after = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 0, err
    result = json.loads(out.split("RESULT ", 1)[1])
    assert result["escaped"] == "TrackingUnavailableError"
    assert outage.server.url in result["seen_in_block"]
    assert result["elapsed"] < BUDGET
    # The failing call, then ending the run (which fails the same way), then exiting.
    assert exited_after < 2 * BUDGET + 15

    restarted = mlflow_server_launcher(outage.backend, outage.artifacts, port=outage.port)
    restarted.wait_healthy(HEALTH_TIMEOUT)
    assert restarted.url == outage.server.url

    session = _session_logs(load_config(outage.config))
    client = MlflowClient(tracking_uri=restarted.url)
    run = client.get_run(session.run_id or "")
    assert run.info.status == "FINISHED"
    assert run.data.params == {"attempt": "2"}
    assert run.data.metrics == {"loss": 0.25}
    assert http_env() == previous_http_settings

    # What the outage left behind: the run could not be ended, so the store still says RUNNING,
    # with what was logged before the outage (docs/scale.md).
    killed = client.get_run(run_id)
    assert killed.info.status == "RUNNING"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(0, 1.0)]


def wait_for(condition: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


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
