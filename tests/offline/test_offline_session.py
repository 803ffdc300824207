"""Offline runs, the session side (``server.offline: never | auto | always``).

On real stores first: the destination is a real ``mlflow server`` (the session's
``mlflow_server`` fixture), a port nobody listens on (refused at once), or ``Listener``: a
socket on 127.0.0.1 that takes TCP connections and never answers, and counts them (``always``
must open none). The offline store is the project's own SQLite store, read back with
``MlflowClient``. Then the same decisions on the fake backend (``fake_project``/``fake_store``):
where the session logs, what it refuses, what it gives back, and which store the factory's
reachability answer picks.
"""

from __future__ import annotations

import logging
import os
import socket
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import FAKE_URI, FakeProject, FakeStore, open_session
from helpers import (
    HTTP_SETTINGS,
    project_folder,
    read_runs,
    run_python,
    store_uri,
    subprocess_env,
    trackcfg_warning_records,
    trackcfg_warnings,
    write,
)
from mlflow import MlflowClient

from trackcfg import (
    CredentialsError,
    ExperimentError,
    RunError,
    TrackingSession,
    TrackingUnavailableError,
    _state,
    load_config,
)
from trackcfg._backend import RunStatus
from trackcfg._rules import OFFLINE_DESTINATION_TAG


class Listener:
    """A TCP port on 127.0.0.1 that accepts connections (the kernel completes them) and never
    answers; ``connections()`` counts those made so far."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.setblocking(False)
        self.port: int = self._sock.getsockname()[1]
        self._accepted: list[socket.socket] = []

    def connections(self) -> int:
        while True:
            try:
                connection, _ = self._sock.accept()
            except BlockingIOError:
                return len(self._accepted)
            self._accepted.append(connection)

    def close(self) -> None:
        for connection in self._accepted:
            connection.close()
        self._sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    found = Listener()
    yield found
    found.close()


def free_port() -> int:
    """A port nobody listens on (bound once, then let go: refused from then on)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, migrated_sqlite_db: Path) -> Path:
    """A project ``proj`` with a migrated local store (the offline store), the CWD."""
    folder = project_folder(tmp_path / "proj", store=migrated_sqlite_db)
    monkeypatch.chdir(folder)
    return folder


@pytest.fixture(autouse=True)
def _mlflow_imported() -> None:
    """MLflow imported before the timed parts (the first session in a process imports it)."""
    import trackcfg._mlflow  # noqa: F401


def config_file(project: Path, uri: str, offline: str, **server: Any) -> Path:
    extra = "".join(f"  {key}: {value}\n" for key, value in server.items())
    return write(
        project / "mlflow.yml",
        f"server:\n  mlflow_tracking_uri: {uri}\n  offline: {offline}\n{extra}"
        "tracking:\n  experiment:\n    name: offline-demo\n",
    )


def log_everything(session: TrackingSession, tmp_path: Path) -> None:
    file = tmp_path / "model.txt"
    file.write_text("weights")
    session.log_params({"depth": 3})
    for step in range(3):
        session.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    session.log_artifact(file, "model")
    session.log_text("notes", "notes.txt")


def assert_offline_run(project: Path, destination: str) -> Any:
    """The one run of the offline store, with everything ``log_everything`` logged."""
    from mlflow import MlflowClient

    (run,) = read_runs(store_uri(project), "offline-demo")
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.1", "depth": "3"}
    client = MlflowClient(tracking_uri=store_uri(project))
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5), (2, 1 / 3)]
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == [
        "model",
        "notes.txt",
    ]
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    assert (artifacts / "model" / "model.txt").read_text() == "weights"
    assert artifacts.is_relative_to(project / "mlruns" / "artifacts")
    assert run.data.tags[OFFLINE_DESTINATION_TAG] == destination
    return run


def assert_nothing_held() -> None:
    """The destination attempt gave back everything it set."""
    import mlflow

    assert _state._settings is None
    assert not any(name in os.environ for name in HTTP_SETTINGS)
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert not mlflow.get_tracking_uri().startswith("http")


# ---------------------------------------------------------------------------------------------
# auto


def test_auto_with_the_server_refusing_logs_offline_at_once_and_says_so_once(
    project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    uri = f"http://bob:hunter2@127.0.0.1:{port}"
    masked = f"http://bob:***@127.0.0.1:{port}"
    config = load_config(config_file(project, uri, "auto"))
    session = TrackingSession(config, name="train", params={"lr": 0.1})
    caplog.set_level(logging.INFO, logger="trackcfg")
    wall_start, started = time.time(), time.monotonic()
    with session as s:
        entered = time.monotonic() - started
        log_everything(s, tmp_path)
        shown = repr(s)
        assert s.tracking_uri == store_uri(project)
    run = assert_offline_run(project, masked)
    assert run.info.run_id == session.run_id
    # falling back; where the run waits, at the end
    warning, reminder = trackcfg_warning_records(caplog)
    assert "; send it there with: trackcfg sync " in reminder.getMessage()
    text = warning.getMessage()
    assert masked in text
    assert "connection refused" in text
    assert f"trackcfg sync {project}" in text
    assert str(project / "mlruns") in text
    assert f"offline in {project / 'mlruns'} for {masked}" in shown
    assert "hunter2" not in caplog.text + shown
    # Refused at once: falling back costs no retry budget.
    assert warning.created - wall_start < 2.0
    assert entered < 10, entered
    assert_nothing_held()


def test_auto_with_a_server_that_never_answers_falls_back_after_request_timeout(
    project: Path, tmp_path: Path, listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    uri = f"http://127.0.0.1:{listener.port}"
    config = load_config(config_file(project, uri, "auto", request_timeout=2, max_retries=3))
    caplog.set_level(logging.INFO, logger="trackcfg")
    # The warning comes once the offline store is open; on a worker's first SQLite store,
    # importing MLflow's SQL store module takes seconds under load, which is not what the
    # bound below is about (it failed 2 of 3 runs of tests/offline under -n 4 so).
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

    wall_start, started = time.time(), time.monotonic()
    with TrackingSession(config, name="train", params={"lr": 0.1}) as s:
        entered = time.monotonic() - started
        log_everything(s, tmp_path)
    assert_offline_run(project, uri)
    # falling back; where the run waits, at the end
    warning, reminder = trackcfg_warning_records(caplog)
    assert "; send it there with: trackcfg sync " in reminder.getMessage()
    waited = warning.created - wall_start
    # One question bounded by server.request_timeout, not its x (max_retries + 1) with backoff.
    assert 1.9 <= waited < 2 + 3, waited
    assert entered < 2 + 10, entered
    assert "no answer within 2 s" in warning.getMessage()
    assert listener.connections() == 1
    assert_nothing_held()


def test_auto_with_the_server_up_logs_there_and_nothing_locally(
    mlflow_server: str, project: Path
) -> None:
    experiment = f"offline-up-{uuid.uuid4().hex[:8]}"
    path = config_file(project, mlflow_server, "auto")
    config = load_config(path, overrides={"tracking.experiment.name": experiment})
    with TrackingSession(config, name="train", params={"lr": 0.1}) as s:
        s.log_metrics({"loss": 0.5}, step=1)
        assert s.tracking_uri == mlflow_server
        assert s.offline_destination is None
    (run,) = read_runs(mlflow_server, experiment)
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"loss": 0.5}
    assert OFFLINE_DESTINATION_TAG not in run.data.tags
    assert read_runs(store_uri(project)) == []


def test_never_with_the_server_down_raises_as_before_and_logs_nothing_locally(
    project: Path,
) -> None:
    config = load_config(config_file(project, f"http://127.0.0.1:{free_port()}", "never"))
    refused = pytest.raises(TrackingUnavailableError, match="refused the connection")
    with refused, TrackingSession(config, name="train"):
        pass
    assert read_runs(store_uri(project)) == []
    assert_nothing_held()


def test_auto_with_a_database_that_does_not_answer_falls_back(
    project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("psycopg2")
    uri = f"postgresql+psycopg2://bob:hunter2@127.0.0.1:{free_port()}/mlflow"
    masked = uri.replace("hunter2", "***")
    config = load_config(config_file(project, uri, "auto", request_timeout=2))
    caplog.set_level(logging.INFO, logger="trackcfg")
    with TrackingSession(config, name="train", params={"lr": 0.1}) as s:
        log_everything(s, tmp_path)
    assert_offline_run(project, masked)
    # falling back; where the run waits, at the end
    warning, reminder = trackcfg_warning_records(caplog)
    assert "; send it there with: trackcfg sync " in reminder.getMessage()
    assert masked in warning.getMessage()
    assert "hunter2" not in caplog.text
    assert_nothing_held()


def test_the_quick_check_is_bounded_for_https_too_and_left_to_the_proxy_behind_one(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trackcfg._offline import server_silence

    started = time.monotonic()
    silence = server_silence(f"https://127.0.0.1:{listener.port}", 1)
    assert silence == "no answer within 1 s (server.request_timeout)"
    assert time.monotonic() - started < 1 + 2
    # Behind a proxy the proxy answers, not the server: the session's own requests decide.
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert server_silence(f"https://127.0.0.1:{listener.port}", 1) is None
    assert listener.connections() == 1


# ---------------------------------------------------------------------------------------------
# always


def test_always_never_connects_to_the_server(
    project: Path, tmp_path: Path, listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    uri = f"http://127.0.0.1:{listener.port}"
    config = load_config(config_file(project, uri, "always"))
    caplog.set_level(logging.INFO, logger="trackcfg")
    session = TrackingSession(config, name="train", params={"lr": 0.1})
    assert session.tracking_uri == store_uri(project)
    with session as s:
        log_everything(s, tmp_path)
    assert_offline_run(project, uri)
    assert listener.connections() == 0
    # chosen, so said at the start as INFO; at the end:
    (reminder,) = trackcfg_warning_records(caplog)
    assert reminder.getMessage().endswith(f"; send it there with: trackcfg sync {project}")
    assert "server.offline: always" in caplog.text
    assert f"trackcfg sync {project}" in caplog.text


@pytest.mark.parametrize("mode", ["always", "auto"])
@pytest.mark.parametrize("source", ["tracking.run.id", "MLFLOW_RUN_ID"])
def test_resuming_a_run_offline_is_refused_before_anything_is_created(
    tmp_path: Path,
    listener: Listener,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    source: str,
) -> None:
    project = project_folder(tmp_path / "fresh")  # no store yet: nothing may create one
    uri = f"http://127.0.0.1:{listener.port}" if mode == "always" else "http://127.0.0.1:1"
    overrides = {"tracking.run.id": "0123abcd"} if source == "tracking.run.id" else {}
    if source == "MLFLOW_RUN_ID":
        monkeypatch.setenv("MLFLOW_RUN_ID", "0123abcd")
    config = load_config(config_file(project, uri, mode), overrides=overrides)
    with pytest.raises(RunError) as caught, TrackingSession(config, name="train"):
        pass
    message = str(caught.value)
    assert f"{source}='0123abcd'" in message or f"'0123abcd' ({source})" in message
    assert "cannot" in message
    assert uri in message
    assert "trackcfg sync" in message  # the fix: a new offline run, uploaded later
    assert not (project / "mlruns").exists()
    assert listener.connections() == 0
    assert_nothing_held()


# ---------------------------------------------------------------------------------------------
# children and workers

WORKER = """\
import sys
from trackcfg import TrackingSession
with TrackingSession.from_yaml(sys.argv[1], name="worker") as s:
    s.log_metrics({"worker_loss": 0.25}, step=1)
print("RUN", s.run_id, s.tracking_uri)
"""


def test_offline_parent_child_session_and_worker_process_all_go_beside_it(
    project: Path, tmp_path: Path, listener: Listener
) -> None:
    uri = f"http://bob:hunter2@127.0.0.1:{listener.port}"
    masked = f"http://bob:***@127.0.0.1:{listener.port}"
    config = load_config(config_file(project, uri, "always"))
    # The worker's own config says auto, for the same server: it must not try it either.
    worker_config = write(
        tmp_path / "worker.yml",
        f"server:\n  mlflow_tracking_uri: {uri}\n  offline: auto\n",
    )
    script = write(tmp_path / "worker.py", WORKER)
    with TrackingSession(config, name="train") as parent:
        with parent.child("fold-1") as child:
            child.log_metrics({"fold_loss": 0.5})
        env = parent.child_env()
        assert env["TRACKCFG_OFFLINE_DESTINATION"] == masked
        worker_env = {**subprocess_env(), **env}
        done = run_python(str(script), str(worker_config), cwd=project, env=worker_env)
    assert done.returncode == 0, done.stderr
    worker_run = done.stdout.split("RUN ", 1)[1].split()[0]
    found = {r.info.run_id: r for r in read_runs(store_uri(project), "offline-demo")}
    assert set(found) == {parent.run_id, child.run_id, worker_run}
    for run_id in (child.run_id, worker_run):
        assert found[run_id].data.tags["mlflow.parentRunId"] == parent.run_id
    for run in found.values():
        assert run.data.tags[OFFLINE_DESTINATION_TAG] == masked
        assert run.info.status == "FINISHED"
    assert found[worker_run].data.metrics == {"worker_loss": 0.25}
    assert listener.connections() == 0
    assert "hunter2" not in done.stdout + done.stderr


# ---------------------------------------------------------------------------------------------
# the CLI: check and show


def test_check_and_show_report_the_mode(
    project: Path, listener: Listener, mlflow_server: str
) -> None:
    config_file(project, mlflow_server, "auto")
    env = subprocess_env(COLUMNS="250")
    up = run_python("-m", "trackcfg", "check", "--timeout", "10", cwd=project, env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"[ ok ] store: {mlflow_server} answers" in up.stdout
    assert "[ ok ] offline: auto: the server answers now, so runs go to it (when it does " in (
        up.stdout
    )

    down = f"http://127.0.0.1:{free_port()}"
    config_file(project, down, "auto")
    auto = run_python("-m", "trackcfg", "check", "--timeout", "2", cwd=project, env=env)
    assert auto.returncode == 0, auto.stdout + auto.stderr
    assert f"[warn] store: {down} not reachable" in auto.stdout
    assert "[warn] offline: auto: the server does not answer now, so runs would go to " in (
        auto.stdout
    )
    assert "trackcfg sync" in auto.stdout
    assert "a run would start" in auto.stdout

    config_file(project, f"http://127.0.0.1:{listener.port}", "always")
    always = run_python("-m", "trackcfg", "check", "--timeout", "2", cwd=project, env=env)
    assert always.returncode == 0, always.stdout + always.stderr
    assert "[ ok ] offline: always: runs go to mlruns" in always.stdout
    assert "(not contacted)" in always.stdout
    assert listener.connections() == 0

    show = run_python("-m", "trackcfg", "show", cwd=project, env=env)
    (line,) = [x for x in show.stdout.splitlines() if x.startswith("server.offline ")]
    assert line.split()[1:] == ["always", "mlflow.yml:3"]

    refused = run_python(
        "-m", "trackcfg", "check", cwd=project, env={**env, "TRACKCFG_TRACKING__RUN__ID": "abc"}
    )
    assert refused.returncode == 1
    assert "[FAIL] run: run 'abc' (tracking.run.id) lives on tracking server" in refused.stdout


# ---------------------------------------------------------------------------------------------
# Kedro


try:  # the fixtures of test_kedro.py (a generated Kedro project, copied per test)
    from test_kedro import in_process, kedro_template, run_in_process  # noqa: F401
    from test_kedro import project as kedro_project  # noqa: F401
except pytest.skip.Exception:  # Kedro is not installed: only the test below is skipped
    pass


@pytest.mark.usefixtures("in_process")
def test_kedro_run_with_offline_always_logs_into_the_projects_mlruns(
    kedro_project: Path, listener: Listener
) -> None:
    uri = f"http://127.0.0.1:{listener.port}"
    write(
        kedro_project / "conf" / "base" / "mlflow.yml",
        textwrap.dedent(f"""\
        server:
          mlflow_tracking_uri: {uri}
          offline: always
        """),
    )
    run_in_process(kedro_project, pipeline_names=["plain"])
    (run,) = read_runs(store_uri(kedro_project))
    assert run.info.status == "FINISHED"
    assert run.data.tags[OFFLINE_DESTINATION_TAG] == uri
    assert listener.connections() == 0


# ---------------------------------------------------------------------------------------------
# The offline reminder.


@pytest.mark.parametrize("mode", ["always", "auto"])
def test_an_offline_run_ends_with_one_line_naming_trackcfg_sync(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: str, refused_port: int
) -> None:
    """``always``, and ``auto`` falling back (nothing listens on the port): the last thing
    said is where the run is and the command that sends it."""
    caplog.set_level(logging.WARNING)
    port = refused_port
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
# Offline runs (server.offline): where the session logs, what it refuses, what it gives back.
# The quick reachability check of `auto` is the real backend's (it asks a real server); here
# the server's silence is a TrackingUnavailableError from the fake, at its opening or at the
# first request.  test_offline_session.py proves the same on real stores and sockets.

OFFLINE_TAG = "trackcfg.offline.destination"


def offline_store(fake_project: FakeProject) -> str:
    return f"sqlite:///{fake_project.root / 'mlruns' / 'mlflow.db'}"


def tried(fake_store: FakeStore) -> list[object]:
    """The URIs backends were opened on, or tried (an opening that failed included)."""
    return [call.args[0] for call in fake_store.called("open")]


def test_offline_always_opens_only_the_offline_store_and_tags_the_runs(
    fake_project: FakeProject, fake_store: FakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    config = fake_project.config({"server.offline": "always"})
    session = open_session(config, fake_store, params={"lr": 0.1})
    assert session.tracking_uri == offline_store(fake_project)  # known before the session starts
    during: dict[str, str | None] = {}
    with session as s, s.child("fold") as child:
        during.update({name: os.environ.get(name) for name in HTTP_SETTINGS})
        child.log_metrics({"loss": 0.5})
        env = s.child_env()
    assert fake_store.opened == [(offline_store(fake_project), None)]
    assert during == dict.fromkeys(HTTP_SETTINGS)  # a local store: no HTTP budget
    parent, fold = fake_store.runs[session.run_id or ""], fake_store.runs[child.run_id or ""]
    assert parent.tags[OFFLINE_TAG] == fold.tags[OFFLINE_TAG] == FAKE_URI
    assert parent.params == {"lr": "0.1"}
    assert fold.parent_id == parent.id
    assert parent.status is fold.status is RunStatus.FINISHED
    assert env["TRACKCFG_OFFLINE_DESTINATION"] == FAKE_URI
    assert env["MLFLOW_TRACKING_URI"] == offline_store(fake_project)
    assert session.offline_destination == FAKE_URI
    assert f"offline in {fake_project.root / 'mlruns'} for {FAKE_URI}" in repr(session)
    # Chosen, so not a warning at the start; at the end, where the run waits (once: not for
    # the child run).
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"run {session.run_id} of session 'train' is in the offline store "
        f"{fake_project.root / 'mlruns'}, not yet on {FAKE_URI}; send it there with: "
        f"trackcfg sync {fake_project.root}"
    ]


@pytest.mark.parametrize("where", ["open", "get_experiment"])
def test_offline_auto_falls_back_when_the_server_does_not_answer_and_gives_back_its_settings(
    fake_project: FakeProject, fake_store: FakeStore, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    config = fake_project.config({"server.offline": "auto"})
    fake_store.fail(where, TrackingUnavailableError("tracking server refused the connection"))
    during: dict[str, str | None] = {}
    with open_session(config, fake_store) as s:
        during.update({name: os.environ.get(name) for name in HTTP_SETTINGS})
        s.log_metrics({"loss": 0.5}, step=1)
    assert tried(fake_store) == [FAKE_URI, offline_store(fake_project)]
    if where == "get_experiment":  # the destination's backend was opened, then given back
        assert fake_store.backends[0].closed
    assert during == dict.fromkeys(HTTP_SETTINGS)  # the destination's budget was taken back
    assert not any(name in os.environ for name in HTTP_SETTINGS)
    run = fake_store.runs[s.run_id or ""]
    assert run.tags[OFFLINE_TAG] == FAKE_URI
    assert run.status is RunStatus.FINISHED
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2  # falling back, at the start; where the run waits, at the end
    assert FAKE_URI in warnings[0]
    assert "server.offline: auto" in warnings[0]
    assert f"trackcfg sync {fake_project.root}" in warnings[0]
    assert warnings[1].endswith(
        f"not yet on {FAKE_URI}; send it there with: trackcfg sync {fake_project.root}"
    )


def test_offline_experiment_keeps_its_artifacts_in_the_offline_store(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    config = fake_project.config(
        {
            "server.offline": "always",
            "tracking.experiment.create_experiment_kwargs.artifact_location": "s3://team/x",
        }
    )
    with open_session(config, fake_store):
        pass
    (call,) = fake_store.called("create_experiment")
    assert call.args[1] == (fake_project.root / "mlruns" / "artifacts").as_uri()


def test_offline_auto_under_kedro_names_kedro_trackcfg_sync(
    fake_project: FakeProject, fake_store: FakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    config = fake_project.config({"server.offline": "auto"})
    fake_store.fail("get_experiment", TrackingUnavailableError("tracking server refused"))
    with open_session(config, fake_store, kedro_context=object()):
        pass
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2  # the start's, and the end's reminder
    assert all(f"kedro trackcfg sync (in {fake_project.root})" in warning for warning in warnings)


@pytest.mark.parametrize(
    "error",
    [
        CredentialsError("tracking server refused the credentials (HTTP 401)"),
        ExperimentError("experiment 'x' is deleted"),
    ],
)
def test_offline_auto_does_not_fall_back_on_other_errors(
    fake_project: FakeProject, fake_store: FakeStore, error: Exception
) -> None:
    config = fake_project.config({"server.offline": "auto"})
    fake_store.fail("get_experiment", error)
    with pytest.raises(type(error)), open_session(config, fake_store):
        pass
    assert [uri for uri, _ in fake_store.opened] == [FAKE_URI]
    assert fake_store.runs == {}


def test_offline_never_is_todays_behaviour(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    fake_store.fail("get_experiment", TrackingUnavailableError("tracking server refused"))
    with pytest.raises(TrackingUnavailableError), open_session(fake_project.config(), fake_store):
        pass
    assert [uri for uri, _ in fake_store.opened] == [FAKE_URI]
    assert not (fake_project.root / "mlruns").exists()


@pytest.mark.parametrize("mode", ["always", "auto"])
@pytest.mark.parametrize("source", ["tracking.run.id", "MLFLOW_RUN_ID"])
def test_offline_resume_is_refused_before_anything_is_created(
    fake_project: FakeProject,
    fake_store: FakeStore,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    source: str,
) -> None:
    overrides: dict[str, Any] = {"server.offline": mode}
    if source == "tracking.run.id":
        overrides["tracking.run.id"] = "abc123"
    else:
        monkeypatch.setenv("MLFLOW_RUN_ID", "abc123")
    if mode == "auto":
        fake_store.fail("open", TrackingUnavailableError("tracking server refused the connection"))
    with (
        pytest.raises(RunError) as caught,
        open_session(fake_project.config(overrides), fake_store),
    ):
        pass
    message = str(caught.value)
    assert "'abc123'" in message
    assert source in message
    assert FAKE_URI in message
    assert f"server.offline: {mode}" in message or "did not answer" in message
    fix = "set server.offline: auto or never" if mode == "always" else "start the server"
    assert fix in message
    assert tried(fake_store) == ([] if mode == "always" else [FAKE_URI])
    assert fake_store.runs == {}
    assert fake_store.experiments == {}
    assert not (fake_project.root / "mlruns").exists()


def test_offline_worker_of_an_offline_parent_logs_beside_it_whatever_its_mode(
    fake_project: FakeProject, fake_store: FakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_session(fake_project.config({"server.offline": "always"}), fake_store) as parent:
        env = parent.child_env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for mode in ("never", "auto"):
        with open_session(fake_project.config({"server.offline": mode}), fake_store, "worker") as w:
            pass
        run = fake_store.runs[w.run_id or ""]
        assert run.parent_id == parent.run_id
        assert run.tags[OFFLINE_TAG] == FAKE_URI
    assert {uri for uri, _ in fake_store.opened} == {offline_store(fake_project)}


def test_offline_worker_of_an_online_parent_is_refused_offline(
    fake_project: FakeProject, fake_store: FakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRACKCFG_PARENT_RUN_ID", "serverrun")
    config = fake_project.config({"server.offline": "always"})
    refused = pytest.raises(RunError, match="TRACKCFG_PARENT_RUN_ID='serverrun'")
    with refused, open_session(config, fake_store, "worker"):
        pass
    assert fake_store.opened == []


def test_offline_has_nothing_to_do_for_a_local_destination(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    config = fake_project.config({"server.offline": "always", "server.mlflow_tracking_uri": "runs"})
    with open_session(config, fake_store) as s:
        pass
    assert fake_store.opened == [(f"sqlite:///{fake_project.root / 'runs' / 'mlflow.db'}", None)]
    assert OFFLINE_TAG not in fake_store.runs[s.run_id or ""].tags
    assert s.offline_destination is None


def test_offline_decision_rule() -> None:
    from trackcfg._config import OfflineMode
    from trackcfg._rules import Offline, offline_decision

    def decide(mode: OfflineMode, local: bool = False, inherited: str | None = None) -> Offline:
        return offline_decision(mode, destination_is_local=local, inherited_destination=inherited)

    assert decide(OfflineMode.NEVER) is Offline.NO
    assert decide(OfflineMode.AUTO) is Offline.TRY
    assert decide(OfflineMode.ALWAYS) is Offline.YES
    assert decide(OfflineMode.ALWAYS, local=True) is Offline.NO
    assert decide(OfflineMode.NEVER, inherited="http://h") is Offline.YES


# ---------------------------------------------------------------------------------------------
# Which store: the factory answers whether the server answers (no branch on the backend kind).


def test_auto_logs_offline_when_the_factory_finds_the_server_silent(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    fake_store.silent = "nothing listens"
    config = fake_project.config({"server.offline": "auto"})
    with open_session(config, fake_store) as session:
        session.log_params({"lr": 0.1})
    offline_uri = f"sqlite:///{fake_project.root.resolve()}/mlruns/mlflow.db"
    assert session.tracking_uri == offline_uri
    assert session.offline_destination == FAKE_URI
    assert session.registry_uri is None  # the offline store is the registry too
    assert [uri for uri, _ in fake_store.opened] == [offline_uri]  # the server is never opened
    (run,) = fake_store.runs.values()
    assert run.status is RunStatus.FINISHED
    assert run.params == {"lr": "0.1"}
    assert run.tags["trackcfg.offline.destination"] == FAKE_URI


def test_auto_uses_the_server_when_the_factory_finds_it_answering(
    fake_project: FakeProject, fake_store: FakeStore
) -> None:
    config = fake_project.config({"server.offline": "auto"})
    with open_session(config, fake_store) as session:
        pass
    assert session.tracking_uri == FAKE_URI
    assert session.offline_destination is None
    assert [uri for uri, _ in fake_store.opened] == [FAKE_URI]
    assert [c.args for c in fake_store.calls if c.method == "silence"] == [(FAKE_URI,)]
