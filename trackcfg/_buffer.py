"""Buffered logging: the session's logging calls return at once; a sender thread delivers.

A call appends its data to the run's journal (``_journal``), puts it in memory and returns:
it never waits on the network and never raises because of it, nor because of the local disk.
One sender thread per run takes what is pending, in call order, and delivers it through
``_delivery`` (the routine ``trackcfg sync`` replays journals with): as few ``log_batch``
requests as MLflow's limits allow (a full batch is sent at once; a smaller one when its oldest
value has waited ``flush_seconds``, or on ``flush()``), artifacts in their turn; then it
acknowledges them in the journal.  Its state is a ``SenderState``.

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

Memory holds at most ``max_buffered`` entities; past that, with a journal, the rest waits in
the journal only (a span of it in the queue) and is read back as the sender catches up (the
loop never blocks); without one, a call waits for the sender.
"""

from __future__ import annotations

import collections
import gc
import logging
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import attrs

from ._backend import Backend, BackendFactory, RunStatus
from ._config import LoggingConfig, LoggingMode
from ._delivery import Delivery, SenderState
from ._journal import (
    Journal,
    JournalRecord,
    check_folder,
    copy_artifact,
    open_journal,
    records_from,
)
from ._params import Limits, MetricPoint
from ._store import mask_uri, store_kind
from ._sync import journal_folder, sync_journals
from .exceptions import CredentialsError, RunError, TrackingUnavailableError

__all__ = ["DROPPED_TAG", "BufferedRun", "LoggingSettings"]

logger = logging.getLogger(__name__)

#: The tag saying how many entities a run dropped (the journal could not take them and memory
#: was full).
DROPPED_TAG = "trackcfg.logging.dropped"
#: Acknowledged bytes of the journal from which they are dropped from it (compacted).
COMPACT_BYTES = 512 * 1024


@attrs.frozen(kw_only=True)
class LoggingSettings:
    flush_seconds: float = 2.0
    max_buffered: int = 100_000
    exit_timeout: float = 30.0
    journal_dir: str = ""  # the folder, for messages


#: A metrics-only call waiting in memory: ``(seq, key, value, timestamp, step, key, ...)``.
#: A tuple of strings and numbers only, which Python's garbage collector stops tracking at its
#: first look: a loop's pending steps (up to ``max_buffered`` of them) add nothing to what
#: every later collection walks.  As ``JournalRecord`` and ``MetricPoint`` objects (attrs
#: classes, always tracked) they were promoted to the oldest generation while the sender was
#: busy and brought on full collections of the whole heap (mlflow's included): 0.1-1 s stalls
#: of a logging call under load (issue 24).
_Compact: TypeAlias = tuple[Any, ...]


def _compact(record: JournalRecord) -> JournalRecord | _Compact:
    """What memory keeps of ``record``: a flat tuple when it holds metrics only."""
    if record.params or record.tags or record.artifacts:
        return record  # rare calls: kept as they are
    flat: list[Any] = [record.seq]
    for m in record.metrics:
        flat += (m.key, m.value, m.timestamp, m.step)
    return tuple(flat)


def _expand(item: JournalRecord | _Compact) -> JournalRecord:
    """The record ``_compact`` kept (the sender's side, outside the lock)."""
    if isinstance(item, JournalRecord):
        return item
    return JournalRecord(
        seq=item[0],
        metrics=tuple(
            MetricPoint(key=item[i], value=item[i + 1], timestamp=item[i + 2], step=item[i + 3])
            for i in range(1, len(item), 4)
        ),
    )


def _size(item: JournalRecord | _Compact) -> int:
    """Entities in a queued item, as ``JournalRecord.size`` counts them."""
    if isinstance(item, JournalRecord):
        return item.size
    return (len(item) - 1) // 4 or 1


_freeze_lock = threading.Lock()
_freezers = 0  # senders holding the freeze below
_we_froze = False


def _freeze() -> bool:
    """Move every object alive now out of the garbage collector's reach (``gc.freeze``),
    once the sender has delivered its first batch: mlflow, SQLAlchemy and the store's caches
    are imported and built by then, hundreds of thousands of long-lived objects that every
    full collection would walk again, in whatever thread triggers it (the training loop's,
    most of the time: 0.2-0.6 s stalls of a ``log_metrics`` call, issue 24).  Not when the
    program froze objects itself (``gc.get_freeze_count()``): its choice stands.  Undone by
    ``_unfreeze`` when the last sender ends; True when this sender holds the freeze."""
    global _freezers, _we_froze
    with _freeze_lock:
        if not _we_froze:
            if gc.get_freeze_count():
                return False
            gc.freeze()
            _we_froze = True
        _freezers += 1
        return True


def _unfreeze() -> None:
    """The program's objects back in the collector's care (``gc.unfreeze``) when no sender
    needs the freeze any more."""
    global _freezers, _we_froze
    with _freeze_lock:
        _freezers -= 1
        if _freezers == 0 and _we_froze:
            gc.unfreeze()
            _we_froze = False


@attrs.define(eq=False)
class _Span:
    """Records kept in the journal only, from byte ``start`` to byte ``end``."""

    start: int
    end: int


@attrs.define(eq=False)
class BufferedRun:
    """The pending data of one run and the thread that sends it."""

    backend: Backend
    run_id: str
    limits: Limits
    settings: LoggingSettings
    journal: Journal | None
    where: str  # "tracking server <masked URI>" or "store <masked URI>", for messages
    _lock: threading.RLock = attrs.field(factory=threading.RLock)
    _cond: threading.Condition = attrs.field(
        default=attrs.Factory(lambda self: threading.Condition(self._lock), takes_self=True)
    )
    _queue: collections.deque[JournalRecord | _Compact | _Span] = attrs.field(
        factory=collections.deque
    )
    _queued: int = 0  # entities in memory
    _seq: int = 0  # the last seq given (without a journal)
    _last_seq: int = 0  # highest seq handed to the sender (dropped calls excluded)
    _sent_seq: int = 0  # every record up to this one is on the server
    _oldest: float | None = None  # when the oldest record in memory was added
    _flush_wanted: int = 0  # callers waiting in flush()
    _room_wanted: bool = False  # a caller waits for room in memory (no journal)
    _sender_waiting: bool = False  # the sender sleeps until notified or its deadline
    _closing: bool = False
    _state: SenderState = SenderState.IDLE
    _failure: str | None = None  # why the sender stopped before the session ended
    _unreachable_since: float | None = None
    _refused: list[str] = attrs.field(factory=list)
    _journal_down: bool = False  # the last append failed: calls are kept in memory only
    _journal_said: bool = False  # the WARNING about it was given
    _dropped: int = 0  # entities dropped (memory full and the journal unwritable)
    _dropped_said: int = 0  # ... of which flush() or the session's end reported
    _dropped_tagged: int = 0  # ... the count the run's tag says
    _thread: threading.Thread | None = None
    _sleeper: threading.Event = attrs.field(factory=threading.Event)
    _fork_guard: threading.Lock = attrs.field(factory=threading.Lock)
    _temp: Path | None = None  # artifacts waiting for upload, without a journal
    _count: int = 0

    def start(self) -> None:
        from ._state import guard_against_fork

        guard_against_fork(self._fork_guard)
        self._thread = threading.Thread(
            target=self._run, name=f"trackcfg-sender-{self.run_id[:8]}", daemon=True
        )
        self._thread.start()

    @property
    def state(self) -> SenderState:
        return self._state

    @property
    def _stopped(self) -> bool:
        return self._state is SenderState.STOPPED

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
        if self._refused:
            self.raise_refused()
        # The condition's own lock: a ``with`` on it saves the condition's two Python-level
        # calls on the hot path of every logging call.
        with self._lock:
            if self._closing:
                raise RunError("the session has ended; log inside the with block")
            journal = self.journal
            record = JournalRecord(
                seq=journal.next_seq() if journal is not None else self._next_seq(),
                params=dict(params or {}),
                tags=dict(tags or {}),
                metrics=tuple(metrics),
                artifacts=tuple(artifacts),
            )
            size = record.size
            journaled = False
            if journal is not None:
                offset = journal.offset
                try:
                    journal.write(record)
                    journaled = True
                except OSError as exc:
                    self._journal_failed(exc)
                else:
                    if self._journal_down:
                        self._journal_back()
            tail = self._queue[-1] if self._queue else None
            if journaled and isinstance(tail, _Span):
                tail.end = journal.offset  # type: ignore[union-attr]
            elif self._queued + size > self.settings.max_buffered and self._queue:
                if journaled:
                    self._queue.append(_Span(offset, journal.offset))  # type: ignore[union-attr]
                elif journal is None:
                    while self._queued + size > self.settings.max_buffered and self._queue:
                        if self._stopped:
                            raise RunError(self._stopped_message())
                        self._room_wanted = True  # the sender sends without waiting
                        self._wake_sender()
                        self._cond.wait(1.0)
                    self._enqueue(record, size)
                else:
                    self._drop(size)
                    return
            else:
                self._enqueue(record, size)
            self._last_seq = record.seq

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _enqueue(self, record: JournalRecord, size: int) -> None:
        self._queue.append(_compact(record))
        self._queued += size
        if self._oldest is None:
            self._oldest = time.monotonic()
            self._wake_sender()  # its flush_seconds start now
        elif self._queued >= self.limits.metrics_per_batch:
            self._wake_sender()  # a full batch: send it now

    def _wake_sender(self) -> None:
        # Only when it sleeps and has a new decision to make, never once per call: each
        # wake-up makes the logging thread give the GIL away and wait to get it back, which on
        # a busy machine costs a scheduler time slice, far more than the call itself.
        if self._sender_waiting:
            self._sender_waiting = False
            self._cond.notify_all()

    def _journal_failed(self, exc: OSError) -> None:
        if self._journal_down:
            return
        self._journal_down = True
        said, self._journal_said = self._journal_said, True
        (logger.debug if said else logger.warning)(  # once per session: a disk at its limit
            # takes a short line now and then, and refuses the next
            "cannot write the journal of run %s in %s (tracking.logging.journal_dir): %s; "
            "logging calls are kept in memory (up to tracking.logging.max_buffered = %d "
            "entities) and sent, and journaling resumes when the disk takes it again",
            self.run_id,
            self.settings.journal_dir,
            exc.strerror or type(exc).__name__,
            self.settings.max_buffered,
        )

    def _journal_back(self) -> None:
        self._journal_down = False
        logger.info(
            "the journal of run %s in %s (tracking.logging.journal_dir) is written again",
            self.run_id,
            self.settings.journal_dir,
        )

    def _drop(self, size: int) -> None:
        if not self._dropped:
            logger.warning(
                "run %s: the journal in %s (tracking.logging.journal_dir) cannot be written "
                "and %d entities wait in memory (tracking.logging.max_buffered): logging calls "
                "are dropped until one of them has room; the run's tag %s counts them",
                self.run_id,
                self.settings.journal_dir,
                self.settings.max_buffered,
                DROPPED_TAG,
            )
        self._dropped += size

    # ------------------------------------------------------------------ artifacts, the end

    def keep_file(self, source: Path, name: str) -> Path:
        """A copy of ``source`` to upload later (the caller may change it meanwhile): in the
        journal's blobs folder, or a temporary folder when there is no journal or the disk
        refuses it (then the call is kept in memory only)."""
        if self.journal is not None:
            try:
                return self.journal.keep_file(source, name)
            except OSError as exc:
                with self._lock:
                    self._journal_failed(exc)
        target = self._scratch() / name
        copy_artifact(source, target)
        return target

    def keep_text(self, text: str, name: str) -> Path:
        if self.journal is not None:
            try:
                return self.journal.keep_text(text, name)
            except OSError as exc:
                with self._lock:
                    self._journal_failed(exc)
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
            with self._cond:  # a sender close() gave up waiting for may still ack
                self.journal.finish()
        self._drop_scratch()

    def keep_end(self, status: str | None) -> None:
        """The server did not take everything: the journal keeps the rest and the run's end
        status (None: the session did not own the run's end) for ``trackcfg sync``."""
        if self.journal is not None:
            with self._cond:  # a sender close() gave up waiting for may still ack
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
            self.journal = None
        self._temp = None

    def _drop_scratch(self) -> None:
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)
            self._temp = None

    def raise_refused(self) -> None:
        if self._refused:
            with self._cond:
                refused, self._refused = self._refused, []
            raise RunError(
                f"MLflow refused what was logged to run {self.run_id} (the rest was logged): "
                + "; ".join(refused)
            )

    def raise_dropped(self) -> None:
        """A ``RunError`` when calls were dropped since the last time it said so."""
        with self._cond:
            dropped, self._dropped_said = self._dropped - self._dropped_said, self._dropped
        if dropped:
            raise RunError(
                f"{dropped} entities logged to run {self.run_id} were dropped: the journal in "
                f"{self.settings.journal_dir} (tracking.logging.journal_dir) could not be "
                "written and memory was full (tracking.logging.max_buffered)"
            )

    def _stopped_message(self) -> str:
        return (
            f"trackcfg's sender for run {self.run_id} stopped ({self._failure or 'ended'}); "
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
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._last_seq
            self._flush_wanted += 1
            self._cond.notify_all()
            self._sleeper.set()
            try:
                while self._sent_seq < target:
                    if self._stopped or not self._sender_alive():
                        raise RunError(self._stopped_message())
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TrackingUnavailableError(
                            f"{target - self._sent_seq} logging call(s) of run {self.run_id} "
                            f"not yet on {self.where} after {timeout} s; they are kept and "
                            "sent when it answers (the journal keeps them if the session ends)"
                        )
                    self._cond.wait(1.0 if left is None else min(left, 1.0))
            finally:
                self._flush_wanted -= 1
        self.raise_refused()
        self.raise_dropped()

    def sent_within(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for everything submitted so far to be on the
        server; never raises (refusals are raised at the next call)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._last_seq
            self._flush_wanted += 1
            self._cond.notify_all()
            self._sleeper.set()
            try:
                while self._sent_seq < target and not self._stopped and self._sender_alive():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(min(left, 1.0))
            finally:
                self._flush_wanted -= 1
            return self._sent_seq >= target

    def _sender_alive(self) -> bool:
        return self._thread is None or self._thread.is_alive()

    def close(self, timeout: float) -> bool:
        """Send what is pending within ``timeout`` seconds and stop the sender; True when
        everything was sent (the caller then ends the run on the server)."""
        with self._cond:
            self._closing = True
            if not self._stopped:
                self._state = SenderState.CLOSING
            self._cond.notify_all()
        self._sleeper.set()
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._sent_seq < self._last_seq and not self._stopped and self._sender_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.5))
            everything = self._sent_seq >= self._last_seq
            self._state = SenderState.STOPPED
            self._cond.notify_all()
        self._sleeper.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            # Not past the deadline: ``exit_timeout`` bounds leaving the session.  A sender
            # still inside a request ends at its next turn (it is a daemon; keep_end and
            # finished take the lock it acknowledges under).
            self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
        return everything

    @property
    def pending(self) -> int:
        return self._last_seq - self._sent_seq

    # ------------------------------------------------------------------ the sender's side

    def _run(self) -> None:
        delivery = Delivery(
            backend=self.backend,
            run_id=self.run_id,
            limits=self.limits,
            wait=self._wait,
            on_state=self._set_state,
            guard=self._fork_guard,
            on_refused=self._note_refused,
        )
        frozen = False
        try:
            while True:
                taken = self._take()
                if taken is None:
                    return
                records = [_expand(item) for item in taken]
                del taken
                if not delivery.send(records):
                    return
                # The young garbage of the requests (SQLAlchemy's objects and their weakref
                # callbacks) freed here, not by a collection in the main thread, where a
                # Ctrl-C landing in such a callback is only printed, and lost.
                gc.collect(1)
                if not frozen:
                    frozen = _freeze()
                self._came_back()
                if self._acknowledge(records[-1].seq) and records[-1].artifacts:
                    self._forget_copies(records)
        except BaseException as exc:  # never take the process down from a background thread
            logger.exception("trackcfg's sender for run %s stopped", self.run_id)
            with self._cond:
                self._failure = f"{type(exc).__name__}: {exc}"
                self._state = SenderState.STOPPED
                self._cond.notify_all()
        finally:
            if frozen:
                _unfreeze()

    def _note_refused(self, what: str) -> None:
        with self._cond:
            self._refused.append(what)

    def _set_state(self, state: SenderState) -> None:
        if self._state is not SenderState.STOPPED and not self._closing:
            self._state = state

    def _acknowledge(self, seq: int) -> bool:
        """Note ``seq`` and all before it as sent; False when the journal could not say so
        (the disk is full: sync would only send those again)."""
        acked = True
        with self._cond:
            if self.journal is not None and not self.journal.closed:
                try:
                    self.journal.ack(seq)
                except OSError:
                    acked = False
                    logger.debug("cannot acknowledge in %s", self.journal.path, exc_info=True)
            self._sent_seq = max(self._sent_seq, seq)
            self._cond.notify_all()
            journal = self.journal
            if journal is not None and not journal.closed:
                try:
                    moved = journal.compact(self._sent_seq, COMPACT_BYTES)
                except Exception:  # never a reason to stop sending
                    logger.debug("cannot compact %s", journal.path, exc_info=True)
                    moved = None
                if moved is not None:  # spans kept in the journal only: where they are now
                    old, new = moved
                    for item in self._queue:
                        if isinstance(item, _Span):
                            item.start += new - old
                            item.end += new - old
        return acked

    def _forget_copies(self, records: list[JournalRecord]) -> None:
        """Delivered artifacts' copies are not needed any more (the journal stays small)."""
        if self.journal is None:
            return
        from ._journal import blobs_folder

        blobs = blobs_folder(self.journal.path)
        for record in records:
            for file, _ in record.artifacts:
                folder = Path(file).parent
                if folder.parent == blobs:
                    shutil.rmtree(folder, ignore_errors=True)

    def _ready(self) -> bool:
        if self._flush_wanted or self._closing or self._room_wanted:
            return True
        if self._queued >= self.limits.metrics_per_batch:
            return True
        return self._oldest is not None and (
            time.monotonic() - self._oldest >= self.settings.flush_seconds
        )

    def _take(self) -> list[JournalRecord | _Compact] | None:
        """The next records to send, whole, about one request's worth (as kept in memory:
        ``_expand`` them); None to stop."""
        with self._cond:
            while True:
                if self._stopped:
                    return None
                unreadable = False
                while self._queue and isinstance(self._queue[0], _Span):
                    if not self._read_back():
                        unreadable = True
                        break
                if unreadable:
                    self._cond.wait(1.0)  # the disk failed reading: try again
                    continue
                if self._queue and self._ready():
                    break
                if not self._queue and self._closing:
                    # Everything sent: wait for close() to say stop.
                    self._cond.wait(0.5)
                    continue
                wait = None
                if self._oldest is not None:
                    wait = max(0.0, self.settings.flush_seconds - (time.monotonic() - self._oldest))
                self._sender_waiting = True
                self._cond.wait(wait if wait is not None else 1.0)
                self._sender_waiting = False
            taken: list[JournalRecord | _Compact] = []
            entities = 0
            room = self.limits.metrics_per_batch
            while self._queue:
                head = self._queue[0]
                if isinstance(head, _Span):
                    break
                size = _size(head)
                if taken and entities + size > room:
                    break
                self._queue.popleft()
                taken.append(head)
                entities += size
                if isinstance(head, JournalRecord) and head.artifacts:
                    break  # uploaded in its turn, after what came before
            self._queued -= entities
            self._room_wanted = False
            self._oldest = time.monotonic() if self._queued else None
            if self._dropped > self._dropped_tagged:
                self._dropped_tagged = self._dropped
                tag = JournalRecord(seq=0, tags={DROPPED_TAG: str(self._dropped)})
                taken.insert(0, tag)
            self._cond.notify_all()  # a caller waiting for room (no journal)
            return taken

    def _read_back(self) -> bool:
        """Refill memory from the journal span at the head of the queue; False when the
        disk failed reading it (tried again later)."""
        assert self.journal is not None
        span = self._queue[0]
        assert isinstance(span, _Span)
        try:
            records, after = records_from(
                self.journal.path, span.start, self.settings.max_buffered, end=span.end
            )
        except OSError:
            logger.warning("cannot read back the journal %s", self.journal.path, exc_info=True)
            return False
        self._queue.popleft()
        if after is not None:
            self._queue.appendleft(_Span(after, span.end))
        for record in reversed(records):
            self._queue.appendleft(_compact(record))
            self._queued += record.size
        if records:
            # Spilled records waited already: sent as soon as the sender gets to them.
            self._oldest = time.monotonic() - self.settings.flush_seconds
        return True

    def _wait(self, exc: BaseException, delay: float) -> bool:
        """The sender's waiter (``_delivery``): the server away, retried until the session
        stops."""
        self._went_away(exc)
        with self._cond:
            if self._stopped:
                return False
        self._sleeper.clear()
        self._sleeper.wait(delay)
        with self._cond:
            return not self._stopped

    def _went_away(self, exc: BaseException) -> None:
        if self._unreachable_since is None:
            self._unreachable_since = time.monotonic()
            unreachable = isinstance(exc, (TrackingUnavailableError, CredentialsError))
            logger.warning(
                "%s %s (%s); run %s keeps logging locally and retries in the background",
                self.where,
                "is unreachable" if unreachable else "failed a request",
                type(exc).__name__,
                self.run_id,
            )

    def _came_back(self) -> None:
        if self._unreachable_since is not None:
            logger.warning(
                "%s answers again after %.0f s; sending what run %s logged meanwhile",
                self.where,
                time.monotonic() - self._unreachable_since,
                self.run_id,
            )
            self._unreachable_since = None

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
            where=f"{store_kind(tracking_uri)} {shown}",
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
        if self.journal is None:
            logger.warning(
                "%s did not take everything run %s logged within %s s "
                "(tracking.logging.exit_timeout); %d logging call(s) are lost "
                "(tracking.logging.journal is false)",
                self.where,
                self.run_id,
                self.settings.exit_timeout,
                self.pending,
            )
            return
        logger.warning(
            "%s did not take everything within %s s (tracking.logging.exit_timeout): "
            "%d logging call(s) and the end of run %s (%s) are kept in %s; send them with: "
            "trackcfg sync %s",
            self.where,
            self.settings.exit_timeout,
            self.pending,
            self.run_id,
            status.value,
            self.journal.path,
            root,
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
