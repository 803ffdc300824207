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

from ._common import display_path, mask_uri, project_root

if TYPE_CHECKING:
    from trackcfg._sync import SyncResult
    from trackcfg._upload import UploadResult

__all__ = ["sync_project"]


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


def _as_json(result: SyncResult | UploadResult) -> dict[str, Any]:
    """Every field of the result, a path as text (the ``--json`` shapes in ``--help``)."""
    return attrs.asdict(
        result, value_serializer=lambda _i, _f, v: str(v) if isinstance(v, Path) else v
    )


def _upload_line(result: UploadResult) -> str:
    name = f" {result.name!r}" if result.name else ""
    what = f"run {result.run_id}{name} (experiment {result.experiment!r}"
    models = f", {result.models} model(s)" if result.models else ""
    counts = f"{result.points} point(s), {result.artifacts} file(s){models}, {result.status})"
    if result.state == "uploaded":
        text = f"uploaded: {what}, {counts} as run {result.destination_run_id}"
    elif result.state == "would upload":
        text = f"would upload: {what}, {counts}"
    elif result.state == "other destination":
        text = f"other destination: {what}) is for {result.destination}"
    else:
        text = f"{result.state}: {what})"
    if result.detail:
        text += f": {result.detail}"
    return text


def sync_project(
    config: TrackingConfig,
    *,
    dry_run: bool = False,
    as_json: bool = False,
    kedro_context: Any = None,
) -> None:
    """Send (or with ``dry_run`` list) the project's pending journals written for the
    configured store, and upload its offline runs tagged for it (``_upload``); report each;
    ``click.ClickException`` (exit 1) when any could not be sent or was left."""
    from trackcfg import _state
    from trackcfg._backend import open_backend
    from trackcfg._connect import join_process_settings, plan_store
    from trackcfg._sync import journal_folder, sync_journals
    from trackcfg._upload import local_store, progress_units, upload_offline_runs

    root = project_root(config)
    plan = plan_store(config, root=root, inherit=False)
    location = plan.destination
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

    def upload(
        *, dry: bool, count: bool = True, progress: Callable[[int], None] | None = None
    ) -> list[UploadResult]:
        return upload_offline_runs(
            config,
            root,
            tracking_uri=location.tracking_uri,
            factory=open_backend,
            dry_run=dry,
            count=count,
            progress=progress,
        )

    # Read first (nothing sent): what there is to send, and the progress bar's length (the
    # points of offline runs are counted only for a bar or a dry run: it reads them all).
    bar = not as_json and sys.stderr.isatty()
    results = run(dry=True)
    uploads = upload(dry=True, count=dry_run or bar)
    todo = sum(r.records for r in results if r.state == "would send")
    sending = any(r.state == "would send" for r in results)
    uploading = any(r.state == "would upload" for r in uploads)
    if not dry_run and (sending or uploading):
        shared = join_process_settings(
            config, location, plan.registry_uri, kedro_context=kedro_context, context_optional=True
        )
        try:
            total = todo + progress_units(uploads)
            with _progress(total, shown=bar) as advance:
                if sending:
                    results = run(dry=False, progress=advance)
                if uploading:
                    uploads = upload(dry=False, progress=advance)
        finally:
            _state.leave_settings(shared)

    failed = [r for r in results if not r.ok]
    left = [r for r in uploads if not r.ok]
    if as_json:
        data = {
            "tracking_uri": shown,
            "journal_dir": str(folder),
            "local_store": mask_uri(local_store(root).tracking_uri),
            "dry_run": dry_run,
            "ok": not failed and not left,
            "results": [_as_json(r) for r in results],
            "uploads": [_as_json(r) for r in uploads],
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
        for upload_result in uploads:
            click.echo(_upload_line(upload_result))
        done = [r for r in uploads if r.state in ("uploaded", "would upload")]
        if done:
            verb = "would upload" if dry_run else "uploaded"
            tail = " (dry run)" if dry_run else ""
            click.echo(f"{verb} {len(done)} offline run(s) to {shown}{tail}")
    reasons = [f"run {r.run_id}: {r.detail}" for r in failed]
    if failed:
        reasons = [f"{len(failed)} journal(s) not sent whole: " + "; ".join(reasons)]
    if left:
        why: dict[tuple[str, str], list[str]] = {}  # one reason, the runs it stopped
        for r in left:
            why.setdefault((r.state, r.detail), []).append(r.run_id)
        details = "; ".join(
            f"run {', '.join(runs)} {state}: {detail}" for (state, detail), runs in why.items()
        )
        reasons.append(f"{len(left)} offline run(s) not uploaded: {details}")
    if reasons:
        raise click.ClickException("; ".join(reasons))
