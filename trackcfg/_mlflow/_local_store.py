"""A local SQLite store's experiment 0 ("Default"), whose artifacts MLflow puts under the CWD
of whichever process first set the store up: kept under the project's store instead."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path
from urllib.parse import urlsplit

from trackcfg._sqlite_locks import store_creation_lock

__all__ = ["prepare_local_store"]

logger = logging.getLogger(__name__)


def prepare_local_store(tracking_uri: str, artifact_root: str) -> None:
    """Experiment 0 ("Default") of a local SQLite store keeps its artifacts under
    ``artifact_root``, whatever the CWD.

    MLflow makes experiment 0 when it first sets a store up, with its artifacts in
    ``<CWD>/mlruns/0`` (the CWD of whichever process came first): a store set up from another
    folder would send experiment 0's artifacts there.  A new store is set up here with
    ``artifact_root`` instead; an existing one whose experiment 0 points outside the store's
    folder is pointed at ``<artifact_root>/0`` (only new runs go there: each run keeps the
    artifact location it was created with).  Experiment 0 is MLflow's own: no user chose
    its location."""
    if not tracking_uri.startswith("sqlite:///"):
        return
    db = Path(tracking_uri.removeprefix("sqlite:///").split("?", 1)[0])
    if not db.is_absolute():
        db = Path("/", db)  # sqlite://// + absolute path: the prefix ate its slash
    expected = f"{artifact_root.rstrip('/')}/0"
    location = _default_experiment_location(db)
    if location is None:  # no store yet: MLflow sets it up now, with the right root
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        # Processes opening a new store at once would each create its tables: one at a time.
        with store_creation_lock(tracking_uri):
            if _default_experiment_location(db) is None:
                store = SqlAlchemyStore(tracking_uri, artifact_root)  # type: ignore[no-untyped-call]
                store.engine.dispose()
        return
    if location == expected or _inside(location, db.parent):
        return
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as connection, connection:
        connection.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (expected,)
        )
    logger.info(
        "experiment 0 (Default) of %s kept its artifacts in %s, outside the store; new runs "
        "of it keep theirs in %s",
        db,
        location,
        expected,
    )


def _default_experiment_location(db: Path) -> str | None:
    """Experiment 0's artifact location in the SQLite store ``db``; None when the store is
    not set up yet (no file, or no MLflow tables)."""
    if not db.is_file():
        return None
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as connection:
        try:
            row = connection.execute(
                "SELECT artifact_location FROM experiments WHERE experiment_id = 0"
            ).fetchone()
        except sqlite3.OperationalError:  # no such table: an empty file
            return None
    return None if row is None else str(row[0])


def _inside(location: str, folder: Path) -> bool:
    """Whether an artifact location lies in ``folder`` (another scheme: not to be moved)."""
    from urllib.parse import unquote

    if location.startswith("file:"):
        location = unquote(urlsplit(location).path)
    elif "://" in location:
        return True
    return Path(location).resolve().is_relative_to(folder.resolve())
