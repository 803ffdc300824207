"""Buffered logging: the session's logging calls return at once; a sender thread delivers.

A call appends its data to the run's journal (``_journal``), puts it in memory and returns:
it never waits on the network and never raises because of it.  One sender thread per run
takes what is pending, in call order, as few ``log_batch`` requests as MLflow's limits allow
(a full batch is sent at once; a smaller one when its oldest value has waited
``flush_seconds``, or on ``flush()``), acknowledges each in the journal, and uploads artifacts
in their turn.

Failures:

- *transient* (the server unreachable, a timeout, a 5xx or 429 MLflow gave up on): retried
  with backoff for as long as the session lasts; one WARNING when the server becomes
  unreachable, one when it is back;
- *a rejection retrying cannot fix* (MLflow refused a value): the batch is split until the
  refused entities are found, the rest lands, and a ``RunError`` naming the keys is raised at
  the next logging call or when the session ends.

Memory holds at most ``max_buffered`` entities; past that, with a journal, the rest waits in
the journal only and is read back from it as the sender catches up (the loop never blocks);
without one, a call waits for the sender.
"""

from __future__ import annotations

import collections
import functools
import logging
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import attrs

from ._backend import Backend
from ._journal import Journal, JournalRecord, copy_artifact, records_from
from ._params import Batch, Limits, MetricPoint, plan_batches
from .exceptions import CredentialsError, RunError, TrackcfgError, TrackingUnavailableError

__all__ = ["BufferedRun", "LoggingSettings"]

logger = logging.getLogger(__name__)

#: Consecutive failures of one request that are neither "unreachable" nor "refused" after
#: which it is treated as refused (an error MLflow keeps giving is not transient).
_UNKNOWN_FAILURES_LIMIT = 5
_MAX_BACKOFF = 10.0


@attrs.frozen(kw_only=True)
class LoggingSettings:
    flush_seconds: float = 2.0
    max_buffered: int = 100_000
    exit_timeout: float = 30.0


@attrs.define(eq=False)
class BufferedRun:
    """The pending data of one run and the thread that sends it."""

    backend: Backend
    run_id: str
    limits: Limits
    settings: LoggingSettings
    journal: Journal | None
    where: str  # the server, masked, for messages
    _lock: threading.RLock = attrs.field(factory=threading.RLock)
    _cond: threading.Condition = attrs.field(
        default=attrs.Factory(lambda self: threading.Condition(self._lock), takes_self=True)
    )
    _queue: collections.deque[JournalRecord] = attrs.field(factory=collections.deque)
    _queued: int = 0  # entities in memory
    _spilled_from: int | None = None  # journal offset of the first record kept only there
    _last_seq: int = 0  # highest seq handed to the buffer
    _sent_seq: int = 0  # every record up to this one is on the server
    _oldest: float | None = None  # when the oldest record in memory was added
    _flush_wanted: int = 0  # callers waiting in flush()
    _sender_waiting: bool = False  # the sender sleeps until notified or its deadline
    _closing: bool = False
    _stopped: bool = False
    _unreachable_since: float | None = None
    _refused: list[str] = attrs.field(factory=list)
    _thread: threading.Thread | None = None
    _sleeper: threading.Event = attrs.field(factory=threading.Event)
    _temp: Path | None = None  # artifacts waiting for upload, without a journal
    _count: int = 0

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"trackcfg-sender-{self.run_id[:8]}", daemon=True
        )
        self._thread.start()

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
            if self.journal is not None:
                offset = self.journal.offset
                record = self.journal.append(
                    params=params, tags=tags, metrics=metrics, artifacts=artifacts
                )
            else:
                offset = 0
                record = JournalRecord(
                    seq=self._last_seq + 1,
                    params=dict(params or {}),
                    tags=dict(tags or {}),
                    metrics=tuple(metrics),
                    artifacts=tuple(artifacts),
                )
            self._last_seq = record.seq
            size = record.size
            if self._spilled_from is not None:
                pass  # the journal holds it; the sender reads it back in its turn
            elif self._queued + size > self.settings.max_buffered and self._queue:
                if self.journal is not None:
                    self._spilled_from = offset
                else:
                    while self._queued + size > self.settings.max_buffered and self._queue:
                        self._cond.wait()
                    self._enqueue(record, size)
            else:
                self._enqueue(record, size)

    def _enqueue(self, record: JournalRecord, size: int) -> None:
        self._queue.append(record)
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

    # ------------------------------------------------------------------ artifacts, the end

    def keep_file(self, source: Path, name: str) -> Path:
        """A copy of ``source`` to upload later (the caller may change it meanwhile)."""
        if self.journal is not None:
            return self.journal.keep_file(source, name)
        target = self._scratch() / name
        copy_artifact(source, target)
        return target

    def keep_text(self, text: str, name: str) -> Path:
        if self.journal is not None:
            return self.journal.keep_text(text, name)
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
                    self.journal.end(status, int(time.time() * 1000))
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

    def flush(self, timeout: float | None = None) -> None:
        """Return when everything submitted so far is on the server; raise
        ``TrackingUnavailableError`` when ``timeout`` seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._last_seq
            self._flush_wanted += 1
            self._cond.notify_all()
            self._sleeper.set()
            try:
                while self._sent_seq < target and not self._stopped:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TrackingUnavailableError(
                            f"{target - self._sent_seq} logging call(s) of run {self.run_id} "
                            f"not yet on {self.where} after {timeout} s; they are kept and "
                            "sent when it answers (the journal keeps them if the session ends)"
                        )
                    self._cond.wait(left if left is None else min(left, 1.0))
            finally:
                self._flush_wanted -= 1
        self.raise_refused()

    def close(self, timeout: float) -> bool:
        """Send what is pending within ``timeout`` seconds and stop the sender; True when
        everything was sent (the caller then ends the run on the server)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._sleeper.set()
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._sent_seq < self._last_seq and not self._stopped:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.5))
            everything = self._sent_seq >= self._last_seq
            self._stopped = True
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
        try:
            while True:
                records = self._take()
                if records is None:
                    return
                self._deliver(records)
        except BaseException:  # never take the process down from a background thread
            logger.exception("trackcfg's sender for run %s stopped", self.run_id)
            with self._cond:
                self._stopped = True
                self._cond.notify_all()

    def _ready(self) -> bool:
        if self._flush_wanted or self._closing:
            return True
        if self._queued >= self.limits.metrics_per_batch:
            return True
        return self._oldest is not None and (
            time.monotonic() - self._oldest >= self.settings.flush_seconds
        )

    def _take(self) -> list[JournalRecord] | None:
        """The next records to send, whole, about one request's worth; None to stop."""
        with self._cond:
            while True:
                if self._stopped:
                    return None
                if not self._queue and self._spilled_from is not None:
                    self._read_back()
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
            taken: list[JournalRecord] = []
            entities = 0
            room = self.limits.metrics_per_batch
            while self._queue and (not taken or entities + self._queue[0].size <= room):
                record = self._queue.popleft()
                taken.append(record)
                entities += record.size
                if record.artifacts:
                    break  # uploaded in its turn, after what came before
            self._queued -= entities
            self._oldest = time.monotonic() if self._queue else None
            self._cond.notify_all()  # a caller waiting for room (no journal)
            return taken

    def _read_back(self) -> None:
        """Refill memory from the journal (records past ``max_buffered`` were kept there)."""
        assert self.journal is not None
        assert self._spilled_from is not None
        records, self._spilled_from = records_from(
            self.journal.path, self._spilled_from, self.settings.max_buffered
        )
        for record in records:
            self._enqueue(record, record.size)

    def _deliver(self, records: list[JournalRecord]) -> None:
        params: dict[str, str] = {}
        tags: dict[str, str] = {}
        metrics: list[MetricPoint] = []
        for record in records:
            params.update(record.params)
            tags.update(record.tags)
            metrics.extend(record.metrics)
        for batch in plan_batches(params=params, tags=tags, metrics=metrics, limits=self.limits):
            if not self._retrying(functools.partial(self._send_isolating, batch)):
                return
        for record in records:
            for file, artifact_path in record.artifacts:
                if not self._retrying(functools.partial(self._upload, file, artifact_path)):
                    return
        last = records[-1].seq
        with self._cond:
            if self.journal is not None and not self.journal.closed:
                self.journal.ack(last)
            self._sent_seq = last
            self._cond.notify_all()

    def _upload(self, file: str, artifact_path: str | None) -> None:
        try:
            self.backend.log_artifact(self.run_id, file, artifact_path)
        except CredentialsError:
            raise  # not about this file: retried
        except RunError as exc:
            self._refuse(f"artifact {Path(file).name!r}: {exc}")

    def _send_isolating(self, batch: Batch) -> None:
        """Send ``batch``; when MLflow refuses it, find the refused entities by halving, so
        that the rest lands."""
        try:
            self.backend.log_batch(self.run_id, batch)
            return
        except CredentialsError:
            raise  # not about these values: retried
        except RunError as exc:
            parts = _halves(batch)
            if parts is None:
                self._refuse(f"{_describe(batch)}: {exc}")
                return
        for part in parts:
            self._send_isolating(part)

    def _refuse(self, what: str) -> None:
        logger.error("MLflow refused %s (run %s)", what, self.run_id)
        with self._cond:
            self._refused.append(what)

    def _retrying(self, send: Callable[[], None]) -> bool:
        """Run ``send`` until it goes through; False when the session stops first."""
        delay, unknown = 0.5, 0
        while True:
            try:
                send()
            except (TrackingUnavailableError, CredentialsError) as exc:
                # Credentials may be renewed meanwhile (a token, a header provider).
                self._went_away(exc)
            except TrackcfgError as exc:  # refused: retrying cannot fix it
                self._refuse(str(exc))
                return True
            except Exception as exc:  # a 5xx or 429 MLflow gave up on, or something new
                unknown += 1
                if unknown >= _UNKNOWN_FAILURES_LIMIT:
                    self._refuse(f"a request failing {unknown} times ({type(exc).__name__})")
                    return True
                self._went_away(exc)
            else:
                self._came_back()
                return True
            with self._cond:
                if self._stopped:
                    return False
            self._sleeper.clear()
            self._sleeper.wait(delay)
            with self._cond:
                if self._stopped:
                    return False
            delay = min(delay * 2, _MAX_BACKOFF)

    def _went_away(self, exc: BaseException) -> None:
        if self._unreachable_since is None:
            self._unreachable_since = time.monotonic()
            logger.warning(
                "tracking server %s is unreachable (%s); run %s keeps logging locally and "
                "retries in the background",
                self.where,
                type(exc).__name__,
                self.run_id,
            )

    def _came_back(self) -> None:
        if self._unreachable_since is not None:
            logger.warning(
                "tracking server %s answers again after %.0f s; sending what run %s logged "
                "meanwhile",
                self.where,
                time.monotonic() - self._unreachable_since,
                self.run_id,
            )
            self._unreachable_since = None


def _halves(batch: Batch) -> tuple[Batch, Batch] | None:
    items: list[tuple[str, object]] = [
        *(("p", p) for p in batch.params),
        *(("t", t) for t in batch.tags),
        *(("m", m) for m in batch.metrics),
    ]
    if len(items) <= 1:
        return None
    middle = len(items) // 2

    def build(part: list[tuple[str, object]]) -> Batch:
        return Batch(
            params=tuple(v for k, v in part if k == "p"),  # type: ignore[misc]
            tags=tuple(v for k, v in part if k == "t"),  # type: ignore[misc]
            metrics=tuple(v for k, v in part if k == "m"),  # type: ignore[misc]
        )

    return build(items[:middle]), build(items[middle:])


def _describe(batch: Batch) -> str:
    if batch.params:
        key, value = batch.params[0]
        return f"param {key!r} = {value[:80]!r}"
    if batch.tags:
        key, value = batch.tags[0]
        return f"tag {key!r} = {value[:80]!r}"
    point = batch.metrics[0]
    return f"metric {point.key!r} = {point.value!r} at step {point.step}"
