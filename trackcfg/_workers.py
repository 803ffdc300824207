"""Worker processes and distributed jobs: the environment contract between a session and the
processes that log beside it.

A session hands a worker ``child_env()`` (or exports it with ``share_with_subprocesses()``);
in the worker, a session becomes a child of the parent's run and plain MLflow code can log
into the parent's run inside ``activate_inherited_run()``.  ``pointed_at`` is the one way
trackcfg points MLflow at a store and run for a block (the worker helper, the Kedro
datasets and pipelines use it).  Distributed launchers say the
process's rank through their own variables (``process_rank``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping

from ._backend import Backend, BackendFactory, open_backend
from ._env import EnvSnapshot
from ._state import MLFLOW_ENV

__all__ = [
    "OFFLINE_DESTINATION_ENV",
    "PARENT_RUN_ENV",
    "RANK_VARIABLES",
    "activate_inherited_run",
    "inherited_offline_destination",
    "inherited_parent",
    "pointed_at",
    "process_rank",
    "run_active",
    "session_run_active",
    "worker_env",
]

logger = logging.getLogger(__name__)

#: Where distributed launchers put the process rank, first found wins.
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
#: Set by ``TrackingSession.child_env()`` for worker processes: their sessions become children.
PARENT_RUN_ENV = "TRACKCFG_PARENT_RUN_ID"
#: Set by ``child_env()`` of an offline session: the parent's destination (masked).  A worker's
#: session then logs offline too, into the parent's store (``MLFLOW_TRACKING_URI``), whatever
#: its own ``server.offline`` says, and its run carries the destination tag.
OFFLINE_DESTINATION_ENV = "TRACKCFG_OFFLINE_DESTINATION"


def process_rank(environ: Mapping[str, str] | None = None) -> int:
    """This process's rank in a distributed job (0 when no launcher variable is set)."""
    environ = os.environ if environ is None else environ
    for name in RANK_VARIABLES:
        value = environ.get(name, "").strip()
        if value:
            try:
                return int(value)
            except ValueError:
                logger.warning("ignoring %s=%r: not an integer rank", name, value)
    return 0


def worker_env(
    tracking_uri: str,
    run_id: str,
    experiment_id: str | None,
    offline_destination: str | None = None,
) -> dict[str, str]:
    """What a worker needs for its sessions to become children of ``run_id``:
    ``MLFLOW_TRACKING_URI`` (fills a worker config that sets no URI), ``TRACKCFG_PARENT_RUN_ID``
    and ``MLFLOW_EXPERIMENT_ID`` (the child goes beside its parent, without a lookup); for an
    offline parent, ``TRACKCFG_OFFLINE_DESTINATION`` (its destination, masked)."""
    env = {"MLFLOW_TRACKING_URI": tracking_uri, PARENT_RUN_ENV: run_id}
    if experiment_id is not None:
        env["MLFLOW_EXPERIMENT_ID"] = experiment_id
    if offline_destination is not None:
        env[OFFLINE_DESTINATION_ENV] = offline_destination
    return env


def inherited_offline_destination(environ: Mapping[str, str] | None = None) -> str | None:
    """The destination of an offline parent (``TRACKCFG_OFFLINE_DESTINATION``), when this
    process is its worker (``TRACKCFG_PARENT_RUN_ID`` and ``MLFLOW_TRACKING_URI`` set too)."""
    environ = os.environ if environ is None else environ
    destination = environ.get(OFFLINE_DESTINATION_ENV, "").strip()
    if not destination or not inherited_parent(environ):
        return None
    return destination if environ.get("MLFLOW_TRACKING_URI", "").strip() else None


def inherited_parent(environ: Mapping[str, str] | None = None) -> str | None:
    """The run a worker's sessions must nest under (``TRACKCFG_PARENT_RUN_ID``), if any."""
    environ = os.environ if environ is None else environ
    return environ.get(PARENT_RUN_ENV, "").strip() or None


@contextlib.contextmanager
def activate_inherited_run(
    *, _backend_factory: BackendFactory = open_backend
) -> Iterator[str | None]:
    """In a worker process started while a session shared its run
    (``TrackingSession.share_with_subprocesses``), make that run MLflow's active run in the
    calling thread for the block, in its experiment, so plain ``mlflow.log_*`` lands in it.
    Yields the run id, or ``None`` (a no-op) when nothing was shared.  The run is never ended
    here, and the tracking URI, experiment and environment are given back afterwards."""
    run_id = inherited_parent()
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not run_id or not tracking_uri:
        yield None
        return
    backend = _backend_factory(tracking_uri, None)
    with pointed_at(backend, run_id, experiment_id=os.environ.get("MLFLOW_EXPERIMENT_ID") or None):
        yield run_id


@contextlib.contextmanager
def pointed_at(
    backend: Backend, run_id: str | None = None, *, experiment_id: str | None = None
) -> Iterator[None]:
    """MLflow points at ``backend``'s store (registry included) and ``experiment_id`` for the
    block, with ``run_id`` (if any) its active run in this thread (``run_active``); the
    store, experiment, run stack and MLflow's environment variables are given back afterwards
    and the backend, which the block takes over, is closed.  The run is never ended."""
    env = EnvSnapshot()
    env.remember(*MLFLOW_ENV)
    try:
        token = backend.use_store(experiment_id)
        try:
            with run_active(backend, run_id):
                yield
        finally:
            backend.restore_store(token)
    finally:
        backend.close()
        env.restore()


@contextlib.contextmanager
def run_active(backend: Backend, run_id: str | None) -> Iterator[None]:
    """``run_id`` is MLflow's active run in this thread for the block (a no-op when it is
    already, or None); then it is taken off this thread's stack again, never ended."""
    pushed = run_id is not None and run_id not in backend.active_run_ids()
    if pushed:
        assert run_id is not None
        backend.push_active(run_id)
    try:
        yield
    finally:
        if pushed:
            assert run_id is not None
            backend.pop_active(run_id)


@contextlib.contextmanager
def session_run_active(
    backend: Backend | None, run_id: str | None, *, forked: bool, factory: BackendFactory
) -> Iterator[None]:
    """A session's ``activate()``: its run active in this thread for the block (a no-op
    without one, ``run_active``); in a forked copy of the session (a worker process) the
    backend is its parent's, so it is ``activate_inherited_run()``."""
    if forked:
        with activate_inherited_run(_backend_factory=factory):
            yield
    elif backend is None or run_id is None:
        yield
    else:  # only the run: the store is the process-wide one the session shares (_connect)
        with run_active(backend, run_id):
            yield
