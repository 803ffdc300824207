"""``trackcfg ui``: the MLflow UI of the configured store.

For a local or database store, ``python -m mlflow server`` runs as a child process (its own
process group) until Ctrl-C or SIGTERM; for an http(s) server, its URL is shown.
``serve_ui`` is shared with ``kedro trackcfg ui``.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import urllib.parse
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

import click

from trackcfg._config import TrackingConfig
from trackcfg._loading import load_config
from trackcfg._store import StoreLocation, resolve_registry_uri, resolve_store

from ._common import DB_PORTS, env_option, mask_uri, path_argument, project_root

if TYPE_CHECKING:
    import subprocess

__all__ = ["serve_ui", "ui"]

UI_START_TIMEOUT = 180.0
UI_STOP_TIMEOUT = 15.0
DEFAULT_UI_HOST = "127.0.0.1"


class _Stop(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: stop the server and exit 0."""


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
    config: TrackingConfig, location: StoreLocation, host: str, port: int, browser: bool
) -> None:
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
    registry = resolve_registry_uri(config.server.mlflow_registry_uri, root)
    command = _server_command(location, registry, host, port)
    url = f"http://{_url_host(host)}:{port}"

    def on_sigterm(_signum: int, _frame: FrameType | None) -> NoReturn:
        raise _Stop

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    process: subprocess.Popen[bytes] | None = None
    try:
        click.echo(f"starting the MLflow UI on {mask_uri(location.tracking_uri)} ...")
        process = subprocess.Popen(
            command, cwd=root, env=env, stdin=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + UI_START_TIMEOUT
        while process.poll() is not None or not _healthy(url):
            if process.poll() is not None:
                raise click.ClickException(
                    f"mlflow server exited with code {process.returncode} before it was ready "
                    "(its messages are above)"
                )
            if time.monotonic() > deadline:
                raise click.ClickException(
                    f"mlflow server not ready at {url} after {UI_START_TIMEOUT:.0f} s"
                )
            time.sleep(0.25)
        click.echo(f"MLflow UI: {url}  (mlflow server pid {process.pid}; Ctrl-C to stop)")
        if browser:
            _open_browser(url)
        code = process.wait()
        raise click.ClickException(f"mlflow server stopped by itself (exit code {code})")
    except KeyboardInterrupt:
        click.echo("stopping the MLflow UI", err=True)
    finally:
        if process is not None:
            _stop_server(process)
        signal.signal(signal.SIGTERM, previous)


@click.command()
@path_argument
@env_option
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="[default: ui.port, else a free port]",
)
@click.option(
    "--host", default=None, help="Address to listen on [default: ui.host, else 127.0.0.1]."
)
@click.option("--no-browser", is_flag=True, help="Do not open a web browser.")
def ui(
    path: Path | None, env: str | None, port: int | None, host: str | None, no_browser: bool
) -> None:
    """Open the MLflow UI of the configured tracking store.

    Local stores (a folder such as mlruns, sqlite:///...) and databases: runs
    `mlflow server` on the store and its artifact folder, prints the URL once the server
    answers, opens a browser unless --no-browser, and serves until Ctrl-C or SIGTERM
    (exit 0). http(s) tracking servers: prints their URL and opens a browser.
    """
    serve_ui(load_config(path, env=env), port=port, host=host, browser=not no_browser)


def serve_ui(
    config: TrackingConfig,
    *,
    port: int | None = None,
    host: str | None = None,
    browser: bool = True,
) -> None:
    """What ``trackcfg ui`` does with a loaded configuration (shared with ``kedro trackcfg
    ui``): serve a local or database store until Ctrl-C/SIGTERM, or show an http(s) one."""
    location = resolve_store(config.server.mlflow_tracking_uri, project_root(config))
    scheme = urllib.parse.urlsplit(location.tracking_uri).scheme.split("+")[0].lower()
    if scheme in ("http", "https"):
        url = location.tracking_uri.rstrip("/")
        click.echo(f"MLflow UI: {mask_uri(url)}")
        if browser:
            _open_browser(url)
        return
    if not (location.is_local or scheme in DB_PORTS):
        raise click.ClickException(
            f"trackcfg ui cannot serve {mask_uri(location.tracking_uri)}; open that service's "
            "own UI (server.mlflow_tracking_uri)"
        )
    chosen_host = host or config.ui.host or DEFAULT_UI_HOST
    chosen_port = _bind_probe(chosen_host, (port if port is not None else config.ui.port) or 0)
    _serve(config, location, chosen_host, chosen_port, browser=browser)
