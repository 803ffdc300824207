"""Uploading an offline run (``trackcfg sync``): a local run of 100,000 metric points (10 keys x
10,000 steps) uploaded to a real `mlflow server`, against the floor: the same points sent with
`MlflowClient.log_batch` in 1,000-point requests to the same server, in the same run.

The upload is timed from the call (``_upload.upload_offline_runs``, what ``trackcfg sync`` runs
after its dry pass) to the local run marked uploaded: the local store is read, the experiment
looked up, the run created, every point sent, the run ended and the local run tagged.  The
floor only creates a run and sends the points it already holds in memory.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path

from _common import QUICK, interleaved, mlflow_server, ms, table
from mlflow import MlflowClient
from mlflow.entities import Metric

from trackcfg import load_config
from trackcfg._backend import open_backend
from trackcfg._rules import OFFLINE_DESTINATION_TAG
from trackcfg._upload import SOURCE_RUN_TAG, UPLOADED_TO_TAG, local_store, upload_offline_runs

KEYS, STEPS = (10, 100) if QUICK else (10, 10_000)
BATCH = 1000
TITLE = "Uploading an offline run"


def run() -> str:
    points = [
        Metric(f"m{k}", float(k * step), 1_700_000_000_000 + step, step)
        for k in range(KEYS)
        for step in range(STEPS)
    ]
    with mlflow_server() as url, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "proj"
        (root / "mlruns").mkdir(parents=True)
        local = MlflowClient(local_store(root).tracking_uri)
        name = f"bench-upload-{uuid.uuid4().hex[:8]}"
        experiment = local.create_experiment(
            name, artifact_location=(root / "mlruns" / "artifacts").as_uri()
        )
        run_id = local.create_run(
            experiment, run_name="offline", tags={OFFLINE_DESTINATION_TAG: url}
        ).info.run_id
        for start in range(0, len(points), BATCH):
            local.log_batch(run_id, metrics=points[start : start + BATCH])
        local.set_terminated(run_id, "FINISHED")
        config = load_config(
            overrides={"server.mlflow_tracking_uri": url, "tracking.experiment.name": name}
        )
        server = MlflowClient(url)
        floor_experiment = server.create_experiment(f"{name}-floor")

        def fresh() -> None:
            """Not timed: the local run unmarked, earlier uploads deleted at the server."""
            if UPLOADED_TO_TAG in local.get_run(run_id).data.tags:
                local.delete_tag(run_id, UPLOADED_TO_TAG)
            found = server.get_experiment_by_name(name)
            if found is not None:
                for earlier in server.search_runs(
                    [found.experiment_id], f"tags.`{SOURCE_RUN_TAG}` = '{run_id}'"
                ):
                    server.delete_run(earlier.info.run_id)

        def upload() -> None:
            results = upload_offline_runs(
                config, root, tracking_uri=url, factory=open_backend, dry_run=False
            )
            assert [r.state for r in results] == ["uploaded"], results
            assert results[0].points == len(points)

        def floor() -> None:
            target = server.create_run(floor_experiment).info.run_id
            for start in range(0, len(points), BATCH):
                server.log_batch(target, metrics=points[start : start + BATCH])

        started = time.perf_counter()
        dry = upload_offline_runs(
            config, root, tracking_uri=url, factory=open_backend, dry_run=True
        )
        dry_time = time.perf_counter() - started
        assert dry[0].points == len(points)
        medians = interleaved(
            {"upload": upload, "floor": floor}, repeats=1 if QUICK else 3, setup=fresh
        )
    total = len(points)
    ratio = medians["upload"] / medians["floor"]
    rows: list[tuple[str, ...]] = [
        (
            f"upload_offline_runs ({KEYS} keys x {STEPS} steps)",
            ms(medians["upload"]),
            f"{total / medians['upload']:.0f}",
        ),
        (
            f"floor: MlflowClient.log_batch, {BATCH}-point requests",
            ms(medians["floor"]),
            f"{total / medians['floor']:.0f}",
        ),
        ("dry pass counting points (--dry-run; a terminal's progress bar)", ms(dry_time), "-"),
    ]
    text = table(f"{TITLE}: {total} points", rows, ("case", "time", "points/s"))
    text += (
        f"\nUpload / floor: {ratio:.2f}x (goal: at most 1.5x). The upload reads each history "
        "from the local SQLite store and sends full 1000-point log_batch requests. `trackcfg "
        "sync` in a terminal counts the points first for its progress bar (the dry pass: the "
        "local histories read once more); with --json or output not to a terminal it does "
        "not.\n"
    )
    return text


if __name__ == "__main__":
    print(run())
