"""Quick ACKs on the tracking server's connections: scoped to the session, MLflow's own
settings kept, and the MLflow internals it hooks into pinned (an upgrade that moves them
fails here, loudly, instead of silently losing the speed-up)."""

from __future__ import annotations

import inspect
import multiprocessing
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import pytest
import requests
from mlflow.utils import request_utils, rest_utils

from trackcfg import TrackingSession, _state, load_config
from trackcfg import _transport as transport
from trackcfg._mlflow._internals import mlflow_rest_sessions as _mlflow_rest_sessions


class _Counter:
    def __init__(self) -> None:
        self.calls = 0
        self.ports: list[int] = []  # the local port of each quick-ACKed connection used


@pytest.fixture
def quickack_calls(monkeypatch: pytest.MonkeyPatch) -> _Counter:
    """Counts responses read through trackcfg's quick-ACK connections, and their ports."""
    counter = _Counter()
    original = transport._quickack

    def counting(sock: Any) -> None:
        counter.calls += 1
        counter.ports.append(sock.getsockname()[1])
        original(sock)

    monkeypatch.setattr(transport, "_quickack", counting)
    return counter


def http_config(url: str, tmp_path: Path) -> Any:
    (tmp_path / "pyproject.toml").write_text("")
    return load_config(
        cwd=tmp_path,
        overrides={"server.mlflow_tracking_uri": url, "tracking.experiment.name": "transport"},
    )


def test_mlflow_internals_the_hook_relies_on_are_there() -> None:
    params = inspect.signature(rest_utils.http_request).parameters
    assert "retry_codes" in params
    assert "raise_on_status" in params
    get_session: Any = request_utils._get_request_session
    session = get_session(3, 1, 0.5, params["retry_codes"].default, True, True)
    assert isinstance(session, requests.Session)
    adapter = session.get_adapter("http://127.0.0.1:1/")
    assert isinstance(adapter, requests.adapters.HTTPAdapter)


@pytest.mark.skipif(transport.QUICKACK is None, reason="TCP_QUICKACK exists on Linux only")
def test_every_request_of_a_session_goes_through_quick_ack_connections(
    mlflow_server: str, tmp_path: Path, quickack_calls: _Counter
) -> None:
    config = http_config(mlflow_server, tmp_path)
    with TrackingSession(config, name="quick", params={"a": 1}) as session:
        session.log_metrics({"m": 1.0})
        session.set_tags({"t": "x"})
        mlflow.log_metric("plain", 2.0)  # plain MLflow calls inside the block benefit too
        session.flush()  # the buffered calls are sent by the session's sender thread
        during = quickack_calls.calls
    # get-by-name, create, one batch (params, metric, tags), plain log_metric, at least.
    assert during >= 4
    run = mlflow.MlflowClient(mlflow_server).get_run(session.run_id or "")
    assert run.data.metrics == {"m": 1.0, "plain": 2.0}


@pytest.mark.skipif(transport.QUICKACK is None, reason="TCP_QUICKACK exists on Linux only")
def test_nothing_is_left_mounted_after_the_session(
    mlflow_server: str, tmp_path: Path, quickack_calls: _Counter
) -> None:
    config = http_config(mlflow_server, tmp_path)
    with TrackingSession(config, name="quick") as session:
        sessions = _mlflow_rest_sessions()
        prefix = mlflow_server.rstrip("/") + "/"
        assert prefix in sessions[0].adapters
    assert all(prefix not in s.adapters for s in sessions)
    before = quickack_calls.calls
    mlflow.MlflowClient(mlflow_server).get_run(session.run_id or "")
    assert quickack_calls.calls == before, "MLflow's own calls after the session were hooked"


def test_mounted_adapter_keeps_mlflows_retries_and_socket_options(mlflow_server: str) -> None:
    session = requests.Session()
    original = requests.adapters.HTTPAdapter(max_retries=7, pool_maxsize=3)
    session.mount("http://", original)
    mount = transport.mount_quickack(mlflow_server, [session])
    if transport.QUICKACK is None:
        assert mount is None
        return
    assert mount is not None
    ours = session.get_adapter(mlflow_server + "/api")
    assert ours is not original
    assert ours.max_retries.total == 7  # type: ignore[attr-defined]
    assert ours._pool_maxsize == 3  # type: ignore[attr-defined]
    assert session.get_adapter("http://elsewhere:1/") is original
    assert session.get(f"{mlflow_server}/health", timeout=30).status_code == 200
    mount.unmount()
    assert session.get_adapter(mlflow_server + "/api") is original


def test_without_tcp_quickack_nothing_is_mounted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(transport, "QUICKACK", None)
    monkeypatch.setattr(_state, "said_once", set())
    session = requests.Session()
    with caplog.at_level("DEBUG", logger="trackcfg"):
        assert transport.mount_quickack("http://127.0.0.1:5000", [session]) is None
        assert transport.mount_quickack("http://127.0.0.1:5000", [session]) is None
    assert "http://127.0.0.1:5000/" not in session.adapters
    assert caplog.text.count("TCP_QUICKACK is not available") == 1  # said once


def test_a_moved_hook_point_degrades_to_mlflows_client(
    mlflow_server: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    original: Any = rest_utils.http_request

    def http_request(*args: Any, **kwargs: Any) -> Any:  # same behaviour, other signature
        return original(*args, **kwargs)

    monkeypatch.setattr(rest_utils, "http_request", http_request)
    monkeypatch.setattr(_state, "said_once", set())
    config = http_config(mlflow_server, tmp_path)
    with caplog.at_level("DEBUG", logger="trackcfg"):
        for value in (1.0, 2.0):
            with TrackingSession(config, name="x") as s:
                s.log_metrics({"m": value})
            assert mlflow.MlflowClient(mlflow_server).get_run(s.run_id or "").data.metrics == {
                "m": value
            }
    assert caplog.text.count("hook point changed") == 1  # said once, at debug level
    assert {r.levelname for r in caplog.records if "hook point" in r.message} == {"DEBUG"}


@pytest.mark.skipif(transport.QUICKACK is None, reason="TCP_QUICKACK exists on Linux only")
def test_threads_inside_a_session_benefit_too(
    mlflow_server: str, tmp_path: Path, quickack_calls: _Counter
) -> None:
    config = http_config(mlflow_server, tmp_path)
    seen: list[int] = []
    with TrackingSession(config, name="threads") as session:

        def work() -> None:
            before = quickack_calls.calls
            session.log_metrics({"from_thread": 1.0})
            session.flush()  # sent by the session's sender thread: one request
            seen.append(quickack_calls.calls - before)

        worker = threading.Thread(target=work)
        worker.start()
        worker.join(60)
    assert seen == [1]
    run = mlflow.MlflowClient(mlflow_server).get_run(session.run_id or "")
    assert run.data.metrics == {"from_thread": 1.0}


@pytest.mark.skipif(transport.QUICKACK is None, reason="TCP_QUICKACK exists on Linux only")
def test_quickack_sets_the_socket_option() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        try:
            transport._quickack(client)
            assert client.getsockopt(socket.IPPROTO_TCP, transport.QUICKACK) == 1  # type: ignore[arg-type]
        finally:
            client.close()


def calls(requests_sent: list[Any]) -> list[str]:
    """ "METHOD /path" of each request."""
    return [f"{r.method} {r.path_url.split('?')[0]}" for r in requests_sent]


def test_an_empty_session_sends_as_many_requests_as_a_raw_run(
    mlflow_server: str,
    tmp_path: Path,
    http_requests: list[Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = http_config(mlflow_server, tmp_path)
    with TrackingSession(config, name="warm"):
        pass  # creates the experiment
    experiment_id = mlflow.MlflowClient(mlflow_server).get_experiment_by_name("transport")
    assert experiment_id is not None
    http_requests.clear()
    capsys.readouterr()

    mlflow.set_tracking_uri(mlflow_server)
    with mlflow.start_run(experiment_id=experiment_id.experiment_id, run_name="same") as raw:
        pass
    raw_requests, raw_out = calls(http_requests), capsys.readouterr().out
    http_requests.clear()
    with TrackingSession(config, name="same") as session:
        pass
    ours_out = capsys.readouterr().out

    api = "/api/2.0/mlflow"
    assert raw_requests == [
        f"POST {api}/runs/create",
        f"GET {api}/runs/get",
        f"POST {api}/runs/update",
    ]
    # Ours: the experiment by name instead of MLflow's second fetch of the run for its link.
    assert calls(http_requests) == [
        f"GET {api}/experiments/get-by-name",
        f"POST {api}/runs/create",
        f"POST {api}/runs/update",
    ]
    # ... and the same "View run" lines MLflow prints, byte for byte but the run id.
    assert raw.info.run_id in raw_out
    assert ours_out == raw_out.replace(raw.info.run_id, session.run_id or "")
    run = mlflow.MlflowClient(mlflow_server).get_run(session.run_id or "")
    assert run.info.status == "FINISHED"


def test_with_mlflows_link_printing_off_nothing_is_printed_nor_fetched(
    mlflow_server: str,
    tmp_path: Path,
    http_requests: list[Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    config = http_config(mlflow_server, tmp_path)
    with TrackingSession(config, name="quiet"):
        pass
    assert "View run" not in capsys.readouterr().out
    assert not any("runs/get" in call for call in calls(http_requests))
    assert os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "true"


def test_the_link_switch_is_put_back_after_the_session(mlflow_server: str, tmp_path: Path) -> None:
    config = http_config(mlflow_server, tmp_path)
    with TrackingSession(config, name="back"):
        pass
    assert "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT" not in os.environ


@pytest.mark.skipif(transport.QUICKACK is None, reason="TCP_QUICKACK exists on Linux only")
def test_sessions_one_after_another_reuse_one_connection(
    mlflow_server: str, tmp_path: Path, quickack_calls: _Counter
) -> None:
    # Like MLflow's own pool between runs: a new connection (for https, a new TLS handshake)
    # per session would cost more than the stall saves on a distant server.
    ports = quickack_calls.ports
    config = http_config(mlflow_server, tmp_path)
    for step in range(3):
        with TrackingSession(config, name="again") as session:
            session.log_metrics({"m": float(step)})
    assert len(ports) >= 3 * 4  # experiment, create, metrics, end: all quick-ACKed
    assert len(set(ports)) == 1, f"a connection per session, local ports {sorted(set(ports))}"


@pytest.mark.skipif(transport.QUICKACK is None, reason="TCP_QUICKACK exists on Linux only")
def test_overlapping_mounts_share_one_adapter_and_the_last_puts_mlflows_back(
    mlflow_server: str, quickack_calls: _Counter
) -> None:
    # Two sessions open at once (threads) to one server: the first to end must neither take
    # the speed-up from the other nor leave a quick-ACK adapter mounted when both are done.
    session = requests.Session()
    original = session.get_adapter(mlflow_server + "/api")
    first = transport.mount_quickack(mlflow_server, [session])
    second = transport.mount_quickack(mlflow_server, [session])
    assert first is not None
    assert second is not None
    ours = session.get_adapter(mlflow_server + "/api")
    assert ours is not original
    first.unmount()
    assert session.get_adapter(mlflow_server + "/api") is ours
    calls = quickack_calls.calls
    assert session.get(f"{mlflow_server}/health", timeout=30).status_code == 200
    assert quickack_calls.calls == calls + 1
    second.unmount()
    assert session.get_adapter(mlflow_server + "/api") is original
    assert session.get(f"{mlflow_server}/health", timeout=30).status_code == 200
    assert quickack_calls.calls == calls + 1


@pytest.mark.skipif(transport.QUICKACK is None, reason="TCP_QUICKACK exists on Linux only")
def test_a_forked_worker_opens_its_own_connection(
    mlflow_server: str, tmp_path: Path, quickack_calls: _Counter
) -> None:
    # Parent and child talking on one inherited keep-alive socket would mix their responses.
    ports = quickack_calls.ports
    config = http_config(mlflow_server, tmp_path)
    context = multiprocessing.get_context("fork")
    results: Any = context.SimpleQueue()

    # Other process-wide settings than the open parent session's: fine in another process.
    other = load_config(
        cwd=tmp_path,
        overrides={
            "server.mlflow_tracking_uri": mlflow_server,
            "tracking.experiment.name": "transport",
            "server.request_timeout": 7,
        },
    )

    def worker() -> None:
        ports.clear()
        with TrackingSession(other, name="child") as child:
            child.log_metrics({"child": 1.0})
        results.put((sorted(set(ports)), child.run_id))

    with TrackingSession(config, name="parent") as parent:
        parent.log_metrics({"before": 1.0})
        parent.flush()
        parent_ports = set(ports)
        process = context.Process(target=worker)
        process.start()
        process.join(120)
        ports.clear()
        parent.log_metrics({"after": 2.0})
        parent.flush()
        assert set(ports) == parent_ports  # the parent keeps its connection

    assert process.exitcode == 0
    child_ports, child_run = results.get()
    assert child_ports
    assert not set(child_ports) & parent_ports
    client = mlflow.MlflowClient(mlflow_server)
    assert client.get_run(child_run).data.metrics == {"child": 1.0}
    assert client.get_run(parent.run_id or "").data.metrics == {"before": 1.0, "after": 2.0}


@pytest.mark.skipif(transport.QUICKACK is None, reason="TCP_QUICKACK exists on Linux only")
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test certificate")
def test_https_requests_are_quick_acked_over_one_tls_connection(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    quickack_calls: _Counter,
    migrated_sqlite_db: Path,
    mlflow_server_launcher: Callable[..., Any],
) -> None:
    """An https server (uvicorn's TLS): every request quick-ACKed, MLflow's certificate
    setting honoured, and one TLS connection serving session after session."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    store = tmp_path / "server"
    store.mkdir()
    shutil.copyfile(migrated_sqlite_db, store / "mlflow.db")
    server = mlflow_server_launcher(
        f"sqlite:///{store / 'mlflow.db'}", store / "artifacts", tls=(cert, key)
    )
    server.wait_healthy(240)
    assert server.url.startswith("https://")
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(cert))
    config = http_config(server.url, tmp_path)

    run_ids = []
    for step in range(2):
        with TrackingSession(config, name="tls") as session:
            session.log_metrics({"m": float(step)})
        run_ids.append(session.run_id or "")

    ports = quickack_calls.ports
    assert len(ports) >= 2 * 4  # experiment, create, metrics, end, twice
    assert len(set(ports)) == 1, f"a TLS connection per session: {sorted(set(ports))}"
    client = mlflow.MlflowClient(server.url)
    assert [client.get_run(r).data.metrics["m"] for r in run_ids] == [0.0, 1.0]
    assert {client.get_run(r).info.status for r in run_ids} == {"FINISHED"}
