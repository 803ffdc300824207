"""Worker processes and distributed jobs: the environment contract between a session and the
processes that log beside it.

A session hands a worker ``child_env()`` (or exports it with ``share_with_subprocesses()``);
in the worker, a session becomes a child of the parent's run and plain MLflow code can log
into the parent's run inside ``activate_inherited_run()``.  Distributed launchers say the
process's rank through their own variables (``process_rank``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping

from ._backend import BackendFactory, open_backend
from ._env import EnvSnapshot
from ._state import MLFLOW_ENV

__all__ = [
    "OFFLINE_DESTINATION_ENV",
    "PARENT_RUN_ENV",
    "RANK_VARIABLES",
    "activate_inherited_run",
    "inherited_offline_destination",
    "inherited_parent",
    "process_rank",
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
    env = EnvSnapshot()
    env.remember(*MLFLOW_ENV)
    backend = _backend_factory(tracking_uri, None)
    token = backend.use_store(os.environ.get("MLFLOW_EXPERIMENT_ID") or None)
    pushed = False
    try:
        pushed = run_id not in backend.active_run_ids()
        if pushed:
            backend.push_active(run_id)
        yield run_id
    finally:
        if pushed:
            backend.pop_active(run_id)
        backend.restore_store(token)
        backend.close()
        env.restore()
