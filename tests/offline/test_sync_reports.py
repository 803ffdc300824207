"""``trackcfg sync`` on real stores: which store a journal or an offline run is for (however its
URI is written), a project that moved since its offline runs were made, and what a failure
says.  The destination is a real ``mlflow server``; offline runs are made by real offline
sessions (``server.offline: always``) or, for values a session would refuse, with MLflow's
client in the project's local store."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from helpers import (
    TRACKING_SETTINGS,
    copy_store,
    log_long_history,
    metric_points,
    project_folder,
    run_python,
    store_uri,
    subprocess_env,
)
from mlflow import MlflowClient
from mlflow.entities import Metric

from trackcfg import TrackingSession, load_config
from trackcfg._cli import cli
from trackcfg._rules import OFFLINE_DESTINATION_TAG
from trackcfg._upload import SOURCE_RUN_TAG, UPLOADED_TO_TAG

WATCHDOG = 180.0
PASSWORD = "pw-5e6f7a8b9c"


def config(uri: str, experiment: str, **server: str) -> str:
    extra = "".join(f"  {key}: {value}\n" for key, value in server.items())
    return (
        f"server:\n  mlflow_tracking_uri: {uri}\n  request_timeout: 5\n  max_retries: 1\n{extra}"
        f"tracking:\n  experiment:\n    name: {experiment}\n"
    )


def sync(project: Path, *args: str) -> Result:
    result = CliRunner().invoke(cli, ["sync", str(project), *args], catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


def localhost_form(url: str) -> str:
    """The same server as ``http://127.0.0.1:<port>``, written as a user may write it."""
    return url.replace("127.0.0.1", "LocalHost") + "/"


def uploaded_run(server: str, experiment: str, local_run_id: str) -> str:
    client = MlflowClient(tracking_uri=server)
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    (run,) = client.search_runs(
        [found.experiment_id], f"tags.`{SOURCE_RUN_TAG}` = '{local_run_id}'"
    )
    return str(run.info.run_id)


def offline_run(project: Path, files: Path) -> str:
    """A real offline session of ``project``: a param, a metric, two artifact files (one
    binary, in a folder) and a text; the local run id."""
    (files / "nested").mkdir(parents=True)
    (files / "nested" / "weights.bin").write_bytes(bytes(range(256)) * 33)
    (files / "readme.md").write_text("# model\n")
    with TrackingSession(load_config(project), name="offline", params={"lr": 0.1}) as s:
        s.log_metrics({"loss": 0.25}, step=1)
        s.log_artifact(files / "nested" / "weights.bin", "model/nested")
        s.log_artifact(files / "readme.md")
        s.log_text("notes", "notes.txt")
        run_id = s.run_id
    assert run_id is not None
    return run_id


EXPECTED_FILES = {
    "model/nested/weights.bin": bytes(range(256)) * 33,
    "readme.md": b"# model\n",
    "notes.txt": b"notes",
}


def server_files(server: str, run_id: str, into: Path) -> dict[str, bytes]:
    client = MlflowClient(tracking_uri=server)
    folder = Path(client.download_artifacts(run_id, "", str(into)))
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


# ---------------------------------------------------------------------------- which store


def test_an_offline_run_goes_to_its_server_however_the_config_writes_its_uri(
    tmp_path: Path, mlflow_server: str, migrated_sqlite_db: Path
) -> None:
    """Made for ``http://127.0.0.1:P``, synced with ``http://LocalHost:P/``: the same server."""
    experiment = f"same-server-{uuid.uuid4().hex[:8]}"
    project = project_folder(
        tmp_path / "proj",
        config=config(mlflow_server, experiment, offline="always"),
        store=migrated_sqlite_db,
    )
    local_id = offline_run(project, tmp_path / "files")
    (project / "mlflow.yml").write_text(config(localhost_form(mlflow_server), experiment))

    result = sync(project, "--json")

    assert result.exit_code == 0, result.output
    (upload,) = json.loads(result.stdout)["uploads"]
    assert (upload["state"], upload["artifacts"]) == ("uploaded", 3), upload
    assert upload_target(project, local_id) == uploaded_run(mlflow_server, experiment, local_id)


def upload_target(project: Path, local_run_id: str) -> str | None:
    return (
        MlflowClient(tracking_uri=store_uri(project))
        .get_run(local_run_id)
        .data.tags.get(UPLOADED_TO_TAG)
    )


LEAVES_A_JOURNAL = textwrap.dedent(
    """
    import os, sys
    from trackcfg import TrackingSession, load_config

    with TrackingSession(load_config(sys.argv[1]), name="left", params={"seed": 1}) as s:
        for step in range(5):
            s.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        print(s.run_id, flush=True)
        os._exit(0)
    """
)


def test_a_journal_is_sent_to_its_server_however_the_config_writes_its_uri_and_others_are_named(
    tmp_path: Path, mlflow_server: str
) -> None:
    """A journal written for ``http://127.0.0.1:P``: left and said so (text and --json) when
    the config names another server; sent when it names ``http://LocalHost:P/``."""
    experiment = f"journal-server-{uuid.uuid4().hex[:8]}"
    project = project_folder(
        tmp_path / "proj",
        config=config(mlflow_server, experiment)
        + "  logging:\n    mode: buffered\n    flush_seconds: 3600\n",
    )
    done = run_python(
        "-c",
        LEAVES_A_JOURNAL,
        str(project),
        cwd=project,
        env=subprocess_env(drop=TRACKING_SETTINGS),
        timeout=WATCHDOG,
    )
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.split()[-1]
    logging = "  logging:\n    mode: buffered\n"
    other = "http://127.0.0.1:9/"  # the discard port: another server, never contacted

    (project / "mlflow.yml").write_text(config(other, experiment) + logging)
    text, as_json = sync(project), sync(project, "--json")

    assert text.exit_code == 0, text.output
    assert (
        f"other server: run {run_id}: written for {mlflow_server}, not the configured store: "
        "left as it is (sync it with a config naming that store)"
    ) in text.output
    (left,) = json.loads(as_json.stdout)["results"]
    assert (left["run_id"], left["state"]) == (run_id, "other server")

    (project / "mlflow.yml").write_text(config(localhost_form(mlflow_server), experiment) + logging)
    sent = sync(project)

    assert sent.exit_code == 0, sent.output
    assert f"sent: run {run_id} (" in sent.output
    history = MlflowClient(tracking_uri=mlflow_server).get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------- a moved project


def test_offline_runs_of_a_moved_project_go_up_with_every_artifact(
    tmp_path: Path, mlflow_server: str, migrated_sqlite_db: Path
) -> None:
    """The local store records its artifacts' absolute folder, which moved with the project:
    they are found under the project's mlruns/ where it is now, byte for byte."""
    experiment = f"moved-{uuid.uuid4().hex[:8]}"
    before = project_folder(
        tmp_path / "login-node" / "proj",
        config=config(mlflow_server, experiment, offline="always"),
        store=migrated_sqlite_db,
    )
    local_id = offline_run(before, tmp_path / "files")
    after = tmp_path / "shared" / "elsewhere" / "proj"
    after.parent.mkdir(parents=True)
    shutil.move(before, after)
    (after / "mlflow.yml").write_text(config(mlflow_server, experiment))

    result = sync(after)

    assert result.exit_code == 0, result.output
    assert "3 file(s)" in result.output
    target = uploaded_run(mlflow_server, experiment, local_id)
    assert server_files(mlflow_server, target, tmp_path / "downloads") == EXPECTED_FILES
    assert upload_target(after, local_id) == target


def test_an_offline_run_whose_artifacts_are_gone_is_never_marked_uploaded(
    tmp_path: Path, mlflow_server: str, migrated_sqlite_db: Path
) -> None:
    """Moved without mlruns/artifacts: the run is reported failed with the reason, exit 1,
    and stays unmarked (a later sync, once the files are back, uploads them)."""
    experiment = f"moved-bare-{uuid.uuid4().hex[:8]}"
    before = project_folder(
        tmp_path / "a" / "proj",
        config=config(mlflow_server, experiment, offline="always"),
        store=migrated_sqlite_db,
    )
    local_id = offline_run(before, tmp_path / "files")
    after = tmp_path / "b" / "proj"
    after.parent.mkdir()
    shutil.move(before, after)
    kept = shutil.move(after / "mlruns" / "artifacts", tmp_path / "kept-artifacts")
    (after / "mlflow.yml").write_text(config(mlflow_server, experiment))

    failed = sync(after)

    assert failed.exit_code == 1, failed.output
    assert f"failed: run {local_id} 'offline'" in failed.output
    assert (
        f"its artifacts are not found: the local store records them in {before / 'mlruns'}"
    ) in failed.output
    assert f"and this project has no {after / 'mlruns' / 'artifacts'}" in failed.output
    assert upload_target(after, local_id) is None

    shutil.move(kept, after / "mlruns" / "artifacts")
    again = sync(after)

    assert again.exit_code == 0, again.output
    target = uploaded_run(mlflow_server, experiment, local_id)
    assert server_files(mlflow_server, target, tmp_path / "downloads") == EXPECTED_FILES


# ---------------------------------------------------------------------------- what a failure says


def test_a_run_the_server_fails_again_and_again_is_a_refusal_and_the_next_run_goes_up(
    tmp_path: Path, pg_mlflow_server: str, migrated_sqlite_db: Path
) -> None:
    """A tag holding NUL: SQLite keeps it, a PostgreSQL-backed server answers 500 to every
    try.  Sync names the tag and says the server answered with an error (not "could not be
    reached"), sends the rest of the run, leaves it unmarked, never shows the password, and
    uploads the other run."""
    experiment = f"refused-{uuid.uuid4().hex[:8]}"
    destination = pg_mlflow_server.replace("http://", f"http://alice:{PASSWORD}@")
    project = project_folder(
        tmp_path / "proj", config=config(destination, experiment), store=migrated_sqlite_db
    )
    client = MlflowClient(tracking_uri=store_uri(project))
    experiment_id = client.create_experiment(
        experiment, artifact_location=(project / "mlruns" / "artifacts").as_uri()
    )
    shown = f"http://alice:***@{pg_mlflow_server.removeprefix('http://')}"
    ids = {}
    for name, tags in (("poisoned", {"note": "a\x00b"}), ("fine", {"note": "ab"})):
        run = client.create_run(
            experiment_id, run_name=name, tags={OFFLINE_DESTINATION_TAG: shown, **tags}
        )
        client.log_metric(run.info.run_id, "loss", 0.5, step=0)
        client.set_terminated(run.info.run_id, "FINISHED")
        ids[name] = run.info.run_id

    result = sync(project)

    assert result.exit_code == 1, result.output
    assert PASSWORD not in result.output
    assert "could not be reached" not in result.output
    assert (
        f"failed: run {ids['poisoned']} 'poisoned' (experiment '{experiment}'): "
        "the store refused tag 'note' = 'a\\x00b': tracking "
        f"server {shown} answered every try with an error status (too many 500 error "
        "responses)"
    ) in result.output
    assert "not marked uploaded: the next sync sends it again" in result.output
    assert f"uploaded: run {ids['fine']} 'fine'" in result.output
    assert upload_target(project, ids["poisoned"]) is None
    server = MlflowClient(tracking_uri=pg_mlflow_server)
    there = server.get_run(uploaded_run(pg_mlflow_server, experiment, ids["poisoned"]))
    assert "note" not in there.data.tags
    assert there.data.metrics == {"loss": 0.5}  # the rest was sent


def test_a_value_the_server_refuses_is_named_the_rest_goes_up_and_the_run_stays_unmarked(
    tmp_path: Path, mlflow_server: str, migrated_sqlite_db: Path
) -> None:
    """A param name the server refuses (``!`` in it), written straight into the local store
    (MLflow's client would refuse it there): sync names the param and the store's message,
    sends everything else (params, tags, every point, the file), exits 1 and leaves the local
    run unmarked; a second sync makes nothing twice and says the same."""
    experiment = f"refused-param-{uuid.uuid4().hex[:8]}"
    project = project_folder(
        tmp_path / "proj", config=config(mlflow_server, experiment), store=migrated_sqlite_db
    )
    client = MlflowClient(tracking_uri=store_uri(project))
    experiment_id = client.create_experiment(
        experiment, artifact_location=(project / "mlruns" / "artifacts").as_uri()
    )
    run_id = client.create_run(
        experiment_id, run_name="huge", tags={OFFLINE_DESTINATION_TAG: mlflow_server, "a": "b"}
    ).info.run_id
    client.log_param(run_id, "lr", "0.1")
    client.log_batch(
        run_id, metrics=[Metric("loss", 1.0 / (s + 1), 1000 + s, s) for s in range(50)]
    )
    (tmp_path / "notes.txt").write_text("notes")
    client.log_artifact(run_id, str(tmp_path / "notes.txt"))
    client.set_terminated(run_id, "FINISHED")
    with sqlite3.connect(project / "mlruns" / "mlflow.db") as db:
        db.execute(
            "INSERT INTO params (key, value, run_uuid) VALUES (?, ?, ?)",
            ("huge!", "7", run_id),
        )

    first = sync(project)

    assert first.exit_code == 1, first.output
    assert f"failed: run {run_id} 'huge'" in first.output
    assert "the store refused param 'huge!' = '7'" in first.output
    assert "Names may only contain alphanumerics" in first.output  # the store's own words
    assert upload_target(project, run_id) is None
    target = uploaded_run(mlflow_server, experiment, run_id)
    server = MlflowClient(tracking_uri=mlflow_server)
    there = server.get_run(target)
    assert there.data.params == {"lr": "0.1"}
    assert there.data.tags["a"] == "b"
    assert there.info.status == "FINISHED"
    history = [(m.step, m.value) for m in server.get_metric_history(target, "loss")]
    assert sorted(history) == [(s, 1.0 / (s + 1)) for s in range(50)]
    assert server_files(mlflow_server, target, tmp_path / "d1") == {"notes.txt": b"notes"}

    again = sync(project, "--json")

    assert again.exit_code == 1, again.output
    # From its first line: where Kedro was imported in this process, its logging config (a
    # rich handler on stdout) prints the refusal's ERROR record there first.
    (upload,) = json.loads(again.stdout[again.stdout.index("{\n") :])["uploads"]
    assert upload["state"] == "failed"
    assert upload["destination_run_id"] == target
    assert "the store refused param 'huge!'" in upload["detail"]
    assert (upload["points"], upload["artifacts"]) == (0, 0)  # all there already
    assert uploaded_run(mlflow_server, experiment, run_id) == target  # still one run
    assert upload_target(project, run_id) is None


def test_a_server_stopped_mid_upload_is_unreachable_and_the_next_sync_finishes_exactly_once(
    tmp_path: Path, migrated_sqlite_db: Path, mlflow_server_launcher: Callable[..., Any]
) -> None:
    """The server goes away while ``trackcfg sync`` uploads a long history: sync says it
    could not be reached, exits 1, marks nothing; with the server back, the next sync sends
    exactly the points the server lacks (counted from what it reports) and marks the run."""
    folder = tmp_path / "server"
    backend = f"sqlite:///{copy_store(migrated_sqlite_db, folder)}"
    server = mlflow_server_launcher(backend, folder / "artifacts")
    port = int(server.url.rpartition(":")[2])
    experiment = f"stopped-{uuid.uuid4().hex[:8]}"
    project = project_folder(
        tmp_path / "proj", config=config(server.url, experiment), store=migrated_sqlite_db
    )
    local = MlflowClient(tracking_uri=store_uri(project))
    experiment_id = local.create_experiment(
        experiment, artifact_location=(project / "mlruns" / "artifacts").as_uri()
    )
    run_id = local.create_run(
        experiment_id, run_name="long", tags={OFFLINE_DESTINATION_TAG: server.url}
    ).info.run_id
    log_long_history(local, run_id, keys=4, steps=10_000)
    local.set_terminated(run_id, "FINISHED", 1_700_000_900_000)
    expected = metric_points(local, run_id)
    server.wait_healthy()
    client = MlflowClient(tracking_uri=server.url)

    process = subprocess.Popen(
        [sys.executable, "-m", "trackcfg", "sync", str(project), "--json"],
        cwd=project,
        env=subprocess_env(drop=TRACKING_SETTINGS),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + WATCHDOG
        while True:  # until the upload has sent some points, not all
            assert process.poll() is None, "the sync ended before the server could be stopped"
            assert time.monotonic() < deadline, "no point reached the server"
            found = client.get_experiment_by_name(experiment)
            runs = client.search_runs([found.experiment_id]) if found is not None else []
            if runs and client.get_metric_history(runs[0].info.run_id, "m0"):
                break
            time.sleep(0.05)
        server.stop()
        out, err = process.communicate(timeout=WATCHDOG)
    finally:
        process.kill()
        process.wait(timeout=WATCHDOG)
    assert process.returncode == 1, (out, err)
    assert "Traceback" not in out + err
    (upload,) = json.loads(out)["uploads"]
    assert upload["state"] == "failed", upload
    assert (
        "could not be reached" in upload["detail"] or "refused the connection" in upload["detail"]
    ), upload
    assert upload_target(project, run_id) is None

    restarted = mlflow_server_launcher(backend, folder / "artifacts", port=port)
    restarted.wait_healthy()
    made = client.get_experiment_by_name(experiment)
    assert made is not None
    (half,) = client.search_runs([made.experiment_id])
    there_before = sum(
        len(client.get_metric_history(half.info.run_id, f"m{key}")) for key in range(4)
    )
    assert 0 < there_before < len(expected)

    done = sync(project, "--json")

    assert done.exit_code == 0, done.output
    (upload,) = json.loads(done.stdout)["uploads"]
    assert upload["state"] == "uploaded", upload
    assert upload["destination_run_id"] == half.info.run_id
    assert upload["points"] == len(expected) - there_before  # each missing point, once
    got = sorted(
        (m.key, m.step, m.timestamp, m.value)
        for key in range(4)
        for m in client.get_metric_history(half.info.run_id, f"m{key}")
    )
    assert got == expected
    assert client.get_run(half.info.run_id).info.status == "FINISHED"
    assert upload_target(project, run_id) == half.info.run_id


# ---------------------------------------------------------------------------- logged models


def test_an_offline_runs_logged_model_and_its_registered_version_go_up_with_it(
    tmp_path: Path, mlflow_server: str, migrated_sqlite_db: Path
) -> None:
    """``mlflow.sklearn.log_model(..., name=, registered_model_name=)`` inside an offline
    session: after sync the server holds the model (files that load and predict the same,
    flavors, params, tags, metrics, status), produced by the uploaded run, and its registered
    version; the local model is tagged nowhere and nothing is made twice by a second sync."""
    import mlflow
    import numpy as np
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped, unused-ignore]

    experiment = f"models-{uuid.uuid4().hex[:8]}"
    registered = f"clf-{uuid.uuid4().hex[:8]}"
    project = project_folder(
        tmp_path / "proj",
        config=config(mlflow_server, experiment, offline="always"),
        store=migrated_sqlite_db,
    )
    x = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0]])
    fitted = LogisticRegression(C=10).fit(x, np.array([0, 0, 0, 1, 1, 1]))
    with TrackingSession(load_config(project), name="trains", params={"lr": 0.1}) as s:
        s.log_metrics({"acc": 0.75}, step=3)
        s.flush(30)
        mlflow.sklearn.log_model(
            fitted,
            name="classifier",
            pip_requirements=["scikit-learn"],
            registered_model_name=registered,
            step=3,
        )
        local_id = s.run_id
    assert local_id is not None
    local = MlflowClient(tracking_uri=store_uri(project), registry_uri=store_uri(project))
    (local_model,) = local.search_logged_models(
        [local.get_run(local_id).info.experiment_id], f"source_run_id = '{local_id}'"
    )

    result = sync(project)
    assert result.exit_code == 0, result.output
    assert "1 model(s)" in result.output
    again = sync(project)
    assert again.exit_code == 0, again.output

    server = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    target = uploaded_run(mlflow_server, experiment, local_id)
    run = server.get_run(target)
    (model,) = server.search_logged_models([run.info.experiment_id], f"source_run_id = '{target}'")
    assert model.name == "classifier"
    assert str(model.status) == "READY"
    assert model.params == local_model.params
    assert {k: v for k, v in model.tags.items() if not k.startswith("trackcfg.sync.")} == (
        local_model.tags
    )
    assert model.tags["trackcfg.sync.source_model"] == local_model.model_id
    assert sorted((m.key, m.value, m.step) for m in model.metrics or []) == sorted(
        (m.key, m.value, m.step) for m in local_model.metrics or []
    )
    assert run.outputs is not None
    assert [(o.model_id, o.step) for o in run.outputs.model_outputs] == [(model.model_id, 3)]
    files = mlflow.artifacts.download_artifacts(
        artifact_uri=model.artifact_location,
        dst_path=str(tmp_path / "m"),
        tracking_uri=mlflow_server,
    )
    loaded = mlflow.sklearn.load_model(files)
    assert list(loaded.predict_proba([[0.5], [2.2]])[:, 1]) == list(
        fitted.predict_proba([[0.5], [2.2]])[:, 1]
    )
    description = mlflow.models.Model.load(files)
    assert "sklearn" in description.flavors
    assert (description.model_id, description.run_id) == (model.model_id, target)
    (version,) = server.search_model_versions(f"name = '{registered}'")
    assert (version.source, version.run_id) == (f"models:/{model.model_id}", target)


# ---------------------------------------------------------------------------- secrets


def test_a_token_in_the_uri_is_in_no_tag_journal_or_output_before_or_after_upload(
    tmp_path: Path, mlflow_server: str, migrated_sqlite_db: Path
) -> None:
    """``http://TOKEN@host``: the offline run's ``trackcfg.offline.destination`` tag, the
    uploaded run's tags, a buffered session's journal and sync's output show ``***``."""
    token = f"tok-{uuid.uuid4().hex}"
    experiment = f"token-{uuid.uuid4().hex[:8]}"
    with_token = mlflow_server.replace("http://", f"http://{token}@")
    shown = mlflow_server.replace("http://", "http://***@")
    project = project_folder(
        tmp_path / "proj",
        config=config(with_token, experiment, offline="always"),
        store=migrated_sqlite_db,
    )
    local_id = offline_run(project, tmp_path / "files")
    local_tags = MlflowClient(tracking_uri=store_uri(project)).get_run(local_id).data.tags
    assert local_tags[OFFLINE_DESTINATION_TAG] == shown

    online = project_folder(
        tmp_path / "online",
        config=config(with_token, experiment) + "  logging:\n    mode: buffered\n",
    )
    with TrackingSession(load_config(online), name="buffered") as s:
        s.log_metrics({"loss": 1.0})
        headers = [p.read_text().splitlines()[0] for p in (online / ".trackcfg").rglob("*.journal")]
    assert headers
    assert all(token not in header and shown in header for header in headers)

    result = sync(project, "--json")
    assert result.exit_code == 0, result.output
    assert token not in result.output
    target = uploaded_run(mlflow_server, experiment, local_id)
    tags = MlflowClient(tracking_uri=mlflow_server).get_run(target).data.tags
    assert tags[OFFLINE_DESTINATION_TAG] == shown
    assert not [value for value in tags.values() if token in value]
