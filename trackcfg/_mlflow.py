"""The real backend: the only module that imports mlflow.

Only ``_backend`` imports it (the one door; docs/architecture.md), when a session starts,
never by ``import trackcfg``.  It is long because it holds one concept, every contact with
mlflow, so that nothing else needs to know mlflow's internals.  MLflow errors are
translated here, by error code (never by message text), into trackcfg's own.

MLflow internals relied on (pinned by ``tests/test_mlflow_backend.py``):
- ``mlflow.tracking._tracking_service.utils._tracking_uri``: whether a tracking URI was set
  (``get_tracking_uri()`` cannot tell "unset" from a default), to give the state back;
- ``mlflow.tracking._model_registry.utils._registry_uri``: the same for the registry URI;
- ``mlflow.tracking.fluent._active_experiment_id``: so plain ``mlflow.start_run(nested=True)``
  inside a session lands in the session's experiment, without a ``set_experiment`` request;
- ``mlflow.tracking.fluent._active_run_stack``: to make a run that the session attached to
  (and must not end) active, and to take it off again without terminating it; and, while
  sessions are open, replaced by a stand-in with the same interface (``get``, ``set``,
  ``get_all_thread_values``, ``reset``; MLflow's functions look it up at each call and change
  the list ``get()`` returns in place) that gives each asyncio task or thread where a session
  placed a run a stack of its own (``_ContextRunStacks``);
- MLflow's SQLAlchemy store waiting up to 20 s on a locked SQLite file (its ``busy_timeout``)
  inside the C library, where Ctrl-C cannot interrupt it; the interrupt comes when the call
  returns, and the frames it unwinds hold the interrupted transaction (``_drop_interrupted``);
- ``MlflowClient.set_terminated`` fetching the run again (``GET runs/get``) only to print its
  "View run" link, which ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT`` turns off: the backend
  prints the same link from the run it holds and spares that request;
- ``mlflow.tracking.request_header.registry._request_header_provider_registry._registry``:
  the list of header-provider instances MLflow asks on every request, to add the configured
  ``server.request_header_provider`` for a session and take it off after (``register()``
  only takes a class it builds without arguments, and nothing removes);
- ``mlflow.utils.request_utils._get_request_session`` with the arguments
  ``mlflow.utils.rest_utils.http_request`` passes it by default: the cached
  ``requests.Session`` MLflow's REST calls use, to mount the quick-ACK adapter on it
  (``_transport.py``).  If it moves, trackcfg says so once at debug level and MLflow's client
  is used as it is.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableSequence, Sequence
from pathlib import Path
from typing import Any, TypeVar, overload
from urllib.parse import urlsplit, urlunsplit

import attrs
import mlflow
import requests
from mlflow.entities import LifecycleStage, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)
from mlflow.tracking import MlflowClient
from mlflow.tracking import _model_registry as _registry_pkg
from mlflow.tracking import _tracking_service as _tracking_pkg
from mlflow.tracking import fluent as _fluent
from mlflow.utils import validation as _validation

from . import _state
from ._backend import ArtifactFile, ExperimentRef, ModelRef, RunDetails, RunRef, RunStatus
from ._env import exported
from ._params import Batch, Limits, MetricPoint
from ._store import mask_uri
from ._transport import QuickAckMount, mount_quickack, not_used
from .exceptions import CredentialsError, ExperimentError, RunError, TrackingUnavailableError

__all__ = ["MlflowBackend"]

# Typed as Any: we read and restore their module globals, which mlflow annotates as None.
_tracking_utils: Any = _tracking_pkg.utils
_registry_utils: Any = _registry_pkg.utils
_fluent_state: Any = _fluent


F = TypeVar("F", bound=Callable[..., Any])
logger = logging.getLogger(__name__)


def _code(exc: MlflowException) -> int:
    return int(ErrorCode.Value(exc.error_code))


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception behind it, nearest first: ``__cause__``, ``__context__``
    and the ones urllib3 and requests keep as attributes (``MaxRetryError.reason``) or
    arguments (``requests.ConnectionError(MaxRetryError(...))``)."""
    found: list[BaseException] = []
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        found.append(current)
        reason = getattr(current, "reason", None)
        todo += [current.__cause__, current.__context__]
        todo += [reason] if isinstance(reason, BaseException) else []
        todo += [arg for arg in current.args if isinstance(arg, BaseException)]
    return found


def _network_cause(exc: BaseException) -> BaseException | None:
    """The requests error behind an MlflowException, if the server was not reached.

    MLflow wraps transport failures in a plain MlflowException (error code INTERNAL_ERROR,
    like a server-side failure), chaining the requests exception; the chain tells them apart.
    An ``HTTPError`` is not one: the server answered, with an error status.
    """
    for current in _chain(exc):
        if isinstance(current, requests.exceptions.HTTPError) or _answered_with_errors(current):
            return None
        if isinstance(current, requests.exceptions.RequestException):
            return current
    return None


def _answered_with_errors(exc: BaseException) -> bool:
    """A ``RetryError`` for HTTP 500 (urllib3's "too many 500 error responses"): the server
    answered, every time, that it failed on the request: not unreachable (a 502, 503 or 504
    from a proxy in front of a server that is down is).  urllib3 keeps the status only in
    that reason's text, written from its ``SPECIFIC_ERROR`` template."""
    if not isinstance(exc, requests.exceptions.RetryError):
        return False
    from urllib3.exceptions import ResponseError

    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    if not isinstance(reason, ResponseError):
        return False
    return str(reason) == ResponseError.SPECIFIC_ERROR.format(status_code=500)


@attrs.frozen
class _Unreachable:
    """Why the server was not reached: what the one-line message says, and the exception
    deepest in the chain that says it (the error is chained from it: MLflow's own wrapper
    repeats the URI, credentials included, over a hundred lines of retry frames)."""

    what: str
    """What happened; ``{server}`` stands for the server's (masked) URI."""
    fix: str
    root: BaseException
    retried: bool = True
    """Whether the session's budget (request_timeout x max_retries) was spent on it."""


_RETRY_FIX = "or raise server.request_timeout / server.max_retries"


def _host_port(tracking_uri: str) -> tuple[str, int] | None:
    parts = urlsplit(tracking_uri)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    return (parts.hostname, port) if parts.hostname else None


def _where(tracking_uri: str) -> str:
    address = _host_port(tracking_uri)
    return f"{address[0]}:{address[1]}" if address else "its address"


def _unreachable(tracking_uri: str, error: BaseException, *, retried: bool) -> _Unreachable:
    """Name the cause of a failed connection from the exception types in its chain (refused,
    name not resolved, unreachable network, TLS, timed out, closed), never from message text.
    """
    import errno
    import socket
    import ssl

    import urllib3.exceptions as u3

    chain = _chain(error)
    root = chain[-1]
    for current in chain:
        if isinstance(current, ssl.SSLError):
            detail = getattr(current, "verify_message", None) or getattr(current, "reason", None)
            return _Unreachable(
                f"the TLS handshake with tracking server {{server}} failed "
                f"({detail or type(current).__name__})",
                "check the scheme (http or https) of server.mlflow_tracking_uri and the server's "
                "certificate (MLFLOW_TRACKING_SERVER_CERT_PATH, or MLFLOW_TRACKING_INSECURE_TLS, "
                "in the server.credentials entry)",
                current,
                retried,
            )
    for current in chain:
        if isinstance(current, ConnectionRefusedError):
            return _Unreachable(
                "tracking server {server} refused the connection (nothing listens on "
                f"{_where(tracking_uri)})",
                "start the server, or fix the host and port in server.mlflow_tracking_uri",
                current,
                retried,
            )
        if isinstance(current, (socket.gaierror, u3.NameResolutionError)):
            host = (_host_port(tracking_uri) or ("?", 0))[0]
            return _Unreachable(
                f"the host name {host!r} of tracking server {{server}} could not be resolved",
                "fix the host in server.mlflow_tracking_uri, or check the DNS and the network",
                current,
                retried,
            )
        if isinstance(current, OSError) and current.errno in (
            errno.ENETUNREACH,
            errno.EHOSTUNREACH,
        ):
            return _Unreachable(
                "tracking server {server} is unreachable from here "
                f"({os.strerror(current.errno or 0).lower()})",
                "check the network (VPN, proxy settings) and server.mlflow_tracking_uri",
                current,
                retried,
            )
    for current in chain:
        if isinstance(current, (u3.ConnectTimeoutError, requests.exceptions.ConnectTimeout)):
            return _Unreachable(
                "tracking server {server} did not accept a connection in time (timed out)",
                f"check that it is running and reachable, {_RETRY_FIX}",
                root,
                retried,
            )
        if isinstance(current, (TimeoutError, u3.TimeoutError, requests.exceptions.Timeout)):
            return _Unreachable(
                "tracking server {server} did not answer in time (timed out)",
                f"check that it is running and not overloaded, {_RETRY_FIX}",
                root,
                retried,
            )
    for current in chain:
        if isinstance(current, (ConnectionError, u3.ProtocolError)):
            return _Unreachable(
                "tracking server {server} closed the connection without an answer "
                f"({type(current).__name__})",
                f"check that it is an MLflow server and running, {_RETRY_FIX}",
                root,
                retried,
            )
    return _Unreachable(
        f"tracking server {{server}} could not be reached ({type(error).__name__})",
        f"check that it is running, {_RETRY_FIX}",
        root,
        retried,
    )


def _unavailable(tracking_uri: str, why: _Unreachable) -> TrackingUnavailableError:
    """The one-line message: the server (password masked), the cause, the budget spent on it
    (none at session start, where a refused connection is not retried) and the fix."""
    text, fix = why.what.replace("{server}", mask_uri(tracking_uri)), why.fix
    if why.retried:
        text += (
            f", through the session's budget of "
            f"{os.environ.get('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '?')} retries of "
            f"{os.environ.get('MLFLOW_HTTP_REQUEST_TIMEOUT', '?')} s"
        )
        fix += "" if _RETRY_FIX in fix else f", {_RETRY_FIX}"
    return TrackingUnavailableError(f"{text}; {fix}")


# A TCP connect that takes longer than this at session start is left to MLflow's own budget.
_PRECHECK_SECONDS = 1.0


def _precheck(tracking_uri: str) -> _Unreachable | None:
    """At session start, one TCP connect to the server: a refused connection, a host name that
    does not resolve or an unreachable network is reported at once, instead of after MLflow's
    retries with backoff (10-35 s with the defaults) for an answer that cannot come.  Anything
    else (connected, timed out) goes on to the first request.  Skipped where requests would
    go through a proxy (the proxy, not the server, is what the client connects to)."""
    import errno
    import socket

    address = _host_port(tracking_uri)
    if address is None or not tracking_uri.startswith(("http://", "https://")):
        return None
    if requests.utils.get_environ_proxies(tracking_uri):
        return None
    try:
        with socket.create_connection(address, timeout=_PRECHECK_SECONDS):
            return None
    except (ConnectionRefusedError, socket.gaierror) as exc:
        return _unreachable(tracking_uri, exc, retried=False)
    except OSError as exc:
        if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return _unreachable(tracking_uri, exc, retried=False)
        return None


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status of a server's refusal: from MLflow's error code (which MLflow derives
    from the status), or from a requests ``HTTPError`` (MLflow's artifact client)."""
    if isinstance(exc, MlflowException):
        status: Any = exc.get_http_status_code  # untyped in MLflow
        return int(status())
    if isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None:
        return int(exc.response.status_code)
    return None


def _refused_credentials(tracking_uri: str, status: int) -> CredentialsError:
    shown = mask_uri(tracking_uri)
    if status == 401:
        return CredentialsError(
            f"credentials rejected by {shown} (HTTP 401: none were sent, or the user name, "
            "password or token is wrong); check server.credentials (its entry's "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN)"
        )
    return CredentialsError(
        f"credentials refused by {shown} for this request (HTTP 403: the user has no "
        "permission for it); check server.credentials, or ask the server's admin for "
        "permission on the experiment"
    )


# SQLite's result codes for "another connection holds the lock" (sqlite3 names them from 3.11).
_SQLITE_BUSY_CODES = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED


def _sqlite_busy(exc: BaseException) -> bool:
    """Whether a SQLite store stayed locked past MLflow's own wait (its busy_timeout, 20 s):
    told by the sqlite3 error code in the chain (Python 3.11+), not by the message."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, sqlite3.OperationalError):
            return getattr(current, "sqlite_errorcode", None) in _SQLITE_BUSY_CODES
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


# SQLite's lock bytes (rollback journal: os_unix.c's PENDING_BYTE, RESERVED_BYTE and the 510
# SHARED bytes after them) and, in WAL mode, the write lock's byte of the ``-shm`` file.
_SQLITE_LOCK_BYTES = (0x40000000, 0x40000000 + 2 + 510)
_WAL_WRITE_LOCK_BYTE = 120


def _sqlite_lock_holder(db: Path) -> int | None:
    """The process holding a lock on the SQLite file ``db`` (or its ``-shm`` file) that keeps
    a writer out: another process's id, ``os.getpid()`` when only this process holds one
    (through another connection), None when no lock is held now or where it cannot be told.

    Read from ``/proc/locks`` (Linux): opening the file to ask ``fcntl`` would be wrong, as
    closing any descriptor of it drops every POSIX lock this process holds on it, SQLite's
    included."""
    try:
        targets: dict[str, tuple[int, int]] = {}
        for path, (low, high) in (
            (db, _SQLITE_LOCK_BYTES),
            (db.with_name(db.name + "-shm"), (_WAL_WRITE_LOCK_BYTE, _WAL_WRITE_LOCK_BYTE)),
        ):
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(path)
                key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
                targets[key] = (low, high)
        with open("/proc/locks", encoding="ascii", errors="replace") as listing:
            lines = listing.read().splitlines()
    except OSError:
        return None
    holders: list[tuple[bool, int]] = []  # (a write lock, pid)
    for line in lines:
        fields = line.split()
        if "->" in fields or len(fields) < 8 or fields[1] != "POSIX":
            continue  # a waiter's entry, or another kind of lock
        rw, pid, where, start, end = fields[3], fields[4], fields[5], fields[6], fields[7]
        span = targets.get(where)
        if span is None or not pid.isdigit() or not start.isdigit():
            continue
        last = span[1] + 1 if end == "EOF" else int(end)
        if int(start) <= span[1] and last >= span[0]:
            holders.append((rw == "WRITE", int(pid)))
    for _, holder in sorted(holders, key=lambda held: not held[0]):  # writers first
        if holder != os.getpid():
            return holder
    return os.getpid() if holders else None


def _locked_store_error(tracking_uri: str) -> TrackingUnavailableError:
    """What happened when a write to a SQLite store gave up waiting for its lock, naming who
    holds the lock where that can be told (``_sqlite_lock_holder``)."""
    db = _sqlite_file(tracking_uri)
    holder = None if db is None else _sqlite_lock_holder(db)
    waited = (
        f"a write to SQLite store {mask_uri(tracking_uri)} waited for its lock longer than "
        "MLflow waits (20 s)"
    )
    server = (
        "SQLite lets one connection write at a time, so for many processes writing at once use "
        "a tracking server (mlflow server --backend-store-uri postgresql+psycopg2://...; see "
        "docs/scale.md)"
    )
    if holder == os.getpid():
        return TrackingUnavailableError(
            f"{waited}: this process (pid {holder}) holds that lock itself, through another "
            "connection with a transaction left open (a sqlite3 connection of the program's "
            "own to that file, or a write interrupted by Ctrl-C); commit or close it"
        )
    if holder is not None:
        return TrackingUnavailableError(
            f"{waited}: process {holder} holds it (a program writing to the store, or one "
            f"that left a transaction open); {server}"
        )
    return TrackingUnavailableError(
        f"{waited}: another connection held it (of this process or another); {server}"
    )


def _own_lock_let_go(tracking_uri: str) -> bool:
    """After ending a run gave up waiting for a SQLite lock: whether one more try may pass.
    Not when another process holds the lock (MLflow waited for it already); when this
    process held it, the garbage collector may free an interrupted transaction that a cycle
    of references kept (``_drop_interrupted`` frees the others): then it is let go."""
    db = _sqlite_file(tracking_uri)
    if db is None or _sqlite_lock_holder(db) not in (None, os.getpid()):
        return False
    gc.collect()
    return _sqlite_lock_holder(db) != os.getpid()


#: Modules whose frames, left behind by an interrupted store call, hold its connection.
_STORE_MODULES = ("mlflow.", "sqlalchemy.", "sqlite3")


def _drop_interrupted(exc: BaseException | None) -> None:
    """Let go of what a store call interrupted by Ctrl-C, SIGTERM or ``sys.exit()`` holds.

    The interrupt's traceback keeps the frames it unwound, and MLflow's and SQLAlchemy's
    among them keep the interrupted transaction's session, connection and cursor - with their
    lock on the database: on a SQLite store, ending the run KILLED would wait 20 s for a lock
    this very process holds, then fail, leaving the run RUNNING.  Those frames have finished
    (the exception left them); clearing their variables returns the connection to its pool,
    rolled back.  The program's own frames are left as they are.  Only for interrupts (not
    ``Exception``: MLflow's own handlers roll those back)."""
    if exc is None or isinstance(exc, Exception):
        return
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        todo += [current.__cause__, current.__context__]
        tb = current.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            if str(frame.f_globals.get("__name__", "")).startswith(_STORE_MODULES):
                with contextlib.suppress(RuntimeError):  # still running: not ours to clear
                    frame.clear()
            tb = tb.tb_next


def _reachable(method: F) -> F:
    """Translate what stops a backend call at the door, by exception type, MLflow error code
    or HTTP status (never by message text), with the URI's password masked:

    - the server not reached → ``TrackingUnavailableError`` naming the cause (refused, name
      not resolved, unreachable, TLS, timed out); at the backend's first call a TCP connect
      reports the definite ones at once (``_precheck``);
    - HTTP 401/403 → ``RunError`` pointing at ``server.credentials``;
    - the SQLite file locked past MLflow's wait → ``TrackingUnavailableError`` naming who
      holds the lock (``_locked_store_error``);
    - an interrupt (Ctrl-C, SIGTERM, ``sys.exit()``) in the middle of a call: what the call
      held is let go (``_drop_interrupted``) before it propagates.
    """

    @functools.wraps(method)
    def wrapper(self: MlflowBackend, *args: Any, **kwargs: Any) -> Any:
        if not self._prechecked:
            self._prechecked = True
            early = _precheck(self.tracking_uri)
            if early is not None:
                raise _unavailable(self.tracking_uri, early) from early.root
        try:
            return method(self, *args, **kwargs)
        except (MlflowException, requests.exceptions.RequestException) as exc:
            status = _http_status(exc)
            if status in (401, 403):
                assert status is not None
                # A requests HTTPError's text holds the whole URL, credentials included.
                raise _refused_credentials(self.tracking_uri, status) from (
                    exc if isinstance(exc, MlflowException) else None
                )
            if _sqlite_busy(exc):
                raise _locked_store_error(self.tracking_uri) from exc
            if isinstance(exc, requests.exceptions.HTTPError):  # MLflow's artifact client
                # Its text holds the whole URL, credentials included: not chained.
                raise RunError(
                    f"tracking server {mask_uri(self.tracking_uri)} answered HTTP {status} to "
                    f"{method.__name__}; see the server's log"
                ) from None
            cause = _network_cause(exc)
            if cause is None:
                raise
            why = _unreachable(self.tracking_uri, cause, retried=True)
            raise _unavailable(self.tracking_uri, why) from why.root
        except BaseException as exc:
            _drop_interrupted(exc)  # Ctrl-C, SIGTERM, sys.exit() in the middle of a call
            raise

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def _artifact_refused(run_id: str, where: str) -> Iterator[None]:
    """A path the store refused (MLflow's INVALID_PARAMETER_VALUE; an artifact server's HTTP
    400, as MLflow's artifact client reports it) as a ``RunError`` naming it.  The session
    refuses the paths it knows to be wrong before sending; this is for the store's own rules.
    """
    try:
        yield
    except (MlflowException, requests.exceptions.HTTPError) as exc:
        if _http_status(exc) != 400 or _network_cause(exc) is not None:
            raise
        detail = exc.message if isinstance(exc, MlflowException) else "HTTP 400"
        # A requests HTTPError's text holds the whole URL, credentials included.
        raise RunError(
            f"the store refused artifact {where!r} of run {run_id} ({detail}); use a relative "
            "path inside the run's artifacts, without '..', '#' or a leading '/'"
        ) from (exc if isinstance(exc, MlflowException) else None)


def _link_base(tracking_uri: str) -> str:
    """The server's address for a link a person opens: without the user name and password
    (which must not be printed, and which the browser asks for)."""
    parts = urlsplit(tracking_uri)
    if "@" not in parts.netloc:
        return tracking_uri.rstrip("/")
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])).rstrip("/")


# ---------------------------------------------------------------------------- active runs
#
# MLflow keeps its active-run stack per thread: asyncio tasks in one thread share it, so
# concurrent sessions would nest under, log into and end each other's runs.  While sessions
# are open, ``fluent._active_run_stack`` is a stand-in that gives each context (asyncio task,
# thread) where a session placed a run a stack of its own, held in ``_state.context_runs``.


def _own_runs() -> _state.ContextRuns | None:
    """The current context's own stack, if it has one: made in this process (not a forked
    child's copy) for the stand-in MLflow reads now (not left over from earlier sessions)."""
    record = _state.context_runs.get()
    if record is None or record.pid != os.getpid():
        return None
    return record if record.maker is _fluent_state._active_run_stack else None


def _write_runs(runs: tuple[Any, ...]) -> None:
    """Make ``runs`` the current context's stack (a new value: other contexts keep theirs)."""
    record = _own_runs() or _state.ContextRuns(maker=_fluent_state._active_run_stack)
    _state.context_runs.set(attrs.evolve(record, runs=runs))
    before = {run.info.run_id for run in record.runs}
    after = {run.info.run_id: run for run in runs}
    with _state.runs_lock:
        for run_id in before - after.keys():
            _state.runs_on_context_stacks.pop(run_id, None)
        for run_id in after.keys() - before:
            _state.runs_on_context_stacks[run_id] = after[run_id]


class _ContextRunList(MutableSequence[Any]):
    """The current context's stack as the list MLflow's functions use (``append``, ``pop``,
    ``[-1]``, ``len``, iteration); each change writes the context's new stack."""

    @staticmethod
    def _runs() -> tuple[Any, ...]:
        record = _own_runs()
        return () if record is None else record.runs

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...
    def __getitem__(self, index: int | slice) -> Any:
        runs = self._runs()
        return runs[index] if isinstance(index, int) else list(runs[index])

    @overload
    def __setitem__(self, index: int, value: Any) -> None: ...
    @overload
    def __setitem__(self, index: slice, value: Iterable[Any]) -> None: ...
    def __setitem__(self, index: int | slice, value: Any) -> None:
        runs = list(self._runs())
        runs[index] = value
        _write_runs(tuple(runs))

    def __delitem__(self, index: int | slice) -> None:
        runs = list(self._runs())
        del runs[index]
        _write_runs(tuple(runs))

    def __len__(self) -> int:
        return len(self._runs())

    def insert(self, index: int, value: Any) -> None:
        runs = list(self._runs())
        runs.insert(index, value)
        _write_runs(tuple(runs))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, _ContextRunList)):
            return list(self._runs()) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(list(self._runs()))


class _ContextRunStacks:
    """Stands in for MLflow's ``_active_run_stack`` (a ``ThreadLocalVariable`` with one list
    per thread) while sessions are open: a context with a stack of its own reads and changes
    that one; any other context, its thread's list, as before."""

    def __init__(self, per_thread: Any) -> None:
        self.per_thread = per_thread

    def get(self) -> Any:
        return _ContextRunList() if _own_runs() is not None else self.per_thread.get()

    def set(self, value: Any) -> None:
        if _own_runs() is not None:
            _write_runs(tuple(value))
        else:
            self.per_thread.set(value)

    def get_all_thread_values(self) -> dict[int, Any]:
        """Every thread's list, and (under -1, not a thread id: MLflow looks only at the
        lists, for the latest run active anywhere) the runs on contexts' own stacks."""
        values = dict(self.per_thread.get_all_thread_values())
        with _state.runs_lock:
            elsewhere = list(_state.runs_on_context_stacks.values())
        if elsewhere:
            values[-1] = elsewhere
        return values

    def reset(self) -> None:
        self.per_thread.reset()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.per_thread, name)


def _use_context_stacks() -> bool:
    """Install the stand-in; False when it is installed already (nothing to take off)."""
    current = _fluent_state._active_run_stack
    if isinstance(current, _ContextRunStacks):
        return False
    _fluent_state._active_run_stack = _ContextRunStacks(current)
    return True


def _stop_context_stacks() -> None:
    """Give MLflow its per-thread stacks back.  Runs the current context started beyond the
    sessions' (plain ``mlflow.start_run()`` left open) go on its thread's list, to stay
    active; other contexts' stacks are from then on ignored (``_own_runs``)."""
    current = _fluent_state._active_run_stack
    record = _own_runs()
    if isinstance(current, _ContextRunStacks):
        if record is not None:
            thread_runs = current.per_thread.get()
            known = {run.info.run_id for run in thread_runs}
            thread_runs.extend(run for run in record.runs if run.info.run_id not in known)
        _fluent_state._active_run_stack = current.per_thread
    _state.context_runs.set(None)
    with _state.runs_lock:
        _state.runs_on_context_stacks.clear()


def _take_own_stack() -> None:
    """Before a session puts a run on the stack: give the current context a stack of its own,
    a copy of what it sees now (a task created later copies it in turn, with the run)."""
    stacks = _fluent_state._active_run_stack
    if isinstance(stacks, _ContextRunStacks) and _own_runs() is None:
        runs = tuple(stacks.per_thread.get())
        base = tuple(run.info.run_id for run in runs)
        _state.context_runs.set(_state.ContextRuns(runs=runs, base=base, maker=stacks))


def _give_back_stack() -> None:
    """After a session took a run off: once only the runs the context found are left, it
    reads its thread's list again (where those runs still are)."""
    record = _own_runs()
    if record is not None and tuple(run.info.run_id for run in record.runs) == record.base:
        _state.context_runs.set(None)


@attrs.frozen
class _StoreToken:
    tracking_uri: str | None
    registry_uri: str | None
    experiment_id: str | None
    context_stacks: bool = False  # whether use_store installed the stand-in


def _mlflow_rest_sessions() -> list[requests.Session]:
    """The ``requests.Session`` MLflow's REST client uses with the current environment."""
    import inspect

    from mlflow import environment_variables as variables
    from mlflow.utils import request_utils, rest_utils

    env: Any = variables
    defaults = inspect.signature(rest_utils.http_request).parameters
    get_session: Any = request_utils._get_request_session
    session = get_session(
        env.MLFLOW_HTTP_REQUEST_MAX_RETRIES.get(),
        env.MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get(),
        env.MLFLOW_HTTP_REQUEST_BACKOFF_JITTER.get(),
        defaults["retry_codes"].default,
        defaults["raise_on_status"].default,
        env.MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER.get(),
    )
    if not isinstance(session, requests.Session):
        raise TypeError(f"expected a requests.Session, got {type(session).__name__}")
    return [session]


def _quickack_for(tracking_uri: str) -> QuickAckMount | None:
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    try:
        sessions = _mlflow_rest_sessions()
    except Exception as exc:
        not_used(f"MLflow's hook point changed ({type(exc).__name__}: {exc})")
        return None
    return mount_quickack(tracking_uri, sessions)


_SUPPRESS_LINK = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"


def _run_link(tracking_uri: str, run: Any) -> str | None:
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
    if _sqlite_file(tracking_uri) is not None:
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


def header_provider_class(spec: str) -> type:
    """Import ``spec`` (``package.module.Class``) and check that it is one of MLflow's
    ``RequestHeaderProvider`` classes; ``ValueError`` says what is wrong."""
    import importlib

    from mlflow.tracking.request_header.abstract_request_header_provider import (
        RequestHeaderProvider,
    )

    module_name, _, class_name = spec.strip().rpartition(".")
    if not module_name or not class_name:
        raise ValueError(f"{spec!r} is not a dotted path to a class (package.module.Class)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"module {module_name!r} has no {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, RequestHeaderProvider)):
        raise ValueError(
            f"{spec!r} must be a subclass of "
            "mlflow.tracking.request_header.abstract_request_header_provider."
            "RequestHeaderProvider"
        )
    return cls


def build_header_provider(spec: str, kwargs: Mapping[str, Any]) -> Any:
    """The provider class at ``spec`` built with ``kwargs``; ``ValueError`` says what is
    wrong (the session names the config key)."""
    cls = header_provider_class(spec)
    try:
        return cls(**kwargs)
    except Exception as exc:
        names = ", ".join(sorted(kwargs)) or "no arguments"
        raise ValueError(f"{spec}({names}) failed: {type(exc).__name__}: {exc}") from exc


def _header_providers() -> list[Any]:
    from mlflow.tracking.request_header import registry

    providers: Any = registry._request_header_provider_registry._registry
    if not isinstance(providers, list):
        raise TypeError("MLflow's request header provider registry moved")
    return providers


def add_header_provider(provider: Any) -> None:
    """Ask ``provider`` for headers on every MLflow request until ``remove_header_provider``."""
    _header_providers().append(provider)


def remove_header_provider(provider: Any) -> None:
    providers = _header_providers()
    for i in range(len(providers) - 1, -1, -1):
        if providers[i] is provider:
            del providers[i]
            return


def _sqlite_file(tracking_uri: str) -> Path | None:
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri[len("sqlite:///") :].partition("?")[0]
    return Path(path) if path and not path.startswith(":memory:") else None


@contextlib.contextmanager
def _store_creation_lock(tracking_uri: str) -> Iterator[None]:
    """Hold an exclusive lock, across processes, on the folder of a SQLite store's file.

    MLflow creates a new database's tables in EVERY process that finds them missing: processes
    opening a new store at once collide ("table ... already exists", alembic revision errors).
    A ``flock`` on the folder, not on the database file: closing any descriptor of that file
    would drop SQLite's own locks held by this process.  Where ``flock`` does not exist
    (Windows), nothing is locked."""
    db = _sqlite_file(tracking_uri)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None  # type: ignore[assignment]
    if db is None or fcntl is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(db.parent, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


_DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")


def _database_answers(tracking_uri: str) -> None:
    """One connection to a database store before MLflow's: MLflow retries creating its
    engine ten times with growing pauses (about 100 s) and then raises SQLAlchemy's own
    error; a database that is down or never answers is said at once instead, within the
    connect timeout the session put in the URI (``server.request_timeout``)."""
    if tracking_uri.split(":", 1)[0].split("+", 1)[0].lower() not in _DATABASE_SCHEMES:
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(tracking_uri, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.DBAPIError as exc:
        # The driver's text names host and port, never the password; the URI is masked.
        cause = exc.orig if exc.orig is not None else exc
        detail = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        raise TrackingUnavailableError(
            f"database store {mask_uri(tracking_uri)} did not accept a connection "
            f"({type(cause).__name__}: {detail}); check that it is running and reachable, "
            "or raise server.request_timeout"
        ) from None
    finally:
        engine.dispose()


def mlflow_limits() -> Limits:
    """The installed mlflow's limits (6000-character param values in MLflow 3)."""
    return Limits(
        param_value=_validation.MAX_PARAM_VAL_LENGTH,
        tag_value=_validation.MAX_TAG_VAL_LENGTH,
        key=_validation.MAX_ENTITY_KEY_LENGTH,
        params_per_batch=_validation.MAX_PARAMS_TAGS_PER_BATCH,
        tags_per_batch=_validation.MAX_PARAMS_TAGS_PER_BATCH,
        metrics_per_batch=_validation.MAX_METRICS_PER_BATCH,
        entities_per_batch=_validation.MAX_ENTITIES_PER_BATCH,
        request_bytes=_validation.MAX_BATCH_LOG_REQUEST_SIZE,
    )


@attrs.define
class MlflowBackend:
    tracking_uri: str = attrs.field(repr=lambda uri: repr(mask_uri(uri)))
    registry_uri: str | None = attrs.field(
        default=None, repr=lambda uri: repr(None if uri is None else mask_uri(uri))
    )
    _client: Any = attrs.field(init=False)
    _quickack: QuickAckMount | None = attrs.field(init=False, default=None)
    _prechecked: bool = attrs.field(init=False, default=False)

    def __attrs_post_init__(self) -> None:
        _database_answers(self.tracking_uri)
        # The client builds MLflow's (per-process, cached) store, creating a new one's tables.
        with _store_creation_lock(self.tracking_uri):
            self._client = MlflowClient(
                tracking_uri=self.tracking_uri, registry_uri=self.registry_uri
            )
        # From the first request on (the experiment lookup), until close().
        self._quickack = _quickack_for(self.tracking_uri)

    def close(self) -> None:
        if self._quickack is not None:
            self._quickack.unmount()
            self._quickack = None

    def limits(self) -> Limits:
        return mlflow_limits()

    # ---------------------------------------------------------------- process-wide state

    def use_store(self, experiment_id: str | None) -> object:
        token = _StoreToken(
            tracking_uri=_tracking_utils._tracking_uri,
            registry_uri=_registry_utils._registry_uri,
            experiment_id=_fluent_state._active_experiment_id,
            context_stacks=_use_context_stacks(),
        )
        mlflow.set_tracking_uri(self.tracking_uri)
        if self.registry_uri is not None:
            mlflow.set_registry_uri(self.registry_uri)
        if experiment_id is not None:
            _fluent_state._active_experiment_id = experiment_id
        return token

    def restore_store(self, token: object) -> None:
        assert isinstance(token, _StoreToken)
        # The session restores the environment variables these calls touch.
        mlflow.set_tracking_uri(token.tracking_uri)  # type: ignore[arg-type]
        if _registry_utils._registry_uri != token.registry_uri:
            _registry_utils._registry_uri = token.registry_uri
        _fluent_state._active_experiment_id = token.experiment_id
        if token.context_stacks:
            _stop_context_stacks()

    # ---------------------------------------------------------------- experiments

    @_reachable
    def get_experiment(self, name: str) -> ExperimentRef | None:
        exp = self._client.get_experiment_by_name(name)
        if exp is None:
            return None
        return ExperimentRef(
            id=exp.experiment_id,
            name=exp.name,
            deleted=exp.lifecycle_stage == LifecycleStage.DELETED,
        )

    @_reachable
    def create_experiment(
        self, name: str, artifact_location: str | None, tags: Mapping[str, str] | None
    ) -> str:
        try:
            return str(
                self._client.create_experiment(
                    name, artifact_location=artifact_location, tags=dict(tags or {})
                )
            )
        except MlflowException as exc:
            if _network_cause(exc) is not None or _http_status(exc) in (401, 403):
                raise  # the server was not reached, or refused the credentials: _reachable
            if _code(exc) == RESOURCE_ALREADY_EXISTS:
                # Another process created it between our lookup and our create.
                found = self.get_experiment(name)
                if found is not None and not found.deleted:
                    return found.id
            raise ExperimentError(f"cannot create experiment {name!r}: {exc.message}") from exc

    @_reachable
    def restore_experiment(self, experiment_id: str) -> None:
        self._client.restore_experiment(experiment_id)

    # ---------------------------------------------------------------- runs

    @_reachable
    def get_run(self, run_id: str) -> RunRef | None:
        try:
            run = self._client.get_run(run_id)
        except MlflowException as exc:
            if _code(exc) in (RESOURCE_DOES_NOT_EXIST, INVALID_PARAMETER_VALUE):
                return None
            raise
        return RunRef(
            id=run.info.run_id,
            experiment_id=run.info.experiment_id,
            name=run.info.run_name,
            status=RunStatus(run.info.status),
            deleted=run.info.lifecycle_stage == LifecycleStage.DELETED,
            params=dict(run.data.params),
        )

    def active_run_ids(self) -> list[str]:
        return [str(run.info.run_id) for run in _fluent_state._active_run_stack.get()]

    def active_run_id(self) -> str | None:
        run = mlflow.active_run()
        return None if run is None else str(run.info.run_id)

    @_reachable
    def start_run(
        self,
        *,
        experiment_id: str,
        name: str | None,
        parent_run_id: str | None,
        tags: Mapping[str, str],
    ) -> RunRef:
        # With MLFLOW_RUN_ID set, mlflow.start_run() would reopen that run instead of starting
        # one; the session decided already what it means and restores the variable on exit.
        os.environ.pop("MLFLOW_RUN_ID", None)
        _take_own_stack()
        top = self.active_run_id()
        if parent_run_id is not None and top == parent_run_id:
            active = mlflow.start_run(
                experiment_id=experiment_id, run_name=name, nested=True, tags=dict(tags)
            )
        elif top is None:
            active = mlflow.start_run(
                experiment_id=experiment_id,
                run_name=name,
                parent_run_id=parent_run_id,
                tags=dict(tags),
            )
        else:
            raise RunError(
                f"cannot start a run under {parent_run_id!r} while run {top!r} is active "
                "in this thread"
            )
        info = active.info
        return RunRef(id=info.run_id, experiment_id=info.experiment_id, name=info.run_name)

    @_reachable
    def resume_run(self, run_id: str) -> None:
        # No run_name: MLflow would rename the run it reopens.
        _take_own_stack()
        mlflow.start_run(run_id=run_id, nested=self.active_run_id() is not None)

    @_reachable
    def push_active(self, run_id: str) -> None:
        run = self._client.get_run(run_id)
        _take_own_stack()
        _fluent_state._active_run_stack.get().append(_fluent_state.ActiveRun(run))

    def pop_active(self, run_id: str) -> None:
        stack = _fluent_state._active_run_stack.get()
        for i in range(len(stack) - 1, -1, -1):
            if stack[i].info.run_id == run_id:
                del stack[i]
                break
        _give_back_stack()

    @_reachable
    def end_run(self, run_id: str, status: RunStatus) -> None:
        # Ended while an interrupt propagates (Ctrl-C, SIGTERM): what the interrupted call
        # holds goes first, else the end would wait for this very process's lock.
        _drop_interrupted(sys.exc_info()[1])
        held = [run for run in _fluent_state._active_run_stack.get() if run.info.run_id == run_id]
        link = _run_link(self.tracking_uri, held[-1]) if held else None
        try:
            with exported({} if link is None else {_SUPPRESS_LINK: "true"}):
                try:
                    if self.active_run_id() == run_id:
                        mlflow.end_run(status.value)  # takes it off the stack, then ends it
                    else:
                        self.pop_active(run_id)
                        self._client.set_terminated(run_id, status.value)
                except MlflowException as exc:
                    if not (_sqlite_busy(exc) and _own_lock_let_go(self.tracking_uri)):
                        raise
                    self._client.set_terminated(run_id, status.value)  # once more, off the stack
        finally:
            _give_back_stack()
        if link is not None:
            sys.stdout.write(link)

    # ---------------------------------------------------------------- logging

    @_reachable
    def log_batch(self, run_id: str, batch: Batch) -> None:
        now = int(time.time() * 1000)
        try:
            self._client.log_batch(
                run_id,
                metrics=[Metric(m.key, m.value, m.timestamp or now, m.step) for m in batch.metrics],
                params=[Param(k, v) for k, v in batch.params],
                tags=[RunTag(k, v) for k, v in batch.tags],
            )
        except MlflowException as exc:
            if _code(exc) in (INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST):
                raise RunError(
                    f"MLflow refused what was logged to run {run_id}: {exc.message}"
                ) from exc
            raise

    @_reachable
    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        with _artifact_refused(run_id, artifact_file):
            self._client.log_text(run_id, text, artifact_file)

    @_reachable
    def log_dict(self, run_id: str, data: Mapping[str, Any], artifact_file: str) -> None:
        with _artifact_refused(run_id, artifact_file):
            self._client.log_dict(run_id, dict(data), artifact_file)

    @_reachable
    def log_artifact(self, run_id: str, path: str, artifact_path: str | None) -> None:
        with _artifact_refused(run_id, artifact_path or os.path.basename(path)):
            self._client.log_artifact(run_id, path, artifact_path)

    # ---------------------------------------------------------------- journal replay

    @_reachable
    def metric_history(self, run_id: str, key: str) -> list[MetricPoint]:
        return [
            MetricPoint(key=m.key, value=m.value, step=m.step, timestamp=m.timestamp)
            for m in self._client.get_metric_history(run_id, key)
        ]

    @_reachable
    def terminate(self, run_id: str, status: RunStatus, end_time: int | None) -> None:
        # No "View run" line: ``trackcfg sync --json`` prints JSON only, and a session's
        # background sync must not print into its program's output (one request fewer too).
        with exported({_SUPPRESS_LINK: "true"}):
            self._client.set_terminated(run_id, status.value, end_time)

    # ---------------------------------------------------------------- copying runs (sync)

    @_reachable
    def list_experiments(self) -> list[ExperimentRef]:
        from mlflow.entities import ViewType

        found: list[ExperimentRef] = []
        token = None
        while True:
            page = self._client.search_experiments(
                view_type=ViewType.ALL, max_results=1000, page_token=token
            )
            found += [
                ExperimentRef(
                    id=e.experiment_id,
                    name=e.name,
                    deleted=e.lifecycle_stage == LifecycleStage.DELETED,
                )
                for e in page
            ]
            token = page.token
            if not token:
                return found

    @_reachable
    def search_runs(self, experiment_ids: Sequence[str], filter_string: str) -> list[RunDetails]:
        found: list[RunDetails] = []
        token = None
        while experiment_ids:
            page = self._client.search_runs(
                list(experiment_ids), filter_string, max_results=1000, page_token=token
            )
            for run in page:
                info, data = run.info, run.data
                found.append(
                    RunDetails(
                        id=info.run_id,
                        experiment_id=info.experiment_id,
                        name=info.run_name,
                        status=RunStatus(info.status),
                        start_time=info.start_time,
                        end_time=info.end_time,
                        tags=dict(data.tags),
                        params=dict(data.params),
                        metric_keys=tuple(sorted(data.metrics)),
                    )
                )
            token = page.token
            if not token:
                break
        return found

    @_reachable
    def create_run(
        self,
        *,
        experiment_id: str,
        name: str | None,
        start_time: int | None,
        tags: Mapping[str, str],
    ) -> RunRef:
        run = self._client.create_run(
            experiment_id, start_time=start_time, tags=dict(tags), run_name=name
        )
        return RunRef(id=run.info.run_id, experiment_id=experiment_id, name=run.info.run_name)

    @_reachable
    def artifact_files(self, run_id: str) -> list[ArtifactFile]:
        files: list[ArtifactFile] = []
        folders: list[str | None] = [None]
        while folders:
            for entry in self._client.list_artifacts(run_id, folders.pop()):
                if entry.is_dir:
                    folders.append(entry.path)
                else:
                    files.append(ArtifactFile(path=entry.path, size=entry.file_size))
        return sorted(files, key=lambda f: f.path)

    @_reachable
    def download_artifact(self, run_id: str, path: str, dst_dir: str) -> str:
        return str(self._client.download_artifacts(run_id, path, dst_dir))


# ---------------------------------------------------------------------------- artifact download
# For trackcfg.kedro.datasets (an artifact dataset loading from a run).  A function of its own,
# not part of the Backend protocol: sessions never download.


@_reachable
def _download(backend: MlflowBackend, run_id: str, artifact_path: str, dst_path: str) -> str:
    return str(backend._client.download_artifacts(run_id, artifact_path, dst_path))


def download_artifacts(
    tracking_uri: str, registry_uri: str | None, run_id: str, artifact_path: str, dst_path: str
) -> str:
    """Download the artifact file or folder ``artifact_path`` of run ``run_id`` into the
    existing folder ``dst_path``; its local path.  A run or artifact that is not there is a
    ``RunError`` naming both."""
    backend = MlflowBackend(tracking_uri, registry_uri)
    try:
        return _download(backend, run_id, artifact_path, dst_path)
    except (MlflowException, OSError) as exc:
        if isinstance(exc, TrackingUnavailableError):
            raise
        detail = exc.message if isinstance(exc, MlflowException) else type(exc).__name__
        raise RunError(
            f"cannot download artifact {artifact_path!r} of run {run_id} from "
            f"{mask_uri(tracking_uri)}: {detail}"
        ) from None
    finally:
        backend.close()


@_reachable
def _metric_keys(backend: MlflowBackend, run_id: str) -> list[str]:
    return sorted(backend._client.get_run(run_id).data.metrics)


def metric_keys(tracking_uri: str, registry_uri: str | None, run_id: str) -> list[str]:
    """The keys of the metrics run ``run_id`` holds (``RunError`` when there is no such run)."""
    backend = MlflowBackend(tracking_uri, registry_uri)
    try:
        return _metric_keys(backend, run_id)
    except MlflowException as exc:
        raise RunError(
            f"cannot read run {run_id} in {mask_uri(tracking_uri)}: {exc.message}"
        ) from None
    finally:
        backend.close()


# ---------------------------------------------------------------------------- models


def flavor_module(flavor: str) -> Any:
    """The MLflow flavor module at import path ``flavor``; ``ValueError`` saying why not."""
    import importlib

    try:
        module = importlib.import_module(flavor)
    except ImportError as exc:
        raise ValueError(
            f"the model flavor {flavor!r} cannot be imported ({exc}); give an MLflow flavor "
            "module such as mlflow.sklearn or mlflow.pyfunc, or install its library"
        ) from None
    if not callable(getattr(module, "load_model", None)):
        raise ValueError(f"{flavor!r} is not an MLflow model flavor: it has no load_model")
    return module


def _model_error(action: str, exc: MlflowException) -> RunError:
    return RunError(f"cannot {action}: {exc.message}")


def log_model(
    flavor: str, model: Any, args: Mapping[str, Any], pyfunc_workflow: str | None
) -> ModelRef:
    module = flavor_module(flavor)
    kwargs = dict(args)
    try:
        if pyfunc_workflow is not None and flavor == "mlflow.pyfunc":
            kwargs[pyfunc_workflow] = model
            info = module.log_model(**kwargs)
        else:
            info = module.log_model(model, **kwargs)
    except MlflowException as exc:
        raise _model_error(f"log the {flavor} model", exc) from None
    return ModelRef(
        model_uri=str(info.model_uri),
        model_id=getattr(info, "model_id", None),
        run_id=getattr(info, "run_id", None),
        name=getattr(info, "name", None),
    )


def save_model(
    flavor: str, model: Any, path: str, args: Mapping[str, Any], pyfunc_workflow: str | None
) -> None:
    module = flavor_module(flavor)
    kwargs = dict(args)
    try:
        if pyfunc_workflow is not None and flavor == "mlflow.pyfunc":
            kwargs[pyfunc_workflow] = model
            module.save_model(path, **kwargs)
        else:
            module.save_model(model, path, **kwargs)
    except MlflowException as exc:
        raise _model_error(f"save the {flavor} model in {path}", exc) from None


def load_model(flavor: str, model_uri: str, args: Mapping[str, Any]) -> Any:
    module = flavor_module(flavor)
    try:
        return module.load_model(model_uri, **dict(args))
    except MlflowException as exc:
        raise _model_error(f"load the model {mask_uri(model_uri)}", exc) from None
