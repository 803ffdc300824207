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
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs

from . import _leaving, _state
from ._backend import Backend, BackendFactory, RunStatus, open_backend
from ._buffer import BufferedRun
from ._config import LoggingMode, RankPolicy, TrackingConfig
from ._connect import Connection, StorePlan, plan_store
from ._endnote import end_notes
from ._env import EnvSnapshot
from ._leaving import RunEnding
from ._loading import load_config
from ._offline import unavailable_cause
from ._params import Limits, PreparedParams, prepare_params, prepare_tags
from ._placement import RunPlacer
from ._rules import disabled_reason
from ._store import StoreLocation
from ._workers import activate_inherited_run, process_rank, run_active, worker_env
from ._writer import RunWriter
from .exceptions import RunError, TrackingUnavailableError

if TYPE_CHECKING:
    import os as _os

__all__ = ["TrackingSession"]

logger = logging.getLogger(__name__)


def _default_session_name() -> str:
    script = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] not in ("", "-c") else ""
    return script or "session"


@attrs.frozen
class _Inputs:
    """What step 2 checked: the params, tags and limits a run will be given."""

    limits: Limits
    prepared: PreparedParams
    tags: dict[str, str]


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
        self._resumed = False  # it continued an existing run (run.id or run.key)
        self._conn: Connection | None = None  # its place (a child: its parent's)
        self._plan: StorePlan | None = None
        self._backend: Backend | None = None
        self._limits: Limits | None = None
        self._experiment_id: str | None = None
        self._run_id: str | None = None
        self._started_run: str | None = None
        self._pushed_run: str | None = None
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
        return self._run_id

    @property
    def experiment_id(self) -> str | None:
        return self._experiment_id

    @property
    def resumed(self) -> bool:
        """Whether the session continued an existing run (``tracking.run.id``, or
        ``tracking.run.resume`` found the run of ``tracking.run.key``)."""
        return self._resumed

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
        return self._store_plan().registry_for(offline=self._offline is not None)

    @property
    def offline_destination(self) -> str | None:
        """For an offline session (``server.offline``), the tracking server its run is for,
        password masked (the run's ``trackcfg.offline.destination`` tag; ``trackcfg sync``
        uploads it there); else None."""
        return self._offline

    @property
    def experiment_name(self) -> str:
        configured = self._config.tracking.experiment.name
        if configured:
            return configured
        return self._config.default_experiment_name or self.project_root.name

    def __repr__(self) -> str:
        state = (
            "disabled"
            if self._entered and not self._enabled
            else (f"run_id={self._run_id!r}" if self._run_id else "not started")
        )
        if self._conn is not None and self._offline is not None:
            state += f" offline in {self._conn.offline_store} for {self._offline}"
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
            tags, logged = self._place_run(backend, inputs)  # 4-5
        except TrackingUnavailableError as exc:
            if self._parent is not None or not conn.may_fall_back:  # auto, and no run yet
                raise
            self._backend = None
            backend = self._backend = conn.fall_back(unavailable_cause(exc))
            tags, logged = self._place_run(backend, inputs)
        if self._parent is None:
            conn.may_fall_back = False
        # Other open sessions must not end its run (_leaving.RunEnding).
        self._share.take(self, self._started_run or self._pushed_run, trap=self._parent is None)
        assert self._run_id is not None
        writer = self._writer = RunWriter(
            backend,
            self._run_id,
            inputs.limits,
            self._config.tracking.params,
            self._buffer(backend, inputs.limits),
        )
        writer.logged_params.update(logged)
        writer.send(params=inputs.prepared.params, tags=tags, texts=inputs.prepared.artifacts)
        # 6, and on the server before the block runs: MLflow copies the run's params into a
        # model logged in it (docs/architecture.md, "Buffered logging").
        writer.sent_within(self._config.server.request_timeout)

    def _buffer(self, backend: Backend, limits: Limits) -> BufferedRun | None:
        """Buffered logging (``tracking.logging.mode``): the run's buffer (``_buffer``)."""
        settings = self._config.tracking.logging
        if settings.mode is not LoggingMode.BUFFERED or self._run_id is None:
            return None
        return BufferedRun.for_run(
            backend,
            self._run_id,
            experiment_id=self._experiment_id,
            limits=limits,
            config=settings,
            root=self.project_root,
            tracking_uri=self.tracking_uri,
            ends_run=self._started_run is not None,
            send_earlier=self._backend_factory if self._parent is None else None,
        )

    def flush(self, timeout: float | None = None) -> None:
        """Return when everything logged so far is on the server; else raise: a
        ``TrackingUnavailableError`` after ``timeout`` seconds (nothing is lost: it is still
        sent later), a ``RunError`` when something was refused or dropped, or the sender
        stopped (the journal keeps what it did not send).  A no-op in ``sync`` mode and for a
        session that logs nothing."""
        if self._writer is not None and not self._closed:
            self._writer.flush(timeout)

    def _check_inputs(self) -> _Inputs:
        """Step 2: everything that can be checked before touching the store."""
        parent = self._parent
        limits = parent._limits if parent is not None else self._backend_factory.limits()
        assert limits is not None
        self._limits = limits
        prepared = prepare_params(self._params, self._config.tracking.params, limits)
        tags = prepare_tags(self._tags, limits)
        tags.update(prepared.tags)
        if self._config.tracking.run.ranks is RankPolicy.ALL and parent is None:
            tags.setdefault("trackcfg.rank", str(process_rank()))
        BufferedRun.check_journal_dir(self._config.tracking.logging, self.project_root)
        return _Inputs(limits=limits, prepared=prepared, tags=tags)

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

    def _place_run(
        self, backend: Backend, inputs: _Inputs
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Steps 4-5 (``_placement``).  Returns the tags still to log (a new run was given
        them when it started) and the params the run holds already."""
        parent, conn = self._parent, self._conn
        placer = RunPlacer(
            config=self._config,
            name=self._name,
            experiment_name=self.experiment_name,
            root=self.project_root,
            tracking_uri=self.tracking_uri,
            factory=self._backend_factory,
            # A top-level session points MLflow's process-wide state at its store (_state).
            share_store=conn.share_store if parent is None and conn else lambda _: None,
            parent=None if parent is None else (parent._run_id, parent._experiment_id),
            offline=self._offline,
            artifact_root=self._store_location().artifact_root,
        )
        try:
            return placer.place(backend, inputs.prepared, inputs.tags), placer.logged_params
        finally:  # what it did, also when it failed half-way
            self._experiment_id = placer.experiment_id
            self._run_id = placer.run_id
            self._started_run, self._pushed_run = placer.started_run, placer.pushed_run
            self._resumed = placer.resumed

    def _close(self, status: RunStatus, *, raising: bool) -> None:
        if self._closed:
            return
        self._closed = True
        # A forked child leaving its copy of the block: the run is its parent's to end.
        backend = self._backend if self._owner_pid == os.getpid() else None
        own = self._started_run or self._pushed_run
        ending = None
        if backend is not None and own is not None:
            started = self._started_run is not None
            ending = RunEnding(
                backend=backend, session=self, name=self._name, own=own, started=started
            )
        writer = self._writer

        def end() -> None:
            if writer is not None and backend is not None:
                writer.end(status, ending, root=self.project_root)
            elif ending is not None:
                ending.end(status)

        conn = self._conn if self._parent is None else None
        give_back = [self._env.restore, lambda: self._share.release(self)]
        if conn is not None:  # the process settings, then the backend (not a forked child's)
            give_back.append(lambda: conn.close(close_backend=backend is not None))
        _leaving.leave(end, give_back, run_id=self._run_id, name=self._name, raising=raising)

    def _end_notes(self, status: RunStatus) -> None:
        """The run it started is over: where an offline run waits for ``trackcfg sync``, and
        on a terminal, the run's summary (``_endnote``).  Only from the last session open
        (not a sweep's every trial), never in a worker of an offline parent (it says it)."""
        if self._parent is not None or self._started_run is None or _state.runs_held():
            return
        conn, writer = self._conn, self._writer
        reminder = None
        if (
            conn is not None
            and conn.offline is not None
            and conn.plan.inherited_destination is None
        ):
            reminder = (conn.offline_store, conn.offline, self._sync_command())
        end_notes(
            self._started_run,
            self._name,
            status.value,
            offline=reminder,
            params=len(writer.logged_params) if writer is not None else 0,
            last=writer.last_metrics if writer is not None else {},
        )

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

    @property
    def _offline(self) -> str | None:
        """server.offline: the destination (masked) of an offline session's run."""
        return self._conn.offline if self._conn is not None else None

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

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params through the param policy (flatten, sanitize, long values), batched."""
        if (writer := self._live()) is not None:
            writer.log_params(params)

    def log_param(self, key: str, value: Any) -> None:
        """Log one param, as ``log_params({key: value})``."""
        self.log_params({key: value})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log metric values (one point each) at ``step`` (default 0), batched.

        Keys go through the param key policy: a key MLflow refuses is logged sanitized with a
        warning (once per run), and two keys that would become one series are refused with a
        ``ConfigError`` naming both.  A step that is not an integer within 64 bits is a
        ``RunError`` before anything is sent."""
        if (writer := self._live()) is not None:
            writer.log_metrics(metrics, step)

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        self.log_metrics({key: value}, step=step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if (writer := self._live()) is not None:
            writer.set_tags(tags)

    def set_tag(self, key: str, value: Any) -> None:
        """Set one tag, as ``set_tags({key: value})``."""
        self.set_tags({key: value})

    def log_artifact(self, path: str | _os.PathLike[str], artifact_path: str | None = None) -> None:
        """Copy the local file or folder ``path`` into the run's artifacts, under the folder
        ``artifact_path`` (a relative path; default: the top)."""
        if (writer := self._live()) is not None:
            writer.log_artifact(path, artifact_path)

    def log_artifacts(
        self, local_dir: str | _os.PathLike[str], artifact_path: str | None = None
    ) -> None:
        """Copy everything in the local folder ``local_dir`` (subfolders included) into the
        run's artifacts, under the folder ``artifact_path`` (default: the top)."""
        if (writer := self._live()) is not None:
            writer.log_artifacts(local_dir, artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Write ``text`` as the artifact ``artifact_file`` (no temporary file to manage)."""
        if (writer := self._live()) is not None:
            writer.log_text(text, artifact_file)

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        """Write ``data`` as JSON (``.json``) or YAML (``.yml``/``.yaml``) artifact."""
        if (writer := self._live()) is not None:
            writer.log_dict(data, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Save a matplotlib or plotly ``figure`` as the artifact ``artifact_file`` (its
        format from the name: ``.png``, ``.svg``, ``.html`` for plotly...), as MLflow's
        ``log_figure`` does.  It is rendered now: drawing on it afterwards changes nothing."""
        if (writer := self._live()) is not None:
            writer.log_figure(figure, artifact_file)

    def log_table(self, data: Mapping[str, Any] | Any, artifact_file: str) -> None:
        """Log a table (a dict of columns or a pandas DataFrame) as MLflow's ``log_table``
        does: the artifact ``artifact_file`` (``.json`` or ``.parquet``), which
        ``mlflow.load_table`` reads; logged again under the same name in this session, its
        rows are added to the table's."""
        if (writer := self._live()) is not None:
            writer.log_table(data, artifact_file)

    # ------------------------------------------------------------------ workers, threads

    def child_env(self) -> dict[str, str]:
        """Variables to give a worker process so that its sessions become children of this
        run: ``MLFLOW_TRACKING_URI`` (fills a worker config that sets no URI),
        ``TRACKCFG_PARENT_RUN_ID`` and ``MLFLOW_EXPERIMENT_ID``.  Credentials are not included:
        the worker's own config exports them.  Empty for a disabled session, and the worker
        gets ``TRACKCFG_DISABLE=1`` so it stays quiet too."""
        if not self._enabled or self._run_id is None:
            return {"TRACKCFG_DISABLE": "1"} if self._entered else {}
        return worker_env(self.tracking_uri, self._run_id, self._experiment_id, self._offline)

    def share_with_subprocesses(self) -> None:
        """Export ``child_env()`` into this process's environment until the session ends, for
        worker processes whose environment cannot be chosen (``ProcessPoolExecutor``, Kedro's
        ``ParallelRunner``): ``activate_inherited_run()`` makes the run active there, and
        sessions there become its children.  Not ``MLFLOW_RUN_ID``: ``mlflow.start_run(
        nested=True)`` would reopen that run instead of starting a child.  A no-op for a
        session that logs nothing."""
        if not self._enabled or self._run_id is None or self._parent is not None:
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
        if os.getpid() != self._owner_pid:
            with activate_inherited_run(_backend_factory=self._backend_factory):
                yield
            return
        backend, run_id = self._backend, self._run_id
        if not self._enabled or self._closed or backend is None or run_id is None:
            yield
            return
        # Only the run: the store is the process-wide one the session shares (_connect).
        with run_active(backend, run_id):
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
