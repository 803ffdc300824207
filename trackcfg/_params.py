"""The param policy: pure steps from user params to what MLflow accepts, in few requests.

Chained like processors: flatten → render → sanitize keys → long values; the requests they
go in are planned by ``_batching.plan_batches``.  Nothing here talks to MLflow (or imports
it): the backend fills ``Limits`` from the installed mlflow.

Why trackcfg checks what MLflow would check anyway: MLflow silently truncates long param
values (over HTTP, on the server), rejects a batch that holds one key twice, and reports a bad
key only once the run exists.  Deciding before anything is sent means a wrong param fails
before a run is created, and the policy is the same whatever the store.
"""

from __future__ import annotations

import logging
import numbers
import os
import posixpath
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final

import attrs

from trackcfg._config import LongParamsStrategy, ParamsConfig
from trackcfg._records import DEFAULT_LIMITS, Batch, Limits, MetricPoint
from trackcfg.exceptions import ConfigError, ConfigProblem, ParamValueTooLongError, RunError

__all__ = [
    "CYCLE",
    "DEFAULT_LIMITS",
    "STEP_MAX",
    "STEP_MIN",
    "Batch",
    "Limits",
    "MetricPoint",
    "PreparedMetrics",
    "PreparedParams",
    "checked_step",
    "flatten",
    "is_valid_key",
    "metric_value",
    "prepare_metrics",
    "prepare_params",
    "prepare_tags",
    "render_value",
    "sanitize_key",
    "shorten",
]

logger = logging.getLogger(__name__)


@attrs.frozen(kw_only=True)
class PreparedParams:
    """What to send for a params mapping once the policy has been applied."""

    params: dict[str, str] = attrs.field(factory=dict)
    """To log as params: valid unique keys, values within the param limit."""
    tags: dict[str, str] = attrs.field(factory=dict)
    """Long values moved to tags of the same key (``long_params_strategy: tag``)."""
    artifacts: dict[str, str] = attrs.field(factory=dict)
    """Artifact path (``params/<key>.txt``) → full value, for values past the tag limit too."""
    warnings: tuple[str, ...] = ()
    """The warnings already logged while preparing (renamed keys, shortened values)."""


# ---------------------------------------------------------------------------------------------
# flatten


class _Cycle:
    """Stands for a mapping met again inside itself: rendered as Python prints it (``{...}``),
    so ``str()`` of a mapping holding it reads exactly like ``str()`` of the original."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "{...}"

    __str__ = __repr__


CYCLE: Final = _Cycle()
"""The value logged for a mapping that contains itself (``d["self"] = d``)."""


@attrs.frozen
class _Entry:
    key: str
    origin: tuple[object, ...]
    """The original keys, from the top level down, for messages naming what the user wrote."""
    value: object


def _origin_label(origin: tuple[object, ...]) -> str:
    # Subscript form stays unambiguous where the flattened form is not: ['a.b'] vs ['a']['b'].
    return "".join(f"[{part!r}]" for part in origin)


def _entries(
    params: Mapping[Any, Any],
    *,
    flatten: bool,
    recursive: bool,
    sep: str,
    warn: Callable[..., None] | None = None,
) -> Iterator[_Entry]:
    for key, value in params.items():
        yield from _flat(
            key,
            (key,),
            value,
            flatten=flatten,
            recursive=recursive,
            sep=sep,
            warn=warn or logger.warning,
        )


def _flat(
    key: object,
    origin: tuple[object, ...],
    value: object,
    *,
    flatten: bool,
    recursive: bool,
    sep: str,
    warn: Callable[..., None],
) -> Iterator[_Entry]:
    # An empty mapping would vanish when flattened; keeping it as "{}" loses nothing.
    if not flatten or not isinstance(value, Mapping) or not value:
        yield _Entry(str(key), origin, value)
        return
    # A loop over a stack of iterators, not recursion: a deep mapping must not reach Python's
    # recursion limit, and a mapping that contains itself must end (its inner occurrence is
    # logged as Python prints it, "{...}", with a warning).
    on_path: dict[int, tuple[object, ...]] = {id(value): origin}
    stack: list[tuple[str, tuple[object, ...], Iterator[tuple[Any, Any]], int]] = [
        (str(key), origin, iter(value.items()), id(value))
    ]
    while stack:
        prefix, prefix_origin, items, mapping_id = stack[-1]
        for child_key, child in items:
            child_flat = f"{prefix}{sep}{child_key!s}"
            child_origin = (*prefix_origin, child_key)
            if recursive and isinstance(child, Mapping) and child:
                outer = on_path.get(id(child))
                if outer is not None:
                    warn(
                        "param %s is %s again (a mapping that contains itself); logged as %s",
                        _origin_label(child_origin),
                        _origin_label(outer),
                        CYCLE,
                    )
                    yield _Entry(child_flat, child_origin, CYCLE)
                    continue
                on_path[id(child)] = child_origin
                stack.append((child_flat, child_origin, iter(child.items()), id(child)))
                break
            yield _Entry(child_flat, child_origin, child)
        else:
            stack.pop()
            del on_path[mapping_id]


def _merge(
    entries: Sequence[_Entry], *, kind: str, hint: str
) -> tuple[list[_Entry], list[ConfigProblem]]:
    """Keep each key once; the same key with a different rendered value is a problem."""
    kept: dict[str, _Entry] = {}
    problems: list[ConfigProblem] = []
    for entry in entries:
        first = kept.get(entry.key)
        if first is None:
            kept[entry.key] = entry
        elif render_value(first.value) != render_value(entry.value):
            problems.append(
                ConfigProblem(
                    key=entry.key,
                    message=(
                        f"{kind}s {_origin_label(first.origin)} and {_origin_label(entry.origin)} "
                        f"both become the {kind} key {entry.key!r} with different values; "
                        f"rename one of them{hint}"
                    ),
                )
            )
    return list(kept.values()), problems


def flatten(params: Mapping[Any, Any], *, recursive: bool, sep: str) -> dict[str, Any]:
    """Nested mappings become ``parent<sep>child`` keys; values are kept as they are.

    ``recursive=False`` flattens one level only: a mapping nested deeper stays a value.  Keys
    that are not strings are ``str()``'ed; order is preserved; an empty nested mapping stays a
    value.  Two paths giving the same key (``{"a.b": 1, "a": {"b": 2}}``) raise ``ConfigError``
    naming both, unless their values render the same (then the key is kept once).
    """
    entries, problems = _merge(
        list(_entries(params, flatten=True, recursive=recursive, sep=sep)),
        kind="param",
        hint=" or change tracking.params.dict_params.sep",
    )
    if problems:
        raise ConfigError(problems)
    return {entry.key: entry.value for entry in entries}


# ---------------------------------------------------------------------------------------------
# render


def render_value(value: object) -> str:
    """The string MLflow logs for a param value: exactly ``str(value)``."""
    return str(value)


# ---------------------------------------------------------------------------------------------
# keys

# MLflow's own rule (mlflow.utils.validation.validate_param_and_metric_name): ":" is only
# accepted off Windows.  fullmatch, where MLflow's "$" also lets a trailing newline through.
_INVALID_KEY_CHAR = re.compile(r"[^/\w.\- ]" if os.name == "nt" else r"[^/\w.\- :]")


def _path_not_unique(key: str) -> bool:
    # mlflow.utils.validation.path_not_unique: keys are used as paths in some stores.
    norm = posixpath.normpath(key)
    return norm != key or norm == "." or norm.startswith(("..", "/"))


def is_valid_key(key: str) -> bool:
    """Whether MLflow accepts ``key`` as a param, tag or metric name (length aside)."""
    return _INVALID_KEY_CHAR.search(key) is None and not _path_not_unique(key)


def sanitize_key(key: str) -> str:
    """A key MLflow accepts: valid keys unchanged, others repaired, never empty.

    Characters MLflow refuses become ``_``; as a path, empty and ``.`` segments (leading,
    doubled or trailing ``/``) are dropped, ``..`` becomes ``__`` (a leading ``..`` too), and
    nothing left gives ``_``.  The result is never longer than ``key`` (except ``""`` → ``_``).
    """
    if is_valid_key(key):
        return key
    segments = [
        "__" if segment == ".." else segment
        for segment in _INVALID_KEY_CHAR.sub("_", key).split("/")
        if segment not in ("", ".")
    ]
    if not segments:
        return "_"
    if segments[0].startswith(".."):
        segments[0] = "__" + segments[0][2:]
    return "/".join(segments)


class _Warnings:
    """Log a warning and remember its text for ``PreparedParams.warnings``."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def __call__(self, message: str, *args: object) -> None:
        logger.warning(message, *args)
        self.messages.append(message % args)


def _final_keys(
    entries: Iterator[_Entry], *, kind: str, limits: Limits, hint: str, warn: _Warnings
) -> list[_Entry]:
    """Sanitize every key, then refuse over-long keys and collisions, all problems at once."""
    sanitized: list[_Entry] = []
    problems: list[ConfigProblem] = []
    for entry in entries:
        key = sanitize_key(entry.key)
        if key != entry.key:
            warn("%s key %r is not accepted by MLflow; logged as %r", kind, entry.key, key)
        if len(key) > limits.key:
            problems.append(
                ConfigProblem(
                    key=key,
                    message=(
                        f"{kind} key is {len(key)} characters long; MLflow accepts at most "
                        f"{limits.key}. Use a shorter key{hint}"
                    ),
                )
            )
        sanitized.append(attrs.evolve(entry, key=key))
    kept, collisions = _merge(sanitized, kind=kind, hint=hint)
    problems.extend(collisions)
    if problems:
        raise ConfigError(problems)
    return kept


# ---------------------------------------------------------------------------------------------
# params and tags


def prepare_params(
    params: Mapping[Any, Any], config: ParamsConfig, limits: Limits | None = None
) -> PreparedParams:
    """Apply the whole param policy of ``config`` to ``params``.

    Raises ``ConfigError`` listing every bad key (too long, or two inputs giving the same key
    with different values) and ``ParamValueTooLongError`` for the first value over the limit
    under ``long_params_strategy: fail``.  Renamed keys and shortened values are logged as
    warnings, never changed silently.
    """
    limits = limits or DEFAULT_LIMITS
    dict_params = config.dict_params
    hint = (
        " or change tracking.params.dict_params (flatten, recursive, sep)"
        if dict_params.flatten
        else ""
    )
    warn = _Warnings()
    entries = _final_keys(
        _entries(
            params,
            flatten=dict_params.flatten,
            recursive=dict_params.recursive,
            sep=dict_params.sep,
            warn=warn,
        ),
        kind="param",
        limits=limits,
        hint=hint,
        warn=warn,
    )
    strategy = config.long_params_strategy
    out_params: dict[str, str] = {}
    out_tags: dict[str, str] = {}
    artifacts: dict[str, str] = {}
    for entry in entries:
        key, value = entry.key, render_value(entry.value)
        refuse_nul("param", key, value)
        if len(value) <= limits.param_value:
            out_params[key] = value
        elif strategy is LongParamsStrategy.FAIL:
            raise ParamValueTooLongError(key, len(value), limits.param_value)
        elif strategy is LongParamsStrategy.TRUNCATE:
            out_params[key] = value[: limits.param_value]
            warn(
                "param %r is %d characters long; logged its first %d characters "
                "(tracking.params.long_params_strategy: truncate)",
                key,
                len(value),
                limits.param_value,
            )
        elif len(value) <= limits.tag_value:
            out_tags[key] = value
            logger.info(
                "param %r is %d characters long (param limit %d); logged as a tag "
                "(tracking.params.long_params_strategy: tag)",
                key,
                len(value),
                limits.param_value,
            )
        else:
            path = f"params/{key}.txt"
            out_tags[key] = shorten(value, limits.tag_value, artifact=path)
            artifacts[path] = value
            warn(
                "param %r is %d characters long, past the tag limit %d too; the tag holds "
                "its beginning and says so, the full value is logged as artifact %r "
                "(tracking.params.long_params_strategy: tag)",
                key,
                len(value),
                limits.tag_value,
                path,
            )
    return PreparedParams(
        params=out_params, tags=out_tags, artifacts=artifacts, warnings=tuple(warn.messages)
    )


def refuse_nul(kind: str, key: str, value: str) -> None:
    """A NUL character is refused at the call, for every store: SQLite keeps it, PostgreSQL
    answers HTTP 500 (so the same call would land or not depending on the server)."""
    if "\x00" in key or "\x00" in value:
        raise RunError(
            f"{kind} {key!r}: its {'key' if chr(0) in key else 'value'} holds a NUL character "
            "(\\x00), which MLflow's stores do not all accept; remove it"
        )


def shorten(value: str, limit: int, *, artifact: str | None = None) -> str:
    """``value`` if it has at most ``limit`` characters, else its beginning followed by a note
    that says it was shortened: ``"… (12345 characters; full text in artifact <artifact>)"``
    (``"… (12345 characters)"`` without ``artifact``), ``limit`` characters in all.

    For values trackcfg makes or moves itself (a long param's tag, Kedro's command line): they
    must never stop a run, and a cut must never pass for the whole value."""
    if len(value) <= limit:
        return value
    where = f"; full text in artifact {artifact}" if artifact else ""
    note = f"\u2026 ({len(value)} characters{where})"
    return (value[: max(limit - len(note), 0)] + note)[:limit]


def prepare_tags(tags: Mapping[Any, Any], limits: Limits | None = None) -> dict[str, str]:
    """Tags as MLflow accepts them: keys sanitized like param keys, values ``str()``'ed.

    Tags are never flattened.  A value over the tag limit is a ``ConfigError`` naming the key,
    its length and the limit (with every other bad key or value): tags are set explicitly by
    the user, who can shorten them or log an artifact, so trackcfg does not pick a policy.
    """
    limits = limits or DEFAULT_LIMITS
    warn = _Warnings()
    entries = _final_keys(
        _entries(tags, flatten=False, recursive=False, sep="."),
        kind="tag",
        limits=limits,
        hint="",
        warn=warn,
    )
    rendered = {entry.key: render_value(entry.value) for entry in entries}
    for key, value in rendered.items():
        refuse_nul("tag", key, value)
    problems = [
        ConfigProblem(
            key=key,
            message=(
                f"tag value is {len(value)} characters long; MLflow accepts at most "
                f"{limits.tag_value}. Shorten it or log it as an artifact"
            ),
        )
        for key, value in rendered.items()
        if len(value) > limits.tag_value
    ]
    if problems:
        raise ConfigError(problems)
    return rendered


# ---------------------------------------------------------------------------------------------
# metrics


@attrs.frozen(kw_only=True)
class PreparedMetrics:
    """What to send for one ``log_metrics`` call once the key policy has been applied."""

    values: dict[str, float] = attrs.field(factory=dict)
    """Final key → value (one point each)."""
    origins: dict[str, str] = attrs.field(factory=dict)
    """Final key → the key the caller wrote (``str()``'ed), to refuse a later call whose key
    becomes the same series (``prepare_metrics(..., earlier=)``)."""
    warnings: tuple[str, ...] = ()


def prepare_metrics(
    metrics: Mapping[Any, Any],
    limits: Limits | None = None,
    *,
    earlier: Mapping[str, str] | None = None,
) -> PreparedMetrics:
    """Metric keys through the param key policy: valid keys unchanged, others sanitized with a
    warning, never merged in silence.

    A metric key names a series: two keys of the call that give the same final key
    (``"a b!"`` and ``"a b?"`` both become ``"a b_"``) are refused whatever their values, as is
    a key that gives the final key of a *different* key logged before (``earlier``: the
    ``origins`` of the calls before, which also keeps a rename from being warned about at every
    step).  Raises ``RunError`` naming every key whose value is not a number
    (``metric_value``), else ``ConfigError`` listing every bad key (collision, too long),
    naming the keys as written.
    """
    limits = limits or DEFAULT_LIMITS
    earlier = earlier or {}
    if earlier:
        # A training loop's every step: the same keys, each logged before exactly as written
        # (so valid, distinct, its own series): only the values are left to check.  Anything
        # else (a new key, a value that is not a number) takes the full check below.
        longest = limits.key
        known: dict[str, float] = {}
        for k, v in metrics.items():
            if type(k) is not str or earlier.get(k) != k or len(k) > longest:
                break
            if type(v) is float or type(v) is int:
                known[k] = float(v)
            else:
                break  # numpy scalars, and values to refuse: the full check below
        else:
            return PreparedMetrics(values=known, origins=dict(zip(known, known, strict=True)))
    warn = _Warnings()
    problems: list[ConfigProblem] = []
    refused: list[str] = []
    values: dict[str, float] = {}
    origins: dict[str, str] = {}
    for raw_key, raw_value in metrics.items():
        written = str(raw_key)
        # A key logged before exactly as written passed the policy unchanged: a training
        # loop logs the same keys at every step, so skip re-checking them.
        key = written if earlier.get(written) == written else sanitize_key(written)
        first = origins.get(key)
        before = earlier.get(key)
        if first is not None:
            problems.append(
                ConfigProblem(
                    key=key,
                    message=(
                        f"metrics {first!r} and {written!r} both become the metric key {key!r} "
                        "(one series); rename one of them"
                    ),
                )
            )
            continue
        if before is not None and before != written:
            problems.append(
                ConfigProblem(
                    key=key,
                    message=(
                        f"metric {written!r} becomes the metric key {key!r}, the series of metric "
                        f"{before!r} logged before in this run; rename one of them"
                    ),
                )
            )
            continue
        if key != written and before is None:
            warn("metric key %r is not accepted by MLflow; logged as %r", written, key)
        if len(key) > limits.key:
            problems.append(
                ConfigProblem(
                    key=key,
                    message=(
                        f"metric key is {len(key)} characters long; MLflow accepts at most "
                        f"{limits.key}. Use a shorter key"
                    ),
                )
            )
            continue
        value = metric_value(raw_value)
        if value is None:
            refused.append(f"metric {written!r} = {raw_value!r} ({type(raw_value).__name__})")
            continue
        values[key] = value
        origins[key] = written
    if refused:
        # The configuration is fine: the value is the caller's, as for a bad step.
        raise RunError(
            f"not a number: {', '.join(refused)}; MLflow stores "
            "a metric as a 64-bit float: pass an int, a float or a numpy scalar"
        )
    if problems:
        raise ConfigError(problems)
    return PreparedMetrics(values=values, origins=origins, warnings=tuple(warn.messages))


def metric_value(value: object) -> float | None:
    """``value`` as MLflow stores a metric value, or None when MLflow would refuse it: a
    number (numpy scalars included), never a bool, a numeric string or None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # complex
        return None


STEP_MIN: Final = -(2**63)
STEP_MAX: Final = 2**63 - 1
"""MLflow stores a step as a 64-bit signed integer (``int64`` in its protocol, ``BIGINT`` in its
SQL stores): "Step must be a valid long (64-bit integer)"."""


def checked_step(step: object, *, call: str = "log_metrics") -> int:
    """``step`` as MLflow stores it (``None`` is 0); ``RunError`` naming the step for anything
    that is not an integer (``1.5``, ``"3"``, ``True``) or is outside 64 bits, before anything
    is sent: MLflow would store ``1.5`` as 1, and refuse the others only once sent, with an
    error of its store (``Python int too large to convert to SQLite INTEGER``)."""
    if step is None:
        return 0
    if type(step) is int and STEP_MIN <= step <= STEP_MAX:
        return step  # the usual case, without isinstance's slower check of numbers.Integral
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise RunError(
            f"{call}: step {step!r} ({type(step).__name__}) is not an integer; MLflow stores "
            "steps as 64-bit integers: pass an int, such as the epoch or batch number"
        )
    value = int(step)
    if not STEP_MIN <= value <= STEP_MAX:
        raise RunError(
            f"{call}: step {value} is outside the steps MLflow stores (64-bit integers, "
            f"{STEP_MIN} to {STEP_MAX}); use a smaller step"
        )
    return value
