"""MLflow's errors translated into trackcfg's, at the door: by exception type, MLflow error
code or HTTP status, never by message text, with every URI masked.

Why a server was not reached is named from a table of causes (``_causes``), looked up along
the exception's chain in order of precedence: TLS, refused, name not resolved, unreachable
network, timed out, closed."""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import attrs
import requests
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import ErrorCode

from trackcfg._sqlite_locks import locked_store_error, sqlite_busy
from trackcfg._store import mask_text, mask_uri, one_line
from trackcfg.exceptions import CredentialsError, RunError, ServerError, TrackingUnavailableError

__all__ = [
    "artifact_refused",
    "code_of",
    "drop_interrupted",
    "http_status",
    "network_cause",
    "reachable",
]

F = TypeVar("F", bound=Callable[..., Any])


def code_of(exc: MlflowException) -> int:
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


def network_cause(exc: BaseException) -> BaseException | None:
    """The requests error behind an MlflowException, if the server was not reached.

    MLflow wraps transport failures in a plain MlflowException (error code INTERNAL_ERROR,
    like a server-side failure), chaining the requests exception; the chain tells them apart.
    An ``HTTPError`` is not one: the server answered, with an error status.
    """
    for current in _chain(exc):
        if isinstance(current, requests.exceptions.HTTPError):
            return None
        if isinstance(current, requests.exceptions.RequestException):
            return current
    return None


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
    answered: bool = False
    """The server answered every try, with an error status (``ServerError``)."""


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


def _tls_detail(exc: BaseException) -> str:
    detail = getattr(exc, "verify_message", None) or getattr(exc, "reason", None)
    return str(detail or type(exc).__name__)


def _net_unreachable(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH)


@attrs.frozen
class _Cause:
    """One row of the table: which exceptions in the chain it names, what it says (``{server}``
    stands for the masked URI, ``{where}`` for host:port, ``{host}``, ``{detail}``), the fix,
    and whether the error chains from that exception (else from the deepest one)."""

    matches: Callable[[BaseException], bool]
    what: str
    fix: str
    chain_from_match: bool = True
    detail: Callable[[BaseException], str] = lambda exc: type(exc).__name__
    answered: bool = False
    """The server answered, with an error status each time (``ServerError``)."""


def _answered_500(exc: BaseException) -> bool:
    """urllib3 gave up on HTTP 500, every try: the server answered that it fails on this
    request.  Not a 502, 503 or 504 (a proxy in front of a server that is down: unreachable).
    urllib3 keeps the status only in its ``ResponseError``'s text, written from that class's
    own template, which is compared whole (not searched)."""
    from urllib3.exceptions import ResponseError

    template: str = ResponseError.SPECIFIC_ERROR
    return isinstance(exc, ResponseError) and str(exc) == template.format(status_code=500)


def _types(*types: type[BaseException]) -> Callable[[BaseException], bool]:
    return lambda exc: isinstance(exc, types)


# Why a connection failed, named from the exception types in its chain, never from message
# text.  Rows are in tiers of precedence: the first tier with a row matching anywhere in the
# chain wins (a TLS failure wrapped in a closed connection is a TLS failure); within a tier,
# the exception nearest the top of the chain.  Built once, on first use (urllib3's types).
@functools.cache
def _causes() -> tuple[tuple[_Cause, ...], ...]:
    import ssl

    import urllib3.exceptions as u3

    return (
        (
            _Cause(
                _types(ssl.SSLError),
                "the TLS handshake with tracking server {server} failed ({detail})",
                "check the scheme (http or https) of server.mlflow_tracking_uri and the "
                "server's certificate (MLFLOW_TRACKING_SERVER_CERT_PATH, or "
                "MLFLOW_TRACKING_INSECURE_TLS, in the server.credentials entry)",
                detail=_tls_detail,
            ),
        ),
        (
            _Cause(
                _types(ConnectionRefusedError),
                "tracking server {server} refused the connection (nothing listens on {where})",
                "start the server, or fix the host and port in server.mlflow_tracking_uri",
            ),
            _Cause(
                _types(socket.gaierror, u3.NameResolutionError),
                "the host name {host!r} of tracking server {server} could not be resolved",
                "fix the host in server.mlflow_tracking_uri, or check the DNS and the network",
            ),
            _Cause(
                _net_unreachable,
                "tracking server {server} is unreachable from here ({detail})",
                "check the network (VPN, proxy settings) and server.mlflow_tracking_uri",
                detail=lambda exc: os.strerror(getattr(exc, "errno", 0) or 0).lower(),
            ),
        ),
        (
            _Cause(
                _types(u3.ConnectTimeoutError, requests.exceptions.ConnectTimeout),
                "tracking server {server} did not accept a connection in time (timed out)",
                f"check that it is running and reachable, {_RETRY_FIX}",
                chain_from_match=False,
            ),
            _Cause(
                _types(TimeoutError, u3.TimeoutError, requests.exceptions.Timeout),
                "tracking server {server} did not answer in time (timed out)",
                f"check that it is running and not overloaded, {_RETRY_FIX}",
                chain_from_match=False,
            ),
        ),
        (
            _Cause(  # urllib3's retries on HTTP 500 ran out: the server answers, and fails
                _answered_500,
                "tracking server {server} answered every try with an error status ({detail})",
                "it is up but fails this request: its log says why",
                detail=str,
                answered=True,
            ),
        ),
        (
            _Cause(
                _types(ConnectionError, u3.ProtocolError),
                "tracking server {server} closed the connection without an answer ({detail})",
                f"check that it is an MLflow server and running, {_RETRY_FIX}",
                chain_from_match=False,
            ),
        ),
    )


def _unreachable(tracking_uri: str, error: BaseException, *, retried: bool) -> _Unreachable:
    """Name the cause of a failed connection from the table of causes (``_causes``)."""
    chain = _chain(error)
    root = chain[-1]
    for tier in _causes():
        for current in chain:
            for cause in tier:
                if cause.matches(current):
                    what = cause.what.format(
                        server="{server}",
                        where=_where(tracking_uri),
                        host=(_host_port(tracking_uri) or ("?", 0))[0],
                        detail=cause.detail(current),
                    )
                    return _Unreachable(
                        what,
                        cause.fix,
                        current if cause.chain_from_match else root,
                        retried,
                        answered=cause.answered,
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
    if why.answered:
        return ServerError(f"{text}; {fix}")
    return TrackingUnavailableError(f"{text}; {fix}")


# A TCP connect that takes longer than this at session start is left to MLflow's own budget.
_PRECHECK_SECONDS = 1.0


def _precheck(tracking_uri: str) -> _Unreachable | None:
    """At session start, one TCP connect to the server: a refused connection, a host name that
    does not resolve or an unreachable network is reported at once, instead of after MLflow's
    retries with backoff (10-35 s with the defaults) for an answer that cannot come.  Anything
    else (connected, timed out) goes on to the first request.  Skipped where requests would
    go through a proxy (the proxy, not the server, is what the client connects to)."""
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


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of a server's refusal: from MLflow's error code (which MLflow derives
    from the status), or from a requests ``HTTPError`` (MLflow's artifact client)."""
    if isinstance(exc, MlflowException):
        status: Any = exc.get_http_status_code  # untyped in MLflow
        return int(status())
    if isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None:
        return int(exc.response.status_code)
    return None


def _answer_text(response: requests.Response | None, limit: int = 300) -> str:
    """What a server said with its error status, on one line, masked and cut to ``limit``
    characters: MLflow's JSON ``message``, or the body's text."""
    if response is None:
        return ""
    try:
        text = response.text
        body = json.loads(text) if text.lstrip().startswith("{") else None
    except (ValueError, RuntimeError):
        return ""
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        text = body["message"]
    return one_line(mask_text(text), limit)


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


_STORE_MODULES = ("mlflow.", "sqlalchemy.", "sqlite3")


def drop_interrupted(exc: BaseException | None) -> None:
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


def reachable(method: F) -> F:
    """Translate what stops a backend call at the door, by exception type, MLflow error code
    or HTTP status (never by message text), with the URI's password masked:

    - the server not reached → ``TrackingUnavailableError`` naming the cause (refused, name
      not resolved, unreachable, TLS, timed out); at the backend's first call a TCP connect
      reports the definite ones at once (``_precheck``);
    - HTTP 401/403 → ``RunError`` pointing at ``server.credentials``;
    - the SQLite file locked past MLflow's wait → ``TrackingUnavailableError`` naming who
      holds the lock (``locked_store_error``);
    - an interrupt (Ctrl-C, SIGTERM, ``sys.exit()``) in the middle of a call: what the call
      held is let go (``drop_interrupted``) before it propagates.
    """

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not self._prechecked:
            self._prechecked = True
            early = _precheck(self.tracking_uri)
            if early is not None:
                raise _unavailable(self.tracking_uri, early) from early.root
        try:
            return method(self, *args, **kwargs)
        except (MlflowException, requests.exceptions.RequestException) as exc:
            status = http_status(exc)
            if status in (401, 403):
                assert status is not None
                # A requests HTTPError's text holds the whole URL, credentials included.
                raise _refused_credentials(self.tracking_uri, status) from (
                    exc if isinstance(exc, MlflowException) else None
                )
            if sqlite_busy(exc):
                raise locked_store_error(self.tracking_uri) from exc
            if isinstance(exc, requests.exceptions.HTTPError):  # MLflow's artifact client
                # Its text holds the whole URL, credentials included: not chained.
                said = _answer_text(exc.response)
                raise RunError(
                    f"tracking server {mask_uri(self.tracking_uri)} answered HTTP {status} to "
                    f"{method.__name__}" + (f": {said}" if said else "; see the server's log")
                ) from None
            cause = network_cause(exc)
            if cause is None:
                raise
            why = _unreachable(self.tracking_uri, cause, retried=True)
            raise _unavailable(self.tracking_uri, why) from why.root
        except BaseException as exc:
            drop_interrupted(exc)  # Ctrl-C, SIGTERM, sys.exit() in the middle of a call
            raise

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def artifact_refused(run_id: str, where: str) -> Iterator[None]:
    """A path the store refused (MLflow's INVALID_PARAMETER_VALUE; an artifact server's HTTP
    400, as MLflow's artifact client reports it) as a ``RunError`` naming it.  The session
    refuses the paths it knows to be wrong before sending; this is for the store's own rules.
    """
    try:
        yield
    except (MlflowException, requests.exceptions.HTTPError) as exc:
        if http_status(exc) != 400 or network_cause(exc) is not None:
            raise
        detail = exc.message if isinstance(exc, MlflowException) else "HTTP 400"
        # A requests HTTPError's text holds the whole URL, credentials included.
        raise RunError(
            f"the store refused artifact {where!r} of run {run_id} ({detail}); use a relative "
            "path inside the run's artifacts, without '..', '#' or a leading '/'"
        ) from (exc if isinstance(exc, MlflowException) else None)
