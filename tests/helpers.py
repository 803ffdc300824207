"""Small helpers shared by test modules (import them: ``from helpers import write``)."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import pytest
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from trackcfg import TrackingConfig, TrackingSession

REPO: Final = Path(__file__).resolve().parents[1]
"""The repository (``tests/`` is right below it): its ``trackcfg`` is the one under test."""

TELEMETRY_OFF: Final[Mapping[str, str]] = {"DO_NOT_TRACK": "true"}
"""MLflow 3's client sends usage telemetry to an outside host unless this is set: every test
(conftest's ``_hermetic_env``) and every child process (:func:`subprocess_env`) has it."""

TRACKING_SETTINGS: Final = ("MLFLOW_", "TRACKCFG_")
"""Prefixes of MLflow's and trackcfg's own environment variables: ``subprocess_env(drop=...)``
for a child process that must not inherit the settings of the test's process."""
HTTP_SETTINGS: Final = (
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER",
)
"""MLflow's HTTP budget variables, which a session exports for a server and gives back."""


def write(path: Path, text: str) -> Path:
    """Write dedented YAML; line 1 of the file is the first line of ``text``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def line_of(path: Path, needle: str) -> int:
    """1-based number of the first line of ``path`` containing ``needle``."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


HEADER_PROVIDERS = '''
"""Request header providers for trackcfg's tests (server.request_header_provider)."""
from mlflow.tracking.request_header.abstract_request_header_provider import RequestHeaderProvider


class TeamHeader(RequestHeaderProvider):
    def __init__(self, team="none", kedro_context=None):
        self.team = team
        self.project = None if kedro_context is None else kedro_context.project_path.name

    def in_context(self):
        return True

    def request_headers(self):
        headers = {"X-Team": self.team}
        if self.project is not None:
            headers["X-Kedro-Project"] = self.project
        return headers


class Broken(RequestHeaderProvider):
    def __init__(self, **kwargs):
        raise RuntimeError("no token in the vault")

    def in_context(self):
        return True

    def request_headers(self):
        return {}


class NotAProvider:
    pass
'''


def header_providers_module(folder: Path) -> Path:
    """Write the module ``trackcfg_test_headers`` into ``folder``; returns ``folder`` (for
    ``monkeypatch.syspath_prepend``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trackcfg_test_headers.py").write_text(HEADER_PROVIDERS, encoding="utf-8")
    return folder


def subprocess_env(
    *, drop: tuple[str, ...] = (), venv_on_path: bool = False, **extra: str
) -> dict[str, str]:
    """This process's environment for a child process, with the repo first on ``PYTHONPATH``
    (the child imports the trackcfg under test) and telemetry off (:data:`TELEMETRY_OFF`, set
    here too for fixtures that run before ``_hermetic_env``).

    ``drop``: leave out the variables whose names start with one of these prefixes
    (:data:`TRACKING_SETTINGS`); ``venv_on_path``: this interpreter's ``bin`` folder first on
    ``PATH`` (for scripts that run ``kedro`` or ``mlflow``); ``extra``: set last, over all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(TELEMETRY_OFF)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if venv_on_path:
        bin_folder = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join(filter(None, [bin_folder, env.get("PATH")]))
    env.update(extra)
    return env


def run_python(
    *args: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``python *args`` (this interpreter) in a child process, its output captured as text;
    ``env``: :func:`subprocess_env` unless given.  The exit code is not checked."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=subprocess_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


PROJECT_NAME: Final = "demo-project"
"""The default experiment name of :class:`Project`'s folders (their ``[project].name``)."""


@dataclasses.dataclass(frozen=True)
class Project:
    """A project folder (made by :func:`project_folder`) whose config the tests write."""

    root: Path

    @property
    def store_uri(self) -> str:
        return store_uri(self.root)

    def config(self, yaml: str = "", overrides: Mapping[str, Any] | None = None) -> TrackingConfig:
        """Write ``mlflow.yml`` and load it with the real loader (root: this project)."""
        from trackcfg import load_config

        file = self.root / "mlflow.yml"
        file.write_text(textwrap.dedent(yaml))
        return load_config(file, overrides=overrides)


def in_forked_child(body: Callable[[], object], *, bound: float, hung: str = "") -> int:
    """``os.fork()``: the child runs ``body`` and exits, never back into pytest (0 when it
    returned; 1, its error on stderr, when it raised); the parent waits for it at most
    ``bound`` seconds (then kills it and fails the test with ``hung``) and returns its exit
    code."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        except BaseException as exc:
            print(f"child: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        finally:
            os._exit(code)
    return wait_child(pid, bound=bound, hung=hung)


def wait_child(pid: int, *, bound: float, hung: str = "") -> int:
    """The exit code of the forked child ``pid``, waited for at most ``bound`` seconds (then
    killed, and the test failed with ``hung``)."""
    import signal
    import time

    import pytest

    deadline = time.monotonic() + bound
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(hung or f"forked child {pid} hung (more than {bound:.0f} s; killed)")
        time.sleep(0.01)


def project_folder(
    root: Path, *, name: str | None = "proj", config: str | None = None, store: Path | None = None
) -> Path:
    """A project folder ``root`` (created); returns it.

    Its ``pyproject.toml`` names the project ``name`` (the default experiment name), or is
    empty with ``None``; ``config``: the text of its ``mlflow.yml``, written as it is;
    ``store``: a migrated SQLite store (the ``migrated_sqlite_db`` fixture) copied to its local
    store ``mlruns/mlflow.db``."""
    root.mkdir(parents=True, exist_ok=True)
    pyproject = "" if name is None else f'[project]\nname = "{name}"\n'
    (root / "pyproject.toml").write_text(pyproject, encoding="utf-8")
    if config is not None:
        (root / "mlflow.yml").write_text(config, encoding="utf-8")
    if store is not None:
        copy_store(store, root / "mlruns")
    return root


def copy_store(db: Path, folder: Path) -> Path:
    """A copy of the SQLite store ``db`` as ``folder/mlflow.db`` (``folder`` created);
    returns the copy (copying a migrated store saves seconds of migrations)."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(db, folder / "mlflow.db"))


def store_uri(root: Path) -> str:
    """The tracking URI of the local store of the project ``root`` (``mlruns/mlflow.db``)."""
    return f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"


def read_runs(
    store: str | MlflowClient,
    experiment: str | None = None,
    *,
    deleted: bool = False,
    oldest_first: bool = False,
) -> list[Run]:
    """The runs of a store (a tracking URI or a client), newest first: of every experiment,
    or of the one named ``experiment`` (none if it does not exist).

    ``deleted``: deleted experiments and runs too; ``oldest_first``: by start time, oldest
    first."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = store if isinstance(store, MlflowClient) else MlflowClient(tracking_uri=store)
    view = ViewType.ALL if deleted else ViewType.ACTIVE_ONLY
    if experiment is None:
        ids = [e.experiment_id for e in client.search_experiments(view_type=view)]
    else:
        found = client.get_experiment_by_name(experiment)  # deleted or not
        if found is None:
            return []
        ids = [found.experiment_id]
    order_by = ["attributes.start_time ASC"] if oldest_first else None
    return list(client.search_runs(ids, run_view_type=view, order_by=order_by))


def log_long_history(client: MlflowClient, run_id: str, *, keys: int, steps: int) -> None:
    """Metrics ``m0`` .. ``m<keys-1>``, ``steps`` points each, logged in 1,000-point batches
    (what an offline run that logged a long loop holds)."""
    from mlflow.entities import Metric

    for key in range(keys):
        metrics = [Metric(f"m{key}", float(s), 1_700_000_000_000 + s, s) for s in range(steps)]
        for start in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start : start + 1000])


def metric_points(client: MlflowClient, run_id: str) -> list[tuple[str, int, int, float]]:
    """Every metric point of the run, ``(key, step, timestamp, value)``, sorted."""
    run = client.get_run(run_id)
    return sorted(
        (m.key, m.step, m.timestamp, m.value)
        for key in run.data.metrics
        for m in client.get_metric_history(run_id, key)
    )


def trackcfg_warning_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The warnings (and worse) trackcfg's loggers recorded."""
    return [
        r for r in caplog.records if r.name.startswith("trackcfg") and r.levelno >= logging.WARNING
    ]


def trackcfg_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The messages of :func:`trackcfg_warning_records`."""
    return [r.getMessage() for r in trackcfg_warning_records(caplog)]


def use_every_method(session: TrackingSession, tmp_path: Path) -> None:
    """Call each logging method of ``session`` once (for sessions that must log nothing)."""
    file = tmp_path / "artifact.txt"
    file.write_text("content")
    session.log_params({"more": 1})
    session.log_metrics({"loss": 0.5}, step=2)
    session.log_metric("acc", 0.9)
    session.set_tags({"stage": "dev"})
    session.log_artifact(file)
    session.log_text("text", "notes/a.txt")
    session.log_dict({"a": 1}, "d.json")
    session.share_with_subprocesses()
    with session.activate():
        pass
