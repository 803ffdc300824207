"""The ``trackcfg`` command line: ``init``, ``show``, ``check``, ``ui`` and ``sync``.

A thin adapter over the loader (``load_config``), the store rules (``resolve_store``), the
session's rules (``_rules``) and, for ``check`` and ``ui`` on a local or database store, the
backend (``_backend``, the one door to MLflow).  The commands' arguments, options and help
are declared in ``commands``; what each does is in a module of its own (``init``, ``show``,
``check``, ``ui``, ``sync``), imported when the command runs; the store probes of ``check``
are in ``probes`` and what several use in ``_common``.  This module holds the click group
and registers the commands.

``trackcfg --help`` and ``trackcfg <command> --help`` import click and ``commands`` only
(neither the configuration nor the store modules, nor attrs).  MLflow is never loaded by
``init`` and ``show``; ``check`` loads it only to look the experiment up in a local or database
store, ``ui`` only for the same lookup (the URL it prints is the experiment's) and runs
``python -m mlflow server`` as a child process, and ``sync`` imports it only when there is a
journal to send.  The package's other names (its command modules, ``run_checks``,
``serve_ui``, ...) are imported on first use (PEP 562).
The network, SQLite, subprocess, temporary-file and TLS modules are imported by the functions
that use them, not by ``trackcfg --help``.

Exit codes: 0 success (``check``: a run would start), 1 a trackcfg error or a failed check
(one message on stderr, no traceback), 2 a usage error (click's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from trackcfg._lazy import lazy_names as _lazy_names
from trackcfg.exceptions import TrackcfgError

from . import commands

if TYPE_CHECKING:
    from . import check as check
    from . import init as init
    from . import show as show
    from . import sync as sync
    from . import ui as ui
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

# Names imported on first use (PEP 562), as ``trackcfg``'s own: a command's module and what it
# shares with ``kedro trackcfg`` load when used, not with ``trackcfg --help``.
_LAZY = {
    "check": ".check",
    "init": ".init",
    "show": ".show",
    "sync": ".sync",
    "ui": ".ui",
    "mask_uri": "._common",
    "run_checks": ".check",
    "render_template": ".init",
    "write_template": ".init",
    "sync_project": ".sync",
    "serve_ui": ".ui",
}


__getattr__, __dir__ = _lazy_names(__name__, _LAZY)


class TrackcfgErrorsGroup(click.Group):
    """Turns trackcfg's own errors into one line on stderr and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TrackcfgError as exc:
            from trackcfg._store import mask_text

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
# that ``trackcfg._cli.check`` is one thing); the commands are declared in ``commands``.
cli.add_command(commands.init)
cli.add_command(commands.show)
cli.add_command(commands.check)
cli.add_command(commands.ui)
cli.add_command(commands.sync)


def main() -> None:
    """Console-script entry point (``trackcfg``)."""
    cli.main(prog_name="trackcfg")
