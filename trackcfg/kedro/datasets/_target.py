"""Where a dataset logs and loads: the pipeline's run, a given ``run_id``, or nothing.

The contract between trackcfg's Kedro datasets and the pipeline they run in:

- in the pipeline's main process (``SequentialRunner``, ``ThreadRunner``, a notebook after
  ``session.run()`` started): the hooks' open ``TrackingSession``, logged into through the
  session, so buffered logging and outages apply;
- in a ``ParallelRunner`` worker process (fork or spawn): the run the session shared through
  ``TRACKCFG_PARENT_RUN_ID``, ``MLFLOW_TRACKING_URI`` and ``MLFLOW_EXPERIMENT_ID``;
- a disabled pipeline (``disable_tracking.pipelines``, ``TRACKCFG_DISABLE``): ``disabled``;
  the hooks export ``TRACKCFG_DISABLE=1`` while a disabled pipeline runs, so its workers know;
- outside a pipeline run (a notebook, a script): the open ``TrackingSession`` whose run is
  MLflow's active run (``with TrackingSession(...)``), logged into through the session; else
  MLflow's active run (``with mlflow.start_run()``) in MLflow's current store
  (``mlflow.get_tracking_uri()``), as kedro-mlflow's datasets do;
- a ``run_id`` given in the catalog: that run, in the pipeline's store (outside a pipeline
  run: the open session's, else the project's config's, else MLflow's current store).  An
  offline pipeline (``server.offline``) logs into the offline store (``<root>/mlruns``) and
  never reads the server: a ``run_id`` is read there when the run exists there, else a
  ``DatasetError`` names both stores.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import attrs
from kedro.io import DatasetError

from trackcfg import _state
from trackcfg._backend import Backend, current_run, open_backend
from trackcfg._config import TrackingConfig
from trackcfg._connect import plan_store
from trackcfg._rules import TRUTHY, Offline
from trackcfg._session import TrackingSession
from trackcfg._store import mask_uri
from trackcfg._workers import inherited_offline_destination, inherited_parent, pointed_at

__all__ = ["Target", "active_run", "open_target_backend", "pipeline_target"]


@attrs.frozen
class Target:
    """The run a dataset logs into or loads from, at the time of one save or load."""

    run_id: str | None
    """The run to log into / load from; None: no run."""
    tracking_uri: str | None = attrs.field(repr=lambda u: repr(None if u is None else mask_uri(u)))
    registry_uri: str | None = attrs.field(repr=lambda u: repr(None if u is None else mask_uri(u)))
    disabled: bool
    """The pipeline logs nothing (``disable_tracking.pipelines`` or ``TRACKCFG_DISABLE``)."""
    session: TrackingSession | None = attrs.field(eq=False)
    """The pipeline's open session, in the pipeline's main process; None elsewhere."""

    @property
    def through_session(self) -> bool:
        """Whether logging goes through the session (its run is the target)."""
        return (
            self.session is not None
            and not self.disabled
            and self.run_id is not None
            and self.run_id == self.session.run_id
        )


def _hooks_state() -> tuple[TrackingSession | None, TrackingConfig | None]:
    from trackcfg.kedro import hooks

    return hooks.current_session(), hooks.current_config()


def _env_disabled() -> bool:
    return os.environ.get("TRACKCFG_DISABLE", "").strip().lower() in TRUTHY


def _config_uris(config: TrackingConfig | None) -> tuple[str | None, str | None, str | None]:
    """The store the project's config names (for a ``run_id`` given outside a pipeline run),
    its registry, and the server an offline store stands in for (else None): with
    ``server.offline: always`` the offline store (``<root>/mlruns``), as a session would log
    there; without a config, the environment's (a worker's: its pipeline's store)."""
    if config is not None:
        plan = plan_store(config, inherit=False)
        if plan.offline is Offline.YES:
            return plan.offline_location.tracking_uri, plan.registry_uri, plan.offline_destination
        return plan.destination.tracking_uri, plan.registry_uri, None
    return (
        os.environ.get("MLFLOW_TRACKING_URI", "").strip() or None,
        os.environ.get("MLFLOW_REGISTRY_URI", "").strip() or None,
        inherited_offline_destination(),
    )


def _offline_run_check(run_id: str, tracking_uri: str | None, server: str) -> None:
    """An offline pipeline reads a catalog's ``run_id`` in its offline store only (it never
    contacts the server): ``DatasetError`` naming both stores when the run is not there."""
    if tracking_uri is None:
        return
    backend = open_backend(tracking_uri, None)
    try:
        found = backend.get_run(run_id) is not None
    finally:
        backend.close()
    if not found:
        raise DatasetError(
            f"run {run_id!r} (the dataset's run_id) is not in the offline store "
            f"{mask_uri(tracking_uri)} this pipeline logs into (server.offline), and the "
            f"tracking server {server} is not read while offline; give the run_id of a run "
            "in the offline store, or run the pipeline with the server reachable "
            "(server.offline: auto or never) to read the server's run"
        )


def _outside_pipeline() -> tuple[TrackingSession | None, str | None, str | None, str | None]:
    """Outside a pipeline run: the open session owning MLflow's active run (None: none), the
    active run's id, and MLflow's current tracking and registry URIs (all None when mlflow
    was never imported: then nothing can have started a run or set a store)."""
    if "mlflow" not in sys.modules:
        return None, None, None, None
    active, tracking, registry = current_run()
    if active is None:
        return None, None, tracking, registry
    owners = [
        owner
        for owner in _state.run_owners(active)
        if isinstance(owner, TrackingSession) and owner.enabled and owner.run_id == active
    ]
    return (owners[-1] if owners else None), active, tracking, registry


def pipeline_target(run_id: str | None = None) -> Target:
    """The target of a save or load now: ``run_id`` when given, else the pipeline's run
    (outside a pipeline run: the open session's run, else MLflow's active run)."""
    session, config = _hooks_state()
    disabled = _env_disabled() or (session is not None and not session.enabled)
    parent = None if session is not None else inherited_parent()
    outside: tuple[TrackingSession | None, str | None, str | None, str | None] = (
        None,
        None,
        None,
        None,
    )
    if session is None and parent is None:
        outside = _outside_pipeline()
        if outside[0] is not None:
            session = outside[0]
    if session is not None and session.enabled and session.run_id is not None:
        registry = session.registry_uri
        server = session.offline_destination
        if run_id and run_id != session.run_id and server is not None:
            _offline_run_check(run_id, session.tracking_uri, server)
        return Target(
            run_id=run_id or session.run_id,
            tracking_uri=session.tracking_uri,
            registry_uri=registry,
            disabled=disabled,
            session=session,
        )
    if parent is not None and not run_id:  # a worker process of the pipeline's run
        return Target(
            run_id=parent,
            tracking_uri=os.environ.get("MLFLOW_TRACKING_URI", "").strip() or None,
            registry_uri=os.environ.get("MLFLOW_REGISTRY_URI", "").strip() or None,
            disabled=disabled,
            session=None,
        )
    _, active, mlflow_tracking, mlflow_registry = outside
    if active is not None:  # a run the user started: in MLflow's current store
        return Target(
            run_id=run_id or active,
            tracking_uri=mlflow_tracking,
            registry_uri=mlflow_registry,
            disabled=disabled,
            session=None,
        )
    if parent is not None:  # a worker given a run_id: the store its run is in
        tracking, registry, server = _config_uris(None)
    else:
        tracking, registry, server = _config_uris(session.config if session is not None else config)
        if session is None and config is None and (run_id or "mlflow" in sys.modules):
            _, tracking, registry = current_run()  # as MLflow would: its current store
    if run_id and run_id != parent and server is not None:
        _offline_run_check(run_id, tracking, server)
    return Target(
        run_id=run_id or None,
        tracking_uri=tracking,
        registry_uri=registry,
        disabled=disabled,
        session=session,
    )


def open_target_backend(target: Target, what: str) -> Backend:
    """A backend on the target's store; ``DatasetError`` when no store is known."""
    if target.tracking_uri is None:
        raise DatasetError(
            f"{what}: no tracking store is known for run {target.run_id!r}; run it in a Kedro "
            "pipeline with trackcfg's hooks (conf/<env>/mlflow.yml names the store) or set "
            "MLFLOW_TRACKING_URI"
        )
    return open_backend(target.tracking_uri, target.registry_uri)


@contextlib.contextmanager
def active_run(target: Target) -> Iterator[None]:
    """Make ``target.run_id`` MLflow's active run in this thread for the block, in its store
    and experiment (for ``mlflow.<flavor>.log_model`` calls); everything is given back
    afterwards and the run is never ended.  ``DatasetError`` when there is no run."""
    if target.disabled or target.run_id is None:
        raise DatasetError(
            "no MLflow run to log into: "
            + ("tracking is disabled for this pipeline" if target.disabled else "no run")
        )
    if target.through_session:
        assert target.session is not None
        with target.session.activate():
            yield
        return
    run_id = target.run_id
    backend = open_target_backend(target, "active_run")
    try:
        run = backend.get_run(run_id)
        if run is None:
            raise DatasetError(
                f"MLflow run {run_id!r} does not exist in {mask_uri(backend.tracking_uri)!r}"
            )
    except BaseException:
        backend.close()
        raise
    with pointed_at(backend, run_id, experiment_id=run.experiment_id):
        yield
