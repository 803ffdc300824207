"""The CLI's deliberate probes: what ``trackcfg check`` asks of the store, and how.

* ``http_lookup``: one HTTP GET on the server's own REST paths (``experiments/get-by-name``,
  ``runs/get``), with MLflow's client authentication variables and TLS settings;
* ``tcp_reachable``: whether a database's host and port accept a connection;
* ``sqlite_tables``: the tables of an SQLite store, opened read-only;
* ``writable``: whether a local store's folder takes a file (a real, temporary write);
* ``backend_lookup``: the experiment or run looked up through MLflow (``_backend``), for local
  and database stores only, once the probes above found them there.

They bound every request by ``--timeout`` and bypass MLflow's retry loop: a server that does
not answer is reported after ``--timeout`` seconds, not after minutes of retries.  Nothing is
created or changed.  The network, SQLite and temporary-file modules are imported by the
probes that use them, not when the CLI starts.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from trackcfg import _backend
from trackcfg._backend import ExperimentRef, RunRef, RunStatus
from trackcfg._env import exported
from trackcfg._store import StoreLocation

from ._common import DB_PORTS, CheckItem, Status, display_path, mask_uri

if TYPE_CHECKING:
    import ssl

__all__ = [
    "Lookup",
    "backend_lookup",
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
    location: StoreLocation, env: Mapping[str, str], experiment: str | None, run_id: str | None
) -> Lookup:
    """Ask the store through MLflow itself: used for local and database stores only, which
    answer without MLflow's long HTTP retry loop."""
    variables = dict(env)
    if location.legacy_file_store:
        variables["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        with exported(variables):
            backend = _backend.open_backend(location.tracking_uri)
            try:
                if run_id is not None:
                    return Lookup(run=backend.get_run(run_id))
                assert experiment is not None
                return Lookup(experiment=backend.get_experiment(experiment))
            finally:
                backend.close()
    except Exception as exc:  # the store's own error is the news: report it, do not crash
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Lookup(error=message)


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
        return _HttpAnswer(None, None, time.monotonic() - started, str(exc))
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
    if run_id is not None:
        query = urllib.parse.urlencode({"run_id": run_id})
        url = f"{base}/api/2.0/mlflow/runs/get?{query}"
    else:
        query = urllib.parse.urlencode({"experiment_name": experiment or ""})
        url = f"{base}/api/2.0/mlflow/experiments/get-by-name?{query}"
    shown = mask_uri(base)
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


def tcp_reachable(uri: str, timeout: float) -> CheckItem:
    """Whether the database's host and port accept a connection within ``timeout``."""
    import socket

    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.split("+")[0]
    shown = mask_uri(uri)
    try:
        host, port = parts.hostname, parts.port or DB_PORTS.get(scheme)
    except ValueError as exc:
        return CheckItem(Status.FAIL, "store", f"{shown}: {exc}", "fix server.mlflow_tracking_uri")
    if not host or not port:
        return CheckItem(Status.SKIP, "store", f"{shown}: no host and port to try")
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        return CheckItem(
            Status.FAIL,
            "store",
            f"{host}:{port} not reachable: {reason} (waited {time.monotonic() - started:.1f} s)",
            "start the database, or fix server.mlflow_tracking_uri",
        )
    return CheckItem(Status.OK, "store", f"{host}:{port} accepts connections ({shown})")
