"""Shared fixtures.

The first block (``_hermetic_env``, ``user_config_dir``) belongs to the config/loader tests
and applies to every test: no test reads the developer's own configuration, environment or
current directory.  Add other fixtures below it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# --- hermetic environment (config/loader tests) --------------------------------------------

_KEPT_TRACKCFG_VARS = frozenset({"TRACKCFG_TEST_POSTGRES_URL"})
_MLFLOW_VARS = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_RUN_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_EXPERIMENT_ID",
)


@pytest.fixture(autouse=True)
def _hermetic_env(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A private user config dir, no TRACKCFG_*/MLFLOW_* variables, an empty CWD.

    Returns the ``XDG_CONFIG_HOME`` folder (platformdirs puts trackcfg's user config dir in
    ``<XDG_CONFIG_HOME>/trackcfg``).  The CWD is a folder of its own, apart from ``tmp_path``,
    so a test that builds a project in ``tmp_path`` cannot pass by accident of the CWD.
    """
    config_home = tmp_path_factory.mktemp("xdg_config_home")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home))
    for name in list(os.environ):
        if name.startswith("TRACKCFG_") and name not in _KEPT_TRACKCFG_VARS:
            monkeypatch.delenv(name)
    for name in _MLFLOW_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    return config_home


@pytest.fixture
def user_config_dir(_hermetic_env: Path) -> Path:
    """trackcfg's user config dir (``<XDG_CONFIG_HOME>/trackcfg``), created empty."""
    folder = _hermetic_env / "trackcfg"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# --- end of the hermetic environment block -------------------------------------------------


# --- mlflow server fixture (session tests) ---------------------------------------------------
# Owned by tests/test_session.py and tests/test_mlflow_backend.py.  Real components only:
# - ``mlflow_server``: ONE real ``mlflow server`` subprocess for the whole test session, bound to
#   127.0.0.1 on a free port.  It takes 15-60 s to become healthy on a loaded machine, so it is
#   started as soon as the first test runs when any collected test needs it (the start then
#   overlaps with other tests), and the fixture waits for ``/health``.
# - ``migrated_sqlite_db``: an MLflow SQLite store created (migrated) once; creating one costs
#   ~6 s, copying the file costs nothing, and the copy is a real store like any other.

import dataclasses  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import Iterator  # noqa: E402

_SERVER_HEALTH_TIMEOUT = 90.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclasses.dataclass
class _MlflowServer:
    url: str
    folder: Path
    process: subprocess.Popen[bytes]
    healthy: bool = False

    @classmethod
    def start(cls) -> _MlflowServer:
        folder = Path(tempfile.mkdtemp(prefix="trackcfg-mlflow-server-"))
        port = _free_port()
        # The developer's MLflow/trackcfg settings must not reach the server.  Job execution
        # (GenAI jobs, 7 huey worker processes) is switched off: it is not used here and
        # doubles the start time on a 2-core machine.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TRACKCFG_"))}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--host", "127.0.0.1",
            "--port", str(port),
            "--workers", "1",
            "--backend-store-uri", f"sqlite:///{folder}/server.db",
            "--artifacts-destination", str(folder / "artifacts"),
        ]  # fmt: skip
        with (folder / "stdout.log").open("wb") as out, (folder / "stderr.log").open("wb") as err:
            process = subprocess.Popen(
                command,
                cwd=folder,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own process group: uvicorn workers die with it
            )
        return cls(url=f"http://127.0.0.1:{port}", folder=folder, process=process)

    def stderr_tail(self, lines: int = 40) -> str:
        try:
            text = (self.folder / "stderr.log").read_text(errors="replace")
        except OSError:
            return "(no stderr)"
        return "\n".join(text.splitlines()[-lines:])

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy:
            if self.process.poll() is not None:
                pytest.fail(
                    f"mlflow server exited with {self.process.returncode} before it was "
                    f"healthy; stderr:\n{self.stderr_tail()}",
                    pytrace=False,
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    self.healthy = response.status == 200
            except (urllib.error.URLError, OSError):
                pass
            if not self.healthy:
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"mlflow server at {self.url} not healthy after {timeout:.0f} s; "
                        f"stderr:\n{self.stderr_tail()}",
                        pytrace=False,
                    )
                time.sleep(0.25)

    def stop(self) -> None:
        if self.process.poll() is None:
            pgid = self.process.pid  # start_new_session: the group id is the server's PID
            try:
                os.killpg(pgid, signal.SIGTERM)
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(pgid, signal.SIGKILL)
                self.process.wait(timeout=15)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def _mlflow_server_process() -> Iterator[_MlflowServer]:
    server = _MlflowServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session", autouse=True)
def _start_mlflow_server_early(request: pytest.FixtureRequest) -> None:
    """Start the server at the first test when any selected test uses ``mlflow_server``."""
    if any("mlflow_server" in getattr(item, "fixturenames", ()) for item in request.session.items):
        request.getfixturevalue("_mlflow_server_process")


@pytest.fixture(scope="session")
def mlflow_server(_mlflow_server_process: _MlflowServer) -> str:
    """URL (``http://127.0.0.1:PORT``) of a real, healthy ``mlflow server``."""
    _mlflow_server_process.wait_healthy(_SERVER_HEALTH_TIMEOUT)
    return _mlflow_server_process.url


@pytest.fixture(scope="session")
def migrated_sqlite_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store (``mlflow.db``) with every migration applied: copy it."""
    import mlflow

    folder = tmp_path_factory.mktemp("migrated-sqlite-store")
    db = folder / "mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)  # MLflow derives the Default experiment's artifact root from the CWD
        mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    assert db.is_file()
    return db


# --- end of the mlflow server fixture block --------------------------------------------------
