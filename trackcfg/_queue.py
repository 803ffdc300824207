"""The pending records of a buffered run: what the logging calls queued and the sender has
not delivered yet, kept so that the garbage collector barely sees them.

A call's record is appended to the run's journal and put in memory (``RecordQueue.add``).
Memory holds at most ``max_buffered`` entities; past that, with a journal, the rest waits in
the journal only (a ``_Span`` of it in the queue) and is read back as the sender catches up
(``read_back``: the loop never blocks); without one, a call waits for the sender.  A call the
disk cannot take is kept in memory all the same (one WARNING); past ``max_buffered`` it is
dropped, counted and tagged on the run (``DROPPED_TAG``).

The sender (``_sender``) takes whole records from the head (``pop_batch``), about one
request's worth, and tells the queue what the store has (``sent_seq``).  The queue's lock and
condition are the buffer's one lock: the caller, the sender and ``flush``/``close`` wait on it.

Garbage collection: a metrics-only record waits as a flat tuple of strings and numbers
(``_compact``), which the collector stops tracking at its first look; and once the sender has
delivered its first batch, everything alive is frozen out of the collector's reach
(``freeze``, undone by ``unfreeze`` when the last sender ends).
"""

from __future__ import annotations

import collections
import gc
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias

import attrs

from ._journal import Journal, JournalRecord
from ._journal_read import records_from
from ._params import Limits, MetricPoint
from .exceptions import RunError

__all__ = ["DROPPED_TAG", "LoggingSettings", "RecordQueue", "expand", "freeze", "unfreeze"]

logger = logging.getLogger(__name__)

#: The tag saying how many entities a run dropped (the journal could not take them and memory
#: was full).
DROPPED_TAG = "trackcfg.logging.dropped"


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
Compact: TypeAlias = tuple[Any, ...]


def _compact(record: JournalRecord) -> JournalRecord | Compact:
    """What memory keeps of ``record``: a flat tuple when it holds metrics only."""
    if record.params or record.tags or record.artifacts:
        return record  # rare calls: kept as they are
    flat: list[Any] = [record.seq]
    for m in record.metrics:
        flat += (m.key, m.value, m.timestamp, m.step)
    return tuple(flat)


def expand(item: JournalRecord | Compact) -> JournalRecord:
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


def _size(item: JournalRecord | Compact) -> int:
    """Entities in a queued item, as ``JournalRecord.size`` counts them."""
    if isinstance(item, JournalRecord):
        return item.size
    return (len(item) - 1) // 4 or 1


def metrics_only(items: Sequence[JournalRecord | Compact]) -> bool:
    """Whether taken items hold metric points only (their order towards other batches does
    not matter to the store: each point carries its step and timestamp)."""
    return all(type(item) is tuple for item in items)


_freeze_lock = threading.Lock()
_freezers = 0  # senders holding the freeze below
_we_froze = False


def freeze() -> bool:
    """Move every object alive now out of the garbage collector's reach (``gc.freeze``),
    once the sender has delivered its first batch: mlflow, SQLAlchemy and the store's caches
    are imported and built by then, hundreds of thousands of long-lived objects that every
    full collection would walk again, in whatever thread triggers it (the training loop's,
    most of the time: 0.2-0.6 s stalls of a ``log_metrics`` call, issue 24).  Not when the
    program froze objects itself (``gc.get_freeze_count()``): its choice stands.  Undone by
    ``unfreeze`` when the last sender ends; True when this sender holds the freeze."""
    global _freezers, _we_froze
    with _freeze_lock:
        if not _we_froze:
            if gc.get_freeze_count():
                return False
            gc.freeze()
            _we_froze = True
        _freezers += 1
        return True


def unfreeze() -> None:
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


def _no_check() -> None:
    return None


@attrs.define(eq=False)
class RecordQueue:
    """The records of one run not yet on the store, in call order, and the counts the
    sender, ``flush`` and ``close`` wait on (all under ``lock``)."""

    run_id: str
    limits: Limits
    settings: LoggingSettings
    journal: Journal | None
    #: Called (under the lock) while a call waits for room: raises when the sender stopped.
    check_sender: Callable[[], None] = _no_check
    lock: threading.RLock = attrs.field(factory=threading.RLock)
    cond: threading.Condition = attrs.field(
        default=attrs.Factory(lambda self: threading.Condition(self.lock), takes_self=True)
    )
    items: collections.deque[JournalRecord | Compact | _Span] = attrs.field(
        factory=collections.deque
    )
    queued: int = 0  # entities in memory
    seq: int = 0  # the last seq given (without a journal)
    last_seq: int = 0  # highest seq handed to the sender (dropped calls excluded)
    sent_seq: int = 0  # every record up to this one is on the server
    points: int = 0  # metric points handed to the sender (dropped calls excluded)
    points_sent: int = 0  # ... of which acknowledged
    oldest: float | None = None  # when the oldest record in memory was added
    flush_wanted: int = 0  # callers waiting in flush()
    room_wanted: bool = False  # a caller waits for room in memory (no journal)
    sender_waiting: bool = False  # the sender sleeps until notified or its deadline
    closing: bool = False
    journal_down: bool = False  # the last append failed: calls are kept in memory only
    journal_said: bool = False  # the WARNING about it was given
    dropped: int = 0  # entities dropped (memory full and the journal unwritable)
    dropped_said: int = 0  # ... of which flush() or the session's end reported
    dropped_tagged: int = 0  # ... the count the run's tag says

    # ------------------------------------------------------------------ the caller's side

    def add(
        self,
        *,
        params: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        metrics: Sequence[MetricPoint] = (),
        artifacts: Sequence[tuple[str, str | None]] = (),
    ) -> None:
        """Journal and queue one call's data (or drop it: memory full, journal unwritable)."""
        # The condition's own lock: a ``with`` on it saves the condition's two Python-level
        # calls on the hot path of every logging call.
        with self.lock:
            if self.closing:
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
                    self.journal_failed(exc)
                else:
                    if self.journal_down:
                        self._journal_back()
            items = self.items
            tail = items[-1] if items else None
            if journaled and isinstance(tail, _Span):
                tail.end = journal.offset  # type: ignore[union-attr]
            elif self.queued + size > self.settings.max_buffered and items:
                if journaled:
                    items.append(_Span(offset, journal.offset))  # type: ignore[union-attr]
                elif journal is None:
                    while self.queued + size > self.settings.max_buffered and items:
                        self.check_sender()
                        self.room_wanted = True  # the sender sends without waiting
                        self.wake_sender()
                        self.cond.wait(1.0)
                    self._enqueue(record, size)
                else:
                    self._drop(size)
                    return
            else:
                self._enqueue(record, size)
            self.last_seq = record.seq
            self.points += len(record.metrics)

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def _enqueue(self, record: JournalRecord, size: int) -> None:
        self.items.append(_compact(record))
        self.queued += size
        if self.oldest is None:
            self.oldest = time.monotonic()
            self.wake_sender()  # its flush_seconds start now
        elif self.queued >= self.limits.metrics_per_batch:
            self.wake_sender()  # a full batch: send it now

    def wake_sender(self) -> None:
        # Only when it sleeps and has a new decision to make, never once per call: each
        # wake-up makes the logging thread give the GIL away and wait to get it back, which on
        # a busy machine costs a scheduler time slice, far more than the call itself.
        if self.sender_waiting:
            self.sender_waiting = False
            self.cond.notify_all()

    def journal_failed(self, exc: OSError) -> None:
        """The journal refused a write: said once per session (a disk at its limit takes a
        short line now and then, and refuses the next); calls are kept in memory."""
        if self.journal_down:
            return
        self.journal_down = True
        said, self.journal_said = self.journal_said, True
        (logger.debug if said else logger.warning)(
            "cannot write the journal of run %s in %s (tracking.logging.journal_dir): %s; "
            "logging calls are kept in memory (up to tracking.logging.max_buffered = %d "
            "entities) and sent, and journaling resumes when the disk takes it again",
            self.run_id,
            self.settings.journal_dir,
            exc.strerror or type(exc).__name__,
            self.settings.max_buffered,
        )

    def _journal_back(self) -> None:
        self.journal_down = False
        logger.info(
            "the journal of run %s in %s (tracking.logging.journal_dir) is written again",
            self.run_id,
            self.settings.journal_dir,
        )

    def _drop(self, size: int) -> None:
        if not self.dropped:
            logger.warning(
                "run %s: the journal in %s (tracking.logging.journal_dir) cannot be written "
                "and %d entities wait in memory (tracking.logging.max_buffered): logging calls "
                "are dropped until one of them has room; the run's tag %s counts them",
                self.run_id,
                self.settings.journal_dir,
                self.settings.max_buffered,
                DROPPED_TAG,
            )
        self.dropped += size

    # ------------------------------------------------------------------ the sender's side

    def ready(self) -> bool:
        """Whether the sender should send now (under the lock)."""
        if self.flush_wanted or self.closing or self.room_wanted:
            return True
        if self.queued >= self.limits.metrics_per_batch:
            return True
        return self.oldest is not None and (
            time.monotonic() - self.oldest >= self.settings.flush_seconds
        )

    @property
    def spilled_head(self) -> bool:
        """Whether the head of the queue waits in the journal only (``read_back`` it)."""
        return bool(self.items) and isinstance(self.items[0], _Span)

    def pop_batch(self) -> list[JournalRecord | Compact]:
        """Whole records from the head, about one request's worth (as kept in memory:
        ``expand`` them), a record with artifacts last; under the lock."""
        taken: list[JournalRecord | Compact] = []
        entities = 0
        room = self.limits.metrics_per_batch
        items = self.items
        while items:
            head = items[0]
            if isinstance(head, _Span):
                break
            size = _size(head)
            if taken and entities + size > room:
                break
            items.popleft()
            taken.append(head)
            entities += size
            if isinstance(head, JournalRecord) and head.artifacts:
                break  # uploaded in its turn, after what came before
        self.queued -= entities
        self.room_wanted = False
        self.oldest = time.monotonic() if self.queued else None
        if self.dropped > self.dropped_tagged:
            self.dropped_tagged = self.dropped
            taken.insert(0, JournalRecord(seq=0, tags={DROPPED_TAG: str(self.dropped)}))
        self.cond.notify_all()  # a caller waiting for room (no journal)
        return taken

    def read_back(self) -> bool:
        """Refill memory from the journal span at the head of the queue; False when the
        disk failed reading it (tried again later).  Under the lock."""
        assert self.journal is not None
        span = self.items[0]
        assert isinstance(span, _Span)
        try:
            records, after = records_from(
                self.journal.path, span.start, self.settings.max_buffered, end=span.end
            )
        except OSError:
            logger.warning("cannot read back the journal %s", self.journal.path, exc_info=True)
            return False
        self.items.popleft()
        if after is not None:
            self.items.appendleft(_Span(after, span.end))
        for record in reversed(records):
            self.items.appendleft(_compact(record))
            self.queued += record.size
        if records:
            # Spilled records waited already: sent as soon as the sender gets to them.
            self.oldest = time.monotonic() - self.settings.flush_seconds
        return True

    def moved(self, old: int, new: int) -> None:
        """The journal was compacted: a byte at ``old`` or after is now at ``new``; the
        spans kept in the journal only follow (under the lock)."""
        for item in self.items:
            if isinstance(item, _Span):
                item.start += new - old
                item.end += new - old

    @property
    def pending(self) -> int:
        """Calls not yet on the store."""
        return self.last_seq - self.sent_seq

    @property
    def pending_points(self) -> int:
        """Metric points not yet on the store."""
        return self.points - self.points_sent
