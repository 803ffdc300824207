"""Shared fixtures.

The first block (``_hermetic_env``, ``user_config_dir``) belongs to the config/loader tests
and applies to every test: no test reads the developer's own configuration, environment or
current directory.  Add other fixtures below it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import importlib
import os
import secrets as _secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import FAKE_PROJECT_NAME, FakeProject, FakeStore
from helpers import TELEMETRY_OFF

from trackcfg import _state
from trackcfg._workers import RANK_VARIABLES
from trackcfg.testing import MlflowServer

# The test folders (by part: config/, session/, kedro/, ...) on the import path, so that a
# module can import another folder's fixtures (``from test_kedro import kedro_template``)
# whichever was collected first.
sys.path[:0] = [
    str(folder)
    for folder in sorted(Path(__file__).parent.iterdir())
    if folder.is_dir() and not folder.name.startswith((".", "_")) and str(folder) not in sys.path
]

# --- hermetic environment (config/loader tests) --------------------------------------------

_KEPT_TRACKCFG_VARS = frozenset({"TRACKCFG_TEST_POSTGRES_URL", "TRACKCFG_TEST_KEDRO_MLFLOW_PATH"})
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
    # MLflow 3's client sends usage telemetry to an outside host; tests send nothing out.
    for name, value in TELEMETRY_OFF.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    return config_home


@pytest.fixture
def http_requests(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every HTTP request sent through ``requests`` (MLflow's client included) during the
    test, as the ``requests.PreparedRequest`` that went out: method, url, headers."""
    import requests.adapters

    seen: list[Any] = []
    original = requests.adapters.HTTPAdapter.send

    def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(request)
        return original(self, request, *args, **kwargs)

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
    return seen


@pytest.fixture
def user_config_dir(_hermetic_env: Path) -> Path:
    """trackcfg's user config dir (``<XDG_CONFIG_HOME>/trackcfg``), created empty."""
    folder = _hermetic_env / "trackcfg"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(autouse=True)
def _forget_kedro_context() -> Iterator[None]:
    """``trackcfg.kedro.hooks`` remembers the last Kedro context created in the process (a
    notebook's project: its datasets read that project's store); a context an earlier test
    created in this process must not be the next test's project."""
    yield
    module = sys.modules.get("trackcfg.kedro")
    if module is not None:
        hooks = module.hooks
        hooks._config = hooks._context = hooks._env = None


@pytest.fixture(autouse=True)
def _reset_mlflow_state(_hermetic_env: Path) -> Iterator[None]:
    """MLflow's process-wide state back as a fresh process has it after every test, so one
    bug cannot cascade (tests of trackcfg's own restoring check it themselves).  After the
    hermetic environment (so it is given back first): the variables it restores are the
    hermetic ones, never a value a test's own fixture set, which would otherwise outlive the
    test and reach the next module's child processes (a ``kedro run`` then logged into
    another test's store)."""
    env_before = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    yield
    if "mlflow" in sys.modules:  # a test that never imported mlflow left nothing behind
        import mlflow
        from mlflow.tracking import fluent

        state: Any = fluent
        state._active_run_stack.get().clear()
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
        state._active_experiment_id = None
    for name in [k for k in os.environ if k.startswith("MLFLOW_")]:
        os.environ.pop(name)
    os.environ.update(env_before)


# --- end of the hermetic environment block -------------------------------------------------


# --- mlflow server fixture (session tests) ---------------------------------------------------
# Owned by test_session.py and test_mlflow_backend.py.  Real components only:
# - ``mlflow_server``: ONE real ``mlflow server`` subprocess for the whole test session, bound to
#   127.0.0.1 on a free port.  It takes 15-60 s to become healthy on a loaded machine, so it is
#   started as soon as the first test runs when any collected test needs it (the start then
#   overlaps with other tests), and the fixture waits for ``/health``.
# - ``migrated_sqlite_db``: an MLflow SQLite store created (migrated) once; creating one costs
#   ~6 s, copying the file costs nothing, and the copy is a real store like any other.


_SERVER_HEALTH_TIMEOUT = 120.0

# The public testing kit's server (trackcfg.testing), under the names the modules use.
_MlflowServer = MlflowServer


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _healthy(server: MlflowServer, timeout: float = _SERVER_HEALTH_TIMEOUT) -> str:
    """``server``'s URL once it answers; the test fails (with the server's stderr) else."""
    try:
        server.wait_healthy(timeout)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    return server.url


def _stopped_after(server: MlflowServer) -> Iterator[MlflowServer]:
    """A server fixture's body: yields ``server``, stops it when the fixture is torn down."""
    try:
        yield server
    finally:
        server.stop()


def _selected_tests_use(request: pytest.FixtureRequest, fixture: str) -> bool:
    """Whether any test selected in this session uses ``fixture``."""
    return any(fixture in getattr(item, "fixturenames", ()) for item in request.session.items)


@pytest.fixture(scope="session")
def _mlflow_server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    folder = tmp_path_factory.mktemp("mlflow-server")
    yield from _stopped_after(
        MlflowServer.start(f"sqlite:///{folder}/server.db", folder / "artifacts")
    )


@pytest.fixture(scope="session", autouse=True)
def _start_mlflow_server_early(request: pytest.FixtureRequest) -> None:
    """Start the server at the first test when any selected test uses ``mlflow_server``."""
    if _selected_tests_use(request, "mlflow_server"):
        request.getfixturevalue("_mlflow_server_process")


@pytest.fixture(scope="session")
def mlflow_server(_mlflow_server_process: MlflowServer) -> str:
    """URL (``http://127.0.0.1:PORT``) of a real, healthy ``mlflow server`` (one per test
    process: each pytest-xdist worker has its own)."""
    return _healthy(_mlflow_server_process)


@pytest.fixture(scope="session")
def migrated_sqlite_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store (``mlflow.db``) with every migration applied: copy it.

    Made once per test run: pytest-xdist workers share the first one's (their temporary
    folders have one parent), under a lock; the file is never written after it is made."""
    import mlflow

    shared = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        shared = shared.parent
    folder = shared / "migrated-sqlite-store"
    db = folder / "mlflow.db"
    with (shared / "migrated-sqlite-store.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not db.is_file():
            folder.mkdir(exist_ok=True)
            made = folder / "making" / "mlflow.db"
            made.parent.mkdir(exist_ok=True)
            with pytest.MonkeyPatch.context() as mp:
                mp.chdir(
                    folder
                )  # MLflow derives the Default experiment's artifact root from the CWD
                mlflow.MlflowClient(tracking_uri=f"sqlite:///{made}").search_experiments()
            made.replace(db)
    assert db.is_file()
    return db


# --- end of the mlflow server fixture block --------------------------------------------------


# --- scale fixtures (postgres, moto) ---------------------------------------------------------
# Owned by test_many_processes.py, test_server_outages.py and test_secrets.py.  Real components
# on 127.0.0.1 only, on free ports, stopped by process group:
# - ``launch_mlflow_server``: start an ``mlflow server`` on any backend store (and port), kill it
#   and start it again (outage tests);
# - ``pg_mlflow_server``: an ``mlflow server`` on a FRESH PostgreSQL database (created for this
#   test session on the server named by TRACKCFG_TEST_POSTGRES_URL, dropped afterwards);
#   skipped with the reason where that variable is unset.  Started at the first test when a
#   selected test needs it, so its 15-60 s start overlaps other tests;
# - ``moto_s3``: a ``moto_server`` S3 endpoint with one bucket.


POSTGRES_URL_VARIABLE = "TRACKCFG_TEST_POSTGRES_URL"


def launch_mlflow_server(
    backend_store_uri: str,
    artifacts_destination: Path,
    *,
    port: int | None = None,
    tls: tuple[Path, Path] | None = None,
) -> MlflowServer:
    """Start ``mlflow server --workers 1`` (not waiting for it): ``.wait_healthy(t)`` then.

    ``tls=(certificate, key)``: serve https with them (uvicorn's own TLS)."""
    return MlflowServer.start(backend_store_uri, artifacts_destination, port=port, tls=tls)


@pytest.fixture(scope="module")
def mlflow_server_launcher() -> Iterator[Callable[..., MlflowServer]]:
    """``launch(backend_store_uri, artifacts_destination, port=None, tls=None)``: the
    arguments of :func:`launch_mlflow_server`; all stopped at the end of the test module."""
    started: list[MlflowServer] = []

    def launch(*args: Any, **kwargs: Any) -> MlflowServer:
        server = launch_mlflow_server(*args, **kwargs)
        started.append(server)
        return server

    yield launch
    for server in started:
        server.stop()


@dataclasses.dataclass(frozen=True)
class PostgresStore:
    url: str
    """The server URL with the test database (``postgresql://...``)."""
    store_uri: str
    """The same as an MLflow/SQLAlchemy store URI (``postgresql+psycopg2://...``)."""
    database: str


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[PostgresStore]:
    """A fresh, empty database on the TRACKCFG_TEST_POSTGRES_URL server, dropped afterwards."""
    base = os.environ.get(POSTGRES_URL_VARIABLE, "").strip()
    if not base:
        pytest.skip(
            f"{POSTGRES_URL_VARIABLE} is not set: the PostgreSQL-backed tests need a server "
            "(CI: postgresql://postgres@127.0.0.1:5432/test)"
        )
    # Through importlib: psycopg2 ships no type information (and the typing run lacks it).
    psycopg2: Any = importlib.import_module("psycopg2")
    sql: Any = importlib.import_module("psycopg2.sql")

    name = f"trackcfg_test_{_secrets.token_hex(6)}"
    admin = psycopg2.connect(base)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        parts = urllib.parse.urlsplit(base)
        url = urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))
        store_uri = urllib.parse.urlunsplit(
            parts._replace(scheme="postgresql+psycopg2", path=f"/{name}")
        )
        yield PostgresStore(url=url, store_uri=store_uri, database=name)
    finally:
        with admin.cursor() as cursor:
            cursor.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        admin.close()


@pytest.fixture(scope="session")
def _pg_mlflow_server_process(
    postgres_database: PostgresStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MlflowServer]:
    yield from _stopped_after(
        launch_mlflow_server(
            postgres_database.store_uri, tmp_path_factory.mktemp("pg-server-artifacts")
        )
    )


@pytest.fixture(scope="session", autouse=True)
def _start_pg_mlflow_server_early(request: pytest.FixtureRequest) -> None:
    """Start the PostgreSQL-backed server at the first test when a selected test uses it.
    Not in a pytest-xdist worker: every worker sees every selected test, and the few using
    it run on one worker (``xdist_group("postgres")``, below), which starts it on first use."""
    if (
        os.environ.get(POSTGRES_URL_VARIABLE, "").strip()
        and "PYTEST_XDIST_WORKER" not in os.environ
        and _selected_tests_use(request, "pg_mlflow_server")
    ):
        request.getfixturevalue("_pg_mlflow_server_process")


@pytest.fixture(scope="session")
def pg_mlflow_server(_pg_mlflow_server_process: MlflowServer) -> str:
    """URL of a healthy ``mlflow server`` whose backend store is a fresh PostgreSQL database."""
    return _healthy(_pg_mlflow_server_process)


@dataclasses.dataclass(frozen=True)
class MotoS3:
    endpoint_url: str
    bucket: str
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"

    def client(self) -> Any:
        """A boto3 S3 client with explicit credentials (never from the environment)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region,
        )


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """A ``moto_server`` S3 endpoint on 127.0.0.1 with one empty bucket."""
    executable = Path(sys.executable).with_name("moto_server")
    if not executable.exists():
        pytest.fail(f"moto_server not found next to {sys.executable}: install moto[server]")
    port = _free_port()
    logs = Path(tempfile.mkdtemp(prefix="trackcfg-moto-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    with (logs / "moto.log").open("wb") as out:
        process = subprocess.Popen(
            [str(executable), "-H", "127.0.0.1", "-p", str(port)],
            cwd=logs,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                log = (logs / "moto.log").read_text(errors="replace")
                pytest.fail(f"moto_server exited with {process.returncode}:\n{log}")
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):
                    break
            except urllib.error.HTTPError:
                break  # it answers: good enough
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"moto_server at {url} did not answer within 60 s")
                time.sleep(0.2)
        s3 = MotoS3(
            endpoint_url=url,
            bucket=f"trackcfg-{_secrets.token_hex(4)}",
            access_key_id=f"AKIA{_secrets.token_hex(8).upper()}",
            secret_access_key=_secrets.token_urlsafe(30),
        )
        s3.client().create_bucket(Bucket=s3.bucket)
        yield s3
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)
        shutil.rmtree(logs, ignore_errors=True)


# --- end of the scale fixtures block ---------------------------------------------------------


@pytest.fixture
def refused_port() -> int:
    """A port nobody listens on (bound, then released): the kernel refuses connections to it
    at once."""
    return _free_port()


@pytest.fixture
def silent_uri() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a server that accepts connections (the kernel does) and
    never answers: only the request timeout ends the wait."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder named ``proj`` (``[project].name = "proj"``), the current folder.
    (Modules with a project of another shape define their own ``project``.)"""
    from helpers import project_folder

    folder = project_folder(tmp_path / "proj")
    monkeypatch.chdir(folder)
    return folder


@pytest.fixture
def store_with_db(project: Path, migrated_sqlite_db: Path) -> Path:
    """``project`` with a real, empty MLflow store at ``mlruns/mlflow.db``."""
    from helpers import copy_store

    copy_store(migrated_sqlite_db, project / "mlruns")
    return project


# --- the fake store's tests (tests/fakes.py) -------------------------------------------------


@pytest.fixture
def fake_store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def _rank_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    """No launcher's rank variable from the machine running the tests (a CI job on SLURM)."""
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def _nothing_left_open() -> Iterator[None]:
    """After each test: no process-wide settings held and the SIGTERM handler as before, put
    back by force when a test left them (so one failure does not cascade)."""
    handler = signal.getsignal(signal.SIGTERM)
    yield
    settings_held = _state._settings is not None
    trap_held = _state._sigterm is not None
    handler_after = signal.getsignal(signal.SIGTERM)
    _state._settings = None
    _state._sigterm = None
    signal.signal(signal.SIGTERM, handler)
    assert not settings_held, "a session left the process-wide settings held"
    assert not trap_held, "a session left the SIGTERM trap held"
    assert handler_after == handler, "the SIGTERM handler was not given back"


@pytest.fixture
def fake_project(tmp_path: Path, _rank_zero: None, _nothing_left_open: None) -> FakeProject:
    """A project of the fake store's tests; with no launcher's rank variable set, and checked
    to leave nothing open (``_rank_zero``, ``_nothing_left_open``)."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "pyproject.toml").write_text(f'[project]\nname = "{FAKE_PROJECT_NAME}"\n')
    return FakeProject(root)


# --- markers and parallel workers ------------------------------------------------------------
# `slow` goes on every test that starts real processes through a fixture (below) or lives in
# a module whose tests all run child processes; `nox -s quick` runs the rest (-m "not slow").
# Under pytest-xdist (`--dist loadgroup`, the noxfile's), a module that starts a server of its
# own for several tests keeps them on one worker, so that server starts once.

SLOW_FIXTURES = frozenset(
    {
        "mlflow_server",
        "pg_mlflow_server",
        "postgres_database",
        "mlflow_server_launcher",
        "moto_s3",
        "kedro_template",
        "ui_process",
        "browsed_ui",
    }
)
SLOW_MODULES = frozenset(
    {
        "test_server_outages",
        "test_hydra",
        "test_journal_disk",
        "test_journal_fork",
        "test_journal_signals",
        "test_kedro",
        "test_kedro_datasets",
        "test_kedro_example",
        "test_kedro_model_datasets",
        "test_kedro_pipeline_ml",
        "test_local_store_artifacts",
        "test_optuna_example",
        "test_many_processes",
        "test_signals",
        "test_ui_browser",
    }
)
SLOW_TESTS = frozenset(
    {
        # They run child Pythons (scripts, the CLI, kedro) or a server of their own, or
        # generate hundreds of hypothesis examples: seconds each (measured with --durations).
        "test_a_50_mb_config_file_is_refused_unread",
        "test_a_job_killed_at_step_500_and_started_again_with_its_key_is_one_finished_run",
        "test_a_journal_of_another_format_version_is_a_clear_error_not_a_traceback",
        "test_a_local_run_says_how_to_view_it_and_the_command_runs_as_printed",
        "test_a_resumed_run_sends_what_its_killed_session_left_in_the_journal",
        "test_a_run_ends_with_its_summary_on_a_terminal",
        "test_a_run_on_its_server_has_no_offline_reminder",
        "test_a_script_in_a_bare_folder_is_told_once_where_its_runs_go",
        "test_a_script_on_a_refused_server_ends_with_a_short_traceback_and_the_cause",
        "test_a_torn_journal_tail_is_reported_and_the_valid_prefix_sent",
        "test_an_alias_bomb_fails_show_and_check_quickly",
        "test_an_offline_run_ends_with_one_line_naming_trackcfg_sync",
        "test_buffered_calls_leave_the_store_as_the_same_calls_in_sync_mode",
        "test_check_as_a_subprocess_passes_on_a_fresh_project",
        "test_check_fails_within_its_timeout_on_a_database_that_hangs_after_its_first_answer",
        "test_check_fails_within_its_timeout_on_a_database_that_never_answers",
        "test_check_on_an_empty_postgres_database_sets_nothing_up",
        "test_decorated_sweep_example_makes_one_child_run_per_trial",
        "test_destination_down_exit_1_clear_message_nothing_marked",
        "test_help_is_fast_and_does_not_import_mlflow",
        "test_init_as_a_subprocess_writes_mlflow_yml_in_the_current_folder",
        "test_mutated_valid_documents_are_a_config_or_a_config_error",
        "test_no_summary_in_a_pipe_or_when_mlflows_link_is_off",
        "test_offline_parent_child_session_and_worker_process_all_go_beside_it",
        "test_random_env_vars_are_a_config_or_a_config_error",
        "test_random_overrides_are_a_config_or_a_config_error",
        "test_random_text_is_a_config_or_a_config_error",
        "test_replaying_a_journal_twice_or_after_a_sync_killed_half_way_duplicates_nothing",
        "test_resume_running_by_id_sends_the_killed_journal_and_a_later_sync_keeps_it_finished",
        "test_script_quickstart_example_creates_a_finished_run",
        "test_session_from_another_cwd_writes_into_the_project_store",
        "test_show_and_check_agree_with_a_run_on_km_random_name",
        "test_show_and_check_say_which_run_a_start_would_continue",
        "test_show_as_a_subprocess_masks_credentials",
        "test_sigterm_ends_the_run_killed_and_the_process_by_sigterm",
        "test_sql_store_drops_identical_points_file_store_keeps_them",
        "test_sync_leaves_a_journal_a_live_session_writes_alone",
        "test_the_cli_prints_one_error_line_never_a_traceback",
        "test_trackcfg_check_on_a_refused_server_prints_no_traceback",
        "test_tracked_calls_with_a_key_continue_one_run",
    }
)
"""Tests marked ``slow`` by name (parameters left out): add one that takes seconds."""
ONE_WORKER_FIXTURES = {
    "test_buffered": "server",
    "test_cli": "_ui_launched",
    "test_kedro_pipeline_ml": "ours",
    "test_server_outages": "outage",
    "test_ui_browser": "browsed_ui",
}
"""A module's own server or other costly module-scoped fixture (``ours``: a Kedro project run
with ParallelRunner, minutes under load, built once per worker that needs it): the module's
tests that use it run on one worker, so it is made once; the module's other tests go to any
worker.  Such a module starts
its server early (at its first test) only without pytest-xdist: under xdist every worker sees
every selected test and cannot tell whether it will run one that needs the server."""
POSTGRES_FIXTURES = frozenset({"pg_mlflow_server", "postgres_database"})
"""One PostgreSQL-backed server and database for their few users, on one worker."""


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = item.path.stem
        if (
            module in SLOW_MODULES
            or item.name.partition("[")[0] in SLOW_TESTS
            or SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        ):
            item.add_marker(pytest.mark.slow)
        if ONE_WORKER_FIXTURES.get(module) in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group(module))
        if POSTGRES_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("postgres"))
