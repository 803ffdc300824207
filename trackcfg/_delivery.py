"""Sending journal records to a run: the one routine the live sender (``_buffer``), the
replay of a journal by ``trackcfg sync`` (``_sync``), the upload of an offline run
(``_upload``) and a ``mode: sync`` session's calls (``_writer``) use, so that a rule for
retries, refusals and reporting exists once.

A call's records are merged (params and tags by key, metric points in order), cut into as few
``log_batch`` requests as MLflow's limits allow, then their artifacts are uploaded in order.
What a request meets decides what happens next:

- *the server away* (``TrackingUnavailableError``, ``CredentialsError``: credentials may be
  renewed): the ``Waiter`` decides: the live sender waits and tries again for as long as the
  session lasts; ``trackcfg sync`` gives up at once (the journal keeps everything);
- *a refusal* (any other ``TrackcfgError``: MLflow said no to a value) and *an error that
  keeps coming back* (a 5xx MLflow gave up on, ``_PERSISTENT_AFTER`` times in a row): the batch
  is halved until the refused entities are found (each half tried ``_HALF_TRIES`` times); the
  rest lands, and each refused entity is reported by name with the store's own message.

With ``isolate=False`` (``mode: sync``: the caller waits for the store) nothing is retried
or halved: the first failure of a request is raised, as the backend raised it, to the caller.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import attrs

from ._backend import Backend
from ._batching import plan_batches
from ._journal import JournalRecord
from ._records import Batch, Limits, MetricPoint
from ._store import mask_text, one_line
from .exceptions import (
    CredentialsError,
    RunError,
    ServerError,
    TrackcfgError,
    TrackingUnavailableError,
)

__all__ = [
    "Delivery",
    "SenderState",
    "Waiter",
    "give_up",
    "point_key",
    "refusal_text",
    "store_message",
]

logger = logging.getLogger(__name__)

#: Tries of one request failing with neither "unreachable" nor "refused" (a 5xx or 429 MLflow
#: gave up on) after which it is a refusal: an error the store keeps giving is not transient.
_PERSISTENT_AFTER = 5
#: Tries of each half of a batch being isolated (its whole was tried already).
_HALF_TRIES = 2
_FIRST_DELAY = 0.5
_MAX_BACKOFF = 10.0


class SenderState(enum.Enum):
    """Where a sender is (``BufferedRun.state``)."""

    IDLE = "idle"
    """Nothing pending, or waiting for ``flush_seconds``."""
    SENDING = "sending"
    """A request is under way."""
    WAITING = "waiting"
    """The server does not answer: tries again after a backoff."""
    CLOSING = "closing"
    """The session is ending: sends what is pending within ``exit_timeout``."""
    STOPPED = "stopped"
    """Sends no more: the session ended, or the sender failed (``flush`` raises)."""


class Waiter(Protocol):
    """What a sender does when the server is away."""

    def __call__(self, exc: BaseException, delay: float) -> bool:
        """Wait ``delay`` seconds and return True to try again, False to stop; or raise."""
        ...


PointKey = tuple[str, int, int, float, bool]


def point_key(m: MetricPoint) -> PointKey:
    """What makes a metric point the same point: NaN is not equal to itself, so it is a flag."""
    nan = math.isnan(m.value)
    return (m.key, m.step, m.timestamp, 0.0 if nan else m.value, nan)


class _Refused(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def store_message(exc: BaseException) -> str:
    """The store's own words for ``exc``, on one line and short, with every URI in it masked
    (``_store.mask_text``: the one masking of messages)."""
    text = str(getattr(exc, "message", "") or exc) or type(exc).__name__
    return one_line(mask_text(text), 300)


@attrs.define(eq=False)
class Delivery:
    """Sends records to one run; ``refused`` collects what the store refused, by name."""

    backend: Backend
    run_id: str
    limits: Limits
    wait: Waiter
    on_state: Callable[[SenderState], None] = lambda state: None
    #: When set: artifact files must be inside this folder (a journal's blobs), else refused.
    allowed: Callable[[str], bool] | None = None
    #: Held around each call to the store (``_state.guard_against_fork``).
    guard: AbstractContextManager[Any] = attrs.field(factory=contextlib.nullcontext)
    #: Told each refusal as it is found (the live sender: the next logging call raises it,
    #: even while the rest of the records are still being sent).
    on_refused: Callable[[str], None] | None = None
    #: False (``mode: sync``): a failed request raises at once, as the backend raised it.
    isolate: bool = True
    refused: list[str] = attrs.field(factory=list)

    def send(self, records: Sequence[JournalRecord], known: Iterable[object] = ()) -> bool:
        """Deliver ``records`` (metric points in ``known`` left out); False when the waiter
        said stop first (nothing is acknowledged then)."""
        skip = set(known)
        params: dict[str, str] = {}
        tags: dict[str, str] = {}
        metrics: list[MetricPoint] = []
        for record in records:
            params.update(record.params)
            tags.update(record.tags)
            metrics.extend(m for m in record.metrics if not skip or point_key(m) not in skip)
        for batch in plan_batches(params=params, tags=tags, metrics=metrics, limits=self.limits):
            if not self._isolating(batch, _PERSISTENT_AFTER):
                return False
        for record in records:
            for file, artifact_path in record.artifacts:
                if self.allowed is not None and not self.allowed(file):
                    self._refuse(
                        f"artifact {file} named by the journal: not a file inside the "
                        "journal's own blobs folder; not uploaded",
                        by="trackcfg",
                    )
                    continue
                if not Path(file).exists():
                    self._refuse(
                        f"artifact {Path(file).name!r}: its copy {file} is missing", by="trackcfg"
                    )
                    continue
                try:
                    if not self._trying(
                        lambda f=file, p=artifact_path: self.backend.log_artifact(  # type: ignore[misc]
                            self.run_id, f, p
                        ),
                        _PERSISTENT_AFTER,
                    ):
                        return False
                except _Refused as exc:
                    self._refuse(f"artifact {Path(file).name!r}: {exc.message}")
        self.on_state(SenderState.IDLE)
        return True

    def _isolating(self, batch: Batch, tries: int) -> bool:
        """Send ``batch``; when the store refuses it, find the refused entities by halving."""
        try:
            return self._trying(lambda: self.backend.log_batch(self.run_id, batch), tries)
        except _Refused as exc:
            parts = _halves(batch)
            if parts is None:
                self._refuse(f"{_describe(batch)}: {exc.message}")
                return True
        return all(self._isolating(part, _HALF_TRIES) for part in parts)

    def _trying(self, send: Callable[[], None], tries: int) -> bool:
        """Run ``send`` until it goes through (True), the waiter says stop (False), or the
        store refuses it (``_Refused``)."""
        delay, failures = _FIRST_DELAY, 0
        while True:
            self.on_state(SenderState.SENDING)
            try:
                with self.guard:
                    send()
            except Exception as exc:
                if not self.isolate:
                    raise
                if _away(exc):
                    self.on_state(SenderState.WAITING)
                    if not self.wait(exc, delay):
                        return False
                    delay = min(delay * 2, _MAX_BACKOFF)
                    continue
                if isinstance(exc, TrackcfgError) and not isinstance(exc, ServerError):
                    raise _Refused(str(exc)) from None  # refused: retrying cannot fix it
                # HTTP 500 every try (ServerError), or something new: again, a few times
                failures += 1
                if failures >= tries:
                    raise _Refused(
                        f"{store_message(exc)} ({type(exc).__name__}, {failures} times)"
                    ) from None
                self.on_state(SenderState.WAITING)
                # Not exc_info: MLflow's chained errors name the store's URL, credentials too.
                logger.debug(
                    "request for run %s failed (%s); trying again", self.run_id, store_message(exc)
                )
                if not self.wait(exc, min(delay, 2.0)):
                    return False
            else:
                return True
            delay = min(delay * 2, _MAX_BACKOFF)

    def _refuse(self, what: str, *, by: str = "the store") -> None:
        """``what`` was not sent and will not be (``by``: who refused it, the store or
        trackcfg itself: a journal naming a file it may not send); raised at once when
        not isolating (``mode: sync``: the call raises)."""
        if not self.isolate:
            raise RunError(what)
        said = f"{by} refused {what}"
        logger.error("%s (run %s)", said, self.run_id)
        if self.on_refused is not None:
            self.on_refused(what)
        else:
            self.refused.append(said)


def _away(exc: BaseException) -> bool:
    """The server away (or its credentials refused, which may be renewed): waited for.  Not
    a server that answers HTTP 500 every try (``ServerError``): that is counted."""
    return isinstance(exc, (TrackingUnavailableError, CredentialsError)) and not isinstance(
        exc, ServerError
    )


def give_up(exc: BaseException, delay: float) -> bool:
    """``trackcfg sync``'s waiter: the server away fails the journal at once (it keeps
    everything for the next sync); another error is tried again after a short pause."""
    if _away(exc):
        raise exc
    time.sleep(delay)
    return True


def refusal_text(refused: Sequence[str]) -> str:
    """What a report says of ``Delivery.refused`` (empty when nothing was refused)."""
    return "; ".join(refused) + " (the rest was sent)" if refused else ""


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
