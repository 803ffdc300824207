"""Copying a run's MLflow 3 logged models to another store (``trackcfg sync`` uploading an
offline run): what the run produced, made again with its files, params, tags, metrics, output
link and registered versions.  A part of ``MlflowBackend`` (``_client``), kept apart because it
is one concept of its own."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS

from trackcfg._records import LoggedModelDetails, ModelMetric, ModelVersionRef

from ._errors import code_of, reachable

__all__ = ["LoggedModelCopies"]


class LoggedModelCopies:
    """``MlflowBackend``'s logged-model methods (``Backend``'s "copying a run's logged
    models"), on its MLflow client."""

    __slots__ = ()  # MlflowBackend is slotted: nothing of its own here
    _client: Any  # MlflowBackend's MlflowClient

    @reachable
    def logged_models(self, experiment_id: str, run_id: str) -> list[LoggedModelDetails]:
        run = self._client.get_run(run_id)
        outputs = run.outputs.model_outputs if run.outputs is not None else []
        steps = {output.model_id: output.step for output in outputs or []}
        found: list[LoggedModelDetails] = []
        token = None
        versions = None
        while True:
            page = self._client.search_logged_models(
                [experiment_id], f"source_run_id = '{run_id}'", page_token=token
            )
            for model in page:
                if versions is None:
                    versions = self._client.search_model_versions(f"run_id = '{run_id}'")
                found.append(
                    LoggedModelDetails(
                        id=model.model_id,
                        name=model.name,
                        experiment_id=model.experiment_id,
                        source_run_id=model.source_run_id,
                        status=str(model.status),
                        model_type=model.model_type,
                        artifact_uri=model.artifact_location,
                        step=steps.get(model.model_id, 0),
                        tags=dict(model.tags),
                        params=dict(model.params),
                        metrics=tuple(
                            ModelMetric(
                                key=m.key,
                                value=m.value,
                                step=m.step,
                                timestamp=m.timestamp,
                                dataset_name=m.dataset_name,
                                dataset_digest=m.dataset_digest,
                            )
                            for m in model.metrics or []
                        ),
                        versions=tuple(
                            ModelVersionRef(
                                name=v.name,
                                version=str(v.version),
                                tags=dict(v.tags),
                                description=v.description or None,
                            )
                            for v in versions
                            if _version_of(v, model.model_id)
                        ),
                    )
                )
            token = page.token
            if not token:
                return found

    @reachable
    def create_logged_model(
        self,
        *,
        experiment_id: str,
        name: str,
        run_id: str,
        tags: Mapping[str, str],
        params: Mapping[str, str],
        model_type: str | None,
    ) -> str:
        model = self._client.create_logged_model(
            experiment_id,
            name=name,
            source_run_id=run_id,
            tags=dict(tags),
            params=dict(params),
            model_type=model_type,
        )
        return str(model.model_id)

    @reachable
    def log_model_files(self, model_id: str, local_dir: str, run_id: str) -> None:
        import shutil
        import tempfile

        from mlflow.models import Model

        model = self._client.get_logged_model(model_id)
        with tempfile.TemporaryDirectory(prefix="trackcfg-model-") as folder:
            copy = os.path.join(folder, "model")
            shutil.copytree(local_dir, copy, symlinks=False)
            mlmodel = os.path.join(copy, "MLmodel")
            if os.path.isfile(mlmodel):  # it names the model and run it was logged as
                description = Model.load(mlmodel)
                description.model_id = model_id
                description.model_uuid = model_id
                description.run_id = run_id
                description.artifact_path = model.artifact_location
                description.save(mlmodel)
            self._client.log_model_artifacts(model_id, copy)

    @reachable
    def link_model(
        self, run_id: str, model_id: str, step: int, metrics: Sequence[ModelMetric]
    ) -> None:
        from mlflow.entities import LoggedModelOutput

        self._client.log_outputs(run_id, [LoggedModelOutput(model_id, step=step)])
        points = [
            Metric(
                m.key,
                m.value,
                m.timestamp,
                m.step,
                model_id=model_id,
                dataset_name=m.dataset_name,
                dataset_digest=m.dataset_digest,
                run_id=run_id,
            )
            for m in metrics
        ]
        for start in range(0, len(points), 1000):
            self._client.log_batch(run_id, metrics=points[start : start + 1000])

    @reachable
    def finalize_logged_model(self, model_id: str, status: str) -> None:
        from mlflow.entities import LoggedModelStatus

        self._client.finalize_logged_model(model_id, LoggedModelStatus(status))

    @reachable
    def register_model_version(self, model_id: str, run_id: str, version: ModelVersionRef) -> None:
        quoted = version.name.replace("'", "\\'")
        existing = self._client.search_model_versions(f"name = '{quoted}'")
        if any(_version_of(v, model_id) for v in existing):
            return
        try:
            self._client.create_registered_model(version.name)
        except MlflowException as exc:
            if code_of(exc) != RESOURCE_ALREADY_EXISTS:
                raise
        self._client.create_model_version(
            version.name,
            source=f"models:/{model_id}",
            run_id=run_id,
            tags=dict(version.tags),
            description=version.description,
            model_id=model_id,
        )


def _version_of(version: Any, model_id: str) -> bool:
    """Whether a registered model version is of the logged model ``model_id`` (a SQL
    registry leaves its ``model_id`` empty; its source names the model)."""
    return bool(version.model_id == model_id or version.source == f"models:/{model_id}")
