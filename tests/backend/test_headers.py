"""``server.request_header_provider`` (kedro-mlflow's key): a custom MLflow
``RequestHeaderProvider`` asked for headers on every request of the session, against a real
``mlflow server``; what the client sent is recorded at the transport."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mlflow
import pytest
from helpers import header_providers_module, line_of, project_folder
from mlflow.tracking.request_header import registry as header_registry

from trackcfg import ConfigError, RunError, TrackingSession, load_config


@pytest.fixture(autouse=True)
def providers_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(header_providers_module(tmp_path / "modules")))


def calls_of(requests_sent: list[Any]) -> list[tuple[str, str | None]]:
    return [(r.path_url, r.headers.get("X-Team")) for r in requests_sent]


def _providers() -> list[Any]:
    return list(header_registry._request_header_provider_registry._registry)


def config_file(root: Path, url: str, provider: str) -> Path:
    """``mlflow.yml`` in ``root`` for ``url``; ``provider``: the lines under
    ``request_header_provider:``, one key per line."""
    keys = "".join(f"    {line}\n" for line in provider.splitlines())
    text = (
        f"server:\n  mlflow_tracking_uri: {url}\n  request_header_provider:\n{keys}"
        "tracking:\n  experiment:\n    name: headers\n"
    )
    return project_folder(root, name=None, config=text) / "mlflow.yml"


def test_every_request_of_the_session_carries_the_providers_headers(
    mlflow_server: str, tmp_path: Path, http_requests: list[Any]
) -> None:
    before = _providers()
    file = config_file(
        tmp_path,
        mlflow_server,
        "type: trackcfg_test_headers.TeamHeader\ninit_kwargs: {team: vision}",
    )
    with TrackingSession.from_yaml(file, name="h") as session:
        session.log_metrics({"m": 1.0})
        mlflow.log_metric("plain", 2.0)  # plain MLflow calls in the block too
    during = [r for r in http_requests if r.url.startswith(mlflow_server)]
    http_requests.clear()
    run = mlflow.MlflowClient(mlflow_server).get_run(session.run_id or "")

    assert len(during) >= 5  # experiment, create, metrics, plain metric, update
    assert all(r.headers.get("X-Team") == "vision" for r in during), calls_of(during)
    assert run.data.metrics == {"m": 1.0, "plain": 2.0}
    assert run.info.status == "FINISHED"
    assert all("X-Team" not in r.headers for r in http_requests)  # off after the session
    assert _providers() == before


@pytest.mark.parametrize(
    ("provider", "message"),
    [
        ("trackcfg_test_headers.NotAProvider", "must be a subclass of mlflow.tracking"),
        ("no_such_module_here.Provider", "cannot import 'no_such_module_here'"),
        ("trackcfg_test_headers.Missing", "module 'trackcfg_test_headers' has no 'Missing'"),
        ("trackcfg_test_headers.Broken", "failed: RuntimeError: no token in the vault"),
        ("TeamHeader", "is not a dotted path to a class"),
    ],
)
def test_a_provider_that_cannot_be_built_fails_before_any_request(
    mlflow_server: str,
    tmp_path: Path,
    http_requests: list[Any],
    provider: str,
    message: str,
) -> None:
    before = _providers()
    file = config_file(tmp_path, mlflow_server, f"type: {provider}")
    with pytest.raises(ConfigError) as caught:
        TrackingSession.from_yaml(file, name="h").__enter__()
    text = str(caught.value)
    assert f"{file}:{line_of(file, 'type:')}: 'server.request_header_provider.type'" in text
    assert message in text
    # No run, no experiment: nothing reached the server.
    assert [r.url for r in http_requests if r.url.startswith(mlflow_server)] == []
    assert _providers() == before
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ


def test_pass_context_outside_kedro_is_a_config_error(
    mlflow_server: str, tmp_path: Path, http_requests: list[Any]
) -> None:
    file = config_file(
        tmp_path,
        mlflow_server,
        "type: trackcfg_test_headers.TeamHeader\npass_context: true",
    )
    with pytest.raises(ConfigError) as caught, TrackingSession.from_yaml(file, name="h"):
        pass
    where = f"{file}:{line_of(file, 'pass_context:')}"
    assert f"{where}: 'server.request_header_provider.pass_context'" in str(caught.value)
    assert "only a Kedro run has a context" in str(caught.value)
    assert [r.url for r in http_requests if r.url.startswith(mlflow_server)] == []


def test_sessions_open_at_once_must_agree_on_the_provider(
    mlflow_server: str, tmp_path: Path
) -> None:
    with_provider = config_file(
        tmp_path / "a", mlflow_server, "type: trackcfg_test_headers.TeamHeader"
    )
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "pyproject.toml").write_text("")
    without = load_config(
        cwd=tmp_path / "b",
        overrides={"server.mlflow_tracking_uri": mlflow_server, "tracking.experiment.name": "x"},
    )
    refused = r"other process-wide settings \(server.request_header_provider\)"
    with (
        TrackingSession.from_yaml(with_provider, name="a"),
        pytest.raises(RunError, match=refused),
    ):
        TrackingSession(without, name="b").__enter__()
