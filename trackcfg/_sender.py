"""The sender of a buffered run: the thread that takes the pending records (``_queue``) and
delivers them through ``_delivery.Delivery`` (the routine ``trackcfg sync`` replays journals
with), then acknowledges them in the journal.

It sends when a full batch is pending, when the oldest pending value has waited
``flush_seconds``, on ``flush()`` and while the session ends; artifacts in their turn.  The
server away is waited for (``_wait``: one WARNING when it goes, one when it is back) for as
long as the session lasts; what the store refuses is noted (``refused``) and raised by the
buffer at the next call.

Against a tracking server (HTTP), metrics-only batches are sent by up to ``IN_FLIGHT``
requests at once ("lanes": daemon threads started at the first such batch): a metric point
carries its step and timestamp, so the order of batches of points does not matter to the
store.  Params, tags and artifacts keep their order: such a batch waits until every request
before it is done, and nothing after it starts before it is.  Acknowledgements stay a prefix:
a batch is acknowledged once it and every batch taken before it are stored, so the journal
(and its compaction) never counts a record as sent that is not.  A local store gets no lanes:
its writes take one lock (SQLite), so threads would only wait on each other.
"""

from __future__ import annotations

import collections
import gc
import logging
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from queue import SimpleQueue

import attrs

from ._backend import Backend
from ._delivery import Delivery, SenderState
from ._journal import JournalRecord, blobs_folder
from ._params import Limits
from ._queue import Compact, RecordQueue, expand, freeze, metrics_only, unfreeze
from .exceptions import CredentialsError, TrackingUnavailableError

__all__ = ["COMPACT_BYTES", "IN_FLIGHT", "Sender"]

logger = logging.getLogger(__name__)

#: Acknowledged bytes of the journal from which they are dropped from it (compacted).
COMPACT_BYTES = 512 * 1024
#: Requests a sender has in flight at once to a tracking server.  A default ``mlflow server``
#: runs 4 workers; more requests than workers only queue at the server (and its SQL store
#: serializes the writes anyway), while each one in flight holds up to a batch of points in
#: memory and one of the server's workers, which other jobs sharing the server need too.
IN_FLIGHT = 4


@attrs.define(eq=False)
class _Flight:
    """A metrics-only batch sent by a lane."""

    seq: int  # its last record
    points: int
    done: bool = False
    delivered: bool = False


def _points(items: Sequence[JournalRecord | Compact]) -> int:
    return sum(
        len(item.metrics) if isinstance(item, JournalRecord) else (len(item) - 1) // 4
        for item in items
    )


@attrs.define(eq=False)
class Sender:
    """The thread sending one run's pending records, and its lanes."""

    backend: Backend
    run_id: str
    limits: Limits
    queue: RecordQueue
    where: str  # "tracking server <masked URI>" or "store <masked URI>", for messages
    lanes: int = 0  # requests in flight at once for metrics-only batches (0: one at a time)
    state: SenderState = SenderState.IDLE
    failure: str | None = None  # why the sender stopped before the session ended
    refused: list[str] = attrs.field(factory=list)
    thread: threading.Thread | None = None
    sleeper: threading.Event = attrs.field(factory=threading.Event)
    fork_guard: threading.Lock = attrs.field(factory=threading.Lock)
    _unreachable_since: float | None = None
    _flights: collections.deque[_Flight] = attrs.field(factory=collections.deque)
    _jobs: SimpleQueue[tuple[_Flight, list[JournalRecord | Compact]] | None] = attrs.field(
        factory=SimpleQueue
    )
    _lane_threads: list[threading.Thread] = attrs.field(factory=list)
    _broken: bool = False  # a lane's batch was not delivered: nothing after it is acked

    def start(self) -> None:
        from ._state import guard_against_fork

        guard_against_fork(self.fork_guard)
        self.thread = threading.Thread(
            target=self._run, name=f"trackcfg-sender-{self.run_id[:8]}", daemon=True
        )
        self.thread.start()

    @property
    def stopped(self) -> bool:
        return self.state is SenderState.STOPPED

    def alive(self) -> bool:
        return self.thread is None or self.thread.is_alive()

    def _delivery(self, guard: threading.Lock) -> Delivery:
        return Delivery(
            backend=self.backend,
            run_id=self.run_id,
            limits=self.limits,
            wait=self._wait,
            on_state=self._set_state,
            guard=guard,
            on_refused=self._note_refused,
        )

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        delivery = self._delivery(self.fork_guard)
        frozen = False
        try:
            while True:
                taken = self._take()
                if taken is None:
                    return
                if self.lanes and metrics_only(taken):
                    if not self._dispatch(taken):
                        return
                    if not frozen and self.queue.sent_seq:
                        frozen = freeze()
                    continue
                if not self._settled():  # params, tags, artifacts: after all before them
                    return
                records = [expand(item) for item in taken]
                del taken
                if not delivery.send(records):
                    return
                self._after_request()
                if not frozen:
                    frozen = freeze()
                if self._acknowledge(records[-1].seq, _points(records)) and records[-1].artifacts:
                    self._forget_copies(records)
        except BaseException as exc:  # never take the process down from a background thread
            self._fail(exc)
        finally:
            for _ in self._lane_threads:
                self._jobs.put(None)
            if frozen:
                unfreeze()

    def _fail(self, exc: BaseException) -> None:
        logger.exception("trackcfg's sender for run %s stopped", self.run_id)
        with self.queue.cond:
            self.failure = f"{type(exc).__name__}: {exc}"
            self.state = SenderState.STOPPED
            self.queue.cond.notify_all()

    def _after_request(self) -> None:
        # The young garbage of the requests (SQLAlchemy's objects and their weakref
        # callbacks) freed here, not by a collection in the main thread, where a Ctrl-C
        # landing in such a callback is only printed, and lost.
        gc.collect(1)
        self._came_back()

    def _take(self) -> list[JournalRecord | Compact] | None:
        """The next records to send, whole, about one request's worth (as kept in memory:
        ``expand`` them); None to stop."""
        q = self.queue
        with q.cond:
            while True:
                if self.stopped:
                    return None
                unreadable = False
                while q.spilled_head:
                    if not q.read_back():
                        unreadable = True
                        break
                if unreadable:
                    q.cond.wait(1.0)  # the disk failed reading: try again
                    continue
                if q.items and q.ready():
                    break
                if not q.items and q.closing:
                    # Everything taken: wait for close() to say stop.
                    q.cond.wait(0.5)
                    continue
                wait = None
                if q.oldest is not None:
                    wait = max(0.0, q.settings.flush_seconds - (time.monotonic() - q.oldest))
                q.sender_waiting = True
                q.cond.wait(wait if wait is not None else 1.0)
                q.sender_waiting = False
            return q.pop_batch()

    # ------------------------------------------------------------------ the lanes

    def _dispatch(self, taken: list[JournalRecord | Compact]) -> bool:
        """Hand a metrics-only batch to a lane once fewer than ``lanes`` are in flight;
        False when the sender stopped first."""
        cond = self.queue.cond
        with cond:
            while len(self._flights) >= self.lanes and not self.stopped:
                cond.wait(1.0)
            if self.stopped:
                return False
            last = taken[-1]
            seq = last.seq if isinstance(last, JournalRecord) else last[0]
            flight = _Flight(seq=seq, points=_points(taken))
            self._flights.append(flight)
        if len(self._lane_threads) < self.lanes:
            self._add_lane()
        self._jobs.put((flight, taken))
        return True

    def _add_lane(self) -> None:
        from ._state import guard_against_fork

        guard = threading.Lock()  # each lane's calls to the store are waited for by fork
        guard_against_fork(guard)
        lane = threading.Thread(
            target=self._lane,
            args=(guard,),
            name=f"trackcfg-sender-{self.run_id[:8]}-{len(self._lane_threads) + 1}",
            daemon=True,  # like the sender: a request still going never holds the exit
        )
        self._lane_threads.append(lane)
        lane.start()

    def _lane(self, guard: threading.Lock) -> None:
        delivery = self._delivery(guard)
        while True:
            job = self._jobs.get()
            if job is None:
                return
            flight, taken = job
            delivered = False
            if self.stopped:  # taken before the session stopped: the journal keeps it
                self._land(flight, delivered)
                continue
            try:
                records = [expand(item) for item in taken]
                del taken
                delivered = delivery.send(records)
                del records
                if delivered:
                    self._after_request()
            except BaseException as exc:
                self._fail(exc)
            self._land(flight, delivered)

    def _land(self, flight: _Flight, delivered: bool) -> None:
        """A lane's batch is done: acknowledge every batch up to the first still in flight."""
        with self.queue.cond:
            flight.done, flight.delivered = True, delivered
            seq, points = 0, 0
            while self._flights and self._flights[0].done:
                head = self._flights.popleft()
                if not head.delivered:
                    self._broken = True
                if not self._broken:
                    seq, points = head.seq, points + head.points
            if seq:
                self._acknowledge(seq, points)
            self.queue.cond.notify_all()  # the sender waiting for a free lane

    def _settled(self) -> bool:
        """Wait until no lane has a batch in flight; False when the sender stopped first."""
        cond = self.queue.cond
        with cond:
            while self._flights and not self.stopped:
                cond.wait(1.0)
            return not self.stopped and not self._broken

    # ------------------------------------------------------------------ acknowledging

    def _acknowledge(self, seq: int, points: int) -> bool:
        """Note ``seq`` and all before it as sent; False when the journal could not say so
        (the disk is full: sync would only send those again)."""
        acked = True
        q = self.queue
        with q.cond:
            if self._broken:  # a batch before it was not delivered
                return False
            journal = q.journal
            if journal is not None and not journal.closed:
                try:
                    journal.ack(seq)
                except OSError:
                    acked = False
                    logger.debug("cannot acknowledge in %s", journal.path, exc_info=True)
            if seq > q.sent_seq:
                q.sent_seq = seq
            q.points_sent += points
            q.cond.notify_all()
            if journal is not None and not journal.closed:
                try:
                    moved = journal.compact(q.sent_seq, COMPACT_BYTES)
                except Exception:  # never a reason to stop sending
                    logger.debug("cannot compact %s", journal.path, exc_info=True)
                    moved = None
                if moved is not None:  # spans kept in the journal only: where they are now
                    q.moved(*moved)
        return acked

    def _forget_copies(self, records: list[JournalRecord]) -> None:
        """Delivered artifacts' copies are not needed any more (the journal stays small)."""
        journal = self.queue.journal
        if journal is None:
            return
        blobs = blobs_folder(journal.path)
        for record in records:
            for file, _ in record.artifacts:
                folder = Path(file).parent
                if folder.parent == blobs:
                    shutil.rmtree(folder, ignore_errors=True)

    # ------------------------------------------------------------------ Delivery's callbacks

    def _note_refused(self, what: str) -> None:
        with self.queue.cond:
            self.refused.append(what)

    def _set_state(self, state: SenderState) -> None:
        if self.state is not SenderState.STOPPED and not self.queue.closing:
            self.state = state

    def _wait(self, exc: BaseException, delay: float) -> bool:
        """The waiter (``_delivery``): the server away, retried until the session stops."""
        self._went_away(exc)
        with self.queue.cond:
            if self.stopped:
                return False
        self.sleeper.clear()
        self.sleeper.wait(delay)
        with self.queue.cond:
            return not self.stopped

    def _went_away(self, exc: BaseException) -> None:
        with self.queue.cond:  # lanes may meet it at once: said once
            if self._unreachable_since is not None:
                return
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
        with self.queue.cond:
            since, self._unreachable_since = self._unreachable_since, None
        if since is not None:
            logger.warning(
                "%s answers again after %.0f s; sending what run %s logged meanwhile",
                self.where,
                time.monotonic() - since,
                self.run_id,
            )

    # ------------------------------------------------------------------ the owner's side

    def closing(self) -> None:
        """The session is ending: send what is pending (under the queue's lock)."""
        if not self.stopped:
            self.state = SenderState.CLOSING

    def stop(self) -> None:
        """Send no more (under the queue's lock); ``sleeper`` set by the caller."""
        self.state = SenderState.STOPPED
