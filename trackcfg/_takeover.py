"""Continuing a run another process left: find it by its key, send what that process's
journal holds, then let the session reopen it.

``tracking.run.resume`` finds the run (``_rules.keyed_run`` decides); a run continued by key
or by ``tracking.run.id`` is taken over here.  What a killed process left of the run in the
project's journal folder is sent through ``_sync``'s replay (one delivery path: no point lost
or sent twice), without ending the run: the continuing session ends it.  A journal whose
writer still lives (its lock is held) is never taken: the session refuses to continue a run
another process on this machine still logs to.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

from ._backend import Backend, BackendFactory, RunDetails
from ._config import ResumePolicy, RunConfig
from ._params import Batch
from ._rules import CONTINUED_TAG, KeyedRun, key_filter, keyed_run
from ._sync import sync_journals
from .exceptions import RunError

__all__ = [
    "find_keyed_run",
    "keyed_run_to_continue",
    "mark_continued",
    "no_keyed_experiment",
    "take_over",
]

logger = logging.getLogger(__name__)


def find_keyed_run(
    backend: Backend,
    experiment_id: str | None,
    key: str,
    policy: ResumePolicy,
    params: Mapping[str, str],
) -> tuple[KeyedRun, RunDetails | None]:
    """What ``tracking.run.resume`` does for ``key`` in the experiment (None: it does not
    exist yet), and the run it continues."""
    found = None if experiment_id is None else backend.search_runs([experiment_id], key_filter(key))
    decision = keyed_run(key, policy, found, params)
    run = next((r for r in found or () if r.id == decision.run_id), None)
    return decision, run


def keyed_run_to_continue(
    backend: Backend,
    experiment_id: str,
    run: RunConfig,
    params: Mapping[str, str],
    store: str,
) -> RunDetails | None:
    """The run ``tracking.run.resume`` continues in the experiment (None: a new run); its
    refusal raised (``store``: the masked URI the message names)."""
    if run.key is None or run.resume is ResumePolicy.NEVER:
        return None
    decision, found = find_keyed_run(backend, experiment_id, run.key, run.resume, params)
    if decision.refusal is not None:
        raise decision.refusal.error(store)
    if found is not None:
        logger.info("continuing run %s (tracking.run.key %r)", found.id, run.key)
    return found


def no_keyed_experiment(backend: Backend, name: str, run: RunConfig, store: str) -> None:
    """``resume: must`` and the experiment ``name`` does not exist: refused before it is
    created."""
    if run.resume is not ResumePolicy.MUST or run.key is None:
        return
    if backend.get_experiment(name) is None:
        decision, _ = find_keyed_run(backend, None, run.key, run.resume, {})
        assert decision.refusal is not None
        raise decision.refusal.error(store)


def take_over(
    folder: Path,
    run_id: str,
    *,
    tracking_uri: str,
    shown_uri: str,
    factory: BackendFactory,
) -> None:
    """Send what earlier processes left in ``folder`` for ``run_id`` (journals of
    ``shown_uri``), before the session continues the run; ``RunError`` when one of them is
    still being written (its process lives)."""
    results = sync_journals(
        folder,
        tracking_uri=tracking_uri,
        shown_uri=shown_uri,
        factory=factory,
        continuing=run_id,
    )
    for result in results:
        if result.state == "in use":
            raise RunError(
                f"run {run_id!r} is still being logged by a live process on this machine (its "
                f"journal {result.journal} is locked): it cannot be continued; let that "
                "process end (or kill it), or start a new run (tracking.run.resume: never)"
            )
        if result.state == "failed":
            raise RunError(
                f"could not send what an earlier process left of run {run_id!r} "
                f"({result.journal}): {result.detail}; run trackcfg sync, then start again"
            )
        if result.state == "sent":
            logger.info(
                "sent what an earlier process left of run %s (%d logging call(s), %s)",
                run_id,
                result.records,
                result.journal,
            )


def mark_continued(backend: Backend, run_id: str) -> None:
    """Tag the run as continued now: a journal written before (by a process that is gone)
    never ends it in a later ``trackcfg sync``."""
    now = str(int(time.time() * 1000))
    backend.log_batch(run_id, Batch(tags=((CONTINUED_TAG, now),)))
