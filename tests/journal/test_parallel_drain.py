"""A tracking server drained in parallel (issue 24, goal 3): metrics-only batches go out up to
``_sender.IN_FLIGHT`` at a time; params and tags keep their order; acknowledgements cover only
what is stored, in order; refusals are still isolated and reported; every point lands once.

The fake store's ``log_batch`` is slowed down here so that requests overlap (and is watched:
when each batch starts and ends, what it holds, what the journal acknowledged meanwhile); the
last test drains into a real ``mlflow server`` and reads every point back through MLflow.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeBackend, FakeStore

from trackcfg import TrackingSession, load_config
from trackcfg._backend import RunStatus
from trackcfg._records import Batch
from trackcfg._sender import IN_FLIGHT
from trackcfg.exceptions import RunError

FAKE_SERVER = "http://fake.invalid"
STEPS = 4_000  # 12,000 points: 12 full batches


class _Watched(FakeBackend):
    def log_batch(self, run_id: str, batch: Batch) -> None:
        store = self.store
        assert isinstance(store, WatchedStore)
        store.started(batch)
        try:
            time.sleep(store.delay(batch))
            super().log_batch(run_id, batch)
        finally:
            store.ended(batch)


class WatchedStore(FakeStore):
    """A fake store whose ``log_batch`` takes a while and notes what overlapped."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, int, Batch]] = []  # ("start" | "end", batch number, batch)
        self.running = 0
        self.most_at_once = 0
        self.slow_first: threading.Event | None = None
        self.acks_while_first_ran: list[str] | None = None
        self.journal: Path | None = None
        self._numbers: dict[int, int] = {}
        self._watch = threading.Lock()

    def __call__(self, tracking_uri: str, registry_uri: str | None = None) -> FakeBackend:
        backend = super().__call__(tracking_uri, registry_uri)
        backend.__class__ = _Watched
        return backend

    def delay(self, batch: Batch) -> float:
        first = self.slow_first is not None and any(m.step == 0 for m in batch.metrics)
        if not first:
            return 0.02
        # The first metric batch: held until later batches have landed, then the journal is
        # read (what it acknowledged while this batch was not stored).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with self._watch:
                later = sum(1 for kind, _, b in self.events if kind == "end" and b.metrics)
            if later >= 2:
                break
            time.sleep(0.01)
        time.sleep(0.2)  # what a lane would acknowledge, it has by now
        assert self.journal is not None
        (journal,) = self.journal.glob("*.journal")
        self.acks_while_first_ran = [
            line for line in journal.read_text().splitlines() if line.startswith('{"ack"')
        ]
        return 0.0

    def started(self, batch: Batch) -> None:
        with self._watch:
            number = self._numbers[id(batch)] = len(self._numbers)
            self.events.append(("start", number, batch))
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)

    def ended(self, batch: Batch) -> None:
        with self._watch:
            self.events.append(("end", self._numbers[id(batch)], batch))
            self.running -= 1


@pytest.fixture
def store() -> WatchedStore:
    return WatchedStore()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "drain"\n')
    (root / "mlflow.yml").write_text(f"server:\n  mlflow_tracking_uri: {FAKE_SERVER}\n")
    return root


def _session(project: Path, store: FakeStore, uri: str = FAKE_SERVER) -> TrackingSession:
    config = load_config(
        project / "mlflow.yml",
        overrides={"server.mlflow_tracking_uri": uri, "tracking.logging.mode": "buffered"},
    )
    return TrackingSession(config, name="drain", _backend_factory=store)


def _stored_once(store: FakeStore, run_id: str, steps: range, keys: str = "abc") -> None:
    """Every point of ``steps`` for each key is in the run exactly once."""
    run = store.runs[run_id]
    for key in keys:
        got = sorted(m.step for m in run.metrics if m.key == key)
        assert got == list(steps), f"metric {key!r}: {len(got)} points for {len(steps)} steps"


def _loop(s: TrackingSession, steps: range) -> None:
    for i in steps:
        s.log_metrics({"a": float(i), "b": 2.0 * i, "c": 1.0}, step=i)


def test_metric_batches_to_a_server_overlap_within_the_bound_and_land_once(
    project: Path, store: WatchedStore
) -> None:
    with _session(project, store) as s:
        _loop(s, range(STEPS))
        run_id = s.run_id
    assert run_id is not None
    assert 1 < store.most_at_once <= IN_FLIGHT
    _stored_once(store, run_id, range(STEPS))
    assert store.runs[run_id].status is RunStatus.FINISHED


def test_a_local_store_is_drained_one_request_at_a_time(project: Path, store: WatchedStore) -> None:
    with _session(project, store, uri=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}") as s:
        _loop(s, range(STEPS))
        run_id = s.run_id
    assert run_id is not None
    assert store.most_at_once == 1
    _stored_once(store, run_id, range(STEPS))


def test_params_and_tags_wait_for_the_batches_before_them_and_hold_back_the_ones_after(
    project: Path, store: WatchedStore
) -> None:
    middle = STEPS // 2
    with _session(project, store) as s:
        _loop(s, range(middle))
        s.log_params({"lr": 0.1})
        s.set_tags({"phase": "two"})
        _loop(s, range(middle, STEPS))
        run_id = s.run_id
    assert run_id is not None
    assert store.most_at_once > 1  # the metric batches did overlap
    (start,) = [i for i, (kind, _, b) in enumerate(store.events) if kind == "start" and b.params]
    number = store.events[start][1]
    (end,) = [i for i, (kind, n, _) in enumerate(store.events) if kind == "end" and n == number]
    before = store.events[:start]
    started_before = {n for kind, n, _ in before if kind == "start"}
    assert started_before == {n for kind, n, _ in before if kind == "end"}, (
        "the params batch started while metric batches were in flight"
    )
    assert end == start + 1, "a batch started while the params batch was in flight"
    # What was logged before the params went before them or with them, nothing after.
    steps_before = {m.step for kind, _, b in before if kind == "end" for m in b.metrics}
    assert all(step < middle for step in steps_before)
    with_params = {m.step for m in store.events[start][2].metrics}
    assert set(range(middle)) <= steps_before | with_params
    assert store.runs[run_id].params == {"lr": "0.1"}
    assert store.runs[run_id].tags["phase"] == "two"
    _stored_once(store, run_id, range(STEPS))


def test_no_acknowledgement_passes_a_batch_still_in_flight(
    project: Path, store: WatchedStore
) -> None:
    """While the first metric batch is held, later ones land: the journal acknowledges
    nothing of them yet (acks are a prefix: compaction and sync rely on it)."""
    store.slow_first = threading.Event()
    store.journal = project / ".trackcfg" / "journal"
    with _session(project, store) as s:
        s.flush()  # what entering logged is acknowledged before the loop
        acked_before = len(
            [
                line
                for line in next(store.journal.glob("*.journal")).read_text().splitlines()
                if line.startswith('{"ack"')
            ]
        )
        _loop(s, range(STEPS))
        run_id = s.run_id
    assert run_id is not None
    ends = [n for kind, n, b in store.events if kind == "end" and b.metrics]
    first = next(n for kind, n, b in store.events if kind == "start" and b.metrics)
    assert ends.index(first) >= 2, "later batches did not land while the first was held"
    assert store.acks_while_first_ran is not None
    assert len(store.acks_while_first_ran) == acked_before
    _stored_once(store, run_id, range(STEPS))


def test_a_refused_point_in_a_parallel_batch_is_isolated_and_reported(
    project: Path, store: WatchedStore
) -> None:
    """The refusal is raised at a later call (or flush); that call, made again, lands."""
    store.refuse_metric("bad")
    reported: list[str] = []
    with _session(project, store) as s:
        for i in range(STEPS):
            metrics: dict[str, Any] = {"a": float(i), "b": 2.0 * i, "c": 1.0}
            if i == 1234:
                metrics["bad"] = 7.0
            try:
                s.log_metrics(metrics, step=i)
            except RunError as exc:  # raised before the call was kept: made again
                reported.append(str(exc))
                s.log_metrics(metrics, step=i)
        try:
            s.flush()
        except RunError as exc:
            reported.append(str(exc))
        run_id = s.run_id
    assert run_id is not None
    (report,) = reported
    assert "metric 'bad' = 7.0 at step 1234" in report
    assert "Invalid value for metric 'bad'" in report
    assert store.most_at_once > 1
    _stored_once(store, run_id, range(STEPS))
    assert not [m for m in store.runs[run_id].metrics if m.key == "bad"]
    assert store.runs[run_id].status is RunStatus.FINISHED


def test_a_server_drained_in_parallel_holds_every_point_once(
    mlflow_server: str, tmp_path: Path
) -> None:
    """A real ``mlflow server``: every point read back through MLflow's client, once, with
    its value; the param logged in the middle is there."""
    from mlflow import MlflowClient

    root = tmp_path / "proj"
    root.mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "drain"\n')
    config = load_config(
        overrides={
            "server.mlflow_tracking_uri": mlflow_server,
            "tracking.experiment.name": "parallel-drain",
            "tracking.logging.journal_dir": str(root / "journal"),
        }
    )
    steps = 3_000
    lanes: set[str] = set()
    with TrackingSession(config, name="drain") as s:
        for i in range(steps):
            s.log_metrics({"a": float(i), "b": 2.0 * i, "c": 1.0}, step=i)
            if i == steps // 2:
                s.log_params({"lr": 0.1})
        s.flush()
        run_id = s.run_id
        assert run_id is not None
        lanes = {t.name for t in threading.enumerate()}
    assert len({name for name in lanes if name.startswith(f"trackcfg-sender-{run_id[:8]}-")}) > 1
    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.1"}
    for key, scale in (("a", 1.0), ("b", 2.0)):
        history = client.get_metric_history(run_id, key)
        assert sorted((m.step, m.value) for m in history) == [(i, scale * i) for i in range(steps)]
    assert len(client.get_metric_history(run_id, "c")) == steps
