"""``kedro trackcfg init | show | check | ui | sync | migrate``: the trackcfg commands inside a
Kedro project.

Registered through the ``kedro.project_commands`` entry point.  They differ from ``trackcfg
init | show | check | ui | sync`` only in where the configuration comes from: Kedro's config
loader and credentials (``trackcfg.kedro.read_config``) for the project Kedro found, in the
environment ``--env`` names.  Importing this module (every ``kedro`` command in a project) imports
neither mlflow nor Kedro's session machinery.

Their output is stdout's alone: what Kedro and the project log or print while the project
loads goes to stderr (``kedro trackcfg show --json | jq`` reads one JSON document).  Kedro
logs one line before any plugin runs, when its own CLI starts ("Using ... as logging
configuration"): where it goes is the project's logging configuration's choice.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import _cli
from ._cli.commands import check_timeout_option, ui_browser_options

if TYPE_CHECKING:
    from kedro.framework.context import KedroContext

    from ._config import TrackingConfig

__all__ = ["commands"]

ENV_HELP = "Kedro configuration environment."


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """For the block, what would reach stdout goes to stderr: log handlers writing to
    stdout (Kedro's ``logging.yml`` with ``ext://sys.stdout``), and ``print`` and Rich's
    console (Kedro's default ``RichHandler``), which write to ``sys.stdout`` as it is then."""
    loggers = [logging.getLogger()] + [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    moved: list[tuple[logging.StreamHandler[Any], Any]] = []
    for handler in {h for logger in loggers for h in logger.handlers}:
        if isinstance(handler, logging.StreamHandler) and handler.stream in (
            sys.stdout,
            sys.__stdout__,
        ):
            moved.append((handler, handler.setStream(sys.stderr)))
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for handler, stream in moved:
            handler.setStream(stream)


def _through_kedro(metadata: Any, env: str | None) -> tuple[TrackingConfig, KedroContext]:
    """The project's config as a ``kedro run`` in ``env`` reads it, and the context; what
    loading the project logs or prints goes to stderr (stdout is the command's output)."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from .kedro import read_config

    root = Path(metadata.project_path)
    with _stdout_to_stderr():
        bootstrap_project(root)
        session = KedroSession.create(project_path=root, env=env)
        with session:
            context = session.load_context()
            return read_config(context), context


@click.group(name="trackcfg-plugin")
def commands() -> None:
    """trackcfg's Kedro project commands."""


@commands.group(name="trackcfg", cls=_cli.TrackcfgErrorsGroup)
def trackcfg() -> None:
    """MLflow tracking configured by conf/<env>/mlflow.yml."""


@trackcfg.command()
@click.option(
    "--env", "-e", default="local", show_default=True, help="Write conf/<ENV>/mlflow.yml."
)
@click.option("--force", is_flag=True, help="Overwrite an existing mlflow.yml.")
@click.pass_obj
def init(metadata: Any, env: str, force: bool) -> None:
    """Write a commented conf/<ENV>/mlflow.yml (every key with its default; commented out
    when conf/base/mlflow.yml exists, so that it stays in effect)."""
    written = _cli.write_template(Path(metadata.project_path), env, force=force, user_file=False)
    click.echo(written.summary())


@trackcfg.command()
@click.option("--dry-run", is_flag=True, help="List what would change; write nothing.")
@click.pass_obj
def migrate(metadata: Any, dry_run: bool) -> None:
    """Move a kedro-mlflow project over: rewrite the kedro_mlflow dataset types of every
    conf/<env>/catalog*.yml to trackcfg.kedro.datasets' (comments and layout kept), list
    each change; point the project's kedro_mlflow imports of pipeline_ml_factory, the
    pipeline model and the datasets at trackcfg's; list what cannot be carried over (other
    kedro_mlflow imports, `kedro mlflow` commands, the kedro-mlflow dependency)."""
    from kedro.framework.project import settings

    from . import _migrate

    root = Path(metadata.project_path)
    conf = Path(getattr(settings, "CONF_SOURCE", "conf") or "conf")
    source_dir = getattr(metadata, "source_dir", None)
    try:
        migration = _migrate.plan(
            root,
            conf if conf.is_absolute() else root / conf,
            Path(source_dir) if source_dir else None,
        )
        if not dry_run:
            _migrate.apply(migration)
    except _migrate.MigrationError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(_migrate.render(migration, dry_run=dry_run))


@trackcfg.command()
@click.option("--env", "-e", default=None, help=ENV_HELP)
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="[default: ui.port]")
@click.option("--host", default=None, help="[default: ui.host, else 127.0.0.1]")
@ui_browser_options
@click.pass_obj
def ui(
    metadata: Any,
    env: str | None,
    port: int | None,
    host: str | None,
    no_browser: bool,
    timeout: float,
) -> None:
    """Serve the MLflow UI of the store this project's runs are logged to, on the
    experiment's runs (see `trackcfg ui --help`)."""
    config, _ = _through_kedro(metadata, env)
    _cli.serve_ui(config, port=port, host=host, browser=not no_browser, timeout=timeout)


@trackcfg.command()
@click.option("--env", "-e", default=None, help=ENV_HELP)
@click.option("--dry-run", is_flag=True, help="List what would be sent; send nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def sync(metadata: Any, env: str | None, dry_run: bool, as_json: bool) -> None:
    """Send the logging calls buffered sessions left in the project's journals to the
    configured store (see `trackcfg sync --help`)."""
    config, context = _through_kedro(metadata, env)
    _cli.sync_project(config, dry_run=dry_run, as_json=as_json, kedro_context=context)


@trackcfg.command()
@click.option("--env", "-e", default=None, help=ENV_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def show(metadata: Any, env: str | None, as_json: bool) -> None:
    """Print the effective configuration, as `kedro run` reads it through Kedro's config
    loader, and where each value came from (see `trackcfg show --help`)."""
    from .kedro import kedro_env

    config, context = _through_kedro(metadata, env)
    _cli.show.print_config(config, kedro_env(context) or "", as_json=as_json)


@trackcfg.command()
@click.option("--env", "-e", default=None, help=ENV_HELP)
@check_timeout_option
@click.pass_obj
def check(metadata: Any, env: str | None, timeout: float) -> None:
    """Preflight: would `kedro run` start a tracked run with this configuration, read
    through Kedro's config loader? (see `trackcfg check --help`)."""
    _cli.check.check_and_report(None, env, timeout, load=lambda: _through_kedro(metadata, env)[0])
