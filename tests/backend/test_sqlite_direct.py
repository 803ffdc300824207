"""Metric points written straight into a local SQLite store's tables (``_mlflow/_sqlite_fast``)
read back through MLflow's own API exactly as MLflow's ``log_batch`` stores them: the same
points are sent to one run through ``MlflowBackend.log_batch`` (the direct path) and to
another with ``MlflowClient.log_batch``; every history and latest value must be identical.
What the direct path cannot vouch for (an unknown schema, a deleted run, an active model, a
key MLflow refuses) goes through MLflow's ``log_batch``, with MLflow's result and errors."""

from __future__ import annotations

import logging
import math
import os
import shutil
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.tracking import _tracking_service

from trackcfg._mlflow import MlflowBackend
from trackcfg._mlflow._sqlite_fast import KNOWN_REVISIONS
from trackcfg._params import Batch, MetricPoint
from trackcfg.exceptions import RunError

INF, NAN = math.inf, math.nan


@pytest.fixture
def store(tmp_path: Path, migrated_sqlite_db: Path) -> Path:
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    shutil.copyfile(migrated_sqlite_db, db)
    return db


@pytest.fixture
def uri(store: Path) -> str:
    return f"sqlite:///{store}"


@pytest.fixture
def client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


@pytest.fixture
def backend(uri: str) -> Iterator[MlflowBackend]:
    opened = MlflowBackend(uri)
    yield opened
    opened.close()


@pytest.fixture
def experiment_id(client: MlflowClient) -> str:
    created: str = client.create_experiment("direct")
    return created


def _points(*rows: tuple[str, float, int, int]) -> list[MetricPoint]:
    return [MetricPoint(key=k, value=v, step=s, timestamp=t) for k, v, s, t in rows]


def _as_mlflow(points: Sequence[MetricPoint]) -> list[Metric]:
    return [Metric(p.key, p.value, p.timestamp, p.step) for p in points]


def _seen(value: float) -> object:
    """A value as compared here: NaN equal to NaN, and -0.0 apart from 0.0."""
    return "nan" if math.isnan(value) else repr(value)


def _observed(client: MlflowClient, run_id: str) -> dict[str, Any]:
    """What a user reads of a run's metrics through MLflow's API."""
    run = client.get_run(run_id)
    latest = {key: _seen(value) for key, value in run.data.metrics.items()}
    histories = {
        key: [(_seen(m.value), m.step, m.timestamp) for m in client.get_metric_history(run_id, key)]
        for key in run.data.metrics
    }
    return {"latest": latest, "histories": histories}


# Each case: batches of points, sent in this order.
CASES: dict[str, list[list[MetricPoint]]] = {
    "plain values": [
        _points(*((k, float(i * j), i, 1_000 + i) for i in range(40) for j, k in enumerate("abc")))
    ],
    "NaN": [_points(("a", 1.0, 0, 10), ("a", NAN, 1, 11), ("b", NAN, 0, 10), ("c", NAN, 5, 9))],
    "+inf": [_points(("a", 1.0, 0, 10), ("a", INF, 1, 11), ("b", INF, 0, 10), ("b", 3.0, 0, 10))],
    "-inf": [_points(("a", -INF, 2, 10), ("a", 1.0, 1, 11), ("b", -INF, 0, 10), ("b", 0.0, 0, 9))],
    "repeated steps": [
        _points(
            ("a", 1.0, 3, 10),
            ("a", 2.0, 3, 10),  # same step and time: the greater value is the latest
            ("a", 0.5, 3, 12),  # a later time wins over a greater value
            ("a", 0.5, 3, 12),  # the same point twice: stored once
            ("a", NAN, 3, 12),  # NaN is stored as 0 and ranks as 0
            ("b", NAN, 1, 5),
            ("b", 0.0, 1, 5),  # equal to the NaN as stored: the first of equals stays
            ("c", 0.0, 1, 5),
            ("c", NAN, 1, 5),  # ... whichever came first
            ("e", NAN, 1, 5),
            ("e", NAN, 1, 5),  # NaN twice: stored once
        )
    ],
    "batches out of order": [
        _points(*((k, float(i), i, 500 + i) for i in range(50, 100) for k in "ab")),
        _points(*((k, float(-i), i, 500 + i) for i in range(50) for k in "ab")),
        _points(("a", 7.0, 99, 599), ("b", 99.0, 99, 599), ("c", 1.0, 0, 1)),  # ties and equals
        _points(("a", 8.0, 99, 598), ("b", NAN, 100, 1), ("c", 2.0, 0, 1), ("c", 0.0, 0, 2)),
        _points(("a", 1.0, 99, 600), ("b", 0.0, 100, 1), ("c", NAN, 0, 2)),  # later time; ties
    ],
    "timestamps of 0 (now)": [_points(("a", 1.0, 0, 0), ("a", 2.0, 1, 0), ("b", 3.0, 0, 0))],
}

EARLIER = _points(
    ("a", 5.0, 10, 100),
    ("a", 1.0, 3, 50),
    ("b", NAN, 4, 40),
    ("c", INF, 2, 20),
    ("d", 1.0, 1, 1),
)


def _send_both(
    backend: MlflowBackend,
    client: MlflowClient,
    experiment_id: str,
    batches: list[list[MetricPoint]],
    earlier: Sequence[MetricPoint] = (),
) -> tuple[str, str]:
    """The same batches to two runs: through the backend and through MLflow's client (a
    timestamp of 0 made the same "now" in both)."""
    direct = client.create_run(experiment_id).info.run_id
    reference = client.create_run(experiment_id).info.run_id
    if earlier:
        for run_id in (direct, reference):
            client.log_batch(run_id, metrics=_as_mlflow(earlier))
    for batch in batches:
        backend.log_batch(direct, Batch(metrics=tuple(batch)))
        written = client.get_metric_history(direct, batch[0].key)
        now = max(m.timestamp for m in written)  # what "now" was for a timestamp of 0
        client.log_batch(
            reference,
            metrics=[Metric(p.key, p.value, p.timestamp or now, p.step) for p in batch],
        )
    return direct, reference


@pytest.mark.parametrize("case", CASES)
def test_points_read_back_as_mlflows_log_batch_stores_them(
    case: str, backend: MlflowBackend, client: MlflowClient, experiment_id: str
) -> None:
    batches = CASES[case]
    if case == "timestamps of 0 (now)":  # one batch, one "now": the same in both runs
        direct = client.create_run(experiment_id).info.run_id
        backend.log_batch(direct, Batch(metrics=tuple(batches[0])))
        now = client.get_metric_history(direct, "a")[0].timestamp
        assert now > 0
        reference = client.create_run(experiment_id).info.run_id
        client.log_batch(
            reference, metrics=[Metric(p.key, p.value, now, p.step) for p in batches[0]]
        )
    else:
        direct, reference = _send_both(backend, client, experiment_id, batches)

    writer = backend.sqlite_metrics
    assert writer is not None
    assert (writer.written, writer.fell_back) == (len(batches), 0)
    assert _observed(client, direct) == _observed(client, reference)


@pytest.mark.parametrize("case", [case for case in CASES if "timestamps of 0" not in case])
def test_points_added_to_a_run_mlflow_wrote_to_read_back_the_same(
    case: str, backend: MlflowBackend, client: MlflowClient, experiment_id: str
) -> None:
    batches = [batch + list(EARLIER[:2]) for batch in CASES[case]]  # some already there
    direct, reference = _send_both(backend, client, experiment_id, batches, earlier=EARLIER)

    writer = backend.sqlite_metrics
    assert writer is not None
    assert (writer.written, writer.fell_back) == (len(batches), 0)
    observed = _observed(client, direct)
    assert observed == _observed(client, reference)
    assert observed["latest"]["d"] == "1.0"


def test_the_same_batch_sent_twice_is_stored_once(
    backend: MlflowBackend, client: MlflowClient, experiment_id: str
) -> None:
    """A batch the sender sends again (its acknowledgement lost) adds no point."""
    batch = Batch(metrics=tuple(_points(("a", 1.0, 0, 5), ("a", NAN, 1, 6), ("a", INF, 2, 7))))
    direct = client.create_run(experiment_id).info.run_id
    backend.log_batch(direct, batch)
    backend.log_batch(direct, batch)

    history = client.get_metric_history(direct, "a")
    assert [(_seen(m.value), m.step) for m in history] == [
        ("1.0", 0),
        ("nan", 1),
        ("1.7976931348623157e+308", 2),
    ]


def test_params_and_tags_in_a_batch_with_points_are_stored_too(
    backend: MlflowBackend, client: MlflowClient, experiment_id: str
) -> None:
    run_id = client.create_run(experiment_id).info.run_id
    batch = Batch(
        params=(("lr", "0.1"),),
        tags=(("team", "vision"),),
        metrics=tuple(_points(("loss", 0.5, 1, 1_000), ("loss", 0.4, 2, 1_001))),
    )

    backend.log_batch(run_id, batch)

    run = client.get_run(run_id)
    assert run.data.params == {"lr": "0.1"}
    assert run.data.tags["team"] == "vision"
    assert run.data.metrics == {"loss": 0.4}
    writer = backend.sqlite_metrics
    assert writer is not None
    assert writer.written == 1


def test_an_unknown_schema_revision_sends_the_points_with_mlflows_log_batch(
    backend: MlflowBackend,
    client: MlflowClient,
    experiment_id: str,
    store: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = _points(("a", 1.0, 0, 10), ("b", NAN, 0, 10))
    direct, reference = _send_both(backend, client, experiment_id, [first])
    writer = backend.sqlite_metrics
    assert writer is not None
    assert (writer.written, writer.fell_back) == (1, 0)
    # A store whose schema the installed trackcfg does not know (MLflow opened it already).
    with sqlite3.connect(store) as connection:
        (revision,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        connection.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    try:
        later = [
            _points(("a", 2.0, 1, 11), ("a", -INF, 2, 12), ("c", INF, 0, 1)),
            _points(("a", 3.0, 1, 11), ("b", 4.0, 0, 10)),
        ]
        with caplog.at_level(logging.DEBUG, logger="trackcfg._mlflow._sqlite_fast"):
            for batch in later:
                backend.log_batch(direct, Batch(metrics=tuple(batch)))
                client.log_batch(reference, metrics=_as_mlflow(batch))
    finally:
        with sqlite3.connect(store) as connection:
            connection.execute("UPDATE alembic_version SET version_num = ?", (revision,))

    assert (writer.written, writer.fell_back) == (1, 2)
    told = [r.getMessage() for r in caplog.records if "schema revision" in r.getMessage()]
    assert len(told) == 1  # once, not once per batch
    assert "schema revision ffffffffffff is not one known to trackcfg" in told[0]
    assert _observed(client, direct) == _observed(client, reference)


def test_a_deleted_run_is_refused_with_mlflows_own_error(
    backend: MlflowBackend, client: MlflowClient, experiment_id: str
) -> None:
    run_id = client.create_run(experiment_id).info.run_id
    client.delete_run(run_id)

    with pytest.raises(RunError, match=r"must be in the 'active' state"):
        backend.log_batch(run_id, Batch(metrics=tuple(_points(("a", 1.0, 0, 1)))))

    writer = backend.sqlite_metrics
    assert writer is not None
    assert (writer.written, writer.fell_back) == (0, 1)
    with sqlite3.connect(backend.tracking_uri.removeprefix("sqlite:///")) as connection:
        assert connection.execute("SELECT count(*) FROM metrics").fetchone() == (0,)


def test_a_key_mlflow_refuses_is_refused_with_mlflows_own_error(
    backend: MlflowBackend, client: MlflowClient, experiment_id: str
) -> None:
    run_id = client.create_run(experiment_id).info.run_id
    batch = Batch(metrics=tuple(_points(("good", 1.0, 0, 1), ("../bad", 1.0, 0, 1))))

    with pytest.raises(RunError, match=r"Invalid value .*\.\./bad"):
        backend.log_batch(run_id, batch)

    writer = backend.sqlite_metrics
    assert writer is not None
    assert (writer.written, writer.fell_back) == (0, 1)
    assert client.get_run(run_id).data.metrics == {}  # nothing of the batch was written


def test_with_an_active_model_points_go_through_mlflow_which_logs_them_to_the_model(
    backend: MlflowBackend,
    client: MlflowClient,
    experiment_id: str,
    uri: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_tracking_service.utils, "_tracking_uri", uri)  # where MLflow looks
    run_id = client.create_run(experiment_id).info.run_id
    model = client.create_logged_model(experiment_id, name="m", source_run_id=run_id)
    mlflow.set_active_model(model_id=model.model_id)
    try:
        backend.log_batch(run_id, Batch(metrics=tuple(_points(("acc", 0.9, 0, 1)))))
    finally:
        mlflow.clear_active_model()
        os.environ.pop("MLFLOW_ACTIVE_MODEL_ID", None)

    writer = backend.sqlite_metrics
    assert writer is not None
    assert (writer.written, writer.fell_back) == (0, 1)
    assert client.get_run(run_id).data.metrics == {"acc": 0.9}
    metrics = client.get_logged_model(model.model_id).metrics or []
    assert [(m.key, m.value) for m in metrics] == [("acc", 0.9)]


def test_the_installed_mlflows_schema_is_a_known_one(store: Path) -> None:
    """An MLflow upgrade with a new migration fails here: read the migration; when it leaves
    ``metrics`` and ``latest_metrics`` as they are, add its revision to KNOWN_REVISIONS."""
    with sqlite3.connect(store) as connection:
        (revision,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        columns = {
            table: [row[1] for row in connection.execute(f"PRAGMA table_info({table})")]
            for table in ("metrics", "latest_metrics")
        }
    assert revision in KNOWN_REVISIONS, f"MLflow {mlflow.__version__}'s schema {revision}"
    assert columns == {
        "metrics": ["key", "value", "timestamp", "run_uuid", "step", "is_nan"],
        "latest_metrics": ["key", "value", "timestamp", "step", "is_nan", "run_uuid"],
    }


def test_a_lock_held_past_mlflows_wait_is_said_as_mlflows_and_the_batch_lands_later(
    backend: MlflowBackend,
    client: MlflowClient,
    experiment_id: str,
    store: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not 20 s more in MLflow's log_batch: the locked store's error at once (the sender
    tries again later), with nothing of the batch written."""
    from trackcfg._mlflow import _sqlite_fast
    from trackcfg.exceptions import TrackingUnavailableError

    monkeypatch.setattr(_sqlite_fast, "_BUSY_TIMEOUT_MS", 300)  # MLflow's 20 s, shortened
    run_id = client.create_run(experiment_id).info.run_id
    batch = Batch(metrics=tuple(_points(("a", 1.0, 0, 5), ("a", 2.0, 1, 6))))
    holder = sqlite3.connect(store, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(TrackingUnavailableError, match=rf"this process \(pid {os.getpid()}\)"):
            backend.log_batch(run_id, batch)
        holder.execute("ROLLBACK")
    finally:
        holder.close()
    assert client.get_metric_history(run_id, "a") == []

    backend.log_batch(run_id, batch)  # the sender's next try

    writer = backend.sqlite_metrics
    assert writer is not None
    assert (writer.written, writer.fell_back) == (1, 0)
    history = client.get_metric_history(run_id, "a")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 2.0)]
