"""Secrets scan: a distinctive value in ``credentials.yml`` must never come out of trackcfg.

After real sessions (plain, nested, ``@tracked``, over HTTP) and real failures (``ConfigError``,
``RunError``, ``TrackingUnavailableError``), the secret is searched for in everything a user or
a log collector can see: params, tags and artifacts in the store, log records of ``trackcfg``
and ``mlflow`` at DEBUG, reprs and strings of sessions and configs, exception messages (the
whole chain), ``trackcfg show`` / ``check`` output, and the environment after exit.
(The Kedro adapter's scan lives in test_kedro.py.)
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import textwrap
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner
from helpers import project_folder, read_runs
from mlflow import MlflowClient
from mlflow.entities import ViewType

from trackcfg import TrackingSession, load_config, tracked
from trackcfg._cli import cli
from trackcfg.exceptions import (
    ConfigError,
    RunError,
    TrackcfgError,
    TrackingUnavailableError,
)

SECRET = f"tc-SECRET-{secrets.token_hex(12)}"
"""Random per test run: it cannot appear anywhere by accident."""
OTHER_SECRET = f"tc-KEY-{secrets.token_hex(12)}"
CREDENTIAL_NAMES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "SERVICE_API_TOKEN")


def assert_clean(text: str, where: str) -> None:
    for secret in (SECRET, OTHER_SECRET):
        assert secret not in text, f"a credential value leaked into {where}:\n{text}"


def exception_texts(exc: BaseException) -> str:
    """str and repr of the exception and of every exception chained to it."""
    parts, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts += [str(current), repr(current), *map(str, current.args)]
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


@pytest.fixture
def project(tmp_path: Path, migrated_sqlite_db: Path) -> Path:
    """A project with an existing local store and a credentials entry ``vault``; returns its
    ``mlflow.yml``."""
    config = textwrap.dedent(
        """\
        server:
          credentials: vault
          request_timeout: 2
          max_retries: 0
        tracking:
          params:
            dict_params: {flatten: true}
            long_params_strategy: tag
        """
    )
    root = project_folder(
        tmp_path / "proj", name="secret-project", config=config, store=migrated_sqlite_db
    )
    (root / "credentials.yml").write_text(
        textwrap.dedent(
            f"""\
            vault:
              MLFLOW_TRACKING_USERNAME: alice
              MLFLOW_TRACKING_PASSWORD: {SECRET}
              SERVICE_API_TOKEN: {OTHER_SECRET}
            """
        )
    )
    return root / "mlflow.yml"


@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="trackcfg")
    caplog.set_level(logging.DEBUG, logger="mlflow")
    return caplog


def assert_logs_clean(caplog: pytest.LogCaptureFixture) -> None:
    assert caplog.records, "nothing was logged: the scan would prove nothing"
    for record in caplog.records:
        assert_clean(record.getMessage(), f"log record {record.name}:{record.lineno}")
        if record.exc_info and record.exc_info[1] is not None:
            assert_clean(exception_texts(record.exc_info[1]), f"logged exception {record.name}")
    assert_clean(caplog.text, "the formatted log")


def assert_store_clean(tracking_uri: str, downloads: Path, experiment: str | None = None) -> int:
    """Scan every param, tag and artifact of every run in the store (or in ``experiment``);
    return the number of runs scanned."""
    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = [
        e
        for e in client.search_experiments(view_type=ViewType.ALL)
        if experiment is None or e.name == experiment
    ]
    runs = read_runs(client, experiment, deleted=True)
    for found in experiments:
        assert_clean(repr(found.tags), f"experiment {found.name} tags")
    for run in runs:
        run_id = run.info.run_id
        assert_clean(repr(run.data.params), f"params of {run.info.run_name}")
        assert_clean(repr(run.data.tags), f"tags of {run.info.run_name}")
        assert_clean(run.info.run_name or "", "a run name")
        folder = Path(client.download_artifacts(run_id, "", str(downloads / run_id)))
        for file in folder.rglob("*"):
            if file.is_file():
                assert_clean(file.read_bytes().decode("utf-8", "replace"), f"artifact {file}")
    return len(runs)


def refused_uri() -> str:
    """A port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def assert_environ_clean() -> None:
    for name in CREDENTIAL_NAMES:
        assert name not in os.environ
    assert_clean(repr(dict(os.environ)), "os.environ")


def test_sessions_leave_no_credential_value_anywhere(
    project: Path, captured: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    config = load_config(project)
    assert_clean(repr(config), "repr(config)")
    assert_clean(str(config), "str(config)")
    assert_clean(repr(config.credentials), "repr(config.credentials)")
    assert_clean(str(config.credentials), "str(config.credentials)")
    assert_clean(repr(config.provenance()), "config.provenance()")
    long_value = "x" * 9000  # past the tag limit: trackcfg logs it as an artifact

    session = TrackingSession(
        config, name="plain", params={"model": {"depth": 3}, "doc": long_value}
    )
    assert_clean(repr(session), "repr(session) before")
    with session as s:
        assert os.environ["MLFLOW_TRACKING_PASSWORD"] == SECRET  # exported, for the session only
        assert_clean(repr(s), "repr(session) inside")
        assert_clean(repr(s.child_env()), "child_env()")
        s.log_metrics({"loss": 0.5}, step=1)
        s.set_tags({"stage": "dev"})
        s.log_dict({"layers": [1, 2]}, "model.json")
        with s.child("trial", params={"k": 1}) as c:
            c.log_metrics({"score": 0.9})
            assert_clean(repr(c), "repr(child)")
    assert_clean(repr(s), "repr(session) after")
    assert_environ_clean()

    @tracked(config=config)
    def train(lr: float, layers: list[int], doc: str = long_value) -> float:
        assert os.environ["SERVICE_API_TOKEN"] == OTHER_SECRET
        mlflow.log_metric("inner", 1.0)
        return lr * len(layers)

    assert train(0.1, [4, 4]) == pytest.approx(0.2)
    assert_environ_clean()

    assert assert_store_clean(s.tracking_uri, tmp_path / "downloads") == 3
    client = MlflowClient(tracking_uri=s.tracking_uri)
    artifacts = [f.path for f in client.list_artifacts(s.run_id or "")]
    assert any(path != "model.json" for path in artifacts), "no artifact by trackcfg to scan"
    assert_logs_clean(captured)


def test_failing_sessions_leave_no_credential_value_in_errors_or_logs(
    project: Path, captured: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    failures: list[TrackcfgError] = []

    # A RunError while the credentials are exported: resuming a run that does not exist.
    config = load_config(project, overrides={"tracking.run.id": "0" * 32})
    with pytest.raises(RunError) as run_error, TrackingSession(config, name="resume"):
        pytest.fail("the block must not run")
    failures.append(run_error.value)

    # A RunError from inside the block: a param logged again with another value.
    with TrackingSession(load_config(project), params={"lr": 0.1}) as s:
        with pytest.raises(RunError) as immutable:
            s.log_params({"lr": 0.2})
        failures.append(immutable.value)

    # The server does not answer: the credentials went into the Authorization header.
    config = load_config(project, overrides={"server.mlflow_tracking_uri": refused_uri()})
    with pytest.raises(TrackingUnavailableError) as unavailable, TrackingSession(config):
        pytest.fail("the block must not run")
    failures.append(unavailable.value)

    # ConfigErrors about the credentials entry itself.
    credentials = project.parent / "credentials.yml"
    credentials.write_text(f"vault:\n  TOKEN: [{SECRET}, {OTHER_SECRET}]\n")
    with pytest.raises(ConfigError) as nested_value:
        load_config(project)
    failures.append(nested_value.value)
    credentials.write_text(f"vault:\n  TOKEN: {SECRET}\n  : {OTHER_SECRET}: [\n")
    with pytest.raises(ConfigError) as broken_yaml:
        load_config(project)
    failures.append(broken_yaml.value)
    credentials.write_text(f"vault: {SECRET}\n")
    with pytest.raises(ConfigError) as not_a_mapping:
        load_config(project)
    failures.append(not_a_mapping.value)

    for error in failures:
        assert_clean(exception_texts(error), f"{type(error).__name__}: {error}")
    assert_environ_clean()
    assert_store_clean(f"sqlite:///{project.parent / 'mlruns' / 'mlflow.db'}", tmp_path / "dl")
    assert_logs_clean(captured)


def test_session_over_http_sends_but_never_shows_the_password(
    project: Path, pg_mlflow_server: str, captured: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """On the PostgreSQL-backed server of test_many_processes.py (one server start less)."""
    mlflow_server = pg_mlflow_server
    config = load_config(
        project,
        overrides={
            "server.mlflow_tracking_uri": mlflow_server,
            "tracking.experiment.name": "secrets-over-http",
        },
    )
    with TrackingSession(config, name="remote", params={"lr": 0.1}) as s:
        s.log_metrics({"loss": 0.5})
        s.log_text("notes", "notes.txt")
        assert_clean(repr(s), "repr(session)")
    assert MlflowClient(tracking_uri=mlflow_server).get_run(s.run_id or "").info.status == (
        "FINISHED"
    )
    assert_environ_clean()
    assert assert_store_clean(mlflow_server, tmp_path / "downloads", "secrets-over-http") == 1
    assert_logs_clean(captured)


@pytest.mark.parametrize("args", [["show"], ["show", "--json"], ["check"]])
def test_cli_shows_credential_names_never_values(project: Path, args: list[str]) -> None:
    result = CliRunner().invoke(cli, [*args, str(project)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "MLFLOW_TRACKING_PASSWORD" in result.output
    assert_clean(result.output, f"trackcfg {' '.join(args)}")
    assert_environ_clean()
