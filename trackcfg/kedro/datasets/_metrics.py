"""The metric datasets: one value, one metric's history, several metrics' histories.

Saved into the pipeline's run through its session (buffered logging and outages apply), or
into ``run_id``; in a ``ParallelRunner`` worker into the run the session shared.  Loaded from
the store (the session's buffer is flushed first, so a metric just saved is there).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from trackcfg._params import Batch, MetricPoint
from trackcfg.exceptions import TrackcfgError

from ._common import loggable, run_to_read
from ._target import Target, open_target_backend, pipeline_target

__all__ = ["MlflowMetricDataset", "MlflowMetricHistoryDataset", "MlflowMetricsHistoryDataset"]

logger = logging.getLogger(__name__)


def _log_points(
    target: Target, points: list[tuple[str, float, int, int | None]], what: str
) -> None:
    """Log ``(key, value, step, timestamp)`` points into the target's run, in order."""
    try:
        if target.through_session and all(ts is None for *_, ts in points):
            assert target.session is not None
            for key, value, step, _ in points:
                target.session.log_metrics({key: value}, step=step)
            return
        assert target.run_id is not None
        now = int(time.time() * 1000)
        metrics = tuple(
            MetricPoint(key=k, value=float(v), step=int(s), timestamp=now if ts is None else ts)
            for k, v, s, ts in points
        )
        backend = open_target_backend(target, what)
        try:
            limit = 1000  # MLflow's log_batch limit for metrics
            for start in range(0, len(metrics), limit):
                backend.log_batch(target.run_id, Batch(metrics=metrics[start : start + limit]))
        finally:
            backend.close()
    except TrackcfgError as exc:
        raise DatasetError(f"{what}: cannot log to run {target.run_id}: {exc}") from exc


def _history(
    target: Target, run_id: str, key: str, what: str, flush_timeout: float | None = None
) -> list[MetricPoint]:
    """The metric's points in the store, oldest first (the session flushed first)."""
    try:
        if target.session is not None and target.through_session:
            target.session.flush(flush_timeout)
        backend = open_target_backend(target, what)
        try:
            return backend.metric_history(run_id, key)
        finally:
            backend.close()
    except TrackcfgError as exc:
        raise DatasetError(f"{what}: cannot read metric {key!r} of run {run_id}: {exc}") from exc


def _keys(target: Target, run_id: str, what: str) -> list[str]:
    from trackcfg._backend import metric_keys

    try:
        if target.session is not None and target.through_session:
            target.session.flush()
        open_target_backend(target, what).close()  # a store is known, or a clear error
        assert target.tracking_uri is not None
        return metric_keys(target.tracking_uri, target.registry_uri, run_id)
    except TrackcfgError as exc:
        raise DatasetError(f"{what}: cannot read the metrics of run {run_id}: {exc}") from exc


def _target_for_read(run_id: str | None, what: str) -> tuple[Target, str]:
    target = pipeline_target(run_id)
    return target, run_to_read(target, what)


class _MetricBase(AbstractDataset[Any, Any]):
    """``key``, ``run_id``, ``load_args``, ``save_args``, ``metadata`` as kedro-mlflow's."""

    _name = "MlflowMetricDataset"

    def __init__(
        self,
        key: str | None = None,
        run_id: str | None = None,
        load_args: dict[str, Any] | None = None,
        save_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.key = key
        self.run_id = run_id
        self._load_args = dict(load_args or {})
        self._save_args = dict(save_args or {})
        self.metadata = metadata
        self._logging_activated = True  # kedro-mlflow's switch; the pipeline's wins

    def _key(self) -> str:
        if not self.key:
            raise DatasetError(
                f"{self._name}: no metric key; give `key:` in the catalog (the hooks use the "
                "dataset's name when the catalog entry names the type and no key)"
            )
        return self.key

    def _exists(self) -> bool:
        target = pipeline_target(self.run_id)
        if target.run_id is None or target.tracking_uri is None:
            return False
        return self._key() in _keys(target, target.run_id, self._name)

    def _describe(self) -> dict[str, Any]:
        return {"key": self.key, "run_id": self.run_id}


class MlflowMetricDataset(_MetricBase):
    """One value of the metric ``key`` (default: the dataset's catalog name).

    ``save_args``: ``step`` (the step to log at), ``mode``: ``overwrite`` (default: at the
    highest step the metric has, 0 for a new one) or ``append`` (at the next step), and
    ``timestamp``.  ``load_args``: ``step``; the last value logged (at that step).
    """

    SUPPORTED_SAVE_MODES = frozenset({"overwrite", "append"})
    DEFAULT_SAVE_MODE = "overwrite"

    def __init__(
        self,
        key: str | None = None,
        run_id: str | None = None,
        load_args: dict[str, Any] | None = None,
        save_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(key, run_id, load_args, save_args, metadata)
        self.mode = self._save_args.pop("mode", self.DEFAULT_SAVE_MODE)
        if self.mode not in self.SUPPORTED_SAVE_MODES:
            raise DatasetError(
                f"MlflowMetricDataset: save_args mode {self.mode!r} is not one of "
                f"{sorted(self.SUPPORTED_SAVE_MODES)}"
            )
        unknown = sorted(set(self._save_args) - {"step", "timestamp"})
        if unknown:
            raise DatasetError(
                f"MlflowMetricDataset: unknown save_args {unknown}; it takes mode, step and "
                "timestamp"
            )
        # The steps this object logged, per run: the next step when the store is behind.
        self._steps: dict[str, int] = {}

    def load(self) -> float:
        target, run_id = _target_for_read(self.run_id, self._name)
        history = _history(target, run_id, self._key(), self._name)
        step = self._load_args.get("step")
        values = [p.value for p in history if step is None or p.step == step]
        if not values:
            at = "" if step is None else f" at step {step}"
            raise DatasetError(
                f"MlflowMetricDataset: run {run_id} has no metric {self._key()!r}{at}"
            )
        return values[-1]

    def save(self, data: float) -> None:
        target = pipeline_target(self.run_id)
        if not loggable(target, self._name, self._logging_activated):
            return
        assert target.run_id is not None
        key = self._key()
        step = self._save_args.get("step")
        if step is None:
            known = self._known_steps(target, target.run_id, key)
            step = max(known, default=-1) + 1 if self.mode == "append" else max(known, default=0)
        _log_points(
            target, [(key, float(data), int(step), self._save_args.get("timestamp"))], self._name
        )
        self._steps[target.run_id] = max(int(step), self._steps.get(target.run_id, int(step)))

    def _known_steps(self, target: Target, run_id: str, key: str) -> list[int]:
        """The metric's steps in the store, and those this object logged (the store may be
        behind: buffered logging while the server is away)."""
        mine = [self._steps[run_id]] if run_id in self._steps else []
        timeout = None
        if target.session is not None:
            timeout = float(target.session.config.server.request_timeout)
        try:
            return [p.step for p in _history(target, run_id, key, self._name, timeout)] + mine
        except DatasetError:
            if not mine:
                raise
            logger.warning(
                "%s: the store cannot say the steps of metric %r now; logging after step %d, "
                "the last this pipeline logged",
                self._name,
                key,
                mine[0],
            )
            return mine


class MlflowMetricHistoryDataset(_MetricBase):
    """The values of the metric ``key`` at several steps.  ``save_args``/``load_args``
    ``mode``: ``list`` (``[v0, v1, ...]`` at steps 0, 1, ...; the default), ``dict``
    (``{step: value}``) or ``history`` (``[{"step": s, "value": v, "timestamp": t}, ...]``)."""

    _name = "MlflowMetricHistoryDataset"
    MODES = ("list", "dict", "history")

    def __init__(
        self,
        key: str | None = None,
        run_id: str | None = None,
        load_args: dict[str, Any] | None = None,
        save_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(key, run_id, load_args, save_args, metadata)
        for which, args in (("load_args", self._load_args), ("save_args", self._save_args)):
            if args.get("mode", "list") not in self.MODES:
                raise DatasetError(
                    f"MlflowMetricHistoryDataset: {which} mode {args['mode']!r} is not one of "
                    f"{list(self.MODES)}"
                )

    def load(self) -> Any:
        target, run_id = _target_for_read(self.run_id, self._name)
        history = _history(target, run_id, self._key(), self._name)
        mode = self._load_args.get("mode", "list")
        if mode == "list":
            return [p.value for p in history]
        if mode == "dict":
            return {p.step: p.value for p in history}
        return [{"step": p.step, "value": p.value, "timestamp": p.timestamp} for p in history]

    def save(self, data: Any) -> None:
        target = pipeline_target(self.run_id)
        if not loggable(target, self._name, self._logging_activated):
            return
        key = self._key()
        mode = self._save_args.get("mode", "list")
        points: list[tuple[str, float, int, int | None]]
        try:
            if mode == "list":
                points = [(key, float(v), i, None) for i, v in enumerate(data)]
            elif mode == "dict":
                points = [(key, float(v), int(s), None) for s, v in data.items()]
            else:
                points = [
                    (key, float(d["value"]), int(d.get("step", 0)), d.get("timestamp"))
                    for d in data
                ]
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise DatasetError(
                f"MlflowMetricHistoryDataset: in mode {mode!r} the data must be "
                + {
                    "list": "a list of numbers",
                    "dict": "a {step: number} mapping",
                    "history": "a list of {step, value[, timestamp]} mappings",
                }[mode]
                + f" ({type(exc).__name__}: {exc})"
            ) from exc
        _log_points(target, points, self._name)


class MlflowMetricsHistoryDataset(AbstractDataset[Any, Any]):
    """Several metrics: ``{key: {"value": v, "step": s}}`` or ``{key: [{"value": v,
    "step": s}, ...]}``, logged as ``<prefix>.<key>`` (``prefix`` default: the dataset's
    catalog name).  Loads every metric of the run whose key starts with ``prefix``, each as
    one ``{"step", "value"}`` mapping, or a list of them when it has several points."""

    _name = "MlflowMetricsHistoryDataset"

    def __init__(
        self,
        run_id: str | None = None,
        prefix: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._run_id = run_id
        self._prefix = prefix
        self.metadata = metadata
        self._logging_activated = True  # kedro-mlflow's switch; the pipeline's wins

    @property
    def run_id(self) -> str | None:
        return self._run_id

    @property
    def prefix(self) -> str | None:
        return self._prefix

    def _is_ours(self, key: str) -> bool:
        return not self._prefix or key.startswith(self._prefix)

    def load(self) -> dict[str, Any]:
        target, run_id = _target_for_read(self._run_id, self._name)
        result: dict[str, Any] = {}
        for key in _keys(target, run_id, self._name):
            if self._is_ours(key):
                points = [
                    {"step": p.step, "value": p.value}
                    for p in _history(target, run_id, key, self._name)
                ]
                result[key] = points[0] if len(points) == 1 else points
        return result

    def save(self, data: Mapping[str, Any]) -> None:
        target = pipeline_target(self._run_id)
        if not loggable(target, self._name, self._logging_activated):
            return
        points = [(k, v, s, None) for k, v, s in self._points(data)]
        _log_points(target, points, self._name)  # type: ignore[arg-type]

    def _points(self, data: Mapping[str, Any]) -> Iterator[tuple[str, float, int]]:
        if not isinstance(data, Mapping):
            raise DatasetError(
                f"{self._name}: expected a mapping of metric names to {{'value', 'step'}} "
                f"mappings (or lists of them), got {type(data).__name__}"
            )
        for key, item in data.items():
            name = f"{self._prefix}.{key}" if self._prefix else str(key)
            entries: Iterable[Any]
            if isinstance(item, Mapping):
                entries = [item]
            elif isinstance(item, list) and item:
                entries = item
            else:
                raise DatasetError(
                    f"{self._name}: metric {key!r} must be a {{'value': v, 'step': s}} mapping "
                    f"or a non-empty list of them, got {type(item).__name__}"
                )
            for entry in entries:
                try:
                    yield name, float(entry["value"]), int(entry["step"])
                except (KeyError, TypeError, ValueError) as exc:
                    raise DatasetError(
                        f"{self._name}: metric {key!r}: each point needs a numeric 'value' and "
                        f"an integer 'step' ({type(exc).__name__}: {exc})"
                    ) from exc

    def _exists(self) -> bool:
        target = pipeline_target(self._run_id)
        if target.run_id is None or target.tracking_uri is None:
            return False
        return any(self._is_ours(k) for k in _keys(target, target.run_id, self._name))

    def _describe(self) -> dict[str, Any]:
        return {"run_id": self._run_id, "prefix": self._prefix}
