"""Leaving a session: the status its run ends with, and which runs end with it.

A session ends the run it started (or reopened) and the runs left open above it on this
context's stack (a child run the code inside never ended), but not the run of another open
session, unless that session is one of its ``child()`` sessions: sessions that end out of
order each end their own (``_state`` knows which session holds which run).  When the store is
away at the end (buffered logging: the journal keeps the runs' end), the same runs only
leave this context's stack.  A run the session attached to is taken off the stack, never
ended.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Protocol

import attrs

from . import _state
from ._backend import Backend, RunStatus
from .exceptions import RunError, TrackcfgError

__all__ = ["ProcessShare", "RunEnding", "hand_on_sigterm", "leave", "status_for"]

logger = logging.getLogger(__name__)


def status_for(exc: BaseException | None, *, after_sigterm: bool = False) -> RunStatus:
    """The status a run ends with when ``exc`` leaves its session (None: success).
    ``after_sigterm``: SIGTERM came during the session, and the program's own handler ran:
    a ``SystemExit`` is then the process ending because of the signal."""
    if exc is None or isinstance(exc, GeneratorExit):
        return RunStatus.FINISHED
    if isinstance(exc, KeyboardInterrupt) or _state.raised_on_sigterm(exc):
        return RunStatus.KILLED
    if isinstance(exc, SystemExit):
        if after_sigterm:
            return RunStatus.KILLED
        return RunStatus.FINISHED if exc.code in (None, 0) else RunStatus.FAILED
    return RunStatus.FAILED


def hand_on_sigterm(exc: BaseException | None, *, hand_on: bool) -> None:
    """After the last session let go of the SIGTERM trap (``hand_on``): a SIGTERM that ended
    a session goes on to whoever handled it before (by default: the process terminates)."""
    if isinstance(exc, _state.Terminated) and hand_on:
        # The default action ends the process at once: output still buffered would be lost
        # (the "View run" line of the run just ended, when stdout is a pipe).
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        signal.raise_signal(signal.SIGTERM)


def encloses(session: object, other: object) -> bool:
    """Whether ``other`` is a ``child()`` session of ``session``, at any depth."""
    parent = getattr(other, "_parent", None)
    while parent is not None:
        if parent is session:
            return True
        parent = getattr(parent, "_parent", None)
    return False


class Placed(Protocol):
    """Where a session's run was placed (``_placement.RunPlacer``), as leaving needs it."""

    @property
    def started_run(self) -> str | None: ...
    @property
    def pushed_run(self) -> str | None: ...


@attrs.frozen(kw_only=True)
class RunEnding:
    """The end of ``session``'s run ``own`` (``started``: the session started or reopened
    it, so it ends it; else it attached to it)."""

    backend: Backend
    session: object
    name: str  # the session's, for messages
    own: str
    started: bool

    @classmethod
    def of(
        cls, backend: Backend | None, session: object, name: str, placed: Placed | None
    ) -> RunEnding | None:
        """The end of the run ``placed`` says the session started, else of the one it made
        active; None without either, or without a backend (a forked child's copy of a
        session: the run is its parent's to end)."""
        own = (placed.started_run or placed.pushed_run) if placed is not None else None
        if backend is None or own is None:
            return None
        started = placed is not None and placed.started_run is not None
        return cls(backend=backend, session=session, name=name, own=own, started=started)

    def leftovers(self) -> list[str]:
        """The one walk over runs left open above ``own`` on this context's stack that are
        the session's to deal with, last first."""
        stack = self.backend.active_run_ids()
        if self.own not in stack:
            return []
        return [
            run_id
            for run_id in reversed(stack[stack.index(self.own) + 1 :])
            if not (owners := _state.run_owners(run_id))
            or any(encloses(self.session, owner) for owner in owners)
        ]

    def end(self, status: RunStatus) -> None:
        """End the leftover runs and the session's run with ``status``, or take the run it
        attached to off this context's stack."""
        for leftover in self.leftovers():
            logger.warning(
                "run %s was still active when session %r ended; ending it %s",
                leftover,
                self.name,
                status.value,
            )
            self.backend.end_run(leftover, status)
        if self.started:
            self.backend.end_run(self.own, status)
        else:
            self.backend.pop_active(self.own)

    def let_go(self) -> None:
        """The store is away at the end: the run and its leftovers only leave this
        context's stack (the journal keeps their end)."""
        if self.own not in self.backend.active_run_ids():
            return
        for leftover in self.leftovers():
            self.backend.pop_active(leftover)
        self.backend.pop_active(self.own)


@attrs.define(eq=False)
class ProcessShare:
    """A session's share of process-wide state (``_state``) while it is open: its run among
    the open sessions' runs (others never end it), the SIGTERM trap (a top-level session's),
    and how many SIGTERMs the trap had seen when the session was entered."""

    sigterms_before: int = attrs.field(factory=_state.sigterms_received)
    held_run: str | None = None
    trapped: bool = False
    hand_on: bool = False  # it let go of the trap last: a SIGTERM goes on from it

    def take(self, owner: object, run_id: str | None, *, trap: bool) -> None:
        if run_id is not None:
            self.held_run = run_id
            _state.hold_run(run_id, owner)
        if trap:
            self.trapped = _state.trap_sigterm()

    def status_for(self, exc: BaseException | None) -> RunStatus:
        return status_for(exc, after_sigterm=_state.sigterms_received() > self.sigterms_before)

    def hand_on_signal(self, exc: BaseException | None) -> None:
        """After the last session let go of the SIGTERM trap: a SIGTERM that ended this one
        goes on to whoever handled it before (by default: the process terminates)."""
        hand_on_sigterm(exc, hand_on=self.hand_on)

    def release(self, owner: object) -> None:
        """Give the share back, whatever the order sessions end in (the last one out of the
        trap restores the handler; the shared settings: ``Connection.close``)."""
        try:
            if self.held_run is not None:
                held, self.held_run = self.held_run, None
                _state.let_go_of_run(held, owner)
        finally:
            if self.trapped:
                self.trapped = False
                self.hand_on = _state.release_sigterm()


def leave(
    end: Callable[[], None],
    give_back: Sequence[Callable[[], None]],
    *,
    run_id: str | None,
    name: str,
    raising: bool,
) -> None:
    """``end()`` (the runs' end), then each step of ``give_back`` whatever the others did: a
    SIGTERM trap or shared settings left held would outlive every session.  With ``raising``,
    the first error is raised afterwards (a ``RunError`` unless it is trackcfg's own)."""
    errors: list[Exception] = []
    try:
        end()
    except Exception as exc:
        errors.append(exc)
        if isinstance(exc, TrackcfgError):  # already says what happened and what to do
            logger.warning("could not end run %s of session %r: %s", run_id, name, exc)
        else:
            logger.exception("could not end run %s of session %r", run_id, name)
    finally:
        for step in give_back:
            try:
                step()
            except Exception as exc:
                errors.append(exc)
    if errors and raising:
        first = errors[0]
        if isinstance(first, TrackcfgError):
            raise first
        raise RunError(f"could not end run {run_id!r} cleanly: {first}") from first
