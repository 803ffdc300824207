"""Global state department: every piece of process-wide mutable state trackcfg keeps.

No other module of trackcfg holds mutable state at module level.  What lives here is per
process by nature, because MLflow, the operating system or ``requests`` keep it so:

- **shared settings**: MLflow's tracking/registry URI, the ``MLFLOW_*`` and credential
  variables and the configured request header provider (added to MLflow's process-wide
  registry).  Top-level sessions open at once in several threads share them: the first to open
  sets them, the last to close gives them back (``join_settings`` / ``leave_settings``);
- **the SIGTERM trap**: one handler for all open sessions, installed by the first and taken
  off by the last (``trap_sigterm`` / ``release_sigterm``), so sessions ending in any order
  leave the handler as it was before the first; it runs the program's own handler where
  there is one, and counts the signals it saw (``sigterms_received``);
- **active runs per context**: MLflow's active-run stack as each asyncio task or thread sees
  it while sessions use it (``context_runs``, a ``ContextVar``; ``_mlflow`` makes MLflow read
  it), and the runs open sessions own (``hold_run``), so that concurrent sessions in one
  thread never end, nest under or log into each other's runs;
- **urllib3's retry warnings**: while sessions are open, urllib3's "Retrying ..." warnings
  about MLflow's API requests are filtered out (the session says once that the server went
  away, and once that it came back); the last session to close takes the filter off
  (``join_settings`` / ``leave_settings``);
- **quick-ACK mounts**: the adapters ``_transport`` mounts on MLflow's ``requests`` sessions,
  per session and URL prefix, kept (with their idle connections) between trackcfg sessions,
  and the notes it says once per process;
- **notices**: the folders ``_loading`` said once were the project root only because the
  program started there (``cwd_root_notices``);
- **fork resets**: the buffered sessions, whose sender, locks and journal a forked child must
  not use (``reset_in_forked_child``), and the locks ``fork`` takes first so that no sender is
  inside a call to the store at that moment (``guard_against_fork``).

A forked child starts with none of it: its parent's open sessions are not its own
(``_after_fork_in_child``).  See docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import signal
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import attrs

from ._env import EnvSnapshot
from .exceptions import RunError

if TYPE_CHECKING:
    import requests

    from ._backend import Backend
    from ._transport import QuickAckSlot

__all__ = [
    "MLFLOW_ENV",
    "URLLIB3_POOL_LOGGER",
    "ContextRuns",
    "SharedSettings",
    "Terminated",
    "context_runs",
    "cwd_root_notices",
    "guard_against_fork",
    "hold_run",
    "join_settings",
    "leave_settings",
    "let_go_of_run",
    "orchestrator_run_id",
    "quickack_lock",
    "quickack_slots",
    "raised_on_sigterm",
    "release_sigterm",
    "reset_in_forked_child",
    "run_owners",
    "runs_held",
    "runs_lock",
    "runs_on_context_stacks",
    "said_once",
    "share_store",
    "sigterms_received",
    "trap_sigterm",
]

#: Variables a session may change (MLflow sets some of them itself), given back at the end.
MLFLOW_ENV = (
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


# ---------------------------------------------------------------------------- shared settings


@attrs.define
class SharedSettings:
    """What the top-level sessions open at once in this process set process-wide."""

    env: dict[str, str]
    uris: tuple[str, str | None]
    headers: object  # what identifies the request header provider (None: none)
    thread: str
    saved: EnvSnapshot
    provider: Any = None  # the header provider added to MLflow's registry
    users: int = 1
    store_token: object | None = None
    restore_store: Callable[[object], None] | None = None
    remove_provider: Callable[[Any], None] | None = None
    retries_filter: logging.Filter | None = None


URLLIB3_POOL_LOGGER = "urllib3.connectionpool"
_MLFLOW_API = ("/api/2.0/mlflow", "/api/3.0/mlflow", "/ajax-api/", "/mlflow-artifacts/")


class _MlflowRetries(logging.Filter):
    """Drops urllib3's "Retrying (...) after connection broken by ...: <path>" warnings for
    MLflow's API paths: during an outage each request adds one every few seconds, on top of
    the session's own two messages.  The program's other requests keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Retrying"):
            return True
        path = str(record.args[-1]) if isinstance(record.args, tuple) and record.args else ""
        return not path.startswith(_MLFLOW_API)


_settings_lock = threading.Lock()
_settings: SharedSettings | None = None


def join_settings(
    env: dict[str, str],
    uris: tuple[str, str | None],
    headers: object = None,
    make_provider: Callable[[], Any] | None = None,
) -> SharedSettings:
    """Apply a top-level session's process-wide settings, or share the open sessions' ones.

    The first session to open saves what was there and sets its values; later ones, while any
    is open, must need the very same values and share them (else they are refused before
    creating anything: their requests would go out with the other session's URI or
    credentials); the last to close puts everything back (``leave_settings``).
    ``make_provider`` builds the configured request header provider (``headers`` identifies
    it), which the first session adds to MLflow's registry and the last takes off."""
    global _settings
    with _settings_lock:
        if _settings is None:
            # Before anything changes: a provider that cannot be built changes nothing.
            provider = make_provider() if make_provider is not None else None
            remove_provider = None
            if provider is not None:
                from ._backend import add_header_provider, remove_header_provider

                add_header_provider(provider)
                remove_provider = remove_header_provider
            saved = EnvSnapshot()
            saved.remember(*MLFLOW_ENV)
            # With MLFLOW_RUN_ID set, mlflow.start_run() reopens that run instead of starting
            # one (and mlflow.end_run() deletes it): out of the environment while sessions
            # are open, taken out once here rather than by each run's start (another
            # thread iterating os.environ died with a KeyError, and sessions opening
            # meanwhile in other threads no longer saw it); sessions read it from
            # ``orchestrator_run_id``.
            saved.unset("MLFLOW_RUN_ID")
            for key, value in env.items():
                saved.set(key, value)
            retries_filter = _MlflowRetries()
            logging.getLogger(URLLIB3_POOL_LOGGER).addFilter(retries_filter)
            _settings = SharedSettings(
                env=dict(env),
                uris=uris,
                headers=headers,
                thread=threading.current_thread().name,
                saved=saved,
                provider=provider,
                remove_provider=remove_provider,
                retries_filter=retries_filter,
            )
            return _settings
        differ = sorted(
            k for k in env.keys() | _settings.env.keys() if env.get(k) != _settings.env.get(k)
        )
        if headers != _settings.headers:
            differ.insert(0, "server.request_header_provider")
        if uris != _settings.uris:
            differ.insert(0, "the tracking/registry URI")
        if differ:
            raise RunError(
                f"another trackcfg session is open in this process (thread "
                f"{_settings.thread!r}) with other process-wide settings ({', '.join(differ)}); "
                "MLflow keeps these per process, so sessions open at once in several threads "
                "must share them: use the same server and credentials, child() sessions of one "
                "session, or processes"
            )
        _settings.users += 1
        return _settings


def orchestrator_run_id() -> str | None:
    """``MLFLOW_RUN_ID`` as the process had it before its open sessions took it out of the
    environment (``join_settings``): the run an orchestrator started, which a session opening
    in any thread nests under or attaches to."""
    with _settings_lock:
        if _settings is not None:
            value = _settings.saved.saved.get("MLFLOW_RUN_ID")
        else:
            value = os.environ.get("MLFLOW_RUN_ID")
    return value or None


def share_store(shared: SharedSettings, backend: Backend, experiment_id: str | None) -> None:
    """Point MLflow's process-wide state at the store (first session only; later ones share
    it, and plain ``mlflow.start_run()`` calls use the first session's experiment)."""
    with _settings_lock:
        if shared.restore_store is None:
            shared.store_token = backend.use_store(experiment_id)
            shared.restore_store = backend.restore_store


def leave_settings(shared: SharedSettings) -> None:
    """One session fewer; the last one puts MLflow's state and the environment back."""
    global _settings
    with _settings_lock:
        if shared is not _settings:  # a forked child leaving a session its parent opened
            return
        shared.users -= 1
        if shared.users > 0:
            return
        _settings = None
    try:
        if shared.restore_store is not None:
            shared.restore_store(shared.store_token)
    finally:
        shared.saved.restore()
        if shared.retries_filter is not None:
            logging.getLogger(URLLIB3_POOL_LOGGER).removeFilter(shared.retries_filter)
        if shared.provider is not None and shared.remove_provider is not None:
            shared.remove_provider(shared.provider)


# ---------------------------------------------------------------------------- SIGTERM


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by the sessions' SIGTERM trap where SIGTERM would end the
    process (its default action): the runs end KILLED, then the signal is handed on."""


@attrs.define
class _SigtermTrap:
    previous: Any  # the program's handler: run by the trap, put back by the last user
    users: int = 0
    in_handler: int = 0  # the program's handler is running (_chain)


_sigterm: _SigtermTrap | None = None
#: SIGTERMs the trap received in this process: a session compares the count at its start and
#: at its end (a ``SystemExit`` after one ends its run KILLED).
_sigterms_received = 0
#: Set on an exception the program's own SIGTERM handler raised (it ends runs KILLED).
_RAISED_ON_SIGTERM = "_trackcfg_raised_on_sigterm"


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    global _sigterms_received
    _sigterms_received += 1
    trap = _sigterm
    if trap is None or trap.users <= 0:
        # Left installed by a session that ended outside the main thread (where a handler
        # cannot be set): put the program's handler back and hand the signal to it.
        _put_back(trap)
        signal.raise_signal(signum)
        return
    if trap.previous is signal.SIG_IGN:  # the program's handler chose so (_chain)
        return
    if callable(trap.previous):
        _chain(trap, signum, frame)
        return
    if trap.in_handler:
        raise Terminated(
            "SIGTERM sent again by the program's own SIGTERM handler, with the default action "
            "back in place; the open tracked runs end KILLED, then the process ends by it"
        )
    raise Terminated("SIGTERM received; the open tracked runs end KILLED")


def _chain(trap: _SigtermTrap, signum: int, frame: FrameType | None) -> None:
    """Run the program's own SIGTERM handler, as it would run without trackcfg.

    An exception it raises (``sys.exit()`` included) is marked, so the runs it ends end
    KILLED.  While it runs, ``signal.signal(SIGTERM, ...)`` changes the handler the trap
    stands in front of, not the trap itself: a handler that puts the default action back and
    sends itself SIGTERM again (to die of it after its cleanup) reaches the trap again, which
    ends the runs KILLED first (``Terminated``); the sessions then put the default action in
    place and hand the signal on.  Without that, the process would end at once, in whatever
    thread the signal reached, leaving its runs RUNNING."""
    real = signal.signal

    def as_if_installed(signalnum: Any, handler: Any) -> Any:
        main = threading.current_thread() is threading.main_thread()
        if signalnum == signal.SIGTERM and _sigterm is trap and main:
            replaced, trap.previous = trap.previous, handler
            return replaced
        return real(signalnum, handler)

    setattr(signal, "signal", as_if_installed)  # noqa: B010 - mypy: a module's function
    trap.in_handler += 1
    try:
        trap.previous(signum, frame)
    except BaseException as exc:
        with contextlib.suppress(AttributeError):  # an exception class with __slots__
            setattr(exc, _RAISED_ON_SIGTERM, True)
        raise
    finally:
        trap.in_handler -= 1
        setattr(signal, "signal", real)  # noqa: B010


def sigterms_received() -> int:
    """How many SIGTERMs the sessions' trap received in this process so far."""
    return _sigterms_received


def raised_on_sigterm(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by the program's own SIGTERM handler, run by the trap."""
    return bool(getattr(exc, _RAISED_ON_SIGTERM, False))


def trap_sigterm() -> bool:
    """Hold the sessions' SIGTERM trap: where SIGTERM would end the process, it raises
    ``Terminated`` instead (the runs end KILLED, then the signal is handed on); where the
    program installed a handler of its own, the trap runs it and notes the signal.  False
    (nothing held) outside the main thread, where SIGTERM is ignored, or where its handler
    was not installed from Python (it could not be put back)."""
    global _sigterm
    if threading.current_thread() is not threading.main_thread():
        return False
    if _sigterm is not None:
        if _sigterm.users <= 0 and signal.getsignal(signal.SIGTERM) is not _on_sigterm:
            _sigterm = None  # a lapsed trap the program has replaced since
        else:
            _sigterm.users = max(_sigterm.users, 0) + 1
            return True
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_IGN or previous is None:
        return False
    signal.signal(signal.SIGTERM, _on_sigterm)
    _sigterm = _SigtermTrap(previous=previous, users=1)
    return True


def release_sigterm() -> bool:
    """One holder fewer; the last puts back the handler the trap replaced and returns True
    (it is then the one to hand a SIGTERM that ended its session on).  A handler the program
    installed meanwhile stays: it is the program's latest choice.  Outside the main thread,
    where no handler can be set, the trap stays installed but lapsed, and puts the handler
    back itself when SIGTERM comes (or the next session takes it up again)."""
    global _sigterm
    trap = _sigterm
    if trap is None or trap.users <= 0:  # a forked child's copy, or lapsed already
        return False
    trap.users -= 1
    if trap.users > 0:
        return False
    if threading.current_thread() is threading.main_thread():
        _put_back(trap)
    return True


def _put_back(trap: _SigtermTrap | None) -> None:
    """The handler the trap replaced back in place (unless the program replaced the trap
    since); raises ValueError outside the main thread, leaving the trap as it is."""
    global _sigterm
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if trap is None else trap.previous)
    if trap is not None and _sigterm is trap:
        _sigterm = None


# ---------------------------------------------------------------------------- active runs


@attrs.frozen
class ContextRuns:
    """MLflow's active-run stack as one context sees it (an asyncio task, a thread) once a
    session placed a run there.  Immutable: each context holds its own value, and an asyncio
    task starts with a copy of its creator's (``contextvars``), so tasks never share a stack.
    """

    runs: tuple[Any, ...] = ()
    """MLflow's ``ActiveRun`` objects, bottom first."""
    base: tuple[str, ...] = ()
    """The ids on the thread's own stack when the context took a stack of its own: once only
    those are left, the context gives the thread's stack back (``None``)."""
    pid: int = attrs.field(factory=os.getpid)
    """A forked child sees its parent's value: not its own (MLflow's stack is empty there)."""
    maker: Any = None
    """What made MLflow read this stack (``_mlflow``'s stand-in): a value some context kept
    from sessions that are all gone is not its stack when sessions use a new one."""


#: The current context's active-run stack while sessions use it; None: the thread's own
#: (MLflow's per-thread list).  Read and written by ``_mlflow`` only.
#: Whether MLflow's own "View run" link is left out in this context (thread or task): set
#: around a run's end that trackcfg prints the link of itself, or does not want printed
#: (``_mlflow._links.quiet_links``).  A context variable, not ``MLFLOW_SUPPRESS_PRINTING_URL_
#: TO_STDOUT`` in ``os.environ``: changing the environment from one thread breaks another
#: thread iterating it (requests' proxy lookup, at every request).
quiet_mlflow_links: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "trackcfg_quiet_mlflow_links", default=False
)
context_runs: contextvars.ContextVar[ContextRuns | None] = contextvars.ContextVar(
    "trackcfg_active_runs", default=None
)
#: Every ``ActiveRun`` on some context's stack, by run id: what MLflow's "latest active run
#: in any thread" (tracing) looks through, as it looked through every thread's list.
runs_on_context_stacks: dict[str, Any] = {}
runs_lock = threading.Lock()

#: Runs that open sessions started or made active, with those sessions (weakly): a session
#: ends the runs left open above its own, but not one another open session owns (sessions
#: that end out of order each end only their own).
_session_runs: dict[str, list[weakref.ref[Any]]] = {}


def hold_run(run_id: str, owner: Any) -> None:
    """``owner`` (an open session) started ``run_id`` or made it active."""
    with runs_lock:
        _session_runs.setdefault(run_id, []).append(weakref.ref(owner))


def let_go_of_run(run_id: str, owner: Any) -> None:
    with runs_lock:
        owners = [ref for ref in _session_runs.get(run_id, []) if ref() not in (None, owner)]
        if owners:
            _session_runs[run_id] = owners
        else:
            _session_runs.pop(run_id, None)


def runs_held() -> bool:
    """Whether open sessions hold runs: a session that ends while others are open (a trial
    of a sweep, a sweep in a thread pool) leaves the end-of-run notes to the last one."""
    with runs_lock:
        return any(ref() is not None for refs in _session_runs.values() for ref in refs)


def run_owners(run_id: str) -> list[Any]:
    """The open sessions that own ``run_id`` now."""
    with runs_lock:
        refs = list(_session_runs.get(run_id, []))
    return [owner for owner in (ref() for ref in refs) if owner is not None]


# ---------------------------------------------------------------------------- quick ACKs

#: Per ``requests.Session`` (weakly: MLflow may drop its cached sessions), per URL prefix.
quickack_slots: weakref.WeakKeyDictionary[requests.Session, dict[str, QuickAckSlot]] = (
    weakref.WeakKeyDictionary()
)
quickack_lock = threading.Lock()
#: Debug notes said already (each once per process: why quick ACKs are not used).
said_once: set[str] = set()


# ---------------------------------------------------------------------------- notices

#: Folders already named, once per process, as a project root chosen only because the program
#: started there (``_loading.notice_cwd_root``): the warning is for the user, not every load.
#: No lock: two threads loading at the same moment can at worst both say it.
cwd_root_notices: set[Path] = set()


# ---------------------------------------------------------------------------- fork

#: Objects holding what only the process that made them may use (a buffered session's sender
#: thread, its locks, pending data and journal), with what a forked child calls on its copy
#: of each (``reset_in_forked_child``).  Weak: a session gone is forgotten.
_fork_resets: weakref.WeakKeyDictionary[Any, Callable[[Any], None]] = weakref.WeakKeyDictionary()


#: Locks a sender thread holds while it talks to the store (where MLflow may import a module
#: or take its connection pool's lock): ``fork`` waits until no sender is inside such a call,
#: so the child never inherits a lock held by a thread it does not have.
_fork_guards: weakref.WeakSet[Any] = weakref.WeakSet()
_held_for_fork: list[Any] = []
#: The longest ``fork`` waits for a sender's call to end (then it forks all the same).
FORK_WAIT = 30.0


def guard_against_fork(lock: Any) -> None:
    """``fork`` (in any thread) takes ``lock`` first and gives it back in both processes."""
    _fork_guards.add(lock)


def _before_fork() -> None:
    for lock in list(_fork_guards):
        if lock.acquire(timeout=FORK_WAIT):
            _held_for_fork.append(lock)


def _after_fork_in_parent() -> None:
    while _held_for_fork:
        _held_for_fork.pop().release()


def reset_in_forked_child(owner: Any, reset: Callable[[Any], None]) -> None:
    """Have a forked child call ``reset(owner)`` on its copy of ``owner``, at once (before
    the child runs anything else, so that it never uses its parent's threads or files)."""
    _fork_resets[owner] = reset


def _after_fork_in_child() -> None:
    """A forked process starts with no open session of its own: the parent's sessions'
    settings are simply its inherited environment (and its new sessions may use others),
    SIGTERM does what it did before the parent's first session, its HTTP connections are
    its own (MLflow keys its ``requests`` sessions by process id), and the buffers of the
    parent's sessions are the parent's to send (``reset_in_forked_child``)."""
    global _settings, _settings_lock, _sigterm, quickack_lock, runs_lock
    _after_fork_in_parent()  # the guards taken before the fork: the child's copies
    _settings_lock = threading.Lock()
    _settings = None
    quickack_lock = threading.Lock()
    runs_lock = threading.Lock()
    _session_runs.clear()
    runs_on_context_stacks.clear()
    trap = _sigterm
    if trap is not None:
        trap.users = 0  # lapsed: the trap puts the handler back itself if it cannot be now
        with contextlib.suppress(ValueError, OSError):  # not forked from the main thread
            _put_back(trap)
    for owner, reset in list(_fork_resets.items()):
        reset(owner)


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
