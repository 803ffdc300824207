"""``trackcfg.testing``: the public kit for users' own tests (a local config, a real server)."""

from __future__ import annotations

import json
import os
import socket
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from helpers import copy_store, read_runs, run_python, store_uri

from trackcfg import ConfigError, TrackingSession
from trackcfg.testing import MlflowServer, local_config, mlflow_server


def _processes_mentioning(text: str) -> list[int]:
    """PIDs of the live processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def _refuses(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    with socket.socket() as sock:
        return sock.connect_ex((parts.hostname or "", parts.port or 0)) != 0


def test_importing_the_kit_imports_neither_mlflow_nor_pytest() -> None:
    code = (
        "import sys, trackcfg.testing\n"
        "print(sorted(m for m in ('mlflow', 'pytest') if m in sys.modules))\n"
    )
    done = run_python("-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_local_config_keeps_the_store_and_the_journal_under_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, migrated_sqlite_db: Path
) -> None:
    """Nothing from the environment or the current folder moves them."""
    elsewhere = tmp_path / "elsewhere"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{elsewhere}/env.db")
    monkeypatch.setenv("TRACKCFG_SERVER__MLFLOW_TRACKING_URI", str(elsewhere / "env-store"))
    monkeypatch.setenv("TRACKCFG_TRACKING__LOGGING__JOURNAL_DIR", str(elsewhere / "journal"))
    (Path.cwd() / "mlflow.yml").write_text(f"server:\n  mlflow_tracking_uri: {elsewhere}\n")
    folder = tmp_path / "kit"
    copy_store(migrated_sqlite_db, folder / "mlruns")  # saves the migrations' seconds

    overrides = {
        "tracking.run.name": "smoke",
        "tracking.params.dict_params.flatten": True,
        "tracking.params.dict_params.sep": "/",
    }
    config = local_config(folder, overrides)

    assert config.server.mlflow_tracking_uri == str(folder / "mlruns")
    assert config.tracking.logging.journal_dir == str(folder / ".trackcfg" / "journal")
    assert config.project_root == folder
    assert config.tracking.run.name == "smoke"
    assert config.tracking.params.dict_params.sep == "/"
    with TrackingSession(config, params={"lr": {"base": 0.1}}) as session:
        session.log_metric("loss", 0.5)
        session.log_text("hello", "notes/a.txt")
        journal = folder / ".trackcfg" / "journal"
        assert [p.name for p in journal.glob("*.journal")] != []
    (run,) = read_runs(store_uri(folder))
    assert run.info.run_name == "smoke"
    assert run.data.params == {"lr/base": "0.1"}
    assert run.data.metrics == {"loss": 0.5}
    assert run.info.artifact_uri.startswith(f"file://{folder / 'mlruns'}/")
    assert not elsewhere.exists()


def test_local_config_overrides_win_and_bad_keys_are_named(tmp_path: Path) -> None:
    config = local_config(tmp_path, {"server.mlflow_tracking_uri": "http://127.0.0.1:9"})
    assert config.server.mlflow_tracking_uri == "http://127.0.0.1:9"
    with pytest.raises(ConfigError, match=r"'tracking\.run\.nme': unknown key; did you mean"):
        local_config(tmp_path, {"tracking.run.nme": "x"})
    with pytest.raises(ConfigError, match=r"tracking\.logging\.flush_seconds"):
        local_config(tmp_path, {"tracking.logging.flush_seconds": -1})


@pytest.mark.slow
def test_mlflow_server_serves_a_store_in_the_folder_and_leaves_no_process(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "server"
    with mlflow_server(folder) as url:
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
            assert response.status == 200
        assert _processes_mentioning(str(folder))
        config = local_config(tmp_path / "project", {"server.mlflow_tracking_uri": url})
        with TrackingSession(config, name="remote") as session:
            session.log_params({"lr": 0.1})
            session.log_text("hello", "a.txt")
        (run,) = read_runs(url)
        assert (run.info.run_name, run.info.status) == ("remote", "FINISHED")
        assert run.data.params == {"lr": "0.1"}
    assert _processes_mentioning(str(folder)) == []
    assert _refuses(url)
    assert (folder / "mlflow.db").is_file()
    (artifact,) = (folder / "artifacts").rglob("a.txt")
    assert artifact.read_text() == "hello"


def _workers_of(server_pid: int) -> list[int]:
    """The uvicorn worker processes (multiprocessing children) in the server's group."""
    found = []
    for pid in _processes_mentioning("spawn_main"):
        try:
            if os.getpgid(pid) == server_pid:
                found.append(pid)
        except ProcessLookupError:
            continue
    return found


@pytest.mark.slow
def test_mlflow_server_without_a_folder_removes_its_temporary_store() -> None:
    """... and runs the number of workers asked for (benchmarks ask for several)."""
    with mlflow_server(workers=2) as url:
        port = urllib.parse.urlsplit(url).port
        pids = _processes_mentioning(f"--port {port} ")  # mlflow server and its uvicorn
        (pid,) = _processes_mentioning(f"--port {port} --workers 2 --backend-store-uri")
        assert pid in pids
        assert len(_workers_of(pid)) == 2
        pids += _workers_of(pid)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        store = Path(cmdline[cmdline.index(b"--backend-store-uri") + 1].decode()[10:])
        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/search?max_results=5") as r:
            assert [e["name"] for e in json.load(r)["experiments"]] == ["Default"]
        assert store.is_file()
    assert [p for p in pids if Path(f"/proc/{p}").exists()] == []
    assert _processes_mentioning(f"--port {port} ") == []
    assert not store.parent.exists()


@pytest.mark.slow
def test_workers_none_starts_mlflows_own_default(tmp_path: Path) -> None:
    """``workers=None``: the command has no ``--workers``, as ``mlflow server`` by hand; 3
    gives ``--workers 3``."""
    for workers, expected in ((None, []), (3, ["--workers", "3"])):
        server = MlflowServer.start(
            f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts", workers=workers
        )
        try:
            command = list(server.process.args)  # type: ignore[arg-type]
        finally:
            server.stop()
        assert not Path(f"/proc/{server.pid}").exists()
        port = command.index("--port")
        assert command[port + 1] == str(urllib.parse.urlsplit(server.url).port)
        assert command[port + 2 : port + 2 + len(expected)] == expected
        assert ("--workers" in command) is (workers is not None)


@pytest.mark.slow
def test_job_execution_is_off_unless_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow's GenAI job runner (on in a server started by hand) is off in the kit's
    servers, whatever the caller's environment says, and on with ``job_execution=True``
    (the benchmarks' "default mlflow server")."""
    for job_execution, expected in ((False, b"false"), (True, b"true")):
        # the caller's environment says the opposite
        monkeypatch.setenv(
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false" if job_execution else "true"
        )
        server = MlflowServer.start(
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            tmp_path / "artifacts",
            job_execution=job_execution,
        )
        try:
            environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
        finally:
            server.stop()
        assert b"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=" + expected in environ
