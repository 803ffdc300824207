"""``@tracked``: each call of the decorated function is one ``TrackingSession``.

The wrapper only translates a call into a session (name, params from the bound arguments)
and runs the function inside it; every tracking decision is the session's.  Nothing is read
at decoration time: importing a module full of decorated functions reads no file and imports
no mlflow.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, overload

from ._config import TrackingConfig
from ._loading import load_config
from ._params import CYCLE, metric_value
from ._session import TrackingSession
from .exceptions import TrackcfgError

if TYPE_CHECKING:
    import inspect

__all__ = ["tracked"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

ConfigRef = TrackingConfig | str | os.PathLike[str] | None
ParamsSpec = Literal["args"] | Sequence[str] | None

_PLAIN = (str, int, float, bool, complex, type(None), Path)


# Mappings nested deeper than this are logged as their type name: a param that deep is no
# use to anyone, and descending further would reach Python's recursion limit.
_MAX_DEPTH = 100


def _loggable(name: str, value: Any, _within: frozenset[int] = frozenset()) -> Any:
    """The value to hand to the param policy: plain values and containers as they are; an
    object with no meaningful text form as its type name, with a warning.  A mapping met again
    inside itself (``d["self"] = d``) is logged as Python prints it, ``{...}`` (``CYCLE``),
    with a warning, so the call runs (``_within``: the mappings around ``value``)."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, Mapping):
        if id(value) in _within:
            logger.warning(
                "argument %r: a mapping that contains itself; the inner occurrence is logged as %s",
                name,
                CYCLE,
            )
            return CYCLE
        if len(_within) >= _MAX_DEPTH:
            logger.warning(
                "argument %r: mappings nested deeper than %d levels; logged as its type name",
                name,
                _MAX_DEPTH,
            )
            return type(value).__name__
        inner = _within | {id(value)}
        return {k: _loggable(f"{name}.{k}", v, inner) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return value
    cls: Any = type(value)
    if cls.__str__ is object.__str__ and cls.__repr__ is object.__repr__:
        logger.warning(
            "argument %r: %s has no text form (its repr is an address); logged as its type name",
            name,
            cls.__name__,
        )
        return cls.__name__
    try:
        str(value)
    except Exception:
        logger.warning("argument %r: str() of %s failed; logged as its type name", name, cls)
        return cls.__name__
    return value


def _call_params(
    signature: inspect.Signature,
    spec: ParamsSpec,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> dict[str, Any]:
    import inspect

    if spec is None:
        return {}
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    names = list(signature.parameters)
    skip = {names[0]} if names and names[0] in ("self", "cls") else set()
    wanted = None if spec == "args" else set(spec)
    out: dict[str, Any] = {}
    for key, value in bound.arguments.items():
        if key in skip or (wanted is not None and key not in wanted):
            continue
        kind = signature.parameters[key].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            out.update({k: _loggable(k, v) for k, v in value.items()})
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                out[key] = _loggable(key, list(value))
        else:
            out[key] = _loggable(key, value)
    return out


RESULT_METRIC = "result"
"""The metric a tracked function's returned number is logged as (``log_result``)."""


def result_metrics(result: object) -> dict[str, float]:
    """The metrics ``log_result`` logs for a returned value: a number (numpy scalars
    included, not a bool) as ``result``; a flat mapping whose values are all numbers, one
    metric per key; anything else, none (a model, a list, a mapping holding a string)."""
    value = metric_value(result)
    if value is not None:
        return {RESULT_METRIC: value}
    if not isinstance(result, Mapping):
        return {}
    metrics = {}
    for key, item in result.items():
        number = metric_value(item)
        if number is None:
            return {}
        metrics[str(key)] = number
    return metrics


def _log_result(session: TrackingSession, result: object) -> None:
    metrics = result_metrics(result)
    if not metrics:
        return
    try:
        session.log_metrics(metrics)
    except TrackcfgError as exc:  # e.g. two keys that become one metric: the call succeeded
        logger.warning("session %r: the returned value was not logged: %s", session.name, exc)


def _resolve_config(config: ConfigRef, func: Callable[..., Any]) -> TrackingConfig:
    if isinstance(config, TrackingConfig):
        return config
    if config is not None:
        return load_config(config)
    # Bare @tracked: discover from the folder of the file that defines the function, so the
    # result does not depend on where the program was started from.
    import inspect

    source = inspect.getsourcefile(func)
    start = Path(source).parent if source else Path.cwd()
    return load_config(cwd=start)


def _decorate(
    func: Callable[P, R],
    config: ConfigRef,
    name: str | None,
    params: ParamsSpec,
    tags: Mapping[str, Any] | None,
    log_result: bool,
) -> Callable[P, R]:
    import inspect  # ~20 ms: paid when something is decorated, not by `import trackcfg`

    signature = inspect.signature(func)
    # A function defined inside another is "outer.<locals>.inner": name it "inner".
    session_name = name or func.__qualname__.rpartition("<locals>.")[2]

    def session_for(args: tuple[Any, ...], kwargs: dict[str, Any]) -> TrackingSession:
        return TrackingSession(
            _resolve_config(config, func),
            name=session_name,
            params=_call_params(signature, params, args, kwargs),
            tags=tags,
        )

    if inspect.iscoroutinefunction(func):
        async_func: Callable[..., Awaitable[Any]] = func

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            # Entered here, when the coroutine runs: inside the asyncio task that runs it
            # (never at the call, which only makes the coroutine), so the run is that task's
            # and concurrent calls (asyncio.gather) are independent runs.
            with session_for(args, kwargs) as session:
                result = await async_func(*args, **kwargs)
                if log_result:
                    _log_result(session, result)
                return result

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with session_for(args, kwargs) as session:
            result = func(*args, **kwargs)
            if log_result:
                _log_result(session, result)
            return result

    return wrapper


@overload
def tracked(func: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def tracked(
    config: str | os.PathLike[str] | TrackingConfig | None = None,
    /,
    *,
    name: str | None = None,
    params: ParamsSpec = "args",
    tags: Mapping[str, Any] | None = None,
    log_result: bool = True,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


@overload
def tracked(
    *,
    config: str | os.PathLike[str] | TrackingConfig | None = None,
    name: str | None = None,
    params: ParamsSpec = "args",
    tags: Mapping[str, Any] | None = None,
    log_result: bool = True,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def tracked(
    func_or_config: Any = None,
    /,
    *,
    config: str | os.PathLike[str] | TrackingConfig | None = None,
    name: str | None = None,
    params: ParamsSpec = "args",
    tags: Mapping[str, Any] | None = None,
    log_result: bool = True,
) -> Any:
    """Track every call of a function as one run.

    ``@tracked``, ``@tracked("mlflow.yml")`` or ``@tracked(config=cfg_or_path, name=...,
    params="args" | ["lr", ...] | None, tags={...}, log_result=True)``.

    - The session is named ``name`` or the function's ``__qualname__`` (``Trainer.fit``; for a
      function defined inside another, the part after ``<locals>.``). That is the run name
      unless ``run.name`` is set, and what ``disable_tracking.pipelines`` matches (``fit``
      or ``Trainer.fit`` both match ``Trainer.fit``).
    - ``params="args"`` logs every bound argument with defaults applied (``self``/``cls``
      left out) through the param policy; a list logs only those arguments; ``None`` none.
      An object with no text form is logged as its type name, with a warning.
    - The config is resolved at each call: a path is loaded (relative to the current folder,
      like ``open``); a bare ``@tracked`` discovers ``conf/`` or ``mlflow.yml`` from the folder
      of the file defining the function upward.
    - Inside an active run (a session, another tracked call), each call is a child run, or
      logs into the active run with ``run.nested: false``.
    - ``log_result=True``: a returned number (numpy scalars included, not a bool) is logged as
      the metric ``result``, a returned flat mapping whose values are all numbers as one
      metric per key (``{"acc": 0.9, "loss": 0.2}``); anything else logs nothing.
      ``log_result=False`` logs no result.
    - Exceptions propagate unchanged (the run ends FAILED; KeyboardInterrupt: KILLED); the
      return value is returned unchanged.  Works for functions, methods and ``async def``.
    """
    if callable(func_or_config) and not isinstance(func_or_config, (str, os.PathLike)):
        return _decorate(func_or_config, config, name, params, tags, log_result)
    chosen: ConfigRef = func_or_config if func_or_config is not None else config

    def decorator(func: Callable[P, R]) -> Callable[P, R]:
        return _decorate(func, chosen, name, params, tags, log_result)

    return decorator
