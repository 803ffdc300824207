"""The ``trackcfg`` commands as the command line declares them: their arguments, options
and help, and nothing else.

Each callback imports the module that does the work (``init``, ``show``, ``check``, ``ui``,
``sync``) when the command runs, so ``trackcfg --help`` and ``trackcfg <command> --help``
load click and this module only: no configuration, store, backend or attrs module (issue
24's start-up budget).  The option defaults other commands share (``kedro trackcfg check``
and ``ui``) are here too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

__all__ = [
    "DEFAULT_CHECK_TIMEOUT",
    "UI_PROBE_TIMEOUT",
    "check",
    "check_timeout_option",
    "env_option",
    "init",
    "path_argument",
    "show",
    "sync",
    "ui",
    "ui_browser_options",
]

_F = TypeVar("_F", bound=Callable[..., Any])

DEFAULT_CHECK_TIMEOUT = 5.0
UI_PROBE_TIMEOUT = 5.0


def path_argument(func: _F) -> _F:
    return click.argument(
        "path", required=False, type=click.Path(dir_okay=True, file_okay=True, path_type=Path)
    )(func)


def env_option(func: _F) -> _F:
    return click.option(
        "--env",
        "env",
        metavar="ENV",
        default=None,
        help="Read conf/<ENV>/ over conf/base/ [default: $TRACKCFG_ENV, else local].",
    )(func)


def check_timeout_option(func: _F) -> _F:
    """``check``'s ``--timeout`` (``trackcfg check`` and ``kedro trackcfg check``)."""
    return click.option(
        "--timeout",
        type=click.FloatRange(min=0.1),
        default=DEFAULT_CHECK_TIMEOUT,
        show_default=True,
        metavar="S",
        help="Seconds to wait for a tracking server or database; no retries.",
    )(func)


def ui_browser_options(func: _F) -> _F:
    """``ui``'s ``--no-browser`` and ``--timeout`` (``trackcfg ui`` and ``kedro trackcfg
    ui``)."""
    func = click.option(
        "--timeout",
        type=click.FloatRange(min=0.1),
        default=UI_PROBE_TIMEOUT,
        show_default=True,
        metavar="S",
        help="Seconds to wait for an http(s) tracking server or a database to answer.",
    )(func)
    return click.option("--no-browser", is_flag=True, help="Do not open a web browser.")(func)


@click.command()
@click.option(
    "--env",
    "env",
    metavar="ENV",
    default=None,
    help='With a conf/ folder: write conf/<ENV>/mlflow.yml [default: $TRACKCFG_ENV or "local"].',
)
@click.option("--force", is_flag=True, help="Overwrite an existing mlflow.yml.")
def init(env: str | None, force: bool) -> None:
    """Write a commented mlflow.yml for this project.

    Into conf/<ENV>/ when the current folder holds a conf/ folder (a Kedro project), else
    into the current folder. Every key is written with its default and a comment; the
    experiment name is the project's name. Where conf/base/mlflow.yml (or your user
    mlflow.yml) lies below the new file, every key is commented out, so the effective
    configuration stays as it was. An existing file is kept unless --force.
    """
    from ._common import effective_env
    from .init import write_template

    cwd = Path.cwd()
    if env is not None and not (cwd / "conf").is_dir():
        click.echo(f"note: no conf/ folder here, --env {env} is not used", err=True)
    written = write_template(cwd, effective_env(env), force=force)
    click.echo(written.summary())
    click.echo("next: edit it, then `trackcfg check` to see whether a run would start")


@click.command()
@path_argument
@env_option
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object (its shape is shown above)."
)
def show(path: Path | None, env: str | None, as_json: bool) -> None:
    """Print the effective configuration and where each value came from.

    One line per key: the key, its value, and its source: "default", FILE:LINE,
    "env VARIABLE" or "override KEY". Credentials are listed by variable name only; their
    values are always shown as ***, and a password inside a URI is masked too.

    \b
    --json prints:
      {"env": "local", "project_root": "/abs/path", "files": ["/abs/.../mlflow.yml"],
       "keys": {"server.mlflow_tracking_uri":
                  {"value": "mlruns", "source": "file", "where": "conf/local/mlflow.yml:3"},
                ...},          # source: default | file | env | override
       "resolved": {"tracking_uri": "sqlite:///...", "experiment_name": "...",
                    "run": "a new run"},
       "credentials": null or {"name": "...", "file": "/abs/credentials.yml",
                               "keys": {"AWS_SECRET_ACCESS_KEY": "***"}}}
    """
    from trackcfg._loading import load_config

    from ._common import effective_env
    from .show import print_config

    print_config(load_config(path, env=env), effective_env(env), as_json=as_json)


@click.command()
@path_argument
@env_option
@check_timeout_option
def check(path: Path | None, env: str | None, timeout: float) -> None:
    """Preflight: would a tracked run start with this configuration?

    \b
    Checks, printed as a list ([ ok ], [FAIL], [warn], [skip]):
      config       the files load and every key is valid
      store        local store: its folder is writable and the SQLite file opens;
                   http(s): the server answers one API call within --timeout
      credentials  the server.credentials entry exists (its keys are listed, masked)
      experiment   exists / is deleted / is missing, and what the settings make of it
                   (or: the run named by tracking.run.id exists)

    Exit status 0 when a run would start, 1 otherwise (the reason and the setting to
    change are printed). Nothing is created: a missing store is reported as "created at
    the first run".
    """
    from .check import check_and_report

    check_and_report(path, env, timeout)


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
@ui_browser_options
def ui(
    path: Path | None,
    env: str | None,
    port: int | None,
    host: str | None,
    no_browser: bool,
    timeout: float,
) -> None:
    """Open the MLflow UI of the configured tracking store, on the experiment's runs.

    Local stores (a folder such as mlruns, sqlite:///...) and databases: runs
    `mlflow server` on the store and its artifact folder, prints the URL once the server
    answers, opens a browser unless --no-browser, and serves until Ctrl-C, SIGTERM or
    SIGHUP (exit 0). http(s) tracking servers: prints their URL once the server answers
    (exit 1 with the reason if it does not) and opens a browser.

    The URL is the configured experiment's runs page when the store holds the experiment,
    else MLflow's home page (a note on stderr says why).
    """
    from trackcfg._loading import load_config

    from .ui import serve_ui

    serve_ui(
        load_config(path, env=env), port=port, host=host, browser=not no_browser, timeout=timeout
    )


@click.command()
@path_argument
@env_option
@click.option("--dry-run", is_flag=True, help="List what would be sent; send nothing.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object (its shape is shown above)."
)
def sync(path: Path | None, env: str | None, dry_run: bool, as_json: bool) -> None:
    """Send what buffered sessions left in the project's journals; upload offline runs.

    A buffered session (tracking.logging.mode: buffered) keeps what it logs in a journal
    under <project root>/.trackcfg/journal/ (tracking.logging.journal_dir) until the server
    has it. A session that was killed, or ended while the server was away, leaves its journal
    behind: sync sends it to the configured store, without duplicates, and ends the run with
    the status the session recorded (KILLED if it was killed). A session starting against
    the same server does this in the background too.

    Offline runs (server.offline) in the project's local store mlruns/ tagged for the
    configured server are uploaded to it, parents before children: name, start and end
    time, status, tags, params, every metric point, artifacts, and the MLflow models each
    run logged (files, params, tags, metrics, registered versions). The uploaded run is tagged
    trackcfg.sync.source_run, the local run trackcfg.sync.uploaded_to: a second sync
    uploads nothing, a sync killed half-way is finished by the next without duplicates.
    Runs still RUNNING and runs for another server are reported and left.

    Journals a running session is writing are reported "in use" and left alone; journals
    written for another store are reported and left alone. Exit 0 when everything else was
    sent and uploaded (or there was nothing to do), 1 with the reason otherwise (an offline
    run failed or left RUNNING, or a value the store refused, included: the rest is sent, the
    refused values are named).

    \b
    --json prints:
      {"tracking_uri": "http://...", "journal_dir": "/abs/.trackcfg/journal",
       "dry_run": false, "ok": true,
       "results": [{"journal": "/abs/.../<run_id>.journal", "run_id": "...",
                    "records": 12, "points": 36, "end": "KILLED",
                    "state": "sent", "detail": "", "refused": 0}],
                    # state: sent | would send | in use | other server | failed
       "local_store": "sqlite:///abs/mlruns/mlflow.db",
       "uploads": [{"run_id": "<local id>", "name": "train", "experiment": "proj",
                    "parent_run_id": null, "destination": "http://...",
                    "destination_run_id": "<server id>", "status": "FINISHED",
                    "points": 5000, "artifacts": 2, "models": 1,
                    "state": "uploaded", "detail": ""}]}
                    # state: uploaded | would upload | running | other destination
                    #        | failed
    """
    from trackcfg._loading import load_config

    from .sync import sync_project

    config = load_config(path, env=env)
    sync_project(config, dry_run=dry_run, as_json=as_json)
