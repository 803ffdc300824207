"""``TrackingSession``: apply a ``TrackingConfig`` to one MLflow run, on every path.

Entering a session, in this order (nothing reaches the store before steps 1-2 passed):

1. disabled (``disable_tracking.pipelines`` holds the session name, or ``TRACKCFG_DISABLE=1``)
   → a no-op session: ``enabled`` is False and every method logs nothing;
2. the up-front params and tags go through the param policy (a too-long value under
   ``fail`` raises ``ParamValueTooLongError`` here, before any run exists);
3. credentials are exported as environment variables; the local store folder is created;
4. the experiment is looked up, created or restored as configured (skipped when resuming
   ``run.id``: the run's own experiment is used);
5. the run: ``run.id`` → that run, reopened (a param whose logged value differs is refused
   first, leaving the run untouched; the run is never renamed); an active run (this thread's,
   or ``MLFLOW_RUN_ID``) → a child run when ``run.nested``, else the session attaches to it;
   otherwise a new run named ``run.name`` or the session name.  It becomes MLflow's active
   run, so ``mlflow.log_*`` and autolog inside the block log into it;
6. params and tags are logged, in batches.

Leaving it: a run the session started (or reopened) ends FINISHED on success, FAILED when an
exception escapes (``SystemExit(0)`` counts as success), KILLED on ``KeyboardInterrupt`` or
SIGTERM; a run it attached to is left running.  Runs left open above the session's own run
(a child run the code inside never ended) are ended with the same status.  The tracking and
registry URI, the active experiment, the active-run stack, every environment variable the
session touched and the SIGTERM handler are given back as they were.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

import attrs

from ._backend import Backend, RunStatus
from ._config import RankPolicy, TrackingConfig
from ._loading import find_project_root, load_config
from ._params import (
    Limits,
    MetricPoint,
    PreparedParams,
    plan_batches,
    prepare_params,
    prepare_tags,
    sanitize_key,
)
from ._store import StoreLocation, resolve_registry_uri, resolve_store
from .exceptions import ConfigError, ConfigProblem, ExperimentError, RunError, TrackcfgError

if TYPE_CHECKING:
    import os as _os

__all__ = ["TrackingSession", "activate_inherited_run"]

logger = logging.getLogger(__name__)

_TRUTHY = frozenset({"1", "true", "yes", "on"})
#: Where distributed launchers put the process rank, first found wins.
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
#: Set by ``TrackingSession.child_env()`` for worker processes: their sessions become children.
PARENT_RUN_ENV = "TRACKCFG_PARENT_RUN_ID"
# Variables a session may change (MLflow sets some of them itself), restored on exit.
_MLFLOW_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_RUN_ID",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_ALLOW_FILE_STORE",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER",
)


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


class _Terminated(KeyboardInterrupt):
    """Raised in the main thread by the session's SIGTERM handler."""


def _status_for(exc: BaseException | None) -> RunStatus:
    if exc is None or isinstance(exc, GeneratorExit):
        return RunStatus.FINISHED
    if isinstance(exc, KeyboardInterrupt):
        return RunStatus.KILLED
    if isinstance(exc, SystemExit):
        return RunStatus.FINISHED if exc.code in (None, 0) else RunStatus.FAILED
    return RunStatus.FAILED


def _default_session_name() -> str:
    script = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] not in ("", "-c") else ""
    return script or "session"


@attrs.define
class _EnvSnapshot:
    """The prior values of the variables a session sets, to put back exactly."""

    saved: dict[str, str | None] = attrs.field(factory=dict)

    def remember(self, *names: str) -> None:
        for name in names:
            self.saved.setdefault(name, os.environ.get(name))

    def set(self, name: str, value: str) -> None:
        self.remember(name)
        os.environ[name] = value

    def restore(self) -> None:
        for name, value in self.saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self.saved.clear()


@attrs.define
class _Shared:
    """What top-level sessions open at once in this process set process-wide."""

    env: dict[str, str]
    uris: tuple[str, str | None]
    headers: object  # what identifies the request header provider (None: none)
    thread: str
    saved: _EnvSnapshot
    provider: Any = None  # the header provider added to MLflow's registry
    users: int = 1
    store_token: object | None = None
    restore_store: Any = None


_shared_lock = threading.Lock()
_shared: _Shared | None = None


def _after_fork_in_child() -> None:
    """A forked process starts with no open session of its own: the parent's sessions'
    settings are simply its inherited environment (and its new sessions may use others)."""
    global _shared, _shared_lock
    _shared_lock = threading.Lock()
    _shared = None


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _join_process_settings(
    env: dict[str, str],
    uris: tuple[str, str | None],
    headers: object = None,
    make_provider: Callable[[], Any] | None = None,
) -> _Shared:
    """Apply a top-level session's process-wide settings, or share the open sessions' ones.

    MLflow's tracking URI and the ``MLFLOW_*`` / credential variables are per process, yet
    top-level sessions may be open at once in several threads (a sweep in a thread pool).  The
    first to open saves what was there and sets its values; later ones, while any is open,
    must need the very same values and share them (else they are refused before creating
    anything: their requests would go out with the other session's URI or credentials); the
    last to close puts everything back (``_leave_process_settings``).  MLflow's registry of
    request header providers is process-wide too: ``make_provider`` builds the configured one
    (``headers`` identifies it), which the first session adds and the last takes off."""
    global _shared
    with _shared_lock:
        if _shared is None:
            # Before anything changes: a provider that cannot be built changes nothing.
            provider = make_provider() if make_provider is not None else None
            if provider is not None:
                from ._mlflow import add_header_provider

                add_header_provider(provider)
            saved = _EnvSnapshot()
            saved.remember(*_MLFLOW_ENV)
            for key, value in env.items():
                saved.set(key, value)
            _shared = _Shared(
                env=dict(env),
                uris=uris,
                headers=headers,
                thread=threading.current_thread().name,
                saved=saved,
                provider=provider,
            )
            return _shared
        differ = sorted(
            k for k in env.keys() | _shared.env.keys() if env.get(k) != _shared.env.get(k)
        )
        if headers != _shared.headers:
            differ.insert(0, "server.request_header_provider")
        if uris != _shared.uris:
            differ.insert(0, "the tracking/registry URI")
        if differ:
            raise RunError(
                f"another trackcfg session is open in this process (thread {_shared.thread!r}) "
                f"with other process-wide settings ({', '.join(differ)}); MLflow keeps these "
                "per process, so sessions open at once in several threads must share them: "
                "use the same server and credentials, child() sessions of one session, or "
                "processes"
            )
        _shared.users += 1
        return _shared


def _share_store(shared: _Shared, backend: Backend, experiment_id: str | None) -> None:
    """Point MLflow's process-wide state at the store (first session only; later ones share
    it, and plain ``mlflow.start_run()`` calls use the first session's experiment)."""
    with _shared_lock:
        if shared.restore_store is None:
            shared.store_token = backend.use_store(experiment_id)
            shared.restore_store = backend.restore_store


def _leave_process_settings(shared: _Shared) -> None:
    """One session fewer; the last one puts MLflow's state and the environment back."""
    global _shared
    with _shared_lock:
        if shared is not _shared:  # a forked child leaving a session its parent opened
            return
        shared.users -= 1
        if shared.users > 0:
            return
        _shared = None
    try:
        if shared.restore_store is not None:
            shared.restore_store(shared.store_token)
    finally:
        shared.saved.restore()
        if shared.provider is not None:
            from ._mlflow import remove_header_provider

            remove_header_provider(shared.provider)


class TrackingSession:
    """One tracked run, configured by a ``TrackingConfig``; use it as a context manager.

    ::

        with TrackingSession.from_yaml("mlflow.yml", name="train", params={"lr": 0.1}) as s:
            s.log_metrics({"loss": 0.3}, step=1)

    ``name`` is the session's name: the default run name and what
    ``disable_tracking.pipelines`` matches, whole or by its last dotted part (``fit`` disables
    ``Trainer.fit``); default: the running script's stem.
    A session is entered once; ``child()`` gives nested sessions.
    """

    def __init__(
        self,
        config: TrackingConfig,
        *,
        name: str | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        self._config = config
        self._name = name or _default_session_name()
        self._params = dict(params or {})
        self._tags = dict(tags or {})
        self._parent: TrackingSession | None = None

        self._entered = False
        self._enabled = False
        self._closed = False
        self._location: StoreLocation | None = None
        self._backend: Backend | None = None
        self._limits: Limits | None = None
        self._experiment_id: str | None = None
        self._run_id: str | None = None
        self._started_run: str | None = None
        self._pushed_run: str | None = None
        self._shared: _Shared | None = None  # the process-wide settings it joined
        #: Set by the Kedro hook: what ``request_header_provider.pass_context`` passes.
        self._kedro_context: Any = None
        self._env = _EnvSnapshot()
        self._previous_sigterm: Any = None
        self._installed_sigterm = False
        self._logged_params: dict[str, str] = {}
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
    def project_root(self) -> Path:
        root = self._config.project_root
        if root is not None:
            return root
        cwd = Path.cwd()
        return find_project_root(cwd) or cwd.resolve()

    @property
    def tracking_uri(self) -> str:
        """The resolved store URI, usable as-is with ``MlflowClient(tracking_uri=...)``."""
        return self._store_location().tracking_uri

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
        return f"<TrackingSession {self._name!r} {state}>"

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> TrackingSession:
        if self._entered:
            raise RunError(f"session {self._name!r} was entered already; create a new one")
        self._entered = True
        reason = self._disabled_reason()
        if reason is not None:
            logger.info("tracking disabled for %r: %s", self._name, reason)
            return self
        try:
            self._open()
        except BaseException as exc:
            installed = self._installed_sigterm
            self._close(_status_for(exc), raising=False)
            if isinstance(exc, _Terminated) and installed:
                signal.raise_signal(signal.SIGTERM)
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
        self._close(_status_for(exc), raising=exc is None)
        if isinstance(exc, _Terminated) and self._installed_sigterm:
            # Hand the signal to whoever handled it before us (by default: terminate).
            signal.raise_signal(signal.SIGTERM)

    def _disabled_reason(self) -> str | None:
        if self._parent is not None and not self._parent._enabled:
            return "the parent session is disabled"
        if os.environ.get("TRACKCFG_DISABLE", "").strip().lower() in _TRUTHY:
            return "TRACKCFG_DISABLE is set"
        rank = process_rank()
        if rank != 0 and self._config.tracking.run.ranks is RankPolicy.ZERO:
            return f"rank {rank} (tracking.run.ranks: zero logs from rank 0 only)"
        listed = self._config.tracking.disable_tracking.pipelines
        if self._name in listed or self._name.rpartition(".")[2] in listed:
            return f"{self._name!r} is listed in tracking.disable_tracking.pipelines"
        return None

    def _store_location(self) -> StoreLocation:
        if self._location is None:
            self._location = resolve_store(
                self._config.server.mlflow_tracking_uri, self.project_root
            )
        return self._location

    def _open(self) -> None:
        config = self._config
        self._enabled = True
        parent = self._parent
        location = self._store_location()

        # 2. Check everything that can be checked before touching the store.
        if parent is not None:
            assert parent._backend is not None
            self._limits = parent._limits
            self._backend = parent._backend
        else:
            from ._mlflow import mlflow_limits

            self._limits = mlflow_limits()
        prepared = prepare_params(self._params, config.tracking.params, self._limits)
        tags = prepare_tags(self._tags, self._limits)
        tags.update(prepared.tags)
        if config.tracking.run.ranks is RankPolicy.ALL and parent is None:
            tags.setdefault("trackcfg.rank", str(process_rank()))

        # 3. Environment and store folder.
        if parent is None:
            env: dict[str, str] = {}
            if config.credentials is not None:
                env.update(config.credentials.as_env())
            if location.legacy_file_store:
                env["MLFLOW_ALLOW_FILE_STORE"] = "true"
            if not location.is_local:
                # MLflow's defaults retry for ~4 minutes; the session's budget is the config's.
                server = config.server
                env["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(server.request_timeout)
                env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(server.max_retries)
                env["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
                env["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] = "0.5"
            registry = resolve_registry_uri(config.server.mlflow_registry_uri, self.project_root)
            headers = config.server.request_header_provider
            self._shared = _join_process_settings(
                env,
                (location.tracking_uri, registry),
                headers if headers.type else None,
                self._build_header_provider if headers.type else None,
            )
            if location.local_folder is not None:
                location.local_folder.mkdir(parents=True, exist_ok=True)
            from ._mlflow import MlflowBackend

            self._backend = MlflowBackend(location.tracking_uri, registry)
        backend = self._backend
        assert backend is not None

        # 4-5. Experiment and run.
        run_cfg = config.tracking.run
        if run_cfg.id and parent is None:
            self._resume(backend, run_cfg.id, prepared)
        else:
            active, must_nest = (
                (parent._run_id, True) if parent is not None else self._external_active_run(backend)
            )
            if parent is not None:
                self._experiment_id = parent._experiment_id
            elif must_nest and os.environ.get("MLFLOW_EXPERIMENT_ID"):
                # A worker given child_env(): its run goes beside its parent's, in the parent's
                # experiment (MLflow shows children only there), without a lookup request.
                self._experiment_id = os.environ["MLFLOW_EXPERIMENT_ID"]
            else:
                self._experiment_id = self._experiment(backend)
            if self._shared is not None:
                _share_store(self._shared, backend, self._experiment_id)
            if active is not None and not run_cfg.nested and not must_nest:
                self._attach(backend, active)
            else:
                assert self._experiment_id is not None
                ref = backend.start_run(
                    experiment_id=self._experiment_id,
                    name=run_cfg.name if parent is None and run_cfg.name else self._name,
                    parent_run_id=active,
                    tags=tags,
                )
                self._run_id = self._started_run = ref.id
                tags = {}
        self._install_sigterm()

        # 6. Params and tags.
        self._send(params=prepared.params, tags=tags, artifacts=prepared.artifacts)

    def _build_header_provider(self) -> Any:
        """``server.request_header_provider`` (kedro-mlflow's key), built: the class at
        ``type``, a subclass of MLflow's ``RequestHeaderProvider``, called with
        ``init_kwargs`` (and ``kedro_context=`` the Kedro context when ``pass_context``: under
        ``kedro run`` only).  Any failure is a ``ConfigError`` naming the key, before any
        request."""
        from ._mlflow import build_header_provider

        config = self._config
        spec = config.server.request_header_provider

        def problem(key: str, message: str) -> ConfigError:
            full = f"server.request_header_provider.{key}"
            source = config.sources.get(full)
            return ConfigError([ConfigProblem(full, message, str(source) if source else None)])

        kwargs = dict(spec.init_kwargs)
        if spec.pass_context:
            if self._kedro_context is None:
                raise problem(
                    "pass_context",
                    "is true, but only a Kedro run has a context to pass; set it to false "
                    "outside Kedro",
                )
            kwargs["kedro_context"] = self._kedro_context
        try:
            return build_header_provider(spec.type or "", kwargs)
        except ValueError as exc:
            raise problem("type", str(exc)) from exc

    def _experiment(self, backend: Backend) -> str:
        settings = self._config.tracking.experiment
        name = self.experiment_name
        found = backend.get_experiment(name)
        if found is None:
            if not settings.create:
                raise ExperimentError(
                    f"experiment {name!r} does not exist in {self.tracking_uri}; create it, or "
                    "set tracking.experiment.create: true to let trackcfg create it"
                )
            kwargs = settings.create_experiment_kwargs
            location = kwargs.artifact_location
            if location is not None and "://" not in location and not location.startswith("/"):
                location = (self.project_root / location).as_uri()
            if location is None and self._store_location().artifact_root is not None:
                location = self._store_location().artifact_root
            experiment_id = backend.create_experiment(name, location, kwargs.tags)
            logger.info("created experiment %r (id %s)", name, experiment_id)
            return experiment_id
        if found.deleted:
            if not settings.restore_if_deleted:
                raise ExperimentError(
                    f"experiment {name!r} (id {found.id}) is deleted; restore it, choose "
                    "another tracking.experiment.name, or set "
                    "tracking.experiment.restore_if_deleted: true"
                )
            backend.restore_experiment(found.id)
            logger.info("restored deleted experiment %r (id %s)", name, found.id)
        return found.id

    def _external_active_run(self, backend: Backend) -> tuple[str | None, bool]:
        """The run this session nests under or attaches to, and whether it must nest.

        Precedence: this thread's active run, then ``TRACKCFG_PARENT_RUN_ID`` (always a
        parent: a worker started by ``child_env()``), then ``MLFLOW_RUN_ID`` (a run an
        orchestrator started: child or attach, by ``run.nested``)."""
        stack = backend.active_run_ids()
        if stack:
            return stack[-1], False
        parent = os.environ.get(PARENT_RUN_ENV, "").strip()
        if parent:
            return parent, True
        return os.environ.get("MLFLOW_RUN_ID") or None, False

    def _attach(self, backend: Backend, run_id: str) -> None:
        existing = backend.get_run(run_id)
        if existing is None or existing.deleted:
            raise RunError(
                f"the active run {run_id!r} (MLFLOW_RUN_ID or this thread's) does not exist in "
                f"{self.tracking_uri}; unset MLFLOW_RUN_ID or set tracking.run.nested: true"
            )
        # Params are immutable: a differing value must be refused before it is sent.
        self._logged_params.update(existing.params)
        self._run_id = run_id
        if run_id not in backend.active_run_ids():
            backend.push_active(run_id)
            self._pushed_run = run_id
        logger.info("attached to active run %s (tracking.run.nested is false)", run_id)

    def _resume(self, backend: Backend, run_id: str, prepared: PreparedParams) -> None:
        existing = backend.get_run(run_id)
        if existing is None or existing.deleted:
            state = "is deleted" if existing is not None else "does not exist"
            raise RunError(
                f"run {run_id!r} (tracking.run.id) {state} in {self.tracking_uri}; "
                "set tracking.run.id to null to start a new run"
            )
        changed = {
            key: (existing.params[key], value)
            for key, value in prepared.params.items()
            if key in existing.params and existing.params[key] != value
        }
        if changed:
            detail = "; ".join(
                f"{k!r}: logged {old!r}, now {new!r}" for k, (old, new) in changed.items()
            )
            raise RunError(
                f"cannot resume run {run_id!r}: params differ from the ones it logged ({detail}). "
                "MLflow params are immutable; start a new run (tracking.run.id: null) instead"
            )
        self._experiment_id = existing.experiment_id
        self._logged_params.update(existing.params)
        assert self._shared is not None
        _share_store(self._shared, backend, existing.experiment_id)
        backend.resume_run(run_id)
        self._run_id = self._started_run = run_id

    def _install_sigterm(self) -> None:
        if self._parent is not None or threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)
        if previous is signal.SIG_IGN:
            return

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            raise _Terminated(f"SIGTERM received; run {self._run_id} ends KILLED")

        signal.signal(signal.SIGTERM, on_sigterm)
        self._previous_sigterm = previous
        self._installed_sigterm = True

    def _close(self, status: RunStatus, *, raising: bool) -> None:
        if self._closed:
            return
        self._closed = True
        backend = self._backend
        errors: list[BaseException] = []
        try:
            if backend is not None and (self._started_run or self._pushed_run):
                own = self._started_run or self._pushed_run
                assert own is not None
                stack = backend.active_run_ids()
                if own in stack:
                    for leftover in reversed(stack[stack.index(own) + 1 :]):
                        logger.warning(
                            "run %s was still active when session %r ended; ending it %s",
                            leftover,
                            self._name,
                            status.value,
                        )
                        backend.end_run(leftover, status)
                if self._started_run:
                    backend.end_run(self._started_run, status)
                else:
                    backend.pop_active(own)
        except Exception as exc:
            errors.append(exc)
            if isinstance(exc, TrackcfgError):  # already says what happened and what to do
                logger.warning(
                    "could not end run %s of session %r: %s", self._run_id, self._name, exc
                )
            else:
                logger.exception("could not end run %s of session %r", self._run_id, self._name)
        finally:
            self._env.restore()  # this session's own exports (share_with_subprocesses)
            if self._shared is not None:
                shared, self._shared = self._shared, None
                try:
                    _leave_process_settings(shared)
                except Exception as exc:
                    errors.append(exc)
            if backend is not None and self._parent is None:
                backend.close()
            if self._installed_sigterm:
                signal.signal(signal.SIGTERM, self._previous_sigterm)
        if errors and raising:
            first = errors[0]
            if isinstance(first, TrackcfgError):
                raise first
            raise RunError(f"could not end run {self._run_id!r} cleanly: {first}") from first

    # ------------------------------------------------------------------ logging

    def _live(self) -> tuple[Backend, str] | None:
        if not self._enabled or self._backend is None or self._run_id is None:
            return None
        if self._closed:
            raise RunError(f"session {self._name!r} has ended; log inside the with block")
        return self._backend, self._run_id

    def _send(
        self,
        *,
        params: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        metrics: list[MetricPoint] | None = None,
        artifacts: Mapping[str, str] | None = None,
    ) -> None:
        live = self._live()
        if live is None:
            return
        backend, run_id = live
        params = dict(params or {})
        conflicts = {
            k: (self._logged_params[k], v)
            for k, v in params.items()
            if k in self._logged_params and self._logged_params[k] != v
        }
        if conflicts:
            detail = "; ".join(f"{k!r}: logged {a!r}, now {b!r}" for k, (a, b) in conflicts.items())
            raise RunError(f"params are immutable in MLflow and these differ: {detail}")
        # Re-sending an identical param is harmless but costs a request: skip it.
        params = {k: v for k, v in params.items() if k not in self._logged_params}
        assert self._limits is not None
        for batch in plan_batches(
            params=params, tags=dict(tags or {}), metrics=metrics or [], limits=self._limits
        ):
            backend.log_batch(run_id, batch)
        self._logged_params.update(params)
        for artifact_file, text in (artifacts or {}).items():
            backend.log_text(run_id, text, artifact_file)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params through the param policy (flatten, sanitize, long values), batched."""
        if self._live() is None:
            return
        assert self._limits is not None
        prepared = prepare_params(params, self._config.tracking.params, self._limits)
        self._send(params=prepared.params, tags=prepared.tags, artifacts=prepared.artifacts)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log metric values (one point each) at ``step`` (default 0), batched."""
        if self._live() is None:
            return
        now = int(time.time() * 1000)
        points = [
            MetricPoint(key=sanitize_key(str(k)), value=float(v), step=step or 0, timestamp=now)
            for k, v in metrics.items()
        ]
        self._send(metrics=points)

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        self.log_metrics({key: value}, step=step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self._live() is None:
            return
        assert self._limits is not None
        self._send(tags=prepare_tags(tags, self._limits))

    def log_artifact(self, path: str | _os.PathLike[str], artifact_path: str | None = None) -> None:
        live = self._live()
        if live is not None:
            live[0].log_artifact(live[1], os.fspath(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Write ``text`` as the artifact ``artifact_file`` (no temporary file to manage)."""
        live = self._live()
        if live is not None:
            live[0].log_text(live[1], text, artifact_file)

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        """Write ``data`` as JSON (``.json``) or YAML (``.yml``/``.yaml``) artifact."""
        live = self._live()
        if live is not None:
            live[0].log_dict(live[1], data, artifact_file)

    def child_env(self) -> dict[str, str]:
        """Variables to give a worker process so that its sessions become children of this
        run: ``MLFLOW_TRACKING_URI`` (fills a worker config that sets no URI),
        ``TRACKCFG_PARENT_RUN_ID`` and ``MLFLOW_EXPERIMENT_ID``.  Credentials are not included:
        the worker's own config exports them.  Empty for a disabled session, and the worker
        gets ``TRACKCFG_DISABLE=1`` so it stays quiet too."""
        if not self._enabled or self._run_id is None:
            return {"TRACKCFG_DISABLE": "1"} if self._entered else {}
        env = {"MLFLOW_TRACKING_URI": self.tracking_uri, PARENT_RUN_ENV: self._run_id}
        if self._experiment_id is not None:
            env["MLFLOW_EXPERIMENT_ID"] = self._experiment_id
        return env

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
            with activate_inherited_run():
                yield
            return
        backend, run_id = self._backend, self._run_id
        if not self._enabled or self._closed or backend is None or run_id is None:
            yield
            return
        pushed = run_id not in backend.active_run_ids()
        if pushed:
            backend.push_active(run_id)
        try:
            yield
        finally:
            if pushed:
                backend.pop_active(run_id)

    def child(
        self,
        name: str,
        *,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> TrackingSession:
        """A nested session whose run is a child of this one (enter it inside this block)."""
        child = TrackingSession(self._config, name=name, params=params, tags=tags)
        child._parent = self
        child._location = self._location
        return child


@contextlib.contextmanager
def activate_inherited_run() -> Iterator[str | None]:
    """In a worker process started while a session shared its run
    (``TrackingSession.share_with_subprocesses``), make that run MLflow's active run in the
    calling thread for the block, in its experiment, so plain ``mlflow.log_*`` lands in it.
    Yields the run id, or ``None`` (a no-op) when nothing was shared.  The run is never ended
    here, and the tracking URI, experiment and environment are given back afterwards."""
    run_id = os.environ.get(PARENT_RUN_ENV, "").strip()
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not run_id or not tracking_uri:
        yield None
        return
    from ._mlflow import MlflowBackend

    env = _EnvSnapshot()
    env.remember(*_MLFLOW_ENV)
    backend = MlflowBackend(tracking_uri)
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
