"""``MlflowArtifactDataset``: any Kedro dataset, saved locally and logged as an artifact."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset, DatasetError
from kedro.io.core import parse_dataset_definition

from trackcfg._artifacts import check_artifact_path
from trackcfg.exceptions import RunError, TrackcfgError

from ._common import loggable
from ._target import Target, open_target_backend, pipeline_target

__all__ = ["MlflowArtifactDataset"]

_LOCAL = (None, "", "file")


class MlflowArtifactDataset(AbstractDataset[Any, Any]):
    """Wraps any Kedro dataset: ``save`` saves it as the wrapped dataset does, then logs the
    saved file (or folder) as an artifact of the pipeline's run, under ``artifact_path``
    (default: the top of the run's artifacts), as ``<artifact_path>/<file name>``.  ``load``
    reads the local file; with ``run_id``, it first downloads ``<artifact_path>/<file name>``
    from that run over the local file.

    ::

        report:
          type: trackcfg.kedro.datasets.MlflowArtifactDataset
          artifact_path: reports
          dataset:
            type: pandas.CSVDataset
            filepath: data/08_reporting/report.csv

    ``credentials`` are handed to the wrapped dataset when its own config has none.  In a
    pipeline whose tracking is disabled (``disable_tracking.pipelines``, ``TRACKCFG_DISABLE``)
    it saves and loads locally only, and no run is started.  A plain object (the wrapped
    dataset is an attribute), so it pickles: ``ParallelRunner`` works, fork and spawn.
    """

    def __init__(
        self,
        dataset: str | dict[str, Any],
        run_id: str | None = None,
        artifact_path: str | None = None,
        credentials: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        config: dict[str, Any] = (
            {"type": dataset} if isinstance(dataset, str) else dict(dataset or {})
        )
        if not config.get("type"):
            raise DatasetError(
                "MlflowArtifactDataset: 'dataset' must name the dataset to wrap, e.g. "
                "dataset: {type: pandas.CSVDataset, filepath: data/08_reporting/x.csv}"
            )
        if credentials is not None and "credentials" not in config:
            config["credentials"] = credentials
        dataset_class, dataset_args = parse_dataset_definition(config)
        self._dataset: AbstractDataset[Any, Any] = dataset_class(**dataset_args)
        self.run_id = run_id
        # A trailing "/" names the same folder; a leading one is refused at save (absolute).
        self.artifact_path = artifact_path.rstrip("/") or artifact_path if artifact_path else None
        self.metadata = metadata
        self._logging_activated = True  # kedro-mlflow's switch; the pipeline's wins

    @property
    def dataset(self) -> AbstractDataset[Any, Any]:
        """The wrapped dataset."""
        return self._dataset

    # ------------------------------------------------------------------ where the file is

    def _local_path(self, *, saving: bool) -> PurePosixPath:
        inner: Any = self._dataset
        if getattr(inner, "_version", None):
            if saving:  # the version the save just used (kedro keeps it after the save)
                return PurePosixPath(inner._get_versioned_path(inner.resolve_save_version()))
            return PurePosixPath(inner._get_load_path())
        for attribute in ("_filepath", "_path"):
            value = getattr(inner, attribute, None)
            if value is not None:
                return PurePosixPath(str(value))
        raise DatasetError(
            f"MlflowArtifactDataset: the wrapped {type(inner).__name__} has no file path "
            "(no _filepath or _path attribute), so there is no file to log"
        )

    def _protocol(self) -> str | None:
        return getattr(self._dataset, "_protocol", None)

    def _artifact_file(self, local: PurePosixPath) -> str:
        return f"{self.artifact_path}/{local.name}" if self.artifact_path else local.name

    # ------------------------------------------------------------------ save / load

    def save(self, data: Any) -> None:
        target = pipeline_target(self.run_id)
        if self.artifact_path and loggable(target, "MlflowArtifactDataset", warn=False):
            try:  # before the file is saved: nothing half done
                check_artifact_path("MlflowArtifactDataset", "artifact_path", self.artifact_path)
            except RunError as exc:
                raise DatasetError(str(exc)) from None
        self._dataset.save(data)
        if not loggable(target, "MlflowArtifactDataset", self._logging_activated):
            return
        local = self._local_path(saving=True)
        if self._protocol() in _LOCAL:
            self._log(target, Path(local))
            return
        # A remote filesystem (s3://, gcs://): a local copy to log.
        with tempfile.TemporaryDirectory(prefix="trackcfg-artifact-") as folder:
            copy = Path(folder) / local.name
            fs: Any = getattr(self._dataset, "_fs")  # noqa: B009
            fs.get(_fs_path(self._protocol(), local), str(copy), recursive=True)
            self._log(target, copy)

    def _log(self, target: Target, path: Path) -> None:
        try:
            if target.through_session:
                assert target.session is not None
                target.session.log_artifact(path, self.artifact_path)
                return
            assert target.run_id is not None
            backend = open_target_backend(target, "MlflowArtifactDataset")
            try:
                backend.log_artifact(target.run_id, os.fspath(path), self.artifact_path)
            finally:
                backend.close()
        except TrackcfgError as exc:
            raise DatasetError(
                f"MlflowArtifactDataset: the file was saved at {path} but could not be logged "
                f"to run {target.run_id}: {exc}"
            ) from exc

    def load(self) -> Any:
        target = pipeline_target(self.run_id)
        # Without run_id, the local file is read (it is what the pipeline's run holds).
        if self.run_id and not target.disabled:
            self._download(target)
        return self._dataset.load()

    def _download(self, target: Target) -> None:
        from trackcfg._backend import download_artifacts

        assert target.run_id is not None
        local = self._local_path(saving=False)
        artifact = self._artifact_file(local)
        if target.tracking_uri is None:
            open_target_backend(target, "MlflowArtifactDataset").close()  # raises, says why
        assert target.tracking_uri is not None
        with tempfile.TemporaryDirectory(prefix="trackcfg-artifact-") as folder:
            try:
                downloaded = Path(
                    download_artifacts(
                        target.tracking_uri, target.registry_uri, target.run_id, artifact, folder
                    )
                )
            except TrackcfgError as exc:
                raise DatasetError(f"MlflowArtifactDataset: {exc}") from exc
            if self._protocol() in _LOCAL:
                destination = Path(local)
                destination.parent.mkdir(parents=True, exist_ok=True)
                if downloaded.is_dir():
                    shutil.copytree(downloaded, destination, dirs_exist_ok=True)
                else:
                    shutil.copyfile(downloaded, destination)
            else:
                fs: Any = getattr(self._dataset, "_fs")  # noqa: B009
                fs.put(str(downloaded), _fs_path(self._protocol(), local), recursive=True)

    # ------------------------------------------------------------------ the rest

    def _exists(self) -> bool:
        return bool(self._dataset.exists())

    def _release(self) -> None:
        self._dataset.release()

    def _describe(self) -> dict[str, Any]:
        return {
            "dataset": self._dataset._describe(),
            "run_id": self.run_id,
            "artifact_path": self.artifact_path,
        }


def _fs_path(protocol: str | None, path: PurePosixPath) -> str:
    from kedro.io.core import get_filepath_str

    return get_filepath_str(path, protocol or "file")
