"""Metric points written straight into a local SQLite store's tables (issue 24, goal 2).

MLflow's ``SqlAlchemyStore.log_batch`` spends ~190 ms on 1,000 points (measured with MLflow
3.17 on these machines): an ORM object per point, the batch validated point by point, the run
read in three sessions, one commit each for params, metrics and tags.  Here the same rows go in
with one ``executemany`` in one transaction on the store's own SQLAlchemy engine (its pool, so
the SQLite file is opened once), about 12x faster per batch.

What is written is what MLflow's ``_log_metrics`` writes, read back identically by MLflow's API:

- ``metrics``: one row per point, ``INSERT OR IGNORE`` (MLflow catches the primary key's
  IntegrityError and inserts the points not there yet: the same rows);
- NaN stored as value 0 with ``is_nan`` 1, +inf and -inf as the largest and smallest double
  (MLflow's ``sanitize_metric_value``); every comparison below uses the stored value;
- ``latest_metrics``: per key, the point greatest by (step, timestamp, stored value), the first
  of equals winning within a batch, replacing the run's row only when strictly greater.

It is used only when everything is known, and ``write`` returns False otherwise (the caller
sends the batch with MLflow's ``log_batch``, which also gives MLflow's own errors):

- the store is MLflow's ``SqlAlchemyStore`` on a ``sqlite:`` URI;
- the store's schema revision (``alembic_version``, read in the writing transaction) is one of
  ``KNOWN_REVISIONS``: MLflow 3.0.0's head and every revision after it up to the installed
  MLflow's (3.17.2); none of them changes ``metrics`` or ``latest_metrics`` but for an index.
  An unknown revision (a newer MLflow, a downgraded store) is MLflow's business;
- the run exists and is active; no active model (MLflow's client gives each point its
  ``model_id`` then, and logs model metrics too);
- every key passes MLflow's own name check; values are numbers, timestamps and steps integers;
- nothing raised (a disk error, anything unforeseen): the transaction is rolled back, nothing
  of it is in the store.

A lock another connection held past MLflow's own wait (20 s, the same ``busy_timeout`` here)
is not a reason to wait 20 s more in ``log_batch``: it is raised as MLflow's locked store is
(``_sqlite_locks.locked_store_error``, naming who holds the lock), and the sender tries the
batch again later, as for any store that is away.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from typing import Any

from trackcfg._records import MetricPoint
from trackcfg._sqlite_locks import locked_store_error, sqlite_busy
from trackcfg._store import mask_uri

__all__ = ["KNOWN_REVISIONS", "SqliteMetrics", "sqlite_metrics_for"]

logger = logging.getLogger(__name__)

#: ``alembic_version.version_num`` of the stores whose metric tables are written here:
#: MLflow 3.0.0's head (``6953534de441``) and every revision after it, to MLflow 3.17.2's
#: head (``dc11669786a5``).  A test pins that the installed MLflow's head is one of them.
KNOWN_REVISIONS = frozenset(
    {
        "6953534de441",
        "bda7b8c39065",
        "cbc13b556ace",
        "770bee3ae1dd",
        "a1b2c3d4e5f6",
        "de4033877273",
        "1a0cddfcaa16",
        "534353b11cbc",
        "71994744cf8e",
        "3da73c924c2f",
        "bf29a5ff90ea",
        "1bd49d398cd23",
        "b7c8d9e0f1a2",
        "5d2d30f0abce",
        "c9d4e5f6a7b8",
        "2c33131f4dae",
        "d3e4f5a6b7c8",
        "d0e1f2a3b4c5",
        "c8d9e0f1a2b3",
        "1b5f0d9ad7c1",
        "e1f2a3b4c5d6",
        "76601a5f987d",
        "c3d6457b6d8a",
        "a5b4c3d2e1f0",
        "ae8bbe7743c9",
        "7d34483879f0",
        "da6fb0208061",
        "89d3d66ed43f",
        "b7e4c1a90f23",
        "a8b9c0d1e2f3",
        "c1d2e3f4a5b6",
        "c3d9e7f1a2b4",
        "6f8d9c3b2a1e",
        "1971f2d9a75b",
        "17e22815139b",
        "b7e2c1a4d9f3",
        "75868b020152",
        "dc11669786a5",
    }
)

#: MLflow's SQL store waits this long for a SQLite lock (``PRAGMA busy_timeout`` in each of
#: its sessions); the same here, so a lock is handled alike (``_sqlite_locks``).
_BUSY_TIMEOUT_MS = 20_000
_MAX_DOUBLE = 1.7976931348623157e308
_KEYS_PER_QUERY = 500  # bound parameters per IN (...), as MLflow's own batches of keys
_MAX_KEY = 250  # the key columns' VARCHAR(250)

_INSERT_METRICS = (
    "INSERT OR IGNORE INTO metrics (key, value, timestamp, run_uuid, step, is_nan) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_INSERT_LATEST = (
    "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_UPDATE_LATEST = (
    "UPDATE latest_metrics SET value = ?, timestamp = ?, step = ?, is_nan = ? "
    "WHERE key = ? AND run_uuid = ?"
)

# (step, timestamp, stored value, is_nan)
_Latest = tuple[int, int, float, int]


class _Unusable(Exception):
    """This batch goes through MLflow's log_batch (the reason is the message)."""


class SqliteMetrics:
    """Writes metric points into one SQLite store's tables; counts what it did (tests and
    benchmarks read ``written`` and ``fell_back``)."""

    def __init__(self, engine: Any, tracking_uri: str) -> None:
        self._engine = engine
        self._tracking_uri = tracking_uri
        self._checked_keys: set[str] = set()
        self._told: set[str] = set()
        self.written = 0
        self.fell_back = 0

    def write(self, run_id: str, points: Sequence[MetricPoint], now: int) -> bool:
        """Store ``points`` (a timestamp of 0 is ``now``) in run ``run_id``; False when they
        must go through MLflow's ``log_batch`` instead (nothing of them was written)."""
        try:
            rows, latest = self._rows(run_id, points, now)
            self._store(run_id, rows, latest)
        except Exception as exc:
            if sqlite_busy(exc):
                raise locked_store_error(self._tracking_uri) from None
            self.fell_back += 1
            reason = str(exc) if isinstance(exc, _Unusable) else type(exc).__name__
            if reason not in self._told:  # once per reason and store, not once per batch
                self._told.add(reason)
                logger.debug(
                    "metric points for run %s sent with MLflow's log_batch, not written "
                    "directly into %s: %s",
                    run_id,
                    mask_uri(self._tracking_uri),
                    reason,
                )
            return False
        self.written += 1
        return True

    def _rows(
        self, run_id: str, points: Sequence[MetricPoint], now: int
    ) -> tuple[list[tuple[str, float, int, str, int, int]], dict[str, _Latest]]:
        from mlflow.tracking.fluent import get_active_model_id

        if get_active_model_id() is not None:
            raise _Unusable("a model is active (MLflow logs model metrics too)")
        rows: list[tuple[str, float, int, str, int, int]] = []
        latest: dict[str, _Latest] = {}
        isnan, isinf = math.isnan, math.isinf
        for point in points:
            key, value, step, timestamp = point.key, point.value, point.step, point.timestamp
            if key not in self._checked_keys:
                self._check_key(key)
            kind = type(value)
            if kind is not float and (kind is not int or isinstance(value, bool)):
                raise _Unusable(f"metric {key!r} has a {kind.__name__} value")
            if type(step) is not int or type(timestamp) is not int or timestamp < 0:
                raise _Unusable(f"metric {key!r} has a step or timestamp that is no integer")
            if not timestamp:
                timestamp = now
            nan = 0
            stored = float(value)
            if isnan(stored):
                nan, stored = 1, 0.0
            elif isinf(stored):
                stored = _MAX_DOUBLE if stored > 0 else -_MAX_DOUBLE
            rows.append((key, stored, timestamp, run_id, step, nan))
            candidate = (step, timestamp, stored, nan)
            best = latest.get(key)
            if best is None or candidate[:3] > best[:3]:
                latest[key] = candidate
        return rows, latest

    def _check_key(self, key: str) -> None:
        from mlflow.exceptions import MlflowException
        from mlflow.utils.validation import _validate_metric_name

        try:
            _validate_metric_name(key)  # type: ignore[no-untyped-call]
        except MlflowException:
            raise _Unusable(f"metric key {key!r} is refused by MLflow") from None
        if not isinstance(key, str) or len(key) > _MAX_KEY:
            raise _Unusable(f"metric key {key[:40]!r}... is too long")
        self._checked_keys.add(key)

    def _store(
        self,
        run_id: str,
        rows: list[tuple[str, float, int, str, int, int]],
        latest: dict[str, _Latest],
    ) -> None:
        connection = self._engine.raw_connection()  # from the store's pool
        try:
            cursor = connection.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
                cursor.execute("BEGIN IMMEDIATE")  # the write lock first: no upgrade deadlock
                found = cursor.execute("SELECT version_num FROM alembic_version").fetchall()
                if len(found) != 1 or found[0][0] not in KNOWN_REVISIONS:
                    versions = ", ".join(str(row[0]) for row in found) or "none"
                    raise _Unusable(f"schema revision {versions} is not one known to trackcfg")
                stage = cursor.execute(
                    "SELECT lifecycle_stage FROM runs WHERE run_uuid = ?", (run_id,)
                ).fetchall()
                if stage != [("active",)]:
                    raise _Unusable("the run is not an active run of the store")
                cursor.executemany(_INSERT_METRICS, rows)
                stored = self._latest_rows(cursor, run_id, list(latest))
                inserts = []
                updates = []
                for key, (step, timestamp, value, nan) in latest.items():
                    old = stored.get(key)
                    if old is None:
                        inserts.append((key, value, timestamp, step, nan, run_id))
                    elif (step, timestamp, value) > old:
                        updates.append((value, timestamp, step, nan, key, run_id))
                if inserts:
                    cursor.executemany(_INSERT_LATEST, inserts)
                if updates:
                    cursor.executemany(_UPDATE_LATEST, updates)
                cursor.execute("COMMIT")
            except BaseException:
                # Else the pool's reset rolls it back when the connection goes back.
                with contextlib.suppress(Exception):
                    if connection.dbapi_connection.in_transaction:
                        cursor.execute("ROLLBACK")
                raise
            finally:
                cursor.close()
        finally:
            connection.close()  # back to the pool

    @staticmethod
    def _latest_rows(
        cursor: Any, run_id: str, keys: list[str]
    ) -> dict[str, tuple[int, int, float]]:
        stored: dict[str, tuple[int, int, float]] = {}
        for start in range(0, len(keys), _KEYS_PER_QUERY):
            chunk = keys[start : start + _KEYS_PER_QUERY]
            marks = ", ".join("?" * len(chunk))
            for key, step, timestamp, value in cursor.execute(
                "SELECT key, step, timestamp, value FROM latest_metrics "
                f"WHERE run_uuid = ? AND key IN ({marks})",
                (run_id, *chunk),
            ):
                if timestamp is None:  # MLflow itself could not compare with this row
                    raise _Unusable(f"the latest value of {key!r} has no timestamp")
                stored[key] = (int(step), int(timestamp), float(value))
        return stored


def sqlite_metrics_for(store: Any, tracking_uri: str) -> SqliteMetrics | None:
    """The direct writer for MLflow's tracking store ``store``; None when it is not MLflow's
    SQL store on a SQLite file."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    if not isinstance(store, SqlAlchemyStore) or getattr(store, "db_type", None) != "sqlite":
        return None
    engine = getattr(store, "engine", None)
    if engine is None or engine.url.database in (None, "", ":memory:"):
        return None
    return SqliteMetrics(engine, tracking_uri)
