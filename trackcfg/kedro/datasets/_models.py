"""MLflow models as Kedro datasets: kedro-mlflow 2.0.3's three, same names and arguments.

- ``MlflowModelTrackingDataset``: ``save`` logs the model into the pipeline's run (or
  ``run_id``) with ``<flavor>.log_model``; ``load`` loads it back (any later node or run).
- ``MlflowModelLocalFileSystemDataset``: a model folder on the local disk
  (``<flavor>.save_model`` / ``load_model``), Kedro-versioned; it never logs.
- ``MlflowModelRegistryDataset``: loads a registered model by version, stage or alias.

``flavor`` is the import path of an MLflow flavor module (``mlflow.sklearn``,
``mlflow.pyfunc`` with ``pyfunc_workflow``, a custom one).  Every MLflow call goes through
``trackcfg._backend``.  The datasets hold plain values only, so they pickle
(``ParallelRunner``, fork and spawn).
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset, AbstractVersionedDataset, DatasetError, Version

from trackcfg import _backend
from trackcfg._workers import pointed_at
from trackcfg.exceptions import TrackcfgError

from ._common import loggable
from ._target import Target, active_run, open_target_backend, pipeline_target

__all__ = [
    "MlflowModelLocalFileSystemDataset",
    "MlflowModelRegistryDataset",
    "MlflowModelTrackingDataset",
]

PYFUNC_WORKFLOWS = ("python_model", "loader_module")
DEFAULT_NAME = "model"
"""The model's name in its run when ``save_args`` gives none (MLflow's ``name``)."""


def _check_flavor(cls: str, flavor: str | None, pyfunc_workflow: str | None) -> str:
    """The flavor, checked without importing it (importing ``mlflow.*`` costs seconds; it is
    imported, and checked fully, at the first save or load)."""
    if not flavor or not isinstance(flavor, str):
        raise DatasetError(
            f"{cls}: 'flavor' must name an MLflow flavor module, e.g. flavor: mlflow.sklearn"
        )
    if importlib.util.find_spec(flavor.split(".")[0]) is None:
        raise DatasetError(
            f"{cls}: the model flavor {flavor!r} cannot be found (no module "
            f"{flavor.split('.')[0]!r}); give an MLflow flavor module such as mlflow.sklearn"
        )
    if flavor == "mlflow.pyfunc" and pyfunc_workflow not in PYFUNC_WORKFLOWS:
        raise DatasetError(
            f"{cls}: mlflow.pyfunc models need pyfunc_workflow: python_model or "
            f"loader_module (got {pyfunc_workflow!r})"
        )
    return flavor


def _workflow(flavor: str, pyfunc_workflow: str | None) -> str | None:
    return pyfunc_workflow if flavor == "mlflow.pyfunc" else None


@contextlib.contextmanager
def _in_store(target: Target, what: str) -> Iterator[None]:
    """MLflow's current store is the target's for the block (``models:/`` and ``runs:/``
    URIs resolve there); given back afterwards, environment variables included."""
    with pointed_at(open_target_backend(target, what)):
        yield


def _load(cls: str, flavor: str, uri: str, args: dict[str, Any], target: Target | None) -> Any:
    try:
        if target is None or uri.startswith(("/", "file:")):
            return _backend.load_model(flavor, uri, args)
        with _in_store(target, cls):
            return _backend.load_model(flavor, uri, args)
    except ValueError as exc:  # the flavor
        raise DatasetError(f"{cls}: {exc}") from None
    except TrackcfgError as exc:
        raise DatasetError(f"{cls}: {exc}") from exc


class MlflowModelTrackingDataset(AbstractDataset[Any, Any]):
    """A model logged into the pipeline's MLflow run with ``<flavor>.log_model``.

    ::

        classifier:
          type: trackcfg.kedro.datasets.MlflowModelTrackingDataset
          flavor: mlflow.sklearn
          save_args:
            name: classifier               # the model's name in the run (default: model)
            registered_model_name: clf     # also register it (optional)

    ``save`` logs into the pipeline's run, or into ``run_id`` when given.  ``load`` reads,
    in this order: ``load_args.model_uri`` (any MLflow model URI, as in kedro-mlflow); the
    model ``name`` of run ``run_id``; the model this dataset object saved last; the model
    ``name`` of the pipeline's run (``runs:/<run>/<name>``: another node, process or
    runner worker).  With none of those, a ``DatasetError`` says what to give.

    ``artifact_path`` (older kedro-mlflow releases) is taken as the model's ``name``
    (MLflow 3's ``log_model`` deprecates ``artifact_path``).  In a pipeline whose tracking is
    disabled (``disable_tracking.pipelines``, ``TRACKCFG_DISABLE``), or with no run at all,
    ``save`` logs nothing and starts no run: the model is kept in this dataset object, and
    ``load`` in the same process returns it (an explicit ``model_uri`` or ``run_id`` is still
    loaded from the store).
    """

    def __init__(
        self,
        flavor: str,
        pyfunc_workflow: str | None = None,
        load_args: dict[str, Any] | None = None,
        save_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        run_id: str | None = None,
        artifact_path: str | None = None,
    ) -> None:
        self._flavor = _check_flavor(type(self).__name__, flavor, pyfunc_workflow)
        self._pyfunc_workflow = pyfunc_workflow
        self._load_args = dict(load_args or {})
        self._save_args = dict(save_args or {})
        self.metadata = metadata
        self.run_id = run_id or None
        # MLflow 3 names a model in its run with name=; artifact_path is its old spelling.
        legacy = self._save_args.pop("artifact_path", None) or artifact_path
        if not self._save_args.get("name"):
            self._save_args["name"] = str(legacy).strip("/") if legacy else DEFAULT_NAME
        self._user_model_uri: str | None = self._load_args.pop("model_uri", None)
        self._last_saved: _backend.ModelRef | None = None
        self._kept: tuple[Any] | None = None  # the model saved while nothing tracks
        self._logging_activated = True  # kedro-mlflow's switch; the pipeline's wins

    @property
    def name(self) -> str:
        """The model's name in its run."""
        return str(self._save_args["name"])

    @property
    def model_uri(self) -> str | None:
        """The URI of the model saved last (or given as ``load_args.model_uri``)."""
        if self._user_model_uri:
            return self._user_model_uri
        return None if self._last_saved is None else self._last_saved.model_uri

    def save(self, data: Any) -> None:
        cls = type(self).__name__
        if self._user_model_uri:
            raise DatasetError(
                f"{cls}: cannot save a model when load_args.model_uri is given (MLflow does "
                "not overwrite a model); give model_uri only to load an existing model"
            )
        target = pipeline_target(self.run_id)
        if not loggable(target, cls, self._logging_activated):
            self._kept = (data,)
            self._last_saved = None
            return
        try:
            if target.session is not None and target.through_session:
                # MLflow copies the run's params into the model: the buffered ones first.
                target.session.flush(float(target.session.config.server.request_timeout))
            with active_run(target):
                self._last_saved = _backend.log_model(
                    self._flavor,
                    data,
                    self._save_args,
                    _workflow(self._flavor, self._pyfunc_workflow),
                )
        except ValueError as exc:  # the flavor
            raise DatasetError(f"{cls}: {exc}") from None
        except TrackcfgError as exc:
            raise DatasetError(
                f"{cls}: the model could not be logged to run {target.run_id}: {exc}"
            ) from exc
        self._kept = None

    def load(self) -> Any:
        cls = type(self).__name__
        target = pipeline_target(self.run_id)
        if self._user_model_uri:
            return _load(cls, self._flavor, self._user_model_uri, self._load_args, target)
        if self.run_id:
            uri = f"runs:/{self.run_id}/{self.name}"
            return _load(cls, self._flavor, uri, self._load_args, target)
        if self._kept is not None:
            return self._kept[0]
        if self._last_saved is not None:
            return _load(cls, self._flavor, self._last_saved.model_uri, self._load_args, target)
        if target.run_id is None or target.disabled:
            why = (
                "tracking is disabled for this pipeline and no model was saved in this process"
                if target.disabled
                else "not a pipeline run with trackcfg's hooks, and no open TrackingSession "
                "or active MLflow run"
            )
            raise DatasetError(
                f"{cls}: cannot load, no MLflow run to read the model from: {why}; give "
                "load_args.model_uri (e.g. models:/<name>/<version>) or run_id in the catalog"
            )
        uri = f"runs:/{target.run_id}/{self.name}"
        return _load(cls, self._flavor, uri, self._load_args, target)

    def _describe(self) -> dict[str, Any]:
        return {
            "flavor": self._flavor,
            "pyfunc_workflow": self._pyfunc_workflow,
            "load_args": self._load_args,
            "save_args": self._save_args,
            "run_id": self.run_id,
            "model_uri": self.model_uri,
        }


class MlflowModelLocalFileSystemDataset(AbstractVersionedDataset[Any, Any]):
    """A model saved as a folder on the local disk with ``<flavor>.save_model`` and loaded
    with ``<flavor>.load_model``; ``versioned: true`` keeps one folder per Kedro version.

    ::

        regressor:
          type: trackcfg.kedro.datasets.MlflowModelLocalFileSystemDataset
          flavor: mlflow.sklearn
          filepath: data/06_models/regressor

    It never logs to MLflow (as in kedro-mlflow; wrap it in an ``MlflowArtifactDataset`` to
    log the folder), so a disabled pipeline changes nothing for it.  ``log_args`` is
    accepted and ignored, as kedro-mlflow 2.0.3 does.
    """

    def __init__(
        self,
        filepath: str,
        flavor: str,
        pyfunc_workflow: str | None = None,
        load_args: dict[str, Any] | None = None,
        save_args: dict[str, Any] | None = None,
        log_args: dict[str, Any] | None = None,
        version: Version | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._flavor = _check_flavor(type(self).__name__, flavor, pyfunc_workflow)
        super().__init__(PurePosixPath(filepath), version)
        self._pyfunc_workflow = pyfunc_workflow
        self._load_args = dict(load_args or {})
        self._save_args = dict(save_args or {})
        self._log_args = dict(log_args or {})
        self.metadata = metadata

    def save(self, data: Any) -> None:
        path = Path(str(self._get_save_path()))
        # MLflow does not save over an existing folder (an unversioned dataset saved again).
        if path.exists():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            _backend.save_model(
                self._flavor,
                data,
                str(path),
                self._save_args,
                _workflow(self._flavor, self._pyfunc_workflow),
            )
        except ValueError as exc:
            raise DatasetError(f"{type(self).__name__}: {exc}") from None

    def load(self) -> Any:
        path = Path(str(self._get_load_path())).resolve()
        if not path.exists():
            raise DatasetError(
                f"{type(self).__name__}: no model at {path}; save one there first (a node "
                "whose output is this dataset)"
            )
        return _load(type(self).__name__, self._flavor, str(path), self._load_args, None)

    def _exists(self) -> bool:
        try:
            path = self._get_load_path()
        except DatasetError:
            return False
        return Path(str(path)).exists()

    def _describe(self) -> dict[str, Any]:
        return {
            "filepath": str(self._filepath),
            "flavor": self._flavor,
            "pyfunc_workflow": self._pyfunc_workflow,
            "load_args": self._load_args,
            "save_args": self._save_args,
            "version": self._version,
        }


class MlflowModelRegistryDataset(AbstractDataset[Any, Any]):
    """A registered model loaded from the MLflow model registry: by ``alias``
    (``models:/<model_name>@<alias>``) or by ``stage_or_version`` (a version number, a
    stage, or ``latest``, the default).

    ::

        champion:
          type: trackcfg.kedro.datasets.MlflowModelRegistryDataset
          model_name: clf
          alias: champion
          flavor: mlflow.sklearn

    The registry is the pipeline's (``server.mlflow_registry_uri``, else its tracking
    store).  Loading starts no run and logs nothing, so it works in a pipeline whose
    tracking is disabled too.  It cannot be saved: log with ``MlflowModelTrackingDataset``
    and ``save_args: {registered_model_name: ...}`` to register a model.
    """

    def __init__(
        self,
        model_name: str,
        stage_or_version: str | int | None = None,
        alias: str | None = None,
        flavor: str | None = "mlflow.pyfunc",
        pyfunc_workflow: str | None = "python_model",
        load_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        cls = type(self).__name__
        self._flavor = _check_flavor(cls, flavor, pyfunc_workflow)
        self._pyfunc_workflow = pyfunc_workflow
        if not model_name:
            raise DatasetError(f"{cls}: 'model_name' must name a registered model")
        if alias and stage_or_version is not None:
            raise DatasetError(
                f"{cls}: give either alias ({alias!r}) or stage_or_version "
                f"({stage_or_version!r}), not both"
            )
        if not alias and stage_or_version is None:
            stage_or_version = "latest"
        self.model_name = model_name
        self.stage_or_version = stage_or_version
        self.alias = alias or None
        self._load_args = dict(load_args or {})
        self.metadata = metadata

    @property
    def model_uri(self) -> str:
        if self.alias:
            return f"models:/{self.model_name}@{self.alias}"
        return f"models:/{self.model_name}/{self.stage_or_version}"

    def save(self, data: Any) -> None:
        raise DatasetError(
            f"{type(self).__name__} cannot be saved: log the model with "
            "trackcfg.kedro.datasets.MlflowModelTrackingDataset and save_args: "
            "{registered_model_name: " + self.model_name + "} to register it"
        )

    def load(self) -> Any:
        target = pipeline_target()
        return _load(type(self).__name__, self._flavor, self.model_uri, self._load_args, target)

    def _describe(self) -> dict[str, Any]:
        return {
            "model_uri": self.model_uri,
            "model_name": self.model_name,
            "stage_or_version": self.stage_or_version,
            "alias": self.alias,
            "flavor": self._flavor,
            "pyfunc_workflow": self._pyfunc_workflow,
        }
