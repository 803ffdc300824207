"""The "View run" lines a run's end prints: MLflow's own link for a tracking server, composed
from the run trackcfg holds (MLflow would fetch it again), and for a local store, which MLflow
ends silently, the command that shows it."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from trackcfg import _state
from trackcfg._env import exported
from trackcfg._sqlite_locks import sqlite_file

__all__ = ["SUPPRESS_LINK", "quiet_links", "run_link"]


def _link_base(tracking_uri: str) -> str:
    """The server's address for a link a person opens: without the user name and password
    (which must not be printed, and which the browser asks for)."""
    parts = urlsplit(tracking_uri)
    if "@" not in parts.netloc:
        return tracking_uri.rstrip("/")
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])).rstrip("/")


SUPPRESS_LINK = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"


def run_link(tracking_uri: str, run: Any) -> str | None:
    """The "View run" lines MLflow writes to stdout when a run on a tracking server ends,
    composed from the run the active-run stack holds.  MLflow fetches the run again to write
    them (one more request per run, ~10 ms on a fast server, ~50 ms on a stalling one).

    None, and MLflow decides as before, where its rules differ from a plain server (Databricks,
    workspaces), where the user turned the printing off, or where its helpers moved.  For a
    local store, where MLflow prints nothing: ``_local_run_link``."""
    if not tracking_uri.startswith(("http://", "https://")):
        return _local_run_link(tracking_uri, run)
    try:
        from mlflow.environment_variables import MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT
        from mlflow.utils import databricks_utils
        from mlflow.utils.workspace_context import get_request_workspace
    except ImportError:  # pragma: no cover - another MLflow version
        return None
    suppress: Any = MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT
    databricks: Any = databricks_utils
    if suppress.get() or databricks.is_in_databricks_runtime() or get_request_workspace():
        return None
    experiment = f"{_link_base(tracking_uri)}/#/experiments/{run.info.experiment_id}"
    return (
        f"\N{RUNNER} View run {run.info.run_name} at: {experiment}/runs/{run.info.run_id}\n"
        f"\N{TEST TUBE} View experiment at: {experiment}\n"
    )


def _local_run_link(tracking_uri: str, run: Any) -> str | None:
    """For a top-level run in a local store (a SQLite file, an old file store), which MLflow
    ends silently: the command that shows it, as it runs in a shell, and the run's address
    there (MLflow's UI listens on 127.0.0.1:5000 by default).  Children are found under their
    parent: a sweep says it once.  Off with ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT``, as
    MLflow's own link."""
    import shlex

    from mlflow.environment_variables import MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT

    suppress: Any = MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT
    if suppress.get() or run.data.tags.get("mlflow.parentRunId"):
        return None
    if sqlite_file(tracking_uri) is not None:
        variables = ""
    elif tracking_uri.startswith("file:"):
        variables = "MLFLOW_ALLOW_FILE_STORE=true "  # MLflow 3 opens a file store only so
    else:  # in memory, or not local
        return None
    # This interpreter by its path: a bare `mlflow` found on PATH now may be a virtualenv's
    # that the user's shell does not have (nox, tox and IDE runners put theirs on PATH).
    mlflow_command = f"{shlex.quote(sys.executable)} -m mlflow"
    command = f"{variables}{mlflow_command} ui --backend-store-uri {shlex.quote(tracking_uri)}"
    info = run.info
    return (
        f"\N{RUNNER} View run {info.run_name} with: {command}\n"
        f"   then open http://127.0.0.1:5000/#/experiments/{info.experiment_id}/runs/"
        f"{info.run_id}\n"
    )


def _quietable() -> bool:
    """Wrap MLflow's ``TrackingServiceClient._log_url`` (once; a no-op while the flag is off)
    so that ``quiet_links`` can leave the link out in one context; False where it moved."""
    from mlflow.tracking._tracking_service.client import TrackingServiceClient

    cls: Any = TrackingServiceClient
    original = getattr(cls, "_log_url", None)
    if original is None:
        return False
    if getattr(original, "_trackcfg_quiet", False):
        return True

    def _log_url(self: Any, run_id: str) -> Any:
        if _state.quiet_mlflow_links.get():
            return None
        return original(self, run_id)

    _log_url._trackcfg_quiet = True  # type: ignore[attr-defined]
    cls._log_url = _log_url
    return True


@contextlib.contextmanager
def quiet_links(quiet: bool = True) -> Iterator[None]:
    """MLflow prints no "View run" link for runs ended in this context within the block
    (where its hook moved: ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT`` for the block)."""
    if not quiet:
        yield
        return
    if not _quietable():
        with exported({SUPPRESS_LINK: "true"}):
            yield
        return
    token = _state.quiet_mlflow_links.set(True)
    try:
        yield
    finally:
        _state.quiet_mlflow_links.reset(token)
