"""Helpers for your own tests of code that uses trackcfg: real stores, nothing mocked.

- :func:`local_config` gives a :class:`~trackcfg.TrackingConfig` whose store and journal are
  inside a folder of yours (pytest's ``tmp_path``), whatever the environment or the current
  folder say;
- :func:`mlflow_server` runs a real ``mlflow server`` on a free port of 127.0.0.1 for a
  ``with`` block (a session-scoped fixture is the usual home), and stops it, with every
  process it started, on the way out; ``workers`` sets its number of worker processes (one
  by default; ``None``: MLflow's own default, four in MLflow 3, as ``mlflow server`` run by
  hand: for benchmarks against a default server), and ``job_execution=True`` keeps MLflow's
  GenAI job runner on, as a server run by hand has it (off by default: it starts seven more
  processes).

Importing this module imports neither mlflow nor pytest.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ._config import TrackingConfig
from ._discovery import Located
from ._loading import _build, _override_layer
from .exceptions import ConfigProblem

__all__ = ["MlflowServer", "local_config", "mlflow_server"]

_SERVER_START_TIMEOUT = 120.0
"""Seconds :func:`mlflow_server` waits for ``/health``: 13-22 s is usual on a quiet machine,
a loaded 2-core machine has needed 60."""


def local_config(
    path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None
) -> TrackingConfig:
    """A configuration whose local store is ``<path>/mlruns`` and whose journal is in
    ``<path>/.trackcfg/journal``; ``path`` is its project root (created if missing).

    ``overrides`` maps dotted keys to values, as ``load_config``'s (``{"tracking.run.name":
    "smoke", "server.mlflow_tracking_uri": url}``), and wins over these two.  Nothing else is
    read: no ``mlflow.yml``, no user config, no ``TRACKCFG_*``/``MLFLOW_*`` variable, so a
    test sees the same configuration on every machine.  Bad keys or values raise
    ``ConfigError`` as ``load_config`` does.  A ``credentials.yml`` in ``path`` is found.
    """
    root = Path(path).resolve()
    root.mkdir(parents=True, exist_ok=True)
    placed = {
        "server.mlflow_tracking_uri": str(root / "mlruns"),
        "tracking.logging.journal_dir": str(root / ".trackcfg" / "journal"),
    }
    problems: list[ConfigProblem] = []
    layer = _override_layer({**placed, **(overrides or {})}, problems)
    located = Located((), root, (root,))
    # load_config's own converter and messages, with one layer: these overrides.
    return _build([layer], problems, located, (), environ={})


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class MlflowServer:
    """One ``mlflow server`` process (and its process group), started by :meth:`start`.

    For tests that need more than :func:`mlflow_server` gives: another backend store
    (PostgreSQL), a fixed port (stop it and start it again on the same port: an outage),
    TLS.  ``url`` is known at once; :meth:`wait_healthy` waits for the server to answer.
    """

    def __init__(
        self,
        url: str,
        folder: Path,
        process: subprocess.Popen[bytes],
        cafile: Path | None = None,
    ) -> None:
        self.url = url
        self.folder = folder
        """Folder of the server's ``stdout.log`` and ``stderr.log`` (removed by :meth:`stop`)."""
        self.process = process
        self.cafile = cafile
        """The certificate an https server presents (to verify it)."""
        self.healthy = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    def start(
        cls,
        backend_store_uri: str,
        artifacts_destination: str | os.PathLike[str],
        *,
        port: int | None = None,
        tls: tuple[Path, Path] | None = None,
        workers: int | None = 1,
        job_execution: bool = False,
    ) -> MlflowServer:
        """Start ``mlflow server`` on 127.0.0.1 (``port``: a free one) without waiting for
        it.  ``tls=(certificate, key)``: serve https with them.  ``workers``: its worker
        processes (one by default); ``None`` leaves ``--workers`` out (MLflow's default).
        ``job_execution``: MLflow's GenAI job runner (on in a server started by hand)."""
        logs = Path(tempfile.mkdtemp(prefix="trackcfg-mlflow-server-logs-"))
        port = port or _free_port()
        # The caller's MLflow/trackcfg settings must not reach the server.  Job execution
        # (GenAI jobs: 7 huey worker processes) is off unless asked for: unused by tests, and
        # it doubles the start time on a small machine.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TRACKCFG_"))}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "true" if job_execution else "false"
        env.setdefault("DO_NOT_TRACK", "true")  # MLflow's usage telemetry
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--host", "127.0.0.1",
            "--port", str(port),
            *(["--workers", str(workers)] if workers is not None else []),
            "--backend-store-uri", backend_store_uri,
            "--artifacts-destination", str(artifacts_destination),
        ]  # fmt: skip
        if tls is not None:
            command += ["--uvicorn-opts", f"--ssl-certfile {tls[0]} --ssl-keyfile {tls[1]}"]
        with (logs / "stdout.log").open("wb") as out, (logs / "stderr.log").open("wb") as err:
            process = subprocess.Popen(
                command,
                cwd=logs,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own process group: uvicorn's workers die with it
            )
        scheme = "https" if tls is not None else "http"
        return cls(f"{scheme}://127.0.0.1:{port}", logs, process, tls[0] if tls else None)

    def stderr_tail(self, lines: int = 40) -> str:
        try:
            text = (self.folder / "stderr.log").read_text(errors="replace")
        except OSError:
            return "(no stderr)"
        return "\n".join(text.splitlines()[-lines:])

    def wait_healthy(self, timeout: float = _SERVER_START_TIMEOUT) -> None:
        """Return when ``/health`` answers 200; ``RuntimeError`` (with the server's stderr)
        when the server exits first or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        context = ssl.create_default_context(cafile=self.cafile) if self.cafile else None
        while not self.healthy:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with {self.process.returncode} before it was "
                    f"healthy; stderr:\n{self.stderr_tail()}"
                )
            try:
                with urllib.request.urlopen(
                    f"{self.url}/health", timeout=2, context=context
                ) as response:
                    self.healthy = response.status == 200
            except (urllib.error.URLError, OSError):
                pass
            if not self.healthy:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"mlflow server at {self.url} not healthy after {timeout:.0f} s; "
                        f"stderr:\n{self.stderr_tail()}"
                    )
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop the server's process group (SIGTERM, then SIGKILL after 15 s) and wait for it;
        remove the log folder."""
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
        # uvicorn's worker may outlive the server's main process by a moment: the group goes.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.healthy = False
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(
    path: str | os.PathLike[str] | None = None,
    *,
    timeout: float = _SERVER_START_TIMEOUT,
    workers: int | None = 1,
    job_execution: bool = False,
) -> Iterator[str]:
    """Run a real ``mlflow server`` for the ``with`` block; yields its URL
    (``http://127.0.0.1:PORT``) once it answers.

    Its store is ``<path>/mlflow.db`` and its artifacts ``<path>/artifacts`` (``path``
    created if missing; kept afterwards); without ``path``, a temporary folder removed on
    exit.  On exit the server and every process it started are stopped (by process group,
    from its PID).  ``timeout``: seconds to wait for it to answer (``RuntimeError`` then).
    ``workers``: the server's worker processes, one by default (a test's requests are few,
    and each worker is a Python process importing MLflow); ``None`` runs MLflow's default
    number (four in MLflow 3), as a server started by hand has.  ``job_execution``: keep
    MLflow's GenAI job runner on, as a server started by hand has it (MLflow 3.17's default).
    Off by default: it starts seven more processes, each importing MLflow, which compete for
    the CPU with the server's first requests (on 2 cores a run's create and end took 92 ms
    against 27 ms right after the server answered, the same 27 ms 40 s later).
    """
    own_folder = path is None
    folder = Path(tempfile.mkdtemp(prefix="trackcfg-mlflow-server-") if path is None else path)
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    server = MlflowServer.start(
        f"sqlite:///{folder / 'mlflow.db'}",
        folder / "artifacts",
        workers=workers,
        job_execution=job_execution,
    )
    try:
        server.wait_healthy(timeout)
        yield server.url
    finally:
        server.stop()
        if own_folder:
            shutil.rmtree(folder, ignore_errors=True)
