"""``trackcfg sync`` on real stores: which store a journal or an offline run is for (however its
URI is written), a project that moved since its offline runs were made, and what a failure
says.  The destination is a real ``mlflow server``; offline runs are made by real offline
sessions (``server.offline: always``) or, for values a session would refuse, with MLflow's
client in the project's local store."""

from __future__ import annotations

import json
import shutil
import textwrap
import uuid
from pathlib import Path

from click.testing import CliRunner, Result
from helpers import TRACKING_SETTINGS, project_folder, run_python, store_uri, subprocess_env
from mlflow import MlflowClient

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
    try.  Sync says the server answered with an error (not "could not be reached"), never
    shows the password, and uploads the other run."""
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
        f"failed: run {ids['poisoned']} 'poisoned' (experiment '{experiment}'): tracking "
        f"server {shown} answered every try with an error status (too many 500 error "
        "responses)"
    ) in result.output
    assert f"uploaded: run {ids['fine']} 'fine'" in result.output


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
