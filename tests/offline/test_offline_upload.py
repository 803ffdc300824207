"""``trackcfg sync`` uploading offline runs (``server.offline``) to their server, on real stores.

Offline runs are made as a session makes them: in the project's local store
(``<root>/mlruns/mlflow.db``, artifacts under ``mlruns/artifacts``), in an experiment of the
destination's experiment name, every run tagged ``trackcfg.offline.destination`` = the server's
URI with its password masked.  The destination is a real ``mlflow server``; the URI the config
names carries a user name and password, which no output may show.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from helpers import (
    TRACKING_SETTINGS,
    log_long_history,
    metric_points,
    project_folder,
    store_uri,
    subprocess_env,
)
from mlflow import MlflowClient
from mlflow.entities import Metric

from trackcfg._cli import cli
from trackcfg._rules import OFFLINE_DESTINATION_TAG
from trackcfg._store import mask_uri
from trackcfg._upload import SOURCE_RUN_TAG, SOURCE_STORE_TAG, UPLOADED_TO_TAG

WATCHDOG = 180.0
PASSWORD = "s3cret-pw"
SYNC_TAGS = (SOURCE_RUN_TAG, SOURCE_STORE_TAG, UPLOADED_TO_TAG)


def with_credentials(url: str) -> str:
    return url.replace("http://", f"http://alice:{PASSWORD}@")


def make_project(root: Path, destination: str, experiment: str) -> Path:
    config = textwrap.dedent(
        f"""\
        server:
          mlflow_tracking_uri: {destination}
          request_timeout: 10
          max_retries: 1
        tracking:
          experiment:
            name: {experiment}
        """
    )
    return project_folder(root, name="offline", config=config)


def local_client(project: Path) -> MlflowClient:
    (project / "mlruns").mkdir(exist_ok=True)
    return MlflowClient(tracking_uri=store_uri(project))


def offline_experiment(client: MlflowClient, project: Path, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    location = (project / "mlruns" / "artifacts").as_uri()
    return str(client.create_experiment(name, artifact_location=location))


def offline_family(project: Path, destination: str, experiment: str) -> dict[str, str]:
    """An offline parent (FINISHED) with two children (FINISHED, FAILED): params, tags,
    metric histories with explicit steps and timestamps, artifacts (a nested folder, a binary
    file).  Returns the local run ids by role."""
    client = local_client(project)
    experiment_id = offline_experiment(client, project, experiment)
    shown = mask_uri(destination)
    base = 1_700_000_000_000
    parent = client.create_run(
        experiment_id,
        start_time=base,
        run_name="train",
        tags={OFFLINE_DESTINATION_TAG: shown, "team": "vision", "mlflow.user": "alice"},
    ).info.run_id
    ids = {"parent": parent}
    for i, (role, status) in enumerate((("fold-0", "FINISHED"), ("fold-1", "FAILED"))):
        child = client.create_run(
            experiment_id,
            start_time=base + 100 + i,
            run_name=role,
            tags={
                OFFLINE_DESTINATION_TAG: shown,
                "mlflow.parentRunId": parent,
                "fold": str(i),
            },
        ).info.run_id
        ids[role] = child
        client.log_batch(
            child,
            metrics=[
                Metric("loss", 1.0 / (s + 1 + i), base + 1000 + 7 * s, s) for s in range(1500)
            ],
            params=[],
        )
        client.log_param(child, "fold", i)
        client.set_terminated(child, status, base + 50_000 + i)
    for key in ("loss", "acc"):
        points = [Metric(key, s * 0.5, base + 2000 + 3 * s, s) for s in range(2500)]
        for start in range(0, len(points), 1000):
            client.log_batch(parent, metrics=points[start : start + 1000])
    # The same step twice with two timestamps: both points are kept.
    client.log_batch(parent, metrics=[Metric("acc", 9.0, base + 99_999, 7)])
    client.log_batch(parent, metrics=[], params=[], tags=[])
    for key, value in {"lr": "0.01", "layers": "[1, 2, 3]", "optimizer": "adam"}.items():
        client.log_param(parent, key, value)
    files = project / "files"
    (files / "nested" / "deeper").mkdir(parents=True)
    (files / "nested" / "deeper" / "notes.txt").write_text("a note\n")
    (files / "model.bin").write_bytes(bytes(range(256)) * 40)
    client.log_artifacts(parent, str(files))
    client.log_artifact(ids["fold-1"], str(files / "model.bin"), "weights")
    client.set_terminated(parent, "FINISHED", base + 60_000)
    return ids


def sync(project: Path, *args: str) -> Any:
    result = CliRunner().invoke(cli, ["sync", str(project), *args], catch_exceptions=False)
    assert "Traceback" not in result.output
    assert PASSWORD not in result.output
    return result


def artifact_tree(client: MlflowClient, run_id: str, folder: Path) -> dict[str, bytes]:
    folder.mkdir(parents=True)
    client.download_artifacts(run_id, "", str(folder))
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def uploaded_runs(server: MlflowClient, experiment: str) -> dict[str, Any]:
    """The destination's runs by the local run they came from."""
    found = server.get_experiment_by_name(experiment)
    if found is None:
        return {}
    runs = server.search_runs([found.experiment_id])
    return {run.data.tags[SOURCE_RUN_TAG]: run for run in runs}


def test_offline_parent_and_children_are_uploaded_whole_once(
    tmp_path: Path, mlflow_server: str
) -> None:
    experiment = f"offline-{uuid.uuid4().hex[:8]}"
    destination = with_credentials(mlflow_server)
    project = make_project(tmp_path / "proj", destination, experiment)
    ids = offline_family(project, destination, experiment)
    local = local_client(project)
    server = MlflowClient(tracking_uri=mlflow_server)

    dry = sync(project, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert server.get_experiment_by_name(experiment) is None  # nothing sent
    assert f"would upload: run {ids['parent']} 'train'" in dry.output
    assert "5001 point(s), 2 file(s), FINISHED" in dry.output
    assert f"would upload 3 offline run(s) to {mask_uri(destination)} (dry run)" in dry.output

    shape = sync(project, "--dry-run", "--json")
    data = json.loads(shape.output)
    assert data["ok"] is True
    assert data["dry_run"] is True
    assert data["tracking_uri"] == mask_uri(destination)
    by_run = {u["run_id"]: u for u in data["uploads"]}
    assert by_run[ids["fold-1"]] == {
        "run_id": ids["fold-1"],
        "name": "fold-1",
        "experiment": experiment,
        "parent_run_id": ids["parent"],
        "destination": mask_uri(destination),
        "destination_run_id": None,
        "status": "FAILED",
        "points": 1500,
        "artifacts": 1,
        "state": "would upload",
        "detail": "",
        "models": 0,
    }

    done = sync(project)
    assert done.exit_code == 0, done.output
    assert "uploaded 3 offline run(s)" in done.output
    remote = uploaded_runs(server, experiment)
    assert sorted(remote) == sorted(ids.values())
    for role, local_id in ids.items():
        mine, theirs = local.get_run(local_id), remote[local_id]
        assert theirs.info.run_name == mine.info.run_name, role
        assert theirs.info.status == mine.info.status, role
        assert theirs.info.start_time == mine.info.start_time, role
        assert theirs.info.end_time == mine.info.end_time, role
        assert theirs.data.params == mine.data.params, role
        same = {
            k: v for k, v in mine.data.tags.items() if k not in (*SYNC_TAGS, "mlflow.parentRunId")
        }
        got = {
            k: v for k, v in theirs.data.tags.items() if k not in (*SYNC_TAGS, "mlflow.parentRunId")
        }
        assert got == same, role
        assert theirs.data.tags[SOURCE_STORE_TAG] == store_uri(project)
        assert metric_points(server, theirs.info.run_id) == metric_points(local, local_id), role
        assert artifact_tree(server, theirs.info.run_id, tmp_path / "remote" / role) == (
            artifact_tree(local, local_id, tmp_path / "local" / role)
        )
        # The link back: the local run names the run it became.
        assert local.get_run(local_id).data.tags[UPLOADED_TO_TAG] == theirs.info.run_id
    parent_there = remote[ids["parent"]].info.run_id
    assert "mlflow.parentRunId" not in remote[ids["parent"]].data.tags
    for role in ("fold-0", "fold-1"):
        assert remote[ids[role]].data.tags["mlflow.parentRunId"] == parent_there
    assert len(artifact_tree(server, parent_there, tmp_path / "tree")) == 2
    assert (tmp_path / "tree" / "nested" / "deeper" / "notes.txt").is_file()

    count = sum(len(metric_points(server, r.info.run_id)) for r in remote.values())
    again = sync(project)
    assert again.exit_code == 0, again.output
    assert "upload" not in again.output
    remote_again = uploaded_runs(server, experiment)
    assert len(server.search_runs([remote_again[ids["parent"]].info.experiment_id])) == 3
    assert sum(len(metric_points(server, r.info.run_id)) for r in remote_again.values()) == count


def test_a_sync_killed_half_way_is_finished_by_the_next_without_duplicates(
    tmp_path: Path, mlflow_server: str
) -> None:
    experiment = f"offline-kill-{uuid.uuid4().hex[:8]}"
    project = make_project(tmp_path / "proj", mlflow_server, experiment)
    local = local_client(project)
    run_id = local.create_run(
        offline_experiment(local, project, experiment),
        start_time=1_700_000_000_000,
        run_name="long",
        tags={OFFLINE_DESTINATION_TAG: mlflow_server},
    ).info.run_id
    log_long_history(local, run_id, keys=4, steps=10_000)
    local.set_terminated(run_id, "FINISHED", 1_700_000_900_000)
    expected = metric_points(local, run_id)
    server = MlflowClient(tracking_uri=mlflow_server)

    process = subprocess.Popen(
        [sys.executable, "-m", "trackcfg", "sync", str(project)],
        cwd=project,
        env=subprocess_env(drop=TRACKING_SETTINGS),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + WATCHDOG
        while True:  # until the upload has sent some points, not all
            assert process.poll() is None, "the sync ended before it could be killed"
            assert time.monotonic() < deadline, "no point reached the server"
            there = uploaded_runs(server, experiment).get(run_id)
            if there is not None and server.get_metric_history(there.info.run_id, "m0"):
                break
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=WATCHDOG)
    assert UPLOADED_TO_TAG not in local.get_run(run_id).data.tags
    half = uploaded_runs(server, experiment)[run_id]
    assert half.info.status == "RUNNING"
    there_before = len(metric_points(server, half.info.run_id))
    assert there_before < len(expected)

    done = sync(project, "--json")
    assert done.exit_code == 0, done.output
    (upload,) = json.loads(done.output)["uploads"]
    assert upload["detail"] == "finished an upload that was cut short"
    # Only what was missing (fewer if a request in flight at the kill landed after the count).
    assert upload["points"] <= len(expected) - there_before
    runs = server.search_runs([half.info.experiment_id])
    assert [r.info.run_id for r in runs] == [half.info.run_id]  # no second copy
    assert metric_points(server, half.info.run_id) == expected  # every point, none twice
    assert server.get_run(half.info.run_id).info.status == "FINISHED"
    assert local.get_run(run_id).data.tags[UPLOADED_TO_TAG] == half.info.run_id


def test_destination_down_exit_1_clear_message_nothing_marked(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    destination = f"http://alice:{PASSWORD}@127.0.0.1:{port}"
    experiment = "offline-down"
    project = make_project(tmp_path / "proj", destination, experiment)
    ids = offline_family(project, destination, experiment)
    local = local_client(project)
    before = {i: local.get_run(i).data.tags for i in ids.values()}

    result = sync(project)
    assert result.exit_code == 1
    assert "refused the connection" in result.output
    assert "3 offline run(s) not uploaded" in result.output
    assert PASSWORD not in result.output
    assert mask_uri(destination) in result.output
    assert {i: local.get_run(i).data.tags for i in ids.values()} == before
    as_json = sync(project, "--json")
    assert as_json.exit_code == 1
    assert PASSWORD not in as_json.output


def test_runs_for_another_destination_and_running_ones_are_left(
    tmp_path: Path, mlflow_server: str
) -> None:
    experiment = f"offline-left-{uuid.uuid4().hex[:8]}"
    project = make_project(tmp_path / "proj", mlflow_server, experiment)
    local = local_client(project)
    experiment_id = offline_experiment(local, project, experiment)
    other = local.create_run(
        experiment_id, tags={OFFLINE_DESTINATION_TAG: "http://elsewhere:5000"}
    ).info.run_id
    local.set_terminated(other, "FINISHED")
    running = local.create_run(
        experiment_id, tags={OFFLINE_DESTINATION_TAG: mlflow_server}
    ).info.run_id

    result = sync(project)
    assert result.exit_code == 1
    assert f"other destination: run {other}" in result.output
    assert "is for http://elsewhere:5000" in result.output
    assert f"running: run {running}" in result.output
    assert "1 offline run(s) not uploaded" in result.output
    server = MlflowClient(tracking_uri=mlflow_server)
    assert uploaded_runs(server, experiment) == {}


def test_end_to_end_an_offline_session_then_sync(tmp_path: Path, mlflow_server: str) -> None:
    """A real session with ``server.offline: always`` (buffered logging, a child run), then
    ``trackcfg sync``: the server holds the same runs."""
    from trackcfg import TrackingSession

    experiment = f"offline-e2e-{uuid.uuid4().hex[:8]}"
    destination = with_credentials(mlflow_server)
    project = make_project(tmp_path / "proj", destination, experiment)
    config = project / "mlflow.yml"
    config.write_text(
        config.read_text().replace("  max_retries: 1\n", "  max_retries: 1\n  offline: always\n")
    )
    with TrackingSession.from_yaml(config, name="e2e", params={"lr": 0.1}) as session:
        for step in range(30):
            session.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        session.log_text("hello", "notes/hello.txt")
        with session.child("part", params={"part": 1}) as child:
            child.log_metrics({"x": 2.0}, step=3)
    local = local_client(project)
    experiment_id = offline_experiment(local, project, experiment)  # the session's
    mine = {run.info.run_name: run for run in local.search_runs([experiment_id])}
    assert sorted(mine) == ["e2e", "part"]
    assert all(r.data.tags[OFFLINE_DESTINATION_TAG] == mask_uri(destination) for r in mine.values())

    done = sync(project)
    assert done.exit_code == 0, done.output
    server = MlflowClient(tracking_uri=mlflow_server)
    remote = uploaded_runs(server, experiment)
    assert sorted(remote) == sorted(r.info.run_id for r in mine.values())
    for name, run in mine.items():
        theirs = remote[run.info.run_id]
        assert theirs.info.run_name == name
        assert theirs.info.status == "FINISHED"
        assert (theirs.info.start_time, theirs.info.end_time) == (
            run.info.start_time,
            run.info.end_time,
        )
        assert theirs.data.params == run.data.params
        assert metric_points(server, theirs.info.run_id) == metric_points(local, run.info.run_id)
    assert remote[mine["part"].info.run_id].data.tags["mlflow.parentRunId"] == (
        remote[mine["e2e"].info.run_id].info.run_id
    )
    assert artifact_tree(server, remote[mine["e2e"].info.run_id].info.run_id, tmp_path / "a") == {
        "notes/hello.txt": b"hello"
    }


def test_a_half_made_destination_run_gets_only_what_it_lacks(
    tmp_path: Path, mlflow_server: str
) -> None:
    """What a sync killed half-way leaves (a destination run tagged with its source, some of
    the points, one of the files, still RUNNING, the local run unmarked): the next sync sends
    only the missing points and files, into that run, and ends it.  Counted from what it
    reports, since the server's SQL store would drop a duplicate point silently."""
    experiment = f"offline-half-{uuid.uuid4().hex[:8]}"
    project = make_project(tmp_path / "proj", mlflow_server, experiment)
    ids = offline_family(project, mlflow_server, experiment)
    local = local_client(project)
    parent = local.get_run(ids["parent"])
    server = MlflowClient(tracking_uri=mlflow_server)
    half = server.create_run(
        server.create_experiment(experiment),
        start_time=parent.info.start_time,
        run_name="train",
        tags={SOURCE_RUN_TAG: ids["parent"], "team": "vision"},
    ).info.run_id
    history = sorted(local.get_metric_history(ids["parent"], "acc"), key=lambda m: m.step)
    sent_before = [Metric(m.key, m.value, m.timestamp, m.step) for m in history[:1200]]
    server.log_batch(half, metrics=sent_before[:1000])
    server.log_batch(half, metrics=sent_before[1000:])
    server.log_artifact(half, str(project / "files" / "model.bin"))

    done = sync(project, "--json")
    assert done.exit_code == 0, done.output
    by_run = {u["run_id"]: u for u in json.loads(done.output)["uploads"]}
    assert by_run[ids["parent"]]["destination_run_id"] == half
    assert by_run[ids["parent"]]["points"] == 5001 - 1200
    assert by_run[ids["parent"]]["artifacts"] == 1  # nested/deeper/notes.txt only
    assert by_run[ids["parent"]]["detail"] == "finished an upload that was cut short"
    assert metric_points(server, half) == metric_points(local, ids["parent"])
    assert server.get_run(half).info.status == "FINISHED"
    assert server.get_run(half).info.end_time == parent.info.end_time
    remote = uploaded_runs(server, experiment)
    assert remote[ids["fold-0"]].data.tags["mlflow.parentRunId"] == half
    assert sorted(artifact_tree(server, half, tmp_path / "there")) == [
        "model.bin",
        "nested/deeper/notes.txt",
    ]
