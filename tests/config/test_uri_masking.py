"""What a URI may hold that is secret never leaves trackcfg (``mask_uri``), and which URIs name
the same store (``same_store``): pure functions, then the CLI as a user runs it."""

from __future__ import annotations

import json
import logging
import socket
import time
import traceback
from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from helpers import PROJECT_NAME, Project, project_folder
from hypothesis import given
from hypothesis import strategies as st

from trackcfg import (
    TrackingSession,
)
from trackcfg._cli import cli
from trackcfg._store import mask_text, mask_uri, same_store, store_identity, store_refusal
from trackcfg.exceptions import ExperimentError, TrackingUnavailableError

MARK = "Zq7"
"""Every generated secret starts with it: nothing else in a generated URI holds it."""

secret_values = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20
).map(lambda s: MARK + s)
hosts = st.sampled_from(["127.0.0.1", "localhost", "db.example.com", "[::1]", "mlflow.internal"])
ports = st.one_of(st.none(), st.integers(1, 65535))
schemes = st.sampled_from(["http", "https", "postgresql", "postgresql+psycopg2", "mysql", "mssql"])
secret_names = st.tuples(
    st.sampled_from(["", "x-", "X-Amz-", "client_", "sv_"]),
    st.sampled_from(
        [
            "password",
            "passwd",
            "pwd",
            "token",
            "secret",
            "key",
            "sig",
            "Signature",
            "access_token",
            "api_key",
            "API_KEY",
            "Credential",
            "auth",
            "sslkey",
            "Security-Token",
        ]
    ),
    st.sampled_from(["", "_id", "2"]),
).map("".join)
plain_params = st.sampled_from(["sslmode=require", "connect_timeout=10", "application_name=x"])


@st.composite
def secret_uris(draw: st.DrawFn) -> tuple[str, list[str], str]:
    """A URI holding at least one secret in some form; the secrets; its host."""
    scheme, host, port = draw(schemes), draw(hosts), draw(ports)
    secrets: list[str] = []
    userinfo = ""
    form = draw(st.sampled_from(["password", "token-user", "none"]))
    if form == "password":
        secret = draw(secret_values)
        secrets.append(secret)
        userinfo = (
            f"{quote(draw(st.sampled_from(['alice', 'u'])), safe='')}:{quote(secret, safe='')}@"
        )
    elif form == "token-user":
        secret = draw(secret_values)
        secrets.append(secret)
        userinfo = f"{quote(secret, safe='')}@"
    query = []
    for _ in range(draw(st.integers(0 if secrets else 1, 3))):
        secret = draw(secret_values)
        secrets.append(secret)
        query.append(f"{draw(secret_names)}={quote(secret, safe='')}")
    query += draw(st.lists(plain_params, max_size=2))
    query = draw(st.permutations(query))
    fragment = ""
    if draw(st.booleans()):
        secret = draw(secret_values)
        secrets.append(secret)
        fragment = f"#{quote(secret, safe='')}"
    netloc = f"{userinfo}{host}" + (f":{port}" if port is not None else "")
    tail = f"?{'&'.join(query)}" if query else ""
    return (
        f"{scheme}://{netloc}/{draw(st.sampled_from(['', 'mlflow', 'a/b/']))}{tail}{fragment}",
        secrets,
        host,
    )


@given(secret_uris())
def test_no_secret_of_a_uri_survives_masking(case: tuple[str, list[str], str]) -> None:
    uri, secrets, host = case
    masked = mask_uri(uri)
    for secret in secrets:
        assert quote(secret, safe="") not in masked
        assert secret not in masked
    assert MARK not in masked
    assert host in masked  # where the store is stays readable
    assert mask_uri(masked) == masked
    assert mask_text(f"API request to {uri} failed") == f"API request to {masked} failed"


@given(schemes, hosts, ports, st.lists(plain_params, max_size=3, unique=True))
def test_a_uri_without_secrets_is_shown_as_it_is(
    scheme: str, host: str, port: int | None, params: list[str]
) -> None:
    uri = f"{scheme}://{host}{'' if port is None else f':{port}'}/db" + (
        f"?{'&'.join(params)}" if params else ""
    )
    assert mask_uri(uri) == uri


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("http://alice:pw@host:5000", "http://alice:***@host:5000"),
        ("http://TOKEN@host", "http://***@host"),
        ("https://ghp_abc123@mlflow.example.com/", "https://***@mlflow.example.com/"),
        (
            "postgresql://u@db/mlflow?password=X&sslmode=require",
            "postgresql://***@db/mlflow?password=***&sslmode=require",
        ),
        (
            "https://h/p?X-Amz-Signature=abc&X-Amz-Credential=AKIA&X-Amz-Date=1",
            "https://h/p?X-Amz-Signature=***&X-Amz-Credential=***&X-Amz-Date=1",
        ),
        ("https://h/p?ACCESS_TOKEN=a;api_key=b", "https://h/p?ACCESS_TOKEN=***;api_key=***"),
        ("http://h:5000/#token-here", "http://h:5000/#***"),
        ("sqlite:////data/mlflow.db", "sqlite:////data/mlflow.db"),
        ("mlruns", "mlruns"),
        ("databricks://profile:prefix", "databricks://profile:prefix"),
        ("http://[::1", "http://[::1"),  # not a URI urllib reads: never raises
    ],
)
def test_mask_uri_examples(uri: str, shown: str) -> None:
    assert mask_uri(uri) == shown


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("http://127.0.0.1:5000", "http://localhost:5000/"),
        ("http://localhost:5000", "http://[::1]:5000"),
        ("HTTP://MLflow.Example.com:80/", "http://mlflow.example.com"),
        ("https://h:443/base/", "https://h/base"),
        ("http://alice:secret@h:1", "http://alice:***@h:1"),
        ("http://TOKEN@h:1", "http://h:1"),
        ("postgresql+psycopg2://u:p@db:5432/m?connect_timeout=10", "postgresql://u@db/m"),
        ("sqlite:////a/b/../mlruns/mlflow.db", "sqlite:////a/mlruns/mlflow.db"),
    ],
)
def test_the_same_store_however_its_uri_is_written(one: str, other: str) -> None:
    assert same_store(one, other)
    assert same_store(other, one)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("http://127.0.0.1:5000", "http://127.0.0.1:5001"),
        ("http://h:5000", "https://h:5000"),
        ("http://h/a", "http://h/b"),
        ("postgresql://db/one", "postgresql://db/two"),
        ("sqlite:////a/mlflow.db", "sqlite:////b/mlflow.db"),
    ],
)
def test_other_stores_are_not_the_same(one: str, other: str) -> None:
    assert not same_store(one, other)
    assert store_identity(one) != store_identity(other)


def test_a_store_refusal_is_reported_with_the_stores_own_words_masked() -> None:
    from mlflow.exceptions import MlflowException

    error = MlflowException(
        "API request to http://alice:pw-123@h:5000/api/2.0/mlflow/runs/log-batch failed:\n"
        "A string literal cannot contain NUL (0x00) characters."
    )
    assert store_refusal(error) == (
        "the store refused it (MlflowException: API request to http://alice:***@h:5000/api/2.0/"
        "mlflow/runs/log-batch failed: A string literal cannot contain NUL (0x00) "
        "characters.); fix what it names, then run trackcfg sync again (what was sent is not "
        "sent twice)"
    )


# ------------------------------------------------------------------------------------ the CLI

TOKEN = "tok-9f8e7d6c5b4a"
PASSWORD = "pw-0a1b2c3d4e5f"
QUERY_SECRET = "qs-1122334455"


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize(
    "uri",
    [
        "http://{TOKEN}@127.0.0.1:{port}",
        "postgresql+psycopg2://{TOKEN}@127.0.0.1:{port}/mlflow?password={QUERY_SECRET}",
        "postgresql+psycopg2://alice:{PASSWORD}@127.0.0.1:{port}/m?sslpassword={QUERY_SECRET}",
    ],
)
@pytest.mark.parametrize(
    "args", [["show"], ["show", "--json"], ["check"], ["sync"], ["sync", "--json"]]
)
def test_cli_output_never_shows_a_token_password_or_secret_parameter(
    tmp_path: Path, uri: str, args: list[str]
) -> None:
    """``check`` contacts the (closed) port and reports what failed; ``sync`` finds nothing."""
    configured = uri.format(
        TOKEN=TOKEN, PASSWORD=PASSWORD, QUERY_SECRET=QUERY_SECRET, port=closed_port()
    )
    project = project_folder(
        tmp_path / "p",
        config=f"server:\n  mlflow_tracking_uri: {configured}\n  request_timeout: 2\n",
    )
    result = CliRunner().invoke(cli, [*args, str(project)], catch_exceptions=False)
    assert "Traceback" not in result.output
    for secret in (TOKEN, PASSWORD, QUERY_SECRET):
        assert secret not in result.output
    if args != ["sync"]:  # a sync with nothing to send names no store
        assert "127.0.0.1" in result.output
    if "--json" in args and result.exit_code == 0:
        json.loads(result.stdout)


# ---------------------------------------------------------------------------------------------
# A password inside the tracking URI never appears: not in the config's repr, nor in what a
# session says when the server is unreachable or refuses the experiment, nor in the run link.


SECRET = "s3cr3t-Pa55"


def printed(error: BaseException) -> str:
    """What Python prints for ``error`` when nobody catches it: the traceback, with every
    exception chained to it that is shown."""
    return "".join(traceback.format_exception(error))


@pytest.mark.parametrize(
    "uri",
    [
        f"http://user:{SECRET}@127.0.0.1:9",
        f"postgresql+psycopg2://u:{SECRET}@db.example:5432/mlflow",
    ],
)
def test_the_password_in_a_uri_is_masked_in_the_config_repr(tmp_path: Path, uri: str) -> None:
    config = Project(project_folder(tmp_path / "p", name=PROJECT_NAME)).config(
        f"server:\n  mlflow_tracking_uri: '{uri}'\n  mlflow_registry_uri: '{uri}'\n"
    )
    assert config.server.mlflow_tracking_uri == uri  # the value itself is untouched
    for text in (repr(config), str(config), repr(config.server), str(config.server)):
        assert SECRET not in text
        assert text.count(":***@") == 2


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
    config = Project(project_folder(tmp_path / "p", name=PROJECT_NAME)).config(
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
    config = Project(project_folder(tmp_path / "p", name=PROJECT_NAME)).config(
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
    config = Project(project_folder(tmp_path / "p", name=PROJECT_NAME)).config(
        f"server: {{mlflow_tracking_uri: '{uri}'}}\n"
    )
    with TrackingSession(config, name="linked") as s:
        s.log_metrics({"loss": 1.0})

    out = capsys.readouterr().out
    assert f"{mlflow_server}/#/experiments/{s.experiment_id}/runs/{s.run_id}" in out
    assert SECRET not in out
