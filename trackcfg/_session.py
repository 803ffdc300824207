"""``TrackingSession``: apply a ``TrackingConfig`` to one MLflow run, on every path.

Entering a session, in this order (nothing reaches the store before steps 1-2 passed):

1. disabled (``disable_tracking.pipelines`` holds the session name, ``TRACKCFG_DISABLE=1``,
   or a rank other than 0 under ``run.ranks: zero``) → a no-op session: ``enabled`` is False
   and every method logs nothing;
2. the up-front params and tags go through the param policy (a too-long value under
   ``fail`` raises ``ParamValueTooLongError`` here, before any run exists);
3. the store: the configured one, or with ``server.offline`` the offline store
   (``<root>/mlruns``): ``always``, a worker of an offline parent, or ``auto`` when the server
   does not answer (``_offline.server_silence``, or a ``TrackingUnavailableError`` before any run
   exists: what the attempt set is given back first).  An offline run is tagged with its
   destination; one that would continue a run of the server is refused here.  Credentials
   are exported as environment variables; the local store folder is created;
4. the experiment is looked up, created or restored as configured (skipped when resuming
   ``run.id``: the run's own experiment is used);
5. the run: ``run.id`` → that run, reopened (a RUNNING one is refused unless
   ``run.resume_running``, and a param whose logged value differs is refused, both leaving the
   run untouched; the run is never renamed); ``run.resume`` with ``run.key`` → the latest
   run tagged with the key, continued the same way (``_takeover``; what a killed writer
   journaled on this machine is sent first); an active run (this task's or thread's, or
   ``MLFLOW_RUN_ID``) → a child run when ``run.nested``, else the session attaches to it;
   otherwise a new run named ``run.name`` or the session name.  It becomes MLflow's active
   run in this asyncio task or thread (each has a stack of its own while sessions are open),
   so ``mlflow.log_*`` and autolog inside the block log into it;
6. params and tags are logged, in batches.

Leaving it: a run the session started (or reopened) ends FINISHED on success, FAILED when an
exception escapes (``SystemExit(0)`` counts as success), KILLED on ``KeyboardInterrupt`` or
SIGTERM (with a SIGTERM handler of the program's own, which runs at the signal: when that
handler raises, or a ``SystemExit`` follows the signal); a run it attached to is left
running.  Runs left open above the session's own run (a child run the code inside never
ended) are ended with the same status, but not another open session's run (sessions that end
out of order each end their own).  The tracking and registry URI, the active experiment, the
active-run stack, every environment variable the session touched and the SIGTERM handler are
given back as they were, by the last session open, whatever order they end in.

The rules behind steps 1, 4 and 5 are pure functions in ``_rules`` (``trackcfg check`` shows
the same decisions).  Each step's work lives with its concept: step 3 in ``_connect``
(``plan_store`` decides, ``Connection`` connects and falls back), steps 4-5 in ``_placement``,
the logging calls in ``_writer`` (one path to the store for both modes: the buffer of
``_buffer``, or ``_delivery`` at the call), leaving in ``_leaving``; process-wide state is
``_state``'s; the worker contract is ``_workers``'; MLflow is reached only through a
``Backend`` (``_backend``).  What remains here is the lifecycle's order and the logging API
(docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import _leaving, _state
from ._backend import Backend, BackendFactory, RunStatus, open_backend
from ._config import TrackingConfig
from ._connect import Connection, StorePlan, plan_store
from ._endnote import end_notes
from ._env import EnvSnapshot
from ._leaving import RunEnding
from ._loading import load_config
from ._offline import unavailable_cause
from ._params import Limits
from ._placement import RunPlacer
from ._rules import disabled_reason
from ._store import StoreLocation
from ._workers import process_rank, session_run_active, worker_env
from ._writer import Inputs, RunWriter, checked_inputs, logging_call
from .exceptions import RunError, TrackingUnavailableError

if TYPE_CHECKING:
    import os as _os

__all__ = ["TrackingSession"]

logger = logging.getLogger(__name__)


def _default_session_name() -> str:
    script = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] not in ("", "-c") else ""
    return script or "session"


class TrackingSession:
    """One tracked run, configured by a ``TrackingConfig``; use it as a context manager.

    ::

        with TrackingSession.from_yaml("mlflow.yml", name="train", params={"lr": 0.1}) as s:
            s.log_metrics({"loss": 0.3}, step=1)

    ``name`` is the session's name: the default run name and what
    ``disable_tracking.pipelines`` matches, whole or by its last dotted part (``fit`` disables
    ``Trainer.fit``); default: the running script's stem.  ``kedro_context`` is what
    ``server.request_header_provider.pass_context`` hands the provider (the Kedro hook sets
    it).  A session is entered once; ``child()`` gives nested sessions.
    """

    def __init__(
        self,
        config: TrackingConfig,
        *,
        name: str | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        kedro_context: Any = None,
        _backend_factory: BackendFactory | None = None,
    ) -> None:
        self._config = config
        self._name = name or _default_session_name()
        self._params = dict(params or {})
        self._tags = dict(tags or {})
        self._kedro_context = kedro_context
        # The seam for tests of the session's decisions (tests/fakes.py); MLflow otherwise.
        self._backend_factory = _backend_factory or open_backend
        self._parent: TrackingSession | None = None
        self._entered = self._enabled = self._closed = False
        self._conn: Connection | None = None  # its place (a child: its parent's)
        self._plan: StorePlan | None = None
        self._backend: Backend | None = None
        self._limits: Limits | None = None
        self._placed: RunPlacer | None = None  # where its run is (steps 4-5)
        self._env = EnvSnapshot()  # its own exports (share_with_subprocesses)
        self._share = _leaving.ProcessShare()  # its part of process-wide state (_state)
        self._writer: RunWriter | None = None  # its logging calls' way to the store
        # activate() in a forked copy of this object must not use the parent's backend.
        self._owner_pid = os.getpid()

    @classmethod
    def from_yaml(
        cls,
        path: str | _os.PathLike[str] | None,
        *,
        env: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        name: str | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> TrackingSession:
        """Load the config with ``load_config(path, env=..., overrides=...)`` and wrap it."""
        config = load_config(path, env=env, overrides=overrides)
        return cls(config, name=name, params=params, tags=tags)

    # ------------------------------------------------------------------ properties

    @property
    def config(self) -> TrackingConfig:
        return self._config

    @property
    def name(self) -> str:
        return self._name

    @property
    def enabled(self) -> bool:
        """Whether this session logs anything (False when disabled by config or
        ``TRACKCFG_DISABLE``). Before the session is entered: whether it would."""
        if self._entered:
            return self._enabled
        return self._disabled_reason() is None

    @property
    def run_id(self) -> str | None:
        return self._placed.run_id if self._placed else None

    @property
    def experiment_id(self) -> str | None:
        return self._placed.experiment_id if self._placed else None

    @property
    def resumed(self) -> bool:
        """Whether the session continued an existing run (``tracking.run.id``, or
        ``tracking.run.resume`` found the run of ``tracking.run.key``)."""
        return self._placed is not None and self._placed.resumed

    @property
    def project_root(self) -> Path:
        return self._store_plan().root

    @property
    def tracking_uri(self) -> str:
        """The resolved store URI, usable as-is with ``MlflowClient(tracking_uri=...)``: the
        offline store (``<root>/mlruns``) for an offline session (``server.offline``)."""
        return self._store_location().tracking_uri

    @property
    def registry_uri(self) -> str | None:
        """The model registry MLflow uses in this session (None: the tracking URI; an offline
        session's registry is its offline store)."""
        return self._store_plan().registry_for(offline=self.offline_destination is not None)

    @property
    def offline_destination(self) -> str | None:
        """For an offline session (``server.offline``), the tracking server its run is for,
        password masked (the run's ``trackcfg.offline.destination`` tag; ``trackcfg sync``
        uploads it there); else None."""
        return self._conn.offline if self._conn is not None else None

    @property
    def experiment_name(self) -> str:
        configured = self._config.tracking.experiment.name
        if configured:
            return configured
        return self._config.default_experiment_name or self.project_root.name

    def __repr__(self) -> str:
        run = f"run_id={self.run_id!r}" if self.run_id else "not started"
        state = "disabled" if self._entered and not self._enabled else run
        if self._conn is not None and self.offline_destination is not None:
            state += f" offline in {self._conn.offline_store} for {self.offline_destination}"
        return f"<TrackingSession {self._name!r} {state}>"

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> TrackingSession:
        if self._entered:
            raise RunError(f"session {self._name!r} was entered already; create a new one")
        self._entered = True
        self._owner_pid = os.getpid()  # its run is this process's to end (_close)
        reason = self._disabled_reason()
        if reason is not None:
            logger.info("tracking disabled for %r: %s", self._name, reason)
            return self
        self._share = _leaving.ProcessShare()  # the SIGTERMs seen before it, counted now
        try:
            self._open()
        except BaseException as exc:
            self._close(self._share.status_for(exc), raising=False)
            self._share.hand_on_signal(exc)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._enabled:
            return
        status = self._share.status_for(exc)
        try:
            self._close(status, raising=exc is None)
        except _state.Terminated as again:  # SIGTERM again while leaving: die by it too
            self._share.hand_on_signal(again)
            raise
        self._end_notes(status)
        self._share.hand_on_signal(exc)

    def _open(self) -> None:
        """Steps 2-6 of the module docstring (step 1 was ``_disabled_reason``)."""
        self._enabled = True
        inputs = self._check_inputs()  # 2
        conn, backend = self._connect()  # 3
        try:
            tags = self._place_run(backend, inputs)  # 4-5
        except TrackingUnavailableError as exc:
            if self._parent is not None or not conn.may_fall_back:  # auto, and no run yet
                raise
            self._backend = None
            backend = self._backend = conn.fall_back(unavailable_cause(exc))
            tags = self._place_run(backend, inputs)
        if self._parent is None:
            conn.may_fall_back = False
        # Other open sessions must not end its run (_leaving.RunEnding).
        placed = self._placed
        assert placed is not None
        self._share.take(self, placed.started_run or placed.pushed_run, trap=self._parent is None)
        writer = self._writer = RunWriter.for_run(
            backend,
            placed,
            inputs,
            self._config,
            root=self.project_root,
            tracking_uri=self.tracking_uri,
            send_earlier=self._backend_factory if self._parent is None else None,
        )
        writer.send(params=inputs.prepared.params, tags=tags, texts=inputs.prepared.artifacts)
        # 6, and on the server before the block runs: MLflow copies the run's params into a
        # model logged in it (docs/architecture.md, "Buffered logging").
        writer.sent_within(self._config.server.request_timeout)

    def flush(self, timeout: float | None = None) -> None:
        """Return when everything logged so far is on the server; else raise: a
        ``TrackingUnavailableError`` after ``timeout`` seconds (nothing is lost: it is still
        sent later), a ``RunError`` when something was refused or dropped, or the sender
        stopped (the journal keeps what it did not send).  A no-op in ``sync`` mode and for a
        session that logs nothing."""
        if self._writer is not None and not self._closed:
            self._writer.flush(timeout)

    def _check_inputs(self) -> Inputs:
        """Step 2: everything that can be checked before touching the store."""
        parent = self._parent
        limits = parent._limits if parent is not None else self._backend_factory.limits()
        assert limits is not None
        self._limits = limits
        return checked_inputs(
            self._config, self._params, self._tags, limits, self.project_root, top=parent is None
        )

    def _connect(self) -> tuple[Connection, Backend]:
        """Step 3 (``_connect.Connection``); a child uses its parent's connection."""
        if self._parent is not None:
            assert self._parent._conn is not None
            assert self._parent._backend is not None
            self._conn, self._backend = self._parent._conn, self._parent._backend
            return self._conn, self._backend
        self._conn = Connection(
            self._config,
            self._store_plan(),
            self._backend_factory,
            name=self._name,
            sync_command=self._sync_command(),
            kedro_context=self._kedro_context,
        )
        self._backend = self._conn.open()
        return self._conn, self._backend

    def _place_run(self, backend: Backend, inputs: Inputs) -> dict[str, str]:
        """Steps 4-5 (``_placement``; what it did is ``_placed``'s, also when it failed
        half-way).  Returns the tags still to log (a new run was given them when it started)."""
        parent, conn = self._parent, self._conn
        self._placed = RunPlacer(
            config=self._config,
            name=self._name,
            experiment_name=self.experiment_name,
            root=self.project_root,
            tracking_uri=self.tracking_uri,
            factory=self._backend_factory,
            # A top-level session points MLflow's process-wide state at its store (_state).
            share_store=conn.share_store if parent is None and conn else lambda _: None,
            parent=None if parent is None else (parent.run_id, parent.experiment_id),
            offline=self.offline_destination,
            artifact_root=self._store_location().artifact_root,
        )
        return self._placed.place(backend, inputs.prepared, inputs.tags)

    def _close(self, status: RunStatus, *, raising: bool) -> None:
        if self._closed:
            return
        self._closed = True
        # A forked child leaving its copy of the block: the run is its parent's to end.
        backend = self._backend if self._owner_pid == os.getpid() else None
        ending = RunEnding.of(backend, self, self._name, self._placed)
        writer, root = self._writer, self.project_root
        if writer is not None and backend is not None:
            end: Callable[[], None] = functools.partial(writer.end, status, ending, root=root)
        else:
            end = functools.partial(ending.end, status) if ending else lambda: None
        conn = self._conn if self._parent is None else None
        give_back = [self._env.restore, lambda: self._share.release(self)]
        if conn is not None:  # the process settings, then the backend (not a forked child's)
            give_back.append(lambda: conn.close(close_backend=backend is not None))
        _leaving.leave(end, give_back, run_id=self.run_id, name=self._name, raising=raising)

    def _end_notes(self, status: RunStatus) -> None:
        """The run it started is over: where an offline run waits for ``trackcfg sync``, and
        on a terminal, the run's summary (``_endnote``).  Only from the last session open
        (not a sweep's every trial), never in a worker of an offline parent (it says it)."""
        conn, writer = self._conn, self._writer
        run_id = self._placed.started_run if self._placed else None
        if self._parent or run_id is None or writer is None or _state.runs_held():
            return
        offline = None
        if conn and conn.offline is not None and conn.plan.inherited_destination is None:
            offline = (conn.offline_store, conn.offline, self._sync_command())
        last, params = writer.last_metrics, len(writer.logged_params)
        end_notes(run_id, self._name, status.value, offline=offline, params=params, last=last)

    def _disabled_reason(self) -> str | None:
        return disabled_reason(
            self._config,
            self._name,
            disable_variable=os.environ.get("TRACKCFG_DISABLE", ""),
            rank=process_rank(),
            parent_enabled=self._parent is None or self._parent._enabled,
        )

    def _store_plan(self) -> StorePlan:
        """Which store, decided once (``_connect.plan_store``), when first asked."""
        if self._plan is None:
            self._plan = plan_store(self._config)
        return self._plan

    def _store_location(self) -> StoreLocation:
        if self._conn is not None:
            return self._conn.location
        plan = self._store_plan()
        return plan.destination if self._parent is not None else plan.location

    def _sync_command(self) -> str:
        if self._kedro_context is not None:
            return f"kedro trackcfg sync (in {self.project_root})"
        return f"trackcfg sync {self.project_root}"

    # ------------------------------------------------------------------ logging

    def _live(self) -> RunWriter | None:
        """Where a logging call goes now (None: the session logs nothing)."""
        if not self._entered:
            raise RunError(f"session {self._name!r} has not started; log inside the with block")
        if not self._enabled or self._writer is None:
            return None
        if self._closed:
            raise RunError(f"session {self._name!r} has ended; log inside the with block")
        return self._writer

    # Each a ``RunWriter`` call (``_writer``, where they are documented), made by the session
    # while it is open: before the block a ``RunError``, in a session logging nothing a no-op.
    log_params = logging_call(RunWriter.log_params)
    log_param = logging_call(RunWriter.log_param)
    log_metrics = logging_call(RunWriter.log_metrics)
    log_metric = logging_call(RunWriter.log_metric)
    set_tags = logging_call(RunWriter.set_tags)
    set_tag = logging_call(RunWriter.set_tag)
    log_artifact = logging_call(RunWriter.log_artifact)
    log_artifacts = logging_call(RunWriter.log_artifacts)
    log_text = logging_call(RunWriter.log_text)
    log_dict = logging_call(RunWriter.log_dict)
    log_figure = logging_call(RunWriter.log_figure)
    log_table = logging_call(RunWriter.log_table)

    # ------------------------------------------------------------------ workers, threads

    def child_env(self) -> dict[str, str]:
        """Variables to give a worker process so that its sessions become children of this
        run: ``MLFLOW_TRACKING_URI`` (fills a worker config that sets no URI),
        ``TRACKCFG_PARENT_RUN_ID`` and ``MLFLOW_EXPERIMENT_ID``.  Credentials are not included:
        the worker's own config exports them.  Empty for a disabled session, and the worker
        gets ``TRACKCFG_DISABLE=1`` so it stays quiet too."""
        if not self._enabled or self.run_id is None:
            return {"TRACKCFG_DISABLE": "1"} if self._entered else {}
        return worker_env(
            self.tracking_uri, self.run_id, self.experiment_id, self.offline_destination
        )

    def share_with_subprocesses(self) -> None:
        """Export ``child_env()`` into this process's environment until the session ends, for
        worker processes whose environment cannot be chosen (``ProcessPoolExecutor``, Kedro's
        ``ParallelRunner``): ``activate_inherited_run()`` makes the run active there, and
        sessions there become its children.  Not ``MLFLOW_RUN_ID``: ``mlflow.start_run(
        nested=True)`` would reopen that run instead of starting a child.  A no-op for a
        session that logs nothing."""
        if not self._enabled or self.run_id is None or self._parent is not None:
            return
        for key, value in self.child_env().items():
            self._env.set(key, value)

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """Make the session's run MLflow's active run in the calling thread for the block.

        MLflow's active run is per thread: plain ``mlflow.log_*`` in a worker thread would
        create a new run.  Adapters that run user code in other threads (Kedro's runners) wrap
        it in this block.  A no-op where the run is active already or the session logs
        nothing; afterwards the run is taken off this thread's stack again, never ended.  In a
        forked copy of the session (a worker process), it is ``activate_inherited_run()``.
        """
        live = self._enabled and not self._closed
        with session_run_active(
            self._backend if live else None,
            self.run_id,
            forked=os.getpid() != self._owner_pid,
            factory=self._backend_factory,
        ):
            yield

    def child(
        self,
        name: str,
        *,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> TrackingSession:
        """A nested session whose run is a child of this one (enter it inside this block)."""
        child = TrackingSession(
            self._config,
            name=name,
            params=params,
            tags=tags,
            kedro_context=self._kedro_context,
            _backend_factory=self._backend_factory,
        )
        child._parent = self
        child._conn = self._conn
        return child
