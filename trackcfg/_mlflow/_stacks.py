"""MLflow's active-run stack, per asyncio task or thread while sessions are open.

MLflow keeps its active-run stack per thread: asyncio tasks in one thread share it, so
concurrent sessions would nest under, log into and end each other's runs.  While sessions
are open, ``fluent._active_run_stack`` is a stand-in that gives each context (asyncio task,
thread) where a session placed a run a stack of its own, held in ``_state.context_runs``."""

from __future__ import annotations

import os
from collections.abc import Iterable, MutableSequence
from typing import Any, overload

import attrs

from trackcfg import _state

from ._internals import fluent_state as _fluent_state

__all__ = ["give_back_stack", "stop_context_stacks", "take_own_stack", "use_context_stacks"]


def _own_runs() -> _state.ContextRuns | None:
    """The current context's own stack, if it has one: made in this process (not a forked
    child's copy) for the stand-in MLflow reads now (not left over from earlier sessions)."""
    record = _state.context_runs.get()
    if record is None or record.pid != os.getpid():
        return None
    return record if record.maker is _fluent_state._active_run_stack else None


def _write_runs(runs: tuple[Any, ...]) -> None:
    """Make ``runs`` the current context's stack (a new value: other contexts keep theirs)."""
    record = _own_runs() or _state.ContextRuns(maker=_fluent_state._active_run_stack)
    _state.context_runs.set(attrs.evolve(record, runs=runs))
    before = {run.info.run_id for run in record.runs}
    after = {run.info.run_id: run for run in runs}
    with _state.runs_lock:
        for run_id in before - after.keys():
            _state.runs_on_context_stacks.pop(run_id, None)
        for run_id in after.keys() - before:
            _state.runs_on_context_stacks[run_id] = after[run_id]


class _ContextRunList(MutableSequence[Any]):
    """The current context's stack as the list MLflow's functions use (``append``, ``pop``,
    ``[-1]``, ``len``, iteration); each change writes the context's new stack."""

    @staticmethod
    def _runs() -> tuple[Any, ...]:
        record = _own_runs()
        return () if record is None else record.runs

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...
    def __getitem__(self, index: int | slice) -> Any:
        runs = self._runs()
        return runs[index] if isinstance(index, int) else list(runs[index])

    @overload
    def __setitem__(self, index: int, value: Any) -> None: ...
    @overload
    def __setitem__(self, index: slice, value: Iterable[Any]) -> None: ...
    def __setitem__(self, index: int | slice, value: Any) -> None:
        runs = list(self._runs())
        runs[index] = value
        _write_runs(tuple(runs))

    def __delitem__(self, index: int | slice) -> None:
        runs = list(self._runs())
        del runs[index]
        _write_runs(tuple(runs))

    def __len__(self) -> int:
        return len(self._runs())

    def insert(self, index: int, value: Any) -> None:
        runs = list(self._runs())
        runs.insert(index, value)
        _write_runs(tuple(runs))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, _ContextRunList)):
            return list(self._runs()) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(list(self._runs()))


class _ContextRunStacks:
    """Stands in for MLflow's ``_active_run_stack`` (a ``ThreadLocalVariable`` with one list
    per thread) while sessions are open: a context with a stack of its own reads and changes
    that one; any other context, its thread's list, as before."""

    def __init__(self, per_thread: Any) -> None:
        self.per_thread = per_thread

    def get(self) -> Any:
        return _ContextRunList() if _own_runs() is not None else self.per_thread.get()

    def set(self, value: Any) -> None:
        if _own_runs() is not None:
            _write_runs(tuple(value))
        else:
            self.per_thread.set(value)

    def get_all_thread_values(self) -> dict[int, Any]:
        """Every thread's list, and (under -1, not a thread id: MLflow looks only at the
        lists, for the latest run active anywhere) the runs on contexts' own stacks."""
        values = dict(self.per_thread.get_all_thread_values())
        with _state.runs_lock:
            elsewhere = list(_state.runs_on_context_stacks.values())
        if elsewhere:
            values[-1] = elsewhere
        return values

    def reset(self) -> None:
        self.per_thread.reset()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.per_thread, name)


def use_context_stacks() -> bool:
    """Install the stand-in; False when it is installed already (nothing to take off)."""
    current = _fluent_state._active_run_stack
    if isinstance(current, _ContextRunStacks):
        return False
    _fluent_state._active_run_stack = _ContextRunStacks(current)
    return True


def stop_context_stacks() -> None:
    """Give MLflow its per-thread stacks back.  Runs the current context started beyond the
    sessions' (plain ``mlflow.start_run()`` left open) go on its thread's list, to stay
    active; other contexts' stacks are from then on ignored (``_own_runs``)."""
    current = _fluent_state._active_run_stack
    record = _own_runs()
    if isinstance(current, _ContextRunStacks):
        if record is not None:
            thread_runs = current.per_thread.get()
            known = {run.info.run_id for run in thread_runs}
            thread_runs.extend(run for run in record.runs if run.info.run_id not in known)
        _fluent_state._active_run_stack = current.per_thread
    _state.context_runs.set(None)
    with _state.runs_lock:
        _state.runs_on_context_stacks.clear()


def take_own_stack() -> None:
    """Before a session puts a run on the stack: give the current context a stack of its own,
    a copy of what it sees now (a task created later copies it in turn, with the run)."""
    stacks = _fluent_state._active_run_stack
    if isinstance(stacks, _ContextRunStacks) and _own_runs() is None:
        runs = tuple(stacks.per_thread.get())
        base = tuple(run.info.run_id for run in runs)
        _state.context_runs.set(_state.ContextRuns(runs=runs, base=base, maker=stacks))


def give_back_stack() -> None:
    """After a session took a run off: once only the runs the context found are left, it
    reads its thread's list again (where those runs still are)."""
    record = _own_runs()
    if record is not None and tuple(run.info.run_id for run in record.runs) == record.base:
        _state.context_runs.set(None)
