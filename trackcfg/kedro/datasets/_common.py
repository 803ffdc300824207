"""What trackcfg's Kedro datasets share: the warning when nothing tracks, run checks."""

from __future__ import annotations

import warnings

from kedro.io import DatasetError

from ._target import Target

__all__ = ["NoTrackingWarning", "loggable", "run_to_read"]


class NoTrackingWarning(UserWarning):
    """A dataset was saved with no trackcfg session to log into (Kedro hooks off, or outside
    a pipeline run): it saved locally and logged nothing."""


def loggable(target: Target, what: str, activated: bool = True, *, warn: bool = True) -> bool:
    """Whether a save logs: a run to log into, tracking not disabled.  With no run at all
    (no session, no ``run_id``), Python shows a ``NoTrackingWarning`` once per process
    (unless ``warn`` is false: a question asked before the save)."""
    if target.disabled or not activated:
        return False
    if target.run_id is None and not warn:
        return False
    if target.run_id is None:
        warnings.warn(
            f"{what}: no MLflow run to log into (not a pipeline run with trackcfg's hooks, no "
            "open TrackingSession, no active MLflow run), so nothing is logged; run it with "
            "`kedro run`, inside `with mlflow.start_run():` or `with TrackingSession(...):`, "
            "or give the dataset a run_id",
            NoTrackingWarning,
            stacklevel=3,
        )
        return False
    return True


def run_to_read(target: Target, what: str) -> str:
    """The run a load reads from; ``DatasetError`` saying what to do when there is none."""
    if target.run_id is not None:
        return target.run_id
    why = (
        "tracking is disabled for this pipeline (disable_tracking.pipelines or "
        "TRACKCFG_DISABLE), so no run holds it"
        if target.disabled
        else "not a pipeline run with trackcfg's hooks, and no open TrackingSession or "
        "active MLflow run"
    )
    raise DatasetError(
        f"{what}: cannot load, no MLflow run to read from: {why}; give the dataset a "
        "run_id in the catalog to read a run's values"
    )
