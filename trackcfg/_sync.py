"""Sending journals to their server: what ``trackcfg sync`` does, and what a session starting
against a server does in the background for the project's earlier runs.

A journal is taken only when its writer is gone (its lock is free).  What the journal does
not mark as acknowledged is sent again, in order; metric points the server already holds
(same key, step, timestamp and value) are left out first, so a replay — twice, or after a sync
that was itself killed half-way — creates no duplicate points, whatever the store does with
duplicates.  Params and tags are idempotent in MLflow.  Then the run is ended: with the status
the session recorded, or KILLED when the journal has no end (its process was killed).  Each
step is acknowledged in the journal as it goes; the journal is deleted once all is sent.

A run that a live session owns (a journal of the run is locked, and its session ends the run:
a killed job started again on the same run, ``tracking.run.id``) is not ended: its earlier
journals are sent, and the live session ends the run.  Nor is a run a session continued
after the journal was written (its ``trackcfg.run.continued`` tag): that session ends it, or
has ended it already.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import attrs

from ._backend import Backend, BackendFactory, RunStatus
from ._delivery import Delivery, PointKey, give_up, point_key, refusal_text
from ._journal import JournalRecord, remove, run_id_of
from ._journal_read import (
    JournalContents,
    append_line,
    claimed,
    cut_torn_tail,
    inside_blobs,
    pending_journals,
    read_header,
    read_journal,
)
from ._params import Limits
from ._rules import continued_since
from ._store import error_text, mask_uri, same_store, store_refusal
from .exceptions import TrackcfgError

__all__ = [
    "JOURNAL_DIR",
    "SyncResult",
    "journal_folder",
    "known_points",
    "point_key",
    "sync_journals",
]

logger = logging.getLogger(__name__)

#: Where journals live by default, under the project root.
JOURNAL_DIR = ".trackcfg/journal"
TORN = "the last line was cut short (a crash mid-write); sent what precedes it"
_LIVE_OWNER = "the run is still being logged by a running session, which ends it"
_CONTINUED = "a later session continued the run since: its end is that session's"
#: Records sent between two acknowledgements in the journal.
_RECORDS_PER_STEP = 200


def journal_folder(configured: str | None, root: Path) -> Path:
    """``tracking.logging.journal_dir`` resolved against the project root (never the CWD)."""
    path = Path(configured or JOURNAL_DIR).expanduser()
    return path if path.is_absolute() else root / path


@attrs.frozen(kw_only=True)
class SyncResult:
    """What became of one journal."""

    journal: Path
    run_id: str
    records: int  # logging calls not yet on the server
    points: int  # metric points among them
    end: str | None  # the status the run is (or would be) ended with
    state: str  # "sent", "would send", "in use", "other server", "failed"
    detail: str = ""
    refused: int = 0  # values the store refused (named in ``detail``): sent, but not whole

    @property
    def ok(self) -> bool:
        """Nothing left to do and nothing refused (a refusal makes ``trackcfg sync`` exit 1,
        as for an offline run's upload)."""
        return self.state in ("sent", "would send", "in use", "other server") and not self.refused


def sync_journals(
    folder: Path,
    *,
    tracking_uri: str,
    shown_uri: str,
    factory: BackendFactory,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
    skip: Sequence[str] = (),
    continuing: str | None = None,
) -> list[SyncResult]:
    """Send every journal in ``folder`` written for the store ``shown_uri`` names (the masked
    URI journals record; the same store by ``same_store``) to ``tracking_uri``; ``progress``
    is told how many records went each step.  ``continuing``: only the journals of that run,
    which a starting session continues (and so ends itself): what killed processes left of it
    goes first, the run is not ended."""
    results: list[SyncResult] = []
    backend: Backend | None = None
    limits: Limits | None = None
    paths = [
        path
        for path in pending_journals(folder)
        if run_id_of(path) not in skip and continuing in (None, run_id_of(path))
    ]
    owned = _owned_by_live_sessions(paths)
    if continuing is not None:
        owned.add(continuing)
    try:
        for path in paths:
            with claimed(path) as ours:
                if not path.exists():
                    continue  # its session just ended and deleted it
                if not ours:
                    results.append(
                        SyncResult(
                            journal=path,
                            run_id=run_id_of(path),
                            records=0,
                            points=0,
                            end=None,
                            state="in use",
                            detail="a running session is writing it",
                        )
                    )
                    continue
                try:
                    contents = read_journal(path)
                except FileNotFoundError:
                    continue  # deleted by its session between the check and the read
                except TrackcfgError as exc:
                    results.append(_failed(path, run_id_of(path), str(exc)))
                    continue
                if not same_store(contents.tracking_uri, shown_uri):
                    results.append(_summary(contents, "other server", _other_server(contents)))
                    continue
                if dry_run:
                    summary = _summary(contents, "would send")
                    if contents.run_id in owned:
                        summary = attrs.evolve(summary, end=None, detail=_LIVE_OWNER)
                    results.append(summary)
                    continue
                if backend is None:
                    backend = factory(tracking_uri, None)
                    limits = factory.limits()
                assert limits is not None
                ends = contents.run_id not in owned
                results.append(_replay(contents, backend, limits, progress, end_run=ends))
    finally:
        if backend is not None:
            backend.close()
    return results


def _other_server(contents: JournalContents) -> str:
    return (
        f"written for {mask_uri(contents.tracking_uri)}, not the configured store: left as it "
        "is (sync it with a config naming that store)"
    )


def _owned_by_live_sessions(paths: Sequence[Path]) -> set[str]:
    """The runs a live session logs into and will end (its journal is locked and says it
    ends the run): an earlier journal of one of them is sent, and the run left to it."""
    owned = set()
    for path in paths:
        with claimed(path) as ours:
            if ours or not path.exists():
                continue
        header = read_header(path)
        if header is not None and header.get("ends_run", True):
            owned.add(run_id_of(path))
    return owned


def _end_status(contents: JournalContents) -> str:
    return contents.end[0] if contents.end is not None else RunStatus.KILLED.value


def _summary(contents: JournalContents, state: str, detail: str = "") -> SyncResult:
    return SyncResult(
        journal=contents.path,
        run_id=contents.run_id,
        records=len(contents.records),
        points=sum(len(r.metrics) for r in contents.records),
        end=_end_status(contents),
        state=state,
        detail=detail or _damage(contents),
    )


def _damage(contents: JournalContents) -> str:
    said = []
    if contents.skipped:
        said.append(
            f"{contents.skipped} line(s) in the middle were not whole records (a full disk); "
            "sent every whole record around them"
        )
    if contents.torn:
        said.append(TORN)
    return "; ".join(said)


def _failed(path: Path, run_id: str, detail: str) -> SyncResult:
    return SyncResult(
        journal=path, run_id=run_id, records=0, points=0, end=None, state="failed", detail=detail
    )


def _replay(
    contents: JournalContents,
    backend: Backend,
    limits: Limits,
    progress: Callable[[int], None] | None,
    *,
    end_run: bool = True,
) -> SyncResult:
    path, run_id = contents.path, contents.run_id
    if contents.torn:
        logger.warning(
            "%s: the last line was cut short (a crash mid-write); sending what precedes it", path
        )
        cut_torn_tail(path)
    if contents.done:  # all sent; its writer died before deleting it
        remove(path)
        return _summary(contents, "sent")
    try:
        run = backend.get_run(run_id)
        if run is None or run.deleted:
            return _failed(
                path,
                run_id,
                f"run {run_id} does not exist on the server any more; delete {path} to drop "
                "what it holds",
            )
        known = _known_points(backend, run_id, contents.records)
        delivery = Delivery(
            backend=backend,
            run_id=run_id,
            limits=limits,
            wait=give_up,
            allowed=functools.partial(inside_blobs, path),
        )
        records = list(contents.records)
        for start in range(0, len(records), _RECORDS_PER_STEP):
            step = records[start : start + _RECORDS_PER_STEP]
            delivery.send(step, known)
            append_line(path, {"ack": step[-1].seq})
            if progress is not None:
                progress(len(step))
        status = RunStatus(_end_status(contents))
        if not end_run or continued_since(run.tags, contents.header.get("created")):
            remove(path)
            detail = _LIVE_OWNER if not end_run else _CONTINUED
            return _with_refused(
                attrs.evolve(_summary(contents, "sent"), end=None, detail=detail),
                delivery.refused,
            )
        if run.status is RunStatus.RUNNING and contents.ends_run:
            end_time = contents.end[1] if contents.end is not None else _last_time(contents)
            backend.terminate(run_id, status, end_time)
        append_line(path, {"done": True})
    except TrackcfgError as exc:
        return _failed(path, run_id, str(exc))
    except OSError as exc:  # the journal's own disk (acknowledging)
        return _failed(path, run_id, f"cannot write {path}: {exc.strerror or exc}")
    except Exception as exc:  # a store failure the backend does not translate (an HTTP 500)
        # Not exc_info: MLflow's chained errors name the store's URL, credentials included.
        logger.debug("sending %s failed: %s", path, error_text(exc, 2000))
        return _failed(path, run_id, store_refusal(exc))
    remove(path)
    return _with_refused(_summary(contents, "sent"), delivery.refused)


def _with_refused(summary: SyncResult, refused: Sequence[str]) -> SyncResult:
    """What the store refused (by name, with its own message), said in the result."""
    if not refused:
        return summary
    said = refusal_text(refused)
    detail = "; ".join(d for d in (said, summary.detail) if d)
    return attrs.evolve(summary, detail=detail, refused=len(refused))


_Point = PointKey
_point = point_key


def _known_points(backend: Backend, run_id: str, records: Sequence[JournalRecord]) -> set[_Point]:
    return known_points(backend, run_id, {m.key for r in records for m in r.metrics})


def known_points(backend: Backend, run_id: str, keys: Iterable[str]) -> set[_Point]:
    """The points of these metrics the store holds for the run, as ``point_key`` gives them
    (to leave out of a replay or an upload what is there already)."""
    return {_point(m) for key in sorted(keys) for m in backend.metric_history(run_id, key)}


def _last_time(contents: JournalContents) -> int:
    times = [m.timestamp for r in contents.records for m in r.metrics]
    return max(times) if times else int(time.time() * 1000)
