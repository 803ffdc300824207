"""``trackcfg sync``: send what buffered sessions left in the project's journals.

A buffered session (``tracking.logging.mode: buffered``) keeps every logging call in a journal
under ``<project root>/.trackcfg/journal/`` (``tracking.logging.journal_dir``) until the
server has it.  A session killed (SIGKILL, the OOM killer) or ending while the server was away
leaves its journal behind; ``sync`` sends it to the configured store and ends the run with the
status the session recorded (KILLED when it recorded none: it was killed).  The sending itself
is ``_sync.sync_journals``, which a session starting against a server also runs in the
background; ``sync_project`` is shared with ``kedro trackcfg sync``.

Everything that imports the network (``_journal``) or mlflow (the backend) is imported by the
command, not by ``trackcfg --help``.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import click

from trackcfg._config import TrackingConfig
from trackcfg._loading import load_config
from trackcfg._store import session_env

from ._common import display_path, env_option, mask_uri, path_argument, project_root

if TYPE_CHECKING:
    from trackcfg._sync import SyncResult

__all__ = ["sync", "sync_project"]


def _provider_maker(config: TrackingConfig, kedro_context: Any) -> Callable[[], Any] | None:
    """What builds ``server.request_header_provider`` (its headers go with every request, as
    in a session)."""
    spec = config.server.request_header_provider
    if not spec.type:
        return None
    from trackcfg._headers import header_provider

    if spec.pass_context and kedro_context is None:
        # Only Kedro has a context to pass: built without one, as `trackcfg check` does.
        provider = attrs.evolve(spec, pass_context=False)
        server = attrs.evolve(config.server, request_header_provider=provider)
        config = attrs.evolve(config, server=server)
    return lambda: header_provider(config, kedro_context)


@contextlib.contextmanager
def _progress(total: int, *, shown: bool) -> Iterator[Callable[[int], None] | None]:
    """A progress bar over the records to send, on stderr when it is a terminal."""
    if not shown or total == 0:
        yield None
        return
    with click.progressbar(length=total, label="sending", file=sys.stderr) as bar:
        yield bar.update


def _line(result: SyncResult) -> str:
    counts = f"{result.records} call(s), {result.points} point(s)"
    if result.state in ("sent", "would send"):
        verb = "ended" if result.state == "sent" else "to end"
        end = f", {verb} {result.end}" if result.end else ""
        text = f"{result.state}: run {result.run_id} ({counts}{end})"
    else:
        text = f"{result.state}: run {result.run_id}"
    if result.detail:
        text += f": {result.detail}"
    return text


def _as_json(result: SyncResult) -> dict[str, Any]:
    return {
        "journal": str(result.journal),
        "run_id": result.run_id,
        "records": result.records,
        "points": result.points,
        "end": result.end,
        "state": result.state,
        "detail": result.detail,
    }


def sync_project(
    config: TrackingConfig,
    *,
    dry_run: bool = False,
    as_json: bool = False,
    kedro_context: Any = None,
) -> None:
    """Send (or with ``dry_run`` list) the project's pending journals written for the
    configured store and report each; ``click.ClickException`` (exit 1) when any could not
    be sent."""
    from trackcfg import _state
    from trackcfg._backend import open_backend
    from trackcfg._store import resolve_registry_uri, resolve_store
    from trackcfg._sync import journal_folder, sync_journals

    root = project_root(config)
    location = resolve_store(config.server.mlflow_tracking_uri, root)
    shown = mask_uri(location.tracking_uri)
    folder = journal_folder(config.tracking.logging.journal_dir, root)

    def run(*, dry: bool, progress: Callable[[int], None] | None = None) -> list[SyncResult]:
        return sync_journals(
            folder,
            tracking_uri=location.tracking_uri,
            shown_uri=shown,
            factory=open_backend,
            dry_run=dry,
            progress=progress,
        )

    # Read first (no store opened): what there is to send, and the progress bar's length.
    results = run(dry=True)
    todo = sum(r.records for r in results if r.state == "would send")
    if not dry_run and any(r.state == "would send" for r in results):
        headers = config.server.request_header_provider
        registry = resolve_registry_uri(config.server.mlflow_registry_uri, root)
        shared = _state.join_settings(
            session_env(config, location),
            (location.tracking_uri, registry),
            headers if headers.type else None,
            _provider_maker(config, kedro_context),
        )
        try:
            with _progress(todo, shown=not as_json and sys.stderr.isatty()) as advance:
                results = run(dry=False, progress=advance)
        finally:
            _state.leave_settings(shared)

    failed = [r for r in results if not r.ok]
    if as_json:
        data = {
            "tracking_uri": shown,
            "journal_dir": str(folder),
            "dry_run": dry_run,
            "ok": not failed,
            "results": [_as_json(r) for r in results],
        }
        click.echo(json.dumps(data, indent=2))
    else:
        for result in results:
            click.echo(_line(result))
        pending = [r for r in results if r.state in ("sent", "would send")]
        where = display_path(folder)
        if not results:
            click.echo(f"nothing to send: no journal in {where}")
        elif not pending and not failed:
            click.echo(f"nothing to send to {shown} from {where}")
        elif dry_run:
            click.echo(f"would send {len(pending)} journal(s) to {shown} (dry run)")
        elif pending:
            click.echo(f"sent {len(pending)} journal(s) to {shown}")
    if failed:
        reasons = "; ".join(f"run {r.run_id}: {r.detail}" for r in failed)
        raise click.ClickException(f"{len(failed)} journal(s) not sent: {reasons}")


@click.command()
@path_argument
@env_option
@click.option("--dry-run", is_flag=True, help="List what would be sent; send nothing.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object (its shape is shown above)."
)
def sync(path: Path | None, env: str | None, dry_run: bool, as_json: bool) -> None:
    """Send the logging calls buffered sessions left in the project's journals.

    A buffered session (tracking.logging.mode: buffered) keeps what it logs in a journal
    under <project root>/.trackcfg/journal/ (tracking.logging.journal_dir) until the server
    has it. A session that was killed, or ended while the server was away, leaves its journal
    behind: sync sends it to the configured store, without duplicates, and ends the run with
    the status the session recorded (KILLED if it was killed). A session starting against
    the same server does this in the background too.

    Journals a running session is writing are reported "in use" and left alone; journals
    written for another store are reported and left alone. Exit 0 when everything else was
    sent (or there was nothing to send), 1 with the reason otherwise.

    \b
    --json prints:
      {"tracking_uri": "http://...", "journal_dir": "/abs/.trackcfg/journal",
       "dry_run": false, "ok": true,
       "results": [{"journal": "/abs/.../<run_id>.journal", "run_id": "...",
                    "records": 12, "points": 36, "end": "KILLED",
                    "state": "sent", "detail": ""}]}
                    # state: sent | would send | in use | other server | failed
    """
    config = load_config(path, env=env)
    sync_project(config, dry_run=dry_run, as_json=as_json)
