"""Uploading offline runs to their server: the other half of ``trackcfg sync``.

A session that could not (``server.offline: auto``) or must not (``always``) reach its server
logs into the project's local store (``<root>/mlruns``) and tags each run, children too,
``trackcfg.offline.destination`` = the server's URI (password masked).  ``upload_offline_runs``
copies the runs tagged for the configured server there, with MLflow's client (not
mlflow-export-import: it keeps neither start and end times nor status, and imports a run
twice when asked twice):

- parents before children; the experiment of the local run's name is found or created at the
  destination by the config's rules (``tracking.experiment``), as a session does;
- the destination run: the same name, start time, tags (``mlflow.parentRunId`` mapped to the
  uploaded parent; ``trackcfg.offline.destination`` kept: it says the run was made offline),
  params, every metric point (step and timestamp kept) in full-size ``log_batch`` requests,
  every artifact file (bytes equal), the MLflow 3 models the run logged (``_models``), then
  its status and end time;
- tags, params, points and files go through ``_delivery.Delivery``, as the live sender's and
  the journal replay's records do: a value the server refuses (a 400, the same 5xx again and
  again) is isolated and reported by name, the rest is sent, and the run is ``failed`` and
  left unmarked (its children go into it all the same); the server away fails the run at
  once (``give_up``) and the runs after it without asking again;
- "the configured server" is told by ``_store.same_store`` (however either URI is written);
- artifacts are read from the local store's folder, found under ``<root>/mlruns`` where the
  project is now (``artifact_folder``: the store records absolute paths, and projects move);
  a run whose artifacts are found nowhere fails and is not marked;
- the link both ways: the uploaded run has ``trackcfg.sync.source_run`` (the local run's id)
  and ``trackcfg.sync.source_store`` (the local store, masked); the local run gets
  ``trackcfg.sync.uploaded_to`` (the uploaded run's id) last, once all is there.  A marked run
  is never uploaded again.  A sync killed half-way leaves an unmarked local run and a partial
  destination run: the next sync finds that run by ``trackcfg.sync.source_run`` and sends only
  the points it lacks (``_sync.point_key``) and the files it lacks (or holds with another
  size), then ends and marks it.

An offline run's journal (buffered logging) targets the local store: it is replayed there
first (``_sync.sync_journals``), so the local run is complete before it is copied.  A run
still RUNNING after that is left: either its journal is locked by a live session, or it has
none (a ``logging.mode: sync`` session is logging to it, or was killed without a journal).

Two syncs of one project never upload at once (a lock file in ``.trackcfg/``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import posixpath
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

import attrs

from ._backend import ArtifactFile, Backend, BackendFactory, RunDetails, RunStatus
from ._batching import plan_batches
from ._config import TrackingConfig
from ._connect import offline_store
from ._delivery import Delivery, give_up, refusal_text
from ._journal import JournalRecord
from ._records import Batch, Limits, MetricPoint
from ._rules import OFFLINE_DESTINATION_TAG, ExperimentAction, experiment_plan
from ._store import (
    ARTIFACTS,
    StoreLocation,
    error_text,
    mask_text,
    mask_uri,
    same_store,
    store_refusal,
)
from ._sync import SyncResult, journal_folder, known_points, point_key, sync_journals
from .exceptions import ServerError, TrackcfgError, TrackingUnavailableError

__all__ = [
    "SOURCE_MODEL_TAG",
    "SOURCE_RUN_TAG",
    "SOURCE_STORE_TAG",
    "SYNC_TAG_PREFIX",
    "UPLOADED_TO_TAG",
    "UploadResult",
    "local_store",
    "progress_units",
    "upload_offline_runs",
]

logger = logging.getLogger(__name__)

SYNC_TAG_PREFIX = "trackcfg.sync."
SOURCE_RUN_TAG = "trackcfg.sync.source_run"
SOURCE_STORE_TAG = "trackcfg.sync.source_store"
UPLOADED_TO_TAG = "trackcfg.sync.uploaded_to"
SOURCE_MODEL_TAG = "trackcfg.sync.source_model"
_PARENT_TAG = "mlflow.parentRunId"
_NAME_TAG = "mlflow.runName"
_USER_TAG = "mlflow.user"
#: The lock two syncs of one project take, under the project root.
LOCK_FILE = ".trackcfg/upload.lock"

_LIVE = (
    "still RUNNING: a running session is logging to it (its journal is in use); sync again "
    "after it ends"
)
_UNMARKED = "not marked uploaded: the next sync sends it again"
_NO_END = (
    "still RUNNING and no journal says how it ended: a session in tracking.logging.mode: sync "
    "may be logging to it (sync again after it ends), or its process was killed"
)


def local_store(root: Path) -> StoreLocation:
    """Where offline runs of the project ``root`` live: its local store ``<root>/mlruns``."""
    return offline_store(root)


@attrs.frozen(kw_only=True)
class UploadResult:
    """What became of one offline run."""

    run_id: str  # in the local store
    name: str | None
    experiment: str
    parent_run_id: str | None  # the local parent, when the run is a child
    destination: str  # the server, masked
    status: str  # the run's status (its end status once uploaded)
    points: int  # metric points (to) send
    artifacts: int  # artifact files (to) send
    state: str  # "uploaded" | "would upload" | "running" | "other destination" | "failed"
    destination_run_id: str | None = None
    detail: str = ""
    models: int = 0  # MLflow 3 logged models (to) send with the run

    @property
    def ok(self) -> bool:
        return self.state in ("uploaded", "would upload", "other destination")


def upload_offline_runs(
    config: TrackingConfig,
    root: Path,
    *,
    tracking_uri: str,
    factory: BackendFactory,
    dry_run: bool = False,
    count: bool = True,
    progress: Callable[[int], None] | None = None,
) -> list[UploadResult]:
    """Upload (with ``dry_run``: list, contacting no server) the project's offline runs
    tagged for ``tracking_uri`` to it; ``progress`` is told of each point and file sent.
    Runs tagged for another destination are reported and left.  ``count=False``: a dry run
    does not read the histories and artifact lists to count points and files (it costs
    about a third of an upload's time)."""
    local = local_store(root)
    db = Path(local.tracking_uri[len("sqlite:///") :])
    if same_store(local.tracking_uri, tracking_uri) or not db.is_file():
        return []  # the configured store is the local one, or no local store: nothing offline
    shown = mask_uri(tracking_uri)
    # Journals of offline runs target the local store: completed there first.
    journals = sync_journals(
        journal_folder(config.tracking.logging.journal_dir, root),
        tracking_uri=local.tracking_uri,
        shown_uri=mask_uri(local.tracking_uri),
        factory=factory,
        dry_run=dry_run,
    )
    pending = {r.run_id: r for r in journals if r.state in ("would send", "in use", "failed")}
    source = factory(local.tracking_uri, None)
    try:
        with contextlib.ExitStack() as stack:
            if not dry_run:
                stack.enter_context(_upload_lock(root))
            return _Uploader(
                config=config,
                root=root,
                source=source,
                source_uri=mask_uri(local.tracking_uri),
                tracking_uri=tracking_uri,
                shown=shown,
                factory=factory,
                journals=pending,
                progress=progress,
                count=count,
            ).run(dry_run=dry_run)
    finally:
        source.close()


@contextlib.contextmanager
def _upload_lock(root: Path) -> Iterator[None]:
    """One uploading sync per project at a time (two would upload a run twice)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: not locked
        yield
        return
    path = root / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrackcfgError(
                f"another trackcfg sync is uploading this project's offline runs (it holds "
                f"{path}); let it finish, then sync again"
            ) from None
        yield
    finally:
        os.close(descriptor)


def _depth(run: RunDetails, by_id: dict[str, RunDetails]) -> int:
    depth, seen = 0, {run.id}
    parent = run.tags.get(_PARENT_TAG)
    while parent in by_id and parent not in seen:
        seen.add(parent)
        depth += 1
        parent = by_id[parent].tags.get(_PARENT_TAG)
    return depth


@attrs.define(kw_only=True)
class _Uploader:
    config: TrackingConfig
    root: Path
    source: Backend
    source_uri: str
    tracking_uri: str
    shown: str
    factory: BackendFactory
    journals: dict[str, SyncResult]
    progress: Callable[[int], None] | None
    count: bool = True
    _destination: Backend | None = None
    _limits: Limits | None = None
    _experiments: dict[str, str] = attrs.Factory(dict)
    _unreachable: str | None = None

    def run(self, *, dry_run: bool) -> list[UploadResult]:
        names = {e.id: e.name for e in self.source.list_experiments()}
        offline = self.source.search_runs(
            sorted(names), f"tags.`{OFFLINE_DESTINATION_TAG}` LIKE '%'"
        )
        by_id = {run.id: run for run in offline}
        offline.sort(key=lambda run: (_depth(run, by_id), run.start_time or 0, run.id))
        results: list[UploadResult] = []
        uploaded: dict[str, str] = {  # local id -> destination id, of runs done before
            run.id: run.tags[UPLOADED_TO_TAG] for run in offline if UPLOADED_TO_TAG in run.tags
        }
        try:
            for run in offline:
                if run.id in uploaded:
                    continue
                experiment = names.get(run.experiment_id, "?")
                result = self._one(run, experiment, by_id, uploaded, dry_run=dry_run)
                # A run with a refused value is made all the same: its children go in it.
                if result.destination_run_id is not None and not dry_run:
                    uploaded[run.id] = result.destination_run_id
                results.append(result)
        finally:
            if self._destination is not None:
                self._destination.close()
        return results

    def _one(
        self,
        run: RunDetails,
        experiment: str,
        by_id: dict[str, RunDetails],
        uploaded: dict[str, str],
        *,
        dry_run: bool,
    ) -> UploadResult:
        parent = run.tags.get(_PARENT_TAG)
        result = UploadResult(
            run_id=run.id,
            name=run.name,
            experiment=experiment,
            parent_run_id=parent,
            destination=mask_uri(run.tags[OFFLINE_DESTINATION_TAG]),
            status=run.status.value,
            points=0,
            artifacts=0,
            state="would upload" if dry_run else "uploaded",
        )
        if not same_store(run.tags[OFFLINE_DESTINATION_TAG], self.tracking_uri):
            return attrs.evolve(
                result,
                state="other destination",
                detail="not the configured store: left as it is (sync it with a config naming "
                "that store)",
            )
        journal = self.journals.get(run.id)
        to_complete = journal is not None and journal.state == "would send"
        if journal is not None and journal.state == "failed":
            detail = f"its journal could not be completed in the local store: {journal.detail}"
            return attrs.evolve(result, state="failed", detail=detail)
        if run.status is RunStatus.RUNNING and not (dry_run and to_complete):
            live = journal is not None and journal.state == "in use"
            return attrs.evolve(result, state="running", detail=_LIVE if live else _NO_END)
        if parent in by_id and parent not in uploaded and not dry_run:
            return attrs.evolve(
                result, state="failed", detail=f"its parent run {parent} is not uploaded"
            )
        if self._unreachable is not None:
            return attrs.evolve(result, state="failed", detail=self._unreachable)
        try:
            if dry_run:
                detail = "its journal is completed in the local store first" if to_complete else ""
                if not self.count:
                    return attrs.evolve(result, detail=detail)
                points = sum(len(self.source.metric_history(run.id, k)) for k in run.metric_keys)
                files = self._artifact_list(run)
                models = len(self.source.logged_models(run.experiment_id, run.id))
                return attrs.evolve(
                    result, points=points, artifacts=len(files), models=models, detail=detail
                )
            parent_id = uploaded.get(parent, parent) if parent else None
            return self._upload(run, experiment, parent_id, result)
        except ServerError as exc:  # it answers, failing this run: the next may pass
            return attrs.evolve(result, state="failed", detail=mask_text(str(exc)))
        except TrackingUnavailableError as exc:
            self._unreachable = mask_text(str(exc))
            return attrs.evolve(result, state="failed", detail=self._unreachable)
        except TrackcfgError as exc:
            return attrs.evolve(result, state="failed", detail=mask_text(str(exc)))
        except Exception as exc:  # a store failure the backend does not translate (HTTP 500)
            # Not exc_info: MLflow's chained errors name the store's URL, credentials included.
            logger.debug("uploading run %s failed: %s", run.id, error_text(exc, 2000))
            return attrs.evolve(result, state="failed", detail=store_refusal(exc))

    def _backend(self) -> tuple[Backend, Limits]:
        if self._destination is None:
            self._destination = self.factory(self.tracking_uri, None)
            self._limits = self.factory.limits()
        assert self._limits is not None
        return self._destination, self._limits

    def _experiment(self, backend: Backend, name: str) -> str:
        if name in self._experiments:
            return self._experiments[name]
        settings = self.config.tracking.experiment
        plan = experiment_plan(name, backend.get_experiment(name), settings)
        if plan.refusal is not None:
            raise plan.refusal.error(self.shown)
        if plan.action is ExperimentAction.CREATE:
            location = settings.create_experiment_kwargs.artifact_location
            if location is not None and "://" not in location and not location.startswith("/"):
                location = (self.root / location).as_uri()
            experiment_id = backend.create_experiment(
                name, location, settings.create_experiment_kwargs.tags
            )
        else:
            assert plan.experiment_id is not None
            experiment_id = plan.experiment_id
            if plan.action is ExperimentAction.RESTORE:
                backend.restore_experiment(experiment_id)
        self._experiments[name] = experiment_id
        return experiment_id

    def _upload(
        self, run: RunDetails, experiment: str, parent_id: str | None, result: UploadResult
    ) -> UploadResult:
        backend, limits = self._backend()
        experiment_id = self._experiment(backend, experiment)
        found = backend.search_runs([experiment_id], f"tags.`{SOURCE_RUN_TAG}` = '{run.id}'")
        resumed = bool(found)
        if found:  # a sync cut short made it
            target = min(found, key=lambda r: (r.start_time or 0, r.id)).id
        else:
            # Made with the tags that say where it comes from (how a later sync finds it) and
            # its user (the run's own field); the run's other tags go through the delivery.
            tags = {SOURCE_RUN_TAG: run.id, SOURCE_STORE_TAG: self.source_uri}
            if parent_id is not None:
                tags[_PARENT_TAG] = parent_id
            if _USER_TAG in run.tags:
                tags[_USER_TAG] = run.tags[_USER_TAG]
            target = backend.create_run(
                experiment_id=experiment_id, name=run.name, start_time=run.start_time, tags=tags
            ).id
        # What the journal replay sends with (retries, a refused entity found and named, the
        # server away given up on at once: ``_delivery.give_up``); params and tags again on a
        # resumed upload (idempotent).
        delivery = Delivery(backend=backend, run_id=target, limits=limits, wait=give_up)
        tags = {
            k: v
            for k, v in run.tags.items()
            if not k.startswith(SYNC_TAG_PREFIX) and k not in (_PARENT_TAG, _NAME_TAG, _USER_TAG)
        }
        delivery.send([JournalRecord(seq=0, params=run.params, tags=tags)])
        points = self._metrics(run, delivery, limits, resumed=resumed)
        files = self._artifacts(run, delivery, resumed=resumed)
        models = self._models(run, backend, experiment_id, target)
        if run.status is not RunStatus.RUNNING:
            backend.terminate(target, run.status, run.end_time)
        done = attrs.evolve(
            result,
            points=points,
            artifacts=files,
            models=models,
            destination_run_id=target,
            detail="finished an upload that was cut short" if resumed else "",
        )
        if delivery.refused:  # not marked: each sync tries it again, and says so
            detail = "; ".join(
                d for d in (refusal_text(delivery.refused), _UNMARKED, done.detail) if d
            )
            return attrs.evolve(done, state="failed", detail=detail)
        self.source.log_batch(run.id, Batch(tags=((UPLOADED_TO_TAG, target),)))
        return done

    def _metrics(
        self, run: RunDetails, delivery: Delivery, limits: Limits, *, resumed: bool
    ) -> int:
        sent = 0
        held: list[MetricPoint] = []
        backend, target = delivery.backend, delivery.run_id

        def send(points: Sequence[MetricPoint], *, all_of_them: bool) -> list[MetricPoint]:
            nonlocal sent
            batches = plan_batches(metrics=points, limits=limits)
            kept = [] if all_of_them or not batches else list(batches.pop().metrics)
            for batch in batches:  # one request each (full-size: a partial one is kept back)
                delivery.send([JournalRecord(seq=0, metrics=batch.metrics)])
                sent += len(batch.metrics)
                if self.progress is not None:
                    self.progress(len(batch.metrics))
            return kept

        keys = list(run.metric_keys)
        # The next history is read from the local store while this one is sent: the reading
        # (SQLAlchemy building objects) and the server's work overlap instead of adding up.
        with concurrent.futures.ThreadPoolExecutor(1, "trackcfg-upload-read") as reader:
            ahead = [reader.submit(self.source.metric_history, run.id, key) for key in keys[:1]]
            for i, key in enumerate(keys):
                history = ahead.pop().result()
                if i + 1 < len(keys):
                    ahead.append(reader.submit(self.source.metric_history, run.id, keys[i + 1]))
                if resumed:
                    known = known_points(backend, target, [key])
                    history = [m for m in history if point_key(m) not in known]
                held += history
                if len(held) >= limits.metrics_per_batch:
                    held = send(held, all_of_them=False)
        send(held, all_of_them=True)
        return sent

    def _artifact_list(self, run: RunDetails) -> list[ArtifactFile]:
        folder = artifact_folder(run.artifact_uri, local_store(self.root))
        return self.source.artifact_files(run.id) if folder is None else local_files(folder)

    def _artifacts(self, run: RunDetails, delivery: Delivery, *, resumed: bool) -> int:
        backend, target = delivery.backend, delivery.run_id
        folder = artifact_folder(run.artifact_uri, local_store(self.root))
        files = self.source.artifact_files(run.id) if folder is None else local_files(folder)
        there = {f.path: f.size for f in backend.artifact_files(target)} if resumed else {}
        sent = 0
        with tempfile.TemporaryDirectory(prefix="trackcfg-upload-") as downloads:
            for file in files:
                if file.path in there and there[file.path] == file.size:
                    continue
                if folder is None:
                    local = self.source.download_artifact(run.id, file.path, downloads)
                else:
                    local = str(folder.joinpath(*file.path.split("/")))
                folder_there = posixpath.dirname(file.path) or None
                delivery.send([JournalRecord(seq=0, artifacts=((local, folder_there),))])
                if folder is None:
                    os.remove(local)
                sent += 1
                if self.progress is not None:
                    self.progress(1)
        return sent

    def _models(self, run: RunDetails, backend: Backend, experiment_id: str, target: str) -> int:
        """Upload the run's MLflow 3 logged models with it, as the uploaded run's: files (their
        ``MLmodel`` naming the new model and run), params, tags, metrics, status, the link to
        the run (its output at the step it was logged) and registered versions.  A model an
        earlier sync cut short made (tagged ``trackcfg.sync.source_model``) is finished, never
        made twice.  A model whose files cannot be read fails the run's upload."""
        found = self.source.logged_models(run.experiment_id, run.id)
        if not found:
            return 0
        there = {
            m.tags.get(SOURCE_MODEL_TAG): m for m in backend.logged_models(experiment_id, target)
        }
        for model in found:
            done = there.get(model.id)
            if (
                done is not None
                and done.status == model.status
                and len(done.versions) >= len(model.versions)
            ):
                continue
            what = f"the files of its logged model {model.name!r} ({model.id})"
            folder = artifact_folder(model.artifact_uri, local_store(self.root), what)
            if folder is None:
                raise TrackcfgError(
                    f"{what} are at {mask_uri(model.artifact_uri)}, which trackcfg sync does "
                    "not read (only the local store's own folder): the model is not uploaded"
                )
            model_id = (
                done.id
                if done is not None
                else backend.create_logged_model(
                    experiment_id=experiment_id,
                    name=model.name,
                    run_id=target,
                    tags={**model.tags, SOURCE_MODEL_TAG: model.id},
                    params=model.params,
                    model_type=model.model_type,
                )
            )
            if local_files(folder):
                backend.log_model_files(model_id, str(folder), target)
            backend.link_model(target, model_id, model.step, model.metrics)
            if model.status in ("READY", "FAILED"):
                backend.finalize_logged_model(model_id, model.status)
            for version in model.versions:
                backend.register_model_version(model_id, target, version)
        return len(found)


def _recorded_folder(uri: str | None) -> Path | None:
    if uri is None or not uri.startswith("file:"):
        return None
    return Path(unquote(urlsplit(uri).path))


def artifact_folder(
    uri: str | None, local: StoreLocation, what: str = "its artifacts"
) -> Path | None:
    """The folder holding the files the local store ``local`` records at ``uri`` (an offline
    run's artifacts, a logged model's files): that folder, or, when the project moved (or was
    copied) since, the same place under the project's ``mlruns/`` now (the store records
    absolute paths: ``<old root>/mlruns/artifacts/<experiment>/...``).  ``None`` when ``uri``
    is no local folder (the files are read through MLflow).  ``TrackcfgError`` (saying
    ``what`` is missing) when the files cannot be found, so that the run is never marked
    uploaded without them."""
    recorded = _recorded_folder(uri)
    if recorded is None or local.local_folder is None:
        return None
    store = local.local_folder
    parts = recorded.parts
    mapped = old_store = None
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == store.name and parts[i + 1] == ARTIFACTS:
            mapped = store.joinpath(*parts[i + 1 :])
            old_store = Path(*parts[: i + 1])
            break
    for candidate in (mapped, recorded):
        if candidate is not None and candidate.is_dir():
            return candidate
    if (
        mapped is None
        or recorded == mapped
        or (old_store is not None and old_store.is_dir())
        or (store / ARTIFACTS).is_dir()
    ):
        # Where the store (here, or the one this project was copied from) keeps artifacts:
        # there are none (MLflow creates a run's folder at its first file).
        return recorded if mapped is None else mapped
    raise TrackcfgError(
        f"{what} are not found: the local store records them in {recorded}, and this "
        f"project has no {store / ARTIFACTS} (the project moved without it?); copy that "
        "folder along with mlruns/mlflow.db, or, if the run logged no files, create the "
        "empty folder, then run trackcfg sync again"
    )


def local_files(folder: Path) -> list[ArtifactFile]:
    """The files under ``folder`` (its artifacts), as ``ArtifactFile``s: '/'-separated paths
    relative to it; symbolic links are not followed out of it."""
    if not folder.is_dir():
        return []
    files = []
    for current, folders, names in os.walk(folder):
        folders.sort()
        for name in names:
            path = Path(current, name)
            if path.is_symlink() or not path.is_file():
                continue
            relative = path.relative_to(folder).as_posix()
            files.append(ArtifactFile(path=relative, size=path.stat().st_size))
    return sorted(files, key=lambda f: f.path)


def progress_units(results: Sequence[UploadResult]) -> int:
    """What a progress bar over these (dry-run) results counts: points and files."""
    return sum(r.points + r.artifacts for r in results if r.state == "would upload")
