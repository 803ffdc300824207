"""``kedro trackcfg init | ui``: the trackcfg commands inside a Kedro project.

Registered through the ``kedro.project_commands`` entry point.  They differ from ``trackcfg
init | ui`` only in where the configuration comes from: Kedro's config loader and credentials
(``trackcfg.kedro.read_config``) for the project Kedro found, in the environment ``--env``
names.  Importing this module (every ``kedro`` command in a project) imports neither mlflow
nor Kedro's session machinery.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import click

from . import _cli
from ._store import resolve_store
from .exceptions import TrackcfgError

__all__ = ["commands"]


class _Group(click.Group):
    """trackcfg's own errors as one line on stderr and exit code 1, as ``trackcfg`` does."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TrackcfgError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(name="trackcfg-plugin")
def commands() -> None:
    """trackcfg's Kedro project commands."""


@commands.group(name="trackcfg", cls=_Group)
def trackcfg() -> None:
    """MLflow tracking configured by conf/<env>/mlflow.yml."""


@trackcfg.command()
@click.option(
    "--env", "-e", default="local", show_default=True, help="Write conf/<ENV>/mlflow.yml."
)
@click.option("--force", is_flag=True, help="Overwrite an existing mlflow.yml.")
@click.pass_obj
def init(metadata: Any, env: str, force: bool) -> None:
    """Write a commented conf/<ENV>/mlflow.yml (every key with its default)."""
    target = _cli.write_template(Path(metadata.project_path), env, force=force)
    click.echo(f"wrote {target}")


@trackcfg.command()
@click.option("--env", "-e", default=None, help="Kedro configuration environment.")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="[default: ui.port]")
@click.option("--host", default=None, help="[default: ui.host, else 127.0.0.1]")
@click.option("--no-browser", is_flag=True, help="Do not open a web browser.")
@click.pass_obj
def ui(
    metadata: Any, env: str | None, port: int | None, host: str | None, no_browser: bool
) -> None:
    """Serve the MLflow UI of the store this project's runs are logged to."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from .kedro import read_config

    root = Path(metadata.project_path)
    bootstrap_project(root)
    session = KedroSession.create(project_path=root, env=env)
    with session:
        config = read_config(session.load_context())
    location = resolve_store(config.server.mlflow_tracking_uri, root)
    if urllib.parse.urlsplit(location.tracking_uri).scheme in ("http", "https"):
        click.echo(f"MLflow UI: {_cli.mask_uri(location.tracking_uri)}")
        if not no_browser:
            _cli._open_browser(location.tracking_uri)
        return
    chosen_host = host or config.ui.host or _cli.DEFAULT_UI_HOST
    chosen_port = _cli._bind_probe(chosen_host, (port if port is not None else config.ui.port) or 0)
    _cli._serve(config, location, chosen_host, chosen_port, browser=not no_browser)
