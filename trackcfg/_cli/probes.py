"""The CLI's deliberate probes: what ``trackcfg check`` asks of the store, and how.

* ``http_lookup``: one HTTP GET on the server's own REST paths (``experiments/get-by-name``,
  ``runs/get``), with MLflow's client authentication variables and TLS settings;
* ``tcp_reachable``: whether a database's host and port accept a connection and answer like
  the database (PostgreSQL: its answer to an SSL request; MySQL: its greeting);
* ``sqlite_tables``: the tables of an SQLite store, opened read-only;
* ``writable``: whether a local store's folder takes a file (a real, temporary write);
* ``database_tables``: the tables of a database store, listed through its driver;
* ``backend_lookup``: the experiment or run looked up through MLflow (``_backend``), for local
  and database stores only, once the probes above found them there.

They bound every request by ``--timeout`` and bypass MLflow's retry loop: a server that does
not answer is reported after ``--timeout`` seconds, not after minutes of retries.  A
database is asked through its driver first (``database_tables``: a login and a table
listing, bounded by ``--timeout``), and through MLflow only once it answered and holds
MLflow's tables: MLflow retries creating its engine ten times over about two minutes, and
sets an empty database up, which check must not do.  Nothing is created or changed.  The
network, SQLite, SQLAlchemy, threading and temporary-file modules are imported by the probes
that use them, not when the CLI starts.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from trackcfg import _backend
from trackcfg._backend import ExperimentRef, RunDetails, RunRef, RunStatus
from trackcfg._env import exported
from trackcfg._rules import key_filter
from trackcfg._store import StoreLocation, mask_text, with_connect_timeout

from ._common import DB_PORTS, CheckItem, Status, display_path, mask_uri

if TYPE_CHECKING:
    import ssl

__all__ = [
    "Lookup",
    "backend_lookup",
    "database_tables",
    "http_lookup",
    "sqlite_tables",
    "tcp_reachable",
    "writable",
]


@attrs.frozen
class Lookup:
    """What the store says about the experiment (or the run): ``None`` when it holds no such
    thing; ``error`` when it could not be asked."""

    experiment: ExperimentRef | None = None
    run: RunRef | None = None
    error: str | None = None
    keyed: tuple[RunDetails, ...] | None = None
    """The experiment's runs tagged with ``tracking.run.key`` (None: not looked up)."""


# --------------------------------------------------------------------------------------------
# Local stores.


def writable(folder: Path) -> CheckItem | None:
    """None when ``folder`` exists and takes a file, or can be created; else the failure."""
    import tempfile

    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    shown = display_path(folder)
    if not probe.is_dir():
        return CheckItem(
            Status.FAIL,
            "store",
            f"{display_path(probe)} is not a folder, so {shown} cannot be used",
            "point server.mlflow_tracking_uri at a folder",
        )
    try:
        # A real write: os.access() says yes to root even on a read-only file system.
        with tempfile.TemporaryFile(dir=probe, prefix=".trackcfg-check-"):
            pass
    except OSError as exc:
        return CheckItem(
            Status.FAIL,
            "store",
            f"cannot write in {display_path(probe)}: {exc.strerror}",
            "make the folder writable, or point server.mlflow_tracking_uri elsewhere",
        )
    return None


def sqlite_tables(db: Path) -> set[str] | CheckItem:
    """The table names of an existing SQLite file, read-only (the store is left as it is)."""
    import sqlite3

    try:
        connection = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=2)
        try:
            rows = connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
            return {str(row[0]) for row in rows}
        finally:
            connection.close()
    except sqlite3.Error as exc:
        return CheckItem(
            Status.FAIL,
            "store",
            f"{display_path(db)} does not open as an SQLite database: {exc}",
            "move the file away, or point server.mlflow_tracking_uri at another store",
        )


# --------------------------------------------------------------------------------------------
# Through MLflow (local and database stores).


def backend_lookup(
    location: StoreLocation,
    env: Mapping[str, str],
    experiment: str | None,
    run_id: str | None,
    timeout: float | None = None,
    key: str | None = None,
) -> Lookup:
    """Ask the store through MLflow itself: used for local and database stores only, which
    answer without MLflow's long HTTP retry loop.

    ``timeout``: the store is a database, asked first through its driver (``database_tables``:
    one login and a table listing, given up after ``timeout``), and through MLflow only when
    it holds MLflow's tables; MLflow's connections get the driver's connect timeout."""
    variables = dict(env)
    if location.legacy_file_store:
        variables["MLFLOW_ALLOW_FILE_STORE"] = "true"
    with exported(variables):
        if timeout is None:
            return _ask(location.tracking_uri, experiment, run_id, key)
        uri = with_connect_timeout(location.tracking_uri, math.ceil(timeout))
        tables = database_tables(uri, timeout)
        if isinstance(tables, str):
            return Lookup(error=tables)
        if "experiments" not in tables:
            # Empty: MLflow sets it up at the first run (as for SQLite); MLflow's lookup would
            # set it up now, for seconds, which check must not do.
            return Lookup()
        return _ask(uri, experiment, run_id, key)


def _ask(uri: str, experiment: str | None, run_id: str | None, key: str | None) -> Lookup:
    """``key``: also the experiment's runs tagged with it (``tracking.run.resume``)."""
    try:
        backend = _backend.open_backend(uri)
        try:
            if run_id is not None:
                return Lookup(run=backend.get_run(run_id))
            assert experiment is not None
            found = backend.get_experiment(experiment)
            keyed = None
            if key is not None:
                ids = [found.id] if found is not None else []
                keyed = tuple(backend.search_runs(ids, key_filter(key)) if ids else ())
            return Lookup(experiment=found, keyed=keyed)
        finally:
            backend.close()
    except Exception as exc:  # the store's own error is the news: report it, do not crash
        return Lookup(error=_first_line(exc))


def _first_line(exc: BaseException) -> str:
    text = mask_text(str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def database_tables(uri: str, timeout: float) -> set[str] | str:
    """The table names of a database store (SQLAlchemy and the URI's driver, no MLflow, no
    retries), or why they could not be listed: one login and one catalog query, given up
    after ``timeout`` seconds.  ``uri`` carries the driver's connect timeout
    (``with_connect_timeout``), so the login ends by itself too.

    The listing runs in a daemon thread, left behind if the database hangs after the login
    (the command ends soon after; the thread dies with the process)."""
    import threading

    import sqlalchemy
    from sqlalchemy.pool import NullPool

    def list_tables() -> set[str] | str:
        try:
            engine = sqlalchemy.create_engine(uri, poolclass=NullPool)
            try:
                with engine.connect() as connection:
                    return set(sqlalchemy.inspect(connection).get_table_names())
            finally:
                engine.dispose()
        except Exception as exc:  # the driver's own error is the news
            return _first_line(exc)

    answers: list[set[str] | str] = []
    worker = threading.Thread(
        target=lambda: answers.append(list_tables()), name="trackcfg-check-tables", daemon=True
    )
    started = time.monotonic()
    worker.start()
    # A second more than the login's own timeout: its message ("timeout expired") is the
    # better one; this one is for a database that hangs after the login.
    worker.join(timeout + 1)
    if answers:
        return answers[0]
    return (
        f"no answer to a table listing within --timeout {timeout:g} "
        f"(waited {time.monotonic() - started:.1f} s)"
    )


# --------------------------------------------------------------------------------------------
# http(s) tracking servers.


def _http_headers(env: Mapping[str, str]) -> dict[str, str]:
    """MLflow's own client authentication variables, from the credentials entry or env."""
    headers = {"Accept": "application/json", "User-Agent": "trackcfg-check"}
    token = env.get("MLFLOW_TRACKING_TOKEN")
    user, password = env.get("MLFLOW_TRACKING_USERNAME"), env.get("MLFLOW_TRACKING_PASSWORD")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    elif user and password:
        pair = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {pair}"
    return headers


def _ssl_context(env: Mapping[str, str]) -> ssl.SSLContext:
    import ssl

    if env.get("MLFLOW_TRACKING_INSECURE_TLS", "").strip().lower() in ("1", "true", "yes"):
        context = ssl._create_unverified_context()
    else:
        context = ssl.create_default_context(cafile=env.get("MLFLOW_TRACKING_SERVER_CERT_PATH"))
    return context


@attrs.frozen
class _HttpAnswer:
    status: int | None
    body: dict[str, Any] | None
    seconds: float
    error: str | None = None


def _http_get(
    url: str, env: Mapping[str, str], timeout: float, extra: Mapping[str, str] | None = None
) -> _HttpAnswer:
    """One GET, no retries: an answer, or the reason there is none, within ``timeout``."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={**_http_headers(env), **(extra or {})})
    started = time.monotonic()
    status: int | None = None
    raw = b""
    try:
        with urllib.request.urlopen(
            request, timeout=timeout, context=_ssl_context(env)
        ) as response:
            status = int(response.status)
            raw = response.read()
    except urllib.error.HTTPError as exc:
        status = int(exc.code)
        with contextlib.suppress(OSError):
            raw = exc.read()
    except urllib.error.URLError as exc:
        reason = exc.reason
        text = "no answer" if isinstance(reason, TimeoutError) else str(reason)
        return _HttpAnswer(None, None, time.monotonic() - started, text)
    except TimeoutError:
        return _HttpAnswer(None, None, time.monotonic() - started, "no answer")
    except OSError as exc:
        return _HttpAnswer(None, None, time.monotonic() - started, mask_text(str(exc)))
    body: dict[str, Any] | None = None
    with contextlib.suppress(ValueError):
        parsed = json.loads(raw.decode("utf-8", "replace")) if raw else None
        body = parsed if isinstance(parsed, dict) else None
    return _HttpAnswer(status, body, time.monotonic() - started)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _experiment_ref(experiment: dict[str, Any], name: str | None) -> ExperimentRef:
    """An ``experiments/get-by-name`` answer's ``experiment`` object."""
    return ExperimentRef(
        id=str(experiment.get("experiment_id")),
        name=str(experiment.get("name", name)),
        deleted=experiment.get("lifecycle_stage") == "deleted",
    )


def _run_ref(run: dict[str, Any], run_id: str) -> RunRef:
    """A ``runs/get`` answer's ``run`` object."""
    info, data = _dict(run.get("info")), _dict(run.get("data"))
    params = data.get("params")
    statuses = {status.value: status for status in RunStatus}
    run_name = info.get("run_name")
    return RunRef(
        id=str(info.get("run_id", run_id)),
        experiment_id=str(info.get("experiment_id")),
        name=str(run_name) if run_name is not None else None,
        status=statuses.get(str(info.get("status")), RunStatus.RUNNING),
        deleted=info.get("lifecycle_stage") == "deleted",
        params={
            str(p.get("key")): str(p.get("value"))
            for p in (params if isinstance(params, list) else [])
            if isinstance(p, dict)
        },
    )


def http_lookup(
    uri: str,
    env: Mapping[str, str],
    experiment: str | None,
    run_id: str | None,
    timeout: float,
    extra: Mapping[str, str] | None = None,
) -> tuple[CheckItem, CheckItem | None, Lookup | None]:
    """One REST call answers three questions: reachable? credentials accepted? found?"""
    base = uri.rstrip("/")
    parts = urllib.parse.urlsplit(base)
    if parts.username is not None:
        # urllib takes user:password@host for a host name: the URL goes without them, and
        # they are sent as requests (MLflow's client) sends them: Basic authentication.
        host = parts.netloc.rpartition("@")[2]
        base = urllib.parse.urlunsplit(parts._replace(netloc=host))
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        pair = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        if "Authorization" not in _http_headers(env):  # MLflow's variables win, as in requests
            extra = {"Authorization": f"Basic {pair}", **(extra or {})}
    if run_id is not None:
        query = urllib.parse.urlencode({"run_id": run_id})
        url = f"{base}/api/2.0/mlflow/runs/get?{query}"
    else:
        query = urllib.parse.urlencode({"experiment_name": experiment or ""})
        url = f"{base}/api/2.0/mlflow/experiments/get-by-name?{query}"
    shown = mask_uri(uri.rstrip("/"))
    answer = _http_get(url, env, timeout, extra)
    if answer.status is None:
        return (
            CheckItem(
                Status.FAIL,
                "store",
                f"{shown} not reachable: {answer.error} (waited {answer.seconds:.1f} s, "
                f"--timeout {timeout:g})",
                "start the server, or fix server.mlflow_tracking_uri",
            ),
            None,
            None,
        )
    body = answer.body or {}
    reached = CheckItem(Status.OK, "store", f"{shown} answers ({answer.seconds:.2f} s)")
    if answer.status in (401, 403):
        return (
            reached,
            CheckItem(
                Status.FAIL,
                "credentials",
                f"the server refused them (HTTP {answer.status})",
                "name an entry holding MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD, in server.credentials",
            ),
            None,
        )
    if answer.status == 200 and run_id is not None and isinstance(body.get("run"), dict):
        return reached, None, Lookup(run=_run_ref(body["run"], run_id))
    if answer.status == 200 and run_id is None and isinstance(body.get("experiment"), dict):
        return reached, None, Lookup(experiment=_experiment_ref(body["experiment"], experiment))
    if answer.status in (400, 404) and body.get("error_code") in (
        "RESOURCE_DOES_NOT_EXIST",
        "INVALID_PARAMETER_VALUE",
    ):
        return reached, None, Lookup()
    return (
        CheckItem(
            Status.FAIL,
            "store",
            f"{shown} answered HTTP {answer.status}, not like an MLflow tracking server",
            "fix server.mlflow_tracking_uri (the server's base URL, without /api/...)",
        ),
        None,
        None,
    )


# --------------------------------------------------------------------------------------------
# Databases.


#: What each database says first, asked for in the way that logs nothing on its side:
#: PostgreSQL answers an SSL request ("S" or "N", one byte) before any login; MySQL greets
#: every connection unasked.  MSSQL waits for a login packet: only its port is tried.
_POSTGRES_SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")
_FIRST_WORDS: dict[str, bytes] = {"postgresql": _POSTGRES_SSL_REQUEST, "mysql": b""}
_DB_NAMES = {"postgresql": "PostgreSQL", "mysql": "MySQL", "mssql": "SQL Server"}


def tcp_reachable(uri: str, timeout: float) -> CheckItem:
    """Whether the database's host and port accept a connection, and the database answers
    on it, within ``timeout`` seconds in all: a server that takes the connection and never
    answers would hold the lookup through MLflow for minutes."""
    import socket

    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.split("+")[0]
    shown = mask_uri(uri)
    try:
        host, port = parts.hostname, parts.port or DB_PORTS.get(scheme)
    except ValueError as exc:
        return CheckItem(
            Status.FAIL,
            "store",
            f"{shown}: {mask_text(str(exc))}",
            "fix server.mlflow_tracking_uri",
        )
    if not host or not port:
        return CheckItem(Status.SKIP, "store", f"{shown}: no host and port to try")
    started = time.monotonic()
    try:
        connection = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        return CheckItem(
            Status.FAIL,
            "store",
            f"{host}:{port} not reachable: {reason} (waited {time.monotonic() - started:.1f} s)",
            "start the database, or fix server.mlflow_tracking_uri",
        )
    first_words = _FIRST_WORDS.get(scheme)
    if first_words is None:
        connection.close()
        return CheckItem(Status.OK, "store", f"{host}:{port} accepts connections ({shown})")
    with connection:
        silence = _silence(connection, first_words, started + timeout)
    waited = time.monotonic() - started
    name = _DB_NAMES.get(scheme, scheme)
    if silence is not None:
        return CheckItem(
            Status.FAIL,
            "store",
            f"{host}:{port} accepts connections but does not answer as {name} does: "
            f"{silence} (waited {waited:.1f} s, --timeout {timeout:g})",
            f"check that the {name} server is up and not overloaded, and that "
            "server.mlflow_tracking_uri names its host and port",
        )
    return CheckItem(Status.OK, "store", f"{host}:{port} answers as {name} ({shown})")


def _silence(connection: Any, first_words: bytes, deadline: float) -> str | None:
    """``None`` when the server on ``connection`` says something (after ``first_words``)
    before ``deadline``; else why it did not."""
    try:
        connection.settimeout(max(deadline - time.monotonic(), 0.01))
        if first_words:
            connection.sendall(first_words)
        if connection.recv(1):
            return None
        return "it closed the connection without a word"
    except TimeoutError:
        return "no answer"
    except OSError as exc:
        return exc.strerror or str(exc)
