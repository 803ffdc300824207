"""Buffered logging: the session's logging calls return at once; a sender thread delivers.

A call appends its data to the run's journal (``_journal``), puts it in memory and returns:
it never waits on the network and never raises because of it, nor because of the local disk.
``BufferedRun`` is the face a session uses (``submit``, ``keep_file``/``keep_text``,
``flush``, ``close``/``end``, ``for_run``); it owns two parts:

- the pending records (``_queue.RecordQueue``): the journal append, memory up to
  ``max_buffered`` entities (the rest read back from the journal), a full disk, dropped
  calls, and the compact form that keeps them out of the garbage collector's way;
- the sender (``_sender.Sender``): one thread per run taking what is pending, in call order,
  and delivering it through ``_delivery`` (the routine ``trackcfg sync`` replays journals
  with): as few ``log_batch`` requests as MLflow's limits allow (a full batch is sent at
  once; a smaller one when its oldest value has waited ``flush_seconds``, or on
  ``flush()``), metrics-only batches to a tracking server several at a time, artifacts in
  their turn; then it acknowledges them in the journal.  Its state is a ``SenderState``.

Failures:

- *transient* (the server unreachable, a timeout): retried with backoff for as long as the
  session lasts; one WARNING when the server becomes unreachable, one when it is back;
- *a rejection retrying cannot fix* (MLflow refused a value, or a request failed the same way
  again and again): the batch is split until the refused entities are found, the rest lands,
  and a ``RunError`` naming them is raised at the next logging call, ``flush()`` or when the
  session ends;
- *the local disk* (the journal cannot be written: full, quota, I/O error): the call is kept
  in memory and sent all the same, with one WARNING naming ``tracking.logging.journal_dir``;
  each later call tries the journal again, so journaling resumes by itself.  Past
  ``max_buffered`` entities in memory a call that cannot be journaled is dropped: counted,
  said once, and the count tagged on the run (``trackcfg.logging.dropped``).  An error of the
  disk in the sender (acknowledging, reading back) never stops delivery.

The journal is compacted as acknowledgements arrive: once ``COMPACT_BYTES`` of it are
acknowledged (a few KiB when that is all of it), they are dropped from it, so a long run's
journal stays about that size while the server keeps up (``Journal.compact``).
"""

from __future__ import annotations

import logging
import shlex
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import attrs

from ._backend import Backend, BackendFactory, RunStatus
from ._config import LoggingConfig, LoggingMode
from ._delivery import SenderState
from ._journal import Journal, check_folder, copy_artifact, open_journal
from ._params import Limits, MetricPoint
from ._queue import DROPPED_TAG, LoggingSettings, RecordQueue
from ._sender import IN_FLIGHT, Sender
from ._store import mask_uri, store_kind
from ._sync import journal_folder, sync_journals
from .exceptions import RunError, TrackingUnavailableError

__all__ = ["DROPPED_TAG", "BufferedRun", "LoggingSettings"]

logger = logging.getLogger(__name__)


@attrs.define(eq=False)
class BufferedRun:
    """The pending data of one run and the thread that sends it."""

    backend: Backend
    run_id: str
    limits: Limits
    settings: LoggingSettings
    _journal: Journal | None  # handed to the queue, whose ``journal`` is the one
    where: str  # "tracking server <masked URI>" or "store <masked URI>", for messages
    #: Requests in flight at once for metrics-only batches (0: one at a time; ``for_run``
    #: gives a tracking server ``IN_FLIGHT``).
    lanes: int = 0
    _queue: RecordQueue = attrs.field(init=False)
    _sender: Sender = attrs.field(init=False)
    _temp: Path | None = None  # artifacts waiting for upload, without a journal
    _count: int = 0

    def __attrs_post_init__(self) -> None:
        self._queue = RecordQueue(
            run_id=self.run_id, limits=self.limits, settings=self.settings, journal=self._journal
        )
        self._queue.check_sender = self._check_sender
        self._sender = Sender(
            backend=self.backend,
            run_id=self.run_id,
            limits=self.limits,
            queue=self._queue,
            where=self.where,
            lanes=self.lanes,
        )
        self._journal = None

    @property
    def journal(self) -> Journal | None:
        return self._queue.journal

    def start(self) -> None:
        self._sender.start()

    @property
    def state(self) -> SenderState:
        return self._sender.state

    # ------------------------------------------------------------------ the caller's side

    def submit(
        self,
        *,
        params: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        metrics: Sequence[MetricPoint] = (),
        artifacts: Sequence[tuple[str, str | None]] = (),
    ) -> None:
        """Journal and queue one call's data; raises a rejection the sender found earlier."""
        if self._sender.refused:
            self.raise_refused()
        self._queue.add(params=params, tags=tags, metrics=metrics, artifacts=artifacts)

    def _check_sender(self) -> None:
        """A call waiting for room (no journal) gives up when the sender stopped."""
        if self._sender.stopped:
            raise RunError(self._stopped_message())

    # ------------------------------------------------------------------ artifacts, the end

    def keep_file(self, source: Path, name: str) -> Path:
        """A copy of ``source`` to upload later (the caller may change it meanwhile): in the
        journal's blobs folder, or a temporary folder when there is no journal or the disk
        refuses it (then the call is kept in memory only)."""
        if self.journal is not None:
            try:
                return self.journal.keep_file(source, name)
            except OSError as exc:
                with self._queue.lock:
                    self._queue.journal_failed(exc)
        target = self._scratch() / name
        copy_artifact(source, target)
        return target

    def keep_text(self, text: str, name: str) -> Path:
        if self.journal is not None:
            try:
                return self.journal.keep_text(text, name)
            except OSError as exc:
                with self._queue.lock:
                    self._queue.journal_failed(exc)
        target = self._scratch() / name
        target.write_text(text, encoding="utf-8")
        return target

    def _scratch(self) -> Path:
        if self._temp is None:
            import tempfile  # here: `trackcfg --help` imports no temporary-file module

            self._temp = Path(tempfile.mkdtemp(prefix="trackcfg-artifacts-"))
        self._count += 1
        folder = self._temp / str(self._count)
        folder.mkdir()
        return folder

    def finished(self) -> None:
        """Everything and the run's end are on the server: nothing to keep."""
        if self.journal is not None:
            with self._queue.cond:  # a sender close() gave up waiting for may still ack
                self.journal.finish()
        self._drop_scratch()

    def keep_end(self, status: str | None) -> None:
        """The server did not take everything: the journal keeps the rest and the run's end
        status (None: the session did not own the run's end) for ``trackcfg sync``."""
        if self.journal is not None:
            with self._queue.cond:  # a sender close() gave up waiting for may still ack
                if status is not None:
                    try:
                        self.journal.end(status, int(time.time() * 1000))
                    except OSError as exc:  # sync ends the run KILLED
                        logger.warning(
                            "cannot write the end of run %s in its journal %s: %s",
                            self.run_id,
                            self.journal.path,
                            exc.strerror or type(exc).__name__,
                        )
                self.journal.close()
        self._drop_scratch()

    def leave_to_parent(self) -> None:
        """In a forked child's copy: let go of the parent's journal and scratch folder
        without touching them (no lock taken: the parent's sender may have held it at the
        fork).  Closing the child's descriptor keeps the parent's lock: it has the file open
        too."""
        if self.journal is not None:
            self.journal.close()
            self._queue.journal = None
        self._temp = None

    def _drop_scratch(self) -> None:
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)
            self._temp = None

    def raise_refused(self) -> None:
        sender = self._sender
        if sender.refused:
            with self._queue.cond:
                refused, sender.refused = sender.refused, []
            raise RunError(
                f"MLflow refused what was logged to run {self.run_id} (the rest was logged): "
                + "; ".join(refused)
            )

    def raise_dropped(self) -> None:
        """A ``RunError`` when calls were dropped since the last time it said so."""
        q = self._queue
        with q.cond:
            dropped, q.dropped_said = q.dropped - q.dropped_said, q.dropped
        if dropped:
            raise RunError(
                f"{dropped} entities logged to run {self.run_id} were dropped: the journal in "
                f"{self.settings.journal_dir} (tracking.logging.journal_dir) could not be "
                "written and memory was full (tracking.logging.max_buffered)"
            )

    def _stopped_message(self) -> str:
        return (
            f"trackcfg's sender for run {self.run_id} stopped "
            f"({self._sender.failure or 'ended'}); "
            f"{self.pending} logging call(s) are not on {self.where}"
            + (
                f"; the journal {self.journal.path} keeps them for trackcfg sync"
                if self.journal is not None
                else ""
            )
        )

    def flush(self, timeout: float | None = None) -> None:
        """Return when everything submitted so far is on the server; raise a
        ``TrackcfgError`` otherwise: ``TrackingUnavailableError`` when ``timeout`` seconds
        pass first, ``RunError`` when the sender stopped, something was refused or dropped."""
        outcome, left = self._wait_sent(timeout)
        if outcome == "stopped":
            raise RunError(self._stopped_message())
        if outcome == "late":
            raise TrackingUnavailableError(
                f"{left} logging call(s) of run {self.run_id} not yet on {self.where} after "
                f"{timeout} s; they are kept and sent when it answers (the journal keeps them "
                "if the session ends)"
            )
        self.raise_refused()
        self.raise_dropped()

    def sent_within(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for everything submitted so far to be on the
        server; never raises (refusals are raised at the next call)."""
        return self._wait_sent(timeout)[0] == "sent"

    def _wait_sent(self, timeout: float | None) -> tuple[str, int]:
        """Wake the sender and wait for everything submitted so far to be on the server:
        ``("sent", 0)``, or ``("stopped", calls left)`` when the sender stopped or died,
        ``("late", calls left)`` when ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        q, sender = self._queue, self._sender
        with q.cond:
            target = q.last_seq
            q.flush_wanted += 1
            q.cond.notify_all()
            sender.sleeper.set()
            try:
                while q.sent_seq < target:
                    if sender.stopped or not sender.alive():
                        return "stopped", target - q.sent_seq
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return "late", target - q.sent_seq
                    q.cond.wait(1.0 if left is None else min(left, 1.0))
            finally:
                q.flush_wanted -= 1
        return "sent", 0

    def close(self, timeout: float) -> bool:
        """Send what is pending within ``timeout`` seconds and stop the sender; True when
        everything was sent (the caller then ends the run on the server)."""
        q, sender = self._queue, self._sender
        with q.cond:
            q.closing = True
            sender.closing()
            q.cond.notify_all()
        sender.sleeper.set()
        deadline = time.monotonic() + timeout
        with q.cond:
            while q.sent_seq < q.last_seq and not sender.stopped and sender.alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                q.cond.wait(min(left, 0.5))
            everything = q.sent_seq >= q.last_seq
            sender.stop()
            q.cond.notify_all()
        sender.sleeper.set()
        thread = sender.thread
        if thread is not None and thread is not threading.current_thread():
            # Not past the deadline: ``exit_timeout`` bounds leaving the session.  A sender
            # (or a lane) still inside a request ends at its next turn (they are daemons;
            # keep_end and finished take the lock it acknowledges under).
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        return everything

    @property
    def pending(self) -> int:
        """Logging calls not yet on the store."""
        return self._queue.pending

    @property
    def pending_points(self) -> int:
        """Metric points not yet on the store."""
        return self._queue.pending_points

    # ------------------------------------------------------------------ a session's buffer

    @classmethod
    def for_run(
        cls,
        backend: Backend,
        run_id: str,
        *,
        experiment_id: str | None,
        limits: Limits,
        config: LoggingConfig,
        root: Path,
        tracking_uri: str,
        ends_run: bool,
        send_earlier: BackendFactory | None = None,
    ) -> BufferedRun:
        """The buffer of a session's run (``tracking.logging``), its sender started: a
        journal in the project's journal folder (without one when the disk refuses it: the
        run exists, so it logs on in memory), and with ``send_earlier`` (a top-level
        session's backend factory) the project's earlier journals for this store sent in the
        background.  ``ends_run`` is False for a run the session only attached to."""
        folder = journal_folder(config.journal_dir, root)
        shown = mask_uri(tracking_uri)
        kind = store_kind(tracking_uri)
        journal = None
        if config.journal:
            try:
                journal = open_journal(
                    folder,
                    run_id=run_id,
                    experiment_id=experiment_id,
                    tracking_uri=shown,
                    ends_run=ends_run,
                )
            except OSError as exc:
                logger.warning(
                    "cannot start the journal of run %s in %s (tracking.logging.journal_dir): "
                    "%s; its logging calls are kept in memory only",
                    run_id,
                    folder,
                    exc.strerror or type(exc).__name__,
                )
        buffer = cls(
            backend=backend,
            run_id=run_id,
            limits=limits,
            settings=LoggingSettings(
                flush_seconds=config.flush_seconds,
                max_buffered=config.max_buffered,
                exit_timeout=config.exit_timeout,
                journal_dir=str(folder),
            ),
            journal=journal,
            where=f"{kind} {shown}",
            # A tracking server serves several requests at once; a local store's writes take
            # one lock (SQLite): threads would only wait on each other there.
            lanes=IN_FLIGHT if kind == "tracking server" else 0,
        )
        buffer.start()
        if journal is not None and send_earlier is not None:
            threading.Thread(
                target=_send_earlier_journals,
                args=(folder, tracking_uri, send_earlier),
                name="trackcfg-sync",
                daemon=True,
            ).start()
        return buffer

    @staticmethod
    def check_journal_dir(config: LoggingConfig, root: Path) -> None:
        """Buffered logging with a journal needs a folder it can write: a ``RunError``
        before a run exists (a disk that fills later never raises)."""
        if config.mode is not LoggingMode.BUFFERED or not config.journal:
            return
        why = check_folder(journal_folder(config.journal_dir, root))
        if why is not None:
            raise RunError(
                f"tracking.logging.journal_dir: {why}; give a writable folder, or set "
                "tracking.logging.journal: false (calls are then kept in memory only)"
            )

    def end(
        self,
        status: RunStatus,
        *,
        end_run: Callable[[], None] | None,
        let_go: Callable[[], None],
        ends_run: bool,
        root: Path,
    ) -> None:
        """Leave the run: send what is pending within ``exit_timeout``, then ``end_run()``
        (None: the session has no run of its own to end).  If the store does not take it all,
        the journal keeps the rest and the run's end (``ends_run``: the session owns it) for
        ``trackcfg sync <root>``, ``let_go()`` takes the runs off this context's stack, and
        leaving does not raise (a refused or dropped value does, once all was sent)."""
        try:
            delivered = self.close(self.settings.exit_timeout)
            if delivered and end_run is not None:
                try:
                    end_run()
                except TrackingUnavailableError:
                    delivered = False
        except BaseException:  # interrupted again while leaving: the journal keeps the end
            self.keep_end(status.value if ends_run else None)
            raise
        if delivered:
            self.finished()
            self.raise_refused()
            self.raise_dropped()
            return
        self.keep_end(status.value if ends_run else None)
        let_go()  # this context's stack: nothing to ask the server
        calls, points = self.pending, self.pending_points
        what = f"{calls} logging call(s) ({points} metric point(s))"
        if self.journal is None:
            logger.warning(
                "%s did not take everything run %s logged within %s s "
                "(tracking.logging.exit_timeout); %s are lost (tracking.logging.journal is "
                "false)",
                self.where,
                self.run_id,
                self.settings.exit_timeout,
                what,
            )
            return
        if ends_run:
            what = (
                f"{what} and the end of run {self.run_id} ({status.value})"
                if calls
                else (f"the end of run {self.run_id} ({status.value})")
            )
        else:
            what = f"{what} of run {self.run_id}"
        logger.warning(
            "%s did not take everything within %s s (tracking.logging.exit_timeout): %s are "
            "kept in the journal %s; send them with: trackcfg sync %s",
            self.where,
            self.settings.exit_timeout,
            what,
            self.journal.path,
            shlex.quote(str(root)),
        )


def _send_earlier_journals(folder: Path, tracking_uri: str, factory: BackendFactory) -> None:
    """What earlier sessions of this project left for this store (they were killed, or the
    server was away when they ended): sent in the background, never raising."""
    try:
        results = sync_journals(
            folder, tracking_uri=tracking_uri, shown_uri=mask_uri(tracking_uri), factory=factory
        )
    except Exception:
        logger.debug("could not send earlier journals from %s", folder, exc_info=True)
        return
    for result in results:
        if result.state == "sent":
            logger.info("sent the journal of run %s (%s)", result.run_id, result.end)
