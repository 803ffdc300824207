"""Hostile input and unlucky setups at the session's door (issues 16.3, 16.7-16.10, 17.6):
metric keys that would merge, stale run ids in the environment, self-referencing arguments,
artifact paths and steps MLflow refuses, servers that refuse credentials or connections, and
passwords inside tracking URIs.  Real stores only: a SQLite store in a temporary project, the
session-wide ``mlflow server``, and small real servers on 127.0.0.1 (a port nobody listens
on, a server answering 401/403 to every request, one that never answers, one that speaks
plain HTTP on an https URI).  Each test asserts what a user sees: the store's contents, the
exact error, how long it took."""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import logging
import socket
import textwrap
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from helpers import project_folder, read_runs, run_python, store_uri
from mlflow import MlflowClient

from trackcfg import (
    ConfigError,
    RunError,
    TrackingConfig,
    TrackingSession,
    load_config,
    tracked,
)
from trackcfg.exceptions import ExperimentError, TrackingUnavailableError

PROJECT = "hostile"
SECRET = "s3cr3t-Pa55"
STALE_RUN = "0123456789abcdef0123456789abcdef"


@dataclasses.dataclass(frozen=True)
class Project:
    root: Path

    @property
    def store(self) -> str:
        return store_uri(self.root)

    def config(self, yaml: str = "", overrides: Mapping[str, Any] | None = None) -> TrackingConfig:
        file = self.root / "mlflow.yml"
        file.write_text(textwrap.dedent(yaml), encoding="utf-8")
        return load_config(file, overrides=overrides)


@pytest.fixture
def project(tmp_path: Path, migrated_sqlite_db: Path) -> Project:
    """A project whose SQLite store exists (only the Default experiment in it)."""
    return Project(project_folder(tmp_path / "proj", name=PROJECT, store=migrated_sqlite_db))


def experiment_names(store: str) -> set[str]:
    return {e.name for e in MlflowClient(tracking_uri=store).search_experiments()}


def printed(error: BaseException) -> str:
    """What Python prints for ``error`` when nobody catches it: the traceback, with every
    exception chained to it that is shown."""
    return "".join(traceback.format_exception(error))


# ---------------------------------------------------------------------------------------------
# 16.3: metric keys are never merged in silence.


def test_metric_keys_that_become_one_series_are_refused_naming_both(project: Project) -> None:
    with TrackingSession(project.config(), name="m") as s:
        with pytest.raises(ConfigError) as raised:
            s.log_metrics({"a b!": 1, "a b?": 2})
        s.log_metrics({"ok": 3})

    message = str(raised.value)
    assert message.endswith(
        "metrics 'a b!' and 'a b?' both become the metric key 'a b_' (one series); "
        "rename one of them"
    )
    run = MlflowClient(tracking_uri=project.store).get_run(s.run_id or "")
    assert run.data.metrics == {"ok": 3.0}  # nothing of the refused call was sent
    assert run.info.status == "FINISHED"


def test_a_renamed_metric_key_warns_once_and_a_later_key_joining_its_series_is_refused(
    project: Project, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trackcfg")
    with TrackingSession(project.config(), name="m") as s:
        for step in range(3):
            s.log_metrics({"a b!": float(step)}, step=step)
        with pytest.raises(ConfigError, match=r"'a b\?' becomes the metric key 'a b_'.*'a b!'"):
            s.log_metrics({"a b?": 9.0}, step=3)

    renames = [r for r in caplog.records if "not accepted by MLflow" in r.getMessage()]
    assert [r.getMessage() for r in renames] == [
        "metric key 'a b!' is not accepted by MLflow; logged as 'a b_'"
    ]
    history = MlflowClient(tracking_uri=project.store).get_metric_history(s.run_id or "", "a b_")
    assert sorted((m.step, m.value) for m in history) == [(0, 0.0), (1, 1.0), (2, 2.0)]


# ---------------------------------------------------------------------------------------------
# 16.7: a stale MLFLOW_RUN_ID / TRACKCFG_PARENT_RUN_ID: RunError naming it, nothing created.


@pytest.mark.parametrize(
    ("variable", "nested", "role"),
    [
        ("MLFLOW_RUN_ID", True, "the parent of the session's run"),
        ("MLFLOW_RUN_ID", False, "the run the session logs into (tracking.run.nested: false)"),
        ("TRACKCFG_PARENT_RUN_ID", True, "the parent of the session's run"),
        ("TRACKCFG_PARENT_RUN_ID", False, "the parent of the session's run"),
    ],
)
def test_a_stale_run_id_in_the_environment_is_refused_naming_it_and_creates_nothing(
    project: Project, monkeypatch: pytest.MonkeyPatch, variable: str, nested: bool, role: str
) -> None:
    monkeypatch.setenv(variable, STALE_RUN)
    config = project.config(
        "tracking:\n  experiment: {name: fresh}\n", {"tracking.run.nested": nested}
    )
    before = experiment_names(project.store)

    with pytest.raises(RunError) as raised, TrackingSession(config, name="worker"):
        pytest.fail("the block must not run")

    message = str(raised.value)
    assert message.startswith(f"{variable}='{STALE_RUN}' names {role}, but that run does not")
    assert f"unset {variable}" in message
    assert project.store in message  # which store was looked in
    assert read_runs(project.store) == []
    assert experiment_names(project.store) == before  # not even the experiment


def test_a_stale_parent_run_id_over_http_is_refused_and_creates_nothing(
    mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    experiment = f"stale-parent-{time.monotonic_ns()}"
    config = Project(project_folder(tmp_path / "p", name=PROJECT)).config(
        f"server: {{mlflow_tracking_uri: '{mlflow_server}'}}\n"
        f"tracking: {{experiment: {{name: {experiment}}}}}\n"
    )
    monkeypatch.setenv("TRACKCFG_PARENT_RUN_ID", STALE_RUN)

    session = TrackingSession(config, name="worker")
    with pytest.raises(RunError, match="TRACKCFG_PARENT_RUN_ID") as raised, session:
        pytest.fail("the block must not run")

    assert mlflow_server in str(raised.value)
    assert MlflowClient(tracking_uri=mlflow_server).get_experiment_by_name(experiment) is None


# ---------------------------------------------------------------------------------------------
# 16.8: a self-referencing argument is logged as Python prints it; the function runs.


def _cyclic() -> dict[str, Any]:
    looped: dict[str, Any] = {"depth": 4}
    looped["self"] = looped
    return looped


@pytest.mark.parametrize("flatten", [False, True])
def test_tracked_function_with_a_self_referencing_dict_runs_and_logs_it(
    project: Project, caplog: pytest.LogCaptureFixture, flatten: bool
) -> None:
    caplog.set_level(logging.WARNING, logger="trackcfg")
    config = project.config(f"tracking:\n  params:\n    dict_params: {{flatten: {flatten}}}\n")
    calls: list[int] = []

    @tracked(config=config)
    def train(model: dict[str, Any], lr: float = 0.1) -> str:
        calls.append(1)
        return "done"

    assert train(_cyclic()) == "done"

    assert calls == [1]
    (run,) = read_runs(project.store)
    assert run.info.status == "FINISHED"
    if flatten:
        assert run.data.params == {"model.depth": "4", "model.self": "{...}", "lr": "0.1"}
    else:
        assert run.data.params == {"model": str(_cyclic()), "lr": "0.1"}
        assert run.data.params["model"] == "{'depth': 4, 'self': {...}}"
    assert "contains itself" in caplog.text


def test_flattened_session_params_with_a_cycle_log_it_as_python_prints_it(
    project: Project, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trackcfg")
    inner: dict[str, Any] = {"lr": 0.1}
    outer: dict[str, Any] = {"opt": inner, "name": "m"}
    inner["back"] = outer
    config = project.config("tracking:\n  params:\n    dict_params: {flatten: true}\n")

    with TrackingSession(config, name="s", params={"model": outer}) as s:
        pass

    params = MlflowClient(tracking_uri=project.store).get_run(s.run_id or "").data.params
    assert params == {"model.opt.lr": "0.1", "model.opt.back": "{...}", "model.name": "m"}
    assert "param ['model']['opt']['back'] is ['model'] again" in caplog.text


def test_flatten_of_a_deeply_nested_mapping_raises_a_config_error_not_recursion(
    project: Project,
) -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(5000):
        node["k"] = {}
        node = node["k"]
    node["leaf"] = 1
    config = project.config("tracking:\n  params:\n    dict_params: {flatten: true}\n")

    session = TrackingSession(config, name="s", params={"deep": deep})
    with pytest.raises(ConfigError, match="MLflow accepts at most 250"), session:
        pass
    assert read_runs(project.store) == []


# ---------------------------------------------------------------------------------------------
# 16.9: artifact paths and steps MLflow refuses: a RunError at the call, nothing written.


@pytest.mark.parametrize(
    ("call", "path", "problem"),
    [
        ("log_text", "../escape.txt", "goes out of the run's artifact folder"),
        ("log_text", "{abs}/escape.txt", "is absolute"),
        ("log_dict", "../escape.json", "goes out of the run's artifact folder"),
        ("log_dict", "a/./b.json", "is not in normal form"),
        ("log_artifact", "../up", "goes out of the run's artifact folder"),
        ("log_artifact", "{abs}", "is absolute"),
    ],
)
def test_an_artifact_path_outside_the_run_is_refused_at_the_call(
    project: Project, tmp_path: Path, call: str, path: str, problem: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    path = path.replace("{abs}", str(outside))
    source = tmp_path / "escape.txt"
    source.write_text("x")

    with TrackingSession(project.config(), name="a") as s:
        calls: dict[str, Callable[[], None]] = {
            "log_text": lambda: s.log_text("x", path),
            "log_dict": lambda: s.log_dict({"x": 1}, path),
            "log_artifact": lambda: s.log_artifact(source, path),
        }
        with pytest.raises(RunError) as raised:
            calls[call]()
        s.log_text("kept", "ok.txt")

    argument = "artifact_path" if call == "log_artifact" else "artifact_file"
    assert str(raised.value).startswith(f"{call}: {argument} {path!r} {problem}")
    assert "relative path such as" in str(raised.value)
    assert list(outside.iterdir()) == []
    artifacts = MlflowClient(tracking_uri=project.store).list_artifacts(s.run_id or "")
    assert [a.path for a in artifacts] == ["ok.txt"]
    leaked = [p for p in (project.root / "mlruns").rglob("escape*") if p.is_file()]
    assert leaked == []


@pytest.mark.parametrize(
    ("step", "problem"),
    [
        (1.5, "step 1.5 (float) is not an integer"),
        ("3", "step '3' (str) is not an integer"),
        (True, "step True (bool) is not an integer"),
        (2**63, f"step {2**63} is outside the steps MLflow stores"),
        (-(2**63) - 1, f"step {-(2**63) - 1} is outside the steps MLflow stores"),
    ],
)
def test_a_step_mlflow_cannot_store_is_refused_at_the_call(
    project: Project, step: Any, problem: str
) -> None:
    with TrackingSession(project.config(), name="st") as s:
        with pytest.raises(RunError) as raised:
            s.log_metrics({"loss": 1.0}, step=step)
        s.log_metrics({"loss": 0.5}, step=2**63 - 1)
        s.log_metric("loss", 0.25, step=-(2**63))

    assert str(raised.value).startswith(f"log_metrics: {problem}")
    history = MlflowClient(tracking_uri=project.store).get_metric_history(s.run_id or "", "loss")
    assert sorted((m.step, m.value) for m in history) == [(-(2**63), 0.25), (2**63 - 1, 0.5)]


class _Refusing(http.server.BaseHTTPRequestHandler):
    """Answers every request with the status of its server (401 as MLflow's basic-auth app
    does, with a challenge, or 403), counting them."""

    def _refuse(self) -> None:
        server: Any = self.server
        server.seen += 1
        body = b"You are not authenticated." if server.status == 401 else b"Permission denied"
        self.send_response(server.status)
        if server.status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _refuse

    def log_message(self, format: str, *args: Any) -> None:  # no noise on stderr
        pass


@contextlib.contextmanager
def refusing_server(status: int) -> Iterator[Any]:
    server: Any = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    server.status, server.seen = status, 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize("status", [401, 403])
def test_credentials_refused_by_the_server_are_a_run_error_naming_the_setting(
    tmp_path: Path, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with refusing_server(status) as server:
        port = server.server_address[1]
        uri = f"http://alice:{SECRET}@127.0.0.1:{port}"
        config = Project(project_folder(tmp_path / "p", name=PROJECT)).config(
            f"server: {{mlflow_tracking_uri: '{uri}', request_timeout: 5, max_retries: 2}}\n"
        )
        started = time.monotonic()
        with pytest.raises(RunError) as raised, TrackingSession(config, name="r"):
            pytest.fail("the block must not run")
        elapsed = time.monotonic() - started
        seen = server.seen

    message = str(raised.value)
    shown = f"http://alice:***@127.0.0.1:{port}"
    if status == 401:
        assert message.startswith(f"credentials rejected by {shown} (HTTP 401")
    else:
        assert message.startswith(f"credentials refused by {shown} for this request (HTTP 403")
    assert "check server.credentials" in message
    assert seen == 1  # not retried: the answer will not change
    assert elapsed < 10
    assert SECRET not in printed(raised.value) + caplog.text


# ---------------------------------------------------------------------------------------------
# 16.10: a password inside the tracking URI never appears.


@pytest.mark.parametrize(
    "uri",
    [
        f"http://user:{SECRET}@127.0.0.1:9",
        f"postgresql+psycopg2://u:{SECRET}@db.example:5432/mlflow",
    ],
)
def test_the_password_in_a_uri_is_masked_in_the_config_repr(tmp_path: Path, uri: str) -> None:
    config = Project(project_folder(tmp_path / "p", name=PROJECT)).config(
        f"server:\n  mlflow_tracking_uri: '{uri}'\n  mlflow_registry_uri: '{uri}'\n"
    )
    assert config.server.mlflow_tracking_uri == uri  # the value itself is untouched
    for text in (repr(config), str(config), repr(config.server), str(config.server)):
        assert SECRET not in text
        assert text.count(":***@") == 2


@pytest.fixture
def refused_port() -> int:
    """A port nobody listens on (the kernel refuses connections to it at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_the_password_in_a_uri_is_masked_when_the_server_is_unreachable(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    kind: str,
) -> None:
    """Refused: reported by the first connect; silent: after MLflow's retries (its retry
    warnings and its exception, which holds the URI, are in play)."""
    caplog.set_level(logging.DEBUG)
    port = (
        request.getfixturevalue("refused_port")
        if kind == "refused"
        else int(request.getfixturevalue("silent_uri").rpartition(":")[2])
    )
    uri = f"http://user:{SECRET}@127.0.0.1:{port}"
    config = Project(project_folder(tmp_path / "p", name=PROJECT)).config(
        f"server: {{mlflow_tracking_uri: '{uri}', request_timeout: 1, max_retries: 1}}\n"
    )
    with pytest.raises(TrackingUnavailableError) as raised, TrackingSession(config):
        pytest.fail("the block must not run")

    assert f"http://user:***@127.0.0.1:{port}" in str(raised.value)
    out = capsys.readouterr()
    assert SECRET not in printed(raised.value) + caplog.text + out.out + out.err


def test_the_password_in_a_uri_is_masked_when_the_experiment_is_refused(
    mlflow_server: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The test server ignores credentials: the URI reaches it and the experiment is refused."""
    caplog.set_level(logging.DEBUG)
    uri = mlflow_server.replace("http://", f"http://user:{SECRET}@")
    config = Project(project_folder(tmp_path / "p", name=PROJECT)).config(
        f"server: {{mlflow_tracking_uri: '{uri}'}}\n"
        f"tracking: {{experiment: {{name: absent-{time.monotonic_ns()}, create: false}}}}\n"
    )
    with pytest.raises(ExperimentError) as raised, TrackingSession(config):
        pytest.fail("the block must not run")

    assert mlflow_server.replace("http://", "http://user:***@") in str(raised.value)
    out = capsys.readouterr()
    assert SECRET not in printed(raised.value) + caplog.text + out.out + out.err


def test_the_run_link_printed_for_a_server_run_carries_no_credentials(
    mlflow_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = mlflow_server.replace("http://", f"http://user:{SECRET}@")
    config = Project(project_folder(tmp_path / "p", name=PROJECT)).config(
        f"server: {{mlflow_tracking_uri: '{uri}'}}\n"
    )
    with TrackingSession(config, name="linked") as s:
        s.log_metrics({"loss": 1.0})

    out = capsys.readouterr().out
    assert f"{mlflow_server}/#/experiments/{s.experiment_id}/runs/{s.run_id}" in out
    assert SECRET not in out


# ---------------------------------------------------------------------------------------------
# 17.6: an unreachable server: the cause in one line, a refused connection at once.


def _unreachable(tmp_path: Path, uri: str, timeout: int = 10, retries: int = 3) -> TrackingConfig:
    return Project(project_folder(tmp_path / "p", name=PROJECT)).config(
        f"server: {{mlflow_tracking_uri: '{uri}', request_timeout: {timeout}, "
        f"max_retries: {retries}}}\n"
    )


def test_a_refused_connection_at_session_start_is_reported_at_once_with_its_cause(
    tmp_path: Path, refused_port: int
) -> None:
    """With the default budget (3 retries of 10 s), which used to take 10-35 s."""
    config = _unreachable(tmp_path, f"http://127.0.0.1:{refused_port}")
    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError) as raised, TrackingSession(config):
        pytest.fail("the block must not run")
    elapsed = time.monotonic() - started

    assert str(raised.value) == (
        f"tracking server http://127.0.0.1:{refused_port} refused the connection (nothing "
        f"listens on 127.0.0.1:{refused_port}); start the server, or fix the host and port in "
        "server.mlflow_tracking_uri"
    )
    assert elapsed < 3  # about a second on a loaded machine; the watchdog is generous
    assert isinstance(raised.value.__cause__, ConnectionRefusedError)
    assert len(printed(raised.value).splitlines()) < 40
    assert not (tmp_path / "p" / "mlruns").exists()


def test_a_host_name_that_does_not_resolve_is_named(tmp_path: Path) -> None:
    config = _unreachable(tmp_path, "http://no-such-host.invalid:5000")
    with pytest.raises(TrackingUnavailableError) as raised, TrackingSession(config):
        pytest.fail("the block must not run")

    assert str(raised.value).startswith(
        "the host name 'no-such-host.invalid' of tracking server "
        "http://no-such-host.invalid:5000 could not be resolved; fix the host"
    )


@pytest.fixture
def silent_uri() -> Iterator[str]:
    """A server that accepts connections (the kernel does) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_a_server_that_never_answers_is_reported_as_timed_out_after_the_budget(
    tmp_path: Path, silent_uri: str
) -> None:
    config = _unreachable(tmp_path, silent_uri, timeout=1, retries=0)
    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError) as raised, TrackingSession(config):
        pytest.fail("the block must not run")

    assert time.monotonic() - started >= 1  # the configured timeout was waited for
    assert str(raised.value) == (
        f"tracking server {silent_uri} did not answer in time (timed out), through the "
        "session's budget of 0 retries of 1 s; check that it is running and not overloaded, "
        "or raise server.request_timeout / server.max_retries"
    )


@pytest.fixture
def plain_http_port() -> Iterator[int]:
    """A plain-HTTP server (it answers a TLS hello with an HTTP error page)."""
    with refusing_server(401) as server:
        yield server.server_address[1]


def test_https_to_a_plain_http_server_names_the_tls_handshake(
    tmp_path: Path, plain_http_port: int
) -> None:
    uri = f"https://127.0.0.1:{plain_http_port}"
    config = _unreachable(tmp_path, uri, timeout=2, retries=0)
    with pytest.raises(TrackingUnavailableError) as raised, TrackingSession(config):
        pytest.fail("the block must not run")

    assert str(raised.value).startswith(f"the TLS handshake with tracking server {uri} failed (")
    assert "check the scheme (http or https) of server.mlflow_tracking_uri" in str(raised.value)


SCRIPT = """
import sys
from trackcfg import TrackingSession, load_config
with TrackingSession(load_config(sys.argv[1]), name="script"):
    pass
"""


def test_a_script_on_a_refused_server_ends_with_a_short_traceback_and_the_cause(
    tmp_path: Path, refused_port: int
) -> None:
    uri = f"http://user:{SECRET}@127.0.0.1:{refused_port}"
    _unreachable(tmp_path, uri)
    done = run_python("-c", SCRIPT, str(tmp_path / "p" / "mlflow.yml"), timeout=120)

    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == (
        f"trackcfg.exceptions.TrackingUnavailableError: tracking server "
        f"http://user:***@127.0.0.1:{refused_port} refused the connection (nothing listens on "
        f"127.0.0.1:{refused_port}); start the server, or fix the host and port in "
        "server.mlflow_tracking_uri"
    )
    assert len(lines) < 40  # was 121 lines of MLflow's, urllib3's and requests' frames
    assert SECRET not in done.stderr + done.stdout


def test_trackcfg_check_on_a_refused_server_prints_no_traceback(
    tmp_path: Path, refused_port: int
) -> None:
    _unreachable(tmp_path, f"http://127.0.0.1:{refused_port}")
    done = run_python("-m", "trackcfg", "check", str(tmp_path / "p"), "--timeout", "5")

    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    assert "refused" in (done.stderr + done.stdout).lower()
