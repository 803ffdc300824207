"""Where a session's run is placed (steps 4-5 of ``TrackingSession``): its experiment, then
the run, resumed (``run.id``, or found by ``run.key``, after a killed writer's journal is
sent: ``_takeover``), attached to, nested under, or started.

The decisions are ``_rules``' pure functions; this module asks the store what they need and
acts on the answer.  ``RunPlacer`` is built for one attempt (``server.offline: auto`` falling
back makes a new one for the offline store), and says what it did in its fields.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs

from ._backend import Backend, BackendFactory, RunRef
from ._config import TrackingConfig
from ._params import PreparedParams
from ._rules import (
    OFFLINE_DESTINATION_TAG,
    RUN_KEY_TAG,
    ExperimentAction,
    Placement,
    attach_refusal,
    experiment_plan,
    named_run_refusal,
    placement,
    resume_refusal,
)
from ._state import orchestrator_run_id
from ._store import mask_uri
from ._sync import journal_folder
from ._takeover import keyed_run_to_continue, mark_continued, no_keyed_experiment, take_over
from ._workers import PARENT_RUN_ENV, inherited_parent

__all__ = ["RunPlacer"]

logger = logging.getLogger(__name__)


@attrs.frozen
class _Inputs:
    prepared: PreparedParams
    tags: dict[str, str]


@attrs.define(kw_only=True)
class RunPlacer:
    """One session's run placement in the store ``tracking_uri`` (``shown_store``: masked).

    ``parent``: the enclosing session's ``(run_id, experiment_id)`` for a ``child()``;
    ``offline``: the destination an offline run is tagged with; ``artifact_root``: where a
    local store keeps artifacts (experiments created here get it); ``share_store`` points
    MLflow's process-wide state at the store and experiment before a run is started."""

    config: TrackingConfig
    name: str
    experiment_name: str
    root: Path
    tracking_uri: str
    factory: BackendFactory
    share_store: Callable[[str | None], None]
    parent: tuple[str | None, str | None] | None = None
    offline: str | None = None
    artifact_root: str | None = None
    # What it did:
    experiment_id: str | None = None
    run_id: str | None = None
    started_run: str | None = None  # a run it started or reopened: the session ends it
    pushed_run: str | None = None  # a run it attached to and made active in this context
    resumed: bool = False
    logged_params: dict[str, str] = attrs.field(factory=dict)  # the run's params already
    named_run: RunRef | None = None  # looked up by _external_active_run

    @property
    def shown_store(self) -> str:
        return mask_uri(self.tracking_uri)

    def place(
        self, backend: Backend, prepared: PreparedParams, tags: dict[str, str]
    ) -> dict[str, str]:
        """Steps 4-5: the experiment, then the run (resumed, attached to, or started).
        Returns the tags still to log (a new run was given them when it started)."""
        parent, run_cfg = self.parent, self.config.tracking.run
        inputs = _Inputs(prepared=prepared, tags=tags)
        if self.offline is not None:
            tags = {**inputs.tags, OFFLINE_DESTINATION_TAG: self.offline}
            inputs = attrs.evolve(inputs, tags=tags)
        if run_cfg.id and parent is None:
            self._resume(backend, run_cfg.id, inputs.prepared)
            return inputs.tags
        if parent is not None:
            active, must_nest = parent[0], True
            self.experiment_id = parent[1]
        else:
            active, must_nest = self._external_active_run(backend)
            if must_nest and os.environ.get("MLFLOW_EXPERIMENT_ID"):
                # A worker given child_env(): its run goes beside its parent's, in the parent's
                # experiment (MLflow shows children only there), without a lookup request.
                self.experiment_id = os.environ["MLFLOW_EXPERIMENT_ID"]
            else:
                if active is None:  # resume: must, and no experiment: before creating one
                    no_keyed_experiment(backend, self.experiment_name, run_cfg, self.shown_store)
                self.experiment_id = self._experiment(backend)
        self.share_store(self.experiment_id)
        where = placement(active, must_nest=must_nest, nested=run_cfg.nested)
        if where is Placement.ATTACH:
            assert active is not None
            self._attach(backend, active)
            return inputs.tags
        assert self.experiment_id is not None
        key = run_cfg.key if where is Placement.NEW else None
        if key is not None:  # only a top-level run carries it: the key finds that run
            inputs = attrs.evolve(inputs, tags={**inputs.tags, RUN_KEY_TAG: key})
            found = keyed_run_to_continue(
                backend, self.experiment_id, run_cfg, inputs.prepared.params, self.shown_store
            )
            if found is not None:
                self._continue(backend, found.id, found.experiment_id, found.params)
                return inputs.tags
        ref = backend.start_run(
            experiment_id=self.experiment_id,
            name=run_cfg.name if parent is None and run_cfg.name else self.name,
            parent_run_id=active,
            tags=inputs.tags,
        )
        self.run_id = self.started_run = ref.id
        return {}

    def _experiment(self, backend: Backend) -> str:
        settings = self.config.tracking.experiment
        name = self.experiment_name
        plan = experiment_plan(name, backend.get_experiment(name), settings)
        if plan.refusal is not None:
            raise plan.refusal.error(self.shown_store)
        if plan.action is ExperimentAction.CREATE:
            kwargs = settings.create_experiment_kwargs
            # Offline, artifacts stay in the offline store (its experiment is created there
            # only to hold runs until trackcfg sync uploads them).
            location = kwargs.artifact_location if self.offline is None else None
            if location is not None and "://" not in location and not location.startswith("/"):
                location = (self.root / location).as_uri()
            if location is None and self.artifact_root is not None:
                location = self.artifact_root
            experiment_id = backend.create_experiment(name, location, kwargs.tags)
            logger.info("created experiment %r (id %s)", name, experiment_id)
            return experiment_id
        assert plan.experiment_id is not None
        if plan.action is ExperimentAction.RESTORE:
            backend.restore_experiment(plan.experiment_id)
            logger.info("restored deleted experiment %r (id %s)", name, plan.experiment_id)
        return plan.experiment_id

    def _external_active_run(self, backend: Backend) -> tuple[str | None, bool]:
        """The run this session nests under or attaches to, and whether it must nest.

        Precedence: this thread's active run, then ``TRACKCFG_PARENT_RUN_ID`` (always a
        parent: a worker started by ``child_env()``), then ``MLFLOW_RUN_ID`` (a run an
        orchestrator started: child or attach, by ``run.nested``).  A run named by either
        variable is looked up first (``_check_named_run``)."""
        stack = backend.active_run_ids()
        if stack:
            return stack[-1], False
        parent = inherited_parent()
        if parent:
            self._check_named_run(backend, parent, PARENT_RUN_ENV, nest=True)
            return parent, True
        named = orchestrator_run_id()
        if named:
            nest = self.config.tracking.run.nested
            self._check_named_run(backend, named, "MLFLOW_RUN_ID", nest=nest)
        return named, False

    def _check_named_run(self, backend: Backend, run_id: str, variable: str, *, nest: bool) -> None:
        """A run named by an environment variable must exist before anything is created
        under or for it (the experiment included): a stale id is refused naming the variable,
        not met later as MLflow's "Run ... not found" once an experiment was made."""
        existing = backend.get_run(run_id)
        refusal = named_run_refusal(run_id, existing, variable=variable, nest=nest)
        if refusal is not None:
            raise refusal.error(self.shown_store)
        self.named_run = existing

    def _attach(self, backend: Backend, run_id: str) -> None:
        named = self.named_run
        existing: RunRef | None = named
        variable: str | None = "MLFLOW_RUN_ID"
        if named is None or named.id != run_id:  # else looked up by _external_active_run
            existing, variable = backend.get_run(run_id), None
        refusal = attach_refusal(run_id, existing, variable=variable)
        if refusal is not None:
            raise refusal.error(self.shown_store)
        assert existing is not None
        # Params are immutable: a differing value must be refused before it is sent.
        self.logged_params.update(existing.params)
        self.run_id = run_id
        if run_id not in backend.active_run_ids():
            backend.push_active(run_id)
            self.pushed_run = run_id
        logger.info("attached to active run %s (tracking.run.nested is false)", run_id)

    def _resume(self, backend: Backend, run_id: str, prepared: PreparedParams) -> None:
        existing = backend.get_run(run_id)
        refusal = resume_refusal(
            run_id,
            existing,
            prepared.params,
            resume_running=self.config.tracking.run.resume_running,
        )
        if refusal is not None:
            raise refusal.error(self.shown_store)
        assert existing is not None
        self._continue(backend, run_id, existing.experiment_id, existing.params)

    def _continue(
        self, backend: Backend, run_id: str, experiment_id: str, params: Mapping[str, str]
    ) -> None:
        """Reopen a run (``run.id``, or found by ``run.key``), after what a killed process
        left of it in this project's journal folder is sent (``_takeover``)."""
        take_over(
            journal_folder(self.config.tracking.logging.journal_dir, self.root),
            run_id,
            tracking_uri=self.tracking_uri,
            shown_uri=self.shown_store,
            factory=self.factory,
        )
        mark_continued(backend, run_id)
        self.experiment_id = experiment_id
        self.logged_params.update(params)
        self.share_store(experiment_id)
        backend.resume_run(run_id)
        self.run_id = self.started_run = run_id
        self.resumed = True
