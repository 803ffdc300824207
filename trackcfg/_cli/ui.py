"""``trackcfg ui``: the MLflow UI of the configured store, on the configured experiment.

For a local or database store, ``python -m mlflow server`` runs as a child process (its own
process group) until Ctrl-C, SIGTERM or SIGHUP; for an http(s) server, its URL is shown once
the server answers.  The URL printed is the experiment's runs page
(``<base>/#/experiments/<id>/runs``) when the store holds the experiment, else MLflow's home
page, and a note says why.  ``serve_ui`` is shared with ``kedro trackcfg ui``.

The experiment is looked up before the server starts: through ``_backend`` (the door to
MLflow, as ``trackcfg check`` does) for local and database stores, with one bounded REST call
(``probes.http_lookup``) for an http(s) server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import attrs
import click

from trackcfg._backend import ExperimentRef
from trackcfg._config import TrackingConfig
from trackcfg._connect import plan_store
from trackcfg._store import StoreLocation

from ._common import (
    DB_PORTS,
    CheckItem,
    Status,
    display_path,
    experiment_name,
    mask_uri,
    project_root,
)
from .commands import UI_PROBE_TIMEOUT
from .probes import backend_lookup, http_lookup, sqlite_tables, tcp_reachable

if TYPE_CHECKING:
    import subprocess

__all__ = ["serve_ui"]

UI_START_TIMEOUT = 180.0
UI_STOP_TIMEOUT = 15.0
DEFAULT_UI_HOST = "127.0.0.1"
HOME_PAGE_NOTE = "so the URL below is MLflow's home page"


class _Stop(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP, handled like Ctrl-C: stop the server and exit 0."""


@attrs.define
class _StopSignals:
    """Ctrl-C (SIGINT), SIGTERM and SIGHUP raise ``_Stop`` while ``installed()``.

    SIGINT gets a handler of its own because a process started with SIGINT ignored (a
    background job: ``trackcfg ui &`` in a script) keeps ignoring it, and nothing else would
    stop the server.  SIGHUP (the terminal closed) too, unless it is ignored on purpose
    (``nohup``): the server runs in its own session and would be left behind.  Once stopping
    has begun, further signals are ignored, so that a second Ctrl-C (or a supervisor's SIGTERM
    right after its SIGINT, as nox sends) cannot cut the server's shutdown short.
    """

    stopping: bool = False

    def _on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        if self.stopping:
            return
        self.stopping = True
        raise _Stop

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach the main thread only; its handlers stay as they are
            return
        wanted = [signal.SIGINT, signal.SIGTERM]
        hangup = getattr(signal, "SIGHUP", None)
        if hangup is not None and signal.getsignal(hangup) is not signal.SIG_IGN:
            wanted.append(hangup)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in wanted}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _bind_probe(host: str, port: int) -> int:
    """Bind ``host:port`` for a moment (port 0: any free one) and return the port.

    Done before starting the server, so that another server already on the port cannot
    answer the health poll in its place.
    """
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise click.ClickException(
                f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port "
                "(or ui.port), or --host (or ui.host)"
            ) from exc
        bound: int = sock.getsockname()[1]
        return bound


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _browser_available() -> bool:
    if os.environ.get("BROWSER"):
        return True
    if sys.platform.startswith("linux") or "bsd" in sys.platform:
        # Without a display, webbrowser falls back to console browsers that take over the
        # terminal (and wait): not what a server command should do.
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def _open_browser(url: str) -> None:
    import webbrowser

    if not _browser_available():
        click.echo("no browser available; open the URL yourself", err=True)
        return
    try:
        opened = webbrowser.open_new_tab(url)
    except webbrowser.Error:
        opened = False
    if not opened:
        click.echo("could not open a browser; open the URL yourself", err=True)


def _healthy(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop_server(process: subprocess.Popen[bytes]) -> None:
    """Stop the server's whole process group (uvicorn workers included)."""
    import subprocess

    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, UI_STOP_TIMEOUT), (signal.SIGKILL, UI_STOP_TIMEOUT)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def _server_command(
    location: StoreLocation, registry_uri: str | None, host: str, port: int
) -> list[str]:
    command = [sys.executable, "-m", "mlflow", "server"]
    command += ["--backend-store-uri", location.tracking_uri]
    if registry_uri is not None:
        command += ["--registry-store-uri", registry_uri]
    artifact_root = location.artifact_root
    if artifact_root is None and location.legacy_file_store and location.local_folder:
        artifact_root = location.local_folder.as_uri()
    if artifact_root is not None:
        # The runs' files live in the local artifact folder: read them in place.
        command += ["--default-artifact-root", artifact_root, "--no-serve-artifacts"]
    command += ["--host", host, "--port", str(port), "--workers", "1"]
    return command


def _serve(
    config: TrackingConfig,
    location: StoreLocation,
    host: str,
    port: int,
    *,
    page: str,
    browser: bool,
    signals: _StopSignals,
) -> None:
    """Run the server until Ctrl-C (or SIGTERM, SIGHUP); it is stopped in every case."""
    import subprocess

    root = project_root(config)
    if location.local_folder is not None:
        location.local_folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if config.credentials is not None:
        env.update(config.credentials.as_env())
    if location.legacy_file_store:
        env["MLFLOW_ALLOW_FILE_STORE"] = "true"
    # MLflow's GenAI job runner (several worker processes) doubles the start time and is of
    # no use for browsing runs; setting the variable yourself keeps your choice.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    registry = plan_store(config, root=root, inherit=False).registry_uri
    command = _server_command(location, registry, host, port)
    base = f"http://{_url_host(host)}:{port}"
    process: subprocess.Popen[bytes] | None = None
    try:
        click.echo(f"starting the MLflow UI on {mask_uri(location.tracking_uri)} ...")
        process = subprocess.Popen(
            command, cwd=root, env=env, stdin=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + UI_START_TIMEOUT
        while process.poll() is not None or not _healthy(base):
            if process.poll() is not None:
                raise click.ClickException(
                    f"mlflow server exited with code {process.returncode} before it was ready "
                    "(its messages are above)"
                )
            if time.monotonic() > deadline:
                raise click.ClickException(
                    f"mlflow server not ready at {base} after {UI_START_TIMEOUT:.0f} s"
                )
            time.sleep(0.25)
        url = base + page
        click.echo(f"MLflow UI: {url}  (mlflow server pid {process.pid}; Ctrl-C to stop)")
        if browser:
            _open_browser(url)
        code = process.wait()
        raise click.ClickException(f"mlflow server stopped by itself (exit code {code})")
    except KeyboardInterrupt:
        click.echo("stopping the MLflow UI", err=True)
    finally:
        signals.stopping = True
        if process is not None:
            _stop_server(process)


def _experiment_page(
    location: StoreLocation, credentials: dict[str, str], name: str
) -> tuple[str, str | None]:
    """The UI page of experiment ``name`` in a local or database store
    (``/#/experiments/<id>/runs``), or ``""`` (the home page) and why."""
    shown = mask_uri(location.tracking_uri)
    uri = location.tracking_uri
    if uri.startswith("sqlite:") and not location.legacy_file_store:
        # An SQLite file that does not exist, or holds no tables yet, holds no experiment:
        # no need to import mlflow (or let it create the file) to know that.
        db_text = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
        if not db_text or db_text.startswith(":memory:"):
            return "", f"{uri} is an in-memory database, {HOME_PAGE_NOTE}"
        db = Path(db_text)
        shown = display_path(db)
        tables = sqlite_tables(db) if db.is_file() else set()
        if isinstance(tables, CheckItem):
            return "", f"{tables.detail}, {HOME_PAGE_NOTE}"
        if "experiments" not in tables:
            return "", f"experiment {name!r} is not in {shown} yet, {HOME_PAGE_NOTE}"
    lookup = backend_lookup(location, credentials, name, None)
    return _page_of(lookup.experiment, lookup.error, name, shown)


def _page_of(
    experiment: ExperimentRef | None, error: str | None, name: str, shown: str
) -> tuple[str, str | None]:
    if error is not None:
        return "", f"could not look experiment {name!r} up in {shown} ({error}), {HOME_PAGE_NOTE}"
    if experiment is None:
        return "", f"experiment {name!r} is not in {shown} yet, {HOME_PAGE_NOTE}"
    if experiment.deleted:
        return "", (
            f"experiment {name!r} (id {experiment.id}) is deleted in {shown}, {HOME_PAGE_NOTE}"
        )
    # MLflow 3's UI opens an experiment without a kind on its GenAI overview; /runs is the
    # table of runs (checked with a real browser in test_ui_browser.py).
    return f"/#/experiments/{urllib.parse.quote(experiment.id, safe='')}/runs", None


def _unreachable(item: CheckItem, config: TrackingConfig) -> click.ClickException:
    """``trackcfg ui`` cannot show a store that does not answer: the probe's reason."""
    message = item.detail + (f"; {item.fix}" if item.fix else "")
    source = config.sources.get("server.mlflow_tracking_uri")
    if source is not None and str(source) != "default":
        message += f" (from {source})"
    return click.ClickException(message)


def _show_server(
    config: TrackingConfig, uri: str, name: str, *, browser: bool, timeout: float
) -> None:
    """An http(s) tracking server: print (and open) its URL once it answers one API call."""
    base = uri.rstrip("/")
    credentials = config.credentials.as_env() if config.credentials is not None else {}
    reached, refused, lookup = http_lookup(base, {**os.environ, **credentials}, name, None, timeout)
    if reached.status is Status.FAIL:
        raise _unreachable(reached, config)
    page: str
    note: str | None
    if refused is not None:
        page = ""
        note = (
            f"{mask_uri(base)} refused the credentials (server.credentials), {HOME_PAGE_NOTE} "
            "(it may ask you to log in)"
        )
    else:
        found = lookup.experiment if lookup is not None else None
        page, note = _page_of(found, None, name, mask_uri(base))
    if note is not None:
        click.echo(note, err=True)
    click.echo(f"MLflow UI: {mask_uri(base)}{page}")
    if browser:
        _open_browser(base + page)


def serve_ui(
    config: TrackingConfig,
    *,
    port: int | None = None,
    host: str | None = None,
    browser: bool = True,
    timeout: float = UI_PROBE_TIMEOUT,
) -> None:
    """What ``trackcfg ui`` does with a loaded configuration (shared with ``kedro trackcfg
    ui``): serve a local or database store until Ctrl-C/SIGTERM/SIGHUP, or show an http(s)
    one; on the configured experiment's runs when the store holds it."""
    root = project_root(config)
    location = plan_store(config, root=root, inherit=False).destination
    scheme = urllib.parse.urlsplit(location.tracking_uri).scheme.split("+")[0].lower()
    name = experiment_name(config, root)
    if scheme in ("http", "https"):
        _show_server(config, location.tracking_uri, name, browser=browser, timeout=timeout)
        return
    if not (location.is_local or scheme in DB_PORTS):
        raise click.ClickException(
            f"trackcfg ui cannot serve {mask_uri(location.tracking_uri)}; open that service's "
            "own UI (server.mlflow_tracking_uri)"
        )
    if scheme in DB_PORTS:
        reached = tcp_reachable(location.tracking_uri, timeout)
        if reached.status is Status.FAIL:
            raise _unreachable(reached, config)
    chosen_host = host or config.ui.host or DEFAULT_UI_HOST
    chosen_port = _bind_probe(chosen_host, (port if port is not None else config.ui.port) or 0)
    credentials = config.credentials.as_env() if config.credentials is not None else {}
    signals = _StopSignals()
    with signals.installed():
        try:
            page, note = _experiment_page(location, credentials, name)
            if note is not None:
                click.echo(note, err=True)
            _serve(
                config,
                location,
                chosen_host,
                chosen_port,
                page=page,
                browser=browser,
                signals=signals,
            )
        except KeyboardInterrupt:  # while looking the experiment up: no server yet
            click.echo("stopped before the MLflow UI started", err=True)
