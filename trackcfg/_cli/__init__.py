"""The ``trackcfg`` command line: ``init``, ``show``, ``check``, ``ui`` and ``sync``.

A thin adapter over the loader (``load_config``), the store rules (``resolve_store``), the
session's rules (``_rules``) and, for ``check`` and ``ui`` on a local or database store, the
backend (``_backend``, the one door to MLflow).  One module per command (``init``, ``show``,
``check``, ``ui``, ``sync``), the store probes of ``check`` in ``probes`` and what several
use in ``_common``; this module holds the click group and registers the commands.

``trackcfg --help``, ``init`` and ``show`` never import mlflow; ``check`` imports it only to
look the experiment up in a local or database store, ``ui`` only for the same lookup (the
URL it prints is the experiment's) and runs ``python -m mlflow server`` as a child process,
and ``sync`` imports it only when there is a journal to send.
The network, SQLite, subprocess, temporary-file and TLS modules are imported by the functions
that use them, not by ``trackcfg --help``.

Exit codes: 0 success (``check``: a run would start), 1 a trackcfg error or a failed check
(one message on stderr, no traceback), 2 a usage error (click's).
"""

from __future__ import annotations

from typing import Any

import click

from trackcfg._store import mask_text
from trackcfg.exceptions import TrackcfgError

from . import check, init, show, sync, ui
from ._common import mask_uri
from .check import run_checks
from .init import render_template, write_template
from .sync import sync_project
from .ui import serve_ui

__all__ = [
    "TrackcfgErrorsGroup",
    "cli",
    "main",
    "mask_uri",
    "render_template",
    "run_checks",
    "serve_ui",
    "sync_project",
    "write_template",
]


class TrackcfgErrorsGroup(click.Group):
    """Turns trackcfg's own errors into one line on stderr and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TrackcfgError as exc:
            # A store's message may name its URL, credentials included.
            raise click.ClickException(mask_text(str(exc))) from exc


@click.group(cls=TrackcfgErrorsGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """MLflow tracking configured by one mlflow.yml.

    PATH arguments accept an mlflow.yml file, a conf/ folder or a project folder; without
    one, the configuration is found from the current folder upward (conf/<env>/mlflow.yml
    over conf/base/mlflow.yml, else mlflow.yml). ENV defaults to $TRACKCFG_ENV, else
    "local".
    """


# The package's names ``init``, ``show``, ``check``, ``ui`` and ``sync`` stay the modules (so
# that ``trackcfg._cli.check`` is one thing); the commands are registered from them.
cli.add_command(init.init)
cli.add_command(show.show)
cli.add_command(check.check)
cli.add_command(ui.ui)
cli.add_command(sync.sync)


def main() -> None:
    """Console-script entry point (``trackcfg``)."""
    cli.main(prog_name="trackcfg")
